/*
 * fuzz_prompt.c - the tokenizer and the prompt parser as txt2img reads a
 * prompt (runtime/tokenizer.c, runtime/prompt.c): clip_tokenize and
 * clip_encode of the text (the plain syntax), and the webui syntax:
 * prompt_extract_tags (with prompt_lora_params of every <lora:...> tag),
 * prompt_parse_attention, and prompt_tokenize of the text without its tags
 * with an embedding list. The input is the prompt (UTF-8 or not).
 *
 * The CLIP vocabulary is read from LDM_SHARED (default ../shared) as the
 * tests read it.
 */
#include "fuzz.h"
#include "prompt.h"
#include "tokenizer.h"
#include "util.h"

static ClipTokenizer *tokenizer(void) {
    static ClipTokenizer *tok;
    if (!tok) {
        const char *shared = getenv("LDM_SHARED");
        char path[4096];
        snprintf(path, sizeof path, "%s/clip/bpe_simple_vocab_16e6.txt.gz",
                 shared && *shared ? shared : LDM_FUZZ_ROOT "/../shared");
        tok = clip_tokenizer_load(path);
        if (!tok) {
            fprintf(stderr, "fuzz_prompt: %s\n", ldm_last_error());
            abort();
        }
    }
    return tok;
}

/* Embeddings called by words of the vocabulary and one that is not. */
static const PromptEmbedding embeddings[] = {{"cat", 2}, {"a photo", 1}, {"fuzzword-emb", 3}, {"style", 75}};

LDM_FUZZ_TARGET(prompt) {
    ClipTokenizer *tok = tokenizer();
    char *text = fuzz_cstr(data, size);
    int32_t ids[CLIP_CONTEXT_LENGTH];
    int n_bpe = 0;
    clip_tokenize(tok, text, ids, &n_bpe);
    int32_t *all = NULL;
    int n = clip_encode(tok, text, &all);
    for (int i = 0; i < n; i++)
        if (!clip_token_text(tok, all[i])) abort();
    free(all);
    PromptTags tags;
    if (prompt_extract_tags(text, &tags) == 0) {
        for (int i = 0; i < tags.n_tags; i++) {
            PromptLora lp;
            if (!strcmp(tags.tags[i].type, "lora")) prompt_lora_params(&tags.tags[i], &lp);
        }
        PromptParsed parsed;
        if (prompt_parse_attention(tags.text, &parsed) == 0) {
            if (parsed.n < 1) abort();
            prompt_parsed_free(&parsed);
        }
        PromptChunks chunks;
        if (prompt_tokenize(tok, tags.text, embeddings, (int)(sizeof embeddings / sizeof embeddings[0]), &chunks) ==
            0) {
            if (chunks.n_chunks < 1) abort();
            for (int i = 0; i < chunks.n_fixes; i++)
                if (chunks.fixes[i].chunk < 0 || chunks.fixes[i].chunk >= chunks.n_chunks ||
                    chunks.fixes[i].offset < 0 || chunks.fixes[i].offset >= PROMPT_CHUNK_LENGTH)
                    abort();
            prompt_chunks_free(&chunks);
        }
        prompt_tags_free(&tags);
    }
    free(text);
    return 0;
}
