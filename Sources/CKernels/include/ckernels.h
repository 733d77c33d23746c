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
/// The best tier the CPU offers (after FACET_ISA=scalar|avx2|avx512|avx512vnni): 0 scalar, 1
/// AVX2+FMA+F16C, 2 AVX-512 F/BW/VL, 3 also AVX-512 VNNI (int8 products through vpdpbusd),
/// 4 also AVX512_BF16 (the bf16 mode's products through vdpbf16ps).
/// Every tier gives bitwise the same results.
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
/// `qx: [T, K]`, `dx, sx: [T, K/32]`; `qsum` ([T, K/32], may be NULL): the integer sum(q)
/// of each block (Q4_0 and Q8_0's tiled products subtract 8 or 128 times it where their
/// unsigned forms are multiplied).
void fk_quantize_activations(const float *x, int T, int K, int8_t *qx, float *dx, float *sx, int32_t *qsum);

/// Products against 8-bit activations for Q4_0 (type 2), Q4_1 (3) and Q8_0 (8) weights.
/// Per output, for each block b in increasing order: the exact integer block dot product
/// P_b = sum_{i<32} w[i] * q[i] (w the block's integer weights: q-8 for Q4_0, the nibble
/// for Q4_1, the byte for Q8_0; |P_b| < 2^24, so (float)P_b is exact), then
/// acc = fma(d_w * dx_b, (float)P_b, acc) and, for Q4_1, m = fma(m_w, sx_b, m), both from
/// +0; finally y = acc + m (m = +0 for Q4_0 and Q8_0). Every tier and layout (rows here,
/// tiles in fk_matmul_int8_tiles) gives these bits.
void fk_matmul_int8(int type, const int8_t *qx, const float *dx, const float *sx, const uint8_t *w, int K, int T, int o0, int o1, float *y, int ldy);

/// The int8 mode's weights in tiles of 8 rows: for tile i (rows 8i..8i+7, rows past the end
/// zero) and block b, at ((i * K/32) + b) * 8 * block bytes: the 8 rows' f16 scales, for Q4_1
/// their 8 f16 minimums, then the quantized bytes in 4-byte groups g (4 for Q4_0/Q4_1, 8 for
/// Q8_0), each group as 32 bytes: row r's bytes 4g..4g+3 at 4r. So one 32-byte load holds
/// one group of 8 rows, and a broadcast of 4 activation bytes multiplies all 8 rows.
/// `fk_int8_tiles_size` is its size in bytes (0 for another type).
unsigned long fk_int8_tiles_size(int type, int rows, int K);
void fk_int8_tiles(int type, const uint8_t *w, int rows, int K, uint8_t *out);
/// fk_matmul_int8 on tiled weights (same bits); rows o0..o1 of y.
void fk_matmul_int8_tiles(int type, const int8_t *qx, const float *dx, const float *sx, const int32_t *qsum, const uint8_t *tiles, int K, int T,
                          int o0, int o1, float *y, int ldy);

/// fp32 products (fk_matmul_q4_0 / q4_1 / q8_0's arithmetic and bits, type 2, 3 or 8) reading
/// the tiled copy of the weights that fk_int8_tiles makes. `fk_f32_tiles_used()` is 1 when
/// this thread's tier has a tiled path that beats the row layout (AVX-512, at any token
/// count); otherwise the call still gives the same bits, through the reference twin.
int fk_f32_tiles_used(void);
void fk_matmul_f32_tiles(int type, const float *x, const float *xsum, const uint8_t *tiles, int K, int T, int o0, int o1, float *y, int ldy);

