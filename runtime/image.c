/*
 * image.c - PNG input and output (see image.h).
 *
 * libpng reports errors by calling an error function that must not return;
 * ours records libpng's message and longjmps back to the setjmp in
 * png_read_body / png_write_body. Everything those functions change after
 * setjmp lives in a struct owned by their caller (not in locals of the
 * function that called setjmp), so it is still valid after the longjmp and
 * the caller can free it. Warnings are dropped: library code never prints.
 */
#include "image.h"
#include "ldm_limits.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* ----------------------------------------------------------------------------
 * libpng error plumbing
 * ------------------------------------------------------------------------- */

typedef struct PngMsg {
    char text[256]; /* libpng's last error message */
} PngMsg;

static void png_error_fn(png_structp png, png_const_charp msg) {
    PngMsg *m = png_get_error_ptr(png);
    if (m) snprintf(m->text, sizeof m->text, "%s", msg ? msg : "unknown libpng error");
    png_longjmp(png, 1);
}

static void png_warning_fn(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

/* ----------------------------------------------------------------------------
 * Reading
 * ------------------------------------------------------------------------- */

typedef struct PngRead {
    const char *path;
    FILE *fp;
    png_structp png;
    png_infop info;
    PngMsg msg;
    uint8_t *pixels;   /* (h, w, 3) */
    png_bytep *rows;   /* (h) row pointers into pixels */
    int w, h;
    int bad_format;    /* set when the decoded layout is not 8-bit RGB */
    const char *what;  /* "image", "mask": for the size check */
    int ew, eh;        /* expected size (0: any), checked from the header before any pixel is read */
    int bad_size;      /* set when the header's size is not the expected one (message recorded) */
    const char *key;   /* ldm_png_read_text: the text chunk wanted */
    char *value;       /* its value, UTF-8 (malloc'd), NULL if absent */
} PngRead;

/* Latin-1 bytes (tEXt) -> UTF-8 (malloc'd) */
static char *latin1_to_utf8(const char *s, size_t n) {
    char *o = ldm_xmalloc(2 * n + 1), *p = o;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) *p++ = (char)c;
        else *p++ = (char)(0xC0 | (c >> 6)), *p++ = (char)(0x80 | (c & 0x3F));
    }
    *p = 0;
    return o;
}

/* The first text chunk (tEXt, zTXt or iTXt) named r->key, as UTF-8. */
static void find_text(PngRead *r) {
    png_textp t;
    int n = 0;
    if (!r->key || r->value || png_get_text(r->png, r->info, &t, &n) <= 0) return;
    for (int i = 0; i < n; i++) {
        if (strcmp(t[i].key, r->key) != 0) continue;
        int itxt = t[i].compression == PNG_ITXT_COMPRESSION_NONE || t[i].compression == PNG_ITXT_COMPRESSION_zTXt;
        size_t len = itxt ? t[i].itxt_length : t[i].text_length;
        if (itxt) {
            r->value = ldm_xmalloc(len + 1);
            memcpy(r->value, t[i].text, len);
            r->value[len] = 0;
        } else {
            r->value = latin1_to_utf8(t[i].text, len);
        }
        return;
    }
}

static int check_size(const char *path, const char *what, int w, int h, int ew, int eh) {
    if ((ew > 0 && w != ew) || (eh > 0 && h != eh))
        return ldm_fail("%s: %s is %dx%d, expected %dx%d", path, what, w, h, ew > 0 ? ew : w, eh > 0 ? eh : h);
    return 0;
}

