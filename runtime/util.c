/* util.c - see util.h. */
#define _GNU_SOURCE
#include "util.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/mman.h>
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

/* ----------------------------------------------------------------------------
 * Registries the signal handlers read: temporary output files and mapped
 * input files. Slots are claimed and released with atomic operations; a
 * handler only reads them (unlink and write are async-signal-safe).
 * ------------------------------------------------------------------------- */

#define MAX_TMP 16
#define MAX_MAPS 32
static char *volatile tmp_slots[MAX_TMP];
static struct {
    const void *volatile addr;
    size_t len;
    char path[1024];
} map_slots[MAX_MAPS];
static char progname[64] = "ldm";

void ldm_set_progname(const char *name) {
    const char *b = strrchr(name, '/');
    snprintf(progname, sizeof progname, "%s", b ? b + 1 : name);
}

static void tmp_register(char *path) {
    for (int i = 0; i < MAX_TMP; i++) {
        char *expected = NULL;
        if (__atomic_compare_exchange_n(&tmp_slots[i], &expected, path, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return;
    }
    /* more than MAX_TMP outputs open at once: this one is not cleaned up by a signal */
}

static void tmp_unregister(const char *path) {
    for (int i = 0; i < MAX_TMP; i++) {
        char *expected = (char *)path;
        if (path && __atomic_compare_exchange_n(&tmp_slots[i], &expected, NULL, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return;
    }
}

static void tmp_remove_all(void) {
    for (int i = 0; i < MAX_TMP; i++) {
        char *p = __atomic_load_n(&tmp_slots[i], __ATOMIC_SEQ_CST);
        if (p) unlink(p);
    }
}

void ldm_map_register(const void *addr, size_t len, const char *path) {
    for (int i = 0; i < MAX_MAPS; i++) {
        if (__atomic_load_n(&map_slots[i].addr, __ATOMIC_SEQ_CST)) continue;
        const void *expected = NULL;
        /* claim with a dummy address, fill, then publish */
        if (!__atomic_compare_exchange_n(&map_slots[i].addr, &expected, (const void *)1, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST))
            continue;
        map_slots[i].len = len;
        snprintf(map_slots[i].path, sizeof map_slots[i].path, "%s", path);
        __atomic_store_n(&map_slots[i].addr, addr, __ATOMIC_SEQ_CST);
        return;
    }
}

void ldm_map_unregister(const void *addr) {
    for (int i = 0; i < MAX_MAPS; i++)
        if (addr && __atomic_load_n(&map_slots[i].addr, __ATOMIC_SEQ_CST) == addr) {
            __atomic_store_n(&map_slots[i].addr, NULL, __ATOMIC_SEQ_CST);
            return;
        }
}

static void say(const char *s) {
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

/* n as decimal into buf (async-signal-safe) */
static const char *u64_text(unsigned long long n, char *buf, size_t size) {
    char *p = buf + size - 1;
    *p = 0;
    do {
        *--p = (char)('0' + n % 10);
        n /= 10;
    } while (n && p > buf);
    return p;
}

static void on_stop_signal(int sig) {
    tmp_remove_all();
    say(progname);
    say(sig == SIGINT ? ": interrupted (SIGINT)" : sig == SIGTERM ? ": terminated (SIGTERM)" : ": hung up (SIGHUP)");
    say(": stopped; no partial output was left\n");
    signal(sig, SIG_DFL);
    raise(sig);
}

static void on_sigbus(int sig, siginfo_t *si, void *ctx) {
    (void)ctx;
    const char *a = si ? (const char *)si->si_addr : NULL;
    for (int i = 0; i < MAX_MAPS; i++) {
        const char *base = __atomic_load_n(&map_slots[i].addr, __ATOMIC_SEQ_CST);
        if (!base || base == (const char *)1 || a < base || a >= base + map_slots[i].len) continue;
        char num[32];
        tmp_remove_all();
        say(progname);
        say(": error: ");
        say(map_slots[i].path);
        say(": reading offset ");
        say(u64_text((unsigned long long)(a - base), num, sizeof num));
        say(" failed: the file was truncated or replaced while this program had it mapped; a checkpoint must "
            "stay unchanged while a program uses it\n");
        _exit(1);
    }
    /* not one of our files: a real bus error */
    signal(sig, SIG_DFL);
    raise(sig);
}

void ldm_install_signal_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    struct sigaction sb;
    memset(&sb, 0, sizeof sb);
    sigemptyset(&sb.sa_mask);
    sb.sa_sigaction = on_sigbus;
    sb.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &sb, NULL);
}

_Noreturn void ldm_fatal(const char *fmt, ...) {
    tmp_remove_all();
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", progname);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    /* _exit: no atexit handlers, which may need what has run out (OpenBLAS
     * joins its threads, one of which may be retrying an allocation) */
    fflush(NULL);
    _exit(1);
}

static void oom(size_t n) {
    ldm_fatal("out of memory: could not allocate %zu bytes (%.1f MiB)", n, (double)n / 1048576.0);
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

/* n bytes aligned to `align`, or a fatal error naming what they were for. */
static void *alloc_for(size_t n, size_t align, const char *what) {
    void *p = NULL;
    if (posix_memalign(&p, align, n ? n : 64) != 0)
        ldm_fatal("out of memory: could not allocate %.1f MiB (%zu bytes) for %s", (double)n / 1048576.0, n, what);
    return p;
}

void *ldm_aligned_alloc_for(size_t n, const char *what) { return alloc_for(n, 64, what); }

void *ldm_arena_alloc(size_t n, const char *what) {
    /* 2 MB aligned, so that its huge pages are whole ones */
    const size_t huge = (size_t)2 << 20;
    void *p = alloc_for(n, n >= huge ? huge : 64, what);
#ifdef MADV_HUGEPAGE
    if (n >= huge) madvise(p, n & ~(huge - 1), MADV_HUGEPAGE);
#endif
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
    if (o->fp) tmp_register(o->tmp_path);
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
        int r = ldm_fail("%s: write error: %s", o->path, strerror(errno ? errno : EIO));
        ldm_out_abort(o);
        return r;
    }
    int rn = rename(o->tmp_path, o->path);
    tmp_unregister(o->tmp_path);
    if (rn != 0) {
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
    tmp_unregister(o->tmp_path);
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
