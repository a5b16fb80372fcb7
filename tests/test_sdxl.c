/*
 * test_sdxl.c - Stable Diffusion XL (issue 20) against ../shared/goldens/sdxl-tiny
 * (computed with Stability-AI's sgm code on a tiny random model, F16 checkpoint).
 *
 *   - sgm-format configs: the real models/sdxl/sd_xl_base.yaml and the goldens'
 *     config.json (the JSON subset of YAML) through model_facts(); bad sgm
 *     configs give located errors;
 *   - the UNet (models/sd1/unet.graph: per-level transformer_depth, linear
 *     proj_in/proj_out, heads from num_head_channels, label_emb(y)) compiled
 *     for the tiny config and run on unet.io's three cases, from the F16
 *     checkpoint as shipped, within the README tolerances;
 *   - `ldmc --stats` of the real config: the UNet's 2,567,463,684 parameters.
 */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "image.h"
#include "ldmc.h"
#include "safetensors.h"
#include "sampler.h"
#include "schedule.h"
#include "sdxl.h"
#include "tokenizer.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "util.h"

#define XL "goldens/sdxl-tiny/"

/* the executables are built as this run is (SAN=1 under the sanitizers), as the other suites do */
#if defined(__SANITIZE_ADDRESS__)
#define XL_SAN 1
#else
#define XL_SAN 0
#endif

/* "<shared>/goldens/sdxl-tiny/<rel>" (malloc'd once per name, kept: the
 * tests hold several of them at a time). */
/* A copy of path kept for the test's life, in static storage (a heap copy
 * would be a leak to LeakSanitizer when the forked test exits). */
static const char *kept_path(const char *path) {
    static char bufs[32][512];
    static int next;
    char *b = bufs[next++ % 32];
    ck_assert_msg(strlen(path) < sizeof bufs[0], "path too long: %s", path);
    strcpy(b, path);
    return b;
}

static const char *xl(const char *rel) {
    static char *names[32], *paths[32];
    static int n;
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], rel)) return paths[i];
    ck_assert(n < 32);
    names[n] = ldm_xstrdup(rel);
    paths[n] = ldm_xasprintf("%s/" XL "%s", test_shared_dir(), rel);
    return paths[n++];
}

/* ---- configs ---------------------------------------------------------------- */

static CfgNode *load_cfg(const char *path) {
    CfgNode *c = cfg_load(path);
    ck_assert_msg(c, "%s: %s", path, ldm_last_error());
    return c;
}

START_TEST(test_sdxl_facts_real_yaml) {
    CfgNode *c = load_cfg("models/sdxl/sd_xl_base.yaml");
    ModelFacts f;
    ck_assert_msg(model_facts(c, &f) == 0, "%s", ldm_last_error());
    ck_assert_str_eq(f.format, "sgm");
    ck_assert_str_eq(f.unet_config_key, "network_config");
    ck_assert_int_eq(f.f, 8);
    ck_assert_int_eq(f.latent_channels, 4);
    ck_assert_int_eq(f.context_dim, 2048);
    ck_assert_int_eq(f.adm_in_channels, 2816);
    ck_assert_int_eq(f.unet_spatial, 1);
    ck_assert_int_eq(f.n_text_embedders, 2);
    ck_assert_int_eq(f.context_length, 77);
    ck_assert_int_eq(f.unet_context, 77);
    ck_assert_int_eq(f.timesteps, 1000);
    ck_assert_str_eq(f.parameterization, "eps");
    ck_assert_str_eq(f.first_stage, "kl");
    ck_assert(fabs(f.scale_factor - 0.13025) < 1e-12);
    ck_assert(fabs(f.linear_start - 0.00085) < 1e-12 && fabs(f.linear_end - 0.012) < 1e-12);
    cfg_free(c);
}
END_TEST

START_TEST(test_sdxl_facts_json) {
    CfgNode *c = load_cfg(xl("config.json"));
    ModelFacts f;
    ck_assert_msg(model_facts(c, &f) == 0, "%s", ldm_last_error());
    ck_assert_str_eq(f.format, "sgm");
    ck_assert_int_eq(f.f, 8);
    ck_assert_int_eq(f.context_dim, 56);
    ck_assert_int_eq(f.adm_in_channels, 1576);
    ck_assert_int_eq(f.n_text_embedders, 2);
    cfg_free(c);
    /* the CompVis configs keep their meaning */
    c = load_cfg("models/sd1/v1-inference.yaml");
    ck_assert_msg(model_facts(c, &f) == 0, "%s", ldm_last_error());
    ck_assert_str_eq(f.format, "compvis");
    ck_assert_str_eq(f.unet_config_key, "unet_config");
    ck_assert_int_eq(f.adm_in_channels, 0);
    ck_assert_int_eq(f.unet_spatial, 1);
    cfg_free(c);
}
END_TEST

/* model_facts() of the real yaml with one value changed fails with a
 * message containing want. */
static void bad_facts(const char *path, const char *value, const char *want) {
    CfgNode *c = load_cfg("models/sdxl/sd_xl_base.yaml");
    ck_assert_msg(cfg_set_path(c, path, value) == 0, "%s", ldm_last_error());
    ModelFacts f;
    ck_assert_msg(model_facts(c, &f) != 0, "%s=%s was accepted", path, value);
    const char *e = ldm_last_error();
    ck_assert_msg(strstr(e, want), "%s=%s: message '%s' lacks '%s'", path, value, e, want);
    cfg_free(c);
}

START_TEST(test_sdxl_facts_bad) {
    bad_facts("model.params.denoiser_config.target", "sgm.modules.diffusionmodules.denoiser.Denoiser",
              "DiscreteDenoiser");
    bad_facts("model.params.denoiser_config.params.scaling_config.target", "x.Scaling", "EpsScaling");
    bad_facts("model.params.denoiser_config.params.num_idx", "999", "num_idx");
    bad_facts("model.params.network_config.params.num_classes", "10", "num_classes");
    bad_facts("model.params.network_config.params.adm_in_channels", "null", "adm_in_channels");
    bad_facts("model.params.network_config.params.in_channels", "9", "in_channels");
    bad_facts("model.params.first_stage_config.target", "sgm.models.autoencoder.AutoencodingEngine", "AutoencoderKL");
    bad_facts("model.params.conditioner_config.params.emb_models.2.input_key", "size", "original_size_as_tuple");
    bad_facts("model.params.conditioner_config.params.emb_models.0.input_key", "cls", "'txt'");
    bad_facts("model.params.conditioner_config.params.emb_models.1.target", "sgm.modules.encoders.modules.X",
              "FrozenOpenCLIPEmbedder2");
    bad_facts("model.params.scale_factor", "0", "scale_factor");
}
END_TEST

/* ---- ldmc on the graphs ------------------------------------------------------- */

static const char *ldmc_path(void) {
    static char p[300];
    snprintf(p, sizeof p, "%s/ldmc", test_build_dir());
    return p;
}

/* `ldmc GRAPH --config CONFIG -D ... --stats`: the parameter count. */
static long long stats_params(const char *graph, const char *config, char *const defs[]) {
    test_dir_init("ldm_sdxl_");
    char *argv[32];
    int n = 0;
    argv[n++] = (char *)ldmc_path();
    argv[n++] = (char *)graph;
    argv[n++] = "--config";
    argv[n++] = (char *)config;
    for (int i = 0; defs && defs[i]; i++) {
        argv[n++] = "-D";
        argv[n++] = defs[i];
    }
    argv[n++] = "--stats";
    argv[n] = NULL;
    char *out = NULL;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "ldmc --stats %s failed:\n%s", graph, out);
    const char *p = strstr(out, " parameters");
    ck_assert_msg(p, "no parameter count in:\n%s", out);
    while (p > out && p[-1] != ' ') p--;
    long long v = atoll(p);
    free(out);
    return v;
}

START_TEST(test_sdxl_stats_real) {
    char *d[] = {"H=1024", "W=1024", NULL};
    ck_assert_int_eq(stats_params("models/sd1/unet.graph", "models/sdxl/sd_xl_base.yaml", d), 2567463684LL);
    ck_assert_int_eq(stats_params("models/sd1/vae_decoder.graph", "models/sdxl/sd_xl_base.yaml", d) +
                         stats_params("models/sd1/vae_encoder.graph", "models/sdxl/sd_xl_base.yaml", d),
                     83653863LL);
}
END_TEST

