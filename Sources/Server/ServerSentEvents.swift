import Foundation
import NIOCore

/// One Server-Sent Event carrying a JSON object: `data: {...}\n\n`. The characters that
/// some line readers take for line breaks although SSE does not (U+0085, U+2028, U+2029,
/// e.g. Python's `str.splitlines`, which requests' `iter_lines` uses) are written as JSON
/// escapes, so that a generated one cannot cut an event in two for such a client.
func serverSentEvent(_ object: [String: Any], options: JSONSerialization.WritingOptions = [.sortedKeys]) throws -> ByteBuffer {
    let data = try JSONSerialization.data(withJSONObject: object, options: options)
    var buffer = ByteBuffer(string: "data: ")
    buffer.reserveCapacity(data.count + 16)
    data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
        let b = raw.bindMemory(to: UInt8.self)
        var i = 0, start = 0
        while i < b.count {
            var escape: String?
            if b[i] == 0xC2, i + 1 < b.count, b[i + 1] == 0x85 { escape = "\\u0085" }
            else if b[i] == 0xE2, i + 2 < b.count, b[i + 1] == 0x80, b[i + 2] == 0xA8 || b[i + 2] == 0xA9 {
                escape = b[i + 2] == 0xA8 ? "\\u2028" : "\\u2029"
            }
            if let escape {
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: raw[start..<i]))
                buffer.writeString(escape)
                i += escape == "\\u0085" ? 2 : 3
                start = i
            } else {
                i += 1
            }
        }
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: raw[start..<b.count]))
    }
    buffer.writeString("\n\n")
    return buffer
}
