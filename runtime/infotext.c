/*
 * infotext.c - the webui's infotext (see infotext.h) and file hashes.
 */
#include "infotext.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* ----------------------------------------------------------------------------
 * A growing string
 * ------------------------------------------------------------------------- */

typedef struct Str {
    char *s;
    size_t n, cap;
} Str;

static void str_addn(Str *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = ldm_xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void str_add(Str *b, const char *s) { str_addn(b, s, strlen(s)); }

/* ----------------------------------------------------------------------------
 * Formatting
 * ------------------------------------------------------------------------- */

const char *ldm_py_float(double x, char *buf, size_t size) {
    if (isnan(x)) return snprintf(buf, size, "nan"), buf;
    if (isinf(x)) return snprintf(buf, size, x > 0 ? "inf" : "-inf"), buf;
    /* repr: the shortest round-tripping digits; fixed notation for
     * 1e-4 <= |x| < 1e16, else d.ddde+XX; fixed always has a '.' */
    char digits[40];
    int p = 1;
    for (; p < 17; p++) {
        snprintf(digits, sizeof digits, "%.*e", p - 1, x);
        if (strtod(digits, NULL) == x) break;
    }
    snprintf(digits, sizeof digits, "%.*e", p - 1, x);
    char *e = strchr(digits, 'e');
    int exp10 = atoi(e + 1);
    double ax = fabs(x);
    if (x == 0.0 || (ax >= 1e-4 && ax < 1e16)) {
        /* digits after the point: p - 1 - exp10, at least 1 */
        int frac = p - 1 - exp10;
        if (frac < 1) frac = 1;
        snprintf(buf, size, "%.*f", frac, x);
    } else {
        /* mantissa without trailing zeros, exponent with a sign and 2+ digits */
        *e = 0;
        snprintf(buf, size, "%se%c%02d", digits, exp10 < 0 ? '-' : '+', abs(exp10));
    }
    return buf;
}

/* infotext_utils.quote: as is, or json.dumps(text, ensure_ascii=False). */
static void add_quoted(Str *b, const char *v) {
    if (!strpbrk(v, ",\n:")) {
        str_add(b, v);
        return;
    }
    str_add(b, "\"");
    for (const unsigned char *c = (const unsigned char *)v; *c; c++) {
        char esc[8];
        switch (*c) {
        case '"': str_add(b, "\\\""); break;
        case '\\': str_add(b, "\\\\"); break;
        case '\n': str_add(b, "\\n"); break;
        case '\r': str_add(b, "\\r"); break;
        case '\t': str_add(b, "\\t"); break;
        case '\b': str_add(b, "\\b"); break;
        case '\f': str_add(b, "\\f"); break;
        default:
            if (*c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *c);
                str_add(b, esc);
            } else {
                str_addn(b, (const char *)c, 1);
            }
        }
    }
    str_add(b, "\"");
}

static void add_param(Str *b, const char *key, const char *value) {
    if (b->n > 0) str_add(b, ", ");
    str_add(b, key);
    str_add(b, ": ");
    add_quoted(b, value);
}

/* Python's str.strip(): ASCII whitespace at both ends. */
static char *py_strip(char *s) {
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '\v' || *s == '\f') s++;
    size_t n = strlen(s);
    while (n > 0 && strchr(" \t\n\r\v\f", s[n - 1])) s[--n] = 0;
    return s;
}

