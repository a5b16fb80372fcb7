/*
 * test_server.c - the txt2img executables' HTTP server (runtime/apps/server.c,
 * docs/server.md).
 *
 *   handle: ldm_server_handle with a fake generator (no sockets): the
 *     webui's response shape and defaults, every error a client can cause
 *     (status and the field named), auth, CORS, options, OpenAI;
 *   http: the sd1-tiny executable (testio.h test_build_sd1_tiny_txt2img) run
 *     with --listen and talked to over sockets: an image equal to the
 *     command line's, img2img, interrupt, the queue bound (503 +
 *     Retry-After), SIGTERM during a generation (queued and running
 *     requests answered 503, exit status 0);
 *   load: 8 clients x 4 requests with malformed and aborted requests
 *     interleaved: every accepted request answered once with the right
 *     image, RSS after within 10% of RSS after the first request;
 *   browser: tests/server/browser_test.py drives headless Chromium
 *     (Selenium) through the page at / and saves a screenshot.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <check.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../runtime/apps/server.h"
#include "image.h"
#include "infotext.h"
#include "testio.h"
#include "testproc.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define SRV_SAN 1
#else
#define SRV_SAN 0
#endif

/* ------------------------------------------------------------------------
 * handle: a fake generator
 * ------------------------------------------------------------------------ */

static const int k_widths[] = {64, 96}, k_heights[] = {64, 64};
static LdmGenRequest g_last;   /* the last request the fake saw */
static int g_fake_fail;        /* make it fail with this code */
static float g_init0, g_mask0; /* its init image's and mask's first values (-9: none) */

static int fake_generate(void *ctx, const LdmGenRequest *rq, LdmGenResult *out) {
    (void)ctx;
    g_last = *rq;
    g_init0 = rq->init_image ? rq->init_image[0] : -9.0f;
    g_mask0 = rq->mask ? rq->mask[0] : -9.0f;
    memset(out, 0, sizeof *out);
    if (g_fake_fail) return ldm_fail("fake failure"), g_fake_fail;
    for (int i = 0; i < rq->n_images; i++) {
        if (rq->step(rq->hctx, i, rq->n_images, 1, rq->steps) != LDM_GEN_GO_ON) break;
        uint8_t *rgb = ldm_xcalloc((size_t)rq->width * rq->height * 3, 1);
        char *info = ldm_xasprintf("%s\nSteps: %d, Seed: %llu, Size: %dx%d", rq->prompt, rq->steps,
                                   (unsigned long long)(rq->seed + (uint64_t)i), rq->width, rq->height);
        const char *kv[] = {"parameters", info, NULL};
        uint8_t *png;
        size_t n;
        ck_assert(ldm_png_encode_rgb8_text(rgb, rq->width, rq->height, kv, &png, &n) == 0);
        free(rgb);
        ldm_gen_result_add(out, png, n, info, rq->seed + (uint64_t)i);
    }
    return LDM_GEN_OK;
}

static LdmServer *fake_server(const char *key, const char *cors) {
    LdmServerBackend b = {
        .generate = fake_generate,
        .n_sizes = 2,
        .widths = k_widths,
        .heights = k_heights,
        .max_steps = 1000,
        .clip_skips = 2,
        .model_name = "tiny",
        .model_file = "/models/tiny.safetensors",
        .model_hash = "0123456789",
        .model_sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    };
    LdmServerOptions o = {.listen = "0", .api_key = key, .cors_origin = cors, .quiet = 1};
    g_fake_fail = 0;
    return ldm_server_new(&b, &o);
}

/* One request; the response's JSON (NULL if not JSON) and status. */
static json_t *call(LdmServer *s, const char *method, const char *url, const char *body, int *status,
                    LdmHttpResponse *keep) {
    LdmHttpRequest rq = {.method = method, .url = url, .body = body, .body_n = body ? strlen(body) : 0};
    LdmHttpResponse r;
    ldm_server_handle(s, &rq, &r);
    *status = r.status;
    json_error_t e;
    json_t *j = r.body ? json_loadb(r.body, r.body_n, 0, &e) : NULL;
    if (keep) *keep = r;
    else ldm_http_response_free(&r);
    return j;
}

/* status and a detail naming `needle` */
static void expect_error(LdmServer *s, const char *method, const char *url, const char *body, int status,
                         const char *needle) {
    int st;
    json_t *j = call(s, method, url, body, &st, NULL);
    ck_assert_msg(j, "%s %s %s: no JSON", method, url, body ? body : "");
    const char *d = json_string_value(json_object_get(j, "detail"));
    ck_assert_msg(st == status, "%s %s %s: status %d, expected %d (%s)", method, url, body ? body : "", st, status,
                  d ? d : "");
    ck_assert_msg(json_is_string(json_object_get(j, "error")), "no \"error\"");
    ck_assert_msg(d && strstr(d, needle), "%s %s: detail '%s' does not name '%s'", url, body ? body : "", d ? d : "",
                  needle);
    json_decref(j);
}

/* OpenAI's error shape (URLs under /v1/): {"error": {"message" naming
 * `needle`, "type", "param", "code"}} and the status; no webui "detail". */
static void expect_openai_error(LdmServer *s, const char *body, int status, const char *type, const char *code,
                                const char *needle) {
    int st;
    json_t *j = call(s, "POST", "/v1/images/generations", body, &st, NULL);
    ck_assert_msg(j, "%s: no JSON", body ? body : "");
    json_t *e = json_object_get(j, "error");
    const char *m = json_string_value(json_object_get(e, "message"));
    ck_assert_msg(st == status, "%s: status %d, expected %d (%s)", body ? body : "", st, status, m ? m : "");
    ck_assert_msg(json_is_object(e) && m && strstr(m, needle), "%s: error.message '%s' does not name '%s'",
                  body ? body : "", m ? m : "", needle);
    ck_assert_str_eq(json_string_value(json_object_get(e, "type")), type);
    ck_assert(json_object_get(e, "param") && json_is_null(json_object_get(e, "param")));
    if (code) ck_assert_str_eq(json_string_value(json_object_get(e, "code")), code);
    else ck_assert(json_is_null(json_object_get(e, "code")));
    ck_assert(!json_object_get(j, "detail"));
    json_decref(j);
}

START_TEST(test_base64) {
    const uint8_t d[] = {0, 1, 2, 250, 251, 252, 253};
    for (size_t n = 0; n <= sizeof d; n++) {
        size_t m;
        char *t = ldm_base64_encode(d, n, &m);
        ck_assert_uint_eq(m, strlen(t));
        uint8_t *back;
        size_t bn;
        ck_assert_msg(ldm_base64_decode(t, m, &back, &bn) == 0, "%s", t);
        ck_assert_uint_eq(bn, n);
        ck_assert(n == 0 || memcmp(back, d, n) == 0);
        free(back);
        free(t);
    }
    uint8_t *o;
    size_t on;
    ck_assert(ldm_base64_decode("data:image/png;base64,aGk=", 26, &o, &on) == 0 && on == 2 && !memcmp(o, "hi", 2));
    free(o);
    ck_assert(ldm_base64_decode("aG k=\n", 6, &o, &on) == 0 && on == 2);
    free(o);
    ck_assert(ldm_base64_decode("a!==", 4, &o, &on) != 0);
    ck_assert(ldm_base64_decode("aGk=aGk", 7, &o, &on) != 0);
    ck_assert(ldm_base64_decode("a", 1, &o, &on) != 0);
    ck_assert(ldm_base64_decode("data:nocomma", 12, &o, &on) != 0);
}
END_TEST

