// The bf16 compute mode's products (see include/ckernels.h for the exact semantics): the
// activations rounded to bf16, each pair of products summed with one rounding, as
// AVX512_BF16's vdpbf16ps does; elsewhere the same values come from fused multiply-adds.
#include "ckernels.h"
#include "common.h"
#include "ckpool.h"
#include "kblocks.h"
#include <math.h>
#include <string.h>

int fk_has_bf16(void);

float fk_round_bf16(float x) { return u2f(round_bits(f2u(x))); }

#if defined(__x86_64__)
AVX2 static void round_avx2(const float *x, size_t n, float *out) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_si256((__m256i *)(out + i), round8_avx2(_mm256_loadu_si256((const __m256i *)(x + i))));
    for (; i < n; i++) out[i] = u2f(round_bits(f2u(x[i])));
}
#endif

void fk_prepare_bf16(const float *x, int T, int K, float *xr, uint32_t *pairs) {
    size_t n = (size_t)T * K;
#if defined(__x86_64__)
    if (fk_has_avx2()) round_avx2(x, n, xr);
    else
#endif
        for (size_t i = 0; i < n; i++) xr[i] = u2f(round_bits(f2u(x[i])));
    if (!pairs) return;
    // Block b's dword l < 8 holds elements 32b + l (low half) and 32b + l + 8; dword 8 + l
    // holds 32b + 16 + l and 32b + 24 + l.
    for (size_t t = 0; t < (size_t)T; t++)
        for (int b = 0; b < K / QK; b++) {
            const float *e = xr + t * K + (size_t)b * QK;
            uint32_t *p = pairs + t * (K / 2) + (size_t)b * 16;
            for (int l = 0; l < 8; l++) {
                p[l] = (f2u(e[l]) >> 16) | (f2u(e[l + 8]) & 0xFFFF0000u);
                p[8 + l] = (f2u(e[16 + l]) >> 16) | (f2u(e[24 + l]) & 0xFFFF0000u);
            }
        }
}

// The weight types: Q4_0 (2), Q4_1 (3), Q8_0 (8), Q4_K (12), Q6_K (14), bf16 values (30).
enum { W_BF16 = 30 };
static inline size_t row_bytes(int type, int K) {
    if (type == 12 || type == 14) return (size_t)(K / QKK) * kblock_bytes(type);
    if (type == W_BF16) return (size_t)K * 2;
    return (size_t)(K / QK) * block_bytes(type);
}
static inline int has_offsets(int type) { return type == 2 || type == 3 || type == 12; }

// ---- Scalar reference path ----

// Block b of a row: its 32 weights (integers, or bf16 values), the scales of elements 0-15
// and 16-31, and the offset weight (Q4_0: -8d, Q4_1: its minimum, Q4_K: -(dmin m)).
static inline void block_of(int type, const uint8_t *row, int b, float q[32], float *dlo, float *dhi, float *m) {
    if (type == 12 || type == 14) {
        int qi[32];
        kblock_values(type, row, b, qi, dlo, dhi, m);
        for (int l = 0; l < 32; l++) q[l] = (float)qi[l];
    } else if (type == W_BF16) {
        const uint8_t *p = row + (size_t)b * 64;
        for (int l = 0; l < 32; l++) { uint16_t h; memcpy(&h, p + 2 * l, 2); q[l] = bf16_to_f32(weight_bf16(h)); }
        *dlo = *dhi = 1; *m = 0;
    } else {
        block_values(type, row + (size_t)b * block_bytes(type), q, dlo, m);
        *dhi = *dlo;
    }
}

static void bf16_scalar(int type, const float *xr, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK;
    size_t rb = row_bytes(type, K);
    for (int o = o0; o < o1; o++) {
        const uint8_t *row = w + (size_t)o * rb;
        for (int t = 0; t < T; t++) {
            const float *xt = xr + (size_t)t * K;
            float acc[16] = {0};
            float macc = 0;
            for (int b = 0; b < nb; b++) {
                float q[32], dlo, dhi, m;
                block_of(type, row, b, q, &dlo, &dhi, &m);
                const float *xb = xt + b * QK;
                for (int l = 0; l < 8; l++) {
                    // Both products of a pair are exact, so this is their sum rounded once.
                    float lo = fmaf(q[l + 8], xb[l + 8], q[l] * xb[l]);
                    float hi = fmaf(q[24 + l], xb[24 + l], q[16 + l] * xb[16 + l]);
                    acc[l] = fmaf(dlo, lo, acc[l]);
                    acc[8 + l] = fmaf(dhi, hi, acc[8 + l]);
                }
                if (has_offsets(type)) macc = fmaf(m, xsum[(size_t)t * nb + b], macc);
            }
            float v[8];
            for (int i = 0; i < 8; i++) v[i] = acc[i] + acc[i + 8];
            y[(size_t)t * ldy + o] = fold8(v) + macc;
        }
    }
}