char *ldm_infotext_format(const LdmInfotext *t) {
    Str p = {0};
    char num[64];
    str_add(&p, "");
    snprintf(num, sizeof num, "%d", t->steps);
    add_param(&p, "Steps", num);
    add_param(&p, "Sampler", ldm_sampler_webui_name(t->sampler));
    if (t->has_schedule) add_param(&p, "Schedule type", ldm_sigma_kind_webui_name(t->schedule));
    add_param(&p, "CFG scale", ldm_py_float(t->cfg_scale, num, sizeof num));
    snprintf(num, sizeof num, "%llu", (unsigned long long)t->seed);
    add_param(&p, "Seed", num);
    snprintf(num, sizeof num, "%dx%d", t->width, t->height);
    add_param(&p, "Size", num);
    if (t->model_hash) add_param(&p, "Model hash", t->model_hash);
    if (t->model) add_param(&p, "Model", t->model);
    if (t->vae_hash) add_param(&p, "VAE hash", t->vae_hash);
    if (t->vae) add_param(&p, "VAE", t->vae);
    if (t->denoising_strength >= 0)
        add_param(&p, "Denoising strength", ldm_py_float(t->denoising_strength, num, sizeof num));
    if (t->clip_skip > 1) {
        snprintf(num, sizeof num, "%d", t->clip_skip);
        add_param(&p, "Clip skip", num);
    }
    if (t->rng) add_param(&p, "RNG", t->rng);
    /* extra_generation_params, then Version */
    if (t->lora_hashes && *t->lora_hashes) add_param(&p, "Lora hashes", t->lora_hashes);
    if (t->ti_hashes && *t->ti_hashes) add_param(&p, "TI hashes", t->ti_hashes);
    for (const char *const *e = t->extra; e && e[0]; e += 2) add_param(&p, e[0], e[1] ? e[1] : "");
    if (t->version) add_param(&p, "Version", t->version);

    Str out = {0};
    str_add(&out, t->prompt ? t->prompt : "");
    if (t->negative && *t->negative) {
        str_add(&out, "\nNegative prompt: ");
        str_add(&out, t->negative);
    }
    str_add(&out, "\n");
    str_add(&out, p.s);
    free(p.s);
    /* f"{prompt_text}{negative_prompt_text}\n{generation_params_text}".strip() */
    char *s = py_strip(out.s);
    char *r = ldm_xstrdup(s);
    free(out.s);
    return r;
}

/* ----------------------------------------------------------------------------
 * Parsing (infotext_utils.parse_generation_parameters)
 * ------------------------------------------------------------------------- */

/* \w of Python's re on str: letters, digits, '_' and (here) every non-ASCII byte */
static int is_word(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}
static int is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* json.loads of a quoted value ("..."): 0, or -1 if it is not valid JSON */
static int json_unquote(const char *s, size_t n, char **out) {
    if (n < 2 || s[0] != '"' || s[n - 1] != '"') return -1;
    Str b = {0};
    str_add(&b, "");
    for (size_t i = 1; i + 1 < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c < 0x20) goto bad;
        if (c != '\\') {
            str_addn(&b, s + i, 1);
            continue;
        }
        if (++i + 1 >= n) goto bad;
        char d = s[i];
        const char *simple = d == '"' ? "\"" : d == '\\' ? "\\" : d == '/' ? "/" : d == 'n' ? "\n" : d == 'r' ? "\r"
                           : d == 't' ? "\t" : d == 'b' ? "\b" : d == 'f' ? "\f" : NULL;
        if (simple) {
            str_add(&b, simple);
            continue;
        }
        if (d != 'u' || i + 5 >= n) goto bad;
        unsigned cp = 0;
        for (int k = 1; k <= 4; k++) {
            char h = s[i + k];
            cp = cp * 16 + (unsigned)(h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                                      : h >= 'A' && h <= 'F' ? h - 'A' + 10 : 99);
            if (cp > 0xffff) goto bad;
        }
        i += 4;
        char u[4];
        int m;
        if (cp < 0x80) u[0] = (char)cp, m = 1;
        else if (cp < 0x800) u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f)), m = 2;
        else u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[2] = (char)(0x80 | (cp & 0x3f)), m = 3;
        str_addn(&b, u, (size_t)m);
    }
    *out = b.s;
    return 0;
bad:
    free(b.s);
    return -1;
}

/* re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line):
 * calls fn for each match; returns the count */
