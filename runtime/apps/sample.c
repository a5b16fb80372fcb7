/*
 * sample.c - main() of the per-resolution LDM sampling executables.
 *
 *   make sample CONFIG=models/ldm/celebahq-ldm-vq-4.yaml H=256 W=256
 *   build/sample-256x256 --weights celeba.safetensors --steps 50 --seed 1 -o face.png
 *   make sample CONFIG=models/ldm/cin256-v2.yaml H=256 W=256
 *   build/sample-256x256 --weights cin256-v2.safetensors --class 207 -o retriever.png
 *   make sample CONFIG=models/ldm/celebahq-ldm-vq-4.yaml SIZES="256x256 256x384"
 *   build/sample -H 256 -W 384 --weights celeba.safetensors -o wide.png
 *
 * Linked with the ldmc-generated networks of one LDM config at each size it
 * was built for - unet, vae_decoder (VQ or KL) and, for class-conditional
 * configs, class_embed - and `ldm_pipeline_sizes`, the table of `ldmc
 * pipeline`: per size the config's constants and those networks. -H/-W pick
 * the size (default the first); the sizes' networks share their bound
 * weights (LdmNets). Unconditional models follow
 * scripts/sample_diffusion.py (CompVis/latent-diffusion), class-conditional
 * ones the cin256 notebook (scripts/latent_imagenet_diffusion.ipynb); the
 * exact semantics are in shared/goldens/README.md, family 2:
 *
 *   x_T = torch.randn(latent shape) after torch.manual_seed(seed)   (or --init-noise)
 *   unconditional: latent = DDIM(x_T, eps = unet(x, t))
 *   class-conditional: c = class_embed(N), uc = class_embed(n_classes - 1), and
 *     latent = DDIM(x_T, eps = e_u + cfg_scale * (e_c - e_u)), one UNet call
 *     on [x, x] with context [uc, c]
 *   image = decoder(latent / scale_factor)      (VQ: nearest codebook row first)
 *   PNG = uint8(255 * (clamp(image, -1, 1) + 1) / 2)     (custom_to_pil, truncating)
 *
 * The sampler, the guided UNet call, noise, progress, timing and the weight
 * loading are the ones every pipeline executable shares (runtime/pipeline.h,
 * runtime/sampler.h); this file only strings them together.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cpu.h"
#include "image.h"
#include "infotext.h"
#include "kernels.h"
#include "lora.h"
#include "model.h"
#include "pipeline.h"
#include "safetensors.h"
#include "sampler.h"
#include "schedule.h"
#include "util.h"

/* The generated table this program is linked with: per size its constants
 * and its networks in the order below (`ldmc pipeline --nets
 * unet,vae_decoder,class_embed`). For configs without a ClassEmbedder,
 * class_embed is an empty table (forward == NULL). */
extern const LdmPipelineSize ldm_pipeline_sizes[];
extern const int ldm_pipeline_n_sizes;

enum { NET_UNET, NET_DEC, NET_CLASS, N_NETS };

/* The constants of the size in use (the default size until one is chosen). */
static const LdmPipelineConfig *g_cfg;
#define CFG (*g_cfg)

/* cin256 notebook: scale = 3.0 (unconditional_guidance_scale) */
#define DEFAULT_CFG_SCALE 3.0

/* ----------------------------------------------------------------------------
 * Command line
 * ------------------------------------------------------------------------- */

typedef struct Options {
    const char *weights;       /* --weights CKPT */
    const char *out;           /* -o PNG (with --batch K > 1: a directory) */
    const char *init_noise;    /* --init-noise F.safetensors (tensor noise) */
    const char *save_latent;   /* --save-latent F.safetensors (with --batch K > 1: a directory) */
    int steps;                 /* --steps */
    double eta;                /* --eta */
    uint64_t seed;             /* --seed */
    LdmRngKind rng;            /* --rng */
    int batch;                 /* --batch K */
    int has_batch;
    int class_label;           /* --class N */
    int has_class;
    double cfg_scale;          /* --cfg-scale */
    int has_cfg;
    int ema;                   /* --ema */
    int H, W;                  /* -H/--height, -W/--width */
    int has_H, has_W;
    int quiet;                 /* --quiet */
    const char **loras;        /* --lora FILE[:MULT], in order */
    int n_loras;
    int random_seed;           /* -s/--seed -1: draw the seed (ldm_random_seed) */
    int threads;               /* -t/--threads N (0: the default) */
    int no_metadata;           /* --no-metadata: no `parameters` text chunk in the PNGs */
    int verbose;               /* -v/--verbose */
    int dry_run;               /* --dry-run */
} Options;

static int n_classes(void) { return ldm_pipeline_sizes[0].models[NET_CLASS]->forward ? CFG.n_classes : 0; }

