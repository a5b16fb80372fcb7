/*
 * kernels_winograd.c - 3x3 convolution, stride 1, padding 1, by Winograd
 * F(4x4, 3x3) (Lavin & Gray 2016, interpolation points 0, 1, -1, 2, -2, inf).
 *
 * Each 4x4 block of outputs ("tile") of channel o is
 *     Y = A^T [ sum_c (G g[o,c] G^T) .* (B^T d[c] B) ] A
 * where d[c] is the 6x6 input patch (rows 4i-1 .. 4i+4, columns 4j-1 ..
 * 4j+4, zero outside the image) and g[o,c] the 3x3 kernel. With
 * U = G g G^T and V = B^T d B, the channel sum at each of the 36 positions
 * xi = 6k + l of the transformed tile is a matrix product:
 *     M[xi][o][t] = sum_c U[xi][o][c] V[xi][c][t]        (36 GEMMs)
 * 36 multiplies per (tile, channel pair) instead of 144: a quarter of the
 * direct convolution's arithmetic. G is used with its rows scaled to
 * integers (G' = D G, D = diag(4, -6, -6, 24, 24, 1)) so the weight
 * transform is cheap; the output transform undoes it (A'^T = A^T D^-1).
 *
 * Blocking. U for a whole layer (36 O C floats: 236 MB at 1280 x 1280) and
 * V for a whole image do not fit any cache, so one of the two is kept for
 * a block ("resident") and the other is recomputed for every block:
 *   tile-major: for each tile block   { V;  for each output block { U; GEMMs } }
 *   out-major:  for each output block { U;  for each tile block   { V; GEMMs } }
 * wg_plan picks the order that recomputes less: few tiles (the UNet's
 * small latents) tile-major, usually with V of all tiles and each weight
 * transformed once, in K blocks; many tiles and few channels (the VAE
 * decoder at full resolution) out-major, with U of all outputs. The budgets
 * keep the working set (V + U + the GEMM products M) around 10 MB, inside
 * the L3 cache even when it is shared: past it, memory bandwidth decides.
 *
 * Threads (run_shared). V is shared: every thread transforms some input
 * channels of it, between two barriers (the only ones, per tile block). U
 * and M are not: each thread owns a slice of every output block's rows and
 * transforms the weights of, multiplies, and writes back only those.
 *   P1 input transform  V[36][panel][C][width]   split over input channels
 *   P2 weight transform U[36][OB/4][kw][4]       own output rows
 *   P3 36 GEMMs         M[36][OB][sub-block]     own output rows
 *   P4 output transform and epilogue -> y        own output rows
 *      (bias, row add, residual, then ReLU if asked: in registers)
 * Out-major with many tile blocks (run_private) instead splits V and M
 * into one slice per thread: U is made by all threads, then each thread
 * takes whole tile blocks (P1, P3, P4 for all rows) with no barrier at all,
 * so that a thread the OS preempts holds up nobody.
 * Tiles are numbered t = (n*TH + i)*TW + j (TH x TW tiles per image) and
 * transformed 8 at a time ("units", one AVX2 lane per tile). V is stored
 * in panels of units cut by ldm_panel (24, 16 or 8 tiles; also 48 and 32
 * with AVX-512), [C][width] each, so that the GEMM micro-kernel (4 output
 * channels x a panel) reads both operands contiguously. The panel widths
 * do not change the plan or the scratch size. All scratch is in the
 * caller's buffer and independent of the thread count (the compiler plans
 * it ahead of time). x must not alias y; the residual may.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "microkernel.h"
#include "util.h"

/* WG_RES_BYTES, WG_CHUNK_BYTES, WG_KBLK_UNITS, WG_M_BYTES, WG_KC, WG_MODE: kernel_sizes.h */
#define WG_WCHUNK 32               /* input channels per widened half-precision weight chunk */
/* Outputs larger than this bypass the cache (streaming stores): an output
 * well past the L2 caches would be read for ownership from L3 or memory
 * and written back later, twice the traffic. 4 MB, not the 16 it was:
 * TAESD's 256x256 layers (16 MB) went from 18 to 16 ms on one thread, the
 * VAE decoder about 1% faster, the UNet the same (Zen 4, L2 1 MB). */
#define WG_NT_BYTES (4u << 20)

/* ------------------------------------------------------------------------
 * plan: block sizes and loop order (a pure function of the shape)
 * ------------------------------------------------------------------------ */

/* The plan (LdmWgPlan, ldm_wg_plan) is in kernel_sizes.h, where the
 * compiler sizes the scratch from it (ldm_winograd_scratch_bytes). */

/* Widest panel (units) for GEMM sub-blocks of su units: the wide kernels'
 * 6 where a sub-block holds them, else 3. Panels are cut by ldm_panel. */
static int wg_pmax(int su) { return LDM_PANEL_UNITS == 6 && su >= 6 ? 6 : 3; }

/* ------------------------------------------------------------------------
 * the 1-D transforms, 8 lanes at a time
 * ------------------------------------------------------------------------ */

/* o = B^T d (6 -> 6):
 *   [4  0 -5  0 1 0]   [0 -4 -4  1 1 0]   [0  4 -4 -1 1 0]
 *   [0 -2 -1  2 1 0]   [0  2 -1 -2 1 0]   [0  4  0 -5 0 1] */
static inline void bt6(const __m256 *d, __m256 *o) {
    const __m256 two = _mm256_set1_ps(2.0f), four = _mm256_set1_ps(4.0f), five = _mm256_set1_ps(5.0f);
    __m256 a = _mm256_fnmadd_ps(d[2], four, d[4]); /* d4 - 4 d2 */
    __m256 b = _mm256_fnmadd_ps(d[1], four, d[3]); /* d3 - 4 d1 */
    __m256 c = _mm256_sub_ps(d[4], d[2]);
    __m256 e = _mm256_sub_ps(d[3], d[1]);
    o[0] = _mm256_fmadd_ps(d[0], four, _mm256_fnmadd_ps(d[2], five, d[4]));
    o[1] = _mm256_add_ps(a, b);
    o[2] = _mm256_sub_ps(a, b);
    o[3] = _mm256_fmadd_ps(e, two, c);
    o[4] = _mm256_fnmadd_ps(e, two, c);
    o[5] = _mm256_fmadd_ps(d[1], four, _mm256_fnmadd_ps(d[3], five, d[5]));
}

