// Facet's compact-weight kernels. See include/ckernels.h for the exact semantics.
#include "ckernels.h"
#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common.h"
#include "ckpool.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

void fk_block_sums(const float *x, int T, int K, float *xsum) {
    int nb = K / QK;
    for (int t = 0; t < T; t++) {
        for (int b = 0; b < nb; b++) {
            const float *p = x + (size_t)t * K + b * QK;
            float lanes[8] = {0};
            for (int j = 0; j < 4; j++) for (int l = 0; l < 8; l++) lanes[l] += p[8 * j + l];
            xsum[(size_t)t * nb + b] = fold8(lanes);
        }
    }
}

// ---- Scalar reference paths (same operation order as the AVX2 ones) ----

void fk_quant_scalar(int type, int tiled, const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, bb = block_bytes(type);
    for (int o = o0; o < o1; o++) {
        // Row o's blocks: bb bytes apart in the rows, 8 * bb apart in its tile.
        const uint8_t *row = tiled ? w + (size_t)(o / 8) * nb * 8 * bb : w + (size_t)o * nb * bb;
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * K;
            float acc[8] = {0};
            float macc = 0;
            for (int b = 0; b < nb; b++) {
                float q[32], d, m;
                if (tiled) tile_block_values(type, row + (size_t)b * 8 * bb, o % 8, q, &d, &m);
                else block_values(type, row + (size_t)b * bb, q, &d, &m);
                const float *xb = xt + b * QK;
                block_lanes(q, d, xb, acc);
                if (type != 8) macc = fmaf(m, xsum[(size_t)t * nb + b], macc);
            }
            y[(size_t)t * ldy + o] = fold8(acc) + macc;
        }
    }
}

static void matmul_half_scalar(int bf, const float *x, const uint16_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK;
    for (int o = o0; o < o1; o++) {
        const uint16_t *row = w + (size_t)o * K;
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * K;
            float acc[8] = {0};
            for (int b = 0; b < nb; b++) {
                for (int l = 0; l < 8; l++) {
                    float q[4];
                    for (int j = 0; j < 4; j++) { uint16_t h = row[b * QK + 8 * j + l]; q[j] = bf ? bf16_to_f32(h) : f16_to_f32(h); }
                    const float *xb = xt + b * QK;
                    float v = q[0] * xb[l];
                    v = fmaf(q[1], xb[8 + l], v);
                    v = fmaf(q[2], xb[16 + l], v);
                    v = fmaf(q[3], xb[24 + l], v);
                    acc[l] = acc[l] + v;
                }
            }
            y[(size_t)t * ldy + o] = fold8(acc);
        }
    }
}

// ---- AVX2 paths ----
#if defined(__x86_64__)

AVX2 static inline __m256 block_dot(const __m256 q[4], const float *xb) {
    __m256 v = _mm256_mul_ps(q[0], _mm256_loadu_ps(xb));
    v = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xb + 8), v);
    v = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xb + 16), v);
    v = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb + 24), v);
    return v;
}

enum { TT = 8 };  // tokens sharing one unpacked weight block

// One row, one token: the reference arithmetic every other path reproduces per output.
__attribute__((always_inline)) AVX2 static inline float quant_row_t1(int type, const uint8_t *row, int nb, int bb, const float *xt, const float *st) {
    int off = type == 3 ? 4 : 2;
    __m256 a0 = _mm256_setzero_ps();
    float m0 = 0;
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = row + (size_t)b * bb;
        __m256 q[4];
        if (type == 8) q8_unpack(blk + off, q); else q4_unpack(blk + off, q);
        float d = rd_f16c(blk);
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(d), block_dot(q, xt + b * QK), a0);
        if (type == 3) m0 = fmaf(rd_f16c(blk + 2), st[b], m0);
        if (type == 2) m0 = fmaf(-8.0f * d, st[b], m0);
    }
    return hfold(a0) + m0;
}

