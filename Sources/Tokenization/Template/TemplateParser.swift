import Tensors

indirect enum Expr {
    case literal(TemplateValue)
    case name(String)
    case attr(Expr, String)
    case index(Expr, Expr)
    case slice(Expr, Expr?, Expr?, Expr?)
    case call(Expr, [Expr], [(String, Expr)])
    case filter(Expr, String, [Expr], [(String, Expr)])
    case test(Expr, String, Bool, [Expr])
    case unary(String, Expr)
    case binary(String, Expr, Expr)
    case ternary(Expr, Expr, Expr?)
    case list([Expr])
    case dict([(Expr, Expr)])
}

indirect enum Node {
    case text(String)
    case output(Expr)
    case forLoop(targets: [String], iterable: Expr, condition: Expr?, body: [Node], elseBody: [Node])
    case ifBlock([(Expr, [Node])], elseBody: [Node])
    case set(target: Expr, value: Expr)
    case setBlock(name: String, body: [Node])
    case block([Node])
}

func templateError(_ message: String) -> FacetError {
    FacetError(.invalidArgument, message, field: "chat_template",
               remedy: "Facet renders a Jinja subset (for, if, set, namespace, filters, tests); pass a simpler template")
}

/// Recursive-descent parser for the Jinja subset.
struct TemplateParser {
    var chunks: [TemplateChunk]
    var position = 0

    init(_ source: String) throws {
        chunks = try TemplateLexer.chunks(source)
    }

    mutating func parse() throws -> [Node] {
        let (nodes, end) = try parseBlock(until: [])
        if let end { throw templateError("unexpected {% \(end) %}") }
        return nodes
    }

    /// Parses nodes until a statement whose first word is in `until`; returns that
    /// statement's tokens' keyword (and leaves `position` after it).
    private mutating func parseBlock(until: Set<String>) throws -> ([Node], String?) {
        var nodes: [Node] = []
        while position < chunks.count {
            let chunk = chunks[position]
            position += 1
            switch chunk {
            case .text(let t): nodes.append(.text(t))
            case .output(let tokens):
                var p = ExprParser(tokens: tokens)
                nodes.append(.output(try p.parseComplete()))
            case .statement(let tokens):
                guard case .name(let keyword)? = tokens.first else { throw templateError("empty statement") }
                if until.contains(keyword) {
                    lastStatement = tokens
                    return (nodes, keyword)
                }
                nodes.append(try parseStatement(keyword, tokens))
            }
        }
        if !until.isEmpty { throw templateError("missing {% \(until.sorted().joined(separator: " / ")) %}") }
        return (nodes, nil)
    }

    private var lastStatement: [Token] = []

    private mutating func parseStatement(_ keyword: String, _ tokens: [Token]) throws -> Node {
        var p = ExprParser(tokens: Array(tokens.dropFirst()))
        switch keyword {
        case "for":
            var targets: [String] = []
            repeat {
                guard case .name(let n)? = p.next() else { throw templateError("for needs a loop variable") }
                targets.append(n)
            } while p.accept(.op(","))
            guard p.accept(.name("in")) else { throw templateError("for needs 'in'") }
            let iterable = try p.parseOr()
            var condition: Expr?
            if p.accept(.name("if")) { condition = try p.parseOr() }
            _ = p.accept(.name("recursive"))
            try p.expectEnd()
            let (body, end) = try parseBlock(until: ["endfor", "else"])
            var elseBody: [Node] = []
            if end == "else" { (elseBody, _) = try parseBlock(until: ["endfor"]) }
            return .forLoop(targets: targets, iterable: iterable, condition: condition, body: body, elseBody: elseBody)
        case "if":
            var branches: [(Expr, [Node])] = []
            var condition = try p.parseComplete()
            while true {
                let (body, end) = try parseBlock(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                if end == "elif" {
                    var q = ExprParser(tokens: Array(lastStatement.dropFirst()))
                    condition = try q.parseComplete()
                    continue
                }
                var elseBody: [Node] = []
                if end == "else" { (elseBody, _) = try parseBlock(until: ["endif"]) }
                return .ifBlock(branches, elseBody: elseBody)
            }
        case "set":
            let target = try p.parsePostfix()
            if p.accept(.op("=")) {
                let value = try p.parseComplete()
                return .set(target: target, value: value)
            }
            guard case .name(let name) = target else { throw templateError("set block needs a name") }
            let (body, _) = try parseBlock(until: ["endset"])
            return .setBlock(name: name, body: body)
        case "generation":
            let (body, _) = try parseBlock(until: ["endgeneration"])
            return .block(body)
        default:
            throw templateError("statement {% \(keyword) %} is not supported")
        }
    }
}

struct ExprParser {
    let tokens: [Token]
    var i = 0

    init(tokens: [Token]) { self.tokens = tokens }

    mutating func next() -> Token? {
        guard i < tokens.count else { return nil }
        defer { i += 1 }
        return tokens[i]
    }
    func peek(_ offset: Int = 0) -> Token? { i + offset < tokens.count ? tokens[i + offset] : nil }
    mutating func accept(_ t: Token) -> Bool {
        if peek() == t { i += 1; return true }
        return false
    }
    mutating func expect(_ t: Token) throws {
        guard accept(t) else { throw templateError("expected \(t) in expression") }
    }
    func expectEnd() throws {
        guard i == tokens.count else { throw templateError("unexpected \(tokens[i]) in expression") }
    }

    mutating func parseComplete() throws -> Expr {
        let e = try parseExpression()
        try expectEnd()
        return e
    }

    mutating func parseExpression() throws -> Expr {
        let value = try parseOr()
        if accept(.name("if")) {
            let condition = try parseOr()
            var otherwise: Expr?
            if accept(.name("else")) { otherwise = try parseExpression() }
            return .ternary(condition, value, otherwise)
        }
        return value
    }

