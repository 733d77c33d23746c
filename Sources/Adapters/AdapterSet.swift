import Kernels
import Llama
import Tensors

/// The adapters a forward step can use, by slot (`slot` = index; -1 = base model).
///
/// Semantics (for each linear role of each layer, per token t with `slot[t] = s >= 0`):
/// `y[t] += scale_s * ((x[t] A_s^T) B_s^T)`. Tokens are grouped by slot and each group runs
/// as two small matmuls (shrink to rank r, expand to the output); since every row of
/// `MatMul.nt` is computed alone, grouping never changes a token's result.
public final class AdapterSet: LinearDeltas, @unchecked Sendable {
    public let adapters: [LoRAAdapter]
    public let baseVocabulary: Int

    public init(adapters: [LoRAAdapter], baseVocabulary: Int) {
        self.adapters = adapters
        self.baseVocabulary = baseVocabulary
    }

    public var slotCount: Int { adapters.count }

    public func vocabularySize(slot: Int32) -> Int {
        slot >= 0 && Int(slot) < adapters.count ? adapters[Int(slot)].vocabularySize(base: baseVocabulary) : baseVocabulary
    }

    public func add(layer: Int, role: LinearRole, x: UnsafePointer<Float>, inDim: Int, y: UnsafeMutablePointer<Float>, outDim: Int,
                    slots: UnsafePointer<Int32>, tokens: Int) {
        // Group token indices by slot, in token order (slots ascending).
        var members: [Int32: [Int]] = [:]
        for t in 0..<tokens where slots[t] >= 0 { members[slots[t], default: []].append(t) }
        let groups: [(pair: LoRAPair, tokens: [Int])] = members.keys.sorted().compactMap { slot in
            guard Int(slot) < adapters.count, let pair = adapters[Int(slot)].pairs[layer][role] else { return nil }
            return (pair, members[slot]!)
        }
        guard !groups.isEmpty else { return }
        let work = groups.reduce(0) { $0 + $1.tokens.count * $1.pair.rank * (inDim + outDim) }
        nonisolated(unsafe) let xp = x, yp = y
        // Groups write disjoint rows of y, and each row's arithmetic is the same whichever
        // thread runs it: one task per adapter group (nested matmuls then run inline).
        if groups.count > 1 && work >= 65_536 {
            Parallel.forEach(groups.count) { g in
                Self.apply(groups[g].pair, tokens: groups[g].tokens, x: xp, inDim: inDim, y: yp, outDim: outDim)
            }
        } else {
            for g in groups { Self.apply(g.pair, tokens: g.tokens, x: x, inDim: inDim, y: y, outDim: outDim) }
        }
    }

    /// `y[t] += scale * ((x[t] A^T) B^T)` for the group's tokens.
    static func apply(_ pair: LoRAPair, tokens members: [Int], x: UnsafePointer<Float>, inDim: Int, y: UnsafeMutablePointer<Float>, outDim: Int) {
        let n = members.count, r = pair.rank
        let xs = Scratch.floats(.loraInput, n * inDim)
        let u = Scratch.floats(.loraRank, n * r)
        let d = Scratch.floats(.loraDelta, n * outDim)
        for (i, t) in members.enumerated() { (xs + i * inDim).update(from: x + t * inDim, count: inDim) }
        pair.a.data.withUnsafeBufferPointer { a in
            MatMul.nt(x: xs, w: a.baseAddress!, y: u, t: n, k: inDim, o: r)            // shrink: [n, r]
        }
        pair.b.data.withUnsafeBufferPointer { b in
            MatMul.nt(x: u, w: b.baseAddress!, y: d, t: n, k: r, o: outDim)            // expand: [n, out]
        }
        let scale = pair.scale
        for (i, t) in members.enumerated() {
            let row = y + t * outDim, delta = d + i * outDim
            for o in 0..<outDim { row[o] = row[o] + delta[o] * scale }
        }
    }

    public func embed(token: Int32, slot: Int32, base: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, dim: Int) -> Bool {
        guard Int(slot) < adapters.count else { return false }
        let adapter = adapters[Int(slot)]
        let id = Int(token)
        if let table = adapter.embedTokens {
            guard id >= 0, id < table.rows else { return false }
            table.data.withUnsafeBufferPointer { out.update(from: $0.baseAddress! + id * dim, count: dim) }
        } else if adapter.embeddingLoRA != nil {
            guard id >= 0, id < baseVocabulary else { return false }
            out.update(from: base, count: dim)
        } else {
            return false
        }
        if let e = adapter.embeddingLoRA, id < e.aT.rows {
            // out += scale * B A[:, id]  (A^T row id: [r]; B: [D, r])
            let r = e.aT.cols
            e.aT.data.withUnsafeBufferPointer { at in
                e.b.data.withUnsafeBufferPointer { b in
                    let a = at.baseAddress! + id * r
                    for d in 0..<dim {
                        out[d] = out[d] + dot(a, b.baseAddress! + d * r, r) * e.scale
                    }
                }
            }
        }
        return true
    }

    public func logits(hidden: UnsafePointer<Float>, dim: Int, slot: Int32) -> [Float]? {
        guard Int(slot) < adapters.count, let head = adapters[Int(slot)].lmHead else { return nil }
        var out = [Float](repeating: 0, count: head.rows)
        head.data.withUnsafeBufferPointer { w in
            out.withUnsafeMutableBufferPointer { o in
                MatMul.nt(x: hidden, w: w.baseAddress!, y: o.baseAddress!, t: 1, k: dim, o: head.rows)
            }
        }
        return out
    }
}
