import Formats
import Kernels
import Tensors
import Testing
import TestSupport

/// Compact-weight kernels (AVX2 C) against the naive reference on their dequantized values,
/// bitwise against their own scalar path, and batch-invariant.
@Suite(.serialized) struct CompactWeightTests {
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

    /// The int8 mode: matches the Double reference on rounded activations, its own scalar
    /// path bitwise, and is batch invariant; formats without an int8 kernel keep fp32.
    @Test(arguments: [WeightFormat.q4_0, .q4_1, .q8_0, .f16])
    func int8ModeMatchesReferenceScalarPathAndIsBatchInvariant(format: WeightFormat) throws {
        let o = 37, k = 96, t = 11
        let w = try LinearWeight.quantize(Matrix(rows: o, cols: k, data: Self.random(o * k, 3)), to: format)
        let x = Self.random(t * k, 4)
        let y = Self.run(w, x, t, compute: .int8)
        let fp32 = Self.run(w, x, t)
        guard format != .f16 else {
            #expect(y == fp32, "f16 weights have no int8 kernel and must keep fp32")
            return
        }
        let reference = Reference.matmulInt8(x: x, w: w.dequantized().data, t: t, k: k, o: o)
        #expect(maxRelativeError(y, reference) < 1e-5, "\(format)")
        let exact = Reference.matmulNT(x: x, w: w.dequantized().data, t: t, k: k, o: o)
        let cost = maxRelativeError(y, exact)
        #expect(cost > 1e-6 && cost < 0.05, "\(format): int8 rounding error \(cost) is not in the expected range")
        LinearWeight.useVectorKernels(false)
        let scalar = Self.run(w, x, t, compute: .int8)
        LinearWeight.useVectorKernels(true)
        #expect(scalar == y, "\(format): scalar and AVX2 int8 paths differ")
        for r in [0, 5, 10] {
            let alone = Self.run(w, Array(x[(r * k)..<((r + 1) * k)]), 1, compute: .int8)
            #expect(alone == Array(y[(r * o)..<((r + 1) * o)]), "\(format) row \(r)")
        }
        for (start, count) in [(0, 4), (4, 2), (6, 5)] {
            let part = Self.run(w, Array(x[(start * k)..<((start + count) * k)]), count, compute: .int8)
            #expect(part == Array(y[(start * o)..<((start + count) * o)]), "\(format) rows \(start)..<\(start + count)")
        }
    }

    @Test(arguments: [WeightFormat.q4_0, .q4_1, .q8_0, .f16, .bf16])
    func matchesReferenceScalarPathAndIsBatchInvariant(format: WeightFormat) throws {
        let o = 37, k = 96, t = 11
        let w = try LinearWeight.quantize(Matrix(rows: o, cols: k, data: Self.random(o * k, 1)), to: format)
        let x = Self.random(t * k, 2)
        let y = Self.run(w, x, t)
        let reference = Reference.matmulNT(x: x, w: w.dequantized().data, t: t, k: k, o: o)
        #expect(maxRelativeError(y, reference) < 1e-5, "\(format)")
        LinearWeight.useVectorKernels(false)
        let scalar = Self.run(w, x, t)
        LinearWeight.useVectorKernels(true)
        #expect(scalar == y, "\(format): scalar and AVX2 paths differ")
        for r in [0, 5, 10] {
            let alone = Self.run(w, Array(x[(r * k)..<((r + 1) * k)]), 1)
            #expect(alone == Array(y[(r * o)..<((r + 1) * o)]), "\(format) row \(r)")
        }
    }

    /// Row lookups (embeddings) decode blocks exactly as gguf-py does.
    @Test(arguments: [("t_Q4_0", WeightFormat.q4_0), ("t_Q4_1", .q4_1), ("t_Q8_0", .q8_0), ("t_F16", .f16), ("t_BF16", .bf16)])
    func dequantizedRowsMatchTheGGUFPyReference(name: String, format: WeightFormat) throws {
        let file = try GGUFFile(path: Fixtures.path("gguf/quants.gguf"))
        let info = try file.tensor(name)
        let w = try LinearWeight(format: format, rows: info.dims[1], cols: info.dims[0],
                                 store: ByteStore(bytes: UnsafeRawBufferPointer(rebasing: file.file.bytes[info.range]), owner: file.file))
        let expected = floats((try Fixtures.json("gguf/quants.json")["tensors"] as! [String: Any])[name].flatMap { ($0 as! [String: Any])["values"] })
        #expect(w.dequantized().data == expected)
    }
}
