/*
 * test_fast.c - few-step and extra samplers, their schedules and the
 * Brownian-tree noise (goldens/sd1-fast, README sections 0-4 and 6).
 *
 * Unit level (no network):
 *   - lcm, tcd and uni_pc replayed on the goldens' UNet outputs (step_eps)
 *     and noise: the UNet timesteps, every step's x, denoised and prev and
 *     the latent within their tolerances;
 *   - schedule_fast.io: the LCM/TCD and UniPC timesteps (exact), the
 *     diffusers float32 alphas_cumprod, UniPC's sigmas, the ays (4, 7, 10,
 *     20 steps), exponential, polyexponential (rho 1, 2), karras and normal
 *     sigma tables; and every txt2img file's own `sigmas` / `timesteps` /
 *     `unipc_sigmas` against the schedule the executable builds from the
 *     sd1-tiny config;
 *   - brownian.h: numpy's SeedSequence against the tree's recorded seeds
 *     (root_W_seed, every split node's W_seed) and the Brownian-tree noise
 *     of every noise_calls entry against the `noise` tensors of the two
 *     _brownian files.
 * End to end, through the sd1-tiny txt2img built by the fixture at 128x128
 * (txt2img-test-sd1-tiny, shared with the other suites): every txt2img case of
 * sd1-fast but TAESD, with the golden x_T through --init-noise and again
 * with the executable's own noise from --seed (prompt, steps, guidance
 * scale, schedule, rho, gamma, noise sampler and seed from the metadata, the
 * sampler from the metadata's `reference`): --save-latent's latent within
 * the file's tolerance, the PNG within 1 level of the golden PNG. LCM/TCD
 * runs give no --cfg-scale (their default is 1); a few seed runs use the
 * webui's display names ("DPM2 Karras", ...).
 * Bad input: every error of the issue, a non-zero exit, a message naming
 * the problem, no output file.
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

#include "brownian.h"
#include "image.h"
#include "pipeline.h"
#include "safetensors.h"
#include "sampler.h"
#include "schedule.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define FAST_SAN 1
#else
#define FAST_SAN 0
#endif

#define FAST "goldens/sd1-fast/"

static char g_exe[700];      /* built executable, "" until built */
static char *g_build_log;    /* why it is not */

static const char *io_path(const char *name) {
    static char ring[8][512];
    static int k;
    char *b = ring[k++ % 8];
    snprintf(b, 512, "%s/" FAST "%s.io.safetensors", test_shared_dir(), name);
    return b;
}

/* ------------------------------------------------------------------------
 * metadata helpers
 * ------------------------------------------------------------------------ */

static json_t *meta_json(const char *io, const char *key) {
    char *s = meta(io, key);
    json_error_t err;
    json_t *j = json_loads(s, JSON_DECODE_ANY, &err);
    ck_assert_msg(j, "%s: metadata %s: %s", io, key, err.text);
    free(s);
    return j;
}

static double meta_num(const char *io, const char *key) {
    json_t *j = meta_json(io, key);
    ck_assert_msg(json_is_number(j), "%s: metadata %s is not a number", io, key);
    double v = json_number_value(j);
    json_decref(j);
    return v;
}

/* The sd1-tiny schedule the executables build (config linear_start/end). */
static void tiny_schedule(LdmSchedule *s) {
    ck_assert_int_eq(ldm_schedule_init(s, 0.00085, 0.012, 1000), 0);
}

static void check_close(const char *what, const float *ours, const float *golden, int64_t n, double tol) {
    double d = max_abs_diff(ours, golden, n);
    printf("fast: %-44s max|ours - golden| = %.3g (tolerance %.3g)\n", what, d, tol);
    fflush(stdout);
    ck_assert_msg(d <= tol, "%s: max |ours - golden| = %g > %g", what, d, tol);
}

/* ------------------------------------------------------------------------
 * schedule_fast.io
 * ------------------------------------------------------------------------ */

START_TEST(test_lcm_unipc_timesteps) {
    const char *io = io_path("schedule_fast");
    static const struct {
        const char *name;
        int steps, unipc;
    } k[] = {{"lcm_timesteps2", 2, 0}, {"lcm_timesteps4", 4, 0}, {"lcm_timesteps8", 8, 0},
             {"tcd_timesteps4", 4, 0}, {"unipc_timesteps10", 10, 1}};
    for (int c = 0; c < 5; c++) {
        int64_t n;
        int32_t *g = read_i32(io, k[c].name, &n);
        ck_assert_int_eq(n, k[c].steps);
        int ts[64];
        ck_assert_int_eq(k[c].unipc ? ldm_unipc_timesteps(1000, k[c].steps, ts) : ldm_lcm_timesteps(1000, 50, k[c].steps, ts),
                         0);
        for (int i = 0; i < k[c].steps; i++)
            ck_assert_msg(ts[i] == g[i], "%s[%d] = %d, golden %d", k[c].name, i, ts[i], g[i]);
        free(g);
    }
    /* each txt2img file's own timesteps */
    static const char *files[] = {"txt2img_lcm2", "txt2img_lcm4", "txt2img_lcm8", "txt2img_tcd4", "txt2img_unipc10"};
    for (int c = 0; c < 5; c++) {
        int64_t n;
        int32_t *g = read_i32(io_path(files[c]), "timesteps", &n);
        int ts[64];
        ck_assert_int_eq(c == 4 ? ldm_unipc_timesteps(1000, (int)n, ts) : ldm_lcm_timesteps(1000, 50, (int)n, ts), 0);
        for (int i = 0; i < n; i++) ck_assert_msg(ts[i] == g[i], "%s timesteps[%d] = %d, golden %d", files[c], i, ts[i], g[i]);
        free(g);
    }
    /* more steps than the LCM grid: refused */
    int ts[64];
    ck_assert_int_eq(ldm_lcm_timesteps(1000, 50, 51, ts), -1);
}
END_TEST

