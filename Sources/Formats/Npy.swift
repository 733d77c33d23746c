import Foundation
import Tensors

/// NumPy `.npy` arrays (format versions 1-3, little-endian, C order).
package struct NpyArray: Sendable {
    package enum Kind: String, Sendable {
        case f32 = "<f4", f16 = "<f2", f64 = "<f8", bf16 = "|V2"
        case i8 = "|i1", u8 = "|u1", i16 = "<i2", u16 = "<u2", i32 = "<i4", u32 = "<u4", i64 = "<i8", u64 = "<u8"
    }

    package var shape: [Int]
    package var kind: Kind
    /// Values widened to Double (exact for every integer below 2^53 and every float kind).
    package var values: [Double]

    package init(shape: [Int], kind: Kind, values: [Double]) {
        self.shape = shape
        self.kind = kind
        self.values = values
    }

    package var isInteger: Bool { ![.f32, .f16, .f64, .bf16].contains(kind) }

    /// Reads the file into memory first (never a mapping that a rewrite could fault).
    package static func read(path: String) throws -> NpyArray {
        let file = try MappedFile(readingContentsOf: path)
        return try parse(file.bytes, path: path)
    }

    package static func parse(_ bytes: UnsafeRawBufferPointer, path: String) throws -> NpyArray {
        var c = ByteCursor(bytes, path: path)
        let magic = try c.readBytes(6, "magic")
        guard Array(magic) == [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59] else {
            throw FacetError(.invalidFile, "not a NumPy .npy file (bad magic)", file: path, remedy: "save the array with numpy.save")
        }
        let major = try c.read(UInt8.self, "version")
        _ = try c.read(UInt8.self, "version")
        let headerLength = major == 1 ? Int(try c.read(UInt16.self, "header length")) : Int(try c.read(UInt32.self, "header length"))
        let header = String(decoding: try c.readBytes(headerLength, "header"), as: UTF8.self)
        func field(_ key: String) -> String? {
            guard let r = header.range(of: "'\(key)':") else { return nil }
            return String(header[r.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
        guard let descrText = field("descr"), let q1 = descrText.firstIndex(where: { $0 == "'" || $0 == "\"" }) else {
            throw FacetError(.invalidFile, "header has no descr", file: path, field: "descr")
        }
        let afterQuote = descrText[descrText.index(after: q1)...]
        guard let q2 = afterQuote.firstIndex(where: { $0 == "'" || $0 == "\"" }) else {
            throw FacetError(.invalidFile, "header descr is malformed", file: path, field: "descr")
        }
        var descr = String(afterQuote[..<q2])
        if descr == "<V2" { descr = "|V2" }
        if descr == "|b1" { descr = "|u1" }
        guard let kind = Kind(rawValue: descr) else {
            throw FacetError(.unsupported, "array dtype \(descr) is not supported", file: path, field: "descr",
                             remedy: "save as little-endian float32/float16/bfloat16 or an integer type")
        }
        if let fortran = field("fortran_order"), fortran.hasPrefix("True") {
            throw FacetError(.unsupported, "Fortran-ordered arrays are not supported", file: path, field: "fortran_order",
                             remedy: "save with numpy.ascontiguousarray(a)")
        }
        guard let shapeText = field("shape"), let open = shapeText.firstIndex(of: "("), let close = shapeText[open...].firstIndex(of: ")") else {
            throw FacetError(.invalidFile, "header has no shape", file: path, field: "shape")
        }
        let dims = shapeText[shapeText.index(after: open)..<close].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        var shape: [Int] = []
        for d in dims {
            guard let v = Int(d), v >= 0, v < 1 << 48 else { throw FacetError(.invalidFile, "shape entry \(d) is not a size", file: path, field: "shape") }
            shape.append(v)
        }
        let size: Int
        switch kind {
        case .i8, .u8: size = 1
        case .f16, .bf16, .i16, .u16: size = 2
        case .f32, .i32, .u32: size = 4
        case .f64, .i64, .u64: size = 8
        }
        // Checked before anything is allocated: a header may claim more than the file holds.
        guard let count = Checked.product(shape), let byteCount = Checked.multiply(count, size),
              byteCount <= bytes.count - c.offset else {
            throw FacetError(.invalidFile, "shape \(shape) of \(descr) needs more data than the \(bytes.count - c.offset) bytes after the header",
                             file: path, field: "shape", remedy: "the file is truncated or its header is corrupt; save it again with numpy.save")
        }
        let data = try c.readBytes(byteCount, "data (\(count) elements of \(descr))")
        var values = [Double](repeating: 0, count: count)
        for i in 0..<count {
            let o = i * size
            switch kind {
            case .f32: values[i] = Double(Float(bitPattern: UInt32(littleEndian: data.loadUnaligned(fromByteOffset: o, as: UInt32.self))))
            case .f16: values[i] = Double(HalfFloat.fromF16(UInt16(littleEndian: data.loadUnaligned(fromByteOffset: o, as: UInt16.self))))
            case .bf16: values[i] = Double(HalfFloat.fromBF16(UInt16(littleEndian: data.loadUnaligned(fromByteOffset: o, as: UInt16.self))))
            case .f64: values[i] = Double(bitPattern: UInt64(littleEndian: data.loadUnaligned(fromByteOffset: o, as: UInt64.self)))
            case .i8: values[i] = Double(data.load(fromByteOffset: o, as: Int8.self))
            case .u8: values[i] = Double(data.load(fromByteOffset: o, as: UInt8.self))
            case .i16: values[i] = Double(Int16(littleEndian: data.loadUnaligned(fromByteOffset: o, as: Int16.self)))
            case .u16: values[i] = Double(UInt16(littleEndian: data.loadUnaligned(fromByteOffset: o, as: UInt16.self)))
            case .i32: values[i] = Double(Int32(littleEndian: data.loadUnaligned(fromByteOffset: o, as: Int32.self)))
            case .u32: values[i] = Double(UInt32(littleEndian: data.loadUnaligned(fromByteOffset: o, as: UInt32.self)))
            case .i64: values[i] = Double(Int64(littleEndian: data.loadUnaligned(fromByteOffset: o, as: Int64.self)))
            case .u64: values[i] = Double(UInt64(littleEndian: data.loadUnaligned(fromByteOffset: o, as: UInt64.self)))
            }
        }
        return NpyArray(shape: shape, kind: kind, values: values)
    }

    /// Encodes as a version 1.0 `.npy` (f32, f16, bf16 as |V2, i32 or i64).
    package func encoded() throws -> Data {
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(kind.rawValue)', 'fortran_order': False, 'shape': \(shapeText), }"
        let total = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - total % 64) % 64) + "\n"
        var out = Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0])
        withUnsafeBytes(of: UInt16(header.utf8.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: Array(header.utf8))
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        for v in values {
            switch kind {
            case .f32: put(Float(v).bitPattern)
            case .f16: put(HalfFloat.toF16(Float(v)))
            case .bf16: put(HalfFloat.toBF16(Float(v)))
            case .f64: put(v.bitPattern)
            case .i32: put(Int32(v))
            case .i64: put(Int64(v))
            default:
                throw FacetError(.unsupported, "writing \(kind.rawValue) arrays is not supported")
            }
        }
        return out
    }
}
