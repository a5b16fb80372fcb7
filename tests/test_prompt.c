/*
 * test_prompt.c - the webui prompt syntax (runtime/prompt.c) against
 * shared/goldens/sd1-adapters/prompt_parse.jsonl (AUTOMATIC1111 webui
 * v1.10.1: extra_networks.parse_prompt, parse_prompt_attention,
 * tokenize_line), plus edge cases whose expected values are the rules of
 * shared/goldens/sd1-adapters/README.md sections 1.1-1.3 and 6, applied by
 * hand (never numbers computed by this code).
 */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompt.h"
#include "safetensors.h"
#include "testutil.h"
#include "tokenizer.h"
#include "util.h"

/* ---- helpers ------------------------------------------------------------ */

static ClipTokenizer *load_vocab(void) {
    char *path = ldm_xasprintf("%s/clip/bpe_simple_vocab_16e6.txt.gz", test_shared_dir());
    ClipTokenizer *t = clip_tokenizer_load(path);
    ck_assert_msg(t != NULL, "loading %s: %s", path, ldm_last_error());
    free(path);
    return t;
}

/* tinyemb.safetensors holds emb_params F32 [3, 64] (README 1.5): 3 vectors. */
static const PromptEmbedding tinyemb[] = {{.name = "tinyemb", .n_vectors = 3}};

/* README 4: weights are float64, compared to 1e-12 relative. */
static int weight_eq(double got, double want) {
    return fabs(got - want) <= 1e-12 * fabs(want);
}

static PromptParsed parse_ok(const char *text) {
    PromptParsed p;
    ck_assert_msg(prompt_parse_attention(text, &p) == 0, "'%s': %s", text, ldm_last_error());
    return p;
}

/* Asserts parse(text) == the n (text, weight) pairs of want. */
static void check_parse(const char *text, int n, const PromptFragment *want) {
    PromptParsed p = parse_ok(text);
    ck_assert_msg(p.n == n, "'%s': %d fragments, expected %d", text, p.n, n);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(strcmp(p.frag[i].text, want[i].text) == 0, "'%s': fragment %d '%s', expected '%s'",
                      text, i, p.frag[i].text, want[i].text);
        ck_assert_msg(weight_eq(p.frag[i].weight, want[i].weight),
                      "'%s': fragment %d weight %.17g, expected %.17g", text, i, p.frag[i].weight,
                      want[i].weight);
    }
    prompt_parsed_free(&p);
}

/* ---- the goldens ---------------------------------------------------------- */

/* Checks prompt_extract_tags against the line's extra_networks (absent: no tags). */
static void check_tags(json_t *o, const char *prompt, const PromptTags *tags, int lineno) {
    json_t *en = json_object_get(o, "extra_networks");
    if (!en) {
        ck_assert_msg(tags->n_tags == 0, "line %d: %d tags, expected none", lineno, tags->n_tags);
        ck_assert_str_eq(tags->text, prompt);
        return;
    }
    ck_assert_str_eq(tags->text, json_string_value(json_object_get(en, "prompt_without_tags")));
    /* networks: {type: [items, ...]}: our tags of each type, in prompt order */
    json_t *nets = json_object_get(en, "networks");
    const char *type;
    json_t *list;
    int total = 0;
    json_object_foreach(nets, type, list) {
        size_t k = 0;
        for (int i = 0; i < tags->n_tags; i++) {
            const PromptTag *t = &tags->tags[i];
            if (strcmp(t->type, type) != 0) continue;
            ck_assert_msg(k < json_array_size(list), "line %d: extra <%s> tag", lineno, type);
            json_t *items = json_array_get(list, k++);
            ck_assert_int_eq(t->n_items, (int)json_array_size(items));
            for (int j = 0; j < t->n_items; j++)
                ck_assert_str_eq(t->items[j], json_string_value(json_array_get(items, (size_t)j)));
        }
        ck_assert_msg(k == json_array_size(list), "line %d: %zu <%s> tags, expected %zu", lineno, k,
                      type, json_array_size(list));
        total += (int)k;
    }
    ck_assert_int_eq(total, tags->n_tags);
}

