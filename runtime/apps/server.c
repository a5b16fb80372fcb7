/*
 * server.c - the txt2img executables' HTTP server (server.h, docs/server.md).
 *
 * Threads: libmicrohttpd runs a listening thread and a thread per
 * connection (MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION);
 * a connection's thread parses and checks its request, appends a job to the
 * FIFO queue and waits on the job's condition until the generating thread
 * (the one that called ldm_server_run: OpenMP's team is its own) has made
 * it. Requests are small and images are small, so a thread per waiting
 * connection is cheap; the queue bound (--queue) bounds them. A client that
 * disconnects while waiting does not remove its job: it is made and its
 * response is dropped by libmicrohttpd, as the webui does. Every other
 * endpoint answers at once from the connection's thread. SIGINT and SIGTERM
 * are written to a pipe by their handler; a thread of ours reads it and
 * wakes the others.
 *
 * Everything the threads share is under one mutex (LdmServer.mu): the
 * queue, the progress state, the interrupt flag and the options.
 */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <malloc.h>
#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "image.h"
#include "util.h"

/* The web page (runtime/apps/server_page.html, embedded by server_page.S). */
extern const char ldm_server_page[];
extern const char ldm_server_page_end[];

#define DEFAULT_QUEUE 16
#define DEFAULT_MAX_BODY ((size_t)32 << 20)
#define MAX_BATCH 8      /* batch_size */
#define MAX_ITER 16      /* n_iter */
#define MAX_IMAGES 32    /* batch_size * n_iter */

/* ----------------------------------------------------------------------------
 * Base64
 * ------------------------------------------------------------------------- */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *ldm_base64_encode(const uint8_t *d, size_t n, size_t *out_n) {
    size_t m = 4 * ((n + 2) / 3);
    char *o = ldm_xmalloc(m + 1), *p = o;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
        *p++ = b64chars[v >> 18], *p++ = b64chars[(v >> 12) & 63], *p++ = b64chars[(v >> 6) & 63], *p++ = b64chars[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0);
        *p++ = b64chars[v >> 18], *p++ = b64chars[(v >> 12) & 63];
        *p++ = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
        *p++ = '=';
    }
    *p = 0;
    if (out_n) *out_n = m;
    return o;
}

static int b64val(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62; /* and the URL-safe alphabet */
    if (c == '/' || c == '_') return 63;
    return -1;
}

int ldm_base64_decode(const char *t, size_t n, uint8_t **out, size_t *out_n) {
    *out = NULL;
    *out_n = 0;
    /* "data:image/png;base64,..." (what browsers' FileReader gives) */
    if (n >= 5 && !strncmp(t, "data:", 5)) {
        const char *c = memchr(t, ',', n);
        if (!c) return -1;
        n -= (size_t)(c + 1 - t);
        t = c + 1;
    }
    uint8_t *o = ldm_xmalloc(n / 4 * 3 + 4);
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0, pad = 0, q = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            pad++;
            q++;
            continue;
        }
        int v = b64val(c);
        if (v < 0 || pad) {
            free(o);
            return -1;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        q++;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (uint8_t)(acc >> bits);
        }
    }
    /* whole quads when padded; a bare tail of 2 or 3 characters is taken
     * as unpadded; 1 left-over character is not base64 */
    if (pad > 2 || (pad && q % 4) || q % 4 == 1) {
        free(o);
        return -1;
    }
    *out = o;
    *out_n = k;
    return 0;
}

/* ----------------------------------------------------------------------------
 * Results
 * ------------------------------------------------------------------------- */

void ldm_gen_result_add(LdmGenResult *r, uint8_t *png, size_t n, char *infotext, uint64_t seed) {
    int k = r->n + 1;
    r->png = ldm_xrealloc(r->png, (size_t)k * sizeof *r->png);
    r->png_n = ldm_xrealloc(r->png_n, (size_t)k * sizeof *r->png_n);
    r->infotext = ldm_xrealloc(r->infotext, (size_t)k * sizeof *r->infotext);
    r->seeds = ldm_xrealloc(r->seeds, (size_t)k * sizeof *r->seeds);
    r->png[r->n] = png;
    r->png_n[r->n] = n;
    r->infotext[r->n] = infotext;
    r->seeds[r->n] = seed;
    r->n = k;
}

void ldm_gen_result_free(LdmGenResult *r) {
    for (int i = 0; i < r->n; i++) {
        free(r->png[i]);
        free(r->infotext[i]);
    }
    free(r->png);
    free(r->png_n);
    free(r->infotext);
    free(r->seeds);
    memset(r, 0, sizeof *r);
}

/* ----------------------------------------------------------------------------
 * The server state
 * ------------------------------------------------------------------------- */

typedef struct Job {
    LdmGenRequest rq;
    int done;
    int rc;                    /* generate()'s */
    char error[1024];          /* its message (the worker's ldm_last_error) */
    LdmGenResult res;
    pthread_cond_t cv;
    struct Job *next;
} Job;

struct LdmServer {
    LdmServerBackend b;
    LdmServerOptions o;
    int running;               /* ldm_server_run: queue to the generating thread (else generate inline) */
    pthread_mutex_t mu;
    pthread_cond_t cv;         /* the generating thread waits on it for jobs (and the stop) */
    Job *head, *tail;
    int n_queued;
    Job *current;              /* being made */
    int stopping;
    int interrupt;             /* /sdapi/v1/interrupt: for the current job */
    int n_waiting;             /* connection threads waiting for their job */
    /* progress */
    int job_image, job_images; /* image i of n of the current job */
    int step, n_steps;
    double job_t0;
    const char *job_name;      /* "txt2img", "img2img" */
    char job_timestamp[16];
    uint8_t *preview;          /* the current job's last preview PNG, or NULL */
    size_t preview_n;
    double preview_wanted;     /* when a client last asked for current_image */
    uint64_t jobs_done;
    /* options */
    int clip_skip;             /* CLIP_stop_at_last_layers */
    char title[600];           /* "name.safetensors [hash]" */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

LdmServer *ldm_server_new(const LdmServerBackend *b, const LdmServerOptions *o) {
    LdmServer *s = ldm_xcalloc(1, sizeof *s);
    s->b = *b;
    s->o = *o;
    if (s->o.queue <= 0) s->o.queue = DEFAULT_QUEUE;
    if (!s->o.max_body) s->o.max_body = DEFAULT_MAX_BODY;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->clip_skip = 1;
    const char *file = b->model_file ? b->model_file : "";
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (b->model_hash && *b->model_hash) snprintf(s->title, sizeof s->title, "%s [%s]", base, b->model_hash);
    else snprintf(s->title, sizeof s->title, "%s", base);
    return s;
}

void ldm_server_free(LdmServer *s) {
    if (!s) return;
    free(s->preview);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

void ldm_server_set_clip_skip(LdmServer *s, int clip_skip) {
    pthread_mutex_lock(&s->mu);
    s->clip_skip = clip_skip;
    pthread_mutex_unlock(&s->mu);
}

const char *ldm_server_cors_origin(const LdmServer *s) { return s->o.cors_origin; }

/* ----------------------------------------------------------------------------
 * Responses
 * ------------------------------------------------------------------------- */

static const char *reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    }
    return "Error";
}

static void respond_json(LdmHttpResponse *r, int status, json_t *j) {
    r->status = status;
    r->body = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
    if (!r->body) r->body = ldm_xstrdup("null"); /* (only on out-of-memory) */
    r->body_n = strlen(r->body);
    r->content_type = "application/json";
    json_decref(j);
}

