/*
 * kernels_gemm.c - the packed GEMM behind every linear layer and every
 * im2col / pointwise convolution: C[M, N] (+)= A[M, K] B[K, N].
 *
 * GotoBLAS / BLIS blocking around the micro-kernels of microkernel.h
 * (4x24 with AVX2, 4x48 with AVX-512: NR below):
 *   for each NC block of columns:
 *     for each KC block of the inner dimension:   pack B  -> [kc][NR] panels
 *       for each MC block of rows:                pack A  -> [kc][4] panels
 *         micro-kernel over every 4 x NR tile of the block
 * The packers read the operands where they are: a weight in its file
 * precision (half-precision weights are widened while they are packed, so
 * no float copy of a weight ever exists), an activation matrix row-major,
 * or a weight used transposed (linear layers: B[k][n] = W[n][k]). The rows
 * of A may be layer-normalised while they are packed (LayerNorm fused into
 * the linear layer that consumes it).
 *
 * Threads: each thread takes a contiguous share of the rows (or, when the
 * rows are few and the columns many, of the columns) and runs the whole
 * blocked loop on it with its own packing buffers: no barrier, no shared
 * state, and a thread the OS preempts holds up only its own share.
 */
#include <immintrin.h>
#include <omp.h>
#include <string.h>

#include "kernels.h"
#include "microkernel.h"
#include "util.h"

#define MR 4
#define PU LDM_PANEL_UNITS /* units of 8 columns in a full B panel */
#define NR (8 * PU)
#ifdef GEMM_TUNE
#include <stdlib.h>
static int genv(const char *k, int d) { return getenv(k) ? atoi(getenv(k)) : d; }
#define KC_MAX genv("GEMM_KC", 256)
#define MC genv("GEMM_MC", 128)
#define NC genv("GEMM_NC", 3072)
#else
#define KC_MAX 256   /* a [kc][24] B micro-panel stays in L1 */
#define MC 128       /* an A block ([kc][4] panels, 128 KB) stays in L2 */
#define NC 3072      /* a B block (3 MB) stays in L3 */
#endif

/* One operand of the product and how to pack it. */
typedef enum {
    SRC_ROWS,     /* A[m][k] or B[k][n], row-major */
    SRC_COLS,     /* B[k][n] stored as [n][k] (a linear layer's weight) */
    SRC_BPANELS,  /* B as a weight in LDM_WL_BPANELS */
    SRC_APANELS,  /* A as a weight in LDM_WL_APANELS */
} SrcLayout;

typedef struct GemmSrc {
    LdmW w;             /* data (float32 activations are LDM_W_F32) */
    size_t off;         /* first element */
    long ld;            /* leading dimension (elements) */
    SrcLayout layout;
    const LdmRowNorm *norm; /* A only: layer-normalise each row while packing */
} GemmSrc;

/* ---- loading 8 consecutive elements, widened ------------------------------ */

