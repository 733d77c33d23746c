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
    }
}
