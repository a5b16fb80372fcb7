/*
 * test_config.c - Check tests of compiler/config.c: every shared golden
 * config.yaml and every real CompVis config under models/ loads with the
 * right values; the YAML 1.1 / OmegaConf scalar typing table; source
 * locations; lookups; -D overrides; aliases and merge keys; the debug dump
 * (deterministic and parses back to the same tree); and the exact
 * "file:line:col: error: ..." diagnostics for malformed input.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "testutil.h"
#include "util.h"

/* ------------------------------------------------------------------------
 * helpers
 * ------------------------------------------------------------------------ */

static CfgNode *load_ok(const char *path) {
    CfgNode *n = cfg_load(path);
    ck_assert_msg(n != NULL, "cfg_load(%s): %s", path, ldm_last_error());
    return n;
}

static CfgNode *parse_ok(const char *text) {
    CfgNode *n = cfg_parse_string(text, "t.yaml");
    ck_assert_msg(n != NULL, "parse of <<%s>>: %s", text, ldm_last_error());
    return n;
}

/* The node at path, which must exist and be of the given kind. */
static const CfgNode *at(const CfgNode *root, const char *path, CfgKind kind) {
    const CfgNode *n = cfg_path(root, path);
    ck_assert_msg(n != NULL, "%s: missing", path);
    ck_assert_msg(n->kind == kind, "%s: is %s, expected %s", path, cfg_kind_name(n->kind), cfg_kind_name(kind));
    return n;
}

static void expect_int(const CfgNode *root, const char *path, int64_t v) {
    const CfgNode *n = at(root, path, CFG_INT);
    ck_assert_msg(n->i == v, "%s = %lld, expected %lld", path, (long long)n->i, (long long)v);
}

static void expect_float(const CfgNode *root, const char *path, double v) {
    const CfgNode *n = at(root, path, CFG_FLOAT);
    ck_assert_msg(n->f == v, "%s = %.17g, expected %.17g", path, n->f, v);
}

static void expect_bool(const CfgNode *root, const char *path, int v) {
    ck_assert_int_eq(at(root, path, CFG_BOOL)->b, v);
}

static void expect_str(const CfgNode *root, const char *path, const char *v) {
    ck_assert_str_eq(at(root, path, CFG_STRING)->s, v);
}

static void expect_null(const CfgNode *root, const char *path) { at(root, path, CFG_NULL); }

/* A list of n ints (n may be 0). */
static void expect_ints(const CfgNode *root, const char *path, int n, const int64_t *v) {
    const CfgNode *l = at(root, path, CFG_LIST);
    ck_assert_msg(l->n == n, "%s has %d items, expected %d", path, l->n, n);
    for (int k = 0; k < n; k++) {
        ck_assert_msg(l->items[k]->kind == CFG_INT && l->items[k]->i == v[k], "%s[%d] is not %lld", path, k,
                      (long long)v[k]);
    }
}
#define EXPECT_INTS(root, path, ...)                                                                  \
    do {                                                                                              \
        static const int64_t v_[] = {__VA_ARGS__};                                                    \
        expect_ints(root, path, (int)(sizeof v_ / sizeof v_[0]), v_);                                 \
    } while (0)

/* Parsing text must fail with an error starting with prefix. */
static void expect_parse_error(const char *text, const char *prefix) {
    CfgNode *n = cfg_parse_string(text, "bad.yaml");
    ck_assert_msg(n == NULL, "<<%s>> parsed, expected error '%s'", text, prefix);
    const char *e = ldm_last_error();
    ck_assert_msg(strncmp(e, prefix, strlen(prefix)) == 0, "<<%s>>:\n got      '%s'\n expected '%s...'", text, e,
                  prefix);
}

/* Whole trees equal, ignoring locations. */
static int tree_equal(const CfgNode *a, const CfgNode *b) {
    if (a->kind != b->kind || a->n != b->n) return 0;
    switch (a->kind) {
    case CFG_NULL: return 1;
    case CFG_BOOL: return a->b == b->b;
    case CFG_INT: return a->i == b->i;
    case CFG_FLOAT: return (isnan(a->f) && isnan(b->f)) || memcmp(&a->f, &b->f, sizeof a->f) == 0;
    case CFG_STRING: return strcmp(a->s, b->s) == 0;
    case CFG_LIST:
    case CFG_MAP:
        for (int k = 0; k < a->n; k++) {
            if (a->kind == CFG_MAP && strcmp(a->keys[k], b->keys[k]) != 0) return 0;
            if (!tree_equal(a->items[k], b->items[k])) return 0;
        }
        return 1;
    }
    return 0;
}

/* cfg_print into a malloc'd string. */
static char *print_str(const CfgNode *n) {
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(fp);
    cfg_print(n, fp);
    fclose(fp);
    return buf;
}

/* Write bytes to a fresh temporary .yaml file; returns its path (static). */
static const char *temp_yaml(const void *data, size_t len) {
    static char path[64];
    strcpy(path, "/tmp/ldm_cfg_test_XXXXXX.yaml");
    int fd = mkstemps(path, 5);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
    return path;
}

/* The real configs shipped under models/. */
static const char *real_configs[] = {
    "models/sd1/v1-inference.yaml",     "models/sd1/v1-inpainting-inference.yaml",
    "models/ldm/celebahq-ldm-vq-4.yaml", "models/ldm/ffhq-ldm-vq-4.yaml",
    "models/ldm/cin256-v2.yaml",         "models/ldm/lsun_churches-ldm-kl-8.yaml",
    "models/ldm/lsun_bedrooms-ldm-vq-4.yaml",
};
#define N_REAL ((int)(sizeof real_configs / sizeof real_configs[0]))

#define UNET "model.params.unet_config.params."
#define DDCONFIG "model.params.first_stage_config.params.ddconfig."

/* ------------------------------------------------------------------------
 * shared goldens
 * ------------------------------------------------------------------------ */

START_TEST(test_goldens_all_load) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/goldens", test_shared_dir());
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "cannot open %s", dir);
    int loaded = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s/config.yaml", dir, e->d_name);
        if (e->d_name[0] == '.' || access(path, R_OK) != 0) continue;
        CfgNode *root = load_ok(path);
        ck_assert_int_eq(root->kind, CFG_MAP);
        ck_assert_str_eq(root->file, path);
        at(root, "model.target", CFG_STRING);
        ck_assert_int_gt(at(root, UNET "model_channels", CFG_INT)->i, 0);
        at(root, UNET "channel_mult", CFG_LIST);
        at(root, DDCONFIG "ch_mult", CFG_LIST);
        cfg_free(root);
        loaded++;
    }
    closedir(d);
    ck_assert_int_ge(loaded, 2);
}
END_TEST

