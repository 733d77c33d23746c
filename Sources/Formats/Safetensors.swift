import Foundation
import Tensors

/// A safetensors file: `u64 little-endian header length N`, `N` bytes of JSON header
/// (`name -> {dtype, shape, data_offsets: [begin, end]}` plus optional `__metadata__`),
/// then the data. Offsets are relative to the end of the header.
package struct SafetensorsFile: Sendable {
    package enum DType: String, Sendable {
        case f32 = "F32", f16 = "F16", bf16 = "BF16", f64 = "F64"
        case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"

        package var byteSize: Int {
            switch self {
            case .f64, .i64: 8
            case .f32, .i32: 4
            case .f16, .bf16, .i16: 2
            case .i8, .u8, .bool: 1
            }
        }
    }

    package struct Entry: Sendable {
        package let name: String
        package let dtype: DType
        package let shape: [Int]
        /// Absolute byte range inside the file.
        package let range: Range<Int>
        /// Checked when the entry was read: the product fits and matches the byte range.
        package var elementCount: Int { Checked.product(shape) ?? 0 }
    }

    package let path: String
    package let file: MappedFile
    package let entries: [String: Entry]
    package let metadata: [String: String]

    /// `inMemory`: read the file into owned memory instead of mapping it (adapters, which
    /// may be rewritten while a server runs; see `MappedFile(readingContentsOf:)`).
    package init(path: String, inMemory: Bool = false) throws {
        let file = try inMemory ? MappedFile(readingContentsOf: path) : MappedFile(path: path)
        try self.init(file: file)
    }

    package init(file: MappedFile) throws {
        self.file = file
        self.path = file.path
        let bytes = file.bytes
        func bad(_ message: String, field: String? = nil) -> FacetError {
            FacetError(.invalidFile, message, file: file.path, field: field,
                       remedy: "the file is truncated or not safetensors; download or export it again")
        }
        guard bytes.count >= 8 else { throw bad("file has \(bytes.count) bytes, too short for a safetensors header") }
        let headerLength = Int(clamping: bytes.loadUnaligned(as: UInt64.self).littleEndian)
        guard headerLength > 1, headerLength <= bytes.count - 8, headerLength < 100_000_000 else {
            throw bad("header length \(headerLength) does not fit a file of \(bytes.count) bytes")
        }
        let headerData = Data(bytes[8..<(8 + headerLength)])
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: headerData)
        } catch {
            throw bad("header is not valid JSON (\(error.localizedDescription))")
        }
        guard let header = json as? [String: Any] else { throw bad("header is not a JSON object") }
        let dataStart = 8 + headerLength
        let dataCount = bytes.count - dataStart
        var entries: [String: Entry] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in header {
            if name == "__metadata__" {
                if let m = value as? [String: Any] {
                    for (k, v) in m { metadata[k] = "\(v)" }
                }
                continue
            }
            guard let info = value as? [String: Any] else { throw bad("entry is not an object", field: name) }
            guard let dtypeText = info["dtype"] as? String else { throw bad("missing dtype", field: name) }
            guard let dtype = DType(rawValue: dtypeText) else {
                throw FacetError(.unsupported, "tensor dtype \(dtypeText) is not supported", file: file.path, field: name,
                                 remedy: "store weights as F32, F16 or BF16")
            }
            guard let shapeAny = info["shape"] as? [Any] else { throw bad("missing shape", field: name) }
            let shape = shapeAny.compactMap(Self.exactSize)
            guard shape.count == shapeAny.count else { throw bad("shape is not a list of sizes", field: name) }
            guard let offsets = info["data_offsets"] as? [Any], offsets.count == 2,
                  let begin = Self.exactSize(offsets[0]), let end = Self.exactSize(offsets[1])
            else { throw bad("data_offsets must be [begin, end] of non-negative integers", field: name) }
            guard begin >= 0, end >= begin, end <= dataCount else {
                throw bad("data_offsets [\(begin), \(end)] fall outside the \(dataCount) data bytes", field: name)
            }
            guard let expected = Checked.bytes(shape, elementBytes: dtype.byteSize) else {
                throw bad("shape \(shape) holds more elements than any file can", field: name)
            }
            guard end - begin == expected else {
                throw bad("data is \(end - begin) bytes but shape \(shape) of \(dtypeText) needs \(expected)", field: name)
            }
            entries[name] = Entry(name: name, dtype: dtype, shape: shape, range: (dataStart + begin)..<(dataStart + end))
        }
        self.entries = entries
        self.metadata = metadata
    }

    /// A JSON number that is a non-negative integer exactly (not 1.5, not `true`, not 1e300).
    static func exactSize(_ value: Any) -> Int? {
        guard let v = Checked.jsonInt(value), v >= 0 else { return nil }
        return v
    }

    package var names: [String] { entries.keys.sorted() }

    package func entry(_ name: String) throws -> Entry {
        guard let e = entries[name] else {
            throw FacetError(.notFound, "tensor not found", file: path, field: name,
                             remedy: "the checkpoint does not match the expected architecture")
        }
        return e
    }

    /// The tensor's values widened to Float (F32, F16, BF16, F64 and integer types).
    package func floats(_ name: String) throws -> [Float] {
        let e = try entry(name)
        return Self.convert(file.bytes, e)
    }

    static func convert(_ bytes: UnsafeRawBufferPointer, _ e: Entry) -> [Float] {
        let n = e.elementCount
        let raw = UnsafeRawBufferPointer(rebasing: bytes[e.range])
        return [Float](unsafeUninitializedCapacity: n) { out, count in
            switch e.dtype {
            case .f32: for i in 0..<n { out[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))) }
            case .f16: for i in 0..<n { out[i] = HalfFloat.fromF16(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))) }
            case .bf16: for i in 0..<n { out[i] = HalfFloat.fromBF16(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))) }
            case .f64: for i in 0..<n { out[i] = Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)))) }
            case .i64: for i in 0..<n { out[i] = Float(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: i * 8, as: Int64.self))) }
            case .i32: for i in 0..<n { out[i] = Float(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: i * 4, as: Int32.self))) }
            case .i16: for i in 0..<n { out[i] = Float(Int16(littleEndian: raw.loadUnaligned(fromByteOffset: i * 2, as: Int16.self))) }
            case .i8: for i in 0..<n { out[i] = Float(raw.load(fromByteOffset: i, as: Int8.self)) }
            case .u8, .bool: for i in 0..<n { out[i] = Float(raw.load(fromByteOffset: i, as: UInt8.self)) }
            }
            count = n
        }
    }
}

