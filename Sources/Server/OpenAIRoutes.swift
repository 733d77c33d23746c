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
        return ["object": "list", "data": data]
    }

    var maxModelLength: Int { min(context.engine.configuration.limits.maxModelLength, context.model.config.maxPositionEmbeddings) }

    // MARK: - Generation

    struct Prepared {
        var prompts: [[Int32]]
        var parameters: SamplingParameters
        var n: Int
        var stream: Bool
        var includeUsage: Bool
        var logprobs: Int?
        var model: String
        var adapter: String?
    }

    func generate(_ request: Request, _ ctx: some RequestContext, chat: Bool) async throws -> Response {
        let body = try await readJSON(request, ctx)
        let prepared = try prepare(body, chat: chat)
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
                    let lease = try prepared.adapter.map { try context.store.acquire($0) }
                    do {
                        let (requestID, stream) = try context.engine.submitTracked(
                            EngineRequest(promptIDs: prompt, parameters: p, adapter: lease, logprobs: prepared.logprobs))
                        ticket.track(requestID)
                        streams.append(stream)
                    } catch {
                        if let lease { context.store.release(lease) }
                        throw error
                    }
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
            var text = "", reason = "length", tokens: [Int32] = [], logprobs: [TokenLogprob] = []
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
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
            var buffer = ByteBuffer(string: "data: ")
            buffer.writeBytes(data)
            buffer.writeString("\n\n")
            try await writer.write(buffer)
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
        let buffer: ByteBuffer
        let limit = context.configuration.maxRequestBytes, timeout = context.configuration.requestBodyTimeout
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
            throw APIError(status: .contentTooLarge, message: "the request body exceeds \(context.configuration.maxRequestBytes) bytes",
                           type: "invalid_request_error", param: nil, code: "request_too_large")
        }
        return try JSONObject(Data(buffer.readableBytesView))
    }

    func prepare(_ body: JSONObject, chat: Bool) throws -> Prepared {
        // Refuse what we would otherwise silently ignore.
        for key in ["presence_penalty", "frequency_penalty"] {
            if let v = try body.double(key), v != 0 { throw APIError.badRequest("'\(key)' is not supported (use repetition_penalty)", param: key) }
        }
        if let bias = body.values["logit_bias"], !(bias is NSNull), !((bias as? [String: Any])?.isEmpty ?? false) {
            throw APIError.badRequest("'logit_bias' is not supported", param: "logit_bias")
        }
        if try body.bool("echo") == true { throw APIError.badRequest("'echo' is not supported", param: "echo") }
        if body.has("suffix") { throw APIError.badRequest("'suffix' is not supported", param: "suffix") }
        if let tools = body.values["tools"] as? [Any], !tools.isEmpty { throw APIError.badRequest("'tools' are not supported", param: "tools") }
        if let format = try body.object("response_format"), try format.string("type") != "text" {
            throw APIError.badRequest("only response_format type 'text' is supported", param: "response_format")
        }
        if let best = try body.int("best_of"), best != (try body.int("n") ?? 1) {
            throw APIError.badRequest("'best_of' is not supported", param: "best_of")
        }

        guard let modelName = try body.string("model") else { throw APIError.badRequest("'model' is required", param: "model") }
        let adapter: String?
        if modelName == context.configuration.servedModelName {
            adapter = nil
        } else if context.store.entry(modelName) != nil {
            adapter = modelName
        } else {
            throw APIError(status: .notFound, message: "The model '\(modelName)' does not exist.", type: "invalid_request_error",
                           param: "model", code: "model_not_found")
        }

        var p = SamplingParameters()
        p.temperature = Float(try body.double("temperature") ?? 1)
        p.topP = Float(try body.double("top_p") ?? 1)
        p.topK = try body.int("top_k") ?? 0
        if p.topK == -1 { p.topK = 0 }
        p.minP = Float(try body.double("min_p") ?? 0)
        p.repetitionPenalty = Float(try body.double("repetition_penalty") ?? 1)
        if let seed = try body.int("seed") { p.seed = UInt64(bitPattern: Int64(seed)) }
        p.stop = try body.strings("stop") ?? []
        p.ignoreEOS = try body.bool("ignore_eos") ?? false
        guard p.stop.count <= 16 else { throw APIError.badRequest("at most 16 stop strings", param: "stop") }
        let n = try body.int("n") ?? 1
        guard n >= 1 && n <= 16 else { throw APIError.badRequest("'n' must be between 1 and 16", param: "n") }
        let stream = try body.bool("stream") ?? false
        let includeUsage = try body.object("stream_options")?.bool("include_usage") ?? false

        var logprobs: Int?
        let logprobsParam = chat ? "top_logprobs" : "logprobs"
        if chat {
            if try body.bool("logprobs") == true { logprobs = try body.int("top_logprobs") ?? 0 }
        } else if let k = try body.int("logprobs") {
            logprobs = k
        }
        if let k = logprobs, k < 0 || k > 20 { throw APIError.badRequest("'\(logprobsParam)' must be between 0 and 20", param: logprobsParam) }

        guard let tokenizer = context.tokenizer else { throw APIError.badRequest("the server has no tokenizer", param: "prompt") }
        let eos = Set(context.model.config.eosTokenIDs + tokenizer.eosIDs.map(Int.init))
        p.stopTokenIDs = eos.sorted()
        var prompts: [[Int32]] = []
        if chat {
            guard let raw = body.values["messages"] as? [Any], !raw.isEmpty else {
                throw APIError.badRequest("'messages' must be a non-empty list", param: "messages")
            }
            var messages: [ChatTemplate.Message] = []
            for (i, item) in raw.enumerated() {
                guard let m = item as? [String: Any], let role = m["role"] as? String else {
                    throw APIError.badRequest("messages[\(i)] needs a 'role'", param: "messages")
                }
                var content = ""
                if let s = m["content"] as? String {
                    content = s
                } else if let parts = m["content"] as? [Any] {
                    for part in parts {
                        guard let d = part as? [String: Any], d["type"] as? String == "text", let t = d["text"] as? String else {
                            throw APIError.badRequest("messages[\(i)].content: only text parts are supported", param: "messages")
                        }
                        content += t
                    }
                } else if !(m["content"] is NSNull) && m["content"] != nil {
                    throw APIError.badRequest("messages[\(i)].content must be a string or a list of text parts", param: "messages")
                }
                messages.append(.init(role: role, content: content))
            }
            do {
                prompts = [try tokenizer.encodeChat(messages, addGenerationPrompt: true,
                                                    parseSpecialInContent: context.configuration.parseSpecialTokensInContent)]
            } catch {
                throw APIError.from(error)
            }
            let maxTokens = try body.int("max_completion_tokens") ?? body.int("max_tokens")
            p.maxTokens = maxTokens ?? max(1, maxModelLength - prompts[0].count)
        } else {
            let raw = body.values["prompt"]
            if let s = raw as? String {
                prompts = [tokenizer.encode(s, addSpecialTokens: true)]
            } else if let list = raw as? [String], !list.isEmpty {
                prompts = list.map { tokenizer.encode($0, addSpecialTokens: true) }
            } else if let ids = raw as? [Any], !ids.isEmpty, !(ids.first is String), !(ids.first is [Any]) {
                prompts = [try Self.tokenIDs(ids, at: "prompt")]
            } else if let lists = raw as? [[Any]], !lists.isEmpty {
                prompts = try lists.enumerated().map { try Self.tokenIDs($0.element, at: "prompt[\($0.offset)]") }
            } else {
                throw APIError.badRequest("'prompt' must be a string, a list of strings, or token ids", param: "prompt")
            }
            guard prompts.count * n <= 64 else { throw APIError.badRequest("at most 64 prompts x n per request", param: "prompt") }
            p.maxTokens = try body.int("max_tokens") ?? 16
        }
        for prompt in prompts where prompt.isEmpty { throw APIError.badRequest("a prompt is empty", param: "prompt") }
        let longest = prompts.map(\.count).max() ?? 0
        if longest + p.maxTokens > maxModelLength {
            // Blame the prompt when it alone leaves no room for one token, else max_tokens.
            let param = longest >= maxModelLength ? (chat ? "messages" : "prompt") : "max_tokens"
            throw APIError.badRequest("This model's maximum context length is \(maxModelLength) tokens. However, you requested \(longest + p.maxTokens) tokens (\(longest) in the prompt, \(p.maxTokens) for the completion).",
                                      param: param, code: "context_length_exceeded")
        }
        do {
            try p.validate()
        } catch let e as FacetError {
            throw APIError.badRequest(e.message, param: e.field)
        }
        return Prepared(prompts: prompts, parameters: p, n: n, stream: stream, includeUsage: includeUsage, logprobs: logprobs,
                        model: modelName, adapter: adapter)
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
    static func tokenIDs(_ raw: [Any], at param: String) throws -> [Int32] {
        try raw.enumerated().map { i, value in
            guard let v = Checked.jsonInt(value), let id = Int32(exactly: v), id >= 0 else {
                throw APIError.badRequest("\(param)[\(i)] must be a token id (a non-negative integer), found \(value)", param: "prompt")
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

    func completionLogprobs(_ lps: [TokenLogprob]) -> [String: Any] {
        var offsets: [Int] = []
        var offset = 0
        for lp in lps {
            offsets.append(offset)
            offset += tokenText(lp.token).count
        }
        return [
            "tokens": lps.map { tokenText($0.token) },
            "token_logprobs": lps.map { Self.json($0.logprob) },
            "top_logprobs": lps.map { lp in Dictionary(lp.top.map { (tokenText($0.0), Self.json($0.1)) }, uniquingKeysWith: { a, _ in a }) },
            "text_offset": offsets,
        ]
    }
}

func jsonResponse(_ object: [String: Any], status: HTTPResponse.Status = .ok) throws -> Response {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

func textResponse(_ text: String) -> Response {
    Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: text)))
}
