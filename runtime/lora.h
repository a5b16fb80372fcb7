/*
 * lora.h - kohya-ss LoRA / LoCon files merged into CompVis SD v1, SD 2.x and SDXL weights.
 *
 * A LoRA file holds, per module, `<prefix>.lora_down.weight`,
 * `<prefix>.lora_up.weight` and optionally `<prefix>.alpha` (the prefix is
 * the key up to its first '.'). Prefixes `lora_unet_*` (diffusers- or
 * CompVis-style names) and `lora_te_text_model_*` are mapped, as the
 * AUTOMATIC1111 webui does, to checkpoint keys `model.diffusion_model.*.weight`
 * and `cond_stage_model.transformer.text_model.*.weight` (the diffusers
 * arithmetic assumes the SD v1 UNet layout), or SD 2.x's OpenCLIP tower
 * `cond_stage_model.model.*`; SDXL's `lora_te1_*` and `lora_te2_*` to
 * `conditioner.embedders.0.transformer.*` and `.1.model.*`. An OpenCLIP
 * module `..._self_attn_{q,k,v}_proj` changes its third of the rows of the
 * packed `attn.in_proj_weight` (so one key may have up to three modules,
 * each on its own rows). Prefixes that match no module of
 * the checkpoint are not an error: they are counted and the first
 * LDM_LORA_KEEP_UNMATCHED kept for the caller to report.
 *
 * The delta of a module is
 *   delta = mult * (alpha / rank) * reshape(up[out, r] @ down[r, -1], W.shape)
 * (rank = lora_down.shape[0]; no alpha: alpha / rank = 1; mult = te_mult for
 * text-encoder modules, unet_mult otherwise). Linear: down [r, in], up
 * [out, r]; conv: down [r, Cin, kh, kw] (or [r, Cin] for 1x1), up
 * [Cout, r, 1, 1] (or [Cout, r]). Computed with float64 accumulation.
 *
 * Merging is done tensor by tensor (ldm_lora_apply on one weight buffer at a
 * time), so a caller never needs a second copy of the model. Several LoRAs:
 * apply each in turn (every delta depends only on the LoRA, not on W).
 *
 * Errors (ldm_fail, no printing): unreadable or corrupt file, a module with
 * lora_up but no lora_down or the reverse, rank mismatch between the two, a
 * non-float or non-finite factor or alpha, a tensor that is not one of the
 * three kinds, two prefixes for one module, and (at apply time) factors
 * whose shape does not fit the weight.
 */
#ifndef LDM_LORA_H
#define LDM_LORA_H

#include <stdint.h>

#include "safetensors.h"

#define LDM_LORA_KEEP_UNMATCHED 8

typedef struct LdmLora LdmLora;

/* "FILE[:MULT]" (the --lora flags of ldmc merge, the runner and the
 * executables): *path = FILE (malloc'd), *mult = MULT (1 when absent). The
 * split is at the last ':' and only when what follows is a number, so a path
 * with ':' in it still works. -1 (ldm_fail, *path NULL) for an empty file
 * name or a multiplier that is not finite. */
int ldm_lora_spec_parse(const char *spec, char **path, double *mult);

/* Open and validate the LoRA file `path` and bind its modules to the
 * checkpoint keys `keys` (n_keys names: every tensor name of the base
 * checkpoint will do). te_mult / unet_mult: the text-encoder and UNet
 * multipliers. On success *out is set; on error returns -1 (*out NULL). */
int ldm_lora_open(LdmLora **out, const char *path, const char *const *keys, int n_keys, float te_mult,
                  float unet_mult);
void ldm_lora_free(LdmLora *l);

/* Modules bound to a checkpoint key, and the key of module i (weight). */
int ldm_lora_n_modules(const LdmLora *l);
const char *ldm_lora_module_key(const LdmLora *l, int i);
/* The kohya prefix of module i (e.g. lora_unet_down_blocks_0_resnets_0_conv1). */
const char *ldm_lora_module_prefix(const LdmLora *l, int i);
/* Module prefixes that matched no checkpoint key: how many, and the first
 * min(n, LDM_LORA_KEEP_UNMATCHED) of them in file order. */
int ldm_lora_n_unmatched(const LdmLora *l);
const char *ldm_lora_unmatched(const LdmLora *l, int i);

/* Does the LoRA modify checkpoint key `key`? (binary search) */
int ldm_lora_touches(const LdmLora *l, const char *key);

/* The factors are read from the LoRA file's mapping whenever a delta is
 * computed, never copied: after a merge (ldm_weights_bind merges while it
 * binds) this gives the pages read back to the kernel, so an open LoRA
 * costs no resident memory while the model runs. */
void ldm_lora_release_pages(const LdmLora *l);
/* delta (numel of shape floats) = the module's delta for weight `key` of
 * shape [ndim] `shape`. Returns 1 (written), 0 (key not modified, delta
 * untouched) or -1 (factors do not fit the shape: the error names the key,
 * the shapes and the module). */
int ldm_lora_delta(const LdmLora *l, const char *key, int ndim, const int64_t *shape, float *delta);
/* w += delta, in place (float64 sum rounded once). Same returns. */
int ldm_lora_apply(const LdmLora *l, const char *key, int ndim, const int64_t *shape, float *w);
/* The same on rows [r0, r1) of the first dimension only (0 <= r0 <= r1 <=
 * shape[0]): rows points at row r0, row-major, numel / shape[0] floats per
 * row. Bit-identical to those rows of ldm_lora_apply (the same code), so a
 * weight may be merged piece by piece (model.c binds it that way). Same
 * returns; rows out of range are -1 as well. */
int ldm_lora_apply_rows(const LdmLora *l, const char *key, int ndim, const int64_t *shape, int64_t r0, int64_t r1,
                        float *rows);
/* Would the LoRA's factors fit weight `key` of shape [ndim] shape? 0 if the
 * LoRA does not touch key or they fit; -1 with an ldm_fail naming the LoRA
 * file, the module prefix, the factor shapes, the key and its shape. What
 * a caller checks before it merges where it cannot report an error. */
int ldm_lora_check(const LdmLora *l, const char *key, int ndim, const int64_t *shape);

/* `ldmc merge`: write every tensor of `base` to out_path (atomically), the
 * ones the LoRAs modify merged (in the order given). out_dtype: ST_F32,
 * ST_F16 or ST_BF16 converts the floating-point weights as st_convert does
 * (names without '.' and integer tensors keep their dtype); -1 keeps each
 * tensor's dtype. Metadata is copied. *n_merged (may be NULL): number of
 * tensors modified. */
int ldm_lora_merge_checkpoint(const StFile *base, LdmLora *const *loras, int n_loras, int out_dtype,
                              const char *out_path, int *n_merged);

#endif
