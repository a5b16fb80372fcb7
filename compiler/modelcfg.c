/*
 * modelcfg.c - what a CompVis model config means, derived in one place.
 *
 * The networks' graphs (through the DSL builtin model_facts(), eval.c) and
 * `ldmc pipeline` (pipeline.c) all need a few facts that the YAML states
 * only indirectly: the first stage's downsampling factor f = 2^(len(ch_mult)
 * - 1), the conditioning kind and LatentDiffusion's conditioning_key, the
 * number of context tokens the UNet cross-attends to, the latent and UNet
 * channel counts, the DDPM schedule. model_facts() derives them with the
 * defaults of the reference classes (ldm/models/diffusion/ddpm.py DDPM and
 * LatentDiffusion __init__, ldm/modules/encoders/modules.py) and checks that
 * they are consistent, so no graph and no executable derives them again.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "ldmc.h"
#include "util.h"

/* "file:line:col: error: " prefix of a config node. */
static int cfg_error(const CfgNode *n, const char *fmt, const char *a, const char *b) {
    char msg[512];
    snprintf(msg, sizeof msg, fmt, a, b ? b : "");
    if (n) return ldm_fail("%s:%d:%d: error: %s", n->file, n->line, n->col, msg);
    return ldm_fail("error: %s", msg);
}

/* A number at key of map (int or float), or def when absent. */
static int get_num(const CfgNode *map, const char *key, double def, double *out) {
    const CfgNode *v = cfg_get(map, key);
    if (!v || v->kind == CFG_NULL) {
        *out = def;
        return 0;
    }
    if (v->kind == CFG_INT) *out = (double)v->i;
    else if (v->kind == CFG_FLOAT) *out = v->f;
    else return cfg_error(v, "'%s' must be a number, got a %s", key, cfg_kind_name(v->kind));
    if (!isfinite(*out)) return cfg_error(v, "'%s' must be finite%s", key, NULL);
    return 0;
}

static int get_int(const CfgNode *map, const char *key, long def, long lo, long hi, int *out) {
    const CfgNode *v = cfg_get(map, key);
    if (!v || v->kind == CFG_NULL) {
        *out = (int)def;
        return 0;
    }
    if (v->kind != CFG_INT) return cfg_error(v, "'%s' must be an integer, got a %s", key, cfg_kind_name(v->kind));
    if (v->i < lo || v->i > hi) {
        char range[64];
        snprintf(range, sizeof range, "%ld..%ld", lo, hi);
        return cfg_error(v, "'%s' is out of range (expected %s)", key, range);
    }
    *out = (int)v->i;
    return 0;
}

/* A string at key, def when absent/null; NULL + error for another kind. */
static const char *get_str(const CfgNode *map, const char *key, const char *def, int *err) {
    const CfgNode *v = cfg_get(map, key);
    if (!v || v->kind == CFG_NULL) return def;
    if (v->kind != CFG_STRING) {
        cfg_error(v, "'%s' must be a string, got a %s", key, cfg_kind_name(v->kind));
        *err = 1;
        return NULL;
    }
    return v->s;
}

static const CfgNode *need_map(const CfgNode *parent, const char *key, const char *where) {
    const CfgNode *v = cfg_get(parent, key);
    if (!v || v->kind != CFG_MAP) {
        cfg_error(v ? v : parent, v ? "'%s' must be a map (in %s)" : "missing map '%s' (in %s)", key, where);
        return NULL;
    }
    return v;
}

/* target == "sgm." + what, or a located error naming the expected classes. */
static int sgm_is(const CfgNode *map, const char *what) {
    const CfgNode *t = cfg_get(map, "target");
    return t && t->kind == CFG_STRING && !strncmp(t->s, "sgm.", 4) && !strcmp(t->s + 4, what);
}

static int sgm_target_error(const CfgNode *map, const char *where, const char *expected) {
    const CfgNode *t = cfg_get(map, "target");
    const char *got = t && t->kind == CFG_STRING ? t->s : "(none)";
    char w[256];
    snprintf(w, sizeof w, "%s: unsupported target '%s'", where, got);
    return cfg_error(t ? t : map, "%s (expected %s)", w, expected);
}

