import Foundation
import Tensors

/// Builds a `Tokenizer` from Hugging Face `tokenizer.json` (and, when present,
/// `tokenizer_config.json` for the chat template and named special tokens).
/// Every component type we do not implement is refused by name.
extension Tokenizer {
    package static func fromHuggingFace(tokenizerJSON: Data, tokenizerConfig: Data? = nil, chatTemplate: String? = nil,
                                       source: String) throws -> Tokenizer {
        func bad(_ field: String, _ message: String) -> FacetError {
            FacetError(.invalidFile, message, file: source, field: field, remedy: "the tokenizer.json is corrupt or from an unsupported tokenizer")
        }
        func unsupported(_ field: String, _ type: String) -> FacetError {
            FacetError(.unsupported, "component type \(type) is not supported", file: source, field: field,
                       remedy: "Facet supports BPE tokenizers (byte-level and SentencePiece-style)")
        }
        let root: [String: Any]
        do {
            guard let r = try JSONSerialization.jsonObject(with: tokenizerJSON) as? [String: Any] else { throw bad("", "not a JSON object") }
            root = r
        } catch let e as FacetError { throw e } catch {
            throw bad("", "not valid JSON (\(error.localizedDescription))")
        }
        guard let model = root["model"] as? [String: Any] else { throw bad("model", "missing") }
        let modelType = model["type"] as? String ?? (model["merges"] != nil ? "BPE" : "?")
        guard modelType == "BPE" else { throw unsupported("model.type", modelType) }
        guard let vocab = model["vocab"] as? [String: Any] else { throw bad("model.vocab", "missing or not an object") }
        var maxID = -1
        var pairs: [(String, Int)] = []
        pairs.reserveCapacity(vocab.count)
        for (token, value) in vocab {
            guard let id = Checked.jsonInt(value as Any), id >= 0, id < 10_000_000 else { throw bad("model.vocab", "id of \(token) is not a valid integer") }
            pairs.append((token, id))
            maxID = max(maxID, id)
        }
        var added: [AddedToken] = []
        for item in root["added_tokens"] as? [[String: Any]] ?? [] {
            guard let content = item["content"] as? String, let rawID = Checked.jsonInt(item["id"] as Any), rawID >= 0, rawID < 10_000_000, let id = Int32(exactly: rawID) else {
                throw bad("added_tokens", "entry without content or a valid id (0 to 9,999,999)")
            }
            added.append(AddedToken(content: content, id: Int32(id), special: item["special"] as? Bool ?? false,
                                    lstrip: item["lstrip"] as? Bool ?? false, rstrip: item["rstrip"] as? Bool ?? false))
            maxID = max(maxID, rawID)
        }
        var tokens = [String](repeating: "", count: maxID + 1)
        for (t, id) in pairs { tokens[id] = t }
        var merges: [(String, String)] = []
        for (i, m) in (model["merges"] as? [Any] ?? []).enumerated() {
            if let s = m as? String {
                let parts = s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw bad("model.merges[\(i)]", "\"\(s)\" is not two tokens") }
                merges.append((String(parts[0]), String(parts[1])))
            } else if let a = m as? [String], a.count == 2 {
                merges.append((a[0], a[1]))
            } else {
                throw bad("model.merges[\(i)]", "is neither \"a b\" nor [a, b]")
            }
        }

