/*
 * plan.c - the static memory plan and its validator.
 *
 * The plan is one table (Graph.plan): a row per buffer of the arena (the
 * result of every storage root, and the scratch workspace of every node
 * whose kernel needs one) with its offset, size and the schedule positions
 * between which it is live. A result buffer is born when its first writer
 * runs (the node itself, or a convolution writing its part of a
 * concatenation in place) and dies after the last node that reads it
 * (outputs live to the end); a scratch workspace lives only while its node
 * runs. Offsets are assigned by three strategies, each scanning the
 * buffers: first fit and best fit in schedule order (each new buffer goes
 * to the lowest / the smallest gap among the live ones that fits), and
 * largest first; the smallest arena wins. The dump, the SVG and codegen
 * read the table; plan_validate() derives liveness again from the schedule
 * and proves that no two buffers live at the same time overlap.
 */
#include <stdlib.h>
#include <string.h>

#include "ldmc.h"

#define ALIGN 64

static int64_t align_up(int64_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

/* Does node n own an arena buffer? (inputs and weights live outside) */
static int owns_buffer(const Node *n) { return n->storage == n && n->op != OPK_INPUT && n->op != OPK_WEIGHT; }

/* Liveness of every storage root from the schedule: first[id] = position
 * of its first writer, last[id] = position of its last reader (n_nodes for
 * an output). Arrays indexed by node id (next_id entries). */
static void liveness(const Graph *g, int *first, int *last) {
    for (int i = 0; i < g->n_nodes; i++) first[g->nodes[i]->id] = last[g->nodes[i]->id] = i;
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = g->nodes[i];
        if (first[n->storage->id] > i) first[n->storage->id] = i;
        for (int s = 0; s < n->nsrc; s++) {
            const Node *st = n->src[s]->storage;
            if (last[st->id] < i) last[st->id] = i;
        }
    }
    for (int i = 0; i < g->n_outputs; i++) last[g->outputs[i].node->storage->id] = g->n_nodes;
}

/* order of the table: by first use, then schedule position, result first */
static int cmp_first(const void *x, const void *y) {
    const PlanBuf *a = x, *b = y;
    if (a->first != b->first) return a->first - b->first;
    if (a->node->id != b->node->id) return a->node->id - b->node->id;
    return a->scratch - b->scratch;
}

static int collect_buffers(Graph *g, PlanBuf **out) {
    int *first = ldm_xmalloc((size_t)(g->next_id + 1) * sizeof *first);
    int *last = ldm_xmalloc((size_t)(g->next_id + 1) * sizeof *last);
    liveness(g, first, last);
    PlanBuf *b = ldm_xcalloc((size_t)(2 * g->n_nodes + 1), sizeof *b);
    int nb = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        if (owns_buffer(n)) b[nb++] = (PlanBuf){n, 0, 0, align_up(node_bytes(n)), first[n->id], last[n->id]};
        if (n->scratch_bytes > 0) b[nb++] = (PlanBuf){n, 1, 0, align_up(n->scratch_bytes), i, i};
    }
    free(first);
    free(last);
    qsort(b, (size_t)nb, sizeof *b, cmp_first);
    *out = b;
    return nb;
}

/* Place buffers in schedule order; best != 0 picks the smallest fitting gap. */
static int64_t place(PlanBuf *b, int nb, int best) {
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
    const PlanBuf *a = *(PlanBuf *const *)x, *b = *(PlanBuf *const *)y;
    if (a->size != b->size) return a->size < b->size ? 1 : -1;
    return a->first - b->first;
}

static int cmp_offset(const void *x, const void *y) {
    const PlanBuf *a = *(PlanBuf *const *)x, *b = *(PlanBuf *const *)y;
    return a->offset < b->offset ? -1 : a->offset > b->offset;
}

