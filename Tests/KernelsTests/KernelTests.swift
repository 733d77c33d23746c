import Kernels
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
        var out = [Float](repeating: 0, count: heads * hd)
        var scores = [Float](repeating: 0, count: positions * heads)
        let scale: Float = 0.25
        pagedK.withUnsafeBufferPointer { kp in
            pagedV.withUnsafeBufferPointer { vp in
                table.withUnsafeBufferPointer { tp in
                    q.withUnsafeBufferPointer { qp in
                        scores.withUnsafeMutableBufferPointer { sp in
                            out.withUnsafeMutableBufferPointer { op in
                                let layer = Attention.PagedLayer(keys: kp.baseAddress!, values: vp.baseAddress!, blockSize: blockSize, kvHeads: kvHeads, headDim: hd)
                                Attention.attend(query: qp.baseAddress!, heads: heads, layer: layer, blockTable: tp.baseAddress!,
                                                 first: 0, last: positions - 1, scale: scale, scores: sp.baseAddress!, out: op.baseAddress!)
                            }
                        }
                    }
                }
            }
        }
        let want = Reference.attention(q: q, keys: keys, values: values, heads: heads, kvHeads: kvHeads, headDim: hd, positions: positions, scale: scale)
        #expect(maxRelativeError(out, want) < 1e-5)
    }
}
