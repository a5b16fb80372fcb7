/*
 * dce.c - dead-code elimination: drop every node that no graph output
 * reads, directly or through other nodes (inputs stay: they are the
 * interface). The first pass after the graph is built; node ids are kept
 * as built, so a dump before and after names the same nodes alike.
 */
#include "ldmc.h"

void pass_dead_code(Graph *g) { graph_sweep(g); }
