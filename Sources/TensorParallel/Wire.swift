import Adapters
import Kernels
import Llama
import Tensors

/// The bytes rank 0 broadcasts to the other ranks: little-endian integers and floats,
/// length-prefixed arrays. Reading checks every length against what is left, so a short or
/// damaged message is an error, never a crash.
package struct WireWriter {
    package init() {}
    package private(set) var bytes: [UInt8] = []

    package mutating func int(_ v: Int) { withUnsafeBytes(of: Int64(v).littleEndian) { bytes.append(contentsOf: $0) } }
    package mutating func float(_ v: Float) { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
    package mutating func string(_ s: String) { raw(Array(s.utf8)) }
    package mutating func raw(_ b: [UInt8]) {
        int(b.count)
        bytes.append(contentsOf: b)
    }
    package mutating func int32s(_ v: [Int32]) {
        int(v.count)
        v.withUnsafeBytes { bytes.append(contentsOf: $0) }    // x86-64 and arm64 are little-endian
    }
    package mutating func ints(_ v: [Int]) { int32s(v.map { Int32(truncatingIfNeeded: $0) }) }
    package mutating func floats(_ v: [Float]) {
        int(v.count)
        v.withUnsafeBytes { bytes.append(contentsOf: $0) }
    }
    package mutating func matrix(_ m: Matrix) {
        int(m.rows)
        int(m.cols)
        floats(m.data)
    }
    package mutating func optionalMatrix(_ m: Matrix?) {
        int(m == nil ? 0 : 1)
        if let m { matrix(m) }
    }
}

package struct WireReader {
    private let bytes: [UInt8]
    private var offset = 0

    package init(_ bytes: [UInt8]) { self.bytes = bytes }

    private static func short(_ what: String) -> FacetError {
        FacetError(.invalidFile, "a tensor-parallel message ends inside \(what)", remedy: "every rank must run the same facet build")
    }

    private mutating func take(_ n: Int, _ what: String) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= bytes.count - offset else { throw Self.short(what) }
        defer { offset += n }
        return bytes[offset..<(offset + n)]
    }

    package mutating func int() throws -> Int {
        let s = try take(8, "an integer")
        var v: UInt64 = 0
        for (i, b) in s.enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return Int(Int64(bitPattern: v))
    }
    package mutating func float() throws -> Float {
        let s = try take(4, "a float")
        var v: UInt32 = 0
        for (i, b) in s.enumerated() { v |= UInt32(b) << (8 * UInt32(i)) }
        return Float(bitPattern: v)
    }
    package mutating func count(_ width: Int, _ what: String) throws -> Int {
        let n = try int()
        guard n >= 0, n <= (bytes.count - offset) / width else { throw Self.short(what) }
        return n
    }
    package mutating func raw() throws -> [UInt8] { Array(try take(try count(1, "bytes"), "bytes")) }
    package mutating func string() throws -> String { String(decoding: try raw(), as: UTF8.self) }
    package mutating func int32s() throws -> [Int32] {
        let n = try count(4, "an Int32 array")
        let s = try take(n * 4, "an Int32 array")
        return s.withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }
    }
    package mutating func ints() throws -> [Int] { try int32s().map(Int.init) }
    package mutating func floats() throws -> [Float] {
        let n = try count(4, "a float array")
        let s = try take(n * 4, "a float array")
        return s.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }
    package mutating func matrix() throws -> Matrix {
        let rows = try int(), cols = try int()
        let data = try floats()
        guard rows >= 0, cols >= 0, rows.multipliedReportingOverflow(by: cols) == (data.count, false) else {
            throw FacetError(.invalidFile, "a tensor-parallel message holds a \(rows)x\(cols) matrix of \(data.count) values")
        }
        return Matrix(rows: rows, cols: cols, data: data)
    }
    package mutating func optionalMatrix() throws -> Matrix? { try int() == 0 ? nil : try matrix() }
    package var isAtEnd: Bool { offset == bytes.count }
}

/// What rank 0 asks of the other ranks.
enum WireCommand: Int {
    case makeCache = 1, freeCaches, loadAdapter, dropAdapter, forward, exit
}

extension ForwardBatch {
    package func encode(into w: inout WireWriter) {
        w.int32s(tokens)
        w.int32s(positions)
        w.int32s(sequences)
        w.int32s(adapterSlots)
        w.ints(logitRows)
        w.int(blockTables.count)
        for t in blockTables { w.int32s(t) }
        w.int32s(blockCopies.flatMap { [$0.source, $0.destination] })
    }

    package static func decode(from r: inout WireReader) throws -> ForwardBatch {
        var b = ForwardBatch()
        b.tokens = try r.int32s()
        b.positions = try r.int32s()
        b.sequences = try r.int32s()
        b.adapterSlots = try r.int32s()
        b.logitRows = try r.ints()
        let n = try r.count(8, "block tables")
        b.blockTables = try (0..<n).map { _ in try r.int32s() }
        let copies = try r.int32s()
        guard copies.count % 2 == 0 else { throw FacetError(.invalidFile, "rank 0 sent an odd list of block copies", remedy: "every rank must run the same facet build") }
        b.blockCopies = stride(from: 0, to: copies.count, by: 2).map { (copies[$0], copies[$0 + 1]) }
        return b
    }
}

extension LoRAAdapter {
    /// The whole adapter (every factor in its storage precision, tables, scales).
    package func encode(into w: inout WireWriter) {
        w.string(name)
        w.string(digest)
        w.int(pairs.count)
        for layer in pairs {
            w.int(layer.count)
            for (role, p) in layer.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                w.string(role.rawValue)
                w.float(p.scale)
                for m in [p.packedA, p.packedBT] {
                    w.string(m.precision.rawValue)
                    w.matrix(m.matrix)
                }
            }
        }
        w.int(embeddingLoRA == nil ? 0 : 1)
        if let e = embeddingLoRA {
            w.matrix(e.aT)
            w.matrix(e.b)
            w.float(e.scale)
        }
        w.optionalMatrix(embedTokens)
        w.optionalMatrix(lmHead)
    }

    package static func decode(from r: inout WireReader) throws -> LoRAAdapter {
        let name = try r.string(), digest = try r.string()
        let layers = try r.count(8, "adapter layers")
        var a = LoRAAdapter(name: name, digest: digest, layers: layers)
        for l in 0..<layers {
            let n = try r.count(8, "adapter pairs")
            for _ in 0..<n {
                let roleName = try r.string()
                guard let role = LinearRole(rawValue: roleName) else {
                    throw FacetError(.invalidFile, "a tensor-parallel message names adapter role \(roleName)")
                }
                let scale = try r.float()
                var factors: [LowRankMatrix] = []
                for _ in 0..<2 {
                    let p = try r.string()
                    guard let precision = LowRankMatrix.Precision(rawValue: p) else {
                        throw FacetError(.invalidFile, "a tensor-parallel message names precision \(p)")
                    }
                    factors.append(LowRankMatrix(try r.matrix(), precision: precision))
                }
                guard factors[0].rows == factors[1].rows else {
                    throw FacetError(.invalidFile, "a tensor-parallel message holds LoRA factors of ranks \(factors[0].rows) and \(factors[1].rows)")
                }
                a.pairs[l][role] = LoRAPair(packedA: factors[0], packedBT: factors[1], scale: scale)
            }
        }
        if try r.int() != 0 {
            let aT = try r.matrix(), b = try r.matrix()
            a.embeddingLoRA = .init(aT: aT, b: b, scale: try r.float())
        }
        a.embedTokens = try r.optionalMatrix()
        a.lmHead = try r.optionalMatrix()
        return a
    }
}