/* {"error": "<reason>", "detail": "<message naming the field>"}, the
 * webui's (FastAPI's) shape; under /v1/ OpenAI's, which its client
 * libraries read: {"error": {"message", "type", "param", "code"}} (type
 * invalid_request_error, server_error from 500 on; code invalid_api_key
 * for a wrong key, else null). */
static void respond_error(LdmHttpResponse *r, int status, const char *fmt, ...) LDM_PRINTF(3, 4);
static void respond_error(LdmHttpResponse *r, int status, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    free(r->body);
    r->body = NULL;
    /* (a message cut in the middle of a UTF-8 sequence: jansson refuses it) */
    json_t *d = json_string(msg);
    if (!d) d = json_string("(message not valid UTF-8)");
    if (r->openai_errors) {
        json_t *e = json_pack("{s:o, s:s, s:n, s:o}", "message", d, "type",
                              status >= 500 ? "server_error" : "invalid_request_error", "param", "code",
                              status == 401 ? json_string("invalid_api_key") : json_null());
        respond_json(r, status, json_pack("{s:o}", "error", e));
        return;
    }
    respond_json(r, status, json_pack("{s:s, s:o}", "error", reason(status), "detail", d));
}

void ldm_http_response_free(LdmHttpResponse *r) {
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* ----------------------------------------------------------------------------
 * Request fields
 * ------------------------------------------------------------------------- */

/* A field that must be a string (NULL/absent: def). -1 with the error set. */
static int get_string(LdmHttpResponse *r, json_t *o, const char *key, const char *def, const char **out) {
    json_t *v = json_object_get(o, key);
    *out = def;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) {
        respond_error(r, 422, "%s: expected a string", key);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

/* An integer field in [lo, hi] (a number with an integral value). */
static int get_int(LdmHttpResponse *r, json_t *o, const char *key, long long def, long long lo, long long hi,
                   long long *out, int *given) {
    json_t *v = json_object_get(o, key);
    *out = def;
    if (given) *given = 0;
    if (!v || json_is_null(v)) return 0;
    long long x;
    if (json_is_integer(v)) x = json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) && fabs(json_real_value(v)) < 9e18)
        x = (long long)json_real_value(v);
    else {
        respond_error(r, 422, "%s: expected an integer", key);
        return -1;
    }
    if (x < lo || x > hi) {
        respond_error(r, 422, "%s: %lld is out of range (%lld to %lld)", key, x, lo, hi);
        return -1;
    }
    *out = x;
    if (given) *given = 1;
    return 0;
}

static int get_number(LdmHttpResponse *r, json_t *o, const char *key, double def, double lo, double hi, double *out,
                      int *given) {
    json_t *v = json_object_get(o, key);
    *out = def;
    if (given) *given = 0;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) {
        respond_error(r, 422, "%s: expected a number", key);
        return -1;
    }
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) {
        respond_error(r, 422, "%s: %g is out of range (%g to %g)", key, x, lo, hi);
        return -1;
    }
    *out = x;
    if (given) *given = 1;
    return 0;
}

static int get_bool(LdmHttpResponse *r, json_t *o, const char *key, int def, int *out) {
    json_t *v = json_object_get(o, key);
    *out = def;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) {
        respond_error(r, 422, "%s: expected true or false", key);
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

static char *size_list(const LdmServer *s) {
    char *l = ldm_xstrdup("");
    for (int i = 0; i < s->b.n_sizes; i++) {
        char *t = ldm_xasprintf("%s%s%dx%d", l, i ? ", " : "", s->b.widths[i], s->b.heights[i]);
        free(l);
        l = t;
    }
    return l;
}

/* The index of the compiled size W x H, or -1 with a 422. */
static int find_size(LdmServer *s, LdmHttpResponse *r, const char *what, int w, int h) {
    for (int i = 0; i < s->b.n_sizes; i++)
        if (s->b.widths[i] == w && s->b.heights[i] == h) return i;
    char *l = size_list(s);
    respond_error(r, 422, "%s: %dx%d is not a size compiled into this executable (width x height: %s; build one "
                  "with make txt2img ... SIZES=\"HxW ...\")", what, w, h, l);
    free(l);
    return -1;
}

static uint32_t random_u32(void) {
    uint32_t v;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) v = (uint32_t)time(NULL) ^ (uint32_t)getpid();
    return v;
}

/* A parsed generation request: what LdmGenRequest points to, and what the
 * response echoes. */
typedef struct Parsed {
    LdmGenRequest rq;
    json_t *params;            /* the request with defaults filled (the response's "parameters") */
    long long seed_in, subseed, subseed_in;
    int batch_size, n_iter;
    char *sampler_label;       /* the webui name used ("DPM++ 2M") */
    float *init, *mask;
    int openai;
    int has_strength;
} Parsed;

static void parsed_free(Parsed *p) {
    json_decref(p->params);
    free(p->sampler_label);
    free(p->init);
    free(p->mask);
    memset(p, 0, sizeof *p);
}

/* A base64 PNG field (init_images[i], mask) of the size W x H: 0, or -1 with a 4xx. */
static int decode_png_field(LdmHttpResponse *r, json_t *v, const char *name, int is_mask, int w, int h, float **out,
                            int *ow, int *oh) {
    if (!json_is_string(v)) {
        respond_error(r, 422, "%s: expected a base64 string (a PNG)", name);
        return -1;
    }
    uint8_t *bytes;
    size_t n;
    if (ldm_base64_decode(json_string_value(v), json_string_length(v), &bytes, &n) != 0) {
        respond_error(r, 400, "%s: not valid base64", name);
        return -1;
    }
    int rc = is_mask ? ldm_mask_load_mem(bytes, n, name, w, h, out, ow, oh)
                     : ldm_image_load_mem(bytes, n, name, w, h, out, ow, oh);
    free(bytes);
    if (rc != 0) {
        respond_error(r, 400, "%s", ldm_last_error());
        return -1;
    }
    return 0;
}

/* Fields of the webui that change the image and that this server does not
 * do: refused when set to anything but their default rather than ignored. */
static int refuse_unsupported(LdmHttpResponse *r, json_t *o) {
    static const char *const truthy[] = {"enable_hr", "restore_faces", "tiling", "do_not_save_samples", NULL};
    for (int i = 0; truthy[i]; i++) {
        json_t *v = json_object_get(o, truthy[i]);
        if (v && !json_is_null(v) && !json_is_boolean(v)) {
            respond_error(r, 422, "%s: expected true or false", truthy[i]);
            return -1;
        }
        if (json_is_true(v) && strcmp(truthy[i], "do_not_save_samples") != 0) {
            respond_error(r, 422, "%s: not supported by this server (leave it false)", truthy[i]);
            return -1;
        }
    }
    double ss;
    if (get_number(r, o, "subseed_strength", 0, -1e9, 1e9, &ss, NULL) != 0) return -1;
    if (ss != 0) {
        respond_error(r, 422, "subseed_strength: variation seeds are not supported (leave it 0)");
        return -1;
    }
    json_t *sn = json_object_get(o, "script_name");
    if (sn && !json_is_null(sn) && !(json_is_string(sn) && json_string_length(sn) == 0)) {
        respond_error(r, 422, "script_name: scripts are not supported");
        return -1;
    }
    json_t *as = json_object_get(o, "alwayson_scripts");
    if (as && !json_is_null(as) && !(json_is_object(as) && json_object_size(as) == 0)) {
        respond_error(r, 422, "alwayson_scripts: scripts are not supported");
        return -1;
    }
    json_t *st = json_object_get(o, "styles");
    if (st && !json_is_null(st) && !(json_is_array(st) && json_array_size(st) == 0)) {
        respond_error(r, 422, "styles: styles are not supported (put the text in the prompt)");
        return -1;
    }
    return 0;
}

