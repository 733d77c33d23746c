import Adapters
import ArgumentParser
import Engine
import Foundation
import Loading
import Tensors

/// `facet bench`: prefill and decode throughput, with and without mixed adapters.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Measure prefill/decode throughput and the cost of mixed adapters.")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Decode steps per measurement.") var steps = 32
    @Option(name: .customLong("batch-sizes"), parsing: .upToNextOption, help: "Decode batch sizes.") var batchSizes: [Int] = [1, 8, 32]
    @Option(name: .customLong("prompt-lengths"), parsing: .upToNextOption, help: "Prefill lengths.") var promptLengths: [Int] = [128, 512]
    @Option(name: .customLong("adapter-counts"), parsing: .upToNextOption, help: "Distinct adapters in the mixed decode batch.")
    var adapterCounts: [Int] = [1, 4, 16]
    @Option(name: .customLong("adapter-rank"), help: "Rank of the synthetic adapters (all linear layers).") var adapterRank = 16
    @Option(name: .customLong("lora_dir"), help: "An adapter whose load time to measure.") var loraDir: String?
    @Option(help: "Write the results as JSON to this file.") var json: String?

    func run() throws {
        try failing {
            let (model, _) = try ModelLoader.load(path: try modelOptions.resolvedModelPath())
            let bench = Benchmark(model: model)
            var results: [Benchmark.Result] = []
            func report(_ r: Benchmark.Result, ratio: Double? = nil) {
                results.append(r)
                let extra = ratio.map { String(format: "  (%.2fx base)", $0) } ?? ""
                let label = r.name.padding(toLength: max(r.name.count, 36), withPad: " ", startingAt: 0)
                print(label + String(format: " %9.1f tokens/s  (%d tokens in %.3f s)", r.tokensPerSecond, r.tokens, r.seconds) + extra)
                fflush(nil)
            }
            print("facet bench — \(model.config.architecture), \(model.config.numLayers) layers, hidden \(model.config.hiddenSize), threads \(ProcessInfo.processInfo.activeProcessorCount)")
            for n in promptLengths { report(try bench.prefill(length: n)) }
            var base: [Int: Double] = [:]
            for b in batchSizes {
                let r = try bench.decode(batchSize: b, steps: steps)
                base[b] = r.tokensPerSecond
                report(r)
            }
            let adapters = bench.syntheticAdapters(count: adapterCounts.max() ?? 0, rank: adapterRank)
            for b in batchSizes where b > 1 || adapterCounts.contains(1) {
                for n in adapterCounts where n <= max(b, 1) {
                    let r = try bench.decode(batchSize: b, steps: steps, adapters: Array(adapters.prefix(n)),
                                             name: "decode batch \(b), \(n) adapter\(n == 1 ? "" : "s") r\(adapterRank)")
                    report(r, ratio: base[b].map { r.tokensPerSecond / $0 })
                }
            }
            if let loraDir {
                let start = Date()
                let a = try AdapterLoader.load(directory: loraDir, base: model.config, baseEmbedding: model.weights.embedding)
                let s = Date().timeIntervalSince(start)
                print(String(format: "adapter load %@ (%.1f MB): %.3f s", a.name, Double(a.byteSize) / 1e6, s))
                results.append(Benchmark.Result(name: "adapter load \(a.name)", tokensPerSecond: 0, tokens: 0, seconds: s))
            }
            if let json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                try encoder.encode(results).write(to: URL(fileURLWithPath: json))
            }
        }
    }
}
