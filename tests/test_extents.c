/*
 * test_extents.c - run-time extents (`param T <= 154 step 77;`).
 *
 * The property: for every op, the result at run-time extent n equals the
 * result of the same graph compiled for exactly n, to the bit. Each graph
 * of tests/extents/ (image ops with a run-time batch; sequence ops with a
 * run-time batch, sequence and key length) is compiled twice: as written
 * (run-time kernels, arena planned for the maxima) and with every
 * `param X <= ...;` replaced by `param X = n;` (the static kernels of
 * today, literal shapes). Both runners get the same random weights (ldmc
 * randckpt) and the same random inputs (--random-inputs: the values depend
 * only on the run-time shapes), the first at --extent X=n, and every output
 * must be the same bytes (memcmp).
 *
 * Bit-identical for every op, fused kernels included: the run-time kernels
 * make the same calls with the same shape structs (conv2d, attention,
 * group_norm, the GEMM) or run the same loops to the same bounds, and no
 * kernel choice depends on the run-time value (the conv algorithm is
 * chosen per sample; linear+geglu's row blocks are min(r, M) for the
 * maximum M, which cuts every smaller M where a graph compiled for it
 * would). Threads only split independent rows, samples or tiles.
 *
 * Also: every op that can carry a run-time dim appears in the graphs with
 * one (from --dump), and the runner refuses a bad --extent (exit 2).
 */
#define _GNU_SOURCE
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "testproc.h"
#include "util.h"

/* One graph of tests/extents/ and the values it is run at. */
typedef struct ExtCase {
    const char *name;        /* tests/extents/<name>.graph */
    const char *values[4];   /* "B=2", ...: run-time value of each extent */
} ExtCase;

static const ExtCase cases[] = {
    {"image", {"B=2"}},
    {"seq", {"B=2", "T=5", "S=8"}},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

static const char *ldmc_bin(void) {
    static char path[512];
    snprintf(path, sizeof path, "%s/ldmc", test_build_dir());
    return path;
}

/* The graph text with `param X <= ...;` made `param X = n;` for the values of c. */
static char *fixed_graph(const ExtCase *c, const char *text) {
    size_t cap = strlen(text) + 1024, n = 0;
    char *out = ldm_xmalloc(cap);
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line + 1) : strlen(line);
        const char *p = line;
        while (*p == ' ') p++;
        int done = 0;
        for (int v = 0; v < 4 && c->values[v] && !done; v++) {
            const char *eq = strchr(c->values[v], '=');
            char head[64];
            snprintf(head, sizeof head, "param %.*s <=", (int)(eq - c->values[v]), c->values[v]);
            if (!strncmp(p, head, strlen(head))) {
                n += (size_t)snprintf(out + n, cap - n, "    param %.*s = %s;\n", (int)(eq - c->values[v]),
                                      c->values[v], eq + 1);
                done = 1;
            }
        }
        if (!done) {
            memcpy(out + n, line, len);
            n += len;
        }
        line += len;
    }
    out[n] = 0;
    return out;
}

/* The scratch directory, made by the parent process (an unchecked
 * fixture): the runners built by the first test serve the later ones. */
static void ext_setup(void) { test_dir_init("ldm_ext_"); }

static void compile(const char *graph, const char *runner) {
    char *out = NULL;
    char *argv[] = {(char *)ldmc_bin(), (char *)graph, "-o", (char *)runner, NULL};
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "ldmc %s -o %s failed (%d):\n%s", graph, runner, rc, out);
    free(out);
}

