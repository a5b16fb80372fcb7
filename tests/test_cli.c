/*
 * test_cli.c - the command lines of every program (runtime/args.[ch]):
 *
 *   - ldm_args_parse in process: --flag=value, --flag value, -c value,
 *     -cvalue, permuted positionals, "--", and the messages of bad usage
 *     (unknown option, missing value, a value to a flag that takes none, an
 *     ambiguous abbreviation); ldm_batch_name, ldm_parse_seed, ldm_random_seed;
 *   - txt2img (sd1-tiny, 128x128): stable-diffusion.cpp's spellings give the
 *     same PNG bytes as ours (a table of pairs of command lines); every flag
 *     of its table (--list-options) that takes a value parses the same as
 *     --flag=value, --flag value and -c value (--dry-run prints the parse);
 *     --help names every flag of the table; -s -1 draws a seed, prints it
 *     and records it in the PNG's `parameters`; -b 3 writes output.png,
 *     output_2.png, output_3.png with consecutive seeds; no -o writes
 *     ./output.png; --version; sizes in messages as WIDTHxHEIGHT; bad values
 *     (-t 0, -b 0, --sampling-method ipndm, --scheduler gits, ...) refused
 *     with status 2 and a message listing what is accepted;
 *   - sample (ldm-vq4-tiny, 64x64): the same table checks, and its PNG's
 *     `parameters` (parsed back with ldm_infotext_parse), --no-metadata;
 *   - ldmc (main, convert, pipeline, randckpt) and ldm-tokenize:
 *     --flag=value against --flag value give the same output.
 */
#define _GNU_SOURCE
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "args.h"
#include "image.h"
#include "infotext.h"
#include "pipeline.h"
#include "testio.h"
#include "testproc.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define CLI_SAN 1
#else
#define CLI_SAN 0
#endif

/* ------------------------------------------------------------------------
 * ldm_args_parse in process
 * ------------------------------------------------------------------------ */

static const LdmOption k_opts[] = {
    {"alpha", 'a', LDM_ARG_REQUIRED, 1},
    {"beta", 0, LDM_ARG_REQUIRED, 2},
    {"gamma", 'g', LDM_ARG_NONE, 3},
    {"gamma-ray", 0, LDM_ARG_NONE, 4},
    {"dump", 0, LDM_ARG_OPTIONAL, 5},
};
#define N_OPTS ((int)(sizeof k_opts / sizeof k_opts[0]))

typedef struct Seen {
    char text[512];
} Seen;

static int record(void *ctx, const LdmOption *opt, const char *flag, const char *value) {
    Seen *s = ctx;
    size_t k = strlen(s->text);
    snprintf(s->text + k, sizeof s->text - k, "%s%d:%s=%s", k ? " " : "", opt->id, flag, value ? value : "(null)");
    return 0;
}

/* Parse the NULL-ended arguments (argv[0] = "prog"); *text the options
 * seen, then "| positional..." */
static int parse_list(char *text, size_t size, ...) {
    char *argv[32];
    int argc = 0;
    argv[argc++] = "prog";
    va_list ap;
    va_start(ap, size);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    Seen s = {""};
    int first = -1;
    int rc = ldm_args_parse(argc, argv, k_opts, N_OPTS, record, &s, &first);
    size_t k = (size_t)snprintf(text, size, "%s |", s.text);
    for (int i = first; rc == 0 && i < argc; i++) k += (size_t)snprintf(text + k, size - k, " %s", argv[i]);
    return rc;
}

START_TEST(test_args_forms) {
    char t[600];
    ck_assert_int_eq(parse_list(t, sizeof t, "--alpha=1", "--alpha", "2", "-a", "3", "-a4", "--beta=", "x", NULL), 0);
    ck_assert_str_eq(t, "1:--alpha=1 1:--alpha=2 1:-a=3 1:-a=4 2:--beta= | x");
    /* values that start with '-', positionals anywhere, "--" ends options */
    ck_assert_int_eq(parse_list(t, sizeof t, "p1", "-a", "-1", "--beta", "--gamma", "-g", "p2", "--", "-a", NULL), 0);
    ck_assert_str_eq(t, "1:-a=-1 2:--beta=--gamma 3:-g=(null) | p1 p2 -a");
    /* optional values only with '='; an exact name beats a longer one; a unique abbreviation */
    ck_assert_int_eq(parse_list(t, sizeof t, "--dump", "--dump=plan", "--gamma", "--gamma-", "--al", "5", NULL), 0);
    ck_assert_str_eq(t, "5:--dump=(null) 5:--dump=plan 3:--gamma=(null) 4:--gamma-ray=(null) 1:--alpha=5 |");
    /* twice in a row: getopt's state starts over */
    ck_assert_int_eq(parse_list(t, sizeof t, "-a", "9", NULL), 0);
    ck_assert_str_eq(t, "1:-a=9 |");
}
END_TEST

static const struct {
    const char *args[4];
    const char *msg;
} k_args_bad[] = {
    {{"--nope", NULL}, "unknown option '--nope'"},
    {{"--nope=3", NULL}, "unknown option '--nope'"},
    {{"-x", NULL}, "unknown option '-x'"},
    {{"--alpha", NULL}, "--alpha: expected a value after it"},
    {{"-a", NULL}, "-a: expected a value after it"},
    {{"--gamma=1", NULL}, "--gamma takes no value (got '--gamma=1')"},
    {{"--ga", NULL}, "ambiguous option '--ga' (--gamma, --gamma-ray)"},
};

