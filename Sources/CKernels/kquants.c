// Q4_K and Q6_K weights (ggml's 256-value super-blocks) with fp32 activations.
// See include/ckernels.h for the exact semantics.
#include "ckernels.h"
#include "common.h"
#include <math.h>

enum { Q4K_BYTES = 144, Q6K_BYTES = 210, QKK = 256 };

static inline int kblock_bytes(int type) { return type == 12 ? Q4K_BYTES : Q6K_BYTES; }

// Q4_K's 6-bit scale and min of sub-block j (0..7) from its 12 packed bytes.
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) { *sc = q[j] & 63; *m = q[j + 4] & 63; }
    else { *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4); *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
}

// Block b (32 values) of a row: its integer values in order, and the scales.
// Q4_K: x = d1 * q + m1 for all 32 (d1 = d * sc, m1 = -(dmin * m)).
// Q6_K: x = d1 * q for the first 16, d2 * q for the last 16 (d * sc of each half).
static inline void kblock_values(int type, const uint8_t *row, int b, int q[32], float *d1, float *d2, float *m1) {
    const uint8_t *sb = row + (size_t)(b / 8) * kblock_bytes(type);
    int j = b % 8;
    if (type == 12) {
        float d = rd_f16(sb), dmin = rd_f16(sb + 2);
        int sc, m;
        scale_min_k4(j, sb + 4, &sc, &m);
        *d1 = d * (float)sc; *d2 = *d1; *m1 = -(dmin * (float)m);
        const uint8_t *qs = sb + 16 + (j / 2) * 32;
        for (int l = 0; l < 32; l++) q[l] = (j & 1) ? qs[l] >> 4 : qs[l] & 0x0F;
    } else {
        int n = j / 4, i = j % 4;
        const uint8_t *ql = sb + 64 * n + (i & 1) * 32, *qh = sb + 128 + 32 * n;
        const int8_t *sc = (const int8_t *)(sb + 192 + 8 * n + 2 * i);
        int shift = i >= 2 ? 4 : 0, hshift = 2 * i;
        float d = rd_f16(sb + 208);
        *d1 = d * (float)sc[0]; *d2 = d * (float)sc[1]; *m1 = 0;
        for (int l = 0; l < 32; l++) q[l] = (((ql[l] >> shift) & 0x0F) | (((qh[l] >> hshift) & 3) << 4)) - 32;
    }
}

void fk_dequantize_row_k(int type, const uint8_t *w, int K, int row, float *out) {
    const uint8_t *r = w + (size_t)row * (K / QKK) * kblock_bytes(type);
    for (int b = 0; b < K / QK; b++) {
        int q[32]; float d1, d2, m1;
        kblock_values(type, r, b, q, &d1, &d2, &m1);
        // As ggml/gguf-py: Q4_K d1 * q - dmin * m; Q6_K (d * sc) * q.
        for (int l = 0; l < 32; l++) out[b * QK + l] = type == 12 ? d1 * (float)q[l] + m1 : (l < 16 ? d1 : d2) * (float)q[l];
    }
}

static void kquant_scalar(int type, const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK;
    size_t rowb = (size_t)(K / QKK) * kblock_bytes(type);
    for (int o = o0; o < o1; o++) {
        const uint8_t *row = w + (size_t)o * rowb;
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * K;
            float acc[8] = {0}, macc = 0;
            for (int b = 0; b < nb; b++) {
                int qi[32]; float d1, d2, m1;
                kblock_values(type, row, b, qi, &d1, &d2, &m1);
                const float *xb = xt + b * QK;
                for (int l = 0; l < 8; l++) {
                    if (type == 12) {
                        float v = (float)qi[l] * xb[l];
                        v = fmaf((float)qi[8 + l], xb[8 + l], v);
                        v = fmaf((float)qi[16 + l], xb[16 + l], v);
                        v = fmaf((float)qi[24 + l], xb[24 + l], v);
                        acc[l] = fmaf(d1, v, acc[l]);
                    } else {
                        float lo = fmaf((float)qi[8 + l], xb[8 + l], (float)qi[l] * xb[l]);
                        float hi = fmaf((float)qi[24 + l], xb[24 + l], (float)qi[16 + l] * xb[16 + l]);
                        acc[l] = fmaf(d1, lo, acc[l]);
                        acc[l] = fmaf(d2, hi, acc[l]);
                    }
                }
                if (type == 12) macc = fmaf(m1, xsum[(size_t)t * nb + b], macc);
            }
            y[(size_t)t * ldy + o] = fold8(acc) + macc;
        }
    }
}

