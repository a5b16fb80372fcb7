/*
 * graph.c - the graph IR: nodes, shape inference and per-op cost.
 *
 * Builders (eval.c) create a node, fill its sources and op parameters and
 * call node_infer(), which checks the operands and computes the result
 * shape. Nothing is computed here: the graph only describes the program.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldmc.h"

const char *const op_names[OPK_COUNT] = {
    [OPK_INPUT] = "input",
    [OPK_WEIGHT] = "weight",
    [OPK_CONV2D] = "conv2d",
    [OPK_LINEAR] = "linear",
    [OPK_MATMUL] = "matmul",
    [OPK_GROUP_NORM] = "group_norm",
    [OPK_LAYER_NORM] = "layer_norm",
    [OPK_SILU] = "silu",
    [OPK_GELU] = "gelu",
    [OPK_QUICK_GELU] = "quick_gelu",
    [OPK_SIGMOID] = "sigmoid",
    [OPK_RELU] = "relu",
    [OPK_TANH] = "tanh",
    [OPK_GEGLU] = "geglu",
    [OPK_SOFTMAX] = "softmax",
    [OPK_ATTENTION] = "attention",
    [OPK_UPSAMPLE] = "upsample_nearest",
    [OPK_AVGPOOL] = "avg_pool2d",
    [OPK_ADD] = "add",
    [OPK_SUB] = "sub",
    [OPK_MUL] = "mul",
    [OPK_SCALE] = "scale",
    [OPK_CONCAT] = "concat",
    [OPK_TIMESTEP_EMB] = "timestep_embedding",
    [OPK_EMBEDDING] = "embedding",
    [OPK_RESHAPE] = "reshape",
    [OPK_PERMUTE] = "permute",
    [OPK_SLICE] = "slice",
    [OPK_VQ_INDEX] = "vq_index",
    [OPK_VQ_LOOKUP] = "vq_lookup",
    [OPK_TAKE_ARGMAX] = "take_argmax",
};

Graph *graph_new(const char *name) {
    Graph *g = ldm_xcalloc(1, sizeof *g);
    g->name = ldm_xstrdup(name);
    g->prefix = ldm_xstrdup("");
    return g;
}

void graph_free(Graph *g) {
    if (!g) return;
    for (int i = 0; i < g->n_nodes; i++) {
        free(g->nodes[i]->name);
        free(g->nodes[i]->scope);
        free(g->nodes[i]->fused);
        free(g->nodes[i]->prov);
        free(g->nodes[i]);
    }
    free(g->plan);
    for (int i = 0; i < g->n_outputs; i++) free(g->outputs[i].name);
    for (int i = 0; i < g->n_extents; i++) free(g->extents[i].name);
    free(g->extents);
    for (int i = 0; i < g->n_unused; i++) free(g->unused[i].name);
    free(g->unused);
    free(g->nodes);
    free(g->inputs);
    free(g->weights);
    free(g->outputs);
    free(g->name);
    free(g->prefix);
    free(g);
}

Node *graph_add(Graph *g, OpKind op, SrcLoc loc) {
    if (g->n_nodes == g->cap_nodes) {
        g->cap_nodes = g->cap_nodes ? 2 * g->cap_nodes : 256;
        g->nodes = ldm_xrealloc(g->nodes, (size_t)g->cap_nodes * sizeof *g->nodes);
    }
    Node *n = ldm_xcalloc(1, sizeof *n);
    n->id = g->next_id++;
    n->buf = n->scratch_buf = -1;
    n->algo = -1;
    n->op = op;
    n->loc = loc;
    n->dtype = DT_F32;
    n->storage = n;
    n->graph = g;
    g->nodes[g->n_nodes++] = n;
    return n;
}

int graph_add_extent(Graph *g, const char *name, int64_t max, int64_t step, SrcLoc loc) {
    g->extents = ldm_xrealloc(g->extents, (size_t)(g->n_extents + 1) * sizeof *g->extents);
    g->extents[g->n_extents] = (Extent){ldm_xstrdup(name), max, step, loc};
    return g->n_extents++;
}

int64_t node_dim_at(const Node *n, int d, const int64_t *val) {
    int k = n->dyn[d] - 1;
    if (k < 0 || !val) return n->shape[d];
    return n->shape[d] / n->graph->extents[k].max * val[k];
}

int node_is_dyn(const Node *n) {
    for (int d = 0; d < n->ndim; d++)
        if (n->dyn[d]) return 1;
    return 0;
}

int64_t node_numel(const Node *n) {
    int64_t k = 1;
    for (int i = 0; i < n->ndim; i++) k *= n->shape[i];
    return k;
}

int64_t node_bytes(const Node *n) { return node_numel(n) * 4; }

const char *shape_str(const Node *n, char *buf, size_t size) {
    size_t k = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < n->ndim && k < size; i++) {
        const char *sep = i ? "," : "";
        if (!n->dyn[i]) {
            k += (size_t)snprintf(buf + k, size - k, "%s%lld", sep, (long long)n->shape[i]);
            continue;
        }
        const Extent *e = n->graph ? &n->graph->extents[n->dyn[i] - 1] : NULL;
        int64_t coef = e ? n->shape[i] / e->max : 1;
        if (coef == 1) k += (size_t)snprintf(buf + k, size - k, "%s%s<=%lld", sep, e ? e->name : "?", (long long)n->shape[i]);
        else k += (size_t)snprintf(buf + k, size - k, "%s%lld*%s<=%lld", sep, (long long)coef, e->name, (long long)n->shape[i]);
    }
    if (k < size) snprintf(buf + k, size - k, "]");
    return buf;
}

/* ---- shape inference helpers ------------------------------------------ */

