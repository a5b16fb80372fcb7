/*
 * test_lora.c - Check tests of runtime/lora.c and `ldmc merge`.
 *
 * Against goldens/sd1-adapters (README sections 2, 4, 5):
 *   - lora_weights.io: <key>.merged_a (tinylora at 0.8) and .merged_ab
 *     (+ tinylora_b at -0.5) for 14 tensors, through the library and
 *     through `ldmc merge` (also --dtype f16), within the file's tolerance;
 *   - the name mapping: every prefix of tinylora.keys.txt (diffusers names)
 *     and tinylora_b.keys.txt (CompVis names) binds to the module listed
 *     there and no other prefix binds; the one prefix naming a module
 *     sd1-tiny lacks (README 2.1) is reported as unmatched, not an error.
 * Small LoRA files written with StWriter check the README's math
 * (scale = alpha / rank, no alpha = scale 1, te vs unet multiplier) and
 * the errors: up without down, rank mismatch, a shape that does not fit,
 * non-finite values, an unknown tensor kind, a truncated file, two prefixes
 * for one module; ldmc merge fails with a message and leaves no output.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "lora.h"
#include "safetensors.h"
#include "testproc.h"
#include "testio.h"
#include "util.h"

#define ADAPT "goldens/sd1-adapters/"
#define BASE "goldens/sd1-tiny/model.safetensors"

static void scratch_setup(void) { test_dir_init("ldm_lora_"); }

/* The base checkpoint's keys (names point into f). */
static const char **base_keys(StFile *f) {
    ck_assert_msg(st_open(f, test_shared(BASE)) == 0, "%s", ldm_last_error());
    const char **k = ldm_xcalloc((size_t)f->n_tensors + 1, sizeof *k);
    for (int i = 0; i < f->n_tensors; i++) k[i] = f->tensors[i].name;
    return k;
}

static LdmLora *open_lora(const StFile *base, const char **keys, const char *path, float te, float unet) {
    LdmLora *l = NULL;
    ck_assert_msg(ldm_lora_open(&l, path, keys, base->n_tensors, te, unet) == 0, "%s", ldm_last_error());
    return l;
}

/* Try to open; return the error message (static copy), "" on success. */
static const char *open_error(const char *path, float te, float unet) {
    static char msg[1024];
    StFile f;
    const char **keys = base_keys(&f);
    LdmLora *l = NULL;
    int rc = ldm_lora_open(&l, path, keys, f.n_tensors, te, unet);
    snprintf(msg, sizeof msg, "%s", rc ? ldm_last_error() : "");
    if (rc) ck_assert_ptr_null(l);
    ldm_lora_free(l);
    free(keys);
    st_close(&f);
    return msg;
}

/* ------------------------------------------------------------------------
 * goldens
 * ------------------------------------------------------------------------ */

/* For every "<key>.<suffix>" of lora_weights.io: fn(key, golden, n). */
static void compare_with(const char *suffix, const char *merged_path, StFile *base, LdmLora **loras, int n_loras) {
    const char *io = test_shared(ADAPT "lora_weights.io.safetensors");
    StFile g;
    ck_assert_msg(st_open(&g, io) == 0, "%s", ldm_last_error());
    int seen = 0;
    for (int i = 0; i < g.n_tensors; i++) {
        const StTensor *gt = &g.tensors[i];
        size_t n = strlen(gt->name), sl = strlen(suffix);
        if (n <= sl + 1 || strcmp(gt->name + n - sl, suffix) != 0 || gt->name[n - sl - 1] != '.') continue;
        char *key = strndup(gt->name, n - sl - 1);
        float *want = ldm_xmalloc((size_t)gt->numel * 4);
        ck_assert(st_to_f32(gt, want) == 0);
        float *got;
        int64_t numel;
        if (merged_path) {
            got = read_f32(merged_path, key, &numel);
        } else {
            const StTensor *bt = st_find(base, key);
            ck_assert_msg(bt, "base lacks %s", key);
            numel = bt->numel;
            got = ldm_xmalloc((size_t)numel * 4);
            ck_assert(st_to_f32(bt, got) == 0);
            for (int k = 0; k < n_loras; k++) {
                int r = ldm_lora_apply(loras[k], key, bt->ndim, bt->shape, got);
                ck_assert_msg(r >= 0, "%s", ldm_last_error());
                if (k == 0) ck_assert_msg(r == 1, "tinylora does not modify %s", key);
            }
        }
        ck_assert_int_eq(numel, gt->numel);
        double tol = tolerance(io, gt->name), d = max_abs_diff(got, want, numel);
        ck_assert_msg(d <= tol, "%s: max |diff| %g > %g (%s)", gt->name, d, tol, merged_path ? "ldmc merge" : "library");
        free(got);
        free(want);
        free(key);
        seen++;
    }
    ck_assert_int_eq(seen, 14);
    st_close(&g);
}

