import Tensors

/// ggml tensor types Facet reads, with their block geometry.
package enum GGMLType: UInt32, Sendable, CustomStringConvertible {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 8, q4_K = 12, q6_K = 14, bf16 = 30

    /// Elements per block.
    package var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: 1
        case .q4_0, .q4_1, .q8_0: 32
        case .q4_K, .q6_K: 256
        }
    }

    /// Bytes per block.
    package var blockBytes: Int {
        switch self {
        case .f32: 4
        case .f16, .bf16: 2
        case .q4_0: 18     // f16 d, 16 bytes of nibbles
        case .q4_1: 20     // f16 d, f16 m, 16 bytes of nibbles
        case .q8_0: 34     // f16 d, 32 int8
        case .q4_K: 144    // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
        case .q6_K: 210    // 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales, f16 d
        }
    }

    package var description: String {
        switch self {
        case .f32: "F32"
        case .f16: "F16"
        case .bf16: "BF16"
        case .q4_0: "Q4_0"
        case .q4_1: "Q4_1"
        case .q8_0: "Q8_0"
        case .q4_K: "Q4_K"
        case .q6_K: "Q6_K"
        }
    }
}

/// Dequantization of ggml blocks to fp32 (layouts as in ggml's `ggml-common.h`).
package enum GGMLQuant {
    package static func dequantize(_ raw: UnsafeRawBufferPointer, type: GGMLType, count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { out, n in
            let blocks = count / type.blockSize
            for b in 0..<blocks {
                let src = raw.baseAddress! + b * type.blockBytes
                let dst = out.baseAddress! + b * type.blockSize
                dequantizeBlock(src, type: type, into: dst)
            }
            n = count
        }
    }

    @inline(__always)
    static func f16(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        HalfFloat.fromF16(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    /// Dequantizes one block of `type` at `src` into `type.blockSize` floats.
    package static func dequantizeBlock(_ src: UnsafeRawPointer, type: GGMLType, into y: UnsafeMutablePointer<Float>) {
        let u8 = src.assumingMemoryBound(to: UInt8.self)
        switch type {
        case .f32:
            y[0] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(as: UInt32.self)))
        case .f16:
            y[0] = f16(src, 0)
        case .bf16:
            y[0] = HalfFloat.fromBF16(UInt16(littleEndian: src.loadUnaligned(as: UInt16.self)))
        case .q8_0:
            // x[i] = d * q[i]
            let d = f16(src, 0)
            for i in 0..<32 { y[i] = d * Float(Int8(bitPattern: u8[2 + i])) }
        case .q4_0:
            // x[j] = d * (lo(q[j]) - 8), x[j + 16] = d * (hi(q[j]) - 8)
            let d = f16(src, 0)
            let qs = u8 + 2
            for j in 0..<16 {
                y[j] = d * Float(Int(qs[j] & 0x0F) - 8)
                y[j + 16] = d * Float(Int(qs[j] >> 4) - 8)
            }
        case .q4_1:
            // x[j] = d * lo(q[j]) + m, x[j + 16] = d * hi(q[j]) + m
            let d = f16(src, 0), m = f16(src, 2)
            let qs = u8 + 4
            for j in 0..<16 {
                y[j] = d * Float(qs[j] & 0x0F) + m
                y[j + 16] = d * Float(qs[j] >> 4) + m
            }
        case .q4_K:
            // 8 sub-blocks of 32; sub-block s has 6-bit scale sc_s and min m_s:
            // x = d * sc_s * nibble - dmin * m_s. Nibbles: 32 bytes per pair of sub-blocks,
            // low nibbles for the even sub-block, high for the odd one.
            let d = f16(src, 0), dmin = f16(src, 2)
            let scales = u8 + 4
            var qs = u8 + 16
            var out = y
            var s = 0
            for _ in 0..<4 {
                let (sc1, m1) = scaleMinK4(s, scales)
                let (sc2, m2) = scaleMinK4(s + 1, scales)
                let d1 = d * Float(sc1), min1 = dmin * Float(m1)
                let d2 = d * Float(sc2), min2 = dmin * Float(m2)
                for l in 0..<32 { out[l] = d1 * Float(qs[l] & 0x0F) - min1 }
                for l in 0..<32 { out[32 + l] = d2 * Float(qs[l] >> 4) - min2 }
                out += 64
                qs += 32
                s += 2
            }
        case .q6_K:
            // 16 sub-blocks of 16 with int8 scales; 6-bit quants q = lo4 | hi2 << 4, minus 32.
            let ql0 = u8, qh0 = u8 + 128
            let sc0 = UnsafeRawPointer(u8 + 192).assumingMemoryBound(to: Int8.self)
            let d = f16(src, 208)
            var ql = ql0, qh = qh0, sc = sc0
            var out = y
            for _ in 0..<2 {
                for l in 0..<32 {
                    let g = l / 16
                    let q1 = Int((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32
                    let q2 = Int((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                    let q3 = Int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                    let q4 = Int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                    out[l] = d * Float(sc[g]) * Float(q1)
                    out[l + 32] = d * Float(sc[g + 2]) * Float(q2)
                    out[l + 64] = d * Float(sc[g + 4]) * Float(q3)
                    out[l + 96] = d * Float(sc[g + 6]) * Float(q4)
                }
                out += 128
                ql += 64
                qh += 32
                sc += 8
            }
        }
    }

    /// The 6-bit scale and min of sub-block `j` packed in Q4_K's 12 scale bytes.
    @inline(__always)
    static func scaleMinK4(_ j: Int, _ q: UnsafePointer<UInt8>) -> (UInt8, UInt8) {
        if j < 4 {
            return (q[j] & 63, q[j + 4] & 63)
        }
        let sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4)
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4)
        return (sc, m)
    }
}
