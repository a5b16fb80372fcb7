/*
 * test_gemm.c - the packed GEMM (runtime/kernels_gemm.c) against a double
 * reference: every edge of its blocking (rows not a multiple of 4, columns
 * not a multiple of 8 or 24 and past one NC block, inner dimensions past
 * one KC block), every weight precision, both weight orientations,
 * accumulation and the fused LayerNorm; GEGLU's erf and GroupNorm+SiLU's
 * exp over their whole range.
 */
#include <check.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "microkernel.h"
#include "util.h"

static uint32_t rng_state = 12345;
static float frand(void) {
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* float -> storage type (round to nearest even) and back. */
static uint16_t to_half(float f, int type) {
    uint16_t h;
    if (type == LDM_W_F16) {
        h = _cvtss_sh(f, 0);
    } else {
        uint32_t b;
        memcpy(&b, &f, 4);
        b += 0x7fff + ((b >> 16) & 1);
        h = (uint16_t)(b >> 16);
    }
    return h;
}

/* n random weights of the given type; their exact float values in ref. */
static void *make_weights(size_t n, int type, double *ref) {
    if (type == LDM_W_F32) {
        float *w = malloc(n * sizeof *w);
        for (size_t i = 0; i < n; i++) ref[i] = w[i] = frand();
        return w;
    }
    uint16_t *w = malloc(n * sizeof *w);
    for (size_t i = 0; i < n; i++) {
        w[i] = to_half(frand(), type);
        float f;
        ldm_w_to_f32((LdmW){w, type, LDM_WL_ROWS}, i, 1, &f);
        ref[i] = f;
    }
    return w;
}

typedef struct GemmCase {
    int M, N, K;
} GemmCase;

static const GemmCase cases[] = {
    {1, 1, 1},    {3, 7, 5},      {4, 24, 8},    {5, 25, 9},     {130, 50, 300}, {33, 3100, 20},
    {64, 100, 520}, {200, 48, 257}, {7, 200, 64}, {1280, 16, 40}, {9, 40, 33}, {6, 88, 70}, {2, 32, 17},
    {302, 200, 520}, /* split by rows over two threads, 3 K blocks */
};
#define N_CASES (int)(sizeof cases / sizeof *cases)

/* Worst |got - want| / (sum_k |a||b| + 1) over C; float32 accumulation
 * over K terms is good to a few K * 2^-24 of that. */
static double rel_err(int M, int N, const float *got, const double *want, const double *mag) {
    double e = 0;
    for (int i = 0; i < M * N; i++) {
        double d = fabs(got[i] - want[i]) / (mag[i] + 1.0);
        if (!(d <= e)) e = d; /* NaN counts */
    }
    return e;
}

/* The weight-on-the-left form of a case: C'[N, M] = W[N, K] A^T with
 * B = A^T [K, M]: A^T, and the reference and magnitudes transposed. */
static void transposed_case(int M, int N, int K, const float *A, const double *want, const double *mag, float **At,
                            double **wt, double **mt) {
    *At = malloc((size_t)M * K * sizeof **At);
    *wt = malloc((size_t)M * N * sizeof **wt);
    *mt = malloc((size_t)M * N * sizeof **mt);
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) (*At)[(size_t)k * M + m] = A[m * K + k];
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) (*wt)[(size_t)n * M + m] = want[m * N + n], (*mt)[(size_t)n * M + m] = mag[m * N + n];
}

/* C = A x op(B) (x a weight, A activations, optionally layer-normalised) and
 * C = W x B (weight on the left), each plain and accumulating. */
