// The fp32 kernels of one instruction-set tier (included once per tier by f32.c). The tier
// provides V16 (16 fp32 lanes) and its operations: V_ZERO, V_LOAD (16 floats), V_LOADF
// (16 values of a row stored in format fmt, widened exactly), V_SET1, V_FMA (a * b + c,
// fused per lane), V_MUL, V_ADD, V_STORE and V_FOLD (the fixed tree of `fk_dot`). Every
// tier performs the same operations per output, so every tier gives the same bits.

// The dot product of fk_dot.
__attribute__((always_inline)) TIER_ATTR static inline float TIER_NAME(dot)(const float *a, const void *b, int fmt, long n) {
    V16 acc = V_ZERO();
    long k = 0, full = n & ~15L;
    for (; k < full; k += 16) acc = V_FMA(V_LOAD(a + k), V_LOADF(b, k, fmt), acc);
    float total = V_FOLD(acc);
    for (; k < n; k++) total = a[k] * ld1(b, k, fmt) + total;
    return total;
}

TIER_ATTR static float TIER_NAME(dot_any)(const float *a, const void *b, int fmt, long n) {
    switch (fmt) {
    case FK_ROW_F16: return TIER_NAME(dot)(a, b, FK_ROW_F16, n);
    case FK_ROW_BF16: return TIER_NAME(dot)(a, b, FK_ROW_BF16, n);
    case FK_ROW_BF16_PAIRED: return TIER_NAME(dot)(a, b, FK_ROW_BF16_PAIRED, n);
    default: return TIER_NAME(dot)(a, b, FK_ROW_F32, n);
    }
}

// Finishes a tile accumulator as the dot product does: fold, tail, bias.
__attribute__((always_inline)) TIER_ATTR static inline float TIER_NAME(finish)(V16 acc, const float *xr, const float *wr, long K, long full, const float *bias) {
    float total = V_FOLD(acc);
    for (long k = full; k < K; k++) total = xr[k] * wr[k] + total;
    if (bias) total = total + *bias;
    return total;
}

