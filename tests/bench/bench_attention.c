/*
 * bench_attention.c - speed of ldm_attention on the Stable Diffusion shapes,
 * next to OpenBLAS sgemm (2048^3) on as many threads, measured in the same
 * run, plus the largest error against a double-precision reference on 16
 * sampled query rows of every head (relative to the largest output).
 *
 *   gcc -O2 -march=native -fopenmp -Iruntime -I/usr/include/x86_64-linux-gnu/openblas-pthread \
 *       tests/bench/bench_attention.c runtime/kernels_attention.c runtime/util.c -lopenblas -lm \
 *       -o bench_attention && ./bench_attention [reps [shape-substring]]
 *
 * Threads: OMP_NUM_THREADS (default all cores). Not part of the test suite.
 * GFLOP/s counts 2*B*H*Tq*Tk*(d + dv) flops (= 4*B*H*Tq*Tk*d for d = dv;
 * causal counts the full square too), from the median and the best of
 * `reps` calls (default 5), and per CPU-second times the thread count (what
 * the cores did while they ran us: on a machine shared with other work the
 * wall clock also counts the time others took the cores).
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "kernels.h"
#include "util.h"

void openblas_set_num_threads(int n);

static unsigned long long rng_state = 88172645463325252ull;

/* Standard normal (Box-Muller on xorshift64). */
static float randn(void) {
    double u[2];
    for (int i = 0; i < 2; i++) {
        rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
        u[i] = ((rng_state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    }
    return (float)(sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* Process CPU time in seconds (all threads). */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Rates of one measurement: median and best wall-clock rate, and the rate
 * per CPU-second times the thread count (what the cores did while they ran
 * us: insensitive to other processes taking the cores away). */
typedef struct Rate {
    double med_ms, med, best, cpu;
} Rate;

static Rate rate(double flops, const double *wall, const double *cpu, int reps) {
    double w[32], c[32];
    memcpy(w, wall, (size_t)reps * sizeof *w), memcpy(c, cpu, (size_t)reps * sizeof *c);
    double wm = median(w, reps), cm = median(c, reps);
    return (Rate){wm * 1e3, flops / wm * 1e-9, flops / w[0] * 1e-9, flops / cm * omp_get_max_threads() * 1e-9};
}

static Rate sgemm_rate(int reps) {
    const int n = 2048;
    float *a = ldm_aligned_alloc((size_t)n * n * 4), *b = ldm_aligned_alloc((size_t)n * n * 4),
          *c = ldm_aligned_alloc((size_t)n * n * 4);
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = randn(), b[i] = randn();
    openblas_set_num_threads(omp_get_max_threads());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm up */
    double t[32], u[32];
    for (int r = 0; r < reps; r++) {
        double t0 = ldm_now(), u0 = cpu_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        t[r] = ldm_now() - t0, u[r] = cpu_now() - u0;
    }
    openblas_set_num_threads(1);
    free(a), free(b), free(c);
    return rate(2.0 * n * n * (double)n, t, u, reps);
}

/* Largest |y - ref| / max|ref| over `rows` sampled query rows of every head. */
static double check(const LdmAttnShape *s, const float *q, const float *k, const float *v, const float *y, int rows) {
    double maxerr = 0, maxref = 0;
    double *p = malloc((size_t)s->Tk * sizeof *p);
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int r = 0; r < rows; r++) {
                int i = (int)((long)r * (s->Tq - 1) / (rows > 1 ? rows - 1 : 1));
                const float *qi = q + b * s->bsq + (size_t)i * s->ldq + (size_t)h * s->d;
                int nk = s->causal ? i + 1 : s->Tk;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < nk; j++) {
                    const float *kj = k + b * s->bsk + (size_t)j * s->ldk + (size_t)h * s->d;
                    double dot = 0;
                    for (int c = 0; c < s->d; c++) dot += (double)qi[c] * kj[c];
                    p[j] = dot * s->scale;
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j < nk; j++) sum += p[j] = exp(p[j] - mx);
                for (int c = 0; c < s->dv; c++) {
                    double acc = 0;
                    const float *vc = v + b * s->bsv + (size_t)h * s->dv + c;
                    for (int j = 0; j < nk; j++) acc += p[j] * vc[(size_t)j * s->ldv];
                    acc /= sum;
                    double got = y[b * s->bsy + (size_t)i * s->ldy + (size_t)h * s->dv + c];
                    if (fabs(got - acc) > maxerr) maxerr = fabs(got - acc);
                    if (fabs(acc) > maxref) maxref = fabs(acc);
                }
            }
    free(p);
    return maxerr / maxref;
}

static void bench(const char *what, int B, int Tq, int Tk, int H, int d, int dv, int causal, int reps) {
    LdmAttnShape s = {B, Tq, Tk, H, d, dv, H * d, H * d, H * dv, H * dv, (long)Tq * H * d, (long)Tk * H * d,
                      (long)Tk * H * dv, (long)Tq * H * dv, (float)(1.0 / sqrt(d)), causal};
    size_t nq = (size_t)B * Tq * H * d, nk = (size_t)B * Tk * H * d, nv = (size_t)B * Tk * H * dv,
           ny = (size_t)B * Tq * H * dv;
    float *q = ldm_aligned_alloc(nq * 4), *k = ldm_aligned_alloc(nk * 4), *v = ldm_aligned_alloc(nv * 4),
          *y = ldm_aligned_alloc(ny * 4);
    float *scratch = ldm_aligned_alloc(ldm_attention_scratch_bytes(&s));
    for (size_t i = 0; i < nq; i++) q[i] = randn();
    for (size_t i = 0; i < nk; i++) k[i] = randn();
    for (size_t i = 0; i < nv; i++) v[i] = randn();
    ldm_attention(&s, q, k, v, y, scratch); /* warm up */
    double t[32], u[32];
    for (int r = 0; r < reps; r++) {
        double t0 = ldm_now(), u0 = cpu_now();
        ldm_attention(&s, q, k, v, y, scratch);
        t[r] = ldm_now() - t0, u[r] = cpu_now() - u0;
    }
    Rate g = rate(2.0 * B * H * (double)Tq * Tk * (d + dv), t, u, reps);
    double err = check(&s, q, k, v, y, 16);
    printf("%-22s %d %4d %4d %2d %3d %3d%s %9.3f %6.1f %6.1f %6.1f  %.1e\n", what, B, Tq, Tk, H, d, dv,
           causal ? " c" : "  ", g.med_ms, g.med, g.best, g.cpu, err);
    fflush(stdout);
    free(q), free(k), free(v), free(y), free(scratch);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (reps < 1) reps = 1;
    if (reps > 32) reps = 32;
    const char *only = argc > 2 ? argv[2] : NULL;
    openblas_set_num_threads(1);
    Rate g0 = sgemm_rate(reps);
    printf("sgemm 2048^3, %d threads: GFLOP/s median %.1f, best %.1f, per CPU-s %.1f (before)\n",
           omp_get_max_threads(), g0.med, g0.best, g0.cpu);
    printf("%-22s B   Tq   Tk  H   d  dv    median ms  GFLOP/s: median best cpu  max rel err\n", "shape");
    struct {
        const char *what;
        int B, Tq, Tk, H, d, dv, causal;
    } cases[] = {
        {"unet self-attn 64x64", 2, 4096, 4096, 8, 40, 40, 0},
        {"unet self-attn 32x32", 2, 1024, 1024, 8, 80, 80, 0},
        {"unet cross-attn 64x64", 2, 4096, 77, 8, 40, 40, 0},
        {"vae mid-block 64x64", 1, 4096, 4096, 1, 512, 512, 0},
        {"unet self-attn 16x16", 2, 256, 256, 8, 160, 160, 0},
        {"unet cross-attn 32x32", 2, 1024, 77, 8, 80, 80, 0},
        {"unet cross-attn 16x16", 2, 256, 77, 8, 160, 160, 0},
        {"clip text encoder", 2, 77, 77, 12, 64, 64, 1},
        {"vae mid-block 32x32", 1, 1024, 1024, 1, 512, 512, 0},
        {"ldm attention block", 2, 1024, 1024, 8, 32, 32, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (!only || strstr(cases[i].what, only))
            bench(cases[i].what, cases[i].B, cases[i].Tq, cases[i].Tk, cases[i].H, cases[i].d, cases[i].dv,
                  cases[i].causal, reps);
    usleep(200000); /* let the OpenMP threads stop spinning */
    Rate g1 = sgemm_rate(reps);
    printf("sgemm 2048^3, %d threads: GFLOP/s median %.1f, best %.1f, per CPU-s %.1f (after)\n",
           omp_get_max_threads(), g1.med, g1.best, g1.cpu);
    return 0;
}
