import Engine
import Foundation
import Sampling
import Tokenization

/// OpenAI's `/v1/completions` and `/v1/chat/completions` request bodies as Codable types
/// (with vLLM's extensions: top_k, min_p, repetition_penalty, ignore_eos, stop_token_ids,
/// bad_words). Decoding is strict: a wrong type, a non-integer where an integer belongs
/// (1.5, true) or a number out of range is a 400 naming the field. Fields that would change
/// the result but that Facet does not support are refused by name, never ignored.
struct OpenAIRequestBody: Decodable {
    enum PromptField: Decodable {
        case text(String), texts([String]), ids([Int32]), idLists([[Int32]])
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { self = .text(s); return }
            if let list = try? c.decode([String].self) { self = .texts(list); return }
            if let ids = try? c.decode([Int32].self) { self = .ids(ids); return }
            if let lists = try? c.decode([[Int32]].self) { self = .idLists(lists); return }
            throw DecodingError.dataCorruptedError(in: c, debugDescription:
                "'prompt' must be a string, a list of strings, or token ids (integers from 0 to 2^31-1)")
        }
    }

    struct StringOrList: Decodable {
        var values: [String]
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { values = [s]; return }
            values = try c.decode([String].self)
        }
    }

    struct Message: Decodable {
        struct Part: Decodable {
            var type: String
            var text: String?
        }
        enum Content: Decodable {
            case text(String), parts([Part])
            init(from decoder: any Decoder) throws {
                let c = try decoder.singleValueContainer()
                if let s = try? c.decode(String.self) { self = .text(s); return }
                self = .parts(try c.decode([Part].self))
            }
        }
        var role: String
        var content: Content?
    }

    struct StreamOptions: Decodable { var include_usage: Bool? }
    struct ResponseFormat: Decodable { var type: String }

    var model: String
    var prompt: PromptField?
    var messages: [Message]?
    var max_tokens: Int?
    var max_completion_tokens: Int?
    var temperature: Double?
    var top_p: Double?
    var top_k: Int?
    var min_p: Double?
    var repetition_penalty: Double?
    var seed: Int64?
    var stop: StringOrList?
    var stop_token_ids: [Int32]?
    var bad_words: [String]?
    var n: Int?
    var best_of: Int?
    var stream: Bool?
    var stream_options: StreamOptions?
    var logprobs: LogprobsField?
    var top_logprobs: Int?
    var ignore_eos: Bool?
    var add_special_tokens: Bool?
    var echo: Bool?
    var suffix: String?
    var frequency_penalty: Double?
    var presence_penalty: Double?
    var response_format: ResponseFormat?

    /// `logprobs` is an integer in completions and a boolean in chat.
    enum LogprobsField: Decodable {
        case count(Int), enabled(Bool)
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let b = try? c.decode(Bool.self) { self = .enabled(b); return }
            self = .count(try c.decode(Int.self))
        }
    }

    /// Fields other servers accept that would change the result here if they were ignored.
    /// Each is refused unless it has its neutral value.
    static let unsupported: [(field: String, neutral: @Sendable (Any) -> Bool, remedy: String)] = [
        ("lora_task_id", { _ in false }, "name the adapter in 'model' (KServe's lora_task_id belongs to the /v2 routes)"),
        ("lora_weights", { _ in false }, "load the adapter with /v1/load_lora_adapter and name it in 'model'"),
        ("lora_config", { _ in false }, "load the adapter with /v1/load_lora_adapter and name it in 'model'"),
        ("logit_bias", { ($0 as? [String: Any])?.isEmpty ?? ($0 is NSNull) }, "drop it, or use bad_words to ban tokens"),
        ("tools", { ($0 as? [Any])?.isEmpty ?? ($0 is NSNull) }, "tool calling is not supported; drop 'tools'"),
        ("tool_choice", { ($0 as? String) == "none" || $0 is NSNull }, "tool calling is not supported"),
        ("guided_json", { $0 is NSNull }, "structured output is not supported"),
        ("guided_regex", { $0 is NSNull }, "structured output is not supported"),
        ("guided_choice", { $0 is NSNull }, "structured output is not supported"),
        ("min_tokens", { ($0 as? Int) == 0 || $0 is NSNull }, "drop it (every request may stop at EOS)"),
        ("length_penalty", { ($0 as? Double) == 1 || $0 is NSNull }, "beam search is not supported"),
        ("use_beam_search", { ($0 as? Bool) == false || $0 is NSNull }, "beam search is not supported"),
    ]

    /// Decodes a body, refusing unsupported fields by name.
    static func decode(_ data: Data) throws -> OpenAIRequestBody {
        let object = try JSONObject(data).values   // a JSON object, or a 400 saying why not
        for (field, neutral, remedy) in unsupported {
            if let value = object[field], !neutral(value) {
                throw APIError.badRequest("'\(field)' is not supported (remedy: \(remedy))", param: field)
            }
        }
        do {
            return try JSONDecoder().decode(OpenAIRequestBody.self, from: data)
        } catch let DecodingError.typeMismatch(type, context) {
            throw Self.fieldError(context, "must be \(Self.describe(type))")
        } catch let DecodingError.valueNotFound(type, context) {
            throw Self.fieldError(context, "must be \(Self.describe(type)), not null")
        } catch let DecodingError.keyNotFound(key, context) {
            throw Self.fieldError(context, "'\(key.stringValue)' is required", key: key.stringValue)
        } catch let DecodingError.dataCorrupted(context) {
            // An integer too large for 64 bits fails the whole decode with no coding path
            // ("not valid JSON"): name the field instead.
            if context.codingPath.isEmpty, let key = object.keys.sorted().first(where: { Self.isHugeNumber(object[$0]) }) {
                throw APIError.badRequest("'\(key)' is out of range (remedy: send an integer that fits in 64 bits)", param: key)
            }
            throw Self.fieldError(context, context.debugDescription)
        }
    }

    /// A JSON number whose magnitude no 64-bit integer holds.
    static func isHugeNumber(_ value: Any?) -> Bool {
        guard let n = value as? NSNumber, !(value is Bool) else { return false }
        return !(abs(n.doubleValue) < Double(Int64.max))
    }

    static func describe(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type, is Int32.Type, is Int64.Type: "an integer"
        case is Double.Type: "a number"
        case is Bool.Type: "a boolean"
        case is String.Type: "a string"
        default: "of the documented type"
        }
    }

    static func fieldError(_ context: DecodingError.Context, _ message: String, key: String? = nil) -> APIError {
        let path = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
        let param = key ?? context.codingPath.first?.stringValue
        let name = path.isEmpty ? (key ?? "body") : path.joined(separator: ".").replacingOccurrences(of: ".[", with: "[")
        return APIError.badRequest("'\(name)' " + (message.hasPrefix("'") ? "is invalid: " + message : message), param: param)
    }

    /// The typed request, for the route (`chat`) it came by; `maxModelLength` bounds
    /// max_tokens as OpenAI reports it.
    func inferenceRequest(chat: Bool, adapter: String?) throws -> InferenceRequest {
        if suffix != nil { throw APIError.badRequest("'suffix' is not supported", param: "suffix") }
        for (name, value) in [("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)] {
            if let v = value, v != 0 { throw APIError.badRequest("'\(name)' is not supported (use repetition_penalty)", param: name) }
        }
        if let format = response_format, format.type != "text" {
            throw APIError.badRequest("only response_format type 'text' is supported", param: "response_format")
        }
        if let best = best_of, best != (n ?? 1) { throw APIError.badRequest("'best_of' is not supported", param: "best_of") }

        var prompts: [InferenceRequest.Prompt]
        if chat {
            guard let messages, !messages.isEmpty else { throw APIError.badRequest("'messages' must be a non-empty list", param: "messages") }
            var list: [ChatTemplate.Message] = []
            for (i, m) in messages.enumerated() {
                var content = ""
                switch m.content {
                case .text(let s): content = s
                case .parts(let parts):
                    for part in parts {
                        guard part.type == "text", let t = part.text else {
                            throw APIError.badRequest("messages[\(i)].content: only text parts are supported", param: "messages")
                        }
                        content += t
                    }
                case nil:
                    // Only an assistant's turn may come without content (as OpenAI's API has it).
                    guard m.role == "assistant" else {
                        throw APIError.badRequest("'messages[\(i)].content' is required for a \(m.role) message (remedy: give it a content string)", param: "messages")
                    }
                }
                list.append(.init(role: m.role, content: content))
            }
            prompts = [.chat(list)]
        } else {
            switch prompt {
            case .text(let s): prompts = [.text(s)]
            case .texts(let list) where !list.isEmpty: prompts = list.map { .text($0) }
            case .ids(let ids) where !ids.isEmpty: prompts = [.tokens(ids)]
            case .idLists(let lists) where !lists.isEmpty: prompts = lists.map { .tokens($0) }
            default: throw APIError.badRequest("'prompt' must be a string, a list of strings, or token ids", param: "prompt")
            }
        }
        var r = InferenceRequest(prompts: prompts, adapter: adapter)
        var p = SamplingParameters()
        p.temperature = Float(temperature ?? 1)
        p.topP = Float(top_p ?? 1)
        p.topK = top_k == -1 ? 0 : (top_k ?? 0)
        p.minP = Float(min_p ?? 0)
        p.repetitionPenalty = Float(repetition_penalty ?? 1)
        p.seed = seed.map { UInt64(bitPattern: $0) }
        p.stop = stop?.values ?? []
        p.ignoreEOS = ignore_eos ?? false
        r.sampling = p
        r.maxTokens = chat ? (max_completion_tokens ?? max_tokens) : max_tokens
        r.stopTokenIDs = (stop_token_ids ?? []).map(Int.init)
        r.badWords = bad_words ?? []
        r.addSpecialTokens = add_special_tokens ?? true
        r.n = n ?? 1
        r.echo = echo ?? false
        r.stream = stream ?? false
        r.includeUsage = stream_options?.include_usage ?? false
        let logprobsParam = chat ? "top_logprobs" : "logprobs"
        switch (chat, logprobs) {
        case (true, .enabled(true)?): r.logprobs = top_logprobs ?? 0
        case (true, .enabled(false)?), (_, nil): r.logprobs = nil
        case (false, .count(let k)?): r.logprobs = k
        case (true, .count?): throw APIError.badRequest("'logprobs' must be a boolean in chat (use top_logprobs)", param: "logprobs")
        case (false, .enabled?): throw APIError.badRequest("'logprobs' must be an integer in completions", param: "logprobs")
        }
        if let k = r.logprobs, k < 0 || k > 20 {
            throw APIError.badRequest("'\(logprobsParam)' must be between 0 and 20", param: logprobsParam)
        }
        return r
    }
}
