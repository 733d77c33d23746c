import Foundation
import NIOCore
import Tensors

/// A tensor of the KServe v2 protocol (Triton's HTTP API): JSON `data` or the binary
/// tensor extension (`binary_data_size`, bytes after the JSON header).
struct KServeTensor {
    enum Values {
        case ints([Int64])        // BOOL, INT8..INT64, UINT8..UINT32 (UINT64 below 2^63)
        case floats([Double])     // FP16, BF16, FP32, FP64
        case bytes([[UInt8]])     // BYTES
    }

    var name: String
    var datatype: String
    var shape: [Int]
    var values: Values

    var count: Int {
        switch values {
        case .ints(let v): v.count
        case .floats(let v): v.count
        case .bytes(let v): v.count
        }
    }

    static let elementBytes: [String: Int] = [
        "BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
        "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8,
    ]

    static func bad(_ message: String) -> KServeError { KServeError(message) }

    /// Decodes one input of the request: `data` from JSON, or `binary` when the input
    /// declares `binary_data_size`.
    static func decode(_ object: [String: Any], binary: UnsafeRawBufferPointer?) throws -> KServeTensor {
        guard let name = object["name"] as? String else { throw bad("an input has no 'name'") }
        guard let datatype = object["datatype"] as? String else { throw bad("input '\(name)' has no 'datatype'") }
        guard let rawShape = object["shape"] as? [Any] else { throw bad("input '\(name)' has no 'shape'") }
        let shape = try rawShape.map { v -> Int in
            guard let d = Checked.jsonInt(v), d >= 0, d < 1 << 31 else { throw bad("input '\(name)' has a bad shape \(rawShape)") }
            return d
        }
        guard let count = Checked.product(shape), count <= 1 << 28 else { throw bad("input '\(name)': shape \(shape) is too large") }
        var tensor = KServeTensor(name: name, datatype: datatype, shape: shape, values: .ints([]))
        if let binary {
            tensor.values = try fromBinary(binary, datatype: datatype, count: count, name: name)
        } else {
            guard let data = object["data"] else { throw bad("input '\(name)' has neither 'data' nor 'binary_data_size'") }
            var flat: [Any] = []
            flatten(data, into: &flat)
            guard flat.count == count else {
                throw bad("input '\(name)' has \(flat.count) values for shape \(shape)")
            }
            tensor.values = try fromJSON(flat, datatype: datatype, name: name)
        }
        guard tensor.count == count else { throw bad("input '\(name)' has \(tensor.count) values for shape \(shape)") }
        return tensor
    }

    static func flatten(_ value: Any, into out: inout [Any]) {
        if let list = value as? [Any] {
            for v in list { flatten(v, into: &out) }
        } else {
            out.append(value)
        }
    }

    static func fromJSON(_ flat: [Any], datatype: String, name: String) throws -> Values {
        switch datatype {
        case "BOOL":
            return .ints(try flat.map { v in
                guard let n = v as? NSNumber, String(cString: n.objCType) == "c" else { throw bad("input '\(name)' (BOOL) holds \(v)") }
                return n.boolValue ? 1 : 0
            })
        case "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64":
            return .ints(try flat.map { v in
                if let i = Checked.jsonInt(v) { return Int64(i) }
                // The binary and gRPC forms refuse these too (the values are kept as Int64).
                if datatype == "UINT64", v is UInt64 { throw bad("input '\(name)': a UINT64 value is beyond 2^63") }
                throw bad("input '\(name)' (\(datatype)) holds \(v), not an integer")
            })
        case "FP16", "BF16", "FP32", "FP64":
            return .floats(try flat.map { v in
                guard let n = v as? NSNumber, String(cString: n.objCType) != "c" else {
                    throw bad("input '\(name)' (\(datatype)) holds \(v), not a number")
                }
                return n.doubleValue
            })
        case "BYTES":
            return .bytes(try flat.map { v in
                guard let s = v as? String else { throw bad("input '\(name)' (BYTES) holds \(v), not a string") }
                return Array(s.utf8)
            })
        default:
            throw bad("input '\(name)' has an unknown datatype \(datatype)")
        }
    }

