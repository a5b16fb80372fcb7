/*
 * pipeline.c - `ldmc pipeline`: the config-derived constants of a pipeline
 * executable, as C.
 *
 *   ldmc pipeline --config YAML -D H=512 -D W=512 [-D dotted.config.path=V]... -o FILE.c
 *   ldmc pipeline --config YAML --size 512x512 --size 512x768 [--nets clip_text,unet,...] ... -o FILE.c
 *
 * The first form writes one `const LdmPipelineConfig ldm_pipeline_config`
 * (runtime/pipeline.h); the second one `ldm_pipeline_config_<H>x<W>` per size
 * and the table of the sizes, `ldm_pipeline_sizes` / `ldm_pipeline_n_sizes`,
 * whose entry for a size points at its constants and at the networks
 * compiled for it, `<net>_<H>x<W>_model` for every --nets name (what
 * `ldmc GRAPH --symbol <net>_<H>x<W>` exports). Each holds
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

/* The file's first lines. */
static void emit_head(FILE *fp, const char *banner) {
    fputs("/* ", fp);
    for (const char *s = banner; *s; s++) fputc(s[0] == '*' && s[1] == '/' ? '?' : s[0], fp);
    fputs(" */\n", fp);
    fprintf(fp,
            "/*\n"
            " * Generated by `ldmc pipeline`: do not edit.\n"
            " * The config-derived constants of one pipeline executable (runtime/pipeline.h).\n"
            " */\n"
            "#include \"pipeline.h\"\n");
}

/* `const LdmPipelineConfig <symbol> = {...};` */
static void emit_config(FILE *fp, const PipeInfo *p, const char *banner, const char *config_path,
                        const char *overrides, const char *symbol) {
    fprintf(fp, "\nconst LdmPipelineConfig %s = {\n", symbol);
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
    fprintf(fp, ",\n    .context_length = %d,\n    .context_dim = %d,\n    .vocab_size = %d,\n    .n_classes = %d,\n",
            p->context_length, p->context_dim, p->vocab_size, p->n_classes);
    fputs("    .overrides = ", fp);
    put_cstr(fp, overrides);
    fputs(",\n};\n", fp);
}

/* "ldmc V | pipeline | config PATH | H=.. W=.. overrides" */
static void make_banner(char *buf, size_t size, const char *config_path, int H, int W, const char *overrides) {
    snprintf(buf, size, "ldmc %s | pipeline | config %s | H=%d W=%d%s%s", LDMC_VERSION, config_path, H, W,
             overrides[0] ? " " : "", overrides);
}

/* The size table: n sizes, each with its networks (nets: n_nets names). */
static void emit_table(FILE *fp, const PipeInfo *ps, int n, char **nets, int n_nets) {
    fprintf(fp, "\n/* ---- the sizes: ldm_pipeline_sizes[0] is the default ---- */\n");
    for (int k = 0; k < n && n_nets; k++) {
        fprintf(fp, "\nextern const LdmModel");
        for (int j = 0; j < n_nets; j++) fprintf(fp, "%s %s_%dx%d_model", j ? "," : "", nets[j], ps[k].H, ps[k].W);
        fprintf(fp, ";\nstatic const LdmModel *const models_%dx%d[%d] = {", ps[k].H, ps[k].W, n_nets);
        for (int j = 0; j < n_nets; j++) fprintf(fp, "%s&%s_%dx%d_model", j ? ", " : "", nets[j], ps[k].H, ps[k].W);
        fprintf(fp, "};\n");
    }
    fprintf(fp, "\nconst LdmPipelineSize ldm_pipeline_sizes[%d] = {\n", n);
    for (int k = 0; k < n; k++) {
        fprintf(fp, "    {&ldm_pipeline_config_%dx%d, %d, ", ps[k].H, ps[k].W, n_nets);
        if (n_nets) fprintf(fp, "models_%dx%d},\n", ps[k].H, ps[k].W);
        else fprintf(fp, "NULL},\n");
    }
    fprintf(fp, "};\nconst int ldm_pipeline_n_sizes = %d;\n", n);
}

