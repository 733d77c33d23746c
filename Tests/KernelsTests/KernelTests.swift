import Kernels
import Tensors
import Testing
import TestSupport

/// Optimized kernels against their naive `Reference` twins, and the batch-invariance
/// property the engine relies on.
@Suite struct KernelTests {
    func random(_ n: Int, _ rng: inout SplitMix) -> [Float] { (0..<n).map { _ in rng.float() } }

    @Test(arguments: [(1, 16, 4), (3, 17, 5), (4, 64, 8), (7, 172, 13), (9, 576, 36), (16, 33, 1)])
    func matmulMatchesReference(t: Int, k: Int, o: Int) {
        var rng = SplitMix(seed: UInt64(t * 1000 + k * 10 + o))
        let x = random(t * k, &rng), w = random(o * k, &rng), b = random(o, &rng)
        var y = [Float](repeating: 0, count: t * o)
        x.withUnsafeBufferPointer { xp in
            w.withUnsafeBufferPointer { wp in
                b.withUnsafeBufferPointer { bp in
                    y.withUnsafeMutableBufferPointer { yp in
                        MatMul.nt(x: xp.baseAddress!, w: wp.baseAddress!, bias: bp.baseAddress!, y: yp.baseAddress!, t: t, k: k, o: o)
                    }
                }
            }
        }
        let want = Reference.matmulNT(x: x, w: w, bias: b, t: t, k: k, o: o)
        #expect(maxRelativeError(y, want) < 1e-5)
    }

    /// Row t of `x W^T` is bitwise the same whether computed alone or inside any batch.
    @Test func matmulRowsAreBatchInvariant() {
        var rng = SplitMix(seed: 7)
        let k = 100, o = 37
        let x = random(11 * k, &rng), w = random(o * k, &rng)
        func run(_ rows: [Int]) -> [[Float]] {
            let packed = rows.flatMap { Array(x[($0 * k)..<(($0 + 1) * k)]) }
            var y = [Float](repeating: 0, count: rows.count * o)
            packed.withUnsafeBufferPointer { xp in
                w.withUnsafeBufferPointer { wp in
                    y.withUnsafeMutableBufferPointer { yp in
                        MatMul.nt(x: xp.baseAddress!, w: wp.baseAddress!, y: yp.baseAddress!, t: rows.count, k: k, o: o)
                    }
                }
            }
            return (0..<rows.count).map { Array(y[($0 * o)..<(($0 + 1) * o)]) }
        }
        let all = run(Array(0..<11))
        for r in 0..<11 {
            #expect(run([r]) == [all[r]])
            #expect(run([(r + 3) % 11, r, (r + 5) % 11])[1] == all[r])
        }
    }

    @Test func rmsNormMatchesReference() {
        var rng = SplitMix(seed: 3)
        let d = 70, rows = 3
        let x = random(rows * d, &rng), w = random(d, &rng)
        var y = [Float](repeating: 0, count: rows * d)
        x.withUnsafeBufferPointer { xp in
            w.withUnsafeBufferPointer { wp in
                y.withUnsafeMutableBufferPointer { yp in
                    Norm.rms(x: xp.baseAddress!, weight: wp.baseAddress!, y: yp.baseAddress!, rows: rows, dim: d, eps: 1e-5)
                }
            }
        }
        #expect(maxRelativeError(y, Reference.rmsNorm(x: x, weight: w, dim: d, eps: 1e-5)) < 1e-5)
    }

