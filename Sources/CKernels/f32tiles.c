// fp32 products against the tiled copy of Q4_0/Q4_1/Q8_0 weights (fk_int8_tiles' layout).
// Same arithmetic per output as fk_matmul_q4_0/q4_1/q8_0: see include/ckernels.h.
#include "ckernels.h"
#include "common.h"
#include "ckpool.h"
#include <math.h>

#if defined(__x86_64__)
#define AVX512T __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))

// NT tokens (1-3), one tile of 8 rows, AVX-512. A register holds four rows' lanes l =
// 4h..4h+3 (h = 0, 1): lane 4r + i is row r's lane 4h + i. A 16-byte run of a tile group is
// exactly such a register's bytes (group g holds each row's bytes 4g..4g+3), so one
// zero-extension spreads it; low nibbles become floats through a 16-entry table (vpermps
// reads each lane's low four bits), high ones shifted down and converted (the two spread
// the work over the shuffle and conversion units). The weights are unpacked once for the
// NT tokens. The activations are laid out to match (`xq`, 4K floats per token: per block,
// per h, per j, the four values x[32b + 8j + 4h + i] repeated for the four rows). The
// eight lanes of a row fold in fk_dot's tree across the two registers and within each
// 128-bit lane.
__attribute__((always_inline)) AVX512T static inline void f32_tile(const int NT, int type, const float *xq, size_t xqStride, const float *xsum,
                                                                  const uint8_t *tile, int nb, int tb, __m512 table, __m256 out[3]) {
    const int hdr = tile_header(type);
    const __m512i lo4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i hi4 = _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    __m512 acc[3][2][2];   // [token][rows 4a..4a+3][lane half h]
    __m256 macc[3];
    for (int t = 0; t < NT; t++) {
        macc[t] = _mm256_setzero_ps();
        for (int a = 0; a < 2; a++) for (int h = 0; h < 2; h++) acc[t][a][h] = _mm512_setzero_ps();
    }
    for (int b = 0; b < nb; b++) {
        const uint8_t *k = tile + (size_t)b * tb;
        const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)k));
        const __m512 dAll = _mm512_castps256_ps512(d8);
        const __m512 ds[2] = {_mm512_permutexvar_ps(lo4, dAll), _mm512_permutexvar_ps(hi4, dAll)};
        for (int a = 0; a < 2; a++)
            for (int h = 0; h < 2; h++) {
                __m512 q0, q1, q2, q3;
                if (type == 8) {
                    // Group 2j + h holds elements 8j + 4h + i.
                    q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k + hdr + 32 * h + 16 * a))));
                    q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k + hdr + 32 * (2 + h) + 16 * a))));
                    q2 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k + hdr + 32 * (4 + h) + 16 * a))));
                    q3 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k + hdr + 32 * (6 + h) + 16 * a))));
                } else {
                    // Group h holds bytes 4h + i: elements 4h + i (low nibble) and 16 + 4h + i
                    // (high); group 2 + h holds elements 8 + 4h + i and 24 + 4h + i.
                    __m512i A = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(k + hdr + 32 * h + 16 * a)));
                    __m512i B = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(k + hdr + 32 * (2 + h) + 16 * a)));
                    q0 = _mm512_permutexvar_ps(A, table);
                    q1 = _mm512_permutexvar_ps(B, table);
                    q2 = _mm512_cvtepi32_ps(_mm512_srli_epi32(A, 4));
                    q3 = _mm512_cvtepi32_ps(_mm512_srli_epi32(B, 4));
                }
                // Three tokens: a fresh pointer per row half, so that the compiler reloads
                // the activations (from L1) rather than keeping both halves' loads live,
                // which spilled ~24 registers per block.
                const float *xl = xq;
                if (NT == 3) __asm__ volatile("" : "+r"(xl));
                for (int t = 0; t < NT; t++) {
                    const float *xh = xl + (size_t)t * xqStride + (size_t)b * 128 + 64 * h;
                    __m512 v = _mm512_mul_ps(q0, _mm512_loadu_ps(xh));
                    v = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xh + 16), v);
                    v = _mm512_fmadd_ps(q2, _mm512_loadu_ps(xh + 32), v);
                    v = _mm512_fmadd_ps(q3, _mm512_loadu_ps(xh + 48), v);
                    acc[t][a][h] = _mm512_fmadd_ps(ds[a], v, acc[t][a][h]);
                }
            }
        if (type != 8) {
            const __m256 m8 = type == 3 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + 16))) : _mm256_mul_ps(_mm256_set1_ps(-8.0f), d8);
            for (int t = 0; t < NT; t++) macc[t] = _mm256_fmadd_ps(m8, _mm256_set1_ps(xsum[(size_t)t * nb + b]), macc[t]);
        }
    }
    // fold8 per row: s_i = v_i + v_(4+i), then (s_0 + s_2) + (s_1 + s_3).
    const __m512i firsts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    for (int t = 0; t < NT; t++) {
        __m512 f[2];
        for (int a = 0; a < 2; a++) {
            __m512 s = _mm512_add_ps(acc[t][a][0], acc[t][a][1]);
            s = _mm512_add_ps(s, _mm512_permute_ps(s, _MM_SHUFFLE(1, 0, 3, 2)));
            f[a] = _mm512_add_ps(s, _mm512_permute_ps(s, _MM_SHUFFLE(2, 3, 0, 1)));
        }
        out[t] = _mm256_add_ps(_mm512_castps512_ps256(_mm512_permutex2var_ps(f[0], firsts, f[1])), macc[t]);
    }
}

