/*
 * textcond.h - a prompt to the UNet's cross-attention conditioning, as the
 * AUTOMATIC1111 webui computes it for SD v1 (FrozenCLIPEmbedderWithCustomWords)
 * or, with the plain syntax, as the CompVis scripts do.
 *
 * Webui syntax (shared/goldens/sd1-adapters/README.md, 1.2-1.5; reference
 * stable-diffusion-webui v1.10.1 modules/sd_hijack_clip.py, sd_emphasis.py,
 * sd_hijack.py EmbeddingsWithFixes, textual_inversion/textual_inversion.py):
 *   chunks = tokenize_line(prompt)            (prompt.h: 75-token chunks)
 *   per chunk: e = token_embedding[tokens], textual-inversion rows replaced,
 *              z = CLIP text transformer (final LayerNorm of the layer the
 *              CLIP skip picks), then emphasis "Original":
 *              z = z * mult * (mean(z) / mean(z * mult))
 *   cond = the chunks' z concatenated along the token axis: [77k, width]
 * Plain syntax: one chunk, clip_tokenize_ctx (truncated at 75 tokens), no
 * emphasis, no embeddings (tags and brackets are text).
 *
 * SD 2.x (FrozenOpenCLIPEmbedder) is the same with the OpenCLIP tokenizer
 * conventions (LdmTextEncoder.style: padding 0 after the end token, as the
 * webui's FrozenOpenCLIPEmbedderWithCustomWords does) and the OpenCLIP text
 * tower behind the same clip_text inputs and outputs.
 *
 * The text encoder is a generated clip_text model (models/sd1/clip_text.graph)
 * bound in an LdmNets: input `tokens` [B, 77] with B a run-time extent (the
 * chunks of a prompt are encoded in one call, or in several when there are
 * more than B's maximum), outputs `hidden` and `hidden_skip` [S, B, 77, width]
 * (CLIP skip 1..S), and with -D EMBEDS=1 the inputs `emb_keep` [B, 77, 1] and
 * `emb_rows` [B, 77, width] that carry the embedding vectors.
 */
#ifndef LDM_TEXTCOND_H
#define LDM_TEXTCOND_H

#include <stdint.h>

#include "pipeline.h"
#include "prompt.h"
#include "tokenizer.h"

/* ---- textual-inversion embeddings ------------------------------------------ */

typedef struct LdmEmbedding {
    char *name;      /* the word that calls it: the file's stem */
    char *path;      /* the file */
    int n_vectors;   /* rows */
    float *vec;      /* (n_vectors * width) */
} LdmEmbedding;

typedef struct LdmEmbeddings {
    int n;                /* loaded */
    LdmEmbedding *e;      /* (n) sorted by name */
    int width;            /* the text encoder's width they were checked against */
    int n_skipped;        /* files refused (another model's width or layout) */
    char *notes;          /* "" or one line per refused file: file, its width, the expected one */
} LdmEmbeddings;

/* Load one embedding file: a safetensors file holding one tensor (any name),
 * or tensors among which one is `emb_params` or `string_to_param.*`, of
 * shape [n, width] or [width], F32, F16, BF16 or F64 (textual_inversion.py
 * create_embedding_from_data). Returns 0; 1 when the file is another
 * model's (width or layout: *why says which, the caller skips it as the
 * webui does); -1 (ldm_fail, naming the file) when it is unreadable,
 * truncated, corrupt, not floating point or not finite. */
int ldm_embedding_load(const char *path, int width, LdmEmbedding *out, char *why, size_t why_size);
/* The same for one text encoder of SDXL's embeddings (key "clip_l" or
 * "clip_g": the file's tensor of that name, of the encoder's width; a file
 * without both tensors is another model's: 1; both present with different
 * numbers of vectors: -1). key NULL: ldm_embedding_load. */
int ldm_embedding_load_key(const char *path, const char *key, int width, LdmEmbedding *out, char *why,
                           size_t why_size);
void ldm_embedding_free(LdmEmbedding *e);
/* Every *.safetensors file of dir (not recursive). A refused file is
 * counted and described in notes; an error in any file fails the whole load. */
int ldm_embeddings_load_dir(const char *dir, int width, LdmEmbeddings *out);
/* ldm_embeddings_load_dir with ldm_embedding_load_key's key (NULL: SD v1/2). */
int ldm_embeddings_load_dir_key(const char *dir, const char *key, int width, LdmEmbeddings *out);
void ldm_embeddings_free(LdmEmbeddings *e);

/* ---- the encoder ---------------------------------------------------------- */

typedef enum LdmPromptSyntax {
    LDM_SYNTAX_WEBUI,  /* AUTOMATIC1111: tags, (emphasis), BREAK, chunks, embeddings (default) */
    LDM_SYNTAX_PLAIN,  /* CompVis scripts: one 77-token chunk, the text as it is */
} LdmPromptSyntax;

/* "webui" / "plain"; -1 with a message otherwise. */
int ldm_prompt_syntax_parse(const char *s, LdmPromptSyntax *out);
const char *ldm_prompt_syntax_name(LdmPromptSyntax s);

typedef struct LdmTextEncoder {
    LdmNets *nets;               /* where the text encoder lives */
    int model;                   /* its index in nets */
    const ClipTokenizer *tok;
    const ClipTokStyle *style;   /* the text encoder's tokenizer conventions (NULL: SD v1's,
                                  * clip_style_sd1; SD 2.x: clip_style_openclip, padding 0) */
    LdmPromptSyntax syntax;
    int clip_skip;               /* 1 = last layer, 2 = next to last, ... */
    const LdmEmbeddings *emb;    /* NULL: none */
    int max_chunks;              /* the most chunks the UNet takes (its context extent / 77) */
    const char *chunks_hint;     /* how to compile more, for the error ("make txt2img ... CHUNKS=N") */
} LdmTextEncoder;

/* Check the model's inputs and outputs against the settings: 0, or -1 with
 * a message (a CLIP skip the model does not have names the make variable). */
int ldm_text_encoder_check(const LdmTextEncoder *te);

/* One encoded prompt. */
typedef struct LdmCond {
    float *z;                /* (n_chunks * 77 * width) */
    int n_chunks;
    int width;
    int token_count;         /* the webui's token count (informational) */
    int n_used;              /* embeddings the prompt calls */
    int *used;               /* (n_used) indices into the LdmEmbeddings, first-use order, no repeats */
    float *pooled;           /* (pooled_width) the encoder's pooled output of the FIRST chunk (an
                              * OpenCLIP tower with output `pooled`, SDXL's vector), else NULL */
    int pooled_width;
} LdmCond;

/* The chunks of a prompt (tags already removed) under te's syntax and
 * embeddings; no model is run (te->nets is not used). Errors: invalid
 * UTF-8, a bad weight, more chunks than max_chunks (the message gives the
 * prompt's chunk and token counts and chunks_hint). */
int ldm_text_chunks(const LdmTextEncoder *te, const char *prompt, PromptChunks *out);

/* prompt (tags already removed) -> conditioning: ldm_text_chunks, then the
 * text encoder and the emphasis. */
int ldm_text_encode(const LdmTextEncoder *te, const char *prompt, LdmCond *out);
void ldm_cond_free(LdmCond *c);

/* The webui's pad_cond_uncond: append copies of `empty` (one chunk) to the
 * shorter of a and b until both have the same number of chunks. */
void ldm_cond_pad(LdmCond *a, LdmCond *b, const LdmCond *empty);

#endif