START_TEST(test_txt2img_shape) {
    LdmServer *s = fake_server(NULL, NULL);
    int st;
    json_t *j = call(s, "POST", "/sdapi/v1/txt2img",
                     "{\"prompt\": \"a fox\", \"seed\": 7, \"batch_size\": 2, \"n_iter\": 2, \"width\": 96}", &st, NULL);
    ck_assert_int_eq(st, 200);
    json_t *imgs = json_object_get(j, "images");
    ck_assert_int_eq((int)json_array_size(imgs), 4);
    for (size_t i = 0; i < 4; i++) {
        const char *b = json_string_value(json_array_get(imgs, i));
        uint8_t *png;
        size_t n;
        ck_assert(ldm_base64_decode(b, strlen(b), &png, &n) == 0);
        float *chw;
        int w, h;
        ck_assert_msg(ldm_image_load_mem(png, n, "image", 96, 64, &chw, &w, &h) == 0, "%s", ldm_last_error());
        free(chw);
        free(png);
    }
    /* parameters: the request with the webui's defaults */
    json_t *p = json_object_get(j, "parameters");
    ck_assert_int_eq(json_integer_value(json_object_get(p, "steps")), 50);
    ck_assert(json_real_value(json_object_get(p, "cfg_scale")) == 7.0);
    ck_assert_str_eq(json_string_value(json_object_get(p, "sampler_name")), "Euler");
    ck_assert_int_eq(json_integer_value(json_object_get(p, "seed")), 7);
    ck_assert_int_eq(json_integer_value(json_object_get(p, "height")), 64);
    ck_assert_str_eq(json_string_value(json_object_get(p, "negative_prompt")), "");
    ck_assert(g_last.sampler == LDM_SAMPLER_EULER && !g_last.has_schedule && g_last.steps == 50 && g_last.clip_skip == 1);
    /* info: Processed.js() as a string */
    const char *is = json_string_value(json_object_get(j, "info"));
    ck_assert(is);
    json_error_t e;
    json_t *info = json_loads(is, 0, &e);
    ck_assert_msg(info, "info: %s", e.text);
    ck_assert_int_eq(json_integer_value(json_object_get(info, "seed")), 7);
    json_t *seeds = json_object_get(info, "all_seeds"), *texts = json_object_get(info, "infotexts");
    ck_assert_int_eq((int)json_array_size(seeds), 4);
    ck_assert_int_eq((int)json_array_size(texts), 4);
    for (int i = 0; i < 4; i++) ck_assert_int_eq(json_integer_value(json_array_get(seeds, (size_t)i)), 7 + i);
    ck_assert(strstr(json_string_value(json_array_get(texts, 3)), "Seed: 10"));
    const char *keys[] = {"prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "subseed", "all_subseeds",
                          "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
                          "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name",
                          "sd_vae_hash", "seed_resize_from_w", "seed_resize_from_h", "denoising_strength",
                          "extra_generation_params", "index_of_first_image", "styles", "job_timestamp", "clip_skip",
                          "is_using_inpainting_conditioning", "version", NULL};
    for (int i = 0; keys[i]; i++) ck_assert_msg(json_object_get(info, keys[i]), "info has no '%s'", keys[i]);
    ck_assert_int_eq(json_integer_value(json_object_get(info, "batch_size")), 2);
    json_decref(info);
    json_decref(j);
    /* seed -1: a random seed, returned in info; parameters keep -1 */
    j = call(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"seed\": -1, \"steps\": 3}", &st, NULL);
    ck_assert_int_eq(st, 200);
    info = json_loads(json_string_value(json_object_get(j, "info")), 0, &e);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "parameters"), "seed")), -1);
    ck_assert(json_integer_value(json_object_get(info, "seed")) >= 0);
    ck_assert_int_eq((long long)g_last.seed, json_integer_value(json_object_get(info, "seed")));
    json_decref(info);
    json_decref(j);
    ldm_server_free(s);
}
END_TEST

START_TEST(test_sampler_names) {
    LdmServer *s = fake_server(NULL, NULL);
    int st;
    json_t *j = call(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"sampler_name\": \"DPM++ 2M Karras\"}", &st, NULL);
    ck_assert_int_eq(st, 200);
    ck_assert(g_last.sampler == LDM_SAMPLER_DPMPP_2M && g_last.has_schedule && g_last.schedule == LDM_SIGMAS_KARRAS);
    json_decref(j);
    j = call(s, "POST", "/sdapi/v1/txt2img",
             "{\"prompt\": \"x\", \"sampler_name\": \"DPM++ 2M\", \"scheduler\": \"Exponential\"}", &st, NULL);
    ck_assert_int_eq(st, 200);
    ck_assert(g_last.sampler == LDM_SAMPLER_DPMPP_2M && g_last.has_schedule && g_last.schedule == LDM_SIGMAS_EXPONENTIAL);
    json_decref(j);
    j = call(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"sampler_index\": \"DDIM\", \"scheduler\": \"Automatic\"}",
             &st, NULL);
    ck_assert_int_eq(st, 200);
    ck_assert(g_last.sampler == LDM_SAMPLER_DDIM && !g_last.has_schedule);
    json_decref(j);
    /* the webui's default schedules ("Automatic"): DPM++ 2M is Karras, Euler uniform */
    j = call(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"sampler_name\": \"DPM++ 2M\"}", &st, NULL);
    ck_assert(g_last.sampler == LDM_SAMPLER_DPMPP_2M && g_last.has_schedule && g_last.schedule == LDM_SIGMAS_KARRAS);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "parameters"), "scheduler")), "Karras");
    json_decref(j);
    j = call(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"sampler_name\": \"DPM++ 2M SDE\", \"scheduler\": \"Automatic\"}",
             &st, NULL);
    ck_assert(g_last.has_schedule && g_last.schedule == LDM_SIGMAS_EXPONENTIAL);
    json_decref(j);
    j = call(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"sampler_name\": \"DPM++ 2M\", \"scheduler\": \"Uniform\"}",
             &st, NULL);
    ck_assert(g_last.has_schedule && g_last.schedule == LDM_SIGMAS_DISCRETE);
    json_decref(j);
    j = call(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"sampler_name\": \"Euler a\"}", &st, NULL);
    ck_assert(g_last.sampler == LDM_SAMPLER_EULER_A && !g_last.has_schedule);
    json_decref(j);
    expect_error(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"sampler_name\": \"Foo\"}", 422, "sampler_name");
    expect_error(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"scheduler\": \"Bar\"}", 422, "scheduler");
    expect_error(s, "POST", "/sdapi/v1/txt2img",
                 "{\"prompt\": \"x\", \"sampler_name\": \"DPM++ 2M Karras\", \"scheduler\": \"Exponential\"}", 422,
                 "scheduler");
    expect_error(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"sampler_name\": \"DDIM\", \"scheduler\": \"Karras\"}",
                 422, "scheduler");
    /* the lists */
    j = call(s, "GET", "/sdapi/v1/samplers", NULL, &st, NULL);
    ck_assert_int_eq(st, 200);
    int found = 0;
    for (size_t i = 0; i < json_array_size(j); i++) {
        json_t *e = json_array_get(j, i);
        ck_assert(json_is_array(json_object_get(e, "aliases")) && json_is_object(json_object_get(e, "options")));
        found += !strcmp(json_string_value(json_object_get(e, "name")), "DPM++ 2M");
    }
    ck_assert_int_eq(found, 1);
    json_decref(j);
    j = call(s, "GET", "/sdapi/v1/schedulers", NULL, &st, NULL);
    ck_assert_int_eq(st, 200);
    ck_assert(json_array_size(j) >= 5);
    json_t *k = json_array_get(j, 2);
    ck_assert_str_eq(json_string_value(json_object_get(k, "label")), "Karras");
    ck_assert(json_real_value(json_object_get(k, "default_rho")) == 7.0);
    ck_assert(json_is_boolean(json_object_get(k, "need_inner_model")));
    json_decref(j);
    ldm_server_free(s);
}
END_TEST

