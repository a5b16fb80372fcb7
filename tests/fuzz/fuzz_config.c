/*
 * fuzz_config.c - the YAML config reader as ldmc reads --config and -D:
 * cfg_parse_string (what cfg_load runs on the file's bytes), then each
 * "#-D PATH=VALUE" line of the input (a YAML comment) through cfg_set_path,
 * in order, then what the compiler derives from a config (model_facts,
 * model_facts_map) and the debug dump.
 *
 * Oracle besides the sanitizers: cfg_print's output parses back to a tree
 * that prints the same (config.h promises the round trip), and a deep copy
 * prints the same as the original.
 */
#include "fuzz.h"
#include "ldmc.h"

static char *print_tree(const CfgNode *n) {
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    if (!fp) abort();
    cfg_print(n, fp);
    fclose(fp);
    return buf;
}

LDM_FUZZ_TARGET(config) {
    char *text = fuzz_cstr(data, size);
    CfgNode *root = cfg_parse_string(text, "fuzz.yaml");
    if (root) {
        for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
            if (strncmp(p, "#-D ", 4)) continue;
            const char *eol = strchr(p, '\n');
            size_t len = eol ? (size_t)(eol - p) : strlen(p);
            const char *eq = memchr(p + 4, '=', len - 4);
            if (!eq) continue;
            char *path = ldm_xasprintf("%.*s", (int)(eq - p - 4), p + 4);
            char *value = ldm_xasprintf("%.*s", (int)(p + len - eq - 1), eq + 1);
            cfg_set_path(root, path, value);
            (void)cfg_path(root, path);
            free(path);
            free(value);
        }
        ModelFacts mf;
        if (model_facts(root, &mf) == 0) {
            CfgNode *m = model_facts_map(&mf);
            if (!m) {
                fprintf(stderr, "model_facts_map failed: %s\n", ldm_last_error());
                abort();
            }
            cfg_free(m);
        }
        char *a = print_tree(root);
        CfgNode *copy = cfg_copy(root);
        char *b = print_tree(copy);
        if (strcmp(a, b)) {
            fprintf(stderr, "cfg_copy prints differently:\n%s\n---\n%s\n", a, b);
            abort();
        }
        CfgNode *back = cfg_parse_string(a, "printed.yaml");
        if (!back) {
            fprintf(stderr, "cfg_print's output does not parse: %s\n%s\n", ldm_last_error(), a);
            abort();
        }
        char *c = print_tree(back);
        if (strcmp(a, c)) {
            fprintf(stderr, "cfg_print's output parses to another tree:\n%s\n---\n%s\n", a, c);
            abort();
        }
        free(a);
        free(b);
        free(c);
        cfg_free(copy);
        cfg_free(back);
        cfg_free(root);
    }
    free(text);
    return 0;
}
