/*
 * test_graphs.c - data-driven tests of the ldmc command line, in the style
 * of chibicc's and jq's: every tests/graphs/NAME.graph is compiled with
 *
 *     cd tests/graphs && ldmc NAME.graph --dump [the words of NAME.args]
 *
 * and compared exactly with the expected file next to it:
 *   NAME.dump  the program succeeds (exit 0), prints exactly this on stdout
 *              and nothing on stderr;
 *   NAME.err   the program fails (exit 1), prints exactly this on stderr
 *              ("file:line:col: error: ...", the source line, the caret)
 *              and nothing on stdout.
 * Each expected file was written by hand from what the graph means (shapes,
 * checkpoint keys, FLOPs, the memory plan, diagnostic positions), not copied
 * from the compiler's output. Files under tests/graphs/lib/ are only imported.
 *
 * Also the command-line behaviours: bad flags exit 2, a failing compile
 * leaves no output and no temporary file, --dot writes Graphviz.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ldmc.h"
#include "testutil.h"

#define GRAPH_DIR "tests/graphs"

/* ------------------------------------------------------------------------
 * helpers
 * ------------------------------------------------------------------------ */

/* Whole file, NUL-terminated; NULL if it cannot be read. */
static char *slurp(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, fp)) > 0) {
        n += r;
        if (n + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(fp);
    buf[n] = 0;
    return buf;
}

static char *path_join(const char *dir, const char *name) {
    char *s = NULL;
    ck_assert(asprintf(&s, "%s/%s", dir, name) > 0);
    return s;
}

/* Absolute path of the ldmc under test. */
static char *ldmc_path(void) {
    char *rel = path_join(test_build_dir(), "ldmc");
    char *abs = realpath(rel, NULL);
    ck_assert_msg(abs != NULL, "%s not found (build it first; LDM_BUILD names the build directory)", rel);
    free(rel);
    return abs;
}

/* What one run of ldmc did. */
typedef struct Run {
    int status;   /* exit status, or 128 + signal if it was killed */
    char *out;    /* everything it wrote on stdout */
    char *err;    /* everything it wrote on stderr */
} Run;

static void run_free(Run *r) {
    free(r->out);
    free(r->err);
}

/* Run ldmc with args (NULL-terminated, without argv[0]) in directory dir,
 * with LDMC_CC set to cc when cc is not NULL. */
static Run run_ldmc(const char *dir, const char *const *args, const char *cc) {
    char *ldmc = ldmc_path();
    const char *tmpdir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *out_path = path_join(tmpdir, "ldmc-test-out-XXXXXX"), *err_path = path_join(tmpdir, "ldmc-test-err-XXXXXX");
    int out_fd = mkstemp(out_path), err_fd = mkstemp(err_path);
    ck_assert_msg(out_fd >= 0 && err_fd >= 0, "mkstemp in %s: %s", tmpdir, strerror(errno));
    int n = 0;
    while (args[n]) n++;
    const char **argv = calloc((size_t)n + 2, sizeof *argv);
    argv[0] = ldmc;
    for (int i = 0; i < n; i++) argv[i + 1] = args[i];
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        if (chdir(dir) != 0) _exit(126);
        if (cc) setenv("LDMC_CC", cc, 1);
        dup2(out_fd, 1);
        dup2(err_fd, 2);
        execv(ldmc, (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    close(out_fd);
    close(err_fd);
    Run r;
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    r.out = slurp(out_path);
    r.err = slurp(err_path);
    ck_assert(r.out && r.err);
    unlink(out_path);
    unlink(err_path);
    free(out_path);
    free(err_path);
    free(argv);
    free(ldmc);
    return r;
}

/* Fail with the first line where got differs from want. */
static void expect_text(const char *what, const char *want, const char *got) {
    if (strcmp(want, got) == 0) return;
    int line = 1;
    const char *a = want, *b = got;
    while (*a && *a == *b) {
        if (*a == '\n') line++;
        a++, b++;
    }
    while (a > want && a[-1] != '\n') a--, b--;
    int la = (int)strcspn(a, "\n"), lb = (int)strcspn(b, "\n");
    ck_abort_msg("%s differs at line %d:\n  expected: %.*s\n  got:      %.*s\n--- whole output ---\n%s", what, line, la, a,
                 lb, b, got);
}

/* The .graph files of tests/graphs (sorted; lib/ is not scanned). */
static char **cases;
static int n_cases;

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Names (without extension) of the files in GRAPH_DIR ending with ext. */
static int list_dir(const char *ext, char ***out) {
    DIR *d = opendir(GRAPH_DIR);
    int n = 0, cap = 0;
    char **v = NULL;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!ends_with(e->d_name, ext) || strlen(e->d_name) == strlen(ext)) continue;
            if (n == cap) v = realloc(v, (size_t)(cap = cap ? 2 * cap : 64) * sizeof *v);
            v[n++] = strndup(e->d_name, strlen(e->d_name) - strlen(ext));
        }
        closedir(d);
    }
    if (n) qsort(v, (size_t)n, sizeof *v, cmp_str);
    *out = v;
    return n;
}

