import Foundation
import Kernels
import Tensors

/// Per-token additions to the linear layers and embeddings, e.g. LoRA adapters.
///
/// The model calls these hooks with the whole flat batch and the per-token adapter slots;
/// an implementation adds its deltas to the rows whose slot it owns and leaves slot -1 rows
/// alone. Implementations must compute each row from that row alone so that batching never
/// changes a result.
package protocol LinearDeltas: Sendable {
    /// For each output (role, y): `y[t] += delta_role(x[t])` for each token t with
    /// `slots[t] >= 0`. `x: [T, inDim]`, `y: [T, outDim]`. The outputs share the input (e.g.
    /// q, k and v), so an implementation can run them as one parallel region.
    func add(layer: Int, x: UnsafePointer<Float>, inDim: Int, outputs: UnsafeBufferPointer<DeltaOutput>, slots: UnsafePointer<Int32>, tokens: Int)

    /// `add` around the outputs' base products: calls `products(tasks)` once, which computes
    /// every `y` (`x W^T + b`) and runs `tasks` in the same parallel region (tasks that read
    /// `x` and write only the implementation's own memory), then adds the deltas to `y`.
    /// The results are `add`'s, bit for bit.
    func add(layer: Int, x: UnsafePointer<Float>, inDim: Int, outputs: UnsafeBufferPointer<DeltaOutput>, slots: UnsafePointer<Int32>, tokens: Int,
             around products: (ParallelTasks) -> Void)

    /// Overrides or adds to the embedding of token t (`out: [D]`) for an adapter slot;
    /// returns false when the base embedding should be used unchanged.
    func embed(token: Int32, slot: Int32, base: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, dim: Int) -> Bool

    /// The logits for a final hidden state `h: [D]` under an adapter slot, or nil to use
    /// the base `lm_head`.
    func logits(hidden: UnsafePointer<Float>, dim: Int, slot: Int32) -> [Float]?

    /// Token ids valid for sequences under `slot` (more than the base's when the adapter
    /// extends the vocabulary).
    func vocabularySize(slot: Int32) -> Int

    /// Whether sequences under `slot` take their logits from the adapter's own `lm_head`
    /// (`logits(hidden:dim:slot:)` returns values for them).
    func hasOwnHead(slot: Int32) -> Bool

    /// Number of slots; valid slots are `0..<slotCount`.
    var slotCount: Int { get }
}

extension LinearDeltas {
    package func add(layer: Int, x: UnsafePointer<Float>, inDim: Int, outputs: UnsafeBufferPointer<DeltaOutput>, slots: UnsafePointer<Int32>, tokens: Int,
                     around products: (ParallelTasks) -> Void) {
        products(.none)
        add(layer: layer, x: x, inDim: inDim, outputs: outputs, slots: slots, tokens: tokens)
    }
}

/// One linear output that receives adapter deltas: `y: [T, outDim]` of `role`.
package struct DeltaOutput: @unchecked Sendable {
    package let role: LinearRole
    package let y: UnsafeMutablePointer<Float>
    package let outDim: Int
    package init(role: LinearRole, y: UnsafeMutablePointer<Float>, outDim: Int) {
        self.role = role
        self.y = y
        self.outDim = outDim
    }
}

/// The linear layers adapters can target, named as in Hugging Face checkpoints.
package enum LinearRole: String, CaseIterable, Sendable, Codable {
    case q = "q_proj", k = "k_proj", v = "v_proj", o = "o_proj", gate = "gate_proj", up = "up_proj", down = "down_proj"
}

/// One named intermediate activation of a forward step (as llama.cpp's per-tensor
/// callback sees it): `rows` tokens of `cols` values, valid only during the call.
///
/// Names, in order: `embed` (layer nil); per layer `attn_norm`, `q`, `k`, `v` (after the
/// projections and LoRA deltas, before RoPE), `attn_out` (attention, before `o_proj`),
/// `attn_proj` (after it), `ffn_norm`, `gate`, `up` (before SiLU), `mlp_out` (after
/// `down_proj`), `residual` (the stream after the block); then `final_norm` (layer nil,
/// the logit rows only).
package struct ForwardTap {
    package let name: String
    package let layer: Int?
    package let rows: Int
    package let cols: Int
    package let values: UnsafeBufferPointer<Float>
}