/* o = A'^T m (6 -> 4), A'^T = A^T D^-1:
 *   [1/4 -1/6 -1/6 1/24  1/24 0]   [0 -1/6  1/6 2/24 -2/24 0]
 *   [0   -1/6 -1/6 4/24  4/24 0]   [0 -1/6  1/6 8/24 -8/24 1] */
static inline void at6(const __m256 *m, __m256 *o) {
    __m256 s12 = _mm256_add_ps(m[1], m[2]), d12 = _mm256_sub_ps(m[1], m[2]);
    __m256 s34 = _mm256_add_ps(m[3], m[4]), d34 = _mm256_sub_ps(m[3], m[4]);
    __m256 a = _mm256_mul_ps(s12, _mm256_set1_ps(-1.0f / 6)), b = _mm256_mul_ps(d12, _mm256_set1_ps(-1.0f / 6));
    o[0] = _mm256_fmadd_ps(m[0], _mm256_set1_ps(0.25f), _mm256_fmadd_ps(s34, _mm256_set1_ps(1.0f / 24), a));
    o[1] = _mm256_fmadd_ps(d34, _mm256_set1_ps(2.0f / 24), b);
    o[2] = _mm256_fmadd_ps(s34, _mm256_set1_ps(4.0f / 24), a);
    o[3] = _mm256_add_ps(_mm256_fmadd_ps(d34, _mm256_set1_ps(8.0f / 24), b), m[5]);
}

/* o = G' g (3 -> 6), G' = D G = [1 0 0; 1 1 1; 1 -1 1; 1 2 4; 1 -2 4; 0 0 1]. */
static inline void g3(__m256 g0, __m256 g1, __m256 g2, __m256 *o) {
    __m256 s = _mm256_add_ps(g0, g2), t = _mm256_fmadd_ps(g2, _mm256_set1_ps(4.0f), g0);
    o[0] = g0;
    o[1] = _mm256_add_ps(s, g1);
    o[2] = _mm256_sub_ps(s, g1);
    o[3] = _mm256_fmadd_ps(g1, _mm256_set1_ps(2.0f), t);
    o[4] = _mm256_fnmadd_ps(g1, _mm256_set1_ps(2.0f), t);
    o[5] = g2;
}

/* ------------------------------------------------------------------------
 * P1: input transform
 * ------------------------------------------------------------------------ */

typedef struct WgCtx {
    const LdmConvShape *s;     /* the convolution run: with an upsampling prologue the core
                                  (low-resolution, 4 O outputs: ldm_wg_core_shape) */
    const LdmConvShape *sy;    /* the caller's shape: y, bias, row add and residual */
    int up;                    /* 1: upsampling prologue (sub-pixel phases, see output_unit_up) */
    const LdmWgPlan *p;
    const float *x;            /* [N, C, H, W] */
    LdmW w;                    /* [O, C, 3, 3] */
    const float *bias;         /* [O] or NULL */
    const float *rowadd;       /* [N, O] or NULL */
    const float *residual;     /* [N, O, H, W] or NULL */
    float *y;                  /* [N, O, H, W] */
    int nt_store;              /* stream y past the caches */
    float *V, *U, *M;          /* scratch parts */
    int relu;                  /* max(., 0) after the sums */
} WgCtx;

/* Where a thread's transformed input and GEMM products go: the shared V
 * and M, or its own slices of them. */
typedef struct WgBuf {
    float *V;                  /* [36][panel][C][width], planes vxs apart */
    float *M;                  /* [36][rows][ldm], planes mxs apart */
    size_t vxs, mxs;
    int ldm;                   /* tiles per M row */
    int mrow0;                 /* output row of M's first row */
    int units;                 /* private: units per tile block */
    int pmax;                  /* widest panel, units (wg_pmax) */
} WgBuf;

/* 8 floats of an image row from column col on, zero outside [0, W). */
static inline __m256 load_row8(const float *row, int col, int W) {
    if (col >= 0 && col + 8 <= W) return _mm256_loadu_ps(row + col);
    float t[8];
    for (int e = 0; e < 8; e++) t[e] = col + e >= 0 && col + e < W ? row[col + e] : 0.0f;
    return _mm256_loadu_ps(t);
}

/* Columns 4j-1+s (s = 0..5) of 8 consecutive tiles j = j0 .. j0+7 of an
 * image row, as 6 vectors over the tiles: a stride-4 de-interleave of the
 * 34 floats from column 4 j0 - 1 on. */
