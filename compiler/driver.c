/*
 * driver.c - the compile pipeline: parse, build, the passes in the order
 * of the pass table below (the driver, not a pass, decides the order),
 * dumps, codegen, and (for a runner) the C compiler.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "driver.h"

#ifndef LDMC_CC
#define LDMC_CC "cc"
#endif
#ifndef LDMC_CFLAGS
#define LDMC_CFLAGS "-O2"
#endif
#ifndef LDMC_LIBS
#define LDMC_LIBS "-lopenblas -lm"
#endif

/* ---- the passes, in order ------------------------------------------------- */

/* a + b, INT64_MAX when it overflows (a fuzzed graph's counts) */
static int64_t ldm_sat_add64(int64_t a, int64_t b) {
    int64_t r;
    return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

static int run_dce(Graph *g) {
    pass_dead_code(g);
    g->nominal_flops = graph_flops(g); /* the graph as written, before any rewrite */
    return 0;
}
static int run_cse(Graph *g) { pass_cse(g); return 0; }
static int run_fuse(Graph *g) { pass_fuse(g); return 0; }
static int run_select(Graph *g) { pass_select_kernels(g); return 0; }
static int run_views(Graph *g) { pass_views(g); return 0; }
static int run_plan(Graph *g) { return pass_plan_memory(g); }

static void dump_graph_pass(const Graph *g, const char *name, FILE *fp) { dump_graph_after(g, name, fp); }
static void dump_plan_pass(const Graph *g, const char *name, FILE *fp) {
    (void)name;
    dump_plan(g, fp);
}

const PassInfo ldmc_passes[] = {
    {"dce", run_dce, dump_graph_pass, "drop what no output reads"},
    {"cse", run_cse, dump_graph_pass, "merge nodes computing the same thing"},
    {"fuse", run_fuse, dump_graph_pass, "fold norms, activations and epilogues into their producers"},
    {"select", run_select, dump_graph_pass, "choose each convolution's algorithm and each weight's layout"},
    {"views", run_views, dump_graph_pass, "reshapes as views; convolutions writing into concatenations"},
    {"plan", run_plan, dump_plan_pass, "the memory plan (its dump is the plan table)"},
};
const int ldmc_n_passes = (int)(sizeof ldmc_passes / sizeof ldmc_passes[0]);

int ldmc_pass_index(const char *name) {
    for (int i = 0; i < ldmc_n_passes; i++)
        if (!strcmp(ldmc_passes[i].name, name)) return i;
    return -1;
}

int ldmc_run_passes(Graph *g, unsigned dump_after, FILE *fp) {
    for (int i = 0; i < ldmc_n_passes; i++) {
        if (ldmc_passes[i].run(g) != 0) return -1;
        if (dump_after & (1u << i)) ldmc_passes[i].dump(g, ldmc_passes[i].name, fp);
    }
    return 0;
}

/* ---- the source hash of the banner ------------------------------------------- */

/* FNV-1a over everything the generated file depends on: every source
 * file of the program, the config file's bytes and the -D definitions,
 * so the banner's hash changes whenever the output can. */
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    for (size_t k = 0; k < n; k++) {
        h ^= ((const unsigned char *)p)[k];
        h *= 1099511628211ull;
    }
    return h;
}

static int source_hash(const Program *p, const DriverOptions *opt, char *buf, size_t size) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < p->n_files; i++) h = fnv(h, p->files[i]->text, p->files[i]->len);
    if (opt->config_path) {
        size_t n = 0;
        char *text = ldm_read_file(opt->config_path, &n);
        if (!text) return -1;
        h = fnv(h, "\0config\0", 8);
        h = fnv(h, text, n);
        free(text);
    }
    for (int i = 0; i < opt->n_defines; i++) {
        h = fnv(h, "\0-D\0", 4);
        h = fnv(h, opt->defines[i].name, strlen(opt->defines[i].name) + 1);
        h = fnv(h, opt->defines[i].value, strlen(opt->defines[i].value) + 1);
    }
    snprintf(buf, size, "%016llx", (unsigned long long)h);
    return 0;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Run the C compiler on src to produce the executable out (via a temporary
 * name, renamed on success). */
