/// The single dot-product reduction every kernel uses.
///
/// Semantics: `sum_k a[k] * b[k]` for `k in 0..<n`, accumulated in 16 fp32 lanes (lane
/// `l` takes `k ≡ l mod 16` in increasing `k`, fused multiply-add), the lanes folded in a
/// fixed tree, then the tail `k >= 16 * (n / 16)` added in order. Every caller gets the
/// bit-identical result for the same inputs, which is what makes batching invisible.
@inline(__always)
package func fold16(_ v: SIMD16<Float>) -> Float {
    let a = v.lowHalf + v.highHalf          // 8
    let b = a.lowHalf + a.highHalf          // 4
    let c = b.lowHalf + b.highHalf          // 2
    return c[0] + c[1]
}

@inline(__always)
package func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    dot(a, UnsafeRawPointer(b), n, F32Row.self)
}

/// `dot` with the second operand stored as `F` (16-bit factors are widened exactly, so the
/// result is bitwise that of `dot` over their fp32 values).
@inline(__always)
func dot<F: RowFormat>(_ a: UnsafePointer<Float>, _ b: UnsafeRawPointer, _ n: Int, _: F.Type) -> Float {
    var acc = SIMD16<Float>()
    var k = 0
    let full = n & ~15
    while k < full {
        acc.addProduct(load16(a + k), F.load16(b, k))
        k += 16
    }
    var total = fold16(acc)
    while k < n {
        total = (a[k] * F.load1(b, k)) + total
        k += 1
    }
    return total
}

@inline(__always)
package func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}

@inline(__always)
package func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self)
}
