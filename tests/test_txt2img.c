/*
 * test_txt2img.c - the per-resolution text-to-image executable, end to end.
 *
 * The first fixture builds the executable for ../shared/goldens/sd1-tiny at
 * 128x128 exactly as a user does (`make txt2img CONFIG=... H=128 W=128`,
 * into the build directory under test, named txt2img-test-sd1-tiny so it
 * never replaces a user's build) and makes the F16 checkpoint with
 * `ldmc convert --dtype f16`. Then, running the executable as a program:
 *
 *   - goldens: txt2img_ddim, txt2img_plms, txt2img_euler, txt2img_dpmpp2m,
 *     img2img_ddim and fp16/txt2img_ddim with each io file's x_T (or noise)
 *     fed through --init-noise and its prompts, steps and guidance scale
 *     from the metadata: --save-latent within the io file's `latent`
 *     tolerance, the PNG within 1 level of the golden PNG; the golden
 *     cond/uncond tokens are what the tokenizer gives for those prompts;
 *   - seeds: --seed N draws torch_randn's x_T (the saved `noise` equals
 *     torch_randn/randn.io case0, and randn_cuda.io case0 with --rng cuda),
 *     and --init-noise with that noise gives the same latent as --seed N;
 *   - properties without goldens: inpainting keeps the known region (equal to
 *     the golden img2img init_latent there), eta > 0 and euler_a are
 *     deterministic for a seed and differ across seeds, eta 0 is plain DDIM;
 *     --prompts/--shard pick the right lines, name and seed them as
 *     documented, and line 1 is the --prompt image;
 *   - bad input: missing or wrong weights, another config's checkpoint, a
 *     bad vocabulary, bad PNGs, a mask of the wrong size, bad flag values:
 *     non-zero exit, a clear message, and no output file;
 *   - `ldmc pipeline`: the constants it writes for sd1-tiny and its errors;
 *     the executable is static (no program interpreter) unless sanitized;
 *   - sizes: `make txt2img SIZES="128x128 128x192 64x128"` (one executable,
 *     three sizes; the UNet at 64x128 binds some weights differently, so it
 *     also covers a network that cannot share) against the single-size
 *     executables: -H/-W/--height/--width pick the size and each size's
 *     image and latent are bit for bit the single-size ones; a --prompts
 *     file mixing sizes with webui-style line options makes the same images
 *     from one weight load; sizes not compiled are refused (the compiled
 *     sizes and the make command that adds one, exit 2, no output) and bad
 *     size flags too; make's own SIZES errors;
 *   - in process: ldm_model_weights_compatible and LdmNets binding one
 *     weight set for models with identical tables (and separately, with a
 *     note, otherwise), ldm_split_args, ldmc pipeline --size and
 *     ldmc --symbol.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "image.h"
#include "pipeline.h"
#include "safetensors.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "tokenizer.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define T2I_SAN 1
#else
#define T2I_SAN 0
#endif

/* ------------------------------------------------------------------------
 * the executable and the F16 checkpoint, made once per test run
 * ------------------------------------------------------------------------ */

static char g_exe[700];       /* built executable, "" until built */
static char *g_build_log;     /* make's output when the build failed */
static char g_fp16[512];      /* F16 checkpoint, "" until made */
static char *g_fp16_log;

static void setup_exe(void) {
    test_dir_init("ldm_txt2img_");
    if (!test_dir[0] || g_exe[0] || g_build_log) return;
    test_build_sd1_tiny_txt2img(T2I_SAN, g_exe, sizeof g_exe, &g_build_log);
}

static void setup_fp16(void) {
    setup_exe();
    if (!test_dir[0] || g_fp16[0] || g_fp16_log) return;
    char ldmc[300], out[300], log[300];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    snprintf(out, sizeof out, "%s/model-fp16.safetensors", test_dir);
    snprintf(log, sizeof log, "%s/convert.log", test_dir);
    char *argv[] = {ldmc, "convert", "--dtype", "f16", (char *)test_shared("goldens/sd1-tiny/model.safetensors"), out, NULL};
    int rc = test_wait_status(test_spawn(argv, log));
    if (rc == 0 && test_exists(out)) {
        snprintf(g_fp16, sizeof g_fp16, "%s", out);
    } else {
        size_t n;
        g_fp16_log = ldm_read_file(log, &n);
        if (!g_fp16_log) g_fp16_log = ldm_xasprintf("ldmc convert exited with status %d", rc);
    }
}

static void teardown_nothing(void) {}

static const char *exe(void) {
    ck_assert_msg(g_exe[0], "make txt2img (sd1-tiny, 128x128) failed:\n%s", g_build_log ? g_build_log : "(not run)");
    return g_exe;
}

#define MAX_ARGS 64

/* Run the executable with the common arguments (weights, vocab) and the
 * NULL-terminated extra arguments; returns the status, output in *out. */
static int t2i_run_v(const char *weights, char **out, va_list ap) {
    char *argv[MAX_ARGS];
    int k = 0;
    argv[k++] = (char *)exe();
    if (weights) {
        argv[k++] = "--weights";
        argv[k++] = (char *)weights;
    }
    argv[k++] = "--vocab";
    argv[k++] = (char *)test_shared("clip/bpe_simple_vocab_16e6.txt.gz");
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        ck_assert_msg(k < MAX_ARGS - 1, "too many arguments");
        argv[k++] = (char *)a;
    }
    argv[k] = NULL;
    return test_run(argv, out);
}

/* Run with `weights` and the NULL-terminated arguments; want_ok: must
 * succeed, else must fail cleanly. Returns the output (malloc'd). */
static char *run_expect(int want_ok, const char *weights, ...) {
    va_list ap;
    va_start(ap, weights);
    char *out;
    int rc = t2i_run_v(weights, &out, ap);
    va_end(ap);
    if (want_ok) ck_assert_msg(rc == 0, "txt2img failed (status %d):\n%s", rc, out);
    else ck_assert_msg(rc != 0 && rc < 128, "txt2img: expected a clean failure, got status %d:\n%s", rc, out);
    return out;
}

static const char *model_path(void) { return test_shared("goldens/sd1-tiny/model.safetensors"); }

/* ------------------------------------------------------------------------
 * tensors and images
 * ------------------------------------------------------------------------ */