/* Stability-AI generative-models (sgm) DiffusionEngine configs, e.g. SDXL's
 * sd_xl_base.yaml: network_config (the UNet), conditioner_config
 * (GeneralConditioner: a list of embedders), first_stage_config,
 * denoiser_config (DiscreteDenoiser: scaling + LegacyDDPMDiscretization),
 * scale_factor. The defaults are those of the sgm classes. */
/* first_stage_config.params.ddconfig (CompVis and sgm alike): ch_mult and
 * the downsampling factor f = 2^(len(ch_mult) - 1). */
static int first_stage_ddconfig(const CfgNode *fs, ModelFacts *p) {
    const CfgNode *fsp = need_map(fs, "params", "first_stage_config");
    const CfgNode *dd = fsp ? need_map(fsp, "ddconfig", "first_stage_config.params") : NULL;
    if (!dd) return -1;
    const CfgNode *mult = cfg_get(dd, "ch_mult");
    if (!mult || mult->kind != CFG_LIST || mult->n < 1 || mult->n > 20)
        return cfg_error(mult ? mult : dd, "ddconfig.ch_mult must be a non-empty list%s%s", "", NULL);
    p->f = 1 << (mult->n - 1);
    p->ch_mult = mult;
    return 0;
}

static int sgm_facts(const CfgNode *M, ModelFacts *p) {
    int err = 0;
    p->format = "sgm";
    p->unet_config_key = "network_config";
    p->beta_schedule = "linear"; /* LegacyDDPMDiscretization: make_beta_schedule("linear", ...) */
    p->conditioning_key = "crossattn";

    /* denoiser_config: DiscreteDenoiser(num_idx, scaling_config, discretization_config) */
    const CfgNode *dn = need_map(M, "denoiser_config", "model.params");
    if (!dn) return -1;
    if (!sgm_is(dn, "modules.diffusionmodules.denoiser.DiscreteDenoiser"))
        return sgm_target_error(dn, "denoiser_config", "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser");
    const CfgNode *dp = need_map(dn, "params", "denoiser_config");
    if (!dp) return -1;
    int num_idx;
    if (get_int(dp, "num_idx", 1000, 2, 1000000, &num_idx)) return -1;
    const CfgNode *sc = need_map(dp, "scaling_config", "denoiser_config.params");
    if (!sc) return -1;
    if (sgm_is(sc, "modules.diffusionmodules.denoiser_scaling.EpsScaling")) p->parameterization = "eps";
    else if (sgm_is(sc, "modules.diffusionmodules.denoiser_scaling.VScaling")) p->parameterization = "v";
    else
        return sgm_target_error(sc, "denoiser_config.params.scaling_config",
                                "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling or VScaling");
    const CfgNode *dc = need_map(dp, "discretization_config", "denoiser_config.params");
    if (!dc) return -1;
    if (!sgm_is(dc, "modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"))
        return sgm_target_error(dc, "denoiser_config.params.discretization_config",
                                "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization");
    const CfgNode *dcp = cfg_get(dc, "params"); /* LegacyDDPMDiscretization(0.00085, 0.012, 1000) */
    if (get_num(dcp, "linear_start", 0.00085, &p->linear_start) || get_num(dcp, "linear_end", 0.012, &p->linear_end) ||
        get_int(dcp, "num_timesteps", 1000, 2, 1000000, &p->timesteps))
        return -1;
    if (!(p->linear_start > 0 && p->linear_end > p->linear_start && p->linear_end < 1))
        return cfg_error(dcp ? dcp : dc, "the schedule needs 0 < linear_start < linear_end < 1%s%s", "", NULL);
    if (num_idx != p->timesteps)
        return cfg_error(cfg_get(dp, "num_idx"), "denoiser num_idx must equal the discretization's num_timesteps%s%s", "",
                         NULL);

    if (get_num(M, "scale_factor", 1.0, &p->scale_factor)) return -1;
    if (!(p->scale_factor > 0)) return cfg_error(cfg_get(M, "scale_factor"), "scale_factor must be positive%s%s", "", NULL);

    /* first_stage_config: AutoencoderKL (or its inference wrapper) */
    const CfgNode *fs = need_map(M, "first_stage_config", "model.params");
    if (!fs) return -1;
    if (!sgm_is(fs, "models.autoencoder.AutoencoderKL") && !sgm_is(fs, "models.autoencoder.AutoencoderKLInferenceWrapper"))
        return sgm_target_error(fs, "first_stage_config", "sgm.models.autoencoder.AutoencoderKL");
    p->first_stage = "kl";
    if (first_stage_ddconfig(fs, p) != 0) return -1;

    /* network_config: sgm's UNetModel; num_classes 'sequential' adds
     * label_emb(y) of width adm_in_channels to the time embedding */
    const CfgNode *nc = need_map(M, "network_config", "model.params");
    if (!nc) return -1;
    if (!sgm_is(nc, "modules.diffusionmodules.openaimodel.UNetModel"))
        return sgm_target_error(nc, "network_config", "sgm.modules.diffusionmodules.openaimodel.UNetModel");
    const CfgNode *U = need_map(nc, "params", "network_config");
    if (!U) return -1;
    if (get_int(U, "in_channels", -1, 1, 4096, &p->unet_in) || get_int(U, "out_channels", -1, 1, 4096, &p->unet_out))
        return -1;
    if (p->unet_in < 0 || p->unet_out < 0)
        return cfg_error(U, "network_config.params needs in_channels and out_channels%s%s", "", NULL);
    if (p->unet_in != p->unet_out)
        return cfg_error(cfg_get(U, "in_channels"), "network_config: in_channels must equal out_channels (nothing is "
                         "concatenated to the latent)%s%s", "", NULL);
    p->latent_channels = p->unet_out;
    const CfgNode *cd = cfg_get(U, "context_dim");
    if (cd && cd->kind != CFG_NULL && get_int(U, "context_dim", 0, 1, 1 << 20, &p->context_dim)) return -1;
    const CfgNode *st = cfg_get(U, "use_spatial_transformer");
    /* sgm's UNetModel builds SpatialTransformers whenever it has a context_dim */
    p->unet_spatial = st && st->kind == CFG_BOOL ? st->b : p->context_dim > 0;
    if (p->unet_spatial && p->context_dim <= 0)
        return cfg_error(st, "use_spatial_transformer needs a context_dim%s%s", "", NULL);
    const CfgNode *ncl = cfg_get(U, "num_classes");
    if (ncl && ncl->kind != CFG_NULL) {
        if (ncl->kind != CFG_STRING || strcmp(ncl->s, "sequential"))
            return cfg_error(ncl, "network_config: num_classes %s is not supported (only 'sequential': a vector "
                             "conditioning through label_emb)%s", ncl->kind == CFG_STRING ? ncl->s : "other than 'sequential'", NULL);
        if (get_int(U, "adm_in_channels", -1, 1, 1 << 20, &p->adm_in_channels)) return -1;
        if (p->adm_in_channels < 0)
            return cfg_error(U, "network_config: num_classes 'sequential' needs adm_in_channels%s%s", "", NULL);
    }

    /* conditioner_config: GeneralConditioner(emb_models) */
    const CfgNode *cc = need_map(M, "conditioner_config", "model.params");
    if (!cc) return -1;
    if (!sgm_is(cc, "modules.GeneralConditioner"))
        return sgm_target_error(cc, "conditioner_config", "sgm.modules.GeneralConditioner");
    const CfgNode *ccp = need_map(cc, "params", "conditioner_config");
    if (!ccp) return -1;
    const CfgNode *em = cfg_get(ccp, "emb_models");
    if (!em || em->kind != CFG_LIST)
        return cfg_error(em ? em : ccp, "conditioner_config.params.emb_models must be a list%s%s", "", NULL);
    p->cond_stage = "sgm.modules.GeneralConditioner";
    for (int i = 0; i < em->n; i++) {
        const CfgNode *e = em->items[i];
        if (e->kind != CFG_MAP) return cfg_error(e, "emb_models items must be maps%s%s", "", NULL);
        const char *key = get_str(e, "input_key", "", &err);
        if (err) return -1;
        if (sgm_is(e, "modules.encoders.modules.FrozenCLIPEmbedder") ||
            sgm_is(e, "modules.encoders.modules.FrozenOpenCLIPEmbedder2")) {
            if (strcmp(key, "txt"))
                return cfg_error(cfg_get(e, "input_key"), "a text embedder's input_key must be 'txt', got '%s'%s", key, NULL);
            p->n_text_embedders++;
            const CfgNode *ep = cfg_get(e, "params");
            if (get_int(ep, "max_length", 77, 2, 100000, &p->context_length)) return -1;
        } else if (sgm_is(e, "modules.encoders.modules.ConcatTimestepEmbedderND")) {
            static const char *sizes[] = {"original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple"};
            int ok = 0;
            for (int k = 0; k < 3; k++) ok |= !strcmp(key, sizes[k]);
            if (!ok)
                return cfg_error(cfg_get(e, "input_key") ? cfg_get(e, "input_key") : e,
                                 "ConcatTimestepEmbedderND input_key '%s' is not one of original_size_as_tuple, "
                                 "crop_coords_top_left, target_size_as_tuple%s", key, NULL);
        } else {
            return sgm_target_error(e, "conditioner_config.params.emb_models",
                                    "sgm.modules.encoders.modules.FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder2 or "
                                    "ConcatTimestepEmbedderND");
        }
    }
    if (p->n_text_embedders) {
        p->cond_kind = "text";
        p->vocab_size = 49408;
        p->unet_context = p->context_length;
    } else {
        p->cond_kind = "other";
    }
    return 0;
}

