import Foundation
import Formats
import Tensors
import Tokenization

/// Finds and builds tokenizers: Hugging Face files in a directory, or the vocabulary
/// embedded in a GGUF file.
package enum TokenizerLoader {
    /// The tokenizer in `directory` (tokenizer.json, with tokenizer_config.json and
    /// chat_template.jinja when present), or nil when it has no tokenizer.json.
    package static func loadHuggingFace(directory: String) throws -> Tokenizer? {
        let fm = FileManager.default
        let path = (directory as NSString).appendingPathComponent("tokenizer.json")
        guard let json = fm.contents(atPath: path) else {
            if fm.fileExists(atPath: (directory as NSString).appendingPathComponent("tokenizer.model")) {
                throw FacetError(.unsupported, "only a SentencePiece tokenizer.model is present", file: directory,
                                 remedy: "save the tokenizer with transformers (AutoTokenizer.save_pretrained) to get tokenizer.json")
            }
            return nil
        }
        let config = fm.contents(atPath: (directory as NSString).appendingPathComponent("tokenizer_config.json"))
        let templatePath = (directory as NSString).appendingPathComponent("chat_template.jinja")
        let template = fm.contents(atPath: templatePath).map { String(decoding: $0, as: UTF8.self) }
        return try Tokenizer.fromHuggingFace(tokenizerJSON: json, tokenizerConfig: config, chatTemplate: template, source: path)
    }

    /// The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    package static func loadGGUF(_ file: GGUFFile) throws -> Tokenizer {
        func bad(_ key: String, _ message: String) -> FacetError {
            FacetError(.invalidFile, message, file: file.path, field: key, remedy: "use a GGUF with an embedded tokenizer, or pass --tokenizer_dir")
        }
        guard let kind = file.string("tokenizer.ggml.model") else { throw bad("tokenizer.ggml.model", "the GGUF has no tokenizer") }
        guard let tokenValues = file.metadata["tokenizer.ggml.tokens"]?.array else { throw bad("tokenizer.ggml.tokens", "missing") }
        let tokens = tokenValues.map { $0.string ?? "" }
        let types = file.metadata["tokenizer.ggml.token_type"]?.array?.map { $0.int ?? 1 } ?? Array(repeating: 1, count: tokens.count)
        guard types.count == tokens.count else { throw bad("tokenizer.ggml.token_type", "has \(types.count) entries for \(tokens.count) tokens") }
        // Token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        var added: [AddedToken] = []
        for (i, t) in types.enumerated() where t == 3 || t == 4 {
            added.append(AddedToken(content: tokens[i], id: Int32(i), special: t == 3))
        }
        let bos = file.int("tokenizer.ggml.bos_token_id").map(Int32.init)
        var eos: [Int32] = []
        if let e = file.int("tokenizer.ggml.eos_token_id") { eos.append(Int32(e)) }
        if let e = file.int("tokenizer.ggml.eot_token_id"), !eos.contains(Int32(e)) { eos.append(Int32(e)) }
        var named: [String: String] = [:]
        if let b = bos, Int(b) < tokens.count { named["bos_token"] = tokens[Int(b)] }
        if let e = eos.first, Int(e) < tokens.count { named["eos_token"] = tokens[Int(e)] }
        let template = file.string("tokenizer.chat_template")
        let unknown = file.int("tokenizer.ggml.unknown_token_id").flatMap { $0 < tokens.count ? tokens[$0] : nil }

        switch kind {
        case "gpt2":
            guard let mergeValues = file.metadata["tokenizer.ggml.merges"]?.array else { throw bad("tokenizer.ggml.merges", "missing") }
            var merges: [(String, String)] = []
            merges.reserveCapacity(mergeValues.count)
            for (i, m) in mergeValues.enumerated() {
                let parts = (m.string ?? "").split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw bad("tokenizer.ggml.merges[\(i)]", "is not two tokens") }
                merges.append((String(parts[0]), String(parts[1])))
            }
            let pre = file.string("tokenizer.ggml.pre") ?? "default"
            let steps: [PreTokenizerStep]
            switch pre {
            case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva":
                steps = [.digits(individual: true), .byteLevel(addPrefixSpace: false, useRegex: true)]
            case "llama3", "llama-bpe", "llama-v3", "falcon3", "pixtral", "tekken", "dbrx", "smaug-bpe":
                steps = [.split(.llama3), .byteLevel(addPrefixSpace: false, useRegex: false)]
            case "qwen2", "deepseek-r1-qwen", "megrez":
                steps = [.split(.qwen2), .byteLevel(addPrefixSpace: false, useRegex: false)]
            case "default", "gpt2", "gpt-2", "olmo", "jais", "mpt", "stablelm2":
                steps = [.byteLevel(addPrefixSpace: false, useRegex: true)]
            default:
                throw FacetError(.unsupported, "pre-tokenizer \"\(pre)\" is not supported", file: file.path, field: "tokenizer.ggml.pre",
                                 remedy: "pass --tokenizer_dir with the model's Hugging Face tokenizer.json")
            }
            let addBOS = file.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? false
            return try Tokenizer(
                tokens: tokens, merges: merges, addedTokens: added, normalizer: [], preTokenizer: steps, decoder: [.byteLevel],
                byteFallback: false, unknownToken: unknown, ignoreMerges: steps.first == .split(.llama3),
                prefixIDs: addBOS ? bos.map { [$0] } ?? [] : [], bosID: bos, eosIDs: eos,
                chatTemplate: template, templateTokens: named, source: file.path)
        case "llama":
            // SentencePiece BPE: the merge of a pair is allowed when the joined piece is in
            // the vocabulary, and higher-scoring pieces merge first.
            let scores = file.metadata["tokenizer.ggml.scores"]?.array?.map { Float($0.double ?? 0) } ?? Array(repeating: 0, count: tokens.count)
            var index: [String: Int] = [:]
            for (i, t) in tokens.enumerated() where types[i] == 1 && index[t] == nil { index[t] = i }
            var candidates: [(score: Float, id: Int, a: String, b: String)] = []
            for (t, id) in index where t.count >= 2 {
                let chars = Array(t)
                for cut in 1..<chars.count {
                    let a = String(chars[..<cut]), b = String(chars[cut...])
                    if index[a] != nil && index[b] != nil { candidates.append((scores[id], id, a, b)) }
                }
            }
            candidates.sort { $0.score > $1.score || ($0.score == $1.score && $0.id < $1.id) }
            let addSpace = file.metadata["tokenizer.ggml.add_space_prefix"]?.bool ?? true
            let addBOS = file.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? true
            return try Tokenizer(
                tokens: tokens, merges: candidates.map { ($0.a, $0.b) }, addedTokens: added,
                normalizer: (addSpace ? [.prepend("▁")] : []) + [.replace(" ", "▁")], preTokenizer: [],
                decoder: [.replace("▁", " "), .byteFallback, .fuse] + (addSpace ? [.strip(content: " ", start: 1, stop: 0)] : []),
                byteFallback: true, unknownToken: unknown, prefixIDs: addBOS ? bos.map { [$0] } ?? [] : [],
                bosID: bos, eosIDs: eos, chatTemplate: template, templateTokens: named, source: file.path)
        default:
            throw FacetError(.unsupported, "tokenizer model \"\(kind)\" is not supported", file: file.path, field: "tokenizer.ggml.model",
                             remedy: "Facet reads gpt2 (byte-level BPE) and llama (SentencePiece) vocabularies; pass --tokenizer_dir")
        }
    }
}
