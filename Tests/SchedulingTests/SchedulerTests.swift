import PagedKV
import Scheduling
import Testing

@Suite struct SchedulerTests {
    /// Simulates the engine: after each step, requests that sampled get a token.
    func step(_ s: inout Scheduler) -> StepPlan {
        let plan = s.schedule()
        for e in plan.entries where e.samples { s.append(7, to: e.request) }
        checkBlocks(s)
        return plan
    }

    func checkBlocks(_ s: Scheduler) {
        // Requests may share cached prefix blocks: count each block once.
        let held = Set(s.running.flatMap(\.table.blocks) + s.waiting.flatMap(\.table.blocks))
        #expect(held.count == s.allocator.usedCount)
        for r in s.running { #expect(r.table.blocks.count * s.allocator.blockSize >= r.computed) }
    }

    @Test func longPromptsArriveInChunksAndDecodeGoesFirst() throws {
        var s = Scheduler(limits: .init(maxBatchSize: 8, maxNumTokens: 10, maxLoras: 4, maxModelLength: 100), blocks: 20, blockSize: 4)
        try s.add(id: 1, prompt: Array(repeating: 1, count: 4), adapter: nil, maxTotal: 20)
        try s.add(id: 2, prompt: Array(repeating: 1, count: 25), adapter: nil, maxTotal: 40)
        var plan = step(&s)
        #expect(plan.entries == [.init(request: 1, start: 0, count: 4, samples: true), .init(request: 2, start: 0, count: 6, samples: false)])
        plan = step(&s)
        #expect(plan.entries == [.init(request: 1, start: 4, count: 1, samples: true), .init(request: 2, start: 6, count: 9, samples: false)])
        plan = step(&s)
        #expect(plan.entries == [.init(request: 1, start: 5, count: 1, samples: true), .init(request: 2, start: 15, count: 9, samples: false)])
        plan = step(&s)
        #expect(plan.entries.last == .init(request: 2, start: 24, count: 1, samples: true))
    }

    @Test func batchSizeAndAdapterCapsHold() throws {
        var s = Scheduler(limits: .init(maxBatchSize: 3, maxNumTokens: 100, maxLoras: 2, maxModelLength: 100), blocks: 50, blockSize: 4)
        for (id, adapter) in [(1, "a"), (2, "b"), (3, "c"), (4, nil), (5, "a"), (6, nil)] as [(Int, String?)] {
            try s.add(id: id, prompt: [1, 2, 3], adapter: adapter, maxTotal: 10)
        }
        let plan = step(&s)
        // a and b fill the adapter cap; c waits; base requests do not count; batch size 3.
        #expect(plan.entries.map(\.request) == [1, 2, 4])
        #expect(Set(plan.entries.compactMap { e in s.running.first { $0.id == e.request }?.adapter }).count <= 2)
        s.remove(1)
        s.remove(2)
        checkBlocks(s)
        let next = step(&s)
        #expect(next.entries.map(\.request) == [4, 3, 5])
    }

    @Test func outOfBlocksPreemptsTheNewestAndRecomputesIt() throws {
        // 6 blocks of 4 = 24 positions; two requests of prompt 8 growing to 16 each.
        var s = Scheduler(limits: .init(maxBatchSize: 4, maxNumTokens: 64, maxLoras: 4, maxModelLength: 64), blocks: 6, blockSize: 4)
        try s.add(id: 1, prompt: Array(repeating: 1, count: 8), adapter: nil, maxTotal: 16)
        try s.add(id: 2, prompt: Array(repeating: 1, count: 8), adapter: nil, maxTotal: 16)
        var preempted: [Int] = []
        var steps = 0
        while steps < 40 {
            let plan = step(&s)
            preempted += plan.preempted
            for id in [1, 2] where (s.request(id)?.outputCount ?? 0) >= 8 { s.remove(id) }
            steps += 1
            if !s.hasWork { break }
        }
        #expect(!s.hasWork)
        #expect(preempted.contains(2))
        #expect(!preempted.contains(1))
        #expect(s.allocator.usedCount == 0)
    }

    @Test func impossibleRequestsAreRefusedAtAdmission() {
        var s = Scheduler(limits: .init(maxModelLength: 32), blocks: 4, blockSize: 4)
        #expect(throws: Scheduler.AdmissionError.tooLong(tokens: 40, limit: 32)) { try s.add(id: 1, prompt: [1], adapter: nil, maxTotal: 40) }
        #expect(throws: Scheduler.AdmissionError.exceedsCache(tokens: 20, capacity: 16)) { try s.add(id: 1, prompt: [1], adapter: nil, maxTotal: 20) }
        #expect(throws: Never.self) { try s.add(id: 1, prompt: [1], adapter: nil, maxTotal: 16) }
        #expect(throws: Scheduler.AdmissionError.duplicateID) { try s.add(id: 1, prompt: [1], adapter: nil, maxTotal: 16) }
    }

    @Test func removingMidPrefillFreesBlocksAtOnce() throws {
        var s = Scheduler(limits: .init(maxNumTokens: 8), blocks: 10, blockSize: 4)
        try s.add(id: 1, prompt: Array(repeating: 1, count: 30), adapter: nil, maxTotal: 36)
        _ = step(&s)
        #expect(s.allocator.usedCount == 2)
        s.remove(1)
        #expect(s.allocator.usedCount == 0 && !s.hasWork)
    }
}
