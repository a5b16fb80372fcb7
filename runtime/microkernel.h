/*
 * microkernel.h - the GEMM micro-kernels shared by the Winograd convolution
 * and the packed GEMM: C[4][w] (+)= A[kc][4]^T B[kc][w], A and B packed
 * ("panels") so that both are read contiguously. B panels are 8w' columns
 * wide ("units" of 8): w' = 3, 2, 1 with AVX2 (4x24, 4x16, 4x8 kernels),
 * and also 6 and 4 where the CPU has AVX-512 (4x48 and 4x32 kernels in
 * 16-float vectors). ldm_panel says how a row of units is cut into panels;
 * ldm_w_widen widens a weight's elements to float32 for the packers.
 */
#ifndef LDM_MICROKERNEL_H
#define LDM_MICROKERNEL_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "half.h"
#include "kernels.h"

/* Transpose the 8 x 8 block r[0..7] (rows) in registers (the packers'). */
static inline void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20), r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20), r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20), r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20), r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* Keep a loaded vector in a register: without this gcc folds the load into
 * each of the 4 FMAs that use it, and the loop becomes load-bound. */
#define IN_REG(x) __asm__("" : "+x"(x))

/* 4 rows of A broadcast (output channels or tokens), w columns of B in
 * vectors (tiles, pixels or features). This loop is where the time goes. */

/* The K loops are written in assembly: compilers fold the B loads into the
 * FMAs (4 loads of each vector instead of 1) or hoist all 4 broadcasts
 * (19 live vectors for 16 registers), either of which costs a third.
 * Accumulators ymm0..11 (row r, vector v in ymm(3r+v), or ymm(2r+v)), B in
 * ymm12..14, broadcasts in ymm15 (and ymm14); they end up in out[r][v]. */
#define MK_CLOBBERS                                                                                           \
    "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", \
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

static inline void kern_4x24(int kc, const float *a, const float *b, float *restrict c, int ldc, int acc) {
    float out[96] __attribute__((aligned(32)));
    __asm__ volatile(
        "vxorps %%ymm0, %%ymm0, %%ymm0\n\t vxorps %%ymm1, %%ymm1, %%ymm1\n\t vxorps %%ymm2, %%ymm2, %%ymm2\n\t"
        "vxorps %%ymm3, %%ymm3, %%ymm3\n\t vxorps %%ymm4, %%ymm4, %%ymm4\n\t vxorps %%ymm5, %%ymm5, %%ymm5\n\t"
        "vxorps %%ymm6, %%ymm6, %%ymm6\n\t vxorps %%ymm7, %%ymm7, %%ymm7\n\t vxorps %%ymm8, %%ymm8, %%ymm8\n\t"
        "vxorps %%ymm9, %%ymm9, %%ymm9\n\t vxorps %%ymm10, %%ymm10, %%ymm10\n\t vxorps %%ymm11, %%ymm11, %%ymm11\n\t"
        "testl %[k], %[k]\n\t"
        "jle 2f\n\t"
        ".p2align 5\n\t"
        "1:\n\t"
        "prefetcht0 1024(%[b])\n\t"
        "prefetcht0 1088(%[b])\n\t"
        "vmovups (%[b]), %%ymm12\n\t"
        "vmovups 32(%[b]), %%ymm13\n\t"
        "vmovups 64(%[b]), %%ymm14\n\t"
        "vbroadcastss (%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %%ymm0\n\t vfmadd231ps %%ymm13, %%ymm15, %%ymm1\n\t"
        "vfmadd231ps %%ymm14, %%ymm15, %%ymm2\n\t"
        "vbroadcastss 4(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %%ymm3\n\t vfmadd231ps %%ymm13, %%ymm15, %%ymm4\n\t"
        "vfmadd231ps %%ymm14, %%ymm15, %%ymm5\n\t"
        "vbroadcastss 8(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %%ymm6\n\t vfmadd231ps %%ymm13, %%ymm15, %%ymm7\n\t"
        "vfmadd231ps %%ymm14, %%ymm15, %%ymm8\n\t"
        "vbroadcastss 12(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %%ymm9\n\t vfmadd231ps %%ymm13, %%ymm15, %%ymm10\n\t"
        "vfmadd231ps %%ymm14, %%ymm15, %%ymm11\n\t"
        "addq $16, %[a]\n\t"
        "addq $96, %[b]\n\t"
        "decl %[k]\n\t"
        "jnz 1b\n\t"
        "2:\n\t"
        "vmovaps %%ymm0, (%[o])\n\t vmovaps %%ymm1, 32(%[o])\n\t vmovaps %%ymm2, 64(%[o])\n\t"
        "vmovaps %%ymm3, 96(%[o])\n\t vmovaps %%ymm4, 128(%[o])\n\t vmovaps %%ymm5, 160(%[o])\n\t"
        "vmovaps %%ymm6, 192(%[o])\n\t vmovaps %%ymm7, 224(%[o])\n\t vmovaps %%ymm8, 256(%[o])\n\t"
        "vmovaps %%ymm9, 288(%[o])\n\t vmovaps %%ymm10, 320(%[o])\n\t vmovaps %%ymm11, 352(%[o])\n\t"
        "vzeroupper\n\t"
        : [a] "+r"(a), [b] "+r"(b), [k] "+r"(kc)
        : [o] "r"(out)
        : MK_CLOBBERS);
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < 3; v++) {
            __m256 z = _mm256_load_ps(out + 24 * r + 8 * v);
            float *d = c + (size_t)r * ldc + 8 * v;
            _mm256_storeu_ps(d, acc ? _mm256_add_ps(z, _mm256_loadu_ps(d)) : z);
        }
}

