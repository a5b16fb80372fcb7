/*
 * pipeline.c - shared parts of the pipeline executables (see pipeline.h).
 */
#include "pipeline.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ldm_limits.h"
#include "util.h"

/* ----------------------------------------------------------------------------
 * Generated constants
 * ------------------------------------------------------------------------- */

int ldm_pipeline_v_pred(const LdmPipelineConfig *c) {
    return c->parameterization && !strcmp(c->parameterization, "v");
}

const ClipTokStyle *ldm_pipeline_tok_style(const LdmPipelineConfig *c) {
    return c->cond_stage && !strcmp(c->cond_stage, "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder")
               ? &clip_style_openclip
               : &clip_style_sd1;
}

int ldm_pipeline_scale_factor(const LdmPipelineConfig *c, const StFile *f, double *out) {
    *out = c->scale_factor;
    if (!c->scale_by_std) return 0;
    /* LatentDiffusion with scale_by_std: register_buffer('scale_factor', ...) */
    const StTensor *t = st_find(f, "scale_factor");
    float v;
    if (!t || t->numel != 1 || st_to_f32(t, &v) != 0 || !(v > 0) || !isfinite(v))
        return ldm_fail("%s: the config has scale_by_std, but the checkpoint has no positive scalar tensor "
                        "'scale_factor'", f->path);
    *out = v;
    return 0;
}

const char *ldm_pipeline_size_list(const LdmPipelineSize *sizes, int n, char *buf, size_t size) {
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; i < n && k < size; i++) {
        int r = snprintf(buf + k, size - k, "%s%dx%d%s", i ? ", " : "", sizes[i].config->W, sizes[i].config->H,
                         i == 0 && n > 1 ? " (default)" : "");
        if (r < 0) break;
        k += (size_t)r;
    }
    return buf;
}

int ldm_pipeline_find_size(const LdmPipelineSize *sizes, int n, int H, int W, const char *target,
                           const char *defs_var) {
    for (int i = 0; i < n; i++)
        if (sizes[i].config->H == H && sizes[i].config->W == W) return i;
    char list[1024], cmd[2048];
    ldm_pipeline_size_list(sizes, n, list, sizeof list);
    size_t k = (size_t)snprintf(cmd, sizeof cmd, "make %s CONFIG=%s SIZES=\"", target, sizes[0].config->config_path);
    for (int i = 0; i < n && k < sizeof cmd; i++)
        k += (size_t)snprintf(cmd + k, sizeof cmd - k, "%dx%d ", sizes[i].config->H, sizes[i].config->W);
    if (k < sizeof cmd) k += (size_t)snprintf(cmd + k, sizeof cmd - k, "%dx%d\"", H, W);
    const char *ov = sizes[0].config->overrides;
    if (ov && ov[0] && k < sizeof cmd) {
        k += (size_t)snprintf(cmd + k, sizeof cmd - k, " %s='", defs_var);
        char *copy = ldm_xstrdup(ov);
        for (char *tok = strtok(copy, " "); tok && k < sizeof cmd; tok = strtok(NULL, " "))
            k += (size_t)snprintf(cmd + k, sizeof cmd - k, "%s-D %s", cmd[k - 1] == '\'' ? "" : " ", tok);
        free(copy);
        if (k < sizeof cmd) snprintf(cmd + k, sizeof cmd - k, "'");
    }
    return ldm_fail("%dx%d (width x height) was not compiled into this executable; it has %s %s. To add it, build "
                    "with: %s (make's SIZES are HEIGHTxWIDTH, as the executables' names)", W, H,
                    n == 1 ? "only" : "these sizes:", list, cmd);
}

/* ----------------------------------------------------------------------------
 * Models bound to one checkpoint
 * ------------------------------------------------------------------------- */

static int nets_load(LdmNets *s, const char *ckpt_path, const char *vae_path, const LdmModel *const *models,
                     const LdmKeyMapFn *maps, int n, const char *what);

int ldm_nets_load(LdmNets *s, const char *ckpt_path, const LdmModel *const *models, int n, const char *what) {
    return nets_load(s, ckpt_path, NULL, models, NULL, n, what);
}

int ldm_nets_load_vae(LdmNets *s, const char *ckpt_path, const char *vae_path, const LdmModel *const *models, int n,
                      const char *what) {
    return nets_load(s, ckpt_path, vae_path, models, NULL, n, what);
}

/* "H=64 W=128 B=2" of a generated model's banner (its last field), or its name. */
static const char *model_build(const LdmModel *m) {
    const char *b = m->banner ? strrchr(m->banner, '|') : NULL;
    return b ? b + 2 : m->name;
}

int ldm_model_weights_compatible(const LdmModel *a, const LdmModel *b, char *why, size_t why_size) {
    char tmp[8];
    if (!why) why = tmp, why_size = sizeof tmp;
    why[0] = 0;
    if (a->n_weights != b->n_weights) {
        snprintf(why, why_size, "%d weights against %d", a->n_weights, b->n_weights);
        return 0;
    }
    for (int i = 0; i < a->n_weights; i++) {
        const LdmTensorInfo *x = &a->weights[i], *y = &b->weights[i];
        char sx[160], sy[160];
        if (strcmp(x->name, y->name) != 0) snprintf(why, why_size, "weight %d is '%s' against '%s'", i, x->name, y->name);
        else if (x->dtype != y->dtype) snprintf(why, why_size, "weight '%s' has dtype %d against %d", x->name, x->dtype, y->dtype);
        else if (x->flags != y->flags)
            snprintf(why, why_size, "weight '%s' is bound with flags %d against %d (another kernel reads it)", x->name,
                     x->flags, y->flags);
        else if (x->ndim != y->ndim || memcmp(x->shape, y->shape, (size_t)x->ndim * sizeof x->shape[0]) != 0)
            snprintf(why, why_size, "weight '%s' has shape %s against %s", x->name, ldm_shape_str(x->ndim, x->shape, sx, sizeof sx),
                     ldm_shape_str(y->ndim, y->shape, sy, sizeof sy));
        else continue;
        return 0;
    }
    return 1;
}

int ldm_nets_load_mapped(LdmNets *s, const char *ckpt_path, const LdmModel *const *models, const LdmKeyMapFn *maps,
                         int n, const char *what) {
    return nets_load(s, ckpt_path, NULL, models, maps, n, what);
}

/* The model families a checkpoint can belong to, told apart by their text
 * encoder's tensor names (the file's keys, and the weights the executable's
 * networks read), and what to build for each. */
typedef struct Family {
    const char *name;   /* for messages */
    const char *probe;  /* a tensor only checkpoints of the family hold */
    const char *what;   /* what that tensor says */
    const char *build;  /* the make command of an executable for it, NULL: none */
} Family;