/* Compile graph for the tiny config into the scratch directory. */
static const char *build_runner(const char *graph, const char *name, char *const defs[]) {
    test_dir_init("ldm_sdxl_");
    ck_assert(test_dir[0]);
    const char *exe = kept_path(test_tmp("%s", name));
    char *argv[40];
    int n = 0;
    argv[n++] = (char *)ldmc_path();
    argv[n++] = (char *)graph;
    argv[n++] = "--config";
    argv[n++] = (char *)xl("config.json");
    for (int i = 0; defs && defs[i]; i++) {
        argv[n++] = "-D";
        argv[n++] = defs[i];
    }
    argv[n++] = "-o";
    argv[n++] = (char *)exe;
    argv[n] = NULL;
    char *out = NULL;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "ldmc %s failed:\n%s", graph, out);
    free(out);
    return exe;
}

/* Run a runner on io with prefix; compare ours[i] with golden prefix+gold[i]. */
static void run_and_compare(const char *exe, const char *io, const char *prefix, const char *const ours[],
                            const char *const gold[], int n, char *const extra[]) {
    const char *out = test_tmp("out-%s%d.safetensors", prefix, n);
    char *log = NULL;
    int rc = test_run_runner(exe, xl("model-fp16.safetensors"), io, out, prefix, (const char *const *)extra, &log);
    ck_assert_msg(rc == 0, "%s failed:\n%s", exe, log);
    free(log);
    for (int i = 0; i < n; i++) {
        char gname[128];
        snprintf(gname, sizeof gname, "%s%s", prefix, gold[i]);
        int64_t na, nb;
        float *a = read_f32(out, ours[i], &na), *b = read_f32(io, gname, &nb);
        ck_assert_msg(na == nb, "%s: %lld values, golden %s has %lld", ours[i], (long long)na, gname, (long long)nb);
        double d = max_abs_diff(a, b, na), tol = tolerance(io, gname);
        printf("sdxl: %-28s max|ours - golden| = %.3g (tolerance %.3g)\n", gname, d, tol);
        fflush(stdout);
        ck_assert_msg(d <= tol, "%s: max |ours - golden| = %.6g > tolerance %.6g", gname, d, tol);
        free(a);
        free(b);
    }
    remove(out);
}

static void expect_close(const char *io, const char *name, const float *ours, int64_t n) {
    int64_t ng;
    float *g = read_f32(io, name, &ng);
    ck_assert_msg(ng == n, "%s: %lld values, ours %lld", name, (long long)ng, (long long)n);
    double d = max_abs_diff(ours, g, n), tol = tolerance(io, name);
    printf("sdxl: %-28s max|ours - golden| = %.3g (tolerance %.3g)\n", name, d, tol);
    fflush(stdout);
    ck_assert_msg(d <= tol, "%s: max |ours - golden| = %.6g > tolerance %.6g", name, d, tol);
    free(g);
}

START_TEST(test_sdxl_unet) {
    char *d[] = {"B=2", "H=128", "W=128", NULL};
    const char *exe = build_runner("models/sd1/unet.graph", "unet-sdxl-tiny", d);
    const char *ours[] = {"eps"}, *gold[] = {"out"};
    for (int k = 0; k < 3; k++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "case%d.", k);
        run_and_compare(exe, xl("unet.io.safetensors"), prefix, ours, gold, 1, NULL);
    }
}
END_TEST


/* ---- the text encoder of embedder 0 (CLIP ViT-L role) ------------------------- */

/* Copy tensor `from` of src into a new file as `to` (the runners' input names). */
static const char *renamed_inputs(const char *src, const char *const from[], const char *const to[], int n,
                                  const char *name) {
    StFile f;
    ck_assert_msg(st_open(&f, src) == 0, "%s", ldm_last_error());
    StWriter *w = st_writer_new();
    for (int i = 0; i < n; i++) {
        const StTensor *t = st_find(&f, from[i]);
        ck_assert_msg(t, "%s: no tensor %s", src, from[i]);
        StDtype dt = t->dtype == ST_I32 || t->dtype == ST_I64 ? ST_I32 : ST_F32;
        void *buf = ldm_xmalloc((size_t)t->numel * 4 + 4);
        ck_assert_msg((dt == ST_I32 ? st_to_i32(t, buf) : st_to_f32(t, buf)) == 0, "%s", ldm_last_error());
        st_writer_add(w, to[i], dt, t->ndim, t->shape, buf);
        free(buf);
    }
    st_close(&f);
    const char *out = test_tmp("%s", name);
    ck_assert_msg(st_writer_save(w, out) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    return out;
}

/* Run a text-encoder runner on tokens `tok_name` of conditioner.io case k;
 * the outputs file. */
static const char *run_encoder(const char *exe, int k, const char *tok_name, const char *tag) {
    char from[64];
    snprintf(from, sizeof from, "case%d.%s", k, tok_name);
    const char *fr[] = {from}, *to[] = {"tokens"};
    const char *in = renamed_inputs(xl("conditioner.io.safetensors"), fr, to, 1, "enc-in.safetensors");
    const char *out = kept_path(test_tmp("%s-out-%d.safetensors", tag, k));
    char *argv[] = {(char *)exe, "--weights", (char *)xl("model-fp16.safetensors"), "--inputs", (char *)in,
                    "--outputs", (char *)out, NULL};
    char *log = NULL;
    ck_assert_msg(test_run(argv, &log) == 0, "%s failed:\n%s", exe, log);
    free(log);
    return out;
}

/* ours (n floats) against golden caseK.name of conditioner.io */
static void cond_close(int k, const char *name, const float *ours, int64_t n) {
    char g[64];
    snprintf(g, sizeof g, "case%d.%s", k, name);
    expect_close(xl("conditioner.io.safetensors"), g, ours, n);
}

/* GeneralConditioner: embedder 0 (CLIP ViT-L role, clip_text.graph
 * EMBEDDER=0), embedder 1 (OpenCLIP bigG role, EMBEDDER=1: penultimate
 * without ln_final, pooled), the size embeddings; crossattn = [emb0 | emb1]
 * on channels, vector = [pooled | sizes]. */
START_TEST(test_sdxl_conditioner) {
    char *d0[] = {"B=3", "EMBEDDER=0", NULL}, *d1[] = {"B=3", "EMBEDDER=1", NULL};
    const char *clip_l = build_runner("models/sd1/clip_text.graph", "clip-l-sdxl-tiny", d0);
    const char *bigg = build_runner("models/sd1/clip_text.graph", "bigg-sdxl-tiny", d1);
    for (int k = 0; k < 2; k++) {
        const char *o0 = run_encoder(clip_l, k, "tokens_clip_l", "clip-l");
        const char *o1 = run_encoder(bigg, k, "tokens_open_clip", "bigg");
        int64_t n0, n1, np;
        float *h0 = read_f32(o0, "hidden", &n0), *h1 = read_f32(o1, "hidden", &n1), *pooled = read_f32(o1, "pooled", &np);
        cond_close(k, "emb0_hidden", h0, n0);
        cond_close(k, "emb1_penultimate", h1, n1);
        cond_close(k, "emb1_pooled", pooled, np);
        int B = 3, W0 = (int)(n0 / (B * 77)), W1 = (int)(n1 / (B * 77)), E = (int)(np / B);
        float *ca = ldm_xmalloc((size_t)(n0 + n1) * sizeof(float));
        for (int r = 0; r < B * 77; r++) {
            memcpy(ca + (size_t)r * (W0 + W1), h0 + (size_t)r * W0, (size_t)W0 * sizeof(float));
            memcpy(ca + (size_t)r * (W0 + W1) + W0, h1 + (size_t)r * W1, (size_t)W1 * sizeof(float));
        }
        cond_close(k, "crossattn", ca, n0 + n1);
        char name[64];
        snprintf(name, sizeof name, "case%d.original_size_as_tuple", k);
        int32_t *orig = read_i32(xl("conditioner.io.safetensors"), name, NULL);
        snprintf(name, sizeof name, "case%d.crop_coords_top_left", k);
        int32_t *crop = read_i32(xl("conditioner.io.safetensors"), name, NULL);
        snprintf(name, sizeof name, "case%d.target_size_as_tuple", k);
        int32_t *tgt = read_i32(xl("conditioner.io.safetensors"), name, NULL);
        int adm = E + 1536;
        float *vec = ldm_xmalloc((size_t)(B * adm) * sizeof(float));
        for (int b = 0; b < B; b++) {
            LdmSizeCond c = {orig[2 * b], orig[2 * b + 1], crop[2 * b], crop[2 * b + 1], tgt[2 * b], tgt[2 * b + 1]};
            ldm_sdxl_vector(pooled + (size_t)b * E, E, &c, 256, vec + (size_t)b * adm);
        }
        cond_close(k, "vector", vec, (int64_t)B * adm);
        free(h0), free(h1), free(pooled), free(ca), free(vec), free(orig), free(crop), free(tgt);
        remove(o0);
        remove(o1);
    }
}
END_TEST

/* --stats of the text encoders under the real config: the checkpoint's
 * 123,060,480 (CLIP ViT-L) and 694,659,841 (OpenCLIP bigG) parameters; the
 * dump lists what hidden layer 11 leaves unused (layer 11, final_layer_norm)
 * and the tower's logit_scale. */
START_TEST(test_sdxl_stats_text) {
    test_dir_init("ldm_sdxl_");
    char *argv[] = {(char *)ldmc_path(), "models/sd1/clip_text.graph", "--config", "models/sdxl/sd_xl_base.yaml",
                    "--stats", "--dump", NULL};
    char *out = NULL;
    ck_assert_msg(test_run(argv, &out) == 0, "%s", out);
    ck_assert_msg(strstr(out, "reads 115971072 of the 123060480 parameters a checkpoint holds"), "%s", out);
    ck_assert_msg(strstr(out, "unused conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight"),
                  "%s", out);
    ck_assert_msg(strstr(out, "unused conditioner.embedders.0.transformer.text_model.final_layer_norm.bias"), "%s", out);
    ck_assert_msg(!strstr(out, "unused conditioner.embedders.0.transformer.text_model.encoder.layers.10."), "%s", out);
    free(out);
    char *argv1[] = {(char *)ldmc_path(), "models/sd1/clip_text.graph", "--config", "models/sdxl/sd_xl_base.yaml",
                     "-D", "EMBEDDER=1", "--stats", "--dump", NULL};
    ck_assert_msg(test_run(argv1, &out) == 0, "%s", out);
    ck_assert_msg(strstr(out, "of the 694659841 parameters a checkpoint holds"), "%s", out);
    ck_assert_msg(strstr(out, "unused conditioner.embedders.1.model.logit_scale"), "%s", out);
    free(out);
}
END_TEST

/* ---- tokens: embedder 0 = the SD v1 tokenizer exactly --------------------------- */

START_TEST(test_sdxl_tokens) {
    size_t n;
    char *text = ldm_read_file(xl("tokens.jsonl"), &n);
    ck_assert_msg(text, "%s", ldm_last_error());
    ClipTokenizer *tok = clip_tokenizer_load_builtin();
    ck_assert_msg(tok, "%s", ldm_last_error());
    int cases = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t err;
        json_t *j = json_loads(line, 0, &err);
        ck_assert_msg(j, "tokens.jsonl: %s", err.text);
        const char *prompt = json_string_value(json_object_get(j, "prompt"));
        for (int e = 0; e < 2; e++) {
            /* embedder 0: SD v1's tokenizer (pad 49407); embedder 1: open_clip's (pad 0) */
            json_t *ids = json_object_get(j, e ? "ids_open_clip" : "ids_clip_l");
            ck_assert(prompt && json_array_size(ids) == 77);
            int32_t ours[77];
            ck_assert_msg(clip_tokenize_style(tok, e ? &clip_style_openclip : &clip_style_sd1, prompt, 77, ours, NULL) == 0,
                          "%s", ldm_last_error());
            for (int i = 0; i < 77; i++)
                ck_assert_msg(ours[i] == (int32_t)json_integer_value(json_array_get(ids, (size_t)i)),
                              "embedder %d, prompt '%s': id %d is %d, golden %lld", e, prompt, i, ours[i],
                              (long long)json_integer_value(json_array_get(ids, (size_t)i)));
        }
        json_decref(j);
        cases++;
    }
    ck_assert_int_gt(cases, 10);
    clip_tokenizer_free(tok);
    free(text);
}
END_TEST