/// Writes tensors as a safetensors file (F32, F16 or BF16), names sorted, 8-byte aligned header.
package enum SafetensorsWriter {
    package struct Tensor {
        package var name: String
        package var shape: [Int]
        package var values: [Float]
        package init(name: String, shape: [Int], values: [Float]) {
            self.name = name
            self.shape = shape
            self.values = values
        }
    }

    package static func encode(_ tensors: [Tensor], dtype: SafetensorsFile.DType = .f32, metadata: [String: String] = [:]) throws -> Data {
        guard [.f32, .f16, .bf16].contains(dtype) else {
            throw FacetError(.unsupported, "writing \(dtype.rawValue) is not supported", remedy: "use F32, F16 or BF16")
        }
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        let sorted = tensors.sorted { $0.name < $1.name }
        for t in sorted {
            guard t.shape.reduce(1, *) == t.values.count else {
                throw FacetError(.shapeMismatch, "tensor has \(t.values.count) values for shape \(t.shape)", field: t.name)
            }
            let size = t.values.count * dtype.byteSize
            header[t.name] = ["dtype": dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + size]] as [String: Any]
            offset += size
        }
        var headerData = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (8 + headerData.count) % 8 != 0 { headerData.append(0x20) }
        var out = Data()
        out.reserveCapacity(8 + headerData.count + offset)
        withUnsafeBytes(of: UInt64(headerData.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(headerData)
        for t in sorted {
            switch dtype {
            case .f32: t.values.withUnsafeBytes { out.append(contentsOf: $0) }
            case .f16: out.append(contentsOf: t.values.flatMap { withUnsafeBytes(of: HalfFloat.toF16($0).littleEndian) { Array($0) } })
            default: out.append(contentsOf: t.values.flatMap { withUnsafeBytes(of: HalfFloat.toBF16($0).littleEndian) { Array($0) } })
            }
        }
        return out
    }
}