static inline void row_phases(const float *row, int W, int j0, __m256 *P) {
    int b = 4 * j0 - 1;
    __m256 q0 = load_row8(row, b, W), q1 = load_row8(row, b + 8, W);
    __m256 q2 = load_row8(row, b + 16, W), q3 = load_row8(row, b + 24, W);
    __m256 r0 = _mm256_permute2f128_ps(q0, q2, 0x20), r1 = _mm256_permute2f128_ps(q0, q2, 0x31);
    __m256 r2 = _mm256_permute2f128_ps(q1, q3, 0x20), r3 = _mm256_permute2f128_ps(q1, q3, 0x31);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    P[0] = _mm256_shuffle_ps(t0, t2, 0x44);
    P[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
    P[2] = _mm256_shuffle_ps(t1, t3, 0x44);
    P[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
    /* phases 4 and 5 are phases 0 and 1 of the next tile */
    const __m256i rot = _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 0);
    float a32 = b + 32 < W ? row[b + 32] : 0.0f, a33 = b + 33 < W ? row[b + 33] : 0.0f;
    P[4] = _mm256_blend_ps(_mm256_permutevar8x32_ps(P[0], rot), _mm256_set1_ps(a32), 0x80);
    P[5] = _mm256_blend_ps(_mm256_permutevar8x32_ps(P[1], rot), _mm256_set1_ps(a33), 0x80);
}

/* Transform the 6x6 patches D[r][s] (vectors over 8 tiles) of one channel
 * and store V[xi] at dst + xi*xs. */
static inline void input_tf(__m256 D[6][6], float *dst, size_t xs) {
    __m256 R[6][6];
#pragma GCC unroll 6
    for (int r = 0; r < 6; r++) bt6(D[r], R[r]); /* along the row */
#pragma GCC unroll 6
    for (int l = 0; l < 6; l++) {
        __m256 col[6], o[6];
#pragma GCC unroll 6
        for (int r = 0; r < 6; r++) col[r] = R[r][l];
        bt6(col, o); /* along the column */
#pragma GCC unroll 6
        for (int k = 0; k < 6; k++) _mm256_storeu_ps(dst + (size_t)(6 * k + l) * xs, o[k]);
    }
}

/* V for channel c of the 8 tiles t0 .. t0+7 (nt < 8: the rest are padding). */
static void input_unit(const WgCtx *cx, int c, long t0, int nt, float *dst, size_t xs) {
    const LdmConvShape *s = cx->s;
    const LdmWgPlan *p = cx->p;
    int H = s->H, W = s->W;
    long per_img = (long)p->TH * p->TW;
    __m256 D[6][6];
    long n = t0 / per_img, rem = t0 % per_img;
    int i = (int)(rem / p->TW), j0 = (int)(rem % p->TW);
    if (nt == 8 && j0 + 8 <= p->TW) {
        /* one tile row: contiguous loads and a de-interleave */
        const float *xc = cx->x + ((size_t)n * s->C + c) * (size_t)H * W;
#pragma GCC unroll 6
        for (int r = 0; r < 6; r++) {
            int h = 4 * i - 1 + r;
            if (h < 0 || h >= H) {
                for (int q = 0; q < 6; q++) D[r][q] = _mm256_setzero_ps();
                continue;
            }
            const float *row = xc + (size_t)h * W;
            if (c + 1 < s->C) {
                /* the same columns of the next channel, wanted one sweep of the block later */
                const char *nx = (const char *)(row + (size_t)H * W + (j0 ? 4 * j0 - 1 : 0));
                _mm_prefetch(nx, _MM_HINT_T0);
                _mm_prefetch(nx + 64, _MM_HINT_T0);
                _mm_prefetch(nx + 128, _MM_HINT_T0);
            }
            row_phases(row, W, j0, D[r]);
        }
    } else {
        /* tiles across rows or images, or padding: gather one by one */
        float d[36][8];
        for (int e = 0; e < 8; e++) {
            long t = t0 + e;
            if (e >= nt) {
                for (int q = 0; q < 36; q++) d[q][e] = 0.0f;
                continue;
            }
            long tn = t / per_img, tr = t % per_img;
            int ti = (int)(tr / p->TW), tj = (int)(tr % p->TW);
            const float *xc = cx->x + ((size_t)tn * s->C + c) * (size_t)H * W;
            for (int r = 0; r < 6; r++) {
                int h = 4 * ti - 1 + r;
                for (int q = 0; q < 6; q++) {
                    int w = 4 * tj - 1 + q;
                    d[6 * r + q][e] = h >= 0 && h < H && w >= 0 && w < W ? xc[(size_t)h * W + w] : 0.0f;
                }
            }
        }
        for (int r = 0; r < 6; r++)
            for (int q = 0; q < 6; q++) D[r][q] = _mm256_loadu_ps(d[6 * r + q]);
    }
    input_tf(D, dst, xs);
}

/* P1: V for the block's tiles [bt0, bt0 + nb) and channels [c0, c1); one
 * channel at a time, so that its image rows are read in order. */
static void phase_input(const WgCtx *cx, const WgBuf *bf, long bt0, long nb, int c0, int c1) {
    int C = cx->s->C, nu = (int)((nb + 7) / 8);
    size_t xs = bf->vxs;
    for (int c = c0; c < c1; c++)
        for (int u = 0; u < nu; u++) {
            int po, pw;
            ldm_panel(nu, u, bf->pmax, &po, &pw);
            int nt = nb - 8l * u < 8 ? (int)(nb - 8l * u) : 8;
            float *dst = bf->V + (size_t)po * 8 * C + (size_t)c * pw * 8 + (size_t)(u - po) * 8;
            input_unit(cx, c, bt0 + 8l * u, nt, dst, xs);
        }
}

/* ------------------------------------------------------------------------
 * P2: weight transform
 * ------------------------------------------------------------------------ */

/* U' = G' g G'^T for 4 output channels (rows base + o*ostride, o < no) and
 * channels [0, nc), 9 floats each. A vector holds a channel pair x the 4
 * outputs, i.e. 8 consecutive floats of U[xi][c][4]; stored at dst + xi*xs. */
static void weight_group(const float *base, int ostride, int no, int nc, float *dst, size_t xs) {
    static const float zero[9];
    for (int c = 0; c < nc; c += 2) {
        if (c + 24 < nc) /* the weight rows, a few iterations ahead */
            for (int o = 0; o < no; o++)
                _mm_prefetch((const char *)(base + (size_t)o * ostride + (size_t)(c + 24) * 9), _MM_HINT_T0);
        const float *row[8];
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) {
            int o = l & 3, cc = c + (l >> 2);
            row[l] = o < no && cc < nc ? base + (size_t)o * ostride + (size_t)cc * 9 : zero;
        }
        __m256 g[9];
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) g[l] = _mm256_loadu_ps(row[l]); /* taps 0..7 of lane l */
        transpose8(g);                                              /* -> tap k of all lanes */
        g[8] = _mm256_setr_ps(row[0][8], row[1][8], row[2][8], row[3][8], row[4][8], row[5][8], row[6][8], row[7][8]);
        __m256 Z[6][3];
#pragma GCC unroll 3
        for (int kx = 0; kx < 3; kx++) {
            __m256 o[6];
            g3(g[kx], g[3 + kx], g[6 + kx], o); /* along the kernel column */
#pragma GCC unroll 6
            for (int r = 0; r < 6; r++) Z[r][kx] = o[r];
        }
#pragma GCC unroll 6
        for (int r = 0; r < 6; r++) {
            __m256 o[6];
            g3(Z[r][0], Z[r][1], Z[r][2], o); /* along the kernel row */
#pragma GCC unroll 6
            for (int l = 0; l < 6; l++) {
                float *d = dst + (size_t)(6 * r + l) * xs + (size_t)c * 4;
                if (c + 1 < nc) _mm256_storeu_ps(d, o[l]);
                else _mm_storeu_ps(d, _mm256_castps256_ps128(o[l]));
            }
        }
    }
}

