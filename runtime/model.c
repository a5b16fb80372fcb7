/*
 * model.c - binding a checkpoint to a generated model, and the graph runner.
 *
 * A generated model lists every weight it was compiled for; loading checks
 * each against the checkpoint (present, floating point, exactly the
 * expected shape) and binding copies them into the layout the kernels read
 * (model.h: LdmWeights). The graph runner is the
 * main() of every `ldmc GRAPH -o OUT` program: inputs by name from one
 * safetensors file, outputs by name to another.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "model.h"
#include "util.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

int64_t ldm_numel(const LdmTensorInfo *t) {
    int64_t k = 1;
    for (int i = 0; i < t->ndim; i++) k *= t->shape[i];
    return k;
}

const char *ldm_shape_str(int ndim, const int64_t *shape, char *buf, size_t size) {
    size_t k = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && k < size; i++)
        k += (size_t)snprintf(buf + k, size - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < size) snprintf(buf + k, size - k, "]");
    return buf;
}

/* ---- run-time extents -------------------------------------------------------- */

int ldm_check_extents(const LdmModel *m, const int64_t *ext) {
    for (int k = 0; ext && k < m->n_extents; k++) {
        const LdmExtent *e = &m->extents[k];
        if (ext[k] < 1 || ext[k] > e->max)
            return ldm_fail("%s: extent %s = %lld is out of range (1 <= %s <= %lld)", m->name, e->name, (long long)ext[k],
                            e->name, (long long)e->max);
        if (ext[k] % e->step)
            return ldm_fail("%s: extent %s = %lld is not a multiple of its step %lld (%s <= %lld)", m->name, e->name,
                            (long long)ext[k], (long long)e->step, e->name, (long long)e->max);
    }
    return 0;
}

void ldm_tensor_shape(const LdmModel *m, const LdmTensorInfo *t, const int64_t *ext, int64_t *shape) {
    for (int d = 0; d < t->ndim; d++) {
        int k = t->dyn[d] - 1;
        shape[d] = k < 0 || !ext ? t->shape[d] : t->shape[d] / m->extents[k].max * ext[k];
    }
}

int64_t ldm_numel_at(const LdmModel *m, const LdmTensorInfo *t, const int64_t *ext) {
    int64_t s[LDM_MAX_DIMS], n = 1;
    ldm_tensor_shape(m, t, ext, s);
    for (int d = 0; d < t->ndim; d++) n *= s[d];
    return n;
}

const char *ldm_tensor_shape_str(const LdmModel *m, const LdmTensorInfo *t, char *buf, size_t size) {
    size_t k = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < t->ndim && k < size; i++) {
        const char *sep = i ? ", " : "";
        const LdmExtent *e = t->dyn[i] ? &m->extents[t->dyn[i] - 1] : NULL;
        if (!e) k += (size_t)snprintf(buf + k, size - k, "%s%lld", sep, (long long)t->shape[i]);
        else if (t->shape[i] == e->max) k += (size_t)snprintf(buf + k, size - k, "%s%s<=%lld", sep, e->name, (long long)e->max);
        else
            k += (size_t)snprintf(buf + k, size - k, "%s%lld*%s<=%lld", sep, (long long)(t->shape[i] / e->max), e->name,
                                  (long long)t->shape[i]);
    }
    if (k < size) snprintf(buf + k, size - k, "]");
    return buf;
}

int ldm_forward(const LdmModel *m, const LdmW *w, const void *const *in, void *const *out, unsigned char *arena,
                const int64_t *ext) {
    int64_t full[64];
    if (ldm_check_extents(m, ext) != 0) return -1;
    if (!ext) {
        if (m->n_extents > 64) return ldm_fail("%s: %d run-time extents, at most 64", m->name, m->n_extents);
        for (int k = 0; k < m->n_extents; k++) full[k] = m->extents[k].max;
        ext = full;
    }
    return m->forward(w, in, out, arena, ext);
}

