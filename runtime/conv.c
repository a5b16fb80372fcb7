/*
 * conv.c - the convolution dispatcher for generated code (see kernels.h):
 * im2col / pointwise convolutions as GEMMs (kernels_gemm.c), 3x3 ones by
 * Winograd (kernels_winograd.c), and the direct convolution of a network's
 * last, few-channel layer. Epilogues (bias, per-sample row add, residual)
 * are folded into the GEMM by initialising y with them and accumulating;
 * a fused ReLU is then one pass over y (Winograd applies it in registers
 * as it writes y).
 * The scratch is cut as kernel_sizes.h sizes it for the compiler.
 */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "microkernel.h"
#include "util.h"

/* ---- convolution -------------------------------------------------------------- */

/* Output rows per im2col tile (ldm_im2col_rows) and whether all samples
 * go into one GEMM (ldm_im2col_batched): kernel_sizes.h, which also sizes
 * the scratch from them (ldm_conv_scratch_bytes). */

/* Rows [r0, r0+rows) of the im2col matrix of one sample into col (row k of
 * col has stride ldc and holds rows*WO values starting at column c0). */
static void im2col_rows_into(const LdmConvShape *s, const float *xn, int r0, int rows, float *col, long ldc, long c0) {
    long HW = (long)s->H * s->W;
    int K = s->C * s->KH * s->KW;
#pragma omp parallel for schedule(static)
    for (int k = 0; k < K; k++) {
        int c = k / (s->KH * s->KW), ky = k / s->KW % s->KH, kx = k % s->KW;
        const float *xc = xn + (size_t)c * HW;
        float *row = col + (size_t)k * ldc + c0;
        for (int r = 0; r < rows; r++) {
            int iy = (r0 + r) * s->stride_h - s->pad_t + ky;
            float *dst = row + (size_t)r * s->WO;
            if (iy < 0 || iy >= s->H) {
                memset(dst, 0, (size_t)s->WO * sizeof *dst);
                continue;
            }
            const float *src = xc + (size_t)iy * s->W;
            if (s->stride_w == 1) {
                /* contiguous run with zero borders */
                int ox0 = s->pad_l - kx > 0 ? s->pad_l - kx : 0;
                int ox1 = s->W + s->pad_l - kx < s->WO ? s->W + s->pad_l - kx : s->WO;
                for (int ox = 0; ox < ox0 && ox < s->WO; ox++) dst[ox] = 0.0f;
                if (ox1 > ox0) memcpy(dst + ox0, src + ox0 - s->pad_l + kx, (size_t)(ox1 - ox0) * sizeof *dst);
                for (int ox = ox1 > ox0 ? ox1 : ox0; ox < s->WO; ox++) dst[ox] = 0.0f;
            } else {
                for (int ox = 0; ox < s->WO; ox++) {
                    int ix = ox * s->stride_w - s->pad_l + kx;
                    dst[ox] = (ix >= 0 && ix < s->W) ? src[ix] : 0.0f;
                }
            }
        }
    }
}

/* y[n] = bias + rowadd[n] + residual[n] (the GEMM then accumulates onto it). */
static int epilogue_init(const LdmConvShape *s, const LdmEpilogue *ep, float *y) {
    if (!ep || (!ep->bias && !ep->rowadd && !ep->residual)) return 0;
    long P = (long)s->HO * s->WO;
#pragma omp parallel for collapse(2) if ((long)s->N * s->O * P > 32768)
    for (int n = 0; n < s->N; n++)
        for (int o = 0; o < s->O; o++) {
            float c = (ep->bias ? ep->bias[o] : 0.0f) + (ep->rowadd ? ep->rowadd[(size_t)n * s->O + o] : 0.0f);
            float *yr = y + ((size_t)n * s->O + o) * P + (size_t)n * s->y_gap;
            if (ep->residual) {
                const float *r = ep->residual + ((size_t)n * s->O + o) * P;
                for (long p = 0; p < P; p++) yr[p] = r[p] + c;
            } else {
                for (long p = 0; p < P; p++) yr[p] = c;
            }
        }
    return 1;
}

/* ---- direct convolution: few output channels ------------------------------------ */

/* 8 inputs of row xr from column ix (zero outside [0, W)). */
static inline __m256 load_row8(const float *xr, int ix, int W) {
    if (ix >= 0 && ix + 8 <= W) return _mm256_loadu_ps(xr + ix);
    const __m256i lane = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(ix));
    const __m256i in = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), lane),
                                           _mm256_cmpgt_epi32(_mm256_set1_epi32(W), lane));
    return _mm256_maskload_ps(xr + ix, in); /* masked-off lanes are not read */
}

