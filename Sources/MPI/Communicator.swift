import Foundation
import Tensors
#if canImport(CMPI)
import CMPI
#endif

/// Open MPI, reached through its C API (the `CMPI` system library, built in when Debian's
/// `libopenmpi-dev` was installed at build time; `scripts/setup` installs it). Without it
/// Facet builds and runs as one process, and asking for more than one rank says how to get MPI.
package enum MPIRuntime {
    /// Whether this build links Open MPI.
    package static var isCompiledIn: Bool {
        #if canImport(CMPI)
        true
        #else
        false
        #endif
    }

    /// The number of ranks an MPI launcher (mpirun / mpiexec) started, from the environment
    /// it gives each process; nil when the process was started by hand.
    package static var launchedWorldSize: Int? {
        let env = ProcessInfo.processInfo.environment
        for key in ["OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"] {
            if let text = env[key], let n = Int(text), n >= 1 { return n }
        }
        return nil
    }

    /// This process's rank as the MPI launcher announced it (nil when started by hand).
    package static var launchedRank: Int? {
        let env = ProcessInfo.processInfo.environment
        for key in ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"] {
            if let text = env[key], let n = Int(text), n >= 0 { return n }
        }
        return nil
    }

    /// Whether this process should print errors every rank hits alike (rank 0 speaks for
    /// all; a process started by hand is rank 0).
    package static var speaksForAllRanks: Bool { (launchedRank ?? 0) == 0 }

    package static let missing = FacetError(.unsupported, "this facet was built without Open MPI, so it runs as one process only", field: "tp_size",
                                    remedy: "install Debian's openmpi-bin and libopenmpi-dev (scripts/setup does), then rebuild with swift build")
}

