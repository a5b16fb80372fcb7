/*
 * torchmath.c - SLEEF's float32 exp and log, one element at a time (see
 * torchmath.h). vmla / vfma are fused multiply-adds on the AVX2 and AVX-512
 * targets torch dispatches to: fmaf here; every other operation rounds on
 * its own.
 */
#include "torchmath.h"

#pragma GCC optimize("fp-contract=off")

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define R_LN2f 1.442695040888963407359924681001892137426645954152985934135449406931f
#define L2Uf 0.693145751953125f
#define L2Lf 1.428606765330187045e-06f

static int32_t f2i(float f) {
    int32_t i;
    memcpy(&i, &f, 4);
    return i;
}

static float i2f(int32_t i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}

static float pow2i(int32_t q) { return i2f((int32_t)((uint32_t)(q + 0x7f) << 23)); }

/* vldexp2_vf_vf_vi2 */
static float ldexp2(float d, int32_t e) { return d * pow2i(e >> 1) * pow2i(e - (e >> 1)); }

/* vldexp3_vf_vf_vi2: add q to the exponent field */
static float ldexp3(float d, int32_t q) { return i2f((int32_t)((uint32_t)f2i(d) + ((uint32_t)q << 23))); }

/* vilogb2k_vi2_vf */
static int32_t ilogb2k(float d) { return ((f2i(d) >> 23) & 0xff) - 0x7f; }

float ldm_torch_expf(float d) {
    int32_t q = (int32_t)nearbyintf(d * R_LN2f);
    float s, u;
    s = fmaf((float)q, -L2Uf, d);
    s = fmaf((float)q, -L2Lf, s);
    u = 0.000198527617612853646278381f;
    u = fmaf(u, s, 0.00139304355252534151077271f);
    u = fmaf(u, s, 0.00833336077630519866943359f);
    u = fmaf(u, s, 0.0416664853692054748535156f);
    u = fmaf(u, s, 0.166666671633720397949219f);
    u = fmaf(u, s, 0.5f);
    u = 1.0f + fmaf(s * s, u, s);
    u = ldexp2(u, q);
    if (d < -104.0f) u = 0.0f;
    if (100.0f < d) u = INFINITY;
    if (isnan(d)) u = d;
    return u;
}

typedef struct {
    float x, y;
} F2;

static F2 df(float x, float y) {
    F2 r = {x, y};
    return r;
}

/* dfadd2_vf2_vf_vf */
static F2 dfadd2_ff(float x, float y) {
    float s = x + y;
    float v = s - x;
    return df(s, (x - (s - v)) + (y - v));
}

/* dfadd_vf2_vf2_vf2 (|x| >= |y|) */
static F2 dfadd_22(F2 x, F2 y) {
    float s = x.x + y.x;
    return df(s, (((x.x - s) + y.x) + x.y) + y.y);
}

/* dfadd_vf2_vf2_vf (|x| >= |y|) */
static F2 dfadd_2f(F2 x, float y) {
    float s = x.x + y;
    return df(s, ((x.x - s) + y) + x.y);
}

/* dfmul_vf2_vf2_vf (FMA) */
static F2 dfmul_2f(F2 x, float y) {
    float s = x.x * y;
    return df(s, fmaf(x.y, y, fmaf(x.x, y, -s)));
}

/* dfdiv_vf2_vf2_vf2 (FMA): vfmapn(a,b,c) = a*b - c, vfmanp(a,b,c) = -a*b + c */
static F2 dfdiv_22(F2 n, F2 d) {
    float t = 1.0f / d.x;
    float s = n.x * t;
    float u = fmaf(t, n.x, -s);
    float v = fmaf(-d.y, t, fmaf(-d.x, t, 1.0f));
    return df(s, fmaf(s, v, fmaf(n.y, t, u)));
}

float ldm_torch_logf(float d) {
    float d0 = d;
    int o = d < FLT_MIN;
    if (o) d = d * ((float)(INT64_C(1) << 32) * (float)(INT64_C(1) << 32));
    int32_t e = ilogb2k(d * (1.0f / 0.75f));
    float m = ldexp3(d, -e);
    if (o) e -= 64;
    F2 s = dfmul_2f(df(0.69314718246459960938f, -1.904654323148236017e-09f), (float)e);
    F2 x = dfdiv_22(dfadd2_ff(-1.0f, m), dfadd2_ff(1.0f, m));
    float x2 = x.x * x.x;
    float t = +0.3027294874e+0f;
    t = fmaf(t, x2, +0.3996108174e+0f);
    t = fmaf(t, x2, +0.6666694880e+0f);
    s = dfadd_22(s, df(x.x * 2.0f, x.y * 2.0f));
    s = dfadd_2f(s, x2 * x.x * t);
    float r = s.x + s.y;
    if (isinf(d0) && d0 > 0) r = INFINITY;
    if (d0 < 0 || isnan(d0)) r = NAN;
    if (d0 == 0) r = -INFINITY;
    return r;
}
