import Foundation

/// Causal attention of one query token over its sequence's cached keys and values.
public enum Attention {
    /// A layer's K or V storage laid out as pages: `[blocks, blockSize, kvHeads, headDim]`.
    public struct PagedLayer {
        public let keys: UnsafePointer<Float>
        public let values: UnsafePointer<Float>
        public let blockSize: Int
        public let kvHeads: Int
        public let headDim: Int

        public init(keys: UnsafePointer<Float>, values: UnsafePointer<Float>, blockSize: Int, kvHeads: Int, headDim: Int) {
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

    /// Semantics: for each head h (kv head `h / (heads / kvHeads)`), over cached positions
    /// `j in first...last`:
    /// `s_j = dot(q_h, k_j) * scale`, `w_j = exp(s_j - max s)`,
    /// `out_h = (sum_j w_j v_j) / (sum_j w_j)`, every sum taken in increasing j.
    /// `scores` must hold `last + 1` floats. The result depends only on this query and the
    /// cache contents, not on what else is in the batch.
    public static func attend(
        query q: UnsafePointer<Float>, heads: Int, layer: PagedLayer, blockTable: UnsafePointer<Int32>,
        first: Int, last: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
        out: UnsafeMutablePointer<Float>
    ) {
        let hd = layer.headDim
        let group = heads / layer.kvHeads
        for h in 0..<heads {
            let kvh = h / group
            let qh = q + h * hd
            var maxScore = -Float.infinity
            for j in first...last {
                let s = dot(qh, layer.keys + layer.offset(position: j, blockTable: blockTable, head: kvh), hd) * scale
                scores[j] = s
                if s > maxScore { maxScore = s }
            }
            var total: Float = 0
            for j in first...last {
                let e = expf(scores[j] - maxScore)
                scores[j] = e
                total += e
            }
            let oh = out + h * hd
            for d in 0..<hd { oh[d] = 0 }
            for j in first...last {
                let wj = scores[j]
                let vj = layer.values + layer.offset(position: j, blockTable: blockTable, head: kvh)
                for d in 0..<hd { oh[d] = wj * vj[d] + oh[d] }
            }
            let inv = 1 / total
            for d in 0..<hd { oh[d] *= inv }
        }
    }
}
