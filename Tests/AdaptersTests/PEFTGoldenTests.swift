import Adapters
import Engine
import Foundation
import Kernels
import Llama
import Loading
import Sampling
import Tensors
import Testing
import TestSupport

/// Adapters against Hugging Face PEFT outputs on the tiny model.
@Suite struct PEFTGoldenTests {
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

    @Test(arguments: ["plain_qv", "all_linear_r8", "attn_r16_alpha8", "embed_lora"])
    func singleAdapterMatchesPEFT(name: String) throws {
        let set = AdapterSet(adapters: [try Self.adapter(name)], baseVocabulary: Self.model.config.vocabSize)
        let c = (Self.golden["cases"] as! [String: Any])[name] as! [String: Any]
        let r = try BatchGenerator(model: Self.model, tokenizer: nil)
            .generate([GenerationRequest(promptIDs: ints(Self.golden["prompt_ids"]), parameters: Self.greedy(16), adapterSlot: 0)],
                      deltas: set, collectLogits: true)[0]
        #expect(r.outputIDs == ints(c["greedy"]))
        #expect(maxRelativeError(r.stepLogits[0], floats(c["last_logits"])) < 1e-4)
    }

    /// `--lora-precision bf16|f16`: fp32 factors rounded to 16 bits take half the bytes and
    /// stay close to PEFT (the greedy continuation and the logits within a looser bound);
    /// `exact` changes nothing.
    @Test(arguments: [LoRAPrecision.bf16, .f16])
    func sixteenBitStorageStaysCloseToPEFT(precision: LoRAPrecision) throws {
        let name = "all_linear_r8"
        let exact = try Self.adapter(name)
        let rounded = exact.storing(precision)
        #expect(exact.storing(.exact).byteSize == exact.byteSize)
        #expect(rounded.byteSize * 2 == exact.byteSize)
        #expect(rounded.pairs.allSatisfy { $0.values.allSatisfy { $0.packedA.precision.rawValue == precision.rawValue } })
        let set = AdapterSet(adapters: [rounded], baseVocabulary: Self.model.config.vocabSize)
        let c = (Self.golden["cases"] as! [String: Any])[name] as! [String: Any]
        let r = try BatchGenerator(model: Self.model, tokenizer: nil)
            .generate([GenerationRequest(promptIDs: ints(Self.golden["prompt_ids"]), parameters: Self.greedy(16), adapterSlot: 0)],
                      deltas: set, collectLogits: true)[0]
        #expect(r.outputIDs == ints(c["greedy"]))
        // bf16 keeps 8 mantissa bits, f16 11 (the tiny model's random adapter deltas are large).
        let error = maxRelativeError(r.stepLogits[0], floats(c["last_logits"]))
        #expect(error < (precision == .bf16 ? 5e-2 : 1e-2), "\(error)")
        #expect(error > 1e-7, "rounding to \(precision) should change the logits a little")
    }

    /// PEFT's mixed-adapter batch, reproduced in one batch (any order), bitwise equal to
    /// each sequence run alone.
    @Test func mixedBatchMatchesPEFT() throws {
        let fixture = try Fixtures.json("tiny_llama_untied/mixed_batch.json")
        let names = ["plain_qv", "all_linear_r8", "embed_lora"]
        let set = AdapterSet(adapters: try names.map(Self.adapter), baseVocabulary: Self.model.config.vocabSize)
        let sequences = fixture["sequences"] as! [[String: Any]]
        let requests = sequences.map { s in
            let name = s["adapter_name"] as! String
            return GenerationRequest(promptIDs: ints(s["prompt_ids"]), parameters: Self.greedy(16),
                                     adapterSlot: Int32(names.firstIndex(of: name) ?? -1))
        }
        let gen = BatchGenerator(model: Self.model, tokenizer: nil)
        let results = try gen.generate(requests, deltas: set, collectLogits: true)
        for (s, r) in zip(sequences, results) {
            #expect(r.outputIDs == ints(s["greedy"]), "\(s["adapter_name"]!)")
            #expect(maxRelativeError(r.stepLogits[0], floats(s["last_logits"])) < 1e-4, "\(s["adapter_name"]!)")
        }
        let alone = try requests.map { try gen.generate([$0], deltas: set, collectLogits: true)[0].stepLogits }
        #expect(results.map(\.stepLogits) == alone)
        let shuffled = try gen.generate([requests[2], requests[0], requests[3], requests[1]], deltas: set, collectLogits: true)
        #expect([shuffled[1], shuffled[3], shuffled[0], shuffled[2]].map(\.stepLogits) == alone)
        for chunk in [1, 4, 7] {
            let chunked = try BatchGenerator(model: Self.model, tokenizer: nil, prefillChunk: chunk).generate(requests, deltas: set, collectLogits: true)
            #expect(chunked.map(\.stepLogits) == alone, "prefill chunk \(chunk)")
        }
    }

