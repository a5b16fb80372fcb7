/*
 * test_depgraph.c - the dependency graphs have no cycle (tools/depgraph.sh):
 * runtime/'s include graph and the link graph between its objects (in
 * LDM_BUILD/obj), and compiler/'s include graph; and the tool itself finds
 * cycles in both kinds of graph (a small tree of sources it is run on).
 */
#define _GNU_SOURCE
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testproc.h"

/* The compiler's link graph had cycles (codegen.c -> fuse.c -> pass.c ->
 * codegen.c, and among ast.c, parser.y and lexer.l) until the passes were
 * split one per file, program loading left ast.c and the lexer's helpers
 * left parser.y; it is checked like the runtime's. */
#define DEPGRAPH_CHECK_COMPILER_LINK 1

/* Check's messages are short: on a failure the tool's whole output goes to
 * stderr, the message says what was expected. */
#define EXPECT(cond, out, ...)                                                \
    do {                                                                      \
        if (!(cond)) fprintf(stderr, "---- depgraph output:\n%s----\n", out); \
        ck_assert_msg(cond, __VA_ARGS__);                                     \
    } while (0)

/* Run tools/depgraph.sh with args (from the repository root); returns its
 * exit status, *out its output. */
static int depgraph(const char *args, char **out) {
    char *cmd;
    ck_assert(asprintf(&cmd, "tools/depgraph.sh -b '%s' %s", test_build_dir(), args) > 0);
    char *argv[] = {"sh", "-c", cmd, NULL};
    int rc = test_run(argv, out);
    free(cmd);
    return rc;
}

START_TEST(test_runtime_acyclic) {
    char *out;
    int rc = depgraph("runtime", &out);
    EXPECT(rc == 0, out, "runtime/ has a dependency cycle, or the tool failed (status %d; its output above)", rc);
    /* both graphs were read (the objects exist) */
    EXPECT(strstr(out, " -> util.h\n"), out, "no include edge to util.h");
    EXPECT(strstr(out, " -> util.c\n"), out, "no link edge to util.c");
    EXPECT(strstr(out, "-- runtime/ include graph: no cycle") && strstr(out, "-- runtime/ link graph: no cycle"), out,
           "runtime/: no verdict on both graphs");
    free(out);
}
END_TEST

START_TEST(test_compiler_includes_acyclic) {
    char *out;
    int rc = depgraph("-g include compiler", &out);
    EXPECT(rc == 0, out, "compiler/'s include graph has a cycle (status %d)", rc);
    EXPECT(strstr(out, " -> ldmc.h\n"), out, "no include edge to ldmc.h");
    free(out);
}
END_TEST

#if DEPGRAPH_CHECK_COMPILER_LINK
START_TEST(test_compiler_links_acyclic) {
    char *out;
    int rc = depgraph("-g link compiler", &out);
    EXPECT(rc == 0, out, "compiler/'s link graph has a cycle (status %d)", rc);
    free(out);
}
END_TEST
#endif

/* Write text to <scratch>/<name>. */
static void put(const char *name, const char *text) {
    FILE *f = fopen(test_tmp("%s", name), "w");
    ck_assert_msg(f, "cannot write %s", test_tmp("%s", name));
    fputs(text, f);
    fclose(f);
}

/* A tree src/ under <scratch>/<tree>/ (a.c, b.c, x.h, y.h, their objects in
 * obj/src/), with or without a cycle in each graph; the tool's status on it. */
static int fixture(const char *tree, int cycles, char **out) {
    char *sub;
    ck_assert(asprintf(&sub, "%s/obj/src", tree) > 0);
    char *mk[] = {"mkdir", "-p", (char *)test_tmp("%s", sub), (char *)test_tmp("%s/src", tree), NULL};
    ck_assert_int_eq(test_run(mk, NULL), 0);
    free(sub);
    char p[256];
#define PUT(file, text) (snprintf(p, sizeof p, "%s/src/%s", tree, file), put(p, text))
    PUT("x.h", cycles ? "#pragma once\n#include \"y.h\"\nint a(int);\n" : "#pragma once\n#include \"y.h\"\n");
    PUT("y.h", cycles ? "#pragma once\n#include \"x.h\"\nint b(int);\n" : "#pragma once\nint a(int);\nint b(int);\n");
    PUT("a.c", "#include \"x.h\"\nint a(int n) { return n ? b(n - 1) : 0; }\n");
    PUT("b.c", cycles ? "#include \"x.h\"\nint b(int n) { return n ? a(n - 1) : 1; }\n"
                      : "#include \"y.h\"\nint b(int n) { return n + 1; }\n");
#undef PUT
    char *cmd;
    char *tool = realpath("tools/depgraph.sh", NULL);
    ck_assert_msg(tool, "tools/depgraph.sh not found (run from the repository root)");
    ck_assert(asprintf(&cmd,
                       "cd '%s' && for f in a b; do cc -c src/$f.c -o obj/src/$f.o || exit 9; done && "
                       "exec '%s' -b . src",
                       test_tmp("%s", tree), tool) > 0);
    char *argv[] = {"sh", "-c", cmd, NULL};
    int rc = test_run(argv, out);
    free(cmd);
    free(tool);
    return rc;
}

START_TEST(test_tool_finds_cycles) {
    char *out;
    int rc = fixture("cyc", 1, &out);
    EXPECT(rc == 1, out, "status %d, expected 1 (a cycle)", rc);
    EXPECT(strstr(out, "cycle: x.h -> y.h -> x.h") || strstr(out, "cycle: y.h -> x.h -> y.h"), out, "include cycle not found");
    EXPECT(strstr(out, "cycle: a.c -> b.c -> a.c") || strstr(out, "cycle: b.c -> a.c -> b.c"), out, "link cycle not found");
    EXPECT(strstr(out, "-- src/ include graph: CYCLE") && strstr(out, "-- src/ link graph: CYCLE"), out, "no CYCLE verdicts");
    free(out);
    rc = fixture("ok", 0, &out);
    EXPECT(rc == 0, out, "status %d, expected 0 (no cycle)", rc);
    EXPECT(strstr(out, "\na.c -> b.c\n") && strstr(out, "\nx.h -> y.h\n"), out, "edges a.c -> b.c and x.h -> y.h expected");
    EXPECT(!strstr(out, "cycle:") && !strstr(out, "CYCLE"), out, "a cycle where there is none");
    free(out);
}
END_TEST

static void scratch_setup(void) { test_dir_init("ldm_depgraph_"); }

Suite *suite_depgraph(void) {
    Suite *s = suite_create("depgraph");
    TCase *tc = tcase_create("acyclic");
    tcase_add_unchecked_fixture(tc, scratch_setup, NULL);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_runtime_acyclic);
    tcase_add_test(tc, test_compiler_includes_acyclic);
#if DEPGRAPH_CHECK_COMPILER_LINK
    tcase_add_test(tc, test_compiler_links_acyclic);
#endif
    tcase_add_test(tc, test_tool_finds_cycles);
    suite_add_tcase(s, tc);
    return s;
}