/* The part that can longjmp: header, transforms to 8-bit RGB, pixels. */
static int png_read_body(PngRead *r) {
    if (setjmp(png_jmpbuf(r->png))) return -1;
    png_init_io(r->png, r->fp);
    png_set_sig_bytes(r->png, 8);
    png_set_user_limits(r->png, LDM_IMAGE_MAX_DIM, LDM_IMAGE_MAX_DIM);
    /* Ancillary chunks: libpng's length check is a benign error (a warning
     * on read), after which it allocates the chunk as declared: a 49-byte
     * file declaring a 1.8 GB zTXt made it allocate (and ASan touch) 1.8 GB
     * (the png fuzzer's slow input, regress/png/ztxt_length_1_8_gb.png).
     * An init image or mask needs no text, ICC profile or the like: those
     * are skipped unread. Text read for ldm_png_read_text (the tests'
     * infotext checks) is held to LDM_PNG_CHUNK_MAX once decompressed. */
    png_set_chunk_malloc_max(r->png, LDM_PNG_CHUNK_MAX);
    if (!r->key) {
        static const png_byte skip[] = "tEXt\0zTXt\0iTXt\0iCCP\0sPLT\0eXIf\0";
        png_set_keep_unknown_chunks(r->png, PNG_HANDLE_CHUNK_NEVER, skip, 6);
    }
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    /* make fuzz (tests/fuzz/fuzz_png.c): a mutated chunk still reaches the
     * decoder instead of failing its CRC or zlib's Adler-32 */
    png_set_crc_action(r->png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
#ifdef PNG_IGNORE_ADLER32
    png_set_option(r->png, PNG_IGNORE_ADLER32, PNG_OPTION_ON);
#endif
#endif
    png_read_info(r->png, r->info);

    png_uint_32 w = png_get_image_width(r->png, r->info), h = png_get_image_height(r->png, r->info);
    /* the size check before the pixels are allocated and decoded: a PNG of a
     * few bytes may declare 16384x16384 */
    if (check_size(r->path, r->what, (int)w, (int)h, r->ew, r->eh) != 0) {
        r->bad_size = 1;
        return -1;
    }
    int color = png_get_color_type(r->png, r->info), depth = png_get_bit_depth(r->png, r->info);
    /* To 8-bit RGB, like PIL's Image.open(...).convert("RGB"): */
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(r->png); /* (adds tRNS alpha, stripped below) */
    if ((color & PNG_COLOR_MASK_COLOR) == 0 && depth < 8) png_set_expand_gray_1_2_4_to_8(r->png);
    if (depth == 16) png_set_strip_16(r->png); /* high byte */
    png_set_strip_alpha(r->png);               /* dropped, not composited */
    if ((color & PNG_COLOR_MASK_COLOR) == 0) png_set_gray_to_rgb(r->png);
    png_set_interlace_handling(r->png);
    png_read_update_info(r->png, r->info);
    if (png_get_bit_depth(r->png, r->info) != 8 || png_get_channels(r->png, r->info) != 3 ||
        png_get_rowbytes(r->png, r->info) != (size_t)w * 3) {
        r->bad_format = 1;
        return -1;
    }
    r->w = (int)w;
    r->h = (int)h;
    r->pixels = ldm_xmalloc((size_t)w * h * 3);
    r->rows = ldm_xmalloc((size_t)h * sizeof(png_bytep));
    for (png_uint_32 y = 0; y < h; y++) r->rows[y] = r->pixels + (size_t)y * w * 3;
    png_read_image(r->png, r->rows);
    find_text(r); /* chunks before the image data */
    png_read_end(r->png, r->info);
    find_text(r); /* and after it */
    return 0;
}

/* ldm_png_read_rgb8 refusing, from the header, a size other than ew x eh
 * (0: any) as check_size does. */
static int png_read_rgb8_fp(FILE *fp, const char *path, const char *what, int ew, int eh, uint8_t **rgb,
                            int *width, int *height, const char *key, char **value) {
    *rgb = NULL;
    PngRead r;
    memset(&r, 0, sizeof r);
    r.path = path;
    r.key = key;
    r.what = what;
    r.ew = ew;
    r.eh = eh;
    r.fp = fp;
    unsigned char sig[8];
    size_t got = fread(sig, 1, sizeof sig, r.fp);
    if (got < sizeof sig || png_sig_cmp(sig, 0, sizeof sig) != 0) {
        fclose(r.fp);
        return ldm_fail("%s: not a PNG file (%s)", path,
                        got < sizeof sig ? "shorter than the 8-byte PNG signature" : "no PNG signature");
    }
    r.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r.msg, png_error_fn, png_warning_fn);
    if (r.png) r.info = png_create_info_struct(r.png);
    if (!r.png || !r.info) {
        png_destroy_read_struct(&r.png, &r.info, NULL);
        fclose(r.fp);
        return ldm_fail("%s: cannot initialise libpng", path);
    }
    int rc = png_read_body(&r);
    if (rc != 0) {
        if (r.bad_format)
            ldm_fail("%s: unsupported PNG layout (could not convert it to 8-bit RGB)", path);
        else if (!r.bad_size) /* (else check_size's message stands) */
            ldm_fail("%s: bad or truncated PNG: %s", path, r.msg.text);
        free(r.pixels);
        r.pixels = NULL;
        free(r.value);
        r.value = NULL;
    }
    png_destroy_read_struct(&r.png, &r.info, NULL);
    free(r.rows);
    fclose(r.fp);
    if (rc != 0) return -1;
    if (value) *value = r.value;
    *rgb = r.pixels;
    *width = r.w;
    *height = r.h;
    return 0;
}

