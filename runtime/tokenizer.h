/*
 * tokenizer.h - the CLIP byte-level BPE tokenizer with the Stable Diffusion v1
 * conventions: prompt (UTF-8) -> 77 token ids for the text encoder.
 *
 * Reference: openai/CLIP clip/simple_tokenizer.py SimpleTokenizer.encode
 * (ftfy.fix_text taken as the identity), plus HuggingFace CLIPTokenizer's
 * framing used by SD v1: [<|startoftext|>] + first 75 BPE ids +
 * [<|endoftext|>], padded to 77 with <|endoftext|>. The exact rules are in
 * shared/goldens/README.md, "CLIP tokenizer goldens".
 *
 * Pipeline of clip_tokenize():
 *   UTF-8 decode -> html.unescape twice -> strip -> collapse white space ->
 *   strip -> str.lower() -> pre-tokenise (regex with \p{L} \p{N}) ->
 *   UTF-8 bytes -> byte-level symbols -> BPE merges -> ids -> frame and pad.
 *
 * Invalid UTF-8 in a prompt is an error (no U+FFFD replacement): a prompt is
 * user text, and silently changing it would change the image.
 */
#ifndef LDM_TOKENIZER_H
#define LDM_TOKENIZER_H

#include <stdint.h>

#define CLIP_CONTEXT_LENGTH 77    /* SD v1 text encoder positions */
#define CLIP_N_MERGES 48894       /* merges used: vocab lines 2 .. 48895 */
#define CLIP_VOCAB_SIZE 49408     /* 256 bytes + 256 bytes</w> + merges + 2 */
#define CLIP_SOT 49406            /* <|startoftext|> */
#define CLIP_EOT 49407            /* <|endoftext|>, also the padding token */

typedef struct ClipTokenizer ClipTokenizer;

/* Loads bpe_simple_vocab_16e6.txt.gz (gzip, read with zlib) and builds the
 * vocabulary and the merge ranks. Returns NULL and records an error naming the
 * file (and line) when the file is missing, not gzip, truncated or malformed. */
ClipTokenizer *clip_tokenizer_load(const char *vocab_gz_path);
/* The same vocabulary compiled into the program (runtime/vocab.S: a
 * byte-identical copy of openai/CLIP's file, MIT licence, see
 * runtime/vocab/SOURCE.md): no file needed. */
ClipTokenizer *clip_tokenizer_load_builtin(void);
void clip_tokenizer_free(ClipTokenizer *t);

/* Tokenizes one prompt into ids[CLIP_CONTEXT_LENGTH]: SOT, the first 75 BPE
 * ids, EOT, then EOT padding. *n_bpe (may be NULL) receives the number of BPE
 * tokens before truncation. Returns 0, or -1 (ldm_fail) on invalid UTF-8. */
int clip_tokenize(const ClipTokenizer *t, const char *utf8_prompt,
                  int32_t ids[CLIP_CONTEXT_LENGTH], int *n_bpe);

/* Same with another context length (>= 2): SOT + first context_length-2 BPE
 * ids + EOT + padding, context_length ids in all. */
int clip_tokenize_ctx(const ClipTokenizer *t, const char *utf8_prompt,
                      int context_length, int32_t *ids, int *n_bpe);

/* The conventions in which text encoders' tokenizers differ around the
 * same BPE (SimpleTokenizer, vocabulary and merges): the special tokens'
 * text (a prompt spelling one gets its id, any case) and the padding id
 * after the end token. */
typedef struct ClipTokStyle {
    const char *sot_text;    /* the start token's text (id CLIP_SOT) */
    const char *eot_text;    /* the end token's text (id CLIP_EOT) */
    int32_t pad_id;          /* what fills the positions after the end token */
} ClipTokStyle;
/* SD v1 (HF CLIPTokenizer, padding="max_length"): <|startoftext|>,
 * <|endoftext|>, padded with the end token. */
extern const ClipTokStyle clip_style_sd1;
/* open_clip.tokenize (SD 2.x FrozenOpenCLIPEmbedder, SDXL's OpenCLIP
 * encoder): <start_of_text>, <end_of_text>, padded with 0 (the token "!",
 * embedded and attended to like any other). */
extern const ClipTokStyle clip_style_openclip;

/* clip_tokenize_ctx in a style (NULL: clip_style_sd1): SOT + the first
 * context_length-2 BPE ids + EOT, then style->pad_id. */
int clip_tokenize_style(const ClipTokenizer *t, const ClipTokStyle *style, const char *utf8_prompt,
                        int context_length, int32_t *ids, int *n_bpe);

/* All BPE ids of a prompt, without SOT/EOT and without truncation. Returns
 * the count and stores a malloc'd array (caller frees) in *ids, or -1. */
int clip_encode(const ClipTokenizer *t, const char *utf8_prompt, int32_t **ids);

/* clip_encode with the style's special-token texts (NULL: clip_style_sd1). */
int clip_encode_style(const ClipTokenizer *t, const ClipTokStyle *style, const char *utf8_prompt, int32_t **ids);

/* The vocabulary string of an id (byte-level symbols, "</w>" marks a word
 * end), or NULL when out of range. */
const char *clip_token_text(const ClipTokenizer *t, int32_t id);

#endif
