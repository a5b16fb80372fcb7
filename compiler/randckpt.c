/*
 * randckpt.c - `ldmc randckpt`: a random-weight checkpoint with exactly the
 * tensors (names, shapes) that a set of graphs binds for a config.
 *
 * No trained weights can be downloaded where ldmc is developed and tested,
 * yet benchmarks and the demo must run the real SD v1.5 shapes. This writes
 * such a checkpoint, clearly labelled in its metadata as random. Values
 * follow PyTorch's default initialisation closely enough that a deep
 * network stays finite: matrices and convolution kernels uniform in
 * +-1/sqrt(fan_in), 1-D scales (norm weights) 1, 1-D biases small, all from a
 * per-tensor stream seeded by (seed, name), so a tensor does not depend on
 * which other graphs were listed. The file is streamed to disk (a 4 GB
 * checkpoint never sits in memory) under a temporary name, then renamed.
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"
#include "safetensors.h"

typedef struct RWeight {
    char *name;              /* checkpoint key */
    int ndim;                /* rank */
    int64_t shape[MAX_DIMS]; /* dimensions */
} RWeight;

/* splitmix64: a tiny, good 64-bit generator. */
static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t hash_name(const char *s, uint64_t seed) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Fill one tensor's values (float32) deterministically. */
static void fill(const RWeight *w, uint64_t seed, float *out, int64_t n) {
    uint64_t s = hash_name(w->name, seed);
    size_t len = strlen(w->name);
    int is_bias = len > 5 && strcmp(w->name + len - 5, ".bias") == 0;
    if (w->ndim == 1 && !is_bias) {
        for (int64_t i = 0; i < n; i++) out[i] = 1.0f; /* norm scales */
        return;
    }
    double bound;
    if (w->ndim == 1) {
        bound = 0.02;
    } else {
        int64_t fan_in = 1;
        for (int d = 1; d < w->ndim; d++) fan_in *= w->shape[d];
        bound = 1.0 / sqrt((double)fan_in);
    }
    for (int64_t i = 0; i < n; i++) {
        double u = (double)(splitmix(&s) >> 11) * (1.0 / 9007199254740992.0); /* [0, 1) */
        out[i] = (float)((2.0 * u - 1.0) * bound);
    }
}

/* Collect the live weights of one graph into the union list. The graph
 * argument may carry defines of its own after '@', comma-separated
 * ("models/sd1/clip_text.graph@EMBEDDER=1"): the same graph for another
 * part of the checkpoint (SDXL's second text encoder). */
static int collect(const char *graph_arg, const BuildOptions *bo0, RWeight **list, int *n) {
    char *graph_path = ldm_xstrdup(graph_arg);
    BuildOptions bo = *bo0;
    Define *defs = NULL;
    char *at = strchr(graph_path, '@');
    if (at) {
        *at = 0;
        int k = 0;
        for (char *p = at + 1; p && *p; k++) p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL;
        defs = ldm_xcalloc((size_t)(bo0->n_defines + k + 1), sizeof *defs);
        memcpy(defs, bo0->defines, (size_t)bo0->n_defines * sizeof *defs);
        int nd = bo0->n_defines;
        for (char *p = at + 1; p && *p;) {
            char *comma = strchr(p, ',');
            if (comma) *comma = 0;
            char *eq = strchr(p, '=');
            if (!eq || eq == p) {
                ldm_fail("%s: '%s' is not NAME=VALUE (a graph's own defines: GRAPH@NAME=VALUE,...)", graph_arg, p);
                free(defs);
                free(graph_path);
                return -1;
            }
            *eq = 0;
            defs[nd++] = (Define){p, eq + 1};
            p = comma ? comma + 1 : NULL;
        }
        bo.defines = defs;
        bo.n_defines = nd;
    }
    Program *prog = program_parse(graph_path);
    Graph *g = prog ? graph_build(prog, &bo) : NULL;
    if (!g) {
        if (prog) program_free(prog);
        free(defs);
        free(graph_path);
        return -1;
    }
    pass_dead_code(g);
    int rc = 0;
    for (int i = 0; i < g->n_weights && rc == 0; i++) {
        const Node *w = g->weights[i];
        int found = 0;
        for (int k = 0; k < *n; k++) {
            if (strcmp((*list)[k].name, w->name)) continue;
            found = 1;
            if ((*list)[k].ndim != w->ndim || memcmp((*list)[k].shape, w->shape, (size_t)w->ndim * sizeof *w->shape))
                rc = ldm_fail("%s: weight '%s' is bound with two different shapes by the graphs", graph_arg, w->name);
            break;
        }
        if (found) continue;
        *list = ldm_xrealloc(*list, (size_t)(*n + 1) * sizeof **list);
        RWeight *r = &(*list)[(*n)++];
        r->name = ldm_xstrdup(w->name);
        r->ndim = w->ndim;
        memcpy(r->shape, w->shape, sizeof r->shape);
    }
    /* what a real checkpoint holds beside them (unused_weight): the file has
     * the real layout, e.g. SD 2's skipped last text block */
    for (int i = 0; i < g->n_unused && rc == 0; i++) {
        const UnusedWeight *u = &g->unused[i];
        int found = 0;
        for (int k = 0; k < *n && !found; k++) found = !strcmp((*list)[k].name, u->name);
        if (found) continue;
        *list = ldm_xrealloc(*list, (size_t)(*n + 1) * sizeof **list);
        RWeight *r = &(*list)[(*n)++];
        r->name = ldm_xstrdup(u->name);
        r->ndim = u->ndim;
        memset(r->shape, 0, sizeof r->shape);
        memcpy(r->shape, u->shape, (size_t)u->ndim * sizeof *u->shape);
    }
    graph_free(g);
    program_free(prog);
    free(defs);
    free(graph_path);
    return rc;
}

