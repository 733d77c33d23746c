import Foundation
import Tensors

/// A token the tokenizer matches verbatim in text before any splitting (special and added
/// tokens such as `<|im_end|>`).
package struct AddedToken: Sendable, Equatable {
    package var content: String
    package var id: Int32
    package var special: Bool
    package var lstrip: Bool = false
    package var rstrip: Bool = false
    package init(content: String, id: Int32, special: Bool, lstrip: Bool = false, rstrip: Bool = false) {
        self.content = content
        self.id = id
        self.special = special
        self.lstrip = lstrip
        self.rstrip = rstrip
    }
}

package enum NormalizerStep: Sendable, Equatable {
    case prepend(String)
    case replace(String, String)
    case nfc, nfkc, nfd, nfkd, lowercase
}

package enum DecoderStep: Sendable, Equatable {
    /// Byte-level tokens: characters map back to bytes.
    case byteLevel
    /// `<0xAB>` tokens are the byte 0xAB.
    case byteFallback
    case replace(String, String)
    /// Removes up to `start` leading and `stop` trailing copies of `content` (whole text).
    case strip(content: Character, start: Int, stop: Int)
    /// Metaspace: the replacement char becomes a space, the first one dropped if prefixed.
    case metaspace(replacement: String, prependFirst: Bool)
    case fuse
}