/* Compile c both ways, make its weights: paths of the two runners. */
static void build_case(const ExtCase *c, char *dyn, char *fixed, char *weights) {
    test_dir_init("ldm_ext_");
    char rel[256], graph[PATH_MAX];
    snprintf(rel, sizeof rel, "tests/extents/%s.graph", c->name);
    ck_assert_msg(realpath(rel, graph), "%s not found (run from the repository root)", rel);
    snprintf(dyn, 512, "%s", test_tmp("%s_dyn", c->name));
    snprintf(fixed, 512, "%s", test_tmp("%s_fixed", c->name));
    snprintf(weights, 512, "%s", test_tmp("%s_w.safetensors", c->name));
    if (!test_exists(dyn)) compile(graph, dyn);
    if (!test_exists(fixed)) {
        size_t n;
        char *text = ldm_read_file(graph, &n);
        ck_assert_msg(text, "cannot read %s", graph);
        char *fx = fixed_graph(c, text);
        const char *fixed_graph_path = test_tmp("%s_fixed.graph", c->name);
        FILE *fp = fopen(fixed_graph_path, "w");
        ck_assert(fp);
        fputs(fx, fp);
        fclose(fp);
        free(text);
        free(fx);
        compile(fixed_graph_path, fixed);
    }
    if (!test_exists(weights)) {
        char *out = NULL;
        char *argv[] = {(char *)ldmc_bin(), "randckpt", "--seed", "3", "-o", weights, graph, NULL};
        int rc = test_run(argv, &out);
        ck_assert_msg(rc == 0, "ldmc randckpt %s failed (%d):\n%s", graph, rc, out);
        free(out);
    }
}

/* Run runner on random inputs (seed 11) with the given --extent values
 * (NULL: none); the outputs go to out. */
static void run_runner(const char *runner, const char *weights, const char *const *values, const char *out) {
    char *argv[32];
    int a = 0;
    argv[a++] = (char *)runner;
    argv[a++] = "--weights";
    argv[a++] = (char *)weights;
    argv[a++] = "--random-inputs";
    argv[a++] = "11";
    argv[a++] = "--outputs";
    argv[a++] = (char *)out;
    for (int v = 0; values && v < 4 && values[v]; v++) {
        argv[a++] = "--extent";
        argv[a++] = (char *)values[v];
    }
    argv[a] = NULL;
    char *log = NULL;
    int rc = test_run(argv, &log);
    ck_assert_msg(rc == 0, "%s failed (%d):\n%s", runner, rc, log);
    free(log);
}

/* Every output of `fixed` equals the one of the same name in `dyn`: shape, type and bytes. */
static void expect_same_outputs(const ExtCase *c, const char *dyn, const char *fixed) {
    StFile a = {0}, b = {0};
    ck_assert_msg(st_open(&a, dyn) == 0, "%s", ldm_last_error());
    ck_assert_msg(st_open(&b, fixed) == 0, "%s", ldm_last_error());
    ck_assert_msg(a.n_tensors == b.n_tensors && b.n_tensors > 0, "%s: %d outputs at run-time extents, %d fixed", c->name,
                  a.n_tensors, b.n_tensors);
    for (int i = 0; i < b.n_tensors; i++) {
        const StTensor *want = &b.tensors[i], *got = st_find(&a, want->name);
        ck_assert_msg(got, "%s: output %s missing", c->name, want->name);
        int same_shape = got->ndim == want->ndim && got->dtype == want->dtype;
        for (int d = 0; same_shape && d < want->ndim; d++) same_shape = got->shape[d] == want->shape[d];
        ck_assert_msg(same_shape && got->nbytes == want->nbytes, "%s: output %s has another shape or type at run time",
                      c->name, want->name);
        if (memcmp(got->data, want->data, want->nbytes) == 0) continue;
        size_t k = 0;
        while (k < want->nbytes && ((const char *)got->data)[k] == ((const char *)want->data)[k]) k++;
        float x = 0, y = 0;
        if (want->dtype == ST_F32) {
            memcpy(&x, (const char *)got->data + k / 4 * 4, 4);
            memcpy(&y, (const char *)want->data + k / 4 * 4, 4);
        }
        ck_abort_msg("%s: output %s at run-time extents differs from the graph compiled for them: element %zu is %.9g, "
                     "not %.9g",
                     c->name, want->name, k / 4, (double)x, (double)y);
    }
    st_close(&a);
    st_close(&b);
}

