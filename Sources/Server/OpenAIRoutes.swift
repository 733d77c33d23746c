import Engine
import Foundation
import Hummingbird
import NIOCore
import Sampling
import Tensors
import Tokenization

/// `/v1/models`, `/v1/completions`, `/v1/chat/completions` (OpenAI-compatible; the `model`
/// field picks the base model or an adapter), and vLLM's `/v1/load_lora_adapter` and
/// `/v1/unload_lora_adapter`.
struct OpenAIRoutes {
    let context: ServingContext

    func register<C: RequestContext>(on group: RouterGroup<C>) {
        group.get("models") { _, _ in try jsonResponse(models()) }
        // Facet's own views for the playground: the adapters with their shapes, the live state.
        group.get("facet/adapters") { _, _ in try jsonResponse(["data": adapters()]) }
        group.get("facet/status") { _, _ in
            var status = context.metrics.status()
            status["kv_blocks_total"] = context.engine.totalBlocks
            return try jsonResponse(status)
        }
        group.post("completions") { request, ctx in try await generate(request, ctx, chat: false) }
        group.post("chat/completions") { request, ctx in try await generate(request, ctx, chat: true) }
        group.post("load_lora_adapter") { request, ctx in
            let body = try await readJSON(request, ctx)
            guard let name = try body.string("lora_name"), let path = try body.string("lora_path") else {
                throw APIError.badRequest("'lora_name' and 'lora_path' are required", param: "lora_name")
            }
            guard name != context.configuration.servedModelName else {
                throw APIError.badRequest("'\(name)' is the base model's name", param: "lora_name")
            }
            do {
                let resolved = try context.store.resolveUnderRoot(path)
                try context.store.register(name: name, path: resolved, confined: true)
            } catch {
                throw APIError.from(error)
            }
            return textResponse("Success: LoRA adapter '\(name)' added successfully.")
        }
        group.post("unload_lora_adapter") { request, ctx in
            let body = try await readJSON(request, ctx)
            guard let name = try body.string("lora_name") else { throw APIError.badRequest("'lora_name' is required", param: "lora_name") }
            do {
                try context.store.unregister(name: name)
            } catch {
                throw APIError(status: .notFound, message: "no adapter named '\(name)' is loaded", type: "invalid_request_error",
                               param: "lora_name", code: "not_found")
            }
            return textResponse("Success: LoRA adapter '\(name)' removed successfully.")
        }
    }

    // MARK: - Models

    func models() -> [String: Any] {
        var data: [[String: Any]] = [[
            "id": context.configuration.servedModelName, "object": "model", "created": context.created, "owned_by": "facet",
            "root": context.configuration.servedModelName, "parent": NSNull(), "max_model_len": maxModelLength,
        ]]
        for name in context.store.names {
            data.append(["id": name, "object": "model", "created": context.created, "owned_by": "facet",
                         "root": context.store.entry(name)?.path ?? name, "parent": context.configuration.servedModelName])
        }
        if context.configuration.listAdapterRoot, let root = context.store.root {
            // Adapters that first use would load (`--list-adapter-root`).
            for name in context.store.onDiskNames() {
                data.append(["id": name, "object": "model", "created": context.created, "owned_by": "facet",
                             "root": (root as NSString).appendingPathComponent(name), "parent": context.configuration.servedModelName])
            }
        }
        return ["object": "list", "data": data]
    }

    var maxModelLength: Int { context.contextLength }

    /// Registered adapters (rank, targets and bytes while resident), with request counts,
    /// then those under `--adapter-root` that a request would load.
    func adapters() -> [[String: Any]] {
        var out: [[String: Any]] = []
        for name in context.store.names {
            guard let e = context.store.entry(name) else { continue }
            var o: [String: Any] = ["name": name, "resident": e.adapter != nil, "in_use": e.pins, "loads": e.loads,
                                    "requests": context.metrics.requestCount(name), "source": e.path ?? (e.transient ? "lora_weights without a lora_task_id (dropped when evicted)" : "request bytes")]
            if let a = e.adapter {
                o["rank"] = a.maxRank
                o["targets"] = a.targetRoles
                o["bytes"] = a.byteSize
            }
            out.append(o)
        }
        for name in context.store.onDiskNames() {
            out.append(["name": name, "resident": false, "registered": false, "requests": 0,
                        "source": ((context.store.root ?? "") as NSString).appendingPathComponent(name)])
        }
        return out
    }

