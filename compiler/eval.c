/*
 * eval.c - elaboration: run a DSL program against a model config and build
 * the graph.
 *
 * The DSL is a small dynamically typed language (null, bool, int, float,
 * string, list, config map, tensor, function). Ordinary values are
 * computed here, at compile time; tensor operations only append nodes to the
 * graph (with their shapes inferred and checked on the spot), so a loop over
 * `channel_mult` unrolls into the network the config describes.
 *
 * Weight names: `weight("norm.weight", [C])` binds the checkpoint tensor
 * <graph prefix><scope>.<scope>...norm.weight, where the scopes come from
 * the enclosing `scope "..." { }` statements (dynamically, so a block
 * definition called inside `scope "input_blocks.1.0"` binds that block's
 * weights). Strings interpolate `{name}` with the value of a variable.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldmc.h"

/* ---- values --------------------------------------------------------------- */

typedef enum VKind {
    V_NULL,     /* null */
    V_BOOL,     /* i: 0/1 */
    V_INT,      /* i */
    V_FLOAT,    /* f */
    V_STR,      /* s */
    V_LIST,     /* list */
    V_MAP,      /* m: a config mapping */
    V_TENSOR,   /* t: a graph node */
    V_FUNC,     /* fn: a `def` */
    V_BUILTIN,  /* builtin: index into builtins[] */
    V_DIM,      /* i * (extent ext): a size known only at run time (a dim of a run-time extent) */
} VKind;

typedef struct List List;

typedef struct Value {
    VKind k;               /* kind */
    int64_t i;             /* V_BOOL, V_INT */
    double f;              /* V_FLOAT */
    const char *s;         /* V_STR (owned by the evaluator's pool) */
    List *list;            /* V_LIST */
    const CfgNode *m;      /* V_MAP */
    Node *t;               /* V_TENSOR */
    Ast *fn;               /* V_FUNC */
    int builtin;           /* V_BUILTIN */
    int ext;               /* V_DIM: index in the graph's extents (its coefficient is i) */
} Value;

struct List {
    int n;                 /* number of items */
    Value *v;              /* items (immutable once built) */
};

/* A lexical environment: names bound by let, params, for. */
typedef struct Env Env;
struct Env {
    Env *parent;           /* enclosing scope (NULL for globals) */
    int n, cap;            /* bindings */
    const char **names;    /* names */
    Value *vals;           /* values */
};

/* The evaluator. */
typedef struct Eval {
    Graph *g;                    /* graph being built */
    const BuildOptions *opt;     /* config path and -D definitions */
    CfgNode *config;             /* loaded config (NULL if none) */
    Env *globals;                /* defs and builtins */
    void **pool;                 /* every allocation, freed at the end */
    int n_pool, cap_pool;
    const char **scopes;         /* weight-name scope stack */
    int n_scopes, cap_scopes;
    int *define_used;            /* per -D: consumed by a param or the config */
    Value ret;                   /* value of the last `return` */
    int depth;                   /* call depth (recursion guard) */
    const char **calls;          /* the def calls being run, outermost first: "unet.graph:74 ResBlock" */
    int n_calls, cap_calls;
    int prefix_set;              /* a `prefix` statement ran */
    CfgNode *facts;              /* model_facts() of the config, made on first use */
} Eval;

static void *ev_alloc(Eval *E, size_t n) {
    if (E->n_pool == E->cap_pool) {
        E->cap_pool = E->cap_pool ? 2 * E->cap_pool : 1024;
        E->pool = ldm_xrealloc(E->pool, (size_t)E->cap_pool * sizeof *E->pool);
    }
    void *p = ldm_xcalloc(1, n);
    E->pool[E->n_pool++] = p;
    return p;
}

static const char *ev_strdup(Eval *E, const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(ev_alloc(E, n), s, n);
}

static Value v_null(void) { return (Value){.k = V_NULL}; }
static Value v_bool(int b) { return (Value){.k = V_BOOL, .i = b != 0}; }
static Value v_int(int64_t i) { return (Value){.k = V_INT, .i = i}; }
static Value v_float(double f) { return (Value){.k = V_FLOAT, .f = f}; }
static Value v_str(const char *s) { return (Value){.k = V_STR, .s = s}; }
static Value v_tensor(Node *t) { return (Value){.k = V_TENSOR, .t = t}; }
static Value v_dim(int ext, int64_t coef) { return (Value){.k = V_DIM, .ext = ext, .i = coef}; }

static Value v_list(Eval *E, int n) {
    List *l = ev_alloc(E, sizeof *l);
    l->n = n;
    l->v = ev_alloc(E, (size_t)(n ? n : 1) * sizeof *l->v);
    return (Value){.k = V_LIST, .list = l};
}

/* "an int", "a string": the kind with its article, for messages. */
static const char *a_kind(VKind k) {
    static const char *names[] = {"null", "a bool", "an int", "a float", "a string", "a list", "a map", "a tensor", "a function", "a builtin", "a run-time size"};
    return names[k];
}

static const char *kind_name(VKind k) {
    static const char *names[] = {"null", "bool", "int", "float", "string", "list", "map", "tensor", "function", "builtin", "run-time size"};
    return names[k];
}

/* The graph being built (value_fmt names run-time extents by it). */
static const Graph *fmt_graph;

/* "T", "8*T": a run-time size as the DSL would write it. */
static void dim_fmt(const Value *v, char *buf, size_t size) {
    const char *name = fmt_graph && v->ext < fmt_graph->n_extents ? fmt_graph->extents[v->ext].name : "?";
    if (v->i == 1) snprintf(buf, size, "%s", name);
    else snprintf(buf, size, "%lld*%s", (long long)v->i, name);
}

/* Short printable form of a value (for messages and interpolation). */
static void value_fmt(const Value *v, char *buf, size_t size) {
    size_t k = 0;
    switch (v->k) {
    case V_DIM: dim_fmt(v, buf, size); return;
    case V_NULL: snprintf(buf, size, "null"); return;
    case V_BOOL: snprintf(buf, size, "%s", v->i ? "true" : "false"); return;
    case V_INT: snprintf(buf, size, "%lld", (long long)v->i); return;
    case V_FLOAT: snprintf(buf, size, "%g", v->f); return;
    case V_STR: snprintf(buf, size, "%s", v->s); return;
    case V_MAP: snprintf(buf, size, "<config map>"); return;
    case V_TENSOR: {
        char b[128];
        snprintf(buf, size, "tensor%s", shape_str(v->t, b, sizeof b));
        return;
    }
    case V_FUNC: snprintf(buf, size, "<def %s>", v->fn->name); return;
    case V_BUILTIN: snprintf(buf, size, "<builtin>"); return;
    case V_LIST:
        k = (size_t)snprintf(buf, size, "[");
        for (int i = 0; i < v->list->n && k + 8 < size; i++) {
            if (i) k += (size_t)snprintf(buf + k, size - k, ", ");
            value_fmt(&v->list->v[i], buf + k, size - k);
            k = strlen(buf);
        }
        if (k + 1 < size) snprintf(buf + k, size - k, "]");
        return;
    }
}

/* ---- environments -------------------------------------------------------- */

static Env *env_new(Eval *E, Env *parent) {
    Env *e = ev_alloc(E, sizeof *e);
    e->parent = parent;
    return e;
}

static void env_bind(Eval *E, Env *e, const char *name, Value v) {
    for (int i = 0; i < e->n; i++)
        if (strcmp(e->names[i], name) == 0) {
            e->vals[i] = v;
            return;
        }
    if (e->n == e->cap) {
        int cap = e->cap ? 2 * e->cap : 8;
        const char **names = ev_alloc(E, (size_t)cap * sizeof *names);
        Value *vals = ev_alloc(E, (size_t)cap * sizeof *vals);
        if (e->n) {
            memcpy(names, e->names, (size_t)e->n * sizeof *names);
            memcpy(vals, e->vals, (size_t)e->n * sizeof *vals);
        }
        e->names = names;
        e->vals = vals;
        e->cap = cap;
    }
    e->names[e->n] = name;
    e->vals[e->n++] = v;
}

static Value *env_find(Env *e, const char *name) {
    for (; e; e = e->parent)
        for (int i = 0; i < e->n; i++)
            if (strcmp(e->names[i], name) == 0) return &e->vals[i];
    return NULL;
}

/* ---- config values ------------------------------------------------------- */

static Value cfg_value(Eval *E, const CfgNode *c) {
    switch (c->kind) {
    case CFG_NULL: return v_null();
    case CFG_BOOL: return v_bool(c->b);
    case CFG_INT: return v_int(c->i);
    case CFG_FLOAT: return v_float(c->f);
    case CFG_STRING: return v_str(c->s);
    case CFG_MAP: return (Value){.k = V_MAP, .m = c};
    case CFG_LIST: {
        Value l = v_list(E, c->n);
        for (int i = 0; i < c->n; i++) l.list->v[i] = cfg_value(E, c->items[i]);
        return l;
    }
    }
    return v_null();
}

/* ---- conversions with diagnostics --------------------------------------- */

/* The diagnostic for a run-time size used where a compile-time number is
 * needed: "T is a run-time extent (at most 154); its value is not known at
 * compile time". */