START_TEST(test_gemm_vs_reference) {
    const GemmCase c = cases[_i % N_CASES];
    const int type = (_i / N_CASES) % 3, trans = (_i / N_CASES / 3) % 2, norm = (_i / N_CASES / 6) % 2;
    const int M = c.M, N = c.N, K = c.K;
    double *wref = malloc((size_t)N * K * sizeof *wref), *want = malloc((size_t)M * N * sizeof *want),
           *mag = malloc((size_t)M * N * sizeof *mag), *aref = malloc((size_t)M * K * sizeof *aref);
    float *A = malloc((size_t)M * K * sizeof *A), *C = malloc((size_t)M * N * sizeof *C), *C0 = malloc((size_t)M * N * sizeof *C0);
    void *W = make_weights((size_t)N * K, type, wref); /* [N][K] if trans, else [K][N] */
    for (int i = 0; i < M * K; i++) A[i] = frand() * 3.0f + 0.5f;
    float *gamma = malloc((size_t)K * sizeof *gamma), *beta = malloc((size_t)K * sizeof *beta);
    float *mean = malloc((size_t)M * sizeof *mean), *rstd = malloc((size_t)M * sizeof *rstd);
    for (int k = 0; k < K; k++) gamma[k] = frand(), beta[k] = frand();
    ldm_row_stats(M, K, A, 1e-5, mean, rstd);
    for (int m = 0; m < M; m++) {
        double s = 0, q = 0;
        for (int k = 0; k < K; k++) s += A[m * K + k];
        s /= K;
        for (int k = 0; k < K; k++) q += (A[m * K + k] - s) * (A[m * K + k] - s);
        double r = 1.0 / sqrt(q / K + 1e-5);
        ck_assert_msg(fabs(mean[m] - s) <= 1e-6 * (fabs(s) + 1) && fabs(rstd[m] - r) <= 1e-6 * r, "row stats of row %d", m);
        for (int k = 0; k < K; k++) aref[m * K + k] = norm ? (A[m * K + k] - s) * r * gamma[k] + beta[k] : A[m * K + k];
    }
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0, a = 0;
            for (int k = 0; k < K; k++) {
                double w = trans ? wref[(size_t)n * K + k] : wref[(size_t)k * N + n];
                s += aref[m * K + k] * w;
                a += fabs(aref[m * K + k] * w);
            }
            want[m * N + n] = s;
            mag[m * N + n] = a;
        }
    const LdmRowNorm ln = {mean, rstd, gamma, beta};
    for (int acc = 0; acc < 2; acc++) {
        for (int i = 0; i < M * N; i++) C[i] = C0[i] = acc ? frand() : NAN; /* NaN: must be overwritten */
        ldm_gemm_norm(M, N, K, A, K, norm ? &ln : NULL, (LdmW){W, type, LDM_WL_ROWS}, 0, trans ? K : N, trans, C, N, acc);
        if (acc)
            for (int i = 0; i < M * N; i++) C[i] -= C0[i];
        double e = rel_err(M, N, C, want, mag);
        ck_assert_msg(e < 1e-6, "gemm M %d N %d K %d type %d trans %d norm %d acc %d: relative error %g", M, N, K, type,
                      trans, norm, acc, e);
    }
    if (!norm && trans) {
        /* weight on the left: C'[N, M] = W[N, K] A^T, with B = A^T [K, M] */
        float *At, *Ct = malloc((size_t)M * N * sizeof *Ct);
        double *wt, *mt;
        transposed_case(M, N, K, A, want, mag, &At, &wt, &mt);
        for (int i = 0; i < M * N; i++) Ct[i] = NAN;
        ldm_gemm_wl(N, M, K, (LdmW){W, type, LDM_WL_ROWS}, 0, K, At, M, Ct, M, 0);
        double e = rel_err(N, M, Ct, wt, mt);
        ck_assert_msg(e < 1e-6, "gemm_wl M %d N %d K %d type %d: relative error %g", N, M, K, type, e);
        free(At), free(Ct), free(wt), free(mt);
    }
    free(wref), free(want), free(mag), free(aref), free(A), free(C), free(C0), free(W);
    free(gamma), free(beta), free(mean), free(rstd);
}
END_TEST

