import Adapters
import Engine
import Foundation
import Formats
import Llama
import Loading
import Sampling
import Scheduling
import Tensors
import Testing
import TestSupport

/// The serving loop against the one-shot generator: same tokens for every request, whatever
/// the interleaving, chunking and preemption.
@Suite struct InferenceEngineTests {
    static let (model, _) = try! ModelLoader.load(path: Fixtures.tinyModel)
    nonisolated(unsafe) static let golden = try! Fixtures.json("tiny_llama_untied/golden.json")

    static func store(budget: Int = 1 << 30) throws -> AdapterStore {
        let s = AdapterStore(base: model.config, baseEmbedding: model.weights.embedding, budgetBytes: budget, maxRank: nil, root: Fixtures.root)
        for name in ["plain_qv", "all_linear_r8", "embed_lora", "extended_vocab"] {
            try s.register(name: name, path: Fixtures.path("tiny_llama_untied/adapters/\(name)"))
        }
        return s
    }

    static func params(_ n: Int, seed: UInt64? = nil) -> SamplingParameters {
        var p = SamplingParameters()
        p.temperature = seed == nil ? 0 : 0.9
        p.seed = seed
        p.maxTokens = n
        return p
    }

    static func collect(_ stream: AsyncThrowingStream<EngineEvent, any Error>) async throws -> ([Int32], FinishReason?) {
        var ids: [Int32] = []
        var reason: FinishReason?
        for try await e in stream {
            switch e {
            case .token(let id, _, _): ids.append(id)
            case .finished(let r, _, _): reason = r
            case .promptLogprob: break
            }
        }
        return (ids, reason)
    }

