/*
 * main.c - the ldmc command line.
 *
 *   ldmc GRAPH [--config YAML] [-D NAME=VALUE]... [-o OUT.c | -o OUT] [--symbol NAME]
 *        [--dump[=build|graph|PASS]]... [--dot FILE] [--stats]
 *   ldmc convert IN.safetensors|IN.ckpt -o OUT.safetensors [--dtype f32|f16|bf16]
 *   ldmc merge --lora FILE[:MULT]... BASE.safetensors -o OUT.safetensors [--dtype f32|f16|bf16]
 *   ldmc pipeline --config YAML -D H=.. -D W=.. -o OUT.c   (pipeline.c)
 *   ldmc pipeline --config YAML --size HxW... [--nets NET,...] -o OUT.c
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "driver.h"
#include "lora.h"
#include "safetensors.h"

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: ldmc GRAPH [--config YAML] [-D NAME=VALUE]... [-o OUT.c | -o OUT] [--symbol NAME]\n"
            "            [--dump[=WHAT]]... [--dot FILE] [--plot-memory FILE.svg] [--stats]\n"
            "       ldmc convert IN.safetensors|IN.ckpt -o OUT.safetensors [--dtype f32|f16|bf16]\n"
            "       ldmc merge --lora FILE[:MULT]... BASE.safetensors -o OUT.safetensors [--dtype f32|f16|bf16]\n"
            "       ldmc randckpt --config YAML [-D NAME=VALUE]... [--dtype f32|f16|bf16] [--seed N] -o OUT GRAPH[@NAME=VALUE,...]...\n"
            "       ldmc pipeline --config YAML -D H=PIXELS -D W=PIXELS [-D NAME=VALUE]... -o OUT.c\n"
            "       ldmc pipeline --config YAML --size HxW [--size HxW]... [--nets NET,...] [-D NAME=VALUE]... -o OUT.c\n"
            "\n"
            "  --config YAML     the model's CompVis config (e.g. models/sd1/v1-inference.yaml)\n"
            "  -D NAME=VALUE     set a graph param (H, W: image pixels; B: batch), the maximum of a\n"
            "                    run-time extent (param T <= ...), or, with a dotted NAME, override a\n"
            "                    config value (model.params.unet_config.params.num_heads=4)\n"
            "  -o OUT.c          write the generated C\n"
            "  -o OUT            write OUT.c and build OUT, a graph runner:\n"
            "                    OUT --weights CKPT --inputs IN --outputs RESULT\n"
            "  --symbol NAME     name the generated file's exported symbols NAME_forward and NAME_model\n"
            "                    (default: the graph's name, e.g. unet_forward / unet_model); one program\n"
            "                    can then link the same graph compiled for several sizes (unet_512x768)\n"
            "  --dump[=WHAT]     print the graph after every pass (graph, the default), as built (build),\n"
            "                    or after one pass (WHAT = its name below; plan: the memory plan table);\n"
            "                    may be given several times\n"
            "  --dot FILE        write the graph in Graphviz format\n"
            "  --plot-memory F   draw the arena usage over the schedule as SVG\n"
            "  --stats           print node, parameter and FLOP counts and timings on stderr\n"
            "  --version         print the version (and the build's git describe)\n"
            "  -h, --help        this message\n"
            "Every flag takes its value as --flag VALUE or --flag=VALUE (-o, --output; -D, --define);\n"
            "--dump's only as --dump=WHAT.\n"
            "\n"
            "passes, in the order they run:\n");
    for (int i = 0; i < ldmc_n_passes; i++) fprintf(fp, "  %-8s %s\n", ldmc_passes[i].name, ldmc_passes[i].what);
}

static int parse_dtype(const char *s, StDtype *to) {
    if (!strcmp(s, "f32")) *to = ST_F32;
    else if (!strcmp(s, "f16")) *to = ST_F16;
    else if (!strcmp(s, "bf16")) *to = ST_BF16;
    else return -1;
    return 0;
}

/* [A-Za-z_][A-Za-z0-9_]*, at most 200 characters: --symbol. */
static int is_c_identifier(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 200 || (s[0] >= '0' && s[0] <= '9')) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_')) return 0;
    return 1;
}

