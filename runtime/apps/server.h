/*
 * server.h - the HTTP server of the txt2img executables (--listen): the
 * AUTOMATIC1111 webui's API subset, OpenAI's image generation endpoint and
 * a web page, over libmicrohttpd, with one generation at a time from a
 * bounded FIFO queue (docs/server.md).
 *
 * The server knows nothing of networks: a backend (txt2img.c's server glue,
 * or a fake in the tests and the fuzz harness) turns a parsed request into
 * PNG images. The request -> response logic is ldm_server_handle, a plain
 * function of (method, url, query, headers, body) that the HTTP layer, the
 * tests and tests/fuzz/fuzz_http.c call alike.
 */
#ifndef LDM_SERVER_H
#define LDM_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "sampler.h"
#include "schedule.h"

/* What the backend's generate() reports after each sampling step and before
 * each image; returns LDM_GEN_GO_ON, LDM_GEN_INTERRUPT (stop sampling this
 * image, decode its last x0 prediction, make no more: the webui's
 * "Interrupt") or LDM_GEN_ABORT (the server is shutting down: fail). */
enum { LDM_GEN_GO_ON = 0, LDM_GEN_INTERRUPT = 1, LDM_GEN_ABORT = 2 };
typedef int (*LdmGenStepFn)(void *hctx, int image, int n_images, int step, int n_steps);
/* Live previews (/sdapi/v1/progress's current_image): wants(hctx) says
 * whether a client asked for one lately; put(hctx, png, n) hands the server
 * a PNG of the current x0 prediction (malloc'd; the server takes it). */
typedef int (*LdmGenWantsPreviewFn)(void *hctx);
typedef void (*LdmGenPreviewFn)(void *hctx, uint8_t *png, size_t n);

/* One generation request, checked and with every default filled in. */
typedef struct LdmGenRequest {
    int img2img;               /* /sdapi/v1/img2img */
    const char *prompt;        /* with its <lora:...> tags */
    const char *negative;
    int steps;
    double cfg_scale;
    LdmSamplerKind sampler;
    int has_schedule;          /* scheduler (or a sampler name suffix) given: k-diffusion samplers */
    LdmSigmaKind schedule;
    uint64_t seed;             /* the first image's; image i has seed + i */
    int size;                  /* index of the size in the backend's list */
    int width, height;
    int n_images;              /* batch_size * n_iter */
    double strength;           /* img2img denoising_strength */
    const float *init_image;   /* (3, height, width) in [-1, 1], or NULL */
    const float *mask;         /* (height, width) in [0, 1], white = repaint, or NULL */
    int clip_skip;
    LdmGenStepFn step;         /* progress and interruption (see above) */
    LdmGenWantsPreviewFn wants_preview;
    LdmGenPreviewFn preview;
    void *hctx;
} LdmGenRequest;

/* Its result: n images, each a PNG (with the `parameters` text chunk), its
 * infotext and seed. */
typedef struct LdmGenResult {
    int n;
    uint8_t **png;
    size_t *png_n;
    char **infotext;
    uint64_t *seeds;
    int interrupted;           /* interrupted: fewer images than asked, the last one partly sampled */
} LdmGenResult;
void ldm_gen_result_free(LdmGenResult *r);
/* Append one image (takes png and infotext). */
void ldm_gen_result_add(LdmGenResult *r, uint8_t *png, size_t n, char *infotext, uint64_t seed);

/* What generate() returns. */
enum { LDM_GEN_OK = 0, LDM_GEN_EBAD = -1, LDM_GEN_EINTERNAL = -2, LDM_GEN_ESHUTDOWN = -3 };