static int same_shape(int nd, const int64_t *a, int nd2, const int64_t *b) {
    if (nd != nd2) return 0;
    for (int i = 0; i < nd; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* Check one checkpoint tensor against what the model expects. */
static int check_tensor(const StFile *f, const StTensor *t, const LdmTensorInfo *want, const char *role) {
    char bw[160], bg[160];
    ldm_shape_str(want->ndim, want->shape, bw, sizeof bw);
    if (!t)
        return ldm_fail("%s: %s '%s' is missing (expected %s %s)", f->path, role, want->name,
                        want->dtype == LDM_I32 ? "I32/I64" : "F32/F16/BF16", bw);
    int ok_dtype = want->dtype == LDM_F32
                       ? (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64)
                       : (t->dtype == ST_I32 || t->dtype == ST_I64);
    if (!ok_dtype)
        return ldm_fail("%s: %s '%s' has dtype %s, expected %s", f->path, role, want->name, st_dtype_name(t->dtype),
                        want->dtype == LDM_I32 ? "I32 or I64" : "F32, F16 or BF16");
    if (!same_shape(want->ndim, want->shape, t->ndim, t->shape))
        return ldm_fail("%s: %s '%s' has shape %s, expected %s%s", f->path, role, want->name,
                        ldm_shape_str(t->ndim, t->shape, bg, sizeof bg), bw,
                        strcmp(role, "weight") == 0 ? " (a checkpoint for another model config?)" : "");
    return 0;
}

int ldm_weights_open(const LdmModel *m, const StFile *f, LdmWeights *w) {
    memset(w, 0, sizeof *w);
    w->n = m->n_weights;
    w->ptr = ldm_xcalloc((size_t)w->n + 1, sizeof *w->ptr);
    w->src = ldm_xcalloc((size_t)w->n + 1, sizeof *w->src);
    w->off = ldm_xcalloc((size_t)w->n + 1, sizeof *w->off);
    for (int i = 0; i < m->n_weights; i++) {
        const LdmTensorInfo *want = &m->weights[i];
        const StTensor *t = st_find(f, want->name);
        if (check_tensor(f, t, want, "weight") != 0) {
            ldm_weights_free(w);
            return -1;
        }
        if (want->dtype != LDM_F32) {
            ldm_weights_free(w);
            return ldm_fail("%s: weight '%s': integer weights are not supported (expected F32, F16 or BF16)", f->path,
                            want->name);
        }
        w->src[i] = *t;
        const int half = (t->dtype == ST_F16 || t->dtype == ST_BF16) && !(want->flags & LDM_TF_F32);
        const int layout = want->ndim < 2                       ? LDM_WL_ROWS
                           : (want->flags & LDM_TF_BPANELS) ? LDM_WL_BPANELS
                           : (want->flags & LDM_TF_APANELS) ? LDM_WL_APANELS
                                                            : LDM_WL_ROWS;
        w->ptr[i] = (LdmW){NULL, !half ? LDM_W_F32 : t->dtype == ST_F16 ? LDM_W_F16 : LDM_W_BF16, layout};
        const int64_t rows = want->ndim ? want->shape[0] : 1, cols = rows ? ldm_numel(want) / rows : 0;
        w->off[i] = w->bytes;
        w->bytes += (ldm_w_layout_size(layout, rows, cols) * (half ? 2 : 4) + 63) & ~(size_t)63;
    }
    return 0;
}

/* madvise(MADV_DONTNEED) on the whole pages inside [p, p + n): pages at
 * the ends may hold a neighbour still in use */
static void drop_pages(const void *p, size_t n) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1), hi = ((uintptr_t)p + n) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* rows [r0, r1) of weight i: the unit of work of ldm_weights_bind */
typedef struct BindPiece {
    int i;
    int64_t r0, r1;
} BindPiece;

static size_t st_elem_size(int dtype) { return dtype == ST_F64 ? 8 : dtype == ST_F32 ? 4 : 2; }

/* The checkpoint element at e (of dtype) as float32. */
static float st_elem_f32(int dtype, const unsigned char *e) {
    uint16_t h;
    double v;
    float f;
    switch (dtype) {
    case ST_F16: memcpy(&h, e, 2); return st_f16_to_f32(h);
    case ST_BF16: memcpy(&h, e, 2); return st_bf16_to_f32(h);
    case ST_F64: memcpy(&v, e, 8); return (float)v;
    default: memcpy(&f, e, 4); return f;
    }
}

/* n elements of a checkpoint tensor (dtype) at s as float32 (F16 with the
 * CPU's conversion instructions where it has them: exact either way) */
static void elems_to_f32(int dtype, const unsigned char *s, size_t n, float *f) {
    size_t k = 0;
#if defined(__F16C__)
    if (dtype == ST_F16)
        for (; k + 8 <= n; k += 8)
            _mm256_storeu_ps(f + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * k))));