int model_facts(const CfgNode *root, ModelFacts *p) {
    memset(p, 0, sizeof *p);
    const CfgNode *model = need_map(root, "model", "the config");
    if (!model) return -1;
    const CfgNode *M = need_map(model, "params", "model");
    if (!M) return -1;
    if (cfg_get(M, "network_config")) return sgm_facts(M, p);
    p->format = "compvis";
    p->unet_config_key = "unet_config";
    int err = 0;

    /* DDPM.__init__ defaults: timesteps=1000, beta_schedule="linear",
     * linear_start=1e-4, linear_end=2e-2, parameterization="eps", channels=3 */
    p->beta_schedule = get_str(M, "beta_schedule", "linear", &err);
    p->parameterization = get_str(M, "parameterization", "eps", &err);
    if (err) return -1;
    if (get_num(M, "linear_start", 1e-4, &p->linear_start) || get_num(M, "linear_end", 2e-2, &p->linear_end) ||
        get_int(M, "timesteps", 1000, 2, 1000000, &p->timesteps) || get_int(M, "channels", 3, 1, 4096, &p->latent_channels))
        return -1;
    if (!(p->linear_start > 0 && p->linear_end > p->linear_start && p->linear_end < 1))
        return cfg_error(cfg_get(M, "linear_end"), "the schedule needs 0 < linear_start < linear_end < 1%s%s", "", NULL);

    /* LatentDiffusion.__init__: scale_factor=1.0, scale_by_std=False */
    if (get_num(M, "scale_factor", 1.0, &p->scale_factor)) return -1;
    if (!(p->scale_factor > 0)) return cfg_error(cfg_get(M, "scale_factor"), "scale_factor must be positive%s%s", "", NULL);
    const CfgNode *sbs = cfg_get(M, "scale_by_std");
    if (sbs && sbs->kind != CFG_NULL) {
        if (sbs->kind != CFG_BOOL) return cfg_error(sbs, "'%s' must be a bool, got a %s", "scale_by_std", cfg_kind_name(sbs->kind));
        p->scale_by_std = sbs->b;
    }

    /* first stage: AutoencoderKL or VQModelInterface; f = 2^(len(ch_mult) - 1) */
    const CfgNode *fs = need_map(M, "first_stage_config", "model.params");
    if (!fs) return -1;
    const char *fst = get_str(fs, "target", "", &err);
    if (err) return -1;
    if (!strcmp(fst, "ldm.models.autoencoder.AutoencoderKL")) p->first_stage = "kl";
    else if (!strcmp(fst, "ldm.models.autoencoder.VQModelInterface") || !strcmp(fst, "ldm.models.autoencoder.VQModel"))
        p->first_stage = "vq";
    else
        return cfg_error(cfg_get(fs, "target") ? cfg_get(fs, "target") : fs,
                         "unsupported first stage '%s' (expected AutoencoderKL or VQModelInterface)%s", fst, NULL);
    if (first_stage_ddconfig(fs, p) != 0) return -1;

    /* UNet */
    const CfgNode *uc = need_map(M, "unet_config", "model.params");
    const CfgNode *U = uc ? need_map(uc, "params", "unet_config") : NULL;
    if (!U) return -1;
    if (get_int(U, "in_channels", -1, 1, 4096, &p->unet_in) || get_int(U, "out_channels", -1, 1, 4096, &p->unet_out))
        return -1;
    if (p->unet_in < 0 || p->unet_out < 0)
        return cfg_error(U, "unet_config.params needs in_channels and out_channels%s%s", "", NULL);
    const CfgNode *st = cfg_get(U, "use_spatial_transformer");
    if (st && st->kind == CFG_BOOL && st->b && get_int(U, "context_dim", 0, 1, 1 << 20, &p->context_dim)) return -1;
    p->unet_spatial = st && st->kind == CFG_BOOL && st->b;
    if (p->unet_out != p->latent_channels)
        return cfg_error(cfg_get(U, "out_channels"), "UNet out_channels must equal model.params.channels%s%s", "", NULL);

    /* cond stage and LatentDiffusion's conditioning_key:
     *   if conditioning_key is None: conditioning_key = 'concat' if concat_mode else 'crossattn'
     *   if cond_stage_config == '__is_unconditional__': conditioning_key = None */
    const CfgNode *cs = cfg_get(M, "cond_stage_config");
    const char *ck = get_str(M, "conditioning_key", NULL, &err);
    if (err) return -1;
    const CfgNode *cm = cfg_get(M, "concat_mode");
    int concat_mode = !(cm && cm->kind == CFG_BOOL && !cm->b);
    if (!ck) ck = concat_mode ? "concat" : "crossattn";
    if (cs && cs->kind == CFG_STRING) {
        p->cond_stage = cs->s;
        if (!strcmp(cs->s, "__is_unconditional__")) ck = "none";
    } else if (cs && cs->kind == CFG_MAP) {
        p->cond_stage = get_str(cs, "target", "", &err);
        if (err) return -1;
        const CfgNode *cp = cfg_get(cs, "params");
        if (!strcmp(p->cond_stage, "ldm.modules.encoders.modules.FrozenCLIPEmbedder")) {
            /* FrozenCLIPEmbedder(max_length=77) = CLIP ViT-L/14's text transformer */
            if (get_int(cp, "max_length", 77, 2, 100000, &p->context_length) ||
                get_int(cp, "vocab_size", 49408, 1, 1 << 24, &p->vocab_size))
                return -1;
        } else if (!strcmp(p->cond_stage, "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder")) {
            /* FrozenOpenCLIPEmbedder(arch="ViT-H-14", layer="last") = open_clip's text tower: 77
             * positions, vocab 49408 unless an open_clip_model_config (the goldens' extension key)
             * says otherwise; layer "last" or "penultimate" */
            const CfgNode *tc = cfg_get(cfg_get(cs, "open_clip_model_config"), "text_cfg");
            if (get_int(tc, "context_length", 77, 2, 100000, &p->context_length) ||
                get_int(tc, "vocab_size", 49408, 1, 1 << 24, &p->vocab_size))
                return -1;
            const char *layer = get_str(cp, "layer", "last", &err);
            if (err) return -1;
            if (strcmp(layer, "last") && strcmp(layer, "penultimate"))
                return cfg_error(cfg_get(cp, "layer"),
                                 "model.params.cond_stage_config.params.layer: unknown layer '%s' (expected \"last\" or "
                                 "\"penultimate\")%s", layer, NULL);
            p->openclip_layer = layer;
        } else if (!strcmp(p->cond_stage, "ldm.modules.encoders.modules.ClassEmbedder")) {
            if (get_int(cp, "n_classes", 1000, 1, 1 << 24, &p->n_classes)) return -1;
        }
    } else {
        p->cond_stage = "";
    }
    static const char *keys[] = {"none", "crossattn", "hybrid", "concat", "adm"};
    int known = 0;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strcmp(ck, keys[i])) {
            p->conditioning_key = keys[i];
            known = 1;
        }
    if (!known)
        return cfg_error(cfg_get(M, "conditioning_key"), "unknown conditioning_key '%s'%s", ck, NULL);
    int concat = !strcmp(ck, "hybrid") || !strcmp(ck, "concat");
    if (!concat && p->unet_in != p->latent_channels)
        return cfg_error(cfg_get(U, "in_channels"),
                         "UNet in_channels differs from model.params.channels, but conditioning_key '%s' "
                         "concatenates nothing%s", ck, NULL);
    if (concat && p->unet_in <= p->latent_channels)
        return cfg_error(cfg_get(U, "in_channels"),
                         "conditioning_key '%s' concatenates channels, so in_channels must exceed "
                         "model.params.channels%s", ck, NULL);
    /* the tokens the UNet cross-attends to: the text encoder's positions,
     * the ClassEmbedder's one embedding, none for an unconditional model */
    if (!strcmp(p->cond_stage, "ldm.modules.encoders.modules.FrozenCLIPEmbedder") ||
        !strcmp(p->cond_stage, "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder")) {
        p->cond_kind = "text";
        p->n_text_embedders = 1;
        p->unet_context = p->context_length;
    } else if (!strcmp(p->cond_stage, "ldm.modules.encoders.modules.ClassEmbedder")) {
        p->cond_kind = "class";
        p->unet_context = 1;
    } else if (!strcmp(p->conditioning_key, "none")) {
        p->cond_kind = "none";
    } else {
        p->cond_kind = "other";
    }
    return 0;
}

