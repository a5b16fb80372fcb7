/*
 * test_taesd.c - TAESD, the tiny autoencoder (goldens/sd1-fast, README
 * section 5): models/taesd/taesd_{decoder,encoder}.graph through graph
 * runners and through the txt2img executable.
 *
 * The fixture compiles the two graphs into runners at 128x128 and 96x160
 * (ldmc GRAPH -D H -D W -o RUNNER), builds the sd1-tiny txt2img at 128x128
 * as a user does (make txt2img ..., TAESD=1 by default) named
 * txt2img-test-sd1-tiny (shared with other suites), and writes the released TAESD files under diffusers
 * AutoencoderTiny's names (decoder.layers.{i-1}.*, encoder.layers.{i}.*;
 * one file each, and one holding both halves, as the HF repo's).
 *   - taesd_decode.io: 5 cases (16x16 and 12x20 latents, N(0,1), 2.5 N(0,1),
 *     the saturating final latent of txt2img_lcm4) within the file's
 *     tolerances; taesd_encode.io: 2 cases and decoder(encoder(image));
 *   - the executable's --taesd image is the runner's TAESD decode of the
 *     latent it saved (--save-latent: the UNet-space latent, unscaled),
 *     byte for byte, and not the VAE decoder's image;
 *   - the diffusers-named files give the same bytes (decode, img2img encode);
 *   - --taesd-encoder changes the img2img result (the encoder runs);
 *   - --preview-every N --preview PNG: one preview per N steps (the timing
 *     summary counts them), a valid PNG of the image size, the prediction of
 *     the last previewed step (close to the final image when that is the
 *     last step, far from it otherwise), no temporary file left;
 *   - bad input: wrong TAESD files (the other half, a wrong shape, a
 *     missing tensor, no file), preview path in a missing directory,
 *     --preview without --preview-every and the reverse, --preview without
 *     a TAESD decoder: a message naming the problem, non-zero exit, no output.
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
#include "safetensors.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define TAESD_SAN 1
#else
#define TAESD_SAN 0
#endif

#define FAST "goldens/sd1-fast/"

enum { R_DEC_128, R_DEC_96x160, R_ENC_128, R_ENC_96x160, R_N };
static const struct {
    const char *graph;
    int H, W;
} k_runners[R_N] = {
    [R_DEC_128] = {"taesd_decoder", 128, 128},
    [R_DEC_96x160] = {"taesd_decoder", 96, 160},
    [R_ENC_128] = {"taesd_encoder", 128, 128},
    [R_ENC_96x160] = {"taesd_encoder", 96, 160},
};
static char g_runner[R_N][300]; /* "" until built */
static char *g_runner_log[R_N];
static char g_exe[700];
static char *g_build_log;
static char g_dec_diff[600], g_enc_diff[600], g_both_diff[600]; /* diffusers-named copies */

/* Copy the tensors of `src` to `dst` under map(name) (the decoder's
 * released names: "<i>.rest" -> "decoder.layers.<i-1>.rest"; the encoder's:
 * "encoder.layers.<i>.rest"); into an existing writer when w is given. */
static void add_renamed(StWriter *w, const char *src, int decoder) {
    StFile f;
    ck_assert_msg(st_open(&f, src) == 0, "%s", ldm_last_error());
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        char *end, name[256];
        long k = strtol(t->name, &end, 10);
        ck_assert_msg(end != t->name && *end == '.', "%s: unexpected name '%s'", src, t->name);
        snprintf(name, sizeof name, "%s.layers.%ld%s", decoder ? "decoder" : "encoder", decoder ? k - 1 : k, end);
        st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data);
    }
    st_close(&f);
}

static void write_renamed(const char *dst, int dec, int enc) {
    StWriter *w = st_writer_new();
    if (dec) add_renamed(w, test_shared(FAST "taesd_decoder.safetensors"), 1);
    if (enc) add_renamed(w, test_shared(FAST "taesd_encoder.safetensors"), 0);
    ck_assert_msg(st_writer_save(w, dst) == 0, "%s", ldm_last_error());
    st_writer_free(w);
}