/* Write tensor `src` of golden file `io` as tensor `noise` of a new file. */
static void write_noise_from(const char *io, const char *src, const char *dst) {
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

/* ------------------------------------------------------------------------
 * goldens, end to end
 * ------------------------------------------------------------------------ */

typedef struct Case {
    const char *io;        /* under goldens/sd1-tiny/ */
    const char *png;       /* golden PNG under goldens/sd1-tiny/ */
    const char *sampler;   /* --sampler */
    const char *noise;     /* tensor fed as --init-noise */
    int fp16;              /* on the F16 checkpoint */
    int img2img;           /* --init-image img2img_input.png --strength <metadata> */
} Case;

static const Case k_cases[] = {
    {"txt2img_ddim.io.safetensors", "txt2img_ddim.png", "ddim", "x_T", 0, 0},
    {"txt2img_plms.io.safetensors", "txt2img_plms.png", "plms", "x_T", 0, 0},
    {"txt2img_euler.io.safetensors", "txt2img_euler.png", "euler", "x_T", 0, 0},
    {"txt2img_dpmpp2m.io.safetensors", "txt2img_dpmpp2m.png", "dpmpp_2m", "x_T", 0, 0},
    {"img2img_ddim.io.safetensors", "img2img_ddim.png", "ddim", "noise", 0, 1},
    {"fp16/txt2img_ddim.io.safetensors", "txt2img_ddim.png", "ddim", "x_T", 1, 0},
};
#define N_CASES ((int)(sizeof k_cases / sizeof k_cases[0]))

START_TEST(test_golden_case) {
    const Case *c = &k_cases[_i];
    char rel[256];
    snprintf(rel, sizeof rel, "goldens/sd1-tiny/%s", c->io);
    const char *io = test_shared(rel);
    char *prompt = meta(io, "prompt"), *uncond = meta(io, "uncond_prompt"), *steps = meta(io, "steps");
    /* img2img_ddim states the scale only in its `reference` */
    char *scale = meta_opt(io, "guidance_scale");
    if (!scale) {
        char *ref = meta(io, "reference");
        ck_assert_msg(strstr(ref, "unconditional_guidance_scale=7.5"), "%s: no guidance scale in the metadata", io);
        free(ref);
        scale = ldm_xstrdup("7.5");
    }
    const char *schedule = NULL;
    if (!strcmp(c->sampler, "euler") || !strcmp(c->sampler, "dpmpp_2m")) {
        char *ss = meta(io, "sigma_schedule");
        schedule = strstr(ss, "karras") ? "karras" : "discrete";
        free(ss);
    }
    const char *noise = test_tmp("noise-%d.safetensors", _i), *latent = test_tmp("latent-%d.safetensors", _i);
    const char *png = test_tmp("out-%d.png", _i);
    write_noise_from(io, c->noise, noise);
    const char *weights = model_path();
    if (c->fp16) {
        ck_assert_msg(g_fp16[0], "ldmc convert --dtype f16 failed:\n%s", g_fp16_log ? g_fp16_log : "(not run)");
        weights = g_fp16;
    }
    char *strength = c->img2img ? meta(io, "strength") : NULL;
    char *out;
    if (c->img2img)
        out = run_expect(1, weights, "--prompt", prompt, "--negative-prompt", uncond, "--steps", steps, "--cfg-scale",
                         scale, "--sampler", c->sampler, "--init-noise", noise, "--init-image",
                         test_shared("goldens/sd1-tiny/img2img_input.png"), "--strength", strength, "--save-latent", latent,
                         "-o", png, NULL);
    else if (schedule)
        out = run_expect(1, weights, "--prompt", prompt, "--negative-prompt", uncond, "--steps", steps, "--cfg-scale",
                         scale, "--sampler", c->sampler, "--schedule", schedule, "--init-noise", noise,
                         "--save-latent", latent, "-o", png, NULL);
    else
        out = run_expect(1, weights, "--prompt", prompt, "--negative-prompt", uncond, "--steps", steps, "--cfg-scale",
                         scale, "--sampler", c->sampler, "--init-noise", noise, "--save-latent", latent, "-o", png,
                         NULL);
    /* the summary is printed (stderr is not a terminal here: plain lines) */
    ck_assert_msg(strstr(out, "peak memory") && strstr(out, "step 1/"), "no progress/summary in:\n%s", out);
    free(out);

    int64_t n, ng;
    float *ours = read_f32(latent, "latent", &n), *gold = read_f32(io, "latent", &ng);
    ck_assert_int_eq(n, ng);
    double d = max_abs_diff(ours, gold, n), tol = tolerance(io, "latent");
    snprintf(rel, sizeof rel, "goldens/sd1-tiny/%s", c->png);
    int pd = png_max_diff(png, test_shared(rel));
    printf("txt2img: %-34s latent max|ours - golden| = %.3g (tolerance %.3g), PNG max diff %d\n", c->io, d, tol, pd);
    fflush(stdout);
    ck_assert_msg(d <= tol, "%s: latent max |ours - golden| = %.6g > %.6g", c->io, d, tol);
    ck_assert_msg(pd <= 1, "%s: PNG differs from the golden by %d levels (at most 1 allowed)", c->io, pd);
    free(ours);
    free(gold);
    free(prompt);
    free(uncond);
    free(steps);
    free(scale);
    free(strength);
}
END_TEST

/* The tokens the executable feeds its text encoder are the golden ones. */
START_TEST(test_golden_tokens) {
    ClipTokenizer *t = clip_tokenizer_load(test_shared("clip/bpe_simple_vocab_16e6.txt.gz"));
    ck_assert_msg(t, "%s", ldm_last_error());
    for (int i = 0; i < N_CASES; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "goldens/sd1-tiny/%s", k_cases[i].io);
        const char *io = test_shared(rel);
        const char *keys[2][2] = {{"prompt", "cond_tokens"}, {"uncond_prompt", "uncond_tokens"}};
        for (int k = 0; k < 2; k++) {
            char *p = meta(io, keys[k][0]);
            int32_t ids[CLIP_CONTEXT_LENGTH], want[CLIP_CONTEXT_LENGTH];
            ck_assert_msg(clip_tokenize(t, p, ids, NULL) == 0, "%s", ldm_last_error());
            StFile f;
            ck_assert_msg(st_open(&f, io) == 0, "%s", ldm_last_error());
            const StTensor *g = st_find(&f, keys[k][1]);
            ck_assert_msg(g && g->numel == CLIP_CONTEXT_LENGTH, "%s: no %s", io, keys[k][1]);
            ck_assert(st_to_i32(g, want) == 0);
            for (int j = 0; j < CLIP_CONTEXT_LENGTH; j++)
                ck_assert_msg(ids[j] == want[j], "%s: %s of '%s': id %d is %d, golden %d", io, keys[k][1], p, j,
                              ids[j], want[j]);
            st_close(&f);
            free(p);
        }
    }
    clip_tokenizer_free(t);
}
END_TEST

/* ------------------------------------------------------------------------
 * seeds
 * ------------------------------------------------------------------------ */

/* --seed 42 draws torch.manual_seed(42); torch.randn(1, 4, 16, 16) (CPU
 * and CUDA generators), and feeding that noise back gives the same run. */
START_TEST(test_seed_draws_torch_noise) {
    static const char *rngs[2] = {"cpu", "cuda"};
    static const char *files[2] = {"goldens/torch_randn/randn.io.safetensors",
                                   "goldens/torch_randn/randn_cuda.io.safetensors"};
    char *cases = meta(test_shared(files[_i]), "cases");
    ck_assert_msg(strstr(cases, "\"case0\", \"seed\": 42, \"shape\": [1, 4, 16, 16]"), "case0 is not seed 42 [1,4,16,16]: %s",
                  cases);
    free(cases);
    const char *lat = test_tmp("seed-%s.safetensors", rngs[_i]), *png = test_tmp("seed-%s.png", rngs[_i]);
    free(run_expect(1, model_path(), "--prompt", "a cat", "--steps", "2", "--seed", "42", "--rng", rngs[_i],
                    "--save-latent", lat, "-o", png, "--quiet", NULL));
    int64_t n, ng;
    float *ours = read_f32(lat, "noise", &n), *gold = read_f32(test_shared(files[_i]), "case0.noise", &ng);
    ck_assert_int_eq(n, ng);
    double d = max_abs_diff(ours, gold, n);
    ck_assert_msg(d <= 1e-6, "--rng %s --seed 42: x_T differs from torch's by %g", rngs[_i], d);
    free(ours);
    free(gold);

    /* the same x_T through --init-noise (another seed: nothing else is drawn by DDIM eta 0) */
    const char *noise = test_tmp("seed-noise-%s.safetensors", rngs[_i]), *lat2 = test_tmp("seed2-%s.safetensors", rngs[_i]);
    write_noise_from(test_shared(files[_i]), "case0.noise", noise);
    free(run_expect(1, model_path(), "--prompt", "a cat", "--steps", "2", "--seed", "7", "--init-noise", noise,
                    "--save-latent", lat2, "-o", test_tmp("seed2-%s.png", rngs[_i]), "--quiet", NULL));
    ck_assert_msg(same_latent(lat, lat2), "--init-noise with the seed's noise gave another latent");
}
END_TEST

/* ------------------------------------------------------------------------
 * properties of the paths without goldens
 * ------------------------------------------------------------------------ */

/* DDIM with --eta 0 is the plain DDIM of the golden. */
START_TEST(test_eta0_is_ddim) {
    const char *io = test_shared("goldens/sd1-tiny/txt2img_ddim.io.safetensors");
    char *prompt = meta(io, "prompt");
    const char *noise = test_tmp("eta0-noise.safetensors"), *lat = test_tmp("eta0.safetensors");
    write_noise_from(io, "x_T", noise);
    free(run_expect(1, model_path(), "--prompt", prompt, "--steps", "10", "--eta", "0", "--sampler", "ddim",
                    "--init-noise", noise, "--save-latent", lat, "-o", test_tmp("eta0.png"), "--quiet", NULL));
    int64_t n, ng;
    float *ours = read_f32(lat, "latent", &n), *gold = read_f32(io, "latent", &ng);
    ck_assert_int_eq(n, ng);
    double d = max_abs_diff(ours, gold, n), tol = tolerance(io, "latent");
    ck_assert_msg(d <= tol, "--eta 0: latent max |ours - golden DDIM| = %g > %g", d, tol);
    free(ours);
    free(gold);
    free(prompt);
}
END_TEST

/* --cfg-scale 1 runs the UNet on the cond sample alone (its batch is a
 * run-time extent): the prediction must be the cond half of the guided
 * batch, bit for bit. A guided run whose negative prompt is the prompt
 * itself computes e_u + 7.5 (e_c - e_u) with e_u = e_c, so exactly e_c of a
 * batch of two; the cfg-1 run is given another negative prompt, which it
 * must ignore (reading the uncond half of the context would change it). */
START_TEST(test_cfg1_cond_only) {
    const char *a = test_tmp("cfg1-a.safetensors"), *b = test_tmp("cfg1-b.safetensors");
    const char *c = test_tmp("cfg1-c.safetensors");
    free(run_expect(1, model_path(), "--prompt", "a red fox", "--negative-prompt", "a blue whale", "--steps", "4",
                    "--cfg-scale", "1", "--seed", "5", "--save-latent", a, "-o", test_tmp("cfg1-a.png"), "--quiet", NULL));
    free(run_expect(1, model_path(), "--prompt", "a red fox", "--negative-prompt", "a red fox", "--steps", "4",
                    "--cfg-scale", "7.5", "--seed", "5", "--save-latent", b, "-o", test_tmp("cfg1-b.png"), "--quiet",
                    NULL));
    ck_assert_msg(same_latent(a, b), "--cfg-scale 1 (cond only, batch 1) differs from the cond half of a batch of 2");
    /* and the guidance does matter: another negative prompt at 7.5 changes it */
    free(run_expect(1, model_path(), "--prompt", "a red fox", "--negative-prompt", "a blue whale", "--steps", "4",
                    "--cfg-scale", "7.5", "--seed", "5", "--save-latent", c, "-o", test_tmp("cfg1-c.png"), "--quiet",
                    NULL));
    ck_assert_msg(!same_latent(a, c), "the negative prompt made no difference at --cfg-scale 7.5");
}
END_TEST

/* A stochastic sampler (DDIM eta > 0, euler_a): the same seed gives the
 * same image, another seed another one, and the per-step noise matters
 * (same x_T, other seed: other latent). */