static void set_shape(Node *n, int ndim, const int64_t *shape) {
    n->ndim = ndim;
    memcpy(n->shape, shape, (size_t)ndim * sizeof *shape);
    memset(n->dyn, 0, sizeof n->dyn);
}

/* n gets the shape of x, run-time dims included. */
static void copy_shape(Node *n, const Node *x) {
    set_shape(n, x->ndim, x->shape);
    memcpy(n->dyn, x->dyn, sizeof n->dyn);
}

/* Dim i of a and dim j of b are the same size for every run-time value. */
static int same_dim(const Node *a, int i, const Node *b, int j) {
    return a->shape[i] == b->shape[j] && a->dyn[i] == b->dyn[j];
}

/* Refuse a run-time dim d of x where the op needs its value at compile
 * time ("linear: the features of [B<=2,T<=154,768] ... are a run-time
 * extent: a contracted dimension must be static"). */
static int static_dim(Node *n, const Node *x, int d, const char *what, const char *why) {
    char b[128];
    if (!x->dyn[d]) return 0;
    return diag_error(n->loc, "%s: dim %d of %s (%s) is run-time, but %s", op_names[n->op], d, shape_str(x, b, sizeof b),
                      what, why);
}

/* The run-time dims of x and y are of the same extents, each as often. */
static int same_extents(const Node *x, const Node *y) {
    int count[128] = {0};
    for (int d = 0; d < x->ndim; d++) count[x->dyn[d]]++;
    for (int d = 0; d < y->ndim; d++) count[y->dyn[d]]--;
    for (int k = 1; k < 128; k++)
        if (count[k]) return 0;
    return 1;
}

static int want_rank(Node *n, const Node *x, int rank, const char *what) {
    char b[128];
    if (x->ndim != rank)
        return diag_error(n->loc, "%s: %s must have rank %d, got %s", op_names[n->op], what, rank,
                          shape_str(x, b, sizeof b));
    return 0;
}

static int want_f32(Node *n, const Node *x, const char *what) {
    if (x->dtype != DT_F32) return diag_error(n->loc, "%s: %s must be f32", op_names[n->op], what);
    return 0;
}

