/*
 * ldm_tokenize.c - build/ldm-tokenize: prints the CLIP token ids of a prompt
 * with the Stable Diffusion v1 conventions (77 ids: SOT, up to 75 BPE ids,
 * EOT, EOT padding), one line, separated by single spaces.
 *
 *   build/ldm-tokenize "a cat"          (the vocabulary compiled in; --vocab FILE for another copy)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "tokenizer.h"
#include "util.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ldm-tokenize [--vocab FILE] [--context N] [--count] PROMPT\n"
            "\n"
            "Prints the CLIP token ids of PROMPT (UTF-8) on one line: <|startoftext|>,\n"
            "the first N-2 BPE ids, <|endoftext|>, then <|endoftext|> padding to N ids.\n"
            "\n"
            "  --vocab FILE   bpe_simple_vocab_16e6.txt.gz (gzip) of openai/CLIP (default: the copy compiled in)\n"
            "  --context N    number of ids (default %d, the SD v1 text encoder)\n"
            "  --count        also print the number of BPE tokens before truncation\n"
            "                 on a second line\n"
            "  --help         this message\n"
            "  --version      print the version\n"
            "  --             end of options (for a prompt that starts with '-')\n"
            "Every flag takes its value as --flag VALUE or --flag=VALUE.\n",
            CLIP_CONTEXT_LENGTH);
}

/* Options of one run. */
typedef struct Options {
    const char *vocab;  /* --vocab path */
    const char *prompt; /* the one positional argument */
    int context;        /* --context */
    int count;          /* --count given */
} Options;

/* The flags, one row each (runtime/args.h). */
static const LdmOption k_options[] = {
    {"vocab", 0, LDM_ARG_REQUIRED, 'v'}, {"context", 0, LDM_ARG_REQUIRED, 'c'}, {"count", 0, LDM_ARG_NONE, 'n'},
    {"help", 'h', LDM_ARG_NONE, 'h'},    {"version", 0, LDM_ARG_NONE, 'V'},
};

/* Fills o from argv; returns 0, 1 for --help, 2 for --version, or -1
 * (ldm_fail) on bad usage. */
static int parse_args(int argc, char **argv, Options *o) {
    o->vocab = NULL;
    o->prompt = NULL;
    o->context = CLIP_CONTEXT_LENGTH;
    o->count = 0;
    LdmArg *args = NULL;
    int n_args = 0, first = argc, rc = 0;
    if (ldm_args_collect(argc, argv, k_options, (int)(sizeof k_options / sizeof *k_options), &args, &n_args, &first) != 0)
        rc = -1;
    for (int i = 0; i < n_args && rc == 0; i++) {
        const char *v = args[i].value;
        switch (args[i].opt->id) {
        case 'h': rc = 1; break;
        case 'V': rc = 2; break;
        case 'n': o->count = 1; break;
        case 'v': o->vocab = v; break;
        case 'c': {
            char *end;
            long n = strtol(v, &end, 10);
            if (*v == 0 || *end || n < 2 || n > 100000)
                rc = ldm_fail("--context: expected an integer 2..100000, got '%s'", v);
            else o->context = (int)n;
            break;
        }
        }
    }
    free(args);
    if (rc != 0) return rc;
    if (first < argc - 1) return ldm_fail("expected one prompt, got a second one: '%s'", argv[first + 1]);
    if (first >= argc) return ldm_fail("missing PROMPT (use \"\" for the empty prompt)");
    o->prompt = argv[first];
    return 0;
}

int main(int argc, char **argv) {
    Options o;
    int rc = parse_args(argc, argv, &o);
    if (rc == 1) {
        usage(stdout);
        return 0;
    }
    if (rc == 2) {
        printf("ldm-tokenize (ldmc, git %s)\n", ldm_version());
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "ldm-tokenize: %s\n", ldm_last_error());
        usage(stderr);
        return 2;
    }
    ClipTokenizer *t = o.vocab ? clip_tokenizer_load(o.vocab) : clip_tokenizer_load_builtin();
    if (!t) {
        fprintf(stderr, "ldm-tokenize: %s\n", ldm_last_error());
        return 1;
    }
    int32_t *ids = ldm_xmalloc((size_t)o.context * sizeof *ids);
    int n_bpe = 0;
    if (clip_tokenize_ctx(t, o.prompt, o.context, ids, &n_bpe)) {
        fprintf(stderr, "ldm-tokenize: %s\n", ldm_last_error());
        free(ids);
        clip_tokenizer_free(t);
        return 1;
    }
    for (int i = 0; i < o.context; i++) printf(i ? " %d" : "%d", (int)ids[i]);
    printf("\n");
    if (o.count) printf("%d\n", n_bpe);
    free(ids);
    clip_tokenizer_free(t);
    return fflush(stdout) == 0 ? 0 : 1;
}
