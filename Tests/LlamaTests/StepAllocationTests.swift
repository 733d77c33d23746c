import AllocationCounter
import Adapters
import Engine
import Benchmarks
import Foundation
import Kernels
import Llama
import Loading
import Sampling
import Scheduling
import Testing
import TestSupport

/// "No allocation in the step loop": once a step's sizes have been seen, a forward pass of
/// the base model into reused `Logits` makes no heap allocation on the calling thread (the
/// activations live in per-thread scratch, the pool's regions reach it as jobs in the
/// caller's frame, the small per-linear lists live on the stack). Counted with a malloc
/// interposer (Tests/AllocationCounter) that forwards to glibc.
@Suite struct StepAllocationTests {
    static func allocations(_ model: LlamaModel, batch size: Int, adapters: AdapterSet? = nil) throws -> [Int] {
        let prompt = 9, bs = 16, perSeq = 4
        let kv = model.makeKVStorage(blocks: perSeq * size, blockSize: bs)
        let tables = (0..<size).map { s in (0..<perSeq).map { Int32(s * perSeq + $0) } }
        var first = ForwardBatch(blockTables: tables)
        for s in 0..<size {
            first.append(sequence: s, tokens: (0..<prompt).map { Int32(($0 * 13 + s * 5 + 1) % 300) }, startPosition: 0,
                         adapterSlot: slot(s, adapters), wantLogits: true)
        }
        let logits = Logits()
        try model.forward(first, kv: kv, deltas: adapters, into: logits)
        var counts: [Int] = []
        counts.reserveCapacity(4)
        var step = ForwardBatch(blockTables: tables)
        for n in 0..<4 {
            step.tokens.removeAll(keepingCapacity: true)
            step.positions.removeAll(keepingCapacity: true)
            step.sequences.removeAll(keepingCapacity: true)
            step.adapterSlots.removeAll(keepingCapacity: true)
            step.logitRows.removeAll(keepingCapacity: true)
            for s in 0..<size {
                step.tokens.append(Int32(7 + n + s))
                step.positions.append(Int32(prompt + n))
                step.sequences.append(Int32(s))
                step.adapterSlots.append(slot(s, adapters))
                step.logitRows.append(s)
            }
            facet_alloc_count_begin()
            try model.forward(step, kv: kv, deltas: adapters, into: logits)
            counts.append(facet_alloc_count_end())
        }
        #expect(logits.rows == size && logits[0].count == model.config.vocabSize)
        // The first step after the prompt may still grow scratch (one more position).
        return Array(counts.dropFirst())
    }

    /// Sequence s uses the base (-1) or one of the adapters, in turn.
    static func slot(_ s: Int, _ adapters: AdapterSet?) -> Int32 {
        guard let adapters else { return -1 }
        return Int32(s % (adapters.slotCount + 1)) - 1
    }

    @Test(arguments: [1, 8, 32])
    func decodeStepsOfTheDefaultModelAllocateNothing(batch: Int) throws {
        guard let path = Fixtures.defaultModelFile else {
            Issue.record("default model not fetched: run scripts/setup")
            return
        }
        let model = try ModelLoader.load(path: path).0
        for compute in ComputeMode.allCases {
            let counts = try Self.allocations(model.with(compute: compute), batch: batch)
            #expect(counts.allSatisfy { $0 == 0 }, "\(compute) batch \(batch): allocations per step \(counts)")
        }
    }

    @Test func decodeStepsOfADenseModelAllocateNothing() throws {
        let model = try ModelLoader.load(path: Fixtures.tinyModel).0
        for batch in [1, 5] {
            let counts = try Self.allocations(model, batch: batch)
            #expect(counts.allSatisfy { $0 == 0 }, "batch \(batch): allocations per step \(counts)")
        }
    }

    /// A batch mixing the base and four LoRA adapters (every linear, rank 8, fp32 and bf16
    /// factors): the deltas' tasks are jobs too and the slot grouping is cached per step.
    @Test func mixedAdapterDecodeStepsAllocateNothing() throws {
        guard let path = Fixtures.defaultModelFile else {
            Issue.record("default model not fetched: run scripts/setup")
            return
        }
        let model = try ModelLoader.load(path: path).0
        for precision in [LowRankMatrix.Precision.f32, .bf16] {
            let adapters = Benchmark(model: model).syntheticAdapters(count: 4, rank: 8, precision: precision)
            let set = AdapterSet(adapters: adapters, baseVocabulary: model.config.vocabSize)
            let counts = try Self.allocations(model, batch: 10, adapters: set)
            #expect(counts.allSatisfy { $0 == 0 }, "\(precision): allocations per step \(counts)")
        }
    }

    /// The engine's whole step (`StepRunner.step`: scheduler plan, flat batch, adapter set,
    /// forward, sampling, events), as `facet serve` and `facet run` drive it: a batch of 10
    /// sequences over the base and four adapters decodes without allocating once it is
    /// running (prompts prefilled, KV blocks for the whole sequences reserved at admission).
    @Test func theEnginesWholeStepAllocatesNothing() throws {
        let model = try ModelLoader.load(path: Fixtures.tinyModel).0
        let adapters = Benchmark(model: model).syntheticAdapters(count: 4, rank: 8, precision: .f32)
        let runner = StepRunner(model: model, tokenizer: nil, limits: SchedulerLimits(maxBatchSize: 16, maxNumTokens: 256, maxLoras: 8,
                                                                                     maxModelLength: 256),
                                blocks: 64, blockSize: 16)
        final class Events { var tokens = 0, ended = 0 }
        let events = Events()
        var p = SamplingParameters()
        p.temperature = 0
        p.maxTokens = 40
        p.ignoreEOS = true
        for s in 0..<10 {
            let prompt = (0..<(5 + s)).map { Int32(($0 * 7 + s * 3 + 1) % 300) }
            let sequence = StepRunner.Sequence(promptIDs: prompt, parameters: p, adapter: s % 5 == 0 ? nil : adapters[s % 5 - 1])
            try runner.add(id: s, sequence, sink: .init(event: { if case .token = $0 { events.tokens += 1 } }, ended: { _ in events.ended += 1 }))
        }
        for _ in 0..<4 { runner.step() }          // prefill, then decode steps that size the scratch
        var counts: [Int] = []
        counts.reserveCapacity(16)
        for _ in 0..<16 {
            facet_alloc_count_begin()
            runner.step()
            counts.append(facet_alloc_count_end())
        }
        #expect(events.tokens == 200 && events.ended == 0)
        #expect(counts.allSatisfy { $0 == 0 }, "allocations per step \(counts)")
        while runner.hasWork { runner.step() }
        #expect(events.ended == 10 && runner.scheduler.allocator.usedCount == 0)
    }

    /// The counter itself: it sees an allocation when there is one.
    @Test func theCounterCountsAllocations() {
        facet_alloc_count_begin()
        let array = [Int](repeating: 3, count: 1000 + Int.random(in: 0..<2))
        let n = facet_alloc_count_end()
        #expect(array.count >= 1000)
        #expect(n >= 1)
    }
}
