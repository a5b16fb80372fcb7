/*
 * dump.c - deterministic text dumps of the graph and of the memory plan,
 * and Graphviz output.
 *
 * One node a line:
 *   %12 conv2d  %11 input_blocks.0.0.weight input_blocks.0.0.bias  stride=1 pad=1,1,1,1  -> f32[2,32,16,16]  @unet.graph:41
 * Weight operands are shown by their checkpoint key (without the graph
 * prefix), other operands by their node id. Weight nodes themselves are
 * listed in the totals only.
 */
#include <string.h>

#include "ldmc.h"

static const char *dtype_name(DType d) { return d == DT_I32 ? "i32" : "f32"; }

/* Checkpoint key without the graph's prefix. */
static const char *short_key(const Graph *g, const Node *w) {
    size_t n = strlen(g->prefix);
    return strncmp(w->name, g->prefix, n) == 0 ? w->name + n : w->name;
}

static void print_operand(const Graph *g, const Node *s, FILE *fp) {
    if (s->op == OPK_WEIGHT) fprintf(fp, " %s", short_key(g, s));
    else fprintf(fp, " %%%d", s->id);
}

/* Op parameters as "k=v" words. */
static void print_params(const Node *n, FILE *fp) {
    switch (n->op) {
    case OPK_CONV2D: {
        static const char *algos[] = {"im2col", "pointwise", "winograd", "direct"};
        fprintf(fp, "  stride=%d pad=%d,%d,%d,%d algo=%s", n->stride[0], n->pad[0], n->pad[1], n->pad[2], n->pad[3],
                algos[n->algo]);
        break;
    }
    case OPK_GROUP_NORM: fprintf(fp, "  groups=%d eps=%g", n->groups, n->eps); break;
    case OPK_LAYER_NORM: fprintf(fp, "  eps=%g", n->eps); break;
    case OPK_ATTENTION: fprintf(fp, "  heads=%d scale=%.9g%s", n->heads, n->alpha, n->causal ? " causal" : ""); break;
    case OPK_MATMUL: if (n->trans_b) fprintf(fp, "  trans_b"); break;
    case OPK_UPSAMPLE: fprintf(fp, "  factor=%d", n->factor); break;
    case OPK_SCALE: fprintf(fp, "  alpha=%.9g beta=%.9g", n->alpha, n->beta); break;
    case OPK_CONCAT: fprintf(fp, "  axis=%d", n->axis); break;
    case OPK_SLICE: fprintf(fp, "  axis=%d start=%lld end=%lld", n->axis, (long long)n->start, (long long)n->end); break;
    case OPK_TIMESTEP_EMB: fprintf(fp, "  dim=%lld max_period=%g", (long long)n->shape[1], n->max_period); break;
    case OPK_PERMUTE:
        fprintf(fp, "  perm=");
        for (int i = 0; i < n->ndim; i++) fprintf(fp, "%s%d", i ? "," : "", n->perm[i]);
        break;
    default: break;
    }
}

static const char *base_name(const SrcLoc *l) {
    if (!l->file) return "<builtin>";
    const char *s = strrchr(l->file->path, '/');
    return s ? s + 1 : l->file->path;
}

