/*
 * driver.c - the compile pipeline: parse, build, passes, dumps, codegen,
 * and (for a runner) the C compiler.
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

/* FNV-1a over every source file of the program: names the exact source
 * in the banner of the generated file. */
static void source_hash(const Program *p, char *buf, size_t size) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < p->n_files; i++)
        for (size_t k = 0; k < p->files[i]->len; k++) {
            h ^= (unsigned char)p->files[i]->text[k];
            h *= 1099511628211ull;
        }
    snprintf(buf, size, "%016llx", (unsigned long long)h);
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
    if (opt->dump_build) dump_graph(g, stdout);
    pass_dead_code(g);
    g->nominal_flops = graph_flops(g);
    pass_fuse(g);
    pass_select_kernels(g);
    pass_views(g);
    if (pass_plan_memory(g) != 0) rc = -1;
    double t_pass = ldm_now();
    if (rc == 0 && opt->dump_graph) dump_graph(g, stdout);
    if (rc == 0 && opt->dump_plan) dump_plan(g, stdout);
    if (rc == 0 && opt->dot_path) rc = write_text(opt->dot_path, g, dump_dot);
    if (rc == 0 && opt->svg_path) rc = write_text(opt->svg_path, g, dump_memory_svg);
    double t_cc = t_pass, t_gen = t_pass;
    if (rc == 0 && opt->out_path) {
        int is_c = ends_with(opt->out_path, ".c");
        char *c_path = is_c ? ldm_xstrdup(opt->out_path) : ldm_xasprintf("%s.c", opt->out_path);
        char hash[32], defs[1024] = "";
        source_hash(prog, hash, sizeof hash);
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
    graph_free(g);
    program_free(prog);
    return rc;
}