/// The bf16 compute mode (opt-in) for Q4_0 (type 2), Q4_1 (3), Q8_0 (8), Q4_K (12), Q6_K (14)
/// and bf16-stored weights (30). `fk_prepare_bf16` rounds x: [T, K] to bf16 (nearest even;
/// NaN stays NaN; |x| < 2^-64 and denormals become zeros of their sign) into `xr` (fp32
/// holding bf16 values) and, when `pairs` is not NULL, packs them for vdpbf16ps ([T, K/2]
/// dwords): block b's dword l < 8 holds element 32b + l in its low half and 32b + l + 8 in its
/// high half, dword 8 + l holds 32b + 16 + l and 32b + 24 + l.
/// Per output of `fk_matmul_quant_bf16`: 16 fp32 lanes; for each block b of 32 in increasing
/// order, lane l < 8 gets p = xr[l] * w[l] + xr[l + 8] * w[l + 8] and lane 8 + l gets
/// p = xr[16 + l] * w[16 + l] + xr[24 + l] * w[24 + l], each rounded once (w the block's
/// integer weights as for fp32, or the stored bf16 values with magnitudes below 2^-32 taken as
/// +0; every product is exact), then acc = fma(d, p, acc) with d the scale
/// of the block's first 16 elements for lanes 0-7 and of its last 16 for lanes 8-15 (they
/// differ only for Q6_K; 1 for bf16 weights). Offsets (Q4_0 -8d, Q4_1 m, Q4_K -(dmin m)):
/// m = fma(m_w, xsum_b, m) in increasing block order (xsum: fk_block_sums of xr). y =
/// fold(acc) + m with the fold of fk_dot (v[i] + v[i+8], then the 8-lane fold).
/// AVX512_BF16 computes p with vdpbf16ps from a zero accumulator, the other tiers with a
/// multiply and a fused multiply-add: the same bits everywhere. `pairs` may be NULL when
/// fk_has_bf16() is 0.
float fk_round_bf16(float x);
void fk_prepare_bf16(const float *x, int T, int K, float *xr, uint32_t *pairs);
void fk_matmul_quant_bf16(int type, const float *xr, const uint32_t *pairs, const float *xsum, const uint8_t *w, int K, int T, int o0, int o1,
                          float *y, int ldy);
/// 1 when the AVX512_BF16 tier may run on this thread (after FACET_ISA and fk_cap_tier).
int fk_has_bf16(void);

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
/// `rows` rows of K values each (whole blocks), the rows `row_bytes` apart from `w`, into
/// `out` with `ld` floats between rows: fk_dequantize_row (fk_dequantize_row_k for Q4_K/Q6_K) on each.
void fk_dequantize_rows(int type, const uint8_t *w, long row_bytes, int rows, int K, float *out, int ld);

/// Elementwise exp: within 2 ulp of exp(x) for x in [-86.5, 88.7]; below, 0 or a tiny
/// normal value (< 2e-38); above 88.7 clamped (~3.3e38). Cody-Waite reduction, a degree-6
/// polynomial, 2^n from exponent bits; the vector and scalar paths perform the same
/// operations, so every element's result is the same in any position and on any machine.
float fk_exp(float x);
/// gate[i] = gate[i] / (1 + fk_exp(-gate[i])) * up[i]  (SiLU(gate) * up).
void fk_silu_mul(float *gate, const float *up, long n);
/// The gradients of silu(gate) * up given da = d(out): with s = 1 / (1 + fk_exp(-gate[i])),
/// dup[i] = (da[i] * gate[i]) * s and dgate[i] = ((da[i] * up[i]) * s) * (1 + gate[i] * (1 - s)).
void fk_silu_mul_backward(const float *gate, const float *up, const float *da, float *dgate, float *dup, long n);
/// p[i] = fk_exp(p[i] - shift).
void fk_exp_shift(float *p, long n, float shift);

