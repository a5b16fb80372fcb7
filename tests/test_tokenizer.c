/*
 * test_tokenizer.c - the CLIP tokenizer (runtime/tokenizer.c) and its CLI
 * (build/ldm-tokenize) against shared/goldens/clip_tokenizer, plus the
 * vocabulary file errors, invalid UTF-8, cleaning rules and speed.
 *
 * Expected ids come from tokens.jsonl (openai/CLIP SimpleTokenizer + SD v1
 * framing). Where no golden exists, a test states an equivalence that
 * Python's reference semantics guarantee (e.g. html.unescape("&amp;#39;")
 * twice == "'"), and checks it against a golden prompt.
 */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "testutil.h"
#include "tokenizer.h"
#include "util.h"

/* ---- helpers ------------------------------------------------------------ */

static char *vocab_path(void) {
    return ldm_xasprintf("%s/clip/bpe_simple_vocab_16e6.txt.gz", test_shared_dir());
}

static ClipTokenizer *load_vocab(void) {
    char *path = vocab_path();
    ClipTokenizer *t = clip_tokenizer_load(path);
    ck_assert_msg(t != NULL, "loading %s: %s", path, ldm_last_error());
    free(path);
    return t;
}

/* One golden case of tokens.jsonl. */
typedef struct Golden {
    char *prompt;                    /* UTF-8 prompt */
    int32_t ids[CLIP_CONTEXT_LENGTH]; /* expected ids */
    int n_bpe;                       /* expected BPE count before truncation */
} Golden;

/* Reads all of tokens.jsonl; returns the number of cases. */
static int load_goldens(Golden **out) {
    char *path = ldm_xasprintf("%s/goldens/clip_tokenizer/tokens.jsonl", test_shared_dir());
    size_t len;
    char *text = ldm_read_file(path, &len);
    ck_assert_msg(text != NULL, "%s", ldm_last_error());
    Golden *g = NULL;
    int n = 0;
    int lineno = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        lineno++;
        json_error_t err;
        json_t *o = json_loads(line, 0, &err);
        ck_assert_msg(o != NULL, "%s:%d: %s", path, lineno, err.text);
        json_t *prompt = json_object_get(o, "prompt"), *ids = json_object_get(o, "ids");
        json_t *n_bpe = json_object_get(o, "n_bpe");
        ck_assert_msg(json_is_string(prompt) && json_is_array(ids) && json_is_integer(n_bpe),
                      "%s:%d: expected prompt, ids and n_bpe", path, lineno);
        ck_assert_int_eq(json_array_size(ids), CLIP_CONTEXT_LENGTH);
        g = ldm_xrealloc(g, (size_t)(n + 1) * sizeof *g);
        g[n].prompt = ldm_xstrdup(json_string_value(prompt));
        for (int i = 0; i < CLIP_CONTEXT_LENGTH; i++)
            g[n].ids[i] = (int32_t)json_integer_value(json_array_get(ids, (size_t)i));
        g[n].n_bpe = (int)json_integer_value(n_bpe);
        n++;
        json_decref(o);
    }
    free(text);
    free(path);
    *out = g;
    return n;
}

static void free_goldens(Golden *g, int n) {
    for (int i = 0; i < n; i++) free(g[i].prompt);
    free(g);
}

static const Golden *find_golden(const Golden *g, int n, const char *prompt) {
    for (int i = 0; i < n; i++)
        if (strcmp(g[i].prompt, prompt) == 0) return &g[i];
    ck_abort_msg("no golden prompt '%s' in tokens.jsonl", prompt);
    return NULL;
}

/* Asserts that prompt tokenizes exactly like the golden prompt `like`. */
static void check_same_as_golden(const ClipTokenizer *t, const Golden *g, int n,
                                 const char *prompt, const char *like) {
    const Golden *want = find_golden(g, n, like);
    int32_t ids[CLIP_CONTEXT_LENGTH];
    int n_bpe = -1;
    ck_assert_msg(clip_tokenize(t, prompt, ids, &n_bpe) == 0, "'%s': %s", prompt, ldm_last_error());
    ck_assert_msg(n_bpe == want->n_bpe, "'%s': n_bpe %d, expected %d (as '%s')", prompt, n_bpe,
                  want->n_bpe, like);
    for (int i = 0; i < CLIP_CONTEXT_LENGTH; i++)
        ck_assert_msg(ids[i] == want->ids[i], "'%s': ids[%d] = %d, expected %d (as '%s')", prompt,
                      i, ids[i], want->ids[i], like);
}

