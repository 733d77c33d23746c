import Foundation
import Llama
import Loading
import Testing
import TestSupport

/// The tiny Llama against Hugging Face transformers' outputs (`golden.json`, `__base__`).
@Suite struct GoldenBaseTests {
    @Test func lastLogitsAndPromptLogitsMatchTransformers() throws {
        let golden = try Fixtures.json("tiny_llama_untied/golden.json")
        let prompt = ints(golden["prompt_ids"])
        let base = (golden["cases"] as! [String: Any])["__base__"] as! [String: Any]
        let (model, _) = try ModelLoader.load(path: Fixtures.tinyModel)
        let kv = model.makeKVStorage(blocks: 4, blockSize: 16)
        var batch = ForwardBatch(blockTables: [[0, 1, 2, 3]])
        batch.append(sequence: 0, tokens: prompt, startPosition: 0, adapterSlot: -1, wantLogits: false)
        batch.logitRows = Array(0..<prompt.count)
        let logits = try model.forward(batch, kv: kv)
        let expectedRows = (base["prompt_logits"] as! [Any]).map { floats($0) }
        for (row, expected) in zip(logits, expectedRows) {
            #expect(maxRelativeError(row, expected) < 1e-4)
        }
        #expect(maxRelativeError(logits.last!, floats(base["last_logits"])) < 1e-4)
    }
}