    // MARK: - Generation

    struct Prepared {
        var request: PreparedRequest
        var model: String
        var prompts: [[Int32]] { request.prompts }
        var parameters: SamplingParameters { request.parameters }
        var n: Int { request.n }
        var stream: Bool { request.stream }
        var includeUsage: Bool { request.includeUsage }
        var logprobs: Int? { request.logprobs }
        var adapter: String? { request.adapter }
    }

    func generate(_ request: Request, _ ctx: some RequestContext, chat: Bool) async throws -> Response {
        let prepared = try prepare(try await readBody(request, ctx), chat: chat)
        context.metrics.request(model: prepared.model)
        let inFlight = prepared.prompts.count * prepared.n
        guard let ticket = InFlightTicket(count: inFlight, pending: context.pending, limit: context.configuration.maxPendingRequests,
                                          engine: context.engine) else {
            throw APIError(status: .tooManyRequests, message: "the server is at capacity (\(context.configuration.maxPendingRequests) requests in flight); retry shortly",
                           type: "server_error", param: nil, code: "overloaded")
        }
        // Submit every choice; each pins the adapter for its lifetime.
        var streams: [AsyncThrowingStream<EngineEvent, any Error>] = []
        do {
            for prompt in prepared.prompts {
                for i in 0..<prepared.n {
                    var p = prepared.parameters
                    if let seed = p.seed { p.seed = seed &+ UInt64(i) }
                    var engineRequest = EngineRequest(promptIDs: prompt, parameters: p, logprobs: prepared.logprobs)
                    if prepared.request.echo { engineRequest.promptLogprobs = prepared.logprobs }
                    streams.append(try context.submit(engineRequest, adapter: prepared.adapter, ticket: ticket))
                }
            }
        } catch {
            ticket.release()
            throw APIError.from(error)
        }
        let id = (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        let created = Int(Date().timeIntervalSince1970)
        let submitted = streams
        if prepared.stream {
            let renderer = ChunkRenderer(id: id, created: created, model: prepared.model, chat: chat, tokenizer: context.tokenizer)
            // The ticket is released when the body has been written, or, if the client went
            // away before the body started (the closure is then never run), when the body is
            // dropped: either way the slots come back and the requests are cancelled.
            let body = ResponseBody { writer in
                defer { ticket.release() }
                try await Self.stream(submitted, renderer: renderer, includeUsage: prepared.includeUsage, writer: &writer)
            }
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
        }
        defer { ticket.release() }
        var choices: [[String: Any]] = []
        var promptTokens = 0, completionTokens = 0
        for (index, stream) in streams.enumerated() {
            var text = "", reason = "length", tokens: [Int32] = [], logprobs: [TokenLogprob] = [], promptLogprobs: [TokenLogprob] = []
            do {
                for try await event in stream {
                    switch event {
                    case .token(let token, let piece, let lp):
                        text += piece
                        tokens.append(token)
                        if let lp { logprobs.append(lp) }
                    case .finished(let r, let p, let c):
                        reason = r.rawValue
                        completionTokens += c
                        if index % prepared.n == 0 { promptTokens += p }
                    case .promptLogprob(_, let lp):
                        promptLogprobs.append(lp)
                    }
                }
            } catch {
                throw APIError.from(error)
            }
            let renderer = ChunkRenderer(id: id, created: created, model: prepared.model, chat: chat, tokenizer: context.tokenizer)
            var choice: [String: Any] = ["index": index, "finish_reason": reason]
            if chat {
                choice["message"] = ["role": "assistant", "content": text]
                choice["logprobs"] = prepared.logprobs == nil ? NSNull() : ["content": logprobs.map(renderer.chatLogprob)]
            } else if prepared.request.echo {
                // The prompt's own text and tokens first (its first token has no log-probability).
                let promptIDs = prepared.prompts[index / prepared.n]
                choice["text"] = (context.tokenizer?.decode(promptIDs) ?? "") + text
                choice["logprobs"] = prepared.logprobs == nil ? NSNull()
                    : renderer.completionLogprobs(logprobs, echo: (promptIDs, promptLogprobs))
            } else {
                choice["text"] = text
                choice["logprobs"] = prepared.logprobs == nil ? NSNull() : renderer.completionLogprobs(logprobs)
            }
            choices.append(choice)
        }
        return try jsonResponse([
            "id": id, "object": chat ? "chat.completion" : "text_completion", "created": created, "model": prepared.model,
            "choices": choices,
            "usage": ["prompt_tokens": promptTokens, "completion_tokens": completionTokens, "total_tokens": promptTokens + completionTokens],
        ])
    }

    /// Writes Server-Sent Events: one chunk per token and choice, a final chunk with the
    /// finish reason, optional usage, then `[DONE]`. A client that goes away stops the
    /// writes, which ends the streams and cancels the requests in the engine.
    static func stream(_ streams: [AsyncThrowingStream<EngineEvent, any Error>], renderer: ChunkRenderer, includeUsage: Bool,
                       writer: inout any ResponseBodyWriter) async throws {
        func send(_ object: [String: Any]) async throws {
            try await writer.write(try serverSentEvent(object, options: [.sortedKeys, .withoutEscapingSlashes]))
        }
        // Merge the choices' streams into one ordered sequence of (choice, event).
        let (merged, continuation) = AsyncThrowingStream<(Int, EngineEvent), any Error>.makeStream()
        let pump = Task {
            await withTaskGroup(of: Void.self) { group in
                for (i, s) in streams.enumerated() {
                    group.addTask {
                        do {
                            for try await e in s { continuation.yield((i, e)) }
                        } catch {
                            continuation.finish(throwing: error)
                        }
                    }
                }
            }
            continuation.finish()
        }
        defer { pump.cancel() }
        var promptTokens = 0, completionTokens = 0
        if renderer.chat {
            for i in streams.indices { try await send(renderer.chunk(index: i, role: true, text: "", logprob: nil, finish: nil)) }
        }
        do {
            for try await (i, event) in merged {
                switch event {
                case .token(_, let text, let lp):
                    if !text.isEmpty || lp != nil { try await send(renderer.chunk(index: i, role: false, text: text, logprob: lp, finish: nil)) }
                case .finished(let reason, let p, let c):
                    promptTokens += p
                    completionTokens += c
                    try await send(renderer.chunk(index: i, role: false, text: nil, logprob: nil, finish: reason.rawValue))
                case .promptLogprob:
                    break   // echo is refused with stream`
                }
            }
        } catch {
            let api = APIError.from(error)
            try await send(api.json)
        }
        if includeUsage {
            try await send(["id": renderer.id, "object": renderer.chat ? "chat.completion.chunk" : "text_completion", "created": renderer.created,
                            "model": renderer.model, "choices": [Any](),
                            "usage": ["prompt_tokens": promptTokens, "completion_tokens": completionTokens, "total_tokens": promptTokens + completionTokens]])
        }
        try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
        try await writer.finish(nil)
    }

    // MARK: - Request parsing

    func readJSON(_ request: Request, _ ctx: some RequestContext) async throws -> JSONObject {
        try JSONObject(try await readBody(request, ctx))
    }

    /// The whole request body, bounded in size (413) and in time (408).
    func readBody(_ request: Request, _ ctx: some RequestContext, limit: Int? = nil) async throws -> Data {
        let buffer: ByteBuffer
        let limit = limit ?? context.configuration.maxRequestBytes, timeout = context.configuration.requestBodyTimeout
        do {
            // The whole body must arrive within the timeout: a client that stalls mid-body
            // does not hold a handler forever.
            buffer = try await withThrowingTaskGroup(of: ByteBuffer.self) { group in
                group.addTask { try await request.body.collect(upTo: limit) }
                group.addTask {
                    try await Task.sleep(for: .milliseconds(Int(timeout * 1000)))
                    throw APIError(status: .requestTimeout, message: "the request body did not arrive within \(timeout) s",
                                   type: "invalid_request_error", param: nil, code: "request_timeout")
                }
                defer { group.cancelAll() }
                return try await group.next()!
            }
        } catch is NIOTooManyBytesError {
            throw APIError(status: .contentTooLarge, message: "the request body exceeds \(limit) bytes",
                           type: "invalid_request_error", param: nil, code: "request_too_large")
        }
        return Data(buffer.readableBytesView)
    }

    /// vLLM's `/tokenize` (`prompt` text, or chat `messages`) and `/detokenize` (`tokens`),
    /// for the base model or an adapter (which share the model's tokenizer).
    func registerTokenizerRoutes<C: RequestContext>(on group: RouterGroup<C>) {
        group.post("tokenize") { request, ctx in
            let body = try JSONObject(try await readBody(request, ctx))
            try checkModel(try body.string("model"))
            let ids: [Int32]
            do {
                let builder = try context.requestBuilder()
                if let text = try body.string("prompt") {
                    ids = try builder.tokenize(.text(text), addSpecialTokens: try body.bool("add_special_tokens") ?? true, limit: .max)
                } else if body.has("messages") {
                    let decoded = try OpenAIRequestBody.decode(try JSONSerialization.data(withJSONObject: ["model": "", "messages": body.values["messages"]!]))
                    guard case .chat(let messages)? = try decoded.inferenceRequest(chat: true, adapter: nil).prompts.first else {
                        throw APIError.badRequest("'messages' must be a list of messages", param: "messages")
                    }
                    ids = try builder.tokenize(.chat(messages), limit: .max)
                } else {
                    throw APIError.badRequest("'prompt' (text) or 'messages' is required", param: "prompt")
                }
            } catch {
                throw APIError.from(error)
            }
            return try jsonResponse(["count": ids.count, "max_model_len": maxModelLength, "tokens": ids.map(Int.init)])
        }
        group.post("detokenize") { request, ctx in
            let body = try JSONObject(try await readBody(request, ctx))
            try checkModel(try body.string("model"))
            guard let tokenizer = context.tokenizer else { throw APIError.badRequest("the server has no tokenizer", param: "tokens") }
            guard let raw = body.values["tokens"] as? [Any] else { throw APIError.badRequest("'tokens' must be a list of token ids", param: "tokens") }
            let ids = try Self.tokenIDs(raw, at: "tokens", param: "tokens")
            for id in ids where Int(id) >= tokenizer.vocabularySize {
                throw APIError.badRequest("token id \(id) is outside the vocabulary of \(tokenizer.vocabularySize)", param: "tokens")
            }
            return try jsonResponse(["prompt": tokenizer.decode(ids)])
        }
    }

    /// A `model` field, when given, must name the base model or an adapter.
    func checkModel(_ name: String?) throws {
        guard let name, name != context.configuration.servedModelName, context.store.entry(name) == nil else { return }
        throw APIError(status: .notFound, message: "The model '\(name)' does not exist.", type: "invalid_request_error",
                       param: "model", code: "model_not_found")
    }

    /// An adapter under `--adapter-root` named by a request is loaded then (once).
    func loadOnFirstUse(_ name: String) throws -> Bool {
        do {
            return try context.store.registerOnFirstUse(name: name)
        } catch {
            throw APIError.from(error)
        }
    }

    /// Decodes the body into the typed request and prepares it with the one builder.
    func prepare(_ data: Data, chat: Bool) throws -> Prepared {
        let body = try OpenAIRequestBody.decode(data)
        let modelName = body.model
        let adapter: String?
        if modelName == context.configuration.servedModelName {
            adapter = nil
        } else if context.store.entry(modelName) != nil {
            adapter = modelName
        } else if try loadOnFirstUse(modelName) {
            adapter = modelName
        } else {
            throw APIError(status: .notFound, message: "The model '\(modelName)' does not exist.", type: "invalid_request_error",
                           param: "model", code: "model_not_found")
        }
        let request = try body.inferenceRequest(chat: chat, adapter: adapter)
        do {
            return Prepared(request: try context.requestBuilder().prepare(request), model: modelName)
        } catch {
            throw APIError.from(error)
        }
    }
}

/// A request's slots among the server's in-flight requests, and the engine requests it
/// submitted. `release()` (or, failing that, deinit) gives the slots back once and cancels
/// whatever of its requests is still running, however the response ends.
final class InFlightTicket: @unchecked Sendable {
    private let lock = NSLock()
    private let count: Int
    private let pending: Atomic
    private let engine: InferenceEngine
    private var requests: [Int] = []
    private var released = false

