import Adapters
import Foundation
import Llama
import PagedKV
import Sampling
import Scheduling
import Tensors
import Tokenization

/// Settings of a serving engine.
public struct EngineConfiguration: Sendable {
    public var limits: SchedulerLimits
    public var blockSize: Int = 16
    /// Bytes of KV cache to allocate.
    public var kvCacheBytes: Int

    public init(limits: SchedulerLimits = SchedulerLimits(), blockSize: Int = 16, kvCacheBytes: Int = 512 << 20) {
        self.limits = limits
        self.blockSize = blockSize
        self.kvCacheBytes = kvCacheBytes
    }
}

/// One request to the engine.
public struct EngineRequest: Sendable {
    public var promptIDs: [Int32]
    public var parameters: SamplingParameters
    /// The pinned adapter, or nil for the base model; released when the request ends.
    public var adapter: AdapterStore.Lease?
    /// Number of top alternatives to report with each token's log-probability (nil: none).
    public var logprobs: Int?

    public init(promptIDs: [Int32], parameters: SamplingParameters, adapter: AdapterStore.Lease? = nil, logprobs: Int? = nil) {
        self.promptIDs = promptIDs
        self.parameters = parameters
        self.adapter = adapter
        self.logprobs = logprobs
    }
}

public struct TokenLogprob: Sendable, Equatable {
    public var token: Int32
    public var logprob: Float
    public var top: [(Int32, Float)]
    public static func == (a: TokenLogprob, b: TokenLogprob) -> Bool {
        a.token == b.token && a.logprob == b.logprob && a.top.map(\.0) == b.top.map(\.0) && a.top.map(\.1) == b.top.map(\.1)
    }
}

public enum EngineEvent: Sendable {
    /// New text (possibly empty while a character or a possible stop string is incomplete)
    /// for one generated token.
    case token(id: Int32, text: String, logprob: TokenLogprob?)
    case finished(reason: FinishReason, promptTokens: Int, completionTokens: Int)
}

/// Observations for metrics, reported from the engine thread.
public protocol EngineObserver: Sendable {
    func stepFinished(running: Int, waiting: Int, tokens: Int, kvBlocksUsed: Int, kvBlocksTotal: Int, seconds: Double)
    func requestFinished(adapter: String?, promptTokens: Int, completionTokens: Int, timeToFirstToken: Double?, timePerOutputToken: Double?)
    func preempted(count: Int)
    /// Occupancy changed outside a step (requests cancelled while nothing else runs).
    func stateChanged(running: Int, waiting: Int, kvBlocksUsed: Int, kvBlocksTotal: Int)
    /// A request ended by cancellation (client gone, or shutdown) after this much work.
    func requestCancelled(adapter: String?, promptTokens: Int, completionTokens: Int)
}

public extension EngineObserver {
    func stateChanged(running: Int, waiting: Int, kvBlocksUsed: Int, kvBlocksTotal: Int) {}
    func requestCancelled(adapter: String?, promptTokens: Int, completionTokens: Int) {}
}

/// The serving loop: requests join and leave the running batch at every step.
///
/// A dedicated thread repeats plan (Scheduler) → forward (one flat batch, every adapter) →
/// sample → emit. Submitting and cancelling only enqueue commands; the loop owns all state.
public final class InferenceEngine: @unchecked Sendable {
    public let model: LlamaModel
    public let tokenizer: Tokenizer?
    public let configuration: EngineConfiguration
    public let totalBlocks: Int
    let kv: KVStorage
    let observer: (any EngineObserver)?
    let adapterStore: AdapterStore?

    private let condition = NSCondition()
    private var commands: [Command] = []
    private var stopping = false
    private var thread: Thread?
    /// The step's logits, reused from step to step (engine thread only).
    private let logits = Logits()
    private var nextID = 0

    enum Command {
        case submit(Int, EngineRequest, AsyncThrowingStream<EngineEvent, any Error>.Continuation)
        case cancel(Int)
    }