static void setup(void) {
    test_dir_init("ldm_taesd_");
    if (!test_dir[0] || g_exe[0] || g_build_log) return;
    /* the runners, two ldmc at a time, then the executable */
    char ldmc[300], graph[R_N][300], defs[R_N][2][32], logs[R_N][320];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    pid_t pids[R_N];
    for (int r = 0; r < R_N; r++) {
        if (r >= 2) {
            int st = test_wait_status(pids[r - 2]);
            if (st != 0 || access(g_runner[r - 2], X_OK) != 0) {
                size_t n;
                g_runner_log[r - 2] = ldm_read_file(logs[r - 2], &n);
                g_runner[r - 2][0] = 0;
            }
        }
        snprintf(graph[r], sizeof graph[r], "models/taesd/%s.graph", k_runners[r].graph);
        snprintf(defs[r][0], sizeof defs[r][0], "H=%d", k_runners[r].H);
        snprintf(defs[r][1], sizeof defs[r][1], "W=%d", k_runners[r].W);
        snprintf(g_runner[r], sizeof g_runner[r], "%.64s/%.32s-%dx%d", test_dir, k_runners[r].graph, k_runners[r].H,
                 k_runners[r].W);
        snprintf(logs[r], sizeof logs[r], "%.200s.log", g_runner[r]);
        char *argv[] = {ldmc, graph[r], "-D", defs[r][0], "-D", defs[r][1], "-o", g_runner[r], NULL};
        pids[r] = test_spawn(argv, logs[r]);
    }
    for (int r = R_N - 2; r < R_N; r++) {
        int st = test_wait_status(pids[r]);
        if (st != 0 || access(g_runner[r], X_OK) != 0) {
            size_t n;
            g_runner_log[r] = ldm_read_file(logs[r], &n);
            g_runner[r][0] = 0;
        }
    }
    test_build_sd1_tiny_txt2img(TAESD_SAN, g_exe, sizeof g_exe, &g_build_log);
    snprintf(g_dec_diff, sizeof g_dec_diff, "%s/diffusers-decoder.safetensors", test_dir);
    snprintf(g_enc_diff, sizeof g_enc_diff, "%s/diffusers-encoder.safetensors", test_dir);
    snprintf(g_both_diff, sizeof g_both_diff, "%s/diffusion_pytorch_model.safetensors", test_dir);
    write_renamed(g_dec_diff, 1, 0);
    write_renamed(g_enc_diff, 0, 1);
    write_renamed(g_both_diff, 1, 1);
}

static void teardown_nothing(void) {}

static const char *runner(int r) {
    ck_assert_msg(g_runner[r][0], "ldmc %s.graph H=%d W=%d did not build a runner:\n%s", k_runners[r].graph,
                  k_runners[r].H, k_runners[r].W, g_runner_log[r] ? g_runner_log[r] : "");
    return g_runner[r];
}

static const char *exe(void) {
    ck_assert_msg(g_exe[0], "make txt2img (sd1-tiny, TAESD) failed:\n%s", g_build_log ? g_build_log : "(not run)");
    return g_exe;
}

/* Run a runner on tensors `prefix`<input> of `inputs` (prefix may be NULL). */
static void run_runner(int r, const char *weights, const char *inputs, const char *prefix, const char *outputs) {
    char *argv[] = {(char *)runner(r), "--weights", (char *)weights, "--inputs", (char *)inputs, "--outputs",
                    (char *)outputs, prefix ? "--prefix" : NULL, (char *)prefix, NULL};
    char *out;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "%s failed (status %d):\n%s", argv[0], rc, out);
    free(out);
}

/* max |tensor `name` of `file` - tensor `gname` of `io`|, sizes checked */
static double tensor_diff(const char *file, const char *name, const char *io, const char *gname) {
    int64_t n, ng;
    float *a = read_f32(file, name, &n), *b = read_f32(io, gname, &ng);
    ck_assert_msg(n == ng, "%s: %s has %lld values, golden %s %lld", file, name, (long long)n, gname, (long long)ng);
    double d = max_abs_diff(a, b, n);
    free(a);
    free(b);
    return d;
}

static void check_close(const char *label, const char *file, const char *name, const char *io, const char *gname) {
    double d = tensor_diff(file, name, io, gname), tol = tolerance(io, gname);
    printf("taesd: %-22s %-22s max|ours - golden| = %.3g (tolerance %.3g)\n", label, gname, d, tol);
    fflush(stdout);
    ck_assert_msg(d <= tol, "%s: %s: max |ours - golden| = %.6g > tolerance %.6g", label, gname, d, tol);
}

/* ------------------------------------------------------------------------
 * goldens through the runners
 * ------------------------------------------------------------------------ */

