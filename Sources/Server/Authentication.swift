import Foundation
import GRPCCore
import Hummingbird
import Logging
import Tensors

/// The one authentication policy of every protocol (HTTP `/v1`, `/v2`, the tokenizer routes
/// and KServe gRPC): with a key, a request must carry `authorization: Bearer KEY` (an HTTP
/// header, or gRPC metadata as tritonclient sends `headers=`). Liveness and readiness
/// probes (`/health`, `/v2/health/*`, gRPC `ServerLive`/`ServerReady`) stay open.
package struct APIKeyPolicy: Sendable {
    /// The key's bytes; nil: no authentication.
    let key: [UInt8]?

    package init(key: String?) { self.key = key.map { Array($0.utf8) } }

    package var required: Bool { key != nil }

    /// Whether an `authorization` value carries the key. Constant time in the key's length
    /// (every byte is compared whatever the first difference), so the time taken tells a
    /// prober nothing about how much of a guess was right.
    package func accepts(authorization: String?) -> Bool {
        guard let key else { return true }
        guard let authorization else { return false }
        let given = Array(authorization.utf8)
        let prefix = Array("Bearer ".utf8)
        var difference = given.count == prefix.count + key.count ? 0 : 1
        let expected = prefix + key
        for i in 0..<expected.count {
            difference |= Int(expected[i] ^ (i < given.count ? given[i] : ~expected[i]))
        }
        return difference == 0
    }

    /// The key from `--api-key` or `--api-key-file` (the file's first line, so that the key
    /// stays out of `ps`); both, an empty key or an unreadable file are refused at start.
    package static func key(option: String?, file: String?) throws -> String? {
        if option != nil && file != nil {
            throw FacetError(.invalidArgument, "--api-key and --api-key-file are both given", field: "api-key",
                             remedy: "give the key once (--api-key-file keeps it out of the process list)")
        }
        var key = option
        if let file {
            guard let data = FileManager.default.contents(atPath: file), data.count <= 4096 else {
                throw FacetError(.notFound, "cannot read the API key file (or it is over 4 KiB)", file: file, field: "api-key-file",
                                 remedy: "write the key on the file's first line, readable by this user")
            }
            key = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        }
        if let k = key {
            let trimmed = k.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty else {
                throw FacetError(.invalidArgument, "the API key is empty", field: file == nil ? "api-key" : "api-key-file",
                                 remedy: "give a non-empty key, or leave the option out to serve without one")
            }
            key = trimmed
        }
        return key
    }
}

struct APIKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let policy: APIKeyPolicy
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard policy.accepts(authorization: request.headers[.authorization]) else {
            throw APIError(status: .unauthorized, message: "invalid or missing API key (send Authorization: Bearer KEY)",
                           type: "invalid_request_error", param: nil, code: "invalid_api_key")
        }
        return try await next(request, context)
    }
}

/// gRPC's side of the policy, and its request log: every RPC is logged at info with its
/// method, peer, status and time, as the HTTP routes log theirs.
struct GRPCAuthenticationInterceptor: ServerInterceptor {
    let policy: APIKeyPolicy
    let logger: Logger
    /// Probes answered without a key (the gRPC twins of /v2/health/live and /ready).
    static let open: Set<String> = ["ServerLive", "ServerReady"]

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>, context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        let method = context.descriptor.method
        let begin = ContinuousClock.now
        let logger = self.logger
        let peer = context.remotePeer
        @Sendable func log(_ code: String) {
            let ms = (ContinuousClock.now - begin).components
            let elapsed = Double(ms.seconds) * 1000 + Double(ms.attoseconds) / 1e15
            logger.info("gRPC request", metadata: ["method": .string(method), "peer": .string(peer), "status": .string(code),
                                                   "ms": .string(String(format: "%.1f", elapsed))])
        }
        if !Self.open.contains(method) {
            let values = request.metadata[stringValues: "authorization"]
            guard policy.accepts(authorization: values.first(where: { _ in true })) else {
                log("UNAUTHENTICATED")
                return StreamingServerResponse(error: RPCError(code: .unauthenticated,
                    message: "invalid or missing API key (send metadata 'authorization: Bearer KEY'; tritonclient: headers={'authorization': 'Bearer KEY'})"))
            }
        }
        var response: StreamingServerResponse<Output>
        do {
            response = try await next(request, context)
        } catch {
            log("\((error as? RPCError)?.code ?? .unknown)")
            throw error
        }
        switch response.accepted {
        case .failure(let e): log("\(e.code)")
        case .success(var contents):
            let producer = contents.producer
            contents.producer = { writer in
                do {
                    let trailers = try await producer(writer)
                    log("OK")
                    return trailers
                } catch {
                    log("\((error as? RPCError)?.code ?? .unknown)")
                    throw error
                }
            }
            response.accepted = .success(contents)
        }
        return response
    }
}
