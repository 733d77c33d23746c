import Kernels
import Llama
import Tensors

extension LoRAAdapter {
    /// This rank's part of the adapter under tensor parallelism (S-LoRA's split, see
    /// `TensorShard`):
    /// - column-parallel roles (q, k, v, gate, up): A `[r, in]` whole, B's rows cut like the
    ///   base weight's output rows;
    /// - row-parallel roles (o, down): A's columns cut like the base weight's input, B
    ///   whole. Each rank's `B (x_rank A_rankᵀ)` is a partial sum of the full delta; the
    ///   base product's all-reduce adds them, so the rank-r shrink needs no all-reduce of
    ///   its own (`B` is linear: `Σ B u_rank = B Σ u_rank`).
    /// - Embedding LoRA and full tables (`modules_to_save`) follow the embedding: replicated.
    /// Factors keep their storage precision.
    package func sharded(_ shard: TensorShard, config c: LlamaConfiguration) -> LoRAAdapter {
        guard shard.size > 1 else { return self }
        var copy = self
        copy.pairs = pairs.map { layer in
            var out: [LinearRole: LoRAPair] = [:]
            for (role, p) in layer {
                let range = shard.range(of: role, c)
                if TensorShard.isRowParallel(role) {
                    let a = LowRankMatrix(p.packedA.matrix.columns(range), precision: p.packedA.precision)
                    out[role] = LoRAPair(packedA: a, packedBT: p.packedBT, scale: p.scale)
                } else {
                    // Bᵀ is [r, out]: its columns are B's rows.
                    let bT = LowRankMatrix(p.packedBT.matrix.columns(range), precision: p.packedBT.precision)
                    out[role] = LoRAPair(packedA: p.packedA, packedBT: bT, scale: p.scale)
                }
            }
            return out
        }
        return copy
    }
}
