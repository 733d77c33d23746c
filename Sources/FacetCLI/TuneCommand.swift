import Adapters
import ArgumentParser
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Formats
import Kernels
import Llama
import Loading
import Tensors
import Tokenization
import Training

/// `facet tune`: trains a LoRA adapter on the CPU from JSONL records and a prompt template
/// (or chat records), and writes it as a PEFT adapter directory.
struct TuneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tune",
        abstract: "Train a LoRA adapter on the CPU (PEFT-compatible output, optionally hot-loaded into a running facet serve).",
        discussion: """
        Records are JSONL. With --template (the article's form: prompt_template with {field} placeholders, answer_field last,
        truncate_field, answer_only_loss) each record supplies the fields; without it each record is a chat
        ({"messages": [...]}, the last message the assistant's answer) rendered with the model's chat template.
        The loss counts the answer and the end-of-sequence token (--loss all counts every token).
        """)

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Training records (JSONL).") var data: String
    @Option(help: "Validation records (JSONL, same form): loss printed after each epoch.") var validation: String?
    @Option(help: "Prompt template JSON (prompt_template, answer_field, truncate_field, answer_only_loss).") var template: String?
    @Option(help: "LoRA rank.") var rank = 8
    @Option(help: "LoRA alpha (scale = alpha / rank, or alpha / sqrt(rank) with --rslora).") var alpha: Double = 16
    @Option(parsing: .upToNextOption, help: "Target modules: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or all-linear.")
    var targets: [String] = ["q_proj", "v_proj"]
    @Flag(help: "rsLoRA scaling (alpha / sqrt(rank)).") var rslora = false
    @Option(help: "Dropout on the adapters' inputs (PEFT's lora_dropout).") var dropout: Double = 0
    @Option(help: "Passes over the data.") var epochs = 1
    @Option(name: .customLong("max-steps"), help: "Stop after this many optimizer steps (overrides --epochs).") var maxSteps: Int?
    @Option(help: "Peak learning rate.") var lr: Double = 2e-4
    @Option(name: .customLong("batch-size"), help: "Examples per micro-batch.") var batchSize = 4
    @Option(name: .customLong("grad-accum"), help: "Micro-batches per optimizer step.") var gradAccum = 1
    @Option(name: .customLong("max-seq-length"), help: "Longest example in tokens (default: the template's max_seq_length, else 512).")
    var maxSeqLength: Int?
    @Option(name: .customLong("warmup-steps"), help: "Linear warmup steps.") var warmupSteps = 0
    @Option(help: "Learning-rate schedule after warmup: cosine or constant.") var schedule: LRSchedule = .cosine
    @Option(name: .customLong("max-grad-norm"), help: "Clip the global gradient norm (0: off).") var maxGradNorm: Double = 1
    @Option(name: .customLong("weight-decay"), help: "AdamW's decoupled weight decay.") var weightDecay: Double = 0
    @Option(help: "Loss over the answer only (answer) or every token (all); default: the template's answer_only_loss.") var loss: String?
    @Option(help: "Seed of the initialisation, data order and dropout (same seed, same adapter).") var seed: UInt64 = 0
    @Flag(name: .customLong("keep-activations"),
          help: "Always keep every layer's activations for the backward pass (memory grows with layers x batch x length).")
    var keepActivations = false
    @Flag(name: .customLong("recompute-activations"),
          help: "Always recompute each layer's activations from its input in the backward pass (memory: one layer's activations plus the layer inputs; about a third slower; bitwise the same adapter).")
    var recomputeActivations = false
    @Option(name: .customLong("activation-budget-mb"),
            help: "Without either flag: keep a micro-batch's activations when they fit in this many MB, else recompute them.")
    var activationBudgetMB = 1024
    @Option(help: "Output adapter directory.") var out: String
    @Option(name: .customLong("save-every"), help: "Write a checkpoint every N steps (out/checkpoint-N).") var saveEvery: Int?
    @Option(help: "Continue from a checkpoint directory (or the out directory's latest checkpoint).") var resume: String?
    @Option(name: .customLong("init-adapter"), help: "Start from an existing PEFT adapter instead of PEFT's initialisation.") var initAdapter: String?
    @Option(name: .customLong("serve-url"), help: "A running facet serve to load the trained adapter into (its --adapter-root must hold --out).")
    var serveURL: String?
    @Option(name: .customLong("serve-name"), help: "The adapter's name on the server (default: the out directory's name).") var serveName: String?

    func validate() throws {
        try modelOptions.rejectInferenceOptions(for: "facet tune")
        _ = try modelOptions.trainingProducts(for: "facet tune")
        if let loss, loss != "answer", loss != "all" { throw ValidationError("--loss must be answer or all") }
        if let s = saveEvery, s < 1 { throw ValidationError("--save-every must be at least 1") }
        if let m = maxSeqLength, m < 2 { throw ValidationError("--max-seq-length must be at least 2") }
        guard maxGradNorm >= 0 else { throw ValidationError("--max-grad-norm must be >= 0") }
        guard !(keepActivations && recomputeActivations) else { throw ValidationError("pass at most one of --keep-activations and --recompute-activations") }
        guard activationBudgetMB >= 0 else { throw ValidationError("--activation-budget-mb must be 0 or more") }
        _ = try roles()
    }

    func roles() throws -> [LinearRole] {
        if targets == ["all-linear"] { return LinearRole.allCases }
        return try targets.flatMap { $0.split(separator: ",").map(String.init) }.map { name in
            guard let r = LinearRole(rawValue: name) ?? LinearRole.allCases.first(where: { $0.rawValue.hasPrefix(name + "_") }) else {
                throw ValidationError("--targets: unknown module \(name) (use q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or all-linear)")
            }
            return r
        }
    }

    func run() throws {
        try failing { try train() }
    }

    /// What --compute bf16 does to training, and whether this CPU makes it faster.
    static var bf16Note: String {
        let unit = TrainingProducts.bf16InHardware ? "AVX512_BF16's vdpbf16ps" : "an emulation with the same bits (this CPU has no AVX512_BF16: slower than fp32 here, about 0.8x)"
        return "--compute bf16: the frozen base's products round both operands to bf16 and sum pairs in fp32 through \(unit); the LoRA factors, gradients and optimizer stay fp32"
    }

    func train() throws {
        let (model, tokenizer) = try modelOptions.load(tokenizerRequired: true, training: true)
        guard let tokenizer else { return }
        LoRABackprop.retainFreedMemory()
        let engine = try LoRABackprop(model: model)
        engine.products = try modelOptions.trainingProducts(for: "facet tune")
        if engine.products == .bf16 { FileHandle.standardError.write(Data("[facet] \(Self.bf16Note)\n".utf8)) }
        engine.recomputeAlways = recomputeActivations
        let (budget, overflow) = activationBudgetMB.multipliedReportingOverflow(by: 1 << 20)
        engine.keepBudget = keepActivations || overflow ? Int.max : budget
        let templateConfig: PromptTemplateConfig? = try template.map { path in
            guard let data = FileManager.default.contents(atPath: path) else {
                throw FacetError(.notFound, "cannot read the template", file: path, remedy: "pass a JSON file with prompt_template and answer_field")
            }
            return try decodeJSON(PromptTemplateConfig.self, from: data, file: path)
        }
        let prompt = try templateConfig.map { try PromptTemplate($0) }
        let maxLength = maxSeqLength ?? templateConfig?.maxSeqLength ?? 512
        let allTokens = loss == "all" || (loss == nil && templateConfig?.answerOnlyLoss == false)
        guard let eos = tokenizer.eosIDs.first ?? model.config.eosTokenIDs.first.map(Int32.init) else {
            throw FacetError(.notFound, "the tokenizer names no end-of-sequence token", remedy: "use a tokenizer with eos_token")
        }
        func load(_ path: String) throws -> TrainingData {
            try TrainingData.load(path: path, template: prompt, tokenizer: tokenizer, eos: eos, maxLength: maxLength, allTokensLoss: allTokens)
        }
        let trainData = try load(data)
        let validationData = try validation.map(load)
        var options = TuneOptions()
        options.epochs = epochs
        options.maxSteps = maxSteps
        options.learningRate = lr
        options.batchSize = batchSize
        options.gradAccum = gradAccum
        options.warmupSteps = warmupSteps
        options.schedule = schedule
        options.maxGradNorm = maxGradNorm > 0 ? maxGradNorm : nil
        options.weightDecay = weightDecay
        options.seed = seed
        let settings = LoRASettings(rank: rank, alpha: alpha, targets: try roles(), rsLoRA: rslora, dropout: dropout)

        var resumed: TrainerState?
        var lora: TrainableLoRA
        if let resume {
            let dir = try TuneFiles.checkpointDirectory(resume)
            let state = try TuneFiles.readState(dir)
            let adapter = try AdapterLoader.load(directory: dir, base: model.config, baseEmbedding: model.weights.embedding)
            lora = try TrainableLoRA(starting: adapter, settings: state.settings)
            resumed = state
            log("resuming from \(dir) at step \(state.step)")
        } else if let initAdapter {
            let adapter = try AdapterLoader.load(directory: initAdapter, base: model.config, baseEmbedding: model.weights.embedding)
            lora = try TrainableLoRA(starting: adapter, settings: settings)
        } else {
            lora = try TrainableLoRA(settings: settings, config: model.config, seed: seed)
        }
        let trainer = try Trainer(engine: engine, lora: lora, options: options, train: trainData.examples,
                                  validation: validationData?.examples ?? [], resume: resumed)
        if let resumed, (resumed.products ?? .fp32) != engine.products {
            log("note: the checkpoint was trained with --compute \((resumed.products ?? .fp32).rawValue); continuing with --compute \(engine.products.rawValue), "
                + "so the result is not the uninterrupted run's bit for bit")
        }
        trainer.state.products = engine.products
        log("\(trainData.examples.count) examples (\(trainData.tokenCount) tokens, \(trainData.targetCount) trained targets; "
            + "\(trainData.truncated) truncated, \(trainData.skipped) skipped as longer than \(maxLength) tokens), "
            + "LoRA r\(trainer.lora.settings.rank) alpha \(trainer.lora.settings.alpha) on \(trainer.lora.settings.targets.map(\.rawValue).joined(separator: ",")): "
            + "\(trainer.lora.parameterCount) parameters; \(trainer.totalSteps) steps of \(trainer.examplesPerStep) examples")
        if trainData.skipped > 0 {
            log("warning: \(trainData.skipped) records did not fit --max-seq-length \(maxLength) even truncated, and were skipped")
        }
        try AdapterMerge.createDirectory(out)
        if let templateConfig {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try AdapterMerge.write(try encoder.encode(templateConfig), to: out + "/template.json")
        }
        let logPath = out + "/training_log.jsonl"
        if resumed == nil || !FileManager.default.fileExists(atPath: logPath) { _ = FileManager.default.createFile(atPath: logPath, contents: nil) }
        guard let logFile = FileHandle(forWritingAtPath: logPath) else {
            throw FacetError(.io, "cannot write the training log", file: logPath, remedy: "check that --out is writable")
        }
        logFile.seekToEndOfFile()
        defer { try? logFile.close() }

        let stop = Interrupt()
        let progress = Progress(total: trainer.totalSteps)
        var tokens = 0
        let start = Date()
        while !trainer.isDone {
            let r = try trainer.step()
            tokens += r.tokens
            let line = String(format: "{\"step\": %d, \"epoch\": %d, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.5f, \"tokens\": %d, \"seconds\": %.3f}\n",
                              r.step, r.epoch, r.loss, r.learningRate, r.gradNorm, r.tokens, r.seconds)
            logFile.write(Data(line.utf8))
            progress.show(r, tokensPerSecond: Double(tokens) / max(Date().timeIntervalSince(start), 1e-9))
            if trainer.endedEpoch, !trainer.validation.isEmpty {
                let v = try trainer.meanLoss()
                trainer.state.validationLosses.append(v)
                progress.note(String(format: "epoch %d: validation loss %.4f", r.epoch + 1, v))
            }
            if let every = saveEvery, r.step % every == 0, !trainer.isDone {
                try TuneFiles.writeCheckpoint(trainer, to: out + "/checkpoint-\(r.step)", baseModel: try modelOptions.resolvedModelPath())
            }
            if stop.requested {
                let dir = out + "/checkpoint-\(r.step)"
                try TuneFiles.writeCheckpoint(trainer, to: dir, baseModel: try modelOptions.resolvedModelPath())
                progress.note("interrupted: checkpoint written to \(dir) (continue with --resume \(dir))")
                throw ExitCode(130)
            }
        }
        progress.finish()
        try TuneFiles.writeAdapter(trainer.lora, to: out, baseModel: try modelOptions.resolvedModelPath())
        let seconds = Date().timeIntervalSince(start)
        log(String(format: "trained %d steps in %.1f s (%.0f tokens/s); final loss %.4f; adapter written to %@",
                   trainer.state.step, seconds, Double(tokens) / max(seconds, 1e-9), trainer.state.losses.last ?? .nan, out))
        if let serveURL { try hotLoad(serveURL) }
    }

    /// Registers the new adapter with a running server (vLLM's /v1/load_lora_adapter); an
    /// adapter of the same name is replaced.
    func hotLoad(_ base: String) throws {
        let name = serveName ?? (URL(fileURLWithPath: out).standardizedFileURL.lastPathComponent)
        let path = URL(fileURLWithPath: out).standardizedFileURL.path
        func post(_ route: String, _ body: [String: String]) throws -> (Int, String) {
            guard let url = URL(string: base.hasSuffix("/") ? base + "v1/" + route : base + "/v1/" + route) else {
                throw FacetError(.invalidArgument, "not a URL: \(base)", field: "serve-url", remedy: "e.g. http://127.0.0.1:8000")
            }
            var request = URLRequest(url: url)
            request.httpMethod = "POST"
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            if let key = ProcessInfo.processInfo.environment["FACET_API_KEY"] { request.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization") }
            request.httpBody = try JSONSerialization.data(withJSONObject: body)
            return try HTTPSync.send(request)
        }
        var (status, text) = try post("load_lora_adapter", ["lora_name": name, "lora_path": path])
        if status != 200, text.contains("already") {
            _ = try post("unload_lora_adapter", ["lora_name": name])
            (status, text) = try post("load_lora_adapter", ["lora_name": name, "lora_path": path])
        }
        guard status == 200 else {
            throw FacetError(.io, "the server refused the adapter (HTTP \(status)): \(text)", field: "serve-url",
                             remedy: "start facet serve with --adapter-root set to a directory that holds --out")
        }
        log("loaded into \(base) as model \"\(name)\"")
    }

    func log(_ text: String) { FileHandle.standardError.write(Data("[facet] \(text)\n".utf8)) }
}

