/*
 * test_controlnet.c - ControlNet (models/sd1/controlnet.graph) and the UNet
 * it steers (models/sd1/unet.graph -D CONTROL=1), compiled by the ldmc
 * under test into graph runners and run as programs:
 *
 *   - against ../shared/goldens/sd1-controlnet (lllyasviel/ControlNet on a
 *     random ControlNet of sd1-tiny, F16 weights): controlnet.io (the hint
 *     embedding and all 13 residuals, 3 cases) and unet_controlled.io (eps
 *     from the stored residuals with scales 1.0, guess-mode 0.825^(12-j)
 *     and 0.5), each within its io file's tolerance; the full chain
 *     (ControlNet outputs fed to the UNet) within the same tolerance;
 *   - scales 0 give the plain UNet bit for bit (and eps_no_control within
 *     its tolerance);
 *   - batch 2 equals two batch-1 runs (ControlNet and controlled UNet);
 *   - a UNet config the goldens do not have (3 levels, 1 ResBlock each,
 *     64 channels, attention at one level, 4 heads: 7 residuals) at a
 *     non-square size (64x96) with random weights (ldmc randckpt): the
 *     residuals have the skips' shapes, scales 0 give the plain UNet
 *     exactly, scale 1 changes eps, batch 2 equals two batch-1 runs;
 *   - bad input: a ControlNet file with a tensor missing or of another
 *     config's shape: the runner names the tensor and the expected shape,
 *     exits non-zero and writes nothing.
 */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "image.h"
#include "safetensors.h"
#include "testio.h"
#include "testproc.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define CN_SAN 1 /* the executables built as the run is (make test SAN=1) */
#else
#define CN_SAN 0
#endif

#define NRES 13 /* residuals of the sd1-tiny ControlNet */

/* other config (3 levels, 1 ResBlock each: N = 1 + 2 + 2 + 1 + 1 = 7) */
#define OTHER_NRES 7
static const char *const k_other_defs[] = {
    "model.params.unet_config.params.num_res_blocks=1",   "model.params.unet_config.params.model_channels=64",
    "model.params.unet_config.params.channel_mult=[1,2,3]", "model.params.unet_config.params.attention_resolutions=[2]",
    "model.params.unet_config.params.num_heads=4",        NULL};

enum { R_CN, R_UC, R_UP, R_OCN, R_OUC, R_OUP, R_COUNT };

typedef struct Runner {
    const char *graph;   /* models/sd1/<graph>.graph */
    int H, W, other;     /* size; other: k_other_defs */
    const char *def;     /* one more -D (or NULL) */
    char path[300];
    int state;           /* 0 not built, 1 built, -1 failed */
    char *log;
} Runner;

static Runner g_r[R_COUNT] = {
    [R_CN] = {"controlnet", 128, 128, 0, "HINT_EMB=1", "", 0, NULL},
    [R_UC] = {"unet", 128, 128, 0, "CONTROL=1", "", 0, NULL},
    [R_UP] = {"unet", 128, 128, 0, NULL, "", 0, NULL},
    [R_OCN] = {"controlnet", 64, 96, 1, NULL, "", 0, NULL},
    [R_OUC] = {"unet", 64, 96, 1, "CONTROL=1", "", 0, NULL},
    [R_OUP] = {"unet", 64, 96, 1, NULL, "", 0, NULL},
};
static char g_other_unet[300], g_other_cn[300]; /* random checkpoints of the other config */

static const char *config_path(void) { return test_shared("goldens/sd1-tiny/config.yaml"); }
static const char *cn_weights(void) { return test_shared("goldens/sd1-controlnet/controlnet-fp16.safetensors"); }
static const char *unet_weights(void) { return test_shared("goldens/sd1-tiny/model.safetensors"); }
static const char *io_cn(void) { return test_shared("goldens/sd1-controlnet/controlnet.io.safetensors"); }
static const char *io_uc(void) { return test_shared("goldens/sd1-controlnet/unet_controlled.io.safetensors"); }

/* argv of ldmc for a runner or randckpt (strings static per call site) */
static int add_defs(char **argv, int k, int other, const char *def, char bufs[][96]) {
    int b = 0;
    if (other)
        for (int i = 0; k_other_defs[i]; i++) {
            argv[k++] = "-D";
            argv[k++] = (char *)k_other_defs[i];
        }
    if (def) {
        snprintf(bufs[b], 96, "%s", def);
        argv[k++] = "-D";
        argv[k++] = bufs[b++];
    }
    return k;
}

