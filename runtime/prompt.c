/*
 * prompt.c - the AUTOMATIC1111 webui prompt syntax (see prompt.h and
 * shared/goldens/sd1-adapters/README.md sections 1.1-1.3).
 *
 * The webui does all of this with Python regexes; each section below names
 * the Python it ports and writes the regex out, then matches it by hand.
 * Character classes follow Python's `re` on str patterns: \w = str.isalnum()
 * or '_' (taken as \p{L} | \p{N} | '_'), \s = str.isspace(). The weight of
 * `:N)` accepts ASCII digits only (Python's \d would also take other Unicode
 * decimal digits: a documented divergence).
 */
#include "prompt.h"

#include <stdlib.h>
#include <string.h>

#include "unicode_tables.h"
#include "utf8.h"
#include "util.h"

#define CHUNK_CTX (PROMPT_CHUNK_LENGTH + 2) /* 77: SOT + 75 + EOT */

/* ----------------------------------------------------------------------------
 * UTF-8 and character classes */

/* Strict UTF-8 check (utf8.h, the tokenizer's rules): 0, or -1 (ldm_fail). */
static int utf8_check(const char *s) {
    for (size_t i = 0; s[i];) {
        uint32_t cp;
        int n = ldm_utf8_next(s, i, &cp);
        if (n < 0) return ldm_fail("prompt: invalid UTF-8 at byte %zu", i);
        i += (size_t)n;
    }
    return 0;
}

/* The code point ending just before s[i] (i > 0, valid UTF-8). */
static uint32_t utf8_before(const char *s, size_t i) {
    size_t j = i - 1;
    while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
    int len;
    return ldm_utf8_at(s, j, &len);
}

