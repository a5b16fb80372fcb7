/*
 * test_passes.c - Check unit tests of the compiler's front end and passes,
 * calling the library directly: parse (program_parse_string), elaborate
 * (graph_build), dead code (pass_dead_code), views (pass_views), the memory
 * plan (pass_plan_memory, plan_validate), totals (graph_param_count,
 * graph_flops), shape inference (node_infer) with its diagnostics, and the
 * text dumps.
 *
 * Expected values are computed here independently: FLOPs and shapes by hand,
 * buffer lifetimes by a separate liveness walk, parameter counts of the real
 * SD v1 networks from their published sizes.
 */
#define _GNU_SOURCE
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"
#include "kernels.h"
#include "ldmc.h"
#include "testutil.h"

/* ------------------------------------------------------------------------
 * helpers
 * ------------------------------------------------------------------------ */

/* A built graph and the program its source locations point into. */
typedef struct Built {
    Program *prog;
    Graph *g;
} Built;

static void built_free(Built *b) {
    graph_free(b->g);
    program_free(b->prog);
    b->g = NULL;
    b->prog = NULL;
}

/* Parse and build `src` (named t.graph); defines is "H=8 W=16" or NULL.
 * Returns the graph or, when want_fail, NULL with the error in ldm_last_error. */
static Built build_ex(const char *src, const char *config, const char *defines, int want_fail) {
    Built b = {0};
    b.prog = program_parse_string("t.graph", src);
    if (!b.prog) {
        ck_assert_msg(want_fail, "parse failed: %s", ldm_last_error());
        return b;
    }
    Define defs[16];
    int nd = 0;
    char *copy = defines ? strdup(defines) : NULL;
    for (char *tok = copy ? strtok(copy, " ") : NULL; tok && nd < 16; tok = strtok(NULL, " ")) {
        char *eq = strchr(tok, '=');
        ck_assert(eq != NULL);
        *eq = 0;
        defs[nd].name = tok;
        defs[nd].value = eq + 1;
        nd++;
    }
    BuildOptions opt = {config, defs, nd};
    b.g = graph_build(b.prog, &opt);
    free(copy);
    if (want_fail) {
        ck_assert_msg(b.g == NULL, "graph_build succeeded, a failure was expected");
    } else {
        ck_assert_msg(b.g != NULL, "graph_build failed: %s", ldm_last_error());
    }
    return b;
}

static Built build(const char *src) { return build_ex(src, NULL, NULL, 0); }

/* The error text of building src (which must fail), copied. */
static char *build_error(const char *src) {
    Built b = build_ex(src, NULL, NULL, 1);
    char *e = strdup(ldm_last_error());
    built_free(&b);
    return e;
}

/* Dead code, kernel choice, views and the memory plan on the graph as built. */
static void run_passes(Graph *g) {
    pass_dead_code(g);
    pass_select_kernels(g); /* the kernels' scratch sizes */
    pass_views(g);
    ck_assert_msg(pass_plan_memory(g) == 0, "pass_plan_memory: %s", ldm_last_error());
}

/* The passes as the driver runs them: its own pass table (driver.c). */
static void run_driver_passes(Graph *g) {
    ck_assert_msg(ldmc_run_passes(g, 0, NULL) == 0, "ldmc_run_passes: %s", ldm_last_error());
}

/* The node computing output `name`. */
static Node *output_node(const Graph *g, const char *name) {
    for (int i = 0; i < g->n_outputs; i++)
        if (strcmp(g->outputs[i].name, name) == 0) return g->outputs[i].node;
    ck_abort_msg("no output '%s'", name);
    return NULL;
}

/* The INPUT node `name`. */
static Node *input_node(const Graph *g, const char *name) {
    for (int i = 0; i < g->n_inputs; i++)
        if (strcmp(g->inputs[i]->name, name) == 0) return g->inputs[i];
    ck_abort_msg("no input '%s'", name);
    return NULL;
}

static void expect_shape(const Node *n, int ndim, const int64_t *shape) {
    char b[128];
    ck_assert_msg(n->ndim == ndim && memcmp(n->shape, shape, (size_t)ndim * sizeof *shape) == 0,
                  "node %%%d %s has shape %s", n->id, op_names[n->op], shape_str(n, b, sizeof b));
}
#define EXPECT_SHAPE(n, ...)                                                                     \
    do {                                                                                         \
        static const int64_t s_[] = {__VA_ARGS__};                                               \
        expect_shape((n), (int)(sizeof s_ / sizeof s_[0]), s_);                                  \
    } while (0)

static int is_live_node(const Graph *g, const Node *n) {
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i] == n) return 1;
    return 0;
}

/* ------------------------------------------------------------------------
 * an independent check of a memory plan
 * ------------------------------------------------------------------------ */

/* The node owning the buffer of n, found by following reshapes (not by
 * reading n->storage, which is what pass_views computed). */
static const Node *root_of(const Node *n) {
    while (n->op == OPK_RESHAPE) n = n->src[0];
    return n;
}

typedef struct Interval {
    int64_t lo, hi;      /* bytes [lo, hi) */
    int t0, t1;          /* live during schedule steps [t0, t1] */
    const Node *node;    /* owner */
    int scratch;         /* the owner's workspace */
} Interval;

typedef struct PlanStats {
    int n_buffers;       /* activation buffers + workspaces */
    int64_t sum_aligned; /* sum of their sizes rounded up to 64 */
    int64_t peak_live;   /* largest total size live at one step */
} PlanStats;

/* Rebuild every buffer's lifetime from the schedule and check: each buffer
 * is 64-aligned and inside the arena; no two buffers live at the same step
 * share a byte; views own nothing. */
