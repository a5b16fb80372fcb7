/*
 * test_image.c - PNG reading and writing (runtime/image.c).
 *
 * - the golden PNGs decode to uint8(255 * image01) of their io files;
 * - img2img_input.png loads to exactly the golden `image_in` (load_img);
 * - write/read round trips, the truncation rule, every PNG colour type and
 *   bit depth (written here with libpng directly), masks;
 * - garbage, truncated and corrupted files give an error naming the file.
 */
#define _GNU_SOURCE
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"
#include "testutil.h"
#include "util.h"

/* ----------------------------------------------------------------------------
 * Helpers: golden F32 tensors, a scratch directory, a raw libpng writer
 * ------------------------------------------------------------------------- */

/* Tensor `name` (F32) of a golden safetensors file; 8-byte LE header length
 * N, JSON header, data at 8 + N. */
static float *golden_f32(const char *rel, const char *name, int64_t *numel) {
    char *path = ldm_xasprintf("%s/goldens/%s", test_shared_dir(), rel);
    size_t len;
    char *buf = ldm_read_file(path, &len);
    ck_assert_msg(buf != NULL, "%s", ldm_last_error());
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (unsigned char)buf[i];
    ck_assert_msg(len >= 8 && n <= len - 8, "%s: bad header length", path);
    json_t *hdr = json_loadb(buf + 8, (size_t)n, 0, NULL);
    ck_assert_msg(hdr != NULL, "%s: bad header", path);
    json_t *t = json_object_get(hdr, name);
    ck_assert_msg(t != NULL, "%s: no tensor %s", path, name);
    ck_assert_str_eq(json_string_value(json_object_get(t, "dtype")), "F32");
    json_t *off = json_object_get(t, "data_offsets");
    size_t b = (size_t)json_integer_value(json_array_get(off, 0)), e = (size_t)json_integer_value(json_array_get(off, 1));
    ck_assert_msg(e >= b && 8 + n + e <= len, "%s: %s: bad offsets", path, name);
    float *out = ldm_xmalloc(e - b);
    memcpy(out, buf + 8 + n + b, e - b);
    *numel = (int64_t)((e - b) / 4);
    json_decref(hdr);
    free(buf);
    free(path);
    return out;
}

static char scratch[256];

static void scratch_setup(void) {
    snprintf(scratch, sizeof scratch, "/tmp/ldm_test_image_XXXXXX");
    ck_assert_msg(mkdtemp(scratch) != NULL, "cannot create a scratch directory");
}

static void scratch_teardown(void) {
    char *cmd = ldm_xasprintf("rm -rf '%s'", scratch);
    if (system(cmd) != 0) { /* best effort */
    }
    free(cmd);
}

static char *scratch_path(const char *name) { return ldm_xasprintf("%s/%s", scratch, name); }

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    ck_assert_int_eq(fwrite(data, 1, n, fp), n);
    ck_assert_int_eq(fclose(fp), 0);
}

/* Write a PNG with any colour type / bit depth; rows are packed as libpng
 * expects them (16-bit samples big-endian). */
typedef struct RawPng {
    int w, h, color, depth, interlace;
    const uint8_t *data;          /* h rows of rowbytes */
    size_t rowbytes;
    const png_color *palette;
    int n_palette;
    const uint8_t *trans;          /* palette alpha */
    int n_trans;
} RawPng;

static void raw_png_write(const char *path, const RawPng *img) {
    FILE *fp = fopen(path, "wb");
    ck_assert(fp != NULL);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    ck_assert(png && info);
    if (setjmp(png_jmpbuf(png))) ck_abort_msg("libpng failed writing %s", path);
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)img->w, (png_uint_32)img->h, img->depth, img->color, img->interlace,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (img->palette) png_set_PLTE(png, info, img->palette, img->n_palette);
    if (img->trans) png_set_tRNS(png, info, img->trans, img->n_trans, NULL);
    png_write_info(png, info);
    png_bytep *rows = ldm_xmalloc((size_t)img->h * sizeof(png_bytep));
    for (int y = 0; y < img->h; y++) rows[y] = (png_bytep)(img->data + (size_t)y * img->rowbytes);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    ck_assert_int_eq(fclose(fp), 0);
}

