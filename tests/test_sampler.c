/*
 * test_sampler.c - noise schedules and samplers against the goldens.
 *
 * Suite "schedule": every array of sd1-tiny/schedule.io and
 * ldm-vq4-tiny/schedule.io (betas, alphas_cumprod, DDIM constants,
 * k-diffusion sigmas and step schedules) and the sigma <-> t maps.
 *
 * Suite "sampler": the samplers run WITHOUT a network by replaying the golden
 * trajectories. A fake model callback checks the timestep it is called with
 * (metadata unet_timesteps_per_step) and the latent it is given, and returns
 * the eps that the reference UNet must have returned at that step, derived
 * from the golden trajectory:
 *   DDIM/PLMS  eps' = (x_inter[i] - sqrt(a) * pred_x0[i+1]) / sqrt(1 - a)
 *   k-diff.    eps  = (x - step_denoised[i]) / sigma_i, with x = x_in / c_in
 *              the latent the sampler actually passed
 * The sampler must then reproduce x_inter / pred_x0 / step_x / step_denoised
 * and the final latent within the goldens' tolerances. Property tests cover
 * what no golden records (noise order and counts, eta, inpainting, errors).
 *
 * The goldens are read by a tiny reader below (F32/I32 only), independent of
 * runtime/safetensors.c.
 */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "schedule.h"
#include "testutil.h"
#include "util.h"

/* ----------------------------------------------------------------------------
 * Minimal safetensors reader for the goldens
 * ------------------------------------------------------------------------- */

typedef struct Golden {
    char *path;
    char *buf;       /* whole file */
    size_t len;
    json_t *hdr;     /* parsed JSON header */
    size_t data;     /* offset of the data section: 8 + N */
} Golden;

