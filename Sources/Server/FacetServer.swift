import Engine
import Foundation
import Hummingbird
import Llama
import Logging
import NIOCore
import ServiceLifecycle
import Tensors
import Tokenization

package struct ServerConfiguration: Sendable {
    package var host = "127.0.0.1"
    package var port = 8000
    /// Name of the base model in the API (`model` field, `/v1/models`).
    package var servedModelName = "facet"
    package var apiKey: String?
    package var maxRequestBytes = 4 << 20
    /// KServe requests (HTTP and gRPC) carry tensors, LoRA weights among them.
    package var maxTensorRequestBytes = 256 << 20
    /// Adapters served from the start, in order: `lora_task_id` 0, 1, ... name them (as
    /// `facet run`'s `--lora_task_uids` name the `--lora_dir` adapters).
    package var taskAdapterNames: [String] = []
    /// `/v1/models` also lists the adapters under the adapter root that are not loaded yet.
    package var listAdapterRoot = false
    /// The KServe gRPC port (nil: no gRPC server).
    package var grpcPort: Int?
    /// Requests in flight (running + waiting) beyond which new ones get 429.
    package var maxPendingRequests = 256
    /// Parse special-token text inside chat message content as special tokens (off: a user
    /// typing `<|im_end|>` gets those characters, not a turn boundary).
    package var parseSpecialTokensInContent = false
    /// Seconds a client may take to send its whole request body.
    package var requestBodyTimeout: Double = 30
    /// Seconds an idle keep-alive connection (or one stalled mid-request) stays open.
    package var idleTimeout: Double = 60
    package init() {}
}

/// Shared state of the HTTP handlers.
package final class ServingContext: Sendable {
    package let engine: InferenceEngine
    package let store: AdapterStore
    package let metrics: ServerMetrics
    package let configuration: ServerConfiguration
    package let created = Int(Date().timeIntervalSince1970)
    let pending = Atomic()
    let kserveStatistics = KServeStatistics()

    package let logger: Logger

    package init(engine: InferenceEngine, store: AdapterStore, metrics: ServerMetrics, configuration: ServerConfiguration,
                 logger: Logger = Logger(label: "facet")) {
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self.configuration = configuration
        self.logger = logger
        // What the adapter cache does on its own (evictions, failed reloads, changed files)
        // goes to the server's log.
        store.onEvent { message in logger.notice("\(message)") }
    }

    var tokenizer: Tokenizer? { engine.tokenizer }
    var model: LlamaModel { engine.model }

    /// The longest prompt + completion a request may ask for.
    var contextLength: Int { min(engine.configuration.limits.maxModelLength, model.config.maxPositionEmbeddings) }

    /// The one request builder of every protocol: the model's EOS ids, the context length,
    /// the server's special-token setting.
    func requestBuilder() throws -> RequestBuilder {
        guard let tokenizer else {
            throw FacetError(.invalidArgument, "the server has no tokenizer", field: "prompt", remedy: "serve a model with a tokenizer")
        }
        var builder = RequestBuilder(tokenizer: tokenizer, eosTokenIDs: model.config.eosTokenIDs + tokenizer.eosIDs.map(Int.init),
                                     contextLength: contextLength)
        builder.parseSpecialTokensInContent = configuration.parseSpecialTokensInContent
        return builder
    }

    /// Pins `adapter` (nil: the base model) for the request's lifetime and submits it;
    /// `ticket` learns the request so that a vanished client cancels it.
    func submit(_ request: EngineRequest, adapter: String?, ticket: InFlightTicket) throws -> AsyncThrowingStream<EngineEvent, any Error> {
        var request = request
        request.adapter = try adapter.map { try store.acquire($0) }
        do {
            let (id, stream) = try engine.submitTracked(request)
            ticket.track(id)
            return stream
        } catch {
            if let lease = request.adapter { store.release(lease) }
            throw error
        }
    }
}

