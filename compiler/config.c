/*
 * config.c - load CompVis model config YAML into a CfgNode tree.
 *
 * libyaml's event parser does the YAML syntax; this file builds the tree
 * (one recursive function per node kind, like a recursive-descent parser
 * over events), types plain scalars the way PyYAML + OmegaConf do, expands
 * aliases by copying, and reports every problem as
 * "file:line:col: error: ...".
 *
 * Sections: file names, nodes, scalar typing, loading, lookup, overrides,
 * printing.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "config.h"
#include "ldmc.h"
#include "util.h"

#define CMDLINE "<command line>"
#define MAX_DEPTH 256          /* deepest nesting accepted (recursion guard) */
#define MAX_NODES 1000000      /* most nodes a file may expand to (alias bombs) */

/* ===================================================================== *
 * File names
 * ===================================================================== */

/* Every node points at its file name; names are interned here once and live
 * until the process exits, so nodes never own (or free) them. A lock-free
 * list: lookups race harmlessly with pushes (at worst a name is stored
 * twice). */
typedef struct Interned {
    struct Interned *next;     /* older entry */
    char name[];               /* NUL-terminated file name */
} Interned;

static Interned *interned_names;

static const char *intern(const char *s) {
    for (Interned *p = __atomic_load_n(&interned_names, __ATOMIC_ACQUIRE); p; p = p->next)
        if (strcmp(p->name, s) == 0) return p->name;
    size_t len = strlen(s) + 1;
    Interned *e = ldm_xmalloc(sizeof *e + len);
    memcpy(e->name, s, len);
    e->next = __atomic_load_n(&interned_names, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(&interned_names, &e->next, e, false,
                                        __ATOMIC_RELEASE, __ATOMIC_RELAXED))
        ;
    return e->name;
}

/* ===================================================================== *
 * Nodes
 * ===================================================================== */

static CfgNode *new_node(CfgKind kind, const char *file, int line, int col) {
    CfgNode *n = ldm_xcalloc(1, sizeof *n);
    n->kind = kind;
    n->file = intern(file ? file : "<unknown>");
    n->line = line;
    n->col = col;
    return n;
}

const char *cfg_kind_name(CfgKind k) {
    switch (k) {
    case CFG_NULL: return "null";
    case CFG_BOOL: return "bool";
    case CFG_INT: return "int";
    case CFG_FLOAT: return "float";
    case CFG_STRING: return "string";
    case CFG_LIST: return "list";
    case CFG_MAP: return "map";
    }
    return "?";
}

void cfg_free(CfgNode *n) {
    if (!n) return;
    for (int k = 0; k < n->n; k++) {
        cfg_free(n->items[k]);
        if (n->keys) free(n->keys[k]);
    }
    free(n->items);
    free(n->keys);
    free(n->s);
    free(n);
}

CfgNode *cfg_copy(const CfgNode *n) {
    if (!n) return NULL;
    CfgNode *c = ldm_xmalloc(sizeof *c);
    *c = *n;
    c->s = n->s ? ldm_xstrdup(n->s) : NULL;
    c->items = NULL;
    c->keys = NULL;
    if (n->n > 0) {
        c->items = ldm_xmalloc(n->n * sizeof *c->items);
        for (int k = 0; k < n->n; k++) c->items[k] = cfg_copy(n->items[k]);
        if (n->keys) {
            c->keys = ldm_xmalloc(n->n * sizeof *c->keys);
            for (int k = 0; k < n->n; k++) c->keys[k] = ldm_xstrdup(n->keys[k]);
        }
    }
    return c;
}

/* Number of nodes in a tree. */
static long count_nodes(const CfgNode *n) {
    long c = 1;
    for (int k = 0; k < n->n; k++) c += count_nodes(n->items[k]);
    return c;
}

static void list_push(CfgNode *l, CfgNode *v) {
    l->items = ldm_xrealloc(l->items, (l->n + 1) * sizeof *l->items);
    l->items[l->n++] = v;
}

/* Append key -> v to a map; takes ownership of key. */
static void map_push(CfgNode *m, char *key, CfgNode *v) {
    m->keys = ldm_xrealloc(m->keys, (m->n + 1) * sizeof *m->keys);
    m->keys[m->n] = key;
    list_push(m, v);
}

/* Index of key in map m, or -1. */
static int map_find(const CfgNode *m, const char *key) {
    for (int k = 0; k < m->n; k++)
        if (strcmp(m->keys[k], key) == 0) return k;
    return -1;
}

/* ===================================================================== *
 * Scalar typing (YAML 1.1 as in PyYAML's SafeLoader, plus OmegaConf's
 * float rule). Each matcher is one alternative of PyYAML's regexps.
 * ===================================================================== */

static bool is_digit(int c) { return c >= '0' && c <= '9'; }

static const char *skip_sign(const char *p) { return (*p == '+' || *p == '-') ? p + 1 : p; }

/* p is one or more characters of set, and nothing else. */
static bool all_in(const char *p, const char *set) {
    if (!*p) return false;
    for (; *p; p++)
        if (!strchr(set, *p)) return false;
    return true;
}

/* Skip [0-9_]*. */
static const char *skip_digits(const char *p) {
    while (is_digit(*p) || *p == '_') p++;
    return p;
}

/* Skip (:[0-5]?[0-9])+ ; NULL if there is not at least one group. */
static const char *skip_sexagesimal(const char *p) {
    int groups = 0;
    while (*p == ':') {
        p++;
        if (p[0] >= '0' && p[0] <= '5' && is_digit(p[1])) p += 2;
        else if (is_digit(p[0])) p += 1;
        else return NULL;
        groups++;
    }
    return groups ? p : NULL;
}

