import Foundation
import Llama
import Loading
import Testing
import TestSupport

/// The forward hook: named activations per layer, and no effect on the result.
@Suite struct ForwardHookTests {
    static let model = try! ModelLoader.load(path: Fixtures.tinyModel).0

    struct Tap { var name: String; var layer: Int?; var rows: Int; var cols: Int; var values: [Float] }

    func run(_ tokens: [Int32], hook: Bool) throws -> (logits: [Float], taps: [Tap]) {
        var batch = ForwardBatch()
        batch.blockTables.append([0, 1, 2, 3])
        batch.append(sequence: 0, tokens: tokens, startPosition: 0, adapterSlot: -1, wantLogits: true)
        let kv = Self.model.makeKVStorage(blocks: 4, blockSize: 16)
        let logits = Logits()
        var taps: [Tap] = []
        try Self.model.forward(batch, kv: kv, deltas: nil, into: logits, hook: hook ? { t in
            taps.append(Tap(name: t.name, layer: t.layer, rows: t.rows, cols: t.cols, values: Array(t.values)))
        } : nil)
        return (logits.array(0), taps)
    }

    @Test func tapsAreNamedAndLeaveTheResultUnchanged() throws {
        let tokens: [Int32] = [1, 17, 42, 99, 5]
        let plain = try run(tokens, hook: false)
        let hooked = try run(tokens, hook: true)
        #expect(plain.logits == hooked.logits)      // bitwise
        #expect(plain.taps.isEmpty)
        let c = Self.model.config
        let perLayer = ["attn_norm", "q", "k", "v", "attn_out", "attn_proj", "ffn_norm", "gate", "up", "mlp_out", "residual"]
        let expected = ["embed"] + (0..<c.numLayers).flatMap { _ in perLayer } + ["final_norm"]
        #expect(hooked.taps.map(\.name) == expected)
        #expect(hooked.taps.first { $0.name == "q" }?.cols == c.numHeads * c.headDim)
        #expect(hooked.taps.first { $0.name == "k" }?.cols == c.numKVHeads * c.headDim)
        #expect(hooked.taps.first { $0.name == "gate" }?.cols == c.intermediateSize)
        #expect(hooked.taps.last?.rows == 1)
    }

    /// The taps hold what their names say: the norms match the naive reference, and each
    /// block's residual is the previous one plus its attention and MLP outputs.
    @Test func tapsHoldTheActivations() throws {
        let (_, taps) = try run([1, 17, 42, 99, 5], hook: true)
        let c = Self.model.config, D = c.hiddenSize
        func tap(_ name: String, _ layer: Int?) -> Tap { taps.first { $0.name == name && $0.layer == layer }! }
        let embed = tap("embed", nil)
        let norm0 = Reference.rmsNorm(x: embed.values, weight: Self.model.weights.layers[0].attnNorm, dim: D, eps: c.rmsNormEps)
        #expect(maxRelativeError(tap("attn_norm", 0).values, norm0) < 1e-5)
        var stream = embed.values
        for l in 0..<c.numLayers {
            let attn = tap("attn_proj", l).values, mlp = tap("mlp_out", l).values
            for i in stream.indices { stream[i] += attn[i] }
            for i in stream.indices { stream[i] += mlp[i] }
            #expect(stream == tap("residual", l).values, "layer \(l)")
        }
        let last = Array(stream[(4 * D)..<(5 * D)])
        let finalNorm = Reference.rmsNorm(x: last, weight: Self.model.weights.finalNorm, dim: D, eps: c.rmsNormEps)
        #expect(maxRelativeError(tap("final_norm", nil).values, finalNorm) < 1e-5)
    }
}
