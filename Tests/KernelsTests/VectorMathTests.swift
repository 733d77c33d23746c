import Foundation
import Kernels
import Testing

/// The vector exp against the exact function (Double), and its invariance: a value gets the
/// bitwise same result in any lane, in a vector body or in a padded tail.
@Suite struct VectorMathTests {
    @Test func expIsWithinTwoUlpOverItsRange() {
        var worst: Double = 0
        var x: Float = -86.5
        while x < 88.7 {
            let want = Foundation.exp(Double(x))
            worst = max(worst, abs(Double(VectorMath.exp(x)) - want) / Double(Float(want).ulp))
            x += 0.000_97
        }
        #expect(worst <= 2.0, "worst error \(worst) ulp")
        // The ends: no NaN or infinity, and the limits behave like exp.
        #expect(VectorMath.exp(-1000) == 0 && VectorMath.exp(-.infinity) == 0 && VectorMath.exp(0) == 1)
        #expect(VectorMath.exp(-88) < 2e-38 && VectorMath.exp(89).isFinite && VectorMath.exp(1000) > 3e38 && VectorMath.exp(1000).isFinite)
    }

    /// The vector path against the scalar path, element by element (bitwise).
    @Test func vectorAndScalarPathsAgree() {
        let n = 4099
        let base = (0..<n).map { Float($0 - 2049) * 0.043 }
        func run() -> [Float] {
            var p = base
            p.withUnsafeMutableBufferPointer { VectorMath.expShifted($0.baseAddress!, count: n, shift: 0.5) }
            return p
        }
        let vector = run()
        LinearWeight.useVectorKernels(false)
        let scalar = run()
        LinearWeight.useVectorKernels(true)
        #expect(vector.map(\.bitPattern) == scalar.map(\.bitPattern))
    }

    @Test func expShiftedIsTheSameInBodyAndTail() {
        let n = 21
        var a = (0..<n).map { Float($0) * -0.37 + 2 }
        let original = a
        a.withUnsafeMutableBufferPointer { VectorMath.expShifted($0.baseAddress!, count: n, shift: 1.5) }
        for i in 0..<n {
            // The same value alone (in a tail of one) must give the same bits.
            var one = [original[i]]
            one.withUnsafeMutableBufferPointer { VectorMath.expShifted($0.baseAddress!, count: 1, shift: 1.5) }
            #expect(one[0].bitPattern == a[i].bitPattern)
            #expect(abs(Double(a[i]) - Foundation.exp(Double(original[i] - 1.5))) <= 2 * Double(a[i].ulp))
        }
    }

    @Test func siluMulMatchesTheDefinitionAndIsPositionIndependent() {
        let n = 1000
        let g0 = (0..<n).map { Float($0 - 500) * 0.05 }, u = (0..<n).map { Float($0 % 7) - 3 }
        var g = g0
        g.withUnsafeMutableBufferPointer { gp in u.withUnsafeBufferPointer { Activation.siluMul(gate: gp.baseAddress!, up: $0.baseAddress!, count: n) } }
        for i in 0..<n {
            let v = Double(g0[i])
            let want = v / (1 + Foundation.exp(-v)) * Double(u[i])
            #expect(abs(Double(g[i]) - want) <= 1e-6 * max(1, abs(want)))
            var one = [g0[i]]
            let up = [u[i]]
            one.withUnsafeMutableBufferPointer { gp in up.withUnsafeBufferPointer { Activation.siluMul(gate: gp.baseAddress!, up: $0.baseAddress!, count: 1) } }
            #expect(one[0].bitPattern == g[i].bitPattern)
        }
    }

    /// The SiLU gate's gradients against the calculus in Double, and each element's bits
    /// the same whether it is computed alone or inside a vector.
    @Test func siluMulBackwardMatchesTheDerivativeAndIsPositionIndependent() {
        let n = 1003
        let g = (0..<n).map { Float($0 - 500) * 0.05 }, u = (0..<n).map { Float($0 % 7) - 3 }, da = (0..<n).map { Float($0 % 5) * 0.5 - 1 }
        func run(_ range: Range<Int>) -> (dg: [Float], du: [Float]) {
            let m = range.count
            var dg = [Float](repeating: .nan, count: m), du = dg
            let gs = Array(g[range]), us = Array(u[range]), ds = Array(da[range])
            gs.withUnsafeBufferPointer { gp in us.withUnsafeBufferPointer { up in ds.withUnsafeBufferPointer { dp in
                dg.withUnsafeMutableBufferPointer { dgp in du.withUnsafeMutableBufferPointer { dup in
                    Activation.siluMulBackward(gate: gp.baseAddress!, up: up.baseAddress!, dOut: dp.baseAddress!, dGate: dgp.baseAddress!, dUp: dup.baseAddress!, count: m)
                } }
            } } }
            return (dg, du)
        }
        let all = run(0..<n)
        for i in 0..<n {
            let v = Double(g[i]), s = 1 / (1 + Foundation.exp(-v))
            let wantU = Double(da[i]) * v * s, wantG = Double(da[i]) * Double(u[i]) * s * (1 + v * (1 - s))
            #expect(abs(Double(all.du[i]) - wantU) <= 1e-6 * max(1, abs(wantU)), "dUp[\(i)]")
            #expect(abs(Double(all.dg[i]) - wantG) <= 1e-6 * max(1, abs(wantG)), "dGate[\(i)]")
            let one = run(i..<(i + 1))
            #expect(one.dg[0].bitPattern == all.dg[i].bitPattern && one.du[0].bitPattern == all.du[i].bitPattern)
        }
    }
}