/* override_settings / POST options: the keys this server honours.
 * CLIP_stop_at_last_layers -> *clip_skip; sd_model_checkpoint must name the
 * loaded model. */
static int apply_settings(LdmServer *s, LdmHttpResponse *r, json_t *o, const char *what, int *clip_skip) {
    if (!json_is_object(o)) {
        respond_error(r, 422, "%s: expected an object", what);
        return -1;
    }
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (!strcmp(k, "CLIP_stop_at_last_layers")) {
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > s->b.clip_skips) {
                respond_error(r, 422, "%s.CLIP_stop_at_last_layers: expected an integer from 1 to %d (the CLIP skips "
                              "compiled into this executable; more with make txt2img ... CLIP_SKIPS=N)", what,
                              s->b.clip_skips);
                return -1;
            }
            *clip_skip = (int)json_integer_value(v);
        } else if (!strcmp(k, "sd_model_checkpoint")) {
            const char *m = json_is_string(v) ? json_string_value(v) : NULL;
            const char *file = s->b.model_file ? s->b.model_file : "", *base = strrchr(file, '/');
            base = base ? base + 1 : file;
            if (!m || (strcmp(m, s->title) && strcmp(m, s->b.model_name ? s->b.model_name : "") && strcmp(m, base) &&
                       strcmp(m, s->b.model_hash ? s->b.model_hash : ""))) {
                respond_error(r, 422, "%s.sd_model_checkpoint: this server has one model, '%s'", what, s->title);
                return -1;
            }
        } else if (!strcmp(k, "samples_format")) {
            if (!json_is_string(v) || strcmp(json_string_value(v), "png") != 0) {
                respond_error(r, 422, "%s.samples_format: only \"png\"", what);
                return -1;
            }
        } else {
            respond_error(r, 422, "%s.%s: not an option this server can honour (it takes CLIP_stop_at_last_layers, "
                          "sd_model_checkpoint, samples_format)", what, k);
            return -1;
        }
    }
    return 0;
}

/* The schedule the webui (1.9 and later: modules/sd_samplers_kdiffusion.py,
 * the samplers' options) uses for a sampler when the scheduler is
 * "Automatic": 1 and *k, or 0 for the sampler's plain (uniform) sigmas. */
static int webui_default_schedule(LdmSamplerKind sampler, LdmSigmaKind *k) {
    switch (sampler) {
    case LDM_SAMPLER_DPMPP_2M:
    case LDM_SAMPLER_DPMPP_SDE:
    case LDM_SAMPLER_DPMPP_2S_A: *k = LDM_SIGMAS_KARRAS; return 1;
    case LDM_SAMPLER_DPMPP_2M_SDE: *k = LDM_SIGMAS_EXPONENTIAL; return 1;
    default: return 0;
    }
}

/* sampler_name (or sampler_index) and scheduler */
static int parse_sampler(LdmHttpResponse *r, json_t *o, Parsed *p) {
    const char *name, *idx, *sched;
    if (get_string(r, o, "sampler_name", NULL, &name) || get_string(r, o, "sampler_index", NULL, &idx) ||
        get_string(r, o, "scheduler", NULL, &sched))
        return -1;
    /* the webui: sampler_name or sampler_index, default "Euler" (the API
     * model's sampler_index) */
    const char *use = name && *name ? name : idx && *idx ? idx : "Euler";
    int implied = 0;
    LdmSigmaKind ik = LDM_SIGMAS_DISCRETE;
    if (ldm_sampler_parse_ex(use, &p->rq.sampler, &implied, &ik) != 0) {
        respond_error(r, 422, "sampler_name: %s", ldm_last_error());
        return -1;
    }
    p->sampler_label = ldm_xstrdup(use);
    p->rq.has_schedule = 0;
    p->rq.schedule = LDM_SIGMAS_DISCRETE;
    if (implied) p->rq.has_schedule = 1, p->rq.schedule = ik;
    else if ((!sched || !*sched || !strcasecmp(sched, "automatic")) && webui_default_schedule(p->rq.sampler, &ik))
        p->rq.has_schedule = 1, p->rq.schedule = ik; /* "DPM++ 2M" is DPM++ 2M Karras, as in the webui */
    if (sched && *sched) {
        LdmSigmaKind k;
        if (ldm_sigma_kind_parse(sched, &k) != 0) {
            respond_error(r, 422, "scheduler: %s", ldm_last_error());
            return -1;
        }
        int automatic = !strcasecmp(sched, "automatic");
        if (implied && !automatic && k != ik) {
            respond_error(r, 422, "scheduler: '%s' contradicts sampler_name '%s' (which implies %s)", sched, use,
                          ldm_sigma_kind_webui_name(ik));
            return -1;
        }
        if (!automatic) {
            if (ldm_sampler_family(p->rq.sampler) != 1 && k != LDM_SIGMAS_DISCRETE) {
                respond_error(r, 422, "scheduler: %s applies to the k-diffusion samplers, not %s", sched,
                              ldm_sampler_webui_name(p->rq.sampler));
                return -1;
            }
            p->rq.has_schedule = ldm_sampler_family(p->rq.sampler) == 1;
            p->rq.schedule = k;
        }
    }
    return 0;
}

/* Parse and check a webui txt2img/img2img body (or an OpenAI one): 0, or -1
 * with r filled. */
