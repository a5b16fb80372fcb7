/*
 * test_adapters.c - webui prompts, textual inversion, CLIP skip and LoRA in
 * the txt2img executable, end to end (goldens/sd1-adapters, README 1-3).
 *
 * The fixture builds the sd1-tiny txt2img at 128x128 as a user does (make
 * txt2img ..., the defaults CHUNKS=3 CLIP_SKIPS=2): txt2img-test-sd1-tiny,
 * shared with the other suites (testio.h). Every golden goes through the executable, the
 * conditioning through --save-cond (tensors named as the goldens):
 *   - prompt_cond.io: the 8 prompts at CLIP skip 1 and 2 (weights, BREAK,
 *     an embedding at weight 1.2, comma backtrack, 3 chunks with the
 *     embedding pushed to chunk 2, "", a negative prompt with an embedding);
 *   - clip_lora.io: 3 prompts with tinylora 0.8 and with tinylora 0.8 +
 *     tinylora_b -0.5, skips 1 and 2 (--lora FILE:MULT), and the same
 *     through a <lora:...> tag with --lora-dir, bit for bit;
 *   - txt2img_combo.io: the webui run with a tag, a 2-chunk weighted prompt,
 *     an embedding in the 1-chunk negative prompt, CLIP skip 2, padding:
 *     cond, uncond, empty_cond, the padded pair, the latent and the PNG, and
 *     the generation record in --save-latent's metadata;
 * and without goldens:
 *   - the LoRA set changing between --prompts lines rebuilds the weights from
 *     the checkpoint: on the F16 checkpoint, line 3 (tag again) is bit for
 *     bit line 1 and line 2 (no tag) the image without LoRA;
 *   - prompt and negative prompt of different chunk counts run as two UNet
 *     calls of their own context lengths (a fake UNet records them), and the
 *     same lengths as one batch;
 *   - --prompt-syntax plain is the CompVis tokenisation (one chunk, brackets
 *     are text) and the webui syntax of a plain prompt is the same tensor;
 *   - bad input: every error of the issue, non-zero exit, a message naming
 *     the problem, no output file.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"
#include "pipeline.h"
#include "safetensors.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "textcond.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define ADA_SAN 1
#else
#define ADA_SAN 0
#endif

#define ADAPT "goldens/sd1-adapters/"

static char g_exe[700];      /* built executable, "" until built */
static char *g_build_log;
static char g_emb_dir[600];  /* a directory holding tinyemb.safetensors only */
static char g_fp16[600];     /* sd1-tiny in F16 */

static void setup_exe(void) {
    test_dir_init("ldm_adapters_");
    if (!test_dir[0] || g_exe[0] || g_build_log) return;
    test_build_sd1_tiny_txt2img(ADA_SAN, g_exe, sizeof g_exe, &g_build_log);
    /* embeddings: a directory with tinyemb only (the goldens' directory also
     * holds the LoRA files) */
    snprintf(g_emb_dir, sizeof g_emb_dir, "%s/emb", test_dir);
    mkdir(g_emb_dir, 0755);
    char dst[700];
    snprintf(dst, sizeof dst, "%s/tinyemb.safetensors", g_emb_dir);
    size_t n;
    char *data = ldm_read_file(test_shared(ADAPT "tinyemb.safetensors"), &n);
    if (data) {
        FILE *f = fopen(dst, "wb");
        if (f) {
            fwrite(data, 1, n, f);
            fclose(f);
        }
        free(data);
    }
    snprintf(g_fp16, sizeof g_fp16, "%s/model-f16.safetensors", test_dir);
    if (st_convert(test_shared("goldens/sd1-tiny/model.safetensors"), g_fp16, ST_F16) != 0) g_fp16[0] = 0;
}

static void teardown_nothing(void) {}

static const char *exe(void) {
    ck_assert_msg(g_exe[0], "make txt2img (sd1-tiny, adapters) failed:\n%s", g_build_log ? g_build_log : "(not run)");
    return g_exe;
}

#define MAX_ARGS 64

/* Run the executable with the sd1-tiny weights (or `weights`), the vocab
 * and the NULL-terminated arguments; want_ok: must succeed, else must fail
 * cleanly. Returns the output (malloc'd). */