static void usage(FILE *fp, const char *argv0) {
    char sizes[1024];
    ldm_pipeline_size_list(ldm_pipeline_sizes, ldm_pipeline_n_sizes, sizes, sizeof sizes);
    fprintf(fp,
            "usage: %s --weights CKPT.safetensors -o OUT.png [--steps N] [--eta E] [--seed N]\n"
            "          [--rng cpu|cuda] [--init-noise F] [--save-latent F] [--batch K]\n"
            "          %s[--ema] [--lora FILE[:MULT]]... [--compute f32|bf16] [--quiet] [-W PIXELS] [-H PIXELS]\n"
            "          [-t N] [--no-metadata] [-v] [--dry-run]\n"
            "       %s --version | --help | --list-options\n"
            "\n"
            "DDIM sampling for %s (%s model).\n"
            "Sizes (width x height): %s.\n"
            "\n"
            "Every flag takes its value as --flag VALUE or --flag=VALUE.\n"
            "\n"
            "  --weights CKPT      LDM checkpoint (LatentDiffusion state dict as .safetensors; F32, F16 or BF16),\n"
            "                      checked tensor by tensor (-m, --model CKPT: the same)\n"
            "  -o, --output OUT    the PNG to write (8-bit RGB, %d wide, %d high at the default size)\n"
            "  -W, --width N       image width in pixels, -H, --height N its height: one of the sizes above\n"
            "                      (default: the first; one flag alone keeps the default's other side)\n"
            "  --steps N           DDIM steps (default 50)\n"
            "  --eta E             DDIM eta (default 0: deterministic; sample_diffusion.py uses 1)\n"
            "  -s, --seed N        torch.manual_seed(N) for all noise (default 0); -1: a random seed\n"
            "                      (0 <= N < 4294967294, as the webui draws it), printed and recorded in the PNG\n"
            "  --rng cpu|cuda      draw noise as torch does on the CPU (default) or on a CUDA GPU\n"
            "  --init-noise F      start from tensor 'noise' of F ([K, %d, %d, %d]) instead of the seed's x_T\n"
            "  --save-latent F     also write the final latent ('latent'), the initial noise ('noise')%s%s to F\n"
            "  --batch K           K images, weights loaded once; OUT (and --save-latent) are then directories,\n"
            "                      image i (1-based) drawn with seed N + i - 1 and written to <i, 5 digits>-<seed>.png\n",
            argv0, n_classes() ? "--class N [--cfg-scale S] " : "", argv0, CFG.banner,
            n_classes() ? "class-conditional" : "unconditional", sizes, CFG.W, CFG.H, CFG.latent_channels, CFG.latent_h,
            CFG.latent_w, strcmp(CFG.first_stage, "vq") == 0 ? ", the codebook indices ('indices')" : "",
            n_classes() ? ", the context ('context', [uncond, cond]) and 'class_label'" : "");
    if (n_classes())
        fprintf(fp,
                "  --class N           the ImageNet-style class to draw, 0 <= N < %d (required; N = %d is the\n"
                "                      unconditional class)\n"
                "  --cfg-scale S       classifier-free guidance scale against the unconditional class %d\n"
                "                      (default %g as in the cin256 notebook; 1 = no guidance)\n",
                CFG.n_classes, CFG.n_classes - 1, CFG.n_classes - 1, DEFAULT_CFG_SCALE);
    else
        fprintf(fp, "  --class, --cfg-scale  class-conditional models only (this one is unconditional: refused)\n");
    fprintf(fp,
            "  --ema               use the EMA weights (model_ema.*) of the UNet instead of model.diffusion_model.*\n"
            "  --lora FILE[:MULT]  merge a kohya LoRA/LoCon (CompVis module names, lora_unet_*) into the UNet's\n"
            "                      weights at MULT (default 1) when they are bound; repeatable\n"
            "  --compute f32|bf16  f32 (default), or the GEMM kernel's products (linear layers, im2col and\n"
            "                      pointwise convolutions) in bfloat16 with float32 sums, on CPUs with\n"
            "                      AVX-512 BF16; Winograd, attention and the rest stay f32\n"
            "  -t, --threads N     threads (default: OMP_NUM_THREADS, else the CPUs this process may use: its\n"
            "                      affinity mask and cgroup CPU quota; -1: the default)\n"
            "  --no-metadata       leave out the PNG text chunk `parameters` (the generation parameters in the\n"
            "                      AUTOMATIC1111 webui's infotext format: steps, sampler, seed, size, model hash;\n"
            "                      the class as the field \"Class\"; the prompt is empty, or the LoRAs' tags)\n"
            "  -q, --quiet         no progress or timing output\n"
            "  -v, --verbose       print the version, the build and the options before the run\n"
            "  --dry-run           check the command line, print the options it gives and stop (nothing is read)\n"
            "  --version           print the version and the build (config, sizes) and exit\n"
            "  --list-options      print every option (long name, short name, value or none) and exit\n"
            "  -h, --help          this message\n"
            "  LDM_PROFILE=       (environment) print per-node kernel times at the end\n");
}

/* The flags, one row each (runtime/args.h); -m/--model is --weights, as
 * stable-diffusion.cpp spells it. */
enum {
    OPT_WEIGHTS = 1, OPT_OUTPUT, OPT_INIT_NOISE, OPT_SAVE_LATENT, OPT_STEPS, OPT_ETA, OPT_SEED, OPT_RNG, OPT_BATCH,
    OPT_CLASS, OPT_CFG_SCALE, OPT_COMPUTE, OPT_HEIGHT, OPT_WIDTH, OPT_LORA, OPT_THREADS, OPT_QUIET, OPT_EMA,
    OPT_NO_METADATA, OPT_VERBOSE, OPT_VERSION, OPT_HELP, OPT_DRY_RUN, OPT_LIST_OPTIONS,
};
#define V LDM_ARG_REQUIRED
#define N LDM_ARG_NONE
static const LdmOption k_options[] = {
    {"weights", 0, V, OPT_WEIGHTS},
    {"model", 'm', V, OPT_WEIGHTS},
    {"output", 'o', V, OPT_OUTPUT},
    {"init-noise", 0, V, OPT_INIT_NOISE},
    {"save-latent", 0, V, OPT_SAVE_LATENT},
    {"steps", 0, V, OPT_STEPS},
    {"eta", 0, V, OPT_ETA},
    {"seed", 's', V, OPT_SEED},
    {"rng", 0, V, OPT_RNG},
    {"batch", 0, V, OPT_BATCH},
    {"class", 0, V, OPT_CLASS},
    {"cfg-scale", 0, V, OPT_CFG_SCALE},
    {"compute", 0, V, OPT_COMPUTE},
    {"height", 'H', V, OPT_HEIGHT},
    {"width", 'W', V, OPT_WIDTH},
    {"lora", 0, V, OPT_LORA},
    {"threads", 't', V, OPT_THREADS},
    {"quiet", 'q', N, OPT_QUIET},
    {"ema", 0, N, OPT_EMA},
    {"no-metadata", 0, N, OPT_NO_METADATA},
    {"verbose", 'v', N, OPT_VERBOSE},
    {"version", 0, N, OPT_VERSION},
    {"help", 'h', N, OPT_HELP},
    {"dry-run", 0, N, OPT_DRY_RUN},
    {"list-options", 0, N, OPT_LIST_OPTIONS},
};
#undef V
#undef N
#define N_OPTIONS ((int)(sizeof k_options / sizeof k_options[0]))

