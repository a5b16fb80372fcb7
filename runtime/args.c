/*
 * args.c - getopt_long over a table of flags, the build's version, the
 * random seed of --seed -1 (args.h).
 */
#define _GNU_SOURCE
#include "args.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "util.h"
#include "version.h" /* LDM_GIT_VERSION, written by make at each build ($(BUILD)/gen) */

/* getopt_long's val for row i of the table: above every char */
#define LONG_BASE 256

/* "--name" of a row, or the text typed (up to '=') when there is no row */
static void flag_name(char *buf, size_t size, const LdmOption *o, const char *typed) {
    if (o) snprintf(buf, size, "--%s", o->name);
    else if (typed) snprintf(buf, size, "%.*s", (int)strcspn(typed, "="), typed);
    else snprintf(buf, size, "?");
}

int ldm_args_parse(int argc, char **argv, const LdmOption *opts, int n, LdmOptionFn fn, void *ctx, int *first_pos) {
    struct option *lo = ldm_xcalloc((size_t)n + 1, sizeof *lo);
    char *shorts = ldm_xmalloc((size_t)3 * n + 2);
    size_t k = 0;
    shorts[k++] = ':'; /* ':' for a missing value, '?' for the rest */
    for (int i = 0; i < n; i++) {
        lo[i].name = opts[i].name;
        lo[i].has_arg = opts[i].arg == LDM_ARG_REQUIRED   ? required_argument
                        : opts[i].arg == LDM_ARG_OPTIONAL ? optional_argument
                                                          : no_argument;
        lo[i].flag = NULL;
        lo[i].val = LONG_BASE + i;
        if (opts[i].short_name) {
            shorts[k++] = (char)opts[i].short_name;
            if (opts[i].arg == LDM_ARG_REQUIRED) shorts[k++] = ':';
        }
    }
    shorts[k] = 0;
    int rc = 0, saved_opterr = opterr;
    opterr = 0;
    optind = 0; /* glibc: start over (a program may parse twice, the tests many times) */
    char flag[128];
    for (;;) {
        int li = -1;
        optopt = 0;
        int c = getopt_long(argc, argv, shorts, lo, &li);
        if (c == -1) break;
        const LdmOption *o = NULL;
        if (c >= LONG_BASE) {
            o = &opts[c - LONG_BASE];
        } else if (c != '?' && c != ':') {
            for (int i = 0; i < n && !o; i++)
                if (opts[i].short_name == c) o = &opts[i];
        }
        if (o) {
            /* as typed: "-H" or "--height" (an abbreviation: the whole name) */
            if (c < LONG_BASE) snprintf(flag, sizeof flag, "-%c", c);
            else flag_name(flag, sizeof flag, o, NULL);
            rc = fn(ctx, o, flag, o->arg == LDM_ARG_NONE ? NULL : optarg);
            if (rc != 0) break;
            continue;
        }
        /* errors: name the option */
        const char *typed = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
        const LdmOption *known = NULL;
        if (optopt >= LONG_BASE && optopt < LONG_BASE + n) known = &opts[optopt - LONG_BASE];
        else if (optopt > 0)
            for (int i = 0; i < n && !known; i++)
                if (opts[i].short_name == optopt) known = &opts[i];
        if (c == ':') {
            if (known && optopt < LONG_BASE) snprintf(flag, sizeof flag, "-%c", optopt);
            else if (known) flag_name(flag, sizeof flag, known, NULL);
            else flag_name(flag, sizeof flag, NULL, typed);
            rc = ldm_fail("%s: expected a value after it", flag);
        } else if (known && optopt >= LONG_BASE) {
            rc = ldm_fail("--%s takes no value (got '%s')", known->name, typed);
        } else if (optopt > 0) {
            rc = ldm_fail("unknown option '-%c'", optopt);
        } else {
            /* an unknown long option, or an ambiguous abbreviation */
            size_t len = strcspn(typed, "=");
            char cands[512] = "";
            int nc = 0;
            if (!strncmp(typed, "--", 2) && len > 2)
                for (int i = 0; i < n; i++)
                    if (!strncmp(opts[i].name, typed + 2, len - 2)) {
                        size_t m = strlen(cands);
                        snprintf(cands + m, sizeof cands - m, "%s--%s", nc ? ", " : "", opts[i].name);
                        nc++;
                    }
            if (nc > 1) rc = ldm_fail("ambiguous option '%.*s' (%s)", (int)len, typed, cands);
            else rc = ldm_fail("unknown option '%.*s'", (int)len, typed);
        }
        break;
    }
    if (first_pos) *first_pos = optind;
    opterr = saved_opterr;
    free(lo);
    free(shorts);
    return rc;
}