static PlanStats check_plan(const Graph *g, const char *what) {
    int n = g->n_nodes;
    /* schedule positions by id (ids are stable, not positions) */
    int *at = malloc((size_t)(g->next_id + 1) * sizeof *at);
    for (int i = 0; i <= g->next_id; i++) at[i] = -1;
    for (int i = 0; i < n; i++) at[g->nodes[i]->id] = i;
    int *last = malloc((size_t)n * sizeof *last);
    for (int i = 0; i < n; i++) last[i] = i;
    for (int i = 0; i < n; i++)
        for (int s = 0; s < g->nodes[i]->nsrc; s++) {
            const Node *r = root_of(g->nodes[i]->src[s]);
            int ri = at[r->id];
            if (ri < 0 || ri >= i) ck_abort_msg("%s: node %%%d reads %%%d, which runs later", what, g->nodes[i]->id, r->id);
            if (last[ri] < i) last[ri] = i;
        }
    for (int i = 0; i < g->n_outputs; i++) last[at[root_of(g->outputs[i].node)->id]] = n;

    /* a convolution may write its part of a channel concatenation in place:
     * check where, and that the concatenation is live from that write on */
    int *first = malloc((size_t)n * sizeof *first);
    for (int i = 0; i < n; i++) first[i] = i;
    for (int i = 0; i < n; i++) {
        const Node *x = g->nodes[i], *c = x->storage;
        if (c == root_of(x)) continue;
        if (x->op != OPK_CONV2D || c->op != OPK_CONCAT || c->axis != 1 || x->n_uses != 1)
            ck_abort_msg("%s: node %%%d stored in %%%d, expected %%%d", what, x->id, c->id, root_of(x)->id);
        int64_t before = -1, ch = 0, hw = x->shape[2] * x->shape[3];
        for (int s = 0; s < c->nsrc; s++) {
            if (c->src[s] == x) before = ch;
            ch += c->src[s]->shape[1];
        }
        ck_assert_msg(before >= 0 && x->into_offset == before * hw * 4 && x->out_gap == (ch - x->shape[1]) * hw,
                      "%s: %%%d written into %%%d at +%lld with gap %lld; its channels start at %lld of %lld", what,
                      x->id, c->id, (long long)x->into_offset, (long long)x->out_gap, (long long)before, (long long)ch);
        if (i < first[at[c->id]]) first[at[c->id]] = i;
    }
    Interval *iv = malloc((size_t)(2 * n + 1) * sizeof *iv);
    int nb = 0;
    PlanStats st = {0};
    for (int i = 0; i < n; i++) {
        const Node *x = g->nodes[i];
        int64_t ws = kernel_scratch_bytes(x);
        if (x->scratch_bytes != ws)
            ck_abort_msg("%s: node %%%d scratch %lld, kernel needs %lld", what, x->id, (long long)x->scratch_bytes,
                         (long long)ws);
        if (x->op != OPK_INPUT && x->op != OPK_WEIGHT && x->op != OPK_RESHAPE && x->storage == x) {
            ck_assert_msg(x->buf >= 0 && x->buf < g->n_plan, "%s: %%%d has no row in the plan", what, x->id);
            int64_t o = g->plan[x->buf].offset;
            iv[nb++] = (Interval){o, o + node_bytes(x), first[i], last[i], x, 0};
        }
        if (ws > 0) {
            ck_assert_msg(x->scratch_buf >= 0 && x->scratch_buf < g->n_plan, "%s: %%%d has no scratch row", what, x->id);
            int64_t o = g->plan[x->scratch_buf].offset;
            iv[nb++] = (Interval){o, o + ws, i, i, x, 1};
        }
    }
    for (int a = 0; a < nb; a++) {
        if (!(iv[a].lo >= 0 && iv[a].hi <= g->arena_bytes && iv[a].lo % 64 == 0))
            ck_abort_msg("%s: %s of %%%d at [%lld, %lld) is misaligned or outside the arena of %lld bytes", what,
                         iv[a].scratch ? "workspace" : "buffer", iv[a].node->id, (long long)iv[a].lo,
                         (long long)iv[a].hi, (long long)g->arena_bytes);
        st.sum_aligned += (iv[a].hi - iv[a].lo + 63) / 64 * 64;
        for (int b = a + 1; b < nb; b++) {
            int both_live = iv[a].t0 <= iv[b].t1 && iv[b].t0 <= iv[a].t1;
            int share = iv[a].lo < iv[b].hi && iv[b].lo < iv[a].hi;
            if (!(both_live && share)) continue; /* (no ck_assert per pair: each one costs a pipe write) */
            ck_abort_msg("%s: %s of %%%d [%lld,%lld) live %d..%d overlaps %s of %%%d [%lld,%lld) live %d..%d", what,
                         iv[a].scratch ? "workspace" : "buffer", iv[a].node->id, (long long)iv[a].lo,
                         (long long)iv[a].hi, iv[a].t0, iv[a].t1, iv[b].scratch ? "workspace" : "buffer",
                         iv[b].node->id, (long long)iv[b].lo, (long long)iv[b].hi, iv[b].t0, iv[b].t1);
        }
    }
    for (int t = 0; t <= n; t++) {
        int64_t live = 0;
        for (int a = 0; a < nb; a++)
            if (iv[a].t0 <= t && t <= iv[a].t1) live += iv[a].hi - iv[a].lo;
        if (live > st.peak_live) st.peak_live = live;
    }
    st.n_buffers = nb;
    ck_assert_msg(g->arena_bytes >= st.peak_live, "%s: arena %lld smaller than the %lld bytes live at once", what,
                  (long long)g->arena_bytes, (long long)st.peak_live);
    ck_assert_msg(g->naive_bytes == st.sum_aligned, "%s: naive_bytes %lld, the buffers add up to %lld", what,
                  (long long)g->naive_bytes, (long long)st.sum_aligned);
    free(iv);
    free(last);
    free(first);
    free(at);
    return st;
}

/* ------------------------------------------------------------------------
 * dead code
 * ------------------------------------------------------------------------ */

START_TEST(test_dead_code_removes_and_keeps_ids) {
    Built b = build("graph t {\n"
                    "    input x: f32[2, 4];\n"
                    "    input spare: f32[3];\n"
                    "    let w = weight(\"w\", [4, 4]);\n"
                    "    let unused_w = weight(\"unused\", [7]);\n"
                    "    let dead = silu(x);\n"
                    "    let h = linear(x, w);\n"
                    "    let dead2 = dead + h;\n"
                    "    output y = h + x;\n"
                    "}\n");
    Graph *g = b.g;
    /* as built: x spare w unused silu linear add(dead2) add(y) */
    ck_assert_int_eq(g->n_nodes, 8);
    pass_dead_code(g);
    ck_assert_int_eq(g->n_nodes, 5);
    static const OpKind ops[] = {OPK_INPUT, OPK_INPUT, OPK_WEIGHT, OPK_LINEAR, OPK_ADD};
    static const int ids[] = {0, 1, 2, 5, 7}; /* as built: ids are never renumbered */
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(g->nodes[i]->id, ids[i]);
        ck_assert_msg(g->nodes[i]->op == ops[i], "node %d is %s", i, op_names[g->nodes[i]->op]);
        for (int s = 0; s < g->nodes[i]->nsrc; s++) ck_assert(is_live_node(g, g->nodes[i]->src[s]));
    }
    ck_assert_str_eq(g->nodes[1]->name, "spare"); /* an unused input stays: it is the interface */
    ck_assert_int_eq(g->n_inputs, 2);
    ck_assert_int_eq(g->n_weights, 1);
    ck_assert_str_eq(g->weights[0]->name, "w");
    ck_assert_int_eq(g->weights[0]->weight_index, 0);
    ck_assert_int_eq(graph_param_count(g), 16);
    /* uses: x by linear and add; w by linear; linear by add; add by the output */
    ck_assert_int_eq(g->nodes[0]->n_uses, 2);
    ck_assert_int_eq(g->nodes[1]->n_uses, 0);
    ck_assert_int_eq(g->nodes[2]->n_uses, 1);
    ck_assert_int_eq(g->nodes[3]->n_uses, 1);
    ck_assert_int_eq(g->nodes[4]->n_uses, 1);
    ck_assert_ptr_eq(output_node(g, "y"), g->nodes[4]);
    ck_assert_ptr_eq(g->nodes[4]->src[0], g->nodes[3]);
    /* idempotent */
    pass_dead_code(g);
    ck_assert_int_eq(g->n_nodes, 5);
    ck_assert_int_eq(g->nodes[0]->n_uses, 2);
    built_free(&b);
}
END_TEST

