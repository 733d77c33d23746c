import Foundation
import Loading
import Tensors
import Testing
import TestSupport
import Tokenization
import Training

/// Template formatting against the reference's ids and masks on the SmolLM2 tokenizer.
@Suite struct PromptTemplateTests {
    static let tokenizer = try! TokenizerLoader.loadHuggingFace(directory: Fixtures.path("smollm2/hf-tokenizer"))!

    static func config() throws -> PromptTemplateConfig {
        try JSONDecoder().decode(PromptTemplateConfig.self, from: Data(contentsOf: URL(fileURLWithPath: Fixtures.path("tuning/template_config.json"))))
    }

    @Test func everyRecordMatchesTheReference() throws {
        let golden = try Fixtures.json("tuning/template_golden.json")
        let config = try Self.config()
        let template = try PromptTemplate(config)
        let eos = Int32(golden["eos_token_id"] as! Int)
        let data = try TrainingData.load(path: Fixtures.path("tuning/records.jsonl"), template: template, tokenizer: Self.tokenizer,
                                         eos: eos, maxLength: golden["max_seq_length"] as! Int)
        let cases = (golden["cases"] as! [[String: Any]]).filter { !($0["skipped"] as! Bool) }
        #expect(data.skipped == golden["n_skipped"] as! Int)
        #expect(data.examples.count == cases.count)
        #expect(data.truncated == cases.filter { $0["truncated"] as! Bool }.count && data.truncated > 0)
        for (e, c) in zip(data.examples, cases) {
            #expect(e.tokens == ints(c["input_ids"]), "line \(c["line"]!)")
            #expect(e.labels == ints(c["labels"]), "line \(c["line"]!)")
        }
        // The same through `format`, with the prompt / answer split and the mask.
        for c in cases {
            let record = (c["record"] as! [String: Any]).compactMapValues { $0 as? String }
            let f = try #require(template.format(record, tokenizer: Self.tokenizer, eos: eos, maxLength: golden["max_seq_length"] as! Int))
            #expect(f.promptIDs == ints(c["prompt_ids"]) && f.answerIDs == ints(c["answer_ids"]) && f.labelMask == ints(c["label_mask"]))
            #expect(f.truncatedTokens == c["n_context_tokens_removed"] as! Int)
        }
    }

    @Test func virtualPromptsAndMisplacedAnswersAreRefused() throws {
        var config = try Self.config()
        config.promptTemplate = "<|VIRTUAL_PROMPT_0|> " + config.promptTemplate
        let e = #expect(throws: FacetError.self) { try PromptTemplate(config) }
        #expect(e?.remedy?.contains("remove '<|VIRTUAL_PROMPT_0|>'") == true, "\(e?.description ?? "")")
        config = try Self.config()
        config.promptTemplate = "Answer: {answer} Question: {question}"
        #expect(throws: FacetError.self) { try PromptTemplate(config) }
        config = try Self.config()
        config.truncateField = "nope"
        #expect(throws: FacetError.self) { try PromptTemplate(config) }
    }

    @Test func badRecordsNameTheirLine() throws {
        let template = try PromptTemplate(try Self.config())
        let dir = try Fixtures.temporaryDirectory()
        for (body, needle) in [("{\"context\": \"a\", \"question\": \"b\", \"answer\": \"c\"}\n{\"context\": \"a\", \"answer\": \"c\"}", "line 2: the record has no \"question\""),
                               ("{\"context\": \"a\", \"question\": 3, \"answer\": \"c\"}", "line 1: \"question\" must be a string"),
                               ("\n\n{not json", "line 3: not a JSON object")] {
            let path = dir + "/bad.jsonl"
            try body.write(toFile: path, atomically: true, encoding: .utf8)
            let e = #expect(throws: FacetError.self) {
                try TrainingData.load(path: path, template: template, tokenizer: Self.tokenizer, eos: 2, maxLength: 64)
            }
            #expect(e?.message.contains(needle) == true, "\(e?.description ?? "")")
        }
    }

    @Test func chatRecordsUseTheChatTemplateAndLearnTheAnswer() throws {
        let dir = try Fixtures.temporaryDirectory()
        let path = dir + "/chat.jsonl"
        try #"{"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]}"#
            .write(toFile: path, atomically: true, encoding: .utf8)
        let data = try TrainingData.load(path: path, template: nil, tokenizer: Self.tokenizer, eos: 2, maxLength: 256)
        let e = try #require(data.examples.first)
        let prompt = try Self.tokenizer.encodeChat([.init(role: "user", content: "Capital of France?")], addGenerationPrompt: true)
        #expect(Array(e.tokens.prefix(prompt.count)) == prompt)
        #expect(Array(e.tokens.dropFirst(prompt.count)) == Self.tokenizer.encode("Paris.", addSpecialTokens: false) + [2])
        #expect(e.labels.prefix(prompt.count).allSatisfy { $0 == -100 } && e.labels.last == 2)
    }
}