#if defined(__x86_64__)
// Block b's 32 values as four float vectors (lane l of vector j = value 8j + l) and scales.
__attribute__((always_inline)) AVX2 static inline void kblock_unpack(int type, const uint8_t *row, int b, __m256 q[4], float *d1, float *d2, float *m1) {
    const uint8_t *sb = row + (size_t)(b / 8) * kblock_bytes(type);
    int j = b % 8;
    __m256i bytes;
    if (type == 12) {
        float d = rd_f16c(sb), dmin = rd_f16c(sb + 2);
        int sc, m;
        scale_min_k4(j, sb + 4, &sc, &m);
        *d1 = d * (float)sc; *d2 = *d1; *m1 = -(dmin * (float)m);
        __m256i qs = _mm256_loadu_si256((const __m256i *)(sb + 16 + (j / 2) * 32));
        if (j & 1) qs = _mm256_srli_epi16(qs, 4);
        bytes = _mm256_and_si256(qs, _mm256_set1_epi8(0x0F));
    } else {
        int n = j / 4, i = j % 4;
        const int8_t *sc = (const int8_t *)(sb + 192 + 8 * n + 2 * i);
        float d = rd_f16c(sb + 208);
        *d1 = d * (float)sc[0]; *d2 = d * (float)sc[1]; *m1 = 0;
        __m256i ql = _mm256_loadu_si256((const __m256i *)(sb + 64 * n + (i & 1) * 32));
        __m256i qh = _mm256_loadu_si256((const __m256i *)(sb + 128 + 32 * n));
        if (i >= 2) ql = _mm256_srli_epi16(ql, 4);
        ql = _mm256_and_si256(ql, _mm256_set1_epi8(0x0F));
        qh = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * i)), _mm256_set1_epi8(3));
        bytes = _mm256_sub_epi8(_mm256_or_si256(ql, _mm256_slli_epi16(qh, 4)), _mm256_set1_epi8(32));
    }
    __m128i lo = _mm256_castsi256_si128(bytes), hi = _mm256_extracti128_si256(bytes, 1);
    if (type == 12) {
        q[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
        q[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
        q[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
        q[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    } else {
        q[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
        q[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
        q[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
        q[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
    }
}

// acc gets the block's contribution with the scalar path's exact operations.
__attribute__((always_inline)) AVX2 static inline __m256 kblock_acc(int type, const __m256 q[4], const float *xb, float d1, float d2, __m256 acc) {
    if (type == 12) {
        __m256 v = _mm256_mul_ps(q[0], _mm256_loadu_ps(xb));
        v = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xb + 8), v);
        v = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xb + 16), v);
        v = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb + 24), v);
        return _mm256_fmadd_ps(_mm256_set1_ps(d1), v, acc);
    }
    __m256 lo = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xb + 8), _mm256_mul_ps(q[0], _mm256_loadu_ps(xb)));
    __m256 hi = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb + 24), _mm256_mul_ps(q[2], _mm256_loadu_ps(xb + 16)));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d1), lo, acc);
    return _mm256_fmadd_ps(_mm256_set1_ps(d2), hi, acc);
}

// Groups of four tokens outer, rows inner; the weight block is unpacked once per group.
__attribute__((always_inline)) AVX2 static inline void kquant_avx2(int type, const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK;
    size_t rowb = (size_t)(K / QKK) * kblock_bytes(type);
    int t = 0;
    for (; t + 4 <= T; t += 4) {
        const float *x0 = x + (size_t)t * K;
        const float *s0 = xsum + (size_t)t * nb;
        for (int o = o0; o < o1; o++) {
            const uint8_t *row = w + (size_t)o * rowb;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            float m0 = 0, m1s = 0, m2 = 0, m3 = 0;
            for (int b = 0; b < nb; b++) {
                if (t == 0 && (b & 7) == 0) _mm_prefetch((const char *)(row + 2 * rowb + (size_t)(b / 8) * kblock_bytes(type)), _MM_HINT_T0);
                __m256 q[4]; float d1, d2, mm;
                kblock_unpack(type, row, b, q, &d1, &d2, &mm);
                a0 = kblock_acc(type, q, x0 + b * QK, d1, d2, a0);
                a1 = kblock_acc(type, q, x0 + K + b * QK, d1, d2, a1);
                a2 = kblock_acc(type, q, x0 + 2 * (size_t)K + b * QK, d1, d2, a2);
                a3 = kblock_acc(type, q, x0 + 3 * (size_t)K + b * QK, d1, d2, a3);
                if (type == 12) {
                    m0 = fmaf(mm, s0[b], m0); m1s = fmaf(mm, s0[nb + b], m1s);
                    m2 = fmaf(mm, s0[2 * (size_t)nb + b], m2); m3 = fmaf(mm, s0[3 * (size_t)nb + b], m3);
                }
            }
            y[(size_t)t * ldy + o] = hfold(a0) + m0;
            y[(size_t)(t + 1) * ldy + o] = hfold(a1) + m1s;
            y[(size_t)(t + 2) * ldy + o] = hfold(a2) + m2;
            y[(size_t)(t + 3) * ldy + o] = hfold(a3) + m3;
        }
    }
    for (; t < T; t++) {
        const float *xt = x + (size_t)t * K;
        const float *st = xsum + (size_t)t * nb;
        for (int o = o0; o < o1; o++) {
            const uint8_t *row = w + (size_t)o * rowb;
            __m256 a0 = _mm256_setzero_ps();
            float m0 = 0;
            for (int b = 0; b < nb; b++) {
                if ((b & 7) == 0) _mm_prefetch((const char *)(row + 4 * rowb + (size_t)(b / 8) * kblock_bytes(type)), _MM_HINT_T0);
                __m256 q[4]; float d1, d2, mm;
                kblock_unpack(type, row, b, q, &d1, &d2, &mm);
                a0 = kblock_acc(type, q, xt + b * QK, d1, d2, a0);
                if (type == 12) m0 = fmaf(mm, st[b], m0);
            }
            y[(size_t)t * ldy + o] = hfold(a0) + m0;
        }
    }
}

AVX2 static void kquant_q4_k(const float *x, const float *xs, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { kquant_avx2(12, x, xs, w, K, T, o0, o1, y, ldy); }
AVX2 static void kquant_q6_k(const float *x, const float *xs, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) { kquant_avx2(14, x, xs, w, K, T, o0, o1, y, ldy); }
#endif

void fk_matmul_kquant(int type, const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
#if defined(__x86_64__)
    if (fk_has_avx2()) {
        if (type == 12) kquant_q4_k(x, xsum, w, K, T, o0, o1, y, ldy);
        else kquant_q6_k(x, xsum, w, K, T, o0, o1, y, ldy);
        return;
    }
#endif
    kquant_scalar(type, x, xsum, w, K, T, o0, o1, y, ldy);
}
