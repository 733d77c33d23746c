import Foundation
import Sampling
import Tensors
import Tokenization

/// A generation request, whatever protocol it arrived by (OpenAI routes, the CLI, and
/// KServe next): prompts as text, chat messages or token ids; the adapter; sampling; stop
/// strings and stop token ids; bad words; limits; log-probabilities; streaming.
/// `RequestBuilder` validates it and turns it into token ids and sampling parameters.
package struct InferenceRequest: Sendable {
    package enum Prompt: Sendable, Equatable {
        /// Text, tokenized with the tokenizer's special tokens (e.g. BOS) unless
        /// `addSpecialTokens` is false.
        case text(String)
        /// Chat messages, rendered with the tokenizer's chat template.
        case chat([ChatTemplate.Message])
        /// Token ids, used as given.
        case tokens([Int32])
    }

    package var prompts: [Prompt]
    /// The adapter's name (nil: the base model).
    package var adapter: String?
    /// Temperature, top-k/p, min-p, repetition penalty, seed, stop strings, ignore-EOS.
    /// `maxTokens` and the stop token ids are set by the builder from the fields below.
    package var sampling = SamplingParameters()
    /// Tokens to generate; nil: the protocol's default (see `RequestBuilder`).
    package var maxTokens: Int?
    /// Token ids that end generation besides the model's EOS.
    package var stopTokenIDs: [Int] = []
    /// Words never to generate, as text (tokenized without special tokens) or as ids.
    package var badWords: [String] = []
    package var badWordIDs: [[Int32]] = []
    package var addSpecialTokens = true
    /// Choices per prompt (each with seed + i when a seed is given).
    package var n = 1
    /// Top alternatives reported with each token's log-probability (nil: none).
    package var logprobs: Int?
    package var stream = false
    package var includeUsage = false
    /// Return the prompt before the completion, and with `logprobs` each prompt token's
    /// log-probability (OpenAI's legacy `echo`).
    package var echo = false

    package init(prompts: [Prompt], adapter: String? = nil) {
        self.prompts = prompts
        self.adapter = adapter
    }
}

/// A request turned into what the engine runs: one token sequence per prompt and one
/// set of sampling parameters.
package struct PreparedRequest: Sendable {
    package var prompts: [[Int32]]
    package var parameters: SamplingParameters
    package var adapter: String?
    package var n: Int
    package var logprobs: Int?
    package var stream: Bool
    package var includeUsage: Bool
    /// The request was a chat (its responses are chat completions).
    package var chat: Bool
    package var echo = false
}

