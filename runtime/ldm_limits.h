/*
 * ldm_limits.h - the resource limits of ldmc's readers and executables, in one
 * place. Each guards a reader against input that would cost unbounded time
 * or memory before anything useful happens; each is enforced with an error
 * naming the input, the size found and the limit (tests/test_limits.c).
 *
 *   a prompt or negative prompt          64 KiB  (the UNet takes at most CHUNKS x 75 tokens
 *                                                 anyway; this bounds the tokenizer's work)
 *   a --prompts file                    256 MiB, 1,000,000 lines, a line 1 MiB
 *   LoRAs merged into one image              64  (--lora flags plus <lora:...> tags)
 *   sampling steps                   1..timesteps of the config (1000 for SD)
 *   init image / mask                16384 px a side (LDM_IMAGE_MAX_DIM, image.h), and
 *                                    exactly the executable's size
 *   a PNG's ancillary chunk          16 MiB (LDM_PNG_CHUNK_MAX: text, ICC profile; as read
 *                                    or decompressed), else the chunk is skipped
 *   a safetensors file             header 100 MB (ST_MAX_HEADER, as the safetensors
 *                                  library), 262,144 tensors (SD v1 has ~1,100, SDXL ~2,500)
 */
#ifndef LDM_LDM_LIMITS_H
#define LDM_LDM_LIMITS_H

#define LDM_MAX_PROMPT_BYTES (64 * 1024)
#define LDM_MAX_PROMPT_FILE_BYTES ((size_t)256 << 20)
#define LDM_MAX_PROMPT_LINES 1000000
#define LDM_LINE_MAX_BYTES (1 << 20)
#define LDM_MAX_LORAS 64
#define ST_MAX_TENSORS 262144
#define LDM_PNG_CHUNK_MAX ((size_t)16 << 20)

#endif
