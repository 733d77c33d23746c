import Kernels
import Tensors
import Testing
import TestSupport

/// The persistent pool under back-to-back fork-joins and concurrent callers: every run
/// gives the bitwise same result (a task taken twice or skipped would change it).
@Suite struct ThreadPoolTests {
    @Test func repeatedAndConcurrentRunsAreIdentical() async throws {
        var rng = SplitMix(seed: 9)
        let o = 512, k = 256, t = 3
        let w = try LinearWeight.quantize(Matrix(rows: o, cols: k, data: (0..<(o * k)).map { _ in rng.float() }), to: .q4_1)
        let x = (0..<(t * k)).map { _ in rng.float() }
        func run() -> [Float] {
            var y = [Float](repeating: 0, count: t * o)
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { w.matmul(x: xp.baseAddress!, t: t, y: $0.baseAddress!) } }
            return y
        }
        let first = run()
        for _ in 0..<300 { #expect(run() == first) }
        let results = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<4 { group.addTask { (0..<50).allSatisfy { _ in run() == first } } }
            var all = true
            for await ok in group { all = all && ok }
            return all
        }
        #expect(results)
        var counts = [Int](repeating: 0, count: 1000)
        counts.withUnsafeMutableBufferPointer { c in
            let p = SendableCounter(c.baseAddress!)
            Parallel.forEach(1000) { i in p.p[i] += 1 }
        }
        #expect(counts.allSatisfy { $0 == 1 })
    }

    /// Tasks run beside a product in its parallel region (`matmul(sharing:..., beside:)`, how
    /// the adapters' deltas share the base products' fork-join): each extra task runs once,
    /// whatever the product's own task count, and the product's output is the plain one.
    @Test(arguments: [(1, 256), (3, 512), (32, 576), (70, 1536)], [1, 2, 5, 48])
    func tasksBesideAProductRunOnceEach(shape: (t: Int, o: Int), extras: Int) throws {
        var rng = SplitMix(seed: 21)
        let k = 128
        let w = try LinearWeight.quantize(Matrix(rows: shape.o, cols: k, data: (0..<(shape.o * k)).map { _ in rng.float() }), to: .q4_1)
        let x = (0..<(shape.t * k)).map { _ in rng.float() }
        var plain = [Float](repeating: 0, count: shape.t * shape.o), shared = plain
        x.withUnsafeBufferPointer { xp in plain.withUnsafeMutableBufferPointer { w.matmul(x: xp.baseAddress!, t: shape.t, y: $0.baseAddress!) } }
        var counts = [Int](repeating: 0, count: extras)
        x.withUnsafeBufferPointer { xp in
            shared.withUnsafeMutableBufferPointer { y in
                counts.withUnsafeMutableBufferPointer { c in
                    let tasks = ParallelTasks(count: extras, entry: { context, i in
                        context!.assumingMemoryBound(to: Int.self)[Int(i)] += 1
                    }, context: UnsafeMutableRawPointer(c.baseAddress!))
                    let products = [LinearWeight.Product(w, y: y.baseAddress!)]
                    products.withUnsafeBufferPointer {
                        LinearWeight.matmul(sharing: xp.baseAddress!, t: shape.t, compute: .fp32, $0, beside: tasks)
                    }
                }
            }
        }
        #expect(counts == [Int](repeating: 1, count: extras))
        #expect(shared.map(\.bitPattern) == plain.map(\.bitPattern))
    }

    /// Back-to-back runs whose task counts grow from one run to the next: a worker still
    /// finishing the last run must never take a task of the next one before that run is
    /// published (it would run it with stale parameters and let the caller return early).
    /// Each task stamps its slot with the run's number; after every run, every slot of that
    /// run carries it. The window such a worker needs is a few instructions wide, so the
    /// second case makes workers stall there (the race then showed in most tries).
    @Test(arguments: [false, true])
    func aRunReturnsOnlyWhenAllItsTasksAreDone(stalling: Bool) {
        if stalling { Parallel.stallWorkersForTests(true) }
        defer { if stalling { Parallel.stallWorkersForTests(false) } }
        let bad = Self.unfinishedTasks(runs: stalling ? 100_000 : 1_000_000, phase: 0)
        #expect(bad == 0, "\(bad) task(s) not done when their run returned")
    }

    /// The same with two callers at once (one holds the pool, the other runs its tasks on its
    /// own thread meanwhile, as when a test or a second engine shares the process).
    @Test func concurrentCallersEachGetAllTheirTasksDone() async {
        let bad = await withTaskGroup(of: Int.self) { group in
            for caller in 0..<2 { group.addTask { Self.unfinishedTasks(runs: 200_000, phase: caller) } }
            return await group.reduce(0, +)
        }
        #expect(bad == 0, "\(bad) task(s) not done when their run returned")
    }

    /// Makes `runs` fork-joins alternating 2 and 9...15 tasks (`phase` shifts which runs are
    /// short), each task stamping its slot with the run's number, and counts the slots a run
    /// had not stamped when it returned.
    static func unfinishedTasks(runs: Int, phase: Int) -> Int {
        var stamps = [Int](repeating: -1, count: 16)
        var bad = 0
        stamps.withUnsafeMutableBufferPointer { s in
            let p = SendableCounter(s.baseAddress!)
            for run in 0..<runs {
                let tasks = (run + phase) % 2 == 0 ? 2 : 9 + run % 7
                Parallel.forEach(tasks) { i in p.p[i] = run }
                for i in 0..<tasks where p.p[i] != run { bad += 1 }
            }
        }
        return bad
    }
}

/// The split of a parallel range: its pieces tile `0..<count` in order, are aligned to the
/// granule (except the end) and are several per thread when the work pays for it.
@Suite struct SplitTests {
    @Test(arguments: [(576, 8, 331_776), (192, 8, 110_592), (49_152, 8, 28_311_552), (1536, 8, 884_736), (100, 1, 10), (7, 4, 1_000_000), (0, 8, 1_000_000), (1000, 256, 32_000)])
    func piecesTileTheRangeAndShrink(count: Int, granule: Int, work: Int) {
        let split = Parallel.Split(count, granule: granule, work: work)
        var next = 0
        for i in 0..<split.parts {
            let r = split.range(i)
            #expect(r.lowerBound == next)
            #expect(!r.isEmpty)
            #expect(r.upperBound == count || r.count % granule == 0)
            next = r.upperBound
        }
        #expect(next == count)
        #expect(count == 0 ? split.parts == 0 : split.parts >= 1)
        if Parallel.threadCount > 1 && work >= 16_384 && count >= 64 * granule {
            #expect(split.parts >= 2 * Parallel.threadCount)
        }
        if work < 16_384 { #expect(split.parts <= 1) }
    }
}

struct SendableCounter: @unchecked Sendable {
    let p: UnsafeMutablePointer<Int>
    init(_ p: UnsafeMutablePointer<Int>) { self.p = p }
}
