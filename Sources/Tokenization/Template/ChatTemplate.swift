import Foundation
import Tensors

/// A chat template (the Jinja text from tokenizer_config.json or a GGUF), parsed once and
/// rendered with Hugging Face's conventions: `trim_blocks`, `lstrip_blocks`, `messages`,
/// `add_generation_prompt`, the named special tokens and `raise_exception`.
package struct ChatTemplate: Sendable {
    package struct Message: Sendable, Equatable {
        package var role: String
        package var content: String
        package init(role: String, content: String) {
            self.role = role
            self.content = content
        }
    }

    nonisolated(unsafe) let nodes: [Node]
    package let source: String

    package init(_ source: String) throws {
        // Jinja drops one trailing newline of the template (keep_trailing_newline=False).
        var text = source
        if text.hasSuffix("\n") { text.removeLast() }
        var parser = try TemplateParser(text)
        nodes = try parser.parse()
        self.source = source
    }

    package func render(messages: [Message], addGenerationPrompt: Bool, variables: [String: TemplateValue] = [:]) throws -> String {
        var globals = variables
        globals["messages"] = .array(messages.map { .dict([("role", .string($0.role)), ("content", .string($0.content))]) })
        globals["add_generation_prompt"] = .bool(addGenerationPrompt)
        var renderer = TemplateRenderer(scopes: [globals])
        return try renderer.render(nodes)
    }
}

struct TemplateRenderer {
    var scopes: [[String: TemplateValue]]
    var output = ""
    var steps = 0

    mutating func render(_ nodes: [Node]) throws -> String {
        try run(nodes)
        return output
    }

    func lookup(_ name: String) -> TemplateValue {
        for scope in scopes.reversed() { if let v = scope[name] { return v } }
        return .undefined
    }

    mutating func run(_ nodes: [Node]) throws {
        for node in nodes {
            steps += 1
            guard steps < 1_000_000 else { throw templateError("template runs too long") }
            switch node {
            case .text(let t): output += t
            case .output(let e): output += try eval(e).rendered
            case .block(let body): try run(body)
            case .ifBlock(let branches, let elseBody):
                var done = false
                for (condition, body) in branches where try eval(condition).truthy {
                    try run(body)
                    done = true
                    break
                }
                if !done { try run(elseBody) }
            case .set(let target, let value):
                let v = try eval(value)
                switch target {
                case .name(let n): scopes[scopes.count - 1][n] = v
                case .attr(let base, let attr):
                    guard case .namespace(let box) = try eval(base) else { throw templateError("can only set attributes of a namespace()") }
                    box.values[attr] = v
                default: throw templateError("cannot assign to this target")
                }
            case .setBlock(let name, let body):
                let saved = output
                output = ""
                try run(body)
                let captured = output
                output = saved
                scopes[scopes.count - 1][name] = .string(captured)
            case .forLoop(let targets, let iterable, let condition, let body, let elseBody):
                var items: [TemplateValue]
                switch try eval(iterable) {
                case .array(let a): items = a
                case .dict(let d): items = d.map { .string($0.0) }
                case .string(let s): items = s.map { .string(String($0)) }
                case .undefined, .none: items = []
                default: throw templateError("cannot loop over a number or boolean")
                }
                scopes.append([:])
                if let condition {
                    items = try items.filter { item in
                        bind(targets, item)
                        return try eval(condition).truthy
                    }
                }
                for (n, item) in items.enumerated() {
                    bind(targets, item)
                    scopes[scopes.count - 1]["loop"] = .dict([
                        ("index", .int(n + 1)), ("index0", .int(n)), ("first", .bool(n == 0)), ("last", .bool(n == items.count - 1)),
                        ("length", .int(items.count)), ("revindex", .int(items.count - n)), ("revindex0", .int(items.count - n - 1)),
                        ("previtem", n > 0 ? items[n - 1] : .undefined), ("nextitem", n + 1 < items.count ? items[n + 1] : .undefined),
                    ])
                    try run(body)
                }
                scopes.removeLast()
                if items.isEmpty { try run(elseBody) }
            }
        }
    }

