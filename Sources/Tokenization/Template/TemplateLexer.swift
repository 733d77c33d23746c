import Tensors

/// Splits a Jinja template into text and tags, applying `trim_blocks` and `lstrip_blocks`
/// (as Hugging Face renders chat templates) and the `-` whitespace-control markers.
enum TemplateChunk: Equatable {
    case text(String)
    case output([Token])      // {{ ... }}
    case statement([Token])   // {% ... %}
}

enum Token: Equatable {
    case name(String)
    case string(String)
    case int(Int)
    case double(Double)
    case op(String)
}

struct TemplateLexer {
    static func chunks(_ source: String) throws -> [TemplateChunk] {
        let s = Array(source.unicodeScalars)
        var chunks: [TemplateChunk] = []
        var text = String.UnicodeScalarView()
        var i = 0
        var trimNextNewline = false
        var stripNextWhitespace = false
        func flushText() {
            if !text.isEmpty { chunks.append(.text(String(text))) }
            text = String.UnicodeScalarView()
        }
        while i < s.count {
            if s[i] == "{", i + 1 < s.count, s[i + 1] == "{" || s[i + 1] == "%" || s[i + 1] == "#" {
                let kind = s[i + 1]
                let close: Unicode.Scalar = kind == "{" ? "}" : kind == "%" ? "%" : "#"
                var j = i + 2
                var leftTrim = false
                if j < s.count && s[j] == "-" { leftTrim = true; j += 1 } else if j < s.count && s[j] == "+" { j += 1 }
                // Find the closing marker.
                var k = j
                var quote: Unicode.Scalar?
                while k + 1 < s.count {
                    if let q = quote {
                        if s[k] == "\\" { k += 2; continue }
                        if s[k] == q { quote = nil }
                    } else if kind != "#" && (s[k] == "'" || s[k] == "\"") {
                        quote = s[k]
                    } else if s[k] == close && s[k + 1] == "}" {
                        break
                    }
                    k += 1
                }
                guard k + 1 < s.count else {
                    throw FacetError(.invalidArgument, "unclosed tag starting at character \(i)", field: "chat_template",
                                     remedy: "fix the template's {{ }} / {% %} pairs")
                }
                var bodyEnd = k
                var rightTrim = false
                if bodyEnd > j && s[bodyEnd - 1] == "-" { rightTrim = true; bodyEnd -= 1 } else if bodyEnd > j && s[bodyEnd - 1] == "+" { bodyEnd -= 1 }
                // Whitespace before the tag.
                if leftTrim {
                    while let last = text.last, last.properties.isWhitespace { text.removeLast() }
                } else if kind != "{" {
                    // lstrip_blocks: spaces and tabs from the start of the line up to a block tag.
                    var copy = Array(text)
                    var n = copy.count
                    while n > 0 && (copy[n - 1] == " " || copy[n - 1] == "\t") { n -= 1 }
                    if n == 0 ? chunks.isEmpty || isLineStart(chunks) : copy[n - 1] == "\n" {
                        copy.removeSubrange(n...)
                        text = String.UnicodeScalarView(copy)
                    }
                }
                flushText()
                var body = String.UnicodeScalarView()
                body.append(contentsOf: s[j..<bodyEnd])
                if kind == "{" {
                    chunks.append(.output(try tokenize(String(body))))
                } else if kind == "%" {
                    chunks.append(.statement(try tokenize(String(body))))
                }
                i = k + 2
                trimNextNewline = kind != "{"
                stripNextWhitespace = rightTrim
                if stripNextWhitespace {
                    while i < s.count && s[i].properties.isWhitespace { i += 1 }
                } else if trimNextNewline {
                    if i < s.count && s[i] == "\n" { i += 1 } else if i + 1 < s.count && s[i] == "\r" && s[i + 1] == "\n" { i += 2 }
                }
                continue
            }
            text.append(s[i])
            i += 1
        }
        flushText()
        return chunks
    }

    private static func isLineStart(_ chunks: [TemplateChunk]) -> Bool {
        if case .text(let t) = chunks.last { return t.hasSuffix("\n") }
        return false
    }

    static func tokenize(_ body: String) throws -> [Token] {
        let s = Array(body.unicodeScalars)
        var tokens: [Token] = []
        var i = 0
        let twoCharOps: Set<String> = ["==", "!=", "<=", ">=", "//", "**"]
        while i < s.count {
            let c = s[i]
            if c.properties.isWhitespace { i += 1; continue }
            if c == "'" || c == "\"" {
                var out = String.UnicodeScalarView()
                var j = i + 1
                while j < s.count && s[j] != c {
                    if s[j] == "\\" && j + 1 < s.count {
                        j += 1
                        switch s[j] {
                        case "n": out.append("\n")
                        case "t": out.append("\t")
                        case "r": out.append("\r")
                        case "\\": out.append("\\")
                        case "'": out.append("'")
                        case "\"": out.append("\"")
                        default: out.append("\\"); out.append(s[j])
                        }
                    } else {
                        out.append(s[j])
                    }
                    j += 1
                }
                guard j < s.count else {
                    throw FacetError(.invalidArgument, "unterminated string in template", field: "chat_template", remedy: "close the string literal")
                }
                tokens.append(.string(String(out)))
                i = j + 1
                continue
            }
            if c.properties.numericType != nil && ("0"..."9").contains(c) {
                var j = i
                var isDouble = false
                while j < s.count && (("0"..."9").contains(s[j]) || (s[j] == "." && !isDouble && j + 1 < s.count && ("0"..."9").contains(s[j + 1]))) {
                    if s[j] == "." { isDouble = true }
                    j += 1
                }
                var v = String.UnicodeScalarView()
                v.append(contentsOf: s[i..<j])
                let text = String(v)
                tokens.append(isDouble ? .double(Double(text) ?? 0) : .int(Int(text) ?? 0))
                i = j
                continue
            }
            if c == "_" || c.properties.isAlphabetic {
                var j = i
                while j < s.count && (s[j] == "_" || s[j].properties.isAlphabetic || ("0"..."9").contains(s[j])) { j += 1 }
                var v = String.UnicodeScalarView()
                v.append(contentsOf: s[i..<j])
                tokens.append(.name(String(v)))
                i = j
                continue
            }
            if i + 1 < s.count {
                var v = String.UnicodeScalarView()
                v.append(c)
                v.append(s[i + 1])
                if twoCharOps.contains(String(v)) {
                    tokens.append(.op(String(v)))
                    i += 2
                    continue
                }
            }
            guard "+-*/%~()[]{}.,:|=<>!?".unicodeScalars.contains(c) else {
                throw FacetError(.invalidArgument, "unexpected character '\(c)' in template expression", field: "chat_template")
            }
            tokens.append(.op(String(c)))
            i += 1
        }
        return tokens
    }
}
