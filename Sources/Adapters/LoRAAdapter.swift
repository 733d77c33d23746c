import Kernels
import Llama
import Tensors

/// One low-rank pair for one linear layer: `delta(x) = scale * (x A^T) B^T`.
///
/// The factors are held as the kernels read them (`LowRankMatrix`: A as `[r, in]`, B
/// transposed as `[r, out]`, each in the narrowest exact precision); `a` and `b` give
/// them back as fp32 in checkpoint orientation for converters.
package struct LoRAPair: Sendable {
    package let packedA: LowRankMatrix     // [r, in]
    package let packedBT: LowRankMatrix    // [r, out]
    package var scale: Float
    package var rank: Int { packedA.rows }
    /// `A: [r, in]` (a copy).
    package var a: Matrix { packedA.matrix }
    /// `B: [out, r]`, the checkpoint orientation (a copy).
    package var b: Matrix { packedBT.matrix.transposed() }
    package var inDim: Int { packedA.cols }
    package var outDim: Int { packedBT.cols }
    package var byteSize: Int { packedA.byteSize + packedBT.byteSize }

    package init(a: Matrix, b: Matrix, scale: Float) {
        precondition(a.rows == b.cols, "LoRA A rows must equal B columns")
        self.packedA = LowRankMatrix(a)
        self.packedBT = LowRankMatrix(b.transposed())
        self.scale = scale
    }

    package init(packedA: LowRankMatrix, packedBT: LowRankMatrix, scale: Float) {
        self.packedA = packedA
        self.packedBT = packedBT
        self.scale = scale
    }

    /// The pair with both factors rounded to `precision` (a no-op when already there).
    package func stored(in precision: LowRankMatrix.Precision) -> LoRAPair {
        func convert(_ m: LowRankMatrix) -> LowRankMatrix { m.precision == precision ? m : LowRankMatrix(m.matrix, precision: precision) }
        return LoRAPair(packedA: convert(packedA), packedBT: convert(packedBT), scale: scale)
    }
}

/// How an adapter's low-rank factors are kept in memory.
/// - `exact` (default): the narrowest of f32/f16/bf16 that holds every value exactly, so
///   results are those of the file's values (16-bit files stay 16-bit).
/// - `bf16` / `f16` (opt-in): factors are rounded to 16 bits (round to nearest even): half
///   the memory and memory traffic of fp32 adapters, at a small accuracy cost.
package enum LoRAPrecision: String, Sendable, CaseIterable, Codable {
    case exact, bf16, f16
}

