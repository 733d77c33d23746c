import Engine
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import Logging
import ServiceLifecycle
import SwiftProtobuf
import Tensors
import TritonProtos

/// Triton's KServe v2 protocol over gRPC (`inference.GRPCInferenceService`), on the same
/// models, tensors, LoRA task cache and engine as the HTTP routes (`KServeRoutes`).
///
/// `ModelInfer` answers once; `ModelStreamInfer` takes any number of requests on one
/// stream, runs them concurrently and answers each as TensorRT-LLM's decoupled model does:
/// with `streaming` (`stream` for the ensemble) one response per token holding only the new
/// token (text), else one response with the whole output. An error of one request is an
/// `error_message` on the stream, as Triton sends it; the stream stays open.
struct KServeGRPCService: Inference_GRPCInferenceService.SimpleServiceProtocol {
    let routes: KServeRoutes
    let logger: Logger
    var context: ServingContext { routes.context }

    init(context: ServingContext, logger: Logger) {
        routes = KServeRoutes(context: context)
        self.logger = logger
    }

    /// One line per inference request at info (model, id, outcome, time), as the HTTP
    /// routes log theirs; a stream's requests each get theirs.
    func logInference(_ method: String, model: String, id: String, since begin: ContinuousClock.Instant, error: (any Error)?) {
        let d = (ContinuousClock.now - begin).components
        let ms = Double(d.seconds) * 1000 + Double(d.attoseconds) / 1e15
        var metadata: Logger.Metadata = ["method": .string(method), "model": .string(model), "status": .string(error.map { "\(Self.rpcError($0).code)" } ?? "OK"),
                                         "ms": .string(String(format: "%.1f", ms))]
        if !id.isEmpty { metadata["id"] = .string(String(id.prefix(128))) }
        if let error { metadata["error"] = .string(String(Self.message(error).prefix(300))) }
        logger.info("gRPC inference", metadata: metadata)
    }

    // MARK: - Health and metadata

    func serverLive(request: Inference_ServerLiveRequest, context: ServerContext) async throws -> Inference_ServerLiveResponse {
        .with { $0.live = true }
    }

    func serverReady(request: Inference_ServerReadyRequest, context: ServerContext) async throws -> Inference_ServerReadyResponse {
        .with { $0.ready = true }
    }

    func modelReady(request: Inference_ModelReadyRequest, context: ServerContext) async throws -> Inference_ModelReadyResponse {
        try Self.mapErrors { _ = try KServeRoutes.model(request.name, version: request.version) }
        return .with { $0.ready = true }
    }

    func serverMetadata(request: Inference_ServerMetadataRequest, context: ServerContext) async throws -> Inference_ServerMetadataResponse {
        .with {
            $0.name = "facet"
            $0.version = "2.0.0"
            $0.extensions = ["model_configuration", "generate"]
        }
    }

    func modelMetadata(request: Inference_ModelMetadataRequest, context: ServerContext) async throws -> Inference_ModelMetadataResponse {
        let name = try Self.mapErrors { try KServeRoutes.model(request.name, version: request.version) }
        let m = KServeRoutes.models[name]!
        func spec(_ t: KServeRoutes.TensorSpec) -> Inference_ModelMetadataResponse.TensorMetadata {
            .with {
                $0.name = t.name
                $0.datatype = t.datatype
                $0.shape = ([-1] + t.dims).map(Int64.init)
            }
        }
        return .with {
            $0.name = name
            $0.versions = ["1"]
            $0.platform = name == "ensemble" ? "ensemble" : "tensorrt_llm"
            $0.inputs = m.inputs.map(spec)
            $0.outputs = m.outputs.map(spec)
        }
    }

