/*
 * main.c - the one Check runner: every suite of every test file in tests/.
 *
 * Run from the repository root. LDM_SHARED points at the shared folder
 * (default ../shared), LDM_BUILD at the build directory (default build).
 * With an argument, only suites whose name contains it run.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUITE(name) Suite *name(void);
#include "suites.inc"
#undef SUITE

int main(int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : NULL;
    SRunner *sr = NULL;
#define SUITE(name)                                        \
    if (!only || strstr(#name, only)) {                    \
        if (!sr) sr = srunner_create(name());              \
        else srunner_add_suite(sr, name());                \
    }
#include "suites.inc"
#undef SUITE
    if (!sr) {
        fprintf(stderr, "no suite matches '%s'\n", only ? only : "");
        return 1;
    }
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    int run = srunner_ntests_run(sr);
    srunner_free(sr);
    printf("%d passed, %d failed\n", run - failed, failed);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