static char *run_w(int want_ok, const char *weights, ...) {
    char *argv[MAX_ARGS];
    int k = 0;
    argv[k++] = (char *)exe();
    argv[k++] = "--weights";
    argv[k++] = (char *)(weights ? weights : test_shared("goldens/sd1-tiny/model.safetensors"));
    argv[k++] = "--vocab";
    argv[k++] = (char *)test_shared("clip/bpe_simple_vocab_16e6.txt.gz");
    va_list ap;
    va_start(ap, weights);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        ck_assert_msg(k < MAX_ARGS - 1, "too many arguments");
        argv[k++] = (char *)a;
    }
    va_end(ap);
    argv[k] = NULL;
    char *out;
    int rc = test_run(argv, &out);
    if (want_ok) ck_assert_msg(rc == 0, "txt2img failed (status %d):\n%s", rc, out);
    else ck_assert_msg(rc != 0 && rc < 128, "txt2img: expected a clean failure, got status %d:\n%s", rc, out);
    return out;
}

/* max |file's tensor - golden tensor|, shapes checked */
static double tensor_diff(const char *file, const char *name, const char *io, const char *gname) {
    int64_t n, ng;
    float *a = read_f32(file, name, &n), *b = read_f32(io, gname, &ng);
    ck_assert_msg(n == ng, "%s: %s has %lld values, golden %s %lld", file, name, (long long)n, gname, (long long)ng);
    double d = max_abs_diff(a, b, n);
    free(a);
    free(b);
    return d;
}

/* The prompts of prompt_cond.io: its `cases` strings read 'caseK: "TEXT" -> ...' */
static char *cond_case_prompt(int k) {
    char *cases = meta(test_shared(ADAPT "prompt_cond.io.safetensors"), "cases");
    json_error_t err;
    json_t *j = json_loads(cases, 0, &err);
    ck_assert_msg(json_is_array(j), "prompt_cond cases: %s", err.text);
    const char *s = json_string_value(json_array_get(j, (size_t)k));
    ck_assert(s);
    const char *q = strchr(s, '"'), *e = strstr(s, "\" ->");
    ck_assert_msg(q && e && e > q, "case %d: %s", k, s);
    char *p = ldm_xmalloc((size_t)(e - q));
    memcpy(p, q + 1, (size_t)(e - q - 1));
    p[e - q - 1] = 0;
    json_decref(j);
    free(cases);
    return p;
}

/* ------------------------------------------------------------------------
 * prompt_cond.io: 8 prompts x CLIP skip 1, 2
 * ------------------------------------------------------------------------ */

START_TEST(test_prompt_cond) {
    int k = _i / 2, skip = 1 + _i % 2;
    const char *io = test_shared(ADAPT "prompt_cond.io.safetensors");
    char *prompt = cond_case_prompt(k), skip_s[8], gname[64];
    snprintf(skip_s, sizeof skip_s, "%d", skip);
    const char *cond = test_tmp("pc-%d.safetensors", _i), *png = test_tmp("pc-%d.png", _i);
    free(run_w(1, NULL, "--prompt", prompt, "--embeddings", g_emb_dir, "--clip-skip", skip_s, "--save-cond", cond,
               "--steps", "1", "-o", png, "--quiet", NULL));
    snprintf(gname, sizeof gname, "case%d.cond_skip%d", k, skip);
    double d = tensor_diff(cond, "cond", io, gname), tol = tolerance(io, gname);
    printf("adapters: prompt_cond %-18s max|ours - golden| = %.3g (tolerance %.3g)\n", gname, d, tol);
    fflush(stdout);
    ck_assert_msg(d <= tol, "%s (\"%s\"): max |ours - golden| = %g > %g", gname, prompt, d, tol);
    free(prompt);
}
END_TEST

/* ------------------------------------------------------------------------
 * clip_lora.io: LoRA on the text encoder
 * ------------------------------------------------------------------------ */