static int parse_generation(LdmServer *s, LdmHttpResponse *r, json_t *o, int img2img, Parsed *p) {
    memset(p, 0, sizeof *p);
    p->rq.img2img = img2img;
    if (refuse_unsupported(r, o) != 0) return -1;
    json_t *pv = json_object_get(o, "prompt");
    if (!pv) {
        respond_error(r, 422, "prompt: field required");
        return -1;
    }
    if (get_string(r, o, "prompt", "", &p->rq.prompt) || get_string(r, o, "negative_prompt", "", &p->rq.negative))
        return -1;
    long long v;
    if (get_int(r, o, "steps", 50, 1, s->b.max_steps, &v, NULL)) return -1;
    p->rq.steps = (int)v;
    if (get_number(r, o, "cfg_scale", 7.0, 0.0, 100.0, &p->rq.cfg_scale, NULL)) return -1;
    if (parse_sampler(r, o, p) != 0) return -1;
    if (get_int(r, o, "seed", -1, -1, 4294967295LL, &p->seed_in, NULL)) return -1;
    if (get_int(r, o, "subseed", -1, -1, 4294967295LL, &p->subseed, NULL)) return -1;
    if (get_int(r, o, "batch_size", 1, 1, MAX_BATCH, &v, NULL)) return -1;
    p->batch_size = (int)v;
    if (get_int(r, o, "n_iter", 1, 1, MAX_ITER, &v, NULL)) return -1;
    p->n_iter = (int)v;
    if (p->batch_size * p->n_iter > MAX_IMAGES) {
        respond_error(r, 422, "batch_size, n_iter: %d x %d images, at most %d per request", p->batch_size, p->n_iter,
                      MAX_IMAGES);
        return -1;
    }
    p->rq.n_images = p->batch_size * p->n_iter;
    long long w, h;
    int has_w, has_h;
    if (get_int(r, o, "width", s->b.widths[0], 1, LDM_IMAGE_MAX_DIM, &w, &has_w) ||
        get_int(r, o, "height", s->b.heights[0], 1, LDM_IMAGE_MAX_DIM, &h, &has_h))
        return -1;
    /* CLIP skip: the server's option, or override_settings */
    pthread_mutex_lock(&s->mu);
    int clip_skip = s->clip_skip;
    pthread_mutex_unlock(&s->mu);
    json_t *ov = json_object_get(o, "override_settings");
    if (ov && !json_is_null(ov) && apply_settings(s, r, ov, "override_settings", &clip_skip) != 0) return -1;
    p->rq.clip_skip = clip_skip;
    double ds;
    int has_ds;
    if (get_number(r, o, "denoising_strength", 0.75, 0.0, 1.0, &ds, &has_ds)) return -1;
    p->has_strength = has_ds;
    if (img2img) {
        if (!(ds > 0)) {
            respond_error(r, 422, "denoising_strength: expected a number with 0 < S <= 1, got %g", ds);
            return -1;
        }
        p->rq.strength = ds;
        json_t *ii = json_object_get(o, "init_images");
        if (!json_is_array(ii) || json_array_size(ii) == 0) {
            respond_error(r, 422, "init_images: expected a list of one base64 PNG");
            return -1;
        }
        if (json_array_size(ii) > 1) {
            respond_error(r, 422, "init_images: %zu images; this server takes one (used for every image of the batch)",
                          json_array_size(ii));
            return -1;
        }
        /* the init image's size is the request's when width/height are not given */
        int iw, ih;
        if (decode_png_field(r, json_array_get(ii, 0), "init_images[0]", 0, has_w ? (int)w : 0, has_h ? (int)h : 0,
                             &p->init, &iw, &ih) != 0)
            return -1;
        w = iw, h = ih;
        json_t *m = json_object_get(o, "mask");
        if (m && !json_is_null(m) &&
            decode_png_field(r, m, "mask", 1, (int)w, (int)h, &p->mask, NULL, NULL) != 0)
            return -1;
        p->rq.init_image = p->init;
        p->rq.mask = p->mask;
    }
    int k = find_size(s, r, "width, height", (int)w, (int)h);
    if (k < 0) return -1;
    p->rq.size = k;
    p->rq.width = (int)w;
    p->rq.height = (int)h;
    p->rq.seed = p->seed_in >= 0 ? (uint64_t)p->seed_in : random_u32();
    p->subseed_in = p->subseed;
    if (p->subseed < 0) p->subseed = random_u32();
    /* the response's "parameters": the request with the defaults filled in
     * (the webui echoes its request model; seed -1 stays -1) */
    p->params = json_deep_copy(o);
    json_t *pp = p->params;
    json_object_set_new(pp, "prompt", json_string(p->rq.prompt));
    json_object_set_new(pp, "negative_prompt", json_string(p->rq.negative));
    json_object_set_new(pp, "steps", json_integer(p->rq.steps));
    json_object_set_new(pp, "cfg_scale", json_real(p->rq.cfg_scale));
    json_object_set_new(pp, "sampler_name", json_string(p->sampler_label));
    if (!json_object_get(pp, "sampler_index")) json_object_set_new(pp, "sampler_index", json_string("Euler"));
    json_object_set_new(pp, "scheduler", p->rq.has_schedule ? json_string(ldm_sigma_kind_webui_name(p->rq.schedule))
                                                            : json_null());
    json_object_set_new(pp, "seed", json_integer(p->seed_in));
    json_object_set_new(pp, "subseed", json_integer(p->subseed_in));
    json_object_set_new(pp, "subseed_strength", json_real(0));
    json_object_set_new(pp, "batch_size", json_integer(p->batch_size));
    json_object_set_new(pp, "n_iter", json_integer(p->n_iter));
    json_object_set_new(pp, "width", json_integer(w));
    json_object_set_new(pp, "height", json_integer(h));
    json_object_set_new(pp, "denoising_strength", img2img || has_ds ? json_real(ds) : json_null());
    if (!json_object_get(pp, "styles")) json_object_set_new(pp, "styles", json_array());
    if (!json_object_get(pp, "override_settings")) json_object_set_new(pp, "override_settings", json_object());
    json_object_set_new(pp, "send_images", json_true());
    json_object_set_new(pp, "save_images", json_false());
    if (img2img) {
        /* the webui leaves them out unless include_init_images */
        int inc = 0;
        if (get_bool(r, o, "include_init_images", 0, &inc)) return -1;
        if (!inc) {
            json_object_set_new(pp, "init_images", json_null());
            json_object_set_new(pp, "mask", json_null());
        }
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Running a job: inline, or through the queue
 * ------------------------------------------------------------------------- */

static int step_hook(void *hctx, int image, int n_images, int step, int n_steps) {
    LdmServer *s = hctx;
    pthread_mutex_lock(&s->mu);
    s->job_image = image;
    s->job_images = n_images;
    s->step = step;
    s->n_steps = n_steps;
    int rc = s->stopping ? LDM_GEN_ABORT : s->interrupt ? LDM_GEN_INTERRUPT : LDM_GEN_GO_ON;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int wants_preview_hook(void *hctx) {
    LdmServer *s = hctx;
    pthread_mutex_lock(&s->mu);
    int w = s->preview_wanted > 0 && now_s() - s->preview_wanted < 10.0;
    pthread_mutex_unlock(&s->mu);
    return w;
}

static void preview_hook(void *hctx, uint8_t *png, size_t n) {
    LdmServer *s = hctx;
    pthread_mutex_lock(&s->mu);
    free(s->preview);
    s->preview = png;
    s->preview_n = n;
    pthread_mutex_unlock(&s->mu);
}

static void job_start(LdmServer *s, Job *j) {
    s->current = j;
    s->job_name = j->rq.img2img ? "img2img" : "txt2img";
    free(s->preview);
    s->preview = NULL;
    s->preview_n = 0;
    s->interrupt = 0;
    s->job_image = 0;
    s->job_images = j->rq.n_images;
    s->step = 0;
    s->n_steps = j->rq.steps;
    s->job_t0 = now_s();
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(s->job_timestamp, sizeof s->job_timestamp, "%Y%m%d%H%M%S", &tm);
}

/* Make job j in this thread. */
static void job_run(LdmServer *s, Job *j) {
    j->rq.step = step_hook;
    j->rq.wants_preview = wants_preview_hook;
    j->rq.preview = preview_hook;
    j->rq.hctx = s;
    ldm_fail("%s", "");
    j->rc = s->b.generate(s->b.ctx, &j->rq, &j->res);
    snprintf(j->error, sizeof j->error, "%s", ldm_last_error());
    pthread_mutex_lock(&s->mu);
    j->res.interrupted = j->res.interrupted || (s->interrupt && j->rc == 0);
    s->current = NULL;
    free(s->preview);
    s->preview = NULL;
    s->preview_n = 0;
    s->jobs_done++;
    pthread_mutex_unlock(&s->mu);
}

/* Queue j (running mode) and wait for it; or make it here. 0, or -1 with
 * r filled (queue full, shutting down). */
static int job_submit(LdmServer *s, Job *j, LdmHttpResponse *r) {
    if (!s->running) {
        pthread_mutex_lock(&s->mu);
        job_start(s, j);
        pthread_mutex_unlock(&s->mu);
        job_run(s, j);
        return 0;
    }
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->mu);
        respond_error(r, 503, "the server is shutting down");
        return -1;
    }
    if (s->n_queued >= s->o.queue) {
        int n = s->n_queued;
        pthread_mutex_unlock(&s->mu);
        respond_error(r, 503, "the queue is full (%d requests waiting, --queue %d): retry later", n, s->o.queue);
        r->retry_after = 5;
        return -1;
    }
    pthread_cond_init(&j->cv, NULL);
    j->next = NULL;
    if (s->tail) s->tail->next = j;
    else s->head = j;
    s->tail = j;
    s->n_queued++;
    s->n_waiting++;
    pthread_cond_broadcast(&s->cv);
    while (!j->done) pthread_cond_wait(&j->cv, &s->mu);
    s->n_waiting--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_cond_destroy(&j->cv);
    return 0;
}

/* ----------------------------------------------------------------------------
 * Endpoints
 * ------------------------------------------------------------------------- */

/* Processed.js() of the webui: the response's "info" (a JSON string). */
static char *info_json(LdmServer *s, const Parsed *p, const Job *j) {
    json_t *seeds = json_array(), *subseeds = json_array(), *texts = json_array(), *prompts = json_array(),
           *negs = json_array();
    for (int i = 0; i < j->res.n; i++) {
        json_array_append_new(seeds, json_integer((json_int_t)j->res.seeds[i]));
        json_array_append_new(subseeds, json_integer(p->subseed + i));
        json_t *t = json_string(j->res.infotext[i] ? j->res.infotext[i] : "");
        json_array_append_new(texts, t ? t : json_string(""));
        json_t *pr = json_string(p->rq.prompt), *ng = json_string(p->rq.negative);
        json_array_append_new(prompts, pr ? pr : json_string(""));
        json_array_append_new(negs, ng ? ng : json_string(""));
    }
    json_t *extra = json_object();
    if (p->rq.has_schedule) json_object_set_new(extra, "Schedule type", json_string(ldm_sigma_kind_webui_name(p->rq.schedule)));
    json_t *o = json_object();
    json_object_set_new(o, "prompt", json_string(p->rq.prompt));
    json_object_set_new(o, "all_prompts", prompts);
    json_object_set_new(o, "negative_prompt", json_string(p->rq.negative));
    json_object_set_new(o, "all_negative_prompts", negs);
    json_object_set_new(o, "seed", json_integer((json_int_t)p->rq.seed));
    json_object_set_new(o, "all_seeds", seeds);
    json_object_set_new(o, "subseed", json_integer(p->subseed));
    json_object_set_new(o, "all_subseeds", subseeds);
    json_object_set_new(o, "subseed_strength", json_integer(0));
    json_object_set_new(o, "width", json_integer(p->rq.width));
    json_object_set_new(o, "height", json_integer(p->rq.height));
    json_object_set_new(o, "sampler_name", json_string(ldm_sampler_webui_name(p->rq.sampler)));
    json_object_set_new(o, "cfg_scale", json_real(p->rq.cfg_scale));
    json_object_set_new(o, "steps", json_integer(p->rq.steps));
    json_object_set_new(o, "batch_size", json_integer(p->batch_size));
    json_object_set_new(o, "restore_faces", json_false());
    json_object_set_new(o, "face_restoration_model", json_null());
    json_object_set_new(o, "sd_model_name", s->b.model_name ? json_string(s->b.model_name) : json_null());
    json_object_set_new(o, "sd_model_hash", s->b.model_hash && *s->b.model_hash ? json_string(s->b.model_hash) : json_null());
    json_object_set_new(o, "sd_vae_name", json_null());
    json_object_set_new(o, "sd_vae_hash", json_null());
    json_object_set_new(o, "seed_resize_from_w", json_integer(-1));
    json_object_set_new(o, "seed_resize_from_h", json_integer(-1));
    json_object_set_new(o, "denoising_strength", p->rq.img2img ? json_real(p->rq.strength) : json_null());
    json_object_set_new(o, "extra_generation_params", extra);
    json_object_set_new(o, "index_of_first_image", json_integer(0));
    json_object_set_new(o, "infotexts", texts);
    json_object_set_new(o, "styles", json_array());
    pthread_mutex_lock(&s->mu);
    json_object_set_new(o, "job_timestamp", json_string(s->job_timestamp));
    pthread_mutex_unlock(&s->mu);
    json_object_set_new(o, "clip_skip", json_integer(p->rq.clip_skip));
    json_object_set_new(o, "is_using_inpainting_conditioning", json_boolean(s->b.hybrid));
    json_object_set_new(o, "version", json_string("ldmc"));
    json_object_set_new(o, "interrupted", json_boolean(j->res.interrupted));
    char *t = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    return t ? t : ldm_xstrdup("{}");
}

/* The job's outcome as an error response (-1), or 0 when it made images. */
static int job_error(const Job *j, LdmHttpResponse *r) {
    if (j->rc == LDM_GEN_OK) return 0;
    int status = j->rc == LDM_GEN_ESHUTDOWN ? 503 : j->rc == LDM_GEN_EBAD ? 422 : 500;
    respond_error(r, status, "%s", j->error[0] ? j->error : "generation failed");
    return -1;
}

static void endpoint_generate(LdmServer *s, LdmHttpResponse *r, json_t *o, int img2img) {
    Parsed p;
    if (parse_generation(s, r, o, img2img, &p) != 0) {
        parsed_free(&p);
        return;
    }
    Job *j = ldm_xcalloc(1, sizeof *j);
    j->rq = p.rq;
    if (job_submit(s, j, r) == 0 && job_error(j, r) == 0) {
        json_t *imgs = json_array();
        for (int i = 0; i < j->res.n; i++) {
            char *b = ldm_base64_encode(j->res.png[i], j->res.png_n[i], NULL);
            json_array_append_new(imgs, json_string(b));
            free(b);
        }
        char *info = info_json(s, &p, j);
        json_t *res = json_object();
        json_object_set_new(res, "images", imgs);
        json_object_set(res, "parameters", p.params);
        json_object_set_new(res, "info", json_string(info));
        free(info);
        respond_json(r, 200, res);
    }
    ldm_gen_result_free(&j->res);
    free(j);
    parsed_free(&p);
}

/* OpenAI's POST /v1/images/generations */
static void endpoint_openai(LdmServer *s, LdmHttpResponse *r, json_t *o) {
    const char *prompt, *size, *fmt;
    json_t *pv = json_object_get(o, "prompt");
    if (!pv) {
        respond_error(r, 422, "prompt: field required");
        return;
    }
    if (get_string(r, o, "prompt", "", &prompt) || get_string(r, o, "size", NULL, &size) ||
        get_string(r, o, "response_format", "b64_json", &fmt))
        return;
    if (strcmp(fmt, "b64_json") != 0) {
        respond_error(r, 400, "response_format: '%s' is not supported: only b64_json (this server keeps no files to "
                      "link to)", fmt);
        return;
    }
    long long n;
    if (get_int(r, o, "n", 1, 1, 10, &n, NULL)) return;
    int w = s->b.widths[0], h = s->b.heights[0];
    if (size) {
        char tail;
        if (sscanf(size, "%dx%d%c", &w, &h, &tail) != 2 || w < 1 || h < 1) {
            respond_error(r, 422, "size: expected \"WIDTHxHEIGHT\", got '%s'", size);
            return;
        }
    }
    /* as a webui request: the webui's defaults for the rest */
    json_t *wo = json_pack("{s:s, s:i, s:i, s:i, s:i}", "prompt", prompt, "width", w, "height", h, "n_iter",
                           (int)n, "steps", 20);
    if (!wo) {
        respond_error(r, 422, "prompt: not valid UTF-8");
        return;
    }
    json_object_set_new(wo, "sampler_name", json_string("Euler a"));
    Parsed p;
    if (parse_generation(s, r, wo, 0, &p) != 0) {
        if (r->body && strstr(r->body, "width, height")) {
            /* name the field the client sent (respond_error replaces the body) */
            char *l = size_list(s);
            respond_error(r, 422, "size: %dx%d is not a size compiled into this executable (%s)", w, h, l);
            free(l);
        }
        parsed_free(&p);
        json_decref(wo);
        return;
    }
    Job *j = ldm_xcalloc(1, sizeof *j);
    j->rq = p.rq;
    if (job_submit(s, j, r) == 0 && job_error(j, r) == 0) {
        json_t *data = json_array();
        for (int i = 0; i < j->res.n; i++) {
            char *b = ldm_base64_encode(j->res.png[i], j->res.png_n[i], NULL);
            json_array_append_new(data, json_pack("{s:s, s:s}", "b64_json", b, "revised_prompt", prompt));
            free(b);
        }
        respond_json(r, 200, json_pack("{s:I, s:o}", "created", (json_int_t)time(NULL), "data", data));
    }
    ldm_gen_result_free(&j->res);
    free(j);
    parsed_free(&p);
    json_decref(wo);
}

/* Is key=value (value case-insensitive) in the query "a=1&b=2"? */
static int query_has(const char *query, const char *key, const char *value) {
    size_t kl = strlen(key), vl = strlen(value);
    for (const char *p = query; p && *p;) {
        const char *e = strchr(p, '&');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == kl + 1 + vl && !strncmp(p, key, kl) && p[kl] == '=' && !strncasecmp(p + kl + 1, value, vl)) return 1;
        p = e ? e + 1 : p + n;
    }
    return 0;
}

