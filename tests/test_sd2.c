/*
 * test_sd2.c - Stable Diffusion 2.x (issue 18) against ../shared/goldens/sd2-tiny:
 * the open_clip tokenizer conventions (tokens.jsonl, exact), the OpenCLIP
 * text tower (clip.io: layer penultimate, and layer last through a config
 * override), the UNet with linear transformer projections and
 * num_head_channels (unet.io), and the same graphs on configurations the
 * goldens do not have (consistency checks, suite sd2_graphs).
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <ftw.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "image.h"
#include "safetensors.h"
#include "testio.h"
#include "testproc.h"
#include "testutil.h"
#include "tokenizer.h"
#include "util.h"

/* "<shared>/goldens/sd2-tiny/<rel>" (static buffer per call site use). */
static const char *sd2(char *buf, size_t n, const char *rel) {
    snprintf(buf, n, "%s/goldens/sd2-tiny/%s", test_shared_dir(), rel);
    return buf;
}

/* Compile graph models/sd1/<graph>.graph for config (a path) with the
 * -D definitions defs (NULL-terminated) into the scratch dir as <name>:
 * 0, or ldmc's status with its output in *log. No Check assertions (it
 * runs in unchecked fixtures too). */
static int try_compile(const char *name, const char *graph, const char *config, const char *const *defs, char *out,
                       size_t n, char **log) {
    test_dir_init("ldm_sd2_");
    *log = NULL;
    if (!test_dir[0]) {
        *log = ldm_xstrdup("no scratch directory");
        return -1;
    }
    char ldmc[256], g[256];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    snprintf(g, sizeof g, "models/sd1/%s.graph", graph);
    snprintf(out, n, "%s/%s", test_dir, name);
    char *argv[40];
    int k = 0;
    argv[k++] = ldmc;
    argv[k++] = g;
    argv[k++] = "--config";
    argv[k++] = (char *)config;
    for (int i = 0; defs && defs[i] && k < 36; i++) {
        argv[k++] = "-D";
        argv[k++] = (char *)defs[i];
    }
    argv[k++] = "-o";
    argv[k++] = out;
    argv[k] = NULL;
    int rc = test_run(argv, log);
    if (rc == 0 && access(out, X_OK) != 0) rc = -1;
    return rc;
}

static void compile(const char *name, const char *graph, const char *config, const char *const *defs, char *out,
                    size_t n) {
    char *log;
    int rc = try_compile(name, graph, config, defs, out, n, &log);
    ck_assert_msg(rc == 0, "ldmc models/sd1/%s.graph --config %s failed (status %d):\n%s", graph, config, rc,
                  log ? log : "");
    free(log);
}

/* Run a graph runner on inputs (prefix may be NULL), outputs to out. */
static void run_runner(const char *prog, const char *weights, const char *inputs, const char *prefix,
                       const char *out) {
    char *argv[12];
    int k = 0;
    argv[k++] = (char *)prog;
    argv[k++] = "--weights";
    argv[k++] = (char *)weights;
    argv[k++] = "--inputs";
    argv[k++] = (char *)inputs;
    argv[k++] = "--outputs";
    argv[k++] = (char *)out;
    if (prefix) {
        argv[k++] = "--prefix";
        argv[k++] = (char *)prefix;
    }
    argv[k] = NULL;
    char *log;
    int rc = test_run(argv, &log);
    ck_assert_msg(rc == 0, "%s failed (status %d) on %s %s:\n%s", prog, rc, inputs, prefix ? prefix : "", log);
    free(log);
}

/* Output `ours` of file out against tensor `gname` of golden io within
 * the io file's tolerance for gname. */
static void check_close(const char *label, const char *io, const char *gname, const char *out, const char *ours) {
    int64_t na, nb;
    float *g = read_f32(io, gname, &na), *o = read_f32(out, ours, &nb);
    ck_assert_msg(na == nb, "%s: %s has %lld values, golden %s %lld", label, ours, (long long)nb, gname,
                  (long long)na);
    double lim = tolerance(io, gname), d = max_abs_diff(o, g, na);
    printf("sd2: %-24s %-16s max|ours - golden| = %.3g (tolerance %.3g)\n", label, gname, d, lim);
    fflush(stdout);
    ck_assert_msg(d <= lim, "%s: %s: max |ours - golden| = %.6g > tolerance %.6g", label, gname, d, lim);
    free(g);
    free(o);
}

/* ---- tokenizer ------------------------------------------------------------ */

/* tokens.jsonl: open_clip.tokenize ids, exactly, with clip_style_openclip;
 * and for every prompt the SD v1 style gives the same ids up to the first
 * end token and the end token after it (the one difference is the padding). */
