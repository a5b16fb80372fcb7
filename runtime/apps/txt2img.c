/*
 * txt2img.c - main() of the per-resolution text-to-image executables.
 *
 *   make txt2img CONFIG=models/sd1/v1-inference.yaml H=512 W=512
 *   build/txt2img-512x512 --weights v1-5-pruned-emaonly.safetensors \
 *       --vocab bpe_simple_vocab_16e6.txt.gz --prompt "a red fox in the snow" -o fox.png
 *   make txt2img CONFIG=models/sd1/v1-inference.yaml SIZES="512x512 512x768 768x512"
 *   build/txt2img -H 512 -W 768 --weights ... --prompt "a red fox in the snow" -o fox.png
 *
 * Linked with, for each size it was built for, four ldmc-generated networks
 * compiled for one config at that resolution - clip_text (B=1), unet (B=2:
 * [uncond, cond] in one call), vae_decoder and vae_encoder (B=1) - and
 * `ldm_pipeline_sizes`, the table `ldmc pipeline` writes: per size the
 * config's constants and those four networks. -H/-W pick the size (default
 * the first); every size's networks run on the same bound weights
 * (LdmNets shares a weight set between models with identical weight tables),
 * so a --prompts file can mix sizes (per-line --height/--width) with one
 * weight load. The flow is the CompVis scripts'
 * (scripts/txt2img.py, scripts/img2img.py) and k-diffusion's for the
 * k-samplers; the exact semantics are in shared/goldens/README.md:
 *
 *   tokens = CLIP BPE(prompt), uncond tokens = CLIP BPE(negative prompt, "" by default)
 *   c, uc = clip_text(tokens), clip_text(uncond tokens)
 *   x_T = torch.randn(latent shape) after torch.manual_seed(seed)   (or --init-noise)
 *   img2img: init_latent = scale_factor * encoder(image).mean, noised to int(strength * steps)
 *   inpainting (--mask): ordinary models re-noise the known region each step
 *     (latent blending, sampler.h); "hybrid" models (SD inpainting, 9 UNet
 *     input channels) get [mask, scale_factor * encoder(image * (mask < 0.5)).mean]
 *     concatenated to the latent (runwayml scripts/inpaint_st.py)
 *   latent = sampler(x_T, eps = e_u + cfg_scale * (e_c - e_u))
 *   image = decoder(latent / scale_factor); PNG = uint8(255 * clamp((image + 1) / 2, 0, 1))
 *
 * TAESD (built in with TAESD=1: two more networks per size): --taesd decodes
 * with image01 = clamp(taesd_decoder(latent), 0, 1), the latent unscaled;
 * --taesd-encoder encodes with latent = taesd_encoder((image + 1) / 2);
 * --preview-every N --preview PNG decodes each N-th step's x0 prediction.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "image.h"
#include "lora.h"
#include "model.h"
#include "pipeline.h"
#include "prompt.h"
#include "sampler.h"
#include "schedule.h"
#include "taesd.h"
#include "textcond.h"
#include "tokenizer.h"
#include "util.h"

/* The generated table this program is linked with: per size its constants
 * and its networks in the order below (`ldmc pipeline --nets
 * clip_text,unet,vae_decoder,vae_encoder`). */
extern const LdmPipelineSize ldm_pipeline_sizes[];
extern const int ldm_pipeline_n_sizes;

enum { NET_CLIP, NET_UNET, NET_DEC, NET_ENC, N_NETS };
/* With TAESD (make txt2img ... TAESD=1, the default) every size lists two
 * more networks after those: TAESD's decoder and encoder. Their weights come
 * from their own files (--taesd, --taesd-encoder), so they are bound in
 * LdmNets of their own (App.taesd_dec, App.taesd_enc: one checkpoint each,
 * the model of size k at index k), never in App.nets (the checkpoint's). */
enum { NET_TAESD_DEC = N_NETS, NET_TAESD_ENC, N_NETS_TAESD };

/* The constants of the size in use (the default size until one is chosen). */
static const LdmPipelineConfig *g_cfg;
#define CFG (*g_cfg)

/* ----------------------------------------------------------------------------
 * Command line
 * ------------------------------------------------------------------------- */

typedef struct Options {
    const char *weights;       /* --weights CKPT */
    const char *vae;           /* --vae FILE: the autoencoder's weights from FILE */
    const char *vocab;         /* --vocab bpe_simple_vocab_16e6.txt.gz */
    const char *prompt;        /* --prompt */
    const char *negative;      /* --negative-prompt ("" = the unconditional prompt) */
    const char *prompts;       /* --prompts FILE */
    const char *out;           /* -o PNG (with --prompts: a directory) */
    const char *init_noise;    /* --init-noise F.safetensors (tensor noise) */
    const char *init_image;    /* --init-image PNG */
    const char *mask;          /* --mask PNG (white = repaint) */
    const char *save_latent;   /* --save-latent F.safetensors (with --prompts: a directory) */
    int steps;                 /* --steps */
    double cfg_scale;          /* --cfg-scale */
    int has_cfg;
    LdmSamplerKind sampler;    /* --sampler */
    LdmSigmaKind schedule;     /* --schedule */
    int has_schedule;
    LdmSigmaKind implied_schedule; /* the schedule a webui sampler name implies ("DPM++ 2M Karras") */
    int has_implied_schedule;
    double rho;                /* --rho (karras, polyexponential) */
    int has_rho;
    double gamma;              /* --gamma (tcd) */
    int has_gamma;
    LdmNoiseSamplerKind noise_sampler; /* --noise-sampler (dpmpp_sde, dpmpp_2m_sde) */
    int has_noise_sampler;
    uint64_t seed;             /* --seed */
    LdmRngKind rng;            /* --rng */
    double strength;           /* --strength */
    int has_strength;
    double eta;                /* --eta (DDIM) */
    int has_eta;
    int shard_k, shard_n;      /* --shard K/N */
    int has_shard;
    int H, W;                  /* -H/--height, -W/--width */
    int has_H, has_W;
    int quiet;                 /* --quiet */
    LdmPromptSyntax syntax;    /* --prompt-syntax webui|plain */
    int clip_skip;             /* --clip-skip N */
    int has_clip_skip;
    const char *embeddings;    /* --embeddings DIR */
    const char **loras;        /* --lora FILE[:MULT], in order */
    int n_loras;
    const char *lora_dir;      /* --lora-dir DIR (<lora:NAME:...> tags) */
    int pad_cond_uncond;       /* --pad-cond-uncond */
    const char *save_cond;     /* --save-cond F.safetensors (with --prompts: a directory) */
    const char *taesd;         /* --taesd FILE: decode with TAESD */
    const char *taesd_encoder; /* --taesd-encoder FILE: encode --init-image with TAESD */
    const char *preview;       /* --preview FILE.png */
    int preview_every;         /* --preview-every N (0: not given) */
    const char *preview_taesd; /* --preview-taesd FILE: TAESD decoder of the previews (default: --taesd's) */
} Options;

