/*
 * promptline.c - a --prompts line's own settings (plain, webui options or
 * JSON), and appending to the run's manifest (promptline.h).
 */
#include "promptline.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pipeline.h"
#include "util.h"

void ldm_line_args_free(LdmLineArgs *l) {
    free(l->prompt);
    free(l->negative);
    memset(l, 0, sizeof *l);
}

/* ---- webui options ------------------------------------------------------------- */

static int parse_options(const char *text, int max_steps, LdmLineArgs *l) {
    int argc;
    char **argv;
    if (ldm_split_args(text, &argc, &argv) != 0) return -1;
    int rc = 0;
    for (int i = 0; i < argc && rc == 0;) {
        const char *f = argv[i];
        if (strncmp(f, "--", 2) != 0) {
            rc = ldm_fail("'%s': expected an option starting with \"--\" (a line starting with -- holds options: "
                          "--prompt TEXT [--height N] ...)", f);
            break;
        }
        if (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2)) {
            rc = ldm_fail("%s: expected a value after it", f);
            break;
        }
        if (!strcmp(f, "--prompt") || !strcmp(f, "--negative_prompt") || !strcmp(f, "--negative-prompt")) {
            size_t n = 0;
            int j = i + 1;
            for (; j < argc && strncmp(argv[j], "--", 2) != 0; j++) n += strlen(argv[j]) + 1;
            char *t = ldm_xmalloc(n + 1), *p = t;
            for (int k = i + 1; k < j; k++) {
                if (k > i + 1) *p++ = ' ';
                size_t m = strlen(argv[k]);
                memcpy(p, argv[k], m);
                p += m;
            }
            *p = 0;
            char **dst = !strcmp(f, "--prompt") ? &l->prompt : &l->negative;
            free(*dst);
            *dst = t;
            i = j;
            continue;
        }
        const char *v = argv[i + 1];
        if (!strcmp(f, "--height")) {
            rc = ldm_parse_int(f, v, 1, 65536, &l->H);
            l->has_H = 1;
        } else if (!strcmp(f, "--width")) {
            rc = ldm_parse_int(f, v, 1, 65536, &l->W);
            l->has_W = 1;
        } else if (!strcmp(f, "--seed")) {
            rc = ldm_parse_u64(f, v, &l->seed);
            l->has_seed = 1;
        } else if (!strcmp(f, "--steps")) {
            rc = ldm_parse_int(f, v, 1, max_steps, &l->steps);
            l->has_steps = 1;
        } else if (!strcmp(f, "--cfg_scale") || !strcmp(f, "--cfg-scale")) {
            rc = ldm_parse_double(f, v, -1e4, 1e4, &l->cfg_scale);
            l->has_cfg = 1;
        } else if (!strcmp(f, "--sampler_name") || !strcmp(f, "--sampler")) {
            l->has_schedule = 0;
            if (ldm_sampler_parse_ex(v, &l->sampler, &l->has_schedule, &l->schedule) != 0)
                rc = ldm_fail("%s: %s", f, ldm_last_error());
            l->has_sampler = 1;
        } else {
            rc = ldm_fail("unknown option '%s' (a line takes --prompt, --negative_prompt, --height, --width, --seed, "
                          "--steps, --cfg_scale, --sampler_name)", f);
        }
        i += 2;
    }
    if (rc == 0 && !l->prompt) rc = ldm_fail("the line has options but no --prompt");
    ldm_args_free(argc, argv);
    return rc;
}

/* ---- JSON ------------------------------------------------------------------------ */

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number with a fraction";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    case JSON_NULL: return "null";
    }
    return "?";
}

#define JSON_FIELDS "prompt, negative_prompt, seed, steps, cfg_scale, sampler (or sampler_name), size, width, height"

