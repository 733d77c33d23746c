// Training's bf16 products (the opt-in `facet tune --compute bf16`): the frozen base's
// products x Wᵀ and dY W with both operands rounded to bf16 and the pairs summed into fp32
// accumulators as AVX512_BF16's vdpbf16ps does. See include/ckernels.h for the semantics.
#include "ckernels.h"
#include "common.h"
#include <math.h>

#if defined(__x86_64__)
// 16 values at a time: the rounded bits' high halves, packed (packus works within 128-bit
// lanes, so the quarters are put back in order).
AVX2 static long round_row_avx2(const float *x, long cols, uint16_t *out) {
    long k = 0;
    for (; k + 16 <= cols; k += 16) {
        __m256i r0 = _mm256_srli_epi32(round8_avx2(_mm256_loadu_si256((const __m256i *)(x + k))), 16);
        __m256i r1 = _mm256_srli_epi32(round8_avx2(_mm256_loadu_si256((const __m256i *)(x + k + 8))), 16);
        _mm256_storeu_si256((__m256i *)(out + k), _mm256_permute4x64_epi64(_mm256_packus_epi32(r0, r1), 0xD8));
    }
    return k;
}
#endif

void fk_round_bf16_rows(const float *x, long rows, long cols, long ldx, uint16_t *out, long ldo) {
    for (long t = 0; t < rows; t++) {
        const float *xt = x + t * ldx;
        uint16_t *ot = out + t * ldo;
        long k = 0;
#if defined(__x86_64__)
        if (fk_has_avx2()) k = round_row_avx2(xt, cols, ot);
#endif
        for (; k < cols; k++) ot[k] = (uint16_t)(round_bits(f2u(xt[k])) >> 16);
        for (k = cols; k < ldo; k++) ot[k] = 0;
    }
}

static inline uint32_t weight_pair(uint32_t even, uint32_t odd) {
    return weight_bf16((uint16_t)(round_bits(even) >> 16)) | (uint32_t)weight_bf16((uint16_t)(round_bits(odd) >> 16)) << 16;
}

#if defined(__x86_64__)
// round_bits then weight_bf16 on 8 lanes: the rounded bits, zero where the exponent is below 95.
AVX2 static inline __m256i weight8_avx2(__m256i u) {
    __m256i r = round8_avx2(u);
    __m256i small = _mm256_cmpgt_epi32(_mm256_set1_epi32(95 << 23), _mm256_and_si256(r, _mm256_set1_epi32(0x7F800000)));
    return _mm256_andnot_si256(small, r);
}

// Rows r and r + 1 contiguous (cs = 1): 8 columns' pairs at a time.
AVX2 static int pack_rows_avx2(const float *a, const float *b, int width, uint32_t *out) {
    int j = 0;
    for (; j + 8 <= width; j += 8) {
        __m256i e = weight8_avx2(_mm256_loadu_si256((const __m256i *)(a + j)));
        __m256i o = b ? weight8_avx2(_mm256_loadu_si256((const __m256i *)(b + j))) : _mm256_setzero_si256();
        _mm256_storeu_si256((__m256i *)(out + j), _mm256_or_si256(_mm256_srli_epi32(e, 16), _mm256_and_si256(o, _mm256_set1_epi32((int)0xFFFF0000u))));
    }
    return j;
}

// Pairs of adjacent values (rs = 1): 8 pairs of one column at a time, stored `width` apart.
AVX2 static int pack_column_avx2(const float *src, int n, int width, uint32_t *out) {
    int r = 0;
    for (; r + 16 <= n; r += 16) {
        __m256i e = weight8_avx2(_mm256_loadu_si256((const __m256i *)(src + r)));
        __m256i o = weight8_avx2(_mm256_loadu_si256((const __m256i *)(src + r + 8)));
        __m256i v = _mm256_permute4x64_epi64(_mm256_packus_epi32(_mm256_srli_epi32(e, 16), _mm256_srli_epi32(o, 16)), 0xD8);
        uint32_t d[8];
        _mm256_storeu_si256((__m256i *)d, v);
        for (int i = 0; i < 8; i++) out[(size_t)(r / 2 + i) * width] = d[i];
    }
    return r;
}
#endif