static void check_stochastic(const char *tag, const char *sampler, const char *eta) {
    const char *a = test_tmp("%s-a.safetensors", tag), *b = test_tmp("%s-b.safetensors", tag);
    const char *c = test_tmp("%s-c.safetensors", tag), *d = test_tmp("%s-d.safetensors", tag);
    const char *pa = test_tmp("%s-a.png", tag), *pb = test_tmp("%s-b.png", tag);
#define RUN(seed, extra1, extra2, lat, png)                                                                         \
    free(run_expect(1, model_path(), "--prompt", "a red fox", "--steps", "4", "--sampler", sampler, "--seed", seed, \
                    "--save-latent", lat, "-o", png, "--quiet", eta ? "--eta" : NULL, eta, extra1, extra2, NULL))
    RUN("11", NULL, NULL, a, pa);
    RUN("11", NULL, NULL, b, pb);
    ck_assert_msg(same_latent(a, b), "%s: seed 11 twice gave two latents", tag);
    ck_assert_msg(same_file(pa, pb), "%s: seed 11 twice gave two PNGs", tag);
    RUN("12", NULL, NULL, c, test_tmp("%s-c.png", tag));
    ck_assert_msg(!same_latent(a, c), "%s: seeds 11 and 12 gave the same latent", tag);
    /* x_T of seed 11 but the per-step noise of seed 12 */
    const char *noise = test_tmp("%s-noise.safetensors", tag);
    int64_t n;
    float *x = read_f32(a, "noise", &n);
    StWriter *w = st_writer_new();
    int64_t shape[4] = {1, 4, 16, 16};
    st_writer_add(w, "noise", ST_F32, 4, shape, x);
    ck_assert(st_writer_save(w, noise) == 0);
    st_writer_free(w);
    free(x);
    if (eta) {
        free(run_expect(1, model_path(), "--prompt", "a red fox", "--steps", "4", "--sampler", sampler, "--seed", "12",
                        "--eta", eta, "--init-noise", noise, "--save-latent", d, "-o", test_tmp("%s-d.png", tag), "--quiet",
                        NULL));
    } else {
        free(run_expect(1, model_path(), "--prompt", "a red fox", "--steps", "4", "--sampler", sampler, "--seed", "12",
                        "--init-noise", noise, "--save-latent", d, "-o", test_tmp("%s-d.png", tag), "--quiet", NULL));
    }
    ck_assert_msg(!same_latent(a, d), "%s: the per-step noise of the seed is not used", tag);
    /* --init-noise replaces x_T but the generator still moves past it: seed
     * 11 with its own x_T given as a file is the plain seed 11 run */
    const char *e = test_tmp("%s-e.safetensors", tag);
    if (eta) {
        free(run_expect(1, model_path(), "--prompt", "a red fox", "--steps", "4", "--sampler", sampler, "--seed", "11",
                        "--eta", eta, "--init-noise", noise, "--save-latent", e, "-o", test_tmp("%s-e.png", tag), "--quiet",
                        NULL));
    } else {
        free(run_expect(1, model_path(), "--prompt", "a red fox", "--steps", "4", "--sampler", sampler, "--seed", "11",
                        "--init-noise", noise, "--save-latent", e, "-o", test_tmp("%s-e.png", tag), "--quiet", NULL));
    }
    ck_assert_msg(same_latent(a, e), "%s: --init-noise changed the per-step noise of the seed", tag);
#undef RUN
}

START_TEST(test_eta_deterministic) { check_stochastic("eta", "ddim", "0.8"); }
END_TEST

START_TEST(test_euler_a_deterministic) { check_stochastic("eula", "euler_a", NULL); }
END_TEST

/* Inpainting by latent blending: the known (black) half of the mask ends
 * as exactly the init image's latent, which is the golden init_latent of
 * img2img_ddim (same image); the white half is repainted. */
START_TEST(test_inpaint_keeps_known_region) {
    const char *mask = test_tmp("mask.png");
    uint8_t *rgb = ldm_xcalloc(128 * 128 * 3, 1);
    for (int y = 0; y < 128; y++)
        for (int x = 64; x < 128; x++) memset(rgb + (y * 128 + x) * 3, 255, 3);
    ck_assert(ldm_png_write_rgb8(mask, rgb, 128, 128) == 0);
    free(rgb);
    static const char *samplers[2] = {"ddim", "euler_a"};
    const char *io = test_shared("goldens/sd1-tiny/img2img_ddim.io.safetensors");
    const char *lat = test_tmp("inpaint-%s.safetensors", samplers[_i]);
    free(run_expect(1, model_path(), "--prompt", "a fox", "--steps", "4", "--sampler", samplers[_i], "--seed", "3",
                    "--init-image", test_shared("goldens/sd1-tiny/img2img_input.png"), "--strength", "1", "--mask", mask,
                    "--save-latent", lat, "-o", test_tmp("inpaint-%s.png", samplers[_i]), "--quiet", NULL));
    int64_t n, ng;
    float *ours = read_f32(lat, "latent", &n), *x0 = read_f32(io, "init_latent", &ng);
    ck_assert_int_eq(n, 4 * 16 * 16);
    ck_assert_int_eq(n, ng);
    double tol = tolerance(io, "init_latent"), known = 0, painted = 0;
    for (int c = 0; c < 4; c++)
        for (int y = 0; y < 16; y++)
            for (int x = 0; x < 16; x++) {
                int i = (c * 16 + y) * 16 + x;
                double d = fabs((double)ours[i] - (double)x0[i]);
                if (x < 8) known = fmax(known, d);
                else painted = fmax(painted, d);
            }
    ck_assert_msg(known <= tol, "%s: known region moved by %g (> %g)", samplers[_i], known, tol);
    ck_assert_msg(painted > 100 * tol, "%s: the masked region was not repainted (max change %g)", samplers[_i], painted);
    free(ours);
    free(x0);
}
END_TEST

/* --prompts / --shard: lines, names, seeds; line 1 = the --prompt image. */
START_TEST(test_prompts_and_shards) {
    const char *file = test_tmp("prompts.txt");
    FILE *fp = fopen(file, "wb");
    ck_assert(fp);
    fputs("a cat\r\n\nan owl\n  \na dog at night\n", fp); /* lines 1..5, 2 and 4 blank, CRLF on line 1 */
    fclose(fp);
    const char *d0 = test_tmp("shard0"), *d1 = test_tmp("shard1"), *l0 = test_tmp("shard0-lat");
    char *out = run_expect(1, model_path(), "--prompts", file, "--shard", "0/2", "--steps", "2", "--seed", "100",
                           "--save-latent", l0, "-o", d0, NULL);
    free(out);
    /* shard 0/2: 0-based indices 0, 2, 4 = lines 1, 3, 5; seeds 100 + line - 1 */
    ck_assert_msg(test_exists(test_tmp("shard0/00001-100.png")), "no shard0/00001-100.png");
    ck_assert_msg(test_exists(test_tmp("shard0/00003-102.png")), "no shard0/00003-102.png");
    ck_assert_msg(test_exists(test_tmp("shard0/00005-104.png")), "no shard0/00005-104.png");
    ck_assert_msg(test_exists(test_tmp("shard0-lat/00003-102.safetensors")), "no latent for line 3");
    /* shard 1/2: indices 1, 3 = lines 2, 4, both blank: nothing, success */
    free(run_expect(1, model_path(), "--prompts", file, "--shard", "1/2", "--steps", "2", "--seed", "100", "-o", d1,
                    NULL));
    ck_assert_msg(!test_exists(test_tmp("shard1/00002-101.png")) && !test_exists(test_tmp("shard1/00004-103.png")),
                  "blank lines made images");
    /* line 1 with seed 100 is `--prompt "a cat" --seed 100`; line 3 is `--prompt "an owl" --seed 102` */
    free(run_expect(1, model_path(), "--prompt", "a cat", "--steps", "2", "--seed", "100", "-o", test_tmp("single1.png"),
                    "--quiet", NULL));
    free(run_expect(1, model_path(), "--prompt", "an owl", "--steps", "2", "--seed", "102", "--save-latent",
                    test_tmp("single3.safetensors"), "-o", test_tmp("single3.png"), "--quiet", NULL));
    ck_assert_msg(same_file(test_tmp("single1.png"), test_tmp("shard0/00001-100.png")), "line 1 differs from --prompt");
    ck_assert_msg(same_file(test_tmp("single3.png"), test_tmp("shard0/00003-102.png")), "line 3 differs from --prompt");
    ck_assert_msg(same_latent(test_tmp("single3.safetensors"), test_tmp("shard0-lat/00003-102.safetensors")),
                  "line 3 latent differs from --prompt");
    ck_assert_msg(!same_file(test_tmp("shard0/00001-100.png"), test_tmp("shard0/00005-104.png")), "lines 1 and 5 are the same image");
}
END_TEST

/* ------------------------------------------------------------------------
 * bad input
 * ------------------------------------------------------------------------ */

/* Write n bytes of text to a scratch file; returns its path. */
static const char *write_file(const char *name, const char *text, size_t n) {
    const char *p = test_tmp("%s", name);
    FILE *fp = fopen(p, "wb");
    ck_assert(fp);
    fwrite(text, 1, n, fp);
    fclose(fp);
    return p;
}

typedef struct Bad {
    const char *label;      /* what is wrong */
    const char *weights;    /* "model", "fp16", "ldm", "missing", "garbage" or NULL (not given) */
    const char *args[14];   /* extra arguments ("$IMG", "$SMALL", "$GARBAGE", "$NOISE8" are substituted) */
    const char *expect;     /* a substring of the message */
} Bad;