static int want_vec(Node *n, const Node *v, int64_t len, const char *what) {
    char b[128];
    if (v->ndim != 1 || v->shape[0] != len)
        return diag_error(n->loc, "%s: %s must have shape [%lld], got %s", op_names[n->op], what,
                          (long long)len, shape_str(v, b, sizeof b));
    return want_f32(n, v, what);
}

/* numpy broadcasting of a and b into n. */
static int infer_broadcast(Node *n) {
    const Node *a = n->src[0], *b = n->src[1];
    char ba[128], bb[128];
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t shape[MAX_DIMS];
    int8_t dyn[MAX_DIMS] = {0};
    for (int i = 0; i < nd; i++) {
        int ia = a->ndim - nd + i, ib = b->ndim - nd + i;
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        int ka = ia >= 0 ? a->dyn[ia] : 0, kb = ib >= 0 ? b->dyn[ib] : 0;
        if ((ka || kb) && (ka != kb || da != db) && !(ka && !kb && db == 1) && !(kb && !ka && da == 1))
            return diag_error(n->loc, "%s: shapes %s and %s do not broadcast for every run-time value (dim %d)",
                              op_names[n->op], shape_str(a, ba, sizeof ba), shape_str(b, bb, sizeof bb), i);
        if (da != db && da != 1 && db != 1)
            return diag_error(n->loc, "%s: shapes %s and %s do not broadcast", op_names[n->op],
                              shape_str(a, ba, sizeof ba), shape_str(b, bb, sizeof bb));
        shape[i] = ka ? da : kb ? db : da == 1 ? db : da;
        dyn[i] = (int8_t)(ka ? ka : kb);
    }
    if (a->dtype != DT_F32 || b->dtype != DT_F32)
        return diag_error(n->loc, "%s: operands must be f32", op_names[n->op]);
    set_shape(n, nd, shape);
    memcpy(n->dyn, dyn, sizeof n->dyn);
    return 0;
}

static int infer_conv2d(Node *n) {
    const Node *x = n->src[0], *w = n->src[1];
    char bx[128], bw[128];
    if (want_rank(n, x, 4, "input") || want_rank(n, w, 4, "weight")) return -1;
    if (want_f32(n, x, "input") || want_f32(n, w, "weight")) return -1;
    if (static_dim(n, x, 1, "the channels", "a contracted dimension must be static") ||
        static_dim(n, x, 2, "the height", "only the batch of a convolution may be run-time") ||
        static_dim(n, x, 3, "the width", "only the batch of a convolution may be run-time"))
        return -1;
    if (x->shape[1] != w->shape[1])
        return diag_error(n->loc, "conv2d: input %s has %lld channels but weight %s expects %lld",
                          shape_str(x, bx, sizeof bx), (long long)x->shape[1],
                          shape_str(w, bw, sizeof bw), (long long)w->shape[1]);
    if (n->nsrc > 2 && want_vec(n, n->src[2], w->shape[0], "bias")) return -1;
    if (n->stride[0] < 1 || n->stride[1] < 1) return diag_error(n->loc, "conv2d: stride must be >= 1");
    for (int i = 0; i < 4; i++)
        if (n->pad[i] < 0) return diag_error(n->loc, "conv2d: padding must be >= 0");
    int64_t hp = x->shape[2] + n->pad[0] + n->pad[1], wp = x->shape[3] + n->pad[2] + n->pad[3];
    if (hp < w->shape[2] || wp < w->shape[3])
        return diag_error(n->loc, "conv2d: kernel %lldx%lld larger than padded input %lldx%lld",
                          (long long)w->shape[2], (long long)w->shape[3], (long long)hp, (long long)wp);
    int64_t s[4] = {x->shape[0], w->shape[0], (hp - w->shape[2]) / n->stride[0] + 1,
                    (wp - w->shape[3]) / n->stride[1] + 1};
    set_shape(n, 4, s);
    n->dyn[0] = x->dyn[0];
    return 0;
}

