import Foundation
import Formats
import Loading
import Testing
import TestSupport
import Tokenization

/// The SmolLM2 tokenizer against ids produced by Hugging Face `tokenizers`
/// (`smollm2/tokenizer_golden.json`), read both from tokenizer.json and from the GGUF.
@Suite struct SmolLM2TokenizerTests {
    nonisolated(unsafe) static let golden = try! Fixtures.json("smollm2/tokenizer_golden.json")
    nonisolated(unsafe) static let cases = (golden["cases"] as! [[String: Any]])
    static let hf = try! TokenizerLoader.loadHuggingFace(directory: Fixtures.path("smollm2/hf-tokenizer"))!

    @Test(arguments: 0..<cases.count)
    func hfTokenizerMatchesGoldenIDs(index: Int) {
        let c = Self.cases[index]
        let text = c["text"] as! String
        #expect(Self.hf.encode(text, addSpecialTokens: false) == ints(c["ids"]), "text: \(text.debugDescription)")
        #expect(Self.hf.encode(text, addSpecialTokens: true) == ints(c["ids_with_special_tokens"]))
        #expect(Self.hf.decode(ints(c["ids"])) == c["decoded"] as! String)
        #expect(Self.hf.decode(ints(c["ids"]), skipSpecialTokens: true) == c["decoded_skip_special"] as! String)
    }

    @Test func ggufTokenizerMatchesGoldenIDs() throws {
        guard let path = Fixtures.defaultModelFile else {
            Issue.record("default model not fetched: run scripts/setup")
            return
        }
        let tok = try TokenizerLoader.loadGGUF(try GGUFFile(path: path))
        for c in Self.cases {
            let text = c["text"] as! String
            #expect(tok.encode(text, addSpecialTokens: false) == ints(c["ids"]), "text: \(text.debugDescription)")
            #expect(tok.decode(ints(c["ids"])) == c["decoded"] as! String)
        }
        #expect(tok.chatTemplate == Self.hf.chatTemplate)
    }

    @Test func specialTokens() {
        let specials = Self.golden["special_tokens"] as! [String: Any]
        for (text, id) in specials {
            #expect(Self.hf.encode(text, addSpecialTokens: false) == [Int32((id as! NSNumber).intValue)])
            #expect(Self.hf.isSpecial(Int32((id as! NSNumber).intValue)))
        }
    }
}