static int find_params(const char *line, LdmInfotextParsed *out) {
    int count = 0;
    size_t n = strlen(line), i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && is_space((unsigned char)line[j])) j++;
        size_t k0 = j;
        if (j < n && is_word((unsigned char)line[j])) {
            j++;
            while (j < n && (is_word((unsigned char)line[j]) || line[j] == ' ' || line[j] == '-' || line[j] == '/')) j++;
            if (j - k0 >= 2 && j < n && line[j] == ':') {
                size_t k1 = j;
                j++;
                while (j < n && is_space((unsigned char)line[j])) j++;
                size_t v0 = j, v1 = 0;
                int quoted = 0;
                if (j < n && line[j] == '"') {
                    /* "(?:\\.|[^\\"])+" then , or end */
                    size_t q = j + 1;
                    int len = 0;
                    while (q < n && line[q] != '"') {
                        if (line[q] == '\\') {
                            if (q + 1 >= n) break;
                            q += 2;
                        } else {
                            q++;
                        }
                        len++;
                    }
                    if (q < n && line[q] == '"' && len > 0 && (q + 1 == n || line[q + 1] == ',')) {
                        v1 = q + 1;
                        quoted = 1;
                    }
                }
                if (!quoted) {
                    v1 = v0;
                    while (v1 < n && line[v1] != ',') v1++;
                }
                if (out) {
                    char *key = ldm_xasprintf("%.*s", (int)(k1 - k0), line + k0);
                    char *val = NULL;
                    if (!(quoted && json_unquote(line + v0, v1 - v0, &val) == 0))
                        val = ldm_xasprintf("%.*s", (int)(v1 - v0), line + v0);
                    out->keys = ldm_xrealloc(out->keys, (size_t)(out->n + 1) * sizeof *out->keys);
                    out->values = ldm_xrealloc(out->values, (size_t)(out->n + 1) * sizeof *out->values);
                    out->keys[out->n] = key;
                    out->values[out->n] = val;
                    out->n++;
                }
                count++;
                i = v1 < n ? v1 + 1 : n + 1;
                continue;
            }
        }
        i++;
    }
    return count;
}

/* dst += ("" if dst == "" else "\n") + line */
static void append_line(char **dst, const char *line) {
    char *t = **dst ? ldm_xasprintf("%s\n%s", *dst, line) : ldm_xstrdup(line);
    free(*dst);
    *dst = t;
}

int ldm_infotext_parse(const char *text, LdmInfotextParsed *out) {
    memset(out, 0, sizeof *out);
    out->prompt = ldm_xstrdup("");
    out->negative = ldm_xstrdup("");
    char *copy = ldm_xstrdup(text);
    char *s = py_strip(copy);
    /* *lines, lastline = x.strip().split("\n") */
    char *last = strrchr(s, '\n');
    char *lastline = last ? last + 1 : s;
    char *body_end = last; /* the lines before lastline end here (NULL: none) */
    if (find_params(lastline, NULL) < 3) {
        /* lines.append(lastline); lastline = '' */
        body_end = lastline + strlen(lastline);
        lastline = NULL;
    }
    int done_with_prompt = 0;
    for (char *line = s; body_end && line <= body_end;) {
        char *nl = strchr(line, '\n');
        if (!nl || nl > body_end) nl = body_end;
        char saved = *nl;
        *nl = 0;
        char *l = py_strip(line);
        if (!strncmp(l, "Negative prompt:", 16)) {
            done_with_prompt = 1;
            l = py_strip(l + 16);
        }
        append_line(done_with_prompt ? &out->negative : &out->prompt, l);
        *nl = saved;
        if (nl == body_end) break;
        line = nl + 1;
    }
    if (lastline) find_params(lastline, out);
    free(copy);
    return 0;
}

void ldm_infotext_parsed_free(LdmInfotextParsed *p) {
    free(p->prompt);
    free(p->negative);
    for (int i = 0; i < p->n; i++) {
        free(p->keys[i]);
        free(p->values[i]);
    }
    free(p->keys);
    free(p->values);
    memset(p, 0, sizeof *p);
}

const char *ldm_infotext_get(const LdmInfotextParsed *p, const char *key) {
    for (int i = p->n - 1; i >= 0; i--) /* a repeated key: the last, as a dict keeps it */
        if (!strcmp(p->keys[i], key)) return p->values[i];
    return NULL;
}

/* ----------------------------------------------------------------------------
 * Hashes
 * ------------------------------------------------------------------------- */