    mutating func bind(_ targets: [String], _ item: TemplateValue) {
        if targets.count == 1 {
            scopes[scopes.count - 1][targets[0]] = item
        } else if case .array(let parts) = item {
            for (t, v) in zip(targets, parts) { scopes[scopes.count - 1][t] = v }
        }
    }

    // MARK: - Expressions

    mutating func eval(_ e: Expr) throws -> TemplateValue {
        switch e {
        case .literal(let v): return v
        case .name(let n): return lookup(n)
        case .list(let items): return .array(try items.map { try eval($0) })
        case .dict(let pairs): return .dict(try pairs.map { (try eval($0.0).rendered, try eval($0.1)) })
        case .attr(let base, let name):
            let b = try eval(base)
            return b[name]
        case .index(let base, let key):
            let b = try eval(base), k = try eval(key)
            switch (b, k) {
            case (.array(let a), .int(let i)):
                let j = i < 0 ? a.count + i : i
                return j >= 0 && j < a.count ? a[j] : .undefined
            case (.string(let s), .int(let i)):
                let chars = Array(s)
                let j = i < 0 ? chars.count + i : i
                return j >= 0 && j < chars.count ? .string(String(chars[j])) : .undefined
            case (_, .string(let s)): return b[s]
            default: return .undefined
            }
        case .slice(let base, let lo, let hi, let step):
            let b = try eval(base)
            let stepValue = try step.map { try eval($0) }
            let st: Int = if case .int(let s)? = stepValue { s } else { 1 }
            guard st != 0 else { throw templateError("slice step cannot be zero") }
            func sliceIndices(_ n: Int) throws -> [Int] {
                func bound(_ x: Expr?, _ def: Int) throws -> Int {
                    guard let x, case .int(var v) = try eval(x) else { return def }
                    if v < 0 { v += n }
                    return st > 0 ? min(max(v, 0), n) : min(max(v, -1), n - 1)
                }
                let start = try bound(lo, st > 0 ? 0 : n - 1), end = try bound(hi, st > 0 ? n : -1)
                return Array(stride(from: start, to: end, by: st))
            }
            switch b {
            case .array(let a): return .array(try sliceIndices(a.count).map { a[$0] })
            case .string(let s):
                let chars = Array(s)
                return .string(String(try sliceIndices(chars.count).map { chars[$0] }))
            default: return .undefined
            }
        case .unary(let op, let x):
            let v = try eval(x)
            if op == "not" { return .bool(!v.truthy) }
            switch v {
            case .int(let i): return .int(-i)
            case .double(let d): return .double(-d)
            default: throw templateError("cannot negate \(v.rendered)")
            }
        case .ternary(let condition, let a, let b):
            if try eval(condition).truthy { return try eval(a) }
            return try b.map { try eval($0) } ?? .undefined
        case .binary(let op, let x, let y):
            if op == "and" { let a = try eval(x); return a.truthy ? try eval(y) : a }
            if op == "or" { let a = try eval(x); return a.truthy ? a : try eval(y) }
            return try binary(op, try eval(x), try eval(y))
        case .test(let x, let name, let negated, let args):
            let result = try test(name, try eval(x), try args.map { try eval($0) })
            return .bool(negated ? !result : result)
        case .filter(let x, let name, let args, let kwargs):
            return try filter(name, try eval(x), try args.map { try eval($0) }, try kwargs.map { ($0.0, try eval($0.1)) })
        case .call(let callee, let args, let kwargs):
            let a = try args.map { try eval($0) }
            let kw = try kwargs.map { ($0.0, try eval($0.1)) }
            if case .attr(let base, let method) = callee {
                return try self.method(try eval(base), method, a)
            }
            guard case .name(let fn) = callee else { throw templateError("only functions and methods can be called") }
            switch fn {
            case "raise_exception":
                throw FacetError(.invalidArgument, "the chat template refused the messages: \(a.first?.rendered ?? "")", field: "messages",
                                 remedy: "follow the roles and order the model's template expects")
            case "namespace":
                var values: [String: TemplateValue] = [:]
                for (k, v) in kw { values[k] = v }
                if case .dict(let d)? = a.first { for (k, v) in d { values[k] = v } }
                return .namespace(NamespaceBox(values))
            case "range":
                let ints = a.compactMap { if case .int(let i) = $0 { i } else { nil } }
                switch ints.count {
                case 1: return .array((0..<max(0, ints[0])).map { .int($0) })
                case 2: return .array(stride(from: ints[0], to: ints[1], by: 1).map { .int($0) })
                case 3 where ints[2] != 0: return .array(stride(from: ints[0], to: ints[1], by: ints[2]).map { .int($0) })
                default: throw templateError("range takes 1 to 3 integers")
                }
            case "strftime_now":
                let f = DateFormatter()
                f.locale = Locale(identifier: "en_US_POSIX")
                let pattern = (a.first?.rendered ?? "%d %b %Y").replacingOccurrences(of: "%d", with: "dd")
                    .replacingOccurrences(of: "%b", with: "MMM").replacingOccurrences(of: "%B", with: "MMMM")
                    .replacingOccurrences(of: "%Y", with: "yyyy").replacingOccurrences(of: "%m", with: "MM")
                f.dateFormat = pattern
                return .string(f.string(from: Date()))
            default:
                throw templateError("function \(fn)() is not supported")
            }
        }
    }

