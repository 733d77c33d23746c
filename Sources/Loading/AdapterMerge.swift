import Adapters
import Foundation
import Formats
import Kernels
import Llama
import Tensors

/// Baking an adapter into base weights (`W + scale * B A`), and writing models and adapters
/// in Hugging Face layouts.
package enum AdapterMerge {
    /// A copy of `weights` with `adapter` merged in. Extended vocabularies replace the tables.
    package static func merge(_ adapter: LoRAAdapter, into weights: LlamaWeights, config: LlamaConfiguration) throws -> (LlamaWeights, LlamaConfiguration) {
        try adapter.validate(against: config)
        var w = weights
        var c = config
        func merged(_ w: LinearWeight, _ p: LoRAPair) -> LinearWeight {
            // delta[o, i] = scale * sum_j B[o, j] A[j, i]
            let m = w.dequantized()
            var out = m
            let r = p.rank
            let a = p.a, b = p.b    // decoded once
            for o in 0..<m.rows {
                for j in 0..<r {
                    let bj = b.data[o * r + j] * p.scale
                    if bj == 0 { continue }
                    for i in 0..<m.cols { out.data[o * m.cols + i] += bj * a.data[j * m.cols + i] }
                }
            }
            return LinearWeight(out)
        }
        for l in 0..<config.numLayers {
            for (role, p) in adapter.pairs[l] {
                switch role {
                case .q: w.layers[l].wq = merged(w.layers[l].wq, p)
                case .k: w.layers[l].wk = merged(w.layers[l].wk, p)
                case .v: w.layers[l].wv = merged(w.layers[l].wv, p)
                case .o: w.layers[l].wo = merged(w.layers[l].wo, p)
                case .gate: w.layers[l].wGate = merged(w.layers[l].wGate, p)
                case .up: w.layers[l].wUp = merged(w.layers[l].wUp, p)
                case .down: w.layers[l].wDown = merged(w.layers[l].wDown, p)
                }
            }
        }
        if let table = adapter.embedTokens { w.embedding = LinearWeight(table) }
        if let head = adapter.lmHead {
            w.lmHead = LinearWeight(head)
        } else if adapter.embedTokens != nil && config.tieWordEmbeddings {
            w.lmHead = w.embedding
        }
        if let e = adapter.embeddingLoRA {
            // E[id] += scale * B A[:, id], with A^T stored as [vocab, r].
            if config.tieWordEmbeddings && adapter.lmHead == nil { w.lmHead = w.embedding }  // keep the head as it was
            let r = e.aT.cols, d = w.embedding.cols
            var table = w.embedding.dequantized()
            for id in 0..<min(table.rows, e.aT.rows) {
                for k in 0..<d {
                    var s: Float = 0
                    for j in 0..<r { s += e.b.data[k * r + j] * e.aT.data[id * r + j] }
                    table.data[id * d + k] += e.scale * s
                }
            }
            w.embedding = LinearWeight(table)
        }
        c.vocabSize = w.embedding.rows
        if w.lmHead.rows != w.embedding.rows || (config.tieWordEmbeddings && adapter.embeddingLoRA != nil) || adapter.lmHead != nil {
            c.tieWordEmbeddings = false
        }
        try w.validate(against: c)
        return (w, c)
    }

    /// Writes `config.json` and `model.safetensors` (names as transformers saves them).
    package static func writeHuggingFace(weights w: LlamaWeights, config c: LlamaConfiguration, to directory: String,
                                        dtype: SafetensorsFile.DType = .f32) throws {
        try createDirectory(directory)
        var tensors: [SafetensorsWriter.Tensor] = [
            .init(name: WeightNames.hfEmbedding, shape: [w.embedding.rows, w.embedding.cols], values: w.embedding.dequantized().data),
            .init(name: WeightNames.hfFinalNorm, shape: [w.finalNorm.count], values: w.finalNorm),
        ]
        if !c.tieWordEmbeddings {
            tensors.append(.init(name: WeightNames.hfLMHead, shape: [w.lmHead.rows, w.lmHead.cols], values: w.lmHead.dequantized().data))
        }
        for (l, layer) in w.layers.enumerated() {
            func v(_ role: LayerWeightRole, _ x: [Float]?) {
                if let x { tensors.append(.init(name: WeightNames.hf(layer: l, role), shape: [x.count], values: x)) }
            }
            v(.attnNorm, layer.attnNorm)
            v(.ffnNorm, layer.ffnNorm)
            for (role, weight, bias) in WeightNames.linearWeights {
                let x = layer.linear(role)
                tensors.append(.init(name: WeightNames.hf(layer: l, weight), shape: [x.rows, x.cols], values: x.dequantized().data))
                v(bias, layer.bias(role))
            }
        }
        try write(try SafetensorsWriter.encode(tensors, dtype: dtype, metadata: ["format": "pt"]), to: directory + "/model.safetensors")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try write(try encoder.encode(c), to: directory + "/config.json")
    }

    /// Writes a PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    /// Each pair keeps its own rank (rank_pattern) and scale (alpha_pattern).
    package static func writePEFT(_ adapter: LoRAAdapter, to directory: String, baseModel: String?) throws {
        try createDirectory(directory)
        var tensors: [SafetensorsWriter.Tensor] = []
        var ranks: [Int] = []
        var rankPattern: [String: Int] = [:], alphaPattern: [String: Double] = [:]
        let r = adapter.maxRank
        for (l, pairs) in adapter.pairs.enumerated() {
            for (role, p) in pairs {
                let module = WeightNames.hfModule(layer: l, role)
                let a = p.a, b = p.b
                tensors.append(.init(name: WeightNames.peftPrefix + module + ".lora_A.weight", shape: [a.rows, a.cols], values: a.data))
                tensors.append(.init(name: WeightNames.peftPrefix + module + ".lora_B.weight", shape: [b.rows, b.cols], values: b.data))
                ranks.append(p.rank)
                if p.rank != r { rankPattern[module] = p.rank }
                let alpha = Double(p.scale) * Double(p.rank)
                alphaPattern[module] = alpha
            }
        }
        if let e = adapter.embeddingLoRA {
            let a = e.aT.transposed()
            let module = WeightNames.hfEmbeddingModule
            tensors.append(.init(name: WeightNames.peftPrefix + module + ".lora_embedding_A", shape: [a.rows, a.cols], values: a.data))
            tensors.append(.init(name: WeightNames.peftPrefix + module + ".lora_embedding_B", shape: [e.b.rows, e.b.cols], values: e.b.data))
            if a.rows != r { rankPattern[module] = a.rows }
            alphaPattern[module] = Double(e.scale) * Double(a.rows)
        }
        var modulesToSave: [String] = []
        if let t = adapter.embedTokens {
            tensors.append(.init(name: WeightNames.peftPrefix + WeightNames.hfEmbedding, shape: [t.rows, t.cols], values: t.data))
            modulesToSave.append("embed_tokens")
        }
        if let t = adapter.lmHead {
            tensors.append(.init(name: WeightNames.peftPrefix + WeightNames.hfLMHead, shape: [t.rows, t.cols], values: t.data))
            modulesToSave.append("lm_head")
        }
        // One alpha for all when every scale agrees, else per-module patterns.
        let alphas = Set(alphaPattern.values)
        let targets = Set(adapter.pairs.flatMap { $0.keys.map(\.rawValue) } + (adapter.embeddingLoRA != nil ? ["embed_tokens"] : [])).sorted()
        var config = PEFTConfig(r: r, loraAlpha: alphas.count == 1 ? alphas.first! : Double(r), targetModules: targets, baseModel: baseModel)
        config.rankPattern = rankPattern
        config.alphaPattern = alphas.count == 1 ? [:] : alphaPattern
        config.modulesToSave = modulesToSave.isEmpty ? nil : modulesToSave
        try write(try SafetensorsWriter.encode(tensors, metadata: ["format": "pt"]), to: directory + "/adapter_model.safetensors")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try write(try encoder.encode(config), to: directory + "/adapter_config.json")
    }


    package static func createDirectory(_ path: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw FacetError(.io, "cannot create the output directory (\(error.localizedDescription))", file: path)
        }
    }

    package static func write(_ data: Data, to path: String) throws {
        do {
            try data.write(to: URL(fileURLWithPath: path))
        } catch {
            throw FacetError(.io, "cannot write (\(error.localizedDescription))", file: path, remedy: "check the directory is writable")
        }
    }
}
