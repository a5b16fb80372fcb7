/*
 * bench_winograd.c - speed and accuracy of ldm_conv3x3_winograd on the
 * Stable Diffusion v1.5 shapes (not part of the test suite).
 *
 *   bench_winograd [reps] [shape-filter]
 *
 * For each shape: the median time per call over `reps` calls (default 7),
 * the "effective" rate 2*N*O*C*9*H*W / time (the direct convolution's
 * arithmetic), the scratch size, and the max and the RMS error against a
 * double direct convolution at 4096 sampled outputs, relative to the RMS
 * of the output (weights ~ N(0, 1/(9C)), inputs and bias ~ N(0, 1)). For scale, the median rate of cblas_sgemm on a 2048^3 product
 * with 2 OpenBLAS threads, each timed right before a convolution call (the
 * machine may be shared: alternating keeps the two comparable).
 * Environment: BENCH_CPU=1 times process CPU time instead of wall time
 * (for single-thread runs on a busy machine), BENCH_BLAS_THREADS the
 * sgemm's threads (default 2), BENCH_WTYPE=f16|bf16 half-precision weights.
 *
 * Build (from the repo root):
 *   gcc -std=gnu11 -O2 -march=native -fopenmp -Iruntime -I/usr/include/x86_64-linux-gnu/openblas-pthread \
 *       tests/bench/bench_winograd.c runtime/kernels_winograd.c build/libldmrt.a build/libldmcore.a -lopenblas -lm \
 *       -o bench_winograd
 * (-DWG_PROFILE adds the CPU time of each phase on thread 0.)
 */
#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "kernels.h"
#include "util.h"

void openblas_set_num_threads(int n);
#ifdef WG_PROFILE
extern double wg_prof[4];
#endif

static uint64_t rng = 0x1234567887654321ull;
static double urand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return ((rng >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
static double nrand(void) { return sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand()); }

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmpd);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Wall time, or with BENCH_CPU=1 in the environment the process's CPU
 * time (less noisy on a busy machine; only meaningful with 1 thread). */
