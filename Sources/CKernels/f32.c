// fp32 kernels (dot products, dense products, LoRA factors, paged attention) in three
// instruction-set tiers chosen at run time: portable scalar C, AVX2+FMA+F16C, AVX-512
// F/BW/VL. The tiers share one body (f32_tier.h) over 16 fp32 lanes and keep the same
// operations per output, so every tier gives bitwise the same results (see ckernels.h).
#include "ckernels.h"
#include <limits.h>
#include <math.h>
#include "common.h"

// Element i of a row stored in format fmt, as fp32 (exact). The paired bf16 layout keeps
// its elements after the last full run of 16 plainly, which is the only place this reads it.
static inline float ld1(const void *b, long i, int fmt) {
    switch (fmt) {
    case FK_ROW_F32: { float v; memcpy(&v, (const char *)b + 4 * i, 4); return v; }
    case FK_ROW_F16: return rd_f16((const uint8_t *)b + 2 * i);
    default: { uint16_t h; memcpy(&h, (const char *)b + 2 * i, 2); return bf16_to_f32(h); }
    }
}

// The positions of the cache block holding j, from j up to hi: how many.
static inline long block_run(long j, long hi, long bs) {
    long within = j % bs;
    return bs - within < hi - j + 1 ? bs - within : hi - j + 1;
}

// The part a...b of positions j ..< j + run that query t of the tile sees; 0 when none.
static inline int clip_to_run(const fk_attention_tile *tile, long t, long j, long run, long *a, long *b) {
    *a = j > tile->firsts[t] ? j : tile->firsts[t];
    *b = j + run - 1 < tile->lasts[t] ? j + run - 1 : tile->lasts[t];
    return *a <= *b;
}

// ---- Portable tier: 16 lanes in an array, fmaf per lane.
typedef struct { float v[16]; } v16s;
static inline v16s s_zero(void) { v16s r; for (int i = 0; i < 16; i++) r.v[i] = 0; return r; }
static inline v16s s_load(const float *p) { v16s r; memcpy(r.v, p, sizeof r.v); return r; }
static inline v16s s_loadf(const void *b, long k, int fmt) {
    v16s r;
    if (fmt == FK_ROW_BF16_PAIRED) {
        for (int i = 0; i < 8; i++) {
            uint32_t w, lo, hi;
            memcpy(&w, (const char *)b + 2 * k + 4 * i, 4);
            lo = w << 16;
            hi = w & 0xFFFF0000u;
            memcpy(&r.v[i], &lo, 4);
            memcpy(&r.v[i + 8], &hi, 4);
        }
    } else {
        for (int i = 0; i < 16; i++) r.v[i] = ld1(b, k + i, fmt);
    }
    return r;
}
static inline v16s s_set1(float x) { v16s r; for (int i = 0; i < 16; i++) r.v[i] = x; return r; }
static inline v16s s_fma(v16s a, v16s b, v16s c) { for (int i = 0; i < 16; i++) c.v[i] = fmaf(a.v[i], b.v[i], c.v[i]); return c; }
static inline v16s s_mul(v16s a, v16s b) { for (int i = 0; i < 16; i++) a.v[i] = a.v[i] * b.v[i]; return a; }
static inline v16s s_add(v16s a, v16s b) { for (int i = 0; i < 16; i++) a.v[i] = a.v[i] + b.v[i]; return a; }
static inline void s_store(float *p, v16s a) { memcpy(p, a.v, sizeof a.v); }
// The fixed tree: lanes i + (i + 8), then i + (i + 4), then i + (i + 2), then 0 + 1.
static inline float fold16(const float *v) {
    float a[8], b[4], c[2];
    for (int i = 0; i < 8; i++) a[i] = v[i] + v[i + 8];
    for (int i = 0; i < 4; i++) b[i] = a[i] + a[i + 4];
    for (int i = 0; i < 2; i++) c[i] = b[i] + b[i + 2];
    return c[0] + c[1];
}
static inline float s_fold(v16s a) { return fold16(a.v); }

#define TIER_ATTR
#define TIER_NAME(f) f##_scalar
#define V16 v16s
#define V_ZERO s_zero
#define V_LOAD s_load
#define V_LOADF s_loadf
#define V_SET1 s_set1
#define V_FMA s_fma
#define V_MUL s_mul
#define V_ADD s_add
#define V_STORE s_store
#define V_FOLD s_fold
#define MM_TOKENS 2
#define MM_OUTPUTS 2
#define SCORES16 0
#define VALUE_ROWS 1
#include "f32_tier.h"

