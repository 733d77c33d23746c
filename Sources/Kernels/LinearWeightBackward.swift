internal import CKernels
import Tensors

/// The input gradient of a frozen linear layer, for training adapters on top of it.
extension LinearWeight {
    /// Semantics: `dx[t, k] += sum_o dy[t, o] * W[o, k]` (each term fused: `fmaf`) for `dy: [T, rows]`, `dx: [T, cols]`
    /// (`dY · W`, the transpose of `matmul`'s product), for every storage format.
    ///
    /// Columns are dealt out in whole blocks to the threads; each task decodes a band of
    /// rows of its columns at a time and adds their terms in row order for every token
    /// (`fk_add_product`), so the sum over `o` for every element runs in the same order
    /// whatever the thread count or instruction set (deterministic training).
    package func addInputGradient(dy: UnsafePointer<Float>, t T: Int, dx: UnsafeMutablePointer<Float>) {
        guard T > 0 else { return }
        let K = cols, O = rows
        // Columns in chunks of 64 (whole blocks), or of 32 when 64 would leave the threads
        // unevenly loaded (576 columns: 9 chunks for 2 threads, 18 with 32).
        let unit = format.blockValues, threads = Parallel.threadCount
        var granule = max(unit, 64)
        if unit < granule, (K + granule - 1) / granule % threads != 0, (K + granule - 1) / granule < 8 * threads { granule = unit }
        let chunks = (K + granule - 1) / granule
        withoutActuallyEscaping({ (chunk: Int) in
            let k0 = chunk * granule, k1 = min(K, k0 + granule), width = k1 - k0
            let band = 256
            let w = Scratch.floats(.gradientRow, band * width)
            for o0 in stride(from: 0, to: O, by: band) {
                let n = min(band, O - o0)
                for i in 0..<n { decode(row: o0 + i, columns: k0..<k1, into: w + i * width) }
                fk_add_product(dx + k0, K, dy + o0, O, Int32(T), w, width, Int32(n), Int32(width))
            }
        }) { body in Parallel.forEach(chunks, body) }
    }

    /// Training's forward product `y = x Wᵀ (+ bias)` for `x: [T, cols]`, `y: [T, rows]`, on the
    /// weights decoded to fp32: `y[t, o] = sum_k x[t, k] * W[o, k]`, each term fused in order
    /// k = 0, 1, ... from zero, then the bias added. A register-blocked product (32 rows of W
    /// decoded and transposed at a time) rather than the inference kernels, whose block
    /// structure suits one token at a time; the sum runs in the same order whatever the thread
    /// count or instruction set.
    package func matmulDecoded(x: UnsafePointer<Float>, t T: Int, y: UnsafeMutablePointer<Float>, bias: [Float]? = nil) {
        guard T > 0 else { return }
        let K = cols, O = rows, panel = 32
        y.update(repeating: 0, count: T * O)
        withoutActuallyEscaping({ (chunk: Int) in
            let o0 = chunk * panel, n = min(panel, O - o0)
            let rowsBuffer = Scratch.floats(.gradientRow, 2 * panel * K)
            let transposed = rowsBuffer + panel * K
            for i in 0..<n { decode(row: o0 + i, columns: 0..<K, into: rowsBuffer + i * K) }
            fk_transpose(rowsBuffer, n, K, transposed)      // [K, n]
            fk_add_product(y + o0, O, x, K, Int32(T), transposed, n, Int32(K), Int32(n))
        }) { body in Parallel.forEach((O + panel - 1) / panel, body) }
        if let bias {
            for t in 0..<T { for o in 0..<O { y[t * O + o] += bias[o] } }
        }
    }

    /// Row `r`'s values in `columns` (block-aligned for compact formats, except at the end).
    func decode(row r: Int, columns: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        if let dense {
            dense.withUnsafeBufferPointer { out.update(from: $0.baseAddress! + r * cols + columns.lowerBound, count: columns.count) }
            return
        }
        let raw = store!.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        switch format {
        case .f16, .bf16:
            let p = UnsafeRawPointer(raw).assumingMemoryBound(to: UInt16.self) + r * cols + columns.lowerBound
            for i in 0..<columns.count { out[i] = format == .f16 ? HalfFloat.fromF16(p[i]) : HalfFloat.fromBF16(p[i]) }
        default:
            // A run of whole blocks of one row is itself a row of the same format.
            let start = raw + r * format.rowBytes(cols) + format.rowBytes(columns.lowerBound)
            if format == .q4_k || format == .q6_k {
                fk_dequantize_row_k(format.cType, start, Int32(columns.count), 0, out)
            } else {
                fk_dequantize_row(format.cType, start, Int32(columns.count), 0, out)
            }
        }
    }
}
