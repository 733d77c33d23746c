import PagedKV
import Scheduling
import Testing

/// The prefix cache's bookkeeping: which blocks a new request shares, copies, reference
/// counts, eviction, and that a key is compared in full (a hash collision is a miss).
@Suite struct PrefixCacheTests {
    // MARK: The allocator

    /// Registers `tokens` (whole blocks) as one sequence's blocks; returns the blocks.
    static func cache(_ a: inout BlockAllocator, _ tokens: [Int32], adapter: String? = nil) -> [Int32] {
        let n = tokens.count / a.blockSize
        let blocks = a.allocate(n)!
        var link: UInt64 = 0
        for i in 0..<n {
            link = a.register(blocks[i], after: link, adapter: adapter, tokens: tokens[(i * a.blockSize)..<((i + 1) * a.blockSize)])
        }
        return blocks
    }

    static func match(_ a: BlockAllocator, _ tokens: [Int32], adapter: String? = nil) -> [Int32] {
        var found: [Int32] = []
        a.match(tokens[...], adapter: adapter, maxBlocks: .max, into: &found)
        return found
    }

    @Test(arguments: [false, true])
    func aBlockMatchesOnlyItsWholeKey(collidingHashes: Bool) {
        var a = BlockAllocator(capacity: 16, blockSize: 4, collidingHashesForTesting: collidingHashes)
        // With every hash equal only the first block registered is findable; the property
        // that matters holds either way: what is found is a leading part of the right blocks.
        func expectMatch(_ tokens: [Int32], _ want: [Int32], adapter: String? = nil) {
            let got = Self.match(a, tokens, adapter: adapter)
            if collidingHashes {
                #expect(got == Array(want.prefix(got.count)) && got.count <= 1, "\(tokens): \(got) vs \(want)")
            } else {
                #expect(got == want, "\(tokens)")
            }
        }
        let blocks = Self.cache(&a, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
        expectMatch([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], blocks)
        expectMatch([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], Array(blocks.prefix(2)))    // only whole blocks
        expectMatch([1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12], [blocks[0]])            // differs in block 1
        expectMatch([0, 2, 3, 4, 5, 6, 7, 8], [])
        expectMatch([1, 2, 3, 4, 5, 6, 7, 8], [], adapter: "fr")                    // another adapter's K, V
        #expect(Self.match(a, [1, 2, 3, 4]) == [blocks[0]])
        // The same second block after another first block is another prefix.
        let other = Self.cache(&a, [9, 9, 9, 9, 5, 6, 7, 8], adapter: nil)
        expectMatch([9, 9, 9, 9, 5, 6, 7, 8], other)
        if collidingHashes { #expect(Self.match(a, [9, 9, 9, 9, 5, 6, 7, 8]) == []) }
        expectMatch([1, 2, 3, 4, 5, 6, 7, 8], Array(blocks.prefix(2)))
    }

    @Test func registeringTheSameContentTwiceKeepsTheFirstBlock() {
        var a = BlockAllocator(capacity: 8, blockSize: 2)
        let first = Self.cache(&a, [1, 2, 3, 4])
        let second = Self.cache(&a, [1, 2, 3, 4])
        #expect(a.cachedCount == 2)
        #expect(Self.match(a, [1, 2, 3, 4]) == first)
        // The duplicate is not cached: released, it is plain free; the original stays idle.
        a.release(second)
        a.release(first)
        #expect(a.freeCount == 8 && a.usedCount == 0 && a.idleCount == 2)
    }

    @Test func idleCachedBlocksAreEvictedOldestFirstAndOnlyWhenNothingIsFree() {
        var a = BlockAllocator(capacity: 4, blockSize: 2)
        let x = Self.cache(&a, [1, 1, 2, 2])           // blocks for prefix x
        let y = Self.cache(&a, [3, 3, 4, 4])
        a.release(x)                                    // x is older than y
        a.release(y)
        #expect(a.usedCount == 0 && a.idleCount == 4 && a.cachedCount == 4)
        // Holding a cached block takes it off the idle list.
        a.acquire(y[0])
        #expect(a.usedCount == 1 && a.freeCount == 3)
        a.release([y[0]])
        // Taking two evicts x's two blocks (released first; its tail before its head).
        let taken = a.allocate(2)!
        #expect(Set(taken) == Set(x))
        #expect(Self.match(a, [1, 1, 2, 2]) == [])
        #expect(Self.match(a, [3, 3, 4, 4]) == y)
        #expect(a.allocate(3) == nil && a.usedCount == 2)   // all or nothing
        a.release(taken)
        #expect(a.freeCount == 4)
    }

    @Test func aSharedBlockStaysHeldUntilItsLastHolderLeaves() {
        var a = BlockAllocator(capacity: 4, blockSize: 2)
        let x = Self.cache(&a, [1, 2])
        a.acquire(x[0])
        a.release(x)
        #expect(a.usedCount == 1 && a.idleCount == 0)
        a.release(x)
        #expect(a.usedCount == 0 && a.idleCount == 1)
    }

    // MARK: The scheduler

    static let limits = SchedulerLimits(maxBatchSize: 8, maxNumTokens: 64, maxLoras: 4, maxModelLength: 64)

    /// One step as the engine runs it: plan, (the model runs), commit, sample a token.
    static func step(_ s: inout Scheduler) -> StepPlan {
        let plan = s.schedule()
        s.commit()
        for e in plan.entries where e.samples { s.append(7, to: e.request) }
        let held = Set(s.running.flatMap(\.table.blocks) + s.waiting.flatMap(\.table.blocks))
        #expect(held.count == s.allocator.usedCount)
        return plan
    }

    static let system: [Int32] = Array(100..<112)    // three blocks of 4

    @Test func aLaterRequestStartsAfterTheCachedPrefix() throws {
        var s = Scheduler(limits: Self.limits, blocks: 32, blockSize: 4)
        try s.add(id: 1, prompt: Self.system + [1, 2], adapter: nil, maxTotal: 20)
        _ = Self.step(&s)
        try s.add(id: 2, prompt: Self.system + [3, 4, 5], adapter: nil, maxTotal: 20)
        try s.add(id: 3, prompt: Self.system + [3], adapter: "fr", maxTotal: 20)          // another adapter
        try s.add(id: 4, prompt: Array(Self.system.prefix(8)) + [9, 9], adapter: nil, maxTotal: 20)
        let plan = Self.step(&s)
        #expect(plan.entries.contains(.init(request: 2, start: 12, count: 3, samples: true)))
        #expect(plan.entries.contains(.init(request: 3, start: 0, count: 13, samples: true)))
        #expect(plan.entries.contains(.init(request: 4, start: 8, count: 2, samples: true)))
        #expect(plan.copies.isEmpty)
        let t1 = s.blockTable(1), t2 = s.blockTable(2), t4 = s.blockTable(4)
        #expect(Array(t2.prefix(3)) == Array(t1.prefix(3)) && t2[3] != t1[3])
        #expect(Array(t4.prefix(2)) == Array(t1.prefix(2)) && t4[2] != t1[2])
        #expect(Set(s.blockTable(3)).isDisjoint(with: t1))
        #expect(s.prefixQueriedTokens == 14 + 15 + 13 + 10 && s.prefixHitTokens == 12 + 8)
    }

    @Test func aFullyCachedPromptCopiesItsLastBlockAndComputesItsLastToken() throws {
        var s = Scheduler(limits: Self.limits, blocks: 32, blockSize: 4)
        try s.add(id: 1, prompt: Self.system, adapter: "de", maxTotal: 20)
        _ = Self.step(&s)
        try s.add(id: 2, prompt: Self.system, adapter: "de", maxTotal: 20)
        let plan = Self.step(&s)
        #expect(plan.entries == [.init(request: 1, start: 12, count: 1, samples: true), .init(request: 2, start: 11, count: 1, samples: true)])
        let t1 = s.blockTable(1), t2 = s.blockTable(2)
        #expect(Array(t2.prefix(2)) == Array(t1.prefix(2)) && t2[2] != t1[2])
        #expect(plan.copies == [.init(request: 2, source: t1[2], destination: t2[2])])
        // The copy's source stays held until the step has run, even if its owner leaves.
        s.remove(1)
        #expect(!s.allocator.isIdle(t1[2]))
        _ = Self.step(&s)
        #expect(s.allocator.isIdle(t1[2]))
    }

    @Test func promptsThatMustBeComputedAndADisabledCacheStartAtZero() throws {
        for enabled in [true, false] {
            var s = Scheduler(limits: Self.limits, blocks: 32, blockSize: 4, prefixCaching: enabled)
            try s.add(id: 1, prompt: Self.system + [1], adapter: nil, maxTotal: 20)
            _ = Self.step(&s)
            try s.add(id: 2, prompt: Self.system + [2], adapter: nil, maxTotal: 20, reusePrefix: false)
            try s.add(id: 3, prompt: Self.system + [3], adapter: nil, maxTotal: 20)
            let plan = Self.step(&s)
            #expect(plan.entries.contains(.init(request: 2, start: 0, count: 13, samples: true)))
            #expect(plan.entries.contains(.init(request: 3, start: enabled ? 12 : 0, count: enabled ? 1 : 13, samples: true)))
            #expect(s.allocator.cachedCount == (enabled ? 3 : 0))
        }
    }

    @Test func finishedRequestsLeaveTheirBlocksCachedUntilTheSpaceIsNeeded() throws {
        // 8 blocks of 4.
        var s = Scheduler(limits: Self.limits, blocks: 8, blockSize: 4)
        try s.add(id: 1, prompt: Self.system + [1], adapter: nil, maxTotal: 16)
        _ = Self.step(&s)
        s.remove(1)
        #expect(s.allocator.usedCount == 0 && s.allocator.cachedCount == 3)
        // Cached but idle blocks count as free: a request needing all 8 blocks is admitted,
        // and evicts them.
        try s.add(id: 2, prompt: Array(repeating: 5, count: 30), adapter: nil, maxTotal: 32)
        _ = Self.step(&s)
        #expect(s.allocator.usedCount == 8)
        s.remove(2)
        try s.add(id: 3, prompt: Self.system + [1], adapter: nil, maxTotal: 16)
        let plan = Self.step(&s)
        #expect(plan.entries == [.init(request: 3, start: 0, count: 13, samples: true)])
    }

    @Test func aPreemptedRequestResumesFromItsCachedBlocks() throws {
        // 6 blocks of 4; two requests of 8 prompt tokens growing to 16: one is preempted.
        var s = Scheduler(limits: Self.limits, blocks: 6, blockSize: 4)
        try s.add(id: 1, prompt: Array(1...8), adapter: nil, maxTotal: 16)
        try s.add(id: 2, prompt: Array(11...18), adapter: nil, maxTotal: 16)
        var resumedAt: Int?
        var preempted = false
        for _ in 0..<40 where s.hasWork {
            let plan = Self.step(&s)
            if plan.preempted.contains(2) { preempted = true }
            if preempted, resumedAt == nil, let e = plan.entries.first(where: { $0.request == 2 }) { resumedAt = e.start }
            for id in [1, 2] where (s.request(id)?.outputCount ?? 0) >= 8 { s.remove(id) }
        }
        #expect(preempted && !s.hasWork && s.allocator.usedCount == 0)
        // It had computed at least its prompt's two blocks; readmitted, it starts after them.
        #expect((resumedAt ?? 0) >= 8)
    }
}