static bool one_of(const char *s, const char *a, const char *b, const char *c) {
    return strcmp(s, a) == 0 || strcmp(s, b) == 0 || strcmp(s, c) == 0;
}

/* null: ~ | null | Null | NULL | empty */
static bool is_null_text(const char *s) { return !*s || strcmp(s, "~") == 0 || one_of(s, "null", "Null", "NULL"); }

/* bool: yes/no/true/false/on/off in lower, Capitalised or UPPER case.
 * Returns 1 true, 0 false, -1 not a bool. */
static int bool_text(const char *s) {
    if (one_of(s, "yes", "Yes", "YES") || one_of(s, "true", "True", "TRUE") || one_of(s, "on", "On", "ON"))
        return 1;
    if (one_of(s, "no", "No", "NO") || one_of(s, "false", "False", "FALSE") || one_of(s, "off", "Off", "OFF"))
        return 0;
    return -1;
}

/* int: [-+]?0b[0-1_]+ | [-+]?0[0-7_]+ | [-+]?(0|[1-9][0-9_]*) | [-+]?0x[0-9a-fA-F_]+
 *    | [-+]?[1-9][0-9_]*(:[0-5]?[0-9])+ */
static bool is_int_text(const char *s) {
    const char *q = skip_sign(s);
    if (q[0] == '0' && q[1] == 'b') return all_in(q + 2, "01_");
    if (q[0] == '0' && q[1] == 'x') return all_in(q + 2, "0123456789abcdefABCDEF_");
    if (strcmp(q, "0") == 0) return true;
    if (q[0] == '0') return all_in(q + 1, "01234567_");
    if (q[0] < '1' || q[0] > '9') return false;
    const char *p = skip_digits(q + 1);
    if (!*p) return true;
    p = skip_sexagesimal(p);
    return p && !*p;
}

/* float (OmegaConf's resolver, a superset of PyYAML's):
 *   [-+]?[0-9][0-9_]*(\.[0-9_]*)?([eE][-+]?[0-9]+)?
 * | \.[0-9_]+([eE][-+][0-9]+)?
 * | [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*
 * | [-+]?\.(inf|Inf|INF) | \.(nan|NaN|NAN) */
static bool is_float_text(const char *s) {
    const char *q = skip_sign(s);
    if (one_of(q, ".inf", ".Inf", ".INF")) return true;
    if (one_of(s, ".nan", ".NaN", ".NAN")) return true;
    if (s[0] == '.') {
        const char *p = s + 1;
        if (!is_digit(*p) && *p != '_') return false;
        p = skip_digits(p);
        if (*p == 'e' || *p == 'E') {
            p++;
            if (*p != '+' && *p != '-') return false;
            p++;
            if (!is_digit(*p)) return false;
            while (is_digit(*p)) p++;
        }
        return !*p;
    }
    if (!is_digit(*q)) return false;
    const char *p = skip_digits(q + 1);
    if (*p == ':') {
        p = skip_sexagesimal(p);
        if (!p || *p != '.') return false;
        return !*skip_digits(p + 1);
    }
    if (*p == '.') p = skip_digits(p + 1);
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!is_digit(*p)) return false;
        while (is_digit(*p)) p++;
    }
    return !*p;
}

/* Copy of s without underscores (caller frees). */
static char *strip_underscores(const char *s) {
    char *t = ldm_xmalloc(strlen(s) + 1), *o = t;
    for (; *s; s++)
        if (*s != '_') *o++ = *s;
    *o = 0;
    return t;
}

/* Value of an int-shaped text, as PyYAML's construct_yaml_int computes it.
 * Returns 1 and *out, 0 when there are no digits at all ("0x_"), -1 when the
 * value does not fit int64. */
static int int_value(const char *text, int64_t *out) {
    char *t = strip_underscores(text);
    const char *p = t;
    bool neg = *p == '-';
    p = skip_sign(p);
    int base = 10;
    if (p[0] == '0' && p[1] == 'b') base = 2, p += 2;
    else if (p[0] == '0' && p[1] == 'x') base = 16, p += 2;
    else if (p[0] == '0' && p[1]) base = 8, p += 1;
    int r = *p ? 1 : 0;
    uint64_t acc = 0, group = 0;
    for (; r == 1 && *p; p++) {
        if (*p == ':') { /* sexagesimal: value = value*60 + next group */
            if (__builtin_add_overflow(acc, group, &acc) || __builtin_mul_overflow(acc, 60, &acc)) r = -1;
            group = 0;
            continue;
        }
        int d = is_digit(*p) ? *p - '0' : (*p | 0x20) - 'a' + 10;
        if (__builtin_mul_overflow(group, (uint64_t)base, &group) ||
            __builtin_add_overflow(group, (uint64_t)d, &group))
            r = -1;
    }
    if (r == 1 && __builtin_add_overflow(acc, group, &acc)) r = -1;
    if (r == 1) {
        uint64_t lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        if (acc > lim) r = -1;
        else *out = neg ? (int64_t)(0 - acc) : (int64_t)acc;
    }
    free(t);
    return r;
}

/* Value of a float-shaped text, as PyYAML's construct_yaml_float computes
 * it. Returns false for texts strtod cannot read ("._"). */