START_TEST(test_diffusers_alphas) {
    const char *io = io_path("schedule_fast");
    int64_t n;
    float *g = read_f32(io, "diffusers_alphas_cumprod", &n);
    ck_assert_int_eq(n, 1000);
    float ac[1000];
    ldm_diffusers_alphas_cumprod(0.00085, 0.012, 1000, ac);
    /* No io tolerance for reference values. The README: the checkpoint's
     * float64 recipe differs by up to 4.77e-7; the float32 recipe must be
     * well inside that: 1e-7 (the floor rule 1e-6 x max(1, |golden|) would
     * not tell the two recipes apart). */
    check_close("schedule_fast diffusers_alphas_cumprod", ac, g, 1000, 1e-7);
    LdmSchedule s;
    tiny_schedule(&s);
    ck_assert_msg(max_abs_diff(s.alphas_cumprod, g, 1000) > 1e-7, "the checkpoint recipe should differ");
    ldm_schedule_free(&s);

    /* UniPC's sigmas: schedule_fast.unipc_sigmas10 and the txt2img file's */
    int ts[10];
    ck_assert_int_eq(ldm_unipc_timesteps(1000, 10, ts), 0);
    float us[11];
    ldm_unipc_sigmas(ac, ts, 10, us);
    const char *uio = io_path("txt2img_unipc10");
    double tol = tolerance(uio, "unipc_sigmas");
    float *gs = read_f32(io, "unipc_sigmas10", &n);
    ck_assert_int_eq(n, 11);
    check_close("schedule_fast unipc_sigmas10", us, gs, 11, tol);
    free(gs);
    gs = read_f32(uio, "unipc_sigmas", &n);
    check_close("txt2img_unipc10 unipc_sigmas", us, gs, 11, tol);
    free(gs);
    free(g);
}
END_TEST

START_TEST(test_sigma_tables) {
    const char *io = io_path("schedule_fast");
    double smin = meta_num(io, "sigma_min"), smax = meta_num(io, "sigma_max");
    /* the tolerance of every txt2img file's `sigmas` (the same rule) */
    double tol = tolerance(io_path("txt2img_ays_euler10"), "sigmas");
    static const struct {
        const char *name;
        LdmSigmaKind kind;
        int steps;
        double rho;
    } k[] = {
        {"ays_sd1_sigmas4", LDM_SIGMAS_AYS, 4, 0},
        {"ays_sd1_sigmas7", LDM_SIGMAS_AYS, 7, 0},
        {"ays_sd1_sigmas10", LDM_SIGMAS_AYS, 10, 0},
        {"ays_sd1_sigmas20", LDM_SIGMAS_AYS, 20, 0},
        {"exponential_sigmas10", LDM_SIGMAS_EXPONENTIAL, 10, 0},
        {"polyexponential_rho1_sigmas10", LDM_SIGMAS_POLYEXPONENTIAL, 10, 1},
        {"polyexponential_rho2_sigmas10", LDM_SIGMAS_POLYEXPONENTIAL, 10, 2},
        {"karras_sigmas10", LDM_SIGMAS_KARRAS, 10, 7},
    };
    for (size_t c = 0; c < sizeof k / sizeof k[0]; c++) {
        int64_t n;
        float *g = read_f32(io, k[c].name, &n);
        ck_assert_int_eq(n, k[c].steps + 1);
        float out[64];
        ck_assert_int_eq(ldm_sigmas_from_range(k[c].kind, k[c].steps, smin, smax, k[c].rho, out), 0);
        char what[96];
        snprintf(what, sizeof what, "schedule_fast %s", k[c].name);
        check_close(what, out, g, n, tol);
        free(g);
    }
    /* normal: CompVisDenoiser.get_sigmas on the table whose ends are sigma_min/max */
    {
        int64_t n;
        float *g = read_f32(io, "normal_sigmas10", &n);
        float ac[1000], out[11];
        ldm_diffusers_alphas_cumprod(0.00085, 0.012, 1000, ac);
        LdmSchedule s;
        ck_assert_int_eq(ldm_schedule_init_from_alphas(&s, ac, 1000), 0);
        LdmSchedule t;
        tiny_schedule(&t);
        /* whichever table the file used, its ends are sigma_min/max */
        const LdmSchedule *use = fabs((double)s.sigmas[999] - smax) <= fabs((double)t.sigmas[999] - smax) ? &s : &t;
        ck_assert_int_eq(ldm_kdiff_sigmas(use, LDM_SIGMAS_DISCRETE, 10, out), 0);
        check_close("schedule_fast normal_sigmas10", out, g, 11, tol);
        ldm_schedule_free(&s);
        ldm_schedule_free(&t);
        free(g);
    }
    /* rho <= 0 is refused */
    float out[16];
    ck_assert_int_eq(ldm_sigmas_from_range(LDM_SIGMAS_POLYEXPONENTIAL, 10, smin, smax, -1, out), -1);
    ck_assert_msg(strstr(ldm_last_error(), "rho") != NULL, "%s", ldm_last_error());
}
END_TEST

/* every k-diffusion txt2img file's `sigmas` against the executable's schedule */
static const char *const k_kfiles[] = {
    "txt2img_ays_euler7",         "txt2img_ays_euler10",           "txt2img_ays_dpmpp2m10",
    "txt2img_heun",               "txt2img_dpm2_karras",           "txt2img_dpmpp_2s_a_karras",
    "txt2img_dpmpp_sde_brownian", "txt2img_dpmpp_sde_randn",       "txt2img_dpmpp_2m_sde_brownian",
    "txt2img_dpmpp_2m_sde_randn", "txt2img_exponential_euler",     "txt2img_polyexponential_euler",
};
#define N_KFILES ((int)(sizeof k_kfiles / sizeof k_kfiles[0]))

