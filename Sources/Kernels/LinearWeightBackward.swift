internal import CKernels
import Tensors

/// The input gradient of a frozen linear layer, for training adapters on top of it.
extension LinearWeight {
    /// Semantics: `dx[t, k] += sum_o dy[t, o] * W[o, k]` (each term fused: `fmaf`) for `dy: [T, rows]`, `dx: [T, cols]`
    /// (`dY · W`, the transpose of `matmul`'s product), for every storage format.
    ///
    /// Columns are dealt out in whole blocks to the threads; each task walks the rows in
    /// order, decoding its blocks of one row at a time, so the sum over `o` for every
    /// element runs in the same order whatever the thread count (deterministic training).
    package func addInputGradient(dy: UnsafePointer<Float>, t T: Int, dx: UnsafeMutablePointer<Float>) {
        guard T > 0 else { return }
        let K = cols, O = rows
        let granule = format == .f32 ? 64 : max(format.blockValues, 64)
        let chunks = (K + granule - 1) / granule
        let tile = 64
        withoutActuallyEscaping({ (chunk: Int) in
            let k0 = chunk * granule, k1 = min(K, k0 + granule), width = k1 - k0
            // `band` rows of W decoded at a time; their terms are added in row order with the
            // accumulator in a register (the same sums as one row at a time).
            let band = 16
            let w = Scratch.floats(.gradientRow, band * width)
            for t0 in stride(from: 0, to: T, by: tile) {
                let t1 = min(T, t0 + tile)
                for o0 in stride(from: 0, to: O, by: band) {
                    let n = min(band, O - o0)
                    for i in 0..<n { decode(row: o0 + i, columns: k0..<k1, into: w + i * width) }
                    fk_add_scaled_block(dx + t0 * K + k0, K, dy + t0 * O + o0, O, Int32(t1 - t0), w, Int32(n), Int32(width))
                }
            }
        }) { body in Parallel.forEach(chunks, body) }
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
