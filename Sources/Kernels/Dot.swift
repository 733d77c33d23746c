internal import CKernels

/// The single dot-product reduction every kernel uses (`fk_dot` in the C kernels, on the
/// instruction-set tier the CPU offers).
///
/// Semantics: `sum_k a[k] * b[k]` for `k in 0..<n`, accumulated in 16 fp32 lanes (lane
/// `l` takes `k ≡ l mod 16` in increasing `k`, fused multiply-add), the lanes folded in a
/// fixed tree (`v[i] + v[i+8]`, then `i + (i+4)`, `i + (i+2)`, `0 + 1`), then the tail
/// `k >= 16 * (n / 16)` added in order. Every caller, on every tier, gets the bit-identical
/// result for the same inputs, which is what makes batching invisible.
@inline(__always)
package func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    fk_dot(a, b, Int32(FK_ROW_F32), n)
}

/// The reference twin of `dot`: the same operations written out in Swift, one lane at a time.
package func referenceDot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var lanes = [Float](repeating: 0, count: 16)
    let full = n & ~15
    for k in 0..<full { lanes[k % 16] = lanes[k % 16].addingProduct(a[k], b[k]) }
    var width = 8
    while width >= 1 {
        for i in 0..<width { lanes[i] = lanes[i] + lanes[i + width] }
        width /= 2
    }
    var total = lanes[0]
    for k in full..<n { total = (a[k] * b[k]) + total }
    return total
}
