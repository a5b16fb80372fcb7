/*
 * dump.c - deterministic text dumps of the graph and of the memory plan,
 * and Graphviz output.
 *
 * One node a line:
 *   %12 conv2d %11 input_blocks.0.0.weight input_blocks.0.0.bias  stride=1 pad=1,1,1,1 algo=winograd
 *       -> f32[2,32,16,16]  @unet.graph:62 Conv > nn.graph:12
 * (on one line): the node's id (given when it was built, never changed by
 * a pass), its op chain, its operands (weights by checkpoint key without
 * the graph prefix, other values by id), its parameters, its result, and
 * its provenance: the def calls that built it and the line of the op.
 * Weight nodes themselves are listed in the totals only. The memory plan
 * dump prints the plan table row by row.
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
        fprintf(fp, "  stride=%d pad=%d,%d,%d,%d", n->stride[0], n->pad[0], n->pad[1], n->pad[2], n->pad[3]);
        if (n->algo >= 0) fprintf(fp, " algo=%s", algos[n->algo]); /* chosen by the select pass */
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

void dump_graph(const Graph *g, FILE *fp) { dump_graph_after(g, NULL, fp); }

void dump_graph_after(const Graph *g, const char *pass, FILE *fp) {
    char b[128];
    fprintf(fp, "graph %s  prefix \"%s\"", g->name, g->prefix);
    if (pass) fprintf(fp, "  (after %s)", pass);
    fprintf(fp, "\n");
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
        if (n->prov) fprintf(fp, "  @%s\n", n->prov);
        else fprintf(fp, "  @%s:%d\n", base_name(&n->loc), n->loc.line);
    }
    for (int i = 0; i < g->n_outputs; i++)
        fprintf(fp, "output %s = %%%d\n", g->outputs[i].name, g->outputs[i].node->id);
    /* counted from the nodes: the weight table exists only once a pass swept the graph */
    int ops = 0, weights = 0;
    int64_t params = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *n = g->nodes[i];
        ops += n->op != OPK_WEIGHT && n->op != OPK_INPUT;
        if (n->op == OPK_WEIGHT) weights++, params += node_numel(n);
    }
    fprintf(fp, "# nodes %d (ops %d, weights %d, inputs %d)  params %lld  flops %.6g GFLOP\n", g->n_nodes, ops, weights,
            g->n_inputs, (long long)params, graph_flops(g) / 1e9);
    if (g->n_unused) {
        /* what the checkpoint holds beyond what is read (unused_weight) */
        fprintf(fp, "# present in the checkpoint but unused: %d tensors, %lld params (%lld held in all)\n", g->n_unused,
                (long long)graph_unused_count(g), (long long)(params + graph_unused_count(g)));
        for (int i = 0; i < g->n_unused; i++) {
            Node tmp = {0};
            tmp.ndim = g->unused[i].ndim;
            memcpy(tmp.shape, g->unused[i].shape, sizeof tmp.shape);
            fprintf(fp, "unused %s  %s\n", g->unused[i].name, shape_str(&tmp, b, sizeof b));
        }
    }
    if (g->arena_bytes)
        fprintf(fp, "# arena %lld bytes (%.1f MiB), naive sum of buffers %lld bytes (%.1f MiB)\n",
                (long long)g->arena_bytes, (double)g->arena_bytes / 1048576.0, (long long)g->naive_bytes,
                (double)g->naive_bytes / 1048576.0);
}

/* Schedule positions where input n is live: its own position, and the last
 * node that reads it (or a view of it); the graph's end when an output is
 * (a view of) it. */
static void input_live(const Graph *g, const Node *n, int *first, int *last) {
    *first = *last = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const Node *v = g->nodes[i];
        if (v == n) *first = i;
        for (int k = 0; k < v->nsrc; k++)
            if (v->src[k]->storage == n && i > *last) *last = i;
    }
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i].node->storage == n) *last = g->n_nodes;
    if (*last < *first) *last = *first;
}