static int infer_linear(Node *n) {
    const Node *x = n->src[0], *w = n->src[1];
    char bx[128], bw[128];
    if (x->ndim < 1) return diag_error(n->loc, "linear: input must have rank >= 1");
    if (want_rank(n, w, 2, "weight")) return -1;
    if (want_f32(n, x, "input") || want_f32(n, w, "weight")) return -1;
    if (static_dim(n, x, x->ndim - 1, "the features", "a contracted dimension must be static")) return -1;
    if (x->shape[x->ndim - 1] != w->shape[1])
        return diag_error(n->loc, "linear: input %s has %lld features but weight %s expects %lld",
                          shape_str(x, bx, sizeof bx), (long long)x->shape[x->ndim - 1],
                          shape_str(w, bw, sizeof bw), (long long)w->shape[1]);
    if (n->nsrc > 2 && want_vec(n, n->src[2], w->shape[0], "bias")) return -1;
    copy_shape(n, x);
    n->shape[x->ndim - 1] = w->shape[0];
    return 0;
}

static int infer_matmul(Node *n) {
    const Node *a = n->src[0], *b = n->src[1];
    char ba[128], bb[128];
    if (a->ndim < 2 || a->ndim != b->ndim)
        return diag_error(n->loc, "matmul: operands must have the same rank >= 2, got %s and %s",
                          shape_str(a, ba, sizeof ba), shape_str(b, bb, sizeof bb));
    int r = a->ndim;
    if (want_f32(n, a, "a") || want_f32(n, b, "b")) return -1;
    for (int i = 0; i < r - 2; i++)
        if (!same_dim(a, i, b, i))
            return diag_error(n->loc, "matmul: batch dimensions differ: %s and %s",
                              shape_str(a, ba, sizeof ba), shape_str(b, bb, sizeof bb));
    if (static_dim(n, a, r - 1, "the inner dimension", "a contracted dimension must be static") ||
        static_dim(n, b, n->trans_b ? r - 1 : r - 2, "the inner dimension", "a contracted dimension must be static"))
        return -1;
    int64_t k = a->shape[r - 1];
    int64_t kb = n->trans_b ? b->shape[r - 1] : b->shape[r - 2];
    if (k != kb)
        return diag_error(n->loc, "matmul: inner dimensions differ: %s and %s%s",
                          shape_str(a, ba, sizeof ba), shape_str(b, bb, sizeof bb),
                          n->trans_b ? " (b transposed)" : "");
    copy_shape(n, a);
    n->shape[r - 1] = n->trans_b ? b->shape[r - 2] : b->shape[r - 1];
    n->dyn[r - 1] = n->trans_b ? b->dyn[r - 2] : b->dyn[r - 1];
    return 0;
}

static int infer_norm(Node *n) {
    const Node *x = n->src[0];
    char bx[128];
    if (want_f32(n, x, "input")) return -1;
    int64_t c;
    if (n->op == OPK_GROUP_NORM) {
        if (x->ndim < 2) return diag_error(n->loc, "group_norm: input must have rank >= 2");
        c = x->shape[1];
        if (static_dim(n, x, 1, "the channels", "they are normalised in groups of a fixed size")) return -1;
        if (n->groups < 1 || c % n->groups != 0)
            return diag_error(n->loc, "group_norm: %lld channels of %s are not divisible into %d groups",
                              (long long)c, shape_str(x, bx, sizeof bx), n->groups);
    } else {
        if (x->ndim < 1) return diag_error(n->loc, "layer_norm: input must have rank >= 1");
        c = x->shape[x->ndim - 1];
        if (static_dim(n, x, x->ndim - 1, "the normalised dimension", "its size must be static")) return -1;
    }
    if (!(n->eps > 0)) return diag_error(n->loc, "%s: eps must be > 0", op_names[n->op]);
    if (want_vec(n, n->src[1], c, "weight") || want_vec(n, n->src[2], c, "bias")) return -1;
    copy_shape(n, x);
    return 0;
}

