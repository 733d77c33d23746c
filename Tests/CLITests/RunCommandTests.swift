import Foundation
import Formats
import Testing
import TestSupport

/// `facet run` end to end, as a user runs it.
@Suite struct RunCommandTests {
    nonisolated(unsafe) static let golden = try! Fixtures.json("tiny_llama_untied/golden.json")

    @Test func tokenIDsInAndOutOnTheTinyModel() throws {
        let dir = try Fixtures.temporaryDirectory()
        let prompt = ints(Self.golden["prompt_ids"])
        let base = (Self.golden["cases"] as! [String: Any])["__base__"] as! [String: Any]
        try (prompt.map(String.init).joined(separator: ",") + "\n").write(toFile: dir + "/in.csv", atomically: true, encoding: .utf8)
        let r = try FacetProcess.run([
            "run", "--model", Fixtures.tinyModel, "--input_file", dir + "/in.csv", "--max_output_len", "16", "--ignore_eos",
            "--output_csv", dir + "/out.csv", "--output_npy", dir + "/out.npy", "--output_logits_npy", dir + "/logits.npy",
        ])
        #expect(r.status == 0, "\(r.stderr)")
        let expected = ints(base["greedy"])
        #expect(r.stdout.contains("Output [Text 0 Beam 0]: [" + expected.map(String.init).joined(separator: ", ") + "]"))
        let csv = try String(contentsOfFile: dir + "/out.csv", encoding: .utf8)
        #expect(csv.trimmingCharacters(in: .whitespacesAndNewlines) == expected.map(String.init).joined(separator: ","))
        let ids = try NpyArray.read(path: dir + "/out.npy")
        #expect(ids.shape == [1, 1, 16] && ids.values.map { Int32($0) } == expected)
        let logits = try NpyArray.read(path: dir + "/logits.npy")
        #expect(logits.shape == [1, 1, 16, 320] && logits.kind == .f32)
        #expect(maxRelativeError(logits.values.prefix(320).map(Float.init), floats(base["last_logits"])) < 1e-4)
    }

