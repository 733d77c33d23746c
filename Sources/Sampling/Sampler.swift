import Foundation

/// A small, fast, seedable generator (SplitMix64): each request owns one, so a seed gives
/// the same tokens whatever else runs in the batch.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 24 bits.
    public mutating func unit() -> Float { Float(next() >> 40) / Float(1 << 24) }
}

/// Picks tokens from logits for one request: repetition penalty, temperature, top-k,
/// top-p, min-p, then a draw from this request's own random stream.
public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    private var random: SeededRandom

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        random = SeededRandom(seed: parameters.seed ?? UInt64.random(in: 0...UInt64.max))
    }

    /// Index of the largest logit (the first one on ties, like torch.argmax).
    public static func argmax(_ logits: [Float]) -> Int {
        var best = 0
        var bestValue = -Float.infinity
        for (i, v) in logits.enumerated() where v > bestValue {
            best = i
            bestValue = v
        }
        return best
    }

    /// Applies the repetition penalty over `history` (HF semantics: each distinct token once).
    public static func penalize(_ logits: inout [Float], history: [Int32], penalty: Float) {
        guard penalty != 1 else { return }
        var seen = Set<Int32>()
        for t in history where seen.insert(t).inserted && Int(t) < logits.count && t >= 0 {
            let i = Int(t)
            logits[i] = logits[i] > 0 ? logits[i] / penalty : logits[i] * penalty
        }
    }

    /// The probability distribution actually sampled from, as (token, probability) pairs
    /// sorted by decreasing probability; exposed for tests and logprobs.
    public static func candidates(_ logits: [Float], _ p: SamplingParameters) -> [(Int, Float)] {
        let t = max(p.temperature, 1e-6)
        var order = Array(logits.indices)
        order.sort { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
        if p.topK > 0, p.topK < order.count { order.removeLast(order.count - p.topK) }
        let maxLogit = logits[order[0]]
        var probs = order.map { expf((logits[$0] - maxLogit) / t) }
        var total = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= total }
        var keep = probs.count
        if p.topP > 0, p.topP < 1 {
            var cumulative: Float = 0
            for (i, q) in probs.enumerated() {
                cumulative += q
                if cumulative >= p.topP {
                    keep = i + 1
                    break
                }
            }
        }
        if p.minP > 0 {
            let threshold = p.minP * probs[0]
            keep = min(keep, max(1, probs.prefix(keep).firstIndex(where: { $0 < threshold }) ?? keep))
        }
        probs.removeLast(probs.count - keep)
        order.removeLast(order.count - keep)
        total = probs.reduce(0, +)
        return zip(order, probs.map { $0 / total }).map { ($0, $1) }
    }

    /// Chooses the next token given the logits and the tokens so far (prompt + output).
    public mutating func next(logits input: [Float], history: [Int32]) -> Int {
        var logits = input
        Self.penalize(&logits, history: history, penalty: parameters.repetitionPenalty)
        if parameters.isGreedy { return Self.argmax(logits) }
        let pool = Self.candidates(logits, parameters)
        let u = random.unit()
        var cumulative: Float = 0
        for (token, q) in pool {
            cumulative += q
            if u < cumulative { return token }
        }
        return pool.last?.0 ?? Self.argmax(logits)
    }
}
