import ArgumentParser
import ServiceLifecycle
import Engine
import Foundation
import Llama
import Tokenization
import TensorParallel
import MPI
import Hummingbird
import Kernels
import Logging
import Scheduling
import Server
import Tensors

/// `facet serve`: the OpenAI-compatible server with continuous batching over many adapters.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the model and its LoRA adapters over an OpenAI-compatible HTTP API."
    )

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var parallelOptions: TensorParallelOptions

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on.") var port = 8000
    @Option(name: .customLong("grpc-port"), help: "Also serve Triton's KServe v2 gRPC API (inference.GRPCInferenceService) on this port (Triton's is 8001).")
    var grpcPort: Int?
    @Option(name: .customLong("served-model-name"), help: "The base model's name in the API (default: the model file's name).")
    var servedModelName: String?
    @Option(name: .customLong("lora"), help: ArgumentHelp("An adapter served from the start, as NAME=PATH (repeatable).",
            discussion: "The API's `model` names it; Triton's `lora_task_id` 0, 1, ... name these adapters in the order given (as run's --lora_task_uids), unless weights were sent with that id."))
    var loras: [String] = []
    @Option(name: .customLong("adapter-root"), help: "Directory under which /v1/load_lora_adapter may load adapters by path.")
    var adapterRoot: String?
    @Flag(name: .customLong("list-adapter-root"), help: "/v1/models also lists the adapters under --adapter-root that are not loaded yet (a request naming one loads it).")
    var listAdapterRoot = false
    @Option(name: .customLong("max-lora-memory"), help: "Bytes of adapter weights kept resident (e.g. 512MB, 2GB).")
    var maxLoraMemory = "1GB"
    @Option(name: .customLong("max-lora-rank"), help: "Refuse adapters of a higher rank (default: no limit).")
    var maxLoraRank: Int?
    @Option(name: .customLong("max-loras"), help: "Distinct adapters in one step.") var maxLoras = 16
    @Option(name: .customLong("max-batch-size"), help: "Sequences running at once.") var maxBatchSize = 64
    @Option(name: .customLong("max-num-tokens"), help: "Tokens per forward step (prompt chunks + decodes).") var maxNumTokens = 512
    @Option(name: .customLong("max-model-len"), help: "Longest prompt + completion (default: the model's context).")
    var maxModelLen: Int?
    @Option(name: .customLong("kv-cache-memory"), help: "Bytes of KV cache (e.g. 512MB).") var kvCacheMemory = "512MB"
    @Option(name: .customLong("block-size"), help: "Positions per KV block.") var blockSize = 16
    @Option(name: .customLong("api-key"), help: "Require 'Authorization: Bearer KEY' on every route but the health probes, HTTP (/v1, /v2) and gRPC (metadata 'authorization') alike.") var apiKey: String?
    @Option(name: .customLong("api-key-file"), help: "As --api-key, with the key read from this file's first line (keeps it out of the process list).")
    var apiKeyFile: String?
    @Option(name: .customLong("max-pending"), help: "Requests in flight before new ones get 429.") var maxPending = 256
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error.") var logLevel = "info"
    @Option(name: .customLong("request-timeout"), help: "Seconds a client may take to send its request body.")
    var requestTimeout = 30.0
    @Option(name: .customLong("keep-alive-timeout"), help: "Seconds an idle (or stalled) connection stays open.")
    var keepAliveTimeout = 60.0
    @Option(name: .customLong("drain-timeout"), help: "Seconds to finish running requests after SIGTERM/SIGINT; a second signal stops at once.")
    var drainTimeout = 30.0
    @Flag(name: .customLong("allow-special-tokens-in-content"),
          help: "Parse special-token text inside chat messages as special tokens (off: it stays text, so users cannot fake turns).")
    var allowSpecialTokensInContent = false
    @Flag(name: .customLong("no-prefix-cache"),
          help: "Compute every prompt in full (default: requests with a common start under the same adapter share its cached KV blocks; outputs are the same either way).")
    var noPrefixCache = false

    func run() async throws {
        do {
            try await serve()
        } catch let e as FacetError {
            if MPIRuntime.speaksForAllRanks { FileHandle.standardError.write(Data("error: \(e.description)\n".utf8)) }
            throw ExitCode(2)
        }
    }

    func serve() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw FacetError(.invalidArgument, "unknown log level \(logLevel)", field: "log-level", remedy: "use info, debug, warning, ...")
        }
        var logger = Logger(label: "facet")
        logger.logLevel = level
        let key = try APIKeyPolicy.key(option: apiKey, file: apiKeyFile)
        let kvBytes = try ByteSize.parse(kvCacheMemory, field: "kv-cache-memory")
        let loraBytes = try ByteSize.parse(maxLoraMemory, field: "max-lora-memory")
        for (name, value) in [("max-loras", maxLoras), ("max-batch-size", maxBatchSize), ("max-num-tokens", maxNumTokens), ("block-size", blockSize), ("max-pending", maxPending)] where value <= 0 {
            throw FacetError(.invalidArgument, "must be positive, got \(value)", field: name)
        }
        guard (0...65535).contains(port) else {
            throw FacetError(.invalidArgument, "port \(port) is not between 0 and 65535", field: "port", remedy: "pick a TCP port such as 8000")
        }
        if let grpcPort {
            guard (0...65535).contains(grpcPort) else {
                throw FacetError(.invalidArgument, "port \(grpcPort) is not between 0 and 65535", field: "grpc-port", remedy: "pick a TCP port such as 8001")
            }
            guard grpcPort != port || port == 0 else {
                throw FacetError(.invalidArgument, "the gRPC port must differ from the HTTP port \(port)", field: "grpc-port", remedy: "pick another port, such as 8001")
            }
        }
        if let maxModelLen, maxModelLen < 2 {
            throw FacetError(.invalidArgument, "must be at least 2 (one prompt token and one generated), got \(maxModelLen)", field: "max-model-len",
                             remedy: "leave it out to use the model's context length")
        }
        for (name, value) in [("request-timeout", requestTimeout), ("keep-alive-timeout", keepAliveTimeout), ("drain-timeout", drainTimeout)]
        where !(value > 0 && value <= 86_400) {
            throw FacetError(.invalidArgument, "must be between 0 and 86400 seconds, got \(value)", field: name)
        }
        let model: LlamaModel, tokenizer: Tokenizer?, parallel: RankGroup?
        switch try parallelOptions.start(modelOptions, tokenizerRequired: true) {
        case .single(let m, let t): (model, tokenizer, parallel) = (m, t, nil)
        case .root(let m, let t, let g): (model, tokenizer, parallel) = (m, t, g)
        case .finishedWorker: return
        }
        // Rank 0 stops the other ranks once its engine has run its last step.
        defer { if let parallel { TensorParallelLaunch.finish(parallel) } }
        let path = try modelOptions.resolvedModelPath()
        let contextLength = min(maxModelLen ?? model.config.maxPositionEmbeddings, model.config.maxPositionEmbeddings)
        let limits = SchedulerLimits(maxBatchSize: maxBatchSize, maxNumTokens: maxNumTokens, maxLoras: maxLoras, maxModelLength: contextLength)
        let store = AdapterStore(base: model.config, baseEmbedding: model.weights.embedding, budgetBytes: loraBytes, maxRank: maxLoraRank,
                                 root: adapterRoot, precision: modelOptions.loraPrecision)
        var taskAdapterNames: [String] = []
        for spec in loras {
            guard let eq = spec.firstIndex(of: "="), eq != spec.startIndex else {
                throw FacetError(.invalidArgument, "expected NAME=PATH, got \(spec)", field: "lora")
            }
            let name = String(spec[..<eq]), dir = String(spec[spec.index(after: eq)...])
            try store.register(name: name, path: dir)
            logger.info("adapter \(name) loaded from \(dir) (lora_task_id \(taskAdapterNames.count))")
            taskAdapterNames.append(name)
        }
        let metrics = ServerMetrics()
        metrics.maxLoras = maxLoras
        let engine = try InferenceEngine(model: model, tokenizer: tokenizer,
                                         configuration: EngineConfiguration(limits: limits, blockSize: blockSize, kvCacheBytes: kvBytes,
                                                                            prefixCaching: !noPrefixCache),
                                         adapterStore: store, observer: metrics)
        var config = ServerConfiguration()
        config.host = host
        config.port = port
        config.apiKey = key
        config.maxPendingRequests = maxPending
        config.parseSpecialTokensInContent = allowSpecialTokensInContent
        config.requestBodyTimeout = requestTimeout
        config.idleTimeout = keepAliveTimeout
        config.taskAdapterNames = taskAdapterNames
        config.listAdapterRoot = listAdapterRoot
        if listAdapterRoot && adapterRoot == nil {
            throw FacetError(.invalidArgument, "--list-adapter-root needs --adapter-root", field: "list-adapter-root", remedy: "add --adapter-root DIR")
        }
        config.grpcPort = grpcPort
        config.servedModelName = servedModelName ?? ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        let context = ServingContext(engine: engine, store: store, metrics: metrics, configuration: config, logger: logger)
        logger.info("serving \(config.servedModelName) with \(store.names.count) adapters on http://\(host):\(port) (KV cache: \(engine.totalBlocks) blocks of \(blockSize) in \(model.kvCacheType.rawValue), prefix caching \(noPrefixCache ? "off" : "on"); kernels: \(InstructionTier.current))")
        let app = FacetServer.makeApplication(context: context, logger: logger)
        // The first SIGTERM/SIGINT drains (running requests finish, new connections are
        // refused) for at most --drain-timeout; a second one ends the process at once.
        // Services shut down in reverse order: gRPC drains before the HTTP application,
        // whose engine service stops the engine last.
        var services: [any Service] = [app]
        if let grpcPort {
            services.append(KServeGRPCServer(context: context, host: host, port: grpcPort, logger: logger))
            logger.info("Triton KServe v2 gRPC on \(host):\(grpcPort)\(key == nil ? "" : " (API key required)")")
        }
        var groupConfig = ServiceGroupConfiguration(services: services, logger: logger)
        groupConfig.maximumGracefulShutdownDuration = .milliseconds(Int64(drainTimeout * 1000))
        groupConfig.maximumCancellationDuration = .seconds(5)
        let group = ServiceGroup(configuration: groupConfig)
        let watcher = ShutdownSignals(logger: logger) { await group.triggerGracefulShutdown() }
        defer { watcher.cancel() }
        defer {
            engine.shutdown()
            engine.waitUntilStopped()
        }
        if let parallel { logger.info("tensor parallel: rank 0 of \(parallel.shard.size) serves; every rank runs each step") }
        try await group.run()
    }
}

