/*
 * fuse.c - fusion and kernel selection.
 *
 * pass_fuse folds producer/consumer pairs into one kernel when the
 * intermediate value has no other reader:
 *   silu(group_norm(x))            -> group_norm+silu
 *   geglu(linear(x))               -> linear+geglu
 *   conv(x) + reshape(e, [B,C,1,1]) -> conv2d+rowadd   (ResBlock time embedding)
 *   conv(x) + r, linear(x) + r     -> conv2d+residual, linear+residual
 *   relu(conv(...))                -> conv2d+relu, conv2d+residual+relu
 *                                     (TAESD: relu(conv(x)), relu(conv(h) + x))
 *   conv3x3(upsample_nearest(x,2)) -> upsample_nearest+conv2d (TAESD's
 *                                     upsamplings: the conv reads the
 *                                     low-resolution x as 4 sub-pixel
 *                                     phases, no upsampled intermediate;
 *                                     where select.c conv_upsample_fusable
 *                                     says it pays: not the VAE decoder's
 *                                     wide ones)
 *   linear(layer_norm(x))          -> layer_norm+linear (every reader of the
 *                                     norm a linear layer: each normalises
 *                                     the rows of x as its GEMM packs them)
 * The consumers of the removed node read the fused producer instead; the
 * dump prints the op chain of every fused node (group_norm+silu, ...) and
 * what it folded, by node id (ids never change) and source line. Nothing
 * fuses across a value with another reader or a value that is a graph
 * output. Needs the use counts of a swept graph (the dce or cse pass runs
 * before it) and leaves one: the folded nodes are swept at the end.
 */
#include <stdlib.h>
#include <string.h>

#include "ldmc.h"

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
    graph_replace_uses(g, old, repl);
    repl->n_uses = old->n_uses;
    old->n_uses = 0;
}

static int same_shape(const Node *a, const Node *b) {
    return a->ndim == b->ndim && memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape) == 0;
}

/* A producer whose result can still take an epilogue (an add: not after
 * its activation). */
static int fusable_producer(const Graph *g, const Node *p) {
    return (p->op == OPK_CONV2D || p->op == OPK_LINEAR) && p->n_uses == 1 && !graph_is_output(g, p) && !p->ep_residual &&
           p->act == ACT_NONE && p->nsrc < MAX_SRC;
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
        if (!fusable_producer(g, p) || !same_shape(p, add) || !same_shape(o, add)) continue;
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
    if (graph_is_output(g, ln) || ln->n_uses < 1) return;
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

/* conv(upsample_nearest(x, 2)): the conv reads x itself (a prologue, as
 * layer_norm+linear's). */
static void try_upsample(Graph *g, Node *conv) {
    Node *up = conv->src[0];
    if (up->op != OPK_UPSAMPLE || up->n_uses != 1 || graph_is_output(g, up) || conv->pro_upsample ||
        !conv_upsample_fusable(conv, up))
        return;
    conv->src[0] = up->src[0];
    conv->pro_upsample = up->factor;
    note_fused(conv, up);
    conv->fused_flops += node_flops(up);
    up->src[0]->n_uses++;
    up->n_uses = 0;
}

void pass_fuse(Graph *g) {
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        Node *x = n->nsrc ? n->src[0] : NULL;
        if (n->op == OPK_CONV2D) try_upsample(g, n);
        if (n->op == OPK_SILU && x->op == OPK_GROUP_NORM && x->n_uses == 1 && x->act == ACT_NONE && !graph_is_output(g, x)) {
            x->act = ACT_SILU;
            replace_uses(g, n, x);
        } else if (n->op == OPK_GEGLU && x->op == OPK_LINEAR && x->n_uses == 1 && x->act == ACT_NONE && !x->ep_residual &&
                   !graph_is_output(g, x)) {
            x->act = ACT_GEGLU;
            x->shape[x->ndim - 1] /= 2;
            replace_uses(g, n, x);
        } else if (n->op == OPK_RELU && x->op == OPK_CONV2D && x->n_uses == 1 && x->act == ACT_NONE &&
                   !graph_is_output(g, x)) {
            /* after the conv's bias, row add and residual: the add folded
             * before this (it comes earlier in the schedule) */
            x->act = ACT_RELU;
            replace_uses(g, n, x);
        } else if (n->op == OPK_ADD) {
            try_epilogue(g, n, i);
        } else if (n->op == OPK_LAYER_NORM && n->nsrc == 3) {
            try_lnorm(g, n);
        }
    }
    graph_sweep(g); /* the folded nodes: nothing reads them any more */
}