#if defined(__x86_64__)
// ---- AVX2: the emulation, lanes 0-7 in one register and 8-15 in another ----

// Block b's weights as four vectors (lane l of q[j] = element 8j + l), scales and offset.
__attribute__((always_inline)) AVX2 static inline void block_of_avx2(int type, const uint8_t *row, int b, __m256 q[4], float *dlo, float *dhi, float *m) {
    if (type == 12 || type == 14) {
        kblock_unpack(type, row, b, q, dlo, dhi, m);
    } else if (type == W_BF16) {
        const __m256i limit = _mm256_set1_epi32((95 << 23) - 1), expo = _mm256_set1_epi32(0x7F800000);
        const uint16_t *p = (const uint16_t *)(row + (size_t)b * 64);
        for (int j = 0; j < 4; j++) {
            __m256i u = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 8 * j))), 16);
            q[j] = _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_cmpgt_epi32(_mm256_and_si256(u, expo), limit)));
        }
        *dlo = *dhi = 1; *m = 0;
    } else {
        const uint8_t *blk = row + (size_t)b * block_bytes(type);
        if (type == 8) q8_unpack(blk + 2, q); else q4_unpack(blk + (type == 3 ? 4 : 2), q);
        __m128 f = block_scales(blk);
        *dlo = *dhi = _mm_cvtss_f32(f);
        *m = type == 3 ? _mm_cvtss_f32(_mm_shuffle_ps(f, f, 1)) : -8.0f * *dlo;
    }
}

AVX2 static inline void bf16_block(const __m256 q[4], const float *xb, __m256 dlo, __m256 dhi, __m256 *a, __m256 *c) {
    __m256 lo = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xb + 8), _mm256_mul_ps(q[0], _mm256_loadu_ps(xb)));
    __m256 hi = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb + 24), _mm256_mul_ps(q[2], _mm256_loadu_ps(xb + 16)));
    *a = _mm256_fmadd_ps(dlo, lo, *a);
    *c = _mm256_fmadd_ps(dhi, hi, *c);
}

// One token, R rows at a time.
__attribute__((always_inline)) AVX2 static inline void bf16_t1_rows(const int R, int type, const float *x, const float *xsum, const uint8_t *r0,
                                                                    int nb, size_t rb, float *y) {
    __m256 a[4], c[4];
    float m[4] = {0, 0, 0, 0};
    for (int i = 0; i < R; i++) { a[i] = _mm256_setzero_ps(); c[i] = _mm256_setzero_ps(); }
    for (int b = 0; b < nb; b++) {
        const float *xb = x + b * QK;
        for (int i = 0; i < R; i++) {
            const uint8_t *row = r0 + (size_t)i * rb;
            _mm_prefetch((const char *)(row + 4 * rb + (size_t)b * rb / nb), _MM_HINT_T0);
            __m256 q[4];
            float dlo, dhi, mw;
            block_of_avx2(type, row, b, q, &dlo, &dhi, &mw);
            bf16_block(q, xb, _mm256_set1_ps(dlo), _mm256_set1_ps(dhi), &a[i], &c[i]);
            if (has_offsets(type)) m[i] = fmaf(mw, xsum[b], m[i]);
        }
    }
    for (int i = 0; i < R; i++) y[i] = hfold(_mm256_add_ps(a[i], c[i])) + m[i];
}