/// A LoRA adapter in memory, independent of its file format. Weights are fp32, in the base
/// model's Hugging Face orientation, never merged into the base.
package struct LoRAAdapter: Sendable {
    /// A display name (directory name or the name given at registration).
    package var name: String
    /// SHA-256 of the adapter's weight and config bytes: its identity in caches.
    package var digest: String
    /// `pairs[layer][role]`.
    package var pairs: [[LinearRole: LoRAPair]]
    /// Embedding LoRA: `embed(id) += scale * B A[:, id]`; stored as `A^T: [vocab, r]`, `B: [D, r]`.
    package var embeddingLoRA: EmbeddingLoRA?
    /// Full replacement tables (PEFT `modules_to_save`), possibly with more rows than the base.
    package var embedTokens: Matrix?    // [V', D]
    package var lmHead: Matrix?         // [V', D]

    package struct EmbeddingLoRA: Sendable {
        package var aT: Matrix          // [vocab, r]
        package var b: Matrix           // [D, r]
        package var scale: Float
        package init(aT: Matrix, b: Matrix, scale: Float) {
            self.aT = aT
            self.b = b
            self.scale = scale
        }
    }

    package init(name: String, digest: String, layers: Int) {
        self.name = name
        self.digest = digest
        self.pairs = Array(repeating: [:], count: layers)
    }

    /// Only the adapter's full tables (`modules_to_save` embed_tokens / lm_head), without its
    /// low-rank deltas: what a TensorRT-LLM engine built with this adapter's vocabulary runs
    /// for uid -1.
    package func tablesOnly() -> LoRAAdapter {
        var copy = LoRAAdapter(name: name + " (tables only)", digest: digest + "-tables", layers: pairs.count)
        copy.embedTokens = embedTokens
        copy.lmHead = lmHead
        return copy
    }

    /// Vocabulary of sequences using this adapter (larger than the base's when it extends it).
    package func vocabularySize(base: Int) -> Int { max(embedTokens?.rows ?? base, lmHead?.rows ?? base) }

    /// The adapter with its low-rank factors kept in `precision` (embedding LoRA and full
    /// replacement tables stay fp32).
    package func storing(_ precision: LoRAPrecision) -> LoRAAdapter {
        guard precision != .exact else { return self }
        let target: LowRankMatrix.Precision = precision == .bf16 ? .bf16 : .f16
        var copy = self
        copy.pairs = pairs.map { layer in layer.mapValues { $0.stored(in: target) } }
        return copy
    }

    package var maxRank: Int { pairs.flatMap { $0.values.map(\.rank) }.max() ?? embeddingLoRA?.aT.cols ?? 0 }

    /// Bytes of weights held.
    package var byteSize: Int {
        var n = pairs.reduce(0) { $0 + $1.values.reduce(0) { $0 + $1.byteSize } }
        if let e = embeddingLoRA { n += (e.aT.data.count + e.b.data.count) * 4 }
        n += (embedTokens?.data.count ?? 0) * 4 + (lmHead?.data.count ?? 0) * 4
        return n
    }

    package var targetRoles: [String] {
        var roles = Set<String>()
        for layer in pairs { for r in layer.keys { roles.insert(r.rawValue) } }
        if embeddingLoRA != nil { roles.insert("embed_tokens") }
        return roles.sorted()
    }

    /// The largest weight magnitude accepted in an adapter file (the largest fp16 value, the
    /// precision TensorRT-LLM keeps adapters in). Trained factors are orders of magnitude
    /// smaller; a file beyond it is corrupt or hostile and would turn every logit into NaN.
    package static let maxWeightMagnitude: Float = 65504

    /// Refuses NaN, infinite or absurdly large weights: an adapter is validated as data, not
    /// only by shape.
    package static func checkValues(_ values: [Float], tensor: String) throws {
        for (i, v) in values.enumerated() where !(v.magnitude <= maxWeightMagnitude) {
            throw FacetError(.invalidFile, "element \(i) is \(v): adapter weights must be finite and at most \(maxWeightMagnitude) in magnitude",
                             field: tensor, remedy: "the adapter is corrupt or diverged in training; retrain or export it again")
        }
    }

    /// Refuses a scale (alpha / r) that is not finite or beyond the weight bound.
    package static func checkScale(_ scale: Double, module: String) throws {
        guard scale.isFinite, scale.magnitude <= Double(maxWeightMagnitude) else {
            throw FacetError(.invalidConfig, "LoRA scale (lora_alpha / r) is \(scale) for \(module)", field: "lora_alpha",
                             remedy: "set lora_alpha to a value near r (scales are usually between 0.1 and 16)")
        }
    }

    /// Checks every tensor against the base model's shapes.
    package func validate(against c: LlamaConfiguration) throws {
        func mismatch(_ what: String, _ got: [Int], _ want: [Int]) -> FacetError {
            FacetError(.shapeMismatch, "\(what) has shape \(got) but the base model needs \(want)", field: what,
                       remedy: "adapter made for another base model? It must match \(c.architecture) with hidden size \(c.hiddenSize)")
        }
        guard pairs.count == c.numLayers else {
            throw FacetError(.shapeMismatch, "adapter has \(pairs.count) layers, the base model \(c.numLayers)", field: "layers",
                             remedy: "adapter made for another base model?")
        }
        for (l, layer) in pairs.enumerated() {
            for (role, p) in layer {
                let (inDim, outDim) = c.dims(of: role)
                let name = "layers.\(l).\(role.rawValue)"
                if p.inDim != inDim { throw mismatch(name + ".lora_A", [p.rank, p.inDim], [p.rank, inDim]) }
                if p.outDim != outDim { throw mismatch(name + ".lora_B", [p.outDim, p.rank], [outDim, p.rank]) }
            }
        }
        if let e = embeddingLoRA {
            if e.aT.rows != vocabularySize(base: c.vocabSize) { throw mismatch("embed_tokens.lora_embedding_A", [e.aT.cols, e.aT.rows], [e.aT.cols, c.vocabSize]) }
            if e.b.rows != c.hiddenSize || e.b.cols != e.aT.cols { throw mismatch("embed_tokens.lora_embedding_B", [e.b.rows, e.b.cols], [c.hiddenSize, e.aT.cols]) }
        }
        for (name, table) in [("embed_tokens", embedTokens), ("lm_head", lmHead)] {
            guard let table else { continue }
            if table.cols != c.hiddenSize { throw mismatch(name, [table.rows, table.cols], [c.vocabSize, c.hiddenSize]) }
            if table.rows < c.vocabSize {
                throw FacetError(.shapeMismatch, "\(name) has \(table.rows) rows, fewer than the base vocabulary of \(c.vocabSize)", field: name,
                                 remedy: "adapter made for another base model?")
            }
        }
        if let e = embedTokens?.rows, let h = lmHead?.rows, e != h {
            throw FacetError(.shapeMismatch, "embed_tokens has \(e) rows but lm_head \(h)", field: "modules_to_save",
                             remedy: "an extended vocabulary needs both tables with the same number of rows")
        }
    }
}
