/*
 * promptline.h - one line of a txt2img --prompts file, and the run's
 * manifest (OUT/manifest.jsonl).
 *
 * A line is one of
 *   - a prompt (anything else), LoRA tags and the webui syntax included;
 *   - options, when it starts with "--" (after blanks), as the AUTOMATIC1111
 *     webui's "prompts from file" script reads them
 *     (scripts/prompts_from_file.py, cmdargs): shell words; --prompt and
 *     --negative_prompt take every word up to the next one starting with
 *     "--", joined by spaces; --height, --width, --seed, --steps,
 *     --cfg_scale, --sampler_name (also --sampler) take one value;
 *   - a JSON object, when it starts with "{" (JSON Lines): the fields
 *       prompt (string, required), negative_prompt (string), seed (integer
 *       >= 0), steps (integer), cfg_scale (number), sampler (string: ours or
 *       the webui's display names, "DPM++ 2M Karras" choosing the schedule
 *       too; sampler_name is the same field under the webui API's name),
 *       size ("WxH", width first, as the webui and OpenAI write sizes) or
 *       width and height (integers);
 *     an unknown field, a field of the wrong type or out of range, a
 *     duplicate field or anything but one object is an error naming the
 *     field.
 * Each sets only what it names: the rest is the run's (command line).
 */
#ifndef LDM_PROMPTLINE_H
#define LDM_PROMPTLINE_H

#include <stdint.h>

#include "sampler.h"
#include "schedule.h"

typedef enum LdmLineKind {
    LDM_LINE_PLAIN = 0,   /* the line is the prompt */
    LDM_LINE_OPTIONS,     /* --prompt ... --seed N ... */
    LDM_LINE_JSON,        /* {"prompt": ..., ...} */
} LdmLineKind;

/* A --prompts line's own settings. */
typedef struct LdmLineArgs {
    LdmLineKind kind;
    char *prompt;              /* the prompt (malloc'd; set on success) */
    char *negative;            /* malloc'd; NULL: the run's --negative-prompt */
    int H, W, has_H, has_W;    /* image size in pixels */
    uint64_t seed;
    int has_seed;
    int steps, has_steps;
    double cfg_scale;
    int has_cfg;
    LdmSamplerKind sampler;
    int has_sampler;
    LdmSigmaKind schedule;     /* the schedule a webui sampler name implies ("DPM++ 2M Karras") */
    int has_schedule;
} LdmLineArgs;

/* LDM_LINE_MAX_BYTES (ldm_limits.h): longer lines are refused. */
#include "ldm_limits.h"

/* Parse one line (without its end of line). max_steps bounds "steps"
 * (the model's timesteps). Returns 0, or -1 (ldm_fail: the message names
 * the option or field, not the file or line, which the caller adds).
 * Free with ldm_line_args_free (also after a failure). */
int ldm_line_args_parse(const char *text, int max_steps, LdmLineArgs *out);
void ldm_line_args_free(LdmLineArgs *l);

/* Append `line` (one JSON object without a newline) and "\n" to the file
 * at path with one write() on a descriptor opened O_APPEND (created 0666
 * & ~umask): on a local file system, lines of several processes appending
 * to one file never interleave. -1 (ldm_fail) when it cannot be opened or
 * the write is short. */
int ldm_manifest_append(const char *path, const char *line);

#endif