static int parse_hw(const char *name, const char *v, int *out) {
    char *end;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < 1 || x > 65536) return ldm_fail("ldmc pipeline: -D %s: expected a size in pixels, got '%s'", name, v);
    *out = (int)x;
    return 0;
}

/* "HxW" of --size: both sizes in pixels. */
static int parse_size(const char *v, int *H, int *W) {
    char *end;
    long h = strtol(v, &end, 10), w = 0;
    int ok = v[0] >= '0' && v[0] <= '9' && *end == 'x' && end[1] >= '0' && end[1] <= '9';
    if (ok) {
        const char *t = end + 1;
        w = strtol(t, &end, 10);
        ok = !*end && h >= 1 && h <= 65536 && w >= 1 && w <= 65536;
    }
    if (!ok)
        return ldm_fail("ldmc pipeline: error: --size: expected HEIGHTxWIDTH in pixels (e.g. 512x768), got '%s'", v);
    *H = (int)h;
    *W = (int)w;
    return 0;
}

/* [A-Za-z_][A-Za-z0-9_]*: a --nets name. */
static int is_ident(const char *s) {
    if (!*s || (*s >= '0' && *s <= '9')) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_')) return 0;
    return 1;
}

#define PIPE_USAGE                                                                                                   \
    "usage: ldmc pipeline --config YAML -D H=PIXELS -D W=PIXELS [-D dotted.config.path=VALUE]... -o FILE.c\n"       \
    "       ldmc pipeline --config YAML --size HxW [--size HxW]... [--nets NET,...] [-D dotted.config.path=VALUE]...\n" \
    "                     -o FILE.c\n"

int ldmc_pipeline_main(int argc, char **argv);