    @Test func pagedAttentionMatchesReference() {
        var rng = SplitMix(seed: 11)
        let heads = 4, kvHeads = 2, hd = 16, positions = 21, blockSize = 4
        let keys = random(positions * kvHeads * hd, &rng), values = random(positions * kvHeads * hd, &rng)
        let q = random(heads * hd, &rng)
        // Scatter the dense cache into shuffled pages.
        let blocks = (positions + blockSize - 1) / blockSize
        let table: [Int32] = (0..<Int32(blocks)).reversed().map { $0 }
        var pagedK = [Float](repeating: .nan, count: blocks * blockSize * kvHeads * hd)
        var pagedV = pagedK
        for p in 0..<positions {
            let base = (Int(table[p / blockSize]) * blockSize + p % blockSize) * kvHeads * hd
            for i in 0..<(kvHeads * hd) {
                pagedK[base + i] = keys[p * kvHeads * hd + i]
                pagedV[base + i] = values[p * kvHeads * hd + i]
            }
        }
        let scale: Float = 0.25
        let out = pagedK.withUnsafeBytes { kp in
            pagedV.withUnsafeBytes { vp in
                let layer = Attention.PagedLayer(keys: kp.baseAddress!, values: vp.baseAddress!, blockSize: blockSize, kvHeads: kvHeads, headDim: hd)
                return Self.attendInTiles(queries: q, heads: heads, layer: layer, table: table, firsts: [0], lasts: [positions - 1], scale: scale, tile: 1)
            }
        }
        let want = Reference.attention(q: q, keys: keys, values: values, heads: heads, kvHeads: kvHeads, headDim: hd, positions: positions, scale: scale)
        #expect(maxRelativeError(out, want) < 1e-5)
    }

    /// Queries attended together in a tile (as a prefill chunk's are) give bitwise what each
    /// gives alone, for every tile size, with a causal range per query and with a sliding
    /// window (per-query first positions); and they follow the naive reference.
    @Test(arguments: [nil, 5] as [Int?])
    func tiledAttentionEqualsOneQueryAtATime(window: Int?) {
        var rng = SplitMix(seed: 23)
        // 85 = 64 + 16 + 5: every path of the value sums.
        let heads = 6, kvHeads = 2, hd = 85, positions = 37, blockSize = 4
        let QD = heads * hd, width = kvHeads * hd
        let blocks = (positions + blockSize - 1) / blockSize
        // Pages out of order (7 is coprime with the 10 blocks).
        let table: [Int32] = (0..<blocks).map { Int32(($0 * 7 + 3) % blocks) }
        let pagedK = random(blocks * blockSize * width, &rng), pagedV = random(blocks * blockSize * width, &rng)
        let queries = random(positions * QD, &rng)
        let scale: Float = 0.3
        let lasts = Array(0..<positions)
        let firsts = lasts.map { p in window.map { max(0, p - $0 + 1) } ?? 0 }
        func run(tile size: Int) -> [Float] {
            pagedK.withUnsafeBytes { kp in
                pagedV.withUnsafeBytes { vp in
                    let layer = Attention.PagedLayer(keys: kp.baseAddress!, values: vp.baseAddress!, blockSize: blockSize, kvHeads: kvHeads, headDim: hd)
                    return Self.attendInTiles(queries: queries, heads: heads, layer: layer, table: table, firsts: firsts, lasts: lasts, scale: scale, tile: size)
                }
            }
        }
        let alone = run(tile: 1)
        for size in [2, 3, 16] {
            let tiled = run(tile: size)
            #expect(tiled.map(\.bitPattern) == alone.map(\.bitPattern), "tile of \(size)")
        }
        // The naive reference over each query's visible range, from a dense copy of the cache.
        for p in [0, 6, 17, positions - 1] {
            let visible = (firsts[p]...p).map { j in (Int(table[j / blockSize]) * blockSize + j % blockSize) * width }
            let keys = visible.flatMap { pagedK[$0..<($0 + width)] }, values = visible.flatMap { pagedV[$0..<($0 + width)] }
            let want = Reference.attention(q: Array(queries[(p * QD)..<((p + 1) * QD)]), keys: keys, values: values, heads: heads, kvHeads: kvHeads,
                                           headDim: hd, positions: visible.count, scale: scale)
            #expect(maxRelativeError(Array(alone[(p * QD)..<((p + 1) * QD)]), want) < 1e-5, "position \(p)")
        }
    }

