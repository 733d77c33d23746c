import Adapters
import Foundation
import Kernels
import Llama
import MPI
import Synchronization
import Tensors

/// How the ranks of a group reach each other: MPI between processes (`MPICommunicator`),
/// or threads of one process in tests (`ThreadRanks`). Every rank makes the same calls in
/// the same order.
package protocol RankTransport: AnyObject, Sendable {
    var rank: Int { get }
    var size: Int { get }
    func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws
    /// A broadcast an idle rank may wait a long time for (without holding a core).
    func broadcastPolling(_ buffer: UnsafeMutableRawBufferPointer, root: Int, spin: Duration) throws
    func allGather(_ values: UnsafePointer<Float>, count: Int, into: UnsafeMutablePointer<Float>) throws
    func gather(_ values: UnsafePointer<Float>, count: Int, into: UnsafeMutablePointer<Float>?, root: Int) throws
}

extension MPICommunicator: RankTransport {}

/// One rank of a tensor-parallel model.
///
/// Rank 0 runs the whole engine (scheduler, sampler, tokenizer, adapter store, server) and
/// its shard of the model; the other ranks only execute steps. Before each forward step
/// rank 0 broadcasts the step plan (`ForwardBatch`: tokens, positions, block tables,
/// adapter slots) and the adapters' ids; an adapter a rank has not seen is broadcast whole
/// once (each rank keeps its own shard of it), so adapters loaded at run time, from a
/// directory or from bytes, reach every rank. Caches are made and freed the same way.
/// During the step, each row-parallel product (o, down) ends with one all-reduce of
/// `[tokens, hidden]` floats, and rank 0 gathers the vocabulary-split logits.
package final class RankGroup: TensorParallelGroup, @unchecked Sendable {
    package let shard: TensorShard
    package let transport: any RankTransport
    /// Adapters (shards) kept by every rank before the least recently used are dropped.
    package var maxCachedAdapters = 64

    private let lock = NSLock()
    private var config: LlamaConfiguration?
    private var adapterIDs: [String: Int] = [:]
    private var adapters: [Int: (adapter: LoRAAdapter, lastUse: Int)] = [:]
    private var nextAdapter = 1
    private var steps = 0
    private var cachedSet: (ids: [Int], set: AdapterSet)?
    private let pendingFrees = Mutex<[Int]>([])
    private var exited = false

    /// Time spent in all-reduces and the floats they carried (for `facet bench`).
    package let reduceStats = Mutex<(seconds: Double, calls: Int, floats: Int)>((0, 0, 0))

    package init(transport: any RankTransport) {
        self.transport = transport
        shard = TensorShard(rank: transport.rank, size: transport.size)
    }

    /// This rank's model: `model` (the whole model, loaded from its file) cut to this rank's
    /// shard, computing through this group.
    package func shardModel(_ model: LlamaModel) throws -> LlamaModel {
        try TensorShard.check(size: shard.size, model.config)
        lock.withLock { config = model.config }
        let weights = try model.weights.sharded(shard, config: model.config)
        return try LlamaModel(config: model.config, weights: weights, compute: model.compute, kvCacheType: model.kvCacheType, parallel: self, weightTiles: model.weightTiles)
    }

    // MARK: - Collectives

    package func allReduceSum(_ values: UnsafeMutablePointer<Float>, count: Int) throws {
        let start = ContinuousClock.now
        let n = shard.size
        let all = Scratch.floats(.parallelReduce, n * count)
        try transport.allGather(values, count: count, into: all)
        // Rank order, the same on every rank: bitwise equal results everywhere.
        values.update(from: all, count: count)
        for k in 1..<n {
            let part = all + k * count
            for i in 0..<count { values[i] += part[i] }
        }
        let elapsed = ContinuousClock.now - start
        reduceStats.withLock {
            $0.seconds += Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
            $0.calls += 1
            $0.floats += count
        }
    }

    package func gather(_ values: UnsafePointer<Float>, count: Int, into: UnsafeMutablePointer<Float>?) throws {
        try transport.gather(values, count: count, into: into, root: 0)
    }

    // MARK: - Rank 0: shipping steps

    package func didMakeKVStorage(_ kv: KVStorage) {
        guard shard.rank == 0, shard.size > 1 else { return }
        kv.onRelease.withLock { $0 = { [weak self] tag in self?.pendingFrees.withLock { $0.append(tag) } } }
        var w = WireWriter()
        w.int(kv.tag)
        w.int(kv.blocks)
        w.int(kv.blockSize)
        lock.withLock { if !exited { try? send(.makeCache, w.bytes) } }
    }

    package func prepareForward(_ batch: ForwardBatch, kv: KVStorage, deltas: (any LinearDeltas)?) throws -> (any LinearDeltas)? {
        guard shard.rank == 0, shard.size > 1 else { return deltas }
        return try lock.withLock { () throws -> (any LinearDeltas)? in
            guard let config else { throw FacetError(.invalidArgument, "the tensor-parallel group has no model", remedy: "build the model with RankGroup.shardModel") }
            guard !exited else { throw FacetError(.capacity, "the tensor-parallel ranks have stopped", remedy: "restart the job") }
            steps += 1
            let frees = pendingFrees.withLock { list -> [Int] in defer { list.removeAll() }; return list }
            if !frees.isEmpty {
                var w = WireWriter()
                w.ints(frees)
                try send(.freeCaches, w.bytes)
            }
            var local: AdapterSet?
            var ids: [Int] = []
            if let deltas {
                guard let set = deltas as? AdapterSet else {
                    throw FacetError(.unsupported, "tensor parallelism runs LoRA adapters (AdapterSet) only", field: "deltas")
                }
                ids = try set.adapters.map { try adapterID($0, config: config) }
                if let cached = cachedSet, cached.ids == ids {
                    local = cached.set
                } else {
                    let made = AdapterSet(adapters: ids.map { adapters[$0]!.adapter }, baseVocabulary: set.baseVocabulary)
                    cachedSet = (ids, made)
                    local = made
                }
                try evict(keeping: Set(ids))
            }
            var w = WireWriter()
            w.int(kv.tag)
            w.int(deltas == nil ? 0 : 1)
            w.ints(ids)
            batch.encode(into: &w)
            try send(.forward, w.bytes)
            return local
        }
    }

    /// The id every rank knows `adapter` by, broadcasting it the first time.
    private func adapterID(_ adapter: LoRAAdapter, config: LlamaConfiguration) throws -> Int {
        if let id = adapterIDs[adapter.digest] {
            adapters[id]!.lastUse = steps
            return id
        }
        let id = nextAdapter
        nextAdapter += 1
        var w = WireWriter()
        w.int(id)
        adapter.encode(into: &w)
        try send(.loadAdapter, w.bytes)
        adapterIDs[adapter.digest] = id
        adapters[id] = (adapter.sharded(shard, config: config), steps)
        return id
    }

    private func evict(keeping used: Set<Int>) throws {
        while adapters.count > maxCachedAdapters {
            guard let (id, entry) = adapters.filter({ !used.contains($0.key) }).min(by: { $0.value.lastUse < $1.value.lastUse }) else { return }
            adapters[id] = nil
            adapterIDs[entry.adapter.digest] = nil
            var w = WireWriter()
            w.int(id)
            try send(.dropAdapter, w.bytes)
        }
    }

    /// Rank 0: ends the other ranks' step loops (once; later calls do nothing).
    package func shutdown() {
        guard shard.rank == 0, shard.size > 1 else { return }
        lock.withLock {
            guard !exited else { return }
            exited = true
            try? send(.exit, [])
        }
    }

    private func send(_ command: WireCommand, _ payload: [UInt8]) throws {
        var header: [Int64] = [Int64(command.rawValue), Int64(payload.count)]
        try header.withUnsafeMutableBytes { try transport.broadcastPolling($0, root: 0, spin: .microseconds(200)) }
        guard !payload.isEmpty else { return }
        var copy = payload
        try copy.withUnsafeMutableBytes { try transport.broadcast($0, root: 0) }
    }

    // MARK: - Ranks 1...: executing steps

    /// Runs the steps rank 0 sends until it says exit. `model` is this rank's shard (from
    /// `shardModel`). A step that fails here fails the same way on rank 0 (every rank checks
    /// the same batch), so it is reported and the loop goes on.
    package func runSteps(model: LlamaModel, log: (String) -> Void = { _ in }) throws {
        precondition(shard.rank != 0, "rank 0 drives the steps")
        guard let config = lock.withLock({ config }) else {
            throw FacetError(.invalidArgument, "the tensor-parallel group has no model", remedy: "build the model with RankGroup.shardModel")
        }
        var caches: [Int: KVStorage] = [:]
        var held: [Int: LoRAAdapter] = [:]
        var cached: (ids: [Int], set: AdapterSet)?
        let logits = Logits()
        while true {
            var header: [Int64] = [0, 0]
            try header.withUnsafeMutableBytes { try transport.broadcastPolling($0, root: 0, spin: .microseconds(200)) }
            guard let command = WireCommand(rawValue: Int(header[0])), header[1] >= 0, header[1] <= Int64(Int.max / 2) else {
                throw FacetError(.invalidFile, "rank 0 sent an unknown command \(header[0])", remedy: "every rank must run the same facet build")
            }
            var payload = [UInt8](repeating: 0, count: Int(header[1]))
            if !payload.isEmpty { try payload.withUnsafeMutableBytes { try transport.broadcast($0, root: 0) } }
            var r = WireReader(payload)
            switch command {
            case .exit:
                return
            case .makeCache:
                let tag = try r.int(), blocks = try r.int(), blockSize = try r.int()
                guard blocks > 0, blockSize > 0 else { throw FacetError(.invalidFile, "rank 0 asked for a cache of \(blocks) x \(blockSize)") }
                caches[tag] = model.makeKVStorage(blocks: blocks, blockSize: blockSize)
            case .freeCaches:
                for tag in try r.ints() { caches[tag] = nil }
            case .loadAdapter:
                let id = try r.int()
                held[id] = try LoRAAdapter.decode(from: &r).sharded(shard, config: config)
            case .dropAdapter:
                held[try r.int()] = nil
            case .forward:
                let tag = try r.int(), hasDeltas = try r.int() != 0, ids = try r.ints()
                let batch = try ForwardBatch.decode(from: &r)
                guard let kv = caches[tag] else { throw FacetError(.invalidFile, "rank 0 named cache \(tag), which this rank does not have") }
                var deltas: AdapterSet?
                if hasDeltas {
                    if let c = cached, c.ids == ids {
                        deltas = c.set
                    } else {
                        let list = try ids.map { id -> LoRAAdapter in
                            guard let a = held[id] else { throw FacetError(.invalidFile, "rank 0 named adapter \(id), which this rank does not have") }
                            return a
                        }
                        let set = AdapterSet(adapters: list, baseVocabulary: config.vocabSize)
                        cached = (ids, set)
                        deltas = set
                    }
                }
                do {
                    try model.forward(batch, kv: kv, deltas: deltas, into: logits)
                } catch {
                    log("step failed on rank \(shard.rank) as on rank 0: \(error)")
                }
            }
        }
    }
}
