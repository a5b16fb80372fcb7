/*
 * tokenizer.c - the CLIP byte-level BPE tokenizer (Stable Diffusion v1
 * conventions). See tokenizer.h for the pipeline and shared/goldens/README.md
 * ("CLIP tokenizer goldens") for the rules this file implements.
 *
 * The reference is Python (openai/CLIP clip/simple_tokenizer.py); each
 * section below names the Python it ports. Text is processed as arrays of
 * code points; the Unicode and HTML data come from unicode_tables.h, which
 * runtime/gen_unicode_tables.py generates from Python's own tables.
 *
 * BPE represents a word as vocabulary ids instead of strings: every symbol a
 * merge can produce is in the vocabulary, so "merge the pair (a, b)" becomes
 * one hash lookup of (id_a, id_b) -> (rank, id of a+b).
 */
#include "tokenizer.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "unicode_tables.h"
#include "utf8.h"
#include "util.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_VOCAB_BYTES ((size_t)64 << 20) /* decompressed size we accept */

/* ----------------------------------------------------------------------------
 * The tokenizer */

struct ClipTokenizer {
    char **vocab;             /* (CLIP_VOCAB_SIZE) id -> symbol, into pool */
    char *pool;               /* storage of every symbol string */
    uint32_t *str_slots;      /* (str_cap) string -> id hash: id + 1, 0 = empty */
    uint32_t str_cap;         /* power of two */
    uint64_t *pair_keys;      /* (pair_cap) left << 32 | right, PAIR_EMPTY = free */
    int32_t *pair_rank;       /* (pair_cap) merge rank, 0 = merged first */
    int32_t *pair_merged;     /* (pair_cap) id of the symbol left+right */
    uint32_t pair_cap;        /* power of two */
    int32_t byte_id[256];     /* id of the byte-level symbol of byte b */
    int32_t byte_end_id[256]; /* id of that symbol + "</w>" (end of word) */
};

#define PAIR_EMPTY UINT64_MAX

/* ----------------------------------------------------------------------------
 * Growable arrays */

typedef struct CpBuf {
    uint32_t *cp; /* (cap) code points */
    size_t n;     /* used */
    size_t cap;   /* allocated */
} CpBuf;

typedef struct IdBuf {
    int32_t *id; /* (cap) token ids */
    size_t n;    /* used */
    size_t cap;  /* allocated */
} IdBuf;

static void cp_push(CpBuf *b, uint32_t c) {
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        b->cp = ldm_xrealloc(b->cp, b->cap * sizeof *b->cp);
    }
    b->cp[b->n++] = c;
}

static void id_push(IdBuf *b, int32_t id) {
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        b->id = ldm_xrealloc(b->id, b->cap * sizeof *b->id);
    }
    b->id[b->n++] = id;
}

/* ----------------------------------------------------------------------------
 * Unicode lookups (tables from unicode_tables.h) */

#define IN_TABLE(table, c) LDM_IN_TABLE(table, c)

/* str.isspace(): what Python's str.strip() removes. */
static int is_py_space(uint32_t c) { return ldm_is_py_space(c); }

/* \s of the `regex` module: Unicode White_Space. */
static int is_white_space(uint32_t c) {
    if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || c == 0x20;
    return IN_TABLE(uni_white_space, c);
}

/* Character classes of the pre-tokenising regex. */
typedef enum {
    CH_SPACE,   /* \s: separates pieces */
    CH_LETTER,  /* \p{L} */
    CH_NUMBER,  /* \p{N} */
    CH_OTHER,   /* [^\s\p{L}\p{N}] */
    CH_DROPPED, /* matched by no alternative (see uni_dropped): separates */
} CharClass;

static CharClass char_class(uint32_t c) {
    if (c < 0x80) {
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return CH_LETTER;
        if (c >= '0' && c <= '9') return CH_NUMBER;
        return is_white_space(c) ? CH_SPACE : CH_OTHER;
    }
    if (IN_TABLE(uni_letter, c)) return CH_LETTER;
    if (IN_TABLE(uni_number, c)) return CH_NUMBER;
    if (IN_TABLE(uni_white_space, c)) return CH_SPACE;
    if (IN_TABLE(uni_dropped, c)) return CH_DROPPED;
    return CH_OTHER;
}

/* ----------------------------------------------------------------------------
 * UTF-8 */

/* Strict decoder: rejects stray continuation bytes, truncated sequences,
 * overlong forms, surrogates and code points above U+10FFFF. */
static int utf8_decode(const char *s, CpBuf *out) {
    for (size_t i = 0; s[i];) {
        uint32_t cp;
        int n = ldm_utf8_next(s, i, &cp);
        if (n == LDM_UTF8_BAD_LEAD)
            return ldm_fail("prompt: invalid UTF-8 at byte %zu (lead byte 0x%02X)", i, (unsigned)(unsigned char)s[i]);
        if (n == LDM_UTF8_TRUNCATED) return ldm_fail("prompt: invalid UTF-8 at byte %zu (truncated sequence)", i);
        if (n < 0) return ldm_fail("prompt: invalid UTF-8 at byte %zu (overlong form or surrogate)", i);
        cp_push(out, cp);
        i += (size_t)n;
    }
    return 0;
}

