/*
 * test_sample.c - the per-resolution LDM sampling executable, end to end.
 *
 * The fixture builds two executables exactly as a user does (`make sample
 * CONFIG=... H=.. W=..`, into the build directory under test, named
 * sample-test-* so they never replace a user's build):
 *
 *   - ../shared/goldens/ldm-vq4-tiny at 64x64 (unconditional, VQ-f4);
 *   - tests/sample/ldm-cin-tiny.yaml at 32x48 (class-conditional: ClassEmbedder
 *     with 4 classes + the unconditional class 4, spatial-transformer UNet,
 *     non-square latent), with a random checkpoint from `ldmc randckpt`;
 *   - tests/sample/ldm-kl-tiny.yaml at 32x40 (unconditional, AutoencoderKL,
 *     scale_by_std), with a random checkpoint plus a `scale_factor` tensor,
 *     and the graph runner of its decoder.
 *
 * Then, running them as programs:
 *
 *   - golden: sample_ddim (x_T through --init-noise, 10 steps, eta 0): the
 *     saved latent within the io file's tolerance, the codebook indices
 *     exactly, the PNG within 1 level of sample_ddim.png;
 *   - seeds and batches: --seed N draws torch_randn's noise (CPU and CUDA);
 *     --batch K names image i <i>-<N+i-1>.png and it is the --seed N+i-1
 *     image; --init-noise rows go to the images in order; eta > 0 uses the
 *     seed's per-step noise;
 *   - --ema: a checkpoint with LitEma copies (written here with other
 *     values, under names made by the test's own key mapping) gives the
 *     plain result by default and with --ema the result of a checkpoint
 *     holding those values as plain weights; no/partial copies are errors;
 *   - class-conditional, by its defining properties: the context given to
 *     the UNet is [row n_classes-1, row N] of the checkpoint's embedding
 *     table; only the class's row matters (swapping two rows swaps the
 *     classes); --cfg-scale 1 ignores the unconditional row, and with the
 *     unconditional row equal to the class's row guidance changes nothing;
 *     one DDIM step is affine in the scale with the scale-0 end equal to the
 *     unconditional class (e = e_u + s (e_c - e_u)); same seed same image,
 *     other class or seed other image;
 *   - the KL path: the PNG is decoder(latent / the checkpoint's scale_factor)
 *     through the decoder's runner, then uint8(255 * (clamp(x, -1, 1) + 1) / 2);
 *   - bad input: missing or wrong checkpoints, --class on an unconditional
 *     model, classes out of range, bad flags: non-zero exit, a clear
 *     message, no output file;
 *   - sizes: `make sample SIZES="64x64 64x96"` for ldm-vq4-tiny: each size
 *     (-H/-W, --width alone, the default) makes, with --batch, the images
 *     and latents of the single-size executables bit for bit, from one set
 *     of bound weights; other sizes are refused with the make command that
 *     adds them (exit 2, no output), and bad size flags too.
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
#include "infotext.h"
#include "model.h"
#include "safetensors.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define SMP_SAN 1
#else
#define SMP_SAN 0
#endif

/* the class-conditional test config (tests/sample/ldm-cin-tiny.yaml) */
#define CIN_CONFIG "tests/sample/ldm-cin-tiny.yaml"
#define CIN_CLASSES 5      /* cond_stage_config.params.n_classes: 4 classes + unconditional class 4 */
#define CIN_DIM 24         /* embed_dim = the UNet's context_dim */
#define CIN_LAT (3 * 8 * 12) /* latent of 32x48 at f = 4 */
/* the KL test config (tests/sample/ldm-kl-tiny.yaml) at 32x40: latent 4 x 8 x 10 */
#define KL_CONFIG "tests/sample/ldm-kl-tiny.yaml"

/* ------------------------------------------------------------------------
 * scratch directory, paths
 * ------------------------------------------------------------------------ */


static const char *vq_model(void) { return test_shared("goldens/ldm-vq4-tiny/model.safetensors"); }
static const char *vq_io(void) { return test_shared("goldens/ldm-vq4-tiny/sample_ddim.io.safetensors"); }

/* ------------------------------------------------------------------------
 * running programs
 * ------------------------------------------------------------------------ */


/* ------------------------------------------------------------------------
 * the executables and the random class-conditional checkpoint, made once
 * ------------------------------------------------------------------------ */

typedef struct Built {
    char path[700];          /* "" until made */
    char *log;               /* why it failed */
} Built;

static Built g_vq, g_cin, g_cin_ckpt;

static void build_exe(Built *b, const char *config, const char *h, const char *w, const char *name) {
    char build[300], cfg[512], hh[32], ww[32], nm[128];
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(cfg, sizeof cfg, "CONFIG=%s", config);
    snprintf(hh, sizeof hh, "H=%s", h);
    snprintf(ww, sizeof ww, "W=%s", w);
    snprintf(nm, sizeof nm, "SAMPLE_NAME=%s", name);
    char *argv[] = {"make", "-s", "-j2", build, SMP_SAN ? "SAN=1" : "SAN=0", "sample", cfg, hh, ww, nm, NULL};
    char log[300], path[600];
    snprintf(log, sizeof log, "%s/make-%s.log", test_dir, name);
    snprintf(path, sizeof path, "%s/%s", test_build_dir(), name);
    int rc = test_wait_status(test_spawn(argv, log));
    if (rc == 0 && access(path, X_OK) == 0) {
        snprintf(b->path, sizeof b->path, "%s", path);
    } else {
        size_t n;
        b->log = ldm_read_file(log, &n);
        if (!b->log) b->log = ldm_xasprintf("make exited with status %d", rc);
    }
}

/* Run argv (a tool of the build) once; on success b->path = out. */
static void make_file(Built *b, char *const argv[], const char *out, const char *what) {
    char log[300];
    snprintf(log, sizeof log, "%s/%s.log", test_dir, what);
    int rc = test_wait_status(test_spawn(argv, log));
    if (rc == 0 && test_exists(out)) {
        snprintf(b->path, sizeof b->path, "%s", out);
    } else {
        size_t n;
        b->log = ldm_read_file(log, &n);
        if (!b->log) b->log = ldm_xasprintf("%s exited with status %d", what, rc);
    }
}

static void setup_vq(void) {
    test_dir_init("ldm_sample_");
    if (!test_dir[0] || g_vq.path[0] || g_vq.log) return;
    build_exe(&g_vq, test_shared("goldens/ldm-vq4-tiny/config.yaml"), "64", "64", "sample-test-vq4-tiny");
}

static void setup_cin(void) {
    test_dir_init("ldm_sample_");
    if (!test_dir[0]) return;
    if (!g_cin.path[0] && !g_cin.log) build_exe(&g_cin, CIN_CONFIG, "32", "48", "sample-test-cin-tiny");
    if (g_cin_ckpt.path[0] || g_cin_ckpt.log) return;
    char ldmc[300];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    const char *out = test_tmp("cin.safetensors");
    char *argv[] = {ldmc, "randckpt", "--config", CIN_CONFIG, "-D", "H=32", "-D", "W=48", "--seed", "5", "-o",
                    (char *)out, "models/ldm/unet.graph", "models/ldm/vae_decoder.graph",
                    "models/ldm/class_embed.graph", NULL};
    make_file(&g_cin_ckpt, argv, out, "randckpt-cin");
}

/* The KL config: executable, random checkpoint without and with the
 * scale_by_std tensor `scale_factor`, and a graph runner of its decoder. */
static Built g_kl, g_kl_raw, g_kl_dec;
static char g_kl_ckpt[600];
#define KL_SCALE 0.37f

