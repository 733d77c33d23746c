import Foundation
import Llama
import PagedKV
import Sampling
import Tensors
import Tokenization

/// One sequence to generate.
public struct GenerationRequest: Sendable {
    public var promptIDs: [Int32]
    public var parameters: SamplingParameters
    /// Adapter slot for every token of this sequence; -1 is the base model.
    public var adapterSlot: Int32

    public init(promptIDs: [Int32], parameters: SamplingParameters, adapterSlot: Int32 = -1) {
        self.promptIDs = promptIDs
        self.parameters = parameters
        self.adapterSlot = adapterSlot
    }
}

public enum FinishReason: String, Sendable {
    case length, stop
}

public struct GenerationResult: Sendable {
    public var outputIDs: [Int32]
    public var text: String?
    public var finishReason: FinishReason
    /// The logits each generated token was chosen from (first: the last prompt position),
    /// when requested.
    public var stepLogits: [[Float]]
}

/// Runs a fixed set of sequences to completion, all in one flat batch per step: the prompts
/// are prefilled together (in chunks of at most `prefillChunk` tokens per step), then every
/// unfinished sequence adds one token per step. Sequences with different adapters share
/// every step.
public struct BatchGenerator {
    public let model: LlamaModel
    public let tokenizer: Tokenizer?
    public var blockSize = 16
    /// Largest number of prompt tokens per step (all sequences together); nil = no limit.
    public var prefillChunk: Int?

    public init(model: LlamaModel, tokenizer: Tokenizer?, prefillChunk: Int? = nil) {
        self.model = model
        self.tokenizer = tokenizer
        self.prefillChunk = prefillChunk
    }

    struct Active {
        var request: GenerationRequest
        var sampler: Sampler
        var table: BlockTable
        var cached = 0                 // positions already in the KV cache
        var output: [Int32] = []
        var logits: [[Float]] = []
        var detokenizer: StreamingDetokenizer?
        var finished: FinishReason?
        var history: [Int32]
    }

    /// Generates for every request; `onText(i, piece)` receives streamed text of request i.
    public func generate(
        _ requests: [GenerationRequest], deltas: (any LinearDeltas)? = nil, collectLogits: Bool = false,
        onText: (Int, String) -> Void = { _, _ in }
    ) throws -> [GenerationResult] {
        let c = model.config
        for (i, r) in requests.enumerated() {
            try r.parameters.validate()
            guard !r.promptIDs.isEmpty else {
                throw FacetError(.invalidArgument, "input \(i) has no tokens", field: "input", remedy: "give a non-empty prompt")
            }
            guard r.promptIDs.count + r.parameters.maxTokens <= c.maxPositionEmbeddings else {
                throw FacetError(.invalidArgument, "input \(i) needs \(r.promptIDs.count + r.parameters.maxTokens) positions but the model has \(c.maxPositionEmbeddings)",
                                 field: "max_output_len", remedy: "shorten the prompt or lower max_output_len")
            }
            let vocabulary = r.adapterSlot >= 0 ? deltas?.vocabularySize(slot: r.adapterSlot) ?? c.vocabSize : c.vocabSize
            if r.adapterSlot >= Int32(deltas?.slotCount ?? 0) || r.adapterSlot < -1 {
                throw FacetError(.invalidArgument, "input \(i) asks for adapter \(r.adapterSlot) but \(deltas?.slotCount ?? 0) adapters are loaded",
                                 field: "lora_task_uids", remedy: "use an index of --lora_dir (0-based), or -1 for the base model")
            }
            for id in r.promptIDs where id < 0 || Int(id) >= vocabulary {
                throw FacetError(.invalidArgument, "input \(i) has token id \(id) outside the vocabulary of \(vocabulary)", field: "input",
                                 remedy: "use ids from the tokenizer of this model (or of its adapter)")
            }
        }
        let totalBlocks = requests.reduce(0) { $0 + ($1.promptIDs.count + $1.parameters.maxTokens + blockSize) / blockSize }
        var allocator = BlockAllocator(capacity: max(totalBlocks, 1), blockSize: blockSize)
        let kv = model.makeKVStorage(blocks: max(totalBlocks, 1), blockSize: blockSize)
        let logits = Logits()
        var active: [Active] = try requests.map { r in
            var table = BlockTable()
            guard table.reserve(tokens: r.promptIDs.count + r.parameters.maxTokens, from: &allocator) else {
                throw FacetError(.capacity, "KV cache exhausted", remedy: "generate fewer tokens")
            }
            return Active(request: r, sampler: Sampler(r.parameters), table: table,
                          detokenizer: tokenizer.map { StreamingDetokenizer(tokenizer: $0) }, history: r.promptIDs)
        }
        for i in active.indices where active[i].request.parameters.maxTokens == 0 { active[i].finished = .length }

        while active.contains(where: { $0.finished == nil }) {
            // Plan this step: prompt chunks first (up to the budget), then one token for
            // each sequence that is generating.
            var batch = ForwardBatch(blockTables: active.map(\.table.blocks))
            var owners: [Int] = []
            var budget = prefillChunk ?? Int.max
            for (i, a) in active.enumerated() where a.finished == nil {
                let known = a.request.promptIDs + a.output
                let remaining = known.count - a.cached
                if a.cached < a.request.promptIDs.count {
                    let take = min(remaining, budget)
                    if take == 0 { continue }
                    budget -= take
                    let run = Array(known[a.cached..<(a.cached + take)])
                    let complete = a.cached + take == known.count
                    batch.append(sequence: i, tokens: run, startPosition: a.cached, adapterSlot: a.request.adapterSlot, wantLogits: complete)
                    if complete { owners.append(i) }
                    active[i].cached += take
                } else {
                    batch.append(sequence: i, tokens: [known[a.cached]], startPosition: a.cached, adapterSlot: a.request.adapterSlot, wantLogits: true)
                    owners.append(i)
                    active[i].cached += 1
                }
            }
            try model.forward(batch, kv: kv, deltas: deltas, into: logits)
            for (row, i) in owners.enumerated() {
                let token = Int32(active[i].sampler.next(logits: logits[row], history: active[i].history))
                if collectLogits { active[i].logits.append(logits.array(row)) }
                active[i].output.append(token)
                active[i].history.append(token)
                let p = active[i].request.parameters
                var piece = ""
                if active[i].detokenizer != nil { piece = active[i].detokenizer!.append(token) }
                if !p.ignoreEOS && p.stopTokenIDs.contains(Int(token)) {
                    active[i].finished = .stop
                } else if let d = active[i].detokenizer, p.stop.contains(where: { d.text.contains($0) }) {
                    active[i].finished = .stop
                } else if active[i].output.count >= p.maxTokens {
                    active[i].finished = .length
                }
                if active[i].finished != nil, active[i].detokenizer != nil { piece += active[i].detokenizer!.finish() }
                if !piece.isEmpty { onText(i, piece) }
            }
        }
        return active.map { a in
            var text = a.detokenizer?.text
            if let t = text, let stop = a.request.parameters.stop.compactMap({ t.range(of: $0) }).min(by: { $0.lowerBound < $1.lowerBound }) {
                text = String(t[..<stop.lowerBound])
            }
            return GenerationResult(outputIDs: a.output, text: text, finishReason: a.finished ?? .length, stepLogits: a.logits)
        }
    }
}