static inline void kern_4x16(int kc, const float *a, const float *b, float *restrict c, int ldc, int acc) {
    float out[64] __attribute__((aligned(32)));
    __asm__ volatile(
        "vxorps %%ymm0, %%ymm0, %%ymm0\n\t vxorps %%ymm1, %%ymm1, %%ymm1\n\t vxorps %%ymm2, %%ymm2, %%ymm2\n\t"
        "vxorps %%ymm3, %%ymm3, %%ymm3\n\t vxorps %%ymm4, %%ymm4, %%ymm4\n\t vxorps %%ymm5, %%ymm5, %%ymm5\n\t"
        "vxorps %%ymm6, %%ymm6, %%ymm6\n\t vxorps %%ymm7, %%ymm7, %%ymm7\n\t"
        "testl %[k], %[k]\n\t"
        "jle 2f\n\t"
        ".p2align 5\n\t"
        "1:\n\t"
        "prefetcht0 1024(%[b])\n\t"
        "vmovups (%[b]), %%ymm12\n\t"
        "vmovups 32(%[b]), %%ymm13\n\t"
        "vbroadcastss (%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %%ymm0\n\t vfmadd231ps %%ymm13, %%ymm15, %%ymm1\n\t"
        "vbroadcastss 4(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %%ymm2\n\t vfmadd231ps %%ymm13, %%ymm14, %%ymm3\n\t"
        "vbroadcastss 8(%[a]), %%ymm15\n\t"
        "vfmadd231ps %%ymm12, %%ymm15, %%ymm4\n\t vfmadd231ps %%ymm13, %%ymm15, %%ymm5\n\t"
        "vbroadcastss 12(%[a]), %%ymm14\n\t"
        "vfmadd231ps %%ymm12, %%ymm14, %%ymm6\n\t vfmadd231ps %%ymm13, %%ymm14, %%ymm7\n\t"
        "addq $16, %[a]\n\t"
        "addq $64, %[b]\n\t"
        "decl %[k]\n\t"
        "jnz 1b\n\t"
        "2:\n\t"
        "vmovaps %%ymm0, (%[o])\n\t vmovaps %%ymm1, 32(%[o])\n\t vmovaps %%ymm2, 64(%[o])\n\t"
        "vmovaps %%ymm3, 96(%[o])\n\t vmovaps %%ymm4, 128(%[o])\n\t vmovaps %%ymm5, 160(%[o])\n\t"
        "vmovaps %%ymm6, 192(%[o])\n\t vmovaps %%ymm7, 224(%[o])\n\t"
        "vzeroupper\n\t"
        : [a] "+r"(a), [b] "+r"(b), [k] "+r"(kc)
        : [o] "r"(out)
        : MK_CLOBBERS);
    for (int r = 0; r < 4; r++)
        for (int v = 0; v < 2; v++) {
            __m256 z = _mm256_load_ps(out + 16 * r + 8 * v);
            float *d = c + (size_t)r * ldc + 8 * v;
            _mm256_storeu_ps(d, acc ? _mm256_add_ps(z, _mm256_loadu_ps(d)) : z);
        }
}