typealias Atomic = LockedCounter

/// Runs the engine loop for the lifetime of the service group; on graceful shutdown (after
/// the HTTP server has drained), stops it.
struct EngineService: Service {
    let engine: InferenceEngine
    func run() async throws {
        engine.start()
        try? await gracefulShutdown()
        engine.shutdown()
    }
}

package enum FacetServer {
    /// Builds the application: OpenAI-compatible routes, health, metrics.
    package static func makeApplication(context: ServingContext, logger: Logger) -> some ApplicationProtocol {
        let router = Router()
        router.add(middleware: LogRequestsMiddleware(.info))
        router.add(middleware: ErrorCountingMiddleware(metrics: context.metrics))
        // 200 while the server takes requests; 503 while it is at its --max-pending limit, so
        // that a load balancer's health check sends new requests elsewhere until it has room.
        router.get("/health") { _, _ in
            let full = context.pending.current >= context.configuration.maxPendingRequests
            return Response(status: full ? .serviceUnavailable : .ok, headers: [.contentType: "application/json"],
                            body: .init(byteBuffer: ByteBuffer(string: full ? #"{"status":"overloaded"}"# : #"{"status":"ok"}"#)))
        }
        router.get("/metrics") { _, _ in
            context.metrics.adapters(resident: context.store.residentCount, registered: context.store.names.count)
            let text = context.metrics.registry.emitToString() + context.metrics.gatewayText()
                + "# TYPE facet_lora_first_use_loads_total counter\nfacet_lora_first_use_loads_total \(context.store.firstUseLoads.current)\n"
                + context.metrics.adapterCacheText(store: context.store)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        // The playground page (its API calls carry the key when the server has one).
        Playground.register(on: router)
        let policy = APIKeyPolicy(key: context.configuration.apiKey)
        let v1 = router.group("v1").add(middleware: APIKeyMiddleware(policy: policy))
        OpenAIRoutes(context: context).register(on: v1)
        OpenAIRoutes(context: context).registerTokenizerRoutes(on: router.group("").add(middleware: APIKeyMiddleware(policy: policy)))
        // Triton's KServe v2 protocol (HTTP), with TensorRT-LLM's models and LoRA tensors;
        // its liveness and readiness probes stay open, as /health does.
        KServeRoutes.registerProbes(on: router.group("v2"))
        router.group("v2").add(middleware: APIKeyMiddleware(policy: policy)).get("") { _, _ in
            try jsonResponse(["name": "facet", "version": "2.0.0", "extensions": ["binary_tensor_data", "generate", "model_configuration"]])
        }
        KServeRoutes(context: context).register(on: router.group("v2").add(middleware: APIKeyMiddleware(policy: policy)))
        return Application(
            router: router,
            server: .http1(configuration: .init(idleTimeout: .milliseconds(Int64(context.configuration.idleTimeout * 1000)))),
            configuration: .init(address: .hostname(context.configuration.host, port: context.configuration.port), serverName: "facet"),
            services: [EngineService(engine: context.engine)],
            logger: logger)
    }
}

struct ErrorCountingMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ServerMetrics
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            let response = try await next(request, context)
            if response.status.code >= 400 { metrics.failure(status: response.status.code) }
            return response
        } catch {
            // Hummingbird's own errors (no route, bad method) get OpenAI's JSON shape too.
            if let http = error as? HTTPError {
                metrics.failure(status: http.status.code)
                let message = http.status == .notFound ? "no route for \(request.method) \(request.uri.path)" : (http.body ?? http.status.reasonPhrase)
                throw APIError(status: http.status, message: message, type: "invalid_request_error", param: nil,
                               code: http.status == .notFound ? "not_found" : nil)
            }
            let api = APIError.from(error)
            metrics.failure(status: (error as? any HTTPResponseError)?.status.code ?? api.status.code)
            if error is any HTTPResponseError { throw error }
            throw api
        }
    }
}