// Several tokens: four per row at a time (their activations stay in L1), the block
// unpacked once for all of them; the rest one token at a time, four rows per pass.
__attribute__((always_inline)) AVX2 static inline void bf16_avx2(int type, const float *xr, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK;
    size_t rb = row_bytes(type, K);
    int t = 0;
    for (; t + 4 <= T; t += 4) {
        const float *x0 = xr + (size_t)t * K;
        const float *s0 = xsum ? xsum + (size_t)t * nb : 0;
        for (int o = o0; o < o1; o++) {
            const uint8_t *row = w + (size_t)o * rb;
            __m256 a[4], c[4];
            float m[4] = {0, 0, 0, 0};
            for (int i = 0; i < 4; i++) { a[i] = _mm256_setzero_ps(); c[i] = _mm256_setzero_ps(); }
            for (int b = 0; b < nb; b++) {
                if (t == 0) _mm_prefetch((const char *)(row + 2 * rb + (size_t)b * rb / nb), _MM_HINT_T0);
                __m256 q[4];
                float dlo, dhi, mw;
                block_of_avx2(type, row, b, q, &dlo, &dhi, &mw);
                __m256 vlo = _mm256_set1_ps(dlo), vhi = _mm256_set1_ps(dhi);
                for (int i = 0; i < 4; i++) bf16_block(q, x0 + (size_t)i * K + b * QK, vlo, vhi, &a[i], &c[i]);
                if (has_offsets(type))
                    for (int i = 0; i < 4; i++) m[i] = fmaf(mw, s0[(size_t)i * nb + b], m[i]);
            }
            for (int i = 0; i < 4; i++) y[(size_t)(t + i) * ldy + o] = hfold(_mm256_add_ps(a[i], c[i])) + m[i];
        }
    }
    for (; t < T; t++) {
        const float *xt = xr + (size_t)t * K;
        const float *st = xsum ? xsum + (size_t)t * nb : 0;
        float *yt = y + (size_t)t * ldy;
        int o = o0;
        for (; o + 4 <= o1; o += 4) {
            bf16_t1_rows(4, type, xt, st, w + (size_t)o * rb, nb, rb, yt + o);
        }
        for (; o < o1; o++) bf16_t1_rows(1, type, xt, st, w + (size_t)o * rb, nb, rb, yt + o);
    }
}
AVX2 static void bf16_avx2_q4_1(const float *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_avx2(3, x, s, w, K, T, o0, o1, y, ldy); }
AVX2 static void bf16_avx2_q4_0(const float *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_avx2(2, x, s, w, K, T, o0, o1, y, ldy); }
AVX2 static void bf16_avx2_q8_0(const float *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_avx2(8, x, s, w, K, T, o0, o1, y, ldy); }
AVX2 static void bf16_avx2_q4_k(const float *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_avx2(12, x, s, w, K, T, o0, o1, y, ldy); }
AVX2 static void bf16_avx2_q6_k(const float *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_avx2(14, x, s, w, K, T, o0, o1, y, ldy); }
AVX2 static void bf16_avx2_w16(const float *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_avx2(W_BF16, x, s, w, K, T, o0, o1, y, ldy); }

// ---- AVX512_BF16: vdpbf16ps on the pairs ----
#define BF16T __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")))

typedef struct { __m512i nibbles, lo6, hi6, spread; } bf16_tables;

BF16T static inline bf16_tables make_tables(void) {
    uint16_t n[32] = {0}, k[64], s[32];
    for (int i = 0; i < 16; i++) n[i] = (uint16_t)(f2u((float)i) >> 16);                // bf16(0..15)
    for (int i = 0; i < 64; i++) k[i] = (uint16_t)(f2u((float)(i - 32)) >> 16);          // bf16(-32..31)
    for (int l = 0; l < 8; l++) { s[2 * l] = (uint16_t)l; s[2 * l + 1] = (uint16_t)(l + 8); s[16 + 2 * l] = (uint16_t)(16 + l); s[17 + 2 * l] = (uint16_t)(24 + l); }
    bf16_tables t = {_mm512_loadu_si512(n), _mm512_loadu_si512(k), _mm512_loadu_si512(k + 32), _mm512_loadu_si512(s)};
    return t;
}

// 32 small integers (bytes v[0..31], one per element) as the block's 16 pairs: dword l < 8
// = (v[l], v[l + 8]), dword 8 + l = (v[16 + l], v[24 + l]), as word indices.
BF16T static inline __m512i pair_indices(__m256i v) {
    return _mm512_cvtepu8_epi16(_mm256_unpacklo_epi8(v, _mm256_srli_si256(v, 8)));
}

