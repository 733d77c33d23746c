#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory-mapped file. Weights point into it without copying; it stays mapped
/// as long as any reader holds it.
package final class MappedFile: @unchecked Sendable {
    package let path: String
    package let count: Int
    package let base: UnsafeRawPointer?
    /// True when `base` is a heap copy (see `init(copying:path:)`) rather than a mapping.
    private let owned: Bool

    /// A copy of bytes that did not come from a file (a request body, a fuzzer's input),
    /// read through the same parsers as a mapped file. `path` names it in errors.
    package init(copying bytes: UnsafeRawBufferPointer, path: String) {
        self.path = path
        count = bytes.count
        owned = true
        guard count > 0, let source = bytes.baseAddress else {
            base = nil
            return
        }
        let copy = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 64)
        copy.copyMemory(from: source, byteCount: count)
        base = UnsafeRawPointer(copy)
    }

    package init(path: String) throws {
        self.path = path
        owned = false
        let (fd, size) = try Self.openRegular(path)
        defer { close(fd) }
        count = size
        if count == 0 {
            base = nil
            return
        }
        guard let mapped = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0), mapped != MAP_FAILED else {
            throw FacetError(.io, "cannot map file (errno \(errno))", file: path)
        }
        base = UnsafeRawPointer(mapped)
    }

    /// The file's bytes read into memory this object owns, for files that may change under a
    /// running server (adapters under `--adapter-root`): a mapping of a file that shrinks
    /// afterwards faults (SIGBUS) when read, a copy cannot. A file that changes size while
    /// it is read is refused with a clear error.
    package init(readingContentsOf path: String) throws {
        self.path = path
        owned = true
        let (fd, size) = try Self.openRegular(path)
        defer { close(fd) }
        count = size
        if size == 0 {
            base = nil
            return
        }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        var done = 0
        while done < size {
            let n = read(fd, buffer + done, size - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                buffer.deallocate()
                throw FacetError(n == 0 ? .invalidFile : .io, n == 0 ? "the file shrank while it was read (\(done) of \(size) bytes)" : "cannot read file (errno \(errno))",
                                 file: path, remedy: "finish writing the file (write a new file and rename it into place), then load it again")
            }
            done += n
        }
        // One more byte would mean the file grew while it was read: its bytes are not one version.
        var extra: UInt8 = 0
        if read(fd, &extra, 1) > 0 {
            buffer.deallocate()
            throw FacetError(.invalidFile, "the file grew while it was read (past \(size) bytes)", file: path,
                             remedy: "finish writing the file (write a new file and rename it into place), then load it again")
        }
        base = UnsafeRawPointer(buffer)
    }

    /// Opens `path` for reading and returns its descriptor and size; a missing file or a
    /// directory is a clear error.
    private static func openRegular(_ path: String) throws -> (Int32, Int) {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw FacetError(.notFound, "cannot open file (errno \(errno))", file: path,
                             remedy: "check that the path exists and is readable")
        }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            close(fd)
            throw FacetError(.io, "cannot stat file (errno \(errno))", file: path)
        }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            close(fd)
            throw FacetError(.invalidFile, "is a directory, expected a file", file: path, remedy: "pass the file inside it")
        }
        return (fd, Int(info.st_size))
    }

    deinit {
        guard let base else { return }
        if owned {
            UnsafeMutableRawPointer(mutating: base).deallocate()
        } else {
            munmap(UnsafeMutableRawPointer(mutating: base), count)
        }
    }

    package var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }
}