static const Family k_families[] = {
    {"Stable Diffusion v1", "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
     "the CLIP ViT-L/14 text encoder", "make txt2img CONFIG=models/sd1/v1-inference.yaml H=512 W=512"},
    {"Stable Diffusion 2.x", "cond_stage_model.model.token_embedding.weight", "the OpenCLIP ViT-H/14 text encoder",
     "make txt2img CONFIG=models/sd2/v2-inference-v.yaml H=768 W=768 for the 768-v models (SD 2.0, 2.1), "
     "CONFIG=models/sd2/v2-inference.yaml H=512 W=512 for the 512-base ones"},
    {"Stable Diffusion XL", "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
     "SDXL's two text encoders", NULL},
};
#define N_FAMILIES ((int)(sizeof k_families / sizeof k_families[0]))

int ldm_ckpt_family(const StFile *f) {
    for (int k = 0; k < N_FAMILIES; k++)
        if (st_find(f, k_families[k].probe)) return k;
    return -1;
}

/* The family whose text encoder the models read, or -1. */
static int models_family(const LdmModel *const *models, int n) {
    for (int k = 0; k < N_FAMILIES; k++)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < models[i]->n_weights; j++)
                if (!strcmp(models[i]->weights[j].name, k_families[k].probe)) return k;
    return -1;
}

int ldm_check_family(const StFile *f, const LdmModel *const *models, int n, const char *what) {
    int file = ldm_ckpt_family(f), exe = models_family(models, n);
    if (file < 0 || exe < 0 || file == exe) return 0;
    const Family *ff = &k_families[file];
    if (ff->build)
        return ldm_fail("%s: this checkpoint looks like %s (it holds %s, %s), but this executable was built for %s "
                        "(%s); build one for it: %s",
                        f->path, ff->name, ff->probe, ff->what, k_families[exe].name, what ? what : "another model",
                        ff->build);
    return ldm_fail("%s: this checkpoint looks like %s (it holds %s, %s), which ldmc has no config for; this executable "
                    "was built for %s (%s)",
                    f->path, ff->name, ff->probe, ff->what, k_families[exe].name, what ? what : "another model");
}

static int nets_load(LdmNets *s, const char *ckpt_path, const char *vae_path, const LdmModel *const *models,
                     const LdmKeyMapFn *maps, int n, const char *what) {
    memset(s, 0, sizeof *s);
    ldm_kernels_init();
    if (st_open(&s->ckpt, ckpt_path) != 0) return -1;
    if (vae_path && st_replace_vae(&s->ckpt, vae_path) != 0) {
        st_close(&s->ckpt);
        return -1;
    }
    if (ldm_check_family(&s->ckpt, models, n, what) != 0) {
        st_close(&s->ckpt);
        return -1;
    }
    s->n = n;
    s->models = ldm_xcalloc((size_t)n + 1, sizeof *s->models);
    s->w = ldm_xcalloc((size_t)n + 1, sizeof *s->w);
    s->owner = ldm_xcalloc((size_t)n + 1, sizeof *s->owner);
    s->notes = ldm_xstrdup("");
    for (int i = 0; i < n; i++) {
        s->models[i] = models[i];
        if (models[i]->arena_bytes > s->arena_bytes) s->arena_bytes = models[i]->arena_bytes;
        /* Weights bound once for every model with the same table (the same
         * network at several sizes): the first such model owns them. */
        LdmKeyMapFn map = maps ? maps[i] : NULL;
        int owner = -1, same_name = -1;
        char why[512] = "";
        for (int j = 0; j < i && owner < 0; j++) {
            if (s->owner[j] != j || (maps ? maps[j] : NULL) != map) continue;
            if (ldm_model_weights_compatible(models[j], models[i], NULL, 0)) owner = j;
            else if (same_name < 0 && models[i]->name && models[j]->name && !strcmp(models[i]->name, models[j]->name))
                same_name = j;
        }
        if (owner >= 0) {
            s->owner[i] = owner;
            continue;
        }
        if (same_name >= 0) {
            /* the same network, bound differently: bound separately, never
             * shared (the other table's bytes would be read wrongly) */
            ldm_model_weights_compatible(models[i], models[same_name], why, sizeof why);
            char *notes = ldm_xasprintf("%s%s (%s) binds its weights separately from %s (%s): %s\n", s->notes,
                                        models[i]->name, model_build(models[i]), models[same_name]->name,
                                        model_build(models[same_name]), why);
            free(s->notes);
            s->notes = notes;
        }
        s->owner[i] = i;
        s->n_weight_sets++;
        if (ldm_weights_open_mapped(models[i], &s->ckpt, map, &s->w[i]) != 0) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", ldm_last_error());
            ldm_nets_free(s);
            return ldm_fail("%s; this executable was built for %s", msg, what ? what : "another checkpoint");
        }
        if (s->w[i].bytes > s->weight_bytes) s->weight_bytes = s->w[i].bytes;
    }
    s->arena = ldm_arena_alloc(s->arena_bytes ? s->arena_bytes : 64,
                               "the activation arena of the networks (their memory plan)");
    return 0;
}

void ldm_nets_free(LdmNets *s) {
    free(s->weight_names);
    free(s->loras);
    if (s->w)
        for (int i = 0; i < s->n; i++) ldm_weights_free(&s->w[i]);
    free(s->w);
    free(s->models);
    free(s->owner);
    free(s->notes);
    free(s->arena);
    st_close(&s->ckpt);
    memset(s, 0, sizeof *s);
}

void ldm_nets_share_arena(LdmNets *s, LdmNets *owner) {
    if (s == owner || owner->arena_from) return;
    if (owner->arena_bytes < s->arena_bytes) {
        free(owner->arena); /* dead between runs */
        owner->arena_bytes = s->arena_bytes;
        owner->arena = ldm_arena_alloc(owner->arena_bytes, "the activation arena of the networks (their memory plan)");
    }
    free(s->arena);
    s->arena = NULL;
    s->arena_from = owner;
}

/* The arena s's models run in. */
static unsigned char *nets_arena(const LdmNets *s, size_t *bytes) {
    const LdmNets *o = s->arena_from ? s->arena_from : s;
    if (bytes) *bytes = o->arena_bytes;
    return o->arena;
}

/* Hand the arena's pages past `keep` bytes back to the kernel: what a
 * previous network left there is dead (a forward pass only uses the arena
 * while it runs), and the next one will not touch it. */
static void arena_trim(LdmNets *s, size_t keep) {
    size_t bytes;
    unsigned char *arena = nets_arena(s, &bytes);
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)arena + keep + page - 1) & ~(page - 1);
    uintptr_t hi = ((uintptr_t)arena + bytes) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

void ldm_nets_release(LdmNets *s, size_t keep_arena) {
    if (s->last_run) ldm_weights_release(&s->w[s->last_run - 1]);
    s->last_run = 0;
    if (nets_arena(s, NULL)) arena_trim(s, keep_arena);
}

LdmWeights *ldm_nets_weights(LdmNets *s, int i) {
    int k = s->owner ? s->owner[i] : i;
    /* one weight set resident at a time; and the activations a larger
     * network left in the arena (the VAE decoder's, 650 MiB at 512x512)
     * not resident while the next one (the UNet of the next image) runs */
    if (s->last_run && s->last_run != k + 1) {
        ldm_weights_release(&s->w[s->last_run - 1]);
        arena_trim(s, s->models[i]->arena_bytes);
    }
    s->last_run = k + 1;
    ldm_weights_bind(&s->w[k]);
    return &s->w[k];
}