static void read_ok(const char *path, uint8_t **rgb, int w, int h) {
    int rw = 0, rh = 0;
    ck_assert_msg(ldm_png_read_rgb8(path, rgb, &rw, &rh) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(rw, w);
    ck_assert_int_eq(rh, h);
}

/* ----------------------------------------------------------------------------
 * Golden PNGs
 * ------------------------------------------------------------------------- */

/* Each golden PNG is uint8(255 * image01) of its io file: decode and compare
 * (the brief allows 1 level; they are bit-exact, so exactness is asserted). */
START_TEST(test_golden_pngs) {
    static const struct {
        const char *png, *io;
        int w, h;
    } cases[] = {
        {"sd1-tiny/txt2img_ddim.png", "sd1-tiny/txt2img_ddim.io.safetensors", 128, 128},
        {"sd1-tiny/txt2img_plms.png", "sd1-tiny/txt2img_plms.io.safetensors", 128, 128},
        {"sd1-tiny/txt2img_euler.png", "sd1-tiny/txt2img_euler.io.safetensors", 128, 128},
        {"sd1-tiny/txt2img_dpmpp2m.png", "sd1-tiny/txt2img_dpmpp2m.io.safetensors", 128, 128},
        {"sd1-tiny/img2img_ddim.png", "sd1-tiny/img2img_ddim.io.safetensors", 128, 128},
        {"ldm-vq4-tiny/sample_ddim.png", "ldm-vq4-tiny/sample_ddim.io.safetensors", 64, 64},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char *path = ldm_xasprintf("%s/goldens/%s", test_shared_dir(), cases[c].png);
        uint8_t *rgb;
        read_ok(path, &rgb, cases[c].w, cases[c].h);
        int64_t n;
        float *img01 = golden_f32(cases[c].io, "image01", &n);
        ck_assert_int_eq(n, 3 * cases[c].w * cases[c].h);
        uint8_t *want = ldm_xmalloc((size_t)n);
        ldm_image01_to_rgb8(img01, cases[c].w, cases[c].h, want);
        /* the PNG and image01 come from the same reference run: exact */
        for (int64_t i = 0; i < n; i++)
            ck_assert_msg(rgb[i] == want[i], "%s: byte %lld = %d, uint8(255 * image01) = %d", path, (long long)i,
                          rgb[i], want[i]);
        free(want);
        free(img01);
        free(rgb);
        free(path);
    }
}
END_TEST

/* scripts/img2img.py load_img: the golden image_in is u8/255*2-1 of img2img_input.png. */
START_TEST(test_load_img_golden) {
    char *path = ldm_xasprintf("%s/goldens/sd1-tiny/img2img_input.png", test_shared_dir());
    float *chw;
    int w, h;
    ck_assert_msg(ldm_image_load(path, 128, 128, &chw, &w, &h) == 0, "%s", ldm_last_error());
    int64_t n;
    float *want = golden_f32("sd1-tiny/img2img_ddim.io.safetensors", "image_in", &n);
    ck_assert_int_eq(n, 3 * 128 * 128);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(chw[i] == want[i], "image_in[%lld] = %.9g, golden %.9g", (long long)i, (double)chw[i],
                      (double)want[i]);
    free(want);
    free(chw);

    /* wrong size: the message names the file and both sizes */
    ck_assert_int_eq(ldm_image_load(path, 64, 48, &chw, NULL, NULL), -1);
    ck_assert_ptr_null(chw);
    char *msg = ldm_xasprintf("%s: image is 128x128, expected 64x48", path);
    ck_assert_str_eq(ldm_last_error(), msg);
    free(msg);
    float *mask;
    ck_assert_int_eq(ldm_mask_load(path, 100, 0, &mask, NULL, NULL), -1);
    ck_assert_msg(strstr(ldm_last_error(), "mask is 128x128, expected 100x128") != NULL, "%s", ldm_last_error());
    free(path);
}
END_TEST

/* ----------------------------------------------------------------------------
 * Writing
 * ------------------------------------------------------------------------- */

START_TEST(test_roundtrip) {
    const int w = 37, h = 23; /* odd, non-square */
    size_t plane = (size_t)w * h;
    float *img = ldm_xmalloc(3 * plane * sizeof(float));
    for (size_t i = 0; i < 3 * plane; i++) img[i] = (float)((i * 7919) % 1000) / 999.0f;
    char *path = scratch_path("rt.png");
    ck_assert_msg(ldm_image_save(path, img, w, h) == 0, "%s", ldm_last_error());
    uint8_t *rgb, *want = ldm_xmalloc(3 * plane);
    ldm_image01_to_rgb8(img, w, h, want);
    read_ok(path, &rgb, w, h);
    ck_assert_int_eq(memcmp(rgb, want, 3 * plane), 0);
    /* HWC bytes from CHW floats */
    ck_assert_int_eq(rgb[3 * 5 + 1], (uint8_t)(255.0f * img[plane + 5]));
    free(rgb);

    /* load_img of what we wrote: u8 / 255 * 2 - 1 */
    float *chw;
    int rw, rh;
    ck_assert_int_eq(ldm_image_load(path, 0, 0, &chw, &rw, &rh), 0);
    ck_assert_int_eq(rw, w);
    ck_assert_int_eq(rh, h);
    for (size_t c = 0; c < 3; c++)
        for (size_t p = 0; p < plane; p++)
            ck_assert_float_eq(chw[c * plane + p], 2.0f * ((float)want[p * 3 + c] / 255.0f) - 1.0f);
    free(chw);

    /* overwriting works and leaves no temporary file */
    ck_assert_int_eq(ldm_image_save(path, img, w, h), 0);
    char *cmd = ldm_xasprintf("test $(ls -A '%s' | wc -l) -eq 1", scratch);
    ck_assert_msg(system(cmd) == 0, "temporary files left in %s", scratch);
    free(cmd);

    /* a directory that does not exist: error naming the path, nothing written */
    char *bad = scratch_path("no/such/dir/out.png");
    ck_assert_int_eq(ldm_image_save(bad, img, w, h), -1);
    ck_assert_msg(strstr(ldm_last_error(), bad) != NULL, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_image_save(path, img, 0, h), -1);
    free(bad);
    free(want);
    free(path);
    free(img);
}
END_TEST

/* Text chunks as PIL's PngInfo.add_text writes them (the webui's
 * `parameters`): Latin-1 values as tEXt in Latin-1, others as iTXt in
 * UTF-8, read back as UTF-8; the pixels are unchanged. The chunk types and
 * bytes are checked in the file itself. */
START_TEST(test_text_chunks) {
    const int w = 8, h = 4;
    float img[3 * 8 * 4];
    for (int i = 0; i < 3 * w * h; i++) img[i] = (float)(i % 11) / 10.0f;
    char *path = scratch_path("text.png"), *plain = scratch_path("plain.png");
    const char *latin = "a caf\xc3\xa9 at night\nNegative prompt: blurry\nSteps: 20, Seed: 42";
    const char *wide = "\xe7\x8c\xab (cat:1.2) \xf0\x9f\x90\x88";
    const char *kv[] = {"parameters", latin, "other", wide, NULL};
    ck_assert_msg(ldm_image_save_text(path, img, w, h, kv) == 0, "%s", ldm_last_error());
    ck_assert_msg(ldm_image_save(plain, img, w, h) == 0, "%s", ldm_last_error());
    uint8_t *a, *b;
    read_ok(path, &a, w, h);
    read_ok(plain, &b, w, h);
    ck_assert_int_eq(memcmp(a, b, (size_t)w * h * 3), 0);
    free(a);
    free(b);
    char *v;
    ck_assert_int_eq(ldm_png_read_text(path, "parameters", &v), 1);
    ck_assert_str_eq(v, latin);
    free(v);
    ck_assert_int_eq(ldm_png_read_text(path, "other", &v), 1);
    ck_assert_str_eq(v, wide);
    free(v);
    ck_assert_int_eq(ldm_png_read_text(path, "missing", &v), 0);
    ck_assert_ptr_null(v);
    ck_assert_int_eq(ldm_png_read_text(plain, "parameters", &v), 0);
    /* the bytes: tEXt "parameters\0" + Latin-1 (one byte for the e-acute), iTXt for the other */
    size_t n;
    char *f = ldm_read_file(path, &n);
    ck_assert(f);
    const char tag[] = "tEXtparameters\0a caf\xe9 at night";
    ck_assert_msg(memmem(f, n, tag, sizeof tag - 1) != NULL, "no Latin-1 tEXt chunk 'parameters'");
    const char itxt[] = "iTXtother\0\0\0\0\0\xe7\x8c\xab";
    ck_assert_msg(memmem(f, n, itxt, sizeof itxt - 1) != NULL, "no uncompressed UTF-8 iTXt chunk 'other'");
    ck_assert_msg(memmem(f, n, "tEXt", 4) < memmem(f, n, "IDAT", 4), "the text comes after the image data");
    free(f);
    free(path);
    free(plain);
}
END_TEST

/* uint8(255 * x) truncates like numpy astype(np.uint8); out-of-range saturates. */
START_TEST(test_truncation) {
    float chw[3] = {0.999f, 0.5f, 1.0f};
    uint8_t rgb[3];
    ldm_image01_to_rgb8(chw, 1, 1, rgb);
    ck_assert_int_eq(rgb[0], 254); /* 254.745 */
    ck_assert_int_eq(rgb[1], 127); /* 127.5 */
    ck_assert_int_eq(rgb[2], 255);
    float odd[3] = {-0.25f, 1.5f, NAN};
    ldm_image01_to_rgb8(odd, 1, 1, rgb);
    ck_assert_int_eq(rgb[0], 0);
    ck_assert_int_eq(rgb[1], 255);
    ck_assert_int_eq(rgb[2], 0);
    float dec[4] = {-1.5f, -1.0f, 0.0f, 1.25f}, o[4];
    ldm_image_to01(dec, 4, o);
    ck_assert_float_eq(o[0], 0.0f);
    ck_assert_float_eq(o[1], 0.0f);
    ck_assert_float_eq(o[2], 0.5f);
    ck_assert_float_eq(o[3], 1.0f);
}
END_TEST

/* ----------------------------------------------------------------------------
 * Every colour type and bit depth -> 8-bit RGB
 * ------------------------------------------------------------------------- */

START_TEST(test_formats) {
    enum { W = 5, H = 3 };
    uint8_t buf[W * H * 8];
    uint8_t *rgb;
    char *path = scratch_path("fmt.png");

    for (int interlace = 0; interlace < 2; interlace++) {
        int il = interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE;
        /* gray 8 -> (g, g, g) */
        for (int i = 0; i < W * H; i++) buf[i] = (uint8_t)(i * 17);
        raw_png_write(path, &(RawPng){W, H, PNG_COLOR_TYPE_GRAY, 8, il, buf, W, NULL, 0, NULL, 0});
        read_ok(path, &rgb, W, H);
        for (int i = 0; i < W * H; i++)
            for (int c = 0; c < 3; c++) ck_assert_int_eq(rgb[i * 3 + c], i * 17);
        free(rgb);

        /* gray 16 -> high byte */
        for (int i = 0; i < W * H; i++) {
            buf[2 * i] = (uint8_t)(i * 13);
            buf[2 * i + 1] = 0xFF;
        }
        raw_png_write(path, &(RawPng){W, H, PNG_COLOR_TYPE_GRAY, 16, il, buf, 2 * W, NULL, 0, NULL, 0});
        read_ok(path, &rgb, W, H);
        for (int i = 0; i < W * H; i++) ck_assert_int_eq(rgb[i * 3 + 2], i * 13);
        free(rgb);

        /* gray 1-bit: 0 -> 0, 1 -> 255 */
        memset(buf, 0, sizeof buf);
        for (int y = 0; y < H; y++) buf[y] = y == 1 ? 0xA8 : 0x00; /* row 1: 1 0 1 0 1 */
        raw_png_write(path, &(RawPng){W, H, PNG_COLOR_TYPE_GRAY, 1, il, buf, 1, NULL, 0, NULL, 0});
        read_ok(path, &rgb, W, H);
        for (int x = 0; x < W; x++) {
            ck_assert_int_eq(rgb[(0 * W + x) * 3], 0);
            ck_assert_int_eq(rgb[(1 * W + x) * 3 + 1], x % 2 == 0 ? 255 : 0);
        }
        free(rgb);

        /* gray + alpha: alpha dropped */
        for (int i = 0; i < W * H; i++) {
            buf[2 * i] = (uint8_t)(200 - i);
            buf[2 * i + 1] = (uint8_t)(i * 9);
        }
        raw_png_write(path, &(RawPng){W, H, PNG_COLOR_TYPE_GRAY_ALPHA, 8, il, buf, 2 * W, NULL, 0, NULL, 0});
        read_ok(path, &rgb, W, H);
        for (int i = 0; i < W * H; i++) ck_assert_int_eq(rgb[i * 3 + 1], 200 - i);
        free(rgb);

        /* RGBA: alpha dropped, not composited */
        for (int i = 0; i < W * H; i++) {
            buf[4 * i] = (uint8_t)i;
            buf[4 * i + 1] = (uint8_t)(100 + i);
            buf[4 * i + 2] = (uint8_t)(250 - i);
            buf[4 * i + 3] = (uint8_t)(i * 3);
        }
        raw_png_write(path, &(RawPng){W, H, PNG_COLOR_TYPE_RGBA, 8, il, buf, 4 * W, NULL, 0, NULL, 0});
        read_ok(path, &rgb, W, H);
        for (int i = 0; i < W * H; i++) {
            ck_assert_int_eq(rgb[i * 3], i);
            ck_assert_int_eq(rgb[i * 3 + 1], 100 + i);
            ck_assert_int_eq(rgb[i * 3 + 2], 250 - i);
        }
        free(rgb);

        /* RGB 16 -> high bytes */
        for (int i = 0; i < W * H * 3; i++) {
            buf[2 * i] = (uint8_t)(i * 5);
            buf[2 * i + 1] = (uint8_t)(255 - i);
        }
        raw_png_write(path, &(RawPng){W, H, PNG_COLOR_TYPE_RGB, 16, il, buf, 6 * W, NULL, 0, NULL, 0});
        read_ok(path, &rgb, W, H);
        for (int i = 0; i < W * H * 3; i++) ck_assert_int_eq(rgb[i], (uint8_t)(i * 5));
        free(rgb);

        /* palette 4-bit with tRNS: palette colours, transparency dropped */
        png_color pal[3] = {{10, 20, 30}, {200, 100, 50}, {0, 255, 0}};
        uint8_t trns[3] = {0, 128, 255};
        for (int y = 0; y < H; y++) {
            buf[y * 3 + 0] = 0x01; /* 0 1 */
            buf[y * 3 + 1] = 0x20; /* 2 0 */
            buf[y * 3 + 2] = 0x10; /* 1 . */
        }
        raw_png_write(path, &(RawPng){W, H, PNG_COLOR_TYPE_PALETTE, 4, il, buf, 3, pal, 3, trns, 3});
        read_ok(path, &rgb, W, H);
        int idx[W] = {0, 1, 2, 0, 1};
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                const uint8_t *px = rgb + (y * W + x) * 3;
                ck_assert_int_eq(px[0], pal[idx[x]].red);
                ck_assert_int_eq(px[1], pal[idx[x]].green);
                ck_assert_int_eq(px[2], pal[idx[x]].blue);
            }
        free(rgb);
    }
    free(path);
}
END_TEST