/* ---- size embeddings and the vector's size part ---------------------------------- */

static void check_sizes_case(int k, int have_embs) {
    const char *io = xl("conditioner.io.safetensors");
    char name[96];
    int64_t nb;
    snprintf(name, sizeof name, "case%d.original_size_as_tuple", k);
    int32_t *orig = read_i32(io, name, &nb);
    int B = (int)(nb / 2);
    snprintf(name, sizeof name, "case%d.crop_coords_top_left", k);
    int32_t *crop = read_i32(io, name, NULL);
    snprintf(name, sizeof name, "case%d.target_size_as_tuple", k);
    int32_t *tgt = read_i32(io, name, NULL);
    snprintf(name, sizeof name, "case%d.vector", k);
    int64_t nv;
    float *vec = read_f32(io, name, &nv);
    int adm = (int)(nv / B), E = adm - 1536;
    double tol = tolerance(io, name), worst = 0;
    float *ours = ldm_xmalloc((size_t)adm * sizeof(float));
    for (int b = 0; b < B; b++) {
        LdmSizeCond c = {orig[2 * b], orig[2 * b + 1], crop[2 * b], crop[2 * b + 1], tgt[2 * b], tgt[2 * b + 1]};
        ck_assert_msg(ldm_size_cond_check(&c) == 0, "%s", ldm_last_error());
        ldm_sdxl_vector(NULL, E, &c, 256, ours);
        /* the size part of the vector (and, for the zeroed branch, the zeros) */
        int from = k == 2 ? 0 : E;
        double d = max_abs_diff(ours + from, vec + (size_t)b * adm + from, adm - from);
        if (d > worst) worst = d;
        if (have_embs) {
            static const char *emb[3] = {"emb2_original_size_as_tuple", "emb3_crop_coords_top_left",
                                         "emb4_target_size_as_tuple"};
            for (int e = 0; e < 3; e++) {
                snprintf(name, sizeof name, "case%d.%s", k, emb[e]);
                float *g = read_f32(io, name, NULL);
                double de = max_abs_diff(ours + E + 512 * e, g + (size_t)b * 512, 512), te = tolerance(io, name);
                ck_assert_msg(de <= te, "%s row %d: %.6g > %.6g", name, b, de, te);
                free(g);
            }
        }
    }
    printf("sdxl: case%d.vector (size part%s) max|ours - golden| = %.3g (tolerance %.3g)\n", k,
           k == 2 ? " and zeroed pooled" : "", worst, tol);
    ck_assert_msg(worst <= tol, "case%d.vector: %.6g > %.6g", k, worst, tol);
    if (k == 2) { /* the unconditional branch: crossattn all zeros */
        snprintf(name, sizeof name, "case%d.crossattn", k);
        int64_t nc;
        float *ca = read_f32(io, name, &nc);
        for (int64_t i = 0; i < nc; i++) ck_assert_msg(ca[i] == 0.0f, "case2.crossattn is not all zeros");
        free(ca);
    }
    free(ours);
    free(vec);
    free(orig);
    free(crop);
    free(tgt);
}

START_TEST(test_sdxl_size_embeddings) {
    check_sizes_case(0, 1);
    check_sizes_case(1, 1);
    check_sizes_case(2, 0);
}
END_TEST

START_TEST(test_sdxl_size_flags) {
    int h, w;
    ck_assert_int_eq(ldm_parse_hw("--original-size", "1024x768", &h, &w), 0);
    ck_assert_int_eq(h, 1024);
    ck_assert_int_eq(w, 768);
    static const char *bad_hw[] = {"", "1024", "0x5", "5x0", "-1x5", "5x", "x5", "5x5x", "1e3x5", "5 x 5", "99999999999x1"};
    for (size_t i = 0; i < sizeof bad_hw / sizeof *bad_hw; i++) {
        ck_assert_msg(ldm_parse_hw("--target-size", bad_hw[i], &h, &w) != 0, "'%s' accepted", bad_hw[i]);
        ck_assert_msg(strstr(ldm_last_error(), "--target-size") && strstr(ldm_last_error(), "two positive integers"),
                      "%s", ldm_last_error());
    }
    ck_assert_int_eq(ldm_parse_top_left("--crop-top-left", "0,16", &h, &w), 0);
    ck_assert_int_eq(w, 16);
    static const char *bad_tl[] = {"", "0", "-1,0", "0,", ",0", "0;0", "0,0,0"};
    for (size_t i = 0; i < sizeof bad_tl / sizeof *bad_tl; i++)
        ck_assert_msg(ldm_parse_top_left("--crop-top-left", bad_tl[i], &h, &w) != 0, "'%s' accepted", bad_tl[i]);
    LdmSizeCond c = {512, 512, 512, 0, 512, 512};
    ck_assert_int_ne(ldm_size_cond_check(&c), 0);
    ck_assert_msg(strstr(ldm_last_error(), "outside the original size"), "%s", ldm_last_error());
    c.crop_top = 0;
    c.target_w = 0;
    ck_assert_int_ne(ldm_size_cond_check(&c), 0);
}
END_TEST

