import Foundation
import Formats
import Tensors
import Testing
import TestSupport

/// Crafted headers whose sizes overflow, go negative or claim more than the file holds:
/// each is refused with an error before anything is read or allocated (these once crashed
/// the server, or trapped).
@Suite struct HostileFileTests {
    /// An adapter's file read into memory keeps its values when the file is truncated and
    /// rewritten afterwards (a mapping would fault with SIGBUS on the next read).
    @Test func filesReadIntoMemorySurviveTruncation() throws {
        let dir = try Fixtures.temporaryDirectory()
        let path = dir + "/adapter_model.safetensors"
        try FileManager.default.copyItem(atPath: Fixtures.path("tiny_llama_untied/adapters/plain_qv/adapter_model.safetensors"), toPath: path)
        let file = try SafetensorsFile(path: path, inMemory: true)
        let name = file.names.sorted()[0]
        let before = try file.floats(name)
        #expect(truncate(path, 0) == 0)
        try Data("rewritten".utf8).write(to: URL(fileURLWithPath: path))
        #expect(try file.floats(name) == before)
        // A file cut short is refused cleanly on the next read, naming it.
        let cut = dir + "/cut.safetensors"
        try Data(try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("tiny_llama_untied/adapters/plain_qv/adapter_model.safetensors"))).prefix(100)).write(to: URL(fileURLWithPath: cut))
        #expect(throws: FacetError.self) { try SafetensorsFile(path: cut, inMemory: true) }
    }

    @Test func checkedArithmeticReportsOverflow() {
        #expect(Checked.product([4_611_686_018_427_387_904 + 4608, 4]) == nil)
        #expect(Checked.product([3, -1]) == nil)
        #expect(Checked.product([]) == 1)
        #expect(Checked.product([1 << 20, 1 << 20]) == 1 << 40)
        #expect(Checked.bytes([1 << 61], elementBytes: 8) == nil)
        #expect(Checked.add(Int.max, 1) == nil)
        let json = try! JSONSerialization.jsonObject(with: Data("[1, 1.5, true, 4294967301, 1e300, 18446744073709551615, 2.0]".utf8)) as! [Any]
        #expect(json.map(Checked.jsonInt) == [1, nil, nil, 4_294_967_301, nil, nil, 2])
    }

    /// The issue's reproduction: the shape's byte count wraps to the 18,432-byte range.
    @Test func safetensorsShapeOverflowIsRefused() throws {
        let json = #"{"w":{"dtype":"F32","shape":[4611686018427392512,1],"data_offsets":[0,18432]}}"#
        let path = try Fixtures.temporaryDirectory() + "/overflow.safetensors"
        try (SafetensorsTests.header(json) + Data(count: 18432)).write(to: URL(fileURLWithPath: path))
        #expect {
            try SafetensorsFile(path: path)
        } throws: { error in
            (error as? FacetError)?.code == .invalidFile && (error as? FacetError)?.field == "w"
        }
    }

    @Test(arguments: [
        #"{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#,
        #"{"w":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}"#,
        #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,1e300]}}"#,
        #"{"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}"#,
        #"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
    ])
    func safetensorsNumbersMustBeExactSizes(json: String) throws {
        let path = try Fixtures.temporaryDirectory() + "/numbers.safetensors"
        try (SafetensorsTests.header(json) + Data(count: 8)).write(to: URL(fileURLWithPath: path))
        #expect(throws: FacetError.self) { try SafetensorsFile(path: path) }
    }

    static func npy(_ header: String, data: Int) -> Data {
        var h = header
        while (10 + h.utf8.count + 1) % 64 != 0 { h += " " }
        h += "\n"
        var d = Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0])
        withUnsafeBytes(of: UInt16(h.utf8.count).littleEndian) { d.append(contentsOf: $0) }
        return d + Data(h.utf8) + Data(count: data)
    }

    @Test(arguments: [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }",
        "{'descr': '<i8', 'fortran_order': False, 'shape': (2305843009213693952,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1000,), }",
    ])
    func npyShapesBeyondTheFileAreRefused(header: String) {
        let data = Self.npy(header, data: 16)
        #expect {
            try data.withUnsafeBytes { try NpyArray.parse($0, path: "crafted.npy") }
        } throws: { error in
            (error as? FacetError)?.code == .invalidFile
        }
    }

    /// Found by scripts/fuzz: a ')' before the '(' once made an inverted range (a trap); the
    /// shape is the parenthesized one.
    @Test func npyCloseBeforeOpenParenthesis() throws {
        let data = Self.npy("{'descr': '<f2', 'fortran_order': False, 'shape': ), (2,), }", data: 4)
        let a = try data.withUnsafeBytes { try NpyArray.parse($0, path: "fuzzed.npy") }
        #expect(a.shape == [2])
    }

    /// A GGUF whose tensor dims multiply past Int (each below the 2^40 per-dimension cap).
    @Test func ggufDimensionOverflowIsRefused() throws {
        var d = Data()
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { d.append(contentsOf: $0) } }
        put(UInt32(0x4655_4747)); put(UInt32(3)); put(UInt64(1)); put(UInt64(0))
        put(UInt64(1)); d.append(contentsOf: Array("w".utf8))
        put(UInt32(4)); for _ in 0..<4 { put(UInt64((1 << 40) - 32)) }
        put(UInt32(0)); put(UInt64(0))
        d.append(Data(count: 64))
        let path = try Fixtures.temporaryDirectory() + "/overflow.gguf"
        try d.write(to: URL(fileURLWithPath: path))
        #expect {
            try GGUFFile(path: path)
        } throws: { error in
            (error as? FacetError)?.code == .invalidFile && (error as? FacetError)?.field == "w"
        }
    }
}

