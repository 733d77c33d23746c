import Engine
import Foundation
import Llama
import Loading
import Sampling
import Testing
import TestSupport

/// Qwen2 (biases, tied embeddings), Mistral (sliding window), llama3 and linear rope scaling,
/// and bf16/f16 checkpoints, against transformers (scripts/fixtures/make_arch_fixtures.py).
@Suite struct ArchitectureTests {
    @Test(arguments: ["qwen2_bias", "mistral_window", "llama3_scaled_bf16", "llama_linear_rope_f16"])
    func promptLogitsAndGreedyMatchTransformers(name: String) throws {
        let dir = Fixtures.path("archs/\(name)")
        let golden = try Fixtures.json("archs/\(name)/golden.json")
        let (model, _) = try ModelLoader.load(path: dir)
        let prompt = ints(golden["prompt_ids"])
        let kv = model.makeKVStorage(blocks: 4, blockSize: 16)
        var batch = ForwardBatch(blockTables: [[0, 1, 2, 3]])
        batch.append(sequence: 0, tokens: prompt, startPosition: 0, adapterSlot: -1, wantLogits: false)
        batch.logitRows = Array(0..<prompt.count)
        let logits = try model.forward(batch, kv: kv)
        for (i, (row, expected)) in zip(logits, (golden["prompt_logits"] as! [Any]).map { floats($0) }).enumerated() {
            #expect(maxRelativeError(row, expected) < 1e-4, "\(name) position \(i)")
        }
        var p = SamplingParameters()
        p.temperature = 0
        p.maxTokens = 12
        p.ignoreEOS = true
        let out = try BatchGenerator(model: model, tokenizer: nil).generate([GenerationRequest(promptIDs: prompt, parameters: p)])[0]
        #expect(out.outputIDs == ints(golden["greedy"]), "\(name)")
    }
}
