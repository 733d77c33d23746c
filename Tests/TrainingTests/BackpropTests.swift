import Adapters
import Foundation
import Kernels
import Llama
import Loading
import Tensors
import Testing
import TestSupport
import Training

/// The backward pass and the optimizer against transformers + PEFT on the tiny model
/// (`Tests/Fixtures/tuning`, made by the reference, never by Facet).
@Suite struct BackpropTests {
    static let (model, _) = try! ModelLoader.load(path: Fixtures.tinyModel)

    static func start() throws -> TrainableLoRA {
        let adapter = try AdapterLoader.load(directory: Fixtures.path("tuning/tiny_start_adapter"), base: model.config,
                                             baseEmbedding: model.weights.embedding)
        return try TrainableLoRA(starting: adapter, settings: LoRASettings(rank: 4, alpha: 8, targets: [.q, .v, .down]))
    }

    /// The fixture's padded batch as unpadded sequences.
    static func examples(_ fixture: [String: Any]) -> [TrainingExample] {
        let batch = fixture["batch"] as! [String: Any]
        let ids = (batch["input_ids"] as! [Any]).map(ints), labels = (batch["labels"] as! [Any]).map(ints)
        let masks = (batch["attention_mask"] as! [Any]).map(ints)
        return (0..<ids.count).map { b in
            let n = masks[b].filter { $0 == 1 }.count
            return TrainingExample(tokens: Array(ids[b].prefix(n)), labels: Array(labels[b].prefix(n)))
        }
    }

    static func tensors(of lora: TrainableLoRA, gradients: Bool) -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for (l, layer) in lora.pairs.enumerated() {
            for (role, p) in layer {
                let name = WeightNames.peftPrefix + WeightNames.hfModule(layer: l, role)
                out[name + ".lora_A.weight"] = gradients ? p.gradA : p.a
                out[name + ".lora_B.weight"] = gradients ? p.gradB : p.b
            }
        }
        return out
    }

    static func maxRelative(_ a: [Float], _ b: [Float]) -> Float {
        let scale = b.map(abs).max() ?? 0
        return zip(a, b).map { abs($0 - $1) }.max()! / max(scale, 1e-30)
    }

    @Test func lossAndEveryGradientMatchPEFT() throws {
        let fixture = try Fixtures.json("tuning/tiny_grad.json")
        let examples = Self.examples(fixture)
        let count = examples.reduce(0) { $0 + $1.targetCount }
        #expect(count == fixture["n_loss_tokens"] as! Int)
        var lora = try Self.start()
        let engine = try LoRABackprop(model: Self.model)
        var none: TrainingRandom?
        var nll = 0.0
        for e in examples { nll += try engine.accumulate(e, lora: &lora, normalizer: Float(count), dropout: &none).nll }
        let loss = nll / Double(count)
        let expected = (fixture["loss"] as! NSNumber).doubleValue
        #expect(abs(loss - expected) / expected < 1e-4, "loss \(loss) vs \(expected)")
        let grads = fixture["grads"] as! [String: Any]
        let mine = Self.tensors(of: lora, gradients: true)
        #expect(Set(mine.keys) == Set(grads.keys))
        for (name, g) in grads {
            let ref = floats((g as! [String: Any])["values"])
            let err = Self.maxRelative(mine[name] ?? [], ref)
            #expect(err < 1e-4, "\(name): \(err)")
        }
        // Evaluation alone gives the same loss and leaves gradients alone.
        var eval = 0.0
        for e in examples { eval += try engine.evaluate(e, lora: lora).nll }
        #expect(abs(eval - nll) < 1e-9 * max(1, nll))
    }

    /// `--compute bf16` (opt-in): the frozen base's products in bf16 move the loss and the
    /// gradients by bf16's rounding, not more; and they do move (the mode is engaged).
    @Test func bf16ProductsStayNearPEFT() throws {
        let fixture = try Fixtures.json("tuning/tiny_grad.json")
        let examples = Self.examples(fixture)
        let count = examples.reduce(0) { $0 + $1.targetCount }
        var lora = try Self.start(), fp32 = try Self.start()
        let engine = try LoRABackprop(model: Self.model), reference = try LoRABackprop(model: Self.model)
        engine.products = .bf16
        var none: TrainingRandom?
        var nll = 0.0, nll32 = 0.0
        for e in examples {
            nll += try engine.accumulate(e, lora: &lora, normalizer: Float(count), dropout: &none).nll
            nll32 += try reference.accumulate(e, lora: &fp32, normalizer: Float(count), dropout: &none).nll
        }
        let expected = (fixture["loss"] as! NSNumber).doubleValue
        let loss = nll / Double(count)
        print(String(format: "bf16 training products: loss %.6f (PEFT fp32 %.6f, Facet fp32 %.6f)", loss, expected, nll32 / Double(count)))
        #expect(abs(loss - expected) / expected < 5e-3, "loss \(loss) vs \(expected)")
        #expect(nll != nll32, "bf16 products gave fp32's loss bit for bit: the mode is not engaged")
        let grads = fixture["grads"] as! [String: Any]
        let mine = Self.tensors(of: lora, gradients: true)
        var worst: Float = 0
        for (name, g) in grads {
            let err = Self.maxRelative(mine[name] ?? [], floats((g as! [String: Any])["values"]))
            worst = max(worst, err)
            #expect(err < 3e-2, "\(name): \(err)")
        }
        print("bf16 training products: worst gradient error \(worst) of each tensor's largest")
    }

    @Test func fiveAdamWStepsMatchTorch() throws {
        let fixture = try Fixtures.json("tuning/tiny_train.json")
        let examples = Self.examples(fixture)
        let count = examples.reduce(0) { $0 + $1.targetCount }
        var lora = try Self.start()
        let engine = try LoRABackprop(model: Self.model)
        var optimizer = AdamW(weightDecay: 0)
        let expectedLosses = floats(fixture["loss_before_step"])
        var none: TrainingRandom?
        for step in 0..<5 {
            lora.zeroGradients()
            var nll = 0.0
            for e in examples { nll += try engine.accumulate(e, lora: &lora, normalizer: Float(count), dropout: &none).nll }
            let loss = nll / Double(count)
            #expect(abs(loss - Double(expectedLosses[step])) / Double(expectedLosses[step]) < 1e-4, "step \(step): \(loss)")
            optimizer.update(&lora, lr: 0.01)
        }
        var after = 0.0
        for e in examples { after += try engine.evaluate(e, lora: lora).nll }
        let final = (fixture["loss_after_5_steps"] as! NSNumber).doubleValue
        #expect(abs(after / Double(count) - final) / final < 1e-4)
        let tensors = (fixture["final_tensors"] as! [String: Any])["tensors"] as! [String: Any]
        let mine = Self.tensors(of: lora, gradients: false)
        for (name, t) in tensors {
            let ref = floats((t as! [String: Any])["values"])
            #expect(Self.maxRelative(mine[name] ?? [], ref) < 1e-4, "\(name)")
        }
    }
}