/* ---- schedule ---------------------------------------------------------------------- */

START_TEST(test_sdxl_schedule) {
    CfgNode *cfg = load_cfg(xl("config.json"));
    ModelFacts f;
    ck_assert_msg(model_facts(cfg, &f) == 0, "%s", ldm_last_error());
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, f.linear_start, f.linear_end, f.timesteps), 0);
    const char *io = xl("schedule.io.safetensors");
    int64_t n;
    float *ac = read_f32(io, "alphas_cumprod", &n);
    ck_assert_int_eq(n, 1000);
    float *tab = read_f32(io, "denoiser_sigmas", NULL);
    float *ours = ldm_xmalloc(1000 * sizeof(float));
    ldm_sgm_sigma_table(&s, ours);
    for (int i = 0; i < 1000; i++) {
        ck_assert_msg(s.alphas_cumprod[i] == ac[i], "alphas_cumprod[%d] %.9g, golden %.9g", i, s.alphas_cumprod[i], ac[i]);
        ck_assert_msg(ours[i] == tab[i], "denoiser_sigmas[%d] %.9g, golden %.9g", i, ours[i], tab[i]);
    }
    float *sig = read_f32(io, "sampler_sigmas_10", NULL), got[11];
    int32_t *idx = read_i32(io, "sampler_sigma_idx_10", NULL);
    ck_assert_int_eq(ldm_kdiff_sigmas(&s, LDM_SIGMAS_SGM, 10, got), 0);
    for (int i = 0; i < 11; i++) ck_assert_msg(got[i] == sig[i], "sigma %d: %.9g, golden %.9g", i, got[i], sig[i]);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(ldm_sgm_sigma_index(ours, 1000, got[i]), idx[i]);
    LdmSigmaKind k;
    ck_assert_int_eq(ldm_sigma_kind_parse("sgm", &k), 0);
    ck_assert_int_eq(k, LDM_SIGMAS_SGM);
    ck_assert_int_ne(ldm_kdiff_sigmas(&s, LDM_SIGMAS_SGM, 1001, got), 0);
    free(ac), free(tab), free(ours), free(sig), free(idx);
    ldm_schedule_free(&s);
    cfg_free(cfg);
}
END_TEST

/* ---- the sgm Euler EDM sampler through the UNet runner: txt2img_euler_cfg5 ------------ */

typedef struct EpsCtx {
    const char *unet;           /* the runner */
    const float *ctx2, *y2;     /* [uc, c] context and vector */
    int64_t nctx, ny;
    int64_t shape[4];           /* latent of one sample */
    int calls;
} EpsCtx;