static int png_read_rgb8_sized(const char *path, const char *what, int ew, int eh, uint8_t **rgb, int *width,
                               int *height, const char *key, char **value) {
    *rgb = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return ldm_fail("%s: cannot open: %s", path, strerror(errno));
    return png_read_rgb8_fp(fp, path, what, ew, eh, rgb, width, height, key, value);
}

/* The same from memory (name: for messages). */
static int png_read_rgb8_mem(const void *data, size_t n, const char *name, const char *what, int ew, int eh,
                             uint8_t **rgb, int *width, int *height) {
    *rgb = NULL;
    if (n == 0) return ldm_fail("%s: not a PNG file (empty)", name);
    FILE *fp = fmemopen((void *)data, n, "rb");
    if (!fp) return ldm_fail("%s: cannot read from memory: %s", name, strerror(errno));
    return png_read_rgb8_fp(fp, name, what, ew, eh, rgb, width, height, NULL, NULL);
}

int ldm_png_read_rgb8(const char *path, uint8_t **rgb, int *width, int *height) {
    return png_read_rgb8_sized(path, "image", 0, 0, rgb, width, height, NULL, NULL);
}

int ldm_png_read_text(const char *path, const char *key, char **value) {
    uint8_t *rgb;
    int w, h;
    *value = NULL;
    if (png_read_rgb8_sized(path, "image", 0, 0, &rgb, &w, &h, key, value) != 0) return -1;
    free(rgb);
    return *value != NULL;
}

/* ----------------------------------------------------------------------------
 * Writing
 * ------------------------------------------------------------------------- */

typedef struct PngWrite {
    LdmOutFile out;
    FILE *fp;          /* out.fp, or a memory stream */
    png_structp png;
    png_infop info;
    PngMsg msg;
    const uint8_t *rgb;
    int w, h;
    png_textp text;    /* the text chunks */
    int n_text;
} PngWrite;

