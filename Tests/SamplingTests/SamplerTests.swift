import Foundation
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

    /// The naive reference twin of `candidates`: sort the whole vocabulary, then cut.
    func referenceCandidates(_ logits: [Float], _ p: SamplingParameters) -> [(Int, Float)] {
        let t = Double(max(p.temperature, 1e-6))
        var order = Array(logits.indices).sorted { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
        if p.topK > 0, p.topK < order.count { order = Array(order.prefix(p.topK)) }
        let m = Double(logits[order[0]])
        var probs = order.map { Foundation.exp((Double(logits[$0]) - m) / t) }
        let total = probs.reduce(0, +)
        probs = probs.map { $0 / total }
        var keep = probs.count
        if p.topP > 0, p.topP < 1 {
            var c = 0.0
            for (i, q) in probs.enumerated() {
                c += q
                if c >= Double(p.topP) { keep = i + 1; break }
            }
        }
        if p.minP > 0 { keep = min(keep, max(1, probs.prefix(keep).firstIndex(where: { $0 < Double(p.minP) * probs[0] }) ?? keep)) }
        let kept = probs.prefix(keep).reduce(0, +)
        return (0..<keep).map { (order[$0], Float(probs[$0] / kept)) }
    }

    /// The fast pool (heap top-k, thresholded top-p, no sort by default) keeps exactly the
    /// reference's tokens with the same probabilities, over peaked and flat vocabularies.
    @Test func fastCandidatesMatchTheFullSortReference() {
        var rng = SeededRandom(seed: 5)
        for trial in 0..<24 {
            let n = [50, 1000, 5000][trial % 3]
            let spread: Float = trial % 2 == 0 ? 4 : 25
            let logits = (0..<n).map { _ in (rng.unit() - 0.5) * spread }
            let settings: [(Int, Float, Float, Float)] = [(0, 1, 0, 1), (0, 0.9, 0, 0.7), (40, 1, 0, 1.3), (20, 0.8, 0.05, 1), (0, 0.5, 0.1, 0.5), (0, 1, 0.2, 1)]
            let (k, topP, minP, temperature) = settings[trial % settings.count]
            let p = params { $0.topK = k; $0.topP = topP; $0.minP = minP; $0.temperature = temperature }
            let fast = Sampler.candidates(logits, p), want = referenceCandidates(logits, p)
            #expect(fast.map(\.0) == want.map(\.0), "trial \(trial)")
            #expect(zip(fast, want).allSatisfy { abs($0.1 - $1.1) <= 1e-5 * max(1, $1.1) + 1e-7 }, "trial \(trial)")
        }
        let values: [Float] = [3, 1, 3, 2, 9, -1]
        #expect(values.withUnsafeBufferPointer { Sampler.topIndices($0, 3) } == [4, 0, 2])
        #expect(values.withUnsafeBufferPointer { Sampler.topIndices($0, 10) } == [4, 0, 2, 3, 1, 5])
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