static int cmp_weight(const void *a, const void *b) {
    return strcmp(((const RWeight *)a)->name, ((const RWeight *)b)->name);
}

int ldmc_randckpt(const char *const *graphs, int n_graphs, const BuildOptions *bo, StDtype dtype, uint64_t seed,
                  const char *out_path) {
    RWeight *list = NULL;
    int n = 0, rc = 0;
    for (int i = 0; i < n_graphs && rc == 0; i++) rc = collect(graphs[i], bo, &list, &n);
    if (rc != 0) goto done;
    qsort(list, (size_t)n, sizeof *list, cmp_weight);
    size_t esize = st_dtype_size(dtype);
    /* header */
    json_t *hdr = json_object();
    char seedbuf[64];
    snprintf(seedbuf, sizeof seedbuf, "%llu", (unsigned long long)seed);
    json_t *meta = json_object();
    json_object_set_new(meta, "format", json_string("pt"));
    json_object_set_new(meta, "ldmc_random_weights",
                        json_string("RANDOM WEIGHTS - NOT A TRAINED MODEL. Made by `ldmc randckpt` for tests and "
                                    "benchmarks; images from it are noise."));
    json_object_set_new(meta, "ldmc_seed", json_string(seedbuf));
    json_object_set_new(meta, "ldmc_config", json_string(bo->config_path ? bo->config_path : ""));
    json_object_set_new(hdr, "__metadata__", meta);
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        json_t *shape = json_array();
        for (int d = 0; d < list[i].ndim; d++) {
            numel *= list[i].shape[d];
            json_array_append_new(shape, json_integer(list[i].shape[d]));
        }
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(st_dtype_name(dtype)));
        json_object_set_new(e, "shape", shape);
        json_t *offs = json_array();
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)(off + (uint64_t)numel * esize)));
        json_object_set_new(e, "data_offsets", offs);
        json_object_set_new(hdr, list[i].name, e);
        off += (uint64_t)numel * esize;
    }
    char *text = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    size_t hlen = strlen(text), padded = (hlen + 7) / 8 * 8;
    LdmOutFile o;
    if (ldm_out_open(&o, out_path) != 0) {
        free(text);
        rc = -1;
        goto done;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    fwrite(len8, 1, 8, o.fp);
    fwrite(text, 1, hlen, o.fp);
    for (size_t i = hlen; i < padded; i++) fputc(' ', o.fp);
    free(text);
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < list[i].ndim; d++) numel *= list[i].shape[d];
        float *v = ldm_xmalloc((size_t)numel * sizeof *v);
        fill(&list[i], seed, v, numel);
        if (dtype == ST_F32) {
            fwrite(v, sizeof *v, (size_t)numel, o.fp);
        } else {
            uint16_t *h = ldm_xmalloc((size_t)numel * sizeof *h);
            for (int64_t k = 0; k < numel; k++) h[k] = dtype == ST_F16 ? st_f32_to_f16(v[k]) : st_f32_to_bf16(v[k]);
            fwrite(h, sizeof *h, (size_t)numel, o.fp);
            free(h);
        }
        free(v);
    }
    rc = ldm_out_commit(&o);
done:
    for (int i = 0; i < n; i++) free(list[i].name);
    free(list);
    return rc;
}
