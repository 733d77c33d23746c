// Products of training's backward pass (see include/ckernels.h).
#include "ckernels.h"
#include <math.h>
#include "common.h"

extern _Thread_local int fk_scalar_only;

// dx[t, j] += sum over o < nrows of g[t * gstride + o] * w[o * ldw + j], each term fused in
// order o = 0, 1, ...: one fmaf per term. Every path keeps that chain per output element
// (the vector paths hold MR x NR outputs in registers and walk the rows in order; the rows
// are taken in slices of KC so a slice of w stays in L1, the accumulators going through dx
// between slices, which changes no bit), so every path gives the same bits.
enum { KC = 256 };

static void add_scaled_scalar(float *dx, long ldx, const float *g, long gstride, int rows, const float *w, long ldw, int nrows, int j0, int j1,
                              int zero) {
    for (int t = 0; t < rows; t++) {
        float *out = dx + t * ldx;
        const float *gt = g + t * gstride;
        for (int j = j0; j < j1; j++) {
            float acc = zero ? 0.0f : out[j];
            for (int o = 0; o < nrows; o++) acc = fmaf(gt[o], w[(long)o * ldw + j], acc);
            out[j] = acc;
        }
    }
}

#if defined(__x86_64__)
#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl")))

// MR rows x 32 columns (two zmm per row; m0/m1 mask the columns that exist) over rows o0..o1 of w.
__attribute__((always_inline)) AVX512 static inline void tile_avx512(const int MR, float *dx, long ldx, const float *g, long gs,
                                                                     const float *w, long ldw, int o0, int o1, __mmask16 m0, __mmask16 m1, int z) {
    __m512 c0[8], c1[8];
    for (int i = 0; i < MR; i++) {
        c0[i] = z ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, dx + i * ldx);
        c1[i] = z ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, dx + i * ldx + 16);
    }
    for (int o = o0; o < o1; o++) {
        const float *wo = w + (long)o * ldw;
        __m512 b0 = _mm512_maskz_loadu_ps(m0, wo), b1 = _mm512_maskz_loadu_ps(m1, wo + 16);
        for (int i = 0; i < MR; i++) {
            __m512 a = _mm512_set1_ps(g[i * gs + o]);
            c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
        }
    }
    for (int i = 0; i < MR; i++) { _mm512_mask_storeu_ps(dx + i * ldx, m0, c0[i]); _mm512_mask_storeu_ps(dx + i * ldx + 16, m1, c1[i]); }
}

// MR rows x up to 16 columns (one zmm per row): the narrow outputs of LoRA's rank-wide
// products (u = x Aᵀ, du = dy B). Exactly 8 columns (rank 8) take tile8_avx2's ymm instead:
// on CPUs that split a 512-bit operation in two halves, a half-masked zmm costs the full width.
__attribute__((always_inline)) AVX512 static inline void tile16_avx512(const int MR, float *dx, long ldx, const float *g, long gs,
                                                                       const float *w, long ldw, int o0, int o1, __mmask16 m, int z) {
    __m512 c[12];
    for (int i = 0; i < MR; i++) c[i] = z ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, dx + i * ldx);
    for (int o = o0; o < o1; o++) {
        __m512 b = _mm512_maskz_loadu_ps(m, w + (long)o * ldw);
        for (int i = 0; i < MR; i++) c[i] = _mm512_fmadd_ps(_mm512_set1_ps(g[i * gs + o]), b, c[i]);
    }
    for (int i = 0; i < MR; i++) _mm512_mask_storeu_ps(dx + i * ldx, m, c[i]);
}

// MR rows x 8 columns (one ymm per row) over rows o0..o1 of w.
__attribute__((always_inline)) AVX2 static inline void tile8_avx2(const int MR, float *dx, long ldx, const float *g, long gs,
                                                                  const float *w, long ldw, int o0, int o1, int z) {
    __m256 c[12];
    for (int i = 0; i < MR; i++) c[i] = z ? _mm256_setzero_ps() : _mm256_loadu_ps(dx + i * ldx);
    for (int o = o0; o < o1; o++) {
        __m256 b = _mm256_loadu_ps(w + (long)o * ldw);
        for (int i = 0; i < MR; i++) c[i] = _mm256_fmadd_ps(_mm256_set1_ps(g[i * gs + o]), b, c[i]);
    }
    for (int i = 0; i < MR; i++) _mm256_storeu_ps(dx + i * ldx, c[i]);
}