static const Bad k_bad[] = {
    {"no weights flag", NULL, {"--prompt", "x"}, "--weights"},
    {"missing weights", "missing", {"--prompt", "x"}, "no-such.safetensors"},
    {"garbage weights", "garbage", {"--prompt", "x"}, "garbage.safetensors"},
    {"another config's checkpoint", "ldm", {"--prompt", "x"}, "built for"},
    {"missing vocab", "model", {"--vocab", "$GARBAGE_DIR/none.txt.gz", "--prompt", "x"}, "none.txt.gz"},
    {"bad vocab", "model", {"--vocab", "$GARBAGE", "--prompt", "x"}, "garbage.safetensors"},
    {"bad init image", "model", {"--prompt", "x", "--init-image", "$GARBAGE"}, "garbage.safetensors"},
    {"init image of the wrong size", "model", {"--prompt", "x", "--init-image", "$SMALL"}, "expected 128x128"},
    {"mask of the wrong size", "model", {"--prompt", "x", "--init-image", "$IMG", "--mask", "$SMALL"}, "expected 128x128"},
    {"mask without init image", "model", {"--prompt", "x", "--mask", "$IMG"}, "--init-image"},
    {"strength 0", "model", {"--prompt", "x", "--init-image", "$IMG", "--strength", "0"}, "--strength"},
    {"strength 1.5", "model", {"--prompt", "x", "--init-image", "$IMG", "--strength", "1.5"}, "--strength"},
    {"strength text", "model", {"--prompt", "x", "--init-image", "$IMG", "--strength", "lots"}, "--strength"},
    {"strength without image", "model", {"--prompt", "x", "--strength", "0.5"}, "--init-image"},
    {"strength too small for the steps", "model", {"--prompt", "x", "--init-image", "$IMG", "--strength", "0.01"}, "strength"},
    {"shard N/N", "model", {"--prompts", "$GARBAGE", "--shard", "2/2"}, "--shard"},
    {"shard syntax", "model", {"--prompts", "$GARBAGE", "--shard", "1"}, "--shard"},
    {"shard negative", "model", {"--prompts", "$GARBAGE", "--shard", "-1/2"}, "--shard"},
    {"shard without prompts", "model", {"--prompt", "x", "--shard", "0/2"}, "--prompts"},
    {"prompt and prompts", "model", {"--prompt", "x", "--prompts", "$GARBAGE"}, "exclude"},
    {"no prompt", "model", {"--steps", "2"}, "--prompt"},
    {"missing prompts file", "model", {"--prompts", "$GARBAGE_DIR/none.txt"}, "none.txt"},
    {"unknown option", "model", {"--prompt", "x", "--colour", "red"}, "--colour"},
    {"stray argument", "model", {"--prompt", "x", "y"}, "'y'"},
    {"steps 0", "model", {"--prompt", "x", "--steps", "0"}, "--steps"},
    {"steps text", "model", {"--prompt", "x", "--steps", "ten"}, "--steps"},
    {"steps the schedule cannot make", "model", {"--prompt", "x", "--steps", "3"}, "3"},
    {"unknown sampler", "model", {"--prompt", "x", "--sampler", "k_lms"}, "k_lms"},
    {"unknown schedule", "model", {"--prompt", "x", "--sampler", "euler", "--schedule", "cosine"}, "cosine"},
    {"schedule for ddim", "model", {"--prompt", "x", "--schedule", "karras"}, "--schedule"},
    {"eta for plms", "model", {"--prompt", "x", "--sampler", "plms", "--eta", "0.5"}, "--eta"},
    {"negative eta", "model", {"--prompt", "x", "--eta", "-1"}, "--eta"},
    {"cfg scale nan", "model", {"--prompt", "x", "--cfg-scale", "nan"}, "--cfg-scale"},
    {"negative seed", "model", {"--prompt", "x", "--seed", "-2"}, "--seed"},
    {"seed too large", "model", {"--prompt", "x", "--seed", "18446744073709551616"}, "--seed"},
    {"unknown rng", "model", {"--prompt", "x", "--rng", "gpu"}, "--rng"},
    {"unknown compute mode", "model", {"--prompt", "x", "--compute", "f16"}, "expected f32 or bf16, got 'f16'"},
    {"flag without value", "model", {"--prompt", "x", "--steps"}, "--steps"},
    {"init noise without 'noise'", "model", {"--prompt", "x", "--init-noise", "$RANDN"}, "'noise'"},
    {"init noise of the wrong shape", "model", {"--prompt", "x", "--init-noise", "$NOISE8"}, "[1, 4, 8, 8]"},
    {"invalid UTF-8 prompt", "model", {"--prompt", "caf\xe9"}, "UTF-8"},
    {"output directory missing", "model", {"--prompt", "x", "--steps", "2", "-o", "$GARBAGE_DIR/no/dir/bad-out.png"}, "bad-out.png"},
};
#define N_BAD ((int)(sizeof k_bad / sizeof k_bad[0]))

START_TEST(test_bad_input) {
    const Bad *b = &k_bad[_i];
    /* inputs the cases refer to */
    const char *garbage = write_file("garbage.safetensors", "this is not a file of any of those kinds\n", 41);
    const char *small = test_tmp("small.png");
    uint8_t px[64 * 64 * 3] = {0};
    ck_assert(ldm_png_write_rgb8(small, px, 64, 64) == 0);
    const char *noise8 = test_tmp("noise8.safetensors");
    float z[4 * 8 * 8] = {0};
    int64_t shape[4] = {1, 4, 8, 8};
    StWriter *w = st_writer_new();
    st_writer_add(w, "noise", ST_F32, 4, shape, z);
    ck_assert(st_writer_save(w, noise8) == 0);
    st_writer_free(w);

    const char *weights = NULL;
    if (!b->weights) weights = NULL;
    else if (!strcmp(b->weights, "model")) weights = model_path();
    else if (!strcmp(b->weights, "ldm")) weights = test_shared("goldens/ldm-vq4-tiny/model.safetensors");
    else if (!strcmp(b->weights, "missing")) weights = test_tmp("no-such.safetensors");
    else if (!strcmp(b->weights, "garbage")) weights = garbage;

    char *argv[MAX_ARGS];
    char subst[14][600];
    int k = 0;
    argv[k++] = (char *)exe();
    if (weights) {
        argv[k++] = "--weights";
        argv[k++] = (char *)weights;
    }
    int has_vocab = 0;
    for (int i = 0; b->args[i]; i++)
        if (!strcmp(b->args[i], "--vocab")) has_vocab = 1;
    if (!has_vocab) {
        argv[k++] = "--vocab";
        argv[k++] = (char *)test_shared("clip/bpe_simple_vocab_16e6.txt.gz");
    }
    argv[k++] = "-o";
    argv[k++] = (char *)test_tmp("bad-out.png");
    argv[k++] = "--save-latent";
    argv[k++] = (char *)test_tmp("bad-latent.safetensors");
    for (int i = 0; b->args[i]; i++) {
        const char *a = b->args[i];
        if (!strcmp(a, "$GARBAGE")) a = garbage;
        else if (!strcmp(a, "$SMALL")) a = small;
        else if (!strcmp(a, "$NOISE8")) a = noise8;
        else if (!strcmp(a, "$IMG")) a = test_shared("goldens/sd1-tiny/img2img_input.png");
        else if (!strcmp(a, "$RANDN")) a = test_shared("goldens/torch_randn/randn.io.safetensors");
        else if (!strncmp(a, "$GARBAGE_DIR", 12)) {
            snprintf(subst[i], sizeof subst[i], "%s%s", test_dir, a + 12);
            a = subst[i];
        }
        argv[k++] = (char *)a;
    }
    argv[k] = NULL;
    char *out;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc != 0 && rc < 128, "%s: expected a clean failure, got status %d:\n%s", b->label, rc, out);
    ck_assert_msg(strstr(out, "error") && strstr(out, b->expect), "%s: the message does not mention '%s':\n%s",
                  b->label, b->expect, out);
    ck_assert_msg(!strstr(out, "AddressSanitizer") && !strstr(out, "runtime error"), "%s: sanitizer report:\n%s",
                  b->label, out);
    assert_no_output("bad-");
    free(out);
}
END_TEST

START_TEST(test_help) {
    char *argv[] = {(char *)exe(), "--help", NULL};
    char *out;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "--help failed (%d):\n%s", rc, out);
    ck_assert_msg(strstr(out, "--prompt") && strstr(out, "--shard K/N") && strstr(out, "128x128"), "help:\n%s", out);
    free(out);
}
END_TEST

/* Linked statically: no PT_INTERP program header (sanitized builds are
 * dynamic on purpose). */
START_TEST(test_static) {
    if (T2I_SAN) return;
    size_t n;
    char *elf = ldm_read_file(exe(), &n);
    ck_assert_msg(elf && n > sizeof(Elf64_Ehdr), "cannot read %s", exe());
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)(const void *)elf;
    ck_assert(memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64);
    int interp = 0;
    for (int i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *ph = (const Elf64_Phdr *)(const void *)(elf + eh->e_phoff + (size_t)i * eh->e_phentsize);
        if (ph->p_type == PT_INTERP) interp = 1;
    }
    ck_assert_msg(!interp, "%s has a program interpreter: not linked statically", exe());
    free(elf);
}
END_TEST