static void golden_open(Golden *g, const char *rel) {
    memset(g, 0, sizeof *g);
    g->path = ldm_xasprintf("%s/goldens/%s", test_shared_dir(), rel);
    g->buf = ldm_read_file(g->path, &g->len);
    ck_assert_msg(g->buf != NULL, "%s", ldm_last_error());
    ck_assert_msg(g->len >= 8, "%s: too short", g->path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (unsigned char)g->buf[i];
    ck_assert_msg(n <= g->len - 8, "%s: header length %llu past the end", g->path, (unsigned long long)n);
    json_error_t err;
    g->hdr = json_loadb(g->buf + 8, (size_t)n, 0, &err);
    ck_assert_msg(g->hdr != NULL, "%s: bad header JSON: %s", g->path, err.text);
    g->data = 8 + (size_t)n;
}

static void golden_close(Golden *g) {
    json_decref(g->hdr);
    free(g->buf);
    free(g->path);
    memset(g, 0, sizeof *g);
}

/* Copy of tensor `name` (dtype F32 or I32, 4 bytes per element). */
static void *golden_get(const Golden *g, const char *name, const char *dtype, int64_t *numel) {
    json_t *t = json_object_get(g->hdr, name);
    ck_assert_msg(t != NULL, "%s: no tensor '%s'", g->path, name);
    const char *dt = json_string_value(json_object_get(t, "dtype"));
    ck_assert_msg(dt && strcmp(dt, dtype) == 0, "%s: %s has dtype %s, expected %s", g->path, name,
                  dt ? dt : "?", dtype);
    json_t *off = json_object_get(t, "data_offsets");
    size_t b = (size_t)json_integer_value(json_array_get(off, 0));
    size_t e = (size_t)json_integer_value(json_array_get(off, 1));
    ck_assert_msg(e >= b && g->data + e <= g->len && (e - b) % 4 == 0, "%s: %s: bad offsets", g->path, name);
    void *p = ldm_xmalloc(e - b);
    memcpy(p, g->buf + g->data + b, e - b);
    if (numel) *numel = (int64_t)((e - b) / 4);
    return p;
}

static float *golden_f32(const Golden *g, const char *name, int64_t *numel) {
    return golden_get(g, name, "F32", numel);
}

/* __metadata__[key] parsed as JSON (the goldens store JSON documents as strings). */
static json_t *golden_meta(const Golden *g, const char *key) {
    const char *s = json_string_value(json_object_get(json_object_get(g->hdr, "__metadata__"), key));
    ck_assert_msg(s != NULL, "%s: no metadata '%s'", g->path, key);
    json_t *j = json_loads(s, JSON_DECODE_ANY, NULL);
    ck_assert_msg(j != NULL, "%s: metadata '%s' is not JSON", g->path, key);
    return j;
}

/* tolerance[name].max_abs from the metadata. */
static double golden_tol(const Golden *g, const char *name) {
    json_t *tol = golden_meta(g, "tolerance");
    json_t *v = json_object_get(json_object_get(tol, name), "max_abs");
    ck_assert_msg(json_is_number(v), "%s: no tolerance for %s", g->path, name);
    double r = json_number_value(v);
    json_decref(tol);
    return r;
}

/* ----------------------------------------------------------------------------
 * Comparison helpers
 * ------------------------------------------------------------------------- */

static double max_abs_diff(const float *a, const float *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* Distance in float32 ulps (0 = identical). */
static int64_t ulp_diff(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    return llabs((long long)ia - (long long)ib);
}

/* Every element within max_ulp float32 ulps of the golden. */
static void check_ulps(const Golden *g, const char *name, const float *mine, int64_t n, int64_t max_ulp) {
    int64_t gn;
    float *gold = golden_f32(g, name, &gn);
    ck_assert_msg(gn == n, "%s: %s has %lld values, computed %lld", g->path, name, (long long)gn, (long long)n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(ulp_diff(mine[i], gold[i]) <= max_ulp, "%s: %s[%lld] = %.9g, golden %.9g (> %lld ulp)",
                      g->path, name, (long long)i, (double)mine[i], (double)gold[i], (long long)max_ulp);
    free(gold);
}

/* ----------------------------------------------------------------------------
 * Deterministic Gaussian noise for the property tests
 * ------------------------------------------------------------------------- */

typedef struct Noise {
    uint64_t state;
    int64_t draws;     /* number of calls */
    int64_t last_n;    /* size of the last call */
    int bad_size;      /* a call with n != expected_n */
    int64_t expected_n;
    float *last;       /* copy of the last draw (expected_n floats) */
    float *prev;       /* copy of the draw before */
    int zero;          /* produce zeros */
} Noise;

static double noise_u01(Noise *z) {
    z->state ^= z->state << 13;
    z->state ^= z->state >> 7;
    z->state ^= z->state << 17;
    return ((double)(z->state >> 11) + 0.5) / 9007199254740992.0;
}

static void noise_fn(void *ctx, float *out, int64_t n) {
    Noise *z = ctx;
    z->draws++;
    z->last_n = n;
    if (n != z->expected_n) z->bad_size = 1;
    for (int64_t i = 0; i < n; i++) {
        double u1 = noise_u01(z), u2 = noise_u01(z);
        out[i] = z->zero ? 0.0f : (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
    if (z->last && n == z->expected_n) {
        memcpy(z->prev, z->last, (size_t)n * sizeof(float));
        memcpy(z->last, out, (size_t)n * sizeof(float));
    }
}

static void noise_init(Noise *z, uint64_t seed, int64_t n) {
    memset(z, 0, sizeof *z);
    z->state = seed * 0x9E3779B97F4A7C15ull + 1;
    z->expected_n = n;
    z->last = ldm_xcalloc((size_t)n, sizeof(float));
    z->prev = ldm_xcalloc((size_t)n, sizeof(float));
}

static void noise_free(Noise *z) {
    free(z->last);
    free(z->prev);
}

/* ----------------------------------------------------------------------------
 * Suite schedule
 * ------------------------------------------------------------------------- */

static void check_schedule_file(const char *rel, double ls, double le, int has_kdiff) {
    Golden g;
    golden_open(&g, rel);
    LdmSchedule s;
    ck_assert_msg(ldm_schedule_init(&s, ls, le, 1000) == 0, "%s", ldm_last_error());
    /* The reference computes these in float64 and rounds once, or in float32
     * in the same order as here: they must be exact up to 1 ulp. */
    check_ulps(&g, "betas", s.betas, 1000, 1);
    check_ulps(&g, "alphas_cumprod", s.alphas_cumprod, 1000, 1);
    check_ulps(&g, "alphas_cumprod_prev", s.alphas_cumprod_prev, 1000, 1);

    LdmDdim d;
    ck_assert_msg(ldm_ddim_make(&s, 10, 0.0, &d) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(d.n, 10);
    int64_t nt;
    int32_t *ts = golden_get(&g, "ddim_timesteps", "I32", &nt);
    ck_assert_int_eq(nt, 10);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(d.timesteps[i], ts[i]);
    free(ts);
    check_ulps(&g, "ddim_alphas", d.alphas, 10, 1);
    check_ulps(&g, "ddim_alphas_prev", d.alphas_prev, 10, 1);
    check_ulps(&g, "ddim_sqrt_one_minus_alphas", d.sqrt_one_minus_alphas, 10, 1);

    if (has_kdiff) {
        check_ulps(&g, "ddim_sigmas_eta0", d.sigmas, 10, 0);
        check_ulps(&g, "kdiff_sigmas", s.sigmas, 1000, 1);
        float sig[11];
        ck_assert_int_eq(ldm_kdiff_sigmas(&s, LDM_SIGMAS_DISCRETE, 10, sig), 0);
        check_ulps(&g, "kdiff_sigmas_euler10", sig, 11, 1);
        ck_assert_int_eq(ldm_kdiff_sigmas(&s, LDM_SIGMAS_KARRAS, 10, sig), 0);
        check_ulps(&g, "kdiff_sigmas_karras10", sig, 11, 1);
    }
    ldm_ddim_free(&d);
    ldm_schedule_free(&s);
    golden_close(&g);
}

START_TEST(test_schedule_sd1) { check_schedule_file("sd1-tiny/schedule.io.safetensors", 0.00085, 0.012, 1); }
END_TEST

START_TEST(test_schedule_ldm) { check_schedule_file("ldm-vq4-tiny/schedule.io.safetensors", 0.0015, 0.0195, 0); }
END_TEST

/* The checkpoint buffer gives the same schedule as the config values. */
START_TEST(test_schedule_from_alphas) {
    Golden g;
    golden_open(&g, "sd1-tiny/schedule.io.safetensors");
    int64_t n;
    float *ac = golden_f32(&g, "alphas_cumprod", &n);
    LdmSchedule s;
    ck_assert_msg(ldm_schedule_init_from_alphas(&s, ac, (int)n) == 0, "%s", ldm_last_error());
    check_ulps(&g, "kdiff_sigmas", s.sigmas, 1000, 1);
    check_ulps(&g, "alphas_cumprod_prev", s.alphas_cumprod_prev, 1000, 1);
    /* betas = 1 - ac[j] / ac[j-1] from float32 values cancel badly: only ~4 digits */
    float *betas = golden_f32(&g, "betas", &n);
    for (int j = 0; j < 1000; j++) ck_assert(fabs(s.betas[j] - betas[j]) <= 1e-3 * betas[j]);
    free(betas);
    ldm_schedule_free(&s);
    free(ac);
    golden_close(&g);
}
END_TEST

/* sigma_to_t is the inverse of the discrete sigmas, and gives the UNet
 * timesteps the k-diffusion goldens record. */
START_TEST(test_sigma_to_t) {
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    for (int j = 0; j < 1000; j++) ck_assert_float_eq(ldm_sigma_to_t(&s, s.sigmas[j]), (float)j);
    for (int j = 0; j < 1000; j++) ck_assert_float_eq(ldm_t_to_sigma(&s, (float)j), expf(s.log_sigmas[j]));
    /* below sigma_min / above sigma_max: clamped to 0 / T-1 */
    ck_assert_float_eq(ldm_sigma_to_t(&s, s.sigmas[0] * 0.5f), 0.0f);
    ck_assert_float_eq(ldm_sigma_to_t(&s, s.sigmas[999] * 2.0f), 999.0f);

    const char *files[] = {"sd1-tiny/txt2img_euler.io.safetensors", "sd1-tiny/txt2img_dpmpp2m.io.safetensors"};
    for (int f = 0; f < 2; f++) {
        Golden g;
        golden_open(&g, files[f]);
        int64_t n;
        float *sig = golden_f32(&g, "sigmas", &n);
        json_t *ts = golden_meta(&g, "unet_timesteps_per_step");
        ck_assert_int_eq((int64_t)json_array_size(ts), n - 1);
        for (int64_t i = 0; i + 1 < n; i++) {
            /* torch takes log_sigmas with a vectorised (SLEEF) log, which can
             * differ from logf by an ulp: the timestep may move by ~1 ulp. */
            double want = json_number_value(json_array_get(ts, (size_t)i));
            double got = ldm_sigma_to_t(&s, sig[i]);
            ck_assert_msg(fabs(got - want) <= 1e-4, "%s: step %lld: t = %.9g, golden %.9g", g.path,
                          (long long)i, got, want);
        }
        json_decref(ts);
        free(sig);
        golden_close(&g);
    }
    ldm_schedule_free(&s);
}
END_TEST

START_TEST(test_ddim_schedule_shapes) {
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    LdmDdim d;
    /* range(0, 1000, 142) + 1: 8 steps for S = 7, as the reference runs */
    ck_assert_int_eq(ldm_ddim_make(&s, 7, 0.0, &d), 0);
    ck_assert_int_eq(d.n, 8);
    ck_assert_int_eq(d.timesteps[0], 1);
    ck_assert_int_eq(d.timesteps[7], 995);
    ldm_ddim_free(&d);
    ck_assert_int_eq(ldm_ddim_make(&s, 50, 0.0, &d), 0);
    ck_assert_int_eq(d.n, 50);
    ck_assert_int_eq(d.timesteps[49], 981);
    ldm_ddim_free(&d);
    /* S = 3: range(0, 1000, 333) + 1 ends at 1000, the reference fails */
    ck_assert_int_eq(ldm_ddim_make(&s, 3, 0.0, &d), -1);
    ck_assert_msg(strstr(ldm_last_error(), "1000") != NULL, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_ddim_make(&s, 0, 0.0, &d), -1);
    ck_assert_int_eq(ldm_ddim_make(&s, 1001, 0.0, &d), -1);
    ck_assert_int_eq(ldm_ddim_make(&s, 10, -1.0, &d), -1);

    /* eta = 1: the DDIM paper's sigma, sigma^2 + dir^2 <= 1 - a_prev */
    ck_assert_int_eq(ldm_ddim_make(&s, 10, 1.0, &d), 0);
    for (int i = 0; i < 10; i++) {
        double a = d.alphas[i], ap = d.alphas_prev[i];
        double want = sqrt((1 - ap) / (1 - a) * (1 - a / ap));
        ck_assert_msg(fabs(d.sigmas[i] - want) <= 1e-6 * want + 1e-12, "sigma[%d] = %g, expected %g", i,
                      (double)d.sigmas[i], want);
        ck_assert(d.sigmas[i] * d.sigmas[i] <= 1.0f - d.alphas_prev[i]);
    }
    ldm_ddim_free(&d);

    ck_assert_int_eq(ldm_schedule_init(&(LdmSchedule){0}, 0.0, 0.012, 1000), -1);
    ck_assert_int_eq(ldm_schedule_init(&(LdmSchedule){0}, 0.00085, 0.012, 1), -1);
    ldm_schedule_free(&s);
}
END_TEST

Suite *suite_schedule(void) {
    Suite *su = suite_create("schedule");
    TCase *tc = tcase_create("schedule");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_schedule_sd1);
    tcase_add_test(tc, test_schedule_ldm);
    tcase_add_test(tc, test_schedule_from_alphas);
    tcase_add_test(tc, test_sigma_to_t);
    tcase_add_test(tc, test_ddim_schedule_shapes);
    suite_add_tcase(su, tc);
    return su;
}

/* ----------------------------------------------------------------------------
 * Replay of the DDIM / PLMS goldens
 * ------------------------------------------------------------------------- */

/* A fake model that hands out precomputed eps in call order and checks
 * every call's timestep and input. */
typedef struct Replay {
    int64_t n;           /* latent size */
    int n_calls;         /* expected calls */
    int call;            /* calls so far */
    const float *t;      /* (n_calls) expected timesteps */
    double t_tol;        /* allowed |t - expected| */
    float **eps;         /* (n_calls) eps to return */
    float **x_expect;    /* (n_calls) expected input, NULL entries = unchecked */
    double x_tol;
    float *x_scale;      /* (n_calls) factor to undo on the input (k-diffusion c_in), NULL = 1 */
    /* k-diffusion mode: eps computed from the input: (x - D) / sigma */
    float **kd_denoised; /* (n_calls) golden D, or NULL for DDIM mode */
    float *kd_sigma;     /* (n_calls) sigma of each call */
    char err[512];       /* first mismatch */
} Replay;

static int replay_fn(void *ctx, const float *x_in, float t, float *eps_out) {
    Replay *r = ctx;
    int k = r->call++;
    if (k >= r->n_calls) {
        snprintf(r->err, sizeof r->err, "model called %d times, expected %d", k + 1, r->n_calls);
        return ldm_fail("%s", r->err);
    }
    if (!(fabs((double)t - (double)r->t[k]) <= r->t_tol)) {
        snprintf(r->err, sizeof r->err, "call %d: timestep %.9g, expected %.9g", k, (double)t, (double)r->t[k]);
        return ldm_fail("%s", r->err);
    }
    double scale = r->x_scale ? r->x_scale[k] : 1.0;
    if (r->x_expect && r->x_expect[k]) {
        double m = 0;
        for (int64_t j = 0; j < r->n; j++) {
            double d = fabs((double)x_in[j] / scale - r->x_expect[k][j]);
            if (!(d <= m)) m = d;
        }
        if (!(m <= r->x_tol)) {
            snprintf(r->err, sizeof r->err, "call %d: input latent off by %g (tolerance %g)", k, m, r->x_tol);
            return ldm_fail("%s", r->err);
        }
    }
    if (r->kd_denoised) {
        /* D = x - sigma * eps  =>  eps = (x - D) / sigma, with x = x_in / c_in */
        double sigma = r->kd_sigma[k];
        for (int64_t j = 0; j < r->n; j++)
            eps_out[j] = (float)(((double)x_in[j] / scale - (double)r->kd_denoised[k][j]) / sigma);
    } else {
        memcpy(eps_out, r->eps[k], (size_t)r->n * sizeof(float));
    }
    return 0;
}

/* Records every step's x, denoised and x_next. */
typedef struct Record {
    int64_t n;
    int max_steps;
    int steps;
    float *x, *den, *xn; /* (max_steps, n) */
    float *t, *sigma;    /* (max_steps) */
    int stop_at;         /* return -1 at this step (-1: never) */
} Record;

static void record_init(Record *rec, int64_t n, int max_steps) {
    memset(rec, 0, sizeof *rec);
    rec->n = n;
    rec->max_steps = max_steps;
    rec->x = ldm_xcalloc((size_t)(max_steps * n), sizeof(float));
    rec->den = ldm_xcalloc((size_t)(max_steps * n), sizeof(float));
    rec->xn = ldm_xcalloc((size_t)(max_steps * n), sizeof(float));
    rec->t = ldm_xcalloc((size_t)max_steps, sizeof(float));
    rec->sigma = ldm_xcalloc((size_t)max_steps, sizeof(float));
    rec->stop_at = -1;
}

static void record_free(Record *rec) {
    free(rec->x);
    free(rec->den);
    free(rec->xn);
    free(rec->t);
    free(rec->sigma);
}

static int record_fn(void *ctx, const LdmStepInfo *info) {
    Record *rec = ctx;
    if (info->step != rec->steps || info->step >= rec->max_steps) return ldm_fail("unexpected step %d", info->step);
    size_t b = (size_t)rec->n * sizeof(float);
    memcpy(rec->x + info->step * rec->n, info->x, b);
    memcpy(rec->den + info->step * rec->n, info->denoised, b);
    memcpy(rec->xn + info->step * rec->n, info->x_next, b);
    rec->t[info->step] = info->t;
    rec->sigma[info->step] = info->sigma;
    rec->steps++;
    if (info->step == rec->stop_at) return ldm_fail("stopped by test after step %d", info->step);
    return 0;
}

/* The DDIM-family golden of one file: x_T, x_inter [S+1, n], pred_x0 [S+1, n],
 * latent, timesteps, DDIM alphas of the config's schedule golden. */
typedef struct DdimGolden {
    Golden g;
    int64_t n;
    int S;
    float *x_T, *x_inter, *pred_x0, *latent;
    float *alphas;       /* (S) ddim_alphas from the schedule golden */
    float *alphas_prev;  /* (S) */
    float *unet_t;       /* (S) metadata unet_timesteps_per_step */
    double tol_x, tol_p, tol_latent;
} DdimGolden;

static void ddim_golden_load(DdimGolden *dg, const char *rel, const char *schedule_rel) {
    memset(dg, 0, sizeof *dg);
    golden_open(&dg->g, rel);
    int64_t nx, ni, np;
    dg->x_T = golden_f32(&dg->g, "x_T", &dg->n);
    dg->x_inter = golden_f32(&dg->g, "x_inter", &ni);
    dg->pred_x0 = golden_f32(&dg->g, "pred_x0", &np);
    dg->latent = golden_f32(&dg->g, "latent", &nx);
    ck_assert_int_eq(nx, dg->n);
    ck_assert_int_eq(ni % dg->n, 0);
    ck_assert_int_eq(ni, np);
    dg->S = (int)(ni / dg->n) - 1;
    json_t *ts = golden_meta(&dg->g, "unet_timesteps_per_step");
    ck_assert_int_eq((int)json_array_size(ts), dg->S);
    dg->unet_t = ldm_xmalloc((size_t)dg->S * sizeof(float));
    for (int i = 0; i < dg->S; i++) dg->unet_t[i] = (float)json_number_value(json_array_get(ts, (size_t)i));
    json_decref(ts);
    dg->tol_x = golden_tol(&dg->g, "x_inter");
    dg->tol_p = golden_tol(&dg->g, "pred_x0");
    dg->tol_latent = golden_tol(&dg->g, "latent");
    Golden sg;
    golden_open(&sg, schedule_rel);
    int64_t na;
    dg->alphas = golden_f32(&sg, "ddim_alphas", &na);
    ck_assert_int_eq(na, dg->S);
    dg->alphas_prev = golden_f32(&sg, "ddim_alphas_prev", &na);
    golden_close(&sg);
}

static void ddim_golden_free(DdimGolden *dg) {
    free(dg->x_T);
    free(dg->x_inter);
    free(dg->pred_x0);
    free(dg->latent);
    free(dg->alphas);
    free(dg->alphas_prev);
    free(dg->unet_t);
    golden_close(&dg->g);
}

/* eps' of step i (DDIM index S-1-i): (x_inter[i] - sqrt(a) pred_x0[i+1]) / sqrt(1 - a), in double. */
static void ddim_eps_of_step(const DdimGolden *dg, int i, double *out) {
    double a = dg->alphas[dg->S - 1 - i];
    const float *x = dg->x_inter + (int64_t)i * dg->n, *p = dg->pred_x0 + (int64_t)(i + 1) * dg->n;
    for (int64_t j = 0; j < dg->n; j++) out[j] = ((double)x[j] - sqrt(a) * p[j]) / sqrt(1.0 - a);
}

static LdmSampler sampler_defaults(LdmSamplerKind kind, int steps, int64_t n) {
    LdmSampler p;
    memset(&p, 0, sizeof p);
    p.kind = kind;
    p.steps = steps;
    p.n = n;
    return p;
}

static void ddim_replay(const char *rel, const char *schedule_rel, double lin_start, double lin_end) {
    DdimGolden dg;
    ddim_golden_load(&dg, rel, schedule_rel);
    int S = dg.S;
    int64_t n = dg.n;
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, lin_start, lin_end, 1000), 0);

    Replay r;
    memset(&r, 0, sizeof r);
    r.n = n;
    r.n_calls = S;
    r.t = dg.unet_t;
    r.t_tol = 0; /* integer timesteps: exact */
    r.eps = ldm_xcalloc((size_t)S, sizeof(float *));
    r.x_expect = ldm_xcalloc((size_t)S, sizeof(float *));
    r.x_tol = dg.tol_x;
    double *e = ldm_xmalloc((size_t)n * sizeof(double));
    for (int i = 0; i < S; i++) {
        ddim_eps_of_step(&dg, i, e);
        r.eps[i] = ldm_xmalloc((size_t)n * sizeof(float));
        for (int64_t j = 0; j < n; j++) r.eps[i][j] = (float)e[j];
        r.x_expect[i] = dg.x_inter + (int64_t)i * n;
    }
    free(e);

    Record rec;
    record_init(&rec, n, S);
    Noise z;
    noise_init(&z, 1, n);
    LdmSampler p = sampler_defaults(LDM_SAMPLER_DDIM, S, n);
    p.eps_fn = replay_fn;
    p.eps_ctx = &r;
    p.noise_fn = noise_fn;
    p.noise_ctx = &z;
    p.step_fn = record_fn;
    p.step_ctx = &rec;
    float *x = ldm_xmalloc((size_t)n * sizeof(float));
    memcpy(x, dg.x_T, (size_t)n * sizeof(float));
    int rc = ldm_sample(&s, &p, x);
    ck_assert_msg(rc == 0, "%s: %s", rel, ldm_last_error());
    ck_assert_int_eq(r.call, S);
    ck_assert_int_eq(rec.steps, S);
    ck_assert_int_eq(z.draws, S); /* p_sample_ddim draws noise every step, even at eta 0 */
    for (int i = 0; i < S; i++) {
        double dx = max_abs_diff(rec.xn + i * n, dg.x_inter + (int64_t)(i + 1) * n, n);
        double dp = max_abs_diff(rec.den + i * n, dg.pred_x0 + (int64_t)(i + 1) * n, n);
        ck_assert_msg(dx <= dg.tol_x, "%s: x_inter[%d] off by %g (tolerance %g)", rel, i + 1, dx, dg.tol_x);
        ck_assert_msg(dp <= dg.tol_p, "%s: pred_x0[%d] off by %g (tolerance %g)", rel, i + 1, dp, dg.tol_p);
        ck_assert_float_eq(rec.t[i], dg.unet_t[i]);
    }
    double dl = max_abs_diff(x, dg.latent, n);
    ck_assert_msg(dl <= dg.tol_latent, "%s: latent off by %g (tolerance %g)", rel, dl, dg.tol_latent);

    /* eta = 0 without a noise source: bit-identical (the draws are multiplied by 0) */
    float *x2 = ldm_xmalloc((size_t)n * sizeof(float));
    memcpy(x2, dg.x_T, (size_t)n * sizeof(float));
    r.call = 0;
    p.noise_fn = NULL;
    p.step_fn = NULL;
    ck_assert_msg(ldm_sample(&s, &p, x2) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(memcmp(x, x2, (size_t)n * sizeof(float)), 0);

    free(x2);
    free(x);
    noise_free(&z);
    record_free(&rec);
    for (int i = 0; i < S; i++) free(r.eps[i]);
    free(r.eps);
    free(r.x_expect);
    ldm_schedule_free(&s);
    ddim_golden_free(&dg);
}

START_TEST(test_ddim_sd1) {
    ddim_replay("sd1-tiny/txt2img_ddim.io.safetensors", "sd1-tiny/schedule.io.safetensors", 0.00085, 0.012);
}
END_TEST

START_TEST(test_ddim_ldm) {
    ddim_replay("ldm-vq4-tiny/sample_ddim.io.safetensors", "ldm-vq4-tiny/schedule.io.safetensors", 0.0015, 0.0195);
}
END_TEST

/* PLMS: 11 model calls for 10 steps. The golden gives the 10 eps' actually
 * used (e'_i from x_inter/pred_x0), one equation short of the 11 raw eps:
 * the test picks e_0 = e'_0 + delta and e_next = e'_0 - delta (so their mean
 * is e'_0; delta != 0 catches a sampler that skips the averaging), then
 * solves the multistep formulas for the raw e_1..e_9 the sampler must see:
 *   e'_1 = (3 e_1 - e_0) / 2
 *   e'_2 = (23 e_2 - 16 e_1 + 5 e_0) / 12
 *   e'_k = (55 e_k - 59 e_{k-1} + 37 e_{k-2} - 9 e_{k-3}) / 24 */
START_TEST(test_plms_sd1) {
    DdimGolden dg;
    ddim_golden_load(&dg, "sd1-tiny/txt2img_plms.io.safetensors", "sd1-tiny/schedule.io.safetensors");
    int S = dg.S;
    int64_t n = dg.n;
    ck_assert_int_eq(S, 10);
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);

    double *ep = ldm_xmalloc((size_t)(S * n) * sizeof(double)); /* e'_i */
    double *raw = ldm_xmalloc((size_t)(S * n) * sizeof(double)); /* e_i */
    double *enext = ldm_xmalloc((size_t)n * sizeof(double));
    for (int i = 0; i < S; i++) ddim_eps_of_step(&dg, i, ep + i * n);
    for (int64_t j = 0; j < n; j++) {
        double delta = 0.25 * sin(0.37 * (double)j + 1.0);
        raw[j] = ep[j] + delta;
        enext[j] = ep[j] - delta;
    }
    for (int i = 1; i < S; i++)
        for (int64_t j = 0; j < n; j++) {
            double *e = raw, *q = ep;
            double v;
            if (i == 1) v = (2 * q[n + j] + e[j]) / 3;
            else if (i == 2) v = (12 * q[2 * n + j] + 16 * e[n + j] - 5 * e[j]) / 23;
            else
                v = (24 * q[i * n + j] + 59 * e[(i - 1) * n + j] - 37 * e[(i - 2) * n + j] + 9 * e[(i - 3) * n + j]) /
                    55;
            raw[i * n + j] = v;
        }

    /* calls: (x_T, 901), (x_prev of e_0, 801), then (x_inter[i], t_i) for i = 1..9 */
    int nc = S + 1;
    Replay r;
    memset(&r, 0, sizeof r);
    r.n = n;
    r.n_calls = nc;
    float *tt = ldm_xmalloc((size_t)nc * sizeof(float));
    r.t = tt;
    r.eps = ldm_xcalloc((size_t)nc, sizeof(float *));
    r.x_expect = ldm_xcalloc((size_t)nc, sizeof(float *));
    r.x_tol = dg.tol_x;
    for (int k = 0; k < nc; k++) r.eps[k] = ldm_xmalloc((size_t)n * sizeof(float));
    tt[0] = dg.unet_t[0];
    tt[1] = dg.unet_t[1];
    for (int i = 1; i < S; i++) tt[i + 1] = dg.unet_t[i];
    float *x1 = ldm_xmalloc((size_t)n * sizeof(float)); /* x_prev of the first call, in double */
    double a = dg.alphas[S - 1], ap = dg.alphas_prev[S - 1];
    for (int64_t j = 0; j < n; j++) {
        r.eps[0][j] = (float)raw[j];
        r.eps[1][j] = (float)enext[j];
        double p0 = ((double)dg.x_T[j] - sqrt(1 - a) * r.eps[0][j]) / sqrt(a);
        x1[j] = (float)(sqrt(ap) * p0 + sqrt(1 - ap) * r.eps[0][j]);
    }
    r.x_expect[0] = dg.x_T;
    r.x_expect[1] = x1;
    for (int i = 1; i < S; i++) {
        for (int64_t j = 0; j < n; j++) r.eps[i + 1][j] = (float)raw[i * n + j];
        r.x_expect[i + 1] = dg.x_inter + (int64_t)i * n;
    }

    Record rec;
    record_init(&rec, n, S);
    Noise z;
    noise_init(&z, 2, n);
    LdmSampler p = sampler_defaults(LDM_SAMPLER_PLMS, S, n);
    p.eps_fn = replay_fn;
    p.eps_ctx = &r;
    p.noise_fn = noise_fn;
    p.noise_ctx = &z;
    p.step_fn = record_fn;
    p.step_ctx = &rec;
    float *x = ldm_xmalloc((size_t)n * sizeof(float));
    memcpy(x, dg.x_T, (size_t)n * sizeof(float));
    ck_assert_msg(ldm_sample(&s, &p, x) == 0, "plms: %s", ldm_last_error());
    ck_assert_int_eq(r.call, 11);
    ck_assert_int_eq(z.draws, 11); /* 2 in the first step, then 1 per step */
    for (int i = 0; i < S; i++) {
        double dx = max_abs_diff(rec.xn + i * n, dg.x_inter + (int64_t)(i + 1) * n, n);
        double dp = max_abs_diff(rec.den + i * n, dg.pred_x0 + (int64_t)(i + 1) * n, n);
        ck_assert_msg(dx <= dg.tol_x, "plms: x_inter[%d] off by %g (tolerance %g)", i + 1, dx, dg.tol_x);
        ck_assert_msg(dp <= dg.tol_p, "plms: pred_x0[%d] off by %g (tolerance %g)", i + 1, dp, dg.tol_p);
    }
    double dl = max_abs_diff(x, dg.latent, n);
    ck_assert_msg(dl <= dg.tol_latent, "plms: latent off by %g (tolerance %g)", dl, dg.tol_latent);

    free(x);
    free(x1);
    noise_free(&z);
    record_free(&rec);
    for (int k = 0; k < nc; k++) free(r.eps[k]);
    free(r.eps);
    free(r.x_expect);
    free(tt);
    free(ep);
    free(raw);
    free(enext);
    ldm_schedule_free(&s);
    ddim_golden_free(&dg);
}
END_TEST

/* img2img (DDIM, strength 0.6): z_enc = stochastic_encode(init_latent, 6,
 * noise) must match the golden; the model is then called at 501 .. 1 and
 * first sees z_enc. */
START_TEST(test_img2img_ddim_encode) {
    Golden g;
    golden_open(&g, "sd1-tiny/img2img_ddim.io.safetensors");
    int64_t n, m;
    float *init = golden_f32(&g, "init_latent", &n);
    float *noise = golden_f32(&g, "noise", &m);
    float *z_enc = golden_f32(&g, "z_enc", &m);
    ck_assert_int_eq(m, n);
    double tol_z = golden_tol(&g, "z_enc");
    json_t *ts = golden_meta(&g, "unet_timesteps_per_step");
    json_t *strength = golden_meta(&g, "strength");
    json_t *steps = golden_meta(&g, "steps");
    int nc = (int)json_array_size(ts);
    ck_assert_int_eq(nc, 6);
    float *tt = ldm_xmalloc((size_t)nc * sizeof(float));
    for (int i = 0; i < nc; i++) tt[i] = (float)json_number_value(json_array_get(ts, (size_t)i));

    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    Replay r;
    memset(&r, 0, sizeof r);
    r.n = n;
    r.n_calls = nc;
    r.t = tt;
    r.eps = ldm_xcalloc((size_t)nc, sizeof(float *));
    r.x_expect = ldm_xcalloc((size_t)nc, sizeof(float *));
    float *zero = ldm_xcalloc((size_t)n, sizeof(float));
    for (int k = 0; k < nc; k++) r.eps[k] = zero;
    r.x_expect[0] = z_enc;
    r.x_tol = tol_z;

    LdmSampler p = sampler_defaults(LDM_SAMPLER_DDIM, (int)json_number_value(steps), n);
    p.init_latent = init;
    p.strength = json_number_value(strength);
    p.eps_fn = replay_fn;
    p.eps_ctx = &r;
    ck_assert_int_eq(ldm_sample_count_steps(&s, &p), 6);
    float *x = ldm_xmalloc((size_t)n * sizeof(float));
    memcpy(x, noise, (size_t)n * sizeof(float));
    ck_assert_msg(ldm_sample(&s, &p, x) == 0, "img2img: %s", ldm_last_error());
    ck_assert_int_eq(r.call, nc);

    free(x);
    free(zero);
    free(r.eps);
    free(r.x_expect);
    free(tt);
    json_decref(ts);
    json_decref(strength);
    json_decref(steps);
    ldm_schedule_free(&s);
    free(init);
    free(noise);
    free(z_enc);
    golden_close(&g);
}
END_TEST

/* img2img decoding replayed on the txt2img trajectory: with strength 0.6
 * the run is DDIMSampler.decode from index 5 (t = 501), i.e. the last six
 * steps of txt2img. Feeding z_enc = x_inter[4] (init_latent 0, noise =
 * x_inter[4] / sqrt(1 - A[6])) must then reproduce x_inter[5..10]. */
START_TEST(test_img2img_ddim_decode) {
    DdimGolden dg;
    ddim_golden_load(&dg, "sd1-tiny/txt2img_ddim.io.safetensors", "sd1-tiny/schedule.io.safetensors");
    int64_t n = dg.n;
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    LdmDdim d;
    ck_assert_int_eq(ldm_ddim_make(&s, 10, 0.0, &d), 0);
    int first = 4, nc = 6;
    Replay r;
    memset(&r, 0, sizeof r);
    r.n = n;
    r.n_calls = nc;
    r.t = dg.unet_t + first;
    r.eps = ldm_xcalloc((size_t)nc, sizeof(float *));
    r.x_expect = ldm_xcalloc((size_t)nc, sizeof(float *));
    r.x_tol = dg.tol_x;
    double *e = ldm_xmalloc((size_t)n * sizeof(double));
    for (int k = 0; k < nc; k++) {
        ddim_eps_of_step(&dg, first + k, e);
        r.eps[k] = ldm_xmalloc((size_t)n * sizeof(float));
        for (int64_t j = 0; j < n; j++) r.eps[k][j] = (float)e[j];
        r.x_expect[k] = dg.x_inter + (int64_t)(first + k) * n;
    }
    free(e);
    float *init = ldm_xcalloc((size_t)n, sizeof(float));
    float *x = ldm_xmalloc((size_t)n * sizeof(float));
    for (int64_t j = 0; j < n; j++) x[j] = dg.x_inter[first * n + j] / d.sqrt_one_minus_alphas[6];
    Record rec;
    record_init(&rec, n, nc);
    LdmSampler p = sampler_defaults(LDM_SAMPLER_DDIM, 10, n);
    p.init_latent = init;
    p.strength = 0.6;
    p.eps_fn = replay_fn;
    p.eps_ctx = &r;
    p.step_fn = record_fn;
    p.step_ctx = &rec;
    ck_assert_msg(ldm_sample(&s, &p, x) == 0, "img2img: %s", ldm_last_error());
    ck_assert_int_eq(r.call, nc);
    for (int k = 0; k < nc; k++) {
        double dx = max_abs_diff(rec.xn + k * n, dg.x_inter + (int64_t)(first + k + 1) * n, n);
        ck_assert_msg(dx <= dg.tol_x, "img2img: x_inter[%d] off by %g (tolerance %g)", first + k + 1, dx, dg.tol_x);
    }
    double dl = max_abs_diff(x, dg.latent, n);
    ck_assert_msg(dl <= dg.tol_latent, "img2img: latent off by %g (tolerance %g)", dl, dg.tol_latent);

    record_free(&rec);
    free(x);
    free(init);
    for (int k = 0; k < nc; k++) free(r.eps[k]);
    free(r.eps);
    free(r.x_expect);
    ldm_ddim_free(&d);
    ldm_schedule_free(&s);
    ddim_golden_free(&dg);
}
END_TEST

/* ----------------------------------------------------------------------------
 * Replay of the k-diffusion goldens
 * ------------------------------------------------------------------------- */

/* first > 0: img2img replay starting at sigma index `first` (init_latent 0,
 * noise = step_x[first] / sigmas[first]). With full = 0 only the first
 * step's input and every step's timestep are checked (DPM++ 2M restarts
 * first-order, so an img2img run leaves the txt2img trajectory after one
 * step). */
static void kdiff_replay(const char *rel, LdmSamplerKind kind, LdmSigmaKind sk, int first, int full) {
    Golden g;
    golden_open(&g, rel);
    int64_t n, m, ns;
    float *x_T = golden_f32(&g, "x_T", &n);
    float *sig = golden_f32(&g, "sigmas", &ns);
    float *x_start = golden_f32(&g, "x_start", &m);
    float *step_x = golden_f32(&g, "step_x", &m);
    float *step_den = golden_f32(&g, "step_denoised", &m);
    float *latent = golden_f32(&g, "latent", &m);
    int S = (int)ns - 1;
    ck_assert_int_eq(m, n);
    double tol_sig = golden_tol(&g, "sigmas"), tol_xs = golden_tol(&g, "x_start"), tol_x = golden_tol(&g, "step_x");
    double tol_d = golden_tol(&g, "step_denoised"), tol_l = golden_tol(&g, "latent");
    json_t *ts = golden_meta(&g, "unet_timesteps_per_step");
    float *tt = ldm_xmalloc((size_t)S * sizeof(float));
    for (int i = 0; i < S; i++) tt[i] = (float)json_number_value(json_array_get(ts, (size_t)i));
    json_decref(ts);

    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    float *mysig = ldm_xmalloc((size_t)ns * sizeof(float));
    ck_assert_int_eq(ldm_kdiff_sigmas(&s, sk, S, mysig), 0);
    double dsig = max_abs_diff(mysig, sig, ns);
    ck_assert_msg(dsig <= tol_sig, "%s: sigmas off by %g (tolerance %g)", rel, dsig, tol_sig);

    int nc = S - first;
    Replay r;
    memset(&r, 0, sizeof r);
    r.n = n;
    r.n_calls = nc;
    r.t = tt + first;
    r.t_tol = 1e-4; /* see test_sigma_to_t */
    r.x_expect = ldm_xcalloc((size_t)nc, sizeof(float *));
    r.x_tol = tol_x;
    r.x_scale = ldm_xmalloc((size_t)nc * sizeof(float));
    r.kd_denoised = ldm_xcalloc((size_t)nc, sizeof(float *));
    r.kd_sigma = ldm_xmalloc((size_t)nc * sizeof(float));
    for (int k = 0; k < nc; k++) {
        float sg = sig[first + k];
        r.x_scale[k] = 1.0f / sqrtf(sg * sg + 1.0f);
        r.kd_sigma[k] = sg;
        r.kd_denoised[k] = step_den + (int64_t)(first + k) * n;
        r.x_expect[k] = k == 0 || full ? step_x + (int64_t)(first + k) * n : NULL;
    }

    Record rec;
    record_init(&rec, n, nc);
    Noise z;
    noise_init(&z, 3, n);
    LdmSampler p = sampler_defaults(kind, S, n);
    p.sigmas = sk;
    p.eps_fn = replay_fn;
    p.eps_ctx = &r;
    p.noise_fn = noise_fn;
    p.noise_ctx = &z;
    p.step_fn = record_fn;
    p.step_ctx = &rec;
    float *x = ldm_xmalloc((size_t)n * sizeof(float));
    float *init = ldm_xcalloc((size_t)n, sizeof(float));
    if (first == 0) {
        memcpy(x, x_T, (size_t)n * sizeof(float));
    } else {
        p.init_latent = init;
        p.strength = (double)(S - first) / S + 1e-9;
        for (int64_t j = 0; j < n; j++) x[j] = step_x[first * n + j] / sig[first];
    }
    ck_assert_int_eq(ldm_sample_count_steps(&s, &p), nc);
    ck_assert_msg(ldm_sample(&s, &p, x) == 0, "%s: %s", rel, ldm_last_error());
    ck_assert_int_eq(r.call, nc);
    ck_assert_int_eq(rec.steps, nc);
    if (first == 0) {
        double d0 = max_abs_diff(rec.x, x_start, n);
        ck_assert_msg(d0 <= tol_xs, "%s: x_start off by %g (tolerance %g)", rel, d0, tol_xs);
    }
    for (int k = 0; k < (full ? nc : 1); k++) {
        double dx = max_abs_diff(rec.x + k * n, step_x + (int64_t)(first + k) * n, n);
        double dd = max_abs_diff(rec.den + k * n, step_den + (int64_t)(first + k) * n, n);
        ck_assert_msg(dx <= tol_x, "%s: step_x[%d] off by %g (tolerance %g)", rel, first + k, dx, tol_x);
        ck_assert_msg(dd <= tol_d, "%s: step_denoised[%d] off by %g (tolerance %g)", rel, first + k, dd, tol_d);
        ck_assert_float_eq(rec.sigma[k], mysig[first + k]);
    }
    double dl = max_abs_diff(x, latent, n);
    ck_assert_msg(dl <= tol_l || !full, "%s: latent off by %g (tolerance %g)", rel, dl, tol_l);
    /* sample_euler draws its (unused) churn noise every step; DPM++ 2M none */
    ck_assert_int_eq(z.draws, kind == LDM_SAMPLER_EULER ? nc : 0);
    ck_assert(!z.bad_size);

    free(x);
    free(init);
    noise_free(&z);
    record_free(&rec);
    free(r.x_expect);
    free(r.x_scale);
    free(r.kd_denoised);
    free(r.kd_sigma);
    free(mysig);
    ldm_schedule_free(&s);
    free(tt);
    free(x_T);
    free(sig);
    free(x_start);
    free(step_x);
    free(step_den);
    free(latent);
    golden_close(&g);
}

START_TEST(test_euler_sd1) {
    kdiff_replay("sd1-tiny/txt2img_euler.io.safetensors", LDM_SAMPLER_EULER, LDM_SIGMAS_DISCRETE, 0, 1);
}
END_TEST

START_TEST(test_dpmpp2m_sd1) {
    kdiff_replay("sd1-tiny/txt2img_dpmpp2m.io.safetensors", LDM_SAMPLER_DPMPP_2M, LDM_SIGMAS_KARRAS, 0, 1);
}
END_TEST

/* k-diffusion img2img: strength 0.6 of 10 steps starts at sigma index 4 and
 * runs the last 6 steps (Euler: exactly the rest of the txt2img trajectory). */
START_TEST(test_img2img_kdiff) {
    kdiff_replay("sd1-tiny/txt2img_euler.io.safetensors", LDM_SAMPLER_EULER, LDM_SIGMAS_DISCRETE, 4, 1);
    kdiff_replay("sd1-tiny/txt2img_dpmpp2m.io.safetensors", LDM_SAMPLER_DPMPP_2M, LDM_SIGMAS_KARRAS, 4, 0);
}
END_TEST

/* ----------------------------------------------------------------------------
 * Properties
 * ------------------------------------------------------------------------- */

/* A smooth stand-in for the UNet: eps = 0.3 x + 0.01 t-dependent offset. It
 * also records the last input, timestep and noise draw for the inpainting
 * checks. */
typedef struct Toy {
    int64_t n;
    int calls;
    int fail_at;             /* return -1 at this call (-1: never) */
    /* inpainting check */
    const LdmSchedule *s;
    const float *x0, *mask;
    int64_t plane;
    Noise *z;
    int kdiff;
    double worst;            /* largest |known x_in - expected noised x0| seen */
    const float *sig;        /* k-samplers: the sigma schedule */
    int sig_start;           /* index of the first step */
    int skip_call;           /* call not to check (-1: none) */
    int blend_is_prev;       /* the blend draw is the one before the last */
    float *x_seen;           /* copy of the last input */
} Toy;

static int toy_fn(void *ctx, const float *x_in, float t, float *eps_out) {
    Toy *toy = ctx;
    if (toy->calls++ == toy->fail_at) return ldm_fail("toy model: failing on purpose");
    for (int64_t j = 0; j < toy->n; j++) eps_out[j] = 0.3f * x_in[j] + 0.01f * sinf(0.001f * t + (float)(j % 7));
    if (toy->x_seen) memcpy(toy->x_seen, x_in, (size_t)toy->n * sizeof(float));
    return 0;
}

static void toy_init(Toy *toy, int64_t n) {
    memset(toy, 0, sizeof *toy);
    toy->n = n;
    toy->fail_at = -1;
    toy->skip_call = -1;
}

static void fill_pattern(float *x, int64_t n, uint64_t seed) {
    Noise z;
    noise_init(&z, seed, n);
    noise_fn(&z, x, n);
    noise_free(&z);
}

/* Noise draws per run, in latent-sized requests, for every sampler. */
START_TEST(test_noise_counts) {
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    const int64_t n = 2 * 4 * 8 * 8, plane = 64;
    struct {
        LdmSamplerKind kind;
        double eta;
        int draws, draws_masked;
        int calls;                  /* model calls (0: 10) */
        LdmNoiseSamplerKind ns;
        double gamma;
    } cases[] = {
        {LDM_SAMPLER_DDIM, 0.0, 10, 20, 0, 0, 0},    {LDM_SAMPLER_DDIM, 0.5, 10, 20, 0, 0, 0},
        {LDM_SAMPLER_PLMS, 0.0, 11, 21, 11, 0, 0},   {LDM_SAMPLER_EULER, 0.0, 10, 20, 0, 0, 0},
        {LDM_SAMPLER_EULER_A, 0.0, 9, 19, 0, 0, 0},  {LDM_SAMPLER_DPMPP_2M, 0.0, 0, 10, 0, 0, 0},
        /* heun, dpm2: the unused churn draw every step, a second call but on the last */
        {LDM_SAMPLER_HEUN, 0.0, 10, 20, 19, 0, 0},   {LDM_SAMPLER_DPM2, 0.0, 10, 20, 19, 0, 0},
        /* dpmpp_2s_a: one draw per step but the last */
        {LDM_SAMPLER_DPMPP_2S_A, 0.0, 9, 19, 19, 0, 0},
        /* the SDE samplers: two / one randn draws per step but the last; none from the tree */
        {LDM_SAMPLER_DPMPP_SDE, 0.0, 18, 28, 19, LDM_NOISE_RANDN, 0},
        {LDM_SAMPLER_DPMPP_SDE, 0.0, 0, 10, 19, LDM_NOISE_BROWNIAN, 0},
        {LDM_SAMPLER_DPMPP_2M_SDE, 0.0, 9, 19, 0, LDM_NOISE_RANDN, 0},
        {LDM_SAMPLER_DPMPP_2M_SDE, 0.0, 0, 10, 0, LDM_NOISE_BROWNIAN, 0},
        /* diffusers: lcm and tcd draw after every step but the last; their
         * inpainting re-uses the initial noise (no draws) */
        {LDM_SAMPLER_LCM, 0.0, 9, 9, 0, 0, 0},       {LDM_SAMPLER_TCD, 0.0, 9, 9, 0, 0, 0.3},
        {LDM_SAMPLER_TCD, 0.0, 0, 0, 0, 0, 0.0},     {LDM_SAMPLER_UNI_PC, 0.0, 0, 0, 0, 0, 0},
    };
    float *x = ldm_xmalloc((size_t)n * sizeof(float));
    float *x0 = ldm_xmalloc((size_t)n * sizeof(float));
    float mask[64];
    for (int j = 0; j < 64; j++) mask[j] = j < 32 ? 1.0f : 0.0f;
    fill_pattern(x0, n, 99);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int masked = 0; masked < 2; masked++) {
            Toy toy;
            toy_init(&toy, n);
            Noise z;
            noise_init(&z, 7, n);
            LdmSampler p = sampler_defaults(cases[c].kind, 10, n);
            p.eta = cases[c].eta;
            p.noise_sampler = cases[c].ns;
            p.gamma = cases[c].gamma;
            p.seed = 11;
            p.eps_fn = toy_fn;
            p.eps_ctx = &toy;
            p.noise_fn = noise_fn;
            p.noise_ctx = &z;
            if (masked) {
                p.init_latent = x0;
                p.mask = mask;
                p.plane = plane;
            }
            fill_pattern(x, n, 5);
            if (masked && cases[c].draws_masked < 0) {
                /* not defined for inpainting: refused */
                ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
                ck_assert_msg(strstr(ldm_last_error(), "inpainting") != NULL, "%s", ldm_last_error());
                ck_assert_int_eq(toy.calls, 0);
                noise_free(&z);
                continue;
            }
            ck_assert_msg(ldm_sample(&s, &p, x) == 0, "%s: %s", ldm_sampler_name(cases[c].kind), ldm_last_error());
            int want = masked ? cases[c].draws_masked : cases[c].draws;
            ck_assert_msg(z.draws == want, "%s%s: %lld noise draws, expected %d", ldm_sampler_name(cases[c].kind),
                          masked ? " (inpainting)" : "", (long long)z.draws, want);
            ck_assert(!z.bad_size);
            ck_assert_msg(toy.calls == (cases[c].calls ? cases[c].calls : 10), "%s: %d model calls",
                          ldm_sampler_name(cases[c].kind), toy.calls);
            for (int64_t j = 0; j < n; j++) ck_assert(isfinite(x[j]));
            noise_free(&z);
        }
    free(x);
    free(x0);
    ldm_schedule_free(&s);
}
END_TEST

/* DDIM with eta > 0, one step checked by hand against p_sample_ddim in
 * double: x_prev = sqrt(a_prev) pred_x0 + sqrt(1 - a_prev - sigma^2) e + sigma z. */
START_TEST(test_ddim_eta) {
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    const int64_t n = 64;
    const double eta = 0.7;
    LdmDdim d;
    ck_assert_int_eq(ldm_ddim_make(&s, 10, eta, &d), 0);
    float *x = ldm_xmalloc((size_t)n * sizeof(float));
    float *xT = ldm_xmalloc((size_t)n * sizeof(float));
    fill_pattern(xT, n, 11);
    memcpy(x, xT, (size_t)n * sizeof(float));
    Toy toy;
    toy_init(&toy, n);
    Noise z;
    noise_init(&z, 12, n);
    Record rec;
    record_init(&rec, n, 10);
    rec.stop_at = 0; /* one step is enough */
    LdmSampler p = sampler_defaults(LDM_SAMPLER_DDIM, 10, n);
    p.eta = eta;
    p.eps_fn = toy_fn;
    p.eps_ctx = &toy;
    p.noise_fn = noise_fn;
    p.noise_ctx = &z;
    p.step_fn = record_fn;
    p.step_ctx = &rec;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    ck_assert_msg(strstr(ldm_last_error(), "stopped by test") != NULL, "%s", ldm_last_error());
    ck_assert_int_eq(rec.steps, 1);
    double a = d.alphas[9], ap = d.alphas_prev[9], sg = d.sigmas[9];
    ck_assert(sg > 0.01);
    /* z.last is the draw of step 0 (the run stopped before a second one) */
    ck_assert_int_eq(z.draws, 1);
    for (int64_t j = 0; j < n; j++) {
        double e = 0.3f * xT[j] + 0.01f * sinf(0.001f * 901.0f + (float)(j % 7));
        double p0 = (xT[j] - sqrt(1 - a) * e) / sqrt(a);
        double want = sqrt(ap) * p0 + sqrt(1 - ap - sg * sg) * e + sg * z.last[j];
        ck_assert_msg(fabs(rec.xn[j] - want) <= 1e-5 * (1 + fabs(want)), "x_prev[%lld] = %g, expected %g",
                      (long long)j, (double)rec.xn[j], want);
    }
    record_free(&rec);
    noise_free(&z);
    free(x);
    free(xT);
    ldm_ddim_free(&d);
    ldm_schedule_free(&s);
}
END_TEST

static void run_euler_a(const LdmSchedule *s, float *x, int64_t n, uint64_t seed, int zero_noise) {
    Toy toy;
    toy_init(&toy, n);
    Noise z;
    noise_init(&z, seed, n);
    z.zero = zero_noise;
    LdmSampler p = sampler_defaults(LDM_SAMPLER_EULER_A, 8, n);
    p.sigmas = LDM_SIGMAS_KARRAS;
    p.eps_fn = toy_fn;
    p.eps_ctx = &toy;
    p.noise_fn = noise_fn;
    p.noise_ctx = &z;
    fill_pattern(x, n, 21);
    ck_assert_msg(ldm_sample(s, &p, x) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(z.draws, 7);
    noise_free(&z);
}

/* Euler ancestral is a pure function of its noise stream. */
START_TEST(test_euler_a_deterministic) {
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    const int64_t n = 256;
    float *a = ldm_xmalloc((size_t)n * sizeof(float)), *b = ldm_xmalloc((size_t)n * sizeof(float));
    float *c = ldm_xmalloc((size_t)n * sizeof(float)), *zr = ldm_xmalloc((size_t)n * sizeof(float));
    run_euler_a(&s, a, n, 31, 0);
    run_euler_a(&s, b, n, 31, 0);
    run_euler_a(&s, c, n, 32, 0);
    run_euler_a(&s, zr, n, 31, 1);
    ck_assert_int_eq(memcmp(a, b, (size_t)n * sizeof(float)), 0);
    ck_assert(max_abs_diff(a, c, n) > 1e-3);  /* the noise matters */
    ck_assert(max_abs_diff(a, zr, n) > 1e-3);
    for (int64_t j = 0; j < n; j++) ck_assert(isfinite(a[j]) && isfinite(zr[j]));
    free(a);
    free(b);
    free(c);
    free(zr);
    ldm_schedule_free(&s);
}
END_TEST

/* Inpainting: at every model call the known region holds the original
 * latent noised to the current level with the step's blend draw, and the
 * final latent equals the original exactly there. */
static int inpaint_model(void *ctx, const float *x_in, float t, float *eps_out) {
    Toy *toy = ctx;
    const LdmSchedule *s = toy->s;
    int call = toy->calls;
    float a, b, scale = 1.0f;
    if (toy->kdiff) {
        float sigma = toy->sig[toy->sig_start + call];
        a = 1.0f;
        b = sigma;
        scale = 1.0f / sqrtf(sigma * sigma + 1.0f);
    } else {
        int ts = (int)t;
        a = s->sqrt_alphas_cumprod[ts];
        b = s->sqrt_one_minus_alphas_cumprod[ts];
    }
    /* PLMS's second call (first step) sees the un-blended x_prev */
    if (call != toy->skip_call) {
        /* euler draws its churn noise after the blend draw */
        const float *blend = toy->blend_is_prev ? toy->z->prev : toy->z->last;
        for (int64_t j = 0; j < toy->n; j++) {
            if (toy->mask[j % toy->plane] != 1.0f) continue;
            double want = ((double)a * toy->x0[j] + (double)b * blend[j]) * scale;
            double d = fabs(x_in[j] - want) / (1.0 + fabs(want));
            if (d > toy->worst) toy->worst = d;
        }
    }
    return toy_fn(ctx, x_in, t, eps_out);
}

START_TEST(test_inpaint_known_region) {
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    const int64_t plane = 8 * 8, n = 2 * 4 * plane;
    float *x0 = ldm_xmalloc((size_t)n * sizeof(float)), *x = ldm_xmalloc((size_t)n * sizeof(float));
    float mask[64], sig[11];
    ck_assert_int_eq(ldm_kdiff_sigmas(&s, LDM_SIGMAS_DISCRETE, 10, sig), 0);
    for (int j = 0; j < 64; j++) mask[j] = (j % 8) < 3 ? 1.0f : ((j % 8) == 3 ? 0.5f : 0.0f);
    fill_pattern(x0, n, 41);
    LdmSamplerKind kinds[] = {LDM_SAMPLER_DDIM, LDM_SAMPLER_PLMS, LDM_SAMPLER_EULER_A, LDM_SAMPLER_DPMPP_2M,
                              LDM_SAMPLER_EULER};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
        for (int img2img = 0; img2img < 2; img2img++) {
            Toy toy;
            toy_init(&toy, n);
            Noise z;
            noise_init(&z, 43, n);
            toy.s = &s;
            toy.x0 = x0;
            toy.mask = mask;
            toy.plane = plane;
            toy.z = &z;
            toy.kdiff = kinds[k] != LDM_SAMPLER_DDIM && kinds[k] != LDM_SAMPLER_PLMS;
            toy.sig = sig;
            toy.sig_start = img2img ? 10 - 5 : 0;
            toy.skip_call = kinds[k] == LDM_SAMPLER_PLMS ? 1 : -1;
            toy.blend_is_prev = kinds[k] == LDM_SAMPLER_EULER;
            LdmSampler p = sampler_defaults(kinds[k], 10, n);
            p.init_latent = x0;
            p.strength = img2img ? 0.5 : 0.0;
            p.mask = mask;
            p.plane = plane;
            p.eps_fn = inpaint_model;
            p.eps_ctx = &toy;
            p.noise_fn = noise_fn;
            p.noise_ctx = &z;
            fill_pattern(x, n, 45);
            ck_assert_msg(ldm_sample(&s, &p, x) == 0, "%s: %s", ldm_sampler_name(kinds[k]), ldm_last_error());
            for (int64_t j = 0; j < n; j++) {
                float m = mask[j % plane];
                if (m == 1.0f)
                    ck_assert_msg(x[j] == x0[j], "%s: known value %lld changed: %g != %g", ldm_sampler_name(kinds[k]),
                                  (long long)j, (double)x[j], (double)x0[j]);
                else if (m == 0.0f)
                    ck_assert(x[j] != x0[j]);
            }
            int want_calls = kinds[k] == LDM_SAMPLER_PLMS ? (img2img ? 6 : 11) : (img2img ? 5 : 10);
            ck_assert_int_eq(toy.calls, want_calls);
            ck_assert_msg(toy.worst <= 1e-6, "%s: known region at the model input off by %g (relative)",
                              ldm_sampler_name(kinds[k]), toy.worst);
            noise_free(&z);
        }
    free(x0);
    free(x);
    ldm_schedule_free(&s);
}
END_TEST

/* Bad parameters and failing callbacks give errors, never crashes. */
START_TEST(test_sampler_errors) {
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    const int64_t n = 16;
    float x[16] = {0}, x0[16] = {0}, mask[4] = {1, 1, 0, 0};
    Toy toy;
    toy_init(&toy, n);
    LdmSampler p = sampler_defaults(LDM_SAMPLER_PLMS, 10, n);
    p.eps_fn = toy_fn;
    p.eps_ctx = &toy;

    p.eta = 0.5;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    ck_assert_msg(strstr(ldm_last_error(), "eta") != NULL, "%s", ldm_last_error());
    p.eta = 0;

    p.kind = LDM_SAMPLER_DDIM;
    p.init_latent = x0;
    p.strength = 0.05;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    ck_assert_msg(strstr(ldm_last_error(), "strength") != NULL, "%s", ldm_last_error());
    p.strength = 1.5;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    p.strength = 0;
    p.init_latent = NULL;

    p.mask = mask;
    p.plane = 4;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    ck_assert_msg(strstr(ldm_last_error(), "init_latent") != NULL, "%s", ldm_last_error());
    p.init_latent = x0;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1); /* no noise source */
    ck_assert_msg(strstr(ldm_last_error(), "noise") != NULL, "%s", ldm_last_error());
    p.plane = 5;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1); /* 5 does not tile 16 */
    p.mask = NULL;
    p.init_latent = NULL;
    p.plane = 0;

    p.kind = LDM_SAMPLER_EULER_A;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    ck_assert_msg(strstr(ldm_last_error(), "noise") != NULL, "%s", ldm_last_error());

    p.kind = LDM_SAMPLER_DPMPP_2M;
    p.steps = 0;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    p.steps = 10;
    p.eps_fn = NULL;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    p.eps_fn = toy_fn;

    /* tcd: gamma outside [0, 1]; samplers that need noise without a source */
    p.kind = LDM_SAMPLER_TCD;
    p.gamma = 1.5;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    ck_assert_msg(strstr(ldm_last_error(), "gamma") != NULL, "%s", ldm_last_error());
    p.gamma = -0.5;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    p.gamma = 0.3;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1); /* gamma > 0 needs noise */
    ck_assert_msg(strstr(ldm_last_error(), "noise") != NULL, "%s", ldm_last_error());
    p.gamma = 0.0;
    p.kind = LDM_SAMPLER_LCM;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    ck_assert_msg(strstr(ldm_last_error(), "noise") != NULL, "%s", ldm_last_error());
    p.kind = LDM_SAMPLER_DPMPP_2M_SDE;
    p.noise_sampler = LDM_NOISE_RANDN;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    ck_assert_msg(strstr(ldm_last_error(), "noise") != NULL, "%s", ldm_last_error());
    p.noise_sampler = LDM_NOISE_BROWNIAN;
    p.kind = LDM_SAMPLER_LCM;
    p.steps = 51; /* beyond the 50-step LCM grid */
    p.noise_fn = noise_fn;
    Noise z0;
    noise_init(&z0, 3, n);
    p.noise_ctx = &z0;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    ck_assert_msg(strstr(ldm_last_error(), "51") != NULL, "%s", ldm_last_error());
    p.steps = 10;
    p.kind = LDM_SAMPLER_EULER;
    p.sigmas = LDM_SIGMAS_POLYEXPONENTIAL;
    p.rho = -1;
    ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
    ck_assert_msg(strstr(ldm_last_error(), "rho") != NULL, "%s", ldm_last_error());
    p.rho = 0;
    p.sigmas = LDM_SIGMAS_DISCRETE;

    /* a failing model stops the run with its message */
    LdmSamplerKind all[] = {LDM_SAMPLER_DDIM,      LDM_SAMPLER_PLMS,       LDM_SAMPLER_EULER,       LDM_SAMPLER_DPMPP_2M,
                            LDM_SAMPLER_HEUN,      LDM_SAMPLER_DPM2,       LDM_SAMPLER_DPMPP_2S_A,  LDM_SAMPLER_DPMPP_SDE,
                            LDM_SAMPLER_DPMPP_2M_SDE, LDM_SAMPLER_LCM,     LDM_SAMPLER_TCD,         LDM_SAMPLER_UNI_PC};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        for (int at = 0; at < 3; at++) {
            toy_init(&toy, n);
            toy.fail_at = at;
            p.kind = all[k];
            ck_assert_int_eq(ldm_sample(&s, &p, x), -1);
            ck_assert_msg(strstr(ldm_last_error(), "failing on purpose") != NULL, "%s", ldm_last_error());
        }

    noise_free(&z0);
    LdmSamplerKind kind;
    ck_assert_int_eq(ldm_sampler_parse("euler_a", &kind), 0);
    ck_assert_int_eq(kind, LDM_SAMPLER_EULER_A);
    ck_assert_int_eq(ldm_sampler_parse("k_lms", &kind), -1);
    ck_assert_msg(strstr(ldm_last_error(), "k_lms") != NULL, "%s", ldm_last_error());
    /* every name round-trips; the webui's display names */
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) {
        ck_assert_int_eq(ldm_sampler_parse(ldm_sampler_name(all[k]), &kind), 0);
        ck_assert_int_eq(kind, all[k]);
    }
    static const struct {
        const char *name;
        LdmSamplerKind kind;
        int sched; /* -1: none implied */
    } webui[] = {
        {"Euler a", LDM_SAMPLER_EULER_A, -1},       {"DPM++ 2M", LDM_SAMPLER_DPMPP_2M, -1},
        {"DPM++ 2M SDE", LDM_SAMPLER_DPMPP_2M_SDE, -1}, {"DPM++ SDE", LDM_SAMPLER_DPMPP_SDE, -1},
        {"DPM++ 2S a", LDM_SAMPLER_DPMPP_2S_A, -1}, {"DPM2", LDM_SAMPLER_DPM2, -1},
        {"Heun", LDM_SAMPLER_HEUN, -1},             {"LCM", LDM_SAMPLER_LCM, -1},
        {"UniPC", LDM_SAMPLER_UNI_PC, -1},          {"DDIM", LDM_SAMPLER_DDIM, -1},
        {"DPM++ 2M Karras", LDM_SAMPLER_DPMPP_2M, LDM_SIGMAS_KARRAS},
        {"DPM++ 2M SDE Exponential", LDM_SAMPLER_DPMPP_2M_SDE, LDM_SIGMAS_EXPONENTIAL},
    };
    for (size_t k = 0; k < sizeof webui / sizeof webui[0]; k++) {
        int has = 0;
        LdmSigmaKind sk = LDM_SIGMAS_DISCRETE;
        ck_assert_msg(ldm_sampler_parse_ex(webui[k].name, &kind, &has, &sk) == 0, "%s", ldm_last_error());
        ck_assert_msg(kind == webui[k].kind, "%s -> %s", webui[k].name, ldm_sampler_name(kind));
        ck_assert_int_eq(has, webui[k].sched >= 0);
        if (has) ck_assert_int_eq(sk, webui[k].sched);
    }
    ck_assert_int_eq(ldm_sampler_parse("DPM++ 2M Karras", &kind), -1); /* no place for the schedule */
    ck_assert_int_eq(ldm_sampler_parse("PLMS Karras", &kind), -1);
    ck_assert_int_eq(ldm_sampler_parse("bogus", &kind), -1);
    ck_assert_msg(strstr(ldm_last_error(), "dpmpp_2m_sde") && strstr(ldm_last_error(), "uni_pc"), "%s", ldm_last_error());
    ldm_schedule_free(&s);
}
END_TEST