static inline __m256 load8(LdmW w, size_t i) {
    if (w.type == LDM_W_F32) return _mm256_loadu_ps((const float *)w.p + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w.p + i));
    if (w.type == LDM_W_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float load1(LdmW w, size_t i) {
    if (w.type == LDM_W_F32) return ((const float *)w.p)[i];
    float f;
    ldm_w_widen(w, i, 1, &f);
    return f;
}

/* ---- packing A: [mc][kc] -> ceil(mc/4) panels of [kc][4] ------------------- */

/* 4 rows x 8 columns (r[0..3]) -> 8 columns of 4 at dst (32 floats). */
static inline void store_4x8_transposed(const __m256 *r, float *dst) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u1, 0x20));
    _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
    _mm256_storeu_ps(dst + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(dst + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
}

/* 4 whole rows at base[] without LayerNorm, 8 k at a time, for one weight
 * type: inlined once per type, so the loop has no branch on the type and
 * keeps the 4 rows in registers (a generic loop with per-element branches
 * had left the convolutions' few-column products waiting on the packing:
 * 1280 x 32 x 11520 ran at 70 GFLOP/s instead of 95). */
static inline __attribute__((always_inline)) int pack_a_plain(const void *w, LdmWType type, const size_t *base,
                                                               int k0, int kc, float *dst) {
    const LdmW src = {w, type, LDM_WL_ROWS};
    int k = 0;
    for (; k + 8 <= kc; k += 8) {
        __m256 v[MR];
        for (int r = 0; r < MR; r++) v[r] = load8(src, base[r] + (size_t)(k0 + k));
        store_4x8_transposed(v, dst + (size_t)k * MR);
    }
    return k;
}

/* The same for float rows layer-normalised on the way (LayerNorm fused
 * into a linear layer, whose activations are always float). */
static int pack_a_norm(const float *x, const size_t *base, const float *mean, const float *rstd,
                       const LdmRowNorm *nm, int k0, int kc, float *dst) {
    __m256 mu[MR], rs[MR];
    for (int r = 0; r < MR; r++) mu[r] = _mm256_set1_ps(mean[r]), rs[r] = _mm256_set1_ps(rstd[r]);
    int k = 0;
    for (; k + 8 <= kc; k += 8) {
        const __m256 ga = _mm256_loadu_ps(nm->gamma + k0 + k), be = _mm256_loadu_ps(nm->beta + k0 + k);
        __m256 v[MR];
        for (int r = 0; r < MR; r++) {
            __m256 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + base[r] + (size_t)(k0 + k)), mu[r]), rs[r]);
            v[r] = _mm256_fmadd_ps(t, ga, be);
        }
        store_4x8_transposed(v, dst + (size_t)k * MR);
    }
    return k;
}

static void pack_a(const GemmSrc *a, int i0, int mc, int k0, int kc, float *dst) {
    if (a->layout == SRC_APANELS) { /* each panel's k0.. k0 + kc: kc * 4 elements in a row (i0 % 4 == 0) */
        for (int p = 0; p < mc; p += MR, dst += (size_t)MR * kc)
            ldm_w_widen(a->w, (size_t)(i0 + p) * a->ld + (size_t)k0 * MR, (size_t)kc * MR, dst);
        return;
    }
    const LdmRowNorm *nm = a->norm;
    for (int p = 0; p < mc; p += MR, dst += (size_t)MR * kc) {
        int rows = mc - p < MR ? mc - p : MR;
        size_t base[MR];
        float mean[MR], rstd[MR];
        for (int r = 0; r < MR; r++) {
            int i = i0 + p + (r < rows ? r : 0);
            base[r] = a->off + (size_t)i * a->ld;
            mean[r] = nm ? nm->mean[i] : 0.0f;
            rstd[r] = nm ? nm->rstd[i] : 1.0f;
        }
        int k = 0;
        if (rows == MR && nm) {
            k = pack_a_norm((const float *)a->w.p, base, mean, rstd, nm, k0, kc, dst); /* A: float (ldm_gemm_norm) */
        } else if (rows == MR) {
            switch (a->w.type) {
            case LDM_W_F16: k = pack_a_plain(a->w.p, LDM_W_F16, base, k0, kc, dst); break;
            case LDM_W_BF16: k = pack_a_plain(a->w.p, LDM_W_BF16, base, k0, kc, dst); break;
            default: k = pack_a_plain(a->w.p, LDM_W_F32, base, k0, kc, dst); break;
            }
        }
        for (; k < kc; k++)
            for (int r = 0; r < MR; r++) {
                float v = 0.0f;
                if (r < rows) {
                    v = load1(a->w, base[r] + (size_t)(k0 + k));
                    if (nm) v = (v - mean[r]) * rstd[r] * nm->gamma[k0 + k] + nm->beta[k0 + k];
                }
                dst[(size_t)k * MR + r] = v;
            }
    }
}

/* ---- packing B: [kc][nc] -> panels of [kc][w], w = NR but at the end ----- */

/* The panel starting at column j of nc: its width w and the columns of
 * it that exist (ldm_panel's cut of the nc/8 units). */