static int png_write_body(PngWrite *wr) {
    if (setjmp(png_jmpbuf(wr->png))) return -1;
    png_init_io(wr->png, wr->fp);
    png_set_IHDR(wr->png, wr->info, (png_uint_32)wr->w, (png_uint_32)wr->h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (wr->n_text) png_set_text(wr->png, wr->info, wr->text, wr->n_text);
    png_write_info(wr->png, wr->info);
    for (int y = 0; y < wr->h; y++) png_write_row(wr->png, wr->rgb + (size_t)y * wr->w * 3);
    png_write_end(wr->png, NULL);
    return 0;
}

/* UTF-8 s as Latin-1 (malloc'd) when every character is U+0000..U+00FF,
 * else NULL. */
static char *utf8_to_latin1(const char *s) {
    size_t n = strlen(s);
    char *o = ldm_xmalloc(n + 1), *p = o;
    for (const unsigned char *c = (const unsigned char *)s; *c;) {
        if (*c < 0x80) *p++ = (char)*c++;
        else if ((c[0] == 0xC2 || c[0] == 0xC3) && (c[1] & 0xC0) == 0x80) {
            *p++ = (char)(((c[0] & 0x03) << 6) | (c[1] & 0x3F));
            c += 2;
        } else {
            free(o);
            return NULL;
        }
    }
    *p = 0;
    return o;
}

int ldm_png_write_rgb8(const char *path, const uint8_t *rgb, int width, int height) {
    return ldm_png_write_rgb8_text(path, rgb, width, height, NULL);
}

/* To path atomically, or (mem != NULL) to a malloc'd buffer *mem of *mem_n bytes. */
static int png_write_any(const char *path, uint8_t **mem, size_t *mem_n, const uint8_t *rgb, int width, int height,
                         const char *const *kv) {
    if (width < 1 || height < 1 || width > LDM_IMAGE_MAX_DIM || height > LDM_IMAGE_MAX_DIM)
        return ldm_fail("%s: cannot write a %dx%d image (expected 1..%d pixels per side)", path, width, height,
                        LDM_IMAGE_MAX_DIM);
    PngWrite wr;
    memset(&wr, 0, sizeof wr);
    wr.rgb = rgb;
    wr.w = width;
    wr.h = height;
    /* PIL's PngInfo.add_text, as the webui writes `parameters`: tEXt when
     * the value is Latin-1, else an uncompressed iTXt in UTF-8 */
    int nkv = 0;
    while (kv && kv[2 * nkv] && kv[2 * nkv + 1]) nkv++;
    char **latin = ldm_xcalloc((size_t)nkv + 1, sizeof *latin);
    wr.text = ldm_xcalloc((size_t)nkv + 1, sizeof *wr.text);
    wr.n_text = nkv;
    for (int i = 0; i < nkv; i++) {
        png_text *t = &wr.text[i];
        t->key = (char *)kv[2 * i];
        latin[i] = utf8_to_latin1(kv[2 * i + 1]);
        if (latin[i]) {
            t->compression = PNG_TEXT_COMPRESSION_NONE;
            t->text = latin[i];
            t->text_length = strlen(latin[i]);
        } else {
            t->compression = PNG_ITXT_COMPRESSION_NONE;
            t->text = (char *)kv[2 * i + 1];
            t->itxt_length = strlen(kv[2 * i + 1]);
            t->lang = (char *)"";
            t->lang_key = (char *)"";
        }
    }
    int rc = -1;
    char *buf = NULL;
    size_t buf_n = 0;
    if (mem) {
        wr.fp = open_memstream(&buf, &buf_n);
        if (!wr.fp) {
            ldm_fail("%s: cannot open a memory stream: %s", path, strerror(errno));
            goto done;
        }
    } else {
        if (ldm_out_open(&wr.out, path) != 0) goto done;
        wr.fp = wr.out.fp;
    }
    wr.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &wr.msg, png_error_fn, png_warning_fn);
    if (wr.png) wr.info = png_create_info_struct(wr.png);
    if (!wr.png || !wr.info) {
        png_destroy_write_struct(&wr.png, &wr.info);
        if (mem) fclose(wr.fp), free(buf);
        else ldm_out_abort(&wr.out);
        ldm_fail("%s: cannot initialise libpng", path);
        rc = -1;
        goto done;
    }
    rc = png_write_body(&wr);
    png_destroy_write_struct(&wr.png, &wr.info);
    if (rc != 0) {
        int e = !mem && wr.out.fp && ferror(wr.out.fp) ? errno : 0; /* libpng says "Write Error"; the system says why */
        if (mem) fclose(wr.fp), free(buf);
        else ldm_out_abort(&wr.out);
        if (e) ldm_fail("%s: cannot write PNG: write error: %s", path, strerror(e));
        else ldm_fail("%s: cannot write PNG: %s", path, wr.msg.text);
        goto done;
    }
    if (mem) {
        if (fclose(wr.fp) != 0) {
            free(buf);
            rc = ldm_fail("%s: cannot write PNG to memory: %s", path, strerror(errno));
        } else {
            *mem = (uint8_t *)buf;
            *mem_n = buf_n;
        }
    } else {
        rc = ldm_out_commit(&wr.out);
    }
done:
    for (int i = 0; i < nkv; i++) free(latin[i]);
    free(latin);
    free(wr.text);
    return rc;
}

