import Foundation
import Kernels
import Llama
import Loading
import Tensors
import Testing
import TestSupport
import Training

/// Each op's backward against central finite differences of its forward:
/// `d/dθ Σ (dy ⊙ f(θ))` ≈ `(Σ dy ⊙ f(θ + ε) − Σ dy ⊙ f(θ − ε)) / 2ε`, in Double where the
/// op allows, else in Float with ε = 1e-2.
@Suite struct GradientCheckTests {
    static let (model, _) = try! ModelLoader.load(path: Fixtures.tinyModel)

    static func random(_ n: Int, _ rng: inout SplitMix, scale: Float = 1) -> [Float] { (0..<n).map { _ in rng.float() * scale } }

    static func dot(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).reduce(0) { $0 + Double($1.0) * Double($1.1) } }

    /// Checks `analytic` against finite differences of `objective` at up to 24 entries of `x`.
    static func check(_ x: [Float], _ analytic: [Float], eps: Float = 1e-2, tolerance: Double = 2e-3, _ objective: ([Float]) -> Double,
                      _ what: String) {
        #expect(x.count == analytic.count, "\(what): sizes")
        let scale = max(analytic.map { Double(abs($0)) }.max() ?? 0, 1e-6)
        for i in stride(from: 0, to: x.count, by: max(1, x.count / 24)) {
            var plus = x, minus = x
            plus[i] += eps
            minus[i] -= eps
            let numeric = (objective(plus) - objective(minus)) / Double(2 * eps)
            #expect(abs(numeric - Double(analytic[i])) / scale < tolerance, "\(what)[\(i)]: numeric \(numeric), analytic \(analytic[i])")
        }
    }

    @Test func rmsNorm() {
        var rng = SplitMix(seed: 1)
        let T = 3, D = 16
        let x = Self.random(T * D, &rng), w = Self.random(D, &rng), dy = Self.random(T * D, &rng)
        let dx = LoRABackprop.rmsBackward(x, w, dy, T, D, 1e-5)
        Self.check(x, dx, { Self.dot(dy, LoRABackprop.rms($0, w, T, D, 1e-5)) }, "rms")
    }

    @Test func siluGate() {
        var rng = SplitMix(seed: 2)
        let g = Self.random(40, &rng, scale: 3), u = Self.random(40, &rng), dy = Self.random(40, &rng)
        // d/dg Σ dy silu(g) u = dy u σ(g)(1 + g(1 − σ(g)))
        let analytic = (0..<40).map { i -> Float in
            let s = 1 / (1 + exp(-g[i]))
            return dy[i] * u[i] * s * (1 + g[i] * (1 - s))
        }
        Self.check(g, analytic, { gs in Self.dot(dy, (0..<40).map { LoRABackprop.silu(gs[$0]) * u[$0] }) }, "silu")
    }

    @Test func ropeIsARotationWhoseTransposeRotatesBack() throws {
        let engine = try LoRABackprop(model: Self.model)
        var rng = SplitMix(seed: 3)
        let T = 4, H = 2, hd = Self.model.config.headDim
        let x = Self.random(T * H * hd, &rng), dy = Self.random(T * H * hd, &rng)
        func rope(_ v: [Float], _ sign: Int32) -> [Float] {
            var out = v
            let pos = (0..<T).map { Int32($0 * 3) * sign }
            pos.withUnsafeBufferPointer { p in out.withUnsafeMutableBufferPointer { engine.rope.apply($0.baseAddress!, tokens: T, heads: H, positions: p.baseAddress!) } }
            return out
        }
        Self.check(x, rope(dy, -1), { Self.dot(dy, rope($0, 1)) }, "rope")
    }

    @Test func attention() throws {
        let engine = try LoRABackprop(model: Self.model)
        let c = Self.model.config
        var rng = SplitMix(seed: 4)
        let T = 5, QD = c.numHeads * c.headDim, KVD = c.numKVHeads * c.headDim
        let q = Self.random(T * QD, &rng), k = Self.random(T * KVD, &rng), v = Self.random(T * KVD, &rng), dy = Self.random(T * QD, &rng)
        let (_, probs) = engine.attention(q: q, k: k, v: v, T: T)
        let (dq, dk, dv) = engine.attentionBackward(dout: dy, q: q, k: k, v: v, probs: probs, T: T)
        Self.check(q, dq, { Self.dot(dy, engine.attention(q: $0, k: k, v: v, T: T).out) }, "attention dq")
        Self.check(k, dk, { Self.dot(dy, engine.attention(q: q, k: $0, v: v, T: T).out) }, "attention dk")
        Self.check(v, dv, { Self.dot(dy, engine.attention(q: q, k: k, v: $0, T: T).out) }, "attention dv")
    }

    /// The C attention kernels against their Swift twins on a flat batch of three sequences.
    @Test func attentionKernelsMatchTheirTwins() throws {
        let engine = try LoRABackprop(model: Self.model)
        let c = Self.model.config
        var rng = SplitMix(seed: 8)
        let segments = [0..<5, 5..<6, 6..<23], T = 23, QD = c.numHeads * c.headDim, KVD = c.numKVHeads * c.headDim
        let q = Self.random(T * QD, &rng), k = Self.random(T * KVD, &rng), v = Self.random(T * KVD, &rng), dy = Self.random(T * QD, &rng)
        let fast = engine.attention(q: q, k: k, v: v, segments: segments), twin = engine.referenceAttention(q: q, k: k, v: v, segments: segments)
        let g = engine.attentionBackward(dout: dy, q: q, k: k, v: v, probs: fast.probs, segments: segments)
        let h = engine.referenceAttentionBackward(dout: dy, q: q, k: k, v: v, probs: fast.probs, segments: segments)
        for (name, a, b) in [("out", fast.out, twin.out), ("probs", fast.probs, twin.probs), ("dq", g.dq, h.dq), ("dk", g.dk, h.dk), ("dv", g.dv, h.dv)] {
            #expect(a.count == b.count)
            let worst = zip(a, b).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? 0
            #expect(worst < 1e-5, "attention \(name): worst relative difference \(worst)")
        }
    }

    /// A frozen base weight (fp32 and a compact format) with a LoRA pair and a dropout mask:
    /// the input gradient and the gradients of A and B.
    @Test(arguments: [WeightFormat.f32, .q8_0])
    func linearWithLoRA(format: WeightFormat) throws {
        let engine = try LoRABackprop(model: Self.model)
        let c = Self.model.config
        var lora = try TrainableLoRA(settings: LoRASettings(rank: 3, alpha: 6, targets: [.q]), config: c, seed: 9)
        var rng = SplitMix(seed: 5)
        let D = c.hiddenSize, O = c.numHeads * c.headDim, T = 3
        lora.pairs[0][.q]!.b = Self.random(O * 3, &rng, scale: 0.5)    // B starts at 0: make it count
        let base = Matrix(rows: O, cols: D, data: Self.random(O * D, &rng, scale: 0.2))
        let weight = format == .f32 ? LinearWeight(base) : try LinearWeight.quantize(base, to: format)
        let x = Self.random(T * D, &rng), dy = Self.random(T * O, &rng)
        let mask = (0..<(T * D)).map { i -> Float in i % 5 == 0 ? 0 : 1.25 }
        func objective(_ l: TrainableLoRA, _ input: [Float]) -> Double {
            Self.dot(dy, engine.linear(weight, nil, input, T, l.pairs[0][.q], l.scale, mask))
        }
        let dx = engine.linearBackward(weight, x, dy, T, &lora, 0, .q, mask)
        Self.check(x, dx, { objective(lora, $0) }, "\(format) dx")
        let pair = lora.pairs[0][.q]!
        Self.check(pair.a, pair.gradA, { a in var l = lora; l.pairs[0][.q]!.a = a; return objective(l, x) }, "\(format) dA")
        Self.check(pair.b, pair.gradB, { b in var l = lora; l.pairs[0][.q]!.b = b; return objective(l, x) }, "\(format) dB")
    }

    /// The whole chain (embedding → every layer → final norm → cross-entropy) for LoRA on
    /// every role, against finite differences of the loss.
    @Test func wholeModelLoss() throws {
        let engine = try LoRABackprop(model: Self.model)
        var lora = try TrainableLoRA(settings: LoRASettings(rank: 2, alpha: 4, targets: LinearRole.allCases), config: Self.model.config, seed: 11)
        var rng = SplitMix(seed: 6)
        for l in lora.pairs.indices { for r in lora.roles(l) { lora.pairs[l][r]!.b = Self.random(lora.pairs[l][r]!.b.count, &rng, scale: 0.3) } }
        let ex = TrainingExample(tokens: [1, 17, 250, 3, 99, 42, 7], labels: [-100, -100, -100, 3, 99, 42, 7])
        var none: TrainingRandom?
        _ = try engine.accumulate(ex, lora: &lora, normalizer: 1, dropout: &none)
        for role in [LinearRole.q, .k, .v, .o, .gate, .up, .down] {
            let pair = lora.pairs[1][role]!
            Self.check(pair.b, pair.gradB, eps: 1e-2, tolerance: 5e-3, { b in
                var l = lora
                l.pairs[1][role]!.b = b
                return (try? engine.evaluate(ex, lora: l).nll) ?? .nan
            }, "model dB \(role)")
        }
    }
}
