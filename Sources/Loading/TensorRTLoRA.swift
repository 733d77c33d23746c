import Adapters
import Foundation
import Formats
import Llama
import Tensors

/// TensorRT-LLM's converted LoRA form (`hf_lora_convert.py`): `model.lora_config.npy`
/// `[1, rows, 3]` of `[module_id, layer, rank]` and `model.lora_weights.npy`
/// `[1, rows, max_row]`, each row `A [r, in]` then `B [out, r]` (B already scaled), flattened.
package enum TensorRTLoRA {
    /// TensorRT-LLM's module ids for Llama. Note the MLP naming: `mlp_h_to_4h` is HF's
    /// gate_proj and `mlp_gate` is HF's up_proj.
    package static let moduleIDs: [(id: Int, name: String, role: LinearRole?)] = [
        (0, "attn_qkv", nil), (1, "attn_q", .q), (2, "attn_k", .k), (3, "attn_v", .v), (4, "attn_dense", .o),
        (5, "mlp_h_to_4h", .gate), (6, "mlp_4h_to_h", .down), (7, "mlp_gate", .up),
    ]

    static func id(of role: LinearRole) -> Int { moduleIDs.first { $0.role == role }!.id }

    static func dims(_ role: LinearRole, _ c: LlamaConfiguration) -> (input: Int, output: Int) { c.dims(of: role) }

    /// Builds an adapter from the two arrays (as loaded from the files or sent by a Triton
    /// client), checked against `base`.
    package static func adapter(weights: NpyArray, config: NpyArray, name: String, base c: LlamaConfiguration,
                               source: String = "lora_weights") throws -> LoRAAdapter {
        func bad(_ field: String, _ message: String) -> FacetError {
            FacetError(.invalidArgument, message, field: field, remedy: "send the arrays exactly as hf_lora_convert.py wrote them")
        }
        // Accept [1, rows, k] (Triton's batch of one) or [rows, k].
        let cshape = config.shape.count == 3 ? Array(config.shape.dropFirst()) : config.shape
        let wshape = weights.shape.count == 3 ? Array(weights.shape.dropFirst()) : weights.shape
        guard cshape.count == 2, cshape[1] == 3 || cshape[1] == 4, config.isInteger else {
            throw bad("lora_config", "must be an integer array [1, rows, 3], found \(config.kind.rawValue) \(config.shape)")
        }
        guard wshape.count == 2, wshape[0] == cshape[0], !weights.isInteger else {
            throw bad("lora_weights", "must be a float array [1, \(cshape[0]), size] matching lora_config, found \(weights.kind.rawValue) \(weights.shape)")
        }
        let rows = cshape[0], width = cshape[1], rowSize = wshape[1]
        for (i, v) in weights.values.enumerated() where !(v.magnitude <= Double(LoRAAdapter.maxWeightMagnitude)) {
            throw FacetError(.invalidFile, "element \(i) is \(v): adapter weights must be finite and at most \(LoRAAdapter.maxWeightMagnitude) in magnitude",
                             field: "lora_weights", remedy: "the adapter is corrupt or diverged in training; convert it again")
        }
        var digest = SHA256()
        config.values.withUnsafeBytes { digest.update($0) }
        weights.values.withUnsafeBytes { digest.update($0) }
        var adapter = LoRAAdapter(name: name, digest: digest.finalize().map { String(format: "%02x", $0) }.joined(), layers: c.numLayers)
        for row in 0..<rows {
            let fields = try (0..<width).map { k in
                let v = config.values[row * width + k]
                guard let i = Int(exactly: v), i.magnitude < 1 << 31 else { throw bad("lora_config", "row \(row) holds \(v), not a small integer") }
                return i
            }
            let (moduleID, layer, rank) = (fields[0], fields[1], fields[2])
            if width == 4 && fields[3] != 0 {
                throw FacetError(.unsupported, "row \(row) is a DoRA module", field: "lora_config", remedy: "DoRA adapters are not supported yet")
            }
            guard let module = moduleIDs.first(where: { $0.id == moduleID }) else {
                throw FacetError(.unsupported, "row \(row): module id \(moduleID) (cross-attention, MoE or router) does not exist in a Llama model",
                                 field: "lora_config", remedy: "Llama adapters use module ids 0-7")
            }
            guard layer >= 0 && layer < c.numLayers else {
                throw FacetError(.shapeMismatch, "row \(row): layer \(layer) does not exist (the base has \(c.numLayers))", field: "lora_config",
                                 remedy: "adapter made for another base model?")
            }
            guard rank > 0, rank <= rowSize else { throw bad("lora_config", "row \(row): rank \(rank) must be positive and fit the rows' \(rowSize) values") }
            let parts: [(LinearRole, Int)]   // role and its output rows inside B
            let inDim: Int
            if let role = module.role {
                parts = [(role, dims(role, c).output)]
                inDim = dims(role, c).input
            } else {
                parts = [(.q, dims(.q, c).output), (.k, dims(.k, c).output), (.v, dims(.v, c).output)]
                inDim = c.hiddenSize
            }
            let outDim = parts.reduce(0) { $0 + $1.1 }
            let need = Checked.multiply(rank, inDim).flatMap { a in Checked.multiply(outDim, rank).flatMap { Checked.add(a, $0) } } ?? Int.max
            guard need <= rowSize else {
                throw FacetError(.shapeMismatch, "row \(row) (\(module.name), layer \(layer), rank \(rank)) needs \(need) values but rows hold \(rowSize)",
                                 field: "lora_weights", remedy: "adapter made for another base model?")
            }
            let base = row * rowSize
            let a = Matrix(rows: rank, cols: inDim, data: weights.values[base..<(base + rank * inDim)].map(Float.init))
            var offset = base + rank * inDim
            for (role, out) in parts {
                let b = Matrix(rows: out, cols: rank, data: weights.values[offset..<(offset + out * rank)].map(Float.init))
                offset += out * rank
                if adapter.pairs[layer][role] != nil {
                    throw bad("lora_config", "layer \(layer) \(role.rawValue) appears twice")
                }
                adapter.pairs[layer][role] = LoRAPair(a: a, b: b, scale: 1)
            }
        }
        return adapter
    }

    package static func load(directory: String, name: String, base: LlamaConfiguration) throws -> LoRAAdapter {
        let weightsPath = (directory as NSString).appendingPathComponent("model.lora_weights.npy")
        let configPath = (directory as NSString).appendingPathComponent("model.lora_config.npy")
        let weights = try NpyArray.read(path: weightsPath)
        let config = try NpyArray.read(path: configPath)
        do {
            return try adapter(weights: weights, config: config, name: name, base: base)
        } catch let e as FacetError {
            throw e.inFile(e.field == "lora_config" ? configPath : weightsPath)
        }
    }

    /// The adapter as TensorRT-LLM arrays: scale folded into B, rows per layer in HF
    /// module order, zero-padded to the longest row.
    package static func arrays(_ adapter: LoRAAdapter, storage: NpyArray.Kind = .f16) throws -> (weights: NpyArray, config: NpyArray) {
        if adapter.embeddingLoRA != nil || adapter.embedTokens != nil || adapter.lmHead != nil {
            throw FacetError(.unsupported, "TensorRT-LLM's LoRA arrays cannot hold embedding LoRA or modules_to_save tables",
                             field: adapter.name, remedy: "keep this adapter in PEFT format")
        }
        var rows: [(Int, Int, Int, [Double])] = []
        for (layer, pairs) in adapter.pairs.enumerated() {
            for role in LinearRole.allCases {
                guard let p = pairs[role] else { continue }
                let values = p.a.data.map(Double.init) + p.b.data.map { Double($0 * p.scale) }
                rows.append((id(of: role), layer, p.rank, values))
            }
        }
        guard !rows.isEmpty else { throw FacetError(.invalidArgument, "the adapter has no LoRA pairs to convert", field: adapter.name) }
        let width = rows.map(\.3.count).max()!
        var w: [Double] = []
        w.reserveCapacity(rows.count * width)
        for r in rows { w += r.3 + Array(repeating: 0, count: width - r.3.count) }
        let cfg = rows.flatMap { [Double($0.0), Double($0.1), Double($0.2)] }
        return (NpyArray(shape: [1, rows.count, width], kind: storage, values: w),
                NpyArray(shape: [1, rows.count, 3], kind: .i32, values: cfg))
    }
}
