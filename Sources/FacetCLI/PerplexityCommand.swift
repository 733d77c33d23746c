import Adapters
import ArgumentParser
import Engine
import Foundation
import Loading
import Sampling
import Scheduling
import Tensors

/// `facet perplexity FILE`: the perplexity of a text as llama.cpp's `llama-perplexity`
/// measures it, so the two agree on the same GGUF and text: the text is cut into chunks of
/// `--ctx-size` tokens (BOS replacing each chunk's first token when the model adds one);
/// each chunk is scored on its second half (every token there predicted from at least
/// ctx/2 tokens of context); the estimate is exp(mean negative log-likelihood) with the
/// standard error of that mean carried through the exponential.
struct PerplexityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Perplexity of a text file (as llama-perplexity computes it), for the base model or an adapter.")

    @OptionGroup var modelOptions: ModelOptions
    @Argument(help: "A UTF-8 text file (e.g. wiki.test.raw).") var file: String
    @Option(name: [.customShort("c"), .customLong("ctx-size")], help: "Tokens per chunk (llama-perplexity's -c).") var ctxSize = 512
    @Option(name: .customLong("chunks"), help: "Score at most this many chunks (default: all).") var chunks: Int?
    @Option(name: [.customLong("lora_dir"), .customLong("lora-dir")], help: "An adapter to score with (PEFT or TensorRT-LLM form).")
    var loraDir: String?
    @Option(name: .customLong("kv-cache-memory"), help: "Bytes of KV cache (chunks are scored several at a time).") var kvCacheMemory = "512MB"

    func validate() throws {
        guard ctxSize >= 4 else { throw ValidationError("--ctx-size must be at least 4") }
        if let chunks, chunks < 1 { throw ValidationError("--chunks must be positive") }
    }

    func run() async throws {
        do {
            try await measure()
        } catch let e as FacetError {
            FileHandle.standardError.write(Data("error: \(e.description)\n".utf8))
            throw ExitCode(2)
        }
    }

    func measure() async throws {
        let (model, loadedTokenizer) = try modelOptions.load(tokenizerRequired: true)
        guard let tokenizer = loadedTokenizer else { return }
        guard let data = FileManager.default.contents(atPath: file) else {
            throw FacetError(.notFound, "cannot read the text file", file: file, remedy: "check the path")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw FacetError(.invalidArgument, "the file is not UTF-8 text", file: file, remedy: "convert it to UTF-8")
        }
        let tokens = tokenizer.encode(text, addSpecialTokens: true)
        let bos = tokenizer.prefixIDs.first
        var count = tokens.count / ctxSize
        if let chunks { count = min(count, chunks) }
        guard count >= 1 else {
            throw FacetError(.invalidArgument, "the text has \(tokens.count) tokens, fewer than one chunk of \(ctxSize)", file: file,
                             remedy: "use a longer text or a smaller --ctx-size")
        }
        guard ctxSize <= model.config.maxPositionEmbeddings else {
            throw FacetError(.invalidArgument, "--ctx-size \(ctxSize) exceeds the model's context of \(model.config.maxPositionEmbeddings)",
                             field: "ctx-size")
        }
        let kvBytes = try ByteSize.parse(kvCacheMemory, field: "kv-cache-memory")
        let store = AdapterStore(base: model.config, baseEmbedding: model.weights.embedding, budgetBytes: 1 << 40, maxRank: nil, root: nil,
                                 precision: modelOptions.loraPrecision)
        var lease: AdapterStore.Lease?
        if let loraDir {
            try store.register(name: "adapter", path: loraDir)
            lease = try store.acquire("adapter")
        }
        let limits = SchedulerLimits(maxBatchSize: 8, maxNumTokens: max(512, ctxSize), maxLoras: 1, maxModelLength: ctxSize)
        let engine = try InferenceEngine(model: model, tokenizer: tokenizer,
                                         configuration: EngineConfiguration(limits: limits, blockSize: 16, kvCacheBytes: kvBytes),
                                         adapterStore: store)
        engine.start()
        defer { engine.shutdown() }
        FileHandle.standardError.write(Data("[facet] perplexity: \(tokens.count) tokens, \(count) chunks of \(ctxSize), scoring the second half of each\n".utf8))

        // Every chunk is one request asking for its prompt's log-probabilities (and no
        // generated token); chunks run batched, and each one's numbers are the same alone.
        let first = ctxSize / 2
        var parameters = SamplingParameters()
        parameters.maxTokens = 0
        let start = Date()
        let perChunk: [[Double]] = try await withThrowingTaskGroup(of: (Int, [Double]).self) { group in
            for c in 0..<count {
                var ids = Array(tokens[(c * ctxSize)..<((c + 1) * ctxSize)])
                if let bos { ids[0] = bos }
                var request = EngineRequest(promptIDs: ids, parameters: parameters, adapter: lease)
                request.promptLogprobs = 0
                let stream = try engine.submit(request)
                group.addTask {
                    var nll: [Double] = []
                    for try await event in stream {
                        // Index i is token i predicted from tokens 0..<i; llama-perplexity
                        // scores the tokens after position `first`.
                        if case .promptLogprob(let index, let lp) = event, index > first {
                            nll.append(-Double(lp.logprob))
                        }
                    }
                    return (c, nll)
                }
            }
            var out = [[Double]](repeating: [], count: count)
            for try await (c, nll) in group { out[c] = nll }
            return out
        }
        if let lease { store.release(lease) }

        var sum = 0.0, sumSquares = 0.0, n = 0
        var line = ""
        for (c, nll) in perChunk.enumerated() {
            guard nll.count == ctxSize - 1 - first else {
                throw FacetError(.io, "chunk \(c) returned \(nll.count) log-probabilities, expected \(ctxSize - 1 - first)", remedy: "report this")
            }
            for v in nll {
                sum += v
                sumSquares += v * v
            }
            n += nll.count
            line += String(format: "[%d]%.4f,", c + 1, exp(sum / Double(n)))
        }
        print(line)
        let mean = sum / Double(n)
        let ppl = exp(mean)
        let variance = sumSquares / Double(n) - mean * mean
        let error = variance > 0 && n > 1 ? sqrt(variance / Double(n - 1)) * ppl : 0
        print(String(format: "Final estimate: PPL = %.4f +/- %.5f", ppl, error))
        FileHandle.standardError.write(Data(String(format: "[facet] %d tokens scored in %.1f s\n", n, Date().timeIntervalSince(start)).utf8))
    }
}