START_TEST(test_args_errors) {
    char t[600];
    const char *const *a = k_args_bad[_i].args;
    int rc = parse_list(t, sizeof t, a[0], a[1], a[2], a[3], NULL);
    ck_assert_int_eq(rc, -1);
    ck_assert_msg(!strcmp(ldm_last_error(), k_args_bad[_i].msg), "%s: got '%s', expected '%s'", a[0],
                  ldm_last_error(), k_args_bad[_i].msg);
}
END_TEST

START_TEST(test_args_helpers) {
    const char *cases[][3] = {
        {"output.png", "output_2.png", "output_3.png"}, {"a/b.c/out", "a/b.c/out_2", "a/b.c/out_3"},
        {"./x.safetensors", "./x_2.safetensors", "./x_3.safetensors"}, {"dir/.png", "dir/.png_2", "dir/.png_3"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int k = 0; k < 3; k++) {
            char *n = ldm_batch_name(cases[i][0], k);
            ck_assert_str_eq(n, cases[i][k]);
            free(n);
        }
    uint64_t s = 1;
    int r = 0;
    ck_assert_int_eq(ldm_parse_seed("--seed", "-1", &s, &r), 0);
    ck_assert(r == 1 && s == 0);
    ck_assert_int_eq(ldm_parse_seed("--seed", "18446744073709551615", &s, &r), 0);
    ck_assert(r == 0 && s == UINT64_MAX);
    ck_assert_int_eq(ldm_parse_seed("-s", "-2", &s, &r), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "-s: expected an integer N >= 0, or -1"));
    ck_assert_int_eq(ldm_parse_seed("-s", "7x", &s, &r), -1);
    /* random seeds: in the webui's range, and not all the same */
    uint64_t a[8];
    int same = 1;
    for (int i = 0; i < 8; i++) {
        ck_assert_int_eq(ldm_random_seed(&a[i]), 0);
        ck_assert(a[i] < 4294967294u);
        if (i && a[i] != a[0]) same = 0;
    }
    ck_assert_msg(!same, "8 random seeds all %llu", (unsigned long long)a[0]);
    ck_assert(strlen(ldm_version()) > 0);
}
END_TEST

/* ------------------------------------------------------------------------
 * the executables
 * ------------------------------------------------------------------------ */

static char g_t2i[700];
static char *g_t2i_log;
static char g_smp[700];
static char *g_smp_log;

static void setup_t2i(void) {
    test_dir_init("ldm_cli_");
    if (!test_dir[0] || g_t2i[0] || g_t2i_log) return;
    test_build_sd1_tiny_txt2img(CLI_SAN, g_t2i, sizeof g_t2i, &g_t2i_log);
}

/* the sample suite's executable for ldm-vq4-tiny at 64x64 (the same make
 * command: nothing to do when that suite built it) */
static void setup_smp(void) {
    test_dir_init("ldm_cli_");
    if (!test_dir[0] || g_smp[0] || g_smp_log) return;
    char build[300], cfg[512], logf[600], exe[600];
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(cfg, sizeof cfg, "CONFIG=%s", test_shared("goldens/ldm-vq4-tiny/config.yaml"));
    char *argv[] = {"make", "-s", "-j2", build, CLI_SAN ? "SAN=1" : "SAN=0", "sample", cfg, "H=64", "W=64",
                    "SAMPLE_NAME=sample-test-vq4-tiny", NULL};
    snprintf(logf, sizeof logf, "%s/make-sample.log", test_dir);
    snprintf(exe, sizeof exe, "%s/sample-test-vq4-tiny", test_build_dir());
    int rc = test_wait_status(test_spawn(argv, logf));
    if (rc == 0 && access(exe, X_OK) == 0) {
        snprintf(g_smp, sizeof g_smp, "%s", exe);
    } else {
        size_t n;
        g_smp_log = ldm_read_file(logf, &n);
        if (!g_smp_log) g_smp_log = ldm_xasprintf("make exited with status %d", rc);
    }
}

static void setup_dir(void) { test_dir_init("ldm_cli_"); }
static void teardown_nothing(void) {}

static const char *t2i(void) {
    ck_assert_msg(g_t2i[0], "make txt2img (sd1-tiny) failed:\n%s", g_t2i_log ? g_t2i_log : "(not run)");
    return g_t2i;
}

static const char *smp(void) {
    ck_assert_msg(g_smp[0], "make sample (ldm-vq4-tiny) failed:\n%s", g_smp_log ? g_smp_log : "(not run)");
    return g_smp;
}

static const char *t2i_model(void) { return test_shared("goldens/sd1-tiny/model.safetensors"); }
static const char *smp_model(void) { return test_shared("goldens/ldm-vq4-tiny/model.safetensors"); }

#define MAX_ARGS 64

/* Run exe with the arguments of the NULL-ended array `args` (after
 * splitting none: each entry is one argument); status, output in *out. */
static int run_argv(const char *exe, const char *const *args, char **out) {
    char *argv[MAX_ARGS];
    int k = 0;
    argv[k++] = (char *)exe;
    for (int i = 0; args[i]; i++) {
        ck_assert(k < MAX_ARGS - 1);
        argv[k++] = (char *)args[i];
    }
    argv[k] = NULL;
    return test_run(argv, out);
}

static int run_prog(const char *exe, char **out, ...) {
    const char *args[MAX_ARGS];
    int k = 0;
    va_list ap;
    va_start(ap, out);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        ck_assert(k < MAX_ARGS - 1);
        args[k++] = a;
    }
    va_end(ap);
    args[k] = NULL;
    return run_argv(exe, args, out);
}

/* Split "a b 'c d'" into words (ldm_split_args) with $M (the model),
 * $IMG, $MASK and $O (output) substituted; NULL-ended, malloc'd. */