typedef struct ParseState {
    Options *o;
    int help, version, list;
} ParseState;

static int parse_option(void *ctx, const LdmOption *opt, const char *f, const char *v) {
    ParseState *ps = ctx;
    Options *o = ps->o;
    switch (opt->id) {
    case OPT_HELP: ps->help = 1; break;
    case OPT_VERSION: ps->version = 1; break;
    case OPT_LIST_OPTIONS: ps->list = 1; break;
    case OPT_QUIET: o->quiet = 1; break;
    case OPT_EMA: o->ema = 1; break;
    case OPT_NO_METADATA: o->no_metadata = 1; break;
    case OPT_VERBOSE: o->verbose = 1; break;
    case OPT_DRY_RUN: o->dry_run = 1; break;
    case OPT_WEIGHTS: o->weights = v; break;
    case OPT_OUTPUT: o->out = v; break;
    case OPT_INIT_NOISE: o->init_noise = v; break;
    case OPT_SAVE_LATENT: o->save_latent = v; break;
    case OPT_LORA:
        o->loras = ldm_xrealloc(o->loras, (size_t)(o->n_loras + 1) * sizeof *o->loras);
        o->loras[o->n_loras++] = v;
        break;
    case OPT_STEPS: return ldm_parse_int(f, v, 1, CFG.timesteps, &o->steps);
    case OPT_ETA: return ldm_parse_double(f, v, 0, 1e3, &o->eta);
    case OPT_SEED: return ldm_parse_seed(f, v, &o->seed, &o->random_seed);
    case OPT_RNG: return ldm_rng_parse(v, &o->rng);
    case OPT_COMPUTE: return ldm_set_compute(v);
    case OPT_BATCH:
        o->has_batch = 1;
        return ldm_parse_int(f, v, 1, 100000, &o->batch);
    case OPT_CLASS:
        if (!n_classes())
            return ldm_fail("--class: this executable was built for %s, an unconditional model (no "
                            "ClassEmbedder cond stage): it has no classes", CFG.config_path);
        o->has_class = 1;
        return ldm_parse_int(f, v, 0, n_classes() - 1, &o->class_label);
    case OPT_CFG_SCALE:
        if (!n_classes())
            return ldm_fail("--cfg-scale: this executable was built for %s, an unconditional model: there is "
                            "nothing to guide towards", CFG.config_path);
        o->has_cfg = 1;
        return ldm_parse_double(f, v, -1e4, 1e4, &o->cfg_scale);
    case OPT_HEIGHT:
        o->has_H = 1;
        return ldm_parse_int(f, v, 1, 65536, &o->H);
    case OPT_WIDTH:
        o->has_W = 1;
        return ldm_parse_int(f, v, 1, 65536, &o->W);
    case OPT_THREADS:
        if (!strcmp(v, "-1")) {
            o->threads = 0;
            break;
        }
        if (ldm_parse_int(f, v, 1, 4096, &o->threads))
            return ldm_fail("%s: expected a thread count from 1 to 4096 (or -1: the default), got '%s'", f, v);
        break;
    default: return ldm_fail("internal: option %s has no handler", f);
    }
    return 0;
}

/* 0, 1 for --help, 2 for --version, 3 for --list-options, or -1 (ldm_fail)
 * on bad usage. */
static int parse_args(int argc, char **argv, Options *o) {
    memset(o, 0, sizeof *o);
    o->steps = 50;
    o->rng = LDM_RNG_CPU;
    o->batch = 1;
    o->cfg_scale = DEFAULT_CFG_SCALE;
    ParseState ps = {.o = o};
    int first = argc;
    if (ldm_args_parse(argc, argv, k_options, N_OPTIONS, parse_option, &ps, &first) != 0) return -1;
    if (ps.help) return 1;
    if (ps.version) return 2;
    if (ps.list) return 3;
    if (first < argc) return ldm_fail("unexpected argument '%s'", argv[first]);
    return 0;
}

/* The options as parsed, one "name: value" a line (--dry-run, --verbose). */
static void print_options(FILE *fp, const Options *o) {
#define S(name, v) fprintf(fp, "  %-14s %s\n", name ":", (v) ? (v) : "(none)")
#define I(name, v) fprintf(fp, "  %-14s %d\n", name ":", (int)(v))
#define D(name, v) fprintf(fp, "  %-14s %.17g\n", name ":", (double)(v))
    S("weights", o->weights);
    S("output", o->out);
    S("init-noise", o->init_noise);
    S("save-latent", o->save_latent);
    I("steps", o->steps);
    D("eta", o->eta);
    if (o->random_seed) S("seed", "random (-1)");
    else fprintf(fp, "  %-14s %llu\n", "seed:", (unsigned long long)o->seed);
    S("rng", ldm_rng_name(o->rng));
    I("batch", o->batch);
    if (o->has_class) I("class", o->class_label);
    if (n_classes()) D("cfg-scale", o->cfg_scale);
    if (o->has_H) I("height", o->H);
    if (o->has_W) I("width", o->W);
    for (int i = 0; i < o->n_loras; i++) S("lora", o->loras[i]);
    if (o->threads) I("threads", o->threads);
    else S("threads", "(the default)");
    I("ema", o->ema);
    I("quiet", o->quiet);
    I("no-metadata", o->no_metadata);
    I("verbose", o->verbose);
    S("compute", ldm_compute_mode());
#undef S
#undef I
#undef D
}

