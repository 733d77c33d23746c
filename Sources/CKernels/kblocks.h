// Q4_K and Q6_K blocks of 32 values (internal; shared by the fp32 and bf16 products).
#ifndef FACET_CKERNELS_KBLOCKS_H
#define FACET_CKERNELS_KBLOCKS_H
#include "common.h"

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

#if defined(__x86_64__)
// Block b's 32 values as unsigned bytes in element order (Q4_K: q in 0..15; Q6_K: q + 32 in
// 0..63) and its scales (see kblock_values).
__attribute__((always_inline)) AVX2 static inline __m256i kblock_ints(int type, const uint8_t *row, int b, float *d1, float *d2, float *m1) {
    const uint8_t *sb = row + (size_t)(b / 8) * kblock_bytes(type);
    int j = b % 8;
    if (type == 12) {
        float d = rd_f16c(sb), dmin = rd_f16c(sb + 2);
        int sc, m;
        scale_min_k4(j, sb + 4, &sc, &m);
        *d1 = d * (float)sc; *d2 = *d1; *m1 = -(dmin * (float)m);
        __m256i qs = _mm256_loadu_si256((const __m256i *)(sb + 16 + (j / 2) * 32));
        if (j & 1) qs = _mm256_srli_epi16(qs, 4);
        return _mm256_and_si256(qs, _mm256_set1_epi8(0x0F));
    }
    int n = j / 4, i = j % 4;
    const int8_t *sc = (const int8_t *)(sb + 192 + 8 * n + 2 * i);
    float d = rd_f16c(sb + 208);
    *d1 = d * (float)sc[0]; *d2 = d * (float)sc[1]; *m1 = 0;
    __m256i ql = _mm256_loadu_si256((const __m256i *)(sb + 64 * n + (i & 1) * 32));
    __m256i qh = _mm256_loadu_si256((const __m256i *)(sb + 128 + 32 * n));
    if (i >= 2) ql = _mm256_srli_epi16(ql, 4);
    ql = _mm256_and_si256(ql, _mm256_set1_epi8(0x0F));
    qh = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * i)), _mm256_set1_epi8(3));
    return _mm256_or_si256(ql, _mm256_slli_epi16(qh, 4));
}

// Block b's 32 values as four float vectors (lane l of vector j = value 8j + l) and scales.
__attribute__((always_inline)) AVX2 static inline void kblock_unpack(int type, const uint8_t *row, int b, __m256 q[4], float *d1, float *d2, float *m1) {
    __m256i bytes = kblock_ints(type, row, b, d1, d2, m1);
    if (type != 12) bytes = _mm256_sub_epi8(bytes, _mm256_set1_epi8(32));
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
#endif

#endif
