/*
 * pipeline.c - `ldmc pipeline`: the config-derived constants of a pipeline
 * executable, as C.
 *
 *   ldmc pipeline --config YAML -D H=512 -D W=512 [-D dotted.config.path=V]... -o FILE.c
 *
 * writes one `const LdmPipelineConfig ldm_pipeline_config` (runtime/pipeline.h):
 * what the executable's main() needs to know about the model beyond the
 * generated networks - the DDPM noise schedule, the latent scale factor, the
 * conditioning kind, the latent shape for H x W. Every value is read from the
 * CompVis YAML with the defaults of the reference classes
 * (ldm/models/diffusion/ddpm.py DDPM and LatentDiffusion __init__), so
 * nothing model-specific is hard-coded in the executables.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "ldmc.h"
#include "pipeline.h"
#include "util.h"

/* Everything the generated file states. */
typedef struct PipeInfo {
    int H, W, f;
    int latent_channels, unet_in, unet_out;
    double linear_start, linear_end, scale_factor;
    int timesteps, scale_by_std;
    const char *conditioning_key, *first_stage, *cond_stage;
    int context_length, context_dim, vocab_size, n_classes;
} PipeInfo;

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

/* Derive the constants from the config root. */
static int pipe_info(const CfgNode *root, int H, int W, PipeInfo *p) {
    memset(p, 0, sizeof *p);
    p->H = H;
    p->W = W;
    const CfgNode *model = need_map(root, "model", "the config");
    if (!model) return -1;
    const CfgNode *M = need_map(model, "params", "model");
    if (!M) return -1;
    int err = 0;

    /* DDPM.__init__ defaults: timesteps=1000, beta_schedule="linear",
     * linear_start=1e-4, linear_end=2e-2, parameterization="eps", channels=3 */
    const char *beta = get_str(M, "beta_schedule", "linear", &err);
    const char *param = get_str(M, "parameterization", "eps", &err);
    if (err) return -1;
    if (strcmp(beta, "linear") != 0)
        return cfg_error(cfg_get(M, "beta_schedule"), "beta_schedule '%s' is not supported (only 'linear')%s", beta,
                         NULL);
    if (strcmp(param, "eps") != 0)
        return cfg_error(cfg_get(M, "parameterization"),
                         "parameterization '%s' is not supported (only 'eps': SD v1 and the LDM models)%s", param, NULL);
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
    const CfgNode *fsp = need_map(fs, "params", "first_stage_config");
    const CfgNode *dd = fsp ? need_map(fsp, "ddconfig", "first_stage_config.params") : NULL;
    if (!dd) return -1;
    const CfgNode *mult = cfg_get(dd, "ch_mult");
    if (!mult || mult->kind != CFG_LIST || mult->n < 1 || mult->n > 20)
        return cfg_error(mult ? mult : dd, "ddconfig.ch_mult must be a non-empty list%s%s", "", NULL);
    p->f = 1 << (mult->n - 1);
    if (H % p->f || W % p->f) {
        char msg[128];
        snprintf(msg, sizeof msg, "H=%d W=%d: both must be multiples of %d", H, W, p->f);
        return cfg_error(mult, "%s (the first stage downsamples by 2^(len(ch_mult) - 1))%s", msg, NULL);
    }

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
    return 0;
}

/* Write s as a C string literal. */
static void put_cstr(FILE *fp, const char *s) {
    fputc('"', fp);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
        else if (c < 0x20 || c == 0x7f || c >= 0x80) fprintf(fp, "\\%03o", c);
        else if (c == '?') fputs("\\?", fp); /* no trigraphs */
        else fputc(c, fp);
    }
    fputc('"', fp);
}

static void emit(FILE *fp, const PipeInfo *p, const char *config_path, const char *defs) {
    char banner[2048];
    snprintf(banner, sizeof banner, "ldmc %s | pipeline | config %s | %s", LDMC_VERSION, config_path, defs);
    fputs("/* ", fp);
    for (const char *s = banner; *s; s++) fputc(s[0] == '*' && s[1] == '/' ? '?' : s[0], fp);
    fputs(" */\n", fp);
    fprintf(fp,
            "/*\n"
            " * Generated by `ldmc pipeline`: do not edit.\n"
            " * The config-derived constants of one pipeline executable (runtime/pipeline.h).\n"
            " */\n"
            "#include \"pipeline.h\"\n\n"
            "const LdmPipelineConfig ldm_pipeline_config = {\n");
    fputs("    .banner = ", fp);
    put_cstr(fp, banner);
    fputs(",\n    .config_path = ", fp);
    put_cstr(fp, config_path);
    fprintf(fp, ",\n    .H = %d,\n    .W = %d,\n    .f = %d,\n", p->H, p->W, p->f);
    fprintf(fp, "    .latent_channels = %d,\n    .latent_h = %d,\n    .latent_w = %d,\n", p->latent_channels, p->H / p->f,
            p->W / p->f);
    fprintf(fp, "    .unet_in_channels = %d,\n    .unet_out_channels = %d,\n", p->unet_in, p->unet_out);
    fprintf(fp, "    .linear_start = %.17g,\n    .linear_end = %.17g,\n    .timesteps = %d,\n", p->linear_start,
            p->linear_end, p->timesteps);
    fprintf(fp, "    .scale_factor = %.17g,\n    .scale_by_std = %d,\n", p->scale_factor, p->scale_by_std);
    fputs("    .conditioning_key = ", fp);
    put_cstr(fp, p->conditioning_key);
    fputs(",\n    .first_stage = ", fp);
    put_cstr(fp, p->first_stage);
    fputs(",\n    .cond_stage = ", fp);
    put_cstr(fp, p->cond_stage);
    fprintf(fp, ",\n    .context_length = %d,\n    .context_dim = %d,\n    .vocab_size = %d,\n    .n_classes = %d,\n};\n",
            p->context_length, p->context_dim, p->vocab_size, p->n_classes);
}