START_TEST(test_golden_library) {
    StFile f;
    const char **keys = base_keys(&f);
    LdmLora *ls[2];
    ls[0] = open_lora(&f, keys, test_shared(ADAPT "tinylora.safetensors"), 0.8f, 0.8f);
    ls[1] = open_lora(&f, keys, test_shared(ADAPT "tinylora_b.safetensors"), -0.5f, -0.5f);
    /* README 2.1: one tinylora prefix names input_blocks.10.1, which sd1-tiny lacks: ignored */
    ck_assert_int_eq(ldm_lora_n_unmatched(ls[0]), 1);
    ck_assert_str_eq(ldm_lora_unmatched(ls[0], 0), "lora_unet_down_blocks_3_attentions_0_proj_in");
    ck_assert_int_eq(ldm_lora_n_unmatched(ls[1]), 0);
    ck_assert_int_eq(ldm_lora_n_modules(ls[0]), 294);
    ck_assert_int_eq(ldm_lora_n_modules(ls[1]), 55);
    compare_with("merged_a", NULL, &f, ls, 1);
    compare_with("merged_ab", NULL, &f, ls, 2);
    ck_assert_int_eq(ldm_lora_touches(ls[0], "model.diffusion_model.input_blocks.1.1.proj_in.bias"), 0);
    ldm_lora_free(ls[0]);
    ldm_lora_free(ls[1]);
    free(keys);
    st_close(&f);
}
END_TEST

/* Checkpoint key -> network layer name (README 2.1). */
static char *layer_name(const char *key) {
    const char *b = !strncmp(key, "model.", 6) ? key + 6 : !strncmp(key, "cond_stage_model.", 17) ? key + 17 : key;
    char *s = ldm_xstrdup(b);
    size_t n = strlen(s);
    ck_assert(n > 7 && !strcmp(s + n - 7, ".weight"));
    s[n - 7] = 0;
    for (char *c = s; *c; c++)
        if (*c == '.') *c = '_';
    return s;
}

/* Every "prefix -> module" line of a keys.txt is what the library binds. */
static void check_keys_txt(const char *lora, const char *keys_txt, int expect_unmatched) {
    StFile f;
    const char **keys = base_keys(&f);
    LdmLora *l = open_lora(&f, keys, test_shared(lora), 1, 1);
    char *text = ldm_read_file(test_shared(keys_txt), NULL);
    ck_assert_msg(text, "%s", ldm_last_error());
    int lines = 0, matched = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char *arrow = strstr(line, " -> ");
        ck_assert_msg(arrow, "bad line '%s'", line);
        *arrow = 0;
        const char *prefix = line, *module = arrow + 4;
        lines++;
        int found = 0;
        for (int i = 0; i < ldm_lora_n_modules(l); i++)
            if (!strcmp(ldm_lora_module_prefix(l, i), prefix)) {
                char *ln = layer_name(ldm_lora_module_key(l, i));
                ck_assert_msg(!strcmp(ln, module), "%s: bound to %s, keys.txt says %s", prefix, ln, module);
                free(ln);
                found = 1;
                matched++;
            }
        if (!found) {
            int listed = 0;
            for (int i = 0; i < ldm_lora_n_unmatched(l) && i < LDM_LORA_KEEP_UNMATCHED; i++)
                listed |= !strcmp(ldm_lora_unmatched(l, i), prefix);
            ck_assert_msg(listed, "%s (-> %s) is neither bound nor reported unmatched", prefix, module);
        }
    }
    /* keys.txt lists the prefixes that name a module of sd1-tiny: all bound */
    ck_assert_int_eq(matched, ldm_lora_n_modules(l));
    ck_assert_int_eq(lines, ldm_lora_n_modules(l));
    ck_assert_int_eq(ldm_lora_n_unmatched(l), expect_unmatched);
    free(text);
    ldm_lora_free(l);
    free(keys);
    st_close(&f);
}