static void check_case(const ExtCase *c) {
    char dyn[512], fixed[512], weights[512];
    build_case(c, dyn, fixed, weights);
    const char *out_dyn = test_tmp("%s_out_dyn.safetensors", c->name);
    const char *out_fixed = test_tmp("%s_out_fixed.safetensors", c->name);
    run_runner(dyn, weights, c->values, out_dyn);
    run_runner(fixed, weights, NULL, out_fixed);
    expect_same_outputs(c, out_dyn, out_fixed);
}

START_TEST(test_image_ops_at_run_time_batch) { check_case(&cases[0]); }
END_TEST

START_TEST(test_sequence_ops_at_run_time_extents) { check_case(&cases[1]); }
END_TEST

/* Every op that can have a run-time dim has one in the graphs above. */
/* A sample's result does not depend on the batch it is computed in: the
 * image graph run at B=2 on two samples gives for the second one the same
 * bits as the graph run at B=1 on that sample alone. This is what makes
 * txt2img's --cfg-scale 1 (the UNet on the conditional sample alone) equal
 * to the cond half of a guided batch; it failed for im2col convolutions
 * with a bias before the batched im2col GEMM accumulated onto the epilogue
 * (runtime/conv.c). */
static uint64_t lcg_state;
static float lcg_uniform(void) {
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((lcg_state >> 40) & 0xffffff) / (float)0x1000000;
}