static char **words(const char *line, const char *out) {
    int argc;
    char **argv;
    ck_assert_msg(ldm_split_args(line, &argc, &argv) == 0, "%s", ldm_last_error());
    char **v = ldm_xcalloc((size_t)argc + 1, sizeof *v);
    const char *keys[4] = {"$MASK", "$IMG", "$M", "$O"};
    const char *vals[4] = {test_tmp("mask.png"), test_shared("goldens/sd1-tiny/img2img_input.png"), t2i_model(), out};
    for (int i = 0; i < argc; i++) {
        char *w = ldm_xstrdup(argv[i]);
        for (int k = 0; k < 4; k++) {
            char *p = strstr(w, keys[k]);
            if (!p) continue;
            char *t = ldm_xasprintf("%.*s%s%s", (int)(p - w), w, vals[k], p + strlen(keys[k]));
            free(w);
            w = t;
        }
        v[i] = w;
    }
    ldm_args_free(argc, argv);
    return v;
}

static void words_free(char **v) {
    for (int i = 0; v[i]; i++) free(v[i]);
    free(v);
}

/* a 128x128 mask: the right half white (repaint) */
static void write_mask(void) {
    uint8_t *px = ldm_xcalloc(128 * 128 * 3, 1);
    for (int y = 0; y < 128; y++)
        for (int x = 64; x < 128; x++) memset(px + 3 * (y * 128 + x), 255, 3);
    ck_assert(ldm_png_write_rgb8(test_tmp("mask.png"), px, 128, 128) == 0);
    free(px);
}

/* stable-diffusion.cpp's spellings against ours: the same PNG, byte for byte
 * (the `parameters` chunk included). --vocab is not given: the built-in one. */
static const struct {
    const char *ours, *sdcpp;
} k_spellings[] = {
    {"--weights $M --prompt 'a red fox' --negative-prompt blurry --seed 3 --steps 2 -o $O",
     "-m $M -p 'a red fox' -n blurry -s 3 --steps 2 --output $O"},
    {"--weights $M --prompt fox --seed 4 --steps 2 --sampler dpmpp_2m --schedule karras -o $O",
     "--model=$M --prompt=fox --seed=4 --steps=2 --sampling-method dpm++2m --scheduler=karras -o $O"},
    {"--weights $M --prompt fox --seed 5 --steps 2 --sampler euler_a --cfg-scale 5 -o $O",
     "-m $M -p fox -s 5 --steps 2 --sampling-method=euler_a --cfg-scale=5 -o$O"},
    {"--weights $M --prompt fox --seed 6 --steps 2 --sampler dpmpp_2s_a -o $O",
     "-m $M -p fox -s6 --steps 2 --sampling-method dpm++2s_a -o $O"},
    {"--weights $M --prompt fox --seed 7 --steps 2 --sampler heun --schedule exponential -o $O",
     "-m $M -p fox -s 7 --steps 2 --sampling-method heun --scheduler exponential -W 128 -H 128 -o $O"},
    {"--weights $M --prompt fox --seed 8 --steps 4 --sampler lcm -o $O",
     "-m $M -p fox -s 8 --steps 4 --sampling-method lcm -o $O"},
    {"--weights $M --prompt fox --seed 9 --steps 4 --init-image $IMG --strength 0.5 -o $O",
     "-m $M -p fox -s 9 --steps 4 -i $IMG --strength 0.5 -o $O"},
    {"--weights $M --prompt fox --seed 9 --steps 4 --init-image $IMG --mask $MASK -o $O",
     "-m $M -p fox -s 9 --steps 4 --init-img $IMG --mask=$MASK -o $O"},
    {"--weights $M --prompt fox --seed 10 --steps 2 --sampler dpm2 -o $O",
     "-m $M -p fox --seed 10 --steps 2 --sampling-method dpm2 -q -o $O"},
};
#define N_SPELLINGS ((int)(sizeof k_spellings / sizeof k_spellings[0]))

START_TEST(test_sdcpp_spellings) {
    write_mask();
    const char *pa = test_tmp("spell-%d-ours.png", _i), *pb = test_tmp("spell-%d-sdcpp.png", _i);
    char **a = words(k_spellings[_i].ours, pa), **b = words(k_spellings[_i].sdcpp, pb);
    char *out;
    int rc = run_argv(t2i(), (const char *const *)a, &out);
    ck_assert_msg(rc == 0, "%s: status %d:\n%s", k_spellings[_i].ours, rc, out);
    free(out);
    rc = run_argv(t2i(), (const char *const *)b, &out);
    ck_assert_msg(rc == 0, "%s: status %d:\n%s", k_spellings[_i].sdcpp, rc, out);
    free(out);
    ck_assert_msg(same_file(pa, pb), "'%s' and '%s' wrote different PNGs", k_spellings[_i].ours,
                  k_spellings[_i].sdcpp);
    words_free(a);
    words_free(b);
}
END_TEST

/* The rows of a program's --list-options: "--name", "-c" or "-", "value"/"none"/"optional". */
typedef struct Row {
    char name[64], shrt[4], arg[16];
} Row;

static int list_options(const char *exe, Row **rows) {
    char *out;
    int rc = run_prog(exe, &out, "--list-options", NULL);
    ck_assert_msg(rc == 0, "--list-options: status %d:\n%s", rc, out);
    int n = 0;
    *rows = NULL;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        *rows = ldm_xrealloc(*rows, (size_t)(n + 1) * sizeof **rows);
        Row *r = &(*rows)[n];
        ck_assert_msg(sscanf(line, "%63s %3s %15s", r->name, r->shrt, r->arg) == 3, "row '%s'", line);
        ck_assert_msg(!strncmp(r->name, "--", 2), "row '%s'", line);
        n++;
    }
    free(out);
    ck_assert_msg(n >= 10, "%d rows", n);
    return n;
}

