/*
 * pass.c - passes over the graph: dead-code elimination, view resolution,
 * the static memory plan and its validator, and totals.
 *
 * The memory plan gives every activation buffer an offset in one arena.
 * Buffers are born when their node runs and die after the last node that
 * reads them (outputs live to the end); a node's scratch workspace lives only
 * while the node runs. Offsets are assigned by scanning the schedule and
 * placing each new buffer in the lowest gap among the live ones that fits
 * (first fit), or by best fit; the smaller arena wins. plan_validate() then
 * proves that no two buffers that are live at the same time overlap.
 */
#include <stdlib.h>
#include <string.h>

#include "ldmc.h"

#define ALIGN 64

static int64_t align_up(int64_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

/* ---- dead code ------------------------------------------------------------ */

void pass_dead_code(Graph *g) {
    for (int i = 0; i < g->n_nodes; i++) {
        g->nodes[i]->live = 0;
        g->nodes[i]->n_uses = 0;
    }
    for (int i = 0; i < g->n_outputs; i++) g->outputs[i].node->live = 1;
    for (int i = 0; i < g->n_inputs; i++) g->inputs[i]->live = 1; /* inputs are the interface */
    for (int i = g->n_nodes - 1; i >= 0; i--) {
        Node *n = g->nodes[i];
        if (!n->live) continue;
        for (int s = 0; s < n->nsrc; s++) n->src[s]->live = 1;
    }
    int k = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        if (!n->live) {
            free(n->name);
            free(n->scope);
            free(n->fused);
            free(n);
            continue;
        }
        n->id = k;
        g->nodes[k++] = n;
    }
    g->n_nodes = k;
    g->n_weights = 0;
    free(g->weights);
    g->weights = NULL;
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        for (int s = 0; s < n->nsrc; s++) n->src[s]->n_uses++;
        if (n->op == OPK_WEIGHT) {
            n->weight_index = g->n_weights;
            g->weights = ldm_xrealloc(g->weights, (size_t)(g->n_weights + 1) * sizeof *g->weights);
            g->weights[g->n_weights++] = n;
        }
    }
    for (int i = 0; i < g->n_outputs; i++) g->outputs[i].node->n_uses++;
}

/* ---- views ---------------------------------------------------------------- */

/* concat(..., p, ...) along the channels of [N, C, H, W]: the convolution p
 * writes its part in place (each sample's channels at their offset in the
 * concatenated sample) and the concat copies only the other parts. Only the
 * part computed last qualifies: its producer runs just before the concat,
 * so the concatenated buffer is live hardly longer than before, whereas an
 * earlier part (a UNet skip, computed on the way down) would hold the
 * buffer live across the whole network. */
static void concat_in_place(Graph *g, Node *c, int at) {
    if (c->axis != 1 || c->ndim != 4 || c->dtype != DT_F32) return;
    int last = -1, last_idx = -1;
    for (int s = 0; s < c->nsrc; s++) {
        int idx = -1;
        for (int j = 0; j < at; j++)
            if (g->nodes[j] == c->src[s]) idx = j;
        if (idx > last_idx) last_idx = idx, last = s;
    }
    if (last < 0) return;
    Node *p = c->src[last];
    if (p->op != OPK_CONV2D || p->n_uses != 1 || p->storage != p || p->ndim != 4) return;
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i].node == p) return;
    int64_t inner = p->shape[2] * p->shape[3], before = 0;
    for (int s = 0; s < last; s++) before += c->src[s]->shape[1];
    p->storage = c;
    p->into_offset = before * inner * 4;
    p->out_gap = (c->shape[1] - p->shape[1]) * inner;
}

void pass_views(Graph *g) {
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        n->storage = n->op == OPK_RESHAPE ? n->src[0]->storage : n;
        n->into_offset = 0;
        n->out_gap = 0;
    }
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i]->op == OPK_CONCAT) concat_in_place(g, g->nodes[i], i);
}

/* ---- memory plan ---------------------------------------------------------- */

/* Does node n own an arena buffer? (inputs and weights live outside) */
static int owns_buffer(const Node *n) {
    return n->storage == n && n->op != OPK_INPUT && n->op != OPK_WEIGHT;
}

/* One buffer to place: an activation or a scratch workspace. */
typedef struct Buf {
    int64_t size;        /* bytes (aligned) */
    int first, last;     /* schedule steps during which it is live */
    int64_t offset;      /* result */
    Node *node;          /* owner */
    int scratch;         /* 1 for the node's scratch workspace */
} Buf;

static int cmp_first(const void *x, const void *y) {
    const Buf *a = x, *b = y;
    if (a->first != b->first) return a->first - b->first;
    if (a->node->id != b->node->id) return a->node->id - b->node->id;
    return a->scratch - b->scratch;
}

