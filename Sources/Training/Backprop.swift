import Foundation
import Kernels
import Llama
import Tensors

/// One training sequence: token ids and, per position, the label in Hugging Face's
/// convention (not shifted: the logits at t predict `labels[t + 1]`; -100 is ignored).
package struct TrainingExample: Sendable, Equatable, Codable {
    package var tokens: [Int32]
    package var labels: [Int32]
    package init(tokens: [Int32], labels: [Int32]) {
        self.tokens = tokens
        self.labels = labels
    }
    /// Positions whose next token is a target.
    package var targetCount: Int { labels.count < 2 ? 0 : labels[1...].reduce(0) { $0 + ($1 >= 0 ? 1 : 0) } }
}

/// The forward and backward pass of a Llama model with LoRA pairs on some linear layers,
/// the base frozen: transformers' eager math in fp32, one sequence at a time (no padding),
/// every activation of the sequence kept for the backward pass.
///
/// Per layer (shapes for T tokens; D hidden, Hq/Hkv heads of hd, I intermediate):
///   h = rms(x) ⊙ w_attn                    [T, D]
///   q, k, v = h Wᵀ (+ b) + s (h Aᵀ) Bᵀ      [T, Hq·hd], [T, Hkv·hd] ×2; RoPE on q, k
///   P = softmax(q kᵀ / √hd, causal)         [Hq, T, T];  a = P v   [T, Hq·hd]
///   x' = x + a Woᵀ (+ LoRA)                 [T, D]
///   h2 = rms(x') ⊙ w_ffn;  g, u = h2 W{gate,up}ᵀ (+ LoRA);  m = silu(g) ⊙ u   [T, I]
///   x'' = x' + m Wdownᵀ (+ LoRA)
/// then loss = Σ over targets of logsumexp(l) − l[target], l = rms(x_L) Eᵀ, at the target
/// positions only, divided by `normalizer` (the batch's target count).
package final class LoRABackprop: @unchecked Sendable {
    package let model: LlamaModel
    let c: LlamaConfiguration
    package let rope: RopeTable
    /// Recompute each layer's activations in the backward pass (keeping only the layer
    /// inputs) when keeping all of a micro-batch's would take more than this many bytes
    /// (`keptActivationBytes`), or always.
    package var keepBudget = 1 << 30
    package var recomputeAlways = false
    /// The arithmetic of the products with the frozen base weights (the LoRA factors' own
    /// products stay fp32): `.fp32` is the reference; `.bf16` (opt-in) rounds both operands.
    package var products: TrainingProducts = .fp32

    /// The bytes of every layer's kept activations for sequences of these lengths (the
    /// layer caches: per token 4 rows of the hidden size, q and the attention output, k
    /// and v, 3 of the intermediate size; per sequence and head n² probabilities; not the
    /// adapters' own `s u` [T, r] per adapted layer, a rank's worth of floats per token).
    package func keptActivationBytes(lengths: [Int]) -> Int {
        let perToken = 4 * c.hiddenSize + 2 * c.numHeads * c.headDim + 2 * c.numKVHeads * c.headDim + 3 * c.intermediateSize
        let floats = lengths.reduce(0) { $0 + $1 * perToken + c.numHeads * $1 * $1 }
        return c.numLayers * 4 * floats
    }

    /// Activation buffers kept from one call to the next (layer caches, logits and their
    /// gradient). Every value a step reads it has written first, so reuse changes no bit;
    /// fresh pages for the ~0.8 GB of activations of a batch of 512 tokens cost page faults
    /// and zeroing on the caller's thread while the other threads wait (about a tenth of a
    /// step on 2 cores). Calls to `run` do not overlap (one trainer drives an engine).
    private var spareCaches: [LayerCache] = []
    private var spareLogits: [Float] = [], spareDLogits: [Float] = []
    private var spareBuffers = StepBuffers()

    /// Asks glibc to keep freed memory for reuse instead of returning it to the kernel: a
    /// training step frees and reallocates megabytes of activations per layer, and each page
    /// handed back would fault and be zeroed again on the next step (about a million page
    /// faults in `facet bench --train` without this, a third of that with it). The peak
    /// resident memory stays the same; freed memory is reused, not returned, until exit.
    package static func retainFreedMemory() {
        Scratch.retainFreedMemory(mmapThreshold: 64 << 20, trimThreshold: 1 << 30)
    }

    package init(model: LlamaModel) throws {
        guard model.parallel == nil else {
            throw FacetError(.unsupported, "facet tune runs in one process", field: "tp_size", remedy: "train without mpirun")
        }
        self.model = model
        c = model.config
        rope = RopeTable(invFreq: c.ropeInverseFrequencies(), headDim: c.headDim)
    }

    /// The per-layer outputs and gradients that no later layer reads, rewritten layer after
    /// layer and kept from one call to the next (a step otherwise frees and reallocates
    /// hundreds of megabytes of them: page faults and zeroing on the caller's thread while
    /// the other threads wait).
    struct StepBuffers {
        var o: [Float] = [], m: [Float] = []
        var dact: [Float] = [], dgate: [Float] = [], dup: [Float] = [], dh2: [Float] = [], dh2u: [Float] = []
        var dattn: [Float] = [], dq: [Float] = [], dk: [Float] = [], dv: [Float] = []
        var dh: [Float] = [], dhk: [Float] = [], dhv: [Float] = []
    }

    struct LayerCache {
        var x: [Float] = [], h: [Float] = [], q: [Float] = [], k: [Float] = [], v: [Float] = []
        var probs: [Float] = [], attn: [Float] = [], xMid: [Float] = [], h2: [Float] = []
        var gate: [Float] = [], up: [Float] = [], act: [Float] = []
        var masks: [LinearRole: [Float]] = [:]
        /// Per adapted layer, `s u = s (x ⊙ mask) Aᵀ` [T, r] from the forward pass: the
        /// backward pass needs the same product (the same bits) for `dB`.
        var scaledLowRank: [LinearRole: [Float]] = [:]
    }

    /// Σ nll and the number of targets of `example`, without gradients (validation).
    package func evaluate(_ example: TrainingExample, lora: TrainableLoRA) throws -> (nll: Double, count: Int) {
        try evaluate([example], lora: lora)
    }

    /// The same for several sequences run as one flat batch.
    package func evaluate(_ examples: [TrainingExample], lora: TrainableLoRA) throws -> (nll: Double, count: Int) {
        var copy = lora
        var none: TrainingRandom? = nil
        return try run(examples, lora: &copy, normalizer: 1, dropout: &none, backward: false)
    }

    /// Forward and backward: adds d(Σ nll / normalizer)/d(A, B) to `lora`'s gradients and
    /// returns Σ nll and the number of targets. `dropout` draws the masks when the
    /// settings have dropout.
    package func accumulate(_ example: TrainingExample, lora: inout TrainableLoRA, normalizer: Float,
                            dropout: inout TrainingRandom?) throws -> (nll: Double, count: Int) {
        try run([example], lora: &lora, normalizer: normalizer, dropout: &dropout, backward: true)
    }

    /// The same for a micro-batch of sequences run as one flat batch of tokens (every op
    /// but attention is per token, so the products see all of them at once; attention
    /// stays within each sequence).
    package func accumulate(_ examples: [TrainingExample], lora: inout TrainableLoRA, normalizer: Float,
                            dropout: inout TrainingRandom?) throws -> (nll: Double, count: Int) {
        try run(examples, lora: &lora, normalizer: normalizer, dropout: &dropout, backward: true)
    }

    private func run(_ examples: [TrainingExample], lora: inout TrainableLoRA, normalizer: Float, dropout: inout TrainingRandom?,
                     backward: Bool) throws -> (nll: Double, count: Int) {
        var segments: [Range<Int>] = []
        var tokens: [Int32] = [], labels: [Int32] = [], positions: [Int32] = []
        for ex in examples {
            guard ex.tokens.count >= 2, ex.labels.count == ex.tokens.count else {
                throw FacetError(.invalidArgument, "a training sequence needs at least 2 tokens and one label per token", field: "example")
            }
            segments.append(tokens.count..<(tokens.count + ex.tokens.count))
            tokens += ex.tokens
            labels += ex.labels
            positions += (0..<ex.tokens.count).map { Int32($0) }
        }
        let T = tokens.count
        let ex = TrainingExample(tokens: tokens, labels: labels)
        let D = c.hiddenSize, hd = c.headDim, Hq = c.numHeads, Hkv = c.numKVHeads, I = c.intermediateSize
        let QD = Hq * hd, V = c.vocabSize
        let w = model.weights
        let p = lora.settings.dropout

        // --- forward ---
        var x = [Float](repeating: 0, count: T * D)
        for (t, id) in ex.tokens.enumerated() {
            guard id >= 0, Int(id) < V else {
                throw FacetError(.invalidArgument, "token id \(id) is outside the vocabulary of \(V)", field: "tokens")
            }
            x.withUnsafeMutableBufferPointer { w.embedding.row(Int(id), into: $0.baseAddress! + t * D) }
        }
        var buffers = spareBuffers
        spareBuffers = StepBuffers()
        defer { spareBuffers = buffers }
        // One layer's forward, writing into `cache` what its backward needs. With
        // recomputation the backward pass runs it again from the layer's input and the
        // dropout state it saw, so only the layer inputs stay in memory (the same
        // operations: the same bits).
        func layerForward(_ l: Int, _ x: inout [Float], _ rng: inout TrainingRandom?, _ cache: inout LayerCache) {
            let lw = w.layers[l]
            func mask(_ role: LinearRole, _ n: Int) -> [Float]? {
                guard backward, p > 0, lora.pairs[l][role] != nil, rng != nil else { return nil }
                let keep = Float(1 / (1 - p))
                return (0..<n).map { _ in rng!.unit() < Float(p) ? 0 : keep }
            }
            cache.masks = [:]
            cache.scaledLowRank = [:]
            for role in [LinearRole.q, .k, .v, .o, .gate, .up, .down] {
                if let m = mask(role, T * (role == .o ? QD : role == .down ? I : D)) { cache.masks[role] = m }
            }
            Self.copy(x, into: &cache.x)
            Self.rms(x, lw.attnNorm, T, D, c.rmsNormEps, into: &cache.h)
            cache.scaledLowRank[.q] = linear(lw.wq, lw.bq, cache.h, T, lora.pairs[l][.q], lora.scale, cache.masks[.q], into: &cache.q)
            cache.scaledLowRank[.k] = linear(lw.wk, lw.bk, cache.h, T, lora.pairs[l][.k], lora.scale, cache.masks[.k], into: &cache.k)
            cache.scaledLowRank[.v] = linear(lw.wv, lw.bv, cache.h, T, lora.pairs[l][.v], lora.scale, cache.masks[.v], into: &cache.v)
            positions.withUnsafeBufferPointer { pos in
                cache.q.withUnsafeMutableBufferPointer { rope.applyInParallel($0.baseAddress!, tokens: T, heads: Hq, positions: pos.baseAddress!) }
                cache.k.withUnsafeMutableBufferPointer { rope.applyInParallel($0.baseAddress!, tokens: T, heads: Hkv, positions: pos.baseAddress!) }
            }
            attention(q: cache.q, k: cache.k, v: cache.v, segments: segments, out: &cache.attn, probs: &cache.probs)
            cache.scaledLowRank[.o] = linear(lw.wo, lw.bo, cache.attn, T, lora.pairs[l][.o], lora.scale, cache.masks[.o], into: &buffers.o)
            Self.add(buffers.o, into: &x)
            Self.copy(x, into: &cache.xMid)
            Self.rms(x, lw.ffnNorm, T, D, c.rmsNormEps, into: &cache.h2)
            cache.scaledLowRank[.gate] = linear(lw.wGate, lw.bGate, cache.h2, T, lora.pairs[l][.gate], lora.scale, cache.masks[.gate], into: &cache.gate)
            cache.scaledLowRank[.up] = linear(lw.wUp, lw.bUp, cache.h2, T, lora.pairs[l][.up], lora.scale, cache.masks[.up], into: &cache.up)
            Self.copy(cache.gate, into: &cache.act)   // act = silu(gate) ⊙ up: [T, I]
            cache.up.withUnsafeBufferPointer { up in
                cache.act.withUnsafeMutableBufferPointer { Activation.siluMul(gate: $0.baseAddress!, up: up.baseAddress!, count: T * I) }
            }
            cache.scaledLowRank[.down] = linear(lw.wDown, lw.bDown, cache.act, T, lora.pairs[l][.down], lora.scale, cache.masks[.down], into: &buffers.m)
            Self.add(buffers.m, into: &x)
        }
        let recompute = backward && (recomputeAlways || keptActivationBytes(lengths: segments.map(\.count)) > keepBudget)
        // Every layer's cache is kept for a backward pass without recomputation; otherwise
        // one cache is rewritten layer after layer.
        let keepAll = backward && !recompute
        var pool = spareCaches
        spareCaches = []
        var caches: [LayerCache] = []
        var scratch = keepAll ? LayerCache() : (pool.popLast() ?? LayerCache())
        defer {
            spareCaches = pool + caches
            if !keepAll { spareCaches.append(scratch) }
        }
        var inputs: [(x: [Float], rng: TrainingRandom?)] = []
        for l in 0..<c.numLayers {
            if recompute { inputs.append((x, dropout)) }
            if keepAll {
                var cache = pool.popLast() ?? LayerCache()
                layerForward(l, &x, &dropout, &cache)
                caches.append(cache)
            } else {
                layerForward(l, &x, &dropout, &scratch)
            }
        }

        // --- loss at the target positions ---
        let rows = segments.flatMap { seg in seg.dropLast().filter { ex.labels[$0 + 1] >= 0 } }
        let R = rows.count
        guard R > 0 else { return (0, 0) }
        var last = [Float](repeating: 0, count: R * D)
        for (r, t) in rows.enumerated() { for d in 0..<D { last[r * D + d] = x[t * D + d] } }
        let hf = Self.rms(last, w.finalNorm, R, D, c.rmsNormEps)
        var logits = spareLogits
        spareLogits = []
        defer { spareLogits = logits }
        Self.reuse(&logits, R * V)
        hf.withUnsafeBufferPointer { hp in
            logits.withUnsafeMutableBufferPointer { lp in w.lmHead.matmulDecoded(x: hp.baseAddress!, t: R, y: lp.baseAddress!, products: products) }
        }
        // (Every element is written by the loss rows below.)
        var dlogits = spareDLogits
        spareDLogits = []
        defer { spareDLogits = dlogits }
        Self.reuse(&dlogits, backward ? R * V : 0)
        for t in rows where Int(ex.labels[t + 1]) >= V {
            throw FacetError(.invalidArgument, "label \(ex.labels[t + 1]) is outside the vocabulary of \(V)", field: "labels")
        }
        // Each row's log-sum-exp and softmax on its own task; the rows' losses are summed in
        // row order afterwards (the same bits whatever the thread count).
        var rowLoss = [Double](repeating: 0, count: R)
        logits.withUnsafeBufferPointer { lp in
            dlogits.withUnsafeMutableBufferPointer { dp in
                rowLoss.withUnsafeMutableBufferPointer { losses in
                    // (An empty array's buffer may still have an address: `backward` decides.)
                    let logit = lp.baseAddress!, dl = backward ? dp.baseAddress : nil, loss = losses.baseAddress!
                    Parallel.forEach(R) { r in
                        let target = Int(ex.labels[rows[r] + 1])
                        let row = logit + r * V
                        var top = -Float.infinity
                        for j in 0..<V where row[j] > top { top = row[j] }
                        // e_j = exp(l_j - top) in fp32 (the vector exp), summed in Double:
                        // lse = top + log Σ e_j, and the softmax is e_j / Σ e_j.
                        let e = dl.map { $0 + r * V } ?? Scratch.floats(.trainingLoss, V)
                        e.update(from: row, count: V)
                        VectorMath.expShifted(e, count: V, shift: top)
                        var sum = 0.0
                        for j in 0..<V { sum += Double(e[j]) }
                        let lse = Double(top) + log(sum)
                        loss[r] = lse - Double(row[target])
                        if dl != nil {
                            let factor = Float(1 / (sum * Double(normalizer)))
                            for j in 0..<V { e[j] *= factor }
                            e[target] -= 1 / normalizer
                        }
                    }
                }
            }
        }
        let nll = rowLoss.reduce(0, +)
        guard backward else { return (nll, R) }

        // --- backward ---
        var dhf = [Float](repeating: 0, count: R * D)
        dlogits.withUnsafeBufferPointer { dp in
            dhf.withUnsafeMutableBufferPointer { w.lmHead.addInputGradient(dy: dp.baseAddress!, t: R, dx: $0.baseAddress!, products: products) }
        }
        let dlast = Self.rmsBackward(last, w.finalNorm, dhf, R, D, c.rmsNormEps)
        var dx = [Float](repeating: 0, count: T * D)
        for (r, t) in rows.enumerated() { for d in 0..<D { dx[t * D + d] = dlast[r * D + d] } }

        let back = positions.map { -$0 }
        for l in stride(from: c.numLayers - 1, through: 0, by: -1) {
            let lw = w.layers[l]
            if recompute {
                var (input, rng) = inputs[l]
                layerForward(l, &input, &rng, &scratch)
                inputs[l] = ([], nil)
            }
            let cache = recompute ? scratch : caches[l]
            // MLP: x'' = x' + down(silu(g) ⊙ u)
            linearBackward(lw.wDown, cache.act, dx, T, &lora, l, .down, cache.masks[.down], scaledLowRank: cache.scaledLowRank[.down], into: &buffers.dact)
            Self.reuse(&buffers.dgate, T * I)   // (both written in full)
            Self.reuse(&buffers.dup, T * I)
            cache.gate.withUnsafeBufferPointer { gp in
                cache.up.withUnsafeBufferPointer { up in
                    buffers.dact.withUnsafeBufferPointer { dp in
                        buffers.dgate.withUnsafeMutableBufferPointer { dgp in
                            buffers.dup.withUnsafeMutableBufferPointer { dupp in
                                Activation.siluMulBackward(gate: gp.baseAddress!, up: up.baseAddress!, dOut: dp.baseAddress!,
                                                           dGate: dgp.baseAddress!, dUp: dupp.baseAddress!, count: T * I)
                            }
                        }
                    }
                }
            }
            linearBackward(lw.wGate, cache.h2, buffers.dgate, T, &lora, l, .gate, cache.masks[.gate], scaledLowRank: cache.scaledLowRank[.gate], into: &buffers.dh2)
            linearBackward(lw.wUp, cache.h2, buffers.dup, T, &lora, l, .up, cache.masks[.up], scaledLowRank: cache.scaledLowRank[.up], into: &buffers.dh2u)
            Self.add(buffers.dh2u, into: &buffers.dh2)
            Self.rmsBackward(cache.xMid, lw.ffnNorm, buffers.dh2, T, D, c.rmsNormEps, adding: &dx)   // dx += rms'(dh2)
            // Attention: x' = x + o(attn(q, k, v))
            linearBackward(lw.wo, cache.attn, dx, T, &lora, l, .o, cache.masks[.o], scaledLowRank: cache.scaledLowRank[.o], into: &buffers.dattn)
            attentionBackward(dout: buffers.dattn, q: cache.q, k: cache.k, v: cache.v, probs: cache.probs, segments: segments,
                              dq: &buffers.dq, dk: &buffers.dk, dv: &buffers.dv)
            // RoPE is a rotation: its transpose rotates back (negated positions).
            back.withUnsafeBufferPointer { pos in
                buffers.dq.withUnsafeMutableBufferPointer { rope.applyInParallel($0.baseAddress!, tokens: T, heads: Hq, positions: pos.baseAddress!) }
                buffers.dk.withUnsafeMutableBufferPointer { rope.applyInParallel($0.baseAddress!, tokens: T, heads: Hkv, positions: pos.baseAddress!) }
            }
            // Below layer 0 are the frozen embeddings: its q, k, v pairs take their gradients,
            // but no gradient flows into its input.
            let inputNeeded = l > 0
            linearBackward(lw.wq, cache.h, buffers.dq, T, &lora, l, .q, cache.masks[.q], scaledLowRank: cache.scaledLowRank[.q], into: &buffers.dh, input: inputNeeded)
            linearBackward(lw.wk, cache.h, buffers.dk, T, &lora, l, .k, cache.masks[.k], scaledLowRank: cache.scaledLowRank[.k], into: &buffers.dhk, input: inputNeeded)
            linearBackward(lw.wv, cache.h, buffers.dv, T, &lora, l, .v, cache.masks[.v], scaledLowRank: cache.scaledLowRank[.v], into: &buffers.dhv, input: inputNeeded)
            if inputNeeded {
                Self.add(buffers.dhk, buffers.dhv, into: &buffers.dh)   // dh += dhk + dhv
                Self.rmsBackward(cache.x, lw.attnNorm, buffers.dh, T, D, c.rmsNormEps, adding: &dx)     // dx += rms'(dh)
            }
        }
        return (nll, R)
    }

    // MARK: - Ops

    /// `silu(g) = g / (1 + exp(-g))` with `VectorMath.exp`, as `Activation.siluMul` computes it.
    package static func silu(_ g: Float) -> Float { g / (1 + VectorMath.exp(-g)) }

    /// `y = x / rms(x) ⊙ w` per row (transformers' LlamaRMSNorm).
    package static func rms(_ x: [Float], _ weight: [Float], _ T: Int, _ D: Int, _ eps: Float) -> [Float] {
        var y: [Float] = []
        rms(x, weight, T, D, eps, into: &y)
        return y
    }

    static func rms(_ x: [Float], _ weight: [Float], _ T: Int, _ D: Int, _ eps: Float, into y: inout [Float]) {
        reuse(&y, T * D)
        x.withUnsafeBufferPointer { xp in
            weight.withUnsafeBufferPointer { wp in
                y.withUnsafeMutableBufferPointer { yp in
                    Norm.rms(x: xp.baseAddress!, weight: wp.baseAddress!, y: yp.baseAddress!, rows: T, dim: D, eps: eps)
                }
            }
        }
    }

    /// `a` resized to `n` elements, keeping its storage when it has room (the values are
    /// zero when the count changes, else what they were: callers overwrite them).
    static func reuse(_ a: inout [Float], _ n: Int) {
        guard a.count != n else { return }
        if a.capacity >= n {
            a.removeAll(keepingCapacity: true)
            a.append(contentsOf: repeatElement(0, count: n))
        } else {
            a = [Float](repeating: 0, count: n)
        }
    }

    /// `a` ← a copy of `x`, in `a`'s storage (on the pool).
    static func copy(_ x: [Float], into a: inout [Float]) {
        reuse(&a, x.count)
        x.withUnsafeBufferPointer { src in
            a.withUnsafeMutableBufferPointer { dst in
                let s = src.baseAddress!, d = dst.baseAddress!
                DenseProduct.elementwise(src.count) { range in (d + range.lowerBound).update(from: s + range.lowerBound, count: range.count) }
            }
        }
    }

    /// With `n = x r`, `r = 1 / sqrt(mean(x²) + eps)`, `y = w ⊙ n`:
    /// `dx = r (w ⊙ dy − n · mean(w ⊙ dy ⊙ n))`.
    package static func rmsBackward(_ x: [Float], _ weight: [Float], _ dy: [Float], _ T: Int, _ D: Int, _ eps: Float) -> [Float] {
        var dx = [Float](repeating: 0, count: T * D)
        rmsBackward(x, weight, dy, T, D, eps, adding: &dx)
        return dx
    }

    /// `rmsBackward` added into `dx` (each element one rounding of `dx + value`: the same bits
    /// as adding the returned gradient afterwards).
    static func rmsBackward(_ x: [Float], _ weight: [Float], _ dy: [Float], _ T: Int, _ D: Int, _ eps: Float, adding dx: inout [Float]) {
        x.withUnsafeBufferPointer { xb in weight.withUnsafeBufferPointer { wb in dy.withUnsafeBufferPointer { db in
            dx.withUnsafeMutableBufferPointer { ob in
                let x = xb.baseAddress!, weight = wb.baseAddress!, dy = db.baseAddress!, dx = ob.baseAddress!
                // Each token on its own (whole tokens per task: the same bits for any split).
                let split = Parallel.Split(T, work: T * D * 3)
                Parallel.forEach(split.parts) { part in
                    for t in split.range(part) {
                        var ss: Float = 0
                        for d in 0..<D { ss += x[t * D + d] * x[t * D + d] }
                        let r = 1 / (ss / Float(D) + eps).squareRoot()
                        var dot: Float = 0
                        for d in 0..<D { dot += weight[d] * dy[t * D + d] * x[t * D + d] * r }
                        dot /= Float(D)
                        for d in 0..<D {
                            let n = x[t * D + d] * r
                            dx[t * D + d] += r * (weight[d] * dy[t * D + d] - n * dot)
                        }
                    }
                }
            }
        } } }
    }

    /// `a[i] += b[i]` on the pool (element-wise: the same bits for any split).
    static func add(_ b: [Float], into a: inout [Float]) {
        b.withUnsafeBufferPointer { bp in
            a.withUnsafeMutableBufferPointer { ap in
                let a = ap.baseAddress!, b = bp.baseAddress!
                DenseProduct.elementwise(ap.count) { range in for i in range { a[i] += b[i] } }
            }
        }
    }

    /// `a[i] += b[i] + c[i]` (that grouping) on the pool.
    static func add(_ b: [Float], _ c: [Float], into a: inout [Float]) {
        b.withUnsafeBufferPointer { bp in
            c.withUnsafeBufferPointer { cp in
                a.withUnsafeMutableBufferPointer { ap in
                    let a = ap.baseAddress!, b = bp.baseAddress!, c = cp.baseAddress!
                    DenseProduct.elementwise(ap.count) { range in for i in range { a[i] += b[i] + c[i] } }
                }
            }
        }
    }

    /// `y = x Wᵀ (+ b) + s ((x ⊙ mask) Aᵀ) Bᵀ`.
    package func linear(_ weight: LinearWeight, _ bias: [Float]?, _ x: [Float], _ T: Int, _ pair: TrainablePair?, _ scale: Float, _ mask: [Float]?) -> [Float] {
        var y: [Float] = []
        linear(weight, bias, x, T, pair, scale, mask, into: &y)
        return y
    }

    /// `linear` into `y`'s storage (every element written); returns the pair's `s u` [T, r].
    @discardableResult
    func linear(_ weight: LinearWeight, _ bias: [Float]?, _ x: [Float], _ T: Int, _ pair: TrainablePair?, _ scale: Float, _ mask: [Float]?,
                into y: inout [Float]) -> [Float]? {
        Self.reuse(&y, T * weight.rows)   // (matmulDecoded starts from zero)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in weight.matmulDecoded(x: xp.baseAddress!, t: T, y: yp.baseAddress!, bias: bias, products: products) }
        }
        guard let pair else { return nil }
        let xd = mask.map { m in zip(x, m).map { $0 * $1 } } ?? x
        let u = Self.scaledLowRank(xd, pair, scale, T)
        Self.addProduct(&y, u, T, pair.rank, Self.transpose(pair.b, pair.outDim, pair.rank), pair.outDim)  // y += (s u) Bᵀ
        return u
    }

    /// `s u = s (xd Aᵀ)`: [T, r] (the product, then each element times s).
    static func scaledLowRank(_ xd: [Float], _ pair: TrainablePair, _ scale: Float, _ T: Int) -> [Float] {
        var u = product(xd, transpose(pair.a, pair.rank, pair.inDim), T, pair.inDim, pair.rank)   // [T, r]
        for i in u.indices { u[i] *= scale }
        return u
    }

    /// The input gradient of `linear`, adding the pair's gradients (`dB += s dyᵀ u`,
    /// `du = s dy B`, `dA += duᵀ (x ⊙ mask)`, `dx += (du A) ⊙ mask`).
    package func linearBackward(_ weight: LinearWeight, _ x: [Float], _ dy: [Float], _ T: Int, _ lora: inout TrainableLoRA,
                        _ layer: Int, _ role: LinearRole, _ mask: [Float]?) -> [Float] {
        var dx: [Float] = []
        linearBackward(weight, x, dy, T, &lora, layer, role, mask, into: &dx)
        return dx
    }

    /// `linearBackward` into `dx`'s storage (every element written), or with `input: false`
    /// only the pair's gradients (`dx` untouched: nothing reads the input gradient).
    func linearBackward(_ weight: LinearWeight, _ x: [Float], _ dy: [Float], _ T: Int, _ lora: inout TrainableLoRA,
                        _ layer: Int, _ role: LinearRole, _ mask: [Float]?, scaledLowRank kept: [Float]? = nil,
                        into dx: inout [Float], input: Bool = true) {
        if input {
            Self.reuse(&dx, T * weight.cols)
            dy.withUnsafeBufferPointer { dp in
                dx.withUnsafeMutableBufferPointer {
                    weight.addInputGradient(dy: dp.baseAddress!, t: T, dx: $0.baseAddress!, products: products, clearing: true)
                }
            }
        }
        guard var pair = lora.pairs[layer][role] else { return }
        let s = lora.scale, r = pair.rank, n = pair.inDim, o = pair.outDim
        let xd = mask.map { m in zip(x, m).map { $0 * $1 } } ?? x
        let su = kept ?? Self.scaledLowRank(xd, pair, s, T)                           // s u = s xd Aᵀ: [T, r]
        let du = Self.product(dy, pair.b.map { $0 * s }, T, o, r)                       // dy (s B): [T, r]
        // dBᵀ += (s u)ᵀ dy, in the transposed layout [r, out] so only the small factors are
        // transposed (each element the same chain of fused adds over t as dB += dyᵀ (s u)).
        var gradBT = Self.transpose(pair.gradB, o, r)
        Self.addProduct(&gradBT, Self.transpose(su, T, r), r, T, dy, o)
        pair.gradB = Self.transpose(gradBT, r, o)
        Self.addProduct(&pair.gradA, Self.transpose(du, T, r), r, T, xd, n)           // += duᵀ xd: [r, in]
        if input {
            if let mask {
                let dxd = Self.product(du, pair.a, T, r, n)                           // du A: [T, in]
                for i in dxd.indices { dx[i] += dxd[i] * mask[i] }
            } else {
                Self.addProduct(&dx, du, T, r, pair.a, n)                             // dx += du A
            }
        }
        lora.pairs[layer][role] = pair
    }

    /// `[rows, cols]` → `[cols, rows]`.
    static func transpose(_ m: [Float], _ rows: Int, _ cols: Int) -> [Float] {
        var out = [Float](repeating: 0, count: m.count)
        m.withUnsafeBufferPointer { mp in out.withUnsafeMutableBufferPointer { DenseProduct.transpose(mp.baseAddress!, rows: rows, cols: cols, into: $0.baseAddress!) } }
        return out
    }

    /// `out += g w` for `g: [rows, inner]`, `w: [inner, width]` (see `DenseProduct.add`).
    static func addProduct(_ out: inout [Float], _ g: [Float], _ rows: Int, _ inner: Int, _ w: [Float], _ width: Int) {
        g.withUnsafeBufferPointer { gp in
            w.withUnsafeBufferPointer { wp in
                out.withUnsafeMutableBufferPointer { DenseProduct.add($0.baseAddress!, gp.baseAddress!, rows: rows, inner: inner, wp.baseAddress!, width: width) }
            }
        }
    }

    /// `g w` for `g: [rows, inner]`, `w: [inner, width]`.
    static func product(_ g: [Float], _ w: [Float], _ rows: Int, _ inner: Int, _ width: Int) -> [Float] {
        var out = [Float](repeating: 0, count: rows * width)
        addProduct(&out, g, rows, inner, w, width)
        return out
    }

    /// Causal attention with grouped KV heads: `a = softmax(q kᵀ / √hd) v`, keeping the
    /// probabilities `[Hq, T, T]` for the backward pass.
    package func attention(q: [Float], k: [Float], v: [Float], T: Int) -> (out: [Float], probs: [Float]) {
        attention(q: q, k: k, v: v, segments: [0..<T])
    }

    /// Where each sequence's probabilities start: `[Hq, n, n]` per sequence of n tokens.
    static func probOffsets(_ segments: [Range<Int>], heads: Int) -> (offsets: [Int], total: Int) {
        var offsets: [Int] = [], total = 0
        for s in segments {
            offsets.append(total)
            total += heads * s.count * s.count
        }
        return (offsets, total)
    }

    /// `attention` over several sequences laid end to end (`segments`: their token ranges):
    /// one task per sequence and query head on the C kernel (`fk_train_attend`).
    package func attention(q: [Float], k: [Float], v: [Float], segments: [Range<Int>]) -> (out: [Float], probs: [Float]) {
        var out: [Float] = [], probs: [Float] = []
        attention(q: q, k: k, v: v, segments: segments, out: &out, probs: &probs)
        return (out, probs)
    }

    /// `attention` into the storage of `out` and `probs` (every element written).
    func attention(q: [Float], k: [Float], v: [Float], segments: [Range<Int>], out: inout [Float], probs: inout [Float]) {
        let hd = c.headDim, Hq = c.numHeads, Hkv = c.numKVHeads, group = Hq / Hkv
        let QD = Hq * hd, KVD = Hkv * hd, scale = 1 / Float(hd).squareRoot()
        let T = segments.last?.upperBound ?? 0
        let (offsets, total) = Self.probOffsets(segments, heads: Hq)
        Self.reuse(&out, T * QD)
        Self.reuse(&probs, total)
        let window = c.slidingWindow ?? 0
        q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
            out.withUnsafeMutableBufferPointer { op in
                probs.withUnsafeMutableBufferPointer { pp in
                    let qb = qp.baseAddress!, kb = kp.baseAddress!, vb = vp.baseAddress!, o = op.baseAddress!, pr = pp.baseAddress!
                    Parallel.forEach(Hq * segments.count) { item in
                        let h = item % Hq, si = item / Hq, base = segments[si].lowerBound, g = h / group
                        let n = segments[si].count
                        // The kernel adds into its outputs and writes the causal part of each
                        // probability row: the task clears its head's rows first.
                        for t in base..<(base + n) { (o + t * QD + h * hd).update(repeating: 0, count: hd) }
                        (pr + offsets[si] + h * n * n).update(repeating: 0, count: n * n)
                        TrainingAttention.forward(q: qb + base * QD + h * hd, k: kb + base * KVD + g * hd, v: vb + base * KVD + g * hd,
                                                  qStride: QD, kvStride: KVD, tokens: n, headDim: hd, window: window, scale: scale,
                                                  out: o + base * QD + h * hd, probs: pr + offsets[si] + h * n * n)
                    }
                }
            }
        } } }
    }

    /// The naive twin of `attention` (plain Swift loops, the tests' reference).
    package func referenceAttention(q: [Float], k: [Float], v: [Float], segments: [Range<Int>]) -> (out: [Float], probs: [Float]) {
        let hd = c.headDim, Hq = c.numHeads, Hkv = c.numKVHeads, group = Hq / Hkv
        let QD = Hq * hd, KVD = Hkv * hd, scale = 1 / Float(hd).squareRoot()
        let T = segments.last?.upperBound ?? 0
        let (offsets, total) = Self.probOffsets(segments, heads: Hq)
        var out = [Float](repeating: 0, count: T * QD), probs = [Float](repeating: 0, count: total)
        let window = c.slidingWindow
        out.withUnsafeMutableBufferPointer { op in
            probs.withUnsafeMutableBufferPointer { pp in
                let o = op.baseAddress!, pr = pp.baseAddress!
                Parallel.forEach(Hq * segments.count) { item in
                    let h = item % Hq, seg = segments[item / Hq], n = seg.count, base = seg.lowerBound
                    let g = h / group
                    for local in 0..<n {
                        let t = base + local
                        let first = base + (window.map { max(0, local - $0 + 1) } ?? 0)
                        let row = pr + offsets[item / Hq] + (h * n + local) * n - base
                        var top = -Float.infinity
                        for s in first...t {
                            var dot: Float = 0
                            for d in 0..<hd { dot += q[t * QD + h * hd + d] * k[s * KVD + g * hd + d] }
                            row[s] = dot * scale
                            top = max(top, row[s])
                        }
                        var sum: Float = 0
                        for s in first...t {
                            row[s] = exp(row[s] - top)
                            sum += row[s]
                        }
                        for s in first...t { row[s] /= sum }
                        for s in first...t {
                            let ps = row[s]
                            for d in 0..<hd { o[t * QD + h * hd + d] += ps * v[s * KVD + g * hd + d] }
                        }
                    }
                }
            }
        }
        return (out, probs)
    }

    /// The gradients of `attention` for q, k and v (each KV group's query heads run on
    /// one task, so the shared dk and dv are summed in a fixed order).
    package func attentionBackward(dout: [Float], q: [Float], k: [Float], v: [Float], probs: [Float], T: Int) -> (dq: [Float], dk: [Float], dv: [Float]) {
        attentionBackward(dout: dout, q: q, k: k, v: v, probs: probs, segments: [0..<T])
    }

    package func attentionBackward(dout: [Float], q: [Float], k: [Float], v: [Float], probs: [Float], segments: [Range<Int>]) -> (dq: [Float], dk: [Float], dv: [Float]) {
        var dq: [Float] = [], dk: [Float] = [], dv: [Float] = []
        attentionBackward(dout: dout, q: q, k: k, v: v, probs: probs, segments: segments, dq: &dq, dk: &dk, dv: &dv)
        return (dq, dk, dv)
    }

    /// `attentionBackward` into the storage of `dq`, `dk` and `dv` (every element written:
    /// each task clears the rows and heads it adds into first).
    func attentionBackward(dout: [Float], q: [Float], k: [Float], v: [Float], probs: [Float], segments: [Range<Int>],
                           dq: inout [Float], dk: inout [Float], dv: inout [Float]) {
        let hd = c.headDim, Hq = c.numHeads, Hkv = c.numKVHeads, group = Hq / Hkv
        let QD = Hq * hd, KVD = Hkv * hd, scale = 1 / Float(hd).squareRoot()
        let window = c.slidingWindow ?? 0
        let T = segments.last?.upperBound ?? 0
        let offsets = Self.probOffsets(segments, heads: Hq).offsets
        Self.reuse(&dq, T * QD)
        Self.reuse(&dk, T * KVD)
        Self.reuse(&dv, T * KVD)
        dout.withUnsafeBufferPointer { dop in q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in
            v.withUnsafeBufferPointer { vp in probs.withUnsafeBufferPointer { pp in
                dq.withUnsafeMutableBufferPointer { dqp in dk.withUnsafeMutableBufferPointer { dkp in dv.withUnsafeMutableBufferPointer { dvp in
                    let go = dop.baseAddress!, qb = qp.baseAddress!, kb = kp.baseAddress!, vb = vp.baseAddress!, pr = pp.baseAddress!
                    let dQ = dqp.baseAddress!, dK = dkp.baseAddress!, dV = dvp.baseAddress!
                    Parallel.forEach(Hkv * segments.count) { item in
                        let g = item % Hkv, si = item / Hkv, n = segments[si].count, base = segments[si].lowerBound, h0 = g * group
                        for t in base..<(base + n) {
                            (dQ + t * QD + h0 * hd).update(repeating: 0, count: group * hd)
                            (dK + t * KVD + g * hd).update(repeating: 0, count: hd)
                            (dV + t * KVD + g * hd).update(repeating: 0, count: hd)
                        }
                        TrainingAttention.backward(dout: go + base * QD + h0 * hd, q: qb + base * QD + h0 * hd, k: kb + base * KVD + g * hd,
                                                   v: vb + base * KVD + g * hd, probs: pr + offsets[si] + h0 * n * n, qStride: QD, kvStride: KVD,
                                                   tokens: n, headDim: hd, group: group, window: window, scale: scale,
                                                   dq: dQ + base * QD + h0 * hd, dk: dK + base * KVD + g * hd, dv: dV + base * KVD + g * hd)
                    }
                } } }
            } }
        } } }
    }

    /// The naive twin of `attentionBackward`.
    package func referenceAttentionBackward(dout: [Float], q: [Float], k: [Float], v: [Float], probs: [Float], segments: [Range<Int>]) -> (dq: [Float], dk: [Float], dv: [Float]) {
        let hd = c.headDim, Hq = c.numHeads, Hkv = c.numKVHeads, group = Hq / Hkv
        let QD = Hq * hd, KVD = Hkv * hd, scale = 1 / Float(hd).squareRoot()
        let window = c.slidingWindow
        let T = segments.last?.upperBound ?? 0
        let offsets = Self.probOffsets(segments, heads: Hq).offsets
        var dq = [Float](repeating: 0, count: T * QD), dk = [Float](repeating: 0, count: T * KVD), dv = [Float](repeating: 0, count: T * KVD)
        dq.withUnsafeMutableBufferPointer { dqp in
            dk.withUnsafeMutableBufferPointer { dkp in
                dv.withUnsafeMutableBufferPointer { dvp in
                    let dQ = dqp.baseAddress!, dK = dkp.baseAddress!, dV = dvp.baseAddress!
                    Parallel.forEach(Hkv * segments.count) { item in
                        let g = item % Hkv, si = item / Hkv, seg = segments[si], n = seg.count, base = seg.lowerBound
                        var dp = [Float](repeating: 0, count: T)
                        for h in (g * group)..<((g + 1) * group) {
                            for local in 0..<n {
                                let t = base + local
                                let first = base + (window.map { max(0, local - $0 + 1) } ?? 0)
                                let row = offsets[si] + (h * n + local) * n - base
                                var sum: Float = 0
                                for s in first...t {
                                    var dot: Float = 0
                                    for d in 0..<hd { dot += dout[t * QD + h * hd + d] * v[s * KVD + g * hd + d] }
                                    dp[s] = dot
                                    sum += probs[row + s] * dot
                                    let ps = probs[row + s]
                                    for d in 0..<hd { dV[s * KVD + g * hd + d] += ps * dout[t * QD + h * hd + d] }
                                }
                                for s in first...t {
                                    let ds = probs[row + s] * (dp[s] - sum) * scale
                                    for d in 0..<hd {
                                        dQ[t * QD + h * hd + d] += ds * k[s * KVD + g * hd + d]
                                        dK[s * KVD + g * hd + d] += ds * q[t * QD + h * hd + d]
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return (dq, dk, dv)
    }
}