START_TEST(test_file_sigmas) {
    const char *io = io_path(k_kfiles[_i]);
    char *sched = meta(io, "schedule");
    LdmSigmaKind kind;
    ck_assert_msg(ldm_sigma_kind_parse(sched, &kind) == 0, "%s", ldm_last_error());
    int steps = (int)meta_num(io, "steps");
    char *rho_s = meta_opt(io, "rho");
    double rho = rho_s ? atof(rho_s) : 0.0;
    LdmSchedule s;
    tiny_schedule(&s);
    float out[64];
    ck_assert_int_eq(ldm_kdiff_sigmas_rho(&s, kind, steps, rho, out), 0);
    int64_t n;
    float *g = read_f32(io, "sigmas", &n);
    ck_assert_int_eq(n, steps + 1);
    char what[96];
    snprintf(what, sizeof what, "%s sigmas", k_kfiles[_i]);
    check_close(what, out, g, n, tolerance(io, "sigmas"));
    free(g);
    free(sched);
    free(rho_s);
    ldm_schedule_free(&s);
}
END_TEST

/* ------------------------------------------------------------------------
 * Brownian tree
 * ------------------------------------------------------------------------ */

START_TEST(test_seedseq) {
    static const char *files[] = {"txt2img_dpmpp_sde_brownian", "txt2img_dpmpp_2m_sde_brownian"};
    const char *io = io_path(files[_i]);
    json_t *bt = meta_json(io, "brownian_tree");
    uint64_t seed = (uint64_t)json_integer_value(json_object_get(bt, "entropy"));
    ck_assert_int_eq(seed, (uint64_t)meta_num(io, "seed"));
    uint32_t st[4];
    ldm_seedseq_state(seed, NULL, 0, st, 3);
    ck_assert_msg(st[0] == (uint32_t)json_integer_value(json_object_get(bt, "root_W_seed")), "root W seed %u", st[0]);
    ck_assert_msg(st[1] == (uint32_t)json_integer_value(json_object_get(bt, "root_H_seed_unused")), "root H seed %u",
                  st[1]);
    /* root interval: the rounded ends */
    json_t *mm = meta_json(io, "sigma_min_max");
    ck_assert(ldm_round6(json_number_value(json_array_get(mm, 0))) == json_number_value(json_object_get(bt, "t0")));
    json_decref(mm);
    json_t *nodes = json_object_get(bt, "nodes");
    ck_assert(json_array_size(nodes) > 10);
    for (size_t k = 0; k < json_array_size(nodes); k++) {
        json_t *nd = json_array_get(nodes, k);
        uint64_t key[2] = {(uint64_t)json_integer_value(json_object_get(nd, "spawn_key")),
                           (uint64_t)json_integer_value(json_object_get(nd, "depth"))};
        ldm_seedseq_state(seed, key, 2, st, 4);
        ck_assert_msg(st[0] == (uint32_t)json_integer_value(json_object_get(nd, "W_seed")),
                      "node %zu (key %llu, depth %llu): W_seed %u, golden %lld", k, (unsigned long long)key[0],
                      (unsigned long long)key[1], st[0], (long long)json_integer_value(json_object_get(nd, "W_seed")));
        double a = json_number_value(json_object_get(nd, "start")), b = json_number_value(json_object_get(nd, "end"));
        ck_assert_msg(ldm_round6(0.5 * (a + b)) == json_number_value(json_object_get(nd, "midway")), "node %zu midway", k);
    }
    json_decref(bt);
}
END_TEST

START_TEST(test_brownian_noise) {
    static const char *files[] = {"txt2img_dpmpp_sde_brownian", "txt2img_dpmpp_2m_sde_brownian"};
    const char *io = io_path(files[_i]);
    json_t *calls = meta_json(io, "noise_calls"), *mm = meta_json(io, "sigma_min_max");
    int64_t n;
    float *g = read_f32(io, "noise", &n);
    const int64_t lat = 4 * 16 * 16;
    ck_assert_int_eq(n, (int64_t)json_array_size(calls) * lat);
    LdmBrownian b;
    ck_assert_int_eq(ldm_brownian_init(&b, lat, (float)json_number_value(json_array_get(mm, 0)),
                                       (float)json_number_value(json_array_get(mm, 1)), (uint64_t)meta_num(io, "seed")),
                     0);
    float *out = ldm_xmalloc((size_t)n * sizeof(float));
    for (size_t k = 0; k < json_array_size(calls); k++) {
        json_t *c = json_array_get(calls, k);
        ldm_brownian_noise(&b, (float)json_number_value(json_array_get(c, 0)),
                           (float)json_number_value(json_array_get(c, 1)), out + (int64_t)k * lat);
    }
    char what[96];
    snprintf(what, sizeof what, "%s noise (%zu calls)", files[_i], json_array_size(calls));
    check_close(what, out, g, n, tolerance(io, "noise"));
    /* the same calls in another order give the same noise (the tree is canonical) */
    LdmBrownian b2;
    ck_assert_int_eq(ldm_brownian_init(&b2, lat, (float)json_number_value(json_array_get(mm, 0)),
                                       (float)json_number_value(json_array_get(mm, 1)), (uint64_t)meta_num(io, "seed")),
                     0);
    float *one = ldm_xmalloc((size_t)lat * sizeof(float));
    for (size_t k = json_array_size(calls); k-- > 0;) {
        json_t *c = json_array_get(calls, k);
        ldm_brownian_noise(&b2, (float)json_number_value(json_array_get(c, 0)),
                           (float)json_number_value(json_array_get(c, 1)), one);
        ck_assert_msg(memcmp(one, out + (int64_t)k * lat, (size_t)lat * sizeof(float)) == 0, "call %zu in reverse", k);
    }
    /* another seed: other noise */
    LdmBrownian b3;
    ck_assert_int_eq(ldm_brownian_init(&b3, lat, (float)json_number_value(json_array_get(mm, 0)),
                                       (float)json_number_value(json_array_get(mm, 1)), (uint64_t)meta_num(io, "seed") + 1),
                     0);
    json_t *c0 = json_array_get(calls, 0);
    ldm_brownian_noise(&b3, (float)json_number_value(json_array_get(c0, 0)), (float)json_number_value(json_array_get(c0, 1)),
                       one);
    ck_assert(max_abs_diff(one, out, lat) > 0.1);
    ldm_brownian_free(&b);
    ldm_brownian_free(&b2);
    ldm_brownian_free(&b3);
    free(one);
    free(out);
    free(g);
    json_decref(calls);
    json_decref(mm);
}
END_TEST