    /// The article's chinese-llama-2-lora case: an adapter with its own, larger vocabulary
    /// (modules_to_save embed_tokens and lm_head) next to base sequences in one batch.
    @Test func extendedVocabularyMatchesPEFT() throws {
        let set = AdapterSet(adapters: [try Self.adapter("extended_vocab"), try Self.adapter("plain_qv")],
                             baseVocabulary: Self.model.config.vocabSize)
        let single = try Fixtures.json("tiny_llama_untied/golden_extended_vocab.json")["cases"] as! [String: Any]
        let gen = BatchGenerator(model: Self.model, tokenizer: nil)
        for (name, slot) in [("extended_vocab", Int32(0)), ("extended_vocab__old_ids_prompt", 0), ("__base__", -1)] {
            let c = single[name] as! [String: Any]
            let r = try gen.generate([GenerationRequest(promptIDs: ints(c["prompt_ids"]), parameters: Self.greedy(16), adapterSlot: slot)],
                                     deltas: set, collectLogits: true)[0]
            #expect(r.outputIDs == ints(c["greedy"]), "\(name)")
            #expect(r.stepLogits[0].count == (c["vocab_size"] as! Int))
            #expect(maxRelativeError(r.stepLogits[0], floats(c["last_logits"])) < 1e-4, "\(name)")
        }
        let mixed = try Fixtures.json("tiny_llama_untied/mixed_batch_extended_vocab.json")["sequences"] as! [[String: Any]]
        let slots: [String: Int32] = ["extended_vocab": 0, "plain_qv": 1, "__base__": -1]
        let requests = mixed.map { GenerationRequest(promptIDs: ints($0["prompt_ids"]), parameters: Self.greedy(16), adapterSlot: slots[$0["adapter_name"] as! String]!) }
        let results = try gen.generate(requests, deltas: set, collectLogits: true)
        for (s, r) in zip(mixed, results) {
            #expect(r.outputIDs == ints(s["greedy"]), "\(s["adapter_name"]!)")
            #expect(maxRelativeError(r.stepLogits[0], floats(s["last_logits"])) < 1e-4)
        }
        // A base sequence may not use the adapter's new ids.
        #expect(throws: (any Error).self) {
            try gen.generate([GenerationRequest(promptIDs: [1, 330], parameters: Self.greedy(2), adapterSlot: -1)], deltas: set)
        }
    }

    @Test func zeroAdapterEqualsBaseBitwise() throws {
        var zero = try Self.adapter("all_linear_r8")
        for l in zero.pairs.indices {
            for (role, p) in zero.pairs[l] {
                zero.pairs[l][role] = LoRAPair(a: p.a, b: Matrix(zeros: p.b.rows, p.b.cols), scale: p.scale)
            }
        }
        let set = AdapterSet(adapters: [zero], baseVocabulary: Self.model.config.vocabSize)
        let prompt = ints(Self.golden["prompt_ids"])
        let gen = BatchGenerator(model: Self.model, tokenizer: nil)
        let results = try gen.generate([GenerationRequest(promptIDs: prompt, parameters: Self.greedy(8), adapterSlot: 0),
                                        GenerationRequest(promptIDs: prompt, parameters: Self.greedy(8), adapterSlot: -1)],
                                       deltas: set, collectLogits: true)
        #expect(results[0].stepLogits == results[1].stepLogits)
    }

    @Test func outOfRangeSlotIsRejected() throws {
        let set = AdapterSet(adapters: [try Self.adapter("plain_qv")], baseVocabulary: Self.model.config.vocabSize)
        #expect(throws: (any Error).self) {
            try BatchGenerator(model: Self.model, tokenizer: nil)
                .generate([GenerationRequest(promptIDs: [1, 2], parameters: Self.greedy(2), adapterSlot: 3)], deltas: set)
        }
    }
}

