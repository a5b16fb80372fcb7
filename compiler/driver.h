/* driver.h - the whole compile, as the command line asks for it. */
#ifndef LDMC_DRIVER_H
#define LDMC_DRIVER_H

#include "ldmc.h"

typedef struct DriverOptions {
    const char *graph_path;      /* the .graph file */
    const char *config_path;     /* --config (may be NULL) */
    Define *defines;             /* -D NAME=VALUE */
    int n_defines;
    const char *out_path;        /* -o: FILE.c writes C, anything else builds a runner */
    const char *dot_path;        /* --dot FILE */
    const char *svg_path;        /* --plot-memory FILE.svg */
    int dump_build;              /* --dump=build: the graph as built, before passes */
    unsigned dump_after;         /* --dump=PASS: bit k = the dump after ldmc_passes[k] */
    int dump_graph;              /* --dump / --dump=graph: the graph after every pass */
    int stats;                   /* --stats: totals and timings on stderr */
    const char *symbol;          /* --symbol NAME: NAME_forward / NAME_model (NULL: the graph name) */
} DriverOptions;

/* The passes in the order the driver runs them; each has a name for
 * --dump=NAME and a dump (the graph, or the plan pass's table). */
typedef struct PassInfo {
    const char *name;            /* "dce", "cse", "fuse", "select", "views", "plan" */
    int (*run)(Graph *g);        /* 0, or -1 with a message */
    void (*dump)(const Graph *g, const char *name, FILE *fp); /* what --dump=NAME prints */
    const char *what;            /* one line for ldmc --help */
} PassInfo;
extern const PassInfo ldmc_passes[];
extern const int ldmc_n_passes;
/* The index of pass `name` in ldmc_passes, or -1. */
int ldmc_pass_index(const char *name);
/* Run every pass on g in order (the -o path does exactly this); dump_after
 * as in DriverOptions, printed to fp. 0, or -1 with the message. */
int ldmc_run_passes(Graph *g, unsigned dump_after, FILE *fp);

/* 0, or -1 with the message in ldm_last_error(). */
int ldmc_compile(const DriverOptions *opt);

/* `ldmc randckpt`: write a random-weight checkpoint holding every weight the
 * graphs bind under the build options (randckpt.c). */
#include "safetensors.h"
int ldmc_randckpt(const char *const *graphs, int n_graphs, const BuildOptions *bo, StDtype dtype, uint64_t seed,
                  const char *out_path);

#endif
