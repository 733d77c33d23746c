import Foundation
import Tensors

extension Tokenizer {
    /// Renders `messages` with the tokenizer's chat template, with the named special tokens
    /// (bos_token, eos_token, ...) defined as Hugging Face does. The template is parsed once.
    package func applyChatTemplate(_ messages: [ChatTemplate.Message], addGenerationPrompt: Bool = true) throws -> String {
        let template = try parsedChatTemplate()
        var variables: [String: TemplateValue] = [:]
        for (k, v) in templateTokens { variables[k] = .string(v) }
        return try template.render(messages: messages, addGenerationPrompt: addGenerationPrompt, variables: variables)
    }

    /// The roles a chat may use with this tokenizer's template: system, user and assistant,
    /// plus tool where the template mentions it.
    package var chatRoles: [String] {
        var roles = ["system", "user", "assistant"]
        if chatTemplate?.contains("tool") == true { roles.append("tool") }
        return roles
    }

    /// The prompt ids of a chat. The template's own text is encoded with its special tokens;
    /// a special token's text typed inside a message stays text (its characters are encoded
    /// as ordinary text) unless `parseSpecialInContent`, so a user cannot fake a turn. When
    /// no message holds such text the result is exactly `encode(rendered, addSpecialTokens:
    /// false)`, which is what Hugging Face's `apply_chat_template(tokenize=True)` gives.
    package func encodeChat(_ messages: [ChatTemplate.Message], addGenerationPrompt: Bool = true,
                           parseSpecialInContent: Bool = false, limit: Int? = nil) throws -> [Int32] {
        let allowed = chatRoles
        for (i, m) in messages.enumerated() where !allowed.contains(m.role) {
            throw FacetError(.invalidArgument, "messages[\(i)].role \"\(m.role)\" is not one of \(allowed.joined(separator: ", "))",
                             field: "messages", remedy: "use the roles the model's chat template knows")
        }
        let text = try applyChatTemplate(messages, addGenerationPrompt: addGenerationPrompt)
        let specials = addedTokens.filter(\.special).map(\.content).filter { !$0.isEmpty }
        let injected = messages.filter { m in specials.contains { m.content.contains($0) } }
        if let limit {
            guard minimumTokenCount(forUTF8Count: text.utf8.count) <= limit else { throw TokenLimitExceeded(limit: limit) }
        }
        guard !parseSpecialInContent, !injected.isEmpty else {
            if let limit { return try encode(text, addSpecialTokens: false, limit: limit) }
            return encode(text, addSpecialTokens: false)
        }
        // Find each such message's content in the rendered text, in order, and encode it as
        // plain text; everything else is encoded as usual.
        var ids: [Int32] = []
        var cursor = text.startIndex
        for m in injected {
            let content = m.content.trimmingCharacters(in: .whitespacesAndNewlines)
            guard let range = text.range(of: content, range: cursor..<text.endIndex) else {
                throw FacetError(.invalidArgument, "a message holds special-token text that the chat template rewrites",
                                 field: "messages", remedy: "remove special tokens such as \(specials.first ?? "") from the message text")
            }
            ids += encode(String(text[cursor..<range.lowerBound]), addSpecialTokens: false)
            ids += encodeOrdinary(String(text[range]), firstSegment: ids.isEmpty)
            cursor = range.upperBound
        }
        ids += encode(String(text[cursor...]), addSpecialTokens: false)
        if let limit, ids.count > limit { throw TokenLimitExceeded(limit: limit) }
        return ids
    }
}
