import Kernels
import Tensors
import Testing
import TestSupport

/// `addInputGradient` (dY · W, training's input gradient through a frozen weight) against
/// the naive sum on the dequantized weight, for every storage format.
@Suite struct InputGradientTests {
    @Test(arguments: [WeightFormat.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q4_k, .q6_k])
    func matchesTheNaiveProduct(format: WeightFormat) throws {
        var rng = SplitMix(seed: 21)
        let rows = 24, cols = format == .q4_k || format == .q6_k ? 512 : 160, T = 37
        let weight: LinearWeight
        switch format {
        case .q4_k, .q6_k: weight = try CompactWeightTests.randomKQuant(format, rows: rows, cols: cols, seed: 3)
        case .f32: weight = LinearWeight(Matrix(rows: rows, cols: cols, data: (0..<(rows * cols)).map { _ in rng.float() }))
        default: weight = try LinearWeight.quantize(Matrix(rows: rows, cols: cols, data: (0..<(rows * cols)).map { _ in rng.float() }), to: format)
        }
        let w = weight.dequantized()
        let dy = (0..<(T * rows)).map { _ in rng.float() }
        let start = (0..<(T * cols)).map { _ in rng.float() }
        var dx = start
        dy.withUnsafeBufferPointer { d in dx.withUnsafeMutableBufferPointer { weight.addInputGradient(dy: d.baseAddress!, t: T, dx: $0.baseAddress!) } }
        var worst: Double = 0
        for t in 0..<T {
            for k in 0..<cols {
                var sum = Double(start[t * cols + k])
                for o in 0..<rows { sum += Double(dy[t * rows + o]) * Double(w.data[o * cols + k]) }
                worst = max(worst, abs(sum - Double(dx[t * cols + k])) / max(1, abs(sum)))
            }
        }
        #expect(worst < 1e-5, "\(format): \(worst)")
        // `clearing`: whatever `dx` held, the result is the product added to zeros, bit for bit.
        var zeros = [Float](repeating: 0, count: T * cols), dirty = start
        dy.withUnsafeBufferPointer { d in
            zeros.withUnsafeMutableBufferPointer { weight.addInputGradient(dy: d.baseAddress!, t: T, dx: $0.baseAddress!) }
            dirty.withUnsafeMutableBufferPointer { weight.addInputGradient(dy: d.baseAddress!, t: T, dx: $0.baseAddress!, clearing: true) }
        }
        #expect(dirty == zeros, "\(format)")
    }

    /// `clearing` on every tier, with more rows than one band (the first band's products start
    /// from zero, the later ones add) and `dx` full of NaN: never read, the bits of zeros + the product.
    @Test(arguments: [WeightFormat.f32, .q4_1])
    func clearingNeverReadsTheOutput(format: WeightFormat) throws {
        var rng = SplitMix(seed: 23)
        let rows = 300, cols = 96, T = 13
        let data = (0..<(rows * cols)).map { _ in rng.float() }
        let weight = format == .f32 ? LinearWeight(Matrix(rows: rows, cols: cols, data: data))
                                    : try LinearWeight.quantize(Matrix(rows: rows, cols: cols, data: data), to: format)
        let dy = (0..<(T * rows)).map { _ in rng.float() }
        func gradient(clearing: Bool) -> [Float] {
            var dx = [Float](repeating: clearing ? .nan : 0, count: T * cols)
            dy.withUnsafeBufferPointer { d in
                dx.withUnsafeMutableBufferPointer { weight.addInputGradient(dy: d.baseAddress!, t: T, dx: $0.baseAddress!, clearing: clearing) }
            }
            return dx
        }
        let added = InstructionTierTests.acrossTiers("input gradient onto zeros, \(format)") { gradient(clearing: false) }
        let cleared = InstructionTierTests.acrossTiers("input gradient clearing, \(format)") { gradient(clearing: true) }
        #expect(cleared.map(\.bitPattern) == added.map(\.bitPattern), "\(format)")
    }
}

