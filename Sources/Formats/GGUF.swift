import Tensors

/// A GGUF file (versions 2 and 3): magic "GGUF", version, tensor count, metadata key/values,
/// tensor infos, then tensor data aligned to `general.alignment` (default 32).
///
/// Dimensions follow ggml: `dims[0]` is the contiguous one, so a 2-D tensor with
/// `dims = [cols, rows]` is a row-major `[rows, cols]` matrix, i.e. HF's `[out, in]`.
package struct GGUFFile: Sendable {
    package indirect enum Value: Sendable, Equatable {
        case uint(UInt64), int(Int64), float(Double), bool(Bool), string(String), array([Value])

        package var int: Int? {
            switch self {
            case .uint(let v): Int(exactly: v)
            case .int(let v): Int(exactly: v)
            case .float(let v): Int(exactly: v)
            default: nil
            }
        }
        package var double: Double? {
            switch self {
            case .uint(let v): Double(v)
            case .int(let v): Double(v)
            case .float(let v): v
            default: nil
            }
        }
        package var string: String? { if case .string(let s) = self { s } else { nil } }
        package var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
        package var array: [Value]? { if case .array(let a) = self { a } else { nil } }
    }

    package struct TensorInfo: Sendable {
        package let name: String
        /// ggml order: `dims[0]` is contiguous.
        package let dims: [Int]
        package let type: GGMLType
        /// Absolute byte range inside the file.
        package let range: Range<Int>
        /// Checked when the file was read (the product fits and the data lies in the file).
        package var elementCount: Int { Checked.product(dims) ?? 0 }
    }

    package let path: String
    package let file: MappedFile
    package let version: UInt32
    package let metadata: [String: Value]
    package let tensors: [String: TensorInfo]
    package let tensorOrder: [String]

    package init(path: String) throws {
        try self.init(file: try MappedFile(path: path))
    }

    package init(file: MappedFile) throws {
        self.file = file
        self.path = file.path
        var c = ByteCursor(file.bytes, path: file.path)
        let magic = try c.read(UInt32.self, "magic")
        guard magic == 0x4655_4747 else {  // "GGUF" little-endian
            throw FacetError(.invalidFile, "not a GGUF file (bad magic)", file: path,
                             remedy: "pass a .gguf model file or a Hugging Face model directory")
        }
        version = try c.read(UInt32.self, "version")
        guard version == 2 || version == 3 else {
            throw FacetError(.unsupported, "GGUF version \(version) is not supported", file: path, field: "version",
                             remedy: "convert the model with a current llama.cpp (GGUF v3)")
        }
        let tensorCount = try c.read(UInt64.self, "tensor_count")
        let kvCount = try c.read(UInt64.self, "metadata_kv_count")
        guard tensorCount < 1_000_000, kvCount < 1_000_000 else {
            throw FacetError(.invalidFile, "implausible counts (\(tensorCount) tensors, \(kvCount) keys)", file: path,
                             remedy: "the file is corrupt; download it again")
        }
        var metadata: [String: Value] = [:]
        for _ in 0..<kvCount {
            let key = try Self.readString(&c, "metadata key")
            let type = try c.read(UInt32.self, "type of \(key)")
            metadata[key] = try Self.readValue(&c, type: type, key: key, depth: 0)
        }
        self.metadata = metadata
        var infos: [(String, [Int], GGMLType, UInt64)] = []
        for i in 0..<tensorCount {
            let name = try Self.readString(&c, "tensor name \(i)")
            let nDims = try c.read(UInt32.self, "dims of \(name)")
            guard nDims >= 1, nDims <= 4 else {
                throw FacetError(.invalidFile, "tensor has \(nDims) dimensions", file: path, field: name,
                                 remedy: "the file is corrupt; download it again")
            }
            var dims: [Int] = []
            for _ in 0..<nDims {
                let d = try c.read(UInt64.self, "dims of \(name)")
                guard d < (1 << 40) else { throw FacetError(.invalidFile, "dimension \(d) is implausible", file: path, field: name) }
                dims.append(Int(d))
            }
            let rawType = try c.read(UInt32.self, "type of \(name)")
            guard let type = GGMLType(rawValue: rawType) else {
                throw FacetError(.unsupported, "ggml tensor type \(rawType) is not supported", file: path, field: name,
                                 remedy: "use a GGUF quantized as F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K or Q6_K")
            }
            let offset = try c.read(UInt64.self, "offset of \(name)")
            infos.append((name, dims, type, offset))
        }
        let alignment = metadata["general.alignment"]?.int ?? 32
        guard alignment > 0, alignment & (alignment - 1) == 0 else {
            throw FacetError(.invalidFile, "general.alignment \(alignment) is not a power of two", file: path, field: "general.alignment")
        }
        let dataStart = (c.offset + alignment - 1) / alignment * alignment
        var tensors: [String: TensorInfo] = [:]
        var order: [String] = []
        for (name, dims, type, offset) in infos {
            guard let count = Checked.product(dims), count <= file.count.multipliedReportingOverflow(by: 8).partialValue else {
                throw FacetError(.invalidFile, "dimensions \(dims) describe more elements than the \(file.count)-byte file can hold",
                                 file: path, field: name, remedy: "the file is corrupt; download it again")
            }
            guard count % type.blockSize == 0, dims[0] % type.blockSize == 0 else {
                throw FacetError(.invalidFile, "row length \(dims[0]) is not a multiple of the \(type) block size \(type.blockSize)",
                                 file: path, field: name)
            }
            let size = Checked.multiply(count / type.blockSize, type.blockBytes) ?? Int.max
            let begin = offset < UInt64(Int.max / 2) ? dataStart + Int(offset) : Int.max
            guard begin <= file.count, size <= file.count - begin else {
                throw FacetError(.invalidFile, "tensor data at offset \(offset) (\(size) bytes) lies past the end of the \(file.count)-byte file",
                                 file: path, field: name, remedy: "the file is truncated; download it again")
            }
            tensors[name] = TensorInfo(name: name, dims: dims, type: type, range: begin..<(begin + size))
            order.append(name)
        }
        self.tensors = tensors
        self.tensorOrder = order
    }

    static func readString(_ c: inout ByteCursor, _ what: String) throws -> String {
        let n = try c.read(UInt64.self, "\(what) length")
        guard n < UInt64(c.bytes.count) else { throw c.truncated(what) }
        let raw = try c.readBytes(Int(n), what)
        return String(decoding: raw, as: UTF8.self)
    }

    static func readValue(_ c: inout ByteCursor, type: UInt32, key: String, depth: Int) throws -> Value {
        switch type {
        case 0: return .uint(UInt64(try c.read(UInt8.self, key)))
        case 1: return .int(Int64(try c.read(Int8.self, key)))
        case 2: return .uint(UInt64(try c.read(UInt16.self, key)))
        case 3: return .int(Int64(try c.read(Int16.self, key)))
        case 4: return .uint(UInt64(try c.read(UInt32.self, key)))
        case 5: return .int(Int64(try c.read(Int32.self, key)))
        case 6: return .float(Double(try c.readFloat(key)))
        case 7: return .bool(try c.read(UInt8.self, key) != 0)
        case 8: return .string(try readString(&c, key))
        case 9:
            guard depth < 4 else { throw FacetError(.invalidFile, "arrays nested too deeply", file: c.path, field: key) }
            let elementType = try c.read(UInt32.self, key)
            let n = try c.read(UInt64.self, key)
            guard n <= UInt64(c.bytes.count - c.offset) else { throw c.truncated(key) }
            var items: [Value] = []
            items.reserveCapacity(Int(min(n, 1 << 16)))
            for _ in 0..<n { items.append(try readValue(&c, type: elementType, key: key, depth: depth + 1)) }
            return .array(items)
        case 10: return .uint(try c.read(UInt64.self, key))
        case 11: return .int(try c.read(Int64.self, key))
        case 12: return .float(try c.readDouble(key))
        default:
            throw FacetError(.invalidFile, "unknown metadata value type \(type)", file: c.path, field: key,
                             remedy: "the file is corrupt or from a newer GGUF version")
        }
    }

    package func tensor(_ name: String) throws -> TensorInfo {
        guard let t = tensors[name] else {
            throw FacetError(.notFound, "tensor not found", file: path, field: name,
                             remedy: "the GGUF does not hold this architecture's weights")
        }
        return t
    }

    /// The tensor dequantized to fp32, in ggml order (row-major with `dims[0]` contiguous).
    package func floats(_ name: String) throws -> [Float] {
        let t = try tensor(name)
        let raw = UnsafeRawBufferPointer(rebasing: file.bytes[t.range])
        return GGMLQuant.dequantize(raw, type: t.type, count: t.elementCount)
    }

    package func string(_ key: String) -> String? { metadata[key]?.string }
    package func int(_ key: String) -> Int? { metadata[key]?.int }
    package func double(_ key: String) -> Double? { metadata[key]?.double }
}
