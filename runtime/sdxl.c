/*
 * sdxl.c - sgm's size embeddings and the UNet's vector input (see sdxl.h).
 */
#include "sdxl.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "torchmath.h"
#include "util.h"

void ldm_concat_timestep_embed(const float *s, int n, int outdim, float *out) {
    /* sgm util.timestep_embedding(t, outdim):
     *   freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=float32) / half)
     *   args = t[:, None].float() * freqs[None]
     *   cat([cos(args), sin(args)], -1) */
    int half = outdim / 2;
    const float c = (float)-log(10000.0);
    for (int k = 0; k < n; k++) {
        float *o = out + (size_t)k * outdim;
        for (int i = 0; i < half; i++) {
            float freq = ldm_torch_expf(c * (float)i / (float)half);
            float arg = s[k] * freq;
            o[i] = (float)cos((double)arg);
            o[half + i] = (float)sin((double)arg);
        }
        if (outdim % 2) o[outdim - 1] = 0.0f;
    }
}

int ldm_size_cond_check(const LdmSizeCond *c) {
    if (c->orig_h <= 0 || c->orig_w <= 0)
        return ldm_fail("original size %dx%d (HxW): expected two positive integers", c->orig_h, c->orig_w);
    if (c->target_h <= 0 || c->target_w <= 0)
        return ldm_fail("target size %dx%d (HxW): expected two positive integers", c->target_h, c->target_w);
    if (c->crop_top < 0 || c->crop_left < 0 || c->crop_top >= c->orig_h || c->crop_left >= c->orig_w)
        return ldm_fail("crop top-left %d,%d is outside the original size %dx%d (HxW): expected 0 <= top < %d "
                        "and 0 <= left < %d", c->crop_top, c->crop_left, c->orig_h, c->orig_w, c->orig_h, c->orig_w);
    return 0;
}

void ldm_sdxl_vector(const float *pooled, int E, const LdmSizeCond *c, int outdim, float *out) {
    if (pooled) memcpy(out, pooled, (size_t)E * sizeof(float));
    else memset(out, 0, (size_t)E * sizeof(float));
    const float s[6] = {(float)c->orig_h, (float)c->orig_w, (float)c->crop_top,
                        (float)c->crop_left, (float)c->target_h, (float)c->target_w};
    ldm_concat_timestep_embed(s, 6, outdim, out + E);
}

/* One integer of s from *p (decimal digits only), within lo..INT_MAX. */
static int parse_int(const char **p, int lo, int *out) {
    const char *q = *p;
    if (*q < '0' || *q > '9') return -1;
    errno = 0;
    char *end;
    long v = strtol(q, &end, 10);
    if (errno || v < lo || v > INT_MAX) return -1;
    *out = (int)v;
    *p = end;
    return 0;
}

int ldm_parse_hw(const char *flag, const char *s, int *h, int *w) {
    const char *p = s;
    if (parse_int(&p, 1, h) == 0 && (*p == 'x' || *p == 'X')) {
        p++;
        if (parse_int(&p, 1, w) == 0 && *p == 0) return 0;
    }
    return ldm_fail("%s '%s': expected HEIGHTxWIDTH, two positive integers (e.g. 1024x1024)", flag, s);
}

int ldm_parse_top_left(const char *flag, const char *s, int *top, int *left) {
    const char *p = s;
    if (parse_int(&p, 0, top) == 0 && *p == ',') {
        p++;
        if (parse_int(&p, 0, left) == 0 && *p == 0) return 0;
    }
    return ldm_fail("%s '%s': expected TOP,LEFT, two non-negative integers (e.g. 0,0)", flag, s);
}
