/*
 * kernel_sizes.h - the kernels' shapes and the sizes of their scratch:
 * the one place where they are written down, shared by the compiler (its
 * memory plan reserves each kernel's scratch in the arena ahead of time)
 * and the runtime kernels (which cut the scratch they are given with the
 * same functions), so that the two cannot drift apart.
 *
 * Plain C: static inline functions of the shape structs, no OpenMP, no
 * intrinsics, nothing to link. Every function here is a pure function of
 * its arguments (no CPU or thread count): the compiler may plan on another
 * machine than the one the program runs on. (Only a WG_TUNE build of the
 * Winograd kernel, for its benchmark, reads its block sizes from the
 * environment.)
 */
#ifndef LDM_KERNEL_SIZES_H
#define LDM_KERNEL_SIZES_H

#include <stddef.h>
#include <stdint.h>

/* ---- weights ------------------------------------------------------------------ */

/* Storage type of a weight tensor. */
typedef enum LdmWType {
    LDM_W_F32 = 0,   /* float32 */
    LDM_W_F16 = 1,   /* IEEE half */
    LDM_W_BF16 = 2,  /* bfloat16 */
} LdmWType;

/* How a weight's elements are ordered. The loader re-lays the weights a
 * GEMM streams in the order its packers read them (LdmTensorInfo flags):
 * each panel's rows for a block of k are then one contiguous run, read in
 * order, instead of short pieces of many rows far apart. */
typedef enum LdmWLayout {
    LDM_WL_ROWS = 0,     /* row-major, as in the checkpoint */
    LDM_WL_BPANELS = 1,  /* linear weight W[N][K], the GEMM's B = W^T: the N rows
                          * cut as the GEMM cuts B's columns into panels
                          * (ldm_w_panel_end), each panel of w rows stored
                          * [K][w] (rows past N zero); the panel of row j starts
                          * at element j K */
    LDM_WL_APANELS = 2,  /* weight on the left (im2col and pointwise convolutions),
                          * W[M][K]: panels of 4 rows stored [K][4], panel p at
                          * element 4 p K (rows past M zero) */
} LdmWLayout;

/* ---- linear layers (the code ldmc generates around ldm_gemm_norm) -------------- */

/* The rows of linear+geglu's product before gating are padded by 16
 * floats: rows of 2560 or 10240 floats (SD's feed-forward widths) are a
 * multiple of 4 KB apart and would all fall into the same cache sets. */
static inline int64_t ldm_geglu_ld(int64_t O) { return O + 16; }

/* linear+geglu runs in blocks of rows, so the product before gating (twice
 * the result) needs a scratch of about 32 MB instead of the whole product
 * (80 MB in SD's UNet at 512x512). Every block packs the whole weight again
 * (the GEMM's B), so the blocks are not smaller: with 8 MB blocks the
 * 512x512 UNet's feed-forward layers ran 4-8% slower (11 blocks of up to
 * 816 rows for 8192 rows, 6 of 408 for 2048, 3 of 200 for 512; now 3, 2
 * and 1); at 256x256 they now run in one block. */
static inline int64_t ldm_geglu_rows(int64_t M, int64_t O) {
    int64_t r = ((int64_t)8 << 20) / (O > 0 ? O : 1);
    r = r < 64 ? 64 : r & ~(int64_t)7;
    return r < M ? r : M;
}

/* ldm_row_stats' output for M rows: mean[M] and rstd[M] (layer_norm+linear). */
static inline int64_t ldm_row_stats_bytes(int64_t M) { return 2 * M * (int64_t)sizeof(float); }

/* Scratch of a linear layer of M rows and O outputs: with GEGLU a block of
 * rows of the product before gating (ldm_geglu_rows rows ldm_geglu_ld
 * floats apart), then with a fused LayerNorm the rows' statistics. */