START_TEST(test_goldens) {
    ClipTokenizer *tok = load_vocab();
    char *path = ldm_xasprintf("%s/goldens/sd1-adapters/prompt_parse.jsonl", test_shared_dir());
    size_t len;
    char *text = ldm_read_file(path, &len);
    ck_assert_msg(text != NULL, "%s", ldm_last_error());
    int lineno = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        lineno++;
        json_error_t err;
        json_t *o = json_loads(line, 0, &err);
        ck_assert_msg(o != NULL, "%s:%d: %s", path, lineno, err.text);
        const char *prompt = json_string_value(json_object_get(o, "prompt"));
        json_t *parsed = json_object_get(o, "parsed"), *chunks = json_object_get(o, "chunks");
        ck_assert_msg(prompt && json_is_array(parsed) && json_is_array(chunks),
                      "%s:%d: expected prompt, parsed, chunks", path, lineno);

        PromptTags tags;
        ck_assert_msg(prompt_extract_tags(prompt, &tags) == 0, "line %d: %s", lineno, ldm_last_error());
        check_tags(o, prompt, &tags, lineno);

        /* parsed */
        PromptParsed p = parse_ok(tags.text);
        ck_assert_msg(p.n == (int)json_array_size(parsed), "line %d '%s': %d fragments, expected %zu",
                      lineno, prompt, p.n, json_array_size(parsed));
        for (int i = 0; i < p.n; i++) {
            json_t *pair = json_array_get(parsed, (size_t)i);
            const char *wt = json_string_value(json_array_get(pair, 0));
            double ww = json_number_value(json_array_get(pair, 1));
            ck_assert_msg(strcmp(p.frag[i].text, wt) == 0, "line %d: fragment %d '%s', expected '%s'",
                          lineno, i, p.frag[i].text, wt);
            ck_assert_msg(weight_eq(p.frag[i].weight, ww), "line %d: fragment %d weight %.17g, expected %.17g",
                          lineno, i, p.frag[i].weight, ww);
        }

        /* chunks */
        PromptChunks c;
        ck_assert_msg(prompt_chunk(tok, &p, tinyemb, 1, &c) == 0, "line %d: %s", lineno, ldm_last_error());
        ck_assert_msg(c.n_chunks == (int)json_array_size(chunks), "line %d '%s': %d chunks, expected %zu",
                      lineno, prompt, c.n_chunks, json_array_size(chunks));
        ck_assert_msg(c.token_count == (int)json_integer_value(json_object_get(o, "token_count")),
                      "line %d: token_count %d", lineno, c.token_count);
        int fix = 0;
        for (int k = 0; k < c.n_chunks; k++) {
            json_t *ch = json_array_get(chunks, (size_t)k);
            json_t *toks = json_object_get(ch, "tokens"), *mults = json_object_get(ch, "multipliers");
            json_t *embs = json_object_get(ch, "embeddings");
            ck_assert_int_eq(json_array_size(toks), 77);
            ck_assert_int_eq(json_array_size(mults), 77);
            for (int i = 0; i < 77; i++) {
                int32_t want = (int32_t)json_integer_value(json_array_get(toks, (size_t)i));
                double wm = json_number_value(json_array_get(mults, (size_t)i));
                ck_assert_msg(c.tokens[k * 77 + i] == want, "line %d chunk %d: token[%d] %d, expected %d",
                              lineno, k, i, c.tokens[k * 77 + i], want);
                ck_assert_msg(weight_eq(c.multipliers[k * 77 + i], wm),
                              "line %d chunk %d: multiplier[%d] %.17g, expected %.17g", lineno, k, i,
                              c.multipliers[k * 77 + i], wm);
            }
            for (size_t e = 0; e < json_array_size(embs); e++, fix++) {
                json_t *pair = json_array_get(embs, e);
                ck_assert_msg(fix < c.n_fixes, "line %d chunk %d: missing embedding %zu", lineno, k, e);
                ck_assert_int_eq(c.fixes[fix].chunk, k);
                ck_assert_int_eq(c.fixes[fix].offset, (int)json_integer_value(json_array_get(pair, 0)));
                ck_assert_str_eq(tinyemb[c.fixes[fix].embedding].name,
                                 json_string_value(json_array_get(pair, 1)));
            }
        }
        ck_assert_msg(fix == c.n_fixes, "line %d: %d embeddings, expected %d", lineno, c.n_fixes, fix);

        /* prompt_tokenize = parse + chunk */
        PromptChunks c2;
        ck_assert_int_eq(prompt_tokenize(tok, tags.text, tinyemb, 1, &c2), 0);
        ck_assert_int_eq(c2.n_chunks, c.n_chunks);
        ck_assert(memcmp(c2.tokens, c.tokens, (size_t)c.n_chunks * 77 * sizeof *c.tokens) == 0);
        prompt_chunks_free(&c2);

        prompt_chunks_free(&c);
        prompt_parsed_free(&p);
        prompt_tags_free(&tags);
        json_decref(o);
    }
    ck_assert_msg(lineno == 39, "%d golden lines, README 4 says 39", lineno);
    free(text);
    free(path);
    clip_tokenizer_free(tok);
}
END_TEST