// MT tokens x MO outputs of fk_matmul_f32 sharing their loads.
__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(mm_tile)(const int MT, const int MO, const float *x, const float *w, const float *bias,
                                                                          float *y, long K, long O, long t, long o) {
    V16 acc[4][4];
    for (int i = 0; i < MT; i++)
        for (int j = 0; j < MO; j++) acc[i][j] = V_ZERO();
    long full = K & ~15L;
    for (long k = 0; k < full; k += 16) {
        V16 wv[4];
        for (int j = 0; j < MO; j++) wv[j] = V_LOAD(w + (o + j) * K + k);
        for (int i = 0; i < MT; i++) {
            V16 xv = V_LOAD(x + (t + i) * K + k);
            for (int j = 0; j < MO; j++) acc[i][j] = V_FMA(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < MT; i++)
        for (int j = 0; j < MO; j++)
            y[(t + i) * O + o + j] = TIER_NAME(finish)(acc[i][j], x + (t + i) * K, w + (o + j) * K, K, full, bias ? bias + o + j : 0);
}

// Blocks of 32 tokens outer, so that a block's activations stay in L2 while the rows pass
// (rows outer would stream every token's activations from L3 once per pair of rows); each
// output is one tile's full dot product whatever the blocking, so the bits do not change.
TIER_ATTR static void TIER_NAME(matmul)(const float *x, const float *w, const float *bias, float *y, long T, long K, long O, long o0, long o1) {
    for (long t0 = 0; t0 < T; t0 += 32) {
        long t1 = T - t0 < 32 ? T : t0 + 32;
        long o = o0;
        for (; o + MM_OUTPUTS <= o1; o += MM_OUTPUTS) {
            long t = t0;
            for (; t + MM_TOKENS <= t1; t += MM_TOKENS) TIER_NAME(mm_tile)(MM_TOKENS, MM_OUTPUTS, x, w, bias, y, K, O, t, o);
            for (; t < t1; t++) TIER_NAME(mm_tile)(1, MM_OUTPUTS, x, w, bias, y, K, O, t, o);
        }
        for (; o < o1; o++)
            for (long t = t0; t < t1; t++) TIER_NAME(mm_tile)(1, 1, x, w, bias, y, K, O, t, o);
    }
}

__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(shrink)(const float *x, const void *a, const int fmt, float *u, long n, long K, long r) {
    size_t bytes = fmt == FK_ROW_F32 ? 4 : 2;
    // Eight tokens at a time outer (their inputs stay in L1), the factor's rows inner (from
    // L2): with the rows outer a long group streamed every token's input once per rank.
    for (long i0 = 0; i0 < n; i0 += 8) {
        long i1 = n - i0 < 8 ? n : i0 + 8;
        for (long j = 0; j < r; j++) {
            const char *row = (const char *)a + (size_t)j * K * bytes;
            for (long i = i0; i < i1; i++) u[i * r + j] = TIER_NAME(dot)(x + i * K, row, fmt, K);
        }
    }
}

__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(expand)(const float *u, const void *bT, const int fmt, long r, long O, float scale,
                                                                         float *y, const int32_t *rows, long n, const int add) {
    V16 s16 = V_SET1(scale);
    long o = 0;
    // Output chunks outer: the r x 16 slice of B^T stays in L1 across the group's tokens.
    for (; o + 16 <= O; o += 16) {
        for (long i = 0; i < n; i++) {
            const float *ui = u + i * r;
            V16 acc = V_MUL(V_LOADF(bT, o, fmt), V_SET1(ui[0]));
            for (long j = 1; j < r; j++) acc = V_FMA(V_SET1(ui[j]), V_LOADF(bT, j * O + o, fmt), acc);
            float *row = y + (long)rows[i] * O + o;
            V_STORE(row, add ? V_ADD(V_LOAD(row), V_MUL(acc, s16)) : V_MUL(acc, s16));
        }
    }
    for (; o < O; o++) {
        for (long i = 0; i < n; i++) {
            const float *ui = u + i * r;
            float acc = ld1(bT, o, fmt) * ui[0];
            for (long j = 1; j < r; j++) acc = fmaf(ui[j], ld1(bT, j * O + o, fmt), acc);
            float *row = y + (long)rows[i] * O;
            row[o] = add ? row[o] + acc * scale : acc * scale;
        }
    }
}

// expand: 1 adds the scaled delta to out's rows, 2 stores it there; 0 shrinks.
TIER_ATTR static void TIER_NAME(lowrank)(int expand, const float *x, const void *m, int fmt, float *out, long n, long K, long r, float scale, const int32_t *rows) {
    if (expand) {
        const int add = expand == 1;
        if (fmt == FK_ROW_F16) TIER_NAME(expand)(x, m, FK_ROW_F16, r, K, scale, out, rows, n, add);
        else if (fmt == FK_ROW_BF16) TIER_NAME(expand)(x, m, FK_ROW_BF16, r, K, scale, out, rows, n, add);
        else TIER_NAME(expand)(x, m, FK_ROW_F32, r, K, scale, out, rows, n, add);
    } else {
        if (fmt == FK_ROW_F16) TIER_NAME(shrink)(x, m, FK_ROW_F16, out, n, K, r);
        else if (fmt == FK_ROW_BF16) TIER_NAME(shrink)(x, m, FK_ROW_BF16, out, n, K, r);
        else TIER_NAME(shrink)(x, m, FK_ROW_F32, out, n, K, r);
    }
}

// Positions a...b of one block (base: position j's row) weighed into R rows' outputs
// (row r: weights w + r * span, output o + r * hd, running total totals[r]): per output element
// one chain of fused multiply-adds in increasing position, per row the total's adds in the
// same order. The rows share each loaded value row.
__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(weigh)(const int R, const float *w, long span, float *totals, float *o, long hd,
                                                                        const char *base, long stride, long j, long a, long b, const int fmt) {
    const long vectorEnd = hd & ~15L;
    for (int r = 0; r < R; r++) {
        float total = totals[r];
        for (long jr = a; jr <= b; jr++) total += w[r * span + jr];
        totals[r] = total;
    }
    long d = 0;
    // 64 outputs at a time: four independent chains of fused multiply-adds per row.
    for (; d + 64 <= vectorEnd; d += 64) {
        V16 acc[VALUE_ROWS][4];
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 4; c++) acc[r][c] = V_LOAD(o + r * hd + d + 16 * c);
        for (long jr = a; jr <= b; jr++) {
            long v = (jr - j) * stride + d;
            V16 x0 = V_LOADF(base, v, fmt), x1 = V_LOADF(base, v + 16, fmt), x2 = V_LOADF(base, v + 32, fmt), x3 = V_LOADF(base, v + 48, fmt);
            for (int r = 0; r < R; r++) {
                V16 wv = V_SET1(w[r * span + jr]);
                acc[r][0] = V_FMA(wv, x0, acc[r][0]);
                acc[r][1] = V_FMA(wv, x1, acc[r][1]);
                acc[r][2] = V_FMA(wv, x2, acc[r][2]);
                acc[r][3] = V_FMA(wv, x3, acc[r][3]);
            }
        }
        for (int r = 0; r < R; r++)
            for (int c = 0; c < 4; c++) V_STORE(o + r * hd + d + 16 * c, acc[r][c]);
    }
    for (; d < vectorEnd; d += 16) {
        for (int r = 0; r < R; r++) {
            V16 acc = V_LOAD(o + r * hd + d);
            for (long jr = a; jr <= b; jr++) acc = V_FMA(V_SET1(w[r * span + jr]), V_LOADF(base, (jr - j) * stride + d, fmt), acc);
            V_STORE(o + r * hd + d, acc);
        }
    }
    for (; d < hd; d++) {
        for (int r = 0; r < R; r++) {
            float acc = o[r * hd + d];
            for (long jr = a; jr <= b; jr++) acc = fmaf(w[r * span + jr], ld1(base, (jr - j) * stride + d, fmt), acc);
            o[r * hd + d] = acc;
        }
    }
}

// Attention of one tile over one layer's paged cache (see fk_attend).
__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(attend)(const fk_attention_tile *tile, int heads, const fk_paged_layer *layer,
                                                                         const int32_t *blockTable, float scale, float *scores, float *stats,
                                                                         int g0, int g1, const int fmt) {
    const long hd = layer->head_dim, bs = layer->block_size, kvHeads = layer->kv_heads;
    const long group = heads / kvHeads, stride = kvHeads * hd, n = tile->count;
    const size_t eb = fmt == FK_ROW_F32 ? 4 : 2;
    const char *keys = (const char *)layer->keys, *values = (const char *)layer->values;
    long lo = LONG_MAX, hi = 0;
    for (long t = 0; t < n; t++) {
        if (tile->firsts[t] < lo) lo = tile->firsts[t];
        if (tile->lasts[t] > hi) hi = tile->lasts[t];
    }
    const long span = hi + 1, rows = n * group, vectorEnd = hd & ~15L;
    float *maxScore = stats, *totals = stats + rows;
    for (long g = g0; g < g1; g++) {
        const long h0 = g * group;
        for (long r = 0; r < rows; r++) maxScore[r] = -INFINITY;
        // Scores, block by block; row t * group + i is query t's head h0 + i. Within a block,
        // each row takes its positions in increasing order.
        for (long j = lo; j <= hi;) {
            long within = j % bs, run = block_run(j, hi, bs);
            const char *base = keys + (((size_t)blockTable[j / bs] * bs + within) * kvHeads + g) * hd * eb;
            for (long t = 0; t < n; t++) {
                long a, b;
                if (!clip_to_run(tile, t, j, run, &a, &b)) continue;
                const float *qt = tile->queries + t * tile->stride + h0 * hd;
                for (long i = 0; i < group; i++) {
                    long row = t * group + i;
                    const float *qh = qt + i * hd;
                    float *sr = scores + row * span;
                    float m = maxScore[row];
                    long from = a;
#if SCORES16
                    // Sixteen positions at once where a run holds them: the query is loaded
                    // once per 16 of its elements for all of them, and the sixteen folds are
                    // taken together (V_FOLD16: the same tree per position).
                    if ((hd & 15) == 0) {
                        while (b - from + 1 >= 16) {
                            const char *k0 = base + (size_t)(from - j) * stride * eb;
                            V16 acc[16];
                            for (int p = 0; p < 16; p++) acc[p] = V_ZERO();
                            for (long k = 0; k < hd; k += 16) {
                                V16 qv = V_LOAD(qh + k);
                                for (int p = 0; p < 16; p++) acc[p] = V_FMA(qv, V_LOADF(k0 + (size_t)p * stride * eb, k, fmt), acc[p]);
                            }
                            V16 sv = V_MUL(V_FOLD16(acc), V_SET1(scale));
                            V_STORE(sr + from, sv);
                            // The running maximum as `if (s > m) m = s` in order gives it: the
                            // largest score (NaNs never win), and when that is zero, the sign
                            // of the first zero.
                            float top = V_HMAX(sv);
                            if (top > m) {
                                m = top;
                                if (top == 0)
                                    for (int p = 0; p < 16; p++)
                                        if (sr[from + p] == 0) { m = sr[from + p]; break; }
                            }
                            from += 16;
                        }
                    }
#endif
                    for (long jr = from; jr <= b; jr++) {
                        float s = TIER_NAME(dot)(qh, base + (size_t)(jr - j) * stride * eb, fmt, hd) * scale;
                        sr[jr] = s;
                        if (s > m) m = s;
                    }
                    maxScore[row] = m;
                }
            }
            j += run;
        }
        for (long t = 0; t < n; t++) {
            long first = tile->firsts[t], last = tile->lasts[t];
            for (long i = 0; i < group; i++) {
                long row = t * group + i;
                float *sr = scores + row * span;
                fk_exp_shift(sr + first, last - first + 1, maxScore[row]);
                totals[row] = 0;   // summed in the value pass, in increasing j
                memset(tile->out + t * tile->stride + (h0 + i) * hd, 0, (size_t)hd * sizeof(float));
            }
        }
        // Weighted values, block by block, in increasing j for every query and head (each
        // output chunk stays in registers over a block's positions).
        for (long j = lo; j <= hi;) {
            long within = j % bs, run = block_run(j, hi, bs);
            const char *base = values + (((size_t)blockTable[j / bs] * bs + within) * kvHeads + g) * hd * eb;
            for (long t = 0; t < n; t++) {
                long a, b;
                if (!clip_to_run(tile, t, j, run, &a, &b)) continue;
                float *ot = tile->out + t * tile->stride + h0 * hd;
                long i = 0;
                for (; i + VALUE_ROWS <= group; i += VALUE_ROWS)
                    TIER_NAME(weigh)(VALUE_ROWS, scores + (t * group + i) * span, span, totals + t * group + i, ot + i * hd, hd, base, stride, j, a, b, fmt);
                for (; i < group; i++)
                    TIER_NAME(weigh)(1, scores + (t * group + i) * span, span, totals + t * group + i, ot + i * hd, hd, base, stride, j, a, b, fmt);
            }
            j += run;
        }
        for (long t = 0; t < n; t++) {
            for (long i = 0; i < group; i++) {
                float inv = 1 / totals[t * group + i];
                float *oh = tile->out + t * tile->stride + (h0 + i) * hd;
                for (long d = 0; d < hd; d++) oh[d] *= inv;
            }
        }
    }
}

TIER_ATTR static void TIER_NAME(attend_any)(const fk_attention_tile *tile, int heads, const fk_paged_layer *layer, const int32_t *blockTable,
                                            float scale, float *scores, float *stats, int g0, int g1) {
    switch (layer->format) {
    case FK_ROW_F16: TIER_NAME(attend)(tile, heads, layer, blockTable, scale, scores, stats, g0, g1, FK_ROW_F16); break;
    case FK_ROW_BF16_PAIRED: TIER_NAME(attend)(tile, heads, layer, blockTable, scale, scores, stats, g0, g1, FK_ROW_BF16_PAIRED); break;
    default: TIER_NAME(attend)(tile, heads, layer, blockTable, scale, scores, stats, g0, g1, FK_ROW_F32); break;
    }
}

// ---- Training attention (fk_train_attend, fk_train_attend_back): one sequence of n tokens
// held whole (no cache), rows of stride qs (queries, outputs) and kvs (keys, values).

// y += w * x over hd elements: one fused multiply-add per element, the same on every tier.
__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(axpy)(float *y, float w, const float *x, long hd) {
    const long vectorEnd = hd & ~15L;
    V16 wv = V_SET1(w);
    long d = 0;
    for (; d < vectorEnd; d += 16) V_STORE(y + d, V_FMA(wv, V_LOAD(x + d), V_LOAD(y + d)));
    for (; d < hd; d++) y[d] = fmaf(w, x[d], y[d]);
}

// y (zero on entry) = sum over s in first...last of w[s] * rows[s * stride]: `weigh` on one row
// (fused, increasing s); the total it also keeps is not needed here.
__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(weigh_rows)(float *y, const float *w, const float *rows, long stride,
                                                                             long first, long last, long hd) {
    float unused = 0;
    TIER_NAME(weigh)(1, w, 0, &unused, y, hd, (const char *)rows, stride, 0, first, last, FK_ROW_F32);
}

TIER_ATTR static void TIER_NAME(train_attend)(const float *q, const float *k, const float *v, long qs, long kvs, long n, long hd,
                                             long window, float scale, float *out, float *probs) {
    for (long t = 0; t < n; t++) {
        const long first = window_first(t, window);
        float *row = probs + t * n;
        const float *qt = q + t * qs;
        float top = -INFINITY;
        for (long s = first; s <= t; s++) {
            float x = TIER_NAME(dot)(qt, k + s * kvs, FK_ROW_F32, hd) * scale;
            row[s] = x;
            if (x > top) top = x;
        }
        fk_exp_shift(row + first, t - first + 1, top);
        float sum = 0;
        for (long s = first; s <= t; s++) sum = sum + row[s];
        for (long s = first; s <= t; s++) row[s] = row[s] / sum;
        TIER_NAME(weigh_rows)(out + t * qs, row, v, kvs, first, t, hd);
    }
}

#undef TIER_ATTR
#undef TIER_NAME
#undef V16
#undef V_ZERO
#undef V_LOAD
#undef V_LOADF
#undef V_SET1
#undef V_FMA
#undef V_MUL
#undef V_ADD
#undef V_STORE
#undef V_FOLD
#undef MM_TOKENS
#undef MM_OUTPUTS
#undef SCORES16
#undef V_FOLD16
#undef V_HMAX
#undef VALUE_ROWS