static int dim_error(const Value *v, SrcLoc loc) {
    const Extent *e = &fmt_graph->extents[v->ext];
    if (v->i == 1)
        return diag_error(loc, "%s is a run-time extent (at most %lld); its value is not known at compile time", e->name,
                          (long long)e->max);
    return diag_error(loc, "%lld*%s is a run-time size (%s is at most %lld); its value is not known at compile time",
                      (long long)v->i, e->name, e->name, (long long)e->max);
}

/* A run-time size anywhere inside v (a list of them included), or NULL. */
static const Value *find_dim(const Value *v) {
    if (v->k == V_DIM) return v;
    if (v->k == V_LIST)
        for (int i = 0; i < v->list->n; i++) {
            const Value *d = find_dim(&v->list->v[i]);
            if (d) return d;
        }
    return NULL;
}

static int want_int(const Value *v, SrcLoc loc, const char *what, int64_t *out) {
    if (v->k == V_DIM) return dim_error(v, loc);
    if (v->k == V_INT) {
        *out = v->i;
        return 0;
    }
    if (v->k == V_FLOAT && v->f == floor(v->f) && fabs(v->f) < 9e15) {
        *out = (int64_t)v->f;
        return 0;
    }
    char b[256];
    value_fmt(v, b, sizeof b);
    return diag_error(loc, "%s must be an integer, got %s %s", what, kind_name(v->k), b);
}

static int want_num(const Value *v, SrcLoc loc, const char *what, double *out) {
    if (v->k == V_DIM) return dim_error(v, loc);
    if (v->k == V_INT) *out = (double)v->i;
    else if (v->k == V_FLOAT) *out = v->f;
    else return diag_error(loc, "%s must be a number, got %s", what, kind_name(v->k));
    return 0;
}

static int want_tensor(const Value *v, SrcLoc loc, const char *what, Node **out) {
    if (v->k != V_TENSOR) return diag_error(loc, "%s must be a tensor, got %s", what, kind_name(v->k));
    *out = v->t;
    return 0;
}

static int want_str(const Value *v, SrcLoc loc, const char *what, const char **out) {
    if (v->k != V_STR) return diag_error(loc, "%s must be a string, got %s", what, kind_name(v->k));
    *out = v->s;
    return 0;
}

/* A list of integers (e.g. a shape) of at most `max` items. */
static int want_int_list(const Value *v, SrcLoc loc, const char *what, int64_t *out, int max, int *n) {
    if (v->k != V_LIST) return diag_error(loc, "%s must be a list of integers, got %s", what, kind_name(v->k));
    if (v->list->n > max) return diag_error(loc, "%s has %d items, at most %d allowed", what, v->list->n, max);
    for (int i = 0; i < v->list->n; i++)
        if (want_int(&v->list->v[i], loc, what, &out[i])) return -1;
    *n = v->list->n;
    return 0;
}

/* A shape: a list of at most `max` integers and run-time sizes; a run-time
 * size gives its maximum in out[] and 1 + its extent in dyn[]. */
static int want_shape(const Value *v, SrcLoc loc, const char *what, int64_t *out, int8_t *dyn, int max, int *n) {
    if (v->k != V_LIST) return diag_error(loc, "%s must be a list of integers, got %s", what, kind_name(v->k));
    if (v->list->n > max) return diag_error(loc, "%s has %d items, at most %d allowed", what, v->list->n, max);
    for (int i = 0; i < v->list->n; i++) {
        const Value *d = &v->list->v[i];
        dyn[i] = 0;
        if (d->k == V_DIM) {
            out[i] = d->i * fmt_graph->extents[d->ext].max;
            dyn[i] = (int8_t)(d->ext + 1);
        } else if (want_int(d, loc, what, &out[i])) {
            return -1;
        }
    }
    *n = v->list->n;
    return 0;
}

static int truthy(const Value *v, SrcLoc loc, int *out) {
    switch (v->k) {
    case V_DIM: return dim_error(v, loc);
    case V_NULL: *out = 0; return 0;
    case V_BOOL:
    case V_INT: *out = v->i != 0; return 0;
    case V_FLOAT: *out = v->f != 0; return 0;
    case V_STR: *out = v->s[0] != 0; return 0;
    case V_LIST: *out = v->list->n != 0; return 0;
    default: return diag_error(loc, "%s has no truth value", a_kind(v->k));
    }
}

/* ---- graph building ------------------------------------------------------- */

/* The weight-name prefix of the current scope: "a.b." or "". */
static char *scope_prefix(Eval *E) {
    size_t len = 1;
    for (int i = 0; i < E->n_scopes; i++) len += strlen(E->scopes[i]) + 1;
    char *s = ldm_xmalloc(len);
    s[0] = 0;
    for (int i = 0; i < E->n_scopes; i++) {
        strcat(s, E->scopes[i]);
        strcat(s, ".");
    }
    return s;
}

/* "nn.graph:12": a location as provenance shows it (file name only, so
 * that dumps do not depend on the directory the compiler ran in). */
static void prov_loc(SrcLoc loc, char *buf, size_t size) {
    const char *f = loc.file ? strrchr(loc.file->path, '/') : NULL;
    f = f ? f + 1 : loc.file ? loc.file->path : "<builtin>";
    snprintf(buf, size, "%s:%d", f, loc.line);
}

/* A node built at loc, with its provenance: the def calls on the way, then loc. */
static Node *graph_add_here(Eval *E, OpKind op, SrcLoc loc) {
    Node *n = graph_add(E->g, op, loc);
    size_t len = 32;
    for (int i = 0; i < E->n_calls; i++) len += strlen(E->calls[i]) + 3;
    char *p = ldm_xmalloc(len + 512), here[512];
    p[0] = 0;
    for (int i = 0; i < E->n_calls; i++) {
        strcat(p, E->calls[i]);
        strcat(p, " > ");
    }
    prov_loc(loc, here, sizeof here);
    strcat(p, here);
    n->prov = p;
    return n;
}

/* New node with sources; infers its shape. NULL on a shape error. */
static Node *mk(Eval *E, OpKind op, SrcLoc loc, int nsrc, Node **src) {
    Node *n = graph_add_here(E, op, loc);
    for (int i = 0; i < nsrc; i++) n->src[i] = src[i];
    n->nsrc = nsrc;
    if (E->n_scopes) {
        n->scope = scope_prefix(E);
        n->scope[strlen(n->scope) - 1] = 0; /* drop the trailing '.' */
    }
    return n;
}

static Node *finish(Node *n) { return node_infer(n) == 0 ? n : NULL; }

static Node *make_weight(Eval *E, SrcLoc loc, const char *local, const int64_t *shape, int ndim) {
    char *sp = scope_prefix(E);
    char *key = ldm_xasprintf("%s%s%s", E->g->prefix, sp, local);
    free(sp);
    /* the same key twice (shared weights) is one node, with one shape */
    for (int i = 0; i < E->g->n_nodes; i++) {
        Node *w = E->g->nodes[i];
        if (w->op == OPK_WEIGHT && strcmp(w->name, key) == 0) {
            int same = w->ndim == ndim && memcmp(w->shape, shape, (size_t)ndim * sizeof *shape) == 0;
            if (!same) {
                char b[128];
                diag_error(loc, "weight '%s' was already bound with shape %s at %s", key,
                           shape_str(w, b, sizeof b), loc_str(w->loc));
                free(key);
                return NULL;
            }
            free(key);
            return w;
        }
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 1 || shape[i] > (1ll << 31)) {
            diag_error(loc, "weight '%s': dimension %d is %lld, must be in 1..2^31", key, i, (long long)shape[i]);
            free(key);
            return NULL;
        }
    Node *w = mk(E, OPK_WEIGHT, loc, 0, NULL);
    w->name = key;
    w->ndim = ndim;
    memcpy(w->shape, shape, (size_t)ndim * sizeof *shape);
    return w;
}

/* ---- builtins -------------------------------------------------------------- */

/* Arguments bound to a builtin's declared parameters, in order. */
typedef struct Args {
    Value v[8];            /* values (defaults filled in) */
    int given[8];          /* passed explicitly */
    SrcLoc loc;            /* the call */
} Args;

typedef int (*BuiltinFn)(Eval *E, Args *a, Value *out);

typedef struct Builtin {
    const char *name;             /* DSL name */
    const char *params;    /* "x,w,b=null,stride=1": names, '=' marks optional */
    BuiltinFn fn;          /* implementation */
} Builtin;

#define ARG_TENSOR(i, var, what) Node *var = NULL; if (want_tensor(&a->v[i], a->loc, what, &var)) return -1
#define ARG_INT(i, var, what) int64_t var = 0; if (want_int(&a->v[i], a->loc, what, &var)) return -1
#define ARG_NUM(i, var, what) double var = 0; if (want_num(&a->v[i], a->loc, what, &var)) return -1
#define RESULT(node) do { Node *r_ = (node); if (!r_) return -1; *out = v_tensor(r_); return 0; } while (0)

/* model_facts(): what the config means (modelcfg.c) as a map: f,
 * context_length, unet_context, cond_kind, ... */
static int bi_model_facts(Eval *E, Args *a, Value *out) {
    if (!E->config) return diag_error(a->loc, "model_facts() needs a config (--config)");
    if (!E->facts) {
        ModelFacts mf;
        if (model_facts(E->config, &mf) != 0) {
            char *why = ldm_xstrdup(ldm_last_error());
            diag_error(a->loc, "model_facts(): %s", why);
            free(why);
            return -1;
        }
        E->facts = model_facts_map(&mf);
        if (!E->facts) return diag_error(a->loc, "internal error: model_facts(): %s", ldm_last_error());
    }
    *out = cfg_value(E, E->facts);
    return 0;
}

