/*
 * lora.c - kohya-ss LoRA / LoCon loading and merging (see lora.h).
 *
 * Name mapping as AUTOMATIC1111 webui's extensions-builtin/Lora
 * (networks.convert_diffusers_name_to_compvis and load_network): the prefix
 * is converted to a "network layer name" (a CompVis module path with '.'
 * replaced by '_'); if that names no module, `lora_unet_X` is tried as
 * `diffusion_model_X` (CompVis-style names, and SDXL's kohya names), and
 * `lora_te1_text_model_X` as `0_transformer_text_model_X` (SDXL's first
 * text encoder), then as SD v1's `transformer_text_model_X`. The webui's
 * layer names of the OpenCLIP towers (SD 2.x: `model_...`; SDXL's second
 * encoder: `1_model_...`) name the packed attention input projection's
 * thirds `..._attn_q_proj`, `_k_proj`, `_v_proj`: such a module changes
 * rows [0, W), [W, 2W) or [2W, 3W) of `attn.in_proj_weight`, as the webui's
 * MultiheadAttention support stacks them. Part of libldmcore: no OpenMP,
 * no BLAS.
 */
#include "lora.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util.h"

typedef struct LoraModule {
    char *prefix;      /* kohya key prefix (before the first '.') */
    char *key;         /* checkpoint key of the weight, NULL if unmatched */
    int part;          /* -1: the whole weight; 0, 1, 2: the q, k or v third of a packed in_proj_weight */
    int is_te;         /* text-encoder module (te multiplier) */
    const StTensor *down_t, *up_t, *alpha_t; /* the factors, in the LoRA file's mapping */
    int down_ndim, up_ndim;
    int64_t down_shape[ST_MAX_DIMS], up_shape[ST_MAX_DIMS];
    int64_t rank;
    double factor;     /* mult * alpha / rank */
} LoraModule;

struct LdmLora {
    char *path;
    StFile f;          /* the file, mapped while the LoRA is open: factors are read from it, never copied */
    LoraModule *mods;  /* matched modules only, in file order */
    int n_mods;
    int *by_key;       /* (n_mods) indices of mods sorted by key, then part: find_first's binary search */
    int n_unmatched;
    char *unmatched[LDM_LORA_KEEP_UNMATCHED];
};

/* ---- name conversion ------------------------------------------------------ */

static int eat(const char **s, const char *lit) {
    size_t n = strlen(lit);
    if (strncmp(*s, lit, n) != 0) return 0;
    *s += n;
    return 1;
}

/* (\d+) */
static int eat_num(const char **s, long *v) {
    if (!isdigit((unsigned char)**s)) return 0;
    char *e;
    errno = 0;
    *v = strtol(*s, &e, 10);
    *s = e;
    /* a block index no real UNet has (the fuzzer's 9223372036854775807
     * overflowed 1 + i * 3): the key is not a diffusers name we map */
    return errno == 0 && *v <= 100000;
}

/* (attentions|resnets)_(\d+)_(.+): *attn, *j, *rest */
static int eat_block(const char **s, int *attn, long *j) {
    if (eat(s, "attentions_")) *attn = 1;
    else if (eat(s, "resnets_")) *attn = 0;
    else return 0;
    return eat_num(s, j) && eat(s, "_") && **s;
}

/* ResBlock suffix map (the whole suffix), attention suffixes unchanged. */
static const char *res_suffix(const char *s, int attn) {
    static const char *const map[][2] = {
        {"conv1", "in_layers_2"},   {"conv2", "out_layers_3"},       {"norm1", "in_layers_0"},
        {"norm2", "out_layers_0"},  {"time_emb_proj", "emb_layers_1"}, {"conv_shortcut", "skip_connection"},
    };
    if (!attn)
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (!strcmp(s, map[i][0])) return map[i][1];
    return s;
}

/* The webui's name of an OpenCLIP tower's layer `rest` (after
 * `..._encoder_layers_<i>_` of a diffusers/kohya name) under `base`:
 * `<base>_transformer_resblocks_<i>_` with mlp_fc1 -> mlp_c_fc, mlp_fc2 ->
 * mlp_c_proj, self_attn -> attn (the first occurrence, as Python's replace
 * of a name that holds one). */
