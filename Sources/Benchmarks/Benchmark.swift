import Adapters
import Foundation
import Kernels
import Llama
import PagedKV
import Sampling
import Tensors

/// Throughput measurements of the forward pass (what `facet bench` reports).
package struct Benchmark {
    package let model: LlamaModel

    package init(model: LlamaModel) { self.model = model }

    package struct Result: Sendable, Codable {
        package var name: String
        package var tokensPerSecond: Double
        package var tokens: Int
        package var seconds: Double
        /// The numerics mode measured (nil: not mode-specific, e.g. adapter loads).
        package var mode: String?
        /// Throughput relative to the same batch without adapters.
        package var ratioToBase: Double?
        /// The per-round ratios behind `ratioToBase` when it was measured in rounds.
        package var ratioRounds: [Double]?
        package init(name: String, tokensPerSecond: Double, tokens: Int, seconds: Double) {
            self.name = name
            self.tokensPerSecond = tokensPerSecond
            self.tokens = tokens
            self.seconds = seconds
        }
    }

    /// `count` random adapters of rank `rank` on every linear layer (small weights), for
    /// measuring the cost of mixed-adapter batches. `precision` is the precision their
    /// values were saved in (bf16/f16: as an adapter trained or saved in 16 bits).
    package func syntheticAdapters(count: Int, rank: Int, precision: LowRankMatrix.Precision = .f32, seed: UInt64 = 1) -> [LoRAAdapter] {
        let c = model.config
        var random = SeededRandom(seed: seed)
        func next() -> Float {
            let v = (random.unit() - 0.5) * 0.02
            switch precision {
            case .f32: return v
            case .f16: return HalfFloat.fromF16(HalfFloat.toF16(v))
            case .bf16: return HalfFloat.fromBF16(HalfFloat.toBF16(v))
            }
        }
        let q = c.numHeads * c.headDim, kv = c.numKVHeads * c.headDim
        let dims: [LinearRole: (Int, Int)] = [.q: (c.hiddenSize, q), .k: (c.hiddenSize, kv), .v: (c.hiddenSize, kv), .o: (q, c.hiddenSize),
                                              .gate: (c.hiddenSize, c.intermediateSize), .up: (c.hiddenSize, c.intermediateSize),
                                              .down: (c.intermediateSize, c.hiddenSize)]
        return (0..<count).map { i in
            var a = LoRAAdapter(name: "synthetic-\(i)", digest: "synthetic-\(seed)-\(i)", layers: c.numLayers)
            for l in 0..<c.numLayers {
                for (role, (inDim, outDim)) in dims {
                    a.pairs[l][role] = LoRAPair(a: Matrix(rows: rank, cols: inDim, data: (0..<(rank * inDim)).map { _ in next() }),
                                                b: Matrix(rows: outDim, cols: rank, data: (0..<(outDim * rank)).map { _ in next() }), scale: 2)
                }
            }
            return a
        }
    }

    /// Prefill of one prompt of `length` tokens, in chunks of `chunk`.
    package func prefill(length: Int, chunk: Int = 512, repeats: Int = 3) throws -> Result {
        let bs = 16
        let kv = model.makeKVStorage(blocks: (length + bs) / bs + 1, blockSize: bs)
        let table = (0..<Int32((length + bs) / bs + 1)).map { $0 }
        let tokens = (0..<length).map { Int32(($0 * 7919 + 13) % model.config.vocabSize) }
        var best = Double.infinity
        for _ in 0..<repeats {
            let start = Date()
            var pos = 0
            while pos < length {
                let n = min(chunk, length - pos)
                var batch = ForwardBatch(blockTables: [table])
                batch.append(sequence: 0, tokens: Array(tokens[pos..<(pos + n)]), startPosition: pos, adapterSlot: -1, wantLogits: pos + n == length)
                _ = try model.forward(batch, kv: kv)
                pos += n
            }
            best = min(best, Date().timeIntervalSince(start))
        }
        return Result(name: "prefill \(length)", tokensPerSecond: Double(length) / best, tokens: length, seconds: best)
    }

    /// `steps` decode steps of `batchSize` sequences after a `prompt`-token prefill; the
    /// sequences use `adapters` round-robin (none: base model), with the base model as one
    /// more choice in the rotation when `includeBase`.
    package func decode(batchSize: Int, steps: Int, prompt: Int = 32, adapters: [LoRAAdapter] = [], includeBase: Bool = false,
                       name: String? = nil) throws -> Result {
        let run = try DecodeRun(model: model, batchSize: batchSize, steps: steps, prompt: prompt, adapters: adapters, includeBase: includeBase)
        var seconds = 0.0
        for _ in 0..<steps { seconds += try run.step() }
        return Result(name: name ?? "decode batch \(batchSize)", tokensPerSecond: Double(batchSize * steps) / seconds,
                      tokens: batchSize * steps, seconds: seconds)
    }

    /// A mixed-adapter decode measured against the base model in the same time window:
    /// the base batch and the adapter batch take steps in turn (base, mixed, base, ...), so
    /// the machine's drift (tens of percent over minutes here) touches both alike. Each of
    /// `rounds` rounds gives one ratio of the two total times; the result is the round with
    /// the median ratio, and all ratios are kept.
    package func decodeAgainstBase(batchSize: Int, steps: Int, prompt: Int = 32, adapters: [LoRAAdapter], includeBase: Bool = false,
                                  rounds: Int, name: String) throws -> Result {
        var paired: [(ratio: Double, result: Result)] = []
        for _ in 0..<max(rounds, 1) {
            let base = try DecodeRun(model: model, batchSize: batchSize, steps: steps, prompt: prompt, adapters: [], includeBase: false)
            let mixed = try DecodeRun(model: model, batchSize: batchSize, steps: steps, prompt: prompt, adapters: adapters, includeBase: includeBase)
            var baseSeconds = 0.0, mixedSeconds = 0.0
            for _ in 0..<steps {
                baseSeconds += try base.step()
                mixedSeconds += try mixed.step()
            }
            let tokens = batchSize * steps
            paired.append((baseSeconds / mixedSeconds,
                           Result(name: name, tokensPerSecond: Double(tokens) / mixedSeconds, tokens: tokens, seconds: mixedSeconds)))
        }
        paired.sort { $0.ratio < $1.ratio }
        var median = paired[paired.count / 2].result
        median.ratioToBase = paired[paired.count / 2].ratio
        median.ratioRounds = paired.map(\.ratio)
        return median
    }
}