static int bi_len(Eval *E, Args *a, Value *out) {
    (void)E;
    const Value *v = &a->v[0];
    if (v->k == V_LIST) *out = v_int(v->list->n);
    else if (v->k == V_STR) *out = v_int((int64_t)strlen(v->s));
    else if (v->k == V_MAP) *out = v_int(v->m->n);
    else return diag_error(a->loc, "len() of a %s", kind_name(v->k));
    return 0;
}

static int bi_range(Eval *E, Args *a, Value *out) {
    int64_t lo = 0, hi, step = 1;
    if (a->given[1]) {
        if (want_int(&a->v[0], a->loc, "range start", &lo) || want_int(&a->v[1], a->loc, "range end", &hi)) return -1;
    } else if (want_int(&a->v[0], a->loc, "range end", &hi)) {
        return -1;
    }
    if (a->given[2] && want_int(&a->v[2], a->loc, "range step", &step)) return -1;
    if (step == 0) return diag_error(a->loc, "range step must not be 0");
    int64_t n = step > 0 ? (hi > lo ? (hi - lo + step - 1) / step : 0) : (lo > hi ? (lo - hi - step - 1) / -step : 0);
    if (n > 1000000) return diag_error(a->loc, "range of %lld items is too long", (long long)n);
    *out = v_list(E, (int)n);
    for (int64_t i = 0; i < n; i++) out->list->v[i] = v_int(lo + i * step);
    return 0;
}

static int bi_has(Eval *E, Args *a, Value *out) {
    (void)E;
    const char *key = NULL;
    if (a->v[0].k != V_MAP) return diag_error(a->loc, "has() needs a config map, got %s", kind_name(a->v[0].k));
    if (want_str(&a->v[1], a->loc, "key", &key)) return -1;
    *out = v_bool(cfg_get(a->v[0].m, key) != NULL);
    return 0;
}

static int bi_get(Eval *E, Args *a, Value *out) {
    const char *key = NULL;
    if (a->v[0].k == V_NULL) { /* an absent optional section */
        *out = a->v[2];
        return 0;
    }
    if (a->v[0].k != V_MAP) return diag_error(a->loc, "get() needs a config map, got %s", kind_name(a->v[0].k));
    if (want_str(&a->v[1], a->loc, "key", &key)) return -1;
    const CfgNode *c = cfg_get(a->v[0].m, key);
    *out = c ? cfg_value(E, c) : a->v[2];
    return 0;
}

static int bi_minmax(Args *a, Value *out, int is_max) {
    double x = 0, y = 0;
    if (want_num(&a->v[0], a->loc, "argument", &x) || want_num(&a->v[1], a->loc, "argument", &y)) return -1;
    *out = (is_max ? x >= y : x <= y) ? a->v[0] : a->v[1];
    return 0;
}
static int bi_min(Eval *E, Args *a, Value *out) { (void)E; return bi_minmax(a, out, 0); }
static int bi_max(Eval *E, Args *a, Value *out) { (void)E; return bi_minmax(a, out, 1); }

static int bi_int(Eval *E, Args *a, Value *out) {
    (void)E;
    double x = 0;
    if (want_num(&a->v[0], a->loc, "int() argument", &x)) return -1;
    *out = v_int((int64_t)x);
    return 0;
}

static int bi_float(Eval *E, Args *a, Value *out) {
    (void)E;
    double x = 0;
    if (want_num(&a->v[0], a->loc, "float() argument", &x)) return -1;
    *out = v_float(x);
    return 0;
}

static int bi_type(Eval *E, Args *a, Value *out) {
    (void)E;
    *out = v_str(kind_name(a->v[0].k));
    return 0;
}

static int bi_str(Eval *E, Args *a, Value *out) {
    char b[512];
    value_fmt(&a->v[0], b, sizeof b);
    *out = v_str(ev_strdup(E, b));
    return 0;
}

static int bi_weight(Eval *E, Args *a, Value *out) {
    const char *name = NULL;
    int64_t shape[MAX_DIMS];
    int nd;
    if (want_str(&a->v[0], a->loc, "weight name", &name)) return -1;
    if (want_int_list(&a->v[1], a->loc, "weight shape", shape, MAX_DIMS, &nd)) return -1;
    RESULT(make_weight(E, a->loc, name, shape, nd));
}

/* unused_weight(name, shape): the checkpoint holds <prefix><scopes><name>
 * of that shape, and the graph does not read it (reported, never bound). */
static int bi_unused_weight(Eval *E, Args *a, Value *out) {
    const char *name = NULL;
    int64_t shape[MAX_DIMS];
    int nd;
    if (want_str(&a->v[0], a->loc, "weight name", &name)) return -1;
    if (want_int_list(&a->v[1], a->loc, "weight shape", shape, MAX_DIMS, &nd)) return -1;
    char *sp = scope_prefix(E);
    char *key = ldm_xasprintf("%s%s%s", E->g->prefix, sp, name);
    free(sp);
    Graph *g = E->g;
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i]->op == OPK_WEIGHT && !strcmp(g->nodes[i]->name, key)) {
            diag_error(a->loc, "unused_weight: '%s' is read by the graph (bound at %s)", key, loc_str(g->nodes[i]->loc));
            free(key);
            return -1;
        }
    for (int i = 0; i < g->n_unused; i++)
        if (!strcmp(g->unused[i].name, key)) {
            free(key);
            *out = v_null();
            return 0;
        }
    g->unused = ldm_xrealloc(g->unused, (size_t)(g->n_unused + 1) * sizeof *g->unused);
    UnusedWeight *u = &g->unused[g->n_unused++];
    u->name = key;
    u->ndim = nd;
    memcpy(u->shape, shape, (size_t)nd * sizeof *shape);
    *out = v_null();
    return 0;
}

/* pad: an int (all sides) or [top, bottom, left, right]. */
static int parse_pad(const Value *v, SrcLoc loc, int pad[4]) {
    int64_t p[4];
    int n;
    if (v->k == V_LIST) {
        if (want_int_list(v, loc, "pad", p, 4, &n)) return -1;
        if (n != 4) return diag_error(loc, "pad must be an integer or [top, bottom, left, right]");
        for (int i = 0; i < 4; i++) pad[i] = (int)p[i];
        return 0;
    }
    if (want_int(v, loc, "pad", &p[0])) return -1;
    for (int i = 0; i < 4; i++) pad[i] = (int)p[0];
    return 0;
}

static int bi_conv2d(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, x, "conv2d input");
    ARG_TENSOR(1, w, "conv2d weight");
    ARG_INT(3, stride, "stride");
    Node *src[3] = {x, w, NULL};
    int ns = 2;
    if (a->v[2].k != V_NULL) {
        if (want_tensor(&a->v[2], a->loc, "conv2d bias", &src[2])) return -1;
        ns = 3;
    }
    Node *n = mk(E, OPK_CONV2D, a->loc, ns, src);
    n->stride[0] = n->stride[1] = (int)stride;
    if (parse_pad(&a->v[4], a->loc, n->pad)) return -1;
    RESULT(finish(n));
}

static int bi_linear(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, x, "linear input");
    ARG_TENSOR(1, w, "linear weight");
    Node *src[3] = {x, w, NULL};
    int ns = 2;
    if (a->v[2].k != V_NULL) {
        if (want_tensor(&a->v[2], a->loc, "linear bias", &src[2])) return -1;
        ns = 3;
    }
    RESULT(finish(mk(E, OPK_LINEAR, a->loc, ns, src)));
}

static int bi_matmul(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, x, "matmul a");
    ARG_TENSOR(1, y, "matmul b");
    int tb = 0;
    if (truthy(&a->v[2], a->loc, &tb)) return -1;
    Node *src[2] = {x, y};
    Node *n = mk(E, OPK_MATMUL, a->loc, 2, src);
    n->trans_b = tb;
    RESULT(finish(n));
}

static int bi_norm(Eval *E, Args *a, Value *out, OpKind op) {
    ARG_TENSOR(0, x, "input");
    ARG_TENSOR(1, w, "weight");
    ARG_TENSOR(2, b, "bias");
    Node *src[3] = {x, w, b};
    Node *n = mk(E, op, a->loc, 3, src);
    if (op == OPK_GROUP_NORM) {
        ARG_INT(3, groups, "groups");
        ARG_NUM(4, eps, "eps");
        n->groups = (int)groups;
        n->eps = eps;
    } else {
        ARG_NUM(3, eps, "eps");
        n->eps = eps;
    }
    RESULT(finish(n));
}
static int bi_group_norm(Eval *E, Args *a, Value *out) { return bi_norm(E, a, out, OPK_GROUP_NORM); }
static int bi_layer_norm(Eval *E, Args *a, Value *out) { return bi_norm(E, a, out, OPK_LAYER_NORM); }