static void setup_kl(void) {
    test_dir_init("ldm_sample_");
    if (!test_dir[0]) return;
    if (!g_kl.path[0] && !g_kl.log) build_exe(&g_kl, KL_CONFIG, "32", "40", "sample-test-kl-tiny");
    char ldmc[300];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    if (!g_kl_raw.path[0] && !g_kl_raw.log) {
        const char *out = test_tmp("kl-raw.safetensors");
        char *argv[] = {ldmc, "randckpt", "--config", KL_CONFIG, "-D", "H=32", "-D", "W=40", "--seed", "11", "-o",
                        (char *)out, "models/ldm/unet.graph", "models/ldm/vae_decoder.graph", NULL};
        make_file(&g_kl_raw, argv, out, "randckpt-kl");
    }
    if (!g_kl_dec.path[0] && !g_kl_dec.log) {
        const char *out = test_tmp("kl-decoder");
        char *argv[] = {ldmc, "models/ldm/vae_decoder.graph", "--config", KL_CONFIG, "-D", "H=32", "-D", "W=40", "-D",
                        "B=1", "-o", (char *)out, NULL};
        make_file(&g_kl_dec, argv, out, "ldmc-kl-decoder");
    }
    if (g_kl_raw.path[0] && !g_kl_ckpt[0]) {
        /* LatentDiffusion with scale_by_std: register_buffer('scale_factor', ...) (a 0-d tensor) */
        StFile f;
        if (st_open(&f, g_kl_raw.path) != 0) return;
        StWriter *w = st_writer_new();
        for (int i = 0; i < f.n_tensors; i++)
            st_writer_add(w, f.tensors[i].name, f.tensors[i].dtype, f.tensors[i].ndim, f.tensors[i].shape,
                          f.tensors[i].data);
        float sf = KL_SCALE;
        st_writer_add(w, "scale_factor", ST_F32, 0, NULL, &sf);
        const char *out = test_tmp("kl.safetensors");
        if (st_writer_save(w, out) == 0) snprintf(g_kl_ckpt, sizeof g_kl_ckpt, "%s", out);
        st_writer_free(w);
        st_close(&f);
    }
}

static void setup_all(void) {
    setup_vq();
    setup_cin();
}

static void teardown_nothing(void) {}

static const char *vq_exe(void) {
    ck_assert_msg(g_vq.path[0], "make sample (ldm-vq4-tiny, 64x64) failed:\n%s", g_vq.log ? g_vq.log : "(not run)");
    return g_vq.path;
}

static const char *cin_exe(void) {
    ck_assert_msg(g_cin.path[0], "make sample (%s, 32x48) failed:\n%s", CIN_CONFIG, g_cin.log ? g_cin.log : "(not run)");
    return g_cin.path;
}

static const char *cin_ckpt(void) {
    ck_assert_msg(g_cin_ckpt.path[0], "ldmc randckpt failed:\n%s", g_cin_ckpt.log ? g_cin_ckpt.log : "(not run)");
    return g_cin_ckpt.path;
}

#define MAX_ARGS 48

/* Run exe with --weights and the NULL-terminated extra arguments; want_ok:
 * must succeed, else must fail cleanly. Returns the output (malloc'd). */
static char *run_expect(int want_ok, const char *exe, const char *weights, ...) {
    char *argv[MAX_ARGS];
    int k = 0;
    argv[k++] = (char *)exe;
    if (weights) {
        argv[k++] = "--weights";
        argv[k++] = (char *)weights;
    }
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
    if (want_ok) ck_assert_msg(rc == 0, "%s failed (status %d):\n%s", exe, rc, out);
    else ck_assert_msg(rc != 0 && rc < 128, "%s: expected a clean failure, got status %d:\n%s", exe, rc, out);
    ck_assert_msg(!strstr(out, "AddressSanitizer") && !strstr(out, "runtime error"), "sanitizer report:\n%s", out);
    return out;
}

/* ------------------------------------------------------------------------
 * tensors, checkpoints and images
 * ------------------------------------------------------------------------ */

/* Write n floats as tensor `noise` of shape (ndim, shape) to a new file. */
static void write_noise(const char *dst, const float *x, int ndim, const int64_t *shape) {
    StWriter *w = st_writer_new();
    st_writer_add(w, "noise", ST_F32, ndim, shape, x);
    ck_assert_msg(st_writer_save(w, dst) == 0, "%s", ldm_last_error());
    st_writer_free(w);
}

static double max_abs(const float *a, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i]));
    return m;
}

/* Rewrite checkpoint src as dst: edit(ctx, writer, tensor, values) is
 * called for every tensor with its values as float32 (NULL for integer
 * tensors) and adds what dst gets instead (nothing = dropped). */
typedef void (*EditFn)(void *ctx, StWriter *w, const StTensor *t, float *values);

static void rewrite_ckpt(const char *src, const char *dst, EditFn edit, void *ctx) {
    StFile f;
    ck_assert_msg(st_open(&f, src) == 0, "%s", ldm_last_error());
    StWriter *w = st_writer_new();
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        int is_float = t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64;
        float *v = NULL;
        if (is_float) {
            v = ldm_xmalloc((size_t)t->numel * sizeof *v + 4);
            ck_assert_msg(st_to_f32(t, v) == 0, "%s", ldm_last_error());
        }
        edit(ctx, w, t, v);
        free(v);
    }
    ck_assert_msg(st_writer_save(w, dst) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    st_close(&f);
}

/* Add t to w unchanged (float tensors as F32). */
static void keep(StWriter *w, const StTensor *t, const float *v) {
    if (v) st_writer_add(w, t->name, ST_F32, t->ndim, t->shape, v);
    else st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
}


/* ------------------------------------------------------------------------
 * the golden, end to end
 * ------------------------------------------------------------------------ */

START_TEST(test_golden_sample_ddim) {
    const char *io = vq_io();
    char *steps = meta(io, "steps"), *eta = meta(io, "eta");
    const char *noise = test_tmp("golden-noise.safetensors"), *lat = test_tmp("golden-latent.safetensors");
    const char *png = test_tmp("golden.png");
    int64_t n, ng;
    float *xT = read_f32(io, "x_T", &n);
    int64_t shape[4] = {1, 3, 16, 16};
    ck_assert_int_eq(n, 3 * 16 * 16);
    write_noise(noise, xT, 4, shape);
    free(xT);
    char *out = run_expect(1, vq_exe(), vq_model(), "--steps", steps, "--eta", eta, "--init-noise", noise,
                           "--save-latent", lat, "-o", png, NULL);
    /* stderr is not a terminal here: progress as plain lines, then the summary */
    ck_assert_msg(strstr(out, "sampling step 1/10") && strstr(out, "step 10/10") && strstr(out, "decode") &&
                      strstr(out, "peak memory"),
                  "no progress/summary in:\n%s", out);
    free(out);

    float *ours = read_f32(lat, "latent", &n), *gold = read_f32(io, "latent", &ng);
    ck_assert_int_eq(n, ng);
    double d = max_abs_diff(ours, gold, n), tol = tolerance(io, "latent");
    int32_t *idx = read_i32(lat, "indices", &n), *gidx = read_i32(io, "indices", &ng);
    ck_assert_int_eq(n, ng);
    int bad = 0;
    for (int64_t i = 0; i < n; i++) bad += idx[i] != gidx[i];
    int pd = png_max_diff(png, test_shared("goldens/ldm-vq4-tiny/sample_ddim.png"));
    printf("sample: ldm-vq4-tiny/sample_ddim latent max|ours - golden| = %.3g (tolerance %.3g), %d/%lld indices "
           "differ, PNG max diff %d\n", d, tol, bad, (long long)n, pd);
    fflush(stdout);
    ck_assert_msg(d <= tol, "latent max |ours - golden| = %.6g > %.6g", d, tol);
    ck_assert_msg(bad == 0, "%d of %lld codebook indices differ from the golden", bad, (long long)n);
    ck_assert_msg(pd <= 1, "PNG differs from the golden by %d levels (at most 1 allowed)", pd);
    free(ours);
    free(gold);
    free(idx);
    free(gidx);
    free(steps);
    free(eta);
}
END_TEST

/* ------------------------------------------------------------------------
 * seeds, batches, eta
 * ------------------------------------------------------------------------ */

/* randn(.io) case7 is seed 4294967295, shape [1, 3, 16, 16]: the latent of
 * ldm-vq4-tiny at 64x64. */
static void check_case7(const char *file) {
    char *cases = meta(test_shared(file), "cases");
    ck_assert_msg(strstr(cases, "\"case7\", \"seed\": 4294967295, \"shape\": [1, 3, 16, 16]"),
                  "%s: case7 is not seed 4294967295 [1, 3, 16, 16]: %s", file, cases);
    free(cases);
}

START_TEST(test_seed_draws_torch_noise) {
    static const char *rngs[2] = {"cpu", "cuda"};
    static const char *files[2] = {"goldens/torch_randn/randn.io.safetensors",
                                   "goldens/torch_randn/randn_cuda.io.safetensors"};
    check_case7(files[_i]);
    const char *lat = test_tmp("seed-%s.safetensors", rngs[_i]);
    free(run_expect(1, vq_exe(), vq_model(), "--steps", "2", "--seed", "4294967295", "--rng", rngs[_i],
                    "--save-latent", lat, "-o", test_tmp("seed-%s.png", rngs[_i]), "--quiet", NULL));
    int64_t n, ng;
    float *ours = read_f32(lat, "noise", &n), *gold = read_f32(test_shared(files[_i]), "case7.noise", &ng);
    ck_assert_int_eq(n, ng);
    double d = max_abs_diff(ours, gold, n);
    ck_assert_msg(d <= 1e-6, "--rng %s --seed 4294967295: x_T differs from torch's by %g", rngs[_i], d);
    free(ours);
    free(gold);
}
END_TEST

