/*
 * test_winograd.c - ldm_conv3x3_winograd (Winograd F(4x4, 3x3)) against a
 * naive direct convolution in double precision written here.
 *
 * Shapes are odd on purpose: H and W not multiples of 4 (partial edge
 * tiles), 1x1 images, channel counts not multiples of 4 or 8, batch 2, and
 * images wide enough (W > 32) for the kernel's one-tile-row fast paths.
 * Every epilogue combination (bias, rowadd, residual, ReLU) and every weight
 * storage type (float32, IEEE half, bfloat16; the reference uses the same
 * widened weights) is checked.
 *
 * Tolerance: Winograd reassociates the sum and scales terms by the
 * transform matrices (entries up to 8 and 1/24), so the error of an output
 * is bounded by the size of the terms of its 6x6 tile, not of the output
 * itself. We compare with
 *     max |got - ref| <= TOL * S,   TOL = 1e-5,
 * where S is the largest, over all outputs, of the sum of |terms| making
 * the output (|w x| over the 3x3xC window, plus |bias|, |rowadd|,
 * |residual|). A wrong index or a missed tile is an error of order S.
 * For the large-C check the bound is relative to the RMS of the output
 * (the scale a network sees): 1e-4.
 */
#include <check.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "util.h"

#define TOL 1e-5

/* ---- random data -------------------------------------------------------- */

