import AsyncHTTPClient
import Foundation
import NIOCore
import Sampling

/// Drives an OpenAI-compatible server (`facet serve`, or any other) with streaming
/// completions arriving as a Poisson process at rising rates, and reports throughput, time
/// to first token (TTFT), time per output token (TPOT) and end-to-end latency percentiles.
package struct ServingBenchmark: Sendable {
    package struct Configuration: Sendable {
        package var baseURL: String
        /// Models (adapters) used round-robin; empty: every model the server lists.
        package var models: [String] = []
        /// Requests per second; `.infinity` sends them all at once.
        package var rates: [Double] = [1, 2, 4, 8, .infinity]
        package var requestsPerRate = 32
        package var promptWords = 96
        /// Words of a system prompt that every request starts with (0: none), before its own
        /// `promptWords` (what a prefix cache serves).
        package var sharedPrefixWords = 0
        package var maxTokens = 64
        /// Sampling temperature of every request (0: greedy; OpenAI clients default to 1).
        package var temperature: Double = 0
        package var seed: UInt64 = 1
        package var apiKey: String?
        package var timeoutSeconds: Int64 = 600
        package var protocolKind: ServingProtocol = .openai
        /// KServe: the server's start adapters, used as `lora_task_id` 0..<adapterTasks.
        package var adapterTasks = 0
        /// KServe over gRPC: the server's gRPC port (its host is the base URL's).
        package var grpcPort: Int?

        package init(baseURL: String) { self.baseURL = baseURL }
    }

    package struct Percentiles: Codable, Sendable {
        package var mean: Double
        package var p50: Double
        package var p90: Double
        package var p99: Double

        /// Nearest-rank percentiles of `values` (zeros when empty).
        package init(_ values: [Double]) {
            let v = values.sorted()
            func rank(_ p: Double) -> Double { v.isEmpty ? 0 : v[min(v.count - 1, max(0, Int((p * Double(v.count)).rounded(.up)) - 1))] }
            mean = v.isEmpty ? 0 : v.reduce(0, +) / Double(v.count)
            p50 = rank(0.5)
            p90 = rank(0.9)
            p99 = rank(0.99)
        }
    }

    package struct RateResult: Codable, Sendable {
        /// Offered requests per second (nil: all at once).
        package var rate: Double?
        package var requests: Int
        package var failed: Int
        package var seconds: Double
        package var requestsPerSecond: Double
        package var outputTokensPerSecond: Double
        /// Milliseconds.
        package var ttft: Percentiles
        package var tpot: Percentiles
        package var latency: Percentiles
        package var firstError: String?
        /// Which server of a side-by-side run (e.g. "cache off"); nil for one server.
        package var label: String?
    }

    struct Outcome: Sendable {
        var ttft: Double?
        var tpot: Double?
        var latency: Double
        var tokens: Int
        var error: String?
    }

    package let configuration: Configuration

    package init(_ configuration: Configuration) { self.configuration = configuration }

    /// Runs every rate in turn; `progress` gets one line per finished rate.
    package func run(progress: @Sendable (RateResult) -> Void = { _ in }) async throws -> [RateResult] {
        // One HTTP/1.1 connection per concurrent stream: AsyncHTTPClient's default pool
        // (8 per host) would queue the others in the client and hide them from the server.
        var clientConfiguration = HTTPClient.Configuration()
        clientConfiguration.connectionPool = .init(idleTimeout: .seconds(60),
                                                   concurrentHTTP1ConnectionsPerHostSoftLimit: max(8, configuration.requestsPerRate))
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        do {
            var results: [RateResult] = []
            switch configuration.protocolKind {
            case .openai:
                var models = configuration.models
                if models.isEmpty { models = try await listModels(client) }
                guard !models.isEmpty else { throw ServingBenchError("the server lists no models at \(configuration.baseURL)/v1/models") }
                for rate in configuration.rates {
                    let r = await runRate(rate, models: models) { model, prompt in await self.send(model: model, prompt: prompt, client: client) }
                    progress(r)
                    results.append(r)
                }
            case .kserveHTTP:
                for rate in configuration.rates {
                    let r = await runRate(rate, models: kserveModels) { model, prompt in
                        await self.sendKServeHTTP(model: model, prompt: prompt, client: client)
                    }
                    progress(r)
                    results.append(r)
                }
            case .kserveGRPC:
                guard let port = configuration.grpcPort, let host = URL(string: configuration.baseURL)?.host else {
                    throw ServingBenchError("KServe over gRPC needs the server's gRPC port and host")
                }
                results = try await Self.withKServeClient(host: host, port: port) { grpc in
                    var out: [RateResult] = []
                    for rate in configuration.rates {
                        let r = await runRate(rate, models: kserveModels) { model, prompt in
                            await self.sendKServeGRPC(model: model, prompt: prompt, client: grpc)
                        }
                        progress(r)
                        out.append(r)
                    }
                    return out
                }
            }
            try await client.shutdown()
            return results
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    /// Polls `GET /health` until it answers 200; false when `seconds` pass or `alive` turns false.
    package static func waitUntilHealthy(baseURL: String, seconds: Double, alive: @Sendable () -> Bool) async -> Bool {
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { _ = client.shutdown() }
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while ContinuousClock.now < deadline, alive() {
            if let r = try? await client.execute(HTTPClientRequest(url: baseURL + "/health"), timeout: .seconds(2)), r.status == .ok { return true }
            try? await Task.sleep(for: .milliseconds(250))
        }
        return false
    }

    func listModels(_ client: HTTPClient) async throws -> [String] {
        var request = HTTPClientRequest(url: configuration.baseURL + "/v1/models")
        if let key = configuration.apiKey { request.headers.add(name: "Authorization", value: "Bearer \(key)") }
        let response = try await client.execute(request, timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 1 << 22)
        guard response.status == .ok,
              let json = try JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any],
              let data = json["data"] as? [[String: Any]] else {
            throw ServingBenchError("GET /v1/models answered \(response.status.code)")
        }
        return data.compactMap { $0["id"] as? String }
    }

    func runRate(_ rate: Double, models: [String], send: @escaping @Sendable (String, String) async -> Outcome) async -> RateResult {
        var random = SeededRandom(seed: configuration.seed &+ UInt64(rate.isFinite ? rate * 1000 : 0))
        var offsets: [Double] = []
        var t = 0.0
        for _ in 0..<configuration.requestsPerRate {
            offsets.append(t)
            if rate.isFinite { t += -log(1 - Double(random.unit())) / rate }
        }
        let start = ContinuousClock.now
        let outcomes = await withTaskGroup(of: Outcome.self) { group in
            for (i, offset) in offsets.enumerated() {
                let model = models[i % models.count]
                let prompt = Self.prompt(words: configuration.promptWords, variant: i, sharedPrefixWords: configuration.sharedPrefixWords)
                group.addTask {
                    let wait = start + .milliseconds(Int64(offset * 1000)) - ContinuousClock.now
                    if wait > .zero { try? await Task.sleep(for: wait) }
                    return await send(model, prompt)
                }
            }
            var all: [Outcome] = []
            for await o in group { all.append(o) }
            return all
        }
        let seconds = Self.seconds(ContinuousClock.now - start)
        let ok = outcomes.filter { $0.error == nil }
        let tokens = ok.reduce(0) { $0 + $1.tokens }
        return RateResult(rate: rate.isFinite ? rate : nil, requests: outcomes.count, failed: outcomes.count - ok.count, seconds: seconds,
                          requestsPerSecond: Double(ok.count) / seconds, outputTokensPerSecond: Double(tokens) / seconds,
                          ttft: Percentiles(ok.compactMap(\.ttft).map { $0 * 1000 }),
                          tpot: Percentiles(ok.compactMap(\.tpot).map { $0 * 1000 }),
                          latency: Percentiles(ok.map { $0.latency * 1000 }),
                          firstError: outcomes.first { $0.error != nil }?.error)
    }

    /// One streaming completion; TTFT is the first chunk with text, TPOT spreads the rest
    /// of the stream over the remaining tokens (counted by the server's usage report).
    func send(model: String, prompt: String, client: HTTPClient) async -> Outcome {
        let body: [String: Any] = [
            "model": model, "prompt": prompt, "max_tokens": configuration.maxTokens, "temperature": configuration.temperature, "stream": true,
            "ignore_eos": true, "stream_options": ["include_usage": true],
        ]
        var timer = TokenTimer(begin: ContinuousClock.now)
        var usage = 0
        do {
            if let error = try await streamEvents(path: "/v1/completions", body: body, client: client, { json in
                if let u = json["usage"] as? [String: Any], let n = u["completion_tokens"] as? Int { usage = n }
                if let choices = json["choices"] as? [[String: Any]], let text = choices.first?["text"] as? String, !text.isEmpty { timer.token() }
                return nil
            }) {
                return timer.failed(error)
            }
        } catch {
            return timer.failed("\(error)")
        }
        if usage > 0 { timer.tokens = usage }
        return timer.outcome()
    }

    /// POSTs `body` as JSON to `path` and hands each Server-Sent Event's JSON object to
    /// `event` (which may return an error text to stop); returns the error text of a
    /// refused request or of an event, nil when the stream ended well.
    func streamEvents(path: String, body: [String: Any], client: HTTPClient,
                      _ event: ([String: Any]) -> String?) async throws -> String? {
        var request = HTTPClientRequest(url: configuration.baseURL + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        if let key = configuration.apiKey { request.headers.add(name: "Authorization", value: "Bearer \(key)") }
        request.body = .bytes(ByteBuffer(bytes: Array(try JSONSerialization.data(withJSONObject: body))))
        let response = try await client.execute(request, timeout: .seconds(configuration.timeoutSeconds))
        guard response.status == .ok else {
            let text = try await response.body.collect(upTo: 1 << 20)
            return "HTTP \(response.status.code): \(String(buffer: text).prefix(200))"
        }
        var pending = ""
        for try await buffer in response.body {
            pending += String(buffer: buffer)
            while let end = pending.range(of: "\n\n") {
                let block = String(pending[..<end.lowerBound])
                pending.removeSubrange(..<end.upperBound)
                for line in block.split(separator: "\n") where line.hasPrefix("data: ") && line != "data: [DONE]" {
                    guard let json = try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any] else { continue }
                    if let error = event(json) { return error }
                }
            }
        }
        return nil
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
    }

    /// A deterministic prompt of about `words` words, different per request, after a system
    /// prompt of `sharedPrefixWords` words that is the same for every request.
    static func prompt(words: Int, variant: Int, sharedPrefixWords: Int = 0) -> String {
        let vocabulary = ["the", "river", "carries", "light", "across", "old", "stones", "while", "children", "count", "boats",
                          "under", "a", "bridge", "of", "iron", "and", "rain", "falls", "softly", "on", "market", "roofs", "near", "harbor"]
        func text(_ n: Int, seed: UInt64) -> String {
            var random = SeededRandom(seed: seed)
            return (0..<n).map { _ in vocabulary[Int(random.next() % UInt64(vocabulary.count))] }.joined(separator: " ")
        }
        let system = sharedPrefixWords > 0 ? "System: " + text(sharedPrefixWords, seed: 0x5EED) + "\n" : ""
        return system + "Request \(variant): " + text(max(1, words), seed: UInt64(variant) &* 0x9E37_79B9 &+ 7)
    }
}

package struct ServingBenchError: Error, CustomStringConvertible, Sendable {
    package let description: String
    init(_ message: String) { description = message }
}