static int parse_hw(const char *name, const char *v, int *out) {
    char *end;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < 1 || x > 65536) return ldm_fail("ldmc pipeline: -D %s: expected a size in pixels, got '%s'", name, v);
    *out = (int)x;
    return 0;
}

int ldmc_pipeline_main(int argc, char **argv);

int ldmc_pipeline_main(int argc, char **argv) {
    const char *config_path = NULL, *out_path = NULL;
    int H = 0, W = 0, n_over = 0, rc = 2;
    char **over = calloc((size_t)argc, sizeof *over);
    char defs[1024] = "";
    CfgNode *root = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--config") || !strcmp(a, "-o") || !strcmp(a, "-D")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "ldmc pipeline: error: %s needs a value\n", a);
                goto out;
            }
            v = argv[++i];
        } else if (!strncmp(a, "-D", 2)) {
            v = a + 2;
            a = "-D";
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: ldmc pipeline --config YAML -D H=PIXELS -D W=PIXELS [-D dotted.config.path=VALUE]... -o FILE.c\n"
                   "Writes the config-derived constants of a pipeline executable (runtime/pipeline.h).\n");
            rc = 0;
            goto out;
        } else {
            fprintf(stderr, "ldmc pipeline: error: unexpected argument '%s'\n", a);
            goto out;
        }
        if (!strcmp(a, "--config")) config_path = v;
        else if (!strcmp(a, "-o")) out_path = v;
        else {
            const char *eq = strchr(v, '=');
            if (!eq || eq == v || !eq[1]) {
                fprintf(stderr, "ldmc pipeline: error: -D expects NAME=VALUE, got '%s'\n", v);
                goto out;
            }
            size_t k = strlen(defs);
            snprintf(defs + k, sizeof defs - k, "%s%s", k ? " " : "", v);
            if (!strncmp(v, "H=", 2) || !strncmp(v, "W=", 2)) {
                if (parse_hw(v[0] == 'H' ? "H" : "W", eq + 1, v[0] == 'H' ? &H : &W) != 0) {
                    fprintf(stderr, "%s\n", ldm_last_error());
                    goto out;
                }
            } else if (memchr(v, '.', (size_t)(eq - v))) {
                over[n_over++] = (char *)v;
            } else {
                fprintf(stderr, "ldmc pipeline: error: -D %.*s: unknown parameter (H and W, or a dotted config path)\n",
                        (int)(eq - v), v);
                goto out;
            }
        }
    }
    if (!config_path || !out_path || !H || !W) {
        fprintf(stderr, "usage: ldmc pipeline --config YAML -D H=PIXELS -D W=PIXELS [-D dotted.config.path=VALUE]... "
                        "-o FILE.c\n");
        goto out;
    }
    rc = 1;
    root = cfg_load(config_path);
    if (!root) {
        fprintf(stderr, "%s\n", ldm_last_error());
        goto out;
    }
    for (int i = 0; i < n_over; i++) {
        char *eq = strchr(over[i], '=');
        char *name = strndup(over[i], (size_t)(eq - over[i]));
        int bad = cfg_set_path(root, name, eq + 1);
        free(name);
        if (bad) {
            fprintf(stderr, "%s\n", ldm_last_error());
            goto out;
        }
    }
    PipeInfo p;
    if (pipe_info(root, H, W, &p) != 0) {
        fprintf(stderr, "%s\n", ldm_last_error());
        goto out;
    }
    LdmOutFile o;
    if (ldm_out_open(&o, out_path) != 0) {
        fprintf(stderr, "ldmc pipeline: error: %s\n", ldm_last_error());
        goto out;
    }
    emit(o.fp, &p, config_path, defs);
    if (ldm_out_commit(&o) != 0) {
        fprintf(stderr, "ldmc pipeline: error: %s\n", ldm_last_error());
        goto out;
    }
    rc = 0;
out:
    cfg_free(root);
    free(over);
    return rc;
}
