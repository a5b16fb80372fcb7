/*
 * fuzz_promptfile.c - the --prompts file reader (runtime/pipeline.c) as
 * txt2img --prompts reads it: ldm_prompts_read (whole, and one shard of
 * three), then every line split into words as the "prompts from file"
 * options are (ldm_split_args), and each word through the parsers of the
 * option values that take text: --lora FILE[:MULT] (ldm_lora_spec_parse)
 * and --shard K/N (ldm_shard_parse). The per-line option parser itself
 * (parse_line_args) is static in runtime/apps/txt2img.c and not reached
 * here. The input is the file's bytes.
 */
#include "fuzz.h"
#include "lora.h"
#include "pipeline.h"

LDM_FUZZ_TARGET(promptfile) {
    const char *path = fuzz_file("prompts.txt", data, size);
    LdmPromptList all, shard;
    if (ldm_prompts_read(path, 0, 1, &all) == 0) {
        if (ldm_prompts_read(path, 1, 3, &shard) != 0) abort(); /* a shard of a readable file is readable */
        if (shard.n > all.n) abort();
        ldm_prompts_free(&shard);
        for (int i = 0; i < all.n; i++) {
            if (all.items[i].line < 1) abort();
            int argc = 0;
            char **argv = NULL;
            if (ldm_split_args(all.items[i].text, &argc, &argv) != 0) continue;
            for (int a = 0; a < argc; a++) {
                char *path = NULL;
                double mult = 0;
                if (ldm_lora_spec_parse(argv[a], &path, &mult) == 0 && (!path || !*path)) abort();
                free(path);
                int k = -1, n = -1;
                if (ldm_shard_parse(argv[a], &k, &n) == 0 && !(k >= 0 && k < n)) abort();
            }
            ldm_args_free(argc, argv);
        }
        ldm_prompts_free(&all);
    }
    return 0;
}