    struct Live {
        var request: EngineRequest
        var sampler: Sampler
        var detokenizer: StreamingDetokenizer?
        var continuation: AsyncThrowingStream<EngineEvent, any Error>.Continuation
        var output: [Int32] = []
        var history: [Int32]
        var emitted = 0            // characters of detokenizer.text already sent
        var submitted: Date
        var firstToken: Date?
    }

    public init(model: LlamaModel, tokenizer: Tokenizer?, configuration: EngineConfiguration,
                adapterStore: AdapterStore? = nil, observer: (any EngineObserver)? = nil) throws {
        self.model = model
        self.tokenizer = tokenizer
        self.configuration = configuration
        self.adapterStore = adapterStore
        self.observer = observer
        let c = model.config
        let perBlock = KVStorage.bytesPerToken(layers: c.numLayers, kvHeads: c.numKVHeads, headDim: c.headDim) * configuration.blockSize
        totalBlocks = configuration.kvCacheBytes / perBlock
        guard totalBlocks >= 1 else {
            throw FacetError(.invalidArgument, "--kv-cache-memory \(configuration.kvCacheBytes) bytes holds no block of \(perBlock) bytes",
                             field: "kv_cache_memory", remedy: "give at least \(perBlock) bytes")
        }
        kv = model.makeKVStorage(blocks: totalBlocks, blockSize: configuration.blockSize)
    }