/// Training's dense products: for t < rows and j < width, dx[t * ldx + j] = fmaf(g[t * gstride + o],
/// w[o * ldw + j], ...) for o = 0, 1, ... < nrows in order onto the value already there (the
/// accumulator in a register). Every path gives the same bits. The input gradient dY W, and
/// with dx zeroed, g = x and w a transposed panel of W, the forward x W^T.
void fk_add_product(float *dx, long ldx, const float *g, long gstride, int rows, const float *w, long ldw, int nrows, int width);
/// The same chains from zero: dx[t * ldx + j] = the sum (the bits of zeroing dx, then
/// fk_add_product; without reading dx). nrows = 0 writes zeros.
void fk_set_product(float *dx, long ldx, const float *g, long gstride, int rows, const float *w, long ldw, int nrows, int width);
/// Training's bf16 products (opt-in): the same sums with both operands rounded to bf16 and the
/// pairs taken as AVX512_BF16's vdpbf16ps does. `fk_round_bf16_rows` rounds x[t * ldx + k]
/// (k < cols) to bf16 bits as fk_round_bf16 does into out[t * ldo + k], zeros up to ldo.
/// `fk_pack_bf16_pairs` packs n rows of `width` values, element (r, j) = src[r * rs + j * cs],
/// rounded the same way (then magnitudes below 2^-32 taken as +0, as the bf16 mode reads
/// weights), row pairs interleaved: out[(p * width + j) * 2 + e] is element (2p + e, j), 0 for a
/// missing last odd row. `fk_add_product_bf16`: for t < rows, j < width, starting from
/// dx[t * ldx + j], for p = 0, 1, ... < npairs: acc = fma(g[t*gs + 2p+1], w(2p+1, j), acc), then
/// acc = fma(g[t*gs + 2p], w(2p, j), acc) (products of bf16 values are exact, so this is the
/// unit's own arithmetic): the same bits on every tier. gs must be even, g 4-byte aligned.
void fk_round_bf16_rows(const float *x, long rows, long cols, long ldx, uint16_t *out, long ldo);
void fk_pack_bf16_pairs(const float *src, long rs, long cs, int n, int width, uint16_t *out);
void fk_add_product_bf16(float *dx, long ldx, const uint16_t *g, long gs, int rows, const uint16_t *wp, int npairs, int width);
/// dst[c * rows + r] = src[r * cols + c].
void fk_transpose(const float *src, long rows, long cols, float *dst);
/// fk_transpose for source rows first..<end only (the pool splits a transpose this way).
void fk_transpose_rows(const float *src, long rows, long cols, long first, long end, float *dst);

/// How the second operand of the fp32 kernels below is stored: fp32, f16, bf16, or bf16
/// with each run of 16 kept as 8 32-bit words holding elements i (low half) and i + 8 (high
/// half) and the elements after the last full run plainly (the 16-bit KV cache's layout).
/// 16-bit values are widened exactly.
enum { FK_ROW_F32 = 0, FK_ROW_F16 = 1, FK_ROW_BF16 = 2, FK_ROW_BF16_PAIRED = 3 };

/// The one dot product of the fp32 kernels: sum_k a[k] * b[k] for k < n in 16 fp32 lanes
/// (lane l takes k = l mod 16 in increasing k, fused multiply-adds), folded as
/// v[i] + v[i+8] (8 lanes), then i + (i+4), then i + (i+2), then 0 + 1, and the tail
/// k >= 16 * (n / 16) added in order as (a[k] * b[k]) + total. Bitwise the same on every tier.
float fk_dot(const float *a, const void *b, int format, long n);

/// y[t * O + o] = fk_dot(x[t], w[o], K) (+ bias[o] when bias is not NULL) for t < T and
/// o0 <= o < o1: x [T, K], w [O, K] fp32.
void fk_matmul_f32(const float *x, const float *w, const float *bias, float *y, long T, long K, long O, long o0, long o1);