static int eps_by_runner(void *vctx, const float *x_in, float t, float *eps_out) {
    EpsCtx *c = vctx;
    int64_t n = c->shape[0] * c->shape[1] * c->shape[2] * c->shape[3];
    float *x2 = ldm_xmalloc((size_t)(2 * n) * sizeof(float));
    memcpy(x2, x_in, (size_t)n * sizeof(float));
    memcpy(x2 + n, x_in, (size_t)n * sizeof(float));
    float ts[2] = {t, t};
    StWriter *w = st_writer_new();
    int64_t xs[4] = {2, c->shape[1], c->shape[2], c->shape[3]}, tsh[1] = {2};
    int64_t cs[3] = {2, 77, c->nctx / (2 * 77)}, ysh[2] = {2, c->ny / 2};
    st_writer_add(w, "x", ST_F32, 4, xs, x2);
    st_writer_add(w, "timesteps", ST_F32, 1, tsh, ts);
    st_writer_add(w, "context", ST_F32, 3, cs, c->ctx2);
    st_writer_add(w, "y", ST_F32, 2, ysh, c->y2);
    const char *in = test_tmp("eps-in.safetensors"), *out = test_tmp("eps-out.safetensors");
    ck_assert_msg(st_writer_save(w, in) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    char *argv[] = {(char *)c->unet, "--weights", (char *)xl("model-fp16.safetensors"), "--inputs", (char *)in,
                    "--outputs", (char *)out, NULL};
    char *log = NULL;
    ck_assert_msg(test_run(argv, &log) == 0, "unet runner failed:\n%s", log);
    free(log);
    int64_t ne;
    float *e = read_f32(out, "eps", &ne);
    ck_assert_int_eq(ne, 2 * n);
    /* VanillaCFG on the denoised output, uncond first: D = D_u + 5 (D_c - D_u)
     * with D = x - sigma eps, i.e. the same guidance of eps */
    for (int64_t i = 0; i < n; i++) eps_out[i] = e[i] + 5.0f * (e[n + i] - e[i]);
    free(e);
    free(x2);
    c->calls++;
    return 0;
}

typedef struct Steps {
    float *x, *den;   /* (10, n) */
    int64_t n;
} Steps;

static int record_step(void *vctx, const LdmStepInfo *info) {
    Steps *s = vctx;
    memcpy(s->x + (size_t)info->step * s->n, info->x, (size_t)s->n * sizeof(float));
    memcpy(s->den + (size_t)info->step * s->n, info->denoised, (size_t)s->n * sizeof(float));
    return 0;
}


START_TEST(test_sdxl_euler_cfg5) {
    char *d[] = {"B=2", "H=128", "W=128", NULL};
    const char *unet = build_runner("models/sd1/unet.graph", "unet-sdxl-tiny", d);
    char *dv[] = {"B=1", "H=128", "W=128", NULL};
    const char *vae = build_runner("models/sd1/vae_decoder.graph", "vae-sdxl-tiny", dv);
    const char *io = xl("txt2img_euler_cfg5.io.safetensors");

    /* conditioning: the golden's own (checked against conditioner.io above) */
    int64_t nc, ny, n;
    float *c = read_f32(io, "c_crossattn", &nc), *uc = read_f32(io, "uc_crossattn", NULL);
    float *cv = read_f32(io, "c_vector", &ny), *uv = read_f32(io, "uc_vector", NULL);
    /* our zeroed unconditional branch from c_vector: pooled zeros, same sizes */
    float *ours_uv = ldm_xmalloc((size_t)ny * sizeof(float));
    memcpy(ours_uv, cv, (size_t)ny * sizeof(float));
    memset(ours_uv, 0, (size_t)(ny - 1536) * sizeof(float));
    expect_close(io, "uc_vector", ours_uv, ny);
    float *zero = calloc((size_t)nc, sizeof(float));
    expect_close(io, "uc_crossattn", zero, nc);
    float *ctx2 = ldm_xmalloc((size_t)(2 * nc) * sizeof(float)), *y2 = ldm_xmalloc((size_t)(2 * ny) * sizeof(float));
    memcpy(ctx2, zero, (size_t)nc * sizeof(float));
    memcpy(ctx2 + nc, c, (size_t)nc * sizeof(float));
    memcpy(y2, ours_uv, (size_t)ny * sizeof(float));
    memcpy(y2 + ny, cv, (size_t)ny * sizeof(float));

    float *x = read_f32(io, "randn", &n);
    EpsCtx ec = {unet, ctx2, y2, 2 * nc, 2 * ny, {1, 4, 16, 16}, 0};
    Steps st = {ldm_xmalloc((size_t)(10 * n) * sizeof(float)), ldm_xmalloc((size_t)(10 * n) * sizeof(float)), n};
    CfgNode *cfg = load_cfg(xl("config.json"));
    ModelFacts f;
    ck_assert_msg(model_facts(cfg, &f) == 0, "%s", ldm_last_error());
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, f.linear_start, f.linear_end, f.timesteps), 0);
    float sig[11];
    ck_assert_int_eq(ldm_kdiff_sigmas(&s, LDM_SIGMAS_SGM, 10, sig), 0);
    expect_close(io, "sigmas", sig, 11);
    LdmSampler p = {0};
    p.kind = LDM_SAMPLER_EULER;
    p.steps = 10;
    p.sigmas = LDM_SIGMAS_SGM;
    p.n = n;
    p.eps_fn = eps_by_runner;
    p.eps_ctx = &ec;
    p.step_fn = record_step;
    p.step_ctx = &st;
    ck_assert_msg(ldm_sample(&s, &p, x) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(ec.calls, 10);
    expect_close(io, "x_start", st.x, n);
    expect_close(io, "step_x", st.x, 10 * n);
    expect_close(io, "step_denoised", st.den, 10 * n);
    expect_close(io, "latent", x, n);

    /* decode: first_stage_model.decode(latent / scale_factor) */
    float *z = ldm_xmalloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) z[i] = x[i] / (float)f.scale_factor;
    StWriter *w = st_writer_new();
    int64_t zs[4] = {1, 4, 16, 16};
    st_writer_add(w, "z", ST_F32, 4, zs, z);
    const char *zin = test_tmp("z.safetensors"), *zout = test_tmp("image.safetensors");
    ck_assert_msg(st_writer_save(w, zin) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    char *argv[] = {(char *)vae, "--weights", (char *)xl("model-fp16.safetensors"), "--inputs", (char *)zin,
                    "--outputs", (char *)zout, NULL};
    char *log = NULL;
    ck_assert_msg(test_run(argv, &log) == 0, "vae runner failed:\n%s", log);
    free(log);
    int64_t ni;
    float *img = read_f32(zout, "image", &ni);
    expect_close(io, "image", img, ni);
    float *img01 = ldm_xmalloc((size_t)ni * sizeof(float));
    for (int64_t i = 0; i < ni; i++) {
        float v = (img[i] + 1.0f) / 2.0f;
        img01[i] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
    }
    expect_close(io, "image01", img01, ni);
    /* the PNG: uint8(255 * image01), truncating; a value within the image01
     * tolerance of a step may land on the other side of it */
    uint8_t *rgb;
    int W, H;
    ck_assert_msg(ldm_png_read_rgb8(xl("txt2img_euler_cfg5.png"), &rgb, &W, &H) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(W * H * 3, ni);
    int worst = 0;
    for (int y = 0; y < H; y++)
        for (int xx = 0; xx < W; xx++)
            for (int ch = 0; ch < 3; ch++) {
                int v = (int)(255.0f * img01[(size_t)ch * H * W + (size_t)y * W + xx]);
                int dd = abs(v - (int)rgb[((size_t)y * W + xx) * 3 + ch]);
                if (dd > worst) worst = dd;
            }
    printf("sdxl: txt2img_euler_cfg5.png max byte difference %d\n", worst);
    ck_assert_int_le(worst, 1);
    free(rgb), free(img), free(img01), free(z), free(x), free(st.x), free(st.den);
    free(c), free(uc), free(cv), free(uv), free(ours_uv), free(zero), free(ctx2), free(y2);
    ldm_schedule_free(&s);
    cfg_free(cfg);
}
END_TEST

/* ---- the txt2img executable (make txt2img CONFIG=.../sdxl-tiny/config.json) --------- */

static char g_xl_exe[600];

/* Build it once (make is a no-op when it is up to date); TAESD=0: the
 * sdxl-tiny checkpoint has no TAESD and the suite does not need it. */
static const char *xl_txt2img(void) {
    if (g_xl_exe[0]) return g_xl_exe;
    test_dir_init("ldm_sdxl_");
    char build[300], config[512], exe[600], logf[600];
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(config, sizeof config, "CONFIG=%s", xl("config.json"));
    snprintf(exe, sizeof exe, "%s/txt2img-test-sdxl-tiny", test_build_dir());
    char *argv[] = {"make", "-s", "-j2", build, XL_SAN ? "SAN=1" : "SAN=0", "txt2img", config, "H=128", "W=128", "TAESD=0",
                    "TXT2IMG_NAME=txt2img-test-sdxl-tiny", NULL};
    snprintf(logf, sizeof logf, "%s/make-txt2img-sdxl.log", test_dir);
    int rc = test_wait_status(test_spawn(argv, logf));
    size_t len;
    char *log = ldm_read_file(logf, &len);
    ck_assert_msg(rc == 0 && access(exe, X_OK) == 0, "make txt2img for sdxl-tiny failed:\n%s", log ? log : "");
    free(log);
    snprintf(g_xl_exe, sizeof g_xl_exe, "%s", exe);
    return g_xl_exe;
}

/* The golden's randn as tensor `noise` (--init-noise). */
static const char *golden_noise(void) {
    const char *fr[] = {"randn"}, *to[] = {"noise"};
    return renamed_inputs(xl("txt2img_euler_cfg5.io.safetensors"), fr, to, 1, "noise.safetensors");
}

/* txt2img_euler_cfg5 end to end: the executable's defaults for an sgm
 * config (sampler euler, schedule sgm), guidance 5, 10 steps, the golden's
 * x_T and size conditioning, an empty negative prompt (the zeroed branch);
 * the latent within its tolerance and the PNG within one step of 255. */
START_TEST(test_sdxl_txt2img_euler_cfg5) {
    const char *exe = xl_txt2img();
    const char *noise = golden_noise();
    const char *png = test_tmp("xl.png"), *lat = test_tmp("xl-latent.safetensors");
    char *argv[] = {(char *)exe, "--weights", (char *)xl("model-fp16.safetensors"), "--prompt",
                    "a photograph of an astronaut riding a horse", "--steps", "10", "--cfg-scale", "5",
                    "--init-noise", (char *)noise, "-o", (char *)png, "--save-latent", (char *)lat, "--quiet",
                    /* the golden's size conditioning (sgm's defaults, 1024; ours default to the image size) */
                    "--original-size", "1024x1024", "--crop-top-left", "0,0", "--target-size", "1024x1024", NULL};
    char *out = NULL;
    ck_assert_msg(test_run(argv, &out) == 0, "%s", out);
    free(out);
    int64_t n;
    float *l = read_f32(lat, "latent", &n);
    expect_close(xl("txt2img_euler_cfg5.io.safetensors"), "latent", l, n);
    free(l);
    int d = png_max_diff(png, xl("txt2img_euler_cfg5.png"));
    printf("sdxl: txt2img executable PNG max byte difference %d\n", d);
    ck_assert_int_le(d, 1);
}
END_TEST

/* non-default size conditioning changes the image; the flags' values are checked */
START_TEST(test_sdxl_txt2img_sizes) {
    const char *exe = xl_txt2img();
    const char *noise = golden_noise();
    const char *lat0 = test_tmp("s0.safetensors"), *lat1 = test_tmp("s1.safetensors");
    char *a0[] = {(char *)exe, "--weights", (char *)xl("model-fp16.safetensors"), "--prompt", "cat", "--steps", "2",
                  "--init-noise", (char *)noise, "-o", (char *)test_tmp("s0.png"), "--save-latent", (char *)lat0,
                  "--quiet", "--original-size", "128x128", "--crop-top-left", "0,0", "--target-size", "128x128", NULL};
    char *a1[] = {(char *)exe, "--weights", (char *)xl("model-fp16.safetensors"), "--prompt", "cat", "--steps", "2",
                  "--init-noise", (char *)noise, "-o", (char *)test_tmp("s1.png"), "--save-latent", (char *)lat1,
                  "--quiet", "--original-size", "1024x768", "--crop-top-left", "16,32", NULL};
    char *out = NULL;
    ck_assert_msg(test_run(a0, &out) == 0, "%s", out);
    free(out);
    ck_assert_msg(test_run(a1, &out) == 0, "%s", out);
    free(out);
    ck_assert_msg(!same_latent(lat0, lat1), "the size conditioning changed nothing");
    /* the defaults are the image size: the same latent as without the flags */
    const char *lat2 = test_tmp("s2.safetensors");
    char *a2[] = {(char *)exe, "--weights", (char *)xl("model-fp16.safetensors"), "--prompt", "cat", "--steps", "2",
                  "--init-noise", (char *)noise, "-o", (char *)test_tmp("s2.png"), "--save-latent", (char *)lat2,
                  "--quiet", NULL};
    ck_assert_msg(test_run(a2, &out) == 0, "%s", out);
    free(out);
    ck_assert_msg(same_latent(lat0, lat2), "--original-size/--target-size of the image size differ from the defaults");
}
END_TEST

/* Bad input: refused with a clear message, exit status != 0, no output. */
static void xl_refused(char *const argv[], const char *want) {
    char *out = NULL;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc != 0, "accepted: %s", out);
    ck_assert_msg(strstr(out, want), "message lacks '%s':\n%s", want, out);
    free(out);
    assert_no_output("bad");
}

