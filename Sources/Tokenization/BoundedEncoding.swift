import Foundation

/// A prompt would give more tokens than the caller allows.
package struct TokenLimitExceeded: Error, Sendable {
    package let limit: Int
}

extension Tokenizer {
    /// A lower bound on the tokens of any text of `byteCount` UTF-8 bytes: no token stands
    /// for more than `maxInputBytesPerToken` of them. A prompt whose bound already exceeds
    /// the context is refused before any tokenizing.
    package func minimumTokenCount(forUTF8Count byteCount: Int) -> Int {
        byteCount / maxInputBytesPerToken
    }

    /// `encode` with bounded work: refuses text that cannot give at most `limit` tokens
    /// before tokenizing it (by its byte length), stops with `TokenLimitExceeded` as soon as
    /// more than `limit` ids have been made, and with `CancellationError` when the calling
    /// task is cancelled. Below the limit the ids are exactly `encode`'s.
    package func encode(_ text: String, addSpecialTokens: Bool = true, limit: Int) throws -> [Int32] {
        if minimumTokenCount(forUTF8Count: text.utf8.count) > limit { throw TokenLimitExceeded(limit: limit) }
        var ids: [Int32] = addSpecialTokens ? prefixIDs : []
        for (n, segment) in splitOnAddedTokens(text).enumerated() {
            switch segment {
            case .added(let id): ids.append(id)
            case .text(let t): ids.append(contentsOf: try encodeOrdinary(t, firstSegment: n == 0, produced: ids.count, limit: limit))
            }
            if ids.count > limit { throw TokenLimitExceeded(limit: limit) }
        }
        if addSpecialTokens { ids.append(contentsOf: suffixIDs) }
        if ids.count > limit { throw TokenLimitExceeded(limit: limit) }
        return ids
    }

    /// The merges of a long word in O(n log n): every adjacent pair that has a merge waits in
    /// a min-heap ordered by (rank, position); the smallest is applied if both its symbols
    /// are still there unchanged, and the pairs it makes with its neighbours are pushed.
    /// Positions keep their left-to-right order as symbols merge, so ties go leftmost, as in
    /// `mergeByScan`.
    package func mergeByHeap(_ input: [Int32]) -> [Int32] {
        let n = input.count
        guard n > 1 else { return input }
        var symbol = input
        var next = Array(1...n)               // n: none
        var previous = Array(-1..<(n - 1))    // -1: none
        var alive = [Bool](repeating: true, count: n)
        var heap = PairHeap()
        func push(_ left: Int) {
            let right = next[left]
            guard right < n else { return }
            let key = UInt64(UInt32(bitPattern: symbol[left])) << 32 | UInt64(UInt32(bitPattern: symbol[right]))
            if let m = merges[key] {
                heap.push(.init(rank: m.rank, left: left, right: right, leftID: symbol[left], rightID: symbol[right], merged: m.id))
            }
        }
        for i in 0..<(n - 1) { push(i) }
        while let top = heap.pop() {
            let l = top.left, r = top.right
            guard alive[l], alive[r], next[l] == r, symbol[l] == top.leftID, symbol[r] == top.rightID else { continue }
            symbol[l] = top.merged
            alive[r] = false
            next[l] = next[r]
            if next[r] < n { previous[next[r]] = l }
            if previous[l] >= 0 { push(previous[l]) }
            push(l)
        }
        var out: [Int32] = []
        out.reserveCapacity(n)
        var i = 0
        while i < n {
            out.append(symbol[i])
            i = next[i]
        }
        return out
    }
}

/// A binary min-heap of candidate merges, ordered by rank and then position.
struct PairHeap {
    struct Item {
        var rank: Int32
        var left: Int
        var right: Int
        var leftID: Int32
        var rightID: Int32
        var merged: Int32
        func precedes(_ o: Item) -> Bool { rank != o.rank ? rank < o.rank : left < o.left }
    }

    private var items: [Item] = []

    mutating func push(_ item: Item) {
        items.append(item)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i].precedes(items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Item? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var best = i
                if l < items.count && items[l].precedes(items[best]) { best = l }
                if r < items.count && items[r].precedes(items[best]) { best = r }
                if best == i { break }
                items.swapAt(i, best)
                i = best
            }
        }
        return first
    }
}