/// LoRA's shrink: u[i * r + j] = fk_dot(x[i], a[j], K) for i < n, j < r (a: [r, K] in format).
void fk_lowrank_shrink(const float *x, const void *a, int format, float *u, long n, long K, long r);
/// LoRA's expansion: for i < n and o < O, delta = fma(u[i, r-1], bT[r-1, o], ... fma(u[i, 1],
/// bT[1, o], u[i, 0] * bT[0, o])), y[rows[i] * O + o] = y[...] + delta * scale (bT: [r, O]);
/// with add = 0 it stores y[rows[i] * O + o] = delta * scale instead (the same rounding, so
/// adding the stored rows to y later gives the same bits).
void fk_lowrank_expand(const float *u, const void *bT, int format, long r, long O, float scale, float *y, const int32_t *rows, long n, int add);

/// Queries of one sequence attended together: query t is queries + t * stride, sees cached
/// positions firsts[t]...lasts[t], writes out + t * stride.
typedef struct {
    const float *queries;
    long stride;
    long count;
    const long *firsts;
    const long *lasts;
    float *out;
} fk_attention_tile;

/// One layer's paged K and V: [blocks, block_size, kv_heads, head_dim] elements of `format`
/// (FK_ROW_F32, FK_ROW_F16 or FK_ROW_BF16_PAIRED).
typedef struct {
    const void *keys;
    const void *values;
    long block_size;
    long kv_heads;
    long head_dim;
    int format;
} fk_paged_layer;

/// Causal attention (see Attention.attend in Swift for the semantics): for each query of
/// the tile and each head of kv groups g0..<g1, s_j = fk_dot(q, k_j) * scale, w_j =
/// fk_exp(s_j - max s), out = (sum_j w_j v_j) * (1 / sum_j w_j), all sums in increasing j
/// (the value sum with fused multiply-adds per element). `scores` holds
/// count * (heads / kv_heads) * (max last + 1) floats, `stats` 2 * count * (heads / kv_heads).
void fk_attend(const fk_attention_tile *tile, int heads, const fk_paged_layer *layer, const int32_t *block_table, float scale,
               float *scores, float *stats, int g0, int g1);

/// Training attention, one query head of one sequence of n tokens held whole: for t < n and
/// first = max(0, t - window + 1) (0 when window <= 0), s_j = fk_dot(q_t, k_j) * scale,
/// w_j = fk_exp(s_j - max s), p_j = w_j / (sum of w in increasing j) written to
/// probs[t * n + j] for first <= j <= t (other entries untouched), and out_t += sum_j p_j v_j
/// (fused multiply-adds per element in increasing j onto out_t: pass zeros). Rows of q and out are qs
/// floats apart, of k and v kvs.
void fk_train_attend(const float *q, const float *k, const float *v, long qs, long kvs, long n, long hd, long window, float scale,
                     float *out, float *probs);
/// Its gradients for the `group` query heads sharing one kv head (head i at q + i * hd, its
/// probabilities at probs + i * n * n; entries outside first...t are taken as zeros), heads in
/// increasing order: dp_tj = dout_t . v_j (fused chain over the head dimension from zero),
/// sum_t = sum_j p_tj dp_tj (increasing j, not fused), ds_tj = p_tj (dp_tj - sum_t) * scale,
/// then, as fk_add_product chains in increasing index: dv_j += sum_t p_tj dout_t, dq_t +=
/// sum_j ds_tj k_j (pass zeros), dk_j += sum_t ds_tj q_t. Query rows go in blocks of 16, each
/// block's sums over its own columns (zeros outside the window), so the nonzero terms and
/// their order per output do not depend on the block size. `scratch` holds
/// fk_train_attend_back_scratch(n, hd) floats.
long fk_train_attend_back_scratch(long n, long hd);
void fk_train_attend_back(const float *dout, const float *q, const float *k, const float *v, const float *probs, long qs, long kvs, long n,
                          long hd, long group, long window, float scale, float *dq, float *dk, float *dv, float *scratch);

/// Caps the calling thread's tier (and the pool tasks its calls start) for the twin tests:
/// 0 scalar, 1 AVX2, 2 AVX-512 F/BW/VL, 3 also VNNI, 4 also BF16; the CPU's own tier stays the ceiling.
void fk_cap_tier(int tier);

#endif