static int unary(Eval *E, Args *a, Value *out, OpKind op) {
    ARG_TENSOR(0, x, op_names[op]);
    RESULT(finish(mk(E, op, a->loc, 1, &x)));
}
static int bi_silu(Eval *E, Args *a, Value *out) { return unary(E, a, out, OPK_SILU); }
static int bi_gelu(Eval *E, Args *a, Value *out) { return unary(E, a, out, OPK_GELU); }
static int bi_quick_gelu(Eval *E, Args *a, Value *out) { return unary(E, a, out, OPK_QUICK_GELU); }
static int bi_sigmoid(Eval *E, Args *a, Value *out) { return unary(E, a, out, OPK_SIGMOID); }
static int bi_relu(Eval *E, Args *a, Value *out) { return unary(E, a, out, OPK_RELU); }
static int bi_tanh(Eval *E, Args *a, Value *out) { return unary(E, a, out, OPK_TANH); }
static int bi_softmax(Eval *E, Args *a, Value *out) { return unary(E, a, out, OPK_SOFTMAX); }
static int bi_geglu(Eval *E, Args *a, Value *out) { return unary(E, a, out, OPK_GEGLU); }

static int bi_attention(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, q, "q");
    ARG_TENSOR(1, k, "k");
    ARG_TENSOR(2, v, "v");
    ARG_INT(3, heads, "heads");
    ARG_NUM(4, scale, "scale");
    int causal = 0;
    if (truthy(&a->v[5], a->loc, &causal)) return -1;
    Node *src[3] = {q, k, v};
    Node *n = mk(E, OPK_ATTENTION, a->loc, 3, src);
    n->heads = (int)heads;
    n->alpha = scale;
    n->causal = causal;
    RESULT(finish(n));
}

static int bi_upsample(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, x, "input");
    ARG_INT(1, factor, "factor");
    if (factor < 1 || factor > 1024) return diag_error(a->loc, "upsample_nearest: factor must be in 1..1024, got %lld", (long long)factor);
    Node *n = mk(E, OPK_UPSAMPLE, a->loc, 1, &x);
    n->factor = (int)factor;
    RESULT(finish(n));
}

static int bi_avg_pool2d(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, x, "input");
    ARG_INT(1, k, "window");
    if (k < 1 || k > 1024) return diag_error(a->loc, "avg_pool2d: window must be in 1..1024, got %lld", (long long)k);
    Node *n = mk(E, OPK_AVGPOOL, a->loc, 1, &x);
    n->factor = (int)k;
    RESULT(finish(n));
}

static int bi_concat(Eval *E, Args *a, Value *out) {
    ARG_INT(1, axis, "axis");
    const Value *l = &a->v[0];
    if (l->k != V_LIST || l->list->n < 1 || l->list->n > MAX_SRC)
        return diag_error(a->loc, "concat needs a list of 1 to %d tensors", MAX_SRC);
    Node *src[MAX_SRC];
    for (int i = 0; i < l->list->n; i++)
        if (want_tensor(&l->list->v[i], a->loc, "concat item", &src[i])) return -1;
    if (axis < 0) axis += src[0]->ndim;
    Node *n = mk(E, OPK_CONCAT, a->loc, l->list->n, src);
    n->axis = (int)axis;
    RESULT(finish(n));
}

static int bi_timestep_embedding(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, t, "timesteps");
    ARG_INT(1, dim, "dim");
    ARG_NUM(2, maxp, "max_period");
    Node *n = mk(E, OPK_TIMESTEP_EMB, a->loc, 1, &t);
    n->shape[1] = dim;
    n->max_period = maxp;
    RESULT(finish(n));
}

static int bi_embedding(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, table, "table");
    ARG_TENSOR(1, ids, "ids");
    Node *src[2] = {table, ids};
    RESULT(finish(mk(E, OPK_EMBEDDING, a->loc, 2, src)));
}

static int bi_reshape(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, x, "input");
    int64_t shape[MAX_DIMS];
    int8_t dyn[MAX_DIMS] = {0};
    int nd = 0;
    char b1[128];
    if (want_shape(&a->v[1], a->loc, "shape", shape, dyn, MAX_DIMS, &nd)) return -1;
    int infer = -1;
    int64_t known = 1;
    for (int i = 0; i < nd; i++) {
        if (shape[i] == -1 && infer < 0) infer = i;
        else if (shape[i] < 1) return diag_error(a->loc, "reshape: bad dimension %lld", (long long)shape[i]);
        else known *= shape[i];
    }
    int64_t numel = node_numel(x);
    if (infer >= 0) {
        if (numel % known) return diag_error(a->loc, "reshape: cannot infer -1 for %s", shape_str(x, b1, sizeof b1));
        shape[infer] = numel / known;
        known = numel;
        /* -1 takes the run-time extent of x that no other dim of the new shape has */
        int count[64] = {0}, left = -1;
        for (int d = 0; d < x->ndim; d++)
            if (x->dyn[d]) count[x->dyn[d]]++;
        for (int d = 0; d < nd; d++)
            if (dyn[d]) count[dyn[d]]--;
        for (int k = 1; k < 64; k++)
            if (count[k] > 0) {
                if (left >= 0 || count[k] > 1)
                    return diag_error(a->loc, "reshape: -1 would merge run-time dims of %s", shape_str(x, b1, sizeof b1));
                left = k;
            }
        if (left > 0) {
            if (shape[infer] % E->g->extents[left - 1].max)
                return diag_error(a->loc, "reshape: cannot infer -1 for %s", shape_str(x, b1, sizeof b1));
            dyn[infer] = (int8_t)left;
        }
    }
    if (known != numel)
        return diag_error(a->loc, "reshape: %s has %lld elements, the new shape %lld", shape_str(x, b1, sizeof b1),
                          (long long)numel, (long long)known);
    Node *n = mk(E, OPK_RESHAPE, a->loc, 1, &x);
    n->ndim = nd;
    n->dtype = x->dtype;
    memcpy(n->shape, shape, (size_t)nd * sizeof *shape);
    memcpy(n->dyn, dyn, (size_t)nd * sizeof *dyn);
    RESULT(finish(n));
}

static int bi_permute(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, x, "input");
    int64_t perm[MAX_DIMS];
    int nd;
    if (want_int_list(&a->v[1], a->loc, "perm", perm, MAX_DIMS, &nd)) return -1;
    if (nd != x->ndim) return diag_error(a->loc, "permute: %d axes given for a rank-%d tensor", nd, x->ndim);
    Node *n = mk(E, OPK_PERMUTE, a->loc, 1, &x);
    for (int i = 0; i < nd; i++) n->perm[i] = (int)perm[i];
    RESULT(finish(n));
}

static int bi_slice(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, x, "input");
    ARG_INT(1, axis, "axis");
    ARG_INT(2, start, "start");
    ARG_INT(3, end, "end");
    if (axis < 0) axis += x->ndim;
    Node *n = mk(E, OPK_SLICE, a->loc, 1, &x);
    n->axis = (int)axis;
    n->start = start;
    n->end = end;
    RESULT(finish(n));
}

static int bi_vq_index(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, z, "z");
    ARG_TENSOR(1, cb, "codebook");
    Node *src[2] = {z, cb};
    RESULT(finish(mk(E, OPK_VQ_INDEX, a->loc, 2, src)));
}

static int bi_take_argmax(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, x, "x");
    ARG_TENSOR(1, ids, "ids");
    Node *src[2] = {x, ids};
    RESULT(finish(mk(E, OPK_TAKE_ARGMAX, a->loc, 2, src)));
}

static int bi_vq_lookup(Eval *E, Args *a, Value *out) {
    ARG_TENSOR(0, cb, "codebook");
    ARG_TENSOR(1, idx, "indices");
    Node *src[2] = {cb, idx};
    RESULT(finish(mk(E, OPK_VQ_LOOKUP, a->loc, 2, src)));
}

static const Builtin builtins[] = {
    {"model_facts", "", bi_model_facts},
    {"len", "x", bi_len},
    {"range", "a,b=null,step=1", bi_range},
    {"has", "map,key", bi_has},
    {"get", "map,key,default=null", bi_get},
    {"min", "a,b", bi_min},
    {"max", "a,b", bi_max},
    {"int", "x", bi_int},
    {"float", "x", bi_float},
    {"str", "x", bi_str},
    {"type", "x", bi_type},
    {"weight", "name,shape", bi_weight},
    {"unused_weight", "name,shape", bi_unused_weight},
    {"conv2d", "x,w,b=null,stride=1,pad=0", bi_conv2d},
    {"linear", "x,w,b=null", bi_linear},
    {"matmul", "a,b,trans_b=false", bi_matmul},
    {"group_norm", "x,w,b,groups=32,eps", bi_group_norm},
    {"layer_norm", "x,w,b,eps=1e-5", bi_layer_norm},
    {"silu", "x", bi_silu},
    {"gelu", "x", bi_gelu},
    {"quick_gelu", "x", bi_quick_gelu},
    {"sigmoid", "x", bi_sigmoid},
    {"relu", "x", bi_relu},
    {"tanh", "x", bi_tanh},
    {"softmax", "x", bi_softmax},
    {"geglu", "x", bi_geglu},
    {"attention", "q,k,v,heads,scale,causal=false", bi_attention},
    {"upsample_nearest", "x,factor=2", bi_upsample},
    {"avg_pool2d", "x,k=2", bi_avg_pool2d},
    {"concat", "xs,axis", bi_concat},
    {"timestep_embedding", "t,dim,max_period=10000", bi_timestep_embedding},
    {"embedding", "table,ids", bi_embedding},
    {"reshape", "x,shape", bi_reshape},
    {"permute", "x,perm", bi_permute},
    {"slice", "x,axis,start,end", bi_slice},
    {"vq_index", "z,codebook", bi_vq_index},
    {"vq_lookup", "codebook,indices", bi_vq_lookup},
    {"take_argmax", "x,ids", bi_take_argmax},
};
#define N_BUILTINS ((int)(sizeof builtins / sizeof builtins[0]))