static void usage(FILE *fp, const char *argv0) {
    char sizes[1024];
    ldm_pipeline_size_list(ldm_pipeline_sizes, ldm_pipeline_n_sizes, sizes, sizeof sizes);
    fprintf(fp,
            "usage: %s --weights CKPT.safetensors|CKPT.ckpt [--vae FILE] [--vocab bpe_simple_vocab_16e6.txt.gz]\n"
            "          (--prompt TEXT | --prompts FILE [--shard K/N]) -o OUT\n"
            "          [--negative-prompt TEXT] [--steps N] [--cfg-scale S]\n"
            "          [--sampler NAME] [--schedule NAME] [--eta E] [--rho R] [--gamma G]\n"
            "          [--noise-sampler brownian|randn]\n"
            "          [--seed N] [--rng cpu|cuda] [--init-noise F.safetensors]\n"
            "          [--init-image PNG [--strength S] [--mask PNG]] [--save-latent F] [--compute f32|bf16] [--quiet]\n"
            "          [-H PIXELS] [-W PIXELS] [--prompt-syntax webui|plain] [--clip-skip N]\n"
            "          [--embeddings DIR] [--lora FILE[:MULT]]... [--lora-dir DIR] [--pad-cond-uncond]\n"
            "          [--save-cond F] [--taesd FILE] [--taesd-encoder FILE] [--preview-every N --preview PNG]\n"
            "          [--preview-taesd FILE]\n"
            "\n"
            "Text to image for %s.\n"
            "Sizes (height x width): %s.\n"
            "\n"
            "  --weights CKPT      SD v1.x single-file checkpoint (F32, F16 or BF16), checked tensor by tensor:\n"
            "                      safetensors, or a PyTorch .ckpt (read without running its pickle)\n"
            "  --vae FILE          the autoencoder's weights from FILE instead (safetensors or .ckpt, e.g.\n"
            "                      vae-ft-mse-840000-ema-pruned; keys with or without first_stage_model.)\n"
            "  --vocab FILE        another copy of the CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz); by\n"
            "                      default the one compiled into this program (openai/CLIP's, MIT licence)\n"
            "  --prompt TEXT       what to draw\n"
            "  --negative-prompt T the unconditional prompt of classifier-free guidance (default \"\")\n"
            "  --prompts FILE      one prompt per line (blank lines skipped), weights loaded once; OUT (and\n"
            "                      --save-latent) are then directories, images named <line>-<seed>.png,\n"
            "                      line L (1-based) drawn with seed N + L - 1. A line starting with --\n"
            "                      holds options, as in the webui's prompts from file: --prompt TEXT...\n"
            "                      [--negative_prompt TEXT...] [--height N] [--width N] [--seed N]\n"
            "                      [--steps N] [--cfg_scale S]\n"
            "  --shard K/N         only the lines whose 0-based index i has i %% N == K (0 <= K < N)\n"
            "  -o, --output OUT    the PNG to write (8-bit RGB)\n"
            "  -H, --height N      image height in pixels, -W, --width N its width: one of the sizes above\n"
            "                      (default: the first; one flag alone keeps the default's other side)\n"
            "  --steps N           sampling steps (default 20)\n"
            "  --cfg-scale S       classifier-free guidance scale (default 7.5, and 1 for lcm and tcd;\n"
            "                      1 = no guidance: one UNet evaluation per step)\n"
            "  --sampler NAME      ddim (default), plms (CompVis); euler, euler_a, heun, dpm2, dpmpp_2s_a,\n"
            "                      dpmpp_2m, dpmpp_sde, dpmpp_2m_sde (k-diffusion); lcm, tcd, uni_pc\n"
            "                      (diffusers, txt2img only); the webui's names too (\"Euler a\",\n"
            "                      \"DPM++ 2M SDE\", \"DPM++ 2M Karras\" = dpmpp_2m + karras schedule, ...)\n"
            "  --schedule NAME     noise levels of the k-diffusion samplers: discrete (default), karras,\n"
            "                      exponential, polyexponential, ays (Align Your Steps, SD v1)\n"
            "  --rho R             karras (default 7) and polyexponential (default 1) schedule exponent, > 0\n"
            "  --eta E             DDIM eta (default 0: deterministic)\n"
            "  --gamma G           tcd: stochasticity in [0, 1] (default 0.3; 0 = deterministic)\n"
            "  --noise-sampler N   dpmpp_sde, dpmpp_2m_sde: brownian (default: torchsde's Brownian tree from\n"
            "                      the seed, as k-diffusion and ComfyUI) or randn (plain draws continuing\n"
            "                      the generator, as stable-diffusion.cpp)\n"
            "  --seed N            torch.manual_seed(N) for all noise (default 0)\n"
            "  --rng cpu|cuda      draw noise as torch does on the CPU (default, the CompVis scripts) or on\n"
            "                      a CUDA GPU (the common SD UIs); no GPU is used either way\n"
            "  --init-noise F      start from tensor 'noise' of F (latent shape) instead of the seed's x_T\n"
            "  --init-image PNG    img2img: start from this image, of the chosen size\n"
            "  --strength S        img2img: how much to change it, 0 < S <= 1 (default 0.75; 1 for\n"
            "                      inpainting models)\n"
            "  --mask PNG          inpainting: repaint where the mask is white, keep where it is black\n"
            "  --save-latent F     also write the final latent (tensor 'latent') and the initial noise\n"
            "                      (tensor 'noise') to F.safetensors\n"
            "  --compute f32|bf16  f32 (default), or the GEMM kernel's products (linear layers, im2col and\n"
            "                      pointwise convolutions) in bfloat16 with float32 sums, on CPUs with\n"
            "                      AVX-512 BF16; Winograd, attention and the rest stay f32\n"
            "  --prompt-syntax S   webui (default): the AUTOMATIC1111 syntax, (word:1.3), [word], BREAK,\n"
            "                      <lora:NAME:MULT> tags, prompts longer than 75 tokens in 75-token chunks\n"
            "                      (up to the chunks the UNet was compiled for); plain: the text as the\n"
            "                      CompVis scripts tokenise it (cut at 75 tokens)\n"
            "  --clip-skip N       1 = the text encoder's last layer (default), 2 = the next to last, ...\n"
            "                      (the webui's CLIP skip; the final LayerNorm still applies)\n"
            "  --embeddings DIR    textual-inversion embeddings: every DIR/*.safetensors; a prompt word equal\n"
            "                      to a file's name (without .safetensors) is replaced by its vectors\n"
            "  --lora FILE[:MULT]  merge a kohya LoRA/LoCon into the weights (MULT default 1; repeatable)\n"
            "  --lora-dir DIR      where <lora:NAME:MULT> tags of the prompt find NAME.safetensors\n"
            "  --pad-cond-uncond   prompt and negative prompt of different chunk counts: pad the shorter with\n"
            "                      the empty prompt's conditioning and run one UNet batch (the webui option);\n"
            "                      default: two UNet calls per step, each over its own tokens\n"
            "  --save-cond F       also write the conditioning (tensors cond, uncond, and with\n"
            "                      --pad-cond-uncond empty_cond, cond_padded, uncond_padded) to F.safetensors\n"
            "  --taesd FILE        decode with TAESD, the tiny autoencoder, instead of the VAE decoder: its\n"
            "                      taesd_decoder.safetensors, or diffusers AutoencoderTiny's file (the latent\n"
            "                      is passed as the UNet gives it, unscaled)\n"
            "  --taesd-encoder F   img2img/inpainting: encode the image with TAESD (taesd_encoder.safetensors,\n"
            "                      or diffusers AutoencoderTiny's file) instead of the VAE encoder\n"
            "  --preview-every N   with --preview PNG: every N steps write a TAESD decode of the current\n"
            "                      prediction of the final image to PNG (replaced atomically); the TAESD\n"
            "                      decoder of --taesd, or of --preview-taesd FILE to keep the VAE decoder\n"
            "                      for the final image\n"
            "  --quiet             no progress or timing output\n"
            "  LDM_PROFILE=1       (environment) print per-node kernel times at the end\n",
            argv0, CFG.banner, sizes);
}

/* Is a the flag `name` ("--name", or "--name=value" for long names)? */
static int is_flag(const char *a, const char *name) {
    size_t k = strlen(name);
    return strncmp(a, name, k) == 0 && (a[k] == 0 || (a[k] == '=' && name[1] == '-'));
}

/* The flags that take a value. */
static const char *const value_flags[] = {
    "--weights", "--vae", "--vocab", "--prompt", "--negative-prompt", "--prompts", "-o", "--output", "--init-noise",
    "--init-image", "--mask", "--save-latent", "--steps", "--cfg-scale", "--sampler", "--schedule", "--eta",
    "--rho", "--gamma", "--noise-sampler",
    "--seed", "--rng", "--strength", "--shard", "--compute", "-H", "--height", "-W", "--width", "--prompt-syntax",
    "--clip-skip", "--embeddings", "--lora", "--lora-dir", "--save-cond", "--taesd", "--taesd-encoder", "--preview",
    "--preview-every", "--preview-taesd", NULL,
};

/* 0, 1 for --help, or -1 (ldm_fail) on bad usage. */
static int parse_args(int argc, char **argv, Options *o) {
    memset(o, 0, sizeof *o);
    o->negative = "";
    o->steps = 20;
    o->cfg_scale = 7.5;
    o->sampler = LDM_SAMPLER_DDIM;
    o->schedule = LDM_SIGMAS_DISCRETE;
    o->rng = LDM_RNG_CPU;
    o->shard_n = 1;
    o->clip_skip = 1;
    o->syntax = LDM_SYNTAX_WEBUI;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *f = NULL, *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            o->quiet = 1;
            continue;
        }
        if (!strcmp(a, "--pad-cond-uncond")) {
            o->pad_cond_uncond = 1;
            continue;
        }
        for (int k = 0; value_flags[k] && !f; k++)
            if (is_flag(a, value_flags[k])) f = value_flags[k];
        if (!f) {
            if (a[0] == '-') return ldm_fail("unknown option '%s'", a);
            return ldm_fail("unexpected argument '%s' (a prompt goes after --prompt, in quotes)", a);
        }
        if (a[strlen(f)] == '=') v = a + strlen(f) + 1;
        else if (i + 1 < argc) v = argv[++i];
        else return ldm_fail("%s: expected a value after it", f);

        if (!strcmp(f, "--weights")) o->weights = v;
        else if (!strcmp(f, "--vae")) o->vae = v;
        else if (!strcmp(f, "--vocab")) o->vocab = v;
        else if (!strcmp(f, "--prompt")) o->prompt = v;
        else if (!strcmp(f, "--negative-prompt")) o->negative = v;
        else if (!strcmp(f, "--prompts")) o->prompts = v;
        else if (!strcmp(f, "-o") || !strcmp(f, "--output")) o->out = v;
        else if (!strcmp(f, "--init-noise")) o->init_noise = v;
        else if (!strcmp(f, "--init-image")) o->init_image = v;
        else if (!strcmp(f, "--mask")) o->mask = v;
        else if (!strcmp(f, "--save-latent")) o->save_latent = v;
        else if (!strcmp(f, "--steps")) {
            if (ldm_parse_int(f, v, 1, CFG.timesteps, &o->steps)) return -1;
        } else if (!strcmp(f, "--cfg-scale")) {
            if (ldm_parse_double(f, v, -1e4, 1e4, &o->cfg_scale)) return -1;
            o->has_cfg = 1;
        } else if (!strcmp(f, "--sampler")) {
            int implied = 0;
            LdmSigmaKind ik = LDM_SIGMAS_DISCRETE;
            if (ldm_sampler_parse_ex(v, &o->sampler, &implied, &ik)) return ldm_fail("--sampler: %s", ldm_last_error());
            o->has_implied_schedule = implied;
            o->implied_schedule = ik;
        } else if (!strcmp(f, "--schedule")) {
            if (ldm_sigma_kind_parse(v, &o->schedule)) return ldm_fail("--schedule: %s", ldm_last_error());
            o->has_schedule = 1;
        } else if (!strcmp(f, "--rho")) {
            if (ldm_parse_double(f, v, -1e300, 1e300, &o->rho) || !(o->rho > 0.0))
                return ldm_fail("--rho: expected a number R > 0, got '%s'", v);
            o->has_rho = 1;
        } else if (!strcmp(f, "--gamma")) {
            if (ldm_parse_double(f, v, 0, 1, &o->gamma))
                return ldm_fail("--gamma: expected a number from 0 to 1, got '%s'", v);
            o->has_gamma = 1;
        } else if (!strcmp(f, "--noise-sampler")) {
            if (ldm_noise_sampler_parse(v, &o->noise_sampler))
                return ldm_fail("--noise-sampler: %s", ldm_last_error());
            o->has_noise_sampler = 1;
        } else if (!strcmp(f, "--eta")) {
            if (ldm_parse_double(f, v, 0, 1e3, &o->eta)) return -1;
            o->has_eta = 1;
        } else if (!strcmp(f, "--seed")) {
            if (ldm_parse_u64(f, v, &o->seed)) return -1;
        } else if (!strcmp(f, "--rng")) {
            if (ldm_rng_parse(v, &o->rng)) return -1;
        } else if (!strcmp(f, "--strength")) {
            if (ldm_parse_double(f, v, 0, 1, &o->strength) || !(o->strength > 0))
                return ldm_fail("--strength: expected a number S with 0 < S <= 1, got '%s'", v);
            o->has_strength = 1;
        } else if (!strcmp(f, "--compute")) {
            if (ldm_set_compute(v)) return -1;
        } else if (!strcmp(f, "--shard")) {
            if (ldm_shard_parse(v, &o->shard_k, &o->shard_n)) return -1;
            o->has_shard = 1;
        } else if (!strcmp(f, "-H") || !strcmp(f, "--height")) {
            if (ldm_parse_int(f, v, 1, 65536, &o->H)) return -1;
            o->has_H = 1;
        } else if (!strcmp(f, "-W") || !strcmp(f, "--width")) {
            if (ldm_parse_int(f, v, 1, 65536, &o->W)) return -1;
            o->has_W = 1;
        } else if (!strcmp(f, "--prompt-syntax")) {
            if (ldm_prompt_syntax_parse(v, &o->syntax)) return -1;
        } else if (!strcmp(f, "--clip-skip")) {
            if (ldm_parse_int(f, v, 1, 64, &o->clip_skip)) return -1;
            o->has_clip_skip = 1;
        } else if (!strcmp(f, "--embeddings")) {
            o->embeddings = v;
        } else if (!strcmp(f, "--lora")) {
            o->loras = ldm_xrealloc(o->loras, (size_t)(o->n_loras + 1) * sizeof *o->loras);
            o->loras[o->n_loras++] = v;
        } else if (!strcmp(f, "--lora-dir")) {
            o->lora_dir = v;
        } else if (!strcmp(f, "--save-cond")) {
            o->save_cond = v;
        } else if (!strcmp(f, "--taesd")) {
            o->taesd = v;
        } else if (!strcmp(f, "--taesd-encoder")) {
            o->taesd_encoder = v;
        } else if (!strcmp(f, "--preview-taesd")) {
            o->preview_taesd = v;
        } else if (!strcmp(f, "--preview")) {
            o->preview = v;
        } else if (!strcmp(f, "--preview-every")) {
            if (ldm_parse_int(f, v, 1, 100000, &o->preview_every)) return -1;
        }
    }
    /* a webui name such as "DPM++ 2M Karras" chose the schedule too */
    if (o->has_implied_schedule) {
        if (o->has_schedule && o->schedule != o->implied_schedule)
            return ldm_fail("--sampler implies the %s schedule, but --schedule is %s",
                            ldm_sigma_kind_name(o->implied_schedule), ldm_sigma_kind_name(o->schedule));
        o->schedule = o->implied_schedule;
        o->has_schedule = 1;
    }
    /* LCM and TCD run unguided unless a scale is given (LCM-LoRA / TCD-LoRA usage) */
    if ((o->sampler == LDM_SAMPLER_LCM || o->sampler == LDM_SAMPLER_TCD) && !o->has_cfg) o->cfg_scale = 1.0;
    if (!o->has_gamma) o->gamma = 0.3;
    return 0;
}