    func number(_ v: TemplateValue) -> Double? {
        switch v {
        case .int(let i): Double(i)
        case .double(let d): d
        case .bool(let b): b ? 1 : 0
        default: nil
        }
    }

    func binary(_ op: String, _ a: TemplateValue, _ b: TemplateValue) throws -> TemplateValue {
        switch op {
        case "==": return .bool(a == b)
        case "!=": return .bool(a != b)
        case "~": return .string(a.rendered + b.rendered)
        case "in":
            switch b {
            case .array(let arr): return .bool(arr.contains(a))
            case .string(let s): return .bool(s.contains(a.rendered))
            case .dict(let d): return .bool(d.contains { $0.0 == a.rendered })
            case .namespace(let n): return .bool(n.values[a.rendered] != nil)
            default: return .bool(false)
            }
        default: break
        }
        if op == "+" {
            switch (a, b) {
            case (.string(let x), .string(let y)): return .string(x + y)
            case (.array(let x), .array(let y)): return .array(x + y)
            default: break
            }
        }
        if op == "*", case .string(let s) = a, case .int(let n) = b { return .string(String(repeating: s, count: max(0, n))) }
        if ["<", ">", "<=", ">="].contains(op), case .string(let x) = a, case .string(let y) = b {
            switch op {
            case "<": return .bool(x < y)
            case ">": return .bool(x > y)
            case "<=": return .bool(x <= y)
            default: return .bool(x >= y)
            }
        }
        guard let x = number(a), let y = number(b) else {
            throw templateError("cannot apply \(op) to \(a.repr) and \(b.repr)")
        }
        let bothInt: Bool = if case .int = a, case .int = b { true } else { false }
        switch op {
        case "+": return bothInt ? .int(Int(x) + Int(y)) : .double(x + y)
        case "-": return bothInt ? .int(Int(x) - Int(y)) : .double(x - y)
        case "*": return bothInt ? .int(Int(x) * Int(y)) : .double(x * y)
        case "/":
            guard y != 0 else { throw templateError("division by zero") }
            return .double(x / y)
        case "//":
            guard y != 0 else { throw templateError("division by zero") }
            return bothInt ? .int(Int((x / y).rounded(.down))) : .double((x / y).rounded(.down))
        case "%":
            guard y != 0 else { throw templateError("division by zero") }
            if bothInt { let r = Int(x) % Int(y); return .int(r != 0 && (r < 0) != (Int(y) < 0) ? r + Int(y) : r) }
            return .double(x.truncatingRemainder(dividingBy: y))
        case "<": return .bool(x < y)
        case ">": return .bool(x > y)
        case "<=": return .bool(x <= y)
        case ">=": return .bool(x >= y)
        default: throw templateError("operator \(op) is not supported")
        }
    }

