import Llama

/// The one place checkpoint tensor names are spelled: Hugging Face and GGUF.
package enum WeightNames {
    static func hf(layer l: Int, _ role: LayerWeightRole) -> String {
        let p = "model.layers.\(l)."
        switch role {
        case .attnNorm: return p + "input_layernorm.weight"
        case .q: return p + "self_attn.q_proj.weight"
        case .k: return p + "self_attn.k_proj.weight"
        case .v: return p + "self_attn.v_proj.weight"
        case .o: return p + "self_attn.o_proj.weight"
        case .qBias: return p + "self_attn.q_proj.bias"
        case .kBias: return p + "self_attn.k_proj.bias"
        case .vBias: return p + "self_attn.v_proj.bias"
        case .oBias: return p + "self_attn.o_proj.bias"
        case .ffnNorm: return p + "post_attention_layernorm.weight"
        case .gate: return p + "mlp.gate_proj.weight"
        case .up: return p + "mlp.up_proj.weight"
        case .down: return p + "mlp.down_proj.weight"
        case .gateBias: return p + "mlp.gate_proj.bias"
        case .upBias: return p + "mlp.up_proj.bias"
        case .downBias: return p + "mlp.down_proj.bias"
        }
    }
    static let hfEmbedding = "model.embed_tokens.weight"
    static let hfFinalNorm = "model.norm.weight"
    static let hfLMHead = "lm_head.weight"

    /// Module paths, as PEFT names what it adapts (`model.layers.3.self_attn.q_proj`).
    static let linearModule: [LinearRole: String] = [
        .q: "self_attn.q_proj", .k: "self_attn.k_proj", .v: "self_attn.v_proj", .o: "self_attn.o_proj",
        .gate: "mlp.gate_proj", .up: "mlp.up_proj", .down: "mlp.down_proj",
    ]
    package static func hfModule(layer l: Int, _ role: LinearRole) -> String { "model.layers.\(l)." + linearModule[role]! }
    static let hfEmbeddingModule = "model.embed_tokens"
    static let hfLMHeadModule = "lm_head"
    /// What PEFT puts before a module path in its checkpoints.
    package static let peftPrefix = "base_model.model."

    /// The weight and the bias of each linear role, in `hf(layer:_:)`'s terms.
    static let linearWeights: [(LinearRole, weight: LayerWeightRole, bias: LayerWeightRole)] = [
        (.q, .q, .qBias), (.k, .k, .kBias), (.v, .v, .vBias), (.o, .o, .oBias),
        (.gate, .gate, .gateBias), (.up, .up, .upBias), (.down, .down, .downBias),
    ]

    static func gguf(layer l: Int, _ role: LayerWeightRole) -> String {
        let p = "blk.\(l)."
        switch role {
        case .attnNorm: return p + "attn_norm.weight"
        case .q: return p + "attn_q.weight"
        case .k: return p + "attn_k.weight"
        case .v: return p + "attn_v.weight"
        case .o: return p + "attn_output.weight"
        case .qBias: return p + "attn_q.bias"
        case .kBias: return p + "attn_k.bias"
        case .vBias: return p + "attn_v.bias"
        case .oBias: return p + "attn_output.bias"
        case .ffnNorm: return p + "ffn_norm.weight"
        case .gate: return p + "ffn_gate.weight"
        case .up: return p + "ffn_up.weight"
        case .down: return p + "ffn_down.weight"
        case .gateBias: return p + "ffn_gate.bias"
        case .upBias: return p + "ffn_up.bias"
        case .downBias: return p + "ffn_down.bias"
        }
    }
    static let ggufEmbedding = "token_embd.weight"
    static let ggufFinalNorm = "output_norm.weight"
    static let ggufLMHead = "output.weight"
    static let ggufRopeFreqs = "rope_freqs.weight"
}