/* Cross-flag checks that need no file. */
static int check_options(const Options *o) {
    if (!o->weights) return ldm_fail("missing --weights CKPT.safetensors");
    if (!o->prompt && !o->prompts) return ldm_fail("missing --prompt TEXT (or --prompts FILE)");
    if (o->prompt && o->prompts) return ldm_fail("--prompt and --prompts exclude each other");
    if (o->has_shard && !o->prompts) return ldm_fail("--shard needs --prompts FILE");
    if (!o->out) return ldm_fail(o->prompts ? "missing -o DIR (where the images go)" : "missing -o OUT.png");
    if (o->mask && !o->init_image) return ldm_fail("--mask needs --init-image (the image to inpaint)");
    if (o->has_strength && !o->init_image) return ldm_fail("--strength needs --init-image");
    if (o->has_eta && o->sampler != LDM_SAMPLER_DDIM)
        return ldm_fail("--eta applies to the ddim sampler only (not %s)", ldm_sampler_name(o->sampler));
    if (o->syntax == LDM_SYNTAX_PLAIN && (o->embeddings || o->lora_dir))
        return ldm_fail("%s applies to --prompt-syntax webui (plain prompts have no embeddings or <lora:> tags)",
                        o->embeddings ? "--embeddings" : "--lora-dir");
    if (o->preview && !o->preview_every) return ldm_fail("--preview needs --preview-every N (write it every N steps)");
    if (o->preview_every && !o->preview) return ldm_fail("--preview-every needs --preview FILE.png (where to write)");
    if (o->preview && !o->taesd && !o->preview_taesd)
        return ldm_fail("--preview needs a TAESD decoder: --taesd FILE, or --preview-taesd FILE for the previews only");
    if (o->preview_taesd && !o->preview) return ldm_fail("--preview-taesd needs --preview FILE.png");
    if (o->taesd_encoder && !o->init_image)
        return ldm_fail("--taesd-encoder needs --init-image (it encodes that image)");
    if (o->has_schedule && ldm_sampler_family(o->sampler) != 1)
        return ldm_fail("--schedule applies to the k-diffusion samplers (euler, euler_a, heun, dpm2, dpmpp_2s_a, "
                        "dpmpp_2m, dpmpp_sde, dpmpp_2m_sde); %s uses its own timesteps",
                        ldm_sampler_name(o->sampler));
    if (o->has_rho && o->schedule != LDM_SIGMAS_KARRAS && o->schedule != LDM_SIGMAS_POLYEXPONENTIAL)
        return ldm_fail("--rho applies to the karras and polyexponential schedules (not %s)",
                        ldm_sigma_kind_name(o->schedule));
    if (o->has_gamma && o->sampler != LDM_SAMPLER_TCD)
        return ldm_fail("--gamma applies to the tcd sampler only (not %s)", ldm_sampler_name(o->sampler));
    if (o->has_noise_sampler && o->sampler != LDM_SAMPLER_DPMPP_SDE && o->sampler != LDM_SAMPLER_DPMPP_2M_SDE)
        return ldm_fail("--noise-sampler applies to dpmpp_sde and dpmpp_2m_sde only (not %s)",
                        ldm_sampler_name(o->sampler));
    if (o->init_image && ldm_sampler_family(o->sampler) == 2)
        return ldm_fail("--sampler %s: img2img and inpainting are not defined for it (its reference is the diffusers "
                        "txt2img loop); use a CompVis or k-diffusion sampler (ddim, euler, dpmpp_2m, ...)",
                        ldm_sampler_name(o->sampler));
    return 0;
}

/* ----------------------------------------------------------------------------
 * The run
 * ------------------------------------------------------------------------- */

/* A LoRA in use: its file, multipliers and the opened factors. */
typedef struct ActiveLora {
    char *path;
    char *name;               /* for messages and the record: the file's stem */
    double te, unet;          /* text-encoder and UNet multipliers */
    LdmLora *l;
} ActiveLora;

typedef struct App {
    Options o;
    const char *argv0;
    int hybrid;               /* conditioning_key "hybrid": c_concat = [mask, masked-image latent] */
    ClipTokenizer *tok;
    LdmNets nets;
    LdmSchedule sched;
    LdmTimes times;
    LdmProgressMode pmode;
    double scale;             /* scale_factor */
    int C, h, w;              /* latent channels and size */
    int64_t n_lat;            /* C * h * w */
    int ctx_len, ctx_dim;     /* text encoder positions, width */
    float *init_noise;        /* (n_lat) --init-noise, or NULL */
    float *image;             /* (3, H, W) --init-image in [-1, 1], or NULL */
    float *mask_px;           /* (H, W) --mask in [0, 1], white = repaint, or NULL */
    float *init_latent;       /* (n_lat) scale * encoder(image).mean, or NULL */
    float *known;             /* (h * w) 1 = keep (latent blending), or NULL */
    float *concat;            /* (concat_ch, h, w) hybrid c_concat, or NULL */
    int concat_ch;
    double strength;          /* img2img strength actually used */
    int n_failed;             /* --prompts: lines that failed */
    int size;                 /* the size in use: index in ldm_pipeline_sizes */
    int run_size;             /* the size -H/-W chose (a --prompts line may use another) */
    LdmEmbeddings emb;        /* --embeddings */
    LdmCond uc;               /* the negative prompt's conditioning ... */
    char *uc_prompt;          /* ... for this text (NULL: none yet) */
    int uc_lora_gen;          /* ... under this LoRA set */
    LdmCond empty;            /* encode(""), no LoRA, at load (--pad-cond-uncond) */
    ActiveLora *act;          /* the LoRAs merged into the weights, in activation order */
    int n_act;
    int lora_gen;             /* changes with every new LoRA set */
    const char *const *weight_names; /* every network's weight names (LoRA key matching; a->nets owns them) */
    int n_weight_names;
    LdmNets taesd_dec;        /* --taesd: TAESD's decoder of every size (size k at k) */
    LdmNets taesd_enc;        /* --taesd-encoder: its encoder of every size */
    LdmNets taesd_prev;       /* --preview-taesd: the previews' decoder (else they use taesd_dec) */
} App;

/* Network `net` of the size in use, and its index in a->nets. */
static const LdmModel *net_model(const App *a, int net) { return ldm_pipeline_sizes[a->size].models[net]; }
static int net_index(const App *a, int net) { return a->size * N_NETS + net; }

/* Make size k the one in use (CFG, latent shape, networks). */
static void use_size(App *a, int k) {
    a->size = k;
    g_cfg = ldm_pipeline_sizes[k].config;
    a->h = CFG.latent_h;
    a->w = CFG.latent_w;
    a->n_lat = (int64_t)a->C * a->h * a->w;
}

/* Was TAESD compiled in (make txt2img ... TAESD=1)? */
static int has_taesd(void) { return ldm_pipeline_sizes[0].n_models == N_NETS_TAESD; }

/* TAESD's networks of the size in use: decoder latent [1, C, h, w] ->
 * image [1, 3, H, W], encoder image01 -> latent. */
static int check_taesd_models(const App *a) {
    const LdmModel *dec = net_model(a, NET_TAESD_DEC), *enc = net_model(a, NET_TAESD_ENC);
    int il = ldm_model_input(dec, "latent"), oi = ldm_model_output(dec, "image");
    int ii = ldm_model_input(enc, "image01"), ol = ldm_model_output(enc, "latent");
    if (il < 0 || oi < 0 || ii < 0 || ol < 0)
        return ldm_fail("internal: the linked TAESD networks do not have the expected inputs and outputs");
    if (ldm_numel(&dec->inputs[il]) != a->n_lat || ldm_numel(&dec->outputs[oi]) != 3LL * CFG.H * CFG.W ||
        ldm_numel(&enc->inputs[ii]) != 3LL * CFG.H * CFG.W || ldm_numel(&enc->outputs[ol]) != a->n_lat)
        return ldm_fail("this executable's TAESD (4 latent channels, 8x downsampling) does not fit %s at %dx%d "
                        "(latent %dx%dx%d): build it with TAESD=0", CFG.config_path, CFG.H, CFG.W, a->C, a->h, a->w);
    return 0;
}

/* Check that the generated networks of the size in use fit together and
 * fit the constants. */