static inline void panel_at(int nc, int j, int *w, int *cols) {
    int po, pw;
    ldm_panel((nc + 7) / 8, j / 8, PU, &po, &pw);
    *w = 8 * pw;
    *cols = nc - j < *w ? nc - j : *w;
}

/* The first column of the panel that holds column j of nc. */
static inline int panel_start(int nc, int j) {
    int po, pw;
    ldm_panel((nc + 7) / 8, j / 8, PU, &po, &pw);
    return 8 * po;
}

/* One whole panel of w columns of B[k][n] = W[n][k] (rows first, first +
 * ld, ... of W), 8 rows x 8 k at a time, transposed; inlined once per
 * weight type, as pack_a_plain. Returns the k done (multiples of 8). */
static inline __attribute__((always_inline)) int pack_b_cols(const void *p, LdmWType type, size_t first, long ld,
                                                              int w, int kc, float *dst) {
    const LdmW src = {p, type, LDM_WL_ROWS};
    int k = 0;
    for (; k + 8 <= kc; k += 8)
        for (int g = 0; g < w; g += 8) {
            __m256 v[8];
            for (int r = 0; r < 8; r++) v[r] = load8(src, first + (size_t)(g + r) * ld + (size_t)k);
            transpose8(v);
            for (int q = 0; q < 8; q++) _mm256_storeu_ps(dst + (size_t)(k + q) * w + g, v[q]);
        }
    return k;
}

/* Columns j0 .. j0 + nc of the N (panel boundaries: every cut is that of
 * all N columns, whatever the block or thread, so that a weight laid out
 * in panels at load can be read as it is, and a result does not depend on
 * the number of threads). */
static void pack_b(const GemmSrc *b, int N, int j0, int nc, int k0, int kc, float *dst) {
    const size_t es = b->w.type == LDM_W_F32 ? 4 : 2;
    if (b->layout == SRC_BPANELS) { /* each panel's k0 .. k0 + kc: kc * w elements in a row */
        for (int j = 0, w, cols; j < nc; j += w) {
            panel_at(N, j0 + j, &w, &cols);
            const size_t first = (size_t)(j0 + j) * b->ld + (size_t)k0 * w;
            if (j + w < nc) { /* the next panel's piece, into L2 while this one is widened */
                int w2, cols2;
                panel_at(N, j0 + j + w, &w2, &cols2);
                const char *r = (const char *)b->w.p + ((size_t)(j0 + j + w) * b->ld + (size_t)k0 * w2) * es;
                for (size_t o = 0; o < (size_t)kc * w2 * es; o += 64) _mm_prefetch(r + o, _MM_HINT_T1);
            }
            ldm_w_widen(b->w, first, (size_t)kc * w, dst);
            dst += (size_t)w * kc;
        }
        return;
    }
    if (b->layout == SRC_ROWS) {
        /* row by row of B, each read once from start to end (rows of a
         * large power-of-two width would all fall into the same cache
         * sets if the panels were filled one after the other); the cut
         * into panels once, not per row (that had cost more than the copy) */
        int pj[NC / 8 + 2], pw[NC / 8 + 2], pc[NC / 8 + 2], np = 0;
        for (int j = 0, w, cols; j < nc && np < NC / 8 + 2; j += w, np++) {
            panel_at(N, j0 + j, &w, &cols);
            pj[np] = j, pw[np] = w, pc[np] = cols;
        }
        for (int k = 0; k < kc; k++) {
            size_t s = b->off + (size_t)(k0 + k) * b->ld + (size_t)j0;
            float *d = dst;
            for (int p = 0; p < np; p++) {
                const int j = pj[p], w = pw[p], cols = pc[p];
                float *dk = d + (size_t)k * w;
                int c = 0;
                if (b->w.type == LDM_W_F32) { /* activations (im2col, pointwise convolutions) */
                    const float *src = (const float *)b->w.p + s + j;
                    for (; c + 8 <= cols; c += 8) _mm256_storeu_ps(dk + c, _mm256_loadu_ps(src + c));
                } else {
                    for (; c + 8 <= cols; c += 8) _mm256_storeu_ps(dk + c, load8(b->w, s + j + c));
                }
                for (; c < cols; c++) dk[c] = load1(b->w, s + j + c);
                for (; c < w; c++) dk[c] = 0.0f;
                d += (size_t)w * kc;
            }
        }
        return;
    }
    /* B[k][n] = W[n][k]: 8 rows of W x 8 k at a time, transposed */
    for (int j = 0, w, cols; j < nc; j += w) {
        panel_at(N, j0 + j, &w, &cols);
        /* the next panel's rows, into L2 while this one is packed: the
         * weight comes from memory once per forward, in pieces of kc
         * elements per row that the hardware prefetchers do not follow */
        if (j + w < nc) {
            int w2, cols2;
            panel_at(N, j0 + j + w, &w2, &cols2);
            const char *r = (const char *)b->w.p + (b->off + (size_t)(j0 + j + w) * b->ld + (size_t)k0) * es;
            for (int q = 0; q < cols2; q++, r += (size_t)b->ld * es)
                for (size_t o = 0; o < (size_t)kc * es + 63; o += 64) _mm_prefetch(r + o, _MM_HINT_T1);
        }
        int k = 0;
        if (cols == w) {
            const size_t first = b->off + (size_t)(j0 + j) * b->ld + (size_t)k0;
            switch (b->w.type) {
            case LDM_W_F16: k = pack_b_cols(b->w.p, LDM_W_F16, first, b->ld, w, kc, dst); break;
            case LDM_W_BF16: k = pack_b_cols(b->w.p, LDM_W_BF16, first, b->ld, w, kc, dst); break;
            default: k = pack_b_cols(b->w.p, LDM_W_F32, first, b->ld, w, kc, dst); break;
            }
        }
        for (; k < kc; k++)
            for (int c = 0; c < w; c++)
                dst[(size_t)k * w + c] = c < cols ? load1(b->w, b->off + (size_t)(j0 + j + c) * b->ld + (size_t)(k0 + k)) : 0.0f;
        dst += (size_t)w * kc;
    }
}