/* a PNG of w x h as base64 (with a data: prefix when prefix) */
static char *png_b64(int w, int h, int prefix, uint8_t fill) {
    uint8_t *rgb = ldm_xmalloc((size_t)w * h * 3), *png;
    memset(rgb, fill, (size_t)w * h * 3);
    size_t n;
    ck_assert(ldm_png_encode_rgb8_text(rgb, w, h, NULL, &png, &n) == 0);
    char *b = ldm_base64_encode(png, n, NULL);
    char *r = prefix ? ldm_xasprintf("data:image/png;base64,%s", b) : ldm_xstrdup(b);
    free(b);
    free(png);
    free(rgb);
    return r;
}

START_TEST(test_img2img) {
    LdmServer *s = fake_server(NULL, NULL);
    char *img = png_b64(96, 64, 1, 255), *mask = png_b64(96, 64, 0, 255), *small = png_b64(32, 32, 0, 0);
    char *body = ldm_xasprintf("{\"prompt\": \"x\", \"init_images\": [\"%s\"], \"mask\": \"%s\", \"denoising_strength\": 0.5}",
                               img, mask);
    int st;
    json_t *j = call(s, "POST", "/sdapi/v1/img2img", body, &st, NULL);
    ck_assert_msg(st == 200, "%d", st);
    ck_assert(g_last.img2img && g_last.width == 96 && g_last.height == 64 && g_last.strength == 0.5);
    /* (the request's images are freed with the request: their first values) */
    ck_assert(fabsf(g_init0 - 1.0f) < 1e-6f && fabsf(g_mask0 - 1.0f) < 1e-6f);
    json_t *p = json_object_get(j, "parameters");
    ck_assert(json_is_null(json_object_get(p, "init_images")) && json_is_null(json_object_get(p, "mask")));
    json_decref(j);
    free(body);
    /* errors */
    body = ldm_xasprintf("{\"prompt\": \"x\", \"init_images\": [\"%s\"], \"width\": 64}", img);
    expect_error(s, "POST", "/sdapi/v1/img2img", body, 400, "init_images[0]: image is 96x64, expected 64x64");
    free(body);
    body = ldm_xasprintf("{\"prompt\": \"x\", \"init_images\": [\"%s\"]}", small);
    expect_error(s, "POST", "/sdapi/v1/img2img", body, 422, "32x32 is not a size compiled");
    free(body);
    body = ldm_xasprintf("{\"prompt\": \"x\", \"init_images\": [\"%s\"], \"mask\": \"%s\"}", img, small);
    expect_error(s, "POST", "/sdapi/v1/img2img", body, 400, "mask");
    free(body);
    expect_error(s, "POST", "/sdapi/v1/img2img", "{\"prompt\": \"x\", \"init_images\": [\"%%%\"]}", 400,
                 "init_images[0]: not valid base64");
    expect_error(s, "POST", "/sdapi/v1/img2img", "{\"prompt\": \"x\", \"init_images\": [\"aGVsbG8gd29ybGQ=\"]}", 400,
                 "init_images[0]: not a PNG");
    expect_error(s, "POST", "/sdapi/v1/img2img", "{\"prompt\": \"x\"}", 422, "init_images");
    expect_error(s, "POST", "/sdapi/v1/img2img", "{\"prompt\": \"x\", \"init_images\": [1]}", 422, "init_images[0]");
    body = ldm_xasprintf("{\"prompt\": \"x\", \"init_images\": [\"%s\"], \"denoising_strength\": 0}", img);
    expect_error(s, "POST", "/sdapi/v1/img2img", body, 422, "denoising_strength");
    free(body);
    free(img);
    free(mask);
    free(small);
    ldm_server_free(s);
}
END_TEST

START_TEST(test_errors) {
    LdmServer *s = fake_server(NULL, NULL);
    const char *t = "/sdapi/v1/txt2img";
    expect_error(s, "POST", t, "{\"prompt\": ", 400, "not valid JSON");
    expect_error(s, "POST", t, "", 400, "not valid JSON");
    expect_error(s, "POST", t, "[1, 2]", 422, "JSON object");
    expect_error(s, "POST", t, "{}", 422, "prompt: field required");
    expect_error(s, "POST", t, "{\"prompt\": 3}", 422, "prompt: expected a string");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"steps\": \"20\"}", 422, "steps: expected an integer");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"steps\": 2.5}", 422, "steps: expected an integer");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"steps\": 0}", 422, "steps: 0 is out of range");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"steps\": 1001}", 422, "steps");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"cfg_scale\": 1e9}", 422, "cfg_scale");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"cfg_scale\": true}", 422, "cfg_scale: expected a number");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"batch_size\": 100}", 422, "batch_size");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"batch_size\": 8, \"n_iter\": 16}", 422, "batch_size, n_iter");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"width\": 512, \"height\": 512}", 422,
                 "512x512 is not a size compiled into this executable (width x height: 64x64, 96x64");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"width\": -5}", 422, "width");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"seed\": \"abc\"}", 422, "seed");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"seed\": -2}", 422, "seed");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"negative_prompt\": []}", 422, "negative_prompt");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"enable_hr\": true}", 422, "enable_hr");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"subseed_strength\": 0.5}", 422, "subseed_strength");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"prompt\": \"y\"}", 400, "duplicate");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"override_settings\": {\"sd_vae\": \"x\"}}", 422,
                 "override_settings.sd_vae");
    expect_error(s, "POST", t, "{\"prompt\": \"x\", \"override_settings\": {\"CLIP_stop_at_last_layers\": 3}}", 422,
                 "CLIP_stop_at_last_layers");
    expect_error(s, "GET", "/sdapi/v1/nothing", NULL, 404, "/sdapi/v1/nothing");
    expect_error(s, "GET", t, NULL, 405, "GET /sdapi/v1/txt2img");
    expect_error(s, "DELETE", "/sdapi/v1/options", NULL, 405, "allowed: GET, POST");
    /* the generator's failures */
    g_fake_fail = LDM_GEN_EBAD;
    expect_error(s, "POST", t, "{\"prompt\": \"x\"}", 422, "fake failure");
    g_fake_fail = LDM_GEN_EINTERNAL;
    expect_error(s, "POST", t, "{\"prompt\": \"x\"}", 500, "fake failure");
    g_fake_fail = LDM_GEN_ESHUTDOWN;
    expect_error(s, "POST", t, "{\"prompt\": \"x\"}", 503, "fake failure");
    g_fake_fail = 0;
    /* 413 */
    LdmHttpRequest rq = {.method = "POST", .url = t, .body_too_large = 1};
    LdmHttpResponse r;
    ldm_server_handle(s, &rq, &r);
    ck_assert_int_eq(r.status, 413);
    ck_assert(strstr(r.body, "--max-body"));
    ldm_http_response_free(&r);
    /* unknown fields of the webui are accepted and ignored */
    int st;
    json_t *j = call(s, "POST", t, "{\"prompt\": \"x\", \"restore_faces\": false, \"eta\": 0, \"send_images\": true}", &st, NULL);
    ck_assert_int_eq(st, 200);
    json_decref(j);
    ldm_server_free(s);
}
END_TEST