/* ------------------------------------------------------------------------
 * progress output and the timing summary (runtime/pipeline.c, in process)
 * ------------------------------------------------------------------------ */

static char *progress_text(LdmProgressMode mode, int steps) {
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    ck_assert(fp);
    LdmProgress p;
    ldm_progress_start(&p, fp, mode, "sampling", 4);
    for (int i = 0; i < steps; i++) ldm_progress_step(&p);
    ldm_progress_finish(&p);
    ck_assert_int_eq(p.done, steps);
    for (int i = 0; i < steps; i++) ck_assert(p.step_seconds[i] >= 0);
    ldm_progress_free(&p);
    fclose(fp);
    return buf;
}

START_TEST(test_progress_modes) {
    char *bar = progress_text(LDM_PROGRESS_BAR, 4);
    ck_assert_msg(strstr(bar, "\rsampling 0/4 |") && strstr(bar, "\rsampling 2/4 |############............| ") &&
                      strstr(bar, "\rsampling 4/4 |########################| ") && strstr(bar, " s/it, ETA ") &&
                      bar[strlen(bar) - 1] == '\n' && !strchr(bar, '\n')[1],
                  "bar output: '%s'", bar);
    free(bar);
    char *lines = progress_text(LDM_PROGRESS_LINES, 4);
    int n = 0;
    for (const char *c = lines; *c; c++) n += *c == '\n';
    ck_assert_msg(n == 4 && !strchr(lines, '\r') && strstr(lines, "sampling step 1/4, ") &&
                      strstr(lines, "sampling step 4/4, ") && strstr(lines, " s/it, ETA 0.0 s\n"),
                  "plain lines: '%s'", lines);
    free(lines);
    char *quiet = progress_text(LDM_PROGRESS_QUIET, 4);
    ck_assert_msg(quiet[0] == 0, "quiet output: '%s'", quiet);
    free(quiet);
    /* a file is not a terminal */
    FILE *f = tmpfile();
    ck_assert(f);
    ck_assert_int_eq(ldm_progress_mode(f, 0), LDM_PROGRESS_LINES);
    ck_assert_int_eq(ldm_progress_mode(f, 1), LDM_PROGRESS_QUIET);
    fclose(f);
}
END_TEST

START_TEST(test_times_summary) {
    LdmTimes t;
    memset(&t, 0, sizeof t);
    ldm_times_add(&t, "load weights", 1.5);
    ldm_times_add(&t, "text encode", 0.25);
    ldm_times_add(&t, "text encode", 0.25);
    double steps[3] = {2.0, 3.0, 4.0};
    ldm_times_add_steps(&t, steps, 3);
    ldm_times_add(&t, "decode", 0.5);
    t.images = 1;
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    ldm_times_print(&t, fp);
    fclose(fp);
    static const char *want[] = {"timing (1 image):\n", "  load weights       1.500 s\n",
                                 "  text encode        0.500 s  (2 x 0.250 s)\n", "  decode             0.500 s\n",
                                 "  sampling           9.000 s  (3 steps, 3.000 s/step, min 2.000, max 4.000)\n",
                                 "  each step      2.000 3.000 4.000 s\n", "  total             11.500 s\n",
                                 "peak memory (RSS): "};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(buf, want[i]), "summary lacks '%s':\n%s", want[i], buf);
    ck_assert_msg(strstr(buf, "load weights") < strstr(buf, "text encode") &&
                      strstr(buf, "text encode") < strstr(buf, "decode"), "stages out of order:\n%s", buf);
    free(buf);
    ldm_times_free(&t);
}
END_TEST

/* ------------------------------------------------------------------------
 * ldmc pipeline
 * ------------------------------------------------------------------------ */

static char *ldmc_pipeline(int *rc, const char *out, const char *d1, const char *d2, const char *d3) {
    char ldmc[300];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    char *argv[] = {ldmc, "pipeline", "--config", (char *)test_shared("goldens/sd1-tiny/config.yaml"), "-o", (char *)out,
                    "-D", (char *)d1, "-D", (char *)d2, d3 ? "-D" : NULL, (char *)d3, NULL};
    char *text;
    *rc = test_run(argv, &text);
    return text;
}

START_TEST(test_ldmc_pipeline) {
    int rc;
    const char *c = test_tmp("pipe.c");
    char *out = ldmc_pipeline(&rc, c, "H=128", "W=96", NULL);
    ck_assert_msg(rc == 0, "ldmc pipeline failed:\n%s", out);
    free(out);
    size_t n;
    char *text = ldm_read_file(c, &n);
    ck_assert(text);
    /* the values of goldens/sd1-tiny/config.yaml and its README section */
    static const char *want[] = {".H = 128,", ".W = 96,", ".f = 8,", ".latent_channels = 4,", ".latent_h = 16,",
                                 ".latent_w = 12,", ".unet_in_channels = 4,", ".linear_start = 0.00084999999999999995,",
                                 ".linear_end = 0.012,", ".timesteps = 1000,", ".scale_factor = 0.18215000000000001,",
                                 ".conditioning_key = \"crossattn\",", ".first_stage = \"kl\",", ".context_length = 77,",
                                 ".context_dim = 64,", ".vocab_size = 49408,", "const LdmPipelineConfig ldm_pipeline_config"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(text, want[i]), "ldmc pipeline output lacks '%s':\n%s", want[i], text);
    free(text);
    /* a config override and the defaults of LatentDiffusion */
    out = ldmc_pipeline(&rc, c, "H=128", "W=128", "model.params.scale_factor=null");
    ck_assert_msg(rc == 0, "ldmc pipeline failed:\n%s", out);
    free(out);
    text = ldm_read_file(c, &n);
    ck_assert_msg(strstr(text, ".scale_factor = 1,"), "scale_factor default is not 1.0:\n%s", text);
    free(text);
    /* errors */
    static const char *bad[][3] = {{"H=100", "W=128", "multiples of 8"},
                                   {"H=128", "W=0", "-D W"},
                                   {"H=128", "Q=1", "unknown parameter"},
                                   {"H=128", "model.params.parameterization=x0", "parameterization: 'x0' is not supported (expected \"eps\""},
                                   {"H=128", "model.params.conditioning_key=film", "conditioning_key"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *o = test_tmp("pipe-bad-%zu.c", i);
        out = ldmc_pipeline(&rc, o, bad[i][0], bad[i][1], i >= 3 ? "W=128" : NULL);
        ck_assert_msg(rc != 0 && strstr(out, bad[i][2]), "ldmc pipeline -D %s -D %s: status %d, message:\n%s",
                      bad[i][0], bad[i][1], rc, out);
        ck_assert_msg(!test_exists(o), "ldmc pipeline wrote %s despite the error", o);
        free(out);
    }
}
END_TEST

/* ------------------------------------------------------------------------
 * several sizes in one executable
 * ------------------------------------------------------------------------ */

#define MULTI_SIZES "128x128 128x192 64x128"

typedef struct Exe {
    char path[700];       /* "" until built */
    char *log;            /* why not */
} Exe;

static Exe g_multi, g_single[3]; /* [0] unused: the 128x128 one is exe() */
static const char *const k_sizes[3][2] = {{"128", "128"}, {"128", "192"}, {"64", "128"}};

/* make txt2img CONFIG=sd1-tiny <size args> TXT2IMG_NAME=name into e. */
static void make_t2i(Exe *e, const char *name, const char *a1, const char *a2) {
    if (e->path[0] || e->log) return;
    char build[300], config[512], nm[200], path[600], log[300];
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(config, sizeof config, "CONFIG=%s", test_shared("goldens/sd1-tiny/config.yaml"));
    snprintf(nm, sizeof nm, "TXT2IMG_NAME=%s", name);
    snprintf(path, sizeof path, "%s/%s", test_build_dir(), name);
    snprintf(log, sizeof log, "%s/make-%s.log", test_dir, name);
    char *argv[] = {"make", "-s", "-j2", build, T2I_SAN ? "SAN=1" : "SAN=0", "txt2img", config, nm,
                    (char *)a1, (char *)a2, NULL};
    int rc = test_wait_status(test_spawn(argv, log));
    if (rc == 0 && access(path, X_OK) == 0) {
        snprintf(e->path, sizeof e->path, "%s", path);
    } else {
        size_t n;
        e->log = ldm_read_file(log, &n);
        if (!e->log) e->log = ldm_xasprintf("make exited with status %d", rc);
    }
}

static void setup_multi(void) {
    setup_exe();
    if (!test_dir[0]) return;
    make_t2i(&g_multi, "txt2img-test-sd1-tiny-multi", "SIZES=" MULTI_SIZES, NULL);
    make_t2i(&g_single[1], "txt2img-test-sd1-tiny-128x192", "H=128", "W=192");
    make_t2i(&g_single[2], "txt2img-test-sd1-tiny-64x128", "H=64", "W=128");
}

static const char *built(const Exe *e, const char *what) {
    ck_assert_msg(e->path[0], "make txt2img (%s) failed:\n%s", what, e->log ? e->log : "(not run)");
    return e->path;
}
static const char *multi_exe(void) { return built(&g_multi, "SIZES=" MULTI_SIZES); }
static const char *single_exe(int k) { return k == 0 ? exe() : built(&g_single[k], "one size"); }

/* Run program with the weights, the vocabulary and the NULL-terminated
 * arguments; the status, output in *out (malloc'd). */
static int run_prog(const char *prog, char **out, ...) {
    char *argv[MAX_ARGS];
    int k = 0;
    argv[k++] = (char *)prog;
    argv[k++] = "--weights";
    argv[k++] = (char *)model_path();
    argv[k++] = "--vocab";
    argv[k++] = (char *)test_shared("clip/bpe_simple_vocab_16e6.txt.gz");
    va_list ap;
    va_start(ap, out);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        ck_assert_msg(k < MAX_ARGS - 1, "too many arguments");
        argv[k++] = (char *)a;
    }
    va_end(ap);
    argv[k] = NULL;
    return test_run(argv, out);
}