/* Cross-flag checks that need no file. */
static int check_options(const Options *o) {
    if (!o->weights) return ldm_fail("missing --weights CKPT.safetensors");
    if (!o->out) return ldm_fail(o->batch > 1 ? "missing -o DIR (where the images go)" : "missing -o OUT.png");
    if (n_classes() && !o->has_class)
        return ldm_fail("%s is class-conditional: give --class N with 0 <= N < %d (%d is the unconditional class)",
                        CFG.config_path, n_classes(), n_classes() - 1);
    return 0;
}

/* ----------------------------------------------------------------------------
 * The run
 * ------------------------------------------------------------------------- */

typedef struct App {
    Options o;
    const char *argv0;
    int classes;              /* ClassEmbedder classes, 0 for unconditional models */
    int vq;                   /* first stage VQModelInterface: the decoder also gives z_q and indices */
    LdmNets nets;
    LdmSchedule sched;
    LdmTimes times;
    LdmProgressMode pmode;
    double scale;             /* scale_factor */
    int C, h, w;              /* latent channels and size */
    int64_t n_lat;            /* C * h * w */
    int ctx_dim;              /* class embedding width */
    int32_t labels[2];        /* [unconditional class, --class] */
    float *context;           /* (2, 1, ctx_dim): [class_embed(uncond), class_embed(class)], or NULL */
    float *init_noise;        /* (batch, n_lat) --init-noise, or NULL */
    int size;                 /* the size in use: index in ldm_pipeline_sizes */
    int per_size;             /* networks loaded per size: unet, vae_decoder (, class_embed) */
    LdmLora **loras;          /* (o.n_loras) --lora, merged when the weights are bound */
    char *lora_record;        /* "name:mult, ..." for the latent's metadata */
    char model_hash[11];      /* the infotext's "Model hash" ("" with --no-metadata) */
    char *model_name;         /* ... and "Model": the checkpoint's file stem */
    char *info_prompt;        /* ... its prompt: the LoRAs' <lora:NAME:MULT> tags ("" without) */
    char *lora_hashes;        /* ... and their "Lora hashes" ("name: 12 hex of the addnet hash, ...") */
} App;

/* Network `net` of the size in use, and its index in a->nets. */
static const LdmModel *net_model(const App *a, int net) { return ldm_pipeline_sizes[a->size].models[net]; }
static int net_index(const App *a, int net) { return a->size * a->per_size + net; }

/* Make size k the one in use (CFG, latent shape, networks). */
static void use_size(App *a, int k) {
    a->size = k;
    g_cfg = ldm_pipeline_sizes[k].config;
    a->h = CFG.latent_h;
    a->w = CFG.latent_w;
    a->n_lat = (int64_t)a->C * a->h * a->w;
}

/* The linked networks of the size in use must fit each other and the
 * generated constants (a mismatch is a build bug, not a user error). */
static int check_size_models(const App *a) {
    if (ldm_pipeline_sizes[a->size].n_models != N_NETS)
        return ldm_fail("internal: the size table lists %d networks for %dx%d, expected %d",
                        ldm_pipeline_sizes[a->size].n_models, CFG.W, CFG.H, N_NETS);
    const LdmModel *unet = net_model(a, NET_UNET), *dec = net_model(a, NET_DEC), *ce = net_model(a, NET_CLASS);
    int iz = ldm_model_input(dec, "z"), oi = ldm_model_output(dec, "image");
    if (iz < 0 || oi < 0 || ldm_numel(&dec->inputs[iz]) != a->n_lat ||
        ldm_numel(&dec->outputs[oi]) != 3LL * CFG.H * CFG.W)
        return ldm_fail("internal: the linked decoder was compiled for another config or resolution than %s",
                        CFG.banner);
    if (a->vq && (ldm_model_output(dec, "indices") < 0 ||
                  ldm_numel(&dec->outputs[ldm_model_output(dec, "indices")]) != (int64_t)a->h * a->w))
        return ldm_fail("internal: the linked VQ decoder has no indices output of %dx%d", a->w, a->h);
    if ((CFG.n_classes > 0) != (ce->forward != NULL))
        return ldm_fail("internal: %s %s a ClassEmbedder but the executable was linked %s class_embed",
                        CFG.config_path, CFG.n_classes > 0 ? "has" : "has no", CFG.n_classes > 0 ? "without" : "with");
    int ic = ldm_model_input(unet, "context");
    if (a->classes) {
        int il = ldm_model_input(ce, "class_label"), oc = ldm_model_output(ce, "context");
        if (il < 0 || oc < 0 || ldm_numel(&ce->inputs[il]) != 1 || ldm_numel(&ce->outputs[oc]) != a->ctx_dim ||
            ic < 0 || ldm_numel(&unet->inputs[ic]) != 2LL * a->ctx_dim)
            return ldm_fail("internal: class_embed and the UNet do not fit (one-token context of %d for batch 2)",
                            a->ctx_dim);
    } else if (ic >= 0) {
        return ldm_fail("internal: the UNet of an unconditional model takes a context");
    }
    return 0;
}

/* Every size's networks (leaves the default size in use). */
static int check_models(App *a) {
    int rc = 0;
    for (int k = 0; k < ldm_pipeline_n_sizes && rc == 0; k++) {
        use_size(a, k);
        rc = check_size_models(a);
    }
    use_size(a, 0);
    return rc;
}

/* context[0] = class_embed(n_classes - 1), context[1] = class_embed(class):
 * model.get_learned_conditioning({class_label: [1000]}) / ({class_label: [N]}). */
