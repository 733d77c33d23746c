import Adapters
import ArgumentParser
import Engine
import Benchmarks
import Foundation
import Kernels
import Llama
import Loading
import ServingBench
import Tensors
import TensorParallel
import Training
import Tokenization

/// `facet bench`: prefill and decode throughput per numerics mode, the cost of mixed
/// adapters, the accuracy cost of the fast mode, and adapter load time.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure prefill/decode throughput, the cost of mixed adapters and of each numerics mode.",
        discussion: """
        Without --compute every mode is measured (fp32, int8) and int8's accuracy against fp32 is printed.
        With --serving, starts `facet serve` (or uses --url) and drives it with streaming requests arriving at rising
        rates, reporting throughput and TTFT/TPOT/latency percentiles.
        """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var parallelOptions: TensorParallelOptions
    @Option(help: "Decode steps per measurement.") var steps = 32
    @Option(name: .customLong("batch-sizes"), parsing: .upToNextOption, help: "Decode batch sizes.") var batchSizes: [Int] = [1, 8, 32]
    @Option(name: .customLong("prompt-lengths"), parsing: .upToNextOption, help: "Prefill lengths.") var promptLengths: [Int] = [128, 512]
    @Option(name: .customLong("decode-contexts"), parsing: .upToNextOption,
            help: "Decode at batch 1 after a prompt of each of these lengths (long-context decode; default: none).")
    var decodeContexts: [Int] = []
    @Option(name: .customLong("adapter-counts"), parsing: .upToNextOption, help: "Distinct adapters in the mixed decode batch.")
    var adapterCounts: [Int] = [1, 4, 16]
    @Option(help: "Rounds of (base, mixed-adapter) decode pairs; adapter ratios are the median of the per-round ratios.")
    var rounds = 3
    @Option(name: .customLong("adapter-precisions"), parsing: .upToNextOption,
            help: "Precisions the synthetic adapters' weights are saved in (f32, f16, bf16); 16-bit adapters stay 16-bit in memory.")
    var adapterPrecisions: [LowRankMatrix.Precision] = [.f32, .bf16]
    @Option(name: .customLong("adapter-rank"), help: "Rank of the synthetic adapters (all linear layers).") var adapterRank = 16
    @Option(name: .customLong("lora_dir"), parsing: .upToNextOption,
            help: "Real adapters: their load time, and a decode batch mixing the base and each of them in turn.")
    var loraDirs: [String] = []
    @Option(name: .customLong("accuracy-prompts"), help: "Prompts for the accuracy comparison of the fast mode (0: skip).")
    var accuracyPrompts = 8
    @Option(name: .customLong("accuracy-tokens"), help: "Greedy tokens per accuracy prompt.") var accuracyTokens = 32
    @Option(help: "Write the results as JSON to this file.") var json: String?
    @Option(help: "Write a bar chart of the results as SVG to this file.") var svg: String?

    @Flag(help: "Benchmark serving instead: streaming requests at rising rates against `facet serve`.") var serving = false
    @Flag(help: "Benchmark LoRA training instead (facet tune's steps): tokens/s and peak memory for q/v rank 8 and all-linear rank 16, with fp32 products and (on AVX512_BF16 CPUs, or with --compute bf16) bf16 products.")
    var train = false
    @Option(name: .customLong("train-length"), help: "With --train: tokens per synthetic sequence (the last half is the answer).") var trainLength = 64
    @Option(help: "With --serving: an already running OpenAI-compatible server (default: start facet serve).") var url: String?
    @Option(parsing: .upToNextOption, help: "With --serving: request rates per second; 'max' sends all at once.")
    var rates: [String] = ["1", "2", "4", "8", "max"]
    @Option(help: "With --serving: requests per rate.") var requests = 32
    @Option(name: .customLong("max-tokens"), help: "With --serving: tokens generated per request.") var maxTokens = 64
    @Option(name: .customLong("prompt-words"), help: "With --serving: words per prompt.") var promptWords = 96
    @Option(name: .customLong("shared-prefix-words"), help: "With --serving: words of a system prompt every request starts with (0: none).")
    var sharedPrefixWords = 0
    @Option(name: .customLong("prefix-cache"),
            help: "With --serving and a started server: on, off, or both (two servers, the same requests to each in turn at every rate, and the ratio of their TTFT).")
    var prefixCache = "on"

    @Option(name: .customLong("temperature"), help: "With --serving: sampling temperature of the requests (0: greedy).") var temperature: Double = 0
    @Option(help: "With --serving: NAME=PATH adapters for the started server; requests use the base and every adapter in turn.")
    var lora: [String] = []
    @Option(help: "With --serving: port for the started server.") var port = 8765
    @Option(name: .customLong("protocol"), help: "With --serving: openai, kserve-http (Triton's generate_stream) or kserve-grpc (ModelStreamInfer); KServe requests use the base and the --lora adapters as lora_task_id 0, 1, ...")
    var protocolName = "openai"
    @Option(name: .customLong("grpc-port"), help: "With --serving --protocol kserve-grpc: the server's gRPC port (the started server listens there).")
    var grpcPort = 8766
    @Option(name: .customLong("api-key"), help: "With --serving: bearer token for the server (passed to the started one too).")
    var apiKey: String?

    func validate() throws {
        if train { _ = try modelOptions.trainingProducts(for: "facet bench --train") }
        for (name, values) in [("--batch-sizes", batchSizes), ("--prompt-lengths", promptLengths), ("--adapter-counts", adapterCounts)]
        where values.contains(where: { $0 < 1 }) {
            throw ValidationError("\(name) must be positive")
        }
        guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be >= 0") }
        guard steps > 0, rounds > 0, adapterRank > 0, accuracyPrompts >= 0, accuracyTokens > 0, requests > 0, maxTokens > 0, promptWords > 0 else {
            throw ValidationError("--steps, --rounds, --adapter-rank, --accuracy-tokens, --requests, --max-tokens and --prompt-words must be positive")
        }
        _ = try parsedRates()
        guard ServingProtocol(rawValue: protocolName) != nil else {
            throw ValidationError("--protocol must be one of \(ServingProtocol.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func parsedRates() throws -> [Double] {
        try rates.map { text in
            if text.lowercased() == "max" { return .infinity }
            guard let r = Double(text), r > 0, r.isFinite else { throw ValidationError("--rates: '\(text)' is not a positive number or 'max'") }
            return r
        }
    }

    func run() async throws {
        if serving {
            try await runServing()
            return
        }
        if train {
            try failing { try runTraining() }
            return
        }
        try failing {
            try parallelOptions.run(modelOptions, tokenizerRequired: false) { loaded, tokenizer in
                try measure(loaded, tokenizer)
            }
        }
    }

    /// The forward-pass measurements (on rank 0 of a tensor-parallel group, whose other
    /// ranks run the same steps).
    func measure(_ loaded: LlamaModel, _ tokenizer: Tokenizer?) throws {
        do {
            let group = loaded.parallel as? RankGroup
            let modes = modelOptions.compute.map { [$0] } ?? ComputeMode.allCases
            var report = BenchReport(machine: BenchReport.Machine.current(), model: try modelOptions.resolvedModelPath())
            print("facet bench — \(loaded.config.architecture), \(loaded.config.numLayers) layers, hidden \(loaded.config.hiddenSize), "
                  + "\(report.machine.threads) threads, \(report.machine.cpu), kernels: \(report.machine.kernels ?? "?"), KV cache \(loaded.kvCacheType.rawValue)"
                  + (group.map { ", tensor parallel: \($0.shard.size) ranks x \(report.machine.threads) threads" } ?? ""))
            let synthetic = adapterPrecisions.map { p in
                (p, Benchmark(model: loaded).syntheticAdapters(count: adapterCounts.max() ?? 0, rank: adapterRank, precision: p))
            }
            for mode in modes {
                let bench = Benchmark(model: loaded.with(compute: mode))
                if let note = loaded.weights.fp32Note(mode) { print("[\(mode.rawValue)] \(note)") }
                var reduced = group?.reduceStats.withLock { $0 }
                func add(_ r: Benchmark.Result) {
                    var r = r
                    r.mode = mode.rawValue
                    report.results.append(r)
                    print(r.line)
                    // Under tensor parallelism: what one all-reduce costs (its transfer and
                    // the wait for the slowest rank), averaged over the measurement and its
                    // warm-up; a step makes two per layer.
                    if let group, let before = reduced {
                        let now = group.reduceStats.withLock { $0 }
                        let calls = max(now.calls - before.calls, 1), perCall = (now.seconds - before.seconds) / Double(calls)
                        let perStep = perCall * Double(2 * loaded.config.numLayers)
                        print(String(format: "  all-reduce: %d calls of %.0f KB, %.0f us each: %.2f ms per step (%d per step, 2 per layer)",
                                     calls, Double(now.floats - before.floats) * 4 / Double(calls) / 1e3, perCall * 1e6, perStep * 1e3,
                                     2 * loaded.config.numLayers))
                        reduced = now
                    }
                    fflush(nil)
                }
                for n in promptLengths { add(try bench.prefill(length: n)) }
                for b in batchSizes { add(try bench.decode(batchSize: b, steps: steps)) }
                for n in decodeContexts { add(try bench.decode(batchSize: 1, steps: steps, prompt: n, name: "decode batch 1 at \(n)")) }
                for b in batchSizes {
                    for n in adapterCounts where n <= b || (n == 1 && b == 1) {
                        for (precision, adapters) in synthetic {
                            let r = try bench.decodeAgainstBase(batchSize: b, steps: steps, adapters: Array(adapters.prefix(n)), rounds: rounds,
                                                                name: "decode batch \(b), \(n) adapter\(n == 1 ? "" : "s") r\(adapterRank) \(precision.rawValue)")
                            add(r)
                        }
                    }
                }
            }
            if modes.count > 1, accuracyPrompts > 0 {
                let prompts = BenchPrompts.make(count: accuracyPrompts, tokenizer: tokenizer, vocabulary: loaded.config.vocabSize)
                for mode in modes.dropFirst() {
                    let a = try Benchmark.accuracy(reference: loaded.with(compute: modes[0]), candidate: loaded.with(compute: mode),
                                                   prompts: prompts, newTokens: accuracyTokens)
                    report.accuracy[mode.rawValue] = a
                    print(String(format: "accuracy of %@ against %@ (%d prompts x %d greedy tokens): identical continuations %d/%d, "
                                 + "token agreement %.1f%%, mean KL %.5f nats (max %.4f)",
                                 mode.rawValue, modes[0].rawValue, prompts.count, accuracyTokens, a.identicalContinuations, a.prompts,
                                 a.tokenAgreement * 100, a.meanKL, a.maxKL))
                }
            }
            if loaded.kvCacheType != .fp32, accuracyPrompts > 0 {
                let prompts = BenchPrompts.make(count: accuracyPrompts, tokenizer: tokenizer, vocabulary: loaded.config.vocabSize)
                let type = loaded.kvCacheType.rawValue
                let a = try Benchmark.accuracy(reference: loaded.with(compute: modes[0], kvCacheType: .fp32), candidate: loaded.with(compute: modes[0]),
                                               prompts: prompts, newTokens: accuracyTokens)
                report.accuracy["kv-cache-\(type)"] = a
                print(String(format: "accuracy of a %@ KV cache against fp32 (%@ compute, %d prompts x %d greedy tokens): identical continuations %d/%d, "
                             + "token agreement %.1f%%, mean KL %.5f nats (max %.4f)",
                             type, modes[0].rawValue, prompts.count, accuracyTokens, a.identicalContinuations, a.prompts,
                             a.tokenAgreement * 100, a.meanKL, a.maxKL))
            }
            var real: [LoRAAdapter] = []
            for dir in loraDirs {
                let start = Date()
                let a = try AdapterLoader.load(directory: dir, base: loaded.config, baseEmbedding: loaded.weights.embedding)
                    .storing(modelOptions.loraPrecision)
                let s = Date().timeIntervalSince(start)
                print(String(format: "adapter load %@ (%.1f MB): %.3f s", a.name, Double(a.byteSize) / 1e6, s))
                report.results.append(Benchmark.Result(name: "adapter load \(a.name)", tokensPerSecond: 0, tokens: 0, seconds: s))
                real.append(a)
            }
            if !real.isEmpty {
                let names = (["base"] + real.map(\.name)).joined(separator: "+")
                for mode in modes {
                    let bench = Benchmark(model: loaded.with(compute: mode))
                    for b in batchSizes where b > 1 {
                        var r = try bench.decodeAgainstBase(batchSize: b, steps: steps, adapters: real, includeBase: true, rounds: rounds,
                                                            name: "decode batch \(b), \(names)")
                        r.mode = mode.rawValue
                        report.results.append(r)
                        print(r.line)
                    }
                }
            }
            try report.write(json: json, svg: svg)
        }
    }
}

extension BenchCommand {
    func runServing() async throws {
        let model = try url ?? failing { try modelOptions.resolvedModelPath() }
        guard ["on", "off", "both"].contains(prefixCache) else { throw ValidationError("--prefix-cache: expected on, off or both, got '\(prefixCache)'") }
        guard url == nil || prefixCache == "on" else { throw ValidationError("--prefix-cache \(prefixCache) needs the started server (no --url)") }
        guard sharedPrefixWords >= 0 else { throw ValidationError("--shared-prefix-words must be 0 or more") }
        var report = BenchReport(machine: BenchReport.Machine.current(), model: model)
        // (label, server, base URL): one server, or prefix caching on and off side by side.
        let variants: [(label: String, cache: Bool)] = switch prefixCache {
        case "both": [("cache on", true), ("cache off", false)]
        case "off": [("", false)]
        default: [("", true)]
        }
        var servers: [ServerProcess] = []
        defer { for s in servers { s.terminate() } }
        var urls: [String] = []
        for (i, v) in variants.enumerated() {
            if let url {
                urls.append(url)
            } else {
                servers.append(try failing { try startServer(port: port + 10 * i, prefixCache: v.cache) })
                urls.append("http://127.0.0.1:\(port + 10 * i)")
            }
        }
        var config = ServingBenchmark.Configuration(baseURL: urls[0])
        config.rates = try parsedRates()
        config.requestsPerRate = requests
        config.maxTokens = maxTokens
        config.promptWords = promptWords
        config.sharedPrefixWords = sharedPrefixWords
        config.temperature = temperature
        config.apiKey = apiKey
        config.protocolKind = ServingProtocol(rawValue: protocolName) ?? .openai
        config.adapterTasks = lora.count
        config.grpcPort = grpcPort
        for (s, u) in zip(servers, urls) { try await s.waitUntilHealthy(baseURL: u) }
        let shared = sharedPrefixWords > 0 ? "a shared \(sharedPrefixWords)-word system prompt + " : ""
        print("facet bench --serving (\(protocolName)): \(urls.joined(separator: " and ")), \(requests) streaming requests per rate, \(shared)\(promptWords)-word prompts, "
              + "\(maxTokens) tokens each (ignore_eos), temperature \(temperature); rates \(rates.joined(separator: ", ")) req/s"
              + (variants.count > 1 ? "; prefix caching on and off, in turn at each rate" : ""))
        print("rate      \(variants.count > 1 ? "server     " : "")done  failed   req/s  out tok/s   TTFT p50/p90/p99 ms       TPOT p50/p90/p99 ms    latency p50/p99 ms")
        for rate in config.rates {
            var p50: [Double] = []
            for (i, v) in variants.enumerated() {
                var c = config
                c.baseURL = urls[i]
                c.grpcPort = url == nil ? grpcPort + 10 * i : grpcPort
                c.rates = [rate]
                do {
                    let results = try await ServingBenchmark(c).run { r in
                        let rate = r.rate.map { String(format: "%.1f", $0) } ?? "max"
                        print(rate.padding(toLength: 8, withPad: " ", startingAt: 0)
                              + (variants.count > 1 ? v.label.padding(toLength: 11, withPad: " ", startingAt: 0) : "")
                              + String(format: "%6d %7d %7.2f %10.1f   %6.0f %6.0f %6.0f      %6.1f %6.1f %6.1f      %7.0f %7.0f", r.requests - r.failed, r.failed,
                                       r.requestsPerSecond, r.outputTokensPerSecond, r.ttft.p50, r.ttft.p90, r.ttft.p99,
                                       r.tpot.p50, r.tpot.p90, r.tpot.p99, r.latency.p50, r.latency.p99))
                        if let e = r.firstError { print("  first error: \(e)") }
                        fflush(nil)
                    }
                    for var r in results {
                        p50.append(r.ttft.p50)
                        if variants.count > 1 { r.label = v.label }
                        report.serving.append(r)
                    }
                } catch {
                    let remedy = url == nil ? "see the server's log above" : "check that --url points at a running OpenAI-compatible server"
                    FileHandle.standardError.write(Data("error: the serving benchmark failed against \(c.baseURL): \(error) (remedy: \(remedy))\n".utf8))
                    throw ExitCode(2)
                }
            }
            if p50.count == 2, p50[0] > 0 {
                print(String(format: "        TTFT p50 with the prefix cache: %.2fx faster (%.0f ms against %.0f ms without)", p50[1] / p50[0], p50[0], p50[1]))
            }
        }
        for r in report.serving {
            report.results.append(Benchmark.Result(name: "serving at \(r.rate.map { String(format: "%g", $0) } ?? "max") req/s" + (r.label.map { " (\($0))" } ?? ""),
                                                   tokensPerSecond: r.outputTokensPerSecond, tokens: 0, seconds: r.seconds))
        }
        try report.write(json: json, svg: svg)
    }

    /// Starts `facet serve` (this executable) with the same model options.
    func startServer(port: Int, prefixCache: Bool) throws -> ServerProcess {
        var arguments = ["serve", "--model", try modelOptions.resolvedModelPath(), "--port", String(port), "--log-level", "warning"]
        if !prefixCache { arguments.append("--no-prefix-cache") }
        if let dir = modelOptions.tokenizerDir { arguments += ["--tokenizer_dir", dir] }
        if let compute = modelOptions.compute { arguments += ["--compute", compute.rawValue] }
        for spec in lora { arguments += ["--lora", spec] }
        // The second server of a side-by-side run listens ten ports up, for gRPC too.
        if ServingProtocol(rawValue: protocolName) == .kserveGRPC { arguments += ["--grpc-port", String(grpcPort + port - self.port)] }
        if let apiKey { arguments += ["--api-key", apiKey] }
        return try ServerProcess(arguments: arguments, name: String(port))
    }
}

/// A `facet serve` child process for the serving benchmark.
final class ServerProcess: @unchecked Sendable {
    let process = Process()
    let logPath: String

    /// `name` tells apart the logs of the servers one benchmark starts.
    init(arguments: [String], name: String) throws {
        guard let exe = Bundle.main.executableURL else {
            throw FacetError(.notFound, "cannot find the facet executable to start a server", remedy: "pass --url of a running server")
        }
        logPath = FileManager.default.temporaryDirectory.appendingPathComponent("facet-bench-serve-\(getpid())-\(name).log").path
        guard FileManager.default.createFile(atPath: logPath, contents: nil), let log = FileHandle(forWritingAtPath: logPath) else {
            throw FacetError(.io, "cannot write the server's log", file: logPath, remedy: "check that the temporary directory is writable")
        }
        process.executableURL = exe
        process.arguments = arguments
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    func waitUntilHealthy(baseURL: String, seconds: Double = 180) async throws {
        let child = process
        if await ServingBenchmark.waitUntilHealthy(baseURL: baseURL, seconds: seconds, alive: { child.isRunning }) { return }
        let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        terminate()
        throw FacetError(.io, "the benchmark's server did not become healthy: \(log.suffix(800))", remedy: "check the model and --port")
    }

    func terminate() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: logPath)
    }
}

