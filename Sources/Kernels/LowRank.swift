import Tensors
internal import CKernels

/// A LoRA factor held in the narrowest of f32/f16/bf16 that represents every value exactly
/// (adapters trained or saved in 16 bits stay 16 bits: half the memory traffic per step
/// and half the cache budget, with bitwise the same results as their fp32 expansion).
package struct LowRankMatrix: Sendable {
    package enum Precision: String, Sendable, CaseIterable, Codable {
        case f32, f16, bf16
        package var bytes: Int { self == .f32 ? 4 : 2 }
        var rowFormat: Int32 { Int32(self == .f32 ? FK_ROW_F32 : self == .f16 ? FK_ROW_F16 : FK_ROW_BF16) }
    }

    package let rows: Int
    package let cols: Int
    package let precision: Precision
    let floats: [Float]     // f32 storage
    let halves: [UInt16]    // f16/bf16 storage

    /// Keeps `m` in the narrowest precision that holds all of its values exactly.
    package init(_ m: Matrix) {
        rows = m.rows
        cols = m.cols
        if m.data.allSatisfy({ HalfFloat.fromBF16(HalfFloat.toBF16($0)).bitPattern == $0.bitPattern }) {
            precision = .bf16
            halves = m.data.map(HalfFloat.toBF16)
            floats = []
        } else if m.data.allSatisfy({ HalfFloat.fromF16(HalfFloat.toF16($0)).bitPattern == $0.bitPattern }) {
            precision = .f16
            halves = m.data.map(HalfFloat.toF16)
            floats = []
        } else {
            precision = .f32
            floats = m.data
            halves = []
        }
    }

    /// `m` stored in `precision`, rounding to nearest even when it is narrower than the
    /// values (a lossy, explicit choice).
    package init(_ m: Matrix, precision: Precision) {
        rows = m.rows
        cols = m.cols
        self.precision = precision
        switch precision {
        case .f32: floats = m.data; halves = []
        case .f16: halves = m.data.map(HalfFloat.toF16); floats = []
        case .bf16: halves = m.data.map(HalfFloat.toBF16); floats = []
        }
    }

    /// The values as fp32 (exact).
    package var matrix: Matrix {
        switch precision {
        case .f32: Matrix(rows: rows, cols: cols, data: floats)
        case .f16: Matrix(rows: rows, cols: cols, data: halves.map(HalfFloat.fromF16))
        case .bf16: Matrix(rows: rows, cols: cols, data: halves.map(HalfFloat.fromBF16))
        }
    }

    package var byteSize: Int { rows * cols * precision.bytes }

    /// The storage bytes (valid while the matrix lives; its arrays are never mutated).
    package func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        precision == .f32 ? try floats.withUnsafeBytes(body) : try halves.withUnsafeBytes(body)
    }
}

/// The two products of a LoRA delta for one group of tokens that share an adapter.
///
/// `shrink` projects to the rank (`u = x A^T`); `expandAdd` adds the delta back
/// (`y += scale * u B^T`). `B` is kept transposed (`B^T: [r, out]`) so that the expansion
/// is a run of vector multiply-adds along the output, with no horizontal sums: with a rank
/// of 8-64 a dot product per output would spend most of its time folding.
///
/// Reduction order (fixed, independent of how many tokens are in the group and of the
/// factors' storage precision): `u[i, j]` is `dot(x[i], A[j])` exactly as in `Dot.swift`;
/// `delta[o] = fma(u[r-1], Bt[r-1][o], ... fma(u[1], Bt[1][o], u[0] * Bt[0][o]))`, then
/// `y[o] = y[o] + delta[o] * scale`.
package enum LowRank {
    /// `u[i, j] = dot(x[i], a[j])`: `x: [n, inDim]`, `a: [r, inDim]`, `u: [n, r]`.
    package static func shrink(x: UnsafePointer<Float>, a: LowRankMatrix, u: UnsafeMutablePointer<Float>, n: Int) {
        a.withBytes { raw in
            let p = raw.baseAddress!
            fk_lowrank_shrink(x, p, a.precision.rowFormat, u, n, a.cols, a.rows)
        }
    }

    /// `y[rows[i], o] += scale * sum_j u[i, j] * bT[j, o]` for `i in 0..<n`.
    /// `u: [n, r]`, `bT: [r, outDim]`, `y: [*, outDim]`, `rows: [n]` (row of `y` for each `i`).
    package static func expandAdd(u: UnsafePointer<Float>, bT: LowRankMatrix, scale: Float, y: UnsafeMutablePointer<Float>,
                                 rows: UnsafePointer<Int32>, n: Int) {
        expand(u: u, bT: bT, scale: scale, into: y, rows: rows, n: n, add: true)
    }

    /// `d[rows[i], o] = scale * sum_j u[i, j] * bT[j, o]` (the delta `expandAdd` adds, with
    /// the same rounding: `y[rows[i], o] + d[rows[i], o]` afterwards is `expandAdd`'s result).
    package static func expandStore(u: UnsafePointer<Float>, bT: LowRankMatrix, scale: Float, d: UnsafeMutablePointer<Float>,
                                   rows: UnsafePointer<Int32>, n: Int) {
        expand(u: u, bT: bT, scale: scale, into: d, rows: rows, n: n, add: false)
    }

    private static func expand(u: UnsafePointer<Float>, bT: LowRankMatrix, scale: Float, into y: UnsafeMutablePointer<Float>,
                               rows: UnsafePointer<Int32>, n: Int, add: Bool) {
        precondition(bT.rows >= 1, "rank must be at least 1")
        bT.withBytes { raw in
            fk_lowrank_expand(u, raw.baseAddress!, bT.precision.rowFormat, bT.rows, bT.cols, scale, y, rows, n, add ? 1 : 0)
        }
    }
}
