/// Bookkeeping for a paged KV cache: fixed-size blocks with reference counts, and a prefix
/// cache over the full blocks that earlier steps computed.
///
/// Every block index in `0..<capacity` is in exactly one of three states:
/// - **free**: holds nothing anyone can find; handed out first;
/// - **referenced** (`refs > 0`): in the block table of one or more sequences (more than one
///   only for a cached prefix they share);
/// - **cached and idle**: no sequence holds it, but its contents are still findable by
///   `match`; these sit in a least-recently-released list and are evicted (forgotten and
///   handed out) only when no free block is left.
///
/// A cached block is keyed by its content: its `blockSize` tokens, the adapter that computed
/// it (an adapter changes K and V) and the content of the block before it (its *chain*, a
/// number `register` gives each distinct prefix). Keys are compared in full, never by hash
/// alone, so a hash collision costs a miss, never a wrong block. No storage lives here; the
/// model's `KVStorage` holds the floats at the same block indices.
package struct BlockAllocator: Sendable {
    package let capacity: Int
    package let blockSize: Int
    /// Free blocks (a stack: the last released is handed out first).
    private var free: [Int32]
    private var refs: [Int32]

    // Cached contents, per block (`chain[b] == 0`: not cached).
    private var chain: [UInt64]
    private var parent: [UInt64]
    private var adapter: [String?]
    private var hashes: [Int]
    /// `blockSize` tokens per block, `[capacity, blockSize]`.
    private var contents: [Int32]
    /// Hash of (parent, adapter, tokens) → the cached block with that key.
    private var index: [Int: Int32]
    private var nextChain: UInt64 = 1
    private let collideForTesting: Bool

    // Idle cached blocks, oldest release first (a doubly linked list over block indices).
    private var previous: [Int32]
    private var next: [Int32]
    private var head: Int32 = -1
    private var tail: Int32 = -1
    package private(set) var idleCount = 0

    /// `collidingHashesForTesting` gives every key the same hash (tests of the full-key check).
    package init(capacity: Int, blockSize: Int, collidingHashesForTesting: Bool = false) {
        precondition(capacity > 0 && blockSize > 0, "capacity and blockSize must be positive")
        self.capacity = capacity
        self.blockSize = blockSize
        self.free = (0..<Int32(capacity)).reversed().map { $0 }
        refs = Array(repeating: 0, count: capacity)
        chain = Array(repeating: 0, count: capacity)
        parent = Array(repeating: 0, count: capacity)
        adapter = Array(repeating: nil, count: capacity)
        hashes = Array(repeating: 0, count: capacity)
        contents = Array(repeating: 0, count: capacity * blockSize)
        index = [:]
        // Room for every block: registering and evicting never allocate.
        index.reserveCapacity(capacity)
        previous = Array(repeating: -1, count: capacity)
        next = Array(repeating: -1, count: capacity)
        collideForTesting = collidingHashesForTesting
    }

    /// Blocks that `allocate` can hand out: free ones and idle cached ones.
    package var freeCount: Int { free.count + idleCount }
    /// Blocks some sequence holds.
    package var usedCount: Int { capacity - freeCount }
    /// Blocks whose contents `match` can find (held or idle).
    package var cachedCount: Int { index.count }

    /// Blocks needed to hold `tokens` positions.
    package func blocksNeeded(tokens: Int) -> Int { (tokens + blockSize - 1) / blockSize }

    /// Whether nobody holds block `b` (so taking it with `acquire` lowers `freeCount`).
    package func isIdle(_ b: Int32) -> Bool { refs[Int(b)] == 0 }

    /// Takes `n` blocks, or returns nil (and takes none) when fewer are available.
    package mutating func allocate(_ n: Int) -> [Int32]? {
        var taken: [Int32] = []
        taken.reserveCapacity(n)
        return allocate(n, appendingTo: &taken) ? taken : nil
    }

    /// Takes `n` blocks and appends them to `table`, or returns false and takes none. Free
    /// blocks go first, then the idle cached blocks released longest ago (forgotten).
    /// Allocates nothing when `table` has the capacity.
    package mutating func allocate(_ n: Int, appendingTo table: inout [Int32]) -> Bool {
        guard n >= 0, n <= freeCount else { return false }
        for _ in 0..<n {
            let b: Int32
            if let f = free.popLast() {
                b = f
            } else {
                b = head
                unlink(b)
                forget(b)
            }
            refs[Int(b)] = 1
            table.append(b)
        }
        return true
    }

    /// Adds a holder to block `b` (a cached block found by `match`).
    package mutating func acquire(_ b: Int32) {
        let i = Int(b)
        if refs[i] == 0 { unlink(b) }
        refs[i] += 1
    }

    /// Drops one holder of each block. A block nobody holds any more becomes free, or idle
    /// if it is cached; the blocks are released last to first, so that a sequence's tail is
    /// evicted before its head (its head is the likelier shared prefix).
    package mutating func release(_ blocks: [Int32]) {
        for b in blocks.reversed() {
            let i = Int(b)
            precondition(refs[i] > 0, "block \(b) released more often than taken")
            refs[i] -= 1
            guard refs[i] == 0 else { continue }
            if chain[i] != 0 { append(b) } else { free.append(b) }
        }
    }

    // MARK: - The prefix cache

    /// The cached blocks holding `tokens` from their start, block by block, for `adapter`:
    /// appended to `blocks` (at most `maxBlocks`). Returns the chain of the last block found
    /// (0 when none). Takes nothing: `acquire` each block to hold it.
    @discardableResult
    package func match(_ tokens: ArraySlice<Int32>, adapter: String?, maxBlocks: Int, into blocks: inout [Int32]) -> UInt64 {
        var link: UInt64 = 0
        var start = tokens.startIndex
        var found = 0
        while found < maxBlocks, start + blockSize <= tokens.endIndex {
            let run = tokens[start..<(start + blockSize)]
            guard let b = index[hash(link, adapter, run)], same(Int(b), link, adapter, run) else { break }
            blocks.append(b)
            link = chain[Int(b)]
            start += blockSize
            found += 1
        }
        return link
    }

    /// The chain that a block following cached block `b` links to.
    package func chain(of b: Int32) -> UInt64 { chain[Int(b)] }

    /// Makes full block `b`, whose tokens are `tokens` after the prefix `link` (0: the
    /// sequence's start) under `adapter`, findable by `match`. Returns the chain that the
    /// next block of the sequence links to. If a block with the same key is already cached
    /// (another sequence computed the same prefix) that one stays, `b` is not cached, and its
    /// chain is returned.
    package mutating func register(_ b: Int32, after link: UInt64, adapter name: String?, tokens: ArraySlice<Int32>) -> UInt64 {
        precondition(tokens.count == blockSize, "only full blocks are cached")
        let i = Int(b)
        if chain[i] != 0 { return chain[i] }
        let h = hash(link, name, tokens)
        if let other = index[h] {
            if same(Int(other), link, name, tokens) { return chain[Int(other)] }
            // A different prefix with the same hash keeps its place; this one gets a chain
            // for its successors but is not findable.
            defer { nextChain += 1 }
            return nextChain
        }
        chain[i] = nextChain
        nextChain += 1
        parent[i] = link
        adapter[i] = name
        hashes[i] = h
        for (k, t) in tokens.enumerated() { contents[i * blockSize + k] = t }
        index[h] = b
        return chain[i]
    }

    private func hash(_ link: UInt64, _ name: String?, _ tokens: ArraySlice<Int32>) -> Int {
        if collideForTesting { return 0 }
        var h = Hasher()
        h.combine(link)
        h.combine(name)
        for t in tokens { h.combine(t) }
        return h.finalize()
    }

    private func same(_ i: Int, _ link: UInt64, _ name: String?, _ tokens: ArraySlice<Int32>) -> Bool {
        guard chain[i] != 0, parent[i] == link, adapter[i] == name else { return false }
        var k = i * blockSize
        for t in tokens {
            if contents[k] != t { return false }
            k += 1
        }
        return true
    }

    /// Removes block `b` from the cache (it is about to hold something else).
    private mutating func forget(_ b: Int32) {
        let i = Int(b)
        if index[hashes[i]] == b { index[hashes[i]] = nil }
        chain[i] = 0
        adapter[i] = nil
    }

    private mutating func append(_ b: Int32) {
        let i = Int(b)
        previous[i] = tail
        next[i] = -1
        if tail >= 0 { next[Int(tail)] = b } else { head = b }
        tail = b
        idleCount += 1
    }

    private mutating func unlink(_ b: Int32) {
        let i = Int(b)
        if previous[i] >= 0 { next[Int(previous[i])] = next[i] } else { head = next[i] }
        if next[i] >= 0 { previous[Int(next[i])] = previous[i] } else { tail = previous[i] }
        previous[i] = -1
        next[i] = -1
        idleCount -= 1
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
