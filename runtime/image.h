/*
 * image.h - PNG input and output for the pipelines (libpng).
 *
 * Conventions follow the CompVis scripts:
 *   - input images (scripts/img2img.py load_img): PIL .convert("RGB"), then
 *     u8 / 255 * 2 - 1 as float32, CHW;
 *   - output images (scripts/txt2img.py, sample_diffusion.py custom_to_pil):
 *     image01 = clamp((x + 1) / 2, 0, 1); PNG = uint8(255 * image01) with
 *     truncation, 8-bit RGB;
 *   - inpainting masks (scripts/inpaint.py): PIL .convert("L") / 255, white
 *     = the region to repaint.
 * Any PNG is accepted and turned into 8-bit RGB: gray, gray+alpha, RGB, RGBA
 * and palette images, bit depths 1-16, interlaced or not. Alpha (and a
 * palette's tRNS transparency) is dropped, not composited, as PIL's
 * convert("RGB") does; 16-bit samples keep their high byte (PIL's "RGB;16B"
 * unpacker). Gamma and colour-profile chunks are ignored, as PIL ignores
 * them.
 *
 * Every error message names the file; nothing is printed; output files are
 * written atomically (temporary name + rename).
 */
#ifndef LDM_IMAGE_H
#define LDM_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#define LDM_IMAGE_MAX_DIM 16384 /* larger images are refused (width or height) */

/* Decode a PNG to 8-bit RGB: *rgb = malloc'd (height, width, 3) bytes. */
int ldm_png_read_rgb8(const char *path, uint8_t **rgb, int *width, int *height);
/* Encode (height, width, 3) bytes as an 8-bit RGB PNG, atomically. */
int ldm_png_write_rgb8(const char *path, const uint8_t *rgb, int width, int height);
/* The same with text chunks before the image data: kv = key, value, key,
 * value, ..., NULL (values UTF-8). As PIL's PngInfo.add_text (which the
 * AUTOMATIC1111 webui uses for `parameters`): a value that is all Latin-1
 * is a tEXt chunk in Latin-1, any other an uncompressed iTXt in UTF-8. */
int ldm_png_write_rgb8_text(const char *path, const uint8_t *rgb, int width, int height, const char *const *kv);
/* ldm_png_write_rgb8_text into memory: *png = malloc'd PNG bytes, *n their count. */
int ldm_png_encode_rgb8_text(const uint8_t *rgb, int width, int height, const char *const *kv, uint8_t **png,
                             size_t *n);
/* The value (UTF-8, malloc'd) of the first tEXt/zTXt/iTXt chunk named key:
 * 1, 0 when there is none (*value NULL), -1 on a bad PNG. */
int ldm_png_read_text(const char *path, const char *key, char **value);

/* scripts/img2img.py load_img without the resize: *chw = malloc'd
 * (3, height, width) floats, (float)u8 / 255 * 2 - 1. If expect_width /
 * expect_height are > 0 the size must match ("in.png: image is 100x80,
 * expected 128x128"). width/height may be NULL. */
int ldm_image_load(const char *path, int expect_width, int expect_height, float **chw, int *width,
                   int *height);

/* ldm_image_load of the PNG bytes data[0..n) (name: for messages, e.g.
 * "init_images[0]"); the same checks. */
int ldm_image_load_mem(const void *data, size_t n, const char *name, int expect_width, int expect_height,
                       float **chw, int *width, int *height);

/* Inpainting mask: *mask = malloc'd (height, width) floats in [0, 1], the
 * luminance of PIL's convert("L") (L = (19595 R + 38470 G + 7471 B + 32768)
 * >> 16, so gray images keep their value) divided by 255. Size check as
 * above. */
int ldm_mask_load(const char *path, int expect_width, int expect_height, float **mask, int *width,
                  int *height);

/* ldm_mask_load of the PNG bytes data[0..n). */
int ldm_mask_load_mem(const void *data, size_t n, const char *name, int expect_width, int expect_height,
                      float **mask, int *width, int *height);

/* Latent-resolution "known" mask for LdmSampler.mask from an image mask
 * (white = repaint): known[y][x] = 1 where every pixel of the factor x
 * factor block is < 0.5 (black, keep), else 0, so the repainted region never
 * shrinks. width and height must be multiples of factor. known has
 * (height/factor) * (width/factor) floats. */
int ldm_mask_to_latent(const float *mask, int width, int height, int factor, float *known);

/* txt2img.py: torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0), n floats
 * (the decoder output -> image01; out may equal x). */
void ldm_image_to01(const float *x, int64_t n, float *out);
/* image01 (3, height, width) -> (height, width, 3) bytes, uint8(255 * x)
 * truncated like numpy's astype(np.uint8); values outside [0, 1] and NaN
 * saturate to 0 / 255. */
void ldm_image01_to_rgb8(const float *chw01, int width, int height, uint8_t *rgb);
/* ldm_image01_to_rgb8 + ldm_png_write_rgb8. */
int ldm_image_save(const char *path, const float *chw01, int width, int height);
/* ... with text chunks (ldm_png_write_rgb8_text). */
int ldm_image_save_text(const char *path, const float *chw01, int width, int height, const char *const *kv);
/* ... into memory (ldm_png_encode_rgb8_text). */
int ldm_image_encode_text(const float *chw01, int width, int height, const char *const *kv, uint8_t **png,
                          size_t *n);

#endif