static inline int64_t ldm_linear_scratch_bytes(int64_t M, int64_t O, int geglu, int lnorm) {
    return (geglu ? (int64_t)sizeof(float) * ldm_geglu_rows(M, O) * ldm_geglu_ld(O) : 0) +
           (lnorm ? ldm_row_stats_bytes(M) : 0);
}

/* ---- convolution ------------------------------------------------------------------ */

typedef struct LdmConvShape {
    int N, C, H, W;          /* input */
    int O, KH, KW;           /* weight */
    int stride_h, stride_w;  /* stride */
    int pad_t, pad_b, pad_l, pad_r; /* zero padding */
    int HO, WO;              /* output */
    long y_gap;              /* floats between one sample's output and the next beyond O*HO*WO: the
                                output is part of a channel concatenation; 0 = contiguous */
    int up;                  /* 2: x is upsampled (nearest, x2) as it is read, the convolution's input
                                being [N, C, 2H, 2W] (HO = 2H, WO = 2W; Winograd only); 0: none */
} LdmConvShape;

typedef enum LdmConvAlgo {
    LDM_CONV_IM2COL = 0,     /* im2col tiles + GEMM (any shape) */
    LDM_CONV_POINTWISE = 1,  /* 1x1, stride 1, no padding: one GEMM */
    LDM_CONV_WINOGRAD = 2,   /* Winograd F(4x4, 3x3), 3x3 stride 1 pad 1 only */
    LDM_CONV_DIRECT = 3,     /* direct, at most 8 output channels, stride 1 (a network's last conv) */
} LdmConvAlgo;

/* im2col: output rows per tile, so that the column block stays around 8 MB. */
static inline int ldm_im2col_rows(const LdmConvShape *s) {
    long k = (long)s->C * s->KH * s->KW;
    long rows = (1L << 21) / (k * s->WO);
    if (rows < 1) rows = 1;
    if (rows > s->HO) rows = s->HO;
    return (int)rows;
}

/* im2col of small outputs (the UNet's lowest levels): the columns of all
 * samples go into one GEMM, so the weights are read (and widened) once per
 * call, not once per sample. Worth it while the columns fit in about 16 MB. */
static inline int ldm_im2col_batched(const LdmConvShape *s) {
    long k = (long)s->C * s->KH * s->KW, cols = (long)s->N * s->HO * s->WO;
    return s->N > 1 && (long)s->HO * s->WO <= 256 && k * cols <= (1L << 22);
}

/* ---- Winograd F(4x4, 3x3): block sizes and loop order ---------------------------- */

#ifdef WG_TUNE
#include <stdlib.h>
static inline int ldm_wg_env(const char *k, int d) { return getenv(k) ? atoi(getenv(k)) : d; }
#define WG_RES_BYTES ((size_t)ldm_wg_env("WG_RES_KB", 6144) << 10)
#define WG_CHUNK_BYTES ((size_t)ldm_wg_env("WG_CHUNK_KB", 3072) << 10)
#define WG_KBLK_UNITS ldm_wg_env("WG_KBLK_UNITS", 16)
#define WG_M_BYTES ((size_t)ldm_wg_env("WG_M_KB", 768) << 10)
#define WG_KC ldm_wg_env("WG_KC", 256)
#define WG_MODE ldm_wg_env("WG_MODE", -1)
#else
#define WG_RES_BYTES (6u << 20)    /* the resident transformed operand (stays in L3) */
#define WG_CHUNK_BYTES (3u << 20)  /* the recomputed one, per block */
#define WG_KBLK_UNITS 16           /* tile blocks up to this many units: weights in K blocks */
#define WG_M_BYTES (768u << 10)    /* GEMM products M of a sub-block */
#define WG_KC 256                  /* channels per GEMM K block (a V micro-panel stays in L1) */
#define WG_MODE -1
#endif

/* The Winograd kernel's plan for a shape (kernels_winograd.c): V (the
 * transformed input), U (the transformed weights) and M (the products) are
 * each 36 planes in the scratch, the planes vxs, uxs and mxs floats apart. */
