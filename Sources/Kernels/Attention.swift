import Foundation

/// Causal attention of one query token over its sequence's cached keys and values.
package enum Attention {
    /// A layer's K or V storage laid out as pages: `[blocks, blockSize, kvHeads, headDim]`.
    package struct PagedLayer {
        package let keys: UnsafePointer<Float>
        package let values: UnsafePointer<Float>
        package let blockSize: Int
        package let kvHeads: Int
        package let headDim: Int

        package init(keys: UnsafePointer<Float>, values: UnsafePointer<Float>, blockSize: Int, kvHeads: Int, headDim: Int) {
            self.keys = keys
            self.values = values
            self.blockSize = blockSize
            self.kvHeads = kvHeads
            self.headDim = headDim
        }

        @inline(__always)
        func offset(position: Int, blockTable: UnsafePointer<Int32>, head: Int) -> Int {
            let block = Int(blockTable[position / blockSize])
            return ((block * blockSize + position % blockSize) * kvHeads + head) * headDim
        }
    }

    /// Semantics: for each head h (kv head `h / (heads / kvHeads)`) of the kv groups in
    /// `groups` (default all), over cached positions `j in first...last`:
    /// `s_j = dot(q_h, k_j) * scale`, `w_j = exp(s_j - max s)` (`VectorMath.exp`),
    /// `out_h = (sum_j w_j v_j) / (sum_j w_j)`, every sum taken in increasing j (the value
    /// sum elementwise with fused multiply-adds). `scores` must hold
    /// `(heads / kvHeads) * (last + 1)` floats. The result depends only on this query and
    /// the cache contents, not on what else is in the batch or how groups are split.
    ///
    /// The heads sharing a kv head are handled together and the cache is walked block by
    /// block, so each key and value row is loaded once per group.
    package static func attend(
        query q: UnsafePointer<Float>, heads: Int, layer: PagedLayer, blockTable: UnsafePointer<Int32>,
        first: Int, last: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
        out: UnsafeMutablePointer<Float>, groups: Range<Int>? = nil
    ) {
        let hd = layer.headDim, bs = layer.blockSize
        let group = heads / layer.kvHeads
        let stride = layer.kvHeads * hd
        let span = last + 1
        let vectorEnd = hd & ~15
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * group) { stats in
            let maxScore = stats.baseAddress!, totals = maxScore + group
            for g in groups ?? 0..<layer.kvHeads {
                let h0 = g * group
                for i in 0..<group { maxScore[i] = -.infinity }
                // Scores, block by block.
                var j = first
                while j <= last {
                    let within = j % bs
                    let run = min(bs - within, last - j + 1)
                    let base = ((Int(blockTable[j / bs]) * bs + within) * layer.kvHeads + g) * hd
                    for r in 0..<run {
                        let kp = layer.keys + base + r * stride
                        for i in 0..<group {
                            let s = dot(q + (h0 + i) * hd, kp, hd) * scale
                            scores[i * span + j + r] = s
                            if s > maxScore[i] { maxScore[i] = s }
                        }
                    }
                    j += run
                }
                for i in 0..<group {
                    let row = scores + i * span
                    VectorMath.expShifted(row + first, count: last - first + 1, shift: maxScore[i])
                    var total: Float = 0
                    for k in first...last { total += row[k] }
                    totals[i] = total
                    (out + (h0 + i) * hd).update(repeating: 0, count: hd)
                }
                // Weighted values, block by block, in increasing j for every head.
                j = first
                while j <= last {
                    let within = j % bs
                    let run = min(bs - within, last - j + 1)
                    let base = ((Int(blockTable[j / bs]) * bs + within) * layer.kvHeads + g) * hd
                    for r in 0..<run {
                        let vj = layer.values + base + r * stride
                        for i in 0..<group {
                            let wj = scores[i * span + j + r]
                            let oh = out + (h0 + i) * hd
                            let w16 = SIMD16<Float>(repeating: wj)
                            var d = 0
                            while d < vectorEnd {
                                var o = load16(oh + d)
                                o.addProduct(w16, load16(vj + d))
                                store16(o, oh + d)
                                d += 16
                            }
                            while d < hd {
                                oh[d] = oh[d].addingProduct(wj, vj[d])
                                d += 1
                            }
                        }
                    }
                    j += run
                }
                for i in 0..<group {
                    let inv = 1 / totals[i]
                    let oh = out + (h0 + i) * hd
                    for d in 0..<hd { oh[d] *= inv }
                }
            }
        }
    }
}