static char *openclip_name(const char *base, long i, const char *rest) {
    static const char *const map[][2] = {{"mlp_fc1", "mlp_c_fc"}, {"mlp_fc2", "mlp_c_proj"}, {"self_attn", "attn"}};
    for (size_t k = 0; k < sizeof map / sizeof map[0]; k++) {
        const char *at = strstr(rest, map[k][0]);
        if (at)
            return ldm_xasprintf("%s_transformer_resblocks_%ld_%.*s%s%s", base, i, (int)(at - rest), rest, map[k][1],
                                 at + strlen(map[k][0]));
    }
    return ldm_xasprintf("%s_transformer_resblocks_%ld_%s", base, i, rest);
}

/* convert_diffusers_name_to_compvis (SD v1): a malloc'd network layer name,
 * or a copy of p when no rule applies. Like Python's re.match, a rule only
 * anchors at the start. */
static char *convert_name(const char *p) {
    const char *s = p;
    long i, j;
    int attn;
    if (eat(&s, "lora_unet_")) {
        const char *u = s;
        if (eat(&u, "conv_in")) return ldm_xasprintf("diffusion_model_input_blocks_0_0%s", u);
        u = s;
        if (eat(&u, "conv_out")) return ldm_xasprintf("diffusion_model_out_2%s", u);
        u = s;
        if (eat(&u, "time_embedding_linear_") && eat_num(&u, &i))
            return ldm_xasprintf("diffusion_model_time_embed_%ld%s", i * 2 - 2, u);
        u = s;
        if (eat(&u, "down_blocks_") && eat_num(&u, &i) && eat(&u, "_") && eat_block(&u, &attn, &j))
            return ldm_xasprintf("diffusion_model_input_blocks_%ld_%d_%s", 1 + i * 3 + j, attn, res_suffix(u, attn));
        u = s;
        if (eat(&u, "mid_block_") && eat_block(&u, &attn, &j))
            return ldm_xasprintf("diffusion_model_middle_block_%ld_%s", attn ? 1 : j * 2, res_suffix(u, attn));
        u = s;
        if (eat(&u, "up_blocks_") && eat_num(&u, &i) && eat(&u, "_") && eat_block(&u, &attn, &j))
            return ldm_xasprintf("diffusion_model_output_blocks_%ld_%d_%s", i * 3 + j, attn, res_suffix(u, attn));
        u = s;
        if (eat(&u, "down_blocks_") && eat_num(&u, &i) && eat(&u, "_downsamplers_0_conv"))
            return ldm_xasprintf("diffusion_model_input_blocks_%ld_0_op", 3 + i * 3);
        u = s;
        if (eat(&u, "up_blocks_") && eat_num(&u, &i) && eat(&u, "_upsamplers_0_conv"))
            return ldm_xasprintf("diffusion_model_output_blocks_%ld_%d_conv", 2 + i * 3, i > 0 ? 2 : 1);
    } else if (eat(&s, "lora_te_text_model_encoder_layers_")) {
        const char *u = s;
        if (eat_num(&u, &i) && eat(&u, "_") && *u)
            return ldm_xasprintf("transformer_text_model_encoder_layers_%ld_%s", i, u);
    } else if (eat(&s, "lora_te2_text_model_encoder_layers_")) {
        const char *u = s;
        if (eat_num(&u, &i) && eat(&u, "_") && *u) return openclip_name("1_model", i, u);
    }
    return ldm_xstrdup(p);
}

/* Checkpoint weight key -> network layer name (malloc'd) as the webui
 * names the module, NULL if the key is not a weight of the UNet or of a
 * text encoder: model.diffusion_model.X -> diffusion_model_X;
 * cond_stage_model.transformer.X -> transformer_X (SD v1),
 * cond_stage_model.model.X -> model_X (SD 2.x); SDXL's
 * conditioner.embedders.0.transformer.X -> 0_transformer_X and
 * conditioner.embedders.1.model.X -> 1_model_X. A packed
 * `attn.in_proj_weight` gives the name of its third `part` (0, 1, 2:
 * `attn_q_proj`, `attn_k_proj`, `attn_v_proj`); *packed says whether the
 * key is one. */
