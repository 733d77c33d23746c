import Engine
import Foundation
import Loading
import Sampling
import Tensors
import Testing
import TestSupport
import Tokenization

/// The one request builder: every protocol's request goes through it, and its errors name
/// the field.
@Suite struct RequestBuilderTests {
    static let tokenizer = try! TokenizerLoader.loadHuggingFace(directory: Fixtures.path("tokenizers/qwen2_bytelevel"))!

    func builder(context: Int = 64) -> RequestBuilder {
        RequestBuilder(tokenizer: Self.tokenizer, eosTokenIDs: [7], contextLength: context)
    }

    func field(_ r: InferenceRequest, context: Int = 64) -> String? {
        do {
            _ = try builder(context: context).prepare(r)
            return nil
        } catch let e as FacetError {
            return e.field
        } catch {
            return "unexpected \(error)"
        }
    }

    @Test func preparesTextTokensStopIDsAndBadWords() throws {
        var r = InferenceRequest(prompts: [.text("Hello world"), .tokens([1, 2, 3])], adapter: "fr")
        r.stopTokenIDs = [9, 7]
        r.badWords = ["world"]
        r.badWordIDs = [[4, 5]]
        r.maxTokens = 5
        let p = try builder().prepare(r)
        #expect(p.prompts[0] == Self.tokenizer.encode("Hello world", addSpecialTokens: true))
        #expect(p.prompts[1] == [1, 2, 3])
        #expect(p.parameters.stopTokenIDs == [7, 9])
        #expect(p.parameters.badWordIDs == [[4, 5], Self.tokenizer.encode("world", addSpecialTokens: false)])
        #expect(p.parameters.maxTokens == 5 && p.adapter == "fr" && !p.chat)
    }

    @Test func defaultsFollowTheProtocol() throws {
        #expect(try builder().prepare(InferenceRequest(prompts: [.tokens([1, 2])])).parameters.maxTokens == 16)
        var r = InferenceRequest(prompts: [.tokens([1, 2])])
        r.maxTokens = 0
        #expect(try builder().prepare(r).parameters.maxTokens == 0)
    }

    @Test func errorsNameTheField() {
        var r = InferenceRequest(prompts: [.tokens([1])])
        r.n = 0
        #expect(field(r) == "n")
        r = InferenceRequest(prompts: [.tokens([1])])
        r.maxTokens = 100
        #expect(field(r) == "max_tokens")
        #expect(field(InferenceRequest(prompts: [.tokens(Array(repeating: 1, count: 64))])) == "prompt")
        #expect(field(InferenceRequest(prompts: [.tokens([])])) == "prompt")
        #expect(field(InferenceRequest(prompts: [])) == "prompt")
        r = InferenceRequest(prompts: [.tokens([1])])
        r.logprobs = 21
        #expect(field(r) == "logprobs")
        r = InferenceRequest(prompts: [.tokens([1])])
        r.sampling.topP = 2
        #expect(field(r) == "top_p")
        r = InferenceRequest(prompts: [.tokens([1])])
        r.badWords = [""]
        #expect(field(r) == "bad_words")
        r = InferenceRequest(prompts: [.tokens([1])])
        r.stopTokenIDs = [-3]
        #expect(field(r) == "stop_token_ids")
        #expect(field(InferenceRequest(prompts: [.chat([.init(role: "hacker", content: "x")])])) == "messages")
    }

    @Test func badWordsAreNeverSampled() {
        // Token 2 is the most likely; banned alone, or after token 5 as the pair [5, 2].
        let logits: [Float] = [0, 1, 9, 3, 0, 0]
        var p = SamplingParameters()
        p.temperature = 0
        p.badWordIDs = [[2]]
        var s = Sampler(p)
        #expect(s.next(logits: logits, history: [1]) == 3)
        p.badWordIDs = [[5, 2]]
        s = Sampler(p)
        #expect(s.next(logits: logits, history: [1]) == 2)
        #expect(s.next(logits: logits, history: [1, 5]) == 3)
    }
}