void fk_pack_bf16_pairs(const float *src, long rs, long cs, int n, int width, uint16_t *out16) {
    uint32_t *out = (uint32_t *)out16;
    if (cs == 1) {
        for (int r = 0; r < n; r += 2) {
            const float *a = src + r * rs, *b = r + 1 < n ? src + (r + 1) * rs : 0;
            uint32_t *o = out + (size_t)(r / 2) * width;
            int j = 0;
#if defined(__x86_64__)
            if (fk_has_avx2()) j = pack_rows_avx2(a, b, width, o);
#endif
            for (; j < width; j++) o[j] = weight_pair(f2u(a[j]), b ? f2u(b[j]) : 0);
        }
        return;
    }
    for (int j = 0; j < width; j++) {
        const float *c = src + j * cs;
        int r = 0;
#if defined(__x86_64__)
        if (rs == 1 && fk_has_avx2()) r = pack_column_avx2(c, n, width, out + j);
#endif
        for (; r < n; r += 2) out[(size_t)(r / 2) * width + j] = weight_pair(f2u(c[r * rs]), r + 1 < n ? f2u(c[(r + 1) * rs]) : 0);
    }
}

// The scalar tier: each lane's chain exactly as vdpbf16ps forms it (the products of two
// bf16 values are exact in fp32, so each fused step rounds once, the odd element first).
static void product_scalar(float *dx, long ldx, const uint16_t *g, long gs, int rows, const uint16_t *wp, int npairs, int width, int j0) {
    for (int t = 0; t < rows; t++) {
        const uint16_t *gt = g + t * gs;
        for (int j = j0; j < width; j++) {
            float acc = dx[t * ldx + j];
            for (int p = 0; p < npairs; p++) {
                const uint16_t *w = wp + ((size_t)p * width + j) * 2;
                acc = fmaf(bf16_to_f32(gt[2 * p + 1]), bf16_to_f32(w[1]), acc);
                acc = fmaf(bf16_to_f32(gt[2 * p]), bf16_to_f32(w[0]), acc);
            }
            dx[t * ldx + j] = acc;
        }
    }
}

#if defined(__x86_64__)
enum { PC = 128 };   // pairs per slice: a slice of a 32-column panel is 16 KB, in L1

#define AVX512BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512bf16")))

// MR rows x 32 columns (two zmm of 16 pair-lanes per row) over pairs p0..p1.
__attribute__((always_inline)) AVX512BF16 static inline void tile_bf16(const int MR, float *dx, long ldx, const uint16_t *g, long gs,
                                                                      const uint16_t *wp, int width, int p0, int p1, __mmask16 m0, __mmask16 m1) {
    __m512 c0[12], c1[12];
    for (int i = 0; i < MR; i++) { c0[i] = _mm512_maskz_loadu_ps(m0, dx + i * ldx); c1[i] = _mm512_maskz_loadu_ps(m1, dx + i * ldx + 16); }
    for (int p = p0; p < p1; p++) {
        const uint16_t *w = wp + (size_t)p * width * 2;
        __m512i b0 = _mm512_maskz_loadu_epi32(m0, w), b1 = _mm512_maskz_loadu_epi32(m1, w + 32);
        for (int i = 0; i < MR; i++) {
            uint32_t pair;
            memcpy(&pair, g + i * gs + 2 * p, 4);
            __m512i a = _mm512_set1_epi32((int)pair);
            c0[i] = _mm512_dpbf16_ps(c0[i], (__m512bh)a, (__m512bh)b0);
            c1[i] = _mm512_dpbf16_ps(c1[i], (__m512bh)a, (__m512bh)b1);
        }
    }
    for (int i = 0; i < MR; i++) { _mm512_mask_storeu_ps(dx + i * ldx, m0, c0[i]); _mm512_mask_storeu_ps(dx + i * ldx + 16, m1, c1[i]); }
}