static int collect_buffers(Graph *g, Buf **out) {
    /* last use of every storage root */
    for (int i = 0; i < g->n_nodes; i++) g->nodes[i]->last_use = i;
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        for (int s = 0; s < n->nsrc; s++) {
            Node *st = n->src[s]->storage;
            if (st->last_use < i) st->last_use = i;
        }
    }
    for (int i = 0; i < g->n_outputs; i++) g->outputs[i].node->storage->last_use = g->n_nodes;
    /* first writer of every storage root (a concatenation's in-place part
     * is written before the concat itself runs) */
    int *first = ldm_xmalloc((size_t)(g->n_nodes + 1) * sizeof *first);
    for (int i = 0; i < g->n_nodes; i++) first[i] = i;
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *st = g->nodes[i]->storage;
        if (st->id >= 0 && st->id < g->n_nodes && g->nodes[st->id] == st && i < first[st->id]) first[st->id] = i;
    }
    Buf *b = ldm_xcalloc((size_t)(2 * g->n_nodes + 1), sizeof *b);
    int nb = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        if (owns_buffer(n)) b[nb++] = (Buf){align_up(node_bytes(n)), first[i], n->last_use, 0, n, 0};
        n->scratch_bytes = kernel_scratch_bytes(n);
        if (n->scratch_bytes > 0) b[nb++] = (Buf){align_up(n->scratch_bytes), i, i, 0, n, 1};
    }
    free(first);
    /* the placers take buffers in order of their first step */
    qsort(b, (size_t)nb, sizeof *b, cmp_first);
    *out = b;
    return nb;
}

/* Place buffers in schedule order; best != 0 picks the smallest fitting gap. */
static int64_t place(Buf *b, int nb, int best) {
    int *live = ldm_xmalloc((size_t)(nb + 1) * sizeof *live);
    int nlive = 0;
    int64_t top = 0;
    for (int i = 0; i < nb; i++) {
        /* retire buffers whose last reader ran before this step */
        int k = 0;
        for (int j = 0; j < nlive; j++)
            if (b[live[j]].last >= b[i].first) live[k++] = live[j];
        nlive = k;
        /* live buffers sorted by offset (insertion sort: nearly sorted) */
        for (int j = 1; j < nlive; j++)
            for (int m = j; m > 0 && b[live[m - 1]].offset > b[live[m]].offset; m--) {
                int t = live[m];
                live[m] = live[m - 1];
                live[m - 1] = t;
            }
        int64_t pos = 0, chosen = -1, chosen_gap = -1;
        for (int j = 0; j <= nlive; j++) {
            int64_t end = j < nlive ? b[live[j]].offset : INT64_MAX;
            int64_t gap = end - pos;
            if (gap >= b[i].size) {
                if (!best) {
                    chosen = pos;
                    break;
                }
                if (chosen < 0 || gap < chosen_gap) {
                    chosen = pos;
                    chosen_gap = gap;
                }
            }
            if (j < nlive && b[live[j]].offset + b[live[j]].size > pos) pos = b[live[j]].offset + b[live[j]].size;
        }
        b[i].offset = chosen;
        if (chosen + b[i].size > top) top = chosen + b[i].size;
        live[nlive++] = i;
    }
    free(live);
    return top;
}

/* Offline placement, largest buffers first: each goes to the lowest offset
 * that does not collide with an already placed buffer live at the same time. */
static int cmp_size_desc(const void *x, const void *y) {
    const Buf *a = *(Buf *const *)x, *b = *(Buf *const *)y;
    if (a->size != b->size) return a->size < b->size ? 1 : -1;
    return a->first - b->first;
}

static int cmp_offset(const void *x, const void *y) {
    const Buf *a = *(Buf *const *)x, *b = *(Buf *const *)y;
    return a->offset < b->offset ? -1 : a->offset > b->offset;
}

static int64_t place_by_size(Buf *b, int nb) {
    Buf **order = ldm_xmalloc((size_t)(nb + 1) * sizeof *order), **placed = ldm_xmalloc((size_t)(2 * nb + 1) * sizeof *placed);
    for (int i = 0; i < nb; i++) order[i] = &b[i];
    qsort(order, (size_t)nb, sizeof *order, cmp_size_desc);
    int np = 0;
    int64_t top = 0;
    for (int i = 0; i < nb; i++) {
        Buf *x = order[i];
        /* the placed buffers live at the same time, by offset */
        int nc = 0;
        for (int j = 0; j < np; j++)
            if (placed[j]->first <= x->last && x->first <= placed[j]->last) placed[np + nc++] = placed[j];
        Buf **conf = placed + np;
        qsort(conf, (size_t)nc, sizeof *conf, cmp_offset);
        int64_t pos = 0;
        for (int j = 0; j < nc; j++) {
            if (conf[j]->offset - pos >= x->size) break;
            if (conf[j]->offset + conf[j]->size > pos) pos = conf[j]->offset + conf[j]->size;
        }
        x->offset = pos;
        if (pos + x->size > top) top = pos + x->size;
        placed[np++] = x;
    }
    free(order);
    free(placed);
    return top;
}