/* ---- expressions --------------------------------------------------------- */

static int eval_expr(Eval *E, Env *env, Ast *a, Value *out);
static int exec_block(Eval *E, Env *env, Ast *blk);

/* Interpolate {name} in a string literal; {{ and }} are literal braces. */
static int eval_string(Eval *E, Env *env, Ast *a, Value *out) {
    const char *s = a->str;
    if (!strchr(s, '{') && !strchr(s, '}')) {
        *out = v_str(s);
        return 0;
    }
    size_t cap = strlen(s) + 64, n = 0;
    char *buf = ldm_xmalloc(cap);
    for (const char *p = s; *p;) {
        char piece[512];
        const char *add = piece;
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            piece[0] = p[0];
            piece[1] = 0;
            p += 2;
        } else if (*p == '{') {
            const char *e = strchr(p, '}');
            if (!e || e - p - 1 >= 128) {
                free(buf);
                return diag_error(a->loc, "unterminated {name} in string");
            }
            char name[128];
            memcpy(name, p + 1, (size_t)(e - p - 1));
            name[e - p - 1] = 0;
            Value *v = env_find(env, name);
            if (!v) {
                free(buf);
                return diag_error(a->loc, "unknown name '%s' in string interpolation", name);
            }
            if (v->k == V_DIM) {
                free(buf);
                return dim_error(v, a->loc);
            }
            value_fmt(v, piece, sizeof piece);
            p = e + 1;
        } else if (*p == '}') {
            free(buf);
            return diag_error(a->loc, "single '}' in string (write '}}')");
        } else {
            piece[0] = *p++;
            piece[1] = 0;
        }
        size_t k = strlen(add);
        if (n + k + 1 > cap) {
            cap = 2 * (n + k + 1);
            buf = ldm_xrealloc(buf, cap);
        }
        memcpy(buf + n, add, k);
        n += k;
    }
    buf[n] = 0;
    *out = v_str(ev_strdup(E, buf));
    free(buf);
    return 0;
}

static int values_equal(const Value *x, const Value *y) {
    if ((x->k == V_INT || x->k == V_FLOAT) && (y->k == V_INT || y->k == V_FLOAT)) {
        double a = x->k == V_INT ? (double)x->i : x->f, b = y->k == V_INT ? (double)y->i : y->f;
        return a == b;
    }
    if (x->k != y->k) return 0;
    switch (x->k) {
    case V_NULL: return 1;
    case V_BOOL: return x->i == y->i;
    case V_STR: return strcmp(x->s, y->s) == 0;
    case V_LIST:
        if (x->list->n != y->list->n) return 0;
        for (int i = 0; i < x->list->n; i++)
            if (!values_equal(&x->list->v[i], &y->list->v[i])) return 0;
        return 1;
    case V_MAP: return x->m == y->m;
    case V_TENSOR: return x->t == y->t;
    default: return 0;
    }
}

/* tensor (op) number: scale nodes; tensor (op) tensor: elementwise nodes. */
static int tensor_arith(Eval *E, int op, const Value *x, const Value *y, SrcLoc loc, Value *out) {
    if (x->k == V_TENSOR && y->k == V_TENSOR) {
        OpKind k = op == '+' ? OPK_ADD : op == '-' ? OPK_SUB : op == '*' ? OPK_MUL : OPK_COUNT;
        if (k == OPK_COUNT) return diag_error(loc, "operator not defined on two tensors");
        Node *src[2] = {x->t, y->t};
        Node *n = finish(mk(E, k, loc, 2, src));
        if (!n) return -1;
        *out = v_tensor(n);
        return 0;
    }
    const Value *t = x->k == V_TENSOR ? x : y, *s = x->k == V_TENSOR ? y : x;
    double c = 0;
    if (want_num(s, loc, "the other operand of a tensor", &c)) return -1;
    double alpha = 1, beta = 0;
    int tensor_left = x->k == V_TENSOR;
    switch (op) {
    case '+': beta = c; break;
    case '-': if (tensor_left) beta = -c; else { alpha = -1; beta = c; } break;
    case '*': alpha = c; break;
    case '/':
        if (!tensor_left) return diag_error(loc, "number / tensor is not supported");
        if (c == 0) return diag_error(loc, "division of a tensor by zero");
        alpha = 1.0 / c;
        break;
    default: return diag_error(loc, "operator not defined between a tensor and a number");
    }
    Node *n = mk(E, OPK_SCALE, loc, 1, (Node *[]){t->t});
    n->alpha = alpha;
    n->beta = beta;
    if (!finish(n)) return -1;
    *out = v_tensor(n);
    return 0;
}

/* Arithmetic with a run-time size: times a positive integer, or divided
 * exactly (by a divisor of its coefficient); anything else needs its value. */
static int dim_arith(Ast *a, const Value *x, const Value *y, Value *out) {
    const Value *d = x->k == V_DIM ? x : y, *o = x->k == V_DIM ? y : x;
    SrcLoc dloc = x->k == V_DIM ? a->a->loc : a->b->loc, oloc = x->k == V_DIM ? a->b->loc : a->a->loc;
    if (a->op == '*' && o->k == V_DIM) {
        char b1[64], b2[64];
        dim_fmt(x, b1, sizeof b1);
        dim_fmt(y, b2, sizeof b2);
        return diag_error(a->loc, "%s * %s: a product of two run-time sizes is not supported", b1, b2);
    }
    if (a->op == '*' && o->k == V_INT) {
        if (o->i < 1) return diag_error(oloc, "a run-time size can only be multiplied by a positive integer, got %lld", (long long)o->i);
        if (__builtin_mul_overflow(d->i, o->i, &out->i)) return diag_error(a->loc, "integer overflow");
        *out = v_dim(d->ext, out->i);
        return 0;
    }
    if (a->op == OP_FLOORDIV && d == x && o->k == V_INT) {
        char b[64];
        dim_fmt(d, b, sizeof b);
        if (o->i < 1 || d->i % o->i)
            return diag_error(oloc, "%s // %lld is not exact for every run-time value (divide by a divisor of %lld)", b,
                              (long long)o->i, (long long)d->i);
        *out = v_dim(d->ext, d->i / o->i);
        return 0;
    }
    (void)oloc;
    return dim_error(d, dloc);
}

static int eval_binary(Eval *E, Env *env, Ast *a, Value *out) {
    Value x = {0}, y = {0};
    if (a->op == OP_AND || a->op == OP_OR) {
        int t = 0;
        if (eval_expr(E, env, a->a, &x) || truthy(&x, a->a->loc, &t)) return -1;
        if ((a->op == OP_AND && !t) || (a->op == OP_OR && t)) {
            *out = v_bool(t);
            return 0;
        }
        if (eval_expr(E, env, a->b, &y) || truthy(&y, a->b->loc, &t)) return -1;
        *out = v_bool(t);
        return 0;
    }
    if (eval_expr(E, env, a->a, &x) || eval_expr(E, env, a->b, &y)) return -1;
    if (x.k == V_DIM || y.k == V_DIM) return dim_arith(a, &x, &y, out);
    const Value *dx = find_dim(&x), *dy = find_dim(&y);
    if (dx || dy) return dim_error(dx ? dx : dy, dx ? a->a->loc : a->b->loc);
    switch (a->op) {
    case OP_EQ: *out = v_bool(values_equal(&x, &y)); return 0;
    case OP_NE: *out = v_bool(!values_equal(&x, &y)); return 0;
    case OP_IN:
        if (y.k == V_LIST) {
            int found = 0;
            for (int i = 0; i < y.list->n && !found; i++) found = values_equal(&x, &y.list->v[i]);
            *out = v_bool(found);
            return 0;
        }
        if (y.k == V_MAP && x.k == V_STR) {
            *out = v_bool(cfg_get(y.m, x.s) != NULL);
            return 0;
        }
        if (y.k == V_STR && x.k == V_STR) {
            *out = v_bool(strstr(y.s, x.s) != NULL);
            return 0;
        }
        return diag_error(a->loc, "'in' needs a list, map or string on the right, got %s", kind_name(y.k));
    }
    if (x.k == V_TENSOR || y.k == V_TENSOR) return tensor_arith(E, a->op, &x, &y, a->loc, out);
    if (a->op == '+' && x.k == V_STR && y.k == V_STR) {
        size_t lx = strlen(x.s), ly = strlen(y.s);
        char *s = ev_alloc(E, lx + ly + 1);
        memcpy(s, x.s, lx);
        memcpy(s + lx, y.s, ly + 1);
        *out = v_str(s);
        return 0;
    }
    if (a->op == '+' && x.k == V_LIST && y.k == V_LIST) {
        *out = v_list(E, x.list->n + y.list->n);
        for (int i = 0; i < x.list->n; i++) out->list->v[i] = x.list->v[i];
        for (int i = 0; i < y.list->n; i++) out->list->v[x.list->n + i] = y.list->v[i];
        return 0;
    }
    if (x.k == V_INT && y.k == V_INT) {
        int64_t p = x.i, q = y.i;
        int64_t r = 0;
        switch (a->op) {
        case '+':
            if (__builtin_add_overflow(p, q, &r)) return diag_error(a->loc, "integer overflow");
            *out = v_int(r);
            return 0;
        case '-':
            if (__builtin_sub_overflow(p, q, &r)) return diag_error(a->loc, "integer overflow");
            *out = v_int(r);
            return 0;
        case '*':
            if (__builtin_mul_overflow(p, q, &r)) return diag_error(a->loc, "integer overflow");
            *out = v_int(r);
            return 0;
        case '/':
            if (!q) return diag_error(a->loc, "division by zero");
            *out = v_float((double)p / (double)q);
            return 0;
        case OP_FLOORDIV:
        case '%': {
            if (!q) return diag_error(a->loc, "division by zero");
            if (p == INT64_MIN && q == -1) return diag_error(a->loc, "integer overflow");
            int64_t d = p / q, r = p % q;
            if (r && ((r < 0) != (q < 0))) { d--; r += q; } /* Python floor semantics */
            *out = v_int(a->op == '%' ? r : d);
            return 0;
        }
        case OP_POW:
            if (q >= 0) {
                /* exponentiation by squaring, refusing overflow */
                int64_t base = p, e = q;
                r = 1;
                while (e) {
                    if ((e & 1) && __builtin_mul_overflow(r, base, &r)) return diag_error(a->loc, "integer overflow");
                    e >>= 1;
                    if (e && __builtin_mul_overflow(base, base, &base)) return diag_error(a->loc, "integer overflow");
                }
                *out = v_int(r);
                return 0;
            }
            break;
        case '<': *out = v_bool(p < q); return 0;
        case '>': *out = v_bool(p > q); return 0;
        case OP_LE: *out = v_bool(p <= q); return 0;
        case OP_GE: *out = v_bool(p >= q); return 0;
        }
    }
    double p = 0, q = 0;
    if (want_num(&x, a->a->loc, "left operand", &p) || want_num(&y, a->b->loc, "right operand", &q)) return -1;
    switch (a->op) {
    case '+': *out = v_float(p + q); return 0;
    case '-': *out = v_float(p - q); return 0;
    case '*': *out = v_float(p * q); return 0;
    case '/':
        if (q == 0) return diag_error(a->loc, "division by zero");
        *out = v_float(p / q);
        return 0;
    case OP_FLOORDIV:
        if (q == 0) return diag_error(a->loc, "division by zero");
        *out = v_float(floor(p / q));
        return 0;
    case '%':
        if (q == 0) return diag_error(a->loc, "division by zero");
        *out = v_float(p - q * floor(p / q));
        return 0;
    case OP_POW: *out = v_float(pow(p, q)); return 0;
    case '<': *out = v_bool(p < q); return 0;
    case '>': *out = v_bool(p > q); return 0;
    case OP_LE: *out = v_bool(p <= q); return 0;
    case OP_GE: *out = v_bool(p >= q); return 0;
    }
    return diag_error(a->loc, "internal error: operator %d", a->op);
}