/* Split the words of an .args file (whitespace-separated, no quoting). */
static int split_words(char *text, const char **words, int max) {
    int n = 0;
    for (char *w = strtok(text, " \t\r\n"); w && n < max; w = strtok(NULL, " \t\r\n")) words[n++] = w;
    return n;
}

/* ------------------------------------------------------------------------
 * data-driven cases
 * ------------------------------------------------------------------------ */

START_TEST(test_graph_case) {
    const char *name = cases[_i];
    char *base = path_join(GRAPH_DIR, name);
    char *dump_path = NULL, *err_path = NULL, *args_path = NULL;
    ck_assert(asprintf(&dump_path, "%s.dump", base) > 0 && asprintf(&err_path, "%s.err", base) > 0 &&
              asprintf(&args_path, "%s.args", base) > 0);
    char *want_dump = slurp(dump_path), *want_err = slurp(err_path), *args_text = slurp(args_path);
    ck_assert_msg((want_dump != NULL) != (want_err != NULL), "%s.graph needs exactly one of %s.dump and %s.err",
                  name, name, name);

    char *graph_file = NULL;
    ck_assert(asprintf(&graph_file, "%s.graph", name) > 0);
    const char *argv[40] = {graph_file, "--dump"};
    int argc = 2;
    if (args_text) argc += split_words(args_text, argv + argc, 36);
    argv[argc] = NULL;

    Run r = run_ldmc(GRAPH_DIR, argv, NULL);
    if (want_dump) {
        ck_assert_msg(r.status == 0, "%s: exit status %d, expected 0; stderr:\n%s", name, r.status, r.err);
        ck_assert_msg(r.err[0] == 0, "%s: unexpected stderr:\n%s", name, r.err);
        expect_text(name, want_dump, r.out);
    } else {
        ck_assert_msg(r.status == 1, "%s: exit status %d, expected 1; stderr:\n%s", name, r.status, r.err);
        ck_assert_msg(r.out[0] == 0, "%s: a failing compile printed on stdout:\n%s", name, r.out);
        expect_text(name, want_err, r.err);
    }
    run_free(&r);
    free(graph_file);
    free(want_dump);
    free(want_err);
    free(args_text);
    free(dump_path);
    free(err_path);
    free(args_path);
    free(base);
}
END_TEST

/* The case set is there, and no expected file is orphaned (a renamed .graph
 * would otherwise silently stop being tested). */
START_TEST(test_graph_cases_complete) {
    ck_assert_msg(n_cases >= 40, "only %d .graph cases found in %s (run from the repository root)", n_cases,
                  GRAPH_DIR);
    int n_dump = 0, n_err = 0;
    static const char *const exts[] = {".dump", ".err", ".args"};
    for (int e = 0; e < 3; e++) {
        char **names;
        int n = list_dir(exts[e], &names);
        for (int i = 0; i < n; i++) {
            ck_assert_msg(bsearch(&names[i], cases, (size_t)n_cases, sizeof *cases, cmp_str) != NULL,
                          "%s/%s%s has no %s.graph", GRAPH_DIR, names[i], exts[e], names[i]);
            free(names[i]);
        }
        free(names);
        if (e == 0) n_dump = n;
        if (e == 1) n_err = n;
    }
    ck_assert_int_eq(n_dump + n_err, n_cases);
    ck_assert_msg(n_dump >= 15 && n_err >= 25, "%d .dump and %d .err cases", n_dump, n_err);
}
END_TEST

/* ------------------------------------------------------------------------
 * command line
 * ------------------------------------------------------------------------ */

static void expect_usage_error(const char *const *args, const char *needle) {
    Run r = run_ldmc(GRAPH_DIR, args, NULL);
    ck_assert_msg(r.status == 2, "exit status %d, expected 2 (stderr: %s)", r.status, r.err);
    ck_assert_msg(strstr(r.err, needle) != NULL, "stderr does not mention '%s':\n%s", needle, r.err);
    ck_assert_msg(r.out[0] == 0, "stdout not empty:\n%s", r.out);
    run_free(&r);
}

