/// Bookkeeping for a paged KV cache: fixed-size blocks handed out from a free list.
///
/// Invariant: every block index in `0..<capacity` is either in `free` or owned by exactly
/// one caller, which returns it with `release`. No storage lives here; the model's
/// `KVStorage` holds the floats at the same block indices.
package struct BlockAllocator: Sendable {
    package let capacity: Int
    package let blockSize: Int
    private var free: [Int32]

    package init(capacity: Int, blockSize: Int) {
        precondition(capacity > 0 && blockSize > 0, "capacity and blockSize must be positive")
        self.capacity = capacity
        self.blockSize = blockSize
        self.free = (0..<Int32(capacity)).reversed().map { $0 }
    }

    package var freeCount: Int { free.count }
    package var usedCount: Int { capacity - free.count }

    /// Blocks needed to hold `tokens` positions.
    package func blocksNeeded(tokens: Int) -> Int { (tokens + blockSize - 1) / blockSize }

    /// Takes `n` blocks, or returns nil (and takes none) when fewer are free.
    package mutating func allocate(_ n: Int) -> [Int32]? {
        guard n <= free.count else { return nil }
        let taken = Array(free.suffix(n).reversed())
        free.removeLast(n)
        return taken
    }

    /// Takes `n` blocks and appends them to `table` (in `allocate`'s order), or returns
    /// false and takes none. Allocates nothing when `table` has the capacity.
    package mutating func allocate(_ n: Int, appendingTo table: inout [Int32]) -> Bool {
        guard n <= free.count else { return false }
        for i in 0..<n { table.append(free[free.count - 1 - i]) }
        free.removeLast(n)
        return true
    }

    package mutating func release(_ blocks: [Int32]) {
        free.append(contentsOf: blocks.reversed())
    }
}

/// One sequence's view of the cache: the blocks holding positions `0..<length`.
package struct BlockTable: Sendable, Equatable {
    package var blocks: [Int32] = []
    package init(blocks: [Int32] = []) { self.blocks = blocks }

    /// Grows the table so that it can hold `tokens` positions; false when the allocator is
    /// out of blocks (the table is then unchanged).
    package mutating func reserve(tokens: Int, from allocator: inout BlockAllocator) -> Bool {
        let need = allocator.blocksNeeded(tokens: tokens) - blocks.count
        if need <= 0 { return true }
        return allocator.allocate(need, appendingTo: &blocks)
    }

    package mutating func release(to allocator: inout BlockAllocator) {
        allocator.release(blocks)
        blocks.removeAll(keepingCapacity: true)
    }
}