/* A good value for each flag that takes one (a flag added to a program's
 * table needs a row here: the test fails naming it). */
static const char *const k_values[][2] = {
    {"--weights", "/w/model.safetensors"}, {"--model", "/w/m.safetensors"}, {"--vocab", "/v/vocab.txt.gz"},
    {"--prompt", "a red fox"}, {"--negative-prompt", "-blurry"}, {"--prompts", "/p/prompts.txt"},
    {"--output", "/o/out.png"}, {"--init-noise", "/n.safetensors"}, {"--init-image", "/i.png"},
    {"--init-img", "/i2.png"}, {"--mask", "/m.png"}, {"--save-latent", "/l.safetensors"}, {"--steps", "7"},
    {"--cfg-scale", "-2.5"}, {"--sampler", "DPM++ 2M Karras"}, {"--sampling-method", "dpm++2s_a"},
    {"--schedule", "ays"}, {"--scheduler", "exponential"}, {"--eta", "0.25"}, {"--rho", "3.5"}, {"--gamma", "0.5"},
    {"--noise-sampler", "randn"}, {"--seed", "123"}, {"--rng", "cuda"}, {"--strength", "0.4"}, {"--shard", "1/3"},
    {"--compute", "f32"}, {"--height", "128"}, {"--width", "128"}, {"--prompt-syntax", "plain"},
    {"--clip-skip", "2"}, {"--embeddings", "/e"}, {"--lora", "/l/x.safetensors:0.5"}, {"--lora-dir", "/ld"},
    {"--save-cond", "/c.safetensors"}, {"--taesd", "/t.safetensors"}, {"--taesd-encoder", "/te.safetensors"},
    {"--preview", "/pv.png"}, {"--preview-every", "3"}, {"--preview-taesd", "/pt.safetensors"},
    {"--threads", "3"}, {"--batch-count", "4"}, {"--batch", "2"}, {"--class", "1"},
    {"--listen", "127.0.0.1:7861"}, {"--queue", "5"}, {"--max-body", "4096"}, {"--api-key", "sekrit"},
    {"--cors-origin", "http://localhost:3000"}, {"--vae", "/v/vae.safetensors"}, {"--control-net", "/cn.safetensors"},
    {"--control-image", "/hint.png"}, {"--control-strength", "0.5"},
    {"--original-size", "1024x768"}, {"--crop-top-left", "16,32"}, {"--target-size", "768x1024"},
};

static const char *value_for(const char *exe, const char *name) {
    if (strstr(exe, "sample") && (!strcmp(name, "--height") || !strcmp(name, "--width"))) return "64";
    for (size_t i = 0; i < sizeof k_values / sizeof k_values[0]; i++)
        if (!strcmp(k_values[i][0], name)) return k_values[i][1];
    ck_abort_msg("no test value for %s (add one to k_values)", name);
    return NULL;
}

/* Every flag with a value: --flag=V, --flag V (and -c V, -cV) give the same
 * --dry-run output (the parse and the checks), which shows V. */
static void check_value_forms(const char *exe, const char *model) {
    Row *rows;
    int n = list_options(exe, &rows), n_value = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(rows[i].arg, "value") != 0) continue;
        n_value++;
        const char *v = value_for(exe, rows[i].name);
        char eq[300];
        snprintf(eq, sizeof eq, "%s=%s", rows[i].name, v);
        char *outs[4] = {0};
        int rcs[4], nf = 0;
        rcs[nf] = run_prog(exe, &outs[nf], "--dry-run", "-m", model, eq, NULL), nf++;
        rcs[nf] = run_prog(exe, &outs[nf], "--dry-run", "-m", model, rows[i].name, v, NULL), nf++;
        if (rows[i].shrt[0] == '-' && rows[i].shrt[1]) {
            char glued[300];
            snprintf(glued, sizeof glued, "%s%s", rows[i].shrt, v);
            rcs[nf] = run_prog(exe, &outs[nf], "--dry-run", "-m", model, rows[i].shrt, v, NULL), nf++;
            rcs[nf] = run_prog(exe, &outs[nf], "--dry-run", "-m", model, glued, NULL), nf++;
        }
        for (int k = 1; k < nf; k++)
            ck_assert_msg(rcs[k] == rcs[0] && !strcmp(outs[k], outs[0]),
                          "%s %s: form %d differs from --flag=value (status %d, %d):\n%s\n---\n%s", exe,
                          rows[i].name, k, rcs[0], rcs[k], outs[0], outs[k]);
        ck_assert_msg(rcs[0] == 0 || rcs[0] == 2, "%s: status %d:\n%s", eq, rcs[0], outs[0]);
        /* the parse shows the value (numbers as given, names as parsed), or
         * the flag's value was refused while parsing (e.g. --class for an
         * unconditional model): the same message for every form */
        const char *shown = !strcmp(rows[i].name, "--sampler")           ? "dpmpp_2m"
                            : !strcmp(rows[i].name, "--sampling-method") ? "dpmpp_2s_a"
                            : !strcmp(rows[i].name, "--api-key")         ? "(given)" /* not echoed */
                                                                         : v;
        if (strstr(outs[0], "options:"))
            ck_assert_msg(strstr(outs[0], shown), "%s: the parse does not show '%s':\n%s", eq, shown, outs[0]);
        else
            ck_assert_msg(rcs[0] == 2 && strstr(outs[0], rows[i].name), "%s: status %d:\n%s", eq, rcs[0], outs[0]);
        for (int k = 0; k < nf; k++) free(outs[k]);
    }
    ck_assert_msg(n_value >= 5, "%s: %d flags with values", exe, n_value);
    free(rows);
}