START_TEST(test_golden_sd1_tiny) {
    char path[512];
    snprintf(path, sizeof path, "%s/goldens/sd1-tiny/config.yaml", test_shared_dir());
    CfgNode *c = load_ok(path);
    expect_str(c, "model.target", "ldm.models.diffusion.ddpm.LatentDiffusion");
    expect_float(c, "model.params.linear_start", 0.00085);
    expect_float(c, "model.params.linear_end", 0.012);
    expect_int(c, "model.params.timesteps", 1000);
    expect_str(c, "model.params.first_stage_key", "jpg");
    expect_str(c, "model.params.conditioning_key", "crossattn");
    expect_float(c, "model.params.scale_factor", 0.18215);
    expect_bool(c, "model.params.use_ema", 0);
    expect_bool(c, "model.params.cond_stage_trainable", 0);
    expect_int(c, UNET "model_channels", 32);
    EXPECT_INTS(c, UNET "channel_mult", 1, 2, 4, 4);
    EXPECT_INTS(c, UNET "attention_resolutions", 4, 2, 1);
    expect_int(c, UNET "context_dim", 64);
    expect_bool(c, UNET "use_spatial_transformer", 1);
    expect_bool(c, UNET "legacy", 0);
    expect_str(c, "model.params.first_stage_config.target", "ldm.models.autoencoder.AutoencoderKL");
    expect_int(c, DDCONFIG "ch", 32);
    EXPECT_INTS(c, DDCONFIG "ch_mult", 1, 2, 4, 4);
    EXPECT_INTS(c, DDCONFIG "attn_resolutions");
    expect_float(c, DDCONFIG "dropout", 0.0);
    expect_bool(c, DDCONFIG "double_z", 1);
    expect_str(c, "model.params.cond_stage_config.target", "ldm.modules.encoders.modules.FrozenCLIPEmbedder");
    expect_int(c, "model.params.cond_stage_config.params.vocab_size", 49408);
    expect_int(c, "model.params.cond_stage_config.params.max_length", 77);
    expect_int(c, "model.params.cond_stage_config.params.width", 64);
    expect_int(c, "model.params.cond_stage_config.params.heads", 4);
    expect_int(c, "model.params.cond_stage_config.params.layers", 2);
    cfg_free(c);
}
END_TEST

START_TEST(test_golden_ldm_vq4_tiny) {
    char path[512];
    snprintf(path, sizeof path, "%s/goldens/ldm-vq4-tiny/config.yaml", test_shared_dir());
    CfgNode *c = load_ok(path);
    expect_str(c, "model.params.cond_stage_config", "__is_unconditional__");
    expect_float(c, "model.params.linear_start", 0.0015);
    expect_float(c, "model.params.linear_end", 0.0195);
    expect_int(c, "model.params.channels", 3);
    expect_int(c, UNET "model_channels", 32);
    EXPECT_INTS(c, UNET "channel_mult", 1, 2, 2);
    EXPECT_INTS(c, UNET "attention_resolutions", 2, 4);
    expect_int(c, UNET "num_head_channels", 16);
    expect_str(c, "model.params.first_stage_config.target", "ldm.models.autoencoder.VQModelInterface");
    expect_int(c, "model.params.first_stage_config.params.embed_dim", 3);
    expect_int(c, "model.params.first_stage_config.params.n_embed", 64);
    EXPECT_INTS(c, DDCONFIG "ch_mult", 1, 2, 4);
    expect_bool(c, DDCONFIG "double_z", 0);
    ck_assert_ptr_null(cfg_path(c, "model.params.cond_stage_config.target"));
    cfg_free(c);
}
END_TEST

/* ------------------------------------------------------------------------
 * real CompVis configs under models/
 * ------------------------------------------------------------------------ */

START_TEST(test_real_configs_load) {
    for (int k = 0; k < N_REAL; k++) {
        CfgNode *c = load_ok(real_configs[k]);
        ck_assert_int_eq(c->kind, CFG_MAP);
        at(c, "model.target", CFG_STRING);
        ck_assert_int_gt(at(c, UNET "model_channels", CFG_INT)->i, 0);
        ck_assert_int_gt(at(c, UNET "channel_mult", CFG_LIST)->n, 0);
        ck_assert_int_eq(at(c, DDCONFIG "ch", CFG_INT)->i, 128);
        ck_assert_int_gt(at(c, DDCONFIG "ch_mult", CFG_LIST)->n, 0);
        cfg_free(c);
    }
}
END_TEST

START_TEST(test_v1_inference) {
    CfgNode *c = load_ok("models/sd1/v1-inference.yaml");
    expect_float(c, "model.base_learning_rate", 1.0e-04);
    expect_str(c, "model.target", "ldm.models.diffusion.ddpm.LatentDiffusion");
    expect_float(c, "model.params.linear_start", 0.00085);
    expect_float(c, "model.params.linear_end", 0.012);
    expect_str(c, "model.params.first_stage_key", "jpg");
    expect_int(c, "model.params.image_size", 64);
    expect_int(c, "model.params.channels", 4);
    expect_bool(c, "model.params.cond_stage_trainable", 0);
    expect_str(c, "model.params.conditioning_key", "crossattn");
    expect_str(c, "model.params.monitor", "val/loss_simple_ema");
    expect_float(c, "model.params.scale_factor", 0.18215);
    expect_bool(c, "model.params.use_ema", 0);
    EXPECT_INTS(c, "model.params.scheduler_config.params.warm_up_steps", 10000);
    EXPECT_INTS(c, "model.params.scheduler_config.params.cycle_lengths", 10000000000000LL);
    expect_float(c, "model.params.scheduler_config.params.f_start.0", 1e-6);
    expect_float(c, "model.params.scheduler_config.params.f_max.0", 1.0);
    expect_int(c, UNET "image_size", 32);
    expect_int(c, UNET "in_channels", 4);
    expect_int(c, UNET "model_channels", 320);
    EXPECT_INTS(c, UNET "attention_resolutions", 4, 2, 1);
    expect_int(c, UNET "num_res_blocks", 2);
    EXPECT_INTS(c, UNET "channel_mult", 1, 2, 4, 4);
    expect_int(c, UNET "num_heads", 8);
    expect_bool(c, UNET "use_spatial_transformer", 1);
    expect_int(c, UNET "transformer_depth", 1);
    expect_int(c, UNET "context_dim", 768);
    expect_bool(c, UNET "use_checkpoint", 1);
    expect_bool(c, UNET "legacy", 0);
    expect_int(c, "model.params.first_stage_config.params.embed_dim", 4);
    expect_int(c, DDCONFIG "z_channels", 4);
    expect_int(c, DDCONFIG "resolution", 256);
    expect_int(c, DDCONFIG "ch", 128);
    EXPECT_INTS(c, DDCONFIG "ch_mult", 1, 2, 4, 4);
    EXPECT_INTS(c, DDCONFIG "attn_resolutions");
    expect_float(c, DDCONFIG "dropout", 0.0);
    expect_str(c, "model.params.first_stage_config.params.lossconfig.target", "torch.nn.Identity");
    expect_str(c, "model.params.cond_stage_config.target", "ldm.modules.encoders.modules.FrozenCLIPEmbedder");
    /* Locations: "model_channels: 320" is on line 35, the value at column 25. */
    const CfgNode *mc = cfg_path(c, UNET "model_channels");
    ck_assert_str_eq(mc->file, "models/sd1/v1-inference.yaml");
    ck_assert_int_eq(mc->line, 35);
    ck_assert_int_eq(mc->col, 25);
    cfg_free(c);
}
END_TEST