/* ----------------------------------------------------------------------------
 * Masks
 * ------------------------------------------------------------------------- */

START_TEST(test_mask) {
    enum { W = 4, H = 2 };
    uint8_t px[W * H * 3] = {
        255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255, 0, /* white black red green */
        0,   0,   255, 128, 128, 128, 1, 2, 3, 250, 250, 250,
    };
    char *path = scratch_path("mask.png");
    ck_assert_int_eq(ldm_png_write_rgb8(path, px, W, H), 0);
    float *m;
    int w, h;
    ck_assert_msg(ldm_mask_load(path, W, H, &m, &w, &h) == 0, "%s", ldm_last_error());
    for (int i = 0; i < W * H; i++) {
        /* PIL rgb2l, integer-exact */
        unsigned l = (px[3 * i] * 19595u + px[3 * i + 1] * 38470u + px[3 * i + 2] * 7471u + 0x8000u) >> 16;
        ck_assert_float_eq(m[i], (float)l / 255.0f);
    }
    ck_assert_float_eq(m[0], 1.0f);
    ck_assert_float_eq(m[1], 0.0f);
    ck_assert_float_eq(m[5], 128.0f / 255.0f); /* gray keeps its value */
    free(m);

    /* latent mask: a latent pixel is known only if its whole block is black */
    float big[4 * 4] = {0, 0, 1, 0, /* */ 0, 0, 0, 0, /* */ 0, 0.4f, 0, 0, /* */ 0, 0, 0.6f, 0};
    float known[4];
    ck_assert_int_eq(ldm_mask_to_latent(big, 4, 4, 2, known), 0);
    ck_assert_float_eq(known[0], 1.0f);
    ck_assert_float_eq(known[1], 0.0f);
    ck_assert_float_eq(known[2], 1.0f);
    ck_assert_float_eq(known[3], 0.0f);
    ck_assert_int_eq(ldm_mask_to_latent(big, 4, 4, 3, known), -1);
    ck_assert_msg(strstr(ldm_last_error(), "multiple") != NULL, "%s", ldm_last_error());
    free(path);
}
END_TEST

