import Foundation
import Loading
import Testing
import TestSupport
import Tokenization

/// Facet's Jinja subset against jinja2 renders made as transformers does
/// (scripts/fixtures/make_chat_template_fixtures.py).
@Suite struct ChatTemplateTests {
    nonisolated(unsafe) static let fixture = try! Fixtures.json("chat_templates.json")
    nonisolated(unsafe) static let cases = fixture["cases"] as! [[String: Any]]

    @Test(arguments: 0..<cases.count)
    func rendersLikeJinja2(index: Int) throws {
        let c = Self.cases[index]
        let source = (Self.fixture["templates"] as! [String: String])[c["template"] as! String]!
        let conversation = (Self.fixture["conversations"] as! [String: [[String: String]]])[c["conversation"] as! String]!
        let messages = conversation.map { ChatTemplate.Message(role: $0["role"]!, content: $0["content"]!) }
        let template = try ChatTemplate(source)
        let render = {
            try template.render(messages: messages, addGenerationPrompt: c["add_generation_prompt"] as! Bool,
                                variables: ["bos_token": .string("<s>"), "eos_token": .string("</s>")])
        }
        if let expected = c["text"] as? String {
            let got = try render()
            #expect(got == expected, "\(c["template"]!) / \(c["conversation"]!): got \(got.debugDescription), want \(expected.debugDescription)")
        } else {
            #expect(throws: (any Error).self) { try render() }
        }
    }

    /// The SmolLM2 chat prompt of the tokenizer golden: text and ids.
    @Test func smolLM2ChatPromptIDs() throws {
        let golden = try Fixtures.json("smollm2/tokenizer_golden.json")["chat_template_example"] as! [String: Any]
        let tokenizer = try TokenizerLoader.loadHuggingFace(directory: Fixtures.path("smollm2/hf-tokenizer"))!
        let messages = (golden["messages"] as! [[String: String]]).map { ChatTemplate.Message(role: $0["role"]!, content: $0["content"]!) }
        let text = try tokenizer.applyChatTemplate(messages, addGenerationPrompt: true)
        #expect(text == golden["text"] as! String)
        #expect(tokenizer.encode(text, addSpecialTokens: false) == ints(golden["ids"]))
    }

    @Test func unsupportedConstructsAreRefusedByName() {
        #expect(throws: (any Error).self) { try ChatTemplate("{% macro x() %}{% endmacro %}") }
        #expect(throws: (any Error).self) { try ChatTemplate("{{ unclosed ") }
        #expect(throws: (any Error).self) {
            try ChatTemplate("{{ messages|frobnicate }}").render(messages: [], addGenerationPrompt: false)
        }
    }
}

@Suite struct StreamingDetokenizerTests {
    /// Streaming CJK, emoji and accented text token by token yields valid pieces whose
    /// concatenation is the full decode.
    @Test func piecesAreWholeCharacters() throws {
        let tokenizer = try TokenizerLoader.loadHuggingFace(directory: Fixtures.path("smollm2/hf-tokenizer"))!
        for text in ["日本の首都は東京です。", "Café 🎉 naïve", "한국어 문장입니다."] {
            let ids = tokenizer.encode(text, addSpecialTokens: false)
            var stream = StreamingDetokenizer(tokenizer: tokenizer)
            var pieces: [String] = []
            for id in ids { pieces.append(stream.append(id)) }
            pieces.append(stream.finish())
            #expect(pieces.joined() == tokenizer.decode(ids))
            #expect(!pieces.joined().contains("\u{FFFD}"))
        }
    }
}
