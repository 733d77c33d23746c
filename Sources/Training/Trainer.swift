import Foundation
import Kernels
import Sampling
import Tensors

package enum LRSchedule: String, Codable, CaseIterable, Sendable {
    /// Linear warmup, then cosine decay to 0 (transformers' get_cosine_schedule_with_warmup).
    case cosine
    /// Linear warmup, then constant.
    case constant
}

/// How `facet tune` trains.
package struct TuneOptions: Codable, Sendable, Equatable {
    package var epochs = 1
    package var maxSteps: Int?
    package var learningRate = 2e-4
    package var batchSize = 4
    package var gradAccum = 1
    package var warmupSteps = 0
    package var schedule = LRSchedule.cosine
    package var maxGradNorm: Double? = 1.0
    package var weightDecay = 0.0
    package var seed: UInt64 = 0

    package init() {}

    package func validate() throws {
        for (name, v) in [("epochs", epochs), ("batch-size", batchSize), ("grad-accum", gradAccum)] where v < 1 {
            throw FacetError(.invalidArgument, "must be at least 1, got \(v)", field: name)
        }
        if let m = maxSteps, m < 1 { throw FacetError(.invalidArgument, "must be at least 1, got \(m)", field: "max-steps") }
        guard learningRate.isFinite, learningRate > 0, learningRate < 10 else {
            throw FacetError(.invalidArgument, "must be positive (e.g. 2e-4), got \(learningRate)", field: "lr")
        }
        guard warmupSteps >= 0 else { throw FacetError(.invalidArgument, "must be >= 0", field: "warmup-steps") }
        if let g = maxGradNorm, !(g > 0 && g.isFinite) { throw FacetError(.invalidArgument, "must be positive", field: "max-grad-norm") }
        guard weightDecay >= 0, weightDecay.isFinite else { throw FacetError(.invalidArgument, "must be >= 0", field: "weight-decay") }
    }
}

/// What the trainer carries from step to step; a checkpoint saves it with the adapter, so
/// `--resume` continues bit-exactly (the data order is derived from the seed and epoch).
package struct TrainerState: Codable, Sendable {
    package var step = 0
    package var optimizer: AdamW
    package var dropout: TrainingRandom
    package var losses: [Double] = []
    package var validationLosses: [Double] = []
    package var options: TuneOptions
    package var settings: LoRASettings
    package var exampleCount: Int
    /// The base's products (`--compute`); absent in checkpoints from before it existed (fp32).
    package var products: TrainingProducts?
}

/// One optimizer step's figures.
package struct StepReport: Sendable {
    package var step: Int
    package var totalSteps: Int
    package var epoch: Int
    package var loss: Double
    package var learningRate: Double
    package var gradNorm: Double
    package var tokens: Int
    package var seconds: Double
}

