// Helpers shared by Facet's C kernels (internal).
#ifndef FACET_CKERNELS_COMMON_H
#define FACET_CKERNELS_COMMON_H
#include <stdint.h>
#include <string.h>
#include <math.h>

enum { QK = 32 };

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FF;
    uint32_t bits;
    if (e == 0) {
        if (m == 0) { bits = sign; }
        else { float v = (float)m * (1.0f / 16777216.0f); return sign ? -v : v; }
    } else if (e == 31) { bits = sign | 0x7F800000u | (m << 13); }
    else { bits = sign | ((e + 112) << 23) | (m << 13); }
    float f; memcpy(&f, &bits, 4); return f;
}
static inline float bf16_to_f32(uint16_t b) { uint32_t bits = (uint32_t)b << 16; float f; memcpy(&f, &bits, 4); return f; }
static inline float rd_f16(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return f16_to_f32(h); }

// bf16 rounding shared by the bf16 inference mode (bf16.c) and bf16 training products (train_bf16.c).
// The first position a query at t sees with a sliding window (none when window <= 0).
static inline long window_first(long t, long window) { return window > 0 && t - window + 1 > 0 ? t - window + 1 : 0; }
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

// A bf16 weight as the mode reads it: magnitudes below 2^-32 (denormals included) are +0,
// so that with activations of at least 2^-64 every product and pair sum is a normal number
// or zero. (A zero's sign never reaches an output: the accumulators start at +0 and only add.)
static inline uint16_t weight_bf16(uint16_t h) { return (h & 0x7F80) < (95 << 7) ? 0 : h; }

// Fixed lane fold: ((0+4)+(2+6))+((1+5)+(3+7)).
static inline float fold8(const float v[8]) {
    float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
    return (a0 + a2) + (a1 + a3);
}

// One block of the fp32 contract (ckernels.h) on the 8 lanes: lane l takes elements
// l, 8 + l, 16 + l, 24 + l as a product and three fused multiply-adds, then joins acc[l]
// with one fused multiply-add by the block's scale.
static inline void block_lanes(const float q[32], float d, const float *xb, float acc[8]) {
    for (int l = 0; l < 8; l++) {
        float v = q[l] * xb[l];
        v = fmaf(q[8 + l], xb[8 + l], v);
        v = fmaf(q[16 + l], xb[16 + l], v);
        v = fmaf(q[24 + l], xb[24 + l], v);
        acc[l] = fmaf(d, v, acc[l]);
    }
}

static inline int block_bytes(int type) { return type == 3 ? 20 : type == 2 ? 18 : 34; }

// One block's 32 weights as floats (unscaled quant values for Q4_x/Q8_0, real values for f16/bf16).
static inline void block_values(int type, const uint8_t *blk, float q[32], float *d, float *m) {
    switch (type) {
    case 3: { // Q4_1: d, m, 16 bytes
        *d = rd_f16(blk); *m = rd_f16(blk + 2);
        const uint8_t *qs = blk + 4;
        for (int j = 0; j < 16; j++) { q[j] = (float)(qs[j] & 0x0F); q[j + 16] = (float)(qs[j] >> 4); }
        break; }
    case 2: { // Q4_0: d, 16 bytes; x = d*(q-8) = d*q + (-8d)
        *d = rd_f16(blk); *m = -8.0f * *d;
        const uint8_t *qs = blk + 2;
        for (int j = 0; j < 16; j++) { q[j] = (float)(qs[j] & 0x0F); q[j + 16] = (float)(qs[j] >> 4); }
        break; }
    case 8: { // Q8_0: d, 32 int8
        *d = rd_f16(blk); *m = 0;
        for (int j = 0; j < 32; j++) q[j] = (float)(int8_t)blk[2 + j];
        break; }
    }
}

// The 8-row tiles of fk_int8_tiles: where a tile-block's quantized bytes start (after the 8
// scales and, for Q4_1, 8 minimums).
static inline int tile_header(int type) { return type == 3 ? 32 : 16; }

// Row r's block read back from its tile-block `k`, as block_values gives it from the rows.
static inline void tile_block_values(int type, const uint8_t *k, int r, float q[32], float *d, float *m) {
    const int hdr = tile_header(type);
    *d = rd_f16(k + 2 * r);
    *m = type == 3 ? rd_f16(k + 16 + 2 * r) : type == 2 ? -8.0f * *d : 0.0f;
    for (int e = 0; e < 32; e++) {
        if (type == 8) { q[e] = (float)(int8_t)k[hdr + 32 * (e / 4) + 4 * r + e % 4]; continue; }
        int i = e % 16;
        uint8_t v = k[hdr + 32 * (i / 4) + 4 * r + i % 4];
        q[e] = (float)(e < 16 ? v & 0x0F : v >> 4);
    }
}

/// The fp32 contract's scalar reference for Q4_0/Q4_1/Q8_0 (ckernels.c), reading the rows
/// (`tiled` 0) or the tiles of fk_int8_tiles (`tiled` 1).
void fk_quant_scalar(int type, int tiled, const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy);

#if defined(__x86_64__)
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma,f16c")))

// The mask of the first n of 16 lanes (none for n <= 0, all for n >= 16).
static inline uint16_t lanes16(int n) { return n >= 16 ? 0xFFFF : n <= 0 ? 0 : (uint16_t)((1u << n) - 1); }

AVX2 static inline float rd_f16c(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return _cvtsh_ss(h); }

// round_bits on 8 lanes (the rounded fp32 bits; their high halves are the bf16 values).
AVX2 static inline __m256i round8_avx2(__m256i u) {
    const __m256i absMask = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000), tiny = _mm256_set1_epi32(0x1F800000);
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u), quiet = _mm256_set1_epi32(0x00400000), sign = _mm256_set1_epi32((int)0x80000000u);
    __m256i a = _mm256_and_si256(u, absMask);
    __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)));
    r = _mm256_and_si256(r, high);
    __m256i nan = _mm256_and_si256(_mm256_or_si256(u, quiet), high);
    r = _mm256_blendv_epi8(r, nan, _mm256_cmpgt_epi32(a, inf));
    return _mm256_blendv_epi8(r, _mm256_and_si256(u, sign), _mm256_cmpgt_epi32(tiny, a));
}

// The first two half-precision fields of a block (scale d, and Q4_1's minimum m), widened
// exactly: lanes 0 and 1.
AVX2 static inline __m128 block_scales(const uint8_t *blk) {
    int32_t v;
    memcpy(&v, blk, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(v));
}

// The 32 weights of a Q4 block as 4 float vectors: lanes j*8..j*8+7.
// Two zero-extensions (bytes 0-7 and 8-15) serve both nibbles: fewer shuffle-port uops.
AVX2 static inline void q4_unpack(const uint8_t *qs, __m256 q[4]) {
    __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    __m256i mask = _mm256_set1_epi32(0x0F);
    q[0] = _mm256_cvtepi32_ps(_mm256_and_si256(a, mask));
    q[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b, mask));
    q[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4));
    q[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
}

AVX2 static inline void q8_unpack(const uint8_t *qs, __m256 q[4]) {
    for (int j = 0; j < 4; j++) q[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * j))));
}

AVX2 static inline float hfold(__m256 v) {
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    return fold8(lanes);
}
#endif

/// 1 when the AVX2/FMA/F16C paths may run (see fk_set_vector_path).
int fk_has_avx2(void);
/// 1 when the AVX-512 VNNI int8 paths may run (see fk_set_vnni_path).
int fk_has_vnni(void);

#endif
