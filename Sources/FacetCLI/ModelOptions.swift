import Adapters
import ArgumentParser
import Foundation
import Formats
import Kernels
import Llama
import Loading
import Tensors
import TensorParallel
import Tokenization

/// Options naming the model and its tokenizer, shared by every command.
struct ModelOptions: ParsableArguments {
    @Option(name: [.customLong("model"), .customLong("engine_dir"), .customLong("model_dir")],
            help: "A Hugging Face model directory or a .gguf file (default: the embedded SmolLM2-135M-Instruct).")
    var model: String?

    @Option(name: [.customLong("tokenizer_dir"), .customLong("tokenizer-dir")],
            help: "Directory with tokenizer.json (default: the model's own tokenizer).")
    var tokenizerDir: String?

    @Option(help: "Activations in products with compact weights: fp32 (default, follows the reference), int8 (faster; rounds activations to 8 bits per block of 32, as llama.cpp does) or bf16 (rounds activations to bf16 for Q4_0/Q4_1/Q8_0/Q4_K/Q6_K/BF16 weights; vdpbf16ps on AVX512_BF16 CPUs, emulated elsewhere).")
    var compute: ComputeMode?

    var computeMode: ComputeMode { compute ?? .fp32 }

    @Option(name: .customLong("kv-cache-dtype"),
            help: "How the KV cache stores keys and values: fp32 (default, exact), or bf16/f16 (half the memory, so twice the positions in --kv-cache-memory; rounds them).")
    var kvCacheDType: KVCacheType?

    @Option(name: .customLong("lora-precision"),
            help: "How adapters keep their LoRA factors: exact (default; 16-bit files stay 16-bit), or bf16/f16 (rounds fp32 adapters: half the memory and traffic, small accuracy cost).")
    var loraPrecision: LoRAPrecision = .exact

    @Option(name: .customLong("weight-tiles"),
            help: "Tiled copies of Q4_0/Q4_1/Q8_0 weights, which some products read faster: auto (default: made where the compute mode reads them, int8 everywhere and fp32 on AVX-512 CPUs; they take the weights' size again in memory) or off (same results, slower; for a large model in little memory). Training never makes them.")
    var weightTiles: WeightTiles = .auto

    /// Commands that only read or write files take the model options for the model path;
    /// the run-time options would be silently ignored there, so they are refused.
    /// `--compute` for training (facet tune, facet bench --train): the products with the
    /// frozen base in fp32 (default, the reference) or bf16; int8 is an inference mode.
    func trainingProducts(for command: String) throws -> TrainingProducts {
        switch compute {
        case nil, .fp32?: return .fp32
        case .bf16?: return .bf16
        case .int8?: throw ValidationError("\(command) --compute takes fp32 or bf16 (int8 is an inference mode)")
        }
    }

    func rejectRuntimeOptions(for command: String) throws {
        if compute != nil { throw ValidationError("--compute applies to run, serve, bench and tune, not to \(command)") }
        try rejectInferenceOptions(for: command)
    }

    /// The options of inference alone (facet tune takes --compute, as `trainingProducts`).
    func rejectInferenceOptions(for command: String) throws {
        if loraPrecision != .exact { throw ValidationError("--lora-precision applies to run, serve and bench, not to \(command)") }
        if kvCacheDType != nil { throw ValidationError("--kv-cache-dtype applies to run, serve, bench and perplexity, not to \(command)") }
        if weightTiles != .auto { throw ValidationError("--weight-tiles applies to run, serve, bench and perplexity, not to \(command)") }
    }

    /// Where `scripts/setup` puts the default model, searched from the working directory,
    /// the executable's folders and FACET_HOME.
    static func defaultModelPath() -> String? {
        let name = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        var roots: [String] = []
        if let home = ProcessInfo.processInfo.environment["FACET_HOME"] { roots.append(home) }
        roots.append(FileManager.default.currentDirectoryPath)
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        for _ in 0..<6 {
            url.deleteLastPathComponent()
            roots.append(url.path)
        }
        return roots.map { ($0 as NSString).appendingPathComponent(name) }.first { FileManager.default.fileExists(atPath: $0) }
    }

    func resolvedModelPath() throws -> String {
        if let model { return model }
        guard let path = Self.defaultModelPath() else {
            throw FacetError(.notFound, "the default model has not been fetched", file: ".cache/models",
                             remedy: "run scripts/setup, or pass --model PATH")
        }
        return path
    }

    /// Loads the model and its tokenizer (nil only when none exists and `tokenizerRequired`
    /// is false). Status lines go to standard error.
    ///
    /// With a tensor-parallel `group`, the model is this rank's shard; ranks other than 0
    /// load no tokenizer and print nothing.
    /// `training`: the model is for `facet tune` or `facet bench --train`, whose products read
    /// no tiles, so none are made.
    func load(tokenizerRequired: Bool, group: RankGroup? = nil, training: Bool = false) throws -> (LlamaModel, Tokenizer?) {
        let path = try resolvedModelPath()
        let quiet = (group?.shard.rank ?? 0) != 0
        let progress: (String) -> Void = { if !quiet { FileHandle.standardError.write(Data("[facet] \($0)\n".utf8)) } }
        let start = Date()
        let (loaded, source) = try ModelLoader.load(path: path, progress: progress)
        var model = loaded.with(compute: computeMode, kvCacheType: kvCacheDType ?? .fp32, weightTiles: training ? .off : weightTiles)
        // Not an error (a mixed-format file still gains where it can), but never silent.
        if let note = model.weights.fp32Note(computeMode) { progress("--compute \(computeMode.rawValue) \(note)") }
        let tileBytes = model.weights.tileBytes
        if tileBytes > 0 {
            progress(String(format: "Tiled copies of the compact weights for faster --compute %@ products: %.1f MB more memory (--weight-tiles off: none, slower)",
                            computeMode.rawValue, Double(tileBytes) / 1e6))
        }
        if let group {
            model = try group.shardModel(model)
            progress("Tensor parallel: \(group.shard.size) ranks, each with \(model.localHeads) of \(model.config.numHeads) query heads, \(model.localKVHeads) of \(model.config.numKVHeads) key/value heads and \(model.localIntermediate) of \(model.config.intermediateSize) MLP rows")
            if quiet { return (model, nil) }
        }
        var tokenizer: Tokenizer?
        if let dir = tokenizerDir {
            guard let t = try TokenizerLoader.loadHuggingFace(directory: dir) else {
                throw FacetError(.notFound, "no tokenizer.json in the tokenizer directory", file: dir, remedy: "point --tokenizer_dir at a directory with tokenizer.json")
            }
            tokenizer = t
        } else {
            switch source {
            case .huggingFace(let dir): tokenizer = try TokenizerLoader.loadHuggingFace(directory: dir)
            case .gguf(let file): tokenizer = try TokenizerLoader.loadGGUF(try GGUFFile(path: file))
            }
        }
        if tokenizerRequired && tokenizer == nil {
            throw FacetError(.notFound, "the model has no tokenizer", file: path,
                             remedy: "pass --tokenizer_dir, or give token ids with --input_file")
        }
        progress(String(format: "Model ready in %.1f s", Date().timeIntervalSince(start)))
        return (model, tokenizer)
    }
}

extension ComputeMode: ExpressibleByArgument {}
extension KVCacheType: ExpressibleByArgument {}
extension WeightTiles: ExpressibleByArgument {}

extension LoRAPrecision: ExpressibleByArgument {}
