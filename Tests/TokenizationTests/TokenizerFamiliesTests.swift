import Foundation
import Testing
import TestSupport
import Tokenization
import Tensors

/// Tokenizers of the Llama 2 (SentencePiece BPE, byte fallback), Llama 3, Qwen2 and
/// Metaspace families against Hugging Face `tokenizers` (scripts/fixtures/make_tokenizer_fixtures.py).
@Suite struct TokenizerFamiliesTests {
    @Test(arguments: ["llama2_spm", "llama3_bytelevel", "qwen2_bytelevel", "metaspace_first"])
    func idsAndDecodingMatchHuggingFace(name: String) throws {
        let dir = Fixtures.path("tokenizers/\(name)")
        let tokenizer = try Tokenizer.fromHuggingFace(tokenizerJSON: try Data(contentsOf: URL(fileURLWithPath: dir + "/tokenizer.json")),
                                                      source: dir + "/tokenizer.json")
        let golden = try Fixtures.json("tokenizers/\(name)/golden.json")
        for c in golden["cases"] as! [[String: Any]] {
            let text = c["text"] as! String
            let ids = ints(c["ids"])
            #expect(tokenizer.encode(text, addSpecialTokens: false) == ids, "\(name): \(text.debugDescription)")
            #expect(tokenizer.encode(text, addSpecialTokens: true) == ints(c["ids_with_special_tokens"]), "\(name): \(text.debugDescription)")
            #expect(tokenizer.decode(ids) == c["decoded"] as! String, "\(name): decode \(text.debugDescription)")
            #expect(tokenizer.decode(ids, skipSpecialTokens: true) == c["decoded_skip_special"] as! String, "\(name)")
        }
    }

    @Test func corruptTokenizerFilesNameTheProblem() throws {
        #expect { try Tokenizer.fromHuggingFace(tokenizerJSON: Data("{oops".utf8), source: "t.json") } throws: {
            ($0 as? FacetError)?.file == "t.json"
        }
        #expect { try Tokenizer.fromHuggingFace(tokenizerJSON: Data(#"{"model": {"type": "WordPiece", "vocab": {}}}"#.utf8), source: "t.json") } throws: {
            ($0 as? FacetError)?.code == .unsupported && ($0 as? FacetError)?.field == "model.type"
        }
        #expect { try Tokenizer.fromHuggingFace(tokenizerJSON: Data(#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}"#.utf8), source: "t.json") } throws: {
            ($0 as? FacetError)?.field == "model.merges"
        }
    }
}