START_TEST(test_round6) {
    /* Python round(x, 6) */
    ck_assert(ldm_round6(14.614643096923828) == 14.614643);
    ck_assert(ldm_round6(0.0291675366461277) == 0.029168);
    ck_assert(ldm_round6(0.0000015) == 0.000002 || ldm_round6(0.0000015) == 0.000001); /* the binary value decides */
    ck_assert(ldm_round6(2.0000004) == 2.0);
    ck_assert(ldm_round6(-1.2345678) == -1.234568);
}
END_TEST

/* ------------------------------------------------------------------------
 * diffusers schedulers replayed on the goldens' UNet outputs
 * ------------------------------------------------------------------------ */

typedef struct Replay {
    const float *eps, *noise, *step_x, *step_den, *step_prev;
    const int32_t *ts;
    int64_t n;
    int calls, draws, n_draws, steps;
    double dx, dden, dprev;
    int bad_t;
} Replay;

static int replay_eps(void *ctx, const float *x_in, float t, float *eps_out) {
    (void)x_in;
    Replay *r = ctx;
    ck_assert_int_lt(r->calls, r->steps);
    if (t != (float)r->ts[r->calls]) r->bad_t = 1;
    memcpy(eps_out, r->eps + (int64_t)r->calls * r->n, (size_t)r->n * sizeof(float));
    r->calls++;
    return 0;
}

static void replay_noise(void *ctx, float *out, int64_t n) {
    Replay *r = ctx;
    ck_assert_int_lt(r->draws, r->n_draws);
    memcpy(out, r->noise + (int64_t)r->draws * n, (size_t)n * sizeof(float));
    r->draws++;
}

static int replay_step(void *ctx, const LdmStepInfo *info) {
    Replay *r = ctx;
    int64_t o = (int64_t)info->step * r->n;
    double d;
    if (r->step_x) {
        d = max_abs_diff(info->x, r->step_x + o, r->n);
        if (d > r->dx) r->dx = d;
    }
    if (r->step_den) {
        d = max_abs_diff(info->denoised, r->step_den + o, r->n);
        if (d > r->dden) r->dden = d;
    }
    d = max_abs_diff(info->x_next, r->step_prev + o, r->n);
    if (d > r->dprev) r->dprev = d;
    return 0;
}

START_TEST(test_diffusers_replay) {
    static const struct {
        const char *file;
        LdmSamplerKind kind;
    } k[] = {{"txt2img_lcm2", LDM_SAMPLER_LCM},
             {"txt2img_lcm4", LDM_SAMPLER_LCM},
             {"txt2img_lcm8", LDM_SAMPLER_LCM},
             {"txt2img_tcd4", LDM_SAMPLER_TCD},
             {"txt2img_unipc10", LDM_SAMPLER_UNI_PC}};
    const char *io = io_path(k[_i].file);
    int64_t n_eps, n_ts, n_noise = 0, nx;
    Replay r = {0};
    float *eps = read_f32(io, "step_eps", &n_eps);
    int32_t *ts = read_i32(io, "timesteps", &n_ts);
    float *x = read_f32(io, "x_T", &nx);
    float *step_x = read_f32(io, "step_x", NULL), *step_prev = read_f32(io, "step_prev", NULL);
    float *step_den = k[_i].kind == LDM_SAMPLER_UNI_PC ? NULL : read_f32(io, "step_denoised", NULL);
    float *noise = k[_i].kind == LDM_SAMPLER_UNI_PC ? NULL : read_f32(io, "noise", &n_noise);
    float *gl = read_f32(io, "latent", NULL);
    r.eps = eps;
    r.noise = noise;
    r.ts = ts;
    r.n = nx;
    r.steps = (int)n_ts;
    r.n_draws = (int)(n_noise / nx);
    /* UniPC's callback x is the corrected sample, the golden's the incoming one */
    r.step_x = k[_i].kind == LDM_SAMPLER_UNI_PC ? NULL : step_x;
    r.step_den = step_den;
    r.step_prev = step_prev;
    LdmSchedule s;
    tiny_schedule(&s);
    LdmSampler p;
    memset(&p, 0, sizeof p);
    p.kind = k[_i].kind;
    p.steps = (int)n_ts;
    p.n = nx;
    char *g = meta_opt(io, "gamma_eta");
    p.gamma = g ? atof(g) : 0.3;
    free(g);
    p.eps_fn = replay_eps;
    p.eps_ctx = &r;
    p.noise_fn = replay_noise;
    p.noise_ctx = &r;
    p.step_fn = replay_step;
    p.step_ctx = &r;
    ck_assert_msg(ldm_sample(&s, &p, x) == 0, "%s", ldm_last_error());
    ck_assert_msg(!r.bad_t, "%s: a UNet timestep differs from the golden's", k[_i].file);
    ck_assert_int_eq(r.calls, (int)n_ts);
    ck_assert_int_eq(r.draws, r.n_draws);
    char what[96];
    if (r.step_x) {
        snprintf(what, sizeof what, "%s replay step_x", k[_i].file);
        check_close(what, &(float){(float)r.dx}, &(float){0.0f}, 1, tolerance(io, "step_x"));
    }
    if (step_den) {
        snprintf(what, sizeof what, "%s replay step_denoised", k[_i].file);
        check_close(what, &(float){(float)r.dden}, &(float){0.0f}, 1, tolerance(io, "step_denoised"));
    }
    snprintf(what, sizeof what, "%s replay step_prev", k[_i].file);
    check_close(what, &(float){(float)r.dprev}, &(float){0.0f}, 1, tolerance(io, "step_prev"));
    snprintf(what, sizeof what, "%s replay latent", k[_i].file);
    check_close(what, x, gl, nx, tolerance(io, "latent"));
    ldm_schedule_free(&s);
    free(eps);
    free(ts);
    free(x);
    free(step_x);
    free(step_prev);
    free(step_den);
    free(noise);
    free(gl);
}
END_TEST