static char *layer_name_of_key(const char *key, int part, int *packed) {
    static const struct {
        const char *key, *name;
        int openclip; /* holds packed attention projections */
    } roots[] = {
        {"model.diffusion_model.", "diffusion_model.", 0},
        {"cond_stage_model.transformer.", "transformer.", 0},
        {"cond_stage_model.model.", "model.", 1},
        {"conditioner.embedders.0.transformer.", "0_transformer.", 0},
        {"conditioner.embedders.1.model.", "1_model.", 1},
    };
    static const char *const qkv[3] = {"q_proj", "k_proj", "v_proj"};
    static const char in_proj[] = ".in_proj_weight", weight[] = ".weight";
    size_t n = strlen(key);
    *packed = 0;
    const char *suffix = NULL, *tail = NULL;
    if (n > sizeof in_proj - 1 && !strcmp(key + n - (sizeof in_proj - 1), in_proj)) suffix = in_proj, tail = qkv[part];
    else if (n > sizeof weight - 1 && !strcmp(key + n - (sizeof weight - 1), weight)) suffix = weight;
    else return NULL;
    for (size_t r = 0; r < sizeof roots / sizeof roots[0]; r++) {
        size_t rl = strlen(roots[r].key);
        if (strncmp(key, roots[r].key, rl) != 0) continue;
        if (tail && !roots[r].openclip) return NULL;
        *packed = tail != NULL;
        char *s = ldm_xasprintf("%s%.*s%s%s", roots[r].name, (int)(n - rl - strlen(suffix)), key + rl, tail ? "_" : "",
                                tail ? tail : "");
        for (char *c = s; *c; c++)
            if (*c == '.') *c = '_';
        return s;
    }
    return NULL;
}

typedef struct LayerMap {
    char **names;        /* network layer names */
    const char **keys;   /* checkpoint keys */
    int *parts;          /* -1, or the third of a packed in_proj_weight */
    int n;
} LayerMap;

static const char *layer_lookup(const LayerMap *m, const char *name, int *part) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->names[i], name)) {
            *part = m->parts[i];
            return m->keys[i];
        }
    return NULL;
}

/* ---- opening -------------------------------------------------------------- */

/* qsort has no context argument; ldm_lora_open runs in one thread at a
 * time per LoRA, but to stay reentrant the comparison reads the array
 * through this thread-local. */
static _Thread_local const struct LoraModule *g_sort_mods;

static int cmp_by_key(const void *a, const void *b) {
    const LoraModule *x = &g_sort_mods[*(const int *)a], *y = &g_sort_mods[*(const int *)b];
    int c = strcmp(x->key, y->key);
    return c ? c : (x->part > y->part) - (x->part < y->part);
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

static int is_float_dtype(StDtype dt) { return dt == ST_F32 || dt == ST_F16 || dt == ST_BF16 || dt == ST_F64; }

/* Elements [i0, i0 + n) of a floating-point tensor as float32. */
static void factor_f32(const StTensor *t, int64_t i0, int64_t n, float *out) {
    const uint8_t *p = t->data + (size_t)i0 * st_dtype_size(t->dtype);
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        double d;
        switch (t->dtype) {
        case ST_F16: memcpy(&h, p + 2 * i, 2), out[i] = st_f16_to_f32(h); break;
        case ST_BF16: memcpy(&h, p + 2 * i, 2), out[i] = st_bf16_to_f32(h); break;
        case ST_F64: memcpy(&d, p + 8 * i, 8), out[i] = (float)d; break;
        default: memcpy(out + i, p + 4 * i, 4); break;
        }
    }
}

/* A factor is floating point and finite (checked in blocks: no copy is kept). */
static int check_factor(const char *path, const StTensor *t) {
    if (!is_float_dtype(t->dtype))
        return ldm_fail("%s: %s: expected a floating-point tensor, got %s", path, t->name, st_dtype_name(t->dtype));
    float buf[4096];
    for (int64_t i0 = 0; i0 < t->numel; i0 += 4096) {
        int64_t n = t->numel - i0 < 4096 ? t->numel - i0 : 4096;
        factor_f32(t, i0, n, buf);
        for (int64_t i = 0; i < n; i++)
            if (!isfinite(buf[i]))
                return ldm_fail("%s: %s: non-finite value %g at element %lld", path, t->name, (double)buf[i],
                                (long long)(i0 + i));
    }
    return 0;
}

static void module_free(LoraModule *m) {
    free(m->prefix);
    free(m->key);
}

