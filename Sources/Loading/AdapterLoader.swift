import Adapters
import Foundation
import Formats
import Kernels
import Llama
import Tensors

/// Reads LoRA adapters (Hugging Face PEFT directories and TensorRT-LLM's converted .npy
/// pairs) and checks each one against the base model it will run with.
package enum AdapterLoader {
    package enum Format: String, Sendable {
        case peft, tensorrtLLM = "tensorrt-llm"
    }

    /// Which format the directory holds, or an error saying what is missing.
    package static func detect(directory: String) throws -> Format {
        let fm = FileManager.default
        func has(_ name: String) -> Bool { fm.fileExists(atPath: (directory as NSString).appendingPathComponent(name)) }
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw FacetError(.notFound, "adapter directory does not exist", file: directory,
                             remedy: "pass a PEFT directory (adapter_config.json) or a TensorRT-LLM one (model.lora_weights.npy)")
        }
        if has("adapter_config.json") { return .peft }
        if has("model.lora_weights.npy") && has("model.lora_config.npy") { return .tensorrtLLM }
        throw FacetError(.notFound, "no adapter_config.json nor model.lora_weights.npy + model.lora_config.npy", file: directory,
                         remedy: "point at a directory written by PEFT save_pretrained or TensorRT-LLM's hf_lora_convert.py")
    }

    /// Loads the adapter in `directory` for `base` (checked against its shapes).
    package static func load(directory: String, name: String? = nil, base: LlamaConfiguration,
                            baseEmbedding: LinearWeight? = nil) throws -> LoRAAdapter {
        let adapterName = name ?? (directory as NSString).lastPathComponent
        do {
            var adapter: LoRAAdapter
            switch try detect(directory: directory) {
            case .peft: adapter = try loadPEFT(directory: directory, name: adapterName, base: base, baseEmbedding: baseEmbedding)
            case .tensorrtLLM: adapter = try TensorRTLoRA.load(directory: directory, name: adapterName, base: base)
            }
            adapter.name = adapterName
            return try checked(adapter, base: base)
        } catch let e as FacetError {
            throw e.inFile(directory)
        }
    }

    /// The checks every adapter passes, whatever it came from: shapes against the base,
    /// and at least one weight.
    package static func checked(_ adapter: LoRAAdapter, base: LlamaConfiguration) throws -> LoRAAdapter {
        try adapter.validate(against: base)
        if adapter.pairs.allSatisfy(\.isEmpty) && adapter.embeddingLoRA == nil && adapter.embedTokens == nil && adapter.lmHead == nil {
            throw FacetError(.invalidFile, "the adapter holds no LoRA weights", remedy: "check that the adapter was saved after training")
        }
        return adapter
    }

    /// A PEFT adapter from bytes (its `adapter_config.json` and `adapter_model.safetensors`
    /// contents, e.g. sent in a request), checked exactly as a directory would be.
    package static func loadPEFT(config configData: Data, safetensors: Data, name: String, base: LlamaConfiguration,
                                baseEmbedding: LinearWeight? = nil) throws -> LoRAAdapter {
        let config = try decodeJSON(PEFTConfig.self, from: configData, file: "adapter_config.json")
        try config.validate(file: "adapter_config.json")
        let file = safetensors.withUnsafeBytes { MappedFile(copying: $0, path: "adapter_model.safetensors") }
        let st = try SafetensorsFile(file: file)
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        for n in st.names {
            let values = try st.floats(n)
            try LoRAAdapter.checkValues(values, tensor: n)
            tensors[n] = (try st.entry(n).shape, values)
        }
        var digest = SHA256()
        digest.update(file.bytes)
        digest.update(Array(configData))
        var adapter = try fromPEFT(config: config, tensors: tensors, digest: digest.finalize(), name: name, base: base,
                                   baseEmbedding: baseEmbedding)
        adapter.name = name
        return try checked(adapter, base: base)
    }

    // MARK: - PEFT

    package static func readPEFTConfig(directory: String) throws -> PEFTConfig {
        let path = (directory as NSString).appendingPathComponent("adapter_config.json")
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FacetError(.notFound, "adapter_config.json is missing", file: path, remedy: "save the adapter with PEFT's save_pretrained")
        }
        let config = try decodeJSON(PEFTConfig.self, from: data, file: path)
        try config.validate(file: path)
        return config
    }

    /// The adapter's tensors by name (safetensors, or a PyTorch .bin read without pickle code).
    static func readPEFTTensors(directory: String) throws -> (tensors: [String: (shape: [Int], values: [Float])], digestBytes: [UInt8]) {
        let fm = FileManager.default
        let st = (directory as NSString).appendingPathComponent("adapter_model.safetensors")
        let bin = (directory as NSString).appendingPathComponent("adapter_model.bin")
        var out: [String: (shape: [Int], values: [Float])] = [:]
        var digest = SHA256()
        if fm.fileExists(atPath: st) {
            // Read into memory, not mapped: the file may be rewritten while the server runs.
            let file = try SafetensorsFile(path: st, inMemory: true)
            digest.update(file.file.bytes)
            for name in file.names {
                let values = try file.floats(name)
                try LoRAAdapter.checkValues(values, tensor: name)
                out[name] = (try file.entry(name).shape, values)
            }
        } else if fm.fileExists(atPath: bin) {
            let file = try MappedFile(readingContentsOf: bin)
            digest.update(file.bytes)
            for (name, tensor) in try TorchCheckpoint.read(file) {
                try LoRAAdapter.checkValues(tensor.values, tensor: name)
                out[name] = (tensor.shape, tensor.values)
            }
        } else {
            throw FacetError(.notFound, "no adapter_model.safetensors or adapter_model.bin", file: directory,
                             remedy: "copy the adapter's weights file next to adapter_config.json")
        }
        if let config = fm.contents(atPath: (directory as NSString).appendingPathComponent("adapter_config.json")) {
            digest.update(Array(config))
        }
        return (out, digest.finalize())
    }

    static func loadPEFT(directory: String, name: String, base: LlamaConfiguration, baseEmbedding: LinearWeight?) throws -> LoRAAdapter {
        let config = try readPEFTConfig(directory: directory)
        let (tensors, digest) = try readPEFTTensors(directory: directory)
        return try fromPEFT(config: config, tensors: tensors, digest: digest, name: name, base: base, baseEmbedding: baseEmbedding)
    }

    /// PEFT tensors (by checkpoint name) and config as an adapter.
    static func fromPEFT(config: PEFTConfig, tensors: [String: (shape: [Int], values: [Float])], digest: [UInt8], name: String,
                         base: LlamaConfiguration, baseEmbedding: LinearWeight?) throws -> LoRAAdapter {
        var adapter = LoRAAdapter(name: name, digest: digest.map { String(format: "%02x", $0) }.joined(), layers: base.numLayers)
        let roles = Dictionary(uniqueKeysWithValues: WeightNames.linearModule.map { ($1, $0) })
        var halves: [String: (a: (shape: [Int], values: [Float])?, b: (shape: [Int], values: [Float])?)] = [:]
        var embA: (shape: [Int], values: [Float])?, embB: (shape: [Int], values: [Float])?
        for (key, tensor) in tensors.sorted(by: { $0.key < $1.key }) {
            // Keys look like base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
            // (older files may carry the adapter name: ...lora_A.default.weight).
            var k = key
            for prefix in [WeightNames.peftPrefix, "base_model."] where k.hasPrefix(prefix) {
                k.removeFirst(prefix.count)
                break
            }
            k = k.replacingOccurrences(of: ".default.", with: ".").replacingOccurrences(of: ".default", with: "")
            if k.contains("lora_magnitude_vector") {
                throw FacetError(.unsupported, "DoRA magnitude vectors are not supported", field: key, remedy: "use a plain LoRA adapter")
            }
            if k.hasSuffix(".lora_A.weight") || k.hasSuffix(".lora_B.weight") {
                let isA = k.hasSuffix(".lora_A.weight")
                let module = String(k.dropLast(".lora_A.weight".count))
                if isA { halves[module, default: (nil, nil)].a = tensor } else { halves[module, default: (nil, nil)].b = tensor }
                continue
            }
            switch k {
            case WeightNames.hfEmbeddingModule + ".lora_embedding_A": embA = tensor
            case WeightNames.hfEmbeddingModule + ".lora_embedding_B": embB = tensor
            case WeightNames.hfEmbedding, WeightNames.hfEmbeddingModule + ".modules_to_save.weight":
                adapter.embedTokens = try matrix(tensor, key)
            case WeightNames.hfLMHead, WeightNames.hfLMHeadModule + ".modules_to_save.weight":
                adapter.lmHead = try matrix(tensor, key)
            case WeightNames.hfEmbeddingModule + ".base_layer.weight":
                // PEFT saves the embedding it was trained with when it targets embed_tokens;
                // it is the adapter's table if it differs from the base's.
                let table = try matrix(tensor, key)
                if let baseEmbedding, table.rows == baseEmbedding.rows, table.data == baseEmbedding.dequantized().data { continue }
                if baseEmbedding == nil && table.rows == base.vocabSize { continue }
                adapter.embedTokens = table
            default:
                throw FacetError(.unsupported, "tensor is not a LoRA weight Facet applies", field: key,
                                 remedy: "Facet applies LoRA to q/k/v/o/gate/up/down and embed_tokens, plus modules_to_save embed_tokens/lm_head")
            }
        }
        var adapted = Array(halves.keys)
        if embA != nil || embB != nil { adapted.append(WeightNames.hfEmbeddingModule) }
        try checkTargets(config.targetModules, adapted: adapted)
        let layersAllowed = config.layersToTransform.map { Set($0.values) }
        for (module, pair) in halves.sorted(by: { $0.key < $1.key }) {
            guard let a = pair.a, let b = pair.b else {
                throw FacetError(.invalidFile, "LoRA pair is incomplete (\(pair.a == nil ? "lora_A" : "lora_B") missing)", field: module,
                                 remedy: "the adapter file is truncated or corrupt")
            }
            // module: model.layers.{i}.{self_attn|mlp}.{x}_proj
            let parts = module.split(separator: ".")
            guard parts.count == 5, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]),
                  let role = roles[parts[3] + "." + parts[4]]
            else {
                throw FacetError(.unsupported, "LoRA on this module is not supported", field: module,
                                 remedy: "Facet applies LoRA to q/k/v/o/gate/up/down projections and embed_tokens")
            }
            guard layer >= 0 && layer < base.numLayers else {
                throw FacetError(.shapeMismatch, "layer \(layer) does not exist in the base model (\(base.numLayers) layers)", field: module,
                                 remedy: "adapter made for another base model?")
            }
            if let allowed = layersAllowed, !allowed.contains(layer) { continue }
            let am = try matrix(a, module + ".lora_A"), bm = try matrix(b, module + ".lora_B")
            guard am.rows == bm.cols else {
                throw FacetError(.shapeMismatch, "lora_A rank \(am.rows) != lora_B rank \(bm.cols)", field: module, remedy: "the adapter file is corrupt")
            }
            let scale = try Self.scale(config: config, module: module, rank: am.rows)
            adapter.pairs[layer][role] = LoRAPair(a: am, b: bm, scale: scale)
        }
        if embA != nil || embB != nil {
            guard let ea = embA, let eb = embB else {
                throw FacetError(.invalidFile, "embedding LoRA is incomplete", field: "embed_tokens", remedy: "the adapter file is corrupt")
            }
            let a = try matrix(ea, "embed_tokens.lora_embedding_A"), b = try matrix(eb, "embed_tokens.lora_embedding_B")
            guard a.rows == b.cols else {
                throw FacetError(.shapeMismatch, "lora_embedding_A rank \(a.rows) != lora_embedding_B rank \(b.cols)", field: "embed_tokens")
            }
            adapter.embeddingLoRA = .init(aT: a.transposed(), b: b, scale: try scale(config: config, module: WeightNames.hfEmbeddingModule, rank: a.rows))
        }
        return adapter
    }

    /// The module names a Llama-family base has for LoRA to target.
    static let targetableModules: Set<String> = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                                 "embed_tokens", "lm_head", "self_attn", "mlp"]

    /// `target_modules` must agree with the tensors, as PEFT has it: every module holding
    /// LoRA tensors is one that `target_modules` selects (a name equal to the module's or to
    /// its last parts, or a regular expression matching the whole name; "all-linear" selects
    /// every projection), and every listed name exists in the base model. A mismatch is
    /// refused with both sides named.
    static func checkTargets(_ targets: PEFTConfig.Targets?, adapted: [String]) throws {
        guard let targets else { return }
        let modules = adapted.sorted()
        func selected(_ module: String) throws -> Bool {
            switch targets {
            case .names(let names):
                return names.contains { module == $0 || module.hasSuffix("." + $0) }
            case .regex("all-linear"):
                return !module.hasSuffix("embed_tokens")
            case .regex(let pattern):
                let regex: NSRegularExpression
                do { regex = try NSRegularExpression(pattern: "^(?:" + pattern + ")$") } catch {
                    throw FacetError(.invalidConfig, "target_modules \(pattern) is not a valid regular expression", field: "target_modules")
                }
                return regex.firstMatch(in: module, range: NSRange(module.startIndex..., in: module)) != nil
            }
        }
        if case .names(let names) = targets {
            let unknown = names.filter { name in
                !targetableModules.contains(String(name.split(separator: ".").last ?? "")) && !modules.contains { $0 == name || $0.hasSuffix("." + name) }
            }
            if !unknown.isEmpty {
                throw FacetError(.invalidConfig, "target_modules names \(unknown.sorted()), which the base model does not have (its tensors adapt \(Self.shortNames(modules)))",
                                 field: "target_modules", remedy: "fix adapter_config.json's target_modules to the modules the adapter was trained on")
            }
        }
        let outside = try modules.filter { try !selected($0) }
        if !outside.isEmpty {
            let described: String = switch targets {
            case .names(let n): "\(n.sorted())"
            case .regex(let r): "\"\(r)\""
            }
            throw FacetError(.invalidConfig, "the tensors adapt \(Self.shortNames(outside)), which target_modules \(described) does not select",
                             field: "target_modules", remedy: "fix adapter_config.json's target_modules to the modules the adapter was trained on")
        }
    }

    /// Module names without their layer prefix, once each ("q_proj", "v_proj").
    static func shortNames(_ modules: [String]) -> String {
        let names = Set(modules.map { String($0.split(separator: ".").last ?? "") })
        return "[" + names.sorted().joined(separator: ", ") + "]"
    }

    /// `alpha / r` (or `alpha / sqrt(r)` with rsLoRA), alpha taken from `alpha_pattern`
    /// when a pattern matches the module name as PEFT matches it (`(.*\.)?pattern$`), for
    /// tensors of rank `rank` (which must be the rank the config gives the module).
    static func scale(config: PEFTConfig, module: String, rank: Int) throws -> Float {
        try checkRank(config: config, module: module, rank: rank)
        let alpha = try pattern(config.alphaPattern, "alpha_pattern", module: module) ?? config.loraAlpha
        let r = Double(rank)
        let scale = config.useRSLoRA == true ? alpha / r.squareRoot() : alpha / r
        try LoRAAdapter.checkScale(scale, module: module)
        return Float(scale)
    }

    /// The rank the config gives `module` (`rank_pattern`, else `r`) must be the saved
    /// tensors' rank: PEFT builds its layers from the config and refuses such a file, and
    /// the scale `alpha / r` would otherwise rest on a guess.
    static func checkRank(config: PEFTConfig, module: String, rank: Int) throws {
        let expected = try pattern(config.rankPattern, "rank_pattern", module: module) ?? config.r
        guard rank == expected else {
            throw FacetError(.shapeMismatch, "lora_A has rank \(rank) but adapter_config.json gives this module r = \(expected)", field: module,
                             remedy: "set r (or a rank_pattern entry for this module) to the saved tensors' rank; PEFT refuses this adapter too")
        }
    }

    /// The value of the first key (in sorted order) of `patterns` that matches `module` as
    /// PEFT matches its rank and alpha patterns (`(.*\.)?key$`), or nil.
    static func pattern<Value>(_ patterns: [String: Value]?, _ field: String, module: String) throws -> Value? {
        guard let patterns else { return nil }
        for key in patterns.keys.sorted() {
            let regex: NSRegularExpression
            do {
                regex = try NSRegularExpression(pattern: "^(.*\\.)?(" + key + ")$")
            } catch {
                throw FacetError(.invalidConfig, "\(field) key \(key) is not a valid regular expression", field: field)
            }
            if regex.firstMatch(in: module, range: NSRange(module.startIndex..., in: module)) != nil { return patterns[key]! }
        }
        return nil
    }

    static func matrix(_ t: (shape: [Int], values: [Float]), _ name: String) throws -> Matrix {
        guard t.shape.count == 2 else {
            throw FacetError(.shapeMismatch, "expected a 2-D tensor, found shape \(t.shape)", field: name, remedy: "the adapter file is corrupt")
        }
        return Matrix(rows: t.shape[0], cols: t.shape[1], data: t.values)
    }

}