/* Output row oy of the rows copied at xn (channels cs floats apart, every
 * row an output row reads present, zeros above and below the image),
 * columns [ox0, ox0 + 8V), all NO output channels:
 * yr[o] += sum over c, ky, kx of w[o][c][ky][kx] xn[c][oy + ky][ix]. */
static inline __attribute__((always_inline)) void direct_block(const LdmConvShape *s, const float *xn, long cs,
                                                               const float *w, float *const *yr, int oy, int ox0,
                                                               const int NO, const int V) {
    __m256 acc[8][4];
#pragma GCC unroll 8
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
        for (int v = 0; v < V; v++) acc[o][v] = _mm256_setzero_ps();
    const long taps = (long)s->KH * s->KW;
    for (int c = 0; c < s->C; c++)
        for (int ky = 0; ky < s->KH; ky++) {
            const float *xr = xn + c * cs + (long)(oy + ky) * s->W;
            const float *wk = w + (long)c * taps + (long)ky * s->KW;
            for (int kx = 0; kx < s->KW; kx++) {
                __m256 xv[4];
#pragma GCC unroll 4
                for (int v = 0; v < V; v++) xv[v] = load_row8(xr, ox0 + 8 * v - s->pad_l + kx, s->W);
#pragma GCC unroll 8
                for (int o = 0; o < NO; o++) {
                    __m256 wv = _mm256_broadcast_ss(wk + (long)o * s->C * taps + kx);
#pragma GCC unroll 4
                    for (int v = 0; v < V; v++) acc[o][v] = _mm256_fmadd_ps(wv, xv[v], acc[o][v]);
                }
            }
        }
#pragma GCC unroll 8
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
        for (int v = 0; v < V; v++) {
            float *d = yr[o] + ox0 + 8 * v;
            _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), acc[o][v]));
        }
}

/* The same for one output pixel (the right edge of rows not a multiple of 8). */
static void direct_pixel(const LdmConvShape *s, const float *xn, long cs, const float *w, float *const *yr, int oy,
                         int ox) {
    const long taps = (long)s->KH * s->KW;
    for (int o = 0; o < s->O; o++) {
        float a = 0.0f;
        for (int c = 0; c < s->C; c++)
            for (int ky = 0; ky < s->KH; ky++)
                for (int kx = 0; kx < s->KW; kx++) {
                    int ix = ox - s->pad_l + kx;
                    if (ix >= 0 && ix < s->W) a += w[((long)o * s->C + c) * taps + ky * s->KW + kx] * xn[c * cs + (long)(oy + ky) * s->W + ix];
                }
        yr[o][ox] += a;
    }
}

/* Output row oy in blocks of V vectors, then single vectors; returns the
 * first column left (fewer than 8). NO and V are constants at each call,
 * so every block is specialised. */
static inline __attribute__((always_inline)) int direct_row(const LdmConvShape *s, const float *xn, long cs,
                                                            const float *w, float *const *yr, int oy, const int NO,
                                                            const int V) {
    int ox = 0;
    for (; ox + 8 * V <= s->WO; ox += 8 * V) direct_block(s, xn, cs, w, yr, oy, ox, NO, V);
    for (; ox + 8 <= s->WO; ox += 8) direct_block(s, xn, cs, w, yr, oy, ox, NO, 1);
    return ox;
}

#ifdef __AVX512F__
/* With AVX-512: 16-pixel vectors and up to 32 registers, so a block holds
 * twice the pixels (a row's ragged end is one masked vector, not single
 * pixels). The VAE decoder's and TAESD's last layers (3 outputs at
 * 512x512) ran at 40-50 GFLOP/s with 8-pixel vectors. */

/* 16 inputs of row xr from column ix (zero outside [0, W)). */
static inline __m512 load_row16(const float *xr, int ix, int W) {
    if (ix >= 0 && ix + 16 <= W) return _mm512_loadu_ps(xr + ix);
    __mmask16 in = 0;
    for (int l = 0; l < 16; l++) in |= (__mmask16)((ix + l >= 0 && ix + l < W) << l);
    return _mm512_maskz_loadu_ps(in, xr + ix); /* masked-off lanes are not read */
}

/* direct_block with 16-pixel vectors; the columns at and past WO (a
 * ragged end) are neither computed into y nor touched. */
