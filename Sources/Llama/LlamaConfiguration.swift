import Foundation
import Tensors

/// Hyper-parameters of a Llama-family decoder (Llama 1-3, Mistral, Qwen2, SmolLM), decoded
/// from a Hugging Face `config.json` and validated once, here.
package struct LlamaConfiguration: Codable, Sendable, Equatable {
    package enum RopeScaling: Sendable, Equatable, Codable {
        case none
        /// Positions divided by `factor`.
        case linear(factor: Double)
        /// Llama 3.1's frequency-dependent scaling.
        case llama3(factor: Double, lowFreqFactor: Double, highFreqFactor: Double, originalMaxPositions: Int)
        /// Per-frequency divisors, as GGUF files store them in `rope_freqs.weight`.
        case frequencyFactors([Float])
    }

    package var architecture: String
    package var vocabSize: Int
    package var hiddenSize: Int
    package var intermediateSize: Int
    package var numLayers: Int
    package var numHeads: Int
    package var numKVHeads: Int
    package var headDim: Int
    package var rmsNormEps: Float
    package var ropeTheta: Double
    package var ropeScaling: RopeScaling
    package var maxPositionEmbeddings: Int
    package var tieWordEmbeddings: Bool
    /// Bias on the q, k, v projections (Qwen2; Llama's `attention_bias` also biases o).
    package var qkvBias: Bool
    package var outputBias: Bool
    package var mlpBias: Bool
    package var slidingWindow: Int?
    package var bosTokenID: Int?
    package var eosTokenIDs: [Int]

    package init(
        architecture: String = "LlamaForCausalLM", vocabSize: Int, hiddenSize: Int, intermediateSize: Int, numLayers: Int,
        numHeads: Int, numKVHeads: Int, headDim: Int? = nil, rmsNormEps: Float = 1e-5, ropeTheta: Double = 10000,
        ropeScaling: RopeScaling = .none, maxPositionEmbeddings: Int = 2048, tieWordEmbeddings: Bool = false,
        qkvBias: Bool = false, outputBias: Bool = false, mlpBias: Bool = false, slidingWindow: Int? = nil,
        bosTokenID: Int? = 1, eosTokenIDs: [Int] = [2]
    ) {
        self.architecture = architecture
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numLayers = numLayers
        self.numHeads = numHeads
        self.numKVHeads = numKVHeads
        self.headDim = headDim ?? hiddenSize / numHeads
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.ropeScaling = ropeScaling
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.tieWordEmbeddings = tieWordEmbeddings
        self.qkvBias = qkvBias
        self.outputBias = outputBias
        self.mlpBias = mlpBias
        self.slidingWindow = slidingWindow
        self.bosTokenID = bosTokenID
        self.eosTokenIDs = eosTokenIDs
    }

    package static let supportedArchitectures = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]

    /// Checks the invariants the forward pass relies on; errors name the field.
    package func validate(file: String? = nil) throws {
        func bad(_ field: String, _ message: String) -> FacetError {
            FacetError(.invalidConfig, message, file: file, field: field, remedy: "fix config.json or use the model's original config")
        }
        for (name, value) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                              ("num_hidden_layers", numLayers), ("num_attention_heads", numHeads),
                              ("num_key_value_heads", numKVHeads), ("head_dim", headDim)] where value <= 0 {
            throw bad(name, "must be positive, got \(value)")
        }
        guard numHeads % numKVHeads == 0 else {
            throw bad("num_key_value_heads", "\(numKVHeads) does not divide num_attention_heads \(numHeads)")
        }
        guard headDim % 2 == 0 else { throw bad("head_dim", "rotary embedding needs an even head_dim, got \(headDim)") }
        guard rmsNormEps > 0, rmsNormEps.isFinite else { throw bad("rms_norm_eps", "must be positive") }
        guard ropeTheta > 0 else { throw bad("rope_theta", "must be positive") }
        if let w = slidingWindow, w <= 0 { throw bad("sliding_window", "must be positive") }
        if case .frequencyFactors(let f) = ropeScaling, f.count != headDim / 2 || f.contains(where: { !($0 > 0) }) {
            throw bad("rope_freqs", "needs \(headDim / 2) positive factors, got \(f.count)")
        }
        if let bos = bosTokenID, bos < 0 || bos >= vocabSize { throw bad("bos_token_id", "\(bos) is outside the vocabulary of \(vocabSize)") }
        for e in eosTokenIDs where e < 0 || e >= vocabSize { throw bad("eos_token_id", "\(e) is outside the vocabulary of \(vocabSize)") }
    }

    /// Rotary inverse frequencies, `1 / theta^(2i / headDim)`, with the scaling applied.
    /// Computed in Float, step by step as transformers computes them in float32, so that
    /// the phases match the reference to the last bit where the math allows.
    package func ropeInverseFrequencies() -> [Float] {
        let half = headDim / 2
        let base = Float(ropeTheta)
        var inv = (0..<half).map { i in 1 / powf(base, Float(2 * i) / Float(headDim)) }
        switch ropeScaling {
        case .none:
            break
        case .linear(let factor):
            inv = inv.map { $0 / Float(factor) }
        case .llama3(let factor, let low, let high, let original):
            let f = Float(factor), lo = Float(low), hi = Float(high), old = Float(original)
            let lowWavelen = old / lo
            let highWavelen = old / hi
            inv = inv.map { freq in
                let wavelen = 2 * Float.pi / freq
                let scaled = wavelen > lowWavelen ? freq / f : freq
                let smooth = (old / wavelen - lo) / (hi - lo)
                let smoothed = (1 - smooth) * scaled / f + smooth * scaled
                let medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen)
                return medium ? smoothed : scaled
            }
        case .frequencyFactors(let factors):
            inv = zip(inv, factors).map { $0 / $1 }
        }
        return inv
    }

    // MARK: - Hugging Face config.json

    enum CodingKeys: String, CodingKey {
        case architectures, modelType = "model_type", vocabSize = "vocab_size", hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size", numLayers = "num_hidden_layers", numHeads = "num_attention_heads"
        case numKVHeads = "num_key_value_heads", headDim = "head_dim", rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta", ropeScaling = "rope_scaling", ropeParameters = "rope_parameters"
        case maxPositionEmbeddings = "max_position_embeddings", tieWordEmbeddings = "tie_word_embeddings"
        case attentionBias = "attention_bias", mlpBias = "mlp_bias", slidingWindow = "sliding_window"
        case useSlidingWindow = "use_sliding_window"
        case bosTokenID = "bos_token_id", eosTokenID = "eos_token_id"
    }

    struct RopeJSON: Decodable {
        var ropeType: String?
        var type: String?
        var ropeTheta: Double?
        var factor: Double?
        var lowFreqFactor: Double?
        var highFreqFactor: Double?
        var originalMaxPositionEmbeddings: Int?
        enum CodingKeys: String, CodingKey {
            case ropeType = "rope_type", type, ropeTheta = "rope_theta", factor
            case lowFreqFactor = "low_freq_factor", highFreqFactor = "high_freq_factor"
            case originalMaxPositionEmbeddings = "original_max_position_embeddings"
        }
    }

    struct IntOrList: Decodable {
        var values: [Int]
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let v = try? c.decode(Int.self) { values = [v] } else { values = try c.decode([Int].self) }
        }
    }

    package init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let archs = try c.decodeIfPresent([String].self, forKey: .architectures) ?? []
        let modelType = try c.decodeIfPresent(String.self, forKey: .modelType)
        let arch = archs.first ?? {
            switch modelType {
            case "mistral": "MistralForCausalLM"
            case "qwen2": "Qwen2ForCausalLM"
            default: "LlamaForCausalLM"
            }
        }()
        guard Self.supportedArchitectures.contains(arch) else {
            throw FacetError(.unsupported, "architecture \(arch) is not supported", field: "architectures",
                             remedy: "Facet runs \(Self.supportedArchitectures.joined(separator: ", "))")
        }
        architecture = arch
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        numLayers = try c.decode(Int.self, forKey: .numLayers)
        numHeads = try c.decode(Int.self, forKey: .numHeads)
        numKVHeads = try c.decodeIfPresent(Int.self, forKey: .numKVHeads) ?? numHeads
        guard numHeads > 0 else {
            throw FacetError(.invalidConfig, "must be positive", field: "num_attention_heads")
        }
        headDim = try c.decodeIfPresent(Int.self, forKey: .headDim) ?? hiddenSize / numHeads
        rmsNormEps = Float(try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6)
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 2048
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        let attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias)
        if arch == "Qwen2ForCausalLM" {
            qkvBias = true
            outputBias = false
        } else {
            qkvBias = attentionBias ?? false
            outputBias = attentionBias ?? false
        }
        mlpBias = try c.decodeIfPresent(Bool.self, forKey: .mlpBias) ?? false
        var window = try c.decodeIfPresent(Int.self, forKey: .slidingWindow)
        if arch == "Qwen2ForCausalLM", try c.decodeIfPresent(Bool.self, forKey: .useSlidingWindow) != true { window = nil }
        slidingWindow = window
        bosTokenID = try c.decodeIfPresent(Int.self, forKey: .bosTokenID)
        eosTokenIDs = try c.decodeIfPresent(IntOrList.self, forKey: .eosTokenID)?.values ?? []

        // transformers >= 5 nests rope settings under rope_parameters; older files use
        // top-level rope_theta plus rope_scaling.
        let params = try c.decodeIfPresent(RopeJSON.self, forKey: .ropeParameters)
        let scaling = try c.decodeIfPresent(RopeJSON.self, forKey: .ropeScaling)
        ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? params?.ropeTheta ?? 10000
        let rope = scaling ?? params
        switch rope?.ropeType ?? rope?.type ?? "default" {
        case "default":
            ropeScaling = .none
        case "linear":
            guard let f = rope?.factor, f > 0 else {
                throw FacetError(.invalidConfig, "linear rope scaling needs a positive factor", field: "rope_scaling.factor")
            }
            ropeScaling = .linear(factor: f)
        case "llama3":
            guard let f = rope?.factor, let lo = rope?.lowFreqFactor, let hi = rope?.highFreqFactor,
                  let orig = rope?.originalMaxPositionEmbeddings, hi > lo
            else {
                throw FacetError(.invalidConfig, "llama3 rope scaling needs factor, low_freq_factor < high_freq_factor and original_max_position_embeddings",
                                 field: "rope_scaling")
            }
            ropeScaling = .llama3(factor: f, lowFreqFactor: lo, highFreqFactor: hi, originalMaxPositions: orig)
        case let other:
            throw FacetError(.unsupported, "rope scaling type \(other) is not supported", field: "rope_scaling.rope_type",
                             remedy: "Facet supports default, linear and llama3 rope scaling")
        }
        try validate()
    }

    package func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode([architecture], forKey: .architectures)
        try c.encode(architecture == "Qwen2ForCausalLM" ? "qwen2" : architecture == "MistralForCausalLM" ? "mistral" : "llama", forKey: .modelType)
        try c.encode(vocabSize, forKey: .vocabSize)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(numLayers, forKey: .numLayers)
        try c.encode(numHeads, forKey: .numHeads)
        try c.encode(numKVHeads, forKey: .numKVHeads)
        try c.encode(headDim, forKey: .headDim)
        try c.encode(Double(rmsNormEps), forKey: .rmsNormEps)
        try c.encode(ropeTheta, forKey: .ropeTheta)
        try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
        try c.encode(qkvBias, forKey: .attentionBias)
        try c.encode(mlpBias, forKey: .mlpBias)
        try c.encodeIfPresent(slidingWindow, forKey: .slidingWindow)
        try c.encodeIfPresent(bosTokenID, forKey: .bosTokenID)
        if eosTokenIDs.count == 1 { try c.encode(eosTokenIDs[0], forKey: .eosTokenID) } else { try c.encode(eosTokenIDs, forKey: .eosTokenID) }
        switch ropeScaling {
        case .none, .frequencyFactors: break
        case .linear(let f):
            var n = c.nestedContainer(keyedBy: RopeKeys.self, forKey: .ropeScaling)
            try n.encode("linear", forKey: .ropeType)
            try n.encode(f, forKey: .factor)
        case .llama3(let f, let lo, let hi, let orig):
            var n = c.nestedContainer(keyedBy: RopeKeys.self, forKey: .ropeScaling)
            try n.encode("llama3", forKey: .ropeType)
            try n.encode(f, forKey: .factor)
            try n.encode(lo, forKey: .lowFreqFactor)
            try n.encode(hi, forKey: .highFreqFactor)
            try n.encode(orig, forKey: .originalMaxPositionEmbeddings)
        }
    }

    enum RopeKeys: String, CodingKey {
        case ropeType = "rope_type", factor, lowFreqFactor = "low_freq_factor", highFreqFactor = "high_freq_factor"
        case originalMaxPositionEmbeddings = "original_max_position_embeddings"
    }
}

extension LlamaConfiguration {
    /// The input and output sizes of a linear role (`W: [output, input]`).
    package func dims(of role: LinearRole) -> (input: Int, output: Int) {
        let q = numHeads * headDim, kv = numKVHeads * headDim
        switch role {
        case .q: return (hiddenSize, q)
        case .k, .v: return (hiddenSize, kv)
        case .o: return (q, hiddenSize)
        case .gate, .up: return (hiddenSize, intermediateSize)
        case .down: return (intermediateSize, hiddenSize)
        }
    }
}