    /// Takes `count` slots, or returns nil (taking none) when that would pass `limit`.
    init?(count: Int, pending: Atomic, limit: Int, engine: InferenceEngine) {
        guard pending.add(count) <= limit else {
            _ = pending.add(-count)
            return nil
        }
        self.count = count
        self.pending = pending
        self.engine = engine
    }

    func track(_ id: Int) { lock.withLock { requests.append(id) } }

    func release() {
        let ids: [Int]? = lock.withLock {
            guard !released else { return nil }
            released = true
            return requests
        }
        guard let ids else { return }
        for id in ids { engine.cancel(id: id) }
        _ = pending.add(-count)
    }

    deinit { release() }
}

extension OpenAIRoutes {
    /// Token ids sent as JSON: each must be an integer exactly (not 1.5, not `true`) within
    /// Int32; the vocabulary check comes later, per adapter.
    static func tokenIDs(_ raw: [Any], at field: String, param: String = "prompt") throws -> [Int32] {
        try raw.enumerated().map { i, value in
            guard let v = Checked.jsonInt(value), let id = Int32(exactly: v), id >= 0 else {
                throw APIError.badRequest("\(field)[\(i)] must be a token id (a non-negative integer), found \(value)", param: param)
            }
            return id
        }
    }
}

/// Builds the JSON of responses and stream chunks.
struct ChunkRenderer: Sendable {
    let id: String
    let created: Int
    let model: String
    let chat: Bool
    let tokenizer: Tokenizer?