/* ----------------------------------------------------------------------------
 * Broken files
 * ------------------------------------------------------------------------- */

static void expect_read_error(const char *path, const char *needle) {
    uint8_t *rgb = (uint8_t *)1;
    int w = -7, h = -7;
    ck_assert_int_eq(ldm_png_read_rgb8(path, &rgb, &w, &h), -1);
    ck_assert_ptr_null(rgb);
    ck_assert_msg(strncmp(ldm_last_error(), path, strlen(path)) == 0, "error does not name %s: %s", path,
                  ldm_last_error());
    ck_assert_msg(strstr(ldm_last_error(), needle) != NULL, "expected '%s' in: %s", needle, ldm_last_error());
    float *f = (float *)1;
    ck_assert_int_eq(ldm_image_load(path, 0, 0, &f, NULL, NULL), -1);
    ck_assert_ptr_null(f);
}

START_TEST(test_bad_files) {
    char *p = scratch_path("bad.png");
    /* missing */
    expect_read_error(p, "cannot open");
    /* empty, garbage */
    write_bytes(p, "", 0);
    expect_read_error(p, "not a PNG");
    const char garbage[] = "this is not a PNG file at all, just some text\n";
    write_bytes(p, garbage, sizeof garbage);
    expect_read_error(p, "not a PNG");

    /* a real PNG cut at many places, and with flipped bytes */
    char *src = ldm_xasprintf("%s/goldens/sd1-tiny/txt2img_ddim.png", test_shared_dir());
    size_t len;
    char *data = ldm_read_file(src, &len);
    ck_assert_msg(data != NULL, "%s", ldm_last_error());
    size_t cuts[] = {8, 12, 20, 33, 40, 100, len / 2, len - 13, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_bytes(p, data, cuts[i]);
        expect_read_error(p, "PNG");
    }
    /* the signature alone */
    write_bytes(p, data, 8);
    expect_read_error(p, "truncated");
    /* IHDR CRC broken */
    char *copy = ldm_xmalloc(len);
    memcpy(copy, data, len);
    copy[16] ^= 0x40; /* width */
    write_bytes(p, copy, len);
    expect_read_error(p, "PNG");
    /* image data corrupted in the middle */
    memcpy(copy, data, len);
    for (size_t i = len / 2; i < len / 2 + 64; i++) copy[i] = (char)(copy[i] ^ 0x5A);
    write_bytes(p, copy, len);
    expect_read_error(p, "PNG");
    /* a directory */
    expect_read_error(scratch, scratch);
    free(copy);
    free(data);
    free(src);
    free(p);
}
END_TEST