START_TEST(test_sdxl_txt2img_bad) {
    const char *exe = xl_txt2img();
    const char *w = xl("model-fp16.safetensors"), *png = test_tmp("bad.png");
    static const char *bad_sizes[][2] = {{"--original-size", "0x128"}, {"--original-size", "128"},
                                         {"--target-size", "-5x5"}, {"--target-size", "axb"},
                                         {"--crop-top-left", "1,-1"}, {"--crop-top-left", "3"}};
    for (size_t i = 0; i < sizeof bad_sizes / sizeof *bad_sizes; i++) {
        char *argv[] = {(char *)exe, "--weights", (char *)w, "--prompt", "x", "-o", (char *)png,
                        (char *)bad_sizes[i][0], (char *)bad_sizes[i][1], NULL};
        xl_refused(argv, bad_sizes[i][0]);
    }
    /* a crop outside the original size */
    char *crop[] = {(char *)exe, "--weights", (char *)w, "--prompt", "x", "-o", (char *)png, "--steps", "1",
                    "--original-size", "64x64", "--crop-top-left", "64,0", NULL};
    xl_refused(crop, "outside the original size");
    /* an SD v1 checkpoint to the SDXL executable: refused before any work */
    char *v1[] = {(char *)exe, "--weights", (char *)test_shared("goldens/sd1-tiny/model.safetensors"), "--prompt", "x",
                  "-o", (char *)png, NULL};
    xl_refused(v1, "looks like Stable Diffusion v1");
    char *v2[] = {(char *)exe, "--weights", (char *)test_shared("goldens/sd2-tiny/model.safetensors"), "--prompt", "x",
                  "-o", (char *)png, NULL};
    xl_refused(v2, "looks like Stable Diffusion 2.x");
}
END_TEST

/* The reverse: the SDXL checkpoint to an SD v1 executable. */
START_TEST(test_sdxl_checkpoint_to_sd1) {
    test_dir_init("ldm_sdxl_");
    char exe[600];
    char *log = NULL;
    test_build_sd1_tiny_txt2img(XL_SAN, exe, sizeof exe, &log);
    ck_assert_msg(exe[0], "make txt2img sd1-tiny failed:\n%s", log ? log : "");
    char *argv[] = {exe, "--weights", (char *)xl("model-fp16.safetensors"), "--prompt", "x", "-o",
                    (char *)test_tmp("bad.png"), NULL};
    xl_refused(argv, "looks like Stable Diffusion XL");
}
END_TEST

/* Every sampler family and schedule works with the SDXL executable (a
 * smoke run of 2 steps each: CompVis DDIM, k-diffusion with karras and
 * with the sgm schedule, a second-order one, diffusers' UniPC). */
START_TEST(test_sdxl_txt2img_samplers) {
    const char *exe = xl_txt2img();
    static const char *runs[][2] = {{"ddim", NULL}, {"dpmpp_2m", "karras"}, {"heun", "sgm"},
                                    {"euler_a", "discrete"}, {"uni_pc", NULL}};
    for (size_t i = 0; i < sizeof runs / sizeof *runs; i++) {
        const char *png = test_tmp("smp%zu.png", i);
        char *argv[] = {(char *)exe, "--weights", (char *)xl("model-fp16.safetensors"), "--prompt", "a red fox",
                        "--negative-prompt", i % 2 ? "blurry" : "", "--steps", "2", "--sampler", (char *)runs[i][0],
                        "--seed", "3", "-o", (char *)png, "--quiet", NULL, NULL, NULL};
        if (runs[i][1]) { /* the k-samplers' schedule */
            argv[16] = "--schedule";
            argv[17] = (char *)runs[i][1];
        }
        char *out = NULL;
        ck_assert_msg(test_run(argv, &out) == 0, "%s/%s: %s", runs[i][0], runs[i][1] ? runs[i][1] : "-", out);
        free(out);
        ck_assert_msg(test_exists(png), "%s: no image", runs[i][0]);
    }
}
END_TEST

/* ---- LoRA: kohya's SDXL names (lora_unet_input_blocks_*, lora_te1_*, lora_te2_*) ---- */

/* One module of the test LoRA: its kohya prefix, the checkpoint key the
 * webui binds it to (extensions-builtin/Lora: SDXL UNet names are CompVis
 * paths; te1 -> conditioner.embedders.0.transformer; te2 -> the OpenCLIP
 * tower, q/k/v_proj as thirds of the packed attn.in_proj_weight), the third
 * (-1: all rows), and the factor shapes. */
typedef struct XlMod {
    const char *prefix, *key;
    int part;
    int down_ndim;
    int64_t down[4], up[4];
} XlMod;