START_TEST(test_t2i_value_forms) { check_value_forms(t2i(), t2i_model()); }
END_TEST

START_TEST(test_smp_value_forms) { check_value_forms(smp(), smp_model()); }
END_TEST

/* Does text hold word (not inside a longer flag: "-m" is not in "--model")? */
static int has_word(const char *text, const char *word) {
    size_t n = strlen(word);
    for (const char *p = strstr(text, word); p; p = strstr(p + 1, word)) {
        char before = p == text ? ' ' : p[-1], after = p[n];
        int inside = (before >= 'a' && before <= 'z') || (before >= 'A' && before <= 'Z') || before == '-' ||
                     (after >= 'a' && after <= 'z') || (after >= 'A' && after <= 'Z') || after == '-' ||
                     (after >= '0' && after <= '9');
        if (!inside) return 1;
    }
    return 0;
}

/* --help names every flag of the table, long and short. */
static void check_help_lists_all(const char *exe) {
    Row *rows;
    int n = list_options(exe, &rows);
    char *help;
    ck_assert_int_eq(run_prog(exe, &help, "--help", NULL), 0);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(has_word(help, rows[i].name), "%s --help does not list %s:\n%s", exe, rows[i].name, help);
        if (rows[i].shrt[1])
            ck_assert_msg(has_word(help, rows[i].shrt), "%s --help does not list %s (%s):\n%s", exe, rows[i].shrt,
                          rows[i].name, help);
    }
    free(help);
    free(rows);
}

START_TEST(test_t2i_help_lists_all) { check_help_lists_all(t2i()); }
END_TEST

START_TEST(test_smp_help_lists_all) { check_help_lists_all(smp()); }
END_TEST

/* The PNG's `parameters`, parsed as the webui does. */
static void png_params(const char *png, LdmInfotextParsed *p) {
    char *text = NULL;
    ck_assert_msg(ldm_png_read_text(png, "parameters", &text) == 1, "%s: no parameters chunk", png);
    ck_assert_int_eq(ldm_infotext_parse(text, p), 0);
    free(text);
}

static void expect_param(const LdmInfotextParsed *p, const char *key, const char *want) {
    const char *v = ldm_infotext_get(p, key);
    ck_assert_msg(v && !strcmp(v, want), "%s: '%s', expected '%s'", key, v ? v : "(absent)", want);
}

/* -s -1: a seed is drawn, printed, and recorded in the PNG. */
START_TEST(test_random_seed) {
    unsigned long long seeds[2];
    for (int k = 0; k < 2; k++) {
        const char *png = test_tmp("random-%d.png", k);
        char *out;
        int rc = run_prog(t2i(), &out, "-m", t2i_model(), "-p", "fox", "-s", "-1", "--steps", "2", "-o", png, NULL);
        ck_assert_msg(rc == 0, "status %d:\n%s", rc, out);
        const char *s = strstr(out, ": seed ");
        ck_assert_msg(s && sscanf(s, ": seed %llu (random", &seeds[k]) == 1, "no seed printed:\n%s", out);
        ck_assert(seeds[k] < 4294967294ull);
        LdmInfotextParsed p;
        png_params(png, &p);
        char want[32];
        snprintf(want, sizeof want, "%llu", seeds[k]);
        expect_param(&p, "Seed", want);
        ldm_infotext_parsed_free(&p);
        /* the same seed given: the same image */
        const char *again = test_tmp("random-%d-again.png", k);
        char *out2;
        rc = run_prog(t2i(), &out2, "-m", t2i_model(), "-p", "fox", "-s", want, "--steps", "2", "-o", again, NULL);
        ck_assert_msg(rc == 0, "status %d:\n%s", rc, out2);
        ck_assert_msg(same_file(png, again), "-s -1 (seed %s) and -s %s differ", want, want);
        free(out2);
        free(out);
    }
    ck_assert_msg(seeds[0] != seeds[1], "two random seeds both %llu", seeds[0]);
}
END_TEST

/* -b 3: output.png, output_2.png, output_3.png with seeds N, N + 1, N + 2,
 * each the image of a single run with its seed; also --save-latent's names.
 * With no -o: ./output.png (run in a directory of its own). */
START_TEST(test_batch_count) {
    const char *dir = test_tmp("batch");
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    char *out;
    char *exe_abs = realpath(t2i(), NULL), *model_abs = realpath(t2i_model(), NULL);
    ck_assert(exe_abs && model_abs);
    char *argv[] = {"sh", "-c", "cd \"$0\" && exec \"$@\"", (char *)dir, exe_abs, "-m", model_abs,
                    "-p", "fox", "-s", "20", "--steps", "2", "-b", "3", "--save-latent", "lat.safetensors", NULL};
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "status %d:\n%s", rc, out);
    free(out);
    free(exe_abs);
    free(model_abs);
    const char *names[3] = {"output.png", "output_2.png", "output_3.png"};
    const char *lats[3] = {"lat.safetensors", "lat_2.safetensors", "lat_3.safetensors"};
    for (int i = 0; i < 3; i++) {
        char png[600], lat[600], seed[16], single[600];
        snprintf(png, sizeof png, "%s/%s", dir, names[i]);
        snprintf(lat, sizeof lat, "%s/%s", dir, lats[i]);
        ck_assert_msg(test_exists(png) && test_exists(lat), "%s or %s missing", png, lat);
        snprintf(seed, sizeof seed, "%d", 20 + i);
        LdmInfotextParsed p;
        png_params(png, &p);
        expect_param(&p, "Seed", seed);
        ldm_infotext_parsed_free(&p);
        snprintf(single, sizeof single, "%s/single-%d.png", test_dir, i);
        rc = run_prog(t2i(), &out, "-m", t2i_model(), "-p", "fox", "-s", seed, "--steps", "2", "-o", single, NULL);
        ck_assert_msg(rc == 0, "status %d:\n%s", rc, out);
        free(out);
        ck_assert_msg(same_file(png, single), "%s differs from a run with -s %s", names[i], seed);
    }
    char extra[600];
    snprintf(extra, sizeof extra, "%s/output_4.png", dir);
    ck_assert(!test_exists(extra));
    /* -b with --prompts: refused */
    rc = run_prog(t2i(), &out, "-m", t2i_model(), "--prompts", "/nonexistent", "-b", "2", "-o", dir, NULL);
    ck_assert_msg(rc == 2 && strstr(out, "--batch-count applies to --prompt"), "status %d:\n%s", rc, out);
    free(out);
}
END_TEST