void dump_graph(const Graph *g, FILE *fp) {
    char b[128];
    fprintf(fp, "graph %s  prefix \"%s\"\n", g->name, g->prefix);
    for (int k = 0; k < g->n_extents; k++) /* run-time extents: shapes show their dims as NAME<=MAX */
        fprintf(fp, "extent %s<=%lld%s%.0lld\n", g->extents[k].name, (long long)g->extents[k].max,
                g->extents[k].step > 1 ? " step " : "", g->extents[k].step > 1 ? (long long)g->extents[k].step : 0ll);
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = g->nodes[i];
        if (n->op == OPK_WEIGHT) continue;
        char kn[64];
        fprintf(fp, "%%%d %s", n->id, node_kernel_name(n, kn, sizeof kn));
        if (n->op == OPK_INPUT) fprintf(fp, " %s", n->name);
        for (int s = 0; s < n->nsrc; s++) print_operand(g, n->src[s], fp);
        print_params(n, fp);
        fprintf(fp, "  -> %s%s", dtype_name(n->dtype), shape_str(n, b, sizeof b));
        if (n->fused) fprintf(fp, "  [fuses %s]", n->fused);
        if (n->storage != n && n->op == OPK_RESHAPE) fprintf(fp, " (view of %%%d)", n->storage->id);
        else if (n->storage != n) fprintf(fp, " (written into %%%d at +%lld)", n->storage->id, (long long)n->into_offset);
        fprintf(fp, "  @%s:%d\n", base_name(&n->loc), n->loc.line);
    }
    for (int i = 0; i < g->n_outputs; i++)
        fprintf(fp, "output %s = %%%d\n", g->outputs[i].name, g->outputs[i].node->id);
    int ops = 0;
    for (int i = 0; i < g->n_nodes; i++) ops += g->nodes[i]->op != OPK_WEIGHT && g->nodes[i]->op != OPK_INPUT;
    fprintf(fp, "# nodes %d (ops %d, weights %d, inputs %d)  params %lld  flops %.6g GFLOP\n", g->n_nodes, ops,
            g->n_weights, g->n_inputs, (long long)graph_param_count(g), graph_flops(g) / 1e9);
    if (g->arena_bytes)
        fprintf(fp, "# arena %lld bytes (%.1f MiB), naive sum of buffers %lld bytes (%.1f MiB)\n",
                (long long)g->arena_bytes, (double)g->arena_bytes / 1048576.0, (long long)g->naive_bytes,
                (double)g->naive_bytes / 1048576.0);
}

/* The step that first writes n's buffer: n, or a part written in place. */
static int first_write(const Graph *g, const Node *n) {
    for (int i = 0; i < n->id; i++)
        if (g->nodes[i]->storage == n) return i;
    return n->id;
}

void dump_plan(const Graph *g, FILE *fp) {
    char b[128];
    fprintf(fp, "plan %s  arena %lld bytes  naive %lld bytes  strategy %s (first-fit %lld, best-fit %lld, size-ordered %lld)\n",
            g->name, (long long)g->arena_bytes, (long long)g->naive_bytes, g->plan_strategy ? g->plan_strategy : "-",
            (long long)g->plan_sizes[0], (long long)g->plan_sizes[1], (long long)g->plan_sizes[2]);
    fprintf(fp, "# node        op                  offset        bytes   live\n");
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = g->nodes[i];
        if (n->op == OPK_WEIGHT || n->op == OPK_INPUT) continue;
        char kn[64];
        node_kernel_name(n, kn, sizeof kn);
        if (n->storage == n)
            fprintf(fp, "%%%-6d %-20s %12lld %12lld   %d..%d  %s\n", n->id, kn, (long long)n->offset,
                    (long long)node_bytes(n), first_write(g, n), n->last_use, shape_str(n, b, sizeof b));
        else if (n->op == OPK_RESHAPE)
            fprintf(fp, "%%%-6d %-20s view of %%%d\n", n->id, kn, n->storage->id);
        else
            fprintf(fp, "%%%-6d %-20s %12lld %12lld   part of %%%d, samples %lld floats apart\n", n->id, kn,
                    (long long)(n->storage->offset + n->into_offset), (long long)node_bytes(n), n->storage->id,
                    (long long)(node_numel(n) / n->shape[0] + n->out_gap));
        if (n->scratch_bytes)
            fprintf(fp, "%%%-6d %-20s %12lld %12lld   %d..%d  scratch\n", n->id, kn,
                    (long long)n->scratch_offset, (long long)n->scratch_bytes, n->id, n->id);
    }
}