static int check_size_models(const App *a) {
    int n_nets = ldm_pipeline_sizes[a->size].n_models;
    if (n_nets != N_NETS && n_nets != N_NETS_TAESD)
        return ldm_fail("internal: the size table lists %d networks for %dx%d, expected %d (or %d with TAESD)",
                        n_nets, CFG.H, CFG.W, N_NETS, N_NETS_TAESD);
    if (n_nets != ldm_pipeline_sizes[0].n_models)
        return ldm_fail("internal: the sizes of the table list different networks");
    if (n_nets == N_NETS_TAESD && check_taesd_models(a) != 0) return -1;
    const LdmModel *clip = net_model(a, NET_CLIP), *unet = net_model(a, NET_UNET), *dec = net_model(a, NET_DEC),
                   *enc = net_model(a, NET_ENC);
    int it = ldm_model_input(clip, "tokens"), oh = ldm_model_output(clip, "hidden");
    int iz = ldm_model_input(dec, "z"), oi = ldm_model_output(dec, "image"), ii = ldm_model_input(enc, "image");
    int om = ldm_model_output(enc, "moments") >= 0 ? ldm_model_output(enc, "moments") : ldm_model_output(enc, "h");
    if (it < 0 || oh < 0 || iz < 0 || oi < 0 || ii < 0 || om < 0)
        return ldm_fail("internal: the linked networks do not have the expected inputs and outputs");
    const LdmTensorInfo *tok = &clip->inputs[it], *hid = &clip->outputs[oh];
    if (tok->ndim != 2 || tok->shape[0] < 1 || tok->shape[1] != a->ctx_len || hid->ndim != 3 ||
        hid->shape[2] != a->ctx_dim || ldm_numel(&dec->inputs[iz]) != a->n_lat ||
        ldm_numel(&dec->outputs[oi]) != 3LL * CFG.H * CFG.W || ldm_numel(&enc->inputs[ii]) != 3LL * CFG.H * CFG.W ||
        ldm_model_input(unet, "context") < 0)
        return ldm_fail("internal: the linked networks were compiled for another config or resolution than %s",
                        CFG.banner);
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

/* The text encoder of the size in use, with the run's settings. */
static LdmTextEncoder text_encoder(App *a) {
    static char hint[1200];
    const LdmModel *unet = net_model(a, NET_UNET);
    int ic = ldm_model_input(unet, "context");
    int64_t tmax = ic >= 0 && unet->inputs[ic].ndim == 3 ? unet->inputs[ic].shape[1] : a->ctx_len;
    snprintf(hint, sizeof hint, "build it for more with make txt2img CONFIG=%s ... CHUNKS=N", CFG.config_path);
    LdmTextEncoder te = {
        .nets = &a->nets,
        .model = net_index(a, NET_CLIP),
        .tok = a->tok,
        .syntax = a->o.syntax,
        .clip_skip = a->o.clip_skip,
        .emb = a->o.embeddings ? &a->emb : NULL,
        .max_chunks = (int)(tmax / a->ctx_len),
        .chunks_hint = hint,
    };
    return te;
}

/* prompt text (tags removed) -> conditioning */
static int encode_text(App *a, const char *prompt, LdmCond *c) {
    LdmTextEncoder te = text_encoder(a);
    return ldm_text_encode(&te, prompt, c);
}

/* ----------------------------------------------------------------------------
 * LoRAs and prompts
 * ------------------------------------------------------------------------- */

/* A LoRA a prompt asks for. */
typedef struct LoraWant {
    char *path;
    char *name;
    double te, unet;
} LoraWant;

static void wants_free(LoraWant *w, int n) {
    for (int i = 0; i < n; i++) {
        free(w[i].path);
        free(w[i].name);
    }
    free(w);
}

/* --lora FILE[:MULT] (ldm_lora_spec_parse) */
static int parse_lora_spec(const char *spec, LoraWant *w) {
    memset(w, 0, sizeof *w);
    if (ldm_lora_spec_parse(spec, &w->path, &w->te) != 0) return -1;
    w->unet = w->te;
    w->name = ldm_path_stem(w->path);
    return 0;
}

/* The prompt without its extra-network tags, and the LoRAs it asks for:
 * the --lora files, then its <lora:NAME:...> tags resolved in --lora-dir
 * (extra_networks.parse_prompt; the webui reads tags in the prompt only,
 * a tag in the negative prompt is text). Plain syntax: no tags. */
static int prompt_loras(App *a, const char *prompt, char **text, LoraWant **want, int *n_want) {
    const Options *o = &a->o;
    *text = NULL;
    *want = ldm_xcalloc((size_t)o->n_loras + 1, sizeof **want);
    *n_want = 0;
    for (int i = 0; i < o->n_loras; i++)
        if (parse_lora_spec(o->loras[i], &(*want)[(*n_want)++]) != 0) goto fail;
    if (o->syntax == LDM_SYNTAX_PLAIN) {
        *text = ldm_xstrdup(prompt);
        return 0;
    }
    PromptTags tags;
    if (prompt_extract_tags(prompt, &tags) != 0) goto fail;
    int rc = 0;
    for (int i = 0; i < tags.n_tags && rc == 0; i++) {
        const PromptTag *t = &tags.tags[i];
        if (strcmp(t->type, "lora") != 0) {
            /* the webui: "Skipping unknown extra network" */
            fprintf(stderr, "%s: warning: <%s:...>: unknown extra network type '%s' (only lora): ignored\n", a->argv0,
                    t->type, t->type);
            continue;
        }
        PromptLora pl;
        if (prompt_lora_params(t, &pl) != 0) {
            rc = -1;
            break;
        }
        if (!o->lora_dir) {
            rc = ldm_fail("the prompt has <lora:%s:...> but no --lora-dir DIR to find %s.safetensors in", pl.name,
                          pl.name);
            break;
        }
        char *path = ldm_xasprintf("%s/%s.safetensors", o->lora_dir, pl.name);
        if (access(path, R_OK) != 0) {
            rc = ldm_fail("<lora:%s:...>: no LoRA file %s (--lora-dir %s)", pl.name, path, o->lora_dir);
            free(path);
            break;
        }
        if (pl.dyn >= 0)
            fprintf(stderr, "%s: warning: <lora:%s:...>: dyn=%d applies to DyLoRA files only: ignored\n", a->argv0,
                    pl.name, pl.dyn);
        *want = ldm_xrealloc(*want, (size_t)(*n_want + 1) * sizeof **want);
        (*want)[(*n_want)++] = (LoraWant){path, ldm_xstrdup(pl.name), pl.te, pl.unet};
    }
    if (rc == 0) *text = ldm_xstrdup(tags.text);
    prompt_tags_free(&tags);
    if (rc == 0) return 0;
fail:
    wants_free(*want, *n_want);
    *want = NULL;
    *n_want = 0;
    return -1;
}

static void active_free(ActiveLora *act, int n) {
    for (int i = 0; i < n; i++) {
        free(act[i].path);
        free(act[i].name);
        ldm_lora_free(act[i].l);
    }
    free(act);
}

/* Make `want` the LoRA set merged into the weights. A new set is merged
 * when each network is next bound, from the checkpoint (nothing is
 * subtracted); the same set again costs nothing. */
static int use_loras(App *a, const LoraWant *want, int n) {
    int same = n == a->n_act;
    for (int i = 0; same && i < n; i++)
        same = !strcmp(want[i].path, a->act[i].path) && want[i].te == a->act[i].te && want[i].unet == a->act[i].unet;
    if (same) return 0;
    double t0 = ldm_now();
    ActiveLora *act = ldm_xcalloc((size_t)n + 1, sizeof *act);
    LdmLora **ls = ldm_xcalloc((size_t)n + 1, sizeof *ls);
    int rc = 0, k = 0;
    for (; k < n && rc == 0; k++) {
        act[k] = (ActiveLora){ldm_xstrdup(want[k].path), ldm_xstrdup(want[k].name), want[k].te, want[k].unet, NULL};
        rc = ldm_lora_open(&act[k].l, want[k].path, a->weight_names, a->n_weight_names, (float)want[k].te,
                           (float)want[k].unet);
        ls[k] = act[k].l;
        if (rc == 0 && ldm_lora_n_unmatched(act[k].l) > 0) {
            /* the webui ignores them silently; say so */
            int u = ldm_lora_n_unmatched(act[k].l), shown = u < LDM_LORA_KEEP_UNMATCHED ? u : LDM_LORA_KEEP_UNMATCHED;
            fprintf(stderr, "%s: warning: LoRA %s: %d of its modules match nothing in this model (ignored): ",
                    a->argv0, want[k].path, u);
            for (int j = 0; j < shown && j < 3; j++) fprintf(stderr, "%s%s", j ? ", " : "", ldm_lora_unmatched(act[k].l, j));
            fprintf(stderr, "%s\n", u > 3 ? ", ..." : "");
        }
    }
    if (rc == 0) rc = ldm_nets_set_loras(&a->nets, ls, n);
    free(ls);
    if (rc != 0) {
        active_free(act, k);
        return -1;
    }
    active_free(a->act, a->n_act);
    a->act = act;
    a->n_act = n;
    a->lora_gen++;
    ldm_times_add(&a->times, "load lora", ldm_now() - t0);
    return 0;
}

/* "tinylora:0.8, style:te=0.5:unet=1" (the active set), "" when none */
static char *lora_record(const App *a) {
    char *r = ldm_xstrdup("");
    for (int i = 0; i < a->n_act; i++) {
        const ActiveLora *l = &a->act[i];
        char *n = l->te == l->unet ? ldm_xasprintf("%s%s%s:%g", r, i ? ", " : "", l->name, l->te)
                                   : ldm_xasprintf("%s%s%s:te=%g:unet=%g", r, i ? ", " : "", l->name, l->te, l->unet);
        free(r);
        r = n;
    }
    return r;
}

/* "tinyemb, bad_hands" (the embeddings c and uc call), "" when none */
static char *embedding_record(const App *a, const LdmCond *c, const LdmCond *uc) {
    char *r = ldm_xstrdup("");
    const LdmCond *cs[2] = {c, uc};
    int *seen = ldm_xcalloc((size_t)a->emb.n + 1, sizeof *seen);
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < cs[h]->n_used; i++) {
            int e = cs[h]->used[i];
            if (seen[e]++) continue;
            char *n = ldm_xasprintf("%s%s%s", r, *r ? ", " : "", a->emb.e[e].name);
            free(r);
            r = n;
        }
    free(seen);
    return r;
}

/* uc = the negative prompt's conditioning, unless a->uc holds it already
 * (same text, same LoRA set) */
