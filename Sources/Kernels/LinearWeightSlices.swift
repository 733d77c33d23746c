import Tensors

/// Pieces of a weight for tensor parallelism: whole output rows (column-parallel layers)
/// or a range of input columns (row-parallel layers).
extension LinearWeight {
    /// Output rows `range`: `[range.count, cols]`. Compact formats share the bytes of the
    /// original (a memory-mapped file stays mapped, nothing is copied).
    package func rows(_ range: Range<Int>) throws -> LinearWeight {
        guard range.lowerBound >= 0, range.upperBound <= rows else {
            throw FacetError(.invalidArgument, "rows \(range) of a weight with \(rows) rows", field: "rows")
        }
        if let dense {
            return LinearWeight(Matrix(rows: range.count, cols: cols, data: Array(dense[(range.lowerBound * cols)..<(range.upperBound * cols)])))
        }
        let stride = format.rowBytes(cols)
        let bytes = UnsafeRawBufferPointer(rebasing: store!.bytes[(range.lowerBound * stride)..<(range.upperBound * stride)])
        return try LinearWeight(format: format, rows: range.count, cols: cols, store: ByteStore(bytes: bytes, owner: store!))
    }

    /// Input columns `range`: `[rows, range.count]`. A compact weight keeps its format when
    /// the range falls on block boundaries (the blocks are copied); otherwise the piece is
    /// dequantized to fp32 (the same values; products then run the fp32 kernel).
    package func columns(_ range: Range<Int>) throws -> LinearWeight {
        guard range.lowerBound >= 0, range.upperBound <= cols, !range.isEmpty else {
            throw FacetError(.invalidArgument, "columns \(range) of a weight with \(cols) columns", field: "columns")
        }
        let block = format.blockValues
        guard isCompact, range.lowerBound % block == 0, range.count % block == 0 else {
            return LinearWeight(dequantized().columns(range))
        }
        let stride = format.rowBytes(cols), width = format.rowBytes(range.count), skip = format.rowBytes(range.lowerBound)
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(rows * width, 1), alignment: 64)
        defer { copy.deallocate() }
        let source = store!.bytes.baseAddress!
        for r in 0..<rows {
            (copy.baseAddress! + r * width).copyMemory(from: source + r * stride + skip, byteCount: width)
        }
        return try LinearWeight(format: format, rows: rows, cols: range.count,
                                store: ByteStore(copying: UnsafeRawBufferPointer(rebasing: copy[0..<(rows * width)])))
    }
}