/* Record -D NAME=VALUE. */
static int add_define(DriverOptions *opt, const char *text);

/* ldmc randckpt: a random-weight checkpoint with the shapes the graphs bind. */
static int randckpt_main(int argc, char **argv) {
    DriverOptions opt = {0};
    opt.defines = calloc((size_t)argc, sizeof *opt.defines);
    const char **graphs = calloc((size_t)argc, sizeof *graphs);
    int n_graphs = 0, rc = 2;
    StDtype dtype = ST_F32;
    unsigned long long seed = 0;
    static const LdmOption opts[] = {
        {"config", 0, LDM_ARG_REQUIRED, 'c'}, {"output", 'o', LDM_ARG_REQUIRED, 'o'},
        {"dtype", 0, LDM_ARG_REQUIRED, 't'},  {"seed", 0, LDM_ARG_REQUIRED, 's'},
        {"define", 'D', LDM_ARG_REQUIRED, 'D'}, {"help", 'h', LDM_ARG_NONE, 'h'},
    };
    LdmArg *args = NULL;
    int n_args = 0, first = argc;
    if (ldm_args_collect(argc - 1, argv + 1, opts, (int)(sizeof opts / sizeof *opts), &args, &n_args, &first) != 0) {
        fprintf(stderr, "ldmc randckpt: error: %s\n", ldm_last_error());
        goto out;
    }
    for (int i = 1 + first; i < argc; i++) graphs[n_graphs++] = argv[i];
    for (int i = 0; i < n_args; i++) {
        const char *v = args[i].value;
        switch (args[i].opt->id) {
        case 'c': opt.config_path = v; break;
        case 'o': opt.out_path = v; break;
        case 't':
            if (parse_dtype(v, &dtype)) {
                fprintf(stderr, "ldmc randckpt: error: --dtype must be f32, f16 or bf16, got '%s'\n", v);
                goto out;
            }
            break;
        case 'h':
            printf("usage: ldmc randckpt --config YAML [-D NAME=VALUE]... [--dtype f32|f16|bf16] [--seed N] "
                   "-o OUT.safetensors GRAPH...\n");
            rc = 0;
            goto out;
        case 's': {
            char *end;
            seed = strtoull(v, &end, 10);
            if (*end || !*v || *v == '-') {
                fprintf(stderr, "ldmc randckpt: error: --seed expects a non-negative integer, got '%s'\n", v);
                goto out;
            }
            break;
        }
        default:
            if (add_define(&opt, v)) goto out;
        }
    }
    if (!opt.out_path || !n_graphs) {
        fprintf(stderr, "usage: ldmc randckpt --config YAML [-D NAME=VALUE]... [--dtype f32|f16|bf16] [--seed N] "
                        "-o OUT.safetensors GRAPH...\n");
        goto out;
    }
    BuildOptions bo = {opt.config_path, opt.defines, opt.n_defines};
    rc = 0;
    if (ldmc_randckpt(graphs, n_graphs, &bo, dtype, seed, opt.out_path) != 0) {
        fprintf(stderr, "%s\n", ldm_last_error());
        rc = 1;
    }
out:
    for (int i = 0; i < opt.n_defines; i++) {
        free(opt.defines[i].name);
        free(opt.defines[i].value);
    }
    free(opt.defines);
    free(graphs);
    free(args);
    return rc;
}

/* ldmc convert: a checkpoint (safetensors or PyTorch .ckpt) to safetensors,
 * optionally with its floating-point weights in another dtype. */
