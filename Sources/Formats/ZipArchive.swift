import Tensors

/// A read-only view of a ZIP archive's stored (uncompressed) entries, as PyTorch writes
/// its checkpoints.
struct ZipArchive {
    let bytes: UnsafeRawBufferPointer
    let path: String
    /// Entry name -> byte range of its data.
    private(set) var entries: [String: Range<Int>] = [:]

    init(_ bytes: UnsafeRawBufferPointer, path: String) throws {
        self.bytes = bytes
        self.path = path
        func bad(_ m: String) -> FacetError {
            FacetError(.invalidFile, m, file: path, remedy: "the file is not a PyTorch checkpoint or is truncated; save it again")
        }
        // End of central directory: signature 0x06054b50 within the last 64 KiB + 22 bytes.
        var eocd = -1
        var i = bytes.count - 22
        let lowest = max(0, bytes.count - 22 - 65_535)
        while i >= lowest {
            if bytes.loadUnaligned(fromByteOffset: i, as: UInt32.self) == 0x0605_4B50 { eocd = i; break }
            i -= 1
        }
        guard eocd >= 0 else { throw bad("no ZIP end-of-directory record") }
        var c = ByteCursor(bytes, path: path, offset: eocd + 10)
        var count = Int(try c.read(UInt16.self, "entry count"))
        _ = try c.read(UInt32.self, "directory size")
        var directory = Int(try c.read(UInt32.self, "directory offset"))
        if count == 0xFFFF || directory == 0xFFFF_FFFF {
            // ZIP64: locator right before the EOCD points at the ZIP64 EOCD record.
            guard eocd >= 20, bytes.loadUnaligned(fromByteOffset: eocd - 20, as: UInt32.self) == 0x0706_4B50 else { throw bad("missing ZIP64 locator") }
            var l = ByteCursor(bytes, path: path, offset: eocd - 20 + 8)
            let record = Int(clamping: try l.read(UInt64.self, "zip64 record offset"))
            var r = ByteCursor(bytes, path: path, offset: record)
            guard try r.read(UInt32.self, "zip64 signature") == 0x0606_4B50 else { throw bad("bad ZIP64 record") }
            r.offset += 20
            count = Int(clamping: try r.read(UInt64.self, "zip64 entry count"))
            r.offset += 8
            directory = Int(clamping: try r.read(UInt64.self, "zip64 directory offset"))
        }
        var d = ByteCursor(bytes, path: path, offset: directory)
        for _ in 0..<count {
            guard try d.read(UInt32.self, "directory entry") == 0x0201_4B50 else { throw bad("corrupt central directory") }
            d.offset += 6
            let method = try d.read(UInt16.self, "compression method")
            d.offset += 8
            var compressed = Int(try d.read(UInt32.self, "compressed size"))
            var size = Int(try d.read(UInt32.self, "size"))
            let nameLength = Int(try d.read(UInt16.self, "name length"))
            let extraLength = Int(try d.read(UInt16.self, "extra length"))
            let commentLength = Int(try d.read(UInt16.self, "comment length"))
            d.offset += 8
            var local = Int(try d.read(UInt32.self, "local header offset"))
            let name = String(decoding: try d.readBytes(nameLength, "entry name"), as: UTF8.self)
            let extra = try d.readBytes(extraLength, "extra field")
            d.offset += commentLength
            // ZIP64 extended sizes.
            var e = ByteCursor(extra, path: path)
            while e.offset + 4 <= extra.count {
                let id = try e.read(UInt16.self, "extra id"), len = Int(try e.read(UInt16.self, "extra length"))
                if id == 0x0001 {
                    var z = ByteCursor(try e.readBytes(len, "zip64 extra"), path: path)
                    if size == 0xFFFF_FFFF { size = Int(clamping: try z.read(UInt64.self, "zip64 size")) }
                    if compressed == 0xFFFF_FFFF { compressed = Int(clamping: try z.read(UInt64.self, "zip64 compressed")) }
                    if local == 0xFFFF_FFFF { local = Int(clamping: try z.read(UInt64.self, "zip64 offset")) }
                } else {
                    e.offset += len
                }
            }
            guard method == 0, compressed == size else {
                throw FacetError(.unsupported, "entry \(name) is compressed (method \(method))", file: path,
                                 remedy: "save the checkpoint with torch.save, or convert it to safetensors")
            }
            var h = ByteCursor(bytes, path: path, offset: local)
            guard try h.read(UInt32.self, "local header") == 0x0403_4B50 else { throw bad("corrupt local header of \(name)") }
            guard local <= bytes.count - 30 else { throw bad("local header of \(name) lies past the end of the file") }
            h.offset = local + 26
            let n = Int(try h.read(UInt16.self, "local name length")), x = Int(try h.read(UInt16.self, "local extra length"))
            let start = local + 30 + n + x   // local <= count - 30 and n, x < 65536: no overflow
            guard start <= bytes.count, size <= bytes.count - start else { throw bad("entry \(name) runs past the end of the file") }
            entries[name] = start..<(start + size)
        }
    }

    func data(_ name: String) -> UnsafeRawBufferPointer? {
        entries[name].map { UnsafeRawBufferPointer(rebasing: bytes[$0]) }
    }
}
