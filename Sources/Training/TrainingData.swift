import Foundation
import Tensors
import Tokenization

/// Training examples read from JSONL: records with the template's fields, or chat records
/// (`{"messages": [{"role": ..., "content": ...}, ...]}`, the last one the assistant's
/// answer) rendered with the model's chat template. Bad lines are errors naming the line.
package struct TrainingData: Sendable {
    package var examples: [TrainingExample]
    /// Records that could not fit the maximum length even truncated (counted, not used).
    package var skipped: Int
    /// Records whose truncate field lost tokens.
    package var truncated: Int

    package var tokenCount: Int { examples.reduce(0) { $0 + $1.tokens.count } }
    package var targetCount: Int { examples.reduce(0) { $0 + $1.targetCount } }

    package static func load(path: String, template: PromptTemplate?, tokenizer: Tokenizer, eos: Int32, maxLength: Int,
                             allTokensLoss: Bool = false) throws -> TrainingData {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FacetError(.notFound, "cannot read the training data", file: path, remedy: "pass a JSONL file, one record per line")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw FacetError(.invalidFile, "the file is not UTF-8 text", file: path, remedy: "save the JSONL as UTF-8")
        }
        var out = TrainingData(examples: [], skipped: 0, truncated: 0)
        for (n, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty { continue }
            func bad(_ message: String, field: String? = nil, remedy: String? = nil) -> FacetError {
                FacetError(.invalidFile, "line \(n + 1): \(message)", file: path, field: field, remedy: remedy)
            }
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw bad("not a JSON object", remedy: "each line must be one JSON object, e.g. {\"question\": \"...\", \"answer\": \"...\"}")
            }
            var formatted: FormattedExample?
            if let template {
                var record: [String: String] = [:]
                for field in template.fields {
                    guard let value = object[field] else {
                        throw bad("the record has no \"\(field)\", which the template needs", field: field,
                                  remedy: "add it to every record, or change prompt_template")
                    }
                    guard let s = value as? String else {
                        throw bad("\"\(field)\" must be a string, not \(type(of: value))", field: field, remedy: "quote the value")
                    }
                    record[field] = s
                }
                formatted = template.format(record, tokenizer: tokenizer, eos: eos, maxLength: maxLength)
            } else {
                guard let list = object["messages"] as? [Any], !list.isEmpty else {
                    throw bad("the record has no \"messages\" list (without --template, records are chats)", field: "messages",
                              remedy: "give {\"messages\": [{\"role\": \"user\", \"content\": ...}, {\"role\": \"assistant\", \"content\": ...}]}, or pass --template")
                }
                var messages: [ChatTemplate.Message] = []
                for (i, item) in list.enumerated() {
                    guard let m = item as? [String: Any], let role = m["role"] as? String, let content = m["content"] as? String else {
                        throw bad("messages[\(i)] needs string \"role\" and \"content\"", field: "messages")
                    }
                    messages.append(.init(role: role, content: content))
                }
                guard messages.last?.role == "assistant" else {
                    throw bad("the last message must be the assistant's answer", field: "messages", remedy: "end each chat with {\"role\": \"assistant\", ...}")
                }
                let prompt: [Int32]
                do {
                    prompt = try tokenizer.encodeChat(Array(messages.dropLast()), addGenerationPrompt: true)
                } catch let e as FacetError {
                    throw bad(e.message, field: "messages", remedy: e.remedy)
                }
                let answer = tokenizer.encode(messages.last!.content, addSpecialTokens: false)
                let ids = prompt + answer + [eos]
                if ids.count <= maxLength {
                    formatted = FormattedExample(promptIDs: prompt, answerIDs: answer, inputIDs: ids,
                                                 labelMask: ids.indices.map { $0 >= prompt.count ? 1 : 0 }, truncatedTokens: 0)
                }
            }
            guard var f = formatted else {
                out.skipped += 1
                continue
            }
            if allTokensLoss { f.labelMask = f.inputIDs.indices.map { $0 == 0 ? 0 : 1 } }
            if f.truncatedTokens > 0 { out.truncated += 1 }
            out.examples.append(f.example)
        }
        return out
    }
}
