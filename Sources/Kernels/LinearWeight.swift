internal import CKernels
import Tensors

/// Storage formats a linear weight can stay in at run time.
package enum WeightFormat: String, Sendable, CaseIterable {
    case f32, f16, bf16, q4_0, q4_1, q8_0, q4_k = "q4_K", q6_k = "q6_K"

    /// Values per quantization block (a row must hold whole blocks).
    package var blockValues: Int { self == .q4_k || self == .q6_k ? 256 : 32 }

    /// Bytes of one row of `cols` values.
    package func rowBytes(_ cols: Int) -> Int {
        switch self {
        case .f32: cols * 4
        case .f16, .bf16: cols * 2
        case .q4_0: cols / 32 * 18
        case .q4_1: cols / 32 * 20
        case .q8_0: cols / 32 * 34
        case .q4_k: cols / 256 * 144
        case .q6_k: cols / 256 * 210
        }
    }

    var cType: Int32 {
        switch self {
        case .q4_0: 2
        case .q4_1: 3
        case .q8_0: 8
        case .q4_k: 12
        case .q6_k: 14
        case .bf16: 30   // read only by the bf16 mode's products (fk_matmul_quant_bf16)
        default: 0
        }
    }
}

/// How a product with compact weights treats its activations.
///
/// - `fp32` (default): activations stay fp32, so results follow the fp32 reference.
/// - `int8` (opt-in, faster): for Q4_0/Q4_1/Q8_0 weights, activations are rounded to 8 bits
///   per block of 32 (as llama.cpp does) and blocks are multiplied as exact integer dot
///   products; other formats keep fp32. Still batch invariant: each token is rounded alone.
/// - `bf16` (opt-in): for Q4_0/Q4_1/Q8_0/Q4_K/Q6_K and BF16 weights, activations are rounded
///   to bf16 and each block of 32 is taken as 16 pairs of products, each pair summed with one
///   rounding (AVX512_BF16's `vdpbf16ps`; emulated with fused multiply-adds on other CPUs,
///   with the same bits); F16 and F32 weights keep fp32. Batch invariant like the others.
package enum ComputeMode: String, Sendable, CaseIterable, Codable {
    case fp32, int8, bf16

    /// Whether products with weights in `format` follow this mode (the others keep fp32).
    package func covers(_ format: WeightFormat) -> Bool {
        switch self {
        case .fp32: true
        case .int8: format == .q4_0 || format == .q4_1 || format == .q8_0
        case .bf16: format != .f32 && format != .f16
        }
    }

    /// The weight formats the mode applies to, for messages.
    package var coveredFormats: String {
        switch self {
        case .fp32: "every weight format"
        case .int8: "Q4_0, Q4_1 and Q8_0 weights"
        case .bf16: "Q4_0, Q4_1, Q8_0, Q4_K, Q6_K and BF16 weights"
        }
    }
}

/// Raw bytes kept alive by whatever owns them (a memory-mapped file, or a copy).
package final class ByteStore: @unchecked Sendable {
    package let bytes: UnsafeRawBufferPointer
    private let owner: AnyObject?
    private let owned: UnsafeMutableRawBufferPointer?

    /// Bytes inside memory owned by `owner` (e.g. a `MappedFile`).
    package init(bytes: UnsafeRawBufferPointer, owner: AnyObject) {
        self.bytes = bytes
        self.owner = owner
        self.owned = nil
    }

    /// A private, 64-byte aligned copy.
    package init(copying source: UnsafeRawBufferPointer) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(source.count, 1), alignment: 64)
        if source.count > 0 { buffer.baseAddress!.copyMemory(from: source.baseAddress!, byteCount: source.count) }
        owned = buffer
        owner = nil
        bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<source.count])
    }

    /// Memory this store takes over (allocated by the caller, freed with the store).
    package init(adopting buffer: UnsafeMutableRawBufferPointer, count: Int) {
        owned = buffer
        owner = nil
        bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
    }

    deinit { owned?.deallocate() }
}

