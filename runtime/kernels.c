/*
 * kernels.c - convolution by im2col / pointwise GEMM, row statistics and
 * GEGLU for generated code (see kernels.h). Epilogues (bias, per-sample row
 * add, residual) are folded into the GEMM by initialising C with them and
 * accumulating; the GEMM itself is in kernels_gemm.c.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "microkernel.h"
#include "util.h"

void openblas_set_num_threads(int n);


void ldm_kernels_init(void) { openblas_set_num_threads(1); }

/* ---- weights -------------------------------------------------------------- */

void ldm_w_to_f32(LdmW w, size_t off, size_t n, float *dst) {
    if (w.type == LDM_W_F32) {
        memcpy(dst, (const float *)w.p + off, n * sizeof *dst);
        return;
    }
    const uint16_t *s = (const uint16_t *)w.p + off;
    size_t i = 0;
    if (w.type == LDM_W_F16) {
#ifdef __F16C__
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
#endif
        for (; i < n; i++) {
            /* scalar IEEE half -> float */
            uint16_t h = s[i];
            uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
            if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);
            else if (exp) bits = sign | ((exp + 112) << 23) | (man << 13);
            else if (!man) bits = sign;
            else {
                int e = -1;
                do { man <<= 1; e++; } while (!(man & 0x400));
                bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
            }
            memcpy(dst + i, &bits, 4);
        }
    } else {
        /* bfloat16: the top half of a float32 */
        for (; i + 8 <= n; i += 8) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
        for (; i < n; i++) {
            uint32_t bits = (uint32_t)s[i] << 16;
            memcpy(dst + i, &bits, 4);
        }
    }
}

/* ---- row statistics and GEGLU ----------------------------------------------------- */

static inline double hsum4d(__m256d v) {
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

/* Sum of n floats (and of (x - c)^2 when sq), for GroupNorm and LayerNorm:
 * float vectors over blocks of 512, added up in double; the rest (a whole
 * LayerNorm row of 320) in vectors of 4 doubles, never one double add
 * after the other (that latency chain cost a quarter of the time of the
 * 8192x320x320 GEMM a LayerNorm feeds). */
static double sum_of(const float *x, long n, int sq, double c) {
    double total = 0.0;
    __m256 cv = _mm256_set1_ps((float)c);
    long i = 0;
    for (; i + 512 <= n; i += 512) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (long j = i; j < i + 512; j += 32) {
            __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
            __m256 v2 = _mm256_loadu_ps(x + j + 16), v3 = _mm256_loadu_ps(x + j + 24);
            if (sq) {
                v0 = _mm256_sub_ps(v0, cv), v1 = _mm256_sub_ps(v1, cv), v2 = _mm256_sub_ps(v2, cv), v3 = _mm256_sub_ps(v3, cv);
                a0 = _mm256_fmadd_ps(v0, v0, a0), a1 = _mm256_fmadd_ps(v1, v1, a1);
                a2 = _mm256_fmadd_ps(v2, v2, a2), a3 = _mm256_fmadd_ps(v3, v3, a3);
            } else {
                a0 = _mm256_add_ps(a0, v0), a1 = _mm256_add_ps(a1, v1), a2 = _mm256_add_ps(a2, v2), a3 = _mm256_add_ps(a3, v3);
            }
        }
        float f[8];
        _mm256_storeu_ps(f, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (int k = 0; k < 8; k++) total += f[k];
    }
    const __m256d cd = _mm256_set1_pd(c);
    __m256d s0 = _mm256_setzero_pd(), s1 = s0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        if (sq) {
            d0 = _mm256_sub_pd(d0, cd), d1 = _mm256_sub_pd(d1, cd);
            s0 = _mm256_fmadd_pd(d0, d0, s0), s1 = _mm256_fmadd_pd(d1, d1, s1);
        } else {
            s0 = _mm256_add_pd(s0, d0), s1 = _mm256_add_pd(s1, d1);
        }
    }
    total += hsum4d(_mm256_add_pd(s0, s1));
    for (; i < n; i++) total += sq ? ((double)x[i] - c) * ((double)x[i] - c) : (double)x[i];
    return total;
}

void ldm_row_stats(int M, int D, const float *x, double eps, float *mean, float *rstd) {
#pragma omp parallel for if ((long)M * D > 32768)
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * D;
        const double mu = sum_of(r, D, 0, 0.0) / D;
        mean[m] = (float)mu;
        rstd[m] = (float)(1.0 / sqrt(sum_of(r, D, 1, mu) / D + eps));
    }
}