START_TEST(test_v1_inpainting) {
    CfgNode *c = load_ok("models/sd1/v1-inpainting-inference.yaml");
    expect_float(c, "model.base_learning_rate", 7.5e-05);
    expect_str(c, "model.target", "ldm.models.diffusion.ddpm.LatentInpaintDiffusion");
    expect_str(c, "model.params.conditioning_key", "hybrid");
    expect_null(c, "model.params.finetune_keys");
    EXPECT_INTS(c, "model.params.scheduler_config.params.warm_up_steps", 2500);
    expect_int(c, UNET "in_channels", 9);
    expect_int(c, UNET "out_channels", 4);
    expect_int(c, UNET "model_channels", 320);
    expect_int(c, UNET "context_dim", 768);
    EXPECT_INTS(c, UNET "channel_mult", 1, 2, 4, 4);
    EXPECT_INTS(c, DDCONFIG "ch_mult", 1, 2, 4, 4);
    cfg_free(c);
}
END_TEST

START_TEST(test_ldm_configs) {
    CfgNode *c = load_ok("models/ldm/celebahq-ldm-vq-4.yaml");
    expect_float(c, "model.base_learning_rate", 2.0e-06);
    expect_int(c, UNET "model_channels", 224);
    EXPECT_INTS(c, UNET "attention_resolutions", 8, 4, 2);
    EXPECT_INTS(c, UNET "channel_mult", 1, 2, 3, 4);
    expect_int(c, UNET "num_head_channels", 32);
    expect_int(c, "model.params.first_stage_config.params.n_embed", 8192);
    EXPECT_INTS(c, DDCONFIG "ch_mult", 1, 2, 4);
    expect_str(c, "model.params.cond_stage_config", "__is_unconditional__");
    expect_bool(c, "lightning.callbacks.image_logger.params.increase_log_steps", 0);
    expect_bool(c, "lightning.trainer.benchmark", 1);
    expect_int(c, "data.params.batch_size", 48);
    cfg_free(c);

    c = load_ok("models/ldm/ffhq-ldm-vq-4.yaml");
    expect_int(c, UNET "model_channels", 224);
    expect_str(c, "model.params.cond_stage_config", "__is_unconditional__");
    expect_str(c, "model.params.first_stage_config.params.ckpt_path", "configs/first_stage_models/vq-f4/model.yaml");
    expect_int(c, "data.params.batch_size", 42);
    cfg_free(c);

    c = load_ok("models/ldm/cin256-v2.yaml");
    expect_float(c, "model.base_learning_rate", 0.0001);
    expect_str(c, "model.params.cond_stage_key", "class_label");
    expect_bool(c, "model.params.cond_stage_trainable", 1);
    expect_int(c, UNET "model_channels", 192);
    EXPECT_INTS(c, UNET "channel_mult", 1, 2, 3, 5);
    expect_int(c, UNET "num_heads", 1);
    expect_int(c, UNET "context_dim", 512);
    expect_str(c, "model.params.cond_stage_config.target", "ldm.modules.encoders.modules.ClassEmbedder");
    expect_int(c, "model.params.cond_stage_config.params.n_classes", 1001);
    expect_int(c, "model.params.cond_stage_config.params.embed_dim", 512);
    cfg_free(c);

    c = load_ok("models/ldm/lsun_churches-ldm-kl-8.yaml");
    expect_float(c, "model.base_learning_rate", 5.0e-5);
    expect_float(c, "model.params.linear_end", 0.0155);
    expect_str(c, "model.params.loss_type", "l1");
    expect_str(c, "model.params.first_stage_key", "image");
    expect_str(c, "model.params.monitor", "val/loss_simple_ema");
    expect_bool(c, "model.params.scale_by_std", 1);
    expect_bool(c, "model.params.concat_mode", 0);
    EXPECT_INTS(c, "model.params.scheduler_config.params.cycle_lengths", 10000000000000LL);
    expect_float(c, "model.params.scheduler_config.params.f_min.0", 1.0);
    expect_int(c, UNET "model_channels", 192);
    EXPECT_INTS(c, UNET "attention_resolutions", 1, 2, 4, 8);
    EXPECT_INTS(c, UNET "channel_mult", 1, 2, 2, 4, 4);
    expect_bool(c, UNET "use_scale_shift_norm", 1);
    expect_bool(c, UNET "resblock_updown", 1);
    EXPECT_INTS(c, DDCONFIG "ch_mult", 1, 2, 4, 4);
    EXPECT_INTS(c, DDCONFIG "attn_resolutions");
    expect_str(c, "model.params.cond_stage_config", "__is_unconditional__");
    cfg_free(c);

    c = load_ok("models/ldm/lsun_bedrooms-ldm-vq-4.yaml");
    expect_int(c, UNET "model_channels", 224);
    expect_int(c, "model.params.channels", 3);
    expect_str(c, "data.params.train.target", "ldm.data.lsun.LSUNBedroomsTrain");
    cfg_free(c);
}
END_TEST

/* ------------------------------------------------------------------------
 * scalar typing
 * ------------------------------------------------------------------------ */

/* One row of the typing table. */
typedef struct TypeCase {
    const char *text;  /* plain scalar */
    CfgKind kind;      /* expected kind */
    int64_t i;         /* expected CFG_INT / CFG_BOOL value */
    double f;          /* expected CFG_FLOAT value */
} TypeCase;

