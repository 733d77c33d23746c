import Adapters
import Benchmarks
import Engine
import Foundation
import Llama
import Loading
import Sampling
import Scheduling
import Tensors
import Testing
import TestSupport

/// Prefix caching changes no output: requests that share a system prompt (under the base
/// model and two adapters) give bitwise the same logits with the cache on and off, while
/// the cache does serve the shared blocks (a fully cached prompt through a copy), also
/// when a small cache preempts requests.
@Suite struct PrefixCacheOutputTests {
    static let model = try! ModelLoader.load(path: Fixtures.tinyModel).0
    static let adapters = Benchmark(model: model).syntheticAdapters(count: 2, rank: 8, precision: .f32)

    final class Observer: EngineObserver, @unchecked Sendable {
        var queried = 0, hits = 0, preemptions = 0
        func stepFinished(running: Int, waiting: Int, tokens: Int, kvBlocksUsed: Int, kvBlocksTotal: Int, seconds: Double) {}
        func requestFinished(adapter: String?, promptTokens: Int, completionTokens: Int, timeToFirstToken: Double?, timePerOutputToken: Double?) {}
        func preempted(count: Int) { preemptions += count }
        func prefixCacheLookedUp(tokens: Int, hits: Int) {
            queried += tokens
            self.hits += hits
        }
    }

    /// 32 tokens: two blocks of 16.
    static let system: [Int32] = (0..<32).map { Int32(($0 * 37 + 11) % 317) + 3 }

    struct Run {
        var logits: [Int: [[Float]]] = [:]
        var outputs: [Int: [Int32]] = [:]
        var observer = Observer()
    }

    /// Requests in two waves: three first, then (after two steps) four that share their
    /// prefix: another suffix, another adapter's, the bare system prompt, an identical prompt.
    static func run(prefixCaching: Bool, blocks: Int, maxTokens: Int = 12) throws -> Run {
        var result = Run()
        let runner = StepRunner(model: model, tokenizer: nil,
                                limits: SchedulerLimits(maxBatchSize: 8, maxNumTokens: 64, maxLoras: 4, maxModelLength: 256),
                                blocks: blocks, blockSize: 16, observer: result.observer, prefixCaching: prefixCaching)
        final class Box { var logits: [Int: [[Float]]] = [:]; var outputs: [Int: [Int32]] = [:] }
        let box = Box()
        var p = SamplingParameters()
        p.temperature = 0
        p.maxTokens = maxTokens
        p.ignoreEOS = true
        func add(_ id: Int, _ prompt: [Int32], _ adapter: Int?) throws {
            let s = StepRunner.Sequence(promptIDs: prompt, parameters: p, adapter: adapter.map { adapters[$0] }, collectLogits: true)
            try runner.add(id: id, s, sink: .init(event: { if case .token(let t, _, _) = $0 { box.outputs[id, default: []].append(t) } },
                                                 logits: { box.logits[id, default: []].append($0) }))
        }
        try add(0, system + [5, 6, 7, 8, 9], nil)
        try add(1, system + [10, 11, 12], 0)
        try add(2, system + [13], 1)
        runner.step()
        runner.step()
        try add(3, system + [20, 21, 22, 23], nil)
        try add(4, system + [24, 25], 0)
        try add(5, system, nil)
        try add(6, system + [5, 6, 7, 8, 9], nil)
        while runner.hasWork { runner.step() }
        result.logits = box.logits
        result.outputs = box.outputs
        return result
    }

    @Test func outputsAreBitwiseTheSameWithTheCacheOnAndOff() throws {
        let off = try Self.run(prefixCaching: false, blocks: 64)
        let on = try Self.run(prefixCaching: true, blocks: 64)
        #expect(off.observer.hits == 0 && off.observer.queried == 0)
        // Requests 3, 4 and 6 share the system prompt's two blocks (32 tokens; request 4
        // under adapter 0, which request 1 used); request 5 is the bare system prompt: 31
        // tokens from the cache (the last block copied), its last one computed.
        #expect(on.observer.hits == 32 + 32 + 31 + 32)
        #expect(on.observer.queried == 37 + 35 + 33 + 36 + 34 + 32 + 37)
        for id in 0..<7 {
            #expect(on.outputs[id]?.count == 12)
            #expect(on.outputs[id] == off.outputs[id], "request \(id)")
            let a = on.logits[id] ?? [], b = off.logits[id] ?? []
            #expect(a.count == 12 && a.count == b.count)
            for (k, (x, y)) in zip(a, b).enumerated() {
                let same = x.map(\.bitPattern) == y.map(\.bitPattern)
                #expect(same, "request \(id), token \(k): logits differ")
            }
        }
        // The same prompt gives the same tokens (request 6 repeats request 0).
        #expect(on.outputs[6] == on.outputs[0])
    }

    @Test func preemptionWithCachedBlocksChangesNoOutput() throws {
        // 9 blocks of 16 for seven requests growing to about 60 positions each: requests
        // are preempted, recomputed, and find their own (or others') cached blocks.
        let off = try Self.run(prefixCaching: false, blocks: 64, maxTokens: 24)
        let on = try Self.run(prefixCaching: true, blocks: 9, maxTokens: 24)
        #expect(on.observer.preemptions > 0 && on.observer.hits > 0)
        for id in 0..<7 {
            #expect(on.outputs[id] == off.outputs[id], "request \(id)")
            let a = on.logits[id] ?? [], b = off.logits[id] ?? []
            #expect(a.count == 24 && a.count == b.count)
            for (k, (x, y)) in zip(a, b).enumerated() {
                let same = x.map(\.bitPattern) == y.map(\.bitPattern)
                #expect(same, "request \(id), token \(k): logits differ")
            }
        }
    }

    /// A step whose block copies leave the cache, or copy a block onto itself, is refused
    /// before anything is written.
    @Test func badBlockCopiesAreRefused() throws {
        let kv = Self.model.makeKVStorage(blocks: 4, blockSize: 16)
        for copy in [(Int32(9), Int32(0)), (0, -1), (2, 2)] {
            var batch = ForwardBatch(blockTables: [[0]])
            batch.append(sequence: 0, tokens: [5], startPosition: 0, adapterSlot: -1, wantLogits: true)
            batch.blockCopies = [copy]
            #expect(throws: FacetError.self) { try Self.model.forward(batch, kv: kv) }
        }
    }
}