/* ---- the blocked loop for one thread's share ---------------------------------- */

typedef struct Gemm {
    int M, N, K;
    GemmSrc a, b;
    float *c;
    long ldc;
    int accumulate;
} Gemm;

static float *thread_buf(int which, size_t n) {
    static _Thread_local float *buf[4];
    static _Thread_local size_t cap[4];
    if (n > cap[which]) {
        free(buf[which]);
        cap[which] = n;
        buf[which] = ldm_aligned_alloc(n * sizeof(float));
    }
    return buf[which];
}

/* The rows x cols corner of an edge tile (computed into a 4 x w buffer)
 * into C. */
static inline void tile_edge(const Gemm *g, const float *tile, int w, float *c, int rows, int cols, int acc) {
    for (int r = 0; r < rows; r++)
        for (int q = 0; q < cols; q++)
            c[(size_t)r * g->ldc + q] = (acc ? c[(size_t)r * g->ldc + q] : 0.0f) + tile[r * w + q];
}

/* One 4 x w tile of C (+)= A panel x B panel; edge tiles through a buffer. */
static inline void tile_op(const Gemm *g, const float *a, const float *b, int kc, float *c, int rows, int cols, int w,
                           int acc) {
    float tile[MR * NR] __attribute__((aligned(32)));
    int full = rows == MR && cols == w;
    if (w == 8) /* k in one chain, as the wider panels sum: see kern_4x8_seq */
        kern_4x8_seq(kc, a, b, full ? c : tile, full ? (int)g->ldc : w, full ? acc : 0);
    else
        kern_panel(w / 8, kc, a, b, full ? c : tile, full ? (int)g->ldc : w, full ? acc : 0);
    if (!full) tile_edge(g, tile, w, c, rows, cols, acc);
}

