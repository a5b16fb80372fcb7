/*
 * dce.c - dead-code elimination: drop every node that no graph output
 * reads, directly or through other nodes (inputs stay: they are the
 * interface). The first pass after the graph is built; node ids are kept
 * as built, so a dump before and after names the same nodes alike.
 */
#include <stdlib.h>
#include <string.h>

#include "ldmc.h"
#include "util.h"

/* The weights that will be dropped are recorded (g->unused_weights): a
 * graph may declare a checkpoint tensor that its outputs do not need (SDXL
 * reads CLIP ViT-L's hidden layer 11: its last layer and final LayerNorm
 * are in the file but unused), and --stats / the dump say so. */
void pass_dead_code(Graph *g) {
    for (int i = 0; i < g->n_nodes; i++) g->nodes[i]->live = 0;
    for (int i = 0; i < g->n_outputs; i++) g->outputs[i].node->live = 1;
    for (int i = 0; i < g->n_inputs; i++) g->inputs[i]->live = 1;
    for (int i = g->n_nodes - 1; i >= 0; i--) {
        Node *n = g->nodes[i];
        if (!n->live) continue;
        for (int s = 0; s < n->nsrc; s++) n->src[s]->live = 1;
    }
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = g->nodes[i];
        if (n->op != OPK_WEIGHT || n->live) continue;
        char *prev = g->unused_weights;
        g->unused_weights = prev ? ldm_xasprintf("%s, %s", prev, n->name) : ldm_xstrdup(n->name);
        free(prev);
        g->n_unused_weights++;
        g->unused_params += node_numel(n);
    }
    graph_sweep(g);
}
