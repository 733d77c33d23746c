internal import CKernels

/// Dense fp32 products for training (adapter factors, their gradients, the frozen weights'
/// forward and input-gradient products), on one register-blocked kernel per instruction set
/// (`fk_add_product`) whose every output is a chain of fused multiply-adds in a fixed order.
package enum DenseProduct {
    /// `out[i, j] += Σ_o g[i, o] · w[o, j]` for `g: [rows, inner]`, `w: [inner, width]`,
    /// `out: [rows, width]`, each term fused in order `o = 0, 1, …` onto the value already in
    /// `out`. Rows (or, when there are few, columns) are dealt out to the threads, which
    /// changes no bit.
    package static func add(_ out: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, rows: Int, inner: Int,
                            _ w: UnsafePointer<Float>, width: Int) {
        guard rows > 0, width > 0, inner > 0 else { return }
        let work = rows * inner * width
        if work < 1 << 16 || Parallel.threadCount == 1 {
            fk_add_product(out, width, g, inner, Int32(rows), w, width, Int32(inner), Int32(width))
            return
        }
        let pieces = Parallel.threadCount * 4
        if rows >= 8 * pieces || rows >= width {
            let step = max(8, (rows + pieces - 1) / pieces + 7) / 8 * 8
            Parallel.forEach((rows + step - 1) / step) { c in
                let r0 = c * step, n = min(step, rows - r0)
                fk_add_product(out + r0 * width, width, g + r0 * inner, inner, Int32(n), w, width, Int32(inner), Int32(width))
            }
        } else {
            let step = max(32, ((width + pieces - 1) / pieces + 31) / 32 * 32)
            Parallel.forEach((width + step - 1) / step) { c in
                let j0 = c * step, n = min(step, width - j0)
                fk_add_product(out + j0, width, g, inner, Int32(rows), w + j0, width, Int32(inner), Int32(n))
            }
        }
    }

    /// `[rows, cols]` → `[cols, rows]`.
    package static func transpose(_ m: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
        let band = 64
        guard rows * cols >= 1 << 15, rows > band, Parallel.threadCount > 1 else {
            fk_transpose(m, rows, cols, out)
            return
        }
        Parallel.forEach((rows + band - 1) / band) { c in
            fk_transpose_rows(m, rows, cols, c * band, min(rows, (c + 1) * band), out)
        }
    }

    /// `body(range)` over `0..<count` in chunks on the pool: for element-wise passes, whose
    /// results do not depend on the split.
    package static func elementwise(_ count: Int, _ body: (Range<Int>) -> Void) {
        let chunk = 16_384
        guard count > chunk else {
            body(0..<count)
            return
        }
        Parallel.forEach((count + chunk - 1) / chunk) { c in body((c * chunk)..<min(count, (c + 1) * chunk)) }
    }
}
