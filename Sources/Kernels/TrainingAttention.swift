internal import CKernels

/// Causal attention of training (`facet tune`), where a sequence is held whole: the
/// probabilities are kept for the backward pass. One call is one task of the caller's split
/// (a query head, or a kv group's heads, of one sequence); the arithmetic is fixed per
/// output (see `fk_train_attend` in ckernels.h), the same bits on every tier.
package enum TrainingAttention {
    /// One query head over n tokens: `probs` `[n, n]` (row t, columns first...t written),
    /// `out` row t += Σ_j p_tj v_j (pass zeros). Rows of q and out are `qStride` apart, of k and v `kvStride`.
    /// `window` ≤ 0: none.
    package static func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, qStride: Int, kvStride: Int,
                                tokens n: Int, headDim: Int, window: Int, scale: Float,
                                out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>) {
        fk_train_attend(q, k, v, qStride, kvStride, n, headDim, window, scale, out, probs)
    }

    /// The gradients for the `group` query heads of one kv head (head i at `q + i·headDim`,
    /// its probabilities at `probs + i·n·n`): added to dq (pass zeros), dk and dv.
    package static func backward(dout: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                 probs: UnsafePointer<Float>, qStride: Int, kvStride: Int, tokens n: Int, headDim: Int, group: Int,
                                 window: Int, scale: Float,
                                 dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>) {
        let scratch = Scratch.floats(.trainingAttention, fk_train_attend_back_scratch(n, headDim))
        fk_train_attend_back(dout, q, k, v, probs, qStride, kvStride, n, headDim, group, window, scale, dq, dk, dv, scratch)
    }
}
