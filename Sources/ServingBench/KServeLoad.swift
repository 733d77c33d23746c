import AsyncHTTPClient
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import NIOCore
import TritonProtos

/// The protocol a serving benchmark speaks: OpenAI's streaming completions, or Triton's
/// KServe v2 (the `ensemble` model, streaming) over HTTP (`generate_stream`, SSE) or gRPC
/// (`ModelStreamInfer`, one stream per request as the article's clients do).
package enum ServingProtocol: String, CaseIterable, Sendable {
    case openai
    case kserveHTTP = "kserve-http"
    case kserveGRPC = "kserve-grpc"
}

/// A connected gRPC client for the KServe requests of one benchmark run.
typealias KServeClient = Inference_GRPCInferenceService.Client<HTTP2ClientTransport.Posix>

extension ServingBenchmark {
    /// The KServe "models" of a run: the base (no task id) and the server's start adapters,
    /// which are `lora_task_id` 0, 1, ...
    var kserveModels: [String] { ["base"] + (0..<configuration.adapterTasks).map { "task:\($0)" } }

    static func taskID(_ model: String) -> UInt64? {
        model.hasPrefix("task:") ? UInt64(model.dropFirst(5)) : nil
    }

    /// One streaming `generate_stream` request; every event is one token's text.
    func sendKServeHTTP(model: String, prompt: String, client: HTTPClient) async -> Outcome {
        var body: [String: Any] = ["text_input": prompt, "max_tokens": configuration.maxTokens, "end_id": -1, "stream": true]
        if configuration.temperature > 0 {
            body["temperature"] = configuration.temperature
            body["top_k"] = 0
            body["top_p"] = 1.0
        }
        if let task = Self.taskID(model) { body["lora_task_id"] = task }
        var timer = TokenTimer(begin: ContinuousClock.now)
        do {
            if let error = try await streamEvents(path: "/v2/models/ensemble/generate_stream", body: body, client: client, { json in
                if let error = json["error"] as? String { return error }
                if json["text_output"] != nil { timer.token() }
                return nil
            }) {
                return timer.failed(error)
            }
        } catch {
            return timer.failed("\(error)")
        }
        return timer.outcome()
    }

    /// One `ModelStreamInfer` call with one streaming request; every response is one token's text.
    func sendKServeGRPC(model: String, prompt: String, client: KServeClient) async -> Outcome {
        let begin = ContinuousClock.now
        var request = Inference_ModelInferRequest()
        request.modelName = "ensemble"
        func input(_ name: String, _ datatype: String, _ fill: (inout Inference_InferTensorContents) -> Void) {
            var t = Inference_ModelInferRequest.InferInputTensor()
            t.name = name
            t.datatype = datatype
            t.shape = [1, 1]
            fill(&t.contents)
            request.inputs.append(t)
        }
        input("text_input", "BYTES") { $0.bytesContents = [Data(prompt.utf8)] }
        input("max_tokens", "INT32") { $0.intContents = [Int32(configuration.maxTokens)] }
        input("end_id", "INT32") { $0.intContents = [-1] }
        input("stream", "BOOL") { $0.boolContents = [true] }
        if configuration.temperature > 0 {
            input("temperature", "FP32") { $0.fp32Contents = [Float(configuration.temperature)] }
            input("top_p", "FP32") { $0.fp32Contents = [1] }
        }
        if let task = Self.taskID(model) { input("lora_task_id", "UINT64") { $0.uint64Contents = [task] } }
        let message = request
        do {
            let timeout = Duration.seconds(configuration.timeoutSeconds)
            var options = CallOptions.defaults
            options.timeout = timeout
            return try await client.modelStreamInfer(options: options, requestProducer: { writer in
                try await writer.write(message)
            }, onResponse: { response in
                var timer = TokenTimer(begin: begin)
                for try await r in response.messages {
                    if !r.errorMessage.isEmpty { return timer.failed(r.errorMessage) }
                    timer.token()
                }
                return timer.outcome()
            })
        } catch {
            return Outcome(latency: Self.seconds(ContinuousClock.now - begin), tokens: 0, error: "\(error)")
        }
    }

    /// Runs `body` with a connected gRPC client to `host:port`.
    static func withKServeClient<T: Sendable>(host: String, port: Int, _ body: @Sendable (KServeClient) async throws -> T) async throws -> T {
        let transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: host, port: port), transportSecurity: .plaintext)
        return try await withGRPCClient(transport: transport) { client in
            try await body(KServeClient(wrapping: client))
        }
    }
}

/// TTFT (first token), TPOT (the rest spread over the remaining tokens) and latency of one
/// streamed request.
struct TokenTimer {
    let begin: ContinuousClock.Instant
    var first: ContinuousClock.Instant?
    var last: ContinuousClock.Instant
    var tokens = 0

    init(begin: ContinuousClock.Instant) {
        self.begin = begin
        last = begin
    }

    mutating func token() {
        let now = ContinuousClock.now
        if first == nil { first = now }
        last = now
        tokens += 1
    }

    func outcome() -> ServingBenchmark.Outcome {
        let ttft = first.map { ServingBenchmark.seconds($0 - begin) }
        let tpot = first.flatMap { f in tokens > 1 ? ServingBenchmark.seconds(last - f) / Double(tokens - 1) : nil }
        return .init(ttft: ttft, tpot: tpot, latency: ServingBenchmark.seconds(ContinuousClock.now - begin), tokens: tokens, error: nil)
    }

    func failed(_ error: String) -> ServingBenchmark.Outcome {
        .init(latency: ServingBenchmark.seconds(ContinuousClock.now - begin), tokens: 0, error: error)
    }
}
