import Formats
import Synchronization
import Kernels
import Tensors
import Testing
import TestSupport

/// Compact-weight kernels (AVX2 C) against the naive reference on their dequantized values,
/// bitwise against their own scalar path, and batch-invariant.
@Suite(.serialized) struct CompactWeightTests {
    static let tierSkipped = Mutex(false)

    static func random(_ n: Int, _ seed: UInt64) -> [Float] {
        var rng = SplitMix(seed: seed)
        return (0..<n).map { _ in rng.float() }
    }

    static func run(_ w: LinearWeight, _ x: [Float], _ t: Int, compute: ComputeMode = .fp32) -> [Float] {
        var y = [Float](repeating: 0, count: t * w.rows)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { w.matmul(x: xp.baseAddress!, t: t, y: $0.baseAddress!, compute: compute) }
        }
        return y
    }

    /// The kernel contract: the scalar path gives the same bits, and every row, alone or
    /// in any sub-batch, gets the bits it has in the full batch.
    static func expectBitwiseContract(_ w: LinearWeight, _ x: [Float], _ t: Int, _ y: [Float], compute: ComputeMode = .fp32, _ label: String) {
        LinearWeight.useVectorKernels(false)
        let scalar = run(w, x, t, compute: compute)
        LinearWeight.useVectorKernels(true)
        #expect(scalar == y, "\(label): scalar and vector paths differ")
        // Every tier this CPU has gives the same bits: with VNNI off, the AVX2 tier runs.
        if InstructionTier.current >= .avx512VNNI {
            LinearWeight.useVNNIKernels(false)
            let avx2 = run(w, x, t, compute: compute)
            LinearWeight.useVNNIKernels(true)
            #expect(avx2 == y, "\(label): AVX2 and AVX-512 VNNI tiers differ")
        } else {
            Self.tierSkipped.withLock { once in
                if !once { print("CompactWeightTests: the AVX-512 VNNI tier is not compared (this CPU's best tier is \(InstructionTier.current))") }
                once = true
            }
        }
        let k = w.cols, o = w.rows
        for (start, count) in [(0, 1), (t / 2, 1), (t - 1, 1), (0, min(4, t)), (1, t - 1), (t / 2, t - t / 2)] {
            let part = run(w, Array(x[(start * k)..<((start + count) * k)]), count, compute: compute)
            #expect(part == Array(y[(start * o)..<((start + count) * o)]), "\(label) rows \(start)..<\(start + count)")
        }
    }

    /// The C activation rounding is exactly the Swift twin's, ties and zero blocks included.
    @Test func int8ActivationRoundingMatchesTheReferenceTwin() {
        var x = Self.random(5 * 64, 7)
        for i in 0..<32 { x[64 + i] = 0 }                       // an all-zero block
        for i in 0..<32 { x[192 + i] = Float(i - 16) * 0.5 }   // many equal magnitudes
        let c = LinearWeight.quantizeActivations(x, t: 5, k: 64)
        let r = Reference.quantizeActivations(x: x, k: 64)
        #expect(c.q == r.q)
        #expect(c.d == r.d)
        #expect(c.s == r.s)
        #expect(c.q[64..<96].allSatisfy { $0 == 0 } && c.d[2] == 0)
        #expect(c.q.allSatisfy { $0 >= -127 && $0 <= 127 })
    }

    /// The bf16 mode's activation rounding (vector and scalar paths) is the plainly written
    /// twin's, ties, NaN, infinities, overflow and the flush of tiny values included.
    @Test func bf16ActivationRoundingMatchesTheReferenceTwin() {
        #expect(Reference.roundBF16(Float(bitPattern: 0x3F80_8000)) == 1, "a tie rounds to the even neighbour (down)")
        #expect(Reference.roundBF16(Float(bitPattern: 0x3F81_8000)).bitPattern == 0x3F82_0000, "a tie rounds to the even neighbour (up)")
        #expect(Reference.roundBF16(Float(bitPattern: 0x3F80_8001)).bitPattern == 0x3F81_0000)
        #expect(Reference.roundBF16(.greatestFiniteMagnitude) == .infinity)
        var edge: [Float] = [0, -0.0, 1, -1, .infinity, -.infinity, .nan, -.nan, .greatestFiniteMagnitude, -.greatestFiniteMagnitude,
                             .leastNormalMagnitude, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, 0x1p-64, -0x1p-64, 0x1.fffffep-65,
                             Float(bitPattern: 0x3F80_8000), Float(bitPattern: 0x3F81_8000), Float(bitPattern: 0x3F80_8001),
                             Float(bitPattern: 0xBF81_7FFF), Float(bitPattern: 0x7F80_0001), Float(bitPattern: 0xFFC1_2345)]
        edge += Self.random(64 - edge.count, 21).map { $0 * 1e-3 }
        let x = edge + Self.random(64 * 3, 22).map { $0 * 100 }
        let want = x.map { Reference.roundBF16($0).bitPattern }
        let vector = LinearWeight.roundActivationsBF16(x, t: 4, k: 64).map(\.bitPattern)
        LinearWeight.useVectorKernels(false)
        let scalar = LinearWeight.roundActivationsBF16(x, t: 4, k: 64).map(\.bitPattern)
        LinearWeight.useVectorKernels(true)
        #expect(vector == want)
        #expect(scalar == want)
        #expect(want.allSatisfy { $0 & 0xFFFF == 0 })
    }

    /// A fast mode (int8, bf16): matches the Double reference on its rounded activations,
    /// its own scalar path and every tier bitwise, and is batch invariant; formats the mode
    /// does not cover keep fp32.
    @Test(arguments: [(ComputeMode.int8, WeightFormat.q4_0), (.int8, .q4_1), (.int8, .q8_0), (.int8, .f16),
                      (.bf16, .q4_0), (.bf16, .q4_1), (.bf16, .q8_0), (.bf16, .bf16), (.bf16, .f16)])
    func fastModeMatchesReferenceScalarPathAndIsBatchInvariant(mode: ComputeMode, format: WeightFormat) throws {
        let o = 37, k = 96, t = 27   // AVX-512 groups of 16 and 8 tokens, and 3 alone
        let w = try LinearWeight.quantize(Matrix(rows: o, cols: k, data: Self.random(o * k, 3)), to: format)
        let x = Self.random(t * k, 4)
        let y = Self.run(w, x, t, compute: mode)
        guard mode.covers(format) else {
            #expect(y == Self.run(w, x, t), "\(format) weights are not covered by \(mode) and must keep fp32")
            return
        }
        let dense = w.dequantized().data
        let reference = mode == .int8 ? Reference.matmulInt8(x: x, w: dense, t: t, k: k, o: o) : Reference.matmulBF16(x: x, w: dense, t: t, k: k, o: o)
        #expect(maxRelativeError(y, reference) < 1e-5, "\(format) \(mode)")
        let cost = maxRelativeError(y, Reference.matmulNT(x: x, w: dense, t: t, k: k, o: o))
        #expect(cost > 1e-6 && cost < (mode == .int8 ? 0.05 : 0.02), "\(format): \(mode) rounding error \(cost) is not in the expected range")
        Self.expectBitwiseContract(w, x, t, y, compute: mode, "\(format) \(mode)")
        if mode == .int8 {
            // The tiled copy (8 rows per tile; 37 rows leave a tile of 5) gives the same bits.
            let tiled = w.withTiles()
            #expect(tiled.hasTiles && !w.hasTiles)
            #expect(Self.run(tiled, x, t, compute: .int8) == y, "\(format): tiled and row layouts differ")
            Self.expectBitwiseContract(tiled, x, t, y, compute: .int8, "\(format) int8 tiled")
            #expect(Self.run(tiled, x, t) == Self.run(w, x, t), "\(format): fp32 products of the tiled copy differ")
        }
    }

    /// fp32 products read from the tiled copy (`fk_matmul_f32_tiles`: AVX-512, the reference
    /// twin elsewhere) give the row layout's bits on every tier: whole tiles,
    /// a tile cut by the row range on either side, the last tile partly past the matrix, and
    /// several tokens; through `matmul` too, at one token and at several.
    @Test(arguments: [WeightFormat.q4_0, .q4_1, .q8_0])
    func fp32ProductsFromTilesMatchTheRowLayout(format: WeightFormat) throws {
        let o = 37, k = 160
        let w = try LinearWeight.quantize(Matrix(rows: o, cols: k, data: Self.random(o * k, 7)), to: format)
        let tiled = w.withTiles()
        for t in [1, 3, 4, 7, 53] {   // AVX-512 groups of 1, 3, 2 + 2, 3 + 2 + 2 tokens; 53: a super-block of 48 and 5 more
            let x = Self.random(t * k, 8 + UInt64(t))
            LinearWeight.useVectorKernels(false)
            let want = Self.run(w, x, t)
            LinearWeight.useVectorKernels(true)
            InstructionTierTests.acrossTiers("\(format) fp32 from tiles, \(t) tokens") {
                var y = [Float](repeating: .nan, count: t * o)
                x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { yp in
                        for range in [0..<3, 3..<13, 13..<16, 16..<24, 24..<o] { tiled.fp32FromTiles(x: xp.baseAddress!, t: t, rows: range, y: yp.baseAddress!) }
                    }
                }
                #expect(y.map(\.bitPattern) == want.map(\.bitPattern), "\(format): \(t) tokens from the tiles")
                return y
            }
            InstructionTierTests.acrossTiers("\(format) fp32 matmul with tiles, \(t) tokens") {
                let y = Self.run(tiled, x, t)
                #expect(y.map(\.bitPattern) == want.map(\.bitPattern), "\(format): \(t) tokens through matmul")
                return y
            }
        }
    }

    /// The int8 contract written out in Swift (ckernels.h): per block the exact integer dot
    /// of the weights' integers with the activations' bytes, `acc = fma(d_w * dx_b, P_b, acc)`,
    /// Q4_1's `m = fma(m_w, sx_b, m)`, `y = acc + m`; on random raw blocks (every nibble and
    /// byte, extreme activations), in both layouts.
    @Test(arguments: [WeightFormat.q4_0, .q4_1, .q8_0])
    func int8ModeFollowsItsContract(format: WeightFormat) throws {
        let o = 13, k = 128, t = 6, nb = k / 32
        var rng = SplitMix(seed: 41)
        var bytes = (0..<(o * format.rowBytes(k))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let bb = format.rowBytes(32)
        for b in stride(from: 0, to: bytes.count, by: bb) {
            for off in format == .q4_1 ? [0, 2] : [0] {
                let h = HalfFloat.toF16(Float(Int(rng.next() % 2001) - 1000) * 1e-4)
                bytes[b + off] = UInt8(h & 0xFF)
                bytes[b + off + 1] = UInt8(h >> 8)
            }
        }
        let w = try LinearWeight(format: format, rows: o, cols: k, store: bytes.withUnsafeBytes { ByteStore(copying: $0) })
        var x = Self.random(t * k, 42)
        for i in 0..<32 { x[k + i] = i % 2 == 0 ? 100 : -100 }   // bytes of +-127
        let (q, dx, sx) = LinearWeight.quantizeActivations(x, t: t, k: k)
        func f16(_ at: Int) -> Float { HalfFloat.fromF16(UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8) }
        var want = [Float](repeating: 0, count: t * o)
        for i in 0..<t {
            for r in 0..<o {
                var acc: Float = 0, m: Float = 0
                for b in 0..<nb {
                    let blk = r * format.rowBytes(k) + b * bb
                    var p = 0
                    for e in 0..<32 {
                        let v: Int
                        switch format {
                        case .q8_0: v = Int(Int8(bitPattern: bytes[blk + 2 + e]))
                        default:
                            let byte = bytes[blk + (format == .q4_1 ? 4 : 2) + e % 16]
                            v = Int(e < 16 ? byte & 0x0F : byte >> 4) - (format == .q4_0 ? 8 : 0)
                        }
                        p += v * Int(q[i * k + b * 32 + e])
                    }
                    acc = acc.addingProduct(f16(blk) * dx[i * nb + b], Float(p))
                    if format == .q4_1 { m = m.addingProduct(f16(blk + 2), sx[i * nb + b]) }
                }
                want[i * o + r] = acc + m
            }
        }
        let y = Self.run(w, x, t, compute: .int8)
        #expect(y.map(\.bitPattern) == want.map(\.bitPattern), "\(format): the int8 product is not its contract")
        #expect(Self.run(w.withTiles(), x, t, compute: .int8).map(\.bitPattern) == want.map(\.bitPattern), "\(format): tiled")
    }

    /// The activations are rounded to bf16 before the product, and the sums stay fp32: with
    /// integer weights (Q8_0, scale 1) 1 + 2^-10 counts as 1, while 2^20 + 1 (pair of
    /// products 2^20 and 1) is kept whole.
    @Test func bf16ModeRoundsActivationsButNotSums() throws {
        var row = [Float](repeating: 0, count: 32)
        row[0] = 1; row[16] = 1; row[5] = 127
        let w = try LinearWeight.quantize(Matrix(rows: 1, cols: 32, data: row), to: .q8_0)
        #expect(w.dequantized().data == row)
        var x = [Float](repeating: 0, count: 32)
        x[0] = 1 + 0x1p-10
        #expect(Self.run(w, x, 1, compute: .bf16) == [1])
        #expect(Self.run(w, x, 1) == [1 + 0x1p-10])
        x[0] = 0x1p20; x[16] = 1
        #expect(Self.run(w, x, 1, compute: .bf16) == [0x1p20 + 1])
        // bf16-stored weights below 2^-32 count as zero (vdpbf16ps would flush their tiny
        // products; the mode flushes them everywhere).
        var tiny = [Float](repeating: 0, count: 32)
        tiny[3] = 0x1p-40; tiny[4] = 0.5
        let wb = try LinearWeight.quantize(Matrix(rows: 1, cols: 32, data: tiny), to: .bf16)
        var xb = [Float](repeating: 0, count: 32)
        xb[3] = 1; xb[4] = 0x1p-30
        #expect(Self.run(wb, xb, 1, compute: .bf16) == [0x1p-31])
        #expect(Self.run(wb, xb, 1) == [0x1p-40 + 0x1p-31])
    }

    @Test(arguments: [WeightFormat.q4_0, .q4_1, .q8_0, .f16, .bf16])
    func matchesReferenceScalarPathAndIsBatchInvariant(format: WeightFormat) throws {
        let o = 37, k = 96, t = 11
        let w = try LinearWeight.quantize(Matrix(rows: o, cols: k, data: Self.random(o * k, 1)), to: format)
        let x = Self.random(t * k, 2)
        let y = Self.run(w, x, t)
        let reference = Reference.matmulNT(x: x, w: w.dequantized().data, t: t, k: k, o: o)
        #expect(maxRelativeError(y, reference) < 1e-5, "\(format)")
        Self.expectBitwiseContract(w, x, t, y, "\(format)")
    }

    /// Row lookups (embeddings) decode blocks exactly as gguf-py does.
    @Test(arguments: [("t_Q4_0", WeightFormat.q4_0), ("t_Q4_1", .q4_1), ("t_Q8_0", .q8_0), ("t_F16", .f16), ("t_BF16", .bf16),
                      ("t_Q4_K", .q4_k), ("t_Q6_K", .q6_k)])
    func dequantizedRowsMatchTheGGUFPyReference(name: String, format: WeightFormat) throws {
        let file = try GGUFFile(path: Fixtures.path("gguf/quants.gguf"))
        let info = try file.tensor(name)
        let w = try LinearWeight(format: format, rows: info.dims[1], cols: info.dims[0],
                                 store: ByteStore(bytes: UnsafeRawBufferPointer(rebasing: file.file.bytes[info.range]), owner: file.file))
        let expected = floats((try Fixtures.json("gguf/quants.json")["tensors"] as! [String: Any])[name].flatMap { ($0 as! [String: Any])["values"] })
        #expect(w.dequantized().data == expected)
    }

    /// A K-quant matrix of random blocks with sane f16 scales (every bit pattern of the
    /// packed scales and quants is exercised, as in the gguf-py fixture).
    static func randomKQuant(_ format: WeightFormat, rows: Int, cols: Int, seed: UInt64) throws -> LinearWeight {
        var rng = SplitMix(seed: seed)
        var bytes = (0..<(rows * format.rowBytes(cols))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let blockBytes = format == .q4_k ? 144 : 210
        for b in stride(from: 0, to: bytes.count, by: blockBytes) {
            let scaleOffsets = format == .q4_k ? [0, 2] : [208]
            for off in scaleOffsets {
                let h = HalfFloat.toF16(Float(rng.next() % 1000 + 1) * 1e-5)
                bytes[b + off] = UInt8(h & 0xFF)
                bytes[b + off + 1] = UInt8(h >> 8)
            }
        }
        return try LinearWeight(format: format, rows: rows, cols: cols, store: bytes.withUnsafeBytes { ByteStore(copying: $0) })
    }

    /// Q4_K/Q6_K products: against the naive reference on their dequantized values, their
    /// scalar path bitwise, batch invariant; the int8 mode keeps fp32 for them.
    @Test(arguments: [WeightFormat.q4_k, .q6_k])
    func kQuantsMatchReferenceScalarPathAndAreBatchInvariant(format: WeightFormat) throws {
        let o = 19, k = 512, t = 9
        let w = try Self.randomKQuant(format, rows: o, cols: k, seed: 11)
        let x = Self.random(t * k, 12)
        let y = Self.run(w, x, t)
        let reference = Reference.matmulNT(x: x, w: w.dequantized().data, t: t, k: k, o: o)
        // Random int8 scales make large terms that cancel: bound the error by the terms' size.
        let dense = w.dequantized().data
        for i in 0..<t {
            for j in 0..<o {
                var magnitude: Float = 0
                for l in 0..<k { magnitude += abs(x[i * k + l] * dense[j * k + l]) }
                #expect(abs(y[i * o + j] - reference[i * o + j]) <= 1e-6 * max(1, magnitude), "\(format) [\(i), \(j)]")
            }
        }
        Self.expectBitwiseContract(w, x, t, y, "\(format)")
        #expect(Self.run(w, x, t, compute: .int8) == y)
        // The bf16 mode covers K-quants: the reference on bf16-rounded activations, its own
        // paths bitwise, batch invariant.
        let yb = Self.run(w, x, t, compute: .bf16)
        let rounded = Reference.matmulBF16(x: x, w: dense, t: t, k: k, o: o)
        for i in 0..<t {
            for j in 0..<o {
                var magnitude: Float = 0
                for l in 0..<k { magnitude += abs(x[i * k + l] * dense[j * k + l]) }
                #expect(abs(yb[i * o + j] - rounded[i * o + j]) <= 1e-6 * max(1, magnitude), "\(format) bf16 [\(i), \(j)]")
            }
        }
        #expect(yb != y)
        Self.expectBitwiseContract(w, x, t, yb, compute: .bf16, "\(format) bf16")
        #expect(throws: FacetError.self) { try LinearWeight.quantize(Matrix(rows: 1, cols: 256, data: Self.random(256, 1)), to: format) }
        #expect(throws: FacetError.self) { try LinearWeight(format: format, rows: 1, cols: 96, store: ByteStore(copying: UnsafeRawBufferPointer(start: nil, count: 0))) }
    }
}
