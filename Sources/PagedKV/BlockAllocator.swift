/// Bookkeeping for a paged KV cache: fixed-size blocks handed out from a free list.
///
/// Invariant: every block index in `0..<capacity` is either in `free` or owned by exactly
/// one caller, which returns it with `release`. No storage lives here; the model's
/// `KVStorage` holds the floats at the same block indices.
public struct BlockAllocator: Sendable {
    public let capacity: Int
    public let blockSize: Int
    private var free: [Int32]

    public init(capacity: Int, blockSize: Int) {
        precondition(capacity > 0 && blockSize > 0, "capacity and blockSize must be positive")
        self.capacity = capacity
        self.blockSize = blockSize
        self.free = (0..<Int32(capacity)).reversed().map { $0 }
    }

    public var freeCount: Int { free.count }
    public var usedCount: Int { capacity - free.count }

    /// Blocks needed to hold `tokens` positions.
    public func blocksNeeded(tokens: Int) -> Int { (tokens + blockSize - 1) / blockSize }

    /// Takes `n` blocks, or returns nil (and takes none) when fewer are free.
    public mutating func allocate(_ n: Int) -> [Int32]? {
        guard n <= free.count else { return nil }
        let taken = Array(free.suffix(n).reversed())
        free.removeLast(n)
        return taken
    }

    public mutating func release(_ blocks: [Int32]) {
        free.append(contentsOf: blocks.reversed())
    }
}

/// One sequence's view of the cache: the blocks holding positions `0..<length`.
public struct BlockTable: Sendable, Equatable {
    public var blocks: [Int32] = []
    public init(blocks: [Int32] = []) { self.blocks = blocks }

    /// Grows the table so that it can hold `tokens` positions; false when the allocator is
    /// out of blocks (the table is then unchanged).
    public mutating func reserve(tokens: Int, from allocator: inout BlockAllocator) -> Bool {
        let need = allocator.blocksNeeded(tokens: tokens) - blocks.count
        if need <= 0 { return true }
        guard let more = allocator.allocate(need) else { return false }
        blocks.append(contentsOf: more)
        return true
    }

    public mutating func release(to allocator: inout BlockAllocator) {
        allocator.release(blocks)
        blocks.removeAll()
    }
}