/// Everything `facet bench` measured, as written to `--json`.
struct BenchReport: Codable {
    struct Machine: Codable {
        var cpu: String
        var threads: Int
        var date: String
        /// The kernels' instruction-set tier on this CPU.
        var kernels: String? = InstructionTier.current.description
        static func current() -> Machine {
            let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
            let cpu = info.split(separator: "\n").first { $0.hasPrefix("model name") }?.split(separator: ":").last?
                .trimmingCharacters(in: .whitespaces) ?? "unknown CPU"
            return Machine(cpu: cpu, threads: Parallel.threadCount, date: ISO8601DateFormatter().string(from: Date()),
                           kernels: InstructionTier.current.description)
        }
    }
    var machine: Machine
    var model: String
    var results: [Benchmark.Result] = []
    var accuracy: [String: NumericsAccuracy] = [:]
    var serving: [ServingBenchmark.RateResult] = []

    /// Writes the report as JSON and/or an SVG chart (when a path is given).
    func write(json: String?, svg: String?) throws {
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            try encoder.encode(self).write(to: URL(fileURLWithPath: json))
        }
        if let svg { try BenchChart.svg(self).write(toFile: svg, atomically: true, encoding: .utf8) }
    }
}

extension Benchmark.Result {
    var line: String {
        let label = (mode.map { "[\($0)] " } ?? "") + name
        var extra = ratioToBase.map { String(format: "  (%.2fx base", $0) } ?? ""
        if let rounds = ratioRounds, rounds.count > 1 {
            extra += ", median of " + rounds.map { String(format: "%.2f", $0) }.joined(separator: " / ")
        }
        if ratioToBase != nil { extra += ")" }
        return label.padding(toLength: max(label.count, 44), withPad: " ", startingAt: 0)
            + String(format: " %9.1f tokens/s  (%d tokens in %.3f s)", tokensPerSecond, tokens, seconds) + extra
    }
}