/* Binary search of name in the sorted names[0..n): its index or -(insertion point) - 1. */
static int name_search(const char *const *names, int n, const char *name) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(names[mid], name);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -lo - 1;
}

const char *const *ldm_nets_weight_names(LdmNets *s, int *n) {
    if (!s->weight_names) {
        int cap = 0;
        for (int i = 0; i < s->n; i++) cap += s->models[i]->n_weights;
        s->weight_names = ldm_xcalloc((size_t)cap + 1, sizeof *s->weight_names);
        /* sorted copy of what is in so far: the same network at several
         * sizes lists every name again */
        const char **sorted = ldm_xcalloc((size_t)cap + 1, sizeof *sorted);
        int k = 0;
        for (int i = 0; i < s->n; i++)
            for (int j = 0; j < s->models[i]->n_weights; j++) {
                const char *name = s->models[i]->weights[j].name;
                int at = name_search(sorted, k, name);
                if (at >= 0) continue;
                at = -at - 1;
                memmove(sorted + at + 1, sorted + at, (size_t)(k - at) * sizeof *sorted);
                sorted[at] = name;
                s->weight_names[k++] = name;
            }
        free(sorted);
        s->n_weight_names = k;
    }
    *n = s->n_weight_names;
    return s->weight_names;
}

int ldm_nets_set_loras(LdmNets *s, LdmLora *const *loras, int n) {
    if (n < 0) return ldm_fail("ldm_nets_set_loras: %d LoRAs", n);
    /* every check before any change: binding cannot fail */
    for (int i = 0; i < s->n; i++) {
        if (s->owner[i] != i) continue;
        const LdmWeights *w = &s->w[i];
        for (int l = 0; l < n; l++)
            for (int j = 0; j < w->n; j++)
                if (ldm_lora_check(loras[l], w->src[j].name, w->src[j].ndim, w->src[j].shape) != 0) return -1;
    }
    LdmLora **copy = n ? ldm_xmalloc((size_t)n * sizeof *copy) : NULL;
    if (n) memcpy(copy, loras, (size_t)n * sizeof *copy);
    for (int i = 0; i < s->n; i++)
        if (s->owner[i] == i) ldm_weights_set_loras(&s->w[i], copy, n);
    free(s->loras); /* the weight sets no longer point at it */
    s->loras = copy;
    s->n_loras = n;
    return 0;
}

int ldm_nets_run(LdmNets *s, int i, const void *const *in, void *const *out) {
    return ldm_nets_run_ext(s, i, in, out, NULL);
}

int ldm_nets_run_ext(LdmNets *s, int i, const void *const *in, void *const *out, const int64_t *ext) {
    if (i < 0 || i >= s->n) return ldm_fail("no model %d (%d loaded)", i, s->n);
    if (ldm_check_extents(s->models[i], ext) != 0) return -1;
    LdmWeights *w = ldm_nets_weights(s, i); /* one weight set resident at a time, shared across sizes */
    return ldm_forward(s->models[i], w->ptr, in, out, nets_arena(s, NULL), ext);
}

int ldm_model_input(const LdmModel *m, const char *name) {
    for (int i = 0; i < m->n_inputs; i++)
        if (strcmp(m->inputs[i].name, name) == 0) return i;
    return -1;
}

int ldm_model_output(const LdmModel *m, const char *name) {
    for (int i = 0; i < m->n_outputs; i++)
        if (strcmp(m->outputs[i].name, name) == 0) return i;
    return -1;
}

/* ----------------------------------------------------------------------------
 * Noise
 * ------------------------------------------------------------------------- */

const char *ldm_rng_name(LdmRngKind k) { return k == LDM_RNG_CUDA ? "cuda" : "cpu"; }

int ldm_rng_parse(const char *s, LdmRngKind *out) {
    if (strcmp(s, "cpu") == 0) *out = LDM_RNG_CPU;
    else if (strcmp(s, "cuda") == 0) *out = LDM_RNG_CUDA;
    else return ldm_fail("--rng: expected cpu or cuda, got '%s'", s);
    return 0;
}

void ldm_noise_seed(LdmNoise *g, LdmRngKind kind, uint64_t seed) {
    memset(g, 0, sizeof *g);
    g->kind = kind;
    if (kind == LDM_RNG_CUDA) cuda_gen_seed(&g->cuda, seed);
    else torch_gen_seed(&g->cpu, seed);
}

void ldm_noise_draw(void *ctx, float *out, int64_t n) {
    LdmNoise *g = ctx;
    /* Both fail only for n < 0 (and CUDA for n > INT32_MAX, far beyond any
     * latent these executables are compiled for). */
    int rc = g->kind == LDM_RNG_CUDA ? cuda_randn(&g->cuda, out, n) : torch_randn(&g->cpu, out, n);
    if (rc != 0 && n > 0) memset(out, 0, (size_t)n * sizeof *out);
}

/* ----------------------------------------------------------------------------
 * The guided model call
 * ------------------------------------------------------------------------- */

static int64_t input_numel(const LdmModel *m, int i) { return ldm_numel(&m->inputs[i]); }

/* ldm_fail for ldm_guide_init after g->ext is allocated: nothing stays allocated */
static int guide_init_fail(LdmGuide *g, const char *fmt, ...) LDM_PRINTF(2, 3);
static int guide_init_fail(LdmGuide *g, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    free(g->ext);
    g->ext = NULL;
    return ldm_fail("%s", msg);
}