static void endpoint_progress(LdmServer *s, LdmHttpResponse *r, const char *query) {
    /* current_image: the webui's default is skip_current_image=false; we
     * make previews only while a client asks for them explicitly (a TAESD
     * decode per step is not free), and only with a TAESD decoder */
    int want_image = query_has(query, "skip_current_image", "false");
    pthread_mutex_lock(&s->mu);
    if (want_image) s->preview_wanted = now_s();
    char *image = want_image && s->preview ? ldm_base64_encode(s->preview, s->preview_n, NULL) : NULL;
    int busy = s->current != NULL;
    double progress = 0, eta = 0;
    if (busy && s->job_images > 0 && s->n_steps > 0) {
        progress = ((double)s->job_image + (double)s->step / s->n_steps) / s->job_images;
        if (progress > 1) progress = 1;
        double el = now_s() - s->job_t0;
        eta = progress > 0 ? el / progress - el : 0;
    }
    json_t *state = json_pack("{s:b, s:b, s:b, s:s, s:i, s:s, s:i, s:i, s:i}", "skipped", 0, "interrupted",
                              busy && s->interrupt, "stopping_generation", s->stopping, "job",
                              busy ? s->job_name : "", "job_count", busy ? 1 + s->n_queued : s->n_queued,
                              "job_timestamp", s->job_timestamp[0] ? s->job_timestamp : "0", "job_no",
                              busy ? s->job_image : 0, "sampling_step", busy ? s->step : 0, "sampling_steps",
                              busy ? s->n_steps : 0);
    json_object_set_new(state, "queued", json_integer(s->n_queued));
    pthread_mutex_unlock(&s->mu);
    json_t *o = json_pack("{s:f, s:f, s:o, s:n, s:n, s:n}", "progress", progress, "eta_relative", eta, "state", state,
                          "current_image", "textinfo", "current_task");
    if (image) json_object_set_new(o, "current_image", json_string(image));
    free(image);
    respond_json(r, 200, o);
}