static int encode_negative(App *a, const char *negative) {
    if (a->uc_prompt && !strcmp(a->uc_prompt, negative) && a->uc_lora_gen == a->lora_gen) return 0;
    double t0 = ldm_now();
    free(a->uc_prompt);
    a->uc_prompt = NULL;
    ldm_cond_free(&a->uc);
    if (encode_text(a, negative, &a->uc) != 0) return ldm_fail("negative prompt: %s", ldm_last_error());
    a->uc_prompt = ldm_xstrdup(negative);
    a->uc_lora_gen = a->lora_gen;
    ldm_times_add(&a->times, "text encode", ldm_now() - t0);
    return 0;
}

/* A copy of c with `chunks` chunks, the missing ones the empty prompt's */
static void cond_padded(const LdmCond *c, int chunks, const LdmCond *empty, LdmCond *out) {
    memset(out, 0, sizeof *out);
    out->n_chunks = c->n_chunks;
    out->width = c->width;
    size_t bytes = (size_t)c->n_chunks * (PROMPT_CHUNK_LENGTH + 2) * c->width * sizeof(float);
    out->z = ldm_aligned_alloc(bytes + 4);
    memcpy(out->z, c->z, bytes);
    LdmCond other = {.n_chunks = chunks, .width = c->width};
    ldm_cond_pad(out, &other, empty);
}

/* --save-cond: the conditioning tensors, named as the goldens
 * (goldens/sd1-adapters txt2img_combo.io) */
static int save_cond_file(const App *a, const char *path, const LdmCond *c, const LdmCond *uc, const LdmCond *cp,
                          const LdmCond *up) {
    StWriter *w = st_writer_new();
    const LdmCond *t[5] = {c, uc, a->o.pad_cond_uncond ? &a->empty : NULL, cp, up};
    const char *names[5] = {"cond", "uncond", "empty_cond", "cond_padded", "uncond_padded"};
    for (int i = 0; i < 5; i++) {
        if (!t[i] || !t[i]->z) continue;
        int64_t shape[3] = {1, (int64_t)t[i]->n_chunks * (PROMPT_CHUNK_LENGTH + 2), t[i]->width};
        st_writer_add(w, names[i], ST_F32, 3, shape, t[i]->z);
    }
    int rc = st_writer_save(w, path);
    st_writer_free(w);
    return rc;
}

/* image (3, H, W) in [-1, 1] -> scale_factor * posterior mean (n_lat):
 * LatentDiffusion.get_first_stage_encoding(encode_first_stage(x)) with the
 * mode of the posterior instead of a sample (reproducible, as the goldens). */
static int encode_image_taesd(App *a, const float *chw, float *latent);
static int encode_image(App *a, const float *chw, float *latent) {
    if (a->o.taesd_encoder) return encode_image_taesd(a, chw, latent);
    const LdmModel *enc = net_model(a, NET_ENC);
    int om = ldm_model_output(enc, "moments") >= 0 ? ldm_model_output(enc, "moments") : ldm_model_output(enc, "h");
    float *out = ldm_aligned_alloc((size_t)ldm_numel(&enc->outputs[om]) * sizeof(float));
    void **outs = ldm_xcalloc((size_t)enc->n_outputs, sizeof *outs);
    float **bufs = ldm_xcalloc((size_t)enc->n_outputs, sizeof *bufs);
    for (int i = 0; i < enc->n_outputs; i++)
        outs[i] = i == om ? out : (bufs[i] = ldm_aligned_alloc((size_t)ldm_numel(&enc->outputs[i]) * sizeof(float)));
    const void *in[1] = {chw};
    int rc = ldm_nets_run(&a->nets, net_index(a, NET_ENC), in, outs);
    if (rc == 0) {
        /* moments[:, :C] = mean (KL); the unquantised h (VQ) */
        float s = (float)a->scale;
        for (int64_t j = 0; j < a->n_lat; j++) latent[j] = s * out[j];
    }
    for (int i = 0; i < enc->n_outputs; i++) free(bufs[i]);
    free(bufs);
    free(outs);
    free(out);
    return rc;
}

/* TAESD: image (3, H, W) in [-1, 1] -> latent (n_lat) in UNet space, as is
 * (TAESD's scale factor is 1): diffusers AutoencoderTiny.encode, whose
 * EncoderTiny maps its input with (x + 1) / 2 first (taesd.py's encoder
 * takes [0, 1]). */
static int encode_image_taesd(App *a, const float *chw, float *latent) {
    const LdmModel *enc = net_model(a, NET_TAESD_ENC);
    int64_t n = 3LL * CFG.H * CFG.W;
    float *x = ldm_aligned_alloc((size_t)n * sizeof(float));
    for (int64_t j = 0; j < n; j++) x[j] = (chw[j] + 1.0f) / 2.0f;
    const void *in[1] = {x};
    void *out[1] = {latent};
    int rc = enc->n_outputs == 1 ? ldm_nets_run(&a->taesd_enc, a->size, in, out)
                                 : ldm_fail("internal: TAESD's encoder has %d outputs", enc->n_outputs);
    free(x);
    return rc;
}

/* TAESD (the decoder in s): latent (n_lat, UNet space, unscaled) -> image01
 * (3, H, W) = clamp(decoder(latent), 0, 1) (taesd.py's output is ~[0, 1]). */
static int decode_latent_taesd(App *a, LdmNets *s, const float *latent, float *image01) {
    const LdmModel *dec = net_model(a, NET_TAESD_DEC);
    if (dec->n_outputs != 1) return ldm_fail("internal: TAESD's decoder has %d outputs", dec->n_outputs);
    const void *in[1] = {latent};
    void *out[1] = {image01};
    if (ldm_nets_run(s, a->size, in, out) != 0) return -1;
    int64_t n = 3LL * CFG.H * CFG.W;
    for (int64_t j = 0; j < n; j++) image01[j] = image01[j] < 0.0f ? 0.0f : image01[j] > 1.0f ? 1.0f : image01[j];
    return 0;
}

/* latent -> image01 (3, H, W): decode_first_stage = decoder(1. / scale_factor * z),
 * or TAESD's decoder with --taesd */
static int decode_latent(App *a, const float *latent, float *image01) {
    if (a->o.taesd) {
        /* as the VAE decoder's run would: the UNet's weights and the rest
         * of its activations leave memory before the decode */
        ldm_nets_release(&a->nets, net_model(a, NET_TAESD_DEC)->arena_bytes);
        return decode_latent_taesd(a, &a->taesd_dec, latent, image01);
    }
    const LdmModel *dec = net_model(a, NET_DEC);
    int oi = ldm_model_output(dec, "image");
    float *z = ldm_aligned_alloc((size_t)a->n_lat * sizeof(float));
    float inv = CFG.scale_by_std ? 1.0f / (float)a->scale : (float)(1.0 / a->scale);
    for (int64_t j = 0; j < a->n_lat; j++) z[j] = inv * latent[j];
    void **outs = ldm_xcalloc((size_t)dec->n_outputs, sizeof *outs);
    for (int i = 0; i < dec->n_outputs; i++)
        outs[i] = i == oi ? image01 : ldm_aligned_alloc((size_t)ldm_numel(&dec->outputs[i]) * sizeof(float));
    const void *in[1] = {z};
    int rc = ldm_nets_run(&a->nets, net_index(a, NET_DEC), in, outs);
    if (rc == 0) ldm_image_to01(image01, 3LL * CFG.H * CFG.W, image01);
    for (int i = 0; i < dec->n_outputs; i++)
        if (i != oi) free(outs[i]);
    free(outs);
    free(z);
    return rc;
}

/* Everything that depends on the init image and the mask, once per run. */
static int prepare_images(App *a) {
    double t0 = ldm_now();
    int64_t plane = (int64_t)a->h * a->w;
    if (a->image && !a->hybrid) {
        a->init_latent = ldm_aligned_alloc((size_t)a->n_lat * sizeof(float));
        if (encode_image(a, a->image, a->init_latent) != 0) return -1;
        if (a->mask_px) {
            a->known = ldm_xmalloc((size_t)plane * sizeof(float));
            if (ldm_mask_to_latent(a->mask_px, CFG.W, CFG.H, CFG.f, a->known) != 0) return -1;
        }
    }
    if (a->hybrid) {
        /* runwayml make_batch_sd + inpaint: mask binarised at 0.5 (1 = repaint),
         * masked_image = image * (mask < 0.5); c_concat = [interpolate(mask,
         * latent size) (nearest: pixel (f*y, f*x)), scale * encode(masked_image)].
         * Without --mask everything is repainted (mask 1, masked image 0),
         * without --init-image the masked image is 0 too. */
        int64_t npx = (int64_t)CFG.H * CFG.W;
        float *masked = ldm_aligned_alloc((size_t)(3 * npx) * sizeof(float));
        for (int c = 0; c < 3; c++)
            for (int64_t p = 0; p < npx; p++) {
                float m = a->mask_px ? (a->mask_px[p] < 0.5f ? 0.0f : 1.0f) : 1.0f;
                float keep = m < 0.5f ? 1.0f : 0.0f;
                masked[c * npx + p] = a->image ? a->image[c * npx + p] * keep : 0.0f;
            }
        a->concat = ldm_aligned_alloc((size_t)(a->concat_ch * plane) * sizeof(float));
        for (int y = 0; y < a->h; y++)
            for (int x = 0; x < a->w; x++) {
                int64_t p = (int64_t)y * CFG.f * CFG.W + (int64_t)x * CFG.f;
                a->concat[(int64_t)y * a->w + x] = a->mask_px ? (a->mask_px[p] < 0.5f ? 0.0f : 1.0f) : 1.0f;
            }
        int rc = encode_image(a, masked, a->concat + plane);
        free(masked);
        if (rc != 0) return -1;
        if (a->image) {
            a->init_latent = ldm_aligned_alloc((size_t)a->n_lat * sizeof(float));
            if (encode_image(a, a->image, a->init_latent) != 0) return -1;
        }
    }
    if (a->image || a->hybrid) ldm_times_add(&a->times, "image encode", ldm_now() - t0);
    return 0;
}

/* Sampler settings for the run (callbacks filled in by the caller). */
static void sampler_setup(const App *a, LdmSampler *p) {
    memset(p, 0, sizeof *p);
    p->kind = a->o.sampler;
    p->steps = a->o.steps;
    p->eta = a->o.eta;
    p->sigmas = a->o.schedule;
    p->rho = a->o.has_rho ? a->o.rho : 0.0;
    p->gamma = a->o.gamma;
    p->noise_sampler = a->o.noise_sampler;
    p->n = a->n_lat;
    p->init_latent = a->init_latent;
    p->strength = a->init_latent ? a->strength : 0.0;
    if (a->known) {
        p->mask = a->known;
        p->plane = (int64_t)a->h * a->w;
    }
}