static int embed_classes(App *a) {
    const LdmModel *ce = net_model(a, NET_CLASS);
    void **outs = ldm_xcalloc((size_t)ce->n_outputs, sizeof *outs);
    int oc = ldm_model_output(ce, "context"), rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++) {
        for (int i = 0; i < ce->n_outputs; i++)
            outs[i] = i == oc ? a->context + (int64_t)k * a->ctx_dim
                              : ldm_aligned_alloc((size_t)ldm_numel(&ce->outputs[i]) * sizeof(float));
        const void *in[1] = {&a->labels[k]};
        rc = ldm_nets_run(&a->nets, net_index(a, NET_CLASS), in, outs);
        for (int i = 0; i < ce->n_outputs; i++)
            if (i != oc) free(outs[i]);
    }
    free(outs);
    return rc;
}

/* latent -> image01 (3, H, W) and, for VQ decoders, the codebook rows
 * chosen for each latent pixel (h * w):
 * decode_first_stage(z) = first_stage_model.decode(1. / scale_factor * z),
 * VQModelInterface.decode quantising first (inside the decoder graph). */
static int decode_latent(App *a, const float *latent, float *image01, int32_t *indices) {
    const LdmModel *dec = net_model(a, NET_DEC);
    int oi = ldm_model_output(dec, "image"), ox = a->vq ? ldm_model_output(dec, "indices") : -1;
    float *z = ldm_aligned_alloc((size_t)a->n_lat * sizeof(float));
    float inv = CFG.scale_by_std ? 1.0f / (float)a->scale : (float)(1.0 / a->scale);
    for (int64_t j = 0; j < a->n_lat; j++) z[j] = inv * latent[j];
    void **outs = ldm_xcalloc((size_t)dec->n_outputs, sizeof *outs);
    for (int i = 0; i < dec->n_outputs; i++)
        outs[i] = i == oi ? (void *)image01 : i == ox ? (void *)indices
                                                      : ldm_aligned_alloc((size_t)ldm_numel(&dec->outputs[i]) * 4);
    const void *in[1] = {z};
    int rc = ldm_nets_run(&a->nets, net_index(a, NET_DEC), in, outs);
    /* custom_to_pil: (clamp(x, -1, 1) + 1) / 2, which is exactly
     * clamp((x + 1) / 2, 0, 1) in float32 (same operations inside [-1, 1],
     * 0 and 1 outside) */
    if (rc == 0) ldm_image_to01(image01, 3LL * CFG.H * CFG.W, image01);
    for (int i = 0; i < dec->n_outputs; i++)
        if (i != oi && i != ox) free(outs[i]);
    free(outs);
    free(z);
    return rc;
}

static void sampler_setup(const App *a, LdmSampler *p) {
    memset(p, 0, sizeof *p);
    p->kind = LDM_SAMPLER_DDIM;
    p->steps = a->o.steps;
    p->eta = a->o.eta;
    p->n = a->n_lat;
    p->v_pred = ldm_pipeline_v_pred(&CFG);
}

/* --save-latent: the final latent (what decode_first_stage takes), the
 * initial noise, and what the decoder and the UNet were given. */
static int save_latent(App *a, const char *path, const float *latent, const float *noise, const int32_t *indices,
                       uint64_t seed, int image) {
    char seed_s[32], steps_s[16], eta_s[32], cfg_s[32], class_s[16], hw_s[32], img_s[16];
    snprintf(seed_s, sizeof seed_s, "%llu", (unsigned long long)seed);
    snprintf(steps_s, sizeof steps_s, "%d", a->o.steps);
    snprintf(eta_s, sizeof eta_s, "%g", a->o.eta);
    snprintf(cfg_s, sizeof cfg_s, "%g", a->o.cfg_scale);
    snprintf(class_s, sizeof class_s, "%d", a->o.class_label);
    snprintf(hw_s, sizeof hw_s, "%dx%d", CFG.H, CFG.W);
    snprintf(img_s, sizeof img_s, "%d", image);
    int64_t shape[4] = {1, a->C, a->h, a->w};
    StWriter *w = st_writer_new();
    st_writer_add(w, "latent", ST_F32, 4, shape, latent);
    st_writer_add(w, "noise", ST_F32, 4, shape, noise);
    if (indices) {
        int64_t ishape[3] = {1, a->h, a->w};
        st_writer_add(w, "indices", ST_I32, 3, ishape, indices);
    }
    if (a->classes) {
        int64_t cshape[3] = {2, 1, a->ctx_dim}, lshape[1] = {2};
        st_writer_add(w, "context", ST_F32, 3, cshape, a->context);
        st_writer_add(w, "class_label", ST_I32, 1, lshape, a->labels);
        st_writer_meta(w, "class", class_s);
        st_writer_meta(w, "cfg_scale", cfg_s);
    }
    const char *meta[] = {"seed", seed_s, "rng", ldm_rng_name(a->o.rng), "sampler", "ddim", "steps", steps_s,
                          "eta", eta_s, "weights", a->o.ema ? "ema" : "model", "image", img_s, "size", hw_s,
                          "loras", a->lora_record ? a->lora_record : "", "ldmc", CFG.banner, NULL};
    for (int i = 0; meta[i]; i += 2) st_writer_meta(w, meta[i], meta[i + 1]);
    int rc = st_writer_save(w, path);
    st_writer_free(w);
    return rc;
}

/* The webui infotext of an image of this run made with `seed` (the PNG's
 * `parameters` chunk): an LDM has no text prompt, so the prompt line is
 * empty (or the --lora files as <lora:NAME:MULT> tags, as txt2img records
 * them), and a class-conditional model's class is the field "Class" (the
 * webui keeps fields it does not know), with the guidance scale against
 * the unconditional class as "CFG scale" (1 for unconditional models). */
