/*
 * utf8.h - strict UTF-8 decoding and the Unicode character classes of
 * unicode_tables.h, shared by the CLIP tokenizer (tokenizer.c) and the
 * webui prompt parser (prompt.c), which must agree on what a prompt's
 * bytes and characters are.
 */
#ifndef LDM_UTF8_H
#define LDM_UTF8_H

#include <stddef.h>
#include <stdint.h>

#include "unicode_tables.h"

/* Why ldm_utf8_next refused a sequence. */
enum {
    LDM_UTF8_BAD_LEAD = -1,    /* a stray continuation byte or an impossible lead byte */
    LDM_UTF8_TRUNCATED = -2,   /* the sequence ends early */
    LDM_UTF8_OVERLONG = -3,    /* an overlong form, a surrogate or a code point above U+10FFFF */
};

/* Strict decoding of the sequence at s[i] (s NUL-terminated, s[i] != 0):
 * its length (1..4) with the code point in *cp, or an LDM_UTF8_* code. */
static inline int ldm_utf8_next(const char *s, size_t i, uint32_t *cp) {
    const unsigned char *p = (const unsigned char *)s + i;
    uint32_t c = p[0], v;
    int n;
    if (c < 0x80) { v = c; n = 1; }
    else if (c >= 0xC2 && c <= 0xDF) { v = c & 0x1F; n = 2; }
    else if (c >= 0xE0 && c <= 0xEF) { v = c & 0x0F; n = 3; }
    else if (c >= 0xF0 && c <= 0xF4) { v = c & 0x07; n = 4; }
    else return LDM_UTF8_BAD_LEAD;
    for (int k = 1; k < n; k++) {
        uint32_t b = p[k]; /* the terminating NUL fails this test */
        if ((b & 0xC0) != 0x80) return LDM_UTF8_TRUNCATED;
        v = v << 6 | (b & 0x3F);
    }
    if ((n == 3 && v < 0x800) || (n == 4 && v < 0x10000) || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return LDM_UTF8_OVERLONG;
    *cp = v;
    return n;
}

/* The code point at s[i] of text already checked valid; *len its bytes. */
static inline uint32_t ldm_utf8_at(const char *s, size_t i, int *len) {
    uint32_t cp = 0;
    *len = ldm_utf8_next(s, i, &cp);
    return cp;
}

/* Is c in the sorted, disjoint ranges r[0..n)? */
static inline int ldm_in_ranges(const UniRange *r, size_t n, uint32_t c) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid].lo) hi = mid;
        else if (c > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}
#define LDM_IN_TABLE(table, c) ldm_in_ranges(table, sizeof(table) / sizeof((table)[0]), c)

/* Python's str.isspace() (what str.strip() removes, and re's \s on str). */
static inline int ldm_is_py_space(uint32_t c) {
    if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
    return LDM_IN_TABLE(uni_py_space, c);
}

#endif
