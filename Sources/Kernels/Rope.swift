import Foundation

/// Rotary position embedding tables, Hugging Face "rotate_half" convention.
package struct RopeTable: Sendable {
    /// `invFreq[i]` for `i in 0..<headDim/2`, already adjusted for any rope scaling.
    package let invFreq: [Float]
    package let headDim: Int
    /// Multiplier applied to cos/sin (1 except for scaling schemes that change attention
    /// temperature, none of which we support yet).
    package let attentionFactor: Float

    package init(invFreq: [Float], headDim: Int, attentionFactor: Float = 1) {
        self.invFreq = invFreq
        self.headDim = headDim
        self.attentionFactor = attentionFactor
    }

    /// Semantics: for every token t and head h of `x: [T, heads * headDim]`, with
    /// `f_i = positions[t] * invFreq[i]`, `half = headDim / 2`, `i in 0..<half`:
    /// `x1 = x[t,h,i]`, `x2 = x[t,h,i+half]`;
    /// `x[t,h,i] = x1 cos f_i - x2 sin f_i`, `x[t,h,i+half] = x2 cos f_i + x1 sin f_i`.
    package func apply(_ x: UnsafeMutablePointer<Float>, tokens T: Int, heads: Int, positions: UnsafePointer<Int32>) {
        let half = headDim / 2
        let rowStride = heads * headDim
        // The tables live on the stack: a step does not allocate here.
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * half) { tables in
            let cosTable = tables.baseAddress!, sinTable = cosTable + half
            for t in 0..<T {
                let p = Float(positions[t])
                for i in 0..<half {
                    let f = p * invFreq[i]
                    cosTable[i] = cosf(f) * attentionFactor
                    sinTable[i] = sinf(f) * attentionFactor
                }
                for h in 0..<heads {
                    let v = x + t * rowStride + h * headDim
                    for i in 0..<half {
                        let x1 = v[i], x2 = v[i + half]
                        v[i] = x1 * cosTable[i] - x2 * sinTable[i]
                        v[i + half] = x2 * cosTable[i] + x1 * sinTable[i]
                    }
                }
            }
        }
    }

    /// `apply` with the tokens split over the pool (each token's rotation on one task: the
    /// same bits), for training's whole-batch passes.
    package func applyInParallel(_ x: UnsafeMutablePointer<Float>, tokens T: Int, heads: Int, positions: UnsafePointer<Int32>) {
        let split = Parallel.Split(T, work: T * heads * headDim * 4)
        let stride = heads * headDim
        Parallel.forEach(split.parts) { part in
            let r = split.range(part)
            apply(x + r.lowerBound * stride, tokens: r.count, heads: heads, positions: positions + r.lowerBound)
        }
    }
}
