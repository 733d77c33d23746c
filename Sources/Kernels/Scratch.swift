internal import CKernels

/// Per-thread, grow-only scratch memory for the step loop, so a forward pass allocates
/// nothing once it has seen its sizes (see `fk_thread_scratch`). Contents are unspecified:
/// callers write before they read. Each slot has one owner; a slot is never used twice at
/// once on one thread.
package enum Scratch {
    package enum Slot: Int32 {
        case blockSums = 0, int8Activations, int8Scales, attentionScores
        case loraInput, loraRank
        case activations, finalHidden, logitInput, logitOutput, embeddingRow, logitRowIndex, logitShard, logitGather, parallelReduce
        case gradientRow, attentionTiles, trainingAttention, trainingLoss
        case bf16Activations, bf16Pairs, bf16BlockSums
        /// Taken by the C kernels: the bf16 mode's AVX512_BF16 products transpose a group's
        /// (16 or 8 tokens') block sums there.
        case transposedBlockSums = 22
        /// Taken by the C kernels (the AVX-512 quantized products pair tokens there).
        case pairedActivations = 23
        /// Training's bf16 products: a panel of W packed as pairs.
        case trainingPairs = 24
        /// Training's bf16 products: the caller's operand rounded to bf16 (shared by its tasks).
        case trainingRounded = 25
        /// The adapters' deltas of one linear call, computed beside the base products and
        /// added after them.
        case loraDeltas = 26
        /// The int8 mode's integer block sums of its activations (tiled products).
        case int8BlockSums = 27
    }

    /// glibc's allocator: blocks below `mmapThreshold` bytes come from the heap, and the heap
    /// is given back to the kernel only above `trimThreshold` free bytes (no-op elsewhere).
    package static func retainFreedMemory(mmapThreshold: Int, trimThreshold: Int) {
        fk_retain_freed_memory(mmapThreshold, trimThreshold)
    }

    package static func floats(_ slot: Slot, _ count: Int) -> UnsafeMutablePointer<Float> {
        raw(slot, max(count, 1) * MemoryLayout<Float>.stride).assumingMemoryBound(to: Float.self)
    }

    package static func raw(_ slot: Slot, _ bytes: Int) -> UnsafeMutableRawPointer {
        guard let p = fk_thread_scratch(slot.rawValue, UInt(max(bytes, 1))) else {
            preconditionFailure("out of memory for \(bytes) bytes of scratch")
        }
        return p
    }
}