/* The product does not depend on the thread count: each element of C gets
 * the same sums in the same order whichever thread computes it. Compared
 * bit for bit with one thread on shapes that cross the block boundaries:
 * two column blocks of 3072 and several K blocks, split by rows and by
 * columns, rows not a multiple of 4. */
START_TEST(test_gemm_threads_agree) {
    static const GemmCase big[] = {{302, 3100, 520}, {1283, 40, 1000}, {130, 1283, 600}, {77, 1000, 300}, {255, 2000, 64}};
    const GemmCase c = big[_i % 5];
    const int type = (_i / 5) % 3, M = c.M, N = c.N, K = c.K;
    double *wref = malloc((size_t)N * K * sizeof *wref);
    void *W = make_weights((size_t)N * K, type, wref);
    float *A = malloc((size_t)M * K * sizeof *A), *C1 = malloc((size_t)M * N * sizeof *C1),
          *C2 = malloc((size_t)M * N * sizeof *C2);
    float *gamma = malloc((size_t)K * sizeof *gamma), *beta = malloc((size_t)K * sizeof *beta);
    float *mean = malloc((size_t)M * sizeof *mean), *rstd = malloc((size_t)M * sizeof *rstd);
    for (int i = 0; i < M * K; i++) A[i] = frand();
    for (int k = 0; k < K; k++) gamma[k] = frand(), beta[k] = frand();
    ldm_row_stats(M, K, A, 1e-5, mean, rstd);
    const LdmRowNorm ln = {mean, rstd, gamma, beta};
    const int threads = omp_get_max_threads();
    for (int v = 0; v < 3; v++) { /* linear (W^T), linear with LayerNorm, weight on the left */
        for (int t = 0; t < 2; t++) {
            float *C = t ? C2 : C1;
            omp_set_num_threads(t ? 2 : 1);
            for (int i = 0; i < M * N; i++) C[i] = NAN;
            if (v < 2) ldm_gemm_norm(M, N, K, A, K, v ? &ln : NULL, (LdmW){W, type, LDM_WL_ROWS}, 0, K, 1, C, N, 0);
            else ldm_gemm_wl(N, M, K, (LdmW){W, type, LDM_WL_ROWS}, 0, K, A, M, C, M, 0); /* A read as [K][M] */
        }
        omp_set_num_threads(threads);
        int nan = 0;
        for (int i = 0; i < M * N; i++) nan += C1[i] != C1[i];
        ck_assert_msg(!nan, "M %d N %d K %d type %d variant %d: %d elements not written", M, N, K, type, v, nan);
        ck_assert_msg(memcmp(C1, C2, (size_t)M * N * sizeof *C1) == 0,
                      "M %d N %d K %d type %d variant %d: two threads differ from one", M, N, K, type, v);
    }
    free(wref), free(W), free(A), free(C1), free(C2), free(gamma), free(beta), free(mean), free(rstd);
}
END_TEST

/* GEGLU: y = a * 0.5 g (1 + erf(g / sqrt 2)) over the range activations
 * take, against erf in double. */
START_TEST(test_geglu_erf) {
    enum { M = 3, D = 4001 };
    float *x = malloc(2 * M * D * sizeof *x), *y = malloc(M * D * sizeof *y);
    for (int m = 0; m < M; m++)
        for (int d = 0; d < D; d++) {
            x[(size_t)m * 2 * D + d] = 1.0f + 0.001f * (float)m;
            x[(size_t)m * 2 * D + D + d] = -10.0f + 20.0f * (float)d / (D - 1) + 0.0003f * (float)m;
        }
    ldm_geglu(M, D, x, 2 * D, NULL, y);
    double worst = 0;
    for (int m = 0; m < M; m++)
        for (int d = 0; d < D; d++) {
            double a = x[(size_t)m * 2 * D + d], g = x[(size_t)m * 2 * D + D + d];
            double want = a * 0.5 * g * (1.0 + erf(g / sqrt(2.0)));
            double e = fabs(y[m * D + d] - want) / (fabs(a * g) + 1.0);
            if (!(e <= worst)) worst = e;
        }
    /* the rational erf is within 3.3e-7 of erf; float rounding adds a few 1e-8 */
    ck_assert_msg(worst < 4e-7, "geglu: worst error %g relative to |a g| + 1", worst);
    free(x), free(y);
}
END_TEST