static int convert_main(int argc, char **argv) {
    static const char usage_convert[] =
        "usage: ldmc convert IN.safetensors|IN.ckpt -o OUT.safetensors [--dtype f32|f16|bf16]\n"
        "       ldmc convert --dtype f32|f16|bf16 IN OUT.safetensors\n"
        "  every tensor of IN (of a .ckpt: its state dict's, read without running its pickle) under the same\n"
        "  name; --dtype: the floating-point weights in that type (default: each keeps its dtype)\n";
    const char *dtype = NULL, *in = NULL, *out = NULL;
    static const LdmOption opts[] = {{"dtype", 0, LDM_ARG_REQUIRED, 't'},
                                     {"output", 'o', LDM_ARG_REQUIRED, 'o'},
                                     {"help", 'h', LDM_ARG_NONE, 'h'}};
    LdmArg *args = NULL;
    int n_args = 0, first = argc, help = 0;
    int prc = ldm_args_collect(argc - 1, argv + 1, opts, 3, &args, &n_args, &first);
    for (int i = 0; prc == 0 && i < n_args; i++) {
        if (args[i].opt->id == 'h') help = 1;
        else if (args[i].opt->id == 't') dtype = args[i].value;
        else if (out) prc = ldm_fail("two outputs ('%s' and '%s')", out, args[i].value);
        else out = args[i].value;
    }
    free(args);
    if (prc == 0 && help) {
        fputs(usage_convert, stdout);
        return 0;
    }
    if (prc != 0) {
        fprintf(stderr, "ldmc convert: error: %s\n%s", ldm_last_error(), usage_convert);
        return 2;
    }
    for (int i = 1 + first; i < argc; i++) {
        if (!in) in = argv[i];
        else if (!out) out = argv[i];
        else {
            fprintf(stderr, "ldmc convert: error: unexpected argument '%s'\n%s", argv[i], usage_convert);
            return 2;
        }
    }
    if (!in || !out) {
        fputs(usage_convert, stderr);
        return 2;
    }
    StDtype to = ST_KEEP;
    if (dtype && parse_dtype(dtype, &to)) {
        fprintf(stderr, "ldmc convert: error: --dtype must be f32, f16 or bf16, got '%s'\n", dtype);
        return 2;
    }
    if (st_convert(in, out, to) != 0) {
        fprintf(stderr, "ldmc convert: error: %s\n", ldm_last_error());
        return 1;
    }
    return 0;
}