static inline __attribute__((always_inline)) void direct_block16(const LdmConvShape *s, const float *xn, long cs,
                                                                 const float *w, float *const *yr, int oy, int ox0,
                                                                 const int NO, const int V) {
    __m512 acc[8][4];
#pragma GCC unroll 8
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
        for (int v = 0; v < V; v++) acc[o][v] = _mm512_setzero_ps();
    const long taps = (long)s->KH * s->KW;
    for (int c = 0; c < s->C; c++)
        for (int ky = 0; ky < s->KH; ky++) {
            const float *xr = xn + c * cs + (long)(oy + ky) * s->W;
            const float *wk = w + (long)c * taps + (long)ky * s->KW;
            for (int kx = 0; kx < s->KW; kx++) {
                __m512 xv[4];
#pragma GCC unroll 4
                for (int v = 0; v < V; v++) xv[v] = load_row16(xr, ox0 + 16 * v - s->pad_l + kx, s->W);
#pragma GCC unroll 8
                for (int o = 0; o < NO; o++) {
                    __m512 wv = _mm512_set1_ps(wk[(long)o * s->C * taps + kx]);
#pragma GCC unroll 4
                    for (int v = 0; v < V; v++) acc[o][v] = _mm512_fmadd_ps(wv, xv[v], acc[o][v]);
                }
            }
        }
#pragma GCC unroll 4
    for (int v = 0; v < V; v++) {
        const int left = s->WO - (ox0 + 16 * v);
        const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (left > 0 ? left : 0)) - 1);
#pragma GCC unroll 8
        for (int o = 0; o < NO; o++) {
            float *d = yr[o] + ox0 + 16 * v;
            _mm512_mask_storeu_ps(d, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, d), acc[o][v]));
        }
    }
}

/* direct_block16 for the two output rows oy and oy + 1 at once (yr and
 * yq): each input row loaded feeds both rows it falls in, so a vector load
 * feeds up to 2 NO FMAs instead of NO (for at most 4 outputs, whose
 * accumulators for two rows fit the registers). */
static inline __attribute__((always_inline)) void direct_block16x2(const LdmConvShape *s, const float *xn, long cs,
                                                                   const float *w, float *const *yr,
                                                                   float *const *yq, int oy, int ox0, const int NO,
                                                                   const int V) {
    __m512 acc[2][4][4];
#pragma GCC unroll 2
    for (int q = 0; q < 2; q++)
#pragma GCC unroll 4
        for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
            for (int v = 0; v < V; v++) acc[q][o][v] = _mm512_setzero_ps();
    const long taps = (long)s->KH * s->KW;
    for (int c = 0; c < s->C; c++)
        for (int r = 0; r <= s->KH; r++) { /* input row oy + r: ky = r for row oy, r - 1 for row oy + 1 */
            const float *xr = xn + c * cs + (long)(oy + r) * s->W;
            const float *wk = w + (long)c * taps;
            for (int kx = 0; kx < s->KW; kx++) {
                __m512 xv[4];
#pragma GCC unroll 4
                for (int v = 0; v < V; v++) xv[v] = load_row16(xr, ox0 + 16 * v - s->pad_l + kx, s->W);
                if (r < s->KH)
#pragma GCC unroll 4
                    for (int o = 0; o < NO; o++) {
                        __m512 wv = _mm512_set1_ps(wk[(long)o * s->C * taps + (long)r * s->KW + kx]);
#pragma GCC unroll 4
                        for (int v = 0; v < V; v++) acc[0][o][v] = _mm512_fmadd_ps(wv, xv[v], acc[0][o][v]);
                    }
                if (r > 0)
#pragma GCC unroll 4
                    for (int o = 0; o < NO; o++) {
                        __m512 wv = _mm512_set1_ps(wk[(long)o * s->C * taps + (long)(r - 1) * s->KW + kx]);
#pragma GCC unroll 4
                        for (int v = 0; v < V; v++) acc[1][o][v] = _mm512_fmadd_ps(wv, xv[v], acc[1][o][v]);
                    }
            }
        }
#pragma GCC unroll 4
    for (int v = 0; v < V; v++) {
        const int left = s->WO - (ox0 + 16 * v);
        const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (left > 0 ? left : 0)) - 1);
#pragma GCC unroll 2
        for (int q = 0; q < 2; q++)
#pragma GCC unroll 4
            for (int o = 0; o < NO; o++) {
                float *d = (q ? yq : yr)[o] + ox0 + 16 * v;
                _mm512_mask_storeu_ps(d, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, d), acc[q][o][v]));
            }
    }
}