/* One vector of tiles (blocks of 8 tiles or fewer only). With 4
 * accumulators the loop waits on the FMA latency (one FMA per cycle where
 * two could issue), so even and odd k go to separate accumulators, summed
 * at the end. */
static inline void kern_4x8(int kc, const float *a, const float *b, float *restrict c, int ldc, int acc) {
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, e0 = c0, e1 = c0, e2 = c0, e3 = c0;
    int k = 0;
    for (; k + 2 <= kc; k += 2, a += 8, b += 16) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        IN_REG(b0);
        IN_REG(b1);
        c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a), b0, c0);
        c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 1), b0, c1);
        c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 2), b0, c2);
        c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 3), b0, c3);
        e0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 4), b1, e0);
        e1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 5), b1, e1);
        e2 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 6), b1, e2);
        e3 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 7), b1, e3);
    }
    if (k < kc) {
        __m256 b0 = _mm256_loadu_ps(b);
        c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a), b0, c0);
        c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 1), b0, c1);
        c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 2), b0, c2);
        c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 3), b0, c3);
    }
    __m256 z[4] = {_mm256_add_ps(c0, e0), _mm256_add_ps(c1, e1), _mm256_add_ps(c2, e2), _mm256_add_ps(c3, e3)};
    for (int r = 0; r < 4; r++) {
        float *d = c + (size_t)r * ldc;
        _mm256_storeu_ps(d, acc ? _mm256_add_ps(z[r], _mm256_loadu_ps(d)) : z[r]);
    }
}

/* kern_4x8 with every k in one chain, in order, as the wider kernels sum:
 * the GEMM's 8-column panels (its narrowest, at the right edge of C) use
 * it, so an element of C is the same bits whichever panel width computes
 * it. That makes a GEMM's result independent of where its column falls,
 * and so a sample's result independent of the batch it is computed in
 * (an im2col GEMM over one sample's columns or a batch's). It waits on the
 * FMA latency, at half the rate of kern_4x8, only on those edge panels. */
static inline void kern_4x8_seq(int kc, const float *a, const float *b, float *restrict c, int ldc, int acc) {
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    for (int k = 0; k < kc; k++, a += 4, b += 8) {
        __m256 b0 = _mm256_loadu_ps(b);
        c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a), b0, c0);
        c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 1), b0, c1);
        c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 2), b0, c2);
        c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 3), b0, c3);
    }
    __m256 z[4] = {c0, c1, c2, c3};
    for (int r = 0; r < 4; r++) {
        float *d = c + (size_t)r * ldc;
        _mm256_storeu_ps(d, acc ? _mm256_add_ps(z[r], _mm256_loadu_ps(d)) : z[r]);
    }
}

/* ---- AVX-512: 4 x 48 and 4 x 32 --------------------------------------------
 * Written with GCC's generic vectors of 16 floats, so the same source is
 * also compiled and tested where there is no AVX-512: define
 * LDM_WIDE_KERNELS (make WIDE=1) and each vector becomes two AVX2 ones
 * (slow, but the same arithmetic and the same panel layout). With 32
 * vector registers the compiler keeps the 12 accumulators, 3 B vectors and
 * the broadcast in registers (checked in the generated assembly). */
#if defined(__AVX512F__) || defined(LDM_WIDE_KERNELS)
#define LDM_PANEL_UNITS 6
typedef float ldm_v16 __attribute__((vector_size(64), aligned(4))); /* unaligned loads and stores */
#define V16(p) (*(const ldm_v16 *)(const void *)(p))
#define V16_STORE(p, v) (*(ldm_v16 *)(void *)(p) = (v))
#define V16_SPLAT(x) ((ldm_v16){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x})
/* acc + x * y, rounded once: written out rather than left to the
 * compiler's contraction of `acc += x * y`, which GCC does only from -O2,
 * so that every build (the -O1 sanitizer one too) rounds as the FMA
 * assembly kernels do and a result never depends on which kernel, hence
 * which panel split or thread count, computed it. */