START_TEST(test_decode_golden) {
    const char *io = test_shared(FAST "taesd_decode.io.safetensors");
    char prefix[16], gname[32];
    snprintf(prefix, sizeof prefix, "case%d.", _i);
    snprintf(gname, sizeof gname, "case%d.latent", _i);
    StFile f;
    ck_assert_msg(st_open(&f, io) == 0, "%s", ldm_last_error());
    const StTensor *t = st_find(&f, gname);
    ck_assert_msg(t && t->ndim == 4, "%s: no 4-d %s", io, gname);
    int r = t->shape[2] == 16 && t->shape[3] == 16 ? R_DEC_128 : t->shape[2] == 12 && t->shape[3] == 20 ? R_DEC_96x160 : -1;
    st_close(&f);
    ck_assert_msg(r >= 0, "%s: unexpected latent size", gname);
    const char *out = test_tmp("dec%d.safetensors", _i);
    run_runner(r, test_shared(FAST "taesd_decoder.safetensors"), io, prefix, out);
    snprintf(gname, sizeof gname, "case%d.image", _i);
    check_close("decode", out, "image", io, gname);
}
END_TEST

START_TEST(test_encode_golden) {
    const char *io = test_shared(FAST "taesd_encode.io.safetensors");
    char prefix[16], gname[32];
    snprintf(prefix, sizeof prefix, "case%d.", _i);
    const char *out = test_tmp("enc%d.safetensors", _i);
    run_runner(_i == 0 ? R_ENC_128 : R_ENC_96x160, test_shared(FAST "taesd_encoder.safetensors"), io, prefix, out);
    snprintf(gname, sizeof gname, "case%d.latent", _i);
    check_close("encode", out, "latent", io, gname);
    if (_i == 0) {
        /* decoder(encoder(image)): our decoder on our latent */
        const char *rt = test_tmp("roundtrip%d.safetensors", _i);
        run_runner(R_DEC_128, test_shared(FAST "taesd_decoder.safetensors"), out, NULL, rt);
        check_close("roundtrip", rt, "image", io, "case0.roundtrip_image");
    }
}
END_TEST

/* ------------------------------------------------------------------------
 * the executable
 * ------------------------------------------------------------------------ */

#define MAX_ARGS 48

/* Run the executable (sd1-tiny weights, the vocab) with the NULL-terminated
 * arguments; want_ok: must succeed, else must fail cleanly. Returns its
 * output (malloc'd). */