/* GroupNorm + SiLU over the whole range of float exp: one group per
 * channel pair, values spread so that the normalised ones reach +-100. */
START_TEST(test_group_norm_silu_range) {
    enum { N = 1, C = 4, S = 1001 };
    float x[C * S], y[C * S], w[C] = {40, 80, 1, 0.5f}, b[C] = {0, 10, -3, 0.25f};
    for (int c = 0; c < C; c++)
        for (int i = 0; i < S; i++) x[c * S + i] = (float)(i - 500) / 289.0f + (float)c;
    ldm_group_norm(N, C, S, 2, 1e-5, x, w, b, y, 1);
    double worst = 0;
    for (int g = 0; g < 2; g++) {
        double sum = 0, sq = 0;
        for (int i = 0; i < 2 * S; i++) sum += x[g * 2 * S + i];
        double mean = sum / (2 * S);
        for (int i = 0; i < 2 * S; i++) sq += (x[g * 2 * S + i] - mean) * (x[g * 2 * S + i] - mean);
        double rstd = 1.0 / sqrt(sq / (2 * S) + 1e-5);
        for (int i = 0; i < 2 * S; i++) {
            int c = 2 * g + i / S;
            double v = (x[g * 2 * S + i] - mean) * rstd * w[c] + b[c];
            double want = v / (1.0 + exp(-v));
            double e = fabs(y[g * 2 * S + i] - want) / (fabs(v) + 1.0);
            if (!(e <= worst)) worst = e;
        }
    }
    ck_assert_msg(worst < 1e-6, "group_norm+silu: worst error %g relative to |v| + 1", worst);
}
END_TEST

/* A weight laid out in panels at load (ldm_w_relayout, in pieces of a few
 * panels as the loader makes them) gives the product bit for bit as the
 * row-major weight does, with one thread and with two: every panel is read
 * at the place the layout puts it. Shapes with every cut of a row of
 * panels (2+2, 3+2, 4+3, a last panel past N), past one NC block of
 * columns (3080: the block ends inside the tail cut), rows not a multiple
 * of 4 and several K blocks. Cases 0..23: linear (B), 24..38: weight on the
 * left (A, as im2col and pointwise convolutions). */
static void *relayout_in_pieces(int layout, const void *w, int type, int64_t rows, int64_t cols) {
    const size_t es = type == LDM_W_F32 ? 4 : 2;
    unsigned char *d = malloc(ldm_w_layout_size(layout, rows, cols) * es);
    memset(d, 0xff, ldm_w_layout_size(layout, rows, cols) * es); /* NaN / garbage unless written */
    for (int64_t r = 0, e; r < rows; r = e) {
        e = r;
        for (int p = 0; p < 3 && e < rows; p++) e = ldm_w_panel_end(layout, rows, e);
        ldm_w_relayout(layout, (const unsigned char *)w + (size_t)(r * cols) * es, es, rows, cols, r, e, d);
    }
    return d;
}