static bool float_value(const char *text, double *out) {
    char *t = strip_underscores(text);
    for (char *c = t; *c; c++)
        if (*c >= 'A' && *c <= 'Z') *c += 'a' - 'A';
    const char *p = t;
    double sign = *p == '-' ? -1.0 : 1.0;
    p = skip_sign(p);
    bool ok = true;
    if (strcmp(p, ".inf") == 0) {
        *out = sign * INFINITY;
    } else if (strcmp(p, ".nan") == 0) {
        *out = NAN;
    } else {
        double acc = 0;
        while (ok) { /* one part; more parts after ':' are base-60 digits */
            char *end;
            double part = strtod(p, &end);
            if (end == p) ok = false;
            acc = acc * 60 + part;
            if (*end == ':') p = end + 1;
            else {
                if (*end) ok = false;
                break;
            }
        }
        *out = sign * acc;
    }
    free(t);
    return ok;
}

CfgNode *cfg_scalar_from_text(const char *text, const char *file, int line, int col) {
    if (is_null_text(text)) return new_node(CFG_NULL, file, line, col);
    int b = bool_text(text);
    if (b >= 0) {
        CfgNode *n = new_node(CFG_BOOL, file, line, col);
        n->b = b;
        return n;
    }
    if (is_int_text(text)) {
        int64_t v;
        int r = int_value(text, &v);
        if (r < 0) {
            ldm_fail("%s:%d:%d: error: integer '%.64s' does not fit in 64 bits", file, line, col, text);
            return NULL;
        }
        if (r > 0) {
            CfgNode *n = new_node(CFG_INT, file, line, col);
            n->i = v;
            return n;
        }
    }
    double f;
    if (is_float_text(text) && float_value(text, &f)) {
        CfgNode *n = new_node(CFG_FLOAT, file, line, col);
        n->f = f;
        return n;
    }
    CfgNode *n = new_node(CFG_STRING, file, line, col);
    n->s = ldm_xstrdup(text);
    return n;
}

/* ===================================================================== *
 * Loading: libyaml events -> tree
 * ===================================================================== */

/* An &anchor seen so far. */
typedef struct Anchor {
    char *name;                /* anchor name */
    const CfgNode *node;       /* its node; NULL while it is being built */
} Anchor;

/* State of one parse. */
typedef struct Loader {
    yaml_parser_t parser;      /* libyaml event parser */
    const char *file;          /* interned name for nodes and messages */
    const unsigned char *text; /* the whole input (for reader-error positions) */
    size_t len;                /* its length in bytes */
    Anchor *anchors;           /* anchors in definition order */
    int nanchors;              /* number of anchors */
    CfgNode **graveyard;       /* nodes anchors may still point at, freed at the end */
    int ngraveyard;            /* number of such nodes */
    long nodes;                /* nodes made so far (alias-bomb guard) */
} Loader;

static int mark_line(yaml_mark_t m) { return (int)m.line + 1; }
static int mark_col(yaml_mark_t m) { return (int)m.column + 1; }

/* The source excerpt (diag_excerpt) of line `line` of the input, with a
 * caret under column col (libyaml counts characters); empty where there is
 * no such line. */
static const char *excerpt(const Loader *L, int line, int col, char *buf, size_t cap) {
    buf[0] = 0;
    if (!L->text) return buf;
    size_t off = 0;
    for (int l = 1; l < line && off < L->len; off++)
        if (L->text[off] == '\n') l++;
    if (off == L->len && line > 1 && (L->len == 0 || L->text[L->len - 1] != '\n')) return buf;
    size_t end = off;
    while (end < L->len && L->text[end] != '\n' && L->text[end] != '\r') end++;
    int len = end - off > 200 ? 200 : (int)(end - off);
    diag_excerpt(buf, cap, 0, line, (const char *)L->text + off, len, col, 1, 1);
    return buf;
}

static int fail_at(Loader *L, yaml_mark_t m, const char *msg, const char *arg) {
    char ex[512];
    return ldm_fail("%s:%d:%d: error: %s%s%s%s%s", L->file, mark_line(m), mark_col(m), msg, arg ? " '" : "",
                    arg ? arg : "", arg ? "'" : "", excerpt(L, mark_line(m), mark_col(m), ex, sizeof ex));
}

/* Byte offset of a libyaml mark (whose column counts characters). */
static size_t mark_offset(const Loader *L, yaml_mark_t m) {
    size_t off = 0;
    for (size_t line = 0; line < m.line && off < L->len; off++)
        if (L->text[off] == '\n') line++;
    for (size_t col = 0; col < m.column && off < L->len; col++) {
        off++;
        while (off < L->len && (L->text[off] & 0xC0) == 0x80) off++;
    }
    return off;
}

/* Turn libyaml's error state into "file:line:col: error: ...". */
static int parser_error(Loader *L) {
    yaml_parser_t *p = &L->parser;
    const char *problem = p->problem ? p->problem : "unknown YAML error";
    if (p->error == YAML_MEMORY_ERROR) return ldm_fail("%s: error: out of memory parsing YAML", L->file);
    if (p->error == YAML_READER_ERROR) {
        /* The reader reports a byte offset: count lines and characters. */
        size_t off = p->problem_offset < L->len ? p->problem_offset : L->len;
        int line = 1, col = 1;
        for (size_t k = 0; k < off; k++) {
            if (L->text[k] == '\n') line++, col = 1;
            else if ((L->text[k] & 0xC0) != 0x80) col++;
        }
        /* (no source excerpt: the line may not be valid text) */
        if (strstr(problem, "UTF-8") && off < L->len)
            return ldm_fail("%s:%d:%d: error: the file is not valid UTF-8: %s (byte 0x%02X)", L->file, line, col,
                            problem, L->text[off]);
        if (p->problem_value >= 0)
            return ldm_fail("%s:%d:%d: error: %s (#x%X)", L->file, line, col, problem, (unsigned)p->problem_value);
        return ldm_fail("%s:%d:%d: error: %s", L->file, line, col, problem);
    }
    yaml_mark_t m = p->problem_mark;
    size_t off = mark_offset(L, m);
    const char *hint = off < L->len && L->text[off] == '\t' && !strstr(problem, "tab") ? " (a tab: YAML indentation must use spaces)" : "";
    char ex[512];
    excerpt(L, mark_line(m), mark_col(m), ex, sizeof ex);
    if (p->context)
        return ldm_fail("%s:%d:%d: error: %s%s (%s started at line %d, column %d)%s", L->file, mark_line(m),
                        mark_col(m), problem, hint, p->context, mark_line(p->context_mark),
                        mark_col(p->context_mark), ex);
    return ldm_fail("%s:%d:%d: error: %s%s%s", L->file, mark_line(m), mark_col(m), problem, hint, ex);
}