AVX512BF16 static void product_bf16(float *dx, long ldx, const uint16_t *g, long gs, int rows, const uint16_t *wp, int npairs, int width) {
    for (int p0 = 0; p0 < npairs; p0 += PC) {
        int p1 = npairs - p0 < PC ? npairs : p0 + PC;
        for (int j = 0; j < width; j += 32) {
            int n = width - j < 32 ? width - j : 32;
            __mmask16 m0 = lanes16(n), m1 = lanes16(n - 16);
            const uint16_t *w = wp + (size_t)j * 2;
            int t = 0;
            for (; t + 12 <= rows; t += 12) tile_bf16(12, dx + t * ldx + j, ldx, g + t * gs, gs, w, width, p0, p1, m0, m1);
            for (; t + 4 <= rows; t += 4) tile_bf16(4, dx + t * ldx + j, ldx, g + t * gs, gs, w, width, p0, p1, m0, m1);
            for (; t < rows; t++) tile_bf16(1, dx + t * ldx + j, ldx, g + t * gs, gs, w, width, p0, p1, m0, m1);
        }
    }
}

// The emulation on AVX2: the pairs widened to fp32 (even elements shifted up, odd ones
// masked), two fused multiply-adds per pair in the unit's order. MR rows x 16 columns.
__attribute__((always_inline)) AVX2 static inline void tile_emulated(const int MR, float *dx, long ldx, const uint16_t *g, long gs,
                                                                    const uint16_t *wp, int width, int p0, int p1) {
    __m256 c0[4], c1[4];
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u);
    for (int i = 0; i < MR; i++) { c0[i] = _mm256_loadu_ps(dx + i * ldx); c1[i] = _mm256_loadu_ps(dx + i * ldx + 8); }
    for (int p = p0; p < p1; p++) {
        const uint16_t *w = wp + (size_t)p * width * 2;
        __m256i b0 = _mm256_loadu_si256((const __m256i *)w), b1 = _mm256_loadu_si256((const __m256i *)(w + 16));
        __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(b0, 16)), o0 = _mm256_castsi256_ps(_mm256_and_si256(b0, high));
        __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(b1, 16)), o1 = _mm256_castsi256_ps(_mm256_and_si256(b1, high));
        for (int i = 0; i < MR; i++) {
            uint32_t pair;
            memcpy(&pair, g + i * gs + 2 * p, 4);
            __m256 ae = _mm256_set1_ps(u2f(pair << 16)), ao = _mm256_set1_ps(u2f(pair & 0xFFFF0000u));
            c0[i] = _mm256_fmadd_ps(ae, e0, _mm256_fmadd_ps(ao, o0, c0[i]));
            c1[i] = _mm256_fmadd_ps(ae, e1, _mm256_fmadd_ps(ao, o1, c1[i]));
        }
    }
    for (int i = 0; i < MR; i++) { _mm256_storeu_ps(dx + i * ldx, c0[i]); _mm256_storeu_ps(dx + i * ldx + 8, c1[i]); }
}

AVX2 static void product_emulated(float *dx, long ldx, const uint16_t *g, long gs, int rows, const uint16_t *wp, int npairs, int width) {
    int full = width / 16 * 16;
    for (int p0 = 0; p0 < npairs; p0 += PC) {
        int p1 = npairs - p0 < PC ? npairs : p0 + PC;
        for (int j = 0; j < full; j += 16) {
            const uint16_t *w = wp + (size_t)j * 2;
            int t = 0;
            for (; t + 4 <= rows; t += 4) tile_emulated(4, dx + t * ldx + j, ldx, g + t * gs, gs, w, width, p0, p1);
            for (; t < rows; t++) tile_emulated(1, dx + t * ldx + j, ldx, g + t * gs, gs, w, width, p0, p1);
        }
    }
    if (full < width) product_scalar(dx, ldx, g, gs, rows, wp, npairs, width, full);
}
#endif

void fk_add_product_bf16(float *dx, long ldx, const uint16_t *g, long gs, int rows, const uint16_t *wp, int npairs, int width) {
#if defined(__x86_64__)
    if (fk_has_bf16()) { product_bf16(dx, ldx, g, gs, rows, wp, npairs, width); return; }
    if (fk_has_avx2()) { product_emulated(dx, ldx, g, gs, rows, wp, npairs, width); return; }
#endif
    product_scalar(dx, ldx, g, gs, rows, wp, npairs, width, 0);
}