    public func start() {
        let t = Thread { [self] in loop() }
        t.name = "facet-engine"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Stops the loop; requests still running finish with an error.
    public func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    /// Queues a request; the stream yields its tokens and ends with `.finished`.
    /// Cancelling the consuming task (or a client disconnect) frees its cache at once.
    public func submit(_ request: EngineRequest) throws -> AsyncThrowingStream<EngineEvent, any Error> {
        try submitTracked(request).stream
    }

    /// Cancels request `id` (from `submitTracked`): frees its blocks and adapter pin and ends
    /// its stream. A request that already ended is left alone.
    public func cancel(id: Int) { enqueue(.cancel(id)) }

    /// `submit`, also returning the request's id for `cancel(id:)`: for owners that may drop
    /// the stream without ever iterating it (a client that resets before its response starts).
    public func submitTracked(_ request: EngineRequest) throws -> (id: Int, stream: AsyncThrowingStream<EngineEvent, any Error>) {
        try request.parameters.validate()
        let c = model.config
        let vocabulary = request.adapter?.adapter.vocabularySize(base: c.vocabSize) ?? c.vocabSize
        guard !request.promptIDs.isEmpty else {
            throw FacetError(.invalidArgument, "the prompt is empty", field: "prompt", remedy: "send at least one token")
        }
        for id in request.promptIDs where id < 0 || Int(id) >= vocabulary {
            throw FacetError(.invalidArgument, "token id \(id) is outside the vocabulary of \(vocabulary)", field: "prompt")
        }
        let total = request.promptIDs.count + request.parameters.maxTokens
        let limit = min(configuration.limits.maxModelLength, c.maxPositionEmbeddings)
        guard total <= limit else {
            throw FacetError(.capacity, "prompt (\(request.promptIDs.count) tokens) plus max_tokens (\(request.parameters.maxTokens)) exceeds the context length \(limit)",
                             field: "max_tokens", remedy: "shorten the prompt or lower max_tokens")
        }
        let capacity = totalBlocks * configuration.blockSize
        guard total <= capacity else {
            throw FacetError(.capacity, "the request needs \(total) cache positions but the whole KV cache holds \(capacity)",
                             field: "max_tokens", remedy: "lower max_tokens or raise --kv-cache-memory")
        }
        let (stream, continuation) = AsyncThrowingStream<EngineEvent, any Error>.makeStream()
        condition.lock()
        let id = nextID
        nextID += 1
        if stopping {
            condition.unlock()
            throw FacetError(.capacity, "the server is shutting down", remedy: "retry against another instance")
        }
        commands.append(.submit(id, request, continuation))
        condition.signal()
        condition.unlock()
        continuation.onTermination = { [weak self] termination in
            if case .cancelled = termination { self?.enqueue(.cancel(id)) }
        }
        return (id, stream)
    }

    private func enqueue(_ command: Command) {
        condition.lock()
        commands.append(command)
        condition.signal()
        condition.unlock()
    }

    // MARK: - The loop (engine thread only)

    private func loop() {
        var scheduler = Scheduler(limits: configuration.limits, blocks: totalBlocks, blockSize: configuration.blockSize)
        var live: [Int: Live] = [:]

        func finish(_ id: Int, _ reason: FinishReason?, error: (any Error)? = nil) {
            guard let l = live.removeValue(forKey: id) else { return }
            scheduler.remove(id)
            if let lease = l.request.adapter { adapterStore?.release(lease) }
            if let error {
                l.continuation.finish(throwing: error)
                return
            }
            if reason == nil {
                observer?.requestCancelled(adapter: l.request.adapter?.name, promptTokens: l.request.promptIDs.count,
                                           completionTokens: l.output.count)
            }
            if let reason {
                l.continuation.yield(.finished(reason: reason, promptTokens: l.request.promptIDs.count, completionTokens: l.output.count))
                let now = Date()
                let ttft = l.firstToken.map { $0.timeIntervalSince(l.submitted) }
                let tpot = l.firstToken.flatMap { f in l.output.count > 1 ? now.timeIntervalSince(f) / Double(l.output.count - 1) : nil }
                observer?.requestFinished(adapter: l.request.adapter?.name, promptTokens: l.request.promptIDs.count,
                                          completionTokens: l.output.count, timeToFirstToken: ttft, timePerOutputToken: tpot)
            }
            l.continuation.finish()
        }

        while true {
            condition.lock()
            while commands.isEmpty && !scheduler.hasWork && !stopping { condition.wait() }
            let pending = commands
            commands.removeAll()
            let stop = stopping
            condition.unlock()

            var cancelled = false
            for command in pending {
                switch command {
                case .submit(let id, let request, let continuation):
                    do {
                        try scheduler.add(id: id, prompt: request.promptIDs, adapter: request.adapter?.adapter.digest,
                                          maxTotal: request.promptIDs.count + request.parameters.maxTokens)
                        live[id] = Live(request: request, sampler: Sampler(request.parameters),
                                        detokenizer: tokenizer.map { StreamingDetokenizer(tokenizer: $0) },
                                        continuation: continuation, history: request.promptIDs, submitted: Date())
                        if request.parameters.maxTokens == 0 { finish(id, .length) }
                    } catch {
                        if let lease = request.adapter { adapterStore?.release(lease) }
                        continuation.finish(throwing: FacetError(.capacity, "request refused by the scheduler: \(error)"))
                    }
                case .cancel(let id):
                    if live[id] != nil { cancelled = true }
                    finish(id, nil)
                }
            }
            if cancelled {
                observer?.stateChanged(running: scheduler.running.count, waiting: scheduler.waiting.count,
                                       kvBlocksUsed: scheduler.allocator.usedCount, kvBlocksTotal: totalBlocks)
            }
            if stop {
                for id in Array(live.keys) {
                    finish(id, nil, error: FacetError(.capacity, "the server shut down before the request finished", remedy: "retry"))
                }
                return
            }
            guard scheduler.hasWork else { continue }
            let started = Date()
            let plan = scheduler.schedule()
            if !plan.preempted.isEmpty { observer?.preempted(count: plan.preempted.count) }
            guard !plan.isEmpty else { continue }

            // Build the flat batch; one AdapterSet slot per distinct adapter in this step.
            var batch = ForwardBatch()
            var slotOf: [String: Int32] = [:]
            var stepAdapters: [LoRAAdapter] = []
            var samplers: [(id: Int, row: Int)] = []
            for e in plan.entries {
                guard let r = scheduler.request(e.request), let l = live[e.request] else { continue }
                let n = batch.blockTables.count
                var slot: Int32 = -1
                if let a = l.request.adapter?.adapter {
                    if let s = slotOf[a.digest] { slot = s } else {
                        slot = Int32(stepAdapters.count)
                        slotOf[a.digest] = slot
                        stepAdapters.append(a)
                    }
                }
                batch.blockTables.append(scheduler.blockTable(e.request))
                batch.append(sequence: n, tokens: Array(r.tokens[e.start..<(e.start + e.count)]), startPosition: e.start,
                             adapterSlot: slot, wantLogits: e.samples)
                if e.samples { samplers.append((e.request, batch.logitRows.count - 1)) }
            }
            let deltas = stepAdapters.isEmpty ? nil : AdapterSet(adapters: stepAdapters, baseVocabulary: model.config.vocabSize)
            do {
                try model.forward(batch, kv: kv, deltas: deltas, into: logits)
            } catch {
                for e in plan.entries { finish(e.request, nil, error: error) }
                continue
            }
            for (id, row) in samplers {
                guard var l = live[id] else { continue }
                let token = Int32(l.sampler.next(logits: logits[row], history: l.history))
                l.output.append(token)
                l.history.append(token)
                if l.firstToken == nil { l.firstToken = Date() }
                let p = l.request.parameters
                var reason: FinishReason?
                if !p.ignoreEOS && p.stopTokenIDs.contains(Int(token)) { reason = .stop }
                var text = ""
                if l.detokenizer != nil {
                    _ = l.detokenizer!.append(token)
                    if reason != nil || l.output.count >= p.maxTokens { _ = l.detokenizer!.finish() }
                    let full = l.detokenizer!.text
                    // Stop strings: cut at the first one; otherwise hold back a possible prefix.
                    if let cut = p.stop.compactMap({ full.range(of: $0)?.lowerBound }).min() {
                        let upTo = full.distance(from: full.startIndex, to: cut)
                        if upTo > l.emitted { text = String(full.dropFirst(l.emitted).prefix(upTo - l.emitted)) }
                        l.emitted = max(l.emitted, upTo)
                        reason = .stop
                    } else {
                        var safe = full.count
                        if reason == nil && l.output.count < p.maxTokens {
                            for s in p.stop {
                                for k in stride(from: min(s.count - 1, full.count), to: 0, by: -1) where full.hasSuffix(s.prefix(k)) {
                                    safe = min(safe, full.count - k)
                                    break
                                }
                            }
                        }
                        if safe > l.emitted { text = String(full.dropFirst(l.emitted).prefix(safe - l.emitted)) }
                        l.emitted = max(l.emitted, safe)
                    }
                }
                if reason == nil && l.output.count >= p.maxTokens { reason = .length }
                var logprob: TokenLogprob?
                if let k = l.request.logprobs { logprob = Self.logprob(logits[row], token: token, top: k) }
                l.continuation.yield(.token(id: token, text: text, logprob: logprob))
                live[id] = l
                if let reason { finish(id, reason) } else { scheduler.append(token, to: id) }
            }
            observer?.stepFinished(running: scheduler.running.count, waiting: scheduler.waiting.count, tokens: batch.count,
                                   kvBlocksUsed: scheduler.allocator.usedCount, kvBlocksTotal: totalBlocks,
                                   seconds: Date().timeIntervalSince(started))
        }
    }

    /// log-softmax of the raw logits at `token`, and the `top` most likely alternatives.
    static func logprob(_ logits: UnsafeBufferPointer<Float>, token: Int32, top: Int) -> TokenLogprob {
        let m = logits.max() ?? 0
        var sum: Double = 0
        for v in logits { sum += exp(Double(v - m)) }
        let lse = Float(Double(m) + log(sum))
        var best: [(Int32, Float)] = []
        if top > 0 {
            let order = Sampler.topIndices(logits, top)
            best = order.map { (Int32($0), logits[$0] - lse) }
        }
        return TokenLogprob(token: token, logprob: logits[Int(token)] - lse, top: best)
    }
}