static char *run_exe(int want_ok, ...) {
    char *argv[MAX_ARGS];
    int k = 0;
    argv[k++] = (char *)exe();
    argv[k++] = "--weights";
    argv[k++] = (char *)test_shared("goldens/sd1-tiny/model.safetensors");
    argv[k++] = "--vocab";
    argv[k++] = (char *)test_shared("clip/bpe_simple_vocab_16e6.txt.gz");
    va_list ap;
    va_start(ap, want_ok);
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

/* PNG -> bytes; the runner's float image -> the bytes txt2img writes
 * (clamp to [0, 1], uint8(255 x) truncated) */
static uint8_t *png_bytes(const char *path, int *w, int *h) {
    uint8_t *rgb;
    ck_assert_msg(ldm_png_read_rgb8(path, &rgb, w, h) == 0, "%s", ldm_last_error());
    return rgb;
}

static uint8_t *runner_image_bytes(const char *file, int w, int h) {
    int64_t n;
    float *x = read_f32(file, "image", &n);
    ck_assert_int_eq(n, 3LL * w * h);
    for (int64_t i = 0; i < n; i++) x[i] = x[i] < 0 ? 0 : x[i] > 1 ? 1 : x[i];
    uint8_t *rgb = ldm_xmalloc((size_t)n);
    ldm_image01_to_rgb8(x, w, h, rgb);
    free(x);
    return rgb;
}

START_TEST(test_exe_decode) {
    const char *dec = test_shared(FAST "taesd_decoder.safetensors");
    const char *png = test_tmp("t.png"), *lat = test_tmp("t.safetensors"), *vae = test_tmp("vae.png");
    free(run_exe(1, "--prompt", "a lighthouse", "--steps", "4", "--seed", "7", "--taesd", dec, "--save-latent", lat,
                 "-o", png, NULL));
    /* the runner on the saved latent (tensor 'latent': UNet space, unscaled) */
    const char *out = test_tmp("t-runner.safetensors");
    run_runner(R_DEC_128, dec, lat, NULL, out);
    int w, h;
    uint8_t *a = png_bytes(png, &w, &h), *b = runner_image_bytes(out, 128, 128);
    ck_assert_int_eq(w, 128);
    ck_assert_int_eq(h, 128);
    int64_t diff = 0;
    for (int64_t i = 0; i < 3LL * w * h; i++) diff += a[i] != b[i];
    printf("taesd: --taesd PNG vs the runner's decode of its latent: %lld of %d bytes differ (0 required)\n",
           (long long)diff, 3 * w * h);
    ck_assert_msg(diff == 0, "--taesd: %lld bytes differ from the runner's TAESD decode of the saved latent",
                  (long long)diff);
    /* the same latent through the VAE decoder is another image */
    const char *lat2 = test_tmp("vae.safetensors");
    free(run_exe(1, "--prompt", "a lighthouse", "--steps", "4", "--seed", "7", "--save-latent", lat2, "-o", vae, NULL));
    ck_assert_msg(same_latent(lat, lat2), "--taesd changed the sampling");
    ck_assert_msg(png_max_diff(png, vae) > 8, "--taesd gave the VAE decoder's image");
    free(a);
    free(b);
}
END_TEST

START_TEST(test_exe_diffusers_names) {
    const char *ref = test_tmp("rel.png"), *d1 = test_tmp("diff1.png"), *d2 = test_tmp("diff2.png");
    free(run_exe(1, "--prompt", "a boat", "--steps", "2", "--seed", "5", "--taesd",
                 test_shared(FAST "taesd_decoder.safetensors"), "-o", ref, NULL));
    free(run_exe(1, "--prompt", "a boat", "--steps", "2", "--seed", "5", "--taesd", g_dec_diff, "-o", d1, NULL));
    free(run_exe(1, "--prompt", "a boat", "--steps", "2", "--seed", "5", "--taesd", g_both_diff, "-o", d2, NULL));
    ck_assert_msg(same_file(ref, d1), "the diffusers-named decoder gives another image");
    ck_assert_msg(same_file(ref, d2), "the diffusers AutoencoderTiny file (both halves) gives another image");
}
END_TEST

/* img2img with TAESD's encoder: released and diffusers names give the same
 * bytes, and the VAE encoder another result */
START_TEST(test_exe_encoder) {
    const char *img = test_shared("goldens/sd1-tiny/img2img_input.png");
    const char *ref = test_tmp("i-rel.safetensors"), *d1 = test_tmp("i-diff.safetensors");
    const char *d2 = test_tmp("i-both.safetensors"), *v = test_tmp("i-vae.safetensors");
    const char *enc = test_shared(FAST "taesd_encoder.safetensors");
    free(run_exe(1, "--prompt", "a boat", "--steps", "4", "--seed", "5", "--init-image", img, "--strength", "0.5",
                 "--taesd-encoder", enc, "--save-latent", ref, "-o", test_tmp("i-rel.png"), NULL));
    free(run_exe(1, "--prompt", "a boat", "--steps", "4", "--seed", "5", "--init-image", img, "--strength", "0.5",
                 "--taesd-encoder", g_enc_diff, "--save-latent", d1, "-o", test_tmp("i-diff.png"), NULL));
    free(run_exe(1, "--prompt", "a boat", "--steps", "4", "--seed", "5", "--init-image", img, "--strength", "0.5",
                 "--taesd-encoder", g_both_diff, "--taesd", g_both_diff, "--save-latent", d2, "-o",
                 test_tmp("i-both.png"), NULL));
    free(run_exe(1, "--prompt", "a boat", "--steps", "4", "--seed", "5", "--init-image", img, "--strength", "0.5",
                 "--save-latent", v, "-o", test_tmp("i-vae.png"), NULL));
    ck_assert_msg(same_latent(ref, d1), "the diffusers-named encoder gives another latent");
    ck_assert_msg(same_latent(ref, d2), "the diffusers AutoencoderTiny file gives another latent");
    int64_t n;
    float *a = read_f32(ref, "latent", &n), *b = read_f32(v, "latent", NULL);
    double d = max_abs_diff(a, b, n);
    ck_assert_msg(d > 1e-2, "--taesd-encoder: the same latent as the VAE encoder's (max diff %g)", d);
    free(a);
    free(b);
}
END_TEST

/* "preview   1.2 s  (3 x 0.4 s)": how many previews the summary counts */
static int previews_counted(const char *out) {
    const char *p = strstr(out, "\n  preview");
    if (!p) return 0;
    const char *e = strchr(p + 1, '\n'), *q = strstr(p, "(");
    if (!q || (e && q > e)) return 1;
    return atoi(q + 1);
}

START_TEST(test_preview) {
    const char *dec = test_shared(FAST "taesd_decoder.safetensors");
    const char *prev = test_tmp("prev.png"), *png = test_tmp("p.png");
    /* 5 steps, every 2: steps 2 and 4 */
    char *out = run_exe(1, "--prompt", "a fox", "--sampler", "euler", "--steps", "5", "--seed", "2", "--taesd", dec,
                        "--preview-every", "2", "--preview", prev, "-o", png, NULL);
    ck_assert_msg(previews_counted(out) == 2, "expected 2 previews:\n%s", out);
    free(out);
    int w, h;
    free(png_bytes(prev, &w, &h));
    ck_assert_msg(w == 128 && h == 128, "the preview is %dx%d", w, h);
    /* 5 steps, every 3: step 3's prediction only, not the final image */
    out = run_exe(1, "--prompt", "a fox", "--sampler", "euler", "--steps", "5", "--seed", "2", "--taesd", dec,
                  "--preview-every", "3", "--preview", prev, "-o", png, NULL);
    ck_assert_msg(previews_counted(out) == 1, "expected 1 preview:\n%s", out);
    free(out);
    int far = png_max_diff(prev, png);
    /* every 3 steps of 3: the last step's x0 prediction, which euler's last
     * step makes the final latent (x + (x - x0) / sigma * (0 - sigma)) */
    remove(prev);
    out = run_exe(1, "--prompt", "a fox", "--sampler", "euler", "--steps", "3", "--seed", "2", "--taesd", dec,
                  "--preview-every", "1", "--preview", prev, "-o", png, NULL);
    ck_assert_msg(previews_counted(out) == 3, "expected 3 previews:\n%s", out);
    free(out);
    int near = png_max_diff(prev, png);
    printf("taesd: preview vs final image: max byte difference %d (last step), %d (an earlier step)\n", near, far);
    ck_assert_msg(near <= 2, "the last step's preview differs from the final TAESD image by %d", near);
    ck_assert_msg(far > 8, "an earlier step's preview is the final image (max diff %d)", far);
    /* --preview-taesd: previews with TAESD, the final image with the VAE */
    const char *vae = test_tmp("pv.png"), *prev2 = test_tmp("prev2.png");
    free(run_exe(1, "--prompt", "a fox", "--sampler", "euler", "--steps", "3", "--seed", "2", "--preview-taesd",
                 g_dec_diff, "--preview-every", "3", "--preview", prev2, "-o", vae, NULL));
    ck_assert_msg(same_file(prev, prev2), "--preview-taesd (diffusers names): another preview of the last step");
    ck_assert_msg(png_max_diff(vae, png) > 8, "--preview-taesd decoded the final image with TAESD");
    assert_no_output("prev.png.");
    assert_no_output("prev2.png.");
}
END_TEST

/* ------------------------------------------------------------------------
 * bad input
 * ------------------------------------------------------------------------ */

/* the decoder with one tensor of another shape / one tensor left out */
static const char *bad_decoder(int kind) {
    const char *path = test_tmp(kind ? "missing-%d.safetensors" : "shape-%d.safetensors", (int)getpid());
    StFile f;
    ck_assert_msg(st_open(&f, test_shared(FAST "taesd_decoder.safetensors")) == 0, "%s", ldm_last_error());
    StWriter *w = st_writer_new();
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        char name[256];
        char *end;
        long k = strtol(t->name, &end, 10);
        snprintf(name, sizeof name, "decoder.layers.%ld%s", k - 1, end);
        if (!strcmp(t->name, "19.bias") && kind == 1) continue;
        if (!strcmp(t->name, "19.weight") && kind == 0) {
            int64_t shape[4] = {3, 64, 1, 1};
            float *z = ldm_xcalloc(3 * 64, sizeof *z);
            st_writer_add(w, t->name, ST_F32, 4, shape, z);
            free(z);
            continue;
        }
        st_writer_add(w, kind ? name : t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    st_close(&f);
    ck_assert_msg(st_writer_save(w, path) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    return path;
}

enum { BAD_ENC_AS_DEC, BAD_DEC_AS_ENC, BAD_SHAPE, BAD_MISSING, BAD_NO_FILE, BAD_PREVIEW_DIR, BAD_PREVIEW_NO_EVERY,
       BAD_EVERY_NO_PREVIEW, BAD_PREVIEW_NO_TAESD, BAD_EVERY_ZERO, N_BAD };

START_TEST(test_bad_input) {
    const char *dec = test_shared(FAST "taesd_decoder.safetensors"), *enc = test_shared(FAST "taesd_encoder.safetensors");
    const char *img = test_shared("goldens/sd1-tiny/img2img_input.png");
    const char *png = test_tmp("bad%d.png", _i), *prev = test_tmp("badprev%d.png", _i);
    const char *missing_dir = test_tmp("no-such-dir/prev.png");
    char *out = NULL;
    const char *want = NULL;
    switch (_i) {
    case BAD_ENC_AS_DEC:
        out = run_exe(0, "--prompt", "x", "--steps", "2", "--taesd", enc, "-o", png, NULL);
        want = "not a TAESD decoder";
        break;
    case BAD_DEC_AS_ENC:
        out = run_exe(0, "--prompt", "x", "--steps", "2", "--init-image", img, "--taesd-encoder", dec, "-o", png, NULL);
        want = "not a TAESD encoder";
        break;
    case BAD_SHAPE:
        out = run_exe(0, "--prompt", "x", "--steps", "2", "--taesd", bad_decoder(0), "-o", png, NULL);
        want = "19.weight";
        break;
    case BAD_MISSING:
        out = run_exe(0, "--prompt", "x", "--steps", "2", "--taesd", bad_decoder(1), "-o", png, NULL);
        want = "decoder.layers.18.bias";
        break;
    case BAD_NO_FILE:
        out = run_exe(0, "--prompt", "x", "--steps", "2", "--taesd", test_tmp("nothing.safetensors"), "-o", png, NULL);
        want = "nothing.safetensors";
        break;
    case BAD_PREVIEW_DIR:
        out = run_exe(0, "--prompt", "x", "--steps", "2", "--taesd", dec, "--preview-every", "1", "--preview",
                      missing_dir, "-o", png, NULL);
        want = "does not exist";
        break;
    case BAD_PREVIEW_NO_EVERY:
        out = run_exe(0, "--prompt", "x", "--steps", "2", "--taesd", dec, "--preview", prev, "-o", png, NULL);
        want = "--preview needs --preview-every";
        break;
    case BAD_EVERY_NO_PREVIEW:
        out = run_exe(0, "--prompt", "x", "--steps", "2", "--taesd", dec, "--preview-every", "1", "-o", png, NULL);
        want = "--preview-every needs --preview";
        break;
    case BAD_PREVIEW_NO_TAESD:
        out = run_exe(0, "--prompt", "x", "--steps", "2", "--preview-every", "1", "--preview", prev, "-o", png, NULL);
        want = "TAESD decoder";
        break;
    case BAD_EVERY_ZERO:
        out = run_exe(0, "--prompt", "x", "--steps", "2", "--taesd", dec, "--preview-every", "0", "--preview", prev,
                      "-o", png, NULL);
        want = "--preview-every";
        break;
    }
    ck_assert_msg(strstr(out, want), "case %d: the message does not name '%s':\n%s", _i, want, out);
    ck_assert_msg(!test_exists(png), "case %d: %s was written", _i, png);
    ck_assert_msg(!test_exists(prev), "case %d: %s was written", _i, prev);
    ck_assert_msg(!test_exists(missing_dir), "case %d: %s was written", _i, missing_dir);
    free(out);
}
END_TEST

Suite *suite_taesd(void) {
    Suite *s = suite_create("taesd");
    TCase *tc = tcase_create("goldens");
    tcase_add_unchecked_fixture(tc, setup, teardown_nothing);
    tcase_add_loop_test(tc, test_decode_golden, 0, 5);
    tcase_add_loop_test(tc, test_encode_golden, 0, 2);
    tcase_set_timeout(tc, 600);
    suite_add_tcase(s, tc);

    tc = tcase_create("txt2img");
    tcase_add_unchecked_fixture(tc, setup, teardown_nothing);
    tcase_add_test(tc, test_exe_decode);
    tcase_add_test(tc, test_exe_diffusers_names);
    tcase_add_test(tc, test_exe_encoder);
    tcase_add_test(tc, test_preview);
    tcase_add_loop_test(tc, test_bad_input, 0, N_BAD);
    tcase_set_timeout(tc, 600);
    suite_add_tcase(s, tc);
    return s;
}