/* Bind call arguments to a builtin's declared parameter list. */
static int bind_builtin_args(Eval *E, Env *env, const Builtin *b, Ast *call, Args *args) {
    const char *names[8];
    const char *defaults[8];
    int np = 0;
    char spec[256];
    snprintf(spec, sizeof spec, "%s", b->params);
    for (char *tok = strtok(spec, ","); tok && np < 8; tok = strtok(NULL, ",")) {
        char *eq = strchr(tok, '=');
        if (eq) *eq = 0;
        names[np] = ev_strdup(E, tok);
        defaults[np] = eq ? ev_strdup(E, eq + 1) : NULL;
        np++;
    }
    memset(args, 0, sizeof *args);
    args->loc = call->loc;
    int pos = 0;
    for (int i = 0; i < call->items.n; i++) {
        Ast *arg = call->items.v[i];
        int slot;
        if (arg->kind == A_KWARG) {
            for (slot = 0; slot < np && strcmp(names[slot], arg->name); slot++) {}
            if (slot == np) return diag_error(arg->loc, "%s() has no parameter '%s' (parameters: %s)", b->name, arg->name, b->params);
            arg = arg->a;
        } else {
            slot = pos++;
            if (slot >= np)
                return diag_error(arg->loc, "%s() takes at most %d argument%s (%s)", b->name, np, np == 1 ? "" : "s", b->params);
        }
        if (args->given[slot]) return diag_error(call->items.v[i]->loc, "%s(): parameter '%s' given twice", b->name, names[slot]);
        if (eval_expr(E, env, arg, &args->v[slot])) return -1;
        args->given[slot] = 1;
    }
    for (int i = 0; i < np; i++) {
        if (args->given[i]) continue;
        if (!defaults[i]) return diag_error(call->loc, "%s(): missing argument '%s' (parameters: %s)", b->name, names[i], b->params);
        if (strcmp(defaults[i], "null") == 0) args->v[i] = v_null();
        else if (strcmp(defaults[i], "false") == 0) args->v[i] = v_bool(0);
        else if (strcmp(defaults[i], "true") == 0) args->v[i] = v_bool(1);
        else if (strpbrk(defaults[i], ".e")) args->v[i] = v_float(strtod(defaults[i], NULL));
        else args->v[i] = v_int(strtoll(defaults[i], NULL, 10));
    }
    return 0;
}

static int call_def(Eval *E, Env *env, Ast *fn, Ast *call, Value *out) {
    Env *frame = env_new(E, E->globals);
    int np = fn->items.n;
    int given[64] = {0};
    if (np > 64) return diag_error(fn->loc, "too many parameters");
    int pos = 0;
    for (int i = 0; i < call->items.n; i++) {
        Ast *arg = call->items.v[i], *at = arg;
        int slot;
        if (arg->kind == A_KWARG) {
            for (slot = 0; slot < np && strcmp(fn->items.v[slot]->name, arg->name); slot++) {}
            if (slot == np) return diag_error(arg->loc, "%s() has no parameter '%s'", fn->name, arg->name);
            arg = arg->a;
        } else {
            slot = pos++;
            if (slot >= np) return diag_error(arg->loc, "%s() takes %d argument%s", fn->name, np, np == 1 ? "" : "s");
        }
        if (given[slot]) return diag_error(at->loc, "%s(): parameter '%s' given twice", fn->name, fn->items.v[slot]->name);
        Value v = {0};
        if (eval_expr(E, env, arg, &v)) return -1;
        env_bind(E, frame, fn->items.v[slot]->name, v);
        given[slot] = 1;
    }
    for (int i = 0; i < np; i++) {
        if (given[i]) continue;
        Ast *p = fn->items.v[i];
        if (!p->a) return diag_error(call->loc, "%s(): missing argument '%s'", fn->name, p->name);
        Value v = {0};
        if (eval_expr(E, E->globals, p->a, &v)) return -1;
        env_bind(E, frame, p->name, v);
    }
    if (++E->depth > 200) return diag_error(call->loc, "calls nested too deeply (recursion?)");
    E->ret = v_null();
    if (E->n_calls == E->cap_calls) {
        E->cap_calls = E->cap_calls ? 2 * E->cap_calls : 16;
        E->calls = ldm_xrealloc(E->calls, (size_t)E->cap_calls * sizeof *E->calls);
    }
    char at[512];
    prov_loc(call->loc, at, sizeof at);
    char *frame_name = ldm_xasprintf("%s %s", at, fn->name);
    E->calls[E->n_calls++] = ev_strdup(E, frame_name);
    free(frame_name);
    int rc = exec_block(E, frame, fn->b);
    E->n_calls--;
    E->depth--;
    if (rc < 0) {
        if (E->depth < 12) diag_note(call->loc, "in the call of %s() from here", fn->name);
        return -1;
    }
    *out = E->ret;
    E->ret = v_null();
    return 0;
}

static int eval_call(Eval *E, Env *env, Ast *a, Value *out) {
    Value f = {0};
    if (eval_expr(E, env, a->a, &f)) return -1;
    if (f.k == V_FUNC) return call_def(E, env, f.fn, a, out);
    if (f.k != V_BUILTIN) return diag_error(a->loc, "%s is not callable", a_kind(f.k));
    const Builtin *b = &builtins[f.builtin];
    Args args;
    if (bind_builtin_args(E, env, b, a, &args)) return -1;
    return b->fn(E, &args, out);
}

static int eval_member(Eval *E, Env *env, Ast *a, Value *out) {
    Value x = {0};
    if (eval_expr(E, env, a->a, &x)) return -1;
    if (x.k == V_MAP) {
        const CfgNode *c = cfg_get(x.m, a->name);
        if (!c) {
            if (x.m->file)
                return diag_error(a->loc, "the config has no key '%s' in the mapping at %s:%d", a->name, x.m->file, x.m->line);
            return diag_error(a->loc, "the config has no key '%s'", a->name);
        }
        *out = cfg_value(E, c);
        return 0;
    }
    if (x.k == V_TENSOR && strcmp(a->name, "shape") == 0) {
        *out = v_list(E, x.t->ndim);
        for (int i = 0; i < x.t->ndim; i++) {
            int k = x.t->dyn[i] - 1;
            out->list->v[i] = k < 0 ? v_int(x.t->shape[i]) : v_dim(k, x.t->shape[i] / E->g->extents[k].max);
        }
        return 0;
    }
    if (x.k == V_TENSOR && strcmp(a->name, "ndim") == 0) {
        *out = v_int(x.t->ndim);
        return 0;
    }
    return diag_error(a->loc, "%s has no member '%s'", a_kind(x.k), a->name);
}

