/*
 * fuzz_png.c - the PNG reader (runtime/image.c) as txt2img reads an init
 * image and an inpainting mask: ldm_image_load and ldm_mask_load with the
 * size check the executable makes (64x64 here), then without it, then the
 * mask at latent resolution (ldm_mask_to_latent) when its size allows. The
 * input is the file's bytes.
 *
 * The unchecked loads are skipped for a header declaring more than 2^22
 * pixels: up to LDM_IMAGE_MAX_DIM^2 is accepted there by design, and the
 * memory that takes is for the resource limits, not a parser bug.
 */
#include "fuzz.h"
#include "image.h"

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

LDM_FUZZ_TARGET(png) {
    const char *path = fuzz_file("fuzz.png", data, size);
    float *chw = NULL, *mask = NULL;
    /* as txt2img --init-image / --mask at 64x64 */
    if (ldm_image_load(path, 64, 64, &chw, NULL, NULL) == 0) free(chw);
    chw = NULL;
    if (ldm_mask_load(path, 64, 64, &mask, NULL, NULL) == 0) free(mask);
    mask = NULL;
    /* the IHDR's size (the first chunk, at offset 16) */
    if (size >= 24 && (uint64_t)be32(data + 16) * be32(data + 20) > (1u << 22)) return 0;
    int w = 0, h = 0;
    if (ldm_image_load(path, 0, 0, &chw, &w, &h) == 0) {
        free(chw);
        chw = NULL;
        if (ldm_image_load(path, w, h, &chw, NULL, NULL) != 0) abort(); /* its own size passes */
        free(chw);
        chw = NULL;
        if (ldm_image_load(path, w + 8, h, &chw, NULL, NULL) == 0) abort(); /* another size does not */
    }
    if (ldm_mask_load(path, 0, 0, &mask, &w, &h) == 0) {
        for (int64_t i = 0; i < (int64_t)w * h; i++)
            if (!(mask[i] >= 0.0f && mask[i] <= 1.0f)) abort();
        if (w % 8 == 0 && h % 8 == 0) {
            float *known = malloc(((size_t)(w / 8) * (size_t)(h / 8) + 1) * sizeof *known);
            ldm_mask_to_latent(mask, w, h, 8, known);
            free(known);
        }
        free(mask);
    }
    return 0;
}