static int next_event(Loader *L, yaml_event_t *ev) {
    if (!yaml_parser_parse(&L->parser, ev)) return parser_error(L);
    return 0;
}

static int count_new(Loader *L, long k, yaml_mark_t m) {
    L->nodes += k;
    if (L->nodes > MAX_NODES) return fail_at(L, m, "document expands to too many nodes (alias expansion?)", NULL);
    return 0;
}

static void keep_until_end(Loader *L, CfgNode *n) {
    L->graveyard = ldm_xrealloc(L->graveyard, (L->ngraveyard + 1) * sizeof *L->graveyard);
    L->graveyard[L->ngraveyard++] = n;
}

/* Register &name (node NULL while under construction); returns its slot. */
static int anchor_begin(Loader *L, const yaml_char_t *name) {
    if (!name) return -1;
    L->anchors = ldm_xrealloc(L->anchors, (L->nanchors + 1) * sizeof *L->anchors);
    L->anchors[L->nanchors] = (Anchor){ldm_xstrdup((const char *)name), NULL};
    return L->nanchors++;
}

static void anchor_end(Loader *L, int slot, const CfgNode *n) {
    if (slot >= 0) L->anchors[slot].node = n;
}

static bool tag_is(const yaml_char_t *tag, const char *suffix) {
    return tag && strncmp((const char *)tag, "tag:yaml.org,2002:", 18) == 0 &&
           strcmp((const char *)tag + 18, suffix) == 0;
}

/* *name: a copy of the anchored node, located at the alias. */
static CfgNode *expand_alias(Loader *L, const yaml_event_t *ev) {
    const char *name = (const char *)ev->data.alias.anchor;
    for (int k = L->nanchors - 1; k >= 0; k--) {
        if (strcmp(L->anchors[k].name, name) != 0) continue;
        if (!L->anchors[k].node) {
            fail_at(L, ev->start_mark, "recursive alias is not supported:", name);
            return NULL;
        }
        if (count_new(L, count_nodes(L->anchors[k].node), ev->start_mark)) return NULL;
        CfgNode *c = cfg_copy(L->anchors[k].node);
        c->line = mark_line(ev->start_mark);
        c->col = mark_col(ev->start_mark);
        return c;
    }
    fail_at(L, ev->start_mark, "found undefined alias", name);
    return NULL;
}

/* A scalar event: quoted and block scalars are strings, plain ones are
 * typed, and !!str/!!int/!!float/!!bool/!!null force a type. */
static CfgNode *make_scalar(Loader *L, const yaml_event_t *ev) {
    const char *text = (const char *)ev->data.scalar.value;
    const yaml_char_t *tag = ev->data.scalar.tag;
    int line = mark_line(ev->start_mark), col = mark_col(ev->start_mark);
    if (strlen(text) != ev->data.scalar.length) {
        fail_at(L, ev->start_mark, "string contains a NUL character", NULL);
        return NULL;
    }
    if (count_new(L, 1, ev->start_mark)) return NULL;
    CfgNode *n = NULL;
    if (!tag || strcmp((const char *)tag, "!") == 0) {
        if (!tag && ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
            n = cfg_scalar_from_text(text, L->file, line, col);
            if (!n) { /* the message, with the source line */
                char msg[1024], ex[512];
                snprintf(msg, sizeof msg, "%s", ldm_last_error());
                ldm_fail("%s%s", msg, excerpt(L, line, col, ex, sizeof ex));
                return NULL;
            }
        } else {
            n = new_node(CFG_STRING, L->file, line, col);
            n->s = ldm_xstrdup(text);
        }
    } else if (tag_is(tag, "str")) {
        n = new_node(CFG_STRING, L->file, line, col);
        n->s = ldm_xstrdup(text);
    } else if (tag_is(tag, "null")) {
        n = new_node(CFG_NULL, L->file, line, col);
    } else if (tag_is(tag, "bool")) {
        char low[8] = {0};
        for (int k = 0; k < 7 && text[k]; k++) low[k] = text[k] | 0x20;
        int b = strlen(text) < 7 ? bool_text(low) : -1;
        if (b < 0) {
            fail_at(L, ev->start_mark, "not a valid !!bool:", text);
            return NULL;
        }
        n = new_node(CFG_BOOL, L->file, line, col);
        n->b = b;
    } else if (tag_is(tag, "int") || tag_is(tag, "float")) {
        bool want_float = tag_is(tag, "float");
        const char *what = want_float ? "not a valid !!float:" : "not a valid !!int:";
        if (!is_int_text(text) && !(want_float && is_float_text(text))) {
            fail_at(L, ev->start_mark, what, text);
            return NULL;
        }
        n = cfg_scalar_from_text(text, L->file, line, col);
        if (!n) return NULL; /* int that does not fit, already reported */
        if (n->kind != CFG_INT && n->kind != CFG_FLOAT) {
            cfg_free(n);
            fail_at(L, ev->start_mark, what, text);
            return NULL;
        }
        if (want_float && n->kind == CFG_INT) {
            n->kind = CFG_FLOAT;
            n->f = (double)n->i;
            n->i = 0;
        }
    } else {
        fail_at(L, ev->start_mark, "unsupported tag", (const char *)tag);
        return NULL;
    }
    return n;
}

