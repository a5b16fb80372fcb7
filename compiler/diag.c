/*
 * diag.c - source files and compiler diagnostics.
 *
 * Diagnostics follow the usual compiler convention (as in chibicc):
 *
 *   models/sd1/unet.graph:12:7: error: conv2d: input has 320 channels, weight expects 640
 *      let h = conv2d(x, w, b);
 *              ^~~~~~
 *
 * The whole text is recorded with ldm_fail(), so the library only returns
 * errors and main() prints them.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ldmc.h"

SrcFile *src_load(const char *path) {
    size_t len;
    char *text = ldm_read_file(path, &len);
    if (!text) return NULL;
    if (memchr(text, 0, len)) {
        free(text);
        ldm_fail("%s: error: file contains a NUL byte (not a text file)", path);
        return NULL;
    }
    SrcFile *f = ldm_xcalloc(1, sizeof *f);
    f->path = ldm_xstrdup(path);
    f->text = text;
    f->len = len;
    return f;
}

SrcFile *src_from_string(const char *name, const char *text) {
    SrcFile *f = ldm_xcalloc(1, sizeof *f);
    f->path = ldm_xstrdup(name);
    f->text = ldm_xstrdup(text);
    f->len = strlen(text);
    return f;
}

void src_free(SrcFile *f) {
    if (!f) return;
    free(f->path);
    free(f->text);
    free(f);
}

/* The text of line `line` (1-based) of f, and its length. */
static const char *src_line(const SrcFile *f, int line, int *len) {
    const char *p = f->text;
    for (int i = 1; i < line && p; i++) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    if (!p) {
        *len = 0;
        return "";
    }
    const char *e = strchr(p, '\n');
    *len = e ? (int)(e - p) : (int)strlen(p);
    return p;
}

const char *loc_str(SrcLoc loc) {
    static _Thread_local char buf[4][512];
    static _Thread_local int slot;
    char *b = buf[slot++ & 3];
    if (!loc.file) snprintf(b, 512, "<builtin>");
    else snprintf(b, 512, "%s:%d", loc.file->path, loc.line);
    return b;
}

/* Append "file:line:col: kind: msg\n source\n caret" to `out`. */
static void format_diag(char *out, size_t cap, SrcLoc loc, const char *kind, const char *msg) {
    size_t n = strlen(out);
    if (!loc.file) {
        snprintf(out + n, cap - n, "%s%s: %s", n ? "\n" : "", kind, msg);
        return;
    }
    n += snprintf(out + n, cap - n, "%s%s:%d:%d: %s: %s", n ? "\n" : "", loc.file->path,
                  loc.line, loc.col, kind, msg);
    if (n >= cap) return;
    int len;
    const char *line = src_line(loc.file, loc.line, &len);
    diag_excerpt(out, cap, n, loc.line, line, len, loc.col, loc.end_col > loc.col ? loc.end_col - loc.col : 1, 0);
}

size_t diag_excerpt(char *out, size_t cap, size_t n, int line_no, const char *line, int len, int col, int width,
                    int chars) {
    if (len > 200) len = 200;
    int w = snprintf(out + n, cap - n, "\n %5d | %.*s\n       | ", line_no, len, line);
    if (w < 0 || (size_t)w >= cap - n) {
        out[n] = 0;
        return n;
    }
    n += (size_t)w;
    /* the caret's indent copies the line's tabs, so it lines up in any
     * tab width; a column counted in characters skips UTF-8 continuation bytes */
    int k = 0;
    for (int c = 1; c < col && k < len && n + 2 < cap; c++) {
        out[n++] = line[k] == '\t' ? '\t' : ' ';
        k++;
        while (chars && k < len && (line[k] & 0xC0) == 0x80) k++;
    }
    if (n + 2 < cap) out[n++] = '^';
    for (int i = 1; i < width && n + 2 < cap; i++) out[n++] = '~';
    out[n] = 0;
    return n;
}

static _Thread_local char diag_buf[16384];

int diag_error(SrcLoc loc, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    diag_buf[0] = 0;
    format_diag(diag_buf, sizeof diag_buf, loc, "error", msg);
    return ldm_fail("%s", diag_buf);
}

void diag_note(SrcLoc loc, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* diag_buf still holds the error being annotated */
    format_diag(diag_buf, sizeof diag_buf, loc, "note", msg);
    ldm_fail("%s", diag_buf);
}
