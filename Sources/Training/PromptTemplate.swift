import Foundation
import Tensors
import Tokenization

/// The article's (NeMo's) prompt-template file for LoRA tuning:
/// `{"taskname": "squad", "prompt_template": "Context: {context}\n\nQuestion: {question}\n\nAnswer:{answer}",
///   "truncate_field": "context", "answer_only_loss": true, "answer_field": "answer"}`.
package struct PromptTemplateConfig: Codable, Sendable, Equatable {
    package var taskname: String?
    package var promptTemplate: String
    package var totalVirtualTokens: Int?
    package var virtualTokenSplits: [Int]?
    package var truncateField: String?
    package var answerOnlyLoss: Bool?
    package var answerField: String
    package var maxSeqLength: Int?

    enum CodingKeys: String, CodingKey {
        case taskname, promptTemplate = "prompt_template", totalVirtualTokens = "total_virtual_tokens"
        case virtualTokenSplits = "virtual_token_splits", truncateField = "truncate_field"
        case answerOnlyLoss = "answer_only_loss", answerField = "answer_field", maxSeqLength = "max_seq_length"
    }

    package init(promptTemplate: String, answerField: String, truncateField: String? = nil, answerOnlyLoss: Bool = true) {
        self.promptTemplate = promptTemplate
        self.answerField = answerField
        self.truncateField = truncateField
        self.answerOnlyLoss = answerOnlyLoss
    }
}

/// One example made from a record: `input_ids = prompt_ids + answer_ids + [eos]`, the
/// label mask (1 on the tokens the loss counts) and the labels (-100 elsewhere).
package struct FormattedExample: Sendable, Equatable {
    package var promptIDs: [Int32]
    package var answerIDs: [Int32]
    package var inputIDs: [Int32]
    package var labelMask: [Int32]
    /// Tokens removed from the end of the truncate field.
    package var truncatedTokens: Int

    package var labels: [Int32] { zip(inputIDs, labelMask).map { $1 == 1 ? $0 : -100 } }
    package var example: TrainingExample { TrainingExample(tokens: inputIDs, labels: labels) }
}

/// A parsed prompt template. Segments are the literal text between placeholders and the
/// placeholders themselves; the spaces directly before a placeholder belong to it (as NeMo's
/// GPTSFTDataset splits them), and each segment is tokenized on its own.
package struct PromptTemplate: Sendable {
    package enum Segment: Sendable, Equatable {
        case literal(String)
        /// A record field, with the spaces that precede it in the template.
        case field(name: String, leading: String)
    }

    package let config: PromptTemplateConfig
    package let segments: [Segment]
    package var fields: [String] { segments.compactMap { if case .field(let n, _) = $0 { n } else { nil } } }

    package init(_ config: PromptTemplateConfig) throws {
        self.config = config
        let text = config.promptTemplate
        if let r = text.range(of: #"<\|VIRTUAL_PROMPT_\d+\|>"#, options: .regularExpression) {
            throw FacetError(.invalidConfig, "the template holds the p-tuning placeholder \(text[r]); LoRA tuning uses no virtual tokens",
                             field: "prompt_template",
                             remedy: "remove '\(text[r])' (and the space after it) from prompt_template, and set total_virtual_tokens to 0")
        }
        if let n = config.totalVirtualTokens, n != 0 {
            throw FacetError(.invalidConfig, "total_virtual_tokens is \(n); LoRA tuning uses no virtual tokens", field: "total_virtual_tokens",
                             remedy: "set it to 0 (or remove it)")
        }
        var segments: [Segment] = []
        var rest = Substring(text)
        while let open = rest.firstIndex(of: "{") {
            guard let close = rest[open...].firstIndex(of: "}") else {
                throw FacetError(.invalidConfig, "a '{' without its '}'", field: "prompt_template", remedy: "placeholders look like {context}")
            }
            let name = String(rest[rest.index(after: open)..<close])
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                throw FacetError(.invalidConfig, "placeholder {\(name)} is not a field name", field: "prompt_template",
                                 remedy: "use letters, digits and _ inside braces")
            }
            var literal = String(rest[..<open])
            var leading = ""
            while literal.hasSuffix(" ") {
                literal.removeLast()
                leading += " "
            }
            if !literal.isEmpty { segments.append(.literal(literal)) }
            segments.append(.field(name: name, leading: leading))
            rest = rest[rest.index(after: close)...]
        }
        if !rest.isEmpty { segments.append(.literal(String(rest))) }
        self.segments = segments
        let names = segments.compactMap { if case .field(let n, _) = $0 { n } else { nil } }
        guard let last = names.last, last == config.answerField else {
            throw FacetError(.invalidConfig, "the answer field \"\(config.answerField)\" must be the template's last placeholder (found \(names.map { "{\($0)}" }.joined(separator: ", ")))",
                             field: "answer_field", remedy: "end prompt_template with {\(config.answerField)}")
        }
        guard names.filter({ $0 == last }).count == 1 else {
            throw FacetError(.invalidConfig, "{\(last)} appears more than once", field: "prompt_template")
        }
        if let t = config.truncateField, !names.dropLast().contains(t) {
            throw FacetError(.invalidConfig, "truncate_field \"\(t)\" is not a prompt placeholder", field: "truncate_field",
                             remedy: "name one of \(names.dropLast().joined(separator: ", ")), or leave it out")
        }
    }

    /// The example for one record (fields by name), or nil when it cannot fit
    /// `maxLength` even with the truncate field emptied. `prefix` are tokens the tokenizer
    /// puts first (BOS); `eos` is appended after the answer.
    package func format(_ record: [String: String], tokenizer: Tokenizer, eos: Int32, maxLength: Int) -> FormattedExample? {
        var prompt: [[Int32]] = []
        var truncateIndex: Int?
        var answer: [Int32] = []
        var inAnswer = false
        for segment in segments {
            switch segment {
            case .literal(let text):
                let ids = tokenizer.encode(text, addSpecialTokens: false)
                if inAnswer { answer += ids } else { prompt.append(ids) }
            case .field(let name, let leading):
                let ids = tokenizer.encode(leading + (record[name] ?? ""), addSpecialTokens: false)
                if name == config.answerField {
                    inAnswer = true
                    answer += ids
                } else {
                    if name == config.truncateField { truncateIndex = prompt.count }
                    prompt.append(ids)
                }
            }
        }
        let prefix = tokenizer.prefixIDs
        var total = prefix.count + prompt.reduce(0) { $0 + $1.count } + answer.count + 1
        var removed = 0
        if total > maxLength {
            guard let i = truncateIndex, prompt[i].count >= total - maxLength else { return nil }
            removed = total - maxLength
            prompt[i].removeLast(removed)
            total = maxLength
        }
        let promptIDs = prefix + prompt.flatMap { $0 }
        let inputIDs = promptIDs + answer + [eos]
        let answerOnly = config.answerOnlyLoss ?? true
        let mask = inputIDs.indices.map { i -> Int32 in answerOnly ? (i >= promptIDs.count ? 1 : 0) : (i == 0 && !prefix.isEmpty ? 0 : 1) }
        return FormattedExample(promptIDs: promptIDs, answerIDs: answer, inputIDs: inputIDs, labelMask: mask, truncatedTokens: removed)
    }
}
