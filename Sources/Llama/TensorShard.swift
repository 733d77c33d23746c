import Kernels
import Tensors

/// One rank's part of a tensor-parallel model (Megatron-style splits).
///
/// - Column-parallel (split by output): q, k, v by whole heads (KV heads divided among the
///   ranks, each rank keeping the query heads that read its KV heads), gate and up by rows
///   of the intermediate size. Their biases follow the rows.
/// - Row-parallel (split by input): o and down take the columns matching the rank's heads /
///   intermediate rows; each rank's product is a partial sum, added across ranks by one
///   all-reduce per block. Their biases stay on rank 0 so they are counted once.
/// - The embedding is replicated (a lookup costs nothing to repeat, and adapters' extended
///   tables need no split); `lm_head` is split by vocabulary rows (the largest product of a
///   small model) and rank 0 gathers the rows of logits.
/// - The KV cache holds the rank's KV heads only.
package struct TensorShard: Sendable, Equatable, CustomStringConvertible {
    package let rank: Int
    package let size: Int

    package static let whole = TensorShard(rank: 0, size: 1)

    package init(rank: Int, size: Int) {
        precondition(size >= 1 && rank >= 0 && rank < size, "rank \(rank) of \(size)")
        self.rank = rank
        self.size = size
    }

    package var description: String { "rank \(rank) of \(size)" }

    /// This rank's share of `n` units split evenly (`n` divisible by `size`).
    package func part(of n: Int) -> Range<Int> {
        let w = n / size
        return (rank * w)..<((rank + 1) * w)
    }

    /// This rank's rows of a vocabulary of `v` (ceil(v / size) per rank, the last shorter).
    package func vocabularyPart(_ v: Int) -> Range<Int> {
        let w = (v + size - 1) / size
        let lower = min(v, rank * w)
        return lower..<min(v, lower + w)
    }

    /// The widest rank's vocabulary rows (the padded width ranks exchange).
    package static func vocabularyWidth(_ v: Int, size: Int) -> Int { (v + size - 1) / size }

    /// Query heads, KV heads and intermediate rows per rank.
    package func localSizes(_ c: LlamaConfiguration) -> (heads: Int, kvHeads: Int, intermediate: Int) {
        (c.numHeads / size, c.numKVHeads / size, c.intermediateSize / size)
    }

    /// The output rows of a column-parallel role, or the input columns of a row-parallel one.
    package func range(of role: LinearRole, _ c: LlamaConfiguration) -> Range<Int> {
        let hd = c.headDim
        func scaled(_ r: Range<Int>) -> Range<Int> { (r.lowerBound * hd)..<(r.upperBound * hd) }
        switch role {
        case .q, .o: return scaled(part(of: c.numHeads))
        case .k, .v: return scaled(part(of: c.numKVHeads))
        case .gate, .up, .down: return part(of: c.intermediateSize)
        }
    }

    /// Whether a role is split by input (its partial products are summed across ranks).
    package static func isRowParallel(_ role: LinearRole) -> Bool { role == .o || role == .down }

    /// Refuses a tensor-parallel size that does not divide the model; the error names the counts.
    package static func check(size: Int, _ c: LlamaConfiguration) throws {
        guard size >= 1 else {
            throw FacetError(.invalidArgument, "--tp_size must be at least 1, got \(size)", field: "tp_size")
        }
        guard size > 1 else { return }
        var problems: [String] = []
        if c.numHeads % size != 0 { problems.append("\(c.numHeads) query heads") }
        if c.numKVHeads % size != 0 { problems.append("\(c.numKVHeads) key/value heads") }
        if c.intermediateSize % size != 0 { problems.append("intermediate size \(c.intermediateSize)") }
        if c.vocabSize < size { problems.append("vocabulary of \(c.vocabSize)") }
        guard problems.isEmpty else {
            let listed = problems.count == 1 ? problems[0] : problems.dropLast().joined(separator: ", ") + " and " + problems.last!
            let divisors = (1...max(1, c.numKVHeads)).filter {
                c.numKVHeads % $0 == 0 && c.numHeads % $0 == 0 && c.intermediateSize % $0 == 0
            }
            throw FacetError(.invalidArgument,
                             "--tp_size \(size) does not divide the model's \(listed) (it has \(c.numHeads) query heads, \(c.numKVHeads) key/value heads and intermediate size \(c.intermediateSize); each rank needs whole heads and an equal share of the MLP)",
                             field: "tp_size", remedy: "use a --tp_size that divides them all: \(divisors.map(String.init).joined(separator: ", "))")
        }
    }
}

/// The other ranks of a tensor-parallel group, as the model sees them. Every rank calls
/// the collectives in the same order with the same sizes.
package protocol TensorParallelGroup: AnyObject, Sendable {
    var shard: TensorShard { get }

    /// `values[i] = sum over ranks of values[i]`, added in rank order, so the result is
    /// bitwise the same on every rank and for any batch around a token.
    func allReduceSum(_ values: UnsafeMutablePointer<Float>, count: Int) throws

    /// Rank 0 receives every rank's `count` values, rank after rank, in `into`
    /// (`[size * count]`); the other ranks pass nil.
    func gather(_ values: UnsafePointer<Float>, count: Int, into: UnsafeMutablePointer<Float>?) throws

    /// Called by the model at the start of every step. Rank 0 ships the step (tokens,
    /// positions, block tables, adapters) to the other ranks and returns the deltas for its
    /// own shard; the other ranks (which run the steps they receive) return `deltas`.
    func prepareForward(_ batch: ForwardBatch, kv: KVStorage, deltas: (any LinearDeltas)?) throws -> (any LinearDeltas)?

    /// Called when the model makes a cache: rank 0 has the other ranks make theirs.
    func didMakeKVStorage(_ kv: KVStorage)
}

extension LlamaWeights {
    /// This rank's weights (see `TensorShard`); the configuration must divide by the size
    /// (`TensorShard.check`).
    package func sharded(_ shard: TensorShard, config c: LlamaConfiguration) throws -> LlamaWeights {
        guard shard.size > 1 else { return self }
        try TensorShard.check(size: shard.size, c)
        func slice(_ v: [Float]?, _ r: Range<Int>) -> [Float]? { v.map { Array($0[r]) } }
        let layers = try self.layers.map { w -> LlamaLayerWeights in
            let q = shard.range(of: .q, c), kv = shard.range(of: .k, c), i = shard.range(of: .gate, c)
            let root = shard.rank == 0
            return LlamaLayerWeights(
                attnNorm: w.attnNorm,
                wq: try w.wq.rows(q), wk: try w.wk.rows(kv), wv: try w.wv.rows(kv), wo: try w.wo.columns(q),
                bq: slice(w.bq, q), bk: slice(w.bk, kv), bv: slice(w.bv, kv), bo: root ? w.bo : nil,
                ffnNorm: w.ffnNorm,
                wGate: try w.wGate.rows(i), wUp: try w.wUp.rows(i), wDown: try w.wDown.columns(i),
                bGate: slice(w.bGate, i), bUp: slice(w.bUp, i), bDown: root ? w.bDown : nil)
        }
        return LlamaWeights(embedding: embedding, layers: layers, finalNorm: finalNorm,
                            lmHead: try lmHead.rows(shard.vocabularyPart(c.vocabSize)))
    }
}