START_TEST(test_mapping_diffusers) { check_keys_txt(ADAPT "tinylora.safetensors", ADAPT "tinylora.keys.txt", 1); }
END_TEST

START_TEST(test_mapping_compvis) { check_keys_txt(ADAPT "tinylora_b.safetensors", ADAPT "tinylora_b.keys.txt", 0); }
END_TEST

static int run_ldmc(char **out, const char *a1, const char *a2, const char *a3, const char *a4, const char *a5,
                    const char *a6, const char *a7, const char *a8, const char *a9) {
    char ldmc[300];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    char *argv[] = {ldmc, (char *)a1, (char *)a2, (char *)a3, (char *)a4, (char *)a5, (char *)a6, (char *)a7,
                    (char *)a8, (char *)a9, NULL};
    return test_run(argv, out);
}

START_TEST(test_golden_ldmc_merge) {
    char *log;
    char la[600], lb[600];
    snprintf(la, sizeof la, "%s:0.8", test_shared(ADAPT "tinylora.safetensors"));
    snprintf(lb, sizeof lb, "%s:-0.5", test_shared(ADAPT "tinylora_b.safetensors"));
    const char *oa = test_tmp("merged_a.safetensors"), *oab = test_tmp("merged_ab.safetensors");
    int rc = run_ldmc(&log, "merge", "--lora", la, test_shared(BASE), "-o", oa, NULL, NULL, NULL);
    ck_assert_msg(rc == 0, "ldmc merge failed (%d):\n%s", rc, log);
    ck_assert_msg(strstr(log, "lora_unet_down_blocks_3_attentions_0_proj_in"), "no unmatched warning:\n%s", log);
    free(log);
    compare_with("merged_a", oa, NULL, NULL, 0);
    rc = run_ldmc(&log, "merge", "--lora", la, "--lora", lb, test_shared(BASE), "-o", oab, NULL);
    ck_assert_msg(rc == 0, "ldmc merge failed (%d):\n%s", rc, log);
    free(log);
    compare_with("merged_ab", oab, NULL, NULL, 0);

    /* every tensor of BASE, in its dtype; the untouched ones bit for bit */
    StFile b, m;
    ck_assert(st_open(&b, test_shared(BASE)) == 0);
    ck_assert_msg(st_open(&m, oab) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(m.n_tensors, b.n_tensors);
    const char *same[] = {"betas", "cond_stage_model.transformer.text_model.embeddings.position_ids",
                          "model.diffusion_model.input_blocks.1.1.proj_in.bias",
                          "cond_stage_model.transformer.text_model.encoder.layers.0.layer_norm1.weight",
                          "first_stage_model.decoder.conv_in.weight"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        const StTensor *x = st_find(&b, same[i]), *y = st_find(&m, same[i]);
        ck_assert_msg(x && y, "%s missing", same[i]);
        ck_assert_int_eq(x->dtype, y->dtype);
        ck_assert(x->nbytes == y->nbytes && !memcmp(x->data, y->data, x->nbytes));
    }
    st_close(&m);

    /* --dtype f16: the merged values rounded to half */
    const char *o16 = test_tmp("merged_a16.safetensors");
    rc = run_ldmc(&log, "merge", "--lora", la, test_shared(BASE), "-o", o16, "--dtype", "f16", NULL);
    ck_assert_msg(rc == 0, "ldmc merge --dtype f16 failed (%d):\n%s", rc, log);
    free(log);
    ck_assert(st_open(&m, o16) == 0);
    const char *k = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight";
    const StTensor *t = st_find(&m, k);
    ck_assert(t && t->dtype == ST_F16);
    ck_assert_int_eq(st_find(&m, "betas")->dtype, ST_F32); /* schedule buffers keep their dtype */
    int64_t n;
    float *got = read_f32(o16, k, &n);
    char gk[300];
    snprintf(gk, sizeof gk, "%s.merged_a", k);
    float *want = read_f32(test_shared(ADAPT "lora_weights.io.safetensors"), gk, NULL);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(fabs((double)got[i] - want[i]) <= fabs(want[i]) * 0x1p-11 + 1e-6 + 0x1p-25, "%s[%lld]", k,
                      (long long)i);
    free(got);
    free(want);
    st_close(&m);
    st_close(&b);
}
END_TEST

/* ------------------------------------------------------------------------
 * small LoRA files
 * ------------------------------------------------------------------------ */

#define TE_Q "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
#define TE_Q_PREFIX "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
#define UNET_TOQ "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
#define UNET_TOQ_PREFIX "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"

/* Deterministic factor values. */
static float *vals(int64_t n, int seed) {
    float *v = ldm_xmalloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) v[i] = (float)(((i * 37 + seed * 11) % 23) - 11) / 16.0f;
    return v;
}

