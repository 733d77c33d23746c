import Foundation
import Kernels

/// A small, fast, seedable generator (SplitMix64): each request owns one, so a seed gives
/// the same tokens whatever else runs in the batch.
package struct SeededRandom: RandomNumberGenerator, Sendable, Codable {
    private var state: UInt64
    package init(seed: UInt64) { state = seed }
    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 24 bits.
    package mutating func unit() -> Float { Float(next() >> 40) / Float(1 << 24) }
}

/// Picks tokens from logits for one request: repetition penalty, temperature, top-k,
/// top-p, min-p, then a draw from this request's own random stream.
package struct Sampler: Sendable {
    package let parameters: SamplingParameters
    private var random: SeededRandom

    package init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        random = SeededRandom(seed: parameters.seed ?? UInt64.random(in: 0...UInt64.max))
    }

    /// Index of the largest logit (the first one on ties, like torch.argmax).
    package static func argmax(_ logits: [Float]) -> Int {
        logits.withUnsafeBufferPointer { argmax($0) }
    }

    package static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        var bestValue = -Float.infinity
        for (i, v) in logits.enumerated() where v > bestValue {
            best = i
            bestValue = v
        }
        return best
    }

    /// Applies the repetition penalty over `history` (HF semantics: each distinct token once).
    package static func penalize(_ logits: inout [Float], history: [Int32], penalty: Float) {
        guard penalty != 1 else { return }
        var seen = Set<Int32>()
        for t in history where seen.insert(t).inserted && Int(t) < logits.count && t >= 0 {
            let i = Int(t)
            logits[i] = logits[i] > 0 ? logits[i] / penalty : logits[i] * penalty
        }
    }

    /// The indices of the `k` largest values, largest first (ties: lower index first), in
    /// O(n log k): a bounded min-heap instead of sorting all n.
    package static func topIndices(_ values: UnsafeBufferPointer<Float>, _ k: Int) -> [Int] {
        let k = min(k, values.count)
        guard k > 0 else { return [] }
        // "a ranks below b": smaller value, or equal value and larger index.
        func below(_ a: Int, _ b: Int) -> Bool { values[a] < values[b] || (values[a] == values[b] && a > b) }
        var heap: [Int] = []
        heap.reserveCapacity(k)
        func siftDown(_ start: Int) {
            var i = start
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < heap.count && below(heap[l], heap[m]) { m = l }
                if r < heap.count && below(heap[r], heap[m]) { m = r }
                if m == i { return }
                heap.swapAt(i, m)
                i = m
            }
        }
        for i in 0..<values.count {
            if heap.count < k {
                heap.append(i)
                var c = heap.count - 1
                while c > 0, below(heap[c], heap[(c - 1) / 2]) {
                    heap.swapAt(c, (c - 1) / 2)
                    c = (c - 1) / 2
                }
            } else if below(heap[0], i) {
                heap[0] = i
                siftDown(0)
            }
        }
        return heap.sorted { below($1, $0) }
    }

    /// The kept part of the distribution: tokens with unnormalized weights
    /// `exp((logit - max) / temperature)`, and the weights' total. After top-k, top-p keeps
    /// the smallest most-likely prefix whose weight reaches `topP` of the total and min-p
    /// drops tokens below `minP` times the top weight. `sorted`: tokens are in decreasing
    /// order (ties: lower index first); otherwise in index order (no cut needed an order),
    /// and `tokens == nil` means every token, `weights[i]` being token i's.
    ///
    /// Only what a cut needs is sorted: top-k selects k with a heap; top-p first sorts the
    /// tokens above a weight threshold, which is a prefix of the full order whenever their
    /// weight already reaches the target (else the threshold is lowered). With the default
    /// parameters nothing is sorted: O(vocabulary).
    static func pool(_ logits: UnsafeBufferPointer<Float>, _ p: SamplingParameters) -> (tokens: [Int]?, weights: [Float], total: Float, sorted: Bool) {
        let invT = 1 / max(p.temperature, 1e-6)
        let topP = p.topP > 0 && p.topP < 1 ? p.topP : 1
        if p.topK > 0 && p.topK < logits.count {
            let order = topIndices(logits, p.topK)
            let maxLogit = logits[order[0]]
            let weights = order.map { expf((logits[$0] - maxLogit) * invT) }
            return cut(order, weights, target: topP < 1 ? topP * weights.reduce(0, +) : nil, minP: p.minP)
        }
        guard let maxLogit = logits.max() else { return ([], [], 0, true) }
        var w = logits.map { ($0 - maxLogit) * invT }
        w.withUnsafeMutableBufferPointer { VectorMath.expShifted($0.baseAddress!, count: $0.count, shift: 0) }
        var total: Float = 0
        for v in w { total += v }
        if topP >= 1 {
            guard p.minP > 0 else { return (nil, w, total, false) }
            let kept = w.indices.filter { w[$0] >= p.minP }
            let weights = kept.map { w[$0] }
            return (kept, weights, weights.reduce(0, +), false)
        }
        // Top-p: sort only the tokens above a threshold, lowered until they hold the target.
        let target = topP * total
        for threshold: Float in [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-9, 1e-12, 0] {
            let above = threshold > 0 ? w.indices.filter { w[$0] >= threshold } : Array(w.indices)
            var mass: Float = 0
            for i in above { mass += w[i] }
            if mass >= target || threshold == 0 {
                let order = above.sorted { w[$0] > w[$1] || (w[$0] == w[$1] && $0 < $1) }
                return cut(order, order.map { w[$0] }, target: target, minP: p.minP)
            }
        }
        return (nil, w, total, false)   // not reached: the last threshold (0) takes every token
    }

    /// Top-p and min-p cuts over tokens already in decreasing order: keep the shortest
    /// prefix whose weight reaches `target` (nil: all), then drop weights below `minP` times
    /// the first.
    private static func cut(_ order: [Int], _ weights: [Float], target: Float?, minP: Float) -> (tokens: [Int]?, weights: [Float], total: Float, sorted: Bool) {
        var keep = order.count
        if let target {
            var cumulative: Float = 0
            for (n, v) in weights.enumerated() {
                cumulative += v
                if cumulative >= target {
                    keep = n + 1
                    break
                }
            }
        }
        if minP > 0 {
            let threshold = minP * weights[0]
            keep = min(keep, max(1, weights.prefix(keep).firstIndex(where: { $0 < threshold }) ?? keep))
        }
        let kept = Array(weights.prefix(keep))
        return (Array(order.prefix(keep)), kept, kept.reduce(0, +), true)
    }

    /// The probability distribution actually sampled from, as (token, probability) pairs
    /// sorted by decreasing probability; exposed for tests and logprobs.
    package static func candidates(_ logits: [Float], _ p: SamplingParameters) -> [(Int, Float)] {
        let pool = logits.withUnsafeBufferPointer { Self.pool($0, p) }
        var pairs = zip(pool.tokens ?? Array(pool.weights.indices), pool.weights.map { $0 / pool.total }).map { ($0, $1) }
        if !pool.sorted { pairs.sort { $0.1 > $1.1 || ($0.1 == $1.1 && $0.0 < $1.0) } }
        return pairs
    }

    /// Chooses the next token given the logits and the tokens so far (prompt + output).
    package mutating func next(logits input: [Float], history: [Int32]) -> Int {
        input.withUnsafeBufferPointer { next(logits: $0, history: history) }
    }

    package mutating func next(logits input: UnsafeBufferPointer<Float>, history: [Int32]) -> Int {
        let banned = Self.banned(parameters.badWordIDs, history: history)
        guard (parameters.repetitionPenalty != 1 && !history.isEmpty) || !banned.isEmpty else { return choose(input) }
        var logits = Array(input)
        Self.penalize(&logits, history: history, penalty: parameters.repetitionPenalty)
        for t in banned where t >= 0 && Int(t) < logits.count { logits[Int(t)] = -.infinity }
        return logits.withUnsafeBufferPointer { choose($0) }
    }

    /// The tokens `badWords` forbid next: the last token of each sequence whose other
    /// tokens end `history` (a one-token bad word is always forbidden).
    package static func banned(_ badWords: [[Int32]], history: [Int32]) -> [Int32] {
        badWords.compactMap { word in
            let prefix = word.dropLast()
            return history.count >= prefix.count && history.suffix(prefix.count).elementsEqual(prefix) ? word.last : nil
        }
    }

    private mutating func choose(_ logits: UnsafeBufferPointer<Float>) -> Int {
        if parameters.isGreedy { return Self.argmax(logits) }
        let pool = Self.pool(logits, parameters)
        let u = random.unit() * pool.total
        var cumulative: Float = 0
        for (n, w) in pool.weights.enumerated() {
            cumulative += w
            if u < cumulative { return pool.tokens?[n] ?? n }
        }
        // Rounding left u at the very top: the last kept token.
        return pool.tokens?.last ?? max(pool.weights.count - 1, 0)
    }
}