/* U of the 4 phases (rows 4 so .. 4 so + 3 of the core convolution) of
 * output so of an upsampling convolution, channels [k0, k0 + kn): the 3x3
 * kernel g of each phase (dy, dx) has the sum of the taps g[ky][kx] that
 * read the same low-resolution pixel at offset ((dy + ky + 1) / 2 - 1,
 * (dx + kx + 1) / 2 - 1), i.e. row 0 of phase dy = 0 is g's row 0, its
 * row 1 rows 1 + 2, its row 2 zero (dy = 1: zero, rows 0 + 1, row 2). */
static void weights_up(const WgCtx *cx, int so, int k0, int kn, float *dst, size_t xs) {
    const int C = cx->s->C;
    float raw[WG_WCHUNK * 9], wb[4 * WG_WCHUNK * 9];
    for (int c = 0; c < kn; c += WG_WCHUNK) {
        int nc = kn - c < WG_WCHUNK ? kn - c : WG_WCHUNK;
        ldm_w_widen(cx->w, ((size_t)so * C + k0 + c) * 9, (size_t)nc * 9, raw);
        for (int ph = 0; ph < 4; ph++) {
            const int dy = ph >> 1, dx = ph & 1;
            for (int cc = 0; cc < nc; cc++) {
                float *k = wb + ((size_t)ph * WG_WCHUNK + cc) * 9;
                const float *g = raw + (size_t)cc * 9;
                for (int t = 0; t < 9; t++) k[t] = 0.0f;
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++) k[3 * ((dy + ky + 1) >> 1) + ((dx + kx + 1) >> 1)] += g[3 * ky + kx];
            }
        }
        weight_group(wb, WG_WCHUNK * 9, 4, nc, dst + (size_t)c * 4, xs);
    }
}

/* P2: U for the 4-output groups [g0, g1) of the output block at o0 and
 * input channels [k0, k0 + kn) (U rows hold kw channels). */
static void phase_weights(const WgCtx *cx, int o0, int g0, int g1, int k0, int kn) {
    const LdmConvShape *s = cx->s;
    int C = s->C, kw = cx->p->kw;
    size_t xs = cx->p->uxs;
    for (int g = g0; g < g1; g++) {
        int o = o0 + 4 * g, no = s->O - o < 4 ? s->O - o : 4;
        float *dst = cx->U + (size_t)g * 4 * kw;
        if (no <= 0) {
            /* padding rows past O: zeros */
            for (int xi = 0; xi < 36; xi++) memset(dst + xi * xs, 0, (size_t)kn * 4 * sizeof(float));
            continue;
        }
        if (cx->up) {
            weights_up(cx, o / 4, k0, kn, dst, xs);
            continue;
        }
        if (cx->w.type == LDM_W_F32) {
            weight_group((const float *)cx->w.p + ((size_t)o * C + k0) * 9, C * 9, no, kn, dst, xs);
            continue;
        }
        /* half precision: widen a chunk of channels, then transform it */
        float wb[4 * WG_WCHUNK * 9];
        for (int c = 0; c < kn; c += WG_WCHUNK) {
            int nc = kn - c < WG_WCHUNK ? kn - c : WG_WCHUNK;
            /* the next chunk's rows, from memory while this one is transformed
             * (short pieces of 4 rows: the hardware prefetchers miss them) */
            int pg = c + WG_WCHUNK < kn ? g : g + 1, pc = c + WG_WCHUNK < kn ? c + WG_WCHUNK : 0;
            int po = o0 + 4 * pg, pno = s->O - po < 4 ? s->O - po : 4;
            if (pg < g1)
                for (int q = 0; q < pno; q++) {
                    const char *r = (const char *)((const uint16_t *)cx->w.p + ((size_t)(po + q) * C + k0 + pc) * 9);
                    const int nb = (kn - pc < WG_WCHUNK ? kn - pc : WG_WCHUNK) * 9 * 2;
                    for (int b = 0; b < nb + 63; b += 64) _mm_prefetch(r + b, _MM_HINT_T0);
                }
            for (int q = 0; q < no; q++)
                ldm_w_widen(cx->w, ((size_t)(o + q) * C + k0 + c) * 9, (size_t)nc * 9, wb + q * WG_WCHUNK * 9);
            weight_group(wb, WG_WCHUNK * 9, no, nc, dst + (size_t)c * 4, xs);
        }
    }
}

/* P3: M for output rows [r0, r0 + nr) of the output block (multiples of
 * 4) x units [u0, u1) (whole panels) of the tile block of nu units, summed
 * over the channels [kb, kb + kn) whose weights U holds (M accumulates
 * unless kb is 0). */
static void phase_gemm(const WgCtx *cx, const WgBuf *bf, int nu, int u0, int u1, int r0, int nr, int kb, int kn) {
    int C = cx->s->C, kw = cx->p->kw, ldm = bf->ldm;
    size_t vxs = bf->vxs, uxs = cx->p->uxs, mxs = bf->mxs;
    for (int xi = 0; xi < 36; xi++) {
        const float *V = bf->V + xi * vxs, *U = cx->U + xi * uxs + (size_t)r0 * kw;
        float *M = bf->M + xi * mxs + (size_t)(r0 - bf->mrow0) * ldm;
        for (int k0 = kb; k0 < kb + kn; k0 += WG_KC) {
            int kc = kb + kn - k0 < WG_KC ? kb + kn - k0 : WG_KC;
            for (int u = u0; u < u1;) {
                int po, pw;
                ldm_panel(nu, u, bf->pmax, &po, &pw);
                const float *b = V + (size_t)po * 8 * C + (size_t)k0 * pw * 8;
                float *mc = M + (size_t)(po - u0) * 8;
                for (int g = 0; g < nr / 4; g++) {
                    const float *a = U + (size_t)g * 4 * kw + (size_t)(k0 - kb) * 4;
                    float *c = mc + (size_t)g * 4 * ldm;
                    kern_panel(pw, kc, a, b, c, ldm, k0 > 0);
                }
                u = po + pw;
            }
        }
    }
}

