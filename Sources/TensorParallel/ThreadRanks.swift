import Foundation

/// Ranks that are threads of one process, meeting at a shared barrier: the same protocol as
/// MPI without processes, so tests can run a whole tensor-parallel group in `swift test`
/// and compare it with the one-process model.
package final class ThreadRanks: RankTransport, @unchecked Sendable {
    package let rank: Int
    package var size: Int { hub.size }
    private let hub: Hub

    /// `size` transports sharing one meeting point; give each to its own thread.
    package static func group(size: Int) -> [ThreadRanks] {
        let hub = Hub(size: size)
        return (0..<size).map { ThreadRanks(rank: $0, hub: hub) }
    }

    private init(rank: Int, hub: Hub) {
        self.rank = rank
        self.hub = hub
    }

    final class Hub: @unchecked Sendable {
        let size: Int
        private let condition = NSCondition()
        private var arrived = 0, generation = 0
        var slots: [UnsafeRawPointer?]

        init(size: Int) {
            self.size = size
            slots = Array(repeating: nil, count: size)
        }

        func barrier() {
            condition.lock()
            defer { condition.unlock() }
            let g = generation
            arrived += 1
            if arrived == size {
                arrived = 0
                generation += 1
                condition.broadcast()
            } else {
                while g == generation { condition.wait() }
            }
        }
    }

    package func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        if rank == root { hub.slots[root] = UnsafeRawPointer(buffer.baseAddress) }
        hub.barrier()
        if rank != root, buffer.count > 0 { buffer.baseAddress!.copyMemory(from: hub.slots[root]!, byteCount: buffer.count) }
        hub.barrier()
    }

    package func broadcastPolling(_ buffer: UnsafeMutableRawBufferPointer, root: Int, spin: Duration) throws {
        try broadcast(buffer, root: root)
    }

    package func allGather(_ values: UnsafePointer<Float>, count: Int, into: UnsafeMutablePointer<Float>) throws {
        hub.slots[rank] = UnsafeRawPointer(values)
        hub.barrier()
        for k in 0..<size { (into + k * count).update(from: hub.slots[k]!.assumingMemoryBound(to: Float.self), count: count) }
        hub.barrier()
    }

    package func gather(_ values: UnsafePointer<Float>, count: Int, into: UnsafeMutablePointer<Float>?, root: Int) throws {
        hub.slots[rank] = UnsafeRawPointer(values)
        hub.barrier()
        if rank == root, let into {
            for k in 0..<size { (into + k * count).update(from: hub.slots[k]!.assumingMemoryBound(to: Float.self), count: count) }
        }
        hub.barrier()
    }
}