START_TEST(test_gemm_weight_panels) {
    static const GemmCase lin[] = {{5, 8, 20},   {130, 32, 300}, {7, 56, 64},    {33, 40, 260},
                                   {2, 320, 300}, {130, 3080, 300}, {64, 3100, 40}, {300, 1283, 520}};
    static const GemmCase wl[] = {{3, 40, 9}, {4, 7, 300}, {130, 50, 64}, {1281, 32, 600}, {66, 3100, 30}};
    const int is_a = _i >= 24, type = is_a ? (_i - 24) % 3 : _i % 3;
    const GemmCase c = is_a ? wl[(_i - 24) / 3] : lin[_i / 3];
    /* the weight: [N][K] (linear: C[M][N] = A W^T) or [M][K] (C[M][N] = W B) */
    const int M = c.M, N = c.N, K = c.K, wrows = is_a ? M : N;
    double *wref = malloc((size_t)wrows * K * sizeof *wref);
    void *W = make_weights((size_t)wrows * K, type, wref);
    const int layout = is_a ? LDM_WL_APANELS : LDM_WL_BPANELS;
    void *P = relayout_in_pieces(layout, W, type, wrows, K);
    const int bn = is_a ? N : K; /* the activation: A[M][K], or B[K][N] */
    float *X = malloc((size_t)(is_a ? K : M) * bn * sizeof *X), *C0 = malloc((size_t)M * N * sizeof *C0),
          *C = malloc((size_t)M * N * sizeof *C);
    for (int i = 0; i < (is_a ? K : M) * bn; i++) X[i] = frand();
    float *gamma = malloc((size_t)K * sizeof *gamma), *beta = malloc((size_t)K * sizeof *beta);
    float *mean = malloc((size_t)M * sizeof *mean), *rstd = malloc((size_t)M * sizeof *rstd);
    for (int k = 0; k < K; k++) gamma[k] = frand(), beta[k] = frand();
    if (!is_a) ldm_row_stats(M, K, X, 1e-5, mean, rstd);
    const LdmRowNorm ln = {mean, rstd, gamma, beta};
    const int threads = omp_get_max_threads();
    for (int norm = 0; norm < (is_a ? 1 : 2); norm++)
        for (int t = 0; t < 3; t++) { /* row-major (reference), panels on 1 thread, on 2 */
            float *out = t ? C : C0;
            omp_set_num_threads(t == 1 ? 1 : 2);
            const LdmW w = {t ? P : W, type, t ? layout : LDM_WL_ROWS};
            for (int i = 0; i < M * N; i++) out[i] = NAN;
            if (is_a) ldm_gemm_wl(M, N, K, w, 0, K, X, N, out, N, 0);
            else ldm_gemm_norm(M, N, K, X, K, norm ? &ln : NULL, w, 0, K, 1, out, N, 0);
            if (t)
                ck_assert_msg(memcmp(C0, C, (size_t)M * N * sizeof *C) == 0,
                              "%s M %d N %d K %d type %d norm %d, %d thread(s): panels differ from rows",
                              is_a ? "weight on the left" : "linear", M, N, K, type, norm, t);
        }
    omp_set_num_threads(threads);
    for (int i = 0; i < M * N; i++) ck_assert_msg(C0[i] == C0[i], "element %d not written", i);
    free(wref), free(W), free(P), free(X), free(C0), free(C), free(gamma), free(beta), free(mean), free(rstd);
}
END_TEST

/* The layout's padding is zeros and every element of the weight is somewhere. */
START_TEST(test_weight_layout_cover) {
    for (int layout = LDM_WL_BPANELS; layout <= LDM_WL_APANELS; layout++)
        for (int rows = 1; rows <= 61; rows += 3) {
            const int cols = 5;
            uint16_t *w = malloc((size_t)rows * cols * sizeof *w);
            for (int i = 0; i < rows * cols; i++) w[i] = (uint16_t)(i + 1);
            const size_t n = ldm_w_layout_size(layout, rows, cols);
            uint16_t *d = relayout_in_pieces(layout, w, LDM_W_F16, rows, cols);
            int *count = calloc((size_t)rows * cols + 1, sizeof *count);
            for (size_t i = 0; i < n; i++) {
                ck_assert_msg(d[i] <= rows * cols, "layout %d rows %d: element %zu never written", layout, rows, i);
                count[d[i]]++;
            }
            ck_assert_msg(count[0] == (int)n - rows * cols, "layout %d rows %d: %d zeros of padding, expected %d",
                          layout, rows, count[0], (int)n - rows * cols);
            for (int v = 1; v <= rows * cols; v++)
                ck_assert_msg(count[v] == 1, "layout %d rows %d: element %d stored %d times", layout, rows, v - 1,
                              count[v]);
            free(w), free(d), free(count);
        }
}
END_TEST