AVX512 static void add_scaled_avx512(float *dx, long ldx, const float *g, long gs, int rows, const float *w, long ldw, int nrows, int width, int zero) {
    for (int o0 = 0; o0 < nrows; o0 += KC) {
        int o1 = nrows - o0 < KC ? nrows : o0 + KC, z = zero && o0 == 0;
        for (int j = 0; j < width; j += 32) {
            int n = width - j < 32 ? width - j : 32;
            if (n <= 16) {
                __mmask16 m = lanes16(n);
                int t = 0;
                if (n == 8) {
                    for (; t + 12 <= rows; t += 12) tile8_avx2(12, dx + t * ldx + j, ldx, g + t * gs, gs, w + j, ldw, o0, o1, z);
                    for (; t < rows; t++) tile8_avx2(1, dx + t * ldx + j, ldx, g + t * gs, gs, w + j, ldw, o0, o1, z);
                } else {
                    for (; t + 12 <= rows; t += 12) tile16_avx512(12, dx + t * ldx + j, ldx, g + t * gs, gs, w + j, ldw, o0, o1, m, z);
                    for (; t + 4 <= rows; t += 4) tile16_avx512(4, dx + t * ldx + j, ldx, g + t * gs, gs, w + j, ldw, o0, o1, m, z);
                    for (; t < rows; t++) tile16_avx512(1, dx + t * ldx + j, ldx, g + t * gs, gs, w + j, ldw, o0, o1, m, z);
                }
                continue;
            }
            __mmask16 m0 = lanes16(n), m1 = lanes16(n - 16);
            int t = 0;
            for (; t + 8 <= rows; t += 8) tile_avx512(8, dx + t * ldx + j, ldx, g + t * gs, gs, w + j, ldw, o0, o1, m0, m1, z);
            for (; t + 4 <= rows; t += 4) tile_avx512(4, dx + t * ldx + j, ldx, g + t * gs, gs, w + j, ldw, o0, o1, m0, m1, z);
            for (; t < rows; t++) tile_avx512(1, dx + t * ldx + j, ldx, g + t * gs, gs, w + j, ldw, o0, o1, m0, m1, z);
        }
    }
}

// MR rows x 16 columns (two ymm per row) over rows o0..o1 of w.
__attribute__((always_inline)) AVX2 static inline void tile_avx2(const int MR, float *dx, long ldx, const float *g, long gs,
                                                                 const float *w, long ldw, int o0, int o1, int z) {
    __m256 c0[6], c1[6];
    for (int i = 0; i < MR; i++) {
        c0[i] = z ? _mm256_setzero_ps() : _mm256_loadu_ps(dx + i * ldx);
        c1[i] = z ? _mm256_setzero_ps() : _mm256_loadu_ps(dx + i * ldx + 8);
    }
    for (int o = o0; o < o1; o++) {
        const float *wo = w + (long)o * ldw;
        __m256 b0 = _mm256_loadu_ps(wo), b1 = _mm256_loadu_ps(wo + 8);
        for (int i = 0; i < MR; i++) {
            __m256 a = _mm256_set1_ps(g[i * gs + o]);
            c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
        }
    }
    for (int i = 0; i < MR; i++) { _mm256_storeu_ps(dx + i * ldx, c0[i]); _mm256_storeu_ps(dx + i * ldx + 8, c1[i]); }
}