/* Output rows oy and oy + 1, as direct_row16. */
static inline __attribute__((always_inline)) void direct_row16x2(const LdmConvShape *s, const float *xn, long cs,
                                                                 const float *w, float *const *yr, float *const *yq,
                                                                 int oy, const int NO, const int V) {
    int ox = 0;
    for (; ox + 16 * V <= s->WO; ox += 16 * V) direct_block16x2(s, xn, cs, w, yr, yq, oy, ox, NO, V);
    for (; ox < s->WO; ox += 16) direct_block16x2(s, xn, cs, w, yr, yq, oy, ox, NO, 1);
}

/* Output row oy: blocks of V vectors, then single (the last maybe masked)
 * ones; returns WO (no column left). */
static inline __attribute__((always_inline)) int direct_row16(const LdmConvShape *s, const float *xn, long cs,
                                                              const float *w, float *const *yr, int oy, const int NO,
                                                              const int V) {
    int ox = 0;
    for (; ox + 16 * V <= s->WO; ox += 16 * V) direct_block16(s, xn, cs, w, yr, oy, ox, NO, V);
    for (; ox < s->WO; ox += 16) direct_block16(s, xn, cs, w, yr, oy, ox, NO, 1);
    return s->WO;
}
#endif

#define DIRECT_BAND 8            /* output rows per work item of conv_direct */
#define DIRECT_COPY_BYTES (384 << 10) /* a band's copied input rows, at most (a chunk of channels) */

/* y (+)= conv(x, w) for at most 8 output channels, stride 1: every band of
 * DIRECT_BAND output rows of every sample is a work item; 8-pixel vectors
 * along a row, all output channels at once, so each input vector loaded
 * feeds O FMAs. The input rows a band reads (KH - 1 more than the band,
 * zeros outside the image) are first copied side by side, channels
 * (rows W + 16) floats apart: in x they are H W apart, for the VAE's last
 * layer 256 KB, so the 3 x 128 rows of an output row fell into the same
 * few cache sets and every load came from L3 (10 GFLOP/s). The copy is
 * made for a chunk of channels at a time, at most DIRECT_COPY_BYTES, so
 * that it stays in a core's L2 cache with the band's output rows (TAESD's
 * last layer: 64 channels of 512 columns, 1.3 MB a band in one piece).
 * The weights are repacked chunk by chunk, [O][chunk][KH KW] each, so a
 * chunk is a convolution of its own. With the two-row blocks
 * (direct_block16x2) that layer went from 20.5 to 17.4 ms on one thread
 * (Zen 4); most of what is left is reading its 67 MB input. */
