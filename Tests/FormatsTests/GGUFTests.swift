import Foundation
import Formats
import Tensors
import Testing
import TestSupport

/// GGUF parsing and dequantization against gguf-py (scripts/fixtures/make_gguf_fixtures.py).
@Suite struct GGUFTests {
    @Test func dequantizationMatchesGGUFPy() throws {
        let file = try GGUFFile(path: Fixtures.path("gguf/quants.gguf"))
        let expected = try Fixtures.json("gguf/quants.json")["tensors"] as! [String: Any]
        #expect(expected.count == 8)
        for (name, info) in expected {
            let want = floats((info as! [String: Any])["values"])
            let got = try file.floats(name)
            #expect(got.count == want.count, "\(name)")
            let worst = zip(got, want).map { abs($0 - $1) }.max() ?? .infinity
            #expect(worst == 0, "\(name): max difference \(worst)")
        }
        #expect(file.tensors["t_Q4_K"]?.type == .q4_K)
        #expect(file.tensors["t_Q6_K"]?.dims == [512, 2])
    }

    @Test func truncatedFileNamesTheFile() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("gguf/quants.gguf")))
        let dir = try Fixtures.temporaryDirectory()
        for cut in [3, 20, 200, data.count - 100] {
            let path = dir + "/cut\(cut).gguf"
            try data.prefix(cut).write(to: URL(fileURLWithPath: path))
            #expect {
                try GGUFFile(path: path)
            } throws: { error in
                let e = error as? FacetError
                return e?.code == .invalidFile && e?.file == path && e?.remedy != nil
            }
        }
    }

    @Test func wrongMagicIsRefused() throws {
        let dir = try Fixtures.temporaryDirectory()
        let path = dir + "/not.gguf"
        try Data("hello world, not a gguf at all".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: FacetError.self) { try GGUFFile(path: path) }
    }
}