// Block b's weights as 16 bf16 pairs (exact: small integers, or the stored bf16 values),
// with the scales of lanes 0-7 and 8-15 and the offset weight.
__attribute__((always_inline)) BF16T static inline __m512i block_pairs(int type, const uint8_t *row, int b, const bf16_tables *tb,
                                                                        __m512 *dv, float *m) {
    if (type == 8 || type == 2 || type == 3) {
        const uint8_t *blk = row + (size_t)b * block_bytes(type);
        __m128 f = block_scales(blk);
        float d = _mm_cvtss_f32(f);
        *dv = _mm512_set1_ps(d);
        *m = type == 3 ? _mm_cvtss_f32(_mm_shuffle_ps(f, f, 1)) : -8.0f * d;
        if (type == 8) {
            __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2))));
            __m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18))));
            __m512 lo = _mm512_shuffle_f32x4(f0, f1, _MM_SHUFFLE(1, 0, 1, 0)), hi = _mm512_shuffle_f32x4(f0, f1, _MM_SHUFFLE(3, 2, 3, 2));
            return _mm512_or_si512(_mm512_srli_epi32(_mm512_castps_si512(lo), 16), _mm512_castps_si512(hi));
        }
        // Byte j holds element j (low nibble) and j + 16 (high nibble).
        __m128i qs = _mm_loadu_si128((const __m128i *)(blk + (type == 3 ? 4 : 2)));
        __m128i mask = _mm_set1_epi8(0x0F);
        __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(qs, 4), mask), _mm_and_si128(qs, mask));
        return _mm512_permutexvar_epi16(pair_indices(v), tb->nibbles);
    }
    if (type == 12 || type == 14) {
        float d1, d2;
        __m256i ints = kblock_ints(type, row, b, &d1, &d2, m);
        if (type == 12) {
            *dv = _mm512_set1_ps(d1);
            return _mm512_permutexvar_epi16(pair_indices(ints), tb->nibbles);
        }
        *dv = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d1), _mm512_set1_ps(d2));
        return _mm512_permutex2var_epi16(tb->lo6, pair_indices(ints), tb->hi6);   // q + 32 indexes bf16(q)
    }
    // bf16 values: the pairs are a fixed word permutation; small magnitudes flushed.
    __m512i v = _mm512_permutexvar_epi16(tb->spread, _mm512_loadu_si512(row + (size_t)b * 64));
    __mmask32 small = _mm512_cmplt_epu16_mask(_mm512_and_si512(v, _mm512_set1_epi16(0x7F80)), _mm512_set1_epi16(95 << 7));
    *dv = _mm512_set1_ps(1.0f);
    *m = 0;
    return _mm512_maskz_mov_epi16(~small, v);
}

BF16T static inline float fold16(__m512 v) {
    return hfold(_mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

BF16T static inline __m512 pair_dot(__m512i xp, __m512i wp) {
    return _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)xp, (__m512bh)wp);
}

// G tokens (16 or 8) against rows o0..o1, all G accumulators in registers: each block's
// weights are unpacked once for the G tokens. `sT` holds the G tokens' block sums
// transposed (block b's G at sT + G b), so a block's offset terms are G/8 8-lane fused
// multiply-adds: lane i is token i's sequence of fmaf over the blocks, as in the emulation.
__attribute__((always_inline)) BF16T static inline void bf16_group(const int G, int type, const uint32_t *x0, const float *sT, const uint8_t *w,
                                                                    int nb, size_t rb, size_t pk, const bf16_tables *tb, int first,
                                                                    int o0, int o1, float *y, int ldy) {
    for (int o = o0; o < o1; o++) {
        const uint8_t *row = w + (size_t)o * rb;
        __m512 a[16];
        __m256 mv[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int i = 0; i < G; i++) a[i] = _mm512_setzero_ps();
        for (int b = 0; b < nb; b++) {
            if (first) _mm_prefetch((const char *)(row + 2 * rb + (size_t)b * rb / nb), _MM_HINT_T0);
            __m512 dv;
            float mw;
            __m512i wv = block_pairs(type, row, b, tb, &dv, &mw);
            for (int i = 0; i < G; i++)
                a[i] = _mm512_fmadd_ps(dv, pair_dot(_mm512_loadu_si512(x0 + (size_t)i * pk + (size_t)b * 16), wv), a[i]);
            if (has_offsets(type))
                for (int h = 0; h < G / 8; h++) mv[h] = _mm256_fmadd_ps(_mm256_set1_ps(mw), _mm256_loadu_ps(sT + (size_t)b * G + 8 * h), mv[h]);
        }
        float m[16];
        for (int h = 0; h < G / 8; h++) _mm256_storeu_ps(m + 8 * h, mv[h]);
        for (int i = 0; i < G; i++) y[(size_t)i * ldy + o] = fold16(a[i]) + m[i];
    }
}

