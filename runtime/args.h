/*
 * args.h - the programs' command lines: getopt_long over a table with one
 * row per flag, `--flag=value` and `--flag value` alike, and the messages
 * a bad command line gets (the option named as typed). Also the version
 * string of the build, and the random seed of `--seed -1`.
 */
#ifndef LDM_ARGS_H
#define LDM_ARGS_H

#include <stdint.h>
#include <stdio.h>

enum { LDM_ARG_NONE, LDM_ARG_REQUIRED, LDM_ARG_OPTIONAL };

/* One flag: --name (and -c when short_name is not 0). */
typedef struct LdmOption {
    const char *name;   /* long name without "--" (never NULL) */
    int short_name;     /* its one-letter form, or 0 */
    int arg;            /* LDM_ARG_NONE, LDM_ARG_REQUIRED or LDM_ARG_OPTIONAL (only --flag=value) */
    int id;             /* the program's own code for it */
} LdmOption;

/* Called for every option in command-line order: `flag` is the option as
 * typed, "-c" or "--name" (its whole name when abbreviated), for messages;
 * value its value (NULL for
 * LDM_ARG_NONE and an absent optional value). Returns 0, or -1 (ldm_fail)
 * to stop the parse, or another non-zero value that the parse returns. */
typedef int (*LdmOptionFn)(void *ctx, const LdmOption *opt, const char *flag, const char *value);

/* Parse argv[1..] against the n rows of opts with getopt_long (GNU
 * argument permutation; "--" ends the options; unique abbreviations of long
 * names are accepted). Positional arguments end up in argv[*first_pos ..
 * argc - 1] in their order. Returns 0, what fn returned when not 0, or -1
 * with ldm_fail: "unknown option '-x'", "--seed: expected a value after
 * it", "--quiet takes no value (got '--quiet=1')", "ambiguous option
 * '--pre' (--preview, --preview-every)". */
int ldm_args_parse(int argc, char **argv, const LdmOption *opts, int n, LdmOptionFn fn, void *ctx, int *first_pos);

/* One option of a command line, for ldm_args_collect. */
typedef struct LdmArg {
    const LdmOption *opt;
    const char *value;  /* NULL for LDM_ARG_NONE (and an absent optional value) */
} LdmArg;

/* ldm_args_parse into *out (malloc'd, *n_out entries, command-line order):
 * for programs that walk their options in a loop of their own. */
int ldm_args_collect(int argc, char **argv, const LdmOption *opts, int n, LdmArg **out, int *n_out, int *first_pos);

/* "-c" for a row with a short name, else "--name" (messages). */
const char *ldm_option_name(const LdmOption *o, char *buf, size_t size);

/* The table one row a line: "--name<TAB>-c<TAB>value" ("-" when no short
 * name; value|none|optional): what --list-options prints. */
void ldm_args_list(FILE *fp, const LdmOption *opts, int n);

/* The build's version: `git describe --always --dirty` when it was built,
 * "unknown" outside a git checkout. */
const char *ldm_version(void);

/* A seed for `--seed -1`, as the webui draws one (random.randrange(4294967294):
 * 0 <= seed < 4294967294), from getrandom(2) (/dev/urandom when that fails).
 * Returns 0, or -1 (ldm_fail) when the system gives no randomness. */
int ldm_random_seed(uint64_t *seed);

/* --seed's value: N >= 0, or -1 for a random seed (*random set, *seed 0). */
int ldm_parse_seed(const char *flag, const char *v, uint64_t *seed, int *random);

/* Image i (0-based) of a -b/--batch-count run written to `path`, named as
 * stable-diffusion.cpp names them: path itself for i = 0, else path with
 * "_<i + 1>" before the extension of its last component ("out/a.png" ->
 * "out/a_2.png", "a" -> "a_2"). malloc'd. */
char *ldm_batch_name(const char *path, int i);

#endif