/* prompt_cond.io.safetensors: the webui's chunk inputs of 8 prompts (named in
 * the "cases" metadata as `caseK: "PROMPT" -> ...`, the prompt JSON-quoted):
 * caseK.tokens I32 [k,77], caseK.multipliers F32 [k,77] (our float64 weights
 * rounded to float32 must equal them), caseK.embedding_fixes I32 [n,3]
 * (chunk, offset, n_vectors). The embedding's vector count is read from
 * tinyemb.safetensors (one tensor, [n, C] or [C], README 1.5). */
START_TEST(test_prompt_cond_inputs) {
    ClipTokenizer *tok = load_vocab();
    char *path = ldm_xasprintf("%s/goldens/sd1-adapters/prompt_cond.io.safetensors", test_shared_dir());
    char *emb_path = ldm_xasprintf("%s/goldens/sd1-adapters/tinyemb.safetensors", test_shared_dir());
    StFile f, ef;
    ck_assert_msg(st_open(&f, path) == 0, "%s", ldm_last_error());
    ck_assert_msg(st_open(&ef, emb_path) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(ef.n_tensors, 1);
    PromptEmbedding emb = {.name = "tinyemb",
                           .n_vectors = ef.tensors[0].ndim == 1 ? 1 : (int)ef.tensors[0].shape[0]};
    ck_assert_int_eq(emb.n_vectors, 3);
    const char *cases_json = st_metadata(&f, "cases");
    ck_assert_msg(cases_json != NULL, "%s: no 'cases' metadata", path);
    json_error_t err;
    json_t *cases = json_loads(cases_json, 0, &err);
    ck_assert_msg(json_is_array(cases), "cases: %s", err.text);
    ck_assert_int_eq(json_array_size(cases), 8);
    for (size_t k = 0; k < json_array_size(cases); k++) {
        const char *line = json_string_value(json_array_get(cases, k));
        const char *q0 = strchr(line, '"'), *q1 = strstr(line, "\" -> ");
        ck_assert_msg(q0 && q1 && q1 > q0, "case %zu: '%s'", k, line);
        json_t *js = json_loadb(q0, (size_t)(q1 - q0) + 1, JSON_DECODE_ANY, &err);
        ck_assert_msg(json_is_string(js), "case %zu: prompt not a JSON string: %s", k, err.text);
        const char *prompt = json_string_value(js);

        PromptChunks c;
        ck_assert_msg(prompt_tokenize(tok, prompt, &emb, 1, &c) == 0, "%s", ldm_last_error());
        char name[64];
        snprintf(name, sizeof name, "case%zu.tokens", k);
        const StTensor *tt = st_find(&f, name);
        snprintf(name, sizeof name, "case%zu.multipliers", k);
        const StTensor *mt = st_find(&f, name);
        snprintf(name, sizeof name, "case%zu.embedding_fixes", k);
        const StTensor *ft = st_find(&f, name);
        ck_assert_msg(tt && mt && ft, "case %zu: missing tensors", k);
        ck_assert_msg(tt->ndim == 2 && tt->shape[0] == c.n_chunks && tt->shape[1] == 77,
                      "case %zu '%s': %d chunks, golden [%lld, %lld]", k, prompt, c.n_chunks,
                      (long long)tt->shape[0], (long long)tt->shape[1]);
        int32_t *tokens = ldm_xmalloc((size_t)tt->numel * sizeof *tokens);
        float *mults = ldm_xmalloc((size_t)mt->numel * sizeof *mults);
        ck_assert_int_eq(st_to_i32(tt, tokens), 0);
        ck_assert_int_eq(st_to_f32(mt, mults), 0);
        ck_assert_int_eq(mt->numel, tt->numel);
        for (int64_t i = 0; i < tt->numel; i++) {
            ck_assert_msg(c.tokens[i] == tokens[i], "case %zu: token %lld = %d, expected %d", k,
                          (long long)i, c.tokens[i], tokens[i]);
            ck_assert_msg((float)c.multipliers[i] == mults[i], "case %zu: multiplier %lld = %.9g, expected %.9g",
                          k, (long long)i, (float)c.multipliers[i], mults[i]);
        }
        int n_fix = ft->numel ? (int)ft->shape[0] : 0;
        ck_assert_msg(n_fix == c.n_fixes, "case %zu: %d fixes, expected %d", k, c.n_fixes, n_fix);
        if (n_fix) {
            int32_t *fx = ldm_xmalloc((size_t)ft->numel * sizeof *fx);
            ck_assert_int_eq(st_to_i32(ft, fx), 0);
            for (int i = 0; i < n_fix; i++) {
                ck_assert_int_eq(c.fixes[i].chunk, fx[3 * i]);
                ck_assert_int_eq(c.fixes[i].offset, fx[3 * i + 1]);
                ck_assert_int_eq(emb.n_vectors, fx[3 * i + 2]);
            }
            free(fx);
        }
        free(tokens);
        free(mults);
        prompt_chunks_free(&c);
        json_decref(js);
    }
    json_decref(cases);
    st_close(&ef);
    st_close(&f);
    free(emb_path);
    free(path);
    clip_tokenizer_free(tok);
}
END_TEST

/* ---- parse_prompt_attention edge cases (README 1.2, 6.2, 6.8) ------------- */

START_TEST(test_parse_empty) {
    /* nothing appended -> [["", 1.0]] */
    check_parse("", 1, (PromptFragment[]){{"", 1.0}});
    check_parse("()", 1, (PromptFragment[]){{"", 1.0}});
}
END_TEST

START_TEST(test_parse_only_break) {
    /* re.split gives ["", ""]: "", ["BREAK", -1], "" (whitespace consumed) */
    check_parse("BREAK", 3, (PromptFragment[]){{"", 1.0}, {"BREAK", -1.0}, {"", 1.0}});
    check_parse("  BREAK  ", 3, (PromptFragment[]){{"", 1.0}, {"BREAK", -1.0}, {"", 1.0}});
}
END_TEST

START_TEST(test_parse_empty_weight) {
    /* ":)" has no NUMBER ([.\d]+ needs one character): ':' is text, ')' closes at 1.1 */
    check_parse("(a:)", 1, (PromptFragment[]){{"a:", 1.1}});
}
END_TEST

START_TEST(test_parse_unmatched_weight) {
    /* ":N)" with an empty round stack is literal text */
    check_parse("a :1.5) b", 1, (PromptFragment[]){{"a :1.5) b", 1.0}});
    /* a square bracket does not take ":N)"; the unclosed '[' multiplies by 1/1.1 */
    check_parse("[x:1.5)", 1, (PromptFragment[]){{"x:1.5)", 1 / 1.1}});
    /* float(N) raises ValueError in the webui for "1.2.3" and "." */
    PromptParsed p;
    ck_assert_int_eq(prompt_parse_attention("(a:1.2.3)", &p), -1);
    ck_assert_int_eq(prompt_parse_attention("(a:.)", &p), -1);
}
END_TEST

START_TEST(test_parse_weights) {
    /* "(x:0)": multiplier 0; negative weights allowed; ":\s*N\s*)" spaces */
    check_parse("(x:0)", 1, (PromptFragment[]){{"x", 0.0}});
    check_parse("(x:-2)", 1, (PromptFragment[]){{"x", -2.0}});
    check_parse("(x:  .5  )", 1, (PromptFragment[]){{"x", 0.5}});
    /* unclosed '(' still multiplies by 1.1 */
    check_parse("a (b", 2, (PromptFragment[]){{"a ", 1.0}, {"b", 1.1}});
}
END_TEST

START_TEST(test_parse_escapes) {
    /* a lone backslash before a non-special char appends "" (merged away) */
    check_parse("a\\b", 1, (PromptFragment[]){{"ab", 1.0}});
    /* escapes inside brackets get the bracket's weight */
    check_parse("(\\(x\\))", 1, (PromptFragment[]){{"(x)", 1.1}});
    /* a trailing lone backslash */
    check_parse("x\\", 1, (PromptFragment[]){{"x", 1.0}});
}
END_TEST

START_TEST(test_parse_break_boundary) {
    /* \bBREAK\b: a word character next to it prevents the split */
    check_parse("xBREAK y", 1, (PromptFragment[]){{"xBREAK y", 1.0}});
    check_parse("a BREAK_b", 1, (PromptFragment[]){{"a BREAK_b", 1.0}});
    /* a bracket ends the text run: BREAK at the start of the run "BREAK y"
     * splits it into "" and "y" */
    check_parse("(x)BREAK y", 4,
                (PromptFragment[]){{"x", 1.1}, {"", 1.0}, {"BREAK", -1.0}, {"y", 1.0}});
    /* Python's \w and \s are Unicode: "é" is a word character, U+3000 and
     * U+00A0 are white space (consumed around BREAK) */
    check_parse("caf\u00e9BREAK x", 1, (PromptFragment[]){{"caf\u00e9BREAK x", 1.0}});
    check_parse("caf\u00e9\u3000BREAK\u00a0x", 3,
                (PromptFragment[]){{"caf\u00e9", 1.0}, {"BREAK", -1.0}, {"x", 1.0}});
    /* lower case is a plain word */
    check_parse("a break b", 1, (PromptFragment[]){{"a break b", 1.0}});
}
END_TEST

/* ---- tokenize_line edge cases (README 1.3) -------------------------------- */

START_TEST(test_chunk_empty_and_break) {
    ClipTokenizer *tok = load_vocab();
    PromptChunks c;
    /* "" -> one chunk [49406, 49407 x 76], token_count 0 */
    ck_assert_int_eq(prompt_tokenize(tok, "", NULL, 0, &c), 0);
    ck_assert_int_eq(c.n_chunks, 1);
    ck_assert_int_eq(c.token_count, 0);
    ck_assert_int_eq(c.tokens[0], CLIP_SOT);
    for (int i = 1; i < 77; i++) ck_assert_int_eq(c.tokens[i], CLIP_EOT);
    for (int i = 0; i < 77; i++) ck_assert(c.multipliers[i] == 1.0);
    prompt_chunks_free(&c);
    /* "BREAK" alone: the BREAK closes the empty chunk (all padding); the
     * empty last chunk is not closed as chunks exist: 1 chunk, 75 + 0 */
    ck_assert_int_eq(prompt_tokenize(tok, "BREAK", NULL, 0, &c), 0);
    ck_assert_int_eq(c.n_chunks, 1);
    ck_assert_int_eq(c.token_count, 75);
    for (int i = 1; i < 77; i++) ck_assert_int_eq(c.tokens[i], CLIP_EOT);
    prompt_chunks_free(&c);
    /* "BREAK BREAK": two all-padding chunks */
    ck_assert_int_eq(prompt_tokenize(tok, "BREAK BREAK", NULL, 0, &c), 0);
    ck_assert_int_eq(c.n_chunks, 2);
    ck_assert_int_eq(c.token_count, 150);
    prompt_chunks_free(&c);
    clip_tokenizer_free(tok);
}
END_TEST

START_TEST(test_chunk_embedding_weight_and_errors) {
    ClipTokenizer *tok = load_vocab();
    PromptChunks c;
    /* README 1.5: "tinyemb" -> [1310, 693, 3996]; (tinyemb:0) gives 3
     * placeholder ids 0 at multiplier 0 (README 1.4: the fragment's weight) */
    ck_assert_int_eq(prompt_tokenize(tok, "(tinyemb:0)", tinyemb, 1, &c), 0);
    ck_assert_int_eq(c.n_chunks, 1);
    ck_assert_int_eq(c.n_fixes, 1);
    ck_assert_int_eq(c.fixes[0].offset, 0);
    for (int i = 1; i <= 3; i++) {
        ck_assert_int_eq(c.tokens[i], 0);
        ck_assert(c.multipliers[i] == 0.0);
    }
    ck_assert_int_eq(c.tokens[4], CLIP_EOT);
    prompt_chunks_free(&c);
    /* without the embedding the name is 3 ordinary BPE tokens */
    ck_assert_int_eq(prompt_tokenize(tok, "tinyemb", NULL, 0, &c), 0);
    ck_assert_int_eq(c.n_fixes, 0);
    ck_assert_int_eq(c.tokens[1], 1310);
    ck_assert_int_eq(c.tokens[2], 693);
    ck_assert_int_eq(c.tokens[3], 3996);
    prompt_chunks_free(&c);
    /* an embedding's vectors never exceed one chunk; invalid UTF-8 fails */
    PromptEmbedding big = {.name = "tinyemb", .n_vectors = 76};
    ck_assert_int_eq(prompt_tokenize(tok, "tinyemb", &big, 1, &c), -1);
    ck_assert_int_eq(prompt_tokenize(tok, "\xff", NULL, 0, &c), -1);
    clip_tokenizer_free(tok);
}
END_TEST

/* ---- extra-network tags (README 1.1) ------------------------------------- */

static PromptLora lora_of(const char *prompt, PromptTags *tags) {
    ck_assert_int_eq(prompt_extract_tags(prompt, tags), 0);
    ck_assert_int_eq(tags->n_tags, 1);
    PromptLora l;
    ck_assert_msg(prompt_lora_params(&tags->tags[0], &l) == 0, "%s", ldm_last_error());
    return l;
}

START_TEST(test_lora_params) {
    PromptTags t;
    PromptLora l = lora_of("<lora:x:0.8>", &t); /* te 0.8, unet 0.8 */
    ck_assert_str_eq(l.name, "x");
    ck_assert(l.te == 0.8 && l.unet == 0.8 && l.dyn == -1);
    prompt_tags_free(&t);
    l = lora_of("<lora:x>", &t); /* defaults 1.0 */
    ck_assert(l.te == 1.0 && l.unet == 1.0);
    prompt_tags_free(&t);
    l = lora_of("<lora:tinylora:0.8:0.3>", &t);
    ck_assert(l.te == 0.8 && l.unet == 0.3);
    prompt_tags_free(&t);
    l = lora_of("<lora:other:te=0.5:unet=1.2>", &t);
    ck_assert_str_eq(l.name, "other");
    ck_assert(l.te == 0.5 && l.unet == 1.2);
    prompt_tags_free(&t);
    l = lora_of("<lora:o:te=0.5>", &t); /* unet defaults to te */
    ck_assert(l.te == 0.5 && l.unet == 0.5);
    prompt_tags_free(&t);
    l = lora_of("<lora:o:1:2:8>", &t);
    ck_assert(l.te == 1.0 && l.unet == 2.0 && l.dyn == 8);
    prompt_tags_free(&t);
    l = lora_of("<lora:o:dyn=4>", &t);
    ck_assert_int_eq(l.dyn, 4);
    prompt_tags_free(&t);
    /* not a number: the webui's float() raises */
    ck_assert_int_eq(prompt_extract_tags("<lora:o:abc>", &t), 0);
    PromptLora bad;
    ck_assert_int_eq(prompt_lora_params(&t.tags[0], &bad), -1);
    prompt_tags_free(&t);
    ck_assert_int_eq(prompt_extract_tags("<hypernet:h:1>", &t), 0);
    ck_assert_int_eq(prompt_lora_params(&t.tags[0], &bad), -1); /* not lora */
    prompt_tags_free(&t);
}
END_TEST

START_TEST(test_tags_no_match) {
    PromptTags t;
    /* <(\w+):([^>]+)>: needs a word, a ':', at least one char, a '>' */
    const char *kept[] = {"a < b > c", "<lora:>", "<:x>", "<lora:x", "<lo ra:x>", "<>"};
    for (size_t i = 0; i < sizeof kept / sizeof *kept; i++) {
        ck_assert_int_eq(prompt_extract_tags(kept[i], &t), 0);
        ck_assert_msg(t.n_tags == 0, "'%s': %d tags", kept[i], t.n_tags);
        ck_assert_str_eq(t.text, kept[i]);
        prompt_tags_free(&t);
    }
    /* an item may hold anything but '>'; empty items stay (split(':')) */
    ck_assert_int_eq(prompt_extract_tags("x<lora:a b::(c)>y", &t), 0);
    ck_assert_str_eq(t.text, "xy");
    ck_assert_int_eq(t.n_tags, 1);
    ck_assert_int_eq(t.tags[0].n_items, 3);
    ck_assert_str_eq(t.tags[0].items[0], "a b");
    ck_assert_str_eq(t.tags[0].items[1], "");
    ck_assert_str_eq(t.tags[0].items[2], "(c)");
    prompt_tags_free(&t);
}
END_TEST

Suite *suite_prompt(void) {
    Suite *s = suite_create("prompt");
    TCase *tc = tcase_create("prompt");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_goldens);
    tcase_add_test(tc, test_prompt_cond_inputs);
    tcase_add_test(tc, test_parse_empty);
    tcase_add_test(tc, test_parse_only_break);
    tcase_add_test(tc, test_parse_empty_weight);
    tcase_add_test(tc, test_parse_unmatched_weight);
    tcase_add_test(tc, test_parse_weights);
    tcase_add_test(tc, test_parse_escapes);
    tcase_add_test(tc, test_parse_break_boundary);
    tcase_add_test(tc, test_chunk_empty_and_break);
    tcase_add_test(tc, test_chunk_embedding_weight_and_errors);
    tcase_add_test(tc, test_lora_params);
    tcase_add_test(tc, test_tags_no_match);
    suite_add_tcase(s, tc);
    return s;
}
