/*
 * util.h - error reporting, allocation, files and timers shared by the
 * runtime, the compiler and every generated program.
 *
 * Error convention: library functions never print and never exit. They
 * record a message with ldm_fail() (which returns -1) and return it; only a
 * main() prints ldm_last_error() and exits.
 */
#ifndef LDM_UTIL_H
#define LDM_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define LDM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LDM_PRINTF(a, b)
#endif

/* Record an error message (printf-style). Always returns -1. */
int ldm_fail(const char *fmt, ...) LDM_PRINTF(1, 2);
/* The message recorded by the last ldm_fail() on this thread ("" if none). */
const char *ldm_last_error(void);

/* A broken invariant of the program itself (never bad input): prints
 * "internal error: ..." and aborts. */
_Noreturn void ldm_internal_error(const char *fmt, ...) LDM_PRINTF(1, 2);

/* Allocation that exits with a message when memory is exhausted
 * ("error: out of memory: could not allocate N bytes"), removing the
 * temporary output files first: running out of memory is not an input
 * error a caller can recover from. */
void *ldm_xmalloc(size_t n);
void *ldm_xcalloc(size_t n, size_t size);
void *ldm_xrealloc(void *p, size_t n);
char *ldm_xstrdup(const char *s);
char *ldm_xasprintf(const char *fmt, ...) LDM_PRINTF(1, 2);
/* 64-byte aligned allocation (free with free()). */
void *ldm_aligned_alloc(size_t n);
/* The same for a large block the message names when it cannot be had:
 * "could not allocate 1234.5 MiB for <what>". */
void *ldm_aligned_alloc_for(size_t n, const char *what);
/* An activation arena of n bytes (free with free()): as ldm_aligned_alloc_for,
 * 2 MB aligned and in transparent huge pages where the system gives them
 * (madvise mode): a kernel reading NCHW tensors touches every channel's
 * plane, megabytes apart, and with 4 KB pages each is a TLB miss. */
void *ldm_arena_alloc(size_t n, const char *what);

/* A fatal condition of the environment (memory exhausted, an input file
 * changed under a mapping): removes the temporary output files, prints
 * "<program>: error: <message>" and exits with status 1. */
_Noreturn void ldm_fatal(const char *fmt, ...) LDM_PRINTF(1, 2);
/* The program name of those messages (default "ldm"). */
void ldm_set_progname(const char *name);

/* Signal handling of every program (call once from main):
 *   SIGINT, SIGTERM, SIGHUP: the temporary files of the outputs being
 *     written (LdmOutFile) are removed, "<program>: interrupted by SIGTERM"
 *     printed, and the signal raised again with its default action (so the
 *     parent sees it); an output never stays half-written and a previous
 *     file of the same name stays as it was;
 *   SIGBUS on a page of a mapped input file (ldm_map_register): the file
 *     was truncated or replaced while in use: a message naming it and the
 *     offset, temporary files removed, exit status 1. */
void ldm_install_signal_handlers(void);
/* A read-only file mapping the SIGBUS handler names (at most 32 at once). */
void ldm_map_register(const void *addr, size_t len, const char *path);
void ldm_map_unregister(const void *addr);

/* Whole-file read into a NUL-terminated buffer; returns NULL and records an
 * error naming the path on failure. */
char *ldm_read_file(const char *path, size_t *len);
/* "dir/name.safetensors" -> "name" (malloc'd): the file name without its
 * directory and its last extension (a leading dot is not an extension). */
char *ldm_path_stem(const char *path);

/* Atomic output: write to "<path>.tmp.<pid>", then rename over <path> on
 * success, so a failed run never leaves a half-written file behind. */
typedef struct LdmOutFile {
    FILE *fp;        /* stream to write to */
    char *path;      /* final name */
    char *tmp_path;  /* temporary name the data goes to first */
} LdmOutFile;
int ldm_out_open(LdmOutFile *o, const char *path);
/* Flush, fsync-free close and rename; on any failure removes the temp file. */
int ldm_out_commit(LdmOutFile *o);
/* Remove the temp file without touching <path>. */
void ldm_out_abort(LdmOutFile *o);

/* Wall clock in seconds (monotonic). */
double ldm_now(void);
/* Peak resident set size of this process in bytes (0 if unknown). */
size_t ldm_peak_rss(void);

#endif