/* ------------------------------------------------------------------------
 * P4: output transform and epilogue
 * ------------------------------------------------------------------------ */

/* 4 vectors P[s] over 8 tiles (column 4j+s) -> 32 consecutive floats q[4]. */
static inline void interleave4(const __m256 *P, __m256 *q) {
    __m256 t0 = _mm256_unpacklo_ps(P[0], P[1]), t1 = _mm256_unpackhi_ps(P[0], P[1]);
    __m256 t2 = _mm256_unpacklo_ps(P[2], P[3]), t3 = _mm256_unpackhi_ps(P[2], P[3]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    q[0] = _mm256_permute2f128_ps(u0, u1, 0x20);
    q[1] = _mm256_permute2f128_ps(u2, u3, 0x20);
    q[2] = _mm256_permute2f128_ps(u0, u1, 0x31);
    q[3] = _mm256_permute2f128_ps(u2, u3, 0x31);
}

/* y for output channel o of the 8 tiles t0 .. t0+nt-1, from m + xi*xs. */
static void output_unit(const WgCtx *cx, int o, long t0, int nt, const float *m, size_t xs) {
    const LdmConvShape *s = cx->s;
    const LdmWgPlan *p = cx->p;
    int H = s->H, W = s->W, O = s->O;
    long per_img = (long)p->TH * p->TW;
    __m256 Z[4][6], Y[4][4];
#pragma GCC unroll 6
    for (int l = 0; l < 6; l++) {
        __m256 col[6], r[4];
#pragma GCC unroll 6
        for (int k = 0; k < 6; k++) col[k] = _mm256_loadu_ps(m + (size_t)(6 * k + l) * xs);
        at6(col, r); /* along the column */
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) Z[q][l] = r[q];
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) at6(Z[q], Y[q]); /* along the row */
    float bo = cx->bias ? cx->bias[o] : 0.0f;
    long n = t0 / per_img, rem = t0 % per_img;
    int i = (int)(rem / p->TW), j0 = (int)(rem % p->TW);
    if (nt == 8 && j0 + 8 <= p->TW) {
        /* one tile row: 4 output rows of 32 columns (fewer at the edges) */
        __m256 cst = _mm256_set1_ps(bo + (cx->rowadd ? cx->rowadd[(size_t)n * O + o] : 0.0f));
        size_t plane = ((size_t)n * O + o) * (size_t)H * W;
        int col0 = 4 * j0, ncol = W - col0 < 32 ? W - col0 : 32;
        for (int q = 0; q < 4 && 4 * i + q < H; q++) {
            size_t off = plane + (size_t)(4 * i + q) * W + col0;
            __m256 v[4];
            interleave4(Y[q], v);
            if (ncol == 32) {
                float *yo = cx->y + off + (size_t)n * s->y_gap;
                int nts = cx->nt_store && !((uintptr_t)yo & 31);
                if (cx->residual) { /* the next units' residual: this read is the epilogue's only miss */
                    _mm_prefetch((const char *)(cx->residual + off + 64), _MM_HINT_T0);
                    _mm_prefetch((const char *)(cx->residual + off + 80), _MM_HINT_T0);
                }
                for (int e = 0; e < 4; e++) {
                    __m256 z = _mm256_add_ps(v[e], cst);
                    if (cx->residual) z = _mm256_add_ps(z, _mm256_loadu_ps(cx->residual + off + 8 * e));
                    if (cx->relu) z = _mm256_max_ps(z, _mm256_setzero_ps());
                    if (nts) _mm256_stream_ps(yo + 8 * e, z);
                    else _mm256_storeu_ps(yo + 8 * e, z);
                }
            } else {
                float t[32];
                for (int e = 0; e < 4; e++) _mm256_storeu_ps(t + 8 * e, _mm256_add_ps(v[e], cst));
                for (int e = 0; e < ncol; e++) {
                    float z = t[e] + (cx->residual ? cx->residual[off + e] : 0.0f);
                    cx->y[off + (size_t)n * s->y_gap + e] = cx->relu && !(z > 0.0f) ? 0.0f : z;
                }
            }
        }
        return;
    }
    /* tiles across rows or images: one by one */
    float yt[16][8];
    for (int q = 0; q < 4; q++)
        for (int e = 0; e < 4; e++) _mm256_storeu_ps(yt[4 * q + e], Y[q][e]);
    for (int e = 0; e < nt; e++) {
        long t = t0 + e, tn = t / per_img, tr = t % per_img;
        int ti = (int)(tr / p->TW), tj = (int)(tr % p->TW);
        float cst = bo + (cx->rowadd ? cx->rowadd[(size_t)tn * O + o] : 0.0f);
        size_t plane = ((size_t)tn * O + o) * (size_t)H * W;
        for (int q = 0; q < 4 && 4 * ti + q < H; q++)
            for (int r = 0; r < 4 && 4 * tj + r < W; r++) {
                size_t off = plane + (size_t)(4 * ti + q) * W + 4 * tj + r;
                float z = yt[4 * q + r][e] + cst + (cx->residual ? cx->residual[off] : 0.0f);
                cx->y[off + (size_t)tn * s->y_gap] = cx->relu && !(z > 0.0f) ? 0.0f : z;
            }
    }
}

/* Y[q][r] (vectors over 8 tiles): the 4x4 outputs of the tiles, from M
 * at m + xi*xs. */
static inline void output_tf(const float *m, size_t xs, __m256 Y[4][4]) {
    __m256 Z[4][6];
#pragma GCC unroll 6
    for (int l = 0; l < 6; l++) {
        __m256 col[6], r[4];
#pragma GCC unroll 6
        for (int k = 0; k < 6; k++) col[k] = _mm256_loadu_ps(m + (size_t)(6 * k + l) * xs);
        at6(col, r);
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) Z[q][l] = r[q];
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) at6(Z[q], Y[q]);
}