static int infer_attention(Node *n) {
    const Node *q = n->src[0], *k = n->src[1], *v = n->src[2];
    char bq[128], bk[128], bv[128];
    if (want_rank(n, q, 3, "q") || want_rank(n, k, 3, "k") || want_rank(n, v, 3, "v")) return -1;
    if (static_dim(n, q, 2, "the channels of q", "a contracted dimension must be static") ||
        static_dim(n, k, 2, "the channels of k", "a contracted dimension must be static") ||
        static_dim(n, v, 2, "the channels of v", "they must be static"))
        return -1;
    if (!same_dim(q, 0, k, 0) || !same_dim(k, 0, v, 0) || !same_dim(k, 1, v, 1) || q->shape[2] != k->shape[2])
        return diag_error(n->loc, "attention: q %s, k %s, v %s do not fit ([B,Tq,C], [B,Tk,C], [B,Tk,Cv])",
                          shape_str(q, bq, sizeof bq), shape_str(k, bk, sizeof bk),
                          shape_str(v, bv, sizeof bv));
    if (n->heads < 1 || q->shape[2] % n->heads || v->shape[2] % n->heads)
        return diag_error(n->loc, "attention: %lld channels are not divisible into %d heads",
                          (long long)q->shape[2], n->heads);
    if (n->causal && !same_dim(q, 1, k, 1))
        return diag_error(n->loc, "attention: a causal mask needs as many queries as keys");
    int64_t s[3] = {q->shape[0], q->shape[1], v->shape[2]};
    set_shape(n, 3, s);
    n->dyn[0] = q->dyn[0];
    n->dyn[1] = q->dyn[1];
    return 0;
}

static int infer_concat(Node *n) {
    const Node *a = n->src[0];
    char ba[128], bb[128];
    int ax = n->axis;
    if (ax < 0 || ax >= a->ndim) return diag_error(n->loc, "concat: axis %d out of range", ax);
    int64_t total = 0;
    for (int i = 0; i < n->nsrc; i++) {
        const Node *b = n->src[i];
        if (b->dtype != a->dtype) return diag_error(n->loc, "concat: operands have different element types");
        if (b->ndim != a->ndim) goto mismatch;
        if (static_dim(n, b, ax, "the concatenated dimension", "parts are placed at compile-time offsets")) return -1;
        for (int d = 0; d < a->ndim; d++)
            if (d != ax && !same_dim(a, d, b, d)) goto mismatch;
        total += b->shape[ax];
        continue;
    mismatch:
        return diag_error(n->loc, "concat: %s and %s differ outside axis %d", shape_str(a, ba, sizeof ba),
                          shape_str(b, bb, sizeof bb), ax);
    }
    copy_shape(n, a);
    n->shape[ax] = total;
    n->dtype = a->dtype;
    return 0;
}

static int infer_permute(Node *n) {
    const Node *x = n->src[0];
    int seen[MAX_DIMS] = {0};
    for (int i = 0; i < x->ndim; i++) {
        int p = n->perm[i];
        if (p < 0 || p >= x->ndim || seen[p])
            return diag_error(n->loc, "permute: not a permutation of %d dimensions", x->ndim);
        seen[p] = 1;
        n->shape[i] = x->shape[p];
        n->dyn[i] = x->dyn[p];
    }
    n->ndim = x->ndim;
    n->dtype = x->dtype;
    return 0;
}

static int infer_slice(Node *n) {
    const Node *x = n->src[0];
    if (n->axis < 0 || n->axis >= x->ndim) return diag_error(n->loc, "slice: axis %d out of range", n->axis);
    if (static_dim(n, x, n->axis, "the sliced dimension", "a slice's range is fixed at compile time")) return -1;
    if (n->start < 0 || n->end > x->shape[n->axis] || n->start >= n->end)
        return diag_error(n->loc, "slice: range [%lld, %lld) is outside [0, %lld)", (long long)n->start,
                          (long long)n->end, (long long)x->shape[n->axis]);
    copy_shape(n, x);
    n->shape[n->axis] = n->end - n->start;
    n->dtype = x->dtype;
    return 0;
}