/// SIGTERM/SIGINT: the first starts a graceful drain, the second exits at once.
final class ShutdownSignals: @unchecked Sendable {
    private var sources: [any DispatchSourceSignal] = []
    private let lock = NSLock()
    private var count = 0

    init(logger: Logger, drain: @escaping @Sendable () async -> Void) {
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [self] in
                let n = lock.withLock { count += 1; return count }
                if n == 1 {
                    logger.notice("signal \(sig): draining running requests (send it again to stop at once)")
                    Task { await drain() }
                } else {
                    logger.notice("second signal: stopping now")
                    exit(128 + sig)
                }
            }
            source.resume()
            sources.append(source)
        }
    }

    func cancel() { for s in sources { s.cancel() } }
}

enum ByteSize {
    /// "512MB", "2GB", "1.5G", "1048576".
    static func parse(_ text: String, field: String) throws -> Int {
        let t = text.trimmingCharacters(in: .whitespaces).uppercased()
        let units: [(String, Double)] = [("GIB", 1_073_741_824), ("MIB", 1_048_576), ("KIB", 1024), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("G", 1_073_741_824), ("M", 1_048_576), ("K", 1024), ("B", 1)]
        for (suffix, scale) in units where t.hasSuffix(suffix) {
            if let v = Double(t.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), v > 0, v * scale < 0x1p62 { return Int(v * scale) }
        }
        if let v = Int(t), v > 0 { return v }
        throw FacetError(.invalidArgument, "\"\(text)\" is not a size", field: field, remedy: "write e.g. 512MB or 2GB")
    }
}