START_TEST(test_options_auth_cors) {
    LdmServer *s = fake_server("sekrit", "http://example.com");
    int st;
    /* the page needs no key; the API does */
    LdmHttpResponse r;
    json_t *j = call(s, "GET", "/", NULL, &st, &r);
    ck_assert_int_eq(st, 200);
    ck_assert(strstr(r.content_type, "text/html") && strstr(r.body, "/sdapi/v1/progress") && r.cors);
    ldm_http_response_free(&r);
    expect_error(s, "GET", "/sdapi/v1/options", NULL, 401, "API key");
    LdmHttpRequest rq = {.method = "GET", .url = "/sdapi/v1/options", .authorization = "Bearer wrong"};
    ldm_server_handle(s, &rq, &r);
    ck_assert_int_eq(r.status, 401);
    ldm_http_response_free(&r);
    rq.authorization = "Bearer sekrit";
    ldm_server_handle(s, &rq, &r);
    ck_assert_int_eq(r.status, 200);
    j = json_loadb(r.body, r.body_n, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(j, "sd_model_checkpoint")), "tiny.safetensors [0123456789]");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "CLIP_stop_at_last_layers")), 1);
    json_decref(j);
    ldm_http_response_free(&r);
    /* a CORS preflight needs no key */
    rq = (LdmHttpRequest){.method = "OPTIONS", .url = "/sdapi/v1/txt2img"};
    ldm_server_handle(s, &rq, &r);
    ck_assert_int_eq(r.status, 204);
    ck_assert(r.cors && r.allow && strstr(r.allow, "POST"));
    ldm_http_response_free(&r);
    ldm_server_free(s);

    s = fake_server(NULL, NULL);
    /* POST options: what can be honoured */
    j = call(s, "POST", "/sdapi/v1/options", "{\"CLIP_stop_at_last_layers\": 2, \"sd_model_checkpoint\": \"tiny\"}", &st,
             NULL);
    ck_assert_int_eq(st, 200);
    json_decref(j);
    j = call(s, "GET", "/sdapi/v1/options", NULL, &st, NULL);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "CLIP_stop_at_last_layers")), 2);
    json_decref(j);
    j = call(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\"}", &st, NULL);
    ck_assert_int_eq(g_last.clip_skip, 2);
    json_decref(j);
    j = call(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"override_settings\": {\"CLIP_stop_at_last_layers\": 1}}",
             &st, NULL);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(g_last.clip_skip, 1);
    json_decref(j);
    expect_error(s, "POST", "/sdapi/v1/options", "{\"sd_model_checkpoint\": \"other\"}", 422, "sd_model_checkpoint");
    expect_error(s, "POST", "/sdapi/v1/options", "{\"show_progressbar\": true}", 422, "options.show_progressbar");
    expect_error(s, "POST", "/sdapi/v1/options", "{\"CLIP_stop_at_last_layers\": 0}", 422, "CLIP_stop_at_last_layers");
    /* sd-models */
    j = call(s, "GET", "/sdapi/v1/sd-models", NULL, &st, NULL);
    ck_assert_int_eq(st, 200);
    json_t *m = json_array_get(j, 0);
    ck_assert_str_eq(json_string_value(json_object_get(m, "title")), "tiny.safetensors [0123456789]");
    ck_assert_str_eq(json_string_value(json_object_get(m, "model_name")), "tiny");
    ck_assert_str_eq(json_string_value(json_object_get(m, "hash")), "0123456789");
    ck_assert_int_eq((int)strlen(json_string_value(json_object_get(m, "sha256"))), 64);
    ck_assert(json_object_get(m, "filename") && json_object_get(m, "config"));
    json_decref(j);
    /* progress when idle */
    j = call(s, "GET", "/sdapi/v1/progress", NULL, &st, NULL);
    ck_assert_int_eq(st, 200);
    ck_assert(json_real_value(json_object_get(j, "progress")) == 0.0);
    ck_assert(json_is_object(json_object_get(j, "state")) && json_object_get(j, "eta_relative"));
    json_decref(j);
    j = call(s, "POST", "/sdapi/v1/interrupt", NULL, &st, NULL);
    ck_assert_int_eq(st, 200);
    json_decref(j);
    ldm_server_free(s);
}
END_TEST

START_TEST(test_openai) {
    LdmServer *s = fake_server(NULL, NULL);
    int st;
    json_t *j = call(s, "POST", "/v1/images/generations", "{\"prompt\": \"a fox\", \"n\": 2, \"size\": \"96x64\"}", &st, NULL);
    ck_assert_int_eq(st, 200);
    ck_assert(json_is_integer(json_object_get(j, "created")));
    json_t *d = json_object_get(j, "data");
    ck_assert_int_eq((int)json_array_size(d), 2);
    ck_assert(json_is_string(json_object_get(json_array_get(d, 1), "b64_json")));
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(d, 0), "revised_prompt")), "a fox");
    ck_assert(g_last.width == 96 && g_last.height == 64 && g_last.n_images == 2);
    json_decref(j);
    const char *ir = "invalid_request_error";
    expect_openai_error(s, "{\"prompt\": \"x\", \"response_format\": \"url\"}", 400, ir, NULL, "only b64_json");
    expect_openai_error(s, "{\"prompt\": \"x\", \"size\": \"1024x1024\"}", 422, ir, NULL, "size: 1024x1024");
    expect_openai_error(s, "{\"prompt\": \"x\", \"size\": \"big\"}", 422, ir, NULL, "size");
    expect_openai_error(s, "{\"prompt\": \"x\", \"n\": 11}", 422, ir, NULL, "n: 11");
    expect_openai_error(s, "{\"n\": 1}", 422, ir, NULL, "prompt");
    expect_openai_error(s, "{\"prompt\": ", 400, ir, NULL, "not valid JSON");
    ldm_server_free(s);
    /* a wrong key: 401, code invalid_api_key (OpenAI's answer); the webui endpoints keep their shape */
    s = fake_server("sekret", NULL);
    expect_openai_error(s, "{\"prompt\": \"x\"}", 401, ir, "invalid_api_key", "API key");
    expect_error(s, "POST", "/sdapi/v1/txt2img", "{\"prompt\": \"x\"}", 401, "API key");
    ldm_server_free(s);
}
END_TEST