/* Writes the UTF-8 form of c (a Unicode scalar value) to out; returns its length. */
static int utf8_encode(uint32_t c, unsigned char *out) {
    if (c < 0x80) { out[0] = (unsigned char)c; return 1; }
    if (c < 0x800) {
        out[0] = (unsigned char)(0xC0 | c >> 6);
        out[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (unsigned char)(0xE0 | c >> 12);
        out[1] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
        out[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | c >> 18);
    out[1] = (unsigned char)(0x80 | (c >> 12 & 0x3F));
    out[2] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
    out[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* ----------------------------------------------------------------------------
 * html.unescape() (Python 3 html module): references matching
 *   &(#[0-9]+;? | #[xX][0-9a-fA-F]+;? | [^\t\n\f <&#;]{1,32};?)
 * are replaced; named ones use the full HTML5 table, including the longest
 * known prefix rule for names without ';' ("&ampx" -> "&x"). */

static int hex_value(uint32_t c) {
    if (c >= '0' && c <= '9') return (int)(c - '0');
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') return (int)((c | 0x20) - 'a' + 10);
    return -1;
}

/* Appends what the numeric reference &#num; stands for (_replace_charref). */
static void push_charref(CpBuf *out, uint32_t num) {
    for (size_t k = 0; k < N_ELEMS(html_invalid_charrefs); k++)
        if (html_invalid_charrefs[k].num == num) {
            cp_push(out, html_invalid_charrefs[k].cp);
            return;
        }
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) cp_push(out, 0xFFFD);
    else if (!IN_TABLE(html_invalid_codepoints, num)) cp_push(out, num);
}

/* Parses "#123;" / "#x7B;" starting at in[i] == '#'. On a match appends the
 * replacement and returns the index after it, else returns 0. */
static size_t unescape_numeric(const uint32_t *in, size_t n, size_t i, CpBuf *out) {
    size_t k = i + 1;
    int base = 10;
    if (k < n && (in[k] == 'x' || in[k] == 'X')) { base = 16; k++; }
    size_t start = k;
    uint32_t num = 0;
    while (k < n) {
        int v = base == 16 ? hex_value(in[k]) : (in[k] >= '0' && in[k] <= '9' ? (int)(in[k] - '0') : -1);
        if (v < 0) break;
        num = num > 0x10FFFF ? num : num * (uint32_t)base + (uint32_t)v; /* saturates */
        k++;
    }
    if (k == start) return 0; /* no digits: "&#" and "&#x" are left as they are */
    if (k < n && in[k] == ';') k++;
    push_charref(out, num);
    return k;
}

static const HtmlEntity *find_entity(const char *name) {
    size_t lo = 0, hi = N_ELEMS(html_entities);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(name, html_entities[mid].name);
        if (c < 0) hi = mid;
        else if (c > 0) lo = mid + 1;
        else return &html_entities[mid];
    }
    return NULL;
}

static int is_name_char(uint32_t c) {
    return !(c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' ||
             c == '#' || c == ';');
}

/* Named reference after in[i-1] == '&'. On a match appends the replacement
 * and returns the index after the consumed text, else returns 0. */
static size_t unescape_named(const uint32_t *in, size_t n, size_t i, CpBuf *out) {
    size_t e = i;
    while (e < n && e - i < 32 && is_name_char(in[e])) e++;
    if (e == i) return 0;
    size_t len = e - i + (e < n && in[e] == ';'); /* s, ';' included */
    char name[HTML_ENTITY_MAX_NAME + 2];
    size_t ascii = 0; /* leading ASCII characters of s: only those can match */
    while (ascii < len && in[i + ascii] < 0x80) ascii++;
    const HtmlEntity *ent = NULL;
    size_t used = 0;
    if (ascii == len && len <= HTML_ENTITY_MAX_NAME) {
        for (size_t k = 0; k < len; k++) name[k] = (char)in[i + k];
        name[len] = 0;
        ent = find_entity(name);
        used = len;
    }
    /* longest prefix s[:x], x = len-1 .. 2 */
    for (size_t x = len - 1 < ascii ? len - 1 : ascii; !ent && x >= 2; x--) {
        if (x > HTML_ENTITY_MAX_NAME) continue;
        for (size_t k = 0; k < x; k++) name[k] = (char)in[i + k];
        name[x] = 0;
        ent = find_entity(name);
        used = x;
    }
    if (!ent) return 0; /* "&" + s stays; s holds no '&', so scanning on is the same */
    for (uint32_t k = 0; k < ent->n; k++) cp_push(out, ent->cp[k]);
    return i + used;
}

static void html_unescape(const CpBuf *in, CpBuf *out) {
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        if (in->cp[i] == '&' && i + 1 < in->n) {
            size_t next = in->cp[i + 1] == '#' ? unescape_numeric(in->cp, in->n, i + 1, out)
                                               : unescape_named(in->cp, in->n, i + 1, out);
            if (next) {
                i = next - 1;
                continue;
            }
        }
        cp_push(out, in->cp[i]);
    }
}

/* ----------------------------------------------------------------------------
 * White space: basic_clean's text.strip(), then whitespace_clean's
 * re.sub(r'\s+', ' ', text).strip(). */

static void py_strip(CpBuf *b) {
    size_t s = 0, e = b->n;
    while (s < e && is_py_space(b->cp[s])) s++;
    while (e > s && is_py_space(b->cp[e - 1])) e--;
    if (s > 0) memmove(b->cp, b->cp + s, (e - s) * sizeof *b->cp);
    b->n = e - s;
}

static void collapse_white_space(CpBuf *b) {
    size_t o = 0;
    int in_run = 0; /* the previous input code point was white space */
    for (size_t i = 0; i < b->n; i++) {
        int ws = is_white_space(b->cp[i]);
        if (!ws) b->cp[o++] = b->cp[i];
        else if (!in_run) b->cp[o++] = ' ';
        in_run = ws;
    }
    b->n = o;
}

/* ----------------------------------------------------------------------------
 * str.lower(): full lower-case mappings (U+0130 -> "i" U+0307) and the
 * Final_Sigma rule for U+03A3 (CPython handle_capital_sigma). */

static const UniLower *find_lower(uint32_t c) {
    size_t lo = 0, hi = N_ELEMS(uni_lower);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < uni_lower[mid].cp) hi = mid;
        else if (c > uni_lower[mid].cp) lo = mid + 1;
        else return &uni_lower[mid];
    }
    return NULL;
}

