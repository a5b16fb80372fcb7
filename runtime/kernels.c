/*
 * kernels.c - the element-wise and normalisation kernels for generated code
 * (see kernels.h): weight widening, row statistics, GroupNorm(+SiLU),
 * GEGLU and transposes. The convolutions are in conv.c, the GEMM in
 * kernels_gemm.c, Winograd in kernels_winograd.c; this file calls none of
 * them.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "microkernel.h"

void openblas_set_num_threads(int n);


void ldm_kernels_init(void) { openblas_set_num_threads(1); }

/* OpenBLAS starts its thread pool in its own constructor, from
 * OPENBLAS_NUM_THREADS; the generated code calls it from inside OpenMP
 * loops with one thread (ldm_kernels_init), so no pool is wanted at all.
 * Without this it is started anyway, and when memory is short (ulimit -v)
 * a pool thread retries its buffer allocation forever and exit() hangs
 * joining it. This constructor runs before OpenBLAS's (priority 101). */
__attribute__((constructor(101))) static void ldm_openblas_one_thread(void) {
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
}

/* ---- weights -------------------------------------------------------------- */

void ldm_w_to_f32(LdmW w, size_t off, size_t n, float *dst) { ldm_w_widen(w, off, n, dst); }

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