    /// A fast mode that does not apply to a model's weight formats says so (the tiny model is
    /// fp32: every matrix keeps fp32 products); the default mode says nothing.
    @Test(arguments: ["int8", "bf16"])
    func aFastModeNamesTheMatricesItDoesNotCover(mode: String) throws {
        let r = try FacetProcess.run(["run", "--model", Fixtures.tinyModel, "--input_file", Fixtures.path("npy/ids_int32.npy"),
                                      "--max_output_len", "2", "--compute", mode])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("--compute \(mode) applies to Q4_0, Q4_1") && r.stderr.contains("f32 matrices keep fp32"),
                "\(r.stderr)")
        let plain = try FacetProcess.run(["run", "--model", Fixtures.tinyModel, "--input_file", Fixtures.path("npy/ids_int32.npy"), "--max_output_len", "2"])
        #expect(plain.status == 0 && !plain.stderr.contains("keep fp32"), "\(plain.stderr)")
    }

    @Test func npyInputWorksToo() throws {
        let r = try FacetProcess.run(["run", "--model", Fixtures.tinyModel, "--input_file", Fixtures.path("npy/ids_int32.npy"), "--max_output_len", "3"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("Input [Text 0]: \"[1, 2, 3]\""))
    }

    @Test(arguments: [
        (["run", "--model", "/nonexistent/model", "--input_text", "hi"], "does not exist"),
        (["run", "--model", "TINY", "--input_text", "hi"], "no tokenizer"),
        (["run", "--model", "TINY", "--input_file", "/nonexistent.csv"], "cannot"),
        (["run", "--model", "TINY", "--input_file", "BADCSV"], "not a token id"),
        (["run", "--model", "TINY", "--input_file", "IDS", "--max_output_len", "1000"], "positions"),
        (["run", "--model", "TINY", "--input_file", "IDS", "--top_p", "2"], "top_p"),
    ])
    func badInputGivesAClearError(arguments: [String], message: String) throws {
        let dir = try Fixtures.temporaryDirectory()
        try "1, 2, x\n".write(toFile: dir + "/bad.csv", atomically: true, encoding: .utf8)
        let args = arguments.map {
            $0 == "TINY" ? Fixtures.tinyModel : $0 == "BADCSV" ? dir + "/bad.csv" : $0 == "IDS" ? Fixtures.path("npy/ids_int32.npy") : $0
        }
        let r = try FacetProcess.run(args)
        #expect(r.status != 0)
        #expect(r.stderr.contains("error: "), "\(r.stderr)")
        #expect(r.stderr.contains(message), "\(r.stderr)")
    }

    /// An int64 id of 2^40 once trapped converting to Int32; a header claiming more data
    /// than the file holds once read out of bounds.
    @Test func hostileInputFilesAreRefused() throws {
        let dir = try Fixtures.temporaryDirectory()
        let big = try NpyArray(shape: [1, 2], kind: .i64, values: [1, 1_099_511_627_776]).encoded()
        try big.write(to: URL(fileURLWithPath: dir + "/big.npy"))
        var r = try FacetProcess.run(["run", "--model", Fixtures.tinyModel, "--input_file", dir + "/big.npy"])
        #expect(r.status != 0 && r.stderr.contains("not a token id"), "\(r.stderr)")
        var h = "{'descr': '<i4', 'fortran_order': False, 'shape': (4611686018427387904,), }"
        while (11 + h.utf8.count) % 64 != 0 { h += " " }
        var crafted = Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, 1, 0, UInt8(h.utf8.count + 1), 0]) + Data((h + "\n").utf8)
        crafted += Data(count: 16)
        try crafted.write(to: URL(fileURLWithPath: dir + "/crafted.npy"))
        r = try FacetProcess.run(["run", "--model", Fixtures.tinyModel, "--input_file", dir + "/crafted.npy"])
        #expect(r.status != 0 && r.stderr.contains("error: "), "\(r.stderr)")
    }

    /// Negative numbers are values as in run.py's argparse: the text "-3" stays "-3" (it was
    /// once sent as U+2212 "−3"), `--end_id -1` is a value, `--lora_task_uids -1` still works.
    @Test func negativeNumbersAreValues() throws {
        let r = try FacetProcess.run(["run", "--input_text", "-3", "-12.5", "--max_output_len", "1", "--end_id", "-1", "--stop", "-1"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("Input [Text 0]: \"-3\"") && r.stdout.contains("Input [Text 1]: \"-12.5\""), "\(r.stdout)")
    }

    @Test func corruptConfigNamesFileAndField() throws {
        let dir = try Fixtures.temporaryDirectory()
        try FileManager.default.copyItem(atPath: Fixtures.tinyModel + "/model.safetensors", toPath: dir + "/model.safetensors")
        try #"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}"#.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        let r = try FacetProcess.run(["run", "--model", dir, "--input_file", Fixtures.path("npy/ids_int32.npy")])
        #expect(r.status != 0)
        #expect(r.stderr.contains(dir + "/config.json") && r.stderr.contains("vocab_size"), "\(r.stderr)")
    }

    /// The issue's demonstration: the default model answers the way transformers does.
    @Test func defaultModelKnowsTheCapitalOfFrance() throws {
        guard Fixtures.defaultModelFile != nil else {
            Issue.record("default model not fetched: run scripts/setup")
            return
        }
        let r = try FacetProcess.run(["run", "--input_text", "What is the capital of France?", "--chat", "--max_output_len", "24"],
                                     environment: ["FACET_HOME": Fixtures.repositoryRoot])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("Output [Text 0 Beam 0]: \"The capital of France is Paris.\""), "\(r.stdout)")
    }
}

/// `facet serve` refuses bad sizes and levels before loading anything.
@Suite struct ServeArgumentTests {
    @Test(arguments: [
        (["serve", "--kv-cache-memory", "lots"], "is not a size"),
        (["serve", "--max-lora-memory", "0MB"], "is not a size"),
        (["serve", "--log-level", "loud"], "unknown log level"),
        (["serve", "--max-batch-size", "0"], "must be positive"),
    ])
    func badServeArgumentsFailClearly(arguments: [String], message: String) throws {
        let r = try FacetProcess.run(arguments + ["--model", Fixtures.tinyModel])
        #expect(r.status != 0)
        #expect(r.stderr.contains("error: ") && r.stderr.contains(message), "\(r.stderr)")
    }
}

