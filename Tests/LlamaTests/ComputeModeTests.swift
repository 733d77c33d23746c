import Engine
import Benchmarks
import Foundation
import Kernels
import Llama
import Loading
import Sampling
import Testing
import TestSupport

/// The opt-in int8 and bf16 compute modes on the default (Q4_1) model: still batch invariant, close
/// to the fp32 default, and measured honestly by the benchmark's accuracy report.
@Suite struct ComputeModeTests {
    static let model: LlamaModel? = Fixtures.defaultModelFile.flatMap { try? ModelLoader.load(path: $0).0 }

    static func greedy(_ n: Int) -> SamplingParameters {
        var p = SamplingParameters()
        p.temperature = 0
        p.maxTokens = n
        return p
    }

    static let prompts: [[Int32]] = [
        [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2],
        [504, 3458, 282, 4649, 314],
        Array(1...37).map { Int32($0 * 131 % 49_000 + 1) },
    ]

    @Test(arguments: [ComputeMode.int8, .bf16])
    func fastModeIsBatchInvariant(mode: ComputeMode) throws {
        guard let base = Self.model else {
            Issue.record("default model not fetched: run scripts/setup")
            return
        }
        let model = base.with(compute: mode)
        let requests = Self.prompts.map { GenerationRequest(promptIDs: $0, parameters: Self.greedy(5)) }
        let alone = try requests.map { try BatchGenerator(model: model, tokenizer: nil).generate([$0], collectLogits: true)[0].stepLogits }
        let together = try BatchGenerator(model: model, tokenizer: nil).generate(requests, collectLogits: true).map(\.stepLogits)
        #expect(together == alone)
        for chunk in [1, 4, 7] {
            let chunked = try BatchGenerator(model: model, tokenizer: nil, prefillChunk: chunk).generate(requests, collectLogits: true).map(\.stepLogits)
            #expect(chunked == alone, "prefill chunk \(chunk)")
        }
        let fp32 = try BatchGenerator(model: base, tokenizer: nil).generate([requests[0]], collectLogits: true)[0].stepLogits
        #expect(fp32[0] != alone[0][0], "the \(mode) mode must change the arithmetic")
    }

    /// fp32 products from the tiled copies (`--weight-tiles auto`; read on AVX-512) give the
    /// file layout's bits: one sequence alone (one-token decode steps, whole prompts), three
    /// together (three-token steps) and prompts prefilled in chunks of 1 and 3 all reproduce
    /// the model without tiles, logit for logit.
    @Test func fp32TilesChangeNoBit() throws {
        guard let base = Self.model else {
            Issue.record("default model not fetched: run scripts/setup")
            return
        }
        let plain = base.with(weightTiles: .off), tiled = base.with(weightTiles: .auto)
        #expect(plain.weights.tileBytes == 0)
        #expect((tiled.weights.tileBytes > 0) == LinearWeight.fp32ReadsTiles, "tiles are made where the fp32 products read them")
        let requests = Self.prompts.map { GenerationRequest(promptIDs: $0, parameters: Self.greedy(5)) }
        let want = try requests.map { try BatchGenerator(model: plain, tokenizer: nil).generate([$0], collectLogits: true)[0].stepLogits }
        let alone = try requests.map { try BatchGenerator(model: tiled, tokenizer: nil).generate([$0], collectLogits: true)[0].stepLogits }
        #expect(alone == want)
        #expect(try BatchGenerator(model: tiled, tokenizer: nil).generate(requests, collectLogits: true).map(\.stepLogits) == want)
        for chunk in [1, 3] {
            let chunked = try BatchGenerator(model: tiled, tokenizer: nil, prefillChunk: chunk).generate(requests, collectLogits: true).map(\.stepLogits)
            #expect(chunked == want, "prefill chunk \(chunk)")
        }
        #expect(base.with(compute: .bf16, weightTiles: .auto).weights.tileBytes == 0, "the bf16 mode reads no tiles, so it keeps none")
        #expect(base.with(compute: .int8, weightTiles: .auto).weights.tileBytes > 0)
        #expect(base.with(compute: .int8, weightTiles: .off).weights.tileBytes == 0)
    }

    @Test func accuracyReportMeasuresTheDifference() throws {
        guard let base = Self.model else {
            Issue.record("default model not fetched: run scripts/setup")
            return
        }
        let same = try Benchmark.accuracy(reference: base, candidate: base, prompts: Self.prompts, newTokens: 6)
        #expect(same.identicalContinuations == Self.prompts.count && same.tokenAgreement == 1 && same.meanKL == 0)
        let int8 = try Benchmark.accuracy(reference: base, candidate: base.with(compute: .int8), prompts: Self.prompts, newTokens: 6)
        #expect(int8.meanKL > 0 && int8.meanKL < 0.05, "mean KL \(int8.meanKL)")
        #expect(int8.maxKL >= int8.meanKL)
        #expect(int8.tokenAgreement > 0.6)
        let bf16 = try Benchmark.accuracy(reference: base, candidate: base.with(compute: .bf16), prompts: Self.prompts, newTokens: 6)
        #expect(bf16.meanKL > 0 && bf16.meanKL < 0.05, "mean KL \(bf16.meanKL)")
        #expect(bf16.tokenAgreement > 0.6)
    }
}
