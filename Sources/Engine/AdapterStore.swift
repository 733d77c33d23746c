import Adapters
import Foundation
import Kernels
import Llama
import Loading
import Tensors

/// An integer shared between threads.
package final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    package init() {}
    /// Adds `n` and returns the new value.
    @discardableResult package func add(_ n: Int) -> Int { lock.withLock { value += n; return value } }
    package var current: Int { lock.withLock { value } }
}

/// The adapters a server knows, by name, with a resident cache bounded in bytes.
///
/// Thousands of adapters may be registered; only those in use or recently used stay loaded.
/// An adapter in use by a request is pinned and never evicted; the least recently used
/// unpinned ones are evicted when the budget would be exceeded, and reloaded from their
/// directory when asked for again. An adapter registered from bytes (TensorRT-LLM's
/// `lora_weights` + `lora_config` sent with a request, or PEFT tensors) has no directory:
/// once evicted it stays registered but `acquire` refuses it with an error saying to send
/// its weights again, and `register(name:adapter:)` with the same name puts them back.
package final class AdapterStore: @unchecked Sendable {
    package struct Entry: Sendable {
        package let name: String
        /// The directory it is reloaded from after eviction; nil for an adapter that came
        /// as bytes (`register(name:adapter:)`), which its owner must send again once
        /// evicted.
        package let path: String?
        /// Loaded through `--adapter-root`: every file must stay inside the root on each (re)load.
        package let confined: Bool
        package var adapter: LoRAAdapter?
        /// The digest of the weights first registered: a reload after eviction must find
        /// the same files, or is refused (the name must not start serving other weights
        /// unannounced).
        package var digest: String? = nil
        /// Registered from bytes under no name of its owner's (TensorRT-LLM's `lora_weights`
        /// without a `lora_task_id`, named by their content): dropped whole when evicted, as
        /// the same bytes register it again.
        package var transient = false
        package var pins = 0
        package var lastUsed: UInt64 = 0
        package var loads = 0
    }

    /// A pinned adapter; give it back with `release`.
    package struct Lease: Sendable {
        package let name: String
        package let adapter: LoRAAdapter
    }

    package let base: LlamaConfiguration
    let baseEmbedding: LinearWeight
    package let budgetBytes: Int
    package let maxRank: Int?
    /// Runtime loads by path must stay under this directory (nil = runtime loads by path refused).
    package let root: String?
    private let lock = NSLock()
    private var entries: [String: Entry] = [:]
    private var clock: UInt64 = 0

    /// The cache's counters (as TensorRT-LLM's LoRA cache reports them): an `acquire` that
    /// finds the adapter resident is a hit; one that must load it again (or cannot: evicted
    /// bytes, unknown name) a miss; an adapter dropped to make room an eviction.
    package let cacheHits = LockedCounter()
    package let cacheMisses = LockedCounter()
    package let cacheEvictions = LockedCounter()

    /// How loaded adapters keep their factors (see `LoRAPrecision`).
    package let precision: LoRAPrecision

    package init(base: LlamaConfiguration, baseEmbedding: LinearWeight, budgetBytes: Int, maxRank: Int?, root: String?,
                precision: LoRAPrecision = .exact) {
        self.precision = precision
        self.base = base
        self.baseEmbedding = baseEmbedding
        self.budgetBytes = budgetBytes
        self.maxRank = maxRank
        self.root = root.map { URL(fileURLWithPath: $0).standardizedFileURL.resolvingSymlinksInPath().path }
    }

    package var names: [String] { lock.withLock { entries.keys.sorted() } }

    package var residentNames: [String] { lock.withLock { entries.values.filter { $0.adapter != nil }.map(\.name).sorted() } }

    /// Adapter directories under the root (PEFT or TensorRT-LLM form) that are not
    /// registered: what first use would load.
    package func onDiskNames() -> [String] {
        guard let root, let items = try? FileManager.default.contentsOfDirectory(atPath: root) else { return [] }
        let (known, skipped) = lock.withLock { (Set(entries.keys), unloaded) }
        return items.filter { name in
            guard !known.contains(name), !skipped.contains(name), !name.hasPrefix(".") else { return false }
            let dir = (root as NSString).appendingPathComponent(name)
            return ["adapter_config.json", "model.lora_weights.npy"].contains {
                FileManager.default.fileExists(atPath: (dir as NSString).appendingPathComponent($0))
            }
        }.sorted()
    }

    package var residentCount: Int { lock.withLock { entries.values.filter { $0.adapter != nil }.count } }
    package var residentBytes: Int { lock.withLock { entries.values.reduce(0) { $0 + ($1.adapter?.byteSize ?? 0) } } }

    package func entry(_ name: String) -> Entry? { lock.withLock { entries[name] } }

    /// Checks that a runtime-given path lies inside the adapter root (no traversal, no
    /// symlinks out of it) and returns its resolved form.
    package func resolveUnderRoot(_ path: String) throws -> String {
        guard let root else {
            throw FacetError(.invalidArgument, "loading adapters by path at runtime is disabled", field: "lora_path",
                             remedy: "start the server with --adapter-root DIR")
        }
        let candidate = path.hasPrefix("/") ? path : (root as NSString).appendingPathComponent(path)
        let resolved = URL(fileURLWithPath: candidate).standardizedFileURL.resolvingSymlinksInPath().path
        guard resolved == root || resolved.hasPrefix(root + "/") else {
            throw FacetError(.invalidArgument, "adapter path is outside the adapter root", field: "lora_path",
                             remedy: "place the adapter under \(root)")
        }
        try checkFilesUnderRoot(resolved)
        return resolved
    }

    /// Refuses a directory holding a link (or anything else) whose real path leaves the
    /// adapter root: a symlinked `adapter_config.json` must not open `/etc/passwd`.
    func checkFilesUnderRoot(_ directory: String) throws {
        guard let root else { return }
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: directory) else { return }  // the loader reports a missing directory
        for name in names {
            let full = (directory as NSString).appendingPathComponent(name)
            let real = URL(fileURLWithPath: full).resolvingSymlinksInPath().path
            guard real == root || real.hasPrefix(root + "/") else {
                throw FacetError(.invalidArgument, "\(name) links outside the adapter root", file: full, field: "lora_path",
                                 remedy: "copy the file into the adapter directory instead of linking it")
            }
        }
    }

    /// Registers `name` -> `path`, loading it once to check it fits the base model.
    /// `confined`: the path came through `resolveUnderRoot`, and its files are checked
    /// against the root again whenever the adapter is reloaded.
    package func register(name: String, path: String, confined: Bool = false) throws {
        defer { flushReports() }
        guard !name.isEmpty, name.count <= 256 else {
            throw FacetError(.invalidArgument, "adapter name must be 1-256 characters", field: "lora_name")
        }
        if lock.withLock({ entries[name] != nil }) {
            throw FacetError(.invalidArgument, "an adapter named \(name) is already loaded", field: "lora_name",
                             remedy: "unload it first, or pick another name")
        }
        let adapter = try loadChecked(name: name, path: path, confined: confined)
        try lock.withLock {
            guard entries[name] == nil else {
                throw FacetError(.invalidArgument, "an adapter named \(name) is already loaded", field: "lora_name")
            }
            // Make room first: a load refused for lack of memory registers nothing.
            try evict(keeping: name, incoming: adapter.byteSize)
            unloaded.remove(name)
            clock += 1
            entries[name] = Entry(name: name, path: path, confined: confined, adapter: adapter, digest: adapter.digest, lastUsed: clock, loads: 1)
        }
    }

    /// Registers an adapter that arrived as bytes (already parsed), checked against the base
    /// and under the same byte budget as a file. Re-registering the name of an evicted
    /// in-memory adapter puts its weights back (the owner re-sending them); any other
    /// existing name is refused.
    package func register(name: String, adapter: LoRAAdapter, transient: Bool = false) throws {
        defer { flushReports() }
        guard !name.isEmpty, name.count <= 256 else {
            throw FacetError(.invalidArgument, "adapter name must be 1-256 characters", field: "lora_name")
        }
        var a = try AdapterLoader.checked(adapter, base: base).storing(precision)
        a.name = name
        try checkLimits(a, source: name)
        try lock.withLock {
            let existing = entries[name]
            if let existing, existing.path != nil || existing.adapter != nil {
                guard existing.adapter?.digest == a.digest else {
                    throw FacetError(.invalidArgument, "an adapter named \(name) is already loaded", field: "lora_name",
                                     remedy: "unload it first, or pick another name")
                }
                return   // the same weights again: nothing to do
            }
            try evict(keeping: name, incoming: a.byteSize)
            clock += 1
            var entry = Entry(name: name, path: nil, confined: false, adapter: a, digest: a.digest, lastUsed: clock,
                              loads: (existing?.loads ?? 0) + 1)
            entry.transient = transient
            entry.pins = existing?.pins ?? 0
            entries[name] = entry
            dropOldTombstones()
        }
    }

    /// With an adapter root: registers `ROOT/NAME` the first time a request names it, once
    /// however many requests ask at the same moment (the others wait for that load).
    /// Returns false when there is no root or no such adapter directory (the caller then
    /// answers "model not found"); load errors (bad files, memory full) are thrown.
    package func registerOnFirstUse(name: String) throws -> Bool {
        guard let root, !name.isEmpty, name != ".", name != "..", !name.contains("/"), !name.contains("\0") else { return false }
        // An adapter the operator unloaded stays unloaded until loaded again explicitly.
        guard !lock.withLock({ unloaded.contains(name) }) else { return false }
        var isDirectory: ObjCBool = false
        let path = (root as NSString).appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else { return false }
        loading.lock()
        while loadingNames.contains(name) { loading.wait() }
        if entry(name) != nil {
            loading.unlock()
            return true
        }
        loadingNames.insert(name)
        loading.unlock()
        defer {
            loading.lock()
            loadingNames.remove(name)
            loading.broadcast()
            loading.unlock()
        }
        try register(name: name, path: try resolveUnderRoot(name), confined: true)
        firstUseLoads.add(1)
        return true
    }

    /// Names unloaded with `unregister`: not loaded on first use again.
    private var unloaded = Set<String>()
    private let loading = NSCondition()
    private var loadingNames = Set<String>()
    /// Adapters registered by `registerOnFirstUse` (for tests and metrics).
    package let firstUseLoads = LockedCounter()

    package func unregister(name: String) throws {
        try lock.withLock {
            guard entries.removeValue(forKey: name) != nil else {
                throw FacetError(.notFound, "no adapter named \(name)", field: "lora_name")
            }
            unloaded.insert(name)
        }
    }

    /// Pins the adapter (loading it again if it was evicted).
    package func acquire(_ name: String) throws -> Lease {
        defer { flushReports() }
        let cached: (LoRAAdapter?, String?, Bool)? = lock.withLock {
            guard var e = entries[name] else { return nil }
            clock += 1
            e.lastUsed = clock
            if e.adapter != nil { e.pins += 1 }
            entries[name] = e
            return (e.adapter, e.path, e.confined)
        }
        guard let (resident, storedPath, confined) = cached else {
            cacheMisses.add(1)
            throw FacetError(.notFound, "the model \(name) does not exist", field: "model", remedy: "GET /v1/models lists the base model and the adapters")
        }
        if let resident {
            cacheHits.add(1)
            return Lease(name: name, adapter: resident)
        }
        cacheMisses.add(1)
        guard let path = storedPath else {
            throw FacetError(.notFound, "adapter \(name) was evicted from memory and has no file to reload it from", field: "lora_weights",
                             remedy: "send its weights (lora_weights and lora_config) again with the request")
        }
        let adapter: LoRAAdapter
        do {
            adapter = try loadChecked(name: name, path: path, confined: confined)
        } catch {
            lock.withLock { report("adapter \(name) could not be reloaded from \(path): \(error)") }
            throw error
        }
        return try lock.withLock {
            guard var e = entries[name] else {
                throw FacetError(.notFound, "the model \(name) was unloaded", field: "model")
            }
            if let registered = e.digest, registered != adapter.digest {
                report("adapter \(name) changed on disk since it was registered: refused until it is loaded again")
                throw FacetError(.invalidFile, "adapter \(name) changed on disk since it was registered (its files no longer hold the weights it was loaded with)",
                                 file: path, field: "model",
                                 remedy: "unload it (/v1/unload_lora_adapter) and load it again to serve the new files, or put the old files back")
            }
            try evict(keeping: name, incoming: e.adapter == nil ? adapter.byteSize : 0)
            if e.adapter == nil {
                e.adapter = adapter
                e.loads += 1
            }
            e.pins += 1
            entries[name] = e
            return Lease(name: name, adapter: e.adapter!)
        }
    }

    package func release(_ lease: Lease) {
        lock.withLock {
            if var e = entries[lease.name], e.pins > 0 {
                e.pins -= 1
                entries[lease.name] = e
            }
        }
    }

    private func loadChecked(name: String, path: String, confined: Bool) throws -> LoRAAdapter {
        if confined { try checkFilesUnderRoot(path) }
        let adapter = try AdapterLoader.load(directory: path, name: name, base: base, baseEmbedding: baseEmbedding).storing(precision)
        try checkLimits(adapter, source: path)
        return adapter
    }

    private func checkLimits(_ adapter: LoRAAdapter, source: String) throws {
        if let maxRank, adapter.maxRank > maxRank {
            throw FacetError(.capacity, "adapter rank \(adapter.maxRank) exceeds --max-lora-rank \(maxRank)", file: source, field: "r",
                             remedy: "raise --max-lora-rank")
        }
        if adapter.byteSize > budgetBytes {
            throw FacetError(.capacity, "adapter needs \(adapter.byteSize) bytes, more than the whole --max-lora-memory of \(budgetBytes)",
                             file: source, remedy: "raise --max-lora-memory")
        }
    }

    /// Evicts least recently used, unpinned adapters until `incoming` more bytes fit.
    /// Called with the lock held.
    private func evict(keeping: String, incoming: Int) throws {
        func total() -> Int { entries.values.reduce(0) { $0 + ($1.adapter?.byteSize ?? 0) } }
        while total() + incoming > budgetBytes {
            let candidates = entries.values.filter { $0.adapter != nil && $0.pins == 0 && $0.name != keeping }
            guard let victim = candidates.min(by: { $0.lastUsed < $1.lastUsed }) else {
                throw FacetError(.capacity, "adapter memory is full of adapters in use", field: "model",
                                 remedy: "retry shortly, or raise --max-lora-memory")
            }
            if victim.path == nil && victim.transient {
                entries.removeValue(forKey: victim.name)
            } else {
                entries[victim.name]?.adapter = nil
            }
            cacheEvictions.add(1)
            report("adapter \(victim.name) evicted (\(victim.path == nil ? (victim.transient ? "dropped: sent without a task id" : "its owner must send its weights again") : "reloaded from \(victim.path!) when asked for"))")
        }
    }

    /// Evicted adapters that came as bytes stay registered (so that a request naming one is
    /// told to send its weights again), but at most `maxTombstones` of them: the oldest go.
    /// Called with the lock held.
    private func dropOldTombstones() {
        let tombstones = entries.values.filter { $0.adapter == nil && $0.path == nil && $0.pins == 0 }
        guard tombstones.count > maxTombstones else { return }
        for e in tombstones.sorted(by: { $0.lastUsed < $1.lastUsed }).prefix(tombstones.count - maxTombstones) {
            entries.removeValue(forKey: e.name)
        }
    }

    package var maxTombstones = 4096

    private var eventHandler: (@Sendable (String) -> Void)?
    /// Where the store reports what an operator should see in the log: evictions, reloads
    /// that failed (files changed or vanished), weights that changed on disk.
    package func onEvent(_ handler: @escaping @Sendable (String) -> Void) { lock.withLock { eventHandler = handler } }
    /// Reports made with the lock held (evictions) wait in `pendingReports` until `flushReports`.
    private func report(_ message: String) { pendingReports.append(message) }
    /// Hands the waiting reports to the handler, outside the lock.
    private func flushReports() {
        let (handler, reports) = lock.withLock { () -> ((@Sendable (String) -> Void)?, [String]) in
            defer { pendingReports.removeAll() }
            return (eventHandler, pendingReports)
        }
        for r in reports { handler?(r) }
    }
    private var pendingReports: [String] = []
}