/* Sigma at i is final: cased letter before it (skipping case-ignorables) and
 * none after it. */
static int is_final_sigma(const uint32_t *s, size_t n, size_t i) {
    size_t j = i;
    while (j > 0 && IN_TABLE(uni_case_ignorable, s[j - 1])) j--;
    if (j == 0 || !IN_TABLE(uni_cased, s[j - 1])) return 0;
    j = i + 1;
    while (j < n && IN_TABLE(uni_case_ignorable, s[j])) j++;
    return j == n || !IN_TABLE(uni_cased, s[j]);
}

static void py_lower(const CpBuf *in, CpBuf *out) {
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        uint32_t c = in->cp[i];
        if (c < 0x80) {
            cp_push(out, c >= 'A' && c <= 'Z' ? c + 32 : c);
        } else if (c == 0x03A3) {
            cp_push(out, is_final_sigma(in->cp, in->n, i) ? 0x03C2 : 0x03C3);
        } else {
            const UniLower *l = find_lower(c);
            if (!l) cp_push(out, c);
            else for (uint32_t k = 0; k < l->n; k++) cp_push(out, l->to[k]);
        }
    }
}

/* ----------------------------------------------------------------------------
 * Pre-tokenising: all matches, left to right, of (IGNORECASE)
 *   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
 *   [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * Characters no alternative matches (white space) are skipped. */

typedef struct Piece {
    size_t start; /* first code point */
    size_t len;   /* number of code points (>= 1) */
} Piece;

/* Does code point c match the pattern letter l (ASCII) ignoring case? */
static int same_ign(uint32_t c, char l) {
    if (c == (uint32_t)l) return 1;
    if (l >= 'a' && l <= 'z') {
        if (c == (uint32_t)(l - 32)) return 1;
        for (size_t k = 0; k < N_ELEMS(uni_ascii_fold); k++)
            if (uni_ascii_fold[k].cp == c && uni_ascii_fold[k].ascii == (uint32_t)l) return 1;
    }
    return 0;
}

/* Length of the literal lit if it matches s[p..] ignoring case, else 0. */
static size_t match_literal(const uint32_t *s, size_t n, size_t p, const char *lit) {
    size_t k = 0;
    for (; lit[k]; k++)
        if (p + k >= n || !same_ign(s[p + k], lit[k])) return 0;
    return k;
}

/* Length of the match starting at s[p] (0: nothing matches here); the
 * special tokens are the style's (SimpleTokenizer's pattern starts with
 * them). */
static size_t match_piece(const ClipTokStyle *st, const uint32_t *s, size_t n, size_t p) {
    const char *const literals[] = {st->sot_text, st->eot_text, "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t k = 0; k < N_ELEMS(literals); k++) {
        size_t len = match_literal(s, n, p, literals[k]);
        if (len) return len;
    }
    CharClass cls = char_class(s[p]);
    if (cls == CH_NUMBER) return 1;
    if (cls != CH_LETTER && cls != CH_OTHER) return 0;
    size_t e = p + 1;
    while (e < n && char_class(s[e]) == cls) e++;
    return e - p;
}

/* ----------------------------------------------------------------------------
 * Byte-level symbols (bytes_to_unicode): printable bytes 0x21-0x7E,
 * 0xA1-0xAC, 0xAE-0xFF stand for themselves; the other 68 bytes become
 * U+0100, U+0101, ... in increasing order. The vocabulary lists the 256
 * symbols in that order: printable bytes first, then the others. */