    func modelConfig(request: Inference_ModelConfigRequest, context: ServerContext) async throws -> Inference_ModelConfigResponse {
        let name = try Self.mapErrors { try KServeRoutes.model(request.name, version: request.version) }
        let m = KServeRoutes.models[name]!
        func dataType(_ t: String) -> Inference_DataType {
            Inference_DataType(rawValue: ["BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7, "INT32": 8,
                                          "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12, "BYTES": 13, "BF16": 14][t] ?? 0) ?? .typeInvalid
        }
        return .with { r in
            r.config.name = name
            r.config.maxBatchSize = 64
            if name == "ensemble" { r.config.platform = "ensemble" } else {
                r.config.backend = "tensorrtllm"
                r.config.modelTransactionPolicy.decoupled = false
            }
            r.config.input = m.inputs.map { t in
                .with {
                    $0.name = t.name
                    $0.dataType = dataType(t.datatype)
                    $0.dims = t.dims.map(Int64.init)
                    $0.optional = t.optional
                }
            }
            r.config.output = m.outputs.map { t in
                .with {
                    $0.name = t.name
                    $0.dataType = dataType(t.datatype)
                    $0.dims = t.dims.map(Int64.init)
                }
            }
        }
    }

    func repositoryIndex(request: Inference_RepositoryIndexRequest, context: ServerContext) async throws -> Inference_RepositoryIndexResponse {
        .with { r in
            r.models = KServeRoutes.models.keys.sorted().map { name in
                .with {
                    $0.name = name
                    $0.version = "1"
                    $0.state = "READY"
                }
            }
        }
    }

    // MARK: - Inference

    func modelInfer(request: Inference_ModelInferRequest, context: ServerContext) async throws -> Inference_ModelInferResponse {
        let begin = ContinuousClock.now
        do {
            let answer = try await Self.mapErrors {
                let call = try decode(request)
                if call.streaming { throw KServeRoutes.streamingRefused(call.model) }
                let result = try await routes.run(call.typed, model: call.model)
                return try response(call, tokens: result.tokens, text: result.text, promptIDs: call.promptIDs)
            }
            logInference("ModelInfer", model: request.modelName, id: request.id, since: begin, error: nil)
            return answer
        } catch {
            logInference("ModelInfer", model: request.modelName, id: request.id, since: begin, error: error)
            throw error
        }
    }

    func modelStreamInfer(request: RPCAsyncSequence<Inference_ModelInferRequest, any Error>,
                          response: RPCWriter<Inference_ModelStreamInferResponse>, context: ServerContext) async throws {
        // Requests of one stream run concurrently; one task writes their responses in turn.
        let (out, sink) = AsyncStream.makeStream(of: Inference_ModelStreamInferResponse.self)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await message in out { try await response.write(message) }
            }
            do {
                try await withThrowingTaskGroup(of: Void.self) { requests in
                    for try await message in request {
                        requests.addTask { await self.stream(message, into: sink) }
                    }
                    try await requests.waitForAll()
                }
            } catch {
                sink.finish()
                throw error
            }
            sink.finish()
            try await group.waitForAll()
        }
    }

    /// One request of a stream: its responses, or its error as `error_message`.
    func stream(_ request: Inference_ModelInferRequest, into sink: AsyncStream<Inference_ModelStreamInferResponse>.Continuation) async {
        let begin = ContinuousClock.now
        do {
            let call = try decode(request)
            let emptyFinal = call.emptyFinalResponse
            func send(_ r: Inference_ModelInferResponse, final: Bool) {
                var r = r
                if emptyFinal { r.parameters["triton_final_response"] = .with { $0.boolParam = final } }
                sink.yield(.with { $0.inferResponse = r })
            }
            if call.streaming {
                // One response per token: the new token only (TensorRT-LLM's streaming), or
                // the new text for the ensemble (none while a character is incomplete).
                _ = try await routes.run(call.typed, model: call.model) { token, text in
                    if call.model == "ensemble" && text.isEmpty { return }
                    send(try response(call, tokens: [token], text: text, promptIDs: nil, streamed: true), final: false)
                }
                if emptyFinal {
                    send(.with {
                        $0.modelName = call.model
                        $0.modelVersion = "1"
                        $0.id = request.id
                    }, final: true)
                }
            } else {
                let result = try await routes.run(call.typed, model: call.model)
                send(try response(call, tokens: result.tokens, text: result.text, promptIDs: call.promptIDs), final: true)
            }
            logInference("ModelStreamInfer", model: request.modelName, id: request.id, since: begin, error: nil)
        } catch {
            logInference("ModelStreamInfer", model: request.modelName, id: request.id, since: begin, error: error)
            if Task.isCancelled { return }
            sink.yield(.with { $0.errorMessage = Self.message(error) })
        }
    }

    // MARK: - Tensors