/// The fixed prompt set of the accuracy comparison.
enum BenchPrompts {
    static let questions = [
        "What is the capital of France?", "Explain photosynthesis in one sentence.", "Write a haiku about the sea.",
        "What is 17 times 23?", "Name three primary colors.", "Why is the sky blue?",
        "Translate 'good morning' into Spanish.", "Give me a tip for learning to code.", "What does a CPU do?",
        "Describe a cat to someone who has never seen one.", "What is the boiling point of water?", "List the planets of the solar system.",
    ]

    /// Chat-formatted questions (or, without a tokenizer, fixed pseudo-random ids).
    static func make(count: Int, tokenizer: Tokenizer?, vocabulary: Int) -> [[Int32]] {
        (0..<count).map { i in
            let q = questions[i % questions.count]
            if let tokenizer {
                let text = (try? tokenizer.applyChatTemplate([ChatTemplate.Message(role: "user", content: q)])) ?? q
                let ids = tokenizer.encode(text, addSpecialTokens: tokenizer.chatTemplate == nil)
                if !ids.isEmpty { return ids }
            }
            return (0..<24).map { Int32(($0 * 7919 + i * 104_729 + 11) % vocabulary) }
        }
    }
}

extension LowRankMatrix.Precision: ExpressibleByArgument {}