/* ----------------------------------------------------------------------------
 * lcm, tcd, uni_pc in img2img and inpainting (diffusers' pipelines)
 * ------------------------------------------------------------------------- */

/* A model that records every call's input and timestep (eps = 0.3 x + an
 * offset, as toy_fn). */
typedef struct Calls {
    int64_t n;
    int count, max;
    float *x, *t; /* (max, n), (max) */
    float *eps;   /* (max, n) the outputs */
} Calls;

static int calls_fn(void *ctx, const float *x_in, float t, float *eps_out) {
    Calls *c = ctx;
    for (int64_t j = 0; j < c->n; j++) eps_out[j] = 0.3f * x_in[j] + 0.01f * sinf(0.001f * t + (float)(j % 7));
    if (c->count < c->max) {
        memcpy(c->x + (int64_t)c->count * c->n, x_in, (size_t)c->n * sizeof(float));
        memcpy(c->eps + (int64_t)c->count * c->n, eps_out, (size_t)c->n * sizeof(float));
        c->t[c->count] = t;
    }
    c->count++;
    return 0;
}

static void calls_init(Calls *c, int64_t n, int max) {
    memset(c, 0, sizeof *c);
    c->n = n;
    c->max = max;
    c->x = ldm_xcalloc((size_t)(max * n), sizeof(float));
    c->eps = ldm_xcalloc((size_t)(max * n), sizeof(float));
    c->t = ldm_xcalloc((size_t)max, sizeof(float));
}