/* ---- bfloat16 compute (ldm_set_compute("bf16")) --------------------------------
 * The same blocking and packing; each packed block is then rounded to
 * bfloat16 (to nearest even) in the layout of vdpbf16ps, pairs of
 * consecutive k side by side: an A panel [kc][4] becomes [kc/2][4][2], a B
 * panel [kc][w] becomes [kc/2][w][2] (an odd kc gets a zero k). The
 * kernel accumulates in float32: c[r][j] += a[2p][r] b[2p][j] +
 * a[2p+1][r] b[2p+1][j], one instruction per 16 columns and pair of k. */
static int compute_bf16;

#ifdef __AVX512BF16__
/* [kc][w] floats -> [kcp/2][w][2] bfloat16, kcp = kc rounded up to even. */
static void panel_to_bf16(const float *src, int kc, int w, uint16_t *dst) {
    const int np = kc / 2;
    int p = 0;
    if (w == 4) { /* A: two pairs of k (16 floats, contiguous) at a time */
        const __m256i ix = _mm256_setr_epi16(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
        for (; p + 2 <= np; p += 2) {
            __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + (size_t)p * 8));
            _mm256_storeu_si256((__m256i *)(dst + (size_t)p * 8), _mm256_permutexvar_epi16(ix, h));
        }
    } else if (w % 8 == 0) { /* B: 16 (then 8) columns of both k of a pair */
        const __m512i ix16 = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        const __m256i ix8 = _mm256_setr_epi16(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
        for (; p < np; p++) {
            const float *r0 = src + (size_t)(2 * p) * w, *r1 = r0 + w;
            uint16_t *d = dst + (size_t)p * w * 2;
            int c = 0;
            for (; c + 16 <= w; c += 16) {
                __m512i h = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(r1 + c), _mm512_loadu_ps(r0 + c));
                _mm512_storeu_si512(d + 2 * c, _mm512_permutexvar_epi16(ix16, h));
            }
            for (; c + 8 <= w; c += 8) {
                __m256i h = (__m256i)_mm256_cvtne2ps_pbh(_mm256_loadu_ps(r1 + c), _mm256_loadu_ps(r0 + c));
                _mm256_storeu_si256((__m256i *)(d + 2 * c), _mm256_permutexvar_epi16(ix8, h));
            }
        }
    }
    for (; p < np; p++)
        for (int c = 0; c < w; c++) {
            dst[((size_t)p * w + c) * 2] = ldm_f32_to_bf16(src[(size_t)(2 * p) * w + c]);
            dst[((size_t)p * w + c) * 2 + 1] = ldm_f32_to_bf16(src[(size_t)(2 * p + 1) * w + c]);
        }
    if (kc & 1)
        for (int c = 0; c < w; c++) {
            dst[((size_t)np * w + c) * 2] = ldm_f32_to_bf16(src[(size_t)(kc - 1) * w + c]);
            dst[((size_t)np * w + c) * 2 + 1] = 0;
        }
}

/* tile_op for the bfloat16 panels (kp pairs of k). */
static void tile_op_bf16(const Gemm *g, const uint16_t *a, const uint16_t *b, int kp, float *c, int rows, int cols,
                         int w, int acc) {
    float tile[MR * NR] __attribute__((aligned(64)));
    int full = rows == MR && cols == w;
    kern_panel_bf16(w / 8, kp, a, b, full ? c : tile, full ? (int)g->ldc : w, full ? acc : 0);
    if (!full) tile_edge(g, tile, w, c, rows, cols, acc);
}
#endif

/* Software prefetch of the A block packed next, a few lines per tile of the
 * current block: a weight streamed from memory (the 8x8 and 4x4 levels'
 * convolutions, with few columns to share each weight row) then arrives
 * while this block computes instead of stalling the packing. */
typedef struct APrefetch {
    const char *base;   /* first row */
    size_t ld;          /* bytes between rows */
    int rows, lines;    /* rows, 64-byte lines per row */
    int r, l;           /* cursor */
} APrefetch;