/* How ldm_panel cuts a row of nu units into panels: contiguous, covering,
 * only widths a kernel exists for, as many full panels as possible but one,
 * and a one-unit panel (the slow kernel) only when nu is 1. */
START_TEST(test_panel_cuts) {
    for (int pmax = 3; pmax <= 6; pmax += 3)
        for (int nu = 1; nu <= 60; nu++) {
            int u = 0, full = 0;
            while (u < nu) {
                int po, pw;
                ldm_panel(nu, u, pmax, &po, &pw);
                ck_assert_msg(po == u, "pmax %d nu %d: unit %d starts a panel at %d", pmax, nu, u, po);
                ck_assert_msg(pw >= 1 && pw <= pmax && pw != 5 && (pmax == 6 || pw != 4),
                              "pmax %d nu %d: width %d at %d", pmax, nu, pw, u);
                ck_assert_msg(pw > 1 || nu == 1, "pmax %d nu %d: a one-unit panel at %d", pmax, nu, u);
                for (int v = u; v < u + pw; v++) {
                    int po2, pw2;
                    ldm_panel(nu, v, pmax, &po2, &pw2);
                    ck_assert(po2 == po && pw2 == pw);
                }
                full += pw == pmax;
                u += pw;
            }
            ck_assert_msg(u == nu, "pmax %d nu %d: panels cover %d units", pmax, nu, u);
            ck_assert_msg(full >= nu / pmax - 1, "pmax %d nu %d: %d full panels", pmax, nu, full);
        }
}
END_TEST

/* --compute bf16: both operands rounded to bfloat16 (to nearest even), the
 * products summed in float32. Against a double reference on the rounded
 * operands, to the float32 bound of the other tests: a kernel that did
 * not round (or rounded otherwise, or lost a k of an odd kc) is off by
 * about 2^-9 of the magnitude, a thousand times more. Every panel width
 * (cases above), both weight orientations, weights in panels, float and
 * half weights, the weight on the left, and one thread against two, bit
 * for bit. Where the build or CPU has no AVX-512 BF16 the mode must be
 * refused with a message saying so. */
static double bf16_of(double v) {
    float f = (float)v;
    uint16_t h = to_half(f, LDM_W_BF16);
    uint32_t b = (uint32_t)h << 16;
    memcpy(&f, &b, 4);
    return f;
}

