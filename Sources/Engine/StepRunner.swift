import Adapters
import Foundation
import Llama
import PagedKV
import Sampling
import Scheduling
import Tensors
import Tokenization

/// The one step loop of Facet, shared by `facet serve` (`InferenceEngine`, on its thread)
/// and `facet run` (`BatchGenerator`, to completion): plan a step with the `Scheduler`,
/// run one flat forward pass over every scheduled token of every sequence (each with its
/// adapter), sample, detokenize, handle stop tokens and stop strings, and report.
///
/// KV blocks come from the paged cache on demand (the scheduler reserves them as sequences
/// grow and preempts the newest sequence when they run out). The runner is not thread-safe:
/// one owner drives it.
package final class StepRunner {
    /// Where a step's LoRA deltas come from.
    package enum Adapters {
        /// Each sequence brings its own adapter (`Sequence.adapter`); a step gets one slot
        /// per distinct adapter among its sequences.
        case perSequence
        /// One fixed set of deltas for every step; sequences name their slot
        /// (`Sequence.slot`, -1 = base). `facet run` with `--lora_dir` uses this.
        case fixed(any LinearDeltas)
    }

    /// One sequence to run.
    package struct Sequence {
        package var promptIDs: [Int32]
        package var parameters: SamplingParameters
        /// The sequence's adapter in `.perSequence` mode (nil = base).
        package var adapter: LoRAAdapter?
        /// The sequence's slot in `.fixed` mode (-1 = base).
        package var slot: Int32
        /// Top alternatives to report with each token's log-probability (nil: none).
        package var logprobs: Int?
        /// Keep the logits each token was sampled from (`Sink.logits`).
        package var collectLogits: Bool
        /// Report every prompt token's log-probability (`EngineEvent.promptLogprob`) with
        /// this many alternatives; the prompt's logits are computed only then.
        package var promptLogprobs: Int?

        package init(promptIDs: [Int32], parameters: SamplingParameters, adapter: LoRAAdapter? = nil, slot: Int32 = -1,
                    logprobs: Int? = nil, collectLogits: Bool = false, promptLogprobs: Int? = nil) {
            self.promptIDs = promptIDs
            self.parameters = parameters
            self.adapter = adapter
            self.slot = slot
            self.logprobs = logprobs
            self.collectLogits = collectLogits
            self.promptLogprobs = promptLogprobs
        }
    }

    /// Where a sequence's results go. `event` gets every token and the final `.finished`;
    /// `ended` is called exactly once when the sequence leaves the runner: with nil after
    /// `.finished`, with nil when cancelled, or with the error that ended it.
    package struct Sink {
        package var event: (EngineEvent) -> Void
        package var ended: ((any Error)?) -> Void
        /// The logits of each sampled token (first: the last prompt position), when the
        /// sequence asked for them.
        package var logits: ([Float]) -> Void
        package init(event: @escaping (EngineEvent) -> Void, ended: @escaping ((any Error)?) -> Void = { _ in },
                    logits: @escaping ([Float]) -> Void = { _ in }) {
            self.event = event
            self.ended = ended
            self.logits = logits
        }
    }

    struct Live {
        var sequence: Sequence
        var sink: Sink
        var sampler: Sampler
        var detokenizer: StreamingDetokenizer?
        var output: [Int32] = []
        var history: [Int32]
        var emitted = 0            // characters of detokenizer.text already sent
        var submitted: Date
        var firstToken: Date?
        /// Prompt tokens whose log-probability has been sent (a recomputed prompt after a
        /// preemption does not send them again).
        var promptScored = 1
    }

    package let model: LlamaModel
    package let tokenizer: Tokenizer?
    package let limits: SchedulerLimits
    package let totalBlocks: Int
    package let blockSize: Int
    package let adapters: Adapters
    package var observer: (any EngineObserver)?
    package private(set) var scheduler: Scheduler
    let kv: KVStorage
    private var live: [Int: Live] = [:]
    /// The step's logits, reused from step to step.
    private let logits = Logits()
    // Per-step storage reused from step to step: a steady decode step allocates nothing.
    private var plan = StepPlan()
    private var batch = ForwardBatch()
    private var samplers: [(id: Int, row: Int)] = []
    /// Logit rows of prompt positions whose next token is scored: (sequence, position, row).
    private var promptRows: [(id: Int, position: Int, row: Int)] = []
    private var stepAdapters: [LoRAAdapter] = []
    /// The last step's adapter set, reused while the step's adapters stay the same.
    private var cachedSet: (digests: [String], set: AdapterSet)?

    package init(model: LlamaModel, tokenizer: Tokenizer?, limits: SchedulerLimits, blocks: Int, blockSize: Int,
                adapters: Adapters = .perSequence, observer: (any EngineObserver)? = nil, prefixCaching: Bool = true) {
        self.model = model
        self.tokenizer = tokenizer
        self.limits = limits
        self.totalBlocks = blocks
        self.blockSize = blockSize
        self.adapters = adapters
        self.observer = observer
        scheduler = Scheduler(limits: limits, blocks: blocks, blockSize: blockSize, prefixCaching: prefixCaching)
        kv = model.makeKVStorage(blocks: blocks, blockSize: blockSize)
    }

    /// The longest sequence (prompt + output) this runner accepts.
    package var contextLength: Int { min(limits.maxModelLength, model.config.maxPositionEmbeddings) }

    package var hasWork: Bool { scheduler.hasWork }
    package var liveCount: Int { live.count }

    /// The checks every sequence passes before it is queued; errors name the field.
    package func validate(_ s: Sequence) throws {
        try s.parameters.validate()
        let c = model.config
        guard !s.promptIDs.isEmpty else {
            throw FacetError(.invalidArgument, "the prompt is empty", field: "prompt", remedy: "send at least one token")
        }
        let vocabulary: Int
        switch adapters {
        case .perSequence:
            vocabulary = s.adapter?.vocabularySize(base: c.vocabSize) ?? c.vocabSize
        case .fixed(let deltas):
            guard s.slot >= -1, s.slot < Int32(deltas.slotCount) else {
                throw FacetError(.invalidArgument, "adapter \(s.slot) does not exist: \(deltas.slotCount) adapters are loaded",
                                 field: "lora_task_uids", remedy: "use an index of --lora_dir (0-based), or -1 for the base model")
            }
            vocabulary = s.slot >= 0 ? deltas.vocabularySize(slot: s.slot) : c.vocabSize
        }
        for id in s.promptIDs where id < 0 || Int(id) >= vocabulary {
            throw FacetError(.invalidArgument, "token id \(id) is outside the vocabulary of \(vocabulary)", field: "prompt",
                             remedy: "use ids from the tokenizer of this model (or of its adapter)")
        }
        // Checked: a max_tokens near Int.max is refused, never overflows the sum.
        let (total, overflow) = s.promptIDs.count.addingReportingOverflow(max(0, s.parameters.maxTokens))
        guard !overflow, total <= contextLength else {
            throw FacetError(.capacity, "the sequence needs \(total) positions (prompt \(s.promptIDs.count) + max_tokens \(s.parameters.maxTokens)) but the context holds \(contextLength)",
                             field: "max_tokens", remedy: "shorten the prompt or lower max_tokens")
        }
        let capacity = totalBlocks * blockSize
        guard total <= capacity else {
            throw FacetError(.capacity, "the sequence needs \(total) cache positions but the whole KV cache holds \(capacity)",
                             field: "max_tokens", remedy: "lower max_tokens or raise --kv-cache-memory")
        }
    }

    /// Queues a validated sequence under `id`. A sequence asking for no tokens finishes at once.
    package func add(id: Int, _ s: Sequence, sink: Sink) throws {
        try validate(s)
        let identity: String? = switch adapters {
        case .perSequence: s.adapter?.digest
        case .fixed: s.slot >= 0 ? "slot \(s.slot)" : nil
        }
        do {
            // Prompt log-probabilities need every prompt position's logits: no cached prefix.
            try scheduler.add(id: id, prompt: s.promptIDs, adapter: identity, maxTotal: s.promptIDs.count + s.parameters.maxTokens,
                              reusePrefix: s.promptLogprobs == nil)
        } catch {
            throw FacetError(.capacity, "the scheduler refused the sequence: \(error)", field: "max_tokens")
        }
        membershipChanged = true
        var l = Live(sequence: s, sink: sink, sampler: Sampler(s.parameters),
                     detokenizer: tokenizer.map { StreamingDetokenizer(tokenizer: $0) }, history: s.promptIDs, submitted: Date())
        l.output.reserveCapacity(s.parameters.maxTokens)
        l.history.reserveCapacity(s.promptIDs.count + s.parameters.maxTokens)
        live[id] = l
        if s.parameters.maxTokens == 0 && s.promptLogprobs == nil { finish(id, .length) }
    }

    /// Ends sequence `id` now (cancelled): frees its blocks. Returns false if it had ended.
    @discardableResult
    package func cancel(_ id: Int) -> Bool { finish(id, nil) }

    /// Ends every sequence with `error` (shutdown).
    package func failAll(_ error: any Error) {
        for id in Array(live.keys) { finish(id, nil, error: error) }
    }

    @discardableResult
    private func finish(_ id: Int, _ reason: FinishReason?, error: (any Error)? = nil) -> Bool {
        guard let l = live.removeValue(forKey: id) else { return false }
        scheduler.remove(id)
        membershipChanged = true
        if let error {
            l.sink.ended(error)
            return true
        }
        let adapterName = l.sequence.adapter?.name
        if let reason {
            l.sink.event(.finished(reason: reason, promptTokens: l.sequence.promptIDs.count, completionTokens: l.output.count))
            let ttft = l.firstToken.map { $0.timeIntervalSince(l.submitted) }
            let tpot = l.firstToken.flatMap { f in l.output.count > 1 ? Date().timeIntervalSince(f) / Double(l.output.count - 1) : nil }
            observer?.requestFinished(adapter: adapterName, promptTokens: l.sequence.promptIDs.count,
                                      completionTokens: l.output.count, timeToFirstToken: ttft, timePerOutputToken: tpot)
        } else {
            observer?.requestCancelled(adapter: adapterName, promptTokens: l.sequence.promptIDs.count, completionTokens: l.output.count)
        }
        l.sink.ended(nil)
        return true
    }

    /// Reports occupancy outside a step (after cancellations).
    package func reportState() {
        observer?.stateChanged(running: scheduler.running.count, waiting: scheduler.waiting.count,
                               kvBlocksUsed: scheduler.allocator.usedCount, kvBlocksTotal: totalBlocks)
        reportAdapters()
    }

    /// One step: plan, forward, sample, emit. A forward error ends the step's sequences with
    /// that error; the runner stays usable. In steady state (the same sequences and adapters
    /// as the step before, no new KV block) it allocates nothing of its own: the plan, the
    /// batch, the sampler list and the adapter set are reused (`StepAllocationTests`).
    package func step() {
        guard scheduler.hasWork else { return }
        let started = Date()
        // Release last step's references to the block tables before the scheduler grows them.
        batch.removeAll()
        let waitingBefore = scheduler.waiting.count
        scheduler.schedule(into: &plan)
        if scheduler.waiting.count != waitingBefore || !plan.preempted.isEmpty { membershipChanged = true }
        if !plan.preempted.isEmpty { observer?.preempted(count: plan.preempted.count) }
        guard !plan.isEmpty else { return }

        // The flat batch: every scheduled token with its position, sequence and adapter slot.
        samplers.removeAll(keepingCapacity: true)
        promptRows.removeAll(keepingCapacity: true)
        stepAdapters.removeAll(keepingCapacity: true)
        for e in plan.entries {
            guard let r = scheduler.request(e.request), let l = live[e.request] else { continue }
            let n = batch.blockTables.count
            var slot: Int32 = -1
            switch adapters {
            case .fixed:
                slot = l.sequence.slot
            case .perSequence:
                if let a = l.sequence.adapter {
                    if let s = stepAdapters.firstIndex(where: { $0.digest == a.digest }) { slot = Int32(s) } else {
                        slot = Int32(stepAdapters.count)
                        stepAdapters.append(a)
                    }
                }
            }
            batch.blockTables.append(r.table.blocks)
            if l.sequence.promptLogprobs != nil && e.start < r.promptCount - 1 {
                // Logits of every prompt position in this chunk that predicts a later prompt
                // token, then the step's usual last row.
                let scored = min(e.start + e.count, r.promptCount - 1)
                for p in e.start..<(e.start + e.count) {
                    batch.append(sequence: n, tokens: r.tokens[p...p], startPosition: p, adapterSlot: slot,
                                 wantLogits: p < scored || (p == e.start + e.count - 1 && e.samples))
                    if p < scored { promptRows.append((e.request, p, batch.logitRows.count - 1)) }
                }
                if e.samples { samplers.append((e.request, batch.logitRows.count - 1)) }
            } else {
                batch.append(sequence: n, tokens: r.tokens[e.start..<(e.start + e.count)], startPosition: e.start,
                             adapterSlot: slot, wantLogits: e.samples)
                if e.samples { samplers.append((e.request, batch.logitRows.count - 1)) }
            }
        }
        for c in plan.copies { batch.blockCopies.append((c.source, c.destination)) }
        let deltas: (any LinearDeltas)?
        switch adapters {
        case .fixed(let d):
            deltas = d
        case .perSequence:
            if stepAdapters.isEmpty {
                deltas = nil
            } else if let cached = cachedSet, Self.same(cached.digests, stepAdapters) {
                deltas = cached.set
            } else {
                let set = AdapterSet(adapters: stepAdapters, baseVocabulary: model.config.vocabSize)
                cachedSet = (stepAdapters.map(\.digest), set)
                deltas = set
            }
        }
        do {
            try model.forward(batch, kv: kv, deltas: deltas, into: logits)
        } catch {
            for e in plan.entries { finish(e.request, nil, error: error) }
            return
        }
        scheduler.commit()
        reportPrefixCache()
        for (id, position, row) in promptRows {
            guard let l = live[id], position + 1 >= l.promptScored, let k = l.sequence.promptLogprobs else { continue }
            let next = l.sequence.promptIDs[position + 1]
            l.sink.event(.promptLogprob(index: position + 1, logprob: Self.logprob(logits[row], token: next, top: k)))
            live[id]!.promptScored = position + 2
        }
        for (id, row) in samplers {
            guard live[id] != nil else { continue }
            if live[id]!.sequence.parameters.maxTokens == 0 {
                finish(id, .length)    // the prompt was only scored
                continue
            }
            // The sequence is changed in place (a copy would copy its token arrays).
            let (token, reason): (Int32, FinishReason?) = withLive(id) { l in
                let token = Int32(l.sampler.next(logits: logits[row], history: l.history))
                if l.sequence.collectLogits { l.sink.logits(logits.array(row)) }
                l.output.append(token)
                l.history.append(token)
                if l.firstToken == nil { l.firstToken = Date() }
                let (text, reason) = Self.text(after: token, of: &l)
                var logprob: TokenLogprob?
                if let k = l.sequence.logprobs { logprob = Self.logprob(logits[row], token: token, top: k) }
                l.sink.event(.token(id: token, text: text, logprob: logprob))
                return (token, reason)
            }
            if let reason { finish(id, reason) } else { scheduler.append(token, to: id) }
        }
        observer?.stepFinished(running: scheduler.running.count, waiting: scheduler.waiting.count, tokens: batch.count,
                               kvBlocksUsed: scheduler.allocator.usedCount, kvBlocksTotal: totalBlocks,
                               seconds: Date().timeIntervalSince(started))
        reportAdapters()
    }

    /// Prefix-cache lookups since the last report.
    private var reportedPrefix = (queried: 0, hits: 0)
    private func reportPrefixCache() {
        let now = (scheduler.prefixQueriedTokens, scheduler.prefixHitTokens)
        guard now != reportedPrefix else { return }
        observer?.prefixCacheLookedUp(tokens: now.0 - reportedPrefix.queried, hits: now.1 - reportedPrefix.hits)
        reportedPrefix = now
    }

    /// The adapter names of the running and waiting sequences, reported when they change
    /// (only with an observer: the names cost allocations).
    private var reportedAdapters: (running: [String], waiting: [String]) = ([], [])
    /// Set when a sequence arrives, leaves, or moves between waiting and running: only then
    /// can the reported adapters change (a steady step computes no names).
    private var membershipChanged = false
    private func reportAdapters() {
        guard let observer, case .perSequence = adapters, membershipChanged else { return }
        membershipChanged = false
        func names(_ requests: [Scheduler.Request]) -> [String] {
            Set(requests.compactMap { live[$0.id]?.sequence.adapter?.name }).sorted()
        }
        let now = (names(scheduler.running), names(scheduler.waiting))
        guard now.0 != reportedAdapters.running || now.1 != reportedAdapters.waiting else { return }
        reportedAdapters = now
        observer.adaptersInUse(running: now.0, waiting: now.1)
    }

    /// Whether `adapters` are, in order, the ones whose digests are `digests`.
    private static func same(_ digests: [String], _ adapters: [LoRAAdapter]) -> Bool {
        guard digests.count == adapters.count else { return false }
        for i in digests.indices where digests[i] != adapters[i].digest { return false }
        return true
    }

    /// Runs `body` on sequence `id` in place.
    private func withLive<T>(_ id: Int, _ body: (inout Live) -> T) -> T { body(&live[id]!) }

    /// The text a new token adds, and whether the sequence ends with it. Stop strings are
    /// handled here only: the text is cut before the first stop string, and text that may
    /// be the start of one is held back until it is not.
    static func text(after token: Int32, of l: inout Live) -> (String, FinishReason?) {
        let p = l.sequence.parameters
        var reason: FinishReason?
        if !p.ignoreEOS && p.stopTokenIDs.contains(Int(token)) { reason = .stop }
        for word in p.stopTokenSequences where l.output.count >= word.count && l.output.suffix(word.count).elementsEqual(word) {
            reason = .stop
        }
        var text = ""
        if l.detokenizer != nil {
            _ = l.detokenizer!.append(token)
            if reason != nil || l.output.count >= p.maxTokens { _ = l.detokenizer!.finish() }
            let full = l.detokenizer!.text
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
        return (text, reason)
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