START_TEST(test_sample_independent_of_batch) {
    char dyn[512], fixed[512], weights[512];
    build_case(&cases[0], dyn, fixed, weights);
    /* the inputs of tests/extents/image.graph at B=2 (ids in 0..255, the
     * lookup's codebook), and the second sample alone at B=1 */
    static const struct { const char *name; int i32; int ndim; int64_t shape[4]; } ins[] = {
        {"x", 0, 4, {2, 6, 7, 5}},   {"xw", 0, 4, {2, 16, 15, 13}}, {"e", 0, 2, {2, 4}},
        {"r", 0, 4, {2, 4, 7, 5}},   {"t", 0, 1, {2}},              {"idx", 1, 3, {2, 7, 5}},
    };
    StWriter *w2 = st_writer_new(), *w1 = st_writer_new();
    void *bufs[16];
    int nb = 0;
    lcg_state = 7;
    for (size_t i = 0; i < sizeof ins / sizeof ins[0]; i++) {
        int64_t n = 1, s1[4];
        for (int d = 0; d < ins[i].ndim; d++) n *= ins[i].shape[d], s1[d] = ins[i].shape[d];
        s1[0] = 1;
        void *b = ldm_xmalloc((size_t)n * 4);
        for (int64_t k = 0; k < n; k++) {
            float u = lcg_uniform();
            if (ins[i].i32) ((int32_t *)b)[k] = (int32_t)(u * 256.0f) & 255;
            else ((float *)b)[k] = !strcmp(ins[i].name, "t") ? 999.0f * u : 4.0f * u - 2.0f;
        }
        st_writer_add(w2, ins[i].name, ins[i].i32 ? ST_I32 : ST_F32, ins[i].ndim, ins[i].shape, b);
        st_writer_add(w1, ins[i].name, ins[i].i32 ? ST_I32 : ST_F32, ins[i].ndim, s1, (char *)b + n / 2 * 4);
        bufs[nb++] = b;
    }
    const char *in2 = test_tmp("batch_in2.safetensors"), *in1 = test_tmp("batch_in1.safetensors");
    ck_assert(st_writer_save(w2, in2) == 0 && st_writer_save(w1, in1) == 0);
    st_writer_free(w2);
    st_writer_free(w1);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    const char *out2 = test_tmp("batch_out2.safetensors"), *out1 = test_tmp("batch_out1.safetensors");
    for (int b = 1; b <= 2; b++) {
        char ext[16];
        snprintf(ext, sizeof ext, "B=%d", b);
        char *argv[] = {dyn, "--weights", weights, "--inputs", (char *)(b == 2 ? in2 : in1), "--outputs",
                        (char *)(b == 2 ? out2 : out1), "--extent", ext, NULL};
        char *log = NULL;
        int rc = test_run(argv, &log);
        ck_assert_msg(rc == 0, "%s at %s failed (%d):\n%s", dyn, ext, rc, log);
        free(log);
    }
    StFile a = {0}, one = {0};
    ck_assert_msg(st_open(&a, out2) == 0 && st_open(&one, out1) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(a.n_tensors, one.n_tensors);
    for (int i = 0; i < one.n_tensors; i++) {
        const StTensor *s1 = &one.tensors[i], *s2 = st_find(&a, s1->name);
        ck_assert_msg(s2 && s2->nbytes == 2 * s1->nbytes, "output %s: not twice the size at B=2", s1->name);
        ck_assert_msg(memcmp((const char *)s2->data + s1->nbytes, s1->data, s1->nbytes) == 0,
                      "output %s: the second sample of a batch of 2 differs from that sample computed alone", s1->name);
    }
    st_close(&a);
    st_close(&one);
}
END_TEST

START_TEST(test_every_op_covered) {
    static const char *ops[] = {"conv2d", "linear", "matmul", "group_norm", "layer_norm", "silu", "gelu",
                                "quick_gelu", "sigmoid", "geglu", "softmax", "attention", "upsample_nearest",
                                "avg_pool2d", "add", "sub", "mul", "scale", "concat", "timestep_embedding",
                                "embedding", "reshape", "permute", "slice", "vq_index", "vq_lookup"};
    test_dir_init("ldm_ext_");
    char *dump = ldm_xstrdup("");
    for (int c = 0; c < N_CASES; c++) {
        char rel[256], *out = NULL;
        snprintf(rel, sizeof rel, "tests/extents/%s.graph", cases[c].name);
        char *graph = realpath(rel, NULL);
        ck_assert_msg(graph, "%s not found", rel);
        char *argv[] = {(char *)ldmc_bin(), graph, "--dump", NULL};
        ck_assert_msg(test_run(argv, &out) == 0, "ldmc --dump %s:\n%s", graph, out);
        free(graph);
        char *both = ldm_xasprintf("%s%s", dump, out);
        free(dump);
        free(out);
        dump = both;
    }
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        int found = 0;
        for (char *line = dump; line && *line && !found; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
            if (line[0] != '%') continue;
            const char *sp = strchr(line, ' '), *arrow = strstr(line, "-> ");
            const char *eol = strchr(line, '\n');
            if (!sp || !arrow || (eol && arrow > eol)) continue;
            /* the op chain "layer_norm+linear": one of its ops */
            char chain[96];
            snprintf(chain, sizeof chain, "+%.*s+", (int)strcspn(sp + 1, " "), sp + 1);
            char want[64];
            snprintf(want, sizeof want, "+%s+", ops[i]);
            const char *shape_end = strchr(arrow, ']');
            found = strstr(chain, want) && shape_end && memchr(arrow, '<', (size_t)(shape_end - arrow));
        }
        ck_assert_msg(found, "no %s node with a run-time dim in tests/extents/*.graph", ops[i]);
    }
    free(dump);
}
END_TEST

/* The runner refuses a bad --extent with exit status 2 and a message. */
static void expect_extent_error(const char *value, const char *want) {
    char dyn[512], fixed[512], weights[512];
    build_case(&cases[1], dyn, fixed, weights);
    char *out = NULL;
    char *argv[] = {dyn, "--weights", weights, "--random-inputs", "1", "--extent", (char *)value, NULL};
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 2 && strstr(out, want), "--extent %s: status %d (want 2), output:\n%s\n(want: %s)", value, rc,
                  out, want);
    free(out);
}

START_TEST(test_runner_extent_unknown) {
    expect_extent_error("X=2", "ext_seq has no run-time extent 'X' (its extents: B, T, S)");
}
END_TEST

