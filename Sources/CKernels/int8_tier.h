// The int8 product kernels of one instruction-set tier (included once per tier by int8.c
// with TIER_ATTR, the target attribute; TIER_DOT, the block dot product; TIER_NAME, the
// name suffix). Every tier's dot gives the same exact integer per lane, and the float
// arithmetic around it is the same code, so every tier's outputs are bitwise equal.
// R rows (2 or 4), one token (decode): the rows share the token's loaded activations; each
// block's scale and Q4_1 minimum are widened together (block_scales). Every output gets the
// arithmetic of row_t1: d * dx as one float product, fused multiply-adds in increasing b,
// the minimum's sum (lanes 0 and 2 of macc, one fmaf per lane) added after the fold.
__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(rows_t1)(const int R, int type, const uint8_t *r0, size_t rowb, int nb, int bb,
                                                                  size_t ahead, const int8_t *qx, const float *dx, const float *sx, float *y) {
    __m256 a[4];
    __m128 macc[2] = {_mm_setzero_ps(), _mm_setzero_ps()};
    for (int i = 0; i < R; i++) a[i] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *k0 = r0 + (size_t)b * bb;
        for (int i = 0; i < R; i++) _mm_prefetch((const char *)(k0 + (size_t)i * rowb + ahead), _MM_HINT_T0);
        const int8_t *q = qx + b * QK;
        __m128 dxb = _mm_broadcast_ss(dx + b);
        __m128 f[4];
        for (int i = 0; i < R; i++) {
            const uint8_t *k = k0 + (size_t)i * rowb;
            f[i] = block_scales(k);
            __m256 p = TIER_DOT(type, int_weights(type, k), q);
            a[i] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_mul_ps(f[i], dxb)), p, a[i]);
        }
        if (type == 3) {
            __m128 sb = _mm_broadcast_ss(sx + b);
            for (int i = 0; i + 1 < R; i += 2) macc[i / 2] = _mm_fmadd_ps(_mm_shuffle_ps(f[i], f[i + 1], _MM_SHUFFLE(1, 1, 1, 1)), sb, macc[i / 2]);
        }
    }
    for (int i = 0; i + 1 < R; i += 2) {
        y[i] = hfold(a[i]) + _mm_cvtss_f32(macc[i / 2]);
        y[i + 1] = hfold(a[i + 1]) + _mm_cvtss_f32(_mm_movehl_ps(macc[i / 2], macc[i / 2]));
    }
}

// One row, one token.
__attribute__((always_inline)) TIER_ATTR static inline float TIER_NAME(row_t1)(int type, const uint8_t *row, int nb, int bb, const int8_t *qx, const float *dx, const float *sx) {
    __m256 a0 = _mm256_setzero_ps();
    float m0 = 0;
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = row + (size_t)b * bb;
        __m256 p = TIER_DOT(type, int_weights(type, blk), qx + b * QK);
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(rd_f16c(blk) * dx[b]), p, a0);
        if (type == 3) m0 = fmaf(rd_f16c(blk + 2), sx[b], m0);
    }
    return hfold(a0) + m0;
}

// Two rows x four tokens: each weight block is unpacked once for four tokens and each
// token's block is loaded once for two rows; every output gets the one-token arithmetic.
__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(rows2_t4)(int type, const uint8_t *r0, const uint8_t *r1, int nb, int bb, size_t ahead, int K,
                                                                   const int8_t *qx, const float *dx, const float *sx, float *y, int ldy) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    float m00 = 0, m01 = 0, m02 = 0, m03 = 0, m10 = 0, m11 = 0, m12 = 0, m13 = 0;
    for (int b = 0; b < nb; b++) {
        const uint8_t *k0 = r0 + (size_t)b * bb, *k1 = r1 + (size_t)b * bb;
        if (ahead) { _mm_prefetch((const char *)(k0 + ahead), _MM_HINT_T0); _mm_prefetch((const char *)(k1 + ahead), _MM_HINT_T0); }
        __m256i w0 = int_weights(type, k0), w1 = int_weights(type, k1);
        float d0 = rd_f16c(k0), d1 = rd_f16c(k1);
        const int8_t *q = qx + b * QK;
        const float *db = dx + b;
#define FK_TOKEN(i, A0, A1)                                                             \
        {                                                                               \
            const int8_t *qi = q + (size_t)(i) * K;                                     \
            float dxi = db[(size_t)(i) * nb];                                           \
            A0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * dxi), TIER_DOT(type, w0, qi), A0); \
            A1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * dxi), TIER_DOT(type, w1, qi), A1); \
        }
        FK_TOKEN(0, a00, a10) FK_TOKEN(1, a01, a11) FK_TOKEN(2, a02, a12) FK_TOKEN(3, a03, a13)
