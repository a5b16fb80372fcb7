/* util.c - see util.h. */
#define _GNU_SOURCE
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char last_error[16384];

int ldm_fail(const char *fmt, ...) {
    /* format aside first: callers may pass ldm_last_error() as an argument
     * to wrap the previous message ("file: <previous>") */
    static _Thread_local char tmp[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    memcpy(last_error, tmp, sizeof last_error);
    return -1;
}

const char *ldm_last_error(void) { return last_error; }

static void oom(size_t n) {
    fprintf(stderr, "fatal: out of memory allocating %zu bytes\n", n);
    abort();
}

void *ldm_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *ldm_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) oom(n * size);
    return p;
}

void *ldm_xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) oom(n);
    return p;
}

char *ldm_xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(ldm_xmalloc(n), s, n);
}

char *ldm_xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int r = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (r < 0) oom(0);
    return s;
}

_Noreturn void ldm_internal_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("internal error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

void *ldm_aligned_alloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) oom(n);
    return p;
}

char *ldm_path_stem(const char *path) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    const char *dot = strrchr(b, '.');
    size_t n = dot && dot != b ? (size_t)(dot - b) : strlen(b);
    char *s = ldm_xmalloc(n + 1);
    memcpy(s, b, n);
    s[n] = 0;
    return s;
}

char *ldm_read_file(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        ldm_fail("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = ldm_xmalloc(cap);
    for (;;) {
        size_t r = fread(buf + n, 1, cap - n - 1, fp);
        n += r;
        if (n + 1 < cap) {
            if (ferror(fp)) {
                ldm_fail("%s: read error: %s", path, strerror(errno));
                fclose(fp);
                free(buf);
                return NULL;
            }
            if (feof(fp)) break;
        } else {
            cap *= 2;
            buf = ldm_xrealloc(buf, cap);
        }
    }
    fclose(fp);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int ldm_out_open(LdmOutFile *o, const char *path) {
    o->path = ldm_xstrdup(path);
    o->tmp_path = ldm_xasprintf("%s.tmp.%ld", path, (long)getpid());
    o->fp = fopen(o->tmp_path, "wb");
    if (!o->fp) {
        int r = ldm_fail("%s: cannot create: %s", path, strerror(errno));
        free(o->path);
        free(o->tmp_path);
        o->path = o->tmp_path = NULL;
        return r;
    }
    return 0;
}

int ldm_out_commit(LdmOutFile *o) {
    int bad = ferror(o->fp);
    if (fclose(o->fp) != 0) bad = 1;
    o->fp = NULL;
    if (bad) {
        int r = ldm_fail("%s: write error: %s", o->path, strerror(errno));
        ldm_out_abort(o);
        return r;
    }
    if (rename(o->tmp_path, o->path) != 0) {
        int r = ldm_fail("%s: cannot rename from %s: %s", o->path, o->tmp_path, strerror(errno));
        ldm_out_abort(o);
        return r;
    }
    free(o->path);
    free(o->tmp_path);
    o->path = o->tmp_path = NULL;
    return 0;
}

void ldm_out_abort(LdmOutFile *o) {
    if (o->fp) fclose(o->fp);
    o->fp = NULL;
    if (o->tmp_path) remove(o->tmp_path);
    free(o->path);
    free(o->tmp_path);
    o->path = o->tmp_path = NULL;
}

double ldm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t ldm_peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (size_t)ru.ru_maxrss * 1024;
}