/* ldmc merge: bake kohya LoRA files into a checkpoint (lora.c). */
static int merge_main(int argc, char **argv) {
    static const char usage_merge[] =
        "usage: ldmc merge --lora FILE[:MULT]... BASE.safetensors -o OUT.safetensors [--dtype f32|f16|bf16]\n"
        "  MULT (default 1) multiplies the LoRA for the UNet and the text encoder; LoRAs are merged in order\n"
        "  --dtype: the output's floating-point weights (default: each tensor keeps BASE's dtype)\n";
    const char *base = NULL, *out = NULL, *dtype = NULL;
    char **files = calloc((size_t)argc, sizeof *files);
    float *mults = calloc((size_t)argc, sizeof *mults);
    LdmLora **loras = calloc((size_t)argc, sizeof *loras);
    int n = 0, rc = 2, base_open = 0;
    StFile bf;
    static const LdmOption opts[] = {
        {"lora", 0, LDM_ARG_REQUIRED, 'l'}, {"output", 'o', LDM_ARG_REQUIRED, 'o'}, {"dtype", 0, LDM_ARG_REQUIRED, 't'},
        {"help", 'h', LDM_ARG_NONE, 'h'}};
    LdmArg *args = NULL;
    int n_args = 0, first = argc;
    if (ldm_args_collect(argc - 1, argv + 1, opts, 4, &args, &n_args, &first) != 0) {
        fprintf(stderr, "ldmc merge: error: %s\n", ldm_last_error());
        goto out;
    }
    for (int i = 0; i < n_args; i++) {
        const char *v = args[i].value;
        if (args[i].opt->id == 'h') {
            fputs(usage_merge, stdout);
            rc = 0;
            goto out;
        }
        if (args[i].opt->id == 'l') {
            double m;
            if (ldm_lora_spec_parse(v, &files[n], &m) != 0) {
                fprintf(stderr, "ldmc merge: error: %s\n", ldm_last_error());
                goto out;
            }
            mults[n++] = (float)m;
        } else if (args[i].opt->id == 'o') out = v;
        else dtype = v;
    }
    for (int i = 1 + first; i < argc; i++) {
        if (!base) base = argv[i];
        else {
            fprintf(stderr, "ldmc merge: error: unexpected argument '%s'\n", argv[i]);
            goto out;
        }
    }
    if (!base || !out || !n) {
        fputs(usage_merge, stderr);
        goto out;
    }
    StDtype to = ST_F32;
    if (dtype && parse_dtype(dtype, &to)) {
        fprintf(stderr, "ldmc merge: error: --dtype must be f32, f16 or bf16, got '%s'\n", dtype);
        goto out;
    }
    rc = 1;
    if (st_open(&bf, base) != 0) {
        fprintf(stderr, "ldmc merge: error: %s\n", ldm_last_error());
        goto out;
    }
    base_open = 1;
    const char **keys = calloc((size_t)bf.n_tensors + 1, sizeof *keys);
    for (int i = 0; i < bf.n_tensors; i++) keys[i] = bf.tensors[i].name;
    for (int k = 0; k < n; k++) {
        if (ldm_lora_open(&loras[k], files[k], keys, bf.n_tensors, mults[k], mults[k]) != 0) {
            fprintf(stderr, "ldmc merge: error: %s\n", ldm_last_error());
            free(keys);
            goto out;
        }
        int nu = ldm_lora_n_unmatched(loras[k]);
        if (nu) {
            fprintf(stderr, "ldmc merge: warning: %s: %d module%s match%s no weight of %s (ignored):", files[k], nu,
                    nu == 1 ? "" : "s", nu == 1 ? "es" : "", base);
            for (int i = 0; i < nu && i < LDM_LORA_KEEP_UNMATCHED; i++)
                fprintf(stderr, " %s", ldm_lora_unmatched(loras[k], i));
            fprintf(stderr, "%s\n", nu > LDM_LORA_KEEP_UNMATCHED ? " ..." : "");
        }
    }
    free(keys);
    int merged = 0;
    if (ldm_lora_merge_checkpoint(&bf, loras, n, dtype ? (int)to : -1, out, &merged) != 0) {
        fprintf(stderr, "ldmc merge: error: %s\n", ldm_last_error());
        goto out;
    }
    fprintf(stderr, "ldmc merge: %d tensor%s merged, wrote %s\n", merged, merged == 1 ? "" : "s", out);
    rc = 0;
out:
    for (int k = 0; k < n; k++) {
        ldm_lora_free(loras[k]);
        free(files[k]);
    }
    if (base_open) st_close(&bf);
    free(args);
    free(loras);
    free(files);
    free(mults);
    return rc;
}

static int add_define(DriverOptions *opt, const char *text) {
    const char *eq = strchr(text, '=');
    if (!eq || eq == text || !eq[1]) {
        fprintf(stderr, "ldmc: error: -D expects NAME=VALUE, got '%s'\n", text);
        return -1;
    }
    for (int i = 0; i < opt->n_defines; i++)
        if (strlen(opt->defines[i].name) == (size_t)(eq - text) && !strncmp(opt->defines[i].name, text, (size_t)(eq - text))) {
            fprintf(stderr, "ldmc: error: -D %.*s is given twice\n", (int)(eq - text), text);
            return -1;
        }
    opt->defines[opt->n_defines].name = strndup(text, (size_t)(eq - text));
    opt->defines[opt->n_defines].value = strdup(eq + 1);
    opt->n_defines++;
    return 0;
}

int ldmc_pipeline_main(int argc, char **argv); /* `ldmc pipeline` (pipeline.c) */