#endif
    for (; k < n; k++) f[k] = st_elem_f32(dtype, s + k * st_elem_size(dtype));
}

/* n float32 to the half type (F16 or BF16), rounded to nearest even */
static void f32_to_half(int dtype, const float *f, size_t n, uint16_t *h) {
    size_t k = 0;
#if defined(__F16C__)
    if (dtype == ST_F16)
        for (; k + 8 <= n; k += 8)
            _mm_storeu_si128((__m128i *)(h + k), _mm256_cvtps_ph(_mm256_loadu_ps(f + k), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; k < n; k++) h[k] = dtype == ST_F16 ? ldm_f32_to_f16(f[k]) : ldm_f32_to_bf16(f[k]);
}

/* Per-thread scratch of ldm_weights_bind: reused across pieces, so the
 * large temporaries are not fresh zeroed pages for every piece. */
typedef struct BindScratch {
    float *f;
    uint16_t *h;
    size_t cap;          /* elements of each */
} BindScratch;

static void scratch_need(BindScratch *sc, size_t n) {
    if (n <= sc->cap) return;
    free(sc->f);
    free(sc->h);
    sc->f = ldm_xmalloc(n * sizeof *sc->f + 4);
    sc->h = ldm_xmalloc(n * sizeof *sc->h + 4);
    sc->cap = n;
}

/* touched: some LoRA of w->loras modifies this weight */
static void bind_piece(LdmWeights *w, const BindPiece *pc, int touched, BindScratch *sc) {
    const StTensor *t = &w->src[pc->i];
    const LdmW *d = &w->ptr[pc->i];
    const int64_t rows = t->ndim ? t->shape[0] : 1, cols = rows ? t->numel / rows : 0;
    const int64_t r1 = pc->r1 < rows ? pc->r1 : rows; /* rows past r1 are the layout's padding */
    const size_t ses = st_elem_size(t->dtype), n = (size_t)((r1 - pc->r0) * cols);
    const unsigned char *s = (const unsigned char *)t->data + (size_t)(pc->r0 * cols) * ses;
    unsigned char *dst = w->region + w->off[pc->i];
    const int same = (d->type == LDM_W_F32 && t->dtype == ST_F32) || (d->type == LDM_W_F16 && t->dtype == ST_F16) ||
                     (d->type == LDM_W_BF16 && t->dtype == ST_BF16);
    if (same && !touched) {
        ldm_w_relayout(d->layout, s, ses, rows, cols, pc->r0, pc->r1, dst);
    } else { /* to float32 first (F64; half that a kernel reads as float32; a LoRA to merge) */
        scratch_need(sc, n);
        float *f = sc->f;
        elems_to_f32(t->dtype, s, n, f);
        const int half = t->dtype == ST_F16 || t->dtype == ST_BF16;
        if (touched) {
            for (int l = 0; l < w->n_loras; l++)
                if (ldm_lora_apply_rows(w->loras[l], t->name, t->ndim, t->shape, pc->r0, r1, f) < 0) {
                    /* ldm_weights_set_loras' callers check the fit first */
                    fprintf(stderr, "fatal: internal error: merging a LoRA at bind time: %s\n", ldm_last_error());
                    abort();
                }
        }
        if (touched && half && d->type != LDM_W_F32) {
            /* back to the checkpoint's half type, rounded once */
            uint16_t *h = sc->h;
            f32_to_half(t->dtype, f, n, h);
            ldm_w_relayout(d->layout, h, 2, rows, cols, pc->r0, pc->r1, dst);
        } else {
            /* A half checkpoint's weight that a kernel reads as float32 is
             * rounded to the half type all the same: W + delta is then what
             * a merged checkpoint of that type holds, whichever storage the
             * kernels chose (`ldmc merge --dtype f16` binds to these bits). */
            if (touched && half) {
                f32_to_half(t->dtype, f, n, sc->h);
                elems_to_f32(t->dtype, (const unsigned char *)sc->h, n, f);
            }
            ldm_w_relayout(d->layout, f, 4, rows, cols, pc->r0, pc->r1, dst);
        }
    }
    drop_pages(s, n * ses);
}

void ldm_weights_bind(LdmWeights *w) {
    if (w->region || !w->n) return;
    /* one mapping, 2 MB aligned, in huge pages where the system gives them */
    const size_t huge = (size_t)2 << 20;
    w->map_bytes = w->bytes + huge;
    w->map = mmap(NULL, w->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (w->map == MAP_FAILED)
        ldm_fatal("out of memory: could not map %.1f MiB (%zu bytes) for the bound weights of a network (%d tensors)",
                  (double)w->map_bytes / 1048576.0, w->map_bytes, w->n);
    w->region = (unsigned char *)(((uintptr_t)w->map + huge - 1) & ~(uintptr_t)(huge - 1));
#ifdef MADV_HUGEPAGE
    madvise(w->region, w->bytes, MADV_HUGEPAGE);
#endif
    /* pieces of about 4 MB of the checkpoint, whole panels, so that the
     * mapped pages go back while the region fills */
    size_t np = 0, cap = 1024;
    BindPiece *pcs = ldm_xmalloc(cap * sizeof *pcs);
    for (int i = 0; i < w->n; i++) {
        const StTensor *t = &w->src[i];
        const int64_t rows = t->ndim ? t->shape[0] : 1, cols = rows ? t->numel / rows : 0;
        const size_t row_bytes = (size_t)cols * st_elem_size(t->dtype) + 1;
        const int64_t want = (int64_t)(((size_t)4 << 20) / row_bytes) + 1;
        for (int64_t r = 0, e; r < rows; r = e) {
            e = r;
            while (e < rows && e - r < want) e = ldm_w_panel_end(w->ptr[i].layout, rows, e);
            if (np == cap) pcs = ldm_xrealloc(pcs, (cap *= 2) * sizeof *pcs);
            pcs[np++] = (BindPiece){i, r, e};
        }
    }
    /* which weights a LoRA touches: looked up once, not per piece */
    unsigned char *touched = ldm_xcalloc((size_t)w->n + 1, 1);
    for (int i = 0; i < w->n; i++)
        for (int l = 0; l < w->n_loras && !touched[i]; l++) touched[i] = (unsigned char)ldm_lora_touches(w->loras[l], w->src[i].name);
    int nt = omp_get_max_threads();
    BindScratch *sc = ldm_xcalloc((size_t)nt + 1, sizeof *sc);
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t k = 0; k < np; k++) bind_piece(w, &pcs[k], touched[pcs[k].i], &sc[omp_get_thread_num()]);
    for (int t = 0; t < nt; t++) {
        free(sc[t].f);
        free(sc[t].h);
    }
    free(sc);
    free(touched);
    free(pcs);
    for (int i = 0; i < w->n; i++) {
        w->ptr[i].p = w->region + w->off[i];
        drop_pages(w->src[i].data, w->src[i].nbytes); /* the pages the pieces shared */
    }
    /* the LoRA factors the merge read leave the resident set too */
    for (int l = 0; l < w->n_loras; l++) ldm_lora_release_pages(w->loras[l]);
}

int ldm_weights_load(const LdmModel *m, const StFile *f, LdmWeights *w) {
    if (ldm_weights_open(m, f, w) != 0) return -1;
    ldm_weights_bind(w);
    return 0;
}

void ldm_weights_release(LdmWeights *w) {
    if (w->map) munmap(w->map, w->map_bytes);
    w->map = NULL, w->region = NULL, w->map_bytes = 0;
    for (int i = 0; i < w->n; i++) {
        w->ptr[i].p = NULL;
        drop_pages(w->src[i].data, w->src[i].nbytes);
    }
}

void ldm_weights_set_loras(LdmWeights *w, LdmLora *const *loras, int n) {
    int hit = 0;
    for (int i = 0; w->region && i < w->n && !hit; i++) {
        for (int l = 0; l < w->n_loras && !hit; l++) hit = ldm_lora_touches(w->loras[l], w->src[i].name);
        for (int l = 0; l < n && !hit; l++) hit = ldm_lora_touches(loras[l], w->src[i].name);
    }
    /* rebuilt from the checkpoint at the next bind, never un-merged */
    if (hit) ldm_weights_release(w);
    w->loras = n > 0 ? loras : NULL;
    w->n_loras = n > 0 ? n : 0;
}

void ldm_weights_free(LdmWeights *w) {
    ldm_weights_release(w);
    free(w->ptr);
    free(w->src);
    free(w->off);
    memset(w, 0, sizeof *w);
}

unsigned char *ldm_arena_new(const LdmModel *m) {
    unsigned char *a = ldm_arena_alloc(m->arena_bytes ? m->arena_bytes : 64, "the activation arena (memory plan)");
    memset(a, 0, m->arena_bytes);
    return a;
}

/* ---- graph runner ---------------------------------------------------------- */

static void runner_usage(const LdmModel *m, FILE *fp) {
    fprintf(fp,
            "usage: %s --weights CKPT.safetensors --inputs IN.safetensors --outputs OUT.safetensors [--vae FILE]\n"
            "          [--prefix P] [--repeat N] [--compute f32|bf16] [--extent NAME=VALUE]... [--lora FILE[:MULT]]...\n"
            "       %s --weights CKPT.safetensors --random-inputs SEED [--repeat N] [--outputs OUT]\n"
            "Runs graph '%s' (%s).\n"
            "Reads the inputs by name (P + name) from IN, writes the outputs by name to OUT.\n"
            "  --repeat N         run N times and print the median time per call\n"
            "  --random-inputs S  feed N(0,1) floats and small integer ids from seed S (benchmarks)\n"
            "  --compute f32|bf16 f32 (default), or the GEMM kernel's products in bfloat16 with float32\n"
            "                     sums (CPUs with AVX-512 BF16; Winograd, attention and the rest stay f32)\n"
            "  --extent NAME=V    run at value V of run-time extent NAME (repeatable; default: its maximum);\n"
            "                     inputs and outputs then have the shapes of that value\n"
            "  --lora FILE[:MULT] merge kohya LoRA FILE at multiplier MULT (default 1, UNet and text encoder)\n"
            "                     into the weights as they are bound (repeatable: merged in order)\n"
            "  --vae FILE         the autoencoder's weights (first_stage_model.*) from FILE instead, named\n"
            "                     with or without that prefix (e.g. vae-ft-mse-840000-ema-pruned)\n"
            "CKPT and FILE may be safetensors files or PyTorch .ckpt archives.\n",
            m->name, m->name, m->name, m->banner);
    if (m->n_extents) {
        fprintf(fp, "extents:");
        for (int k = 0; k < m->n_extents; k++) {
            fprintf(fp, " %s<=%lld", m->extents[k].name, (long long)m->extents[k].max);
            if (m->extents[k].step > 1) fprintf(fp, " (step %lld)", (long long)m->extents[k].step);
        }
        fprintf(fp, "\n");
    }
    fprintf(fp, "inputs:");
    char b[160];
    for (int i = 0; i < m->n_inputs; i++)
        fprintf(fp, " %s %s%s", m->inputs[i].name, m->inputs[i].dtype == LDM_I32 ? "i32" : "f32",
                ldm_tensor_shape_str(m, &m->inputs[i], b, sizeof b));
    fprintf(fp, "\noutputs:");
    for (int i = 0; i < m->n_outputs; i++)
        fprintf(fp, " %s %s%s", m->outputs[i].name, m->outputs[i].dtype == LDM_I32 ? "i32" : "f32",
                ldm_tensor_shape_str(m, &m->outputs[i], b, sizeof b));
    fprintf(fp, "\n");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* --extent NAME=VALUE into ext[]: 0, or -1 with a message. */
static int parse_extent(const LdmModel *m, const char *v, int64_t *ext) {
    const char *eq = strchr(v, '=');
    if (!eq || eq == v) return ldm_fail("--extent expects NAME=VALUE, got '%s'", v);
    int k = 0;
    while (k < m->n_extents && (strlen(m->extents[k].name) != (size_t)(eq - v) || strncmp(m->extents[k].name, v, (size_t)(eq - v))))
        k++;
    if (k == m->n_extents) {
        char names[512] = "";
        for (int i = 0; i < m->n_extents; i++) {
            size_t n = strlen(names);
            snprintf(names + n, sizeof names - n, "%s%s", i ? ", " : "", m->extents[i].name);
        }
        return ldm_fail("--extent %s: %s has no run-time extent '%.*s' (%s%s)", v, m->name, (int)(eq - v), v,
                        m->n_extents ? "its extents: " : "it has none", names);
    }
    char *end;
    long long x = strtoll(eq + 1, &end, 10);
    if (!eq[1] || *end) return ldm_fail("--extent %s: the value must be an integer", v);
    ext[k] = x;
    return 0;
}

/* Open the --lora files against m's weights (checked: every weight a LoRA
 * touches must fit), report on stderr what each merges. 0 or -1. */
static int runner_open_loras(const LdmModel *m, const LdmWeights *w, char **files, const float *mults, int n,
                             LdmLora **loras) {
    const char **keys = ldm_xcalloc((size_t)w->n + 1, sizeof *keys);
    for (int i = 0; i < w->n; i++) keys[i] = m->weights[i].name;
    int rc = 0;
    for (int k = 0; k < n && !rc; k++) {
        rc = ldm_lora_open(&loras[k], files[k], keys, w->n, mults[k], mults[k]);
        for (int i = 0; i < w->n && !rc; i++) rc = ldm_lora_check(loras[k], w->src[i].name, w->src[i].ndim, w->src[i].shape);
        if (rc) break;
        int nu = ldm_lora_n_unmatched(loras[k]);
        fprintf(stderr, "lora %s: %d modules merged", files[k], ldm_lora_n_modules(loras[k]));
        if (nu) {
            fprintf(stderr, ", %d keys matched nothing (first:", nu);
            for (int i = 0; i < nu && i < LDM_LORA_KEEP_UNMATCHED; i++)
                fprintf(stderr, "%s %s", i ? "," : "", ldm_lora_unmatched(loras[k], i));
            fprintf(stderr, "%s)", nu > LDM_LORA_KEEP_UNMATCHED ? ", ..." : "");
        }
        fprintf(stderr, "\n");
    }
    free(keys);
    return rc;
}

/* Free the --lora state; returns rc. */
static int runner_loras_free(char **files, LdmLora **loras, int n, float *mults, int rc) {
    for (int k = 0; k < n; k++) {
        free(files[k]);
        ldm_lora_free(loras[k]);
    }
    free(files);
    free(loras);
    free(mults);
    return rc;
}

int ldm_runner_main(const LdmModel *m, int argc, char **argv) {
    const char *weights = NULL, *inputs = NULL, *outputs = NULL, *prefix = "", *vae = NULL;
    int repeat = 1, random_inputs = 0, n_loras = 0;
    unsigned long long seed = 0;
    char **lora_files = ldm_xcalloc((size_t)argc + 1, sizeof *lora_files);
    float *lora_mults = ldm_xcalloc((size_t)argc + 1, sizeof *lora_mults);
    LdmLora **loras = ldm_xcalloc((size_t)argc + 1, sizeof *loras);
    int64_t ext[64] = {0}; /* values of the run-time extents (ldm_forward allows 64) */
    for (int k = 0; k < m->n_extents && k < 64; k++) ext[k] = m->extents[k].max;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            runner_usage(m, stdout);
            return runner_loras_free(lora_files, loras, n_loras, lora_mults, 0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: error: option %s needs a value (see --help)\n", argv[0], a);
            return runner_loras_free(lora_files, loras, n_loras, lora_mults, 2);
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--weights")) weights = v;
        else if (!strcmp(a, "--vae")) vae = v;
        else if (!strcmp(a, "--inputs")) inputs = v;
        else if (!strcmp(a, "--outputs")) outputs = v;
        else if (!strcmp(a, "--prefix")) prefix = v;
        else if (!strcmp(a, "--lora")) {
            double mult;
            if (ldm_lora_spec_parse(v, &lora_files[n_loras], &mult) != 0) {
                fprintf(stderr, "%s: error: %s\n", argv[0], ldm_last_error());
                return runner_loras_free(lora_files, loras, n_loras, lora_mults, 2);
            }
            lora_mults[n_loras++] = (float)mult;
        }
        else if (!strcmp(a, "--extent")) {
            if (parse_extent(m, v, ext) != 0) {
                fprintf(stderr, "%s: error: %s\n", argv[0], ldm_last_error());
                return runner_loras_free(lora_files, loras, n_loras, lora_mults, 2);
            }
        }
        else if (!strcmp(a, "--compute")) {
            if (ldm_set_compute(v) != 0) {
                fprintf(stderr, "%s: error: %s\n", argv[0], ldm_last_error());
                return runner_loras_free(lora_files, loras, n_loras, lora_mults, 2);
            }
        }
        else if (!strcmp(a, "--random-inputs")) {
            char *end;
            seed = strtoull(v, &end, 10);
            if (*end || !*v) {
                fprintf(stderr, "%s: error: --random-inputs expects a seed (non-negative integer), got '%s'\n", argv[0], v);
                return runner_loras_free(lora_files, loras, n_loras, lora_mults, 2);
            }
            random_inputs = 1;
        }
        else if (!strcmp(a, "--repeat")) {
            char *end;
            long r = strtol(v, &end, 10);
            if (*end || r < 1 || r > 100000) {
                fprintf(stderr, "%s: error: --repeat expects a positive integer, got '%s'\n", argv[0], v);
                return runner_loras_free(lora_files, loras, n_loras, lora_mults, 2);
            }
            repeat = (int)r;
        } else {
            fprintf(stderr, "%s: error: unknown option '%s' (see --help)\n", argv[0], a);
            return runner_loras_free(lora_files, loras, n_loras, lora_mults, 2);
        }
    }
    if (ldm_check_extents(m, ext) != 0) {
        fprintf(stderr, "%s: error: --extent: %s\n", argv[0], ldm_last_error());
        return runner_loras_free(lora_files, loras, n_loras, lora_mults, 2);
    }
    if (!weights || (!random_inputs && (!inputs || !outputs)) || (random_inputs && inputs)) {
        fprintf(stderr, "%s: error: give --weights and either --inputs and --outputs, or --random-inputs\n", argv[0]);
        runner_usage(m, stderr);
        return runner_loras_free(lora_files, loras, n_loras, lora_mults, 2);
    }
    int rc = 1;
    StFile wf = {0}, inf = {0};
    LdmWeights w = {0};
    void **in = ldm_xcalloc((size_t)m->n_inputs + 1, sizeof *in);
    void **out = ldm_xcalloc((size_t)m->n_outputs + 1, sizeof *out);
    unsigned char *arena = NULL;
    ldm_profile_init();
    ldm_kernels_init();
    double t0 = ldm_now();
    if (st_open(&wf, weights) != 0 || (vae && st_replace_vae(&wf, vae) != 0) || ldm_weights_open(m, &wf, &w) != 0)
        goto done;
    if (runner_open_loras(m, &w, lora_files, lora_mults, n_loras, loras) != 0) goto done;
    ldm_weights_set_loras(&w, loras, n_loras);
    ldm_weights_bind(&w);
    double t_load = ldm_now() - t0;
    if (random_inputs) {
        uint64_t st = seed * 0x9e3779b97f4a7c15ull + 1;
        for (int i = 0; i < m->n_inputs; i++) {
            int64_t n = ldm_numel_at(m, &m->inputs[i], ext);
            in[i] = ldm_aligned_alloc((size_t)n * 4);
            for (int64_t k = 0; k < n; k++) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                double u1 = ((double)(st >> 11) + 0.5) / 9007199254740992.0;
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                double u2 = (double)(st >> 11) / 9007199254740992.0;
                if (m->inputs[i].dtype == LDM_I32) ((int32_t *)in[i])[k] = (int32_t)(st >> 56);
                else ((float *)in[i])[k] = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
            }
        }
    } else if (st_open(&inf, inputs) != 0) {
        goto done;
    }
    for (int i = 0; i < m->n_inputs && !random_inputs; i++) {
        const LdmTensorInfo *want = &m->inputs[i];
        char *name = ldm_xasprintf("%s%s", prefix, want->name);
        const StTensor *t = st_find(&inf, name);
        LdmTensorInfo named = *want; /* at its run-time shape */
        named.name = name;
        ldm_tensor_shape(m, want, ext, named.shape);
        int bad = check_tensor(&inf, t, &named, "input");
        if (!bad) {
            in[i] = ldm_aligned_alloc((size_t)ldm_numel(&named) * 4);
            bad = want->dtype == LDM_I32 ? st_to_i32(t, in[i]) : st_to_f32(t, in[i]);
            if (bad) ldm_fail("%s: %s", inputs, ldm_last_error());
        }
        free(name);
        if (bad) goto done;
    }
    for (int i = 0; i < m->n_outputs; i++) out[i] = ldm_aligned_alloc((size_t)ldm_numel_at(m, &m->outputs[i], ext) * 4 + 4);
    arena = ldm_arena_new(m);
    double *times = ldm_xcalloc((size_t)repeat, sizeof *times);
    for (int r = 0; r < repeat; r++) {
        double s = ldm_now();
        if (ldm_forward(m, w.ptr, (const void *const *)in, out, arena, ext) != 0) {
            /* a bad value in the inputs (e.g. a token id out of range) */
            if (inputs) ldm_fail("%s: %s", inputs, ldm_last_error());
            free(times);
            goto done;
        }
        times[r] = ldm_now() - s;
    }
    ldm_profile_report();
    qsort(times, (size_t)repeat, sizeof *times, cmp_double);
    double med = times[repeat / 2];
    free(times);
    StWriter *sw = st_writer_new();
    for (int i = 0; i < m->n_outputs; i++) {
        const LdmTensorInfo *o = &m->outputs[i];
        int64_t shape[LDM_MAX_DIMS];
        ldm_tensor_shape(m, o, ext, shape);
        st_writer_add(sw, o->name, o->dtype == LDM_I32 ? ST_I32 : ST_F32, o->ndim, shape, out[i]);
    }
    st_writer_meta(sw, "ldmc", m->banner);
    int wrc = outputs ? st_writer_save(sw, outputs) : 0;
    st_writer_free(sw);
    if (wrc != 0) goto done;
    fprintf(stderr, "%s: kernels %s, %d threads, compute %s\n", m->name, ldm_kernels_isa(), omp_get_max_threads(),
            ldm_compute_mode());
    fprintf(stderr, "%s: load %.3f s, forward %.4f s (median of %d), %.2f GFLOP/s, arena %.1f MiB, peak RSS %.1f MiB\n",
            m->name, t_load, med, repeat, med > 0 ? (m->flops_at ? m->flops_at(ext) : m->flops) / med / 1e9 : 0.0, (double)m->arena_bytes / 1048576.0,
            (double)ldm_peak_rss() / 1048576.0);
    rc = 0;
done:
    if (rc) fprintf(stderr, "%s: error: %s\n", argv[0], ldm_last_error());
    for (int i = 0; i < m->n_inputs; i++) free(in[i]);
    for (int i = 0; i < m->n_outputs; i++) free(out[i]);
    free(in);
    free(out);
    free(arena);
    ldm_weights_free(&w);
    st_close(&inf);
    st_close(&wf);
    return runner_loras_free(lora_files, loras, n_loras, lora_mults, rc);
}

/* ---- weights stored under other names -------------------------------------- */

int ldm_weights_open_mapped(const LdmModel *m, const StFile *f, LdmKeyMapFn map, LdmWeights *w) {
    if (!map) return ldm_weights_open(m, f, w);
    memset(w, 0, sizeof *w);
    /* Check every weight under its mapped key (so errors name the key that
     * is really missing or wrong), then bind them through a view of f in
     * which those tensors carry the model's names. */
    StFile view = *f;
    view.tensors = ldm_xcalloc((size_t)m->n_weights + 1, sizeof *view.tensors);
    view.n_tensors = m->n_weights;
    char buf[1024];
    for (int i = 0; i < m->n_weights; i++) {
        const LdmTensorInfo *want = &m->weights[i];
        const char *key = map(want->name, buf, sizeof buf);
        const StTensor *t = st_find(f, key);
        LdmTensorInfo named = *want;
        named.name = key;
        if (check_tensor(f, t, &named, "weight") != 0) {
            free(view.tensors);
            return -1;
        }
        view.tensors[i] = *t;
        view.tensors[i].name = (char *)want->name;
    }
    int rc = ldm_weights_open(m, &view, w); /* w->src copies the tensors: the view can go */
    free(view.tensors);
    return rc;
}

int ldm_weights_load_mapped(const LdmModel *m, const StFile *f, LdmKeyMapFn map, LdmWeights *w) {
    if (ldm_weights_open_mapped(m, f, map, w) != 0) return -1;
    ldm_weights_bind(w);
    return 0;
}


const char *ldm_ema_key(const char *name, char *buf, size_t size) {
    static const char from[] = "model.", to[] = "model_ema.";
    if (strncmp(name, from, sizeof from - 1) != 0 || size < sizeof to) return name;
    /* LitEma: s_name = name.replace('.', '') of the DiffusionWrapper's
     * parameter name (the part after "model."); a key too long for buf is
     * cut short, which no checkpoint holds: a clear "missing" error. */
    size_t o = sizeof to - 1;
    memcpy(buf, to, o);
    for (const char *c = name + sizeof from - 1; *c && o + 1 < size; c++)
        if (*c != '.') buf[o++] = *c;
    buf[o] = 0;
    return buf;
}
