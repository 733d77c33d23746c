import Foundation
import Tensors

/// How a KV cache stores keys and values: fp32 (exact), or rounded to 16 bits (half the
/// memory: twice the positions in the same budget). Attention widens 16-bit entries exactly
/// to fp32, so a 16-bit cache gives bitwise what an fp32 cache holding the rounded values
/// gives, and stays batch invariant.
package enum KVCacheType: String, Sendable, CaseIterable, Codable {
    case fp32, bf16, f16

    package var elementBytes: Int { self == .fp32 ? 4 : 2 }

    /// Stores `rows` rows of `rowLength` floats from `source` at element `index` of
    /// `destination`, rounded to nearest even for the 16-bit types (f16 saturates to
    /// infinity beyond 65504). bf16 rows keep each full run of 16 as 8 pairs (element i
    /// beside element i + 8), so that attention widens them with 32-bit shifts and masks
    /// (see `BF16PairedRow`); runs start at each row's start.
    package func store(_ source: UnsafePointer<Float>, rows: Int, rowLength: Int, to destination: UnsafeMutableRawPointer, at index: Int) {
        let count = rows * rowLength
        switch self {
        case .fp32:
            (destination.assumingMemoryBound(to: Float.self) + index).update(from: source, count: count)
        case .bf16:
            let full = rowLength & ~15
            for r in 0..<rows {
                let s = source + r * rowLength
                let d = destination.assumingMemoryBound(to: UInt16.self) + index + r * rowLength
                var k = 0
                while k < full {
                    for i in 0..<8 {
                        d[k + 2 * i] = HalfFloat.toBF16(s[k + i])
                        d[k + 2 * i + 1] = HalfFloat.toBF16(s[k + 8 + i])
                    }
                    k += 16
                }
                for i in full..<rowLength { d[i] = HalfFloat.toBF16(s[i]) }
            }
        case .f16:
            let d = destination.assumingMemoryBound(to: UInt16.self) + index
            for i in 0..<count { d[i] = HalfFloat.toF16(source[i]) }
        }
    }

    /// The value stored `store` put at element `i` of a row (`rowLength` elements from the
    /// row's start), widened to fp32.
    package func load(_ p: UnsafeRawPointer, _ i: Int, rowLength: Int) -> Float {
        switch self {
        case .fp32: return p.load(fromByteOffset: 4 * i, as: Float.self)
        case .f16: return HalfFloat.fromF16(p.load(fromByteOffset: 2 * i, as: UInt16.self))
        case .bf16:
            let k = i % rowLength, run = k & ~15, j = k - run
            let stored = k >= rowLength & ~15 ? k : run + (j < 8 ? 2 * j : 2 * (j - 8) + 1)
            return HalfFloat.fromBF16(p.load(fromByteOffset: 2 * (i - k + stored), as: UInt16.self))
        }
    }
}

