import Formats
import Llama
import Tensors

/// Something that yields named fp32 tensors with shapes (in row-major, outermost first).
protocol TensorSource {
    var description: String { get }
    func has(_ name: String) -> Bool
    /// Values and row-major shape.
    func tensor(_ name: String) throws -> (shape: [Int], values: [Float])
}

extension TensorSource {
    func matrix(_ name: String) throws -> Matrix {
        let (shape, values) = try tensor(name)
        guard shape.count == 2 else {
            throw FacetError(.shapeMismatch, "expected a 2-D tensor, found shape \(shape)", file: description, field: name,
                             remedy: "the checkpoint does not match a Llama-family layout")
        }
        return Matrix(rows: shape[0], cols: shape[1], data: values)
    }

    func vector(_ name: String) throws -> [Float] {
        let (shape, values) = try tensor(name)
        guard shape.count == 1 else {
            throw FacetError(.shapeMismatch, "expected a 1-D tensor, found shape \(shape)", file: description, field: name)
        }
        return values
    }

    func optionalVector(_ name: String) throws -> [Float]? { has(name) ? try vector(name) : nil }
}

/// All `*.safetensors` files of a Hugging Face model directory, seen as one namespace.
struct SafetensorsSource: TensorSource {
    let files: [SafetensorsFile]
    let index: [String: Int]
    let description: String

    init(files: [SafetensorsFile], description: String) throws {
        self.files = files
        self.description = description
        var index: [String: Int] = [:]
        for (i, f) in files.enumerated() {
            for name in f.entries.keys {
                if index[name] != nil {
                    throw FacetError(.invalidFile, "tensor appears in more than one shard", file: f.path, field: name,
                                     remedy: "remove stale shards from the model directory")
                }
                index[name] = i
            }
        }
        self.index = index
    }

    func has(_ name: String) -> Bool { index[name] != nil }

    func tensor(_ name: String) throws -> (shape: [Int], values: [Float]) {
        guard let i = index[name] else {
            throw FacetError(.notFound, "tensor not found in any shard", file: description, field: name,
                             remedy: "the checkpoint is incomplete or not a Llama-family model")
        }
        let f = files[i]
        return (try f.entry(name).shape, try f.floats(name))
    }
}

/// A GGUF file's tensors, dequantized and turned to row-major shapes (ggml lists the
/// contiguous dimension first, so shapes are reversed).
struct GGUFSource: TensorSource {
    let file: GGUFFile
    var description: String { file.path }

    func has(_ name: String) -> Bool { file.tensors[name] != nil }

    func tensor(_ name: String) throws -> (shape: [Int], values: [Float]) {
        let t = try file.tensor(name)
        return (Array(t.dims.reversed()), try file.floats(name))
    }
}