static int infer_op(Node *n);

/* Tensors beyond 2^40 elements (4 TiB) are refused: no model needs them and
 * byte offsets must stay far from overflow. */
int node_infer(Node *n) {
    if (infer_op(n) != 0) return -1;
    double numel = 1;
    for (int i = 0; i < n->ndim; i++) numel *= (double)n->shape[i];
    if (numel > 1099511627776.0) return diag_error(n->loc, "%s: result has %.3g elements, too large", op_names[n->op], numel);
    return 0;
}

static int infer_op(Node *n) {
    const Node *x = n->nsrc ? n->src[0] : NULL;
    char b1[128], b2[128];
    switch (n->op) {
    case OPK_INPUT:
    case OPK_WEIGHT: /* shape given by the builder */
        return 0;
    case OPK_RESHAPE: /* shape given by the builder; a view for every run-time value if the extents match */
        if (!same_extents(x, n) || (n->ndim && node_numel(n) != node_numel(x)))
            return diag_error(n->loc, "reshape: %s to %s would merge, split or drop run-time dims", shape_str(x, b1, sizeof b1),
                              shape_str(n, b2, sizeof b2));
        return 0;
    case OPK_CONV2D: return infer_conv2d(n);
    case OPK_LINEAR: return infer_linear(n);
    case OPK_MATMUL: return infer_matmul(n);
    case OPK_GROUP_NORM:
    case OPK_LAYER_NORM: return infer_norm(n);
    case OPK_SILU:
    case OPK_GELU:
    case OPK_QUICK_GELU:
    case OPK_SIGMOID:
    case OPK_RELU:
    case OPK_TANH:
    case OPK_SOFTMAX:
    case OPK_SCALE:
        if (want_f32(n, x, "input")) return -1;
        copy_shape(n, x);
        return 0;
    case OPK_GEGLU:
        if (want_f32(n, x, "input")) return -1;
        if (x->ndim < 1 || x->shape[x->ndim - 1] % 2)
            return diag_error(n->loc, "geglu: last dimension of %s must be even", shape_str(x, b1, sizeof b1));
        if (static_dim(n, x, x->ndim - 1, "the last dimension", "it is split in halves at a fixed place")) return -1;
        copy_shape(n, x);
        n->shape[x->ndim - 1] /= 2;
        return 0;
    case OPK_ATTENTION: return infer_attention(n);
    case OPK_UPSAMPLE:
        if (want_rank(n, x, 4, "input") || want_f32(n, x, "input")) return -1;
        if (n->factor < 1) return diag_error(n->loc, "upsample_nearest: factor must be >= 1");
        if (static_dim(n, x, 2, "the height", "only batch and channels may be run-time") ||
            static_dim(n, x, 3, "the width", "only batch and channels may be run-time"))
            return -1;
        copy_shape(n, x);
        n->shape[2] *= n->factor;
        n->shape[3] *= n->factor;
        return 0;
    case OPK_AVGPOOL:
        if (want_rank(n, x, 4, "input") || want_f32(n, x, "input")) return -1;
        if (n->factor < 1 || x->shape[2] < n->factor || x->shape[3] < n->factor)
            return diag_error(n->loc, "avg_pool2d: window %d does not fit %s", n->factor, shape_str(x, b1, sizeof b1));
        if (static_dim(n, x, 2, "the height", "only batch and channels may be run-time") ||
            static_dim(n, x, 3, "the width", "only batch and channels may be run-time"))
            return -1;
        copy_shape(n, x);
        n->shape[2] /= n->factor; /* floor, as torch's avg_pool2d */
        n->shape[3] /= n->factor;
        return 0;
    case OPK_ADD:
    case OPK_SUB:
    case OPK_MUL: return infer_broadcast(n);
    case OPK_CONCAT: return infer_concat(n);
    case OPK_TIMESTEP_EMB: {
        if (want_rank(n, x, 1, "timesteps") || want_f32(n, x, "timesteps")) return -1;
        if (n->shape[1] < 2) return diag_error(n->loc, "timestep_embedding: dim must be >= 2");
        n->ndim = 2;
        n->shape[0] = x->shape[0];
        n->dyn[0] = x->dyn[0];
        return 0;
    }
    case OPK_EMBEDDING: {
        const Node *table = n->src[0], *ids = n->src[1];
        if (want_rank(n, table, 2, "table")) return -1;
        if (ids->dtype != DT_I32) return diag_error(n->loc, "embedding: ids must be i32");
        if (ids->ndim + 1 > MAX_DIMS) return diag_error(n->loc, "embedding: ids rank too large");
        copy_shape(n, ids);
        n->shape[n->ndim++] = table->shape[1];
        return 0;
    }
    case OPK_PERMUTE: return infer_permute(n);
    case OPK_SLICE: return infer_slice(n);
    case OPK_VQ_INDEX: {
        const Node *z = n->src[0], *cb = n->src[1];
        if (want_rank(n, z, 4, "z") || want_rank(n, cb, 2, "codebook")) return -1;
        if (want_f32(n, z, "z") || want_f32(n, cb, "codebook")) return -1;
        if (z->shape[1] != cb->shape[1])
            return diag_error(n->loc, "vq_index: z %s has %lld channels, codebook %s rows have %lld",
                              shape_str(z, b1, sizeof b1), (long long)z->shape[1],
                              shape_str(cb, b2, sizeof b2), (long long)cb->shape[1]);
        for (int d = 1; d < 4; d++)
            if (static_dim(n, z, d, "a dim other than the batch", "only the batch may be run-time")) return -1;
        int64_t s[3] = {z->shape[0], z->shape[2], z->shape[3]};
        set_shape(n, 3, s);
        n->dyn[0] = z->dyn[0];
        n->dtype = DT_I32;
        return 0;
    }
    case OPK_VQ_LOOKUP: {
        const Node *cb = n->src[0], *idx = n->src[1];
        if (want_rank(n, cb, 2, "codebook") || want_rank(n, idx, 3, "indices")) return -1;
        if (idx->dtype != DT_I32) return diag_error(n->loc, "vq_lookup: indices must be i32");
        for (int d = 1; d < 3; d++)
            if (static_dim(n, idx, d, "a dim other than the batch", "only the batch may be run-time")) return -1;
        int64_t s[4] = {idx->shape[0], cb->shape[1], idx->shape[1], idx->shape[2]};
        set_shape(n, 4, s);
        n->dyn[0] = idx->dyn[0];
        return 0;
    }
    case OPK_TAKE_ARGMAX: {
        const Node *ids = n->src[1];
        if (want_rank(n, x, 3, "x") || want_f32(n, x, "x") || want_rank(n, ids, 2, "ids")) return -1;
        if (ids->dtype != DT_I32) return diag_error(n->loc, "take_argmax: ids must be i32");
        if (static_dim(n, x, 1, "the sequence", "it is searched") || static_dim(n, x, 2, "the channels", "they are copied") ||
            static_dim(n, ids, 1, "the sequence", "it is searched"))
            return -1;
        if (!same_dim(x, 0, ids, 0) || x->shape[1] != ids->shape[1])
            return diag_error(n->loc, "take_argmax: x %s and ids %s differ in batch or sequence length",
                              shape_str(x, b1, sizeof b1), shape_str(ids, b2, sizeof b2));
        int64_t s[2] = {x->shape[0], x->shape[2]};
        set_shape(n, 2, s);
        n->dyn[0] = x->dyn[0];
        return 0;
    }
    case OPK_COUNT: break;
    }
    return diag_error(n->loc, "internal error: unknown op %d", (int)n->op);
}

