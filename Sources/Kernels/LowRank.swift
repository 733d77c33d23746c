import Tensors

/// A LoRA factor held in the narrowest of f32/f16/bf16 that represents every value exactly
/// (adapters trained or saved in 16 bits stay 16 bits: half the memory traffic per step
/// and half the cache budget, with bitwise the same results as their fp32 expansion).
package struct LowRankMatrix: Sendable {
    package enum Precision: String, Sendable, CaseIterable, Codable {
        case f32, f16, bf16
        package var bytes: Int { self == .f32 ? 4 : 2 }
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

/// Row loaders for the three precisions (16 values, or one, as fp32; exact).
protocol RowFormat {
    static var elementBytes: Int { get }
    static func load16(_ p: UnsafeRawPointer, _ i: Int) -> SIMD16<Float>
    static func load1(_ p: UnsafeRawPointer, _ i: Int) -> Float
}

enum F32Row: RowFormat {
    static var elementBytes: Int { 4 }
    @inline(__always) static func load16(_ p: UnsafeRawPointer, _ i: Int) -> SIMD16<Float> {
        p.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self)
    }
    @inline(__always) static func load1(_ p: UnsafeRawPointer, _ i: Int) -> Float { p.loadUnaligned(fromByteOffset: i * 4, as: Float.self) }
}

enum BF16Row: RowFormat {
    static var elementBytes: Int { 2 }
    @inline(__always) static func load16(_ p: UnsafeRawPointer, _ i: Int) -> SIMD16<Float> {
        let h = p.loadUnaligned(fromByteOffset: i * 2, as: SIMD16<UInt16>.self)
        return unsafeBitCast(SIMD16<UInt32>(truncatingIfNeeded: h) &<< 16, to: SIMD16<Float>.self)
    }
    @inline(__always) static func load1(_ p: UnsafeRawPointer, _ i: Int) -> Float {
        HalfFloat.fromBF16(p.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
    }
}

enum F16Row: RowFormat {
    static var elementBytes: Int { 2 }
    @inline(__always) static func load16(_ p: UnsafeRawPointer, _ i: Int) -> SIMD16<Float> {
        SIMD16<Float>(p.loadUnaligned(fromByteOffset: i * 2, as: SIMD16<Float16>.self))
    }
    @inline(__always) static func load1(_ p: UnsafeRawPointer, _ i: Int) -> Float {
        Float(p.loadUnaligned(fromByteOffset: i * 2, as: Float16.self))
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
            switch a.precision {
            case .f32: shrink(F32Row.self, x, p, u, n, a.cols, a.rows)
            case .f16: shrink(F16Row.self, x, p, u, n, a.cols, a.rows)
            case .bf16: shrink(BF16Row.self, x, p, u, n, a.cols, a.rows)
            }
        }
    }

    /// `y[rows[i], o] += scale * sum_j u[i, j] * bT[j, o]` for `i in 0..<n`.
    /// `u: [n, r]`, `bT: [r, outDim]`, `y: [*, outDim]`, `rows: [n]` (row of `y` for each `i`).
    package static func expandAdd(u: UnsafePointer<Float>, bT: LowRankMatrix, scale: Float, y: UnsafeMutablePointer<Float>,
                                 rows: UnsafePointer<Int32>, n: Int) {
        bT.withBytes { raw in
            let p = raw.baseAddress!
            switch bT.precision {
            case .f32: expandAdd(F32Row.self, u, p, bT.rows, bT.cols, scale, y, rows, n)
            case .f16: expandAdd(F16Row.self, u, p, bT.rows, bT.cols, scale, y, rows, n)
            case .bf16: expandAdd(BF16Row.self, u, p, bT.rows, bT.cols, scale, y, rows, n)
            }
        }
    }

    @inline(__always)
    static func shrink<F: RowFormat>(_: F.Type, _ x: UnsafePointer<Float>, _ a: UnsafeRawPointer, _ u: UnsafeMutablePointer<Float>,
                                     _ n: Int, _ K: Int, _ r: Int) {
        for j in 0..<r {
            let row = a + j * K * F.elementBytes
            for i in 0..<n { u[i * r + j] = dot(x + i * K, row, K, F.self) }
        }
    }

    @inline(__always)
    static func expandAdd<F: RowFormat>(_: F.Type, _ u: UnsafePointer<Float>, _ bT: UnsafeRawPointer, _ r: Int, _ O: Int, _ scale: Float,
                                        _ y: UnsafeMutablePointer<Float>, _ rows: UnsafePointer<Int32>, _ n: Int) {
        precondition(r >= 1, "rank must be at least 1")
        let s16 = SIMD16<Float>(repeating: scale)
        var o = 0
        // Output chunks outer: the r x 16 slice of B^T stays in L1 across the group's tokens.
        while o + 16 <= O {
            for i in 0..<n {
                let ui = u + i * r
                var acc = F.load16(bT, o) * ui[0]
                for j in 1..<r { acc.addProduct(SIMD16(repeating: ui[j]), F.load16(bT, j * O + o)) }
                let row = y + Int(rows[i]) * O + o
                store16(load16(row) + acc * s16, row)
            }
            o += 16
        }
        while o < O {
            for i in 0..<n {
                let ui = u + i * r
                var acc = F.load1(bT, o) * ui[0]
                for j in 1..<r { acc = acc.addingProduct(ui[j], F.load1(bT, j * O + o)) }
                let row = y + Int(rows[i]) * O
                row[o] = row[o] + acc * scale
            }
            o += 1
        }
    }
}
