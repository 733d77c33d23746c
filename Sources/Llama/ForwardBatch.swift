/// One forward step's input: a flat list of tokens from any number of sequences.
///
/// Token `t` is `tokens[t]` at `positions[t]` of sequence `sequences[t]` (an index into
/// `blockTables`), using adapter slot `adapterSlots[t]` (-1 = base model). A sequence's
/// tokens in one batch must have consecutive positions following what is already cached.
/// `logitRows` lists the tokens whose next-token logits are wanted, in output order.
/// `blockCopies` are (source, destination) pairs of cache blocks whose keys and values are
/// copied, every layer, before the step runs (copy-on-write of a cached prefix block).
package struct ForwardBatch: Sendable {
    package var tokens: [Int32]
    package var positions: [Int32]
    package var sequences: [Int32]
    package var adapterSlots: [Int32]
    package var blockTables: [[Int32]]
    package var logitRows: [Int]
    package var blockCopies: [(source: Int32, destination: Int32)] = []

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

    /// Empties the batch, keeping its storage for the next step.
    package mutating func removeAll() {
        tokens.removeAll(keepingCapacity: true)
        positions.removeAll(keepingCapacity: true)
        sequences.removeAll(keepingCapacity: true)
        adapterSlots.removeAll(keepingCapacity: true)
        blockTables.removeAll(keepingCapacity: true)
        logitRows.removeAll(keepingCapacity: true)
        blockCopies.removeAll(keepingCapacity: true)
    }

    /// Appends a run of tokens of one sequence; `wantLogits` asks for the last token's logits.
    package mutating func append(sequence: Int, tokens run: [Int32], startPosition: Int, adapterSlot: Int32, wantLogits: Bool) {
        append(sequence: sequence, tokens: run[...], startPosition: startPosition, adapterSlot: adapterSlot, wantLogits: wantLogits)
    }

    /// The same for a slice of a longer sequence (no copy; concrete, so it allocates nothing
    /// once the batch has the capacity).
    package mutating func append(sequence: Int, tokens run: ArraySlice<Int32>, startPosition: Int, adapterSlot: Int32, wantLogits: Bool) {
        var position = Int32(startPosition)
        for tok in run {
            tokens.append(tok)
            positions.append(position)
            sequences.append(Int32(sequence))
            adapterSlots.append(adapterSlot)
            position += 1
        }
        if wantLogits, !run.isEmpty { logitRows.append(tokens.count - 1) }
    }
}
