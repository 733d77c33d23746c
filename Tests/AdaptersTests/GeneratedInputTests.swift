import Adapters
import Formats
import Foundation
import Llama
import Loading
import Tensors
import Testing
import TestSupport

/// Structure-aware fuzzing of the parsers libFuzzer's random bytes cannot reach deeply:
/// `config.json` (every field of a real config replaced by values of random types and
/// ranges) and TensorRT-LLM's `lora_weights` + `lora_config` arrays (random shapes, module
/// ids, layers, ranks and values). Each case must be refused with a `FacetError` or give a
/// valid result; none may crash or trap. Seeded, so a failure reproduces.
@Suite struct GeneratedInputTests {
    struct Rng {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return state >> 17
        }
        mutating func pick<T>(_ options: [T]) -> T { options[Int(next() % UInt64(options.count))] }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
    }

    nonisolated(unsafe) static let weird: [Any] = [NSNull(), true, false, -1, 0, 1, 2, 3, 7, 64, 1 << 31, Int.max, -Int.max, 1.5, 1e300, -0.0, "x", "", [Any](),
                               [String: Any](), [1, 2], ["type": "linear", "factor": 1e300], ["rope_type": "llama3"]]

    @Test func configJSONFromGeneratedFields() throws {
        let base = try Fixtures.json("tiny_llama_untied/model/config.json")
        var rng = Rng(state: 42)
        var refused = 0, accepted = 0
        for _ in 0..<3000 {
            var config = base
            for _ in 0..<(1 + rng.below(4)) {
                let key = rng.pick(Array(base.keys) + ["rope_scaling", "sliding_window", "head_dim", "eos_token_id"])
                config[key] = rng.pick(Self.weird)
            }
            let data = try JSONSerialization.data(withJSONObject: config)
            do {
                let c = try decodeJSON(LlamaConfiguration.self, from: data, file: "config.json")
                try c.validate()
                accepted += 1
            } catch is FacetError {
                refused += 1
            }
        }
        #expect(refused > 100 && accepted > 10, "refused \(refused), accepted \(accepted)")
    }

    @Test func tensorRTArraysFromGeneratedRows() throws {
        let base = try ModelLoader.load(path: Fixtures.tinyModel).0.config
        var rng = Rng(state: 7)
        var refused = 0, accepted = 0
        for _ in 0..<2000 {
            let rows = rng.pick([0, 1, 2, 3])
            let width = rng.pick([3, 3, 3, 4, 2])
            var cfg: [Double] = []
            for _ in 0..<(rows * width) {
                cfg.append(rng.pick([0, 1, 2, 3, 4, 5, 6, 7, 8, -1, 99, 1e300, .nan, Double(base.numLayers), 1.5, 4096]))
            }
            let rowSize = rng.pick([0, 1, 64, 1024, 2048, 4096])
            var values = [Double](repeating: 0, count: rows * rowSize)
            for i in values.indices { values[i] = rng.pick([0, 0.01, -0.5, 1e30, .infinity, .nan]) }
            let config = NpyArray(shape: rng.pick([[1, rows, width], [rows, width], [rows]]), kind: rng.pick([.i32, .i64, .f32]), values: cfg)
            let weights = NpyArray(shape: rng.pick([[1, rows, rowSize], [rows, rowSize], [rows * rowSize]]), kind: rng.pick([.f16, .f32, .i32]),
                                   values: values)
            do {
                let a = try TensorRTLoRA.adapter(weights: weights, config: config, name: "g", base: base)
                try a.validate(against: base)
                accepted += 1
            } catch is FacetError {
                refused += 1
            }
        }
        #expect(refused > 100, "refused \(refused), accepted \(accepted)")
    }
}
