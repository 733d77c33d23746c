import Foundation
internal import CKernels

public enum Norm {
    /// Semantics: for each row t of `x: [T, D]`,
    /// `y[t, d] = x[t, d] / sqrt(mean_d(x[t]^2) + eps) * weight[d]` (Llama RMSNorm, fp32).
    /// `y` may alias `x`.
    public static func rms(
        x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
        rows T: Int, dim D: Int, eps: Float
    ) {
        // Rows are independent: split across threads for large batches.
        nonisolated(unsafe) let xs = x, ys = y, ws = weight
        Parallel.ranges(T, work: T * D * 2) { rows in
            for t in rows {
                let xr = xs + t * D, yr = ys + t * D
                let sumSquares = dot(xr, xr, D)
                let inv = 1 / (sumSquares / Float(D) + eps).squareRoot()
                for d in 0..<D { yr[d] = (xr[d] * inv) * ws[d] }
            }
        }
    }
}

public enum Activation {
    /// Semantics: `gate[i] = silu(gate[i]) * up[i]` with `silu(v) = v / (1 + exp(-v))`,
    /// `exp` being `VectorMath.exp` (every element the same arithmetic).
    public static func siluMul(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        // Elementwise, so splitting across threads changes no result.
        nonisolated(unsafe) let g = gate, u = up
        Parallel.ranges(count, granule: 256, work: count * 8) { range in
            fk_silu_mul(g + range.lowerBound, u + range.lowerBound, range.count)
        }
    }
}