START_TEST(test_versions) {
    char *out;
    ck_assert_int_eq(run_prog(t2i(), &out, "--version", NULL), 0);
    ck_assert_msg(strstr(out, "txt2img-test-sd1-tiny (ldmc, git ") == out && strstr(out, "built for: ldmc ") &&
                      strstr(out, "sd1-tiny/config.yaml") && strstr(out, "sizes (width x height): 128x128") &&
                      strstr(out, "TAESD: yes"),
                  "--version:\n%s", out);
    free(out);
    char ldmc[400], tok[400];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    snprintf(tok, sizeof tok, "%s/ldm-tokenize", test_build_dir());
    ck_assert_int_eq(run_prog(ldmc, &out, "--version", NULL), 0);
    ck_assert_msg(!strncmp(out, "ldmc ", 5) && strstr(out, "(git "), "ldmc --version:\n%s", out);
    free(out);
    ck_assert_int_eq(run_prog(tok, &out, "--version", NULL), 0);
    ck_assert_msg(strstr(out, "ldm-tokenize (ldmc, git "), "ldm-tokenize --version:\n%s", out);
    free(out);
    /* -v: the version, the threads and the options before the run */
    const char *png = test_tmp("verbose.png");
    int rc = run_prog(t2i(), &out, "-m", t2i_model(), "-p", "fox", "--steps", "2", "-v", "-t", "1", "-o", png, NULL);
    ck_assert_msg(rc == 0 && strstr(out, "(ldmc, git ") && strstr(out, "1 OpenMP threads") &&
                      strstr(out, "  threads:") && atoi(strstr(out, "  threads:") + 10) == 1,
                  "status %d:\n%s", rc, out);
    free(out);
}
END_TEST

START_TEST(test_smp_version_metadata) {
    char *out;
    ck_assert_int_eq(run_prog(smp(), &out, "--version", NULL), 0);
    ck_assert_msg(strstr(out, "sample-test-vq4-tiny (ldmc, git ") == out && strstr(out, "(unconditional)") &&
                      strstr(out, "sizes (width x height): 64x64"),
                  "--version:\n%s", out);
    free(out);
    const char *png = test_tmp("smp.png"), *bare = test_tmp("smp-bare.png");
    int rc = run_prog(smp(), &out, "-m", smp_model(), "-s", "5", "--steps", "2", "--eta=0.5", "-o", png, NULL);
    ck_assert_msg(rc == 0, "status %d:\n%s", rc, out);
    free(out);
    LdmInfotextParsed p;
    png_params(png, &p);
    ck_assert_str_eq(p.prompt, "");
    ck_assert_ptr_null(ldm_infotext_get(&p, "Class"));
    expect_param(&p, "Steps", "2");
    expect_param(&p, "Sampler", "DDIM");
    expect_param(&p, "CFG scale", "1.0");
    expect_param(&p, "Seed", "5");
    expect_param(&p, "Size", "64x64");
    expect_param(&p, "Model", "model");
    expect_param(&p, "Eta DDIM", "0.5");
    expect_param(&p, "RNG", "CPU");
    const char *h = ldm_infotext_get(&p, "Model hash");
    ck_assert_msg(h && strlen(h) == 10, "Model hash '%s'", h ? h : "(absent)");
    ldm_infotext_parsed_free(&p);
    /* --no-metadata: the same pixels, no chunk */
    rc = run_prog(smp(), &out, "--model", smp_model(), "--seed=5", "--steps", "2", "--eta", "0.5", "--no-metadata",
                  "-o", bare, NULL);
    ck_assert_msg(rc == 0, "status %d:\n%s", rc, out);
    free(out);
    char *text = NULL;
    ck_assert_int_eq(ldm_png_read_text(bare, "parameters", &text), 0);
    uint8_t *a, *b;
    int wa, ha, wb, hb;
    ck_assert(ldm_png_read_rgb8(png, &a, &wa, &ha) == 0 && ldm_png_read_rgb8(bare, &b, &wb, &hb) == 0);
    ck_assert(wa == wb && ha == hb && memcmp(a, b, (size_t)wa * ha * 3) == 0);
    free(a);
    free(b);
    /* -s -1 */
    const char *rnd = test_tmp("smp-random.png");
    rc = run_prog(smp(), &out, "-m", smp_model(), "-s", "-1", "--steps", "2", "-o", rnd, NULL);
    unsigned long long seed = 0;
    const char *s = strstr(out, ": seed ");
    ck_assert_msg(rc == 0 && s && sscanf(s, ": seed %llu (random", &seed) == 1, "status %d:\n%s", rc, out);
    png_params(rnd, &p);
    char want[32];
    snprintf(want, sizeof want, "%llu", seed);
    expect_param(&p, "Seed", want);
    ldm_infotext_parsed_free(&p);
    free(out);
}
END_TEST

