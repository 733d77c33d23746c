internal import CKernels
import Tensors

/// The arithmetic of training's products with the frozen base weights (`x Wᵀ` forward,
/// `dY W` backward). The LoRA factors' own products stay fp32 in both.
package enum TrainingProducts: String, Sendable, Codable, CaseIterable {
    /// Every term fused in fp32 (`fmaf`): transformers + PEFT's fp32 math, the reference.
    case fp32
    /// Both operands rounded to bf16 (nearest even), pairs of terms accumulated in fp32 as
    /// AVX512_BF16's `vdpbf16ps` does (`fk_add_product_bf16`): about twice the fp32 product
    /// rate where that unit exists, emulated with the same bits elsewhere (about 0.8x the fp32 products there).
    case bf16

    /// Whether this thread's kernels run `.bf16` on the AVX512_BF16 unit (else emulated).
    package static var bf16InHardware: Bool { fk_has_bf16() != 0 }
}

/// The input gradient of a frozen linear layer, for training adapters on top of it.
extension LinearWeight {
    /// Semantics: `dx[t, k] += sum_o dy[t, o] * W[o, k]` (each term fused: `fmaf`) for `dy: [T, rows]`, `dx: [T, cols]`
    /// (`dY · W`, the transpose of `matmul`'s product), for every storage format.
    ///
    /// Columns are dealt out in whole blocks to the threads; each task decodes a band of
    /// rows of its columns at a time and adds their terms in row order for every token
    /// (`fk_add_product`), so the sum over `o` for every element runs in the same order
    /// whatever the thread count or instruction set (deterministic training).
    ///
    /// With `products: .bf16`, `dy` and `W` are rounded to bf16 and the terms go in pairs of
    /// rows (`fk_add_product_bf16`), in the same fixed order.
    ///
    /// With `clearing`, `dx` is set to zero first (each task its own columns, warm in its
    /// cache, instead of a serial pass before): `dx = dY · W`, the same bits as clearing
    /// before the call.
    package func addInputGradient(dy: UnsafePointer<Float>, t T: Int, dx: UnsafeMutablePointer<Float>, products: TrainingProducts = .fp32,
                                  clearing: Bool = false) {
        guard T > 0 else { return }
        let K = cols, O = rows, Oe = O + (O & 1), band = 256
        let granule = columnGranule
        let chunks = (K + granule - 1) / granule
        // bf16: dY rounded once ([T, O] padded to an even row length with zeros).
        let gb = products == .bf16 ? Self.roundedRows(dy, rows: T, cols: O, paddedTo: Oe) : nil
        withoutActuallyEscaping({ (chunk: Int) in
            let k0 = chunk * granule, k1 = min(K, k0 + granule), width = k1 - k0
            // fp32 products start the first band's chains from zero instead (the same bits).
            if clearing, gb != nil || O == 0 { for t in 0..<T { (dx + t * K + k0).update(repeating: 0, count: width) } }
            let w = Scratch.floats(.gradientRow, band * width)
            for o0 in stride(from: 0, to: O, by: band) {
                let n = min(band, O - o0)
                decode(rows: o0..<(o0 + n), columns: k0..<k1, into: w, ld: width)
                if let gb {
                    // The band as pairs of rows: [n/2, width, 2].
                    let packed = Scratch.raw(.trainingPairs, band * width * 2).assumingMemoryBound(to: UInt16.self)
                    fk_pack_bf16_pairs(w, width, 1, Int32(n), Int32(width), packed)
                    fk_add_product_bf16(dx + k0, K, gb + o0, Oe, Int32(T), packed, Int32((n + 1) / 2), Int32(width))
                } else if clearing && o0 == 0 {
                    fk_set_product(dx + k0, K, dy + o0, O, Int32(T), w, width, Int32(n), Int32(width))
                } else {
                    fk_add_product(dx + k0, K, dy + o0, O, Int32(T), w, width, Int32(n), Int32(width))
                }
            }
        }) { body in Parallel.forEach(chunks, body) }
    }