int ldm_file_sha256(const char *path, int addnet, char hex[65]) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ldm_fail("%s: cannot open: %s", path, strerror(errno));
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    size_t cap = 1 << 20;
    uint8_t *buf = ldm_xmalloc(cap);
    int rc = 0;
    if (addnet) {
        /* skip the 8-byte length and the JSON header it gives */
        uint8_t h[8];
        if (read(fd, h, 8) != 8) {
            rc = ldm_fail("%s: too short for a safetensors file (no 8-byte header length)", path);
        } else {
            uint64_t n = 0;
            for (int i = 7; i >= 0; i--) n = n << 8 | h[i];
            if (lseek(fd, (off_t)(n + 8), SEEK_SET) < 0)
                rc = ldm_fail("%s: header length %llu beyond the file", path, (unsigned long long)n);
        }
    }
    while (rc == 0) {
        ssize_t r = read(fd, buf, cap);
        if (r < 0) {
            if (errno == EINTR) continue;
            rc = ldm_fail("%s: read error: %s", path, strerror(errno));
            break;
        }
        if (r == 0) break;
        sha256_update(&ctx, (size_t)r, buf);
    }
    close(fd);
    free(buf);
    if (rc != 0) return rc;
    uint8_t d[SHA256_DIGEST_SIZE];
    sha256_digest(&ctx, sizeof d, d);
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    return 0;
}

/* the cache file, or NULL (malloc'd) */
static char *hash_cache_path(void) {
    const char *e = getenv("LDM_HASH_CACHE");
    if (e && !strcmp(e, "off")) return NULL;
    if (e && *e) return ldm_xstrdup(e);
    const char *x = getenv("XDG_CACHE_HOME");
    if (x && *x) return ldm_xasprintf("%s/ldmc/hashes.txt", x);
    const char *h = getenv("HOME");
    if (h && *h) return ldm_xasprintf("%s/.cache/ldmc/hashes.txt", h);
    return NULL;
}

int ldm_model_hash(const char *path, char hex10[11]) {
    char full[65];
    if (ldm_model_sha256(path, full) != 0) return -1;
    memcpy(hex10, full, 10);
    hex10[10] = 0;
    return 0;
}

int ldm_model_sha256(const char *path, char full[65]) {
    struct stat st;
    if (stat(path, &st) != 0) return ldm_fail("%s: cannot stat: %s", path, strerror(errno));
    char *abs = realpath(path, NULL);
    if (!abs) abs = ldm_xstrdup(path);
    /* one line per file: size mtime_ns sha256 path */
    char key[128];
    snprintf(key, sizeof key, "%lld %lld.%09ld ", (long long)st.st_size, (long long)st.st_mtim.tv_sec,
             (long)st.st_mtim.tv_nsec);
    char *cache = hash_cache_path();
    memset(full, 0, 65);
    int found = 0;
    if (cache) {
        FILE *f = fopen(cache, "r");
        char line[4352];
        while (f && fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            size_t kl = strlen(key);
            if (strncmp(line, key, kl) != 0 || strlen(line) < kl + 65) continue;
            if (line[kl + 64] != ' ' || strcmp(line + kl + 65, abs) != 0) continue;
            memcpy(full, line + kl, 64);
            full[64] = 0;
            found = strspn(full, "0123456789abcdef") == 64; /* later lines win */
        }
        if (f) fclose(f);
    }
    int rc = 0;
    if (!found) {
        rc = ldm_file_sha256(path, 0, full);
        if (rc == 0 && cache && !strchr(abs, '\n')) {
            /* best effort; one write() with O_APPEND, so concurrent writers do not interleave */
            char *dir = ldm_xstrdup(cache);
            char *slash = strrchr(dir, '/');
            if (slash && slash != dir) {
                *slash = 0;
                for (char *p = dir + 1; *p; p++)
                    if (*p == '/') {
                        *p = 0;
                        mkdir(dir, 0755);
                        *p = '/';
                    }
                mkdir(dir, 0755);
            }
            free(dir);
            int fd = open(cache, O_WRONLY | O_APPEND | O_CREAT, 0644);
            if (fd >= 0) {
                char *line = ldm_xasprintf("%s%s %s\n", key, full, abs);
                ssize_t w = write(fd, line, strlen(line));
                (void)w;
                free(line);
                close(fd);
            }
        }
    }
    free(cache);
    free(abs);
    return rc;
}
