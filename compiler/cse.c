/*
 * cse.c - common-subexpression elimination: a node that computes the same
 * op, with the same parameters, on the same operands as an earlier node is
 * replaced by that node everywhere, and swept. In SD's UNet this merges the
 * time embedding's SiLU, written once per ResBlock (22 times), into one.
 *
 * Two nodes are the same when their op, dtype, shape, operands (after
 * earlier merges) and every op parameter agree; inputs are never merged
 * (each is its own interface), weights are one node per checkpoint key
 * already (eval.c). The earlier node is kept, so schedule order stays valid.
 * Runs before fusion: fusion fields are still empty.
 */
#include <stdlib.h>
#include <string.h>

#include "ldmc.h"

/* Same op parameters (every field of Node that an op reads). */
static int same_params(const Node *a, const Node *b) {
    return a->op == b->op && a->dtype == b->dtype && a->ndim == b->ndim && a->nsrc == b->nsrc &&
           !memcmp(a->shape, b->shape, sizeof a->shape) && !memcmp(a->dyn, b->dyn, sizeof a->dyn) && !memcmp(a->stride, b->stride, sizeof a->stride) &&
           !memcmp(a->pad, b->pad, sizeof a->pad) && a->groups == b->groups && a->heads == b->heads &&
           a->causal == b->causal && a->trans_b == b->trans_b && a->axis == b->axis && a->factor == b->factor &&
           !memcmp(a->perm, b->perm, sizeof a->perm) && a->start == b->start && a->end == b->end &&
           a->eps == b->eps && a->alpha == b->alpha && a->beta == b->beta && a->max_period == b->max_period &&
           !memcmp(a->src, b->src, sizeof a->src);
}

static uint64_t node_hash(const Node *n) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)n->op;
    for (int s = 0; s < n->nsrc; s++) h = (h ^ (uint64_t)(uintptr_t)n->src[s]) * 1099511628211ull;
    for (int d = 0; d < n->ndim; d++) h = (h ^ (uint64_t)n->shape[d]) * 1099511628211ull;
    return h;
}

void pass_cse(Graph *g) {
    /* open addressing over the nodes seen so far, keyed by op, operands, shape */
    size_t cap = 16;
    while (cap < 2 * (size_t)g->n_nodes + 2) cap *= 2;
    Node **table = ldm_xcalloc(cap, sizeof *table);
    int merged = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        Node *n = g->nodes[i];
        /* operands first: a merged operand has been replaced already */
        if (n->op == OPK_INPUT || n->op == OPK_WEIGHT) continue;
        size_t k = (size_t)node_hash(n) & (cap - 1);
        Node *same = NULL;
        for (; table[k]; k = (k + 1) & (cap - 1))
            if (same_params(table[k], n)) {
                same = table[k];
                break;
            }
        if (same) {
            graph_replace_uses(g, n, same);
            merged++;
        } else {
            table[k] = n;
        }
    }
    free(table);
    if (merged) graph_sweep(g);
}
