/// Dense fp32 matrix products with a batch-invariant reduction order.
package enum MatMul {
    /// Semantics: `y[t, o] = sum_k x[t, k] * w[o, k]` (+ `bias[o]` when given), i.e.
    /// `y = x W^T` with `x: [T, K]`, `w: [O, K]` (checkpoint orientation), `y: [T, O]`.
    ///
    /// Every `y[t, o]` is `dot(x[t], w[o])` from `Dot.swift`: the tiling below only decides
    /// which dot products share loads, never how one is summed, so a row of `y` is bitwise
    /// the same for any `T` and any neighbours.
    package static func nt(
        x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>? = nil,
        y: UnsafeMutablePointer<Float>, t T: Int, k K: Int, o O: Int
    ) {
        let xs = SendablePointer(x), ws = SendablePointer(w), ys = SendableMutablePointer(y)
        let bs = bias.map(SendablePointer.init)
        Parallel.ranges(O, granule: 4, work: T * K * O) { range in
            ntBlock(x: xs.p, w: ws.p, bias: bs?.p, y: ys.p, t: T, k: K, o: O, outputs: range)
        }
    }

    @inline(__always)
    static func ntBlock(
        x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
        y: UnsafeMutablePointer<Float>, t T: Int, k K: Int, o O: Int, outputs: Range<Int>
    ) {
        var o = outputs.lowerBound
        let full = K & ~15
        // 4 outputs x 4 tokens share loads: 16 independent accumulators.
        while o + 4 <= outputs.upperBound {
            let w0 = w + o * K, w1 = w0 + K, w2 = w1 + K, w3 = w2 + K
            var t = 0
            while t + 4 <= T {
                let x0 = x + t * K, x1 = x0 + K, x2 = x1 + K, x3 = x2 + K
                var a00 = SIMD16<Float>(), a01 = SIMD16<Float>(), a02 = SIMD16<Float>(), a03 = SIMD16<Float>()
                var a10 = SIMD16<Float>(), a11 = SIMD16<Float>(), a12 = SIMD16<Float>(), a13 = SIMD16<Float>()
                var a20 = SIMD16<Float>(), a21 = SIMD16<Float>(), a22 = SIMD16<Float>(), a23 = SIMD16<Float>()
                var a30 = SIMD16<Float>(), a31 = SIMD16<Float>(), a32 = SIMD16<Float>(), a33 = SIMD16<Float>()
                var k = 0
                while k < full {
                    let v0 = load16(w0 + k), v1 = load16(w1 + k), v2 = load16(w2 + k), v3 = load16(w3 + k)
                    let u0 = load16(x0 + k)
                    a00.addProduct(u0, v0); a01.addProduct(u0, v1); a02.addProduct(u0, v2); a03.addProduct(u0, v3)
                    let u1 = load16(x1 + k)
                    a10.addProduct(u1, v0); a11.addProduct(u1, v1); a12.addProduct(u1, v2); a13.addProduct(u1, v3)
                    let u2 = load16(x2 + k)
                    a20.addProduct(u2, v0); a21.addProduct(u2, v1); a22.addProduct(u2, v2); a23.addProduct(u2, v3)
                    let u3 = load16(x3 + k)
                    a30.addProduct(u3, v0); a31.addProduct(u3, v1); a32.addProduct(u3, v2); a33.addProduct(u3, v3)
                    k += 16
                }
                let yt = y + t * O + o
                let bj = bias.map { $0 + o }
                finish(a00, x0, w0, K, full, bj, 0, yt)
                finish(a01, x0, w1, K, full, bj, 1, yt)
                finish(a02, x0, w2, K, full, bj, 2, yt)
                finish(a03, x0, w3, K, full, bj, 3, yt)
                finish(a10, x1, w0, K, full, bj, 0, yt + O)
                finish(a11, x1, w1, K, full, bj, 1, yt + O)
                finish(a12, x1, w2, K, full, bj, 2, yt + O)
                finish(a13, x1, w3, K, full, bj, 3, yt + O)
                finish(a20, x2, w0, K, full, bj, 0, yt + 2 * O)
                finish(a21, x2, w1, K, full, bj, 1, yt + 2 * O)
                finish(a22, x2, w2, K, full, bj, 2, yt + 2 * O)
                finish(a23, x2, w3, K, full, bj, 3, yt + 2 * O)
                finish(a30, x3, w0, K, full, bj, 0, yt + 3 * O)
                finish(a31, x3, w1, K, full, bj, 1, yt + 3 * O)
                finish(a32, x3, w2, K, full, bj, 2, yt + 3 * O)
                finish(a33, x3, w3, K, full, bj, 3, yt + 3 * O)
                t += 4
            }
            while t < T {
                let xt = x + t * K
                for j in 0..<4 {
                    var total = dot(xt, w + (o + j) * K, K)
                    if let bias { total = total + bias[o + j] }
                    y[t * O + o + j] = total
                }
                t += 1
            }
            o += 4
        }
        while o < outputs.upperBound {
            let wo = w + o * K
            for t in 0..<T {
                var total = dot(x + t * K, wo, K)
                if let bias { total = total + bias[o] }
                y[t * O + o] = total
            }
            o += 1
        }
    }
}

/// Folds one tile accumulator exactly as `dot` would, adds the tail and the bias, stores
/// it at `row[j]`.
@inline(__always)
func finish(
    _ acc: SIMD16<Float>, _ xr: UnsafePointer<Float>, _ wr: UnsafePointer<Float>, _ K: Int, _ full: Int,
    _ bias: UnsafePointer<Float>?, _ j: Int, _ row: UnsafeMutablePointer<Float>
) {
    var total = fold16(acc)
    var k = full
    while k < K {
        total = (xr[k] * wr[k]) + total
        k += 1
    }
    if let bias { total = total + bias[j] }
    row[j] = total
}

/// Raw pointers carried into parallel closures; the caller guarantees disjoint writes.
package struct SendablePointer: @unchecked Sendable {
    package let p: UnsafePointer<Float>
    package init(_ p: UnsafePointer<Float>) { self.p = p }
}

package struct SendableMutablePointer: @unchecked Sendable {
    package let p: UnsafeMutablePointer<Float>
    package init(_ p: UnsafeMutablePointer<Float>) { self.p = p }
}
