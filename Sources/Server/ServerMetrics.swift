import CoreMetrics
import Engine
import Foundation
import Prometheus

/// Prometheus metrics of one server (its own registry, so several servers can live in one
/// process), fed by the engine loop and the request handlers.
package final class ServerMetrics: EngineObserver, @unchecked Sendable {
    package let registry = PrometheusCollectorRegistry()
    let factory: PrometheusMetricsFactory
    let running: CoreMetrics.Gauge
    let waiting: CoreMetrics.Gauge
    let kvUsed: CoreMetrics.Gauge
    let kvTotal: CoreMetrics.Gauge
    let kvUsage: CoreMetrics.Gauge
    let tokensPerSecond: CoreMetrics.Gauge
    let adaptersResident: CoreMetrics.Gauge
    let adaptersRegistered: CoreMetrics.Gauge
    let promptTokens: CoreMetrics.Counter
    let generationTokens: CoreMetrics.Counter
    let preemptions: CoreMetrics.Counter
    let cancelled: CoreMetrics.Counter
    let ttft: CoreMetrics.Timer
    let tpot: CoreMetrics.Timer
    let stepTime: CoreMetrics.Timer
    let prefixQueries: CoreMetrics.Counter
    let prefixHits: CoreMetrics.Counter
    let prefixHitRatio: CoreMetrics.Gauge
    private let lock = NSLock()
    private var prefixTotals = (queried: 0, hits: 0)
    // What the Kubernetes Gateway API Inference Extension's endpoint picker reads, under
    // vLLM's names (written by `gatewayText`).
    private var gauges = (running: 0, waiting: 0, kvUsage: 0.0)
    private var loraInfo = (running: [String](), waiting: [String](), updated: Date().timeIntervalSince1970)
    /// `--max-loras`: adapters one step can serve (the LoRA info gauge's `max_lora`).
    package var maxLoras = 16
    private var perModel: [String: CoreMetrics.Counter] = [:]
    private var requestCounts: [String: Int] = [:]
    private var kvBlocks = (used: 0, total: 0)
    /// Tokens the steps processed, per whole second, in a ring of `window` seconds (for the
    /// playground's live tokens/s; fixed storage, so a step adds without allocating).
    private var tokensPerSecondRing = [(second: Int, tokens: Int)](repeating: (-1, 0), count: ServerMetrics.window)
    private var failures: [String: CoreMetrics.Counter] = [:]

    package init() {
        var f = PrometheusMetricsFactory(registry: registry)
        let latency: [Duration] = [.milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
                                   .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30)]
        f.defaultDurationHistogramBuckets = latency
        factory = f
        running = CoreMetrics.Gauge(label: "facet_requests_running", factory: f)
        waiting = CoreMetrics.Gauge(label: "facet_requests_waiting", factory: f)
        kvUsed = CoreMetrics.Gauge(label: "facet_kv_cache_blocks_used", factory: f)
        kvTotal = CoreMetrics.Gauge(label: "facet_kv_cache_blocks_total", factory: f)
        kvUsage = CoreMetrics.Gauge(label: "facet_kv_cache_usage_ratio", factory: f)
        tokensPerSecond = CoreMetrics.Gauge(label: "facet_step_tokens_per_second", factory: f)
        adaptersResident = CoreMetrics.Gauge(label: "facet_lora_adapters_resident", factory: f)
        adaptersRegistered = CoreMetrics.Gauge(label: "facet_lora_adapters_registered", factory: f)
        promptTokens = CoreMetrics.Counter(label: "facet_prompt_tokens_total", factory: f)
        generationTokens = CoreMetrics.Counter(label: "facet_generation_tokens_total", factory: f)
        preemptions = CoreMetrics.Counter(label: "facet_preemptions_total", factory: f)
        cancelled = CoreMetrics.Counter(label: "facet_requests_cancelled_total", factory: f)
        ttft = CoreMetrics.Timer(label: "facet_time_to_first_token_seconds", factory: f)
        tpot = CoreMetrics.Timer(label: "facet_time_per_output_token_seconds", factory: f)
        stepTime = CoreMetrics.Timer(label: "facet_step_duration_seconds", factory: f)
        prefixQueries = CoreMetrics.Counter(label: "facet_prefix_cache_queries_total", factory: f)
        prefixHits = CoreMetrics.Counter(label: "facet_prefix_cache_hits_total", factory: f)
        prefixHitRatio = CoreMetrics.Gauge(label: "facet_prefix_cache_hit_ratio", factory: f)
    }

    /// Prompt tokens looked up in the prefix cache and found there; the ratio is cumulative.
    package func prefixCacheLookedUp(tokens: Int, hits: Int) {
        prefixQueries.increment(by: tokens)
        prefixHits.increment(by: hits)
        let ratio = lock.withLock {
            prefixTotals.queried += tokens
            prefixTotals.hits += hits
            return Double(prefixTotals.hits) / Double(max(prefixTotals.queried, 1))
        }
        prefixHitRatio.record(ratio)
    }

    package func stepFinished(running r: Int, waiting w: Int, tokens: Int, kvBlocksUsed: Int, kvBlocksTotal: Int, seconds: Double) {
        record(running: r, waiting: w, kvBlocksUsed: kvBlocksUsed, kvBlocksTotal: kvBlocksTotal, stepTokens: tokens)
        if seconds > 0 { tokensPerSecond.record(Double(tokens) / seconds) }
        stepTime.recordSeconds(seconds)
    }

    package func requestFinished(adapter: String?, promptTokens p: Int, completionTokens c: Int, timeToFirstToken: Double?, timePerOutputToken: Double?) {
        promptTokens.increment(by: p)
        generationTokens.increment(by: c)
        if let t = timeToFirstToken { ttft.recordSeconds(t) }
        if let t = timePerOutputToken { tpot.recordSeconds(t) }
    }

    package func preempted(count: Int) { preemptions.increment(by: count) }

    package func adaptersInUse(running: [String], waiting: [String]) {
        lock.withLock { loraInfo = (running, waiting, Date().timeIntervalSince1970) }
    }

    /// vLLM's metric names, as the inference gateway's endpoint picker scrapes them:
    /// requests waiting and running, KV-cache usage as a fraction (under its current and
    /// its older name), and the LoRA info gauge (value: the time it last changed).
    package func gatewayText() -> String {
        let (g, l) = lock.withLock { (gauges, loraInfo) }
        func label(_ s: String) -> String { Self.escapeLabel(s) }
        return """
        # TYPE vllm:num_requests_running gauge
        vllm:num_requests_running \(g.running)
        # TYPE vllm:num_requests_waiting gauge
        vllm:num_requests_waiting \(g.waiting)
        # TYPE vllm:kv_cache_usage_perc gauge
        vllm:kv_cache_usage_perc \(g.kvUsage)
        # TYPE vllm:gpu_cache_usage_perc gauge
        vllm:gpu_cache_usage_perc \(g.kvUsage)
        # TYPE vllm:lora_requests_info gauge
        vllm:lora_requests_info{max_lora="\(maxLoras)",running_lora_adapters="\(label(l.running.joined(separator: ",")))",waiting_lora_adapters="\(label(l.waiting.joined(separator: ",")))"} \(l.updated)

        """
    }

    package func stateChanged(running r: Int, waiting w: Int, kvBlocksUsed: Int, kvBlocksTotal: Int) {
        record(running: r, waiting: w, kvBlocksUsed: kvBlocksUsed, kvBlocksTotal: kvBlocksTotal, stepTokens: 0)
    }

    /// The occupancy gauges, and a step's tokens in the live ring, under one lock.
    private func record(running r: Int, waiting w: Int, kvBlocksUsed: Int, kvBlocksTotal: Int, stepTokens: Int) {
        let second = Int(Date().timeIntervalSince1970)
        lock.withLock {
            gauges = (r, w, Double(kvBlocksUsed) / Double(max(kvBlocksTotal, 1)))
            kvBlocks = (kvBlocksUsed, kvBlocksTotal)
            if stepTokens > 0 {
                let i = second % Self.window
                if tokensPerSecondRing[i].second != second { tokensPerSecondRing[i] = (second, 0) }
                tokensPerSecondRing[i].tokens += stepTokens
            }
        }
        running.record(r)
        waiting.record(w)
        kvUsed.record(kvBlocksUsed)
        kvTotal.record(kvBlocksTotal)
        kvUsage.record(Double(kvBlocksUsed) / Double(max(kvBlocksTotal, 1)))
    }

    package func requestCancelled(adapter: String?, promptTokens p: Int, completionTokens c: Int) {
        cancelled.increment()
        promptTokens.increment(by: p)
        generationTokens.increment(by: c)
    }

    /// Counts a request for `model` (the base model's name or an adapter's).
    func request(model: String) {
        let counter = lock.withLock {
            if let c = perModel[model] { return c }
            let c = CoreMetrics.Counter(label: "facet_requests_total", dimensions: [("model", model)], factory: factory)
            perModel[model] = c
            return c
        }
        lock.withLock { requestCounts[model, default: 0] += 1 }
        counter.increment()
    }

    func failure(status: Int) {
        let counter = lock.withLock {
            let key = String(status)
            if let c = failures[key] { return c }
            let c = CoreMetrics.Counter(label: "facet_request_errors_total", dimensions: [("status", key)], factory: factory)
            failures[key] = c
            return c
        }
        counter.increment()
    }

    func adapters(resident: Int, registered: Int) {
        adaptersResident.record(resident)
        adaptersRegistered.record(registered)
    }

    /// The adapter cache's counters, TensorRT-LLM's LoRA cache figures: hits, misses (a
    /// reload, or an id or name not in the cache) and evictions.
    package func adapterCacheText(store: AdapterStore) -> String {
        var text = ""
        for (name, help, value) in [("facet_lora_cache_hits_total", "Adapter lookups that found it resident.", store.cacheHits.current),
                                    ("facet_lora_cache_misses_total", "Adapter lookups that had to load it again or could not find it.", store.cacheMisses.current),
                                    ("facet_lora_cache_evictions_total", "Adapters dropped from memory to make room.", store.cacheEvictions.current)] {
            text += "# HELP \(name) \(help)\n# TYPE \(name) counter\n\(name) \(value)\n"
        }
        text += "# HELP facet_lora_resident Adapters whose weights are in memory (1 per adapter).\n# TYPE facet_lora_resident gauge\n"
        for name in store.residentNames {
            text += "facet_lora_resident{adapter=\"\(Self.escapeLabel(name))\"} 1\n"
        }
        return text
    }

    /// A Prometheus label value: backslash, quote and newline escaped.
    static func escapeLabel(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }

    /// Seconds over which the live tokens/s is averaged.
    static let window = 5

    /// Requests counted for `model` since the start.
    package func requestCount(_ model: String) -> Int { lock.withLock { requestCounts[model] ?? 0 } }

    /// The live state of the server: requests running and waiting, KV blocks, tokens per
    /// second over the last few seconds (prompt and generated tokens the steps processed).
    package func status() -> [String: Any] {
        let second = Int(Date().timeIntervalSince1970)
        return lock.withLock {
            let tokens = tokensPerSecondRing.reduce(0) { $0 + ($1.second > second - Self.window ? $1.tokens : 0) }
            return ["running": gauges.running, "waiting": gauges.waiting, "kv_blocks_used": kvBlocks.used,
                    "kv_blocks_total": kvBlocks.total, "tokens_per_second": Double(tokens) / Double(Self.window)]
        }
    }
}