    /// Training's forward product `y = x Wᵀ (+ bias)` for `x: [T, cols]`, `y: [T, rows]`, on the
    /// weights decoded to fp32: `y[t, o] = sum_k x[t, k] * W[o, k]`, each term fused in order
    /// k = 0, 1, ... from zero, then the bias added. A register-blocked product (32 rows of W
    /// decoded and transposed at a time) rather than the inference kernels, whose block
    /// structure suits one token at a time; the sum runs in the same order whatever the thread
    /// count or instruction set.
    ///
    /// With `products: .bf16`, `x` and `W` are rounded to bf16 and the terms go in pairs of
    /// columns (`fk_add_product_bf16`), in the same fixed order.
    package func matmulDecoded(x: UnsafePointer<Float>, t T: Int, y: UnsafeMutablePointer<Float>, bias: [Float]? = nil,
                               products: TrainingProducts = .fp32) {
        guard T > 0 else { return }
        let K = cols, O = rows, panel = 32, Ke = K + (K & 1)
        // bf16: x rounded once ([T, K] padded to an even row length with zeros).
        let xb = products == .bf16 ? Self.roundedRows(x, rows: T, cols: K, paddedTo: Ke) : nil
        withoutActuallyEscaping({ (chunk: Int) in
            let o0 = chunk * panel, n = min(panel, O - o0)
            // The products add from zero: the bf16 one onto its task's own columns of y, cleared
            // here; the fp32 one starts its chains from zero itself (the same bits).
            if xb != nil { for t in 0..<T { (y + t * O + o0).update(repeating: 0, count: n) } }
            let rowsBuffer = Scratch.floats(.gradientRow, 2 * panel * K)
            decode(rows: o0..<(o0 + n), columns: 0..<K, into: rowsBuffer, ld: K)
            if let xb {
                // Element (k, o) = W[o, k] as pairs of k: [K/2, n, 2].
                let packed = Scratch.raw(.trainingPairs, Ke * panel * 2).assumingMemoryBound(to: UInt16.self)
                fk_pack_bf16_pairs(rowsBuffer, 1, K, Int32(K), Int32(n), packed)
                fk_add_product_bf16(y + o0, O, xb, Ke, Int32(T), packed, Int32(Ke / 2), Int32(n))
            } else {
                let transposed = rowsBuffer + panel * K
                fk_transpose(rowsBuffer, n, K, transposed)      // [K, n]
                fk_set_product(y + o0, O, x, K, Int32(T), transposed, n, Int32(K), Int32(n))
            }
            // The bias after the whole sum, on the task's own columns.
            if let bias { for t in 0..<T { for o in o0..<(o0 + n) { y[t * O + o] += bias[o] } } }
        }) { body in Parallel.forEach((O + panel - 1) / panel, body) }
    }

    /// The input gradient's columns go to the tasks in chunks of 64 (whole blocks), or of 32
    /// when 64 would leave the threads unevenly loaded (576 columns: 9 chunks for 2 threads,
    /// 18 with 32).
    private var columnGranule: Int {
        let K = cols, unit = format.blockValues, threads = Parallel.threadCount
        let granule = max(unit, 64)
        if unit < granule, (K + granule - 1) / granule % threads != 0, (K + granule - 1) / granule < 8 * threads { return unit }
        return granule
    }

    /// `src: [rows, cols]` rounded to bf16 into the calling thread's `[rows, paddedTo]` scratch
    /// (zeros after `cols`; valid until its next call), rows split over the threads.
    static func roundedRows(_ src: UnsafePointer<Float>, rows: Int, cols: Int, paddedTo ld: Int) -> UnsafeMutablePointer<UInt16> {
        let out = Scratch.raw(.trainingRounded, rows * ld * 2).assumingMemoryBound(to: UInt16.self)
        let chunk = 16, chunks = (rows + chunk - 1) / chunk
        withoutActuallyEscaping({ (c: Int) in
            let r0 = c * chunk, n = min(chunk, rows - r0)
            fk_round_bf16_rows(src + r0 * cols, n, cols, cols, out + r0 * ld, ld)
        }) { body in Parallel.forEach(chunks, body) }
        return out
    }

    /// Rows `rows` of the weight, their values in `columns` (block-aligned for compact
    /// formats, except at the end), row i of the range at `out + i * ld`. Compact formats go
    /// in one C call: training's backward decodes bands of one or two blocks per row.
    func decode(rows: Range<Int>, columns: Range<Int>, into out: UnsafeMutablePointer<Float>, ld: Int) {
        guard !rows.isEmpty else { return }
        if let dense {
            dense.withUnsafeBufferPointer { d in
                for (i, r) in rows.enumerated() { (out + i * ld).update(from: d.baseAddress! + r * cols + columns.lowerBound, count: columns.count) }
            }
            return
        }
        let raw = store!.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        switch format {
        case .f16, .bf16:
            let p = UnsafeRawPointer(raw).assumingMemoryBound(to: UInt16.self)
            for (i, r) in rows.enumerated() {
                let row = p + r * cols + columns.lowerBound, o = out + i * ld
                for j in 0..<columns.count { o[j] = format == .f16 ? HalfFloat.fromF16(row[j]) : HalfFloat.fromBF16(row[j]) }
            }
        default:
            // A run of whole blocks of one row is itself a row of the same format.
            let rowBytes = format.rowBytes(cols)
            let start = raw + rows.lowerBound * rowBytes + format.rowBytes(columns.lowerBound)
            fk_dequantize_rows(format.cType, start, rowBytes, Int32(rows.count), Int32(columns.count), out, Int32(ld))
        }
    }
}
