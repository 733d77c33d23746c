/// A dense row-major fp32 matrix: `rows x cols`, element (r, c) at `data[r * cols + c]`.
/// Linear weights use the checkpoint's `[out_features, in_features]` orientation.
package struct Matrix: Sendable {
    package let rows: Int
    package let cols: Int
    package var data: [Float]

    package init(rows: Int, cols: Int, data: [Float]) {
        precondition(data.count == rows * cols, "Matrix data count \(data.count) != \(rows)x\(cols)")
        self.rows = rows
        self.cols = cols
        self.data = data
    }

    package init(zeros rows: Int, _ cols: Int) {
        self.init(rows: rows, cols: cols, data: [Float](repeating: 0, count: rows * cols))
    }

    package subscript(row: Int, col: Int) -> Float {
        get { data[row * cols + col] }
        set { data[row * cols + col] = newValue }
    }

    /// The transpose, `[cols, rows]`.
    package func transposed() -> Matrix {
        var out = Matrix(zeros: cols, rows)
        for r in 0..<rows { for c in 0..<cols { out.data[c * rows + r] = data[r * cols + c] } }
        return out
    }

    /// A copy of one row.
    package func row(_ r: Int) -> ArraySlice<Float> { data[(r * cols)..<((r + 1) * cols)] }

    /// Rows `range` as a new matrix `[range.count, cols]`.
    package func rows(_ range: Range<Int>) -> Matrix {
        precondition(range.lowerBound >= 0 && range.upperBound <= rows, "rows \(range) of \(rows)")
        return Matrix(rows: range.count, cols: cols, data: Array(data[(range.lowerBound * cols)..<(range.upperBound * cols)]))
    }

    /// Columns `range` as a new matrix `[rows, range.count]`.
    package func columns(_ range: Range<Int>) -> Matrix {
        precondition(range.lowerBound >= 0 && range.upperBound <= cols, "columns \(range) of \(cols)")
        var out = [Float](repeating: 0, count: rows * range.count)
        for r in 0..<rows {
            for (j, c) in range.enumerated() { out[r * range.count + j] = data[r * cols + c] }
        }
        return Matrix(rows: rows, cols: range.count, data: out)
    }
}
