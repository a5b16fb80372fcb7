/*
 * fuzz_dsl.c - the graph DSL as `ldmc GRAPH --config YAML -D ... -o OUT.c`
 * runs it: lexer and parser (program_parse_string, imports resolved from
 * tests/graphs/ so its lib/ and ../../models/ files can be imported), the
 * evaluator with its shape inference (graph_build), every pass
 * (ldmc_run_passes) and codegen, the C discarded.
 *
 * Input: a .graph text. Leading lines "#config NAME" (a config of
 * tests/graphs/ or models/sd1/, sd2/, sdxl/, ldm/: see config_path) and
 * "#D NAME=VALUE" (a -D, at most 8) give the config and definitions, as a
 * .args file does; they are comments to the DSL itself.
 */
#include "fuzz.h"
#include "driver.h"

/* "#config small.yaml" (tests/graphs), "#config sd1/v1-inference.yaml",
 * "#config sd2/NAME.yaml", "#config sdxl/NAME.yaml" or "#config
 * ldm/NAME.yaml" (models/): only names of those directories, so an
 * input cannot make the harness read /dev/zero or the like. */
static char *config_path(const char *name, size_t len) {
    char buf[128];
    if (len == 0 || len >= sizeof buf) return NULL;
    memcpy(buf, name, len);
    buf[len] = 0;
    const char *dir = LDM_FUZZ_ROOT "/tests/graphs/";
    const char *base = buf;
    if (!strncmp(buf, "sd1/", 4) || !strncmp(buf, "sd2/", 4) || !strncmp(buf, "sdxl/", 5) || !strncmp(buf, "ldm/", 4))
        dir = LDM_FUZZ_ROOT "/models/";
    else if (strchr(buf, '/')) return NULL;
    for (const char *p = base; *p; p++)
        if (!(*p == '/' || *p == '.' || *p == '_' || *p == '-' || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
            return NULL;
    if (strstr(base, "..") || !strstr(base, ".yaml")) return NULL;
    return ldm_xasprintf("%s%s", dir, base);
}

LDM_FUZZ_TARGET(dsl) {
    static FILE *devnull;
    if (!devnull) devnull = fopen("/dev/null", "w");
    char *text = fuzz_cstr(data, size);
    char *config = NULL;
    Define defs[8];
    int n_defs = 0;
    for (const char *p = text; *p == '#';) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (!strncmp(p, "#config ", 8) && !config) {
            config = config_path(p + 8, len - 8);
        } else if (!strncmp(p, "#D ", 3) && n_defs < 8) {
            const char *eq = memchr(p + 3, '=', len - 3);
            if (eq && eq > p + 3) {
                defs[n_defs].name = ldm_xasprintf("%.*s", (int)(eq - p - 3), p + 3);
                defs[n_defs].value = ldm_xasprintf("%.*s", (int)(p + len - eq - 1), eq + 1);
                n_defs++;
            }
        }
        if (!eol) break;
        p = eol + 1;
    }
    Program *prog = program_parse_string(LDM_FUZZ_ROOT "/tests/graphs/fuzz.graph", text);
    if (prog) {
        BuildOptions bo = {config, defs, n_defs};
        Graph *g = graph_build(prog, &bo);
        if (g) {
            if (ldmc_run_passes(g, 0, devnull) == 0) {
                CodegenInfo info = {"fuzz.graph", config, "", "0000000000000000", NULL};
                codegen(g, &info, devnull);
            }
            graph_free(g);
        }
        program_free(prog);
    }
    for (int i = 0; i < n_defs; i++) {
        free(defs[i].name);
        free(defs[i].value);
    }
    free(config);
    free(text);
    return 0;
}
