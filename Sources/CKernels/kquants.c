// Q4_K and Q6_K weights (ggml's 256-value super-blocks) with fp32 activations.
// See include/ckernels.h for the exact semantics.
#include "ckernels.h"
#include "common.h"
#include <math.h>

#include "kblocks.h"

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
