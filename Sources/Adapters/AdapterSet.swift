import Foundation
import Kernels
import Synchronization
import Llama
import Tensors

/// The adapters a forward step can use, by slot (`slot` = index; -1 = base model).
///
/// Semantics (for each linear role of each layer, per token t with `slot[t] = s >= 0`):
/// `y[t] += scale_s * ((x[t] A_s^T) B_s^T)`. Tokens are grouped by slot and each group runs
/// as two small matmuls (shrink to rank r, expand to the output); since every row of
/// `MatMul.nt` is computed alone, grouping never changes a token's result.
package final class AdapterSet: LinearDeltas, @unchecked Sendable {
    package let adapters: [LoRAAdapter]
    package let baseVocabulary: Int

    package init(adapters: [LoRAAdapter], baseVocabulary: Int) {
        self.adapters = adapters
        self.baseVocabulary = baseVocabulary
    }

    package var slotCount: Int { adapters.count }

    package func vocabularySize(slot: Int32) -> Int {
        slot >= 0 && Int(slot) < adapters.count ? adapters[Int(slot)].vocabularySize(base: baseVocabulary) : baseVocabulary
    }

    package func add(layer: Int, x: UnsafePointer<Float>, inDim: Int, outputs: UnsafeBufferPointer<DeltaOutput>, slots: UnsafePointer<Int32>, tokens: Int) {
        let plan = groups(slots: slots, tokens: tokens)
        withTasks(plan: plan, layer: layer, inDim: inDim, outputs: outputs, tokens: tokens) { tasks, work in
            let job = DeltaJob(set: self, layer: layer, tasks: tasks, plan: plan, x: x, inDim: inDim, outputs: outputs, store: false)
            Parallel.run(tasks.count, serial: work < 65_536, job)
        }
    }

    /// The deltas are computed into scratch rows by tasks that run in the products' region
    /// (their factor reads overlap the products' arithmetic, and the threads meet once per
    /// call instead of twice), then added to `y`: `y + d` with `d = delta * scale` rounded
    /// as `add` rounds it, so the bits are `add`'s.
    package func add(layer: Int, x: UnsafePointer<Float>, inDim: Int, outputs: UnsafeBufferPointer<DeltaOutput>, slots: UnsafePointer<Int32>, tokens: Int,
                     around products: (ParallelTasks) -> Void) {
        let plan = groups(slots: slots, tokens: tokens)
        let d = Scratch.floats(.loraDeltas, outputs.reduce(0) { $0 + tokens * $1.outDim })
        withUnsafeTemporaryAllocation(of: DeltaOutput.self, capacity: max(outputs.count, 1)) { stores in
            var offset = 0
            for (o, out) in outputs.enumerated() {
                stores.initializeElement(at: o, to: DeltaOutput(role: out.role, y: d + offset, outDim: out.outDim))
                offset += tokens * out.outDim
            }
            defer { _ = stores[0..<outputs.count].deinitialize() }
            let deltas = UnsafeBufferPointer(rebasing: stores[0..<outputs.count])
            withTasks(plan: plan, layer: layer, inDim: inDim, outputs: outputs, tokens: tokens) { tasks, _ in
                var job = DeltaJob(set: self, layer: layer, tasks: tasks, plan: plan, x: x, inDim: inDim, outputs: deltas, store: true)
                withUnsafeMutablePointer(to: &job) { products(ParallelTasks(count: tasks.count, entry: DeltaJob.entry, context: UnsafeMutableRawPointer($0))) }
            }
            // y[t] += d[t] for the rows that have a delta (in place, element by element).
            for (o, out) in outputs.enumerated() {
                let width = out.outDim
                for group in plan where pair(group.slot, layer, out.role) != nil {
                    for t in group.rows {
                        let y = out.y + Int(t) * width, delta = deltas[o].y + Int(t) * width
                        for c in 0..<width { y[c] = y[c] + delta[c] }
                    }
                }
            }
        }
    }

    /// One task per (output, adapter group, piece of the group's tokens) that has a pair,
    /// listed on the stack, and an estimate of their multiply-adds. A group's tokens are cut
    /// into pieces when they are many (one adapter's long prefill), so every core works on
    /// it; each token's delta is computed alone, so the cut changes no bit.
    private func withTasks(plan: [SlotGroup], layer: Int, inDim: Int, outputs: UnsafeBufferPointer<DeltaOutput>, tokens: Int,
                           _ body: (UnsafeBufferPointer<DeltaTask>, Int) -> Void) {
        let pieceRows = Parallel.threadCount == 1 ? max(tokens, 1) : max(16, (tokens + 2 * Parallel.threadCount - 1) / (2 * Parallel.threadCount))
        var pieces = 0
        for group in plan { pieces += (group.rows.count + pieceRows - 1) / pieceRows }
        withUnsafeTemporaryAllocation(of: DeltaTask.self, capacity: max(outputs.count * pieces, 1)) { list in
            var n = 0, work = 0
            for (o, out) in outputs.enumerated() {
                for (g, group) in plan.enumerated() {
                    guard let pair = pair(group.slot, layer, out.role) else { continue }
                    var first = 0
                    while first < group.rows.count {
                        let count = min(pieceRows, group.rows.count - first)
                        list[n] = DeltaTask(output: Int32(o), group: Int32(g), first: Int32(first), count: Int32(count))
                        n += 1
                        first += count
                    }
                    work += group.rows.count * pair.rank * (inDim + out.outDim)
                }
            }
            body(UnsafeBufferPointer(rebasing: list[0..<n]), work)
        }
    }

    struct DeltaTask {
        let output: Int32, group: Int32
        /// The piece of the group's tokens: `rows[first ..< first + count]`.
        let first: Int32, count: Int32
    }

    /// The deltas of one linear group: tasks write disjoint rows (or disjoint outputs), and
    /// each row's arithmetic is the same whichever thread runs it.
    struct DeltaJob: ParallelJob, @unchecked Sendable {
        let set: AdapterSet
        let layer: Int
        let tasks: UnsafeBufferPointer<DeltaTask>
        let plan: [SlotGroup]
        let x: UnsafePointer<Float>
        let inDim: Int
        let outputs: UnsafeBufferPointer<DeltaOutput>
        /// Whether each output receives the scaled delta itself (`y` is a scratch buffer)
        /// rather than having it added.
        let store: Bool

        static let entry: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void = { job, task in
            job!.assumingMemoryBound(to: DeltaJob.self).pointee.run(Int(task))
        }

        func run(_ i: Int) {
            let task = tasks[i], out = outputs[Int(task.output)], group = plan[Int(task.group)]
            guard let pair = set.pair(group.slot, layer, out.role) else { return }
            group.rows.withUnsafeBufferPointer { all in
                let rows = UnsafeBufferPointer(rebasing: all[Int(task.first) ..< Int(task.first + task.count)])
                AdapterSet.apply(pair, rows: rows, x: x, inDim: inDim, y: out.y, outDim: out.outDim, store: store)
            }
        }
    }

    func pair(_ slot: Int32, _ layer: Int, _ role: LinearRole) -> LoRAPair? {
        Int(slot) < adapters.count ? adapters[Int(slot)].pairs[layer][role] : nil
    }

    /// Tokens grouped by slot (slots ascending, tokens in order). A step calls `add` for
    /// every linear layer with the same slots, so the grouping is made once and reused.
    private func groups(slots: UnsafePointer<Int32>, tokens: Int) -> [SlotGroup] {
        planCache.withLock { cached -> [SlotGroup] in
            if let cached, cached.slots.count == tokens,
               cached.slots.withUnsafeBufferPointer({ memcmp($0.baseAddress!, slots, tokens * 4) == 0 }) {
                return cached.groups
            }
            let list = Array(UnsafeBufferPointer(start: slots, count: tokens))
            var rows = [[Int32]](repeating: [], count: adapters.count)
            for t in 0..<tokens where list[t] >= 0 && Int(list[t]) < adapters.count { rows[Int(list[t])].append(Int32(t)) }
            let made = rows.enumerated().compactMap { $1.isEmpty ? nil : SlotGroup(slot: Int32($0), rows: $1) }
            cached = (list, made)
            return made
        }
    }

    struct SlotGroup: Sendable {
        let slot: Int32
        let rows: [Int32]
    }
    private let planCache = Mutex<(slots: [Int32], groups: [SlotGroup])?>(nil)

    /// `y[t] += scale * ((x[t] A^T) B^T)` for the tokens `rows` (of one adapter's group).
    /// With `store`, `y[t] = scale * ((x[t] A^T) B^T)` (the same rounding as the delta added).
    static func apply(_ pair: LoRAPair, rows: UnsafeBufferPointer<Int32>, x: UnsafePointer<Float>, inDim: Int, y: UnsafeMutablePointer<Float>, outDim: Int,
                      store: Bool = false) {
        let n = rows.count, r = pair.rank
        let xs = Scratch.floats(.loraInput, n * inDim)
        let u = Scratch.floats(.loraRank, n * r)
        for (i, t) in rows.enumerated() { (xs + i * inDim).update(from: x + Int(t) * inDim, count: inDim) }
        LowRank.shrink(x: xs, a: pair.packedA, u: u, n: n)                                                     // [n, r]
        if store {
            LowRank.expandStore(u: u, bT: pair.packedBT, scale: pair.scale, d: y, rows: rows.baseAddress!, n: n)  // y[rows] = [n, out]
        } else {
            LowRank.expandAdd(u: u, bT: pair.packedBT, scale: pair.scale, y: y, rows: rows.baseAddress!, n: n)   // y[rows] += [n, out]
        }
    }

    package func embed(token: Int32, slot: Int32, base: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, dim: Int) -> Bool {
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

    package func hasOwnHead(slot: Int32) -> Bool {
        slot >= 0 && Int(slot) < adapters.count && adapters[Int(slot)].lmHead != nil
    }

    package func logits(hidden: UnsafePointer<Float>, dim: Int, slot: Int32) -> [Float]? {
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

