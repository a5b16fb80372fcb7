/*
 * test_attention.c - ldm_attention (runtime/kernels_attention.c) against a
 * naive reference written here: per batch, head and query, the logits in
 * double, an exact softmax (max subtracted, exp in double), the weighted sum
 * of values in double.
 *
 * The cases cover the kernel's tiling edges: queries not a multiple of the
 * query tile, keys below and above one key tile and not a multiple of it,
 * head dims 1..3 and unequal d and dv (channel-block tails), d above the
 * channel block (512, 130), one head and many heads, causal masks crossing
 * tile boundaries, scales from 0 to peaked, and q/k/v as column slices of a
 * fused [B, T, 3C] buffer with gaps between batches, y with padded rows.
 * Every byte of y outside the output must stay untouched; inputs are
 * allocated to their exact extent so that ASan sees any read past them.
 *
 * Tolerance (float32 kernel against a double reference), per element:
 *   |got - ref| <= TOL * (|ref| + sum_j p_j |v_j| (1 + |l|_j)),  TOL = 1e-5,
 * where p_j are the exact probabilities and |l|_j = scale * sum_c |q_c k_jc|
 * bounds the magnitude of logit j: a float logit carries an absolute error
 * proportional to it, which moves p_j by that much relatively.
 */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define TOL 1e-5
#define SENTINEL 12345.0f

/* ---- random inputs ---------------------------------------------------------- */

typedef struct Rng {
    uint64_t s;
} Rng;