// With two or more tiles of rows, each KC x 16 panel of w is first copied to a contiguous
// buffer: a panel read at a stride of whole cache lines (ldw = 64 floats in the input
// gradient, 576 or 1536 in the adapters' products) maps onto a few L1 sets and would come
// from L2 on every tile; copied, it stays in L1 for all the tiles (the same values, so the
// same bits). Alone on a Zen 3 core with hot caches: 0-6% on training's shapes.
AVX2 static void add_scaled_avx2(float *dx, long ldx, const float *g, long gs, int rows, const float *w, long ldw, int nrows, int width, int zero) {
    int full = width / 16 * 16;
    float pack[KC * 16] __attribute__((aligned(32)));
    const int packed = rows >= 12;
    for (int o0 = 0; o0 < nrows; o0 += KC) {
        int o1 = nrows - o0 < KC ? nrows : o0 + KC, z = zero && o0 == 0;
        for (int j = 0; j < full; j += 16) {
            // The panel's rows o0..o1 (in place, or copied to rows 0..o1-o0 of `pack`, the
            // factors then read from g + o0: the same terms in the same order).
            const float *pw = w + j, *pg = g;
            long lp = ldw;
            int p0 = o0, p1 = o1;
            if (packed) {
                for (int o = o0; o < o1; o++) {
                    _mm256_store_ps(pack + (o - o0) * 16, _mm256_loadu_ps(w + (long)o * ldw + j));
                    _mm256_store_ps(pack + (o - o0) * 16 + 8, _mm256_loadu_ps(w + (long)o * ldw + j + 8));
                }
                pw = pack, pg = g + o0, lp = 16, p0 = 0, p1 = o1 - o0;
            }
            int t = 0;
            for (; t + 6 <= rows; t += 6) tile_avx2(6, dx + t * ldx + j, ldx, pg + t * gs, gs, pw, lp, p0, p1, z);
            for (; t + 2 <= rows; t += 2) tile_avx2(2, dx + t * ldx + j, ldx, pg + t * gs, gs, pw, lp, p0, p1, z);
            for (; t < rows; t++) tile_avx2(1, dx + t * ldx + j, ldx, pg + t * gs, gs, pw, lp, p0, p1, z);
        }
    }
    // Eight more columns (a rank-8 product's whole width) in ymm tiles, the rest scalar.
    if (width - full >= 8) {
        for (int o0 = 0; o0 < nrows; o0 += KC) {
            int o1 = nrows - o0 < KC ? nrows : o0 + KC, z = zero && o0 == 0;
            int t = 0;
            for (; t + 12 <= rows; t += 12) tile8_avx2(12, dx + t * ldx + full, ldx, g + t * gs, gs, w + full, ldw, o0, o1, z);
            for (; t < rows; t++) tile8_avx2(1, dx + t * ldx + full, ldx, g + t * gs, gs, w + full, ldw, o0, o1, z);
        }
        full += 8;
    }
    if (full < width) add_scaled_scalar(dx, ldx, g, gs, rows, w, ldw, nrows, full, width, zero);
}
#endif

static void product(float *dx, long ldx, const float *g, long gstride, int rows, const float *w, long ldw, int nrows, int width, int zero) {
    if (zero && nrows <= 0) {
        for (int t = 0; t < rows; t++) for (int j = 0; j < width; j++) dx[t * ldx + j] = 0;
        return;
    }
#if defined(__x86_64__)
    if (fk_has_avx512()) { add_scaled_avx512(dx, ldx, g, gstride, rows, w, ldw, nrows, width, zero); return; }
    if (fk_has_avx2()) { add_scaled_avx2(dx, ldx, g, gstride, rows, w, ldw, nrows, width, zero); return; }
#endif
    add_scaled_scalar(dx, ldx, g, gstride, rows, w, ldw, nrows, 0, width, zero);
}

void fk_add_product(float *dx, long ldx, const float *g, long gstride, int rows, const float *w, long ldw, int nrows, int width) {
    product(dx, ldx, g, gstride, rows, w, ldw, nrows, width, 0);
}

void fk_set_product(float *dx, long ldx, const float *g, long gstride, int rows, const float *w, long ldw, int nrows, int width) {
    product(dx, ldx, g, gstride, rows, w, ldw, nrows, width, 1);
}

#if defined(__x86_64__)
// dst[c * rows + r] = src[r * cols + c] for an 8 x 8 block (rows r0.., columns c0..).
AVX2 static inline void transpose8x8(const float *src, long cols, float *dst, long rows) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * cols);
    for (int i = 0; i < 8; i += 2) { t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]); t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]); }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    // r[0..3]: columns 0, 1, 2, 3 of rows 0-3 (low half) and 4-7 of rows 0-3 (high half); r[4..7] the same for rows 4-7.
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + i * rows, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * rows, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
}
#endif