static int compile_runner(const char *src, const char *out) {
    const char *cc = getenv("LDMC_CC");
    if (!cc || !*cc) cc = LDMC_CC;
    char *tmp = ldm_xasprintf("%s.tmp.%ld", out, (long)getpid());
    char *cmd = ldm_xasprintf("%s %s -DLDM_RUNNER_MAIN \"$1\" -o \"$2\" %s", cc, LDMC_CFLAGS, LDMC_LIBS);
    pid_t pid = fork();
    if (pid < 0) {
        free(tmp);
        free(cmd);
        return ldm_fail("cannot start the C compiler: %s", strerror(errno));
    }
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, "sh", src, tmp, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    int rc = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        rc = ldm_fail("the C compiler failed on %s (command: %s)", src, cmd);
        remove(tmp);
    } else if (rename(tmp, out) != 0) {
        rc = ldm_fail("%s: cannot rename from %s: %s", out, tmp, strerror(errno));
        remove(tmp);
    }
    free(tmp);
    free(cmd);
    return rc;
}

/* Write one text output atomically with `fn`. */
static int write_text(const char *path, const Graph *g, void (*fn)(const Graph *, FILE *)) {
    LdmOutFile o;
    if (ldm_out_open(&o, path) != 0) return -1;
    fn(g, o.fp);
    return ldm_out_commit(&o);
}

int ldmc_compile(const DriverOptions *opt) {
    double t0 = ldm_now();
    Program *prog = program_parse(opt->graph_path);
    if (!prog) return -1;
    double t_parse = ldm_now();
    BuildOptions bo = {opt->config_path, opt->defines, opt->n_defines};
    Graph *g = graph_build(prog, &bo);
    if (!g) {
        program_free(prog);
        return -1;
    }
    double t_build = ldm_now();
    int rc = 0;
    if (opt->dump_build) dump_graph_after(g, "build", stdout);
    if (ldmc_run_passes(g, opt->dump_after, stdout) != 0) rc = -1;
    double t_pass = ldm_now();
    if (rc == 0 && opt->dump_graph) dump_graph(g, stdout);
    if (rc == 0 && opt->dot_path) rc = write_text(opt->dot_path, g, dump_dot);
    if (rc == 0 && opt->svg_path) rc = write_text(opt->svg_path, g, dump_memory_svg);
    double t_cc = t_pass, t_gen = t_pass;
    if (rc == 0 && opt->out_path) {
        int is_c = ends_with(opt->out_path, ".c");
        char *c_path = is_c ? ldm_xstrdup(opt->out_path) : ldm_xasprintf("%s.c", opt->out_path);
        char hash[32], defs[1024] = "";
        if (source_hash(prog, opt, hash, sizeof hash) != 0) rc = -1;
        for (int i = 0; i < opt->n_defines; i++) {
            size_t k = strlen(defs);
            snprintf(defs + k, sizeof defs - k, "%s%s=%s", i ? " " : "", opt->defines[i].name, opt->defines[i].value);
        }
        if (!defs[0]) snprintf(defs, sizeof defs, "(default params)");
        CodegenInfo info = {opt->graph_path, opt->config_path, defs, hash, opt->symbol};
        LdmOutFile o;
        rc = ldm_out_open(&o, c_path);
        if (rc == 0) {
            rc = codegen(g, &info, o.fp);
            if (rc == 0) rc = ldm_out_commit(&o);
            else ldm_out_abort(&o);
        }
        t_gen = ldm_now();
        if (rc == 0 && !is_c) rc = compile_runner(c_path, opt->out_path);
        t_cc = ldm_now();
        free(c_path);
    }
    if (rc == 0 && opt->stats)
        fprintf(stderr,
                "ldmc: %s: %d nodes, %lld parameters, %.4g GFLOP, arena %.1f MiB (naive %.1f MiB); "
                "parse %.3f s, build %.3f s, passes %.3f s, codegen %.3f s, cc %.1f s\n",
                g->name, g->n_nodes, (long long)graph_param_count(g), graph_flops(g) / 1e9,
                (double)g->arena_bytes / 1048576.0, (double)g->naive_bytes / 1048576.0, t_parse - t0, t_build - t_parse,
                t_pass - t_build, t_gen - t_pass, t_cc - t_gen);
    if (rc == 0 && opt->stats && g->n_unused)
        fprintf(stderr,
                "ldmc: %s: reads %lld of the %lld parameters a checkpoint holds for it: %d tensors (%lld parameters) "
                "are present but unused (listed by --dump)\n",
                g->name, (long long)graph_param_count(g), (long long)ldm_sat_add64(graph_param_count(g), graph_unused_count(g)),
                g->n_unused, (long long)graph_unused_count(g));
    graph_free(g);
    program_free(prog);
    return rc;
}