/* y of an upsampling convolution for output channel o of the 8
 * low-resolution tiles t0 .. t0+nt-1: M rows m + ph*ldm (ph = 2 dy + dx)
 * are its 4 phases, low-resolution pixel (a, b) of phase (dy, dx) being
 * output pixel (2a + dy, 2b + dx). A tile row gives 8 output rows of 64
 * columns: the phases dx = 0 and 1 interleaved. */
static void output_unit_up(const WgCtx *cx, int o, long t0, int nt, const float *m, size_t xs, size_t ldm) {
    const LdmConvShape *s = cx->s, *sy = cx->sy;
    const LdmWgPlan *p = cx->p;
    const int H = s->H, W = s->W, WO = sy->WO, O = sy->O;
    const long per_img = (long)p->TH * p->TW;
    __m256 Y[4][4][4];
    for (int ph = 0; ph < 4; ph++) output_tf(m + (size_t)ph * ldm, xs, Y[ph]);
    const float bo = cx->bias ? cx->bias[o] : 0.0f;
    long n = t0 / per_img, rem = t0 % per_img;
    int i = (int)(rem / p->TW), j0 = (int)(rem % p->TW);
    if (nt == 8 && j0 + 8 <= p->TW) {
        const __m256 cst = _mm256_set1_ps(bo + (cx->rowadd ? cx->rowadd[(size_t)n * O + o] : 0.0f));
        const size_t plane = ((size_t)n * O + o) * (size_t)sy->HO * WO;
        const int col0 = 4 * j0, ncol = W - col0 < 32 ? W - col0 : 32; /* low-resolution columns */
        for (int q = 0; q < 4 && 4 * i + q < H; q++)
            for (int dy = 0; dy < 2; dy++) {
                const size_t off = plane + (size_t)(2 * (4 * i + q) + dy) * WO + 2 * col0;
                __m256 a[4], b[4], v[8];
                interleave4(Y[2 * dy][q], a);
                interleave4(Y[2 * dy + 1][q], b);
                for (int e = 0; e < 4; e++) {
                    __m256 lo = _mm256_unpacklo_ps(a[e], b[e]), hi = _mm256_unpackhi_ps(a[e], b[e]);
                    v[2 * e] = _mm256_permute2f128_ps(lo, hi, 0x20);
                    v[2 * e + 1] = _mm256_permute2f128_ps(lo, hi, 0x31);
                }
                float *yo = cx->y + off + (size_t)n * sy->y_gap;
                if (ncol == 32) {
                    const int nts = cx->nt_store && !((uintptr_t)yo & 31);
                    for (int e = 0; e < 8; e++) {
                        __m256 z = _mm256_add_ps(v[e], cst);
                        if (cx->residual) z = _mm256_add_ps(z, _mm256_loadu_ps(cx->residual + off + 8 * e));
                        if (cx->relu) z = _mm256_max_ps(z, _mm256_setzero_ps());
                        if (nts) _mm256_stream_ps(yo + 8 * e, z);
                        else _mm256_storeu_ps(yo + 8 * e, z);
                    }
                } else {
                    float t[64];
                    for (int e = 0; e < 8; e++) _mm256_storeu_ps(t + 8 * e, _mm256_add_ps(v[e], cst));
                    for (int e = 0; e < 2 * ncol; e++) {
                        float z = t[e] + (cx->residual ? cx->residual[off + e] : 0.0f);
                        yo[e] = cx->relu && !(z > 0.0f) ? 0.0f : z;
                    }
                }
            }
        return;
    }
    /* tiles across rows or images: one by one */
    float yt[4][16][8];
    for (int ph = 0; ph < 4; ph++)
        for (int q = 0; q < 4; q++)
            for (int r = 0; r < 4; r++) _mm256_storeu_ps(yt[ph][4 * q + r], Y[ph][q][r]);
    for (int e = 0; e < nt; e++) {
        long t = t0 + e, tn = t / per_img, tr = t % per_img;
        int ti = (int)(tr / p->TW), tj = (int)(tr % p->TW);
        float cst = bo + (cx->rowadd ? cx->rowadd[(size_t)tn * O + o] : 0.0f);
        size_t plane = ((size_t)tn * O + o) * (size_t)sy->HO * WO;
        for (int q = 0; q < 4 && 4 * ti + q < H; q++)
            for (int r = 0; r < 4 && 4 * tj + r < W; r++)
                for (int ph = 0; ph < 4; ph++) {
                    size_t off = plane + (size_t)(2 * (4 * ti + q) + (ph >> 1)) * WO + 2 * (4 * tj + r) + (ph & 1);
                    float z = yt[ph][4 * q + r][e] + cst + (cx->residual ? cx->residual[off] : 0.0f);
                    cx->y[off + (size_t)tn * sy->y_gap] = cx->relu && !(z > 0.0f) ? 0.0f : z;
                }
    }
}

/* P4: y for output channels o0 + [r0, r1) and the units [u0, u1) of the
 * tile block at tile bt0 (nb tiles). */
static void phase_output(const WgCtx *cx, const WgBuf *bf, long bt0, long nb, int u0, int u1, int o0, int r0,
                         int r1) {
    if (cx->up) { /* rows in groups of 4: the phases of one output (o0, r0 and r1 are multiples of 4) */
        for (int r = r0; r < r1; r += 4)
            for (int u = u0; u < u1; u++) {
                int nt = nb - 8l * u < 8 ? (int)(nb - 8l * u) : 8;
                const float *m = bf->M + (size_t)(r - bf->mrow0) * bf->ldm + (size_t)(u - u0) * 8;
                output_unit_up(cx, (o0 + r) / 4, bt0 + 8l * u, nt, m, bf->mxs, (size_t)bf->ldm);
            }
        return;
    }
    for (int r = r0; r < r1; r++)
        for (int u = u0; u < u1; u++) {
            int nt = nb - 8l * u < 8 ? (int)(nb - 8l * u) : 8;
            const float *m = bf->M + (size_t)(r - bf->mrow0) * bf->ldm + (size_t)(u - u0) * 8;
            output_unit(cx, o0 + r, bt0 + 8l * u, nt, m, bf->mxs);
        }
}

