/*
 * make_lora.c - a random kohya-format LoRA (and LoCon) of the shapes of an
 * SD v1 checkpoint, for `make bench`'s LoRA rows:
 *
 *   make_lora [--rank R] [--alpha A] [--no-conv] [--seed S] -o OUT.safetensors CKPT.safetensors
 *
 * One module (CompVis-style names, as kohya's sd-scripts write them for SD
 * v1 checkpoints) per weight of CKPT that a LoRA of the usual kind trains:
 *  - UNet attention blocks: attn1/attn2 to_q, to_k, to_v, to_out.0,
 *    ff.net.0.proj, ff.net.2 (linear: down [r, in], up [out, r]) and the
 *    SpatialTransformer's proj_in / proj_out (1x1 convs in SD v1, [out, in,
 *    1, 1]: down [r, in, 1, 1], up [out, r, 1, 1]; linear in SD v2);
 *  - UNet ResBlock 3x3 convs in_layers.2 and out_layers.3 (LoCon: down
 *    [r, Cin, 3, 3], up [Cout, r, 1, 1]), unless --no-conv;
 *  - text encoder: self_attn q_proj/k_proj/v_proj/out_proj, mlp fc1/fc2.
 * Prefix: "lora_unet_" + the key minus "model.diffusion_model." and
 * ".weight", '.' -> '_' (e.g. lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q),
 * or "lora_te_" + the key minus "cond_stage_model.transformer." and
 * ".weight" (e.g. lora_te_text_model_encoder_layers_0_self_attn_q_proj).
 * Each module: <prefix>.lora_down.weight and <prefix>.lora_up.weight (F16,
 * N(0, 0.01) from a seeded PRNG) and <prefix>.alpha (F32, 0-dim). Prints
 * "make_lora: OUT: N modules (U unet of which C conv, T text encoder),
 * rank R, alpha A, X MiB" on stdout.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "util.h"

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* which kind of module weight t is: 0 none, 1 linear (or 1x1 conv), 2 3x3 conv */
static int module_kind(const StTensor *t) {
    const char *k = t->name;
    if (!strncmp(k, "model.diffusion_model.", 22)) {
        static const char *const attn[] = {".attn1.to_q.weight", ".attn1.to_k.weight", ".attn1.to_v.weight",
                                           ".attn1.to_out.0.weight", ".attn2.to_q.weight", ".attn2.to_k.weight",
                                           ".attn2.to_v.weight", ".attn2.to_out.0.weight", ".ff.net.0.proj.weight",
                                           ".ff.net.2.weight"};
        for (size_t i = 0; i < sizeof attn / sizeof *attn; i++)
            if (ends_with(k, attn[i]) && strstr(k, ".transformer_blocks.") && t->ndim == 2) return 1;
        if ((ends_with(k, ".proj_in.weight") || ends_with(k, ".proj_out.weight")) &&
            (t->ndim == 2 || (t->ndim == 4 && t->shape[2] == 1 && t->shape[3] == 1)))
            return 1;
        if ((ends_with(k, ".in_layers.2.weight") || ends_with(k, ".out_layers.3.weight")) && t->ndim == 4 &&
            t->shape[2] == 3 && t->shape[3] == 3)
            return 2;
        return 0;
    }
    if (!strncmp(k, "cond_stage_model.transformer.text_model.encoder.layers.", 55) && t->ndim == 2) {
        static const char *const te[] = {".self_attn.q_proj.weight", ".self_attn.k_proj.weight",
                                         ".self_attn.v_proj.weight", ".self_attn.out_proj.weight",
                                         ".mlp.fc1.weight", ".mlp.fc2.weight"};
        for (size_t i = 0; i < sizeof te / sizeof *te; i++)
            if (ends_with(k, te[i])) return 1;
    }
    return 0;
}

/* the kohya prefix of checkpoint key k (malloc'd) */
static char *prefix_of(const char *k) {
    const char *body, *lead;
    if (!strncmp(k, "model.diffusion_model.", 22)) body = k + 22, lead = "lora_unet_";
    else body = k + strlen("cond_stage_model.transformer."), lead = "lora_te_";
    char *p = ldm_xasprintf("%s%.*s", lead, (int)(strlen(body) - strlen(".weight")), body);
    for (char *c = p; *c; c++)
        if (*c == '.') *c = '_';
    return p;
}

