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
#include "model.h"
#include "safetensors.h"
#include "sampler.h"
#include "schedule.h"
#include "testio.h"
#include "testproc.h"
#include "testutil.h"
#include "tokenizer.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define SD2_SAN 1
#else
#define SD2_SAN 0
#endif

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
    char *log;
    int rc = test_run_runner(prog, weights, inputs, out, prefix, NULL, &log);
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

/* The text tower's accounting against the real file: every tensor
 * `ldmc --dump` lists as present but unused is in the checkpoint with its
 * shape, and read + unused = every cond_stage_model.* parameter the
 * checkpoint holds (the --stats line says both). */
START_TEST(test_sd2_clip_unused) {
    char cfg[512], w[512], ldmc[256];
    sd2(cfg, sizeof cfg, "v2-inference-v.yaml");
    sd2(w, sizeof w, "model.safetensors");
    test_dir_init("ldm_sd2_");
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    char *argv[] = {ldmc, "models/sd1/clip_text.graph", "--config", cfg, "--dump", "--stats", NULL};
    char *out;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "ldmc --dump --stats failed:\n%s", out);
    StFile f;
    ck_assert_msg(st_open(&f, w) == 0, "%s", ldm_last_error());
    int64_t held = 0, unused = 0;
    int n_unused = 0;
    for (int i = 0; i < f.n_tensors; i++)
        if (!strncmp(f.tensors[i].name, "cond_stage_model.", 17)) held += f.tensors[i].numel;
    for (char *p = strstr(out, "\nunused "); p; p = strstr(p + 1, "\nunused ")) {
        char name[256], shape[64];
        ck_assert(sscanf(p + 8, "%255s %63s", name, shape) == 2);
        const StTensor *t = st_find(&f, name);
        ck_assert_msg(t, "--dump says the checkpoint holds '%s' unused; it does not", name);
        char sb[64];
        ldm_shape_str(t->ndim, t->shape, sb, sizeof sb);
        char *o = sb; /* "[192, 64]" as the dump writes it, "[192,64]" */
        for (const char *q = sb; *q; q++)
            if (*q != ' ') *o++ = *q;
        *o = 0;
        ck_assert_msg(!strcmp(sb, shape), "'%s': --dump says %s, the checkpoint %s", name, shape, sb);
        unused += t->numel;
        n_unused++;
    }
    /* layer penultimate of a 3-block tower: block 2's 12 tensors, text_projection, logit_scale */
    ck_assert_int_eq(n_unused, 14);
    char want[256];
    snprintf(want, sizeof want, "reads %lld of the %lld parameters a checkpoint holds for it: %d tensors (%lld",
             (long long)(held - unused), (long long)held, n_unused, (long long)unused);
    ck_assert_msg(strstr(out, want), "--stats lacks '%s':\n%s", want, out);
    st_close(&f);
    free(out);
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

/* ---- schedule ------------------------------------------------------------------ */

/* got[0..n) within max_ulps of tensor `name` of the io file. */
static void check_ulps(const char *io, const char *name, const float *got, int64_t n, int max_ulps) {
    int64_t ng;
    float *g = read_f32(io, name, &ng);
    ck_assert_msg(ng == n, "%s: %s has %lld values, expected %lld", io, name, (long long)ng, (long long)n);
    for (int64_t i = 0; i < n; i++) {
        double ulp = fabs(nextafterf(g[i], INFINITY) - g[i]);
        double d = fabs((double)got[i] - (double)g[i]);
        ck_assert_msg(d <= max_ulps * ulp, "%s[%lld]: ours %.9g, golden %.9g (%.1f ulps)", name, (long long)i,
                      (double)got[i], (double)g[i], d / ulp);
    }
    free(g);
}

/* schedule.io: the SD v1 schedule from the config's values, and the
 * checkpoint buffers the DDIM v branch reads (sqrt in float64, rounded). */
START_TEST(test_sd2_schedule) {
    char io[512];
    sd2(io, sizeof io, "schedule.io.safetensors");
    LdmSchedule s;
    ck_assert_msg(ldm_schedule_init(&s, 0.00085, 0.012, 1000) == 0, "%s", ldm_last_error());
    check_ulps(io, "betas", s.betas, 1000, 1);
    check_ulps(io, "alphas_cumprod", s.alphas_cumprod, 1000, 1);
    check_ulps(io, "sqrt_alphas_cumprod", s.sqrt_alphas_cumprod, 1000, 1);
    check_ulps(io, "sqrt_one_minus_alphas_cumprod", s.sqrt_one_minus_alphas_cumprod, 1000, 1);
    check_ulps(io, "kdiff_sigmas", s.sigmas, 1000, 1);
    LdmDdim d;
    ck_assert_msg(ldm_ddim_make(&s, 10, 0.0, &d) == 0, "%s", ldm_last_error());
    int64_t nt;
    int32_t *ts = read_i32(io, "ddim_timesteps", &nt);
    ck_assert_int_eq(nt, 10);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(d.timesteps[i], ts[i]);
    free(ts);
    check_ulps(io, "ddim_alphas", d.alphas, 10, 1);
    check_ulps(io, "ddim_alphas_prev", d.alphas_prev, 10, 1);
    float sig[11];
    ck_assert_int_eq(ldm_kdiff_sigmas(&s, LDM_SIGMAS_DISCRETE, 10, sig), 0);
    check_ulps(io, "kdiff_sigmas_euler10", sig, 11, 1);
    ldm_ddim_free(&d);
    ldm_schedule_free(&s);
}
END_TEST

