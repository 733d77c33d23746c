import Foundation
import Hummingbird
import NIOCore
import Tensors

/// An error in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}`.
/// The only place an error becomes an HTTP response.
struct APIError: Error, HTTPResponseError {
    var status: HTTPResponse.Status
    var message: String
    var type: String
    var param: String?
    var code: String?

    static func badRequest(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: .badRequest, message: message, type: "invalid_request_error", param: param, code: code)
    }

    static func from(_ error: any Error) -> APIError {
        if let e = error as? APIError { return e }
        if let e = error as? FacetError {
            let text = e.description
            switch e.code {
            case .notFound where e.field == "model":
                return APIError(status: .notFound, message: text, type: "invalid_request_error", param: "model", code: "model_not_found")
            case .notFound:
                return APIError(status: .notFound, message: text, type: "invalid_request_error", param: e.field, code: "not_found")
            case .capacity where e.field == "max_tokens" || e.field == "prompt" || e.field == "messages":
                return APIError(status: .badRequest, message: text, type: "invalid_request_error", param: e.field, code: "context_length_exceeded")
            case .capacity:
                return APIError(status: .serviceUnavailable, message: text, type: "server_error", param: e.field, code: "overloaded")
            case .io:
                return APIError(status: .internalServerError, message: text, type: "server_error", param: nil, code: nil)
            default:
                return APIError(status: .badRequest, message: text, type: "invalid_request_error", param: e.field, code: nil)
            }
        }
        return APIError(status: .internalServerError, message: "internal error: \(error)", type: "server_error", param: nil, code: nil)
    }

    var json: [String: Any] {
        ["error": ["message": message, "type": type, "param": param as Any? ?? NSNull(), "code": code as Any? ?? NSNull()]]
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        let data = (try? JSONSerialization.data(withJSONObject: json, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// Typed access to a decoded JSON object; every wrong field is a 400 naming it.
struct JSONObject {
    let values: [String: Any]

    init(_ data: Data) throws {
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw APIError.badRequest("the request body is not valid JSON: \(error.localizedDescription)")
        }
        guard let object = any as? [String: Any] else { throw APIError.badRequest("the request body must be a JSON object") }
        values = object
    }

    init(values: [String: Any]) { self.values = values }

    func has(_ key: String) -> Bool { values[key] != nil && !(values[key] is NSNull) }

    private func wrong(_ key: String, _ expected: String) -> APIError {
        APIError.badRequest("'\(key)' must be \(expected)", param: key)
    }

    func string(_ key: String) throws -> String? {
        guard has(key) else { return nil }
        guard let s = values[key] as? String else { throw wrong(key, "a string") }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard has(key) else { return nil }
        guard let n = values[key] as? NSNumber, String(cString: n.objCType) == "c" else { throw wrong(key, "a boolean") }
        return n.boolValue
    }

    func int(_ key: String) throws -> Int? {
        guard has(key) else { return nil }
        guard let v = Checked.jsonInt(values[key] as Any), v.magnitude < 1 << 53 else { throw wrong(key, "an integer") }
        return v
    }

    func double(_ key: String) throws -> Double? {
        guard has(key) else { return nil }
        guard let n = values[key] as? NSNumber, String(cString: n.objCType) != "c", n.doubleValue.isFinite else { throw wrong(key, "a number") }
        return n.doubleValue
    }

    /// A string or a list of strings (OpenAI's `stop`).
    func strings(_ key: String) throws -> [String]? {
        guard has(key) else { return nil }
        if let s = values[key] as? String { return [s] }
        guard let list = values[key] as? [Any], let strings = list as? [String] else { throw wrong(key, "a string or a list of strings") }
        return strings
    }

    func object(_ key: String) throws -> JSONObject? {
        guard has(key) else { return nil }
        guard let d = values[key] as? [String: Any] else { throw wrong(key, "an object") }
        return JSONObject(values: d)
    }
}