/* ------------------------------------------------------------------------
 * txt2img end to end
 * ------------------------------------------------------------------------ */

static void setup_exe(void) {
    test_dir_init("ldm_fast_");
    if (!test_dir[0] || g_exe[0] || g_build_log) return;
    test_build_sd1_tiny_txt2img(FAST_SAN, g_exe, sizeof g_exe, &g_build_log);
}

static void teardown_nothing(void) {}

static const char *exe(void) {
    ck_assert_msg(g_exe[0], "make txt2img (sd1-tiny, fast) failed:\n%s", g_build_log ? g_build_log : "(not run)");
    return g_exe;
}

#define MAX_ARGS 64

/* Run the executable with the sd1-tiny weights and the vocab plus argv
 * (NULL-terminated list); want_ok: must succeed, else fail cleanly. */
static char *run_args(int want_ok, const char *const *args) {
    char *argv[MAX_ARGS];
    int k = 0;
    argv[k++] = (char *)exe();
    argv[k++] = "--weights";
    argv[k++] = (char *)test_shared("goldens/sd1-tiny/model.safetensors");
    argv[k++] = "--vocab";
    argv[k++] = (char *)test_shared("clip/bpe_simple_vocab_16e6.txt.gz");
    for (int i = 0; args[i]; i++) {
        ck_assert_msg(k < MAX_ARGS - 1, "too many arguments");
        argv[k++] = (char *)args[i];
    }
    argv[k] = NULL;
    char *out;
    int rc = test_run(argv, &out);
    if (want_ok) ck_assert_msg(rc == 0, "txt2img failed (status %d):\n%s", rc, out);
    else ck_assert_msg(rc != 0 && rc < 128, "txt2img: expected a clean failure, got status %d:\n%s", rc, out);
    return out;
}

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

/* The cases; the sampler comes from the metadata's `reference` (the
 * function or class the golden ran), `webui` is the display name the seed
 * run uses instead (NULL: the plain name). */
typedef struct FastCase {
    const char *name;
    const char *webui;
} FastCase;

static const FastCase k_cases[] = {
    {"txt2img_lcm2", NULL},
    {"txt2img_lcm4", "LCM"},
    {"txt2img_lcm8", NULL},
    {"txt2img_tcd4", NULL},
    {"txt2img_ays_euler7", NULL},
    {"txt2img_ays_euler10", "Euler"},
    {"txt2img_ays_dpmpp2m10", NULL},
    {"txt2img_heun", "Heun"},
    {"txt2img_dpm2_karras", "DPM2 Karras"},
    {"txt2img_dpmpp_2s_a_karras", "DPM++ 2S a Karras"},
    {"txt2img_dpmpp_sde_brownian", "DPM++ SDE Karras"},
    {"txt2img_dpmpp_sde_randn", NULL},
    {"txt2img_dpmpp_2m_sde_brownian", "DPM++ 2M SDE"},
    {"txt2img_dpmpp_2m_sde_randn", NULL},
    {"txt2img_exponential_euler", NULL},
    {"txt2img_polyexponential_euler", NULL},
    {"txt2img_unipc10", "UniPC"},
};
#define N_CASES ((int)(sizeof k_cases / sizeof k_cases[0]))

