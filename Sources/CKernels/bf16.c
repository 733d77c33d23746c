// The bf16 compute mode's products (see include/ckernels.h for the exact semantics): the
// activations rounded to bf16, each pair of products summed with one rounding, as
// AVX512_BF16's vdpbf16ps does; elsewhere the same values come from fused multiply-adds.
#include "ckernels.h"
#include "common.h"
#include "ckpool.h"
#include <math.h>
#include <string.h>

int fk_has_bf16(void);

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// Nearest-even rounding to bf16 (as fp32 bits). NaN stays NaN (quieted); |x| < 2^-64,
// denormals included, becomes a zero of the same sign, so no product or pair sum of the
// mode is ever denormal (vdpbf16ps flushes those; the emulation would not).
static inline uint32_t round_bits(uint32_t u) {
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (u | 0x00400000u) & 0xFFFF0000u;
    if (a < 0x1F800000u) return u & 0x80000000u;
    return (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
}

float fk_round_bf16(float x) { return u2f(round_bits(f2u(x))); }

#if defined(__x86_64__)
AVX2 static void round_avx2(const float *x, size_t n, float *out) {
    size_t i = 0;
    const __m256i absMask = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000), tiny = _mm256_set1_epi32(0x1F800000);
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u), quiet = _mm256_set1_epi32(0x00400000), sign = _mm256_set1_epi32((int)0x80000000u);
    const __m256i half = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1);
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(x + i));
        __m256i a = _mm256_and_si256(u, absMask);
        __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, half), _mm256_and_si256(_mm256_srli_epi32(u, 16), one));
        r = _mm256_and_si256(r, high);
        __m256i nan = _mm256_and_si256(_mm256_or_si256(u, quiet), high);
        r = _mm256_blendv_epi8(r, nan, _mm256_cmpgt_epi32(a, inf));
        r = _mm256_blendv_epi8(r, _mm256_and_si256(u, sign), _mm256_cmpgt_epi32(tiny, a));
        _mm256_storeu_si256((__m256i *)(out + i), r);
    }
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
    // Block b's dword j: bf16 of element 32b + j (low half) and of element 32b + j + 16.
    for (size_t t = 0; t < (size_t)T; t++)
        for (int b = 0; b < K / QK; b++)
            for (int j = 0; j < 16; j++) {
                const float *e = xr + t * K + (size_t)b * QK;
                pairs[t * (K / 2) + (size_t)b * 16 + j] = (f2u(e[j]) >> 16) | (f2u(e[j + 16]) & 0xFFFF0000u);
            }
}

// ---- Scalar reference path ----

static void bf16_scalar(int type, const float *xr, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, bb = block_bytes(type);
    for (int o = o0; o < o1; o++) {
        const uint8_t *row = w + (size_t)o * nb * bb;
        for (int t = 0; t < T; t++) {
            const float *xt = xr + (size_t)t * K;
            float acc[16] = {0};
            float macc = 0;
            for (int b = 0; b < nb; b++) {
                float q[32], d, m;
                block_values(type, row + (size_t)b * bb, q, &d, &m);
                const float *xb = xt + b * QK;
                for (int l = 0; l < 16; l++) {
                    float p = fmaf(q[l + 16], xb[l + 16], q[l] * xb[l]);   // both products exact: one rounding
                    acc[l] = fmaf(d, p, acc[l]);
                }
                if (type != 8) macc = fmaf(m, xsum[(size_t)t * nb + b], macc);
            }
            float v[8];
            for (int i = 0; i < 8; i++) v[i] = acc[i] + acc[i + 8];
            y[(size_t)t * ldy + o] = fold8(v) + macc;
        }
    }
}

#if defined(__x86_64__)
// ---- AVX2: the emulation, lanes 0-7 in one register and 8-15 in another ----

AVX2 static inline void bf16_block(const __m256 q[4], const float *xb, __m256 dv, __m256 *a, __m256 *b) {
    __m256 pa = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xb + 16), _mm256_mul_ps(q[0], _mm256_loadu_ps(xb)));
    __m256 pb = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb + 24), _mm256_mul_ps(q[1], _mm256_loadu_ps(xb + 8)));
    *a = _mm256_fmadd_ps(dv, pa, *a);
    *b = _mm256_fmadd_ps(dv, pb, *b);
}

// The offset weight of a block (Q4_1's minimum, Q4_0's -8d) from its widened fields.
AVX2 static inline float block_offset(int type, __m128 f) {
    return type == 3 ? _mm_cvtss_f32(_mm_shuffle_ps(f, f, 1)) : -8.0f * _mm_cvtss_f32(f);
}

