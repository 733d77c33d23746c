// Products of training's backward pass (see include/ckernels.h).
#include "ckernels.h"
#include <math.h>
#include "common.h"

extern _Thread_local int fk_scalar_only;

#if defined(__x86_64__)
AVX2 static void add_scaled_rows_avx2(float *dx, long ldx, const float *g, long gstride, int rows, const float *w, int width) {
    for (int t = 0; t < rows; t++) {
        float s = g[t * gstride];
        if (s == 0.0f) continue;
        float *out = dx + t * ldx;
        __m256 vs = _mm256_set1_ps(s);
        int j = 0;
        for (; j + 8 <= width; j += 8) _mm256_storeu_ps(out + j, _mm256_fmadd_ps(vs, _mm256_loadu_ps(w + j), _mm256_loadu_ps(out + j)));
        for (; j < width; j++) out[j] = fmaf(s, w[j], out[j]);
    }
}
#endif

void fk_add_scaled_rows(float *dx, long ldx, const float *g, long gstride, int rows, const float *w, int width) {
#if defined(__x86_64__)
    if (fk_has_avx2() && !fk_scalar_only) { add_scaled_rows_avx2(dx, ldx, g, gstride, rows, w, width); return; }
#endif
    for (int t = 0; t < rows; t++) {
        float s = g[t * gstride];
        if (s == 0.0f) continue;
        float *out = dx + t * ldx;
        for (int j = 0; j < width; j++) out[j] = fmaf(s, w[j], out[j]);
    }
}

// dx[t, j] += sum over o < nrows of g[t * gstride + o] * w[o * width + j], each term fused in
// order o = 0, 1, ...: the same operations as nrows calls of fk_add_scaled_rows, with the
// accumulator kept in a register across the rows.
#if defined(__x86_64__)
AVX2 static void add_scaled_block_avx2(float *dx, long ldx, const float *g, long gstride, int rows, const float *w, int nrows, int width) {
    for (int t = 0; t < rows; t++) {
        float *out = dx + t * ldx;
        const float *gt = g + t * gstride;
        int j = 0;
        for (; j + 8 <= width; j += 8) {
            __m256 acc = _mm256_loadu_ps(out + j);
            for (int o = 0; o < nrows; o++) acc = _mm256_fmadd_ps(_mm256_set1_ps(gt[o]), _mm256_loadu_ps(w + o * width + j), acc);
            _mm256_storeu_ps(out + j, acc);
        }
        for (; j < width; j++) {
            float acc = out[j];
            for (int o = 0; o < nrows; o++) acc = fmaf(gt[o], w[o * width + j], acc);
            out[j] = acc;
        }
    }
}
#endif

void fk_add_scaled_block(float *dx, long ldx, const float *g, long gstride, int rows, const float *w, int nrows, int width) {
#if defined(__x86_64__)
    if (fk_has_avx2() && !fk_scalar_only) { add_scaled_block_avx2(dx, ldx, g, gstride, rows, w, nrows, width); return; }
#endif
    for (int t = 0; t < rows; t++) {
        float *out = dx + t * ldx;
        const float *gt = g + t * gstride;
        for (int j = 0; j < width; j++) {
            float acc = out[j];
            for (int o = 0; o < nrows; o++) acc = fmaf(gt[o], w[o * width + j], acc);
            out[j] = acc;
        }
    }
}