        // Normalizer.
        func normalizers(_ any: Any?, _ field: String) throws -> [NormalizerStep] {
            guard let n = any as? [String: Any] else { return [] }
            let type = n["type"] as? String ?? "?"
            switch type {
            case "Sequence":
                return try (n["normalizers"] as? [Any] ?? []).enumerated().flatMap { try normalizers($1, "\(field).normalizers[\($0)]") }
            case "Prepend": return [.prepend(n["prepend"] as? String ?? "")]
            case "Replace":
                guard let pattern = (n["pattern"] as? [String: Any])?["String"] as? String else { throw unsupported(field + ".pattern", "Regex") }
                return [.replace(pattern, n["content"] as? String ?? "")]
            case "NFC": return [.nfc]
            case "NFKC": return [.nfkc]
            case "NFD": return [.nfd]
            case "NFKD": return [.nfkd]
            case "Lowercase": return [.lowercase]
            default: throw unsupported(field, type)
            }
        }
        // Pre-tokenizer.
        func preTokenizers(_ any: Any?, _ field: String) throws -> [PreTokenizerStep] {
            guard let p = any as? [String: Any] else { return [] }
            let type = p["type"] as? String ?? "?"
            switch type {
            case "Sequence":
                return try (p["pretokenizers"] as? [Any] ?? []).enumerated().flatMap { try preTokenizers($1, "\(field).pretokenizers[\($0)]") }
            case "ByteLevel":
                return [.byteLevel(addPrefixSpace: p["add_prefix_space"] as? Bool ?? false, useRegex: p["use_regex"] as? Bool ?? true)]
            case "Digits":
                return [.digits(individual: p["individual_digits"] as? Bool ?? false)]
            case "Split":
                let pattern = p["pattern"] as? [String: Any]
                guard let regex = pattern?["Regex"] as? String, let known = SplitPattern.recognize(regex) else {
                    throw FacetError(.unsupported, "split pattern \(pattern.map { "\($0)" } ?? "?") is not one Facet implements",
                                     file: source, field: field, remedy: "Facet knows the GPT-2, Llama 3 and Qwen2 split patterns")
                }
                let behavior = p["behavior"] as? String ?? "Isolated"
                guard behavior == "Isolated", (p["invert"] as? Bool ?? false) == false else { throw unsupported(field + ".behavior", behavior) }
                return [.split(known)]
            case "Metaspace":
                let replacement = p["replacement"] as? String ?? "▁"
                let scheme = p["prepend_scheme"] as? String ?? ((p["add_prefix_space"] as? Bool ?? true) ? "always" : "never")
                return [.metaspace(replacement: replacement, prependFirst: scheme != "never", split: p["split"] as? Bool ?? true)]
            case "WhitespaceSplit": return [.whitespaceSplit]
            default: throw unsupported(field, type)
            }
        }
        func decoders(_ any: Any?, _ field: String) throws -> [DecoderStep] {
            guard let d = any as? [String: Any] else { return [] }
            let type = d["type"] as? String ?? "?"
            switch type {
            case "Sequence":
                return try (d["decoders"] as? [Any] ?? []).enumerated().flatMap { try decoders($1, "\(field).decoders[\($0)]") }
            case "ByteLevel": return [.byteLevel]
            case "ByteFallback": return [.byteFallback]
            case "Fuse": return [.fuse]
            case "Replace":
                guard let pattern = (d["pattern"] as? [String: Any])?["String"] as? String else { throw unsupported(field + ".pattern", "Regex") }
                return [.replace(pattern, d["content"] as? String ?? "")]
            case "Strip":
                let content = (d["content"] as? String)?.first ?? " "
                return [.strip(content: content, start: Checked.jsonInt(d["start"] as Any) ?? 0, stop: Checked.jsonInt(d["stop"] as Any) ?? 0)]
            case "Metaspace":
                let scheme = d["prepend_scheme"] as? String ?? ((d["add_prefix_space"] as? Bool ?? true) ? "always" : "never")
                return [.metaspace(replacement: d["replacement"] as? String ?? "▁", prependFirst: scheme != "never")]
            default: throw unsupported(field, type)
            }
        }
        let vocabLookup = Dictionary(pairs, uniquingKeysWith: { a, _ in a }).merging(added.map { ($0.content, Int($0.id)) }, uniquingKeysWith: { a, _ in a })
        func postProcessor(_ any: Any?, _ field: String) throws -> ([Int32], [Int32]) {
            guard let p = any as? [String: Any] else { return ([], []) }
            let type = p["type"] as? String ?? "?"
            switch type {
            case "ByteLevel": return ([], [])
            case "Sequence":
                var prefix: [Int32] = [], suffix: [Int32] = []
                for (i, proc) in (p["processors"] as? [Any] ?? []).enumerated() {
                    let (a, b) = try postProcessor(proc, "\(field).processors[\(i)]")
                    prefix += a
                    suffix += b
                }
                return (prefix, suffix)
            case "TemplateProcessing":
                let specials = p["special_tokens"] as? [String: Any] ?? [:]
                var prefix: [Int32] = [], suffix: [Int32] = []
                var seenSequence = false
                for item in p["single"] as? [[String: Any]] ?? [] {
                    if item["Sequence"] != nil { seenSequence = true; continue }
                    guard let special = item["SpecialToken"] as? [String: Any], let name = special["id"] as? String else { continue }
                    var ids: [Int32] = []
                    if let entry = specials[name] as? [String: Any], let list = entry["ids"] as? [Any] {
                        ids = list.compactMap { Checked.jsonInt($0).flatMap { Int32(exactly: $0) } }
                    } else if let id = vocabLookup[name] {
                        ids = [Int32(id)]
                    } else {
                        throw bad(field + ".special_tokens", "token \(name) has no id")
                    }
                    if seenSequence { suffix += ids } else { prefix += ids }
                }
                return (prefix, suffix)
            case "RobertaProcessing", "BertProcessing":
                func tok(_ key: String) -> [Int32] {
                    guard let pair = p[key] as? [Any], pair.count == 2, let id = Checked.jsonInt(pair[1]), let id = Int32(exactly: id) else { return [] }
                    return [Int32(id)]
                }
                return (tok("cls"), tok("sep"))
            default: throw unsupported(field, type)
            }
        }

        // tokenizer_config.json: chat template and named special tokens.
        var template = chatTemplate
        var named: [String: String] = [:]
        if let configData = tokenizerConfig {
            guard let config = try? JSONSerialization.jsonObject(with: configData) as? [String: Any] else {
                throw FacetError(.invalidFile, "tokenizer_config.json is not a JSON object", file: source, remedy: "fix or remove the file")
            }
            if template == nil {
                if let t = config["chat_template"] as? String {
                    template = t
                } else if let list = config["chat_template"] as? [[String: Any]] {
                    template = (list.first { $0["name"] as? String == "default" } ?? list.first)?["template"] as? String
                }
            }
            for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
                if let s = config[key] as? String { named[key] = s } else if let d = config[key] as? [String: Any], let s = d["content"] as? String { named[key] = s }
            }
        }
        let (prefix, suffix) = try postProcessor(root["post_processor"], "post_processor")
        func idOf(_ s: String?) -> Int32? { s.flatMap { vocabLookup[$0] }.map(Int32.init) }
        return try Tokenizer(
            tokens: tokens, merges: merges, addedTokens: added,
            normalizer: try normalizers(root["normalizer"], "normalizer"),
            preTokenizer: try preTokenizers(root["pre_tokenizer"], "pre_tokenizer"),
            decoder: try decoders(root["decoder"], "decoder"),
            byteFallback: model["byte_fallback"] as? Bool ?? false, unknownToken: model["unk_token"] as? String,
            ignoreMerges: model["ignore_merges"] as? Bool ?? false, prefixIDs: prefix, suffixIDs: suffix,
            bosID: idOf(named["bos_token"]), eosIDs: idOf(named["eos_token"]).map { [$0] } ?? [],
            chatTemplate: template, templateTokens: named, source: source)
    }
}