#if defined(__x86_64__)
// ---- AVX2 tier: 16 lanes as two ymm registers (lanes 0-7, 8-15).
typedef struct { __m256 lo, hi; } v16a;
AVX2 static inline v16a a_zero(void) { return (v16a){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
AVX2 static inline v16a a_load(const float *p) { return (v16a){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
AVX2 static inline __m256 a_bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
AVX2 static inline v16a a_loadf(const void *b, long k, int fmt) {
    switch (fmt) {
    case FK_ROW_F32: return a_load((const float *)b + k);
    case FK_ROW_F16: {
        const uint16_t *p = (const uint16_t *)b + k;
        return (v16a){_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)))};
    }
    case FK_ROW_BF16: {
        const uint16_t *p = (const uint16_t *)b + k;
        return (v16a){a_bf16x8(p), a_bf16x8(p + 8)};
    }
    default: {
        __m256i w = _mm256_loadu_si256((const __m256i *)((const uint16_t *)b + k));
        return (v16a){_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)), _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32((int)0xFFFF0000u)))};
    }
    }
}
AVX2 static inline v16a a_set1(float x) { __m256 v = _mm256_set1_ps(x); return (v16a){v, v}; }
AVX2 static inline v16a a_fma(v16a a, v16a b, v16a c) { return (v16a){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
AVX2 static inline v16a a_mul(v16a a, v16a b) { return (v16a){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
AVX2 static inline v16a a_add(v16a a, v16a b) { return (v16a){_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
AVX2 static inline void a_store(float *p, v16a a) { _mm256_storeu_ps(p, a.lo); _mm256_storeu_ps(p + 8, a.hi); }
// The tree of fold16 on 8 lanes holding v[i] + v[i + 8].
AVX2 static inline float fold8_tree(__m256 a) {
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
}
AVX2 static inline float a_fold(v16a a) { return fold8_tree(_mm256_add_ps(a.lo, a.hi)); }

#define TIER_ATTR AVX2
#define TIER_NAME(f) f##_avx2
#define V16 v16a
#define V_ZERO a_zero
#define V_LOAD a_load
#define V_LOADF a_loadf
#define V_SET1 a_set1
#define V_FMA a_fma
#define V_MUL a_mul
#define V_ADD a_add
#define V_STORE a_store
#define V_FOLD a_fold
#define MM_TOKENS 2
#define MM_OUTPUTS 2
#define SCORES16 0
#define VALUE_ROWS 1
#include "f32_tier.h"

// ---- AVX-512 tier: 16 lanes in one zmm register.
#define AVX512F __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))
AVX512F static inline __m512 z_zero(void) { return _mm512_setzero_ps(); }
AVX512F static inline __m512 z_load(const float *p) { return _mm512_loadu_ps(p); }
AVX512F static inline __m512 z_loadf(const void *b, long k, int fmt) {
    switch (fmt) {
    case FK_ROW_F32: return _mm512_loadu_ps((const float *)b + k);
    case FK_ROW_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)b + k)));
    case FK_ROW_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)b + k))), 16));
    default: {
        __m256i w = _mm256_loadu_si256((const __m256i *)((const uint16_t *)b + k));
        __m256i lo = _mm256_slli_epi32(w, 16), hi = _mm256_and_si256(w, _mm256_set1_epi32((int)0xFFFF0000u));
        return _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
    }
    }
}
AVX512F static inline __m512 z_set1(float x) { return _mm512_set1_ps(x); }
AVX512F static inline __m512 z_fma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
AVX512F static inline __m512 z_mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
AVX512F static inline __m512 z_add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
AVX512F static inline void z_store(float *p, __m512 a) { _mm512_storeu_ps(p, a); }
AVX512F static inline float z_fold(__m512 a) {
    __m256 lo = _mm512_castps512_ps256(a), hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    return fold8_tree(_mm256_add_ps(lo, hi));
}