START_TEST(test_weights_shared_once) {
    Built b = build("def Lin(x, name) {\n"
                    "    scope name { return linear(x, weight(\"weight\", [4, 4]), weight(\"bias\", [4])); }\n"
                    "}\n"
                    "graph t {\n"
                    "    prefix \"m.\";\n"
                    "    input x: f32[2, 4];\n"
                    "    let a = Lin(Lin(x, \"fc\"), \"fc\");\n"
                    "    scope \"s\" { a = Lin(a, \"fc\"); }\n"
                    "    output y = a + weight(\"fc.bias\", [4]);\n"
                    "}\n");
    Graph *g = b.g;
    run_passes(g);
    /* m.fc.weight and m.fc.bias (bound 2 + 1 times), m.s.fc.weight, m.s.fc.bias */
    ck_assert_int_eq(g->n_weights, 4);
    static const char *const keys[] = {"m.fc.weight", "m.fc.bias", "m.s.fc.weight", "m.s.fc.bias"};
    for (int i = 0; i < 4; i++) ck_assert_str_eq(g->weights[i]->name, keys[i]);
    ck_assert_int_eq(graph_param_count(g), 2 * (16 + 4));
    ck_assert_int_eq(g->weights[0]->n_uses, 2);
    ck_assert_int_eq(g->weights[1]->n_uses, 3);
    /* the two linears in scope fc read the very same weight node */
    const Node *l1 = NULL, *l2 = NULL;
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i]->op == OPK_LINEAR) {
            if (!l1) l1 = g->nodes[i];
            else if (!l2) l2 = g->nodes[i];
        }
    ck_assert(l1 && l2);
    ck_assert_ptr_eq(l1->src[1], l2->src[1]);
    built_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------
 * views
 * ------------------------------------------------------------------------ */

START_TEST(test_views_share_storage) {
    Built b = build("graph t {\n"
                    "    input x: f32[2, 6];\n"
                    "    let h = silu(x);\n"
                    "    let r2 = reshape(reshape(h, [3, 4]), [12]);\n"
                    "    let p = permute(reshape(h, [2, 3, 2]), [0, 2, 1]);\n"
                    "    let rx = reshape(x, [12]);\n"
                    "    output a = r2 + rx;\n"
                    "    output b = p;\n"
                    "}\n");
    Graph *g = b.g;
    run_passes(g);
    /* x silu reshape reshape reshape permute reshape add */
    ck_assert_int_eq(g->n_nodes, 8);
    Node **n = g->nodes;
    ck_assert_ptr_eq(n[1]->storage, n[1]);
    ck_assert_ptr_eq(n[2]->storage, n[1]);
    ck_assert_ptr_eq(n[3]->storage, n[1]); /* a view of a view: the root */
    ck_assert_ptr_eq(n[4]->storage, n[1]);
    ck_assert_ptr_eq(n[5]->storage, n[5]); /* permute copies */
    ck_assert_ptr_eq(n[6]->storage, n[0]); /* a view of an input */
    ck_assert_ptr_eq(n[7]->storage, n[7]);
    EXPECT_SHAPE(n[3], 12);
    EXPECT_SHAPE(n[5], 2, 2, 3);
    /* h is read through its views up to the add (step 7) */
    ck_assert_int_eq(g->plan[n[1]->buf].last, 7);
    PlanStats st = check_plan(g, "views");
    ck_assert_int_eq(st.n_buffers, 3); /* silu, permute, add */
    built_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------
 * memory plan
 * ------------------------------------------------------------------------ */

/* A deterministic pseudo-random generator for the program generator. */
static uint64_t rng_state;
static unsigned rnd(unsigned n) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)((rng_state >> 33) % n);
}

/* An operand: usually a recent value, sometimes any earlier one (long lives). */
static int pick(int nvals) {
    if (nvals <= 1) return 0;
    if (rnd(4) != 0) {
        int back = 1 + (int)rnd(nvals < 4 ? (unsigned)nvals : 4u);
        return nvals - back;
    }
    return (int)rnd((unsigned)nvals);
}

/* A random program over values v0.. all of shape [2, 8, 4, 4], mixing every
 * kind of buffer: elementwise ops, views, convolutions with and without a
 * workspace, attention (workspace), concat + slice, dead values, several
 * outputs, and patterns the driver fuses (conv + residual, GroupNorm + SiLU). */
static char *random_program(int n_stmts) {
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    fprintf(fp, "graph r {\n    input v0: f32[2, 8, 4, 4];\n    input v1: f32[2, 8, 4, 4];\n");
    int nv = 2;
    for (int s = 0; s < n_stmts; s++, nv++) {
        int a = pick(nv), c = pick(nv);
        fprintf(fp, "    let v%d = ", nv);
        switch (rnd(13)) {
        case 0: fprintf(fp, "silu(v%d);\n", a); break;
        case 1: fprintf(fp, "v%d + v%d;\n", a, c); break;
        case 2: fprintf(fp, "v%d * v%d;\n", a, c); break;
        case 3: fprintf(fp, "reshape(reshape(v%d, [2, 128]), [2, 8, 4, 4]);\n", a); break;
        case 4: fprintf(fp, "conv2d(v%d, weight(\"c%d.w\", [8, 8, 3, 3]), pad=1);\n", a, s); break;
        case 5: fprintf(fp, "conv2d(v%d, weight(\"p%d.w\", [8, 8, 1, 1]), weight(\"p%d.b\", [8]));\n", a, s, s); break;
        case 6: fprintf(fp, "slice(concat([v%d, v%d], 1), 1, 4, 12);\n", a, c); break;
        case 7: fprintf(fp, "v%d * 0.5 + 1;\n", a); break;
        case 8:
            fprintf(fp, "group_norm(v%d, weight(\"g%d.w\", [8]), weight(\"g%d.b\", [8]), groups=4, eps=1e-5);\n", a, s,
                    s);
            break;
        case 9: fprintf(fp, "permute(v%d, [0, 1, 3, 2]);\n", a); break;
        case 10: fprintf(fp, "conv2d(v%d, weight(\"r%d.w\", [8, 8, 3, 3]), pad=1) + v%d;\n", a, s, c); break;
        case 11:
            fprintf(fp, "silu(group_norm(v%d, weight(\"s%d.w\", [8]), weight(\"s%d.b\", [8]), groups=2, eps=1e-5));\n",
                    a, s, s);
            break;
        default:
            fprintf(fp,
                    "reshape(attention(reshape(v%d, [2, 8, 16]), reshape(v%d, [2, 8, 16]), reshape(v%d, [2, 8, 16]), "
                    "heads=2, scale=0.25), [2, 8, 4, 4]);\n",
                    a, c, a);
            break;
        }
    }
    int n_out = 1 + (int)rnd(3);
    fprintf(fp, "    output out0 = v%d;\n", nv - 1);
    for (int o = 1; o < n_out; o++) fprintf(fp, "    output out%d = v%d;\n", o, 2 + (int)rnd((unsigned)(nv - 2)));
    fprintf(fp, "}\n");
    fclose(fp);
    return buf;
}

