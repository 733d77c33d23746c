import Engine
import Adapters
import Formats
import Foundation
import HTTPTypes
import Hummingbird
import Loading
import NIOCore
import Sampling
import Tensors

/// Triton's KServe v2 protocol over HTTP with the models of TensorRT-LLM's Triton model
/// repository: `tensorrt_llm` (token ids in and out) and `ensemble` (text in and out),
/// each taking TensorRT-LLM's per-request LoRA tensors (`lora_task_id`, and with the first
/// request of a task `lora_weights` + `lora_config`). Inference goes through the same
/// typed request and engine as the OpenAI routes.
struct KServeRoutes {
    let context: ServingContext

    struct TensorSpec {
        var name: String
        var datatype: String
        var dims: [Int]
        var optional = true
    }

    /// The inputs and outputs of Triton's TensorRT-LLM models (dims without the batch
    /// dimension; `max_batch_size` is set, so clients send `[1, ...]`).
    static let models: [String: (inputs: [TensorSpec], outputs: [TensorSpec])] = [
        "tensorrt_llm": (
            inputs: [
                .init(name: "input_ids", datatype: "INT32", dims: [-1], optional: false),
                .init(name: "input_lengths", datatype: "INT32", dims: [1]),
                .init(name: "request_output_len", datatype: "INT32", dims: [1], optional: false),
                .init(name: "end_id", datatype: "INT32", dims: [1]), .init(name: "pad_id", datatype: "INT32", dims: [1]),
                .init(name: "beam_width", datatype: "INT32", dims: [1]), .init(name: "temperature", datatype: "FP32", dims: [1]),
                .init(name: "runtime_top_k", datatype: "INT32", dims: [1]), .init(name: "runtime_top_p", datatype: "FP32", dims: [1]),
                .init(name: "repetition_penalty", datatype: "FP32", dims: [1]), .init(name: "min_length", datatype: "INT32", dims: [1]),
                .init(name: "presence_penalty", datatype: "FP32", dims: [1]), .init(name: "frequency_penalty", datatype: "FP32", dims: [1]),
                .init(name: "random_seed", datatype: "UINT64", dims: [1]), .init(name: "streaming", datatype: "BOOL", dims: [1]),
                .init(name: "stop_words_list", datatype: "INT32", dims: [2, -1]), .init(name: "bad_words_list", datatype: "INT32", dims: [2, -1]),
                .init(name: "exclude_input_in_output", datatype: "BOOL", dims: [1]), .init(name: "return_log_probs", datatype: "BOOL", dims: [1]),
                .init(name: "lora_task_id", datatype: "UINT64", dims: [1]), .init(name: "lora_weights", datatype: "FP16", dims: [-1, -1]),
                .init(name: "lora_config", datatype: "INT32", dims: [-1, 3]),
            ],
            outputs: [.init(name: "output_ids", datatype: "INT32", dims: [-1, -1]), .init(name: "sequence_length", datatype: "INT32", dims: [-1])]),
        "ensemble": (
            inputs: [
                .init(name: "text_input", datatype: "BYTES", dims: [-1], optional: false),
                .init(name: "max_tokens", datatype: "INT32", dims: [-1], optional: false),
                .init(name: "bad_words", datatype: "BYTES", dims: [-1]), .init(name: "stop_words", datatype: "BYTES", dims: [-1]),
                .init(name: "end_id", datatype: "INT32", dims: [1]), .init(name: "pad_id", datatype: "INT32", dims: [1]),
                .init(name: "top_k", datatype: "INT32", dims: [1]), .init(name: "top_p", datatype: "FP32", dims: [1]),
                .init(name: "temperature", datatype: "FP32", dims: [1]), .init(name: "length_penalty", datatype: "FP32", dims: [1]),
                .init(name: "repetition_penalty", datatype: "FP32", dims: [1]), .init(name: "min_length", datatype: "INT32", dims: [1]),
                .init(name: "presence_penalty", datatype: "FP32", dims: [1]), .init(name: "frequency_penalty", datatype: "FP32", dims: [1]),
                .init(name: "random_seed", datatype: "UINT64", dims: [1]), .init(name: "return_log_probs", datatype: "BOOL", dims: [1]),
                .init(name: "beam_width", datatype: "INT32", dims: [1]), .init(name: "stream", datatype: "BOOL", dims: [1]),
                .init(name: "lora_task_id", datatype: "UINT64", dims: [1]), .init(name: "lora_weights", datatype: "FP16", dims: [-1, -1]),
                .init(name: "lora_config", datatype: "INT32", dims: [-1, 3]),
            ],
            outputs: [.init(name: "text_output", datatype: "BYTES", dims: [-1])]),
    ]

