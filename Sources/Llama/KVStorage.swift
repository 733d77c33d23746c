import Kernels
import PagedKV
import Synchronization

/// The entries of a paged KV cache: per layer, keys and values laid out as
/// `[blocks, blockSize, kvHeads, headDim]` elements of `type` (fp32, or 16-bit). Which block
/// belongs to which sequence is `PagedKV`'s business; this type only stores.
package final class KVStorage: @unchecked Sendable {
    package let blocks: Int
    package let blockSize: Int
    package let kvHeads: Int
    package let headDim: Int
    package let layers: Int
    package let type: KVCacheType
    /// A process-unique number naming this cache to the other ranks of a tensor-parallel
    /// group (their caches of the same tag hold the other KV heads).
    package let tag: Int
    /// Called with `tag` when the cache is freed (rank 0 tells the other ranks).
    package let onRelease = Mutex<(@Sendable (Int) -> Void)?>(nil)
    private static let nextTag = Atomic<Int>(1)
    let keys: [UnsafeMutableRawPointer]
    let values: [UnsafeMutableRawPointer]

    package init(layers: Int, blocks: Int, blockSize: Int, kvHeads: Int, headDim: Int, type: KVCacheType = .fp32) {
        self.layers = layers
        self.type = type
        self.blocks = blocks
        self.blockSize = blockSize
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.tag = Self.nextTag.add(1, ordering: .relaxed).oldValue
        let bytes = blocks * blockSize * kvHeads * headDim * type.elementBytes
        func zeroed() -> UnsafeMutableRawPointer {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
            p.initializeMemory(as: UInt8.self, repeating: 0, count: max(bytes, 1))
            return p
        }
        keys = (0..<layers).map { _ in zeroed() }
        values = (0..<layers).map { _ in zeroed() }
    }

    /// Bytes one token occupies across all layers.
    package static func bytesPerToken(layers: Int, kvHeads: Int, headDim: Int, type: KVCacheType = .fp32) -> Int {
        2 * layers * kvHeads * headDim * type.elementBytes
    }

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

    /// Writes one position's keys and values (`kvHeads * headDim` floats each) at element
    /// `slot` of layer `layer`, rounded to the cache's type.
    func store(layer: Int, slot: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>) {
        type.store(k, rows: kvHeads, rowLength: headDim, to: keys[layer], at: slot)
        type.store(v, rows: kvHeads, rowLength: headDim, to: values[layer], at: slot)
    }

    /// Copies block `source`'s keys and values to block `destination`, every layer.
    func copyBlock(_ source: Int32, to destination: Int32) {
        let n = blockSize * kvHeads * headDim * type.elementBytes
        for l in 0..<layers {
            (keys[l] + Int(destination) * n).copyMemory(from: keys[l] + Int(source) * n, byteCount: n)
            (values[l] + Int(destination) * n).copyMemory(from: values[l] + Int(source) * n, byteCount: n)
        }
    }

    func pagedLayer(_ layer: Int) -> Attention.PagedLayer {
        Attention.PagedLayer(keys: keys[layer], values: values[layer], blockSize: blockSize, kvHeads: kvHeads, headDim: headDim, type: type)
    }
}