// Rows o0..o1 for NT tokens of x (rows of y ldy apart), tile by tile.
__attribute__((always_inline)) AVX512T static inline void f32_tiles_group(const int NT, int type, const float *xq, size_t xqStride, const float *xsum,
                                                                         const uint8_t *tiles, int nb, int o0, int o1, float *y, int ldy) {
    const int tb = 8 * block_bytes(type);
    const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int i = o0 / 8; i * 8 < o1; i++) {
        __m256 r8[3];
        const uint8_t *tile = tiles + (size_t)i * nb * tb;
        if (type == 3) f32_tile(NT, 3, xq, xqStride, xsum, tile, nb, tb, table, r8);
        else if (type == 2) f32_tile(NT, 2, xq, xqStride, xsum, tile, nb, tb, table, r8);
        else f32_tile(NT, 8, xq, xqStride, xsum, tile, nb, tb, table, r8);
        for (int t = 0; t < NT; t++) {
            float *yt = y + (size_t)t * ldy;
            if (i * 8 >= o0 && i * 8 + 8 <= o1) { _mm256_storeu_ps(yt + i * 8, r8[t]); continue; }
            float part[8];
            _mm256_storeu_ps(part, r8[t]);
            for (int r = 0; r < 8; r++)
                if (i * 8 + r >= o0 && i * 8 + r < o1) yt[i * 8 + r] = part[r];
        }
    }
}

// Tokens in super-blocks of up to SUPER (their prepared activations, 16 bytes per value,
// kept at once), rows in chunks of CHUNK tiles (their weights stay in L2 while the
// super-block's token groups pass), tokens in groups of three within (four would spill
// accumulators; four left go as two and two). Each output is still one tile call's whole
// chain, so the blocking changes no bit.
enum { SUPER = 48, CHUNK = 16 };

AVX512T static void f32_tiles_avx512(int type, const float *x, const float *xsum, const uint8_t *tiles, int K, int T, int o0, int o1, float *y, int ldy) {
    const int nb = K / QK;
    const size_t stride = (size_t)4 * K;
    const int super = T < SUPER ? T : SUPER;
    float *xq = fk_thread_scratch(23, (size_t)super * stride * sizeof(float));   // Scratch.Slot.pairedActivations
    if (!xq) { fk_quant_scalar(type, 1, x, xsum, tiles, K, T, o0, o1, y, ldy); return; }
    for (int s0 = 0; s0 < T; s0 += super) {
        const int ns = T - s0 < super ? T - s0 : super;
        for (int t = 0; t < ns; t++) {
            const float *xt = x + (size_t)(s0 + t) * K;
            float *q = xq + (size_t)t * stride;
            for (int b = 0; b < nb; b++)
                for (int h = 0; h < 2; h++)
                    for (int j = 0; j < 4; j++)
                        _mm512_storeu_ps(q + (size_t)b * 128 + 64 * h + 16 * j, _mm512_broadcast_f32x4(_mm_loadu_ps(xt + b * QK + 8 * j + 4 * h)));
        }
        for (int c = o0 / 8 * 8; c < o1; c += 8 * CHUNK) {
            const int r0 = c > o0 ? c : o0, r1 = c + 8 * CHUNK < o1 ? c + 8 * CHUNK : o1;
            for (int t0 = 0, nt; t0 < ns; t0 += nt) {
                nt = ns - t0 == 4 ? 2 : ns - t0 < 3 ? ns - t0 : 3;
                const float *qt = xq + (size_t)t0 * stride;
                const float *st = xsum ? xsum + (size_t)(s0 + t0) * nb : 0;
                float *yt = y + (size_t)(s0 + t0) * ldy;
                switch (nt) {
                case 1: f32_tiles_group(1, type, qt, stride, st, tiles, nb, r0, r1, yt, ldy); break;
                case 2: f32_tiles_group(2, type, qt, stride, st, tiles, nb, r0, r1, yt, ldy); break;
                default: f32_tiles_group(3, type, qt, stride, st, tiles, nb, r0, r1, yt, ldy); break;
                }
            }
        }
    }
}
#endif

// On AVX-512 the tiles win at every token count (alone on one core: one token 1.2-1.5x the
// rows in cache, 1.5-2.5x from memory; two or three tokens 2-2.6x; 8-32 tokens 1.0-1.7x).
int fk_f32_tiles_used(void) {
#if defined(__x86_64__)
    return fk_has_avx512();
#else
    return 0;
#endif
}

void fk_matmul_f32_tiles(int type, const float *x, const float *xsum, const uint8_t *tiles, int K, int T, int o0, int o1, float *y, int ldy) {
#if defined(__x86_64__)
    if (fk_has_avx512()) { f32_tiles_avx512(type, x, xsum, tiles, K, T, o0, o1, y, ldy); return; }
#endif
    fk_quant_scalar(type, 1, x, xsum, tiles, K, T, o0, o1, y, ldy);
}
