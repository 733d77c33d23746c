import Foundation
import Llama
import PagedKV
import Scheduling
import Sampling
import Tensors
import Tokenization

/// One sequence to generate.
package struct GenerationRequest: Sendable {
    package var promptIDs: [Int32]
    package var parameters: SamplingParameters
    /// Adapter slot for every token of this sequence; -1 is the base model.
    package var adapterSlot: Int32

    package init(promptIDs: [Int32], parameters: SamplingParameters, adapterSlot: Int32 = -1) {
        self.promptIDs = promptIDs
        self.parameters = parameters
        self.adapterSlot = adapterSlot
    }
}

package enum FinishReason: String, Sendable {
    case length, stop
}

package struct GenerationResult: Sendable {
    package var outputIDs: [Int32]
    package var text: String?
    package var finishReason: FinishReason
    /// The logits each generated token was chosen from (first: the last prompt position),
    /// when requested.
    package var stepLogits: [[Float]]
}

/// Runs a fixed set of sequences to completion through the one step loop (`StepRunner`,
/// the same Scheduler and step as `facet serve`): prompts are prefilled together, at most
/// `prefillChunk` tokens per step, then every unfinished sequence adds one token per step.
/// Sequences with different adapters share every step. Results come back in input order.
package struct BatchGenerator {
    package let model: LlamaModel
    package let tokenizer: Tokenizer?
    package var blockSize = 16
    /// Largest number of tokens per step (all sequences together); nil = no limit.
    package var prefillChunk: Int?

    package init(model: LlamaModel, tokenizer: Tokenizer?, prefillChunk: Int? = nil) {
        self.model = model
        self.tokenizer = tokenizer
        self.prefillChunk = prefillChunk
    }

    /// Generates for every request; `onText(i, piece)` receives streamed text of request i
    /// (text that may start a stop string is held back until it does not).
    package func generate(
        _ requests: [GenerationRequest], deltas: (any LinearDeltas)? = nil, collectLogits: Bool = false,
        onText: (Int, String) -> Void = { _, _ in }
    ) throws -> [GenerationResult] {
        // Blocks for every sequence at its longest: the scheduler takes them on demand and
        // never has to preempt.
        let blocks = requests.reduce(0) { $0 + ($1.promptIDs.count + $1.parameters.maxTokens + blockSize) / blockSize }
        let limits = SchedulerLimits(maxBatchSize: max(requests.count, 1), maxNumTokens: prefillChunk ?? Int.max / 2,
                                     maxLoras: Int.max / 2, maxModelLength: model.config.maxPositionEmbeddings)
        let runner = StepRunner(model: model, tokenizer: tokenizer, limits: limits, blocks: max(blocks, 1), blockSize: blockSize,
                                adapters: deltas.map { .fixed($0) } ?? .perSequence)
        if deltas == nil, let i = requests.firstIndex(where: { $0.adapterSlot != -1 }) {
            throw FacetError(.invalidArgument, "input \(i) asks for adapter \(requests[i].adapterSlot) but no adapters are loaded",
                             field: "lora_task_uids", remedy: "give --lora_dir, or use -1 for the base model")
        }
        final class Collected {
            var output: [Int32] = []
            var text = ""
            var reason: FinishReason = .length
            var logits: [[Float]] = []
            var error: (any Error)?
        }
        let collected = requests.map { _ in Collected() }
        try withoutActuallyEscaping(onText) { onText in
            for (i, r) in requests.enumerated() {
                let c = collected[i]
                let sequence = StepRunner.Sequence(promptIDs: r.promptIDs, parameters: r.parameters, slot: r.adapterSlot,
                                                   collectLogits: collectLogits)
                let sink = StepRunner.Sink(
                    event: { event in
                        switch event {
                        case .token(let id, let text, _):
                            c.output.append(id)
                            c.text += text
                            if !text.isEmpty { onText(i, text) }
                        case .finished(let reason, _, _):
                            c.reason = reason
                        case .promptLogprob:
                            break
                        }
                    },
                    ended: { c.error = $0 },
                    logits: { c.logits.append($0) })
                do {
                    try runner.add(id: i, sequence, sink: sink)
                } catch let e as FacetError {
                    throw FacetError(e.code, "input \(i): " + e.message, file: e.file, field: e.field, remedy: e.remedy)
                }
            }
            while runner.hasWork { runner.step() }
        }
        if let error = collected.compactMap(\.error).first { throw error }
        return collected.map { c in
            GenerationResult(outputIDs: c.output, text: tokenizer == nil ? nil : c.text, finishReason: c.reason, stepLogits: c.logits)
        }
    }
}
