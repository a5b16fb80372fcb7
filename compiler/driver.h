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
    int dump_graph;              /* --dump / --dump=graph: after passes */
    int dump_plan;               /* --dump=plan: the memory plan */
    int stats;                   /* --stats: totals and timings on stderr */
    const char *symbol;          /* --symbol NAME: NAME_forward / NAME_model (NULL: the graph name) */
} DriverOptions;

/* 0, or -1 with the message in ldm_last_error(). */
int ldmc_compile(const DriverOptions *opt);

/* `ldmc randckpt`: write a random-weight checkpoint holding every weight the
 * graphs bind under the build options (randckpt.c). */
#include "safetensors.h"
int ldmc_randckpt(const char *const *graphs, int n_graphs, const BuildOptions *bo, StDtype dtype, uint64_t seed,
                  const char *out_path);

#endif