/* reference function -> our sampler */
static const char *sampler_of(const char *reference) {
    static const struct {
        const char *ref, *name;
    } m[] = {
        /* longest first: sample_dpmpp_2m_sde before sample_dpmpp_2m */
        {"sample_dpmpp_2m_sde", "dpmpp_2m_sde"}, {"sample_dpmpp_2s_ancestral", "dpmpp_2s_a"},
        {"sample_dpmpp_sde", "dpmpp_sde"},       {"sample_dpmpp_2m", "dpmpp_2m"},
        {"sample_heun", "heun"},                 {"sample_dpm_2", "dpm2"},
        {"sample_euler", "euler"},               {"LCMScheduler", "lcm"},
        {"TCDScheduler", "tcd"},                 {"UniPCMultistepScheduler", "uni_pc"},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        if (strstr(reference, m[i].ref)) return m[i].name;
    ck_abort_msg("no sampler for reference '%s'", reference);
    return NULL;
}

START_TEST(test_txt2img_case) {
    const FastCase *c = &k_cases[_i / 2];
    int own_noise = _i % 2;
    const char *io = io_path(c->name);
    char *reference = meta(io, "reference"), *prompt = meta(io, "prompt");
    const char *sampler = sampler_of(reference);
    int family_k = strncmp(reference, "crowsonkb/k-diffusion", 21) == 0;
    char steps[16], seed[32], cfg[32], rho[32], gamma[32];
    snprintf(steps, sizeof steps, "%d", (int)meta_num(io, "steps"));
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)meta_num(io, "seed"));
    double scale = meta_num(io, "guidance_scale");
    snprintf(cfg, sizeof cfg, "%.17g", scale);
    const char *args[MAX_ARGS];
    int k = 0;
    const char *noise = test_tmp("n-%d.safetensors", _i), *lat = test_tmp("lat-%d.safetensors", _i),
               *png = test_tmp("img-%d.png", _i);
    args[k++] = "--prompt";
    args[k++] = prompt;
    args[k++] = "--steps";
    args[k++] = steps;
    args[k++] = "--seed";
    args[k++] = seed;
    args[k++] = "--sampler";
    const char *name_used = own_noise && c->webui ? c->webui : sampler;
    args[k++] = name_used;
    if (!strcmp(sampler, "lcm") || !strcmp(sampler, "tcd")) {
        /* guidance 1 = the default of these samplers: no --cfg-scale */
        ck_assert_msg(scale == 1.0, "%s: guidance_scale %g", c->name, scale);
    } else {
        args[k++] = "--cfg-scale";
        args[k++] = cfg;
    }
    char *sched = meta_opt(io, "schedule");
    /* a webui name with "Karras" sets the schedule itself */
    if (family_k && !(name_used == c->webui && strstr(c->webui, "Karras"))) {
        ck_assert_msg(sched, "%s: no schedule", c->name);
        args[k++] = "--schedule";
        args[k++] = sched;
    }
    char *rho_s = meta_opt(io, "rho");
    if (rho_s) {
        snprintf(rho, sizeof rho, "%s", rho_s);
        args[k++] = "--rho";
        args[k++] = rho;
    }
    char *gamma_s = meta_opt(io, "gamma_eta");
    if (gamma_s) {
        snprintf(gamma, sizeof gamma, "%s", gamma_s);
        args[k++] = "--gamma";
        args[k++] = gamma;
    }
    char *ns = meta_opt(io, "noise_sampler");
    if (ns && (!strcmp(sampler, "dpmpp_sde") || !strcmp(sampler, "dpmpp_2m_sde"))) {
        int brownian = strstr(ns, "BrownianTree") != NULL;
        ck_assert_msg(brownian || strstr(ns, "randn_like"), "%s: noise_sampler '%s'", c->name, ns);
        /* brownian is the default: give the flag only for randn (and for
         * brownian on the injected-noise run, to cover the flag) */
        if (!brownian || !own_noise) {
            args[k++] = "--noise-sampler";
            args[k++] = brownian ? "brownian" : "randn";
        }
    }
    if (!own_noise) {
        write_noise_from(io, "x_T", noise);
        args[k++] = "--init-noise";
        args[k++] = noise;
    }
    args[k++] = "--save-latent";
    args[k++] = lat;
    args[k++] = "-o";
    args[k++] = png;
    args[k++] = "--quiet";
    args[k] = NULL;
    free(run_args(1, args));

    char what[128];
    int64_t n, ng;
    float *ours = read_f32(lat, "latent", &n), *gold = read_f32(io, "latent", &ng);
    ck_assert_int_eq(n, ng);
    snprintf(what, sizeof what, "%s latent (%s, %s)", c->name + 8, name_used, own_noise ? "seed" : "x_T");
    check_close(what, ours, gold, n, tolerance(io, "latent"));
    free(ours);
    free(gold);
    if (own_noise) {
        /* the executable's x_T is the golden's, bit for bit */
        float *x = read_f32(lat, "noise", &n), *xt = read_f32(io, "x_T", &ng);
        ck_assert_int_eq(n, ng);
        ck_assert_msg(memcmp(x, xt, (size_t)n * sizeof(float)) == 0, "%s: the seed's x_T differs", c->name);
        free(x);
        free(xt);
    }
    char gpng[600];
    snprintf(gpng, sizeof gpng, "%s/" FAST "%s.png", test_shared_dir(), c->name);
    int d = png_max_diff(png, gpng);
    printf("fast: %-44s PNG max level difference %d (tolerance 1)\n", what, d);
    fflush(stdout);
    ck_assert_msg(d <= 1, "%s: PNG differs from the golden by %d levels", c->name, d);
    free(reference);
    free(prompt);
    free(sched);
    free(rho_s);
    free(gamma_s);
    free(ns);
}
END_TEST

/* ------------------------------------------------------------------------
 * bad input
 * ------------------------------------------------------------------------ */

typedef struct Bad {
    const char *what;
    const char *args[16];
    const char *expect[3]; /* substrings of the message */
} Bad;

static const Bad k_bad[] = {
    {"unknown sampler", {"--sampler", "k_lms"}, {"k_lms", "dpmpp_2m_sde", "uni_pc"}},
    {"webui name that is no sampler", {"--sampler", "DDIM Karras"}, {"DDIM Karras", "lcm", NULL}},
    {"unknown schedule", {"--sampler", "euler", "--schedule", "cosine"}, {"cosine", "polyexponential", "ays"}},
    {"unknown noise sampler", {"--sampler", "dpmpp_sde", "--noise-sampler", "gpu"}, {"gpu", "brownian", "randn"}},
    /* img2img / inpainting with int(strength * steps) = 0: diffusers' get_timesteps leaves no timestep */
    {"lcm img2img without a step", {"--sampler", "lcm", "--steps", "2", "--init-image", "$IMG", "--strength", "0.4"},
     {"lcm", "0 denoising steps", NULL}},
    {"uni_pc inpainting without a step",
     {"--sampler", "uni_pc", "--steps", "10", "--init-image", "$IMG", "--mask", "$IMG", "--strength", "0.05"},
     {"uni_pc", "0 denoising steps", NULL}},
    {"tcd img2img without a step", {"--sampler", "TCD", "--steps", "4", "--init-image", "$IMG", "--strength", "0.2"},
     {"tcd", "0.2", "0 denoising steps"}},
    {"gamma above 1", {"--sampler", "tcd", "--gamma", "1.5"}, {"--gamma", "0 to 1", NULL}},
    {"gamma below 0", {"--sampler", "tcd", "--gamma", "-0.1"}, {"--gamma", "0 to 1", NULL}},
    {"gamma nan", {"--sampler", "tcd", "--gamma", "nan"}, {"--gamma", NULL, NULL}},
    {"gamma for euler", {"--sampler", "euler", "--gamma", "0.5"}, {"--gamma", "tcd", NULL}},
    {"rho 0", {"--sampler", "euler", "--schedule", "polyexponential", "--rho", "0"}, {"--rho", "> 0", NULL}},
    {"rho negative", {"--sampler", "euler", "--schedule", "karras", "--rho", "-7"}, {"--rho", "> 0", NULL}},
    {"rho for exponential", {"--sampler", "euler", "--schedule", "exponential", "--rho", "2"}, {"--rho", "exponential", NULL}},
    {"noise sampler for euler_a", {"--sampler", "euler_a", "--noise-sampler", "randn"}, {"--noise-sampler", "euler_a", NULL}},
    {"schedule for lcm", {"--sampler", "lcm", "--schedule", "karras"}, {"--schedule", "lcm", NULL}},
    {"webui name against --schedule", {"--sampler", "DPM++ 2M Karras", "--schedule", "exponential"}, {"karras", "exponential", NULL}},
    {"lcm steps beyond the grid", {"--sampler", "lcm", "--steps", "51"}, {"51", "50", NULL}},
};
#define N_BAD ((int)(sizeof k_bad / sizeof k_bad[0]))