/// A linear layer's weight `W: [rows = out, cols = in]` in its storage format.
///
/// Semantics of `matmul`: `y[t, o] = sum_k x[t, k] * W[o, k] (+ bias[o])`. The reduction
/// order of each output is fixed per format (see `Dot.swift` for f32 and `ckernels.h` for
/// the compact formats), so a row of `y` never depends on the batch around it.
package struct LinearWeight: Sendable {
    package let rows: Int
    package let cols: Int
    package let format: WeightFormat
    let dense: [Float]?
    let store: ByteStore?
    /// A copy of a Q4_0/Q4_1/Q8_0 weight in tiles of 8 rows (`fk_int8_tiles`), made by
    /// `withTiles()`: read by the int8 mode's products and by fp32 products where
    /// `fk_f32_tiles_used` says the tier has a tiled path (AVX-512). Products
    /// give the row layout's bits either way, faster from the tiles.
    private(set) var tiles: ByteStore?

    package init(_ m: Matrix) {
        rows = m.rows
        cols = m.cols
        format = .f32
        dense = m.data
        store = nil
        tiles = nil
    }

    package init(format: WeightFormat, rows: Int, cols: Int, store: ByteStore) throws {
        guard format != .f32 else {
            throw FacetError(.invalidArgument, "f32 weights are built from a Matrix", field: "format")
        }
        guard cols % format.blockValues == 0 else {
            throw FacetError(.shapeMismatch, "\(format.rawValue) rows of \(cols) values are not whole blocks of \(format.blockValues)", field: "cols")
        }
        guard store.bytes.count == rows * format.rowBytes(cols) else {
            throw FacetError(.shapeMismatch, "\(store.bytes.count) bytes for a \(rows)x\(cols) \(format.rawValue) matrix (need \(rows * format.rowBytes(cols)))")
        }
        self.rows = rows
        self.cols = cols
        self.format = format
        self.dense = nil
        self.store = store
        self.tiles = nil
    }

    private init(_ other: LinearWeight, tiles: ByteStore) {
        rows = other.rows
        cols = other.cols
        format = other.format
        dense = other.dense
        store = other.store
        self.tiles = tiles
    }

    /// This weight with its tiled copy beside it (for Q4_0, Q4_1 and Q8_0; other formats, and
    /// a weight that has one, are returned as they are). The copy is as large as the weight;
    /// the bf16 mode and the fp32 products without a tiled path keep reading the original.
    package func withTiles() -> LinearWeight {
        guard tiles == nil, ComputeMode.int8.covers(format), let store else { return self }
        let size = Int(fk_int8_tiles_size(format.cType, Int32(rows), Int32(cols)))
        let tiles = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 64)
        fk_int8_tiles(format.cType, store.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(rows), Int32(cols),
                      tiles.baseAddress!.assumingMemoryBound(to: UInt8.self))
        return LinearWeight(self, tiles: ByteStore(adopting: tiles, count: size))
    }

    /// This weight without its tiled copy (the copy is freed with its last user).
    package func withoutTiles() -> LinearWeight {
        guard tiles != nil else { return self }
        var w = self
        w.tiles = nil
        return w
    }

    /// Bytes of the tiled copy (0 without one).
    package var tileBytes: Int { tiles?.bytes.count ?? 0 }

    /// Whether this weight has a tiled copy (see `withTiles`).
    package var hasTiles: Bool { tiles != nil }

    /// Outputs `rows` of the fp32 product `y = x W^T` (`y: [T, rows]`, all `self.rows` wide)
    /// read from the tiled copy through `fk_matmul_f32_tiles` on this thread's tier, even where
    /// `matmul` would read the rows (for tests: partial tiles, the reference twin).
    package func fp32FromTiles(x: UnsafePointer<Float>, t T: Int, rows range: Range<Int>, y: UnsafeMutablePointer<Float>) {
        guard let tiles else { preconditionFailure("fp32FromTiles needs withTiles()") }
        var sums = [Float](repeating: 0, count: T * cols / 32)
        sums.withUnsafeMutableBufferPointer { s in
            fk_block_sums(x, Int32(T), Int32(cols), s.baseAddress!)
            fk_matmul_f32_tiles(format.cType, x, s.baseAddress!, tiles.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(cols), Int32(T),
                                Int32(range.lowerBound), Int32(range.upperBound), y, Int32(rows))
        }
    }

    /// Whether fp32 models should make tiled copies: when this CPU's tier has a tiled fp32
    /// path (AVX-512; the AVX2 and scalar tiers would only pay the memory).
    package static var fp32ReadsTiles: Bool { fk_f32_tiles_used() != 0 }

    /// Bytes the weight occupies.
    package var byteSize: Int { format == .f32 ? rows * cols * 4 : store!.bytes.count }

    package func matmul(x: UnsafePointer<Float>, t T: Int, y: UnsafeMutablePointer<Float>, bias: [Float]? = nil,
                       compute: ComputeMode = .fp32) {
        LinearWeight.matmul(sharing: x, t: T, compute: compute, [Product(self, y: y, bias: bias)])
    }

    /// One product of a shared input: `y = x W^T (+ bias)`.
    package struct Product {
        package let weight: LinearWeight
        package let y: UnsafeMutablePointer<Float>
        package let bias: [Float]?     // [rows], added as y[t, o] + bias[o]
        package init(_ weight: LinearWeight, y: UnsafeMutablePointer<Float>, bias: [Float]? = nil) {
            self.weight = weight
            self.y = y
            self.bias = bias
        }
    }

    /// Several products of the same input `x: [T, K]` (e.g. q, k and v) in one parallel
    /// region: the input's block sums or int8 rounding are made once, and the threads meet
    /// once instead of once per weight. Each output is computed exactly as by `matmul`.
    package static func matmul(sharing x: UnsafePointer<Float>, t T: Int, compute: ComputeMode, _ products: [Product]) {
        products.withUnsafeBufferPointer { matmul(sharing: x, t: T, compute: compute, $0) }
    }

    /// `matmul(sharing:)` over products the caller keeps (e.g. on its stack): nothing is
    /// allocated.
    ///
    /// `beside`: other tasks (e.g. the adapters' deltas) run in the same region, dealt out
    /// among the products' tasks, so their memory traffic overlaps the products' arithmetic
    /// and the threads meet once. They must not read `y`.
    package static func matmul(sharing x: UnsafePointer<Float>, t T: Int, compute: ComputeMode, _ products: UnsafeBufferPointer<Product>,
                              beside extra: ParallelTasks = .none) {
        guard T > 0, let K = products.first?.weight.cols else {
            Parallel.run(extra)
            return
        }
        precondition(products.allSatisfy { $0.weight.cols == K }, "products sharing an input must have the same input width")
        let nb = K / 32
        // Per-input preparation, in this thread's scratch.
        var sums: UnsafeMutablePointer<Float>? = nil
        var int8: (q: UnsafeMutablePointer<Int8>, d: UnsafeMutablePointer<Float>, qsums: UnsafeMutablePointer<Int32>?)? = nil
        var bf16: (x: UnsafeMutablePointer<Float>, pairs: UnsafeMutablePointer<UInt32>?, sums: UnsafeMutablePointer<Float>)? = nil
        if products.contains(where: { $0.weight.usesBF16(compute) }) {
            let xr = Scratch.floats(.bf16Activations, T * K)
            let pairs = fk_has_bf16() != 0 ? Scratch.raw(.bf16Pairs, T * K * 2).assumingMemoryBound(to: UInt32.self) : nil
            fk_prepare_bf16(x, Int32(T), Int32(K), xr, pairs)
            let sums = Scratch.floats(.bf16BlockSums, T * nb)
            fk_block_sums(xr, Int32(T), Int32(K), sums)
            bf16 = (xr, pairs, sums)
        }
        if products.contains(where: { $0.weight.usesInt8(compute) }) {
            let q = Scratch.raw(.int8Activations, T * K).assumingMemoryBound(to: Int8.self)
            let d = Scratch.floats(.int8Scales, 2 * T * nb)
            let tiled = products.contains { $0.weight.usesInt8(compute) && $0.weight.tiles != nil }
            let qsums = tiled ? Scratch.raw(.int8BlockSums, T * nb * 4).assumingMemoryBound(to: Int32.self) : nil
            fk_quantize_activations(x, Int32(T), Int32(K), q, d, d + T * nb, qsums)
            int8 = (q, d, qsums)
        }
        if products.contains(where: { !$0.weight.roundsActivations(compute) && $0.weight.needsBlockSums }) {
            let p = Scratch.floats(.blockSums, T * nb)
            fk_block_sums(x, Int32(T), Int32(K), p)
            sums = p
        }
        // The row ranges of every product, one after another, as one task list (task i is
        // found by walking the products: no list is built).
        let job = ProductsJob(products: products, T: T, K: K, compute: compute,
                              inputs: Inputs(x: x, sums: sums.map { UnsafePointer($0) }, q: int8.map { UnsafePointer($0.q) },
                                             d: int8.map { UnsafePointer($0.d) }, qsums: int8?.qsums.map { UnsafePointer($0) }, rounded: bf16.map { UnsafePointer($0.x) },
                                             pairs: bf16?.pairs.map { UnsafePointer($0) }, roundedSums: bf16.map { UnsafePointer($0.sums) }),
                              extra: extra)
        Parallel.run(job.taskCount, serial: extra.count == 0 && products.reduce(0) { $0 + T * K * $1.weight.rows } < 16_384, job)
        for p in products { p.weight.addBias(p.bias, p.y, T) }
    }

    /// The tasks of `matmul(sharing:)`: each product's row ranges, one product after another.
    struct ProductsJob: ParallelJob, @unchecked Sendable {
        let products: UnsafeBufferPointer<Product>
        let T: Int, K: Int
        let compute: ComputeMode
        let inputs: Inputs
        let extra: ParallelTasks
        /// The products' tasks and the extra ones (dealt out evenly among them).
        let taskCount: Int

        init(products: UnsafeBufferPointer<Product>, T: Int, K: Int,
             compute: ComputeMode, inputs: Inputs, extra: ParallelTasks = .none) {
            self.products = products
            self.T = T
            self.K = K
            self.compute = compute
            self.inputs = inputs
            self.extra = extra
            taskCount = products.reduce(0) { $0 + Self.split($1, T: T, K: K).parts } + extra.count
        }

        static func split(_ p: Product, T: Int, K: Int) -> Parallel.Split { Parallel.Split(p.weight.rows, granule: 8, work: T * K * p.weight.rows) }

        static let entry: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void = { job, task in
            job!.assumingMemoryBound(to: ProductsJob.self).pointee.run(Int(task))
        }

        func run(_ index: Int) {
            // Task `index` is extra task `e` when the count of extras before it grows there.
            let e = extra.count == 0 ? 0 : index * extra.count / taskCount
            if extra.count > 0, (index + 1) * extra.count / taskCount > e {
                extra.run(e)
                return
            }
            var i = index - e   // the product task
            for p in products {
                let s = Self.split(p, T: T, K: K)
                guard i < s.parts else {
                    i -= s.parts
                    continue
                }
                let rows = s.range(i)
                p.weight.run(inputs, t: T, rows: rows, y: p.y, compute: compute)
                return
            }
        }
    }

    /// The prepared input of a product: fp32 activations with their block sums, their
    /// int8 rounding (`d`: `[T, K/32]` scales followed by `[T, K/32]` sums), or their bf16
    /// rounding (`rounded: [T, K]`, its block sums, and the pairs for vdpbf16ps).
    struct Inputs: @unchecked Sendable {
        let x: UnsafePointer<Float>
        let sums: UnsafePointer<Float>?
        let q: UnsafePointer<Int8>?
        let d: UnsafePointer<Float>?
        /// The int8 activations' integer block sums `[T, K/32]` (for tiled weights).
        var qsums: UnsafePointer<Int32>? = nil
        var rounded: UnsafePointer<Float>? = nil
        var pairs: UnsafePointer<UInt32>? = nil
        var roundedSums: UnsafePointer<Float>? = nil
    }

    private func usesInt8(_ compute: ComputeMode) -> Bool { compute == .int8 && compute.covers(format) }

    private func usesBF16(_ compute: ComputeMode) -> Bool { compute == .bf16 && compute.covers(format) }

    /// Whether this weight's products take `compute`'s rounded activations (not the fp32 ones).
    private func roundsActivations(_ compute: ComputeMode) -> Bool { compute != .fp32 && compute.covers(format) }

    private var needsBlockSums: Bool { format == .q4_0 || format == .q4_1 || format == .q4_k }

    /// Outputs `rows` of `y = x W^T` (no bias).
    private func run(_ input: Inputs, t T: Int, rows range: Range<Int>, y: UnsafeMutablePointer<Float>, compute: ComputeMode) {
        let K = cols, O = rows
        if let dense {
            dense.withUnsafeBufferPointer { w in
                fk_matmul_f32(input.x, w.baseAddress!, nil, y, T, K, O, range.lowerBound, range.upperBound)
            }
            return
        }
        let o0 = Int32(range.lowerBound), o1 = Int32(range.upperBound)
        let raw = store!.bytes.baseAddress!
        let u8 = raw.assumingMemoryBound(to: UInt8.self), u16 = raw.assumingMemoryBound(to: UInt16.self)
        if usesInt8(compute), let q = input.q, let d = input.d {
            let nb = K / 32
            if let tiles, let sums = input.qsums {
                fk_matmul_int8_tiles(format.cType, q, d, d + T * nb, sums, tiles.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                     Int32(K), Int32(T), o0, o1, y, Int32(O))
                return
            }
            fk_matmul_int8(format.cType, q, d, d + T * nb, u8, Int32(K), Int32(T), o0, o1, y, Int32(O))
            return
        }
        if usesBF16(compute), let xr = input.rounded, let rs = input.roundedSums {
            fk_matmul_quant_bf16(format.cType, xr, input.pairs, rs, u8, Int32(K), Int32(T), o0, o1, y, Int32(O))
            return
        }
        let x = input.x, s = input.sums
        if let tiles, fk_f32_tiles_used() != 0 {
            fk_matmul_f32_tiles(format.cType, x, s, tiles.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(K), Int32(T), o0, o1, y, Int32(O))
            return
        }
        switch format {
        case .q4_1: fk_matmul_q4_1(x, s, u8, Int32(K), Int32(T), o0, o1, y, Int32(O))
        case .q4_0: fk_matmul_q4_0(x, s, u8, Int32(K), Int32(T), o0, o1, y, Int32(O))
        case .q8_0: fk_matmul_q8_0(x, u8, Int32(K), Int32(T), o0, o1, y, Int32(O))
        case .f16: fk_matmul_f16(x, u16, Int32(K), Int32(T), o0, o1, y, Int32(O))
        case .bf16: fk_matmul_bf16(x, u16, Int32(K), Int32(T), o0, o1, y, Int32(O))
        case .q4_k: fk_matmul_kquant(12, x, s, u8, Int32(K), Int32(T), o0, o1, y, Int32(O))
        case .q6_k: fk_matmul_kquant(14, x, s, u8, Int32(K), Int32(T), o0, o1, y, Int32(O))
        case .f32: break
        }
    }

    private func addBias(_ bias: [Float]?, _ y: UnsafeMutablePointer<Float>, _ T: Int) {
        guard let bias else { return }
        let O = rows
        for t in 0..<T { for o in 0..<O { y[t * O + o] = y[t * O + o] + bias[o] } }
    }

    /// The int8 mode's rounding of `x: [T, K]` (`q: [T, K]`, `d` and `s`: `[T, K/32]`).
    package static func quantizeActivations(_ x: [Float], t: Int, k: Int) -> (q: [Int8], d: [Float], s: [Float]) {
        var q = [Int8](repeating: 0, count: t * k)
        var d = [Float](repeating: 0, count: t * k / 32), s = d
        q.withUnsafeMutableBufferPointer { qp in
            d.withUnsafeMutableBufferPointer { dp in
                s.withUnsafeMutableBufferPointer { sp in
                    fk_quantize_activations(x, Int32(t), Int32(k), qp.baseAddress!, dp.baseAddress!, sp.baseAddress!, nil)
                }
            }
        }
        return (q, d, s)
    }

    /// The bf16 mode's rounding of `x: [T, K]` (`K` a multiple of 32), on this thread's tier.
    package static func roundActivationsBF16(_ x: [Float], t: Int, k: Int) -> [Float] {
        precondition(x.count == t * k && k % 32 == 0, "x must be [t, k] with k a multiple of 32")
        var out = [Float](repeating: 0, count: x.count)
        out.withUnsafeMutableBufferPointer { fk_prepare_bf16(x, Int32(t), Int32(k), $0.baseAddress!, nil) }
        return out
    }

    /// Row `r` as floats (embedding lookups).
    package func row(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        if let dense {
            dense.withUnsafeBufferPointer { out.update(from: $0.baseAddress! + r * cols, count: cols) }
            return
        }
        let raw = store!.bytes.baseAddress!
        switch format {
        case .f16, .bf16:
            let p = raw.assumingMemoryBound(to: UInt16.self) + r * cols
            for i in 0..<cols { out[i] = format == .f16 ? HalfFloat.fromF16(p[i]) : HalfFloat.fromBF16(p[i]) }
        case .q4_k, .q6_k:
            fk_dequantize_row_k(format.cType, raw.assumingMemoryBound(to: UInt8.self), Int32(cols), Int32(r), out)
        default:
            fk_dequantize_row(format.cType, raw.assumingMemoryBound(to: UInt8.self), Int32(cols), Int32(r), out)
        }
    }

    /// The whole weight as fp32 (for merging, conversion and references).
    package func dequantized() -> Matrix {
        if let dense { return Matrix(rows: rows, cols: cols, data: dense) }
        var m = Matrix(zeros: rows, cols)
        m.data.withUnsafeMutableBufferPointer { p in
            for r in 0..<rows { row(r, into: p.baseAddress! + r * cols) }
        }
        return m
    }

    package var isCompact: Bool { dense == nil }

    /// Tests only: run the kernels' portable scalar path instead of AVX2 on the calling
    /// thread (and in the pool tasks its calls start); other threads are not affected, so
    /// twin tests running in parallel cannot switch each other's path.
    package static func useVectorKernels(_ enabled: Bool) { fk_set_vector_path(enabled ? 1 : 0) }

    /// Tests only: keep the int8 products off AVX-512 VNNI on the calling thread (the AVX2
    /// tier runs instead), to compare the tiers.
    package static func useVNNIKernels(_ enabled: Bool) { fk_set_vnni_path(enabled ? 1 : 0) }

    /// Tests only: keep the dense training products off AVX-512 on the calling thread (the
    /// AVX2 tier runs instead), to compare the tiers.
    package static func useAVX512Kernels(_ enabled: Bool) { fk_set_avx512_path(enabled ? 1 : 0) }

    /// Whether this CPU (after `FACET_ISA`) runs the AVX-512 F/VL tier of the dense products.
    package static var hasAVX512: Bool {
        fk_set_avx512_path(1)
        return fk_has_avx512() != 0
    }

    /// Quantizes an fp32 matrix into a compact format (tests and conversions; the encoding
    /// follows ggml's reference quantizers for Q4_0, Q4_1 and Q8_0).
    package static func quantize(_ m: Matrix, to format: WeightFormat) throws -> LinearWeight {
        guard format != .f32 else { return LinearWeight(m) }
        guard format.blockValues == 32 else {
            throw FacetError(.unsupported, "quantizing to \(format.rawValue) is not implemented", field: "format",
                             remedy: "quantize K-quant files with llama.cpp; Facet reads them as they are")
        }
        guard m.cols % 32 == 0 else { throw FacetError(.shapeMismatch, "columns must be a multiple of 32", field: "cols") }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(m.rows * format.rowBytes(m.cols))
        func half(_ v: Float) { let h = HalfFloat.toF16(v); bytes.append(UInt8(h & 0xFF)); bytes.append(UInt8(h >> 8)) }
        for r in 0..<m.rows {
            for b in 0..<(m.cols / 32) {
                let x = Array(m.data[(r * m.cols + b * 32)..<(r * m.cols + b * 32 + 32)])
                switch format {
                case .f16:
                    for v in x { half(v) }
                case .bf16:
                    for v in x { let h = HalfFloat.toBF16(v); bytes.append(UInt8(h & 0xFF)); bytes.append(UInt8(h >> 8)) }
                case .q8_0:
                    let amax = x.map(abs).max() ?? 0
                    let d = amax / 127
                    half(d)
                    let id = d != 0 ? 1 / d : 0
                    for v in x { bytes.append(UInt8(bitPattern: Int8(clamping: Int((v * id).rounded())))) }
                case .q4_0:
                    let maxv = x.max { abs($0) < abs($1) } ?? 0
                    let d = maxv / -8
                    half(d)
                    let id = d != 0 ? 1 / d : 0
                    for j in 0..<16 {
                        let lo = UInt8(min(15, max(0, Int((x[j] * id + 8.5).rounded(.down)))))
                        let hi = UInt8(min(15, max(0, Int((x[j + 16] * id + 8.5).rounded(.down)))))
                        bytes.append(lo | hi << 4)
                    }
                case .q4_1:
                    let lo = x.min() ?? 0, hiV = x.max() ?? 0
                    let d = (hiV - lo) / 15
                    half(d)
                    half(lo)
                    let id = d != 0 ? 1 / d : 0
                    for j in 0..<16 {
                        let a = UInt8(min(15, max(0, Int(((x[j] - lo) * id + 0.5).rounded(.down)))))
                        let c = UInt8(min(15, max(0, Int(((x[j + 16] - lo) * id + 0.5).rounded(.down)))))
                        bytes.append(a | c << 4)
                    }
                case .f32, .q4_k, .q6_k: break
                }
            }
        }
        // f16/bf16 rows are written block by block above, which is row-major order too.
        let store = bytes.withUnsafeBytes { ByteStore(copying: $0) }
        return try LinearWeight(format: format, rows: m.rows, cols: m.cols, store: store)
    }
}

