import Foundation
import Tensors
internal import CKernels

/// How a KV cache stores keys and values: fp32 (exact), or rounded to 16 bits (half the
/// memory: twice the positions in the same budget). Attention widens 16-bit entries exactly
/// to fp32, so a 16-bit cache gives bitwise what an fp32 cache holding the rounded values
/// gives, and stays batch invariant.
package enum KVCacheType: String, Sendable, CaseIterable, Codable {
    case fp32, bf16, f16

    package var elementBytes: Int { self == .fp32 ? 4 : 2 }

    /// The C kernels' name for this layout.
    var rowFormat: Int32 { Int32(self == .fp32 ? FK_ROW_F32 : self == .f16 ? FK_ROW_F16 : FK_ROW_BF16_PAIRED) }

    /// Stores `rows` rows of `rowLength` floats from `source` at element `index` of
    /// `destination`, rounded to nearest even for the 16-bit types (f16 saturates to
    /// infinity beyond 65504). bf16 rows keep each full run of 16 as 8 pairs (element i
    /// beside element i + 8), so that attention widens them with 32-bit shifts and masks
    /// (`FK_ROW_BF16_PAIRED` in the C kernels); runs start at each row's start.
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
        let group = heads / layer.kvHeads
        let rows = tile.count * group
        let g = groups ?? 0..<layer.kvHeads
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * rows) { stats in
            withUnsafePointer(to: fk_attention_tile(queries: tile.queries, stride: tile.stride, count: tile.count, firsts: tile.firsts,
                                                    lasts: tile.lasts, out: tile.out)) { cTile in
                withUnsafePointer(to: fk_paged_layer(keys: layer.keys, values: layer.values, block_size: layer.blockSize, kv_heads: layer.kvHeads,
                                                     head_dim: layer.headDim, format: layer.type.rowFormat)) { cLayer in
                    fk_attend(cTile, Int32(heads), cLayer, blockTable, scale, scores, stats.baseAddress!, Int32(g.lowerBound), Int32(g.upperBound))
                }
            }
        }
    }
}