/* Check the factors of one module and load them. */
static int module_load(const char *path, LoraModule *m, float mult_te, float mult_unet) {
    char a[128], b[128];
    if (!m->down_t || !m->up_t)
        return ldm_fail("%s: LoRA module %s has %s but no %s.%s", path, m->prefix,
                        m->down_t ? "lora_down.weight" : m->up_t ? "lora_up.weight" : "alpha", m->prefix,
                        m->down_t ? "lora_up.weight" : "lora_down.weight");
    const StTensor *d = m->down_t, *u = m->up_t;
    shape_str(a, sizeof a, d->ndim, d->shape);
    shape_str(b, sizeof b, u->ndim, u->shape);
    if ((d->ndim != 2 && d->ndim != 4) || (u->ndim != 2 && u->ndim != 4) ||
        (u->ndim == 4 && (u->shape[2] != 1 || u->shape[3] != 1)))
        return ldm_fail("%s: LoRA module %s: expected lora_down [r, in] or [r, Cin, kh, kw] and lora_up [out, r] "
                        "or [out, r, 1, 1], got lora_down %s and lora_up %s", path, m->prefix, a, b);
    if (d->shape[0] <= 0 || u->shape[1] != d->shape[0])
        return ldm_fail("%s: LoRA module %s: rank mismatch: lora_down %s has rank %lld, lora_up %s has %lld", path,
                        m->prefix, a, (long long)d->shape[0], b, (long long)u->shape[1]);
    m->rank = d->shape[0];
    double alpha = (double)m->rank;
    if (m->alpha_t) {
        float av;
        if (m->alpha_t->numel != 1 || !is_float_dtype(m->alpha_t->dtype))
            return ldm_fail("%s: %s: expected one floating-point value, got %s with %lld elements", path,
                            m->alpha_t->name, st_dtype_name(m->alpha_t->dtype), (long long)m->alpha_t->numel);
        if (st_to_f32(m->alpha_t, &av) != 0) return -1;
        if (!isfinite(av)) return ldm_fail("%s: %s: non-finite alpha %g", path, m->alpha_t->name, (double)av);
        alpha = av;
    }
    m->factor = (double)(m->is_te ? mult_te : mult_unet) * (alpha / (double)m->rank);
    m->down_ndim = d->ndim;
    m->up_ndim = u->ndim;
    memcpy(m->down_shape, d->shape, sizeof m->down_shape);
    memcpy(m->up_shape, u->shape, sizeof m->up_shape);
    if (check_factor(path, d) != 0 || check_factor(path, u) != 0) return -1;
    return 0;
}

void ldm_lora_free(LdmLora *l) {
    if (!l) return;
    for (int i = 0; i < l->n_mods; i++) module_free(&l->mods[i]);
    free(l->mods);
    free(l->by_key);
    for (int i = 0; i < LDM_LORA_KEEP_UNMATCHED; i++) free(l->unmatched[i]);
    if (l->f.map) st_close(&l->f);
    free(l->path);
    free(l);
}