/* Asserts that two prompts give the same ids. */
static void check_same(const ClipTokenizer *t, const char *a, const char *b) {
    int32_t ia[CLIP_CONTEXT_LENGTH], ib[CLIP_CONTEXT_LENGTH];
    int na, nb;
    ck_assert_msg(clip_tokenize(t, a, ia, &na) == 0, "%s", ldm_last_error());
    ck_assert_msg(clip_tokenize(t, b, ib, &nb) == 0, "%s", ldm_last_error());
    ck_assert_msg(na == nb && na > 0, "'%s' gives %d tokens, '%s' %d", a, na, b, nb);
    ck_assert_msg(memcmp(ia, ib, sizeof ia) == 0, "'%s' and '%s' tokenize differently", a, b);
}

/* Writes bytes to a new temporary file; returns its malloc'd path. */
static char *write_temp(const void *data, size_t len) {
    char *path = ldm_xstrdup("/tmp/ldm_tok_test_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_msg(fd >= 0, "mkstemp failed");
    ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
    return path;
}

/* Writes text gzip-compressed to a new temporary file. */
static char *write_temp_gzip(const char *text) {
    char *path = write_temp("", 0);
    gzFile gz = gzopen(path, "wb");
    ck_assert(gz != NULL);
    ck_assert_int_eq(gzwrite(gz, text, (unsigned)strlen(text)), (int)strlen(text));
    ck_assert_int_eq(gzclose(gz), Z_OK);
    return path;
}

/* Loading path must fail with a message containing path and `expect`. */
static void check_load_fails(const char *path, const char *expect) {
    ClipTokenizer *t = clip_tokenizer_load(path);
    ck_assert_msg(t == NULL, "%s: loaded, expected an error", path);
    const char *msg = ldm_last_error();
    ck_assert_msg(strstr(msg, path) != NULL, "error does not name the file: %s", msg);
    ck_assert_msg(strstr(msg, expect) != NULL, "error '%s' lacks '%s'", msg, expect);
}

static int run(const char *cmd, char **output);

/* ---- goldens ------------------------------------------------------------ */

START_TEST(test_golden_prompts) {
    ClipTokenizer *t = load_vocab();
    Golden *g;
    int n = load_goldens(&g);
    char *meta_path = ldm_xasprintf("%s/goldens/clip_tokenizer/META.json", test_shared_dir());
    json_error_t err;
    json_t *meta = json_load_file(meta_path, 0, &err);
    ck_assert_msg(meta != NULL, "%s: %s", meta_path, err.text);
    ck_assert_int_eq(n, (int)json_integer_value(json_object_get(meta, "n_prompts")));
    int truncated = 0;
    for (int k = 0; k < n; k++) {
        int32_t ids[CLIP_CONTEXT_LENGTH];
        int n_bpe = -1;
        ck_assert_msg(clip_tokenize(t, g[k].prompt, ids, &n_bpe) == 0, "'%s': %s", g[k].prompt,
                      ldm_last_error());
        ck_assert_msg(n_bpe == g[k].n_bpe, "'%s': n_bpe %d, expected %d", g[k].prompt, n_bpe,
                      g[k].n_bpe);
        for (int i = 0; i < CLIP_CONTEXT_LENGTH; i++)
            ck_assert_msg(ids[i] == g[k].ids[i], "'%s': ids[%d] = %d, expected %d", g[k].prompt,
                          i, ids[i], g[k].ids[i]);
        truncated += n_bpe > CLIP_CONTEXT_LENGTH - 2;
    }
    ck_assert_int_eq(truncated, (int)json_integer_value(json_object_get(meta, "n_truncated")));
    json_decref(meta);
    free(meta_path);
    free_goldens(g, n);
    clip_tokenizer_free(t);
}
END_TEST

/* The vocabulary compiled into the programs (runtime/vocab.S) is
 * openai/CLIP's file byte for byte, and tokenises every golden prompt as
 * the golden says, in process and through ldm-tokenize without --vocab. */
START_TEST(test_builtin_vocab) {
    size_t na, nb;
    char *ours = ldm_read_file("runtime/vocab/bpe_simple_vocab_16e6.txt.gz", &na);
    char *vp = vocab_path(), *theirs = ldm_read_file(vp, &nb);
    free(vp);
    ck_assert_msg(ours && theirs, "%s", ldm_last_error());
    ck_assert_msg(na == nb && memcmp(ours, theirs, na) == 0,
                  "runtime/vocab/bpe_simple_vocab_16e6.txt.gz differs from the shared copy");
    free(ours);
    free(theirs);
    ClipTokenizer *t = clip_tokenizer_load_builtin();
    ck_assert_msg(t, "%s", ldm_last_error());
    Golden *g;
    int n = load_goldens(&g);
    for (int k = 0; k < n; k++) {
        int32_t ids[CLIP_CONTEXT_LENGTH];
        ck_assert_msg(clip_tokenize(t, g[k].prompt, ids, NULL) == 0, "'%s': %s", g[k].prompt, ldm_last_error());
        for (int i = 0; i < CLIP_CONTEXT_LENGTH; i++)
            ck_assert_msg(ids[i] == g[k].ids[i], "built-in vocabulary: '%s': ids[%d] = %d, expected %d", g[k].prompt,
                          i, ids[i], g[k].ids[i]);
    }
    clip_tokenizer_free(t);
    char *exe = ldm_xasprintf("%s/ldm-tokenize", test_build_dir()), *out;
    const Golden *want = find_golden(g, n, "A painting of a fox in the snow, by Claude Monet");
    char *cmd = ldm_xasprintf("%s '%s'", exe, want->prompt);
    ck_assert_msg(run(cmd, &out) == 0, "%s: %s", cmd, out);
    char *p = out;
    for (int i = 0; i < CLIP_CONTEXT_LENGTH; i++) {
        char *end;
        long v = strtol(p, &end, 10);
        ck_assert_msg(end != p, "output too short: %s", out);
        ck_assert_int_eq(v, want->ids[i]);
        p = end;
    }
    free(out);
    free(cmd);
    free(exe);
    free_goldens(g, n);
}
END_TEST

START_TEST(test_empty_prompt) {
    ClipTokenizer *t = load_vocab();
    const char *prompts[] = {"", " ", "\t\n \r\n", "\xe3\x80\x80"}; /* last: U+3000 */
    for (size_t p = 0; p < sizeof prompts / sizeof *prompts; p++) {
        int32_t ids[CLIP_CONTEXT_LENGTH];
        int n_bpe = -1;
        ck_assert_int_eq(clip_tokenize(t, prompts[p], ids, &n_bpe), 0);
        ck_assert_int_eq(n_bpe, 0);
        ck_assert_int_eq(ids[0], 49406);
        for (int i = 1; i < CLIP_CONTEXT_LENGTH; i++) ck_assert_int_eq(ids[i], 49407);
    }
    clip_tokenizer_free(t);
}
END_TEST

/* Context length other than 77: the same ids, truncated earlier. */
START_TEST(test_context_length) {
    ClipTokenizer *t = load_vocab();
    Golden *g;
    int n = load_goldens(&g);
    const Golden *longest = &g[0];
    for (int k = 1; k < n; k++)
        if (g[k].n_bpe > longest->n_bpe) longest = &g[k];
    int32_t ids[10];
    int n_bpe;
    ck_assert_int_eq(clip_tokenize_ctx(t, longest->prompt, 10, ids, &n_bpe), 0);
    ck_assert_int_eq(n_bpe, longest->n_bpe);
    for (int i = 0; i < 9; i++) ck_assert_int_eq(ids[i], longest->ids[i]);
    ck_assert_int_eq(ids[9], 49407);
    ck_assert_int_eq(clip_tokenize_ctx(t, "cat", 1, ids, &n_bpe), -1);
    int32_t *all;
    int count = clip_encode(t, longest->prompt, &all);
    ck_assert_int_eq(count, longest->n_bpe);
    for (int i = 0; i < 75; i++) ck_assert_int_eq(all[i], longest->ids[i + 1]);
    free(all);
    free_goldens(g, n);
    clip_tokenizer_free(t);
}
END_TEST

/* Vocabulary layout of SOURCE.md: byte symbols in bytes_to_unicode order. */
START_TEST(test_vocab_layout) {
    ClipTokenizer *t = load_vocab();
    ck_assert_str_eq(clip_token_text(t, 0), "!");
    ck_assert_str_eq(clip_token_text(t, 64), "a");      /* 0x61 - 0x21 */
    ck_assert_str_eq(clip_token_text(t, 320), "a</w>"); /* 256 + 64: golden "a" */
    ck_assert_str_eq(clip_token_text(t, 188), "\xc4\x80");  /* byte 0x00 -> U+0100 */
    ck_assert_str_eq(clip_token_text(t, 256 + 188 + 32), "\xc4\xa0</w>"); /* space */
    ck_assert_str_eq(clip_token_text(t, 49406), "<|startoftext|>");
    ck_assert_str_eq(clip_token_text(t, 49407), "<|endoftext|>");
    ck_assert_ptr_null(clip_token_text(t, 49408));
    ck_assert_ptr_null(clip_token_text(t, -1));
    clip_tokenizer_free(t);
}
END_TEST

/* ---- cleaning rules (equivalences of the Python reference) -------------- */

START_TEST(test_html_unescape) {
    ClipTokenizer *t = load_vocab();
    Golden *g;
    int n = load_goldens(&g);
    /* unescaped twice */
    check_same_as_golden(t, g, n, "Tom&amp;#39;s diner", "Tom&#39;s diner");
    check_same_as_golden(t, g, n, "salt &amp;amp; pepper", "salt &amp; pepper");
    /* hex, named, ';'-less and HTML5 forms of the same characters */
    check_same_as_golden(t, g, n, "Tom&#x27;s diner", "Tom&#39;s diner");
    check_same_as_golden(t, g, n, "Tom&#X27s diner", "Tom&#39;s diner");
    check_same_as_golden(t, g, n, "Tom&apos;s diner", "Tom&#39;s diner");
    check_same_as_golden(t, g, n, "salt &amp pepper", "salt &amp; pepper");
    check_same_as_golden(t, g, n, "salt &#38; pepper", "salt &amp; pepper");
    /* &nbsp; is U+00A0, white space that collapses */
    check_same_as_golden(t, g, n, "salt&nbsp;&amp;&nbsp;pepper", "salt &amp; pepper");
    check_same_as_golden(t, g, n, "&quot;quoted&quot; text &AMP; more &GT; less",
                         "&quot;quoted&quot; text &amp; more &gt; less");
    /* not references: left as they are */
    check_same(t, "a &# b", "a &amp;# b");
    check_same(t, "a &#x; b", "a &amp;#x; b");
    check_same(t, "a &unknownname; b", "a &amp;unknownname; b");
    /* longest known prefix of a name without ';' ("&ampx" -> "&x") */
    check_same(t, "salt &ampx pepper", "salt &x pepper");
    check_same(t, "a &notit; b", "a \xc2\xacit; b");
    /* numeric references: invalid ones per html.unescape */
    check_same(t, "a&#0;b", "a\xef\xbf\xbd""b");          /* U+FFFD */
    check_same(t, "a&#x110000;b", "a\xef\xbf\xbd""b");
    check_same(t, "a&#xD800;b", "a\xef\xbf\xbd""b");
    check_same(t, "a&#128;b", "a\xe2\x82\xac""b");         /* cp1252: euro sign */
    check_same(t, "a&#1;b", "ab");                         /* dropped */
    free_goldens(g, n);
    clip_tokenizer_free(t);
}
END_TEST

START_TEST(test_whitespace_and_case) {
    ClipTokenizer *t = load_vocab();
    Golden *g;
    int n = load_goldens(&g);
    /* U+3000, U+2003, U+00A0 and U+0085 are Unicode white space */
    check_same_as_golden(t, g, n, "\xe3\x80\x80 cat \xe2\x80\x83", "cat");
    check_same_as_golden(t, g, n, "a\xc2\xa0photograph\xc2\x85of an  astronaut\triding a horse",
                         "a photograph of an astronaut riding a horse");
    /* full Unicode lower-casing */
    check_same_as_golden(t, g, n, "école über ångström", "ÉCOLE ÜBER ÅNGSTRÖM");
    check_same_as_golden(t, g, n, "привет, мир! русский текст", "Привет, мир! Русский текст");
    check_same_as_golden(t, g, n, "ΕΛΛΗΝΙΚΆ ΓΡΆΜΜΑΤΑ ΚΑΙ ΚΕΊΜΕΝΟ", "Ελληνικά γράμματα και κείμενο");
    /* U+0130 lower-cases to two code points: "i" U+0307 */
    check_same(t, "\xc4\xb0stanbul", "i\xcc\x87stanbul");
    /* Final_Sigma: word-final capital sigma becomes U+03C2 */
    check_same(t, "ΟΔΟΣ ΣΑ", "οδος σα");
    free_goldens(g, n);
    clip_tokenizer_free(t);
}
END_TEST

/* Special-token text in a prompt maps to the special id (reference cache). */
START_TEST(test_special_tokens_in_prompt) {
    ClipTokenizer *t = load_vocab();
    int32_t ids[CLIP_CONTEXT_LENGTH];
    int n_bpe;
    ck_assert_int_eq(clip_tokenize(t, "a <|endoftext|>", ids, &n_bpe), 0);
    ck_assert_int_eq(n_bpe, 2);
    ck_assert_int_eq(ids[1], 320); /* "a</w>", as in the goldens */
    ck_assert_int_eq(ids[2], 49407);
    ck_assert_int_eq(clip_tokenize(t, "<|STARTOFTEXT|>", ids, &n_bpe), 0);
    ck_assert_int_eq(n_bpe, 1);
    ck_assert_int_eq(ids[1], 49406);
    clip_tokenizer_free(t);
}
END_TEST

START_TEST(test_invalid_utf8) {
    ClipTokenizer *t = load_vocab();
    const char *bad[] = {"caf\xe9",             /* Latin-1 byte */
                         "abc \xc3",            /* truncated sequence */
                         "\xc0\xaf",            /* overlong '/' */
                         "\xed\xa0\x80",        /* surrogate U+D800 */
                         "\xf4\x90\x80\x80",    /* above U+10FFFF */
                         "\x80 stray"};         /* stray continuation byte */
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        int32_t ids[CLIP_CONTEXT_LENGTH];
        int n_bpe;
        ck_assert_int_eq(clip_tokenize(t, bad[k], ids, &n_bpe), -1);
        ck_assert_msg(strstr(ldm_last_error(), "invalid UTF-8") != NULL, "%s", ldm_last_error());
    }
    clip_tokenizer_free(t);
}
END_TEST

