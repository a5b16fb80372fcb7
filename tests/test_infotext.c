/*
 * test_infotext.c - the webui infotext (runtime/infotext.c) and the PNG
 * `parameters` chunk of the txt2img executable.
 *
 * The expected texts are written by hand from the webui's rules
 * (modules/processing.py create_infotext, infotext_utils.quote and
 * parse_generation_parameters, Python's float repr), and the SHA-256
 * values are the FIPS 180-2 test vectors; none comes from our output.
 * End to end: the sd1-tiny txt2img writes the chunk, it parses back to the
 * run's settings, the model hash is the checkpoint's, and --no-metadata
 * leaves the chunk out.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "image.h"
#include "infotext.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define IT_SAN 1
#else
#define IT_SAN 0
#endif

START_TEST(test_py_float) {
    static const struct {
        double x;
        const char *repr;
    } cases[] = {
        {7.0, "7.0"},   {7.5, "7.5"},     {0.75, "0.75"},   {0.1, "0.1"},         {1e-05, "1e-05"},
        {0.0001, "0.0001"}, {1e16, "1e+16"}, {123.456, "123.456"}, {-2.0, "-2.0"}, {0.0, "0.0"},
        {1.0 / 3.0, "0.3333333333333333"}, {1234567890123456.0, "1234567890123456.0"}, {2.5e-7, "2.5e-07"},
    };
    char buf[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_str_eq(ldm_py_float(cases[i].x, buf, sizeof buf), cases[i].repr);
}
END_TEST

START_TEST(test_format) {
    /* the webui's field order, "Schedule type" after "Sampler", the
     * negative prompt line, floats as Python writes them */
    LdmInfotext t = {
        .prompt = "a red fox in the snow",
        .negative = "blurry",
        .steps = 20,
        .sampler = LDM_SAMPLER_DPMPP_2M,
        .has_schedule = 1,
        .schedule = LDM_SIGMAS_KARRAS,
        .cfg_scale = 7.0,
        .seed = 42,
        .width = 768,
        .height = 512,
        .model_hash = "6ce0161689",
        .model = "v1-5-pruned-emaonly",
        .denoising_strength = -1,
        .clip_skip = 1,
        .rng = NULL,
    };
    char *s = ldm_infotext_format(&t);
    ck_assert_str_eq(s, "a red fox in the snow\nNegative prompt: blurry\n"
                        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 42, "
                        "Size: 768x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly");
    free(s);
    /* no negative prompt: no line; img2img strength, CLIP skip, RNG, a
     * quoted Lora hashes value, an extra pair that needs quoting */
    const char *extra[] = {"Pad conds", "True", "Note", "a: b", NULL};
    t.negative = "";
    t.sampler = LDM_SAMPLER_EULER_A;
    t.schedule = LDM_SIGMAS_DISCRETE;
    t.cfg_scale = 7.5;
    t.width = t.height = 512;
    t.model_hash = NULL;
    t.model = NULL;
    t.denoising_strength = 0.75;
    t.clip_skip = 2;
    t.rng = "CPU";
    t.lora_hashes = "fox: 0123456789ab, snow: ba9876543210";
    t.extra = extra;
    s = ldm_infotext_format(&t);
    ck_assert_str_eq(s, "a red fox in the snow\n"
                        "Steps: 20, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7.5, Seed: 42, "
                        "Size: 512x512, Denoising strength: 0.75, Clip skip: 2, RNG: CPU, "
                        "Lora hashes: \"fox: 0123456789ab, snow: ba9876543210\", Pad conds: True, Note: \"a: b\"");
    free(s);
    /* DDIM: no schedule; a quote and a backslash in a quoted value */
    const char *extra2[] = {"Path", "C:\\x \"y\"", NULL};
    t.sampler = LDM_SAMPLER_DDIM;
    t.has_schedule = 0;
    t.denoising_strength = -1;
    t.clip_skip = 1;
    t.rng = NULL;
    t.lora_hashes = NULL;
    t.extra = extra2;
    t.prompt = "  padded  ";
    s = ldm_infotext_format(&t);
    ck_assert_str_eq(s, "padded  \nSteps: 20, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 512x512, "
                        "Path: \"C:\\\\x \\\"y\\\"\"");
    free(s);
}
END_TEST

