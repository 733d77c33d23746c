/// The one error type every Facet layer throws.
///
/// Each error says what went wrong, where (a file and a field when known), and how the user
/// may remedy it. `Server` maps `code` to a status; the CLI prints `description`.
package struct FacetError: Error, CustomStringConvertible, Sendable, Equatable {
    package enum Code: String, Sendable {
        case invalidFile          // a file is truncated, corrupt or of an unexpected layout
        case unsupported          // a valid input that Facet does not support (yet)
        case invalidConfig        // a config field is missing or out of range
        case invalidArgument      // a command-line or request parameter is wrong
        case shapeMismatch        // tensor shapes disagree with the model
        case notFound             // a file or token that should exist does not
        case capacity             // a budget (KV blocks, tokens, memory) is exhausted
        case io                   // the operating system refused a read or write
    }

    package var code: Code
    package var message: String
    package var remedy: String?
    package var file: String?
    package var field: String?

    package init(_ code: Code, _ message: String, file: String? = nil, field: String? = nil, remedy: String? = nil) {
        self.code = code
        self.message = message
        self.file = file
        self.field = field
        self.remedy = remedy
    }

    package var description: String {
        var text = ""
        if let file { text += "\(file): " }
        if let field { text += "[\(field)] " }
        text += message
        if let remedy { text += " (remedy: \(remedy))" }
        return text
    }

    /// The same error, attributed to `file` if it names none yet.
    package func inFile(_ path: String) -> FacetError {
        var copy = self
        if copy.file == nil { copy.file = path }
        return copy
    }
}