/* erf(x), float: x P(x^2) / Q(x^2) on [-4, 4] (a rational minimax fit; at
 * most 3.3e-7 from the correctly rounded value), +-1 beyond. */
static inline __m256 erf8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-4.0f)), _mm256_set1_ps(4.0f));
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-2.72614225801306e-10f);
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2.77068142495902e-08f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-2.10102402082508e-06f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-5.69250639462346e-05f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-7.34990630326855e-04f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-2.95459980854025e-03f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-1.60960333262415e-02f));
    p = _mm256_mul_ps(p, x);
    __m256 q = _mm256_set1_ps(-1.45660718464996e-05f);
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-2.13374055278905e-04f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-1.68282697438203e-03f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-7.37332916720468e-03f));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(-1.42647390514189e-02f));
    return _mm256_div_ps(p, q);
}

/* exp(x), float: Cody-Waite reduction by ln 2 and a degree-6 polynomial
 * (the Cephes expf coefficients, within 2 ulp) for x in [-87.3, 88.0],
 * where 2^n is a normal float; clamped there outside (1.2e-38, 1.6e38). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
    /* n in [-126, 127]: 2^n from the exponent bits */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

void ldm_group_norm(int N, int C, long S, int G, double eps, const float *x, const float *w, const float *b, float *y,
                    int silu) {
    const int CG = C / G;
    const long n_el = (long)CG * S;
#pragma omp parallel for collapse(2) schedule(dynamic) if ((long)N * C * S > 32768)
    for (int n = 0; n < N; n++)
        for (int g = 0; g < G; g++) {
            const size_t base = ((size_t)n * C + (size_t)g * CG) * (size_t)S;
            const float *xs = x + base;
            float *ys = y + base;
            const double mean = sum_of(xs, n_el, 0, 0.0) / (double)n_el;
            const double rstd = 1.0 / sqrt(sum_of(xs, n_el, 1, mean) / (double)n_el + eps);
            for (int c = 0; c < CG; c++) {
                const int ch = g * CG + c;
                const float scale = (float)(w[ch] * rstd), shift = (float)(b[ch] - mean * w[ch] * rstd);
                const float *xc = xs + (size_t)c * S;
                float *yc = ys + (size_t)c * S;
                const __m256 sv = _mm256_set1_ps(scale), hv = _mm256_set1_ps(shift), one = _mm256_set1_ps(1.0f);
                long i = 0;
                for (; i + 8 <= S; i += 8) {
                    __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(xc + i), sv, hv);
                    if (silu) v = _mm256_div_ps(v, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), v))));
                    _mm256_storeu_ps(yc + i, v);
                }
                for (; i < S; i++) {
                    const float v = xc[i] * scale + shift;
                    yc[i] = silu ? v / (1.0f + expf(-v)) : v;
                }
            }
        }
}

void ldm_geglu(int M, int D, const float *x, long ldx, const float *bias, float *y) {
#pragma omp parallel for if ((long)M * D > 32768)
    for (int m = 0; m < M; m++) {
        const float *a = x + (size_t)m * ldx, *g = a + D;
        float *yr = y + (size_t)m * D;
        int d = 0;
        for (; d + 8 <= D; d += 8) {
            __m256 av = _mm256_loadu_ps(a + d), gv = _mm256_loadu_ps(g + d);
            if (bias) av = _mm256_add_ps(av, _mm256_loadu_ps(bias + d)), gv = _mm256_add_ps(gv, _mm256_loadu_ps(bias + D + d));
            __m256 e = erf8(_mm256_mul_ps(gv, _mm256_set1_ps(0.70710678118654752f)));
            __m256 gelu = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), gv), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
            _mm256_storeu_ps(yr + d, _mm256_mul_ps(av, gelu));
        }
        for (; d < D; d++) {
            const float av = a[d] + (bias ? bias[d] : 0.0f), gv = g[d] + (bias ? bias[D + d] : 0.0f);
            yr[d] = av * (0.5f * gv * (1.0f + erff(gv * 0.70710678118654752f)));
        }
    }
}

/* ---- transpose ------------------------------------------------------------------ */