extension BackpropTests {
    /// The fixture's three sequences as one flat batch give PEFT's loss and gradients too.
    @Test func oneFlatBatchMatchesPEFT() throws {
        let fixture = try Fixtures.json("tuning/tiny_grad.json")
        let examples = Self.examples(fixture)
        let count = examples.reduce(0) { $0 + $1.targetCount }
        var lora = try Self.start()
        let engine = try LoRABackprop(model: Self.model)
        var none: TrainingRandom?
        let nll = try engine.accumulate(examples, lora: &lora, normalizer: Float(count), dropout: &none).nll
        let expected = (fixture["loss"] as! NSNumber).doubleValue
        #expect(abs(nll / Double(count) - expected) / expected < 1e-4)
        let mine = Self.tensors(of: lora, gradients: true)
        for (name, g) in fixture["grads"] as! [String: Any] {
            #expect(Self.maxRelative(mine[name] ?? [], floats((g as! [String: Any])["values"])) < 1e-4, "\(name)")
        }
    }
}

extension BackpropTests {
    /// Recomputing each layer in the backward pass (with the dropout masks replayed) gives
    /// bitwise the gradients of keeping every activation.
    @Test func recomputedActivationsGiveTheSameGradients() throws {
        let examples = Self.examples(try Fixtures.json("tuning/tiny_grad.json"))
        var results: [[String: [Float]]] = []
        for recompute in [false, true] {
            var lora = try TrainableLoRA(starting: try AdapterLoader.load(directory: Fixtures.path("tuning/tiny_start_adapter"), base: Self.model.config,
                                                                          baseEmbedding: Self.model.weights.embedding),
                                         settings: LoRASettings(rank: 4, alpha: 8, targets: [.q, .v, .down], dropout: 0.2))
            let engine = try LoRABackprop(model: Self.model)
            engine.recomputeAlways = recompute
            var rng: TrainingRandom? = TrainingRandom(training: 3)
            _ = try engine.accumulate(examples, lora: &lora, normalizer: 15, dropout: &rng)
            results.append(Self.tensors(of: lora, gradients: true))
        }
        #expect(results[0] == results[1])
        #expect(results[0].values.contains { $0.contains { $0 != 0 } })
    }
}

extension BackpropTests {
    /// An engine reused across batches of other lengths, validation passes and a budget
    /// too small to keep the activations (its buffers kept from call to call) gives bitwise
    /// what a fresh engine gives.
    @Test func reusedActivationBuffersChangeNoBit() throws {
        let all = Self.examples(try Fixtures.json("tuning/tiny_grad.json"))
        #expect(all.count >= 2)
        func gradients(_ engine: LoRABackprop, _ batch: [TrainingExample]) throws -> [String: [Float]] {
            var lora = try TrainableLoRA(starting: try AdapterLoader.load(directory: Fixtures.path("tuning/tiny_start_adapter"), base: Self.model.config,
                                                                          baseEmbedding: Self.model.weights.embedding),
                                         settings: LoRASettings(rank: 4, alpha: 8, targets: [.q, .v, .down], dropout: 0.2))
            var rng: TrainingRandom? = TrainingRandom(training: 3)
            _ = try engine.accumulate(batch, lora: &lora, normalizer: 15, dropout: &rng)
            return Self.tensors(of: lora, gradients: true)
        }
        let reused = try LoRABackprop(model: Self.model)
        for (i, batch) in [all, [all[0]], all, Array(all.reversed())].enumerated() {
            reused.keepBudget = i == 2 ? 0 : 1 << 30
            let lora = try TrainableLoRA(settings: LoRASettings(rank: 4, alpha: 8, targets: [.q, .v]), config: Self.model.config, seed: 1)
            _ = try reused.evaluate(batch, lora: lora)
            #expect(try gradients(reused, batch) == gradients(try LoRABackprop(model: Self.model), batch), "batch \(i)")
        }
        #expect(reused.keptActivationBytes(lengths: [4]) < reused.keptActivationBytes(lengths: [2, 3]))
    }
}
