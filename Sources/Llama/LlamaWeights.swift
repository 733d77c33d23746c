import Kernels
import Tensors

/// Role of a weight inside a decoder layer; the one place checkpoint names map to.
package enum LayerWeightRole: String, CaseIterable, Sendable {
    case attnNorm, q, k, v, o, qBias, kBias, vBias, oBias, ffnNorm, gate, up, down, gateBias, upBias, downBias
}

/// The weights of one decoder layer. Linear weights are `[out, in]` (checkpoint order).
package struct LlamaLayerWeights: Sendable {
    package var attnNorm: [Float]     // [D]
    package var wq: LinearWeight          // [Hq*hd, D]
    package var wk: LinearWeight          // [Hkv*hd, D]
    package var wv: LinearWeight          // [Hkv*hd, D]
    package var wo: LinearWeight          // [D, Hq*hd]
    package var bq: [Float]?          // [Hq*hd]   (Qwen2)
    package var bk: [Float]?          // [Hkv*hd]
    package var bv: [Float]?          // [Hkv*hd]
    package var bo: [Float]?          // [D]
    package var ffnNorm: [Float]      // [D]
    package var wGate: LinearWeight       // [I, D]
    package var wUp: LinearWeight         // [I, D]
    package var wDown: LinearWeight       // [D, I]
    package var bGate: [Float]?       // [I]
    package var bUp: [Float]?         // [I]
    package var bDown: [Float]?       // [D]

    package init(attnNorm: [Float], wq: LinearWeight, wk: LinearWeight, wv: LinearWeight, wo: LinearWeight, bq: [Float]? = nil, bk: [Float]? = nil,
                bv: [Float]? = nil, bo: [Float]? = nil, ffnNorm: [Float], wGate: LinearWeight, wUp: LinearWeight, wDown: LinearWeight,
                bGate: [Float]? = nil, bUp: [Float]? = nil, bDown: [Float]? = nil) {
        self.attnNorm = attnNorm
        self.wq = wq
        self.wk = wk
        self.wv = wv
        self.wo = wo
        self.bq = bq
        self.bk = bk
        self.bv = bv
        self.bo = bo
        self.ffnNorm = ffnNorm
        self.wGate = wGate
        self.wUp = wUp
        self.wDown = wDown
        self.bGate = bGate
        self.bUp = bUp
        self.bDown = bDown
    }

    /// The weight of a linear role.
    package func linear(_ role: LinearRole) -> LinearWeight {
        switch role {
        case .q: wq
        case .k: wk
        case .v: wv
        case .o: wo
        case .gate: wGate
        case .up: wUp
        case .down: wDown
        }
    }

    /// The bias of a linear role (Qwen2 has q/k/v biases; Llama none).
    package func bias(_ role: LinearRole) -> [Float]? {
        switch role {
        case .q: bq
        case .k: bk
        case .v: bv
        case .o: bo
        case .gate: bGate
        case .up: bUp
        case .down: bDown
        }
    }
}