START_TEST(test_parse_webui_text) {
    /* a text as the webui writes it, with a two-line prompt, a negative
     * prompt and quoted values */
    const char *text = "masterpiece, a fox\nin the snow <lora:fox:0.8>\nNegative prompt: blurry, lowres\n"
                       "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3920563431, "
                       "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
                       "Lora hashes: \"fox: 0123456789ab\", Version: v1.10.1";
    LdmInfotextParsed p;
    ck_assert_int_eq(ldm_infotext_parse(text, &p), 0);
    ck_assert_str_eq(p.prompt, "masterpiece, a fox\nin the snow <lora:fox:0.8>");
    ck_assert_str_eq(p.negative, "blurry, lowres");
    ck_assert_int_eq(p.n, 10);
    ck_assert_str_eq(ldm_infotext_get(&p, "Steps"), "25");
    ck_assert_str_eq(ldm_infotext_get(&p, "Sampler"), "DPM++ 2M");
    ck_assert_str_eq(ldm_infotext_get(&p, "Schedule type"), "Karras");
    ck_assert_str_eq(ldm_infotext_get(&p, "CFG scale"), "6.5");
    ck_assert_str_eq(ldm_infotext_get(&p, "Seed"), "3920563431");
    ck_assert_str_eq(ldm_infotext_get(&p, "Size"), "512x768");
    ck_assert_str_eq(ldm_infotext_get(&p, "Lora hashes"), "fox: 0123456789ab");
    ck_assert_str_eq(ldm_infotext_get(&p, "Version"), "v1.10.1");
    ck_assert_ptr_null(ldm_infotext_get(&p, "Clip skip"));
    ldm_infotext_parsed_free(&p);
    /* a last line with fewer than 3 parameters is prompt text */
    ck_assert_int_eq(ldm_infotext_parse("a cat\nSteps: 20, Seed: 1", &p), 0);
    ck_assert_str_eq(p.prompt, "a cat\nSteps: 20, Seed: 1");
    ck_assert_int_eq(p.n, 0);
    ldm_infotext_parsed_free(&p);
    /* round trip of a prompt with newlines and quotes in a value */
    const char *extra[] = {"Path", "C:\\x \"y\"", NULL};
    LdmInfotext t = {.prompt = "line one\nline two", .negative = "no\nnever", .steps = 4, .sampler = LDM_SAMPLER_LCM,
                     .cfg_scale = 1.0, .seed = 7, .width = 64, .height = 96, .denoising_strength = -1,
                     .clip_skip = 3, .extra = extra};
    char *s = ldm_infotext_format(&t);
    ck_assert_int_eq(ldm_infotext_parse(s, &p), 0);
    ck_assert_str_eq(p.prompt, "line one\nline two");
    ck_assert_str_eq(p.negative, "no\nnever");
    ck_assert_str_eq(ldm_infotext_get(&p, "Sampler"), "LCM");
    ck_assert_str_eq(ldm_infotext_get(&p, "CFG scale"), "1.0");
    ck_assert_str_eq(ldm_infotext_get(&p, "Size"), "64x96");
    ck_assert_str_eq(ldm_infotext_get(&p, "Clip skip"), "3");
    ck_assert_str_eq(ldm_infotext_get(&p, "Path"), "C:\\x \"y\"");
    ldm_infotext_parsed_free(&p);
    free(s);
}
END_TEST

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

START_TEST(test_sha256) {
    test_dir_init("ldm_infotext_");
    /* FIPS 180-2 vectors */
    const char *abc = test_tmp("abc.bin");
    write_bytes(abc, "abc", 3);
    char hex[65];
    ck_assert_int_eq(ldm_file_sha256(abc, 0, hex), 0);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *empty = test_tmp("empty.bin");
    write_bytes(empty, "", 0);
    ck_assert_int_eq(ldm_file_sha256(empty, 0, hex), 0);
    ck_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* the addnet hash skips the 8-byte length and the header: a file of
     * header "{}  " (4 bytes) then "abc" hashes as "abc" */
    const char *st = test_tmp("x.safetensors");
    const unsigned char data[] = {4, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', 'a', 'b', 'c'};
    write_bytes(st, data, sizeof data);
    ck_assert_int_eq(ldm_file_sha256(st, 1, hex), 0);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ck_assert_int_ne(ldm_file_sha256(test_tmp("missing.bin"), 0, hex), 0);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "missing.bin"));
}
END_TEST

START_TEST(test_model_hash_cache) {
    test_dir_init("ldm_infotext_");
    const char *cache = test_tmp("cache/ldmc/hashes.txt");
    setenv("LDM_HASH_CACHE", cache, 1);
    const char *f = test_tmp("model.bin");
    write_bytes(f, "abc", 3);
    char h[11];
    ck_assert_int_eq(ldm_model_hash(f, h), 0);
    ck_assert_str_eq(h, "ba7816bf8f");
    ck_assert(test_exists(cache));
    /* the cached value is what is used while size and mtime stay: rewrite
     * the cache line's hash and read it back */
    size_t n;
    char *text = ldm_read_file(cache, &n);
    ck_assert_ptr_nonnull(text);
    char *pos = strstr(text, "ba7816bf8f01");
    ck_assert_ptr_nonnull(pos);
    memcpy(pos, "0000000000", 10);
    write_bytes(cache, text, n);
    free(text);
    ck_assert_int_eq(ldm_model_hash(f, h), 0);
    ck_assert_str_eq(h, "0000000000");
    /* a changed file (another mtime) is hashed again */
    struct timespec ts[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};
    ck_assert_int_eq(utimensat(AT_FDCWD, f, ts, 0), 0);
    ck_assert_int_eq(ldm_model_hash(f, h), 0);
    ck_assert_str_eq(h, "ba7816bf8f");
    /* off: no cache file */
    setenv("LDM_HASH_CACHE", "off", 1);
    remove(cache);
    ck_assert_int_eq(ldm_model_hash(f, h), 0);
    ck_assert(!test_exists(cache));
    unsetenv("LDM_HASH_CACHE");
}
END_TEST