/* LdmStepFn of --preview-every N --preview PNG: after every N-th step, the
 * TAESD decode of the step's x0 prediction (info->denoised) to PNG, written
 * atomically (a temporary file in its directory, renamed over it). */
static int preview_step(void *ctx, const LdmStepInfo *info) {
    App *a = ctx;
    if ((info->step + 1) % a->o.preview_every != 0) return 0;
    double t0 = ldm_now();
    float *img = ldm_aligned_alloc((size_t)3 * CFG.H * CFG.W * sizeof(float));
    LdmNets *s = a->o.preview_taesd ? &a->taesd_prev : &a->taesd_dec;
    int rc = decode_latent_taesd(a, s, info->denoised, img);
    if (rc == 0) rc = ldm_image_save(a->o.preview, img, CFG.W, CFG.H);
    free(img);
    if (rc != 0) return ldm_fail("--preview (step %d): %s", info->step + 1, ldm_last_error());
    ldm_times_add(&a->times, "preview", ldm_now() - t0);
    return 0;
}

/* One image: prompt -> png_path (and latent_path). */
static int make_image(App *a, const char *prompt, uint64_t seed, const char *png_path, const char *latent_path,
                      const char *cond_path, const char *label) {
    int rc = -1;
    int64_t n = a->n_lat;
    float *x = ldm_aligned_alloc((size_t)n * sizeof(float));
    float *noise = ldm_aligned_alloc((size_t)n * sizeof(float));
    float *img = ldm_aligned_alloc((size_t)3 * CFG.H * CFG.W * sizeof(float));
    LdmGuide g = {0};
    LdmCond c = {0}, cp = {0}, up = {0};
    char *text = NULL, *loras = NULL, *embs = NULL;
    LoraWant *want = NULL;
    int n_want = 0, cond_written = 0;

    /* the prompt's LoRAs (merged when each network is next bound), then
     * c = get_learned_conditioning(prompt), uc = ... (negative prompt) */
    if (prompt_loras(a, prompt, &text, &want, &n_want) != 0 || use_loras(a, want, n_want) != 0) goto done;
    /* At --cfg-scale 1 a UNet with a run-time batch makes only the
     * conditional call (ldm_guide_eps): the negative prompt is not used,
     * so it is not encoded either */
    const LdmModel *un = net_model(a, NET_UNET);
    int ix = ldm_model_input(un, "x");
    const int unguided = a->o.cfg_scale == 1.0 && ix >= 0 && un->inputs[ix].dyn[0] > 0;
    static const LdmCond none;
    if (!unguided && encode_negative(a, a->o.negative) != 0) goto done;
    const LdmCond *ucond = unguided ? &none : &a->uc;
    double t0 = ldm_now();
    if (encode_text(a, text, &c) != 0) {
        ldm_fail("prompt: %s", ldm_last_error());
        goto done;
    }
    ldm_times_add(&a->times, "text encode", ldm_now() - t0);
    const LdmCond *cu = &c, *uu = unguided ? &c : &a->uc;
    if (!unguided && a->o.pad_cond_uncond && c.n_chunks != a->uc.n_chunks) {
        /* CFGDenoiser.pad_cond_uncond: the shorter gets empty-prompt chunks */
        int k = c.n_chunks > a->uc.n_chunks ? c.n_chunks : a->uc.n_chunks;
        cond_padded(&c, k, &a->empty, &cp);
        cond_padded(&a->uc, k, &a->empty, &up);
        cu = &cp;
        uu = &up;
    }
    loras = lora_record(a);
    embs = embedding_record(a, &c, ucond);
    if (a->pmode != LDM_PROGRESS_QUIET) {
        char neg[96];
        if (unguided) snprintf(neg, sizeof neg, "no negative prompt (cfg 1: the conditional call alone)");
        else
            snprintf(neg, sizeof neg, "negative prompt %d chunk%s%s", ucond->n_chunks, ucond->n_chunks == 1 ? "" : "s",
                     cu->n_chunks != uu->n_chunks ? " (two UNet calls per step)"
                     : cu != &c                   ? " (padded with the empty prompt)"
                                                  : "");
        fprintf(stderr, "%s: %s: prompt %d chunk%s, %s, CLIP skip %d%s%s%s%s\n", a->argv0, label, c.n_chunks,
                c.n_chunks == 1 ? "" : "s", neg, a->o.clip_skip, *loras ? ", LoRA " : "", loras,
                *embs ? ", embeddings " : "", embs);
    }
    if (cond_path) {
        if (save_cond_file(a, cond_path, &c, unguided ? NULL : &a->uc, cu == &cp ? &cp : NULL, uu == &up ? &up : NULL) != 0)
            goto done;
        cond_written = 1;
    }

    /* torch.manual_seed(seed); x_T = torch.randn(shape). --init-noise
     * replaces the draw but the generator still advances past it, so later
     * draws (eta > 0, euler_a, inpainting) are those of the seed. */
    LdmNoise gen;
    ldm_noise_seed(&gen, a->o.rng, seed);
    ldm_noise_draw(&gen, x, n);
    if (a->init_noise) memcpy(x, a->init_noise, (size_t)n * sizeof(float));
    memcpy(noise, x, (size_t)n * sizeof(float));

    g.nets = &a->nets;
    g.unet = net_index(a, NET_UNET);
    g.batch = 1;
    g.sample_n = n;
    g.guided = 1;
    g.scale = a->o.cfg_scale;
    g.context = uu->z;
    g.context_c = cu->z;
    g.len_u = (int64_t)uu->n_chunks * a->ctx_len;
    g.len_c = (int64_t)cu->n_chunks * a->ctx_len;
    g.concat = a->concat;
    g.concat_channels = a->concat_ch;
    if (ldm_guide_init(&g) != 0) goto done;

    LdmSampler p;
    sampler_setup(a, &p);
    if (a->o.preview) {
        p.step_fn = preview_step;
        p.step_ctx = a;
    }
    p.seed = seed; /* the Brownian tree's entropy */
    if (ldm_sample_guided(&a->sched, &p, &g, &gen, a->pmode, label, &a->times, x) != 0) goto done;

    t0 = ldm_now();
    if (decode_latent(a, x, img) != 0) goto done;
    ldm_times_add(&a->times, "decode", ldm_now() - t0);

    t0 = ldm_now();
    if (latent_path) {
        char seed_s[32], steps_s[16], cfg_s[32], eta_s[32], str_s[32], hw_s[32], ch_s[16], uch_s[16], skip_s[16];
        snprintf(ch_s, sizeof ch_s, "%d", c.n_chunks);
        snprintf(uch_s, sizeof uch_s, "%d", ucond->n_chunks);
        snprintf(skip_s, sizeof skip_s, "%d", a->o.clip_skip);
        snprintf(seed_s, sizeof seed_s, "%llu", (unsigned long long)seed);
        snprintf(steps_s, sizeof steps_s, "%d", a->o.steps);
        snprintf(cfg_s, sizeof cfg_s, "%g", a->o.cfg_scale);
        snprintf(eta_s, sizeof eta_s, "%g", a->o.eta);
        snprintf(str_s, sizeof str_s, "%g", a->init_latent ? a->strength : 1.0);
        snprintf(hw_s, sizeof hw_s, "%dx%d", CFG.H, CFG.W);
        /* the schedule only where the sampler takes one (k-diffusion); its
         * rho, the tcd gamma and the SDE noise only where they apply */
        int kdiff = ldm_sampler_family(a->o.sampler) == 1;
        int sde = a->o.sampler == LDM_SAMPLER_DPMPP_SDE || a->o.sampler == LDM_SAMPLER_DPMPP_2M_SDE;
        char rho_s[32], gamma_s[32];
        snprintf(rho_s, sizeof rho_s, "%g",
                 a->o.has_rho ? a->o.rho : ldm_sigma_default_rho(a->o.schedule));
        snprintf(gamma_s, sizeof gamma_s, "%g", a->o.gamma);
        int has_rho = kdiff && (a->o.schedule == LDM_SIGMAS_KARRAS || a->o.schedule == LDM_SIGMAS_POLYEXPONENTIAL);
        const char *meta[] = {"prompt", prompt, "negative_prompt", a->o.negative, "seed", seed_s, "rng",
                              ldm_rng_name(a->o.rng), "sampler", ldm_sampler_name(a->o.sampler), "schedule",
                              kdiff ? ldm_sigma_kind_name(a->o.schedule) : "(the sampler's own)", "steps", steps_s,
                              "cfg_scale", cfg_s, "eta", eta_s, "strength", str_s, "size", hw_s, "prompt_syntax",
                              ldm_prompt_syntax_name(a->o.syntax), "prompt_chunks", ch_s, "negative_prompt_chunks",
                              uch_s, "pad_cond_uncond", a->o.pad_cond_uncond ? "true" : "false", "loras", loras,
                              "embeddings", embs, "clip_skip", skip_s, "decoder", a->o.taesd ? "taesd" : "vae",
                              "ldmc", CFG.banner,
                              /* optional ones last: a NULL value ends the list */
                              has_rho ? "rho" : NULL, rho_s, a->o.sampler == LDM_SAMPLER_TCD ? "gamma" : NULL, gamma_s,
                              sde ? "noise_sampler" : NULL, ldm_noise_sampler_name(a->o.noise_sampler), NULL};
        /* drop the absent optional pairs */
        const char *kv[64];
        int nk = 0;
        for (size_t i = 0; i + 1 < sizeof meta / sizeof *meta; i += 2)
            if (meta[i]) kv[nk++] = meta[i], kv[nk++] = meta[i + 1];
        kv[nk] = NULL;
        int64_t shape[4] = {1, a->C, a->h, a->w};
        if (ldm_latent_save(latent_path, x, noise, 4, shape, kv) != 0) goto done;
    }
    if (ldm_image_save(png_path, img, CFG.W, CFG.H) != 0) {
        if (latent_path) remove(latent_path);
        goto done;
    }
    ldm_times_add(&a->times, "save", ldm_now() - t0);
    a->times.images++;
    rc = 0;
done:
    if (rc != 0 && cond_written) remove(cond_path); /* a failed image leaves no files */
    ldm_guide_free(&g);
    ldm_cond_free(&c);
    ldm_cond_free(&cp);
    ldm_cond_free(&up);
    wants_free(want, n_want);
    free(text);
    free(loras);
    free(embs);
    free(x);
    free(noise);
    free(img);
    return rc;
}