static inline ldm_v16 v16_fma(ldm_v16 x, ldm_v16 y, ldm_v16 acc) {
#ifdef __AVX512F__
    return (ldm_v16)_mm512_fmadd_ps((__m512)x, (__m512)y, (__m512)acc);
#else
    union {
        ldm_v16 v;
        __m256 h[2];
    } a = {x}, b = {y}, c = {acc};
    c.h[0] = _mm256_fmadd_ps(a.h[0], b.h[0], c.h[0]);
    c.h[1] = _mm256_fmadd_ps(a.h[1], b.h[1], c.h[1]);
    return c.v;
#endif
}
#define V16_OUT(r, v, s) V16_STORE(c + (size_t)(r) * ldc + 16 * (v), acc ? (s) + V16(c + (size_t)(r) * ldc + 16 * (v)) : (s))

static inline void kern_4x48(int kc, const float *a, const float *b, float *restrict c, int ldc, int acc) {
    ldm_v16 z = V16_SPLAT(0.0f);
    ldm_v16 s00 = z, s01 = z, s02 = z, s10 = z, s11 = z, s12 = z, s20 = z, s21 = z, s22 = z, s30 = z, s31 = z,
            s32 = z;
    for (int k = 0; k < kc; k++, a += 4, b += 48) {
        __builtin_prefetch(b + 384);
        ldm_v16 b0 = V16(b), b1 = V16(b + 16), b2 = V16(b + 32), x;
        x = V16_SPLAT(a[0]), s00 = v16_fma(x, b0, s00), s01 = v16_fma(x, b1, s01), s02 = v16_fma(x, b2, s02);
        x = V16_SPLAT(a[1]), s10 = v16_fma(x, b0, s10), s11 = v16_fma(x, b1, s11), s12 = v16_fma(x, b2, s12);
        x = V16_SPLAT(a[2]), s20 = v16_fma(x, b0, s20), s21 = v16_fma(x, b1, s21), s22 = v16_fma(x, b2, s22);
        x = V16_SPLAT(a[3]), s30 = v16_fma(x, b0, s30), s31 = v16_fma(x, b1, s31), s32 = v16_fma(x, b2, s32);
    }
    V16_OUT(0, 0, s00), V16_OUT(0, 1, s01), V16_OUT(0, 2, s02);
    V16_OUT(1, 0, s10), V16_OUT(1, 1, s11), V16_OUT(1, 2, s12);
    V16_OUT(2, 0, s20), V16_OUT(2, 1, s21), V16_OUT(2, 2, s22);
    V16_OUT(3, 0, s30), V16_OUT(3, 1, s31), V16_OUT(3, 2, s32);
}

static inline void kern_4x32(int kc, const float *a, const float *b, float *restrict c, int ldc, int acc) {
    ldm_v16 z = V16_SPLAT(0.0f);
    ldm_v16 s00 = z, s01 = z, s10 = z, s11 = z, s20 = z, s21 = z, s30 = z, s31 = z;
    for (int k = 0; k < kc; k++, a += 4, b += 32) {
        __builtin_prefetch(b + 256);
        ldm_v16 b0 = V16(b), b1 = V16(b + 16), x;
        x = V16_SPLAT(a[0]), s00 = v16_fma(x, b0, s00), s01 = v16_fma(x, b1, s01);
        x = V16_SPLAT(a[1]), s10 = v16_fma(x, b0, s10), s11 = v16_fma(x, b1, s11);
        x = V16_SPLAT(a[2]), s20 = v16_fma(x, b0, s20), s21 = v16_fma(x, b1, s21);
        x = V16_SPLAT(a[3]), s30 = v16_fma(x, b0, s30), s31 = v16_fma(x, b1, s31);
    }
    V16_OUT(0, 0, s00), V16_OUT(0, 1, s01), V16_OUT(1, 0, s10), V16_OUT(1, 1, s11);
    V16_OUT(2, 0, s20), V16_OUT(2, 1, s21), V16_OUT(3, 0, s30), V16_OUT(3, 1, s31);
}
#else
#define LDM_PANEL_UNITS 3
#endif

/* The panel of at most pmax units (3, or 6 with the wide kernels) that
 * holds unit u of nu: first unit *po, width *pw. As many full panels as
 * fit; the rest in panels the kernels have (never 5), and a last panel of
 * one unit (the slow 4x8 kernel) only when nu is 1: 4 -> 2+2, 7 -> 4+3. */
