/*
 * select.c - kernel selection: the convolution algorithm of every conv2d
 * node from its shape (direct for at most 8 output channels, pointwise for
 * 1x1, Winograd F(4x4,3x3) where a sample has enough 4x4 tiles, else
 * im2col + GEMM), and for every weight the storage the runtime binds it in
 * (half precision kept unless some kernel reads plain float32; GEMM panels
 * when every use is a GEMM operand that reads them), and the scratch
 * workspace each chosen kernel needs (Node.scratch_bytes, which the memory
 * plan places). The sizes are runtime/kernel_sizes.h's formulas, the same
 * functions the kernels cut their scratch with.
 */
#include <stdlib.h>

#include "kernel_sizes.h"
#include "ldmc.h"

/* Winograd convolutions can be switched off for experiments (-DLDMC_WINOGRAD=0). */
#ifndef LDMC_WINOGRAD
#define LDMC_WINOGRAD 1
#endif

/* Winograd F(4x4,3x3) pays from 4 tiles per sample (an 8x8 map) on: its
 * weight transform costs about as much as the whole product of one unit of
 * 8 tiles, and still the UNet's 8x8 convolutions (1280 channels) ran 1.6-2x
 * faster than through im2col at batch 2 (145-153 against 73-95 GFLOP/s,
 * F16 weights, bench_winograd / bench_gemm) and no slower at batch 1; at
 * 4x4 (one tile) im2col is 1.5x faster. The choice looks at one sample's
 * tiles, not the batch's, so that a sample's result does not depend on the
 * batch it is computed in. */
static int use_winograd(const Node *n) {
    const Node *x = n->src[0], *w = n->src[1];
    if (w->shape[2] != 3 || w->shape[3] != 3 || n->stride[0] != 1 || n->stride[1] != 1) return 0;
    for (int i = 0; i < 4; i++)
        if (n->pad[i] != 1) return 0;
    int64_t tiles = ((n->shape[2] + 3) / 4) * ((n->shape[3] + 3) / 4);
    return LDMC_WINOGRAD && tiles >= 4 && x->shape[1] >= 16 && w->shape[0] >= 16;
}

/* conv3x3(upsample_nearest(x, 2)), padding 1, fused: the Winograd kernel
 * runs it on the low-resolution x as 4 sub-pixel phases (4 O outputs, see
 * kernel_sizes.h ldm_wg_core_shape), so the tiles and channel counts that
 * matter are that convolution's. */
int conv_upsample_fusable(const Node *n, const Node *up) {
    const Node *x = up->src[0], *w = n->src[1];
    if (!LDMC_WINOGRAD || n->op != OPK_CONV2D || up->op != OPK_UPSAMPLE || up->factor != 2 || n->src[0] != up) return 0;
    if (w->shape[2] != 3 || w->shape[3] != 3 || n->stride[0] != 1 || n->stride[1] != 1) return 0;
    for (int i = 0; i < 4; i++)
        if (n->pad[i] != 1) return 0;
    int64_t tiles = ((x->shape[2] + 3) / 4) * ((x->shape[3] + 3) / 4);
    if (tiles < 4 || x->shape[1] < 16 || w->shape[0] < 16) return 0;
    /* the phases' transformed weights (4 O x C, 4 times the plain kernel's)
     * must fit the kernel's resident budget, transformed once per call:
     * TAESD's 64 -> 64 (2.4 MB) do; the VAE decoder's 512 -> 512 (151 MB)
     * and 256 -> 256 (38 MB) would be transformed again for every tile
     * block, and measured 1.3-1.6x slower than upsample + conv */
    return 36.0 * 4 * (double)w->shape[0] * (double)x->shape[1] * sizeof(float) <= (double)WG_RES_BYTES;
}

/* ---- the shapes and scratch of the chosen kernels --------------------------- */

/* Dim d of n when the extents have the values val (NULL: the maxima), as an int. */
static int dim_at(const Node *n, int d, const int64_t *val) { return (int)node_dim_at(n, d, val); }

LdmConvShape node_conv_shape(const Node *n, const int64_t *val) {
    const Node *x = n->src[0], *w = n->src[1];
    LdmConvShape s = {.N = dim_at(x, 0, val), .C = (int)x->shape[1], .H = (int)x->shape[2], .W = (int)x->shape[3],
                      .O = (int)w->shape[0], .KH = (int)w->shape[2], .KW = (int)w->shape[3],
                      .stride_h = n->stride[0], .stride_w = n->stride[1], .pad_t = n->pad[0], .pad_b = n->pad[1],
                      .pad_l = n->pad[2], .pad_r = n->pad[3], .HO = (int)n->shape[2], .WO = (int)n->shape[3],
                      .y_gap = (long)n->out_gap, .up = n->pro_upsample};
    return s;
}

LdmAttnShape node_attn_shape(const Node *n, const int64_t *val) {
    const Node *q = n->src[0], *k = n->src[1], *v = n->src[2];
    int B = dim_at(q, 0, val), Tq = dim_at(q, 1, val), Tk = dim_at(k, 1, val), C = (int)q->shape[2], Cv = (int)v->shape[2];
    LdmAttnShape s = {.B = B, .Tq = Tq, .Tk = Tk, .H = n->heads, .d = C / n->heads, .dv = Cv / n->heads, .ldq = C,
                      .ldk = C, .ldv = Cv, .ldy = Cv, .bsq = (long)Tq * C, .bsk = (long)Tk * C, .bsv = (long)Tk * Cv,
                      .bsy = (long)Tq * Cv, .scale = (float)n->alpha, .causal = n->causal};
    return s;
}

