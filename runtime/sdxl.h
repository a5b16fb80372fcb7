/*
 * sdxl.h - the parts of Stability-AI's sgm conditioner (GeneralConditioner,
 * sgm/modules/encoders/modules.py) that are not networks: the Fourier
 * embeddings of SDXL's size conditioning and the assembly of the UNet's
 * vector input y (the text encoders are generated models).
 *
 *   ConcatTimestepEmbedderND(outdim): each scalar s of a tuple ->
 *     [cos(s f_0 .. s f_{h-1}), sin(s f_0 .. s f_{h-1})], h = outdim / 2,
 *     f_i = exp(-ln(10000) i / h), all in float32 as the reference computes
 *     it (f_i rounded to float32, s * f_i rounded to float32, then cos/sin);
 *     the scalars' blocks concatenated in tuple order.
 *   vector = [pooled text embedding | original size (height, width) |
 *             crop (top, left) | target size (height, width)], each pair
 *             2 * outdim wide (SDXL: 1280 + 3 * 512 = 2816).
 *   The unconditional branch of sgm's sampling scripts zeroes the text
 *   outputs (crossattn and pooled) and keeps the size embeddings.
 */
#ifndef LDM_SDXL_H
#define LDM_SDXL_H

#include <stdint.h>

/* n scalars -> n * outdim floats (outdim even, > 0). */
void ldm_concat_timestep_embed(const float *s, int n, int outdim, float *out);

/* The size conditioning of one image, as the webui passes it: original
 * size, crop top-left, target size (heights before widths). */
typedef struct LdmSizeCond {
    int orig_h, orig_w;
    int crop_top, crop_left;
    int target_h, target_w;
} LdmSizeCond;

/* Check a size conditioning: sizes positive, the crop inside the original
 * size (0 <= top < orig_h, 0 <= left < orig_w). 0, or -1 + ldm_fail naming
 * the value. */
int ldm_size_cond_check(const LdmSizeCond *c);

/* vector (E + 6 * outdim floats) = [pooled (E floats; NULL: zeros, the
 * unconditional branch) | embeddings of orig, crop, target]. */
void ldm_sdxl_vector(const float *pooled, int E, const LdmSizeCond *c, int outdim, float *out);

/* Parse "HxW" (two positive integers) / "T,L" (two non-negative integers)
 * as the --original-size / --target-size and --crop-top-left flags take
 * them. 0, or -1 + ldm_fail naming the flag and what was expected. */
int ldm_parse_hw(const char *flag, const char *s, int *h, int *w);
int ldm_parse_top_left(const char *flag, const char *s, int *top, int *left);

#endif