static void calls_free(Calls *c) {
    free(c->x);
    free(c->eps);
    free(c->t);
}

/* The timesteps that run, derived by hand from diffusers (no golden has them):
 *   LCMScheduler / TCDScheduler.set_timesteps(S) (strength 1): k = 1000 // 50 = 20,
 *     lcm_origin_timesteps = [1..50] * 20 - 1, reversed: origin[j] = 999 - 20 j;
 *     timesteps[i] = origin[floor(linspace(0, 50, S, endpoint=False))[i]] = origin[floor(50 i / S)].
 *   UniPCMultistepScheduler.set_timesteps(S): round(linspace(0, 999, S + 1))[::-1][:-1]
 *     (numpy round half to even).
 *   StableDiffusionImg2ImgPipeline / StableDiffusionInpaintPipeline.get_timesteps(S, strength):
 *     init_timestep = min(int(S * strength), S); t_start = max(S - init_timestep, 0);
 *     timesteps[t_start * scheduler.order:] with order = 1 for all three.
 * So:
 *   lcm 4, 0.5:  j = floor(0, 12.5, 25, 37.5) = 0, 12, 25, 37 -> 999, 759, 499, 259;
 *                int(2.0) = 2, t_start 2 -> 499, 259
 *   lcm 4, 0.6:  int(2.4) = 2 -> 499, 259
 *   lcm 4, 0.75: int(3.0) = 3, t_start 1 -> 759, 499, 259
 *   lcm 4, 1 (init latent, no mask: the img2img pipeline at strength 1): t_start 0 -> 999, 759, 499, 259
 *   lcm 3, 0.5:  j = floor(0, 16.67, 33.33) = 0, 16, 33 -> 999, 679, 339; int(1.5) = 1, t_start 2 -> 339
 *   lcm 8, 0.3:  j = 0, 6, 12, 18, 25, 31, 37, 43 -> 999, 879, 759, 639, 499, 379, 259, 139;
 *                int(2.4) = 2, t_start 6 -> 259, 139
 *   lcm 1, 1:    999
 *   tcd 4, 0.5:  as lcm -> 499, 259
 *   uni_pc 10, 0.5: linspace 0, 99.9, ..., 499.5, ..., 999 rounded 0, 100, 200, 300, 400, 500 (half to
 *                even), 599, 699, 799, 899, 999 -> 999, 899, 799, 699, 599, 500, 400, 300, 200, 100;
 *                int(5.0) = 5, t_start 5 -> 500, 400, 300, 200, 100
 *   uni_pc 10, 0.7: 10 * 0.7 = 7.0, t_start 3 -> 699, 599, 500, 400, 300, 200, 100
 *   uni_pc 100, 0.29: 100 * 0.29 = 28.999999999999996 in doubles -> int 28 (not 29), t_start 72:
 *                first round(72nd from the top) = round(9.99 * 28) = round(279.72) = 280, last round(9.99) = 10
 *   lcm 2, 0.4 (int(0.8) = 0) and uni_pc 10, 0.05 (int(0.5) = 0): no step runs -> error.
 * (Cross-checked once by re-running these formulas in plain python3.) */