static uint64_t rng_state;
static double urand(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return ((z >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
static double nrand(void) { return sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand()); }
static float *rand_buf(size_t n, double scale) {
    float *p = ldm_aligned_alloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = (float)(nrand() * scale);
    return p;
}

/* ---- weight storage: stored bits and the float32 values they mean ------- */

/* Store w (n floats) as `type`; wf receives the widened values. */
static void *store_weights(const float *w, size_t n, int type, float *wf) {
    if (type == LDM_W_F32) {
        memcpy(wf, w, n * sizeof *w);
        float *p = ldm_aligned_alloc(n * sizeof *p);
        memcpy(p, w, n * sizeof *w);
        return p;
    }
    uint16_t *h = ldm_aligned_alloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) {
        if (type == LDM_W_F16) {
            h[i] = _cvtss_sh(w[i], _MM_FROUND_TO_NEAREST_INT); /* hardware F16C conversion */
            wf[i] = _cvtsh_ss(h[i]);
        } else {
            uint32_t b;
            memcpy(&b, &w[i], 4);
            b += 0x7fff + ((b >> 16) & 1); /* round to nearest even */
            h[i] = (uint16_t)(b >> 16);
            b = (uint32_t)h[i] << 16;
            memcpy(&wf[i], &b, 4);
        }
    }
    return h;
}

/* ---- reference ------------------------------------------------------------ */

/* One output of the direct convolution, and in *mag the sum of |terms|. */
static double ref_at(const LdmConvShape *s, const float *x, const float *w, const float *bias, const float *rowadd,
                     const float *res, int n, int o, int h, int v, double *mag) {
    int C = s->C, H = s->H, W = s->W, O = s->O;
    double acc = 0, m = 0;
    const int KH = s->KH, KW = s->KW;
    for (int c = 0; c < C; c++)
        for (int ky = 0; ky < KH; ky++)
            for (int kx = 0; kx < KW; kx++) {
                int hh = h + ky - s->pad_t, ww = v + kx - s->pad_l;
                if (hh < 0 || hh >= H || ww < 0 || ww >= W) continue;
                double t = (double)w[(((size_t)o * C + c) * KH + ky) * KW + kx] * x[(((size_t)n * C + c) * H + hh) * W + ww];
                acc += t;
                m += fabs(t);
            }
    size_t i = (((size_t)n * O + o) * H + h) * W + v;
    if (bias) acc += bias[o], m += fabs(bias[o]);
    if (rowadd) acc += rowadd[(size_t)n * O + o], m += fabs(rowadd[(size_t)n * O + o]);
    if (res) acc += res[i], m += fabs(res[i]);
    *mag = m;
    return acc;
}

/* y (double) at every output and the largest sum of |terms| S. */
static double ref_conv(const LdmConvShape *s, const float *x, const float *w, const float *bias, const float *rowadd,
                       const float *res, double *y) {
    double smax = 0, mag;
    size_t i = 0;
    for (int n = 0; n < s->N; n++)
        for (int o = 0; o < s->O; o++)
            for (int h = 0; h < s->H; h++)
                for (int v = 0; v < s->W; v++, i++) {
                    y[i] = ref_at(s, x, w, bias, rowadd, res, n, o, h, v, &mag);
                    if (mag > smax) smax = mag;
                }
    return smax;
}

/* ---- one case --------------------------------------------------------------- */

enum { EP_BIAS = 1, EP_ROWADD = 2, EP_RES = 4, EP_RELU = 8 }; /* EP_RELU: max(., 0) after the sums */

typedef struct Case {
    int N, C, H, W, O;
} Case;

static LdmConvShape shape_of(Case k) {
    return (LdmConvShape){k.N, k.C, k.H, k.W, k.O, 3, 3, 1, 1, 1, 1, 1, 1, k.H, k.W, 0, 0};
}

/* Runs one convolution and returns max |got - ref| / S (S: see the top).
 * The output buffer starts as NaN so that any output not written shows.
 * algo -1: Winograd (3x3); else ldm_conv2d with that algorithm and a
 * ksize x ksize kernel, "same" padding. */
static double run_algo(Case k, int wtype, int epi, uint64_t seed, int algo, int ksize) {
    rng_state = seed;
    LdmConvShape s = shape_of(k);
    if (algo >= 0) s.KH = s.KW = ksize, s.pad_t = s.pad_b = s.pad_l = s.pad_r = ksize / 2;
    size_t nx = (size_t)k.N * k.C * k.H * k.W, ny = (size_t)k.N * k.O * k.H * k.W, nw = (size_t)k.O * k.C * s.KH * s.KW;
    float *x = rand_buf(nx, 1.0), *w = rand_buf(nw, 1.0 / sqrt(9.0 * k.C));
    float *bias = epi & EP_BIAS ? rand_buf((size_t)k.O, 1.0) : NULL;
    float *rowadd = epi & EP_ROWADD ? rand_buf((size_t)k.N * k.O, 1.0) : NULL;
    float *res = epi & EP_RES ? rand_buf(ny, 1.0) : NULL;
    float *wf = ldm_aligned_alloc(nw * sizeof *wf);
    void *wstore = store_weights(w, nw, wtype, wf);
    float *y = ldm_aligned_alloc(ny * sizeof *y);
    for (size_t i = 0; i < ny; i++) y[i] = NAN;
    size_t sb = algo < 0 ? ldm_winograd_scratch_bytes(&s) : ldm_conv_scratch_bytes(&s, algo);
    float *scratch = ldm_aligned_alloc(sb + 64);
    LdmEpilogue ep = {bias, rowadd, res, !!(epi & EP_RELU)};
    if (algo < 0) ldm_conv3x3_winograd(&s, x, (LdmW){wstore, wtype, LDM_WL_ROWS}, epi ? &ep : NULL, y, scratch);
    else ldm_conv2d(&s, algo, x, (LdmW){wstore, wtype, LDM_WL_ROWS}, epi ? &ep : NULL, y, scratch);
    double *ref = malloc(ny * sizeof *ref);
    double smax = ref_conv(&s, x, wf, bias, rowadd, res, ref);
    if (epi & EP_RELU)
        for (size_t i = 0; i < ny; i++) ref[i] = ref[i] > 0 ? ref[i] : 0;
    double maxe = 0;
    for (size_t i = 0; i < ny; i++) {
        double e = fabs((double)y[i] - ref[i]);
        if (!(e <= maxe)) maxe = e; /* NaN sticks */
    }
    free(x), free(w), free(bias), free(rowadd), free(res), free(wf), free(wstore), free(y), free(scratch), free(ref);
    return maxe / smax;
}

static double run_case(Case k, int wtype, int epi, uint64_t seed) { return run_algo(k, wtype, epi, seed, -1, 3); }

/* ---- tests ------------------------------------------------------------------ */

/* The direct convolution (at most 8 output channels): every channel count,
 * 3x3 and 1x1, rows shorter than a vector, not a multiple of 8 or of the
 * column blocks, every epilogue, half-precision weights; rows so wide that
 * a band's channels are copied in chunks (the last two: 40 and 33 channels
 * in chunks of 8 and 14, odd and even band heights for the two-row blocks). */
START_TEST(test_direct) {
    static const Case shapes[] = {{2, 5, 7, 5, 1}, {1, 3, 9, 37, 3}, {2, 16, 6, 64, 4}, {1, 7, 4, 3, 5},
                                  {2, 9, 5, 25, 6}, {1, 4, 8, 17, 7}, {2, 12, 3, 40, 8}, {1, 130, 4, 30, 2},
                                  {1, 40, 11, 1100, 3}, {2, 33, 6, 700, 4}};
    Case k = shapes[_i];
    for (int ks = 1; ks <= 3; ks += 2)
        for (int epi = 0; epi < 16; epi++) {
            int wt = epi % 3; /* f32, f16, bf16 */
            double e = run_algo(k, wt, epi, 500 + 31 * _i + epi, LDM_CONV_DIRECT, ks);
            ck_assert_msg(e <= TOL, "direct N%d C%d %dx%d O%d %dx%d weights %d epilogue %d: max err %.3g of scale", k.N,
                          k.C, k.H, k.W, k.O, ks, ks, wt, epi, e);
        }
}
END_TEST

/* Small shapes: edge tiles, tiles across rows and images, wide rows. */
static const Case small[] = {
    {2, 3, 7, 5, 5},   /* partial tiles both ways */
    {2, 5, 1, 1, 3},   /* a single pixel */
    {1, 9, 4, 4, 7},   /* exactly one tile */
    {2, 11, 9, 13, 6}, /* 3x4 tiles, odd channels */
    {2, 5, 10, 62, 6}, /* 16 tiles per row: de-interleave path, ragged right edge */
    {1, 7, 5, 64, 9},  /* W a multiple of 4 wider than 32 */
    {2, 6, 6, 37, 10}, /* 10 tiles per row: units across rows */
};

START_TEST(test_small_shapes_f32) {
    Case k = small[_i];
    for (int epi = 0; epi < 16; epi++) {
        double e = run_case(k, LDM_W_F32, epi, 1000 + 17 * _i + epi);
        ck_assert_msg(e <= TOL, "N%d C%d %dx%d O%d epilogue %d: max err %.3g of scale", k.N, k.C, k.H, k.W, k.O, epi, e);
    }
}
END_TEST

START_TEST(test_small_shapes_half) {
    Case k = small[_i];
    for (int t = LDM_W_F16; t <= LDM_W_BF16; t++)
        for (int epi = 0; epi < 8; epi += 7) {
            double e = run_case(k, t, epi, 2000 + 17 * _i + epi + t);
            ck_assert_msg(e <= TOL, "N%d C%d %dx%d O%d weights %s epilogue %d: max err %.3g of scale", k.N, k.C, k.H,
                          k.W, k.O, t == LDM_W_F16 ? "f16" : "bf16", epi, e);
        }
}
END_TEST

/* 200 tiles in several tile blocks, each transformed again per output
 * block, with C above one GEMM K block (256). */
START_TEST(test_tile_blocks) {
    Case k = {2, 300, 40, 37, 12};
    double e = run_case(k, LDM_W_F16, EP_BIAS | EP_RES | EP_RELU, 31);
    ck_assert_msg(e <= TOL, "max err %.3g of scale", e);
}
END_TEST

/* Large C: several tile blocks (the scratch budgets bind), weights
 * transformed in K blocks, a ragged last block. */
START_TEST(test_blocks) {
    Case k = {1, 4096, 19, 21, 13};
    double e = run_case(k, LDM_W_F32, EP_BIAS | EP_ROWADD, 32);
    ck_assert_msg(e <= TOL, "max err %.3g of scale", e);
}
END_TEST

/* Several output-channel blocks, ragged, with weights transformed in K
 * blocks (C > 256) and whole (C <= 256). */
START_TEST(test_out_blocks) {
    Case a = {2, 300, 16, 20, 90}, b = {1, 200, 12, 20, 150};
    double e = run_case(a, LDM_W_BF16, EP_BIAS | EP_ROWADD | EP_RES, 33);
    ck_assert_msg(e <= TOL, "C300 O90: max err %.3g of scale", e);
    e = run_case(b, LDM_W_F32, EP_RES, 34);
    ck_assert_msg(e <= TOL, "C200 O150: max err %.3g of scale", e);
}
END_TEST

/* An upsampling prologue (s.up = 2: conv3x3(upsample_nearest(x, 2)), the
 * kernel's 4 sub-pixel phases on the low-resolution x) against the
 * reference convolution of the upsampled x made here, and against the
 * plain Winograd kernel run on that upsampled x (the unfused graph). Both
 * within TOL of the scale S of the upsampled convolution's terms: the
 * phases' 2x2 kernels add up to 4 taps before multiplying (a reordered
 * sum, a relative rounding of a few units of 2^-24 per tap) and their
 * Winograd transform has the same terms' bound as the plain one.
 * Shapes: edge tiles and odd sizes, tiles across rows and images, whole
 * tile rows of 32 low-resolution columns (the interleaving fast path) and
 * a ragged one, several output blocks; every epilogue; f32 and f16 weights;
 * a part of a concatenation (y_gap). */
START_TEST(test_upsample) {
    static const Case cases[] = {
        {2, 5, 7, 5, 6}, {2, 16, 4, 32, 17}, {1, 7, 5, 40, 9}, {2, 9, 1, 1, 4}, {1, 64, 20, 36, 64}, {1, 40, 9, 70, 300},
    };
    Case k = cases[_i];
    for (int epi = 0; epi < 16; epi++) {
        int wtype = epi & 1 ? LDM_W_F16 : LDM_W_F32;
        long gap = epi == 5 ? 7 : 0;
        rng_state = 7000 + 100 * _i + epi;
        int H2 = 2 * k.H, W2 = 2 * k.W;
        LdmConvShape su = {k.N, k.C, k.H, k.W, k.O, 3, 3, 1, 1, 1, 1, 1, 1, H2, W2, gap, 2};
        LdmConvShape sp = {k.N, k.C, H2, W2, k.O, 3, 3, 1, 1, 1, 1, 1, 1, H2, W2, 0, 0};
        size_t nx = (size_t)k.N * k.C * k.H * k.W, nxu = 4 * nx, ny = (size_t)k.N * k.O * H2 * W2,
               nyg = ny + (size_t)k.N * gap, nw = (size_t)k.O * k.C * 9;
        float *x = rand_buf(nx, 1.0), *w = rand_buf(nw, 1.0 / sqrt(9.0 * k.C));
        float *bias = epi & EP_BIAS ? rand_buf((size_t)k.O, 1.0) : NULL;
        float *rowadd = epi & EP_ROWADD ? rand_buf((size_t)k.N * k.O, 1.0) : NULL;
        float *res = epi & EP_RES ? rand_buf(ny, 1.0) : NULL;
        float *wf = ldm_aligned_alloc(nw * sizeof *wf);
        void *wstore = store_weights(w, nw, wtype, wf);
        float *xu = ldm_aligned_alloc(nxu * sizeof *xu);
        for (size_t c = 0; c < (size_t)k.N * k.C; c++)
            for (int i = 0; i < H2; i++)
                for (int j = 0; j < W2; j++)
                    xu[(c * H2 + i) * W2 + j] = x[(c * k.H + i / 2) * k.W + j / 2];
        float *y = ldm_aligned_alloc(nyg * sizeof *y), *yp = ldm_aligned_alloc(ny * sizeof *yp);
        for (size_t i = 0; i < nyg; i++) y[i] = NAN;
        size_t sb = ldm_conv_scratch_bytes(&su, LDM_CONV_WINOGRAD), sbp = ldm_winograd_scratch_bytes(&sp);
        float *scratch = ldm_aligned_alloc((sb > sbp ? sb : sbp) + 64);
        LdmEpilogue ep = {bias, rowadd, res, !!(epi & EP_RELU)};
        LdmW lw = {wstore, wtype, LDM_WL_ROWS};
        ldm_conv2d(&su, LDM_CONV_WINOGRAD, x, lw, &ep, y, scratch);
        ldm_conv3x3_winograd(&sp, xu, lw, &ep, yp, scratch);
        double *ref = malloc(ny * sizeof *ref);
        double smax = ref_conv(&sp, xu, wf, bias, rowadd, res, ref);
        if (epi & EP_RELU)
            for (size_t i = 0; i < ny; i++) ref[i] = ref[i] > 0 ? ref[i] : 0;
        double maxe = 0, maxp = 0;
        size_t per = (size_t)k.O * H2 * W2;
        for (size_t i = 0; i < ny; i++) {
            const float got = y[i + i / per * (size_t)gap];
            double e = fabs((double)got - ref[i]), ep2 = fabs((double)got - (double)yp[i]);
            if (!(e <= maxe)) maxe = e; /* NaN sticks */
            if (!(ep2 <= maxp)) maxp = ep2;
        }
        for (int n = 0; n < k.N; n++) /* the gaps stay untouched */
            for (long g = 0; g < gap; g++) ck_assert(isnan(y[(size_t)(n + 1) * per + (size_t)n * gap + (size_t)g]));
        ck_assert_msg(maxe / smax <= TOL && maxp / smax <= TOL,
                      "upsample N%d C%d %dx%d O%d weights %d epilogue %d: max err %.3g (reference), %.3g (unfused) of "
                      "scale",
                      k.N, k.C, k.H, k.W, k.O, wtype, epi, maxe / smax, maxp / smax);
        free(x), free(w), free(bias), free(rowadd), free(res), free(wf), free(wstore), free(xu), free(y), free(yp);
        free(scratch), free(ref);
    }
}
END_TEST

/* A convolution writing its part of a channel concatenation (y_gap): every
 * algorithm puts sample n at y + n * (O*H*W + gap), the same values as
 * when it writes a tensor of its own, and leaves the gaps (the other
 * parts) alone; with every epilogue, a ReLU included. */
START_TEST(test_concat_part) {
    static const struct {
        Case k;
        int k1, algo;
    } cases[] = {
        {{2, 24, 16, 20, 20}, 3, LDM_CONV_WINOGRAD},
        {{2, 40, 4, 4, 24}, 3, LDM_CONV_IM2COL},   /* small outputs: all samples in one GEMM */
        {{2, 8, 40, 36, 12}, 3, LDM_CONV_IM2COL},  /* row tiles per sample */
        {{2, 16, 9, 7, 20}, 1, LDM_CONV_POINTWISE},
        {{2, 16, 9, 21, 5}, 3, LDM_CONV_DIRECT},
    };
    const Case k = cases[_i].k;
    const int kk = cases[_i].k1, algo = cases[_i].algo, pad = kk / 2;
    LdmConvShape s = {k.N, k.C, k.H, k.W, k.O, kk, kk, 1, 1, pad, pad, pad, pad, k.H, k.W, 0, 0};
    rng_state = 99 + _i;
    size_t nx = (size_t)k.N * k.C * k.H * k.W, P = (size_t)k.H * k.W, ny = (size_t)k.N * k.O * P;
    size_t nw = (size_t)k.O * k.C * kk * kk;
    const long gap = 3 * (long)P + 5;
    float *x = rand_buf(nx, 1.0), *w = rand_buf(nw, 0.1), *bias = rand_buf((size_t)k.O, 1.0);
    float *rowadd = rand_buf((size_t)k.N * k.O, 1.0), *res = rand_buf(ny, 1.0);
    float *scratch = ldm_aligned_alloc(ldm_conv_scratch_bytes(&s, algo) + 64);
    float *y = ldm_aligned_alloc(ny * sizeof(float));
    size_t nz = ny + (size_t)gap * k.N;
    float *z = ldm_aligned_alloc(nz * sizeof(float));
    for (size_t i = 0; i < nz; i++) z[i] = -12345.0f; /* negative: a ReLU over the gaps would show */
    LdmEpilogue ep = {bias, rowadd, res, 1};
    ldm_conv2d(&s, algo, x, (LdmW){w, LDM_W_F32, LDM_WL_ROWS}, &ep, y, scratch);
    LdmConvShape sg = s;
    sg.y_gap = gap;
    ldm_conv2d(&sg, algo, x, (LdmW){w, LDM_W_F32, LDM_WL_ROWS}, &ep, z, scratch);
    for (int n = 0; n < k.N; n++) {
        const float *zn = z + (size_t)n * (k.O * P + gap);
        for (size_t i = 0; i < k.O * P; i++)
            ck_assert_msg(zn[i] == y[(size_t)n * k.O * P + i], "algo %d sample %d element %zu: %g in the concatenation, %g alone",
                          algo, n, i, zn[i], y[(size_t)n * k.O * P + i]);
        for (long i = 0; i < gap; i++)
            ck_assert_msg(zn[k.O * P + i] == -12345.0f, "algo %d wrote into the gap after sample %d (at %ld)", algo, n, i);
    }
    free(x), free(w), free(bias), free(rowadd), free(res), free(scratch), free(y), free(z);
}
END_TEST

/* The result must not depend on the number of threads: every output is
 * computed by the same operations whichever thread does it, however the
 * tiles are blocked. Three shapes: few tiles (threads split each block's
 * output channels), many tiles with few channels (threads take whole
 * tile blocks, units across tile rows), and TAESD's 64 x 64 channels (the
 * blocks cut to the L2 cache). */
START_TEST(test_threads) {
    static const Case cases[] = {{2, 21, 13, 45, 18}, {1, 64, 100, 112, 40}, {1, 64, 45, 83, 64}};
    Case k = cases[_i];
    LdmConvShape s = shape_of(k);
    rng_state = 77;
    size_t nx = (size_t)k.N * k.C * k.H * k.W, ny = (size_t)k.N * k.O * k.H * k.W, nw = (size_t)k.O * k.C * 9;
    float *x = rand_buf(nx, 1.0), *w = rand_buf(nw, 0.1), *bias = rand_buf((size_t)k.O, 1.0);
    float *scratch = ldm_aligned_alloc(ldm_winograd_scratch_bytes(&s));
    float *y1 = ldm_aligned_alloc(ny * sizeof(float)), *y = ldm_aligned_alloc(ny * sizeof(float));
    LdmEpilogue ep = {bias, NULL, NULL, 0};
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    ldm_conv3x3_winograd(&s, x, (LdmW){w, LDM_W_F32, LDM_WL_ROWS}, &ep, y1, scratch);
    for (int nt = 2; nt <= 5; nt++) {
        omp_set_num_threads(nt);
        memset(y, 0, ny * sizeof *y);
        ldm_conv3x3_winograd(&s, x, (LdmW){w, LDM_W_F32, LDM_WL_ROWS}, &ep, y, scratch);
        ck_assert_msg(!memcmp(y, y1, ny * sizeof *y), "%d threads differ from 1", nt);
    }
    /* --compute bf16 leaves Winograd in float32: rounding its transformed
     * operands U and V to bfloat16 was tried and measured, and took the
     * sd1-tiny UNet's error against the goldens from 2.4% to 13% of its
     * largest output (the transforms scale the operands by up to 100 and
     * the output transform cancels them again). */
    if (ldm_set_compute("bf16") == 0) {
        ldm_conv3x3_winograd(&s, x, (LdmW){w, LDM_W_F32, LDM_WL_ROWS}, &ep, y, scratch);
        ldm_set_compute("f32");
        ck_assert_msg(!memcmp(y, y1, ny * sizeof *y), "--compute bf16 changed a Winograd convolution");
    }
    omp_set_num_threads(saved);
    free(x), free(w), free(bias), free(scratch), free(y1), free(y);
}
END_TEST

/* Many tiles, few channels: tile blocks per thread, units across rows. */
START_TEST(test_many_tiles) {
    Case k = {1, 64, 100, 112, 40};
    double e = run_case(k, LDM_W_F16, EP_BIAS | EP_ROWADD | EP_RES, 35);
    ck_assert_msg(e <= TOL, "max err %.3g of scale", e);
}
END_TEST

/* TAESD's 64 x 64 channels: U (576 KB) is small, so the private schedule
 * cuts its tile blocks to a few units (U and V within a core's L2 cache,
 * wg_priv_units), several per tile row and across rows (odd sizes, ragged
 * last block), with the epilogue of TAESD's Block (bias, residual, ReLU). */
START_TEST(test_small_u_blocks) {
    Case k = {1, 64, 45, 83, 64};
    double e = run_case(k, LDM_W_F32, EP_BIAS | EP_RES | EP_RELU, 36);
    ck_assert_msg(e <= TOL, "max err %.3g of scale", e);
}
END_TEST

/* An output over 16 MB (written past the caches, in several GEMM sub-
 * blocks), checked at every output of a few rows of every channel: the
 * first, the last and a middle one, and every output of channel 0. */
START_TEST(test_large_output) {
    Case k = {1, 4, 256, 256, 68};
    LdmConvShape s = shape_of(k);
    rng_state = 55;
    size_t nx = (size_t)k.N * k.C * k.H * k.W, ny = (size_t)k.N * k.O * k.H * k.W, nw = (size_t)k.O * k.C * 9;
    float *x = rand_buf(nx, 1.0), *w = rand_buf(nw, 1.0 / 6), *bias = rand_buf((size_t)k.O, 1.0), *res = rand_buf(ny, 1.0);
    float *y = ldm_aligned_alloc(ny * sizeof *y), *scratch = ldm_aligned_alloc(ldm_winograd_scratch_bytes(&s));
    for (size_t i = 0; i < ny; i++) y[i] = NAN;
    LdmEpilogue ep = {bias, NULL, res, 0};
    ldm_conv3x3_winograd(&s, x, (LdmW){w, LDM_W_F32, LDM_WL_ROWS}, &ep, y, scratch);
    double maxe = 0, smax = 0, mag;
    for (int o = 0; o < k.O; o++)
        for (int h = 0; h < k.H; h++) {
            if (o && h != 0 && h != 131 && h != k.H - 1) continue;
            for (int v = 0; v < k.W; v++) {
                double r = ref_at(&s, x, w, bias, NULL, res, 0, o, h, v, &mag);
                double e = fabs(y[((size_t)o * k.H + h) * k.W + v] - r);
                if (!(e <= maxe)) maxe = e;
                if (mag > smax) smax = mag;
            }
        }
    ck_assert_msg(maxe <= TOL * smax, "max err %.3g of scale %.3g", maxe, smax);
    free(x), free(w), free(bias), free(res), free(y), free(scratch);
}
END_TEST

/* SD-sized channel count: error relative to the output scale stays small
 * (F(4x4, 3x3) in float32 is ~1e-5; it must not grow with C). */
START_TEST(test_error_large_c) {
    Case k = {1, 1280, 12, 16, 8};
    LdmConvShape s = shape_of(k);
    rng_state = 99;
    size_t nx = (size_t)k.N * k.C * k.H * k.W, ny = (size_t)k.N * k.O * k.H * k.W, nw = (size_t)k.O * k.C * 9;
    float *x = rand_buf(nx, 1.0), *w = rand_buf(nw, 1.0 / sqrt(9.0 * k.C));
    float *y = ldm_aligned_alloc(ny * sizeof *y), *scratch = ldm_aligned_alloc(ldm_winograd_scratch_bytes(&s));
    double *ref = malloc(ny * sizeof *ref);
    ldm_conv3x3_winograd(&s, x, (LdmW){w, LDM_W_F32, LDM_WL_ROWS}, NULL, y, scratch);
    ref_conv(&s, x, w, NULL, NULL, NULL, ref);
    double maxe = 0, ss = 0;
    for (size_t i = 0; i < ny; i++) {
        double e = fabs(y[i] - ref[i]);
        if (!(e <= maxe)) maxe = e;
        ss += ref[i] * ref[i];
    }
    double rms = sqrt(ss / ny);
    ck_assert_msg(rms > 0.5, "output scale %.3g", rms);
    ck_assert_msg(maxe <= 1e-4 * rms, "max err %.3g, output rms %.3g", maxe, rms);
    free(x), free(w), free(y), free(scratch), free(ref);
}
END_TEST

/* The scratch size: positive, and modest for the largest SD shapes. */
START_TEST(test_scratch_size) {
    LdmConvShape a = shape_of((Case){2, 640, 64, 64, 640}), b = shape_of((Case){1, 512, 512, 512, 512});
    LdmConvShape c = shape_of((Case){2, 1280, 16, 16, 1280});
    ck_assert(ldm_winograd_scratch_bytes(&a) <= (32u << 20));
    ck_assert(ldm_winograd_scratch_bytes(&b) <= (32u << 20));
    ck_assert(ldm_winograd_scratch_bytes(&c) <= (32u << 20));
    ck_assert(ldm_winograd_scratch_bytes(&c) < 36ull * 1280 * 1280 * 4 / 8);
}
END_TEST

Suite *suite_winograd(void) {
    Suite *s = suite_create("winograd");
    TCase *tc = tcase_create("winograd");
    tcase_set_timeout(tc, 120);
    int nsmall = (int)(sizeof small / sizeof *small);
    tcase_add_loop_test(tc, test_concat_part, 0, 5);
    tcase_add_loop_test(tc, test_upsample, 0, 6);
    tcase_add_loop_test(tc, test_direct, 0, 10);
    tcase_add_loop_test(tc, test_small_shapes_f32, 0, nsmall);
    tcase_add_loop_test(tc, test_small_shapes_half, 0, nsmall);
    tcase_add_test(tc, test_tile_blocks);
    tcase_add_test(tc, test_blocks);
    tcase_add_test(tc, test_out_blocks);
    tcase_add_test(tc, test_large_output);
    tcase_add_loop_test(tc, test_threads, 0, 3);
    tcase_add_test(tc, test_small_u_blocks);
    tcase_add_test(tc, test_many_tiles);
    tcase_add_test(tc, test_error_large_c);
    tcase_add_test(tc, test_scratch_size);
    suite_add_tcase(s, tc);
    return s;
}