static CfgNode *parse_node(Loader *L, yaml_event_t *ev, int depth);

static bool collection_tag_ok(const yaml_char_t *tag, const char *kind) {
    return !tag || strcmp((const char *)tag, "!") == 0 || tag_is(tag, kind);
}

/* sequence: SEQUENCE-START node* SEQUENCE-END */
static CfgNode *parse_seq(Loader *L, const yaml_event_t *start, int depth) {
    if (!collection_tag_ok(start->data.sequence_start.tag, "seq")) {
        fail_at(L, start->start_mark, "unsupported tag", (const char *)start->data.sequence_start.tag);
        return NULL;
    }
    if (count_new(L, 1, start->start_mark)) return NULL;
    int slot = anchor_begin(L, start->data.sequence_start.anchor);
    CfgNode *n = new_node(CFG_LIST, L->file, mark_line(start->start_mark), mark_col(start->start_mark));
    for (;;) {
        yaml_event_t ev;
        if (next_event(L, &ev)) goto fail;
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        CfgNode *item = parse_node(L, &ev, depth + 1);
        if (!item) goto fail;
        list_push(n, item);
    }
    anchor_end(L, slot, n);
    return n;
fail:
    cfg_free(n);
    return NULL;
}

/* Apply "<<" merges: copy keys of the merged maps that the map lacks
 * (explicit keys win; earlier maps in a merge list win). */
static void apply_merges(Loader *L, CfgNode *m, CfgNode **merges, int nmerges) {
    for (int k = 0; k < nmerges; k++) {
        CfgNode *src = merges[k];
        int nsrc = src->kind == CFG_MAP ? 1 : src->n;
        for (int s = 0; s < nsrc; s++) {
            const CfgNode *from = src->kind == CFG_MAP ? src : src->items[s];
            for (int j = 0; j < from->n; j++)
                if (map_find(m, from->keys[j]) < 0) map_push(m, ldm_xstrdup(from->keys[j]), cfg_copy(from->items[j]));
        }
        keep_until_end(L, src); /* an anchor may still point at it */
    }
}

/* mapping: MAPPING-START (key node)* MAPPING-END, keys plain text */
static CfgNode *parse_map(Loader *L, const yaml_event_t *start, int depth) {
    if (!collection_tag_ok(start->data.mapping_start.tag, "map")) {
        fail_at(L, start->start_mark, "unsupported tag", (const char *)start->data.mapping_start.tag);
        return NULL;
    }
    if (count_new(L, 1, start->start_mark)) return NULL;
    int slot = anchor_begin(L, start->data.mapping_start.anchor);
    CfgNode *n = new_node(CFG_MAP, L->file, mark_line(start->start_mark), mark_col(start->start_mark));
    yaml_mark_t *key_marks = NULL;   /* where each key was written (for duplicates) */
    CfgNode **merges = NULL;         /* values of "<<" keys */
    int nmerges = 0;
    for (;;) {
        yaml_event_t kev, vev;
        if (next_event(L, &kev)) goto fail;
        if (kev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&kev);
            break;
        }
        if (kev.type != YAML_SCALAR_EVENT) {
            fail_at(L, kev.start_mark,
                    kev.type == YAML_ALIAS_EVENT ? "an alias cannot be a mapping key"
                                                 : "mapping keys must be scalars",
                    NULL);
            yaml_event_delete(&kev);
            goto fail;
        }
        yaml_mark_t km = kev.start_mark;
        bool merge = kev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !kev.data.scalar.tag &&
                     strcmp((const char *)kev.data.scalar.value, "<<") == 0;
        char *key = NULL;
        if (!merge) {
            /* Keys stay text; a tagged key is still checked against its tag,
             * and an anchored one kept alive for its aliases. */
            const char *text = (const char *)kev.data.scalar.value;
            if (strlen(text) != kev.data.scalar.length) {
                fail_at(L, km, "mapping key contains a NUL character", NULL);
                yaml_event_delete(&kev);
                goto fail;
            }
            if (kev.data.scalar.tag || kev.data.scalar.anchor) {
                CfgNode *kn = make_scalar(L, &kev);
                if (!kn) {
                    yaml_event_delete(&kev);
                    goto fail;
                }
                if (kev.data.scalar.anchor) {
                    anchor_end(L, anchor_begin(L, kev.data.scalar.anchor), kn);
                    keep_until_end(L, kn);
                } else {
                    cfg_free(kn);
                }
            }
            key = ldm_xstrdup(text);
        }
        yaml_event_delete(&kev);
        if (key) {
            int dup = map_find(n, key);
            if (dup >= 0) {
                char ex[512];
                ldm_fail("%s:%d:%d: error: duplicate key '%s' (first defined at line %d, column %d)%s", L->file,
                         mark_line(km), mark_col(km), key, mark_line(key_marks[dup]), mark_col(key_marks[dup]),
                         excerpt(L, mark_line(km), mark_col(km), ex, sizeof ex));
                free(key);
                goto fail;
            }
        }
        if (next_event(L, &vev)) {
            free(key);
            goto fail;
        }
        CfgNode *v = parse_node(L, &vev, depth + 1);
        if (!v) {
            free(key);
            goto fail;
        }
        if (merge) {
            bool ok = v->kind == CFG_MAP;
            if (v->kind == CFG_LIST) {
                ok = true;
                for (int k = 0; k < v->n; k++) ok = ok && v->items[k]->kind == CFG_MAP;
            }
            if (!ok) {
                char ex[512];
                ldm_fail("%s:%d:%d: error: merge key '<<' needs a mapping or a list of mappings, not a %s%s", L->file,
                         v->line, v->col, cfg_kind_name(v->kind), excerpt(L, v->line, v->col, ex, sizeof ex));
                cfg_free(v);
                goto fail;
            }
            merges = ldm_xrealloc(merges, (nmerges + 1) * sizeof *merges);
            merges[nmerges++] = v;
            continue;
        }
        key_marks = ldm_xrealloc(key_marks, (n->n + 1) * sizeof *key_marks);
        key_marks[n->n] = km;
        map_push(n, key, v);
    }
    apply_merges(L, n, merges, nmerges);
    free(merges);
    free(key_marks);
    anchor_end(L, slot, n);
    return n;