/// The deltas computed beside the base products (`add(..., around:)`, what a forward step
/// uses) against the deltas added after them (`add`): the same bits, for mixed slots, base
/// rows, groups cut into pieces, and the three outputs of a q/k/v call.
@Suite struct DeltasBesideProductsTests {
    @Test(arguments: ["all_linear_r8", "attn_r16_alpha8"])
    func besideEqualsAfter(name: String) throws {
        let model = PEFTGoldenTests.model
        let c = model.config
        let other = try PEFTGoldenTests.adapter("plain_qv")
        let set = AdapterSet(adapters: [try PEFTGoldenTests.adapter(name), other], baseVocabulary: c.vocabSize)
        let T = 70
        // A long group (pieces), a short one, base rows between.
        let slots: [Int32] = (0..<T).map { t in t % 7 == 3 ? -1 : t < 50 ? 0 : 1 }
        var state: UInt64 = 0x9E3779B97F4A7C15
        func random(_ n: Int) -> [Float] {
            (0..<n).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return Float(Int64(bitPattern: state >> 11) % 2001 - 1000) / 997
            }
        }
        let D = c.hiddenSize, kvWidth = c.numKVHeads * c.headDim
        let x = random(T * D)
        // The q, k and v outputs one after another in one array.
        let widths = [D, kvWidth, kvWidth]
        let offsets = [0, T * D, T * (D + kvWidth)]
        let base = random(T * (D + 2 * kvWidth))
        let roles: [LinearRole] = [.q, .k, .v]
        func outputs(_ y: UnsafeMutablePointer<Float>) -> [DeltaOutput] {
            (0..<3).map { DeltaOutput(role: roles[$0], y: y + offsets[$0], outDim: widths[$0]) }
        }
        for layer in 0..<c.numLayers {
            var after = base, beside = [Float](repeating: .nan, count: base.count)
            var calls = 0
            x.withUnsafeBufferPointer { xp in
                slots.withUnsafeBufferPointer { sp in
                    after.withUnsafeMutableBufferPointer { y in
                        outputs(y.baseAddress!).withUnsafeBufferPointer {
                            set.add(layer: layer, x: xp.baseAddress!, inDim: D, outputs: $0, slots: sp.baseAddress!, tokens: T)
                        }
                    }
                    beside.withUnsafeMutableBufferPointer { y in
                        outputs(y.baseAddress!).withUnsafeBufferPointer {
                            set.add(layer: layer, x: xp.baseAddress!, inDim: D, outputs: $0, slots: sp.baseAddress!, tokens: T) { tasks in
                                calls += 1
                                // The "products": y written here, the deltas' tasks run alongside.
                                base.withUnsafeBufferPointer { y.baseAddress!.update(from: $0.baseAddress!, count: $0.count) }
                                Parallel.run(tasks)
                            }
                        }
                    }
                }
            }
            #expect(calls == 1)
            #expect(after.map(\.bitPattern) == beside.map(\.bitPattern), "layer \(layer)")
            // The adapters changed the outputs: the comparison is not of two copies of the base.
            #expect(after != base)
        }
    }
}
