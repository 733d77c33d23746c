/// The two products of a LoRA delta for one group of tokens that share an adapter.
///
/// `shrink` projects to the rank (`u = x A^T`, a dense `MatMul.nt`); `expandAdd` adds the
/// delta back (`y += scale * u B^T`). `B` is kept transposed (`B^T: [r, out]`) so that the
/// expansion is a run of vector multiply-adds along the output, with no horizontal sums:
/// with a rank of 8-64 a dot product per output would spend most of its time folding.
///
/// Reduction order (fixed, independent of how many tokens are in the group):
/// `delta[o] = fma(u[r-1], Bt[r-1][o], ... fma(u[1], Bt[1][o], u[0] * Bt[0][o]))`, then
/// `y[o] = y[o] + delta[o] * scale`.
public enum LowRank {
    /// `u[i, j] = dot(x[i], a[j])`: `x: [n, inDim]`, `a: [r, inDim]`, `u: [n, r]`.
    @inline(__always)
    public static func shrink(x: UnsafePointer<Float>, a: UnsafePointer<Float>, u: UnsafeMutablePointer<Float>, n: Int, inDim: Int, rank: Int) {
        MatMul.ntBlock(x: x, w: a, bias: nil, y: u, t: n, k: inDim, o: rank, outputs: 0..<rank)
    }

    /// `y[rows[i], o] += scale * sum_j u[i, j] * bT[j, o]` for `i in 0..<n`.
    /// `u: [n, r]`, `bT: [r, outDim]`, `y: [*, outDim]`, `rows: [n]` (row of `y` for each `i`).
    public static func expandAdd(u: UnsafePointer<Float>, bT: UnsafePointer<Float>, rank r: Int, outDim O: Int, scale: Float,
                                 y: UnsafeMutablePointer<Float>, rows: UnsafePointer<Int32>, n: Int) {
        precondition(r >= 1, "rank must be at least 1")
        let s16 = SIMD16<Float>(repeating: scale)
        var o = 0
        // Output chunks outer: the r x 16 slice of B^T stays in L1 across the group's tokens.
        while o + 16 <= O {
            for i in 0..<n {
                let ui = u + i * r
                var acc = load16(bT + o) * ui[0]
                for j in 1..<r { acc.addProduct(SIMD16(repeating: ui[j]), load16(bT + j * O + o)) }
                let row = y + Int(rows[i]) * O + o
                store16(load16(row) + acc * s16, row)
            }
            o += 16
        }
        while o < O {
            for i in 0..<n {
                let ui = u + i * r
                var acc = bT[o] * ui[0]
                for j in 1..<r { acc = acc.addingProduct(ui[j], bT[j * O + o]) }
                let row = y + Int(rows[i]) * O
                row[o] = row[o] + acc * scale
            }
            o += 1
        }
    }
}
