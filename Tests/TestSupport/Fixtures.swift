import Foundation

/// Locates the committed reference fixtures (`Tests/Fixtures`, copied from
/// `../shared/fixtures` and pinned by `MANIFEST.sha256`) and the repository root.
public enum Fixtures {
    /// The repository root, found from this file's location.
    public static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    public static var root: String { repositoryRoot + "/Tests/Fixtures" }

    public static func path(_ relative: String) -> String { root + "/" + relative }

    public static func json(_ relative: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path(relative)))
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw FixtureError.notAnObject(relative)
        }
        return object
    }

    public static var tinyModel: String { path("tiny_llama_untied/model") }

    /// The default model file if `scripts/setup` has fetched it (nil otherwise).
    public static var defaultModelFile: String? {
        let p = repositoryRoot + "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        return FileManager.default.fileExists(atPath: p) ? p : nil
    }

    public static func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "facet-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }
}

public enum FixtureError: Error {
    case notAnObject(String)
}

/// Converts a JSON number list to Floats / Int32s.
public func floats(_ any: Any?) -> [Float] { (any as? [Any] ?? []).map { Float(($0 as? NSNumber)?.doubleValue ?? .nan) } }
public func ints(_ any: Any?) -> [Int32] { (any as? [Any] ?? []).map { Int32(($0 as? NSNumber)?.intValue ?? -1) } }

/// Largest |a - b| / max(1, |b|) over the pair.
public func maxRelativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "length \(a.count) != \(b.count)")
    var worst: Float = 0
    for (x, y) in zip(a, b) { worst = max(worst, abs(x - y) / max(1, abs(y))) }
    return worst
}