#undef FK_TOKEN
    }
    // Q4_1's offsets: a separate pass in the same increasing block order (its own
    // accumulators, so the result is the one-token path's), keeping registers for the above.
    if (type == 3) {
        for (int b = 0; b < nb; b++) {
            const uint8_t *k0 = r0 + (size_t)b * bb, *k1 = r1 + (size_t)b * bb;
            float mw0 = rd_f16c(k0 + 2), mw1 = rd_f16c(k1 + 2);
            const float *sb = sx + b;
            float s0 = sb[0], s1 = sb[nb], s2 = sb[2 * (size_t)nb], s3 = sb[3 * (size_t)nb];
            m00 = fmaf(mw0, s0, m00); m01 = fmaf(mw0, s1, m01); m02 = fmaf(mw0, s2, m02); m03 = fmaf(mw0, s3, m03);
            m10 = fmaf(mw1, s0, m10); m11 = fmaf(mw1, s1, m11); m12 = fmaf(mw1, s2, m12); m13 = fmaf(mw1, s3, m13);
        }
    }
    y[0] = hfold(a00) + m00; y[(size_t)ldy] = hfold(a01) + m01; y[2 * (size_t)ldy] = hfold(a02) + m02; y[3 * (size_t)ldy] = hfold(a03) + m03;
    y[1] = hfold(a10) + m10; y[(size_t)ldy + 1] = hfold(a11) + m11; y[2 * (size_t)ldy + 1] = hfold(a12) + m12; y[3 * (size_t)ldy + 1] = hfold(a13) + m13;
}

__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(int8_avx2)(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, bb = block_bytes(type);
    size_t rowb = (size_t)nb * bb;
    // Token groups outer, row pairs inner: a group's activations stay in L1 while the
    // thread's rows stream from L2 (the loop order changes no output's arithmetic).
    int t = 0;
    for (; t + 4 <= T; t += 4) {
        const int8_t *q = qx + (size_t)t * K;
        const float *d = dx + (size_t)t * nb, *s = sx + (size_t)t * nb;
        int o = o0;
        for (; o + 2 <= o1; o += 2) {
            pf_tick();
            const uint8_t *r0 = w + (size_t)o * rowb;
            TIER_NAME(rows2_t4)(type, r0, r0 + rowb, nb, bb, t == 0 ? 2 * rowb : 0, K, q, d, s, y + (size_t)t * ldy + o, ldy);
        }
        for (; o < o1; o++)
            for (int i = 0; i < 4; i++)
                y[(size_t)(t + i) * ldy + o] = TIER_NAME(row_t1)(type, w + (size_t)o * rowb, nb, bb, q + (size_t)i * K, d + (size_t)i * nb, s + (size_t)i * nb);
    }
    for (; t < T; t++) {
        const int8_t *q = qx + (size_t)t * K;
        const float *d = dx + (size_t)t * nb, *s = sx + (size_t)t * nb;
        float *yt = y + (size_t)t * ldy;
        int o = o0;
        for (; o + 4 <= o1; o += 4) {
            pf_tick();
            TIER_NAME(rows_t1)(4, type, w + (size_t)o * rowb, rowb, nb, bb, 4 * rowb, q, d, s, yt + o);
        }
        for (; o + 2 <= o1; o += 2) TIER_NAME(rows_t1)(2, type, w + (size_t)o * rowb, rowb, nb, bb, 4 * rowb, q, d, s, yt + o);
        for (; o < o1; o++) yt[o] = TIER_NAME(row_t1)(type, w + (size_t)o * rowb, nb, bb, q, d, s);
    }
}