/// A KV cache's bf16 rows as `KVCacheType.store` lays them out: each run of 16 as 8 32-bit
/// words holding elements i (low half) and i + 8 (high half), so that widening to fp32 is a
/// shift and a mask (Swift widens `SIMD16<UInt16>` element by element). `load16` must start
/// at a run; the elements after the last full run are stored plainly (`load1`).
enum BF16PairedRow: RowFormat {
    static var elementBytes: Int { 2 }
    @inline(__always) static func load16(_ p: UnsafeRawPointer, _ i: Int) -> SIMD16<Float> {
        let w = p.loadUnaligned(fromByteOffset: i * 2, as: SIMD8<UInt32>.self)
        return SIMD16<Float>(lowHalf: unsafeBitCast(w &<< 16, to: SIMD8<Float>.self),
                             highHalf: unsafeBitCast(w & 0xFFFF_0000, to: SIMD8<Float>.self))
    }
    @inline(__always) static func load1(_ p: UnsafeRawPointer, _ i: Int) -> Float {
        HalfFloat.fromBF16(p.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
    }
}

/// Causal attention of one query token over its sequence's cached keys and values.
package enum Attention {
    /// A layer's K or V storage laid out as pages: `[blocks, blockSize, kvHeads, headDim]`
    /// elements of `type`.
    package struct PagedLayer {
        package let keys: UnsafeRawPointer
        package let values: UnsafeRawPointer
        package let blockSize: Int
        package let kvHeads: Int
        package let headDim: Int
        package let type: KVCacheType

        package init(keys: UnsafeRawPointer, values: UnsafeRawPointer, blockSize: Int, kvHeads: Int, headDim: Int, type: KVCacheType = .fp32) {
            self.keys = keys
            self.values = values
            self.blockSize = blockSize
            self.kvHeads = kvHeads
            self.headDim = headDim
            self.type = type
        }
    }

    /// Queries of one sequence attended together (a prefill chunk's consecutive tokens):
    /// query `t` is `queries + t * stride`, sees positions `firsts[t]...lasts[t]` and writes
    /// `out + t * stride`.
    package struct Tile {
        package let queries: UnsafePointer<Float>
        package let stride: Int
        package let count: Int
        package let firsts: UnsafePointer<Int>
        package let lasts: UnsafePointer<Int>
        package let out: UnsafeMutablePointer<Float>

        package init(queries: UnsafePointer<Float>, stride: Int, count: Int, firsts: UnsafePointer<Int>, lasts: UnsafePointer<Int>,
                     out: UnsafeMutablePointer<Float>) {
            self.queries = queries
            self.stride = stride
            self.count = count
            self.firsts = firsts
            self.lasts = lasts
            self.out = out
        }
    }

    /// Semantics, for each query of `tile` and each head h (kv head `h / (heads / kvHeads)`)
    /// of the kv groups in `groups` (default all), over cached positions `j in first...last`:
    /// `s_j = dot(q_h, k_j) * scale`, `w_j = exp(s_j - max s)` (`VectorMath.exp`),
    /// `out_h = (sum_j w_j v_j) / (sum_j w_j)`, every sum taken in increasing j (the value
    /// sum elementwise with fused multiply-adds). Each output gets the same operations in the
    /// same order whatever the tile holds (tiling changes only which query's work comes
    /// next), so the result depends only on the query and the cache contents, not on what
    /// else is in the batch, how queries are tiled or how groups are split. `scores` must
    /// hold `tile.count * (heads / kvHeads) * (max last + 1)` floats.
    ///
    /// The heads sharing a kv head, and the queries of the tile, are handled together while
    /// the cache is walked block by block, so each key and value row is loaded once per
    /// group and tile instead of once per query: a long prompt's prefill reads its cache
    /// `tile.count` times less often.
    package static func attend(
        _ tile: Tile, heads: Int, layer: PagedLayer, blockTable: UnsafePointer<Int32>, scale: Float,
        scores: UnsafeMutablePointer<Float>, groups: Range<Int>? = nil
    ) {
        switch layer.type {
        case .fp32: attend(tile, heads: heads, layer: layer, blockTable: blockTable, scale: scale, scores: scores, groups: groups, F32Row.self)
        case .bf16: attend(tile, heads: heads, layer: layer, blockTable: blockTable, scale: scale, scores: scores, groups: groups, BF16PairedRow.self)
        case .f16: attend(tile, heads: heads, layer: layer, blockTable: blockTable, scale: scale, scores: scores, groups: groups, F16Row.self)
        }
    }

    @inline(__always)
    private static func attend<F: RowFormat>(
        _ tile: Tile, heads: Int, layer: PagedLayer, blockTable: UnsafePointer<Int32>, scale: Float,
        scores: UnsafeMutablePointer<Float>, groups: Range<Int>?, _: F.Type
    ) {
        let hd = layer.headDim, bs = layer.blockSize
        let group = heads / layer.kvHeads
        let stride = layer.kvHeads * hd
        let n = tile.count
        var lo = Int.max, hi = 0
        for t in 0..<n {
            lo = min(lo, tile.firsts[t])
            hi = max(hi, tile.lasts[t])
        }
        let span = hi + 1
        let rows = n * group
        let vectorEnd = hd & ~15
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * rows) { stats in
            let maxScore = stats.baseAddress!, totals = maxScore + rows
            for g in groups ?? 0..<layer.kvHeads {
                let h0 = g * group
                for r in 0..<rows { maxScore[r] = -.infinity }
                // Scores, block by block; row `t * group + i` is query t's head h0 + i. Within a
                // block, each row takes its positions in increasing order.
                var j = lo
                while j <= hi {
                    let within = j % bs
                    let run = min(bs - within, hi - j + 1)
                    let base = layer.keys + ((Int(blockTable[j / bs]) * bs + within) * layer.kvHeads + g) * hd * F.elementBytes
                    for t in 0..<n {
                        let a = max(j, tile.firsts[t]), b = min(j + run - 1, tile.lasts[t])
                        guard a <= b else { continue }
                        let qt = tile.queries + t * tile.stride + h0 * hd
                        for i in 0..<group {
                            let row = t * group + i
                            let qh = qt + i * hd, sr = scores + row * span
                            var m = maxScore[row]
                            for jr in a...b {
                                let s = dot(qh, base + (jr - j) * stride * F.elementBytes, hd, F.self) * scale
                                sr[jr] = s
                                if s > m { m = s }
                            }
                            maxScore[row] = m
                        }
                    }
                    j += run
                }
                for t in 0..<n {
                    let first = tile.firsts[t], last = tile.lasts[t]
                    for i in 0..<group {
                        let row = t * group + i
                        let sr = scores + row * span
                        VectorMath.expShifted(sr + first, count: last - first + 1, shift: maxScore[row])
                        var total: Float = 0
                        for k in first...last { total += sr[k] }
                        totals[row] = total
                        (tile.out + t * tile.stride + (h0 + i) * hd).update(repeating: 0, count: hd)
                    }
                }
                // Weighted values, block by block, in increasing j for every query and head (each
                // output chunk stays in registers over a block's positions).
                j = lo
                while j <= hi {
                    let within = j % bs
                    let run = min(bs - within, hi - j + 1)
                    let base = layer.values + ((Int(blockTable[j / bs]) * bs + within) * layer.kvHeads + g) * hd * F.elementBytes
                    for t in 0..<n {
                        let a = max(j, tile.firsts[t]), b = min(j + run - 1, tile.lasts[t])
                        guard a <= b else { continue }
                        let ot = tile.out + t * tile.stride + h0 * hd
                        for i in 0..<group {
                            let wr = scores + (t * group + i) * span
                            let oh = ot + i * hd
                            // 64 outputs at a time: four independent chains of fused
                            // multiply-adds (one chain waits on each add's latency).
                            var d = 0
                            while d + 64 <= vectorEnd {
                                var o0 = load16(oh + d), o1 = load16(oh + d + 16), o2 = load16(oh + d + 32), o3 = load16(oh + d + 48)
                                for jr in a...b {
                                    let w = SIMD16<Float>(repeating: wr[jr]), v = (jr - j) * stride + d
                                    o0.addProduct(w, F.load16(base, v))
                                    o1.addProduct(w, F.load16(base, v + 16))
                                    o2.addProduct(w, F.load16(base, v + 32))
                                    o3.addProduct(w, F.load16(base, v + 48))
                                }
                                store16(o0, oh + d)
                                store16(o1, oh + d + 16)
                                store16(o2, oh + d + 32)
                                store16(o3, oh + d + 48)
                                d += 64
                            }
                            while d < vectorEnd {
                                var o = load16(oh + d)
                                for jr in a...b { o.addProduct(SIMD16<Float>(repeating: wr[jr]), F.load16(base, (jr - j) * stride + d)) }
                                store16(o, oh + d)
                                d += 16
                            }
                            while d < hd {
                                var o = oh[d]
                                for jr in a...b { o = o.addingProduct(wr[jr], F.load1(base, (jr - j) * stride + d)) }
                                oh[d] = o
                                d += 1
                            }
                        }
                    }
                    j += run
                }
                for t in 0..<n {
                    for i in 0..<group {
                        let inv = 1 / totals[t * group + i]
                        let oh = tile.out + t * tile.stride + (h0 + i) * hd
                        for d in 0..<hd { oh[d] *= inv }
                    }
                }
            }
        }
    }
}
