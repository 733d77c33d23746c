import Adapters
import Foundation
import Llama
import PagedKV
import Sampling
import Scheduling
import Tensors
import Tokenization

/// Settings of a serving engine.
package struct EngineConfiguration: Sendable {
    package var limits: SchedulerLimits
    package var blockSize: Int = 16
    /// Bytes of KV cache to allocate.
    package var kvCacheBytes: Int
    /// Requests share the cached KV blocks of a common prefix (`Scheduler`).
    package var prefixCaching: Bool

    package init(limits: SchedulerLimits = SchedulerLimits(), blockSize: Int = 16, kvCacheBytes: Int = 512 << 20, prefixCaching: Bool = true) {
        self.limits = limits
        self.blockSize = blockSize
        self.kvCacheBytes = kvCacheBytes
        self.prefixCaching = prefixCaching
    }
}

/// One request to the engine.
package struct EngineRequest: Sendable {
    package var promptIDs: [Int32]
    package var parameters: SamplingParameters
    /// The pinned adapter, or nil for the base model; released when the request ends.
    package var adapter: AdapterStore.Lease?
    /// Number of top alternatives to report with each token's log-probability (nil: none).
    package var logprobs: Int?
    /// Report each prompt token's log-probability with this many alternatives (nil: none).
    package var promptLogprobs: Int?

    package init(promptIDs: [Int32], parameters: SamplingParameters, adapter: AdapterStore.Lease? = nil, logprobs: Int? = nil) {
        self.promptIDs = promptIDs
        self.parameters = parameters
        self.adapter = adapter
        self.logprobs = logprobs
    }
}

package struct TokenLogprob: Sendable, Equatable {
    package var token: Int32
    package var logprob: Float
    package var top: [(Int32, Float)]
    package static func == (a: TokenLogprob, b: TokenLogprob) -> Bool {
        a.token == b.token && a.logprob == b.logprob && a.top.map(\.0) == b.top.map(\.0) && a.top.map(\.1) == b.top.map(\.1)
    }
}

package enum EngineEvent: Sendable {
    /// New text (possibly empty while a character or a possible stop string is incomplete)
    /// for one generated token.
    case token(id: Int32, text: String, logprob: TokenLogprob?)
    case finished(reason: FinishReason, promptTokens: Int, completionTokens: Int)
    /// The log-probability of prompt token `index` (1...) given the tokens before it, when
    /// the request asked for prompt log-probabilities; sent in order, before any `.token`.
    case promptLogprob(index: Int, logprob: TokenLogprob)
}

/// Observations for metrics, reported from the engine thread.
package protocol EngineObserver: Sendable {
    func stepFinished(running: Int, waiting: Int, tokens: Int, kvBlocksUsed: Int, kvBlocksTotal: Int, seconds: Double)
    func requestFinished(adapter: String?, promptTokens: Int, completionTokens: Int, timeToFirstToken: Double?, timePerOutputToken: Double?)
    func preempted(count: Int)
    /// Occupancy changed outside a step (requests cancelled while nothing else runs).
    func stateChanged(running: Int, waiting: Int, kvBlocksUsed: Int, kvBlocksTotal: Int)
    /// A request ended by cancellation (client gone, or shutdown) after this much work.
    func requestCancelled(adapter: String?, promptTokens: Int, completionTokens: Int)
    /// The adapters of the running and of the waiting requests changed (names, sorted).
    func adaptersInUse(running: [String], waiting: [String])
    /// Admitted requests looked `tokens` prompt tokens up in the prefix cache and found
    /// `hits` of them there (computed by an earlier step, not again).
    func prefixCacheLookedUp(tokens: Int, hits: Int)
}

package extension EngineObserver {
    func stateChanged(running: Int, waiting: Int, kvBlocksUsed: Int, kvBlocksTotal: Int) {}
    func requestCancelled(adapter: String?, promptTokens: Int, completionTokens: Int) {}
    func adaptersInUse(running: [String], waiting: [String]) {}
    func prefixCacheLookedUp(tokens: Int, hits: Int) {}
}