/* In blocks of 8 x 8 (transpose8) with a scalar edge, split over the
 * threads by blocks of 8 rows of x, so that each thread writes whole
 * 32-byte pieces of y's rows and reads whole ones of x's. The naive loop
 * read one float per cache line of x and ran at a quarter of this. */
void ldm_transpose(int B, int R, int C, const float *x, float *y) {
    const long rb = (R + 7) / 8, items = (long)B * rb;
#pragma omp parallel for schedule(static) if ((long)B * R * C > 32768)
    for (long it = 0; it < items; it++) {
        const int b = (int)(it / rb), r0 = (int)(it % rb) * 8;
        const float *xb = x + (size_t)b * R * C;
        float *yb = y + (size_t)b * R * C;
        int c0 = 0;
        if (r0 + 8 <= R)
            for (; c0 + 8 <= C; c0 += 8) {
                __m256 v[8];
                for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps(xb + (size_t)(r0 + i) * C + c0);
                transpose8(v);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(yb + (size_t)(c0 + i) * R + r0, v[i]);
            }
        const int r1 = r0 + 8 < R ? r0 + 8 : R;
        for (int c = c0; c < C; c++)
            for (int r = r0; r < r1; r++) yb[(size_t)c * R + r] = xb[(size_t)r * C + c];
    }
}

/* ---- convolution -------------------------------------------------------------- */

/* Output rows per im2col tile: the column block stays around 8 MB. */
static int im2col_rows(const LdmConvShape *s) {
    long k = (long)s->C * s->KH * s->KW;
    long rows = (1L << 21) / (k * s->WO);
    if (rows < 1) rows = 1;
    if (rows > s->HO) rows = s->HO;
    return (int)rows;
}

/* Small outputs (the UNet's lowest levels): the columns of all samples go
 * into one GEMM, so the weights are read (and widened) once per call, not
 * once per sample. Worth it while the columns fit in about 16 MB. */
static int im2col_batched(const LdmConvShape *s) {
    long k = (long)s->C * s->KH * s->KW, cols = (long)s->N * s->HO * s->WO;
    return s->N > 1 && (long)s->HO * s->WO <= 256 && k * cols <= (1L << 22);
}

size_t ldm_conv_scratch_bytes(const LdmConvShape *s, int algo) {
    switch (algo) {
    case LDM_CONV_POINTWISE:
    case LDM_CONV_DIRECT: return 0;
    case LDM_CONV_WINOGRAD: return ldm_winograd_scratch_bytes(s);
    default:
        if (im2col_batched(s)) /* columns of all samples + the product before it is scattered */
            return ((size_t)s->C * s->KH * s->KW + (size_t)s->O) * (size_t)s->N * s->HO * s->WO * sizeof(float);
        return (size_t)s->C * s->KH * s->KW * (size_t)im2col_rows(s) * s->WO * sizeof(float);
    }
}

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

#define DIRECT_BAND 8 /* output rows per work item of conv_direct */

/* y (+)= conv(x, w) for at most 8 output channels, stride 1: every band of
 * DIRECT_BAND output rows of every sample is a work item; 8-pixel vectors
 * along a row, all output channels at once, so each input vector loaded
 * feeds O FMAs. The input rows a band reads (KH - 1 more than the band,
 * zeros outside the image) are first copied side by side, channels
 * (rows W + 16) floats apart: in x they are H W apart, for the VAE's last
 * layer 256 KB, so the 3 x 128 rows of an output row fell into the same
 * few cache sets and every load came from L3 (10 GFLOP/s). */