/// Training's dense products (`DenseProduct.add`, `LinearWeight.matmulDecoded`): every
/// instruction-set tier gives the scalar chain's bits, on shapes with ragged edges.
@Suite struct DenseProductTests {
    /// `out += g w` in the reference order: each output a chain of `fma` over `o` from its start value.
    static func naive(_ start: [Float], _ g: [Float], rows: Int, inner: Int, _ w: [Float], width: Int) -> [Float] {
        var out = start
        for i in 0..<rows {
            for j in 0..<width {
                var acc = out[i * width + j]
                for o in 0..<inner { acc = acc.addingProduct(g[i * inner + o], w[o * width + j]) }   // fused, in order
                out[i * width + j] = acc
            }
        }
        return out
    }

    static func run(_ start: [Float], _ g: [Float], rows: Int, inner: Int, _ w: [Float], width: Int) -> [Float] {
        var out = start
        g.withUnsafeBufferPointer { gp in
            w.withUnsafeBufferPointer { wp in
                out.withUnsafeMutableBufferPointer { DenseProduct.add($0.baseAddress!, gp.baseAddress!, rows: rows, inner: inner, wp.baseAddress!, width: width) }
            }
        }
        return out
    }

    @Test(arguments: [(1, 1, 1), (7, 300, 5), (13, 257, 47), (37, 64, 96), (300, 33, 16), (16, 512, 600), (9, 1, 70)])
    func everyTierGivesTheScalarBits(shape: (Int, Int, Int)) {
        let (rows, inner, width) = shape
        var rng = SplitMix(seed: UInt64(rows * 1000 + inner * 10 + width))
        let g = (0..<(rows * inner)).map { _ in rng.float() }
        let w = (0..<(inner * width)).map { _ in rng.float() }
        let start = (0..<(rows * width)).map { _ in rng.float() }
        let reference = Self.naive(start, g, rows: rows, inner: inner, w, width: width)
        LinearWeight.useVectorKernels(false)
        let scalar = Self.run(start, g, rows: rows, inner: inner, w, width: width)
        LinearWeight.useVectorKernels(true)
        LinearWeight.useAVX512Kernels(false)
        let avx2 = Self.run(start, g, rows: rows, inner: inner, w, width: width)
        LinearWeight.useAVX512Kernels(true)
        let best = Self.run(start, g, rows: rows, inner: inner, w, width: width)
        #expect(scalar.map(\.bitPattern) == reference.map(\.bitPattern))
        #expect(avx2.map(\.bitPattern) == reference.map(\.bitPattern))
        #expect(best.map(\.bitPattern) == reference.map(\.bitPattern))
        if !LinearWeight.hasAVX512 { print("DenseProductTests: AVX-512 tier not on this CPU; compared scalar and \(InstructionTier.current)") }
    }

    /// `DenseProduct.transpose` (whole 16 x 16 blocks in vector registers, the edges one by one)
    /// moves every element where the naive loop does, on every tier.
    @Test(arguments: [(16, 16), (37, 45), (64, 576), (300, 33), (3, 100), (130, 70)])
    func transposeMovesEveryElement(shape: (Int, Int)) {
        let (rows, cols) = shape
        let m = (0..<(rows * cols)).map { Float($0) + 0.5 }
        var expected = [Float](repeating: 0, count: rows * cols)
        for r in 0..<rows { for c in 0..<cols { expected[c * rows + r] = m[r * cols + c] } }
        let out = InstructionTierTests.acrossTiers("transpose \(rows) x \(cols)") {
            var out = [Float](repeating: .nan, count: rows * cols)
            m.withUnsafeBufferPointer { mp in out.withUnsafeMutableBufferPointer { DenseProduct.transpose(mp.baseAddress!, rows: rows, cols: cols, into: $0.baseAddress!) } }
            return out
        }
        #expect(out == expected, "\(rows) x \(cols)")
    }