int ldm_png_write_rgb8_text(const char *path, const uint8_t *rgb, int width, int height, const char *const *kv) {
    return png_write_any(path, NULL, NULL, rgb, width, height, kv);
}

int ldm_png_encode_rgb8_text(const uint8_t *rgb, int width, int height, const char *const *kv, uint8_t **png,
                             size_t *n) {
    *png = NULL;
    *n = 0;
    return png_write_any("(PNG in memory)", png, n, rgb, width, height, kv);
}

/* ----------------------------------------------------------------------------
 * Float conversions
 * ------------------------------------------------------------------------- */

/* rgb (freed) -> the float image of ldm_image_load */
static void image_from_rgb8(uint8_t *rgb, int w, int h, float **chw, int *width, int *height) {
    /* load_img: image = np.array(image).astype(np.float32) / 255.0
     *           image = image[None].transpose(0, 3, 1, 2)      # HWC -> CHW
     *           return 2. * image - 1.                          (float32) */
    size_t plane = (size_t)w * h;
    float *out = ldm_xmalloc(3 * plane * sizeof(float));
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < 3; c++) {
            float v = (float)rgb[p * 3 + c] / 255.0f;
            out[c * plane + p] = 2.0f * v - 1.0f;
        }
    free(rgb);
    *chw = out;
    if (width) *width = w;
    if (height) *height = h;
}

int ldm_image_load(const char *path, int expect_width, int expect_height, float **chw, int *width,
                   int *height) {
    *chw = NULL;
    uint8_t *rgb;
    int w, h;
    if (png_read_rgb8_sized(path, "image", expect_width, expect_height, &rgb, &w, &h, NULL, NULL) != 0) return -1;
    image_from_rgb8(rgb, w, h, chw, width, height);
    return 0;
}

int ldm_image_load_mem(const void *data, size_t n, const char *name, int expect_width, int expect_height,
                       float **chw, int *width, int *height) {
    *chw = NULL;
    uint8_t *rgb;
    int w, h;
    if (png_read_rgb8_mem(data, n, name, "image", expect_width, expect_height, &rgb, &w, &h) != 0) return -1;
    image_from_rgb8(rgb, w, h, chw, width, height);
    return 0;
}

/* rgb (freed) -> the mask of ldm_mask_load */
static void mask_from_rgb8(uint8_t *rgb, int w, int h, float **mask, int *width, int *height) {
    /* inpaint.py: np.array(Image.open(mask).convert("L")).astype(np.float32) / 255.0
     * PIL's RGB -> L (Convert.c rgb2l): L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 */
    size_t plane = (size_t)w * h;
    float *out = ldm_xmalloc(plane * sizeof(float));
    for (size_t p = 0; p < plane; p++) {
        const uint8_t *px = rgb + p * 3;
        uint32_t l = ((uint32_t)px[0] * 19595u + (uint32_t)px[1] * 38470u + (uint32_t)px[2] * 7471u + 0x8000u) >> 16;
        out[p] = (float)l / 255.0f;
    }
    free(rgb);
    *mask = out;
    if (width) *width = w;
    if (height) *height = h;
}

