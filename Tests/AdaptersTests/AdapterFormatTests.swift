import Adapters
import Engine
import Foundation
import Formats
import Llama
import Loading
import Sampling
import Tensors
import Testing
import TestSupport

/// Adapter formats: PyTorch .bin, TensorRT-LLM arrays, PEFT round trips, merging, and the
/// errors bad adapters must give.
@Suite struct AdapterFormatTests {
    static let (model, _) = try! ModelLoader.load(path: Fixtures.tinyModel)
    nonisolated(unsafe) static let golden = try! Fixtures.json("tiny_llama_untied/golden.json")
    static var config: LlamaConfiguration { model.config }

    static func load(_ path: String) throws -> LoRAAdapter {
        try AdapterLoader.load(directory: path, base: config, baseEmbedding: model.weights.embedding)
    }

    static func run(_ set: AdapterSet?, slot: Int32, model m: LlamaModel = model) throws -> GenerationResult {
        var p = SamplingParameters()
        p.temperature = 0
        p.maxTokens = 16
        return try BatchGenerator(model: m, tokenizer: nil)
            .generate([GenerationRequest(promptIDs: ints(golden["prompt_ids"]), parameters: p, adapterSlot: slot)], deltas: set, collectLogits: true)[0]
    }

    static func expected(_ name: String) -> (greedy: [Int32], logits: [Float]) {
        let c = (golden["cases"] as! [String: Any])[name] as! [String: Any]
        return (ints(c["greedy"]), floats(c["last_logits"]))
    }

    @Test func pytorchBinEqualsSafetensors() throws {
        let st = try Self.load(Fixtures.path("tiny_llama_untied/adapters/plain_qv"))
        let bin = try Self.load(Fixtures.path("peft_bin/plain_qv_bin"))
        for l in 0..<Self.config.numLayers {
            for role in LinearRole.allCases {
                #expect(st.pairs[l][role]?.a.data == bin.pairs[l][role]?.a.data)
                #expect(st.pairs[l][role]?.b.data == bin.pairs[l][role]?.b.data)
            }
        }
        let half = try Self.load(Fixtures.path("peft_bin/plain_qv_bin_f16"))
        for l in 0..<Self.config.numLayers {
            for (role, p) in st.pairs[l] {
                let h = half.pairs[l][role]!
                #expect(maxRelativeError(h.a.data, p.a.data) < 1e-3 && maxRelativeError(h.b.data, p.b.data) < 1e-3)
            }
        }
    }

