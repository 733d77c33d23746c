import Foundation
import Tensors
import Testing
import TestSupport

/// The committed fixtures are the ones the reference produced: every file's SHA-256 (by
/// Facet's own SHA256, itself checked against a known vector) matches MANIFEST.sha256.
@Suite struct FixtureManifestTests {
    @Test func sha256KnownVectors() {
        #expect(Array("abc".utf8).withUnsafeBytes { SHA256.hex($0) } == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect([UInt8]().withUnsafeBytes { SHA256.hex($0) } == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let million = [UInt8](repeating: 0x61, count: 1_000_000)
        #expect(million.withUnsafeBytes { SHA256.hex($0) } == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test func everyFixtureMatchesTheManifest() throws {
        let manifest = try String(contentsOfFile: Fixtures.path("MANIFEST.sha256"), encoding: .utf8)
        var checked = 0
        for line in manifest.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let path = Fixtures.root + "/" + parts[1].trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "./", with: "")
            let file = try MappedFile(path: path)
            #expect(SHA256.hex(file.bytes) == String(parts[0]), "\(path)")
            checked += 1
        }
        #expect(checked > 40)
    }
}
