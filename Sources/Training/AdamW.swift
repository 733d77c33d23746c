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
        // The parameters and their gradients are moved out of the pairs into flat lists
        // (no copies) so that each tensor is updated on its own task; every element's
        // arithmetic is as before, so the split changes no bit.
        var params: [[Float]] = [], grads: [[Float]] = []
        for l in lora.pairs.indices {
            for role in lora.roles(l) {
                params.append([]); swap(&params[params.count - 1], &lora.pairs[l][role]!.a)
                grads.append([]); swap(&grads[grads.count - 1], &lora.pairs[l][role]!.gradA)
                params.append([]); swap(&params[params.count - 1], &lora.pairs[l][role]!.b)
                grads.append([]); swap(&grads[grads.count - 1], &lora.pairs[l][role]!.gradB)
            }
        }
        while m.count < params.count {
            m.append([Float](repeating: 0, count: params[m.count].count))
            v.append([Float](repeating: 0, count: params[v.count].count))
        }
        params.withUnsafeMutableBufferPointer { pp in
            m.withUnsafeMutableBufferPointer { mp in
                v.withUnsafeMutableBufferPointer { vp in
                    grads.withUnsafeBufferPointer { gp in
                        let (pList, mList, vList, gList) = (pp, mp, vp, gp)
                        Parallel.forEach(pList.count) { index in
                            pList[index].withUnsafeMutableBufferPointer { p in
                                mList[index].withUnsafeMutableBufferPointer { m in
                                    vList[index].withUnsafeMutableBufferPointer { v in
                                        gList[index].withUnsafeBufferPointer { g in
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
                }
            }
        }
        var index = 0
        for l in lora.pairs.indices {
            for role in lora.roles(l) {
                swap(&params[index], &lora.pairs[l][role]!.a)
                swap(&grads[index], &lora.pairs[l][role]!.gradA)
                swap(&params[index + 1], &lora.pairs[l][role]!.b)
                swap(&grads[index + 1], &lora.pairs[l][role]!.gradB)
                index += 2
            }
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