static int is_printable_byte(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* order[i] = byte of vocabulary id i; cp[b] = code point of byte b. */
static void bytes_to_unicode(int order[256], uint32_t cp[256]) {
    int n = 0, extra = 0;
    for (int b = 0; b < 256; b++)
        if (is_printable_byte(b)) { order[n++] = b; cp[b] = (uint32_t)b; }
    for (int b = 0; b < 256; b++)
        if (!is_printable_byte(b)) { order[n++] = b; cp[b] = 256u + (uint32_t)extra++; }
}

/* ----------------------------------------------------------------------------
 * Hash tables: symbol string -> id, and (left id, right id) -> merge. */

static uint32_t hash_string(const char *s) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static uint64_t hash_pair(uint64_t k) {
    k ^= k >> 33; /* murmur3 finaliser */
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    return k ^ (k >> 33);
}

/* Python dict semantics: a later duplicate key replaces the earlier value. */
static void str_insert(ClipTokenizer *t, int32_t id) {
    uint32_t mask = t->str_cap - 1;
    for (uint32_t h = hash_string(t->vocab[id]) & mask;; h = (h + 1) & mask) {
        uint32_t s = t->str_slots[h];
        if (s == 0 || strcmp(t->vocab[s - 1], t->vocab[id]) == 0) {
            t->str_slots[h] = (uint32_t)id + 1;
            return;
        }
    }
}

static int32_t str_find(const ClipTokenizer *t, const char *s) {
    uint32_t mask = t->str_cap - 1;
    for (uint32_t h = hash_string(s) & mask;; h = (h + 1) & mask) {
        uint32_t slot = t->str_slots[h];
        if (slot == 0) return -1;
        if (strcmp(t->vocab[slot - 1], s) == 0) return (int32_t)slot - 1;
    }
}

static void pair_insert(ClipTokenizer *t, int32_t left, int32_t right, int32_t rank,
                        int32_t merged) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint32_t mask = t->pair_cap - 1;
    for (uint32_t h = (uint32_t)hash_pair(key) & mask;; h = (h + 1) & mask) {
        if (t->pair_keys[h] == PAIR_EMPTY || t->pair_keys[h] == key) {
            t->pair_keys[h] = key;
            t->pair_rank[h] = rank;
            t->pair_merged[h] = merged;
            return;
        }
    }
}

/* Rank of merging (left, right), or -1 if the pair never merges. */
static int32_t pair_find(const ClipTokenizer *t, int32_t left, int32_t right, int32_t *merged) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint32_t mask = t->pair_cap - 1;
    for (uint32_t h = (uint32_t)hash_pair(key) & mask;; h = (h + 1) & mask) {
        if (t->pair_keys[h] == PAIR_EMPTY) return -1;
        if (t->pair_keys[h] == key) {
            if (merged) *merged = t->pair_merged[h];
            return t->pair_rank[h];
        }
    }
}

/* ----------------------------------------------------------------------------
 * Loading bpe_simple_vocab_16e6.txt.gz */

/* Whole decompressed file, NUL-terminated; NULL + ldm_fail on error. */
static char *read_gzip(const char *path, size_t *len) {
    errno = 0;
    gzFile gz = gzopen(path, "rb");
    if (!gz) {
        ldm_fail("%s: cannot open: %s", path, errno ? strerror(errno) : "out of memory");
        return NULL;
    }
    size_t cap = (size_t)1 << 21, n = 0;
    char *buf = ldm_xmalloc(cap + 1);
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_VOCAB_BYTES) {
                ldm_fail("%s: decompressed size exceeds %zu MiB: not a CLIP vocabulary", path,
                         MAX_VOCAB_BYTES >> 20);
                goto fail;
            }
            cap *= 2;
            buf = ldm_xrealloc(buf, cap + 1);
        }
        int got = gzread(gz, buf + n, (unsigned)(cap - n > INT_MAX ? INT_MAX : cap - n));
        if (got <= 0) break; /* end of data, or an error gzerror() reports */
        n += (size_t)got;
    }
    int err = Z_OK;
    const char *msg = gzerror(gz, &err);
    if (err == Z_ERRNO) {
        ldm_fail("%s: cannot read: %s", path, strerror(errno));
        goto fail;
    }
    if (err != Z_OK) {
        size_t pl = strlen(path); /* zlib prefixes its message with the path */
        if (strncmp(msg, path, pl) == 0 && strncmp(msg + pl, ": ", 2) == 0) msg += pl + 2;
        ldm_fail("%s: corrupt or truncated gzip data: %s", path, msg);
        goto fail;
    }
    if (gzdirect(gz)) {
        ldm_fail("%s: not a gzip file (expected the gzip-compressed CLIP BPE vocabulary "
                 "bpe_simple_vocab_16e6.txt.gz)", path);
        goto fail;
    }
    gzclose(gz);
    buf[n] = 0;
    *len = n;
    return buf;
