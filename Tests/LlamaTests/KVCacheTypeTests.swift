import Benchmarks
import Engine
import Foundation
import Kernels
import Llama
import Loading
import Sampling
import Testing
import TestSupport

/// A 16-bit KV cache (`--kv-cache-dtype bf16|f16`) on the default model: batch invariant
/// (alone, in a batch, prefilled in chunks), half the bytes per token, and close to the
/// fp32 cache, with the difference measured as `facet bench` reports it.
@Suite struct KVCacheTypeTests {
    static let model: LlamaModel? = Fixtures.defaultModelFile.flatMap { try? ModelLoader.load(path: $0).0 }

    @Test(arguments: [KVCacheType.bf16, .f16])
    func sixteenBitCacheIsBatchInvariantAndClose(type: KVCacheType) throws {
        guard let base = Self.model else {
            Issue.record("default model not fetched: run scripts/setup")
            return
        }
        let model = base.with(kvCacheType: type)
        #expect(model.makeKVStorage(blocks: 2, blockSize: 16).type == type)
        #expect(KVStorage.bytesPerToken(layers: 30, kvHeads: 3, headDim: 64, type: type) * 2
                == KVStorage.bytesPerToken(layers: 30, kvHeads: 3, headDim: 64, type: .fp32))
        let requests = ComputeModeTests.prompts.map { GenerationRequest(promptIDs: $0, parameters: ComputeModeTests.greedy(5)) }
        let alone = try requests.map { try BatchGenerator(model: model, tokenizer: nil).generate([$0], collectLogits: true)[0].stepLogits }
        let together = try BatchGenerator(model: model, tokenizer: nil).generate(requests, collectLogits: true).map(\.stepLogits)
        #expect(together == alone)
        for chunk in [1, 7] {
            let chunked = try BatchGenerator(model: model, tokenizer: nil, prefillChunk: chunk).generate(requests, collectLogits: true).map(\.stepLogits)
            #expect(chunked == alone, "prefill chunk \(chunk)")
        }
        let fp32 = try BatchGenerator(model: base, tokenizer: nil).generate([requests[0]], collectLogits: true)[0].stepLogits
        #expect(fp32[0] != alone[0][0], "a \(type) cache must round the keys and values")
        let a = try Benchmark.accuracy(reference: base, candidate: model, prompts: ComputeModeTests.prompts, newTokens: 6)
        #expect(a.meanKL > 0 && a.meanKL < 0.01, "mean KL \(a.meanKL)")
        #expect(a.tokenAgreement > 0.8, "token agreement \(a.tokenAgreement)")
    }
}
