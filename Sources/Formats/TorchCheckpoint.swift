import Tensors

/// Reads a PyTorch `torch.save` checkpoint (a ZIP with `data.pkl` and raw storages) holding a
/// flat dict of tensors, WITHOUT running pickle code: a restricted interpreter rebuilds only
/// dicts, tuples, lists, scalars and tensors, and refuses every other global by name.
package enum TorchCheckpoint {
    package struct Tensor: Sendable {
        package var shape: [Int]
        package var values: [Float]
    }

    package static func read(_ file: MappedFile) throws -> [String: Tensor] {
        let zip = try ZipArchive(file.bytes, path: file.path)
        guard let pickleName = zip.entries.keys.first(where: { $0.hasSuffix("/data.pkl") || $0 == "data.pkl" }) else {
            throw FacetError(.invalidFile, "no data.pkl inside the archive", file: file.path,
                             remedy: "this is not a torch.save checkpoint; legacy (pre-1.6) formats are not supported")
        }
        let prefix = String(pickleName.dropLast("data.pkl".count))
        if let order = zip.data(prefix + "byteorder"), String(decoding: order, as: UTF8.self) != "little" {
            throw FacetError(.unsupported, "big-endian checkpoints are not supported", file: file.path)
        }
        var machine = Unpickler(data: zip.data(pickleName)!, path: file.path)
        let root = try machine.run()
        guard case .dict(let items) = root else {
            throw FacetError(.invalidFile, "the checkpoint is not a dict of tensors", file: file.path, remedy: "save a state_dict")
        }
        var out: [String: Tensor] = [:]
        for (key, value) in items {
            guard case .string(let name) = key else { throw FacetError(.invalidFile, "a dict key is not a string", file: file.path) }
            guard case .tensor(let ref) = value else {
                throw FacetError(.invalidFile, "entry is not a tensor", file: file.path, field: name)
            }
            guard let storage = zip.data(prefix + "data/" + ref.storage.key) else {
                throw FacetError(.invalidFile, "storage \(ref.storage.key) is missing from the archive", file: file.path, field: name)
            }
            out[name] = try materialize(ref, storage, name: name, path: file.path)
        }
        return out
    }

    static func materialize(_ t: TensorRef, _ storage: UnsafeRawBufferPointer, name: String, path: String) throws -> Tensor {
        let size = t.storage.dtype.byteSize
        guard t.stride.count == t.shape.count, t.offset >= 0, t.stride.allSatisfy({ $0 >= 0 }), let count = Checked.product(t.shape) else {
            throw FacetError(.invalidFile, "tensor metadata is inconsistent (negative or overflowing size, stride or offset)", file: path, field: name)
        }
        // The furthest element read, in checked arithmetic: offset + sum((d - 1) * s).
        var maxIndex: Int? = t.offset
        for (d, s) in zip(t.shape, t.stride) where d > 0 {
            maxIndex = maxIndex.flatMap { m in Checked.multiply(d - 1, s).flatMap { Checked.add(m, $0) } }
        }
        let reach = maxIndex.flatMap { Checked.add($0, 1) }.flatMap { Checked.multiply($0, size) }
        guard count == 0 || (reach.map { $0 <= storage.count } ?? false) && count <= storage.count else {
            throw FacetError(.invalidFile, "tensor reaches past its storage", file: path, field: name, remedy: "the checkpoint is corrupt")
        }
        var values = [Float](repeating: 0, count: count)
        var index = [Int](repeating: 0, count: t.shape.count)
        for i in 0..<count {
            var element = t.offset
            for (d, s) in zip(index, t.stride) { element += d * s }
            values[i] = t.storage.dtype.read(storage, element)
            var k = t.shape.count - 1
            while k >= 0 {
                index[k] += 1
                if index[k] < t.shape[k] { break }
                index[k] = 0
                k -= 1
            }
        }
        return Tensor(shape: t.shape, values: values)
    }

    enum StorageType: String {
        case float = "FloatStorage", half = "HalfStorage", bfloat16 = "BFloat16Storage", double = "DoubleStorage"
        case long = "LongStorage", int = "IntStorage", short = "ShortStorage", char = "CharStorage", byte = "ByteStorage", bool = "BoolStorage"

        var byteSize: Int {
            switch self {
            case .double, .long: 8
            case .float, .int: 4
            case .half, .bfloat16, .short: 2
            case .char, .byte, .bool: 1
            }
        }

        func read(_ b: UnsafeRawBufferPointer, _ i: Int) -> Float {
            switch self {
            case .float: Float(bitPattern: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)))
            case .half: HalfFloat.fromF16(UInt16(littleEndian: b.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)))
            case .bfloat16: HalfFloat.fromBF16(UInt16(littleEndian: b.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)))
            case .double: Float(Double(bitPattern: UInt64(littleEndian: b.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))))
            case .long: Float(Int64(littleEndian: b.loadUnaligned(fromByteOffset: i * 8, as: Int64.self)))
            case .int: Float(Int32(littleEndian: b.loadUnaligned(fromByteOffset: i * 4, as: Int32.self)))
            case .short: Float(Int16(littleEndian: b.loadUnaligned(fromByteOffset: i * 2, as: Int16.self)))
            case .char: Float(b.load(fromByteOffset: i, as: Int8.self))
            case .byte, .bool: Float(b.load(fromByteOffset: i, as: UInt8.self))
            }
        }
    }

    struct StorageRef { var dtype: StorageType; var key: String }
    struct TensorRef { var storage: StorageRef; var offset: Int; var shape: [Int]; var stride: [Int] }

    indirect enum Value {
        case none, bool(Bool), int(Int), float(Double), string(String), bytes([UInt8])
        case tuple([Value]), list([Value]), dict([(Value, Value)])
        case global(String, String), storage(StorageRef), tensor(TensorRef), mark
    }

    /// The restricted pickle interpreter (protocols 2-5 opcodes that torch.save emits).
    struct Unpickler {
        let data: UnsafeRawBufferPointer
        let path: String
        var c: ByteCursor
        /// Values with their nesting depth: a crafted pickle could otherwise nest a million
        /// tuples, and releasing such a value recurses past the thread's stack.
        var stack: [(value: Value, depth: Int)] = []
        var memo: [Int: (value: Value, depth: Int)] = [:]
        static let maxDepth = 64

        init(data: UnsafeRawBufferPointer, path: String) {
            self.data = data
            self.path = path
            c = ByteCursor(data, path: path)
        }

        func refuse(_ what: String) -> FacetError {
            FacetError(.unsupported, "the pickle asks for \(what), which a tensor checkpoint never needs; refused without running it",
                       file: path, remedy: "convert the adapter to adapter_model.safetensors with PEFT")
        }

        mutating func popEntry() throws -> (value: Value, depth: Int) {
            guard let v = stack.popLast() else { throw FacetError(.invalidFile, "pickle stack underflow", file: path) }
            return v
        }

        mutating func pop() throws -> Value { try popEntry().value }

        /// Pushes a value built from parts of the given depths (one level deeper than them).
        mutating func push(_ v: Value, from depths: [Int] = []) throws {
            let depth = (depths.max() ?? 0) + 1
            guard depth <= Self.maxDepth else {
                throw FacetError(.invalidFile, "pickle nests values more than \(Self.maxDepth) deep", file: path,
                                 remedy: "a tensor checkpoint is a flat dict; the file is corrupt or crafted")
            }
            stack.append((v, depth))
        }

        mutating func popMark() throws -> (items: [Value], depth: Int) {
            guard let m = stack.lastIndex(where: { if case .mark = $0.value { true } else { false } }) else {
                throw FacetError(.invalidFile, "pickle MARK missing", file: path)
            }
            let items = stack[(m + 1)...]
            let result = (items.map(\.value), items.map(\.depth).max() ?? 0)
            stack.removeSubrange(m...)
            return result
        }

        mutating func run() throws -> Value {
            var steps = 0
            while true {
                steps += 1
                guard steps < 50_000_000 else { throw FacetError(.invalidFile, "pickle too long", file: path) }
                let op = try c.read(UInt8.self, "pickle opcode")
                switch op {
                case 0x80: _ = try c.read(UInt8.self, "protocol")                       // PROTO
                case 0x95: _ = try c.read(UInt64.self, "frame")                         // FRAME
                case 0x2E: return try pop()                                              // STOP
                case 0x7D: try push(.dict([]))                                       // EMPTY_DICT
                case 0x5D: try push(.list([]))                                       // EMPTY_LIST
                case 0x29: try push(.tuple([]))                                      // EMPTY_TUPLE
                case 0x28: stack.append((.mark, 0))                                           // MARK
                case 0x4E: try push(.none)                                           // NONE
                case 0x88: try push(.bool(true))                                     // NEWTRUE
                case 0x89: try push(.bool(false))                                    // NEWFALSE
                case 0x4B: try push(.int(Int(try c.read(UInt8.self, "int"))))        // BININT1
                case 0x4D: try push(.int(Int(try c.read(UInt16.self, "int"))))       // BININT2
                case 0x4A: try push(.int(Int(try c.read(Int32.self, "int"))))        // BININT
                case 0x8A:                                                                // LONG1
                    let n = Int(try c.read(UInt8.self, "long length"))
                    let raw = try c.readBytes(n, "long")
                    guard n <= 8 else { throw refuse("an integer of \(n) bytes") }
                    var v: Int64 = 0
                    for (i, b) in raw.enumerated() { v |= Int64(b) << (8 * Int64(i)) }
                    if n > 0 && n < 8 && raw[n - 1] & 0x80 != 0 { v -= Int64(1) << (8 * Int64(n)) }
                    try push(.int(Int(v)))
                case 0x47: try push(.float(Double(bitPattern: UInt64(bigEndian: try c.read(UInt64.self, "float")))))  // BINFLOAT
                case 0x58:                                                                // BINUNICODE
                    let n = Int(try c.read(UInt32.self, "string length"))
                    try push(.string(String(decoding: try c.readBytes(n, "string"), as: UTF8.self)))
                case 0x8C:                                                                // SHORT_BINUNICODE
                    let n = Int(try c.read(UInt8.self, "string length"))
                    try push(.string(String(decoding: try c.readBytes(n, "string"), as: UTF8.self)))
                case 0x55:                                                                // SHORT_BINSTRING
                    let n = Int(try c.read(UInt8.self, "string length"))
                    try push(.string(String(decoding: try c.readBytes(n, "string"), as: UTF8.self)))
                case 0x43:                                                                // SHORT_BINBYTES
                    let n = Int(try c.read(UInt8.self, "bytes length"))
                    try push(.bytes(Array(try c.readBytes(n, "bytes"))))
                case 0x71: memo[Int(try c.read(UInt8.self, "memo"))] = stack.last ?? (.none, 1)      // BINPUT
                case 0x72: memo[Int(try c.read(UInt32.self, "memo"))] = stack.last ?? (.none, 1)     // LONG_BINPUT
                case 0x94: memo[memo.count] = stack.last ?? (.none, 1)                               // MEMOIZE
                case 0x68, 0x6A:                                                                 // BINGET, LONG_BINGET
                    let i = op == 0x68 ? Int(try c.read(UInt8.self, "memo")) : Int(try c.read(UInt32.self, "memo"))
                    guard let v = memo[i] else { throw FacetError(.invalidFile, "pickle memo \(i) missing", file: path) }
                    stack.append(v)   // a memoized value keeps its depth
                case 0x74: let (items, d) = try popMark(); try push(.tuple(items), from: [d])  // TUPLE
                case 0x85: let a = try popEntry(); try push(.tuple([a.value]), from: [a.depth])  // TUPLE1
                case 0x86:                                                                       // TUPLE2
                    let b = try popEntry(), a = try popEntry()
                    try push(.tuple([a.value, b.value]), from: [a.depth, b.depth])
                case 0x87:                                                                       // TUPLE3
                    let z = try popEntry(), b = try popEntry(), a = try popEntry()
                    try push(.tuple([a.value, b.value, z.value]), from: [a.depth, b.depth, z.depth])
                case 0x63:                                                                       // GLOBAL
                    let line1 = try readLine(), line2 = try readLine()
                    try push(try global(line1, line2))
                case 0x93:                                                                       // STACK_GLOBAL
                    guard case .string(let name) = try pop(), case .string(let module) = try pop() else { throw refuse("a computed global") }
                    try push(try global(module, name))
                case 0x51:                                                                       // BINPERSID
                    let pid = try popEntry()
                    try push(try persistent(pid.value), from: [pid.depth])
                case 0x52:                                                                       // REDUCE
                    let args = try popEntry(), callable = try popEntry()
                    try push(try reduce(callable.value, args.value), from: [args.depth, callable.depth])
                case 0x62:                                                                       // BUILD
                    _ = try pop()   // state of an OrderedDict/parameter: nothing a tensor dict needs
                case 0x73:                                                                       // SETITEM
                    let v = try popEntry(), k = try popEntry(), target = try popEntry()
                    guard case .dict(var d) = target.value else { throw FacetError(.invalidFile, "SETITEM on a non-dict", file: path) }
                    d.append((k.value, v.value))
                    try push(.dict(d), from: [target.depth - 1, k.depth, v.depth])
                case 0x75:                                                                       // SETITEMS
                    let (items, depth) = try popMark()
                    let target = try popEntry()
                    guard case .dict(var d) = target.value, items.count % 2 == 0 else { throw FacetError(.invalidFile, "SETITEMS on a non-dict", file: path) }
                    for i in stride(from: 0, to: items.count, by: 2) { d.append((items[i], items[i + 1])) }
                    try push(.dict(d), from: [target.depth - 1, depth])
                case 0x61:                                                                       // APPEND
                    let v = try popEntry(), target = try popEntry()
                    guard case .list(var l) = target.value else { throw FacetError(.invalidFile, "APPEND on a non-list", file: path) }
                    l.append(v.value)
                    try push(.list(l), from: [target.depth - 1, v.depth])
                case 0x65:                                                                       // APPENDS
                    let (items, depth) = try popMark()
                    let target = try popEntry()
                    guard case .list(var l) = target.value else { throw FacetError(.invalidFile, "APPENDS on a non-list", file: path) }
                    l += items
                    try push(.list(l), from: [target.depth - 1, depth])
                default:
                    throw refuse(String(format: "pickle opcode 0x%02x", op))
                }
            }
        }

        mutating func readLine() throws -> String {
            var bytes: [UInt8] = []
            while true {
                let b = try c.read(UInt8.self, "global name")
                if b == 0x0A { break }
                bytes.append(b)
                guard bytes.count < 256 else { throw FacetError(.invalidFile, "global name too long", file: path) }
            }
            return String(decoding: bytes, as: UTF8.self)
        }

        func global(_ module: String, _ name: String) throws -> Value {
            let allowed: Set<String> = [
                "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "torch._utils._rebuild_tensor",
            ]
            if module == "torch", StorageType(rawValue: name) != nil { return .global(module, name) }
            guard allowed.contains(module + "." + name) else { throw refuse("\(module).\(name)") }
            return .global(module, name)
        }

        func persistent(_ pid: Value) throws -> Value {
            // ('storage', torch.FloatStorage, '0', 'cpu', numel)
            guard case .tuple(let t) = pid, t.count >= 3, case .string("storage") = t[0], case .global(_, let typeName) = t[1],
                  let dtype = StorageType(rawValue: typeName), case .string(let key) = t[2]
            else { throw refuse("a persistent object that is not a tensor storage") }
            return .storage(StorageRef(dtype: dtype, key: key))
        }

        func ints(_ v: Value) throws -> [Int] {
            guard case .tuple(let items) = v else { throw FacetError(.invalidFile, "tensor size/stride is not a tuple", file: path) }
            return try items.map { item in
                guard case .int(let i) = item else { throw FacetError(.invalidFile, "tensor size/stride is not integers", file: path) }
                return i
            }
        }

        func reduce(_ callable: Value, _ args: Value) throws -> Value {
            guard case .global(let module, let name) = callable, case .tuple(let a) = args else { throw refuse("a call of a non-global") }
            switch module + "." + name {
            case "collections.OrderedDict":
                return .dict([])
            case "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor":
                guard a.count >= 4, case .storage(let s) = a[0], case .int(let offset) = a[1] else {
                    throw FacetError(.invalidFile, "malformed tensor record", file: path)
                }
                return .tensor(TensorRef(storage: s, offset: offset, shape: try ints(a[2]), stride: try ints(a[3])))
            case "torch._utils._rebuild_parameter":
                guard let first = a.first, case .tensor = first else { throw FacetError(.invalidFile, "malformed parameter record", file: path) }
                return first
            default:
                throw refuse("\(module).\(name)")
            }
        }
    }
}