/* ---- vocabulary file errors --------------------------------------------- */

START_TEST(test_missing_file) {
    check_load_fails("/nonexistent/dir/bpe_simple_vocab_16e6.txt.gz", "cannot open");
}
END_TEST

START_TEST(test_not_gzip) {
    const char *text = "\"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nt h\n";
    char *path = write_temp(text, strlen(text));
    check_load_fails(path, "not a gzip file");
    unlink(path);
    free(path);
}
END_TEST

START_TEST(test_truncated_gzip) {
    char *real = vocab_path();
    size_t len;
    char *data = ldm_read_file(real, &len);
    ck_assert_msg(data != NULL, "%s", ldm_last_error());
    size_t cuts[] = {len / 2, len - 4, 20};
    for (size_t k = 0; k < sizeof cuts / sizeof *cuts; k++) {
        char *path = write_temp(data, cuts[k]);
        check_load_fails(path, "truncated");
        unlink(path);
        free(path);
    }
    free(data);
    free(real);
}
END_TEST

START_TEST(test_malformed_vocab) {
    struct {
        const char *text;   /* decompressed content */
        const char *expect; /* part of the message */
    } cases[] = {
        {"", "empty"},
        {"i n\nt h\n", ":1: expected the '#version:' header"},
        {"\"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nthe\n", ":3: expected 'left right'"},
        {"\"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nt  h\n", ":3: expected 'left right'"},
        {"\"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nt h\r\n", ":3: expected 'left right'"},
        {"\"bpe_simple_vocab_16e6.txt#version: 0.2\n n\n", ":2: expected 'left right'"},
        {"\"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nt h\n",
         "expected at least 48894 merge lines after the header, found 2"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        char *path = write_temp_gzip(cases[k].text);
        check_load_fails(path, cases[k].expect);
        unlink(path);
        free(path);
    }
}
END_TEST

/* ---- speed -------------------------------------------------------------- */

START_TEST(test_speed) {
    ClipTokenizer *t = load_vocab();
    Golden *g;
    int n = load_goldens(&g);
    const Golden *longest = &g[0];
    for (int k = 1; k < n; k++)
        if (g[k].n_bpe > longest->n_bpe) longest = &g[k];
    ck_assert_int_gt(longest->n_bpe, 200);
    int32_t ids[CLIP_CONTEXT_LENGTH];
    int n_bpe;
    double t0 = ldm_now();
    for (int r = 0; r < 100; r++) ck_assert_int_eq(clip_tokenize(t, longest->prompt, ids, &n_bpe), 0);
    double per_prompt = (ldm_now() - t0) / 100;
    /* milliseconds in practice (~0.1 ms); generous for sanitizer builds */
    ck_assert_msg(per_prompt < 0.02, "200-word prompt took %.1f ms", per_prompt * 1e3);
    /* one 60000-byte piece (a CJK run is a single \p{L}+ match): BPE must not
     * be quadratic */
    const char *cjk = "一只可爱的猫坐在窗台上東京の夜景";
    size_t unit = strlen(cjk), reps = 60000 / unit;
    char *big = ldm_xmalloc(reps * unit + 1);
    for (size_t r = 0; r < reps; r++) memcpy(big + r * unit, cjk, unit);
    big[reps * unit] = 0;
    t0 = ldm_now();
    ck_assert_int_eq(clip_tokenize(t, big, ids, &n_bpe), 0);
    double secs = ldm_now() - t0;
    ck_assert_int_gt(n_bpe, (int)reps);
    ck_assert_msg(secs < 2.0, "a 60000-byte word took %.2f s", secs);
    free(big);
    free_goldens(g, n);
    clip_tokenizer_free(t);
}
END_TEST

/* ---- build/ldm-tokenize ------------------------------------------------- */

/* Runs a shell command; returns its exit status and its stdout+stderr. */
static int run(const char *cmd, char **output) {
    char *full = ldm_xasprintf("%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    ck_assert(p != NULL);
    size_t n = 0, cap = 4096;
    char *buf = ldm_xmalloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += got;
        if (n + 1 == cap) buf = ldm_xrealloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int status = pclose(p);
    free(full);
    *output = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

START_TEST(test_cli) {
    char *exe = ldm_xasprintf("%s/ldm-tokenize", test_build_dir());
    ck_assert_msg(access(exe, X_OK) == 0, "%s is not built", exe);
    char *vocab = vocab_path();
    Golden *g;
    int n = load_goldens(&g);
    const Golden *want = find_golden(g, n, "A painting of a fox in the snow, by Claude Monet");
    char *out, *cmd;

    cmd = ldm_xasprintf("%s --vocab '%s' '%s'", exe, vocab, want->prompt);
    ck_assert_msg(run(cmd, &out) == 0, "%s: %s", cmd, out);
    char *p = out;
    for (int i = 0; i < CLIP_CONTEXT_LENGTH; i++) {
        char *end;
        long v = strtol(p, &end, 10);
        ck_assert_msg(end != p, "output too short: %s", out);
        ck_assert_int_eq(v, want->ids[i]);
        ck_assert(*end == (i + 1 < CLIP_CONTEXT_LENGTH ? ' ' : '\n'));
        p = end + 1;
    }
    ck_assert_str_eq(p, "");
    free(out);
    free(cmd);

    cmd = ldm_xasprintf("%s --help", exe);
    ck_assert_int_eq(run(cmd, &out), 0);
    ck_assert_ptr_nonnull(strstr(out, "usage"));
    free(out);
    free(cmd);

    const char *bad[] = {"--vocab", "--bogus --vocab VOCAB 'a cat'",
                         "--vocab VOCAB", "--vocab /nonexistent.gz 'a cat'",
                         "--vocab VOCAB --context 1 'a cat'", "--vocab VOCAB 'a' 'b'"};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        char *args = ldm_xstrdup(bad[k]);
        char *v = strstr(args, "VOCAB");
        if (v) {
            *v = 0;
            char *tmp = ldm_xasprintf("%s'%s'%s", args, vocab, v + 5);
            free(args);
            args = tmp;
        }
        cmd = ldm_xasprintf("%s %s", exe, args);
        ck_assert_msg(run(cmd, &out) != 0, "'%s' succeeded", cmd);
        ck_assert_msg(strstr(out, "ldm-tokenize:") != NULL, "'%s' printed no message: %s", cmd,
                      out);
        free(out);
        free(cmd);
        free(args);
    }
    free_goldens(g, n);
    free(vocab);
    free(exe);
}
END_TEST

Suite *suite_tokenizer(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("clip");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_golden_prompts);
    tcase_add_test(tc, test_builtin_vocab);
    tcase_add_test(tc, test_empty_prompt);
    tcase_add_test(tc, test_context_length);
    tcase_add_test(tc, test_vocab_layout);
    tcase_add_test(tc, test_html_unescape);
    tcase_add_test(tc, test_whitespace_and_case);
    tcase_add_test(tc, test_special_tokens_in_prompt);
    tcase_add_test(tc, test_invalid_utf8);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_not_gzip);
    tcase_add_test(tc, test_truncated_gzip);
    tcase_add_test(tc, test_malformed_vocab);
    tcase_add_test(tc, test_speed);
    tcase_add_test(tc, test_cli);
    suite_add_tcase(s, tc);
    return s;
}
