import Foundation
import Formats
import Kernels
import Llama
import Tensors

/// Where a model came from, for messages and for finding its tokenizer.
package enum ModelSource: Sendable, Equatable {
    case huggingFace(directory: String)
    case gguf(file: String)

    package var path: String {
        switch self {
        case .huggingFace(let d): d
        case .gguf(let f): f
        }
    }
}

/// Reads model weights from a Hugging Face directory or a GGUF file.
package enum ModelLoader {
    /// Loads the model at `path` (a directory with config.json + *.safetensors, or a .gguf).
    /// `progress` receives short human-readable status lines.
    package static func load(path: String, progress: (String) -> Void = { _ in }) throws -> (LlamaModel, ModelSource) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw FacetError(.notFound, "model path does not exist", file: path,
                             remedy: "pass a Hugging Face model directory or a .gguf file; run scripts/setup for the default model")
        }
        if isDirectory.boolValue {
            return (try loadHuggingFace(directory: path, progress: progress), .huggingFace(directory: path))
        }
        return (try loadGGUF(file: try GGUFFile(path: path), progress: progress), .gguf(file: path))
    }

    // MARK: - Hugging Face

    package static func readConfig(directory: String) throws -> LlamaConfiguration {
        let configPath = (directory as NSString).appendingPathComponent("config.json")
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw FacetError(.notFound, "config.json is missing", file: configPath,
                             remedy: "a Hugging Face model directory needs config.json next to its *.safetensors")
        }
        return try decodeJSON(LlamaConfiguration.self, from: data, file: configPath)
    }

    package static func loadHuggingFace(directory: String, progress: (String) -> Void = { _ in }) throws -> LlamaModel {
        let config = try readConfig(directory: directory)
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".safetensors") }.sorted()
        guard !names.isEmpty else {
            throw FacetError(.notFound, "no *.safetensors files in the model directory", file: directory,
                             remedy: "Facet reads safetensors weights; convert pytorch_model.bin with transformers' save_pretrained")
        }
        let files = try names.map { try SafetensorsFile(path: (directory as NSString).appendingPathComponent($0)) }
        let source = try SafetensorsSource(files: files, description: directory)
        progress("Loading \(config.architecture) (\(config.numLayers) layers, hidden \(config.hiddenSize)) from \(directory)")
        let weights = try assemble(config: config, source: source, progress: progress,
                                   name: { WeightNames.hf(layer: $0, $1) },
                                   embedding: WeightNames.hfEmbedding, finalNorm: WeightNames.hfFinalNorm, lmHead: WeightNames.hfLMHead,
                                   permuteQK: false)
        return try LlamaModel(config: config, weights: weights, weightTiles: .off)
    }

    // MARK: - GGUF

    package static func ggufConfig(_ file: GGUFFile) throws -> LlamaConfiguration {
        let arch = file.string("general.architecture") ?? "llama"
        let architecture: String
        switch arch {
        case "llama": architecture = "LlamaForCausalLM"
        case "mistral": architecture = "MistralForCausalLM"
        case "qwen2": architecture = "Qwen2ForCausalLM"
        default:
            throw FacetError(.unsupported, "GGUF architecture \(arch) is not supported", file: file.path, field: "general.architecture",
                             remedy: "Facet runs llama, mistral and qwen2 GGUF models")
        }
        func required(_ key: String) throws -> Int {
            guard let v = file.int("\(arch).\(key)") else {
                throw FacetError(.invalidFile, "metadata key is missing", file: file.path, field: "\(arch).\(key)",
                                 remedy: "the GGUF was written by an incompatible converter")
            }
            return v
        }
        let hidden = try required("embedding_length")
        let heads = try required("attention.head_count")
        let kvHeads = file.int("\(arch).attention.head_count_kv") ?? heads
        let vocab = file.int("\(arch).vocab_size") ?? file.metadata["tokenizer.ggml.tokens"]?.array?.count
            ?? file.tensors[WeightNames.ggufEmbedding]?.dims.last ?? 0
        let headDim = file.int("\(arch).attention.key_length") ?? hidden / max(heads, 1)
        var scaling = LlamaConfiguration.RopeScaling.none
        if let type = file.string("\(arch).rope.scaling.type"), type != "none" {
            guard type == "linear", let factor = file.double("\(arch).rope.scaling.factor") else {
                throw FacetError(.unsupported, "rope scaling \(type) is not supported", file: file.path, field: "\(arch).rope.scaling.type")
            }
            scaling = .linear(factor: factor)
        }
        if file.tensors[WeightNames.ggufRopeFreqs] != nil {
            scaling = .frequencyFactors(try file.floats(WeightNames.ggufRopeFreqs))
        }
        var eos: [Int] = []
        if let e = file.int("tokenizer.ggml.eos_token_id") { eos.append(e) }
        if let e = file.int("tokenizer.ggml.eot_token_id"), !eos.contains(e) { eos.append(e) }
        let config = LlamaConfiguration(
            architecture: architecture, vocabSize: vocab, hiddenSize: hidden, intermediateSize: try required("feed_forward_length"),
            numLayers: try required("block_count"), numHeads: heads, numKVHeads: kvHeads, headDim: headDim,
            rmsNormEps: Float(file.double("\(arch).attention.layer_norm_rms_epsilon") ?? 1e-5),
            ropeTheta: file.double("\(arch).rope.freq_base") ?? 10000, ropeScaling: scaling,
            maxPositionEmbeddings: file.int("\(arch).context_length") ?? 2048,
            tieWordEmbeddings: file.tensors[WeightNames.ggufLMHead] == nil,
            qkvBias: file.tensors[WeightNames.gguf(layer: 0, .qBias)] != nil,
            outputBias: file.tensors[WeightNames.gguf(layer: 0, .oBias)] != nil,
            slidingWindow: file.int("\(arch).attention.sliding_window"),
            bosTokenID: file.int("tokenizer.ggml.bos_token_id"), eosTokenIDs: eos)
        try config.validate(file: file.path)
        return config
    }

    package static func loadGGUF(file: GGUFFile, progress: (String) -> Void = { _ in }) throws -> LlamaModel {
        let config = try ggufConfig(file)
        progress("Loading \(config.architecture) (\(config.numLayers) layers, hidden \(config.hiddenSize)) from \(file.path)")
        // llama.cpp's converter permutes the rows of Q and K for its interleaved RoPE on
        // "llama" models; Facet computes in Hugging Face order, so it permutes them back.
        let weights = try assemble(config: config, source: GGUFSource(file: file), progress: progress,
                                   name: { WeightNames.gguf(layer: $0, $1) },
                                   embedding: WeightNames.ggufEmbedding, finalNorm: WeightNames.ggufFinalNorm,
                                   lmHead: WeightNames.ggufLMHead,
                                   permuteQK: config.architecture != "Qwen2ForCausalLM")
        return try LlamaModel(config: config, weights: weights, weightTiles: .off)
    }

    /// Inverse of llama.cpp's `permute`: GGUF row `h*hd + 2i + j` holds HF row
    /// `h*hd + j*hd/2 + i` (for head h, i < hd/2, j in {0, 1}).
    static func unpermuteRows(_ m: Matrix, heads: Int) -> Matrix {
        let hd = m.rows / heads, half = hd / 2
        var out = Matrix(zeros: m.rows, m.cols)
        m.data.withUnsafeBufferPointer { src in
            out.data.withUnsafeMutableBufferPointer { dst in
                for h in 0..<heads {
                    for i in 0..<half {
                        for j in 0..<2 {
                            let from = h * hd + 2 * i + j, to = h * hd + j * half + i
                            (dst.baseAddress! + to * m.cols).update(from: src.baseAddress! + from * m.cols, count: m.cols)
                        }
                    }
                }
            }
        }
        return out
    }

    static func unpermute(_ v: [Float], heads: Int) -> [Float] {
        unpermuteRows(Matrix(rows: v.count, cols: 1, data: v), heads: heads).data
    }

    // MARK: - Assembly

    static func assemble(
        config c: LlamaConfiguration, source: any TensorSource, progress: (String) -> Void,
        name: (Int, LayerWeightRole) -> String, embedding: String, finalNorm: String, lmHead: String, permuteQK: Bool
    ) throws -> LlamaWeights {
        let compact = keepCompactWeights
        let embed = try source.linear(embedding, permuteHeads: nil, keepCompact: compact)
        var layers: [LlamaLayerWeights] = []
        layers.reserveCapacity(c.numLayers)
        for l in 0..<c.numLayers {
            func m(_ r: LayerWeightRole, heads: Int? = nil) throws -> LinearWeight {
                try source.linear(name(l, r), permuteHeads: permuteQK ? heads : nil, keepCompact: compact)
            }
            func opt(_ r: LayerWeightRole) throws -> [Float]? { try source.optionalVector(name(l, r)) }
            var bq = try opt(.qBias), bk = try opt(.kBias)
            if permuteQK {
                bq = bq.map { unpermute($0, heads: c.numHeads) }
                bk = bk.map { unpermute($0, heads: c.numKVHeads) }
            }
            layers.append(LlamaLayerWeights(
                attnNorm: try source.vector(name(l, .attnNorm)), wq: try m(.q, heads: c.numHeads), wk: try m(.k, heads: c.numKVHeads),
                wv: try m(.v), wo: try m(.o), bq: bq, bk: bk, bv: try opt(.vBias), bo: try opt(.oBias),
                ffnNorm: try source.vector(name(l, .ffnNorm)), wGate: try m(.gate), wUp: try m(.up), wDown: try m(.down),
                bGate: try opt(.gateBias), bUp: try opt(.upBias), bDown: try opt(.downBias)))
            if (l + 1) % 10 == 0 || l + 1 == c.numLayers { progress("  layers \(l + 1)/\(c.numLayers)") }
        }
        let head = source.has(lmHead) ? try source.linear(lmHead, permuteHeads: nil, keepCompact: compact) : embed
        let weights = LlamaWeights(embedding: embed, layers: layers, finalNorm: try source.vector(finalNorm), lmHead: head)
        try weights.validate(against: c, file: source.description)
        return weights
    }

    /// Weights stay in their file's compact format (F16, BF16, Q4_0, Q4_1, Q8_0) unless
    /// FACET_WEIGHTS=f32 asks for everything dequantized at load.
    static var keepCompactWeights: Bool { ProcessInfo.processInfo.environment["FACET_WEIGHTS"] != "f32" }
}