int ldm_guide_init(LdmGuide *g) {
    const LdmModel *m = g->nets->models[g->unet];
    int B = g->guided ? 2 * g->batch : g->batch;
    g->in_x = ldm_model_input(m, "x");
    g->in_t = ldm_model_input(m, "timesteps");
    g->in_ctx = ldm_model_input(m, "context");
    g->in_y = ldm_model_input(m, "y");
    if ((g->in_y >= 0) != (g->y != NULL))
        return ldm_fail(g->y ? "UNet '%s' takes no vector input y" : "UNet '%s' needs a vector input y", m->name);
    if (g->in_y >= 0 && input_numel(m, g->in_y) != B * g->y_width)
        return ldm_fail("UNet '%s' takes y of %lld values, expected %lld", m->name, (long long)input_numel(m, g->in_y),
                        (long long)(B * g->y_width));
    if (g->in_x < 0 || g->in_t < 0 || m->n_outputs != 1)
        return ldm_fail("model '%s' is not a UNet (inputs x, timesteps [, context]; output eps)", m->name);
    const LdmTensorInfo *xi = &m->inputs[g->in_x], *eo = &m->outputs[0];
    if (xi->ndim != 4 || xi->shape[0] != B || input_numel(m, g->in_t) != B)
        return ldm_fail("UNet '%s' is compiled for batch %lld, expected %d", m->name, (long long)xi->shape[0], B);
    int64_t plane = xi->shape[2] * xi->shape[3];
    int64_t c_lat = g->sample_n / (plane ? plane : 1);
    if (c_lat * plane != g->sample_n || xi->shape[1] != c_lat + g->concat_channels)
        return ldm_fail("UNet '%s' takes x of %lld channels of %lldx%lld, expected %lld latent + %d concat channels",
                        m->name, (long long)xi->shape[1], (long long)xi->shape[2], (long long)xi->shape[3],
                        (long long)c_lat, g->concat_channels);
    if (ldm_numel(eo) != B * g->sample_n)
        return ldm_fail("UNet '%s' output has %lld values, expected %lld", m->name, (long long)ldm_numel(eo),
                        (long long)(B * g->sample_n));
    if ((g->in_ctx >= 0) != (g->context != NULL))
        return ldm_fail(g->context ? "UNet '%s' takes no context" : "UNet '%s' needs a context", m->name);
    if (g->concat_channels > 0 && !g->concat) return ldm_fail("UNet '%s': c_concat planes missing", m->name);
    /* a run-time batch (param B <= 2 batch): --cfg-scale 1 runs the cond half only */
    g->batch_ext = xi->dyn[0] > 0 ? xi->dyn[0] - 1 : -1;
    g->ext = ldm_xcalloc((size_t)m->n_extents + 1, sizeof *g->ext);
    for (int k = 0; k < m->n_extents; k++) g->ext[k] = m->extents[k].max;
    g->ctx_ext = -1;
    g->split = 0;
    g->ctx_buf = NULL;
    if (g->context_c) {
        const LdmTensorInfo *ci = &m->inputs[g->in_ctx];
        if (!g->guided || ci->ndim != 3)
            return guide_init_fail(g, "UNet '%s': a separate cond context needs guidance and a context [B, T, dim]", m->name);
        g->ctx_ext = ci->dyn[1] > 0 ? ci->dyn[1] - 1 : -1;
        int64_t tmax = ci->shape[1], step = g->ctx_ext >= 0 ? m->extents[g->ctx_ext].step : tmax;
        if (g->len_u <= 0) g->len_u = tmax;
        if (g->len_c <= 0) g->len_c = tmax;
        for (int h = 0; h < 2; h++) {
            int64_t len = h ? g->len_c : g->len_u;
            if (len > tmax || (g->ctx_ext < 0 && len != tmax) || len % step)
                return guide_init_fail(g, "UNet '%s' takes a context of %s%lld tokens (a multiple of %lld), the %s prompt has %lld",
                                m->name, g->ctx_ext >= 0 ? "up to " : "", (long long)tmax, (long long)step,
                                h ? "" : "negative", (long long)len);
        }
        g->split = g->len_u != g->len_c;
        if (g->split && g->batch_ext < 0)
            return guide_init_fail(g, "UNet '%s' has a fixed batch: the prompt (%lld tokens) and the negative prompt (%lld) "
                            "need two calls of their own lengths", m->name, (long long)g->len_c, (long long)g->len_u);
        if (!g->split) {
            /* one buffer [uncond x batch, cond x batch] at T = len */
            int64_t half = (int64_t)g->batch * g->len_u * ci->shape[2];
            g->ctx_buf = ldm_aligned_alloc((size_t)(2 * half) * sizeof(float));
            memcpy(g->ctx_buf, g->context, (size_t)half * sizeof(float));
            memcpy(g->ctx_buf + half, g->context_c, (size_t)half * sizeof(float));
        }
    }
    g->x = ldm_aligned_alloc((size_t)input_numel(m, g->in_x) * sizeof(float));
    g->t = ldm_aligned_alloc((size_t)B * sizeof(float));
    g->eps = ldm_aligned_alloc((size_t)ldm_numel(eo) * sizeof(float));
    g->calls = 0;
    g->seconds = 0;
    return 0;
}

void ldm_guide_free(LdmGuide *g) {
    free(g->x);
    free(g->t);
    free(g->eps);
    free(g->ext);
    free(g->ctx_buf);
    g->x = g->t = g->eps = NULL;
    g->ext = NULL;
    g->ctx_buf = NULL;
}

/* ControlNet: its residuals for a UNet call on `halves` copies of the batch
 * (which: 0 the uncond half alone, 1 the cond half alone, 2 [uncond, cond])
 * into c->res, at context ctx / length len (0: the UNet's current one). */
static int control_call(LdmGuide *g, LdmControl *c, int halves, int which, const float *ctx, int64_t len) {
    const LdmModel *cm = c->nets->models[c->net];
    const LdmModel *m = g->nets->models[g->unet];
    int rows = halves * g->batch, skip = 0;
    if (c->guess && which == 2) {
        /* guess mode: the uncond rows get no control (zero residuals), the
         * ControlNet sees the cond rows alone */
        skip = g->batch;
        rows = g->batch;
    }
    int64_t T = len > 0 ? len : g->ctx_ext >= 0 ? g->ext[g->ctx_ext] : 0;
    if (c->batch_ext >= 0) c->ext[c->batch_ext] = rows;
    if (c->ctx_ext >= 0 && T > 0) c->ext[c->ctx_ext] = T;
    int64_t ctx_row = (int64_t)m->inputs[g->in_ctx].shape[2] * (T > 0 ? T : m->inputs[g->in_ctx].shape[1]);
    const void *in[8] = {0};
    in[c->cn_x] = g->x + skip * g->sample_n;
    in[c->cn_hint] = c->hint2;
    in[c->cn_t] = g->t + skip;
    in[c->cn_ctx] = ctx + skip * ctx_row;
    void **out = ldm_xcalloc((size_t)cm->n_outputs, sizeof *out);
    for (int j = 0; j < c->n_res; j++) {
        if (skip) memset(c->res[j], 0, (size_t)(skip * c->res_row[j]) * sizeof(float));
        out[c->cn_out[j]] = c->res[j] + skip * c->res_row[j];
    }
    double t0 = ldm_now();
    int rc = ldm_nets_run_ext(c->nets, c->net, in, out, c->ext);
    free(out);
    c->seconds += ldm_now() - t0;
    c->calls++;
    return rc;
}

/* One UNet call on `halves` copies of the batch (x, t already in place)
 * with context ctx at length len (0: leave the extent as it is); the
 * output goes to eps. which: the halves it holds (0 uncond, 1 cond, 2 both),
 * for the ControlNet. */
