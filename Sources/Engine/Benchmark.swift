import Adapters
import Foundation
import Llama
import PagedKV
import Sampling
import Tensors

/// Throughput measurements of the forward pass (what `facet bench` reports).
public struct Benchmark {
    public let model: LlamaModel

    public init(model: LlamaModel) { self.model = model }

    public struct Result: Sendable, Codable {
        public var name: String
        public var tokensPerSecond: Double
        public var tokens: Int
        public var seconds: Double
        public init(name: String, tokensPerSecond: Double, tokens: Int, seconds: Double) {
            self.name = name
            self.tokensPerSecond = tokensPerSecond
            self.tokens = tokens
            self.seconds = seconds
        }
    }

    /// `count` random adapters of rank `rank` on every linear layer (small weights), for
    /// measuring the cost of mixed-adapter batches.
    public func syntheticAdapters(count: Int, rank: Int, seed: UInt64 = 1) -> [LoRAAdapter] {
        let c = model.config
        var random = SeededRandom(seed: seed)
        func next() -> Float { (random.unit() - 0.5) * 0.02 }
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
    public func prefill(length: Int, chunk: Int = 512, repeats: Int = 3) throws -> Result {
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
    /// sequences use `adapters` round-robin (none: base model).
    public func decode(batchSize: Int, steps: Int, prompt: Int = 32, adapters: [LoRAAdapter] = [], name: String? = nil) throws -> Result {
        let bs = 16
        let perSeq = (prompt + steps + bs) / bs + 1
        let kv = model.makeKVStorage(blocks: perSeq * batchSize, blockSize: bs)
        let tables = (0..<batchSize).map { s in (0..<perSeq).map { Int32(s * perSeq + $0) } }
        let deltas = adapters.isEmpty ? nil : AdapterSet(adapters: adapters, baseVocabulary: model.config.vocabSize)
        func slot(_ s: Int) -> Int32 { adapters.isEmpty ? -1 : Int32(s % adapters.count) }
        var batch = ForwardBatch(blockTables: tables)
        for s in 0..<batchSize {
            batch.append(sequence: s, tokens: (0..<prompt).map { Int32(($0 * 31 + s * 7 + 1) % model.config.vocabSize) },
                         startPosition: 0, adapterSlot: slot(s), wantLogits: true)
        }
        var logits = try model.forward(batch, kv: kv, deltas: deltas)
        let start = Date()
        for step in 0..<steps {
            var next = ForwardBatch(blockTables: tables)
            for s in 0..<batchSize {
                let token = Int32(logits[s].indices.max { logits[s][$0] < logits[s][$1] } ?? 0)
                next.append(sequence: s, tokens: [token], startPosition: prompt + step, adapterSlot: slot(s), wantLogits: true)
            }
            logits = try model.forward(next, kv: kv, deltas: deltas)
        }
        let seconds = Date().timeIntervalSince(start)
        return Result(name: name ?? "decode batch \(batchSize)", tokensPerSecond: Double(batchSize * steps) / seconds,
                      tokens: batchSize * steps, seconds: seconds)
    }
}