/* --batch 3 --seed N: images <i>-<N+i-1>.png, each the --seed N+i-1 image
 * (with eta > 0, so the per-step noise is per image too). */
START_TEST(test_batch_names_and_seeds) {
    const char *dir = test_tmp("batch"), *ldir = test_tmp("batch-lat");
    char *out = run_expect(1, vq_exe(), vq_model(), "--batch", "3", "--seed", "4294967294", "--steps", "4", "--eta",
                           "0.5", "--save-latent", ldir, "-o", dir, NULL);
    ck_assert_msg(strstr(out, "[2/3] seed 4294967295 step 4/4") && strstr(out, "timing (3 images)"),
                  "progress of a batch:\n%s", out);
    free(out);
    static const char *names[3] = {"00001-4294967294", "00002-4294967295", "00003-4294967296"};
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(test_exists(test_tmp("batch/%s.png", names[i])), "no batch/%s.png", names[i]);
        ck_assert_msg(test_exists(test_tmp("batch-lat/%s.safetensors", names[i])), "no batch-lat/%s.safetensors", names[i]);
    }
    /* image 2 drew torch.manual_seed(4294967295); torch.randn(1, 3, 16, 16) */
    int64_t n, ng;
    float *x = read_f32(test_tmp("batch-lat/%s.safetensors", names[1]), "noise", &n);
    float *gold = read_f32(test_shared("goldens/torch_randn/randn.io.safetensors"), "case7.noise", &ng);
    ck_assert_int_eq(n, ng);
    ck_assert_msg(max_abs_diff(x, gold, n) <= 1e-6, "image 2 of the batch did not start from seed 4294967295's noise");
    free(x);
    free(gold);
    /* and is the single image of that seed */
    const char *single = test_tmp("batch-single.png"), *slat = test_tmp("batch-single.safetensors");
    free(run_expect(1, vq_exe(), vq_model(), "--seed", "4294967295", "--steps", "4", "--eta", "0.5", "--save-latent",
                    slat, "-o", single, "--quiet", NULL));
    ck_assert_msg(same_file(single, test_tmp("batch/%s.png", names[1])), "image 2 of the batch differs from --seed 4294967295");
    ck_assert_msg(same_latent(slat, test_tmp("batch-lat/%s.safetensors", names[1])), "image 2's latent differs");
    ck_assert_msg(!same_file(test_tmp("batch/%s.png", names[0]), test_tmp("batch/%s.png", names[2])),
                  "images 1 and 3 of the batch are the same");
}
END_TEST

/* --init-noise with --batch 2: row i of a [2, 3, 16, 16] tensor is x_T of
 * image i; row 1 = the golden x_T gives the golden latent. */
START_TEST(test_batch_init_noise_rows) {
    const char *io = vq_io();
    int64_t n, ng;
    float *xT = read_f32(io, "x_T", &n);
    float *both = ldm_xmalloc(2 * (size_t)n * sizeof *both);
    for (int64_t i = 0; i < n; i++) both[i] = -0.5f * xT[(i * 7) % n]; /* some other start for image 1 */
    memcpy(both + n, xT, (size_t)n * sizeof *both);
    int64_t shape[4] = {2, 3, 16, 16};
    const char *noise = test_tmp("rows-noise.safetensors");
    write_noise(noise, both, 4, shape);
    free(run_expect(1, vq_exe(), vq_model(), "--batch", "2", "--seed", "9", "--steps", "10", "--init-noise", noise,
                    "--save-latent", test_tmp("rows-lat"), "-o", test_tmp("rows"), "--quiet", NULL));
    float *l1 = read_f32(test_tmp("rows-lat/00001-9.safetensors"), "noise", &ng);
    ck_assert_msg(ng == n && memcmp(l1, both, (size_t)n * sizeof *l1) == 0, "image 1 did not start from row 0");
    free(l1);
    float *ours = read_f32(test_tmp("rows-lat/00002-10.safetensors"), "latent", &ng), *gold = read_f32(io, "latent", NULL);
    double d = max_abs_diff(ours, gold, n), tol = tolerance(io, "latent");
    ck_assert_msg(d <= tol, "image 2 (row 1 = golden x_T): latent max |ours - golden| = %g > %g", d, tol);
    free(ours);
    free(gold);
    free(xT);
    free(both);
}
END_TEST

/* eta > 0 draws the seed's per-step noise; eta 0 draws nothing that matters. */
START_TEST(test_eta_uses_seed_noise) {
    const char *io = vq_io();
    int64_t n;
    float *xT = read_f32(io, "x_T", &n);
    int64_t shape[4] = {1, 3, 16, 16};
    const char *noise = test_tmp("eta-noise.safetensors");
    write_noise(noise, xT, 4, shape);
    free(xT);
    const char *lat[4];
    static const char *seeds[2] = {"1", "2"}, *etas[2] = {"0", "0.7"};
    for (int k = 0; k < 4; k++) {
        lat[k] = test_tmp("eta-%d.safetensors", k);
        free(run_expect(1, vq_exe(), vq_model(), "--steps", "4", "--seed", seeds[k & 1], "--eta", etas[k >> 1],
                        "--init-noise", noise, "--save-latent", lat[k], "-o", test_tmp("eta-%d.png", k), "--quiet", NULL));
    }
    ck_assert_msg(same_latent(lat[0], lat[1]), "eta 0: the seed changed the result of a given x_T");
    ck_assert_msg(!same_latent(lat[2], lat[3]), "eta 0.7: the seed's per-step noise is not used");
    ck_assert_msg(!same_latent(lat[0], lat[2]), "eta 0.7 gave the eta 0 result");
}
END_TEST

/* ------------------------------------------------------------------------
 * --ema
 * ------------------------------------------------------------------------ */

/* The test's own LitEma naming: "model." + p -> "model_ema." + p without dots. */
static char *ema_name(const char *name) {
    ck_assert(strncmp(name, "model.", 6) == 0);
    char *s = ldm_xasprintf("model_ema.%s", name + 6);
    char *o = s + 10;
    for (const char *c = name + 6; *c; c++)
        if (*c != '.') *o++ = *c;
    *o = 0;
    return s;
}

/* the EMA values: different from the weights, same shapes */
static void ema_values(const float *v, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = 0.8f * v[i] + 0.01f;
}

static int is_unet(const StTensor *t) { return strncmp(t->name, "model.diffusion_model.", 22) == 0; }

typedef struct EmaEdit {
    int mode;              /* 0: add EMA copies, 1: plain weights := EMA values, 2: as 0 without one copy */
    const char *drop;      /* mode 2: the UNet weight whose copy is left out */
} EmaEdit;

static void ema_edit(void *ctx, StWriter *w, const StTensor *t, float *v) {
    const EmaEdit *e = ctx;
    if (!is_unet(t) || !v) {
        keep(w, t, v);
        return;
    }
    float *ev = ldm_xmalloc((size_t)t->numel * sizeof *ev + 4);
    ema_values(v, t->numel, ev);
    if (e->mode == 1) {
        st_writer_add(w, t->name, ST_F32, t->ndim, t->shape, ev);
    } else {
        keep(w, t, v);
        if (!(e->mode == 2 && strcmp(t->name, e->drop) == 0)) {
            char *name = ema_name(t->name);
            st_writer_add(w, name, ST_F32, t->ndim, t->shape, ev);
            free(name);
        }
    }
    free(ev);
}

