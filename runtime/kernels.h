/*
 * kernels.h - the compute kernels that ldmc-generated code calls for its
 * heavy ops, with every shape passed as a compile-time constant by the
 * caller. Everything here runs on all cores (OpenMP) with our own GEMM
 * (kernels_gemm.c); OpenBLAS serves only the rare `matmul` op, set to one
 * thread so that it never competes with OpenMP for the cores.
 *
 * Weights may be stored as float32 or IEEE half (LDM_W_F16) or bfloat16
 * (LDM_W_BF16): half-precision weights stay half in memory and are widened
 * inside the kernels while they are packed.
 */
#ifndef LDM_KERNELS_H
#define LDM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kernel_sizes.h" /* LdmWType, LdmWLayout, the shapes, the scratch sizes */

/* A weight as the kernels see it: data, storage type and element order. */
typedef struct LdmW {
    const void *p;   /* data */
    int type;        /* LdmWType */
    int layout;      /* LdmWLayout */
} LdmW;

/* Elements of a [rows][cols] weight stored in `layout` (padding included). */
size_t ldm_w_layout_size(int layout, int64_t rows, int64_t cols);
/* The row after the panel that starts at row r of a [rows][...] weight in
 * `layout` (r + 1 for LDM_WL_ROWS, whose "panels" are single rows). */
int64_t ldm_w_panel_end(int layout, int64_t rows, int64_t r);
/* Re-lay rows [r0, r1) (panel boundaries) of a row-major weight
 * [rows][cols] of elements of es bytes (2 or 4, the type unchanged) into
 * dst, the whole weight stored in `layout`. src is row r0 (rows r0 ..
 * min(r1, rows) - 1 are read; rows past `rows` are the layout's zeros). */
void ldm_w_relayout(int layout, const void *src, size_t es, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                    void *dst);

/* Call once before any kernel (sets OpenBLAS, used by `matmul`, to one thread). */
void ldm_kernels_init(void);

/* Which micro-kernels this build runs, e.g. "AVX-512 (4x48)" (for reports). */
const char *ldm_kernels_isa(void);

/* The compute mode: "f32" (the default) or "bf16": the GEMM kernel's
 * products (linear layers, im2col and pointwise convolutions) with both
 * operands rounded to bfloat16 and float32 sums (AVX-512 BF16), the rest
 * (Winograd, attention, direct convolutions, norms) unchanged. 0, or -1
 * (ldm_fail) for another name or where the build or CPU has no AVX-512
 * BF16. Set it before running kernels, not while they run. */
int ldm_set_compute(const char *mode);
/* The mode set, for reports ("f32", or "bf16 (...)"). */
const char *ldm_compute_mode(void);

/* Widen n weights starting at element `off` into dst (float32). */
void ldm_w_to_f32(LdmW w, size_t off, size_t n, float *dst);

/* ---- epilogue -------------------------------------------------------------
 * Many kernels finish with y = y + bias[o] + rowadd[n, o] + residual, where
 * o is the output channel (feature) and n the batch index; any may be NULL;
 * then, if relu (convolutions only: conv2d+relu), y = max(y, 0). */
typedef struct LdmEpilogue {
    const float *bias;       /* [O] */
    const float *rowadd;     /* [N, O]: e.g. the ResBlock's time embedding */
    const float *residual;   /* same shape as y */
    int relu;                /* 1: max(., 0) after the sums */
} LdmEpilogue;

/* ---- GEMM (kernels_gemm.c) -------------------------------------------------------
 * C[M, N] = A[M, K] * op(B) (+ C when accumulate), row-major with leading
 * dimensions, split over the cores. op(B) = B[K, N] or B[N, K]^T (trans_b).
 * A is float32, optionally layer-normalised row by row while it is packed
 * (norm: LayerNorm fused into the linear layer that consumes it; NULL for
 * none); B may be a half-precision weight. */