fail:
    for (int k = 0; k < nmerges; k++) keep_until_end(L, merges[k]);
    free(merges);
    free(key_marks);
    cfg_free(n);
    return NULL;
}

/* node: ALIAS | SCALAR | sequence | mapping. Consumes *ev. */
static CfgNode *parse_node(Loader *L, yaml_event_t *ev, int depth) {
    CfgNode *n = NULL;
    if (depth > MAX_DEPTH) {
        fail_at(L, ev->start_mark, "nesting is too deep", NULL);
    } else if (ev->type == YAML_ALIAS_EVENT) {
        n = expand_alias(L, ev);
    } else if (ev->type == YAML_SCALAR_EVENT) {
        n = make_scalar(L, ev);
        if (n && ev->data.scalar.anchor) {
            anchor_end(L, anchor_begin(L, ev->data.scalar.anchor), n);
        }
    } else if (ev->type == YAML_SEQUENCE_START_EVENT) {
        n = parse_seq(L, ev, depth);
    } else if (ev->type == YAML_MAPPING_START_EVENT) {
        n = parse_map(L, ev, depth);
    } else {
        fail_at(L, ev->start_mark, "unexpected YAML event", NULL);
    }
    yaml_event_delete(ev);
    return n;
}

/* stream: STREAM-START (DOCUMENT-START node DOCUMENT-END)? STREAM-END,
 * exactly one document (none gives an empty map). */
static CfgNode *parse_stream(Loader *L) {
    yaml_event_t ev;
    CfgNode *root = NULL;
    if (next_event(L, &ev)) return NULL;
    yaml_event_delete(&ev); /* STREAM-START */
    if (next_event(L, &ev)) return NULL;
    if (ev.type == YAML_STREAM_END_EVENT) {
        yaml_event_delete(&ev);
        return new_node(CFG_MAP, L->file, 1, 1);
    }
    yaml_event_delete(&ev); /* DOCUMENT-START */
    if (next_event(L, &ev)) return NULL;
    root = parse_node(L, &ev, 0);
    if (!root) return NULL;
    if (root->kind == CFG_NULL) root->kind = CFG_MAP; /* like OmegaConf.load */
    if (next_event(L, &ev)) goto fail;
    yaml_event_delete(&ev); /* DOCUMENT-END */
    if (next_event(L, &ev)) goto fail;
    if (ev.type != YAML_STREAM_END_EVENT) {
        fail_at(L, ev.start_mark, "expected a single YAML document, found another one", NULL);
        yaml_event_delete(&ev);
        goto fail;
    }
    yaml_event_delete(&ev);
    return root;
fail:
    cfg_free(root);
    return NULL;
}

static CfgNode *parse_buffer(const char *text, size_t len, const char *name) {
    Loader L = {0};
    L.file = intern(name);
    L.text = (const unsigned char *)text;
    L.len = len;
    if (!yaml_parser_initialize(&L.parser)) {
        ldm_fail("%s: error: cannot initialise the YAML parser", name);
        return NULL;
    }
    yaml_parser_set_input_string(&L.parser, L.text, len);
    CfgNode *root = parse_stream(&L);
    yaml_parser_delete(&L.parser);
    for (int k = 0; k < L.nanchors; k++) free(L.anchors[k].name);
    free(L.anchors);
    for (int k = 0; k < L.ngraveyard; k++) cfg_free(L.graveyard[k]);
    free(L.graveyard);
    return root;
}

CfgNode *cfg_parse_string(const char *text, const char *name) {
    return parse_buffer(text, strlen(text), name ? name : "<string>");
}

CfgNode *cfg_load(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        ldm_fail("%s: error: cannot open config: %s", path, strerror(errno));
        return NULL;
    }
    size_t len = 0, cap = 1 << 14;
    char *text = ldm_xmalloc(cap);
    for (;;) {
        len += fread(text + len, 1, cap - len, fp);
        if (len < cap) break;
        text = ldm_xrealloc(text, cap *= 2);
    }
    if (ferror(fp)) {
        ldm_fail("%s: error: cannot read config: %s", path, strerror(errno));
        fclose(fp);
        free(text);
        return NULL;
    }
    fclose(fp);
    CfgNode *root = parse_buffer(text, len, path);
    free(text);
    return root;
}

/* ===================================================================== *
 * Lookup
 * ===================================================================== */