int pass_plan_memory(Graph *g) {
    Buf *b;
    int nb = collect_buffers(g, &b);
    int64_t naive = 0;
    for (int i = 0; i < nb; i++) naive += b[i].size;
    /* three strategies; keep the smallest arena (ties: the earlier one) */
    int64_t sizes[3] = {place(b, nb, 0), place(b, nb, 1), place_by_size(b, nb)};
    int best = 0;
    for (int k = 1; k < 3; k++)
        if (sizes[k] < sizes[best]) best = k;
    int64_t size = best == 2 ? place_by_size(b, nb) : place(b, nb, best);
    g->plan_strategy = best == 0 ? "first-fit" : best == 1 ? "best-fit" : "size-ordered";
    g->plan_sizes[0] = sizes[0];
    g->plan_sizes[1] = sizes[1];
    g->plan_sizes[2] = sizes[2];
    for (int i = 0; i < nb; i++) {
        if (b[i].scratch) b[i].node->scratch_offset = b[i].offset;
        else b[i].node->offset = b[i].offset;
    }
    free(b);
    g->arena_bytes = size;
    g->naive_bytes = naive;
    return plan_validate(g);
}

int plan_validate(const Graph *g) {
    /* rebuild the interval list from the nodes and check every live pair */
    int n = g->n_nodes;
    int64_t *lo = ldm_xmalloc((size_t)(2 * n + 1) * sizeof *lo), *hi = ldm_xmalloc((size_t)(2 * n + 1) * sizeof *hi);
    int *t0 = ldm_xmalloc((size_t)(2 * n + 1) * sizeof *t0), *t1 = ldm_xmalloc((size_t)(2 * n + 1) * sizeof *t1);
    const Node **who = ldm_xmalloc((size_t)(2 * n + 1) * sizeof *who);
    int nb = 0, rc = 0;
    for (int i = 0; i < n; i++) {
        const Node *x = g->nodes[i];
        if (owns_buffer(x)) {
            /* live from its first writer (itself, or a part written in place) */
            int start = i;
            for (int j = 0; j < i; j++)
                if (g->nodes[j]->storage == x) {
                    start = j;
                    break;
                }
            lo[nb] = x->offset, hi[nb] = x->offset + node_bytes(x), t0[nb] = start, t1[nb] = x->last_use, who[nb++] = x;
        }
        if (x->storage != x && x->op != OPK_RESHAPE &&
            (x->into_offset < 0 || x->into_offset + node_bytes(x) + 4 * x->out_gap * (x->shape[0] - 1) >
                                       node_bytes(x->storage))) {
            rc = ldm_fail("memory plan: node %%%d written into %%%d at +%lld runs past its end", x->id, x->storage->id,
                          (long long)x->into_offset);
            break;
        }
        if (x->scratch_bytes > 0) {
            lo[nb] = x->scratch_offset, hi[nb] = x->scratch_offset + x->scratch_bytes, t0[nb] = i, t1[nb] = i, who[nb++] = x;
        }
    }
    for (int i = 0; i < nb && rc == 0; i++) {
        if (lo[i] < 0 || hi[i] > g->arena_bytes || lo[i] % ALIGN) {
            rc = ldm_fail("memory plan: buffer of node %%%d [%lld, %lld) outside the arena or misaligned", who[i]->id,
                          (long long)lo[i], (long long)hi[i]);
            break;
        }
        for (int j = i + 1; j < nb; j++) {
            int overlap_time = t0[i] <= t1[j] && t0[j] <= t1[i];
            int overlap_mem = lo[i] < hi[j] && lo[j] < hi[i];
            if (overlap_time && overlap_mem) {
                rc = ldm_fail("memory plan: buffers of nodes %%%d and %%%d overlap while both are live", who[i]->id, who[j]->id);
                break;
            }
        }
    }
    free(lo);
    free(hi);
    free(t0);
    free(t1);
    free(who);
    return rc;
}

/* ---- totals --------------------------------------------------------------- */

int64_t graph_param_count(const Graph *g) {
    int64_t k = 0;
    for (int i = 0; i < g->n_weights; i++) k += node_numel(g->weights[i]);
    return k;
}

double graph_flops(const Graph *g) {
    double f = 0;
    for (int i = 0; i < g->n_nodes; i++) f += node_flops(g->nodes[i]);
    return f;
}