    mutating func parseOr() throws -> Expr {
        var e = try parseAnd()
        while accept(.name("or")) { e = .binary("or", e, try parseAnd()) }
        return e
    }

    mutating func parseAnd() throws -> Expr {
        var e = try parseNot()
        while accept(.name("and")) { e = .binary("and", e, try parseNot()) }
        return e
    }

    mutating func parseNot() throws -> Expr {
        if accept(.name("not")) { return .unary("not", try parseNot()) }
        return try parseComparison()
    }

    mutating func parseComparison() throws -> Expr {
        var e = try parseConcat()
        while true {
            if case .op(let o)? = peek(), ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                i += 1
                e = .binary(o, e, try parseConcat())
            } else if accept(.name("in")) {
                e = .binary("in", e, try parseConcat())
            } else if peek() == .name("not"), peek(1) == .name("in") {
                i += 2
                e = .unary("not", .binary("in", e, try parseConcat()))
            } else if accept(.name("is")) {
                let negated = accept(.name("not"))
                guard case .name(let test)? = next() else { throw templateError("'is' needs a test name") }
                var args: [Expr] = []
                if accept(.op("(")) {
                    (args, _) = try parseArguments()
                } else if let t = peek(), case .name(let n) = t, !["and", "or", "else", "if", "not", "in", "is"].contains(n) {
                    args = [try parsePostfix()]
                } else if let t = peek(), case .string = t {
                    args = [try parsePostfix()]
                }
                e = .test(e, test, negated, args)
            } else {
                return e
            }
        }
    }

    mutating func parseConcat() throws -> Expr {
        var e = try parseAdditive()
        while accept(.op("~")) { e = .binary("~", e, try parseAdditive()) }
        return e
    }

    mutating func parseAdditive() throws -> Expr {
        var e = try parseMultiplicative()
        while true {
            if accept(.op("+")) { e = .binary("+", e, try parseMultiplicative()) } else if accept(.op("-")) { e = .binary("-", e, try parseMultiplicative()) } else { return e }
        }
    }

    mutating func parseMultiplicative() throws -> Expr {
        var e = try parseUnary()
        while true {
            if case .op(let o)? = peek(), ["*", "/", "//", "%"].contains(o) {
                i += 1
                e = .binary(o, e, try parseUnary())
            } else {
                return e
            }
        }
    }

    mutating func parseUnary() throws -> Expr {
        if accept(.op("-")) { return .unary("-", try parseUnary()) }
        if accept(.op("+")) { return try parseUnary() }
        return try parsePostfix()
    }

    mutating func parsePostfix() throws -> Expr {
        var e = try parsePrimary()
        while true {
            if accept(.op(".")) {
                guard case .name(let n)? = next() else { throw templateError("expected a name after '.'") }
                e = .attr(e, n)
            } else if accept(.op("[")) {
                var parts: [Expr?] = [nil]
                var isSlice = false
                while peek() != .op("]") {
                    if accept(.op(":")) {
                        isSlice = true
                        parts.append(nil)
                    } else {
                        parts[parts.count - 1] = try parseExpression()
                    }
                }
                try expect(.op("]"))
                if isSlice {
                    while parts.count < 3 { parts.append(nil) }
                    e = .slice(e, parts[0], parts[1], parts[2])
                } else {
                    guard let key = parts[0] else { throw templateError("empty subscript") }
                    e = .index(e, key)
                }
            } else if accept(.op("(")) {
                let (args, kwargs) = try parseArguments()
                e = .call(e, args, kwargs)
            } else if accept(.op("|")) {
                guard case .name(let f)? = next() else { throw templateError("expected a filter name") }
                var args: [Expr] = [], kwargs: [(String, Expr)] = []
                if accept(.op("(")) { (args, kwargs) = try parseArguments() }
                e = .filter(e, f, args, kwargs)
            } else {
                return e
            }
        }
    }

    /// Arguments after '(' up to and including ')'.
    mutating func parseArguments() throws -> ([Expr], [(String, Expr)]) {
        var args: [Expr] = [], kwargs: [(String, Expr)] = []
        while !accept(.op(")")) {
            if case .name(let n)? = peek(), peek(1) == .op("=") {
                i += 2
                kwargs.append((n, try parseExpression()))
            } else {
                args.append(try parseExpression())
            }
            if !accept(.op(",")) {
                try expect(.op(")"))
                break
            }
        }
        return (args, kwargs)
    }

    mutating func parsePrimary() throws -> Expr {
        guard let t = next() else { throw templateError("expression ends too early") }
        switch t {
        case .string(var s):
            while case .string(let more)? = peek() { s += more; i += 1 }
            return .literal(.string(s))
        case .int(let v): return .literal(.int(v))
        case .double(let v): return .literal(.double(v))
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .op("("):
            let e = try parseExpression()
            if accept(.op(",")) {
                var items = [e]
                while !accept(.op(")")) {
                    items.append(try parseExpression())
                    if !accept(.op(",")) { try expect(.op(")")); break }
                }
                return .list(items)
            }
            try expect(.op(")"))
            return e
        case .op("["):
            var items: [Expr] = []
            while !accept(.op("]")) {
                items.append(try parseExpression())
                if !accept(.op(",")) { try expect(.op("]")); break }
            }
            return .list(items)
        case .op("{"):
            var pairs: [(Expr, Expr)] = []
            while !accept(.op("}")) {
                let k = try parseExpression()
                try expect(.op(":"))
                pairs.append((k, try parseExpression()))
                if !accept(.op(",")) { try expect(.op("}")); break }
            }
            return .dict(pairs)
        default:
            throw templateError("unexpected \(t) in expression")
        }
    }
}
