import Kernels
import Tensors
import Testing
import TestSupport

/// The LoRA shrink/expand kernels against the Double reference, and their invariance to
/// how many tokens share a group.
@Suite struct LowRankTests {
    func random(_ n: Int, _ rng: inout SplitMix) -> [Float] { (0..<n).map { _ in rng.float() } }

    /// Runs shrink + expandAdd for the tokens `rows` of `x: [T, inDim]` into `y: [T, outDim]`.
    func run(y: [Float], rows: [Int], x: [Float], a: [Float], bT: [Float], r: Int, inDim: Int, outDim: Int, scale: Float) -> [Float] {
        run(y: y, rows: rows, x: x, a: LowRankMatrix(Matrix(rows: r, cols: inDim, data: a)),
            bT: LowRankMatrix(Matrix(rows: r, cols: outDim, data: bT)), scale: scale)
    }

    func run(y: [Float], rows: [Int], x: [Float], a: LowRankMatrix, bT: LowRankMatrix, scale: Float) -> [Float] {
        let inDim = a.cols, r = a.rows
        let packed = rows.flatMap { Array(x[($0 * inDim)..<(($0 + 1) * inDim)]) }
        var y = y, u = [Float](repeating: .nan, count: rows.count * r)
        let rows32 = rows.map(Int32.init)
        packed.withUnsafeBufferPointer { xp in
            u.withUnsafeMutableBufferPointer { up in
                LowRank.shrink(x: xp.baseAddress!, a: a, u: up.baseAddress!, n: rows.count)
            }
        }
        u.withUnsafeBufferPointer { up in
            y.withUnsafeMutableBufferPointer { yp in
                rows32.withUnsafeBufferPointer { rp in
                    LowRank.expandAdd(u: up.baseAddress!, bT: bT, scale: scale, y: yp.baseAddress!, rows: rp.baseAddress!, n: rows.count)
                }
            }
        }
        return y
    }

    func transpose(_ m: [Float], rows: Int, cols: Int) -> [Float] {
        var out = [Float](repeating: 0, count: m.count)
        for i in 0..<rows { for j in 0..<cols { out[j * rows + i] = m[i * cols + j] } }
        return out
    }

    @Test(arguments: [(1, 16, 40, 1), (3, 8, 33, 7), (5, 64, 576, 16), (2, 17, 100, 3)])
    func matchesReference(n: Int, inDim: Int, outDim: Int, r: Int) {
        var rng = SplitMix(seed: UInt64(n * 7 + inDim + outDim * 3 + r))
        let T = n + 2
        let x = random(T * inDim, &rng), a = random(r * inDim, &rng), b = random(outDim * r, &rng), y0 = random(T * outDim, &rng)
        let rows = (0..<n).map { ($0 * 2 + 1) % T }
        let got = run(y: y0, rows: rows, x: x, a: a, bT: transpose(b, rows: outDim, cols: r), r: r, inDim: inDim, outDim: outDim, scale: 1.5)
        let packed = rows.flatMap { Array(x[($0 * inDim)..<(($0 + 1) * inDim)]) }
        let want = Reference.loraAdd(y: y0, rows: rows, x: packed, a: a, b: b, rank: r, inDim: inDim, outDim: outDim, scale: 1.5)
        #expect(maxRelativeError(got, want) < 1e-4)
        // Rows outside the group are untouched.
        for t in 0..<T where !rows.contains(t) {
            #expect(Array(got[(t * outDim)..<((t + 1) * outDim)]) == Array(y0[(t * outDim)..<((t + 1) * outDim)]))
        }
    }

    /// A token's delta is bitwise the same alone or in a group of any size.
    @Test func groupSizeNeverChangesARow() {
        var rng = SplitMix(seed: 11)
        let T = 9, inDim = 70, outDim = 53, r = 12
        let x = random(T * inDim, &rng), a = random(r * inDim, &rng), bT = random(r * outDim, &rng), y0 = random(T * outDim, &rng)
        let all = run(y: y0, rows: Array(0..<T), x: x, a: a, bT: bT, r: r, inDim: inDim, outDim: outDim, scale: 0.5)
        for t in 0..<T {
            let alone = run(y: y0, rows: [t], x: x, a: a, bT: bT, r: r, inDim: inDim, outDim: outDim, scale: 0.5)
            #expect(Array(alone[(t * outDim)..<((t + 1) * outDim)]) == Array(all[(t * outDim)..<((t + 1) * outDim)]))
        }
    }

    /// Factors whose values fit 16 bits are stored in 16 bits, and give bitwise the same
    /// deltas as their fp32 expansion; others stay fp32.
    @Test(arguments: LowRankMatrix.Precision.allCases)
    func sixteenBitFactorsAreExact(precision: LowRankMatrix.Precision) {
        var rng = SplitMix(seed: 5)
        let T = 5, inDim = 72, outDim = 41, r = 6
        func rounded(_ v: Float) -> Float {
            switch precision {
            case .f32: v
            case .f16: HalfFloat.fromF16(HalfFloat.toF16(v))
            case .bf16: HalfFloat.fromBF16(HalfFloat.toBF16(v))
            }
        }
        let x = random(T * inDim, &rng), y0 = random(T * outDim, &rng)
        // Values in f16's normal range (bf16-rounded values also fit f16 here unless tiny).
        let a = random(r * inDim, &rng).map { rounded($0 * 0.5 + ($0 < 0 ? -0.01 : 0.01)) }
        let bT = random(r * outDim, &rng).map { rounded($0 * 0.5 + ($0 < 0 ? -0.01 : 0.01)) }
        let pa = LowRankMatrix(Matrix(rows: r, cols: inDim, data: a)), pb = LowRankMatrix(Matrix(rows: r, cols: outDim, data: bT))
        let expected: LowRankMatrix.Precision = precision == .f32 ? .f32 : (precision == .bf16 ? .bf16 : .f16)
        #expect(pa.precision == expected && pb.precision == expected)
        #expect(pa.matrix.data == a && pb.matrix.data == bT)
        #expect(pa.byteSize == r * inDim * expected.bytes)
        // The same values forced to fp32 storage: bitwise equal results.
        let plain = run(y: y0, rows: Array(0..<T), x: x, a: LowRankMatrix(Matrix(rows: r, cols: inDim, data: a), precision: .f32),
                        bT: LowRankMatrix(Matrix(rows: r, cols: outDim, data: bT), precision: .f32), scale: 2)
        let packed = run(y: y0, rows: Array(0..<T), x: x, a: pa, bT: pb, scale: 2)
        #expect(plain == packed)
        let packedB = transpose(bT, rows: r, cols: outDim)
        let packedX = Array(0..<T).flatMap { Array(x[($0 * inDim)..<(($0 + 1) * inDim)]) }
        let want = Reference.loraAdd(y: y0, rows: Array(0..<T), x: packedX, a: a, b: packedB, rank: r, inDim: inDim, outDim: outDim, scale: 2)
        #expect(maxRelativeError(packed, want) < 1e-4)
    }
}
