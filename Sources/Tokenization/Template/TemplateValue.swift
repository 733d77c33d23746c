import Foundation

/// A value inside a chat template: the subset of Jinja's (Python's) data model that chat
/// templates use.
package indirect enum TemplateValue: Sendable, Equatable {
    case undefined
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([TemplateValue])
    /// Insertion-ordered mapping.
    case dict([(String, TemplateValue)])
    /// A `namespace()` object: mutable attributes shared by reference.
    case namespace(NamespaceBox)

    package static func == (a: TemplateValue, b: TemplateValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): true
        case (.bool(let x), .bool(let y)): x == y
        case (.int(let x), .int(let y)): x == y
        case (.double(let x), .double(let y)): x == y
        case (.int(let x), .double(let y)), (.double(let y), .int(let x)): Double(x) == y
        case (.string(let x), .string(let y)): x == y
        case (.array(let x), .array(let y)): x == y
        case (.dict(let x), .dict(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case (.namespace(let x), .namespace(let y)): x === y
        default: false
        }
    }

    package var truthy: Bool {
        switch self {
        case .undefined, .none: false
        case .bool(let b): b
        case .int(let i): i != 0
        case .double(let d): d != 0
        case .string(let s): !s.isEmpty
        case .array(let a): !a.isEmpty
        case .dict(let d): !d.isEmpty
        case .namespace: true
        }
    }

    /// Python's `str()` of the value, as `{{ }}` prints it.
    package var rendered: String {
        switch self {
        case .undefined: ""
        case .none: "None"
        case .bool(let b): b ? "True" : "False"
        case .int(let i): String(i)
        case .double(let d): d == d.rounded() && abs(d) < 1e16 ? String(format: "%.1f", d) : String(d)
        case .string(let s): s
        case .array(let a): "[" + a.map(\.repr).joined(separator: ", ") + "]"
        case .dict(let d): "{" + d.map { "'\($0.0)': \($0.1.repr)" }.joined(separator: ", ") + "}"
        case .namespace: "<Namespace>"
        }
    }

    var repr: String {
        if case .string(let s) = self { return "'" + s.replacingOccurrences(of: "'", with: "\\'") + "'" }
        return rendered
    }

    /// JSON text as Hugging Face's `tojson` writes it: `json.dumps(ensure_ascii=False)`.
    package func json(indent: Int? = nil, level: Int = 0) -> String {
        switch self {
        case .undefined, .none: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d): return String(d)
        case .string(let s):
            var out = "\""
            for u in s.unicodeScalars {
                switch u {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default:
                    if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
                }
            }
            return out + "\""
        case .array(let a):
            if a.isEmpty { return "[]" }
            if let indent {
                let pad = String(repeating: " ", count: indent * (level + 1))
                return "[\n" + a.map { pad + $0.json(indent: indent, level: level + 1) }.joined(separator: ",\n") + "\n" + String(repeating: " ", count: indent * level) + "]"
            }
            return "[" + a.map { $0.json() }.joined(separator: ", ") + "]"
        case .dict(let d):
            if d.isEmpty { return "{}" }
            if let indent {
                let pad = String(repeating: " ", count: indent * (level + 1))
                return "{\n" + d.map { pad + TemplateValue.string($0.0).json() + ": " + $0.1.json(indent: indent, level: level + 1) }.joined(separator: ",\n") + "\n" + String(repeating: " ", count: indent * level) + "}"
            }
            return "{" + d.map { TemplateValue.string($0.0).json() + ": " + $0.1.json() }.joined(separator: ", ") + "}"
        case .namespace: return "{}"
        }
    }

    subscript(key: String) -> TemplateValue {
        switch self {
        case .dict(let d): d.first { $0.0 == key }?.1 ?? .undefined
        case .namespace(let n): n.values[key] ?? .undefined
        default: .undefined
        }
    }

    /// Converts JSON-like Foundation values (from JSONSerialization) to template values.
    package init(json: Any?) {
        switch json {
        case nil, is NSNull: self = .none
        case let s as String: self = .string(s)
        case let n as NSNumber:
            let type = String(cString: n.objCType)
            if type == "c" || type == "B" {
                self = .bool(n.boolValue)
            } else if type == "d" || type == "f" {
                self = .double(n.doubleValue)
            } else {
                self = .int(n.intValue)
            }
        case let b as Bool: self = .bool(b)
        case let a as [Any]: self = .array(a.map { TemplateValue(json: $0) })
        case let d as [String: Any]: self = .dict(d.keys.sorted().map { ($0, TemplateValue(json: d[$0])) })
        default: self = .string("\(json!)")
        }
    }
}

package final class NamespaceBox: @unchecked Sendable {
    var values: [String: TemplateValue]
    init(_ values: [String: TemplateValue]) { self.values = values }
}