static const TypeCase type_cases[] = {
    {"", CFG_NULL, 0, 0},
    {"~", CFG_NULL, 0, 0},
    {"null", CFG_NULL, 0, 0},
    {"Null", CFG_NULL, 0, 0},
    {"NULL", CFG_NULL, 0, 0},
    {"nUll", CFG_STRING, 0, 0},
    {"true", CFG_BOOL, 1, 0},
    {"True", CFG_BOOL, 1, 0},
    {"TRUE", CFG_BOOL, 1, 0},
    {"false", CFG_BOOL, 0, 0},
    {"False", CFG_BOOL, 0, 0},
    {"FALSE", CFG_BOOL, 0, 0},
    {"yes", CFG_BOOL, 1, 0},
    {"Yes", CFG_BOOL, 1, 0},
    {"no", CFG_BOOL, 0, 0},
    {"NO", CFG_BOOL, 0, 0},
    {"on", CFG_BOOL, 1, 0},
    {"On", CFG_BOOL, 1, 0},
    {"off", CFG_BOOL, 0, 0},
    {"OFF", CFG_BOOL, 0, 0},
    {"tRue", CFG_STRING, 0, 0},
    {"y", CFG_STRING, 0, 0},
    {"n", CFG_STRING, 0, 0},
    {"0", CFG_INT, 0, 0},
    {"-0", CFG_INT, 0, 0},
    {"320", CFG_INT, 320, 0},
    {"+7", CFG_INT, 7, 0},
    {"-12", CFG_INT, -12, 0},
    {"1_000", CFG_INT, 1000, 0},
    {"10000000000000", CFG_INT, 10000000000000LL, 0},
    {"9223372036854775807", CFG_INT, INT64_MAX, 0},
    {"-9223372036854775808", CFG_INT, INT64_MIN, 0},
    {"0b101", CFG_INT, 5, 0},
    {"0x1F", CFG_INT, 31, 0},
    {"-0x10", CFG_INT, -16, 0},
    {"0777", CFG_INT, 511, 0},
    {"1:30", CFG_INT, 90, 0},
    {"1:30:05", CFG_INT, 5405, 0},
    {"0o17", CFG_STRING, 0, 0},
    {"1.0e-04", CFG_FLOAT, 0, 1.0e-04},
    {"1.e-6", CFG_FLOAT, 0, 1e-6},
    {"0.0120", CFG_FLOAT, 0, 0.012},
    {"0.18215", CFG_FLOAT, 0, 0.18215},
    {"7.5e-05", CFG_FLOAT, 0, 7.5e-05},
    {"5.0e-5", CFG_FLOAT, 0, 5.0e-5},
    {".5", CFG_FLOAT, 0, 0.5},
    {"1.", CFG_FLOAT, 0, 1.0},
    {"1e-4", CFG_FLOAT, 0, 1e-4},
    {"1E4", CFG_FLOAT, 0, 1e4},
    {"+1.5", CFG_FLOAT, 0, 1.5},
    {"-2.25", CFG_FLOAT, 0, -2.25},
    {"1_0.5", CFG_FLOAT, 0, 10.5},
    {"12:30.5", CFG_FLOAT, 0, 750.5},
    {"08", CFG_FLOAT, 0, 8.0}, /* not octal, not decimal: OmegaConf's float rule */
    {".5e-3", CFG_FLOAT, 0, 0.0005},
    {".5e3", CFG_STRING, 0, 0},  /* YAML 1.1: exponent after a bare dot needs a sign */
    {"-.5", CFG_STRING, 0, 0},   /* YAML 1.1: no sign before a bare dot */
    {".inf", CFG_FLOAT, 0, INFINITY},
    {"-.Inf", CFG_FLOAT, 0, -INFINITY},
    {"+.INF", CFG_FLOAT, 0, INFINITY},
    {"1.5e400", CFG_FLOAT, 0, INFINITY},
    {"1.2.3", CFG_STRING, 0, 0},
    {"1e", CFG_STRING, 0, 0},
    {"1:60", CFG_STRING, 0, 0},
    {"2001-12-14", CFG_STRING, 0, 0}, /* OmegaConf drops the timestamp resolver */
    {"__is_unconditional__", CFG_STRING, 0, 0},
    {"ldm.models.autoencoder.AutoencoderKL", CFG_STRING, 0, 0},
    {"val/loss_simple_ema", CFG_STRING, 0, 0},
};

static void check_typed(const CfgNode *n, const TypeCase *tc, const char *how) {
    ck_assert_msg(n != NULL, "%s '%s': %s", how, tc->text, ldm_last_error());
    ck_assert_msg(n->kind == tc->kind, "%s '%s': %s, expected %s", how, tc->text, cfg_kind_name(n->kind),
                  cfg_kind_name(tc->kind));
    if (tc->kind == CFG_INT) ck_assert_msg(n->i == tc->i, "%s '%s': %lld", how, tc->text, (long long)n->i);
    if (tc->kind == CFG_BOOL) ck_assert_int_eq(n->b, (int)tc->i);
    if (tc->kind == CFG_FLOAT) ck_assert_msg(n->f == tc->f, "%s '%s': %.17g", how, tc->text, n->f);
    if (tc->kind == CFG_STRING) ck_assert_str_eq(n->s, tc->text);
}

START_TEST(test_scalar_typing_table) {
    for (size_t k = 0; k < sizeof type_cases / sizeof type_cases[0]; k++) {
        const TypeCase *tc = &type_cases[k];
        /* directly */
        CfgNode *n = cfg_scalar_from_text(tc->text, "x.yaml", 3, 4);
        check_typed(n, tc, "scalar");
        ck_assert_str_eq(n->file, "x.yaml");
        ck_assert_int_eq(n->line, 3);
        ck_assert_int_eq(n->col, 4);
        cfg_free(n);
        /* through the YAML parser, as a map value and as a list item */
        char doc[256];
        snprintf(doc, sizeof doc, "v: %s\nl: [%s]\n", tc->text, tc->text);
        CfgNode *root = parse_ok(doc);
        check_typed(cfg_get(root, "v"), tc, "yaml");
        if (tc->text[0]) check_typed(cfg_path(root, "l.0"), tc, "yaml list");
        cfg_free(root);
    }
    CfgNode *nan = cfg_scalar_from_text(".NaN", "x", 1, 1);
    ck_assert(nan->kind == CFG_FLOAT && isnan(nan->f));
    cfg_free(nan);
    ck_assert_ptr_null(cfg_scalar_from_text("9223372036854775808", "x.yaml", 2, 5));
    ck_assert_str_eq(ldm_last_error(), "x.yaml:2:5: error: integer '9223372036854775808' does not fit in 64 bits");
    ck_assert_ptr_null(cfg_scalar_from_text("-0x8000000000000001", "x.yaml", 1, 1));
}
END_TEST

