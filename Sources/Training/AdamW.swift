import Foundation
import Kernels

/// torch.optim.AdamW (decoupled weight decay), element by element, with its moments kept
/// per parameter in `TrainableLoRA`'s order:
///   p ← p (1 − lr·wd);  m ← m + (1 − β1)(g − m);  v ← β2 v + (1 − β2) g²;
///   p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)
package struct AdamW: Sendable, Codable {
    package var beta1: Double = 0.9
    package var beta2: Double = 0.999
    package var eps: Double = 1e-8
    package var weightDecay: Double = 0
    /// Steps taken (t of the bias corrections).
    package private(set) var step = 0
    /// First and second moments, one array per parameter tensor (A, B of each pair).
    package var m: [[Float]] = []
    package var v: [[Float]] = []

    package init(weightDecay: Double = 0, beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8) {
        self.weightDecay = weightDecay
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
    }

    /// One update of every parameter with its gradient at learning rate `lr`.
    package mutating func update(_ lora: inout TrainableLoRA, lr: Double) {
        step += 1
        let bc1 = 1 - pow(beta1, Double(step)), bc2Sqrt = (1 - pow(beta2, Double(step))).squareRoot()
        let stepSize = Float(lr / bc1), decay = Float(1 - lr * weightDecay)
        let b2 = Float(beta2), oneMinusB1 = Float(1 - beta1), oneMinusB2 = Float(1 - beta2)
        let bc2 = Float(bc2Sqrt), e = Float(eps)
        // Each tensor is updated on its own task; every element's arithmetic is as in one
        // loop, so the split changes no bit.
        var tensors = [Tensor](repeating: Tensor(), count: lora.pairs.indices.reduce(0) { $0 + 2 * lora.roles($1).count })
        exchange(&lora, &tensors)
        tensors.withUnsafeMutableBufferPointer { list in
            let list = list
            Parallel.forEach(list.count) { list[$0].update(decay: decay, oneMinusB1: oneMinusB1, b2: b2, oneMinusB2: oneMinusB2, bc2: bc2, e: e,
                                                           stepSize: stepSize) }
        }
        exchange(&lora, &tensors)
    }

    /// One parameter tensor with its gradient and moments, moved out of their owners while
    /// it is updated.
    private struct Tensor {
        var p: [Float] = [], g: [Float] = [], m: [Float] = [], v: [Float] = []

        mutating func update(decay: Float, oneMinusB1: Float, b2: Float, oneMinusB2: Float, bc2: Float, e: Float, stepSize: Float) {
            p.withUnsafeMutableBufferPointer { p in
                m.withUnsafeMutableBufferPointer { m in
                    v.withUnsafeMutableBufferPointer { v in
                        g.withUnsafeBufferPointer { g in
                            for i in 0..<p.count {
                                p[i] *= decay
                                m[i] += oneMinusB1 * (g[i] - m[i])
                                v[i] = v[i] * b2 + oneMinusB2 * g[i] * g[i]
                                let denom = v[i].squareRoot() / bc2 + e
                                p[i] -= stepSize * (m[i] / denom)
                            }
                        }
                    }
                }
            }
        }
    }

    /// Swaps every tensor's parameters, gradient and moments (in `TrainableLoRA`'s order:
    /// A then B of each pair) with `tensors`: called once to move them out (no copies) and
    /// once to move them back. Moments start at zero the first time.
    private mutating func exchange(_ lora: inout TrainableLoRA, _ tensors: inout [Tensor]) {
        var index = 0
        for l in lora.pairs.indices {
            for role in lora.roles(l) {
                swap(&tensors[index].p, &lora.pairs[l][role]!.a)
                swap(&tensors[index].g, &lora.pairs[l][role]!.gradA)
                swap(&tensors[index + 1].p, &lora.pairs[l][role]!.b)
                swap(&tensors[index + 1].g, &lora.pairs[l][role]!.gradB)
                index += 2
            }
        }
        for i in tensors.indices {
            if m.count <= i {   // (moving out: the parameters are already in tensors[i].p)
                m.append([Float](repeating: 0, count: tensors[i].p.count))
                v.append([Float](repeating: 0, count: tensors[i].p.count))
            }
            swap(&tensors[i].m, &m[i])
            swap(&tensors[i].v, &v[i])
        }
    }

    /// The global L2 norm of the gradients; when above `maxNorm` they are scaled by
    /// maxNorm / (norm + 1e-6), as torch's clip_grad_norm_. Returns the norm before clipping.
    @discardableResult
    package static func clipGradients(_ lora: inout TrainableLoRA, maxNorm: Double?) -> Double {
        var ss = 0.0
        for layer in lora.pairs {
            for p in layer.values {
                for g in p.gradA { ss += Double(g) * Double(g) }
                for g in p.gradB { ss += Double(g) * Double(g) }
            }
        }
        let norm = ss.squareRoot()
        if let maxNorm, norm > maxNorm {
            let k = Float(maxNorm / (norm + 1e-6))
            for l in lora.pairs.indices {
                for role in lora.roles(l) {
                    lora.pairs[l][role]!.gradA = lora.pairs[l][role]!.gradA.map { $0 * k }
                    lora.pairs[l][role]!.gradB = lora.pairs[l][role]!.gradB.map { $0 * k }
                }
            }
        }
        return norm
    }
}