    struct Call {
        var model: String
        var id: String
        var decoded: KServeRoutes.Decoded
        var typed: InferenceRequest
        var promptIDs: [Int32]?
        var streaming: Bool
        var emptyFinalResponse: Bool
    }

    /// The request's tensors (typed `contents`, or `raw_input_contents` as tritonclient
    /// sends them) as the HTTP routes decode them, and the typed request.
    func decode(_ request: Inference_ModelInferRequest) throws -> Call {
        let model = try KServeRoutes.model(request.modelName, version: request.modelVersion)
        var emptyFinal = false
        var streamingParameter = false
        for (key, value) in request.parameters {
            switch (key, value.parameterChoice) {
            case ("triton_enable_empty_final_response", .boolParam(let b)): emptyFinal = b
            case ("Streaming", .boolParam(let b)): streamingParameter = b   // inflight_batcher_llm_client's request parameter
            default:
                throw KServeError("request parameter '\(key)' is not supported (it would be ignored); supported: triton_enable_empty_final_response, Streaming")
            }
        }
        let raw = request.rawInputContents
        guard raw.isEmpty || raw.count == request.inputs.count else {
            throw KServeError("raw_input_contents has \(raw.count) entries for \(request.inputs.count) inputs; send one per input, in order")
        }
        let known = Set(KServeRoutes.models[model]!.inputs.map(\.name))
        var inputs: [String: KServeTensor] = [:]
        for (index, input) in request.inputs.enumerated() {
            guard known.contains(input.name) else {
                throw KServeError("unexpected inference input '\(input.name)' for model '\(model)' (it would be ignored; the model's inputs are \(known.sorted().joined(separator: ", ")))")
            }
            if let key = input.parameters.keys.sorted().first {
                throw KServeError("input '\(input.name)': parameter '\(key)' is not supported (shared memory is not available; send the data in the request)")
            }
            guard inputs[input.name] == nil else { throw KServeError("input '\(input.name)' is given twice") }
            inputs[input.name] = try Self.tensor(input, raw: raw.isEmpty ? nil : raw[index])
        }
        let knownOutputs = Set(KServeRoutes.models[model]!.outputs.map(\.name))
        var requested: [(name: String, binary: Bool)] = []
        for o in request.outputs {
            guard knownOutputs.contains(o.name) else {
                throw KServeError("unexpected inference output '\(o.name)' for model '\(model)' (outputs: \(knownOutputs.sorted().joined(separator: ", ")))")
            }
            requested.append((o.name, true))
        }
        let decoded = KServeRoutes.Decoded(inputs: inputs, id: request.id, requestedOutputs: requested, binaryOutput: true)
        let (typed, _, promptIDs, streaming) = try routes.request(decoded, model: model)
        if streamingParameter && !streaming && inputs[model == "ensemble" ? "stream" : "streaming"] == nil {
            throw KServeError("the request parameter 'Streaming' is true but the input '\(model == "ensemble" ? "stream" : "streaming")' is not: send the input to stream")
        }
        return Call(model: model, id: request.id, decoded: decoded, typed: typed, promptIDs: promptIDs, streaming: streaming,
                    emptyFinalResponse: emptyFinal)
    }

    static func tensor(_ input: Inference_ModelInferRequest.InferInputTensor, raw: Data?) throws -> KServeTensor {
        let name = input.name
        let shape = try input.shape.map { d -> Int in
            guard d >= 0, d < 1 << 31 else { throw KServeError("input '\(name)' has a bad shape \(input.shape)") }
            return Int(d)
        }
        guard let count = Checked.product(shape), count <= 1 << 28 else { throw KServeError("input '\(name)': shape \(shape) is too large") }
        var tensor = KServeTensor(name: name, datatype: input.datatype, shape: shape, values: .ints([]))
        if let raw {
            tensor.values = try raw.withUnsafeBytes { try KServeTensor.fromBinary($0, datatype: input.datatype, count: count, name: name) }
        } else {
            let c = input.contents
            switch input.datatype {
            case "BOOL": tensor.values = .ints(c.boolContents.map { $0 ? 1 : 0 })
            case "INT8", "INT16", "INT32": tensor.values = .ints(c.intContents.map(Int64.init))
            case "INT64": tensor.values = .ints(c.int64Contents)
            case "UINT8", "UINT16", "UINT32": tensor.values = .ints(c.uintContents.map(Int64.init))
            case "UINT64":
                tensor.values = .ints(try c.uint64Contents.map {
                    guard let v = Int64(exactly: $0) else { throw KServeError("input '\(name)': a UINT64 value is beyond 2^63") }
                    return v
                })
            case "FP32": tensor.values = .floats(c.fp32Contents.map(Double.init))
            case "FP64": tensor.values = .floats(c.fp64Contents)
            case "BYTES": tensor.values = .bytes(c.bytesContents.map { Array($0) })
            case "FP16", "BF16": throw KServeError("input '\(name)' (\(input.datatype)) has no typed contents in KServe: send it in raw_input_contents")
            default: throw KServeError("input '\(name)' has an unknown datatype \(input.datatype)")
            }
        }
        guard tensor.count == count else { throw KServeError("input '\(name)' has \(tensor.count) values for shape \(shape)") }
        return tensor
    }