START_TEST(test_quoted_and_tagged) {
    CfgNode *c = parse_ok("a: '1'\n"
                          "b: \"true\"\n"
                          "c: \"tab\\there\"\n"
                          "d: |\n  320\n"
                          "e: >-\n  null\n"
                          "f: !!str 12\n"
                          "g: !!float 1\n"
                          "h: !!int \"42\"\n"
                          "i: !!bool \"Yes\"\n"
                          "j: !!null \"\"\n"
                          "k: ! 12\n"
                          "l: ''\n");
    expect_str(c, "a", "1");
    expect_str(c, "b", "true");
    expect_str(c, "c", "tab\there");
    expect_str(c, "d", "320\n");
    expect_str(c, "e", "null");
    expect_str(c, "f", "12");
    expect_float(c, "g", 1.0);
    expect_int(c, "h", 42);
    expect_bool(c, "i", 1);
    expect_null(c, "j");
    expect_str(c, "k", "12");
    expect_str(c, "l", "");
    cfg_free(c);
}
END_TEST

/* ------------------------------------------------------------------------
 * locations, lookups, empty documents
 * ------------------------------------------------------------------------ */

START_TEST(test_locations) {
    CfgNode *c = parse_ok("model:\n"
                          "  params:\n"
                          "    x: 1\n"
                          "    list: [10, 20]\n"
                          "    s: \"q\"\n"
                          "    block:\n"
                          "    - a\n");
    ck_assert_str_eq(c->file, "t.yaml");
    ck_assert_int_eq(c->line, 1);
    ck_assert_int_eq(c->col, 1);
    const CfgNode *n = cfg_path(c, "model.params");
    ck_assert_int_eq(n->line, 3);
    ck_assert_int_eq(n->col, 5);
    n = cfg_path(c, "model.params.x");
    ck_assert_int_eq(n->line, 3);
    ck_assert_int_eq(n->col, 8);
    n = cfg_path(c, "model.params.list");
    ck_assert_int_eq(n->line, 4);
    ck_assert_int_eq(n->col, 11);
    n = cfg_path(c, "model.params.list.1");
    ck_assert_int_eq(n->line, 4);
    ck_assert_int_eq(n->col, 16);
    n = cfg_path(c, "model.params.s");
    ck_assert_int_eq(n->col, 8);
    n = cfg_path(c, "model.params.block.0");
    ck_assert_int_eq(n->line, 7);
    ck_assert_int_eq(n->col, 7);
    cfg_free(c);
}
END_TEST

START_TEST(test_lookup) {
    CfgNode *c = parse_ok("a:\n  b: {c: 3}\n  l: [1, [2, 3], {k: v}]\n  s: x\n");
    ck_assert_ptr_nonnull(cfg_get(c, "a"));
    ck_assert_ptr_null(cfg_get(c, "zz"));
    ck_assert_ptr_null(cfg_get(NULL, "a"));
    ck_assert_ptr_null(cfg_get(cfg_path(c, "a.s"), "x")); /* not a map */
    expect_int(c, "a.b.c", 3);
    expect_int(c, "a.l.1.0", 2);
    expect_str(c, "a.l.2.k", "v");
    ck_assert_ptr_null(cfg_path(c, "a.l.3"));
    ck_assert_ptr_null(cfg_path(c, "a.l.x"));
    ck_assert_ptr_null(cfg_path(c, "a.s.t"));
    ck_assert_ptr_null(cfg_path(c, "a.b.c.d"));
    ck_assert_ptr_null(cfg_path(c, "a..b"));
    ck_assert_ptr_null(cfg_path(NULL, "a"));
    /* keys are text, whatever they would type as */
    CfgNode *k = parse_ok("99999999999999999999: a\n1: b\nyes: c\n~: d\n1.5: e\n");
    expect_str(k, "99999999999999999999", "a");
    expect_str(k, "1", "b");
    expect_str(k, "yes", "c");
    expect_str(k, "~", "d");
    ck_assert_str_eq(k->keys[4], "1.5");
    cfg_free(k);
    ck_assert_str_eq(cfg_kind_name(CFG_FLOAT), "float");
    ck_assert_str_eq(cfg_kind_name(CFG_MAP), "map");
    CfgNode *cp = cfg_copy(c);
    ck_assert(tree_equal(c, cp));
    ck_assert_int_eq(cfg_path(cp, "a.b.c")->line, cfg_path(c, "a.b.c")->line);
    cfg_free(cp);
    cfg_free(c);
}
END_TEST

START_TEST(test_empty_documents) {
    static const char *empties[] = {"", "\n", "# just a comment\n", "---\n", "--- null\n", "~\n"};
    for (size_t k = 0; k < sizeof empties / sizeof empties[0]; k++) {
        CfgNode *c = parse_ok(empties[k]);
        ck_assert_int_eq(c->kind, CFG_MAP);
        ck_assert_int_eq(c->n, 0);
        cfg_free(c);
    }
    CfgNode *l = parse_ok("- 1\n- two\n");
    ck_assert_int_eq(l->kind, CFG_LIST);
    ck_assert_int_eq(l->n, 2);
    cfg_free(l);
}
END_TEST

/* ------------------------------------------------------------------------
 * -D overrides
 * ------------------------------------------------------------------------ */