/// All weights of a Llama-family model.
package struct LlamaWeights: Sendable {
    package var embedding: LinearWeight           // [V, D]
    package var layers: [LlamaLayerWeights]   // [L]
    package var finalNorm: [Float]            // [D]
    package var lmHead: LinearWeight              // [V, D] (the embedding itself when tied)

    package init(embedding: LinearWeight, layers: [LlamaLayerWeights], finalNorm: [Float], lmHead: LinearWeight) {
        self.embedding = embedding
        self.layers = layers
        self.finalNorm = finalNorm
        self.lmHead = lmHead
    }

    /// These weights with tiled copies of every Q4_0/Q4_1/Q8_0 product weight (the seven per
    /// layer and the output head; the embedding is only looked up by row), read by the int8
    /// mode and by fp32 products on AVX-512. Products give the same bits either
    /// way, faster with the tiles.
    package func withTiles() -> LlamaWeights { mappingProducts { $0.withTiles() } }

    /// These weights with `f` applied to every product weight (the seven per layer and the
    /// output head).
    private func mappingProducts(_ f: (LinearWeight) -> LinearWeight) -> LlamaWeights {
        var w = self
        for i in w.layers.indices {
            w.layers[i].wq = f(w.layers[i].wq)
            w.layers[i].wk = f(w.layers[i].wk)
            w.layers[i].wv = f(w.layers[i].wv)
            w.layers[i].wo = f(w.layers[i].wo)
            w.layers[i].wGate = f(w.layers[i].wGate)
            w.layers[i].wUp = f(w.layers[i].wUp)
            w.layers[i].wDown = f(w.layers[i].wDown)
        }
        w.lmHead = f(w.lmHead)
        return w
    }

    /// Bytes of the tiled copies (see `withTiles`).
    package var tileBytes: Int {
        layers.reduce(lmHead.tileBytes) { sum, l in LinearRole.allCases.reduce(sum) { $0 + l.linear($1).tileBytes } }
    }

    /// These weights without tiled copies (see `withTiles`).
    package func withoutTiles() -> LlamaWeights { mappingProducts { $0.withoutTiles() } }

    /// What `mode` leaves in fp32, as a sentence for the load log ("applies to ...: this
    /// model's 30 q6_K matrices keep fp32 products"), counting every layer's seven linear
    /// weights and the output head; nil when the mode covers them all.
    package func fp32Note(_ mode: ComputeMode) -> String? {
        let all = layers.flatMap { l in LinearRole.allCases.map { l.linear($0).format } } + [lmHead.format]
        let outside = WeightFormat.allCases.compactMap { f -> String? in
            let n = all.filter { $0 == f && !mode.covers(f) }.count
            return n > 0 ? "\(n) \(f.rawValue)" : nil
        }
        guard !outside.isEmpty else { return nil }
        return "applies to \(mode.coveredFormats): this model's \(outside.joined(separator: ", ")) matrices keep fp32 products"
    }

    /// Checks every shape against the configuration (this rank's part of it under tensor
    /// parallelism); errors name the tensor.
    package func validate(against c: LlamaConfiguration, file: String? = nil, shard: TensorShard = .whole) throws {
        func check(_ name: String, _ m: LinearWeight, _ rows: Int, _ cols: Int) throws {
            guard m.rows == rows, m.cols == cols else {
                throw FacetError(.shapeMismatch, "shape [\(m.rows), \(m.cols)] but the config implies [\(rows), \(cols)]",
                                 file: file, field: name, remedy: "config.json and the weights come from different models")
            }
        }
        func check(_ name: String, _ v: [Float]?, _ n: Int) throws {
            guard let v else { return }
            guard v.count == n else {
                throw FacetError(.shapeMismatch, "has \(v.count) values but the config implies \(n)", file: file, field: name,
                                 remedy: "config.json and the weights come from different models")
            }
        }
        let local = shard.localSizes(c)
        let d = c.hiddenSize, q = local.heads * c.headDim, kv = local.kvHeads * c.headDim, i = local.intermediate
        try check("embed_tokens", embedding, c.vocabSize, d)
        try check("lm_head", lmHead, shard.vocabularyPart(c.vocabSize).count, d)
        try check("norm", finalNorm, d)
        guard layers.count == c.numLayers else {
            throw FacetError(.shapeMismatch, "found \(layers.count) layers but num_hidden_layers is \(c.numLayers)", file: file, field: "layers")
        }
        for (n, l) in layers.enumerated() {
            let p = "layers.\(n)."
            try check(p + "input_layernorm", l.attnNorm, d)
            try check(p + "q_proj", l.wq, q, d)
            try check(p + "k_proj", l.wk, kv, d)
            try check(p + "v_proj", l.wv, kv, d)
            try check(p + "o_proj", l.wo, d, q)
            try check(p + "q_proj.bias", l.bq, q)
            try check(p + "k_proj.bias", l.bk, kv)
            try check(p + "v_proj.bias", l.bv, kv)
            try check(p + "o_proj.bias", l.bo, d)
            try check(p + "post_attention_layernorm", l.ffnNorm, d)
            try check(p + "gate_proj", l.wGate, i, d)
            try check(p + "up_proj", l.wUp, i, d)
            try check(p + "down_proj", l.wDown, d, i)
            try check(p + "gate_proj.bias", l.bGate, i)
            try check(p + "up_proj.bias", l.bUp, i)
            try check(p + "down_proj.bias", l.bDown, d)
        }
    }
}
