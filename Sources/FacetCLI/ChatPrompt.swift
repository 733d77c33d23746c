import Tokenization

enum ChatPrompt {
    static func render(tokenizer: Tokenizer, user: String, system: String?) throws -> String {
        var messages: [ChatTemplate.Message] = []
        if let system { messages.append(.init(role: "system", content: system)) }
        messages.append(.init(role: "user", content: user))
        return try tokenizer.applyChatTemplate(messages, addGenerationPrompt: true)
    }
}