START_TEST(test_clip_lora) {
    int k = _i / 4, ab = (_i / 2) % 2, skip = 1 + _i % 2;
    const char *io = test_shared(ADAPT "clip_lora.io.safetensors");
    char *prompts = meta(io, "prompts");
    json_t *j = json_loads(prompts, 0, NULL);
    ck_assert(json_is_array(j) && json_array_size(j) == 3);
    char *prompt = ldm_xstrdup(json_string_value(json_array_get(j, (size_t)k)));
    json_decref(j);
    free(prompts);
    char la[700], lb[700], skip_s[8], gname[64];
    snprintf(la, sizeof la, "%s:0.8", test_shared(ADAPT "tinylora.safetensors"));
    snprintf(lb, sizeof lb, "%s:-0.5", test_shared(ADAPT "tinylora_b.safetensors"));
    snprintf(skip_s, sizeof skip_s, "%d", skip);
    const char *cond = test_tmp("cl-%d.safetensors", _i), *png = test_tmp("cl-%d.png", _i);
    if (ab)
        free(run_w(1, NULL, "--prompt", prompt, "--embeddings", g_emb_dir, "--clip-skip", skip_s, "--lora", la,
                   "--lora", lb, "--save-cond", cond, "--steps", "1", "-o", png, "--quiet", NULL));
    else
        free(run_w(1, NULL, "--prompt", prompt, "--embeddings", g_emb_dir, "--clip-skip", skip_s, "--lora", la,
                   "--save-cond", cond, "--steps", "1", "-o", png, "--quiet", NULL));
    snprintf(gname, sizeof gname, "case%d.cond_%s_skip%d", k, ab ? "ab" : "a", skip);
    double d = tensor_diff(cond, "cond", io, gname), tol = tolerance(io, gname);
    printf("adapters: clip_lora %-20s max|ours - golden| = %.3g (tolerance %.3g)\n", gname, d, tol);
    fflush(stdout);
    ck_assert_msg(d <= tol, "%s: max |ours - golden| = %g > %g", gname, d, tol);

    /* the same LoRAs asked for by tags in the prompt: the same tensor */
    if (k == 0 && skip == 2) {
        char *tagged = ldm_xasprintf(ab ? "<lora:tinylora:0.8><lora:tinylora_b:-0.5>%s" : "<lora:tinylora:0.8>%s",
                                     prompt);
        const char *cond2 = test_tmp("cl-tag-%d.safetensors", _i);
        char dir[600];
        snprintf(dir, sizeof dir, "%s", test_shared(ADAPT "tinylora.safetensors"));
        *strrchr(dir, '/') = 0;
        free(run_w(1, NULL, "--prompt", tagged, "--clip-skip", skip_s, "--lora-dir", dir, "--save-cond", cond2,
                   "--steps", "1", "-o", png, "--quiet", NULL));
        ck_assert_msg(same_tensor(cond, cond2, "cond"), "<lora:> tags and --lora give different conditionings");
        free(tagged);
    }
    free(prompt);
}
END_TEST

/* ------------------------------------------------------------------------
 * txt2img_combo.io: everything at once
 * ------------------------------------------------------------------------ */