int ldmc_pipeline_main(int argc, char **argv) {
    const char *config_path = NULL, *out_path = NULL;
    int H = 0, W = 0, n_over = 0, n_sizes = 0, n_nets = 0, rc = 2;
    char **over = calloc((size_t)argc, sizeof *over);
    int *sizes = calloc((size_t)argc * 2 + 2, sizeof *sizes);
    char *nets_buf = NULL, **nets = NULL;
    char overrides[1024] = "";
    CfgNode *root = NULL;
    PipeInfo *ps = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--config") || !strcmp(a, "-o") || !strcmp(a, "-D") || !strcmp(a, "--size") ||
            !strcmp(a, "--nets")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "ldmc pipeline: error: %s needs a value\n", a);
                goto out;
            }
            v = argv[++i];
        } else if (!strncmp(a, "-D", 2)) {
            v = a + 2;
            a = "-D";
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf(PIPE_USAGE
                   "Writes the config-derived constants of a pipeline executable (runtime/pipeline.h): with -D H/W\n"
                   "`ldm_pipeline_config`; with --size, `ldm_pipeline_config_<H>x<W>` per size and the table\n"
                   "`ldm_pipeline_sizes` (the first size is the default) whose entries list the networks\n"
                   "`<net>_<H>x<W>_model` of --nets (ldmc GRAPH --symbol <net>_<H>x<W>).\n");
            rc = 0;
            goto out;
        } else {
            fprintf(stderr, "ldmc pipeline: error: unexpected argument '%s'\n", a);
            goto out;
        }
        if (!strcmp(a, "--config")) config_path = v;
        else if (!strcmp(a, "-o")) out_path = v;
        else if (!strcmp(a, "--size")) {
            int h = 0, w = 0;
            if (parse_size(v, &h, &w) != 0) {
                fprintf(stderr, "%s\n", ldm_last_error());
                goto out;
            }
            for (int k = 0; k < n_sizes; k++)
                if (sizes[2 * k] == h && sizes[2 * k + 1] == w) {
                    fprintf(stderr, "ldmc pipeline: error: --size %dx%d is given twice\n", h, w);
                    goto out;
                }
            sizes[2 * n_sizes] = h;
            sizes[2 * n_sizes + 1] = w;
            n_sizes++;
        } else if (!strcmp(a, "--nets")) {
            free(nets_buf);
            free(nets);
            nets_buf = strdup(v);
            nets = calloc(strlen(v) + 2, sizeof *nets);
            n_nets = 0;
            for (char *tok = strtok(nets_buf, ","); tok; tok = strtok(NULL, ",")) {
                if (!is_ident(tok)) {
                    fprintf(stderr, "ldmc pipeline: error: --nets: '%s' is not a network name (a C identifier)\n", tok);
                    goto out;
                }
                nets[n_nets++] = tok;
            }
            if (!n_nets) {
                fprintf(stderr, "ldmc pipeline: error: --nets: expected NET,NET,... (e.g. unet,vae_decoder)\n");
                goto out;
            }
        } else {
            const char *eq = strchr(v, '=');
            if (!eq || eq == v || !eq[1]) {
                fprintf(stderr, "ldmc pipeline: error: -D expects NAME=VALUE, got '%s'\n", v);
                goto out;
            }
            if (!strncmp(v, "H=", 2) || !strncmp(v, "W=", 2)) {
                if (parse_hw(v[0] == 'H' ? "H" : "W", eq + 1, v[0] == 'H' ? &H : &W) != 0) {
                    fprintf(stderr, "%s\n", ldm_last_error());
                    goto out;
                }
            } else if (memchr(v, '.', (size_t)(eq - v))) {
                over[n_over++] = (char *)v;
                size_t k = strlen(overrides);
                snprintf(overrides + k, sizeof overrides - k, "%s%s", k ? " " : "", v);
            } else {
                fprintf(stderr, "ldmc pipeline: error: -D %.*s: unknown parameter (H and W, or a dotted config path)\n",
                        (int)(eq - v), v);
                goto out;
            }
        }
    }
    if (n_sizes && (H || W)) {
        fprintf(stderr, "ldmc pipeline: error: give the size as -D H=.. -D W=.. or as --size HxW, not both\n");
        goto out;
    }
    if (n_nets && !n_sizes) {
        fprintf(stderr, "ldmc pipeline: error: --nets needs --size (the networks are named after the size)\n");
        goto out;
    }
    if (!config_path || !out_path || (!n_sizes && (!H || !W))) {
        fprintf(stderr, PIPE_USAGE);
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
    int single = n_sizes == 0;
    if (single) {
        sizes[0] = H;
        sizes[1] = W;
        n_sizes = 1;
    }
    ps = calloc((size_t)n_sizes, sizeof *ps);
    for (int k = 0; k < n_sizes; k++)
        if (pipe_info(root, sizes[2 * k], sizes[2 * k + 1], &ps[k]) != 0) {
            fprintf(stderr, "%s%s\n", ldm_last_error(), single ? "" : " (--size)");
            goto out;
        }
    LdmOutFile o;
    if (ldm_out_open(&o, out_path) != 0) {
        fprintf(stderr, "ldmc pipeline: error: %s\n", ldm_last_error());
        goto out;
    }
    char banner[2048];
    make_banner(banner, sizeof banner, config_path, ps[0].H, ps[0].W, overrides);
    emit_head(o.fp, banner);
    for (int k = 0; k < n_sizes; k++) {
        char sym[64];
        if (single) snprintf(sym, sizeof sym, "ldm_pipeline_config");
        else snprintf(sym, sizeof sym, "ldm_pipeline_config_%dx%d", ps[k].H, ps[k].W);
        make_banner(banner, sizeof banner, config_path, ps[k].H, ps[k].W, overrides);
        emit_config(o.fp, &ps[k], banner, config_path, overrides, sym);
    }
    if (!single) emit_table(o.fp, ps, n_sizes, nets, n_nets);
    if (ldm_out_commit(&o) != 0) {
        fprintf(stderr, "ldmc pipeline: error: %s\n", ldm_last_error());
        goto out;
    }
    rc = 0;
out:
    cfg_free(root);
    free(over);
    free(sizes);
    free(nets_buf);
    free(nets);
    free(ps);
    return rc;
}
