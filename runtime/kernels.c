/*
 * kernels.c - GEMM and convolution kernels for generated code (see
 * kernels.h): OpenBLAS does the inner products single-threaded, we split the
 * work over the cores with OpenMP, widen half-precision weights block by
 * block, and fold epilogues (bias, per-sample row add, residual) into the
 * GEMM by initialising C with them and accumulating.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "kernels.h"
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
        for (; i < n; i++) {
            uint32_t bits = (uint32_t)s[i] << 16;
            memcpy(dst + i, &bits, 4);
        }
    }
}

/* A per-thread buffer for widened weight blocks, kept between calls. */
static float *thread_buf(size_t n) {
    static _Thread_local float *buf;
    static _Thread_local size_t cap;
    if (n > cap) {
        free(buf);
        cap = n + n / 4;
        buf = ldm_aligned_alloc(cap * sizeof *buf);
    }
    return buf;
}

/* [lo, hi) of `total` items for part `i` of `parts`, in multiples of `q`. */
static void split(int total, int parts, int i, int q, int *lo, int *hi) {
    int units = (total + q - 1) / q;
    int a = (int)((long)units * i / parts), b = (int)((long)units * (i + 1) / parts);
    *lo = a * q < total ? a * q : total;
    *hi = b * q < total ? b * q : total;
}

/* ---- GEMM ------------------------------------------------------------------- */

/* Rows of the weight per widened block: keep a block around 4 MB. */
static int block_rows(int K) {
    int r = (1 << 20) / (K > 0 ? K : 1);
    if (r < 16) r = 16;
    return r & ~15;
}

void ldm_gemm(int M, int N, int K, const float *A, int lda, LdmW B, size_t b_off, int ldb, int trans_b, float *C,
              int ldc, int accumulate) {
    const float beta = accumulate ? 1.0f : 0.0f;
    int nt = omp_get_max_threads();
    if (!trans_b) {
        /* B[K, N] (activations or a row-major weight): split the rows of A */
        if (B.type != LDM_W_F32) {
            float *wb = ldm_aligned_alloc((size_t)K * (size_t)N * sizeof *wb);
            for (int k = 0; k < K; k++) ldm_w_to_f32(B, b_off + (size_t)k * (size_t)ldb, (size_t)N, wb + (size_t)k * N);
            ldm_gemm(M, N, K, A, lda, (LdmW){wb, LDM_W_F32}, 0, N, 0, C, ldc, accumulate);
            free(wb);
            return;
        }
        const float *Bp = (const float *)B.p + b_off;
#pragma omp parallel num_threads(nt)
        {
            int lo, hi;
            split(M, omp_get_num_threads(), omp_get_thread_num(), 8, &lo, &hi);
            if (hi > lo)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, hi - lo, N, K, 1.0f, A + (size_t)lo * lda, lda, Bp,
                            ldb, beta, C + (size_t)lo * ldc, ldc);
        }
        return;
    }
    /* C[M, N] = A[M, K] W[N, K]^T: W is a weight; split its rows (= N). */
    if (N >= 64 * nt || M < 64 * nt) {
#pragma omp parallel num_threads(nt)
        {
            int lo, hi;
            split(N, omp_get_num_threads(), omp_get_thread_num(), 16, &lo, &hi);
            int rb = B.type == LDM_W_F32 ? (hi - lo) : block_rows(K);
            for (int n0 = lo; n0 < hi; n0 += rb) {
                int nb = hi - n0 < rb ? hi - n0 : rb;
                const float *wp;
                int ldw = ldb;
                if (B.type == LDM_W_F32) {
                    wp = (const float *)B.p + b_off + (size_t)n0 * ldb;
                } else {
                    float *t = thread_buf((size_t)nb * K);
                    for (int r = 0; r < nb; r++) ldm_w_to_f32(B, b_off + (size_t)(n0 + r) * ldb, (size_t)K, t + (size_t)r * K);
                    wp = t;
                    ldw = K;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, nb, K, 1.0f, A, lda, wp, ldw, beta, C + n0, ldc);
            }
        }
        return;
    }
    /* few output features, many rows: split the rows of A, each thread with the whole W */
    const float *wp = (const float *)B.p + b_off;
    float *wb = NULL;
    int ldw = ldb;
    if (B.type != LDM_W_F32) {
        wb = ldm_aligned_alloc((size_t)N * K * sizeof *wb);
        for (int r = 0; r < N; r++) ldm_w_to_f32(B, b_off + (size_t)r * ldb, (size_t)K, wb + (size_t)r * K);
        wp = wb;
        ldw = K;
    }