    /// The liveness and readiness probes, open whatever the API key.
    static func registerProbes<C: RequestContext>(on v2: RouterGroup<C>) {
        v2.get("health/live") { _, _ in Response(status: .ok) }
        v2.get("health/ready") { _, _ in Response(status: .ok) }
    }

    /// Registers the routes on `v2`, the `/v2` group.
    func register<C: RequestContext>(on v2: RouterGroup<C>) {
        v2.get("models/stats") { _, _ in try handle { try statistics(Self.models.keys.sorted()) } }
        // The model repository extension's index (both models are always loaded and ready).
        v2.post("repository/index") { _, _ in
            try handle { try jsonResponse(Self.models.keys.sorted().map { ["name": $0, "version": "1", "state": "READY"] }) }
        }
        for prefix in ["models/:model", "models/:model/versions/:version"] {
            v2.get(RouterPath(stringLiteral: prefix)) { _, ctx in try handle { try metadata(try model(ctx)) } }
            v2.get(RouterPath(stringLiteral: prefix + "/ready")) { _, ctx in try handle { _ = try model(ctx); return Response(status: .ok) } }
            v2.get(RouterPath(stringLiteral: prefix + "/config")) { _, ctx in try handle { try config(try model(ctx)) } }
            v2.get(RouterPath(stringLiteral: prefix + "/stats")) { _, ctx in try handle { try statistics([try model(ctx)]) } }
            v2.post(RouterPath(stringLiteral: prefix + "/infer")) { request, ctx in
                try await handleAsync { try await infer(request, ctx, model: try model(ctx)) }
            }
            v2.post(RouterPath(stringLiteral: prefix + "/generate")) { request, ctx in
                try await handleAsync { try await generate(request, ctx, model: try model(ctx), stream: false) }
            }
            v2.post(RouterPath(stringLiteral: prefix + "/generate_stream")) { request, ctx in
                try await handleAsync { try await generate(request, ctx, model: try model(ctx), stream: true) }
            }
        }
    }

    /// Triton's statistics extension: per model, requests that succeeded and failed with
    /// their total time (each request is one inference and one execution here).
    func statistics(_ names: [String]) throws -> Response {
        try jsonResponse(["model_stats": names.map { name -> [String: Any] in
            let s = context.kserveStatistics.snapshot(name)
            return ["name": name, "version": "1", "last_inference": s.lastMilliseconds, "inference_count": s.success,
                    "execution_count": s.success,
                    "inference_stats": ["success": ["count": s.success, "ns": s.successNanoseconds],
                                        "fail": ["count": s.fail, "ns": s.failNanoseconds]]]
        }])
    }

    func model(_ ctx: some RequestContext) throws -> String {
        try Self.model(ctx.parameters.get("model") ?? "", version: ctx.parameters.get("version") ?? "")
    }

    /// The model a request names (HTTP path or gRPC field); version "" or "1".
    static func model(_ name: String, version: String) throws -> String {
        guard models[name] != nil else {
            throw KServeError("Request for unknown model: '\(name)' is not found (models: ensemble, tensorrt_llm)", status: 404)
        }
        guard version.isEmpty || version == "1" else {
            throw KServeError("Request for unknown model: '\(name)' version \(version) is not found (version: 1)", status: 404)
        }
        return name
    }

    func handle(_ body: () throws -> Response) throws -> Response {
        do { return try body() } catch { return try Self.errorResponse(error) }
    }

