import Sampling
import Testing

@Suite struct SamplerTests {
    let logits: [Float] = [1.0, 3.0, 2.5, -1.0, 2.9]

    func params(_ edit: (inout SamplingParameters) -> Void) -> SamplingParameters {
        var p = SamplingParameters()
        edit(&p)
        return p
    }

    @Test func greedyPicksTheFirstMaximum() {
        var s = Sampler(params { $0.temperature = 0 })
        #expect(s.next(logits: logits, history: []) == 1)
        #expect(Sampler.argmax([2, 5, 5, 1]) == 1)
    }

    @Test func sameSeedSameTokensDifferentSeedsDiffer() {
        let p = params { $0.temperature = 1.5; $0.seed = 42 }
        var a = Sampler(p), b = Sampler(p)
        let xs = (0..<50).map { _ in a.next(logits: logits, history: []) }
        let ys = (0..<50).map { _ in b.next(logits: logits, history: []) }
        #expect(xs == ys)
        var c = Sampler(params { $0.temperature = 1.5; $0.seed = 43 })
        #expect((0..<50).map { _ in c.next(logits: logits, history: []) } != xs)
        #expect(Set(xs).count > 1)
    }

    @Test func topKTopPMinPRestrictTheCandidates() {
        #expect(Sampler.candidates(logits, params { $0.topK = 2 }).map(\.0) == [1, 4])
        let nucleus = Sampler.candidates(logits, params { $0.topP = 0.5 }).map(\.0)
        #expect(nucleus == [1, 4])
        let minP = Sampler.candidates(logits, params { $0.minP = 0.5 }).map(\.0)
        #expect(minP == [1, 4, 2])
        let probs = Sampler.candidates(logits, params { _ in }).map(\.1)
        #expect(abs(probs.reduce(0, +) - 1) < 1e-5)
    }

    @Test func repetitionPenaltyFollowsTransformers() {
        var l: [Float] = [2, -2, 1]
        Sampler.penalize(&l, history: [0, 1, 1], penalty: 2)
        #expect(l == [1, -4, 1])
    }

    @Test func invalidParametersAreRejectedByName() {
        for (field, p) in [("temperature", params { $0.temperature = -1 }), ("top_p", params { $0.topP = 1.5 }),
                           ("top_k", params { $0.topK = -2 }), ("repetition_penalty", params { $0.repetitionPenalty = 0 }),
                           ("max_tokens", params { $0.maxTokens = -1 }), ("stop", params { $0.stop = [""] })] {
            #expect(throws: (any Error).self, "\(field)") { try p.validate() }
        }
    }
}