START_TEST(test_diffusers_img2img_timesteps) {
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    static const struct {
        LdmSamplerKind kind;
        int steps;
        double strength;
        int n;
        int ts[8];
    } k[] = {
        {LDM_SAMPLER_LCM, 4, 0.5, 2, {499, 259}},
        {LDM_SAMPLER_LCM, 4, 0.6, 2, {499, 259}},
        {LDM_SAMPLER_LCM, 4, 0.75, 3, {759, 499, 259}},
        {LDM_SAMPLER_LCM, 4, 1.0, 4, {999, 759, 499, 259}},
        {LDM_SAMPLER_LCM, 3, 0.5, 1, {339}},
        {LDM_SAMPLER_LCM, 8, 0.3, 2, {259, 139}},
        {LDM_SAMPLER_LCM, 1, 1.0, 1, {999}},
        {LDM_SAMPLER_TCD, 4, 0.5, 2, {499, 259}},
        {LDM_SAMPLER_UNI_PC, 10, 0.5, 5, {500, 400, 300, 200, 100}},
        {LDM_SAMPLER_UNI_PC, 10, 0.7, 7, {699, 599, 500, 400, 300, 200, 100}},
    };
    float x0[16] = {0};
    int ts[128];
    for (size_t c = 0; c < sizeof k / sizeof k[0]; c++) {
        LdmSampler p = sampler_defaults(k[c].kind, k[c].steps, 16);
        p.eps_fn = toy_fn;
        p.noise_fn = noise_fn;
        p.init_latent = x0;
        p.strength = k[c].strength;
        int got = ldm_sample_timesteps(&s, &p, ts);
        ck_assert_msg(got == k[c].n, "%s %d steps, strength %g: %d timesteps (%s), expected %d",
                      ldm_sampler_name(k[c].kind), k[c].steps, k[c].strength, got, ldm_last_error(), k[c].n);
        for (int i = 0; i < got; i++)
            ck_assert_msg(ts[i] == k[c].ts[i], "%s %d steps, strength %g: timestep %d is %d, expected %d",
                          ldm_sampler_name(k[c].kind), k[c].steps, k[c].strength, i, ts[i], k[c].ts[i]);
        ck_assert_int_eq(ldm_sample_count_steps(&s, &p), k[c].n);
    }
    LdmSampler p = sampler_defaults(LDM_SAMPLER_UNI_PC, 100, 16);
    p.eps_fn = toy_fn;
    p.init_latent = x0;
    p.strength = 0.29;
    ck_assert_int_eq(ldm_sample_timesteps(&s, &p, ts), 28);
    ck_assert_int_eq(ts[0], 280);
    ck_assert_int_eq(ts[27], 10);
    /* no step left */
    p.strength = 0.05;
    p.steps = 10;
    ck_assert_int_eq(ldm_sample_timesteps(&s, &p, ts), -1);
    ck_assert_msg(strstr(ldm_last_error(), "0 denoising steps") != NULL, "%s", ldm_last_error());
    p.kind = LDM_SAMPLER_LCM;
    p.noise_fn = noise_fn;
    p.steps = 2;
    p.strength = 0.4;
    ck_assert_int_eq(ldm_sample_count_steps(&s, &p), -1);
    ck_assert_msg(strstr(ldm_last_error(), "0 denoising steps") != NULL, "%s", ldm_last_error());
    /* LCMScheduler.set_timesteps(S, strength=...) (the LCM img2img
     * pipeline's own schedule; not what ldm_sample runs), by hand:
     * len = int(50 * strength), origin = [1..len] * 20 - 1 reversed
     * (origin[j] = 20 len - 1 - 20 j), j = floor(i * len / S):
     *   4, 0.5:  len 25, j = floor(0, 6.25, 12.5, 18.75) = 0, 6, 12, 18 -> 499, 379, 259, 139
     *   2, 0.5:  j = 0, 12 -> 499, 259
     *   4, 0.7:  50 * 0.7 = 35.0, len 35, j = floor(0, 8.75, 17.5, 26.25) = 0, 8, 17, 26 -> 699, 539, 359, 179
     *   4, 0.57: 50 * 0.57 = 28.499999999999996, len 28, j = 0, 7, 14, 21 -> 559, 419, 279, 139
     *   4, 0.05: len int(2.5) = 2, skipping_step 2 // 4 = 0 -> ValueError */
    {
        static const struct {
            int steps;
            double strength;
            int ts[4];
        } a[] = {{4, 0.5, {499, 379, 259, 139}}, {2, 0.5, {499, 259}}, {4, 0.7, {699, 539, 359, 179}},
                 {4, 0.57, {559, 419, 279, 139}}, {4, 1.0, {999, 759, 499, 259}}};
        for (size_t c = 0; c < sizeof a / sizeof a[0]; c++) {
            ck_assert_int_eq(ldm_lcm_timesteps_strength(1000, 50, a[c].steps, a[c].strength, ts), 0);
            for (int i = 0; i < a[c].steps; i++)
                ck_assert_msg(ts[i] == a[c].ts[i], "LCM set_timesteps(%d, strength=%g)[%d] = %d, expected %d",
                              a[c].steps, a[c].strength, i, ts[i], a[c].ts[i]);
        }
        ck_assert_int_eq(ldm_lcm_timesteps_strength(1000, 50, 4, 0.05, ts), -1);
    }
    /* txt2img: all of them */
    p.init_latent = NULL;
    p.strength = 0;
    ck_assert_int_eq(ldm_sample_timesteps(&s, &p, ts), 2);
    ck_assert(ts[0] == 999 && ts[1] == 499);
    ldm_schedule_free(&s);
}
END_TEST