/// The kernels' instruction-set tiers, lowest first. Each tier includes the ones below it;
/// every tier gives bitwise the same results.
package enum InstructionTier: Int, Sendable, CaseIterable, Comparable, CustomStringConvertible {
    package static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    /// Portable C (any architecture).
    case scalar = 0
    /// AVX2 + FMA + F16C for every product.
    case avx2 = 1
    /// AVX-512 F/BW/VL for the fp32 kernels (dot products, dense products, attention, LoRA
    /// factors, training's products, and the fp32 mode's Q4_0/Q4_1/Q8_0 products); the int8
    /// products without VNNI and the fp32 K-quant products stay on AVX2.
    case avx512 = 2
    /// AVX-512 plus VNNI (`vpdpbusd`) for the int8 mode's integer dot products.
    case avx512VNNI = 3
    /// Also AVX512_BF16 (`vdpbf16ps`) for the bf16 mode's products.
    case avx512BF16 = 4

    /// The value of `FACET_ISA` that caps the kernels at this tier.
    package var environmentName: String {
        switch self {
        case .scalar: "scalar"
        case .avx2: "avx2"
        case .avx512: "avx512"
        case .avx512VNNI: "avx512vnni"
        case .avx512BF16: "native"
        }
    }

    package var description: String {
        switch self {
        case .scalar: "scalar (portable C)"
        case .avx2: "AVX2+FMA+F16C"
        case .avx512: "AVX-512 F/BW/VL (int8 and fp32 K-quant products on AVX2)"
        case .avx512VNNI: "AVX-512 F/BW/VL, VNNI for int8 (fp32 K-quant products on AVX2)"
        case .avx512BF16: "AVX-512 F/BW/VL, VNNI for int8, BF16 for the bf16 mode (fp32 K-quant products on AVX2)"
        }
    }

    /// The tier the kernels run at on this CPU (read from cpuid at run time; `FACET_ISA`
    /// caps it).
    package static var current: InstructionTier { InstructionTier(rawValue: Int(fk_cpu_tier())) ?? .scalar }

    /// Tests only: run the calling thread's kernels (and the pool tasks its calls start) at
    /// `tier` or the CPU's own tier, whichever is lower; `nil` lifts the cap.
    package static func capThisThread(_ tier: InstructionTier?) { fk_cap_tier(Int32((tier ?? .avx512BF16).rawValue)) }

    /// Checks `FACET_ISA` (unset, or one of scalar, avx2, avx512, avx512vnni, native).
    package static func validateEnvironment() throws {
        guard let value = getenvString("FACET_ISA") else { return }
        guard allCases.contains(where: { $0.environmentName == value }) else {
            throw FacetError(.invalidArgument, "FACET_ISA=\(value) is not a kernel tier", field: "FACET_ISA",
                             remedy: "use one of scalar, avx2, avx512, avx512vnni or native, or unset it to use the best tier this CPU has")
        }
    }
}
