import Foundation
import Tensors

/// Hugging Face PEFT's `adapter_config.json` for LoRA, typed. Options Facet does not
/// implement are refused by name in `validate()`, never ignored.
package struct PEFTConfig: Codable, Sendable, Equatable {
    /// `target_modules` may be a list of names or one regular expression.
    package enum Targets: Codable, Sendable, Equatable {
        case names([String])
        case regex(String)

        package init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { self = .regex(s) } else { self = .names(try c.decode([String].self)) }
        }
        package func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            switch self {
            case .names(let n): try c.encode(n)
            case .regex(let r): try c.encode(r)
            }
        }
    }

    package enum Layers: Codable, Sendable, Equatable {
        case list([Int])
        package init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let i = try? c.decode(Int.self) { self = .list([i]) } else { self = .list(try c.decode([Int].self)) }
        }
        package func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            if case .list(let l) = self { try c.encode(l) }
        }
        package var values: [Int] { if case .list(let l) = self { l } else { [] } }
    }

    package var peftType: String?
    package var r: Int
    package var loraAlpha: Double
    package var targetModules: Targets?
    package var useRSLoRA: Bool?
    package var modulesToSave: [String]?
    package var rankPattern: [String: Int]?
    package var alphaPattern: [String: Double]?
    package var layersToTransform: Layers?
    package var bias: String?
    package var useDoRA: Bool?
    package var fanInFanOut: Bool?
    package var loraBias: Bool?
    package var baseModelNameOrPath: String?
    package var taskType: String?
    package var targetParameters: [String]?
    package var layerReplication: [[Int]]?

    enum CodingKeys: String, CodingKey {
        case peftType = "peft_type", r, loraAlpha = "lora_alpha", targetModules = "target_modules", useRSLoRA = "use_rslora"
        case modulesToSave = "modules_to_save", rankPattern = "rank_pattern", alphaPattern = "alpha_pattern"
        case layersToTransform = "layers_to_transform", bias, useDoRA = "use_dora", fanInFanOut = "fan_in_fan_out"
        case loraBias = "lora_bias", baseModelNameOrPath = "base_model_name_or_path", taskType = "task_type"
        case targetParameters = "target_parameters", layerReplication = "layer_replication"
    }

    package init(r: Int, loraAlpha: Double, targetModules: [String], baseModel: String? = nil) {
        self.peftType = "LORA"
        self.r = r
        self.loraAlpha = loraAlpha
        self.targetModules = .names(targetModules)
        self.useRSLoRA = false
        self.bias = "none"
        self.useDoRA = false
        self.fanInFanOut = false
        self.baseModelNameOrPath = baseModel
        self.taskType = "CAUSAL_LM"
        self.rankPattern = [:]
        self.alphaPattern = [:]
    }

    /// Refuses configurations whose meaning Facet would not reproduce.
    package func validate(file: String) throws {
        func unsupported(_ field: String, _ message: String, _ remedy: String) -> FacetError {
            FacetError(.unsupported, message, file: file, field: field, remedy: remedy)
        }
        if let t = peftType, t != "LORA" {
            throw unsupported("peft_type", "adapter type \(t) is not supported", "Facet serves LoRA adapters")
        }
        guard r > 0 else { throw FacetError(.invalidConfig, "r must be positive, got \(r)", file: file, field: "r") }
        guard loraAlpha.isFinite else { throw FacetError(.invalidConfig, "lora_alpha must be a number", file: file, field: "lora_alpha") }
        if useDoRA == true { throw unsupported("use_dora", "DoRA adapters are not supported yet", "merge the DoRA adapter, or train a plain LoRA") }
        if let b = bias, b != "none" { throw unsupported("bias", "LoRA bias mode \"\(b)\" is not supported", "train with bias=\"none\"") }
        if loraBias == true { throw unsupported("lora_bias", "lora_bias is not supported", "train with lora_bias=False") }
        if fanInFanOut == true { throw unsupported("fan_in_fan_out", "fan_in_fan_out layers (GPT-2 Conv1D) do not occur in Llama models", "use an adapter for a Llama-family base") }
        if let p = targetParameters, !p.isEmpty { throw unsupported("target_parameters", "LoRA on raw parameters is not supported", "target modules instead") }
        if let l = layerReplication, !l.isEmpty { throw unsupported("layer_replication", "layer replication is not supported", "train without layer_replication") }
    }
}