int ldm_mask_load(const char *path, int expect_width, int expect_height, float **mask, int *width,
                  int *height) {
    *mask = NULL;
    uint8_t *rgb;
    int w, h;
    if (png_read_rgb8_sized(path, "mask", expect_width, expect_height, &rgb, &w, &h, NULL, NULL) != 0) return -1;
    mask_from_rgb8(rgb, w, h, mask, width, height);
    return 0;
}

int ldm_mask_load_mem(const void *data, size_t n, const char *name, int expect_width, int expect_height,
                      float **mask, int *width, int *height) {
    *mask = NULL;
    uint8_t *rgb;
    int w, h;
    if (png_read_rgb8_mem(data, n, name, "mask", expect_width, expect_height, &rgb, &w, &h) != 0) return -1;
    mask_from_rgb8(rgb, w, h, mask, width, height);
    return 0;
}

int ldm_mask_to_latent(const float *mask, int width, int height, int factor, float *known) {
    if (factor < 1 || width % factor != 0 || height % factor != 0)
        return ldm_fail("inpainting mask: %dx%d is not a multiple of the latent factor %d", width, height, factor);
    int lw = width / factor, lh = height / factor;
    for (int y = 0; y < lh; y++)
        for (int x = 0; x < lw; x++) {
            int keep = 1;
            for (int dy = 0; dy < factor && keep; dy++)
                for (int dx = 0; dx < factor; dx++)
                    if (!(mask[(size_t)(y * factor + dy) * width + x * factor + dx] < 0.5f)) {
                        keep = 0;
                        break;
                    }
            known[(size_t)y * lw + x] = keep ? 1.0f : 0.0f;
        }
    return 0;
}

void ldm_image_to01(const float *x, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) {
        float v = (x[i] + 1.0f) / 2.0f;
        out[i] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
    }
}

void ldm_image01_to_rgb8(const float *chw01, int width, int height, uint8_t *rgb) {
    /* txt2img.py: x_sample = 255. * rearrange(x_sample.cpu().numpy(), 'c h w -> h w c')
     *             Image.fromarray(x_sample.astype(np.uint8))   (float32, truncation) */
    size_t plane = (size_t)width * height;
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < 3; c++) {
            float v = 255.0f * chw01[c * plane + p];
            rgb[p * 3 + c] = !(v > 0.0f) ? 0 : (v >= 255.0f ? 255 : (uint8_t)v);
        }
}

int ldm_image_save(const char *path, const float *chw01, int width, int height) {
    return ldm_image_save_text(path, chw01, width, height, NULL);
}

int ldm_image_encode_text(const float *chw01, int width, int height, const char *const *kv, uint8_t **png,
                          size_t *n) {
    *png = NULL;
    *n = 0;
    if (width < 1 || height < 1 || width > LDM_IMAGE_MAX_DIM || height > LDM_IMAGE_MAX_DIM)
        return ldm_fail("cannot encode a %dx%d image", width, height);
    uint8_t *rgb = ldm_xmalloc((size_t)width * height * 3);
    ldm_image01_to_rgb8(chw01, width, height, rgb);
    int rc = ldm_png_encode_rgb8_text(rgb, width, height, kv, png, n);
    free(rgb);
    return rc;
}

int ldm_image_save_text(const char *path, const float *chw01, int width, int height, const char *const *kv) {
    if (width < 1 || height < 1 || width > LDM_IMAGE_MAX_DIM || height > LDM_IMAGE_MAX_DIM)
        return ldm_fail("%s: cannot write a %dx%d image (expected 1..%d pixels per side)", path, width, height,
                        LDM_IMAGE_MAX_DIM);
    uint8_t *rgb = ldm_xmalloc((size_t)width * height * 3);
    ldm_image01_to_rgb8(chw01, width, height, rgb);
    int rc = ldm_png_write_rgb8_text(path, rgb, width, height, kv);
    free(rgb);
    return rc;
}