static void conv_direct(const LdmConvShape *s, const float *x, LdmW w, float *y, int acc) {
    const long P = (long)s->HO * s->WO, HW = (long)s->H * s->W;
    const int rows = DIRECT_BAND + s->KH - 1, bands = (s->HO + DIRECT_BAND - 1) / DIRECT_BAND;
    const long cs = (long)rows * s->W + 16; /* channel stride of the copy */
    const long taps = (long)s->KH * s->KW;
    long cc = DIRECT_COPY_BYTES / (cs * (long)sizeof(float));
    if (cc < 1) cc = 1;
    if (cc > s->C) cc = s->C;
    const int chunk = (int)cc;
    const size_t nw = (size_t)s->O * s->C * taps;
    float *wf = ldm_aligned_alloc(nw * sizeof *wf);
    for (int c0 = 0; c0 < s->C; c0 += chunk) { /* [O][C][taps] -> chunks of [O][n][taps], widened */
        const int n = s->C - c0 < chunk ? s->C - c0 : chunk;
        for (int o = 0; o < s->O; o++)
            ldm_w_widen(w, ((size_t)o * s->C + c0) * taps, (size_t)n * taps,
                        wf + (size_t)c0 * s->O * taps + (size_t)o * n * taps);
    }
#pragma omp parallel if ((long)s->N * P * s->C > 65536)
    {
        float *xs = ldm_aligned_alloc((size_t)chunk * cs * sizeof *xs);
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int n = 0; n < s->N; n++)
            for (int band = 0; band < bands; band++) {
                const int oy0 = band * DIRECT_BAND, nb = s->HO - oy0 < DIRECT_BAND ? s->HO - oy0 : DIRECT_BAND;
                for (int c0 = 0; c0 < s->C; c0 += chunk) {
                    LdmConvShape sc = *s;
                    sc.C = s->C - c0 < chunk ? s->C - c0 : chunk;
                    const float *xn = x + ((size_t)n * s->C + c0) * HW, *wc = wf + (size_t)c0 * s->O * taps;
                    for (int c = 0; c < sc.C; c++)
                        for (int r = 0; r < nb + s->KH - 1; r++) {
                            const int iy = oy0 - s->pad_t + r;
                            float *d = xs + (size_t)c * cs + (size_t)r * s->W;
                            if (iy >= 0 && iy < s->H) memcpy(d, xn + (size_t)c * HW + (size_t)iy * s->W, (size_t)s->W * sizeof *d);
                            else memset(d, 0, (size_t)s->W * sizeof *d);
                        }
                    for (int oy = 0; oy < nb; oy++) {
                        float *yr[8];
                        for (int o = 0; o < s->O; o++) {
                            yr[o] = y + (size_t)n * (s->O * P + s->y_gap) + (size_t)o * P + (size_t)(oy0 + oy) * s->WO;
                            if (!acc && c0 == 0) memset(yr[o], 0, (size_t)s->WO * sizeof(float));
                        }
                        int ox;
#ifdef __AVX512F__
                        if (oy + 1 < nb && s->O <= 4) { /* two rows at once */
                            float *yq[8];
                            for (int o = 0; o < s->O; o++) {
                                yq[o] = yr[o] + s->WO;
                                if (!acc && c0 == 0) memset(yq[o], 0, (size_t)s->WO * sizeof(float));
                            }
                            switch (s->O) {
                            case 1: direct_row16x2(&sc, xs, cs, wc, yr, yq, oy, 1, 4); break;
                            case 2: direct_row16x2(&sc, xs, cs, wc, yr, yq, oy, 2, 4); break;
                            case 3: direct_row16x2(&sc, xs, cs, wc, yr, yq, oy, 3, 4); break;
                            default: direct_row16x2(&sc, xs, cs, wc, yr, yq, oy, 4, 3); break;
                            }
                            oy++;
                            continue;
                        }
                        switch (s->O) { /* vectors per block: as many as the 32 registers hold */
                        case 1: ox = direct_row16(&sc, xs, cs, wc, yr, oy, 1, 4); break;
                        case 2: ox = direct_row16(&sc, xs, cs, wc, yr, oy, 2, 4); break;
                        case 3: ox = direct_row16(&sc, xs, cs, wc, yr, oy, 3, 4); break;
                        case 4: ox = direct_row16(&sc, xs, cs, wc, yr, oy, 4, 4); break;
                        case 5: ox = direct_row16(&sc, xs, cs, wc, yr, oy, 5, 3); break;
                        case 6: ox = direct_row16(&sc, xs, cs, wc, yr, oy, 6, 3); break;
                        case 7: ox = direct_row16(&sc, xs, cs, wc, yr, oy, 7, 2); break;
                        default: ox = direct_row16(&sc, xs, cs, wc, yr, oy, 8, 2); break;
                        }
#else
                        switch (s->O) { /* vectors per block: as many as the 16 registers hold */
                        case 1: ox = direct_row(&sc, xs, cs, wc, yr, oy, 1, 4); break;
                        case 2: ox = direct_row(&sc, xs, cs, wc, yr, oy, 2, 4); break;
                        case 3: ox = direct_row(&sc, xs, cs, wc, yr, oy, 3, 3); break;
                        case 4: ox = direct_row(&sc, xs, cs, wc, yr, oy, 4, 2); break;
                        case 5: ox = direct_row(&sc, xs, cs, wc, yr, oy, 5, 2); break;
                        case 6: ox = direct_row(&sc, xs, cs, wc, yr, oy, 6, 2); break;
                        case 7: ox = direct_row(&sc, xs, cs, wc, yr, oy, 7, 1); break;
                        default: ox = direct_row(&sc, xs, cs, wc, yr, oy, 8, 1); break;
                        }
#endif
                        for (; ox < s->WO; ox++) direct_pixel(&sc, xs, cs, wc, yr, oy, ox);
                    }
                }
            }
        free(xs);
    }
    free(wf);
}

/* y = max(y, 0) (as the relu op: NaN and -0 become +0). */
static void relu_inplace(const LdmConvShape *s, float *y) {
    long len = (long)s->O * s->HO * s->WO;
    for (int n = 0; n < s->N; n++) {
        float *yn = y + (size_t)n * (len + s->y_gap);
#pragma omp parallel for schedule(static) if (len > 32768)
        for (long i = 0; i < len; i++) yn[i] = yn[i] > 0.0f ? yn[i] : 0.0f;
    }
}