/* Bad values: status 2, a message naming the flag (and listing what is accepted). */
static const struct {
    const char *args[5];
    const char *msgs[3];
} k_bad[] = {
    {{"-t", "0"}, {"-t: expected a thread count from 1 to 4096"}},
    {{"--threads=-3"}, {"--threads: expected a thread count"}},
    {{"-b", "0"}, {"-b: expected an image count from 1"}},
    {{"--batch-count", "x"}, {"--batch-count: expected an image count"}},
    {{"--sampling-method", "ipndm"},
     {"stable-diffusion.cpp's ipndm is not implemented here", "accepted: euler, euler_a, heun, dpm2, dpm++2s_a, "
                                                               "dpm++2m, dpm++2m_sde, lcm, tcd",
      "ddim, plms"}},
    {{"--sampling-method=ddim_trailing"}, {"ddim_trailing is not implemented", "accepted: euler"}},
    {{"--sampling-method", "nope"}, {"unknown sampler 'nope'", "accepted: euler, euler_a"}},
    {{"--scheduler", "gits"}, {"gits schedule is not implemented", "accepted: discrete, karras, exponential, ays"}},
    {{"--scheduler", "cosine"}, {"--scheduler: unknown schedule 'cosine'", "accepted: discrete"}},
    {{"-s", "-2"}, {"-s: expected an integer N >= 0, or -1 for a random seed"}},
    {{"-s"}, {"-s: expected a value after it"}},
    {{"--seed"}, {"--seed: expected a value after it"}},
    {{"--nope", "1"}, {"unknown option '--nope'"}},
    {{"-Z"}, {"unknown option '-Z'"}},
    {{"--quiet=yes"}, {"--quiet takes no value"}},
    {{"--pre", "x"}, {"ambiguous option '--pre'"}},
    {{"stray"}, {"unexpected argument 'stray'"}},
    {{"-W", "64"}, {"64x128 (width x height) was not compiled", "only 128x128"}},
    {{"-H", "64"}, {"128x64 (width x height) was not compiled", "SIZES=\"128x128 64x128\""}},
};

START_TEST(test_bad_values) {
    const char *const *a = k_bad[_i].args;
    const char *png = test_tmp("bad-%d.png", _i);
    char *out;
    int rc = run_prog(t2i(), &out, "-m", t2i_model(), "-p", "x", "-o", png, a[0], a[1], a[2], a[3], a[4], NULL);
    ck_assert_msg(rc == 2, "%s: status %d:\n%s", a[0], rc, out);
    for (int k = 0; k < 3 && k_bad[_i].msgs[k]; k++)
        ck_assert_msg(strstr(out, k_bad[_i].msgs[k]), "%s: no '%s' in:\n%s", a[0], k_bad[_i].msgs[k], out);
    ck_assert(!test_exists(png));
    free(out);
}
END_TEST

/* ------------------------------------------------------------------------
 * ldmc and ldm-tokenize: --flag=value as --flag value
 * ------------------------------------------------------------------------ */

static const char *tool(const char *name) {
    static char ring[4][400];
    static int k;
    char *b = ring[k++ % 4];
    snprintf(b, 400, "%s/%s", test_build_dir(), name);
    return b;
}

START_TEST(test_tokenize_forms) {
    char *a, *b, *c;
    const char *vocab = test_shared("clip/bpe_simple_vocab_16e6.txt.gz");
    char veq[600];
    snprintf(veq, sizeof veq, "--vocab=%s", vocab);
    ck_assert_int_eq(run_prog(tool("ldm-tokenize"), &a, veq, "--context=5", "--count", "a red fox", NULL), 0);
    ck_assert_int_eq(run_prog(tool("ldm-tokenize"), &b, "--vocab", vocab, "--context", "5", "--count", "a red fox", NULL),
                     0);
    ck_assert_int_eq(run_prog(tool("ldm-tokenize"), &c, "a red fox", "--count", "--context", "5", NULL), 0);
    ck_assert_str_eq(a, b);
    ck_assert_str_eq(a, c);
    ck_assert_str_eq(a, "49406 320 736 3240 49407\n3\n");
    free(a);
    free(b);
    free(c);
    ck_assert_int_eq(run_prog(tool("ldm-tokenize"), &a, "--context", NULL), 2);
    ck_assert_msg(strstr(a, "--context: expected a value after it"), "%s", a);
    free(a);
    ck_assert_int_eq(run_prog(tool("ldm-tokenize"), &a, "--", "--count", NULL), 0);
    ck_assert_msg(!strchr(a, '\n') || strchr(a, '\n')[1] == 0, "'--count' after --: a prompt:\n%s", a);
    free(a);
}
END_TEST