static int guide_call(LdmGuide *g, int halves, int which, const float *ctx, int64_t len, float *eps) {
    LdmControl *c = g->control;
    /* guess mode: the uncond half alone is the plain UNet */
    int controlled = c && !(c->guess && which == 0);
    const LdmModel *m = g->nets->models[controlled ? c->unet : g->unet];
    const void *in[64] = {NULL};
    if (m->n_inputs > (controlled ? 64 : 4))
        return ldm_fail("UNet '%s' has %d inputs, expected at most %d", m->name, m->n_inputs, controlled ? 64 : 4);
    in[g->in_x] = g->x;
    in[g->in_t] = g->t;
    if (g->in_ctx >= 0) in[g->in_ctx] = ctx;
    /* y rows as the context's, [uncond, cond]: a call on the cond half alone starts at the cond rows */
    if (g->in_y >= 0) in[g->in_y] = g->y + (which == 1 && g->guided ? (int64_t)g->batch * g->y_width : 0);
    void *out[1] = {eps};
    if (g->batch_ext >= 0) g->ext[g->batch_ext] = halves * g->batch;
    if (g->ctx_ext >= 0 && len > 0) g->ext[g->ctx_ext] = len;
    double t0 = ldm_now();
    if (controlled) {
        if (control_call(g, c, halves, which, ctx, len) != 0) return -1;
        for (int j = 0; j < c->n_res; j++) in[c->res_in[j]] = c->res[j];
        in[c->in_scales] = c->scales;
    }
    if (ldm_nets_run_ext(g->nets, controlled ? c->unet : g->unet, in, out, g->ext) != 0) return -1;
    g->seconds += ldm_now() - t0;
    g->calls++;
    return 0;
}

void ldm_control_scales(double strength, int guess, int n, float *scales) {
    /* gradio scripts: [strength * (0.825 ** float(12 - i)) for i in range(13)]
     * if guess_mode else [strength] * 13 */
    for (int j = 0; j < n; j++) scales[j] = (float)(guess ? strength * pow(0.825, (double)(12 - j)) : strength);
}

static const char *control_prefixed_key(const char *name, char *buf, size_t size) {
    snprintf(buf, size, "control_model.%s", name);
    return buf;
}

LdmKeyMapFn ldm_control_key_map(const StFile *f) {
    /* ComfyUI's test: either control_model.zero_convs.0.0.weight or zero_convs.0.0.weight */
    if (!st_find(f, "zero_convs.0.0.weight") && st_find(f, "control_model.zero_convs.0.0.weight"))
        return control_prefixed_key;
    return NULL;
}

void ldm_control_free(LdmControl *c) {
    for (int j = 0; c->res && j < c->n_res; j++) free(c->res[j]);
    free(c->res);
    free(c->res_row);
    free(c->res_in);
    free(c->cn_out);
    free(c->scales);
    free(c->hint2);
    free(c->ext);
    c->res = NULL;
    c->res_row = NULL;
    c->res_in = c->cn_out = NULL;
    c->scales = c->hint2 = NULL;
    c->ext = NULL;
}

int ldm_control_init(LdmControl *c, const LdmGuide *g) {
    const LdmModel *cm = c->nets->models[c->net], *um = g->nets->models[c->unet], *pm = g->nets->models[g->unet];
    c->res = NULL, c->res_row = NULL, c->res_in = c->cn_out = NULL, c->scales = c->hint2 = NULL, c->ext = NULL;
    c->calls = 0;
    c->seconds = 0;
    if (g->concat_channels > 0) return ldm_fail("a ControlNet cannot steer an inpainting (hybrid) UNet");
    c->cn_x = ldm_model_input(cm, "x");
    c->cn_hint = ldm_model_input(cm, "hint");
    c->cn_t = ldm_model_input(cm, "timesteps");
    c->cn_ctx = ldm_model_input(cm, "context");
    c->in_scales = ldm_model_input(um, "control_scales");
    if (c->cn_x < 0 || c->cn_hint < 0 || c->cn_t < 0 || c->cn_ctx < 0 || cm->n_inputs != 4 || cm->n_outputs > 64)
        return ldm_fail("internal: '%s' is not a ControlNet (inputs x, hint, timesteps, context)", cm->name);
    if (c->in_scales < 0 || g->in_ctx < 0)
        return ldm_fail("internal: '%s' is not a controlled UNet (no input control_scales)", um->name);
    c->n_res = (int)ldm_numel(&um->inputs[c->in_scales]);
    if (c->n_res != cm->n_outputs || um->n_inputs != 4 + c->n_res || um->n_inputs > 64)
        return ldm_fail("internal: the ControlNet gives %d residuals, the controlled UNet takes %lld", cm->n_outputs,
                        (long long)c->n_res);
    /* the controlled UNet takes x, timesteps and context as the plain one does */
    for (int k = 0; k < pm->n_inputs; k++)
        if (ldm_model_input(um, pm->inputs[k].name) != k)
            return ldm_fail("internal: the controlled UNet's input '%s' is not where the plain UNet's is",
                            pm->inputs[k].name);
    const LdmTensorInfo *hi = &cm->inputs[c->cn_hint];
    c->hint_n = hi->shape[1] * hi->shape[2] * hi->shape[3];
    int B = g->guided ? 2 * g->batch : g->batch;
    if (hi->shape[0] < B || um->inputs[g->in_x].shape[0] < B)
        return ldm_fail("internal: the ControlNet is compiled for batch %lld, expected %d", (long long)hi->shape[0], B);
    c->res = ldm_xcalloc((size_t)c->n_res, sizeof *c->res);
    c->res_row = ldm_xcalloc((size_t)c->n_res, sizeof *c->res_row);
    c->res_in = ldm_xcalloc((size_t)c->n_res, sizeof *c->res_in);
    c->cn_out = ldm_xcalloc((size_t)c->n_res, sizeof *c->cn_out);
    c->scales = ldm_aligned_alloc((size_t)c->n_res * sizeof(float));
    for (int j = 0; j < c->n_res; j++) {
        char name[32];
        snprintf(name, sizeof name, "ctrl.%d", j);
        c->res_in[j] = ldm_model_input(um, name);
        c->cn_out[j] = ldm_model_output(cm, name);
        if (c->res_in[j] < 0 || c->cn_out[j] < 0) {
            ldm_control_free(c);
            return ldm_fail("internal: residual '%s' missing in the ControlNet or the controlled UNet", name);
        }
        const LdmTensorInfo *a = &um->inputs[c->res_in[j]], *b = &cm->outputs[c->cn_out[j]];
        int64_t na = ldm_numel(a) / a->shape[0], nb = ldm_numel(b) / b->shape[0];
        if (na != nb) {
            ldm_control_free(c);
            return ldm_fail("internal: residual '%s' has %lld values per sample in the ControlNet, %lld in the UNet",
                            name, (long long)nb, (long long)na);
        }
        c->res_row[j] = na;
        c->res[j] = ldm_aligned_alloc((size_t)ldm_numel(a) * sizeof(float));
    }
    ldm_control_scales(c->strength, c->guess, c->n_res, c->scales);
    /* the hint of each half: [hint x batch, hint x batch] */
    c->hint2 = ldm_aligned_alloc((size_t)(2 * g->batch * c->hint_n) * sizeof(float));
    for (int h = 0; h < 2; h++)
        memcpy(c->hint2 + h * g->batch * c->hint_n, c->hint, (size_t)(g->batch * c->hint_n) * sizeof(float));
    c->ext = ldm_xcalloc((size_t)cm->n_extents + 1, sizeof *c->ext);
    for (int k = 0; k < cm->n_extents; k++) c->ext[k] = cm->extents[k].max;
    c->batch_ext = hi->dyn[0] > 0 ? hi->dyn[0] - 1 : -1;
    c->ctx_ext = cm->inputs[c->cn_ctx].dyn[1] > 0 ? cm->inputs[c->cn_ctx].dyn[1] - 1 : -1;
    return 0;
}

