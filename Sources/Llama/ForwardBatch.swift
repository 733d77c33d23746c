/// One forward step's input: a flat list of tokens from any number of sequences.
///
/// Token `t` is `tokens[t]` at `positions[t]` of sequence `sequences[t]` (an index into
/// `blockTables`), using adapter slot `adapterSlots[t]` (-1 = base model). A sequence's
/// tokens in one batch must have consecutive positions following what is already cached.
/// `logitRows` lists the tokens whose next-token logits are wanted, in output order.
package struct ForwardBatch: Sendable {
    package var tokens: [Int32]
    package var positions: [Int32]
    package var sequences: [Int32]
    package var adapterSlots: [Int32]
    package var blockTables: [[Int32]]
    package var logitRows: [Int]

    package init(tokens: [Int32] = [], positions: [Int32] = [], sequences: [Int32] = [], adapterSlots: [Int32] = [],
                blockTables: [[Int32]] = [], logitRows: [Int] = []) {
        self.tokens = tokens
        self.positions = positions
        self.sequences = sequences
        self.adapterSlots = adapterSlots
        self.blockTables = blockTables
        self.logitRows = logitRows
    }

    package var count: Int { tokens.count }

    /// Appends a run of tokens of one sequence; `wantLogits` asks for the last token's logits.
    package mutating func append(sequence: Int, tokens run: [Int32], startPosition: Int, adapterSlot: Int32, wantLogits: Bool) {
        for (i, tok) in run.enumerated() {
            tokens.append(tok)
            positions.append(Int32(startPosition + i))
            sequences.append(Int32(sequence))
            adapterSlots.append(adapterSlot)
        }
        if wantLogits, !run.isEmpty { logitRows.append(tokens.count - 1) }
    }
}