// One token (decode), R rows at a time with register accumulators, the activations of a
// block loaded once for all R. The per-output arithmetic is exactly that of the tiled path
// below (quant_row_t1).
__attribute__((always_inline)) AVX2 static inline void quant_t1_rows(const int R, int type, const float *x, const float *xsum, const uint8_t *r0,
                                                                     int nb, int bb, float *y) {
    const int off = type == 3 ? 4 : 2;
    const size_t rowBytes = (size_t)nb * bb;
    __m256 acc[4];
    // The offset sums of rows 2i and 2i + 1 in lanes 0 and 2 of macc[i] (fmaf per lane, in
    // increasing b, as the scalar sum does).
    __m128 macc[2] = {_mm_setzero_ps(), _mm_setzero_ps()};
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *k0 = r0 + (size_t)b * bb;
        for (int i = 0; i < R; i++) _mm_prefetch((const char *)(k0 + (size_t)(i + 4) * rowBytes), _MM_HINT_T0);
        const float *xb = x + b * QK;
        __m256 xv[4] = {_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8), _mm256_loadu_ps(xb + 16), _mm256_loadu_ps(xb + 24)};
        __m128 f[4];
        for (int i = 0; i < R; i++) {
            const uint8_t *k = k0 + (size_t)i * rowBytes;
            __m256 q[4];
            if (type == 8) q8_unpack(k + off, q); else q4_unpack(k + off, q);
            // Scale (and Q4_1's minimum) widened together: lanes 0 and 1.
            f[i] = block_scales(k);
            __m256 v = _mm256_mul_ps(q[0], xv[0]);
            v = _mm256_fmadd_ps(q[1], xv[1], v);
            v = _mm256_fmadd_ps(q[2], xv[2], v);
            v = _mm256_fmadd_ps(q[3], xv[3], v);
            acc[i] = _mm256_fmadd_ps(_mm256_broadcastss_ps(f[i]), v, acc[i]);
        }
        if (type != 8) {
            __m128 sb = _mm_broadcast_ss(xsum + b);
            for (int i = 0; i + 1 < R; i += 2) {
                __m128 m = type == 3 ? _mm_shuffle_ps(f[i], f[i + 1], _MM_SHUFFLE(1, 1, 1, 1))
                                     : _mm_mul_ps(_mm_set1_ps(-8.0f), _mm_shuffle_ps(f[i], f[i + 1], 0));
                macc[i / 2] = _mm_fmadd_ps(m, sb, macc[i / 2]);
            }
        }
    }
    for (int i = 0; i + 1 < R; i += 2) {
        y[i] = hfold(acc[i]) + _mm_cvtss_f32(macc[i / 2]);
        y[i + 1] = hfold(acc[i + 1]) + _mm_cvtss_f32(_mm_movehl_ps(macc[i / 2], macc[i / 2]));
    }
}

__attribute__((always_inline)) AVX2 static inline void quant_t1(int type, const float *x, const float *xsum, const uint8_t *w, int K, int o0, int o1, float *y) {
    int nb = K / QK, bb = block_bytes(type);
    int o = o0;
    for (; o + 4 <= o1; o += 4) {
        quant_t1_rows(4, type, x, xsum, w + (size_t)o * nb * bb, nb, bb, y + o);
    }
    for (; o + 2 <= o1; o += 2) quant_t1_rows(2, type, x, xsum, w + (size_t)o * nb * bb, nb, bb, y + o);
    for (; o < o1; o++) y[o] = quant_row_t1(type, w + (size_t)o * nb * bb, nb, bb, x, xsum);
}

AVX2 static void quant_t1_q4_1(const float *x, const float *xs, const uint8_t *w, int K, int o0, int o1, float *y) { quant_t1(3, x, xs, w, K, o0, o1, y); }
AVX2 static void quant_t1_q4_0(const float *x, const float *xs, const uint8_t *w, int K, int o0, int o1, float *y) { quant_t1(2, x, xs, w, K, o0, o1, y); }
AVX2 static void quant_t1_q8_0(const float *x, const float *xs, const uint8_t *w, int K, int o0, int o1, float *y) { quant_t1(8, x, xs, w, K, o0, o1, y); }