START_TEST(test_plan_random_programs) {
    rng_state = 12345;
    int64_t total_arena = 0, total_naive = 0;
    int n_fused = 0;
    for (int k = 0; k < 40; k++) {
        int n_stmts = 5 + (int)rnd(60);
        char *src = random_program(n_stmts);
        Built b = build(src);
        if (k % 2) run_driver_passes(b.g); /* odd: fused and rescheduled as the driver does */
        else run_passes(b.g);
        ck_assert_msg(plan_validate(b.g) == 0, "plan_validate: %s\n%s", ldm_last_error(), src);
        char what[64];
        snprintf(what, sizeof what, "random program %d (%s)", k, k % 2 ? "fused" : "unfused");
        PlanStats st = check_plan(b.g, what);
        ck_assert_msg(b.g->arena_bytes <= st.sum_aligned, "%s: arena %lld > naive %lld", what,
                      (long long)b.g->arena_bytes, (long long)st.sum_aligned);
        if (n_stmts >= 20)
            ck_assert_msg(b.g->arena_bytes < st.sum_aligned, "%s: no memory reused (arena %lld)\n%s", what,
                          (long long)b.g->arena_bytes, src);
        total_arena += b.g->arena_bytes;
        total_naive += st.sum_aligned;
        for (int i = 0; i < b.g->n_nodes; i++) n_fused += b.g->nodes[i]->fused != NULL;
        built_free(&b);
        free(src);
    }
    ck_assert(total_arena < total_naive);
    ck_assert_msg(n_fused > 10, "only %d fused nodes: the fused schedules were hardly exercised", n_fused);
}
END_TEST

/* A chain where each value dies right after its reader: two buffers suffice. */
START_TEST(test_plan_chain_reuses_two_buffers) {
    Built b = build("graph t {\n"
                    "    input x: f32[1, 16, 4, 4];\n"
                    "    let h = x;\n"
                    "    for i in range(10) { h = silu(h); }\n"
                    "    output y = h;\n"
                    "}\n");
    run_passes(b.g);
    PlanStats st = check_plan(b.g, "chain");
    ck_assert_int_eq(st.n_buffers, 10);
    ck_assert_int_eq(st.sum_aligned, 10 * 1024);
    ck_assert_int_eq(b.g->arena_bytes, 2 * 1024);
    built_free(&b);
}
END_TEST

/* Build a real network at a small resolution and check its plan and sizes. */
static Built build_model(const char *graph, const char *defines, int driver_passes) {
    char path[256];
    snprintf(path, sizeof path, "models/sd1/%s.graph", graph);
    Built b = {0};
    b.prog = program_parse(path);
    ck_assert_msg(b.prog != NULL, "%s: %s", path, ldm_last_error());
    Define defs[8];
    int nd = 0;
    char *copy = strdup(defines);
    for (char *tok = strtok(copy, " "); tok; tok = strtok(NULL, " ")) {
        char *eq = strchr(tok, '=');
        *eq = 0;
        defs[nd++] = (Define){tok, eq + 1};
    }
    BuildOptions opt = {"models/sd1/v1-inference.yaml", defs, nd};
    b.g = graph_build(b.prog, &opt);
    free(copy);
    ck_assert_msg(b.g != NULL, "%s: %s", path, ldm_last_error());
    if (driver_passes) run_driver_passes(b.g);
    else run_passes(b.g);
    ck_assert_msg(plan_validate(b.g) == 0, "%s: %s", path, ldm_last_error());
    char what[128];
    snprintf(what, sizeof what, "%s (%s, %s)", graph, defines, driver_passes ? "fused" : "unfused");
    PlanStats st = check_plan(b.g, what);
    ck_assert_msg(b.g->arena_bytes < st.sum_aligned, "%s: arena %lld, naive %lld: nothing reused", what,
                  (long long)b.g->arena_bytes, (long long)st.sum_aligned);
    return b;
}

/* Published sizes of the SD v1 networks: UNet 859,520,964 parameters in 686
 * tensors; CLIP ViT-L/14 text model 123,060,480 in 196 tensors (12 layers x
 * 16 + 2 embeddings + final LayerNorm); AutoencoderKL 83,653,863 in 248. */
START_TEST(test_plan_sd_unet) {
    const int fused = _i;
    Built b = build_model("unet", "H=64 W=64", fused);
    ck_assert_int_eq(graph_param_count(b.g), 859520964);
    ck_assert_int_eq(b.g->n_weights, 686);
    /* the batch is a run-time extent of at most 2 (param B <= 2): shapes hold the maximum */
    EXPECT_SHAPE(output_node(b.g, "eps"), 2, 4, 8, 8);
    ck_assert_int_eq(output_node(b.g, "eps")->dyn[0], 1);
    built_free(&b);
    b = build_model("unet", "H=64 W=128 B=1", fused);
    EXPECT_SHAPE(output_node(b.g, "eps"), 1, 4, 8, 16);
    /* the context: [B, T, 768], T <= 77 * CHUNKS step 77 */
    EXPECT_SHAPE(b.g->inputs[2], 1, 77, 768);
    ck_assert(b.g->inputs[2]->dyn[0] == 1 && b.g->inputs[2]->dyn[1] == 2 && b.g->inputs[2]->dyn[2] == 0);
    ck_assert(b.g->n_extents == 2 && b.g->extents[1].max == 77 && b.g->extents[1].step == 77);
    ck_assert_int_eq(graph_param_count(b.g), 859520964);
    built_free(&b);
}
END_TEST

START_TEST(test_plan_sd_clip_vae) {
    const int fused = _i;
    Built b = build_model("clip_text", "B=1", fused);
    ck_assert_int_eq(graph_param_count(b.g), 123060480);
    ck_assert_int_eq(b.g->n_weights, 196);
    EXPECT_SHAPE(output_node(b.g, "hidden"), 1, 77, 768);
    /* hidden_skip [CLIP_SKIPS = 2, B, 77, 768]: CLIP skips 1 and 2 */
    ck_assert_int_eq(b.g->n_outputs, 2);
    EXPECT_SHAPE(output_node(b.g, "hidden_skip"), 2, 1, 77, 768);
    ck_assert_int_eq(output_node(b.g, "hidden_skip")->dyn[1], 1);
    if (fused) { /* the driver's passes (CSE) share skip 1's final LayerNorm with hidden */
        const Node *cat = output_node(b.g, "hidden_skip");
        ck_assert(cat->op == OPK_CONCAT && cat->nsrc == 2 && cat->src[0]->op == OPK_RESHAPE);
        ck_assert_msg(cat->src[0]->src[0] == output_node(b.g, "hidden"),
                      "skip 1 is not the node of hidden (CSE did not share the final LayerNorm)");
    }
    ck_assert(b.g->inputs[0]->dtype == DT_I32);
    built_free(&b);
    Built enc = build_model("vae_encoder", "H=64 W=64", fused);
    Built dec = build_model("vae_decoder", "H=64 W=64", fused);
    ck_assert_int_eq(graph_param_count(enc.g) + graph_param_count(dec.g), 83653863);
    ck_assert_int_eq(enc.g->n_weights + dec.g->n_weights, 248);
    EXPECT_SHAPE(output_node(enc.g, "moments"), 1, 8, 8, 8);
    EXPECT_SHAPE(output_node(dec.g, "image"), 1, 3, 64, 64);
    built_free(&enc);
    built_free(&dec);
}
END_TEST

/* plan_validate on a layout made by hand: it accepts a buffer sharing bytes
 * with one whose life is over, and rejects two live buffers (or a buffer and
 * a workspace) on the same bytes, a misaligned buffer and one outside the
 * arena. */
/* a node's result and scratch rows in the plan table */
#define OFF(n) g->plan[(n)->buf].offset
#define SOFF(n) g->plan[(n)->scratch_buf].offset