    func test(_ name: String, _ v: TemplateValue, _ args: [TemplateValue]) throws -> Bool {
        switch name {
        case "defined": if case .undefined = v { return false } else { return true }
        case "undefined": if case .undefined = v { return true } else { return false }
        case "none": return v == .none
        case "string": if case .string = v { return true } else { return false }
        case "number": return number(v) != nil && { if case .bool = v { false } else { true } }()
        case "integer": if case .int = v { return true } else { return false }
        case "float": if case .double = v { return true } else { return false }
        case "boolean": if case .bool = v { return true } else { return false }
        case "mapping": if case .dict = v { return true } else { return false }
        case "sequence", "iterable":
            switch v {
            case .array, .string, .dict: return true
            default: return false
            }
        case "true": return v == .bool(true)
        case "false": return v == .bool(false)
        case "equalto", "eq", "==", "sameas": return v == (args.first ?? .undefined)
        case "ne", "!=": return v != (args.first ?? .undefined)
        case "odd": if case .int(let i) = v { return i % 2 != 0 } else { return false }
        case "even": if case .int(let i) = v { return i % 2 == 0 } else { return false }
        case "divisibleby":
            if case .int(let i) = v, case .int(let d)? = args.first, d != 0 { return i % d == 0 }
            return false
        case "in": return try binary("in", v, args.first ?? .undefined).truthy
        default: throw templateError("test '\(name)' is not supported")
        }
    }

    mutating func filter(_ name: String, _ v: TemplateValue, _ args: [TemplateValue], _ kwargs: [(String, TemplateValue)]) throws -> TemplateValue {
        switch name {
        case "trim": return .string(v.rendered.trimmingCharacters(in: .whitespacesAndNewlines))
        case "length", "count":
            switch v {
            case .array(let a): return .int(a.count)
            case .string(let s): return .int(s.count)
            case .dict(let d): return .int(d.count)
            default: return .int(0)
            }
        case "upper": return .string(v.rendered.uppercased())
        case "lower": return .string(v.rendered.lowercased())
        case "capitalize": return .string(v.rendered.prefix(1).uppercased() + v.rendered.dropFirst().lowercased())
        case "title": return .string(v.rendered.capitalized)
        case "string": return .string(v.rendered)
        case "int": return .int(Int(number(v) ?? Double(v.rendered) ?? 0))
        case "float": return .double(number(v) ?? Double(v.rendered) ?? 0)
        case "abs": return number(v).map { d in if case .int(let i) = v { .int(abs(i)) } else { .double(abs(d)) } } ?? v
        case "default", "d":
            let useForFalsy = args.count > 1 && args[1].truthy
            if case .undefined = v { return args.first ?? .string("") }
            if useForFalsy && !v.truthy { return args.first ?? .string("") }
            return v
        case "first": if case .array(let a) = v { return a.first ?? .undefined }; return v.rendered.first.map { .string(String($0)) } ?? .undefined
        case "last": if case .array(let a) = v { return a.last ?? .undefined }; return v.rendered.last.map { .string(String($0)) } ?? .undefined
        case "list":
            switch v {
            case .array: return v
            case .string(let s): return .array(s.map { .string(String($0)) })
            case .dict(let d): return .array(d.map { .string($0.0) })
            default: return .array([])
            }
        case "reverse":
            if case .array(let a) = v { return .array(a.reversed()) }
            return .string(String(v.rendered.reversed()))
        case "join":
            guard case .array(let a) = v else { return v }
            return .string(a.map(\.rendered).joined(separator: args.first?.rendered ?? ""))
        case "replace":
            guard args.count >= 2 else { throw templateError("replace needs two arguments") }
            return .string(v.rendered.replacingOccurrences(of: args[0].rendered, with: args[1].rendered))
        case "items":
            guard case .dict(let d) = v else { return .array([]) }
            return .array(d.map { .array([.string($0.0), $0.1]) })
        case "tojson":
            let indent = kwargs.first { $0.0 == "indent" }?.1 ?? args.first
            if case .int(let n)? = indent { return .string(v.json(indent: n)) }
            return .string(v.json())
        case "map":
            guard case .array(let a) = v else { return .array([]) }
            if let attribute = kwargs.first(where: { $0.0 == "attribute" })?.1.rendered { return .array(a.map { $0[attribute] }) }
            if let f = args.first?.rendered { return .array(try a.map { try filter(f, $0, [], []) }) }
            return v
        case "selectattr", "rejectattr":
            guard case .array(let a) = v, let attribute = args.first?.rendered else { return .array([]) }
            let keep = try a.filter { item in
                let field = item[attribute]
                let ok = args.count > 1 ? try test(args[1].rendered, field, Array(args.dropFirst(2))) : field.truthy
                return name == "selectattr" ? ok : !ok
            }
            return .array(keep)
        case "select", "reject":
            guard case .array(let a) = v else { return .array([]) }
            let keep = try a.filter { item in
                let ok = args.isEmpty ? item.truthy : try test(args[0].rendered, item, Array(args.dropFirst()))
                return name == "select" ? ok : !ok
            }
            return .array(keep)
        case "safe", "e", "escape": return v
        default: throw templateError("filter '\(name)' is not supported")
        }
    }

