import Engine
import Foundation
import Llama
import Loading
import Sampling
import Scheduling
import Testing
import TestSupport

/// Prompt log-probabilities (OpenAI's `echo` with `logprobs`, what lm-evaluation-harness
/// reads): against transformers' prompt logits, and bitwise the same alone, batched with
/// other sequences, and prefilled in chunks.
@Suite struct PromptLogprobTests {
    nonisolated(unsafe) static let golden = try! Fixtures.json("tiny_llama_untied/golden.json")
    static let model = try! ModelLoader.load(path: Fixtures.tinyModel).0

    /// Runs `prompts` (the first with prompt logprobs) in one runner; returns the first's.
    static func promptLogprobs(_ prompts: [[Int32]], chunk: Int = 512, maxTokens: Int = 0) throws -> [TokenLogprob] {
        let runner = StepRunner(model: model, tokenizer: nil,
                                limits: SchedulerLimits(maxBatchSize: 8, maxNumTokens: chunk, maxLoras: 4, maxModelLength: 256),
                                blocks: 64, blockSize: 16)
        final class Box { var lps: [TokenLogprob] = []; var indices: [Int] = [] }
        let box = Box()
        var p = SamplingParameters()
        p.temperature = 0
        p.maxTokens = maxTokens
        for (i, prompt) in prompts.enumerated() {
            var q = p
            if i > 0 { q.maxTokens = 3 }
            let s = StepRunner.Sequence(promptIDs: prompt, parameters: q, promptLogprobs: i == 0 ? 3 : nil)
            try runner.add(id: i, s, sink: .init(event: { e in
                if i == 0, case .promptLogprob(let index, let lp) = e { box.lps.append(lp); box.indices.append(index) }
            }))
        }
        while runner.hasWork { runner.step() }
        #expect(box.indices == Array(1..<prompts[0].count))
        return box.lps
    }

    @Test func matchTransformersPromptLogits() throws {
        let prompt = ints(Self.golden["prompt_ids"])
        let base = (Self.golden["cases"] as! [String: Any])["__base__"] as! [String: Any]
        let rows = (base["prompt_logits"] as! [[Any]]).map { $0.map { ($0 as! NSNumber).doubleValue } }
        let lps = try Self.promptLogprobs([prompt])
        #expect(lps.count == prompt.count - 1)
        for (j, lp) in lps.enumerated() {
            // log_softmax(logits at position j)[token j+1], in Double.
            let row = rows[j]
            let m = row.max()!
            let lse = m + log(row.reduce(0) { $0 + exp($1 - m) })
            let want = row[Int(prompt[j + 1])] - lse
            #expect(abs(Double(lp.logprob) - want) < 1e-3, "position \(j): \(lp.logprob) vs \(want)")
            #expect(lp.token == prompt[j + 1] && lp.top.count == 3)
        }
    }

    @Test func bitwiseAloneBatchedAndChunked() throws {
        let prompt = ints(Self.golden["prompt_ids"])
        let alone = try Self.promptLogprobs([prompt])
        let batched = try Self.promptLogprobs([prompt, [5, 6, 7, 8, 9], Array(prompt.reversed())])
        let chunked = try Self.promptLogprobs([prompt, [3, 1, 4]], chunk: 4)
        let generating = try Self.promptLogprobs([prompt], maxTokens: 4)
        for other in [batched, chunked, generating] {
            #expect(other.map(\.logprob.bitPattern) == alone.map(\.logprob.bitPattern))
            #expect(other == alone)
        }
    }
}
