import Engine
import Foundation
import Llama
import Loading
import Sampling
import Testing
import TestSupport

/// Greedy generation and batch invariance on the tiny model, against the HF goldens.
@Suite struct GenerationTests {
    nonisolated(unsafe) static let golden = try! Fixtures.json("tiny_llama_untied/golden.json")
    static let model = try! ModelLoader.load(path: Fixtures.tinyModel).0

    static func greedy(_ n: Int) -> SamplingParameters {
        var p = SamplingParameters()
        p.temperature = 0
        p.maxTokens = n
        return p
    }

    @Test func greedyContinuationMatchesTransformers() throws {
        let prompt = ints(Self.golden["prompt_ids"])
        let base = (Self.golden["cases"] as! [String: Any])["__base__"] as! [String: Any]
        let gen = BatchGenerator(model: Self.model, tokenizer: nil)
        let result = try gen.generate([GenerationRequest(promptIDs: prompt, parameters: Self.greedy(16))], collectLogits: true)
        #expect(result[0].outputIDs == ints(base["greedy"]))
        #expect(maxRelativeError(result[0].stepLogits[0], floats(base["last_logits"])) < 1e-4)
    }

    @Test func ggufConversionOfTheTinyModelMatchesTransformers() throws {
        let (gguf, _) = try ModelLoader.load(path: Fixtures.path("gguf/tiny_llama_f32.gguf"))
        let prompt = ints(Self.golden["prompt_ids"])
        let base = (Self.golden["cases"] as! [String: Any])["__base__"] as! [String: Any]
        let result = try BatchGenerator(model: gguf, tokenizer: nil)
            .generate([GenerationRequest(promptIDs: prompt, parameters: Self.greedy(16))], collectLogits: true)
        #expect(result[0].outputIDs == ints(base["greedy"]))
        #expect(maxRelativeError(result[0].stepLogits[0], floats(base["last_logits"])) < 1e-4)
    }

    /// The same sequence alone, in batches of other sequences (any order), and with its
    /// prompt prefilled in chunks of every size gives bitwise identical logits at every step.
    @Test func logitsAreBatchInvariant() throws {
        let prompts: [[Int32]] = [
            ints(Self.golden["prompt_ids"]),
            [1, 85, 290, 277, 231, 208, 138, 25, 113, 283, 219, 134, 17, 18],
            [1, 44, 55],
            Array(1...40).map { Int32($0 * 7 % 320) },
        ]
        let requests = prompts.map { GenerationRequest(promptIDs: $0, parameters: Self.greedy(6)) }
        let alone = try requests.map { try BatchGenerator(model: Self.model, tokenizer: nil).generate([$0], collectLogits: true)[0].stepLogits }
        let together = try BatchGenerator(model: Self.model, tokenizer: nil).generate(requests, collectLogits: true).map(\.stepLogits)
        #expect(together == alone)
        let reversed = try BatchGenerator(model: Self.model, tokenizer: nil).generate(requests.reversed(), collectLogits: true).map(\.stepLogits)
        #expect(Array(reversed.reversed()) == alone)
        for chunk in [1, 3, 5, 16] {
            let chunked = try BatchGenerator(model: Self.model, tokenizer: nil, prefillChunk: chunk).generate(requests, collectLogits: true).map(\.stepLogits)
            #expect(chunked == alone, "prefill chunk \(chunk)")
        }
    }

    @Test func badBatchesAreRejected() throws {
        let gen = BatchGenerator(model: Self.model, tokenizer: nil)
        #expect(throws: (any Error).self) { try gen.generate([GenerationRequest(promptIDs: [], parameters: Self.greedy(2))]) }
        #expect(throws: (any Error).self) { try gen.generate([GenerationRequest(promptIDs: [1, 999], parameters: Self.greedy(2))]) }
        #expect(throws: (any Error).self) { try gen.generate([GenerationRequest(promptIDs: [1], parameters: Self.greedy(1000))]) }
    }
}