static void endpoint_samplers(LdmHttpResponse *r) {
    const LdmSamplerKind *all;
    int n = ldm_sampler_all(&all);
    json_t *a = json_array();
    for (int i = 0; i < n; i++) {
        json_t *opts = json_object();
        LdmSigmaKind k;
        if (webui_default_schedule(all[i], &k)) json_object_set_new(opts, "scheduler", json_string(ldm_sigma_kind_name(k)));
        json_array_append_new(a, json_pack("{s:s, s:[s], s:o}", "name", ldm_sampler_webui_name(all[i]), "aliases",
                                           ldm_sampler_name(all[i]), "options", opts));
    }
    respond_json(r, 200, a);
}

static void endpoint_schedulers(LdmHttpResponse *r) {
    static const struct {
        const char *name;
        LdmSigmaKind k;
    } sch[] = {
        {"uniform", LDM_SIGMAS_DISCRETE}, {"karras", LDM_SIGMAS_KARRAS}, {"exponential", LDM_SIGMAS_EXPONENTIAL},
        {"polyexponential", LDM_SIGMAS_POLYEXPONENTIAL}, {"align_your_steps", LDM_SIGMAS_AYS},
    };
    json_t *a = json_array();
    json_array_append_new(a, json_pack("{s:s, s:s, s:n, s:i, s:b}", "name", "automatic", "label", "Automatic",
                                       "aliases", "default_rho", -1, "need_inner_model", 0));
    for (size_t i = 0; i < sizeof sch / sizeof sch[0]; i++) {
        double rho = ldm_sigma_default_rho(sch[i].k);
        json_array_append_new(a, json_pack("{s:s, s:s, s:[s], s:f, s:b}", "name", sch[i].name, "label",
                                           ldm_sigma_kind_webui_name(sch[i].k), "aliases",
                                           ldm_sigma_kind_name(sch[i].k), "default_rho", rho > 0 ? rho : -1.0,
                                           "need_inner_model", 0));
    }
    respond_json(r, 200, a);
}

static void endpoint_models(LdmServer *s, LdmHttpResponse *r) {
    const char *file = s->b.model_file ? s->b.model_file : "";
    char *abs = realpath(file, NULL);
    json_t *m = json_object();
    json_object_set_new(m, "title", json_string(s->title));
    json_object_set_new(m, "model_name", json_string(s->b.model_name ? s->b.model_name : ""));
    json_object_set_new(m, "hash", s->b.model_hash && *s->b.model_hash ? json_string(s->b.model_hash) : json_null());
    json_object_set_new(m, "sha256", s->b.model_sha256 && *s->b.model_sha256 ? json_string(s->b.model_sha256) : json_null());
    json_t *fn = json_string(abs ? abs : file);
    json_object_set_new(m, "filename", fn ? fn : json_null());
    json_object_set_new(m, "config", json_null());
    free(abs);
    respond_json(r, 200, json_pack("[o]", m));
}

static json_t *options_json(LdmServer *s) {
    pthread_mutex_lock(&s->mu);
    int cs = s->clip_skip;
    pthread_mutex_unlock(&s->mu);
    json_t *o = json_object();
    json_object_set_new(o, "sd_model_checkpoint", json_string(s->title));
    json_object_set_new(o, "sd_checkpoint_hash", s->b.model_sha256 && *s->b.model_sha256 ? json_string(s->b.model_sha256) : json_null());
    json_object_set_new(o, "CLIP_stop_at_last_layers", json_integer(cs));
    json_object_set_new(o, "samples_format", json_string("png"));
    json_object_set_new(o, "sd_vae", json_string("Automatic"));
    json_object_set_new(o, "ldmc_sizes", json_array());
    for (int i = 0; i < s->b.n_sizes; i++) {
        char t[48];
        snprintf(t, sizeof t, "%dx%d", s->b.widths[i], s->b.heights[i]);
        json_array_append_new(json_object_get(o, "ldmc_sizes"), json_string(t));
    }
    json_object_set_new(o, "ldmc_clip_skips", json_integer(s->b.clip_skips));
    return o;
}

static void endpoint_options_post(LdmServer *s, LdmHttpResponse *r, json_t *o) {
    pthread_mutex_lock(&s->mu);
    int cs = s->clip_skip;
    pthread_mutex_unlock(&s->mu);
    if (apply_settings(s, r, o, "options", &cs) != 0) return;
    pthread_mutex_lock(&s->mu);
    s->clip_skip = cs;
    pthread_mutex_unlock(&s->mu);
    respond_json(r, 200, json_null());
}