    /// A response with the requested outputs (all when none is named), as raw contents.
    func response(_ call: Call, tokens: [Int32], text: String, promptIDs: [Int32]?, streamed: Bool = false) throws -> Inference_ModelInferResponse {
        var outputs = try KServeRoutes.outputs(model: call.model, tokens: tokens, text: text, promptIDs: promptIDs, decoded: call.decoded)
        if streamed, call.model == "tensorrt_llm" {
            // A streamed response holds the new tokens only, with their count.
            outputs = [KServeOutput(name: "output_ids", datatype: "INT32", shape: [1, 1, tokens.count], ints: tokens),
                       KServeOutput(name: "sequence_length", datatype: "INT32", shape: [1, 1], ints: [Int32(tokens.count)])]
        }
        let wanted = call.decoded.requestedOutputs.isEmpty ? outputs.map(\.name) : call.decoded.requestedOutputs.map(\.name)
        return .with { r in
            r.modelName = call.model
            r.modelVersion = "1"
            r.id = call.id
            for name in wanted {
                guard let o = outputs.first(where: { $0.name == name }) else { continue }
                r.outputs.append(.with {
                    $0.name = o.name
                    $0.datatype = o.datatype
                    $0.shape = o.shape.map(Int64.init)
                })
                r.rawOutputContents.append(Data(o.binaryData()))
            }
        }
    }

    // MARK: - Errors


    static func message(_ error: any Error) -> String {
        switch error {
        case let e as KServeError: e.message
        case let e as FacetError: e.description
        case let e as APIError: e.message
        case let e as RPCError: e.message
        default: "\(error)"
        }
    }

    /// gRPC status codes for the errors of the shared KServe code.
    static func rpcError(_ error: any Error) -> RPCError {
        if let e = error as? RPCError { return e }
        if error is CancellationError { return RPCError(code: .cancelled, message: "the request was cancelled") }
        let status: Int
        switch error {
        case let e as KServeError: status = e.status
        case let e as FacetError: status = APIError.from(e).status.code
        case let e as APIError: status = e.status.code
        default: status = 500
        }
        let code: RPCError.Code = switch status {
        case 404: .notFound
        case 413, 429: .resourceExhausted
        case 503: .unavailable
        case 408: .deadlineExceeded
        case 400..<500: .invalidArgument
        default: .internalError
        }
        return RPCError(code: code, message: message(error))
    }