/// Receives every `ForwardTap` of a step. Off (nil) by default, which costs one branch per
/// tap; used by tests now, by tensor parallelism and training next.
package typealias ForwardHook = (ForwardTap) -> Void

/// Whether a model keeps tiled copies of its Q4_0/Q4_1/Q8_0 weights (`LinearWeight.withTiles`)
/// for the products that read them faster: `auto` where its compute mode does (int8, and fp32
/// on CPUs with AVX-512), at the cost of those weights' size again in memory; `off` never
/// (products read the file's layout: the same results, slower).
package enum WeightTiles: String, Sendable, CaseIterable {
    case auto, off
}

/// A Llama-family decoder: embeddings, L blocks of (RMSNorm, GQA attention with RoPE,
/// RMSNorm, SwiGLU MLP) with residuals, final RMSNorm and `lm_head`.
/// Port of the math in transformers' `modeling_llama.py` (eager attention, fp32).
package final class LlamaModel: @unchecked Sendable {
    package let config: LlamaConfiguration
    package let weights: LlamaWeights
    /// How products with compact weights treat activations (`ComputeMode`).
    package let compute: ComputeMode
    /// How the KV caches this model makes store keys and values.
    package let kvCacheType: KVCacheType
    /// Whether the weights get tiled copies where `compute` reads them (`readsTiles`).
    package let weightTiles: WeightTiles
    /// The tensor-parallel group this model is one rank of; nil for the whole model in one
    /// process. `weights` then hold this rank's shard (`TensorShard`).
    package let parallel: (any TensorParallelGroup)?
    /// Query heads, KV heads and intermediate rows this process computes (all of them
    /// without tensor parallelism).
    package let localHeads: Int, localKVHeads: Int, localIntermediate: Int
    let rope: RopeTable

    /// `weights` are the whole model, or this rank's shard when `parallel` is given.
    package init(config: LlamaConfiguration, weights: LlamaWeights, compute: ComputeMode = .fp32, kvCacheType: KVCacheType = .fp32,
                 parallel: (any TensorParallelGroup)? = nil, weightTiles: WeightTiles = .auto) throws {
        try config.validate()
        let shard = parallel?.shard ?? .whole
        try TensorShard.check(size: shard.size, config)
        try weights.validate(against: config, shard: shard)
        self.config = config
        self.weights = Self.tiled(weights, compute, weightTiles)
        self.compute = compute
        self.weightTiles = weightTiles
        self.kvCacheType = kvCacheType
        self.parallel = parallel
        (localHeads, localKVHeads, localIntermediate) = shard.localSizes(config)
        self.rope = RopeTable(invFreq: config.ropeInverseFrequencies(), headDim: config.headDim)
    }

    /// Whether `compute`'s products read tiled copies of the compact weights (`withTiles`):
    /// the int8 mode's always, fp32's on CPUs with its tiled path (AVX-512: alone on one core,
    /// one token 1.5x the row layout's rate for Q4_1 and 2.5x for Q8_0 from memory, two or
    /// three tokens ~2.4x, batches 1.1-1.7x). The copies cost the
    /// compact weights' size again in memory; the bf16 mode reads the rows only.
    static func readsTiles(_ compute: ComputeMode) -> Bool { compute == .int8 || (compute == .fp32 && LinearWeight.fp32ReadsTiles) }

    /// `weights` with tiled copies where `compute` reads them and `policy` allows, and
    /// without any elsewhere (they would be memory nothing reads).
    private static func tiled(_ weights: LlamaWeights, _ compute: ComputeMode, _ policy: WeightTiles) -> LlamaWeights {
        policy == .auto && readsTiles(compute) ? weights.withTiles() : weights.withoutTiles()
    }

    /// The rank of a tensor-parallel group this model is (`.whole` for none).
    package var shard: TensorShard { parallel?.shard ?? .whole }

    /// The same weights (shared, not copied) under another compute mode or KV cache type
    /// (adding the compact weights' tiled copies where the mode reads them, `readsTiles`).
    package func with(compute: ComputeMode? = nil, kvCacheType: KVCacheType? = nil, weightTiles: WeightTiles? = nil) -> LlamaModel {
        LlamaModel(validated: self, compute: compute ?? self.compute, kvCacheType: kvCacheType ?? self.kvCacheType,
                   weightTiles: weightTiles ?? self.weightTiles)
    }

    private init(validated other: LlamaModel, compute: ComputeMode, kvCacheType: KVCacheType, weightTiles: WeightTiles) {
        config = other.config
        weights = Self.tiled(other.weights, compute, weightTiles)
        self.weightTiles = weightTiles
        rope = other.rope
        parallel = other.parallel
        (localHeads, localKVHeads, localIntermediate) = (other.localHeads, other.localKVHeads, other.localIntermediate)
        self.compute = compute
        self.kvCacheType = kvCacheType
    }

    /// Allocates cache storage for `blocks` blocks of `blockSize` positions (this rank's KV
    /// heads; the other ranks of a tensor-parallel group allocate theirs).
    package func makeKVStorage(blocks: Int, blockSize: Int) -> KVStorage {
        let kv = KVStorage(layers: config.numLayers, blocks: blocks, blockSize: blockSize, kvHeads: localKVHeads, headDim: config.headDim,
                           type: kvCacheType)
        parallel?.didMakeKVStorage(kv)
        return kv
    }

    /// Runs one step over `batch`, writing its keys and values into `kv` and returning the
    /// next-token logits of `batch.logitRows` (each `[vocab]`, the adapter's vocabulary when
    /// it brings its own `lm_head`). Allocates the result; steps in a loop use
    /// `forward(_:kv:deltas:into:)`.
    package func forward(_ batch: ForwardBatch, kv: KVStorage, deltas: (any LinearDeltas)? = nil) throws -> [[Float]] {
        let logits = Logits()
        try forward(batch, kv: kv, deltas: deltas, into: logits)
        return (0..<logits.rows).map { logits.array($0) }
    }

    /// `forward` writing the logits into `logits`, storage the caller reuses from step to
    /// step (it grows to the largest step seen, then the step allocates no buffers).
    package func forward(_ batch: ForwardBatch, kv: KVStorage, deltas: (any LinearDeltas)?, into logits: Logits,
                        hook: ForwardHook? = nil) throws {
        let T = batch.count
        logits.reset(rows: 0, width: 0)
        guard T > 0 else { return }
        try check(batch, kv: kv)
        var deltas = deltas
        if let parallel { deltas = try parallel.prepareForward(batch, kv: kv, deltas: deltas) }
        for (source, destination) in batch.blockCopies { kv.copyBlock(source, to: destination) }
        let c = config
        // This rank's heads and intermediate rows (all of them in one process).
        let D = c.hiddenSize, hd = c.headDim, Hq = localHeads, Hkv = localKVHeads
        let QD = Hq * hd, KVD = Hkv * hd, I = localIntermediate

        // Activations, row-major per token, carved from this thread's scratch (each written
        // before it is read; no allocation once the sizes have been seen).
        var arena = Arena(Scratch.floats(.activations, T * (4 * D + 2 * QD + 2 * KVD + 2 * I)))
        let x = arena.take(T * D)         // residual stream [T, D]
        let h = arena.take(T * D)         // normed input    [T, D]
        let q = arena.take(T * QD)        // queries         [T, Hq*hd]
        let k = arena.take(T * KVD)       // keys            [T, Hkv*hd]
        let v = arena.take(T * KVD)       // values          [T, Hkv*hd]
        let attn = arena.take(T * QD)     // attention out   [T, Hq*hd]
        let proj = arena.take(T * D)      // o/down output   [T, D]
        let gate = arena.take(T * I)      // gate branch     [T, I]
        let up = arena.take(T * I)        // up branch       [T, I]

        let slots = batch.adapterSlots
        try slots.withUnsafeBufferPointer { slotPtr in
            try batch.positions.withUnsafeBufferPointer { posPtr in
                // Embedding: x[t] = E[token_t] (or the adapter's embedding).
                let baseRow = Buffer(Scratch.floats(.embeddingRow, D))
                for t in 0..<T {
                    let id = Int(batch.tokens[t])
                    let row = x.p + t * D
                    if id >= 0 && id < c.vocabSize { weights.embedding.row(id, into: baseRow.p) }
                    if let deltas, slotPtr[t] >= 0,
                       deltas.embed(token: batch.tokens[t], slot: slotPtr[t], base: baseRow.p, out: row, dim: D) {
                        continue
                    }
                    guard id >= 0, id < c.vocabSize else {
                        throw FacetError(.invalidArgument, "token id \(id) is outside the vocabulary of \(c.vocabSize)", field: "tokens",
                                         remedy: "use ids from this model's tokenizer")
                    }
                    row.update(from: baseRow.p, count: D)
                }
                func tap(_ name: String, _ layer: Int?, _ p: UnsafeMutablePointer<Float>, _ cols: Int) {
                    hook?(ForwardTap(name: name, layer: layer, rows: T, cols: cols, values: UnsafeBufferPointer(start: p, count: T * cols)))
                }
                if hook != nil { tap("embed", nil, x.p, D) }

                for (l, w) in weights.layers.enumerated() {
                    // --- attention block ---
                    rms(x.p, w.attnNorm, h.p, T, D)
                    linears(h.p, T, Out(w.wq, w.bq, q.p, .q), Out(w.wk, w.bk, k.p, .k), Out(w.wv, w.bv, v.p, .v), deltas: deltas, layer: l, slots: slotPtr.baseAddress!)
                    if hook != nil { tap("attn_norm", l, h.p, D); tap("q", l, q.p, QD); tap("k", l, k.p, KVD); tap("v", l, v.p, KVD) }
                    rope.apply(q.p, tokens: T, heads: Hq, positions: posPtr.baseAddress!)
                    rope.apply(k.p, tokens: T, heads: Hkv, positions: posPtr.baseAddress!)
                    writeCache(batch, kv: kv, layer: l, k: k.p, v: v.p)
                    attend(batch, kv: kv, layer: l, q: q.p, out: attn.p)
                    linears(attn.p, T, Out(w.wo, w.bo, proj.p, .o), deltas: deltas, layer: l, slots: slotPtr.baseAddress!)
                    try parallel?.allReduceSum(proj.p, count: T * D)     // partial sums of the ranks' heads
                    if hook != nil { tap("attn_out", l, attn.p, QD); tap("attn_proj", l, proj.p, D) }
                    add(x.p, proj.p, T * D)

                    // --- MLP block: down(silu(gate(h)) * up(h)) ---
                    rms(x.p, w.ffnNorm, h.p, T, D)
                    linears(h.p, T, Out(w.wGate, w.bGate, gate.p, .gate), Out(w.wUp, w.bUp, up.p, .up), deltas: deltas, layer: l, slots: slotPtr.baseAddress!)
                    if hook != nil { tap("ffn_norm", l, h.p, D); tap("gate", l, gate.p, I); tap("up", l, up.p, I) }
                    Activation.siluMul(gate: gate.p, up: up.p, count: T * I)
                    linears(gate.p, T, Out(w.wDown, w.bDown, proj.p, .down), deltas: deltas, layer: l, slots: slotPtr.baseAddress!)
                    try parallel?.allReduceSum(proj.p, count: T * D)     // partial sums of the ranks' rows
                    add(x.p, proj.p, T * D)
                    if hook != nil { tap("mlp_out", l, proj.p, D); tap("residual", l, x.p, D) }
                }
            }
        }

        // Final norm and lm_head for the requested rows only.
        let R = batch.logitRows.count
        let finalHidden = Buffer(Scratch.floats(.finalHidden, max(R, 1) * D))
        for (r, t) in batch.logitRows.enumerated() {
            (finalHidden.p + r * D).update(from: x.p + t * D, count: D)
        }
        rms(finalHidden.p, weights.finalNorm, finalHidden.p, R, D)
        hook?(ForwardTap(name: "final_norm", layer: nil, rows: R, cols: D, values: UnsafeBufferPointer(start: finalHidden.p, count: R * D)))
        let V = c.vocabSize
        if let parallel, parallel.shard.size > 1 {
            try shardedLogits(parallel, finalHidden: finalHidden.p, batch: batch, deltas: deltas, into: logits)
            return
        }
        // Adapter heads first (rare: they allocate their rows), so the width is known.
        var custom: [(row: Int, values: [Float])] = []
        if let deltas {
            for (r, t) in batch.logitRows.enumerated() where slots[t] >= 0 {
                if let values = deltas.logits(hidden: finalHidden.p + r * D, dim: D, slot: slots[t]) { custom.append((r, values)) }
            }
        }
        logits.reset(rows: R, width: custom.reduce(V) { max($0, $1.values.count) })
        guard !custom.isEmpty else {
            // Every row uses the base lm_head: it writes the rows in place.
            if R > 0 { weights.lmHead.matmul(x: finalHidden.p, t: R, y: logits.allRows(width: V), compute: compute) }
            return
        }
        for (r, values) in custom { values.withUnsafeBufferPointer { logits.set(row: r, $0) } }
        // Rows with the base lm_head, packed for one product.
        let packed = Buffer(Scratch.floats(.logitInput, max(R, 1) * D))
        let rowOf = Scratch.raw(.logitRowIndex, max(R, 1) * MemoryLayout<Int>.stride).assumingMemoryBound(to: Int.self)
        var baseCount = 0, next = 0
        for r in 0..<R {
            if next < custom.count && custom[next].row == r {
                next += 1
                continue
            }
            (packed.p + baseCount * D).update(from: finalHidden.p + r * D, count: D)
            rowOf[baseCount] = r
            baseCount += 1
        }
        if baseCount > 0 {
            let out = Buffer(Scratch.floats(.logitOutput, baseCount * V))
            weights.lmHead.matmul(x: packed.p, t: baseCount, y: out.p, compute: compute)
            for i in 0..<baseCount { logits.set(row: rowOf[i], UnsafeBufferPointer(start: out.p + i * V, count: V)) }
        }
    }

    /// The logits under tensor parallelism: each rank multiplies the base rows by its
    /// vocabulary rows of `lm_head`, rank 0 gathers them (and computes rows of adapters with
    /// their own `lm_head`, which are replicated); other ranks leave `logits` empty.
    private func shardedLogits(_ group: any TensorParallelGroup, finalHidden: UnsafeMutablePointer<Float>, batch: ForwardBatch,
                               deltas: (any LinearDeltas)?, into logits: Logits) throws {
        let D = config.hiddenSize, V = config.vocabSize, R = batch.logitRows.count
        let shard = group.shard, W = TensorShard.vocabularyWidth(V, size: shard.size), mine = shard.vocabularyPart(V)
        let root = shard.rank == 0
        // Rows whose adapter brings its own head (every rank knows which from the slots).
        var own = [Bool](repeating: false, count: R)
        if let deltas {
            for (r, t) in batch.logitRows.enumerated() where batch.adapterSlots[t] >= 0 { own[r] = deltas.hasOwnHead(slot: batch.adapterSlots[t]) }
        }
        let baseRows = (0..<R).filter { !own[$0] }
        let B = baseRows.count
        var custom: [(row: Int, values: [Float])] = []
        if root, let deltas {
            for r in 0..<R where own[r] {
                if let values = deltas.logits(hidden: finalHidden + r * D, dim: D, slot: batch.adapterSlots[batch.logitRows[r]]) {
                    custom.append((r, values))
                }
            }
        }
        // [B, W]: this rank's logits of the base rows, padded to the widest rank.
        let local = Buffer(Scratch.floats(.logitOutput, max(B, 1) * W))
        if B > 0 {
            let packed = Buffer(Scratch.floats(.logitInput, B * D))
            for (i, r) in baseRows.enumerated() { (packed.p + i * D).update(from: finalHidden + r * D, count: D) }
            let mineOut = Buffer(Scratch.floats(.logitShard, B * max(mine.count, 1)))
            if !mine.isEmpty { weights.lmHead.matmul(x: packed.p, t: B, y: mineOut.p, compute: compute) }
            for i in 0..<B {
                (local.p + i * W).update(from: mineOut.p + i * mine.count, count: mine.count)
                (local.p + i * W + mine.count).update(repeating: 0, count: W - mine.count)
            }
        }
        let gathered = root ? Scratch.floats(.logitGather, max(shard.size * B * W, 1)) : nil
        if B > 0 { try group.gather(local.p, count: B * W, into: gathered) }
        guard root else {
            logits.reset(rows: 0, width: 0)
            return
        }
        logits.reset(rows: R, width: custom.reduce(V) { max($0, $1.values.count) })
        for (r, values) in custom { values.withUnsafeBufferPointer { logits.set(row: r, $0) } }
        for (i, r) in baseRows.enumerated() {
            let row = logits.row(r, width: V)
            for k in 0..<shard.size {
                let part = TensorShard(rank: k, size: shard.size).vocabularyPart(V)
                (row + part.lowerBound).update(from: gathered! + (k * B + i) * W, count: part.count)
            }
        }
    }

    // MARK: - Steps

    private func check(_ batch: ForwardBatch, kv: KVStorage) throws {
        let T = batch.count
        guard batch.positions.count == T, batch.sequences.count == T, batch.adapterSlots.count == T else {
            throw FacetError(.invalidArgument, "tokens, positions, sequences and adapterSlots must have equal lengths", field: "batch")
        }
        for t in 0..<T {
            let s = Int(batch.sequences[t]), p = Int(batch.positions[t])
            guard s >= 0, s < batch.blockTables.count else {
                throw FacetError(.invalidArgument, "token \(t) names sequence \(s) with no block table", field: "batch.sequences")
            }
            guard p >= 0, p / kv.blockSize < batch.blockTables[s].count else {
                throw FacetError(.capacity, "position \(p) of sequence \(s) has no cache block", field: "batch.positions",
                                 remedy: "reserve KV blocks for every position before the step")
            }
        }
        for table in batch.blockTables {
            for b in table where b < 0 || Int(b) >= kv.blocks {
                throw FacetError(.invalidArgument, "block \(b) is outside the cache of \(kv.blocks) blocks", field: "batch.blockTables")
            }
        }
        for (source, destination) in batch.blockCopies
        where source < 0 || Int(source) >= kv.blocks || destination < 0 || Int(destination) >= kv.blocks || source == destination {
            throw FacetError(.invalidArgument, "block copy \(source) -> \(destination) is not between two blocks of the cache of \(kv.blocks)",
                             field: "batch.blockCopies", remedy: "copy between two different blocks of this cache (the scheduler's plan)")
        }
        for r in batch.logitRows where r < 0 || r >= T {
            throw FacetError(.invalidArgument, "logit row \(r) is not a token of the batch", field: "batch.logitRows")
        }
    }

    private func rms(_ x: UnsafePointer<Float>, _ weight: [Float], _ y: UnsafeMutablePointer<Float>, _ rows: Int, _ dim: Int) {
        weight.withUnsafeBufferPointer { w in
            Norm.rms(x: x, weight: w.baseAddress!, y: y, rows: rows, dim: dim, eps: config.rmsNormEps)
        }
    }

    /// One linear of a group sharing an input: `y = x W^T + bias`, adapters' deltas for `role`.
    private struct Out {
        let w: LinearWeight, bias: [Float]?, y: UnsafeMutablePointer<Float>, role: LinearRole
        init(_ w: LinearWeight, _ bias: [Float]?, _ y: UnsafeMutablePointer<Float>, _ role: LinearRole) {
            self.w = w
            self.bias = bias
            self.y = y
            self.role = role
        }
    }

    /// `y = x W^T + b` for up to three linears sharing the input `x` (one parallel region),
    /// then the adapters' deltas for each role. The lists live on the stack: a step does
    /// not allocate here.
    private func linears(
        _ x: UnsafePointer<Float>, _ T: Int, _ a: Out, _ b: Out? = nil, _ c: Out? = nil,
        deltas: (any LinearDeltas)?, layer: Int, slots: UnsafePointer<Int32>
    ) {
        let n = c != nil ? 3 : b != nil ? 2 : 1
        func out(_ i: Int) -> Out { i == 0 ? a : i == 1 ? b! : c! }
        withUnsafeTemporaryAllocation(of: LinearWeight.Product.self, capacity: 3) { products in
            for i in 0..<n { products.initializeElement(at: i, to: LinearWeight.Product(out(i).w, y: out(i).y, bias: out(i).bias)) }
            defer { _ = products[0..<n].deinitialize() }
            let done = UnsafeBufferPointer(rebasing: products[0..<n])
            guard let deltas else {
                LinearWeight.matmul(sharing: x, t: T, compute: compute, done)
                return
            }
            withUnsafeTemporaryAllocation(of: DeltaOutput.self, capacity: 3) { outputs in
                for i in 0..<n { outputs.initializeElement(at: i, to: DeltaOutput(role: out(i).role, y: out(i).y, outDim: out(i).w.rows)) }
                // The deltas run beside the products, in their parallel region.
                deltas.add(layer: layer, x: x, inDim: a.w.cols, outputs: UnsafeBufferPointer(rebasing: outputs[0..<n]), slots: slots, tokens: T) { tasks in
                    LinearWeight.matmul(sharing: x, t: T, compute: compute, done, beside: tasks)
                }
            }
        }
    }

    private func add(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) {
        for i in 0..<n { x[i] += y[i] }
    }

    private func writeCache(_ batch: ForwardBatch, kv: KVStorage, layer: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>) {
        let width = kv.kvHeads * kv.headDim
        for t in 0..<batch.count {
            let table = batch.blockTables[Int(batch.sequences[t])]
            table.withUnsafeBufferPointer { tp in
                kv.store(layer: layer, slot: kv.slot(Int(batch.positions[t]), tp.baseAddress!), keys: k + t * width, values: v + t * width)
            }
        }
    }

    private func attend(_ batch: ForwardBatch, kv: KVStorage, layer: Int, q: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>) {
        let paged = kv.pagedLayer(layer)
        let QD = localHeads * config.headDim
        let heads = localHeads
        let scale = 1 / Float(config.headDim).squareRoot()
        let window = config.slidingWindow
        let maxPos = Int(batch.positions.max() ?? 0)
        let kvHeads = localKVHeads
        let work = batch.count * (maxPos + 1) * QD * 2
        // Tiles: runs of at most `AttentionJob.tile` consecutive tokens of one sequence (a
        // prefill chunk), attended together so each cached row is read once per tile.
        let tiles = Scratch.raw(.attentionTiles, (batch.count + 1) * MemoryLayout<Int32>.stride).assumingMemoryBound(to: Int32.self)
        var tileCount = 0
        for t in 0..<batch.count {
            if t == 0 || batch.sequences[t] != batch.sequences[t - 1] || t - Int(tiles[tileCount - 1]) == AttentionJob.tile {
                tiles[tileCount] = Int32(t)
                tileCount += 1
            }
        }
        tiles[tileCount] = Int32(batch.count)
        // One task per (tile, kv group): a decode step of one sequence still uses every core.
        let job = AttentionJob(batch: batch, layer: paged, q: q, out: out, QD: QD, heads: heads, kvHeads: kvHeads, scale: scale,
                               window: window, maxPos: maxPos, tiles: tiles, split: Parallel.Split(tileCount * kvHeads, work: work))
        Parallel.run(job.split.parts, job)
    }
}