START_TEST(test_set_path) {
    CfgNode *c = load_ok("models/sd1/v1-inference.yaml");
    ck_assert_int_eq(cfg_set_path(c, UNET "model_channels", "64"), 0);
    const CfgNode *n = at(c, UNET "model_channels", CFG_INT);
    ck_assert_int_eq(n->i, 64);
    ck_assert_str_eq(n->file, "<command line>");
    ck_assert_int_eq(n->line, 1);

    ck_assert_int_eq(cfg_set_path(c, UNET "channel_mult", "[1,2,4]"), 0);
    EXPECT_INTS(c, UNET "channel_mult", 1, 2, 4);
    ck_assert_int_eq(cfg_set_path(c, UNET "channel_mult.1", "3"), 0);
    EXPECT_INTS(c, UNET "channel_mult", 1, 3, 4);
    ck_assert_int_eq(cfg_set_path(c, "model.params.linear_end", " 1e-2 "), 0);
    expect_float(c, "model.params.linear_end", 0.01);
    ck_assert_int_eq(cfg_set_path(c, "model.params.use_ema", "True"), 0);
    expect_bool(c, "model.params.use_ema", 1);
    ck_assert_int_eq(cfg_set_path(c, "model.params.monitor", "hello world"), 0);
    expect_str(c, "model.params.monitor", "hello world");
    ck_assert_int_eq(cfg_set_path(c, "model.params.monitor", "'42'"), 0);
    expect_str(c, "model.params.monitor", "42");
    ck_assert_int_eq(cfg_set_path(c, "model.params.monitor", "a: b # c"), 0);
    expect_str(c, "model.params.monitor", "a: b # c");
    ck_assert_int_eq(cfg_set_path(c, "model.params.scale_factor", ""), 0);
    expect_null(c, "model.params.scale_factor");
    ck_assert_int_eq(cfg_set_path(c, "model.params.extra", "{a: 1, b: [x]}"), 0);
    expect_int(c, "model.params.extra.a", 1);
    expect_str(c, "model.params.extra.b.0", "x");

    /* missing maps are created on the way */
    int keys_before = cfg_path(c, "model")->n;
    ck_assert_int_eq(cfg_set_path(c, "model.new.deep.key", "[1, 2.5, yes]"), 0);
    ck_assert_int_eq(cfg_path(c, "model")->n, keys_before + 1);
    at(c, "model.new.deep", CFG_MAP);
    expect_int(c, "model.new.deep.key.0", 1);
    expect_float(c, "model.new.deep.key.1", 2.5);
    expect_bool(c, "model.new.deep.key.2", 1);
    ck_assert_int_eq(cfg_set_path(c, "toplevel", "7"), 0);
    expect_int(c, "toplevel", 7);
    /* the untouched parts are intact */
    expect_int(c, UNET "context_dim", 768);
    cfg_free(c);
}
END_TEST

START_TEST(test_set_path_errors) {
    CfgNode *c = parse_ok("a:\n  n: 3\n  l: [1, 2]\n");
    ck_assert_int_eq(cfg_set_path(c, "a.n.x", "1"), -1);
    ck_assert_str_eq(ldm_last_error(), "<command line>:1:1: error: -D a.n.x: 'a.n' (t.yaml:2:6) is of type int, not a map");
    ck_assert_int_eq(cfg_set_path(c, "a.l.2", "1"), -1);
    ck_assert_str_eq(ldm_last_error(),
                     "<command line>:1:1: error: -D a.l.2: index 2 is past the end of the 2-item list at t.yaml:3:6");
    ck_assert_int_eq(cfg_set_path(c, "a.l.x", "1"), -1);
    ck_assert_int_eq(cfg_set_path(c, "a..b", "1"), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "not a dotted key path"));
    ck_assert_int_eq(cfg_set_path(c, "", "1"), -1);
    ck_assert_int_eq(cfg_set_path(c, "a.n", "[1, 2"), -1);
    ck_assert_msg(strncmp(ldm_last_error(), "<command line>:", 15) == 0, "%s", ldm_last_error());
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "did not find expected ',' or ']'"));
    ck_assert_int_eq(cfg_set_path(c, "a.n", "99999999999999999999"), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "does not fit in 64 bits"));
    expect_int(c, "a.n", 3); /* failed overrides change nothing */
    CfgNode *l = parse_ok("[1]");
    ck_assert_int_eq(cfg_set_path(l, "a", "1"), -1);
    cfg_free(l);
    cfg_free(c);
}
END_TEST

/* ------------------------------------------------------------------------
 * anchors, aliases, merge keys
 * ------------------------------------------------------------------------ */

START_TEST(test_aliases) {
    CfgNode *c = parse_ok("base: &b\n"
                          "  x: 1\n"
                          "  l: [1, 2]\n"
                          "use: *b\n"
                          "n: &v 3\n"
                          "m: *v\n"
                          "derived:\n"
                          "  <<: *b\n"
                          "  x: 5\n"
                          "multi:\n"
                          "  <<: [{p: 1, q: 1}, {q: 2, r: 2}]\n"
                          "&k key: value\n"
                          "again: *k\n");
    expect_int(c, "use.x", 1);
    EXPECT_INTS(c, "use.l", 1, 2);
    expect_int(c, "m", 3);
    /* an alias is located where it is written */
    ck_assert_int_eq(cfg_path(c, "use")->line, 4);
    ck_assert_int_eq(cfg_path(c, "use")->col, 6);
    /* merge: explicit keys win, earlier maps win */
    expect_int(c, "derived.x", 5);
    EXPECT_INTS(c, "derived.l", 1, 2);
    ck_assert_int_eq(cfg_path(c, "derived")->n, 2);
    ck_assert_ptr_null(cfg_path(c, "derived.<<"));
    expect_int(c, "multi.p", 1);
    expect_int(c, "multi.q", 1);
    expect_int(c, "multi.r", 2);
    expect_str(c, "again", "key");
    /* copies are independent */
    ck_assert_int_eq(cfg_set_path(c, "use.x", "9"), 0);
    expect_int(c, "base.x", 1);
    cfg_free(c);
}
END_TEST

START_TEST(test_alias_bomb) {
    /* Billion laughs: 10^9 nodes if expanded. Must fail, quickly. */
    expect_parse_error("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                       "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                       "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                       "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                       "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                       "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
                       "h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
                       "i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]\n",
                       "bad.yaml:6:");
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "too many nodes"));
}
END_TEST

START_TEST(test_deep_nesting) {
    char deep[2048];
    memset(deep, '[', 1000);
    memset(deep + 1000, ']', 1000);
    deep[2000] = 0;
    expect_parse_error(deep, "bad.yaml:1:");
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "nesting is too deep"));
    CfgNode *ok = parse_ok("[[[[[[[[[[1]]]]]]]]]]");
    expect_int(ok, "0.0.0.0.0.0.0.0.0.0", 1);
    cfg_free(ok);
    /* a -D may not nest deeper than a file may (found by fuzz_config) */
    char path[1024] = "a";
    for (int k = 1; k < 300; k++) strcat(path, ".a");
    ok = parse_ok("b: 1\n");
    ck_assert_int_eq(cfg_set_path(ok, path, "1"), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "nesting is too deep"));
    ck_assert_int_eq(cfg_set_path(ok, "a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a", "[[1]]"), 0);
    cfg_free(ok);
}
END_TEST

/* ------------------------------------------------------------------------
 * diagnostics
 * ------------------------------------------------------------------------ */

/* One malformed document and the start of its diagnostic. */
typedef struct ErrCase {
    const char *text;    /* input */
    const char *prefix;  /* expected start of ldm_last_error() */
} ErrCase;

