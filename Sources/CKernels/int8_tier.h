// The int8 product kernels of one instruction-set tier (included once per tier by int8.c
// with TIER_ATTR, the target attribute; TIER_DOT, a block's eight exact 4-byte dots;
// TIER_DPB / TIER_Q8, the tiled layout's group dots for nibbles and for Q8_0's bytes, with
// TIER_Q8_BIAS the unsigned offset the latter multiplies (its start is -bias * sum(q));
// TIER_NT, tokens per pass over a tile; TIER_NAME, the name suffix). The integers are
// exact on every tier and the float arithmetic around them is ckernels.h's contract, so
// every tier's outputs are bitwise equal, in either layout.

// Row layout (weights straight from the file): one output at a time.
TIER_ATTR static void TIER_NAME(int8_rows_impl)(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    int nb = K / QK, bb = block_bytes(type);
    size_t rowb = (size_t)nb * bb;
    for (int t = 0; t < T; t++) {
        const int8_t *q = qx + (size_t)t * K;
        const float *d = dx + (size_t)t * nb, *s = sx + (size_t)t * nb;
        for (int o = o0; o < o1; o++) {
            const uint8_t *row = w + (size_t)o * rowb;
            float acc = 0, macc = 0;
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * bb;
                int p = hsum_epi32(TIER_DOT(type, int_weights(type, blk), q + b * QK));
                acc = fmaf(rd_f16c(blk) * d[b], (float)p, acc);
                if (type == 3) macc = fmaf(rd_f16c(blk + 2), s[b], macc);
            }
            y[(size_t)t * ldy + o] = acc + macc;
        }
    }
}

TIER_ATTR static void TIER_NAME(int8_rows)(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy) {
    if (type == 3) TIER_NAME(int8_rows_impl)(3, qx, dx, sx, w, K, T, o0, o1, y, ldy);
    else if (type == 2) TIER_NAME(int8_rows_impl)(2, qx, dx, sx, w, K, T, o0, o1, y, ldy);
    else TIER_NAME(int8_rows_impl)(8, qx, dx, sx, w, K, T, o0, o1, y, ldy);
}

// One tile (8 rows) against NT tokens: each tile-block's weights are loaded (and their
// nibbles split) once for the NT tokens; lane r is row r's chain of ckernels.h's contract.
// `out[n]`: token n's 8 outputs.
__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(tile_nt)(const int NT, const int type, const uint8_t *tile, int nb,
                                                                  const int8_t *qx, int K, const float *dx, const float *sx,
                                                                  const int32_t *qsum, __m256 *out) {
    const int tb = 8 * block_bytes(type), hdr = tile_header(type);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[TIER_NT], mac[TIER_NT];
    for (int n = 0; n < NT; n++) acc[n] = mac[n] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *k = tile + (size_t)b * tb;
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)k));
        const __m256 mw = type == 3 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + 16))) : d;
        __m256i v[8];
        if (type == 8) {
            for (int g = 0; g < 8; g++) v[g] = _mm256_loadu_si256((const __m256i *)(k + hdr + 32 * g));
        } else {
            for (int g = 0; g < 4; g++) {
                __m256i raw = _mm256_loadu_si256((const __m256i *)(k + hdr + 32 * g));
                v[g] = _mm256_and_si256(raw, m4);
                v[g + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            }
        }
        for (int n = 0; n < NT; n++) {
            const int8_t *q = qx + (size_t)n * K + (size_t)b * QK;
            size_t sb = (size_t)n * nb + b;
            int start = type == 3 ? 0 : type == 2 ? -8 * qsum[sb] : -TIER_Q8_BIAS * qsum[sb];
            __m256i p = _mm256_set1_epi32(start);
            for (int g = 0; g < 8; g++) {
                int32_t q4;
                memcpy(&q4, q + 4 * g, 4);
                p = type == 8 ? TIER_Q8(p, v[g], _mm256_set1_epi32(q4)) : TIER_DPB(p, v[g], _mm256_set1_epi32(q4));
            }
            acc[n] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(dx[sb])), _mm256_cvtepi32_ps(p), acc[n]);
            if (type == 3) mac[n] = _mm256_fmadd_ps(mw, _mm256_set1_ps(sx[sb]), mac[n]);
        }
    }
    for (int n = 0; n < NT; n++) out[n] = _mm256_add_ps(acc[n], mac[n]);
}

// Token groups of TIER_NT outer, tiles inner (a group's activations stay in L1 while the
// task's tiles stream): the loop order changes no output's arithmetic.
__attribute__((always_inline)) TIER_ATTR static inline void TIER_NAME(int8_tiles_impl)(const int type, const int8_t *qx, const float *dx, const float *sx,
                                                                          const int32_t *qsum, const uint8_t *tiles, int K, int T,
                                                                          int o0, int o1, float *y, int ldy) {
    int nb = K / QK;
    size_t tileb = (size_t)nb * 8 * block_bytes(type);
    __m256 out[TIER_NT];
    float lanes[8];
    for (int t = 0; t < T;) {
        int nt = T - t >= TIER_NT ? TIER_NT : 1;
        const int8_t *q = qx + (size_t)t * K;
        const float *d = dx + (size_t)t * nb, *s = sx + (size_t)t * nb;
        const int32_t *qs = qsum + (size_t)t * nb;
        for (int i = o0 / 8; 8 * i < o1; i++) {
            if (nt == TIER_NT) TIER_NAME(tile_nt)(TIER_NT, type, tiles + (size_t)i * tileb, nb, q, K, d, s, qs, out);
            else TIER_NAME(tile_nt)(1, type, tiles + (size_t)i * tileb, nb, q, K, d, s, qs, out);
            int r0 = 8 * i < o0 ? o0 - 8 * i : 0, r1 = 8 * i + 8 > o1 ? o1 - 8 * i : 8;
            for (int n = 0; n < nt; n++) {
                float *yt = y + (size_t)(t + n) * ldy + 8 * i;
                if (r0 == 0 && r1 == 8) _mm256_storeu_ps(yt, out[n]);
                else {
                    _mm256_storeu_ps(lanes, out[n]);
                    for (int r = r0; r < r1; r++) yt[r] = lanes[r];
                }
            }
        }
        t += nt;
    }
}

TIER_ATTR static void TIER_NAME(int8_tiles)(int type, const int8_t *qx, const float *dx, const float *sx, const int32_t *qsum, const uint8_t *tiles,
                                           int K, int T, int o0, int o1, float *y, int ldy) {
    if (type == 3) TIER_NAME(int8_tiles_impl)(3, qx, dx, sx, qsum, tiles, K, T, o0, o1, y, ldy);
    else if (type == 2) TIER_NAME(int8_tiles_impl)(2, qx, dx, sx, qsum, tiles, K, T, o0, o1, y, ldy);
    else TIER_NAME(int8_tiles_impl)(8, qx, dx, sx, qsum, tiles, K, T, o0, o1, y, ldy);
}