    /// A 16-bit cache widens its entries exactly: attention over it is bitwise attention over
    /// an fp32 cache holding the rounded values, one query at a time or in tiles.
    @Test(arguments: [KVCacheType.bf16, .f16])
    func sixteenBitCacheEqualsFP32CacheOfRoundedValues(type: KVCacheType) {
        var rng = SplitMix(seed: 31)
        let heads = 4, kvHeads = 2, hd = 85, positions = 29, blockSize = 8
        let QD = heads * hd, width = kvHeads * hd
        let blocks = (positions + blockSize - 1) / blockSize
        let table: [Int32] = (0..<blocks).map { Int32(blocks - 1 - $0) }
        let k = random(blocks * blockSize * width, &rng).map { $0 * 3 }, v = random(blocks * blockSize * width, &rng)
        let queries = random(positions * QD, &rng)
        // The 16-bit cache, and an fp32 cache of the values it holds.
        var k16 = [UInt16](repeating: 0, count: k.count), v16 = k16
        k.withUnsafeBufferPointer { p in k16.withUnsafeMutableBytes { type.store(p.baseAddress!, rows: k.count / hd, rowLength: hd, to: $0.baseAddress!, at: 0) } }
        v.withUnsafeBufferPointer { p in v16.withUnsafeMutableBytes { type.store(p.baseAddress!, rows: v.count / hd, rowLength: hd, to: $0.baseAddress!, at: 0) } }
        let kRounded: [Float] = k16.withUnsafeBytes { p in k.indices.map { type.load(p.baseAddress!, $0, rowLength: hd) } }
        let vRounded: [Float] = v16.withUnsafeBytes { p in v.indices.map { type.load(p.baseAddress!, $0, rowLength: hd) } }
        // Rounded to nearest: within half a unit in the last place of the 16-bit type.
        let ulp: Float = type == .bf16 ? 1.0 / 128 : 1.0 / 1024
        #expect(kRounded != k)
        #expect(zip(k, kRounded).allSatisfy { abs($0 - $1) <= max(abs($0), 1e-4) * ulp / 2 + 1e-7 })
        #expect(zip(v, vRounded).allSatisfy { abs($0 - $1) <= max(abs($0), 1e-4) * ulp / 2 + 1e-7 })
        let lasts = Array(0..<positions), firsts = [Int](repeating: 0, count: positions)
        func run(_ keys: UnsafeRawPointer, _ values: UnsafeRawPointer, _ t: KVCacheType, tile: Int) -> [Float] {
            let layer = Attention.PagedLayer(keys: keys, values: values, blockSize: blockSize, kvHeads: kvHeads, headDim: hd, type: t)
            return Self.attendInTiles(queries: queries, heads: heads, layer: layer, table: table, firsts: firsts, lasts: lasts, scale: 0.2, tile: tile)
        }
        let want = kRounded.withUnsafeBytes { kp in vRounded.withUnsafeBytes { vp in run(kp.baseAddress!, vp.baseAddress!, .fp32, tile: 1) } }
        for tile in [1, 5] {
            let got = k16.withUnsafeBytes { kp in v16.withUnsafeBytes { vp in run(kp.baseAddress!, vp.baseAddress!, type, tile: tile) } }
            #expect(got.map(\.bitPattern) == want.map(\.bitPattern), "tile \(tile)")
        }
    }

    /// Every query of `queries` (`[positions, heads * headDim]`, query t seeing
    /// `firsts[t]...lasts[t]`) attended in consecutive tiles of `tile`.
    static func attendInTiles(queries: [Float], heads: Int, layer: Attention.PagedLayer, table: [Int32], firsts: [Int], lasts: [Int],
                              scale: Float, tile: Int) -> [Float] {
        let QD = heads * layer.headDim, positions = lasts.count
        var out = [Float](repeating: .nan, count: positions * QD)
        var scores = [Float](repeating: .nan, count: tile * (heads / layer.kvHeads) * ((lasts.max() ?? 0) + 1))
        queries.withUnsafeBufferPointer { qp in
            out.withUnsafeMutableBufferPointer { op in
                firsts.withUnsafeBufferPointer { fp in
                    lasts.withUnsafeBufferPointer { lp in
                        scores.withUnsafeMutableBufferPointer { sp in
                            table.withUnsafeBufferPointer { tp in
                                var t0 = 0
                                while t0 < positions {
                                    let n = min(tile, positions - t0)
                                    let tile = Attention.Tile(queries: qp.baseAddress! + t0 * QD, stride: QD, count: n, firsts: fp.baseAddress! + t0,
                                                              lasts: lp.baseAddress! + t0, out: op.baseAddress! + t0 * QD)
                                    Attention.attend(tile, heads: heads, layer: layer, blockTable: tp.baseAddress!, scale: scale, scores: sp.baseAddress!)
                                    t0 += n
                                }
                            }
                        }
                    }
                }
            }
        }
        return out
    }
}