static uint64_t rng_state;
static double uniform(void) { /* splitmix64 -> (0, 1) */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}

/* n F16 values N(0, sd^2), malloc'd */
static uint16_t *randn_f16(int64_t n, double sd) {
    uint16_t *h = ldm_xmalloc((size_t)n * 2 + 2);
    for (int64_t i = 0; i < n; i += 2) {
        double r = sqrt(-2.0 * log(uniform())), a = 6.283185307179586 * uniform();
        h[i] = st_f32_to_f16((float)(sd * r * cos(a)));
        if (i + 1 < n) h[i + 1] = st_f32_to_f16((float)(sd * r * sin(a)));
    }
    return h;
}

static void usage(FILE *fp) {
    fprintf(fp, "usage: make_lora [--rank R] [--alpha A] [--no-conv] [--seed S] -o OUT.safetensors CKPT.safetensors\n");
}

int main(int argc, char **argv) {
    int rank = 32, conv = 1;
    double alpha = 16;
    unsigned long long seed = 1;
    const char *out = NULL, *ckpt = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-conv")) {
            conv = 0;
        } else if (a[0] == '-' && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(a, "--rank")) rank = atoi(v);
            else if (!strcmp(a, "--alpha")) alpha = atof(v);
            else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
            else if (!strcmp(a, "-o")) out = v;
            else {
                fprintf(stderr, "make_lora: unknown option %s\n", a);
                usage(stderr);
                return 2;
            }
        } else if (a[0] != '-' && !ckpt) {
            ckpt = a;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!out || !ckpt || rank < 1) {
        usage(stderr);
        return 2;
    }
    rng_state = seed;
    StFile f;
    if (st_open(&f, ckpt) != 0) {
        fprintf(stderr, "make_lora: %s\n", ldm_last_error());
        return 1;
    }
    StWriter *w = st_writer_new();
    int n_unet = 0, n_conv = 0, n_te = 0;
    double bytes = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        int kind = module_kind(t);
        if (!kind || (kind == 2 && !conv)) continue;
        const int64_t cout = t->shape[0], cin = t->shape[1];
        const int r = rank < cin && rank < cout ? rank : (int)(cin < cout ? cin : cout);
        int64_t dshape[4] = {r, cin, 1, 1}, ushape[4] = {cout, r, 1, 1};
        if (t->ndim == 4) dshape[2] = t->shape[2], dshape[3] = t->shape[3];
        const int nd = t->ndim == 4 ? 4 : 2;
        const int64_t dn = r * cin * dshape[2] * dshape[3], un = cout * r;
        char *p = prefix_of(t->name);
        char *dname = ldm_xasprintf("%s.lora_down.weight", p), *uname = ldm_xasprintf("%s.lora_up.weight", p),
             *aname = ldm_xasprintf("%s.alpha", p);
        st_writer_add_ref(w, dname, ST_F16, nd, dshape, randn_f16(dn, 0.01), 1);
        st_writer_add_ref(w, uname, ST_F16, nd, ushape, randn_f16(un, 0.01), 1);
        float av = (float)alpha;
        st_writer_add(w, aname, ST_F32, 0, NULL, &av);
        bytes += (double)(dn + un) * 2 + 4;
        if (p[5] == 'u') n_unet++, n_conv += kind == 2;
        else n_te++;
        free(p);
        free(dname);
        free(uname);
        free(aname);
    }
    char rs[32], as[32];
    snprintf(rs, sizeof rs, "%d", rank);
    snprintf(as, sizeof as, "%g", alpha);
    st_writer_meta(w, "ss_network_module", conv ? "lycoris.kohya (LoCon)" : "networks.lora");
    st_writer_meta(w, "ss_network_dim", rs);
    st_writer_meta(w, "ss_network_alpha", as);
    st_writer_meta(w, "ldmc_note", "RANDOM factors for benchmarks (tests/bench/make_lora.c)");
    int rc = st_writer_save(w, out);
    st_writer_free(w);
    st_close(&f);
    if (rc != 0) {
        fprintf(stderr, "make_lora: %s\n", ldm_last_error());
        return 1;
    }
    printf("make_lora: %s: %d modules (%d unet of which %d conv, %d text encoder), rank %d, alpha %g, %.1f MiB\n", out,
           n_unet + n_te, n_unet, n_conv, n_te, rank, alpha, bytes / 1048576.0);
    return 0;
}