void ldm_args_list(FILE *fp, const LdmOption *opts, int n) {
    for (int i = 0; i < n; i++) {
        char s[4] = "-";
        if (opts[i].short_name) snprintf(s, sizeof s, "-%c", opts[i].short_name);
        fprintf(fp, "--%s\t%s\t%s\n", opts[i].name, s,
                opts[i].arg == LDM_ARG_REQUIRED ? "value" : opts[i].arg == LDM_ARG_OPTIONAL ? "optional" : "none");
    }
}

const char *ldm_version(void) { return LDM_GIT_VERSION; }

int ldm_random_seed(uint64_t *seed) {
    uint64_t r = 0;
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t k = getrandom((char *)&r + got, sizeof r - got, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
    }
    if (got < sizeof r) {
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        got = 0;
        while (fd >= 0 && got < sizeof r) {
            ssize_t k = read(fd, (char *)&r + got, sizeof r - got);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            got += (size_t)k;
        }
        if (fd >= 0) close(fd);
        if (got < sizeof r) return ldm_fail("--seed -1: no random numbers from getrandom(2) or /dev/urandom");
    }
    /* random.randrange(4294967294): the bias of a 64-bit draw is below 2^-32 */
    *seed = r % 4294967294u;
    return 0;
}

int ldm_parse_seed(const char *flag, const char *v, uint64_t *seed, int *random) {
    *random = 0;
    if (!strcmp(v, "-1")) {
        *random = 1;
        *seed = 0;
        return 0;
    }
    char *end;
    errno = 0;
    if (v[0] < '0' || v[0] > '9')
        return ldm_fail("%s: expected an integer N >= 0, or -1 for a random seed, got '%s'", flag, v);
    unsigned long long s = strtoull(v, &end, 10);
    if (*end || errno)
        return ldm_fail("%s: expected an integer from 0 to 18446744073709551615 (or -1: random), got '%s'", flag, v);
    *seed = (uint64_t)s;
    return 0;
}

char *ldm_batch_name(const char *path, int i) {
    if (i == 0) return ldm_xstrdup(path);
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    const char *dot = strrchr(base, '.');
    if (!dot || dot == base) dot = base + strlen(base); /* no extension (".png" alone is a name) */
    return ldm_xasprintf("%.*s_%d%s", (int)(dot - path), path, i + 1, dot);
}

typedef struct Collect {
    LdmArg *v;
    int n;
} Collect;

static int collect_one(void *ctx, const LdmOption *opt, const char *flag, const char *value) {
    (void)flag;
    Collect *c = ctx;
    c->v = ldm_xrealloc(c->v, (size_t)(c->n + 1) * sizeof *c->v);
    c->v[c->n].opt = opt;
    c->v[c->n].value = value;
    c->n++;
    return 0;
}

int ldm_args_collect(int argc, char **argv, const LdmOption *opts, int n, LdmArg **out, int *n_out, int *first_pos) {
    Collect c = {ldm_xmalloc(sizeof *c.v), 0};
    int rc = ldm_args_parse(argc, argv, opts, n, collect_one, &c, first_pos);
    *out = c.v;
    *n_out = c.n;
    return rc;
}

const char *ldm_option_name(const LdmOption *o, char *buf, size_t size) {
    if (o->short_name) snprintf(buf, size, "-%c", o->short_name);
    else snprintf(buf, size, "--%s", o->name);
    return buf;
}