    /// `matmulDecoded` (training's forward `x Wᵀ + b`) is the fma chain over k from zero, on the decoded weight.
    @Test(arguments: [WeightFormat.f32, .q4_1, .q8_0, .q4_k])
    func decodedProductIsTheChainOverK(format: WeightFormat) throws {
        var rng = SplitMix(seed: 77)
        // 288 columns: two slices of the kernel's 256-term panels; 13 tokens: a packed tile and remainders.
        let rows = 45, cols = format == .q4_k ? 512 : 288, T = 13
        let weight: LinearWeight
        switch format {
        case .q4_k: weight = try CompactWeightTests.randomKQuant(format, rows: rows, cols: cols, seed: 5)
        case .f32: weight = LinearWeight(Matrix(rows: rows, cols: cols, data: (0..<(rows * cols)).map { _ in rng.float() }))
        default: weight = try LinearWeight.quantize(Matrix(rows: rows, cols: cols, data: (0..<(rows * cols)).map { _ in rng.float() }), to: format)
        }
        let w = weight.dequantized().data
        LinearWeight.useVectorKernels(false)
        let scalarDecoded = weight.dequantized().data
        LinearWeight.useVectorKernels(true)
        #expect(w.map(\.bitPattern) == scalarDecoded.map(\.bitPattern), "\(format): vector and scalar dequantization differ")
        let x = (0..<(T * cols)).map { _ in rng.float() }
        let bias = (0..<rows).map { _ in rng.float() }
        // Every tier, onto outputs full of NaN (the products start from zero, never reading them).
        let y = InstructionTierTests.acrossTiers("training forward \(format)") {
            var y = [Float](repeating: .nan, count: T * rows)
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { weight.matmulDecoded(x: xp.baseAddress!, t: T, y: $0.baseAddress!, bias: bias) } }
            return y
        }
        var wrong = 0
        for t in 0..<T {
            for o in 0..<rows {
                var acc: Float = 0
                for k in 0..<cols { acc = acc.addingProduct(x[t * cols + k], w[o * cols + k]) }
                acc += bias[o]
                if y[t * rows + o].bitPattern != acc.bitPattern { wrong += 1 }
            }
        }
        #expect(wrong == 0, "\(format): \(wrong) outputs differ from the chain over k")
    }
}

/// Training's opt-in bf16 products (`products: .bf16`): both operands rounded as the mode
/// says, then each output the chain of pair steps of `vdpbf16ps`, checked bitwise against a
/// Swift twin on every tier, on odd shapes (a padded last pair) and every tile remainder.
@Suite(.serialized) struct BF16TrainingProductTests {
    /// The mode's rounding of activations and gradients: nearest even, NaN quieted, |x| < 2^-64 to a signed zero.
    static func roundActivation(_ x: Float) -> Float {
        let u = x.bitPattern, a = u & 0x7FFF_FFFF
        if a > 0x7F80_0000 { return Float(bitPattern: (u | 0x0040_0000) & 0xFFFF_0000) }
        if a < 0x1F80_0000 { return Float(bitPattern: u & 0x8000_0000) }
        return Float(bitPattern: (u &+ 0x7FFF &+ ((u >> 16) & 1)) & 0xFFFF_0000)
    }
    /// Weights: the same rounding, then magnitudes below 2^-32 read as +0.
    static func roundWeight(_ x: Float) -> Float {
        let r = roundActivation(x)
        return r.bitPattern & 0x7F80_0000 < 95 << 23 ? 0 : r
    }

    /// Start + Σ over pairs p of the inner index: fma with element 2p+1, then with 2p (a missing last element is 0·0).
    static func pairChain(_ start: Float, inner: Int, _ a: (Int) -> Float, _ b: (Int) -> Float) -> Float {
        var acc = start
        for p in stride(from: 0, to: inner, by: 2) {
            let odd = p + 1 < inner
            acc = acc.addingProduct(odd ? roundActivation(a(p + 1)) : 0, odd ? roundWeight(b(p + 1)) : 0)
            acc = acc.addingProduct(roundActivation(a(p)), roundWeight(b(p)))
        }
        return acc
    }

