/// The next-token logits of one forward step, in storage reused from step to step.
///
/// Row r is the logits of the batch's r-th `logitRows` token: `width(r)` values (the base
/// vocabulary, or an adapter's extended one). The storage grows to the largest step seen
/// and is then reused, so a step loop does not allocate its logits. Not thread-safe: one
/// owner (e.g. the engine thread) fills and reads it.
package final class Logits: @unchecked Sendable {
    private var storage: UnsafeMutablePointer<Float>
    private var capacity: Int
    private var widths: [Int] = []
    package private(set) var rows = 0
    private var stride = 0

    package init() {
        capacity = 0
        storage = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    }

    deinit { storage.deallocate() }

    /// The logits of row `r` (valid until the next step writes this object).
    package subscript(_ r: Int) -> UnsafeBufferPointer<Float> {
        precondition(r >= 0 && r < rows, "logit row \(r) of \(rows)")
        return UnsafeBufferPointer(start: storage + r * stride, count: widths[r])
    }

    /// Row `r` copied into an array.
    package func array(_ r: Int) -> [Float] { Array(self[r]) }

    /// Makes room for `rows` rows of at most `width` values (contents unspecified).
    func reset(rows: Int, width: Int) {
        let needed = rows * width
        if needed > capacity {
            storage.deallocate()
            capacity = needed + needed / 4
            storage = UnsafeMutablePointer<Float>.allocate(capacity: capacity)
        }
        if widths.count < rows { widths.append(contentsOf: repeatElement(0, count: rows - widths.count)) }
        self.rows = rows
        stride = width
    }

    /// All rows as one `[rows, width]` block to be written in place (every row `width`
    /// values; `width` must be the one given to `reset`).
    func allRows(width: Int) -> UnsafeMutablePointer<Float> {
        precondition(width == stride, "rows written in place must have the step's width")
        for r in 0..<rows { widths[r] = width }
        return storage
    }

    /// Row `r` to be written in place with `width` values (at most the step's width).
    func row(_ r: Int, width: Int) -> UnsafeMutablePointer<Float> {
        precondition(width <= stride, "row of \(width) logits exceeds the step's width \(stride)")
        widths[r] = width
        return storage + r * stride
    }

    /// Writes row `r` (at most the width given to `reset`).
    func set(row r: Int, _ values: UnsafeBufferPointer<Float>) {
        precondition(values.count <= stride, "row of \(values.count) logits exceeds the step's width \(stride)")
        (storage + r * stride).update(from: values.baseAddress!, count: values.count)
        widths[r] = values.count
    }
}