static const ErrCase err_cases[] = {
    /* bad indentation */
    {"a:\n  b: 1\n c: 2\n", "bad.yaml:3:2: error: did not find expected key (while parsing a block mapping"},
    /* unclosed bracket */
    {"a: [1, 2\nb: 3\n", "bad.yaml:2:2: error: did not find expected ',' or ']' (while parsing a flow sequence "
                         "started at line 1, column 4)"},
    {"a: {x: 1\n", "bad.yaml:2:1: error: did not find expected ',' or '}'"},
    /* tab indentation */
    {"a:\n\tb: 1\n", "bad.yaml:2:1: error: found character that cannot start any token (a tab: YAML indentation "
                     "must use spaces)"},
    /* duplicate keys, top level and nested */
    {"a: 1\na: 2\n", "bad.yaml:2:1: error: duplicate key 'a' (first defined at line 1, column 1)"},
    {"m:\n  k: 1\n  j: 2\n  k: 3\n", "bad.yaml:4:3: error: duplicate key 'k' (first defined at line 2, column 3)"},
    {"m: {k: 1, k: 2}\n", "bad.yaml:1:11: error: duplicate key 'k'"},
    /* other structure errors */
    {"a: \"unterminated\n", "bad.yaml:2:1: error: found unexpected end of stream (while scanning a quoted scalar"},
    {"a: b: c\n", "bad.yaml:1:5: error: mapping values are not allowed in this context"},
    {"a: 1\n---\nb: 2\n", "bad.yaml:2:1: error: expected a single YAML document, found another one"},
    {"? [1]\n: 2\n", "bad.yaml:1:3: error: mapping keys must be scalars"},
    {"a: &x 1\n*x : 2\n", "bad.yaml:2:1: error: an alias cannot be a mapping key"},
    {"a: *nope\n", "bad.yaml:1:4: error: found undefined alias 'nope'"},
    {"a: &x [1, *x]\n", "bad.yaml:1:11: error: recursive alias is not supported: 'x'"},
    {"a: !!python/tuple [1]\n", "bad.yaml:1:4: error: unsupported tag 'tag:yaml.org,2002:python/tuple'"},
    {"a: !custom 1\n", "bad.yaml:1:4: error: unsupported tag '!custom'"},
    {"a: !!int 1.5\n", "bad.yaml:1:4: error: not a valid !!int: '1.5'"},
    {"a: !!float x\n", "bad.yaml:1:4: error: not a valid !!float: 'x'"},
    {"a: !!bool maybe\n", "bad.yaml:1:4: error: not a valid !!bool: 'maybe'"},
    {"a:\n  b: 99999999999999999999\n", "bad.yaml:2:6: error: integer '99999999999999999999' does not fit in 64 bits"},
    {"a: \"x\\0y\"\n", "bad.yaml:1:4: error: string contains a NUL character"},
    {"\"x\\0y\": 1\n", "bad.yaml:1:1: error: mapping key contains a NUL character"},
    {"!!int x: 1\n", "bad.yaml:1:1: error: not a valid !!int: 'x'"},
    {"a:\n  <<: 3\n", "bad.yaml:2:7: error: merge key '<<' needs a mapping or a list of mappings, not a int"},
};

/* Whole diagnostics: the message, then the source line and a caret under
 * the column, as for the graph DSL (end of file: an empty line). */
static const ErrCase excerpt_cases[] = {
    {"a:\n  b: 99999999999999999999\n",
     "bad.yaml:2:6: error: integer '99999999999999999999' does not fit in 64 bits\n"
     "     2 |   b: 99999999999999999999\n"
     "       |      ^"},
    {"m:\n  k: 1\n  j: 2\n  k: 3\n",
     "bad.yaml:4:3: error: duplicate key 'k' (first defined at line 2, column 3)\n"
     "     4 |   k: 3\n"
     "       |   ^"},
    {"a:\n\tb: 1\n",
     "bad.yaml:2:1: error: found character that cannot start any token (a tab: YAML indentation must use spaces)"
     " (while scanning for the next token started at line 2, column 1)\n"
     "     2 | \tb: 1\n"
     "       | ^"},
    {"a: {x: 1\n",
     "bad.yaml:2:1: error: did not find expected ',' or '}' (while parsing a flow mapping started at line 1, column 4)\n"
     "     2 | \n"
     "       | ^"},
    /* columns count characters, not bytes: the caret stays under the key */
    {"\"\xc3\xa9t\xc3\xa9\": {a: 1, a: 2}\n",
     "bad.yaml:1:15: error: duplicate key 'a' (first defined at line 1, column 9)\n"
     "     1 | \"\xc3\xa9t\xc3\xa9\": {a: 1, a: 2}\n"
     "       |               ^"},
};

START_TEST(test_malformed_excerpt) {
    const ErrCase *c = &excerpt_cases[_i];
    ck_assert_ptr_null(cfg_parse_string(c->text, "bad.yaml"));
    ck_assert_str_eq(ldm_last_error(), c->prefix);
}
END_TEST

START_TEST(test_malformed) {
    for (size_t k = 0; k < sizeof err_cases / sizeof err_cases[0]; k++)
        expect_parse_error(err_cases[k].text, err_cases[k].prefix);
}
END_TEST

START_TEST(test_file_errors) {
    char msg[1024];
    /* a missing file */
    ck_assert_ptr_null(cfg_load("/nonexistent/dir/model.yaml"));
    ck_assert_str_eq(ldm_last_error(), "/nonexistent/dir/model.yaml: error: cannot open config: No such file or directory");

    /* Latin-1, not UTF-8: "é" as the single byte 0xE9 */
    static const char latin1[] = "model:\n  name: caf\xe9\n";
    const char *p = temp_yaml(latin1, sizeof latin1 - 1);
    ck_assert_ptr_null(cfg_load(p));
    snprintf(msg, sizeof msg, "%s:2:12: error: the file is not valid UTF-8: ", p);
    ck_assert_msg(strncmp(ldm_last_error(), msg, strlen(msg)) == 0, "%s", ldm_last_error());
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "(byte 0xE9)"));
    remove(p);

    /* a NUL byte */
    static const char nul[] = "a: 1\nb: x\0y\n";
    p = temp_yaml(nul, sizeof nul - 1);
    ck_assert_ptr_null(cfg_load(p));
    snprintf(msg, sizeof msg, "%s:2:5: error: control characters are not allowed", p);
    ck_assert_msg(strncmp(ldm_last_error(), msg, strlen(msg)) == 0, "%s", ldm_last_error());
    remove(p);

    /* a syntax error in a file names the file */
    static const char bad[] = "model:\n  params: [1, 2\n";
    p = temp_yaml(bad, sizeof bad - 1);
    ck_assert_ptr_null(cfg_load(p));
    snprintf(msg, sizeof msg, "%s:3:1: error: did not find expected ',' or ']'", p);
    ck_assert_msg(strncmp(ldm_last_error(), msg, strlen(msg)) == 0, "%s", ldm_last_error());
    remove(p);

    /* multi-byte UTF-8 is fine, and columns count characters */
    static const char utf8[] = "\xc3\xa9t\xc3\xa9: \"\xe2\x86\x92\"\nx: [\xc3\xa9, 1, 2\n";
    p = temp_yaml(utf8, sizeof utf8 - 1);
    ck_assert_ptr_null(cfg_load(p));
    snprintf(msg, sizeof msg, "%s:3:1: error:", p);
    ck_assert_msg(strncmp(ldm_last_error(), msg, strlen(msg)) == 0, "%s", ldm_last_error());
    remove(p);
    CfgNode *c = parse_ok("\xc3\xa9t\xc3\xa9: \"\xe2\x86\x92\"\nx: 1\n");
    expect_str(c, "\xc3\xa9t\xc3\xa9", "\xe2\x86\x92");
    ck_assert_int_eq(cfg_get(c, "\xc3\xa9t\xc3\xa9")->col, 6);
    cfg_free(c);
}
END_TEST