typedef struct LdmWgPlan {
    int TH, TW;           /* tile rows and columns per image */
    long T;               /* tiles in all, N*TH*TW */
    int blk_units;        /* 8-tile units per tile block */
    int ntb;              /* tile blocks */
    int OB;               /* output channels per output block (multiple of 4) */
    int nob;              /* output blocks */
    int out_major;        /* 1: output blocks outermost (U resident) */
    int sub_units;        /* max units per GEMM sub-block (<= blk_units) */
    int kw;               /* channels per weight transform (C, or a K block) */
    size_t vxs, uxs, mxs; /* floats between the 36 planes xi of V, U and M */
} LdmWgPlan;

/* Stride between the 36 planes of n floats: 64 bytes past a multiple of
 * 4 KB, so that the 36 vectors a transform loads or stores for one tile
 * fall in different cache sets (at a multiple of 4 KB they all collide). */
static inline size_t ldm_wg_plane_stride(size_t n) { return ((n + 1023) & ~(size_t)1023) + 16; }

/* Units per tile block for a budget of V bytes, and the block count. */
static inline void ldm_wg_tile_blocks(long units, int C, size_t bytes, int *blk, int *n) {
    long maxu = (long)(bytes / (36ul * 8 * sizeof(float) * (size_t)C));
    if (maxu < 1) maxu = 1;
    long nb = (units + maxu - 1) / maxu;
    *blk = (int)((units + nb - 1) / nb);
    *n = (int)nb;
}

/* Outputs per output block for a budget of U bytes, and the block count. */
static inline void ldm_wg_out_blocks(int O, int C, size_t bytes, int *ob, int *n) {
    int O4 = (O + 3) & ~3;
    long maxo = (long)(bytes / (36ul * sizeof(float) * (size_t)C)) & ~3l;
    if (maxo < 4) maxo = 4;
    if (maxo > O4) maxo = O4;
    long nb = (O4 + maxo - 1) / maxo;
    *ob = (int)(((O4 + nb - 1) / nb + 3) & ~3l);
    *n = (int)nb;
}

static inline void ldm_wg_plan(const LdmConvShape *s, LdmWgPlan *p) {
    int C = s->C > 0 ? s->C : 1, O = s->O > 0 ? s->O : 1;
    p->TH = (s->H + 3) / 4;
    p->TW = (s->W + 3) / 4;
    p->T = (long)s->N * p->TH * p->TW;
    long units = (p->T + 7) / 8;
    if (units < 1) units = 1;
    /* tile-major: V of a tile block resident, U recomputed per tile block */
    int tb_t, ntb_t, ob_t, nob_t;
    ldm_wg_tile_blocks(units, C, WG_RES_BYTES, &tb_t, &ntb_t);
    ldm_wg_out_blocks(O, C, WG_CHUNK_BYTES, &ob_t, &nob_t);
    /* out-major: U of an output block resident, V recomputed per output block */
    int tb_o, ntb_o, ob_o, nob_o;
    ldm_wg_tile_blocks(units, C, WG_CHUNK_BYTES, &tb_o, &ntb_o);
    ldm_wg_out_blocks(O, C, WG_RES_BYTES, &ob_o, &nob_o);
    /* transform work: per (tile, channel) a little more than per weight
     * pair (measured, rereading the input or the weights included) */
    double tiles = (double)units * 8, in = tiles * C, wt = (double)O * C;
    double cost_t = 1.25 * in + wt * ntb_t;
    double cost_o = 1.25 * in * nob_o + wt;
    p->out_major = WG_MODE >= 0 ? WG_MODE : cost_o < cost_t;
    p->blk_units = p->out_major ? tb_o : tb_t;
    p->ntb = p->out_major ? ntb_o : ntb_t;
    p->OB = p->out_major ? ob_o : ob_t;
    p->nob = p->out_major ? nob_o : nob_t;
    /* GEMM sub-blocks: M (36 x OB x tiles) within its budget, >= 3 units */
    long su = (long)(WG_M_BYTES / (36ul * sizeof(float) * 8 * (size_t)p->OB));
    if (su < 3) su = 3;
    p->sub_units = p->blk_units < su ? p->blk_units : (int)su;
    p->kw = C;
    if (!p->out_major && p->blk_units <= WG_KBLK_UNITS) {
        /* few tiles: each weight is used by few GEMM columns, so make the
         * output blocks large and transform their weights in K blocks, one
         * GEMM sub-block covering the whole (tile block, output block) */
        int kw = C < WG_KC ? C : WG_KC;
        size_t ub = WG_CHUNK_BYTES * (size_t)C / kw, mb = WG_M_BYTES * (size_t)C / ((size_t)p->blk_units * 8);
        ldm_wg_out_blocks(O, C, ub < mb ? ub : mb, &p->OB, &p->nob);
        p->kw = kw;
        p->sub_units = p->blk_units;
    }
    p->vxs = ldm_wg_plane_stride((size_t)C * (size_t)p->blk_units * 8);
    p->uxs = ldm_wg_plane_stride((size_t)p->OB * (size_t)p->kw);
    p->mxs = ldm_wg_plane_stride((size_t)p->OB * (size_t)p->sub_units * 8);
}

