/*
 * textcond.c - a prompt to the UNet's conditioning (see textcond.h).
 */
#define _GNU_SOURCE
#include "textcond.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm_limits.h"
#include "safetensors.h"
#include "util.h"

/* ---- embeddings ------------------------------------------------------------ */

/* Vectors of an embedding tensor ([n, width] or [width]). */
static int64_t emb_rows(const StTensor *t) { return t->ndim == 2 ? t->shape[0] : 1; }

int ldm_embedding_load(const char *path, int width, LdmEmbedding *out, char *why, size_t why_size) {
    return ldm_embedding_load_key(path, NULL, width, out, why, why_size);
}

int ldm_embedding_load_key(const char *path, const char *key, int width, LdmEmbedding *out, char *why,
                           size_t why_size) {
    memset(out, 0, sizeof *out);
    if (why_size) why[0] = 0;
    StFile f;
    if (st_open(&f, path) != 0) return -1; /* the message names the file and what is wrong */
    /* create_embedding_from_data: string_to_param (a .pt's dict, flattened
     * to "string_to_param.*" keys) or a single tensor (diffusers concept,
     * `emb_params`); SDXL's: the tensors clip_l and clip_g, one per text
     * encoder (the webui's textual_inversion_key) */
    const StTensor *t = NULL;
    int rc = 0;
    if (key) {
        t = st_find(&f, key);
        const StTensor *other = st_find(&f, !strcmp(key, "clip_l") ? "clip_g" : "clip_l");
        if (!t || !other) {
            snprintf(why, why_size, "%s: no clip_l and clip_g tensors (not an SDXL textual-inversion embedding)",
                     path);
            rc = 1;
            goto done;
        }
        if (emb_rows(t) != emb_rows(other)) {
            rc = ldm_fail("%s: %s holds %lld vectors, %s %lld: expected as many in both", path, t->name,
                          (long long)emb_rows(t), other->name, (long long)emb_rows(other));
            goto done;
        }
    } else {
        if (f.n_tensors == 1) t = &f.tensors[0];
        for (int i = 0; i < f.n_tensors && !t; i++)
            if (!strcmp(f.tensors[i].name, "emb_params") || !strncmp(f.tensors[i].name, "string_to_param.", 16))
                t = &f.tensors[i];
    }
    if (!t) {
        snprintf(why, why_size, "%s: %d tensors, none of them emb_params or string_to_param.* (not an SD v1 "
                 "textual-inversion embedding)", path, f.n_tensors);
        rc = 1;
        goto done;
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64) {
        rc = ldm_fail("%s: tensor '%s' has dtype %s, expected F32, F16 or BF16", path, t->name,
                      st_dtype_name(t->dtype));
        goto done;
    }
    int64_t w = t->ndim ? t->shape[t->ndim - 1] : 0, n = t->ndim == 2 ? t->shape[0] : 1;
    if (t->ndim != 1 && t->ndim != 2) {
        rc = ldm_fail("%s: tensor '%s' has %d dimensions, expected [vectors, width] or [width]", path, t->name,
                      t->ndim);
        goto done;
    }
    if (w != width) {
        snprintf(why, why_size, "%s: vectors of width %lld, expected %d (an embedding for another model)", path,
                 (long long)w, width);
        rc = 1;
        goto done;
    }
    if (n < 1 || n > PROMPT_CHUNK_LENGTH) {
        rc = ldm_fail("%s: %lld vectors, expected 1 to %d", path, (long long)n, PROMPT_CHUNK_LENGTH);
        goto done;
    }
    out->vec = ldm_xmalloc((size_t)(n * w) * sizeof(float));
    st_to_f32(t, out->vec);
    for (int64_t k = 0; k < n * w; k++)
        if (!isfinite(out->vec[k])) {
            rc = ldm_fail("%s: tensor '%s' holds a non-finite value at vector %lld, element %lld", path, t->name,
                          (long long)(k / w), (long long)(k % w));
            goto done;
        }
    out->n_vectors = (int)n;
    out->name = ldm_path_stem(path);
    out->path = ldm_xstrdup(path);
done:
    st_close(&f);
    if (rc != 0) ldm_embedding_free(out);
    return rc;
}

void ldm_embedding_free(LdmEmbedding *e) {
    free(e->name);
    free(e->path);
    free(e->vec);
    memset(e, 0, sizeof *e);
}

static int cmp_emb(const void *a, const void *b) {
    return strcmp(((const LdmEmbedding *)a)->name, ((const LdmEmbedding *)b)->name);
}