// One token, R rows at a time, the block's activations shared by the rows.
__attribute__((always_inline)) AVX2 static inline void bf16_t1_rows(const int R, int type, const float *x, const float *xsum, const uint8_t *r0,
                                                                    int nb, int bb, float *y) {
    const int off = type == 3 ? 4 : 2;
    const size_t rowBytes = (size_t)nb * bb;
    __m256 a[4], c[4];
    float m[4] = {0, 0, 0, 0};
    for (int i = 0; i < R; i++) { a[i] = _mm256_setzero_ps(); c[i] = _mm256_setzero_ps(); }
    for (int b = 0; b < nb; b++) {
        const uint8_t *k0 = r0 + (size_t)b * bb;
        for (int i = 0; i < R; i++) _mm_prefetch((const char *)(k0 + (size_t)(i + 4) * rowBytes), _MM_HINT_T0);
        const float *xb = x + b * QK;
        for (int i = 0; i < R; i++) {
            const uint8_t *k = k0 + (size_t)i * rowBytes;
            __m256 q[4];
            if (type == 8) q8_unpack(k + off, q); else q4_unpack(k + off, q);
            __m128 f = block_scales(k);
            bf16_block(q, xb, _mm256_broadcastss_ps(f), &a[i], &c[i]);
            if (type != 8) m[i] = fmaf(block_offset(type, f), xsum[b], m[i]);
        }
    }
    for (int i = 0; i < R; i++) y[i] = hfold(_mm256_add_ps(a[i], c[i])) + m[i];
}

// Several tokens: four per row at a time (their activations stay in L1), the block
// unpacked once for all of them; the rest one token at a time, four rows per pass.
__attribute__((always_inline)) AVX2 static inline void bf16_avx2(int type, const float *xr, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, bb = block_bytes(type), off = type == 3 ? 4 : 2;
    int t = 0;
    for (; T >= 2 && t + 4 <= T; t += 4) {
        const float *x0 = xr + (size_t)t * K;
        const float *s0 = xsum ? xsum + (size_t)t * nb : 0;
        for (int o = o0; o < o1; o++) {
            pf_tick();
            const uint8_t *row = w + (size_t)o * nb * bb;
            __m256 a[4], c[4];
            float m[4] = {0, 0, 0, 0};
            for (int i = 0; i < 4; i++) { a[i] = _mm256_setzero_ps(); c[i] = _mm256_setzero_ps(); }
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * bb;
                if (t == 0) _mm_prefetch((const char *)(blk + 2 * (size_t)nb * bb), _MM_HINT_T0);
                __m256 q[4];
                if (type == 8) q8_unpack(blk + off, q); else q4_unpack(blk + off, q);
                __m128 f = block_scales(blk);
                __m256 dv = _mm256_broadcastss_ps(f);
                for (int i = 0; i < 4; i++) bf16_block(q, x0 + (size_t)i * K + b * QK, dv, &a[i], &c[i]);
                if (type != 8) {
                    float mw = block_offset(type, f);
                    for (int i = 0; i < 4; i++) m[i] = fmaf(mw, s0[(size_t)i * nb + b], m[i]);
                }
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
            pf_tick();
            bf16_t1_rows(4, type, xt, st, w + (size_t)o * nb * bb, nb, bb, yt + o);
        }
        for (; o < o1; o++) bf16_t1_rows(1, type, xt, st, w + (size_t)o * nb * bb, nb, bb, yt + o);
    }
}
AVX2 static void bf16_avx2_q4_1(const float *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_avx2(3, x, s, w, K, T, o0, o1, y, ldy); }
AVX2 static void bf16_avx2_q4_0(const float *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_avx2(2, x, s, w, K, T, o0, o1, y, ldy); }
AVX2 static void bf16_avx2_q8_0(const float *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_avx2(8, x, s, w, K, T, o0, o1, y, ldy); }

// ---- AVX512_BF16: vdpbf16ps on the pairs ----
#define BF16T __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")))

// A block's 32 weights as 16 pairs of bf16 (element j low, j + 16 high): small integers,
// so exact. Q4: the nibbles index a table of bf16(0..15); Q8_0: widened through fp32.
BF16T static inline __m512i weight_pairs(int type, const uint8_t *qs, __m512i table) {
    if (type == 8) {
        __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qs)));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16))));
        return _mm512_or_si512(_mm512_srli_epi32(_mm512_castps_si512(lo), 16), _mm512_castps_si512(hi));
    }
    __m512i dw = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    __m512i idx = _mm512_or_si512(_mm512_and_si512(dw, _mm512_set1_epi32(0x0F)),
                                  _mm512_and_si512(_mm512_slli_epi32(dw, 12), _mm512_set1_epi32(0xF0000)));
    return _mm512_permutexvar_epi16(idx, table);
}

BF16T static inline __m512i nibble_table(void) {
    uint16_t t[32] = {0};
    for (int i = 0; i < 16; i++) t[i] = (uint16_t)(f2u((float)i) >> 16);
    return _mm512_loadu_si512(t);
}

