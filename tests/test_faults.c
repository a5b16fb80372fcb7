/*
 * test_faults.c - fault injection (issue 17): what the programs do when the
 * environment fails under them. In every case: a clear message, a non-zero
 * exit (or, for SIGINT/SIGTERM, death by that signal after the message, as
 * Unix programs do), and no partial or corrupt output file; a previous file
 * of the same name stays as it was.
 *
 *   - the disk full: RLIMIT_FSIZE (ulimit -f) with SIGXFSZ ignored makes
 *     every write past the limit fail with EFBIG, as a full disk does with
 *     ENOSPC, without needing root for a small tmpfs;
 *   - the output place not writable (under /proc, or below a regular file)
 *     and the output directory removed during a --prompts run;
 *   - SIGTERM during sampling (the executable) and during a PNG write (the
 *     same handler around an LdmOutFile, in a child process);
 *   - the checkpoint truncated while mapped: SIGBUS on a mapped page
 *     becomes a message naming the file (st_open's mapping, in a child);
 *   - memory exhausted: RLIMIT_AS (ulimit -v) from below the checkpoint's
 *     size to above the run's need: each run either succeeds or says what
 *     could not be allocated and how much; never a crash or a hang.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "safetensors.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define FT_SAN 1
#else
#define FT_SAN 0
#endif

#define WEIGHTS "goldens/sd1-tiny/model.safetensors"

static char g_exe[700];
static char *g_build_log;

static void setup_exe(void) {
    test_dir_init("ldm_faults_");
    if (!test_dir[0] || g_exe[0] || g_build_log) return;
    test_build_sd1_tiny_txt2img(FT_SAN, g_exe, sizeof g_exe, &g_build_log);
}

static void teardown_nothing(void) {}

static const char *exe(void) {
    ck_assert_msg(g_exe[0], "make txt2img (sd1-tiny) failed:\n%s", g_build_log ? g_build_log : "(not run)");
    return g_exe;
}

/* Start argv with output to log, after setting in the child: a file size
 * limit (bytes, 0: none) with SIGXFSZ ignored, an address-space limit
 * (bytes, 0: none). */
