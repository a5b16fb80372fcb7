/*
 * bench_gemm.c - GFLOP/s of ldm_gemm_norm (linear layers: x w^T), ldm_gemm_wl
 * (convolutions: w x) and whole im2col convolutions on the UNet's shapes,
 * with float32 or half weights; with CBLAS=1 also multi-threaded
 * cblas_sgemm on the same float32 operands. Not part of the test suite.
 *
 *   make && gcc -O2 -march=native -fopenmp -Iruntime tests/bench/bench_gemm.c build/libldmrt.a build/libldmcore.a \
 *       -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas -lm -o bench_gemm
 *   ./bench_gemm [f16|f32]                  the table
 *   ./bench_gemm f16 linear|wl M N K        one shape
 *   ./bench_gemm f16 conv N C H O k         one convolution (im2col, or pointwise for k = 1)
 * COLD=1 cycles through copies of the weight that exceed the caches;
 * SMALLPAGES=1 keeps the operands in 4 KB pages (as a mapped checkpoint).
 * COMPUTE=bf16 times the --compute bf16 products (AVX-512 BF16 CPUs).
 * Block sizes can be tried without rebuilding the library: add
 * -DGEMM_TUNE runtime/kernels_gemm.c to the command above and set
 * GEMM_KC, GEMM_MC, GEMM_NC.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <stdint.h>
#include <sys/mman.h>

#include <cblas.h>
#include <omp.h>

#include "kernels.h"
#include "util.h"

void openblas_set_num_threads(int n);

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* SMALLPAGES=1: 4 KB pages, as for weights mapped from the checkpoint file */
static void *rnd_alloc(size_t n, size_t sz) {
    unsigned char *p = ldm_aligned_alloc(n * sz);
    if (getenv("SMALLPAGES")) madvise((void *)((uintptr_t)p & ~(uintptr_t)4095), n * sz + 4096, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < n * sz; i += sz) {
        float f = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        if (sz == 4) memcpy(p + i, &f, 4);
        else p[i] = 0, p[i + 1] = 0x38; /* half 0.5 */
    }
    return p;
}

static void one(const char *what, int wl, int M, int N, int K, int type) {
    size_t asz = (size_t)M * K, bsz = (size_t)K * N;
    /* COLD=1: the weight is one of copies that together exceed the caches,
     * used in turn, as a network reads each weight once per forward */
    size_t wsz = wl ? asz * (type ? 2 : 4) : bsz * (type ? 2 : 4);
    int copies = getenv("COLD") ? (int)(256e6 / wsz) + 2 : 1;
    if (copies > 64) copies = 64;
    void *As[64], *Bs[64];
    for (int i = 0; i < copies; i++) {
        As[i] = wl || i == 0 ? rnd_alloc(asz, wl && type ? 2 : 4) : As[0];
        Bs[i] = !wl || i == 0 ? rnd_alloc(bsz, !wl && type ? 2 : 4) : Bs[0];
    }
    void *A = As[0], *B = Bs[0];
    float *C = ldm_aligned_alloc((size_t)M * N * sizeof(float));
    double best = 1e9, bestb = 1e9, ts[4096];
    int nrep = 5 * copies;
    for (int r = 0; r < nrep; r++) {
        A = As[r % copies], B = Bs[r % copies];
        double t = now();
        if (wl) ldm_gemm_wl(M, N, K, (LdmW){A, type, LDM_WL_ROWS}, 0, K, B, N, C, N, 0);
        else ldm_gemm_norm(M, N, K, A, K, NULL, (LdmW){B, type, LDM_WL_ROWS}, 0, K, 1, C, N, 0);
        t = now() - t;
        ts[r] = t;
        if (t < best) best = t;
    }
    qsort(ts, (size_t)nrep, sizeof *ts, cmp_double);
    if (!type && getenv("CBLAS")) {
        openblas_set_num_threads(omp_get_max_threads());
        for (int r = 0; r < 5; r++) {
            double t = now();
            if (wl) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, A, K, B, N, 0, C, N);
            else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, A, K, B, K, 0, C, N);
            t = now() - t;
            if (t < bestb) bestb = t;
        }
        openblas_set_num_threads(1);
    }
    double f = 2.0 * M * N * K;
    printf("%-22s M %5d N %5d K %5d  ldm %6.1f GFLOP/s (median %6.1f)", what, M, N, K, f / best / 1e9, f / ts[nrep / 2] / 1e9);
    if (bestb < 1e9) printf("   cblas %6.1f", f / bestb / 1e9);
    printf("\n");
    for (int i = 0; i < copies; i++) {
        if (wl || i == 0) free(As[i]);
        if (!wl || i == 0) free(Bs[i]);
    }
    free(C);
}