static double rng_uniform(Rng *r) {
    r->s ^= r->s << 13, r->s ^= r->s >> 7, r->s ^= r->s << 17;
    return ((r->s >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Standard normal (Box-Muller). */
static float rng_normal(Rng *r) {
    double u = rng_uniform(r), v = rng_uniform(r);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* ---- layouts ------------------------------------------------------------------
 * SEP:   q, k, v, y each its own contiguous [B, T, H*dim] tensor.
 * FUSED: q, k, v column slices of one [B, T, H*d | H*d | H*dv | 3 pad] buffer
 *        (Tq = Tk) with a 5-float gap between batches; y rows padded by 2
 *        and batches by 7.
 * KV:    k, v slices of one [B, Tk, H*dv | H*d | 1 pad] buffer (v first), q
 *        rows padded by 3 and read backwards in the batch (negative batch
 *        stride: batch 0 is the last block), y rows padded by 1. */
enum { SEP, FUSED, KV };

typedef struct Case {
    const char *name;
    int B, Tq, Tk, H, d, dv;
    double scale;  /* logit scale, NAN for 1/sqrt(d) */
    int causal;
    int layout;
} Case;

/* Scale: the case's value, or 1/sqrt(d) when the case gives NAN. */
static float scale_of(const Case *c) { return isnan(c->scale) ? (float)(1.0 / sqrt(c->d)) : (float)c->scale; }

static const Case cases[] = {
    /* name                    B   Tq    Tk  H    d   dv  scale  causal layout */
    {"basic odd",              2,  37,   37, 3,   5,   7, NAN,   0, SEP},
    {"tq < tk, tiles of keys", 2,  50,  331, 2,  16,  16, NAN,   0, SEP},
    {"tq > tk",                1, 100,   13, 2,   8,  12, NAN,   0, SEP},
    {"one key",                2,  30,    1, 2,   6,   5, NAN,   0, SEP},
    {"one query",              2,   1,  200, 3,   9,   4, NAN,   0, SEP},
    {"d=1 dv=1",               2,  61,  140, 2,   1,   1, 1.0,   0, SEP},
    {"d=2 dv=3",               1,  49,   75, 3,   2,   3, 0.7,   0, SEP},
    {"d=3 dv=2",               2,  25,  129, 2,   3,   2, 0.9,   0, SEP},
    {"single head d=64",       1,  97,  211, 1,  64,  64, NAN,   0, SEP},
    {"many heads d=4",         1, 256,  256, 16,  4,   4, NAN,   0, SEP},
    {"dv > d",                 2,  40,   90, 2,   8,  40, NAN,   0, SEP},
    {"d=130 (channel blocks)", 1,  30,  150, 2, 130,  66, NAN,   0, SEP},
    {"d=dv=512 (vae)",         1,  30,   70, 1, 512, 512, NAN,   0, SEP},
    {"fused qkv",              2,  70,   70, 4,  10,  10, NAN,   0, FUSED},
    {"fused qkv d!=dv",        2, 150,  150, 3,   7,   9, NAN,   0, FUSED},
    {"kv slices, cross-attn",  2,  53,   77, 8,  40,  40, NAN,   0, KV},
    {"causal clip-like",       2,  77,   77, 12, 64,  64, NAN,   1, FUSED},
    {"causal multi-tile",      1, 300,  300, 2,  12,  20, NAN,   1, SEP},
    {"causal tiny",            2,   5,    5, 2,   3,   3, NAN,   1, SEP},
    {"causal one",             1,   1,    1, 1,   2,   2, NAN,   1, SEP},
    {"causal, 2 in last tile", 1,  50,   50, 2,   8,   8, NAN,   1, SEP},
    {"scale 0: mean of v",     2,  33,  150, 2,   8,   8, 0.0,   0, SEP},
    {"negative scale",         1,  40,   60, 2,   8,   8, -0.5,  0, SEP},
    {"peaked softmax",         2,  40,  300, 2,  16,  16, 3.0,   0, SEP},
    {"huge logits",            1,  30,  200, 1,  16,  16, 60.0,  1, SEP},
    {"d=0: mean of v",         2,  30,  150, 2,   0,   5, 1.0,   0, SEP},
};
#define NCASES ((int)(sizeof cases / sizeof cases[0]))

/* Buffers and strides of one case. */
typedef struct Setup {
    LdmAttnShape s;
    float *qbuf, *kbuf, *vbuf, *ybuf;      /* allocations (kbuf/vbuf may alias qbuf) */
    size_t nqbuf, nkbuf, nvbuf, nybuf;     /* their sizes (floats) */
    const float *q, *k, *v;                /* kernel arguments */
    float *y;
} Setup;

static float *alloc_floats(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    ck_assert_ptr_nonnull(p);
    return p;
}

static void fill(Rng *r, float *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = rng_normal(r);
}

static Setup setup_case(const Case *c, uint64_t seed) {
    Setup u;
    memset(&u, 0, sizeof u);
    LdmAttnShape *s = &u.s;
    const int B = c->B, Tq = c->Tq, Tk = c->Tk, H = c->H, d = c->d, dv = c->dv;
    s->B = B, s->Tq = Tq, s->Tk = Tk, s->H = H, s->d = d, s->dv = dv;
    s->scale = scale_of(c), s->causal = c->causal;
    Rng r = {seed};
    if (c->layout == SEP) {
        s->ldq = s->ldk = H * d, s->ldv = s->ldy = H * dv;
        s->bsq = (long)Tq * s->ldq, s->bsk = (long)Tk * s->ldk, s->bsv = (long)Tk * s->ldv, s->bsy = (long)Tq * s->ldy;
        u.nqbuf = (size_t)B * s->bsq, u.nkbuf = (size_t)B * s->bsk, u.nvbuf = (size_t)B * s->bsv;
        u.qbuf = alloc_floats(u.nqbuf), u.kbuf = alloc_floats(u.nkbuf), u.vbuf = alloc_floats(u.nvbuf);
        fill(&r, u.qbuf, u.nqbuf), fill(&r, u.kbuf, u.nkbuf), fill(&r, u.vbuf, u.nvbuf);
        u.q = u.qbuf, u.k = u.kbuf, u.v = u.vbuf;
    } else if (c->layout == FUSED) {
        ck_assert_int_eq(Tq, Tk);
        const int W = 2 * H * d + H * dv + 3;
        s->ldq = s->ldk = s->ldv = W;
        s->bsq = s->bsk = s->bsv = (long)Tq * W + 5;
        u.nqbuf = (size_t)(B - 1) * s->bsq + (size_t)Tq * W;
        u.qbuf = alloc_floats(u.nqbuf);
        fill(&r, u.qbuf, u.nqbuf);
        u.q = u.qbuf, u.k = u.qbuf + H * d, u.v = u.qbuf + 2 * H * d;
        s->ldy = H * dv + 2, s->bsy = (long)Tq * s->ldy + 7;
    } else {
        const int W = H * dv + H * d + 1;
        s->ldk = s->ldv = W;
        s->bsk = s->bsv = (long)Tk * W;
        u.nkbuf = (size_t)B * Tk * W;
        u.kbuf = alloc_floats(u.nkbuf);
        fill(&r, u.kbuf, u.nkbuf);
        u.v = u.kbuf, u.k = u.kbuf + H * dv;
        s->ldq = H * d + 3;
        s->bsq = -(long)Tq * s->ldq;
        u.nqbuf = (size_t)B * Tq * s->ldq;
        u.qbuf = alloc_floats(u.nqbuf);
        fill(&r, u.qbuf, u.nqbuf);
        u.q = u.qbuf + (size_t)(B - 1) * Tq * s->ldq; /* batch b at block B-1-b */
        s->ldy = H * dv + 1, s->bsy = (long)Tq * s->ldy;
    }
    if (c->layout == SEP) {
        u.nybuf = (size_t)B * s->bsy;
    } else {
        u.nybuf = (size_t)(B - 1) * s->bsy + (size_t)Tq * s->ldy;
    }
    u.ybuf = alloc_floats(u.nybuf);
    for (size_t i = 0; i < u.nybuf; i++) u.ybuf[i] = SENTINEL;
    u.y = u.ybuf;
    return u;
}

static void free_setup(Setup *u) {
    free(u->qbuf), free(u->kbuf), free(u->vbuf), free(u->ybuf);
}

/* Run the kernel with a scratch of exactly the size it asks for. */
static void run(const Setup *u) {
    size_t n = ldm_attention_scratch_bytes(&u->s);
    float *scratch = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(scratch);
    ldm_attention(&u->s, u->q, u->k, u->v, u->y, scratch);
    free(scratch);
}

/* ---- reference ---------------------------------------------------------------- */

/* For query i of batch b, head h: the outputs ref[dv] and their error
 * scales mag[dv] (see the tolerance above). */
static void reference(const LdmAttnShape *s, const float *q, const float *k, const float *v, int b, int h, int i,
                      double *ref, double *mag, double *p, double *lmag) {
    const float *qi = q + b * s->bsq + (long)i * s->ldq + (long)h * s->d;
    const int nk = s->causal ? (i + 1 < s->Tk ? i + 1 : s->Tk) : s->Tk;
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < nk; j++) {
        const float *kj = k + b * s->bsk + (long)j * s->ldk + (long)h * s->d;
        double dot = 0, adot = 0;
        for (int c = 0; c < s->d; c++) dot += (double)qi[c] * kj[c], adot += fabs((double)qi[c] * kj[c]);
        p[j] = dot * s->scale;
        lmag[j] = adot * fabs(s->scale);
        if (p[j] > mx) mx = p[j];
    }
    for (int j = 0; j < nk; j++) sum += p[j] = exp(p[j] - mx);
    for (int j = 0; j < nk; j++) p[j] /= sum;
    for (int c = 0; c < s->dv; c++) {
        double acc = 0, m = 0;
        for (int j = 0; j < nk; j++) {
            double vj = v[b * s->bsv + (long)j * s->ldv + (long)h * s->dv + c];
            acc += p[j] * vj;
            m += p[j] * fabs(vj) * (1 + lmag[j]);
        }
        ref[c] = acc, mag[c] = m;
    }
}

/* Compare every output with the reference; check that nothing else in y
 * changed. Returns the largest |got - ref| / max |ref|. */
static double compare(const Setup *u, const char *name) {
    const LdmAttnShape *s = &u->s;
    double *ref = malloc(s->dv * sizeof *ref), *mag = malloc(s->dv * sizeof *mag);
    double *p = malloc(s->Tk * sizeof *p), *lmag = malloc(s->Tk * sizeof *lmag);
    char *written = calloc(u->nybuf, 1);
    double maxerr = 0, maxref = 0;
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int i = 0; i < s->Tq; i++) {
                reference(s, u->q, u->k, u->v, b, h, i, ref, mag, p, lmag);
                for (int c = 0; c < s->dv; c++) {
                    long at = b * s->bsy + (long)i * s->ldy + (long)h * s->dv + c;
                    double got = u->y[at], err = fabs(got - ref[c]);
                    written[at] = 1;
                    ck_assert_msg(err <= TOL * (fabs(ref[c]) + mag[c]),
                                  "%s: y[b=%d, i=%d, h=%d, c=%d] = %.9g, reference %.9g (error %.3g, allowed %.3g)",
                                  name,
                                  b, i, h, c, got, ref[c], err, TOL * (fabs(ref[c]) + mag[c]));
                    if (err > maxerr) maxerr = err;
                    if (fabs(ref[c]) > maxref) maxref = fabs(ref[c]);
                }
            }
    for (size_t at = 0; at < u->nybuf; at++)
        if (!written[at]) ck_assert_msg(u->ybuf[at] == SENTINEL, "%s: y[%zu] outside the output was written", name, at);
    free(ref), free(mag), free(p), free(lmag), free(written);
    return maxref > 0 ? maxerr / maxref : maxerr;
}

/* ---- tests ---------------------------------------------------------------------- */

START_TEST(test_cases) {
    const Case *c = &cases[_i];
    Setup u = setup_case(c, 0x9e3779b97f4a7c15ull + (uint64_t)_i);
    run(&u);
    compare(&u, c->name);
    free_setup(&u);
}
END_TEST

/* The accuracy claim: N(0,1) inputs, 4096 keys (64 key tiles of online
 * softmax), the SD head dim: the largest error stays below 1e-5 of the
 * largest output. */
START_TEST(test_long_keys_accuracy) {
    const Case c = {"4096 keys", 1, 40, 4096, 2, 40, 40, NAN, 0, SEP};
    Setup u = setup_case(&c, 7);
    run(&u);
    double rel = compare(&u, c.name);
    ck_assert_msg(rel < 1e-5, "max |error| / max |ref| = %.3g", rel);
    free_setup(&u);
}
END_TEST

/* Logits that grow along the keys (the running max changes in every key
 * tile, so the accumulator is rescaled each time) and then fall again. */
START_TEST(test_running_max_rescale) {
    const Case c = {"ramp", 2, 30, 400, 2, 8, 8, 1.0, 0, SEP};
    Setup u = setup_case(&c, 11);
    LdmAttnShape *s = &u.s;
    for (int b = 0; b < s->B; b++)
        for (int j = 0; j < s->Tk; j++)
            for (int cc = 0; cc < s->H * s->d; cc++) {
                /* k_j = ramp(j) * (1, 1, ...) + noise; q >= 0 makes q.k follow the ramp */
                double ramp = j < 250 ? j * 0.05 : (500 - j) * 0.05;
                float *kc = &u.kbuf[b * s->bsk + (long)j * s->ldk + cc];
                *kc = (float)(ramp / s->d) + 0.1f * *kc;
            }
    for (size_t i = 0; i < u.nqbuf; i++) u.qbuf[i] = fabsf(u.qbuf[i]) + 0.5f;
    run(&u);
    compare(&u, c.name);
    free_setup(&u);
}
END_TEST

/* Equal logits: every output is the plain mean of v over the visible keys. */
START_TEST(test_uniform_is_mean) {
    const Case c = {"uniform", 1, 70, 70, 1, 4, 3, 0.5, 1, SEP};
    Setup u = setup_case(&c, 5);
    for (size_t i = 0; i < u.nkbuf; i++) u.kbuf[i] = 0.0f;
    run(&u);
    for (int i = 0; i < c.Tq; i++)
        for (int cc = 0; cc < c.dv; cc++) {
            double mean = 0;
            for (int j = 0; j <= i; j++) mean += u.vbuf[(long)j * c.dv + cc];
            mean /= i + 1;
            ck_assert_msg(fabs(u.y[(long)i * c.dv + cc] - mean) <= TOL * (1 + fabs(mean)),
                          "y[%d, %d] = %.9g, mean %.9g", i, cc, u.y[(long)i * c.dv + cc], mean);
        }
    free_setup(&u);
}
END_TEST

/* The result does not depend on the number of threads (each query tile is
 * computed the same way by whichever thread takes it): bitwise equal. */
START_TEST(test_threads_bitwise_equal) {
    const Case c = {"threads", 2, 130, 200, 3, 16, 16, NAN, 1, SEP};
    Setup u1 = setup_case(&c, 3), u2 = setup_case(&c, 3);
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    run(&u1);
    omp_set_num_threads(2);
    run(&u2);
    omp_set_num_threads(nt);
    ck_assert_int_eq(memcmp(u1.ybuf, u2.ybuf, u1.nybuf * sizeof(float)), 0);
    compare(&u1, c.name);
    free_setup(&u1), free_setup(&u2);
}
END_TEST

/* A scratch pointer that is only float-aligned (the kernel aligns it). */
START_TEST(test_unaligned_scratch) {
    const Case c = {"unaligned scratch", 1, 50, 80, 2, 24, 24, NAN, 0, SEP};
    Setup u = setup_case(&c, 9);
    size_t n = ldm_attention_scratch_bytes(&u.s);
    char *raw = malloc(n + 128);
    ck_assert_ptr_nonnull(raw);
    char *p = (char *)(((uintptr_t)raw + 63) & ~(uintptr_t)63) + 4; /* 4 bytes past a 64-byte boundary */
    ldm_attention(&u.s, u.q, u.k, u.v, u.y, (float *)p);
    free(raw);
    compare(&u, c.name);
    free_setup(&u);
}
END_TEST

/* No keys: an empty softmax; the kernel defines the result as zeros. */
START_TEST(test_no_keys) {
    const Case c = {"no keys", 2, 30, 0, 2, 8, 8, 1.0, 0, SEP};
    Setup u = setup_case(&c, 13);
    ck_assert_uint_eq(ldm_attention_scratch_bytes(&u.s), 0);
    ldm_attention(&u.s, u.q, u.k, u.v, u.y, NULL);
    for (size_t i = 0; i < u.nybuf; i++) ck_assert_msg(u.ybuf[i] == 0.0f, "y[%zu] = %g", i, u.ybuf[i]);
    free_setup(&u);
}
END_TEST

START_TEST(test_scratch_is_small) {
    /* per-thread tiles only: the SD self-attention needs far less than the
     * [Tq, Tk] score matrix of one head (64 MB) */
    LdmAttnShape s = {2, 4096, 4096, 8, 40, 40, 320, 320, 320, 320, 4096L * 320, 4096L * 320, 4096L * 320,
                      4096L * 320, 0.158f, 0};
    size_t n = ldm_attention_scratch_bytes(&s);
    ck_assert_uint_gt(n, 0);
    ck_assert_uint_lt(n, 4u << 20);
}
END_TEST

Suite *suite_attention(void) {
    Suite *s = suite_create("attention");
    TCase *tc = tcase_create("reference");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_cases, 0, NCASES);
    tcase_add_test(tc, test_long_keys_accuracy);
    tcase_add_test(tc, test_running_max_rescale);
    tcase_add_test(tc, test_uniform_is_mean);
    tcase_add_test(tc, test_threads_bitwise_equal);
    tcase_add_test(tc, test_unaligned_scratch);
    tcase_add_test(tc, test_no_keys);
    tcase_add_test(tc, test_scratch_is_small);
    suite_add_tcase(s, tc);
    return s;
}
