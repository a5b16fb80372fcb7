/*
 * fuzz_http.c - the server's request handling (runtime/apps/server.c) as
 * the HTTP layer calls it: ldm_server_handle on a method, a URL (with its
 * query) and a body, with the generation replaced by a fake that makes
 * small blank PNGs (the networks are not what is fuzzed here). The input:
 *
 *   METHOD URL                  (first line; no newline: the whole input is
 *   [Authorization: VALUE]       the body of POST /sdapi/v1/txt2img)
 *   BODY...                     (the rest, JSON for the POST endpoints)
 *
 * Two servers answer each input: one without an API key, one with the key
 * "k" and a CORS origin. Oracles: every response has a status the server
 * documents and, but for the page, a JSON body; an error body is
 * {"error": string, "detail": string} (under /v1/ OpenAI's {"error":
 * {"message": string, "type": string, ...}}); a webui 200 has one image per
 * all_seeds entry, each a PNG the image reader takes; base64 round-trips.
 */
#include "fuzz.h"

#include <jansson.h>

#include "../../runtime/apps/server.h"
#include "image.h"
#include "util.h"

static const int widths[] = {8, 16}, heights[] = {8, 8};

static int fake_generate(void *ctx, const LdmGenRequest *rq, LdmGenResult *out) {
    (void)ctx;
    memset(out, 0, sizeof *out);
    if (rq->width < 1 || rq->height < 1 || rq->n_images < 1 || rq->n_images > 64) abort();
    if (rq->img2img && !rq->init_image) abort();
    for (int i = 0; i < rq->n_images; i++) {
        rq->step(rq->hctx, i, rq->n_images, 1, rq->steps);
        uint8_t *rgb = ldm_xcalloc((size_t)rq->width * rq->height * 3, 1), *png;
        size_t n;
        char *info = ldm_xasprintf("%s\nSteps: %d", rq->prompt, rq->steps);
        const char *kv[] = {"parameters", info, NULL};
        if (ldm_png_encode_rgb8_text(rgb, rq->width, rq->height, kv, &png, &n) != 0) abort();
        free(rgb);
        ldm_gen_result_add(out, png, n, info, rq->seed + (uint64_t)i);
    }
    /* some prompts fail as a generator can ("prompt too long") */
    if (strstr(rq->prompt, "FAIL")) {
        ldm_gen_result_free(out);
        return ldm_fail("fake failure"), LDM_GEN_EBAD;
    }
    return LDM_GEN_OK;
}

static LdmServer *make_server(const char *key, const char *cors) {
    LdmServerBackend b = {
        .generate = fake_generate,
        .n_sizes = 2,
        .widths = widths,
        .heights = heights,
        .max_steps = 1000,
        .clip_skips = 2,
        .model_name = "tiny",
        .model_file = "tiny.safetensors",
        .model_hash = "0123456789",
        .model_sha256 = "",
    };
    LdmServerOptions o = {.listen = "0", .api_key = key, .cors_origin = cors, .max_body = 1 << 20, .quiet = 1};
    return ldm_server_new(&b, &o);
}

static void check_response(const LdmHttpRequest *rq, const LdmHttpResponse *r) {
    static const int ok[] = {200, 204, 400, 401, 404, 405, 413, 422, 500, 503};
    int known = 0;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) known |= r->status == ok[i];
    if (!known || !r->body || !r->content_type) abort();
    if (r->status == 204 || strstr(r->content_type, "text/html")) return;
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_n, JSON_DECODE_ANY, &e);
    if (!j) abort(); /* every API answer is JSON (POST options: null, as the webui) */
    if (r->status >= 400) {
        if (!strncmp(rq->url, "/v1/", 4)) { /* OpenAI's shape */
            json_t *e = json_object_get(j, "error");
            if (!json_is_object(e) || !json_is_string(json_object_get(e, "message")) ||
                !json_is_string(json_object_get(e, "type")))
                abort();
        } else if (!json_is_string(json_object_get(j, "error")) || !json_is_string(json_object_get(j, "detail"))) {
            abort();
        }
    } else if (!strcmp(rq->method, "POST") && strstr(rq->url, "2img")) {
        json_t *imgs = json_object_get(j, "images");
        json_t *info = json_loads(json_string_value(json_object_get(j, "info")), 0, &e);
        if (!json_is_array(imgs) || !info) abort();
        if (json_array_size(imgs) != json_array_size(json_object_get(info, "all_seeds"))) abort();
        const char *b = json_string_value(json_array_get(imgs, 0));
        uint8_t *png;
        size_t n;
        float *chw;
        if (!b || ldm_base64_decode(b, strlen(b), &png, &n) != 0) abort();
        if (ldm_image_load_mem(png, n, "image", 0, 0, &chw, NULL, NULL) != 0) abort();
        free(chw);
        free(png);
        json_decref(info);
    }
    json_decref(j);
}

LDM_FUZZ_TARGET(http) {
    static LdmServer *plain, *keyed;
    if (!plain) {
        plain = make_server(NULL, NULL);
        keyed = make_server("k", "http://example.com");
    }
    char *text = ldm_xmalloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;
    char method[16] = "POST", url[256] = "/sdapi/v1/txt2img", *query = NULL, *auth = NULL;
    const char *body = text;
    size_t body_n = size;
    char *nl = memchr(text, '\n', size);
    if (nl) {
        *nl = 0;
        char m[16], u[256];
        if (sscanf(text, "%15s %255s", m, u) == 2) {
            snprintf(method, sizeof method, "%s", m);
            snprintf(url, sizeof url, "%s", u);
        }
        body = nl + 1;
        body_n = size - (size_t)(body - text);
        if (!strncmp(body, "Authorization: ", 15)) {
            char *e = memchr(body, '\n', body_n);
            if (e) {
                *e = 0;
                auth = (char *)body + 15;
                body_n -= (size_t)(e + 1 - body);
                body = e + 1;
            }
        }
        char *q = strchr(url, '?');
        if (q) *q = 0, query = q + 1;
    }
    LdmServer *ss[2] = {plain, keyed};
    for (int k = 0; k < 2; k++) {
        LdmHttpRequest rq = {.method = method, .url = url, .query = query, .authorization = auth, .body = body,
                             .body_n = body_n, .body_too_large = body_n > 60000};
        LdmHttpResponse r;
        ldm_server_handle(ss[k], &rq, &r);
        check_response(&rq, &r);
        ldm_http_response_free(&r);
    }
    /* base64 both ways on the raw input */
    uint8_t *dec;
    size_t dn;
    if (ldm_base64_decode((const char *)data, size, &dec, &dn) == 0) {
        char *enc = ldm_base64_encode(dec, dn, NULL);
        uint8_t *again;
        size_t an;
        if (ldm_base64_decode(enc, strlen(enc), &again, &an) != 0 || an != dn || (dn && memcmp(again, dec, dn))) abort();
        free(again);
        free(enc);
        free(dec);
    }
    free(text);
    return 0;
}
