/// Splitting of text into words before BPE, as Hugging Face `tokenizers` pre-tokenizers do.
///
/// The regular expressions of GPT-2, Llama 3 and Qwen2 are implemented as hand-written
/// scanners over Unicode scalars (with Unicode's White_Space, L* and N* classes), so they do
/// not depend on the platform's regex engine.
package enum SplitPattern: Sendable, Equatable {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case llama3
    /// Llama 3's pattern with single digits (`\p{N}`), as Qwen2 uses.
    case qwen2

    static let gpt2Regex = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let llama3Regex = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Regex = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The scanner for a regex from tokenizer.json, or nil when it is not one we know.
    package static func recognize(_ regex: String) -> SplitPattern? {
        switch regex {
        case gpt2Regex, gpt2Regex + "|\\s+": .gpt2
        case llama3Regex: .llama3
        case qwen2Regex: .qwen2
        default: nil
        }
    }
}

package enum PreTokenizerStep: Sendable, Equatable {
    /// Byte-level: optional regex split, then bytes mapped to printable characters.
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    /// Splits on a pattern, keeping the matches as pieces (`behavior: Isolated`); with
    /// `invert`, the matches are the pieces and the gaps are dropped.
    case split(SplitPattern)
    /// Each digit becomes its own piece (individual) or digit runs do.
    case digits(individual: Bool)
    /// SentencePiece's metaspace: spaces become `replacement`, optionally prefixed.
    case metaspace(replacement: String, prependFirst: Bool, split: Bool)
    /// Splits on whitespace, dropping it (BERT-style `WhitespaceSplit`).
    case whitespaceSplit
}

enum CharClass {
    @inline(__always) static func isLetter(_ s: Unicode.Scalar) -> Bool {
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: true
        default: false
        }
    }
    @inline(__always) static func isNumber(_ s: Unicode.Scalar) -> Bool {
        switch s.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: true
        default: false
        }
    }
    @inline(__always) static func isSpace(_ s: Unicode.Scalar) -> Bool { s.properties.isWhitespace }
    @inline(__always) static func isNewline(_ s: Unicode.Scalar) -> Bool { s == "\r" || s == "\n" }
}

extension SplitPattern {
    /// Splits `text` into consecutive pieces that cover it exactly.
    func split(_ text: [Unicode.Scalar]) -> [Range<Int>] {
        var pieces: [Range<Int>] = []
        var i = 0
        while i < text.count {
            let end = match(text, at: i)
            pieces.append(i..<end)
            i = end
        }
        return pieces
    }

    /// End of the match starting at `i` (always > i: the last alternatives take any char).
    private func match(_ s: [Unicode.Scalar], at i: Int) -> Int {
        let n = s.count
        let llamaStyle = self != .gpt2
        // Contractions.
        if s[i] == "'" && i + 1 < n {
            for suffix in ["s", "t", "re", "ve", "m", "ll", "d"] {
                let chars = Array(suffix.unicodeScalars)
                if i + 1 + chars.count <= n {
                    var ok = true
                    for (k, c) in chars.enumerated() {
                        let got = s[i + 1 + k]
                        if llamaStyle {
                            if String(got).lowercased() != String(c) { ok = false; break }
                        } else if got != c { ok = false; break }
                    }
                    if ok { return i + 1 + chars.count }
                }
            }
        }
        if llamaStyle {
            // [^\r\n\p{L}\p{N}]?\p{L}+
            var j = i
            if !CharClass.isLetter(s[j]) && !CharClass.isNewline(s[j]) && !CharClass.isNumber(s[j]) && j + 1 < n && CharClass.isLetter(s[j + 1]) {
                j += 1
            }
            if CharClass.isLetter(s[j]) {
                while j < n && CharClass.isLetter(s[j]) { j += 1 }
                return j
            }
            // \p{N}{1,3} or \p{N}
            if CharClass.isNumber(s[i]) {
                let limit = self == .qwen2 ? 1 : 3
                var k = i
                while k < n && k - i < limit && CharClass.isNumber(s[k]) { k += 1 }
                return k
            }
        } else {
            // ` ?\p{L}+` and ` ?\p{N}+`
            let start = (s[i] == " " && i + 1 < n) ? i + 1 : i
            if CharClass.isLetter(s[start]) {
                var j = start
                while j < n && CharClass.isLetter(s[j]) { j += 1 }
                return j
            }
            if CharClass.isNumber(s[start]) {
                var j = start
                while j < n && CharClass.isNumber(s[j]) { j += 1 }
                return j
            }
        }
        // ` ?[^\s\p{L}\p{N}]+` (Llama 3 also takes trailing [\r\n]*)
        do {
            let start = (s[i] == " " && i + 1 < n) ? i + 1 : i
            func isOther(_ c: Unicode.Scalar) -> Bool { !CharClass.isSpace(c) && !CharClass.isLetter(c) && !CharClass.isNumber(c) }
            if isOther(s[start]) {
                var j = start
                while j < n && isOther(s[j]) { j += 1 }
                if llamaStyle { while j < n && CharClass.isNewline(s[j]) { j += 1 } }
                return j
            }
        }
        // Whitespace run W = s[i..<w].
        var w = i
        while w < n && CharClass.isSpace(s[w]) { w += 1 }
        if w > i {
            if llamaStyle {
                // \s*[\r\n]+ : up to and including the run's last newline.
                var lastNewline = -1
                for k in i..<w where CharClass.isNewline(s[k]) { lastNewline = k }
                if lastNewline >= 0 { return lastNewline + 1 }
            }
            // \s+(?!\S) : the whole run at the end of text, else all but its last char.
            if w == n { return w }
            if w - i >= 2 { return w - 1 }
            return w  // \s+
        }
        return i + 1
    }
}

/// GPT-2's reversible map from bytes to printable Unicode characters.
package enum ByteMap {
    package static let byteToScalar: [Unicode.Scalar] = {
        var bs: [Int] = Array(33...126) + Array(161...172) + Array(174...255)
        var cs = bs
        var n = 0
        for b in 0..<256 where !bs.contains(b) {
            bs.append(b)
            cs.append(256 + n)
            n += 1
        }
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        for (b, c) in zip(bs, cs) { table[b] = Unicode.Scalar(UInt32(c))! }
        return table
    }()

    package static let scalarToByte: [UInt32: UInt8] = {
        var map: [UInt32: UInt8] = [:]
        for (b, s) in byteToScalar.enumerated() { map[s.value] = UInt8(b) }
        return map
    }()

    package static func encode(_ bytes: some Sequence<UInt8>) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(byteToScalar[Int(b)]) }
        return String(s)
    }
}