/// The training loop: shuffled batches of `batchSize × gradAccum` examples per optimizer
/// step, the loss a token-level mean over the step's targets, clipping, AdamW, schedule.
package final class Trainer {
    package let engine: LoRABackprop
    package var lora: TrainableLoRA
    package var state: TrainerState
    package let train: [TrainingExample]
    package let validation: [TrainingExample]

    package init(engine: LoRABackprop, lora: TrainableLoRA, options: TuneOptions, train: [TrainingExample],
                 validation: [TrainingExample] = [], resume: TrainerState? = nil) throws {
        try options.validate()
        guard !train.isEmpty else {
            throw FacetError(.invalidArgument, "no training examples", field: "data", remedy: "check the data file and --max-seq-length")
        }
        self.engine = engine
        self.lora = lora
        self.train = train
        self.validation = validation
        if let resume {
            guard resume.exampleCount == train.count else {
                throw FacetError(.invalidArgument, "the checkpoint was trained on \(resume.exampleCount) examples, this data has \(train.count)",
                                 field: "resume", remedy: "resume with the same --data, --template and --max-seq-length")
            }
            state = resume
            state.options.maxSteps = options.maxSteps ?? resume.options.maxSteps
            state.options.epochs = options.epochs
        } else {
            state = TrainerState(optimizer: AdamW(weightDecay: options.weightDecay), dropout: TrainingRandom(training: options.seed ^ 0xD80F),
                                 options: options, settings: lora.settings, exampleCount: train.count)
        }
    }

    package var examplesPerStep: Int { state.options.batchSize * state.options.gradAccum }
    package var stepsPerEpoch: Int { (train.count + examplesPerStep - 1) / examplesPerStep }
    package var totalSteps: Int { state.options.maxSteps ?? state.options.epochs * stepsPerEpoch }
    package var isDone: Bool { state.step >= totalSteps }

    /// The examples of `epoch` in their seeded order.
    package func order(epoch: Int) -> [Int] {
        var rng = TrainingRandom(training: state.options.seed &+ UInt64(epoch) &* 0x2545_F491_4F6C_DD1D)
        var list = Array(train.indices)
        for i in stride(from: list.count - 1, to: 0, by: -1) {
            list.swapAt(i, Int(rng.next() % UInt64(i + 1)))
        }
        return list
    }

    /// The learning rate of optimizer step `step` (0-based).
    package func learningRate(at step: Int) -> Double {
        let o = state.options, lr = o.learningRate
        if step < o.warmupSteps { return lr * Double(step + 1) / Double(o.warmupSteps + 1) }
        guard o.schedule == .cosine else { return lr }
        let span = max(1, totalSteps - o.warmupSteps)
        let progress = min(1, Double(step - o.warmupSteps) / Double(span))
        return lr * 0.5 * (1 + cos(Double.pi * progress))
    }

    /// One optimizer step.
    package func step() throws -> StepReport {
        let start = ContinuousClock.now
        let epoch = state.step / stepsPerEpoch, within = state.step % stepsPerEpoch
        let order = order(epoch: epoch)
        let picked = order[(within * examplesPerStep)..<min(order.count, (within + 1) * examplesPerStep)]
        let normalizer = picked.reduce(0) { $0 + train[$1].targetCount }
        lora.zeroGradients()
        var nll = 0.0, tokens = 0
        var dropout: TrainingRandom? = lora.settings.dropout > 0 ? state.dropout : nil
        // Micro-batches of batchSize sequences, each one flat forward/backward pass.
        let list = Array(picked)
        for start in stride(from: 0, to: list.count, by: state.options.batchSize) {
            let micro = list[start..<min(list.count, start + state.options.batchSize)].map { train[$0] }
            nll += try engine.accumulate(micro, lora: &lora, normalizer: Float(max(normalizer, 1)), dropout: &dropout).nll
            tokens += micro.reduce(0) { $0 + $1.tokens.count }
        }
        if let d = dropout { state.dropout = d }
        let norm = AdamW.clipGradients(&lora, maxNorm: state.options.maxGradNorm)
        let lr = learningRate(at: state.step)
        state.optimizer.update(&lora, lr: lr)
        let loss = normalizer > 0 ? nll / Double(normalizer) : 0
        state.losses.append(loss)
        state.step += 1
        let elapsed = ContinuousClock.now - start
        return StepReport(step: state.step, totalSteps: totalSteps, epoch: epoch, loss: loss, learningRate: lr, gradNorm: norm, tokens: tokens,
                          seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18)
    }

    /// Whether the last step ended an epoch.
    package var endedEpoch: Bool { state.step % stepsPerEpoch == 0 }

    /// The token-level mean loss over `examples` (the validation set by default).
    package func meanLoss(_ examples: [TrainingExample]? = nil) throws -> Double {
        var nll = 0.0, count = 0
        let list = examples ?? validation
        for start in stride(from: 0, to: list.count, by: state.options.batchSize) {
            let r = try engine.evaluate(Array(list[start..<min(list.count, start + state.options.batchSize)]), lora: lora)
            nll += r.nll
            count += r.count
        }
        return count > 0 ? nll / Double(count) : .nan
    }
}