extension BenchCommand {
    /// `facet bench --train`: optimizer steps of `facet tune` on synthetic sequences (ids
    /// drawn from the vocabulary, the last half the answer), per LoRA configuration: tokens
    /// per second (forward + backward + AdamW) and the process's peak resident memory.
    func runTraining() throws {
        let (model, _) = try modelOptions.load(tokenizerRequired: false, training: true)
        var report = BenchReport(machine: BenchReport.Machine.current(), model: try modelOptions.resolvedModelPath())
        print("facet bench --train — \(model.config.architecture), \(model.config.numLayers) layers, hidden \(model.config.hiddenSize), "
              + "\(report.machine.threads) threads, \(report.machine.cpu); sequences of \(trainLength) tokens, batch \(batchSizes.max() ?? 8)")
        var rng = TrainingRandom(training: 5)
        let V = UInt64(model.config.vocabSize)
        let examples = (0..<32).map { _ -> TrainingExample in
            let tokens = (0..<trainLength).map { _ in Int32(rng.next() % V) }
            return TrainingExample(tokens: tokens, labels: tokens.indices.map { $0 >= trainLength / 2 ? tokens[$0] : -100 })
        }
        LoRABackprop.retainFreedMemory()
        let engine = try LoRABackprop(model: model)
        // --compute picks one; without it fp32, then bf16 where the CPU has AVX512_BF16.
        var modes = [try modelOptions.trainingProducts(for: "facet bench --train")]
        if modelOptions.compute == nil {
            if TrainingProducts.bf16InHardware { modes.append(.bf16) } else {
                print("bf16 products not timed: this CPU has no AVX512_BF16 (--compute bf16 times the emulation)")
            }
        }
        let configurations = [("q,v r8", LoRASettings(rank: 8, alpha: 16, targets: [.q, .v])),
                              ("all-linear r16", LoRASettings(rank: 16, alpha: 32, targets: LinearRole.allCases))]
        for mode in modes {
            engine.products = mode
            if mode == .bf16 { print(TuneCommand.bf16Note) }
            for (name, settings) in configurations {
                let result = try timeSteps(engine, settings, model: model, examples: examples,
                                           name: "train \(name), batch \(batchSizes.max() ?? 8) x \(trainLength)\(mode == .bf16 ? " (bf16 products)" : "")")
                report.results.append(result)
                print(result.line + String(format: "  peak memory %.0f MB", Self.peakResidentMB()))
            }
        }
        try report.write(json: json, svg: svg)
    }

    /// One warm-up optimizer step, then up to 4 timed ones, of a fresh adapter.
    func timeSteps(_ engine: LoRABackprop, _ settings: LoRASettings, model: LlamaModel, examples: [TrainingExample], name: String) throws -> Benchmark.Result {
        var options = TuneOptions()
        options.batchSize = batchSizes.max() ?? 8
        options.maxSteps = steps
        let trainer = try Trainer(engine: engine, lora: try TrainableLoRA(settings: settings, config: model.config, seed: 1),
                                  options: options, train: examples)
        _ = try trainer.step()      // warm-up (scratch, pool)
        var tokens = 0, seconds = 0.0
        for _ in 0..<max(1, min(steps, 4)) {
            let r = try trainer.step()
            tokens += r.tokens
            seconds += r.seconds
        }
        return Benchmark.Result(name: name, tokensPerSecond: Double(tokens) / seconds, tokens: tokens, seconds: seconds)
    }

    /// VmHWM of /proc/self/status (the most resident memory so far), in MB.
    static func peakResidentMB() -> Double {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kb = Double(line.split(separator: " ").dropFirst().first ?? "") else { return .nan }
        return kb / 1024
    }
}