static int has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n > k && !strcmp(s + n - k, suf);
}

int ldm_embeddings_load_dir(const char *dir, int width, LdmEmbeddings *out) {
    return ldm_embeddings_load_dir_key(dir, NULL, width, out);
}

int ldm_embeddings_load_dir_key(const char *dir, const char *key, int width, LdmEmbeddings *out) {
    memset(out, 0, sizeof *out);
    out->width = width;
    out->notes = ldm_xstrdup("");
    DIR *d = opendir(dir);
    if (!d) return ldm_fail("--embeddings %s: cannot open the directory: %s", dir, strerror(errno));
    /* sorted file names: the same order (and the same message) on every system */
    char **names = NULL;
    int n = 0, cap = 0;
    for (struct dirent *de; (de = readdir(d));) {
        /* the webui's kinds: safetensors, and torch.save's .pt / .bin (its
         * string_to_param dict, a diffusers concept's one tensor) */
        if (de->d_name[0] == '.' ||
            !(has_suffix(de->d_name, ".safetensors") || has_suffix(de->d_name, ".pt") || has_suffix(de->d_name, ".bin")))
            continue;
        if (n == cap) names = ldm_xrealloc(names, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *names);
        names[n++] = ldm_xasprintf("%s/%s", dir, de->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, (int (*)(const void *, const void *))strcmp);
    int rc = 0;
    out->e = ldm_xcalloc((size_t)n + 1, sizeof *out->e);
    for (int i = 0; i < n && rc == 0; i++) {
        char why[1024];
        int r = ldm_embedding_load_key(names[i], key, width, &out->e[out->n], why, sizeof why);
        if (r < 0) rc = -1;
        else if (r == 1) {
            char *notes = ldm_xasprintf("%s%s\n", out->notes, why);
            free(out->notes);
            out->notes = notes;
            out->n_skipped++;
        } else {
            out->n++;
        }
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (rc != 0) {
        ldm_embeddings_free(out);
        return -1;
    }
    qsort(out->e, (size_t)out->n, sizeof *out->e, cmp_emb);
    for (int i = 1; i < out->n; i++)
        if (!strcmp(out->e[i].name, out->e[i - 1].name)) {
            ldm_fail("--embeddings %s: two embeddings are called '%s'", dir, out->e[i].name);
            ldm_embeddings_free(out);
            return -1;
        }
    return 0;
}

void ldm_embeddings_free(LdmEmbeddings *e) {
    for (int i = 0; i < e->n; i++) ldm_embedding_free(&e->e[i]);
    free(e->e);
    free(e->notes);
    memset(e, 0, sizeof *e);
}

/* ---- the encoder ------------------------------------------------------------- */

int ldm_prompt_syntax_parse(const char *s, LdmPromptSyntax *out) {
    if (!strcmp(s, "webui")) *out = LDM_SYNTAX_WEBUI;
    else if (!strcmp(s, "plain")) *out = LDM_SYNTAX_PLAIN;
    else return ldm_fail("--prompt-syntax: expected webui or plain, got '%s'", s);
    return 0;
}

const char *ldm_prompt_syntax_name(LdmPromptSyntax s) { return s == LDM_SYNTAX_PLAIN ? "plain" : "webui"; }

/* The text encoder's tables: input/output indices, its batch extent. */
typedef struct ClipIo {
    const LdmModel *m;
    int in_tok, in_keep, in_rows;  /* -1 when absent (keep/rows: built without EMBEDS) */
    int out_hidden, out_skip;      /* out_skip -1: no hidden_skip */
    int out_pooled;                /* -1: no pooled output */
    int batch_ext;                 /* extent index of tokens' first dim, -1 if static */
    int64_t max_batch;
    int ctx, width, skips;         /* 77, width, CLIP skips available */
} ClipIo;

static int clip_io(const LdmTextEncoder *te, ClipIo *io) {
    const LdmModel *m = io->m = te->nets->models[te->model];
    io->in_tok = ldm_model_input(m, "tokens");
    io->in_keep = ldm_model_input(m, "emb_keep");
    io->in_rows = ldm_model_input(m, "emb_rows");
    io->out_hidden = ldm_model_output(m, "hidden");
    io->out_skip = ldm_model_output(m, "hidden_skip");
    io->out_pooled = ldm_model_output(m, "pooled");
    if (io->in_tok < 0 || io->out_hidden < 0 || m->inputs[io->in_tok].ndim != 2 ||
        m->outputs[io->out_hidden].ndim != 3)
        return ldm_fail("internal: model '%s' is not a text encoder (input tokens [B, 77], output hidden [B, 77, "
                        "width])", m->name);
    const LdmTensorInfo *tok = &m->inputs[io->in_tok];
    io->ctx = (int)tok->shape[1];
    io->width = (int)m->outputs[io->out_hidden].shape[2];
    io->batch_ext = tok->dyn[0] > 0 ? tok->dyn[0] - 1 : -1;
    io->max_batch = tok->shape[0];
    io->skips = io->out_skip >= 0 ? (int)m->outputs[io->out_skip].shape[0] : 1;
    if (io->ctx != PROMPT_CHUNK_LENGTH + 2)
        return ldm_fail("internal: text encoder '%s' takes %d tokens, expected %d", m->name, io->ctx,
                        PROMPT_CHUNK_LENGTH + 2);
    if ((io->in_keep < 0) != (io->in_rows < 0))
        return ldm_fail("internal: text encoder '%s' has only one of emb_keep and emb_rows", m->name);
    return 0;
}

int ldm_text_encoder_check(const LdmTextEncoder *te) {
    ClipIo io;
    if (clip_io(te, &io) != 0) return -1;
    if (te->clip_skip < 1 || te->clip_skip > io.skips)
        return ldm_fail("--clip-skip %d: this executable's text encoder gives CLIP skip 1 to %d (1 = the last "
                        "layer); build it with CLIP_SKIPS=%d for more (make txt2img ... CLIP_SKIPS=N)",
                        te->clip_skip, io.skips, te->clip_skip > 1 ? te->clip_skip : 2);
    if (te->emb && te->emb->n > 0 && io.in_keep < 0)
        return ldm_fail("internal: text encoder '%s' was compiled without EMBEDS=1: it cannot take embeddings",
                        io.m->name);
    if (te->emb && te->emb->width != io.width)
        return ldm_fail("internal: embeddings checked for width %d, the text encoder's is %d", te->emb->width,
                        io.width);
    return 0;
}

/* Run the text encoder on rows [0, n) of tokens (n * 77 ids) with keep/rows
 * (NULL: no embedding rows), writing the CLIP-skip layer's output to z. */
static int run_clip(const LdmTextEncoder *te, const ClipIo *io, int n, const int32_t *tokens, const float *keep,
                    const float *rows, float *z, float *pooled) {
    const LdmModel *m = io->m;
    int64_t *ext = ldm_xcalloc((size_t)m->n_extents + 1, sizeof *ext);
    for (int k = 0; k < m->n_extents; k++) ext[k] = m->extents[k].max;
    if (io->batch_ext >= 0) ext[io->batch_ext] = n;
    const void **in = ldm_xcalloc((size_t)m->n_inputs + 1, sizeof *in);
    void **out = ldm_xcalloc((size_t)m->n_outputs + 1, sizeof *out);
    float *ones = NULL, *zeros = NULL;
    int64_t rows_n = (int64_t)n * io->ctx;
    int rc = 0;
    for (int i = 0; i < m->n_inputs; i++) {
        if (i == io->in_tok) in[i] = tokens;
        else if (i == io->in_keep) in[i] = keep ? keep : (ones = ldm_xmalloc((size_t)rows_n * sizeof(float)));
        else if (i == io->in_rows)
            in[i] = rows ? rows : (zeros = ldm_xcalloc((size_t)(rows_n * io->width), sizeof(float)));
        else rc = ldm_fail("internal: text encoder '%s' has an unknown input '%s'", m->name, m->inputs[i].name);
    }
    if (ones)
        for (int64_t k = 0; k < rows_n; k++) ones[k] = 1.0f;
    for (int i = 0; i < m->n_outputs && rc == 0; i++)
        out[i] = ldm_aligned_alloc((size_t)ldm_numel_at(m, &m->outputs[i], ext) * sizeof(float) + 4);
    if (rc == 0 && io->batch_ext < 0 && n != io->max_batch)
        rc = ldm_fail("internal: text encoder '%s' has a fixed batch of %lld, asked for %d", m->name,
                      (long long)io->max_batch, n);
    if (rc == 0) rc = ldm_nets_run_ext(te->nets, te->model, in, out, ext);
    if (rc == 0) {
        /* hidden_skip[s - 1] is the contiguous slice s - 1 of [S, n, 77, width] */
        int64_t slice = rows_n * io->width;
        const float *src = te->clip_skip == 1 || io->out_skip < 0
                               ? out[io->out_hidden]
                               : (const float *)out[io->out_skip] + (int64_t)(te->clip_skip - 1) * slice;
        memcpy(z, src, (size_t)slice * sizeof(float));
        if (pooled && io->out_pooled >= 0) /* the first row's */
            memcpy(pooled, out[io->out_pooled], (size_t)m->outputs[io->out_pooled].shape[1] * sizeof(float));
    }
    for (int i = 0; i < m->n_outputs; i++) free(out[i]);
    free(out);
    free(in);
    free(ones);
    free(zeros);
    free(ext);
    return rc;
}

/* sd_emphasis.EmphasisOriginal on one chunk z[77 * width] (float32 as
 * torch: the means are float32 tensors, their ratio a float32 division). */
static void emphasis_original(float *z, const double *mult, int ctx, int width) {
    int64_t n = (int64_t)ctx * width;
    double s0 = 0, s1 = 0;
    for (int64_t k = 0; k < n; k++) s0 += z[k];
    for (int r = 0; r < ctx; r++) {
        float m = (float)mult[r];
        for (int c = 0; c < width; c++) {
            float v = z[(int64_t)r * width + c] * m;
            z[(int64_t)r * width + c] = v;
            s1 += v;
        }
    }
    float m0 = (float)(s0 / (double)n), m1 = (float)(s1 / (double)n);
    float ratio = m0 / m1;
    for (int64_t k = 0; k < n; k++) z[k] *= ratio;
}

int ldm_text_chunks(const LdmTextEncoder *te, const char *prompt, PromptChunks *ch) {
    memset(ch, 0, sizeof *ch);
    size_t bytes = strlen(prompt);
    if (bytes > LDM_MAX_PROMPT_BYTES)
        return ldm_fail("the text is %zu bytes; the limit is %d (a prompt takes at most its chunks of 75 tokens)",
                        bytes, LDM_MAX_PROMPT_BYTES);
    const LdmEmbeddings *emb = te->emb;
    const int ctx = PROMPT_CHUNK_LENGTH + 2;
    if (te->syntax == LDM_SYNTAX_PLAIN) {
        /* scripts/txt2img.py: the CompVis tokenizer call, truncated */
        ch->n_chunks = 1;
        ch->tokens = ldm_xmalloc((size_t)ctx * sizeof *ch->tokens);
        ch->multipliers = ldm_xmalloc((size_t)ctx * sizeof *ch->multipliers);
        if (clip_tokenize_style(te->tok, te->style, prompt, ctx, ch->tokens, &ch->token_count) != 0) {
            prompt_chunks_free(ch);
            return -1;
        }
        for (int k = 0; k < ctx; k++) ch->multipliers[k] = 1.0;
    } else {
        int n_emb = emb ? emb->n : 0;
        PromptEmbedding *pe = ldm_xcalloc((size_t)n_emb + 1, sizeof *pe);
        for (int k = 0; k < n_emb; k++) pe[k] = (PromptEmbedding){emb->e[k].name, emb->e[k].n_vectors};
        int rc = prompt_tokenize(te->tok, prompt, pe, n_emb, ch);
        free(pe);
        if (rc != 0) return -1;
        /* FrozenCLIPEmbedderWithCustomWordsBase.process_tokens: if id_end != id_pad,
         * every position after a chunk's first end token becomes id_pad (0 for
         * FrozenOpenCLIPEmbedderWithCustomWords, SD 2.x) */
        int32_t pad = te->style ? te->style->pad_id : CLIP_EOT;
        for (int c = 0; pad != CLIP_EOT && c < ch->n_chunks; c++) {
            int32_t *t = ch->tokens + (size_t)c * ctx;
            int end = 0;
            while (end < ctx && t[end] != CLIP_EOT) end++;
            for (int k = end + 1; k < ctx; k++) t[k] = pad;
        }
    }
    if (ch->n_chunks > te->max_chunks) {
        ldm_fail("it has %d chunks of 75 tokens (%d tokens): this executable takes at most %d chunk%s (%d tokens); %s",
                 ch->n_chunks, ch->token_count, te->max_chunks, te->max_chunks == 1 ? "" : "s",
                 te->max_chunks * PROMPT_CHUNK_LENGTH,
                 te->chunks_hint ? te->chunks_hint : "compile the UNet with -D CHUNKS=N for more");
        prompt_chunks_free(ch);
        return -1;
    }
    return 0;
}

int ldm_text_encode(const LdmTextEncoder *te, const char *prompt, LdmCond *out) {
    memset(out, 0, sizeof *out);
    ClipIo io;
    if (clip_io(te, &io) != 0) return -1;
    PromptChunks ch;
    const LdmEmbeddings *emb = te->emb;
    if (ldm_text_chunks(te, prompt, &ch) != 0) return -1;
    const int ctx = io.ctx, width = io.width, k = ch.n_chunks;
    out->n_chunks = k;
    out->width = width;
    out->token_count = ch.token_count;
    out->z = ldm_aligned_alloc((size_t)((int64_t)k * ctx * width) * sizeof(float) + 4);
    out->used = ldm_xcalloc((size_t)ch.n_fixes + 1, sizeof *out->used);
    if (io.out_pooled >= 0) {
        out->pooled_width = (int)io.m->outputs[io.out_pooled].shape[1];
        out->pooled = ldm_xcalloc((size_t)out->pooled_width, sizeof(float));
    }

    /* EmbeddingsWithFixes: rows offset+1 .. offset+n of the chunk take the
     * embedding's vectors (never past row 76); placeholders stay id 0 */
    float *keep = NULL, *rows = NULL;
    if (ch.n_fixes > 0) {
        keep = ldm_xmalloc((size_t)k * ctx * sizeof(float));
        rows = ldm_xcalloc((size_t)((int64_t)k * ctx * width), sizeof(float));
        for (int64_t r = 0; r < (int64_t)k * ctx; r++) keep[r] = 1.0f;
        for (int f = 0; f < ch.n_fixes; f++) {
            const PromptFix *fx = &ch.fixes[f];
            const LdmEmbedding *e = &emb->e[fx->embedding];
            /* emb_len = min(77 - offset - 1, n) */
            int take = e->n_vectors < ctx - 1 - fx->offset ? e->n_vectors : ctx - 1 - fx->offset;
            for (int v = 0; v < take; v++) {
                int64_t r = (int64_t)fx->chunk * ctx + fx->offset + 1 + v;
                keep[r] = 0.0f;
                memcpy(rows + r * width, e->vec + (int64_t)v * width, (size_t)width * sizeof(float));
            }
            int seen = 0;
            for (int u = 0; u < out->n_used; u++) seen |= out->used[u] == fx->embedding;
            if (!seen) out->used[out->n_used++] = fx->embedding;
        }
    }
    if (ch.n_fixes > 0 && io.in_keep < 0) {
        ldm_fail("internal: text encoder '%s' was compiled without EMBEDS=1: it cannot take embeddings", io.m->name);
        goto fail;
    }
    /* the chunks in calls of at most the encoder's batch */
    int step = io.max_batch > 0 ? (int)io.max_batch : 1;
    for (int c0 = 0; c0 < k; c0 += step) {
        int n = k - c0 < step ? k - c0 : step;
        int64_t r0 = (int64_t)c0 * ctx;
        if (run_clip(te, &io, n, ch.tokens + r0, keep ? keep + r0 : NULL, rows ? rows + r0 * width : NULL,
                     out->z + r0 * width, c0 == 0 ? out->pooled : NULL) != 0)
            goto fail;
    }
    if (te->syntax == LDM_SYNTAX_WEBUI)
        for (int c = 0; c < k; c++)
            emphasis_original(out->z + (int64_t)c * ctx * width, ch.multipliers + (int64_t)c * ctx, ctx, width);
    free(keep);
    free(rows);
    prompt_chunks_free(&ch);
    return 0;
fail:
    free(keep);
    free(rows);
    prompt_chunks_free(&ch);
    ldm_cond_free(out);
    return -1;
}

void ldm_cond_free(LdmCond *c) {
    free(c->z);
    free(c->used);
    free(c->pooled);
    memset(c, 0, sizeof *c);
}

void ldm_cond_pad(LdmCond *a, LdmCond *b, const LdmCond *empty) {
    LdmCond *s = a->n_chunks < b->n_chunks ? a : b;
    int want = a->n_chunks > b->n_chunks ? a->n_chunks : b->n_chunks;
    if (s->n_chunks == want) return;
    int64_t chunk = (int64_t)(PROMPT_CHUNK_LENGTH + 2) * s->width;
    float *z = ldm_aligned_alloc((size_t)(want * chunk) * sizeof(float) + 4);
    memcpy(z, s->z, (size_t)(s->n_chunks * chunk) * sizeof(float));
    for (int c = s->n_chunks; c < want; c++) memcpy(z + c * chunk, empty->z, (size_t)chunk * sizeof(float));
    free(s->z);
    s->z = z;
    s->n_chunks = want;
}