/* ---- v-prediction in every sampler --------------------------------------------- */

/* A smooth stand-in for a guided UNet: eps(x, t) = 0.3 x + 0.2 sin(x + t / 150).
 * Its v twin returns v = sqrt(a) eps - sqrt(1 - a) x0 of the same model, with
 * x0 = (x - sqrt(1 - a) eps) / sqrt(a) and a = 1 / (1 + sigma(t)^2) (the
 * DDPM point the sampler evaluates the model at: x is the VP-space latent,
 * c_in x for the k-samplers). Every sampler must then give the same
 * latent with v_pred = 1 on the twin as with v_pred = 0 on eps, up to
 * float32 rounding. */
typedef struct FakeModel {
    const LdmSchedule *s;
    int v;
} FakeModel;

static int fake_model(void *ctx, const float *x, float t, float *out) {
    const FakeModel *m = ctx;
    double sigma = ldm_t_to_sigma(m->s, t), a = 1.0 / (1.0 + sigma * sigma);
    for (int64_t j = 0; j < 2 * 4 * 6 * 5; j++) {
        double e = 0.3 * x[j] + 0.2 * sin(x[j] + t / 150.0);
        if (m->v) {
            double x0 = (x[j] - sqrt(1.0 - a) * e) / sqrt(a);
            e = sqrt(a) * e - sqrt(1.0 - a) * x0;
        }
        out[j] = (float)e;
    }
    return 0;
}

typedef struct FakeNoise {
    uint64_t state;
} FakeNoise;