static int auth_ok(const LdmServer *s, const char *h) {
    if (!s->o.api_key || !*s->o.api_key) return 1;
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    const char *k = h + 7;
    while (*k == ' ') k++;
    size_t a = strlen(k), b = strlen(s->o.api_key);
    unsigned diff = (unsigned)(a != b);
    for (size_t i = 0; i < a && i < b; i++) diff |= (unsigned)(k[i] ^ s->o.api_key[i]);
    return diff == 0;
}

typedef enum { EP_NONE, EP_PAGE, EP_TXT2IMG, EP_IMG2IMG, EP_PROGRESS, EP_INTERRUPT, EP_SAMPLERS, EP_SCHEDULERS,
               EP_MODELS, EP_OPTIONS, EP_OPENAI } Endpoint;

static const struct {
    const char *path;
    Endpoint ep;
    const char *allow;         /* methods */
} routes[] = {
    {"/", EP_PAGE, "GET, HEAD"},
    {"/index.html", EP_PAGE, "GET, HEAD"},
    {"/sdapi/v1/txt2img", EP_TXT2IMG, "POST"},
    {"/sdapi/v1/img2img", EP_IMG2IMG, "POST"},
    {"/sdapi/v1/progress", EP_PROGRESS, "GET"},
    {"/sdapi/v1/interrupt", EP_INTERRUPT, "POST"},
    {"/sdapi/v1/samplers", EP_SAMPLERS, "GET"},
    {"/sdapi/v1/schedulers", EP_SCHEDULERS, "GET"},
    {"/sdapi/v1/sd-models", EP_MODELS, "GET"},
    {"/sdapi/v1/options", EP_OPTIONS, "GET, POST"},
    {"/v1/images/generations", EP_OPENAI, "POST"},
};

void ldm_server_handle(LdmServer *s, const LdmHttpRequest *rq, LdmHttpResponse *r) {
    memset(r, 0, sizeof *r);
    r->cors = s->o.cors_origin != NULL;
    const char *method = rq->method ? rq->method : "", *url = rq->url ? rq->url : "";
    r->openai_errors = !strncmp(url, "/v1/", 4);
    Endpoint ep = EP_NONE;
    const char *allow = NULL;
    size_t ul = strlen(url);
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        /* (a trailing slash is the same path) */
        size_t pl = strlen(routes[i].path);
        if (!strcmp(url, routes[i].path) || (pl > 1 && ul == pl + 1 && !strncmp(url, routes[i].path, pl) && url[pl] == '/')) {
            ep = routes[i].ep;
            allow = routes[i].allow;
        }
    }
    if (ep == EP_NONE) {
        respond_error(r, 404, "%s: no such endpoint (see docs/server.md)", url);
        return;
    }
    if (!strcmp(method, "OPTIONS")) {
        /* CORS preflight (no credentials: before the key check) */
        r->status = 204;
        r->body = ldm_xstrdup("");
        r->content_type = "text/plain";
        r->allow = allow;
        return;
    }
    int get = !strcmp(method, "GET") || (!strcmp(method, "HEAD") && ep == EP_PAGE), post = !strcmp(method, "POST");
    int ok = strstr(allow, "GET") ? get : 0;
    if (strstr(allow, "POST") && post) ok = 1;
    if (!ok) {
        respond_error(r, 405, "%s %s: method not allowed (allowed: %s)", method, url, allow);
        r->allow = allow;
        return;
    }
    if (ep == EP_PAGE) {
        r->status = 200;
        r->body_n = (size_t)(ldm_server_page_end - ldm_server_page);
        r->body = ldm_xmalloc(r->body_n + 1);
        memcpy(r->body, ldm_server_page, r->body_n);
        r->body[r->body_n] = 0;
        r->content_type = "text/html; charset=utf-8";
        return;
    }
    if (!auth_ok(s, rq->authorization)) {
        respond_error(r, 401, "%s: missing or wrong API key (send the header Authorization: Bearer KEY)", url);
        return;
    }
    if (rq->body_too_large) {
        respond_error(r, 413, "the request body is over %zu bytes (--max-body)", s->o.max_body);
        return;
    }
    json_t *body = NULL;
    if (post && ep != EP_INTERRUPT) {
        json_error_t err;
        body = json_loadb(rq->body ? rq->body : "", rq->body_n, JSON_REJECT_DUPLICATES, &err);
        if (!body) {
            respond_error(r, 400, "the body is not valid JSON: %s (line %d, column %d)", err.text, err.line,
                          err.column);
            return;
        }
        if (!json_is_object(body)) {
            json_decref(body);
            respond_error(r, 422, "the body must be a JSON object");
            return;
        }
    }
    switch (ep) {
    case EP_TXT2IMG: endpoint_generate(s, r, body, 0); break;
    case EP_IMG2IMG: endpoint_generate(s, r, body, 1); break;
    case EP_OPENAI: endpoint_openai(s, r, body); break;
    case EP_PROGRESS: endpoint_progress(s, r, rq->query); break;
    case EP_INTERRUPT:
        pthread_mutex_lock(&s->mu);
        if (s->current) s->interrupt = 1;
        pthread_mutex_unlock(&s->mu);
        respond_json(r, 200, json_object());
        break;
    case EP_SAMPLERS: endpoint_samplers(r); break;
    case EP_SCHEDULERS: endpoint_schedulers(r); break;
    case EP_MODELS: endpoint_models(s, r); break;
    case EP_OPTIONS:
        if (post) endpoint_options_post(s, r, body);
        else respond_json(r, 200, options_json(s));
        break;
    default: respond_error(r, 404, "%s: no such endpoint", url); break;
    }
    json_decref(body);
}

/* ----------------------------------------------------------------------------
 * HTTP (libmicrohttpd)
 * ------------------------------------------------------------------------- */

typedef struct Conn {
    char *body;
    size_t n, cap;
    int too_large;
} Conn;