/* The size check is made from the header, before any pixel is allocated or
 * decoded: a 69-byte PNG declaring 16384x16384 (found by fuzz_png: it made
 * the reader allocate 805 MB before it refused the size) gets the size
 * message, not libpng's complaint about the missing image data. */
START_TEST(test_size_checked_from_header) {
    char *p = scratch_path("huge.png");
    size_t len = 0;
    char *bytes = ldm_read_file("tests/fuzz/regress/png/huge_header_tiny_file.png", &len);
    ck_assert_ptr_nonnull(bytes);
    write_bytes(p, bytes, len);
    float *x = NULL;
    ck_assert_int_eq(ldm_image_load(p, 64, 64, &x, NULL, NULL), -1);
    ck_assert_ptr_null(x);
    ck_assert_msg(strstr(ldm_last_error(), "image is 16384x16384, expected 64x64"), "%s", ldm_last_error());
    ck_assert_int_eq(ldm_mask_load(p, 64, 64, &x, NULL, NULL), -1);
    ck_assert_msg(strstr(ldm_last_error(), "mask is 16384x16384, expected 64x64"), "%s", ldm_last_error());
    free(bytes);
    free(p);
}
END_TEST

Suite *suite_image(void) {
    Suite *su = suite_create("image");
    TCase *tc = tcase_create("image");
    tcase_set_timeout(tc, 30);
    tcase_add_checked_fixture(tc, scratch_setup, scratch_teardown);
    tcase_add_test(tc, test_golden_pngs);
    tcase_add_test(tc, test_load_img_golden);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_text_chunks);
    tcase_add_test(tc, test_truncation);
    tcase_add_test(tc, test_formats);
    tcase_add_test(tc, test_mask);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_size_checked_from_header);
    suite_add_tcase(su, tc);
    return su;
}