/// The attention of a step, split by (tile of tokens, kv group) (see `LlamaModel.attend`).
private struct AttentionJob: ParallelJob, @unchecked Sendable {
    /// Queries per tile. Results do not depend on it (`Attention.attend(_:...)`).
    static let tile = 16
    let batch: ForwardBatch
    let layer: Attention.PagedLayer
    let q: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>
    let QD: Int, heads: Int, kvHeads: Int
    let scale: Float
    let window: Int?
    let maxPos: Int
    /// Start token of each tile, and one past the last tile's end.
    let tiles: UnsafePointer<Int32>
    let split: Parallel.Split

    static let entry: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void = { job, task in
        job!.assumingMemoryBound(to: AttentionJob.self).pointee.run(Int(task))
    }

    func run(_ task: Int) {
        // Room for whole multiples of 1024 positions, so growing contexts rarely regrow it.
        let scores = Scratch.floats(.attentionScores, (maxPos / 1024 + 1) * 1024 * (heads / kvHeads) * Self.tile)
        withUnsafeTemporaryAllocation(of: Int.self, capacity: 2 * Self.tile) { bounds in
            let firsts = bounds.baseAddress!, lasts = firsts + Self.tile
            for item in split.range(task) {
                let k = item / kvHeads, g = item % kvHeads
                let t0 = Int(tiles[k]), n = Int(tiles[k + 1]) - t0
                for t in 0..<n {
                    let p = Int(batch.positions[t0 + t])
                    lasts[t] = p
                    firsts[t] = window.map { max(0, p - $0 + 1) } ?? 0
                }
                let tile = Attention.Tile(queries: q + t0 * QD, stride: QD, count: n, firsts: firsts, lasts: lasts, out: out + t0 * QD)
                batch.blockTables[Int(batch.sequences[t0])].withUnsafeBufferPointer { tp in
                    Attention.attend(tile, heads: heads, layer: layer, blockTable: tp.baseAddress!, scale: scale, scores: scores, groups: g..<(g + 1))
                }
            }
        }
    }
}

/// A view of scratch memory holding one activation tensor.
struct Buffer {
    let p: UnsafeMutablePointer<Float>
    init(_ p: UnsafeMutablePointer<Float>) { self.p = p }
}

/// Hands out consecutive pieces of one scratch block.
struct Arena {
    private var next: UnsafeMutablePointer<Float>
    init(_ base: UnsafeMutablePointer<Float>) { next = base }
    mutating func take(_ n: Int) -> Buffer {
        defer { next += n }
        return Buffer(next)
    }
}