    func tokenText(_ id: Int32) -> String { tokenizer.map { String(decoding: $0.bytes(of: id), as: UTF8.self) } ?? String(id) }

    func chunk(index: Int, role: Bool, text: String?, logprob: TokenLogprob?, finish: String?) -> [String: Any] {
        var choice: [String: Any] = ["index": index, "finish_reason": finish as Any? ?? NSNull()]
        if chat {
            var delta: [String: Any] = [:]
            if role { delta["role"] = "assistant" }
            if let text { delta["content"] = text }
            choice["delta"] = delta
            choice["logprobs"] = logprob.map { ["content": [chatLogprob($0)]] } ?? NSNull()
        } else {
            choice["text"] = text ?? ""
            choice["logprobs"] = logprob.map { completionLogprobs([$0]) } ?? NSNull()
        }
        return ["id": id, "object": chat ? "chat.completion.chunk" : "text_completion", "created": created, "model": model, "choices": [choice]]
    }

    func chatLogprob(_ lp: TokenLogprob) -> [String: Any] {
        let text = tokenText(lp.token)
        return ["token": text, "logprob": Self.json(lp.logprob), "bytes": Array(text.utf8).map(Int.init),
                "top_logprobs": lp.top.map { t in
                    let s = tokenText(t.0)
                    return ["token": s, "logprob": Self.json(t.1), "bytes": Array(s.utf8).map(Int.init)] as [String: Any]
                }]
    }

