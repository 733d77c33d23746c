import Foundation

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
        var index = 0
        func apply(_ p: inout [Float], _ g: [Float]) {
            if m.count <= index {
                m.append([Float](repeating: 0, count: p.count))
                v.append([Float](repeating: 0, count: p.count))
            }
            for i in p.indices {
                p[i] *= decay
                m[index][i] += oneMinusB1 * (g[i] - m[index][i])
                v[index][i] = v[index][i] * b2 + oneMinusB2 * g[i] * g[i]
                let denom = v[index][i].squareRoot() / bc2 + e
                p[i] -= stepSize * (m[index][i] / denom)
            }
            index += 1
        }
        for l in lora.pairs.indices {
            for role in lora.roles(l) {
                var pair = lora.pairs[l][role]!
                apply(&pair.a, pair.gradA)
                apply(&pair.b, pair.gradB)
                lora.pairs[l][role] = pair
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