    func handleAsync(_ body: () async throws -> Response) async throws -> Response {
        do { return try await body() } catch { return try Self.errorResponse(error) }
    }

    /// KServe's `{"error": "..."}` for the errors a route throws (others propagate).
    static func errorResponse(_ error: any Error) throws -> Response {
        switch error {
        case let e as KServeError: return errorResponse(e)
        case let e as FacetError: return errorResponse(KServeError(e.description, status: APIError.from(e).status.code))
        case let e as APIError: return errorResponse(KServeError(e.message, status: e.status.code))
        default: throw error
        }
    }

    static func errorResponse(_ e: KServeError) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: ["error": e.message])) ?? Data()
        return Response(status: .init(code: e.status), headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    // MARK: - Metadata

    func metadata(_ name: String) throws -> Response {
        let m = Self.models[name]!
        func spec(_ t: TensorSpec) -> [String: Any] { ["name": t.name, "datatype": t.datatype, "shape": [-1] + t.dims] }
        return try jsonResponse(["name": name, "versions": ["1"], "platform": name == "ensemble" ? "ensemble" : "tensorrt_llm",
                                 "inputs": m.inputs.map(spec), "outputs": m.outputs.map(spec)])
    }

    func config(_ name: String) throws -> Response {
        let m = Self.models[name]!
        func spec(_ t: TensorSpec, input: Bool) -> [String: Any] {
            var o: [String: Any] = ["name": t.name, "data_type": "TYPE_" + (t.datatype == "BYTES" ? "STRING" : t.datatype), "dims": t.dims]
            if input { o["optional"] = t.optional }
            return o
        }
        var c: [String: Any] = ["name": name, "max_batch_size": 64, "input": m.inputs.map { spec($0, input: true) },
                                "output": m.outputs.map { spec($0, input: false) }]
        if name == "ensemble" { c["platform"] = "ensemble" } else {
            c["backend"] = "tensorrtllm"
            c["model_transaction_policy"] = ["decoupled": false]
        }
        return try jsonResponse(c)
    }

    // MARK: - Inference

    struct Decoded {
        var inputs: [String: KServeTensor]
        var id: String?
        var requestedOutputs: [(name: String, binary: Bool)]
        var binaryOutput: Bool
    }

    /// The JSON header and the binary tensors after it.
    func decode(_ data: Data, headerLength: Int?, model: String) throws -> Decoded {
        let jsonLength = headerLength ?? data.count
        guard jsonLength >= 0, jsonLength <= data.count else {
            throw KServeError("Inference-Header-Content-Length \(jsonLength) exceeds the \(data.count)-byte body")
        }
        let header: [String: Any]
        do {
            guard let h = try JSONSerialization.jsonObject(with: data.prefix(jsonLength)) as? [String: Any] else {
                throw KServeError("the inference request must be a JSON object")
            }
            header = h
        } catch let e as KServeError { throw e } catch {
            throw KServeError("the inference request is not valid JSON: \(error.localizedDescription)")
        }
        guard let rawInputs = header["inputs"] as? [[String: Any]] else { throw KServeError("the request has no 'inputs'") }
        var offset = jsonLength
        var inputs: [String: KServeTensor] = [:]
        let known = Set(Self.models[model]!.inputs.map(\.name))
        try data.withUnsafeBytes { raw in
            for object in rawInputs {
                var binary: UnsafeRawBufferPointer?
                if let params = object["parameters"] as? [String: Any], let sizeValue = params["binary_data_size"] {
                    guard let size = Checked.jsonInt(sizeValue), size >= 0, size <= raw.count - offset else {
                        throw KServeError("input '\(object["name"] ?? "?")': binary_data_size runs past the end of the body")
                    }
                    binary = UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + size)])
                    offset += size
                }
                let t = try KServeTensor.decode(object, binary: binary)
                guard known.contains(t.name) else {
                    throw KServeError("unexpected inference input '\(t.name)' for model '\(model)' (it would be ignored; the model's inputs are \(known.sorted().joined(separator: ", ")))")
                }
                guard inputs[t.name] == nil else { throw KServeError("input '\(t.name)' is given twice") }
                inputs[t.name] = t
            }
        }
        guard offset == data.count else { throw KServeError("\(data.count - offset) bytes after the last binary input belong to no input") }
        var requested: [(String, Bool)] = []
        let parameters = header["parameters"] as? [String: Any] ?? [:]
        let binaryAll = (parameters["binary_data_output"] as? Bool) ?? false
        let outputs = Set(Self.models[model]!.outputs.map(\.name))
        for o in header["outputs"] as? [[String: Any]] ?? [] {
            guard let name = o["name"] as? String, outputs.contains(name) else {
                throw KServeError("unexpected inference output '\(o["name"] ?? "?")' for model '\(model)' (outputs: \(outputs.sorted().joined(separator: ", ")))")
            }
            let binary = ((o["parameters"] as? [String: Any])?["binary_data"] as? Bool) ?? binaryAll
            requested.append((name, binary))
        }
        return Decoded(inputs: inputs, id: header["id"] as? String, requestedOutputs: requested, binaryOutput: binaryAll)
    }

    /// The typed request and the adapter of a KServe request.
    /// `streaming` is the request's `streaming` (tensorrt_llm) or `stream` (ensemble) flag: a
    /// transport without decoupled responses refuses it.
    func request(_ d: Decoded, model: String) throws -> (InferenceRequest, String?, promptIDs: [Int32]?, streaming: Bool) {
        let i = d.inputs
        func required(_ name: String) throws -> KServeTensor {
            guard let t = i[name] else { throw KServeError("input '\(name)' is required by model '\(model)'") }
            return t
        }
        var r: InferenceRequest
        var promptIDs: [Int32]?
        var streaming = false
        var p = SamplingParameters()
        p.temperature = 1
        if model == "tensorrt_llm" {
            var ids = try required("input_ids").ints()
            if let lengths = i["input_lengths"] {
                let n = Int(try lengths.scalarInt(in: 1...Int64(Int32.max)))
                guard n <= ids.count else { throw KServeError("input_lengths \(n) does not fit the \(ids.count) input_ids") }
                ids = Array(ids.prefix(n))
            }
            let tokens = try ids.map { v -> Int32 in
                guard let t = Int32(exactly: v), t >= 0 else { throw KServeError("input_ids holds \(v), not a token id") }
                return t
            }
            promptIDs = tokens
            r = InferenceRequest(prompts: [.tokens(tokens)])
            r.maxTokens = Int(try required("request_output_len").scalarInt(in: 0...Self.int32Max))
            p.topK = Int(try i["runtime_top_k"]?.scalarInt(in: 0...Self.int32Max) ?? 0)
            p.topP = Float(try i["runtime_top_p"]?.scalarFloat() ?? 0)
            streaming = try i["streaming"]?.scalarBool() ?? false
            r.badWordIDs = try Self.wordList(i["bad_words_list"])
            p.stopTokenSequences = try Self.wordList(i["stop_words_list"])
        } else {
            let texts = try required("text_input").strings()
            guard texts.count == 1 else { throw KServeError("text_input must hold one prompt (a batch of 1), found \(texts.count)") }
            r = InferenceRequest(prompts: [.text(texts[0])])
            let maxTokens = try required("max_tokens").ints()
            guard maxTokens.count == 1 else { throw KServeError("max_tokens must hold one value") }
            guard (0...Self.int32Max).contains(maxTokens[0]) else {
                throw KServeError("input 'max_tokens' must be between 0 and \(Self.int32Max), got \(maxTokens[0])")
            }
            r.maxTokens = Int(maxTokens[0])
            p.topK = Int(try i["top_k"]?.scalarInt(in: 0...Self.int32Max) ?? 0)
            p.topP = Float(try i["top_p"]?.scalarFloat() ?? 0)
            streaming = try i["stream"]?.scalarBool() ?? false
            r.badWords = try i["bad_words"]?.strings().flatMap(Self.words) ?? []
            p.stop = try i["stop_words"]?.strings().flatMap(Self.words) ?? []
        }
        // TensorRT-LLM: top_k 0 and top_p 0 (their defaults) mean greedy; top_p 0 is "off".
        if p.topK == 0 && p.topP == 0 { p.topK = 1 }
        guard p.topK >= 0 else { throw KServeError("top_k must be >= 0, got \(p.topK)") }
        if let t = i["temperature"] { p.temperature = Float(try t.scalarFloat()) }
        if let rp = i["repetition_penalty"] { p.repetitionPenalty = Float(try rp.scalarFloat()) }
        if let s = i["random_seed"] { p.seed = UInt64(bitPattern: try s.scalarInt()) }
        // pad_id only pads TensorRT-LLM's output tensors (Facet's are never padded): checked, unused.
        if let pad = i["pad_id"] { _ = try pad.scalarInt(in: -1...Self.int32Max) }
        if let e = i["end_id"] {
            let end = Int(try e.scalarInt(in: -1...Self.int32Max))
            // -1: no end token at all (generate request_output_len tokens, as ignore_eos).
            if end >= 0 { r.stopTokenIDs.append(end) } else { p.ignoreEOS = true }
        }
        for (name, neutral) in [("presence_penalty", 0.0), ("frequency_penalty", 0.0), ("length_penalty", 1.0)] {
            if let t = i[name], try t.scalarFloat() != neutral {
                throw KServeError("'\(name)' is not supported (it would be ignored); leave it out or at \(neutral)")
            }
        }
        if let m = i["min_length"], try m.scalarInt(in: 0...Self.int32Max) > 1 { throw KServeError("'min_length' is not supported (it would be ignored)") }
        if let b = i["beam_width"], try b.scalarInt(in: 1...Self.int32Max) != 1 { throw KServeError("only beam_width 1 is supported (Facet samples one beam)") }
        if let l = i["return_log_probs"], try l.scalarBool() { throw KServeError("'return_log_probs' is not supported yet") }
        r.sampling = p
        let adapter = try loraAdapter(i)
        r.adapter = adapter
        return (r, adapter, promptIDs, streaming)
    }

    static let int32Max = Int64(Int32.max)

    /// TensorRT-LLM's word list `[1, 2, N]`: flattened ids, then end offsets (padded with -1).
    static func wordList(_ t: KServeTensor?) throws -> [[Int32]] {
        guard let t else { return [] }
        let v = try t.ints()
        guard v.count % 2 == 0 else { throw KServeError("'\(t.name)' must have shape [1, 2, N]") }
        let n = v.count / 2
        let ids = v.prefix(n), offsets = v.suffix(n)
        var words: [[Int32]] = []
        var start = 0
        var padded = false
        for o in offsets {
            // Offsets rise strictly up to N, then -1 pads the rest.
            if o == -1 { padded = true; continue }
            guard !padded, o > start, o <= n else {
                throw KServeError("'\(t.name)' has an end offset \(o) after \(start): offsets must rise to at most \(n), then -1 pads (shape [1, 2, N])")
            }
            let end = Int(o)
            words.append(try ids[ids.startIndex + start..<ids.startIndex + end].map { v in
                guard let t = Int32(exactly: v), t >= 0 else { throw KServeError("'\(t.name)' holds \(v), not a token id") }
                return t
            })
            start = end
        }
        return words
    }

    /// The ensemble's comma-separated word lists ("a, b" per element).
    static func words(_ s: String) -> [String] {
        s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// TensorRT-LLM's LoRA cache semantics: `lora_task_id` names the adapter; the first
    /// request of a task also sends `lora_weights` + `lora_config`, later ones only the id;
    /// an id whose weights were never sent (or were evicted) is an error asking for them.
    /// Weights sent without an id (TensorRT-LLM's first LoRA clients sent them with every
    /// request) are cached by their content, so repeating them costs no new conversion.
    func loraAdapter(_ i: [String: KServeTensor]) throws -> String? {
        let weights = i["lora_weights"], config = i["lora_config"]
        guard weights == nil || config != nil, config == nil || weights != nil else {
            throw KServeError("lora_weights and lora_config must be sent together")
        }
        guard let idTensor = i["lora_task_id"] else {
            guard let weights, let config else { return nil }
            let name = "lora-weights-" + (try Self.contentHash(weights, config))
            if context.store.entry(name)?.adapter == nil {
                try register(name: name, weights: weights, config: config, label: "the LoRA weights", transient: true)
            }
            return name
        }
        let raw = try idTensor.scalarInt()
        // TensorRT-LLM's ids are uint64: a negative value in a signed tensor is no task.
        guard raw >= 0 || idTensor.datatype == "UINT64" else {
            throw KServeError("input 'lora_task_id' must be a task id of 0 or more (UINT64), found \(raw); "
                              + "leave lora_task_id out for the base model")
        }
        let taskID = UInt64(bitPattern: raw)
        let name = "lora-task-\(taskID)"
        if let weights, let config {
            let served = context.configuration.taskAdapterNames
            let repoints = taskID < served.count && context.store.entry(name) == nil
            do {
                try register(name: name, weights: weights, config: config, label: "LoRA task \(taskID)")
                if repoints {
                    context.logger.notice("lora_task_id \(taskID) now names the weights sent with a request, no longer the --lora adapter \(served[Int(taskID)])")
                } else {
                    context.logger.info("lora_task_id \(taskID) registered from the request's lora_weights")
                }
            } catch let e as FacetError where e.field == "lora_name" {
                // The same id with other weights: TensorRT-LLM would keep serving the cached
                // ones without a word; say so instead.
                throw KServeError("LoRA task \(taskID) is already cached with other weights; send other weights under a new "
                                  + "lora_task_id, or the id alone to use the cached ones (\(e.message))")
            }
        } else if context.store.entry(name) == nil {
            // Adapters served from the start (`--lora NAME=PATH`) are tasks 0, 1, ... in order.
            let served = context.configuration.taskAdapterNames
            if taskID < served.count, context.store.entry(served[Int(taskID)]) != nil { return served[Int(taskID)] }
            context.store.cacheMisses.add(1)
            throw KServeError("LoRA task \(taskID) not found in cache. Please send LoRA weights with request")
        }
        return name
    }

    /// Checks TensorRT-LLM's arrays against the base and registers them as `name`.
    func register(name: String, weights: KServeTensor, config: KServeTensor, label: String, transient: Bool = false) throws {
        func npy(_ t: KServeTensor, _ kind: NpyArray.Kind) throws -> NpyArray { NpyArray(shape: t.shape, kind: kind, values: try t.floats()) }
        let adapter: LoRAAdapter
        do {
            adapter = try TensorRTLoRA.adapter(weights: try npy(weights, .f32), config: try npy(config, .i32), name: name,
                                               base: context.model.config)
        } catch let e as FacetError {
            throw KServeError("\(label): " + e.description)
        }
        try context.store.register(name: name, adapter: adapter, transient: transient)
    }

    /// The first 16 hex digits of SHA-256 over the arrays' shapes and values.
    static func contentHash(_ tensors: KServeTensor...) throws -> String {
        var sha = SHA256()
        for t in tensors {
            sha.update(Array("\(t.shape)".utf8))
            for v in try t.floats() { withUnsafeBytes(of: v.bitPattern.littleEndian) { sha.update($0) } }
        }
        let digest = sha.finalize()
        return digest.prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    func infer(_ request: Request, _ ctx: some RequestContext, model: String) async throws -> Response {
        let body = try await OpenAIRoutes(context: context).readBody(request, ctx, limit: context.configuration.maxTensorRequestBytes)
        let headerLength = request.headers[HTTPField.Name("Inference-Header-Content-Length")!].flatMap { Int($0) }
        let decoded = try decode(body, headerLength: headerLength, model: model)
        let (typed, _, promptIDs, streaming) = try self.request(decoded, model: model)
        if streaming { throw Self.streamingRefused(model) }
        let result = try await run(typed, model: model)
        let outputs = try Self.outputs(model: model, tokens: result.tokens, text: result.text, promptIDs: promptIDs, decoded: decoded)
        let wanted = decoded.requestedOutputs.isEmpty ? outputs.map { ($0.name, decoded.binaryOutput) } : decoded.requestedOutputs
        var json: [[String: Any]] = []
        var blobs: [UInt8] = []
        for (name, binary) in wanted {
            guard let o = outputs.first(where: { $0.name == name }) else { continue }
            if binary {
                let data = o.binaryData()
                json.append(o.json(binarySize: data.count))
                blobs += data
            } else {
                json.append(o.json(binarySize: nil))
            }
        }
        var header: [String: Any] = ["model_name": model, "model_version": "1", "outputs": json]
        if let id = decoded.id { header["id"] = id }
        let headerData = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        var buffer = ByteBuffer(bytes: headerData)
        var headers: HTTPFields = [.contentType: blobs.isEmpty ? "application/json" : "application/octet-stream"]
        if !blobs.isEmpty {
            buffer.writeBytes(blobs)
            headers[HTTPField.Name("Inference-Header-Content-Length")!] = String(headerData.count)
        }
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: buffer))
    }

    static func streamingRefused(_ model: String) -> KServeError {
        KServeError("'\(model == "ensemble" ? "stream" : "streaming")' needs decoupled responses: use /v2/models/\(model)/generate_stream, or gRPC's ModelStreamInfer")
    }

    /// The output tensors of a finished request (or of one streamed piece): `output_ids`
    /// `[1, 1, len]` (the prompt first unless `exclude_input_in_output`, as TensorRT-LLM) and
    /// `sequence_length`, or the ensemble's `text_output`.
    static func outputs(model: String, tokens: [Int32], text: String, promptIDs: [Int32]?, decoded: Decoded) throws -> [KServeOutput] {
        if model == "tensorrt_llm" {
            let excludeInput = try decoded.inputs["exclude_input_in_output"].map { try $0.scalarBool() } ?? false
            let ids = (excludeInput ? [] : promptIDs ?? []) + tokens
            return [KServeOutput(name: "output_ids", datatype: "INT32", shape: [1, 1, ids.count], ints: ids),
                    KServeOutput(name: "sequence_length", datatype: "INT32", shape: [1, 1], ints: [Int32(ids.count)])]
        }
        return [KServeOutput(name: "text_output", datatype: "BYTES", shape: [1, 1], strings: [text])]
    }

    struct RunResult {
        var tokens: [Int32] = []
        var text = ""
    }

    /// Runs one typed request on the engine (one sequence), calling `onToken` per token with
    /// its id and text (empty while a multi-token character is incomplete).
    func run(_ typed: InferenceRequest, model: String, onToken: (Int32, String) async throws -> Void = { _, _ in }) async throws -> RunResult {
        let begin = ContinuousClock.now
        do {
            let result = try await runEngine(typed, onToken: onToken)
            context.kserveStatistics.record(model: model, since: begin, ok: true)
            return result
        } catch {
            context.kserveStatistics.record(model: model, since: begin, ok: false)
            throw error
        }
    }

    func runEngine(_ typed: InferenceRequest, onToken: (Int32, String) async throws -> Void) async throws -> RunResult {
        let prepared = try context.requestBuilder().prepare(typed)
        guard let ticket = InFlightTicket(count: 1, pending: context.pending, limit: context.configuration.maxPendingRequests,
                                          engine: context.engine) else {
            throw KServeError("the server is at capacity (\(context.configuration.maxPendingRequests) requests in flight); retry shortly", status: 429)
        }
        defer { ticket.release() }
        let stream = try context.submit(EngineRequest(promptIDs: prepared.prompts[0], parameters: prepared.parameters),
                                        adapter: prepared.adapter, ticket: ticket)
        context.metrics.request(model: prepared.adapter ?? context.configuration.servedModelName)
        var result = RunResult()
        // TensorRT-LLM ends a sequence at its end id without returning it (its sequence
        // length stops before it), so the end token is not an output token here either.
        let ends = prepared.parameters.ignoreEOS ? [] : Set(prepared.parameters.stopTokenIDs.map { Int32($0) })
        for try await event in stream {
            if case .token(let token, let text, _) = event {
                if ends.contains(token) { continue }
                result.tokens.append(token)
                result.text += text
                try await onToken(token, text)
            }
        }
        return result
    }

    /// The generate extension: inputs as JSON fields with scalar values; `generate_stream`
    /// answers Server-Sent Events, one per piece of text.
    func generate(_ request: Request, _ ctx: some RequestContext, model: String, stream: Bool) async throws -> Response {
        let body = try await OpenAIRoutes(context: context).readBody(request, ctx, limit: context.configuration.maxTensorRequestBytes)
        guard let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] else {
            throw KServeError("the generate request must be a JSON object")
        }
        let specs = Dictionary(uniqueKeysWithValues: Self.models[model]!.inputs.map { ($0.name, $0) })
        var inputs: [[String: Any]] = []
        for (key, value) in object where key != "parameters" && key != "id" {
            guard let spec = specs[key] else {
                throw KServeError("unexpected inference input '\(key)' for model '\(model)' (it would be ignored)")
            }
            var flat: [Any] = []
            KServeTensor.flatten(value, into: &flat)
            let datatype = spec.datatype == "FP16" ? "FP32" : spec.datatype
            var shape = [1, flat.count]
            if key == "lora_weights" || key == "lora_config" || key == "stop_words_list" || key == "bad_words_list",
               let rows = value as? [[Any]] {
                shape = [1, rows.count, rows.first?.count ?? 0]
            }
            inputs.append(["name": key, "datatype": datatype, "shape": shape, "data": flat])
        }
        let header = try JSONSerialization.data(withJSONObject: ["inputs": inputs])
        var decoded = try decode(header, headerLength: nil, model: model)
        if stream { decoded.inputs["stream"] = nil; decoded.inputs["streaming"] = nil }
        let (typed, _, _, streaming) = try self.request(decoded, model: model)
        if streaming && !stream { throw Self.streamingRefused(model) }
        if !stream {
            let result = try await run(typed, model: model)
            var out: [String: Any] = ["model_name": model, "model_version": "1"]
            if model == "ensemble" { out["text_output"] = result.text } else {
                out["output_ids"] = result.tokens.map(Int.init)
                out["sequence_length"] = result.tokens.count
            }
            return try jsonResponse(out)
        }
        let routes = self
        let body2 = ResponseBody { writer in
            func send(_ object: [String: Any]) async throws {
                try await writer.write(try serverSentEvent(object))
            }
            do {
                _ = try await routes.run(typed, model: model) { _, text in
                    guard !text.isEmpty else { return }
                    try await send(["model_name": model, "model_version": "1", "text_output": text])
                }
            } catch let e as KServeError {
                try await send(["error": e.message])
            } catch let e as FacetError {
                try await send(["error": e.description])
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body2)
    }
}

/// Per-model request counts and times of the KServe routes (HTTP and gRPC), for Triton's
/// statistics extension (`/v2/models/{m}/stats`, `ModelStatistics`).
package final class KServeStatistics: @unchecked Sendable {
    struct Model {
        var success: UInt64 = 0
        var successNanoseconds: UInt64 = 0
        var fail: UInt64 = 0
        var failNanoseconds: UInt64 = 0
        var lastMilliseconds: UInt64 = 0
    }

    private let lock = NSLock()
    private var models: [String: Model] = [:]

    func record(model: String, since begin: ContinuousClock.Instant, ok: Bool) {
        let d = ContinuousClock.now - begin
        let ns = UInt64(max(0, d.components.seconds)) &* 1_000_000_000 &+ UInt64(max(0, d.components.attoseconds / 1_000_000_000))
        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        lock.withLock {
            var m = models[model] ?? Model()
            if ok {
                m.success &+= 1
                m.successNanoseconds &+= ns
            } else {
                m.fail &+= 1
                m.failNanoseconds &+= ns
            }
            m.lastMilliseconds = now
            models[model] = m
        }
    }

    func snapshot(_ model: String) -> Model { lock.withLock { models[model] ?? Model() } }
}