static void png_size(const char *path, int *w, int *h) {
    uint8_t *rgb = NULL;
    ck_assert_msg(ldm_png_read_rgb8(path, &rgb, w, h) == 0, "%s: %s", path, ldm_last_error());
    free(rgb);
}

/* Each size of the three-size executable, chosen with -H/-W, --height /
 * --width, only one of them, or not at all (the default), makes the image
 * and latent of the single-size executable, bit for bit. */
START_TEST(test_multi_matches_single) {
    const char *H = k_sizes[_i][0], *W = k_sizes[_i][1];
    const char *pm = test_tmp("multi-%d.png", _i), *ps = test_tmp("single-%d.png", _i);
    const char *lm = test_tmp("multi-%d.safetensors", _i), *ls = test_tmp("single-%d.safetensors", _i);
    char *out;
    int rc;
    if (_i == 0) /* the default size */
        rc = run_prog(multi_exe(), &out, "--prompt", "a red fox", "--steps", "4", "--seed", "21", "--sampler", "euler_a",
                      "--save-latent", lm, "-o", pm, NULL);
    else if (_i == 1) /* --width alone: the default's height */
        rc = run_prog(multi_exe(), &out, "--prompt", "a red fox", "--steps", "4", "--seed", "21", "--sampler", "euler_a",
                      "--width", W, "--save-latent", lm, "-o", pm, NULL);
    else
        rc = run_prog(multi_exe(), &out, "--prompt", "a red fox", "--steps", "4", "--seed", "21", "--sampler", "euler_a",
                      "-H", H, "-W", W, "--save-latent", lm, "-o", pm, NULL);
    ck_assert_msg(rc == 0, "multi-size txt2img at %sx%s failed (%d):\n%s", H, W, rc, out);
    /* the weights of the four networks bound once for all three sizes, but
     * the UNet's at 64x128 (some of its convolutions use other kernels) */
    ck_assert_msg(strstr(out, "3 sizes: 12 networks on 5 weight sets") &&
                      strstr(out, "note: unet (H=64 W=128 B=2 CHUNKS=3) binds its weights separately from unet (H=128 W=128"),
                  "no sharing summary:\n%s", out);
    free(out);
    /* the single-size executable also takes -H/-W equal to its size */
    rc = run_prog(single_exe(_i), &out, "--prompt", "a red fox", "--steps", "4", "--seed", "21", "--sampler", "euler_a",
                  "--height", H, "-W", W, "--save-latent", ls, "-o", ps, "--quiet", NULL);
    ck_assert_msg(rc == 0, "single-size txt2img %sx%s failed (%d):\n%s", H, W, rc, out);
    ck_assert_msg(!strstr(out, "weight sets"), "a single-size run printed the sharing summary:\n%s", out);
    free(out);
    int w, h;
    png_size(pm, &w, &h);
    ck_assert_msg(w == atoi(W) && h == atoi(H), "%s is %dx%d (w x h), expected %sx%s", pm, w, h, W, H);
    ck_assert_msg(same_latent(lm, ls), "%sx%s: the multi-size latent differs from the single-size one", H, W);
    ck_assert_msg(same_file(pm, ps), "%sx%s: the multi-size PNG differs from the single-size one", H, W);
}
END_TEST

/* One process, one weight load, three sizes: a --prompts file whose lines
 * choose their size (and seed, negative prompt, steps) as the webui's
 * "prompts from file" lines do, each image the single-size executable's;
 * a line asking for a size not compiled fails alone. */
START_TEST(test_multi_prompts_file) {
    const char *file = test_tmp("sizes.txt");
    FILE *fp = fopen(file, "wb");
    ck_assert(fp);
    fputs("a cat\n"
          "--prompt a red   fox --height 128 --width 192 --seed 5 --steps 4\n"
          "--prompt 'an \"owl\"' --height 64 --negative_prompt blurry, dark --cfg_scale 5\n"
          "--prompt a dog --height 96\n"
          "  --width 128 --prompt a cat again\n",
          fp);
    fclose(fp);
    const char *dir = test_tmp("sizes-out");
    char *out;
    int rc = run_prog(multi_exe(), &out, "--prompts", file, "--steps", "2", "--seed", "10", "-o", dir, NULL);
    ck_assert_msg(rc == 1, "expected status 1 (line 4 fails), got %d:\n%s", rc, out);
    ck_assert_msg(strstr(out, "sizes.txt:4: 128x96 (width x height) was not compiled") &&
                      strstr(out, "SIZES=\"128x128 128x192 64x128 96x128\"") && strstr(out, "1 of 5 prompts failed"),
                  "line 4's error:\n%s", out);
    /* weights loaded once: one "load weights" stage in the summary */
    const char *lw = strstr(out, "  load weights");
    ck_assert_msg(lw && !strstr(lw + 1, "  load weights") && strstr(out, "timing (4 images)"), "summary:\n%s", out);
    char *eol = strchr(lw, '\n');
    ck_assert_msg(eol && !memchr(lw, '(', (size_t)(eol - lw)), "weights loaded more than once:\n%s", out);
    ck_assert_msg(strstr(out, "line 2, 192x128") && strstr(out, "line 3, 128x64"), "labels:\n%s", out);
    free(out);
    ck_assert_msg(!test_exists(test_tmp("sizes-out/00004-13.png")), "the failed line wrote an image");
    /* the same images from the single-size executables */
    struct {
        const char *png;
        int k;
        const char *args[12];
    } want[] = {
        {"00001-10.png", 0, {"--prompt", "a cat", "--steps", "2", "--seed", "10", NULL}},
        {"00002-5.png", 1, {"--prompt", "a red fox", "--steps", "4", "--seed", "5", NULL}},
        {"00003-12.png", 2, {"--prompt", "an \"owl\"", "--negative-prompt", "blurry, dark", "--cfg-scale", "5", "--steps",
                             "2", "--seed", "12", NULL}},
        {"00005-14.png", 0, {"--prompt", "a cat again", "--steps", "2", "--seed", "14", NULL}},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *ref = test_tmp("sizes-ref-%zu.png", i);
        char *argv[MAX_ARGS];
        int k = 0;
        argv[k++] = (char *)single_exe(want[i].k);
        argv[k++] = "--weights";
        argv[k++] = (char *)model_path();
        argv[k++] = "--vocab";
        argv[k++] = (char *)test_shared("clip/bpe_simple_vocab_16e6.txt.gz");
        for (const char *const *a = want[i].args; *a; a++) argv[k++] = (char *)*a;
        argv[k++] = "-o";
        argv[k++] = (char *)ref;
        argv[k++] = "--quiet";
        argv[k] = NULL;
        rc = test_run(argv, &out);
        ck_assert_msg(rc == 0, "single-size run for %s failed (%d):\n%s", want[i].png, rc, out);
        free(out);
        char rel[64];
        snprintf(rel, sizeof rel, "sizes-out/%s", want[i].png);
        ck_assert_msg(test_exists(test_tmp("%s", rel)), "no %s", rel);
        ck_assert_msg(same_file(test_tmp("%s", rel), ref), "%s differs from the single-size executable's image",
                      want[i].png);
    }
}
END_TEST

/* A size that was not compiled: refused before anything is loaded, with the
 * compiled sizes and the make command that adds it; status 2, no output. */
START_TEST(test_size_refused) {
    char *out;
    const char *png = test_tmp("bad-size.png");
    int rc = run_prog(multi_exe(), &out, "--prompt", "x", "-H", "256", "-o", png, NULL);
    char want[1024];
    snprintf(want, sizeof want, "make txt2img CONFIG=%s SIZES=\"128x128 128x192 64x128 256x128\"",
             test_shared("goldens/sd1-tiny/config.yaml"));
    ck_assert_msg(rc == 2, "status %d:\n%s", rc, out);
    ck_assert_msg(strstr(out, "error: 128x256 (width x height) was not compiled into this executable") &&
                      strstr(out, "128x128 (default), 192x128, 128x64") && strstr(out, want),
                  "message:\n%s", out);
    free(out);
    /* the single-size executable the same way */
    rc = run_prog(exe(), &out, "--prompt", "x", "--width", "64", "-o", png, NULL);
    snprintf(want, sizeof want, "make txt2img CONFIG=%s SIZES=\"128x128 128x64\"",
             test_shared("goldens/sd1-tiny/config.yaml"));
    ck_assert_msg(rc == 2 && strstr(out, "64x128 (width x height) was not compiled") && strstr(out, "only 128x128") &&
                      strstr(out, want),
                  "status %d, message:\n%s", rc, out);
    free(out);
    assert_no_output("bad-");
}
END_TEST

static const char *const k_bad_size[][3] = {
    {"-H", "x", "-H: expected an integer"},
    {"--height", "0", "--height: expected an integer from 1"},
    {"--width=abc", NULL, "--width: expected an integer"},
    {"-W", "99999999", "-W: expected an integer from 1 to 65536"},
    {"-H", "-5", "-H: expected an integer"},
    {"-W", NULL, "-W: expected a value"},
};