static void write_noise(const char *io, const char *src, const char *dst) {
    StFile f;
    ck_assert_msg(st_open(&f, io) == 0, "%s", ldm_last_error());
    const StTensor *t = st_find(&f, src);
    ck_assert_msg(t && t->dtype == ST_F32, "%s: no F32 tensor '%s'", io, src);
    StWriter *w = st_writer_new();
    st_writer_add(w, "noise", ST_F32, t->ndim, t->shape, t->data);
    ck_assert_msg(st_writer_save(w, dst) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    st_close(&f);
}

START_TEST(test_txt2img_combo) {
    const char *io = test_shared(ADAPT "txt2img_combo.io.safetensors");
    char *prompt = meta(io, "prompt"), *neg = meta(io, "negative_prompt"), *steps = meta(io, "steps");
    char *scale = meta(io, "guidance_scale"), *skip = meta(io, "clip_skip");
    char *pad = meta(io, "pad_state");
    ck_assert_msg(strstr(pad, "\"padded_cond_uncond\": true"), "combo: not padded? %s", pad);
    char dir[600];
    snprintf(dir, sizeof dir, "%s", test_shared(ADAPT "tinylora.safetensors"));
    *strrchr(dir, '/') = 0;
    const char *noise = test_tmp("combo-noise.safetensors"), *lat = test_tmp("combo-latent.safetensors");
    const char *cond = test_tmp("combo-cond.safetensors"), *png = test_tmp("combo.png");
    write_noise(io, "x_T", noise);
    char *out = run_w(1, NULL, "--prompt", prompt, "--negative-prompt", neg, "--lora-dir", dir, "--embeddings",
                      g_emb_dir, "--clip-skip", skip, "--pad-cond-uncond", "--steps", steps, "--cfg-scale", scale,
                      "--sampler", "ddim", "--init-noise", noise, "--save-latent", lat, "--save-cond", cond, "-o",
                      png, NULL);
    /* the progress header states the generation */
    ck_assert_msg(strstr(out, "prompt 2 chunks, negative prompt 1 chunk (padded with the empty prompt), CLIP skip 2, "
                              "LoRA tinylora:0.8, embeddings tinyemb"),
                  "no generation header in:\n%s", out);
    free(out);
    static const char *names[5] = {"cond", "uncond", "empty_cond", "cond_padded", "uncond_padded"};
    for (int i = 0; i < 5; i++) {
        double d = tensor_diff(cond, names[i], io, names[i]), tol = tolerance(io, names[i]);
        printf("adapters: txt2img_combo %-14s max|ours - golden| = %.3g (tolerance %.3g)\n", names[i], d, tol);
        ck_assert_msg(d <= tol, "txt2img_combo %s: max |ours - golden| = %g > %g", names[i], d, tol);
    }
    double d = tensor_diff(lat, "latent", io, "latent"), tol = tolerance(io, "latent");
    int pd = png_max_diff(png, test_shared(ADAPT "txt2img_combo.png"));
    printf("adapters: txt2img_combo latent max|ours - golden| = %.3g (tolerance %.3g), PNG max diff %d\n", d, tol, pd);
    fflush(stdout);
    ck_assert_msg(d <= tol, "txt2img_combo latent: max |ours - golden| = %g > %g", d, tol);
    ck_assert_msg(pd <= 1, "txt2img_combo PNG differs from the golden by %d levels (at most 1)", pd);
    /* the generation record */
    static const char *rec[][2] = {{"prompt_chunks", "2"},      {"negative_prompt_chunks", "1"},
                                   {"loras", "tinylora:0.8"},   {"embeddings", "tinyemb"},
                                   {"clip_skip", "2"},          {"pad_cond_uncond", "true"},
                                   {"prompt_syntax", "webui"}};
    for (size_t i = 0; i < sizeof rec / sizeof rec[0]; i++) {
        char *v = meta(lat, rec[i][0]);
        ck_assert_msg(!strcmp(v, rec[i][1]), "--save-latent metadata %s = '%s', expected '%s'", rec[i][0], v,
                      rec[i][1]);
        free(v);
    }
    free(prompt);
    free(neg);
    free(steps);
    free(scale);
    free(skip);
    free(pad);
}
END_TEST

/* Without --pad-cond-uncond the same run makes two UNet calls per step (the
 * header says so) and another image; padding changes nothing when the
 * chunk counts agree. */
START_TEST(test_unpadded_run) {
    const char *lat1 = test_tmp("np-1.safetensors"), *lat2 = test_tmp("np-2.safetensors");
    const char *png = test_tmp("np.png");
    const char *two = "a castle on a hill BREAK a lake";
    char *out = run_w(1, NULL, "--prompt", two, "--steps", "4", "--seed", "3", "--save-latent", lat1, "-o", png, NULL);
    ck_assert_msg(strstr(out, "prompt 2 chunks, negative prompt 1 chunk (two UNet calls per step)"), "%s", out);
    free(out);
    free(run_w(1, NULL, "--prompt", two, "--steps", "4", "--seed", "3", "--pad-cond-uncond", "--save-latent", lat2,
               "-o", png, "--quiet", NULL));
    ck_assert_msg(!same_latent(lat1, lat2), "padding the negative prompt changed nothing");
    free(run_w(1, NULL, "--prompt", "a castle", "--steps", "4", "--seed", "3", "--save-latent", lat1, "-o", png,
               "--quiet", NULL));
    free(run_w(1, NULL, "--prompt", "a castle", "--steps", "4", "--seed", "3", "--pad-cond-uncond", "--save-latent",
               lat2, "-o", png, "--quiet", NULL));
    ck_assert_msg(same_latent(lat1, lat2), "--pad-cond-uncond changed a run whose prompts have one chunk each");
}
END_TEST

/* --prompts lines with different LoRA sets: every change rebuilds the
 * weights from the (F16) checkpoint, so line 3 = line 1 and line 2 = the
 * image without LoRA, bit for bit. */
START_TEST(test_lora_set_changes) {
    ck_assert_msg(g_fp16[0], "could not make the F16 checkpoint");
    const char *list = test_tmp("lines.txt"), *outdir = test_tmp("lines-out"), *latdir = test_tmp("lines-lat");
    FILE *f = fopen(list, "w");
    ck_assert(f);
    fputs("<lora:tinylora:0.8> a red car\na red car\n<lora:tinylora:0.8> a red car\n", f);
    fclose(f);
    char dir[600];
    snprintf(dir, sizeof dir, "%s", test_shared(ADAPT "tinylora.safetensors"));
    *strrchr(dir, '/') = 0;
    const char *conddir = test_tmp("lines-cond");
    free(run_w(1, g_fp16, "--prompts", list, "--lora-dir", dir, "--steps", "2", "--seed", "5", "--save-latent",
               latdir, "--save-cond", conddir, "-o", outdir, "--quiet", NULL));
    /* --save-cond with --prompts: a directory, one file per line */
    for (int i = 1; i <= 3; i++) {
        char c[700];
        snprintf(c, sizeof c, "%s/%05d-%d.safetensors", conddir, i, 4 + i);
        int64_t n;
        free(read_f32(c, "cond", &n));
        ck_assert_int_eq(n, 77 * 64);
    }
    const char *single = test_tmp("lines-single.safetensors"), *png = test_tmp("lines-single.png");
    /* line 2 has seed 5 + 1 */
    free(run_w(1, g_fp16, "--prompt", "a red car", "--steps", "2", "--seed", "6", "--save-latent", single, "-o", png,
               "--quiet", NULL));
    char l1[700], l2[700], l3[700];
    snprintf(l1, sizeof l1, "%s/00001-5.safetensors", latdir);
    snprintf(l2, sizeof l2, "%s/00002-6.safetensors", latdir);
    snprintf(l3, sizeof l3, "%s/00003-7.safetensors", latdir);
    ck_assert_msg(same_latent(l2, single), "line 2 (no LoRA after a LoRA line) differs from a run without LoRA");
    /* line 3: same LoRA as line 1 but seed 7: compare with a single run of it */
    const char *single3 = test_tmp("lines-single3.safetensors");
    free(run_w(1, g_fp16, "--prompt", "<lora:tinylora:0.8> a red car", "--lora-dir", dir, "--steps", "2", "--seed",
               "7", "--save-latent", single3, "-o", png, "--quiet", NULL));
    ck_assert_msg(same_latent(l3, single3), "line 3 (LoRA again) differs from a fresh run with the LoRA");
    ck_assert_msg(!same_latent(l1, l2), "the LoRA changed nothing");
    char *rec = meta(l1, "loras"), *rec2 = meta(l2, "loras");
    ck_assert_str_eq(rec, "tinylora:0.8");
    ck_assert_str_eq(rec2, "");
    free(rec);
    free(rec2);
}
END_TEST

/* --prompt-syntax plain: the CompVis tokenisation. */
START_TEST(test_plain_syntax) {
    const char *a = test_tmp("plain-a.safetensors"), *b = test_tmp("plain-b.safetensors"), *png = test_tmp("plain.png");
    /* a prompt without syntax: the same conditioning either way */
    free(run_w(1, NULL, "--prompt", "a photo of a cat", "--save-cond", a, "--steps", "1", "-o", png, "--quiet", NULL));
    free(run_w(1, NULL, "--prompt", "a photo of a cat", "--prompt-syntax", "plain", "--save-cond", b, "--steps", "1",
               "-o", png, "--quiet", NULL));
    ck_assert_msg(same_tensor(a, b, "cond"), "plain and webui syntax differ on a plain prompt");
    /* brackets are text in plain, emphasis in webui */
    free(run_w(1, NULL, "--prompt", "a (red:1.3) car", "--save-cond", a, "--steps", "1", "-o", png, "--quiet", NULL));
    free(run_w(1, NULL, "--prompt", "a (red:1.3) car", "--prompt-syntax", "plain", "--save-cond", b, "--steps", "1",
               "-o", png, "--quiet", NULL));
    ck_assert_msg(!same_tensor(a, b, "cond"), "plain syntax parsed the brackets");
    /* a long prompt: 1 chunk (cut at 75 tokens) in plain, 2 in webui */
    char *lng = cond_case_prompt(4);
    free(run_w(1, NULL, "--prompt", lng, "--prompt-syntax", "plain", "--save-cond", b, "--steps", "1", "-o", png,
               "--quiet", NULL));
    int64_t n;
    free(read_f32(b, "cond", &n));
    ck_assert_int_eq(n, 77 * 64);
    free(lng);
}
END_TEST

/* ------------------------------------------------------------------------
 * two UNet calls of their own lengths (in process, a fake UNet)
 * ------------------------------------------------------------------------ */

static int64_t g_calls[4][2]; /* (B, T) of each call */
static int g_ncalls;
static int fake_unet(const LdmW *w, const void *const *in, void *const *out, unsigned char *arena, const int64_t *ext) {
    (void)w, (void)arena;
    if (g_ncalls < 4) g_calls[g_ncalls][0] = ext[0], g_calls[g_ncalls][1] = ext[1];
    g_ncalls++;
    /* eps of sample b = sum of its context (T x 2 values) */
    const float *ctx = in[2];
    float *eps = out[0];
    for (int64_t b = 0; b < ext[0]; b++) {
        float s = 0;
        for (int64_t j = 0; j < ext[1] * 2; j++) s += ctx[b * ext[1] * 2 + j];
        for (int j = 0; j < 4; j++) eps[b * 4 + j] = s;
    }
    return 0;
}

START_TEST(test_guide_own_lengths) {
    const char *ckpt = test_tmp("guide.safetensors");
    float one = 1;
    int64_t s1[1] = {1};
    StWriter *wr = st_writer_new();
    st_writer_add(wr, "unused", ST_F32, 1, s1, &one);
    ck_assert(st_writer_save(wr, ckpt) == 0);
    st_writer_free(wr);
    /* x [B<=2, 1, 2, 2], context [B<=2, T<=6 step 3, 2] */
    static const LdmTensorInfo ins[3] = {
        {.name = "x", .dtype = LDM_F32, .ndim = 4, .shape = {2, 1, 2, 2}, .dyn = {1}},
        {.name = "timesteps", .dtype = LDM_F32, .ndim = 1, .shape = {2}, .dyn = {1}},
        {.name = "context", .dtype = LDM_F32, .ndim = 3, .shape = {2, 6, 2}, .dyn = {1, 2}},
    };
    static const LdmTensorInfo outs[1] = {{.name = "eps", .dtype = LDM_F32, .ndim = 4, .shape = {2, 1, 2, 2}, .dyn = {1}}};
    static const LdmExtent ext[2] = {{.name = "B", .max = 2, .step = 1}, {.name = "T", .max = 6, .step = 3}};
    LdmModel unet = {.name = "unet", .banner = "fake", .n_inputs = 3, .inputs = ins, .n_outputs = 1, .outputs = outs,
                     .arena_bytes = 64, .forward = fake_unet, .n_extents = 2, .extents = ext};
    const LdmModel *models[1] = {&unet};
    LdmNets nets;
    ck_assert_msg(ldm_nets_load(&nets, ckpt, models, 1, "test") == 0, "%s", ldm_last_error());
    float uc[12], c[12], x[4] = {0}, eps[4];
    for (int i = 0; i < 12; i++) uc[i] = 1, c[i] = 2;
    /* uncond 1 chunk (T 3, sum 6), cond 2 chunks (T 6, sum 24): two calls */
    LdmGuide g = {.nets = &nets, .unet = 0, .batch = 1, .sample_n = 4, .guided = 1, .scale = 7.5, .context = uc,
                  .context_c = c, .len_u = 3, .len_c = 6};
    ck_assert_msg(ldm_guide_init(&g) == 0, "%s", ldm_last_error());
    g_ncalls = 0;
    ck_assert_int_eq(ldm_guide_eps(&g, x, 500.0f, eps), 0);
    ck_assert_int_eq(g_ncalls, 2);
    ck_assert_msg(g_calls[0][0] == 1 && g_calls[0][1] == 3 && g_calls[1][0] == 1 && g_calls[1][1] == 6,
                  "calls (B, T): (%lld, %lld), (%lld, %lld); expected (1, 3), (1, 6)", (long long)g_calls[0][0],
                  (long long)g_calls[0][1], (long long)g_calls[1][0], (long long)g_calls[1][1]);
    ck_assert_msg(eps[0] == 6.0f + 7.5f * (24.0f - 6.0f), "eps %g", eps[0]);
    /* scale 1: the cond call alone */
    g.scale = 1.0;
    g_ncalls = 0;
    ck_assert_int_eq(ldm_guide_eps(&g, x, 500.0f, eps), 0);
    ck_assert_msg(g_ncalls == 1 && g_calls[0][1] == 6 && eps[0] == 24.0f, "cfg 1: %d calls, T %lld, eps %g", g_ncalls,
                  (long long)g_calls[0][1], eps[0]);
    ldm_guide_free(&g);
    /* equal lengths: one call of batch 2 */
    LdmGuide g2 = {.nets = &nets, .unet = 0, .batch = 1, .sample_n = 4, .guided = 1, .scale = 7.5, .context = uc,
                   .context_c = c, .len_u = 3, .len_c = 3};
    ck_assert_msg(ldm_guide_init(&g2) == 0, "%s", ldm_last_error());
    g_ncalls = 0;
    ck_assert_int_eq(ldm_guide_eps(&g2, x, 500.0f, eps), 0);
    ck_assert_msg(g_ncalls == 1 && g_calls[0][0] == 2 && g_calls[0][1] == 3, "equal lengths: %d calls, B %lld T %lld",
                  g_ncalls, (long long)g_calls[0][0], (long long)g_calls[0][1]);
    ck_assert_msg(eps[0] == 6.0f + 7.5f * (12.0f - 6.0f), "eps %g", eps[0]); /* T 3: sums 6 and 12 */
    ldm_guide_free(&g2);
    /* a length the UNet does not take */
    LdmGuide g3 = {.nets = &nets, .unet = 0, .batch = 1, .sample_n = 4, .guided = 1, .scale = 7.5, .context = uc,
                   .context_c = c, .len_u = 3, .len_c = 9};
    ck_assert_int_eq(ldm_guide_init(&g3), -1);
    ck_assert_msg(strstr(ldm_last_error(), "up to 6 tokens"), "%s", ldm_last_error());
    ldm_guide_free(&g3); /* nothing to free after a failed init, and harmless */
    ldm_nets_free(&nets);
}
END_TEST

/* ------------------------------------------------------------------------
 * bad input
 * ------------------------------------------------------------------------ */

/* a copy of src's first `keep` bytes (keep < 0: all) */
static void copy_prefix(const char *src, const char *dst, long keep) {
    size_t n;
    char *d = ldm_read_file(src, &n);
    ck_assert(d);
    FILE *f = fopen(dst, "wb");
    ck_assert(f);
    fwrite(d, 1, keep < 0 ? n : (size_t)keep, f);
    fclose(f);
    free(d);
}

/* A small LoRA for one text-encoder q_proj [64, 64] with the given factors. */
static void write_lora(const char *path, int with_down, int with_up, int down_rank, int up_rank, float fill) {
    StWriter *w = st_writer_new();
    float *d = ldm_xmalloc(64 * 64 * sizeof(float));
    for (int i = 0; i < 64 * 64; i++) d[i] = 0.01f * (float)(i % 7);
    int64_t sd[2] = {down_rank, 64}, su[2] = {64, up_rank};
    if (with_down) st_writer_add(w, "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", ST_F32, 2, sd, d);
    d[5] = fill;
    if (with_up) st_writer_add(w, "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", ST_F32, 2, su, d);
    ck_assert_msg(st_writer_save(w, path) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    free(d);
}

typedef struct Bad {
    const char *what;
    const char *want;     /* in the message */
} Bad;

static const Bad k_bad[] = {
    {"missing --lora file", "no-such-lora.safetensors"},
    {"<lora:> without --lora-dir", "no --lora-dir"},
    {"<lora:> name not in --lora-dir", "nosuch.safetensors"},
    {"truncated LoRA", "trunc-lora.safetensors"},
    {"corrupt LoRA header", "badhdr-lora.safetensors"},
    {"lora_up without lora_down", "lora_down"},
    {"rank mismatch", "rank"},
    {"non-finite LoRA", "non-finite"},
    {"--clip-skip 3 (compiled 2)", "CLIP_SKIPS"},
    {"--clip-skip 0", "--clip-skip"},
    {"4 chunks (compiled 3)", "CHUNKS=N"},
    {"missing --embeddings dir", "no-such-dir"},
    {"truncated embedding", "tinyemb.safetensors"},
    {"integer embedding", "expected F32"},
    {"negative prompt too long", "--negative-prompt"},
};
#define N_BAD ((int)(sizeof k_bad / sizeof k_bad[0]))

START_TEST(test_bad_input) {
    const Bad *b = &k_bad[_i];
    const char *png = test_tmp("bad-%d.png", _i), *lat = test_tmp("bad-%d.safetensors", _i);
    const char *lora = test_tmp("lora-%d.safetensors", _i);
    char spec[700], dir[700];
    snprintf(spec, sizeof spec, "%s:0.5", lora);
    snprintf(dir, sizeof dir, "%s/bad-%d", test_dir, _i);
    mkdir(dir, 0755);
    char emb[800];
    snprintf(emb, sizeof emb, "%s/tinyemb.safetensors", dir);
    /* a 4-chunk prompt: 290 words of one token */
    char *longp = ldm_xmalloc(290 * 4 + 1);
    longp[0] = 0;
    for (int i = 0; i < 290; i++) strcat(longp, "cat ");
    char *out = NULL;
    switch (_i) {
    case 0:
        out = run_w(0, NULL, "--prompt", "a", "--lora", test_tmp("no-such-lora.safetensors"), "-o", png, NULL);
        break;
    case 1: out = run_w(0, NULL, "--prompt", "<lora:tinylora:1> a", "-o", png, NULL); break;
    case 2: out = run_w(0, NULL, "--prompt", "<lora:nosuch:1> a", "--lora-dir", dir, "-o", png, NULL); break;
    case 3:
        copy_prefix(test_shared(ADAPT "tinylora.safetensors"), test_tmp("trunc-lora.safetensors"), 100000);
        out = run_w(0, NULL, "--prompt", "a", "--lora", test_tmp("trunc-lora.safetensors"), "-o", png, NULL);
        break;
    case 4: {
        /* a header whose one entry is not a tensor */
        static const char hdr[] = "\x10\0\0\0\0\0\0\0{\"a\": [1, 2, 3]}";
        FILE *f = fopen(test_tmp("badhdr-lora.safetensors"), "wb");
        fwrite(hdr, 1, sizeof hdr - 1, f);
        fclose(f);
        out = run_w(0, NULL, "--prompt", "a", "--lora", test_tmp("badhdr-lora.safetensors"), "-o", png, NULL);
        break;
    }
    case 5:
        write_lora(lora, 0, 1, 4, 4, 0.5f);
        out = run_w(0, NULL, "--prompt", "a", "--lora", spec, "-o", png, NULL);
        break;
    case 6:
        write_lora(lora, 1, 1, 4, 2, 0.5f);
        out = run_w(0, NULL, "--prompt", "a", "--lora", spec, "-o", png, NULL);
        break;
    case 7:
        write_lora(lora, 1, 1, 4, 4, NAN);
        out = run_w(0, NULL, "--prompt", "a", "--lora", spec, "-o", png, NULL);
        break;
    case 8: out = run_w(0, NULL, "--prompt", "a", "--clip-skip", "3", "-o", png, NULL); break;
    case 9: out = run_w(0, NULL, "--prompt", "a", "--clip-skip", "0", "-o", png, NULL); break;
    case 10: out = run_w(0, NULL, "--prompt", longp, "-o", png, "--save-latent", lat, NULL); break;
    case 11: out = run_w(0, NULL, "--prompt", "a", "--embeddings", test_tmp("no-such-dir"), "-o", png, NULL); break;
    case 12:
        copy_prefix(test_shared(ADAPT "tinyemb.safetensors"), emb, 300);
        out = run_w(0, NULL, "--prompt", "a", "--embeddings", dir, "-o", png, NULL);
        break;
    case 13: {
        StWriter *w = st_writer_new();
        int32_t v[64] = {0};
        int64_t s[1] = {64};
        st_writer_add(w, "emb_params", ST_I32, 1, s, v);
        ck_assert(st_writer_save(w, emb) == 0);
        st_writer_free(w);
        out = run_w(0, NULL, "--prompt", "a", "--embeddings", dir, "-o", png, NULL);
        break;
    }
    case 14: out = run_w(0, NULL, "--prompt", "a", "--negative-prompt", longp, "-o", png, NULL); break;
    }
    ck_assert_msg(strstr(out, b->want), "%s: the message does not mention '%s':\n%s", b->what, b->want, out);
    ck_assert_msg(!test_exists(png) && !test_exists(lat), "%s: an output file was written", b->what);
    if (_i == 10)
        ck_assert_msg(strstr(out, "4 chunks") && strstr(out, "at most 3"), "chunk error without the counts:\n%s", out);
    free(out);
    free(longp);
}
END_TEST

/* An embedding of another width is skipped with a warning naming the file,
 * its width and the expected one; the run goes on (as the webui). */
START_TEST(test_embedding_other_width) {
    char dir[700];
    snprintf(dir, sizeof dir, "%s/wide", test_dir);
    mkdir(dir, 0755);
    char path[800];
    snprintf(path, sizeof path, "%s/wideemb.safetensors", dir);
    StWriter *w = st_writer_new();
    float v[2 * 768] = {0};
    int64_t s[2] = {2, 768};
    st_writer_add(w, "emb_params", ST_F32, 2, s, v);
    ck_assert(st_writer_save(w, path) == 0);
    st_writer_free(w);
    const char *png = test_tmp("wide.png");
    char *out = run_w(1, NULL, "--prompt", "wideemb", "--embeddings", dir, "--steps", "1", "-o", png, NULL);
    ck_assert_msg(strstr(out, "wideemb.safetensors") && strstr(out, "width 768") && strstr(out, "expected 64"),
                  "no warning for the 768-wide embedding:\n%s", out);
    free(out);
}
END_TEST

Suite *suite_adapters(void) {
    Suite *s = suite_create("adapters");
    TCase *tc = tcase_create("goldens");
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_add_loop_test(tc, test_prompt_cond, 0, 16);
    tcase_add_loop_test(tc, test_clip_lora, 0, 12);
    tcase_add_test(tc, test_txt2img_combo);
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);

    tc = tcase_create("behaviour");
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_add_test(tc, test_unpadded_run);
    tcase_add_test(tc, test_lora_set_changes);
    tcase_add_test(tc, test_plain_syntax);
    tcase_add_test(tc, test_guide_own_lengths);
    tcase_add_test(tc, test_embedding_other_width);
    tcase_add_loop_test(tc, test_bad_input, 0, N_BAD);
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);
    return s;
}
