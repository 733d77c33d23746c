import Adapters
import ArgumentParser
import Foundation
import Formats
import Llama
import Loading
import Tensors

/// `facet lora inspect | convert | merge`.
struct LoraCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora",
        abstract: "Inspect, convert and merge LoRA adapters.",
        subcommands: [Inspect.self, Convert.self, Merge.self]
    )

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an adapter's rank, targets, size and whether it fits the base model.")
        @OptionGroup var modelOptions: ModelOptions
        @Argument(help: "Adapter directory (PEFT or TensorRT-LLM).") var directory: String

        func validate() throws { try modelOptions.rejectRuntimeOptions(for: "facet lora inspect") }

        func run() throws {
            try failing {
                let format = try AdapterLoader.detect(directory: directory)
                print("adapter: \(directory)")
                print("format: \(format.rawValue)")
                if format == .peft {
                    let c = try AdapterLoader.readPEFTConfig(directory: directory)
                    print("r: \(c.r), lora_alpha: \(c.loraAlpha), rslora: \(c.useRSLoRA ?? false)")
                    if let base = c.baseModelNameOrPath { print("trained on: \(base)") }
                    if let m = c.modulesToSave, !m.isEmpty { print("modules_to_save: \(m.joined(separator: ", "))") }
                }
                let path = try modelOptions.resolvedModelPath()
                let (model, _) = try ModelLoader.load(path: path)
                do {
                    let a = try AdapterLoader.load(directory: directory, base: model.config, baseEmbedding: model.weights.embedding)
                    let layers = a.pairs.enumerated().filter { !$0.element.isEmpty }.map(\.offset)
                    print("targets: \(a.targetRoles.joined(separator: ", "))")
                    print("max rank: \(a.maxRank), layers: \(layers.count) of \(model.config.numLayers)")
                    print(String(format: "size: %.2f MB (fp32 in memory)", Double(a.byteSize) / 1e6))
                    if a.vocabularySize(base: model.config.vocabSize) != model.config.vocabSize {
                        print("vocabulary: \(a.vocabularySize(base: model.config.vocabSize)) (extends the base's \(model.config.vocabSize))")
                    }
                    print("digest: \(a.digest)")
                    print("compatible with \(path): yes")
                } catch let e as FacetError {
                    print("compatible with \(path): no — \(e.description)")
                    throw ExitCode(1)
                }
            }
        }
    }

    struct Convert: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Convert between PEFT and TensorRT-LLM's .npy form (the direction follows the input).")
        @OptionGroup var modelOptions: ModelOptions
        @Argument(help: "Input adapter directory.") var input: String
        @Argument(help: "Output directory.") var output: String
        @Option(name: [.customLong("storage_type"), .customLong("storage-type")], help: "float16, float32 or bfloat16 (to TensorRT-LLM).")
        var storageType: String = "float16"

        func validate() throws { try modelOptions.rejectRuntimeOptions(for: "facet lora convert") }

        func run() throws {
            try failing {
                let kind: NpyArray.Kind
                switch storageType {
                case "float16", "fp16": kind = .f16
                case "float32", "fp32": kind = .f32
                case "bfloat16", "bf16": kind = .bf16
                default: throw FacetError(.invalidArgument, "storage type \(storageType) is unknown", field: "storage_type", remedy: "use float16, float32 or bfloat16")
                }
                let (model, _) = try ModelLoader.load(path: try modelOptions.resolvedModelPath())
                let format = try AdapterLoader.detect(directory: input)
                let adapter = try AdapterLoader.load(directory: input, base: model.config, baseEmbedding: model.weights.embedding)
                switch format {
                case .peft:
                    let (w, c) = try TensorRTLoRA.arrays(adapter, storage: kind)
                    try AdapterMerge.createDirectory(output)
                    try AdapterMerge.write(try w.encoded(), to: output + "/model.lora_weights.npy")
                    try AdapterMerge.write(try c.encoded(), to: output + "/model.lora_config.npy")
                    print("wrote TensorRT-LLM LoRA arrays to \(output) (\(c.shape[1]) rows, \(storageType))")
                case .tensorrtLLM:
                    try AdapterMerge.writePEFT(adapter, to: output, baseModel: modelOptions.model)
                    print("wrote PEFT adapter to \(output)")
                }
            }
        }
    }

    struct Merge: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Bake an adapter into the base weights; writes a Hugging Face model directory.")
        @OptionGroup var modelOptions: ModelOptions
        @Option(name: [.customLong("lora_dir"), .customLong("lora-dir")], help: "The adapter to merge.") var loraDir: String
        @Option(name: .customLong("output"), help: "Output directory (config.json + model.safetensors).") var output: String
        @Option(help: "float32, float16 or bfloat16.") var dtype: String = "float32"

        func validate() throws { try modelOptions.rejectRuntimeOptions(for: "facet lora merge") }

        func run() throws {
            try failing {
                let d = try parseDType(dtype)
                let (model, _) = try ModelLoader.load(path: try modelOptions.resolvedModelPath())
                let adapter = try AdapterLoader.load(directory: loraDir, base: model.config, baseEmbedding: model.weights.embedding)
                let (w, c) = try AdapterMerge.merge(adapter, into: model.weights, config: model.config)
                try AdapterMerge.writeHuggingFace(weights: w, config: c, to: output, dtype: d)
                print("wrote \(output) (\(c.architecture), vocabulary \(c.vocabSize), \(dtype)); copy the tokenizer files next to it")
            }
        }
    }
}

/// `facet convert`: a GGUF (or HF) model written as a Hugging Face directory.
struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "convert", abstract: "Write a model (e.g. a GGUF) as config.json + model.safetensors.")
    @OptionGroup var modelOptions: ModelOptions
    @Option(name: .customLong("output"), help: "Output directory.") var output: String
    @Option(help: "float32, float16 or bfloat16.") var dtype: String = "float32"

    func validate() throws { try modelOptions.rejectRuntimeOptions(for: "facet convert") }

    func run() throws {
        try failing {
            let d = try parseDType(dtype)
            let (model, _) = try ModelLoader.load(path: try modelOptions.resolvedModelPath())
            try AdapterMerge.writeHuggingFace(weights: model.weights, config: model.config, to: output, dtype: d)
            print("wrote \(output) (weights dequantized to \(dtype), Q/K in Hugging Face order)")
        }
    }
}

/// `--dtype` of the writing commands.
func parseDType(_ text: String) throws -> SafetensorsFile.DType {
    switch text {
    case "float16", "fp16": return .f16
    case "bfloat16", "bf16": return .bf16
    case "float32", "fp32": return .f32
    default: throw FacetError(.invalidArgument, "dtype \(text) is unknown", field: "dtype", remedy: "use float32, float16 or bfloat16")
    }
}
