/*
 * select.c - kernel selection: the convolution algorithm of every conv2d
 * node from its shape (direct for at most 8 output channels, pointwise for
 * 1x1, Winograd F(4x4,3x3) where a sample has enough 4x4 tiles, else
 * im2col + GEMM), and for every weight the storage the runtime binds it in
 * (half precision kept unless some kernel reads plain float32; GEMM panels
 * when every use is a GEMM operand that reads them).
 */
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
            n->algo = direct      ? LDM_CONV_DIRECT
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
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i]->op == OPK_WEIGHT && g->nodes[i]->wlayout == -1) g->nodes[i]->wlayout = LDM_WL_ROWS;
}