    @Test(arguments: [
        EngineConfiguration(limits: .init(maxBatchSize: 16, maxNumTokens: 256, maxLoras: 8, maxModelLength: 256), blockSize: 16, kvCacheBytes: 64 << 20),
        // Small budgets: chunked prefill, an adapter cap of 1, and a cache so small that requests get preempted.
        EngineConfiguration(limits: .init(maxBatchSize: 3, maxNumTokens: 5, maxLoras: 1, maxModelLength: 256), blockSize: 4,
                            kvCacheBytes: 9 * 4 * 2 * 2 * 2 * 16 * 4),
    ])
    func concurrentRequestsMatchTheOneShotGenerator(configuration: EngineConfiguration) async throws {
        let store = try Self.store()
        let counter = Counter()
        let engine = try InferenceEngine(model: Self.model, tokenizer: nil, configuration: configuration, adapterStore: store, observer: counter)
        defer { engine.shutdown() }
        let prompt = ints(Self.golden["prompt_ids"])
        let jobs: [(String?, [Int32], UInt64?)] = [
            (nil, prompt, nil), ("plain_qv", prompt, nil), ("all_linear_r8", Array(prompt.prefix(5)), 3), ("embed_lora", prompt, nil),
            ("extended_vocab", [1, 320, 5, 333, 7], nil), (nil, [1, 2, 3], 11), ("plain_qv", Array(prompt.reversed()), 5),
        ]
        // Everything is queued before the loop starts, so the small configuration must
        // chunk, cap adapters and preempt.
        let streams = try jobs.map { job in
            let lease = try job.0.map { try store.acquire($0) }
            return try engine.submit(EngineRequest(promptIDs: job.1, parameters: Self.params(10, seed: job.2), adapter: lease))
        }
        engine.start()
        let results = try await withThrowingTaskGroup(of: (Int, [Int32]).self) { group in
            for (i, stream) in streams.enumerated() {
                group.addTask { (i, try await Self.collect(stream).0) }
            }
            var out = [[Int32]](repeating: [], count: jobs.count)
            for try await (i, ids) in group { out[i] = ids }
            return out
        }
        for (i, job) in jobs.enumerated() {
            let adapters = try job.0.map { [try store.acquire($0).adapter] } ?? []
            let set = adapters.isEmpty ? nil : AdapterSet(adapters: adapters, baseVocabulary: Self.model.config.vocabSize)
            let expected = try BatchGenerator(model: Self.model, tokenizer: nil)
                .generate([GenerationRequest(promptIDs: job.1, parameters: Self.params(10, seed: job.2), adapterSlot: adapters.isEmpty ? -1 : 0)], deltas: set)[0]
            #expect(results[i] == expected.outputIDs, "job \(i) (\(job.0 ?? "base"))")
        }
        if configuration.limits.maxNumTokens == 5 { #expect(counter.preemptions > 0) }
        // The golden continuation, through the engine.
        let base = (Self.golden["cases"] as! [String: Any])["__base__"] as! [String: Any]
        #expect(Array(results[0].prefix(10)) == Array(ints(base["greedy"]).prefix(10)))
    }

    @Test func cancellationFreesTheRequest() async throws {
        let counter = Counter()
        let engine = try InferenceEngine(model: Self.model, tokenizer: nil,
                                         configuration: EngineConfiguration(limits: .init(maxModelLength: 256), blockSize: 16, kvCacheBytes: 8 << 20),
                                         observer: counter)
        engine.start()
        defer { engine.shutdown() }
        let task = Task {
            let stream = try engine.submit(EngineRequest(promptIDs: [1, 2, 3], parameters: Self.params(200)))
            var n = 0
            for try await _ in stream { n += 1; if n == 3 { break } }
            return n
        }
        #expect(try await task.value == 3)
        // The cancellation reaches the engine: it is counted and its blocks come back. (On a
        // loaded machine the engine may finish all 200 tokens before the consumer breaks:
        // then the request ends normally, and its blocks must come back just the same.) The
        // engine counts the end first and reports the freed blocks right after, so the test
        // waits for both.
        let settled = { counter.lock.withLock { counter.cancelled + counter.finished == 1 && counter.lastBlocksUsed == 0 && counter.peakBlocksUsed > 0 } }
        let deadline = Date().addingTimeInterval(20)
        while !settled() && Date() < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(settled())
        #expect(counter.lock.withLock { counter.cancelled + counter.finished } == 1)
        // The engine keeps serving afterwards.
        let (ids, reason) = try await Self.collect(try engine.submit(EngineRequest(promptIDs: [1, 2, 3], parameters: Self.params(4))))
        #expect(ids.count == 4 && reason == .length)
    }

    @Test func oversizedRequestsAreRefusedUpFront() throws {
        let engine = try InferenceEngine(model: Self.model, tokenizer: nil,
                                         configuration: EngineConfiguration(limits: .init(maxModelLength: 64), blockSize: 16, kvCacheBytes: 8 << 20))
        #expect(throws: FacetError.self) { try engine.submit(EngineRequest(promptIDs: Array(repeating: 1, count: 60), parameters: Self.params(10))) }
        #expect(throws: FacetError.self) { try engine.submit(EngineRequest(promptIDs: [], parameters: Self.params(10))) }
        #expect(throws: FacetError.self) { try engine.submit(EngineRequest(promptIDs: [1, 400], parameters: Self.params(10))) }
    }

    @Test func adapterStoreEvictsLeastRecentlyUsedAndNeverPinned() throws {
        let one = try AdapterLoader.load(directory: Fixtures.path("tiny_llama_untied/adapters/all_linear_r8"), base: Self.model.config).byteSize
        let s = AdapterStore(base: Self.model.config, baseEmbedding: Self.model.weights.embedding, budgetBytes: one * 2 + 10, maxRank: nil, root: Fixtures.root)
        for name in ["a", "b", "c"] { try s.register(name: name, path: Fixtures.path("tiny_llama_untied/adapters/all_linear_r8")) }
        #expect(s.residentCount == 2)
        #expect(s.entry("a")?.adapter == nil)        // least recently used went first
        let lease = try s.acquire("b")
        _ = try s.acquire("a")                       // reloads a, evicts c (b is pinned)
        #expect(s.entry("b")?.adapter != nil && s.entry("c")?.adapter == nil && s.entry("a")?.loads == 2)
        s.release(lease)
        #expect(throws: FacetError.self) { try s.acquire("nope") }
        #expect(throws: FacetError.self) { try s.register(name: "a", path: Fixtures.path("tiny_llama_untied/adapters/plain_qv")) }
        #expect(throws: FacetError.self) { try s.resolveUnderRoot("../../etc") }
        #expect(throws: FacetError.self) { try s.resolveUnderRoot("/etc/passwd") }
        #expect(try s.resolveUnderRoot("tiny_llama_untied/adapters/plain_qv").hasSuffix("adapters/plain_qv"))
    }

    /// Adapters from bytes: PEFT tensors give the same adapter as the directory; TensorRT-LLM
    /// arrays register under the same budget; an evicted in-memory adapter is refused with an
    /// error asking for its weights, and sending them again brings it back.
    @Test func adaptersFromBytesAndTheirEviction() throws {
        let dir = Fixtures.path("tiny_llama_untied/adapters/plain_qv")
        let fromFile = try AdapterLoader.load(directory: dir, base: Self.model.config)
        let fromBytes = try AdapterLoader.loadPEFT(
            config: try Data(contentsOf: URL(fileURLWithPath: dir + "/adapter_config.json")),
            safetensors: try Data(contentsOf: URL(fileURLWithPath: dir + "/adapter_model.safetensors")),
            name: "bytes", base: Self.model.config)
        #expect(fromBytes.digest == fromFile.digest)
        #expect(fromBytes.pairs[0][.q]?.a.data == fromFile.pairs[0][.q]?.a.data && fromBytes.pairs[1][.v]?.b.data == fromFile.pairs[1][.v]?.b.data)

        let (weights, config) = try TensorRTLoRA.arrays(fromFile, storage: .f32)
        let trt = try TensorRTLoRA.adapter(weights: weights, config: config, name: "trt", base: Self.model.config)
        let s = AdapterStore(base: Self.model.config, baseEmbedding: Self.model.weights.embedding, budgetBytes: trt.byteSize + 10,
                             maxRank: nil, root: nil)
        try s.register(name: "trt", adapter: trt)
        try s.register(name: "trt", adapter: trt)                  // the same weights again: accepted, nothing changes
        #expect(throws: FacetError.self) { try s.register(name: "trt", adapter: fromFile) }   // other weights under a taken name
        s.release(try s.acquire("trt"))
        try s.register(name: "file", path: dir)                    // evicts trt: the budget holds one
        #expect(s.entry("trt") != nil && s.entry("trt")?.adapter == nil)
        #expect {
            try s.acquire("trt")
        } throws: { error in
            (error as? FacetError)?.field == "lora_weights" && (error as? FacetError)?.remedy?.contains("again") == true
        }
        try s.register(name: "trt", adapter: trt)                  // the owner re-sends: back (file is evicted in turn)
        let lease = try s.acquire("trt")
        #expect(lease.adapter.digest == trt.digest && s.entry("trt")?.loads == 2)
        s.release(lease)
        // A crafted array is refused before it is registered.
        var nan = weights
        nan.values[0] = .nan
        #expect(throws: FacetError.self) { try TensorRTLoRA.adapter(weights: nan, config: config, name: "nan", base: Self.model.config) }
    }
}

final class Counter: EngineObserver, @unchecked Sendable {
    let lock = NSLock()
    var preemptions = 0
    var finished = 0
    func stepFinished(running: Int, waiting: Int, tokens: Int, kvBlocksUsed: Int, kvBlocksTotal: Int, seconds: Double) {
        lock.withLock {
            lastBlocksUsed = kvBlocksUsed
            peakBlocksUsed = max(peakBlocksUsed, kvBlocksUsed)
        }
    }
    func requestFinished(adapter: String?, promptTokens: Int, completionTokens: Int, timeToFirstToken: Double?, timePerOutputToken: Double?) {
        lock.withLock { finished += 1 }
    }
    func preempted(count: Int) { lock.withLock { preemptions += count } }
    var cancelled = 0
    var lastBlocksUsed = -1
    var peakBlocksUsed = 0
    func stateChanged(running: Int, waiting: Int, kvBlocksUsed: Int, kvBlocksTotal: Int) {
        lock.withLock {
            lastBlocksUsed = kvBlocksUsed
            peakBlocksUsed = max(peakBlocksUsed, kvBlocksUsed)
        }
    }
    func requestCancelled(adapter: String?, promptTokens: Int, completionTokens: Int) { lock.withLock { cancelled += 1 } }
}