/* ------------------------------------------------------------------------
 * http: the executable over sockets
 * ------------------------------------------------------------------------ */

static char g_exe[700];
static char *g_build_log;

static void setup_exe(void) {
    test_dir_init("ldm_server_");
    if (!test_dir[0] || g_exe[0] || g_build_log) return;
    test_build_sd1_tiny_txt2img(SRV_SAN, g_exe, sizeof g_exe, &g_build_log);
}

static void teardown_nothing(void) {}

static const char *exe(void) {
    ck_assert_msg(g_exe[0], "make txt2img (sd1-tiny, 128x128) failed:\n%s", g_build_log ? g_build_log : "(not run)");
    return g_exe;
}

typedef struct Http {
    int status;
    char *head;                /* status line and headers */
    char *body;
    size_t n;
} Http;

static void http_free(Http *h) {
    free(h->head);
    free(h->body);
    memset(h, 0, sizeof *h);
}

static int connect_port(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        p += w, n -= (size_t)w;
    }
    return 0;
}

/* A plain HTTP/1.1 request (Connection: close): 0 and the response, or -1
 * when the connection failed or closed without a response. */
static int http(int port, const char *method, const char *path, const char *headers, const char *body, Http *h) {
    memset(h, 0, sizeof *h);
    int fd = connect_port(port);
    if (fd < 0) return -1;
    size_t bn = body ? strlen(body) : 0;
    char *req = ldm_xasprintf("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%sContent-Type: "
                              "application/json\r\nContent-Length: %zu\r\n\r\n", method, path, headers ? headers : "", bn);
    int rc = send_all(fd, req, strlen(req));
    free(req);
    if (rc == 0 && bn) rc = send_all(fd, body, bn);
    size_t cap = 1 << 16, n = 0;
    char *buf = ldm_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) buf = ldm_xrealloc(buf, cap *= 2);
        ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
        if (r <= 0) break;
        n += (size_t)r;
    }
    buf[n] = 0;
    close(fd);
    char *sep = strstr(buf, "\r\n\r\n");
    if (!sep || sscanf(buf, "HTTP/1.%*d %d", &h->status) != 1) {
        free(buf);
        return -1;
    }
    *sep = 0;
    h->head = ldm_xstrdup(buf);
    h->n = n - (size_t)(sep + 4 - buf);
    h->body = ldm_xmalloc(h->n + 1);
    memcpy(h->body, sep + 4, h->n);
    h->body[h->n] = 0;
    free(buf);
    return 0;
}

typedef struct Srv {
    pid_t pid;
    int port;
    char log[600];
} Srv;

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

/* Start the executable with --listen on a free port and the NULL-ended
 * extra arguments; wait until it answers. */
static void srv_start(Srv *s, const char *name, ...) {
    char *argv[32];
    int k = 0;
    char listen[32];
    s->port = free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", s->port);
    argv[k++] = (char *)exe();
    argv[k++] = "--weights";
    argv[k++] = (char *)test_shared("goldens/sd1-tiny/model.safetensors");
    argv[k++] = "--listen";
    argv[k++] = listen;
    va_list ap;
    va_start(ap, name);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && k < 30) argv[k++] = (char *)a;
    va_end(ap);
    argv[k] = NULL;
    snprintf(s->log, sizeof s->log, "%s/%s.log", test_dir, name);
    s->pid = test_spawn(argv, s->log);
    ck_assert(s->pid > 0);
    for (int i = 0; i < 600; i++) {
        int fd = connect_port(s->port);
        if (fd >= 0) {
            close(fd);
            return;
        }
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            size_t n;
            char *log = ldm_read_file(s->log, &n);
            ck_abort_msg("the server exited at start:\n%s", log ? log : "");
        }
        usleep(50000);
    }
    kill(s->pid, SIGKILL);
    ck_abort_msg("the server did not listen on port %d within 30 s", s->port);
}

/* SIGTERM, then its exit status. */
static int srv_stop(Srv *s) {
    kill(s->pid, SIGTERM);
    return test_wait_status(s->pid);
}

static char *srv_log(const Srv *s) {
    size_t n;
    char *t = ldm_read_file(s->log, &n);
    return t ? t : ldm_xstrdup("");
}

static long rss_kb(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = strtol(line + 6, NULL, 10);
    if (f) fclose(f);
    return kb;
}

/* The first image of a webui response: PNG bytes (malloc'd), and info. */
static uint8_t *response_png(const Http *h, size_t *n, json_t **info) {
    json_error_t e;
    json_t *j = json_loadb(h->body, h->n, 0, &e);
    ck_assert_msg(j, "not JSON: %s", h->body);
    const char *b = json_string_value(json_array_get(json_object_get(j, "images"), 0));
    ck_assert_msg(b, "no image: %s", h->body);
    uint8_t *png;
    ck_assert(ldm_base64_decode(b, strlen(b), &png, n) == 0);
    if (info) *info = json_loads(json_string_value(json_object_get(j, "info")), 0, &e);
    json_decref(j);
    return png;
}

static void write_file(const char *path, const void *d, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert(f && fwrite(d, 1, n, f) == n);
    fclose(f);
}

