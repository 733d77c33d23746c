// The int8 compute mode: 8-bit activations against Q4_0/Q4_1/Q8_0 weights, with exact
// integer block dot products. See include/ckernels.h for the exact semantics.
#include "ckernels.h"
#include "common.h"
#include <math.h>

void fk_quantize_activations(const float *x, int T, int K, int8_t *qx, float *dx, float *sx, int32_t *qsum) {
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
            if (qsum) qsum[(size_t)t * nb + b] = sum;
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

// The reference twin (ckernels.h's contract, written out): every other path matches it bitwise.
static void int8_scalar(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, bb = block_bytes(type);
    for (int o = o0; o < o1; o++) {
        const uint8_t *row = w + (size_t)o * nb * bb;
        for (int t = 0; t < T; t++) {
            float acc = 0, macc = 0;
            for (int b = 0; b < nb; b++) {
                int wi[32]; float d, m;
                int_block(type, row + (size_t)b * bb, wi, &d, &m);
                const int8_t *q = qx + (size_t)t * K + b * QK;
                int p = 0;
                for (int i = 0; i < 32; i++) p += wi[i] * q[i];
                acc = fmaf(d * dx[(size_t)t * nb + b], (float)p, acc);
                if (type == 3) macc = fmaf(m, sx[(size_t)t * nb + b], macc);
            }
            y[(size_t)t * ldy + o] = acc + macc;
        }
    }
}

unsigned long fk_int8_tiles_size(int type, int rows, int K) {
    if (type != 2 && type != 3 && type != 8) return 0;
    return (unsigned long)((rows + 7) / 8) * 8 * (unsigned long)(K / QK) * (unsigned long)block_bytes(type);
}

void fk_int8_tiles(int type, const uint8_t *w, int rows, int K, uint8_t *out) {
    int nb = K / QK, bb = block_bytes(type), tb = 8 * bb, hdr = tile_header(type), groups = type == 8 ? 8 : 4;
    size_t rowb = (size_t)nb * bb;
    int tiles = (rows + 7) / 8;
    memset(out, 0, (size_t)tiles * nb * tb);
    for (int i = 0; i < tiles; i++)
        for (int b = 0; b < nb; b++) {
            uint8_t *o = out + ((size_t)i * nb + b) * tb;
            for (int r = 0; r < 8 && 8 * i + r < rows; r++) {
                const uint8_t *k = w + (size_t)(8 * i + r) * rowb + (size_t)b * bb;
                memcpy(o + 2 * r, k, 2);
                if (type == 3) memcpy(o + 16 + 2 * r, k + 2, 2);
                const uint8_t *qs = k + (type == 3 ? 4 : 2);
                for (int g = 0; g < groups; g++) memcpy(o + hdr + 32 * g + 4 * r, qs + 4 * g, 4);
            }
        }
}

// The tiled reference: the same arithmetic per output, reading the tile layout.
static void int8_tiles_scalar(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *tiles, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, tb = 8 * block_bytes(type), hdr = tile_header(type);
    for (int o = o0; o < o1; o++) {
        int r = o % 8;
        const uint8_t *tile = tiles + (size_t)(o / 8) * nb * tb;
        for (int t = 0; t < T; t++) {
            float acc = 0, macc = 0;
            for (int b = 0; b < nb; b++) {
                const uint8_t *k = tile + (size_t)b * tb;
                const int8_t *q = qx + (size_t)t * K + b * QK;
                int p = 0;
                if (type == 8) {
                    for (int g = 0; g < 8; g++) for (int j = 0; j < 4; j++) p += (int8_t)k[hdr + 32 * g + 4 * r + j] * q[4 * g + j];
                } else {
                    int bias = type == 2 ? 8 : 0;
                    for (int g = 0; g < 4; g++)
                        for (int j = 0; j < 4; j++) {
                            uint8_t v = k[hdr + 32 * g + 4 * r + j];
                            p += ((v & 0x0F) - bias) * q[4 * g + j] + ((v >> 4) - bias) * q[16 + 4 * g + j];
                        }
                }
                acc = fmaf(rd_f16(k + 2 * r) * dx[(size_t)t * nb + b], (float)p, acc);
                if (type == 3) macc = fmaf(rd_f16(k + 16 + 2 * r), sx[(size_t)t * nb + b], macc);
            }
            y[(size_t)t * ldy + o] = acc + macc;
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

// The sum of 8 int32 lanes (exact in any order).
__attribute__((always_inline)) AVX2 static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

// Lane j = the exact sum of the products of bytes 4j..4j+3 (no int16 saturation is
// possible for |w| <= 128, |q| <= 127).
__attribute__((always_inline)) AVX2 static inline __m256i int_dot(int type, __m256i wv, const int8_t *q) {
    __m256i qv = _mm256_loadu_si256((const __m256i *)q);
    __m256i p16 = type == 3 ? _mm256_maddubs_epi16(wv, qv) : _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(qv, wv));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

// The same exact lanes through VNNI's `vpdpbusd` (unsigned x signed bytes, four products
// per 32-bit lane, no saturation).
#define AVX512VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
__attribute__((always_inline)) AVX512VNNI static inline __m256i int_dot_vnni(int type, __m256i wv, const int8_t *q) {
    __m256i qv = _mm256_loadu_si256((const __m256i *)q);
    __m256i z = _mm256_setzero_si256();
    return type == 3 ? _mm256_dpbusd_epi32(z, wv, qv) : _mm256_dpbusd_epi32(z, _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(qv, wv));
}

// Tiled products' group dots: acc += the exact 4-byte dots of 8 rows' unsigned bytes `w`
// with the broadcast activations `q`; and Q8_0's signed bytes `v`.
#define AVX2_DPB(acc, w, q) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, q), _mm256_set1_epi16(1)))
#define AVX2_Q8(acc, v, q) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(v), _mm256_sign_epi8(q, v)), _mm256_set1_epi16(1)))
// VNNI multiplies Q8_0's bytes as unsigned (v + 128) and starts from -128 * sum(q).
#define VNNI_DPB(acc, w, q) _mm256_dpbusd_epi32(acc, w, q)
#define VNNI_Q8(acc, v, q) _mm256_dpbusd_epi32(acc, _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)), q)

#define TIER_ATTR AVX2
#define TIER_DOT int_dot
#define TIER_DPB AVX2_DPB
#define TIER_Q8 AVX2_Q8
#define TIER_Q8_BIAS 0
#define TIER_NT 2
#define TIER_NAME(f) f##_avx2tier
#include "int8_tier.h"
#undef TIER_ATTR
#undef TIER_DOT
#undef TIER_DPB
#undef TIER_Q8
#undef TIER_Q8_BIAS
#undef TIER_NT
#undef TIER_NAME

#define TIER_ATTR AVX512VNNI
#define TIER_DOT int_dot_vnni
#define TIER_DPB VNNI_DPB
#define TIER_Q8 VNNI_Q8
#define TIER_Q8_BIAS 128
#define TIER_NT 4
#define TIER_NAME(f) f##_vnnitier
#include "int8_tier.h"
#undef TIER_ATTR
#undef TIER_DOT
#undef TIER_DPB
#undef TIER_Q8
#undef TIER_Q8_BIAS
#undef TIER_NT
#undef TIER_NAME
#endif

void fk_matmul_int8(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
#if defined(__x86_64__)
    if (fk_has_vnni()) { int8_rows_vnnitier(type, qx, dx, sx, w, K, T, o0, o1, y, ldy); return; }
    if (fk_has_avx2()) { int8_rows_avx2tier(type, qx, dx, sx, w, K, T, o0, o1, y, ldy); return; }
#endif
    int8_scalar(type, qx, dx, sx, w, K, T, o0, o1, y, ldy);
}

void fk_matmul_int8_tiles(int type, const int8_t *qx, const float *dx, const float *sx, const int32_t *qsum, const uint8_t *tiles, int K, int T,
                          int o0, int o1, float *y, int ldy) {
#if defined(__x86_64__)
    if (fk_has_vnni()) { int8_tiles_vnnitier(type, qx, dx, sx, qsum, tiles, K, T, o0, o1, y, ldy); return; }
    if (fk_has_avx2()) { int8_tiles_avx2tier(type, qx, dx, sx, qsum, tiles, K, T, o0, o1, y, ldy); return; }
#endif
    (void)qsum;
    int8_tiles_scalar(type, qx, dx, sx, tiles, K, T, o0, o1, y, ldy);
}