/* Add module `prefix` with down [r, in] / up [out, r] (and alpha if alpha > 0). */
static void add_module(StWriter *w, const char *prefix, int64_t out, int64_t in, int64_t r, float alpha, int seed) {
    char name[300];
    int64_t sd[2] = {r, in}, su[2] = {out, r};
    float *d = vals(r * in, seed), *u = vals(out * r, seed + 1);
    snprintf(name, sizeof name, "%s.lora_down.weight", prefix);
    st_writer_add(w, name, ST_F32, 2, sd, d);
    snprintf(name, sizeof name, "%s.lora_up.weight", prefix);
    st_writer_add(w, name, ST_F32, 2, su, u);
    if (alpha > 0) {
        snprintf(name, sizeof name, "%s.alpha", prefix);
        st_writer_add(w, name, ST_F32, 0, NULL, &alpha);
    }
    free(d);
    free(u);
}

static const char *save(StWriter *w, const char *name) {
    const char *p = test_tmp("%s", name);
    ck_assert_msg(st_writer_save(w, p) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    return p;
}

/* README 2.2: delta = mult * alpha / r * up @ down; no alpha: scale 1. */
START_TEST(test_math_alpha_and_multipliers) {
    const int64_t r = 3;
    StWriter *w = st_writer_new();
    add_module(w, TE_Q_PREFIX, 64, 64, r, 0, 1);          /* no alpha */
    add_module(w, UNET_TOQ_PREFIX, 32, 32, r, 1.5f, 2);   /* alpha 1.5 */
    const char *p = save(w, "small.safetensors");
    StFile f;
    const char **keys = base_keys(&f);
    LdmLora *l = open_lora(&f, keys, p, 0.7f, -1.25f);
    ck_assert_int_eq(ldm_lora_n_modules(l), 2);
    ck_assert_int_eq(ldm_lora_n_unmatched(l), 0);
    struct { const char *key; int64_t out, in; int seed; double scale; } c[2] = {
        {TE_Q, 64, 64, 1, 0.7 * 1.0}, {UNET_TOQ, 32, 32, 2, -1.25 * 1.5 / 3}};
    for (int k = 0; k < 2; k++) {
        float *d = vals(r * c[k].in, c[k].seed), *u = vals(c[k].out * r, c[k].seed + 1);
        int64_t shape[2] = {c[k].out, c[k].in};
        float *delta = ldm_xmalloc((size_t)(c[k].out * c[k].in) * 4);
        ck_assert_int_eq(ldm_lora_delta(l, c[k].key, 2, shape, delta), 1);
        for (int64_t o = 0; o < c[k].out; o++)
            for (int64_t j = 0; j < c[k].in; j++) {
                double s = 0;
                for (int64_t q = 0; q < r; q++) s += (double)u[o * r + q] * d[q * c[k].in + j];
                ck_assert_msg(fabs(delta[o * c[k].in + j] - s * c[k].scale) <= 1e-6, "%s[%lld,%lld]", c[k].key,
                              (long long)o, (long long)j);
            }
        /* apply = base + delta */
        const StTensor *bt = st_find(&f, c[k].key);
        float *wv = ldm_xmalloc((size_t)bt->numel * 4), *w0 = ldm_xmalloc((size_t)bt->numel * 4);
        st_to_f32(bt, wv);
        st_to_f32(bt, w0);
        ck_assert_int_eq(ldm_lora_apply(l, c[k].key, 2, shape, wv), 1);
        for (int64_t i = 0; i < bt->numel; i++) ck_assert(fabs(wv[i] - (w0[i] + delta[i])) <= 1e-6);
        free(wv);
        free(w0);
        free(d);
        free(u);
        free(delta);
    }
    /* a key it does not modify: 0, buffer untouched */
    float x = 42;
    int64_t one[2] = {1, 1};
    ck_assert_int_eq(ldm_lora_apply(l, "model.diffusion_model.out.2.weight", 2, one, &x), 0);
    ck_assert(x == 42);
    ldm_lora_free(l);
    free(keys);
    st_close(&f);
}
END_TEST

/* The OpenCLIP towers' packed attention projection (SD 2.x's
 * cond_stage_model.model...; SDXL's second encoder is the same code with
 * the 1_model names, tested end to end in the sdxl suite): kohya's
 * lora_te_..._self_attn_k_proj and _v_proj change rows [W, 2W) and
 * [2W, 3W) of attn.in_proj_weight (q's rows stay), mlp_fc2 binds to
 * mlp.c_proj, the te multiplier applies; apply_rows over a range across
 * two thirds changes only the rows of the modules in it; a k module whose
 * factors do not fit a third is refused, naming the third. */
#define OC "cond_stage_model.model.transformer.resblocks.0."
START_TEST(test_openclip_packed_qkv) {
    const int64_t W = 4, r = 2;
    static const char *keys[] = {OC "attn.in_proj_weight", OC "attn.in_proj_bias", OC "attn.out_proj.weight",
                                 OC "mlp.c_fc.weight", OC "mlp.c_proj.weight"};
    StWriter *w = st_writer_new();
    add_module(w, "lora_te_text_model_encoder_layers_0_self_attn_k_proj", W, W, r, 1.0f, 3);
    add_module(w, "lora_te_text_model_encoder_layers_0_self_attn_v_proj", W, W, r, 0, 5);
    add_module(w, "lora_te_text_model_encoder_layers_0_mlp_fc2", W, 4 * W, r, 0, 7);
    const char *p = save(w, "openclip.safetensors");
    LdmLora *l = NULL;
    ck_assert_msg(ldm_lora_open(&l, p, keys, 5, 0.5f, 3.0f) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_lora_n_modules(l), 3);
    ck_assert_int_eq(ldm_lora_n_unmatched(l), 0);
    ck_assert(ldm_lora_touches(l, OC "attn.in_proj_weight") && ldm_lora_touches(l, OC "mlp.c_proj.weight"));
    ck_assert(!ldm_lora_touches(l, OC "attn.out_proj.weight") && !ldm_lora_touches(l, OC "mlp.c_fc.weight"));
    /* the delta of the packed weight [3W, W]: q rows zero, k and v their modules' */
    int64_t shape[2] = {3 * W, W};
    float delta[12 * 4];
    ck_assert_int_eq(ldm_lora_delta(l, OC "attn.in_proj_weight", 2, shape, delta), 1);
    struct { int seed; double scale; } third[3] = {{0, 0}, {3, 0.5 * 1.0 / 2}, {5, 0.5}};
    for (int t = 0; t < 3; t++) {
        float *d = t ? vals(r * W, third[t].seed) : NULL, *u = t ? vals(W * r, third[t].seed + 1) : NULL;
        for (int64_t o = 0; o < W; o++)
            for (int64_t j = 0; j < W; j++) {
                double e = 0;
                for (int64_t q = 0; t && q < r; q++) e += (double)u[o * r + q] * d[q * W + j];
                e *= third[t].scale;
                ck_assert_msg(fabs(delta[(t * W + o) * W + j] - e) <= 1e-6, "third %d [%lld, %lld]: %g, expected %g", t,
                              (long long)o, (long long)j, (double)delta[(t * W + o) * W + j], e);
            }
        free(d);
        free(u);
    }
    /* rows [2, 6) of the weight: rows 2, 3 (q) untouched, 4, 5 get k's delta */
    float rows[4 * 4];
    for (int i = 0; i < 16; i++) rows[i] = 1.0f;
    ck_assert_int_eq(ldm_lora_apply_rows(l, OC "attn.in_proj_weight", 2, shape, 2, 6, rows), 1);
    for (int i = 0; i < 8; i++) ck_assert_msg(rows[i] == 1.0f, "q row %d changed", 2 + i / 4);
    for (int i = 8; i < 16; i++) ck_assert_msg(fabs(rows[i] - (1.0f + delta[4 * 4 + (i - 8)])) <= 1e-6, "k row %d", 2 + i / 4);
    /* mlp_fc2 -> c_proj [W, 4W] at the te multiplier, no alpha: scale 0.5 */
    int64_t pshape[2] = {W, 4 * W};
    float pd[4 * 16];
    ck_assert_int_eq(ldm_lora_delta(l, OC "mlp.c_proj.weight", 2, pshape, pd), 1);
    float *d = vals(r * 4 * W, 7), *u = vals(W * r, 8);
    double e = 0.5 * ((double)u[0] * d[0] + (double)u[1] * d[4 * W]);
    ck_assert_msg(fabs(pd[0] - e) <= 1e-6, "c_proj[0, 0] = %g, expected %g", (double)pd[0], e);
    free(d);
    free(u);
    /* a packed weight that is not three thirds of the k module's rows */
    int64_t bad[2] = {3 * W + 3, W};
    ck_assert_int_eq(ldm_lora_check(l, OC "attn.in_proj_weight", 2, bad), -1);
    ck_assert_msg(strstr(ldm_last_error(), "its k third"), "%s", ldm_last_error());
    ldm_lora_free(l);
}
END_TEST

/* Prefixes naming no module: counted, the first few kept, not an error. */
START_TEST(test_unmatched_counted) {
    StWriter *w = st_writer_new();
    char name[100];
    for (int i = 0; i < 10; i++) {
        snprintf(name, sizeof name, "lora_unet_nothing_%d", i);
        add_module(w, name, 8, 8, 2, 1, i);
    }
    add_module(w, TE_Q_PREFIX, 64, 64, 2, 1, 3);
    const char *p = save(w, "unmatched.safetensors");
    StFile f;
    const char **keys = base_keys(&f);
    LdmLora *l = open_lora(&f, keys, p, 1, 1);
    ck_assert_int_eq(ldm_lora_n_modules(l), 1);
    ck_assert_int_eq(ldm_lora_n_unmatched(l), 10);
    ck_assert_str_eq(ldm_lora_unmatched(l, 0), "lora_unet_nothing_0");
    ck_assert_str_eq(ldm_lora_unmatched(l, LDM_LORA_KEEP_UNMATCHED - 1), "lora_unet_nothing_7");
    ck_assert_ptr_null(ldm_lora_unmatched(l, LDM_LORA_KEEP_UNMATCHED));
    ldm_lora_free(l);
    free(keys);
    st_close(&f);
}
END_TEST

static void expect_open_error(const char *file, const char *const *want) {
    const char *msg = open_error(file, 1, 1);
    ck_assert_msg(msg[0], "%s: opened without error", file);
    for (int i = 0; want[i]; i++) ck_assert_msg(strstr(msg, want[i]), "message lacks '%s': %s", want[i], msg);
}

START_TEST(test_errors_open) {
    int64_t sd[2] = {4, 64}, su[2] = {64, 4}, su3[2] = {64, 3};
    float *d = vals(4 * 64, 1), *u = vals(64 * 4, 2);

    StWriter *w = st_writer_new(); /* up without down */
    st_writer_add(w, TE_Q_PREFIX ".lora_up.weight", ST_F32, 2, su, u);
    expect_open_error(save(w, "nodown.safetensors"), (const char *[]){TE_Q_PREFIX, "lora_down", NULL});

    w = st_writer_new(); /* down without up */
    st_writer_add(w, TE_Q_PREFIX ".lora_down.weight", ST_F32, 2, sd, d);
    expect_open_error(save(w, "noup.safetensors"), (const char *[]){TE_Q_PREFIX, "lora_up", NULL});

    w = st_writer_new(); /* rank mismatch */
    st_writer_add(w, TE_Q_PREFIX ".lora_down.weight", ST_F32, 2, sd, d);
    st_writer_add(w, TE_Q_PREFIX ".lora_up.weight", ST_F32, 2, su3, u);
    expect_open_error(save(w, "rank.safetensors"), (const char *[]){TE_Q_PREFIX, "rank mismatch", "[64, 3]", NULL});

    w = st_writer_new(); /* NaN in up */
    u[5] = NAN;
    st_writer_add(w, TE_Q_PREFIX ".lora_down.weight", ST_F32, 2, sd, d);
    st_writer_add(w, TE_Q_PREFIX ".lora_up.weight", ST_F32, 2, su, u);
    expect_open_error(save(w, "nan.safetensors"), (const char *[]){TE_Q_PREFIX ".lora_up.weight", "non-finite", NULL});
    u[5] = 0;

    w = st_writer_new(); /* infinite alpha */
    float inf = INFINITY;
    st_writer_add(w, TE_Q_PREFIX ".lora_down.weight", ST_F32, 2, sd, d);
    st_writer_add(w, TE_Q_PREFIX ".lora_up.weight", ST_F32, 2, su, u);
    st_writer_add(w, TE_Q_PREFIX ".alpha", ST_F32, 0, NULL, &inf);
    expect_open_error(save(w, "alpha.safetensors"), (const char *[]){TE_Q_PREFIX ".alpha", "non-finite", NULL});

    w = st_writer_new(); /* not a LoRA tensor kind (LoHa) */
    st_writer_add(w, TE_Q_PREFIX ".hada_w1_a", ST_F32, 2, sd, d);
    expect_open_error(save(w, "loha.safetensors"), (const char *[]){TE_Q_PREFIX ".hada_w1_a", "hada_w1_a", NULL});

    w = st_writer_new(); /* two names for one module: diffusers + CompVis */
    st_writer_add(w, "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", ST_F32, 2, sd, d);
    st_writer_add(w, "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", ST_F32, 2, su, u);
    st_writer_add(w, "lora_unet_input_blocks_1_1_proj_in.lora_down.weight", ST_F32, 2, sd, d);
    st_writer_add(w, "lora_unet_input_blocks_1_1_proj_in.lora_up.weight", ST_F32, 2, su, u);
    expect_open_error(save(w, "twice.safetensors"),
                      (const char *[]){"lora_unet_input_blocks_1_1_proj_in", "model.diffusion_model.input_blocks.1.1.proj_in.weight", NULL});

    /* truncated file */
    w = st_writer_new();
    st_writer_add(w, TE_Q_PREFIX ".lora_down.weight", ST_F32, 2, sd, d);
    st_writer_add(w, TE_Q_PREFIX ".lora_up.weight", ST_F32, 2, su, u);
    const char *p = save(w, "trunc.safetensors");
    struct stat sb;
    ck_assert(stat(p, &sb) == 0);
    ck_assert(truncate(p, sb.st_size - 100) == 0);
    expect_open_error(p, (const char *[]){"trunc.safetensors", NULL});

    /* missing file */
    expect_open_error(test_tmp("no-such.safetensors"), (const char *[]){"no-such.safetensors", NULL});
    free(d);
    free(u);
}
END_TEST

/* Factors that do not fit the module: error names the key, both shapes
 * and the module; merge writes nothing. */
START_TEST(test_errors_shape) {
    StWriter *w = st_writer_new();
    add_module(w, TE_Q_PREFIX, 64, 32, 2, 1, 1); /* q_proj is [64, 64] */
    const char *p = save(w, "shape.safetensors");
    StFile f;
    const char **keys = base_keys(&f);
    LdmLora *l = open_lora(&f, keys, p, 1, 1);
    int64_t shape[2] = {64, 64};
    float *wv = ldm_xcalloc(64 * 64, 4);
    ck_assert_int_eq(ldm_lora_apply(l, TE_Q, 2, shape, wv), -1);
    const char *msg = ldm_last_error();
    const char *want[] = {TE_Q, "[64, 64]", TE_Q_PREFIX, "[2, 32]", "[64, 2]"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(msg, want[i]), "message lacks '%s': %s", want[i], msg);
    free(wv);
    LdmLora *ls[1] = {l};
    const char *out = test_tmp("shape_out.safetensors");
    ck_assert_int_eq(ldm_lora_merge_checkpoint(&f, ls, 1, -1, out, NULL), -1);
    ck_assert(strstr(ldm_last_error(), TE_Q));
    assert_no_output("shape_out");
    ldm_lora_free(l);
    free(keys);
    st_close(&f);

    /* a 3x3 LoCon down on a linear layer */
    w = st_writer_new();
    int64_t sd[4] = {2, 64, 3, 3}, su[2] = {64, 2};
    float *d = vals(2 * 64 * 9, 1), *u = vals(64 * 2, 2);
    st_writer_add(w, TE_Q_PREFIX ".lora_down.weight", ST_F32, 4, sd, d);
    st_writer_add(w, TE_Q_PREFIX ".lora_up.weight", ST_F32, 2, su, u);
    p = save(w, "conv_on_linear.safetensors");
    keys = base_keys(&f);
    l = open_lora(&f, keys, p, 1, 1);
    wv = ldm_xcalloc(64 * 64, 4);
    ck_assert_int_eq(ldm_lora_apply(l, TE_Q, 2, shape, wv), -1);
    ck_assert(strstr(ldm_last_error(), "[2, 64, 3, 3]"));
    free(wv);
    free(d);
    free(u);
    ldm_lora_free(l);
    free(keys);
    st_close(&f);
}
END_TEST

/* ldmc merge: bad arguments and bad files fail with a message and no output. */
START_TEST(test_ldmc_merge_errors) {
    StWriter *w = st_writer_new();
    int64_t sd[2] = {4, 64}, su[2] = {64, 3};
    float *d = vals(4 * 64, 1), *u = vals(64 * 3, 2);
    st_writer_add(w, TE_Q_PREFIX ".lora_down.weight", ST_F32, 2, sd, d);
    st_writer_add(w, TE_Q_PREFIX ".lora_up.weight", ST_F32, 2, su, u);
    free(d);
    free(u);
    const char *bad = save(w, "badrank.safetensors");
    w = st_writer_new();
    add_module(w, TE_Q_PREFIX, 64, 32, 2, 1, 1);
    const char *misfit = save(w, "misfit.safetensors");
    const char *out = test_tmp("cli_out.safetensors");
    char *log;
    struct { const char *args[6]; int status; const char *msg; } cases[] = {
        {{"--lora", bad, test_shared(BASE), "-o", out, NULL}, 1, "rank mismatch"},
        {{"--lora", misfit, test_shared(BASE), "-o", out, NULL}, 1, TE_Q},
        {{"--lora", test_tmp("nope.safetensors"), test_shared(BASE), "-o", out, NULL}, 1, "nope.safetensors"},
        {{"--lora", misfit, test_tmp("nobase.safetensors"), "-o", out, NULL}, 1, "nobase.safetensors"},
        {{"--lora", misfit, test_shared(BASE), "-o", out, "--dtype"}, 2, "--dtype: expected a value"},
        {{"--lora", misfit, test_shared(BASE), "--dtype", "f8", NULL}, 2, "usage"},
        {{"--lora", ":0.5", test_shared(BASE), "-o", out, NULL}, 2, "no file name"},
        {{test_shared(BASE), "-o", out, NULL}, 2, "usage"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char **a = cases[i].args;
        int rc = run_ldmc(&log, "merge", a[0], a[1], a[2], a[3], a[4], a[5], NULL, NULL);
        ck_assert_msg(rc == cases[i].status && strstr(log, cases[i].msg), "case %zu: status %d, output:\n%s", i, rc,
                      log);
        free(log);
        assert_no_output("cli_out");
    }
}
END_TEST

Suite *suite_lora(void) {
    Suite *s = suite_create("lora");
    TCase *tc = tcase_create("lora");
    tcase_add_unchecked_fixture(tc, scratch_setup, NULL);
    tcase_add_test(tc, test_golden_library);
    tcase_add_test(tc, test_mapping_diffusers);
    tcase_add_test(tc, test_mapping_compvis);
    tcase_add_test(tc, test_golden_ldmc_merge);
    tcase_add_test(tc, test_math_alpha_and_multipliers);
    tcase_add_test(tc, test_openclip_packed_qkv);
    tcase_add_test(tc, test_unmatched_counted);
    tcase_add_test(tc, test_errors_open);
    tcase_add_test(tc, test_errors_shape);
    tcase_add_test(tc, test_ldmc_merge_errors);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return s;
}