typedef struct LdmRowNorm {
    const float *mean, *rstd;   /* [M], from ldm_row_stats: row m is used as */
    const float *gamma, *beta;  /* [K]   (A[m] - mean[m]) * rstd[m] * gamma + beta */
} LdmRowNorm;

/* mean and 1/sqrt(var + eps) of each of the M rows of x[M, D] (biased variance;
 * sums as GroupNorm's: float within blocks of 512, double across them). */
void ldm_row_stats(int M, int D, const float *x, double eps, float *mean, float *rstd);
void ldm_gemm_norm(int M, int N, int K, const float *A, int lda, const LdmRowNorm *norm, LdmW B, size_t b_off, int ldb,
                   int trans_b, float *C, int ldc, int accumulate);

/* Same with the weight on the left: C[M, N] = W[M, K] * B[K, N] (convolutions). */
void ldm_gemm_wl(int M, int N, int K, LdmW A, size_t a_off, int lda, const float *B, int ldb, float *C, int ldc,
                 int accumulate);

/* GroupNorm of x[N, C, S] in G groups of C/G channels (statistics in
 * double over float partial sums, biased variance), then SiLU if silu. */
void ldm_group_norm(int N, int C, long S, int G, double eps, const float *x, const float *w, const float *b, float *y,
                    int silu);

/* y[m, d] = a * gelu(g), a = x[m, d] + bias[d], g = x[m, D + d] + bias[D + d],
 * for x[M, 2D] with rows ldx floats apart and bias[2D] or NULL (GEGLU, erf GELU). */
void ldm_geglu(int M, int D, const float *x, long ldx, const float *bias, float *y);

/* y[b, c, r] = x[b, r, c] for x[B, R, C]: a permute (0, 2, 1), e.g. feature
 * maps [B, C, H*W] to tokens [B, H*W, C] and back. */
void ldm_transpose(int B, int R, int C, const float *x, float *y);

/* ---- convolution (conv.c) -------------------------------------------------------
 * y[N, O, HO, WO] = conv2d(x[N, C, H, W], w[O, C, KH, KW]) + epilogue, any
 * stride and zero padding (top, bottom, left, right). The kernel picks
 * nothing: the compiler chose the algorithm and passes the scratch it
 * planned (ldm_conv_scratch_bytes for the same arguments). Sample n of y
 * starts at y + n * (O * HO * WO + y_gap); bias, rowadd and residual are
 * always contiguous. */
/* LdmConvShape, LdmConvAlgo and ldm_conv_scratch_bytes: kernel_sizes.h */
void ldm_conv2d(const LdmConvShape *s, int algo, const float *x, LdmW w, const LdmEpilogue *ep, float *y,
                float *scratch);

/* Winograd F(4x4, 3x3) (kernels_winograd.c): 3x3, stride 1, padding 1;
 * with s->up == 2 of x upsampled (nearest, x2) as it is read (sub-pixel
 * phases: ldm_wg_core_shape); scratch ldm_winograd_scratch_bytes
 * (kernel_sizes.h). */
void ldm_conv3x3_winograd(const LdmConvShape *s, const float *x, LdmW w, const LdmEpilogue *ep, float *y,
                          float *scratch);

/* ---- attention (kernels_attention.c) ------------------------------------------
 * y[b, i, h*dv + j] = sum_k softmax_k(scale * q[b,i,h*d:] . k[b,k,h*d:] [+causal]) v[b,k,h*dv + j]
 * for H heads of contiguous channels; q/k/v/y rows have the given strides
 * (in floats) so q, k and v may be column slices of one fused qkv buffer.
 * Flash-attention scheme: tiles of queries against tiles of keys with an
 * online softmax; the full score matrix is never stored. */
/* LdmAttnShape and ldm_attention_scratch_bytes: kernel_sizes.h */
void ldm_attention(const LdmAttnShape *s, const float *q, const float *k, const float *v, float *y, float *scratch);

#endif