/* ------------------------------------------------------------------------
 * driver
 * ------------------------------------------------------------------------ */

#ifdef WG_PROFILE
#include <time.h>
double wg_prof[4];
static double wg_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
#define PROF(k, stmt)                             \
    do {                                          \
        double t_ = th == 0 ? wg_cpu() : 0;       \
        stmt;                                     \
        if (th == 0) wg_prof[k] += wg_cpu() - t_; \
    } while (0)
#else
#define PROF(k, stmt) stmt
#endif

/* [lo, hi) of part i of `parts` over n items. */
static void part(int n, int parts, int i, int *lo, int *hi) {
    *lo = (int)((long)n * i / parts);
    *hi = (int)((long)n * (i + 1) / parts);
}

/* Row chunk of the private schedule's GEMM sub-blocks. */
#define WG_PRIV_ROWS 32

/* Most units of a private tile block. When the transformed weights of
 * the output block are small (TAESD: 64 x 64 channels, U 576 KB), V is cut
 * so that U and V together stay in a core's L2 cache (WG_PRIV_L2_BYTES)
 * from the input transform to the GEMMs, instead of the plan's block
 * split over the threads (1.5 MB a thread with 2): 64 x 512 x 512 went
 * from 78-93 to 70-72 ms of CPU on one thread (bench_winograd, Zen 4,
 * L2 1 MB a core), at 5 units; at 6 (one panel of the wide kernel, 1 MB
 * with U) it was back at 76-80. When the whole U does not fit (TAESD's
 * upsampling convolutions: 4 x 64 outputs, 2.3 MB), the GEMMs sweep it in
 * row chunks over the whole tile block, so the U of two chunks (the one in
 * use and the next coming in) counts: 5 units, 64 x 256 x 256 upsampled
 * to 512 x 512 from 80-98 to 66-78 ms of CPU on one thread (7-9 units
 * about the same, 12 units 76). Larger U (C above ~100: the VAE's and the
 * UNet's layers): no limit. Each tile's sums do not depend on the block
 * size. */
#ifdef WG_TUNE
#define WG_PRIV_L2_BYTES ((size_t)ldm_wg_env("WG_PRIV_L2_KB", 960) << 10)
#else
#define WG_PRIV_L2_BYTES (960u << 10)
#endif
static int wg_priv_units(const LdmWgPlan *p, int C) {
    size_t ub = 36 * (size_t)p->OB * C * sizeof(float), unit = 36ul * 8 * sizeof(float) * (size_t)C;
    if (ub + 3 * unit > WG_PRIV_L2_BYTES) /* U of two chunks of WG_PRIV_ROWS rows (gemm_output_all_rows) */
        ub = 2 * 36 * (size_t)(p->OB < WG_PRIV_ROWS ? p->OB : WG_PRIV_ROWS) * C * sizeof(float);
    if (ub + 3 * unit > WG_PRIV_L2_BYTES) return p->blk_units;
    return (int)((WG_PRIV_L2_BYTES - ub) / unit);
}

/* The private schedule gives each thread its own slices of V and M; their
 * size depends on the thread count, within the same scratch. 0 if the
 * slices would be too small to be worth it (then: the shared schedule). */
static int private_slices(const LdmWgPlan *p, int C, int nth, int th, const WgCtx *cx, WgBuf *bf) {
    size_t vfl = 36 * p->vxs / (size_t)nth & ~(size_t)15, mfl = 36 * p->mxs / (size_t)nth & ~(size_t)15;
    int bu = p->blk_units / nth, rows = p->OB < WG_PRIV_ROWS ? p->OB : WG_PRIV_ROWS;
    int bmax = wg_priv_units(p, C);
    if (bu > bmax) bu = bmax;
    while (bu >= 3 && 36 * ldm_wg_plane_stride((size_t)C * bu * 8) > vfl) bu--;
    int su = bu;
    while (su >= 3 && 36 * ldm_wg_plane_stride((size_t)rows * su * 8) > mfl) su--;
    if (bu < 3 || su < 3) return 0;
    bf->vxs = ldm_wg_plane_stride((size_t)C * bu * 8);
    bf->mxs = ldm_wg_plane_stride((size_t)rows * su * 8);
    bf->V = cx->V + (size_t)th * vfl;
    bf->M = cx->M + (size_t)th * mfl;
    bf->ldm = su * 8;
    bf->mrow0 = 0;
    bf->units = bu;
    bf->pmax = wg_pmax(su);
    return 1;
}

/* The whole (all output rows) GEMM and output of the units [u0, u1) of a
 * tile block, in chunks of WG_PRIV_ROWS rows and sub-blocks of ldm tiles. */
static void gemm_output_all_rows(const WgCtx *cx, WgBuf *bf, long bt0, long nb, int nu, int o0, int nob) {
    int su = bf->ldm / 8;
    for (int r0 = 0; r0 < nob; r0 += WG_PRIV_ROWS) {
        int nr = nob - r0 < WG_PRIV_ROWS ? nob - r0 : WG_PRIV_ROWS;
        bf->mrow0 = r0;
        for (int u0 = 0; u0 < nu;) {
            int u1 = u0, po, pw;
            while (u1 < nu) {
                ldm_panel(nu, u1, bf->pmax, &po, &pw);
                if (u1 > u0 && u1 + pw - u0 > su) break;
                u1 += pw;
            }
            phase_gemm(cx, bf, nu, u0, u1, r0, (nr + 3) & ~3, 0, cx->s->C);
            phase_output(cx, bf, bt0, nb, u0, u1, o0, r0, r0 + nr);
            u0 = u1;
        }
    }
}

/* Out-major, private: per output block, U by all threads (one barrier),
 * then each thread takes whole tile blocks of its own, dynamically, and
 * transforms, multiplies and writes them back alone. */