static APrefetch a_prefetch(const Gemm *g, int i0, int mc, int k0, int kc) {
    APrefetch p = {NULL, 0, 0, 0, 0, 0};
    if (mc <= 0 || kc <= 0) return p;
    const size_t es = g->a.w.type == LDM_W_F32 ? 4 : 2;
    p.rows = i0 + mc <= g->M ? mc : g->M - i0;
    if (g->a.layout == SRC_APANELS) { /* "rows" are the panels' runs of kc * 4 */
        p.base = (const char *)g->a.w.p + ((size_t)i0 * g->a.ld + (size_t)k0 * MR) * es;
        p.ld = (size_t)g->a.ld * MR * es;
        p.rows = (p.rows + MR - 1) / MR;
        p.lines = (int)(((size_t)kc * MR * es + 63) / 64) + 1;
        return p;
    }
    p.base = (const char *)g->a.w.p + (g->a.off + (size_t)i0 * g->a.ld + (size_t)k0) * es;
    p.ld = (size_t)g->a.ld * es;
    p.lines = (int)(((size_t)kc * es + 63) / 64) + 1;
    return p;
}

static inline void a_prefetch_step(APrefetch *p, int n) {
    for (; n > 0 && p->r < p->rows; n--) {
        _mm_prefetch(p->base + (size_t)p->r * p->ld + (size_t)p->l * 64, _MM_HINT_T1);
        if (++p->l == p->lines) p->l = 0, p->r++;
    }
}

static void run_block(const Gemm *g, int m0, int m1, int n0, int n1) {
    if (m1 <= m0 || n1 <= n0) return;
    int nk = (g->K + KC_MAX - 1) / KC_MAX;
    int kstep = ((g->K + nk - 1) / nk + 7) & ~7;
    float *ap = thread_buf(0, (size_t)MC * kstep);
    float *bp = thread_buf(1, (size_t)(NC + NR) * kstep);
#ifdef __AVX512BF16__
    const int bf = compute_bf16; /* kstep is a multiple of 8: only the last kc can be odd */
    uint16_t *ab = bf ? (uint16_t *)thread_buf(2, (size_t)MC * (kstep + 1) / 2 + 16) : NULL;
    uint16_t *bb = bf ? (uint16_t *)thread_buf(3, (size_t)(NC + NR) * (kstep + 1) / 2 + 16) : NULL;
#endif
    for (int jc = n0, nc; jc < n1; jc += nc) {
        /* blocks of NC columns, each ending where a panel ends */
        nc = n1 - jc <= NC ? n1 - jc : panel_start(g->N, jc + NC) - jc;
        for (int pc = 0; pc < g->K; pc += kstep) {
            int kc = g->K - pc < kstep ? g->K - pc : kstep;
            int acc = pc > 0 || g->accumulate;
            pack_b(&g->b, g->N, jc, nc, pc, kc, bp);
#ifdef __AVX512BF16__
            const int kcp = (kc + 1) & ~1;
            if (bf)
                for (int jr = 0, w, cols; jr < nc; jr += w) {
                    panel_at(g->N, jc + jr, &w, &cols);
                    panel_to_bf16(bp + (size_t)jr * kc, kc, w, bb + (size_t)jr * kcp);
                }
#endif
            for (int ic = m0; ic < m1; ic += MC) {
                int mc = m1 - ic < MC ? m1 - ic : MC;
                pack_a(&g->a, ic, mc, pc, kc, ap);
#ifdef __AVX512BF16__
                if (bf)
                    for (int ir = 0; ir < mc; ir += MR) panel_to_bf16(ap + (size_t)ir * kc, kc, MR, ab + (size_t)ir * kcp);
#endif
                /* the block after this one: next rows, else the next K block */
                APrefetch pf = {NULL, 0, 0, 0, 0, 0};
                if (ic + MC < m1) pf = a_prefetch(g, ic + MC, m1 - ic - MC < MC ? m1 - ic - MC : MC, pc, kc);
                else if (pc + kstep < g->K)
                    pf = a_prefetch(g, m0, m1 - m0 < MC ? m1 - m0 : MC, pc + kstep,
                                    g->K - pc - kstep < kstep ? g->K - pc - kstep : kstep);
                const int tiles = ((nc + NR - 1) / NR) * ((mc + MR - 1) / MR);
                const int per_tile = (pf.rows * pf.lines + tiles - 1) / tiles;
                for (int jr = 0, w, cols; jr < nc; jr += w) {
                    panel_at(g->N, jc + jr, &w, &cols);
                    for (int ir = 0; ir < mc; ir += MR) {
                        int rows = mc - ir < MR ? mc - ir : MR;
                        float *c = g->c + (size_t)(ic + ir) * g->ldc + (jc + jr);
                        /* the next tile of C, while this one computes; not when a
                         * tile is over in a few hundred cycles (K of a network's
                         * first conv): then the prefetches only pile up and a
                         * product with rows of C 4 KB apart ran 20x slower */
                        if (kc >= 64 && ir + MR < mc)
                            for (int r = 0; r < MR; r++) {
                                const char *nx = (const char *)(c + (size_t)(MR + r) * g->ldc);
                                _mm_prefetch(nx, _MM_HINT_T0);
                                _mm_prefetch(nx + 64, _MM_HINT_T0);
                            }
                        a_prefetch_step(&pf, per_tile);
#ifdef __AVX512BF16__
                        if (bf) {
                            tile_op_bf16(g, ab + (size_t)ir * kcp, bb + (size_t)jr * kcp, kcp / 2, c, rows, cols, w, acc);
                            continue;
                        }
#endif
                        tile_op(g, ap + (size_t)ir * kc, bp + (size_t)jr * kc, kc, c, rows, cols, w, acc);
                    }
                }
            }
        }
    }
}