/* Python re \w (str pattern). */
static int is_word(uint32_t c) {
    if (c < 0x80)
        return c == '_' || (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
    return LDM_IN_TABLE(uni_letter, c) || LDM_IN_TABLE(uni_number, c);
}

/* Python re \s (str pattern) = str.isspace(). */
static int is_space(uint32_t c) { return ldm_is_py_space(c); }

/* Length of the run of \s starting at s[i] (bytes). */
static size_t space_run(const char *s, size_t i) {
    size_t j = i;
    int len;
    while (s[j] && is_space(ldm_utf8_at(s, j, &len))) j += (size_t)len;
    return j - i;
}

static char *substr(const char *s, size_t n) {
    char *r = ldm_xmalloc(n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

/* ----------------------------------------------------------------------------
 * 1.1 extra_networks.parse_prompt: re.sub(r"<(\w+):([^>]+)>", found, prompt),
 * found() records ExtraNetworkParams(items=group(2).split(':')). */

int prompt_extract_tags(const char *prompt, PromptTags *out) {
    memset(out, 0, sizeof *out);
    if (utf8_check(prompt)) return -1;
    size_t n = strlen(prompt), o = 0;
    char *text = ldm_xmalloc(n + 1);
    for (size_t i = 0; i < n;) {
        if (prompt[i] == '<') {
            size_t j = i + 1; /* after \w+ */
            int len;
            while (prompt[j] && is_word(ldm_utf8_at(prompt, j, &len))) j += (size_t)len;
            const char *gt = j > i + 1 && prompt[j] == ':' ? strchr(prompt + j + 1, '>') : NULL;
            if (gt && gt > prompt + j + 1) { /* [^>]+ is not empty */
                PromptTag tag = {.type = substr(prompt + i + 1, j - i - 1)};
                const char *p = prompt + j + 1;
                for (;;) { /* str.split(':') */
                    const char *q = memchr(p, ':', (size_t)(gt - p));
                    const char *e = q ? q : gt;
                    tag.items = ldm_xrealloc(tag.items, (size_t)(tag.n_items + 1) * sizeof *tag.items);
                    tag.items[tag.n_items++] = substr(p, (size_t)(e - p));
                    if (!q) break;
                    p = q + 1;
                }
                out->tags = ldm_xrealloc(out->tags, (size_t)(out->n_tags + 1) * sizeof *out->tags);
                out->tags[out->n_tags++] = tag;
                i = (size_t)(gt - prompt) + 1;
                continue;
            }
        }
        text[o++] = prompt[i++];
    }
    text[o] = 0;
    out->text = text;
    return 0;
}

void prompt_tags_free(PromptTags *t) {
    for (int i = 0; i < t->n_tags; i++) {
        for (int k = 0; k < t->tags[i].n_items; k++) free(t->tags[i].items[k]);
        free(t->tags[i].items);
        free(t->tags[i].type);
    }
    free(t->tags);
    free(t->text);
    memset(t, 0, sizeof *t);
}

/* Python float(s): optional white space, then strtod's decimal forms, inf
 * and nan. Hex ("0x1") and an empty string are rejected. */
static int py_float(const char *s, double *v) {
    const char *p = s;
    int len;
    while (*p && is_space(ldm_utf8_at(p, 0, &len))) p += len;
    const char *digits = p + (*p == '+' || *p == '-');
    if (digits[0] == '0' && (digits[1] | 0x20) == 'x') return -1;
    char *end;
    *v = strtod(p, &end);
    if (end == p) return -1;
    while (*end && is_space(ldm_utf8_at(end, 0, &len))) end += len;
    return *end ? -1 : 0;
}

/* Python int(s) for dyn=: optional white space, sign, decimal digits. */
static int py_int(const char *s, int *v) {
    char *end;
    long x = strtol(s, &end, 10);
    int len;
    if (end == s || x < -2147483647L || x > 2147483647L) return -1;
    while (*end && is_space(ldm_utf8_at(end, 0, &len))) end += len;
    if (*end) return -1;
    *v = (int)x;
    return 0;
}

/* extra_networks_lora.ExtraNetworkLora.activate:
 *   te = float(positional[1]) if len(positional) > 1 else 1.0; te = float(named.get("te", te))
 *   unet = float(positional[2]) if len(positional) > 2 else te; unet = float(named.get("unet", unet))
 *   dyn = int(positional[3]) if len(positional) > 3 else None; dyn = int(named["dyn"]) if present
 * ExtraNetworkParams: item.split('=', 2) of length 2 (one '=') is named. */
int prompt_lora_params(const PromptTag *tag, PromptLora *out) {
    if (strcmp(tag->type, "lora") != 0)
        return ldm_fail("<%s:...>: not a lora tag", tag->type);
    const char *pos[4] = {0}; /* positional[0..3] */
    const char *te = NULL, *unet = NULL, *dyn = NULL; /* named values */
    int n_pos = 0;
    for (int k = 0; k < tag->n_items; k++) {
        const char *item = tag->items[k];
        const char *eq = strchr(item, '=');
        if (eq && !strchr(eq + 1, '=')) {
            size_t kl = (size_t)(eq - item);
            if (kl == 2 && !strncmp(item, "te", 2)) te = eq + 1;
            else if (kl == 4 && !strncmp(item, "unet", 4)) unet = eq + 1;
            else if (kl == 3 && !strncmp(item, "dyn", 3)) dyn = eq + 1;
        } else {
            if (n_pos < 4) pos[n_pos] = item;
            n_pos++;
        }
    }
    if (n_pos == 0) return ldm_fail("<lora:...>: no network name"); /* webui: IndexError */
    out->name = pos[0];
    out->te = 1.0;
    out->dyn = -1;
    const char *bad = NULL;
    if (pos[1] && py_float(pos[1], &out->te)) bad = pos[1];
    if (te && py_float(te, &out->te)) bad = te;
    out->unet = out->te;
    if (pos[2] && py_float(pos[2], &out->unet)) bad = pos[2];
    if (unet && py_float(unet, &out->unet)) bad = unet;
    if (pos[3] && py_int(pos[3], &out->dyn)) bad = pos[3];
    if (dyn && py_int(dyn, &out->dyn)) bad = dyn;
    if (bad) return ldm_fail("<lora:%s:...>: '%s' is not a number", pos[0], bad);
    return 0;
}

/* ----------------------------------------------------------------------------
 * 1.2 prompt_parser.parse_prompt_attention. re_attention, alternatives in
 * order (first match wins):
 *   \\\( | \\\) | \\\[ | \\] | \\\\ | \\ | \( | \[ | :\s*([+-]?[.\d]+)\s*\) |
 *   \) | ] | [^\\()\[\]:]+ | :
 * re_break = \s*\bBREAK\b\s* */

typedef struct FragList {
    PromptFragment *f; /* (cap) fragments */
    int n;             /* used */
    int cap;           /* allocated */
} FragList;

static void frag_push(FragList *l, char *text, double weight) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->f = ldm_xrealloc(l->f, (size_t)l->cap * sizeof *l->f);
    }
    l->f[l->n++] = (PromptFragment){text, weight};
}

/* multiply_range: res[p][1] *= m for p >= start. */
static void multiply_range(FragList *l, int start, double m) {
    for (int p = start; p < l->n; p++) l->f[p].weight *= m;
}

/* If a re_break match starts at s[i] (s is the matched text, n bytes),
 * returns its end, else 0. */
static size_t break_at(const char *s, size_t n, size_t i) {
    size_t j = i + space_run(s, i);
    if (j + 5 > n || memcmp(s + j, "BREAK", 5) != 0) return 0;
    if (j > 0 && is_word(utf8_before(s, j))) return 0; /* \b before */
    int len;
    if (j + 5 < n && is_word(ldm_utf8_at(s, j + 5, &len))) return 0; /* \b after */
    return j + 5 + space_run(s, j + 5);
}

/* The "else" branch: re.split(re_break, text), ["BREAK", -1] between parts. */
static void push_text(FragList *l, const char *s, size_t n) {
    char *t = substr(s, n); /* NUL-terminated copy: space_run stops at its end */
    size_t part = 0;
    for (size_t i = 0; i < n;) {
        size_t e = break_at(t, n, i);
        if (!e) { /* next code point (a match never starts inside one) */
            int len;
            ldm_utf8_at(t, i, &len);
            i += (size_t)len;
            continue;
        }
        frag_push(l, substr(t + part, i - part), 1.0);
        frag_push(l, ldm_xstrdup("BREAK"), -1.0);
        part = i = e;
    }
    frag_push(l, substr(t + part, n - part), 1.0);
    free(t);
}

/* :\s*([+-]?[.\d]+)\s*\) at s[i] == ':'. On a match returns its length and
 * the number's span, else 0. */
static size_t weight_at(const char *s, size_t i, size_t *num, size_t *num_len) {
    size_t j = i + 1;
    j += space_run(s, j);
    size_t start = j;
    if (s[j] == '+' || s[j] == '-') j++;
    size_t d = j;
    while (s[j] == '.' || (s[j] >= '0' && s[j] <= '9')) j++;
    if (j == d) return 0;
    size_t end = j;
    j += space_run(s, j);
    if (s[j] != ')') return 0;
    *num = start;
    *num_len = end - start;
    return j + 1 - i;
}

/* float() of a [+-]?[.\d]+ string: at least one digit and at most one '.'. */
static int weight_value(const char *s, size_t n, double *v) {
    int dots = 0, digits = 0;
    for (size_t k = 0; k < n; k++) {
        dots += s[k] == '.';
        digits += s[k] >= '0' && s[k] <= '9';
    }
    if (dots > 1 || digits == 0) return -1;
    char *t = substr(s, n);
    *v = strtod(t, NULL); /* correctly rounded, as Python's float() */
    free(t);
    return 0;
}

int prompt_parse_attention(const char *text, PromptParsed *out) {
    memset(out, 0, sizeof *out);
    if (utf8_check(text)) return -1;
    FragList res = {0};
    int *round = ldm_xmalloc((strlen(text) + 1) * sizeof *round); /* round_brackets */
    int *square = ldm_xmalloc((strlen(text) + 1) * sizeof *square); /* square_brackets */
    int n_round = 0, n_square = 0;
    static const double round_mult = 1.1, square_mult = 1 / 1.1;
    for (size_t i = 0; text[i];) {
        char c = text[i];
        size_t num, num_len, wlen;
        if (c == '\\') { /* escape: res.append([text[1:], 1.0]) */
            char x = text[i + 1];
            if (x && strchr("()[]\\", x)) {
                frag_push(&res, substr(text + i + 1, 1), 1.0);
                i += 2;
            } else {
                frag_push(&res, ldm_xstrdup(""), 1.0); /* lone backslash */
                i += 1;
            }
        } else if (c == '(') {
            round[n_round++] = res.n;
            i++;
        } else if (c == '[') {
            square[n_square++] = res.n;
            i++;
        } else if (c == ':' && (wlen = weight_at(text, i, &num, &num_len)) != 0) {
            if (n_round > 0) {
                double w;
                if (weight_value(text + num, num_len, &w)) {
                    ldm_fail("prompt: could not convert weight '%.*s' to float", (int)num_len,
                             text + num);
                    free(round);
                    free(square);
                    PromptParsed tmp = {res.n, res.f};
                    prompt_parsed_free(&tmp);
                    return -1;
                }
                multiply_range(&res, round[--n_round], w);
            } else {
                push_text(&res, text + i, wlen); /* unmatched ":N)" is text */
            }
            i += wlen;
        } else if (c == ')' && n_round > 0) {
            multiply_range(&res, round[--n_round], round_mult);
            i++;
        } else if (c == ']' && n_square > 0) {
            multiply_range(&res, square[--n_square], square_mult);
            i++;
        } else if (c == ')' || c == ']' || c == ':') {
            push_text(&res, text + i, 1);
            i++;
        } else { /* [^\\()\[\]:]+ */
            size_t j = i;
            while (text[j] && !strchr("\\()[]:", text[j])) j++;
            push_text(&res, text + i, j - i);
            i = j;
        }
    }
    for (int k = 0; k < n_round; k++) multiply_range(&res, round[k], round_mult);
    for (int k = 0; k < n_square; k++) multiply_range(&res, square[k], square_mult);
    free(round);
    free(square);
    if (res.n == 0) frag_push(&res, ldm_xstrdup(""), 1.0);
    /* merge runs of identical weights */
    for (int k = 0; k + 1 < res.n;) {
        if (res.f[k].weight == res.f[k + 1].weight) {
            char *m = ldm_xasprintf("%s%s", res.f[k].text, res.f[k + 1].text);
            free(res.f[k].text);
            free(res.f[k + 1].text);
            res.f[k].text = m;
            memmove(res.f + k + 1, res.f + k + 2, (size_t)(res.n - k - 2) * sizeof *res.f);
            res.n--;
        } else {
            k++;
        }
    }
    out->n = res.n;
    out->frag = res.f;
    return 0;
}

void prompt_parsed_free(PromptParsed *p) {
    for (int i = 0; i < p->n; i++) free(p->frag[i].text);
    free(p->frag);
    memset(p, 0, sizeof *p);
}

/* ----------------------------------------------------------------------------
 * 1.3 sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line */

/* The state of tokenize_line. */
typedef struct Chunker {
    int32_t tokens[2 * PROMPT_CHUNK_LENGTH]; /* chunk.tokens (at most 75 + a relocated tail) */
    double mults[2 * PROMPT_CHUNK_LENGTH];   /* chunk.multipliers */
    int len;                                 /* len(chunk.tokens) */
    PromptFix *fixes;                        /* (n_fix) chunk.fixes, .chunk set when closed */
    int n_fix;                               /* fixes of the current chunk */
    int last_comma;                          /* position of the last comma, -1 = none */
    PromptChunks *out;                       /* closed chunks and fixes */
} Chunker;

/* next_chunk(is_last): pad with EOT to 75, frame with SOT/EOT, append. */
static void next_chunk(Chunker *c, int is_last) {
    PromptChunks *o = c->out;
    o->token_count += is_last ? c->len : PROMPT_CHUNK_LENGTH;
    int k = o->n_chunks++;
    o->tokens = ldm_xrealloc(o->tokens, (size_t)o->n_chunks * CHUNK_CTX * sizeof *o->tokens);
    o->multipliers =
        ldm_xrealloc(o->multipliers, (size_t)o->n_chunks * CHUNK_CTX * sizeof *o->multipliers);
    int32_t *t = o->tokens + (size_t)k * CHUNK_CTX;
    double *m = o->multipliers + (size_t)k * CHUNK_CTX;
    t[0] = CLIP_SOT;
    m[0] = 1.0;
    for (int i = 0; i < PROMPT_CHUNK_LENGTH; i++) {
        t[1 + i] = i < c->len ? c->tokens[i] : CLIP_EOT;
        m[1 + i] = i < c->len ? c->mults[i] : 1.0;
    }
    t[CHUNK_CTX - 1] = CLIP_EOT;
    m[CHUNK_CTX - 1] = 1.0;
    if (c->n_fix) {
        o->fixes = ldm_xrealloc(o->fixes, (size_t)(o->n_fixes + c->n_fix) * sizeof *o->fixes);
        for (int i = 0; i < c->n_fix; i++) {
            c->fixes[i].chunk = k;
            o->fixes[o->n_fixes++] = c->fixes[i];
        }
    }
    c->n_fix = 0;
    c->len = 0;
    c->last_comma = -1;
}

static void chunk_push(Chunker *c, int32_t tok, double mult) {
    c->tokens[c->len] = tok;
    c->mults[c->len] = mult;
    c->len++;
}

/* Token ids of each embedding's name (self.tokenize([embedding.name])). */
typedef struct EmbIds {
    int32_t *ids; /* (n) BPE ids of the name */
    int n;        /* count (>= 1) */
} EmbIds;

/* embedding_db.find_embedding_at_position: the longest name whose ids start
 * at ids[pos] (the first registered among equal lengths), or -1. */
static int find_embedding(const EmbIds *e, int n_emb, const int32_t *ids, int n, int pos) {
    int best = -1;
    for (int k = 0; k < n_emb; k++) {
        if (e[k].n > n - pos || (best >= 0 && e[k].n <= e[best].n)) continue;
        if (memcmp(ids + pos, e[k].ids, (size_t)e[k].n * sizeof *ids) == 0) best = k;
    }
    return best;
}

int prompt_chunk(const ClipTokenizer *tok, const PromptParsed *parsed,
                 const PromptEmbedding *emb, int n_emb, PromptChunks *out) {
    memset(out, 0, sizeof *out);
    int rc = -1;
    EmbIds *eids = ldm_xcalloc((size_t)n_emb + 1, sizeof *eids);
    Chunker c = {.last_comma = -1, .out = out};
    for (int k = 0; k < n_emb; k++) {
        if (emb[k].n_vectors < 1 || emb[k].n_vectors > PROMPT_CHUNK_LENGTH) {
            ldm_fail("embedding '%s': %d vectors, expected 1..%d", emb[k].name, emb[k].n_vectors,
                     PROMPT_CHUNK_LENGTH);
            goto done;
        }
        eids[k].n = clip_encode(tok, emb[k].name, &eids[k].ids);
        if (eids[k].n < 0) goto done;
        if (eids[k].n == 0) {
            ldm_fail("embedding '%s': the name has no tokens", emb[k].name);
            goto done;
        }
    }
    for (int f = 0; f < parsed->n; f++) {
        const PromptFragment *fr = &parsed->frag[f];
        if (fr->weight == -1.0 && strcmp(fr->text, "BREAK") == 0) {
            next_chunk(&c, 0);
            continue;
        }
        int32_t *ids;
        int n = clip_encode(tok, fr->text, &ids);
        if (n < 0) goto done;
        for (int pos = 0; pos < n;) {
            if (ids[pos] == PROMPT_COMMA_TOKEN) {
                c.last_comma = c.len;
            } else if (c.len == PROMPT_CHUNK_LENGTH && c.last_comma != -1 &&
                       c.len - c.last_comma <= PROMPT_COMMA_BACKTRACK) {
                /* Move the tokens after the comma to a new chunk. As in the
                 * webui, the chunk's fixes stay with the closed chunk. */
                int at = c.last_comma + 1, n_reloc = c.len - at;
                int32_t rt[PROMPT_CHUNK_LENGTH];
                double rm[PROMPT_CHUNK_LENGTH];
                memcpy(rt, c.tokens + at, (size_t)n_reloc * sizeof *rt);
                memcpy(rm, c.mults + at, (size_t)n_reloc * sizeof *rm);
                c.len = at;
                next_chunk(&c, 0);
                memcpy(c.tokens, rt, (size_t)n_reloc * sizeof *rt);
                memcpy(c.mults, rm, (size_t)n_reloc * sizeof *rm);
                c.len = n_reloc;
            }
            if (c.len == PROMPT_CHUNK_LENGTH) next_chunk(&c, 0);
            int e = find_embedding(eids, n_emb, ids, n, pos);
            if (e < 0) {
                chunk_push(&c, ids[pos], fr->weight);
                pos++;
                continue;
            }
            if (c.len + emb[e].n_vectors > PROMPT_CHUNK_LENGTH) next_chunk(&c, 0);
            c.fixes = ldm_xrealloc(c.fixes, (size_t)(c.n_fix + 1) * sizeof *c.fixes);
            c.fixes[c.n_fix++] = (PromptFix){.chunk = -1, .offset = c.len, .embedding = e};
            for (int v = 0; v < emb[e].n_vectors; v++) chunk_push(&c, 0, fr->weight);
            pos += eids[e].n;
        }
        free(ids);
    }
    if (c.len > 0 || out->n_chunks == 0) next_chunk(&c, 1);
    rc = 0;
done:
    for (int k = 0; k < n_emb; k++) free(eids[k].ids);
    free(eids);
    free(c.fixes);
    if (rc) prompt_chunks_free(out);
    return rc;
}

int prompt_tokenize(const ClipTokenizer *tok, const char *text,
                    const PromptEmbedding *emb, int n_emb, PromptChunks *out) {
    PromptParsed p;
    memset(out, 0, sizeof *out);
    if (prompt_parse_attention(text, &p)) return -1;
    int rc = prompt_chunk(tok, &p, emb, n_emb, out);
    prompt_parsed_free(&p);
    return rc;
}

void prompt_chunks_free(PromptChunks *c) {
    free(c->tokens);
    free(c->multipliers);
    free(c->fixes);
    memset(c, 0, sizeof *c);
}