/* The convolution the Winograd kernel runs for s. With an upsampling
 * prologue (s->up == 2: conv3x3(upsample_nearest(x, 2)), padding 1) that
 * is a 3x3 convolution of the low-resolution x itself with 4 O outputs:
 * output 4o + 2dy + dx is phase (dy, dx) of output o, the outputs at
 * (2i + dy, 2j + dx), whose 3x3 taps fall on the low-resolution rows
 * i + (dy + ky - 1) / 2 (floor) and columns likewise: each phase's kernel
 * sums the taps that land on the same source pixel (2x2 non-zero taps, the
 * "sub-pixel" convolution), so no upsampled input is made and the input
 * transform covers a quarter of the pixels. */
static inline LdmConvShape ldm_wg_core_shape(const LdmConvShape *s) {
    LdmConvShape c = *s;
    if (s->up == 2) {
        c.O = 4 * s->O;
        c.HO = s->H;
        c.WO = s->W;
        c.y_gap = 0;
        c.up = 0;
    }
    return c;
}

/* Scratch of ldm_conv3x3_winograd: V, U and M of the plan (of the core shape). */
static inline size_t ldm_winograd_scratch_bytes(const LdmConvShape *s) {
    LdmWgPlan p;
    LdmConvShape c = ldm_wg_core_shape(s);
    ldm_wg_plan(&c, &p);
    return 36 * (p.vxs + p.uxs + p.mxs) * sizeof(float);
}

/* Scratch of ldm_conv2d with algorithm algo (LdmConvAlgo). */
static inline size_t ldm_conv_scratch_bytes(const LdmConvShape *s, int algo) {
    switch (algo) {
    case LDM_CONV_POINTWISE:
    case LDM_CONV_DIRECT: return 0;
    case LDM_CONV_WINOGRAD: return ldm_winograd_scratch_bytes(s);
    default:
        if (ldm_im2col_batched(s)) /* columns of all samples + the product before it is scattered */
            return ((size_t)s->C * s->KH * s->KW + (size_t)s->O) * (size_t)s->N * s->HO * s->WO * sizeof(float);
        return (size_t)s->C * s->KH * s->KW * (size_t)ldm_im2col_rows(s) * s->WO * sizeof(float);
    }
}

/* ---- attention (kernels_attention.c) ------------------------------------------------ */

typedef struct LdmAttnShape {
    int B, Tq, Tk, H, d, dv;         /* batch, queries, keys, heads, head dims of q/k and v */
    int ldq, ldk, ldv, ldy;          /* row strides (floats) */
    long bsq, bsk, bsv, bsy;         /* batch strides (floats) */
    float scale;                     /* logit scale */
    int causal;                      /* mask keys after the query */
} LdmAttnShape;

