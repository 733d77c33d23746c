import Dispatch
internal import CKernels

/// Runs `body(chunk)` for chunks `0..<chunks` on all cores and waits.
///
/// Work is split by *outputs* only, so every output element is produced by exactly one
/// thread with the same instruction sequence whatever the split: results never depend on
/// the thread count or the batch size.
package enum Parallel {
    /// Number of worker threads; `FACET_THREADS` overrides the core count. Under `mpirun`,
    /// ranks on one host share its cores (Open MPI's `OMPI_COMM_WORLD_LOCAL_SIZE`), so
    /// tensor-parallel ranks do not oversubscribe the machine by default.
    package static let threadCount: Int = {
        if let text = getenvString("FACET_THREADS"), let n = Int(text), n > 0 { return n }
        let cores = max(1, ProcessInfoLite.activeProcessorCount)
        if let text = getenvString("OMPI_COMM_WORLD_LOCAL_SIZE"), let local = Int(text), local > 1 { return max(1, cores / local) }
        return cores
    }()

    /// Runs on a persistent pool of `threadCount` threads (the caller included) whose
    /// workers spin briefly between steps, so a fork-join costs microseconds.
    ///
    /// The caller's closure context stays on its stack; the one heap allocation per call is
    /// Swift's `withoutActuallyEscaping` check (a small thunk).
    package static func forEach(_ chunks: Int, _ body: (Int) -> Void) {
        if chunks <= 1 || threadCount == 1 {
            for c in 0..<chunks { body(c) }
            return
        }
        // Called through a function value so the optimizer does not clone the runner for
        // each closure (a clone re-forms the closure on the heap).
        poolRunner(chunks, body)
    }

    nonisolated(unsafe) private static var poolRunner: (Int, (Int) -> Void) -> Void = runOnPool

    @inline(never)
    private static func runOnPool(_ chunks: Int, _ body: (Int) -> Void) {
        startPool
        // The callers hand in closures that write disjoint outputs; the pool only needs the
        // closure for the duration of this call. A concrete struct field holds it, so no
        // reabstraction thunk is needed to call it from C.
        withoutActuallyEscaping(body) { escaping in
            var job = TaskBody(run: escaping)
            withUnsafeMutablePointer(to: &job) { pointer in
                fk_pool_run(Int32(chunks), { context, task in
                    context!.assumingMemoryBound(to: TaskBody.self).pointee.run(Int(task))
                }, UnsafeMutableRawPointer(pointer))
            }
        }
    }

    private struct TaskBody {
        let run: (Int) -> Void
    }

    /// Runs `job.run(task)` for tasks `0..<tasks` on the pool (or on this thread when
    /// `serial`), and waits. The job is a value in the caller's frame reached through a C
    /// entry point, so unlike a closure nothing is allocated: the step loop's hot regions
    /// (products, attention, norms, activations) use this.
    package static func run<J: ParallelJob>(_ tasks: Int, serial: Bool = false, _ job: J) {
        if serial || tasks <= 1 || threadCount == 1 {
            for task in 0..<tasks { job.run(task) }
            return
        }
        startPool
        var local = job
        withUnsafeMutablePointer(to: &local) { fk_pool_run(Int32(tasks), J.entry, UnsafeMutableRawPointer($0)) }
    }

    /// Runs `tasks` alone on the pool and waits.
    package static func run(_ tasks: ParallelTasks) { run(tasks.count, TasksJob(tasks: tasks)) }

    private struct TasksJob: ParallelJob {
        let tasks: ParallelTasks
        static let entry: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void = { job, task in
            job!.assumingMemoryBound(to: TasksJob.self).pointee.run(Int(task))
        }
        func run(_ task: Int) { tasks.run(task) }
    }

    private static let startPool: Void = fk_pool_start(Int32(threadCount))

    /// For the pool's tests: makes the workers stall briefly after reading a ticket, so a
    /// race between a late worker and the next run shows within a short test.
    package static func stallWorkersForTests(_ on: Bool) { fk_pool_stall_for_tests(on ? 1 : 0) }

    /// Splits `0..<count` into about `threadCount * 2` ranges aligned to `granule` and runs
    /// them in parallel when `work` (an estimate of multiply-adds) is large enough to pay.
    package static func ranges(_ count: Int, granule: Int = 1, work: Int, _ body: (Range<Int>) -> Void) {
        let split = Split(count, granule: granule, work: work)
        if split.parts <= 1 {
            if split.parts == 1 { body(0..<count) }
            return
        }
        forEach(split.parts) { body(split.range($0)) }
    }

    /// How `ranges` cuts `0..<count`: about `threadCount * 2` (or `* 6` for large `work`)
    /// pieces aligned to `granule`, or one piece when `work` (an estimate of multiply-adds)
    /// is too small to pay for a fork-join.
    package struct Split: Sendable {
        package let count: Int, per: Int, parts: Int

        package init(_ count: Int, granule: Int = 1, work: Int) {
            self.count = count
            let wanted = work < 16_384 || threadCount == 1 ? 1 : min(threadCount * (work < 4_000_000 ? 2 : 6), (count + granule - 1) / granule)
            per = wanted <= 1 ? max(count, 1) : ((count + wanted - 1) / wanted + granule - 1) / granule * granule
            parts = count == 0 ? 0 : (count + per - 1) / per
        }

        package func range(_ i: Int) -> Range<Int> { (i * per)..<min(count, (i + 1) * per) }
    }
}

/// Tasks another region runs beside its own (e.g. the adapters' deltas beside the base
/// products, so memory-bound and compute-bound work share one fork-join): `entry(context,
/// i)` for `i in 0..<count`. The context must stay valid for the call it is handed to.
package struct ParallelTasks {
    package let count: Int
    package let entry: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void
    package let context: UnsafeMutableRawPointer?
    package init(count: Int, entry: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void, context: UnsafeMutableRawPointer?) {
        self.count = count
        self.entry = entry
        self.context = context
    }
    package static var none: ParallelTasks { ParallelTasks(count: 0, entry: { _, _ in }, context: nil) }
    package func run(_ i: Int) { entry(context, Int32(i)) }
}

/// A parallel loop body whose state lives in the caller's frame (see `Parallel.run`).
package protocol ParallelJob {
    func run(_ task: Int)
    /// The C entry point: `{ job, task in job!.assumingMemoryBound(to: Self.self).pointee.run(Int(task)) }`
    /// written with the conforming type's name.
    static var entry: @convention(c) (UnsafeMutableRawPointer?, Int32) -> Void { get }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

func getenvString(_ name: String) -> String? {
    guard let p = getenv(name) else { return nil }
    return String(cString: p)
}

enum ProcessInfoLite {
    static var activeProcessorCount: Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }
}
