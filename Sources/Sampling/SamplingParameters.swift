import Tensors

/// How one request picks its next tokens. Validated once, where it enters (CLI or API).
package struct SamplingParameters: Sendable, Equatable, Codable {
    /// 0 means greedy (argmax).
    package var temperature: Float = 1
    /// Keep only the k most likely tokens; 0 disables. 1 is greedy.
    package var topK: Int = 0
    /// Keep the smallest set whose probability reaches p; 1 (or 0, as in TensorRT-LLM) disables.
    package var topP: Float = 1
    /// Drop tokens whose probability is below `minP` times the top probability; 0 disables.
    package var minP: Float = 0
    /// Divides positive (multiplies negative) logits of tokens already seen; 1 disables.
    package var repetitionPenalty: Float = 1
    /// Seed of this request's own random stream; nil takes one from the system.
    package var seed: UInt64?
    package var maxTokens: Int = 16
    /// Generation stops after a token whose text completes one of these strings, which are
    /// removed from the output.
    package var stop: [String] = []
    /// Token ids that end generation (the model's EOS unless `ignoreEOS`).
    package var stopTokenIDs: [Int] = []
    package var ignoreEOS: Bool = false
    /// Token sequences never to generate (TensorRT-LLM's `bad_words_list`): when the output
    /// so far ends with all but the last token of one, its last token is excluded.
    package var badWordIDs: [[Int32]] = []
    /// Token sequences that end generation once the output ends with one (TensorRT-LLM's
    /// `stop_words_list`); the sequence's tokens stay in the output ids.
    package var stopTokenSequences: [[Int32]] = []

    package init() {}

    package var isGreedy: Bool { temperature == 0 || topK == 1 }

    package func validate() throws {
        func bad(_ field: String, _ message: String) -> FacetError {
            FacetError(.invalidArgument, message, field: field)
        }
        guard temperature >= 0, temperature.isFinite else { throw bad("temperature", "must be a finite number >= 0, got \(temperature)") }
        guard topK >= 0 else { throw bad("top_k", "must be >= 0, got \(topK)") }
        guard topP >= 0, topP <= 1 else { throw bad("top_p", "must be in [0, 1], got \(topP)") }
        guard minP >= 0, minP <= 1 else { throw bad("min_p", "must be in [0, 1], got \(minP)") }
        guard repetitionPenalty > 0, repetitionPenalty.isFinite else { throw bad("repetition_penalty", "must be > 0, got \(repetitionPenalty)") }
        guard maxTokens >= 0 else { throw bad("max_tokens", "must be >= 0, got \(maxTokens)") }
        guard !stop.contains(where: \.isEmpty) else { throw bad("stop", "stop strings must not be empty") }
        guard !badWordIDs.contains(where: \.isEmpty) else { throw bad("bad_words", "bad words must not be empty") }
        guard !stopTokenSequences.contains(where: \.isEmpty) else { throw bad("stop_words_list", "stop words must not be empty") }
    }
}
