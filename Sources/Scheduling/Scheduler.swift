import PagedKV

/// Limits the scheduler enforces on every step.
package struct SchedulerLimits: Sendable, Equatable {
    /// Sequences running at once.
    package var maxBatchSize: Int
    /// Tokens (prompt chunks + decode tokens) in one forward step.
    package var maxNumTokens: Int
    /// Distinct adapters in one step (the base model does not count).
    package var maxLoras: Int
    /// Longest sequence (prompt + output).
    package var maxModelLength: Int

    package init(maxBatchSize: Int = 64, maxNumTokens: Int = 512, maxLoras: Int = 16, maxModelLength: Int = 2048) {
        self.maxBatchSize = maxBatchSize
        self.maxNumTokens = maxNumTokens
        self.maxLoras = maxLoras
        self.maxModelLength = maxModelLength
    }
}

/// What one forward step computes: for each entry, tokens `start..<start+count` of the
/// request's known tokens (prompt, then outputs); when `samples` is true the step's last
/// token yields the request's next token.
package struct StepPlan: Sendable, Equatable {
    package struct Entry: Sendable, Equatable {
        package var request: Int
        package var start: Int
        package var count: Int
        package var samples: Bool
        package init(request: Int, start: Int, count: Int, samples: Bool) {
            self.request = request
            self.start = start
            self.count = count
            self.samples = samples
        }
    }
    /// Copy-on-write of a cached block: before the step, block `source`'s keys and values are
    /// copied into `destination`, a block of `request`'s own, whose last positions the step
    /// then recomputes (a fully cached prompt still computes its last token, and a shared
    /// block is never written).
    package struct Copy: Sendable, Equatable {
        package var request: Int
        package var source: Int32
        package var destination: Int32
        package init(request: Int, source: Int32, destination: Int32) {
            self.request = request
            self.source = source
            self.destination = destination
        }
    }
    package var entries: [Entry] = []
    package var copies: [Copy] = []
    /// Requests that lost their KV blocks this step and will be recomputed later.
    package var preempted: [Int] = []
    package var isEmpty: Bool { entries.isEmpty }
    package init() {}
}

