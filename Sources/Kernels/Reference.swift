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
}
