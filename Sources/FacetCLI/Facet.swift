import ArgumentParser
import Foundation
import Tensors

@main
struct Facet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "facet",
        abstract: "Run and serve a Llama-family model with many LoRA adapters in one batch.",
        subcommands: [RunCommand.self, ServeCommand.self, LoraCommand.self, ConvertCommand.self, BenchCommand.self]
    )

    /// Parses with run.py-style negative numbers (`--lora_task_uids -1 0`) accepted as values.
    static func main() async {
        var args = Array(CommandLine.arguments.dropFirst())
        args = args.map { $0.range(of: #"^-[0-9]+(\.[0-9]+)?$"#, options: .regularExpression) != nil ? NegativeNumber.marker + $0.dropFirst() : $0 }
        await main(args)
    }
}

/// ArgumentParser reads "-1" as a short flag; we hide the sign behind a marker while parsing.
enum NegativeNumber {
    static let marker = "\u{2212}"  // U+2212 MINUS SIGN
    static func restore(_ s: String) -> String { s.hasPrefix(marker) ? "-" + s.dropFirst(marker.count) : s }
}

/// Turns a thrown error into one clear line and a non-zero exit.
func failing<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as FacetError {
        FileHandle.standardError.write(Data("error: \(error.description)\n".utf8))
        throw ExitCode(2)
    }
}
