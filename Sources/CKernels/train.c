// Products of training's backward pass (see include/ckernels.h).
#include "ckernels.h"
#include <math.h>
#include "common.h"

extern _Thread_local int fk_scalar_only;

// dx[t, j] += sum over o < nrows of g[t * gstride + o] * w[o * width + j], each term fused in
// order o = 0, 1, ...: one fmaf per term, the accumulator kept in a register across the
// rows, so every path gives the same bits.
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
