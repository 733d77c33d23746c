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

    static func run(_ w: LinearWeight, _ x: [Float], _ t: Int) -> [Float] {
        var y = [Float](repeating: 0, count: t * w.rows)
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { w.matmul(x: xp.baseAddress!, t: t, y: $0.baseAddress!) } }
        return y
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