    static func fromBinary(_ raw: UnsafeRawBufferPointer, datatype: String, count: Int, name: String) throws -> Values {
        if datatype == "BYTES" {
            var items: [[UInt8]] = []
            var offset = 0
            while offset < raw.count {
                guard raw.count - offset >= 4 else { throw bad("input '\(name)': truncated BYTES element") }
                let n = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
                offset += 4
                guard n <= raw.count - offset else { throw bad("input '\(name)': a BYTES element runs past its data") }
                items.append(Array(raw[offset..<(offset + n)]))
                offset += n
            }
            return .bytes(items)
        }
        guard let size = elementBytes[datatype] else { throw bad("input '\(name)' has an unknown datatype \(datatype)") }
        guard let need = Checked.multiply(count, size), need == raw.count else {
            throw bad("input '\(name)': binary_data_size \(raw.count) does not hold \(count) \(datatype) values")
        }
        func load<T: FixedWidthInteger>(_: T.Type, _ i: Int) -> T { T(littleEndian: raw.loadUnaligned(fromByteOffset: i * size, as: T.self)) }
        switch datatype {
        case "BOOL", "UINT8": return .ints((0..<count).map { Int64(load(UInt8.self, $0)) })
        case "INT8": return .ints((0..<count).map { Int64(load(Int8.self, $0)) })
        case "UINT16": return .ints((0..<count).map { Int64(load(UInt16.self, $0)) })
        case "INT16": return .ints((0..<count).map { Int64(load(Int16.self, $0)) })
        case "UINT32": return .ints((0..<count).map { Int64(load(UInt32.self, $0)) })
        case "INT32": return .ints((0..<count).map { Int64(load(Int32.self, $0)) })
        case "INT64": return .ints((0..<count).map { load(Int64.self, $0) })
        case "UINT64":
            return .ints(try (0..<count).map {
                guard let v = Int64(exactly: load(UInt64.self, $0)) else { throw bad("input '\(name)': a UINT64 value is beyond 2^63") }
                return v
            })
        case "FP16": return .floats((0..<count).map { Double(HalfFloat.fromF16(load(UInt16.self, $0))) })
        case "BF16": return .floats((0..<count).map { Double(HalfFloat.fromBF16(load(UInt16.self, $0))) })
        case "FP32": return .floats((0..<count).map { Double(Float(bitPattern: load(UInt32.self, $0))) })
        default: return .floats((0..<count).map { Double(bitPattern: load(UInt64.self, $0)) })
        }
    }

    // Typed reads with the input's name in errors.
    func ints() throws -> [Int64] {
        guard case .ints(let v) = values else { throw Self.bad("input '\(name)' must be an integer tensor, found \(datatype)") }
        return v
    }
    func floats() throws -> [Double] {
        switch values {
        case .floats(let v): return v
        case .ints(let v): return v.map(Double.init)
        case .bytes: throw Self.bad("input '\(name)' must be numeric, found \(datatype)")
        }
    }
    func strings() throws -> [String] {
        guard case .bytes(let v) = values else { throw Self.bad("input '\(name)' must be BYTES, found \(datatype)") }
        return v.map { String(decoding: $0, as: UTF8.self) }
    }
    func scalarInt() throws -> Int64 {
        let v = try ints()
        guard v.count == 1 else { throw Self.bad("input '\(name)' must hold one value, found \(v.count)") }
        return v[0]
    }
    /// One integer within `range`; outside it the error names the input and the range
    /// (every integer a request sends is checked where it is decoded, never narrowed blind).
    func scalarInt(in range: ClosedRange<Int64>) throws -> Int64 {
        let v = try scalarInt()
        guard range.contains(v) else {
            throw Self.bad("input '\(name)' must be between \(range.lowerBound) and \(range.upperBound), got \(v)")
        }
        return v
    }
    func scalarFloat() throws -> Double {
        let v = try floats()
        guard v.count == 1 else { throw Self.bad("input '\(name)' must hold one value, found \(v.count)") }
        return v[0]
    }
    func scalarBool() throws -> Bool { try scalarInt() != 0 }
}

/// An error of the KServe routes: `{"error": "..."}` with 400 (or `status`).
struct KServeError: Error {
    var message: String
    var status: Int = 400
    init(_ message: String, status: Int = 400) {
        self.message = message
        self.status = status
    }
}

/// An output tensor of a response, written as JSON `data` or binary.
struct KServeOutput {
    var name: String
    var datatype: String
    var shape: [Int]
    var ints: [Int32] = []
    var strings: [String] = []

    func binaryData() -> [UInt8] {
        if datatype == "BYTES" {
            var out: [UInt8] = []
            for s in strings {
                let b = Array(s.utf8)
                withUnsafeBytes(of: UInt32(b.count).littleEndian) { out.append(contentsOf: $0) }
                out += b
            }
            return out
        }
        var out: [UInt8] = []
        out.reserveCapacity(ints.count * 4)
        for v in ints { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        return out
    }

    func json(binarySize: Int?) -> [String: Any] {
        var o: [String: Any] = ["name": name, "datatype": datatype, "shape": shape]
        if let binarySize {
            o["parameters"] = ["binary_data_size": binarySize]
        } else {
            o["data"] = datatype == "BYTES" ? strings as [Any] : ints.map { Int($0) } as [Any]
        }
        return o
    }
}