START_TEST(test_cli_bad_flags) {
    expect_usage_error((const char *[]){"--frobnicate", "let_assign.graph", "--dump", NULL},
                       "ldmc: error: unknown option '--frobnicate'");
    expect_usage_error((const char *[]){"let_assign.graph", "--dump=everything", NULL},
                       "--dump=everything: no such pass (expected build, graph or one of: dce cse fuse select views plan)");
    expect_usage_error((const char *[]){"let_assign.graph", "--dump", "-D", "H", NULL},
                       "-D expects NAME=VALUE, got 'H'");
    expect_usage_error((const char *[]){"let_assign.graph", "--dump", "-DH=", NULL}, "-D expects NAME=VALUE");
    expect_usage_error((const char *[]){"let_assign.graph", "--dump", "--config", NULL}, "--config: expected a value after it");
    expect_usage_error((const char *[]){"let_assign.graph", "for_loops.graph", "--dump", NULL},
                       "more than one graph file");
    expect_usage_error((const char *[]){"let_assign.graph", NULL}, "nothing to do");
    expect_usage_error((const char *[]){NULL}, "usage: ldmc GRAPH");
}
END_TEST

START_TEST(test_cli_help_version) {
    Run r = run_ldmc(GRAPH_DIR, (const char *[]){"--help", NULL}, NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert_msg(strncmp(r.out, "usage: ldmc GRAPH", 17) == 0, "--help printed:\n%s", r.out);
    run_free(&r);
    r = run_ldmc(GRAPH_DIR, (const char *[]){"--version", NULL}, NULL);
    ck_assert_int_eq(r.status, 0);
    ck_assert_msg(!strncmp(r.out, "ldmc " LDMC_VERSION " (git ", strlen("ldmc " LDMC_VERSION " (git ")), "--version printed:\n%s", r.out);
    run_free(&r);
}
END_TEST

/* Entries of dir other than . and .., sorted, joined by spaces. */
static char *dir_listing(const char *dir) {
    char **v = NULL;
    int n = 0;
    DIR *d = opendir(dir);
    ck_assert(d != NULL);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        v = realloc(v, (size_t)(n + 1) * sizeof *v);
        v[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n) qsort(v, (size_t)n, sizeof *v, cmp_str);
    size_t len = 1;
    for (int i = 0; i < n; i++) len += strlen(v[i]) + 1;
    char *s = calloc(1, len);
    for (int i = 0; i < n; i++) {
        if (i) strcat(s, " ");
        strcat(s, v[i]);
        free(v[i]);
    }
    free(v);
    return s;
}

static char *make_tmpdir(void) {
    const char *tmpdir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *d = path_join(tmpdir, "ldmc-test-dir-XXXXXX");
    ck_assert_msg(mkdtemp(d) != NULL, "mkdtemp: %s", strerror(errno));
    return d;
}

/* Remove the files of a flat temporary directory, then the directory. */
static void remove_tmpdir(char *d) {
    DIR *dd = opendir(d);
    if (dd) {
        struct dirent *e;
        while ((e = readdir(dd))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char *p = path_join(d, e->d_name);
            unlink(p);
            free(p);
        }
        closedir(dd);
    }
    rmdir(d);
    free(d);
}

/* -o OUT.c on a graph that fails: the diagnostic, exit 1, and nothing left
 * behind in the output directory (no OUT.c, no OUT.c.tmp.PID). */
START_TEST(test_cli_failed_compile_leaves_nothing) {
    char *dir = make_tmpdir();
    char *out_c = path_join(dir, "out.c");
    Run r = run_ldmc(GRAPH_DIR, (const char *[]){"err_shape_broadcast.graph", "-o", out_c, NULL}, NULL);
    ck_assert_int_eq(r.status, 1);
    char *want = slurp(GRAPH_DIR "/err_shape_broadcast.err");
    ck_assert(want != NULL);
    expect_text("stderr of the failed -o OUT.c", want, r.err);
    char *ls = dir_listing(dir);
    ck_assert_msg(ls[0] == 0, "left behind in the output directory: %s", ls);
    free(ls);
    free(want);
    run_free(&r);

    /* the same with --dot: no half-written Graphviz file either */
    char *dot = path_join(dir, "g.dot");
    r = run_ldmc(GRAPH_DIR, (const char *[]){"err_syntax_token.graph", "--dot", dot, NULL}, NULL);
    ck_assert_int_eq(r.status, 1);
    ls = dir_listing(dir);
    ck_assert_msg(ls[0] == 0, "left behind after a failed --dot: %s", ls);
    free(ls);
    run_free(&r);
    free(dot);
    free(out_c);
    remove_tmpdir(dir);
}
END_TEST

/* -o OUT.c on a good graph writes exactly OUT.c; -o OUT with a C compiler
 * that fails (LDMC_CC=false) keeps OUT.c, makes no OUT and removes its
 * temporary file. */
START_TEST(test_cli_output_files) {
    char *dir = make_tmpdir();
    char *out_c = path_join(dir, "net.c");
    Run r = run_ldmc(GRAPH_DIR, (const char *[]){"let_assign.graph", "-o", out_c, NULL}, NULL);
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    ck_assert_str_eq(r.out, "");
    run_free(&r);
    char *ls = dir_listing(dir);
    ck_assert_str_eq(ls, "net.c");
    free(ls);
    char *c = slurp(out_c);
    ck_assert(c != NULL && strlen(c) > 100);
    ck_assert_msg(strstr(c, LDMC_VERSION) != NULL && strstr(c, "let_assign") != NULL,
                  "the generated C does not name the compiler version and the graph");
    free(c);
    unlink(out_c);

    char *exe = path_join(dir, "net");
    r = run_ldmc(GRAPH_DIR, (const char *[]){"let_assign.graph", "-o", exe, NULL}, "false");
    ck_assert_int_eq(r.status, 1);
    ck_assert_msg(strstr(r.err, "the C compiler failed") != NULL, "stderr: %s", r.err);
    run_free(&r);
    ls = dir_listing(dir);
    ck_assert_msg(strcmp(ls, "net.c") == 0, "after a failed C compile the directory holds: %s", ls);
    free(ls);
    free(exe);
    free(out_c);
    remove_tmpdir(dir);
}
END_TEST

/* Each kernel's comment names its node, where it came from (the chain of
 * graph-file calls that built it) and what it fused, by node id as built;
 * the banner's source hash changes with a -D value (it covers the config
 * and the definitions, not only the graph sources). */
START_TEST(test_cli_kernel_provenance) {
    char *dir = make_tmpdir();
    char *out_c = path_join(dir, "net.c");
    Run r = run_ldmc(GRAPH_DIR, (const char *[]){"import_lib.graph", "-o", out_c, NULL}, NULL);
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    run_free(&r);
    char *c = slurp(out_c);
    ck_assert(c != NULL);
    /* Dense() at import_lib.graph:7 calls linear at layers.graph:6, and act() at act.graph:2 */
    ck_assert_msg(strstr(c, " * %3 linear  (scope fc)\n *   from  import_lib.graph:7 Dense > layers.graph:6\n") != NULL,
                  "no provenance of the linear kernel in:\n%s", c);
    ck_assert_msg(strstr(c, " * %4 silu  (scope fc)\n *   from  import_lib.graph:7 Dense > layers.graph:6 act > act.graph:2\n"),
                  "no provenance of the silu kernel in:\n%s", c);
    free(c);
    r = run_ldmc(GRAPH_DIR, (const char *[]){"fuse_ids.graph", "-o", out_c, NULL}, NULL);
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    run_free(&r);
    c = slurp(out_c);
    ck_assert_msg(strstr(c, " * %4 conv2d+residual\n *   from  fuse_ids.graph:8\n *   fuses add %5 @fuse_ids.graph:9\n"),
                  "no fused-kernel comment naming the add by its build id in:\n%s", c);
    char hash1[64] = "", hash2[64] = "";
    ck_assert(sscanf(strstr(c, "| source ") + 9, "%16s", hash1) == 1);
    free(c);
    r = run_ldmc(GRAPH_DIR, (const char *[]){"param_override.graph", "-D", "H=16", "-D", "B=2", "-o", out_c, NULL}, NULL);
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    run_free(&r);
    c = slurp(out_c);
    ck_assert(sscanf(strstr(c, "| source ") + 9, "%16s", hash1) == 1);
    free(c);
    r = run_ldmc(GRAPH_DIR, (const char *[]){"param_override.graph", "-D", "H=16", "-D", "B=3", "-o", out_c, NULL}, NULL);
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    run_free(&r);
    c = slurp(out_c);
    ck_assert(sscanf(strstr(c, "| source ") + 9, "%16s", hash2) == 1);
    ck_assert_msg(strcmp(hash1, hash2) != 0, "the source hash %s does not change with -D B", hash1);
    free(c);
    unlink(out_c);
    free(out_c);
    remove_tmpdir(dir);
}
END_TEST

/* A graph with run-time extents states its FLOPs at any values of them
 * (LdmModel.flops_at, what the runner's GFLOP/s uses): flops_at.graph's
 * counts, worked out by hand in its comment, as terms in the extents'
 * ratios to their maxima. */
START_TEST(test_cli_flops_at) {
    char *dir = make_tmpdir();
    char *out_c = path_join(dir, "f.c");
    Run r = run_ldmc(GRAPH_DIR, (const char *[]){"flops_at.graph", "-o", out_c, NULL}, NULL);
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    run_free(&r);
    char *c = slurp(out_c);
    ck_assert(c != NULL);
    ck_assert_msg(strstr(c, "    if (!ext) return 816;\n") && strstr(c, "= (double)ext[0] / 2.0; /* B */") &&
                      strstr(c, "= (double)ext[1] / 6.0; /* T */") &&
                      strstr(c, "    const double f = 240 * r0\n                   + 576 * r0 * r1;\n") &&
                      strstr(c, ".flops_at = flops_at_flops_at,"),
                  "flops_at not as worked out by hand in:\n%s", c);
    free(c);
    unlink(out_c);
    free(out_c);
    remove_tmpdir(dir);
}
END_TEST

/* --dot FILE writes a Graphviz digraph: one box per non-weight node, an edge
 * per tensor operand, one per output. */
START_TEST(test_cli_dot) {
    char *dir = make_tmpdir();
    char *dot = path_join(dir, "g.dot");
    Run r = run_ldmc(GRAPH_DIR, (const char *[]){"views_deadcode.graph", "--dot", dot, NULL}, NULL);
    ck_assert_msg(r.status == 0, "status %d: %s", r.status, r.err);
    ck_assert_str_eq(r.out, "");
    ck_assert_str_eq(r.err, "");
    run_free(&r);
    char *g = slurp(dot);
    ck_assert(g != NULL);
    ck_assert_msg(strncmp(g, "digraph", 7) == 0, "--dot file starts with: %.40s", g);
    ck_assert_msg(ends_with(g, "}\n"), "--dot file does not end with }");
    /* views_deadcode after the passes, ids as built: %5 = x * 3, %6/%7/%8
     * reshapes, %9 permute (the dead %2..%4 are gone) */
    static const char *const edges[] = {"n0 -> n5;", "n5 -> n6;", "n6 -> n7;", "n5 -> n8;", "n8 -> n9;",
                                        "n7 -> out0;", "n9 -> out1;"};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        ck_assert_msg(strstr(g, edges[i]) != NULL, "edge '%s' missing from:\n%s", edges[i], g);
    ck_assert_msg(strstr(g, "output flat") && strstr(g, "output perm") && strstr(g, "input unused"),
                  "outputs/inputs missing from:\n%s", g);
    /* the dead silu, its bias weight and the add are gone: no n2, n3, n4, and nothing past n9 */
    ck_assert_msg(strstr(g, "n9 [") != NULL && !strstr(g, "n2 [") && !strstr(g, "n3 [") && !strstr(g, "n4 [") &&
                      !strstr(g, "n10"),
                  "wrong node set:\n%s", g);
    free(g);

    /* an unwritable destination is an error (exit 1), not a crash */
    char *bad = path_join(dir, "no/such/dir/g.dot");
    r = run_ldmc(GRAPH_DIR, (const char *[]){"views_deadcode.graph", "--dot", bad, NULL}, NULL);
    ck_assert_int_eq(r.status, 1);
    ck_assert_msg(strstr(r.err, "cannot create") != NULL, "stderr: %s", r.err);
    run_free(&r);
    free(bad);
    free(dot);
    remove_tmpdir(dir);
}
END_TEST

Suite *suite_graphs(void) {
    n_cases = list_dir(".graph", &cases);
    Suite *s = suite_create("graphs");
    TCase *tc = tcase_create("cases");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_graph_cases_complete);
    if (n_cases) tcase_add_loop_test(tc, test_graph_case, 0, n_cases);
    suite_add_tcase(s, tc);
    TCase *cli = tcase_create("cli");
    tcase_set_timeout(cli, 60);
    tcase_add_test(cli, test_cli_bad_flags);
    tcase_add_test(cli, test_cli_help_version);
    tcase_add_test(cli, test_cli_failed_compile_leaves_nothing);
    tcase_add_test(cli, test_cli_output_files);
    tcase_add_test(cli, test_cli_dot);
    tcase_add_test(cli, test_cli_kernel_provenance);
    tcase_add_test(cli, test_cli_flops_at);
    suite_add_tcase(s, cli);
    return s;
}