static inline void ldm_panel(int nu, int u, int pmax, int *po, int *pw) {
    int nf = nu / pmax, r = nu % pmax, t1 = r, t2 = 0;
    if (r == 1 && nf > 0) nf--, t1 = pmax == 6 ? 4 : 2, t2 = pmax + 1 - t1;
    else if (r == 5) t1 = 3, t2 = 2;
    int base = nf * pmax;
    if (u < base) *po = u / pmax * pmax, *pw = pmax;
    else if (u < base + t1) *po = base, *pw = t1;
    else *po = base + t1, *pw = t2;
}

/* C[4][8 pw] (+)= A panel x B panel of pw units. */
static inline void kern_panel(int pw, int kc, const float *a, const float *b, float *restrict c, int ldc, int acc) {
    switch (pw) {
#if LDM_PANEL_UNITS == 6
    case 6: kern_4x48(kc, a, b, c, ldc, acc); break;
    case 4: kern_4x32(kc, a, b, c, ldc, acc); break;
#endif
    case 3: kern_4x24(kc, a, b, c, ldc, acc); break;
    case 2: kern_4x16(kc, a, b, c, ldc, acc); break;
    default: kern_4x8(kc, a, b, c, ldc, acc); break;
    }
}

/* ---- bfloat16 products (--compute bf16; AVX-512 BF16) ----------------------
 * Panels of pairs of consecutive k side by side, as vdpbf16ps reads them:
 * A [kp][4][2], B [kp][w][2]. */
#ifdef __AVX512BF16__
/* C[4][w] (+)= A x B over kp pairs of k, w = 16 nv + 8 h (48, 32, 24, 16
 * or 8): inlined once per width, the accumulators in registers. */
static inline __attribute__((always_inline)) void kern_bf16(int nv, int h, int kp, const uint16_t *a,
                                                              const uint16_t *b, float *restrict c, int ldc, int acc) {
    const int w = 16 * nv + 8 * h;
    __m512 s[4][3];
    __m256 t[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) s[r][v] = _mm512_setzero_ps();
        t[r] = _mm256_setzero_ps();
    }
    for (int p = 0; p < kp; p++, a += 8, b += 2 * w) {
        __m512bh bv[3];
        __m256bh bh = (__m256bh)_mm256_setzero_si256();
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) bv[v] = (__m512bh)_mm512_loadu_si512(b + 32 * v);
        if (h) bh = (__m256bh)_mm256_loadu_si256((const __m256i *)(b + 32 * nv));
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            uint32_t pair;
            memcpy(&pair, a + 2 * r, 4);
            __m512i x = _mm512_set1_epi32((int)pair);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) s[r][v] = _mm512_dpbf16_ps(s[r][v], (__m512bh)x, bv[v]);
            if (h) t[r] = _mm256_dpbf16_ps(t[r], (__m256bh)_mm512_castsi512_si256(x), bh);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
        float *cr = c + (size_t)r * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            _mm512_storeu_ps(cr + 16 * v, acc ? _mm512_add_ps(s[r][v], _mm512_loadu_ps(cr + 16 * v)) : s[r][v]);
        if (h) _mm256_storeu_ps(cr + 16 * nv, acc ? _mm256_add_ps(t[r], _mm256_loadu_ps(cr + 16 * nv)) : t[r]);
    }
}

/* C[4][8 pw] (+)= A x B over kp pairs of k (pw units of 8 columns). */
static inline void kern_panel_bf16(int pw, int kp, const uint16_t *a, const uint16_t *b, float *restrict c, int ldc,
                                   int acc) {
    switch (pw) {
    case 6: kern_bf16(3, 0, kp, a, b, c, ldc, acc); break;
    case 4: kern_bf16(2, 0, kp, a, b, c, ldc, acc); break;
    case 3: kern_bf16(1, 1, kp, a, b, c, ldc, acc); break;
    case 2: kern_bf16(1, 0, kp, a, b, c, ldc, acc); break;
    default: kern_bf16(0, 1, kp, a, b, c, ldc, acc); break;
    }
}
#endif

/* Widen n elements of w starting at element `off` into dst (float32): the
 * kernels' copy of ldm_w_to_f32 (which wraps it for generated code), so
 * that no kernel object calls another for it. */
static inline void ldm_w_widen(LdmW w, size_t off, size_t n, float *dst) {
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
        for (; i < n; i++) dst[i] = ldm_f16_to_f32(s[i]);
    } else {
        /* bfloat16: the top half of a float32 */
        for (; i + 8 <= n; i += 8) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
        for (; i < n; i++) dst[i] = ldm_bf16_to_f32(s[i]);
    }
}

#endif