int ldm_guide_eps(void *ctx, const float *x_in, float t, float *eps_out) {
    LdmGuide *g = ctx;
    const LdmModel *m = g->nets->models[g->unet];
    /* scale 1 is e = e_c: with a run-time batch only the cond half runs */
    const int cond_only = g->guided && g->scale == 1.0 && g->batch_ext >= 0;
    /* prompt and negative prompt of different lengths: one half per call */
    int halves = g->guided && !cond_only && !g->split ? 2 : 1;
    int64_t n = g->sample_n, plane = m->inputs[g->in_x].shape[2] * m->inputs[g->in_x].shape[3];
    int64_t cn = (int64_t)g->concat_channels * plane;
    /* x_in = torch.cat([x] * 2); with c_concat (DiffusionWrapper 'hybrid'):
     * xc = torch.cat([x] + c_concat, dim=1) */
    float *xp = g->x;
    for (int h = 0; h < halves; h++)
        for (int b = 0; b < g->batch; b++) {
            memcpy(xp, x_in + b * n, (size_t)n * sizeof(float));
            xp += n;
            if (cn) {
                memcpy(xp, g->concat + b * cn, (size_t)cn * sizeof(float));
                xp += cn;
            }
        }
    int B = halves * g->batch;
    for (int b = 0; b < B; b++) g->t[b] = t;
    int64_t total = g->batch * n;
    if (g->context_c) {
        /* contexts of their own lengths */
        if (cond_only) {
            if (guide_call(g, 1, 1, g->context_c, g->len_c, g->eps) != 0) return -1;
        } else if (g->split) {
            /* the webui without pad_cond_uncond: uncond and cond are separate
             * UNet batches, each with its own cross-attention length */
            if (guide_call(g, 1, 0, g->context, g->len_u, g->eps) != 0 ||
                guide_call(g, 1, 1, g->context_c, g->len_c, g->eps + total) != 0)
                return -1;
        } else {
            if (guide_call(g, 2, 2, g->ctx_buf, g->len_u, g->eps) != 0) return -1;
        }
    } else {
        const float *ctx = g->context;
        if (g->in_ctx >= 0 && cond_only) {
            /* the context is [uncond x batch, cond x batch]: the cond half starts at row batch */
            int64_t rows = m->inputs[g->in_ctx].shape[0];
            ctx = g->context + ldm_numel(&m->inputs[g->in_ctx]) / rows * g->batch;
        }
        if (guide_call(g, halves, !g->guided || cond_only ? 1 : 2, ctx, 0, g->eps) != 0) return -1;
    }
    if (!g->guided || cond_only) {
        memcpy(eps_out, g->eps, (size_t)total * sizeof(float));
    } else if (g->scale == 1.0) {
        memcpy(eps_out, g->eps + total, (size_t)total * sizeof(float));
    } else {
        /* e_t_uncond, e_t = self.model.apply_model(x_in, t_in, c_in).chunk(2)
         * e_t = e_t_uncond + unconditional_guidance_scale * (e_t - e_t_uncond) */
        float s = (float)g->scale;
        const float *eu = g->eps, *ec = g->eps + total;
        for (int64_t j = 0; j < total; j++) eps_out[j] = eu[j] + s * (ec[j] - eu[j]);
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Progress
 * ------------------------------------------------------------------------- */

LdmProgressMode ldm_progress_mode(FILE *fp, int quiet) {
    if (quiet) return LDM_PROGRESS_QUIET;
    return isatty(fileno(fp)) ? LDM_PROGRESS_BAR : LDM_PROGRESS_LINES;
}

const char *ldm_format_duration(double s, char *buf, size_t size) {
    if (!(s >= 0) || s > 1e9) snprintf(buf, size, "?");
    else if (s < 60) snprintf(buf, size, "%.1f s", s);
    else if (s < 3600) snprintf(buf, size, "%d min %02d s", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(buf, size, "%d h %02d min", (int)(s / 3600), (int)fmod(s / 60, 60));
    return buf;
}

void ldm_progress_start(LdmProgress *p, FILE *fp, LdmProgressMode mode, const char *label, int n_steps) {
    memset(p, 0, sizeof *p);
    p->fp = fp;
    p->mode = mode;
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
    p->n = n_steps > 0 ? n_steps : 0;
    p->step_seconds = ldm_xcalloc((size_t)p->n + 1, sizeof *p->step_seconds);
    p->t_start = p->t_last = ldm_now();
    if (mode == LDM_PROGRESS_BAR) {
        fprintf(fp, "\r%s 0/%d |%*s|", p->label, p->n, 24, "");
        fflush(fp);
    }
}

void ldm_progress_step(LdmProgress *p) {
    double now = ldm_now();
    if (p->done < p->n) p->step_seconds[p->done] = now - p->t_last;
    p->done++;
    p->t_last = now;
    if (p->mode == LDM_PROGRESS_QUIET) return;
    double per = (now - p->t_start) / p->done;
    int left = p->n > p->done ? p->n - p->done : 0;
    char eta[32];
    ldm_format_duration(per * left, eta, sizeof eta);
    if (p->mode == LDM_PROGRESS_BAR) {
        enum { WIDTH = 24 };
        char bar[WIDTH + 1];
        int full = p->n ? (int)((double)WIDTH * p->done / p->n) : WIDTH;
        for (int i = 0; i < WIDTH; i++) bar[i] = i < full ? '#' : '.';
        bar[WIDTH] = 0;
        /* \033[K clears what a longer previous line left behind */
        fprintf(p->fp, "\r%s %d/%d |%s| %.2f s/it, ETA %s\033[K", p->label, p->done, p->n, bar, per, eta);
    } else {
        fprintf(p->fp, "%s step %d/%d, %.2f s/it, ETA %s\n", p->label, p->done, p->n, per, eta);
    }
    fflush(p->fp);
}

void ldm_progress_finish(LdmProgress *p) {
    if (p->mode == LDM_PROGRESS_BAR) {
        fprintf(p->fp, "\n");
        fflush(p->fp);
    }
}

void ldm_progress_free(LdmProgress *p) {
    free(p->step_seconds);
    p->step_seconds = NULL;
}

/* ----------------------------------------------------------------------------
 * Timing summary
 * ------------------------------------------------------------------------- */

void ldm_times_add(LdmTimes *t, const char *stage, double seconds) {
    int i = 0;
    while (i < t->n && strcmp(t->name[i], stage) != 0) i++;
    if (i == t->n) {
        if (t->n == LDM_TIMES_MAX_STAGES) return;
        t->name[t->n++] = stage;
    }
    t->seconds[i] += seconds;
    t->count[i]++;
}

void ldm_times_add_steps(LdmTimes *t, const double *seconds, int n) {
    if (t->n_steps + n > t->cap_steps) {
        t->cap_steps = 2 * (t->n_steps + n) + 16;
        t->steps = ldm_xrealloc(t->steps, (size_t)t->cap_steps * sizeof *t->steps);
    }
    for (int i = 0; i < n; i++) t->steps[t->n_steps++] = seconds[i];
}

/* The sampling steps of the summary (steps = their total). */
static void print_steps(const LdmTimes *t, FILE *fp, double steps) {
    if (t->n_steps > 0) {
        double lo = t->steps[0], hi = t->steps[0];
        for (int i = 1; i < t->n_steps; i++) {
            if (t->steps[i] < lo) lo = t->steps[i];
            if (t->steps[i] > hi) hi = t->steps[i];
        }
        fprintf(fp, "  %-14s %9.3f s  (%d steps, %.3f s/step, min %.3f, max %.3f)\n", "sampling", steps, t->n_steps,
                steps / t->n_steps, lo, hi);
        if (t->images <= 1) {
            fprintf(fp, "  %-14s", "each step");
            for (int i = 0; i < t->n_steps; i++) fprintf(fp, "%s%.3f", i % 10 ? " " : i ? "\n                 " : " ", t->steps[i]);
            fprintf(fp, " s\n");
        }
    }
}

void ldm_times_print(const LdmTimes *t, FILE *fp) {
    double total = 0, steps = 0;
    for (int i = 0; i < t->n; i++) total += t->seconds[i];
    for (int i = 0; i < t->n_steps; i++) steps += t->steps[i];
    total += steps;
    fprintf(fp, "timing (%d image%s):\n", t->images, t->images == 1 ? "" : "s");
    /* the stages in first-use order, the sampling steps just before "decode" */
    int steps_done = 0;
    for (int i = 0; i <= t->n; i++) {
        if (!steps_done && (i == t->n || strcmp(t->name[i], "decode") == 0)) {
            print_steps(t, fp, steps);
            steps_done = 1;
        }
        if (i == t->n) break;
        fprintf(fp, "  %-14s %9.3f s", t->name[i], t->seconds[i]);
        if (t->count[i] > 1) fprintf(fp, "  (%d x %.3f s)", t->count[i], t->seconds[i] / t->count[i]);
        fprintf(fp, "\n");
    }
    fprintf(fp, "  %-14s %9.3f s\n", "total", total);
    fprintf(fp, "peak memory (RSS): %.1f MiB\n", (double)ldm_peak_rss() / 1048576.0);
}

void ldm_times_free(LdmTimes *t) {
    free(t->steps);
    memset(t, 0, sizeof *t);
}

/* ----------------------------------------------------------------------------
 * Prompt lists, shards, output names
 * ------------------------------------------------------------------------- */

int ldm_shard_parse(const char *s, int *k, int *n) {
    char *end;
    errno = 0;
    long kk = strtol(s, &end, 10);
    if (end == s || *end != '/' || s[0] == '-' || s[0] == '+' || s[0] == ' ' || errno) goto bad;
    const char *t = end + 1;
    long nn = strtol(t, &end, 10);
    if (end == t || *end || t[0] == '-' || t[0] == '+' || t[0] == ' ' || errno) goto bad;
    if (nn < 1 || nn > 1000000 || kk < 0 || kk >= nn)
        return ldm_fail("--shard: K/N needs 0 <= K < N (N at most 1000000), got '%s'", s);
    *k = (int)kk;
    *n = (int)nn;
    return 0;
bad:
    return ldm_fail("--shard: expected K/N (this is shard K of N, 0 <= K < N, e.g. 0/4), got '%s'", s);
}

static int is_blank(const char *s) {
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\v' && *s != '\f') return 0;
    return 1;
}

int ldm_prompts_read(const char *path, int shard_k, int shard_n, LdmPromptList *out) {
    memset(out, 0, sizeof *out);
    if (shard_n < 1 || shard_k < 0 || shard_k >= shard_n)
        return ldm_fail("shard %d/%d: needs 0 <= K < N", shard_k, shard_n);
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && (size_t)sb.st_size > LDM_MAX_PROMPT_FILE_BYTES)
        return ldm_fail("%s: %lld bytes; the limit of a prompt file is %zu MiB (split it, e.g. with --shard)", path,
                        (long long)sb.st_size, LDM_MAX_PROMPT_FILE_BYTES >> 20);
    size_t len;
    char *buf = ldm_read_file(path, &len);
    if (!buf) return -1;
    if (len > LDM_MAX_PROMPT_FILE_BYTES) { /* not a regular file: checked after reading */
        free(buf);
        return ldm_fail("%s: more than %zu MiB; the limit of a prompt file", path, LDM_MAX_PROMPT_FILE_BYTES >> 20);
    }
    int cap = 0, line = 0;
    size_t pos = 0;
    while (pos < len) {
        size_t end = pos;
        while (end < len && buf[end] != '\n' && buf[end] != 0) end++;
        line++;
        if (line > LDM_MAX_PROMPT_LINES) {
            free(buf);
            ldm_prompts_free(out);
            return ldm_fail("%s: more than %d lines; the limit of a prompt file (split it, e.g. with --shard)", path,
                            LDM_MAX_PROMPT_LINES);
        }
        if (end - pos > LDM_LINE_MAX_BYTES) {
            free(buf);
            ldm_prompts_free(out);
            return ldm_fail("%s:%d: the line is %zu bytes; the limit is %d", path, line, end - pos, LDM_LINE_MAX_BYTES);
        }
        if (end < len && buf[end] == 0) {
            free(buf);
            ldm_prompts_free(out);
            return ldm_fail("%s:%d: NUL byte in the prompt file (not a text file?)", path, line);
        }
        size_t stop = end;
        if (stop > pos && buf[stop - 1] == '\r') stop--;
        buf[stop] = 0;
        const char *text = buf + pos;
        if ((line - 1) % shard_n == shard_k && !is_blank(text)) {
            if (out->n == cap) {
                cap = cap ? 2 * cap : 16;
                out->items = ldm_xrealloc(out->items, (size_t)cap * sizeof *out->items);
            }
            out->items[out->n].line = line;
            out->items[out->n].text = ldm_xstrdup(text);
            out->n++;
        }
        pos = end + 1;
    }
    free(buf);
    return 0;
}

void ldm_prompts_free(LdmPromptList *l) {
    for (int i = 0; i < l->n; i++) free(l->items[i].text);
    free(l->items);
    memset(l, 0, sizeof *l);
}

int ldm_split_args(const char *line, int *argc, char ***argv) {
    size_t len = strlen(line);
    char **v = ldm_xcalloc(len / 2 + 2, sizeof *v); /* at most (len + 1) / 2 words */
    char *word = ldm_xmalloc(len + 1);
    int n = 0;
    const char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == '\v' || *p == '\f') p++;
        if (!*p) break;
        size_t k = 0;
        while (*p && !(*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == '\v' || *p == '\f')) {
            char q = *p;
            if (q == '\'' || q == '"') {
                const char *start = p++;
                while (*p && *p != q) {
                    if (q == '"' && *p == '\\' && (p[1] == '"' || p[1] == '\\')) p++;
                    word[k++] = *p++;
                }
                if (!*p) {
                    free(word);
                    ldm_args_free(n, v);
                    return ldm_fail("unterminated %s quote at column %d", q == '"' ? "double" : "single",
                                    (int)(start - line) + 1);
                }
                p++;
            } else if (q == '\\' && p[1]) {
                word[k++] = p[1];
                p += 2;
            } else {
                word[k++] = *p++;
            }
        }
        word[k] = 0;
        v[n++] = ldm_xstrdup(word);
    }
    free(word);
    *argc = n;
    *argv = v;
    return 0;
}