/// Decodes JSON into a typed configuration, turning decoding errors into `FacetError`s
/// that name the file and the field.
package func decodeJSON<T: Decodable>(_ type: T.Type, from data: Data, file: String) throws -> T {
    do {
        return try JSONDecoder().decode(T.self, from: data)
    } catch let error as FacetError {
        throw error.inFile(file)
    } catch let DecodingError.keyNotFound(key, context) {
        throw FacetError(.invalidConfig, "required field is missing", file: file,
                         field: (context.codingPath.map(\.stringValue) + [key.stringValue]).joined(separator: "."),
                         remedy: "add the field or use the model's original file")
    } catch let DecodingError.typeMismatch(_, context) {
        throw FacetError(.invalidConfig, "field has the wrong type (\(context.debugDescription))", file: file,
                         field: context.codingPath.map(\.stringValue).joined(separator: "."), remedy: "fix the field's value")
    } catch let DecodingError.valueNotFound(_, context) {
        throw FacetError(.invalidConfig, "field is null", file: file,
                         field: context.codingPath.map(\.stringValue).joined(separator: "."), remedy: "give the field a value")
    } catch let DecodingError.dataCorrupted(context) {
        throw FacetError(.invalidConfig, "not valid JSON (\(context.debugDescription))", file: file,
                         field: context.codingPath.isEmpty ? nil : context.codingPath.map(\.stringValue).joined(separator: "."),
                         remedy: "the file is truncated or corrupt")
    }
}
