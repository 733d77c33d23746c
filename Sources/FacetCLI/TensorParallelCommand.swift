import ArgumentParser
import Foundation
import Llama
import MPI
import TensorParallel
import Tensors
import Tokenization

/// `--tp_size` for the commands that run the model.
struct TensorParallelOptions: ParsableArguments {
    @Option(name: [.customLong("tp_size"), .customLong("tp-size")],
            help: "Tensor-parallel ranks (Megatron-style shards of heads and MLP rows): run under mpirun -n N with the same N. The model's query heads, key/value heads and MLP rows must divide by it.")
    var tpSize: Int = 1

    func validate() throws {
        guard tpSize >= 1 else { throw ValidationError("--tp_size must be at least 1") }
    }

    /// How this process takes part: the whole model alone, rank 0 of a group (it runs the
    /// command and drives the steps), or another rank whose steps are done.
    enum Role {
        case single(LlamaModel, Tokenizer?)
        case root(LlamaModel, Tokenizer?, RankGroup)
        case finishedWorker
    }

    /// Loads the model (this rank's shard under `mpirun`). Ranks other than 0 execute rank
    /// 0's steps inside this call and return `.finishedWorker` when it says exit. When any
    /// rank fails to load, all stop together (rank 0 reports the error).
    func start(_ modelOptions: ModelOptions, tokenizerRequired: Bool) throws -> Role {
        guard let group = try TensorParallelLaunch.group(tpSize: tpSize) else {
            let (model, tokenizer) = try modelOptions.load(tokenizerRequired: tokenizerRequired)
            return .single(model, tokenizer)
        }
        let rank = group.shard.rank
        var loaded: (LlamaModel, Tokenizer?)?
        var failure: (any Error)?
        do {
            loaded = try modelOptions.load(tokenizerRequired: tokenizerRequired && rank == 0, group: group)
        } catch {
            failure = error
        }
        let failed = try TensorParallelLaunch.agree(group, ok: failure == nil)
        guard failed.isEmpty, let (model, tokenizer) = loaded else {
            // Every rank usually fails the same way (a bad --tp_size): rank 0 speaks for all.
            if let failure, rank == 0 || !failed.contains(0) {
                let text = (failure as? FacetError)?.description ?? "\(failure)"
                FileHandle.standardError.write(Data((rank == 0 ? "error: \(text)\n" : "error (rank \(rank) on \(hostName(group))): \(text)\n").utf8))
            }
            // Everyone waits for the message before any rank exits (mpirun ends the job
            // at the first rank's non-zero exit).
            _ = try? TensorParallelLaunch.agree(group, ok: true)
            (group.transport as? MPICommunicator)?.finalize()
            throw ExitCode(2)
        }
        guard rank == 0 else {
            // mpirun forwards SIGTERM/SIGINT to every rank; rank 0 drains and then sends
            // exit, so the other ranks keep executing its steps until then (a dead rank 0
            // ends the job through mpirun).
            signal(SIGTERM, SIG_IGN)
            signal(SIGINT, SIG_IGN)
            do {
                try group.runSteps(model: model) { FileHandle.standardError.write(Data("[facet rank \(rank)] \($0)\n".utf8)) }
            } catch {
                FileHandle.standardError.write(Data("error (rank \(rank) on \(hostName(group))): \(error); stopping every rank\n".utf8))
                TensorParallelLaunch.abort(group, code: 3)
            }
            TensorParallelLaunch.finish(group)
            return .finishedWorker
        }
        return .root(model, tokenizer, group)
    }

    private func hostName(_ group: RankGroup) -> String { (group.transport as? MPICommunicator)?.host ?? "this host" }

    /// `start`, then `body` on rank 0 (or alone); the other ranks stop when it returns.
    func run(_ modelOptions: ModelOptions, tokenizerRequired: Bool, _ body: (LlamaModel, Tokenizer?) throws -> Void) throws {
        switch try start(modelOptions, tokenizerRequired: tokenizerRequired) {
        case .single(let model, let tokenizer):
            try body(model, tokenizer)
        case .root(let model, let tokenizer, let group):
            defer { TensorParallelLaunch.finish(group) }
            try body(model, tokenizer)
        case .finishedWorker:
            return
        }
    }
}