/* a whole convolution through ldm_conv2d (im2col or pointwise) */
static void conv(const char *what, int N, int C, int H, int O, int k, int type) {
    LdmConvShape s = {N, C, H, H, O, k, k, 1, 1, k / 2, k / 2, k / 2, k / 2, H, H};
    float *x = rnd_alloc((size_t)N * C * H * H, 4), *y = ldm_aligned_alloc((size_t)N * O * H * H * 4);
    void *w = rnd_alloc((size_t)O * C * k * k, type ? 2 : 4);
    int algo = k == 1 ? LDM_CONV_POINTWISE : LDM_CONV_IM2COL;
    float *scratch = ldm_aligned_alloc(ldm_conv_scratch_bytes(&s, algo) + 64);
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t = now();
        ldm_conv2d(&s, algo, x, (LdmW){w, type, LDM_WL_ROWS}, NULL, y, scratch);
        t = now() - t;
        if (t < best) best = t;
    }
    printf("%-22s N %d C %4d %3dx%-3d O %4d %dx%d  ldm %6.1f GFLOP/s\n", what, N, C, H, H, O, k, k,
           2.0 * N * O * H * H * C * k * k / best / 1e9);
    free(x), free(y), free(w), free(scratch);
}

int main(int argc, char **argv) {
    int type = argc > 1 && !strcmp(argv[1], "f16") ? LDM_W_F16 : LDM_W_F32;
    if (getenv("COMPUTE") && ldm_set_compute(getenv("COMPUTE"))) return fprintf(stderr, "%s\n", ldm_last_error()), 2;
    ldm_kernels_init();
    if (argc > 7 && !strcmp(argv[2], "conv")) { /* bench_gemm TYPE conv N C H O k: one convolution */
        conv("conv", atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), atoi(argv[7]), type);
        return 0;
    }
    if (argc > 5) { /* bench_gemm TYPE linear|wl M N K: one shape */
        one(argv[2], !strcmp(argv[2], "wl"), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), type);
        return 0;
    }
    one("linear 32x32 ff", 0, 2048, 2560, 320, type);
    one("linear 32x32 ff2", 0, 2048, 320, 1280, type);
    one("linear 32x32 qkv", 0, 2048, 320, 320, type);
    one("linear 16x16 qkv", 0, 512, 640, 640, type);
    one("linear 64x64 ff", 0, 8192, 2560, 320, type);
    one("linear ctx k/v", 0, 154, 320, 768, type);
    one("conv 8x8 1280", 1, 1280, 128, 11520, type);
    one("conv 8x8 2560", 1, 1280, 128, 23040, type);
    one("conv 16x16 640", 1, 640, 512, 5760, type);
    one("pointwise 32x32", 1, 320, 1024, 640, type);
    one("square 2048", 1, 2048, 2048, 2048, type);
    conv("conv 8x8 2560", 2, 2560, 8, 1280, 3, type);
    conv("conv 8x8 1280", 2, 1280, 8, 1280, 3, type);
    conv("conv 16x16 1280", 2, 1280, 16, 1280, 3, type);
    return 0;
}