static void run_private(const WgCtx *cx, WgBuf *bf, int nth, int th) {
    const LdmWgPlan *p = cx->p;
    int O = cx->s->O, g0, g1;
    long blk_tiles = (long)bf->units * 8, nblk = (p->T + blk_tiles - 1) / blk_tiles;
    part(p->OB / 4, nth, th, &g0, &g1);
    for (int ob = 0; ob < p->nob; ob++) {
        int o0 = ob * p->OB, nob = O - o0 < p->OB ? O - o0 : p->OB;
        PROF(1, phase_weights(cx, o0, g0, g1, 0, cx->s->C));
#pragma omp barrier
        /* (the loop ends with a barrier: U is not rewritten under anyone) */
#pragma omp for schedule(dynamic, 1)
        for (long tb = 0; tb < nblk; tb++) {
            long bt0 = tb * blk_tiles, nb = p->T - bt0 < blk_tiles ? p->T - bt0 : blk_tiles;
            int nu = (int)((nb + 7) / 8);
            PROF(0, phase_input(cx, bf, bt0, nb, 0, cx->s->C));
            PROF(2, gemm_output_all_rows(cx, bf, bt0, nb, nu, o0, nob));
        }
    }
}

/* Shared: V of each tile block by all threads between two barriers; each
 * thread owns a slice of every output block's rows (U, M and y). */
static void run_shared(const WgCtx *cx, int nth, int th) {
    const LdmWgPlan *p = cx->p;
    int C = cx->s->C, O = cx->s->O, c0, c1, g0, g1;
    long blk_tiles = (long)p->blk_units * 8;
    int n_outer = p->out_major ? p->nob : p->ntb, n_inner = p->out_major ? p->ntb : p->nob;
    WgBuf bf = {cx->V, cx->M, p->vxs, p->mxs, p->sub_units * 8, 0, p->blk_units, wg_pmax(p->sub_units)};
    part(C, nth, th, &c0, &c1);
    part(p->OB / 4, nth, th, &g0, &g1);
    int r0 = 4 * g0, r1 = 4 * g1;
    int cur_tb = -1, cur_ob = -1;
    for (int io = 0; io < n_outer; io++)
        for (int ii = 0; ii < n_inner; ii++) {
            int tb = p->out_major ? ii : io, ob = p->out_major ? io : ii;
            long bt0 = tb * blk_tiles, nb = p->T - bt0 < blk_tiles ? p->T - bt0 : blk_tiles;
            int nu = (int)((nb + 7) / 8), o0 = ob * p->OB, nob = O - o0 < p->OB ? O - o0 : p->OB;
            int rend = r1 < nob ? r1 : nob; /* my rows that are outputs */
            if (tb != cur_tb) {
                if (cur_tb >= 0) {
#pragma omp barrier
                }
                PROF(0, phase_input(cx, &bf, bt0, nb, c0, c1));
#pragma omp barrier
            }
            cur_tb = tb;
            if (r1 == r0) continue;
            if (p->kw < C) {
                /* weights in K blocks; the whole block is one GEMM sub-block */
                for (int k0 = 0; k0 < C; k0 += p->kw) {
                    int kn = C - k0 < p->kw ? C - k0 : p->kw;
                    PROF(1, phase_weights(cx, o0, g0, g1, k0, kn));
                    PROF(2, phase_gemm(cx, &bf, nu, 0, nu, r0, r1 - r0, k0, kn));
                }
                PROF(3, phase_output(cx, &bf, bt0, nb, 0, nu, o0, r0, rend));
                continue;
            }
            if (ob != cur_ob) PROF(1, phase_weights(cx, o0, g0, g1, 0, C));
            cur_ob = ob;
            for (int u0 = 0; u0 < nu;) {
                /* a sub-block: whole panels, at most sub_units units */
                int u1 = u0, po, pw;
                while (u1 < nu) {
                    ldm_panel(nu, u1, bf.pmax, &po, &pw);
                    if (u1 > u0 && u1 + pw - u0 > p->sub_units) break;
                    u1 += pw;
                }
                PROF(2, phase_gemm(cx, &bf, nu, u0, u1, r0, r1 - r0, 0, C));
                PROF(3, phase_output(cx, &bf, bt0, nb, u0, u1, o0, r0, rend));
                u0 = u1;
            }
        }
}

void ldm_conv3x3_winograd(const LdmConvShape *sy, const float *x, LdmW w, const LdmEpilogue *ep, float *y,
                          float *scratch) {
    const int f = sy->up ? sy->up : 1;
    if (sy->KH != 3 || sy->KW != 3 || sy->stride_h != 1 || sy->stride_w != 1 || sy->pad_t != 1 || sy->pad_b != 1 ||
        sy->pad_l != 1 || sy->pad_r != 1 || (f != 1 && f != 2) || sy->HO != f * sy->H || sy->WO != f * sy->W) {
        ldm_fail("winograd: needs a 3x3 kernel, stride 1 and padding 1 (on x or on x upsampled by 2)");
        return;
    }
    if (sy->N <= 0 || sy->O <= 0 || sy->H <= 0 || sy->W <= 0) return;
    const LdmConvShape core = ldm_wg_core_shape(sy), *s = &core;
    LdmWgPlan p;
    ldm_wg_plan(s, &p);
    size_t ybytes = (size_t)sy->N * sy->O * sy->HO * sy->WO * sizeof(float);
    WgCtx cx = {s,  sy, f == 2, &p, x, w, ep ? ep->bias : NULL, ep ? ep->rowadd : NULL, ep ? ep->residual : NULL, y,
                ybytes > WG_NT_BYTES, scratch, scratch + 36 * p.vxs, scratch + 36 * (p.vxs + p.uxs), ep && ep->relu};
    int C = s->C;
#pragma omp parallel
    {
        int nth = omp_get_num_threads(), th = omp_get_thread_num();
        WgBuf own;
        if (p.out_major && private_slices(&p, C, nth, th, &cx, &own))
            run_private(&cx, &own, nth, th);
        else
            run_shared(&cx, nth, th);
        if (cx.nt_store) _mm_sfence();
    }
}
