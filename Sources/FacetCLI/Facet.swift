import ArgumentParser
import Foundation
import Kernels
import MPI
import Tensors

@main
struct Facet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "facet",
        abstract: "Run and serve a Llama-family model with many LoRA adapters in one batch.",
        subcommands: [RunCommand.self, ServeCommand.self, TuneCommand.self, LoraCommand.self, ConvertCommand.self, BenchCommand.self, PerplexityCommand.self]
    )

    /// Parses with run.py-style negative numbers accepted as values, as Python's argparse
    /// does: `--lora_task_uids -1 0`, `--end_id -1`, `--input_text "-3"`.
    static func main() async {
        // The kernel tier cap is read from the environment: a misspelt one is an error, not
        // a silent fall back to the best tier.
        do { try InstructionTier.validateEnvironment() } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(2)
        }
        await main(NegativeNumber.rewrite(Array(CommandLine.arguments.dropFirst())))
    }
}

/// ArgumentParser reads "-1" as a short flag. A negative number right after a single-valued
/// option is attached to it (`--end_id=-1`); inside the values of a list option it is hidden
/// behind a marker while parsing and restored by the command (`restore`), so the value the
/// command sees is exactly what was typed.
enum NegativeNumber {
    static let marker = "\u{2212}"  // U+2212 MINUS SIGN
    static func restore(_ s: String) -> String { s.hasPrefix(marker) ? "-" + s.dropFirst(marker.count) : s }

    static func isNegativeNumber(_ s: String) -> Bool { s.range(of: #"^-[0-9]+(\.[0-9]+)?$"#, options: .regularExpression) != nil }

    static func rewrite(_ args: [String]) -> [String] {
        var out: [String] = []
        var option: String?   // the option whose values follow
        for a in args {
            if a.hasPrefix("--") && !a.contains("=") {
                out.append(a)
                option = a
            } else if isNegativeNumber(a), let option {
                if out.last == option && !listOptions.contains(option) {
                    out[out.count - 1] = option + "=" + a
                } else {
                    out.append(marker + a.dropFirst())
                }
            } else {
                out.append(a)
            }
        }
        return out
    }

    /// Options taking several values (`parsing: .upToNextOption`): their commands restore
    /// marked values.
    static let listOptions: Set<String> = ["--input_text", "--input-text", "--lora_task_uids", "--lora-task-uids", "--stop"]
}

/// Turns a thrown error into one clear line and a non-zero exit.
func failing<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as FacetError {
        // Under mpirun every rank meets the same bad argument: rank 0 reports it.
        if MPIRuntime.speaksForAllRanks { FileHandle.standardError.write(Data("error: \(error.description)\n".utf8)) }
        throw ExitCode(2)
    }
}
