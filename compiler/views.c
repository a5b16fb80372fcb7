/*
 * views.c - storage of values that need no buffer of their own:
 *   - a reshape is a view of its operand's storage;
 *   - the convolution computing the last part of a channel concatenation
 *     writes straight into the concatenated buffer (its part of each
 *     sample), so the concat copies only the other parts.
 * Sets Node.storage, into_offset and out_gap; the memory plan then gives a
 * buffer only to storage roots.
 */
#include "ldmc.h"

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
    if (graph_is_output(g, p)) return;
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