/* ------------------------------------------------------------------------
 * debug dump
 * ------------------------------------------------------------------------ */

START_TEST(test_print_exact) {
    CfgNode *c = parse_ok("model:\n"
                          "  lr: 1.0e-04\n"
                          "  small: 1e-5\n"
                          "  big: 1e16\n"
                          "  ints: [ 1, 2 ]\n"
                          "  s: 'say \"hi\"\\n'\n"
                          "  \"odd key\": ~\n"
                          "  \"<<\": yes\n"
                          "  empty: {}\n"
                          "  none: []\n"
                          "  nested:\n"
                          "  - a: 1\n"
                          "    b: [x]\n"
                          "  - [1, [2]]\n"
                          "  inf: -.inf\n"
                          "  whole: 3.0\n");
    char *s = print_str(c);
    ck_assert_str_eq(s, "model:\n"
                        "  lr: 0.0001\n"
                        "  small: 1.0e-05\n"
                        "  big: 1.0e+16\n"
                        "  ints: [1, 2]\n"
                        "  s: \"say \\\"hi\\\"\\\\n\"\n"
                        "  \"odd key\": null\n"
                        "  \"<<\": true\n"
                        "  empty: {}\n"
                        "  none: []\n"
                        "  nested:\n"
                        "    -\n"
                        "      a: 1\n"
                        "      b: [\"x\"]\n"
                        "    -\n"
                        "      - 1\n"
                        "      - [2]\n"
                        "  inf: -.inf\n"
                        "  whole: 3.0\n");
    free(s);
    cfg_free(c);
}
END_TEST

START_TEST(test_print_roundtrip) {
    for (int k = 0; k < N_REAL; k++) {
        CfgNode *c = load_ok(real_configs[k]);
        char *s1 = print_str(c);
        CfgNode *back = parse_ok(s1);
        ck_assert_msg(tree_equal(c, back), "%s: dump does not parse back to the same tree", real_configs[k]);
        char *s2 = print_str(back);
        ck_assert_str_eq(s1, s2);
        free(s1);
        free(s2);
        cfg_free(back);
        cfg_free(c);
    }
    /* tricky values survive a round trip too */
    CfgNode *c = parse_ok("a: [0.1, 1.0e-300, 123456789.125, -0.0, .nan, .inf, 9223372036854775807]\n"
                          "b: [\"\", \"yes\", \"1.5\", \"~\", \"a\\tb\\x01\", \"<<\", \"- x\", \"#c\"]\n"
                          "\"\": 1\n"
                          "\"a: b\": 2\n"
                          "yes: 3\n"
                          /* YAML line breaks other than \n made by escapes (NEL, LS, PS; found by
                           * fuzz_config) and the C1 controls: printed raw, a reader folds or refuses them */
                          "c: [\"x\\Ny\", \"x\\Ly\\Pz\", \"\\x80\\x9f\", \"\\u0085 \\u00a0\"]\n"
                          "\"k\\N\": 4\n");
    char *s1 = print_str(c);
    CfgNode *back = parse_ok(s1);
    ck_assert_msg(tree_equal(c, back), "dump:\n%s", s1);
    free(s1);
    cfg_free(back);
    cfg_free(c);
    /* a key longer than YAML's 1024-character limit of an implicit key (a
     * -D can make one; found by fuzz_config) prints as an explicit key */
    c = parse_ok("a: 1\n");
    char *key = ldm_xmalloc(1301), *val = ldm_xmalloc(2000);
    memset(key, 'k', 1300);
    key[1300] = 0;
    snprintf(val, 2000, "{x: [1, 2], y: \"%s\"}", key);
    ck_assert_int_eq(cfg_set_path(c, key, val), 0);
    s1 = print_str(c);
    back = parse_ok(s1);
    ck_assert_msg(tree_equal(c, back), "dump:\n%s", s1);
    free(s1);
    free(key);
    free(val);
    cfg_free(back);
    cfg_free(c);
}
END_TEST

/* ------------------------------------------------------------------------
 * suite
 * ------------------------------------------------------------------------ */

Suite *suite_config(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("load");
    tcase_add_test(tc, test_goldens_all_load);
    tcase_add_test(tc, test_golden_sd1_tiny);
    tcase_add_test(tc, test_golden_ldm_vq4_tiny);
    tcase_add_test(tc, test_real_configs_load);
    tcase_add_test(tc, test_v1_inference);
    tcase_add_test(tc, test_v1_inpainting);
    tcase_add_test(tc, test_ldm_configs);
    suite_add_tcase(s, tc);

    tc = tcase_create("yaml");
    tcase_add_test(tc, test_scalar_typing_table);
    tcase_add_test(tc, test_quoted_and_tagged);
    tcase_add_test(tc, test_locations);
    tcase_add_test(tc, test_lookup);
    tcase_add_test(tc, test_empty_documents);
    tcase_add_test(tc, test_aliases);
    tcase_add_test(tc, test_alias_bomb);
    tcase_add_test(tc, test_deep_nesting);
    suite_add_tcase(s, tc);

    tc = tcase_create("overrides");
    tcase_add_test(tc, test_set_path);
    tcase_add_test(tc, test_set_path_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("diagnostics");
    tcase_add_test(tc, test_malformed);
    tcase_add_loop_test(tc, test_malformed_excerpt, 0, (int)(sizeof excerpt_cases / sizeof excerpt_cases[0]));
    tcase_add_test(tc, test_file_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("print");
    tcase_add_test(tc, test_print_exact);
    tcase_add_test(tc, test_print_roundtrip);
    suite_add_tcase(s, tc);
    return s;
}
