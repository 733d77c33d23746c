#ifndef FACET_CKERNELS_H
#define FACET_CKERNELS_H

#include <stdint.h>

/// Quantized and half-precision matrix products with fp32 activations.
///
/// Semantics of every `fk_matmul_*`: for t in [0, T) and o in [o0, o1),
///   y[t * ldy + o] = sum_k x[t * K + k] * W[o, k]
/// where W is stored row-major in its compact form (ggml block layouts for Q4_0, Q4_1,
/// Q8_0; raw 16-bit values for F16/BF16). Each output is reduced in one fixed order that
/// does not depend on T, o0/o1 or the CPU path taken: 8 fp32 lanes, blocks of 32 in
/// increasing k (within a block: lane l takes k = 8j + l, j = 0..3, as mul then three
/// fused multiply-adds; the block joins the accumulator with one fused multiply-add by its
/// scale), lanes folded as ((0+4)+(2+6))+((1+5)+(3+7)), then the per-block offsets added
/// in increasing block order. The scalar fallback performs the same operations with
/// `fmaf`, so results are bitwise identical on every machine.
///
/// `xsum` holds, for Q4_0/Q4_1, the sums of x over each block of 32 ([T, K/32], computed
/// by fk_block_sums); other types ignore it.

int fk_has_avx2(void);
/// The best tier the CPU offers (after FACET_ISA): 0 scalar, 1 AVX2+FMA+F16C, 2 also
/// AVX-512 VNNI (int8 products through vpdpbusd). Every tier gives bitwise the same results.
int fk_cpu_tier(void);
/// Per-thread switch off the VNNI tier (twin tests), as fk_set_vector_path is for all vectors.
void fk_set_vnni_path(int enabled);
/// 1 when AVX-512 F/VL paths may run (after FACET_ISA and fk_set_avx512_path).
int fk_has_avx512(void);
/// Per-thread switch off the AVX-512 tier (twin tests).
void fk_set_avx512_path(int enabled);
/// Tests only: 0 forces the portable scalar path, 1 restores CPU detection.
void fk_set_vector_path(int enabled);
void fk_block_sums(const float *x, int T, int K, float *xsum);
void fk_matmul_q4_1(const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy);
void fk_matmul_q4_0(const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy);
void fk_matmul_q8_0(const float *x, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy);
void fk_matmul_f16(const float *x, const uint16_t *w, int K, int T, int o0, int o1, float *y, int ldy);
void fk_matmul_bf16(const float *x, const uint16_t *w, int K, int T, int o0, int o1, float *y, int ldy);

/// The int8 compute mode (opt-in): activations are rounded to 8 bits per block of 32
/// before the product, as ggml does for its Q8 activations:
///   d = max|x| / 127, q = round-half-even(x * (1/d)) in [-127, 127], s = d * sum(q).
/// `qx: [T, K]`, `dx, sx: [T, K/32]`.
void fk_quantize_activations(const float *x, int T, int K, int8_t *qx, float *dx, float *sx);

/// Products against 8-bit activations for Q4_0 (type 2), Q4_1 (3) and Q8_0 (8) weights.
/// Per output: 8 fp32 lanes; for each block b in increasing order, lane j gets the exact
/// integer p_j = sum_{i<4} w[4j+i] * q[4j+i] (w the block's integer weights: q-8 for
/// Q4_0, the nibble for Q4_1, the byte for Q8_0) and acc_j = fma(d_w * dx_b, p_j, acc_j);
/// Q4_1 adds its offsets as m = fma(m_w, sx_b, m) in increasing block order; finally
/// y = fold(acc) + m with the fold above. Scalar and AVX2 paths are bitwise identical.
void fk_matmul_int8(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy);

/// Q4_K (type 12) and Q6_K (type 14): ggml's 256-value super-blocks, taken as blocks of 32
/// in increasing order with the same lanes as above. Q4_K block b (sub-block b % 8 of
/// super-block b / 8): acc = fma(d * sc_b, v, acc) with v as above and the offset
/// -(dmin * m_b) added like Q4_1's (xsum needed). Q6_K block b: two halves of 16 values
/// with their own scales d * sc: lo = fma(q1, x1, q0 * x0), hi = fma(q3, x3, q2 * x2)
/// per lane, acc = fma(d * sc_lo, lo, acc), then acc = fma(d * sc_hi, hi, acc). K must be
/// a multiple of 256.
void fk_matmul_kquant(int type, const float *x, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy);
/// Row `row` of a Q4_K/Q6_K matrix as floats, exactly as ggml dequantizes it.
void fk_dequantize_row_k(int type, const uint8_t *w, int K, int row, float *out);

/// Dequantizes row `row` of a Q4_0/Q4_1/Q8_0 matrix with K columns into `out` (K floats).
void fk_dequantize_row(int type, const uint8_t *w, int K, int row, float *out);

/// Elementwise exp: within 2 ulp of exp(x) for x in [-86.5, 88.7]; below, 0 or a tiny
/// normal value (< 2e-38); above 88.7 clamped (~3.3e38). Cody-Waite reduction, a degree-6
/// polynomial, 2^n from exponent bits; the vector and scalar paths perform the same
/// operations, so every element's result is the same in any position and on any machine.
float fk_exp(float x);
/// gate[i] = gate[i] / (1 + fk_exp(-gate[i])) * up[i]  (SiLU(gate) * up).
void fk_silu_mul(float *gate, const float *up, long n);
/// p[i] = fk_exp(p[i] - shift).
void fk_exp_shift(float *p, long n, float shift);

/// Training's dense products: for t < rows and j < width, dx[t * ldx + j] = fmaf(g[t * gstride + o],
/// w[o * ldw + j], ...) for o = 0, 1, ... < nrows in order onto the value already there (the
/// accumulator in a register). Every path gives the same bits. The input gradient dY W, and
/// with dx zeroed, g = x and w a transposed panel of W, the forward x W^T.
void fk_add_product(float *dx, long ldx, const float *g, long gstride, int rows, const float *w, long ldw, int nrows, int width);
/// dst[c * rows + r] = src[r * cols + c].
void fk_transpose(const float *src, long rows, long cols, float *dst);
/// fk_transpose for source rows first..<end only (the pool splits a transpose this way).
void fk_transpose_rows(const float *src, long rows, long cols, long first, long end, float *dst);

#endif