static int eval_index(Eval *E, Env *env, Ast *a, Value *out) {
    Value x = {0}, i = {0};
    if (eval_expr(E, env, a->a, &x) || eval_expr(E, env, a->b, &i)) return -1;
    if (x.k == V_MAP) {
        const char *key = NULL;
        if (want_str(&i, a->b->loc, "map key", &key)) return -1;
        const CfgNode *c = cfg_get(x.m, key);
        if (!c) return diag_error(a->loc, "the config has no key '%s'", key);
        *out = cfg_value(E, c);
        return 0;
    }
    if (x.k != V_LIST) return diag_error(a->loc, "cannot index a %s", kind_name(x.k));
    int64_t k = 0;
    if (want_int(&i, a->b->loc, "index", &k)) return -1;
    if (k < 0) k += x.list->n;
    if (k < 0 || k >= x.list->n)
        return diag_error(a->loc, "index %lld out of range for a list of %d items", (long long)i.i, x.list->n);
    *out = x.list->v[k];
    return 0;
}

static int eval_slice(Eval *E, Env *env, Ast *a, Value *out) {
    Value x = {0}, v = {0};
    if (eval_expr(E, env, a->a, &x)) return -1;
    if (x.k != V_LIST) return diag_error(a->loc, "cannot slice a %s", kind_name(x.k));
    int64_t n = x.list->n, lo = 0, hi = n;
    if (a->b && (eval_expr(E, env, a->b, &v) || want_int(&v, a->b->loc, "slice start", &lo))) return -1;
    if (a->c && (eval_expr(E, env, a->c, &v) || want_int(&v, a->c->loc, "slice end", &hi))) return -1;
    if (lo < 0) lo += n;
    if (hi < 0) hi += n;
    lo = lo < 0 ? 0 : lo > n ? n : lo;
    hi = hi < lo ? lo : hi > n ? n : hi;
    *out = v_list(E, (int)(hi - lo));
    for (int64_t k = lo; k < hi; k++) out->list->v[k - lo] = x.list->v[k];
    return 0;
}

static int eval_expr(Eval *E, Env *env, Ast *a, Value *out) {
    switch (a->kind) {
    case A_INT: *out = v_int(a->ival); return 0;
    case A_FLOAT: *out = v_float(a->fval); return 0;
    case A_BOOL: *out = v_bool((int)a->ival); return 0;
    case A_NULL: *out = v_null(); return 0;
    case A_STR: return eval_string(E, env, a, out);
    case A_IDENT: {
        if (strcmp(a->name, "config") == 0 && !env_find(env, "config")) {
            if (!E->config) return diag_error(a->loc, "this graph reads the model config: pass --config FILE.yaml");
            *out = cfg_value(E, E->config);
            return 0;
        }
        Value *v = env_find(env, a->name);
        if (!v) return diag_error(a->loc, "unknown name '%s'", a->name);
        *out = *v;
        return 0;
    }
    case A_LIST: {
        Value l = v_list(E, a->items.n);
        for (int i = 0; i < a->items.n; i++)
            if (eval_expr(E, env, a->items.v[i], &l.list->v[i])) return -1;
        *out = l;
        return 0;
    }
    case A_CALL: return eval_call(E, env, a, out);
    case A_MEMBER: return eval_member(E, env, a, out);
    case A_INDEX: return eval_index(E, env, a, out);
    case A_SLICE: return eval_slice(E, env, a, out);
    case A_COND: {
        Value c = {0};
        int t = 0;
        if (eval_expr(E, env, a->a, &c) || truthy(&c, a->a->loc, &t)) return -1;
        return eval_expr(E, env, t ? a->b : a->c, out);
    }
    case A_UNARY: {
        Value x = {0};
        if (eval_expr(E, env, a->a, &x)) return -1;
        if (a->op == '!') {
            int t = 0;
            if (truthy(&x, a->loc, &t)) return -1;
            *out = v_bool(!t);
            return 0;
        }
        if (x.k == V_DIM) return dim_error(&x, a->a->loc);
        if (x.k == V_INT) *out = v_int(-x.i);
        else if (x.k == V_FLOAT) *out = v_float(-x.f);
        else if (x.k == V_TENSOR) return tensor_arith(E, '*', &x, &(Value){.k = V_INT, .i = -1}, a->loc, out);
        else return diag_error(a->loc, "cannot negate a %s", kind_name(x.k));
        return 0;
    }
    case A_BINARY: return eval_binary(E, env, a, out);
    case A_KWARG: return diag_error(a->loc, "keyword argument outside a call");
    default: return diag_error(a->loc, "internal error: not an expression");
    }
}

/* ---- statements ------------------------------------------------------------ */

/* 0: continue, 1: returned, -1: error */
static int exec_stmt(Eval *E, Env *env, Ast *s);

static int exec_block(Eval *E, Env *env, Ast *blk) {
    Env *inner = env_new(E, env);
    for (int i = 0; i < blk->items.n; i++) {
        int rc = exec_stmt(E, inner, blk->items.v[i]);
        if (rc) return rc;
    }
    return 0;
}

static const Define *find_define(Eval *E, const char *name, int *index) {
    for (int i = 0; i < E->opt->n_defines; i++)
        if (strcmp(E->opt->defines[i].name, name) == 0) {
            *index = i;
            return &E->opt->defines[i];
        }
    return NULL;
}

static int exec_input(Eval *E, Env *env, Ast *s) {
    DType dt;
    if (strcmp(s->str, "f32") == 0) dt = DT_F32;
    else if (strcmp(s->str, "i32") == 0) dt = DT_I32;
    else return diag_error(s->loc, "unknown input type '%s' (expected f32 or i32)", s->str);
    /* `input c = "ctrl.{j}": ...`: the variable c, the input named by the string */
    const char *name = s->name;
    if (s->b) {
        Value nv = {0};
        if (eval_expr(E, env, s->b, &nv) || want_str(&nv, s->b->loc, "input name", &name)) return -1;
    }
    for (int i = 0; i < E->g->n_inputs; i++)
        if (strcmp(E->g->inputs[i]->name, name) == 0) return diag_error(s->loc, "input '%s' declared twice", name);
    if (s->items.n > MAX_DIMS) return diag_error(s->loc, "input '%s' has more than %d dimensions", name, MAX_DIMS);
    Node *n = graph_add_here(E, OPK_INPUT, s->loc);
    n->name = ldm_xstrdup(name);
    n->dtype = dt;
    n->ndim = s->items.n;
    for (int i = 0; i < s->items.n; i++) {
        Value v = {0};
        if (eval_expr(E, env, s->items.v[i], &v)) return -1;
        if (v.k == V_DIM) {
            n->shape[i] = v.i * E->g->extents[v.ext].max;
            n->dyn[i] = (int8_t)(v.ext + 1);
        } else if (want_int(&v, s->items.v[i]->loc, "input dimension", &n->shape[i])) {
            return -1;
        }
        if (n->shape[i] < 1 || n->shape[i] > (1ll << 31))
            return diag_error(s->items.v[i]->loc, "input dimension must be in 1..2^31, got %lld", (long long)n->shape[i]);
    }
    n->input_index = E->g->n_inputs;
    E->g->inputs = ldm_xrealloc(E->g->inputs, (size_t)(E->g->n_inputs + 1) * sizeof *E->g->inputs);
    E->g->inputs[E->g->n_inputs++] = n;
    /* `let context = null; if st { input context: ...; }` declares it outside */
    Value *slot = env_find(env, s->name);
    if (slot && slot->k != V_FUNC && slot->k != V_BUILTIN) *slot = v_tensor(n);
    else env_bind(E, env, s->name, v_tensor(n));
    return 0;
}

/* param T <= max [step s];  a run-time extent: T is a run-time size of
 * 1 .. max (a multiple of s); -D T=N sets the maximum. */
static int exec_extent(Eval *E, Env *env, Ast *s) {
    int idx;
    Value v = {0};
    int64_t max = 0, step = 1;
    for (int i = 0; i < env->n; i++)
        if (strcmp(env->names[i], s->name) == 0) return diag_error(s->loc, "param '%s' is already defined", s->name);
    const Define *d = find_define(E, s->name, &idx);
    if (d) {
        char *end;
        long long m = strtoll(d->value, &end, 10);
        if (!*d->value || *end || m < 1)
            return diag_error(s->loc, "-D %s=%s: the maximum of a run-time extent must be a positive integer", d->name,
                              d->value);
        max = m;
        E->define_used[idx] = 1;
    } else {
        if (eval_expr(E, env, s->a, &v) || want_int(&v, s->a->loc, "the maximum of a run-time extent", &max)) return -1;
        if (max < 1)
            return diag_error(s->a->loc, "param %s: the maximum of a run-time extent must be at least 1, got %lld", s->name,
                              (long long)max);
    }
    if (s->b) {
        if (eval_expr(E, env, s->b, &v) || want_int(&v, s->b->loc, "the step of a run-time extent", &step)) return -1;
        if (step < 1) return diag_error(s->b->loc, "param %s: the step must be at least 1, got %lld", s->name, (long long)step);
        if (max % step)
            return diag_error(d ? s->loc : s->b->loc, "param %s: the step %lld does not divide the maximum %lld%s", s->name,
                              (long long)step, (long long)max, d ? " (set by -D)" : "");
    }
    if (E->g->n_extents >= 32) return diag_error(s->loc, "more than 32 run-time extents");
    int k = graph_add_extent(E->g, s->name, max, step, s->loc);
    env_bind(E, env, s->name, v_dim(k, 1));
    return 0;
}