START_TEST(test_gemm_bf16) {
    if (ldm_set_compute("bf16") != 0) {
        ck_assert_msg(strstr(ldm_last_error(), "AVX-512 BF16"), "refusal without the reason: %s", ldm_last_error());
        return;
    }
    const GemmCase c = cases[_i % N_CASES];
    const int type = (_i / N_CASES) % 2 ? LDM_W_F16 : LDM_W_F32, lay = (_i / N_CASES / 2) % 3; /* 0 [K][N], 1 [N][K], 2 panels */
    const int M = c.M, N = c.N, K = c.K, trans = lay > 0;
    double *wref = malloc((size_t)N * K * sizeof *wref), *want = malloc((size_t)M * N * sizeof *want),
           *mag = malloc((size_t)M * N * sizeof *mag), *aref = malloc((size_t)M * K * sizeof *aref);
    float *A = malloc((size_t)M * K * sizeof *A), *C = malloc((size_t)M * N * sizeof *C), *C2 = malloc((size_t)M * N * sizeof *C2);
    void *W = make_weights((size_t)N * K, type, wref);
    void *Wp = lay == 2 ? relayout_in_pieces(LDM_WL_BPANELS, W, type, N, K) : NULL;
    LdmW w = lay == 2 ? (LdmW){Wp, type, LDM_WL_BPANELS} : (LdmW){W, type, LDM_WL_ROWS};
    for (int i = 0; i < M * K; i++) A[i] = frand() * 3.0f + 0.5f, aref[i] = bf16_of(A[i]);
    for (size_t i = 0; i < (size_t)N * K; i++) wref[i] = bf16_of(wref[i]);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0, a = 0;
            for (int k = 0; k < K; k++) {
                double x = aref[m * K + k] * (trans ? wref[(size_t)n * K + k] : wref[(size_t)k * N + n]);
                s += x, a += fabs(x);
            }
            want[m * N + n] = s, mag[m * N + n] = a;
        }
    const int threads = omp_get_max_threads();
    for (int t = 1; t <= 2; t++) {
        float *Ct = t == 1 ? C : C2;
        omp_set_num_threads(t);
        for (int i = 0; i < M * N; i++) Ct[i] = NAN;
        ldm_gemm_norm(M, N, K, A, K, NULL, w, 0, trans ? K : N, trans, Ct, N, 0);
    }
    omp_set_num_threads(threads);
    double e = rel_err(M, N, C, want, mag);
    ck_assert_msg(e < 1e-6, "bf16 gemm M %d N %d K %d type %d layout %d: relative error %g", M, N, K, type, lay, e);
    ck_assert_msg(!memcmp(C, C2, (size_t)M * N * sizeof *C), "bf16 gemm M %d N %d K %d: two threads differ from one", M, N, K);
    if (lay > 0) { /* weight on the left: C'[N, M] = W[N, K] A^T (rows, or A panels as convolutions bind it) */
        float *At, *Ct = malloc((size_t)M * N * sizeof *Ct);
        double *wt, *mt;
        transposed_case(M, N, K, A, want, mag, &At, &wt, &mt);
        for (int i = 0; i < M * N; i++) Ct[i] = NAN;
        void *Wa = lay == 2 ? relayout_in_pieces(LDM_WL_APANELS, W, type, N, K) : NULL;
        ldm_gemm_wl(N, M, K, lay == 2 ? (LdmW){Wa, type, LDM_WL_APANELS} : w, 0, K, At, M, Ct, M, 0);
        double e2 = rel_err(N, M, Ct, wt, mt);
        ck_assert_msg(e2 < 1e-6, "bf16 gemm_wl M %d N %d K %d type %d layout %d: relative error %g", N, M, K, type, lay, e2);
        free(At), free(Ct), free(wt), free(mt), free(Wa);
    }
    ldm_set_compute("f32");
    free(wref), free(want), free(mag), free(aref), free(A), free(C), free(C2), free(W), free(Wp);
}
END_TEST

/* The mode's names: f32 and bf16, nothing else. */
START_TEST(test_compute_names) {
    ck_assert_int_eq(ldm_set_compute("f32"), 0);
    ck_assert_str_eq(ldm_compute_mode(), "f32");
    ck_assert_int_eq(ldm_set_compute("fp8"), -1);
    ck_assert_msg(strstr(ldm_last_error(), "expected f32 or bf16, got 'fp8'"), "message: %s", ldm_last_error());
    ck_assert_str_eq(ldm_compute_mode(), "f32");
}
END_TEST

Suite *suite_gemm(void) {
    Suite *s = suite_create("gemm");
    TCase *tc = tcase_create("gemm");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_gemm_vs_reference, 0, N_CASES * 12);
    tcase_add_loop_test(tc, test_gemm_threads_agree, 0, 15);
    tcase_add_test(tc, test_panel_cuts);
    tcase_add_loop_test(tc, test_gemm_weight_panels, 0, 39);
    tcase_add_test(tc, test_weight_layout_cover);
    tcase_add_loop_test(tc, test_gemm_bf16, 0, N_CASES * 6);
    tcase_add_test(tc, test_compute_names);
    tcase_add_test(tc, test_geglu_erf);
    tcase_add_test(tc, test_group_norm_silu_range);
    suite_add_tcase(s, tc);
    return s;
}