#define XL_TE2 "conditioner.embedders.1.model.transformer.resblocks.0."
static const XlMod k_xl_mods[] = {
    {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
     "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", -1, 2, {4, 64}, {64, 4}},
    {"lora_unet_input_blocks_1_0_in_layers_2", "model.diffusion_model.input_blocks.1.0.in_layers.2.weight", -1, 4,
     {4, 32, 3, 3}, {32, 4, 1, 1}},
    {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
     "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", -1, 2, {4, 24}, {24, 4}},
    {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj", XL_TE2 "attn.in_proj_weight", 0, 2, {4, 32}, {32, 4}},
    {"lora_te2_text_model_encoder_layers_0_self_attn_k_proj", XL_TE2 "attn.in_proj_weight", 1, 2, {4, 32}, {32, 4}},
    {"lora_te2_text_model_encoder_layers_0_self_attn_v_proj", XL_TE2 "attn.in_proj_weight", 2, 2, {4, 32}, {32, 4}},
    {"lora_te2_text_model_encoder_layers_0_self_attn_out_proj", XL_TE2 "attn.out_proj.weight", -1, 2, {4, 32}, {32, 4}},
    {"lora_te2_text_model_encoder_layers_0_mlp_fc1", XL_TE2 "mlp.c_fc.weight", -1, 2, {4, 32}, {128, 4}},
};
#define XL_N_MODS ((int)(sizeof k_xl_mods / sizeof k_xl_mods[0]))

static int64_t numel_of(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

/* Writes the LoRA (rank 4, alpha 2, F32 factors uniform in [-0.5, 0.5)
 * from a fixed LCG) to lora_path, and the checkpoint merged by hand at
 * multiplier mult to merged_path: W' = f16(float(W + mult * alpha / rank *
 * up @ down)), the sums in float64 in rank order, W read from its F16. */
static void xl_lora_files(const char *lora_path, const char *merged_path, float mult) {
    float *down[XL_N_MODS], *up[XL_N_MODS];
    uint64_t st = 2024;
    StWriter *lw = st_writer_new();
    for (int m = 0; m < XL_N_MODS; m++) {
        const XlMod *x = &k_xl_mods[m];
        int64_t nd = numel_of(x->down_ndim, x->down), nu = numel_of(x->down_ndim == 4 ? 4 : 2, x->up);
        down[m] = ldm_xmalloc((size_t)nd * sizeof(float));
        up[m] = ldm_xmalloc((size_t)nu * sizeof(float));
        for (int64_t i = 0; i < nd; i++) down[m][i] = (float)((st = st * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
        for (int64_t i = 0; i < nu; i++) up[m][i] = (float)((st = st * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
        char name[160];
        snprintf(name, sizeof name, "%s.lora_down.weight", x->prefix);
        st_writer_add(lw, name, ST_F32, x->down_ndim, x->down, down[m]);
        snprintf(name, sizeof name, "%s.lora_up.weight", x->prefix);
        st_writer_add(lw, name, ST_F32, x->down_ndim == 4 ? 4 : 2, x->up, up[m]);
        snprintf(name, sizeof name, "%s.alpha", x->prefix);
        float alpha = 2.0f;
        st_writer_add(lw, name, ST_F32, 0, NULL, &alpha);
    }
    ck_assert_msg(st_writer_save(lw, lora_path) == 0, "%s", ldm_last_error());
    st_writer_free(lw);

    StFile f;
    ck_assert_msg(st_open(&f, xl("model-fp16.safetensors")) == 0, "%s", ldm_last_error());
    StWriter *w = st_writer_new();
    const double factor = (double)mult * (2.0 / 4.0);
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        int hit = 0;
        for (int m = 0; m < XL_N_MODS; m++) hit |= !strcmp(k_xl_mods[m].key, t->name);
        if (!hit) {
            st_writer_add_ref(w, t->name, t->dtype, t->ndim, t->shape, t->data, 0);
            continue;
        }
        ck_assert_msg(t->dtype == ST_F16, "%s: expected F16", t->name);
        const uint16_t *src = (const uint16_t *)(const void *)t->data;
        uint16_t *dst = ldm_xmalloc((size_t)t->numel * sizeof *dst);
        int64_t cols = t->numel / t->shape[0];
        for (int64_t e = 0; e < t->numel; e++) dst[e] = src[e];
        for (int m = 0; m < XL_N_MODS; m++) {
            const XlMod *x = &k_xl_mods[m];
            if (strcmp(x->key, t->name)) continue;
            int64_t rows = x->up[0], row0 = x->part < 0 ? 0 : x->part * rows;
            ck_assert_int_eq(cols, numel_of(x->down_ndim, x->down) / 4);
            for (int64_t o = 0; o < rows; o++)
                for (int64_t j = 0; j < cols; j++) {
                    double acc = 0;
                    for (int q = 0; q < 4; q++) acc += (double)up[m][o * 4 + q] * (double)down[m][q * cols + j];
                    size_t at = (size_t)((row0 + o) * cols + j);
                    dst[at] = st_f32_to_f16((float)((double)st_f16_to_f32(src[at]) + acc * factor));
                }
        }
        st_writer_add_ref(w, t->name, t->dtype, t->ndim, t->shape, dst, 1);
    }
    ck_assert_msg(st_writer_save(w, merged_path) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    st_close(&f);
    for (int m = 0; m < XL_N_MODS; m++) free(down[m]), free(up[m]);
}

/* A kohya SDXL LoRA (UNet attention and LoCon conv, both text encoders,
 * the second one's q/k/v as thirds of its packed projection) given with
 * --lora, and as a <lora:...> tag with --lora-dir, gives the latent of the
 * checkpoint merged by hand, bit for bit; and it changes the image. */
START_TEST(test_sdxl_txt2img_lora) {
    const char *exe = xl_txt2img();
    test_dir_init("ldm_sdxl_");
    mkdir(test_tmp("loras"), 0755);
    const char *lora = test_tmp("loras/xl_lora.safetensors"), *merged = test_tmp("xl-merged.safetensors");
    xl_lora_files(lora, merged, 0.8f);
    char spec[600];
    snprintf(spec, sizeof spec, "%s:0.8", lora);
    const char *lat[4] = {test_tmp("l-base.safetensors"), test_tmp("l-lora.safetensors"), test_tmp("l-merged.safetensors"),
                          test_tmp("l-tag.safetensors")};
    const char *base = xl("model-fp16.safetensors");
    char *runs[4][20] = {
        {(char *)exe, "--weights", (char *)base, "-p", "a cat", NULL},
        {(char *)exe, "--weights", (char *)base, "-p", "a cat", "--lora", spec, NULL},
        {(char *)exe, "--weights", (char *)merged, "-p", "a cat", NULL},
        {(char *)exe, "--weights", (char *)base, "-p", "a cat <lora:xl_lora:0.8>", "--lora-dir", (char *)test_tmp("loras"),
         NULL},
    };
    for (int r = 0; r < 4; r++) {
        int k = 0;
        while (runs[r][k]) k++;
        char png[64];
        snprintf(png, sizeof png, "l%d.png", r);
        const char *tail[] = {"--steps", "2", "--seed", "7", "--quiet", "-o", test_tmp("%s", png), "--save-latent", lat[r],
                              NULL};
        for (int i = 0; tail[i]; i++) runs[r][k++] = (char *)tail[i];
        runs[r][k] = NULL;
        char *out = NULL;
        int rc = test_run(runs[r], &out);
        ck_assert_msg(rc == 0, "run %d failed (status %d):\n%s", r, rc, out);
        ck_assert_msg(!strstr(out, "match nothing"), "run %d: a LoRA module matched nothing:\n%s", r, out);
        free(out);
    }
    ck_assert_msg(!same_latent(lat[0], lat[1]), "the LoRA changed nothing");
    ck_assert_msg(same_latent(lat[1], lat[2]), "--lora differs from the checkpoint merged by hand");
    ck_assert_msg(same_latent(lat[3], lat[2]), "<lora:xl_lora:0.8> with --lora-dir differs from the merged checkpoint");
}
END_TEST

/* ---- textual inversion: SDXL embeddings (clip_l and clip_g) ---------------------- */

/* Row id of an F16 [rows, W] table of the checkpoint as float32. */
static float *table_row(const StFile *f, const char *key, int32_t id, int64_t *w) {
    const StTensor *t = st_find(f, key);
    ck_assert_msg(t && t->dtype == ST_F16 && t->ndim == 2 && id < t->shape[0], "%s: expected an F16 table", key);
    *w = t->shape[1];
    float *v = ldm_xmalloc((size_t)*w * sizeof *v);
    const uint16_t *h = (const uint16_t *)(const void *)t->data + (size_t)id * (size_t)*w;
    for (int64_t j = 0; j < *w; j++) v[j] = st_f16_to_f32(h[j]);
    return v;
}

/* An SDXL embedding (clip_l for the first encoder, clip_g for the second,
 * as the webui's textual_inversion_key) whose one vector is each encoder's
 * own token row of "cat": "a photo of mycat" gives the latent of "a photo
 * of cat" bit for bit (emb_keep 0 and emb_rows = the row, against keep 1
 * and rows 0), and the run names it; an SD v1 embedding in the same
 * directory is skipped with a warning; clip_l and clip_g of different
 * vector counts are refused. */
START_TEST(test_sdxl_txt2img_embeddings) {
    const char *exe = xl_txt2img();
    test_dir_init("ldm_sdxl_");
    ClipTokenizer *tok = clip_tokenizer_load_builtin();
    ck_assert(tok);
    int32_t *ids = NULL;
    ck_assert_int_eq(clip_encode(tok, "cat", &ids), 1);
    StFile f;
    ck_assert_msg(st_open(&f, xl("model-fp16.safetensors")) == 0, "%s", ldm_last_error());
    int64_t wl, wg;
    float *l = table_row(&f, "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight", ids[0], &wl);
    float *g = table_row(&f, "conditioner.embedders.1.model.token_embedding.weight", ids[0], &wg);
    st_close(&f);
    mkdir(test_tmp("emb"), 0755);
    StWriter *w = st_writer_new();
    int64_t sl[2] = {1, wl}, sg[2] = {1, wg};
    st_writer_add(w, "clip_l", ST_F32, 2, sl, l);
    st_writer_add(w, "clip_g", ST_F32, 2, sg, g);
    ck_assert_msg(st_writer_save(w, test_tmp("emb/mycat.safetensors")) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    w = st_writer_new(); /* an SD v1 embedding: skipped */
    int64_t s1[2] = {1, 768};
    float *z = ldm_xcalloc(768, sizeof *z);
    st_writer_add(w, "emb_params", ST_F32, 2, s1, z);
    ck_assert_msg(st_writer_save(w, test_tmp("emb/sd1emb.safetensors")) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    const char *lat[2] = {test_tmp("e-word.safetensors"), test_tmp("e-emb.safetensors")};
    const char *png = test_tmp("e-emb.png");
    char *a0[] = {(char *)exe, "--weights", (char *)xl("model-fp16.safetensors"), "-p", "a photo of cat", "--steps", "2",
                  "--seed", "3", "--quiet", "-o", (char *)test_tmp("e-word.png"), "--save-latent", (char *)lat[0], NULL};
    char *a1[] = {(char *)exe, "--weights", (char *)xl("model-fp16.safetensors"), "-p", "a photo of mycat", "--steps", "2",
                  "--seed", "3", "--embeddings", (char *)test_tmp("emb"), "-o", (char *)png, "--save-latent",
                  (char *)lat[1], NULL};
    char *out = NULL;
    ck_assert_msg(test_run(a0, &out) == 0, "%s", out);
    free(out);
    ck_assert_msg(test_run(a1, &out) == 0, "%s", out);
    ck_assert_msg(strstr(out, "skipped") && strstr(out, "sd1emb.safetensors"), "no warning for the SD v1 embedding:\n%s", out);
    ck_assert_msg(strstr(out, "embeddings mycat"), "the run does not say it called the embedding:\n%s", out);
    free(out);
    ck_assert_msg(same_latent(lat[0], lat[1]), "the embedding of cat's rows differs from the word cat");
    ck_assert(test_exists(png));
    /* clip_l with 2 vectors, clip_g with 1: refused, no image */
    w = st_writer_new();
    int64_t sl2[2] = {2, wl};
    float *l2 = ldm_xcalloc((size_t)(2 * wl), sizeof *l2);
    st_writer_add(w, "clip_l", ST_F32, 2, sl2, l2);
    st_writer_add(w, "clip_g", ST_F32, 2, sg, g);
    ck_assert_msg(st_writer_save(w, test_tmp("emb/uneven.safetensors")) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    const char *bad = test_tmp("e-bad.png");
    char *a2[] = {(char *)exe, "--weights", (char *)xl("model-fp16.safetensors"), "-p", "x", "--steps", "1",
                  "--embeddings", (char *)test_tmp("emb"), "-o", (char *)bad, NULL};
    ck_assert_int_ne(test_run(a2, &out), 0);
    ck_assert_msg(strstr(out, "uneven.safetensors") && strstr(out, "vectors"), "%s", out);
    free(out);
    ck_assert(!test_exists(bad));
    free(l), free(g), free(z), free(l2), free(ids);
    clip_tokenizer_free(tok);
}
END_TEST

/* The graphs on an SDXL-like configuration they were not tuned on: other
 * depths per level (including 0 blocks), head size, width, a non-square
 * size, batch 2; compiled and run on random weights of its own shapes
 * (ldmc randckpt), the output finite and each sample independent of the
 * other (batch 2 = two batch-1 runs). */
START_TEST(test_sdxl_unseen_config) {
    test_dir_init("ldm_sdxl_");
    static char *const over[] = {"-D", "model.params.network_config.params.transformer_depth=[0,3,1]", "-D",
                                 "model.params.network_config.params.num_head_channels=16", "-D",
                                 "model.params.network_config.params.model_channels=64", NULL};
    const char *ckpt = test_tmp("unseen.safetensors");
    char *rargv[32];
    int k = 0;
    rargv[k++] = (char *)ldmc_path();
    rargv[k++] = "randckpt";
    rargv[k++] = "--config";
    rargv[k++] = (char *)xl("config.json");
    for (int i = 0; over[i]; i++) rargv[k++] = over[i];
    rargv[k++] = "-o";
    rargv[k++] = (char *)ckpt;
    rargv[k++] = "models/sd1/unet.graph";
    rargv[k] = NULL;
    char *out = NULL;
    ck_assert_msg(test_run(rargv, &out) == 0, "randckpt: %s", out);
    free(out);
    const char *exes[2];
    for (int b = 0; b < 2; b++) {
        char *argv[40];
        int n = 0;
        argv[n++] = (char *)ldmc_path();
        argv[n++] = "models/sd1/unet.graph";
        argv[n++] = "--config";
        argv[n++] = (char *)xl("config.json");
        for (int i = 0; over[i]; i++) argv[n++] = over[i];
        argv[n++] = "-D";
        argv[n++] = b ? "B=2" : "B=1";
        argv[n++] = "-D";
        argv[n++] = "H=64";
        argv[n++] = "-D";
        argv[n++] = "W=96";
        argv[n++] = "-o";
        exes[b] = kept_path(test_tmp("unseen-b%d", b + 1));
        argv[n++] = (char *)exes[b];
        argv[n] = NULL;
        ck_assert_msg(test_run(argv, &out) == 0, "ldmc: %s", out);
        free(out);
    }
    /* inputs for batch 2: x [2,4,8,12], t, context [2,77,56], y [2,1576]; batch 1: the second sample */
    int64_t nx = 4 * 8 * 12, nc = 77 * 56, ny = 1576;
    float *x = ldm_xmalloc((size_t)(2 * nx) * sizeof(float)), *c = ldm_xmalloc((size_t)(2 * nc) * sizeof(float)),
          *y = ldm_xmalloc((size_t)(2 * ny) * sizeof(float)), t[2] = {999.0f, 250.0f};
    uint64_t st = 12345;
    for (int64_t i = 0; i < 2 * nx; i++) x[i] = (float)((st = st * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
    for (int64_t i = 0; i < 2 * nc; i++) c[i] = (float)((st = st * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
    for (int64_t i = 0; i < 2 * ny; i++) y[i] = (float)((st = st * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
    float *eps[2];
    for (int b = 0; b < 2; b++) {
        int B = b + 1;
        int64_t off = b ? 0 : 1; /* batch 1 runs sample 1 */
        StWriter *w = st_writer_new();
        int64_t xs[4] = {B, 4, 8, 12}, ts[1] = {B}, cs[3] = {B, 77, 56}, ys[2] = {B, ny};
        st_writer_add(w, "x", ST_F32, 4, xs, x + off * nx);
        st_writer_add(w, "timesteps", ST_F32, 1, ts, t + off);
        st_writer_add(w, "context", ST_F32, 3, cs, c + off * nc);
        st_writer_add(w, "y", ST_F32, 2, ys, y + off * ny);
        const char *in = test_tmp("unseen-in%d.safetensors", B), *o = test_tmp("unseen-out%d.safetensors", B);
        ck_assert_msg(st_writer_save(w, in) == 0, "%s", ldm_last_error());
        st_writer_free(w);
        ck_assert_msg(test_run_runner(exes[b], ckpt, in, o, NULL, NULL, &out) == 0, "%s", out);
        free(out);
        eps[b] = read_f32(o, "eps", NULL);
    }
    for (int64_t i = 0; i < 2 * nx; i++) ck_assert_msg(isfinite(eps[1][i]), "eps[%lld] is not finite", (long long)i);
    double d = max_abs_diff(eps[1] + nx, eps[0], nx);
    printf("sdxl: unseen config (depths [0,3,1], 16-channel heads, 64 channels, 64x96): batch 2 vs 1 max diff %.3g\n", d);
    ck_assert_msg(d < 1e-4, "sample 1 of a batch-2 run differs from its batch-1 run by %g", d);
    free(x), free(c), free(y), free(eps[0]), free(eps[1]);
}
END_TEST

Suite *suite_sdxl(void) {
    Suite *s = suite_create("sdxl");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_sdxl_facts_real_yaml);
    tcase_add_test(tc, test_sdxl_facts_json);
    tcase_add_test(tc, test_sdxl_facts_bad);
    tcase_add_test(tc, test_sdxl_tokens);
    tcase_add_test(tc, test_sdxl_size_embeddings);
    tcase_add_test(tc, test_sdxl_size_flags);
    tcase_add_test(tc, test_sdxl_schedule);
    suite_add_tcase(s, tc);
    tc = tcase_create("networks");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_sdxl_stats_real);
    tcase_add_test(tc, test_sdxl_unet);
    tcase_add_test(tc, test_sdxl_conditioner);
    tcase_add_test(tc, test_sdxl_stats_text);
    tcase_add_test(tc, test_sdxl_euler_cfg5);
    tcase_add_test(tc, test_sdxl_unseen_config);
    suite_add_tcase(s, tc);
    tc = tcase_create("txt2img");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_sdxl_txt2img_euler_cfg5);
    tcase_add_test(tc, test_sdxl_txt2img_sizes);
    tcase_add_test(tc, test_sdxl_txt2img_bad);
    tcase_add_test(tc, test_sdxl_checkpoint_to_sd1);
    tcase_add_test(tc, test_sdxl_txt2img_samplers);
    tcase_add_test(tc, test_sdxl_txt2img_lora);
    tcase_add_test(tc, test_sdxl_txt2img_embeddings);
    suite_add_tcase(s, tc);
    return s;
}