static int64_t place_by_size(PlanBuf *b, int nb) {
    PlanBuf **order = ldm_xmalloc((size_t)(nb + 1) * sizeof *order);
    PlanBuf **placed = ldm_xmalloc((size_t)(2 * nb + 1) * sizeof *placed);
    for (int i = 0; i < nb; i++) order[i] = &b[i];
    qsort(order, (size_t)nb, sizeof *order, cmp_size_desc);
    int np = 0;
    int64_t top = 0;
    for (int i = 0; i < nb; i++) {
        PlanBuf *x = order[i];
        /* the placed buffers live at the same time, by offset */
        int nc = 0;
        for (int j = 0; j < np; j++)
            if (placed[j]->first <= x->last && x->first <= placed[j]->last) placed[np + nc++] = placed[j];
        PlanBuf **conf = placed + np;
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
    PlanBuf *b;
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
    memcpy(g->plan_sizes, sizes, sizeof sizes);
    for (int i = 0; i < g->n_nodes; i++) g->nodes[i]->buf = g->nodes[i]->scratch_buf = -1;
    for (int i = 0; i < nb; i++) {
        if (b[i].scratch) b[i].node->scratch_buf = i;
        else b[i].node->buf = i;
    }
    free(g->plan);
    g->plan = b;
    g->n_plan = nb;
    g->arena_bytes = size;
    g->naive_bytes = naive;
    return plan_validate(g);
}

int64_t plan_offset(const Graph *g, const Node *n) {
    const Node *st = n->storage;
    return g->plan[st->buf].offset + (st == n ? 0 : n->into_offset);
}

int plan_validate(const Graph *g) {
    int *first = ldm_xmalloc((size_t)(g->next_id + 1) * sizeof *first);
    int *last = ldm_xmalloc((size_t)(g->next_id + 1) * sizeof *last);
    int *seen = ldm_xcalloc((size_t)(2 * g->n_plan + 1), sizeof *seen);
    liveness(g, first, last);
    int rc = 0;
    /* every buffer the schedule needs is in the table and covers its life */
    for (int i = 0; i < g->n_nodes && rc == 0; i++) {
        const Node *x = g->nodes[i];
        if (owns_buffer(x)) {
            if (x->buf < 0 || x->buf >= g->n_plan || g->plan[x->buf].node != x || g->plan[x->buf].scratch) {
                rc = ldm_fail("memory plan: node %%%d has no buffer in the plan", x->id);
                break;
            }
            const PlanBuf *p = &g->plan[x->buf];
            seen[x->buf]++;
            if (p->size < node_bytes(x) || p->first > first[x->id] || p->last < last[x->id])
                rc = ldm_fail("memory plan: buffer of node %%%d (%lld bytes, steps %d..%d) does not cover its value "
                              "(%lld bytes, steps %d..%d)",
                              x->id, (long long)p->size, p->first, p->last, (long long)node_bytes(x), first[x->id],
                              last[x->id]);
        }
        if (rc == 0 && x->storage != x && x->op != OPK_RESHAPE &&
            (x->into_offset < 0 || x->into_offset + node_bytes(x) + 4 * x->out_gap * (x->shape[0] - 1) >
                                       node_bytes(x->storage)))
            rc = ldm_fail("memory plan: node %%%d written into %%%d at +%lld runs past its end", x->id, x->storage->id,
                          (long long)x->into_offset);
        if (rc == 0 && x->scratch_bytes > 0) {
            const PlanBuf *p = x->scratch_buf >= 0 && x->scratch_buf < g->n_plan ? &g->plan[x->scratch_buf] : NULL;
            if (!p || p->node != x || !p->scratch || p->size < x->scratch_bytes || p->first > i || p->last < i)
                rc = ldm_fail("memory plan: the scratch workspace of node %%%d (%lld bytes at step %d) is not planned",
                              x->id, (long long)x->scratch_bytes, i);
            else seen[x->scratch_buf]++;
        }
    }
    for (int i = 0; i < g->n_plan && rc == 0; i++)
        if (seen[i] != 1) rc = ldm_fail("memory plan: row %d (node %%%d) belongs to no value of the graph", i, g->plan[i].node->id);
    /* placement: aligned, inside the arena, no two live buffers overlap */
    for (int i = 0; i < g->n_plan && rc == 0; i++) {
        const PlanBuf *a = &g->plan[i];
        if (a->offset < 0 || a->offset + a->size > g->arena_bytes || a->offset % ALIGN) {
            rc = ldm_fail("memory plan: buffer of node %%%d [%lld, %lld) outside the arena or misaligned", a->node->id,
                          (long long)a->offset, (long long)(a->offset + a->size));
            break;
        }
        for (int j = i + 1; j < g->n_plan; j++) {
            const PlanBuf *b = &g->plan[j];
            if (a->first <= b->last && b->first <= a->last && a->offset < b->offset + b->size &&
                b->offset < a->offset + a->size) {
                rc = ldm_fail("memory plan: buffers of nodes %%%d and %%%d overlap while both are live", a->node->id,
                              b->node->id);
                break;
            }
        }
    }
    free(first);
    free(last);
    free(seen);
    return rc;
}