/* LitEma's own buffers, present in real checkpoints beside the copies */
static void add_litema_buffers(const char *path) {
    /* rewrite once more with the two scalars added at the end */
    StFile f;
    ck_assert_msg(st_open(&f, path) == 0, "%s", ldm_last_error());
    StWriter *w = st_writer_new();
    for (int i = 0; i < f.n_tensors; i++)
        st_writer_add(w, f.tensors[i].name, f.tensors[i].dtype, f.tensors[i].ndim, f.tensors[i].shape,
                      f.tensors[i].data);
    float decay = 0.9999f;
    int32_t updates = 12345;
    st_writer_add(w, "model_ema.decay", ST_F32, 0, NULL, &decay);
    st_writer_add(w, "model_ema.num_updates", ST_I32, 0, NULL, &updates);
    char *t = ldm_xasprintf("%s.new", path);
    ck_assert_msg(st_writer_save(w, t) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    st_close(&f);
    ck_assert(rename(t, path) == 0);
    free(t);
}

START_TEST(test_ema) {
    const char *ema = test_tmp("ema.safetensors"), *plain = test_tmp("ema-as-plain.safetensors");
    const char *partial = test_tmp("ema-partial.safetensors");
    EmaEdit e0 = {0, NULL}, e1 = {1, NULL}, e2 = {2, "model.diffusion_model.out.2.bias"};
    rewrite_ckpt(vq_model(), ema, ema_edit, &e0);
    add_litema_buffers(ema);
    rewrite_ckpt(vq_model(), plain, ema_edit, &e1);
    rewrite_ckpt(vq_model(), partial, ema_edit, &e2);

    const char *la = test_tmp("ema-a.safetensors"), *lb = test_tmp("ema-b.safetensors"), *lc = test_tmp("ema-c.safetensors");
    const char *ld = test_tmp("ema-d.safetensors");
#define RUN(w, flag, lat, png) \
    free(run_expect(1, vq_exe(), w, "--steps", "2", "--seed", "3", "--save-latent", lat, "-o", test_tmp(png), "--quiet", \
                    flag, NULL))
    RUN(vq_model(), NULL, la, "ema-a.png");
    RUN(ema, NULL, lb, "ema-b.png");
    RUN(ema, "--ema", lc, "ema-c.png");
    RUN(plain, NULL, ld, "ema-d.png");
#undef RUN
    ck_assert_msg(same_latent(la, lb), "without --ema the EMA checkpoint did not give the plain weights' result");
    ck_assert_msg(same_latent(lc, ld), "--ema did not give the result of the EMA values as plain weights");
    ck_assert_msg(!same_latent(la, lc), "--ema gave the plain weights' result");
    char *w = meta(lc, "weights");
    ck_assert_str_eq(w, "ema");
    free(w);

    /* no copies at all, and one copy missing */
    char *out = run_expect(0, vq_exe(), vq_model(), "--ema", "--steps", "2", "-o", test_tmp("bad-ema.png"), NULL);
    ck_assert_msg(strstr(out, "no EMA weights") && strstr(out, "model_ema"), "message:\n%s", out);
    free(out);
    out = run_expect(0, vq_exe(), partial, "--ema", "--steps", "2", "-o", test_tmp("bad-ema.png"), NULL);
    ck_assert_msg(strstr(out, "'model_ema.diffusion_modelout2bias' is missing"), "message:\n%s", out);
    free(out);
    ck_assert_msg(!test_exists(test_tmp("bad-ema.png")), "an output was written despite the error");
}
END_TEST

/* --lora on an LDM UNet: a LoCon on two 3x3 convs (CompVis module names),
 * merged when the weights are bound, gives the bits of the checkpoint
 * `ldmc merge` makes with it; with --ema it merges into the EMA weights
 * (the module names are the model's, whatever key the tensor is read from). */
START_TEST(test_lora) {
    const char *lora = test_tmp("locon.safetensors"), *merged = test_tmp("locon-merged.safetensors");
    StWriter *w = st_writer_new();
    static const char *mods[2] = {"lora_unet_input_blocks_0_0", "lora_unet_input_blocks_1_0_in_layers_2"};
    static const int cin[2] = {3, 32};
    float *v = ldm_xmalloc(32 * 32 * 9 * sizeof(float));
    for (int i = 0; i < 32 * 32 * 9; i++) v[i] = 0.02f * (float)((i * 7919) % 23 - 11);
    char key[160];
    for (int m = 0; m < 2; m++) {
        int64_t sd[4] = {4, cin[m], 3, 3}, su[4] = {32, 4, 1, 1}, s0[1] = {0};
        float alpha = 2.0f;
        snprintf(key, sizeof key, "%s.lora_down.weight", mods[m]);
        st_writer_add(w, key, ST_F32, 4, sd, v);
        snprintf(key, sizeof key, "%s.lora_up.weight", mods[m]);
        st_writer_add(w, key, ST_F32, 4, su, v + 100);
        snprintf(key, sizeof key, "%s.alpha", mods[m]);
        st_writer_add(w, key, ST_F32, 0, s0, &alpha);
    }
    ck_assert_msg(st_writer_save(w, lora) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    free(v);
    char ldmc[300], spec[600];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    snprintf(spec, sizeof spec, "%s:0.7", lora);
    char *argv[] = {ldmc, "merge", "--lora", spec, (char *)vq_model(), "-o", (char *)merged, NULL};
    char *out;
    ck_assert_msg(test_run(argv, &out) == 0, "ldmc merge failed:\n%s", out);
    free(out);
    const char *la = test_tmp("lora-a.safetensors"), *lb = test_tmp("lora-b.safetensors");
    const char *lc = test_tmp("lora-c.safetensors");
    free(run_expect(1, vq_exe(), vq_model(), "--lora", spec, "--steps", "2", "--seed", "3", "--save-latent", la, "-o",
                    test_tmp("lora-a.png"), "--quiet", NULL));
    free(run_expect(1, vq_exe(), merged, "--steps", "2", "--seed", "3", "--save-latent", lb, "-o",
                    test_tmp("lora-b.png"), "--quiet", NULL));
    free(run_expect(1, vq_exe(), vq_model(), "--steps", "2", "--seed", "3", "--save-latent", lc, "-o",
                    test_tmp("lora-c.png"), "--quiet", NULL));
    ck_assert_msg(same_latent(la, lb), "--lora differs from the checkpoint ldmc merge wrote");
    ck_assert_msg(!same_latent(la, lc), "--lora changed nothing");
    char *rec = meta(la, "loras");
    ck_assert_msg(strstr(rec, "locon.safetensors:0.7"), "latent metadata loras = '%s'", rec);
    free(rec);
    /* the EMA weights: the checkpoint whose EMA copies are the merged values */
    const char *ema = test_tmp("lora-ema.safetensors"), *plain = test_tmp("lora-ema-as-plain.safetensors");
    const char *le = test_tmp("lora-e.safetensors"), *lp = test_tmp("lora-p.safetensors");
    EmaEdit e0 = {0, NULL}, e1 = {1, NULL};
    rewrite_ckpt(vq_model(), ema, ema_edit, &e0);
    rewrite_ckpt(vq_model(), plain, ema_edit, &e1);
    free(run_expect(1, vq_exe(), ema, "--ema", "--lora", spec, "--steps", "2", "--seed", "3", "--save-latent", le, "-o",
                    test_tmp("lora-e.png"), "--quiet", NULL));
    free(run_expect(1, vq_exe(), plain, "--lora", spec, "--steps", "2", "--seed", "3", "--save-latent", lp, "-o",
                    test_tmp("lora-p.png"), "--quiet", NULL));
    ck_assert_msg(same_latent(lp, le), "--ema --lora did not merge into the EMA weights");
    /* a file that is not there */
    out = run_expect(0, vq_exe(), vq_model(), "--lora", test_tmp("nope.safetensors"), "--steps", "2", "-o",
                     test_tmp("lora-bad.png"), NULL);
    ck_assert_msg(strstr(out, "nope.safetensors"), "message:\n%s", out);
    ck_assert_msg(!test_exists(test_tmp("lora-bad.png")), "an output was written despite the error");
    free(out);
}
END_TEST

/* The mapping itself (runtime/model.c). */
START_TEST(test_ema_key) {
    char buf[256];
    ck_assert_str_eq(ldm_ema_key("model.diffusion_model.input_blocks.0.0.weight", buf, sizeof buf),
                     "model_ema.diffusion_modelinput_blocks00weight");
    ck_assert_str_eq(ldm_ema_key("model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight", buf,
                                 sizeof buf),
                     "model_ema.diffusion_modelmiddle_block1transformer_blocks0attn1to_qweight");
    /* outside the diffusion model: no EMA copies, the name itself */
    ck_assert_str_eq(ldm_ema_key("first_stage_model.decoder.conv_in.weight", buf, sizeof buf),
                     "first_stage_model.decoder.conv_in.weight");
    ck_assert_str_eq(ldm_ema_key("cond_stage_model.embedding.weight", buf, sizeof buf),
                     "cond_stage_model.embedding.weight");
    ck_assert_str_eq(ldm_ema_key("model_ema.decay", buf, sizeof buf), "model_ema.decay");
    /* too small a buffer: cut short (a key no checkpoint has), never the plain name */
    char small[16];
    const char *k = ldm_ema_key("model.diffusion_model.out.2.weight", small, sizeof small);
    ck_assert_msg(strcmp(k, "model.diffusion_model.out.2.weight") != 0 && strlen(k) < sizeof small, "got '%s'", k);
}
END_TEST

/* ------------------------------------------------------------------------
 * class-conditional
 * ------------------------------------------------------------------------ */

/* The embedding table of the random checkpoint (CIN_CLASSES x CIN_DIM). */
static float *class_table(const char *ckpt) {
    int64_t n;
    float *t = read_f32(ckpt, "cond_stage_model.embedding.weight", &n);
    ck_assert_int_eq(n, CIN_CLASSES * CIN_DIM);
    return t;
}

typedef struct RowEdit {
    int swap_a, swap_b;    /* rows to swap (-1: none) */
    int copy_to, copy_from; /* row copy_to := row copy_from (-1: none) */
    int scramble;          /* row to replace by -3 * row + 1 (-1: none) */
} RowEdit;

static void row_edit(void *ctx, StWriter *w, const StTensor *t, float *v) {
    const RowEdit *e = ctx;
    if (strcmp(t->name, "cond_stage_model.embedding.weight") == 0) {
        ck_assert_int_eq(t->numel, CIN_CLASSES * CIN_DIM);
        float tmpr[CIN_DIM];
        if (e->swap_a >= 0) {
            memcpy(tmpr, v + e->swap_a * CIN_DIM, sizeof tmpr);
            memcpy(v + e->swap_a * CIN_DIM, v + e->swap_b * CIN_DIM, sizeof tmpr);
            memcpy(v + e->swap_b * CIN_DIM, tmpr, sizeof tmpr);
        }
        if (e->copy_to >= 0) memcpy(v + e->copy_to * CIN_DIM, v + e->copy_from * CIN_DIM, sizeof tmpr);
        if (e->scramble >= 0)
            for (int j = 0; j < CIN_DIM; j++) v[e->scramble * CIN_DIM + j] = -3.0f * v[e->scramble * CIN_DIM + j] + 1.0f;
    }
    keep(w, t, v);
}

/* Run the class executable: --class cls --cfg-scale scale (NULL: default)
 * --seed seed --steps steps; returns the saved latent file. */
static const char *cin_run(const char *ckpt, const char *tag, const char *cls, const char *scale, const char *seed,
                           const char *steps) {
    const char *lat = test_tmp("cin-%s.safetensors", tag);
    const char *png = test_tmp("cin-%s.png", tag);
    if (scale)
        free(run_expect(1, cin_exe(), ckpt, "--class", cls, "--cfg-scale", scale, "--seed", seed, "--steps", steps,
                        "--save-latent", lat, "-o", png, "--quiet", NULL));
    else
        free(run_expect(1, cin_exe(), ckpt, "--class", cls, "--seed", seed, "--steps", steps, "--save-latent", lat,
                        "-o", png, "--quiet", NULL));
    return lat;
}

/* The UNet's context is [row n_classes - 1, row N] of the table. */
START_TEST(test_class_context_rows) {
    for (int cls = 0; cls < CIN_CLASSES; cls += 2) {
        char c[16];
        snprintf(c, sizeof c, "%d", cls);
        const char *lat = cin_run(cin_ckpt(), c, c, NULL, "1", "2");
        int64_t n;
        float *ctx = read_f32(lat, "context", &n), *table = class_table(cin_ckpt());
        ck_assert_int_eq(n, 2 * CIN_DIM);
        ck_assert_msg(memcmp(ctx, table + (CIN_CLASSES - 1) * CIN_DIM, CIN_DIM * sizeof *ctx) == 0,
                      "class %d: the unconditional context is not row %d of the embedding", cls, CIN_CLASSES - 1);
        ck_assert_msg(memcmp(ctx + CIN_DIM, table + cls * CIN_DIM, CIN_DIM * sizeof *ctx) == 0,
                      "class %d: the conditional context is not row %d of the embedding", cls, cls);
        int32_t *labels = read_i32(lat, "class_label", &n);
        ck_assert_msg(n == 2 && labels[0] == CIN_CLASSES - 1 && labels[1] == cls, "class_label [%d, %d]", labels[0],
                      labels[1]);
        char *meta_cfg = meta(lat, "cfg_scale");
        ck_assert_str_eq(meta_cfg, "3"); /* the cin256 notebook's scale */
        free(meta_cfg);
        free(labels);
        free(ctx);
        free(table);
    }
}
END_TEST

/* Only the class's row matters: with rows 1 and 2 swapped, class 1 draws
 * what class 2 drew. Same seed same image, other class or seed another. */
START_TEST(test_class_rows_decide) {
    const char *swapped = test_tmp("cin-swap12.safetensors");
    RowEdit e = {1, 2, -1, -1, -1};
    rewrite_ckpt(cin_ckpt(), swapped, row_edit, &e);
    const char *c2 = cin_run(cin_ckpt(), "rd-c2", "2", NULL, "4", "2");
    const char *c2b = cin_run(cin_ckpt(), "rd-c2b", "2", "3", "4", "2");
    const char *c1 = cin_run(cin_ckpt(), "rd-c1", "1", NULL, "4", "2");
    const char *s1 = cin_run(swapped, "rd-s1", "1", NULL, "4", "2");
    const char *c2s = cin_run(cin_ckpt(), "rd-c2s", "2", NULL, "5", "2");
    ck_assert_msg(same_latent(s1, c2), "class 1 with rows 1 and 2 swapped is not class 2");
    ck_assert_msg(same_latent(c2, c2b) && same_file(test_tmp("cin-rd-c2.png"), test_tmp("cin-rd-c2b.png")),
                  "same seed and class (default scale = 3) gave two images");
    ck_assert_msg(!same_latent(c1, c2), "classes 1 and 2 gave the same latent");
    ck_assert_msg(!same_file(test_tmp("cin-rd-c1.png"), test_tmp("cin-rd-c2.png")), "classes 1 and 2 gave the same image");
    ck_assert_msg(!same_latent(c2, c2s), "seeds 4 and 5 gave the same latent");
}
END_TEST

/* --cfg-scale 1 is the purely conditional prediction: the unconditional
 * row does not matter; at scale 3 it does. */
START_TEST(test_cfg1_is_conditional) {
    const char *scr = test_tmp("cin-scramble4.safetensors");
    RowEdit e = {-1, -1, -1, -1, CIN_CLASSES - 1};
    rewrite_ckpt(cin_ckpt(), scr, row_edit, &e);
    ck_assert_msg(same_latent(cin_run(cin_ckpt(), "c1-a", "3", "1", "6", "2"), cin_run(scr, "c1-b", "3", "1", "6", "2")),
                  "--cfg-scale 1 depends on the unconditional class's row");
    ck_assert_msg(!same_latent(cin_run(cin_ckpt(), "c1-c", "3", "3", "6", "2"), cin_run(scr, "c1-d", "3", "3", "6", "2")),
                  "--cfg-scale 3 does not depend on the unconditional class's row");
}
END_TEST

/* The PNG's `parameters` (webui infotext) of a class-conditional image: an
 * empty prompt, the class as the field "Class", the guidance scale, the
 * seed; read back as the webui reads it. */
START_TEST(test_class_metadata) {
    const char *png = test_tmp("cin-meta.png");
    free(run_expect(1, cin_exe(), cin_ckpt(), "--class=3", "--cfg-scale", "2.5", "-s", "11", "--steps", "2", "-o", png,
                    NULL));
    char *text = NULL;
    ck_assert_int_eq(ldm_png_read_text(png, "parameters", &text), 1);
    LdmInfotextParsed p;
    ck_assert_int_eq(ldm_infotext_parse(text, &p), 0);
    const char *want[][2] = {{"Class", "3"}, {"CFG scale", "2.5"}, {"Seed", "11"}, {"Steps", "2"},
                             {"Sampler", "DDIM"}, {"Size", "48x32"}, {"Model", "cin"}};
    ck_assert_msg(!strcmp(p.prompt, ""), "prompt '%s'", p.prompt);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *v = ldm_infotext_get(&p, want[i][0]);
        ck_assert_msg(v && !strcmp(v, want[i][1]), "%s: '%s', expected '%s' in:\n%s", want[i][0], v ? v : "(absent)",
                      want[i][1], text);
    }
    ldm_infotext_parsed_free(&p);
    free(text);
}
END_TEST

/* Guidance is against the unconditional class: with row n_classes-1 equal
 * to row 2, class 2 at scale 3 is class 2 at scale 1 (e_u = e_c). The two
 * halves of the batch-2 UNet call then get identical inputs; they are
 * computed independently, so the results may differ only by float32
 * rounding, amplified by the sampler, far below the scale's own effect. */
START_TEST(test_guidance_against_uncond_class) {
    const char *same = test_tmp("cin-u-is-2.safetensors");
    RowEdit e = {-1, -1, CIN_CLASSES - 1, 2, -1};
    rewrite_ckpt(cin_ckpt(), same, row_edit, &e);
    int64_t n;
    float *g3 = read_f32(cin_run(same, "ug-3", "2", "3", "7", "4"), "latent", &n);
    float *g1 = read_f32(cin_run(same, "ug-1", "2", "1", "7", "4"), "latent", NULL);
    float *o3 = read_f32(cin_run(cin_ckpt(), "ug-o3", "2", "3", "7", "4"), "latent", NULL);
    ck_assert_int_eq(n, CIN_LAT);
    double d = max_abs_diff(g3, g1, n), effect = max_abs_diff(o3, g1, n), scale = max_abs(g1, n);
    ck_assert_msg(effect > 1e-2 * scale, "guidance has no effect on the original checkpoint (%g)", effect);
    ck_assert_msg(d <= 1e-5 * scale, "uncond row = class row: scale 3 differs from scale 1 by %g (latent max %g)", d,
                  scale);
    free(g3);
    free(g1);
    free(o3);
}
END_TEST

/* One DDIM step (eta 0) is affine in eps, so the latent is affine in the
 * guidance scale s exactly when eps = e_u + s (e_c - e_u): L(s) = L(0) +
 * s (L(1) - L(0)), where L(0) is the unconditional class's prediction
 * (class n_classes-1 at scale 1) and L(1) the class's. */
START_TEST(test_guidance_formula) {
    int64_t n;
    float *l0 = read_f32(cin_run(cin_ckpt(), "gf-0", "1", "0", "8", "1"), "latent", &n);
    float *l1 = read_f32(cin_run(cin_ckpt(), "gf-1", "1", "1", "8", "1"), "latent", NULL);
    float *l3 = read_f32(cin_run(cin_ckpt(), "gf-3", "1", "3", "8", "1"), "latent", NULL);
    float *lm = read_f32(cin_run(cin_ckpt(), "gf-m", "1", "-2.5", "8", "1"), "latent", NULL);
    float *lu = read_f32(cin_run(cin_ckpt(), "gf-u", "4", "1", "8", "1"), "latent", NULL);
    ck_assert_int_eq(n, CIN_LAT);
    double d3 = 0, dm = 0;
    for (int64_t i = 0; i < n; i++) {
        double step = (double)l1[i] - (double)l0[i];
        d3 = fmax(d3, fabs((double)l3[i] - ((double)l0[i] + 3.0 * step)));
        dm = fmax(dm, fabs((double)lm[i] - ((double)l0[i] - 2.5 * step)));
    }
    double du = max_abs_diff(l0, lu, n), effect = max_abs_diff(l0, l1, n);
    printf("sample: guidance, one step: |L(3) - affine| = %.3g, |L(-2.5) - affine| = %.3g, |L(0) - uncond| = %.3g, "
           "|L(1) - L(0)| = %.3g\n", d3, dm, du, effect);
    fflush(stdout);
    /* Float32 rounding only: of the eps combination and of the one update
     * pred_x0 = (x - sqrt(1-a) e) / sqrt(a), x' = sqrt(a_prev) pred_x0 +
     * sqrt(1-a_prev) e, whose terms are of the size of the latent: 8 ulps
     * of the largest latent value. (At t = 1, the only timestep of one step,
     * eps moves the latent little: x' - x ~ -0.016 eps; a wrong formula
     * moves L(3) by about 2 |L(1) - L(0)|.) */
    double big = fmax(fmax(max_abs(l0, n), max_abs(l1, n)), fmax(max_abs(l3, n), max_abs(lm, n)));
    int ex;
    frexp(big, &ex);
    double tol = 8 * ldexp(1.0, ex - 24); /* 8 ulps of float32 numbers in [2^(ex-1), 2^ex) */
    ck_assert_msg(effect > 50 * tol, "the class has too small an effect to test the formula (%g)", effect);
    ck_assert_msg(d3 <= tol && dm <= tol, "the latent is not affine in the scale: %g, %g > %g", d3, dm, tol);
    ck_assert_msg(du <= tol, "scale 0 is not the unconditional class's prediction: %g > %g", du, tol);
    free(l0);
    free(l1);
    free(l3);
    free(lm);
    free(lu);
}
END_TEST

/* ------------------------------------------------------------------------
 * the KL decoder path
 * ------------------------------------------------------------------------ */

/* decode_first_stage on a KL model with scale_by_std: the executable's PNG
 * is decoder(1 / scale_factor * latent) (the checkpoint's scale_factor),
 * through the decoder's own graph runner, then custom_to_pil's
 * uint8(255 * (clamp(x, -1, 1) + 1) / 2). */
START_TEST(test_kl_decode) {
    ck_assert_msg(g_kl.path[0], "make sample (%s) failed:\n%s", KL_CONFIG, g_kl.log ? g_kl.log : "(not run)");
    ck_assert_msg(g_kl_dec.path[0], "ldmc (KL decoder runner) failed:\n%s", g_kl_dec.log ? g_kl_dec.log : "(not run)");
    ck_assert_msg(g_kl_ckpt[0], "no KL checkpoint:\n%s", g_kl_raw.log ? g_kl_raw.log : ldm_last_error());
    const char *lat = test_tmp("kl-latent.safetensors"), *png = test_tmp("kl.png");
    free(run_expect(1, g_kl.path, g_kl_ckpt, "--steps", "2", "--seed", "3", "--save-latent", lat, "-o", png, "--quiet",
                    NULL));
    int64_t n;
    float *latent = read_f32(lat, "latent", &n);
    ck_assert_int_eq(n, 4 * 8 * 10);
    StFile f;
    ck_assert(st_open(&f, lat) == 0);
    ck_assert_msg(!st_find(&f, "indices"), "a KL model has no codebook indices");
    st_close(&f);
    /* model.decode_first_stage: z = 1. / self.scale_factor * z (float32 buffer) */
    float inv = 1.0f / KL_SCALE;
    for (int64_t i = 0; i < n; i++) latent[i] = inv * latent[i];
    const char *in = test_tmp("kl-dec-in.safetensors"), *out = test_tmp("kl-dec-out.safetensors");
    StWriter *w = st_writer_new();
    int64_t shape[4] = {1, 4, 8, 10};
    st_writer_add(w, "z", ST_F32, 4, shape, latent);
    ck_assert(st_writer_save(w, in) == 0);
    st_writer_free(w);
    char *argv[] = {g_kl_dec.path, "--weights", g_kl_ckpt, "--inputs", (char *)in, "--outputs", (char *)out, NULL};
    char *log;
    int rc = test_run(argv, &log);
    ck_assert_msg(rc == 0, "decoder runner failed:\n%s", log);
    free(log);
    float *img = read_f32(out, "image", &n);
    ck_assert_int_eq(n, 3 * 32 * 40);
    uint8_t *rgb;
    int wd, ht;
    ck_assert_msg(ldm_png_read_rgb8(png, &rgb, &wd, &ht) == 0, "%s", ldm_last_error());
    ck_assert_msg(wd == 40 && ht == 32, "the PNG is %dx%d, expected 40 wide, 32 high", wd, ht);
    int worst = 0, saturated = 0;
    for (int c = 0; c < 3; c++)
        for (int p = 0; p < 32 * 40; p++) {
            float x = img[c * 32 * 40 + p];
            x = x < -1.0f ? -1.0f : x > 1.0f ? 1.0f : x;
            x = (x + 1.0f) / 2.0f;
            int want = (int)(255.0f * x);
            saturated += want == 0 || want == 255;
            worst = abs(want - (int)rgb[p * 3 + c]) > worst ? abs(want - (int)rgb[p * 3 + c]) : worst;
        }
    ck_assert_msg(worst <= 1, "PNG differs from decoder(latent / scale_factor) by %d levels", worst);
    ck_assert_msg(saturated < 3 * 32 * 40 / 2, "the image is mostly saturated (%d pixels): a weak test", saturated);
    free(rgb);
    free(img);
    free(latent);

    /* scale_by_std without the tensor */
    char *msg = run_expect(0, g_kl.path, g_kl_raw.path, "--steps", "2", "-o", test_tmp("bad-kl.png"), NULL);
    ck_assert_msg(strstr(msg, "scale_factor"), "message:\n%s", msg);
    free(msg);
    assert_no_output("bad-");
}
END_TEST

/* ------------------------------------------------------------------------
 * bad input
 * ------------------------------------------------------------------------ */

typedef struct Bad {
    const char *label;      /* what is wrong */
    int cin;                /* 0: the ldm-vq4-tiny executable, 1: the class-conditional one */
    const char *weights;    /* "vq", "cin", "sd1", "missing", "garbage" or NULL (not given) */
    const char *args[12];   /* extra arguments ("$NOISE1", "$GARBAGE", "$RANDN" are substituted) */
    const char *expect;     /* a substring of the message */
} Bad;

static const Bad k_bad[] = {
    {"no weights", 0, NULL, {"--steps", "2"}, "--weights"},
    {"missing weights", 0, "missing", {"--steps", "2"}, "no-such.safetensors"},
    {"garbage weights", 0, "garbage", {"--steps", "2"}, "garbage.safetensors"},
    {"SD checkpoint", 0, "sd1", {"--steps", "2"}, "built for"},
    {"class-conditional checkpoint", 0, "cin", {"--steps", "2"}, "missing"},
    {"unconditional checkpoint for the class model", 1, "vq", {"--class", "1", "--steps", "2"}, "built for"},
    {"--class on an unconditional model", 0, "vq", {"--class", "1"}, "unconditional model"},
    {"--cfg-scale on an unconditional model", 0, "vq", {"--cfg-scale", "2"}, "--cfg-scale"},
    {"no --class for a class model", 1, "cin", {"--steps", "2"}, "--class N"},
    {"class out of range", 1, "cin", {"--class", "5"}, "from 0 to 4"},
    {"negative class", 1, "cin", {"--class", "-1"}, "--class"},
    {"class text", 1, "cin", {"--class", "cat"}, "'cat'"},
    {"cfg scale nan", 1, "cin", {"--class", "1", "--cfg-scale", "nan"}, "--cfg-scale"},
    {"--ema without copies", 1, "cin", {"--class", "1", "--ema"}, "no EMA weights"},
    {"steps 0", 0, "vq", {"--steps", "0"}, "--steps"},
    {"steps text", 0, "vq", {"--steps", "ten"}, "'ten'"},
    {"steps the schedule cannot make", 0, "vq", {"--steps", "3"}, "3"},
    {"negative eta", 0, "vq", {"--eta", "-1"}, "--eta"},
    {"negative seed", 0, "vq", {"--seed", "-2"}, "--seed"},
    {"unknown rng", 0, "vq", {"--rng", "gpu"}, "--rng"},
    {"unknown compute mode", 0, "vq", {"--compute", "f16"}, "expected f32 or bf16, got 'f16'"},
    {"batch 0", 0, "vq", {"--batch", "0"}, "--batch"},
    {"unknown option", 0, "vq", {"--sampler", "plms"}, "--sampler"},
    {"stray argument", 0, "vq", {"--steps", "2", "extra"}, "'extra'"},
    {"flag without value", 0, "vq", {"--steps"}, "--steps"},
    {"init noise without 'noise'", 0, "vq", {"--init-noise", "$RANDN"}, "'noise'"},
    {"init noise for one image, batch 2", 0, "vq", {"--batch", "2", "--init-noise", "$NOISE1"}, "[2, 3, 16, 16]"},
    {"init noise of another size", 1, "cin", {"--class", "0", "--init-noise", "$NOISE1"}, "[1, 3, 8, 12]"},
    {"output directory missing", 0, "vq", {"--steps", "2", "-o", "$DIR/no/dir/bad-out.png"}, "bad-out.png"},
};
#define N_BAD ((int)(sizeof k_bad / sizeof k_bad[0]))

START_TEST(test_bad_input) {
    const Bad *b = &k_bad[_i];
    const char *garbage = test_tmp("garbage.safetensors");
    FILE *fp = fopen(garbage, "wb");
    ck_assert(fp);
    fputs("this is not a safetensors file\n", fp);
    fclose(fp);
    const char *noise1 = test_tmp("noise1.safetensors");
    float z[3 * 16 * 16] = {0};
    int64_t shape[4] = {1, 3, 16, 16};
    write_noise(noise1, z, 4, shape);

    const char *weights = NULL;
    if (!b->weights) weights = NULL;
    else if (!strcmp(b->weights, "vq")) weights = vq_model();
    else if (!strcmp(b->weights, "cin")) weights = cin_ckpt();
    else if (!strcmp(b->weights, "sd1")) weights = test_shared("goldens/sd1-tiny/model.safetensors");
    else if (!strcmp(b->weights, "missing")) weights = test_tmp("no-such.safetensors");
    else if (!strcmp(b->weights, "garbage")) weights = garbage;

    char *argv[MAX_ARGS];
    char subst[12][600];
    int k = 0;
    argv[k++] = (char *)(b->cin ? cin_exe() : vq_exe());
    if (weights) {
        argv[k++] = "--weights";
        argv[k++] = (char *)weights;
    }
    argv[k++] = "-o";
    argv[k++] = (char *)test_tmp("bad-out.png");
    argv[k++] = "--save-latent";
    argv[k++] = (char *)test_tmp("bad-latent.safetensors");
    for (int i = 0; b->args[i]; i++) {
        const char *a = b->args[i];
        if (!strcmp(a, "$GARBAGE")) a = garbage;
        else if (!strcmp(a, "$NOISE1")) a = noise1;
        else if (!strcmp(a, "$RANDN")) a = test_shared("goldens/torch_randn/randn.io.safetensors");
        else if (!strncmp(a, "$DIR", 4)) {
            snprintf(subst[i], sizeof subst[i], "%s%s", test_dir, a + 4);
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

/* --batch K names directories: an error before sampling creates none. */
START_TEST(test_bad_batch_makes_nothing) {
    free(run_expect(0, vq_exe(), test_shared("goldens/sd1-tiny/model.safetensors"), "--batch", "2", "--steps", "2", "-o",
                    test_tmp("bad-batch"), "--save-latent", test_tmp("bad-batch-lat"), NULL));
    assert_no_output("bad-");
}
END_TEST

START_TEST(test_help) {
    char *argv[] = {(char *)(_i ? cin_exe() : vq_exe()), "--help", NULL};
    char *out;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "--help failed (%d):\n%s", rc, out);
    if (_i)
        ck_assert_msg(strstr(out, "--class N") && strstr(out, "--cfg-scale") && strstr(out, "48 wide, 32 high") &&
                          strstr(out, "class-conditional"),
                      "help:\n%s", out);
    else
        ck_assert_msg(strstr(out, "--batch K") && strstr(out, "--ema") && strstr(out, "64 wide, 64 high") &&
                          strstr(out, "unconditional") && !strstr(out, "--class N"),
                      "help:\n%s", out);
    free(out);
}
END_TEST

/* Linked statically: no PT_INTERP program header (sanitized builds are
 * dynamic on purpose). */
START_TEST(test_static) {
    if (SMP_SAN) return;
    size_t n;
    const char *exe = _i ? cin_exe() : vq_exe();
    char *elf = ldm_read_file(exe, &n);
    ck_assert_msg(elf && n > sizeof(Elf64_Ehdr), "cannot read %s", exe);
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)(const void *)elf;
    ck_assert(memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64);
    int interp = 0;
    for (int i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *ph = (const Elf64_Phdr *)(const void *)(elf + eh->e_phoff + (size_t)i * eh->e_phentsize);
        if (ph->p_type == PT_INTERP) interp = 1;
    }
    ck_assert_msg(!interp, "%s has a program interpreter: not linked statically", exe);
    free(elf);
}
END_TEST

/* ------------------------------------------------------------------------
 * several sizes in one executable
 * ------------------------------------------------------------------------ */

static Built g_vq_multi, g_vq_96;

static void setup_sizes(void) {
    setup_vq();
    if (!test_dir[0]) return;
    if (!g_vq_96.path[0] && !g_vq_96.log)
        build_exe(&g_vq_96, test_shared("goldens/ldm-vq4-tiny/config.yaml"), "64", "96", "sample-test-vq4-tiny-64x96");
    if (g_vq_multi.path[0] || g_vq_multi.log) return;
    char build[300], cfg[512], log[300], path[600];
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(cfg, sizeof cfg, "CONFIG=%s", test_shared("goldens/ldm-vq4-tiny/config.yaml"));
    snprintf(log, sizeof log, "%s/make-multi.log", test_dir);
    snprintf(path, sizeof path, "%s/sample-test-vq4-tiny-multi", test_build_dir());
    char *argv[] = {"make", "-s", "-j2", build, SMP_SAN ? "SAN=1" : "SAN=0", "sample", cfg, "SIZES=64x64 64x96",
                    "SAMPLE_NAME=sample-test-vq4-tiny-multi", NULL};
    int rc = test_wait_status(test_spawn(argv, log));
    if (rc == 0 && access(path, X_OK) == 0) {
        snprintf(g_vq_multi.path, sizeof g_vq_multi.path, "%s", path);
    } else {
        size_t n;
        g_vq_multi.log = ldm_read_file(log, &n);
        if (!g_vq_multi.log) g_vq_multi.log = ldm_xasprintf("make exited with status %d", rc);
    }
}

static const char *multi_exe(void) {
    ck_assert_msg(g_vq_multi.path[0], "make sample SIZES=\"64x64 64x96\" failed:\n%s",
                  g_vq_multi.log ? g_vq_multi.log : "(not run)");
    return g_vq_multi.path;
}

/* _i = 0: the default size 64x64 against the 64x64 executable; 1: --width
 * 96 and 2: -H 64 -W 96 against the 64x96 one. Two images (--batch 2), with
 * eta > 0 so that the per-step noise matters too. */
START_TEST(test_multi_matches_single) {
    const char *single = _i == 0 ? vq_exe() : g_vq_96.path;
    ck_assert_msg(single[0], "make sample (64x96) failed:\n%s", g_vq_96.log ? g_vq_96.log : "(not run)");
    const char *dm = test_tmp("multi-%d", _i), *ds = test_tmp("single-%d", _i);
    const char *lm = test_tmp("multi-lat-%d", _i), *ls = test_tmp("single-lat-%d", _i);
    char *out;
    if (_i == 0)
        out = run_expect(1, multi_exe(), vq_model(), "--batch", "2", "--steps", "4", "--eta", "0.5", "--seed", "8",
                         "--save-latent", lm, "-o", dm, NULL);
    else if (_i == 1)
        out = run_expect(1, multi_exe(), vq_model(), "--batch", "2", "--steps", "4", "--eta", "0.5", "--seed", "8",
                         "--width", "96", "--save-latent", lm, "-o", dm, NULL);
    else
        out = run_expect(1, multi_exe(), vq_model(), "--batch", "2", "--steps", "4", "--eta", "0.5", "--seed", "8",
                         "-H", "64", "-W", "96", "--save-latent", lm, "-o", dm, NULL);
    ck_assert_msg(strstr(out, "2 sizes: 4 networks on 2 weight sets"), "no sharing summary:\n%s", out);
    free(out);
    free(run_expect(1, single, vq_model(), "--batch", "2", "--steps", "4", "--eta", "0.5", "--seed", "8",
                    "--save-latent", ls, "-o", ds, "--quiet", NULL));
    for (int k = 0; k < 2; k++) {
        char a[64], b[64];
        snprintf(a, sizeof a, "multi-%d/%05d-%d.png", _i, k + 1, 8 + k);
        snprintf(b, sizeof b, "single-%d/%05d-%d.png", _i, k + 1, 8 + k);
        char pa[600], pb[600];
        snprintf(pa, sizeof pa, "%s", test_tmp("%s", a));
        snprintf(pb, sizeof pb, "%s", test_tmp("%s", b));
        ck_assert_msg(test_exists(pa) && same_file(pa, pb), "%s differs from %s", a, b);
        snprintf(a, sizeof a, "multi-lat-%d/%05d-%d.safetensors", _i, k + 1, 8 + k);
        snprintf(b, sizeof b, "single-lat-%d/%05d-%d.safetensors", _i, k + 1, 8 + k);
        snprintf(pa, sizeof pa, "%s", test_tmp("%s", a));
        snprintf(pb, sizeof pb, "%s", test_tmp("%s", b));
        ck_assert_msg(same_latent(pa, pb), "%s differs from %s", a, b);
        int64_t n;
        float *lat = read_f32(pa, "latent", &n);
        ck_assert_int_eq(n, 3 * 16 * (_i ? 24 : 16));
        free(lat);
    }
}
END_TEST

START_TEST(test_size_refused) {
    char *out = run_expect(0, multi_exe(), vq_model(), "-H", "96", "-o", test_tmp("bad-size.png"), NULL);
    char want[1024];
    snprintf(want, sizeof want, "make sample CONFIG=%s SIZES=\"64x64 64x96 96x64\"",
             test_shared("goldens/ldm-vq4-tiny/config.yaml"));
    ck_assert_msg(strstr(out, "64x96 (width x height) was not compiled") && strstr(out, "64x64 (default), 96x64") &&
                      strstr(out, want),
                  "message:\n%s", out);
    free(out);
    char *argv[] = {(char *)vq_exe(), "--weights", (char *)vq_model(), "--width", "96", "-o",
                    (char *)test_tmp("bad-size.png"), NULL};
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 2 && strstr(out, "only 64x64") && strstr(out, "SIZES=\"64x64 64x96\""), "status %d:\n%s", rc,
                  out);
    free(out);
    argv[3] = "--height";
    argv[4] = "sixty";
    rc = test_run(argv, &out);
    ck_assert_msg(rc == 2 && strstr(out, "--height: expected an integer"), "status %d:\n%s", rc, out);
    free(out);
    assert_no_output("bad-");
}
END_TEST

/* make sample refuses text-conditioned configs, naming the way out. */
START_TEST(test_make_refuses_text_model) {
    char build[300], cfg[512];
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(cfg, sizeof cfg, "CONFIG=%s", test_shared("goldens/sd1-tiny/config.yaml"));
    char *argv[] = {"make", "-s", build, SMP_SAN ? "SAN=1" : "SAN=0", "sample", cfg, "H=64", "W=64",
                    "SAMPLE_NAME=sample-test-refused", NULL};
    char *out;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc != 0 && strstr(out, "txt2img") && strstr(out, "not an unconditional"), "make: status %d:\n%s",
                  rc, out);
    char path[600];
    snprintf(path, sizeof path, "%s/sample-test-refused", test_build_dir());
    ck_assert_msg(!test_exists(path), "%s was built", path);
    free(out);
}
END_TEST