    @Test func maliciousPickleIsRefusedNotRun() throws {
        try? FileManager.default.removeItem(atPath: "/tmp/facet-pwned")
        #expect {
            try Self.load(Fixtures.path("peft_bin/evil_bin"))
        } throws: { error in
            let e = error as? FacetError
            return e?.code == .unsupported && e!.message.contains("system")
        }
        #expect(!FileManager.default.fileExists(atPath: "/tmp/facet-pwned"))
    }

    @Test func tensorRTLLMArraysRoundTrip() throws {
        let peft = try Self.load(Fixtures.path("tiny_llama_untied/adapters/all_linear_r8"))
        let (weights, config) = try TensorRTLoRA.arrays(peft, storage: .f32)
        #expect(config.shape == [1, 2 * 7, 3])
        // The MLP ids are TensorRT-LLM's: gate_proj -> 5 (mlp_h_to_4h), up_proj -> 7 (mlp_gate), down_proj -> 6.
        let ids = stride(from: 0, to: config.values.count, by: 3).map { Int(config.values[$0]) }
        #expect(Array(ids.prefix(7)) == [1, 2, 3, 4, 5, 7, 6])
        let dir = try Fixtures.temporaryDirectory()
        try weights.encoded().write(to: URL(fileURLWithPath: dir + "/model.lora_weights.npy"))
        try config.encoded().write(to: URL(fileURLWithPath: dir + "/model.lora_config.npy"))
        let trt = try Self.load(dir)
        let r = try Self.run(AdapterSet(adapters: [trt], baseVocabulary: Self.config.vocabSize), slot: 0)
        #expect(r.outputIDs == Self.expected("all_linear_r8").greedy)
        #expect(maxRelativeError(r.stepLogits[0], Self.expected("all_linear_r8").logits) < 1e-4)
        // float16 storage, as hf_lora_convert.py writes by default.
        let (w16, _) = try TensorRTLoRA.arrays(peft, storage: .f16)
        let trt16 = try TensorRTLoRA.adapter(weights: try w16.encoded().withUnsafeBytes { try NpyArray.parse($0, path: "w.npy") },
                                             config: config, name: "f16", base: Self.config)
        let r16 = try Self.run(AdapterSet(adapters: [trt16], baseVocabulary: Self.config.vocabSize), slot: 0)
        #expect(r16.outputIDs == Self.expected("all_linear_r8").greedy)
    }

    /// A fused attn_qkv row (module 0) equals separate q, k, v rows sharing A.
    @Test func fusedQKVRowEqualsSeparateRows() throws {
        var rng = SplitMix(seed: 5)
        let c = Self.config, r = 2, d = c.hiddenSize, q = c.numHeads * c.headDim, kv = c.numKVHeads * c.headDim
        let a = (0..<(r * d)).map { _ in rng.float() * 0.1 }
        let bq = (0..<(q * r)).map { _ in rng.float() }, bk = (0..<(kv * r)).map { _ in rng.float() }, bv = (0..<(kv * r)).map { _ in rng.float() }
        let fusedRow = (a + bq + bk + bv).map(Double.init)
        let fused = try TensorRTLoRA.adapter(weights: NpyArray(shape: [1, 1, fusedRow.count], kind: .f32, values: fusedRow),
                                             config: NpyArray(shape: [1, 1, 3], kind: .i32, values: [0, 1, Double(r)]), name: "fused", base: c)
        let width = r * d + q * r
        func row(_ b: [Float]) -> [Double] { let v = (a + b).map(Double.init); return v + Array(repeating: 0, count: width - v.count) }
        let separate = try TensorRTLoRA.adapter(
            weights: NpyArray(shape: [1, 3, width], kind: .f32, values: row(bq) + row(bk) + row(bv)),
            config: NpyArray(shape: [1, 3, 3], kind: .i32, values: [1, 1, Double(r), 2, 1, Double(r), 3, 1, Double(r)]), name: "sep", base: c)
        let set = AdapterSet(adapters: [fused, separate], baseVocabulary: c.vocabSize)
        #expect(try Self.run(set, slot: 0).stepLogits == (try Self.run(set, slot: 1).stepLogits))
    }

    @Test(arguments: ["all_linear_r8", "embed_lora", "attn_r16_alpha8"])
    func mergedEqualsUnmerged(name: String) throws {
        let adapter = try Self.load(Fixtures.path("tiny_llama_untied/adapters/\(name)"))
        let (w, c) = try AdapterMerge.merge(adapter, into: Self.model.weights, config: Self.config)
        let merged = try LlamaModel(config: c, weights: w)
        let r = try Self.run(nil, slot: -1, model: merged)
        #expect(r.outputIDs == Self.expected(name).greedy)
        #expect(maxRelativeError(r.stepLogits[0], Self.expected(name).logits) < 1e-4)
        // Written as a Hugging Face directory and read back.
        let dir = try Fixtures.temporaryDirectory()
        try AdapterMerge.writeHuggingFace(weights: w, config: c, to: dir)
        let (reloaded, _) = try ModelLoader.load(path: dir)
        #expect(try Self.run(nil, slot: -1, model: reloaded).stepLogits == r.stepLogits)
    }

    @Test func peftWriteRoundTrip() throws {
        for name in ["all_linear_r8", "embed_lora", "extended_vocab"] {
            let adapter = try Self.load(Fixtures.path("tiny_llama_untied/adapters/\(name)"))
            let dir = try Fixtures.temporaryDirectory()
            try AdapterMerge.writePEFT(adapter, to: dir, baseModel: "tiny")
            let back = try Self.load(dir)
            let set = AdapterSet(adapters: [adapter, back], baseVocabulary: Self.config.vocabSize)
            #expect(maxRelativeError(try Self.run(set, slot: 0).stepLogits[0], try Self.run(set, slot: 1).stepLogits[0]) < 1e-6, "\(name)")
        }
    }

    @Test func adapterForAnotherBaseIsRefused() throws {
        #expect {
            try Self.load(Fixtures.repositoryRoot + "/adapters/fr")
        } throws: { error in
            let e = error as? FacetError
            return e?.code == .shapeMismatch && e!.remedy!.contains("another base model") && e?.file?.hasSuffix("adapters/fr") == true
        }
    }

    @Test func unsupportedAndCorruptAdaptersGiveClearErrors() throws {
        let src = Fixtures.path("tiny_llama_untied/adapters/plain_qv")
        func variant(_ edit: (String) throws -> Void) throws -> String {
            let dir = try Fixtures.temporaryDirectory() + "/a"
            try FileManager.default.copyItem(atPath: src, toPath: dir)
            try edit(dir)
            return dir
        }
        func config(_ dir: String, _ replace: String, _ with: String) throws {
            let path = dir + "/adapter_config.json"
            try (try String(contentsOfFile: path, encoding: .utf8)).replacingOccurrences(of: replace, with: with).write(toFile: path, atomically: true, encoding: .utf8)
        }
        let cases: [(String, FacetError.Code, String?)] = [
            (try variant { try config($0, "\"use_dora\": false", "\"use_dora\": true") }, .unsupported, "use_dora"),
            (try variant { try config($0, "\"bias\": \"none\"", "\"bias\": \"all\"") }, .unsupported, "bias"),
            (try variant { try config($0, "\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\"") }, .unsupported, "peft_type"),
            (try variant { try config($0, "\"r\": 4", "\"r\": \"four\"") }, .invalidConfig, "r"),
            (try variant { try "{not json".write(toFile: $0 + "/adapter_config.json", atomically: true, encoding: .utf8) }, .invalidConfig, nil),
            (try variant { try FileManager.default.removeItem(atPath: $0 + "/adapter_model.safetensors") }, .notFound, nil),
            (try variant { try Data("garbage!".utf8).write(to: URL(fileURLWithPath: $0 + "/adapter_model.safetensors")) }, .invalidFile, nil),
            ("/nonexistent/adapter", .notFound, nil),
        ]
        for (dir, code, field) in cases {
            #expect {
                try Self.load(dir)
            } throws: { error in
                let e = error as? FacetError
                return e?.code == code && (field == nil || e?.field == field) && e?.file != nil
            }
        }
    }

    /// Scale: alpha / r, alpha / sqrt(r) with rsLoRA, alpha from alpha_pattern as PEFT
    /// matches module names.
    @Test func scalesFollowPEFTRules() throws {
        let src = Fixtures.path("tiny_llama_untied/adapters/plain_qv")   // r 4, alpha 8
        func edited(_ edits: (String, String)...) throws -> LoRAAdapter {
            let dir = try Fixtures.temporaryDirectory() + "/a"
            try FileManager.default.copyItem(atPath: src, toPath: dir)
            let path = dir + "/adapter_config.json"
            let text = try String(contentsOfFile: path, encoding: .utf8)
            try edits.reduce(text) { $0.replacingOccurrences(of: $1.0, with: $1.1) }.write(toFile: path, atomically: true, encoding: .utf8)
            return try Self.load(dir)
        }
        #expect(try Self.load(src).pairs[0][.q]?.scale == 2)
        #expect(try edited(("\"use_rslora\": false", "\"use_rslora\": true")).pairs[0][.q]?.scale == 4)
        let patterned = try edited(("\"alpha_pattern\": {}", "\"alpha_pattern\": {\"layers.1.self_attn.v_proj\": 2}"))
        #expect(patterned.pairs[1][.v]?.scale == 0.5)
        #expect(patterned.pairs[0][.v]?.scale == 2 && patterned.pairs[1][.q]?.scale == 2)
        // The configured rank must be the tensors' (PEFT builds its layers from it): r = 8
        // over rank-4 tensors is refused, unless rank_pattern gives these modules 4.
        #expect {
            try edited(("\"r\": 4", "\"r\": 8"))
        } throws: { error in
            let e = error as? FacetError
            return e?.code == .shapeMismatch && e!.message.contains("r = 8") && e?.field?.hasSuffix("_proj") == true
        }
        let ranked = try edited(("\"rank_pattern\": {}", "\"rank_pattern\": {\"q_proj\": 4, \"v_proj\": 4}")).pairs[0][.q]
        #expect(ranked?.rank == 4 && ranked?.scale == 2)
        let rankedPatterns = try edited(("\"r\": 4", "\"r\": 16"), ("\"rank_pattern\": {}", "\"rank_pattern\": {\"q_proj\": 4, \"v_proj\": 4}"))
        #expect(rankedPatterns.pairs[1][.v]?.scale == 2)   // alpha 8 over the tensors' rank 4
    }

    /// target_modules against the tensors, as PEFT checks them: a name the base lacks, or
    /// tensors of a module the config does not target, are refused with both sides named.
    @Test func targetModulesMustAgreeWithTheTensors() throws {
        let src = Fixtures.path("tiny_llama_untied/adapters/plain_qv")   // q_proj, v_proj
        func withTargets(_ targets: String) throws -> LoRAAdapter {
            let dir = try Fixtures.temporaryDirectory() + "/a"
            try FileManager.default.copyItem(atPath: src, toPath: dir)
            let path = dir + "/adapter_config.json"
            var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
            config["target_modules"] = try JSONSerialization.jsonObject(with: Data(targets.utf8), options: .fragmentsAllowed)
            try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: path))
            return try Self.load(dir)
        }
        func refused(_ targets: String, mentioning words: [String]) {
            #expect {
                try withTargets(targets)
            } throws: { error in
                let e = error as? FacetError
                return e?.field == "target_modules" && words.allSatisfy { e!.message.contains($0) }
            }
        }
        refused(#"["nonexistent_proj"]"#, mentioning: ["nonexistent_proj", "q_proj", "v_proj"])
        refused(#"["q_proj"]"#, mentioning: ["v_proj", "does not select"])
        refused(#"".*\\.q_proj""#, mentioning: ["v_proj"])
        #expect(try withTargets(#"["v_proj", "q_proj"]"#).pairs[0][.q] != nil)
        #expect(try withTargets(#"["self_attn.q_proj", "v_proj", "k_proj"]"#).pairs[0][.v] != nil)
        #expect(try withTargets(#"".*\\.(q|v)_proj""#).pairs[1][.v] != nil)
        #expect(try withTargets(#""all-linear""#).pairs[1][.q] != nil)
    }

    @Test func badTensorRTArraysAreRefused() throws {
        let c = Self.config
        func arrays(_ rows: [[Double]], width: Int = 8) -> (NpyArray, NpyArray) {
            (NpyArray(shape: [1, rows.count, 4096], kind: .f32, values: Array(repeating: 0.5, count: rows.count * 4096)),
             NpyArray(shape: [1, rows.count, rows[0].count], kind: .i32, values: rows.flatMap { $0 }))
        }
        for (rows, code) in [([[9.0, 0, 2]], FacetError.Code.unsupported),   // cross-attention module
                             ([[1.0, 7, 2]], .shapeMismatch),                // layer past the base
                             ([[1.0, 0, 2, 1]], .unsupported),               // DoRA flag
                             ([[1.0, 0, 4000]], .shapeMismatch)] {           // row too short for the rank
            let (w, cfg) = arrays(rows)
            #expect {
                try TensorRTLoRA.adapter(weights: w, config: cfg, name: "bad", base: c)
            } throws: { ($0 as? FacetError)?.code == code }
        }
        let floatConfig = NpyArray(shape: [1, 1, 3], kind: .f32, values: [1, 0, 2])
        #expect(throws: FacetError.self) { try TensorRTLoRA.adapter(weights: arrays([[1, 0, 2]]).0, config: floatConfig, name: "x", base: c) }
    }
}