void dump_plan(const Graph *g, FILE *fp) {
    char b[128], kn[64];
    fprintf(fp, "plan %s  arena %lld bytes  naive %lld bytes  strategy %s (first-fit %lld, best-fit %lld, size-ordered %lld)\n",
            g->name, (long long)g->arena_bytes, (long long)g->naive_bytes, g->plan_strategy ? g->plan_strategy : "-",
            (long long)g->plan_sizes[0], (long long)g->plan_sizes[1], (long long)g->plan_sizes[2]);
    fprintf(fp, "# node        op                  offset        bytes   live\n");
    for (int i = 0; i < g->n_plan; i++) {
        const PlanBuf *p = &g->plan[i];
        const Node *n = p->node;
        node_kernel_name(n, kn, sizeof kn);
        fprintf(fp, "%%%-6d %-20s %12lld %12lld   %d..%d  %s\n", n->id, kn, (long long)p->offset, (long long)p->size,
                p->first, p->last, p->scratch ? "scratch" : shape_str(n, b, sizeof b));
        /* the values kept inside this buffer: views and parts written in place */
        for (int k = 0; k < g->n_nodes && !p->scratch; k++) {
            const Node *v = g->nodes[k];
            if (v == n || v->storage != n || v->op == OPK_INPUT || v->op == OPK_WEIGHT) continue;
            node_kernel_name(v, kn, sizeof kn);
            if (v->op == OPK_RESHAPE) fprintf(fp, "%%%-6d %-20s view of %%%d\n", v->id, kn, n->id);
            else
                fprintf(fp, "%%%-6d %-20s %12lld %12lld   part of %%%d, samples %lld floats apart\n", v->id, kn,
                        (long long)(p->offset + v->into_offset), (long long)node_bytes(v), n->id,
                        (long long)(node_numel(v) / v->shape[0] + v->out_gap));
        }
    }
    /* the inputs: the caller's buffers, live from the start until their last
     * reader (e.g. a controlled UNet's ControlNet residuals, read by the
     * output blocks near the end) */
    if (g->n_inputs) fprintf(fp, "# inputs (the caller's buffers, outside the arena)\n");
    for (int i = 0; i < g->n_inputs; i++) {
        const Node *n = g->inputs[i];
        int first, last;
        input_live(g, n, &first, &last);
        fprintf(fp, "%%%-6d %-20s %12s %12lld   %d..%d  %s %s\n", n->id, "input", "-", (long long)node_bytes(n), first,
                last, n->name, shape_str(n, b, sizeof b));
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
    const double W = 1200, left = 80, top = 40, right = 20, bottom = 40;
    const double row = g->n_inputs > 40 ? 2 : 4, inputs_h = g->n_inputs ? 30 + row * g->n_inputs : 0;
    const double H = 600 + inputs_h;
    int steps = g->n_nodes + 1;
    double sx = (W - left - right) / steps, sy = (H - inputs_h - top - bottom) / (double)(g->arena_bytes ? g->arena_bytes : 1);
    fprintf(fp, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"monospace\" font-size=\"12\">\n", W, H);
    fprintf(fp, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(fp, "<text x=\"%.0f\" y=\"20\">%s: arena %.1f MiB (%s; naive sum %.1f MiB) over %d steps</text>\n", left, g->name,
            (double)g->arena_bytes / 1048576.0, g->plan_strategy ? g->plan_strategy : "-", (double)g->naive_bytes / 1048576.0,
            g->n_nodes);
    for (int i = 0; i < g->n_plan; i++) {
        const PlanBuf *p = &g->plan[i];
        char kn[64];
        node_kernel_name(p->node, kn, sizeof kn);
        double h = sy * (double)p->size > 0.5 ? sy * (double)p->size : 0.5;
        if (!p->scratch)
            fprintf(fp, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"#4a90d9\" fill-opacity=\"0.7\" stroke=\"#1d4f80\" stroke-width=\"0.3\"><title>%%%d %s %lld bytes at %lld, steps %d..%d</title></rect>\n",
                    left + sx * p->first, top + sy * (double)p->offset, sx * (p->last - p->first + 1), h, p->node->id, kn,
                    (long long)p->size, (long long)p->offset, p->first, p->last);
        else
            fprintf(fp, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"#e8913a\" fill-opacity=\"0.8\"><title>%%%d %s scratch %lld bytes at %lld, step %d</title></rect>\n",
                    left + sx * p->first, top + sy * (double)p->offset, sx > 1 ? sx : 1, h, p->node->id, kn,
                    (long long)p->size, (long long)p->offset, p->first);
    }
    const double yb = H - inputs_h - bottom; /* the arena's bottom */
    fprintf(fp, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", left, top, left, yb);
    fprintf(fp, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", left, yb, W - right, yb);
    fprintf(fp, "<text x=\"5\" y=\"%.0f\">0</text><text x=\"5\" y=\"%.0f\">%.0fM</text>\n", top + 4, yb,
            (double)g->arena_bytes / 1048576.0);
    fprintf(fp, "<text x=\"%.0f\" y=\"%.0f\">schedule step (node) &#8594;  blue: tensors, orange: scratch; y: arena offset</text>\n",
            left, yb + 28);
    /* the inputs (outside the arena): one row each over its live steps */
    if (g->n_inputs) {
        int64_t total = 0;
        for (int i = 0; i < g->n_inputs; i++) total += node_bytes(g->inputs[i]);
        fprintf(fp, "<text x=\"5\" y=\"%.0f\">inputs (caller's buffers, %.1f MiB): live steps</text>\n", yb + 50,
                (double)total / 1048576.0);
        for (int i = 0; i < g->n_inputs; i++) {
            const Node *n = g->inputs[i];
            int first, last;
            input_live(g, n, &first, &last);
            fprintf(fp, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"#7a7a7a\"><title>input %s %lld bytes, steps %d..%d</title></rect>\n",
                    left + sx * first, yb + 56 + row * i, sx * (last - first + 1), row * 0.8, n->name,
                    (long long)node_bytes(n), first, last);
        }
    }
    fprintf(fp, "</svg>\n");
}