int ldm_lora_open(LdmLora **out, const char *path, const char *const *keys, int n_keys, float te_mult,
                  float unet_mult) {
    *out = NULL;
    if (!isfinite(te_mult) || !isfinite(unet_mult))
        return ldm_fail("%s: LoRA multiplier must be finite, got %g / %g", path, (double)te_mult, (double)unet_mult);
    StFile f;
    if (st_open(&f, path) != 0) return -1;
    LdmLora *l = ldm_xcalloc(1, sizeof *l);
    l->path = ldm_xstrdup(path);
    LoraModule *all = ldm_xcalloc((size_t)f.n_tensors + 1, sizeof *all);
    int n_all = 0, rc = -1;
    /* up to 3 names a key (the thirds of a packed projection) */
    LayerMap map = {ldm_xcalloc(3 * (size_t)n_keys + 1, sizeof(char *)),
                    ldm_xcalloc(3 * (size_t)n_keys + 1, sizeof(char *)), ldm_xcalloc(3 * (size_t)n_keys + 1, sizeof(int)),
                    0};

    /* group the tensors by prefix */
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        const char *dot = strchr(t->name, '.');
        if (!dot || dot == t->name) {
            ldm_fail("%s: tensor '%s' is not a LoRA tensor (expected <module>.lora_down.weight, "
                     "<module>.lora_up.weight or <module>.alpha)", path, t->name);
            goto out;
        }
        size_t plen = (size_t)(dot - t->name);
        LoraModule *m = NULL;
        for (int k = 0; k < n_all && !m; k++)
            if (strlen(all[k].prefix) == plen && !strncmp(all[k].prefix, t->name, plen)) m = &all[k];
        if (!m) {
            m = &all[n_all++];
            m->prefix = strndup(t->name, plen);
        }
        const StTensor **slot = !strcmp(dot, ".lora_down.weight") ? &m->down_t
                                : !strcmp(dot, ".lora_up.weight") ? &m->up_t
                                : !strcmp(dot, ".alpha")          ? &m->alpha_t
                                                                  : NULL;
        if (!slot) {
            ldm_fail("%s: tensor '%s': unsupported LoRA tensor kind '%s' (expected lora_down.weight, "
                     "lora_up.weight or alpha)", path, t->name, dot + 1);
            goto out;
        }
        *slot = t;
    }

    /* the checkpoint's modules */
    for (int i = 0; i < n_keys; i++) {
        int packed = 0;
        for (int part = 0; part < 3; part++) {
            char *name = layer_name_of_key(keys[i], part, &packed);
            if (!name) break;
            map.names[map.n] = name;
            map.parts[map.n] = packed ? part : -1;
            map.keys[map.n++] = keys[i];
            if (!packed) break;
        }
    }

    l->mods = ldm_xcalloc((size_t)n_all + 1, sizeof *l->mods);
    for (int k = 0; k < n_all; k++) {
        LoraModule *m = &all[k];
        char *name = convert_name(m->prefix);
        int part = -1;
        const char *key = layer_lookup(&map, name, &part), *sfx = NULL;
        long li;
        if (!key && !strncmp(m->prefix, "lora_unet_", 10)) {
            free(name);
            name = ldm_xasprintf("diffusion_model_%s", m->prefix + 10);
            key = layer_lookup(&map, name, &part);
        } else if (!key && !strncmp(m->prefix, "lora_te1_text_model", 19)) {
            /* SDXL's first encoder, else an SD v1 LoRA's CompVis-style name */
            free(name);
            name = ldm_xasprintf("0_transformer_text_model%s", m->prefix + 19);
            key = layer_lookup(&map, name, &part);
            if (!key) {
                free(name);
                name = ldm_xasprintf("transformer_text_model%s", m->prefix + 19);
                key = layer_lookup(&map, name, &part);
            }
        } else if (!key && (sfx = m->prefix) && eat(&sfx, "lora_te_text_model_encoder_layers_") && eat_num(&sfx, &li) &&
                   eat(&sfx, "_") && *sfx) {
            /* SD 2.x: the same kohya names on the OpenCLIP tower (the webui's is_sd2) */
            free(name);
            name = openclip_name("model", li, sfx);
            key = layer_lookup(&map, name, &part);
        }
        m->is_te = strncmp(name, "diffusion_model", 15) != 0;
        m->part = part;
        free(name);
        /* validated even when unmatched: a broken file is an error */
        if (module_load(path, m, te_mult, unet_mult) != 0) goto out;
        if (!key) {
            if (l->n_unmatched < LDM_LORA_KEEP_UNMATCHED) l->unmatched[l->n_unmatched] = ldm_xstrdup(m->prefix);
            l->n_unmatched++;
            module_free(m);
            memset(m, 0, sizeof *m);
            continue;
        }
        for (int q = 0; q < l->n_mods; q++)
            if (!strcmp(l->mods[q].key, key) && (l->mods[q].part < 0 || part < 0 || l->mods[q].part == part)) {
                ldm_fail("%s: LoRA modules %s and %s both modify %s", path, l->mods[q].prefix, m->prefix, key);
                goto out;
            }
        m->key = ldm_xstrdup(key);
        m->alpha_t = NULL;
        l->mods[l->n_mods++] = *m;
        memset(m, 0, sizeof *m);
    }
    /* binding a model looks up every weight in every LoRA: sorted keys */
    l->by_key = ldm_xcalloc((size_t)l->n_mods + 1, sizeof *l->by_key);
    for (int i = 0; i < l->n_mods; i++) l->by_key[i] = i;
    g_sort_mods = l->mods;
    qsort(l->by_key, (size_t)l->n_mods, sizeof *l->by_key, cmp_by_key);
    rc = 0;