static void conv2d_sums(const LdmConvShape *s, int algo, const float *x, LdmW w, const LdmEpilogue *ep, float *y,
                        float *scratch);

void ldm_conv2d(const LdmConvShape *s, int algo, const float *x, LdmW w, const LdmEpilogue *ep, float *y,
                float *scratch) {
    if (w.layout != LDM_WL_ROWS && w.layout != (algo == LDM_CONV_IM2COL || algo == LDM_CONV_POINTWISE ? LDM_WL_APANELS : -1))
        ldm_internal_error("ldm_conv2d: algorithm %d cannot read a weight in layout %d", algo, w.layout);
    if (s->up && algo != LDM_CONV_WINOGRAD)
        ldm_internal_error("ldm_conv2d: an upsampling prologue needs the Winograd algorithm, not %d", algo);
    if (algo == LDM_CONV_WINOGRAD) { /* the whole epilogue, ReLU included, in the output transform */
        ldm_conv3x3_winograd(s, x, w, ep, y, scratch);
        return;
    }
    conv2d_sums(s, algo, x, w, ep, y, scratch);
    if (ep && ep->relu) relu_inplace(s, y);
}

/* y = conv(x, w) + bias + rowadd + residual, every algorithm but Winograd. */
static void conv2d_sums(const LdmConvShape *s, int algo, const float *x, LdmW w, const LdmEpilogue *ep, float *y,
                        float *scratch) {
    int acc = epilogue_init(s, ep, y);
    if (algo == LDM_CONV_DIRECT) {
        conv_direct(s, x, w, y, acc);
        return;
    }
    long P = (long)s->HO * s->WO, HW = (long)s->H * s->W;
    int K = s->C * s->KH * s->KW;
    if (algo == LDM_CONV_IM2COL && ldm_im2col_batched(s)) {
        /* col[K, N*P] for all samples, one GEMM into prod[O, N*P], then
         * scattered to y[N, O, P]. The GEMM accumulates onto the epilogue
         * gathered into prod first, exactly as the per-sample path below
         * accumulates onto y: a sample's result is then the same bits
         * whether it is computed alone (N = 1 is never batched) or in a
         * batch (adding the epilogue after the product rounded differently
         * once K spans several GEMM blocks). */
        long cols = (long)s->N * P;
        float *prod = scratch + (size_t)K * cols;
        for (int n = 0; n < s->N; n++) im2col_rows_into(s, x + (size_t)n * s->C * HW, 0, s->HO, scratch, cols, n * P);
        if (acc) {
#pragma omp parallel for collapse(2)
            for (int n = 0; n < s->N; n++)
                for (int o = 0; o < s->O; o++)
                    memcpy(prod + (size_t)o * cols + (size_t)n * P, y + ((size_t)n * s->O + o) * P + (size_t)n * s->y_gap,
                           (size_t)P * sizeof *prod);
        }
        ldm_gemm_wl(s->O, (int)cols, K, w, 0, K, scratch, (int)cols, prod, (int)cols, acc);
#pragma omp parallel for collapse(2)
        for (int n = 0; n < s->N; n++)
            for (int o = 0; o < s->O; o++)
                memcpy(y + ((size_t)n * s->O + o) * P + (size_t)n * s->y_gap, prod + (size_t)o * cols + (size_t)n * P,
                       (size_t)P * sizeof *y);
        return;
    }
    for (int n = 0; n < s->N; n++) {
        const float *xn = x + (size_t)n * s->C * HW;
        float *yn = y + (size_t)n * (s->O * P + s->y_gap);
        if (algo == LDM_CONV_POINTWISE) {
            ldm_gemm_wl(s->O, (int)P, s->C, w, 0, s->C, xn, (int)P, yn, (int)P, acc);
            continue;
        }
        int R = ldm_im2col_rows(s);
        for (int r0 = 0; r0 < s->HO; r0 += R) {
            int rows = s->HO - r0 < R ? s->HO - r0 : R;
            int tp = rows * s->WO;
            im2col_rows_into(s, xn, r0, rows, scratch, tp, 0);
            ldm_gemm_wl(s->O, tp, K, w, 0, K, scratch, tp, yn + (size_t)r0 * s->WO, (int)P, acc);
        }
    }
}