/// The serving loop: requests join and leave the running batch at every step.
///
/// A dedicated thread drives the one `StepRunner` (plan with the Scheduler → forward over
/// one flat batch, every adapter → sample → emit). Submitting and cancelling only enqueue
/// commands; the loop owns all state.
package final class InferenceEngine: @unchecked Sendable {
    package let model: LlamaModel
    package let tokenizer: Tokenizer?
    package let configuration: EngineConfiguration
    package let totalBlocks: Int
    let observer: (any EngineObserver)?
    let adapterStore: AdapterStore?
    /// Owned by the engine thread once started.
    private let runner: StepRunner

    private let condition = NSCondition()
    private var commands: [Command] = []
    private var stopping = false
    private var thread: Thread?
    /// Signalled when the loop has returned (after `shutdown`).
    private let stopped = DispatchSemaphore(value: 0)
    private var nextID = 0

    enum Command {
        case submit(Int, EngineRequest, AsyncThrowingStream<EngineEvent, any Error>.Continuation)
        case cancel(Int)
    }

    package init(model: LlamaModel, tokenizer: Tokenizer?, configuration: EngineConfiguration,
                adapterStore: AdapterStore? = nil, observer: (any EngineObserver)? = nil) throws {
        self.model = model
        self.tokenizer = tokenizer
        self.configuration = configuration
        self.adapterStore = adapterStore
        self.observer = observer
        let c = model.config
        let perBlock = KVStorage.bytesPerToken(layers: c.numLayers, kvHeads: model.localKVHeads, headDim: c.headDim, type: model.kvCacheType)
            * configuration.blockSize
        totalBlocks = configuration.kvCacheBytes / perBlock
        guard totalBlocks >= 1 else {
            throw FacetError(.invalidArgument, "--kv-cache-memory \(configuration.kvCacheBytes) bytes holds no block of \(perBlock) bytes",
                             field: "kv_cache_memory", remedy: "give at least \(perBlock) bytes")
        }
        runner = StepRunner(model: model, tokenizer: tokenizer, limits: configuration.limits, blocks: totalBlocks,
                            blockSize: configuration.blockSize, adapters: .perSequence, observer: observer,
                            prefixCaching: configuration.prefixCaching)
    }

    package func start() {
        let t = Thread { [self] in
            loop()
            stopped.signal()
        }
        t.name = "facet-engine"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Stops the loop; requests still running finish with an error.
    package func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    /// Blocks until the loop has finished its last step after `shutdown` (so nothing runs
    /// the model any more; a tensor-parallel group may then stop its other ranks).
    package func waitUntilStopped() {
        guard thread != nil else { return }
        stopped.wait()
        stopped.signal()
    }

    static func sequence(_ r: EngineRequest) -> StepRunner.Sequence {
        StepRunner.Sequence(promptIDs: r.promptIDs, parameters: r.parameters, adapter: r.adapter?.adapter, logprobs: r.logprobs,
                            promptLogprobs: r.promptLogprobs)
    }

    /// Queues a request; the stream yields its tokens and ends with `.finished`.
    /// Cancelling the consuming task (or a client disconnect) frees its cache at once.
    package func submit(_ request: EngineRequest) throws -> AsyncThrowingStream<EngineEvent, any Error> {
        try submitTracked(request).stream
    }

    /// Cancels request `id` (from `submitTracked`): frees its blocks and adapter pin and ends
    /// its stream. A request that already ended is left alone.
    package func cancel(id: Int) { enqueue(.cancel(id)) }

    /// `submit`, also returning the request's id for `cancel(id:)`: for owners that may drop
    /// the stream without ever iterating it (a client that resets before its response starts).
    package func submitTracked(_ request: EngineRequest) throws -> (id: Int, stream: AsyncThrowingStream<EngineEvent, any Error>) {
        // The runner's checks are pure (they read only its configuration): safe from any thread.
        try runner.validate(Self.sequence(request))
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
        while true {
            condition.lock()
            while commands.isEmpty && !runner.hasWork && !stopping { condition.wait() }
            let pending = commands
            commands.removeAll()
            let stop = stopping
            condition.unlock()

            var cancelled = false
            for command in pending {
                switch command {
                case .submit(let id, let request, let continuation):
                    let store = adapterStore
                    let sink = StepRunner.Sink(
                        event: { continuation.yield($0) },
                        ended: { error in
                            if let lease = request.adapter { store?.release(lease) }
                            if let error { continuation.finish(throwing: error) } else { continuation.finish() }
                        })
                    do {
                        try runner.add(id: id, Self.sequence(request), sink: sink)
                    } catch {
                        if let lease = request.adapter { adapterStore?.release(lease) }
                        continuation.finish(throwing: error)
                    }
                case .cancel(let id):
                    if runner.cancel(id) { cancelled = true }
                }
            }
            if cancelled { runner.reportState() }
            if stop {
                runner.failAll(FacetError(.capacity, "the server shut down before the request finished", remedy: "retry"))
                return
            }
            runner.step()
        }
    }
}