void ldm_args_free(int argc, char **argv) {
    for (int i = 0; argv && i < argc; i++) free(argv[i]);
    free(argv);
}

uint64_t ldm_line_seed(uint64_t seed, int line) { return seed + (uint64_t)(line - 1); }

char *ldm_output_name(const char *dir, int line, uint64_t seed, const char *ext) {
    size_t k = strlen(dir);
    const char *sep = k && dir[k - 1] == '/' ? "" : "/";
    return ldm_xasprintf("%s%s%05d-%llu%s", dir, sep, line, (unsigned long long)seed, ext);
}

int ldm_mkdirs(const char *dir) {
    char *p = ldm_xstrdup(dir);
    int rc = 0;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != 0) continue;
        char c = *s;
        *s = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            rc = ldm_fail("%s: cannot create the directory: %s", p, strerror(errno));
            break;
        }
        *s = c;
        if (!c) break;
    }
    struct stat sb;
    if (rc == 0 && (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)))
        rc = ldm_fail("%s: not a directory", dir);
    free(p);
    return rc;
}

/* ----------------------------------------------------------------------------
 * Latent files
 * ------------------------------------------------------------------------- */

int ldm_latent_save(const char *path, const float *latent, const float *noise, int ndim, const int64_t *shape,
                    const char *const *meta_kv) {
    StWriter *w = st_writer_new();
    st_writer_add(w, "latent", ST_F32, ndim, shape, latent);
    if (noise) st_writer_add(w, "noise", ST_F32, ndim, shape, noise);
    for (int i = 0; meta_kv && meta_kv[i] && meta_kv[i + 1]; i += 2) st_writer_meta(w, meta_kv[i], meta_kv[i + 1]);
    int rc = st_writer_save(w, path);
    st_writer_free(w);
    return rc;
}