static char *image_infotext(const App *a, uint64_t seed) {
    const Options *o = &a->o;
    char class_s[16], eta_s[32];
    const char *extra[12];
    int ne = 0;
    if (a->classes) {
        snprintf(class_s, sizeof class_s, "%d", o->class_label);
        extra[ne++] = "Class", extra[ne++] = class_s;
    }
    if (o->eta != 0) extra[ne++] = "Eta DDIM", extra[ne++] = ldm_py_float(o->eta, eta_s, sizeof eta_s);
    if (o->ema) extra[ne++] = "EMA weights", extra[ne++] = "True";
    extra[ne] = NULL;
    LdmInfotext t = {
        .prompt = a->info_prompt ? a->info_prompt : "",
        .negative = NULL,
        .steps = o->steps,
        .sampler = LDM_SAMPLER_DDIM,
        .cfg_scale = a->classes ? o->cfg_scale : 1.0,
        .seed = seed,
        .width = CFG.W,
        .height = CFG.H,
        .model_hash = a->model_hash[0] ? a->model_hash : NULL,
        .model = a->model_name,
        .denoising_strength = -1.0,
        .rng = o->rng == LDM_RNG_CPU ? "CPU" : NULL,
        .lora_hashes = a->lora_hashes && a->lora_hashes[0] ? a->lora_hashes : NULL,
        .extra = extra,
    };
    return ldm_infotext_format(&t);
}

/* The infotext's model and LoRA fields, once per run (hashes are cached). */
static int metadata_setup(App *a) {
    const Options *o = &a->o;
    double t0 = ldm_now();
    if (ldm_model_hash(o->weights, a->model_hash) != 0) return -1;
    a->model_name = ldm_path_stem(o->weights);
    a->info_prompt = ldm_xstrdup("");
    a->lora_hashes = ldm_xstrdup("");
    for (int i = 0; i < o->n_loras; i++) {
        char *path, *name, hex[65], mult_s[32];
        double mult;
        if (ldm_lora_spec_parse(o->loras[i], &path, &mult) != 0) return -1;
        name = ldm_path_stem(path);
        char *p = ldm_xasprintf("%s%s<lora:%s:%s>", a->info_prompt, i ? " " : "", name,
                                ldm_py_float(mult, mult_s, sizeof mult_s));
        free(a->info_prompt);
        a->info_prompt = p;
        if (ldm_file_sha256(path, 1, hex) == 0) {
            char *h = ldm_xasprintf("%s%s%s: %.12s", a->lora_hashes, *a->lora_hashes ? ", " : "", name, hex);
            free(a->lora_hashes);
            a->lora_hashes = h;
        }
        free(name);
        free(path);
    }
    ldm_times_add(&a->times, "hash weights", ldm_now() - t0);
    return 0;
}

/* Image `image` (0-based) of the run: seed -> png_path (and latent_path). */
static int make_image(App *a, int image, uint64_t seed, const char *png_path, const char *latent_path,
                      const char *label) {
    int rc = -1;
    int64_t n = a->n_lat;
    float *x = ldm_aligned_alloc((size_t)n * sizeof(float));
    float *noise = ldm_aligned_alloc((size_t)n * sizeof(float));
    float *img = ldm_aligned_alloc((size_t)3 * CFG.H * CFG.W * sizeof(float));
    int32_t *indices = a->vq ? ldm_xcalloc((size_t)a->h * a->w, sizeof *indices) : NULL;
    LdmGuide g = {0};

    /* torch.manual_seed(seed); x_T = torch.randn(shape). --init-noise
     * replaces the draw but the generator still moves past it, so the
     * per-step noise of eta > 0 is the seed's. */
    LdmNoise gen;
    ldm_noise_seed(&gen, a->o.rng, seed);
    ldm_noise_draw(&gen, x, n);
    if (a->init_noise) memcpy(x, a->init_noise + (int64_t)image * n, (size_t)n * sizeof(float));
    memcpy(noise, x, (size_t)n * sizeof(float));

    g.nets = &a->nets;
    g.unet = net_index(a, NET_UNET);
    g.batch = 1;
    g.sample_n = n;
    g.guided = a->classes > 0;
    g.scale = a->o.cfg_scale;
    g.context = a->context;
    if (ldm_guide_init(&g) != 0) goto done;

    LdmSampler p;
    sampler_setup(a, &p);
    if (ldm_sample_guided(&a->sched, &p, &g, &gen, a->pmode, label, &a->times, x) != 0) goto done;

    double t0 = ldm_now();
    if (decode_latent(a, x, img, indices) != 0) goto done;
    ldm_times_add(&a->times, "decode", ldm_now() - t0);

    t0 = ldm_now();
    if (latent_path && save_latent(a, latent_path, x, noise, indices, seed, image + 1) != 0) goto done;
    char *info = a->o.no_metadata ? NULL : image_infotext(a, seed);
    const char *kv[] = {"parameters", info, NULL};
    int src = ldm_image_save_text(png_path, img, CFG.W, CFG.H, info ? kv : NULL);
    free(info);
    if (src != 0) {
        if (latent_path) remove(latent_path);
        goto done;
    }
    ldm_times_add(&a->times, "save", ldm_now() - t0);
    a->times.images++;
    rc = 0;
done:
    ldm_guide_free(&g);
    free(x);
    free(noise);
    free(img);
    free(indices);
    return rc;
}

/* Does the checkpoint hold the UNet's EMA copies (LitEma buffers)? Checked
 * before loading so that a file without any gets a message saying so. */
static int check_has_ema(const char *path) {
    StFile f;
    if (st_open(&f, path) != 0) return -1;
    static const char prefix[] = "model_ema.diffusion_model";
    int found = 0;
    for (int i = 0; i < f.n_tensors && !found; i++) found = strncmp(f.tensors[i].name, prefix, sizeof prefix - 1) == 0;
    st_close(&f);
    if (!found)
        return ldm_fail("%s: --ema, but the checkpoint has no EMA weights (no model_ema.diffusion_model* tensors; "
                        "drop --ema to use model.diffusion_model.*)", path);
    return 0;
}