double node_flops(const Node *n) {
    return node_op_flops(n) + n->fused_flops;
}

double node_op_flops(const Node *n) {
    double out = (double)node_numel(n);
    const Node *x = n->nsrc ? n->src[0] : NULL;
    switch (n->op) {
    case OPK_CONV2D: {
        const Node *w = n->src[1];
        return 2.0 * out * (double)(w->shape[1] * w->shape[2] * w->shape[3]);
    }
    case OPK_LINEAR: /* linear+geglu computes twice the features it returns */
        return 2.0 * out * (double)n->src[1]->shape[1] * (n->act == ACT_GEGLU ? 2 : 1);
    case OPK_MATMUL: {
        int r = x->ndim;
        return 2.0 * out * (double)x->shape[r - 1];
    }
    case OPK_ATTENTION: {
        const Node *q = n->src[0], *k = n->src[1], *v = n->src[2];
        double b = (double)q->shape[0], tq = (double)q->shape[1], tk = (double)k->shape[1];
        return 2.0 * b * tq * tk * (double)q->shape[2] + 2.0 * b * tq * tk * (double)v->shape[2];
    }
    case OPK_VQ_INDEX: return 2.0 * out * (double)n->src[1]->shape[0] * (double)n->src[1]->shape[1];
    case OPK_INPUT:
    case OPK_WEIGHT:
    case OPK_RESHAPE:
        return 0;
    default:
        return out;
    }
}

