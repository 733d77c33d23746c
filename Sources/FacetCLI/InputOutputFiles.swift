import Foundation
import Formats
import Tensors

/// run.py's `--input_file`: CSV (one sequence of ids per line) or a NumPy integer array
/// (1-D: one sequence; 2-D: one per row, trailing padding given by negative ids removed).
enum InputFile {
    static func read(_ path: String) throws -> [[Int32]] {
        if path.hasSuffix(".npy") {
            let array = try NpyArray.read(path: path)
            guard array.isInteger else {
                throw FacetError(.invalidArgument, "input ids must be an integer array, found \(array.kind.rawValue)", file: path,
                                 remedy: "save with numpy.save(path, ids.astype(numpy.int32))")
            }
            let rows: Int, cols: Int
            switch array.shape.count {
            case 1: (rows, cols) = (1, array.shape[0])
            case 2: (rows, cols) = (array.shape[0], array.shape[1])
            default:
                throw FacetError(.invalidArgument, "input ids must be 1-D or 2-D, found shape \(array.shape)", file: path)
            }
            return try (0..<rows).map { r in
                let ids = try array.values[(r * cols)..<((r + 1) * cols)].filter { $0 >= 0 }.map { v in
                    guard let id = Int32(exactly: v) else {
                        throw FacetError(.invalidArgument, "row \(r) holds \(v), which is not a token id (0 to 2^31-1)", file: path,
                                         remedy: "write token ids from the model's vocabulary")
                    }
                    return id
                }
                guard !ids.isEmpty else { throw FacetError(.invalidArgument, "row \(r) has no ids", file: path) }
                return ids
            }
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FacetError(.notFound, "cannot read the input file", file: path, remedy: "check the path")
        }
        let text = String(decoding: data, as: UTF8.self)
        var result: [[Int32]] = []
        for (n, line) in text.split(whereSeparator: \.isNewline).enumerated() {
            let fields = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            if fields.isEmpty { continue }
            var ids: [Int32] = []
            for f in fields {
                guard let v = Int32(f) else {
                    throw FacetError(.invalidArgument, "line \(n + 1): \"\(f)\" is not a token id", file: path,
                                     remedy: "write comma-separated integers, one sequence per line")
                }
                ids.append(v)
            }
            result.append(ids)
        }
        guard !result.isEmpty else { throw FacetError(.invalidArgument, "the input file has no sequences", file: path) }
        return result
    }
}

enum OutputFiles {
    static func write(_ data: Data, to path: String) throws {
        do {
            try data.write(to: URL(fileURLWithPath: path))
        } catch {
            throw FacetError(.io, "cannot write output (\(error.localizedDescription))", file: path, remedy: "check the directory exists and is writable")
        }
    }

    static func writeCSV(_ outputs: [[Int32]], to path: String) throws {
        let text = outputs.map { $0.map(String.init).joined(separator: ",") }.joined(separator: "\n") + "\n"
        try write(Data(text.utf8), to: path)
    }

    static func writeIDs(_ outputs: [[Int32]], pad: Int32, to path: String) throws {
        let steps = outputs.map(\.count).max() ?? 0
        var values: [Double] = []
        for o in outputs { values += (o + Array(repeating: pad, count: steps - o.count)).map(Double.init) }
        try write(try NpyArray(shape: [outputs.count, 1, steps], kind: .i32, values: values).encoded(), to: path)
    }

    /// `[batch, 1, steps, vocab]` float32; shorter sequences and vocabularies padded with 0.
    static func writeLogits(_ logits: [[[Float]]], to path: String) throws {
        let steps = logits.map(\.count).max() ?? 0
        let vocab = logits.flatMap { $0.map(\.count) }.max() ?? 0
        var values: [Double] = []
        values.reserveCapacity(logits.count * steps * vocab)
        for seq in logits {
            for s in 0..<steps {
                let row = s < seq.count ? seq[s] : []
                values += row.map(Double.init) + Array(repeating: 0, count: vocab - row.count)
            }
        }
        try write(try NpyArray(shape: [logits.count, 1, steps, vocab], kind: .f32, values: values).encoded(), to: path)
    }
}