/* Everything named on the command line that can be checked before the
 * (slow) weights are loaded. */
static int load_inputs(App *a) {
    const Options *o = &a->o;
    if (o->batch == 1 && (ldm_check_output_path("-o", o->out) != 0 ||
                          (o->save_latent && ldm_check_output_path("--save-latent", o->save_latent) != 0)))
        return -1;
    if (o->init_noise) {
        int64_t shape[4] = {o->batch, a->C, a->h, a->w};
        a->init_noise = ldm_aligned_alloc((size_t)(o->batch * a->n_lat) * sizeof(float));
        if (ldm_noise_load(o->init_noise, 4, shape, a->init_noise) != 0) return -1;
    }
    /* the sampler's own checks (step counts the DDIM schedule cannot make) */
    LdmSampler p;
    sampler_setup(a, &p);
    p.eps_fn = ldm_guide_eps;
    p.noise_fn = ldm_noise_draw;
    if (ldm_sample_count_steps(&a->sched, &p) < 0) return -1;
    if (o->ema && check_has_ema(o->weights) != 0) return -1;
    return 0;
}

/* --lora: open each file against every network's weights (a misfit, a
 * corrupt file: an error before anything runs) and have them merged when
 * the weights are bound. Modules that match no weight are reported. */
static int open_loras(App *a) {
    double t0 = ldm_now();
    int n_names;
    const char *const *names = ldm_nets_weight_names(&a->nets, &n_names);
    a->loras = ldm_xcalloc((size_t)a->o.n_loras + 1, sizeof *a->loras);
    a->lora_record = ldm_xstrdup("");
    for (int i = 0; i < a->o.n_loras; i++) {
        char *path;
        double mult;
        if (ldm_lora_spec_parse(a->o.loras[i], &path, &mult) != 0) return -1;
        int rc = ldm_lora_open(&a->loras[i], path, names, n_names, (float)mult, (float)mult);
        if (rc == 0 && ldm_lora_n_unmatched(a->loras[i]) > 0) {
            int u = ldm_lora_n_unmatched(a->loras[i]);
            fprintf(stderr, "%s: warning: LoRA %s: %d of its modules match nothing in this model (ignored): %s%s\n",
                    a->argv0, path, u, ldm_lora_unmatched(a->loras[i], 0), u > 1 ? ", ..." : "");
        }
        const char *b = strrchr(path, '/');
        char *rec = ldm_xasprintf("%s%s%s:%g", a->lora_record, i ? ", " : "", b ? b + 1 : path, mult);
        free(a->lora_record);
        a->lora_record = rec;
        free(path);
        if (rc != 0) return -1;
    }
    if (ldm_nets_set_loras(&a->nets, a->loras, a->o.n_loras) != 0) return -1;
    ldm_times_add(&a->times, "load lora", ldm_now() - t0);
    return 0;
}

static int run(App *a) {
    const Options *o = &a->o;
    if (load_inputs(a) != 0) return -1;

    /* every size's networks, size k's at k * per_size: those of one network
     * share one weight set (ldm_nets_load_mapped), bound when it first runs */
    double t0 = ldm_now();
    int n_models = ldm_pipeline_n_sizes * a->per_size;
    const LdmModel **models = ldm_xcalloc((size_t)n_models, sizeof *models);
    LdmKeyMapFn *maps = ldm_xcalloc((size_t)n_models, sizeof *maps);
    for (int k = 0; k < ldm_pipeline_n_sizes; k++)
        for (int j = 0; j < a->per_size; j++) {
            models[k * a->per_size + j] = ldm_pipeline_sizes[k].models[j];
            maps[k * a->per_size + j] = j == NET_UNET && o->ema ? ldm_ema_key : NULL;
        }
    char what[1024], sizes[900];
    snprintf(what, sizeof what, "%s at %s", CFG.config_path,
             ldm_pipeline_size_list(ldm_pipeline_sizes, ldm_pipeline_n_sizes, sizes, sizeof sizes));
    int rc = ldm_nets_load_mapped(&a->nets, o->weights, models, maps, n_models, what);
    free(models);
    free(maps);
    if (rc != 0) return -1;
    if (ldm_pipeline_scale_factor(&CFG, &a->nets.ckpt, &a->scale) != 0) return -1;
    if (o->n_loras > 0 && open_loras(a) != 0) return -1;
    ldm_times_add(&a->times, "load weights", ldm_now() - t0);
    if (!o->no_metadata && metadata_setup(a) != 0) return -1;
    if (ldm_pipeline_n_sizes > 1 && a->pmode != LDM_PROGRESS_QUIET) {
        fprintf(stderr, "%s: %d sizes: %d networks on %d weight sets (bound once, shared by the sizes)\n", a->argv0,
                ldm_pipeline_n_sizes, n_models, a->nets.n_weight_sets);
        for (const char *p = a->nets.notes; *p;) {
            const char *e = strchr(p, '\n');
            fprintf(stderr, "%s: note: %.*s\n", a->argv0, (int)(e ? e - p : (long)strlen(p)), p);
            p = e ? e + 1 : p + strlen(p);
        }
    }

    if (a->classes) {
        t0 = ldm_now();
        a->labels[0] = a->classes - 1;
        a->labels[1] = o->class_label;
        a->context = ldm_aligned_alloc((size_t)(2 * a->ctx_dim) * sizeof(float));
        if (embed_classes(a) != 0) return -1;
        ldm_times_add(&a->times, "class embed", ldm_now() - t0);
    }

    if (o->batch == 1) return make_image(a, 0, o->seed, o->out, o->save_latent, "sampling");

    if (ldm_mkdirs(o->out) != 0 || (o->save_latent && ldm_mkdirs(o->save_latent) != 0)) return -1;
    for (int i = 0; i < o->batch; i++) {
        uint64_t seed = ldm_line_seed(o->seed, i + 1);
        char *png = ldm_output_name(o->out, i + 1, seed, ".png");
        char *lat = o->save_latent ? ldm_output_name(o->save_latent, i + 1, seed, ".safetensors") : NULL;
        char label[96];
        snprintf(label, sizeof label, "[%d/%d] seed %llu", i + 1, o->batch, (unsigned long long)seed);
        int rc = make_image(a, i, seed, png, lat, label);
        if (rc == 0 && a->pmode == LDM_PROGRESS_LINES) fprintf(stderr, "%s: image %d -> %s\n", a->argv0, i + 1, png);
        free(png);
        free(lat);
        if (rc != 0) return ldm_fail("image %d of %d (seed %llu): %s", i + 1, o->batch, (unsigned long long)seed,
                                     ldm_last_error());
    }
    return 0;
}

