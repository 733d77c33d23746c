import Foundation
import Kernels
import Synchronization
import Tensors
import Testing
import TestSupport

/// Every instruction-set tier this CPU has (AVX2, AVX-512, VNNI) gives bitwise the scalar
/// tier's results for every kernel family, and the scalar tier gives the Swift reference
/// twins' results where one exists. Tiers the CPU lacks are named as skipped.
@Suite(.serialized) struct InstructionTierTests {
    static let reported = Mutex(false)

    /// `body()` under each tier up to the CPU's, each result bitwise equal to the scalar tier's.
    /// Returns the scalar tier's result.
    @discardableResult
    static func acrossTiers(_ label: String, _ body: () -> [Float]) -> [Float] {
        let best = InstructionTier.current
        reported.withLock { done in
            guard !done else { return }
            done = true
            let skipped = InstructionTier.allCases.filter { $0 > best }
            print("InstructionTierTests: comparing \(InstructionTier.allCases.filter { $0 <= best }.map(\.environmentName)) against scalar; "
                  + (skipped.isEmpty ? "no tier skipped" : "skipped for lack of the instruction set: \(skipped.map(\.environmentName))"))
        }
        InstructionTier.capThisThread(.scalar)
        let scalar = body()
        defer { InstructionTier.capThisThread(nil) }
        for tier in InstructionTier.allCases where tier > .scalar && tier <= best {
            InstructionTier.capThisThread(tier)
            let y = body()
            #expect(y.map(\.bitPattern) == scalar.map(\.bitPattern), "\(label): tier \(tier.environmentName) differs from scalar")
        }
        return scalar
    }

    static func random(_ n: Int, _ seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = SplitMix(seed: seed)
        return (0..<n).map { _ in rng.float() * scale }
    }