    /// A log-probability as JSON can carry it: -inf (and NaN, which only a broken model
    /// gives) become -9999, the floor other OpenAI-compatible servers use.
    static func json(_ logprob: Float) -> Double { logprob.isFinite ? Double(logprob) : -9999 }

    /// OpenAI's legacy completion logprobs; with `echo`, the prompt's tokens come first:
    /// the first with null log-probability and alternatives, as OpenAI shapes them.
    func completionLogprobs(_ lps: [TokenLogprob], echo: (ids: [Int32], logprobs: [TokenLogprob])? = nil) -> [String: Any] {
        var tokens: [String] = [], values: [Any] = [], tops: [Any] = [], offsets: [Int] = []
        var offset = 0
        func add(_ token: Int32, _ lp: TokenLogprob?) {
            let text = tokenText(token)
            tokens.append(text)
            offsets.append(offset)
            offset += text.count
            values.append(lp.map { Self.json($0.logprob) as Any } ?? NSNull())
            tops.append(lp.map { lp in Dictionary(lp.top.map { (tokenText($0.0), Self.json($0.1)) }, uniquingKeysWith: { a, _ in a }) as Any }
                        ?? NSNull())
        }
        if let echo {
            for (i, id) in echo.ids.enumerated() { add(id, i == 0 ? nil : (i - 1 < echo.logprobs.count ? echo.logprobs[i - 1] : nil)) }
        }
        for lp in lps { add(lp.token, lp) }
        return ["tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets]
    }
}

/// A JSON object (or array) as a response.
func jsonResponse(_ object: Any, status: HTTPResponse.Status = .ok) throws -> Response {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

func textResponse(_ text: String) -> Response {
    Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: text)))
}