static double now(void) {
    static int cpu = -1;
    if (cpu < 0) cpu = getenv("BENCH_CPU") && atoi(getenv("BENCH_CPU"));
    if (!cpu) return ldm_now();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* The 2048^3 sgemm the rates are compared with (threads: OpenBLAS's). */
typedef struct Sgemm {
    int n, threads;
    float *a, *b, *c;
} Sgemm;

static void sgemm_init(Sgemm *g, int threads) {
    g->n = 2048, g->threads = threads;
    size_t nn = (size_t)g->n * g->n;
    g->a = ldm_aligned_alloc(nn * 4), g->b = ldm_aligned_alloc(nn * 4), g->c = ldm_aligned_alloc(nn * 4);
    for (size_t i = 0; i < nn; i++) g->a[i] = (float)nrand(), g->b[i] = (float)nrand();
}

/* Seconds for one product. */
static double sgemm_once(Sgemm *g) {
    openblas_set_num_threads(g->threads);
    double t0 = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->n, g->n, g->n, 1.0f, g->a, g->n, g->b, g->n, 0.0f, g->c,
                g->n);
    double t = now() - t0;
    openblas_set_num_threads(1);
    return t;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 7;
    const char *only = argc > 2 ? argv[2] : NULL;
    if (reps < 1) reps = 1;
    if (reps > 32) reps = 32;
    static const int shapes[][5] = {
        {2, 320, 64, 64, 320},  {2, 640, 32, 32, 640},  {2, 1280, 16, 16, 1280},
        {1, 512, 256, 256, 512}, {1, 256, 512, 512, 256}, {1, 128, 512, 512, 128},
        /* the UNet's low-resolution levels (im2col by default: few tiles) */
        {2, 1280, 8, 8, 1280},  {2, 2560, 8, 8, 1280},  {2, 1280, 4, 4, 1280},  {2, 2560, 4, 4, 1280},
        {1, 1280, 8, 8, 1280},  {4, 1280, 8, 8, 1280},
        /* TAESD's decoder (64 features) at 512x512: its levels 512, 256, 128 */
        {1, 64, 512, 512, 64},  {1, 64, 256, 256, 64},  {1, 64, 128, 128, 64},
    };
    int bt = getenv("BENCH_BLAS_THREADS") ? atoi(getenv("BENCH_BLAS_THREADS")) : 2;
    Sgemm sg;
    sgemm_init(&sg, bt);
    sgemm_once(&sg);
    printf("threads %d; sgemm: cblas_sgemm 2048^3 with %d threads, timed alternately with the convolution\n",
           omp_get_max_threads(), bt);
    const char *wt = getenv("BENCH_WTYPE");
    int wtype = wt && !strcmp(wt, "f16") ? LDM_W_F16 : wt && !strcmp(wt, "bf16") ? LDM_W_BF16 : LDM_W_F32;
    printf("weights %s\n", wtype == LDM_W_F16 ? "f16" : wtype == LDM_W_BF16 ? "bf16" : "f32");
    printf("%-20s %8s %9s %9s %7s %9s %11s %11s\n", "shape N,C,HxW,O", "ms/call", "eff GF/s", "sgemm GF/s", "ratio",
           "scratchMB", "maxerr/rms", "rmserr/rms");
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        int N = shapes[k][0], C = shapes[k][1], H = shapes[k][2], W = shapes[k][3], O = shapes[k][4];
        char name[64];
        snprintf(name, sizeof name, "%d,%d,%dx%d,%d", N, C, H, W, O);
        if (only && !strstr(name, only)) continue;
        LdmConvShape s = {N, C, H, W, O, 3, 3, 1, 1, 1, 1, 1, 1, H, W};
        size_t nx = (size_t)N * C * H * W, ny = (size_t)N * O * H * W, nw = (size_t)O * C * 9;
        float *x = ldm_aligned_alloc(nx * 4), *y = ldm_aligned_alloc(ny * 4), *w = ldm_aligned_alloc(nw * 4);
        float *bias = ldm_aligned_alloc((size_t)O * 4);
        double ws = 1.0 / sqrt(9.0 * C);
        for (size_t i = 0; i < nx; i++) x[i] = (float)nrand();
        for (size_t i = 0; i < nw; i++) w[i] = (float)(nrand() * ws);
        for (int i = 0; i < O; i++) bias[i] = (float)nrand();
        size_t sb = ldm_winograd_scratch_bytes(&s);
        float *scratch = ldm_aligned_alloc(sb);
        if (getenv("BENCH_HUGE")) {
            free(scratch);
            size_t hb = (sb + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
            scratch = aligned_alloc(2u << 20, hb);
            madvise(scratch, hb, MADV_HUGEPAGE);
        }
        LdmEpilogue ep = {bias, NULL, NULL, 0};
        /* half-precision weights: stored rounded, the reference uses the rounded values */
        void *wstore = w;
        if (wtype != LDM_W_F32) {
            uint16_t *h = ldm_aligned_alloc(nw * 2);
            for (size_t i = 0; i < nw; i++) {
                if (wtype == LDM_W_F16) {
                    h[i] = _cvtss_sh(w[i], 0);
                    w[i] = _cvtsh_ss(h[i]);
                } else {
                    uint32_t b;
                    memcpy(&b, &w[i], 4);
                    h[i] = (uint16_t)(b >> 16);
                    b = (uint32_t)h[i] << 16;
                    memcpy(&w[i], &b, 4);
                }
            }
            wstore = h;
        }
        LdmW lw = {wstore, wtype};
        ldm_conv3x3_winograd(&s, x, lw, &ep, y, scratch);
        double t[32], ts[32];
        for (int r = 0; r < reps; r++) {
            ts[r] = sgemm_once(&sg);
            double t0 = now();
            ldm_conv3x3_winograd(&s, x, lw, &ep, y, scratch);
            t[r] = now() - t0;
        }
        double tm = median(t, reps), g = 2.0 * sg.n * sg.n * (double)sg.n / median(ts, reps) * 1e-9;
        double eff = 2.0 * N * O * (double)C * 9 * H * W / tm * 1e-9;
        /* accuracy at sampled outputs */
        double maxe = 0, ss = 0, se = 0;
        int ns = 4096;
        for (int q = 0; q < ns; q++) {
            int n = (int)(urand() * N), o = (int)(urand() * O), h = (int)(urand() * H), wc = (int)(urand() * W);
            double ref = bias[o];
            for (int c = 0; c < C; c++)
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++) {
                        int hh = h + ky - 1, ww = wc + kx - 1;
                        if (hh < 0 || hh >= H || ww < 0 || ww >= W) continue;
                        ref += (double)w[((size_t)o * C + c) * 9 + ky * 3 + kx] * x[(((size_t)n * C + c) * H + hh) * W + ww];
                    }
            double got = y[(((size_t)n * O + o) * H + h) * W + wc];
            if (fabs(got - ref) > maxe) maxe = fabs(got - ref);
            ss += ref * ref;
            se += (got - ref) * (got - ref);
        }
        printf("%-20s %8.2f %9.1f %9.1f %7.2f %9.1f %11.2e %11.2e\n", name, tm * 1e3, eff, g, eff / g,
               sb / 1048576.0, maxe / sqrt(ss / ns), sqrt(se / ss));
#ifdef WG_PROFILE
        /* (the private schedule counts its output transform as gemm) */
        printf("   thread-0 cpu s/call: input %.4f weights %.4f gemm %.4f output %.4f\n", wg_prof[0] / (reps + 1),
               wg_prof[1] / (reps + 1), wg_prof[2] / (reps + 1), wg_prof[3] / (reps + 1));
        memset(wg_prof, 0, sizeof wg_prof);
#endif
        fflush(stdout);
        if (wstore != w) free(wstore);
        free(x), free(y), free(w), free(bias), free(scratch);
    }
    return 0;
}
