import Tensors

extension Tokenizer {
    /// Renders `messages` with the tokenizer's chat template, with the named special tokens
    /// (bos_token, eos_token, ...) defined as Hugging Face does.
    public func applyChatTemplate(_ messages: [ChatTemplate.Message], addGenerationPrompt: Bool = true) throws -> String {
        guard let source = chatTemplate else {
            throw FacetError(.notFound, "the tokenizer has no chat template", field: "chat_template",
                             remedy: "drop --chat, or use a tokenizer_config.json with a chat_template")
        }
        let template = try ChatTemplate(source)
        var variables: [String: TemplateValue] = [:]
        for (k, v) in templateTokens { variables[k] = .string(v) }
        return try template.render(messages: messages, addGenerationPrompt: addGenerationPrompt, variables: variables)
    }
}