static void fake_noise(void *ctx, float *out, int64_t n) {
    FakeNoise *z = ctx;
    for (int64_t i = 0; i < n; i++) {
        z->state = z->state * 6364136223846793005ull + 1442695040888963407ull;
        out[i] = (float)((double)(z->state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
}

/* mode 0 txt2img, 1 img2img (strength 0.6), 2 inpainting (a mask, strength 1) */
static void run_fake(const LdmSchedule *s, LdmSamplerKind kind, int mode, int v, float *x) {
    enum { N = 2 * 4 * 6 * 5, PLANE = 6 * 5 };
    static float init[N], mask[PLANE];
    for (int j = 0; j < N; j++) init[j] = (float)sin(0.37 * j);
    for (int j = 0; j < PLANE; j++) mask[j] = j % 3 == 0 ? 1.0f : j % 3 == 1 ? 0.0f : 0.5f;
    FakeModel m = {s, v};
    FakeNoise z = {12345};
    LdmSampler p;
    memset(&p, 0, sizeof p);
    p.kind = kind;
    p.steps = 8;
    p.sigmas = LDM_SIGMAS_DISCRETE;
    p.seed = 7;
    p.n = N;
    p.eps_fn = fake_model;
    p.eps_ctx = &m;
    p.noise_fn = fake_noise;
    p.noise_ctx = &z;
    p.v_pred = v;
    if (mode >= 1) {
        p.init_latent = init;
        p.strength = mode == 1 ? 0.6 : 1.0;
    }
    if (mode == 2) {
        p.mask = mask;
        p.plane = PLANE;
    }
    fake_noise(&z, x, N); /* x_T (or the img2img noise) */
    ck_assert_msg(ldm_sample(s, &p, x) == 0, "%s mode %d v %d: %s", ldm_sampler_name(kind), mode, v, ldm_last_error());
}

START_TEST(test_sd2_vpred_samplers) {
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    const LdmSamplerKind *all;
    int n = ldm_sampler_all(&all);
    enum { N = 2 * 4 * 6 * 5 };
    for (int k = 0; k < n; k++)
        for (int mode = 0; mode < 3; mode++) {
            float a[N], b[N];
            run_fake(&s, all[k], mode, 0, a);
            run_fake(&s, all[k], mode, 1, b);
            double m = 0;
            for (int j = 0; j < N; j++) m = fmax(m, fabs(a[j]));
            double d = max_abs_diff(a, b, N);
            /* a few float32 roundings per step, over 8 steps */
            ck_assert_msg(d <= 1e-4 * fmax(m, 1.0), "%s (%s): v model gives max |diff| %.3g (max |x| %.3g)",
                          ldm_sampler_name(all[k]), mode == 0 ? "txt2img" : mode == 1 ? "img2img" : "inpainting", d, m);
        }
    ldm_schedule_free(&s);
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

/* ---- txt2img, end to end ----------------------------------------------------- */

/* The sd2-tiny executables at 96x96 as a user builds them (make txt2img
 * CONFIG=.../v2-inference[-v].yaml H=96 W=96; TAESD=0, which these tests do
 * not use), in the build directory under test. */
static char g_exe[2][600];       /* [0] eps (v2-inference.yaml), [1] v (v2-inference-v.yaml); "" if make failed */
static char *g_exe_log[2];

static void build_exe(int v) {
    char build[300], config[600], name[64], logf[700], rel[64];
    test_dir_init("ldm_sd2_");
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(rel, sizeof rel, "v2-inference%s.yaml", v ? "-v" : "");
    snprintf(config, sizeof config, "CONFIG=%s/goldens/sd2-tiny/%s", test_shared_dir(), rel);
    snprintf(name, sizeof name, "TXT2IMG_NAME=txt2img-test-sd2-tiny-%s", v ? "v" : "eps");
    snprintf(g_exe[v], sizeof g_exe[v], "%s/txt2img-test-sd2-tiny-%s", test_build_dir(), v ? "v" : "eps");
    char *argv[] = {"make", "-s", "-j2", build, SD2_SAN ? "SAN=1" : "SAN=0", "txt2img", config, "H=96", "W=96", "TAESD=0",
                    name, NULL};
    snprintf(logf, sizeof logf, "%s/make-sd2-%d.log", test_dir, v);
    int rc = test_wait_status(test_spawn(argv, logf));
    if (rc != 0 || access(g_exe[v], X_OK) != 0) {
        size_t len;
        g_exe[v][0] = 0;
        g_exe_log[v] = ldm_read_file(logf, &len);
        if (!g_exe_log[v]) g_exe_log[v] = ldm_xasprintf("make exited with status %d", rc);
    }
}

static void setup_exes(void) {
    if (!g_exe[0][0] && !g_exe_log[0]) build_exe(0);
    if (!g_exe[1][0] && !g_exe_log[1]) build_exe(1);
}

/* The first string of a JSON list of strings in the io file's metadata. */
static char *meta_first(const char *io, const char *key) {
    char *m = meta(io, key);
    json_error_t err;
    json_t *j = json_loads(m, 0, &err);
    ck_assert_msg(json_is_array(j) && json_is_string(json_array_get(j, 0)), "%s: metadata %s: %s", io, key, m);
    char *s = ldm_xstrdup(json_string_value(json_array_get(j, 0)));
    json_decref(j);
    free(m);
    return s;
}

typedef struct T2iCase {
    const char *name;      /* io file stem and PNG */
    int v;                 /* the v executable */
    const char *sampler;
} T2iCase;

static const T2iCase k_t2i[] = {
    {"txt2img_ddim_eps", 0, "ddim"},
    {"txt2img_ddim_v", 1, "ddim"},
    {"txt2img_euler_v", 1, "euler"},
};

/* x_T through --init-noise, the prompts, steps and guidance scale of the
 * metadata: --save-latent within the io file's latent tolerance, the PNG
 * within one level of the golden PNG (the PNG rounding of a value within
 * the image tolerance can differ by one). */
START_TEST(test_sd2_txt2img) {
    const T2iCase *c = &k_t2i[_i];
    const char *exe = g_exe[c->v];
    ck_assert_msg(exe[0], "make txt2img (sd2-tiny %s) failed:\n%s", c->v ? "v" : "eps",
                  g_exe_log[c->v] ? g_exe_log[c->v] : "");
    char io[512], gpng[512], rel[128], noise[700], latent[700], png[700];
    snprintf(rel, sizeof rel, "%s.io.safetensors", c->name);
    sd2(io, sizeof io, rel);
    snprintf(rel, sizeof rel, "%s.png", c->name);
    sd2(gpng, sizeof gpng, rel);
    char *param = meta(io, "parameterization");
    ck_assert_str_eq(param, c->v ? "v" : "eps");
    free(param);
    char *prompt = meta_first(io, "prompts"), *neg = meta_first(io, "negative_prompts");
    char *steps = meta(io, "steps"), *scale = meta(io, "guidance_scale");
    snprintf(noise, sizeof noise, "%s/%s-noise.safetensors", test_dir, c->name);
    snprintf(latent, sizeof latent, "%s/%s-latent.safetensors", test_dir, c->name);
    snprintf(png, sizeof png, "%s/%s.png", test_dir, c->name);
    {
        StFile f;
        ck_assert_msg(st_open(&f, io) == 0, "%s", ldm_last_error());
        const StTensor *t = st_find(&f, "x_T");
        ck_assert(t && t->dtype == ST_F32);
        StWriter *w = st_writer_new();
        st_writer_add(w, "noise", ST_F32, t->ndim, t->shape, t->data);
        ck_assert_msg(st_writer_save(w, noise) == 0, "%s", ldm_last_error());
        st_writer_free(w);
        st_close(&f);
    }
    char w[512];
    sd2(w, sizeof w, "model.safetensors");
    /* k-diffusion: get_sigmas(10), the discrete schedule (DDIM: no schedule) */
    int kdiff = !strcmp(c->sampler, "euler");
    char *argv[] = {(char *)exe, "--weights", w, "--prompt", prompt, "--negative-prompt", neg, "--steps", steps,
                    "--cfg-scale", scale, "--sampler", (char *)c->sampler, "--init-noise", noise, "--save-latent",
                    latent, "-o", png, "--quiet", kdiff ? "--schedule" : NULL, "discrete", NULL};
    char *out;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "%s failed (status %d):\n%s", exe, rc, out);
    free(out);
    int64_t n, ng;
    float *ours = read_f32(latent, "latent", &n), *gold = read_f32(io, "latent", &ng);
    ck_assert_int_eq(n, ng);
    double d = max_abs_diff(ours, gold, n), tol = tolerance(io, "latent");
    int pd = png_max_diff(png, gpng);
    printf("sd2: %-24s latent max|ours - golden| = %.3g (tolerance %.3g), PNG max diff %d\n", c->name, d, tol, pd);
    fflush(stdout);
    ck_assert_msg(d <= tol, "%s: latent max |ours - golden| = %.6g > %.6g", c->name, d, tol);
    ck_assert_msg(pd <= 1, "%s: PNG differs from the golden by %d levels (at most 1 allowed)", c->name, pd);
    free(ours);
    free(gold);
    free(prompt);
    free(neg);
    free(steps);
    free(scale);
}
END_TEST

/* ---- bad input ------------------------------------------------------------------ */

static char g_sd1_exe[600];
static char *g_sd1_log;

static void setup_family(void) {
    setup_exes();
    if (!g_sd1_exe[0] && !g_sd1_log) test_build_sd1_tiny_txt2img(SD2_SAN, g_sd1_exe, sizeof g_sd1_exe, &g_sd1_log);
}

/* A checkpoint of the other family is refused before any work: status 1,
 * the file, the family it looks like, the one the executable was built
 * for, the make command for the file; no output file. */
START_TEST(test_sd2_family) {
    char sd1[512], sd2w[512], png[600];
    snprintf(sd1, sizeof sd1, "%s/goldens/sd1-tiny/model.safetensors", test_shared_dir());
    sd2(sd2w, sizeof sd2w, "model.safetensors");
    const char *exe = _i == 0 ? g_exe[1] : g_sd1_exe;
    ck_assert_msg(exe[0], "the %s executable was not built:\n%s", _i == 0 ? "sd2-tiny" : "sd1-tiny",
                  _i == 0 ? (g_exe_log[1] ? g_exe_log[1] : "") : (g_sd1_log ? g_sd1_log : ""));
    snprintf(png, sizeof png, "%s/family-%d.png", test_dir, _i);
    char *argv[] = {(char *)exe, "--weights", _i == 0 ? sd1 : sd2w, "-p", "a cat", "--steps", "2", "-o", png, NULL};
    char *out;
    double t0 = ldm_now();
    int rc = test_run(argv, &out);
    double dt = ldm_now() - t0;
    ck_assert_msg(rc == 1, "status %d, expected 1:\n%s", rc, out);
    const char *want0[] = {sd1, "looks like Stable Diffusion v1", "cond_stage_model.transformer",
                           "built for Stable Diffusion 2.x", "make txt2img CONFIG=models/sd1/v1-inference.yaml", NULL};
    const char *want1[] = {sd2w, "looks like Stable Diffusion 2.x", "cond_stage_model.model.token_embedding.weight",
                           "built for Stable Diffusion v1", "CONFIG=models/sd2/v2-inference-v.yaml",
                           "CONFIG=models/sd2/v2-inference.yaml", NULL};
    const char *const *want = _i == 0 ? want0 : want1;
    for (int k = 0; want[k]; k++) ck_assert_msg(strstr(out, want[k]), "message lacks '%s':\n%s", want[k], out);
    ck_assert_msg(!strstr(out, "step 1/"), "it sampled before refusing:\n%s", out);
    ck_assert_msg(access(png, F_OK) != 0, "%s was written", png);
    printf("sd2: family check %d refused in %.2f s\n", _i, dt);
    free(out);
}
END_TEST

/* ldmc names the key and the accepted values. */
START_TEST(test_sd2_bad_config) {
    char cfg[512], ldmc[256], out[600];
    sd2(cfg, sizeof cfg, "v2-inference-v.yaml");
    test_dir_init("ldm_sd2_");
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    snprintf(out, sizeof out, "%s/bad-%d.c", test_dir, _i);
    static const char *cases[][4] = {
        {"pipeline", "model.params.parameterization=x0", "model.params.parameterization: 'x0' is not supported",
         "\"v\""},
        {"pipeline", "model.params.cond_stage_config.params.layer=middle",
         "model.params.cond_stage_config.params.layer: unknown layer 'middle'", "\"penultimate\""},
        {"models/sd1/clip_text.graph", "model.params.cond_stage_config.target=my.TextEncoder",
         "model.params.cond_stage_config.target: \"my.TextEncoder\" is not a text encoder",
         "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder"},
        {"models/sd1/clip_text.graph", "model.params.cond_stage_config.params.layer=middle",
         "model.params.cond_stage_config.params.layer: expected \"last\" or \"penultimate\", got \"middle\"", "error"},
        {"models/sd1/clip_text.graph", "model.params.cond_stage_config.params.arch=ViT-Q-99",
         "\"ViT-Q-99\" is not an open_clip model config", "open_clip_model_config"},
    };
    const char *const *c = cases[_i];
    /* the arch names the sizes only when no open_clip_model_config does (the real config) */
    if (_i == 4) snprintf(cfg, sizeof cfg, "models/sd2/v2-inference-v.yaml");
    char *argv[16];
    int k = 0;
    argv[k++] = ldmc;
    argv[k++] = (char *)c[0];
    argv[k++] = "--config";
    argv[k++] = cfg;
    if (!strcmp(c[0], "pipeline")) {
        argv[k++] = "-D";
        argv[k++] = "H=96";
        argv[k++] = "-D";
        argv[k++] = "W=96";
    }
    argv[k++] = "-D";
    argv[k++] = (char *)c[1];
    argv[k++] = "-o";
    argv[k++] = out;
    argv[k] = NULL;
    char *log;
    int rc = test_run(argv, &log);
    ck_assert_msg(rc == 1, "ldmc %s -D %s: status %d, expected 1:\n%s", c[0], c[1], rc, log);
    ck_assert_msg(strstr(log, c[2]) && strstr(log, c[3]), "ldmc %s -D %s: message lacks '%s' / '%s':\n%s", c[0], c[1],
                  c[2], c[3], log);
    ck_assert_msg(access(out, F_OK) != 0, "%s was written", out);
    free(log);
}
END_TEST

/* ---- the same graphs on SD 2 configurations the goldens do not have -------------- */

/* Another SD 2.x-style model: 64 channels, channel_mult [1, 2], 2 res blocks,
 * 32 channels per head (2 and 4 heads), transformer depth 2, a 96-wide
 * context from a 4-block OpenCLIP tower with 3 heads; LINEAR and LAYER
 * filled in. */
static const char *k_unseen_yaml =
    "model:\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    parameterization: \"v\"\n"
    "    linear_start: 0.00085\n"
    "    linear_end: 0.0120\n"
    "    timesteps: 1000\n"
    "    image_size: 64\n"
    "    channels: 4\n"
    "    conditioning_key: crossattn\n"
    "    scale_factor: 0.18215\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params:\n"
    "        use_fp16: false\n"
    "        image_size: 32\n"
    "        in_channels: 4\n"
    "        out_channels: 4\n"
    "        model_channels: 64\n"
    "        attention_resolutions: [2, 1]\n"
    "        num_res_blocks: 2\n"
    "        channel_mult: [1, 2]\n"
    "        num_head_channels: 32\n"
    "        use_spatial_transformer: true\n"
    "        use_linear_in_transformer: %s\n"
    "        transformer_depth: 2\n"
    "        context_dim: 96\n"
    "        legacy: false\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 4\n"
    "        ddconfig: {double_z: true, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: 32,\n"
    "                   ch_mult: [1, 1, 1, 1], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}\n"
    "    cond_stage_config:\n"
    "      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder\n"
    "      params: {freeze: true, layer: \"%s\"}\n"
    "      open_clip_model_config:\n"
    "        embed_dim: 48\n"
    "        text_cfg: {context_length: 77, vocab_size: 49408, width: 96, heads: 3, layers: 4}\n";

static char g_cfg[2][600];        /* [0] linear projections, layer penultimate; [1] 1x1 convs, layer last */
static char g_ckpt[600];          /* randckpt of cfg 0 (unet, clip_text) */
static char g_ckpt_conv[600];     /* the same weights with proj_in/proj_out as [C, C, 1, 1] */
enum { U_B2, U_B1, U_64x96, U_96x64, U_CONV, C_PEN, C_LAST, N_UNSEEN };
static char g_unseen[N_UNSEEN][600];
static char *g_unseen_log;

static void unseen_fail(const char *what, char *log) {
    if (!g_unseen_log) g_unseen_log = ldm_xasprintf("%s:\n%s", what, log ? log : "");
    free(log);
}

/* The configs, a random checkpoint of their shapes, its 1x1-conv twin, and
 * the runners (an unchecked fixture: built once, in the parent). */
static void setup_unseen(void) {
    test_dir_init("ldm_sd2_");
    if (!test_dir[0] || g_ckpt[0] || g_unseen_log) return;
    for (int k = 0; k < 2; k++) {
        snprintf(g_cfg[k], sizeof g_cfg[k], "%s/unseen-%d.yaml", test_dir, k);
        FILE *fp = fopen(g_cfg[k], "w");
        if (!fp) {
            unseen_fail("fopen", NULL);
            return;
        }
        fprintf(fp, k_unseen_yaml, k ? "false" : "true", k ? "last" : "penultimate");
        fclose(fp);
    }
    char ldmc[256];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    snprintf(g_ckpt, sizeof g_ckpt, "%s/unseen.safetensors", test_dir);
    char *argv[] = {ldmc, "randckpt", "--config", g_cfg[0], "--dtype", "f32", "--seed", "3", "-o", g_ckpt,
                    "models/sd1/unet.graph", "models/sd1/clip_text.graph", NULL};
    char *log;
    if (test_run(argv, &log) != 0) {
        unseen_fail("ldmc randckpt", log);
        return;
    }
    free(log);
    /* proj_in / proj_out [C, C] -> [C, C, 1, 1]: the SD v1 layout of the same numbers */
    StFile f;
    if (st_open(&f, g_ckpt) != 0) {
        unseen_fail("st_open", ldm_xstrdup(ldm_last_error()));
        return;
    }
    StWriter *w = st_writer_new();
    int n_proj = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        size_t len = strlen(t->name);
        int proj = t->ndim == 2 && len > 14 &&
                   (!strcmp(t->name + len - 14, "proj_in.weight") || !strcmp(t->name + len - 15, "proj_out.weight"));
        int64_t shape[4] = {t->shape[0], t->ndim > 1 ? t->shape[1] : 0, 1, 1};
        st_writer_add(w, t->name, t->dtype, proj ? 4 : t->ndim, proj ? shape : t->shape, t->data);
        n_proj += proj;
    }
    snprintf(g_ckpt_conv, sizeof g_ckpt_conv, "%s/unseen-conv.safetensors", test_dir);
    int rc = st_writer_save(w, g_ckpt_conv);
    st_writer_free(w);
    st_close(&f);
    /* 3 levels with attention x (2 input + 3 output blocks, + middle) ... at least 2 per block */
    if (rc != 0 || n_proj < 20) {
        unseen_fail("the 1x1-conv checkpoint", ldm_xasprintf("%d projections", n_proj));
        return;
    }
    static const struct {
        const char *graph;
        int cfg;
        const char *defs[4];
    } runners[N_UNSEEN] = {
        [U_B2] = {"unet", 0, {"B=2", "H=64", "W=96", NULL}},
        [U_B1] = {"unet", 0, {"B=1", "H=64", "W=96", NULL}},
        [U_64x96] = {"unet", 0, {"B=1", "H=64", "W=96", NULL}},
        [U_96x64] = {"unet", 0, {"B=1", "H=96", "W=64", NULL}},
        [U_CONV] = {"unet", 1, {"B=2", "H=64", "W=96", NULL}},
        [C_PEN] = {"clip_text", 0, {"B=2", "CLIP_SKIPS=3", NULL}},
        [C_LAST] = {"clip_text", 1, {"B=2", "CLIP_SKIPS=2", NULL}},
    };
    for (int r = 0; r < N_UNSEEN; r++) {
        char name[32];
        snprintf(name, sizeof name, "unseen-%d", r);
        if (r == U_64x96) { /* the same build as U_B1 */
            snprintf(g_unseen[r], sizeof g_unseen[r], "%s", g_unseen[U_B1]);
            continue;
        }
        if (try_compile(name, runners[r].graph, g_cfg[runners[r].cfg], runners[r].defs, g_unseen[r],
                        sizeof g_unseen[r], &log) != 0) {
            unseen_fail(name, log);
            return;
        }
        free(log);
    }
}

static void need_unseen(void) {
    ck_assert_msg(!g_unseen_log, "setting up the unseen-config runners failed: %s", g_unseen_log);
    ck_assert_msg(g_ckpt[0] && g_unseen[C_LAST][0], "the unseen-config runners were not built");
}

static float rnd(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* UNet inputs for batch b of [b, 4, h, w] (h, w latent), seeded. */
static void write_unet_inputs(const char *path, int b, int h, int w, uint64_t seed, float *x_out) {
    uint64_t s = seed;
    int64_t nx = (int64_t)b * 4 * h * w, nc = (int64_t)b * 77 * 96;
    float *x = ldm_xmalloc((size_t)nx * 4), *t = ldm_xmalloc((size_t)b * 4), *c = ldm_xmalloc((size_t)nc * 4);
    for (int64_t i = 0; i < nx; i++) x[i] = 1.5f * rnd(&s);
    for (int i = 0; i < b; i++) t[i] = i ? 250.5f : 901.0f;
    for (int64_t i = 0; i < nc; i++) c[i] = rnd(&s);
    if (x_out) memcpy(x_out, x, (size_t)nx * 4);
    StWriter *wr = st_writer_new();
    st_writer_add(wr, "x", ST_F32, 4, (int64_t[]){b, 4, h, w}, x);
    st_writer_add(wr, "timesteps", ST_F32, 1, (int64_t[]){b}, t);
    st_writer_add(wr, "context", ST_F32, 3, (int64_t[]){b, 77, 96}, c);
    ck_assert_msg(st_writer_save(wr, path) == 0, "%s", ldm_last_error());
    st_writer_free(wr);
    free(x);
    free(t);
    free(c);
}

static double max_abs(const float *v, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(v[i]));
    return m;
}

/* Linear proj_in/proj_out on tokens = the SD v1 layout's 1x1 convolutions on
 * the same numbers: the use_linear_in_transformer: false build on the
 * reshaped checkpoint gives the same output (float32 rounding apart). */
START_TEST(test_sd2_unseen_linear_vs_conv) {
    need_unseen();
    char in[700], o1[700], o2[700];
    snprintf(in, sizeof in, "%s/unseen-in-b2.safetensors", test_dir);
    snprintf(o1, sizeof o1, "%s/unseen-out-lin.safetensors", test_dir);
    snprintf(o2, sizeof o2, "%s/unseen-out-conv.safetensors", test_dir);
    write_unet_inputs(in, 2, 8, 12, 11, NULL);
    run_runner(g_unseen[U_B2], g_ckpt, in, NULL, o1);
    run_runner(g_unseen[U_CONV], g_ckpt_conv, in, NULL, o2);
    int64_t n;
    float *a = read_f32(o1, "eps", &n), *b = read_f32(o2, "eps", NULL);
    double m = max_abs(a, n), d = max_abs_diff(a, b, n);
    printf("sd2: unseen config, linear vs 1x1-conv projections: max |diff| %.3g (max |eps| %.3g)\n", d, m);
    ck_assert_msg(m > 0.01, "the output is degenerate (max |eps| %g)", m);
    ck_assert_msg(d <= 1e-5 * fmax(m, 1.0), "linear vs 1x1-conv projections: max |diff| %.6g", d);
    free(a);
    free(b);
}
END_TEST

/* Batch 2 = two batch-1 runs (each sample's prediction is its own). */
START_TEST(test_sd2_unseen_batch) {
    need_unseen();
    char in[700], in1[700], o[700], o1[700];
    snprintf(in, sizeof in, "%s/unseen-in-b2b.safetensors", test_dir);
    snprintf(o, sizeof o, "%s/unseen-out-b2.safetensors", test_dir);
    write_unet_inputs(in, 2, 8, 12, 5, NULL);
    run_runner(g_unseen[U_B2], g_ckpt, in, NULL, o);
    int64_t n;
    float *both = read_f32(o, "eps", &n);
    /* sample k alone: its x, timestep and context */
    float *x = read_f32(in, "x", NULL), *t = read_f32(in, "timesteps", NULL), *c = read_f32(in, "context", NULL);
    double worst = 0, m = max_abs(both, n);
    for (int k = 0; k < 2; k++) {
        snprintf(in1, sizeof in1, "%s/unseen-in-b1-%d.safetensors", test_dir, k);
        snprintf(o1, sizeof o1, "%s/unseen-out-b1-%d.safetensors", test_dir, k);
        StWriter *wr = st_writer_new();
        st_writer_add(wr, "x", ST_F32, 4, (int64_t[]){1, 4, 8, 12}, x + (int64_t)k * 4 * 8 * 12);
        st_writer_add(wr, "timesteps", ST_F32, 1, (int64_t[]){1}, t + k);
        st_writer_add(wr, "context", ST_F32, 3, (int64_t[]){1, 77, 96}, c + (int64_t)k * 77 * 96);
        ck_assert_msg(st_writer_save(wr, in1) == 0, "%s", ldm_last_error());
        st_writer_free(wr);
        run_runner(g_unseen[U_B1], g_ckpt, in1, NULL, o1);
        int64_t n1;
        float *one = read_f32(o1, "eps", &n1);
        ck_assert_int_eq(2 * n1, n);
        worst = fmax(worst, max_abs_diff(one, both + k * n1, n1));
        free(one);
    }
    printf("sd2: unseen config, batch 2 vs two batch-1 runs: max |diff| %.3g (max |eps| %.3g)\n", worst, m);
    ck_assert_msg(worst <= 1e-5 * fmax(m, 1.0), "batch 2 vs batch 1: max |diff| %.6g", worst);
    free(both);
    free(x);
    free(t);
    free(c);
}
END_TEST

/* Non-square: the 96-wide, 64-high build on x against the 64-wide, 96-high
 * build on x transposed with every 3x3 kernel transposed gives the output
 * transposed (attention over tokens has no positions, the rest is
 * convolutions and per-channel ops). */
START_TEST(test_sd2_unseen_nonsquare) {
    need_unseen();
    char in[700], inT[700], ckT[700], o[700], oT[700];
    snprintf(in, sizeof in, "%s/unseen-in-ns.safetensors", test_dir);
    snprintf(inT, sizeof inT, "%s/unseen-in-nsT.safetensors", test_dir);
    snprintf(ckT, sizeof ckT, "%s/unseen-T.safetensors", test_dir);
    snprintf(o, sizeof o, "%s/unseen-out-ns.safetensors", test_dir);
    snprintf(oT, sizeof oT, "%s/unseen-out-nsT.safetensors", test_dir);
    enum { H = 8, W = 12 };
    float x[4 * H * W], xT[4 * H * W];
    write_unet_inputs(in, 1, H, W, 9, x);
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) xT[(c * W + j) * H + i] = x[(c * H + i) * W + j];
    float *t = read_f32(in, "timesteps", NULL), *ctx = read_f32(in, "context", NULL);
    StWriter *wr = st_writer_new();
    st_writer_add(wr, "x", ST_F32, 4, (int64_t[]){1, 4, W, H}, xT);
    st_writer_add(wr, "timesteps", ST_F32, 1, (int64_t[]){1}, t);
    st_writer_add(wr, "context", ST_F32, 3, (int64_t[]){1, 77, 96}, ctx);
    ck_assert_msg(st_writer_save(wr, inT) == 0, "%s", ldm_last_error());
    st_writer_free(wr);
    free(t);
    free(ctx);
    /* every k x k kernel (k > 1) transposed */
    StFile f;
    ck_assert_msg(st_open(&f, g_ckpt) == 0, "%s", ldm_last_error());
    wr = st_writer_new();
    int n_conv = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *tt = &f.tensors[i];
        if (tt->ndim != 4 || tt->shape[2] == 1) {
            st_writer_add(wr, tt->name, tt->dtype, tt->ndim, tt->shape, tt->data);
            continue;
        }
        int64_t kh = tt->shape[2], kw = tt->shape[3], oi = tt->shape[0] * tt->shape[1];
        float *src = ldm_xmalloc(tt->nbytes), *dst = ldm_xmalloc(tt->nbytes);
        memcpy(src, tt->data, tt->nbytes);
        for (int64_t m = 0; m < oi; m++)
            for (int64_t a = 0; a < kh; a++)
                for (int64_t b = 0; b < kw; b++) dst[m * kh * kw + b * kh + a] = src[m * kh * kw + a * kw + b];
        st_writer_add(wr, tt->name, ST_F32, 4, (int64_t[]){tt->shape[0], tt->shape[1], kw, kh}, dst);
        free(src);
        free(dst);
        n_conv++;
    }
    ck_assert_int_gt(n_conv, 10);
    ck_assert_msg(st_writer_save(wr, ckT) == 0, "%s", ldm_last_error());
    st_writer_free(wr);
    st_close(&f);
    run_runner(g_unseen[U_64x96], g_ckpt, in, NULL, o);
    run_runner(g_unseen[U_96x64], ckT, inT, NULL, oT);
    int64_t n;
    float *a = read_f32(o, "eps", &n), *b = read_f32(oT, "eps", NULL);
    ck_assert_int_eq(n, 4 * H * W);
    double worst = 0, m = max_abs(a, n);
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++)
                worst = fmax(worst, fabs((double)a[(c * H + i) * W + j] - (double)b[(c * W + j) * H + i]));
    printf("sd2: unseen config, 64x96 vs transposed 96x64: max |diff| %.3g (max |eps| %.3g)\n", worst, m);
    ck_assert_msg(m > 0.01, "the output is degenerate (max |eps| %g)", m);
    ck_assert_msg(worst <= 1e-5 * fmax(m, 1.0), "64x96 vs transposed 96x64: max |diff| %.6g", worst);
    free(a);
    free(b);
}
END_TEST