/* ---- graph-level queries and edits shared by the passes ------------------ */

const char *node_kernel_name(const Node *n, char *buf, size_t size) {
    snprintf(buf, size, "%s%s%s%s%s%s%s", n->pro_lnorm ? "layer_norm+" : "", n->pro_upsample ? "upsample_nearest+" : "",
             op_names[n->op],
             n->act == ACT_SILU ? "+silu" : n->act == ACT_GEGLU ? "+geglu" : "", n->ep_rowadd ? "+rowadd" : "",
             n->ep_residual ? "+residual" : "", n->act == ACT_RELU ? "+relu" : "");
    return buf;
}

int graph_is_output(const Graph *g, const Node *n) {
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i].node == n) return 1;
    return 0;
}

void graph_replace_uses(Graph *g, Node *old, Node *repl) {
    for (int i = 0; i < g->n_nodes; i++)
        for (int s = 0; s < g->nodes[i]->nsrc; s++)
            if (g->nodes[i]->src[s] == old) g->nodes[i]->src[s] = repl;
    for (int i = 0; i < g->n_outputs; i++)
        if (g->outputs[i].node == old) g->outputs[i].node = repl;
}

static void node_free(Node *n) {
    free(n->name);
    free(n->scope);
    free(n->fused);
    free(n->prov);
    free(n);
}

void graph_sweep(Graph *g) {
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
        if (n->live) g->nodes[k++] = n;
        else node_free(n);
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

int64_t graph_unused_count(const Graph *g) {
    int64_t k = 0;
    for (int i = 0; i < g->n_unused; i++) {
        int64_t e = 1;   /* saturating, as graph_param_count */
        for (int d = 0; d < g->unused[i].ndim; d++)
            if (__builtin_mul_overflow(e, g->unused[i].shape[d], &e)) return INT64_MAX;
        if (__builtin_add_overflow(k, e, &k)) return INT64_MAX;
    }
    return k;
}

int64_t graph_param_count(const Graph *g) {
    int64_t k = 0;
    /* saturating: a fuzzed graph's weights can hold more than INT64_MAX
     * elements in all (each one alone fits) */
    for (int i = 0; i < g->n_weights; i++)
        if (__builtin_add_overflow(k, node_numel(g->weights[i]), &k)) return INT64_MAX;
    return k;
}

double graph_flops(const Graph *g) {
    double f = 0;
    for (int i = 0; i < g->n_nodes; i++) f += node_flops(g->nodes[i]);
    return f;
}