START_TEST(test_sd2_tokens) {
    char path[512];
    sd2(path, sizeof path, "tokens.jsonl");
    ClipTokenizer *t = clip_tokenizer_load_builtin();
    ck_assert_msg(t, "%s", ldm_last_error());
    FILE *fp = fopen(path, "r");
    ck_assert_msg(fp, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    int n = 0, specials = 0;
    while (getline(&line, &cap, fp) > 0) {
        json_error_t err;
        json_t *j = json_loads(line, 0, &err);
        ck_assert_msg(j, "%s:%d: %s", path, n + 1, err.text);
        const char *prompt = json_string_value(json_object_get(j, "prompt"));
        json_t *ids = json_object_get(j, "ids");
        ck_assert(prompt && json_array_size(ids) == CLIP_CONTEXT_LENGTH);
        int32_t got[CLIP_CONTEXT_LENGTH], v1[CLIP_CONTEXT_LENGTH];
        int n_bpe = -1;
        ck_assert_msg(clip_tokenize_style(t, &clip_style_openclip, prompt, CLIP_CONTEXT_LENGTH, got, &n_bpe) == 0,
                      "'%s': %s", prompt, ldm_last_error());
        ck_assert_msg(n_bpe == (int)json_integer_value(json_object_get(j, "n_bpe")), "'%s': n_bpe %d, expected %d",
                      prompt, n_bpe, (int)json_integer_value(json_object_get(j, "n_bpe")));
        for (int i = 0; i < CLIP_CONTEXT_LENGTH; i++)
            ck_assert_msg(got[i] == (int32_t)json_integer_value(json_array_get(ids, (size_t)i)),
                          "'%s': ids[%d] = %d, expected %d", prompt, i, got[i],
                          (int)json_integer_value(json_array_get(ids, (size_t)i)));
        if (strstr(prompt, "<start_of_text>")) specials++;
        /* SD v1's ids differ only after the first end token (prompts without open_clip's special texts) */
        if (!strstr(prompt, "_of_text>") && !strstr(prompt, "oftext|>")) {
            ck_assert_int_eq(clip_tokenize_ctx(t, prompt, CLIP_CONTEXT_LENGTH, v1, NULL), 0);
            int seen_end = 0;
            for (int i = 0; i < CLIP_CONTEXT_LENGTH; i++) {
                ck_assert_msg(seen_end ? v1[i] == CLIP_EOT && got[i] == 0 : v1[i] == got[i],
                              "'%s': position %d: SD v1 %d, SD 2 %d", prompt, i, v1[i], got[i]);
                if (got[i] == CLIP_EOT) seen_end = 1;
            }
        }
        json_decref(j);
        n++;
    }
    free(line);
    fclose(fp);
    ck_assert_msg(n >= 10, "%s: only %d prompts", path, n);
    ck_assert_msg(specials == 1, "%s: expected one <start_of_text> prompt, found %d", path, specials);
    /* the empty prompt */
    int32_t e[CLIP_CONTEXT_LENGTH];
    ck_assert_int_eq(clip_tokenize_style(t, &clip_style_openclip, "", CLIP_CONTEXT_LENGTH, e, NULL), 0);
    ck_assert(e[0] == CLIP_SOT && e[1] == CLIP_EOT && e[2] == 0 && e[76] == 0);
    clip_tokenizer_free(t);
}
END_TEST

/* ---- text encoder ----------------------------------------------------------- */

/* clip.io: hidden (layer penultimate, the yaml's) and hidden_layer_last
 * (the same tower with -D ...layer=last: every block, then ln_final). */
START_TEST(test_sd2_clip) {
    char cfg[512], io[512], w[512], prog[600], out[600];
    sd2(cfg, sizeof cfg, "v2-inference-v.yaml");
    sd2(io, sizeof io, "clip.io.safetensors");
    sd2(w, sizeof w, "model.safetensors");
    const char *last = "model.params.cond_stage_config.params.layer=last";
    const char *defs[2][3] = {{"B=7", NULL, NULL}, {"B=7", last, NULL}};
    const char *gname = _i == 0 ? "hidden" : "hidden_layer_last";
    compile(_i == 0 ? "clip-penultimate" : "clip-last", "clip_text", cfg, defs[_i], prog, sizeof prog);
    snprintf(out, sizeof out, "%s/clip-out-%d.safetensors", test_dir, _i);
    run_runner(prog, w, io, NULL, out);
    check_close("sd2-tiny clip", io, gname, out, "hidden");
    /* CLIP skip 1 is the returned layer itself */
    int64_t n1, n2;
    float *h = read_f32(out, "hidden", &n1), *s = read_f32(out, "hidden_skip", &n2);
    ck_assert_int_eq(n2, 2 * n1);
    ck_assert_msg(memcmp(h, s, (size_t)n1 * sizeof *h) == 0, "hidden_skip[0] differs from hidden");
    if (_i == 1) {
        /* layer last, skip 2 = the penultimate layer's ln_final: the golden hidden */
        double lim = tolerance(io, "hidden");
        float *g = read_f32(io, "hidden", NULL);
        double d = max_abs_diff(s + n1, g, n1);
        printf("sd2: %-24s %-16s max|ours - golden| = %.3g (tolerance %.3g)\n", "clip last, skip 2", "hidden", d, lim);
        ck_assert_msg(d <= lim, "layer last, CLIP skip 2: max |ours - golden hidden| = %.6g > %.6g", d, lim);
        free(g);
    }
    free(h);
    free(s);
}
END_TEST

/* -D POOLED=1 (what SDXL's OpenCLIP encoder needs): pooled = ln_final of
 * ALL blocks (the golden hidden_layer_last) at the first end token (argmax
 * of the ids), times text_projection as `x @ P`, computed here in double
 * from the golden and the checkpoint; the bound is hidden_layer_last's
 * tolerance carried through P (tol x the largest column sum of |P|). The
 * runner's hidden stays the penultimate layer's. */
START_TEST(test_sd2_pooled) {
    char cfg[512], io[512], w[512], prog[600], out[600];
    sd2(cfg, sizeof cfg, "v2-inference-v.yaml");
    sd2(io, sizeof io, "clip.io.safetensors");
    sd2(w, sizeof w, "model.safetensors");
    const char *defs[] = {"B=7", "POOLED=1", NULL};
    compile("clip-pooled", "clip_text", cfg, defs, prog, sizeof prog);
    snprintf(out, sizeof out, "%s/clip-pooled.safetensors", test_dir);
    run_runner(prog, w, io, NULL, out);
    check_close("sd2-tiny clip pooled run", io, "hidden", out, "hidden");
    int64_t nt, nh, np, nP;
    int32_t *tok = read_i32(io, "tokens", &nt);
    float *h = read_f32(io, "hidden_layer_last", &nh), *pooled = read_f32(out, "pooled", &np);
    float *P = read_f32(w, "cond_stage_model.model.text_projection", &nP);
    const int64_t B = 7, T = 77, C = nh / (B * T), E = nP / C;
    ck_assert_int_eq(nt, B * T);
    ck_assert_int_eq(np, B * E);
    double colmax = 0;
    for (int64_t e = 0; e < E; e++) {
        double sum = 0;
        for (int64_t c = 0; c < C; c++) sum += fabs(P[c * E + e]);
        if (sum > colmax) colmax = sum;
    }
    double lim = tolerance(io, "hidden_layer_last") * colmax, worst = 0;
    for (int64_t b = 0; b < B; b++) {
        int64_t at = 0;
        for (int64_t t = 1; t < T; t++)
            if (tok[b * T + t] > tok[b * T + at]) at = t;
        ck_assert_int_eq(tok[b * T + at], CLIP_EOT);
        for (int64_t e = 0; e < E; e++) {
            double ref = 0;
            for (int64_t c = 0; c < C; c++) ref += (double)h[(b * T + at) * C + c] * P[c * E + e];
            double d = fabs(ref - pooled[b * E + e]);
            if (d > worst) worst = d;
        }
    }
    printf("sd2: %-24s %-16s max|ours - golden @ P| = %.3g (bound %.3g)\n", "sd2-tiny clip", "pooled", worst, lim);
    ck_assert_msg(worst <= lim, "pooled: max |ours - reference| = %.6g > %.6g", worst, lim);
    free(tok);
    free(h);
    free(pooled);
    free(P);
}
END_TEST

/* ---- UNet ---------------------------------------------------------------------- */

static char g_unet[600];      /* the sd2-tiny UNet runner, B=2 96x96 ("" if ldmc failed) */
static char *g_unet_log;

static void setup_unet(void) {
    char cfg[512];
    const char *defs[] = {"B=2", "H=96", "W=96", NULL};
    if (try_compile("unet-96", "unet", sd2(cfg, sizeof cfg, "v2-inference-v.yaml"), defs, g_unet, sizeof g_unet,
                    &g_unet_log) != 0)
        g_unet[0] = 0;
}

static void teardown_nothing(void) {}

START_TEST(test_sd2_unet) {
    char io[512], w[512], out[600], prefix[16], gname[32];
    const char *prog = g_unet;
    ck_assert_msg(prog[0], "ldmc unet.graph (sd2-tiny) failed:\n%s", g_unet_log ? g_unet_log : "");
    sd2(io, sizeof io, "unet.io.safetensors");
    sd2(w, sizeof w, "model.safetensors");
    snprintf(prefix, sizeof prefix, "case%d.", _i);
    snprintf(out, sizeof out, "%s/unet-out-%d.safetensors", test_dir, _i);
    run_runner(prog, w, io, prefix, out);
    snprintf(gname, sizeof gname, "case%d.out", _i);
    check_close("sd2-tiny unet", io, gname, out, "eps");
}
END_TEST

Suite *suite_sd2(void) {
    Suite *s = suite_create("sd2");
    TCase *tc = tcase_create("tokens");
    tcase_add_test(tc, test_sd2_tokens);
    suite_add_tcase(s, tc);
    tc = tcase_create("clip");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_sd2_clip, 0, 2);
    tcase_add_test(tc, test_sd2_pooled);
    suite_add_tcase(s, tc);
    tc = tcase_create("unet");
    tcase_set_timeout(tc, 600);
    tcase_add_unchecked_fixture(tc, setup_unet, teardown_nothing);
    tcase_add_loop_test(tc, test_sd2_unet, 0, 4);
    suite_add_tcase(s, tc);
    return s;
}