/* Split over the threads: by rows (each thread packs all of B) unless the
 * rows are few, then by columns (each packs all of A). */
static void run(const Gemm *g) {
    int nt = omp_get_max_threads();
    long dupB = (long)g->N, dupA = (long)g->M * ((g->N / nt + NC - 1) / NC);
    int by_rows = g->M >= 8 * MR * nt && (dupB <= dupA || g->N < 2 * NR * nt);
    if ((double)g->M * g->N * g->K < 2e6) nt = 1;
#pragma omp parallel num_threads(nt)
    {
        int th = omp_get_thread_num(), n = omp_get_num_threads();
        if (by_rows) {
            int units = (g->M + MR - 1) / MR;
            int lo = (int)((long)units * th / n) * MR, hi = (int)((long)units * (th + 1) / n) * MR;
            run_block(g, lo, hi < g->M ? hi : g->M, 0, g->N);
        } else { /* shares that begin where a panel begins */
            int units = (g->N + 7) / 8;
            int lo = panel_start(g->N, (int)((long)units * th / n) * 8);
            int hi = th + 1 == n ? g->N : panel_start(g->N, (int)((long)units * (th + 1) / n) * 8);
            run_block(g, 0, g->M, lo, hi);
        }
    }
}

/* ---- entry points -------------------------------------------------------------- */

const char *ldm_kernels_isa(void) {
#if LDM_PANEL_UNITS == 6 && defined(__AVX512F__)
    return "AVX-512 (4x48 GEMM and Winograd, 48-query attention)";
#elif LDM_PANEL_UNITS == 6
    return "AVX-512 kernels emulated with AVX2 (WIDE=1 test build)";
#else
    return "AVX2+FMA (4x24 GEMM and Winograd, 24-query attention)";
#endif
}

int ldm_set_compute(const char *mode) {
    if (!strcmp(mode, "f32")) {
        compute_bf16 = 0;
        return 0;
    }
    if (strcmp(mode, "bf16")) return ldm_fail("--compute: expected f32 or bf16, got '%s'", mode);
#ifdef __AVX512BF16__
    if (!__builtin_cpu_supports("avx512bf16")) return ldm_fail("--compute bf16: this CPU has no AVX-512 BF16");
    compute_bf16 = 1;
    return 0;
#else
    return ldm_fail("--compute bf16: this build has no AVX-512 BF16 kernels (built for a CPU without it)");
#endif
}