typedef struct LdmServerBackend {
    void *ctx;
    /* LDM_GEN_OK, or an error with ldm_fail's message: LDM_GEN_EBAD (the
     * request cannot be made: 422), LDM_GEN_EINTERNAL (500), LDM_GEN_ESHUTDOWN
     * (aborted by the step function: 503). */
    int (*generate)(void *ctx, const LdmGenRequest *rq, LdmGenResult *out);
    int n_sizes;               /* the compiled sizes, the first the default */
    const int *widths, *heights;
    int max_steps;             /* the model's timesteps */
    int clip_skips;            /* CLIP skip 1..clip_skips */
    int hybrid;                /* an inpainting model (is_using_inpainting_conditioning) */
    const char *model_name;    /* the checkpoint's file stem */
    const char *model_file;    /* its path */
    const char *model_hash;    /* 10 hex ("" if unknown) */
    const char *model_sha256;  /* 64 hex ("" if unknown) */
    const char *banner;        /* "ldmc ... for CONFIG at ..." */
} LdmServerBackend;

typedef struct LdmServerOptions {
    const char *listen;        /* "PORT", "HOST:PORT" (default host 127.0.0.1) */
    int queue;                 /* queued requests beyond the running one (default 16) */
    size_t max_body;           /* bytes (default 32 MiB) */
    const char *api_key;       /* NULL: no key */
    const char *cors_origin;   /* NULL: no CORS headers */
    int quiet;
} LdmServerOptions;

typedef struct LdmServer LdmServer;

/* A server for backend b (copied). Without ldm_server_run it generates in
 * the caller of ldm_server_handle (tests, fuzzing). */
LdmServer *ldm_server_new(const LdmServerBackend *b, const LdmServerOptions *o);
void ldm_server_free(LdmServer *s);
/* The CLIP skip of requests without override_settings (the option
 * CLIP_stop_at_last_layers; default 1). */
void ldm_server_set_clip_skip(LdmServer *s, int clip_skip);

/* Serve until SIGINT or SIGTERM: libmicrohttpd's threads take the requests
 * (a thread per connection), the calling thread generates, one request at a
 * time, in arrival order. On the signal the running generation stops at
 * its next step, it and every queued request are answered 503, and 0 is
 * returned; -1 (ldm_fail) if the server cannot start. */
int ldm_server_run(LdmServer *s);
/* Is --listen's value ("PORT", "HOST:PORT") well-formed? 0, or -1 (ldm_fail). */
int ldm_server_check_listen(const char *listen);

/* ---- the request -> response logic, without sockets ---------------------- */

typedef struct LdmHttpRequest {
    const char *method;        /* "GET", "POST", "OPTIONS", ... */
    const char *url;           /* the path, without the query */
    const char *query;         /* "a=1&b=2" or NULL */
    const char *authorization; /* the Authorization header, or NULL */
    const char *body;
    size_t body_n;
    int body_too_large;        /* the body was over max_body bytes (dropped): 413 */
} LdmHttpRequest;

typedef struct LdmHttpResponse {
    int status;
    char *body;                /* malloc'd */
    size_t body_n;
    const char *content_type;
    int retry_after;           /* > 0: a Retry-After header (seconds) */
    const char *allow;         /* an Allow header (405, OPTIONS), or NULL */
    int cors;                  /* add the CORS headers (--cors-origin) */
    int openai_errors;         /* errors in OpenAI's shape (URLs under /v1/) */
} LdmHttpResponse;

void ldm_server_handle(LdmServer *s, const LdmHttpRequest *rq, LdmHttpResponse *out);
void ldm_http_response_free(LdmHttpResponse *r);

/* The CORS origin (NULL: none), for the HTTP layer. */
const char *ldm_server_cors_origin(const LdmServer *s);

/* Base64 (RFC 4648, '=' padding; decoding skips white space and a
 * "data:...;base64," prefix): malloc'd results; decode returns -1 on bad
 * input. */
char *ldm_base64_encode(const uint8_t *data, size_t n, size_t *out_n);
int ldm_base64_decode(const char *text, size_t n, uint8_t **out, size_t *out_n);

#endif
