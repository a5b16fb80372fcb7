/*
 * taesd.h - the weights of TAESD, the tiny autoencoder (madebyollin/taesd),
 * under either of the names it ships with.
 *
 * models/taesd/taesd_{decoder,encoder}.graph bind the names of the released
 * taesd_decoder.safetensors / taesd_encoder.safetensors (and .pth): the
 * nn.Sequential indices of taesd.py, "1.weight", "3.conv.0.weight", ...
 * diffusers AutoencoderTiny (diffusion_pytorch_model.safetensors of the HF
 * repo madebyollin/taesd, also what stable-diffusion.cpp --taesd reads)
 * holds the same tensors as
 *   decoder: "<i>.<rest>" -> "decoder.layers.<i - 1>.<rest>"  (its Clamp,
 *            index 0 of taesd.py, is not a layer there: every index shifts
 *            down by one; "1.weight" -> "decoder.layers.0.weight")
 *   encoder: "<i>.<rest>" -> "encoder.layers.<i>.<rest>"      (same indices)
 * A diffusers file holds both halves, so it serves as the decoder and as the
 * encoder. Which naming a file uses is decided once per file and model: the
 * released name of the model's first weight, else its diffusers name; every
 * weight is then read under that naming (a file mixing the two is refused,
 * naming the missing key).
 */
#ifndef LDM_TAESD_H
#define LDM_TAESD_H

#include <stddef.h>

#include "model.h"
#include "pipeline.h"
#include "safetensors.h"

/* LdmKeyMapFn: released decoder name -> diffusers AutoencoderTiny name. */
const char *ldm_taesd_decoder_diffusers_key(const char *name, char *buf, size_t size);
/* LdmKeyMapFn: released encoder name -> diffusers AutoencoderTiny name. */
const char *ldm_taesd_encoder_diffusers_key(const char *name, char *buf, size_t size);

/* The key map under which f holds model m's weights (decoder: 1 for TAESD's
 * decoder, 0 for its encoder): *map = NULL for the released names, the
 * diffusers map for the diffusers names; -1 with a message naming both keys
 * looked for when f has neither. */
int ldm_taesd_key_map(const StFile *f, const LdmModel *m, int decoder, LdmKeyMapFn *map);

/* ldm_nets_load for TAESD models (all of one half: decoder 1 or 0) from the
 * file at path, under the naming ldm_taesd_key_map finds. Errors read
 * "<flag> <path>: ..." (flag e.g. "--taesd"). */
int ldm_taesd_nets_load(LdmNets *s, const char *flag, const char *path, const LdmModel *const *models, int n,
                        int decoder);

#endif
