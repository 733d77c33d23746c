internal import CKernels

/// Elementwise math with the same arithmetic for every element, so a value's result never
/// depends on its neighbours, on where it falls in a vector, or on the CPU path (the C
/// kernels' vector and scalar paths perform the same operations).
package enum VectorMath {
    /// `exp(x)` within 2 ulp for `x` in [-86.5, 88.7] (Cody–Waite reduction, a degree-6
    /// polynomial with Cephes' `expf` coefficients, `2^n` from exponent bits). Below that
    /// range the result is 0 or tiny (< 2e-38, never subnormal); above it is clamped
    /// (~3.3e38). Its twin is Foundation's `exp` in the tests.
    package static func exp(_ x: Float) -> Float { fk_exp(x) }

    /// `p[i] = exp(p[i] - shift)` for `i in 0..<count`, in place.
    package static func expShifted(_ p: UnsafeMutablePointer<Float>, count: Int, shift: Float) {
        fk_exp_shift(p, count, shift)
    }
}
