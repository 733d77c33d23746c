import ArgumentParser
import Engine
import Foundation
import Formats
import Llama
import Adapters
import Loading
import Sampling
import Tensors
import Tokenization

/// `facet run`: TensorRT-LLM's run.py, on the CPU.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Generate text for one or more inputs in a single batch (flags as TensorRT-LLM's run.py)."
    )

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var parallelOptions: TensorParallelOptions

    @Option(name: [.customLong("input_text"), .customLong("input-text")], parsing: .upToNextOption,
            help: "Input prompts; each one is a sequence of the batch.")
    var inputText: [String] = []

    @Option(name: [.customLong("input_file"), .customLong("input-file")],
            help: "Token ids instead of text: a CSV file (one sequence per line) or a NumPy .npy integer array.")
    var inputFile: String?

    @Option(name: [.customLong("max_output_len"), .customLong("max-output-len")], help: "Tokens to generate per input.")
    var maxOutputLen: Int = 64

    @Option(name: [.customLong("top_k"), .customLong("top-k")], help: "Sample from the k most likely tokens (1 = greedy).")
    var topK: Int = 1

    @Option(name: [.customLong("top_p"), .customLong("top-p")], help: "Nucleus sampling threshold (0 or 1 = off).")
    var topP: Float = 0

    @Option(help: "Sampling temperature (0 = greedy).")
    var temperature: Float = 1

    @Option(name: [.customLong("min_p"), .customLong("min-p")], help: "Drop tokens below this fraction of the top probability.")
    var minP: Float = 0

    @Option(name: [.customLong("repetition_penalty"), .customLong("repetition-penalty")], help: "Penalty for tokens already present.")
    var repetitionPenalty: Float = 1

    @Option(name: .customLong("random_seed"), help: "Seed of the random sampler (same seed, same tokens).")
    var randomSeed: UInt64?

    @Option(help: "Alias of --random_seed.")
    var seed: UInt64?

    @Option(parsing: .upToNextOption, help: "Stop when the output contains one of these strings.")
    var stop: [String] = []

    @Flag(name: [.customLong("no_add_special_tokens"), .customLong("no-add-special-tokens")],
          help: "Do not add the tokenizer's special tokens (e.g. BOS) to the input.")
    var noAddSpecialTokens = false

    @Flag(help: "Wrap each input in the model's chat template as a user message.")
    var chat = false

    @Option(name: .customLong("system_prompt"), help: "System message for --chat.")
    var systemPrompt: String?

    @Flag(name: [.customLong("ignore_eos"), .customLong("ignore-eos")], help: "Keep generating past the end-of-sequence token.")
    var ignoreEOS = false

    @Option(name: .customLong("end_id"), help: "Token id that ends generation (default: the model's EOS).")
    var endID: Int?

    @Option(name: [.customLong("output_csv")], help: "Write the generated ids as CSV, one sequence per line.")
    var outputCSV: String?

    @Option(name: [.customLong("output_npy")], help: "Write the generated ids as an int32 .npy [batch, 1, steps], padded with end_id.")
    var outputNpy: String?

    @Option(name: [.customLong("output_logits_npy")], help: "Write float32 logits of every step as .npy [batch, 1, steps, vocab].")
    var outputLogitsNpy: String?

    @Option(name: [.customLong("lora_dir"), .customLong("lora-dir")], parsing: .upToNextOption,
            help: "LoRA adapter directories (PEFT or TensorRT-LLM .npy); the n-th is task uid n.")
    var loraDir: [String] = []

    @Option(name: [.customLong("lora_task_uids"), .customLong("lora-task-uids")], parsing: .upToNextOption,
            help: "Adapter per input (index into --lora_dir; -1 = base model). One value applies to all inputs; none means the base model.")
    var loraTaskUIDs: [String] = []

    @Option(name: .customLong("prefill_chunk"), help: "Largest number of prompt tokens per forward step (default: all).")
    var prefillChunk: Int?

    @Flag(name: .customLong("streaming"), help: "Print tokens as they are generated (single input only).")
    var streaming = false

    @Flag(name: [.customLong("use_py_session"), .customLong("use-py-session")],
          help: "Accepted for TensorRT-LLM run.py compatibility; has no effect (Facet has one session type).")
    var usePySession = false

    @Option(name: [.customLong("max_lora_rank"), .customLong("max-lora-rank")],
            help: "Refuse adapters of a higher rank (as TensorRT-LLM's engine limit).")
    var maxLoraRank: Int?

    @Option(name: [.customLong("lora_target_modules"), .customLong("lora-target-modules")], parsing: .upToNextOption,
            help: "Modules adapters may target (TensorRT-LLM names attn_q attn_k attn_v attn_qkv attn_dense mlp_h_to_4h mlp_gate mlp_4h_to_h, or q_proj ... down_proj); an adapter beyond them is refused.")
    var loraTargetModules: [String] = []

    mutating func validate() throws {
        guard !inputText.isEmpty || inputFile != nil else {
            throw ValidationError("give --input_text or --input_file")
        }
        guard inputText.isEmpty || inputFile == nil else { throw ValidationError("give --input_text or --input_file, not both") }
        guard maxOutputLen >= 0 else { throw ValidationError("--max_output_len must be >= 0") }
        if let c = prefillChunk, c <= 0 { throw ValidationError("--prefill_chunk must be positive") }
        if randomSeed != nil && seed != nil && randomSeed != seed { throw ValidationError("--seed and --random_seed disagree") }
        if chat && inputFile != nil { throw ValidationError("--chat applies to --input_text, not token ids") }
        if streaming && inputText.count + (inputFile == nil ? 0 : 1) > 1 { throw ValidationError("--streaming needs a single input") }
        if !loraTaskUIDs.isEmpty && loraDir.isEmpty { throw ValidationError("--lora_task_uids needs --lora_dir") }
        if let r = maxLoraRank, r <= 0 { throw ValidationError("--max_lora_rank must be positive") }
        for m in loraTargetModules where LoRALimits.roles(of: m) == nil {
            throw ValidationError("--lora_target_modules: unknown module \(m) (use attn_q, attn_k, attn_v, attn_qkv, attn_dense, mlp_h_to_4h, mlp_gate, mlp_4h_to_h, or q_proj ... down_proj)")
        }
        for uid in loraTaskUIDs {
            guard let v = Int(NegativeNumber.restore(uid)), v >= -1 else {
                throw ValidationError("--lora_task_uids takes integers >= -1, got \(NegativeNumber.restore(uid))")
            }
            guard v < loraDir.count else {
                throw ValidationError("--lora_task_uids \(v) has no adapter: \(loraDir.count) --lora_dir given (uids are 0-based)")
            }
        }
        if !inputText.isEmpty && loraTaskUIDs.count > 1 && loraTaskUIDs.count != inputText.count {
            throw ValidationError("\(loraTaskUIDs.count) --lora_task_uids for \(inputText.count) inputs: give one per input, or one for all")
        }
    }

    func run() throws {
        try failing { try execute() }
    }

    func execute() throws {
        try parallelOptions.run(modelOptions, tokenizerRequired: inputFile == nil) { model, tokenizer in
            try generate(model: model, tokenizer: tokenizer)
        }
    }

    func generate(model: LlamaModel, tokenizer: Tokenizer?) throws {
        var params = SamplingParameters()
        params.temperature = temperature
        params.topK = topK
        params.topP = topP
        params.minP = minP
        params.repetitionPenalty = repetitionPenalty
        params.seed = randomSeed ?? seed ?? 0
        params.maxTokens = maxOutputLen
        params.stop = stop.map(NegativeNumber.restore)
        params.ignoreEOS = ignoreEOS
        if let endID {
            params.stopTokenIDs = [endID]
        } else {
            params.stopTokenIDs = Array(Set(model.config.eosTokenIDs + (tokenizer?.eosIDs.map(Int.init) ?? []))).sorted()
        }
        try params.validate()

        // Inputs as token ids.
        var prompts: [[Int32]] = []
        var shown: [String] = []
        if let inputFile {
            prompts = try InputFile.read(inputFile)
            shown = prompts.map { ids in "[" + ids.map(String.init).joined(separator: ", ") + "]" }
        } else if let tokenizer {
            // The same tokenization as the server's (one RequestBuilder); the command line is
            // trusted, so special-token text in a --chat input is parsed as special tokens.
            var builder = RequestBuilder(tokenizer: tokenizer, eosTokenIDs: model.config.eosTokenIDs, contextLength: model.config.maxPositionEmbeddings)
            builder.parseSpecialTokensInContent = true
            for text in inputText.map(NegativeNumber.restore) {
                var messages: [ChatTemplate.Message] = []
                if let systemPrompt { messages.append(.init(role: "system", content: systemPrompt)) }
                messages.append(.init(role: "user", content: text))
                prompts.append(try builder.tokenize(chat ? .chat(messages) : .text(text), addSpecialTokens: !noAddSpecialTokens))
                shown.append(text)
            }
        }

        // Adapters: slot n is --lora_dir n; each input picks one with --lora_task_uids.
        let uids = loraTaskUIDs.compactMap { Int32(NegativeNumber.restore($0)) }
        guard uids.count <= 1 || uids.count == prompts.count else {
            throw FacetError(.invalidArgument, "\(uids.count) --lora_task_uids for \(prompts.count) inputs", field: "lora_task_uids",
                             remedy: "give one uid per input, or a single uid for all")
        }
        var deltas: AdapterSet?
        var baseSlot: Int32 = -1
        if !loraDir.isEmpty {
            let limits = LoRALimits(maxRank: maxLoraRank, targetModules: loraTargetModules)
            var adapters = try loraDir.map { dir in
                let a = try AdapterLoader.load(directory: dir, base: model.config, baseEmbedding: model.weights.embedding)
                    .storing(modelOptions.loraPrecision)
                try limits.check(a, directory: dir)
                FileHandle.standardError.write(Data("[facet] adapter \(loraDir.firstIndex(of: dir)!): \(a.name) (rank \(a.maxRank), \(a.targetRoles.joined(separator: ",")))\n".utf8))
                return a
            }
            // TensorRT-LLM bakes an extended-vocabulary adapter's embedding and lm_head into
            // the engine, so uid -1 runs with those tables and no low-rank deltas. Do the
            // same when the tokenizer (or an id) needs more than the base's vocabulary.
            let minusOne = prompts.enumerated().filter { i, _ in (uids.isEmpty ? -1 : uids.count == 1 ? uids[0] : uids[i]) == -1 }
            let needed = max(tokenizer?.vocabularySize ?? 0, (minusOne.flatMap(\.element).max().map { Int($0) + 1 }) ?? 0)
            if needed > model.config.vocabSize,
               let k = adapters.firstIndex(where: { ($0.embedTokens != nil || $0.lmHead != nil) && $0.vocabularySize(base: model.config.vocabSize) >= needed }) {
                adapters.append(adapters[k].tablesOnly())
                baseSlot = Int32(adapters.count - 1)
                FileHandle.standardError.write(Data("[facet] uid -1 uses adapter \(k)'s embedding and lm_head (vocabulary \(adapters[k].vocabularySize(base: model.config.vocabSize))) without its LoRA deltas, as a TensorRT-LLM engine built with it does\n".utf8))
            }
            deltas = AdapterSet(adapters: adapters, baseVocabulary: model.config.vocabSize)
        }
        var generator = BatchGenerator(model: model, tokenizer: tokenizer)
        generator.prefillChunk = prefillChunk
        if uids.isEmpty && !loraDir.isEmpty {
            FileHandle.standardError.write(Data("[facet] warning: adapters loaded but no --lora_task_uids given: every input uses the base model (as run.py)\n".utf8))
        }
        let requests = prompts.enumerated().map { i, ids in
            let slot: Int32 = uids.isEmpty ? -1 : uids.count == 1 ? uids[0] : uids[i]
            return GenerationRequest(promptIDs: ids, parameters: params, adapterSlot: slot == -1 ? baseSlot : slot)
        }
        let start = Date()
        let results = try generator.generate(requests, deltas: deltas, collectLogits: outputLogitsNpy != nil) { _, piece in
            if streaming { FileHandle.standardOutput.write(Data(piece.utf8)) }
        }
        let seconds = Date().timeIntervalSince(start)
        if streaming { print("") }
        for (i, r) in results.enumerated() {
            print("Input [Text \(i)]: \"\(shown[i])\"")
            if let text = r.text {
                print("Output [Text \(i) Beam 0]: \"\(text)\"")
            } else {
                print("Output [Text \(i) Beam 0]: [" + r.outputIDs.map(String.init).joined(separator: ", ") + "]")
            }
        }
        let generated = results.reduce(0) { $0 + $1.outputIDs.count }
        FileHandle.standardError.write(Data(String(format: "[facet] %d sequences, %d tokens generated in %.2f s (%.1f tokens/s)\n",
                                                   results.count, generated, seconds, Double(generated) / max(seconds, 1e-9)).utf8))
        let pad = Int32(params.stopTokenIDs.first ?? 0)
        if let outputCSV { try OutputFiles.writeCSV(results.map(\.outputIDs), to: outputCSV) }
        if let outputNpy { try OutputFiles.writeIDs(results.map(\.outputIDs), pad: pad, to: outputNpy) }
        if let outputLogitsNpy { try OutputFiles.writeLogits(results.map(\.stepLogits), to: outputLogitsNpy) }
    }
}