fail:
    gzclose(gz);
    free(buf);
    return NULL;
}

/* Next '\n'-terminated line of text[*pos..len): NUL-terminates it in place and
 * returns it, or NULL at the end of the text. */
static char *next_line(char *text, size_t len, size_t *pos, size_t *line_len) {
    if (*pos >= len) return NULL;
    char *s = text + *pos;
    char *nl = memchr(s, '\n', len - *pos);
    size_t l = nl ? (size_t)(nl - s) : len - *pos;
    s[l] = 0;
    *pos += l + 1;
    *line_len = l;
    return s;
}

/* Checks "left right" (two non-empty symbols, one space) and splits it in place. */
static int split_merge(const char *path, int lineno, char *line, size_t len, char **right) {
    char *sp = memchr(line, ' ', len);
    size_t n_left = sp ? (size_t)(sp - line) : 0;
    int ok = sp && n_left > 0 && n_left + 1 < len;   /* both symbols non-empty */
    for (size_t k = 0; ok && k < len; k++)           /* one space, no other blanks */
        if ((line[k] == ' ' && k != n_left) || line[k] == '\0' || line[k] == '\t' ||
            line[k] == '\r' || line[k] == '\v' || line[k] == '\f')
            ok = 0;
    if (!ok) {
        char shown[48];
        size_t k = 0;
        for (; k < len && k < 40; k++) shown[k] = (unsigned char)line[k] < 0x20 ? '?' : line[k];
        shown[k] = 0;
        return ldm_fail("%s:%d: expected 'left right' (two symbols separated by one space), "
                        "got '%s%s'", path, lineno, shown, len > 40 ? "..." : "");
    }
    *sp = 0;
    *right = sp + 1;
    return 0;
}

/* Appends s (+ suffix) to the pool and records its offset. */
static void pool_add(char **pool, size_t *n, size_t *cap, size_t *offset, const char *s,
                     const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    while (*n + a + b + 1 > *cap) {
        *cap *= 2;
        *pool = ldm_xrealloc(*pool, *cap);
    }
    *offset = *n;
    memcpy(*pool + *n, s, a);
    memcpy(*pool + *n + a, suffix, b + 1);
    *n += a + b + 1;
}

/* Vocabulary strings in id order (SOURCE.md): 256 byte symbols, the same
 * with "</w>", one per merge (left+right), <|startoftext|>, <|endoftext|>. */
static void build_vocab(ClipTokenizer *t, char *const *left, char *const *right) {
    int order[256];
    uint32_t cp[256];
    bytes_to_unicode(order, cp);
    size_t *offset = ldm_xmalloc(CLIP_VOCAB_SIZE * sizeof *offset);
    size_t n = 0, cap = (size_t)1 << 20;
    char *pool = ldm_xmalloc(cap);
    for (int i = 0; i < 256; i++) {
        char sym[5];
        sym[utf8_encode(cp[order[i]], (unsigned char *)sym)] = 0;
        pool_add(&pool, &n, &cap, &offset[i], sym, "");
        pool_add(&pool, &n, &cap, &offset[256 + i], sym, "</w>");
        t->byte_id[order[i]] = i;
        t->byte_end_id[order[i]] = 256 + i;
    }
    for (int m = 0; m < CLIP_N_MERGES; m++)
        pool_add(&pool, &n, &cap, &offset[512 + m], left[m], right[m]);
    pool_add(&pool, &n, &cap, &offset[CLIP_SOT], "<|startoftext|>", "");
    pool_add(&pool, &n, &cap, &offset[CLIP_EOT], "<|endoftext|>", "");
    t->pool = pool;
    t->vocab = ldm_xmalloc(CLIP_VOCAB_SIZE * sizeof *t->vocab);
    for (int i = 0; i < CLIP_VOCAB_SIZE; i++) t->vocab[i] = pool + offset[i];
    free(offset);
    t->str_cap = 1u << 17;
    t->str_slots = ldm_xcalloc(t->str_cap, sizeof *t->str_slots);
    for (int i = 0; i < CLIP_VOCAB_SIZE; i++) str_insert(t, i);
}

/* bpe_ranks: (left, right) -> (rank = merge index, id of left+right). */
static int build_ranks(ClipTokenizer *t, const char *path, char *const *left,
                       char *const *right) {
    t->pair_cap = 1u << 17;
    t->pair_keys = ldm_xmalloc(t->pair_cap * sizeof *t->pair_keys);
    for (uint32_t h = 0; h < t->pair_cap; h++) t->pair_keys[h] = PAIR_EMPTY;
    t->pair_rank = ldm_xmalloc(t->pair_cap * sizeof *t->pair_rank);
    t->pair_merged = ldm_xmalloc(t->pair_cap * sizeof *t->pair_merged);
    for (int m = 0; m < CLIP_N_MERGES; m++) {
        int32_t l = str_find(t, left[m]), r = str_find(t, right[m]);
        if (l < 0 || r < 0)
            return ldm_fail("%s:%d: symbol '%s' of the merge is not in the vocabulary", path,
                            m + 2, l < 0 ? left[m] : right[m]);
        pair_insert(t, l, r, m, str_find(t, t->vocab[512 + m]));
    }
    return 0;
}