extension LRSchedule: ExpressibleByArgument {}

/// The adapter and checkpoint files of `facet tune`.
enum TuneFiles {
    /// A PEFT adapter directory as PEFT writes it (adapter_config.json +
    /// adapter_model.safetensors, keys base_model.model.model.layers.N....lora_A.weight).
    static func writeAdapter(_ lora: TrainableLoRA, to dir: String, baseModel: String) throws {
        try AdapterMerge.writePEFT(lora.adapter(name: (dir as NSString).lastPathComponent), to: dir, baseModel: baseModel)
        // PEFT's own fields for this training (writePEFT states the scale as alpha = scale * r).
        var config = PEFTConfig(r: lora.settings.rank, loraAlpha: lora.settings.alpha, targetModules: lora.settings.targets.map(\.rawValue), baseModel: baseModel)
        config.peftType = "LORA"
        config.taskType = "CAUSAL_LM"
        config.useRSLoRA = lora.settings.rsLoRA
        config.bias = "none"
        config.fanInFanOut = false
        var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config)) as! [String: Any]
        json["lora_dropout"] = lora.settings.dropout
        json["inference_mode"] = true
        try AdapterMerge.write(try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]), to: dir + "/adapter_config.json")
    }

    static func writeCheckpoint(_ trainer: Trainer, to dir: String, baseModel: String) throws {
        try writeAdapter(trainer.lora, to: dir, baseModel: baseModel)
        try AdapterMerge.write(try JSONEncoder().encode(trainer.state), to: dir + "/trainer_state.json")
    }

    static func checkpointDirectory(_ path: String) throws -> String {
        if FileManager.default.fileExists(atPath: path + "/trainer_state.json") { return path }
        let latest = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [])
            .compactMap { name -> (Int, String)? in name.hasPrefix("checkpoint-") ? Int(name.dropFirst(11)).map { ($0, name) } : nil }
            .max { $0.0 < $1.0 }
        guard let latest else {
            throw FacetError(.notFound, "no checkpoint here (trainer_state.json or checkpoint-N/)", file: path,
                             remedy: "pass a checkpoint directory written by facet tune --save-every or Ctrl-C")
        }
        return path + "/" + latest.1
    }

    static func readState(_ dir: String) throws -> TrainerState {
        let path = dir + "/trainer_state.json"
        guard let data = FileManager.default.contents(atPath: path) else { throw FacetError(.notFound, "cannot read", file: path) }
        return try decodeJSON(TrainerState.self, from: data, file: path)
    }
}