// Several tokens: groups of four tokens outer (their activations stay in L1), rows inner
// (streaming from L2), register accumulators; every output gets exactly the one-token
// arithmetic.
__attribute__((always_inline)) AVX2 static inline void quant_tn(int type, const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, bb = block_bytes(type);
    int off = type == 3 ? 4 : 2;
    int t = 0;
    for (; t + 4 <= T; t += 4) {
        const float *x0 = x + (size_t)t * K, *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K;
        const float *s0 = xsum + (size_t)t * nb, *s1 = s0 + nb, *s2 = s1 + nb, *s3 = s2 + nb;
        for (int o = o0; o < o1; o++) {
            const uint8_t *row = w + (size_t)o * nb * bb;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * bb;
                if (t == 0) _mm_prefetch((const char *)(blk + 2 * (size_t)nb * bb), _MM_HINT_T0);
                __m256 q[4];
                if (type == 8) q8_unpack(blk + off, q); else q4_unpack(blk + off, q);
                __m256 dv = _mm256_set1_ps(rd_f16c(blk));
                a0 = _mm256_fmadd_ps(dv, block_dot(q, x0 + b * QK), a0);
                a1 = _mm256_fmadd_ps(dv, block_dot(q, x1 + b * QK), a1);
                a2 = _mm256_fmadd_ps(dv, block_dot(q, x2 + b * QK), a2);
                a3 = _mm256_fmadd_ps(dv, block_dot(q, x3 + b * QK), a3);
            }
            // The offsets in their own pass (same increasing block order, own accumulators).
            float m0 = 0, m1 = 0, m2 = 0, m3 = 0;
            if (type != 8) {
                for (int b = 0; b < nb; b++) {
                    const uint8_t *blk = row + (size_t)b * bb;
                    float m = type == 3 ? rd_f16c(blk + 2) : -8.0f * rd_f16c(blk);
                    m0 = fmaf(m, s0[b], m0); m1 = fmaf(m, s1[b], m1); m2 = fmaf(m, s2[b], m2); m3 = fmaf(m, s3[b], m3);
                }
            }
            y[(size_t)t * ldy + o] = hfold(a0) + m0;
            y[(size_t)(t + 1) * ldy + o] = hfold(a1) + m1;
            y[(size_t)(t + 2) * ldy + o] = hfold(a2) + m2;
            y[(size_t)(t + 3) * ldy + o] = hfold(a3) + m3;
        }
    }
    for (; t < T; t++)
        for (int o = o0; o < o1; o++)
            y[(size_t)t * ldy + o] = quant_row_t1(type, w + (size_t)o * nb * bb, nb, bb, x + (size_t)t * K, xsum + (size_t)t * nb);
}

// AVX-512: eight tokens per weight row at a time, two per register (lanes 0-7 token t,
// lanes 8-15 token t + 1), the block's weights repeated in both halves. Every lane does
// what the AVX2 path's lane does, so every output gets the same bits.
#define AVX512Q __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))
AVX512Q static inline __m512 twice(__m256 v) { return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(v)), _mm256_castps_pd(v), 1)); }
// The activations of tokens t and t + 1 for block dot pairs: per block, four runs of 16
// floats, run j = [x_t[8j .. 8j+8), x_(t+1)[8j .. 8j+8)].
AVX512Q static inline void pair_tokens(const float *xa, const float *xb, int nb, float *out) {
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < 4; j++) {
            memcpy(out + (size_t)b * 64 + 16 * j, xa + b * QK + 8 * j, 8 * sizeof(float));
            memcpy(out + (size_t)b * 64 + 16 * j + 8, xb + b * QK + 8 * j, 8 * sizeof(float));
        }
}
AVX512Q static inline __m512 block_dot_pair(const __m512 q[4], const float *xp) {
    __m512 v = _mm512_mul_ps(q[0], _mm512_loadu_ps(xp));
    v = _mm512_fmadd_ps(q[1], _mm512_loadu_ps(xp + 16), v);
    v = _mm512_fmadd_ps(q[2], _mm512_loadu_ps(xp + 32), v);
    v = _mm512_fmadd_ps(q[3], _mm512_loadu_ps(xp + 48), v);
    return v;
}
AVX512Q static inline float fold_low(__m512 v) { return hfold(_mm512_castps512_ps256(v)); }
AVX512Q static inline float fold_high(__m512 v) { return hfold(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))); }