START_TEST(test_plan_validate_rejects_corruption) {
    Built b = build("graph t {\n"
                    "    input x: f32[1, 4, 4, 4];\n"
                    "    let a = silu(x);\n"                                      /* %1: live 1..3 */
                    "    let c = conv2d(a, weight(\"w\", [4, 4, 3, 3]), pad=1);\n" /* %3: 3..4, workspace 3..3 */
                    "    let d = silu(c);\n"                                      /* %4: 4..5 */
                    "    output y = silu(d);\n"                                   /* %5: 5..6 */
                    "}\n");
    Graph *g = b.g;
    pass_dead_code(g);
    pass_select_kernels(g);
    Node *a = g->nodes[1], *c = g->nodes[3], *d = g->nodes[4], *y = g->nodes[5];
    /* the select pass runs 4 output channels directly (no workspace): take
     * im2col, which needs one, so that the plan has a workspace to corrupt */
    c->algo = LDM_CONV_IM2COL;
    c->scratch_bytes = kernel_scratch_bytes(c);
    pass_views(g);
    ck_assert_msg(pass_plan_memory(g) == 0, "pass_plan_memory: %s", ldm_last_error());
    ck_assert(a->op == OPK_SILU && c->op == OPK_CONV2D && d->op == OPK_SILU && y->op == OPK_SILU);
    ck_assert_int_eq(node_bytes(a), 256);
    ck_assert(c->scratch_bytes > 0);
    /* a and y share [0, 256): a is dead (last read at 3) before y is born (5) */
    OFF(a) = 0;
    OFF(y) = 0;
    OFF(c) = 256;
    OFF(d) = 512;
    SOFF(c) = 768;
    g->arena_bytes = 768 + (c->scratch_bytes + 63) / 64 * 64;
    ck_assert_msg(plan_validate(g) == 0, "a valid hand-made plan rejected: %s", ldm_last_error());
    check_plan(g, "hand-made plan");

    /* c and d are both live at step 4 */
    OFF(d) = 256;
    ck_assert_int_eq(plan_validate(g), -1);
    ck_assert_msg(strstr(ldm_last_error(), "overlap") && strstr(ldm_last_error(), "%3") && strstr(ldm_last_error(), "%4"),
                  "message: %s", ldm_last_error());
    /* partly overlapping is overlapping */
    OFF(d) = 448;
    ck_assert_int_eq(plan_validate(g), -1);
    OFF(d) = 512;
    ck_assert_int_eq(plan_validate(g), 0);

    /* a and c: a is read by c at step 3, so both are live then */
    OFF(c) = 0;
    ck_assert_int_eq(plan_validate(g), -1);
    OFF(c) = 256;

    /* the workspace of c over c's own result, and over its input a */
    SOFF(c) = 256;
    ck_assert_int_eq(plan_validate(g), -1);
    ck_assert_ptr_ne(strstr(ldm_last_error(), "overlap"), NULL);
    SOFF(c) = 0;
    ck_assert_int_eq(plan_validate(g), -1);
    SOFF(c) = 768;
    ck_assert_int_eq(plan_validate(g), 0);

    /* misaligned, past the end of the arena, negative */
    OFF(y) = 4;
    ck_assert_int_eq(plan_validate(g), -1);
    OFF(y) = g->arena_bytes - 192;
    ck_assert_int_eq(plan_validate(g), -1);
    OFF(y) = -256;
    ck_assert_int_eq(plan_validate(g), -1);
    OFF(y) = 0;
    ck_assert_int_eq(plan_validate(g), 0);
    built_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------
 * FLOPs and parameter counts
 * ------------------------------------------------------------------------ */

START_TEST(test_flops_by_hand) {
    Built b = build("graph t {\n"
                    "    input x: f32[1, 4, 8, 8];\n"
                    "    input s: f32[2, 5, 6];\n"
                    "    input q: f32[2, 5, 8];\n"
                    "    input k: f32[2, 7, 8];\n"
                    "    input v: f32[2, 7, 12];\n"
                    "    output c1 = conv2d(x, weight(\"w1\", [8, 4, 3, 3]), weight(\"b1\", [8]), pad=1);\n"
                    "    output c2 = conv2d(x, weight(\"w2\", [6, 4, 3, 3]), stride=2, pad=1);\n"
                    "    output l = linear(s, weight(\"lw\", [7, 6]), weight(\"lb\", [7]));\n"
                    "    output a = attention(q, k, v, heads=4, scale=0.125);\n"
                    "    output m = matmul(q, k, trans_b=true);\n"
                    "    output e = q + q;\n"
                    "}\n");
    Graph *g = b.g;
    run_passes(g);
    /* conv: 2 * (N*O*Ho*Wo) * (C*kh*kw) */
    Node *c1 = output_node(g, "c1"), *c2 = output_node(g, "c2");
    EXPECT_SHAPE(c1, 1, 8, 8, 8);
    ck_assert_double_eq(node_flops(c1), 2.0 * (8 * 8 * 8) * (4 * 3 * 3)); /* 36864 */
    EXPECT_SHAPE(c2, 1, 6, 4, 4);                                         /* (8 + 2 - 3) / 2 + 1 = 4 */
    ck_assert_double_eq(node_flops(c2), 2.0 * (6 * 4 * 4) * (4 * 3 * 3)); /* 6912 */
    /* linear: 2 * rows * out * in */
    Node *l = output_node(g, "l");
    EXPECT_SHAPE(l, 2, 5, 7);
    ck_assert_double_eq(node_flops(l), 2.0 * (2 * 5) * 7 * 6); /* 840 */
    /* attention: q k^T (B Tq Tk C MACs) + p v (B Tq Tk Cv MACs), heads or not */
    Node *a = output_node(g, "a");
    EXPECT_SHAPE(a, 2, 5, 12);
    ck_assert_double_eq(node_flops(a), 2.0 * 2 * 5 * 7 * 8 + 2.0 * 2 * 5 * 7 * 12); /* 2800 */
    Node *m = output_node(g, "m");
    EXPECT_SHAPE(m, 2, 5, 7);
    ck_assert_double_eq(node_flops(m), 2.0 * (2 * 5 * 7) * 8); /* 1120 */
    Node *e = output_node(g, "e");
    ck_assert_double_eq(node_flops(e), 2 * 5 * 8); /* one op per element */
    ck_assert_double_eq(graph_flops(g), 36864 + 6912 + 840 + 2800 + 1120 + 80);
    ck_assert_int_eq(graph_param_count(g), 8 * 4 * 9 + 8 + 6 * 4 * 9 + 7 * 6 + 7);
    built_free(&b);
}
END_TEST

/* Fusion changes how the work is packaged, not how much there is: a fused
 * node counts the FLOPs of everything it folded in. */
START_TEST(test_flops_survive_fusion) {
    const char *src = "graph t {\n"
                      "    input x: f32[1, 4, 4, 4];\n"
                      "    input e: f32[1, 8];\n"
                      "    input s: f32[2, 5, 8];\n"
                      "    let h = silu(group_norm(x, weight(\"gn.w\", [4]), weight(\"gn.b\", [4]), groups=2, eps=1e-5));\n"
                      "    let c = conv2d(h, weight(\"c.w\", [8, 4, 3, 3]), pad=1) + reshape(e, [1, 8, 1, 1]);\n"
                      "    output y = conv2d(c, weight(\"r.w\", [8, 8, 1, 1])) + c;\n"
                      "    output z = geglu(linear(s, weight(\"l.w\", [12, 8])));\n"
                      "    let t = layer_norm(s, weight(\"ln.w\", [8]), weight(\"ln.b\", [8]), eps=1e-5);\n"
                      "    output q = linear(t, weight(\"q.w\", [4, 8]));\n"
                      "    output k = linear(t, weight(\"k.w\", [4, 8]), weight(\"k.b\", [4]));\n"
                      "    let u = layer_norm(s, weight(\"ln2.w\", [8]), weight(\"ln2.b\", [8]), eps=1e-5);\n"
                      "    output v = linear(u, weight(\"v.w\", [8, 8])) + u;\n"
                      "}\n";
    /* group_norm 64 + silu 64; conv 2*128*36 = 9216 + row add 128; conv 1x1
     * 2*128*8 = 2048 + residual add 128; linear 2*(2*5*12)*8 = 1920 + geglu 60;
     * layer_norm 80 + linears 2*(2*5*4)*8 = 640 twice; layer_norm 80 +
     * linear 2*(2*5*8)*8 = 1280 + residual add 80 */
    const double want = 64 + 64 + 9216 + 128 + 2048 + 128 + 1920 + 60 + 80 + 640 + 640 + 80 + 1280 + 80;
    Built b = build(src);
    run_passes(b.g);
    ck_assert_double_eq(graph_flops(b.g), want);
    built_free(&b);

    b = build(src);
    run_driver_passes(b.g);
    int silu = 0, rowadd = 0, residual = 0, geglu = 0, lnorm = 0, layer_norms = 0;
    for (int i = 0; i < b.g->n_nodes; i++) {
        const Node *n = b.g->nodes[i];
        /* t is read by linear layers only: both normalise s themselves; u is
         * also the residual of v's linear, so it stays a node */
        lnorm += n->op == OPK_LINEAR && n->pro_lnorm && n->src[0] == input_node(b.g, "s");
        layer_norms += n->op == OPK_LAYER_NORM;
        silu += n->op == OPK_GROUP_NORM && n->act == ACT_SILU;
        rowadd += n->op == OPK_CONV2D && n->ep_rowadd;
        residual += n->op == OPK_CONV2D && n->ep_residual;
        geglu += n->op == OPK_LINEAR && n->act == ACT_GEGLU;
    }
    ck_assert_msg(silu == 1 && rowadd == 1 && residual == 1 && geglu == 1, "fusions: %d %d %d %d", silu, rowadd,
                  residual, geglu);
    ck_assert_msg(lnorm == 2 && layer_norms == 1, "layer_norm+linear: %d fused readers, %d layer_norm nodes left", lnorm,
                  layer_norms);
    EXPECT_SHAPE(output_node(b.g, "z"), 2, 5, 6);
    check_plan(b.g, "fused");
    char msg[512] = "";
    for (int i = 0; i < b.g->n_nodes; i++) {
        char kn[64];
        size_t k = strlen(msg);
        snprintf(msg + k, sizeof msg - k, " %s=%g", node_kernel_name(b.g->nodes[i], kn, sizeof kn),
                 node_flops(b.g->nodes[i]));
    }
    ck_assert_msg(graph_flops(b.g) == want, "FLOPs after fusion %g, before %g:%s", graph_flops(b.g), want, msg);
    built_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------
 * shape inference diagnostics
 * ------------------------------------------------------------------------ */

typedef struct InferCase {
    const char *stmt;     /* statement on line 6 of the test graph */
    const char *at;       /* the text the caret must point at (first occurrence) */
    const char *message;  /* the message after "error: " (a prefix of it) */
} InferCase;

static const InferCase infer_cases[] = {
    {"output y = conv2d(a4, weight(\"w\", [8, 3, 3, 3]));", "conv2d",
     "conv2d: input [1,4,8,8] has 4 channels but weight [8,3,3,3] expects 3"},
    {"output y = conv2d(a4, weight(\"w\", [8, 4, 3, 3]), weight(\"b\", [4]));", "conv2d",
     "conv2d: bias must have shape [8], got [4]"},
    {"output y = conv2d(s, weight(\"w\", [8, 4, 3, 3]));", "conv2d", "conv2d: input must have rank 4, got [2,5,8]"},
    {"output y = conv2d(a4, weight(\"w\", [8, 4, 9, 9]));", "conv2d",
     "conv2d: kernel 9x9 larger than padded input 8x8"},
    {"output y = linear(s, weight(\"w\", [3, 7]));", "linear",
     "linear: input [2,5,8] has 8 features but weight [3,7] expects 7"},
    {"output y = linear(s, weight(\"w\", [3, 8, 1]));", "linear", "linear: weight must have rank 2, got [3,8,1]"},
    {"output y = matmul(s, a4);", "matmul",
     "matmul: operands must have the same rank >= 2, got [2,5,8] and [1,4,8,8]"},
    {"output y = matmul(s, s);", "matmul", "matmul: inner dimensions differ: [2,5,8] and [2,5,8]"},
    {"output y = matmul(s, reshape(s, [1, 10, 8]), trans_b=true);", "matmul",
     "matmul: batch dimensions differ: [2,5,8] and [1,10,8]"},
    {"output y = group_norm(a4, weight(\"w\", [4]), weight(\"b\", [4]), groups=3, eps=1e-5);", "group_norm",
     "group_norm: 4 channels of [1,4,8,8] are not divisible into 3 groups"},
    {"output y = group_norm(a4, weight(\"w\", [5]), weight(\"b\", [4]), groups=2, eps=1e-5);", "group_norm",
     "group_norm: weight must have shape [4], got [5]"},
    {"output y = layer_norm(s, weight(\"w\", [8]), weight(\"b\", [5]));", "layer_norm",
     "layer_norm: bias must have shape [8], got [5]"},
    {"output y = layer_norm(s, weight(\"w\", [8]), weight(\"b\", [8]), eps=0);", "layer_norm",
     "layer_norm: eps must be > 0"},
    {"output y = attention(s, reshape(s, [2, 8, 5]), s, heads=2, scale=1.0);", "attention",
     "attention: q [2,5,8], k [2,8,5], v [2,5,8] do not fit"},
    {"output y = attention(s, s, s, heads=3, scale=1.0);", "attention",
     "attention: 8 channels are not divisible into 3 heads"},
    {"output y = attention(s, concat([s, s], 1), concat([s, s], 1), heads=2, scale=1.0, causal=true);", "attention",
     "attention: a causal mask needs as many queries as keys"},
    {"output y = upsample_nearest(s, 2);", "upsample_nearest", "upsample_nearest: input must have rank 4, got [2,5,8]"},
    {"output y = upsample_nearest(a4, 0);", "upsample_nearest", "upsample_nearest: factor must be in 1..1024, got 0"},
    {"output y = s + a4;", "+", "add: shapes [2,5,8] and [1,4,8,8] do not broadcast"},
    {"output y = s - reshape(s, [5, 2, 8]);", "-", "sub: shapes [2,5,8] and [5,2,8] do not broadcast"},
    {"output y = s * reshape(ids, [2, 5, 1]);", "*", "mul: operands must be f32"},
    {"output y = concat([s, reshape(s, [2, 8, 5])], 1);", "concat", "concat: [2,5,8] and [2,8,5] differ outside axis 1"},
    {"output y = concat([s, a4], 0);", "concat", "concat: [2,5,8] and [1,4,8,8] differ outside axis 0"},
    {"output y = concat([s, s], 3);", "concat", "concat: axis 3 out of range"},
    {"output y = timestep_embedding(s, 8);", "timestep_embedding",
     "timestep_embedding: timesteps must have rank 1, got [2,5,8]"},
    {"output y = timestep_embedding(reshape(s, [80]), 1);", "timestep_embedding",
     "timestep_embedding: dim must be >= 2"},
    {"output y = embedding(weight(\"e\", [10, 4]), s);", "embedding", "embedding: ids must be i32"},
    {"output y = embedding(weight(\"e\", [10]), ids);", "embedding", "embedding: table must have rank 2, got [10]"},
    {"output y = reshape(s, [3, 5]);", "reshape", "reshape: [2,5,8] has 80 elements, the new shape 15"},
    {"output y = reshape(s, [0, 80]);", "reshape", "reshape: bad dimension 0"},
    {"output y = permute(s, [0, 1, 1]);", "permute", "permute: not a permutation of 3 dimensions"},
    {"output y = permute(s, [0, 1]);", "permute", "permute: 2 axes given for a rank-3 tensor"},
    {"output y = slice(s, 1, 3, 6);", "slice", "slice: range [3, 6) is outside [0, 5)"},
    {"output y = slice(s, 1, 3, 3);", "slice", "slice: range [3, 3) is outside [0, 5)"},
    {"output y = slice(s, 5, 0, 1);", "slice", "slice: axis 5 out of range"},
    {"output y = geglu(reshape(s, [2, 8, 5]));", "geglu", "geglu: last dimension of [2,8,5] must be even"},
    {"output y = softmax(ids);", "softmax", "softmax: input must be f32"},
    {"output y = vq_index(a4, weight(\"cb\", [16, 3]));", "vq_index",
     "vq_index: z [1,4,8,8] has 4 channels, codebook [16,3] rows have 3"},
    {"output y = vq_lookup(weight(\"cb\", [16, 4]), reshape(s, [2, 5, 8]));", "vq_lookup",
     "vq_lookup: indices must be i32"},
    {"output y = vq_lookup(weight(\"cb\", [16, 4]), ids);", "vq_lookup",
     "vq_lookup: indices must have rank 3, got [2,5]"},
};

START_TEST(test_infer_error_locations) {
    const InferCase *c = &infer_cases[_i];
    char *src = NULL;
    ck_assert(asprintf(&src,
                       "graph t {\n"
                       "    input a4: f32[1, 4, 8, 8];\n"
                       "    input s: f32[2, 5, 8];\n"
                       "    input ids: i32[2, 5];\n"
                       "    # the statement under test:\n"
                       "    %s\n"
                       "}\n",
                       c->stmt) > 0);
    /* the statement is indented by 4: its column is 4 + the offset in stmt */
    const char *at = strstr(c->stmt, c->at);
    ck_assert(at != NULL);
    int col = 5 + (int)(at - c->stmt);
    char *err = build_error(src);
    char *want = NULL;
    ck_assert(asprintf(&want, "t.graph:6:%d: error: %s", col, c->message) > 0);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "for '%s'\n expected: %s...\n got:      %s", c->stmt, want,
                  err);
    /* then the source line and a caret under the op (or operator) */
    char *line = NULL;
    ck_assert(asprintf(&line, "\n     6 |     %s\n       | %*s^", c->stmt, col - 1, "") > 0);
    ck_assert_msg(strstr(err, line) != NULL, "no caret at column %d in:\n%s", col, err);
    free(line);
    free(want);
    free(err);
    free(src);
}
END_TEST

/* node_infer called directly on hand-made nodes: the shape when the
 * operands fit, the diagnostic at the node's location when not. */
START_TEST(test_node_infer_direct) {
    SrcFile *f = src_from_string("h.graph", "# nodes\n  y = conv(x);\n");
    Graph *g = graph_new("h");
    SrcLoc none = {0};
    Node *x = graph_add(g, OPK_INPUT, none);
    x->ndim = 4;
    memcpy(x->shape, (int64_t[]){2, 3, 10, 7}, sizeof(int64_t[4]));
    Node *w = graph_add(g, OPK_WEIGHT, none);
    w->ndim = 4;
    memcpy(w->shape, (int64_t[]){5, 3, 3, 2}, sizeof(int64_t[4]));
    Node *c = graph_add(g, OPK_CONV2D, (SrcLoc){f, 2, 7, 11});
    c->src[0] = x;
    c->src[1] = w;
    c->nsrc = 2;
    c->stride[0] = 2;
    c->stride[1] = 1;
    c->pad[0] = 1, c->pad[1] = 0, c->pad[2] = 0, c->pad[3] = 1;
    ck_assert_msg(node_infer(c) == 0, "%s", ldm_last_error());
    /* H: (10 + 1 - 3) / 2 + 1 = 5; W: (7 + 1 - 2) / 1 + 1 = 7 */
    EXPECT_SHAPE(c, 2, 5, 5, 7);
    ck_assert_double_eq(node_flops(c), 2.0 * (2 * 5 * 5 * 7) * (3 * 3 * 2));

    w->shape[1] = 4;
    ck_assert_int_eq(node_infer(c), -1);
    ck_assert_str_eq(ldm_last_error(),
                     "h.graph:2:7: error: conv2d: input [2,3,10,7] has 3 channels but weight [5,4,3,2] expects 4\n"
                     "     2 |   y = conv(x);\n"
                     "       |       ^~~~");
    /* a node the compiler made itself has no location */
    c->loc = none;
    ck_assert_int_eq(node_infer(c), -1);
    ck_assert_str_eq(ldm_last_error(),
                     "error: conv2d: input [2,3,10,7] has 3 channels but weight [5,4,3,2] expects 4");
    graph_free(g);
    src_free(f);
}
END_TEST

/* ------------------------------------------------------------------------
 * front end and dumps
 * ------------------------------------------------------------------------ */

START_TEST(test_parse_errors) {
    const char *src = "graph t { let x = ; }";
    ck_assert_ptr_eq(program_parse_string("p.graph", src), NULL);
    char *want = NULL;
    ck_assert(asprintf(&want, "p.graph:1:%d: error: syntax error, unexpected ';'", (int)(strchr(src, ';') - src) + 1) > 0);
    ck_assert_msg(strncmp(ldm_last_error(), want, strlen(want)) == 0, "got %s", ldm_last_error());
    free(want);
    /* no graph declaration */
    Program *p = program_parse_string("p.graph", "def f(x) { return x; }\n");
    ck_assert(p != NULL);
    BuildOptions opt = {0};
    ck_assert_ptr_eq(graph_build(p, &opt), NULL);
    ck_assert_str_eq(ldm_last_error(), "p.graph: error: no `graph NAME { ... }` declaration");
    program_free(p);
}
END_TEST

START_TEST(test_build_defines) {
    const char *src = "graph t {\n    param H = 4;\n    param W = H * 2;\n    input x: f32[H, W];\n    output y = x;\n}\n";
    Built b = build_ex(src, NULL, "H=3", 0);
    EXPECT_SHAPE(b.g->inputs[0], 3, 6);
    built_free(&b);
    b = build_ex(src, NULL, "W=5 H=2", 0);
    EXPECT_SHAPE(b.g->inputs[0], 2, 5);
    built_free(&b);
    b = build_ex(src, NULL, "Q=1", 1);
    ck_assert_str_eq(ldm_last_error(), "error: -D Q: graph 't' has no param Q (dotted names override the config)");
    built_free(&b);
}
END_TEST

/* Which kernel each convolution gets: Winograd for a 3x3, stride 1, pad 1
 * conv from 4 tiles of 4x4 per sample (an 8x8 map, or 5x5) on, whatever
 * the batch; im2col below that, for strided convs and for other padding;
 * pointwise for 1x1; direct for at most 8 output channels. */
START_TEST(test_conv_algo_choice) {
    Built b = build("graph algos {\n"
                    "    input a: f32[2, 16, 4, 4];\n"
                    "    input c: f32[2, 16, 5, 5];\n"
                    "    input d: f32[1, 16, 8, 8];\n"
                    "    input e: f32[2, 16, 16, 16];\n"
                    "    let w = weight(\"w\", [16, 16, 3, 3]);\n"
                    "    let b = weight(\"b\", [16]);\n"
                    "    output y4 = conv2d(a, w, b, pad=1);\n"
                    "    output y5 = conv2d(c, w, b, pad=1);\n"
                    "    output y8 = conv2d(d, w, b, pad=1);\n"
                    "    output y16 = conv2d(e, w, b, pad=1);\n"
                    "    output s2 = conv2d(e, w, b, stride=2, pad=1);\n"
                    "    output p0 = conv2d(e, w, b);\n"
                    "    output pw = conv2d(e, weight(\"w1\", [16, 16, 1, 1]), b);\n"
                    "    output few = conv2d(e, weight(\"w8\", [8, 16, 3, 3]), weight(\"b8\", [8]), pad=1);\n"
                    "}\n");
    run_driver_passes(b.g);
    static const struct {
        const char *out;
        int algo;
    } want[] = {
        {"y4", LDM_CONV_IM2COL},  {"y5", LDM_CONV_WINOGRAD}, {"y8", LDM_CONV_WINOGRAD},  {"y16", LDM_CONV_WINOGRAD},
        {"s2", LDM_CONV_IM2COL},  {"p0", LDM_CONV_IM2COL},   {"pw", LDM_CONV_POINTWISE}, {"few", LDM_CONV_DIRECT},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const Node *n = output_node(b.g, want[i].out);
        ck_assert_ptr_nonnull(n);
        ck_assert_msg(n->op == OPK_CONV2D, "%s: op %d", want[i].out, n->op);
        ck_assert_msg(n->algo == want[i].algo, "%s: algo %d, want %d", want[i].out, n->algo, want[i].algo);
    }
    built_free(&b);
}
END_TEST

/* dump_graph / dump_plan / dump_dot of a small graph, written by hand. */
START_TEST(test_dumps) {
    Built b = build("graph small {\n"
                    "    prefix \"p.\";\n"
                    "    input x: f32[1, 2, 4, 4];\n"
                    "    let h = conv2d(x, weight(\"c.weight\", [3, 2, 1, 1]), weight(\"c.bias\", [3]));\n"
                    "    output y = reshape(silu(h), [1, 3, 16]);\n"
                    "}\n");
    run_driver_passes(b.g);
    ck_assert_str_eq(b.g->weights[0]->name, "p.c.weight");
    ck_assert_str_eq(b.g->weights[1]->name, "p.c.bias");
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    dump_graph(b.g, fp);
    fclose(fp);
    /* conv 1x1 (3 output channels: direct, no workspace): 2 * 48 outputs * 2 inputs = 192
     * FLOPs, silu 48: 240; two 192-byte buffers live together (conv until
     * silu runs, silu to the end) */
    ck_assert_str_eq(text, "graph small  prefix \"p.\"\n"
                           "%0 input x  -> f32[1,2,4,4]  @t.graph:3\n"
                           "%3 conv2d %0 c.weight c.bias  stride=1 pad=0,0,0,0 algo=direct  -> f32[1,3,4,4]  @t.graph:4\n"
                           "%4 silu %3  -> f32[1,3,4,4]  @t.graph:5\n"
                           "%5 reshape %4  -> f32[1,3,16] (view of %4)  @t.graph:5\n"
                           "output y = %5\n"
                           "# nodes 6 (ops 3, weights 2, inputs 1)  params 9  flops 2.4e-07 GFLOP\n"
                           "# arena 384 bytes (0.0 MiB), naive sum of buffers 384 bytes (0.0 MiB)\n");
    free(text);
    fp = open_memstream(&text, &len);
    dump_plan(b.g, fp);
    fclose(fp);
    ck_assert_str_eq(text, "plan small  arena 384 bytes  naive 384 bytes  strategy first-fit "
                           "(first-fit 384, best-fit 384, size-ordered 384)\n"
                           "# node        op                  offset        bytes   live\n"
                           "%3      conv2d                          0          192   3..4  [1,3,4,4]\n"
                           "%4      silu                          192          192   4..6  [1,3,4,4]\n"
                           "%5      reshape              view of %4\n"
                           /* x: 32 floats, read by the conv at step 3 */
                           "# inputs (the caller's buffers, outside the arena)\n"
                           "%0      input                           -          128   0..3  x [1,2,4,4]\n");
    free(text);
    fp = open_memstream(&text, &len);
    dump_dot(b.g, fp);
    fclose(fp);
    ck_assert_msg(strncmp(text, "digraph \"small\" {\n", 18) == 0, "%s", text);
    ck_assert_ptr_ne(strstr(text, "  n0 -> n3;\n"), NULL);
    ck_assert_ptr_ne(strstr(text, "  n3 -> n4;\n"), NULL);
    ck_assert_ptr_ne(strstr(text, "  n4 -> n5;\n"), NULL);
    ck_assert_ptr_ne(strstr(text, "  n5 -> out0;\n"), NULL);
    ck_assert_ptr_eq(strstr(text, "n1"), NULL); /* weights are not drawn */
    free(text);
    built_free(&b);
}
END_TEST

Suite *suite_passes(void) {
    Suite *s = suite_create("passes");
    TCase *tc = tcase_create("passes");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_dead_code_removes_and_keeps_ids);
    tcase_add_test(tc, test_weights_shared_once);
    tcase_add_test(tc, test_views_share_storage);
    tcase_add_test(tc, test_plan_random_programs);
    tcase_add_test(tc, test_plan_chain_reuses_two_buffers);
    /* iteration 0: the graph as built; 1: as the driver fuses it */
    tcase_add_loop_test(tc, test_plan_sd_unet, 0, 2);
    tcase_add_loop_test(tc, test_plan_sd_clip_vae, 0, 2);
    tcase_add_test(tc, test_plan_validate_rejects_corruption);
    tcase_add_test(tc, test_flops_by_hand);
    tcase_add_test(tc, test_flops_survive_fusion);
    suite_add_tcase(s, tc);
    TCase *fe = tcase_create("front end");
    tcase_add_loop_test(fe, test_infer_error_locations, 0, (int)(sizeof infer_cases / sizeof infer_cases[0]));
    tcase_add_test(fe, test_node_infer_direct);
    tcase_add_test(fe, test_parse_errors);
    tcase_add_test(fe, test_build_defines);
    tcase_add_test(fe, test_dumps);
    tcase_add_test(fe, test_conv_algo_choice);
    suite_add_tcase(s, fe);
    return s;
}
