internal import CKernels

/// Dense fp32 matrix products with a batch-invariant reduction order.
package enum MatMul {
    /// Semantics: `y[t, o] = sum_k x[t, k] * w[o, k]` (+ `bias[o]` when given), i.e.
    /// `y = x W^T` with `x: [T, K]`, `w: [O, K]` (checkpoint orientation), `y: [T, O]`.
    ///
    /// Every `y[t, o]` is `dot(x[t], w[o])` from `Dot.swift` (`fk_matmul_f32`): the tiling
    /// only decides which dot products share loads, never how one is summed, so a row of `y`
    /// is bitwise the same for any `T`, any neighbours and any instruction-set tier.
    package static func nt(
        x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>? = nil,
        y: UnsafeMutablePointer<Float>, t T: Int, k K: Int, o O: Int
    ) {
        let xs = SendablePointer(x), ws = SendablePointer(w), ys = SendableMutablePointer(y)
        let bs = bias.map(SendablePointer.init)
        Parallel.ranges(O, granule: 4, work: T * K * O) { range in
            fk_matmul_f32(xs.p, ws.p, bs?.p, ys.p, T, K, O, range.lowerBound, range.upperBound)
        }
    }

    /// The reference twin of `nt`: one `referenceDot` per output.
    package static func referenceNT(x: UnsafePointer<Float>, w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                    y: UnsafeMutablePointer<Float>, t T: Int, k K: Int, o O: Int) {
        for t in 0..<T {
            for o in 0..<O {
                var total = referenceDot(x + t * K, w + o * K, K)
                if let bias { total = total + bias[o] }
                y[t * O + o] = total
            }
        }
    }
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
