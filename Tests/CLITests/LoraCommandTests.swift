import Foundation
import Formats
import Testing
import TestSupport

/// `facet run --lora_dir … --lora_task_uids …` and `facet lora …` end to end.
@Suite struct LoraCommandTests {
    nonisolated(unsafe) static let golden = try! Fixtures.json("tiny_llama_untied/golden.json")

    static func expectedOutput(_ name: String) -> String {
        let c = (golden["cases"] as! [String: Any])[name] as! [String: Any]
        return "[" + ints(c["greedy"]).map(String.init).joined(separator: ", ") + "]"
    }

    static func promptCSV(copies: Int) throws -> String {
        let path = try Fixtures.temporaryDirectory() + "/in.csv"
        let line = ints(golden["prompt_ids"]).map(String.init).joined(separator: ",")
        try (Array(repeating: line, count: copies).joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The seed's pattern: several adapters, one uid per input, -1 for the base, one batch.
    @Test func mixedAdaptersInOneRunMatchPEFT() throws {
        let adapters = Fixtures.path("tiny_llama_untied/adapters")
        let r = try FacetProcess.run([
            "run", "--model", Fixtures.tinyModel, "--input_file", try Self.promptCSV(copies: 4), "--max_output_len", "16", "--ignore_eos",
            "--lora_dir", adapters + "/plain_qv", adapters + "/all_linear_r8", adapters + "/embed_lora",
            "--lora_task_uids", "-1", "0", "1", "2",
        ])
        #expect(r.status == 0, "\(r.stderr)")
        for (i, name) in ["__base__", "plain_qv", "all_linear_r8", "embed_lora"].enumerated() {
            #expect(r.stdout.contains("Output [Text \(i) Beam 0]: \(Self.expectedOutput(name))"), "\(name): \(r.stdout)")
        }
    }

    @Test func convertToTensorRTAndBackThenRun() throws {
        let dir = try Fixtures.temporaryDirectory()
        let src = Fixtures.path("tiny_llama_untied/adapters/all_linear_r8")
        let toTRT = try FacetProcess.run(["lora", "convert", "--model", Fixtures.tinyModel, "--storage_type", "float32", src, dir + "/trt"])
        #expect(toTRT.status == 0, "\(toTRT.stderr)")
        #expect(try NpyArray.read(path: dir + "/trt/model.lora_config.npy").shape == [1, 14, 3])
        let back = try FacetProcess.run(["lora", "convert", "--model", Fixtures.tinyModel, dir + "/trt", dir + "/peft"])
        #expect(back.status == 0, "\(back.stderr)")
        for adapter in [dir + "/trt", dir + "/peft"] {
            let r = try FacetProcess.run(["run", "--model", Fixtures.tinyModel, "--input_file", try Self.promptCSV(copies: 1),
                                          "--max_output_len", "16", "--ignore_eos", "--lora_dir", adapter, "--lora_task_uids", "0"])
            #expect(r.stdout.contains(Self.expectedOutput("all_linear_r8")), "\(adapter): \(r.stdout) \(r.stderr)")
        }
        // Run-time options are refused by the file commands rather than ignored; run takes them.
        let ignored = try FacetProcess.run(["lora", "convert", "--model", Fixtures.tinyModel, "--lora-precision", "bf16", src, dir + "/x"])
        #expect(ignored.status != 0 && ignored.stderr.contains("--lora-precision applies to run, serve and bench"), "\(ignored.stderr)")
        let computeIgnored = try FacetProcess.run(["lora", "merge", "--model", Fixtures.tinyModel, "--compute", "int8", "--lora_dir", src,
                                                   "--output", dir + "/y"])
        #expect(computeIgnored.status != 0 && computeIgnored.stderr.contains("--compute applies to"), "\(computeIgnored.stderr)")
        let tilesIgnored = try FacetProcess.run(["lora", "convert", "--model", Fixtures.tinyModel, "--weight-tiles", "off", src, dir + "/z"])
        #expect(tilesIgnored.status != 0 && tilesIgnored.stderr.contains("--weight-tiles applies to run, serve, bench and perplexity"), "\(tilesIgnored.stderr)")
        let bf16 = try FacetProcess.run(["run", "--model", Fixtures.tinyModel, "--input_file", try Self.promptCSV(copies: 1), "--max_output_len", "16",
                                         "--ignore_eos", "--lora_dir", src, "--lora_task_uids", "0", "--lora-precision", "bf16"])
        #expect(bf16.status == 0 && bf16.stdout.contains(Self.expectedOutput("all_linear_r8")), "\(bf16.stdout) \(bf16.stderr)")
    }

    @Test func mergeWritesAModelThatAnswersLikeTheAdapter() throws {
        let dir = try Fixtures.temporaryDirectory() + "/merged"
        let m = try FacetProcess.run(["lora", "merge", "--model", Fixtures.tinyModel, "--lora_dir",
                                      Fixtures.path("tiny_llama_untied/adapters/attn_r16_alpha8"), "--output", dir])
        #expect(m.status == 0, "\(m.stderr)")
        let r = try FacetProcess.run(["run", "--model", dir, "--input_file", try Self.promptCSV(copies: 1), "--max_output_len", "16", "--ignore_eos"])
        #expect(r.stdout.contains(Self.expectedOutput("attn_r16_alpha8")), "\(r.stdout) \(r.stderr)")
    }

    @Test func ggufConvertsToSafetensors() throws {
        let dir = try Fixtures.temporaryDirectory() + "/hf"
        let c = try FacetProcess.run(["convert", "--model", Fixtures.path("gguf/tiny_llama_f32.gguf"), "--output", dir])
        #expect(c.status == 0, "\(c.stderr)")
        let r = try FacetProcess.run(["run", "--model", dir, "--input_file", try Self.promptCSV(copies: 1), "--max_output_len", "16", "--ignore_eos"])
        #expect(r.stdout.contains(Self.expectedOutput("__base__")), "\(r.stdout) \(r.stderr)")
    }

    @Test(arguments: [
        (["--lora_task_uids", "0"], "needs --lora_dir"),
        (["--lora_dir", "PLAIN", "--lora_task_uids", "1"], "has no adapter"),
        (["--lora_dir", "PLAIN", "--lora_task_uids", "-2"], "integers >= -1"),
        (["--lora_dir", "/nonexistent"], "does not exist"),
        (["--lora_dir", "DEMO_FR"], "another base model"),
    ])
    func badAdapterArgumentsFailClearly(extra: [String], message: String) throws {
        let args = ["run", "--model", Fixtures.tinyModel, "--input_file", Fixtures.path("npy/ids_int32.npy")] + extra.map {
            $0 == "PLAIN" ? Fixtures.path("tiny_llama_untied/adapters/plain_qv") : $0 == "DEMO_FR" ? Fixtures.repositoryRoot + "/adapters/fr" : $0
        }
        let r = try FacetProcess.run(args)
        #expect(r.status != 0)
        #expect(r.stderr.contains(message), "\(r.stderr)")
    }

    /// The README demo: base, fr and de answer the same question in one batch, differently.
    @Test func demoAdaptersChangeTheAnswer() throws {
        guard Fixtures.defaultModelFile != nil else {
            Issue.record("default model not fetched: run scripts/setup")
            return
        }
        let q = "What is the capital of France?"
        let root = Fixtures.repositoryRoot
        let r = try FacetProcess.run(["run", "--chat", "--max_output_len", "32", "--input_text", q, q, q,
                                      "--lora_dir", root + "/adapters/fr", root + "/adapters/de", "--lora_task_uids", "-1", "0", "1"],
                                     environment: ["FACET_HOME": root])
        #expect(r.status == 0, "\(r.stderr)")
        let answers = r.stdout.split(separator: "\n").filter { $0.hasPrefix("Output") }
        #expect(answers.count == 3)
        #expect(answers.first?.hasSuffix("\"The capital of France is Paris.\"") == true)
        #expect(Set(answers.map { $0.drop { $0 != ":" } }).count == 3, "\(answers)")
    }
}