static void build_all(void) {
    test_dir_init("ldm_controlnet_");
    if (!test_dir[0] || g_r[R_CN].state) return;
    char ldmc[300];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    pid_t pids[R_COUNT + 2];
    char logs[R_COUNT + 2][320];
    static char bufs[R_COUNT][2][96], hd[R_COUNT][32], wd[R_COUNT][32], graph[R_COUNT][128];
    int running = 0;
    double t0 = ldm_now();
    for (int i = 0; i < R_COUNT + 2; i++) {
        char *argv[40];
        int k = 0;
        argv[k++] = ldmc;
        if (i < R_COUNT) {
            Runner *r = &g_r[i];
            snprintf(r->path, sizeof r->path, "%s/%s-%d%s%s", test_dir, r->graph, i, r->other ? "-other" : "",
                     r->def ? "-def" : "");
            snprintf(graph[i], sizeof graph[i], "models/sd1/%s.graph", r->graph);
            snprintf(hd[i], sizeof hd[i], "H=%d", r->H);
            snprintf(wd[i], sizeof wd[i], "W=%d", r->W);
            argv[k++] = graph[i];
            argv[k++] = "--config";
            argv[k++] = (char *)config_path();
            argv[k++] = "-D";
            argv[k++] = hd[i];
            argv[k++] = "-D";
            argv[k++] = wd[i];
            k = add_defs(argv, k, r->other, r->def, bufs[i]);
            argv[k++] = "-o";
            argv[k++] = r->path;
        } else {
            /* random weights of the other config: the UNet's, the ControlNet's */
            char *out = i == R_COUNT ? g_other_unet : g_other_cn;
            snprintf(out, 300, "%s/other-%s.safetensors", test_dir, i == R_COUNT ? "unet" : "controlnet");
            argv[k++] = "randckpt";
            argv[k++] = "--config";
            argv[k++] = (char *)config_path();
            k = add_defs(argv, k, 1, NULL, NULL);
            argv[k++] = "--dtype";
            argv[k++] = "f16";
            argv[k++] = "-o";
            argv[k++] = out;
            argv[k++] = i == R_COUNT ? "models/sd1/unet.graph" : "models/sd1/controlnet.graph";
        }
        argv[k] = NULL;
        snprintf(logs[i], sizeof logs[i], "%s/build-%d.log", test_dir, i);
        pids[running++] = test_spawn(argv, logs[i]);
        if (running == 2 || i == R_COUNT + 1) {
            for (int j = 0; j < running; j++) {
                int idx = i - running + 1 + j;
                int rc = test_wait_status(pids[j]);
                if (idx < R_COUNT) {
                    g_r[idx].state = rc == 0 ? 1 : -1;
                    if (rc) {
                        size_t n;
                        g_r[idx].log = ldm_read_file(logs[idx], &n);
                    }
                } else if (rc) {
                    (idx == R_COUNT ? g_other_unet : g_other_cn)[0] = 0;
                }
            }
            running = 0;
        }
    }
    printf("controlnet: ldmc built %d runners and 2 random checkpoints in %.1f s\n", R_COUNT, ldm_now() - t0);
    fflush(stdout);
}

static const char *runner(int id) {
    ck_assert_msg(g_r[id].state == 1, "ldmc %s.graph (%dx%d%s) failed:\n%s", g_r[id].graph, g_r[id].H, g_r[id].W,
                  g_r[id].other ? ", other config" : "", g_r[id].log ? g_r[id].log : "");
    return g_r[id].path;
}

static void teardown_nothing(void) {}

/* Run prog; 0 or its status with its messages in *err (malloc'd). */
static int run(const char *prog, const char *w, const char *in, const char *out, const char *prefix, int B,
               char **err) {
    char ext[32];
    snprintf(ext, sizeof ext, "B=%d", B);
    const char *extra[] = {"--extent", ext, NULL};
    return test_run_runner(prog, w, in, out, prefix, extra, err);
}

static void run_ok(const char *prog, const char *w, const char *in, const char *out, const char *prefix, int B) {
    char *err = NULL;
    int rc = run(prog, w, in, out, prefix, B, &err);
    ck_assert_msg(rc == 0, "%s failed (status %d) on %s %s:\n%s", prog, rc, in, prefix ? prefix : "", err);
    free(err);
}

/* |ours[name] - golden[gname]| within the golden's tolerance */
static void compare(const char *label, const char *ours, const char *name, const char *io, const char *gname) {
    int64_t n1, n2;
    float *a = read_f32(ours, name, &n1), *b = read_f32(io, gname, &n2);
    ck_assert_msg(n1 == n2, "%s: %s has %lld values, golden %s %lld", label, name, (long long)n1, gname, (long long)n2);
    double d = max_abs_diff(a, b, n1), tol = tolerance(io, gname);
    printf("controlnet: %-22s %-16s max|ours - golden| = %.3g (tolerance %.3g)\n", label, gname, d, tol);
    fflush(stdout);
    ck_assert_msg(d <= tol, "%s: %s: max|ours - golden| = %.6g > tolerance %.6g", label, gname, d, tol);
    free(a);
    free(b);
}

static int case_batch(int k) { return k == 0 ? 2 : 1; }

START_TEST(test_controlnet_golden) {
    char prefix[16], out[300];
    snprintf(prefix, sizeof prefix, "case%d.", _i);
    snprintf(out, sizeof out, "%s/cn-%d.safetensors", test_dir, _i);
    run_ok(runner(R_CN), cn_weights(), io_cn(), out, prefix, case_batch(_i));
    char g[64];
    snprintf(g, sizeof g, "%shint_emb", prefix);
    compare("controlnet.io", out, "hint_emb", io_cn(), g);
    for (int j = 0; j < NRES; j++) {
        char name[32];
        snprintf(name, sizeof name, "ctrl.%d", j);
        snprintf(g, sizeof g, "%s%s", prefix, name);
        compare("controlnet.io", out, name, io_cn(), g);
    }
}
END_TEST

START_TEST(test_unet_controlled_golden) {
    char prefix[16], out[300], g[64];
    snprintf(prefix, sizeof prefix, "case%d.", _i);
    snprintf(out, sizeof out, "%s/uc-%d.safetensors", test_dir, _i);
    run_ok(runner(R_UC), unet_weights(), io_uc(), out, prefix, case_batch(_i));
    snprintf(g, sizeof g, "%seps", prefix);
    compare("unet_controlled.io", out, "eps", io_uc(), g);
}
END_TEST