out:
    for (int k = 0; k < n_all; k++) module_free(&all[k]);
    free(all);
    for (int i = 0; i < map.n; i++) free(map.names[i]);
    free(map.names);
    free(map.keys);
    free(map.parts);
    if (rc != 0) {
        st_close(&f);
        ldm_lora_free(l);
        return rc;
    }
    /* the modules' tensors point into f: it stays mapped with the LoRA; the
     * pages the checks read go back until a merge reads them again */
    l->f = f;
    ldm_lora_release_pages(l);
    *out = l;
    return rc;
}

int ldm_lora_n_modules(const LdmLora *l) { return l->n_mods; }
const char *ldm_lora_module_key(const LdmLora *l, int i) { return i >= 0 && i < l->n_mods ? l->mods[i].key : NULL; }
const char *ldm_lora_module_prefix(const LdmLora *l, int i) {
    return i >= 0 && i < l->n_mods ? l->mods[i].prefix : NULL;
}
int ldm_lora_n_unmatched(const LdmLora *l) { return l->n_unmatched; }
const char *ldm_lora_unmatched(const LdmLora *l, int i) {
    return i >= 0 && i < l->n_unmatched && i < LDM_LORA_KEEP_UNMATCHED ? l->unmatched[i] : NULL;
}

/* The first of the modules of key in by_key order (a whole weight, or the
 * thirds of a packed one in order), -1 if none. */