/// A decode batch ready to step: `batchSize` sequences prefilled with a `prompt`-token
/// prompt, each step feeding back every sequence's greedy token.
final class DecodeRun {
    let model: LlamaModel
    let batchSize: Int, prompt: Int
    let kv: KVStorage
    let tables: [[Int32]]
    let deltas: AdapterSet?
    let slots: [Int32]
    let logits = Logits()
    var position = 0

    init(model: LlamaModel, batchSize: Int, steps: Int, prompt: Int, adapters: [LoRAAdapter], includeBase: Bool) throws {
        self.model = model
        self.batchSize = batchSize
        self.prompt = prompt
        let bs = 16
        let perSeq = (prompt + steps + bs) / bs + 1
        kv = model.makeKVStorage(blocks: perSeq * batchSize, blockSize: bs)
        tables = (0..<batchSize).map { s in (0..<perSeq).map { Int32(s * perSeq + $0) } }
        deltas = adapters.isEmpty ? nil : AdapterSet(adapters: adapters, baseVocabulary: model.config.vocabSize)
        slots = (0..<batchSize).map { s in
            if adapters.isEmpty { return -1 }
            return includeBase ? Int32(s % (adapters.count + 1)) - 1 : Int32(s % adapters.count)
        }
        // The prompts in chunks of 512 positions (a long context is prefilled as a server would).
        let chunk = 512
        for start in stride(from: 0, to: max(prompt, 1), by: chunk) {
            let end = min(prompt, start + chunk)
            var batch = ForwardBatch(blockTables: tables)
            for s in 0..<batchSize {
                batch.append(sequence: s, tokens: (start..<end).map { Int32(($0 * 31 + s * 7 + 1) % model.config.vocabSize) },
                             startPosition: start, adapterSlot: slots[s], wantLogits: end == prompt)
            }
            try model.forward(batch, kv: kv, deltas: deltas, into: logits)
        }
    }

    /// One decode step; returns its wall time in seconds.
    func step() throws -> Double {
        let start = Date()
        var next = ForwardBatch(blockTables: tables)
        for s in 0..<batchSize {
            let token = Int32(Sampler.argmax(logits[s]))
            next.append(sequence: s, tokens: [token], startPosition: prompt + position, adapterSlot: slots[s], wantLogits: true)
        }
        try model.forward(next, kv: kv, deltas: deltas, into: logits)
        position += 1
        return Date().timeIntervalSince(start)
    }
}