    static func mapErrors<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch { throw rpcError(error) }
    }

    static func mapErrors<T>(_ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch { throw rpcError(error) }
    }

    // MARK: - Not offered

    static func unimplemented(_ method: String) -> RPCError {
        RPCError(code: .unimplemented, message: "\(method) is not offered by Facet (one model repository, no shared memory, no tracing)")
    }

    func modelStatistics(request: Inference_ModelStatisticsRequest, context: ServerContext) async throws -> Inference_ModelStatisticsResponse {
        let names = request.name.isEmpty ? KServeRoutes.models.keys.sorted()
            : [try Self.mapErrors { try KServeRoutes.model(request.name, version: request.version) }]
        return .with { r in
            r.modelStats = names.map { name in
                let s = self.context.kserveStatistics.snapshot(name)
                return .with {
                    $0.name = name
                    $0.version = "1"
                    $0.lastInference = s.lastMilliseconds
                    $0.inferenceCount = s.success
                    $0.executionCount = s.success
                    $0.inferenceStats.success.count = s.success
                    $0.inferenceStats.success.ns = s.successNanoseconds
                    $0.inferenceStats.fail.count = s.fail
                    $0.inferenceStats.fail.ns = s.failNanoseconds
                }
            }
        }
    }
    func repositoryModelLoad(request: Inference_RepositoryModelLoadRequest, context: ServerContext) async throws -> Inference_RepositoryModelLoadResponse {
        throw Self.unimplemented("RepositoryModelLoad")
    }
    func repositoryModelUnload(request: Inference_RepositoryModelUnloadRequest, context: ServerContext) async throws -> Inference_RepositoryModelUnloadResponse {
        throw Self.unimplemented("RepositoryModelUnload")
    }
    func systemSharedMemoryStatus(request: Inference_SystemSharedMemoryStatusRequest, context: ServerContext) async throws -> Inference_SystemSharedMemoryStatusResponse {
        throw Self.unimplemented("SystemSharedMemoryStatus")
    }
    func systemSharedMemoryRegister(request: Inference_SystemSharedMemoryRegisterRequest, context: ServerContext) async throws -> Inference_SystemSharedMemoryRegisterResponse {
        throw Self.unimplemented("SystemSharedMemoryRegister")
    }
    func systemSharedMemoryUnregister(request: Inference_SystemSharedMemoryUnregisterRequest, context: ServerContext) async throws -> Inference_SystemSharedMemoryUnregisterResponse {
        throw Self.unimplemented("SystemSharedMemoryUnregister")
    }
    func cudaSharedMemoryStatus(request: Inference_CudaSharedMemoryStatusRequest, context: ServerContext) async throws -> Inference_CudaSharedMemoryStatusResponse {
        throw Self.unimplemented("CudaSharedMemoryStatus")
    }
    func cudaSharedMemoryRegister(request: Inference_CudaSharedMemoryRegisterRequest, context: ServerContext) async throws -> Inference_CudaSharedMemoryRegisterResponse {
        throw Self.unimplemented("CudaSharedMemoryRegister")
    }
    func cudaSharedMemoryUnregister(request: Inference_CudaSharedMemoryUnregisterRequest, context: ServerContext) async throws -> Inference_CudaSharedMemoryUnregisterResponse {
        throw Self.unimplemented("CudaSharedMemoryUnregister")
    }
    func traceSetting(request: Inference_TraceSettingRequest, context: ServerContext) async throws -> Inference_TraceSettingResponse {
        throw Self.unimplemented("TraceSetting")
    }
    func logSettings(request: Inference_LogSettingsRequest, context: ServerContext) async throws -> Inference_LogSettingsResponse {
        throw Self.unimplemented("LogSettings")
    }
}

/// The gRPC server as a service of the serve command's service group: it stops taking new
/// RPCs on graceful shutdown and lets running ones finish.
package struct KServeGRPCServer: Service {
    let server: GRPCServer<HTTP2ServerTransport.Posix>

    package init(context: ServingContext, host: String, port: Int, logger: Logger) {
        let address: GRPCNIOTransportCore.SocketAddress = host.contains(":") ? .ipv6(host: host, port: port)
            : .ipv4(host: host == "localhost" ? "127.0.0.1" : host, port: port)
        let limit = context.configuration.maxTensorRequestBytes
        let transport = HTTP2ServerTransport.Posix(address: address, transportSecurity: .plaintext,
                                                   config: .defaults { $0.rpc.maxRequestPayloadSize = limit })
        server = GRPCServer(transport: transport, services: [KServeGRPCService(context: context, logger: logger)],
                            interceptors: [GRPCAuthenticationInterceptor(policy: APIKeyPolicy(key: context.configuration.apiKey), logger: logger)])
    }

    /// The bound address's port once listening (for port 0).
    package func listeningPort() async throws -> Int? {
        let address = try await server.listeningAddress
        return address?.ipv4?.port ?? address?.ipv6?.port
    }

    package func run() async throws {
        try await withGracefulShutdownHandler {
            try await server.serve()
        } onGracefulShutdown: {
            server.beginGracefulShutdown()
        }
    }
}