static int json_int_field(const char *key, const json_t *v, long long lo, long long hi, long long *out) {
    if (!json_is_integer(v))
        return ldm_fail("\"%s\": expected an integer from %lld to %lld, got %s", key, lo, hi, json_kind(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return ldm_fail("\"%s\": expected an integer from %lld to %lld, got %lld", key, lo, hi, x);
    *out = x;
    return 0;
}

static int json_str_field(const char *key, const json_t *v, const char **out) {
    if (!json_is_string(v)) return ldm_fail("\"%s\": expected a string, got %s", key, json_kind(v));
    if (strlen(json_string_value(v)) != json_string_length(v))
        return ldm_fail("\"%s\": the string holds a NUL character (\\u0000)", key);
    *out = json_string_value(v);
    return 0;
}

/* "WxH" (width first), each 1..65536 */
static int parse_size(const char *s, int *W, int *H) {
    const char *p = s;
    long v[2];
    for (int k = 0; k < 2; k++) {
        if (*p < '0' || *p > '9') goto bad;
        char *end;
        errno = 0;
        v[k] = strtol(p, &end, 10);
        if (errno || v[k] < 1 || v[k] > 65536) goto bad;
        p = end;
        if (k == 0) {
            if (*p != 'x' && *p != 'X') goto bad;
            p++;
        }
    }
    if (*p) goto bad;
    *W = (int)v[0];
    *H = (int)v[1];
    return 0;
bad:
    return ldm_fail("\"size\": expected \"WxH\" (width x height in pixels, each 1 to 65536, e.g. \"512x768\"), got "
                    "\"%s\"", s);
}

static int parse_json(const char *text, int max_steps, LdmLineArgs *l) {
    json_error_t err;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &err);
    if (!j) return ldm_fail("invalid JSON at column %d: %s", err.column, err.text);
    int rc = 0, has_size = 0;
    if (!json_is_object(j)) {
        rc = ldm_fail("expected a JSON object {\"prompt\": ...}, got %s", json_kind(j));
        goto done;
    }
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v) {
        long long x;
        const char *s;
        if (!strcmp(key, "prompt")) {
            if ((rc = json_str_field(key, v, &s)) != 0) break;
            l->prompt = ldm_xstrdup(s);
        } else if (!strcmp(key, "negative_prompt")) {
            if ((rc = json_str_field(key, v, &s)) != 0) break;
            l->negative = ldm_xstrdup(s);
        } else if (!strcmp(key, "seed")) {
            if ((rc = json_int_field(key, v, 0, INT64_MAX, &x)) != 0) break;
            l->seed = (uint64_t)x;
            l->has_seed = 1;
        } else if (!strcmp(key, "steps")) {
            if ((rc = json_int_field(key, v, 1, max_steps, &x)) != 0) break;
            l->steps = (int)x;
            l->has_steps = 1;
        } else if (!strcmp(key, "cfg_scale")) {
            double d = json_is_number(v) ? json_number_value(v) : NAN;
            if (!json_is_number(v) || !isfinite(d) || d < -1e4 || d > 1e4) {
                rc = json_is_number(v) ? ldm_fail("\"cfg_scale\": expected a number from -10000 to 10000, got %g", d)
                                       : ldm_fail("\"cfg_scale\": expected a number, got %s", json_kind(v));
                break;
            }
            l->cfg_scale = d;
            l->has_cfg = 1;
        } else if (!strcmp(key, "sampler") || !strcmp(key, "sampler_name")) {
            if ((rc = json_str_field(key, v, &s)) != 0) break;
            if (l->has_sampler) {
                rc = ldm_fail("\"%s\": the line gives both sampler and sampler_name", key);
                break;
            }
            if (ldm_sampler_parse_ex(s, &l->sampler, &l->has_schedule, &l->schedule) != 0) {
                rc = ldm_fail("\"%s\": %s", key, ldm_last_error());
                break;
            }
            l->has_sampler = 1;
        } else if (!strcmp(key, "size")) {
            if ((rc = json_str_field(key, v, &s)) != 0) break;
            if ((rc = parse_size(s, &l->W, &l->H)) != 0) break;
            has_size = 1;
        } else if (!strcmp(key, "width") || !strcmp(key, "height")) {
            if ((rc = json_int_field(key, v, 1, 65536, &x)) != 0) break;
            if (key[0] == 'w') l->W = (int)x, l->has_W = 1;
            else l->H = (int)x, l->has_H = 1;
        } else {
            rc = ldm_fail("unknown field \"%s\" (a JSON line takes " JSON_FIELDS ")", key);
            break;
        }
    }
    if (rc == 0 && has_size && (l->has_W || l->has_H))
        rc = ldm_fail("\"size\" and \"%s\" exclude each other (give \"size\": \"WxH\" or width and height)",
                      l->has_W ? "width" : "height");
    if (rc == 0 && has_size) l->has_W = l->has_H = 1;
    if (rc == 0 && !l->prompt) rc = ldm_fail("\"prompt\": missing (a JSON line needs the prompt)");
done:
    json_decref(j);
    return rc;
}

int ldm_line_args_parse(const char *text, int max_steps, LdmLineArgs *l) {
    memset(l, 0, sizeof *l);
    if (strlen(text) > LDM_LINE_MAX_BYTES)
        return ldm_fail("the line is longer than %d bytes", LDM_LINE_MAX_BYTES);
    const char *t = text + strspn(text, " \t");
    int rc;
    if (t[0] == '{') {
        l->kind = LDM_LINE_JSON;
        rc = parse_json(t, max_steps, l);
    } else if (!strncmp(t, "--", 2)) {
        l->kind = LDM_LINE_OPTIONS;
        rc = parse_options(text, max_steps, l);
    } else {
        l->kind = LDM_LINE_PLAIN;
        l->prompt = ldm_xstrdup(text);
        rc = 0;
    }
    if (rc != 0) {
        LdmLineKind k = l->kind;
        ldm_line_args_free(l);
        l->kind = k;
    }
    return rc;
}

/* ---- the manifest ---------------------------------------------------------------- */

int ldm_manifest_append(const char *path, const char *line) {
    size_t n = strlen(line);
    if (memchr(line, '\n', n)) return ldm_fail("%s: internal: a manifest line with a newline", path);
    char *buf = ldm_xmalloc(n + 2);
    memcpy(buf, line, n);
    buf[n] = '\n';
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
        int r = ldm_fail("%s: cannot open for appending: %s", path, strerror(errno));
        free(buf);
        return r;
    }
    ssize_t w;
    do w = write(fd, buf, n + 1);
    while (w < 0 && errno == EINTR);
    int rc = 0;
    if (w != (ssize_t)(n + 1))
        rc = ldm_fail("%s: %s", path, w < 0 ? strerror(errno) : "short write (file system full?)");
    if (close(fd) != 0 && rc == 0) rc = ldm_fail("%s: %s", path, strerror(errno));
    free(buf);
    return rc;
}