#define TIER_ATTR AVX512F
#define TIER_NAME(f) f##_avx512
#define V16 __m512
#define V_ZERO z_zero
#define V_LOAD z_load
#define V_LOADF z_loadf
#define V_SET1 z_set1
#define V_FMA z_fma
#define V_MUL z_mul
#define V_ADD z_add
#define V_STORE z_store
#define V_FOLD z_fold
// fold16 of sixteen vectors at once, out[p] = fold of v[p]: each step adds the lanes the
// tree pairs (distance 8, 4, 2, 1) for several vectors in one instruction.
AVX512F static inline __m512 z_fold16(const __m512 v[16]) {
    __m512 t[8], s[4], r[2];
    for (int m = 0; m < 8; m++)    // lanes 0-7: v[2m]'s i + (i + 8); lanes 8-15: v[2m + 1]'s
        t[m] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0x44), _mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0xEE));
    for (int m = 0; m < 4; m++)    // 128-bit lane k: vector 4m + k's i + (i + 4)
        s[m] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * m], t[2 * m + 1], 0x88), _mm512_shuffle_f32x4(t[2 * m], t[2 * m + 1], 0xDD));
    for (int m = 0; m < 2; m++)    // lane k: vectors 8m + k and 8m + 4 + k, i + (i + 2)
        r[m] = _mm512_add_ps(_mm512_shuffle_ps(s[2 * m], s[2 * m + 1], 0x44), _mm512_shuffle_ps(s[2 * m], s[2 * m + 1], 0xEE));
    // lane 4k + j: vector 4j + k's 0 + 1
    __m512 f = _mm512_add_ps(_mm512_shuffle_ps(r[0], r[1], 0x88), _mm512_shuffle_ps(r[0], r[1], 0xDD));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(order, f);
}
// The largest lane, NaN lanes left out (-inf when all are NaN).
AVX512F static inline float z_hmax(__m512 v) {
    __mmask16 ordered = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
    return _mm512_reduce_max_ps(_mm512_mask_blend_ps(ordered, _mm512_set1_ps(-INFINITY), v));
}

#define MM_TOKENS 4
#define MM_OUTPUTS 4
#define SCORES16 1
#define V_FOLD16 z_fold16
#define V_HMAX z_hmax
#define VALUE_ROWS 3
#include "f32_tier.h"
#endif

float fk_dot(const float *a, const void *b, int format, long n) {
#if defined(__x86_64__)
    if (fk_has_avx512()) return dot_any_avx512(a, b, format, n);
    if (fk_has_avx2()) return dot_any_avx2(a, b, format, n);
#endif
    return dot_any_scalar(a, b, format, n);
}

void fk_matmul_f32(const float *x, const float *w, const float *bias, float *y, long T, long K, long O, long o0, long o1) {
#if defined(__x86_64__)
    if (fk_has_avx512()) { matmul_avx512(x, w, bias, y, T, K, O, o0, o1); return; }
    if (fk_has_avx2()) { matmul_avx2(x, w, bias, y, T, K, O, o0, o1); return; }
#endif
    matmul_scalar(x, w, bias, y, T, K, O, o0, o1);
}

void fk_lowrank_shrink(const float *x, const void *a, int format, float *u, long n, long K, long r) {
#if defined(__x86_64__)
    if (fk_has_avx512()) { lowrank_avx512(0, x, a, format, u, n, K, r, 0, 0); return; }
    if (fk_has_avx2()) { lowrank_avx2(0, x, a, format, u, n, K, r, 0, 0); return; }
#endif
    lowrank_scalar(0, x, a, format, u, n, K, r, 0, 0);
}

void fk_lowrank_expand(const float *u, const void *bT, int format, long r, long O, float scale, float *y, const int32_t *rows, long n, int add) {
    const int mode = add ? 1 : 2;
#if defined(__x86_64__)
    if (fk_has_avx512()) { lowrank_avx512(mode, u, bT, format, y, n, O, r, scale, rows); return; }
    if (fk_has_avx2()) { lowrank_avx2(mode, u, bT, format, y, n, O, r, scale, rows); return; }
#endif
    lowrank_scalar(mode, u, bT, format, y, n, O, r, scale, rows);
}

void fk_attend(const fk_attention_tile *tile, int heads, const fk_paged_layer *layer, const int32_t *block_table, float scale,
               float *scores, float *stats, int g0, int g1) {
#if defined(__x86_64__)
    if (fk_has_avx512()) { attend_any_avx512(tile, heads, layer, block_table, scale, scores, stats, g0, g1); return; }
    if (fk_has_avx2()) { attend_any_avx2(tile, heads, layer, block_table, scale, scores, stats, g0, g1); return; }
#endif
    attend_any_scalar(tile, heads, layer, block_table, scale, scores, stats, g0, g1);
}

void fk_train_attend(const float *q, const float *k, const float *v, long qs, long kvs, long n, long hd, long window, float scale,
                     float *out, float *probs) {
#if defined(__x86_64__)
    if (fk_has_avx512()) { train_attend_avx512(q, k, v, qs, kvs, n, hd, window, scale, out, probs); return; }
    if (fk_has_avx2()) { train_attend_avx2(q, k, v, qs, kvs, n, hd, window, scale, out, probs); return; }
#endif
    train_attend_scalar(q, k, v, qs, kvs, n, hd, window, scale, out, probs);
}

