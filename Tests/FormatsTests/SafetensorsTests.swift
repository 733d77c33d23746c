import Foundation
import Formats
import Tensors
import Testing
import TestSupport

@Suite struct SafetensorsTests {
    func write(_ data: Data) throws -> String {
        let path = try Fixtures.temporaryDirectory() + "/t.safetensors"
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func roundTripF32F16BF16() throws {
        let values: [Float] = [0, 1, -2.5, 3.25, 1e-3, -65504]
        for dtype in [SafetensorsFile.DType.f32, .f16, .bf16] {
            let data = try SafetensorsWriter.encode([.init(name: "a", shape: [2, 3], values: values)], dtype: dtype)
            let file = try SafetensorsFile(path: try write(data))
            let got = try file.floats("a")
            #expect(try file.entry("a").shape == [2, 3])
            for (g, v) in zip(got, values) {
                let tolerance: Float = dtype == .f32 ? 0 : dtype == .f16 ? 1e-3 : 1e-2
                #expect(abs(g - v) <= tolerance * max(1, abs(v)), "\(dtype) \(g) vs \(v)")
            }
        }
    }

    @Test func readsTheFixtureModel() throws {
        let file = try SafetensorsFile(path: Fixtures.path("tiny_llama_untied/model/model.safetensors"))
        #expect(try file.entry("model.embed_tokens.weight").shape == [320, 64])
    }

    /// Each corruption is reported as invalidFile naming the file (and the tensor when known).
    @Test(arguments: [
        ("short", Data([1, 2, 3])),
        ("header too long", Data([0xFF, 0xFF, 0, 0, 0, 0, 0, 0]) + Data("{}".utf8)),
        ("bad json", Data([5, 0, 0, 0, 0, 0, 0, 0]) + Data("{nope".utf8)),
        ("offsets past end", header(#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#) + Data(count: 8)),
        ("size mismatch", header(#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#) + Data(count: 8)),
        ("missing shape", header(#"{"w":{"dtype":"F32","data_offsets":[0,8]}}"#) + Data(count: 8)),
    ])
    func corruptFilesGiveClearErrors(name: String, data: Data) throws {
        let path = try write(data)
        #expect {
            try SafetensorsFile(path: path)
        } throws: { error in
            guard let e = error as? FacetError else { return false }
            return e.code == .invalidFile && e.file == path && e.remedy != nil
        }
    }

    @Test func unsupportedDtypeIsNamed() throws {
        let path = try write(Self.header(#"{"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}"#) + Data(count: 4))
        #expect {
            try SafetensorsFile(path: path)
        } throws: { error in
            (error as? FacetError)?.code == .unsupported && (error as? FacetError)?.field == "w"
        }
    }

    static func header(_ json: String) -> Data {
        var d = Data()
        withUnsafeBytes(of: UInt64(json.utf8.count).littleEndian) { d.append(contentsOf: $0) }
        return d + Data(json.utf8)
    }
}

private func header(_ json: String) -> Data { SafetensorsTests.header(json) }