/// TensorRT-LLM's engine limits on adapters (`--max_lora_rank`, `--lora_target_modules`),
/// applied when adapters load: one beyond them is refused, never truncated.
struct LoRALimits {
    var maxRank: Int?
    var targetModules: [String]

    /// The roles a module name covers: TensorRT-LLM's module names (`TensorRTLoRA.moduleIDs`,
    /// where `attn_qkv` is q, k and v) or Hugging Face's (`LinearRole`), as
    /// `LoRAAdapter.targetRoles` spells them.
    static func roles(of module: String) -> [String]? {
        if module == "embed_tokens" { return [module] }
        if let role = LinearRole(rawValue: module) { return [role.rawValue] }
        guard let m = TensorRTLoRA.moduleIDs.first(where: { $0.name == module }) else { return nil }
        return (m.role.map { [$0] } ?? [.q, .k, .v]).map(\.rawValue)
    }

    func check(_ adapter: LoRAAdapter, directory: String) throws {
        if let maxRank, adapter.maxRank > maxRank {
            throw FacetError(.invalidArgument, "adapter rank \(adapter.maxRank) exceeds --max_lora_rank \(maxRank)", file: directory,
                             field: "max_lora_rank", remedy: "raise --max_lora_rank to at least \(adapter.maxRank)")
        }
        guard !targetModules.isEmpty else { return }
        let allowed = Set(targetModules.flatMap { Self.roles(of: $0) ?? [] })
        let outside = adapter.targetRoles.filter { !allowed.contains($0) }
        if !outside.isEmpty {
            throw FacetError(.invalidArgument, "adapter targets \(outside.joined(separator: ", ")), outside --lora_target_modules \(targetModules.joined(separator: " "))",
                             file: directory, field: "lora_target_modules", remedy: "add those modules to --lora_target_modules")
        }
    }
}