void fk_transpose_rows(const float *src, long rows, long cols, long first, long end, float *dst) {
    for (long r0 = first; r0 < end; r0 += 16)
        for (long c0 = 0; c0 < cols; c0 += 16) {
            long r1 = r0 + 16 < end ? r0 + 16 : end, c1 = c0 + 16 < cols ? c0 + 16 : cols;
#if defined(__x86_64__)
            if (r1 - r0 == 16 && c1 - c0 == 16 && fk_has_avx2()) {
                for (int i = 0; i < 16; i += 8)
                    for (int j = 0; j < 16; j += 8) transpose8x8(src + (r0 + i) * cols + c0 + j, cols, dst + (c0 + j) * rows + r0 + i, rows);
                continue;
            }
#endif
            for (long r = r0; r < r1; r++)
                for (long c = c0; c < c1; c++) dst[c * rows + r] = src[r * cols + c];
        }
}

void fk_transpose(const float *src, long rows, long cols, float *dst) { fk_transpose_rows(src, rows, cols, 0, rows, dst); }

// ---- Training attention's backward pass (fk_train_attend_back), as products.
//
// Per kv head: V^T once; per query head, query rows in blocks of ATB: dP = dout V^T over the
// block's key columns (chains over d), the softmax gradient dS row by row, then dv += P^T dout,
// dq = dS K and dk += dS^T q as products over the block's rows. Every sum goes through
// `product` (one fused chain per output, in increasing index), so the bits are the same on
// every tier; the entries outside a row's window go in as zeros.
enum { ATB = 16 };

long fk_train_attend_back_scratch(long n, long hd) {
    const long tb = n < ATB ? n : ATB;
    return hd * n + 2 * tb * n;
}

void fk_train_attend_back(const float *dout, const float *q, const float *k, const float *v, const float *probs, long qs, long kvs, long n,
                          long hd, long group, long window, float scale, float *dq, float *dk, float *dv, float *scratch) {
    if (n <= 0) return;
    const long tb = n < ATB ? n : ATB;
    float *vt = scratch;              // [hd, n]: V^T
    float *blk = vt + hd * n;         // [nt, ns]: dP, then dS (row t - t0, column s - s0)
    float *tr = blk + tb * n;         // [ns, nt]: P^T, then dS^T
    for (long s = 0; s < n; s++)
        for (long d = 0; d < hd; d++) vt[d * n + s] = v[s * kvs + d];
    for (long i = 0; i < group; i++) {
        const float *P = probs + i * n * n, *go = dout + i * hd, *qi = q + i * hd;
        float *dqi = dq + i * hd;
        for (long t0 = 0; t0 < n; t0 += tb) {
            const long t1 = n - t0 < tb ? n : t0 + tb, nt = t1 - t0;
            const long s0 = window_first(t0, window), ns = t1 - s0;
            // dP[t, s] = dout_t . v_s over the block's columns s0..<t1.
            product(blk, ns, go + t0 * qs, qs, (int)nt, vt + s0, n, (int)hd, (int)ns, 1);
            for (long t = t0; t < t1; t++) {
                const long first = window_first(t, window);
                const float *pr = P + t * n;
                float *row = blk + (t - t0) * ns - s0;
                float sum = 0;
                for (long s = first; s <= t; s++) sum = sum + pr[s] * row[s];
                for (long s = s0; s < t1; s++) {
                    const int inside = s >= first && s <= t;
                    tr[(s - s0) * nt + (t - t0)] = inside ? pr[s] : 0.0f;
                    row[s] = inside ? pr[s] * (row[s] - sum) * scale : 0.0f;
                }
            }
            product(dv + s0 * kvs, kvs, tr, nt, (int)ns, go + t0 * qs, qs, (int)nt, (int)hd, 0);   // dv_s += sum_t p_ts dout_t
            product(dqi + t0 * qs, qs, blk, ns, (int)nt, k + s0 * kvs, kvs, (int)ns, (int)hd, 0);  // dq_t += sum_s ds_ts k_s
            fk_transpose(blk, nt, ns, tr);                                                              // dS^T
            product(dk + s0 * kvs, kvs, tr, nt, (int)ns, qi + t0 * qs, qs, (int)nt, (int)hd, 0);    // dk_s += sum_t ds_ts q_t
        }
    }
}