static pid_t spawn_limited(char *const argv[], const char *log, long fsize, long as) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        unsetenv("MAKEFLAGS");
        unsetenv("MFLAGS");
        unsetenv("MAKELEVEL");
        setenv("OMP_WAIT_POLICY", "passive", 0);
        setenv("LDM_HASH_CACHE", "off", 1);
        if (fsize > 0) {
            signal(SIGXFSZ, SIG_IGN);
            struct rlimit r = {(rlim_t)fsize, (rlim_t)fsize};
            setrlimit(RLIMIT_FSIZE, &r);
        }
        if (as > 0) {
            struct rlimit r = {(rlim_t)as, (rlim_t)as};
            setrlimit(RLIMIT_AS, &r);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* Wait for pid at most `seconds`; kill it (and fail) when it takes longer. */
static int wait_bounded(pid_t pid, int seconds, const char *what) {
    for (int i = 0; i < seconds * 50; i++) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    ck_abort_msg("%s: still running after %d s (a hang)", what, seconds);
    return -1;
}

static char *slurp(const char *path) {
    size_t n;
    char *t = ldm_read_file(path, &n);
    return t ? t : ldm_xstrdup("");
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* No "<name>.tmp.*" next to path: no temporary file left behind. */
static void assert_no_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        ck_assert_msg(!strstr(e->d_name, ".tmp."), "temporary file '%s' left in %s", e->d_name, dir);
    closedir(d);
}

/* ------------------------------------------------------------------------ */

START_TEST(test_disk_full) {
    const char *out = test_tmp("full/out.png");
    mkdir(test_tmp("full"), 0755);
    write_text(out, "the previous file");
    char *argv[] = {(char *)exe(), "--weights", (char *)test_shared(WEIGHTS), "--prompt", "a fox", "--steps", "2",
                    "--quiet", "-o", (char *)out, NULL};
    const char *log = test_tmp("full.log");
    int rc = wait_bounded(spawn_limited(argv, log, 4096, 0), 600, "disk full");
    char *text = slurp(log);
    ck_assert_msg(rc != 0 && rc < 128, "expected a clean failure, got status %d:\n%s", rc, text);
    ck_assert_msg(strstr(text, "out.png") && strstr(text, "write error"), "message should name the file and the "
                  "write error:\n%s", text);
    char *prev = slurp(out);
    ck_assert_str_eq(prev, "the previous file");
    free(prev);
    free(text);
    assert_no_tmp(test_tmp("full"));
}
END_TEST

START_TEST(test_not_writable) {
    /* a place nobody may create files in (root included), and a "directory"
     * that is a regular file */
    write_text(test_tmp("plainfile"), "x");
    const char *outs[2] = {"/proc/ldm-no-such-dir/out.png", test_tmp("plainfile/out.png")};
    for (int k = 0; k < 2; k++) {
        char *argv[] = {(char *)exe(), "--weights", (char *)test_shared(WEIGHTS), "--prompt", "a fox", "--steps", "1",
                        "--quiet", "-o", (char *)outs[k], NULL};
        char *text;
        int rc = test_run(argv, &text);
        ck_assert_msg(rc != 0 && rc < 128, "%s: expected a clean failure, got status %d:\n%s", outs[k], rc, text);
        /* the missing directory is found before anything runs */
        char dir[600];
        snprintf(dir, sizeof dir, "%s", outs[k]);
        *strrchr(dir, '/') = 0;
        ck_assert_msg(strstr(text, dir) && (strstr(text, "cannot create") || strstr(text, "does not exist") ||
                                            strstr(text, "not a directory")),
                      "message should name %s:\n%s", dir, text);
        free(text);
    }
}
END_TEST

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

START_TEST(test_dir_removed) {
    /* 6 lines; the directory is removed once the first image is there */
    const char *prompts = test_tmp("six.txt");
    write_text(prompts, "a fox\na cat\na dog\na cow\na hen\na pig\n");
    const char *dir = test_tmp("gone");
    char *argv[] = {(char *)exe(), "--weights", (char *)test_shared(WEIGHTS), "--prompts", (char *)prompts, "--steps",
                    "40", "-o", (char *)dir, NULL};
    const char *log = test_tmp("gone.log");
    pid_t pid = spawn_limited(argv, log, 0, 0);
    int seen = 0;
    for (int i = 0; i < 30000 && !seen; i++) {
        DIR *d = opendir(dir);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL)
            if (!strncmp(e->d_name, "00001-", 6) && strstr(e->d_name, ".png") && !strstr(e->d_name, ".tmp.")) seen = 1;
        if (d) closedir(d);
        if (waitpid(pid, NULL, WNOHANG) == pid) ck_abort_msg("the run ended before its first image:\n%s", slurp(log));
        if (!seen) usleep(10000);
    }
    ck_assert_msg(seen, "no first image");
    ck_assert_int_eq(nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    int rc = wait_bounded(pid, 900, "directory removed");
    char *text = slurp(log);
    ck_assert_msg(rc != 0 && rc < 128, "expected a clean failure, got status %d:\n%s", rc, text);
    ck_assert_msg(strstr(text, "cannot create") && strstr(text, "prompts failed"),
                  "expected the lines after the removal to fail by name:\n%s", text);
    free(text);
    ck_assert_msg(!test_exists(dir), "the removed directory came back");
}
END_TEST

START_TEST(test_sigterm_sampling) {
    const char *out = test_tmp("term.png");
    write_text(out, "the previous file");
    char *argv[] = {(char *)exe(), "--weights", (char *)test_shared(WEIGHTS), "--prompt", "a fox", "--steps", "500",
                    "-o", (char *)out, NULL};
    const char *log = test_tmp("term.log");
    pid_t pid = spawn_limited(argv, log, 0, 0);
    /* wait for the first step line */
    int stepping = 0;
    for (int i = 0; i < 30000 && !stepping; i++) {
        char *t = slurp(log);
        stepping = strstr(t, "step") != NULL;
        free(t);
        if (waitpid(pid, NULL, WNOHANG) == pid) ck_abort_msg("the run ended early:\n%s", slurp(log));
        if (!stepping) usleep(10000);
    }
    ck_assert_msg(stepping, "no sampling step seen");
    kill(pid, SIGTERM);
    int rc = wait_bounded(pid, 120, "SIGTERM");
    char *text = slurp(log);
    ck_assert_msg(rc == 128 + SIGTERM, "expected death by SIGTERM after the message, got status %d:\n%s", rc, text);
    ck_assert_msg(strstr(text, "terminated (SIGTERM)"), "no message:\n%s", text);
    free(text);
    char *prev = slurp(out);
    ck_assert_str_eq(prev, "the previous file");
    free(prev);
    assert_no_tmp(test_dir);
}
END_TEST

/* fork(); in the child, stderr to log and the programs' signal handlers
 * installed under the name "faulttest" (returns 0 there, as fork does). */
static pid_t fork_with_handlers(const char *log) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        ldm_set_progname("faulttest");
        ldm_install_signal_handlers();
    }
    return pid;
}