static void conv_direct(const LdmConvShape *s, const float *x, LdmW w, float *y, int acc) {
    const long P = (long)s->HO * s->WO, HW = (long)s->H * s->W;
    const int rows = DIRECT_BAND + s->KH - 1, bands = (s->HO + DIRECT_BAND - 1) / DIRECT_BAND;
    const long cs = (long)rows * s->W + 16; /* channel stride of the copy */
    const size_t nw = (size_t)s->O * s->C * s->KH * s->KW;
    float *wf = ldm_aligned_alloc(nw * sizeof *wf);
    ldm_w_to_f32(w, 0, nw, wf);
#pragma omp parallel if ((long)s->N * P * s->C > 65536)
    {
        float *xs = ldm_aligned_alloc((size_t)s->C * cs * sizeof *xs);
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int n = 0; n < s->N; n++)
            for (int band = 0; band < bands; band++) {
                const float *xn = x + (size_t)n * s->C * HW;
                const int oy0 = band * DIRECT_BAND, nb = s->HO - oy0 < DIRECT_BAND ? s->HO - oy0 : DIRECT_BAND;
                for (int c = 0; c < s->C; c++)
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
                        if (!acc) memset(yr[o], 0, (size_t)s->WO * sizeof(float));
                    }
                    int ox;
                    switch (s->O) { /* vectors per block: as many as the 16 registers hold */
                    case 1: ox = direct_row(s, xs, cs, wf, yr, oy, 1, 4); break;
                    case 2: ox = direct_row(s, xs, cs, wf, yr, oy, 2, 4); break;
                    case 3: ox = direct_row(s, xs, cs, wf, yr, oy, 3, 3); break;
                    case 4: ox = direct_row(s, xs, cs, wf, yr, oy, 4, 2); break;
                    case 5: ox = direct_row(s, xs, cs, wf, yr, oy, 5, 2); break;
                    case 6: ox = direct_row(s, xs, cs, wf, yr, oy, 6, 2); break;
                    case 7: ox = direct_row(s, xs, cs, wf, yr, oy, 7, 1); break;
                    default: ox = direct_row(s, xs, cs, wf, yr, oy, 8, 1); break;
                    }
                    for (; ox < s->WO; ox++) direct_pixel(s, xs, cs, wf, yr, oy, ox);
                }
            }
        free(xs);
    }
    free(wf);
}

void ldm_conv2d(const LdmConvShape *s, int algo, const float *x, LdmW w, const LdmEpilogue *ep, float *y,
                float *scratch) {
    if (w.layout != LDM_WL_ROWS && w.layout != (algo == LDM_CONV_IM2COL || algo == LDM_CONV_POINTWISE ? LDM_WL_APANELS : -1))
        ldm_internal_error("ldm_conv2d: algorithm %d cannot read a weight in layout %d", algo, w.layout);
    if (algo == LDM_CONV_WINOGRAD) {
        ldm_conv3x3_winograd(s, x, w, ep, y, scratch);
        return;
    }
    int acc = epilogue_init(s, ep, y);
    if (algo == LDM_CONV_DIRECT) {
        conv_direct(s, x, w, y, acc);
        return;
    }
    long P = (long)s->HO * s->WO, HW = (long)s->H * s->W;
    int K = s->C * s->KH * s->KW;
    if (algo == LDM_CONV_IM2COL && im2col_batched(s)) {
        /* col[K, N*P] for all samples, one GEMM into prod[O, N*P], then
         * scattered to y[N, O, P] (accumulating onto the epilogue) */
        long cols = (long)s->N * P;
        float *prod = scratch + (size_t)K * cols;
        for (int n = 0; n < s->N; n++) im2col_rows_into(s, x + (size_t)n * s->C * HW, 0, s->HO, scratch, cols, n * P);
        ldm_gemm_wl(s->O, (int)cols, K, w, 0, K, scratch, (int)cols, prod, (int)cols, 0);
#pragma omp parallel for collapse(2)
        for (int n = 0; n < s->N; n++)
            for (int o = 0; o < s->O; o++) {
                float *yr = y + ((size_t)n * s->O + o) * P + (size_t)n * s->y_gap;
                const float *pr = prod + (size_t)o * cols + (size_t)n * P;
                if (acc)
                    for (long p = 0; p < P; p++) yr[p] += pr[p];
                else
                    memcpy(yr, pr, (size_t)P * sizeof *yr);
            }
        return;
    }
    for (int n = 0; n < s->N; n++) {
        const float *xn = x + (size_t)n * s->C * HW;
        float *yn = y + (size_t)n * (s->O * P + s->y_gap);
        if (algo == LDM_CONV_POINTWISE) {
            ldm_gemm_wl(s->O, (int)P, s->C, w, 0, s->C, xn, (int)P, yn, (int)P, acc);
            continue;
        }
        int R = im2col_rows(s);
        for (int r0 = 0; r0 < s->HO; r0 += R) {
            int rows = s->HO - r0 < R ? s->HO - r0 : R;
            int tp = rows * s->WO;
            im2col_rows_into(s, xn, r0, rows, scratch, tp, 0);
            ldm_gemm_wl(s->O, tp, K, w, 0, K, scratch, tp, yn + (size_t)r0 * s->WO, (int)P, acc);
        }
    }
}