/// The restricted unpickler against crafted pickles.
@Suite struct HostilePickleTests {
    /// A ZIP of stored entries, as torch.save writes (CRCs left zero: the reader ignores them).
    static func zip(_ entries: [(String, [UInt8])]) -> Data {
        var out = Data(), central = Data()
        func put<T: FixedWidthInteger>(_ v: T, _ d: inout Data) { withUnsafeBytes(of: v.littleEndian) { d.append(contentsOf: $0) } }
        for (name, bytes) in entries {
            let offset = UInt32(out.count), n = Array(name.utf8)
            put(UInt32(0x0403_4B50), &out); put(UInt16(20), &out); put(UInt16(0), &out); put(UInt16(0), &out)
            put(UInt32(0), &out); put(UInt32(0), &out); put(UInt32(bytes.count), &out); put(UInt32(bytes.count), &out)
            put(UInt16(n.count), &out); put(UInt16(0), &out); out.append(contentsOf: n); out.append(contentsOf: bytes)
            put(UInt32(0x0201_4B50), &central); put(UInt16(20), &central); put(UInt16(20), &central); put(UInt16(0), &central)
            put(UInt16(0), &central); put(UInt32(0), &central); put(UInt32(0), &central)
            put(UInt32(bytes.count), &central); put(UInt32(bytes.count), &central)
            put(UInt16(n.count), &central); put(UInt16(0), &central); put(UInt16(0), &central)
            put(UInt16(0), &central); put(UInt16(0), &central); put(UInt32(0), &central); put(offset, &central)
            central.append(contentsOf: n)
        }
        let directory = UInt32(out.count)
        out.append(central)
        put(UInt32(0x0605_4B50), &out); put(UInt16(0), &out); put(UInt16(0), &out)
        put(UInt16(entries.count), &out); put(UInt16(entries.count), &out)
        put(UInt32(central.count), &out); put(directory, &out); put(UInt16(0), &out)
        return out
    }

    func read(_ pickle: [UInt8]) throws -> [String: TorchCheckpoint.Tensor] {
        let path = try Fixtures.temporaryDirectory() + "/adapter_model.bin"
        try Self.zip([("archive/data.pkl", pickle)]).write(to: URL(fileURLWithPath: path))
        return try TorchCheckpoint.read(try MappedFile(path: path))
    }

    /// A million nested tuples: releasing such a value once recursed past the stack.
    @Test func deepNestingIsRefused() throws {
        let pickle: [UInt8] = [0x80, 0x02, 0x29] + [UInt8](repeating: 0x85, count: 1_000_000) + [0x2E]
        #expect {
            try read(pickle)
        } throws: { error in
            (error as? FacetError)?.message.contains("nests") == true
        }
    }

    @Test(arguments: [
        [UInt8]([0x80, 0x02, 0x2E]),                         // STOP on an empty stack
        [0x80, 0x02, 0x7D, 0x85, 0x73, 0x2E],                // SETITEM with too few values
        [0x80, 0x02, 0x68, 0x07, 0x2E],                      // BINGET of a missing memo
        [0x80, 0x02, 0x8A, 0xFF],                            // LONG1 running past the end
        [0x80, 0x02, 0x58, 0xFF, 0xFF, 0xFF, 0x7F],          // BINUNICODE longer than the file
    ])
    func malformedPicklesAreErrors(pickle: [UInt8]) {
        #expect(throws: FacetError.self) { try read(pickle) }
    }
}