    func method(_ v: TemplateValue, _ name: String, _ args: [TemplateValue]) throws -> TemplateValue {
        if case .dict(let d) = v {
            switch name {
            case "items": return .array(d.map { .array([.string($0.0), $0.1]) })
            case "keys": return .array(d.map { .string($0.0) })
            case "values": return .array(d.map { $0.1 })
            case "get":
                let value = v[args.first?.rendered ?? ""]
                if case .undefined = value { return args.count > 1 ? args[1] : .none }
                return value
            default: break
            }
        }
        if case .string(let s) = v {
            func chars(_ i: Int) -> CharacterSet? { args.count > i ? CharacterSet(charactersIn: args[i].rendered) : nil }
            switch name {
            case "strip": return .string(s.trimmingCharacters(in: chars(0) ?? .whitespacesAndNewlines))
            case "lstrip":
                let set = chars(0) ?? .whitespacesAndNewlines
                return .string(String(s.unicodeScalars.drop(while: { set.contains($0) })))
            case "rstrip":
                let set = chars(0) ?? .whitespacesAndNewlines
                var scalars = Array(s.unicodeScalars)
                while let l = scalars.last, set.contains(l) { scalars.removeLast() }
                var view = String.UnicodeScalarView()
                view.append(contentsOf: scalars)
                return .string(String(view))
            case "lower": return .string(s.lowercased())
            case "upper": return .string(s.uppercased())
            case "title": return .string(s.capitalized)
            case "capitalize": return .string(s.prefix(1).uppercased() + s.dropFirst().lowercased())
            case "startswith": return .bool(args.contains { s.hasPrefix($0.rendered) })
            case "endswith": return .bool(args.contains { s.hasSuffix($0.rendered) })
            case "replace":
                guard args.count >= 2 else { throw templateError("replace needs two arguments") }
                return .string(s.replacingOccurrences(of: args[0].rendered, with: args[1].rendered))
            case "split":
                if let sep = args.first?.rendered, !sep.isEmpty { return .array(s.components(separatedBy: sep).map { .string($0) }) }
                return .array(s.split(whereSeparator: { $0.isWhitespace }).map { .string(String($0)) })
            case "find":
                guard let r = s.range(of: args.first?.rendered ?? "") else { return .int(-1) }
                return .int(s.distance(from: s.startIndex, to: r.lowerBound))
            default: break
            }
        }
        throw templateError("method .\(name)() is not supported on \(v.repr.prefix(40))")
    }
}