/* Header check and merge-line split; left/right point into text. */
static int parse_merges(const char *path, char *text, size_t len, char **left, char **right) {
    size_t pos = 0, l;
    char *line = next_line(text, len, &pos, &l);
    if (!line) return ldm_fail("%s: the vocabulary is empty (expected a '#version:' header "
                               "line and %d merges)", path, CLIP_N_MERGES);
    if (!strstr(line, "#version:"))
        return ldm_fail("%s:1: expected the '#version:' header line of "
                        "bpe_simple_vocab_16e6.txt", path);
    for (int m = 0; m < CLIP_N_MERGES; m++) {
        line = next_line(text, len, &pos, &l);
        if (!line)
            return ldm_fail("%s: expected at least %d merge lines after the header, found %d",
                            path, CLIP_N_MERGES, m);
        if (split_merge(path, m + 2, line, l, &right[m])) return -1;
        left[m] = line;
    }
    return 0;
}

/* The gzip stream data[0..size) inflated, NUL-terminated; NULL + ldm_fail
 * (naming `name`) on error. */
static char *gunzip_mem(const char *name, const unsigned char *data, size_t size, size_t *len) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) {
        ldm_fail("%s: zlib: cannot start inflating", name);
        return NULL;
    }
    size_t cap = (size_t)1 << 21, n = 0;
    char *buf = ldm_xmalloc(cap + 1);
    z.next_in = (unsigned char *)data;
    z.avail_in = (uInt)size;
    int rc;
    do {
        if (n == cap) {
            if (cap >= MAX_VOCAB_BYTES) {
                ldm_fail("%s: decompressed size exceeds %zu MiB: not a CLIP vocabulary", name, MAX_VOCAB_BYTES >> 20);
                rc = Z_DATA_ERROR;
                break;
            }
            cap *= 2;
            buf = ldm_xrealloc(buf, cap + 1);
        }
        z.next_out = (unsigned char *)buf + n;
        z.avail_out = (uInt)(cap - n);
        rc = inflate(&z, Z_NO_FLUSH);
        n = cap - z.avail_out;
    } while (rc == Z_OK);
    inflateEnd(&z);
    if (rc != Z_STREAM_END) {
        if (rc != Z_DATA_ERROR || n < cap) ldm_fail("%s: corrupt or truncated gzip data", name);
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* The tokenizer of the decompressed vocabulary text (freed here). */
static ClipTokenizer *tokenizer_from_text(const char *vocab_gz_path, char *text, size_t len) {
    char **left = ldm_xmalloc(CLIP_N_MERGES * sizeof *left);
    char **right = ldm_xmalloc(CLIP_N_MERGES * sizeof *right);
    ClipTokenizer *t = ldm_xcalloc(1, sizeof *t);
    int rc = parse_merges(vocab_gz_path, text, len, left, right);
    if (rc == 0) {
        build_vocab(t, left, right);
        rc = build_ranks(t, vocab_gz_path, left, right);
    }
    free(left);
    free(right);
    free(text);
    if (rc) {
        clip_tokenizer_free(t);
        return NULL;
    }
    return t;
}

ClipTokenizer *clip_tokenizer_load(const char *vocab_gz_path) {
    size_t len;
    char *text = read_gzip(vocab_gz_path, &len);
    if (!text) return NULL;
    return tokenizer_from_text(vocab_gz_path, text, len);
}

/* runtime/vocab.S */
extern const unsigned char ldm_clip_vocab_gz[], ldm_clip_vocab_gz_end[];

ClipTokenizer *clip_tokenizer_load_builtin(void) {
    static const char name[] = "(built-in bpe_simple_vocab_16e6.txt.gz)";
    size_t len;
    char *text = gunzip_mem(name, ldm_clip_vocab_gz, (size_t)(ldm_clip_vocab_gz_end - ldm_clip_vocab_gz), &len);
    if (!text) return NULL;
    return tokenizer_from_text(name, text, len);
}

void clip_tokenizer_free(ClipTokenizer *t) {
    if (!t) return;
    free(t->vocab);
    free(t->pool);
    free(t->str_slots);
    free(t->pair_keys);
    free(t->pair_rank);
    free(t->pair_merged);
    free(t);
}

const char *clip_token_text(const ClipTokenizer *t, int32_t id) {
    return id >= 0 && id < CLIP_VOCAB_SIZE ? t->vocab[id] : NULL;
}

/* ----------------------------------------------------------------------------
 * BPE (SimpleTokenizer.bpe): repeatedly take the adjacent pair of lowest
 * rank and merge all its occurrences left to right, until no pair merges.
 *
 * This is the hot loop for long pieces (a run of CJK text or punctuation is
 * one piece), so instead of rescanning the word per merge, a min-heap holds
 * candidate pairs keyed by (rank, position) over a linked list of symbols:
 * O(n log n) per piece. One "phase" pops every entry of the lowest rank; the
 * pairs its merges create wait until the phase ends, exactly as Python
 * finishes one bigram before it looks for the next. Stale entries (a symbol
 * that changed or died since the push) fail the rank check and are skipped:
 * ranks are unique per pair. */

typedef struct HeapItem {
    int32_t rank; /* merge rank of the pair */
    int32_t pos;  /* position (in the initial word) of its left symbol */
} HeapItem;

typedef struct BpeWork {
    int32_t *sym;      /* (cap) symbol id per position, -1 = merged into its left */
    int32_t *prev;     /* (cap) previous live position, -1 = none */
    int32_t *next;     /* (cap) next live position, -1 = none */
    HeapItem *heap;    /* (3 cap) min-heap of candidate pairs */
    HeapItem *pending; /* (2 cap) pairs created during the current phase */
    int32_t *phase;    /* (3 cap) positions of the current phase, ascending */
    size_t cap;        /* longest word the arrays hold */
    unsigned char *bytes; /* (4 cap) UTF-8 of the current piece */
} BpeWork;

static void work_reserve(BpeWork *w, size_t n) {
    if (n <= w->cap) return;
    w->cap = n > 2 * w->cap ? n : 2 * w->cap;
    w->sym = ldm_xrealloc(w->sym, w->cap * sizeof *w->sym);
    w->prev = ldm_xrealloc(w->prev, w->cap * sizeof *w->prev);
    w->next = ldm_xrealloc(w->next, w->cap * sizeof *w->next);
    w->heap = ldm_xrealloc(w->heap, 3 * w->cap * sizeof *w->heap);
    w->pending = ldm_xrealloc(w->pending, 2 * w->cap * sizeof *w->pending);
    w->phase = ldm_xrealloc(w->phase, 3 * w->cap * sizeof *w->phase);
}

static void work_free(BpeWork *w) {
    free(w->sym);
    free(w->prev);
    free(w->next);
    free(w->heap);
    free(w->pending);
    free(w->phase);
    free(w->bytes);
}

static int heap_less(HeapItem a, HeapItem b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(HeapItem *h, size_t *n, HeapItem it) {
    size_t i = (*n)++;
    while (i > 0 && heap_less(it, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = it;
}

static HeapItem heap_pop(HeapItem *h, size_t *n) {
    HeapItem top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(h[c + 1], h[c])) c++;
        if (!heap_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}

/* Queues the pair starting at live position i, if it has a rank. */
static void queue_pair(const ClipTokenizer *t, const BpeWork *w, int32_t i, HeapItem *dst,
                       size_t *n, int as_heap) {
    if (i < 0 || w->next[i] < 0) return;
    int32_t rank = pair_find(t, w->sym[i], w->sym[w->next[i]], NULL);
    if (rank < 0) return;
    HeapItem it = {rank, i};
    if (as_heap) heap_push(dst, n, it);
    else dst[(*n)++] = it;
}

/* Merges the pair at live position i if it still is the pair of this rank. */
static void merge_at(const ClipTokenizer *t, BpeWork *w, int32_t i, int32_t rank,
                     size_t *n_pending) {
    if (w->sym[i] < 0 || w->next[i] < 0) return;
    int32_t j = w->next[i], merged;
    if (pair_find(t, w->sym[i], w->sym[j], &merged) != rank) return;
    w->sym[i] = merged;
    w->sym[j] = -1;
    w->next[i] = w->next[j];
    if (w->next[j] >= 0) w->prev[w->next[j]] = i;
    queue_pair(t, w, w->prev[i], w->pending, n_pending, 0);
    queue_pair(t, w, i, w->pending, n_pending, 0);
}

/* BPE of one piece given as UTF-8 bytes; appends its ids to out. */
static void bpe_word(const ClipTokenizer *t, BpeWork *w, const unsigned char *bytes, size_t n,
                     IdBuf *out) {
    work_reserve(w, n);
    for (size_t i = 0; i < n; i++) {
        w->sym[i] = i + 1 < n ? t->byte_id[bytes[i]] : t->byte_end_id[bytes[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    size_t n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++) queue_pair(t, w, (int32_t)i, w->heap, &n_heap, 1);
    while (n_heap > 0) {
        int32_t rank = w->heap[0].rank;
        size_t n_phase = 0, n_pending = 0;
        while (n_heap > 0 && w->heap[0].rank == rank)
            w->phase[n_phase++] = heap_pop(w->heap, &n_heap).pos;
        for (size_t k = 0; k < n_phase; k++) merge_at(t, w, w->phase[k], rank, &n_pending);
        for (size_t k = 0; k < n_pending; k++) heap_push(w->heap, &n_heap, w->pending[k]);
    }
    for (int32_t i = 0; i >= 0; i = w->next[i]) id_push(out, w->sym[i]);
}

/* ----------------------------------------------------------------------------
 * encode(): clean, split, BPE. */

/* Prompt -> the cleaned, lower-cased code points (basic_clean,
 * whitespace_clean, lower). */
static int clean_prompt(const char *utf8_prompt, CpBuf *text) {
    CpBuf a = {0}, b = {0};
    if (utf8_decode(utf8_prompt, &a)) {
        free(a.cp);
        return -1;
    }
    html_unescape(&a, &b);
    html_unescape(&b, &a);
    py_strip(&a);
    collapse_white_space(&a);
    py_strip(&a);
    py_lower(&a, text);
    free(a.cp);
    free(b.cp);
    return 0;
}

/* A piece spelling a special token exactly maps to its id (the reference
 * tokenizer's cache holds both), else -1. */
static int32_t special_id(const ClipTokStyle *st, const uint32_t *s, size_t len) {
    const char *const names[2] = {st->sot_text, st->eot_text};
    for (int k = 0; k < 2; k++) {
        size_t n = strlen(names[k]), i = 0;
        while (i < n && i < len && s[i] == (uint32_t)names[k][i]) i++;
        if (i == n && len == n) return k == 0 ? CLIP_SOT : CLIP_EOT;
    }
    return -1;
}

static int encode_all(const ClipTokenizer *t, const ClipTokStyle *st, const char *utf8_prompt, IdBuf *out) {
    if (!t) return ldm_fail("clip_tokenize: no tokenizer (NULL)");
    if (!utf8_prompt) return ldm_fail("clip_tokenize: no prompt (NULL)");
    CpBuf text = {0};
    if (clean_prompt(utf8_prompt, &text)) return -1;
    BpeWork w = {0};
    size_t bytes_cap = 0;
    for (size_t p = 0; p < text.n;) {
        size_t len = match_piece(st, text.cp, text.n, p);
        if (len == 0) {
            p++;
            continue;
        }
        int32_t special = special_id(st, text.cp + p, len);
        if (special >= 0) {
            id_push(out, special);
        } else {
            if (4 * len > bytes_cap) {
                bytes_cap = 4 * len > 2 * bytes_cap ? 4 * len : 2 * bytes_cap;
                w.bytes = ldm_xrealloc(w.bytes, bytes_cap);
            }
            size_t nb = 0;
            for (size_t k = 0; k < len; k++) nb += (size_t)utf8_encode(text.cp[p + k], w.bytes + nb);
            bpe_word(t, &w, w.bytes, nb, out);
        }
        p += len;
    }
    work_free(&w);
    free(text.cp);
    return 0;
}

const ClipTokStyle clip_style_sd1 = {"<|startoftext|>", "<|endoftext|>", CLIP_EOT};
const ClipTokStyle clip_style_openclip = {"<start_of_text>", "<end_of_text>", 0};

int clip_encode_style(const ClipTokenizer *t, const ClipTokStyle *st, const char *utf8_prompt, int32_t **ids) {
    IdBuf out = {0};
    if (!st) st = &clip_style_sd1;
    if (encode_all(t, st, utf8_prompt, &out)) {
        free(out.id);
        *ids = NULL;
        return -1;
    }
    if (out.n > INT_MAX) {
        free(out.id);
        *ids = NULL;
        return ldm_fail("clip_encode: prompt too long (%zu tokens)", out.n);
    }
    *ids = out.id ? out.id : ldm_xmalloc(sizeof **ids);
    return (int)out.n;
}

int clip_encode(const ClipTokenizer *t, const char *utf8_prompt, int32_t **ids) {
    return clip_encode_style(t, &clip_style_sd1, utf8_prompt, ids);
}

int clip_tokenize_style(const ClipTokenizer *t, const ClipTokStyle *st, const char *utf8_prompt,
                        int context_length, int32_t *ids, int *n_bpe) {
    if (context_length < 2)
        return ldm_fail("clip_tokenize: context length %d, expected at least 2", context_length);
    if (!st) st = &clip_style_sd1;
    int32_t *bpe;
    int n = clip_encode_style(t, st, utf8_prompt, &bpe);
    if (n < 0) return -1;
    int keep = n < context_length - 2 ? n : context_length - 2;
    ids[0] = CLIP_SOT;
    memcpy(ids + 1, bpe, (size_t)keep * sizeof *ids);
    ids[keep + 1] = CLIP_EOT;
    for (int i = keep + 2; i < context_length; i++) ids[i] = st->pad_id;
    if (n_bpe) *n_bpe = n;
    free(bpe);
    return 0;
}

int clip_tokenize_ctx(const ClipTokenizer *t, const char *utf8_prompt, int context_length, int32_t *ids,
                      int *n_bpe) {
    return clip_tokenize_style(t, &clip_style_sd1, utf8_prompt, context_length, ids, n_bpe);
}

int clip_tokenize(const ClipTokenizer *t, const char *utf8_prompt,
                  int32_t ids[CLIP_CONTEXT_LENGTH], int *n_bpe) {
    return clip_tokenize_ctx(t, utf8_prompt, CLIP_CONTEXT_LENGTH, ids, n_bpe);
}