/// `facet bench` runs end to end on the tiny model and writes its JSON and SVG (no timing
/// is asserted: figures belong in BENCHMARKS.md).
@Suite struct BenchCommandTests {
    @Test func benchWritesJSONAndSVG() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("facet-bench-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try FacetProcess.run(["bench", "--model", Fixtures.tinyModel, "--steps", "2", "--batch-sizes", "1", "2",
                                      "--prompt-lengths", "8", "--adapter-counts", "2", "--adapter-rank", "4", "--rounds", "2",
                                      "--accuracy-prompts", "2", "--accuracy-tokens", "3", "--json", dir + "/b.json", "--svg", dir + "/b.svg"])
        #expect(r.status == 0, "\(r.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/b.json"))) as! [String: Any]
        let names = (report["results"] as! [[String: Any]]).map { "\($0["mode"] ?? "")/\($0["name"]!)" }
        for mode in ["fp32", "int8", "bf16"] {
            for n in ["prefill 8", "decode batch 1", "decode batch 2", "decode batch 2, 2 adapters r4 f32", "decode batch 2, 2 adapters r4 bf16"] {
                #expect(names.contains("\(mode)/\(n)"), "\(mode)/\(n) missing from \(names)")
            }
        }
        // Adapter batches carry their same-window ratio to the base and the per-round ratios.
        for result in report["results"] as! [[String: Any]] where (result["name"] as! String).contains("adapters") {
            #expect(result["ratioToBase"] as? Double != nil)
            #expect((result["ratioRounds"] as? [Double])?.count == 2)
        }
        #expect((report["accuracy"] as! [String: Any])["int8"] != nil && (report["accuracy"] as! [String: Any])["bf16"] != nil)
        let svg = try String(contentsOfFile: dir + "/b.svg", encoding: .utf8)
        #expect(svg.hasPrefix("<svg") && svg.contains("decode batch 2, 2 adapters r4 bf16") && svg.hasSuffix("</svg>\n"))
        let bad = try FacetProcess.run(["bench", "--model", Fixtures.tinyModel, "--batch-sizes", "0"])
        #expect(bad.status != 0 && bad.stderr.contains("must be positive"), "\(bad.stderr)")
        let badPrecision = try FacetProcess.run(["bench", "--model", Fixtures.tinyModel, "--adapter-precisions", "f8"])
        #expect(badPrecision.status != 0 && badPrecision.stderr.contains("f8"), "\(badPrecision.stderr)")
        let badMode = try FacetProcess.run(["bench", "--model", Fixtures.tinyModel, "--compute", "int4"])
        #expect(badMode.status != 0 && badMode.stderr.contains("int4"), "\(badMode.stderr)")
        let badRate = try FacetProcess.run(["bench", "--serving", "--url", "http://127.0.0.1:9", "--rates", "fast"])
        #expect(badRate.status != 0 && badRate.stderr.contains("'fast' is not a positive number"), "\(badRate.stderr)")
        let badTemperature = try FacetProcess.run(["bench", "--serving", "--url", "http://127.0.0.1:9", "--temperature=-1"])
        #expect(badTemperature.status != 0 && badTemperature.stderr.contains("--temperature must be >= 0"), "\(badTemperature.stderr)")
        let noServer = try FacetProcess.run(["bench", "--serving", "--url", "http://127.0.0.1:9", "--rates", "1", "--requests", "1"])
        #expect(noServer.status != 0 && noServer.stderr.contains("error: the serving benchmark failed against http://127.0.0.1:9"),
                "\(noServer.stderr)")
    }
}

/// `facet bench --serving` starts a server on the default model with an adapter, drives it
/// with streaming requests and reports every request done (timings are not asserted).
@Suite struct ServingBenchTests {
    @Test func servingBenchmarkCompletesEveryRequest() throws {
        guard Fixtures.defaultModelFile != nil else {
            Issue.record("default model not fetched: run scripts/setup")
            return
        }
        let json = FileManager.default.temporaryDirectory.appendingPathComponent("facet-serving-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: json) }
        let port = 18_000 + Int.random(in: 0..<2_000)
        let r = try FacetProcess.run(["bench", "--serving", "--port", String(port), "--rates", "4", "max", "--requests", "3",
                                      "--max-tokens", "3", "--prompt-words", "5", "--lora", "fr=\(Fixtures.repositoryRoot)/adapters/fr",
                                      "--api-key", "bench-key", "--json", json],
                                     environment: ["FACET_HOME": Fixtures.repositoryRoot])
        #expect(r.status == 0, "\(r.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as! [String: Any]
        let rates = report["serving"] as! [[String: Any]]
        #expect(rates.count == 2)
        for rate in rates {
            #expect(rate["requests"] as? Int == 3 && rate["failed"] as? Int == 0, "\(rate)")
            #expect((rate["outputTokensPerSecond"] as? Double ?? 0) > 0)
            #expect(((rate["ttft"] as? [String: Any])?["p50"] as? Double ?? 0) > 0)
        }
    }
}