/// The accuracy cost of a faster numerics mode, measured against the default one.
package struct NumericsAccuracy: Sendable, Codable {
    /// Prompts whose free-running greedy continuation is token-for-token the reference's.
    package var identicalContinuations: Int
    package var prompts: Int
    /// Positions (teacher-forced on the reference continuation) whose argmax agrees.
    package var tokenAgreement: Double
    /// Mean KL(reference || candidate) of the next-token distributions, in nats.
    package var meanKL: Double
    package var maxKL: Double
}

extension Benchmark {
    /// Greedy agreement and KL divergence of `candidate` against `reference` (same
    /// weights, another compute mode) over `prompts`, `newTokens` tokens each.
    package static func accuracy(reference: LlamaModel, candidate: LlamaModel, prompts: [[Int32]], newTokens: Int) throws -> NumericsAccuracy {
        var identical = 0, agree = 0, positions = 0
        var klSum = 0.0, klMax = 0.0
        for prompt in prompts {
            let refTokens = try greedy(reference, prompt: prompt, newTokens: newTokens)
            let candTokens = try greedy(candidate, prompt: prompt, newTokens: newTokens)
            if refTokens == candTokens { identical += 1 }
            // Teacher-forced: both models read prompt + reference continuation.
            let sequence = prompt + refTokens.dropLast()
            let p = try allLogits(reference, sequence, from: prompt.count - 1)
            let q = try allLogits(candidate, sequence, from: prompt.count - 1)
            for (a, b) in zip(p, q) {
                let kl = klDivergence(a, b)
                klSum += kl
                klMax = max(klMax, kl)
                if argmax(a) == argmax(b) { agree += 1 }
                positions += 1
            }
        }
        return NumericsAccuracy(identicalContinuations: identical, prompts: prompts.count,
                                tokenAgreement: positions == 0 ? 1 : Double(agree) / Double(positions),
                                meanKL: positions == 0 ? 0 : klSum / Double(positions), maxKL: klMax)
    }

    static func argmax(_ v: [Float]) -> Int { v.indices.max { v[$0] < v[$1] || (v[$0] == v[$1] && $0 > $1) } ?? 0 }

    /// KL(softmax(a) || softmax(b)) in Double.
    static func klDivergence(_ a: [Float], _ b: [Float]) -> Double {
        func logSoftmax(_ v: [Float]) -> [Double] {
            let m = Double(v.max() ?? 0)
            let lse = m + log(v.reduce(0.0) { $0 + exp(Double($1) - m) })
            return v.map { Double($0) - lse }
        }
        let la = logSoftmax(a), lb = logSoftmax(b)
        var kl = 0.0
        for i in la.indices { kl += exp(la[i]) * (la[i] - lb[i]) }
        return max(0, kl)
    }

    static func greedy(_ model: LlamaModel, prompt: [Int32], newTokens: Int) throws -> [Int32] {
        let bs = 16, blocks = (prompt.count + newTokens) / bs + 2
        let kv = model.makeKVStorage(blocks: blocks, blockSize: bs)
        let table = (0..<Int32(blocks)).map { $0 }
        var batch = ForwardBatch(blockTables: [table])
        batch.append(sequence: 0, tokens: prompt, startPosition: 0, adapterSlot: -1, wantLogits: true)
        var out: [Int32] = []
        var logits = try model.forward(batch, kv: kv)
        while out.count < newTokens {
            let token = Int32(argmax(logits[0]))
            out.append(token)
            var next = ForwardBatch(blockTables: [table])
            next.append(sequence: 0, tokens: [token], startPosition: prompt.count + out.count - 1, adapterSlot: -1, wantLogits: true)
            logits = try model.forward(next, kv: kv)
        }
        return out
    }

    /// Next-token logits after each position `from...` of `sequence`, in one prefill.
    static func allLogits(_ model: LlamaModel, _ sequence: [Int32], from: Int) throws -> [[Float]] {
        let bs = 16, blocks = sequence.count / bs + 2
        let kv = model.makeKVStorage(blocks: blocks, blockSize: bs)
        var batch = ForwardBatch(blockTables: [(0..<Int32(blocks)).map { $0 }])
        batch.append(sequence: 0, tokens: sequence, startPosition: 0, adapterSlot: -1, wantLogits: false)
        batch.logitRows = Array(from..<sequence.count)
        return try model.forward(batch, kv: kv)
    }
}