int main(int argc, char **argv) {
    ldm_set_progname("ldmc");
    ldm_install_signal_handlers(); /* no half-written output on SIGINT/SIGTERM */
    if (argc > 1 && !strcmp(argv[1], "convert")) return convert_main(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "merge")) return merge_main(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "randckpt")) return randckpt_main(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "pipeline")) return ldmc_pipeline_main(argc, argv); /* pipeline.c */
    DriverOptions opt = {0};
    opt.defines = calloc((size_t)argc, sizeof *opt.defines);
    int rc = 2;
    /* one row per flag (runtime/args.h): --flag=value and --flag value */
    static const LdmOption opts[] = {
        {"config", 0, LDM_ARG_REQUIRED, 'c'},      {"output", 'o', LDM_ARG_REQUIRED, 'o'},
        {"dot", 0, LDM_ARG_REQUIRED, 'g'},         {"define", 'D', LDM_ARG_REQUIRED, 'D'},
        {"plot-memory", 0, LDM_ARG_REQUIRED, 'p'}, {"symbol", 0, LDM_ARG_REQUIRED, 'y'},
        {"dump", 0, LDM_ARG_OPTIONAL, 'd'},        {"stats", 0, LDM_ARG_NONE, 's'},
        {"help", 'h', LDM_ARG_NONE, 'h'},          {"version", 0, LDM_ARG_NONE, 'V'},
    };
    LdmArg *args = NULL;
    int n_args = 0, first = argc;
    if (ldm_args_collect(argc, argv, opts, (int)(sizeof opts / sizeof *opts), &args, &n_args, &first) != 0) {
        fprintf(stderr, "ldmc: error: %s (see ldmc --help)\n", ldm_last_error());
        goto out;
    }
    for (int i = 0; i < n_args; i++) {
        const char *v = args[i].value;
        switch (args[i].opt->id) {
        case 'h':
            usage(stdout);
            rc = 0;
            goto out;
        case 'V':
            printf("ldmc %s (git %s)\n", LDMC_VERSION, ldm_version());
            rc = 0;
            goto out;
        case 'c': opt.config_path = v; break;
        case 'o': opt.out_path = v; break;
        case 'g': opt.dot_path = v; break;
        case 'p': opt.svg_path = v; break;
        case 'y':
            if (!is_c_identifier(v)) {
                fprintf(stderr, "ldmc: error: --symbol: '%s' is not a C identifier (letters, digits and '_', "
                                "not starting with a digit)\n", v);
                goto out;
            }
            opt.symbol = v;
            break;
        case 'D':
            if (add_define(&opt, v) != 0) goto out;
            break;
        case 's': opt.stats = 1; break;
        case 'd':
            if (!v || !strcmp(v, "graph")) {
                opt.dump_graph = 1;
            } else if (!strcmp(v, "build")) {
                opt.dump_build = 1;
            } else {
                int k = ldmc_pass_index(v);
                if (k < 0) {
                    fprintf(stderr, "ldmc: error: --dump=%s: no such pass (expected build, graph or one of:", v);
                    for (int p = 0; p < ldmc_n_passes; p++) fprintf(stderr, " %s", ldmc_passes[p].name);
                    fprintf(stderr, ")\n");
                    goto out;
                }
                opt.dump_after |= 1u << k;
            }
            break;
        }
    }
    for (int i = first; i < argc; i++) {
        if (!opt.graph_path) {
            opt.graph_path = argv[i];
        } else {
            fprintf(stderr, "ldmc: error: more than one graph file ('%s' and '%s')\n", opt.graph_path, argv[i]);
            goto out;
        }
    }
    if (!opt.graph_path) {
        usage(stderr);
        goto out;
    }
    if (!opt.out_path && !opt.dump_graph && !opt.dump_build && !opt.dump_after && !opt.dot_path && !opt.svg_path &&
        !opt.stats) {
        fprintf(stderr, "ldmc: error: nothing to do: give -o, --dump, --dot or --stats\n");
        goto out;
    }
    rc = ldmc_compile(&opt) == 0 ? 0 : 1;
    if (rc) fprintf(stderr, "%s\n", ldm_last_error());
out:
    for (int i = 0; i < opt.n_defines; i++) {
        free(opt.defines[i].name);
        free(opt.defines[i].value);
    }
    free(opt.defines);
    free(args);
    return rc;
}
