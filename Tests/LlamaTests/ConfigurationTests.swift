import Foundation
import Llama
import Loading
import Tensors
import Testing

@Suite struct ConfigurationTests {
    func decode(_ json: String) throws -> LlamaConfiguration {
        try decodeJSON(LlamaConfiguration.self, from: Data(json.utf8), file: "config.json")
    }

    let base = #""vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4"#

    @Test func legacyAndNestedRopeSettings() throws {
        let legacy = try decode("{\(base), \"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}")
        #expect(legacy.ropeTheta == 500000)
        #expect(legacy.ropeScaling == .llama3(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192))
        let nested = try decode("{\(base), \"rope_parameters\": {\"rope_theta\": 1000.0, \"rope_type\": \"linear\", \"factor\": 2.0}}")
        #expect(nested.ropeTheta == 1000)
        #expect(nested.ropeScaling == .linear(factor: 2))
        #expect(nested.numKVHeads == 4 && nested.headDim == 16)
    }

    @Test func qwen2HasQKVBias() throws {
        let c = try decode("{\"architectures\": [\"Qwen2ForCausalLM\"], \(base), \"num_key_value_heads\": 2, \"sliding_window\": 4096, \"use_sliding_window\": false}")
        #expect(c.qkvBias && !c.outputBias)
        #expect(c.slidingWindow == nil)
    }

    @Test func llama3InverseFrequenciesFollowTheFormula() throws {
        let c = try decode("{\(base), \"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}")
        let inv = c.ropeInverseFrequencies()
        let plain = (0..<8).map { Float(1.0 / pow(500000.0, Double(2 * $0) / 16.0)) }
        #expect(inv[0] == plain[0])                       // high frequency: unchanged
        #expect(abs(inv[7] - plain[7] / 8) < 1e-12)       // low frequency: divided by factor
    }

    @Test func errorsNameTheField() throws {
        #expect {
            try decode("{\"hidden_size\": 64}")
        } throws: { ($0 as? FacetError)?.field == "vocab_size" && ($0 as? FacetError)?.file == "config.json" }
        #expect {
            try decode("{\(base), \"num_key_value_heads\": 3}")
        } throws: { ($0 as? FacetError)?.field == "num_key_value_heads" }
        #expect {
            try decode("{\"architectures\": [\"GPT2LMHeadModel\"], \(base)}")
        } throws: { ($0 as? FacetError)?.code == .unsupported }
        #expect {
            try decode("{\(base), \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}")
        } throws: { ($0 as? FacetError)?.code == .unsupported }
        #expect(throws: FacetError.self) { try decode("{\(base)") }
    }
}