/// The processes of one `mpirun` job (MPI_COMM_WORLD): rank, size and the collectives
/// tensor parallelism uses. MPI errors come back as `FacetError`s (the communicator uses
/// MPI_ERRORS_RETURN). Calls must come from one thread at a time.
package final class MPICommunicator: @unchecked Sendable {
    package let rank: Int
    package let size: Int
    /// The host this rank runs on (MPI_Get_processor_name).
    package let host: String

    private static let lock = NSLock()
    nonisolated(unsafe) private static var shared: MPICommunicator?

    /// MPI_COMM_WORLD, initializing MPI on first use (thread level MULTIPLE if offered,
    /// else SERIALIZED: Facet calls MPI from one thread at a time).
    package static func world() throws -> MPICommunicator {
        lock.lock()
        defer { lock.unlock() }
        if let shared { return shared }
        #if canImport(CMPI)
        var provided: Int32 = 0
        try check(MPI_Init_thread(nil, nil, facet_mpi_thread_multiple(), &provided), "MPI_Init_thread")
        guard provided >= facet_mpi_thread_serialized() else {
            throw FacetError(.unsupported, "Open MPI offers thread level \(provided); Facet needs MPI_THREAD_SERIALIZED or better",
                             remedy: "use Debian's openmpi (built with thread support)")
        }
        try check(MPI_Comm_set_errhandler(facet_mpi_comm_world(), facet_mpi_errors_return()), "MPI_Comm_set_errhandler")
        var r: Int32 = 0, s: Int32 = 0
        try check(MPI_Comm_rank(facet_mpi_comm_world(), &r), "MPI_Comm_rank")
        try check(MPI_Comm_size(facet_mpi_comm_world(), &s), "MPI_Comm_size")
        var name = [CChar](repeating: 0, count: Int(facet_mpi_max_processor_name()) + 1)
        var length: Int32 = 0
        _ = MPI_Get_processor_name(&name, &length)
        let made = MPICommunicator(rank: Int(r), size: Int(s), host: String(decoding: name.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self))
        shared = made
        return made
        #else
        throw MPIRuntime.missing
        #endif
    }

    private init(rank: Int, size: Int, host: String) {
        self.rank = rank
        self.size = size
        self.host = host
    }

    /// Waits until every rank arrives.
    package func barrier() throws {
        #if canImport(CMPI)
        try Self.check(MPI_Barrier(facet_mpi_comm_world()), "MPI_Barrier")
        #endif
    }

    /// Broadcasts `buffer` from `root` to every rank (in pieces of at most 1 GiB).
    package func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int = 0) throws {
        #if canImport(CMPI)
        var offset = 0
        while offset < buffer.count {
            let n = min(buffer.count - offset, 1 << 30)
            try Self.check(MPI_Bcast(buffer.baseAddress! + offset, Int32(n), facet_mpi_byte(), Int32(root), facet_mpi_comm_world()), "MPI_Bcast")
            offset += n
        }
        #endif
    }

    /// A broadcast that an idle rank waits for without holding a core: the root sends and
    /// waits; the others poll (spinning for about `spin` first, then sleeping in short
    /// naps), so an idle server's ranks use no CPU.
    package func broadcastPolling(_ buffer: UnsafeMutableRawBufferPointer, root: Int = 0, spin: Duration = .microseconds(200)) throws {
        #if canImport(CMPI)
        guard buffer.count <= Int(Int32.max) else { throw Self.tooLarge(buffer.count) }
        var request = facet_mpi_request_null()
        try Self.check(MPI_Ibcast(buffer.baseAddress, Int32(buffer.count), facet_mpi_byte(), Int32(root), facet_mpi_comm_world(), &request), "MPI_Ibcast")
        if rank == root {
            try Self.check(MPI_Wait(&request, facet_mpi_status_ignore()), "MPI_Wait")
            return
        }
        let clock = ContinuousClock(), start = clock.now
        var nap: UInt32 = 20
        while true {
            var done: Int32 = 0
            try Self.check(MPI_Test(&request, &done, facet_mpi_status_ignore()), "MPI_Test")
            if done != 0 { return }
            if clock.now - start > spin {
                usleep(nap)
                nap = min(nap * 2, 2_000)
            }
        }
        #endif
    }

    /// Every rank receives every rank's `count` floats, rank after rank (`[size * count]`).
    package func allGather(_ values: UnsafePointer<Float>, count: Int, into: UnsafeMutablePointer<Float>) throws {
        #if canImport(CMPI)
        guard count <= Int(Int32.max) else { throw Self.tooLarge(count * 4) }
        try Self.check(MPI_Allgather(values, Int32(count), facet_mpi_float(), into, Int32(count), facet_mpi_float(), facet_mpi_comm_world()), "MPI_Allgather")
        #endif
    }

    /// `root` receives every rank's `count` floats, rank after rank (`into`, `[size * count]`,
    /// nil on the other ranks).
    package func gather(_ values: UnsafePointer<Float>, count: Int, into: UnsafeMutablePointer<Float>?, root: Int = 0) throws {
        #if canImport(CMPI)
        guard count <= Int(Int32.max) else { throw Self.tooLarge(count * 4) }
        try Self.check(MPI_Gather(values, Int32(count), facet_mpi_float(), into, Int32(count), facet_mpi_float(), Int32(root), facet_mpi_comm_world()), "MPI_Gather")
        #endif
    }

    /// Ends every rank of the job (a failed rank must not leave the others waiting).
    package func abort(_ code: Int32) -> Never {
        #if canImport(CMPI)
        _ = MPI_Abort(facet_mpi_comm_world(), code)
        #endif
        exit(code)
    }

    /// Shuts MPI down on this rank (after the last collective).
    package func finalize() {
        #if canImport(CMPI)
        var done: Int32 = 0
        _ = MPI_Finalized(&done)
        if done == 0 { _ = MPI_Finalize() }
        #endif
    }

    private static func tooLarge(_ bytes: Int) -> FacetError {
        FacetError(.capacity, "an MPI message of \(bytes) bytes exceeds MPI's 2^31 element limit", remedy: "use smaller batches (--max-num-tokens)")
    }

    #if canImport(CMPI)
    private static func check(_ code: Int32, _ call: String) throws {
        guard code != facet_mpi_success() else { return }
        var text = [CChar](repeating: 0, count: Int(facet_mpi_max_error_string()) + 1)
        var length: Int32 = 0
        _ = MPI_Error_string(code, &text, &length)
        let message = String(decoding: text.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        throw FacetError(.io, "\(call) failed: \(message) (MPI error \(code))",
                         remedy: "another rank of the job may have failed; see its output above")
    }
    #endif
}