/* Per thread (up to LDM_ATTN_MAX_THREADS) the kernel owns a score tile,
 * maybe a packed key/value tile and a group of query tiles. The slot
 * count is a constant, not the current thread count, because the compiler
 * plans the scratch ahead of time, maybe on another machine; the size is
 * stated for query tiles of LDM_ATTN_MQ_PLAN queries whatever the build's
 * tile (see kernels_attention.c). */
#define LDM_ATTN_MQ_PLAN 24              /* the query tile the scratch size is stated for */
#define LDM_ATTN_NK 64                   /* keys per tile (multiple of 4) */
#define LDM_ATTN_NK_ONE 128              /* up to this many keys: one tile of all of them */
#define LDM_ATTN_GROUP_BYTES (160 << 10) /* state of a group of query tiles, at most */
#define LDM_ATTN_MAX_GROUP 8             /* query tiles per group, at most */
#define LDM_ATTN_MAX_THREADS 16          /* scratch slots */

static inline size_t ldm_attn_round64(size_t n) { return (n + 63) & ~(size_t)63; }
static inline int ldm_attn_round4(int n) { return (n + 3) & ~3; }

/* Key tile size for Tk keys. */
static inline int ldm_attn_key_tile(int Tk) { return Tk <= LDM_ATTN_NK_ONE ? ldm_attn_round4(Tk) : LDM_ATTN_NK; }

/* The state of one query tile of mq queries: [d][mq] queries, [round4(dv)][mq]
 * output accumulator, and three [mq] vectors, each 64-byte aligned. */
static inline size_t ldm_attn_qtile_bytes(const LdmAttnShape *s, int mq) {
    size_t f = sizeof(float);
    return ldm_attn_round64((size_t)s->d * mq * f) + ldm_attn_round64((size_t)ldm_attn_round4(s->dv) * mq * f) +
           3 * ldm_attn_round64(mq * f);
}

/* Query tiles per group: as many as keep their state within
 * LDM_ATTN_GROUP_BYTES (in L2 with a key tile), so each key tile, read once
 * from memory or L3, serves a whole group. */
static inline int ldm_attn_max_group(const LdmAttnShape *s, int mq) {
    int g = (int)(LDM_ATTN_GROUP_BYTES / ldm_attn_qtile_bytes(s, mq));
    return g < 1 ? 1 : g > LDM_ATTN_MAX_GROUP ? LDM_ATTN_MAX_GROUP : g;
}

/* The packed key and value tile (only when query tiles are grouped). */
static inline size_t ldm_attn_kv_bytes(const LdmAttnShape *s, int mq) {
    const size_t nkt = (size_t)ldm_attn_key_tile(s->Tk), f = sizeof(float);
    return ldm_attn_max_group(s, mq) > 1
               ? ldm_attn_round64(nkt * s->d * f) + ldm_attn_round64(nkt * ldm_attn_round4(s->dv) * f)
               : 0;
}

/* One thread's scratch with query tiles of mq queries. */
static inline size_t ldm_attn_thread_bytes(const LdmAttnShape *s, int mq) {
    return ldm_attn_round64((size_t)ldm_attn_key_tile(s->Tk) * mq * sizeof(float)) + ldm_attn_kv_bytes(s, mq) +
           (size_t)ldm_attn_max_group(s, mq) * ldm_attn_qtile_bytes(s, mq);
}

/* Scratch of ldm_attention: 64 bytes to align it, then the threads' slots. */
static inline size_t ldm_attention_scratch_bytes(const LdmAttnShape *s) {
    if (s->B <= 0 || s->Tq <= 0 || s->Tk <= 0 || s->H <= 0 || s->d < 0 || s->dv <= 0) return 0;
    return 64 + LDM_ATTN_MAX_THREADS * ldm_attn_thread_bytes(s, LDM_ATTN_MQ_PLAN);
}

#endif