__attribute__((always_inline)) AVX512Q static inline void quant_tn512(int type, const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, bb = block_bytes(type);
    int off = type == 3 ? 4 : 2;
    int t = 0;
    float *xp = T >= 8 ? fk_thread_scratch(23, (size_t)8 * K * sizeof(float)) : 0;   // Scratch.Slot.pairedActivations
    for (; xp && t + 8 <= T; t += 8) {
        const float *xt = x + (size_t)t * K;
        const float *st = xsum ? xsum + (size_t)t * nb : 0;
        for (int p = 0; p < 4; p++) pair_tokens(xt + (size_t)(2 * p) * K, xt + (size_t)(2 * p + 1) * K, nb, xp + (size_t)p * 2 * K);
        for (int o = o0; o < o1; o++) {
            const uint8_t *row = w + (size_t)o * nb * bb;
            __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * bb;
                if (t == 0) _mm_prefetch((const char *)(blk + 2 * (size_t)nb * bb), _MM_HINT_T0);
                __m256 q8[4];
                if (type == 8) q8_unpack(blk + off, q8); else q4_unpack(blk + off, q8);
                __m512 q[4] = {twice(q8[0]), twice(q8[1]), twice(q8[2]), twice(q8[3])};
                __m512 dv = _mm512_set1_ps(rd_f16c(blk));
                for (int p = 0; p < 4; p++) a[p] = _mm512_fmadd_ps(dv, block_dot_pair(q, xp + (size_t)p * 2 * K + (size_t)b * 64), a[p]);
            }
            float m[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (type != 8) {
                for (int b = 0; b < nb; b++) {
                    const uint8_t *blk = row + (size_t)b * bb;
                    float mw = type == 3 ? rd_f16c(blk + 2) : -8.0f * rd_f16c(blk);
                    for (int i = 0; i < 8; i++) m[i] = fmaf(mw, st[(size_t)i * nb + b], m[i]);
                }
            }
            for (int p = 0; p < 4; p++) {
                y[(size_t)(t + 2 * p) * ldy + o] = fold_low(a[p]) + m[2 * p];
                y[(size_t)(t + 2 * p + 1) * ldy + o] = fold_high(a[p]) + m[2 * p + 1];
            }
        }
    }
    if (t < T) quant_tn(type, x + (size_t)t * K, xsum ? xsum + (size_t)t * nb : 0, w, K, T - t, o0, o1, y + (size_t)t * ldy, ldy);
}
AVX512Q static void quant_tn512_q4_1(const float *x, const float *xs, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { quant_tn512(3, x, xs, w, K, T, o0, o1, y, ldy); }
AVX512Q static void quant_tn512_q4_0(const float *x, const float *xs, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { quant_tn512(2, x, xs, w, K, T, o0, o1, y, ldy); }
AVX512Q static void quant_tn512_q8_0(const float *x, const float *xs, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { quant_tn512(8, x, xs, w, K, T, o0, o1, y, ldy); }

AVX2 static void quant_tn_q4_1(const float *x, const float *xs, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { quant_tn(3, x, xs, w, K, T, o0, o1, y, ldy); }
AVX2 static void quant_tn_q4_0(const float *x, const float *xs, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { quant_tn(2, x, xs, w, K, T, o0, o1, y, ldy); }
AVX2 static void quant_tn_q8_0(const float *x, const float *xs, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { quant_tn(8, x, xs, w, K, T, o0, o1, y, ldy); }

AVX2 static void matmul_quant_avx2(int type, const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    if (T == 1) {
        if (type == 3) quant_t1_q4_1(x, xsum, w, K, o0, o1, y);
        else if (type == 2) quant_t1_q4_0(x, xsum, w, K, o0, o1, y);
        else quant_t1_q8_0(x, xsum, w, K, o0, o1, y);
        return;
    }
    if (T >= 8 && fk_has_avx512()) {
        if (type == 3) quant_tn512_q4_1(x, xsum, w, K, T, o0, o1, y, ldy);
        else if (type == 2) quant_tn512_q4_0(x, xsum, w, K, T, o0, o1, y, ldy);
        else quant_tn512_q8_0(x, xsum, w, K, T, o0, o1, y, ldy);
        return;
    }
    if (type == 3) quant_tn_q4_1(x, xsum, w, K, T, o0, o1, y, ldy);
    else if (type == 2) quant_tn_q4_0(x, xsum, w, K, T, o0, o1, y, ldy);
    else quant_tn_q8_0(x, xsum, w, K, T, o0, o1, y, ldy);
}

AVX2 static inline __m256 half8(int bf, const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (bf) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

// Groups of eight tokens outer (their activations stay in L1), rows inner (streaming from
// L2); each output's operations do not depend on the order.
AVX2 static void matmul_half_avx2(int bf, const float *x, const uint16_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK;
    for (int t0 = 0; t0 < T; t0 += TT) {
        int tn = T - t0 < TT ? T - t0 : TT;
        for (int o = o0; o < o1; o++) {
            const uint16_t *row = w + (size_t)o * K;
            __m256 acc[TT];
            for (int i = 0; i < tn; i++) acc[i] = _mm256_setzero_ps();
            for (int b = 0; b < nb; b++) {
                __m256 q[4];
                for (int j = 0; j < 4; j++) q[j] = half8(bf, row + b * QK + 8 * j);
                for (int i = 0; i < tn; i++) acc[i] = _mm256_add_ps(acc[i], block_dot(q, x + (size_t)(t0 + i) * K + b * QK));
            }
            for (int i = 0; i < tn; i++) y[(size_t)(t0 + i) * ldy + o] = hfold(acc[i]);
        }
    }
}

// AVX-512: groups of eight tokens outer (activations paired as in quant_tn512), rows inner;
// every lane does what the AVX2 path's lane does (same bits). Fewer than 8 tokens left:
// the AVX2 path.
AVX512Q static void matmul_half_avx512(int bf, const float *x, const uint16_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, t = 0;
    float *xp = fk_thread_scratch(23, (size_t)8 * K * sizeof(float));   // Scratch.Slot.pairedActivations
    for (; xp && t + 8 <= T; t += 8) {
        const float *xt = x + (size_t)t * K;
        for (int p = 0; p < 4; p++) pair_tokens(xt + (size_t)(2 * p) * K, xt + (size_t)(2 * p + 1) * K, nb, xp + (size_t)p * 2 * K);
        for (int o = o0; o < o1; o++) {
            const uint16_t *row = w + (size_t)o * K;
            __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int b = 0; b < nb; b++) {
                __m512 q[4];
                for (int j = 0; j < 4; j++) q[j] = twice(half8(bf, row + b * QK + 8 * j));
                for (int p = 0; p < 4; p++) a[p] = _mm512_add_ps(a[p], block_dot_pair(q, xp + (size_t)p * 2 * K + (size_t)b * 64));
            }
            for (int p = 0; p < 4; p++) {
                y[(size_t)(t + 2 * p) * ldy + o] = fold_low(a[p]);
                y[(size_t)(t + 2 * p + 1) * ldy + o] = fold_high(a[p]);
            }
        }
    }
    if (t < T) matmul_half_avx2(bf, x + (size_t)t * K, w, K, T - t, o0, o1, y + (size_t)t * ldy, ldy);
}
#endif

// Whether the CPU has AVX2/FMA/F16C, AVX-512 F/BW/VL, AVX-512 VNNI and AVX512_BF16 (read
// once; FACET_ISA=scalar, avx2, avx512 or avx512vnni caps the tier for the whole process),
// and per-thread switches to a lower tier for the twin tests. The pool hands a caller's
// switches to the workers that run its tasks (fk_pool_run), so a test that asks for the
// scalar path gets it in every task of its calls, while other threads keep theirs.
static int cpu_avx2 = -1, cpu_vnni = -1, cpu_avx512 = -1, cpu_bf16 = -1;
_Thread_local int fk_scalar_only = 0;
_Thread_local int fk_no_vnni = 0;
_Thread_local int fk_no_avx512 = 0;
_Thread_local int fk_no_bf16 = 0;
void fk_set_vector_path(int enabled) { fk_scalar_only = !enabled; }
void fk_set_vnni_path(int enabled) { fk_no_vnni = !enabled; }
void fk_set_avx512_path(int enabled) { fk_no_avx512 = !enabled; }
void fk_cap_tier(int tier) {
    fk_scalar_only = tier < 1;
    fk_no_avx512 = tier < 2;
    fk_no_vnni = tier < 3;
    fk_no_bf16 = tier < 4;
}
static atomic_int detected;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static void detect(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    const char *cap = getenv("FACET_ISA");
    int scalar = cap && strcmp(cap, "scalar") == 0, avx2only = cap && strcmp(cap, "avx2") == 0;
    int novnni = cap && strcmp(cap, "avx512") == 0, nobf16 = cap && strcmp(cap, "avx512vnni") == 0;
    cpu_avx2 = !scalar && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    cpu_avx512 = cpu_avx2 && !avx2only && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    cpu_vnni = cpu_avx512 && !novnni && __builtin_cpu_supports("avx512vnni");
    cpu_bf16 = cpu_vnni && !nobf16 && __builtin_cpu_supports("avx512bf16");
#else
    cpu_avx512 = 0;
    cpu_avx2 = 0;
    cpu_vnni = 0;
    cpu_bf16 = 0;
#endif
    atomic_store_explicit(&detected, 1, memory_order_release);
}
// Detection runs once, on whichever thread asks first; the others wait for it (a reader
// must never see one flag set and another still -1, which reads as true).
static inline void ensure_detected(void) {
    if (!atomic_load_explicit(&detected, memory_order_acquire)) pthread_once(&detect_once, detect);
}
int fk_has_vnni(void) {
    ensure_detected();
    return cpu_vnni && !fk_scalar_only && !fk_no_avx512 && !fk_no_vnni;
}
int fk_has_bf16(void) {
    ensure_detected();
    return cpu_bf16 && !fk_scalar_only && !fk_no_avx512 && !fk_no_vnni && !fk_no_bf16;
}
int fk_cpu_tier(void) {
    ensure_detected();
    return cpu_bf16 ? 4 : cpu_vnni ? 3 : cpu_avx512 ? 2 : cpu_avx2 ? 1 : 0;
}
int fk_has_avx512(void) {
    ensure_detected();
    return cpu_avx512 && !fk_scalar_only && !fk_no_avx512;
}
int fk_has_avx2(void) {
    ensure_detected();
    return cpu_avx2 && !fk_scalar_only;
}

void fk_matmul_q4_1(const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
#if defined(__x86_64__)
    if (fk_has_avx2()) { matmul_quant_avx2(3, x, xsum, w, K, T, o0, o1, y, ldy); return; }
#endif
    fk_quant_scalar(3, 0, x, xsum, w, K, T, o0, o1, y, ldy);
}
void fk_matmul_q4_0(const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
#if defined(__x86_64__)
    if (fk_has_avx2()) { matmul_quant_avx2(2, x, xsum, w, K, T, o0, o1, y, ldy); return; }
#endif
    fk_quant_scalar(2, 0, x, xsum, w, K, T, o0, o1, y, ldy);
}
void fk_matmul_q8_0(const float *x, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
#if defined(__x86_64__)
    if (fk_has_avx2()) { matmul_quant_avx2(8, x, 0, w, K, T, o0, o1, y, ldy); return; }
#endif
    fk_quant_scalar(8, 0, x, 0, w, K, T, o0, o1, y, ldy);
}
void fk_matmul_f16(const float *x, const uint16_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
#if defined(__x86_64__)
    if (T >= 8 && fk_has_avx512()) { matmul_half_avx512(0, x, w, K, T, o0, o1, y, ldy); return; }
    if (fk_has_avx2()) { matmul_half_avx2(0, x, w, K, T, o0, o1, y, ldy); return; }
#endif
    matmul_half_scalar(0, x, w, K, T, o0, o1, y, ldy);
}
void fk_matmul_bf16(const float *x, const uint16_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
#if defined(__x86_64__)
    if (T >= 8 && fk_has_avx512()) { matmul_half_avx512(1, x, w, K, T, o0, o1, y, ldy); return; }
    if (fk_has_avx2()) { matmul_half_avx2(1, x, w, K, T, o0, o1, y, ldy); return; }
#endif
    matmul_half_scalar(1, x, w, K, T, o0, o1, y, ldy);
}

#if defined(__x86_64__)
// The same values as the scalar loop below: d * q (+ m) with separate roundings (no fma).
AVX2 static void dequantize_row_avx2(int type, const uint8_t *r, int nb, int bb, float *out) {
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = r + (size_t)b * bb;
        __m256 d = _mm256_set1_ps(rd_f16(blk));
        __m256 v[4];
        if (type == 8) {
            for (int i = 0; i < 4; i++) v[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 2 + 8 * i))));
        } else {
            __m128i qs = _mm_loadu_si128((const __m128i *)(blk + (type == 3 ? 4 : 2)));
            __m128i mask = _mm_set1_epi8(0x0F);
            __m128i lo = _mm_and_si128(qs, mask), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
            v[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            v[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            v[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            v[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
        }
        float *o = out + (size_t)b * QK;
        if (type == 3) {
            __m256 m = _mm256_set1_ps(rd_f16(blk + 2));
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(o + 8 * i, _mm256_add_ps(_mm256_mul_ps(d, v[i]), m));
        } else if (type == 2) {
            __m256 eight = _mm256_set1_ps(8.0f);
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(o + 8 * i, _mm256_mul_ps(d, _mm256_sub_ps(v[i], eight)));
        } else {
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(o + 8 * i, _mm256_mul_ps(d, v[i]));
        }
    }
}
#endif

void fk_dequantize_row(int type, const uint8_t *w, int K, int row, float *out) {
    int nb = K / QK, bb = block_bytes(type);
    const uint8_t *r = w + (size_t)row * nb * bb;
#if defined(__x86_64__)
    if (fk_has_avx2()) { dequantize_row_avx2(type, r, nb, bb, out); return; }
#endif
    for (int b = 0; b < nb; b++) {
        float q[32], d, m;
        block_values(type, r + (size_t)b * bb, q, &d, &m);
        for (int j = 0; j < 32; j++) out[b * QK + j] = type == 8 ? d * q[j] : (type == 2 ? d * (q[j] - 8.0f) : d * q[j] + m);
    }
}

void fk_dequantize_rows(int type, const uint8_t *w, long row_bytes, int rows, int K, float *out, int ld) {
    for (int i = 0; i < rows; i++) {
        const uint8_t *r = w + (size_t)i * row_bytes;
        float *o = out + (size_t)i * ld;
        if (type == 12 || type == 14) fk_dequantize_row_k(type, r, K, 0, o);   // Q4_K, Q6_K
        else fk_dequantize_row(type, r, K, 0, o);
    }
}