/* ------------------------------------------------------------------------ */

static char g_exe[700];
static char *g_build_log;

static void setup_exe(void) {
    test_dir_init("ldm_infotext_");
    if (!test_dir[0] || g_exe[0] || g_build_log) return;
    test_build_sd1_tiny_txt2img(IT_SAN, g_exe, sizeof g_exe, &g_build_log);
}

static void teardown_nothing(void) {}

START_TEST(test_png_parameters) {
    ck_assert_msg(g_exe[0], "make txt2img (sd1-tiny) failed:\n%s", g_build_log ? g_build_log : "(not run)");
    const char *weights = test_shared("goldens/sd1-tiny/model.safetensors");
    const char *png = test_tmp("fox.png");
    char cache_env[600];
    snprintf(cache_env, sizeof cache_env, "%s", test_tmp("hashes.txt"));
    setenv("LDM_HASH_CACHE", cache_env, 1);
    char *argv[] = {g_exe, "--weights", (char *)weights, "--vocab",
                    (char *)test_shared("clip/bpe_simple_vocab_16e6.txt.gz"), "--prompt", "a fox, in the snow",
                    "--negative-prompt", "blurry", "--steps", "3", "--sampler", "DPM++ 2M Karras", "--cfg-scale", "6",
                    "--seed", "1234", "--clip-skip", "2", "--quiet", "-o", (char *)png, NULL};
    char *out;
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "txt2img failed (%d):\n%s", rc, out);
    free(out);
    char *text = NULL;
    ck_assert_int_eq(ldm_png_read_text(png, "parameters", &text), 1);
    ck_assert_ptr_nonnull(text);
    LdmInfotextParsed p;
    ck_assert_int_eq(ldm_infotext_parse(text, &p), 0);
    ck_assert_str_eq(p.prompt, "a fox, in the snow");
    ck_assert_str_eq(p.negative, "blurry");
    ck_assert_str_eq(ldm_infotext_get(&p, "Steps"), "3");
    ck_assert_str_eq(ldm_infotext_get(&p, "Sampler"), "DPM++ 2M");
    ck_assert_str_eq(ldm_infotext_get(&p, "Schedule type"), "Karras");
    ck_assert_str_eq(ldm_infotext_get(&p, "CFG scale"), "6.0");
    ck_assert_str_eq(ldm_infotext_get(&p, "Seed"), "1234");
    ck_assert_str_eq(ldm_infotext_get(&p, "Size"), "128x128");
    ck_assert_str_eq(ldm_infotext_get(&p, "Model"), "model");
    ck_assert_str_eq(ldm_infotext_get(&p, "Clip skip"), "2");
    ck_assert_str_eq(ldm_infotext_get(&p, "RNG"), "CPU");
    char hex[65];
    ck_assert_int_eq(ldm_file_sha256(weights, 0, hex), 0);
    hex[10] = 0;
    ck_assert_str_eq(ldm_infotext_get(&p, "Model hash"), hex);
    ldm_infotext_parsed_free(&p);
    free(text);

    /* --no-metadata: no chunk */
    const char *png2 = test_tmp("bare.png");
    char *argv2[] = {g_exe, "--weights", (char *)weights, "--vocab",
                     (char *)test_shared("clip/bpe_simple_vocab_16e6.txt.gz"), "--prompt", "a fox", "--steps", "1",
                     "--quiet", "--no-metadata", "-o", (char *)png2, NULL};
    rc = test_run(argv2, &out);
    ck_assert_msg(rc == 0, "txt2img --no-metadata failed (%d):\n%s", rc, out);
    free(out);
    text = NULL;
    ck_assert_int_eq(ldm_png_read_text(png2, "parameters", &text), 0);
    ck_assert_ptr_null(text);
    unsetenv("LDM_HASH_CACHE");
}
END_TEST

Suite *suite_infotext(void) {
    Suite *s = suite_create("infotext");
    TCase *tc = tcase_create("format");
    tcase_add_test(tc, test_py_float);
    tcase_add_test(tc, test_format);
    tcase_add_test(tc, test_parse_webui_text);
    tcase_add_test(tc, test_sha256);
    tcase_add_test(tc, test_model_hash_cache);
    suite_add_tcase(s, tc);
    tc = tcase_create("png");
    tcase_set_timeout(tc, 900);
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_add_test(tc, test_png_parameters);
    suite_add_tcase(s, tc);
    return s;
}
