/*
 * fingerprint.c - what the machine a `make bench` ran on can do, printed
 * next to the figures (and alone by `make fingerprint`), in one line:
 *
 *   fingerprint: FMA peak P GFLOP/s (ISA, N threads), stream triad S GB/s,
 *                sgemm 2048^3 G GFLOP/s, L1d .. L2 .. L3 ..
 *
 * FMA peak: single-precision FMAs on registers, 16 independent
 * accumulators per thread (enough to cover the latency of two FMA ports),
 * on every core (OpenMP), with the widest FMA the CPU has: AVX-512 when
 * it has avx512f, else AVX2/FMA, else plain C; best of 5 runs.
 * Stream triad: a[i] = b[i] + s * c[i] over three arrays of ~256 MiB in
 * all, every core, counting 3 arrays x 4 bytes per element (STREAM's
 * convention: the write-allocate traffic is not counted); best of 5.
 * sgemm: cblas_sgemm on 2048^3 with 2 threads, the median of 7 (as
 * sgemm_rate.c measures it). Caches: cpu0's data/unified caches from
 * /sys/devices/system/cpu/cpu0/cache, else sysconf.
 *
 *   cc -O2 -march=native -fopenmp fingerprint.c -I<openblas include> -lopenblas
 */
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void openblas_set_num_threads(int n);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- FMA peak -------------------------------------------------------------- */

#define FMA_ITERS 20000000L /* per thread and run: 16 FMAs each */

/* Each returns the number of float operations it did (2 per lane per FMA);
 * the sums go to *sink so that nothing is optimized away. */
__attribute__((target("avx512f"))) static double fma_avx512(float *sink) {
    __m512 a[16], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
    for (int k = 0; k < 16; k++) a[k] = _mm512_set1_ps((float)k);
    for (long i = 0; i < FMA_ITERS; i++) {
        /* 16 independent chains in registers: no FMA waits for another (the
         * compiler cannot fold them: no -ffast-math) */
#pragma GCC unroll 16
        for (int k = 0; k < 16; k++) a[k] = _mm512_fmadd_ps(a[k], m, c);
    }
    __m512 s = a[0];
    for (int k = 1; k < 16; k++) s = _mm512_add_ps(s, a[k]);
    *sink += _mm512_reduce_add_ps(s);
    return 16.0 * 16 * 2 * (double)FMA_ITERS;
}

__attribute__((target("avx2,fma"))) static double fma_avx2(float *sink) {
    __m256 a[12], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
    for (int k = 0; k < 12; k++) a[k] = _mm256_set1_ps((float)k);
    for (long i = 0; i < FMA_ITERS; i++) {
#pragma GCC unroll 12
        for (int k = 0; k < 12; k++) a[k] = _mm256_fmadd_ps(a[k], m, c);
    }
    float t[8];
    __m256 s = a[0];
    for (int k = 1; k < 12; k++) s = _mm256_add_ps(s, a[k]);
    _mm256_storeu_ps(t, s);
    for (int k = 0; k < 8; k++) *sink += t[k];
    return 12.0 * 8 * 2 * (double)FMA_ITERS;
}

static double fma_scalar(float *sink) {
    float a[16];
    for (int k = 0; k < 16; k++) a[k] = (float)k;
    for (long i = 0; i < FMA_ITERS / 4; i++)
        for (int k = 0; k < 16; k++) a[k] = a[k] * 0.999999f + 1e-6f;
    for (int k = 0; k < 16; k++) *sink += a[k];
    return 16.0 * 2 * (double)(FMA_ITERS / 4);
}

/* GFLOP/s on all threads, best of `runs`; *isa names the path taken. */
static double fma_peak(const char **isa, int runs) {
    double (*f)(float *) = fma_scalar;
    *isa = "scalar";
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) f = fma_avx512, *isa = "avx512";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) f = fma_avx2, *isa = "avx2/fma";
    double best = 0;
    float sink = 0;
    for (int r = 0; r < runs; r++) {
        double flops = 0, t0 = 0, t1;
#pragma omp parallel reduction(+ : flops, sink)
        {
#pragma omp barrier
#pragma omp single
            t0 = now();
            flops += f(&sink);
        }
        t1 = now();
        if (flops / (t1 - t0) / 1e9 > best) best = flops / (t1 - t0) / 1e9;
    }
    if (sink == 12345.678f) printf("(sink)\n");
    return best;
}

/* ---- stream triad ---------------------------------------------------------- */