/* ldmc GRAPH, pipeline, convert, randckpt: both forms give the same files. */
START_TEST(test_ldmc_forms) {
    const char *cfg = test_shared("goldens/sd1-tiny/config.yaml");
    char *out;
    /* ldmc GRAPH: --config, -D/--define, --symbol, -o/--output, --dot, --plot-memory */
    const char *graph = "models/taesd/taesd_decoder.graph"; /* the tests run in the top directory */
    for (int k = 0; k < 2; k++) {
        const char *c = test_tmp("g%d.c", k), *dot = test_tmp("g%d.dot", k), *svg = test_tmp("g%d.svg", k);
        int rc;
        if (k == 0) {
            char o[600], d[600], s[600];
            snprintf(o, sizeof o, "--output=%s", c);
            snprintf(d, sizeof d, "--dot=%s", dot);
            snprintf(s, sizeof s, "--plot-memory=%s", svg);
            rc = run_prog(tool("ldmc"), &out, graph, "--define=H=64", "-DW=64", "--define", "B=1", "--symbol=tiny", o,
                          d, s, NULL);
        } else {
            rc = run_prog(tool("ldmc"), &out, "-D", "H=64", "--define", "W=64", "-D", "B=1", graph, "--symbol", "tiny",
                          "-o", c, "--dot", dot, "--plot-memory", svg, NULL);
        }
        ck_assert_msg(rc == 0, "ldmc form %d: status %d:\n%s", k, rc, out);
        free(out);
    }
    ck_assert(same_file(test_tmp("g0.c"), test_tmp("g1.c")));
    ck_assert(same_file(test_tmp("g0.dot"), test_tmp("g1.dot")));
    ck_assert(same_file(test_tmp("g0.svg"), test_tmp("g1.svg")));
    /* ldmc pipeline */
    char ceq[600], oeq[600];
    snprintf(ceq, sizeof ceq, "--config=%s", cfg);
    snprintf(oeq, sizeof oeq, "--output=%s", test_tmp("p0.c"));
    ck_assert_int_eq(run_prog(tool("ldmc"), &out, "pipeline", ceq, "--size=128x128", "--size=64x128",
                              "--nets=clip_text,unet", oeq, NULL), 0);
    free(out);
    ck_assert_int_eq(run_prog(tool("ldmc"), &out, "pipeline", "--config", cfg, "--size", "128x128", "--size", "64x128",
                              "--nets", "clip_text,unet", "-o", test_tmp("p1.c"), NULL), 0);
    free(out);
    ck_assert(same_file(test_tmp("p0.c"), test_tmp("p1.c")));
    /* ldmc convert */
    ck_assert_int_eq(run_prog(tool("ldmc"), &out, "convert", "--dtype=f16", t2i_model(), test_tmp("c0.safetensors"),
                              NULL), 0);
    free(out);
    ck_assert_int_eq(run_prog(tool("ldmc"), &out, "convert", t2i_model(), "--dtype", "f16", test_tmp("c1.safetensors"),
                              NULL), 0);
    free(out);
    ck_assert(same_file(test_tmp("c0.safetensors"), test_tmp("c1.safetensors")));
    /* ldmc randckpt */
    const char *cin = "tests/sample/ldm-cin-tiny.yaml";
    snprintf(ceq, sizeof ceq, "--config=%s", cin);
    snprintf(oeq, sizeof oeq, "--output=%s", test_tmp("r0.safetensors"));
    ck_assert_int_eq(run_prog(tool("ldmc"), &out, "randckpt", ceq, "--define=H=32", "-DW=48", "--seed=5", "--dtype=f16",
                              oeq, "models/ldm/class_embed.graph", NULL), 0);
    free(out);
    ck_assert_int_eq(run_prog(tool("ldmc"), &out, "randckpt", "models/ldm/class_embed.graph", "--config", cin, "-D",
                              "H=32", "-D", "W=48", "--seed", "5", "--dtype", "f16", "-o", test_tmp("r1.safetensors"),
                              NULL), 0);
    free(out);
    ck_assert(same_file(test_tmp("r0.safetensors"), test_tmp("r1.safetensors")));
    /* bad usage names the option, status 2, for every subcommand */
    const char *subs[] = {"convert", "merge", "randckpt", "pipeline"};
    for (int i = 0; i < 4; i++) {
        int rc = run_prog(tool("ldmc"), &out, subs[i], "--bogus", NULL);
        ck_assert_msg(rc == 2 && strstr(out, "unknown option '--bogus'"), "%s: status %d:\n%s", subs[i], rc, out);
        free(out);
        rc = run_prog(tool("ldmc"), &out, subs[i], "--help", NULL);
        ck_assert_msg(rc == 0 && strstr(out, "usage: ldmc"), "%s --help: status %d:\n%s", subs[i], rc, out);
        free(out);
    }
}
END_TEST

Suite *suite_cli(void) {
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("args");
    tcase_add_unchecked_fixture(tc, setup_dir, teardown_nothing);
    tcase_add_test(tc, test_args_forms);
    tcase_add_loop_test(tc, test_args_errors, 0, (int)(sizeof k_args_bad / sizeof k_args_bad[0]));
    tcase_add_test(tc, test_args_helpers);
    suite_add_tcase(s, tc);

    tc = tcase_create("txt2img");
    tcase_add_unchecked_fixture(tc, setup_t2i, teardown_nothing);
    tcase_set_timeout(tc, CLI_SAN ? 3000 : 900);
    tcase_add_loop_test(tc, test_sdcpp_spellings, 0, N_SPELLINGS);
    tcase_add_test(tc, test_t2i_value_forms);
    tcase_add_test(tc, test_t2i_help_lists_all);
    tcase_add_test(tc, test_random_seed);
    tcase_add_test(tc, test_batch_count);
    tcase_add_test(tc, test_versions);
    tcase_add_loop_test(tc, test_bad_values, 0, (int)(sizeof k_bad / sizeof k_bad[0]));
    suite_add_tcase(s, tc);

    tc = tcase_create("sample");
    tcase_add_unchecked_fixture(tc, setup_smp, teardown_nothing);
    tcase_set_timeout(tc, CLI_SAN ? 3000 : 900);
    tcase_add_test(tc, test_smp_value_forms);
    tcase_add_test(tc, test_smp_help_lists_all);
    tcase_add_test(tc, test_smp_version_metadata);
    suite_add_tcase(s, tc);

    tc = tcase_create("tools");
    tcase_add_unchecked_fixture(tc, setup_dir, teardown_nothing);
    tcase_set_timeout(tc, CLI_SAN ? 1200 : 300);
    tcase_add_test(tc, test_tokenize_forms);
    tcase_add_test(tc, test_ldmc_forms);
    suite_add_tcase(s, tc);
    return s;
}