static int exec_stmt(Eval *E, Env *env, Ast *s) {
    Value v = {0};
    switch (s->kind) {
    case S_LET:
        if (eval_expr(E, env, s->a, &v)) return -1;
        for (int i = 0; i < env->n; i++)
            if (strcmp(env->names[i], s->name) == 0) return diag_error(s->loc, "'%s' is already defined in this block", s->name);
        env_bind(E, env, s->name, v);
        return 0;
    case S_ASSIGN: {
        Value *slot = env_find(env, s->name);
        if (!slot || slot->k == V_BUILTIN || slot->k == V_FUNC)
            return diag_error(s->loc, "assignment to undefined variable '%s' (use let)", s->name);
        if (eval_expr(E, env, s->a, &v)) return -1;
        *env_find(env, s->name) = v;
        return 0;
    }
    case S_EXPR: return eval_expr(E, env, s->a, &v);
    case S_BLOCK: return exec_block(E, env, s);
    case S_IF: {
        int t = 0;
        if (eval_expr(E, env, s->a, &v) || truthy(&v, s->a->loc, &t)) return -1;
        if (t) return exec_block(E, env, s->b);
        if (s->c) return s->c->kind == S_IF ? exec_stmt(E, env, s->c) : exec_block(E, env, s->c);
        return 0;
    }
    case S_FOR: {
        if (eval_expr(E, env, s->a, &v)) return -1;
        if (v.k != V_LIST) return diag_error(s->a->loc, "for needs a list, got %s", kind_name(v.k));
        for (int i = 0; i < v.list->n; i++) {
            Env *it = env_new(E, env);
            env_bind(E, it, s->name, v.list->v[i]);
            int rc = exec_block(E, it, s->b);
            if (rc) return rc;
        }
        return 0;
    }
    case S_SCOPE: {
        const char *name = NULL;
        if (eval_expr(E, env, s->a, &v) || want_str(&v, s->a->loc, "scope name", &name)) return -1;
        if (E->n_scopes == E->cap_scopes) {
            E->cap_scopes = E->cap_scopes ? 2 * E->cap_scopes : 16;
            E->scopes = ldm_xrealloc(E->scopes, (size_t)E->cap_scopes * sizeof *E->scopes);
        }
        E->scopes[E->n_scopes++] = name;
        int rc = exec_block(E, env, s->b);
        E->n_scopes--;
        return rc;
    }
    case S_RETURN:
        if (eval_expr(E, env, s->a, &v)) return -1;
        E->ret = v;
        return 1;
    case S_ASSERT: {
        int t = 0;
        if (eval_expr(E, env, s->a, &v) || truthy(&v, s->a->loc, &t)) return -1;
        if (t) return 0;
        if (s->b) {
            Value m = {0};
            char b[512];
            if (eval_expr(E, env, s->b, &m)) return -1;
            value_fmt(&m, b, sizeof b);
            return diag_error(s->loc, "assertion failed: %s", b);
        }
        return diag_error(s->loc, "assertion failed");
    }
    case S_INPUT: return exec_input(E, env, s);
    case S_OUTPUT: {
        Node *t = NULL;
        const char *name = s->name;
        if (!name) { /* output "ctrl.{j}" = ...; */
            Value nv = {0};
            if (eval_expr(E, env, s->b, &nv) || want_str(&nv, s->b->loc, "output name", &name)) return -1;
        }
        if (eval_expr(E, env, s->a, &v) || want_tensor(&v, s->a->loc, "output", &t)) return -1;
        for (int i = 0; i < E->g->n_outputs; i++)
            if (strcmp(E->g->outputs[i].name, name) == 0) return diag_error(s->loc, "output '%s' declared twice", name);
        E->g->outputs = ldm_xrealloc(E->g->outputs, (size_t)(E->g->n_outputs + 1) * sizeof *E->g->outputs);
        E->g->outputs[E->g->n_outputs++] = (Output){ldm_xstrdup(name), t, s->loc};
        return 0;
    }
    case S_PARAM: {
        int idx;
        for (int i = 0; i < env->n; i++)
            if (strcmp(env->names[i], s->name) == 0) return diag_error(s->loc, "param '%s' is already defined", s->name);
        const Define *d = find_define(E, s->name, &idx);
        if (d) {
            CfgNode *c = cfg_scalar_from_text(d->value, "<command line>", 1, 1);
            if (!c) return diag_error(s->loc, "-D %s=%s: %s", d->name, d->value, ldm_last_error());
            if (c->kind == CFG_STRING || c->kind == CFG_MAP || c->kind == CFG_LIST || c->kind == CFG_NULL) {
                cfg_free(c);
                return diag_error(s->loc, "-D %s=%s: expected a number or a boolean", d->name, d->value);
            }
            v = cfg_value(E, c);
            cfg_free(c);
            E->define_used[idx] = 1;
        } else if (eval_expr(E, env, s->a, &v)) {
            return -1;
        }
        env_bind(E, env, s->name, v);
        return 0;
    }
    case S_EXTENT: return exec_extent(E, env, s);
    case S_PREFIX: {
        const char *p = NULL;
        if (eval_expr(E, env, s->a, &v) || want_str(&v, s->a->loc, "prefix", &p)) return -1;
        if (E->prefix_set) return diag_error(s->loc, "the prefix is declared twice");
        for (int i = 0; i < E->g->n_nodes; i++)
            if (E->g->nodes[i]->op == OPK_WEIGHT) return diag_error(s->loc, "the prefix must be declared before the first weight");
        free(E->g->prefix);
        E->g->prefix = ldm_xstrdup(p);
        E->prefix_set = 1;
        return 0;
    }
    default: return diag_error(s->loc, "internal error: not a statement");
    }
}

/* ---- entry point ----------------------------------------------------------- */

static void eval_free(Eval *E) {
    for (int i = 0; i < E->n_pool; i++) free(E->pool[i]);
    free(E->pool);
    free(E->scopes);
    free(E->calls);
    cfg_free(E->facts);
    free(E->define_used);
    cfg_free(E->config);
}

Graph *graph_build(Program *prog, const BuildOptions *opt) {
    Eval E = {0};
    E.opt = opt;
    E.define_used = ldm_xcalloc((size_t)opt->n_defines + 1, sizeof *E.define_used);
    Ast *graph = NULL;
    for (int i = 0; i < prog->decls.n; i++) {
        Ast *d = prog->decls.v[i];
        if (d->kind != D_GRAPH) continue;
        if (graph) {
            diag_error(d->loc, "a program has one graph; another was declared at %s", loc_str(graph->loc));
            eval_free(&E);
            return NULL;
        }
        graph = d;
    }
    if (!graph) {
        if (prog->n_files) ldm_fail("%s: error: no `graph NAME { ... }` declaration", prog->files[0]->path);
        else ldm_fail("error: no graph");
        eval_free(&E);
        return NULL;
    }
    if (opt->config_path) {
        E.config = cfg_load(opt->config_path);
        if (!E.config) {
            eval_free(&E);
            return NULL;
        }
    }
    /* -D with a dotted name overrides the config */
    for (int i = 0; i < opt->n_defines; i++) {
        if (!strchr(opt->defines[i].name, '.')) continue;
        if (!E.config) {
            ldm_fail("error: -D %s: overriding a config value needs --config", opt->defines[i].name);
            eval_free(&E);
            return NULL;
        }
        if (cfg_set_path(E.config, opt->defines[i].name, opt->defines[i].value) != 0) {
            eval_free(&E);
            return NULL;
        }
        E.define_used[i] = 1;
    }
    E.g = graph_new(graph->name);
    fmt_graph = E.g;
    E.globals = env_new(&E, NULL);
    for (int i = 0; i < N_BUILTINS; i++) env_bind(&E, E.globals, builtins[i].name, (Value){.k = V_BUILTIN, .builtin = i});
    for (int i = 0; i < prog->decls.n; i++) {
        Ast *d = prog->decls.v[i];
        if (d->kind != D_DEF) continue;
        if (env_find(E.globals, d->name) && env_find(E.globals, d->name)->k == V_FUNC) {
            diag_error(d->loc, "def %s is defined twice", d->name);
            goto fail;
        }
        env_bind(&E, E.globals, d->name, (Value){.k = V_FUNC, .fn = d});
    }
    int rc = exec_block(&E, E.globals, graph->b);
    if (rc < 0) goto fail;
    if (rc == 1) {
        diag_error(graph->loc, "`return` outside a def");
        goto fail;
    }
    for (int i = 0; i < opt->n_defines; i++)
        if (!E.define_used[i]) {
            ldm_fail("error: -D %s: graph '%s' has no param %s (dotted names override the config)",
                     opt->defines[i].name, graph->name, opt->defines[i].name);
            goto fail;
        }
    if (E.g->n_outputs == 0) {
        diag_error(graph->loc, "graph '%s' has no output", graph->name);
        goto fail;
    }
    Graph *g = E.g;
    E.g = NULL;
    eval_free(&E);
    return g;
fail:
    graph_free(E.g);
    eval_free(&E);
    return NULL;
}
