/*
 * testproc.h - helpers for the tests that run programs (ldmc, graph
 * runners, the txt2img and sample executables): a scratch directory
 * removed at exit, paths in it and in the shared folder, and running a
 * program with its output captured.
 */
#ifndef LDM_TESTPROC_H
#define LDM_TESTPROC_H


#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "util.h"

static char test_dir[64];      /* "/tmp/<prefix>XXXXXX", "" until made */
static pid_t test_dir_owner;   /* the process that made it (Check forks tests) */

static inline int test_rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static inline void test_dir_cleanup(void) {
    if (test_dir[0] && getpid() == test_dir_owner) nftw(test_dir, test_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Make the scratch directory once ("/tmp/<prefix>XXXXXX"). */
static inline void test_dir_init(const char *prefix) {
    if (test_dir[0]) return;
    snprintf(test_dir, sizeof test_dir, "/tmp/%sXXXXXX", prefix);
    if (!mkdtemp(test_dir)) {
        test_dir[0] = 0;
        return;
    }
    test_dir_owner = getpid();
    atexit(test_dir_cleanup);
}

/* "<scratch>/<fmt...>" in a static ring of buffers (valid for a few calls). */
static inline const char *test_tmp(const char *fmt, ...) LDM_PRINTF(1, 2);
static inline const char *test_tmp(const char *fmt, ...) {
    static char ring[16][512];
    static int k;
    char *b = ring[k++ % 16];
    ck_assert_msg(test_dir[0], "no scratch directory");
    int n = snprintf(b, 512, "%s/", test_dir);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b + n, (size_t)(512 - n), fmt, ap);
    va_end(ap);
    return b;
}

/* "<shared>/<rel>" (static ring as above). */
static inline const char *test_shared(const char *rel) {
    static char ring[16][512];
    static int k;
    char *b = ring[k++ % 16];
    snprintf(b, 512, "%s/%s", test_shared_dir(), rel);
    return b;
}

static inline int test_exists(const char *p) { return access(p, F_OK) == 0; }

/* Start argv (a path or a name on PATH) with stdout + stderr going to log
 * (NULL: discarded). In the child the make variables of a surrounding
 * `make test` are dropped so an inner make is not confused by them, and
 * OpenMP threads sleep instead of spinning at barriers: on a busy machine
 * spinning makes these small runs many times slower (results do not
 * depend on it). */
static inline pid_t test_spawn(char *const argv[], const char *log) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        unsetenv("MAKEFLAGS");
        unsetenv("MFLAGS");
        unsetenv("MAKELEVEL");
        setenv("OMP_WAIT_POLICY", "passive", 0);
        execvp(argv[0], argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

/* Exit status of pid, or 128 + signal number when it was killed. */
static inline int test_wait_status(pid_t pid) {
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* Run argv to completion with its output in a log under dir; *out (if not
 * NULL) gets stdout + stderr (malloc'd). Returns the exit status. */
static inline int test_run_in(const char *dir, char *const argv[], char **out) {
    char log[512];
    snprintf(log, sizeof log, "%s/run.%ld.log", dir, (long)getpid());
    pid_t pid = test_spawn(argv, log);
    ck_assert_msg(pid > 0, "fork failed: %s", strerror(errno));
    int rc = test_wait_status(pid);
    size_t n;
    char *text = ldm_read_file(log, &n);
    remove(log);
    if (!text) text = ldm_xstrdup("");
    if (out) *out = text;
    else free(text);
    return rc;
}

/* test_run_in the scratch directory. */
static inline int test_run(char *const argv[], char **out) { return test_run_in(test_dir, argv, out); }

/* A graph runner (ldmc's executables) on one input file:
 *     prog --weights W --inputs IN --outputs OUT [--prefix P] [extra...]
 * --prefix only when P is neither NULL nor empty; extra is NULL-terminated
 * (or NULL). test_run's status, the runner's messages in *out. */
static inline int test_run_runner(const char *prog, const char *weights, const char *inputs, const char *outputs,
                                  const char *prefix, const char *const *extra, char **out) {
    const char *argv[40];
    int k = 0;
    argv[k++] = prog;
    argv[k++] = "--weights";
    argv[k++] = weights;
    argv[k++] = "--inputs";
    argv[k++] = inputs;
    argv[k++] = "--outputs";
    argv[k++] = outputs;
    if (prefix && *prefix) {
        argv[k++] = "--prefix";
        argv[k++] = prefix;
    }
    for (int i = 0; extra && extra[i]; i++) {
        ck_assert_msg(k < 39, "test_run_runner: too many arguments");
        argv[k++] = extra[i];
    }
    argv[k] = NULL;
    return test_run((char *const *)argv, out);
}

#endif
