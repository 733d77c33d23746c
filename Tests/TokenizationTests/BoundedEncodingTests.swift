import Foundation
import Loading
import Testing
import TestSupport
import Tokenization

/// Tokenizing work bounded by the context: the heap merge (long words) against its
/// reference twin (the pairwise scan), and `encode(_:limit:)` against `encode`.
@Suite struct BoundedEncodingTests {
    static let tokenizer = try! TokenizerLoader.loadHuggingFace(directory: Fixtures.path("smollm2/hf-tokenizer"))!

    @Test func heapMergeGivesTheScanMergesIDs() throws {
        let tok = Self.tokenizer
        var random = SplitMix(seed: 52)
        // Alphabets that merge a lot (repeats, common pairs) and little (rare letters).
        for alphabet in ["ab", "aaaa b", "thequickbrownfox", "0123456789", "zqxj", "ééàç"] {
            let symbols = alphabet.map { tok.id(of: String($0)) ?? tok.id(of: "a")! }
            for length in [2, 3, 17, 65, 66, 130, 513] {
                let word = (0..<length).map { _ in symbols[Int(random.next() % UInt64(symbols.count))] }
                #expect(tok.mergeByHeap(word) == tok.mergeByScan(word), "alphabet \(alphabet), length \(length)")
            }
        }
        // A perturbed twin would be caught: merging never leaves a mergeable repeat here.
        let a = tok.id(of: "a")!
        #expect(tok.mergeByHeap(Array(repeating: a, count: 200)).count < 200)
    }

    @Test func limitedEncodingEqualsEncodingBelowTheLimit() throws {
        let tok = Self.tokenizer
        for text in ["Hello, world!", "What is the capital of France?", String(repeating: "token ", count: 300), "ab" + String(repeating: "x", count: 5000)] {
            let ids = tok.encode(text)
            #expect(try tok.encode(text, limit: ids.count) == ids)
            #expect(throws: TokenLimitExceeded.self) { try tok.encode(text, limit: ids.count - 1) }
        }
    }

    @Test func textThatCannotFitIsRefusedByItsLength() throws {
        let tok = Self.tokenizer
        #expect(tok.maxInputBytesPerToken >= 1)
        let text = String(repeating: "a", count: (100 + 1) * tok.maxInputBytesPerToken)
        #expect(tok.minimumTokenCount(forUTF8Count: text.utf8.count) > 100)
        #expect(throws: TokenLimitExceeded.self) { try tok.encode(text, limit: 100) }
        // The bound is a lower bound: real texts never tokenize below it.
        for sample in ["Hello, world!", String(repeating: " ", count: 400), String(repeating: "😀", count: 50), "ab" + String(repeating: "x", count: 5000)] {
            #expect(tok.encode(sample, addSpecialTokens: false).count >= tok.minimumTokenCount(forUTF8Count: sample.utf8.count))
        }
    }
}
