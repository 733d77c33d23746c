import Foundation
import MPI
import Tensors

/// Starting a tensor-parallel group from the command line (`--tp_size N` under
/// `mpirun -n N`).
package enum TensorParallelLaunch {
    /// The group for `--tp_size`, or nil for one process. Errors say what to run instead:
    /// a size that disagrees with the number of ranks mpirun started, a size above 1 without
    /// mpirun, or a build without Open MPI.
    package static func group(tpSize: Int) throws -> RankGroup? {
        guard tpSize >= 1 else {
            throw FacetError(.invalidArgument, "--tp_size must be at least 1, got \(tpSize)", field: "tp_size")
        }
        let launched = MPIRuntime.launchedWorldSize
        if tpSize == 1 {
            if let launched, launched > 1 {
                throw FacetError(.invalidArgument, "started as \(launched) MPI ranks but --tp_size is 1, so every rank would run the whole job",
                                 field: "tp_size", remedy: "pass --tp_size \(launched), or run without mpirun")
            }
            return nil
        }
        guard MPIRuntime.isCompiledIn else { throw MPIRuntime.missing }
        guard let launched else {
            throw FacetError(.invalidArgument, "--tp_size \(tpSize) needs \(tpSize) processes started by MPI", field: "tp_size",
                             remedy: "run it as mpirun -n \(tpSize) facet ... --tp_size \(tpSize) (as root add --allow-run-as-root)")
        }
        guard launched == tpSize else {
            throw FacetError(.invalidArgument, "--tp_size is \(tpSize) but mpirun started \(launched) ranks", field: "tp_size",
                             remedy: "use the same number: mpirun -n \(tpSize) ... --tp_size \(tpSize)")
        }
        let world = try MPICommunicator.world()
        guard world.size == tpSize else {
            throw FacetError(.invalidArgument, "--tp_size is \(tpSize) but the MPI world has \(world.size) ranks", field: "tp_size",
                             remedy: "use the same number: mpirun -n \(tpSize) ... --tp_size \(tpSize)")
        }
        return RankGroup(transport: world)
    }

    /// Every rank says whether its part of the start (loading its shard) went well; when
    /// one failed, all stop together instead of waiting for each other. Returns the ranks
    /// that failed (empty when all succeeded).
    package static func agree(_ group: RankGroup, ok: Bool) throws -> [Int] {
        let n = group.shard.size
        var mine: Float = ok ? 0 : 1
        var all = [Float](repeating: 0, count: n)
        try all.withUnsafeMutableBufferPointer { out in
            try group.transport.allGather(&mine, count: 1, into: out.baseAddress!)
        }
        return all.indices.filter { all[$0] != 0 }
    }

    /// Ends MPI on this rank (after the last step).
    package static func finish(_ group: RankGroup) {
        group.shutdown()
        (group.transport as? MPICommunicator)?.finalize()
    }

    /// Stops the whole job from any rank after an error the other ranks cannot see.
    package static func abort(_ group: RankGroup, code: Int32) -> Never {
        if let mpi = group.transport as? MPICommunicator { mpi.abort(code) }
        exit(code)
    }
}