const CfgNode *cfg_get(const CfgNode *map, const char *key) {
    if (!map || map->kind != CFG_MAP || !key) return NULL;
    int k = map_find(map, key);
    return k < 0 ? NULL : map->items[k];
}

/* An all-digit path component as a list index, or -1. */
static int path_index(const char *seg, size_t len) {
    if (len == 0 || len > 9) return -1;
    int v = 0;
    for (size_t k = 0; k < len; k++) {
        if (!is_digit(seg[k])) return -1;
        v = v * 10 + (seg[k] - '0');
    }
    return v;
}

/* Child of n named by the component seg[0..len), or NULL. */
static CfgNode *path_step(const CfgNode *n, const char *seg, size_t len) {
    if (n->kind == CFG_MAP) {
        for (int k = 0; k < n->n; k++)
            if (strlen(n->keys[k]) == len && memcmp(n->keys[k], seg, len) == 0) return n->items[k];
        return NULL;
    }
    if (n->kind == CFG_LIST) {
        int idx = path_index(seg, len);
        return idx >= 0 && idx < n->n ? n->items[idx] : NULL;
    }
    return NULL;
}

const CfgNode *cfg_path(const CfgNode *root, const char *dotted) {
    if (!root || !dotted) return NULL;
    const CfgNode *n = root;
    const char *p = dotted;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        n = path_step(n, p, len);
        if (!n || !dot) return n;
        p = dot + 1;
    }
}

/* ===================================================================== *
 * Overrides (-D path=value)
 * ===================================================================== */

/* The value of a -D: YAML when it starts with [ { " or ', else one plain
 * scalar (so "a: b" or "x # y" stay strings). */
static CfgNode *override_value(const char *value_text) {
    const char *b = value_text, *e = value_text + strlen(value_text);
    while (*b == ' ' || *b == '\t') b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) e--;
    char *t = ldm_xmalloc(e - b + 1);
    memcpy(t, b, e - b);
    t[e - b] = 0;
    CfgNode *v;
    if (t[0] && strchr("[{\"'", t[0])) v = cfg_parse_string(t, CMDLINE);
    else v = cfg_scalar_from_text(t, CMDLINE, 1, 1 + (int)(b - value_text));
    free(t);
    return v;
}

/* Levels of n: 1 for a scalar, 1 + the deepest item for a list or map. */
static int node_depth(const CfgNode *n) {
    int d = 0;
    if (n->kind == CFG_LIST || n->kind == CFG_MAP)
        for (int k = 0; k < n->n; k++) {
            int dk = node_depth(n->items[k]);
            if (dk > d) d = dk;
        }
    return d + 1;
}

int cfg_set_path(CfgNode *root, const char *dotted, const char *value_text) {
    if (!root || root->kind != CFG_MAP)
        return ldm_fail(CMDLINE ":1:1: error: -D %s: the config is not a map", dotted ? dotted : "");
    if (!dotted || !*dotted || dotted[0] == '.' || dotted[strlen(dotted) - 1] == '.' || strstr(dotted, ".."))
        return ldm_fail(CMDLINE ":1:1: error: -D '%s': not a dotted key path like a.b.c", dotted ? dotted : "");
    CfgNode *v = override_value(value_text ? value_text : "");
    if (!v) return -1;
    /* no deeper than a config file may nest (what cfg_print writes must parse back) */
    int levels = 1;
    for (const char *q = dotted; *q; q++) levels += *q == '.';
    if (levels + node_depth(v) > MAX_DEPTH) {
        cfg_free(v);
        return ldm_fail(CMDLINE ":1:1: error: -D %.40s...: nesting is too deep (more than %d levels)", dotted,
                        MAX_DEPTH);
    }
    CfgNode *n = root;
    const char *p = dotted;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        int idx = n->kind == CFG_LIST ? path_index(p, len) : -1;
        if (n->kind != CFG_MAP && !(n->kind == CFG_LIST && idx >= 0)) {
            int r = ldm_fail(CMDLINE ":1:1: error: -D %s: '%.*s' (%s:%d:%d) is of type %s, not a map", dotted,
                             (int)(p - 1 - dotted), dotted, n->file, n->line, n->col, cfg_kind_name(n->kind));
            cfg_free(v);
            return r;
        }
        if (n->kind == CFG_LIST && idx >= n->n) {
            int r = ldm_fail(CMDLINE ":1:1: error: -D %s: index %d is past the end of the %d-item list at %s:%d:%d",
                             dotted, idx, n->n, n->file, n->line, n->col);
            cfg_free(v);
            return r;
        }
        CfgNode **slot = NULL;
        if (n->kind == CFG_LIST) {
            slot = &n->items[idx];
        } else {
            for (int k = 0; k < n->n && !slot; k++)
                if (strlen(n->keys[k]) == len && memcmp(n->keys[k], p, len) == 0) slot = &n->items[k];
        }
        if (!dot) { /* last component: replace or add */
            if (slot) {
                cfg_free(*slot);
                *slot = v;
            } else {
                char *key = ldm_xmalloc(len + 1);
                memcpy(key, p, len);
                key[len] = 0;
                map_push(n, key, v);
            }
            return 0;
        }
        if (!slot) { /* missing map on the way: create it */
            char *key = ldm_xmalloc(len + 1);
            memcpy(key, p, len);
            key[len] = 0;
            map_push(n, key, new_node(CFG_MAP, CMDLINE, 1, 1));
            slot = &n->items[n->n - 1];
        }
        n = *slot;
        p = dot + 1;
    }
}

/* ===================================================================== *
 * Printing
 * ===================================================================== */