#pragma omp parallel num_threads(nt)
    {
        int lo, hi;
        split(M, omp_get_num_threads(), omp_get_thread_num(), 8, &lo, &hi);
        if (hi > lo)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, hi - lo, N, K, 1.0f, A + (size_t)lo * lda, lda, wp, ldw,
                        beta, C + (size_t)lo * ldc, ldc);
    }
    free(wb);
}

void ldm_gemm_wl(int M, int N, int K, LdmW A, size_t a_off, int lda, const float *B, int ldb, float *C, int ldc,
                 int accumulate) {
    const float beta = accumulate ? 1.0f : 0.0f;
    int nt = omp_get_max_threads();
    if (M >= 32 * nt) {
        /* split the weight rows (output channels) */
#pragma omp parallel num_threads(nt)
        {
            int lo, hi;
            split(M, omp_get_num_threads(), omp_get_thread_num(), 8, &lo, &hi);
            int rb = A.type == LDM_W_F32 ? (hi - lo) : block_rows(K);
            for (int m0 = lo; m0 < hi; m0 += rb) {
                int mb = hi - m0 < rb ? hi - m0 : rb;
                const float *ap;
                int lda2 = lda;
                if (A.type == LDM_W_F32) {
                    ap = (const float *)A.p + a_off + (size_t)m0 * lda;
                } else {
                    float *t = thread_buf((size_t)mb * K);
                    for (int r = 0; r < mb; r++) ldm_w_to_f32(A, a_off + (size_t)(m0 + r) * lda, (size_t)K, t + (size_t)r * K);
                    ap = t;
                    lda2 = K;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mb, N, K, 1.0f, ap, lda2, B, ldb, beta,
                            C + (size_t)m0 * ldc, ldc);
            }
        }
        return;
    }
    /* few output channels: split the columns, each thread with the whole weight */
    const float *ap = (const float *)A.p + a_off;
    float *wb = NULL;
    int lda2 = lda;
    if (A.type != LDM_W_F32) {
        wb = ldm_aligned_alloc((size_t)M * K * sizeof *wb);
        for (int r = 0; r < M; r++) ldm_w_to_f32(A, a_off + (size_t)r * lda, (size_t)K, wb + (size_t)r * K);
        ap = wb;
        lda2 = K;
    }
#pragma omp parallel num_threads(nt)
    {
        int lo, hi;
        split(N, omp_get_num_threads(), omp_get_thread_num(), 16, &lo, &hi);
        if (hi > lo)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, hi - lo, K, 1.0f, ap, lda2, B + lo, ldb, beta,
                        C + lo, ldc);
    }
    free(wb);
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
    case LDM_CONV_POINTWISE: return 0;
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
            float *yr = y + ((size_t)n * s->O + o) * P;
            if (ep->residual) {
                const float *r = ep->residual + ((size_t)n * s->O + o) * P;
                for (long p = 0; p < P; p++) yr[p] = r[p] + c;
            } else {
                for (long p = 0; p < P; p++) yr[p] = c;
            }
        }
    return 1;
}

void ldm_conv2d(const LdmConvShape *s, int algo, const float *x, LdmW w, const LdmEpilogue *ep, float *y,
                float *scratch) {
    if (algo == LDM_CONV_WINOGRAD) {
        ldm_conv3x3_winograd(s, x, w, ep, y, scratch);
        return;
    }
    int acc = epilogue_init(s, ep, y);
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
                float *yr = y + ((size_t)n * s->O + o) * P;
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
        float *yn = y + (size_t)n * s->O * P;
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