void dump_dot(const Graph *g, FILE *fp) {
    char b[128];
    fprintf(fp, "digraph \"%s\" {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n", g->name);
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = g->nodes[i];
        if (n->op == OPK_WEIGHT) continue;
        fprintf(fp, "  n%d [label=\"%%%d %s%s%s\\n%s\\n%s:%d\"%s];\n", n->id, n->id, op_names[n->op],
                n->op == OPK_INPUT ? " " : "", n->op == OPK_INPUT ? n->name : "", shape_str(n, b, sizeof b),
                base_name(&n->loc), n->loc.line, n->op == OPK_INPUT ? ", style=filled, fillcolor=lightblue" : "");
        for (int s = 0; s < n->nsrc; s++)
            if (n->src[s]->op != OPK_WEIGHT) fprintf(fp, "  n%d -> n%d;\n", n->src[s]->id, n->id);
    }
    for (int i = 0; i < g->n_outputs; i++) {
        fprintf(fp, "  out%d [label=\"output %s\", style=filled, fillcolor=lightgreen];\n", i, g->outputs[i].name);
        fprintf(fp, "  n%d -> out%d;\n", g->outputs[i].node->id, i);
    }
    fprintf(fp, "}\n");
}

void dump_memory_svg(const Graph *g, FILE *fp) {
    const double W = 1200, H = 600, left = 80, top = 40, right = 20, bottom = 40;
    int steps = g->n_nodes + 1;
    double sx = (W - left - right) / steps, sy = (H - top - bottom) / (double)(g->arena_bytes ? g->arena_bytes : 1);
    fprintf(fp, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"monospace\" font-size=\"12\">\n", W, H);
    fprintf(fp, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(fp, "<text x=\"%.0f\" y=\"20\">%s: arena %.1f MiB (%s; naive sum %.1f MiB) over %d steps</text>\n", left, g->name,
            (double)g->arena_bytes / 1048576.0, g->plan_strategy ? g->plan_strategy : "-", (double)g->naive_bytes / 1048576.0,
            g->n_nodes);
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = g->nodes[i];
        char kn[64];
        node_kernel_name(n, kn, sizeof kn);
        if (n->storage == n && n->op != OPK_INPUT && n->op != OPK_WEIGHT)
            fprintf(fp, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"#4a90d9\" fill-opacity=\"0.7\" stroke=\"#1d4f80\" stroke-width=\"0.3\"><title>%%%d %s %lld bytes at %lld, steps %d..%d</title></rect>\n",
                    left + sx * first_write(g, n), top + sy * (double)n->offset, sx * (n->last_use - first_write(g, n) + 1),
                    sy * (double)node_bytes(n) > 0.5 ? sy * (double)node_bytes(n) : 0.5, n->id, kn, (long long)node_bytes(n),
                    (long long)n->offset, first_write(g, n), n->last_use);
        if (n->scratch_bytes)
            fprintf(fp, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"#e8913a\" fill-opacity=\"0.8\"><title>%%%d %s scratch %lld bytes at %lld</title></rect>\n",
                    left + sx * n->id, top + sy * (double)n->scratch_offset, sx > 1 ? sx : 1,
                    sy * (double)n->scratch_bytes > 0.5 ? sy * (double)n->scratch_bytes : 0.5, n->id, kn,
                    (long long)n->scratch_bytes, (long long)n->scratch_offset);
    }
    fprintf(fp, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", left, top, left, H - bottom);
    fprintf(fp, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", left, H - bottom, W - right, H - bottom);
    fprintf(fp, "<text x=\"5\" y=\"%.0f\">0</text><text x=\"5\" y=\"%.0f\">%.0fM</text>\n", top + 4, H - bottom,
            (double)g->arena_bytes / 1048576.0);
    fprintf(fp, "<text x=\"%.0f\" y=\"%.0f\">schedule step (node) &#8594;  blue: tensors, orange: scratch; y: arena offset</text>\n",
            left, H - 12);
    fprintf(fp, "</svg>\n");
}
