/*
 * test_fuzz_regress.c - the fuzz harnesses' inputs replayed by the normal
 * suite: every file of tests/fuzz/regress/SURFACE/ (inputs that crashed,
 * leaked or hung a harness once, the bug since fixed) and of
 * tests/fuzz/corpus/SURFACE/ (the seeds) through fuzz_SURFACE, the entry of
 * tests/fuzz/fuzz_SURFACE.c built without libFuzzer (so under `make test
 * SAN=1` with ASan and UBSan too). A harness aborts on a broken invariant;
 * each input runs in a child process, and a child that dies or exits
 * non-zero (a sanitizer report) fails the test naming the file.
 */
#include <check.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

int fuzz_dsl(const uint8_t *data, size_t size);
int fuzz_config(const uint8_t *data, size_t size);
int fuzz_safetensors(const uint8_t *data, size_t size);
int fuzz_png(const uint8_t *data, size_t size);
int fuzz_prompt(const uint8_t *data, size_t size);
int fuzz_promptfile(const uint8_t *data, size_t size);
int fuzz_http(const uint8_t *data, size_t size);
int fuzz_ckpt(const uint8_t *data, size_t size);

static const struct {
    const char *name;
    int (*fn)(const uint8_t *, size_t);
} surfaces[] = {
    {"dsl", fuzz_dsl}, {"config", fuzz_config}, {"safetensors", fuzz_safetensors},
    {"png", fuzz_png}, {"prompt", fuzz_prompt}, {"promptfile", fuzz_promptfile}, {"ckpt", fuzz_ckpt},
    {"http", fuzz_http},
};
#define N_SURFACES ((int)(sizeof surfaces / sizeof surfaces[0]))

/* Run fn on every file of dir (none when dir does not exist), each in a
 * child process so that a crash names its file; the count. */
static int replay_dir(const char *dir, int (*fn)(const uint8_t *, size_t)) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *path = ldm_xasprintf("%s/%s", dir, e->d_name);
        size_t len = 0;
        char *bytes = ldm_read_file(path, &len);
        ck_assert_msg(bytes, "%s: %s", path, ldm_last_error());
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            fn((const uint8_t *)bytes, len);
            exit(0); /* exit, not _exit: LeakSanitizer checks at exit under SAN=1 */
        }
        int status = 0;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: the harness %s %d", path,
                      sig ? "died of signal" : "exited with", sig ? sig : WEXITSTATUS(status));
        free(bytes);
        free(path);
        n++;
    }
    closedir(d);
    return n;
}

START_TEST(test_replay) {
    char *regress = ldm_xasprintf("tests/fuzz/regress/%s", surfaces[_i].name);
    char *corpus = ldm_xasprintf("tests/fuzz/corpus/%s", surfaces[_i].name);
    replay_dir(regress, surfaces[_i].fn);
    int n = replay_dir(corpus, surfaces[_i].fn);
    ck_assert_msg(n > 0, "%s: no seed inputs", corpus);
    free(regress);
    free(corpus);
}
END_TEST

Suite *suite_fuzz_regress(void) {
    Suite *su = suite_create("fuzz_regress");
    TCase *tc = tcase_create("fuzz_regress");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_replay, 0, N_SURFACES);
    suite_add_tcase(su, tc);
    return su;
}
