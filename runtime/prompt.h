/*
 * prompt.h - the AUTOMATIC1111 webui prompt syntax: extra-network tags
 * (<lora:name:0.8>), attention weights ((word:1.3), [word], BREAK) and the
 * 75-token chunking with textual-inversion embeddings.
 *
 * Reference: AUTOMATIC1111/stable-diffusion-webui v1.10.1,
 *   modules/extra_networks.py          parse_prompt, ExtraNetworkParams
 *   extensions-builtin/Lora/extra_networks_lora.py  activate (multipliers)
 *   modules/prompt_parser.py           parse_prompt_attention
 *   modules/sd_hijack_clip.py          tokenize_line
 *   modules/textual_inversion/textual_inversion.py  find_embedding_at_position
 * The rules are in shared/goldens/sd1-adapters/README.md, sections 1.1-1.3.
 *
 * Typical use: prompt_extract_tags() on the raw prompt, then
 * prompt_tokenize() on PromptTags.text (parse + chunk in one call).
 */
#ifndef LDM_PROMPT_H
#define LDM_PROMPT_H

#include <stdint.h>

#include "tokenizer.h"

#define PROMPT_CHUNK_LENGTH 75 /* tokens of a chunk between its start and end token */
#define PROMPT_COMMA_TOKEN 267 /* ",</w>" */
#define PROMPT_COMMA_BACKTRACK 20 /* opts.comma_padding_backtrack (default) */

/* ---- 1.1 extra-network tags (extra_networks.parse_prompt) ------------------ */

/* One <TYPE:ITEMS> tag. */
typedef struct PromptTag {
    char *type;    /* regex group 1, e.g. "lora", "hypernet" */
    int n_items;   /* number of items (>= 1) */
    char **items;  /* group 2 split on ':' (items[0] = the network name) */
} PromptTag;

/* A prompt with its tags removed. */
typedef struct PromptTags {
    char *text;      /* the prompt with every tag replaced by "" */
    int n_tags;      /* number of tags */
    PromptTag *tags; /* (n_tags) in prompt order */
} PromptTags;

/* Finds every match of <(\w+):([^>]+)> in prompt. Returns 0, or -1 (ldm_fail)
 * on invalid UTF-8. Free with prompt_tags_free(). */
int prompt_extract_tags(const char *prompt, PromptTags *out);
void prompt_tags_free(PromptTags *t);

/* The LoRA parameters of a "lora" tag (extra_networks_lora.py activate). */
typedef struct PromptLora {
    const char *name; /* network name (file stem), points into the tag */
    double te;        /* text-encoder multiplier: positional[1] or te=, default 1.0 */
    double unet;      /* UNet multiplier: positional[2] or unet=, default te */
    int dyn;          /* dyn_dim: positional[3] or dyn=, -1 when absent */
} PromptLora;

/* Reads a "lora" tag's items: an item with exactly one '=' is named (te=,
 * unet=, dyn=), any other is positional. Returns 0, or -1 (ldm_fail) when the
 * tag is not "lora" or a number does not parse (the webui raises there). */
int prompt_lora_params(const PromptTag *tag, PromptLora *out);

/* ---- 1.2 attention (prompt_parser.parse_prompt_attention) ----------------- */

/* One piece of text with its weight. ["BREAK", -1] separates chunks. */
typedef struct PromptFragment {
    char *text;    /* UTF-8 text (escapes resolved) */
    double weight; /* product of the bracket multipliers (float64, as Python) */
} PromptFragment;

/* The list parse_prompt_attention returns (never empty). */
typedef struct PromptParsed {
    int n;                /* number of fragments (>= 1) */
    PromptFragment *frag; /* (n) fragments, adjacent weights always differ */
} PromptParsed;

/* Parses the attention syntax. Returns 0, or -1 (ldm_fail) on invalid UTF-8
 * or a weight Python's float() rejects, e.g. "(a:1.2.3)" (the webui raises
 * ValueError there). Free with prompt_parsed_free(). */
int prompt_parse_attention(const char *text, PromptParsed *out);
void prompt_parsed_free(PromptParsed *p);

/* ---- 1.3 chunks (sd_hijack_clip.tokenize_line) ----------------------------- */

/* A textual-inversion embedding the caller has loaded. */
typedef struct PromptEmbedding {
    const char *name; /* the word that calls it (the file stem) */
    int n_vectors;    /* number of vectors (rows of its tensor), >= 1 */
} PromptEmbedding;

/* Where an embedding's vectors go (PromptChunkFix). */
typedef struct PromptFix {
    int chunk;     /* chunk index */
    int offset;    /* position among the chunk's 75 tokens: rows offset+1 .. of the 77 */
    int embedding; /* index into the caller's PromptEmbedding list */
} PromptFix;

/* The chunks of one prompt. */
typedef struct PromptChunks {
    int n_chunks;         /* k >= 1: the conditioning is [1, 77k, C] */
    int32_t *tokens;      /* (n_chunks * 77) SOT, 75 tokens, EOT per chunk (0 = embedding placeholder) */
    double *multipliers;  /* (n_chunks * 77) emphasis weight of each token (1.0 on SOT/EOT/padding) */
    int n_fixes;          /* number of embedding insertions */
    PromptFix *fixes;     /* (n_fixes) in chunk order, then position order */
    int token_count;      /* 75 per chunk closed early + the last chunk's length (informational) */
} PromptChunks;

/* tokenize_line on an already parsed prompt: each fragment is BPE-encoded on
 * its own; embeddings (may be NULL when n_emb = 0) are matched by the ids of
 * their names, the longest first. Returns 0, or -1 (ldm_fail). Free with
 * prompt_chunks_free(). */
int prompt_chunk(const ClipTokenizer *tok, const PromptParsed *parsed,
                 const PromptEmbedding *emb, int n_emb, PromptChunks *out);

/* prompt_parse_attention + prompt_chunk (the webui's tokenize_line). */
int prompt_tokenize(const ClipTokenizer *tok, const char *text,
                    const PromptEmbedding *emb, int n_emb, PromptChunks *out);
void prompt_chunks_free(PromptChunks *c);

#endif
