import Kernels
import PagedKV
import Synchronization

/// The floats of a paged KV cache: per layer, keys and values laid out as
/// `[blocks, blockSize, kvHeads, headDim]`. Which block belongs to which sequence is
/// `PagedKV`'s business; this type only stores.
package final class KVStorage: @unchecked Sendable {
    package let blocks: Int
    package let blockSize: Int
    package let kvHeads: Int
    package let headDim: Int
    package let layers: Int
    /// A process-unique number naming this cache to the other ranks of a tensor-parallel
    /// group (their caches of the same tag hold the other KV heads).
    package let tag: Int
    /// Called with `tag` when the cache is freed (rank 0 tells the other ranks).
    package let onRelease = Mutex<(@Sendable (Int) -> Void)?>(nil)
    private static let nextTag = Atomic<Int>(1)
    let keys: [UnsafeMutablePointer<Float>]
    let values: [UnsafeMutablePointer<Float>]

    package init(layers: Int, blocks: Int, blockSize: Int, kvHeads: Int, headDim: Int) {
        self.layers = layers
        self.blocks = blocks
        self.blockSize = blockSize
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.tag = Self.nextTag.add(1, ordering: .relaxed).oldValue
        let n = blocks * blockSize * kvHeads * headDim
        keys = (0..<layers).map { _ in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: n)
            p.initialize(repeating: 0, count: n)
            return p
        }
        values = (0..<layers).map { _ in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: n)
            p.initialize(repeating: 0, count: n)
            return p
        }
    }

    /// Bytes one token occupies across all layers.
    package static func bytesPerToken(layers: Int, kvHeads: Int, headDim: Int) -> Int { 2 * layers * kvHeads * headDim * 4 }

    deinit {
        if let release = onRelease.withLock({ $0 }) { release(tag) }
        for p in keys { p.deallocate() }
        for p in values { p.deallocate() }
    }

    /// Where position `position` of a sequence with `table` lives in layer `layer`.
    @inline(__always)
    func slot(_ position: Int, _ table: UnsafePointer<Int32>) -> Int {
        (Int(table[position / blockSize]) * blockSize + position % blockSize) * kvHeads * headDim
    }

    /// Copies block `source`'s keys and values to block `destination`, every layer.
    func copyBlock(_ source: Int32, to destination: Int32) {
        let n = blockSize * kvHeads * headDim
        for l in 0..<layers {
            (keys[l] + Int(destination) * n).update(from: keys[l] + Int(source) * n, count: n)
            (values[l] + Int(destination) * n).update(from: values[l] + Int(source) * n, count: n)
        }
    }

    func pagedLayer(_ layer: Int) -> Attention.PagedLayer {
        Attention.PagedLayer(keys: keys[layer], values: values[layer], blockSize: blockSize, kvHeads: kvHeads, headDim: headDim)
    }
}