START_TEST(test_sigterm_png_write) {
    /* the handler the programs install, around an output half written */
    const char *out = test_tmp("half.png");
    write_text(out, "the previous file");
    const char *log = test_tmp("half.log");
    pid_t pid = fork_with_handlers(log);
    if (pid == 0) {
        LdmOutFile o;
        if (ldm_out_open(&o, out) != 0) _exit(3);
        fputs("\x89PNG half of it", o.fp);
        fflush(o.fp);
        raise(SIGTERM);
        _exit(4); /* not reached */
    }
    int rc = wait_bounded(pid, 60, "child");
    char *text = slurp(log);
    ck_assert_msg(rc == 128 + SIGTERM, "status %d:\n%s", rc, text);
    ck_assert_msg(strstr(text, "faulttest: terminated (SIGTERM)"), "no message:\n%s", text);
    free(text);
    char *prev = slurp(out);
    ck_assert_str_eq(prev, "the previous file");
    free(prev);
    assert_no_tmp(test_dir);
}
END_TEST

START_TEST(test_sigbus_truncated) {
    /* a copy of the checkpoint, mapped by st_open, truncated, then read */
    const char *ck = test_tmp("trunc.safetensors");
    size_t n;
    char *data = ldm_read_file(test_shared(WEIGHTS), &n);
    ck_assert_ptr_nonnull(data);
    FILE *f = fopen(ck, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
    free(data);
    const char *log = test_tmp("trunc.log");
    pid_t pid = fork_with_handlers(log);
    if (pid == 0) {
        StFile sf;
        if (st_open(&sf, ck) != 0) _exit(3);
        if (truncate(ck, 0) != 0) _exit(4);
        /* the last tensor's bytes are on pages past the new end */
        const StTensor *t = &sf.tensors[sf.n_tensors - 1];
        volatile unsigned char sum = 0;
        for (size_t i = 0; i < t->nbytes; i++) sum += ((const unsigned char *)t->data)[i];
        _exit(5); /* not reached: the read faults */
    }
    int rc = wait_bounded(pid, 60, "child");
    char *text = slurp(log);
    ck_assert_msg(rc == 1, "expected exit status 1 after SIGBUS, got %d:\n%s", rc, text);
    ck_assert_msg(strstr(text, "faulttest: error: ") && strstr(text, ck) && strstr(text, "truncated or replaced"),
                  "message should name the file:\n%s", text);
    free(text);
}
END_TEST

START_TEST(test_memory_exhausted) {
    if (FT_SAN) return; /* AddressSanitizer reserves terabytes of address space: no RLIMIT_AS under it */
    /* from below the checkpoint's 65 MiB to above the run's need */
    static const long mib[] = {40, 50, 100, 120, 150, 180, 400};
    int said = 0, ok = 0;
    for (size_t k = 0; k < sizeof mib / sizeof mib[0]; k++) {
        const char *out = test_tmp("oom-%ld.png", mib[k]);
        char *argv[] = {(char *)exe(), "--weights", (char *)test_shared(WEIGHTS), "--prompt", "a fox", "--steps",
                        "1", "--quiet", "-o", (char *)out, NULL};
        const char *log = test_tmp("oom-%ld.log", mib[k]);
        int rc = wait_bounded(spawn_limited(argv, log, 0, mib[k] << 20), 600, "ulimit -v");
        char *text = slurp(log);
        if (rc == 0) {
            ok++;
            ck_assert(test_exists(out));
        } else {
            ck_assert_msg(rc == 1, "ulimit -v %ld MiB: expected exit status 1, got %d:\n%s", mib[k], rc, text);
            ck_assert_msg(strstr(text, "error: out of memory: could not") && strstr(text, "MiB"),
                          "ulimit -v %ld MiB: expected what could not be allocated and how much:\n%s", mib[k], text);
            ck_assert_msg(!test_exists(out), "ulimit -v %ld MiB: a failed run left %s", mib[k], out);
            said++;
        }
        free(text);
    }
    ck_assert_msg(said > 0, "no limit made the run fail: the sweep tests nothing");
    ck_assert_msg(ok > 0, "no limit let the run succeed");
    assert_no_tmp(test_dir);
}
END_TEST

Suite *suite_faults(void) {
    Suite *s = suite_create("faults");
    TCase *tc = tcase_create("inprocess");
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_add_test(tc, test_sigterm_png_write);
    tcase_add_test(tc, test_sigbus_truncated);
    suite_add_tcase(s, tc);
    tc = tcase_create("txt2img");
    tcase_set_timeout(tc, 1800);
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_add_test(tc, test_disk_full);
    tcase_add_test(tc, test_not_writable);
    tcase_add_test(tc, test_dir_removed);
    tcase_add_test(tc, test_sigterm_sampling);
    tcase_add_test(tc, test_memory_exhausted);
    suite_add_tcase(s, tc);
    return s;
}
