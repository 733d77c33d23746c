/// Turns a stream of token ids into text pieces that are always whole UTF-8: bytes of a
/// character split across tokens are held back until the character is complete.
package struct StreamingDetokenizer: Sendable {
    let tokenizer: Tokenizer
    let skipSpecialTokens: Bool
    private var pending: [UInt8] = []
    private var first = true
    package private(set) var text = ""

    package init(tokenizer: Tokenizer, skipSpecialTokens: Bool = true) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// Adds one token; returns the newly completed text (possibly empty).
    package mutating func append(_ id: Int32) -> String {
        if skipSpecialTokens && tokenizer.isSpecial(id) { return "" }
        pending.append(contentsOf: tokenizer.bytes(of: id, first: first))
        first = false
        let cut = Self.completePrefixLength(pending)
        guard cut > 0 else { return "" }
        let piece = String(decoding: pending[..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        text += piece
        return piece
    }

    /// Emits whatever is held back (an incomplete character becomes U+FFFD).
    package mutating func finish() -> String {
        guard !pending.isEmpty else { return "" }
        let piece = String(decoding: pending, as: UTF8.self)
        pending.removeAll()
        text += piece
        return piece
    }

    /// Length of the longest prefix that does not end inside a possibly-incomplete
    /// multi-byte sequence.
    static func completePrefixLength(_ b: [UInt8]) -> Int {
        let n = b.count
        var i = n - 1
        var continuation = 0
        while i >= 0 && continuation < 3 && (b[i] & 0xC0) == 0x80 {
            continuation += 1
            i -= 1
        }
        guard i >= 0 else { return continuation >= 3 ? n : 0 }
        let lead = b[i]
        let need: Int
        if lead & 0x80 == 0 { need = 0 } else if lead & 0xE0 == 0xC0 { need = 1 } else if lead & 0xF0 == 0xE0 { need = 2 } else if lead & 0xF8 == 0xF0 { need = 3 } else { need = 0 }
        if need > continuation { return i }  // the last character is still incomplete
        return n
    }
}