/// Ctrl-C during training: finish the step, write a checkpoint, stop.
final class Interrupt: @unchecked Sendable {
    private let source: any DispatchSourceSignal
    private let lock = NSLock()
    private var flag = false
    init() {
        signal(SIGINT, SIG_IGN)
        source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        source.setEventHandler { [unowned self] in
            let second = lock.withLock { () -> Bool in defer { flag = true }; return flag }
            if second { exit(130) }
            FileHandle.standardError.write(Data("\n[facet] Ctrl-C: stopping after this step and writing a checkpoint (again to quit at once)\n".utf8))
        }
        source.resume()
    }
    var requested: Bool { lock.withLock { flag } }
}

/// The progress line: step, loss, learning rate, tokens/s and ETA.
final class Progress {
    let total: Int
    let tty = isatty(STDERR_FILENO) != 0
    let start = Date()
    init(total: Int) { self.total = total }

    func show(_ r: StepReport, tokensPerSecond: Double) {
        let done = Double(r.step) / Double(max(total, 1))
        let elapsed = Date().timeIntervalSince(start)
        let eta = done > 0 ? elapsed / done - elapsed : 0
        let width = 24, filled = Int(done * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let text = String(format: "step %d/%d [%@] loss %.4f lr %.2e %.0f tok/s ETA %@", r.step, total, bar, r.loss, r.learningRate,
                          tokensPerSecond, Self.duration(eta))
        if tty {
            FileHandle.standardError.write(Data("\r\(text)\u{1B}[K".utf8))
        } else if r.step == 1 || r.step == total || r.step % max(1, total / 20) == 0 {
            FileHandle.standardError.write(Data("[facet] \(text)\n".utf8))
        }
    }

    func note(_ text: String) {
        FileHandle.standardError.write(Data(((tty ? "\n" : "") + "[facet] \(text)\n").utf8))
    }

    func finish() { if tty { FileHandle.standardError.write(Data("\n".utf8)) } }

    static func duration(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? "\(t / 3600)h\(t % 3600 / 60)m" : t >= 60 ? "\(t / 60)m\(t % 60)s" : "\(t)s"
    }
}

/// A blocking HTTP request (the CLI's one call to a server).
enum HTTPSync {
    static func send(_ request: URLRequest) throws -> (Int, String) {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: (Int, String)?
        nonisolated(unsafe) var failure: (any Error)?
        URLSession.shared.dataTask(with: request) { data, response, error in
            if let error { failure = error } else {
                result = ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data ?? Data(), as: UTF8.self))
            }
            done.signal()
        }.resume()
        done.wait()
        if let failure {
            throw FacetError(.io, "cannot reach \(request.url?.absoluteString ?? "?"): \(failure.localizedDescription)", field: "serve-url",
                             remedy: "start facet serve first, or check the URL")
        }
        return result ?? (0, "")
    }
}
