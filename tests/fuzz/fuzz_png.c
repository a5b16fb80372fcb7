/*
 * fuzz_png.c - the PNG reader (runtime/image.c) as img2img reads an init
 * image and inpainting a mask: ldm_image_load and ldm_mask_load, without
 * and with the size check (--H/--W), then the mask at latent resolution
 * (ldm_mask_to_latent) when its size allows. The input is the file's bytes.
 */
#include "fuzz.h"
#include "image.h"

LDM_FUZZ_TARGET(png) {
    const char *path = fuzz_file("fuzz.png", data, size);
    float *chw = NULL;
    int w = 0, h = 0;
    if (ldm_image_load(path, 0, 0, &chw, &w, &h) == 0) {
        free(chw);
        chw = NULL;
        if (ldm_image_load(path, w, h, &chw, NULL, NULL) != 0) abort(); /* its own size passes */
        free(chw);
        chw = NULL;
        if (ldm_image_load(path, w + 8, h, &chw, NULL, NULL) == 0) abort(); /* another size does not */
    }
    float *mask = NULL;
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
