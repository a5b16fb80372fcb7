/*
 * fuzz_promptfile.c - the --prompts file reader (runtime/pipeline.c) as
 * txt2img --prompts reads it: ldm_prompts_read (whole, and one shard of
 * three), then every line split into words as the "prompts from file"
 * options are (ldm_split_args), and each word through the parsers of the
 * option values that take text: --lora FILE[:MULT] (ldm_lora_spec_parse)
 * and --shard K/N (ldm_shard_parse), and every line through the parser
 * txt2img runs on it (ldm_line_args_parse: a plain prompt, webui option
 * words, or a JSON object). Oracle: a parsed line has a prompt, its kind
 * follows its first character, its settings are in range. The input is
 * the file's bytes.
 */
#include "fuzz.h"
#include "lora.h"
#include "pipeline.h"
#include "promptline.h"

static void check_line(const char *text) {
    LdmLineArgs la;
    int rc = ldm_line_args_parse(text, 1000, &la);
    const char *t = text + strspn(text, " \t");
    LdmLineKind want = t[0] == '{' ? LDM_LINE_JSON : !strncmp(t, "--", 2) ? LDM_LINE_OPTIONS : LDM_LINE_PLAIN;
    if (la.kind != want) abort();
    if (rc == 0) {
        if (!la.prompt) abort();
        if (want == LDM_LINE_PLAIN && strcmp(la.prompt, text) != 0) abort();
        if (la.has_steps && (la.steps < 1 || la.steps > 1000)) abort();
        if ((la.has_H && (la.H < 1 || la.H > 65536)) || (la.has_W && (la.W < 1 || la.W > 65536))) abort();
        if (la.has_cfg && !(la.cfg_scale >= -1e4 && la.cfg_scale <= 1e4)) abort();
        if (la.has_schedule && !la.has_sampler) abort();
    } else if (la.prompt || la.negative) {
        abort(); /* a failure frees what it had */
    }
    ldm_line_args_free(&la);
}

LDM_FUZZ_TARGET(promptfile) {
    const char *path = fuzz_file("prompts.txt", data, size);
    LdmPromptList all, shard;
    if (ldm_prompts_read(path, 0, 1, &all) == 0) {
        if (ldm_prompts_read(path, 1, 3, &shard) != 0) abort(); /* a shard of a readable file is readable */
        if (shard.n > all.n) abort();
        ldm_prompts_free(&shard);
        for (int i = 0; i < all.n; i++) {
            if (all.items[i].line < 1) abort();
            check_line(all.items[i].text);
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