Suite *suite_sample(void) {
    Suite *s = suite_create("sample");
    int t = SMP_SAN ? 900 : 300;

    TCase *tc = tcase_create("golden");
    tcase_add_unchecked_fixture(tc, setup_vq, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_test(tc, test_golden_sample_ddim);
    suite_add_tcase(s, tc);

    tc = tcase_create("seeds");
    tcase_add_unchecked_fixture(tc, setup_vq, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_loop_test(tc, test_seed_draws_torch_noise, 0, 2);
    tcase_add_test(tc, test_batch_names_and_seeds);
    tcase_add_test(tc, test_batch_init_noise_rows);
    tcase_add_test(tc, test_eta_uses_seed_noise);
    suite_add_tcase(s, tc);

    tc = tcase_create("ema");
    tcase_add_unchecked_fixture(tc, setup_vq, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_test(tc, test_ema);
    tcase_add_test(tc, test_ema_key);
    tcase_add_test(tc, test_lora);
    suite_add_tcase(s, tc);

    tc = tcase_create("class");
    tcase_add_unchecked_fixture(tc, setup_cin, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_test(tc, test_class_context_rows);
    tcase_add_test(tc, test_class_rows_decide);
    tcase_add_test(tc, test_cfg1_is_conditional);
    tcase_add_test(tc, test_guidance_against_uncond_class);
    tcase_add_test(tc, test_guidance_formula);
    tcase_add_test(tc, test_class_metadata);
    suite_add_tcase(s, tc);

    tc = tcase_create("kl");
    tcase_add_unchecked_fixture(tc, setup_kl, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_test(tc, test_kl_decode);
    suite_add_tcase(s, tc);

    tc = tcase_create("bad_input");
    tcase_add_unchecked_fixture(tc, setup_all, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_loop_test(tc, test_bad_input, 0, N_BAD);
    tcase_add_test(tc, test_bad_batch_makes_nothing);
    tcase_add_loop_test(tc, test_help, 0, 2);
    tcase_add_loop_test(tc, test_static, 0, 2);
    tcase_add_test(tc, test_make_refuses_text_model);
    suite_add_tcase(s, tc);

    tc = tcase_create("sizes");
    tcase_add_unchecked_fixture(tc, setup_sizes, teardown_nothing);
    tcase_set_timeout(tc, t);
    tcase_add_loop_test(tc, test_multi_matches_single, 0, 3);
    tcase_add_test(tc, test_size_refused);
    suite_add_tcase(s, tc);
    return s;
}