START_TEST(test_runner_extent_out_of_range) {
    expect_extent_error("B=4", "ext_seq: extent B = 4 is out of range (1 <= B <= 3)");
    expect_extent_error("T=0", "ext_seq: extent T = 0 is out of range (1 <= T <= 9)");
}
END_TEST

START_TEST(test_runner_extent_not_multiple_of_step) {
    expect_extent_error("S=6", "ext_seq: extent S = 6 is not a multiple of its step 4 (S <= 12)");
}
END_TEST

START_TEST(test_runner_extent_malformed) {
    expect_extent_error("B", "--extent expects NAME=VALUE, got 'B'");
    expect_extent_error("B=two", "--extent B=two: the value must be an integer");
}
END_TEST

/* Inputs are checked against their run-time shapes. */
START_TEST(test_runner_input_shape_at_extent) {
    char dyn[512], fixed[512], weights[512];
    build_case(&cases[0], dyn, fixed, weights);
    /* the fixed graph's outputs are not inputs; write inputs of B = 3 and run at B = 2 */
    const char *in = test_tmp("image_in_b3.safetensors");
    StWriter *w = st_writer_new();
    float *x = ldm_xcalloc(3 * 16 * 15 * 13, sizeof *x);
    int32_t *idx = ldm_xcalloc(3 * 35, sizeof *idx);
    st_writer_add(w, "x", ST_F32, 4, (int64_t[]){3, 6, 7, 5}, x);
    st_writer_add(w, "xw", ST_F32, 4, (int64_t[]){3, 16, 15, 13}, x);
    st_writer_add(w, "e", ST_F32, 2, (int64_t[]){3, 4}, x);
    st_writer_add(w, "r", ST_F32, 4, (int64_t[]){3, 4, 7, 5}, x);
    st_writer_add(w, "t", ST_F32, 1, (int64_t[]){3}, x);
    st_writer_add(w, "idx", ST_I32, 3, (int64_t[]){3, 7, 5}, idx);
    ck_assert(st_writer_save(w, in) == 0);
    st_writer_free(w);
    free(x);
    free(idx);
    char *out = NULL;
    char *argv[] = {dyn, "--weights", weights, "--inputs", (char *)in, "--outputs", (char *)test_tmp("o.safetensors"),
                    "--extent", "B=2", NULL};
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 1 && strstr(out, "input 'x' has shape [3, 6, 7, 5], expected [2, 6, 7, 5]"), "status %d:\n%s",
                  rc, out);
    free(out);
    /* at B = 3 (the default: the maximum) the same file is right */
    char *argv3[] = {dyn, "--weights", weights, "--inputs", (char *)in, "--outputs", (char *)test_tmp("o.safetensors"),
                     NULL};
    rc = test_run(argv3, &out);
    ck_assert_msg(rc == 0, "status %d:\n%s", rc, out);
    free(out);
}
END_TEST

Suite *suite_extents(void) {
    Suite *s = suite_create("extents");
    TCase *tc = tcase_create("same_as_fixed");
    tcase_set_timeout(tc, 600);
    tcase_add_unchecked_fixture(tc, ext_setup, NULL);
    tcase_add_test(tc, test_image_ops_at_run_time_batch);
    tcase_add_test(tc, test_sequence_ops_at_run_time_extents);
    tcase_add_test(tc, test_every_op_covered);
    tcase_add_test(tc, test_sample_independent_of_batch);
    suite_add_tcase(s, tc);
    TCase *tr = tcase_create("runner");
    tcase_set_timeout(tr, 600);
    tcase_add_unchecked_fixture(tr, ext_setup, NULL);
    tcase_add_test(tr, test_runner_extent_unknown);
    tcase_add_test(tr, test_runner_extent_out_of_range);
    tcase_add_test(tr, test_runner_extent_not_multiple_of_step);
    tcase_add_test(tr, test_runner_extent_malformed);
    tcase_add_test(tr, test_runner_input_shape_at_extent);
    suite_add_tcase(s, tr);
    return s;
}