/* The TAESD files of --taesd, --taesd-encoder and --preview-taesd: every
 * size's TAESD network bound to them (small: 1.2 M parameters each). */
static int load_taesd(App *a) {
    const Options *o = &a->o;
    const char *flag = o->taesd ? "--taesd" : o->taesd_encoder ? "--taesd-encoder" : o->preview_taesd ? "--preview-taesd" : NULL;
    if (!flag) return 0;
    if (!has_taesd())
        return ldm_fail("%s: this executable was built without TAESD (make txt2img CONFIG=%s ... TAESD=1)", flag,
                        CFG.config_path);
    double t0 = ldm_now();
    int n = ldm_pipeline_n_sizes, rc = 0;
    const LdmModel **dec = ldm_xcalloc((size_t)n, sizeof *dec), **enc = ldm_xcalloc((size_t)n, sizeof *enc);
    for (int k = 0; k < n; k++) {
        dec[k] = ldm_pipeline_sizes[k].models[NET_TAESD_DEC];
        enc[k] = ldm_pipeline_sizes[k].models[NET_TAESD_ENC];
    }
    if (o->taesd) rc = ldm_taesd_nets_load(&a->taesd_dec, "--taesd", o->taesd, dec, n, 1);
    if (rc == 0 && o->preview_taesd) rc = ldm_taesd_nets_load(&a->taesd_prev, "--preview-taesd", o->preview_taesd, dec, n, 1);
    if (rc == 0 && o->taesd_encoder) rc = ldm_taesd_nets_load(&a->taesd_enc, "--taesd-encoder", o->taesd_encoder, enc, n, 0);
    free(dec);
    free(enc);
    if (rc == 0) ldm_times_add(&a->times, "load taesd", ldm_now() - t0);
    return rc;
}

/* Read the inputs named on the command line and check them against this
 * executable, before the (slow) weights are loaded. */
static int load_inputs(App *a) {
    const Options *o = &a->o;
    if (!o->prompts && (ldm_check_output_path("-o", o->out) != 0 ||
                        (o->save_latent && ldm_check_output_path("--save-latent", o->save_latent) != 0)))
        return -1;
    double t0 = ldm_now();
    a->tok = o->vocab ? clip_tokenizer_load(o->vocab) : clip_tokenizer_load_builtin();
    if (!a->tok) return -1;
    ldm_times_add(&a->times, "load vocab", ldm_now() - t0);
    if (o->init_noise) {
        int64_t shape[4] = {1, a->C, a->h, a->w};
        a->init_noise = ldm_aligned_alloc((size_t)a->n_lat * sizeof(float));
        if (ldm_noise_load(o->init_noise, 4, shape, a->init_noise) != 0) return -1;
    }
    if (o->init_image && ldm_image_load(o->init_image, CFG.W, CFG.H, &a->image, NULL, NULL) != 0) return -1;
    if (o->mask && ldm_mask_load(o->mask, CFG.W, CFG.H, &a->mask_px, NULL, NULL) != 0) return -1;
    a->strength = o->has_strength ? o->strength : a->hybrid ? 1.0 : 0.75;
    if (!o->prompts && o->save_cond && ldm_check_output_path("--save-cond", o->save_cond) != 0) return -1;
    if (o->preview && ldm_check_output_path("--preview", o->preview) != 0) return -1;
    if (load_taesd(a) != 0) return -1;
    /* the text encoder's CLIP skips, the embeddings, the LoRA files */
    const LdmModel *clip = net_model(a, NET_CLIP);
    int oh = ldm_model_output(clip, "hidden"), os = ldm_model_output(clip, "hidden_skip");
    int skips = os >= 0 ? (int)clip->outputs[os].shape[0] : 1, width = (int)clip->outputs[oh].shape[2];
    if (o->clip_skip > skips)
        return ldm_fail("--clip-skip %d: this executable's text encoder gives CLIP skip 1 to %d; build it for more "
                        "with make txt2img CONFIG=%s ... CLIP_SKIPS=%d", o->clip_skip, skips, CFG.config_path,
                        o->clip_skip);
    if (o->embeddings) {
        t0 = ldm_now();
        if (ldm_embeddings_load_dir(o->embeddings, width, &a->emb) != 0) return -1;
        if (a->emb.n > 0 && ldm_model_input(clip, "emb_keep") < 0)
            return ldm_fail("--embeddings: this executable's text encoder was compiled without EMBEDS=1");
        for (const char *p = a->emb.notes; *p;) {
            const char *e = strchr(p, '\n');
            fprintf(stderr, "%s: warning: --embeddings: skipped %.*s\n", a->argv0, (int)(e ? e - p : (long)strlen(p)), p);
            p = e ? e + 1 : p + strlen(p);
        }
        ldm_times_add(&a->times, "load embeddings", ldm_now() - t0);
    }
    if (o->prompt) {
        /* tags, LoRA names, UTF-8, weights and the chunk count of both texts */
        const char *texts[2] = {o->prompt, o->negative};
        for (int k = 0; k < 2; k++) {
            char *text;
            LoraWant *want;
            int n_want, rc = k == 0 ? prompt_loras(a, texts[k], &text, &want, &n_want) : 0;
            if (k == 1) text = ldm_xstrdup(texts[k]), want = NULL, n_want = 0;
            if (rc == 0) {
                LdmTextEncoder te = text_encoder(a);
                PromptChunks ch;
                rc = ldm_text_chunks(&te, text, &ch);
                if (rc == 0) prompt_chunks_free(&ch);
            }
            free(text);
            wants_free(want, n_want);
            if (rc != 0) return ldm_fail("%s: %s", k ? "--negative-prompt" : "--prompt", ldm_last_error());
        }
    }
    /* the sampler's own checks (step counts the schedule cannot make,
     * img2img with int(strength * steps) = 0, ...) */
    LdmSampler p;
    sampler_setup(a, &p);
    float dummy = 0;
    if (o->init_image && !p.init_latent) {
        p.init_latent = &dummy; /* checks only: the encoding comes later */
        p.strength = a->strength;
    }
    if (a->mask_px && !a->hybrid) {
        p.mask = &dummy;
        p.plane = 1;
    }
    p.eps_fn = ldm_guide_eps;
    p.noise_fn = ldm_noise_draw;
    if (ldm_sample_count_steps(&a->sched, &p) < 0) return -1;
    return 0;
}

/* A --prompts line's own settings (a line starting with "--"). */
typedef struct LineArgs {
    char *prompt, *negative;   /* malloc'd; NULL: the line is the prompt / --negative-prompt */
    int H, W, has_H, has_W;
    uint64_t seed;
    int has_seed;
    int steps, has_steps;
    double cfg_scale;
    int has_cfg;
} LineArgs;

static void line_args_free(LineArgs *l) {
    free(l->prompt);
    free(l->negative);
    memset(l, 0, sizeof *l);
}

/* Parse a line of options the way the AUTOMATIC1111 webui's "prompts from
 * file" script does (scripts/prompts_from_file.py, cmdargs): shell words;
 * --prompt and --negative_prompt take every word up to the next one starting
 * with "--", joined by spaces; every other option takes one value. */
static int parse_line_args(const char *text, LineArgs *l) {
    memset(l, 0, sizeof *l);
    int argc;
    char **argv;
    if (ldm_split_args(text, &argc, &argv) != 0) return -1;
    int rc = 0;
    for (int i = 0; i < argc && rc == 0;) {
        const char *f = argv[i];
        if (strncmp(f, "--", 2) != 0) {
            rc = ldm_fail("'%s': expected an option starting with \"--\" (a line starting with -- holds options: "
                          "--prompt TEXT [--height N] ...)", f);
            break;
        }
        if (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2)) {
            rc = ldm_fail("%s: expected a value after it", f);
            break;
        }
        if (!strcmp(f, "--prompt") || !strcmp(f, "--negative_prompt") || !strcmp(f, "--negative-prompt")) {
            size_t n = 0;
            int j = i + 1;
            for (; j < argc && strncmp(argv[j], "--", 2) != 0; j++) n += strlen(argv[j]) + 1;
            char *t = ldm_xmalloc(n + 1);
            t[0] = 0;
            for (int k = i + 1; k < j; k++) {
                if (k > i + 1) strcat(t, " ");
                strcat(t, argv[k]);
            }
            char **dst = !strcmp(f, "--prompt") ? &l->prompt : &l->negative;
            free(*dst);
            *dst = t;
            i = j;
            continue;
        }
        const char *v = argv[i + 1];
        if (!strcmp(f, "--height")) {
            rc = ldm_parse_int(f, v, 1, 65536, &l->H);
            l->has_H = 1;
        } else if (!strcmp(f, "--width")) {
            rc = ldm_parse_int(f, v, 1, 65536, &l->W);
            l->has_W = 1;
        } else if (!strcmp(f, "--seed")) {
            rc = ldm_parse_u64(f, v, &l->seed);
            l->has_seed = 1;
        } else if (!strcmp(f, "--steps")) {
            rc = ldm_parse_int(f, v, 1, CFG.timesteps, &l->steps);
            l->has_steps = 1;
        } else if (!strcmp(f, "--cfg_scale") || !strcmp(f, "--cfg-scale")) {
            rc = ldm_parse_double(f, v, -1e4, 1e4, &l->cfg_scale);
            l->has_cfg = 1;
        } else {
            rc = ldm_fail("unknown option '%s' (a line takes --prompt, --negative_prompt, --height, --width, --seed, "
                          "--steps, --cfg_scale)", f);
        }
        i += 2;
    }
    if (rc == 0 && !l->prompt) rc = ldm_fail("the line has options but no --prompt");
    ldm_args_free(argc, argv);
    if (rc != 0) line_args_free(l);
    return rc;
}