static double stream_triad(size_t total_bytes, int runs) {
    const long n = (long)(total_bytes / 3 / sizeof(float));
    float *a = aligned_alloc(64, (size_t)n * 4), *b = aligned_alloc(64, (size_t)n * 4),
          *c = aligned_alloc(64, (size_t)n * 4);
    if (!a || !b || !c) return 0;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) a[i] = 0, b[i] = 1.0f, c[i] = 2.0f; /* first touch by the thread that uses it */
    const float s = 3.0f;
    double best = 0;
    for (int r = 0; r < runs; r++) {
        double t = now();
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) a[i] = b[i] + s * c[i];
        t = now() - t;
        if (3.0 * 4 * (double)n / t / 1e9 > best) best = 3.0 * 4 * (double)n / t / 1e9;
    }
    volatile float keep = a[n / 2];
    (void)keep;
    free(a);
    free(b);
    free(c);
    return best;
}

/* ---- sgemm ------------------------------------------------------------------- */

static double sgemm_rate(int n, int threads) {
    const int reps = 7;
    openblas_set_num_threads(threads);
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) return 0;
    for (long i = 0; i < (long)n * n; i++) {
        a[i] = (float)((i * 7) % 13) * 0.01f;
        b[i] = (float)((i * 5) % 11) * 0.01f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double r[7];
    for (int i = 0; i < reps; i++) {
        double t = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        r[i] = 2.0 * n * (double)n * n / (now() - t) / 1e9;
    }
    qsort(r, (size_t)reps, sizeof *r, cmp);
    free(a);
    free(b);
    free(c);
    return r[reps / 2];
}

/* ---- caches ------------------------------------------------------------------ */

/* "48K" / "1M" / "32M" from a size in KiB */
static void kib_str(long kib, char *buf, size_t size) {
    if (kib <= 0) snprintf(buf, size, "?");
    else if (kib % 1024 == 0) snprintf(buf, size, "%ldM", kib / 1024);
    else snprintf(buf, size, "%ldK", kib);
}

static int read_line(const char *path, char *buf, size_t size) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int ok = fgets(buf, (int)size, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    buf[strcspn(buf, "\n")] = 0;
    return 0;
}

/* kib[1..3]: L1d, L2, L3 in KiB (0 unknown) */
static void caches(long kib[4]) {
    memset(kib, 0, 4 * sizeof *kib);
    for (int i = 0; i < 16; i++) {
        char p[128], lv[16], ty[32], sz[32];
        snprintf(p, sizeof p, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        if (read_line(p, lv, sizeof lv) != 0) break;
        snprintf(p, sizeof p, "/sys/devices/system/cpu/cpu0/cache/index%d/type", i);
        if (read_line(p, ty, sizeof ty) != 0) continue;
        snprintf(p, sizeof p, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        if (read_line(p, sz, sizeof sz) != 0) continue;
        int level = atoi(lv);
        if (level < 1 || level > 3 || !strcmp(ty, "Instruction")) continue;
        char *end;
        long v = strtol(sz, &end, 10);
        if (*end == 'M') v *= 1024;
        else if (*end == 'G') v *= 1024 * 1024;
        kib[level] = v;
    }
#ifdef _SC_LEVEL1_DCACHE_SIZE
    if (!kib[1]) kib[1] = sysconf(_SC_LEVEL1_DCACHE_SIZE) / 1024;
    if (!kib[2]) kib[2] = sysconf(_SC_LEVEL2_CACHE_SIZE) / 1024;
    if (!kib[3]) kib[3] = sysconf(_SC_LEVEL3_CACHE_SIZE) / 1024;
#endif
}

int main(void) {
    const char *isa;
    double peak = fma_peak(&isa, 5);
    double triad = stream_triad((size_t)256 << 20, 5);
    double sg = sgemm_rate(2048, 2);
    long kib[4];
    caches(kib);
    char l1[32], l2[32], l3[32];
    kib_str(kib[1], l1, sizeof l1);
    kib_str(kib[2], l2, sizeof l2);
    kib_str(kib[3], l3, sizeof l3);
    printf("fingerprint: FMA peak %.0f GFLOP/s (%s, %d threads), stream triad %.1f GB/s, sgemm 2048^3 %.0f GFLOP/s, "
           "L1d %s L2 %s L3 %s\n",
           peak, isa, omp_get_max_threads(), triad, sg, l1, l2, l3);
    return 0;
}