/* The tower with 4 blocks and 3 heads: layer "penultimate" (hidden =
 * ln_final after 3 blocks) equals layer "last"'s CLIP skip 2, and its own
 * skip 2 and 3 are the earlier blocks' ln_final (those of layer last's
 * skip 3 ... ). */
START_TEST(test_sd2_unseen_layers) {
    need_unseen();
    char in[700], o1[700], o2[700];
    snprintf(in, sizeof in, "%s/unseen-tokens.safetensors", test_dir);
    snprintf(o1, sizeof o1, "%s/unseen-clip-pen.safetensors", test_dir);
    snprintf(o2, sizeof o2, "%s/unseen-clip-last.safetensors", test_dir);
    ClipTokenizer *tk = clip_tokenizer_load_builtin();
    int32_t ids[2 * 77];
    ck_assert_int_eq(clip_tokenize_style(tk, &clip_style_openclip, "a fox in the snow", 77, ids, NULL), 0);
    ck_assert_int_eq(clip_tokenize_style(tk, &clip_style_openclip, "", 77, ids + 77, NULL), 0);
    clip_tokenizer_free(tk);
    StWriter *wr = st_writer_new();
    st_writer_add(wr, "tokens", ST_I32, 2, (int64_t[]){2, 77}, ids);
    ck_assert_msg(st_writer_save(wr, in) == 0, "%s", ldm_last_error());
    st_writer_free(wr);
    run_runner(g_unseen[C_PEN], g_ckpt, in, NULL, o1);
    run_runner(g_unseen[C_LAST], g_ckpt, in, NULL, o2);
    int64_t n, ns1, ns2;
    float *h = read_f32(o1, "hidden", &n), *s1 = read_f32(o1, "hidden_skip", &ns1), *s2 = read_f32(o2, "hidden_skip", &ns2);
    float *hl = read_f32(o2, "hidden", NULL);
    ck_assert_int_eq(ns1, 3 * n);
    ck_assert_int_eq(ns2, 2 * n);
    double d = max_abs_diff(h, s2 + n, n), m = max_abs(h, n), dl = max_abs_diff(h, hl, n);
    printf("sd2: unseen config, layer penultimate vs layer last skip 2: max |diff| %.3g; vs layer last %.3g\n", d, dl);
    ck_assert_msg(d <= 1e-5 * fmax(m, 1.0), "penultimate vs last, skip 2: max |diff| %.6g", d);
    ck_assert_msg(dl > 1e-3, "layer last gives the penultimate layer's output");
    ck_assert_msg(memcmp(h, s1, (size_t)n * 4) == 0, "hidden_skip[0] is not hidden");
    free(h);
    free(s1);
    free(s2);
    free(hl);
}
END_TEST