START_TEST(test_size_flag_errors) {
    const char *const *b = k_bad_size[_i];
    char *out;
    int rc = run_prog(multi_exe(), &out, "--prompt", "x", "-o", test_tmp("bad-flag.png"), b[0], b[1], NULL);
    ck_assert_msg(rc == 2 && strstr(out, b[2]), "%s %s: status %d, message:\n%s", b[0], b[1] ? b[1] : "", rc, out);
    free(out);
    assert_no_output("bad-");
}
END_TEST

START_TEST(test_multi_help) {
    char *argv[] = {(char *)multi_exe(), "--help", NULL};
    char *out;
    ck_assert(test_run(argv, &out) == 0);
    ck_assert_msg(strstr(out, "Sizes (width x height): 128x128 (default), 192x128, 128x64.") && strstr(out, "--height"),
                  "help:\n%s", out);
    free(out);
}
END_TEST

/* make's own checks of SIZES. */
START_TEST(test_make_sizes_errors) {
    char build[300], config[512], log[300];
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(config, sizeof config, "CONFIG=%s", test_shared("goldens/sd1-tiny/config.yaml"));
    snprintf(log, sizeof log, "%s/make-bad.log", test_dir);
    struct {
        const char *a1, *a2, *expect;
    } bad[] = {
        {"SIZES=128x128", "H=128", "not both"},
        {"SIZES=128x128 128", NULL, "--size: expected HEIGHTxWIDTH"},
        {"SIZES=128x128 128x100", NULL, "multiples of 8"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[] = {"make", "-s", build, T2I_SAN ? "SAN=1" : "SAN=0", "txt2img", config,
                        "TXT2IMG_NAME=txt2img-test-bad-sizes", (char *)bad[i].a1, (char *)bad[i].a2, NULL};
        int rc = test_wait_status(test_spawn(argv, log));
        size_t n;
        char *text = ldm_read_file(log, &n);
        ck_assert_msg(rc != 0 && text && strstr(text, bad[i].expect), "make %s %s: status %d:\n%s", bad[i].a1,
                      bad[i].a2 ? bad[i].a2 : "", rc, text ? text : "");
        free(text);
    }
    char path[600];
    snprintf(path, sizeof path, "%s/txt2img-test-bad-sizes", test_build_dir());
    ck_assert_msg(!test_exists(path), "%s was built", path);
}
END_TEST

/* ---- in process: weight tables, shared weight sets ---------------------- */

static const LdmW *g_seen_w;
static int fake_forward(const LdmW *w, const void *const *in, void *const *out, unsigned char *arena,
                        const int64_t *ext) {
    (void)in, (void)out, (void)arena, (void)ext;
    g_seen_w = w;
    return 0;
}

/* The guided UNet call at --cfg-scale 1 runs the UNet at batch 1 on the
 * cond half of the context (its batch is a run-time extent); at any other
 * scale on both halves. A fake UNet records the batch it was run at and
 * answers each sample with the first value of that sample's context. */
static int64_t g_unet_batch;
static int fake_unet(const LdmW *w, const void *const *in, void *const *out, unsigned char *arena, const int64_t *ext) {
    (void)w, (void)arena;
    g_unet_batch = ext[0];
    const float *ctx = in[2];
    float *eps = out[0];
    for (int64_t b = 0; b < ext[0]; b++)
        for (int j = 0; j < 4; j++) eps[b * 4 + j] = ctx[b * 6];
    return 0;
}

START_TEST(test_guide_cfg1_batch) {
    const char *ckpt = test_tmp("guide.safetensors");
    float one = 1;
    int64_t s1[1] = {1};
    StWriter *wr = st_writer_new();
    st_writer_add(wr, "unused", ST_F32, 1, s1, &one);
    ck_assert(st_writer_save(wr, ckpt) == 0);
    st_writer_free(wr);
    static const LdmTensorInfo ins[3] = {
        {.name = "x", .dtype = LDM_F32, .ndim = 4, .shape = {2, 1, 2, 2}, .dyn = {1}},
        {.name = "timesteps", .dtype = LDM_F32, .ndim = 1, .shape = {2}, .dyn = {1}},
        {.name = "context", .dtype = LDM_F32, .ndim = 3, .shape = {2, 3, 2}, .dyn = {1}},
    };
    static const LdmTensorInfo outs[1] = {{.name = "eps", .dtype = LDM_F32, .ndim = 4, .shape = {2, 1, 2, 2}, .dyn = {1}}};
    static const LdmExtent ext[1] = {{.name = "B", .max = 2, .step = 1}};
    LdmModel unet = {.name = "unet", .banner = "fake", .n_inputs = 3, .inputs = ins, .n_outputs = 1, .outputs = outs,
                     .arena_bytes = 64, .forward = fake_unet, .n_extents = 1, .extents = ext};
    const LdmModel *models[1] = {&unet};
    LdmNets nets;
    ck_assert_msg(ldm_nets_load(&nets, ckpt, models, 1, "test") == 0, "%s", ldm_last_error());
    /* context [uncond, cond]: 3 tokens x 2 channels each */
    float context[12] = {-1, -1, -1, -1, -1, -1, 7, 7, 7, 7, 7, 7}, x[4] = {0}, eps[4];
    for (int k = 0; k < 2; k++) {
        LdmGuide g = {.nets = &nets, .unet = 0, .batch = 1, .sample_n = 4, .guided = 1, .scale = k ? 7.5 : 1.0,
                      .context = context};
        ck_assert_msg(ldm_guide_init(&g) == 0, "%s", ldm_last_error());
        ck_assert_int_eq(ldm_guide_eps(&g, x, 500.0f, eps), 0);
        if (k == 0) {
            ck_assert_msg(g_unet_batch == 1, "--cfg-scale 1 ran the UNet at batch %lld", (long long)g_unet_batch);
            ck_assert_msg(eps[0] == 7.0f, "--cfg-scale 1 did not use the cond half of the context (eps %g)", eps[0]);
        } else {
            ck_assert_msg(g_unet_batch == 2, "a guided step ran the UNet at batch %lld", (long long)g_unet_batch);
            ck_assert_msg(eps[0] == -1.0f + 7.5f * (7.0f + 1.0f), "guided eps %g", eps[0]); /* e_u + s (e_c - e_u) */
        }
        ldm_guide_free(&g);
    }
    ldm_nets_free(&nets);
}
END_TEST

START_TEST(test_weights_sharing) {
    /* a checkpoint with two tensors */
    const char *ckpt = test_tmp("share.safetensors");
    float a[16], b[4];
    for (int i = 0; i < 16; i++) a[i] = (float)i;
    for (int i = 0; i < 4; i++) b[i] = (float)-i;
    int64_t sa[2] = {4, 4}, sb[1] = {4};
    StWriter *wr = st_writer_new();
    st_writer_add(wr, "x.weight", ST_F32, 2, sa, a);
    st_writer_add(wr, "x.bias", ST_F32, 1, sb, b);
    ck_assert(st_writer_save(wr, ckpt) == 0);
    st_writer_free(wr);
#define TI(nm, fl, nd, ...) {.name = nm, .dtype = LDM_F32, .flags = fl, .ndim = nd, .shape = {__VA_ARGS__}}
    static const LdmTensorInfo t1[2] = {TI("x.weight", 0, 2, 4, 4), TI("x.bias", 0, 1, 4)};
    static const LdmTensorInfo t2[2] = {TI("x.weight", LDM_TF_BPANELS, 2, 4, 4), TI("x.bias", 0, 1, 4)};
    static const LdmTensorInfo t3[2] = {TI("x.weight", 0, 2, 2, 8), TI("x.bias", 0, 1, 4)};
#undef TI
    LdmModel m1 = {.name = "net", .banner = "ldmc | graph net | H=64 W=64", .n_weights = 2, .weights = t1,
                   .arena_bytes = 64, .forward = fake_forward};
    LdmModel m2 = m1, m3 = m1, m4 = m1;
    m2.banner = "ldmc | graph net | H=64 W=96";                        /* same table: shares */
    m3.banner = "ldmc | graph net | H=32 W=32", m3.weights = t2;       /* another layout: its own */
    m4.name = "other", m4.weights = t3;                                /* another shape */
    char why[256];
    ck_assert(ldm_model_weights_compatible(&m1, &m2, why, sizeof why));
    ck_assert(!ldm_model_weights_compatible(&m1, &m3, why, sizeof why));
    ck_assert_msg(strstr(why, "'x.weight'") && strstr(why, "flags 0 against 2"), "why: %s", why);
    ck_assert(!ldm_model_weights_compatible(&m1, &m4, why, sizeof why));
    ck_assert_msg(strstr(why, "shape [4, 4] against [2, 8]"), "why: %s", why);
    LdmModel m5 = m1;
    m5.n_weights = 1;
    ck_assert(!ldm_model_weights_compatible(&m1, &m5, NULL, 0));

    const LdmModel *models[3] = {&m1, &m2, &m3};
    LdmNets s;
    ck_assert_msg(ldm_nets_load(&s, ckpt, models, 3, "test") == 0, "%s", ldm_last_error());
    ck_assert_int_eq(s.n_weight_sets, 2);
    ck_assert_int_eq(s.owner[0], 0);
    ck_assert_int_eq(s.owner[1], 0);
    ck_assert_int_eq(s.owner[2], 2);
    ck_assert_msg(strstr(s.notes, "net (H=32 W=32) binds its weights separately from net (H=64 W=64): weight "
                                  "'x.weight' is bound with flags 2 against 0"),
                  "notes: %s", s.notes);
    ck_assert_int_eq(ldm_nets_run(&s, 0, NULL, NULL), 0);
    const LdmW *w0 = g_seen_w;
    const unsigned char *region = s.w[0].region;
    ck_assert(region && ((const float *)w0[0].p)[5] == 5.0f);
    /* model 1 runs on the same bound weights: not released, not bound again */
    ck_assert_int_eq(ldm_nets_run(&s, 1, NULL, NULL), 0);
    ck_assert(g_seen_w == w0 && s.w[0].region == region && s.w[1].region == NULL);
    /* model 2 has its own; the shared set is released while it runs */
    ck_assert_int_eq(ldm_nets_run(&s, 2, NULL, NULL), 0);
    ck_assert(g_seen_w == s.w[2].ptr && s.w[2].region && s.w[0].region == NULL);
    ck_assert_int_eq(ldm_nets_run(&s, 1, NULL, NULL), 0);
    ck_assert(g_seen_w == s.w[0].ptr && s.w[0].region && s.w[2].region == NULL);
    ldm_nets_free(&s);
    /* with another key map per model nothing is shared */
    LdmKeyMapFn maps[3] = {NULL, ldm_ema_key, NULL};
    ck_assert(ldm_nets_load_mapped(&s, ckpt, models, maps, 2, "test") == 0);
    ck_assert_int_eq(s.n_weight_sets, 2);
    ldm_nets_free(&s);
}
END_TEST

START_TEST(test_split_args) {
    struct {
        const char *line;
        int n;
        const char *words[5];
    } ok[] = {
        {"  --prompt a   b ", 3, {"--prompt", "a", "b"}},
        {"--prompt 'it''s' \"a \\\"q\\\" \\\\ \\n\"", 3, {"--prompt", "its", "a \"q\" \\ \\n"}},
        {"a\\ b 'c d'e", 2, {"a b", "c de"}},
        {"", 0, {NULL}},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int argc;
        char **argv;
        ck_assert_msg(ldm_split_args(ok[i].line, &argc, &argv) == 0, "%s: %s", ok[i].line, ldm_last_error());
        ck_assert_msg(argc == ok[i].n, "'%s': %d words", ok[i].line, argc);
        for (int k = 0; k < argc; k++)
            ck_assert_msg(!strcmp(argv[k], ok[i].words[k]), "'%s': word %d is '%s', expected '%s'", ok[i].line, k,
                          argv[k], ok[i].words[k]);
        ldm_args_free(argc, argv);
    }
    int argc;
    char **argv;
    ck_assert(ldm_split_args("--prompt \"open", &argc, &argv) != 0);
    ck_assert_msg(strstr(ldm_last_error(), "unterminated double quote at column 10"), "%s", ldm_last_error());
    ck_assert(ldm_split_args("'x", &argc, &argv) != 0);
}
END_TEST

/* ldmc pipeline --size / --nets, and ldmc --symbol. */
START_TEST(test_ldmc_sizes_and_symbol) {
    char ldmc[300];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    const char *cfg = test_shared("goldens/sd1-tiny/config.yaml"), *c = test_tmp("sizes.c");
    char *argv[] = {ldmc, "pipeline", "--config", (char *)cfg, "--size", "128x128", "--size", "64x96", "--nets",
                    "clip_text,unet", "-D", "model.params.scale_factor=0.5", "-o", (char *)c, NULL};
    char *out;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "ldmc pipeline --size failed:\n%s", out);
    free(out);
    size_t n;
    char *text = ldm_read_file(c, &n);
    static const char *want[] = {"const LdmPipelineConfig ldm_pipeline_config_128x128 = {",
                                 "const LdmPipelineConfig ldm_pipeline_config_64x96 = {", ".latent_h = 8,",
                                 ".latent_w = 12,", ".scale_factor = 0.5,",
                                 ".overrides = \"model.params.scale_factor=0.5\",",
                                 "extern const LdmModel clip_text_64x96_model, unet_64x96_model;",
                                 "const LdmPipelineSize ldm_pipeline_sizes[2] = {",
                                 "    {&ldm_pipeline_config_128x128, 2, models_128x128},\n"
                                 "    {&ldm_pipeline_config_64x96, 2, models_64x96},",
                                 "const int ldm_pipeline_n_sizes = 2;"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(text, want[i]), "lacks '%s':\n%s", want[i], text);
    free(text);
    /* errors */
    static const char *bad[][5] = {
        {"--size", "128x128", "--size", "128x128", "given twice"},
        {"--size", "128", "--size", "64x64", "expected HEIGHTxWIDTH"},
        {"--size", "128x128", "-D", "H=128", "not both"},
        {"--size", "128x128", "--nets", "unet,9x", "'9x' is not a network name"},
        {"--size", "128x128", "--size", "128x100", "multiples of 8"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *o = test_tmp("sizes-bad-%zu.c", i);
        char *av[] = {ldmc, "pipeline", "--config", (char *)cfg, (char *)bad[i][0], (char *)bad[i][1],
                      (char *)bad[i][2], (char *)bad[i][3], "-o", (char *)o, NULL};
        rc = test_run(av, &out);
        ck_assert_msg(rc != 0 && strstr(out, bad[i][4]), "case %zu: status %d:\n%s", i, rc, out);
        ck_assert(!test_exists(o));
        free(out);
    }
    /* --symbol names the exported symbols */
    const char *g = test_tmp("clip.c");
    char *av[] = {ldmc, "models/sd1/clip_text.graph", "--config", (char *)cfg, "-D", "B=1", "--symbol",
                  "clip_text_64x96", "-o", (char *)g, NULL};
    rc = test_run(av, &out);
    ck_assert_msg(rc == 0, "ldmc --symbol failed:\n%s", out);
    free(out);
    text = ldm_read_file(g, &n);
    ck_assert_msg(strstr(text, "\nint clip_text_64x96_forward(const LdmW *w,") &&
                      strstr(text, "\nconst LdmModel clip_text_64x96_model = {\n    .name = \"clip_text\",") &&
                      !strstr(text, "clip_text_forward") && !strstr(text, "clip_text_model"),
                  "symbols in:\n%.2000s", text);
    free(text);
    char *av2[] = {ldmc, "models/sd1/clip_text.graph", "--config", (char *)cfg, "--symbol", "x-y", "-o",
                   (char *)test_tmp("bad-sym.c"), NULL};
    rc = test_run(av2, &out);
    ck_assert_msg(rc == 2 && strstr(out, "--symbol: 'x-y' is not a C identifier"), "status %d:\n%s", rc, out);
    free(out);
    assert_no_output("bad-");
}
END_TEST

static void scratch_setup(void) { test_dir_init("ldm_txt2img_"); }

Suite *suite_txt2img(void) {
    Suite *s = suite_create("txt2img");
    int t = T2I_SAN ? 900 : 300;

    TCase *tc = tcase_create("golden");
    tcase_add_unchecked_fixture(tc, setup_fp16, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_loop_test(tc, test_golden_case, 0, N_CASES);
    tcase_add_test(tc, test_golden_tokens);
    suite_add_tcase(s, tc);

    tc = tcase_create("seeds");
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_loop_test(tc, test_seed_draws_torch_noise, 0, 2);
    suite_add_tcase(s, tc);

    tc = tcase_create("properties");
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_test(tc, test_eta0_is_ddim);
    tcase_add_test(tc, test_cfg1_cond_only);
    tcase_add_test(tc, test_eta_deterministic);
    tcase_add_test(tc, test_euler_a_deterministic);
    tcase_add_loop_test(tc, test_inpaint_keeps_known_region, 0, 2);
    tcase_add_test(tc, test_prompts_and_shards);
    suite_add_tcase(s, tc);

    tc = tcase_create("bad_input");
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_loop_test(tc, test_bad_input, 0, N_BAD);
    tcase_add_test(tc, test_help);
    tcase_add_test(tc, test_static);
    suite_add_tcase(s, tc);

    tc = tcase_create("progress");
    tcase_add_test(tc, test_progress_modes);
    tcase_add_test(tc, test_times_summary);
    suite_add_tcase(s, tc);

    tc = tcase_create("ldmc_pipeline");
    tcase_add_unchecked_fixture(tc, scratch_setup, teardown_nothing);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ldmc_pipeline);
    tcase_add_test(tc, test_ldmc_sizes_and_symbol);
    tcase_add_test(tc, test_weights_sharing);
    tcase_add_test(tc, test_guide_cfg1_batch);
    tcase_add_test(tc, test_split_args);
    suite_add_tcase(s, tc);

    tc = tcase_create("sizes");
    tcase_add_unchecked_fixture(tc, setup_multi, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_loop_test(tc, test_multi_matches_single, 0, 3);
    tcase_add_test(tc, test_multi_prompts_file);
    tcase_add_test(tc, test_size_refused);
    tcase_add_loop_test(tc, test_size_flag_errors, 0, (int)(sizeof k_bad_size / sizeof k_bad_size[0]));
    tcase_add_test(tc, test_multi_help);
    tcase_add_test(tc, test_make_sizes_errors);
    suite_add_tcase(s, tc);
    return s;
}