const char *ldm_compute_mode(void) {
    return compute_bf16 ? "bf16 (GEMM products in bfloat16, float32 sums; Winograd, attention and the rest float32)"
                        : "f32";
}

void ldm_gemm_norm(int M, int N, int K, const float *A, int lda, const LdmRowNorm *norm, LdmW B, size_t b_off, int ldb,
                   int trans_b, float *C, int ldc, int accumulate) {
    SrcLayout lb = B.layout == LDM_WL_BPANELS ? SRC_BPANELS : trans_b ? SRC_COLS : SRC_ROWS;
    if (lb == SRC_BPANELS && (!trans_b || b_off || ldb != K)) ldm_internal_error("ldm_gemm_norm: a weight in panels must be a whole B^T");
    Gemm g = {M, N, K, {{A, LDM_W_F32, 0}, 0, lda, SRC_ROWS, norm}, {B, b_off, ldb, lb, NULL}, C, ldc, accumulate};
    run(&g);
}

void ldm_gemm_wl(int M, int N, int K, LdmW A, size_t a_off, int lda, const float *B, int ldb, float *C, int ldc,
                 int accumulate) {
    SrcLayout la = A.layout == LDM_WL_APANELS ? SRC_APANELS : SRC_ROWS;
    if (la == SRC_APANELS && (a_off || lda != K)) ldm_internal_error("ldm_gemm_wl: a weight in panels must be a whole A");
    Gemm g = {M, N, K, {A, a_off, lda, la, NULL}, {{B, LDM_W_F32, 0}, 0, ldb, SRC_ROWS, NULL}, C, ldc, accumulate};
    run(&g);
}

/* ---- weights laid out for the packers (LdmWLayout) ------------------------------- */

size_t ldm_w_layout_size(int layout, int64_t rows, int64_t cols) {
    if (layout == LDM_WL_BPANELS) return (size_t)((rows + 7) / 8 * 8) * (size_t)cols;
    if (layout == LDM_WL_APANELS) return (size_t)((rows + MR - 1) / MR * MR) * (size_t)cols;
    return (size_t)rows * (size_t)cols;
}

int64_t ldm_w_panel_end(int layout, int64_t rows, int64_t r) {
    if (layout == LDM_WL_BPANELS) { /* pack_b's cut of B's columns */
        int w, cols;
        panel_at((int)rows, (int)r, &w, &cols);
        return r + w;
    }
    if (layout == LDM_WL_APANELS) return r / MR * MR + MR;
    return r + 1;
}

void ldm_w_relayout(int layout, const void *src, size_t es, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                    void *dst) {
    const unsigned char *s = src;
    unsigned char *d = dst;
    if (layout != LDM_WL_BPANELS && layout != LDM_WL_APANELS) {
        memcpy(d + (size_t)(r0 * cols) * es, s, (size_t)((r1 - r0) * cols) * es);
        return;
    }
    for (int64_t r = r0, end; r < r1; r = end) {
        end = ldm_w_panel_end(layout, rows, r);
        const size_t w = (size_t)(end - r);
        unsigned char *panel = d + (size_t)(r * cols) * es; /* panel [cols][w] */
        for (size_t c = 0; c < w; c++) {
            const unsigned char *row = s + (size_t)((r - r0 + (int64_t)c) * cols) * es;
            if (r + (int64_t)c >= rows) { /* padding */
                for (int64_t k = 0; k < cols; k++) memset(panel + ((size_t)k * w + c) * es, 0, es);
            } else if (es == 2) {
                for (int64_t k = 0; k < cols; k++) memcpy(panel + ((size_t)k * w + c) * 2, row + (size_t)k * 2, 2);
            } else {
                for (int64_t k = 0; k < cols; k++) memcpy(panel + ((size_t)k * w + c) * 4, row + (size_t)k * 4, 4);
            }
        }
    }
}