START_TEST(test_http_same_as_cli) {
    Srv s;
    srv_start(&s, "same", NULL);
    Http h;
    ck_assert(http(s.port, "POST", "/sdapi/v1/txt2img", NULL,
                   "{\"prompt\": \"a red fox\", \"negative_prompt\": \"blurry\", \"steps\": 3, \"seed\": 42, "
                   "\"cfg_scale\": 7.5, \"sampler_name\": \"DPM++ 2M Karras\", \"width\": 128, \"height\": 128}", &h) == 0);
    ck_assert_msg(h.status == 200, "%d %s", h.status, h.body);
    size_t n;
    json_t *info;
    uint8_t *png = response_png(&h, &n, &info);
    write_file(test_tmp("server.png"), png, n);
    /* the command line's image of the same settings: the same pixels and infotext */
    char *out;
    char *argv[] = {(char *)exe(), "--weights", (char *)test_shared("goldens/sd1-tiny/model.safetensors"), "--prompt",
                    "a red fox", "--negative-prompt", "blurry", "--steps", "3", "--seed", "42", "--cfg-scale", "7.5",
                    "--sampler", "DPM++ 2M Karras", "-o", (char *)test_tmp("cli.png"), "--quiet", NULL};
    ck_assert_msg(test_run(argv, &out) == 0, "%s", out);
    free(out);
    ck_assert_int_eq(png_max_diff(test_tmp("server.png"), test_tmp("cli.png")), 0);
    char *pt, *ct;
    ck_assert(ldm_png_read_text(test_tmp("server.png"), "parameters", &pt) == 1);
    ck_assert(ldm_png_read_text(test_tmp("cli.png"), "parameters", &ct) == 1);
    ck_assert_str_eq(pt, ct);
    ck_assert_str_eq(pt, json_string_value(json_array_get(json_object_get(info, "infotexts"), 0)));
    ck_assert_msg(strstr(pt, "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 128x128"), "%s", pt);
    free(pt);
    free(ct);
    json_decref(info);
    free(png);
    http_free(&h);
    /* the other endpoints over HTTP */
    ck_assert(http(s.port, "GET", "/sdapi/v1/sd-models", NULL, NULL, &h) == 0 && h.status == 200);
    ck_assert(strstr(h.body, "\"model_name\":\"model\""));
    http_free(&h);
    ck_assert(http(s.port, "GET", "/", NULL, NULL, &h) == 0 && h.status == 200);
    ck_assert(strstr(h.head, "text/html") && strstr(h.body, "<html"));
    http_free(&h);
    ck_assert(http(s.port, "GET", "/nothing", NULL, NULL, &h) == 0 && h.status == 404);
    http_free(&h);
    ck_assert(http(s.port, "PUT", "/sdapi/v1/txt2img", NULL, "{}", &h) == 0 && h.status == 405);
    ck_assert(strstr(h.head, "Allow: POST"));
    http_free(&h);
    /* img2img from the golden input, with a mask */
    size_t in_n;
    char *in = ldm_read_file(test_shared("goldens/sd1-tiny/img2img_input.png"), &in_n);
    ck_assert(in);
    char *b64 = ldm_base64_encode((uint8_t *)in, in_n, NULL);
    char *body = ldm_xasprintf("{\"prompt\": \"a cat\", \"steps\": 4, \"seed\": 3, \"sampler_name\": \"DDIM\", "
                               "\"denoising_strength\": 0.5, \"init_images\": [\"data:image/png;base64,%s\"], \"mask\": \"%s\"}",
                               b64, b64);
    ck_assert(http(s.port, "POST", "/sdapi/v1/img2img", NULL, body, &h) == 0);
    ck_assert_msg(h.status == 200, "%d %s", h.status, h.body);
    png = response_png(&h, &n, &info);
    float *chw;
    ck_assert_msg(ldm_image_load_mem(png, n, "img2img", 128, 128, &chw, NULL, NULL) == 0, "%s", ldm_last_error());
    ck_assert_msg(strstr(json_string_value(json_array_get(json_object_get(info, "infotexts"), 0)), "Denoising strength: 0.5"),
                  "%s", h.body);
    free(chw);
    free(png);
    json_decref(info);
    http_free(&h);
    free(body);
    free(b64);
    free(in);
    /* a bad request, then a good one: the server keeps serving */
    ck_assert(http(s.port, "POST", "/sdapi/v1/txt2img", NULL, "{\"prompt\": [", &h) == 0 && h.status == 400);
    http_free(&h);
    ck_assert(http(s.port, "POST", "/sdapi/v1/txt2img", NULL, "{\"prompt\": \"x\", \"steps\": 1, \"sampler_name\": \"Euler\"}",
                   &h) == 0 && h.status == 200);
    http_free(&h);
    ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

/* A request made in another thread. */
typedef struct Bg {
    pthread_t t;
    int port;
    const char *path, *body;
    Http h;
    int rc;
} Bg;

static void *bg_run(void *arg) {
    Bg *b = arg;
    b->rc = http(b->port, "POST", b->path, NULL, b->body, &b->h);
    return NULL;
}

static void bg_start(Bg *b, int port, const char *path, const char *body) {
    memset(b, 0, sizeof *b);
    b->port = port;
    b->path = path;
    b->body = body;
    ck_assert(pthread_create(&b->t, NULL, bg_run, b) == 0);
}

/* Wait until progress shows the server sampling (step >= min_step) and
 * `queued` requests waiting. */
static void wait_progress(int port, int min_step, int queued) {
    for (int i = 0; i < 1200; i++) {
        Http h;
        if (http(port, "GET", "/sdapi/v1/progress", NULL, NULL, &h) == 0) {
            json_t *j = json_loadb(h.body, h.n, 0, NULL);
            json_t *st = json_object_get(j, "state");
            int step = (int)json_integer_value(json_object_get(st, "sampling_step"));
            int q = (int)json_integer_value(json_object_get(st, "queued"));
            int busy = strlen(json_string_value(json_object_get(st, "job")) ? json_string_value(json_object_get(st, "job")) : "") > 0;
            json_decref(j);
            http_free(&h);
            if (busy && step >= min_step && q >= queued) return;
        }
        usleep(50000);
    }
    ck_abort_msg("the server never reached step %d with %d queued", min_step, queued);
}

START_TEST(test_http_interrupt_queue_sigterm) {
    Srv s;
    srv_start(&s, "queue", "--queue", "1", NULL);
    /* interrupt: the image so far is returned */
    Bg a;
    bg_start(&a, s.port, "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"steps\": 40, \"n_iter\": 3, \"seed\": 5, \"sampler_name\": \"Euler\"}");
    wait_progress(s.port, 1, 0);
    Http h;
    ck_assert(http(s.port, "POST", "/sdapi/v1/interrupt", NULL, NULL, &h) == 0 && h.status == 200);
    http_free(&h);
    pthread_join(a.t, NULL);
    ck_assert_msg(a.rc == 0 && a.h.status == 200, "%d %s", a.h.status, a.h.body);
    json_t *j = json_loadb(a.h.body, a.h.n, 0, NULL);
    ck_assert_int_eq((int)json_array_size(json_object_get(j, "images")), 1);
    json_t *info = json_loads(json_string_value(json_object_get(j, "info")), 0, NULL);
    ck_assert(json_is_true(json_object_get(info, "interrupted")));
    json_decref(info);
    json_decref(j);
    http_free(&a.h);
    /* the queue bound: one running, one queued, the third 503 + Retry-After */
    Bg r1, r2;
    bg_start(&r1, s.port, "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"steps\": 40, \"sampler_name\": \"Euler\"}");
    wait_progress(s.port, 1, 0);
    bg_start(&r2, s.port, "/sdapi/v1/txt2img", "{\"prompt\": \"y\", \"steps\": 2, \"sampler_name\": \"Euler\"}");
    wait_progress(s.port, 1, 1);
    ck_assert(http(s.port, "POST", "/sdapi/v1/txt2img", NULL, "{\"prompt\": \"z\", \"steps\": 2}", &h) == 0);
    ck_assert_msg(h.status == 503, "%d %s", h.status, h.body);
    ck_assert(strstr(h.head, "Retry-After:") && strstr(h.body, "queue is full"));
    http_free(&h);
    /* SIGTERM during the generation: both answered 503, exit status 0 */
    ck_assert_int_eq(srv_stop(&s), 0);
    pthread_join(r1.t, NULL);
    pthread_join(r2.t, NULL);
    ck_assert_msg(r1.rc == 0 && r1.h.status == 503, "running: %d %s", r1.h.status, r1.h.body ? r1.h.body : "");
    ck_assert_msg(r2.rc == 0 && r2.h.status == 503, "queued: %d %s", r2.h.status, r2.h.body ? r2.h.body : "");
    ck_assert(strstr(r1.h.body, "shutting down"));
    http_free(&r1.h);
    http_free(&r2.h);
    char *log = srv_log(&s);
    ck_assert_msg(strstr(log, "SIGTERM"), "%s", log);
    free(log);
}
END_TEST

START_TEST(test_http_preview) {
    Srv s;
    srv_start(&s, "preview", "--preview-taesd", test_shared("goldens/sd1-fast/taesd_decoder.safetensors"), NULL);
    Bg a;
    bg_start(&a, s.port, "/sdapi/v1/img2img", NULL);
    pthread_join(a.t, NULL); /* (a 422: no body) */
    http_free(&a.h);
    bg_start(&a, s.port, "/sdapi/v1/txt2img", "{\"prompt\": \"x\", \"steps\": 30, \"sampler_name\": \"Euler\"}");
    /* no current_image unless asked for; then a TAESD decode of the current step */
    int got = 0;
    for (int i = 0; i < 1200 && !got; i++) {
        Http h;
        if (http(s.port, "GET", "/sdapi/v1/progress?skip_current_image=false", NULL, NULL, &h) == 0) {
            json_t *j = json_loadb(h.body, h.n, 0, NULL);
            const char *b = json_string_value(json_object_get(j, "current_image"));
            if (b) {
                uint8_t *png;
                size_t n;
                float *chw;
                ck_assert(ldm_base64_decode(b, strlen(b), &png, &n) == 0);
                ck_assert_msg(ldm_image_load_mem(png, n, "current_image", 128, 128, &chw, NULL, NULL) == 0, "%s",
                              ldm_last_error());
                free(chw);
                free(png);
                got = 1;
            }
            json_decref(j);
            http_free(&h);
        }
        usleep(50000);
    }
    ck_assert_msg(got, "no current_image while sampling");
    Http h;
    ck_assert(http(s.port, "POST", "/sdapi/v1/interrupt", NULL, NULL, &h) == 0);
    http_free(&h);
    pthread_join(a.t, NULL);
    ck_assert_int_eq(a.h.status, 200);
    http_free(&a.h);
    ck_assert(http(s.port, "GET", "/sdapi/v1/progress?skip_current_image=false", NULL, NULL, &h) == 0);
    ck_assert(strstr(h.body, "\"current_image\":null"));
    http_free(&h);
    ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

START_TEST(test_http_flags) {
    /* --listen's own flags, checked before anything is loaded (exit status 2) */
    struct {
        const char *a[6];
        const char *want;
    } cases[] = {
        {{"--listen", "1.2.3:80"}, "'1.2.3' is not an IPv4 address"},
        {{"--listen", "99999"}, "bad port"},
        {{"--listen", "8080", "--prompt", "x"}, "--prompt does not go with --listen"},
        {{"--listen", "8080", "-o", "x.png"}, "-o does not go with --listen"},
        {{"--prompt", "x", "-o", "x.png", "--queue", "3"}, "go with --listen"},
        {{"--prompt", "x", "-o", "x.png", "--api-key", "k"}, "go with --listen"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *argv[12];
        int k = 0;
        argv[k++] = (char *)exe();
        argv[k++] = "--weights";
        argv[k++] = "/nonexistent.safetensors";
        for (int j = 0; j < 6 && cases[i].a[j]; j++) argv[k++] = (char *)cases[i].a[j];
        argv[k] = NULL;
        char *out;
        int rc = test_run(argv, &out);
        ck_assert_msg(rc == 2 && strstr(out, cases[i].want), "case %zu: status %d, output:\n%s", i, rc, out);
        free(out);
    }
}
END_TEST

START_TEST(test_http_auth_body) {
    Srv s;
    setenv("LDM_API_KEY", "k3y", 1);
    srv_start(&s, "auth", "--max-body", "2048", "--cors-origin", "http://example.com", NULL);
    unsetenv("LDM_API_KEY");
    Http h;
    ck_assert(http(s.port, "GET", "/sdapi/v1/options", NULL, NULL, &h) == 0 && h.status == 401);
    ck_assert(strstr(h.head, "Access-Control-Allow-Origin: http://example.com"));
    http_free(&h);
    ck_assert(http(s.port, "GET", "/sdapi/v1/options", "Authorization: Bearer k3y\r\n", NULL, &h) == 0 && h.status == 200);
    http_free(&h);
    ck_assert(http(s.port, "GET", "/", NULL, NULL, &h) == 0 && h.status == 200);
    http_free(&h);
    ck_assert(http(s.port, "OPTIONS", "/sdapi/v1/txt2img", "Origin: http://example.com\r\n", NULL, &h) == 0);
    ck_assert_msg(h.status == 204 && strstr(h.head, "Access-Control-Allow-Methods"), "%d %s", h.status, h.head);
    http_free(&h);
    char *big = ldm_xmalloc(5000);
    memset(big, ' ', 4999);
    big[0] = '{', big[4997] = '}', big[4998] = 0;
    ck_assert(http(s.port, "POST", "/sdapi/v1/txt2img", "Authorization: Bearer k3y\r\n", big, &h) == 0);
    ck_assert_msg(h.status == 413, "%d %s", h.status, h.body);
    http_free(&h);
    free(big);
    ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

/* ------------------------------------------------------------------------
 * load
 * ------------------------------------------------------------------------ */

#define LOAD_CLIENTS 8
#define LOAD_REQUESTS 4

typedef struct Client {
    pthread_t t;
    int port, id;
    int ok, bad, refused, wrong;  /* 200 right, 4xx for a malformed one, 503, anything else */
    char why[256];
} Client;

/* Connect, send half a body, close. */
static void aborted_mid_body(int port) {
    int fd = connect_port(port);
    if (fd < 0) return;
    const char *r = "POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\": \"ha";
    send_all(fd, r, strlen(r));
    close(fd);
}

/* A whole request, then close without reading the response (it waits in the queue). */
static void aborted_queued(int port, int seed) {
    int fd = connect_port(port);
    if (fd < 0) return;
    char *body = ldm_xasprintf("{\"prompt\": \"gone\", \"steps\": 2, \"seed\": %d, \"sampler_name\": \"Euler\"}", seed);
    char *r = ldm_xasprintf("POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    send_all(fd, r, strlen(r));
    usleep(20000);
    close(fd);
    free(r);
    free(body);
}

static void *client_run(void *arg) {
    Client *c = arg;
    for (int i = 0; i < LOAD_REQUESTS; i++) {
        int seed = 1000 * c->id + i;
        /* interleaved: a malformed request, or an aborted one */
        if ((c->id + i) % 3 == 0) {
            Http h;
            if (http(c->port, "POST", "/sdapi/v1/txt2img", NULL, "{\"prompt\": \"x\", \"steps\": \"many\"}", &h) == 0 &&
                h.status == 422)
                c->bad++;
            else
                c->wrong++, snprintf(c->why, sizeof c->why, "malformed: %d", h.status);
            http_free(&h);
        } else if ((c->id + i) % 3 == 1) {
            if (i % 2) aborted_mid_body(c->port);
            else aborted_queued(c->port, seed + 500);
        }
        char *body = ldm_xasprintf("{\"prompt\": \"client %d request %d\", \"steps\": 2, \"seed\": %d, "
                                   "\"sampler_name\": \"Euler\", \"cfg_scale\": 5}", c->id, i, seed);
        Http h;
        int rc = http(c->port, "POST", "/sdapi/v1/txt2img", NULL, body, &h);
        free(body);
        if (rc != 0) {
            c->wrong++;
            snprintf(c->why, sizeof c->why, "request %d: no response", i);
            continue;
        }
        if (h.status == 503) {
            c->refused++;
        } else if (h.status != 200) {
            c->wrong++;
            snprintf(c->why, sizeof c->why, "request %d: %d %s", i, h.status, h.body);
        } else {
            json_t *j = json_loadb(h.body, h.n, 0, NULL);
            json_t *imgs = json_object_get(j, "images");
            json_t *info = json_loads(json_string_value(json_object_get(j, "info")), 0, NULL);
            const char *b = json_string_value(json_array_get(imgs, 0));
            uint8_t *png = NULL;
            size_t n = 0;
            float *chw = NULL;
            int good = json_array_size(imgs) == 1 && b && ldm_base64_decode(b, strlen(b), &png, &n) == 0 &&
                       ldm_image_load_mem(png, n, "image", 128, 128, &chw, NULL, NULL) == 0 &&
                       json_integer_value(json_object_get(info, "seed")) == seed;
            if (good) c->ok++;
            else c->wrong++, snprintf(c->why, sizeof c->why, "request %d: a wrong image or seed", i);
            free(png);
            free(chw);
            json_decref(info);
            json_decref(j);
        }
        http_free(&h);
    }
    return NULL;
}

START_TEST(test_load) {
    Srv s;
    srv_start(&s, "load", "--quiet", NULL);
    Http h;
    ck_assert(http(s.port, "POST", "/sdapi/v1/txt2img", NULL,
                   "{\"prompt\": \"first\", \"steps\": 2, \"seed\": 1, \"sampler_name\": \"Euler\", \"cfg_scale\": 5}", &h) == 0);
    ck_assert_int_eq(h.status, 200);
    http_free(&h);
    long rss0 = rss_kb(s.pid);
    double t0 = ldm_now();
    Client c[LOAD_CLIENTS];
    for (int i = 0; i < LOAD_CLIENTS; i++) {
        memset(&c[i], 0, sizeof c[i]);
        c[i].port = s.port;
        c[i].id = i;
        ck_assert(pthread_create(&c[i].t, NULL, client_run, &c[i]) == 0);
    }
    int ok = 0, bad = 0, refused = 0, wrong = 0;
    for (int i = 0; i < LOAD_CLIENTS; i++) {
        pthread_join(c[i].t, NULL);
        ok += c[i].ok, bad += c[i].bad, refused += c[i].refused, wrong += c[i].wrong;
        ck_assert_msg(c[i].wrong == 0, "client %d: %s", i, c[i].why);
    }
    /* let the abandoned requests finish: progress idle */
    for (int i = 0; i < 1200; i++) {
        if (http(s.port, "GET", "/sdapi/v1/progress", NULL, NULL, &h) == 0) {
            int idle = strstr(h.body, "\"job\":\"\"") && strstr(h.body, "\"queued\":0");
            http_free(&h);
            if (idle) break;
        }
        usleep(50000);
    }
    long rss1 = rss_kb(s.pid);
    double secs = ldm_now() - t0;
    fprintf(stderr, "server load test: %d clients x %d requests: %d answered 200 (right image and seed), %d 503, "
            "%d malformed answered 422, %d wrong; %.1f s; VmRSS after the first request %ld kB, after the test %ld kB "
            "(%+.1f%%)\n", LOAD_CLIENTS, LOAD_REQUESTS, ok, refused, bad, wrong, secs, rss0, rss1,
            100.0 * (double)(rss1 - rss0) / (double)rss0);
    ck_assert_int_eq(ok + refused, LOAD_CLIENTS * LOAD_REQUESTS);
    ck_assert_int_eq(refused, 0); /* 8 clients never fill a queue of 16 */
    /* (under ASan freed memory stays in its quarantine, up to 256 MB: RSS says nothing there) */
    if (!SRV_SAN) ck_assert_msg(rss1 <= rss0 * 11 / 10, "VmRSS grew from %ld kB to %ld kB", rss0, rss1);
    ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

/* ------------------------------------------------------------------------
 * browser
 * ------------------------------------------------------------------------ */

START_TEST(test_browser) {
    const char *chromium = NULL, *driver = NULL;
    const char *cs[] = {"/usr/bin/chromium", "/usr/bin/chromium-browser", NULL};
    const char *ds[] = {"/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver", NULL};
    for (int i = 0; cs[i]; i++) if (!chromium && access(cs[i], X_OK) == 0) chromium = cs[i];
    for (int i = 0; ds[i]; i++) if (!driver && access(ds[i], X_OK) == 0) driver = ds[i];
    /* Debian's python3-selenium is for the system's python3 (not a pyenv or venv one on PATH) */
    char *out = NULL;
    const char *python = NULL;
    const char *ps[] = {"/usr/bin/python3", "python3", NULL};
    for (int i = 0; ps[i] && !python; i++) {
        char *pyargv[] = {(char *)ps[i], "-c", "import selenium", NULL};
        if (test_run(pyargv, &out) == 0) python = ps[i];
        free(out);
    }
    int have_selenium = python != NULL;
    if (!chromium || !driver || !have_selenium) {
        fprintf(stderr, "test_browser: SKIPPED: %s missing (make deps installs chromium, chromium-driver, "
                "python3-selenium)\n", !chromium ? "chromium" : !driver ? "chromedriver" : "python3-selenium");
        return;
    }
    Srv s;
    srv_start(&s, "browser", NULL);
    char url[64], shot[700];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", s.port);
    snprintf(shot, sizeof shot, "%s/server-screenshot.png", test_build_dir());
    char *argv[] = {(char *)python, "tests/server/browser_test.py", "--url", url, "--screenshot", shot,
                    "--chromium", (char *)chromium, "--driver", (char *)driver, NULL};
    int rc = test_run(argv, &out);
    int st = srv_stop(&s);
    ck_assert_msg(rc == 0, "browser_test.py failed (%d):\n%s", rc, out);
    fprintf(stderr, "%s", out);
    free(out);
    ck_assert_int_eq(st, 0);
    ck_assert(test_exists(shot));
}
END_TEST

Suite *suite_server(void) {
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("handle");
    tcase_add_test(tc, test_base64);
    tcase_add_test(tc, test_txt2img_shape);
    tcase_add_test(tc, test_sampler_names);
    tcase_add_test(tc, test_img2img);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_options_auth_cors);
    tcase_add_test(tc, test_openai);
    suite_add_tcase(s, tc);
    int t = SRV_SAN ? 1800 : 600;
    tc = tcase_create("http");
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_add_test(tc, test_http_same_as_cli);
    tcase_add_test(tc, test_http_interrupt_queue_sigterm);
    tcase_add_test(tc, test_http_flags);
    tcase_add_test(tc, test_http_preview);
    tcase_add_test(tc, test_http_auth_body);
    tcase_add_test(tc, test_load);
    tcase_add_test(tc, test_browser);
    tcase_set_timeout(tc, t);
    suite_add_tcase(s, tc);
    return s;
}
