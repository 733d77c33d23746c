import Foundation
import Formats
import Testing
import TestSupport

/// The source article's `run.py` commands, with `python ../run.py` replaced by `facet run`
/// and the demo model and adapters in place of the article's 13B/7B ones.
@Suite struct ArticleCommandTests {
    var model: String { Fixtures.defaultModelFile ?? "missing: run scripts/setup" }
    var root: String { Fixtures.repositoryRoot }

    func outputs(_ stdout: String) -> [String] {
        stdout.components(separatedBy: "\n").filter { $0.hasPrefix("Output [Text ") }
    }

    /// "Run with the LoRA" and its ablation "--lora_task_uids -1" (one adapter, one input).
    @Test func singleAdapterAndItsAblation() throws {
        var results: [String: [String]] = [:]
        for uid in ["0", "-1"] {
            let r = try FacetProcess.run([
                "run", "--engine_dir", model, "--max_output_len", "20", "--input_text", "What is the capital of France?",
                "--lora_dir", root + "/adapters/fr", "--lora_task_uids", uid, "--no_add_special_tokens", "--use_py_session", "--chat",
            ])
            #expect(r.status == 0, "\(r.stderr)")
            results[uid] = outputs(r.stdout)
        }
        #expect(results["0"]?.count == 1 && results["-1"]?.count == 1)
        #expect(results["0"] != results["-1"], "the adapter must change the answer")
        #expect(results["0"]?.first?.contains("Paris") == true && results["-1"]?.first?.contains("Paris") == true)
    }

    /// "Run the base model with several LoRA models": six inputs, two adapters, uids
    /// -1 0 1 -1 0 1, nucleus sampling, and the engine limits of the conversion step.
    @Test func severalAdaptersInOneBatch() throws {
        let q1 = "What is the capital of France?", q2 = "What is the capital of Germany?"
        let r = try FacetProcess.run([
            "run", "--engine_dir", model, "--max_output_len", "10",
            "--input_text", q1, q1, q1, q2, q2, q2,
            "--lora_dir", root + "/adapters/fr", root + "/adapters/de", "--lora_task_uids", "-1", "0", "1", "-1", "0", "1",
            "--use_py_session", "--top_p", "0.5", "--top_k", "0", "--max_lora_rank", "16",
            "--lora_target_modules", "attn_q", "attn_k", "attn_v", "attn_dense", "mlp_h_to_4h", "mlp_gate", "mlp_4h_to_h",
        ])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(outputs(r.stdout).count == 6)
        #expect(r.stdout.contains("Input [Text 5]: \"\(q2)\""))
    }

    /// The conversion step's limits refuse adapters beyond them, with the remedy.
    @Test func engineLimitsRefuseLargerAdapters() throws {
        var r = try FacetProcess.run(["run", "--engine_dir", model, "--input_text", "hi", "--lora_dir", root + "/adapters/de",
                                      "--lora_task_uids", "0", "--max_lora_rank", "8"])
        #expect(r.status != 0 && r.stderr.contains("max_lora_rank"), "\(r.stderr)")
        r = try FacetProcess.run(["run", "--engine_dir", model, "--input_text", "hi", "--lora_dir", root + "/adapters/de",
                                  "--lora_task_uids", "0", "--lora_target_modules", "attn_q", "attn_k", "attn_v"])
        #expect(r.status != 0 && r.stderr.contains("lora_target_modules") && r.stderr.contains("down"), "\(r.stderr)")
    }

    /// The article's ablation with an extended-vocabulary adapter (chinese-llama-2-lora):
    /// uid -1 runs with the adapter's tables and no deltas instead of failing on new ids.
    @Test func extendedVocabularyAblation() throws {
        let dir = try Fixtures.temporaryDirectory()
        try NpyArray(shape: [1, 4], kind: .i32, values: [1, 321, 5, 330]).encoded().write(to: URL(fileURLWithPath: dir + "/ids.npy"))
        let adapter = Fixtures.path("tiny_llama_untied/adapters/extended_vocab")
        var outputs: [String: String] = [:]
        for uid in ["-1", "0"] {
            let r = try FacetProcess.run(["run", "--model", Fixtures.tinyModel, "--input_file", dir + "/ids.npy", "--max_output_len", "6",
                                          "--ignore_eos", "--lora_dir", adapter, "--lora_task_uids", uid])
            #expect(r.status == 0, "\(r.stderr)")
            outputs[uid] = self.outputs(r.stdout).first
        }
        #expect(outputs["-1"] != nil && outputs["0"] != nil)
        // Without the adapter, the same ids are outside the base vocabulary: a clear error.
        let r = try FacetProcess.run(["run", "--model", Fixtures.tinyModel, "--input_file", dir + "/ids.npy"])
        #expect(r.status != 0 && r.stderr.contains("vocabulary"), "\(r.stderr)")
    }
}