/* The scratch sizes (and linear+geglu's row blocks, ldm_geglu_rows and
 * ldm_geglu_ld) are runtime/kernel_sizes.h's: the kernels cut their
 * scratch with the same functions. With run-time rows the geglu block is
 * chosen for the maximum: min(r, M) splits every smaller M as a graph
 * compiled for it would (one block while M <= r, blocks of r beyond). */

/* Scratch of n's kernel when the extents have the values val (NULL: maxima). */
static int64_t scratch_at(const Node *n, const int64_t *val) {
    switch (n->op) {
    case OPK_CONV2D: {
        LdmConvShape s = node_conv_shape(n, val);
        return (int64_t)ldm_conv_scratch_bytes(&s, n->algo);
    }
    case OPK_LINEAR: {
        /* linear+geglu: a block of rows of the product before gating;
         * layer_norm+linear: the mean and 1/std of every input row */
        int64_t O = n->src[1]->shape[0], M = node_numel(n->src[0]) / n->src[1]->shape[1];
        return ldm_linear_scratch_bytes(M, O, n->act == ACT_GEGLU, n->pro_lnorm);
    }
    case OPK_ATTENTION: {
        LdmAttnShape a = node_attn_shape(n, val);
        return (int64_t)ldm_attention_scratch_bytes(&a);
    }
    default: return 0;
    }
}

/* The scratch is planned once, for every run-time value: the largest over
 * all values of the extents n's shapes involve (a kernel's scratch need
 * not grow with its sizes: Winograd's blocking and im2col's batching
 * change with the batch). */
int64_t kernel_scratch_bytes(const Node *n) {
    int ks[MAX_DIMS * (MAX_SRC + 1)], nk = 0;
    for (int s = -1; s < n->nsrc; s++) {
        const Node *x = s < 0 ? n : n->src[s];
        for (int d = 0; d < x->ndim; d++) {
            int k = x->dyn[d] - 1, seen = 0;
            for (int i = 0; i < nk; i++) seen |= ks[i] == k;
            if (k >= 0 && !seen) ks[nk++] = k;
        }
    }
    int64_t best = scratch_at(n, NULL);
    if (!nk) return best;
    const Graph *g = n->graph;
    int64_t *val = ldm_xcalloc((size_t)g->n_extents + 1, sizeof *val), combos = 1;
    for (int k = 0; k < g->n_extents; k++) val[k] = g->extents[k].max;
    for (int i = 0; i < nk; i++) combos *= g->extents[ks[i]].max / g->extents[ks[i]].step;
    if (combos <= (1 << 16)) {
        for (int i = 0; i < nk; i++) val[ks[i]] = g->extents[ks[i]].step;
        for (;;) {
            int64_t b = scratch_at(n, val);
            best = b > best ? b : best;
            int i = 0; /* next combination (odometer) */
            while (i < nk && (val[ks[i]] += g->extents[ks[i]].step) > g->extents[ks[i]].max)
                val[ks[i]] = g->extents[ks[i]].step, i++;
            if (i == nk) break;
        }
    }
    free(val);
    return best;
}

void pass_select_kernels(Graph *g) {
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        if (n->op == OPK_WEIGHT) n->needs_f32 = 0, n->wlayout = -1; /* -1: no use seen yet */
    }
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        if (n->op == OPK_CONV2D) {
            const Node *w = n->src[1];
            int pointwise = w->shape[2] == 1 && w->shape[3] == 1 && n->stride[0] == 1 && n->stride[1] == 1 &&
                            !n->pad[0] && !n->pad[1] && !n->pad[2] && !n->pad[3];
            /* a handful of output channels (a network's last conv): no GEMM
             * has enough rows to pay for its packing */
            int direct = w->shape[0] <= 8 && n->stride[0] == 1 && n->stride[1] == 1;
            n->algo = n->pro_upsample ? LDM_CONV_WINOGRAD /* the only kernel with the prologue */
                      : direct    ? LDM_CONV_DIRECT
                      : pointwise ? LDM_CONV_POINTWISE
                      : use_winograd(n) ? LDM_CONV_WINOGRAD
                                        : LDM_CONV_IM2COL;
        }
        for (int s = 0; s < n->nsrc; s++) {
            Node *w = n->src[s];
            while (w->op == OPK_RESHAPE) w = w->src[0];
            if (w->op != OPK_WEIGHT) continue;
            /* kernels that widen half-precision weights themselves */
            int half_ok = (s == 1 && (n->op == OPK_CONV2D || n->op == OPK_LINEAR)) || (s == 0 && n->op == OPK_EMBEDDING);
            if (!half_ok) w->needs_f32 = 1;
            /* the layout this use reads; panels keep the rows of the weight
             * ([O, ...]), so a reshape must keep its first dimension */
            int want = LDM_WL_ROWS;
            if (s == 1 && n->src[s]->shape[0] == w->shape[0]) {
                if (n->op == OPK_LINEAR) want = LDM_WL_BPANELS;
                else if (n->op == OPK_CONV2D && (n->algo == LDM_CONV_IM2COL || n->algo == LDM_CONV_POINTWISE))
                    want = LDM_WL_APANELS;
            }
            w->wlayout = w->wlayout == -1 || w->wlayout == want ? want : LDM_WL_ROWS;
        }
    }
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        if (n->op == OPK_WEIGHT && n->wlayout == -1) n->wlayout = LDM_WL_ROWS;
        n->scratch_bytes = kernel_scratch_bytes(n); /* the workspace the chosen kernel needs */
    }
}