// Groups of 16 tokens, then of 8 (rows inner); the rest one token at a time, four rows per
// pass. Every output: the same operations as the emulation, whichever path computes it.
__attribute__((always_inline)) BF16T static inline void bf16_512(int type, const uint32_t *xp, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK;
    size_t rb = row_bytes(type, K), pk = (size_t)K / 2;
    bf16_tables tb = make_tables();
    int t = 0;
    // Without the scratch for the transposed block sums, every token goes one at a time.
    // (Each task transposes its groups' sums itself: 16 x nb floats, small next to its rows.)
    float *sT = xsum && has_offsets(type) ? fk_thread_scratch(22, (size_t)16 * nb * sizeof(float)) : 0;   // Scratch.Slot.transposedBlockSums
    if (sT || !has_offsets(type)) {
        for (int G = 16; G >= 8; G -= 8)
            for (; t + G <= T; t += G) {
                if (has_offsets(type))
                    for (int b = 0; b < nb; b++)
                        for (int i = 0; i < G; i++) sT[(size_t)b * G + i] = xsum[(size_t)(t + i) * nb + b];
                const uint32_t *x0 = xp + (size_t)t * pk;
                if (G == 16) bf16_group(16, type, x0, sT, w, nb, rb, pk, &tb, t == 0, o0, o1, y + (size_t)t * ldy, ldy);
                else bf16_group(8, type, x0, sT, w, nb, rb, pk, &tb, t == 0, o0, o1, y + (size_t)t * ldy, ldy);
            }
    }
    for (; t < T; t++) {
        const uint32_t *xt = xp + (size_t)t * pk;
        const float *st = xsum ? xsum + (size_t)t * nb : 0;
        for (int o = o0; o < o1; o += 4) {
            int n = o1 - o < 4 ? o1 - o : 4;
            __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            float m[4] = {0, 0, 0, 0};
            for (int b = 0; b < nb; b++) {
                __m512i xv = _mm512_loadu_si512(xt + (size_t)b * 16);
                for (int i = 0; i < n; i++) {
                    const uint8_t *row = w + (size_t)(o + i) * rb;
                    _mm_prefetch((const char *)(row + 4 * rb + (size_t)b * rb / nb), _MM_HINT_T0);
                    __m512 dv;
                    float mw;
                    __m512i wv = block_pairs(type, row, b, &tb, &dv, &mw);
                    a[i] = _mm512_fmadd_ps(dv, pair_dot(xv, wv), a[i]);
                    if (has_offsets(type)) m[i] = fmaf(mw, st[b], m[i]);
                }
            }
            for (int i = 0; i < n; i++) y[(size_t)t * ldy + o + i] = fold16(a[i]) + m[i];
        }
    }
}
BF16T static void bf16_512_q4_1(const uint32_t *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_512(3, x, s, w, K, T, o0, o1, y, ldy); }
BF16T static void bf16_512_q4_0(const uint32_t *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_512(2, x, s, w, K, T, o0, o1, y, ldy); }
BF16T static void bf16_512_q8_0(const uint32_t *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_512(8, x, s, w, K, T, o0, o1, y, ldy); }
BF16T static void bf16_512_q4_k(const uint32_t *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_512(12, x, s, w, K, T, o0, o1, y, ldy); }
BF16T static void bf16_512_q6_k(const uint32_t *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_512(14, x, s, w, K, T, o0, o1, y, ldy); }
BF16T static void bf16_512_w16(const uint32_t *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_512(W_BF16, x, s, w, K, T, o0, o1, y, ldy); }
#endif

void fk_matmul_quant_bf16(int type, const float *xr, const uint32_t *pairs, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1,
                          float *y, int ldy) {
#if defined(__x86_64__)
    if (pairs && fk_has_bf16()) {
        switch (type) {
        case 3: bf16_512_q4_1(pairs, xsum, w, K, T, o0, o1, y, ldy); return;
        case 2: bf16_512_q4_0(pairs, xsum, w, K, T, o0, o1, y, ldy); return;
        case 8: bf16_512_q8_0(pairs, xsum, w, K, T, o0, o1, y, ldy); return;
        case 12: bf16_512_q4_k(pairs, xsum, w, K, T, o0, o1, y, ldy); return;
        case 14: bf16_512_q6_k(pairs, xsum, w, K, T, o0, o1, y, ldy); return;
        default: bf16_512_w16(pairs, xsum, w, K, T, o0, o1, y, ldy); return;
        }
    }
    if (fk_has_avx2()) {
        switch (type) {
        case 3: bf16_avx2_q4_1(xr, xsum, w, K, T, o0, o1, y, ldy); return;
        case 2: bf16_avx2_q4_0(xr, xsum, w, K, T, o0, o1, y, ldy); return;
        case 8: bf16_avx2_q8_0(xr, xsum, w, K, T, o0, o1, y, ldy); return;
        case 12: bf16_avx2_q4_k(xr, xsum, w, K, T, o0, o1, y, ldy); return;
        case 14: bf16_avx2_q6_k(xr, xsum, w, K, T, o0, o1, y, ldy); return;
        default: bf16_avx2_w16(xr, xsum, w, K, T, o0, o1, y, ldy); return;
        }
    }
#endif
    bf16_scalar(type, xr, xsum, w, K, T, o0, o1, y, ldy);
}
