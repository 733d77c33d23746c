import Foundation

/// Naive twins of the optimized kernels, written for clarity and used only by tests.
public enum Reference {
    /// `y = x W^T (+ bias)`, summed in Double.
    public static func matmulNT(x: [Float], w: [Float], bias: [Float]? = nil, t: Int, k: Int, o: Int) -> [Float] {
        var y = [Float](repeating: 0, count: t * o)
        for i in 0..<t {
            for j in 0..<o {
                var s = 0.0
                for l in 0..<k { s += Double(x[i * k + l]) * Double(w[j * k + l]) }
                if let bias { s += Double(bias[j]) }
                y[i * o + j] = Float(s)
            }
        }
        return y
    }

    /// `y[rows[i]] += scale * (x[i] A^T) B^T` summed in Double (`x: [n, in]`, `a: [r, in]`,
    /// `b: [out, r]` in checkpoint orientation).
    public static func loraAdd(y: [Float], rows: [Int], x: [Float], a: [Float], b: [Float], rank r: Int, inDim: Int, outDim: Int,
                               scale: Float) -> [Float] {
        var y = y
        for (i, row) in rows.enumerated() {
            var u = [Double](repeating: 0, count: r)
            for j in 0..<r { for k in 0..<inDim { u[j] += Double(x[i * inDim + k]) * Double(a[j * inDim + k]) } }
            for o in 0..<outDim {
                var d = 0.0
                for j in 0..<r { d += u[j] * Double(b[o * r + j]) }
                y[row * outDim + o] = Float(Double(y[row * outDim + o]) + d * Double(scale))
            }
        }
        return y
    }

    public static func rmsNorm(x: [Float], weight: [Float], dim: Int, eps: Float) -> [Float] {
        var y = x
        for r in 0..<(x.count / dim) {
            var ss = 0.0
            for d in 0..<dim { ss += Double(x[r * dim + d]) * Double(x[r * dim + d]) }
            let inv = 1 / (ss / Double(dim) + Double(eps)).squareRoot()
            for d in 0..<dim { y[r * dim + d] = Float(Double(x[r * dim + d]) * inv * Double(weight[d])) }
        }
        return y
    }

    /// Softmax attention of one query over dense keys/values `[positions, kvHeads, headDim]`.
    public static func attention(
        q: [Float], keys: [Float], values: [Float], heads: Int, kvHeads: Int, headDim: Int, positions: Int, scale: Float
    ) -> [Float] {
        var out = [Float](repeating: 0, count: heads * headDim)
        let group = heads / kvHeads
        for h in 0..<heads {
            let kvh = h / group
            var s = [Double](repeating: 0, count: positions)
            for j in 0..<positions {
                var d = 0.0
                for i in 0..<headDim { d += Double(q[h * headDim + i]) * Double(keys[(j * kvHeads + kvh) * headDim + i]) }
                s[j] = d * Double(scale)
            }
            let m = s.max() ?? 0
            let e = s.map { exp($0 - m) }
            let total = e.reduce(0, +)
            for i in 0..<headDim {
                var acc = 0.0
                for j in 0..<positions { acc += e[j] / total * Double(values[(j * kvHeads + kvh) * headDim + i]) }
                out[h * headDim + i] = Float(acc)
            }
        }
        return out
    }

    /// The int8 compute mode's activation rounding: per block of 32, `d = max|x| / 127`,
    /// `q = round-half-even(x / d)` (multiplying by `1/d`), `s = d * sum(q)`.
    public static func quantizeActivations(x: [Float], k: Int) -> (q: [Int8], d: [Float], s: [Float]) {
        var q = [Int8](repeating: 0, count: x.count)
        var d: [Float] = [], s: [Float] = []
        for start in stride(from: 0, to: x.count, by: 32) {
            let block = x[start..<(start + 32)]
            let scale = (block.map { abs($0) }.max() ?? 0) / 127
            let inverse: Float = scale != 0 ? 1 / scale : 0
            var sum = 0
            for (i, v) in block.enumerated() {
                let r = Int(max(-127, min(127, (v * inverse).rounded(.toNearestOrEven))))
                q[start + i] = Int8(r)
                sum += r
            }
            d.append(scale)
            s.append(scale * Float(sum))
        }
        return (q, d, s)
    }

    /// `y = xq W^T` in Double, where `xq` is the int8 mode's rounded activations `d_b * q_k`
    /// and `W` the dequantized weights.
    public static func matmulInt8(x: [Float], w: [Float], t: Int, k: Int, o: Int) -> [Float] {
        let (q, d, _) = quantizeActivations(x: x, k: k)
        let xq = q.indices.map { Float(q[$0]) * d[$0 / 32] }
        return matmulNT(x: xq, w: w, t: t, k: k, o: o)
    }

    /// The bf16 mode's rounding of one activation, written plainly: nearest even on the
    /// 16 dropped bits, NaN kept (quieted), magnitudes below 2^-64 to a zero of their sign.
    public static func roundBF16(_ x: Float) -> Float {
        if x.isNaN { return Float(bitPattern: (x.bitPattern | 0x0040_0000) & 0xFFFF_0000) }
        if x.isInfinite { return x }
        if abs(x) < 0x1p-64 { return x.sign == .minus ? -0.0 : 0.0 }
        let bits = x.bitPattern, dropped = bits & 0xFFFF, kept = bits & 0xFFFF_0000
        let roundUp = dropped > 0x8000 || (dropped == 0x8000 && (kept >> 16) & 1 == 1)
        return Float(bitPattern: roundUp ? kept &+ 0x1_0000 : kept)
    }

    /// The bf16 mode's products in Double on bf16-rounded activations.
    public static func matmulBF16(x: [Float], w: [Float], t: Int, k: Int, o: Int) -> [Float] {
        matmulNT(x: x.map(roundBF16), w: w, t: t, k: k, o: o)
    }
}
