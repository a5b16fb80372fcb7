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
            "  --             end of options (for a prompt that starts with '-')\n",
            CLIP_CONTEXT_LENGTH);
}

/* Options of one run. */
typedef struct Options {
    const char *vocab;  /* --vocab path */
    const char *prompt; /* the one positional argument */
    int context;        /* --context */
    int count;          /* --count given */
} Options;

/* Fills o from argv; returns 0, 1 for --help, or -1 (ldm_fail) on bad usage. */
static int parse_args(int argc, char **argv, Options *o) {
    o->vocab = NULL;
    o->prompt = NULL;
    o->context = CLIP_CONTEXT_LENGTH;
    o->count = 0;
    int options_done = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (options_done || a[0] != '-' || a[1] == 0) {
            if (o->prompt) return ldm_fail("expected one prompt, got a second one: '%s'", a);
            o->prompt = a;
        } else if (strcmp(a, "--") == 0) {
            options_done = 1;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            return 1;
        } else if (strcmp(a, "--count") == 0) {
            o->count = 1;
        } else if (strcmp(a, "--vocab") == 0 || strcmp(a, "--context") == 0) {
            if (i + 1 >= argc) return ldm_fail("%s: expected a value after it", a);
            const char *v = argv[++i];
            if (a[2] == 'v') {
                o->vocab = v;
            } else {
                char *end;
                long n = strtol(v, &end, 10);
                if (*v == 0 || *end || n < 2 || n > 100000)
                    return ldm_fail("--context: expected an integer 2..100000, got '%s'", v);
                o->context = (int)n;
            }
        } else {
            return ldm_fail("unknown option '%s'", a);
        }
    }
    if (!o->prompt) return ldm_fail("missing PROMPT (use \"\" for the empty prompt)");
    return 0;
}

int main(int argc, char **argv) {
    Options o;
    int rc = parse_args(argc, argv, &o);
    if (rc == 1) {
        usage(stdout);
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
