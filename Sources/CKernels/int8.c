// The int8 compute mode: 8-bit activations against Q4_0/Q4_1/Q8_0 weights, with exact
// integer block dot products. See include/ckernels.h for the exact semantics.
#include "ckernels.h"
#include "common.h"
#include <math.h>

void fk_quantize_activations(const float *x, int T, int K, int8_t *qx, float *dx, float *sx) {
    int nb = K / QK;
    for (int t = 0; t < T; t++) {
        for (int b = 0; b < nb; b++) {
            const float *p = x + (size_t)t * K + b * QK;
            int8_t *q = qx + (size_t)t * K + b * QK;
            float amax = 0;
            for (int i = 0; i < QK; i++) { float a = fabsf(p[i]); if (a > amax) amax = a; }
            float d = amax / 127.0f;
            float id = d != 0 ? 1.0f / d : 0.0f;
            int sum = 0;
            for (int i = 0; i < QK; i++) {
                float r = nearbyintf(p[i] * id);
                int v = r > 127.0f ? 127 : r < -127.0f ? -127 : (int)r;
                q[i] = (int8_t)v;
                sum += v;
            }
            dx[(size_t)t * nb + b] = d;
            sx[(size_t)t * nb + b] = d * (float)sum;
        }
    }
}

// A block's 32 integer weights (in element order) and its scale and offset.
static inline void int_block(int type, const uint8_t *blk, int w[32], float *d, float *m) {
    *d = rd_f16(blk);
    *m = type == 3 ? rd_f16(blk + 2) : 0.0f;
    if (type == 8) { for (int i = 0; i < 32; i++) w[i] = (int8_t)blk[2 + i]; return; }
    const uint8_t *qs = blk + (type == 3 ? 4 : 2);
    int bias = type == 2 ? 8 : 0;
    for (int i = 0; i < 16; i++) { w[i] = (qs[i] & 0x0F) - bias; w[i + 16] = (qs[i] >> 4) - bias; }
}

static void int8_scalar(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, bb = block_bytes(type);
    for (int o = o0; o < o1; o++) {
        const uint8_t *row = w + (size_t)o * nb * bb;
        for (int t = 0; t < T; t++) {
            float acc[8] = {0}, macc = 0;
            for (int b = 0; b < nb; b++) {
                int wi[32]; float d, m;
                int_block(type, row + (size_t)b * bb, wi, &d, &m);
                const int8_t *q = qx + (size_t)t * K + b * QK;
                float dd = d * dx[(size_t)t * nb + b];
                for (int j = 0; j < 8; j++) {
                    int p = wi[4 * j] * q[4 * j] + wi[4 * j + 1] * q[4 * j + 1] + wi[4 * j + 2] * q[4 * j + 2] + wi[4 * j + 3] * q[4 * j + 3];
                    acc[j] = fmaf(dd, (float)p, acc[j]);
                }
                if (type == 3) macc = fmaf(m, sx[(size_t)t * nb + b], macc);
            }
            y[(size_t)t * ldy + o] = fold8(acc) + macc;
        }
    }
}

#if defined(__x86_64__)
// The block's weights as 32 bytes in element order: unsigned nibbles for Q4_1, signed
// values for Q4_0 (q - 8) and Q8_0.
__attribute__((always_inline)) AVX2 static inline __m256i int_weights(int type, const uint8_t *blk) {
    if (type == 8) return _mm256_loadu_si256((const __m256i *)(blk + 2));
    __m128i qs = _mm_loadu_si128((const __m128i *)(blk + (type == 3 ? 4 : 2)));
    __m128i mask = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(qs, mask), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
    __m256i v = _mm256_set_m128i(hi, lo);
    if (type == 2) v = _mm256_sub_epi8(v, _mm256_set1_epi8(8));
    return v;
}

// Lane j = sum of the products of bytes 4j..4j+3 (exact: no int16 saturation is possible
// for |w| <= 128, |q| <= 127).
__attribute__((always_inline)) AVX2 static inline __m256 int_dot(int type, __m256i wv, const int8_t *q) {
    __m256i qv = _mm256_loadu_si256((const __m256i *)q);
    __m256i p16 = type == 3 ? _mm256_maddubs_epi16(wv, qv) : _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(qv, wv));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}


// Lane j = the same exact sum through VNNI's `vpdpbusd` (unsigned x signed bytes, four
// products per 32-bit lane, no saturation): one instruction for maddubs + madd.
#define AVX512VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
__attribute__((always_inline)) AVX512VNNI static inline __m256 int_dot_vnni(int type, __m256i wv, const int8_t *q) {
    __m256i qv = _mm256_loadu_si256((const __m256i *)q);
    __m256i z = _mm256_setzero_si256();
    __m256i s = type == 3 ? _mm256_dpbusd_epi32(z, wv, qv) : _mm256_dpbusd_epi32(z, _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(qv, wv));
    return _mm256_cvtepi32_ps(s);
}

#define TIER_ATTR AVX2
#define TIER_DOT int_dot
#define TIER_NAME(f) f##_avx2tier
#include "int8_tier.h"
#undef TIER_ATTR
#undef TIER_DOT
#undef TIER_NAME

#define TIER_ATTR AVX512VNNI
#define TIER_DOT int_dot_vnni
#define TIER_NAME(f) f##_vnnitier
#include "int8_tier.h"
#undef TIER_ATTR
#undef TIER_DOT
#undef TIER_NAME

AVX2 static void int8_avx2_entry(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    if (type == 3) int8_avx2_avx2tier(3, qx, dx, sx, w, K, T, o0, o1, y, ldy);
    else if (type == 2) int8_avx2_avx2tier(2, qx, dx, sx, w, K, T, o0, o1, y, ldy);
    else int8_avx2_avx2tier(8, qx, dx, sx, w, K, T, o0, o1, y, ldy);
}
AVX512VNNI static void int8_vnni_entry(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    if (type == 3) int8_avx2_vnnitier(3, qx, dx, sx, w, K, T, o0, o1, y, ldy);
    else if (type == 2) int8_avx2_vnnitier(2, qx, dx, sx, w, K, T, o0, o1, y, ldy);
    else int8_avx2_vnnitier(8, qx, dx, sx, w, K, T, o0, o1, y, ldy);
}
#endif

void fk_matmul_int8(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
#if defined(__x86_64__)
    if (fk_has_vnni()) { int8_vnni_entry(type, qx, dx, sx, w, K, T, o0, o1, y, ldy); return; }
    if (fk_has_avx2()) { int8_avx2_entry(type, qx, dx, sx, w, K, T, o0, o1, y, ldy); return; }
#endif
    int8_scalar(type, qx, dx, sx, w, K, T, o0, o1, y, ldy);
}
