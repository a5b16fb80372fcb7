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
#include "ldmc.h"
#include "safetensors.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "util.h"

#define XL "goldens/sdxl-tiny/"

static const char *xl(const char *rel) {
    static char ring[8][512];
    static int k;
    char *b = ring[k++ % 8];
    snprintf(b, 512, "%s/" XL "%s", test_shared_dir(), rel);
    return b;
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
    const char *exe = test_tmp("%s", name);
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
    char *argv[32];
    int k = 0;
    argv[k++] = (char *)exe;
    argv[k++] = "--weights";
    argv[k++] = (char *)xl("model-fp16.safetensors");
    argv[k++] = "--inputs";
    argv[k++] = (char *)io;
    argv[k++] = "--prefix";
    argv[k++] = (char *)prefix;
    argv[k++] = "--outputs";
    argv[k++] = (char *)out;
    for (int i = 0; extra && extra[i]; i++) argv[k++] = extra[i];
    argv[k] = NULL;
    char *log = NULL;
    int rc = test_run(argv, &log);
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

START_TEST(test_sdxl_unet) {
    char *d[] = {"B=2", "H=128", "W=128", NULL};
    const char *exe = build_runner("models/sd1/unet.graph", "unet-sdxl-tiny", d);
    const char *ours[] = {"eps"}, *gold[] = {"out"};
    for (int k = 0; k < 3; k++) {
        char prefix[16];
        snprintf(prefix, sizeof prefix, "case%d.", k);
        run_and_compare(exe, xl("unet.io.safetensors"), prefix, ours, gold, 1, NULL);
    }
}
END_TEST

Suite *suite_sdxl(void) {
    Suite *s = suite_create("sdxl");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_sdxl_facts_real_yaml);
    tcase_add_test(tc, test_sdxl_facts_json);
    tcase_add_test(tc, test_sdxl_facts_bad);
    suite_add_tcase(s, tc);
    tc = tcase_create("networks");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_sdxl_stats_real);
    tcase_add_test(tc, test_sdxl_unet);
    suite_add_tcase(s, tc);
    return s;
}