    @Test func dotProductsMatchTheSwiftTwinOnEveryTier() {
        for n in [1, 7, 15, 16, 17, 33, 64, 100, 576] {
            let a = Self.random(n, UInt64(n)), b = Self.random(n, UInt64(n) + 99)
            let scalar = Self.acrossTiers("dot n=\(n)") { [a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { dot(ap.baseAddress!, $0.baseAddress!, n) } }] }
            let twin = a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { referenceDot(ap.baseAddress!, $0.baseAddress!, n) } }
            #expect(scalar[0].bitPattern == twin.bitPattern, "dot n=\(n): C scalar tier \(scalar[0]) vs Swift twin \(twin)")
        }
    }

    @Test(arguments: [(1, 16, 4), (3, 37, 11), (4, 64, 8), (5, 69, 13), (9, 576, 9), (17, 100, 30)])
    func denseProductsMatchTheSwiftTwinOnEveryTier(shape: (Int, Int, Int)) {
        let (T, K, O) = shape
        let x = Self.random(T * K, 1), w = Self.random(O * K, 2), bias = Self.random(O, 3)
        for withBias in [false, true] {
            let scalar = Self.acrossTiers("matmul \(shape) bias \(withBias)") {
                var y = [Float](repeating: .nan, count: T * O)
                x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in bias.withUnsafeBufferPointer { bp in
                    y.withUnsafeMutableBufferPointer {
                        MatMul.nt(x: xp.baseAddress!, w: wp.baseAddress!, bias: withBias ? bp.baseAddress! : nil, y: $0.baseAddress!, t: T, k: K, o: O)
                    }
                } } }
                return y
            }
            var twin = [Float](repeating: .nan, count: T * O)
            x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in bias.withUnsafeBufferPointer { bp in
                twin.withUnsafeMutableBufferPointer {
                    MatMul.referenceNT(x: xp.baseAddress!, w: wp.baseAddress!, bias: withBias ? bp.baseAddress! : nil, y: $0.baseAddress!, t: T, k: K, o: O)
                }
            } } }
            #expect(scalar.map(\.bitPattern) == twin.map(\.bitPattern), "matmul \(shape): C scalar tier vs Swift twin")
        }
    }

    @Test(arguments: LowRankMatrix.Precision.allCases)
    func loraFactorsAgreeOnEveryTier(precision: LowRankMatrix.Precision) {
        // A rank that no grouping of rows divides; outputs: nine vectors of 16 and a scalar tail of 5.
        let n = 5, inDim = 77, outDim = 149, r = 13
        let x = Self.random(n * inDim, 4)
        let a = LowRankMatrix(Matrix(rows: r, cols: inDim, data: Self.random(r * inDim, 5)), precision: precision)
        let bT = LowRankMatrix(Matrix(rows: r, cols: outDim, data: Self.random(r * outDim, 6)), precision: precision)
        let rows: [Int32] = [4, 0, 2, 6, 1]
        let y0 = Self.random(7 * outDim, 8)
        let scalar = Self.acrossTiers("LoRA \(precision)") {
            var u = [Float](repeating: .nan, count: n * r)
            var y = y0
            x.withUnsafeBufferPointer { xp in u.withUnsafeMutableBufferPointer { LowRank.shrink(x: xp.baseAddress!, a: a, u: $0.baseAddress!, n: n) } }
            u.withUnsafeBufferPointer { up in rows.withUnsafeBufferPointer { rp in
                y.withUnsafeMutableBufferPointer { LowRank.expandAdd(u: up.baseAddress!, bT: bT, scale: 0.75, y: $0.baseAddress!, rows: rp.baseAddress!, n: n) }
            } }
            return u + y
        }
        // Each u[i, j] (the first n * r values) is the plain dot product x_i . A_j.
        let widened = a.matrix.data
        for i in 0..<n {
            for j in 0..<r {
                let expected = x.withUnsafeBufferPointer { xp in widened.withUnsafeBufferPointer { dot(xp.baseAddress! + i * inDim, $0.baseAddress! + j * inDim, inDim) } }
                #expect(scalar[i * r + j].bitPattern == expected.bitPattern, "shrink u[\(i), \(j)] \(precision) is not the dot product")
            }
        }
        // Each delta is u_i0 b_0, then fused multiply-adds in rank order, scaled, added to y.
        let b = bT.matrix.data
        for (i, row) in rows.enumerated() {
            for o in 0..<outDim {
                var acc = b[o] * scalar[i * r]
                for j in 1..<r { acc = acc.addingProduct(scalar[i * r + j], b[j * outDim + o]) }
                let expected = y0[Int(row) * outDim + o] + acc * 0.75
                #expect(scalar[n * r + Int(row) * outDim + o].bitPattern == expected.bitPattern, "expand y[\(row), \(o)] \(precision) is not the rank-ordered chain")
            }
        }
    }

    @Test(arguments: KVCacheType.allCases)
    func attentionAgreesOnEveryTier(type: KVCacheType) {
        // Head sizes: 64 + a scalar tail of 8, one chunk of 64, two chunks of 16 + a tail of 8.
        for hd in [72, 64, 40] {
            let heads = 6, kvHeads = 2, bs = 16, blocks = 5, positions = 70
            let table: [Int32] = [3, 0, 4, 1, 2]
            let k = Self.random(blocks * bs * kvHeads * hd, 9), v = Self.random(blocks * bs * kvHeads * hd, 10)
            var k16 = [UInt8](repeating: 0, count: k.count * type.elementBytes), v16 = k16
            k.withUnsafeBufferPointer { p in k16.withUnsafeMutableBytes { type.store(p.baseAddress!, rows: k.count / hd, rowLength: hd, to: $0.baseAddress!, at: 0) } }
            v.withUnsafeBufferPointer { p in v16.withUnsafeMutableBytes { type.store(p.baseAddress!, rows: v.count / hd, rowLength: hd, to: $0.baseAddress!, at: 0) } }
            let q = Self.random(positions * heads * hd, 11, scale: 3)
            let firsts = (0..<positions).map { max(0, $0 - 40) }, lasts = Array(0..<positions)
            Self.acrossTiers("attention \(type) hd \(hd)") {
                k16.withUnsafeBytes { kp in v16.withUnsafeBytes { vp in
                    let layer = Attention.PagedLayer(keys: kp.baseAddress!, values: vp.baseAddress!, blockSize: bs, kvHeads: kvHeads, headDim: hd, type: type)
                    return KernelTests.attendInTiles(queries: q, heads: heads, layer: layer, table: table, firsts: firsts, lasts: lasts, scale: 0.125, tile: 16)
                } }
            }
        }
    }

    /// `w`'s products with `x: [T, K]` in every compute mode, each on every tier.
    static func productsAgreeAcrossTiers(_ w: LinearWeight, _ x: [Float], t T: Int, _ label: String) {
        for compute in ComputeMode.allCases {
            Self.acrossTiers("\(label) \(compute)") {
                var y = [Float](repeating: .nan, count: T * w.rows)
                x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { w.matmul(x: xp.baseAddress!, t: T, y: $0.baseAddress!, compute: compute) } }
                return y
            }
        }
    }

    @Test(arguments: [WeightFormat.q4_0, .q4_1, .q8_0, .f16, .bf16])
    func compactProductsAgreeOnEveryTier(format: WeightFormat) throws {
        // 27 tokens: groups of 8 (fp32/int8 AVX-512), of 16 and 8 (bf16), and 3 more; 1 token: the
        // decode paths (fp32 AVX-512: 8 rows, then a pair, then one row alone, so 19 rows).
        let K = 128, O = 19
        let w = try LinearWeight.quantize(Matrix(rows: O, cols: K, data: Self.random(O * K, 12)), to: format)
        for T in [27, 1] { Self.productsAgreeAcrossTiers(w, Self.random(T * K, 13 + UInt64(T)), t: T, "\(format) T=\(T)") }
    }

    @Test(arguments: [WeightFormat.q4_k, .q6_k])
    func kQuantProductsAgreeOnEveryTier(format: WeightFormat) throws {
        let K = 256, O = 10, T = 27
        let w = try CompactWeightTests.randomKQuant(format, rows: O, cols: K, seed: 31)
        Self.productsAgreeAcrossTiers(w, Self.random(T * K, 32), t: T, "\(format)")
    }

    @Test func trainingProductsAndElementwiseMathAgreeOnEveryTier() {
        // Wide outputs, and the rank-wide ones of LoRA (8 and 16 columns: their own tiles),
        // with row counts that leave every tile's remainder.
        for (rows, inner, width) in [(9, 300, 70), (29, 300, 8), (17, 70, 16), (13, 50, 5), (30, 40, 13), (25, 600, 24), (3, 9, 9)] {
            let g = Self.random(rows * inner, 14), w = Self.random(inner * width, 15)
            let scalar = Self.acrossTiers("training product \(rows)x\(inner)x\(width)") {
                var out = Self.random(rows * width, 16)
                g.withUnsafeBufferPointer { gp in w.withUnsafeBufferPointer { wp in
                    out.withUnsafeMutableBufferPointer { DenseProduct.add($0.baseAddress!, gp.baseAddress!, rows: rows, inner: inner, wp.baseAddress!, width: width) }
                } }
                return out
            }
            // The scalar tier is each output's chain of fused adds in increasing inner index.
            let start = Self.random(rows * width, 16)
            for t in 0..<rows { for j in 0..<width {
                var acc = start[t * width + j]
                for o in 0..<inner { acc = acc.addingProduct(g[t * inner + o], w[o * width + j]) }
                #expect(scalar[t * width + j].bitPattern == acc.bitPattern, "training product \(rows)x\(inner)x\(width) [\(t), \(j)]")
            } }
        }
        let values = Self.random(1000, 17, scale: 30), da = Self.random(1000, 18)
        Self.acrossTiers("exp and SiLU") {
            var e = values, gate = values
            var dGate = [Float](repeating: .nan, count: values.count), dUp = dGate
            e.withUnsafeMutableBufferPointer { VectorMath.expShifted($0.baseAddress!, count: $0.count, shift: 2) }
            values.withUnsafeBufferPointer { up in gate.withUnsafeMutableBufferPointer { Activation.siluMul(gate: $0.baseAddress!, up: up.baseAddress!, count: $0.count) } }
            values.withUnsafeBufferPointer { g in da.withUnsafeBufferPointer { d in dGate.withUnsafeMutableBufferPointer { dg in dUp.withUnsafeMutableBufferPointer { du in
                Activation.siluMulBackward(gate: g.baseAddress!, up: g.baseAddress!, dOut: d.baseAddress!, dGate: dg.baseAddress!, dUp: du.baseAddress!, count: values.count)
            } } } }
            return e + gate + dGate + dUp
        }
    }

    /// Training attention, forward and backward: bitwise across tiers, and within float
    /// rounding of a naive Double computation (window, grouped heads, a head size with a tail).
    @Test(arguments: [(7, 64, 3, 0), (33, 40, 2, 5), (1, 16, 1, 0), (20, 64, 1, 0)])
    func trainingAttentionAgreesOnEveryTierAndWithTheMath(shape: (Int, Int, Int, Int)) {
        let (n, hd, group, window) = shape
        let qs = group * hd + 3, kvs = hd + 5, scale = 1 / Float(hd).squareRoot()
        let q = Self.random(n * qs, 21, scale: 2), k = Self.random(n * kvs, 22, scale: 2), v = Self.random(n * kvs, 23), dout = Self.random(n * qs, 24)
        var probs = [Float](), out = [Float]()
        let both = Self.acrossTiers("training attention \(shape)") {
            var o = [Float](repeating: 0, count: n * qs), p = [Float](repeating: 0, count: group * n * n)
            var dq = [Float](repeating: 0, count: n * qs), dk = [Float](repeating: 0, count: n * kvs), dv = [Float](repeating: 0, count: n * kvs)
            q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in dout.withUnsafeBufferPointer { gp in
                o.withUnsafeMutableBufferPointer { op in p.withUnsafeMutableBufferPointer { pp in
                    for i in 0..<group {
                        TrainingAttention.forward(q: qp.baseAddress! + i * hd, k: kp.baseAddress!, v: vp.baseAddress!, qStride: qs, kvStride: kvs,
                                                  tokens: n, headDim: hd, window: window, scale: scale, out: op.baseAddress! + i * hd,
                                                  probs: pp.baseAddress! + i * n * n)
                    }
                    dq.withUnsafeMutableBufferPointer { dqp in dk.withUnsafeMutableBufferPointer { dkp in dv.withUnsafeMutableBufferPointer { dvp in
                        TrainingAttention.backward(dout: gp.baseAddress!, q: qp.baseAddress!, k: kp.baseAddress!, v: vp.baseAddress!,
                                                   probs: UnsafePointer(pp.baseAddress!), qStride: qs, kvStride: kvs, tokens: n, headDim: hd,
                                                   group: group, window: window, scale: scale,
                                                   dq: dqp.baseAddress!, dk: dkp.baseAddress!, dv: dvp.baseAddress!)
                    } } }
                } }
            } } } }
            probs = p
            out = o
            return o + p + dq + dk + dv
        }
        // The math in Double: P = softmax(q k^T * scale) over first...t, out = P v, and the
        // gradients dv = P^T dout, dS = P (dP - rowsum(P dP)), dq = dS k * scale, dk = dS^T q * scale.
        var wantOut = [Double](repeating: 0, count: n * qs), wantP = [Double](repeating: 0, count: group * n * n)
        var dq = [Double](repeating: 0, count: n * qs), dk = [Double](repeating: 0, count: n * kvs), dv = [Double](repeating: 0, count: n * kvs)
        for i in 0..<group {
            for t in 0..<n {
                let first = window > 0 ? max(0, t - window + 1) : 0
                var s = [Double](repeating: 0, count: n)
                for j in first...t { s[j] = (0..<hd).reduce(0.0) { $0 + Double(q[t * qs + i * hd + $1]) * Double(k[j * kvs + $1]) } * Double(scale) }
                let top = s[first...t].max()!
                let total = (first...t).reduce(0.0) { $0 + exp(s[$1] - top) }
                for j in first...t { wantP[i * n * n + t * n + j] = exp(s[j] - top) / total }
                for d in 0..<hd { wantOut[t * qs + i * hd + d] = (first...t).reduce(0.0) { $0 + wantP[i * n * n + t * n + $1] * Double(v[$1 * kvs + d]) } }
                let dp = (0..<n).map { j in j < first || j > t ? 0 : (0..<hd).reduce(0.0) { $0 + Double(dout[t * qs + i * hd + $1]) * Double(v[j * kvs + $1]) } }
                let sum = (first...t).reduce(0.0) { $0 + wantP[i * n * n + t * n + $1] * dp[$1] }
                for j in first...t {
                    let p = wantP[i * n * n + t * n + j], ds = p * (dp[j] - sum) * Double(scale)
                    for d in 0..<hd {
                        dv[j * kvs + d] += p * Double(dout[t * qs + i * hd + d])
                        dq[t * qs + i * hd + d] += ds * Double(k[j * kvs + d])
                        dk[j * kvs + d] += ds * Double(q[t * qs + i * hd + d])
                    }
                }
            }
        }
        let want = wantOut + wantP + dq + dk + dv
        let worst = zip(both, want).map { abs(Double($0) - $1) / max(1, abs($1)) }.max() ?? 0
        #expect(worst < 1e-5, "training attention \(shape): worst relative error \(worst) against the math in Double")
        #expect(out.count == n * qs && probs.count == group * n * n)
    }

    /// A misspelt FACET_ISA is an error that names the valid values (only values that cap
    /// nothing are set here: the kernels read the variable once, possibly during this test).
    @Test func theTierCapIsValidated() throws {
        #expect(InstructionTier.allCases.map(\.environmentName) == ["scalar", "avx2", "avx512", "avx512vnni", "native"])
        setenv("FACET_ISA", "avx-512", 1)
        #expect(throws: FacetError.self) { try InstructionTier.validateEnvironment() }
        setenv("FACET_ISA", "native", 1)
        try InstructionTier.validateEnvironment()
        unsetenv("FACET_ISA")
        try InstructionTier.validateEnvironment()
    }
}