/* One --prompts line: its own settings (if any) over the run's. */
static int make_line_image(App *a, const LdmPromptLine *l, int i, int n, char **png_out) {
    const Options *o = &a->o;
    LineArgs la = {0};
    int has_args = !strncmp(l->text + strspn(l->text, " \t"), "--", 2);
    if (has_args && parse_line_args(l->text, &la) != 0) return -1;
    int rc = 0, k = a->run_size;
    if (la.has_H || la.has_W) {
        int H = la.has_H ? la.H : ldm_pipeline_sizes[a->run_size].config->H;
        int W = la.has_W ? la.W : ldm_pipeline_sizes[a->run_size].config->W;
        k = ldm_pipeline_find_size(ldm_pipeline_sizes, ldm_pipeline_n_sizes, H, W, "txt2img", "TXT2IMG_DEFS");
        if (k < 0) rc = -1;
        else if (k != a->run_size && (o->init_image || o->mask || o->init_noise))
            rc = ldm_fail("%dx%d: --init-image, --mask and --init-noise are of the run's size, %dx%d: a line cannot "
                          "choose another size with them", H, W, CFG.H, CFG.W);
    }
    Options saved = a->o;
    const char *prompt = la.prompt ? la.prompt : l->text;
    uint64_t seed = la.has_seed ? la.seed : ldm_line_seed(o->seed, l->line);
    if (la.negative) a->o.negative = la.negative;
    if (la.has_steps) a->o.steps = la.steps;
    if (la.has_cfg) a->o.cfg_scale = la.cfg_scale;
    if (rc == 0) use_size(a, k);
    char *png = ldm_output_name(o->out, l->line, seed, ".png");
    char *lat = o->save_latent ? ldm_output_name(o->save_latent, l->line, seed, ".safetensors") : NULL;
    char *cnd = o->save_cond ? ldm_output_name(o->save_cond, l->line, seed, ".safetensors") : NULL;
    char label[96];
    if (ldm_pipeline_n_sizes > 1) snprintf(label, sizeof label, "[%d/%d] line %d, %dx%d", i + 1, n, l->line, CFG.H, CFG.W);
    else snprintf(label, sizeof label, "[%d/%d] line %d", i + 1, n, l->line);
    if (rc == 0) rc = make_image(a, prompt, seed, png, lat, cnd, label);
    a->o = saved;
    use_size(a, a->run_size);
    line_args_free(&la);
    free(lat);
    free(cnd);
    *png_out = png;
    return rc;
}

/* Open every --lora file once against the networks' weight names: a bad
 * file fails the run before anything is bound or sampled (each image opens
 * its set again in use_loras). */
static int check_loras(App *a) {
    for (int i = 0; i < a->o.n_loras; i++) {
        LoraWant w;
        if (parse_lora_spec(a->o.loras[i], &w) != 0) return -1;
        LdmLora *l = NULL;
        int rc = ldm_lora_open(&l, w.path, a->weight_names, a->n_weight_names, (float)w.te, (float)w.unet);
        ldm_lora_free(l);
        free(w.path);
        free(w.name);
        if (rc != 0) return ldm_fail("--lora %s: %s", a->o.loras[i], ldm_last_error());
    }
    return 0;
}

static int run(App *a) {
    const Options *o = &a->o;
    LdmPromptList list = {0};
    if (o->prompts && ldm_prompts_read(o->prompts, o->shard_k, o->shard_n, &list) != 0) return -1;
    if (load_inputs(a) != 0) {
        ldm_prompts_free(&list);
        return -1;
    }

    /* every size's networks, size k's at k * N_NETS: those of one network
     * share one weight set (ldm_nets_load_mapped), bound when it first runs */
    double t0 = ldm_now();
    int n_models = ldm_pipeline_n_sizes * N_NETS;
    const LdmModel **models = ldm_xcalloc((size_t)n_models, sizeof *models);
    for (int k = 0; k < ldm_pipeline_n_sizes; k++)
        for (int j = 0; j < N_NETS; j++) models[k * N_NETS + j] = ldm_pipeline_sizes[k].models[j];
    char what[1024], sizes[900];
    snprintf(what, sizeof what, "%s at %s", CFG.config_path,
             ldm_pipeline_size_list(ldm_pipeline_sizes, ldm_pipeline_n_sizes, sizes, sizeof sizes));
    int rc = ldm_nets_load_vae(&a->nets, o->weights, o->vae, models, n_models, what);
    free(models);
    if (rc == 0) rc = ldm_pipeline_scale_factor(&CFG, &a->nets.ckpt, &a->scale);
    if (rc == 0) {
        /* what LoRA keys are matched against: every network's weights */
        a->weight_names = ldm_nets_weight_names(&a->nets, &a->n_weight_names);
        rc = check_loras(a);
    }
    if (rc != 0) {
        ldm_prompts_free(&list);
        return -1;
    }
    ldm_times_add(&a->times, "load weights", ldm_now() - t0);
    /* TAESD runs between UNet calls or instead of the VAE: one arena for all */
    LdmNets *tn[3] = {&a->taesd_dec, &a->taesd_enc, &a->taesd_prev};
    for (int k = 0; k < 3; k++)
        if (tn[k]->n) ldm_nets_share_arena(tn[k], &a->nets);
    if (ldm_pipeline_n_sizes > 1 && a->pmode != LDM_PROGRESS_QUIET) {
        fprintf(stderr, "%s: %d sizes: %d networks on %d weight sets (bound once, shared by the sizes)\n", a->argv0,
                ldm_pipeline_n_sizes, n_models, a->nets.n_weight_sets);
        for (const char *p = a->nets.notes; *p;) {
            const char *e = strchr(p, '\n');
            fprintf(stderr, "%s: note: %.*s\n", a->argv0, (int)(e ? e - p : (long)strlen(p)), p);
            p = e ? e + 1 : p + strlen(p);
        }
    }

    if (prepare_images(a) != 0) {
        ldm_prompts_free(&list);
        return -1;
    }
    if (o->pad_cond_uncond) {
        /* sd_models.get_empty_cond: encode("") at load, before any LoRA, at
         * the run's CLIP skip: the filler of --pad-cond-uncond */
        t0 = ldm_now();
        if (encode_text(a, "", &a->empty) != 0) {
            ldm_prompts_free(&list);
            return -1;
        }
        ldm_times_add(&a->times, "text encode", ldm_now() - t0);
    }

    if (!o->prompts) {
        rc = make_image(a, o->prompt, o->seed, o->out, o->save_latent, o->save_cond, "sampling");
    } else {
        rc = 0;
        if (list.n == 0 && a->pmode != LDM_PROGRESS_QUIET)
            fprintf(stderr, "%s: no prompts in %s for shard %d/%d: nothing to do\n", a->argv0, o->prompts,
                    o->shard_k, o->shard_n);
        if (list.n > 0 && (ldm_mkdirs(o->out) != 0 || (o->save_latent && ldm_mkdirs(o->save_latent) != 0) ||
                           (o->save_cond && ldm_mkdirs(o->save_cond) != 0))) {
            ldm_prompts_free(&list);
            return -1;
        }
        for (int i = 0; i < list.n; i++) {
            const LdmPromptLine *l = &list.items[i];
            char *png = NULL;
            if (make_line_image(a, l, i, list.n, &png) != 0) {
                fprintf(stderr, "%s: error: %s:%d: %s\n", a->argv0, o->prompts, l->line, ldm_last_error());
                a->n_failed++;
            } else if (a->pmode == LDM_PROGRESS_LINES) {
                fprintf(stderr, "%s: line %d -> %s\n", a->argv0, l->line, png);
            }
            free(png);
        }
        if (a->n_failed) rc = ldm_fail("%d of %d prompts failed", a->n_failed, list.n);
    }
    ldm_prompts_free(&list);
    return rc;
}

int main(int argc, char **argv) {
    App a;
    memset(&a, 0, sizeof a);
    const char *slash = strrchr(argv[0], '/');
    a.argv0 = slash ? slash + 1 : argv[0];
    g_cfg = ldm_pipeline_sizes[0].config;
    int prc = parse_args(argc, argv, &a.o);
    if (prc == 1) {
        usage(stdout, a.argv0);
        return 0;
    }
    if (prc == 0) prc = check_options(&a.o);
    if (prc == 0) {
        /* -H/-W: a compiled size (one alone keeps the default's other side) */
        int H = a.o.has_H ? a.o.H : CFG.H, W = a.o.has_W ? a.o.W : CFG.W;
        a.run_size = ldm_pipeline_find_size(ldm_pipeline_sizes, ldm_pipeline_n_sizes, H, W, "txt2img", "TXT2IMG_DEFS");
        if (a.run_size < 0) {
            fprintf(stderr, "%s: error: %s\n", a.argv0, ldm_last_error());
            return 2;
        }
    }
    if (prc != 0) {
        fprintf(stderr, "%s: error: %s\n(see %s --help)\n", a.argv0, ldm_last_error(), a.argv0);
        return 2;
    }
    ldm_profile_init();
    a.pmode = ldm_progress_mode(stderr, a.o.quiet);
    a.hybrid = !strcmp(CFG.conditioning_key, "hybrid");
    a.C = CFG.latent_channels;
    a.ctx_len = CFG.context_length;
    a.ctx_dim = CFG.context_dim;
    a.concat_ch = a.hybrid ? CFG.unet_in_channels - CFG.latent_channels : 0;

    int rc = 1;
    if (strcmp(CFG.conditioning_key, "crossattn") != 0 && !a.hybrid) {
        ldm_fail("this executable was built for %s, whose conditioning_key is '%s': txt2img needs a text-conditioned "
                 "model (crossattn, or hybrid for inpainting models)", CFG.config_path, CFG.conditioning_key);
        goto out;
    }
    if (a.hybrid && a.concat_ch != 1 + a.C) {
        ldm_fail("%s: a hybrid UNet with %d input channels: expected %d (latent, mask, masked-image latent)",
                 CFG.config_path, CFG.unet_in_channels, 1 + 2 * a.C);
        goto out;
    }
    if (check_models(&a) != 0) goto out;
    use_size(&a, a.run_size);
    if (ldm_schedule_init(&a.sched, CFG.linear_start, CFG.linear_end, CFG.timesteps) != 0) goto out;
    if (run(&a) == 0) rc = 0;
out:
    if (rc != 0) fprintf(stderr, "%s: error: %s\n", a.argv0, ldm_last_error());
    if (a.pmode != LDM_PROGRESS_QUIET && a.times.images > 0) ldm_times_print(&a.times, stderr);
    if (ldm_profiling) ldm_profile_report();
    ldm_nets_free(&a.nets);
    ldm_nets_free(&a.taesd_dec);
    ldm_nets_free(&a.taesd_enc);
    ldm_nets_free(&a.taesd_prev);
    if (a.sched.alphas_cumprod) ldm_schedule_free(&a.sched);
    clip_tokenizer_free(a.tok);
    ldm_times_free(&a.times);
    free(a.init_noise);
    free(a.image);
    free(a.mask_px);
    free(a.init_latent);
    free(a.known);
    free(a.concat);
    free(a.uc_prompt);
    ldm_cond_free(&a.uc);
    ldm_cond_free(&a.empty);
    ldm_embeddings_free(&a.emb);
    active_free(a.act, a.n_act);
    free((void *)a.o.loras);
    return rc;
}
