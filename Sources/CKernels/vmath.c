// Elementwise exp and SiLU (see include/ckernels.h for the exact semantics).
#include "ckernels.h"
#include <math.h>
#include <string.h>
#include "common.h"

// exp(x): Cody-Waite reduction x = n ln2 + r, a degree-6 polynomial in r (Cephes expf
// coefficients), 2^n from exponent bits as 2^(n-1) * 2. One routine per path, the same
// operations in the same order, so both paths give bitwise the same results.
#define EXP_LO (-87.3f)
#define EXP_HI 88.7f
#define LOG2E 1.44269504f
#define LN2_HI 0.693359375f
#define LN2_LO (-2.12194440e-4f)
static const float EXP_P[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

static inline float exp_scalar(float v) {
    float x = v < EXP_LO ? EXP_LO : v > EXP_HI ? EXP_HI : v;
    float n = nearbyintf(x * LOG2E);
    float r = fmaf(n, -LN2_HI, x);
    r = fmaf(n, -LN2_LO, r);
    float p = EXP_P[0];
    for (int i = 1; i < 6; i++) p = fmaf(p, r, EXP_P[i]);
    float y = fmaf(p, r * r, r) + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 126) << 23;
    float s; memcpy(&s, &bits, 4);
    return (y * s) * 2.0f;
}

static inline float silu_scalar(float v) { return v / (1.0f + exp_scalar(-v)); }

// SiLU-gate's gradients, one element: s = 1 / (1 + exp(-g)), du = (da g) s,
// dg = ((da u) s) (1 + g (1 - s)); each operation a separate rounding, in this order.
static inline void silu_back_scalar(float g, float u, float da, float *dg, float *du) {
    float s = 1.0f / (1.0f + exp_scalar(-g));
    *du = (da * g) * s;
    float k = 1.0f + g * (1.0f - s);
    *dg = ((da * u) * s) * k;
}

#if defined(__x86_64__)
AVX2 static inline __m256 exp_avx2(__m256 v) {
    __m256 x = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_P[0]);
    for (int i = 1; i < 6; i++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P[i]));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
    return _mm256_mul_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(bits)), _mm256_set1_ps(2.0f));
}

AVX2 static void silu_mul_avx2(float *g, const float *u, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(g + i);
        __m256 e = exp_avx2(_mm256_xor_ps(v, _mm256_set1_ps(-0.0f)));
        __m256 s = _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) g[i] = silu_scalar(g[i]) * u[i];
}

AVX2 static void silu_back_avx2(const float *g, const float *u, const float *da, float *dg, float *du, long n) {
    long i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i), dav = _mm256_loadu_ps(da + i);
        __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_xor_ps(gv, _mm256_set1_ps(-0.0f)))));
        _mm256_storeu_ps(du + i, _mm256_mul_ps(_mm256_mul_ps(dav, gv), s));
        __m256 k = _mm256_add_ps(one, _mm256_mul_ps(gv, _mm256_sub_ps(one, s)));
        _mm256_storeu_ps(dg + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dav, _mm256_loadu_ps(u + i)), s), k));
    }
    for (; i < n; i++) silu_back_scalar(g[i], u[i], da[i], dg + i, du + i);
}

AVX2 static void exp_shift_avx2(float *p, long n, float shift) {
    long i = 0;
    __m256 s = _mm256_set1_ps(shift);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(p + i, exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(p + i), s)));
    for (; i < n; i++) p[i] = exp_scalar(p[i] - shift);
}
#endif

float fk_exp(float x) { return exp_scalar(x); }

void fk_silu_mul(float *gate, const float *up, long n) {
#if defined(__x86_64__)
    if (fk_has_avx2()) { silu_mul_avx2(gate, up, n); return; }
#endif
    for (long i = 0; i < n; i++) gate[i] = silu_scalar(gate[i]) * up[i];
}

void fk_silu_mul_backward(const float *gate, const float *up, const float *da, float *dgate, float *dup, long n) {
#if defined(__x86_64__)
    if (fk_has_avx2()) { silu_back_avx2(gate, up, da, dgate, dup, n); return; }
#endif
    for (long i = 0; i < n; i++) silu_back_scalar(gate[i], up[i], da[i], dgate + i, dup + i);
}

void fk_exp_shift(float *p, long n, float shift) {
#if defined(__x86_64__)
    if (fk_has_avx2()) { exp_shift_avx2(p, n, shift); return; }
#endif
    for (long i = 0; i < n; i++) p[i] = exp_scalar(p[i] - shift);
}