static int find_first(const LdmLora *l, const char *key) {
    int lo = 0, hi = l->n_mods;
    while (lo < hi) { /* the first with mods[].key >= key */
        int mid = lo + (hi - lo) / 2;
        if (strcmp(l->mods[l->by_key[mid]].key, key) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo < l->n_mods && !strcmp(l->mods[l->by_key[lo]].key, key) ? lo : -1;
}

int ldm_lora_touches(const LdmLora *l, const char *key) { return find_first(l, key) >= 0; }

/* The first row of the weight (shape[0] rows) that module m changes. */
static int64_t module_row0(const LoraModule *m, const int64_t *shape) {
    return m->part < 0 ? 0 : m->part * (shape[0] / 3);
}

/* Do the factors of m fit a weight of shape [ndim] shape? */
static int check_fit(const LdmLora *l, const LoraModule *m, int ndim, const int64_t *shape) {
    int64_t rows = ndim >= 1 ? shape[0] : 0;
    if (m->part >= 0) rows = ndim == 2 && shape[0] % 3 == 0 ? shape[0] / 3 : -1;
    int ok = (ndim == 2 || ndim == 4) && rows == m->up_shape[0] && !(m->up_ndim == 4 && ndim != 4);
    int64_t k = 1;
    for (int d = 1; d < ndim; d++) k *= shape[d];
    int64_t dk = 1;
    for (int d = 1; d < m->down_ndim; d++) dk *= m->down_shape[d];
    ok = ok && dk == k;
    if (ok && m->down_ndim == 4) ok = ndim == 4 && !memcmp(&m->down_shape[1], &shape[1], 3 * sizeof(int64_t));
    if (ok && m->down_ndim == 2 && ndim == 4) ok = shape[2] == 1 && shape[3] == 1;
    if (ok) return 0;
    char a[128], b[128], w[128];
    shape_str(a, sizeof a, m->down_ndim, m->down_shape);
    shape_str(b, sizeof b, m->up_ndim, m->up_shape);
    shape_str(w, sizeof w, ndim, shape);
    return ldm_fail("%s: LoRA module %s (lora_down %s, lora_up %s) does not fit %s%s %s", l->path, m->prefix, a, b,
                    m->key, m->part < 0 ? "" : m->part == 0 ? " (its q third)" : m->part == 1 ? " (its k third)" : " (its v third)",
                    w);
}

int ldm_lora_check(const LdmLora *l, const char *key, int ndim, const int64_t *shape) {
    int i = find_first(l, key);
    for (; i >= 0 && i < l->n_mods && !strcmp(l->mods[l->by_key[i]].key, key); i++)
        if (check_fit(l, &l->mods[l->by_key[i]], ndim, shape) != 0) return -1;
    return 0;
}

/* Rows [r0, r1) of the delta of m for a weight of k columns per row:
 * rows[(o - r0) * k + j] (+)= factor * sum_q up[o, q] * down[q, j].
 * Each value is a float64 sum over q = 0, 1, ... in that order, then
 * scaled and (added and) rounded to float32 once. Every entry point
 * (delta, apply, apply_rows) goes through here, so they agree bit for bit
 * whatever rows a caller splits a weight into.
 * The factors are read from the file's mapping (F32, F16, BF16 or F64),
 * converted a block at a time: the up rows of the range, then down in
 * column blocks of KB whose float64 copy (r x KB) stays in the L1/L2
 * cache while every row of the range accumulates over it (one axpy per
 * rank component, contiguous, so it vectorizes). */
static void module_rows(const LoraModule *m, int64_t k, int64_t r0, int64_t r1, float *rows, int add) {
    const int64_t r = m->rank, n = r1 - r0;
    int64_t kb = 8192 / (r > 0 ? r : 1); /* a tile of at most 64 KiB of doubles */
    kb = kb < 64 ? 64 : kb > 1024 ? 1024 : kb;
    float *upf = ldm_xmalloc((size_t)(n * r) * sizeof *upf + 8), *col = ldm_xmalloc((size_t)kb * sizeof *col + 8);
    double *tile = ldm_xmalloc((size_t)(r * kb) * sizeof *tile + 8), *acc = ldm_xmalloc((size_t)kb * sizeof *acc + 8);
    factor_f32(m->up_t, r0 * r, n * r, upf);
    const double f = m->factor;
    for (int64_t j0 = 0; j0 < k; j0 += kb) {
        const int64_t nb = k - j0 < kb ? k - j0 : kb;
        for (int64_t q = 0; q < r; q++) {
            factor_f32(m->down_t, q * k + j0, nb, col);
            for (int64_t j = 0; j < nb; j++) tile[q * kb + j] = col[j];
        }
        for (int64_t o = 0; o < n; o++) {
            const float *up = upf + o * r;
            double *restrict a = acc;
            for (int64_t j = 0; j < nb; j++) a[j] = 0;
            for (int64_t q = 0; q < r; q++) {
                const double u = up[q], *restrict d = tile + q * kb;
                /* vectorized (GCC's -O2 cost model would not, for the alias check) */
#if defined(__GNUC__) && !defined(__clang__)
#pragma omp simd
#endif
                for (int64_t j = 0; j < nb; j++) a[j] += u * d[j];
            }
            float *w = rows + o * k + j0;
            if (add)
                for (int64_t j = 0; j < nb; j++) w[j] = (float)((double)w[j] + acc[j] * f);
            else
                for (int64_t j = 0; j < nb; j++) w[j] = (float)(acc[j] * f);
        }
    }
    free(upf);
    free(col);
    free(tile);
    free(acc);
}

void ldm_lora_release_pages(const LdmLora *l) {
    if (l && l->f.map && l->f.size) {
        uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t lo = ((uintptr_t)l->f.map + page - 1) & ~(page - 1), hi = ((uintptr_t)l->f.map + l->f.size) & ~(page - 1);
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
    }
}

/* rows [r0, r1) of buf (+)= the delta of key's modules (one for a whole
 * weight; up to three, on their own rows, for a packed projection; rows
 * no module changes: untouched when adding, zero in a delta). */
static int delta_or_apply(const LdmLora *l, const char *key, int ndim, const int64_t *shape, int64_t r0, int64_t r1,
                          float *buf, int add) {
    int first = find_first(l, key);
    if (first < 0) return 0;
    if (ldm_lora_check(l, key, ndim, shape) != 0) return -1;
    if (r0 < 0 || r1 > shape[0] || r0 > r1)
        return ldm_fail("%s: rows [%lld, %lld) of %s are out of range (it has %lld)", l->path, (long long)r0,
                        (long long)r1, key, (long long)shape[0]);
    int64_t k = 1;
    for (int d = 1; d < ndim; d++) k *= shape[d];
    if (!add) memset(buf, 0, (size_t)((r1 - r0) * k) * sizeof *buf);
    for (int i = first; i < l->n_mods && !strcmp(l->mods[l->by_key[i]].key, key); i++) {
        const LoraModule *m = &l->mods[l->by_key[i]];
        int64_t m0 = module_row0(m, shape), m1 = m0 + m->up_shape[0];
        int64_t a0 = r0 > m0 ? r0 : m0, a1 = r1 < m1 ? r1 : m1;
        /* (0.0 + x is x: a delta added to zeros has the values module_rows writes without adding) */
        if (a0 < a1) module_rows(m, k, a0 - m0, a1 - m0, buf + (a0 - r0) * k, 1);
    }
    return 1;
}

int ldm_lora_delta(const LdmLora *l, const char *key, int ndim, const int64_t *shape, float *delta) {
    return delta_or_apply(l, key, ndim, shape, 0, ndim ? shape[0] : 0, delta, 0);
}

int ldm_lora_apply(const LdmLora *l, const char *key, int ndim, const int64_t *shape, float *w) {
    return delta_or_apply(l, key, ndim, shape, 0, ndim ? shape[0] : 0, w, 1);
}

int ldm_lora_apply_rows(const LdmLora *l, const char *key, int ndim, const int64_t *shape, int64_t r0, int64_t r1,
                        float *rows) {
    return delta_or_apply(l, key, ndim, shape, r0, r1, rows, 1);
}

int ldm_lora_spec_parse(const char *spec, char **path, double *mult) {
    const char *colon = strrchr(spec, ':');
    size_t n = strlen(spec);
    *mult = 1.0;
    *path = NULL;
    if (colon && colon[1]) {
        char *end;
        double m = strtod(colon + 1, &end);
        if (!*end) {
            if (!isfinite(m)) return ldm_fail("--lora %s: the multiplier must be finite", spec);
            *mult = m;
            n = (size_t)(colon - spec);
        }
    }
    if (n == 0) return ldm_fail("--lora '%s': no file name", spec);
    *path = ldm_xmalloc(n + 1);
    memcpy(*path, spec, n);
    (*path)[n] = 0;
    return 0;
}

/* ---- merging a checkpoint ------------------------------------------------ */

/* float32 values -> a malloc'd buffer of dtype `to` (frees f unless to is F32). */
static void *pack(float *f, int64_t n, StDtype to) {
    if (to == ST_F32) return f;
    uint8_t *out = ldm_xmalloc((size_t)n * st_dtype_size(to) + 1);
    for (int64_t i = 0; i < n; i++) {
        if (to == ST_F64) {
            double d = f[i];
            memcpy(out + 8 * i, &d, 8);
        } else {
            uint16_t h = to == ST_F16 ? st_f32_to_f16(f[i]) : st_f32_to_bf16(f[i]);
            out[2 * i] = (uint8_t)h;
            out[2 * i + 1] = (uint8_t)(h >> 8);
        }
    }
    free(f);
    return out;
}

int ldm_lora_merge_checkpoint(const StFile *base, LdmLora *const *loras, int n_loras, int out_dtype,
                              const char *out_path, int *n_merged) {
    if (out_dtype != -1 && out_dtype != ST_F32 && out_dtype != ST_F16 && out_dtype != ST_BF16)
        return ldm_fail("%s: expected a target dtype F32, F16 or BF16, got %s", out_path,
                        st_dtype_name((StDtype)out_dtype));
    StWriter *w = st_writer_new();
    int merged = 0, rc = -1;
    for (int i = 0; i < base->n_meta; i++) st_writer_meta(w, base->meta_keys[i], base->meta_values[i]);
    for (int i = 0; i < base->n_tensors; i++) {
        const StTensor *t = &base->tensors[i];
        int touched = 0;
        for (int k = 0; k < n_loras; k++) touched |= ldm_lora_touches(loras[k], t->name);
        StDtype to = t->dtype;
        if (out_dtype >= 0 && is_float_dtype(t->dtype) && strchr(t->name, '.')) to = (StDtype)out_dtype;
        if (!touched && to == t->dtype) { /* borrowed from the mapping, which outlives the save */
            st_writer_add_ref(w, t->name, t->dtype, t->ndim, t->shape, t->data, 0);
            continue;
        }
        if (!is_float_dtype(t->dtype)) {
            ldm_fail("%s: %s: a LoRA modifies it but it is %s, not floating point", base->path, t->name,
                     st_dtype_name(t->dtype));
            goto out;
        }
        float *f = ldm_xmalloc((size_t)t->numel * sizeof(float) + 1);
        st_to_f32(t, f); /* cannot fail: a float dtype */
        for (int k = 0; k < n_loras; k++)
            if (ldm_lora_apply(loras[k], t->name, t->ndim, t->shape, f) < 0) {
                free(f);
                goto out;
            }
        merged += touched;
        st_writer_add_ref(w, t->name, to, t->ndim, t->shape, pack(f, t->numel, to), 1);
    }
    rc = st_writer_save(w, out_path);
out:
    st_writer_free(w);
    if (rc == 0 && n_merged) *n_merged = merged;
    return rc;
}