/* Shortest text that reads back as f, laid out like Python's repr (fixed
 * notation for 1e-4 <= |f| < 1e16, else exponent) and always recognisable
 * as a float: 90.0, 0.0001, 1.0e-05, 1.0e+16, .inf, .nan. */
static void format_float(double f, char *buf, size_t cap) {
    if (isnan(f)) {
        snprintf(buf, cap, ".nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, cap, f > 0 ? ".inf" : "-.inf");
        return;
    }
    int digits = 0; /* digits after the first significant one */
    for (; digits < 17; digits++) {
        snprintf(buf, cap, "%.*e", digits, f);
        if (strtod(buf, NULL) == f) break;
    }
    int exp = atoi(strchr(buf, 'e') + 1);
    if (exp >= -4 && exp < 16) snprintf(buf, cap, "%.*f", digits > exp ? digits - exp : 0, f);
    if (strchr(buf, '.')) return;
    char *e = strchr(buf, 'e');
    if (!e) {
        size_t len = strlen(buf);
        snprintf(buf + len, cap - len, ".0");
    } else { /* 1e-06 -> 1.0e-06 (PyYAML needs the dot) */
        memmove(e + 2, e, strlen(e) + 1);
        e[0] = '.';
        e[1] = '0';
    }
}

/* Double-quoted, escaped so that it reads back as the same string: the
 * C0 and C1 controls (U+0080..U+009F: UTF-8 C2 80..C2 9F) as \xNN, and
 * the line and paragraph separators U+2028, U+2029 as \L, \P. A YAML 1.1
 * reader (libyaml) takes NEL (U+0085), LS and PS as line breaks even in a
 * quoted scalar, and folds them into a space (a NEL made by a "\N" in the
 * input printed raw did not read back: the config fuzzer's find). */
static void print_string(const char *s, FILE *fp) {
    fputc('"', fp);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(fp, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", fp);
        else if (*p == '\t') fputs("\\t", fp);
        else if (*p < 0x20 || *p == 0x7F) fprintf(fp, "\\x%02X", *p);
        else if (*p == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F) fprintf(fp, "\\x%02X", *++p);
        else if (*p == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) fputs(p[2] == 0xA8 ? "\\L" : "\\P", fp), p += 2;
        else fputc(*p, fp);
    }
    fputc('"', fp);
}

static bool is_word(int c) { return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '_'; }

/* Keys print plain when that is unambiguous, else quoted. */
static void print_key(const char *k, FILE *fp) {
    bool plain = k[0] && (is_word(k[0]));
    for (const char *p = k; plain && *p; p++) plain = is_word(*p) || strchr("./-", *p);
    if (plain) fputs(k, fp);
    else print_string(k, fp);
}

static bool is_scalar(const CfgNode *n) { return n->kind != CFG_LIST && n->kind != CFG_MAP; }

/* Printed on one line: scalars, empty collections, lists of scalars. */
static bool is_inline(const CfgNode *n) {
    if (is_scalar(n) || n->n == 0) return true;
    if (n->kind == CFG_MAP) return false;
    for (int k = 0; k < n->n; k++)
        if (!is_scalar(n->items[k])) return false;
    return true;
}

static void print_inline(const CfgNode *n, FILE *fp) {
    char buf[64];
    switch (n->kind) {
    case CFG_NULL: fputs("null", fp); break;
    case CFG_BOOL: fputs(n->b ? "true" : "false", fp); break;
    case CFG_INT: fprintf(fp, "%lld", (long long)n->i); break;
    case CFG_FLOAT:
        format_float(n->f, buf, sizeof buf);
        fputs(buf, fp);
        break;
    case CFG_STRING: print_string(n->s, fp); break;
    case CFG_LIST:
        fputc('[', fp);
        for (int k = 0; k < n->n; k++) {
            if (k) fputs(", ", fp);
            print_inline(n->items[k], fp);
        }
        fputc(']', fp);
        break;
    case CFG_MAP: fputs("{}", fp); break;
    }
}

static void print_block(const CfgNode *n, FILE *fp, int indent);

/* The rest of a "key:" or "-" line: " value\n", or "\n" and a block. */
static void print_after(const CfgNode *v, FILE *fp, int indent) {
    if (is_inline(v)) {
        fputc(' ', fp);
        print_inline(v, fp);
        fputc('\n', fp);
    } else {
        fputc('\n', fp);
        print_block(v, fp, indent + 2);
    }
}

/* Keys longer than this print as explicit keys ("? key" then ": value"):
 * printed quoted, with escapes, they could pass YAML's 1024-character limit
 * of an implicit key. */
#define LONG_KEY 200

static void print_block(const CfgNode *n, FILE *fp, int indent) {
    for (int k = 0; k < n->n; k++) {
        fprintf(fp, "%*s", indent, "");
        if (n->kind == CFG_MAP && strlen(n->keys[k]) > LONG_KEY) {
            /* an implicit key is at most 1024 characters in YAML: the explicit form */
            fputs("? ", fp);
            print_string(n->keys[k], fp);
            fprintf(fp, "\n%*s:", indent, "");
        } else if (n->kind == CFG_MAP) {
            print_key(n->keys[k], fp);
            fputc(':', fp);
        } else {
            fputc('-', fp);
        }
        print_after(n->items[k], fp, indent);
    }
}

void cfg_print(const CfgNode *n, FILE *fp) {
    if (!n) {
        fputs("null\n", fp);
    } else if (is_inline(n)) {
        print_inline(n, fp);
        fputc('\n', fp);
    } else {
        print_block(n, fp, 0);
    }
}
