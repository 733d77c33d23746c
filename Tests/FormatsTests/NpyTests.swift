import Foundation
import Formats
import Tensors
import Testing
import TestSupport

@Suite struct NpyTests {
    @Test func roundTrip() throws {
        for kind in [NpyArray.Kind.f32, .f16, .bf16, .i32, .i64] {
            let a = NpyArray(shape: [2, 1, 3], kind: kind, values: [1, -2, 3, 4, 5, -6])
            let data = try a.encoded()
            let b = try data.withUnsafeBytes { try NpyArray.parse($0, path: "mem.npy") }
            #expect(b.shape == [2, 1, 3])
            #expect(b.kind == kind)
            #expect(b.values == a.values)
        }
    }

    @Test func readsNumpyWrittenFiles() throws {
        // Written by numpy (scripts/fixtures/make_npy_fixtures.py).
        let a = try NpyArray.read(path: Fixtures.path("npy/ids_int32.npy"))
        #expect(a.shape == [1, 3] && a.kind == .i32 && a.values == [1, 2, 3])
        let b = try NpyArray.read(path: Fixtures.path("npy/ids_int64_1d.npy"))
        #expect(b.shape == [4] && b.kind == .i64 && b.values == [5, 6, 7, 8])
        let c = try NpyArray.read(path: Fixtures.path("npy/f16_2x2.npy"))
        #expect(c.shape == [2, 2] && c.kind == .f16 && c.values == [0.5, -1, 2, 65504])
    }

    @Test func truncatedDataIsAnError() throws {
        let data = try NpyArray(shape: [100], kind: .f32, values: Array(repeating: 1, count: 100)).encoded().prefix(200)
        #expect(throws: FacetError.self) { try data.withUnsafeBytes { try NpyArray.parse($0, path: "t.npy") } }
    }
}
