/*
 * config.h - CompVis model config YAML as a generic tree.
 *
 * The .yaml files that ship with Stable Diffusion v1 and Latent Diffusion
 * checkpoints (models/sd1/v1-inference.yaml, ...) describe the networks:
 * channel counts, multipliers, attention resolutions, the noise schedule.
 * cfg_load() reads one with libyaml into a tree of CfgNode, every node
 * keeping the file, line and column it came from so the DSL evaluator can
 * point at the config line when a value does not fit.
 *
 * Plain scalars are typed the way the CompVis code sees them, i.e. like
 * PyYAML's SafeLoader (YAML 1.1) as patched by OmegaConf:
 *   - quoted / block scalars are strings;
 *   - null, Null, NULL, ~ and the empty scalar are null;
 *   - yes/no/true/false/on/off (lower, Capitalised, UPPER) are bools;
 *   - ints: decimal, 0b binary, 0 octal, 0x hex, sexagesimal 1:30, with an
 *     optional sign and underscores; they must fit int64;
 *   - floats: 1.0e-04, 1.e-6, 0.0120, .5, 1e-4 (OmegaConf's addition: no dot
 *     needed), .inf, -.inf, .nan, sexagesimal 1:30.5;
 *   - timestamps stay strings (OmegaConf drops PyYAML's timestamp resolver);
 *   - everything else is a string.
 * Mapping keys are kept as text ("1:" gives the key "1"). Aliases are
 * expanded by copying; "<<" merge keys are supported; duplicate keys,
 * non-scalar keys, recursive aliases and unknown tags are errors.
 *
 * Errors follow the compiler convention "file:line:col: error: message" and
 * are recorded with ldm_fail(); nothing here prints or exits.
 */
#ifndef LDM_CONFIG_H
#define LDM_CONFIG_H

#include <stdint.h>
#include <stdio.h>

/* What a config node holds. */
typedef enum CfgKind {
    CFG_NULL,   /* null, ~ or empty */
    CFG_BOOL,   /* true/false/yes/no/on/off; value in b */
    CFG_INT,    /* integer; value in i */
    CFG_FLOAT,  /* floating point; value in f */
    CFG_STRING, /* any other scalar; value in s */
    CFG_LIST,   /* sequence; n items */
    CFG_MAP,    /* mapping; n keys and items, in file order */
} CfgKind;

/* One node of a config tree. A node owns its strings and children; file
 * names are interned and never freed. */
typedef struct CfgNode {
    CfgKind kind;            /* what the node holds */
    const char *file;        /* file it came from ("<command line>" for -D) */
    int line, col;           /* 1-based position of the node */
    int b;                   /* CFG_BOOL: 0 or 1 */
    int64_t i;               /* CFG_INT */
    double f;                /* CFG_FLOAT */
    char *s;                 /* CFG_STRING (NUL-terminated, UTF-8) */
    int n;                   /* CFG_LIST / CFG_MAP: number of items */
    struct CfgNode **items;  /* list items / map values, n of them */
    char **keys;             /* CFG_MAP keys (parallel to items) */
} CfgNode;

/* Read and parse a YAML file. An empty file gives an empty map. Returns
 * NULL + ldm_fail("path:line:col: error: ...") on any error. */
CfgNode *cfg_load(const char *path);
/* Same, from memory; name is used as the file name in nodes and errors. */
CfgNode *cfg_parse_string(const char *text, const char *name);

/* Value of key in map; NULL if absent or map is not a map. */
const CfgNode *cfg_get(const CfgNode *map, const char *key);
/* Follow a dotted path ("model.params.unet_config.params.model_channels");
 * an all-digit component indexes a list ("...channel_mult.0"). NULL if any
 * step is missing. Records no error. */
const CfgNode *cfg_path(const CfgNode *root, const char *dotted);

/* A -D override: set the value at a dotted path, creating missing maps on
 * the way (list items can be replaced by index, not appended). value_text is
 * typed as a plain YAML scalar ("320", "1e-4", "true", "hello"), or parsed as
 * YAML when it starts with [ { " or ' ("[1,2,4]", "'a b'"). New nodes are
 * located at "<command line>". Returns 0, or -1 + ldm_fail. */
int cfg_set_path(CfgNode *root, const char *dotted, const char *value_text);

/* Type one plain scalar with the YAML 1.1 / OmegaConf rules above. Never
 * NULL for valid input; NULL + ldm_fail("file:line:col: error: ...") only
 * for an integer that does not fit int64. */
CfgNode *cfg_scalar_from_text(const char *text, const char *file, int line, int col);

/* Deep copy (same locations). */
CfgNode *cfg_copy(const CfgNode *n);
/* Free a tree (NULL is fine). */
void cfg_free(CfgNode *n);

/* "null", "bool", "int", "float", "string", "list", "map". */
const char *cfg_kind_name(CfgKind k);

/* Deterministic debug dump as block YAML: keys in file order, strings always
 * double-quoted, floats in shortest round-trip form with a '.' or exponent,
 * lists of scalars on one line. The output parses back to an equal tree. */
void cfg_print(const CfgNode *n, FILE *fp);

#endif
