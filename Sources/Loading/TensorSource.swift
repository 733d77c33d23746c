import Formats
import Kernels
import Llama
import Tensors

/// Something that yields named fp32 tensors with shapes (in row-major, outermost first).
protocol TensorSource {
    var description: String { get }
    func has(_ name: String) -> Bool
    /// Values and row-major shape.
    func tensor(_ name: String) throws -> (shape: [Int], values: [Float])

    /// A 2-D weight in its most compact runnable form; with `permuteHeads`, rows are
    /// reordered by `ModelLoader.unpermuteRows` first.
    func linear(_ name: String, permuteHeads: Int?, keepCompact: Bool) throws -> LinearWeight
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

    /// The dense fallback: dequantize, permute, wrap.
    func denseLinear(_ name: String, permuteHeads: Int?) throws -> LinearWeight {
        var m = try matrix(name)
        if let heads = permuteHeads { m = ModelLoader.unpermuteRows(m, heads: heads) }
        return LinearWeight(m)
    }
}

/// Wraps raw rows (optionally permuted into Hugging Face head order) as a compact weight.
func compactLinear(format: WeightFormat, rows: Int, cols: Int, bytes: UnsafeRawBufferPointer, owner: AnyObject,
                   permuteHeads: Int?, name: String, file: String) throws -> LinearWeight {
    let rowBytes = format.rowBytes(cols)
    guard bytes.count == rows * rowBytes else {
        throw FacetError(.invalidFile, "tensor has \(bytes.count) bytes for \(rows)x\(cols) \(format.rawValue)", file: file, field: name)
    }
    let store: ByteStore
    if let heads = permuteHeads {
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 64)
        defer { copy.deallocate() }
        let hd = rows / heads, half = hd / 2
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    let from = h * hd + 2 * i + j, to = h * hd + j * half + i
                    (copy.baseAddress! + to * rowBytes).copyMemory(from: bytes.baseAddress! + from * rowBytes, byteCount: rowBytes)
                }
            }
        }
        store = ByteStore(copying: UnsafeRawBufferPointer(copy))
    } else {
        store = ByteStore(bytes: bytes, owner: owner)
    }
    return try LinearWeight(format: format, rows: rows, cols: cols, store: store)
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

    func linear(_ name: String, permuteHeads: Int?, keepCompact: Bool) throws -> LinearWeight {
        guard let i = index[name] else { return try denseLinear(name, permuteHeads: permuteHeads) }
        let e = try files[i].entry(name)
        let format: WeightFormat? = switch e.dtype {
        case .f16: .f16
        case .bf16: .bf16
        default: nil
        }
        guard keepCompact, let format, e.shape.count == 2, e.shape[1] % 32 == 0 else { return try denseLinear(name, permuteHeads: permuteHeads) }
        return try compactLinear(format: format, rows: e.shape[0], cols: e.shape[1], bytes: UnsafeRawBufferPointer(rebasing: files[i].file.bytes[e.range]),
                                 owner: files[i].file, permuteHeads: permuteHeads, name: name, file: files[i].path)
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

    func linear(_ name: String, permuteHeads: Int?, keepCompact: Bool) throws -> LinearWeight {
        let t = try file.tensor(name)
        let format: WeightFormat? = switch t.type {
        case .f16: .f16
        case .bf16: .bf16
        case .q4_0: .q4_0
        case .q4_1: .q4_1
        case .q8_0: .q8_0
        case .q4_K: .q4_k
        case .q6_K: .q6_k
        default: nil   // F32 runs dense
        }
        guard keepCompact, let format, t.dims.count == 2, t.dims[0] % format.blockValues == 0 else { return try denseLinear(name, permuteHeads: permuteHeads) }
        return try compactLinear(format: format, rows: t.dims[1], cols: t.dims[0], bytes: UnsafeRawBufferPointer(rebasing: file.file.bytes[t.range]),
                                 owner: file.file, permuteHeads: permuteHeads, name: name, file: file.path)
    }
}
