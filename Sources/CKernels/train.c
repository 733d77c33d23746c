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
