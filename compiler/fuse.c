/*
 * fuse.c - fusion and kernel selection.
 *
 * pass_fuse folds producer/consumer pairs into one kernel when the
 * intermediate value has no other reader:
 *   silu(group_norm(x))            -> group_norm+silu
 *   geglu(linear(x))               -> linear+geglu
 *   conv(x) + reshape(e, [B,C,1,1]) -> conv2d+rowadd   (ResBlock time embedding)
 *   conv(x) + r, linear(x) + r     -> conv2d+residual, linear+residual
 *   linear(layer_norm(x))          -> layer_norm+linear (every reader of the
 *                                     norm a linear layer: each normalises
 *                                     the rows of x as its GEMM packs them)
 * The consumers of the removed node read the fused producer instead; the
 * dump prints the op chain of every fused node (group_norm+silu, ...).
 *
 * pass_select_kernels picks the convolution algorithm per node from its
 * shape (direct for at most 8 output channels, pointwise for 1x1,
 * Winograd where a sample has enough 4x4 tiles, else im2col) and marks
 * weights that some kernel reads as plain float32.
 */
#include <stdlib.h>
#include <string.h>

#include "kernel_sizes.h"
#include "ldmc.h"

/* Winograd convolutions are used once runtime/kernels_winograd.c exists. */
#ifndef LDMC_WINOGRAD
#define LDMC_WINOGRAD 1
#endif

const char *node_kernel_name(const Node *n, char *buf, size_t size) {
    snprintf(buf, size, "%s%s%s%s%s", n->pro_lnorm ? "layer_norm+" : "", op_names[n->op],
             n->act == ACT_SILU ? "+silu" : n->act == ACT_GEGLU ? "+geglu" : "", n->ep_rowadd ? "+rowadd" : "",
             n->ep_residual ? "+residual" : "");
    return buf;
}

static int is_output(const Graph *g, const Node *n) {
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i].node == n) return 1;
    return 0;
}

/* Record in repl that old was folded into it (for dumps and comments). */
static void note_fused(Node *repl, const Node *old) {
    char *prev = repl->fused;
    const char *file = old->loc.file ? strrchr(old->loc.file->path, '/') : NULL;
    file = file ? file + 1 : old->loc.file ? old->loc.file->path : "<builtin>";
    repl->fused = ldm_xasprintf("%s%s%s %%%d @%s:%d", prev ? prev : "", prev ? "; " : "", op_names[old->op], old->id, file,
                                old->loc.line);
    free(prev);
}

static void replace_uses(Graph *g, Node *old, Node *repl) {
    note_fused(repl, old);
    repl->fused_flops += node_flops(old);
    for (int i = 0; i < g->n_nodes; i++)
        for (int s = 0; s < g->nodes[i]->nsrc; s++)
            if (g->nodes[i]->src[s] == old) g->nodes[i]->src[s] = repl;
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i].node == old) g->outputs[i].node = repl;
    repl->n_uses = old->n_uses;
    old->n_uses = 0;
}

static int same_shape(const Node *a, const Node *b) {
    return a->ndim == b->ndim && memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape) == 0;
}

/* A producer whose result can still take an epilogue. */
static int fusable_producer(const Graph *g, const Node *p) {
    return (p->op == OPK_CONV2D || p->op == OPK_LINEAR) && p->n_uses == 1 && !is_output(g, p) && !p->ep_residual &&
           p->nsrc < MAX_SRC;
}

/* Move producer p (schedule index j) to just before the add at index i, so
 * it runs after every operand of the add; nothing between them reads p
 * (its only reader is the add). */
static void move_before(Graph *g, Node *p, int i) {
    int j = 0;
    while (g->nodes[j] != p) j++;
    for (int k = j; k < i - 1; k++) g->nodes[k] = g->nodes[k + 1];
    g->nodes[i - 1] = p;
}

static int try_epilogue(Graph *g, Node *add, int i) {
    Node *a = add->src[0], *b = add->src[1];
    /* time-embedding row add: conv [B,C,H,W] + reshape(e[B,C]) -> [B,C,1,1] */
    for (int k = 0; k < 2; k++) {
        Node *p = k ? b : a, *o = k ? a : b;
        if (p->op != OPK_CONV2D || !fusable_producer(g, p) || p->ep_rowadd || !same_shape(p, add)) continue;
        if (o->op != OPK_RESHAPE || o->ndim != 4 || o->shape[2] != 1 || o->shape[3] != 1) continue;
        Node *e = o->src[0];
        if (e->ndim != 2 || e->shape[0] != p->shape[0] || e->shape[1] != p->shape[1]) continue;
        p->src[p->nsrc++] = e;
        p->ep_rowadd = p->nsrc;
        replace_uses(g, add, p);
        move_before(g, p, i);
        return 1;
    }
    /* residual: a conv/linear operand takes the other operand as its residual
     * (the later-computed one first, so the other is usually ready already) */
    for (int k = 0; k < 2; k++) {
        Node *p = (a->id > b->id) == (k == 0) ? a : b, *o = p == a ? b : a;
        if (!fusable_producer(g, p) || p->act != ACT_NONE || !same_shape(p, add) || !same_shape(o, add)) continue;
        p->src[p->nsrc++] = o;
        p->ep_residual = p->nsrc;
        replace_uses(g, add, p);
        move_before(g, p, i);
        return 1;
    }
    return 0;
}

/* linear(layer_norm(x)): when every reader of the norm is a linear layer
 * taking it as input, each reads x and normalises it itself. */
static void try_lnorm(Graph *g, Node *ln) {
    if (is_output(g, ln) || ln->n_uses < 1) return;
    int readers = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *c = g->nodes[i];
        for (int s = 0; s < c->nsrc; s++)
            if (c->src[s] == ln) {
                if (s != 0 || c->op != OPK_LINEAR || c->pro_lnorm || c->nsrc + 2 > MAX_SRC) return;
                readers++;
            }
    }
    if (readers != ln->n_uses) return;
    for (int i = 0; i < g->n_nodes; i++) {
        Node *c = g->nodes[i];
        if (c->op != OPK_LINEAR || c->src[0] != ln) continue;
        c->src[0] = ln->src[0];
        c->src[c->nsrc++] = ln->src[1];
        c->pro_lnorm = c->nsrc;
        c->src[c->nsrc++] = ln->src[2];
        c->eps = ln->eps;
        note_fused(c, ln);
        c->fused_flops += node_flops(ln) / readers;
        ln->src[0]->n_uses++;
        ln->src[1]->n_uses++;
        ln->src[2]->n_uses++;
    }
    ln->n_uses = 0;
}

void pass_fuse(Graph *g) {
    pass_dead_code(g);
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        Node *x = n->nsrc ? n->src[0] : NULL;
        if (n->op == OPK_SILU && x->op == OPK_GROUP_NORM && x->n_uses == 1 && x->act == ACT_NONE && !is_output(g, x)) {
            x->act = ACT_SILU;
            replace_uses(g, n, x);
        } else if (n->op == OPK_GEGLU && x->op == OPK_LINEAR && x->n_uses == 1 && x->act == ACT_NONE && !x->ep_residual &&
                   !is_output(g, x)) {
            x->act = ACT_GEGLU;
            x->shape[x->ndim - 1] /= 2;
            replace_uses(g, n, x);
        } else if (n->op == OPK_ADD) {
            try_epilogue(g, n, i);
        } else if (n->op == OPK_LAYER_NORM && n->nsrc == 3) {
            try_lnorm(g, n);
        }
    }
    pass_dead_code(g);
}

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