/* Copy tensors of file src (names prefix + n, or plain) into writer w under n. */
static void copy_tensors(StWriter *w, const char *src, const char *prefix, const char *const *names) {
    for (int i = 0; names[i]; i++) {
        char g[64];
        snprintf(g, sizeof g, "%s%s", prefix ? prefix : "", names[i]);
        StFile f;
        ck_assert_msg(st_open(&f, src) == 0, "%s", ldm_last_error());
        const StTensor *t = st_find(&f, g);
        ck_assert_msg(t, "%s: no tensor %s", src, g);
        float *v = ldm_xmalloc((size_t)t->numel * 4 + 4);
        ck_assert(st_to_f32(t, v) == 0);
        st_writer_add(w, names[i], ST_F32, t->ndim, t->shape, v);
        free(v);
        st_close(&f);
    }
}

static const char *const k_ctrl_names[] = {"ctrl.0", "ctrl.1", "ctrl.2",  "ctrl.3",  "ctrl.4",  "ctrl.5", "ctrl.6",
                                           "ctrl.7", "ctrl.8", "ctrl.9", "ctrl.10", "ctrl.11", "ctrl.12", NULL};

/* Full chain: x and the hint through our ControlNet, its residuals into our
 * controlled UNet, against eps (tolerance: README, the looser of the two
 * float64 re-runs, which covers the chain). */