static enum MHD_Result add_query(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    char **q = cls;
    char *t = ldm_xasprintf("%s%s%s=%s", *q ? *q : "", *q ? "&" : "", key, value ? value : "");
    free(*q);
    *q = t;
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_n, void **con_cls) {
    (void)version;
    LdmServer *s = cls;
    Conn *cn = *con_cls;
    if (!cn) {
        cn = ldm_xcalloc(1, sizeof *cn);
        *con_cls = cn;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->o.max_body) cn->too_large = 1;
        if (!cn->too_large) return MHD_YES; /* the body comes in the next calls */
        /* answer 413 now: the body is not read */
    } else if (*upload_n > 0) {
        if (!cn->too_large && cn->n + *upload_n > s->o.max_body) {
            cn->too_large = 1;
            free(cn->body);
            cn->body = NULL;
            cn->n = cn->cap = 0;
        }
        if (!cn->too_large) {
            if (cn->n + *upload_n + 1 > cn->cap) {
                cn->cap = (cn->n + *upload_n + 1) * 2;
                cn->body = ldm_xrealloc(cn->body, cn->cap);
            }
            memcpy(cn->body + cn->n, upload, *upload_n);
            cn->n += *upload_n;
        }
        *upload_n = 0;
        return MHD_YES;
    }
    char *query = NULL;
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, add_query, &query);
    LdmHttpRequest rq = {
        .method = method,
        .url = url,
        .query = query,
        .authorization = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
        .body = cn->body,
        .body_n = cn->n,
        .body_too_large = cn->too_large,
    };
    LdmHttpResponse r;
    ldm_server_handle(s, &rq, &r);
    free(query);
    struct MHD_Response *mr = MHD_create_response_from_buffer(r.body_n, r.body, MHD_RESPMEM_MUST_FREE);
    r.body = NULL;
    if (!mr) {
        ldm_http_response_free(&r);
        return MHD_NO;
    }
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, r.content_type ? r.content_type : "text/plain");
    if (r.retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", r.retry_after);
        MHD_add_response_header(mr, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (r.allow) MHD_add_response_header(mr, MHD_HTTP_HEADER_ALLOW, r.allow);
    if (r.cors) {
        MHD_add_response_header(mr, "Access-Control-Allow-Origin", s->o.cors_origin);
        MHD_add_response_header(mr, "Vary", "Origin");
        if (r.status == 204) {
            MHD_add_response_header(mr, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
            MHD_add_response_header(mr, "Access-Control-Allow-Headers", "Authorization, Content-Type");
            MHD_add_response_header(mr, "Access-Control-Max-Age", "600");
        }
    }
    if (cn->too_large) MHD_add_response_header(mr, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)r.status, mr);
    MHD_destroy_response(mr);
    ldm_http_response_free(&r);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    Conn *cn = *con_cls;
    if (cn) {
        free(cn->body);
        free(cn);
    }
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    LdmServer *s = cls;
    if (s->o.quiet) return;
    fprintf(stderr, "server: ");
    vfprintf(stderr, fmt, ap);
}

/* SIGINT/SIGTERM: the handler writes the signal's number to a pipe that a
 * thread of ours reads (OpenMP's threads exist before the server starts,
 * so the signals cannot be kept for one thread with sigwait). */
static int g_sig_pipe[2] = {-1, -1};

static void on_signal(int sig) {
    unsigned char b = (unsigned char)sig;
    int e = errno;
    ssize_t w = write(g_sig_pipe[1], &b, 1);
    (void)w;
    errno = e;
}

static void *signal_thread(void *arg) {
    LdmServer *s = arg;
    unsigned char b = 0;
    for (;;) {
        ssize_t n = read(g_sig_pipe[0], &b, 1);
        if (n == 1 || (n < 0 && errno != EINTR)) break;
    }
    pthread_mutex_lock(&s->mu);
    int was = s->stopping;
    s->stopping = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (b && !was && !s->o.quiet)
        fprintf(stderr, "server: %s: finishing (the running and queued requests are answered 503)\n",
                b == SIGINT ? "SIGINT" : "SIGTERM");
    return NULL;
}

static int parse_listen(const char *l, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    const char *colon = strrchr(l, ':');
    char host[64] = "127.0.0.1";
    const char *port = l;
    if (colon) {
        size_t hn = (size_t)(colon - l);
        if (hn == 0 || hn >= sizeof host) return ldm_fail("--listen %s: expected PORT or HOST:PORT (an IPv4 address)", l);
        memcpy(host, l, hn);
        host[hn] = 0;
        port = colon + 1;
    }
    char *end;
    long p = strtol(port, &end, 10);
    if (!*port || *end || p < 0 || p > 65535) return ldm_fail("--listen %s: bad port '%s'", l, port);
    if (!strcmp(host, "localhost")) snprintf(host, sizeof host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
        return ldm_fail("--listen %s: '%s' is not an IPv4 address (e.g. 127.0.0.1 or 0.0.0.0)", l, host);
    sa->sin_port = htons((uint16_t)p);
    return 0;
}

int ldm_server_check_listen(const char *listen) {
    struct sockaddr_in sa;
    return parse_listen(listen, &sa);
}

int ldm_server_run(LdmServer *s) {
    struct sockaddr_in sa;
    if (parse_listen(s->o.listen, &sa) != 0) return -1;
    /* a thread per connection: without a bound glibc gives each its own
     * malloc arena (up to 8 per core), which keeps the memory they touched */
    mallopt(M_ARENA_MAX, 2);
    if (pipe(g_sig_pipe) != 0) return ldm_fail("cannot make a pipe: %s", strerror(errno));
    struct sigaction sa_new, sa_int, sa_term;
    memset(&sa_new, 0, sizeof sa_new);
    sa_new.sa_handler = on_signal;
    sigemptyset(&sa_new.sa_mask);
    sigaction(SIGINT, &sa_new, &sa_int);
    sigaction(SIGTERM, &sa_new, &sa_term);
    signal(SIGPIPE, SIG_IGN);
    s->running = 1;
    pthread_t sig_t;
    if (pthread_create(&sig_t, NULL, signal_thread, s) != 0) {
        sigaction(SIGINT, &sa_int, NULL);
        sigaction(SIGTERM, &sa_term, NULL);
        return ldm_fail("cannot start a thread: %s", strerror(errno));
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        on_request, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(s->o.queue + 48), MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
        MHD_OPTION_END);
    int rc = 0;
    if (!d) {
        char host[64];
        inet_ntop(AF_INET, &sa.sin_addr, host, sizeof host);
        rc = ldm_fail("--listen %s: cannot listen on %s:%d (in use, or not an address of this machine?)",
                      s->o.listen, host, ntohs(sa.sin_port));
        on_signal(0); /* (wakes signal_thread) */
        pthread_join(sig_t, NULL);
        sigaction(SIGINT, &sa_int, NULL);
        sigaction(SIGTERM, &sa_term, NULL);
        close(g_sig_pipe[0]);
        close(g_sig_pipe[1]);
        s->running = 0;
        return rc;
    }
    if (!s->o.quiet) {
        char host[64];
        inet_ntop(AF_INET, &sa.sin_addr, host, sizeof host);
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        fprintf(stderr, "server: listening on http://%s:%u/ (queue %d, max body %zu bytes%s%s)\n", host,
                di ? (unsigned)di->port : (unsigned)ntohs(sa.sin_port), s->o.queue, s->o.max_body,
                s->o.api_key ? ", API key required" : "", s->o.cors_origin ? ", CORS" : "");
    }
    /* generate, in this thread, job after job */
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stopping && !s->head) pthread_cond_wait(&s->cv, &s->mu);
        if (s->stopping) break;
        Job *j = s->head;
        s->head = j->next;
        if (!s->head) s->tail = NULL;
        s->n_queued--;
        job_start(s, j);
        pthread_mutex_unlock(&s->mu);
        job_run(s, j);
        pthread_mutex_lock(&s->mu);
        j->done = 1;
        pthread_cond_signal(&j->cv);
    }
    /* stopping: the queued jobs are answered 503 */
    while (s->head) {
        Job *j = s->head;
        s->head = j->next;
        s->n_queued--;
        j->rc = LDM_GEN_ESHUTDOWN;
        snprintf(j->error, sizeof j->error, "the server is shutting down");
        j->done = 1;
        pthread_cond_signal(&j->cv);
    }
    s->tail = NULL;
    /* let the waiting connections take their answers (bounded) */
    double t0 = now_s();
    while (s->n_waiting > 0 && now_s() - t0 < 5.0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50000000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    /* and send them: the daemon stops accepting, then finishes */
    MHD_quiesce_daemon(d);
    usleep(200000);
    MHD_stop_daemon(d);
    on_signal(0); /* (if signal_thread still waits) */
    pthread_join(sig_t, NULL);
    sigaction(SIGINT, &sa_int, NULL);
    sigaction(SIGTERM, &sa_term, NULL);
    close(g_sig_pipe[0]);
    close(g_sig_pipe[1]);
    s->running = 0;
    if (!s->o.quiet) fprintf(stderr, "server: stopped after %llu requests\n", (unsigned long long)s->jobs_done);
    return 0;
}