/* s as a YAML double-quoted scalar (malloc'd): '"', '\\' and the control
 * characters escaped, so any string of the config (a target with a quote
 * in it) reads back as itself. */
static char *yaml_quoted(const char *s) {
    if (!s) s = "";
    size_t n = 3;
    for (const char *p = s; *p; p++) n += 4;
    char *out = ldm_xmalloc(n), *o = out;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            *o++ = '\\';
            *o++ = (char)*p;
        } else if (*p < 0x20 || *p == 0x7f) {
            o += sprintf(o, "\\x%02x", *p);
        } else {
            *o++ = (char)*p;
        }
    }
    *o++ = '"';
    *o = 0;
    return out;
}

/* The facts as a config map, for the DSL (every field by its name). */
CfgNode *model_facts_map(const ModelFacts *p) {
    char *q[7] = {yaml_quoted(p->conditioning_key), yaml_quoted(p->first_stage), yaml_quoted(p->cond_stage),
                  yaml_quoted(p->cond_kind), yaml_quoted(p->format), yaml_quoted(p->unet_config_key),
                  yaml_quoted(p->parameterization)};
    char *y = ldm_xasprintf("f: %d\nlatent_channels: %d\nunet_in_channels: %d\nunet_out_channels: %d\n"
                            "timesteps: %d\nlinear_start: %.17g\nlinear_end: %.17g\nscale_factor: %.17g\n"
                            "conditioning_key: %s\nfirst_stage: %s\ncond_stage: %s\ncond_kind: %s\n"
                            "context_length: %d\nunet_context: %d\ncontext_dim: %d\nvocab_size: %d\nn_classes: %d\n"
                            "format: %s\nunet_config_key: %s\nunet_spatial: %s\nadm_in_channels: %d\n"
                            "n_text_embedders: %d\nparameterization: %s\n",
                            p->f, p->latent_channels, p->unet_in, p->unet_out, p->timesteps, p->linear_start,
                            p->linear_end, p->scale_factor, q[0], q[1], q[2], q[3], p->context_length,
                            p->unet_context, p->context_dim, p->vocab_size, p->n_classes, q[4], q[5],
                            p->unet_spatial ? "true" : "false", p->adm_in_channels, p->n_text_embedders, q[6]);
    CfgNode *m = cfg_parse_string(y, "<model_facts>");
    free(y);
    for (int i = 0; i < 7; i++) free(q[i]);
    return m;
}