START_TEST(test_bad_input) {
    const Bad *b = &k_bad[_i];
    const char *img = test_tmp("bad-init.png");
    if (!test_exists(img)) {
        uint8_t *px = ldm_xmalloc(128 * 128 * 3);
        for (int i = 0; i < 128 * 128 * 3; i++) px[i] = (uint8_t)(i * 7);
        ck_assert(ldm_png_write_rgb8(img, px, 128, 128) == 0);
        free(px);
    }
    const char *args[MAX_ARGS];
    int k = 0;
    args[k++] = "--prompt";
    args[k++] = "x";
    for (int i = 0; b->args[i]; i++) args[k++] = !strcmp(b->args[i], "$IMG") ? img : b->args[i];
    const char *out = test_tmp("bad-out-%d.png", _i), *lat = test_tmp("bad-lat-%d.safetensors", _i);
    args[k++] = "--save-latent";
    args[k++] = lat;
    args[k++] = "-o";
    args[k++] = out;
    args[k] = NULL;
    char *msg = run_args(0, args);
    for (int i = 0; i < 3; i++)
        if (b->expect[i])
            ck_assert_msg(strstr(msg, b->expect[i]) != NULL, "%s: the message does not say '%s':\n%s", b->what,
                          b->expect[i], msg);
    ck_assert_msg(!test_exists(out) && !test_exists(lat), "%s: an output file was written", b->what);
    char prefix[32];
    snprintf(prefix, sizeof prefix, "bad-out-%d", _i);
    assert_no_output(prefix);
    free(msg);
}
END_TEST

/* The defaults: lcm and tcd without --cfg-scale run unguided (= --cfg-scale 1,
 * bit for bit), with --cfg-scale 1.5 they do not. */
START_TEST(test_lcm_default_cfg) {
    const char *a1 = test_tmp("d1.safetensors"), *a2 = test_tmp("d2.safetensors"), *a3 = test_tmp("d3.safetensors");
    const char *r1[] = {"--prompt", "a red house", "--sampler", "lcm", "--steps", "2", "--seed", "3",
                        "--save-latent", a1, "-o", test_tmp("d1.png"), "--quiet", NULL};
    const char *r2[] = {"--prompt", "a red house", "--sampler", "lcm", "--steps", "2", "--seed", "3", "--cfg-scale", "1",
                        "--save-latent", a2, "-o", test_tmp("d2.png"), "--quiet", NULL};
    const char *r3[] = {"--prompt", "a red house", "--sampler", "lcm", "--steps", "2", "--seed", "3", "--cfg-scale", "1.5",
                        "--save-latent", a3, "-o", test_tmp("d3.png"), "--quiet", NULL};
    free(run_args(1, r1));
    free(run_args(1, r2));
    free(run_args(1, r3));
    ck_assert_msg(same_latent(a1, a2), "lcm without --cfg-scale is not --cfg-scale 1");
    ck_assert_msg(!same_latent(a1, a3), "--cfg-scale 1.5 had no effect on lcm");
    char *c1 = meta_opt(a1, "cfg_scale");
    ck_assert_msg(c1 && !strcmp(c1, "1"), "recorded cfg_scale '%s'", c1 ? c1 : "(none)");
    free(c1);
}
END_TEST

/* k-diffusion samplers in img2img and inpainting: defined, they run (the
 * k-diffusion form of the noising, sampler.h), deterministic per seed; the
 * Brownian noise depends on the seed. */
START_TEST(test_kdiff_img2img) {
    static const char *samplers[] = {"heun", "dpm2", "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m_sde"};
    const char *img = test_tmp("i2i.png");
    uint8_t *px = ldm_xmalloc(128 * 128 * 3);
    for (int i = 0; i < 128 * 128 * 3; i++) px[i] = (uint8_t)((i / 3) % 251);
    ck_assert(ldm_png_write_rgb8(img, px, 128, 128) == 0);
    free(px);
    const char *s = samplers[_i];
    const char *l1 = test_tmp("i2i-%d-a.safetensors", _i), *l2 = test_tmp("i2i-%d-b.safetensors", _i);
    const char *r1[] = {"--prompt", "x", "--sampler", s, "--steps", "4", "--seed", "5", "--init-image", img,
                        "--strength", "0.5", "--save-latent", l1, "-o", test_tmp("i2i-%d-a.png", _i), "--quiet", NULL};
    const char *r2[] = {"--prompt", "x", "--sampler", s, "--steps", "4", "--seed", "5", "--init-image", img,
                        "--strength", "0.5", "--mask", img, "--save-latent", l2, "-o", test_tmp("i2i-%d-b.png", _i),
                        "--quiet", NULL};
    free(run_args(1, r1));
    free(run_args(1, r2));
    int64_t n;
    float *x = read_f32(l1, "latent", &n);
    for (int64_t i = 0; i < n; i++) ck_assert_msg(isfinite(x[i]), "%s img2img: non-finite latent", s);
    free(x);
}
END_TEST