/// The one place a request is validated and tokenized. Every error is a `FacetError`
/// naming the request field and a remedy.
package struct RequestBuilder: Sendable {
    package let tokenizer: Tokenizer?
    /// The model's end-of-sequence ids (added to every request's stop token ids).
    package let eosTokenIDs: [Int]
    /// The longest prompt + completion.
    package let contextLength: Int
    package var parseSpecialTokensInContent = false
    /// Limits on one request.
    package var maxPromptsTimesN = 64
    package var maxN = 16
    package var maxStopStrings = 16
    package var maxLogprobs = 20
    package var maxBadWords = 256
    /// Completions default to 16 tokens (as OpenAI's legacy API); chats to the rest of the
    /// context.
    package var defaultCompletionTokens = 16

    package init(tokenizer: Tokenizer?, eosTokenIDs: [Int], contextLength: Int) {
        self.tokenizer = tokenizer
        self.eosTokenIDs = eosTokenIDs
        self.contextLength = contextLength
    }

    func bad(_ field: String, _ message: String, _ remedy: String? = nil) -> FacetError {
        FacetError(.invalidArgument, message, field: field, remedy: remedy)
    }

    /// A prompt's token ids: text with or without the tokenizer's special tokens, chat
    /// messages through the chat template (parsed once per tokenizer), ids as given.
    /// The work is bounded by the context: a prompt that cannot fit (its byte length alone
    /// says so, or its ids pass the context while they are made) is refused without
    /// tokenizing the rest, and a cancelled request stops tokenizing.
    /// `limit`: the most ids accepted (default: the context less one generated token);
    /// `/tokenize` passes `Int.max` (its body size bounds the work) and is still cancellable.
    package func tokenize(_ prompt: InferenceRequest.Prompt, addSpecialTokens: Bool = true, limit: Int? = nil) throws -> [Int32] {
        // A prompt must leave room for one generated token.
        let limit = limit ?? max(0, contextLength - 1)
        func tooLong(_ field: String) -> FacetError {
            FacetError(.capacity, "This model's maximum context length is \(contextLength) tokens, and the prompt alone has more than \(limit).",
                       field: field, remedy: "shorten the prompt")
        }
        switch prompt {
        case .tokens(let ids):
            for id in ids where id < 0 { throw bad("prompt", "token id \(id) is negative") }
            return ids
        case .text(let text):
            guard let tokenizer else { throw bad("prompt", "the model has no tokenizer, so prompts must be token ids") }
            do {
                return try tokenizer.encode(text, addSpecialTokens: addSpecialTokens, limit: limit)
            } catch is TokenLimitExceeded {
                throw tooLong("prompt")
            }
        case .chat(let messages):
            guard let tokenizer else { throw bad("messages", "the model has no tokenizer for chat messages") }
            guard !messages.isEmpty else { throw bad("messages", "'messages' must be a non-empty list") }
            do {
                return try tokenizer.encodeChat(messages, addGenerationPrompt: true, parseSpecialInContent: parseSpecialTokensInContent,
                                                limit: limit)
            } catch is TokenLimitExceeded {
                throw tooLong("messages")
            }
        }
    }

    package func prepare(_ r: InferenceRequest) throws -> PreparedRequest {
        guard !r.prompts.isEmpty else { throw bad("prompt", "no prompt given", "send a prompt or messages") }
        guard r.n >= 1 && r.n <= maxN else { throw bad("n", "'n' must be between 1 and \(maxN), got \(r.n)") }
        guard r.prompts.count * r.n <= maxPromptsTimesN else {
            throw bad("prompt", "at most \(maxPromptsTimesN) prompts x n per request, got \(r.prompts.count * r.n)", "split the request")
        }
        guard r.sampling.stop.count <= maxStopStrings else { throw bad("stop", "at most \(maxStopStrings) stop strings") }
        if let k = r.logprobs, k < 0 || k > maxLogprobs {
            throw bad("logprobs", "must be between 0 and \(maxLogprobs), got \(k)")
        }
        let isChat = r.prompts.contains { if case .chat = $0 { true } else { false } }
        if isChat && r.prompts.count != 1 { throw bad("messages", "a chat request has one conversation") }

        var prompts: [[Int32]] = []
        for (i, prompt) in r.prompts.enumerated() {
            prompts.append(try tokenize(prompt, addSpecialTokens: r.addSpecialTokens))
            guard !prompts[i].isEmpty else { throw bad(isChat ? "messages" : "prompt", "prompt \(i) is empty", "send at least one token") }
        }

        var p = r.sampling
        let longest = prompts.map(\.count).max() ?? 0
        if longest >= contextLength {
            throw FacetError(.capacity, "This model's maximum context length is \(contextLength) tokens, and the prompt alone has \(longest).",
                             field: isChat ? "messages" : "prompt", remedy: "shorten the prompt")
        }
        p.maxTokens = r.maxTokens ?? (isChat ? contextLength - longest : defaultCompletionTokens)
        guard p.maxTokens >= 0 else { throw bad("max_tokens", "must be >= 0, got \(p.maxTokens)") }
        // Checked: a max_tokens near Int.max must be refused, not overflow the sum.
        let (total, overflow) = longest.addingReportingOverflow(p.maxTokens)
        if overflow || total > contextLength {
            if overflow {
                throw FacetError(.capacity, "This model's maximum context length is \(contextLength) tokens; max_tokens \(p.maxTokens) is far beyond it.",
                                 field: "max_tokens", remedy: "lower max_tokens to at most \(contextLength - longest)")
            }
            throw FacetError(.capacity, "This model's maximum context length is \(contextLength) tokens. However, you requested \(longest + p.maxTokens) tokens (\(longest) in the prompt, \(p.maxTokens) for the completion).",
                             field: "max_tokens", remedy: "lower max_tokens")
        }
        for id in r.stopTokenIDs where id < 0 || id > Int(Int32.max) {
            throw bad("stop_token_ids", "token id \(id) is not between 0 and \(Int32.max)", "send token ids of the model's vocabulary")
        }
        p.stopTokenIDs = Set(eosTokenIDs + r.stopTokenIDs).sorted()
        guard r.badWords.count + r.badWordIDs.count <= maxBadWords else {
            throw bad("bad_words", "at most \(maxBadWords) bad words per request, got \(r.badWords.count + r.badWordIDs.count)")
        }
        guard p.stopTokenSequences.count <= maxBadWords, p.stopTokenSequences.allSatisfy({ $0.count <= 1024 }),
              r.badWordIDs.allSatisfy({ $0.count <= 1024 }) else {
            throw bad("stop_words_list", "at most \(maxBadWords) stop or bad word sequences of at most 1024 ids each")
        }
        for word in r.badWords where word.utf8.count > 1024 {
            throw bad("bad_words", "a bad word is \(word.utf8.count) bytes; at most 1024", "ban shorter words")
        }
        for word in p.stop where word.utf8.count > 1024 {
            throw bad("stop", "a stop string is \(word.utf8.count) bytes; at most 1024", "use shorter stop strings")
        }
        var badWordIDs = r.badWordIDs
        for word in r.badWords {
            guard let tokenizer else { throw bad("bad_words", "the model has no tokenizer: give bad words as token ids") }
            let ids = tokenizer.encode(word, addSpecialTokens: false)
            guard !ids.isEmpty else { throw bad("bad_words", "a bad word is empty") }
            badWordIDs.append(ids)
        }
        p.badWordIDs = badWordIDs
        do {
            try p.validate()
        } catch let e as FacetError {
            throw e
        }
        if r.echo && isChat { throw bad("echo", "'echo' applies to completions, not chat") }
        if r.echo && r.stream { throw bad("echo", "'echo' with 'stream' is not supported", "send echo requests without stream") }
        return PreparedRequest(prompts: prompts, parameters: p, adapter: r.adapter, n: r.n, logprobs: r.logprobs, stream: r.stream,
                               includeUsage: r.includeUsage, chat: isChat, echo: r.echo)
    }
}