    static func weight(_ format: WeightFormat, rows: Int, cols: Int, seed: UInt64) throws -> LinearWeight {
        var rng = SplitMix(seed: seed)
        // Include values that round on ties, tiny weights (flushed) and denormals.
        var data = (0..<(rows * cols)).map { _ in rng.float() }
        for i in stride(from: 0, to: data.count, by: 17) { data[i] = Float(bitPattern: 0x3F80_8000 | UInt32(i % 2) << 16) }
        for i in stride(from: 5, to: data.count, by: 29) { data[i] = 1e-11 }
        for i in stride(from: 11, to: data.count, by: 31) { data[i] = Float(bitPattern: 0x0000_0123) }
        let m = Matrix(rows: rows, cols: cols, data: data)
        return format == .f32 ? LinearWeight(m) : try LinearWeight.quantize(m, to: format)
    }

    @Test(arguments: [(WeightFormat.f32, 45, 97, 37), (.f32, 70, 33, 19), (.q4_1, 45, 96, 37), (.q8_0, 33, 64, 5)])
    func forwardIsThePairChainOnEveryTier(shape: (WeightFormat, Int, Int, Int)) throws {
        let (format, rows, cols, T) = shape
        let weight = try Self.weight(format, rows: rows, cols: cols, seed: UInt64(rows * cols))
        let w = weight.dequantized().data
        var x = InstructionTierTests.random(T * cols, 9)
        x[3] = 1e-25     // below 2^-64: a zero
        let bias = InstructionTierTests.random(rows, 10)
        let y = InstructionTierTests.acrossTiers("bf16 training forward \(shape)") {
            var y = [Float](repeating: .nan, count: T * rows)
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { weight.matmulDecoded(x: xp.baseAddress!, t: T, y: $0.baseAddress!, bias: bias, products: .bf16) }
            }
            return y
        }
        var worst: Float = 0
        for t in 0..<T {
            for o in 0..<rows {
                let expected = Self.pairChain(0, inner: cols, { x[t * cols + $0] }, { w[o * cols + $0] }) + bias[o]
                #expect(y[t * rows + o].bitPattern == expected.bitPattern, "\(shape) t \(t) o \(o): \(y[t * rows + o]) vs \(expected)")
                var exact: Float = bias[o]
                for k in 0..<cols { exact += x[t * cols + k] * w[o * cols + k] }
                worst = max(worst, abs(exact - y[t * rows + o]))
            }
        }
        #expect(worst < 0.05 * Float(cols).squareRoot(), "bf16 products far from fp32: \(worst)")
    }

    @Test(arguments: [(WeightFormat.f32, 45, 97, 37), (.f32, 301, 40, 19), (.q4_1, 45, 96, 13), (.q4_1, 300, 64, 4)])
    func inputGradientIsThePairChainOnEveryTier(shape: (WeightFormat, Int, Int, Int)) throws {
        let (format, rows, cols, T) = shape
        let weight = try Self.weight(format, rows: rows, cols: cols, seed: UInt64(rows + cols))
        let w = weight.dequantized().data
        let dy = InstructionTierTests.random(T * rows, 11)
        let start = InstructionTierTests.random(T * cols, 12)
        let dx = InstructionTierTests.acrossTiers("bf16 input gradient \(shape)") {
            var dx = start
            dy.withUnsafeBufferPointer { d in
                dx.withUnsafeMutableBufferPointer { weight.addInputGradient(dy: d.baseAddress!, t: T, dx: $0.baseAddress!, products: .bf16) }
            }
            return dx
        }
        // Rows go in bands of 256, each band's pairs from its first row.
        for t in 0..<T {
            for k in 0..<cols {
                var expected = start[t * cols + k]
                for o0 in stride(from: 0, to: rows, by: 256) {
                    let n = min(256, rows - o0)
                    expected = Self.pairChain(expected, inner: n, { dy[t * rows + o0 + $0] }, { w[(o0 + $0) * cols + k] })
                }
                #expect(dx[t * cols + k].bitPattern == expected.bitPattern, "\(shape) t \(t) k \(k)")
            }
        }
    }
}