int ldm_noise_load(const char *path, int ndim, const int64_t *shape, float *out) {
    StFile f;
    if (st_open(&f, path) != 0) return -1;
    char want[160], got[160];
    ldm_shape_str(ndim, shape, want, sizeof want);
    const StTensor *t = st_find(&f, "noise");
    int rc = 0;
    if (!t) {
        rc = ldm_fail("%s: no tensor 'noise' (expected F32 %s)", path, want);
    } else {
        /* the same shape, or the same without a leading batch dimension of 1 */
        int same = t->ndim == ndim;
        for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
        if (!same && ndim > 1 && shape[0] == 1 && t->ndim == ndim - 1) {
            same = 1;
            for (int i = 0; same && i < ndim - 1; i++) same = t->shape[i] == shape[i + 1];
        }
        if (!same)
            rc = ldm_fail("%s: tensor 'noise' has shape %s, expected %s (the latent of this executable)", path,
                          ldm_shape_str(t->ndim, t->shape, got, sizeof got), want);
        else if (st_to_f32(t, out) != 0)
            rc = ldm_fail("%s: %s", path, ldm_last_error());
        for (int64_t i = 0; rc == 0 && i < t->numel; i++)
            if (!isfinite(out[i])) rc = ldm_fail("%s: tensor 'noise' has a non-finite value at index %lld", path, (long long)i);
    }
    st_close(&f);
    return rc;
}

/* ----------------------------------------------------------------------------
 * Output files
 * ------------------------------------------------------------------------- */

int ldm_check_output_path(const char *flag, const char *path) {
    struct stat sb;
    if (!path[0]) return ldm_fail("%s: empty file name", flag);
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) return ldm_fail("%s %s: is a directory", flag, path);
    char *dir = ldm_xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (!slash) strcpy(dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    int rc = 0;
    if (stat(dir, &sb) != 0)
        rc = ldm_fail("%s %s: the directory %s does not exist", flag, path, dir);
    else if (!S_ISDIR(sb.st_mode))
        rc = ldm_fail("%s %s: %s is not a directory", flag, path, dir);
    else if (access(dir, W_OK) != 0)
        rc = ldm_fail("%s %s: cannot write in %s: %s", flag, path, dir, strerror(errno));
    free(dir);
    return rc;
}

/* ----------------------------------------------------------------------------
 * Flag values
 * ------------------------------------------------------------------------- */

int ldm_parse_int(const char *flag, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return ldm_fail("%s: expected an integer from %ld to %ld, got '%s'", flag, lo, hi, s);
    *out = (int)v;
    return 0;
}

int ldm_parse_double(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v) || v < lo || v > hi)
        return ldm_fail("%s: expected a number from %g to %g, got '%s'", flag, lo, hi, s);
    *out = v;
    return 0;
}

int ldm_parse_u64(const char *flag, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    if (s[0] < '0' || s[0] > '9') return ldm_fail("%s: expected a non-negative integer, got '%s'", flag, s);
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno) return ldm_fail("%s: expected an integer from 0 to 18446744073709551615, got '%s'", flag, s);
    *out = (uint64_t)v;
    return 0;
}

/* The step callback of ldm_sample_guided: the caller's, then the progress. */
typedef struct GuidedStep {
    LdmProgress *prog;
    LdmStepFn fn;                /* the caller's p->step_fn (or NULL) */
    void *ctx;
} GuidedStep;

/* LdmStepFn: the caller's callback, then one tick of the progress display. */
static int progress_tick(void *ctx, const LdmStepInfo *info) {
    GuidedStep *gs = ctx;
    if (gs->fn && gs->fn(gs->ctx, info) != 0) return -1;
    ldm_progress_step(gs->prog);
    return 0;
}

int ldm_sample_guided(const LdmSchedule *sched, LdmSampler *p, LdmGuide *g, LdmNoise *gen, LdmProgressMode mode,
                      const char *label, LdmTimes *t, float *x) {
    LdmProgress prog = {0};
    p->eps_fn = ldm_guide_eps;
    p->eps_ctx = g;
    p->noise_fn = ldm_noise_draw;
    p->noise_ctx = gen;
    GuidedStep gs = {&prog, p->step_fn, p->step_ctx};
    p->step_fn = progress_tick;
    p->step_ctx = &gs;
    int rc = -1, n_steps = ldm_sample_count_steps(sched, p);
    if (n_steps >= 0) {
        ldm_progress_start(&prog, stderr, mode, label, n_steps);
        rc = ldm_sample(sched, p, x);
        ldm_progress_finish(&prog);
        if (rc == 0) ldm_times_add_steps(t, prog.step_seconds, prog.done < prog.n ? prog.done : prog.n);
    }
    ldm_progress_free(&prog);
    p->step_fn = gs.fn;
    p->step_ctx = gs.ctx;
    return rc;
}