Suite *suite_sd2(void) {
    Suite *s = suite_create("sd2");
    TCase *tc = tcase_create("tokens");
    tcase_add_test(tc, test_sd2_tokens);
    suite_add_tcase(s, tc);
    tc = tcase_create("schedule");
    tcase_add_test(tc, test_sd2_schedule);
    tcase_add_test(tc, test_sd2_vpred_samplers);
    suite_add_tcase(s, tc);
    tc = tcase_create("bad_config");
    tcase_add_loop_test(tc, test_sd2_bad_config, 0, 5);
    suite_add_tcase(s, tc);
    tc = tcase_create("clip");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_sd2_clip, 0, 2);
    tcase_add_test(tc, test_sd2_pooled);
    tcase_add_test(tc, test_sd2_clip_unused);
    suite_add_tcase(s, tc);
    tc = tcase_create("unet");
    tcase_set_timeout(tc, 600);
    tcase_add_unchecked_fixture(tc, setup_unet, teardown_nothing);
    tcase_add_loop_test(tc, test_sd2_unet, 0, 4);
    suite_add_tcase(s, tc);
    return s;
}

Suite *suite_sd2_txt2img(void) {
    Suite *s = suite_create("sd2_txt2img");
    TCase *tc = tcase_create("goldens");
    tcase_set_timeout(tc, 900);
    tcase_add_unchecked_fixture(tc, setup_exes, teardown_nothing);
    tcase_add_loop_test(tc, test_sd2_txt2img, 0, (int)(sizeof k_t2i / sizeof k_t2i[0]));
    suite_add_tcase(s, tc);
    tc = tcase_create("family");
    tcase_set_timeout(tc, 900);
    tcase_add_unchecked_fixture(tc, setup_family, teardown_nothing);
    tcase_add_loop_test(tc, test_sd2_family, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}

Suite *suite_sd2_graphs(void) {
    Suite *s = suite_create("sd2_graphs");
    TCase *tc = tcase_create("unseen");
    tcase_set_timeout(tc, 900);
    tcase_add_unchecked_fixture(tc, setup_unseen, teardown_nothing);
    tcase_add_test(tc, test_sd2_unseen_linear_vs_conv);
    tcase_add_test(tc, test_sd2_unseen_batch);
    tcase_add_test(tc, test_sd2_unseen_nonsquare);
    tcase_add_test(tc, test_sd2_unseen_layers);
    suite_add_tcase(s, tc);
    return s;
}
