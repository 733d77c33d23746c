import Foundation

public enum Norm {
    /// Semantics: for each row t of `x: [T, D]`,
    /// `y[t, d] = x[t, d] / sqrt(mean_d(x[t]^2) + eps) * weight[d]` (Llama RMSNorm, fp32).
    /// `y` may alias `x`.
    public static func rms(
        x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
        rows T: Int, dim D: Int, eps: Float
    ) {
        for t in 0..<T {
            let xr = x + t * D, yr = y + t * D
            let sumSquares = dot(xr, xr, D)
            let inv = 1 / (sumSquares / Float(D) + eps).squareRoot()
            for d in 0..<D { yr[d] = (xr[d] * inv) * weight[d] }
        }
    }
}

public enum Activation {
    /// Semantics: `gate[i] = silu(gate[i]) * up[i]` with `silu(v) = v / (1 + exp(-v))`.
    public static func siluMul(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        for i in 0..<count {
            let g = gate[i]
            gate[i] = (g / (1 + expf(-g))) * up[i]
        }
    }
}
