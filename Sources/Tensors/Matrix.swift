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
}
