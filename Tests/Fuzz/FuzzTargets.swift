// libFuzzer entry point for Facet's parsers of outside data. `scripts/fuzz` compiles this
// file together with the Tensors, Formats and Tokenization sources (imports stripped, one
// module) under -sanitize=fuzzer,address; FACET_FUZZ_TARGET picks the parser.
// A parser may throw on any input; it must never crash, trap, hang or read out of bounds.
import Foundation

enum FuzzTarget: String, CaseIterable {
    case safetensors, gguf, npy, pickle, tokenizer, template, peftconfig
}

let fuzzTarget: FuzzTarget = {
    let name = ProcessInfo.processInfo.environment["FACET_FUZZ_TARGET"] ?? ""
    guard let t = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("set FACET_FUZZ_TARGET to one of \(FuzzTarget.allCases.map(\.rawValue))\n".utf8))
        exit(2)
    }
    return t
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func facetFuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    switch fuzzTarget {
    case .safetensors:
        let file = MappedFile(copying: bytes, path: "fuzz.safetensors")
        if let st = try? SafetensorsFile(file: file) {
            for name in st.names where (try? st.entry(name).elementCount) ?? 0 <= 1 << 16 { _ = try? st.floats(name) }
        }
    case .gguf:
        let file = MappedFile(copying: bytes, path: "fuzz.gguf")
        if let g = try? GGUFFile(file: file) {
            for name in g.tensorOrder where (g.tensors[name]?.elementCount ?? 0) <= 1 << 16 { _ = try? g.floats(name) }
        }
    case .npy:
        _ = try? NpyArray.parse(bytes, path: "fuzz.npy")
    case .pickle:
        _ = try? TorchCheckpoint.read(MappedFile(copying: bytes, path: "fuzz.bin"))
    case .tokenizer:
        if let t = try? Tokenizer.fromHuggingFace(tokenizerJSON: Data(bytes), source: "fuzz.json") {
            let ids = t.encode("Hello world! <s> 123 ünïcödé", addSpecialTokens: true)
            _ = t.decode(ids)
        }
    case .template:
        if let t = try? ChatTemplate(String(decoding: bytes, as: UTF8.self)) {
            _ = try? t.render(messages: [.init(role: "system", content: "s"), .init(role: "user", content: "Hi")],
                              addGenerationPrompt: true, variables: ["bos_token": .string("<s>"), "eos_token": .string("</s>")])
        }
    case .peftconfig:
        if let c = try? JSONDecoder().decode(PEFTConfig.self, from: Data(bytes)) { try? c.validate(file: "fuzz.json") }
    }
    return 0
}
