import Adapters
import Engine
import Foundation
import Kernels
import Llama
import Loading
import Sampling
import Tensors
import TensorParallel
import Testing
import TestSupport

/// Tensor parallelism with the ranks as threads of this process (`ThreadRanks`): the same
/// shards, step broadcasts and collectives as under mpirun, compared with the one-process
/// model and with the PEFT goldens.
@Suite(.serialized) struct TensorParallelTests {
    static let (model, _) = try! ModelLoader.load(path: Fixtures.tinyModel)
    nonisolated(unsafe) static let golden = try! Fixtures.json("tiny_llama_untied/golden.json")

    static func adapter(_ name: String) throws -> LoRAAdapter {
        try AdapterLoader.load(directory: Fixtures.path("tiny_llama_untied/adapters/\(name)"), base: model.config,
                               baseEmbedding: model.weights.embedding)
    }

    static func greedy(_ n: Int) -> SamplingParameters {
        var p = SamplingParameters()
        p.temperature = 0
        p.maxTokens = n
        return p
    }

    /// Runs `body` with rank 0's model of a `size`-rank group whose other ranks are threads
    /// executing its steps; they stop when `body` returns.
    static func withRanks<R>(_ size: Int, _ body: (LlamaModel, RankGroup) throws -> R) throws -> R {
        let groups = ThreadRanks.group(size: size).map { RankGroup(transport: $0) }
        let models = try groups.map { try $0.shardModel(model) }
        let done = DispatchGroup()
        for k in 1..<size {
            done.enter()
            let thread = Thread {
                do { try groups[k].runSteps(model: models[k]) } catch { Issue.record("rank \(k): \(error)") }
                done.leave()
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
        defer {
            groups[0].shutdown()
            done.wait()
        }
        return try body(models[0], groups[0])
    }

    @Test func shardsHoldTheirPartOfEveryWeight() throws {
        try Self.withRanks(2) { m, _ in
            let c = m.config
            #expect(m.localHeads == 2 && m.localKVHeads == 1 && m.localIntermediate == 86)
            let l = m.weights.layers[0]
            #expect(l.wq.rows == 2 * c.headDim && l.wq.cols == c.hiddenSize)
            #expect(l.wk.rows == c.headDim && l.wo.cols == 2 * c.headDim && l.wo.rows == c.hiddenSize)
            #expect(l.wGate.rows == 86 && l.wDown.cols == 86)
            #expect(m.weights.lmHead.rows == 160 && m.weights.embedding.rows == 320)
            // Rank 0's q rows are the first heads of the whole weight; its o columns the same heads.
            let whole = Self.model.weights.layers[0]
            #expect(l.wq.dequantized().data == whole.wq.dequantized().rows(0..<(2 * c.headDim)).data)
            #expect(l.wo.dequantized().data == whole.wo.dequantized().columns(0..<(2 * c.headDim)).data)
        }
    }

    @Test func sizesThatDoNotDivideTheHeadsAreRefusedWithTheCounts() throws {
        let transports = ThreadRanks.group(size: 3)
        let error = #expect(throws: FacetError.self) { try RankGroup(transport: transports[0]).shardModel(Self.model) }
        let text = error?.description ?? ""
        #expect(text.contains("4 query heads") && text.contains("2 key/value heads") && text.contains("1, 2"), "\(text)")
    }

    /// Base and every adapter: PEFT's greedy continuation, and logits within 1e-5 of the
    /// one-process model (only the row-parallel sums are added in another order).
    @Test func everyFixtureCaseMatchesPEFTAndTheOneProcessModel() throws {
        let names = ["plain_qv", "all_linear_r8", "attn_r16_alpha8", "embed_lora"]
        let set = AdapterSet(adapters: try names.map(Self.adapter), baseVocabulary: Self.model.config.vocabSize)
        let prompt = ints(Self.golden["prompt_ids"])
        let cases = Self.golden["cases"] as! [String: Any]
        let requests = (["__base__"] + names).map { name in
            GenerationRequest(promptIDs: prompt, parameters: Self.greedy(16), adapterSlot: Int32(names.firstIndex(of: name) ?? -1))
        }
        let one = try BatchGenerator(model: Self.model, tokenizer: nil).generate(requests, deltas: set, collectLogits: true)
        let two = try Self.withRanks(2) { m, _ in
            try BatchGenerator(model: m, tokenizer: nil).generate(requests, deltas: set, collectLogits: true)
        }
        for (i, name) in (["__base__"] + names).enumerated() {
            let c = cases[name] as! [String: Any]
            #expect(two[i].outputIDs == ints(c["greedy"]), "\(name)")
            #expect(maxRelativeError(two[i].stepLogits[0], floats(c["last_logits"])) < 1e-4, "\(name)")
            for (a, b) in zip(two[i].stepLogits, one[i].stepLogits) {
                #expect(maxRelativeError(a, b) < 1e-5, "\(name)")
            }
        }
    }

    /// PEFT's mixed batch and the extended-vocabulary batch (an adapter with its own
    /// embedding and lm_head beside plain ones): every sequence as PEFT, and bitwise the same
    /// in the batch, alone, with its prompt prefilled in chunks, and from run to run.
    @Test func mixedBatchesAreBatchInvariantWithinTheGroup() throws {
        let mixed = try Fixtures.json("tiny_llama_untied/mixed_batch.json")["sequences"] as! [[String: Any]]
        let extended = try Fixtures.json("tiny_llama_untied/mixed_batch_extended_vocab.json")["sequences"] as! [[String: Any]]
        let names = ["plain_qv", "all_linear_r8", "embed_lora", "extended_vocab"]
        let set = AdapterSet(adapters: try names.map(Self.adapter), baseVocabulary: Self.model.config.vocabSize)
        let sequences = mixed + extended
        let requests = sequences.map { s in
            GenerationRequest(promptIDs: ints(s["prompt_ids"]), parameters: Self.greedy(12),
                              adapterSlot: Int32(names.firstIndex(of: s["adapter_name"] as! String) ?? -1))
        }
        try Self.withRanks(2) { m, _ in
            let gen = BatchGenerator(model: m, tokenizer: nil)
            let batch = try gen.generate(requests, deltas: set, collectLogits: true)
            let again = try gen.generate(requests, deltas: set, collectLogits: true)
            var chunked = gen
            chunked.prefillChunk = 3
            let inChunks = try chunked.generate(requests, deltas: set, collectLogits: true)
            for (i, s) in sequences.enumerated() {
                let name = s["adapter_name"] as! String
                #expect(batch[i].outputIDs == Array(ints(s["greedy"]).prefix(12)), "\(name)")
                #expect(maxRelativeError(batch[i].stepLogits[0], floats(s["last_logits"])) < 1e-4, "\(name)")
                let alone = try gen.generate([requests[i]], deltas: set, collectLogits: true)[0]
                #expect(alone.stepLogits == batch[i].stepLogits, "\(name) alone")
                #expect(again[i].stepLogits == batch[i].stepLogits, "\(name) again")
                #expect(inChunks[i].stepLogits == batch[i].stepLogits, "\(name) in chunks")
            }
        }
    }

    /// Adapters reach the other ranks when first used, and a dropped one is sent again.
    @Test func adaptersAreShippedOnceAndEvicted() throws {
        let names = ["plain_qv", "all_linear_r8", "attn_r16_alpha8"]
        let adapters = try names.map(Self.adapter)
        let prompt = ints(Self.golden["prompt_ids"])
        let cases = Self.golden["cases"] as! [String: Any]
        try Self.withRanks(2) { m, group in
            group.maxCachedAdapters = 1
            let gen = BatchGenerator(model: m, tokenizer: nil)
            for round in 0..<2 {
                for (k, name) in names.enumerated() {
                    let set = AdapterSet(adapters: [adapters[k]], baseVocabulary: m.config.vocabSize)
                    let r = try gen.generate([GenerationRequest(promptIDs: prompt, parameters: Self.greedy(8), adapterSlot: 0)], deltas: set)[0]
                    #expect(r.outputIDs == Array(ints((cases[name] as! [String: Any])["greedy"]).prefix(8)), "\(name) round \(round)")
                }
            }
        }
    }

    @Test func weightSlicesMatchSlicesOfTheDequantizedWeight() throws {
        var rng = SplitMix(seed: 7)
        let m = Matrix(rows: 6, cols: 128, data: (0..<(6 * 128)).map { _ in rng.float() })
        for format in [WeightFormat.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1] {
            let w = format == .f32 ? LinearWeight(m) : try LinearWeight.quantize(m, to: format)
            let full = w.dequantized()
            #expect(try w.rows(2..<5).dequantized().data == full.rows(2..<5).data, "\(format) rows")
            let aligned = try w.columns(32..<96)
            #expect(aligned.format == format && aligned.dequantized().data == full.columns(32..<96).data, "\(format) columns")
            let unaligned = try w.columns(16..<80)
            #expect(unaligned.dequantized().data == full.columns(16..<80).data, "\(format) unaligned columns")
        }
        #expect(throws: FacetError.self) { try LinearWeight(m).rows(4..<9) }
    }

    @Test func stepMessagesSurviveTheWireAndShortOnesAreErrors() throws {
        // A whole adapter and its shard through a two-rank group: rank 1's shard is made
        // from the broadcast bytes and matches rank 0's own shard of the original.
        let a = try Self.adapter("all_linear_r8")
        let c = Self.model.config
        let shard = TensorShard(rank: 1, size: 2)
        let mine = a.sharded(shard, config: c)
        let o = mine.pairs[0][.o]!, q = mine.pairs[0][.q]!
        #expect(o.inDim == 32 && o.outDim == 64 && q.inDim == 64 && q.outDim == 32)
        #expect(o.a.data == a.pairs[0][.o]!.a.columns(32..<64).data)
        #expect(q.b.data == a.pairs[0][.q]!.b.rows(32..<64).data)

        for name in ["all_linear_r8", "embed_lora", "extended_vocab"] {
            let original = try Self.adapter(name).storing(name == "embed_lora" ? .bf16 : .exact)
            var w = WireWriter()
            original.encode(into: &w)
            var r = WireReader(w.bytes)
            let back = try LoRAAdapter.decode(from: &r)
            #expect(r.isAtEnd)
            #expect(back.name == original.name && back.digest == original.digest && back.byteSize == original.byteSize, "\(name)")
            for (l, layer) in original.pairs.enumerated() {
                #expect(Set(layer.keys) == Set(back.pairs[l].keys))
                for (role, p) in layer {
                    let b = back.pairs[l][role]!
                    #expect(b.a.data == p.a.data && b.b.data == p.b.data && b.scale == p.scale && b.packedA.precision == p.packedA.precision)
                }
            }
            #expect(back.embedTokens?.data == original.embedTokens?.data && back.lmHead?.data == original.lmHead?.data)
            #expect(back.embeddingLoRA?.aT.data == original.embeddingLoRA?.aT.data && back.embeddingLoRA?.scale == original.embeddingLoRA?.scale)
            // Every cut of the message is an error, never a crash.
            for cut in stride(from: 0, to: w.bytes.count, by: max(1, w.bytes.count / 97)) {
                var short = WireReader(Array(w.bytes[0..<cut]))
                #expect(throws: FacetError.self) { try LoRAAdapter.decode(from: &short) }
            }
        }
        var batch = ForwardBatch()
        batch.append(sequence: 0, tokens: [5, 6, 7], startPosition: 0, adapterSlot: 1, wantLogits: true)
        batch.append(sequence: 1, tokens: [9], startPosition: 4, adapterSlot: -1, wantLogits: true)
        batch.blockTables = [[0, 3], [2]]
        batch.blockCopies = [(5, 3), (1, 2)]
        var w = WireWriter()
        batch.encode(into: &w)
        var r = WireReader(w.bytes)
        let back = try ForwardBatch.decode(from: &r)
        #expect(back.tokens == batch.tokens && back.positions == batch.positions && back.sequences == batch.sequences)
        #expect(back.adapterSlots == batch.adapterSlots && back.logitRows == batch.logitRows && back.blockTables == batch.blockTables)
        #expect(back.blockCopies.map(\.source) == [5, 1] && back.blockCopies.map(\.destination) == [3, 2])
    }
}
