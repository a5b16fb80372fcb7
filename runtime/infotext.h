/*
 * infotext.h - the generation parameters of an image as the AUTOMATIC1111
 * webui writes them (its "infotext": the PNG text chunk `parameters`, the
 * "PNG Info" tab, the API's `info`), and the file hashes it records.
 *
 * The format is modules/processing.py create_infotext():
 *
 *   <prompt>
 *   Negative prompt: <negative prompt>          (only when there is one)
 *   Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 512x512,
 *   Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.75, Clip skip: 2, RNG: CPU,
 *   Lora hashes: "fox: 0123456789ab", Version: ldmc ...
 *
 * (the last line is one line), fields in the webui's order, a value quoted
 * as JSON when it contains ',', ':' or a newline (infotext_utils.quote),
 * floats as Python prints them (7.0, 0.75). ldm_infotext_parse reads it
 * back the way the webui does (infotext_utils.parse_generation_parameters).
 */
#ifndef LDM_INFOTEXT_H
#define LDM_INFOTEXT_H

#include <stddef.h>
#include <stdint.h>

#include "sampler.h"
#include "schedule.h"

typedef struct LdmInfotext {
    const char *prompt;        /* as given, with its <lora:...> tags */
    const char *negative;      /* NULL or "": no "Negative prompt:" line */
    int steps;
    LdmSamplerKind sampler;    /* "Sampler": the webui's display name */
    int has_schedule;          /* "Schedule type" (k-diffusion samplers) */
    LdmSigmaKind schedule;
    double cfg_scale;
    uint64_t seed;
    int width, height;         /* "Size: WxH" */
    const char *model_hash;    /* "Model hash": 10 hex digits of the checkpoint's SHA-256, or NULL */
    const char *model;         /* "Model": the checkpoint file's stem, or NULL */
    const char *vae_hash;      /* "VAE hash" (--vae), or NULL */
    const char *vae;           /* "VAE": its file name, or NULL */
    double denoising_strength; /* img2img and inpainting; < 0: not written */
    int clip_skip;             /* written when > 1 */
    const char *rng;           /* "RNG": "CPU" (the webui leaves out its default, GPU), or NULL */
    const char *lora_hashes;   /* "name: hash, name: hash" (12 hex of the addnet hash), or NULL */
    const char *ti_hashes;     /* "name: hash, ..." (12 hex of the file's SHA-256), or NULL */
    const char *const *extra;  /* more "Key", "value" pairs (value: a string, quoted as needed), NULL-ended */
    const char *version;       /* "Version", or NULL */
} LdmInfotext;

/* The infotext (malloc'd). */
char *ldm_infotext_format(const LdmInfotext *t);

/* Python's repr() of a float: the shortest text that reads back as x
 * ("7.0", "0.75", "1e-05"). buf of 32 bytes or more. */
const char *ldm_py_float(double x, char *buf, size_t size);

/* An infotext read back as the webui's parse_generation_parameters does:
 * the prompt, the negative prompt and the "Key: value" pairs of the last
 * line (quoted values unquoted), in order. */
typedef struct LdmInfotextParsed {
    char *prompt, *negative;
    int n;
    char **keys, **values;
} LdmInfotextParsed;

int ldm_infotext_parse(const char *text, LdmInfotextParsed *out);
void ldm_infotext_parsed_free(LdmInfotextParsed *p);
/* The value of key, or NULL. */
const char *ldm_infotext_get(const LdmInfotextParsed *p, const char *key);

/* SHA-256 of a file as 64 hex digits. addnet: the webui's "addnet" hash of a
 * safetensors file (modules/hashes.py addnet_hash_safetensors: the bytes
 * after the JSON header), which its "Lora hashes" use. */
int ldm_file_sha256(const char *path, int addnet, char hex[65]);

/* The webui's model hash (sd_models.CheckpointInfo.shorthash): the first 10
 * hex digits of the file's SHA-256. Hashing a 4 GB checkpoint takes
 * seconds, so the full hash is cached by path, size and modification time
 * in $LDM_HASH_CACHE, else $XDG_CACHE_HOME/ldmc/hashes.txt, else
 * ~/.cache/ldmc/hashes.txt (a cache that cannot be written is not an
 * error); LDM_HASH_CACHE=off disables it. */
int ldm_model_hash(const char *path, char hex10[11]);
/* The same with all 64 hex digits (the webui's sd-models "sha256"). */
int ldm_model_sha256(const char *path, char hex64[65]);

#endif