/// Continuous batching over a paged KV cache.
///
/// The one rule (as in vLLM's v1 scheduler): there are no prefill and decode phases; each
/// request has `computed` tokens in the cache and `known` tokens (prompt + outputs so far),
/// and every step lets requests catch up, oldest first, within the token budget. A long
/// prompt therefore arrives in chunks, and decode tokens of running requests go first. When
/// the cache runs out, the newest running request is preempted: its blocks are freed and it
/// is recomputed from its prompt and outputs later (its results do not change: every step is
/// batch-invariant). The scheduler only does bookkeeping; it never touches the model.
///
/// Prefix caching: the full blocks of every step's sequences are registered with the
/// allocator (`commit`, after the step ran), and a request admitted later starts after the
/// longest run of cached blocks that holds its first tokens under its adapter; it shares
/// those blocks instead of computing them. Every step being batch-invariant, the shared keys
/// and values are bitwise the ones it would have computed, so outputs do not change.
package struct Scheduler: Sendable {
    package struct Request: Sendable {
        package let id: Int
        /// Adapter identity (nil = base); used to count distinct adapters per step.
        package let adapter: String?
        package var tokens: [Int32]
        package let promptCount: Int
        package var computed = 0
        package var table = BlockTable()
        package let arrival: Int
        package var preemptions = 0
        /// Whether admission may start the request after a cached prefix (false when every
        /// prompt position must be computed, e.g. for its log-probabilities).
        package let reusePrefix: Bool
        /// Leading blocks of `table` that are registered in (or were found in) the cache,
        /// and the chain the next one links to.
        var cachedBlocks = 0
        var chain: UInt64 = 0
        package var outputCount: Int { tokens.count - promptCount }
    }

    package let limits: SchedulerLimits
    package private(set) var allocator: BlockAllocator
    package private(set) var waiting: [Request] = []
    package private(set) var running: [Request] = []
    private var arrivals = 0
    /// The distinct adapters of the step being planned (storage reused).
    private var stepAdapters: [String] = []
    /// Whether requests share cached prefix blocks.
    package let prefixCaching: Bool
    /// Tokens of admitted requests looked up in the prefix cache, and those found there
    /// (cumulative; their ratio is the hit rate).
    package private(set) var prefixQueriedTokens = 0
    package private(set) var prefixHitTokens = 0
    /// Sources of this step's copies, held until the step has run (storage reused).
    private var copySources: [Int32] = []
    private var matched: [Int32] = []

    package init(limits: SchedulerLimits, blocks: Int, blockSize: Int, prefixCaching: Bool = true) {
        self.limits = limits
        self.allocator = BlockAllocator(capacity: blocks, blockSize: blockSize)
        self.prefixCaching = prefixCaching
        copySources.reserveCapacity(limits.maxBatchSize)
        matched.reserveCapacity(max(limits.maxModelLength / blockSize, 1))
    }

    package var hasWork: Bool { !waiting.isEmpty || !running.isEmpty }

    package enum AdmissionError: Error, Equatable {
        case tooLong(tokens: Int, limit: Int)
        case exceedsCache(tokens: Int, capacity: Int)
        case duplicateID
    }

    /// Queues a request whose prompt is `prompt` and that may grow to `maxTotal` tokens.
    /// `reusePrefix: false` computes every position even when a prefix is cached.
    package mutating func add(id: Int, prompt: [Int32], adapter: String?, maxTotal: Int, reusePrefix: Bool = true) throws(AdmissionError) {
        guard maxTotal <= limits.maxModelLength else { throw .tooLong(tokens: maxTotal, limit: limits.maxModelLength) }
        let capacity = allocator.capacity * allocator.blockSize
        guard maxTotal <= capacity else { throw .exceedsCache(tokens: maxTotal, capacity: capacity) }
        guard request(id) == nil else { throw .duplicateID }
        var r = Request(id: id, adapter: adapter, tokens: prompt, promptCount: prompt.count, arrival: arrivals, reusePrefix: reusePrefix)
        // Room for the whole sequence up front: growing it never allocates during steps.
        r.tokens.reserveCapacity(maxTotal)
        r.table.blocks.reserveCapacity(allocator.blocksNeeded(tokens: maxTotal))
        waiting.append(r)
        arrivals += 1
    }

    package func request(_ id: Int) -> Request? {
        running.first { $0.id == id } ?? waiting.first { $0.id == id }
    }

    /// Removes a request (finished, cancelled or disconnected) and frees its blocks at once.
    package mutating func remove(_ id: Int) {
        if let i = running.firstIndex(where: { $0.id == id }) {
            running[i].table.release(to: &allocator)
            running.remove(at: i)
        } else if let i = waiting.firstIndex(where: { $0.id == id }) {
            waiting[i].table.release(to: &allocator)
            waiting.remove(at: i)
        }
    }

    /// Records the token sampled for `id` at the end of a step.
    package mutating func append(_ token: Int32, to id: Int) {
        if let i = running.firstIndex(where: { $0.id == id }) { running[i].tokens.append(token) }
    }

    package mutating func schedule() -> StepPlan {
        var plan = StepPlan()
        schedule(into: &plan)
        return plan
    }

    /// `schedule()` into a plan whose storage is reused from step to step (no allocation
    /// in steady state).
    package mutating func schedule(into plan: inout StepPlan) {
        plan.entries.removeAll(keepingCapacity: true)
        plan.copies.removeAll(keepingCapacity: true)
        plan.preempted.removeAll(keepingCapacity: true)
        // Last step's copies have been made.
        allocator.release(copySources)
        copySources.removeAll(keepingCapacity: true)
        var budget = limits.maxNumTokens
        var adapters = stepAdapters
        stepAdapters = []
        adapters.removeAll(keepingCapacity: true)
        defer { stepAdapters = adapters }
        func adapterFits(_ a: String?) -> Bool { a == nil || adapters.contains(a!) || adapters.count < limits.maxLoras }

        // Running requests, oldest first.
        var i = 0
        while i < running.count && budget > 0 {
            // Fields, not a copy of the request: a copy would share its block table, and
            // growing the table would then copy it.
            let (id, computed, known, adapter) = (running[i].id, running[i].computed, running[i].tokens.count, running[i].adapter)
            let need = known - computed
            guard need > 0, adapterFits(adapter) else {
                i += 1
                continue
            }
            let n = min(need, budget)
            var reserved = running[i].table.reserve(tokens: computed + n, from: &allocator)
            while !reserved {
                // Preempt the newest running request (possibly this one).
                let victim = running.indices.max { running[$0].arrival < running[$1].arrival }!
                preempt(at: victim, into: &plan)
                if victim == i { break }
                if victim < i { i -= 1 }
                reserved = running[i].table.reserve(tokens: running[i].computed + n, from: &allocator)
            }
            guard reserved else { continue }  // request i was preempted itself; index i now holds the next one
            if let a = adapter, !adapters.contains(a) { adapters.append(a) }
            plan.entries.append(.init(request: id, start: computed, count: n, samples: computed + n == known))
            running[i].computed += n
            budget -= n
            i += 1
        }

        // Admit waiting requests (preempted ones first: they were put at the front).
        var w = 0
        while w < waiting.count && budget > 0 && running.count < limits.maxBatchSize {
            let (known, adapter) = (waiting[w].tokens.count, waiting[w].adapter)
            guard adapterFits(adapter) else {
                w += 1
                continue
            }
            // The cached prefix: whole blocks, and at least the last known token computed
            // (its logits are needed): a fully cached last block is copied, not shared.
            matched.removeAll(keepingCapacity: true)
            if prefixCaching && waiting[w].reusePrefix {
                allocator.match(waiting[w].tokens[...], adapter: adapter, maxBlocks: known / allocator.blockSize, into: &matched)
            }
            var shared = matched.count
            var computed = shared * allocator.blockSize
            var source: Int32?
            if computed == known && shared > 0 {
                source = matched[shared - 1]
                shared -= 1
                computed = known - 1
            }
            let n = min(known - computed, budget)
            let fresh = allocator.blocksNeeded(tokens: computed + n) - shared
            var taken = 0      // idle blocks that holding the matched ones takes
            for b in matched where allocator.isIdle(b) { taken += 1 }
            guard fresh <= allocator.freeCount - taken else { break }
            var admitted = waiting.remove(at: w)
            for b in matched.prefix(shared) {
                allocator.acquire(b)
                admitted.table.blocks.append(b)
            }
            if let source {
                allocator.acquire(source)
                copySources.append(source)
            }
            let ok = allocator.allocate(fresh, appendingTo: &admitted.table.blocks)
            precondition(ok, "blocks counted above")
            if let source {
                plan.copies.append(.init(request: admitted.id, source: source, destination: admitted.table.blocks[shared]))
            }
            if prefixCaching && admitted.reusePrefix {
                prefixQueriedTokens += known
                prefixHitTokens += computed
            }
            admitted.cachedBlocks = shared
            admitted.chain = shared > 0 ? allocator.chain(of: matched[shared - 1]) : 0
            if let a = adapter, !adapters.contains(a) { adapters.append(a) }
            plan.entries.append(.init(request: admitted.id, start: computed, count: n, samples: computed + n == known))
            admitted.computed = computed + n
            budget -= n
            running.append(admitted)
        }
    }

    /// Registers the full blocks that the last planned step computed (call after it ran):
    /// requests admitted from now on may start after them.
    package mutating func commit() {
        guard prefixCaching else { return }
        let size = allocator.blockSize
        for i in running.indices {
            let full = running[i].computed / size
            while running[i].cachedBlocks < full {
                let k = running[i].cachedBlocks
                let start = k * size
                running[i].chain = allocator.register(running[i].table.blocks[k], after: running[i].chain, adapter: running[i].adapter,
                                                      tokens: running[i].tokens[start..<(start + size)])
                running[i].cachedBlocks += 1
            }
        }
    }

    private mutating func preempt(at index: Int, into plan: inout StepPlan) {
        var victim = running.remove(at: index)
        victim.table.release(to: &allocator)
        victim.computed = 0
        victim.cachedBlocks = 0
        victim.chain = 0
        victim.preemptions += 1
        plan.preempted.append(victim.id)
        plan.entries.removeAll { $0.request == victim.id }
        plan.copies.removeAll { $0.request == victim.id }
        waiting.insert(victim, at: 0)
    }

    package func blockTable(_ id: Int) -> [Int32] { running.first { $0.id == id }?.table.blocks ?? [] }
}