/* The runs themselves, with a recording model: the UNet calls (number,
 * timesteps), the starting latent (the scheduler's add_noise of the init
 * latent, recomputed here in double from the float32 alphas), UniPC's first
 * step of first order from there, and inpainting: the known region of
 * every call's input is add_noise(init, the SAME initial noise, that
 * call's timestep), the final latent is exactly the init latent there, the
 * run starts from the noise itself at strength 1, and no noise is drawn for
 * the blending. */
START_TEST(test_diffusers_img2img_run) {
    LdmSchedule s;
    ck_assert_int_eq(ldm_schedule_init(&s, 0.00085, 0.012, 1000), 0);
    const int64_t n = 4 * 8 * 8, plane = 64;
    float *ac = ldm_xmalloc(1000 * sizeof(float));
    ldm_diffusers_alphas_cumprod(0.00085, 0.012, 1000, ac);
    float *x = ldm_xmalloc((size_t)n * sizeof(float)), *xT = ldm_xmalloc((size_t)n * sizeof(float));
    float *x0 = ldm_xmalloc((size_t)n * sizeof(float));
    float mask[64];
    for (int j = 0; j < 64; j++) mask[j] = (j % 8) < 4 ? 1.0f : 0.0f; /* left half known */
    fill_pattern(x0, n, 99);
    fill_pattern(xT, n, 5);
    for (int j = 0; j < n; j++) x0[j] *= 3.0f;
    static const struct {
        LdmSamplerKind kind;
        int steps;
        double strength;
        int masked;
        int calls, draws;
        int t0, t1; /* the first two UNet timesteps */
    } k[] = {
        {LDM_SAMPLER_LCM, 4, 0.5, 0, 2, 1, 499, 259},   {LDM_SAMPLER_LCM, 4, 0.5, 1, 2, 1, 499, 259},
        {LDM_SAMPLER_LCM, 4, 1.0, 0, 4, 3, 999, 759},   {LDM_SAMPLER_LCM, 4, 1.0, 1, 4, 3, 999, 759},
        {LDM_SAMPLER_TCD, 4, 0.75, 1, 3, 2, 759, 499},  {LDM_SAMPLER_UNI_PC, 10, 0.5, 0, 5, 0, 500, 400},
        {LDM_SAMPLER_UNI_PC, 10, 0.5, 1, 5, 0, 500, 400},
    };
    for (size_t c = 0; c < sizeof k / sizeof k[0]; c++) {
        const char *name = ldm_sampler_name(k[c].kind);
        Calls cl;
        calls_init(&cl, n, 16);
        Noise z;
        noise_init(&z, 7, n);
        Record rec;
        record_init(&rec, n, 16);
        LdmSampler p = sampler_defaults(k[c].kind, k[c].steps, n);
        p.gamma = 0.3;
        p.eps_fn = calls_fn;
        p.eps_ctx = &cl;
        p.noise_fn = noise_fn;
        p.noise_ctx = &z;
        p.step_fn = record_fn;
        p.step_ctx = &rec;
        p.init_latent = x0;
        p.strength = k[c].strength;
        if (k[c].masked) {
            p.mask = mask;
            p.plane = plane;
        }
        memcpy(x, xT, (size_t)n * sizeof(float));
        ck_assert_msg(ldm_sample(&s, &p, x) == 0, "%s: %s", name, ldm_last_error());
        ck_assert_msg(cl.count == k[c].calls, "%s: %d UNet calls, expected %d", name, cl.count, k[c].calls);
        ck_assert_msg(z.draws == k[c].draws, "%s: %lld noise draws, expected %d", name, (long long)z.draws,
                      k[c].draws);
        ck_assert_msg(cl.t[0] == (float)k[c].t0 && cl.t[1] == (float)k[c].t1, "%s: timesteps %g, %g", name,
                      cl.t[0], cl.t[1]);
        ck_assert_int_eq(rec.steps, k[c].calls);
        /* the starting latent: pure noise for inpainting at strength 1, else add_noise at t0 */
        double worst = 0;
        for (int i = 0; i < cl.count && i < cl.max; i++) {
            int t = (int)cl.t[i];
            double a = ac[t], ca, cb;
            if (k[c].kind == LDM_SAMPLER_UNI_PC) {
                /* sigma = ((1 - a) / a) ** 0.5; alpha_t = 1 / (sigma^2 + 1) ** 0.5; sigma_t = sigma alpha_t */
                double sg = sqrt((1.0 - a) / a);
                ca = 1.0 / sqrt(sg * sg + 1.0);
                cb = sg * ca;
            } else {
                ca = sqrt(a);
                cb = sqrt(1.0 - a);
            }
            for (int64_t j = 0; j < n; j++) {
                int known = k[c].masked && mask[j % plane] == 1.0f;
                double want;
                if (i == 0 && k[c].masked && k[c].strength == 1.0) want = xT[j]; /* is_strength_max: latents = noise */
                else if (i == 0 || known) want = ca * x0[j] + cb * xT[j];
                else continue;
                double d = fabs(cl.x[(int64_t)i * n + j] - want) / (1.0 + fabs(want));
                if (d > worst) worst = d;
            }
            if (!k[c].masked) break;
        }
        ck_assert_msg(worst < 2e-6, "%s (strength %g%s): UNet input off the expected noised init latent by %g", name,
                      k[c].strength, k[c].masked ? ", masked" : "", worst);
        if (k[c].masked) {
            for (int64_t j = 0; j < n; j++)
                if (mask[j % plane] == 1.0f)
                    ck_assert_msg(x[j] == x0[j], "%s: known latent %lld is %g, not the init latent's %g", name,
                                  (long long)j, x[j], x0[j]);
        }
        if (k[c].kind == LDM_SAMPLER_UNI_PC && !k[c].masked) {
            /* step 0 of the run (t = 500 -> 400) is UniPC's first order update
             * (no corrector, no older model output), in double:
             *   m0 = (x - sigma_s eps) / alpha_s; h = lambda_t - lambda_s
             *   x_t = sigma_t / sigma_s x - alpha_t expm1(-h) m0 */
            double as = ac[500], at = ac[400];
            double ss = sqrt((1 - as) / as), st = sqrt((1 - at) / at);
            double a_s = 1 / sqrt(ss * ss + 1), s_s = ss * a_s, a_t = 1 / sqrt(st * st + 1), s_t = st * a_t;
            double h = (log(a_t) - log(s_t)) - (log(a_s) - log(s_s));
            double w = 0;
            for (int64_t j = 0; j < n; j++) {
                double xin = cl.x[j], e = cl.eps[j];
                double m0 = (xin - s_s * e) / a_s;
                double want = s_t / s_s * xin - a_t * expm1(-h) * m0;
                double d = fabs(rec.xn[j] - want) / (1.0 + fabs(want));
                if (d > w) w = d;
            }
            ck_assert_msg(w < 1e-5, "uni_pc img2img: the first step is not first order from a fresh state (%g)", w);
        }
        calls_free(&cl);
        record_free(&rec);
        noise_free(&z);
    }
    free(ac);
    free(x);
    free(xT);
    free(x0);
    ldm_schedule_free(&s);
}
END_TEST

Suite *suite_sampler(void) {
    Suite *su = suite_create("sampler");
    TCase *tc = tcase_create("replay");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ddim_sd1);
    tcase_add_test(tc, test_ddim_ldm);
    tcase_add_test(tc, test_plms_sd1);
    tcase_add_test(tc, test_img2img_ddim_encode);
    tcase_add_test(tc, test_img2img_ddim_decode);
    tcase_add_test(tc, test_euler_sd1);
    tcase_add_test(tc, test_dpmpp2m_sd1);
    tcase_add_test(tc, test_img2img_kdiff);
    suite_add_tcase(su, tc);
    TCase *tp = tcase_create("properties");
    tcase_set_timeout(tp, 60);
    tcase_add_test(tp, test_noise_counts);
    tcase_add_test(tp, test_ddim_eta);
    tcase_add_test(tp, test_euler_a_deterministic);
    tcase_add_test(tp, test_inpaint_known_region);
    tcase_add_test(tp, test_sampler_errors);
    tcase_add_test(tp, test_diffusers_img2img_timesteps);
    tcase_add_test(tp, test_diffusers_img2img_run);
    suite_add_tcase(su, tp);
    return su;
}
