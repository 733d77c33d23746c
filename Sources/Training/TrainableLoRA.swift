import Adapters
import Foundation
import Kernels
import Llama
import Sampling
import Tensors

/// What `facet tune` trains: PEFT's LoRA settings.
package struct LoRASettings: Sendable, Codable, Equatable {
    package var rank: Int
    package var alpha: Double
    package var targets: [LinearRole]
    /// rsLoRA: scale = alpha / sqrt(rank) instead of alpha / rank.
    package var rsLoRA: Bool
    /// Dropout on the adapter's input (PEFT's lora_dropout), training only.
    package var dropout: Double

    package init(rank: Int = 8, alpha: Double = 16, targets: [LinearRole] = [.q, .v], rsLoRA: Bool = false, dropout: Double = 0) {
        self.rank = rank
        self.alpha = alpha
        self.targets = targets
        self.rsLoRA = rsLoRA
        self.dropout = dropout
    }

    package var scale: Float { Float(rsLoRA ? alpha / Double(rank).squareRoot() : alpha / Double(rank)) }

    package func validate() throws {
        guard rank >= 1, rank <= 4096 else { throw FacetError(.invalidArgument, "rank must be between 1 and 4096, got \(rank)", field: "rank") }
        guard alpha.isFinite, alpha > 0 else { throw FacetError(.invalidArgument, "alpha must be positive, got \(alpha)", field: "alpha") }
        guard !targets.isEmpty else {
            throw FacetError(.invalidArgument, "no target modules", field: "targets", remedy: "name some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")
        }
        guard dropout >= 0, dropout < 1 else { throw FacetError(.invalidArgument, "dropout must be in [0, 1), got \(dropout)", field: "dropout") }
    }
}

/// One trainable pair `A: [r, in]`, `B: [out, r]` (checkpoint orientation) with its gradients.
package struct TrainablePair: Sendable {
    package var a: [Float], b: [Float]
    package var gradA: [Float], gradB: [Float]
    package let rank: Int, inDim: Int, outDim: Int

    init(a: [Float], b: [Float], rank: Int, inDim: Int, outDim: Int) {
        self.a = a
        self.b = b
        self.rank = rank
        self.inDim = inDim
        self.outDim = outDim
        gradA = [Float](repeating: 0, count: a.count)
        gradB = [Float](repeating: 0, count: b.count)
    }
}

/// The adapter being trained: fp32 factors for every (layer, target role), their
/// gradients, and the scale. Parameters are ordered layer by layer, roles in `LinearRole`
/// order, A before B (the optimizer's and the checkpoints' order).
package struct TrainableLoRA: Sendable {
    package let settings: LoRASettings
    package var pairs: [[LinearRole: TrainablePair]]
    package let scale: Float

    /// Input and output sizes of a role in `c`.
    package static func dims(_ role: LinearRole, _ c: LlamaConfiguration) -> (inDim: Int, outDim: Int) {
        let d = c.dims(of: role)
        return (d.input, d.output)
    }

    /// PEFT's initialisation: A from kaiming_uniform(a = sqrt(5)), i.e. uniform in
    /// ±1/sqrt(in_features); B zero (so training starts from the base model). Seeded.
    package init(settings: LoRASettings, config c: LlamaConfiguration, seed: UInt64) throws {
        try settings.validate()
        self.settings = settings
        scale = settings.scale
        var rng = TrainingRandom(training: seed)
        pairs = (0..<c.numLayers).map { _ in
            var layer: [LinearRole: TrainablePair] = [:]
            for role in LinearRole.allCases where settings.targets.contains(role) {
                let (i, o) = Self.dims(role, c)
                let bound = 1 / Float(i).squareRoot()
                let a = (0..<(settings.rank * i)).map { _ in (rng.unit() * 2 - 1) * bound }
                layer[role] = TrainablePair(a: a, b: [Float](repeating: 0, count: o * settings.rank), rank: settings.rank, inDim: i, outDim: o)
            }
            return layer
        }
    }

    /// Continues from an existing adapter (every pair's rank and scale must agree).
    package init(starting adapter: LoRAAdapter, settings: LoRASettings) throws {
        try settings.validate()
        self.settings = settings
        scale = settings.scale
        pairs = try adapter.pairs.map { layer in
            var out: [LinearRole: TrainablePair] = [:]
            for (role, p) in layer {
                guard p.rank == settings.rank, abs(p.scale - settings.scale) <= 1e-6 * max(1, abs(settings.scale)) else {
                    throw FacetError(.invalidArgument, "the start adapter's \(role.rawValue) has rank \(p.rank) and scale \(p.scale), not rank \(settings.rank) and scale \(settings.scale)",
                                     field: "init-adapter", remedy: "pass the adapter's own --rank and --alpha")
                }
                out[role] = TrainablePair(a: p.a.data, b: p.b.data, rank: p.rank, inDim: p.inDim, outDim: p.outDim)
            }
            return out
        }
    }

    /// The roles of `layer` in parameter order.
    package func roles(_ layer: Int) -> [LinearRole] { LinearRole.allCases.filter { pairs[layer][$0] != nil } }

    package mutating func zeroGradients() {
        for l in pairs.indices {
            for role in roles(l) {
                pairs[l][role]!.gradA.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
                pairs[l][role]!.gradB.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
            }
        }
    }

    /// Number of trainable values.
    package var parameterCount: Int { pairs.reduce(0) { $0 + $1.values.reduce(0) { $0 + $1.a.count + $1.b.count } } }

    /// The adapter as the engine runs it (fp32 factors, this scale).
    package func adapter(name: String) -> LoRAAdapter {
        var digest = SHA256()
        var out = LoRAAdapter(name: name, digest: "", layers: pairs.count)
        for (l, layer) in pairs.enumerated() {
            for role in roles(l) {
                let p = layer[role]!
                out.pairs[l][role] = LoRAPair(a: Matrix(rows: p.rank, cols: p.inDim, data: p.a), b: Matrix(rows: p.outDim, cols: p.rank, data: p.b), scale: scale)
                p.a.withUnsafeBytes { digest.update($0) }
                p.b.withUnsafeBytes { digest.update($0) }
            }
        }
        out.digest = digest.finalize().map { String(format: "%02x", $0) }.joined()
        return out
    }
}

/// The seeded source of initial values, data order and dropout masks: Sampling's SplitMix64
/// (Codable, so a checkpoint carries its state), started one golden-ratio step after the seed.
package typealias TrainingRandom = SeededRandom

extension SeededRandom {
    package init(training seed: UInt64) { self.init(seed: seed &+ 0x9E37_79B9_7F4A_7C15) }
}