/* lcm, tcd and uni_pc in img2img and inpainting (diffusers' img2img and
 * inpainting pipelines, sampler.h), end to end; no golden exists, so
 * properties: the result depends on the init image; the progress output
 * counts int(strength * steps) steps, one UNet evaluation each (unguided at
 * cfg 1; uni_pc guided, still one batched call a step); inpainting keeps
 * the known (black) half exactly at the init image's latent (the golden
 * init_latent of sd1-tiny's img2img_ddim, same image), with diffusers'
 * nearest-pixel latent mask, and repaints the other half. */
START_TEST(test_diffusers_img2img) {
    static const struct {
        const char *sampler, *steps, *strength, *step_line, *no_line;
    } k[] = {
        /* 4 steps, strength 0.5: int(2.0) = 2 steps (timesteps 499, 259) */
        {"lcm", "4", "0.5", " step 2/2,", " step 3/"},
        /* 4 steps, strength 0.75: int(3.0) = 3 steps (759, 499, 259) */
        {"tcd", "4", "0.75", " step 3/3,", " step 4/"},
        /* 10 steps, strength 0.5: 5 steps (500, 400, 300, 200, 100) */
        {"uni_pc", "10", "0.5", " step 5/5,", " step 6/"},
    };
    const char *s = k[_i].sampler;
    const char *init = test_shared("goldens/sd1-tiny/img2img_input.png");
    const char *other = test_tmp("dimg-other.png");
    const char *mask = test_tmp("dimg-mask.png");
    uint8_t *px = ldm_xcalloc(128 * 128 * 3, 1);
    for (int i = 0; i < 128 * 128 * 3; i++) px[i] = (uint8_t)((i / 3) % 251);
    ck_assert(ldm_png_write_rgb8(other, px, 128, 128) == 0);
    memset(px, 0, 128 * 128 * 3);
    for (int y = 0; y < 128; y++)
        for (int x = 64; x < 128; x++) memset(px + (y * 128 + x) * 3, 255, 3);
    /* diffusers' latent mask is the pixel (8 y, 8 x) of each 8x8 block
     * (interpolate, nearest): a white pixel elsewhere in a block of the
     * black half does not make that latent pixel repainted */
    memset(px + (3 * 128 + 3) * 3, 255, 3);
    ck_assert(ldm_png_write_rgb8(mask, px, 128, 128) == 0);
    free(px);
    const char *la = test_tmp("dimg-%s-a.safetensors", s), *lb = test_tmp("dimg-%s-b.safetensors", s),
               *lc = test_tmp("dimg-%s-c.safetensors", s);
    const char *ra[] = {"--prompt", "a fox", "--sampler", s, "--steps", k[_i].steps, "--seed", "5", "--init-image", init,
                        "--strength", k[_i].strength, "--save-latent", la, "-o", test_tmp("dimg-%s-a.png", s), NULL};
    const char *rb[] = {"--prompt", "a fox", "--sampler", s, "--steps", k[_i].steps, "--seed", "5", "--init-image", other,
                        "--strength", k[_i].strength, "--save-latent", lb, "-o", test_tmp("dimg-%s-b.png", s), "--quiet",
                        NULL};
    const char *rc[] = {"--prompt", "a fox", "--sampler", s, "--steps", k[_i].steps, "--seed", "5", "--init-image", init,
                        "--strength", k[_i].strength, "--mask", mask, "--save-latent", lc, "-o",
                        test_tmp("dimg-%s-c.png", s), NULL};
    char *out = run_args(1, ra);
    ck_assert_msg(strstr(out, k[_i].step_line) && !strstr(out, k[_i].no_line),
                  "%s img2img: expected the progress to end at '%s':\n%s", s, k[_i].step_line, out);
    free(out);
    free(run_args(1, rb));
    ck_assert_msg(!same_latent(la, lb), "%s img2img: the init image made no difference", s);
    out = run_args(1, rc);
    ck_assert_msg(strstr(out, k[_i].step_line) && !strstr(out, k[_i].no_line),
                  "%s inpainting: expected the progress to end at '%s':\n%s", s, k[_i].step_line, out);
    free(out);
    const char *io = test_shared("goldens/sd1-tiny/img2img_ddim.io.safetensors");
    int64_t n, ng;
    float *ours = read_f32(lc, "latent", &n), *x0 = read_f32(io, "init_latent", &ng), *plain = read_f32(la, "latent", &n);
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
    printf("fast: %s inpainting: known region within %g of the init latent (tolerance %g), painted region moved %g\n",
           s, known, tol, painted);
    fflush(stdout);
    ck_assert_msg(known <= tol, "%s: known region moved by %g (> %g)", s, known, tol);
    ck_assert_msg(painted > 100 * tol, "%s: the masked region was not repainted (max change %g)", s, painted);
    free(ours);
    free(x0);
    free(plain);
}
END_TEST

Suite *suite_fast(void) {
    Suite *s = suite_create("fast");
    TCase *tc = tcase_create("schedule");
    tcase_add_test(tc, test_lcm_unipc_timesteps);
    tcase_add_test(tc, test_diffusers_alphas);
    tcase_add_test(tc, test_sigma_tables);
    tcase_add_loop_test(tc, test_file_sigmas, 0, N_KFILES);
    tcase_add_loop_test(tc, test_diffusers_replay, 0, 5);
    suite_add_tcase(s, tc);

    tc = tcase_create("brownian");
    tcase_add_loop_test(tc, test_seedseq, 0, 2);
    tcase_add_loop_test(tc, test_brownian_noise, 0, 2);
    tcase_add_test(tc, test_round6);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("goldens");
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_add_loop_test(tc, test_txt2img_case, 0, 2 * N_CASES);
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);

    tc = tcase_create("behaviour");
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_add_test(tc, test_lcm_default_cfg);
    tcase_add_loop_test(tc, test_kdiff_img2img, 0, 5);
    tcase_add_loop_test(tc, test_diffusers_img2img, 0, 3);
    tcase_add_loop_test(tc, test_bad_input, 0, N_BAD);
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);
    return s;
}