BF16T static inline float fold16(__m512 v) {
    return hfold(_mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

BF16T static inline __m512 pair_dot(__m512i xp, __m512i wp) {
    return _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)xp, (__m512bh)wp);
}

// Eight tokens per row outer (groups), rows inner; the rest one token at a time, four rows
// per pass. Every output: the same operations as the emulation.
__attribute__((always_inline)) BF16T static inline void bf16_512(int type, const uint32_t *xp, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, bb = block_bytes(type), off = type == 3 ? 4 : 2;
    size_t pk = (size_t)K / 2;
    __m512i table = nibble_table();
    int t = 0;
    for (; t + 8 <= T; t += 8) {
        const uint32_t *x0 = xp + (size_t)t * pk;
        for (int o = o0; o < o1; o++) {
            pf_tick();
            const uint8_t *row = w + (size_t)o * nb * bb;
            __m512 a[8];
            for (int i = 0; i < 8; i++) a[i] = _mm512_setzero_ps();
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * bb;
                if (t == 0) _mm_prefetch((const char *)(blk + 2 * (size_t)nb * bb), _MM_HINT_T0);
                __m512i wv = weight_pairs(type, blk + off, table);
                __m512 dv = _mm512_set1_ps(rd_f16c(blk));
                for (int i = 0; i < 8; i++)
                    a[i] = _mm512_fmadd_ps(dv, pair_dot(_mm512_loadu_si512(x0 + (size_t)i * pk + (size_t)b * 16), wv), a[i]);
            }
            float m[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            if (type != 8) {
                for (int b = 0; b < nb; b++) {
                    float mw = block_offset(type, block_scales(row + (size_t)b * bb));
                    for (int i = 0; i < 8; i++) m[i] = fmaf(mw, xsum[(size_t)(t + i) * nb + b], m[i]);
                }
            }
            for (int i = 0; i < 8; i++) y[(size_t)(t + i) * ldy + o] = fold16(a[i]) + m[i];
        }
    }
    for (; t < T; t++) {
        const uint32_t *xt = xp + (size_t)t * pk;
        const float *st = xsum ? xsum + (size_t)t * nb : 0;
        int o = o0;
        for (; o < o1; o += 4) {
            int n = o1 - o < 4 ? o1 - o : 4;
            pf_tick();
            __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            float m[4] = {0, 0, 0, 0};
            for (int b = 0; b < nb; b++) {
                __m512i xv = _mm512_loadu_si512(xt + (size_t)b * 16);
                for (int i = 0; i < n; i++) {
                    const uint8_t *blk = w + (size_t)(o + i) * nb * bb + (size_t)b * bb;
                    _mm_prefetch((const char *)(blk + 4 * (size_t)nb * bb), _MM_HINT_T0);
                    float d = rd_f16c(blk);
                    a[i] = _mm512_fmadd_ps(_mm512_set1_ps(d), pair_dot(xv, weight_pairs(type, blk + off, table)), a[i]);
                    if (type == 3) m[i] = fmaf(rd_f16c(blk + 2), st[b], m[i]);
                    if (type == 2) m[i] = fmaf(-8.0f * d, st[b], m[i]);
                }
            }
            for (int i = 0; i < n; i++) y[(size_t)t * ldy + o + i] = fold16(a[i]) + m[i];
        }
    }
}
BF16T static void bf16_512_q4_1(const uint32_t *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_512(3, x, s, w, K, T, o0, o1, y, ldy); }
BF16T static void bf16_512_q4_0(const uint32_t *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_512(2, x, s, w, K, T, o0, o1, y, ldy); }
BF16T static void bf16_512_q8_0(const uint32_t *x, const float *s, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { bf16_512(8, x, s, w, K, T, o0, o1, y, ldy); }
#endif

void fk_matmul_quant_bf16(int type, const float *xr, const uint32_t *pairs, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1,
                          float *y, int ldy) {
#if defined(__x86_64__)
    if (pairs && fk_has_bf16()) {
        if (type == 3) bf16_512_q4_1(pairs, xsum, w, K, T, o0, o1, y, ldy);
        else if (type == 2) bf16_512_q4_0(pairs, xsum, w, K, T, o0, o1, y, ldy);
        else bf16_512_q8_0(pairs, xsum, w, K, T, o0, o1, y, ldy);
        return;
    }
    if (fk_has_avx2()) {
        if (type == 3) bf16_avx2_q4_1(xr, xsum, w, K, T, o0, o1, y, ldy);
        else if (type == 2) bf16_avx2_q4_0(xr, xsum, w, K, T, o0, o1, y, ldy);
        else bf16_avx2_q8_0(xr, xsum, w, K, T, o0, o1, y, ldy);
        return;
    }
#endif
    bf16_scalar(type, xr, xsum, w, K, T, o0, o1, y, ldy);
}