START_TEST(test_chain_golden) {
    char prefix[16], cn[300], in[300], out[300], g[64];
    snprintf(prefix, sizeof prefix, "case%d.", _i);
    snprintf(cn, sizeof cn, "%s/chain-cn-%d.safetensors", test_dir, _i);
    snprintf(in, sizeof in, "%s/chain-in-%d.safetensors", test_dir, _i);
    snprintf(out, sizeof out, "%s/chain-out-%d.safetensors", test_dir, _i);
    run_ok(runner(R_CN), cn_weights(), io_uc(), cn, prefix, case_batch(_i));
    StWriter *w = st_writer_new();
    static const char *const ins[] = {"x", "timesteps", "context", "control_scales", NULL};
    copy_tensors(w, io_uc(), prefix, ins);
    copy_tensors(w, cn, NULL, k_ctrl_names);
    ck_assert_msg(st_writer_save(w, in) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    run_ok(runner(R_UC), unet_weights(), in, out, NULL, case_batch(_i));
    snprintf(g, sizeof g, "%seps", prefix);
    compare("chain", out, "eps", io_uc(), g);
}
END_TEST

/* Inputs file for the controlled UNet: case k of unet_controlled.io with
 * every scale set to s. */
static void write_scaled(const char *path, int k, float s) {
    char prefix[16];
    snprintf(prefix, sizeof prefix, "case%d.", k);
    StWriter *w = st_writer_new();
    static const char *const ins[] = {"x", "timesteps", "context", NULL};
    copy_tensors(w, io_uc(), prefix, ins);
    copy_tensors(w, io_uc(), prefix, k_ctrl_names);
    float sc[NRES];
    for (int j = 0; j < NRES; j++) sc[j] = s;
    int64_t shape[1] = {NRES};
    st_writer_add(w, "control_scales", ST_F32, 1, shape, sc);
    ck_assert_msg(st_writer_save(w, path) == 0, "%s", ldm_last_error());
    st_writer_free(w);
}

/* Scales 0 (strength 0): the plain UNet, bit for bit, and eps_no_control. */
START_TEST(test_strength_zero) {
    char in[300], out[300], plain[300];
    snprintf(in, sizeof in, "%s/zero-in.safetensors", test_dir);
    snprintf(out, sizeof out, "%s/zero-out.safetensors", test_dir);
    snprintf(plain, sizeof plain, "%s/zero-plain.safetensors", test_dir);
    write_scaled(in, 0, 0.0f);
    run_ok(runner(R_UC), unet_weights(), in, out, NULL, 2);
    run_ok(runner(R_UP), unet_weights(), io_uc(), plain, "case0.", 2);
    ck_assert_msg(same_tensor(out, plain, "eps"), "scales 0 differ from the plain UNet");
    compare("strength 0", out, "eps", io_uc(), "case0.eps_no_control");
}
END_TEST

/* Sample s (0/1) of a B=2 file's tensors as a B=1 file. */
static void write_sample(const char *src, const char *prefix, const char *dst, int s, const char *const *batched,
                         const char *const *whole) {
    StWriter *w = st_writer_new();
    for (int i = 0; batched[i]; i++) {
        char g[64];
        snprintf(g, sizeof g, "%s%s", prefix ? prefix : "", batched[i]);
        StFile f;
        ck_assert_msg(st_open(&f, src) == 0, "%s", ldm_last_error());
        const StTensor *t = st_find(&f, g);
        ck_assert_msg(t && t->shape[0] == 2, "%s: %s missing or not batch 2", src, g);
        float *v = ldm_xmalloc((size_t)t->numel * 4 + 4);
        ck_assert(st_to_f32(t, v) == 0);
        int64_t shape[ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        shape[0] = 1;
        st_writer_add(w, batched[i], ST_F32, t->ndim, shape, v + s * (t->numel / 2));
        free(v);
        st_close(&f);
    }
    if (whole) copy_tensors(w, src, prefix, whole);
    ck_assert_msg(st_writer_save(w, dst) == 0, "%s", ldm_last_error());
    st_writer_free(w);
}

/* max |batch-2 run, sample s - batch-1 run on sample s| over outputs */
static double batch_diff(const char *b2, const char *b1, int s, const char *const *outs) {
    double m = 0;
    for (int i = 0; outs[i]; i++) {
        int64_t n2, n1;
        float *a = read_f32(b2, outs[i], &n2), *b = read_f32(b1, outs[i], &n1);
        ck_assert_int_eq(n2, 2 * n1);
        double d = max_abs_diff(a + s * n1, b, n1);
        if (d > m) m = d;
        free(a);
        free(b);
    }
    return m;
}

/* Batch 2 = two batch-1 runs: the ControlNet and the controlled UNet on
 * case0 (two samples with their own hint and context); bound: the smallest
 * tolerance of the outputs (fp32 summation order may differ with B). */
START_TEST(test_batch_independence) {
    char b2[300], b1[300], in1[300];
    static const char *const cn_in[] = {"x", "hint", "timesteps", "context", NULL};
    static const char *const uc_in[] = {"x", "timesteps", "context", "ctrl.0", "ctrl.1", "ctrl.2", "ctrl.3", "ctrl.4",
                                        "ctrl.5", "ctrl.6", "ctrl.7", "ctrl.8", "ctrl.9", "ctrl.10", "ctrl.11",
                                        "ctrl.12", NULL};
    static const char *const scales[] = {"control_scales", NULL}, *const eps[] = {"eps", NULL};
    snprintf(b2, sizeof b2, "%s/bi-cn2.safetensors", test_dir);
    run_ok(runner(R_CN), cn_weights(), io_cn(), b2, "case0.", 2);
    for (int s = 0; s < 2; s++) {
        snprintf(in1, sizeof in1, "%s/bi-cn-in%d.safetensors", test_dir, s);
        snprintf(b1, sizeof b1, "%s/bi-cn1-%d.safetensors", test_dir, s);
        write_sample(io_cn(), "case0.", in1, s, cn_in, NULL);
        run_ok(runner(R_CN), cn_weights(), in1, b1, NULL, 1);
        double d = batch_diff(b2, b1, s, k_ctrl_names), tol = tolerance(io_cn(), "case0.ctrl.0");
        printf("controlnet: batch: ControlNet sample %d: max|B=2 - B=1| = %.3g (bound %.3g)\n", s, d, tol);
        ck_assert_msg(d <= tol, "ControlNet sample %d: batch 2 differs from batch 1 by %.6g", s, d);
    }
    snprintf(b2, sizeof b2, "%s/bi-uc2.safetensors", test_dir);
    run_ok(runner(R_UC), unet_weights(), io_uc(), b2, "case0.", 2);
    for (int s = 0; s < 2; s++) {
        snprintf(in1, sizeof in1, "%s/bi-uc-in%d.safetensors", test_dir, s);
        snprintf(b1, sizeof b1, "%s/bi-uc1-%d.safetensors", test_dir, s);
        write_sample(io_uc(), "case0.", in1, s, uc_in, scales);
        run_ok(runner(R_UC), unet_weights(), in1, b1, NULL, 1);
        double d = batch_diff(b2, b1, s, eps), tol = tolerance(io_uc(), "case0.eps");
        printf("controlnet: batch: controlled UNet sample %d: max|B=2 - B=1| = %.3g (bound %.3g)\n", s, d, tol);
        ck_assert_msg(d <= tol, "controlled UNet sample %d: batch 2 differs from batch 1 by %.6g", s, d);
    }
}
END_TEST

/* Deterministic pseudo-random values in [-a, a]. */
static void fill(float *v, int64_t n, uint32_t seed, float a) {
    uint32_t s = seed * 2654435761u + 12345u;
    for (int64_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        v[i] = a * ((float)(s >> 8) / 8388608.0f - 1.0f);
    }
}

static void add_random(StWriter *w, const char *name, int ndim, const int64_t *shape, uint32_t seed, float a) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *v = ldm_xmalloc((size_t)n * 4);
    fill(v, n, seed, a);
    st_writer_add(w, name, ST_F32, ndim, shape, v);
    free(v);
}

/* The other config at 64x96 (latent 8x12), batch 2, random weights. */
START_TEST(test_other_config) {
    ck_assert_msg(g_other_unet[0] && g_other_cn[0], "ldmc randckpt failed (see %s/build-*.log)", test_dir);
    char in[300], cn[300], uin[300], uc[300], up[300], uc1[300], uz[300];
    snprintf(in, sizeof in, "%s/o-in.safetensors", test_dir);
    snprintf(cn, sizeof cn, "%s/o-cn.safetensors", test_dir);
    StWriter *w = st_writer_new();
    const int64_t xs[4] = {2, 4, 8, 12}, hs[4] = {2, 3, 64, 96}, ts[1] = {2}, cs[3] = {2, 77, 64};
    add_random(w, "x", 4, xs, 1, 1.5f);
    float *hint = ldm_xmalloc(2 * 3 * 64 * 96 * 4);
    fill(hint, 2 * 3 * 64 * 96, 2, 0.5f);
    for (int i = 0; i < 2 * 3 * 64 * 96; i++) hint[i] += 0.5f; /* [0, 1] */
    st_writer_add(w, "hint", ST_F32, 4, hs, hint);
    free(hint);
    float t[2] = {901, 101};
    st_writer_add(w, "timesteps", ST_F32, 1, ts, t);
    add_random(w, "context", 3, cs, 3, 1.0f);
    ck_assert_msg(st_writer_save(w, in) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    run_ok(runner(R_OCN), g_other_cn, in, cn, NULL, 2);
    /* residual shapes: the skips' (input blocks at 8x12, 4x6, 2x3), then the middle block */
    static const int64_t want[OTHER_NRES][3] = {{64, 8, 12},  {64, 8, 12},  {64, 4, 6}, {128, 4, 6},
                                                {128, 2, 3}, {192, 2, 3}, {192, 2, 3}};
    StFile f;
    ck_assert_msg(st_open(&f, cn) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, OTHER_NRES);
    for (int j = 0; j < OTHER_NRES; j++) {
        char name[32];
        snprintf(name, sizeof name, "ctrl.%d", j);
        const StTensor *r = st_find(&f, name);
        ck_assert_msg(r && r->ndim == 4 && r->shape[0] == 2 && r->shape[1] == want[j][0] && r->shape[2] == want[j][1] &&
                          r->shape[3] == want[j][2],
                      "other config: %s missing or of the wrong shape", name);
    }
    st_close(&f);
    /* the controlled UNet at scales 1 and 0, the plain one */
    snprintf(uin, sizeof uin, "%s/o-uin.safetensors", test_dir);
    snprintf(uz, sizeof uz, "%s/o-uz.safetensors", test_dir);
    snprintf(uc, sizeof uc, "%s/o-uc.safetensors", test_dir);
    snprintf(up, sizeof up, "%s/o-up.safetensors", test_dir);
    static const char *const base[] = {"x", "timesteps", "context", NULL};
    static const char *const ctrl7[] = {"ctrl.0", "ctrl.1", "ctrl.2", "ctrl.3", "ctrl.4", "ctrl.5", "ctrl.6", NULL};
    const int64_t ss[1] = {OTHER_NRES};
    float one[OTHER_NRES], zero[OTHER_NRES];
    for (int j = 0; j < OTHER_NRES; j++) one[j] = 1.0f, zero[j] = 0.0f;
    for (int z = 0; z < 2; z++) {
        w = st_writer_new();
        copy_tensors(w, in, NULL, base);
        copy_tensors(w, cn, NULL, ctrl7);
        st_writer_add(w, "control_scales", ST_F32, 1, ss, z ? zero : one);
        ck_assert_msg(st_writer_save(w, z ? uz : uin) == 0, "%s", ldm_last_error());
        st_writer_free(w);
    }
    run_ok(runner(R_OUC), g_other_unet, uin, uc, NULL, 2);
    snprintf(uc1, sizeof uc1, "%s/o-uc-zero.safetensors", test_dir);
    run_ok(runner(R_OUC), g_other_unet, uz, uc1, NULL, 2);
    run_ok(runner(R_OUP), g_other_unet, in, up, NULL, 2);
    ck_assert_msg(same_tensor(uc1, up, "eps"), "other config: scales 0 differ from the plain UNet");
    int64_t n;
    float *a = read_f32(uc, "eps", &n), *b = read_f32(up, "eps", NULL);
    double d = max_abs_diff(a, b, n);
    for (int64_t i = 0; i < n; i++) ck_assert_msg(isfinite(a[i]), "other config: eps not finite");
    printf("controlnet: other config 64x96: max|eps(control) - eps(plain)| = %.3g\n", d);
    ck_assert_msg(d > 1e-3, "other config: the control changes nothing");
    free(a);
    free(b);
    /* batch 2 = two batch-1 runs of the ControlNet */
    static const char *const cn_in[] = {"x", "hint", "timesteps", "context", NULL};
    for (int s = 0; s < 2; s++) {
        char in1[300], o1[300];
        snprintf(in1, sizeof in1, "%s/o-in1-%d.safetensors", test_dir, s);
        snprintf(o1, sizeof o1, "%s/o-cn1-%d.safetensors", test_dir, s);
        write_sample(in, NULL, in1, s, cn_in, NULL);
        run_ok(runner(R_OCN), g_other_cn, in1, o1, NULL, 1);
        double db = batch_diff(cn, o1, s, ctrl7);
        printf("controlnet: other config: batch: sample %d: max|B=2 - B=1| = %.3g\n", s, db);
        ck_assert_msg(db <= 1e-4, "other config: ControlNet sample %d: batch 2 differs from batch 1 by %.6g", s, db);
    }
}
END_TEST

/* A checkpoint = the golden ControlNet with one tensor dropped, or with the
 * other config's weights (an SD-2-like mismatch: shapes of another UNet). */
START_TEST(test_bad_weights) {
    char bad[300], out[300], *err = NULL;
    snprintf(bad, sizeof bad, "%s/cn-missing.safetensors", test_dir);
    snprintf(out, sizeof out, "%s/badw-out.safetensors", test_dir);
    StFile f;
    ck_assert_msg(st_open(&f, cn_weights()) == 0, "%s", ldm_last_error());
    StWriter *w = st_writer_new();
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        if (!strcmp(t->name, "zero_convs.5.0.weight")) continue;
        st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    ck_assert_msg(st_writer_save(w, bad) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    st_close(&f);
    int rc = run(runner(R_CN), bad, io_cn(), out, "case1.", 1, &err);
    ck_assert_msg(rc != 0 && strstr(err, "zero_convs.5.0.weight") && strstr(err, bad), "missing tensor: status %d:\n%s",
                  rc, err);
    ck_assert_msg(!test_exists(out), "an output was written");
    free(err);
    ck_assert_msg(g_other_cn[0], "ldmc randckpt failed");
    rc = run(runner(R_CN), g_other_cn, io_cn(), out, "case1.", 1, &err);
    ck_assert_msg(rc != 0 && strstr(err, "shape") && strstr(err, "expected"), "other config's ControlNet: status %d:\n%s",
                  rc, err);
    ck_assert_msg(!test_exists(out), "an output was written");
    printf("controlnet: bad weights: %s", err);
    free(err);
}
END_TEST


/* ------------------------------------------------------------------------
 * the executable: make txt2img ... CONTROLNET=1
 * ------------------------------------------------------------------------ */

static char g_exe[600], g_plain[600]; /* the CONTROLNET=1 sd1-tiny executable, the plain one */
static char *g_exe_log, *g_plain_log;

static void build_exe(void) {
    build_all(); /* the other config's random ControlNet (bad input) */
    if (!test_dir[0] || g_exe[0] || g_exe_log) return;
    double t0 = ldm_now();
    char build[320], config[600], logf[400];
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(config, sizeof config, "CONFIG=%s", config_path());
    snprintf(logf, sizeof logf, "%s/make-cn.log", test_dir);
    char *argv[] = {"make", "-s", "-j2", build, CN_SAN ? "SAN=1" : "SAN=0", "txt2img", config, "H=128", "W=128", "CONTROLNET=1",
                    "TXT2IMG_NAME=txt2img-test-sd1-tiny-cn", NULL};
    int rc = test_wait_status(test_spawn(argv, logf));
    snprintf(g_exe, sizeof g_exe, "%s/txt2img-test-sd1-tiny-cn", test_build_dir());
    if (rc != 0 || access(g_exe, X_OK) != 0) {
        size_t n;
        g_exe[0] = 0;
        g_exe_log = ldm_read_file(logf, &n);
        if (!g_exe_log) g_exe_log = ldm_xasprintf("make exited with status %d", rc);
    }
    test_build_sd1_tiny_txt2img(CN_SAN, g_plain, sizeof g_plain, &g_plain_log);
    printf("controlnet: make txt2img CONTROLNET=1 (and the plain one) in %.1f s\n", ldm_now() - t0);
    fflush(stdout);
}

static const char *exe(void) {
    ck_assert_msg(g_exe[0], "make txt2img CONTROLNET=1 failed:\n%s", g_exe_log ? g_exe_log : "");
    return g_exe;
}

/* Run argv (NULL-terminated, after the program); status, output in *out. */
static int run_exe(const char *prog, char **out, ...) {
    char *argv[64];
    int k = 0;
    argv[k++] = (char *)prog;
    va_list ap;
    va_start(ap, out);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && k < 63) argv[k++] = (char *)a;
    va_end(ap);
    argv[k] = NULL;
    return test_run(argv, out);
}

/* x_T of an io file as a --init-noise file */
static const char *noise_file(const char *io, const char *tensor, const char *dst) {
    StFile f;
    ck_assert_msg(st_open(&f, io) == 0, "%s", ldm_last_error());
    const StTensor *t = st_find(&f, tensor);
    ck_assert_msg(t && t->dtype == ST_F32, "%s: no F32 %s", io, tensor);
    StWriter *w = st_writer_new();
    st_writer_add(w, "noise", ST_F32, t->ndim, t->shape, t->data);
    ck_assert_msg(st_writer_save(w, dst) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    st_close(&f);
    return dst;
}

static const char *hint_png(void) { return test_shared("goldens/sd1-controlnet/hint_edges.png"); }

/* txt2img_ddim_controlnet (normal, _i = 0) and _guess (_i = 1): latent
 * within the io file's tolerance, PNG within 1 level of the golden's. */
START_TEST(test_txt2img_golden) {
    const char *name = _i ? "txt2img_ddim_controlnet_guess" : "txt2img_ddim_controlnet";
    char rel[200];
    snprintf(rel, sizeof rel, "goldens/sd1-controlnet/%s.io.safetensors", name);
    const char *io = test_shared(rel);
    char *prompt = meta(io, "prompt"), *uncond = meta(io, "uncond_prompt"), *steps = meta(io, "steps");
    char *scale = meta(io, "guidance_scale"), *strength = meta(io, "strength"), *hint = meta(io, "hint");
    ck_assert_msg(strstr(hint, "hint_edges.png"), "%s: hint is %s", io, hint);
    const char *noise = noise_file(io, "x_T", test_tmp("%s-noise.safetensors", name));
    const char *lat = test_tmp("%s-latent.safetensors", name), *png = test_tmp("%s.png", name);
    char *out;
    int rc = run_exe(exe(), &out, "--weights", unet_weights(), "--prompt", prompt, "--negative-prompt", uncond,
                     "--steps", steps, "--cfg-scale", scale, "--sampler", "ddim", "--init-noise", noise, "--control-net",
                     cn_weights(), "--control-image", hint_png(), "--control-strength", strength,
                     _i ? "--guess-mode" : "--quiet", "--save-latent", lat, "-o", png, NULL);
    ck_assert_msg(rc == 0, "%s: status %d:\n%s", name, rc, out);
    free(out);
    compare(name, lat, "latent", io, "latent");
    snprintf(rel, sizeof rel, "goldens/sd1-controlnet/%s.png", name);
    int pd = png_max_diff(png, test_shared(rel));
    printf("controlnet: %s PNG max diff %d (at most 1)\n", name, pd);
    ck_assert_msg(pd <= 1, "%s: PNG differs from the golden by %d levels", name, pd);
    /* the infotext names the ControlNet as the webui's extension does */
    char *info = NULL;
    ck_assert_msg(ldm_png_read_text(png, "parameters", &info) == 1, "%s: no parameters chunk", png);
    ck_assert_msg(strstr(info, "ControlNet 0: \"Module: none, Model: controlnet-fp16, Weight: 1.0, Control Mode: ") &&
                      strstr(info, _i ? "ControlNet is more important" : "Balanced"),
                  "%s: infotext without the ControlNet: %s", png, info);
    free(info);
    free(prompt), free(uncond), free(steps), free(scale), free(strength), free(hint);
}
END_TEST

/* A few steps with common settings; the latent into lat. extra: more flags (NULL-terminated list). */
static void quick(const char *prog, const char *lat, const char *const *extra) {
    char *argv[64], *out;
    int k = 0;
    const char *base[] = {"--weights", unet_weights(), "--prompt", "a red fox", "--steps", "4", "--seed", "5",
                          "--quiet", "--save-latent", lat, "-o", test_tmp("q-%d.png", (int)getpid()), NULL};
    argv[k++] = (char *)prog;
    for (int i = 0; base[i]; i++) argv[k++] = (char *)base[i];
    for (int i = 0; extra && extra[i]; i++) argv[k++] = (char *)extra[i];
    argv[k] = NULL;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "%s: status %d:\n%s", prog, rc, out);
    free(out);
}

/* Without --control-net the executable is the plain one (bit for bit);
 * --control-strength 0 too; the control_model. prefix loads the same
 * weights; the control changes the result. */
START_TEST(test_txt2img_consistency) {
    ck_assert_msg(g_plain[0], "the plain txt2img did not build:\n%s", g_plain_log ? g_plain_log : "");
    const char *plain = test_tmp("c-plain.safetensors"), *none = test_tmp("c-none.safetensors");
    const char *zero = test_tmp("c-zero.safetensors"), *one = test_tmp("c-one.safetensors");
    const char *pre = test_tmp("c-prefix.safetensors"), *prefixed = test_tmp("cn-prefixed.safetensors");
    quick(g_plain, plain, NULL);
    quick(exe(), none, NULL);
    ck_assert_msg(same_latent(plain, none), "without --control-net the latent differs from the plain executable's");
    const char *z[] = {"--control-net", cn_weights(), "--control-image", hint_png(), "--control-strength", "0", NULL};
    quick(exe(), zero, z);
    ck_assert_msg(same_latent(plain, zero), "--control-strength 0 differs from the plain executable");
    const char *c1[] = {"--control-net", cn_weights(), "--control-image", hint_png(), NULL};
    quick(exe(), one, c1);
    ck_assert_msg(!same_latent(plain, one), "the ControlNet changed nothing");
    /* the same file with every key under control_model. */
    StFile f;
    ck_assert_msg(st_open(&f, cn_weights()) == 0, "%s", ldm_last_error());
    StWriter *w = st_writer_new();
    for (int i = 0; i < f.n_tensors; i++) {
        char name[300];
        snprintf(name, sizeof name, "control_model.%s", f.tensors[i].name);
        st_writer_add(w, name, f.tensors[i].dtype, f.tensors[i].ndim, f.tensors[i].shape, f.tensors[i].data);
    }
    ck_assert_msg(st_writer_save(w, prefixed) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    st_close(&f);
    const char *c2[] = {"--control-net", prefixed, "--control-image", hint_png(), NULL};
    quick(exe(), pre, c2);
    ck_assert_msg(same_latent(one, pre), "the control_model. prefixed file gives another latent");
    printf("controlnet: txt2img: no ControlNet and strength 0 = the plain executable; prefixed keys = plain keys\n");
}
END_TEST

/* img2img, k-samplers, several prompt chunks, guess mode at cfg 1: they run,
 * and the ControlNet changes each (against the same run without it). */
START_TEST(test_txt2img_features) {
    const char *img = test_shared("goldens/sd1-tiny/img2img_input.png");
    static const char *const runs[][8] = {
        {"--init-image", "IMG", "--strength", "0.6", NULL},
        {"--sampler", "dpmpp_2m", "--schedule", "karras", NULL},
        {"--sampler", "euler_a", "--negative-prompt", "(blurry:1.3), BREAK lowres", NULL},
        {"--cfg-scale", "1", NULL},
    };
    for (int r = 0; r < 4; r++) {
        const char *ex[16];
        int k = 0;
        for (int i = 0; runs[r][i]; i++) ex[k++] = strcmp(runs[r][i], "IMG") ? runs[r][i] : img;
        ex[k] = NULL;
        const char *a = test_tmp("f-%d-plain.safetensors", r), *b = test_tmp("f-%d-cn.safetensors", r);
        quick(exe(), a, ex);
        ex[k++] = "--control-net", ex[k++] = cn_weights(), ex[k++] = "--control-image", ex[k++] = hint_png();
        ex[k++] = r == 3 ? "--guess-mode" : "--control-strength", ex[k++] = r == 3 ? NULL : "0.7";
        ex[k] = NULL;
        quick(exe(), b, ex);
        int64_t n;
        float *x = read_f32(b, "latent", &n);
        for (int64_t i = 0; i < n; i++) ck_assert_msg(isfinite(x[i]), "run %d: latent not finite", r);
        free(x);
        ck_assert_msg(!same_latent(a, b), "run %d: the ControlNet changed nothing", r);
    }
}
END_TEST

/* Bad input: error naming what and where, non-zero exit, no output. */
START_TEST(test_txt2img_bad) {
    char *out;
    const char *png = test_tmp("bad.png");
    /* a hint of another size */
    uint8_t px[64 * 32 * 3] = {0};
    const char *small = test_tmp("hint-64x32.png");
    ck_assert(ldm_png_write_rgb8(small, px, 64, 32) == 0);
    int rc = run_exe(exe(), &out, "--weights", unet_weights(), "--prompt", "x", "--steps", "2", "--control-net",
                     cn_weights(), "--control-image", small, "-o", png, NULL);
    ck_assert_msg(rc != 0 && strstr(out, "64x32") && strstr(out, "128x128") && strstr(out, small), "size: %d:\n%s", rc,
                  out);
    ck_assert(!test_exists(png));
    free(out);
    /* an unreadable hint */
    const char *junk = test_tmp("junk.png");
    FILE *fp = fopen(junk, "w");
    fputs("not a png", fp);
    fclose(fp);
    rc = run_exe(exe(), &out, "--weights", unet_weights(), "--prompt", "x", "--control-net", cn_weights(),
                 "--control-image", junk, "-o", png, NULL);
    ck_assert_msg(rc != 0 && strstr(out, junk) && strstr(out, "--control-image"), "junk: %d:\n%s", rc, out);
    ck_assert(!test_exists(png));
    free(out);
    /* strengths that are not finite numbers */
    const char *bad_s[] = {"nan", "inf", "-inf", "1e999", "abc", ""};
    for (int i = 0; i < 6; i++) {
        rc = run_exe(exe(), &out, "--weights", unet_weights(), "--prompt", "x", "--control-net", cn_weights(),
                     "--control-image", hint_png(), "--control-strength", bad_s[i], "-o", png, NULL);
        ck_assert_msg(rc != 0 && strstr(out, "--control-strength"), "strength '%s': %d:\n%s", bad_s[i], rc, out);
        ck_assert(!test_exists(png));
        free(out);
    }
    /* a ControlNet missing a tensor, one of another UNet config */
    const char *missing = test_tmp("cn-missing-tensor.safetensors");
    StFile f;
    ck_assert_msg(st_open(&f, cn_weights()) == 0, "%s", ldm_last_error());
    StWriter *w = st_writer_new();
    for (int i = 0; i < f.n_tensors; i++)
        if (strcmp(f.tensors[i].name, "input_hint_block.14.bias"))
            st_writer_add(w, f.tensors[i].name, f.tensors[i].dtype, f.tensors[i].ndim, f.tensors[i].shape,
                          f.tensors[i].data);
    ck_assert_msg(st_writer_save(w, missing) == 0, "%s", ldm_last_error());
    st_writer_free(w);
    st_close(&f);
    rc = run_exe(exe(), &out, "--weights", unet_weights(), "--prompt", "x", "--control-net", missing, "--control-image",
                 hint_png(), "-o", png, NULL);
    ck_assert_msg(rc != 0 && strstr(out, "input_hint_block.14.bias") && strstr(out, missing), "missing: %d:\n%s", rc, out);
    ck_assert(!test_exists(png));
    free(out);
    ck_assert_msg(g_other_cn[0], "ldmc randckpt failed");
    rc = run_exe(exe(), &out, "--weights", unet_weights(), "--prompt", "x", "--control-net", g_other_cn,
                 "--control-image", hint_png(), "-o", png, NULL);
    ck_assert_msg(rc != 0 && strstr(out, g_other_cn) && strstr(out, "expected") && strstr(out, "ControlNet"),
                  "other config: %d:\n%s", rc, out);
    ck_assert(!test_exists(png));
    printf("controlnet: txt2img bad input: %s", out);
    free(out);
    /* flags without --control-net; --control-net in a build without ControlNet */
    rc = run_exe(exe(), &out, "--weights", unet_weights(), "--prompt", "x", "--guess-mode", "-o", png, NULL);
    ck_assert_msg(rc != 0 && strstr(out, "--guess-mode needs --control-net"), "%d:\n%s", rc, out);
    free(out);
    ck_assert_msg(g_plain[0], "the plain txt2img did not build");
    rc = run_exe(g_plain, &out, "--weights", unet_weights(), "--prompt", "x", "--control-net", cn_weights(),
                 "--control-image", hint_png(), "-o", png, NULL);
    ck_assert_msg(rc != 0 && strstr(out, "CONTROLNET=1"), "plain build: %d:\n%s", rc, out);
    ck_assert(!test_exists(png));
    free(out);
}
END_TEST

Suite *suite_controlnet(void) {
    Suite *s = suite_create("controlnet");
    TCase *tc = tcase_create("golden");
    tcase_add_unchecked_fixture(tc, build_all, teardown_nothing);
    tcase_set_timeout(tc, 900);
    tcase_add_loop_test(tc, test_controlnet_golden, 0, 3);
    tcase_add_loop_test(tc, test_unet_controlled_golden, 0, 3);
    tcase_add_loop_test(tc, test_chain_golden, 0, 3);
    tcase_add_test(tc, test_strength_zero);
    tcase_add_test(tc, test_batch_independence);
    tcase_add_test(tc, test_other_config);
    tcase_add_test(tc, test_bad_weights);
    suite_add_tcase(s, tc);
    tc = tcase_create("txt2img");
    tcase_add_unchecked_fixture(tc, build_exe, teardown_nothing);
    tcase_set_timeout(tc, 900);
    tcase_add_loop_test(tc, test_txt2img_golden, 0, 2);
    tcase_add_test(tc, test_txt2img_consistency);
    tcase_add_test(tc, test_txt2img_features);
    tcase_add_test(tc, test_txt2img_bad);
    suite_add_tcase(s, tc);
    return s;
}
