import Tensors

/// A bounds-checked little-endian reader over a byte buffer. Running off the end is an
/// `invalidFile` error naming the file and what was being read.
struct ByteCursor {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var offset: Int = 0

    init(_ bytes: UnsafeRawBufferPointer, path: String, offset: Int = 0) {
        self.bytes = bytes
        self.path = path
        self.offset = offset
    }

    func truncated(_ what: String) -> FacetError {
        FacetError(.invalidFile, "file ends while reading \(what) at byte \(offset) of \(bytes.count)", file: path,
                   remedy: "the file is truncated or corrupt; download it again")
    }

    mutating func need(_ n: Int, _ what: String) throws {
        guard n >= 0, offset >= 0, offset <= bytes.count, n <= bytes.count - offset else { throw truncated(what) }
    }

    mutating func read<T: FixedWidthInteger>(_ type: T.Type, _ what: String) throws -> T {
        try need(MemoryLayout<T>.size, what)
        let v = T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }

    mutating func readFloat(_ what: String) throws -> Float { Float(bitPattern: try read(UInt32.self, what)) }
    mutating func readDouble(_ what: String) throws -> Double { Double(bitPattern: try read(UInt64.self, what)) }

    mutating func readBytes(_ n: Int, _ what: String) throws -> UnsafeRawBufferPointer {
        try need(n, what)
        let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)])
        offset += n
        return slice
    }
}