/* --version: the build's version, what it was compiled for, its sizes. */
static void print_version(FILE *fp, const char *argv0) {
    char sizes[1024];
    ldm_pipeline_size_list(ldm_pipeline_sizes, ldm_pipeline_n_sizes, sizes, sizeof sizes);
    fprintf(fp, "%s (ldmc, git %s)\nbuilt for: %s (%s)\nsizes (width x height): %s\n", argv0, ldm_version(), CFG.banner,
            n_classes() ? "class-conditional" : "unconditional", sizes);
}

int main(int argc, char **argv) {
    App a;
    memset(&a, 0, sizeof a);
    const char *slash = strrchr(argv[0], '/');
    a.argv0 = slash ? slash + 1 : argv[0];
    ldm_set_progname(a.argv0);
    ldm_install_signal_handlers(); /* no half-written output on SIGINT/SIGTERM; SIGBUS of a changed checkpoint */
    g_cfg = ldm_pipeline_sizes[0].config;
    int prc = parse_args(argc, argv, &a.o);
    if (prc >= 1) {
        if (prc == 1) usage(stdout, a.argv0);
        else if (prc == 2) print_version(stdout, a.argv0);
        else ldm_args_list(stdout, k_options, N_OPTIONS);
        free((void *)a.o.loras);
        return fflush(stdout) == 0 ? 0 : 1;
    }
    if (prc == 0 && a.o.dry_run) {
        printf("%s: options:\n", a.argv0);
        print_options(stdout, &a.o);
    }
    if (prc == 0) prc = check_options(&a.o);
    int run_size = 0;
    if (prc == 0) {
        /* -H/-W: a compiled size (one alone keeps the default's other side) */
        int H = a.o.has_H ? a.o.H : CFG.H, W = a.o.has_W ? a.o.W : CFG.W;
        run_size = ldm_pipeline_find_size(ldm_pipeline_sizes, ldm_pipeline_n_sizes, H, W, "sample", "SAMPLE_DEFS");
        if (run_size < 0) {
            fprintf(stderr, "%s: error: %s\n", a.argv0, ldm_last_error());
            free((void *)a.o.loras);
            return 2;
        }
    }
    if (prc != 0) {
        fprintf(stderr, "%s: error: %s\n(see %s --help)\n", a.argv0, ldm_last_error(), a.argv0);
        free((void *)a.o.loras);
        return 2;
    }
    if (a.o.dry_run) {
        printf("%s: the command line is good (--dry-run: nothing read, nothing written)\n", a.argv0);
        free((void *)a.o.loras);
        return fflush(stdout) == 0 ? 0 : 1;
    }
    /* -t, else OMP_NUM_THREADS, else the CPUs this process may use */
    LdmThreadsFrom threads_from;
    int threads = ldm_threads_setup(a.o.threads, &threads_from);
    if (a.o.random_seed) {
        /* -s -1: the seed is drawn now, printed, and recorded in every PNG */
        if (ldm_random_seed(&a.o.seed) != 0) {
            fprintf(stderr, "%s: error: %s\n", a.argv0, ldm_last_error());
            free((void *)a.o.loras);
            return 1;
        }
        fprintf(stderr, "%s: seed %llu (random: --seed -1)\n", a.argv0, (unsigned long long)a.o.seed);
    }
    if (a.o.verbose) {
        print_version(stderr, a.argv0);
        fprintf(stderr, "%s: %d OpenMP threads; options:\n", a.argv0, omp_get_max_threads());
        print_options(stderr, &a.o);
    }
    ldm_profile_init();
    a.pmode = ldm_progress_mode(stderr, a.o.quiet);
    a.classes = n_classes();
    a.vq = strcmp(CFG.first_stage, "vq") == 0;
    a.C = CFG.latent_channels;
    a.ctx_dim = CFG.context_dim;
    a.per_size = a.classes ? 3 : 2;

    int rc = 1;
    if (check_models(&a) != 0) goto out;
    use_size(&a, run_size);
    if (ldm_schedule_init(&a.sched, CFG.linear_start, CFG.linear_end, CFG.timesteps) != 0) goto out;
    if (run(&a) == 0) rc = 0;
out:
    if (rc != 0) fprintf(stderr, "%s: error: %s\n", a.argv0, ldm_last_error());
    if (a.pmode != LDM_PROGRESS_QUIET && a.times.images > 0) {
        ldm_times_print(&a.times, stderr);
        fprintf(stderr, "threads: %d (%s)\n", threads, ldm_threads_from_name(threads_from));
    }
    if (ldm_profiling) ldm_profile_report();
    ldm_nets_free(&a.nets);
    for (int i = 0; a.loras && i < a.o.n_loras; i++) ldm_lora_free(a.loras[i]);
    free(a.loras);
    free(a.lora_record);
    free(a.model_name);
    free(a.info_prompt);
    free(a.lora_hashes);
    free((void *)a.o.loras);
    if (a.sched.alphas_cumprod) ldm_schedule_free(&a.sched);
    ldm_times_free(&a.times);
    free(a.context);
    free(a.init_noise);
    return rc;
}
