/*
 * microkernel.h - the GEMM micro-kernels shared by the Winograd convolution
 * and the packed GEMM: C[4][w] (+)= A[kc][4]^T B[kc][w] for w = 24, 16, 8,
 * A and B packed ("panels") so that both are read contiguously.
 */
#ifndef LDM_MICROKERNEL_H
#define LDM_MICROKERNEL_H

#include <immintrin.h>
#include <stddef.h>

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

/* One vector of tiles (blocks of 8 tiles or fewer only): plain C. */
static inline void kern_4x8(int kc, const float *a, const float *b, float *restrict c, int ldc, int acc) {
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    for (int k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b + 8 * k);
        c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 4 * k), b0, c0);
        c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 4 * k + 1), b0, c1);
        c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 4 * k + 2), b0, c2);
        c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 4 * k + 3), b0, c3);
    }
    __m256 z[4] = {c0, c1, c2, c3};
    for (int r = 0; r < 4; r++) {
        float *d = c + (size_t)r * ldc;
        _mm256_storeu_ps(d, acc ? _mm256_add_ps(z[r], _mm256_loadu_ps(d)) : z[r]);
    }
}

#endif