/// A byte-pair-encoding tokenizer (byte-level as in GPT-2 / Llama 3 / SmolLM2, or
/// SentencePiece-style with byte fallback as in Llama 2), built from tokenizer.json or from
/// a GGUF file's embedded vocabulary.
package final class Tokenizer: @unchecked Sendable {
    package let vocabulary: [String: Int32]
    package let tokens: [String]                  // id -> token string
    package let addedTokens: [AddedToken]
    let merges: [UInt64: (rank: Int32, id: Int32)]
    let normalizer: [NormalizerStep]
    let preTokenizer: [PreTokenizerStep]
    let decoderSteps: [DecoderStep]
    let byteFallback: Bool
    let unknownID: Int32?
    let ignoreMerges: Bool
    /// Ids added before/after a single sequence when special tokens are requested.
    package let prefixIDs: [Int32]
    package let suffixIDs: [Int32]
    package let bosID: Int32?
    package let eosIDs: [Int32]
    package let chatTemplate: String?
    /// Named special tokens of the chat template (bos_token, eos_token, ...).
    package let templateTokens: [String: String]

    let specialIDs: Set<Int32>
    let byteTokenIDs: [Int32?]                   // byte -> <0xXX> token id
    let isByteLevel: Bool
    /// The most input bytes one token can stand for (see `minimumTokenCount`).
    package let maxInputBytesPerToken: Int
    private let cacheLock = NSLock()
    private var cache: [String: [Int32]] = [:]
    /// The chat template, parsed once on first use (see `parsedChatTemplate`).
    private let templateLock = NSLock()
    private var parsedTemplate: Result<ChatTemplate, FacetError>?

    /// The chat template parsed once per tokenizer (a parse error is kept and rethrown).
    package func parsedChatTemplate() throws -> ChatTemplate {
        guard let source = chatTemplate else {
            throw FacetError(.notFound, "the tokenizer has no chat template", field: "chat_template",
                             remedy: "drop --chat, or use a tokenizer_config.json with a chat_template")
        }
        let result: Result<ChatTemplate, FacetError> = templateLock.withLock {
            if let parsedTemplate { return parsedTemplate }
            let r: Result<ChatTemplate, FacetError>
            do {
                r = .success(try ChatTemplate(source))
            } catch let e as FacetError {
                r = .failure(e)
            } catch {
                r = .failure(FacetError(.invalidConfig, "chat template: \(error)", field: "chat_template"))
            }
            parsedTemplate = r
            return r
        }
        return try result.get()
    }

    package init(
        tokens: [String], merges: [(String, String)], addedTokens: [AddedToken], normalizer: [NormalizerStep],
        preTokenizer: [PreTokenizerStep], decoder: [DecoderStep], byteFallback: Bool, unknownToken: String?,
        ignoreMerges: Bool = false, prefixIDs: [Int32] = [], suffixIDs: [Int32] = [], bosID: Int32?, eosIDs: [Int32],
        chatTemplate: String?, templateTokens: [String: String] = [:], source: String
    ) throws {
        var vocab: [String: Int32] = [:]
        vocab.reserveCapacity(tokens.count)
        var table = tokens
        for (i, t) in tokens.enumerated() where vocab[t] == nil { vocab[t] = Int32(i) }
        for a in addedTokens {
            guard a.id >= 0 else { throw FacetError(.invalidFile, "added token \(a.content) has a negative id", file: source) }
            if Int(a.id) >= table.count { table += Array(repeating: "", count: Int(a.id) - table.count + 1) }
            if table[Int(a.id)].isEmpty { table[Int(a.id)] = a.content }
            if vocab[a.content] == nil { vocab[a.content] = a.id }
        }
        var m: [UInt64: (Int32, Int32)] = [:]
        m.reserveCapacity(merges.count)
        for (rank, (a, b)) in merges.enumerated() {
            guard let ia = vocab[a], let ib = vocab[b], let merged = vocab[a + b] else {
                throw FacetError(.invalidFile, "merge \"\(a) \(b)\" (rank \(rank)) uses tokens missing from the vocabulary",
                                 file: source, field: "model.merges", remedy: "the tokenizer file is corrupt or mismatched")
            }
            let key = UInt64(UInt32(bitPattern: ia)) << 32 | UInt64(UInt32(bitPattern: ib))
            if m[key] == nil { m[key] = (Int32(rank), merged) }
        }
        self.vocabulary = vocab
        self.tokens = table
        self.addedTokens = addedTokens.sorted { $0.content.utf8.count > $1.content.utf8.count }
        self.merges = m.mapValues { (rank: $0.0, id: $0.1) }
        self.normalizer = normalizer
        self.preTokenizer = preTokenizer
        self.decoderSteps = decoder
        self.byteFallback = byteFallback
        self.unknownID = unknownToken.flatMap { vocab[$0] }
        self.ignoreMerges = ignoreMerges
        self.prefixIDs = prefixIDs
        self.suffixIDs = suffixIDs
        self.bosID = bosID
        self.eosIDs = eosIDs
        self.chatTemplate = chatTemplate
        self.templateTokens = templateTokens
        self.specialIDs = Set(addedTokens.filter(\.special).map(\.id))
        self.byteTokenIDs = (0..<256).map { vocab[String(format: "<0x%02X>", $0)] }
        // A token covers at most its own UTF-8 length of normalized text (byte-level
        // characters, "▁" and "<0xAB>" each stand for fewer bytes than they take); Unicode
        // normalization may shrink the input (composition, compatibility forms) by a small
        // factor, and a replacement by its length ratio.
        var perToken = max(1, table.map(\.utf8.count).max() ?? 1, addedTokens.map(\.content.utf8.count).max() ?? 1)
        for step in normalizer {
            switch step {
            case .nfc, .nfkc, .nfd, .nfkd, .lowercase: perToken = perToken.multipliedReportingOverflow(by: 4).partialValue
            case .replace(let a, let b):
                let ratio = (a.utf8.count + max(1, b.utf8.count) - 1) / max(1, b.utf8.count)
                perToken = perToken.multipliedReportingOverflow(by: max(1, ratio)).partialValue
            case .prepend: break
            }
        }
        self.maxInputBytesPerToken = max(1, min(perToken, 1 << 30))
        self.isByteLevel = preTokenizer.contains { if case .byteLevel = $0 { true } else { false } } || decoder.contains(.byteLevel)
    }

    package var vocabularySize: Int { tokens.count }

    package func isSpecial(_ id: Int32) -> Bool { specialIDs.contains(id) }

    package func id(of token: String) -> Int32? { vocabulary[token] }

    // MARK: - Encoding

    /// Token ids of `text`. `addSpecialTokens` adds the post-processor's tokens (e.g. BOS).
    package func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int32] {
        var ids: [Int32] = addSpecialTokens ? prefixIDs : []
        for (n, segment) in splitOnAddedTokens(text).enumerated() {
            switch segment {
            case .added(let id): ids.append(id)
            case .text(let t): ids.append(contentsOf: encodeOrdinary(t, firstSegment: n == 0))
            }
        }
        if addSpecialTokens { ids.append(contentsOf: suffixIDs) }
        return ids
    }

    enum Segment { case text(String), added(Int32) }

    /// Leftmost-longest matching of added tokens; text between them is ordinary.
    func splitOnAddedTokens(_ text: String) -> [Segment] {
        guard !addedTokens.isEmpty, !text.isEmpty else { return text.isEmpty ? [] : [.text(text)] }
        let bytes = Array(text.utf8)
        let candidates = addedTokens.map { (Array($0.content.utf8), $0) }.filter { !$0.0.isEmpty }
        var segments: [Segment] = []
        var start = 0, i = 0
        func flush(_ end: Int) {
            if end > start { segments.append(.text(String(decoding: bytes[start..<end], as: UTF8.self))) }
        }
        while i < bytes.count {
            var matched: (Int, AddedToken)?
            for (pattern, token) in candidates where pattern.count <= bytes.count - i && pattern[0] == bytes[i] {
                if bytes[i..<(i + pattern.count)].elementsEqual(pattern) {
                    matched = (pattern.count, token)
                    break  // sorted longest first
                }
            }
            guard let (length, token) = matched else {
                i += 1
                continue
            }
            var end = i
            if token.lstrip { while end > start && bytes[end - 1] == 0x20 { end -= 1 } }
            flush(end)
            segments.append(.added(token.id))
            i += length
            if token.rstrip { while i < bytes.count && bytes[i] == 0x20 { i += 1 } }
            start = i
        }
        flush(bytes.count)
        return segments
    }

    func normalize(_ text: String) -> String {
        var s = text
        for step in normalizer {
            switch step {
            case .prepend(let p): s = p + s
            case .replace(let a, let b): s = s.replacingOccurrences(of: a, with: b)
            case .nfc: s = s.precomposedStringWithCanonicalMapping
            case .nfkc: s = s.precomposedStringWithCompatibilityMapping
            case .nfd: s = s.decomposedStringWithCanonicalMapping
            case .nfkd: s = s.decomposedStringWithCompatibilityMapping
            case .lowercase: s = s.lowercased()
            }
        }
        return s
    }

    func preTokenize(_ text: String, firstSegment: Bool) -> [String] {
        var pieces = [text]
        for step in preTokenizer {
            var next: [String] = []
            for piece in pieces {
                let scalars = Array(piece.unicodeScalars)
                func sub(_ r: Range<Int>) -> String {
                    var v = String.UnicodeScalarView()
                    v.append(contentsOf: scalars[r])
                    return String(v)
                }
                switch step {
                case .byteLevel(let addPrefixSpace, let useRegex):
                    var input = scalars
                    if addPrefixSpace, let first = input.first, first != " " { input.insert(" ", at: 0) }
                    let ranges = useRegex ? SplitPattern.gpt2.split(input) : [0..<input.count]
                    for r in ranges {
                        var v = String.UnicodeScalarView()
                        v.append(contentsOf: input[r])
                        next.append(ByteMap.encode(String(v).utf8))
                    }
                case .split(let pattern):
                    next.append(contentsOf: pattern.split(scalars).map(sub))
                case .digits(let individual):
                    var i = 0
                    var start = 0
                    while i < scalars.count {
                        if CharClass.isNumber(scalars[i]) {
                            if i > start { next.append(sub(start..<i)) }
                            var j = i + 1
                            if !individual { while j < scalars.count && CharClass.isNumber(scalars[j]) { j += 1 } }
                            next.append(sub(i..<j))
                            i = j
                            start = j
                        } else {
                            i += 1
                        }
                    }
                    if start < scalars.count { next.append(sub(start..<scalars.count)) }
                case .metaspace(let replacement, let prependFirst, let split):
                    var s = piece.replacingOccurrences(of: " ", with: replacement)
                    if prependFirst && firstSegment && !s.hasPrefix(replacement) { s = replacement + s }
                    if split {
                        // Split before each replacement char, keeping it with the following word.
                        var current = ""
                        for ch in s {
                            if String(ch) == replacement && !current.isEmpty {
                                next.append(current)
                                current = ""
                            }
                            current.append(ch)
                        }
                        if !current.isEmpty { next.append(current) }
                    } else {
                        next.append(s)
                    }
                case .whitespaceSplit:
                    next.append(contentsOf: piece.split(whereSeparator: { $0.isWhitespace }).map(String.init))
                }
            }
            pieces = next.filter { !$0.isEmpty }
        }
        return pieces
    }

    func encodeOrdinary(_ text: String, firstSegment: Bool) -> [Int32] {
        (try? encodeOrdinary(text, firstSegment: firstSegment, produced: 0, limit: nil)) ?? []
    }

    /// With a `limit`: stops with `TokenLimitExceeded` once `produced` plus the ids so far
    /// pass it, and with `CancellationError` when the calling task is cancelled (checked
    /// every 64 words). Without one it never throws.
    func encodeOrdinary(_ text: String, firstSegment: Bool, produced: Int, limit: Int?) throws -> [Int32] {
        let normalized = normalize(text)
        var ids: [Int32] = []
        for (n, word) in preTokenize(normalized, firstSegment: firstSegment).enumerated() {
            if let limit {
                if produced + ids.count > limit { throw TokenLimitExceeded(limit: limit) }
                if n & 63 == 0 && Task.isCancelled { throw CancellationError() }
            }
            cacheLock.lock()
            let cached = cache[word]
            cacheLock.unlock()
            if let cached {
                ids.append(contentsOf: cached)
                continue
            }
            let encoded = bpe(word)
            // Long words (a pasted blob) are not worth keeping: they would fill the cache.
            if word.utf8.count <= 256 {
                cacheLock.lock()
                if cache.count > 100_000 { cache.removeAll(keepingCapacity: true) }
                cache[word] = encoded
                cacheLock.unlock()
            }
            ids.append(contentsOf: encoded)
        }
        return ids
    }

    /// Byte-pair merges over one word: start from characters (unknown characters become
    /// byte tokens or `unk`), then repeatedly merge the adjacent pair of lowest rank,
    /// leftmost first.
    func bpe(_ word: String) -> [Int32] {
        if ignoreMerges, let id = vocabulary[word] { return [id] }
        var symbols: [Int32] = []
        for ch in word {
            let s = String(ch)
            if let id = vocabulary[s] {
                symbols.append(id)
                continue
            }
            // Characters can be several scalars; try them one by one before falling back.
            var handled = true
            var parts: [Int32] = []
            for scalar in ch.unicodeScalars {
                if let id = vocabulary[String(scalar)] { parts.append(id) } else { handled = false; break }
            }
            if handled {
                symbols.append(contentsOf: parts)
            } else if byteFallback {
                for b in s.utf8 {
                    if let id = byteTokenIDs[Int(b)] { symbols.append(id) } else if let unk = unknownID { symbols.append(unk) }
                }
            } else if let unk = unknownID {
                symbols.append(unk)
            }
        }
        return merge(symbols)
    }

    /// Applies the merges to a word's symbols: the adjacent pair of lowest rank first,
    /// leftmost among equals, until none applies. Short words by the direct loop
    /// (`mergeByScan`), long ones through a heap in O(n log n) (`mergeByHeap`): the same ids.
    package func merge(_ symbols: [Int32]) -> [Int32] {
        symbols.count <= 64 ? mergeByScan(symbols) : mergeByHeap(symbols)
    }

    /// The reference: scan every pair for the lowest rank, merge it, repeat (O(n^2)).
    package func mergeByScan(_ input: [Int32]) -> [Int32] {
        var symbols = input
        while symbols.count > 1 {
            var bestRank = Int32.max
            var bestIndex = -1
            var bestID: Int32 = 0
            for i in 0..<(symbols.count - 1) {
                let key = UInt64(UInt32(bitPattern: symbols[i])) << 32 | UInt64(UInt32(bitPattern: symbols[i + 1]))
                if let m = merges[key], m.rank < bestRank {
                    bestRank = m.rank
                    bestIndex = i
                    bestID = m.id
                }
            }
            if bestIndex < 0 { break }
            symbols[bestIndex] = bestID
            symbols.remove(at: bestIndex + 1)
        }
        return symbols
    }

    // MARK: - Decoding

    /// The bytes a token contributes to decoded text. `first` marks the first token of a
    /// decode, where SentencePiece-style decoders drop the prefix space (HF's Metaspace
    /// decoder drops every replacement character of that token).
    package func bytes(of id: Int32, first: Bool = false) -> [UInt8] {
        guard id >= 0, Int(id) < tokens.count else { return [] }
        let token = tokens[Int(id)]
        if decoderSteps.contains(.byteFallback), token.utf8.count == 6, token.hasPrefix("<0x"), token.hasSuffix(">"),
           let b = UInt8(token.dropFirst(3).prefix(2), radix: 16) {
            return [b]
        }
        if specialIDs.contains(id) || addedTokens.contains(where: { $0.id == id }) { return Array(token.utf8) }
        if isByteLevel {
            var out: [UInt8] = []
            for s in token.unicodeScalars {
                if let b = ByteMap.scalarToByte[s.value] { out.append(b) } else { out.append(contentsOf: String(s).utf8) }
            }
            return out
        }
        var text = token
        for step in decoderSteps {
            switch step {
            case .replace(let a, let b): text = text.replacingOccurrences(of: a, with: b)
            case .metaspace(let r, let prependFirst):
                text = text.replacingOccurrences(of: r, with: first && prependFirst ? "" : " ")
            case .strip(let c, let start, _) where first && start > 0:
                var n = 0
                while n < start, text.first == c {
                    text.removeFirst()
                    n += 1
                }
            default: break
            }
        }
        return Array(text.utf8)
    }

    /// Text of `ids`. Invalid UTF-8 is replaced by U+FFFD, as Hugging Face does.
    package func decode(_ ids: [Int32], skipSpecialTokens: Bool = false) -> String {
        var out: [UInt8] = []
        var first = true
        for id in ids {
            if skipSpecialTokens && specialIDs.contains(id) { continue }
            out.append(contentsOf: bytes(of: id, first: first))
            first = false
        }
        return String(decoding: out, as: UTF8.self)
    }

}
