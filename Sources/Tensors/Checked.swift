import Foundation

/// Overflow-checked arithmetic for sizes, offsets and counts read from files or requests.
///
/// These use the `ReportingOverflow` operations, so they stay checked whatever the
/// optimisation flags (`-Ounchecked` removes the trap of `*` and `+`, not these reports).
package enum Checked {
    /// `a * b`, or nil when it does not fit an `Int`.
    @inlinable package static func multiply(_ a: Int, _ b: Int) -> Int? {
        let (v, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? nil : v
    }

    /// `a + b`, or nil when it does not fit an `Int`.
    @inlinable package static func add(_ a: Int, _ b: Int) -> Int? {
        let (v, overflow) = a.addingReportingOverflow(b)
        return overflow ? nil : v
    }

    /// The product of sizes (1 for none), or nil when a size is negative or the product
    /// does not fit an `Int`.
    @inlinable package static func product(_ sizes: [Int]) -> Int? {
        var p = 1
        for s in sizes {
            guard s >= 0, let next = multiply(p, s) else { return nil }
            p = next
        }
        return p
    }

    /// The byte count of `count` elements of `elementBytes` each, or nil on overflow.
    @inlinable package static func bytes(_ sizes: [Int], elementBytes: Int) -> Int? {
        product(sizes).flatMap { multiply($0, elementBytes) }
    }

    /// An integer read as a JSON/`Double` value converted exactly (no rounding, no trap on
    /// NaN, infinities or values beyond `Int`), or nil.
    @inlinable package static func exactInt(_ v: Double) -> Int? { Int(exactly: v) }

    /// A number decoded by `JSONSerialization` that is an integer exactly and fits an `Int`:
    /// nil for `true`/`false`, 1.5, 1e300 or 2^64-1 (which `intValue` would silently wrap,
    /// truncate or read as 1).
    package static func jsonInt(_ value: Any) -> Int? {
        guard let n = value as? NSNumber, String(cString: n.objCType) != "c" else { return nil }
        return value as? Int
    }
}
