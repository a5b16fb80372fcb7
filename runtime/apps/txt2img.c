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
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "cpu.h"
#include "image.h"
#include "infotext.h"
#include "ldm_limits.h"
#include "lora.h"
#include "model.h"
#include "pipeline.h"
#include "prompt.h"
#include "promptline.h"
#include "sampler.h"
#include "schedule.h"
#include "sdxl.h"
#include "server.h"
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
/* With ControlNet (make txt2img ... CONTROLNET=1) every size lists two more
 * networks last: the UNet a ControlNet steers (unet.graph -D CONTROL=1; the
 * checkpoint's UNet weights, so it is bound in App.nets, after the four, at
 * NET_UNET_CONTROL) and the ControlNet (its own file, --control-net: bound in
 * App.control, size k's at k). */
enum { NET_UNET_CONTROL = N_NETS };

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
    int no_metadata;           /* --no-metadata: no `parameters` text chunk in the PNGs */
    int threads;               /* -t/--threads N (0: OMP_NUM_THREADS, else the CPUs this process may use) */
    int skip_existing;         /* --skip-existing */
    int random_seed;           /* -s/--seed -1: draw the seed (ldm_random_seed) */
    int batch_count;           /* -b/--batch-count N: N images, seeds seed, seed + 1, ... */
    int has_batch_count;
    int verbose;               /* -v/--verbose */
    int dry_run;               /* --dry-run */
    const char *listen;        /* --listen [HOST:]PORT: serve HTTP (server.h) */
    int queue;                 /* --queue N */
    long long max_body;        /* --max-body BYTES */
    const char *api_key;       /* --api-key KEY (or $LDM_API_KEY) */
    const char *cors_origin;   /* --cors-origin ORIGIN */
    int has_sampler;           /* --sampler given (else: the config's default, sgm: euler) */
    int orig_h, orig_w, has_orig;     /* --original-size HxW (SDXL; default: the image size) */
    int crop_top, crop_left;          /* --crop-top-left T,L (SDXL; default 0,0) */
    int target_h, target_w, has_target; /* --target-size HxW (SDXL; default: the image size) */
    const char *control_net;   /* --control-net FILE: a ControlNet's weights (CONTROLNET=1 builds) */
    const char *control_image; /* --control-image PNG: its hint, of the image's size */
    double control_strength;   /* --control-strength S (default 1) */
    int has_control_strength;
    int guess_mode;            /* --guess-mode */
} Options;

static void usage(FILE *fp, const char *argv0) {
    char sizes[1024];
    ldm_pipeline_size_list(ldm_pipeline_sizes, ldm_pipeline_n_sizes, sizes, sizeof sizes);
    fprintf(fp,
            "usage: %s --weights CKPT.safetensors|CKPT.ckpt [--vae FILE] [--vocab bpe_simple_vocab_16e6.txt.gz]\n"
            "          (--prompt TEXT | --prompts FILE [--shard K/N] [--skip-existing]) [-o OUT]\n"
            "          [--negative-prompt TEXT] [--steps N] [--cfg-scale S]\n"
            "          [--sampler NAME] [--schedule NAME] [--eta E] [--rho R] [--gamma G]\n"
            "          [--noise-sampler brownian|randn]\n"
            "          [--seed N] [--rng cpu|cuda] [--init-noise F.safetensors]\n"
            "          [--init-image PNG [--strength S] [--mask PNG]] [--save-latent F] [--compute f32|bf16] [--quiet]\n"
            "          [-H PIXELS] [-W PIXELS] [--prompt-syntax webui|plain] [--clip-skip N]\n"
            "          [--embeddings DIR] [--lora FILE[:MULT]]... [--lora-dir DIR] [--pad-cond-uncond]\n"
            "          [--save-cond F] [--taesd FILE] [--taesd-encoder FILE] [--preview-every N --preview PNG]\n"
            "          [--preview-taesd FILE] [--no-metadata] [-t N] [-b N] [-v] [--dry-run]\n"
            "          [--control-net FILE --control-image PNG [--control-strength S] [--guess-mode]]\n"
            "       %s -m CKPT -p TEXT [-n TEXT] [-s SEED] [-W PIXELS] [-H PIXELS] [--sampling-method NAME]\n"
            "          [--scheduler NAME] [-i PNG [--mask PNG] [--strength S]] [-o OUT] [-t N] [-b N] [-v]\n"
            "          (stable-diffusion.cpp's spellings)\n"
            "       %s --version | --help | --list-options\n"
            "       %s --weights CKPT --listen [HOST:]PORT [--queue N] [--max-body BYTES] [--api-key KEY]\n"
            "          [--cors-origin ORIGIN] [options above as the defaults of the requests' ...]\n"
            "\n"
            "Text to image for %s.\n"
            "Sizes (width x height): %s.\n"
            "\n"
            "Every flag takes its value as --flag VALUE or --flag=VALUE.\n"
            "\n"
            "  --weights CKPT      SD v1.x single-file checkpoint (F32, F16 or BF16), checked tensor by tensor:\n"
            "                      safetensors, or a PyTorch .ckpt (read without running its pickle)\n"
            "  -m, --model CKPT    the same (stable-diffusion.cpp's name)\n"
            "  --vae FILE          the autoencoder's weights from FILE instead (safetensors or .ckpt, e.g.\n"
            "                      vae-ft-mse-840000-ema-pruned; keys with or without first_stage_model.)\n"
            "  --vocab FILE        another copy of the CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz); by\n"
            "                      default the one compiled into this program (openai/CLIP's, MIT licence)\n"
            "  -p, --prompt TEXT   what to draw\n"
            "  -n, --negative-prompt TEXT\n"
            "                      the unconditional prompt of classifier-free guidance (default \"\")\n"
            "  --prompts FILE      one prompt per line (blank lines skipped), weights loaded once; OUT (and\n"
            "                      --save-latent) are then directories, images named <line>-<seed>.png,\n"
            "                      line L (1-based) drawn with seed N + L - 1. A line starting with --\n"
            "                      holds options, as in the webui's prompts from file: --prompt TEXT...\n"
            "                      [--negative_prompt TEXT...] [--height N] [--width N] [--seed N]\n"
            "                      [--steps N] [--cfg_scale S] [--sampler_name NAME]; a line starting with {\n"
            "                      is a JSON object: {\"prompt\": ..., \"negative_prompt\": ..., \"seed\": N,\n"
            "                      \"steps\": N, \"cfg_scale\": S, \"sampler\": NAME, \"size\": \"WxH\"} (or\n"
            "                      \"width\", \"height\"). Each image appends a JSON line to OUT/manifest.jsonl\n"
            "  --shard K/N         only the lines whose 0-based index i has i %% N == K (0 <= K < N)\n"
            "  --skip-existing     a line whose PNG exists already is skipped (a re-run of a pre-empted shard)\n"
            "  -o, --output OUT    the PNG to write (8-bit RGB; default ./output.png, as stable-diffusion.cpp;\n"
            "                      with --prompts a directory, required)\n"
            "  -W, --width N       image width in pixels, -H, --height N its height: one of the sizes above\n"
            "                      (default: the first; one flag alone keeps the default's other side)\n"
            "  --steps N           sampling steps (default 20)\n"
            "  --cfg-scale S       classifier-free guidance scale (default 7.5, and 1 for lcm and tcd;\n"
            "                      1 = no guidance: one UNet evaluation per step)\n"
            "  --sampler NAME      ddim (default), plms (CompVis); euler, euler_a, heun, dpm2, dpmpp_2s_a,\n"
            "                      dpmpp_2m, dpmpp_sde, dpmpp_2m_sde (k-diffusion); lcm, tcd, uni_pc\n"
            "                      (diffusers); the webui's names too (\"Euler a\",\n"
            "                      \"DPM++ 2M SDE\", \"DPM++ 2M Karras\" = dpmpp_2m + karras schedule, ...)\n"
            "  --sampling-method M stable-diffusion.cpp's sampler names: euler, euler_a, heun, dpm2, dpm++2s_a,\n"
            "                      dpm++2m, dpm++2m_sde, lcm, tcd (= ours; its dpm++2mv2, ipndm, ipndm_v,\n"
            "                      ddim_trailing, ... are not implemented and refused), or a --sampler name\n"
            "  --schedule NAME     noise levels of the k-diffusion samplers: discrete (default), karras,\n"
            "                      exponential, polyexponential, ays (Align Your Steps, SD v1)\n"
            "  --scheduler NAME    stable-diffusion.cpp's names: discrete, karras, exponential, ays (= ours;\n"
            "                      its gits, sgm_uniform, simple, smoothstep, ... are refused), or a --schedule name\n"
            "  --rho R             karras (default 7) and polyexponential (default 1) schedule exponent, > 0\n"
            "  --eta E             DDIM eta (default 0: deterministic)\n"
            "  --gamma G           tcd: stochasticity in [0, 1] (default 0.3; 0 = deterministic)\n"
            "  --noise-sampler N   dpmpp_sde, dpmpp_2m_sde: brownian (default: torchsde's Brownian tree from\n"
            "                      the seed, as k-diffusion and ComfyUI) or randn (plain draws continuing\n"
            "                      the generator, as stable-diffusion.cpp)\n"
            "  -s, --seed N        torch.manual_seed(N) for all noise (default 0); -1: a random seed\n"
            "                      (0 <= N < 4294967294, as the webui draws it), printed and recorded in the PNG\n"
            "  --rng cpu|cuda      draw noise as torch does on the CPU (default, the CompVis scripts) or on\n"
            "                      a CUDA GPU (the common SD UIs); no GPU is used either way\n"
            "  --init-noise F      start from tensor 'noise' of F (latent shape) instead of the seed's x_T\n"
            "  -i, --init-image PNG\n"
            "                      img2img: start from this image, of the chosen size (--init-img: the same)\n"
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
            "                      (SDXL: its encoders' layers are fixed by the config, 1 only)\n"
            "  --original-size HxW SDXL size conditioning: the original size (default: the image size)\n"
            "  --crop-top-left T,L SDXL: the crop's top-left corner (default 0,0), inside the original size\n"
            "  --target-size HxW   SDXL: the target size (default: the image size)\n"
            "                      (the webui's CLIP skip; the final LayerNorm still applies)\n"
            "  --embeddings DIR    textual-inversion embeddings: every DIR/*.safetensors, *.pt and *.bin; a\n"
            "                      prompt word equal to a file's name (without the extension) is replaced by\n"
            "                      its vectors\n"
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
            "  --control-net FILE  steer the UNet with a ControlNet (executables built with CONTROLNET=1): an SD\n"
            "                      v1 ControlNet 1.0/1.1 .safetensors (F32/F16/BF16, names with or without\n"
            "                      `control_model.`), of the UNet's config; with --control-image PNG, the hint\n"
            "                      (an edge map, pose, depth map, ...: RGB, the image's size)\n"
            "  --control-strength S  scale of the ControlNet's residuals (default 1)\n"
            "  --guess-mode        ControlNet guess mode: scales S * 0.825^(12 - i), no control on the\n"
            "                      negative prompt's half\n"
            "  --no-metadata       leave out the PNG text chunk `parameters` (the generation parameters in the\n"
            "                      AUTOMATIC1111 webui's infotext format, which its PNG Info reads)\n"
            "  -t, --threads N     threads (default: OMP_NUM_THREADS, else the CPUs this process may use: its\n"
            "                      affinity mask and cgroup CPU quota; -1: the default)\n"
            "  -b, --batch-count N N images of --prompt with seeds S, S + 1, ... (S = --seed), written as\n"
            "                      stable-diffusion.cpp names them: OUT, then OUT's name with _2, _3, ... before\n"
            "                      its extension (output.png, output_2.png, ...); --save-latent, --save-cond alike\n"
            "  --listen [HOST:]PORT serve the AUTOMATIC1111 webui's API (/sdapi/v1/txt2img, img2img, progress, ...),\n"
            "                      OpenAI's /v1/images/generations and a web page at / (docs/server.md) until\n"
            "                      SIGINT/SIGTERM, the weights loaded once; PORT alone listens on 127.0.0.1\n"
            "  --queue N           requests waiting beyond the one being made (default 16; more: 503)\n"
            "  --max-body BYTES    largest request body (default 33554432; more: 413)\n"
            "  --api-key KEY       require Authorization: Bearer KEY (all but the page; default $LDM_API_KEY)\n"
            "  --cors-origin O     answer CORS preflights and allow origin O (e.g. http://localhost:3000, or *)\n"
            "  -q, --quiet         no progress or timing output\n"
            "  -v, --verbose       print the version, the build and the options before the run\n"
            "  --dry-run           check the command line, print the options it gives and stop (nothing is read)\n"
            "  --version           print the version and the build (config, sizes) and exit\n"
            "  --list-options      print every option (long name, short name, value or none) and exit\n"
            "  -h, --help          this message\n"
            "  LDM_PROFILE=1       (environment) print per-node kernel times at the end\n",
            argv0, argv0, argv0, argv0, CFG.banner, sizes);
}

/* The flags, one row each (runtime/args.h): long name, short name, whether
 * it takes a value, and the code parse_option switches on. The
 * stable-diffusion.cpp spellings are rows of their own that share the code
 * of ours (-m/--model = --weights, -i/--init-img = --init-image,
 * --sampling-method = --sampler with sd.cpp's sampler names, --scheduler =
 * --schedule with sd.cpp's schedule names). */
enum {
    OPT_WEIGHTS = 1, OPT_VOCAB, OPT_PROMPT, OPT_NEGATIVE, OPT_PROMPTS, OPT_OUTPUT, OPT_INIT_NOISE, OPT_INIT_IMAGE,
    OPT_MASK, OPT_SAVE_LATENT, OPT_STEPS, OPT_CFG_SCALE, OPT_SAMPLER, OPT_SAMPLING_METHOD, OPT_SCHEDULE,
    OPT_SCHEDULER, OPT_ETA, OPT_RHO, OPT_GAMMA, OPT_NOISE_SAMPLER, OPT_SEED, OPT_RNG, OPT_STRENGTH, OPT_SHARD,
    OPT_COMPUTE, OPT_HEIGHT, OPT_WIDTH, OPT_PROMPT_SYNTAX, OPT_CLIP_SKIP, OPT_EMBEDDINGS, OPT_LORA, OPT_LORA_DIR,
    OPT_SAVE_COND, OPT_TAESD, OPT_TAESD_ENCODER, OPT_PREVIEW, OPT_PREVIEW_EVERY, OPT_PREVIEW_TAESD, OPT_THREADS,
    OPT_BATCH_COUNT, OPT_QUIET, OPT_PAD_COND_UNCOND, OPT_NO_METADATA, OPT_VERBOSE, OPT_VERSION, OPT_HELP,
    OPT_DRY_RUN, OPT_LIST_OPTIONS, OPT_SKIP_EXISTING, OPT_LISTEN, OPT_QUEUE, OPT_MAX_BODY, OPT_API_KEY,
    OPT_CORS_ORIGIN, OPT_VAE, OPT_CONTROL_NET, OPT_CONTROL_IMAGE, OPT_CONTROL_STRENGTH, OPT_GUESS_MODE, OPT_ORIGINAL_SIZE, OPT_CROP_TOP_LEFT,
    OPT_TARGET_SIZE,
};
#define V LDM_ARG_REQUIRED
#define N LDM_ARG_NONE
static const LdmOption k_options[] = {
    {"weights", 0, V, OPT_WEIGHTS},
    {"model", 'm', V, OPT_WEIGHTS},
    {"vae", 0, V, OPT_VAE},
    {"vocab", 0, V, OPT_VOCAB},
    {"prompt", 'p', V, OPT_PROMPT},
    {"negative-prompt", 'n', V, OPT_NEGATIVE},
    {"prompts", 0, V, OPT_PROMPTS},
    {"output", 'o', V, OPT_OUTPUT},
    {"init-noise", 0, V, OPT_INIT_NOISE},
    {"init-image", 0, V, OPT_INIT_IMAGE},
    {"init-img", 'i', V, OPT_INIT_IMAGE},
    {"mask", 0, V, OPT_MASK},
    {"save-latent", 0, V, OPT_SAVE_LATENT},
    {"steps", 0, V, OPT_STEPS},
    {"cfg-scale", 0, V, OPT_CFG_SCALE},
    {"sampler", 0, V, OPT_SAMPLER},
    {"sampling-method", 0, V, OPT_SAMPLING_METHOD},
    {"schedule", 0, V, OPT_SCHEDULE},
    {"scheduler", 0, V, OPT_SCHEDULER},
    {"eta", 0, V, OPT_ETA},
    {"rho", 0, V, OPT_RHO},
    {"gamma", 0, V, OPT_GAMMA},
    {"noise-sampler", 0, V, OPT_NOISE_SAMPLER},
    {"seed", 's', V, OPT_SEED},
    {"rng", 0, V, OPT_RNG},
    {"strength", 0, V, OPT_STRENGTH},
    {"shard", 0, V, OPT_SHARD},
    {"compute", 0, V, OPT_COMPUTE},
    {"height", 'H', V, OPT_HEIGHT},
    {"width", 'W', V, OPT_WIDTH},
    {"prompt-syntax", 0, V, OPT_PROMPT_SYNTAX},
    {"clip-skip", 0, V, OPT_CLIP_SKIP},
    {"original-size", 0, V, OPT_ORIGINAL_SIZE},
    {"crop-top-left", 0, V, OPT_CROP_TOP_LEFT},
    {"target-size", 0, V, OPT_TARGET_SIZE},
    {"embeddings", 0, V, OPT_EMBEDDINGS},
    {"lora", 0, V, OPT_LORA},
    {"lora-dir", 0, V, OPT_LORA_DIR},
    {"save-cond", 0, V, OPT_SAVE_COND},
    {"taesd", 0, V, OPT_TAESD},
    {"taesd-encoder", 0, V, OPT_TAESD_ENCODER},
    {"preview", 0, V, OPT_PREVIEW},
    {"preview-every", 0, V, OPT_PREVIEW_EVERY},
    {"preview-taesd", 0, V, OPT_PREVIEW_TAESD},
    {"control-net", 0, V, OPT_CONTROL_NET},
    {"control-image", 0, V, OPT_CONTROL_IMAGE},
    {"control-strength", 0, V, OPT_CONTROL_STRENGTH},
    {"guess-mode", 0, N, OPT_GUESS_MODE},
    {"threads", 't', V, OPT_THREADS},
    {"batch-count", 'b', V, OPT_BATCH_COUNT},
    {"quiet", 'q', N, OPT_QUIET},
    {"pad-cond-uncond", 0, N, OPT_PAD_COND_UNCOND},
    {"skip-existing", 0, N, OPT_SKIP_EXISTING},
    {"no-metadata", 0, N, OPT_NO_METADATA},
    {"verbose", 'v', N, OPT_VERBOSE},
    {"version", 0, N, OPT_VERSION},
    {"help", 'h', N, OPT_HELP},
    {"dry-run", 0, N, OPT_DRY_RUN},
    {"list-options", 0, N, OPT_LIST_OPTIONS},
    {"listen", 0, V, OPT_LISTEN},
    {"queue", 0, V, OPT_QUEUE},
    {"max-body", 0, V, OPT_MAX_BODY},
    {"api-key", 0, V, OPT_API_KEY},
    {"cors-origin", 0, V, OPT_CORS_ORIGIN},
};
#undef V
#undef N
#define N_OPTIONS ((int)(sizeof k_options / sizeof k_options[0]))

/* stable-diffusion.cpp's --sampling-method names: ours for those we
 * implement (NULL: not implemented here). */
static const struct {
    const char *sdcpp, *ours;
} k_sdcpp_samplers[] = {
    {"euler", "euler"},     {"euler_a", "euler_a"},   {"heun", "heun"},           {"dpm2", "dpm2"},
    {"dpm++2s_a", "dpmpp_2s_a"}, {"dpm++2m", "dpmpp_2m"}, {"dpm++2m_sde", "dpmpp_2m_sde"}, {"lcm", "lcm"},
    {"tcd", "tcd"},         {"dpm++2mv2", NULL},      {"ipndm", NULL},            {"ipndm_v", NULL},
    {"ddim_trailing", NULL}, {"res_multistep", NULL}, {"res_2s", NULL},           {"er_sde", NULL},
    {"euler_cfg_pp", NULL}, {"euler_a_cfg_pp", NULL}, {"euler_ge", NULL},         {"dpm++2m_sde_bt", NULL},
    {"lms", NULL},
};

/* ... and its --scheduler names (ours are the same names where we have them). */
static const struct {
    const char *sdcpp, *ours;
} k_sdcpp_schedules[] = {
    {"discrete", "discrete"}, {"karras", "karras"}, {"exponential", "exponential"}, {"ays", "ays"},
    {"gits", NULL},           {"sgm_uniform", NULL}, {"simple", NULL},           {"smoothstep", NULL},
    {"kl_optimal", NULL},     {"lcm", NULL},         {"bong_tangent", NULL},
};

/* "a, b, c": the sd.cpp names of a table that we accept */
#define SDCPP_ACCEPTED(tab, buf)                                                                                     \
    do {                                                                                                             \
        (buf)[0] = 0;                                                                                                \
        for (size_t i_ = 0; i_ < sizeof(tab) / sizeof(tab)[0]; i_++)                                                 \
            if ((tab)[i_].ours) {                                                                                    \
                size_t m_ = strlen(buf);                                                                             \
                snprintf((buf) + m_, sizeof(buf) - m_, "%s%s", m_ ? ", " : "", (tab)[i_].sdcpp);                     \
            }                                                                                                        \
    } while (0)

/* --sampling-method NAME: sd.cpp's name -> ours; any --sampler name too. */
static int parse_sampling_method(const char *v, const char **ours) {
    char acc[512];
    SDCPP_ACCEPTED(k_sdcpp_samplers, acc);
    for (size_t i = 0; i < sizeof k_sdcpp_samplers / sizeof *k_sdcpp_samplers; i++)
        if (!strcmp(v, k_sdcpp_samplers[i].sdcpp)) {
            if (!k_sdcpp_samplers[i].ours)
                return ldm_fail("--sampling-method %s: stable-diffusion.cpp's %s is not implemented here; accepted: %s "
                                "(stable-diffusion.cpp's names), or a --sampler name (%s)", v, v, acc,
                                ldm_sampler_list());
            *ours = k_sdcpp_samplers[i].ours;
            return 0;
        }
    *ours = v; /* one of ours, checked by the caller */
    return 0;
}

/* --scheduler NAME: sd.cpp's name -> ours; any --schedule name too. */
static int check_sdcpp_schedule(const char *v) {
    char acc[256];
    SDCPP_ACCEPTED(k_sdcpp_schedules, acc);
    for (size_t i = 0; i < sizeof k_sdcpp_schedules / sizeof *k_sdcpp_schedules; i++)
        if (!strcmp(v, k_sdcpp_schedules[i].sdcpp) && !k_sdcpp_schedules[i].ours)
            return ldm_fail("--scheduler %s: stable-diffusion.cpp's %s schedule is not implemented here; accepted: %s "
                            "(stable-diffusion.cpp's names), or a --schedule name (%s)", v, v, acc,
                            ldm_sigma_kind_list());
    return 0;
}

typedef struct ParseState {
    Options *o;
    int help, version, list;   /* --help, --version, --list-options seen */
} ParseState;

static int parse_option(void *ctx, const LdmOption *opt, const char *f, const char *v) {
    ParseState *ps = ctx;
    Options *o = ps->o;
    switch (opt->id) {
    case OPT_HELP: ps->help = 1; break;
    case OPT_VERSION: ps->version = 1; break;
    case OPT_LIST_OPTIONS: ps->list = 1; break;
    case OPT_QUIET: o->quiet = 1; break;
    case OPT_PAD_COND_UNCOND: o->pad_cond_uncond = 1; break;
    case OPT_SKIP_EXISTING: o->skip_existing = 1; break;
    case OPT_LISTEN: o->listen = v; break;
    case OPT_QUEUE: return ldm_parse_int(f, v, 1, 4096, &o->queue);
    case OPT_MAX_BODY: {
        int n;
        if (ldm_parse_int(f, v, 1024, 1 << 30, &n)) return -1;
        o->max_body = n;
        break;
    }
    case OPT_API_KEY: o->api_key = v; break;
    case OPT_CORS_ORIGIN: o->cors_origin = v; break;
    case OPT_NO_METADATA: o->no_metadata = 1; break;
    case OPT_VERBOSE: o->verbose = 1; break;
    case OPT_DRY_RUN: o->dry_run = 1; break;
    case OPT_WEIGHTS: o->weights = v; break;
    case OPT_VAE: o->vae = v; break;
    case OPT_VOCAB: o->vocab = v; break;
    case OPT_PROMPT: o->prompt = v; break;
    case OPT_NEGATIVE: o->negative = v; break;
    case OPT_PROMPTS: o->prompts = v; break;
    case OPT_OUTPUT: o->out = v; break;
    case OPT_INIT_NOISE: o->init_noise = v; break;
    case OPT_INIT_IMAGE: o->init_image = v; break;
    case OPT_MASK: o->mask = v; break;
    case OPT_SAVE_LATENT: o->save_latent = v; break;
    case OPT_STEPS: return ldm_parse_int(f, v, 1, CFG.timesteps, &o->steps);
    case OPT_CFG_SCALE:
        o->has_cfg = 1;
        return ldm_parse_double(f, v, -1e4, 1e4, &o->cfg_scale);
    case OPT_ORIGINAL_SIZE:
        o->has_orig = 1;
        return ldm_parse_hw(f, v, &o->orig_h, &o->orig_w);
    case OPT_CROP_TOP_LEFT: return ldm_parse_top_left(f, v, &o->crop_top, &o->crop_left);
    case OPT_TARGET_SIZE:
        o->has_target = 1;
        return ldm_parse_hw(f, v, &o->target_h, &o->target_w);
    case OPT_SAMPLER:
    case OPT_SAMPLING_METHOD: {
        const char *name = v;
        o->has_sampler = 1;
        if (opt->id == OPT_SAMPLING_METHOD && parse_sampling_method(v, &name) != 0) return -1;
        int implied = 0;
        LdmSigmaKind ik = LDM_SIGMAS_DISCRETE;
        if (ldm_sampler_parse_ex(name, &o->sampler, &implied, &ik)) {
            if (opt->id == OPT_SAMPLING_METHOD) {
                char acc[512];
                SDCPP_ACCEPTED(k_sdcpp_samplers, acc);
                return ldm_fail("--sampling-method: unknown sampler '%s'; accepted: %s (stable-diffusion.cpp's names), "
                                "or a --sampler name (%s)", v, acc, ldm_sampler_list());
            }
            return ldm_fail("%s: %s", f, ldm_last_error());
        }
        o->has_implied_schedule = implied;
        o->implied_schedule = ik;
        break;
    }
    case OPT_SCHEDULE:
    case OPT_SCHEDULER:
        if (opt->id == OPT_SCHEDULER && check_sdcpp_schedule(v) != 0) return -1;
        if (ldm_sigma_kind_parse(v, &o->schedule)) {
            if (opt->id == OPT_SCHEDULER) {
                char acc[256];
                SDCPP_ACCEPTED(k_sdcpp_schedules, acc);
                return ldm_fail("--scheduler: unknown schedule '%s'; accepted: %s (stable-diffusion.cpp's names), or a "
                                "--schedule name (%s)", v, acc, ldm_sigma_kind_list());
            }
            return ldm_fail("%s: %s", f, ldm_last_error());
        }
        o->has_schedule = 1;
        break;
    case OPT_RHO:
        if (ldm_parse_double(f, v, -1e300, 1e300, &o->rho) || !(o->rho > 0.0))
            return ldm_fail("--rho: expected a number R > 0, got '%s'", v);
        o->has_rho = 1;
        break;
    case OPT_GAMMA:
        if (ldm_parse_double(f, v, 0, 1, &o->gamma)) return ldm_fail("--gamma: expected a number from 0 to 1, got '%s'", v);
        o->has_gamma = 1;
        break;
    case OPT_NOISE_SAMPLER:
        if (ldm_noise_sampler_parse(v, &o->noise_sampler)) return ldm_fail("--noise-sampler: %s", ldm_last_error());
        o->has_noise_sampler = 1;
        break;
    case OPT_ETA:
        o->has_eta = 1;
        return ldm_parse_double(f, v, 0, 1e3, &o->eta);
    case OPT_SEED: return ldm_parse_seed(f, v, &o->seed, &o->random_seed);
    case OPT_RNG: return ldm_rng_parse(v, &o->rng);
    case OPT_STRENGTH:
        if (ldm_parse_double(f, v, 0, 1, &o->strength) || !(o->strength > 0))
            return ldm_fail("--strength: expected a number S with 0 < S <= 1, got '%s'", v);
        o->has_strength = 1;
        break;
    case OPT_COMPUTE: return ldm_set_compute(v);
    case OPT_SHARD:
        o->has_shard = 1;
        return ldm_shard_parse(v, &o->shard_k, &o->shard_n);
    case OPT_HEIGHT:
        o->has_H = 1;
        return ldm_parse_int(f, v, 1, 65536, &o->H);
    case OPT_WIDTH:
        o->has_W = 1;
        return ldm_parse_int(f, v, 1, 65536, &o->W);
    case OPT_PROMPT_SYNTAX: return ldm_prompt_syntax_parse(v, &o->syntax);
    case OPT_CLIP_SKIP:
        o->has_clip_skip = 1;
        return ldm_parse_int(f, v, 1, 64, &o->clip_skip);
    case OPT_EMBEDDINGS: o->embeddings = v; break;
    case OPT_LORA:
        o->loras = ldm_xrealloc(o->loras, (size_t)(o->n_loras + 1) * sizeof *o->loras);
        o->loras[o->n_loras++] = v;
        break;
    case OPT_LORA_DIR: o->lora_dir = v; break;
    case OPT_SAVE_COND: o->save_cond = v; break;
    case OPT_TAESD: o->taesd = v; break;
    case OPT_TAESD_ENCODER: o->taesd_encoder = v; break;
    case OPT_PREVIEW_TAESD: o->preview_taesd = v; break;
    case OPT_CONTROL_NET: o->control_net = v; break;
    case OPT_CONTROL_IMAGE: o->control_image = v; break;
    case OPT_CONTROL_STRENGTH:
        o->has_control_strength = 1;
        return ldm_parse_double(f, v, -1e4, 1e4, &o->control_strength);
    case OPT_GUESS_MODE: o->guess_mode = 1; break;
    case OPT_PREVIEW: o->preview = v; break;
    case OPT_PREVIEW_EVERY: return ldm_parse_int(f, v, 1, 100000, &o->preview_every);
    case OPT_THREADS:
        /* sd.cpp's -t -1: the default */
        if (!strcmp(v, "-1")) {
            o->threads = 0;
            break;
        }
        if (ldm_parse_int(f, v, 1, 4096, &o->threads))
            return ldm_fail("%s: expected a thread count from 1 to 4096 (or -1: the default), got '%s'", f, v);
        break;
    case OPT_BATCH_COUNT:
        if (ldm_parse_int(f, v, 1, 100000, &o->batch_count))
            return ldm_fail("%s: expected an image count from 1 to 100000, got '%s'", f, v);
        o->has_batch_count = 1;
        break;
    default: return ldm_fail("internal: option %s has no handler", f);
    }
    return 0;
}

/* 0, 1 for --help, 2 for --version, 3 for --list-options, or -1 (ldm_fail)
 * on bad usage. */
static int parse_args(int argc, char **argv, Options *o) {
    memset(o, 0, sizeof *o);
    o->negative = "";
    o->steps = 20;
    o->cfg_scale = 7.5;
    o->control_strength = 1.0;
    /* sgm configs (SDXL): sgm's EulerEDMSampler with the DiscreteDenoiser's
     * own discretization, as its sampling scripts; CompVis configs: DDIM */
    int sgm = CFG.format && !strcmp(CFG.format, "sgm");
    o->sampler = sgm ? LDM_SAMPLER_EULER : LDM_SAMPLER_DDIM;
    o->schedule = sgm ? LDM_SIGMAS_SGM : LDM_SIGMAS_DISCRETE;
    o->rng = LDM_RNG_CPU;
    o->shard_n = 1;
    o->clip_skip = 1;
    o->syntax = LDM_SYNTAX_WEBUI;
    o->batch_count = 1;
    ParseState ps = {.o = o};
    int first = argc;
    if (ldm_args_parse(argc, argv, k_options, N_OPTIONS, parse_option, &ps, &first) != 0) return -1;
    if (ps.help) return 1;
    if (ps.version) return 2;
    if (ps.list) return 3;
    if (first < argc) return ldm_fail("unexpected argument '%s' (a prompt goes after --prompt, in quotes)", argv[first]);
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
    /* no -o: ./output.png, as stable-diffusion.cpp (a --prompts run needs a directory; a server writes no file) */
    if (!o->out && !o->prompts && !o->listen) o->out = "./output.png";
    return 0;
}

/* The options as parsed, one "name: value" a line (--dry-run, --verbose). */
static void print_options(FILE *fp, const Options *o) {
#define S(name, v) fprintf(fp, "  %-16s %s\n", name ":", (v) ? (v) : "(none)")
#define I(name, v) fprintf(fp, "  %-16s %d\n", name ":", (int)(v))
#define D(name, v) fprintf(fp, "  %-16s %.17g\n", name ":", (double)(v))
    S("weights", o->weights);
    S("vae", o->vae);
    S("vocab", o->vocab ? o->vocab : "(built in)");
    S("prompt", o->prompt);
    S("negative-prompt", o->negative);
    S("prompts", o->prompts);
    S("output", o->out);
    S("init-noise", o->init_noise);
    S("init-image", o->init_image);
    S("mask", o->mask);
    S("save-latent", o->save_latent);
    if (o->has_orig) fprintf(fp, "  %-16s %dx%d\n", "original-size:", o->orig_h, o->orig_w);
    else S("original-size", "(the image size)");
    fprintf(fp, "  %-16s %d,%d\n", "crop-top-left:", o->crop_top, o->crop_left);
    if (o->has_target) fprintf(fp, "  %-16s %dx%d\n", "target-size:", o->target_h, o->target_w);
    else S("target-size", "(the image size)");
    S("save-cond", o->save_cond);
    I("steps", o->steps);
    D("cfg-scale", o->cfg_scale);
    S("sampler", ldm_sampler_name(o->sampler));
    S("schedule", o->has_schedule ? ldm_sigma_kind_name(o->schedule) : "(the sampler's default)");
    if (o->has_eta) D("eta", o->eta);
    if (o->has_rho) D("rho", o->rho);
    if (o->has_gamma) D("gamma", o->gamma);
    if (o->has_noise_sampler) S("noise-sampler", ldm_noise_sampler_name(o->noise_sampler));
    if (o->random_seed) S("seed", "random (-1)");
    else fprintf(fp, "  %-16s %llu\n", "seed:", (unsigned long long)o->seed);
    S("rng", ldm_rng_name(o->rng));
    if (o->has_strength) D("strength", o->strength);
    if (o->has_shard) fprintf(fp, "  %-16s %d/%d\n", "shard:", o->shard_k, o->shard_n);
    if (o->has_H) I("height", o->H);
    if (o->has_W) I("width", o->W);
    S("prompt-syntax", ldm_prompt_syntax_name(o->syntax));
    I("clip-skip", o->clip_skip);
    S("embeddings", o->embeddings);
    for (int i = 0; i < o->n_loras; i++) S("lora", o->loras[i]);
    S("lora-dir", o->lora_dir);
    S("taesd", o->taesd);
    S("taesd-encoder", o->taesd_encoder);
    S("preview", o->preview);
    I("preview-every", o->preview_every);
    S("preview-taesd", o->preview_taesd);
    S("control-net", o->control_net);
    S("control-image", o->control_image);
    if (o->control_net || o->has_control_strength) D("control-strength", o->control_strength);
    I("guess-mode", o->guess_mode);
    if (o->threads) I("threads", o->threads);
    else S("threads", "(the default)");
    I("batch-count", o->batch_count);
    I("quiet", o->quiet);
    I("pad-cond-uncond", o->pad_cond_uncond);
    I("skip-existing", o->skip_existing);
    S("listen", o->listen);
    if (o->queue) I("queue", o->queue);
    if (o->max_body) I("max-body", o->max_body);
    S("api-key", o->api_key ? "(given)" : NULL);
    S("cors-origin", o->cors_origin);
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
    if (o->listen) {
        /* a server: the prompts and the rest come with the requests */
        const char *no = o->prompt ? "--prompt" : o->prompts ? "--prompts" : o->out ? "-o" : o->init_image ? "--init-image"
                       : o->init_noise ? "--init-noise" : o->save_latent ? "--save-latent" : o->save_cond ? "--save-cond"
                       : o->preview ? "--preview" : NULL;
        if (no) return ldm_fail("%s does not go with --listen (requests bring their prompts and images; the server "
                                "writes no files)", no);
        return ldm_server_check_listen(o->listen);
    }
    if (o->queue || o->max_body || o->api_key || o->cors_origin)
        return ldm_fail("--queue, --max-body, --api-key and --cors-origin go with --listen");
    if (!o->prompt && !o->prompts) return ldm_fail("missing --prompt TEXT (or --prompts FILE)");
    if (o->prompt && o->prompts) return ldm_fail("--prompt and --prompts exclude each other");
    if (o->has_shard && !o->prompts) return ldm_fail("--shard needs --prompts FILE");
    if (o->skip_existing && !o->prompts) return ldm_fail("--skip-existing needs --prompts FILE");
    if (!o->out) return ldm_fail("missing -o DIR (where the images go)");
    if (o->batch_count > 1 && o->prompts)
        return ldm_fail("--batch-count applies to --prompt (a --prompts file gives each line its own seed)");
    if (o->mask && !o->init_image) return ldm_fail("--mask needs --init-image (the image to inpaint)");
    if (o->n_loras > LDM_MAX_LORAS) return ldm_fail("%d --lora files; the limit is %d", o->n_loras, LDM_MAX_LORAS);
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
    if (o->control_net && !o->control_image) return ldm_fail("--control-net needs --control-image PNG (the hint)");
    if (!o->control_net && (o->control_image || o->has_control_strength || o->guess_mode))
        return ldm_fail("%s needs --control-net FILE", o->control_image ? "--control-image"
                                                       : o->guess_mode  ? "--guess-mode"
                                                                        : "--control-strength");
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
    char hash[13];            /* the webui's "Lora hashes" entry: 12 hex of the addnet hash ("" unless metadata) */
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
    LdmEmbeddings emb;        /* --embeddings (sgm: each file's clip_l, for the first text encoder) */
    LdmEmbeddings emb2;       /* sgm: the same files' clip_g, for the second (the same names, in the same order) */
    LdmCond uc;               /* the negative prompt's conditioning ... */
    char *uc_prompt;          /* ... for this text (NULL: none yet) */
    int uc_lora_gen;          /* ... under this LoRA set */
    LdmCond empty;            /* encode(""), no LoRA, at load (--pad-cond-uncond) */
    ActiveLora *act;          /* the LoRAs merged into the weights, in activation order */
    int n_act;
    int lora_gen;             /* changes with every new LoRA set */
    const char *const *weight_names; /* every network's weight names (LoRA key matching; a->nets owns them,
                                        or with sgm's second text encoder the array weight_names_own) */
    int n_weight_names;
    const char **weight_names_own;   /* sgm: a->nets' names then a->clip2's (their strings owned by those) */
    LdmNets taesd_dec;        /* --taesd: TAESD's decoder of every size (size k at k) */
    LdmNets taesd_enc;        /* --taesd-encoder: its encoder of every size */
    LdmNets taesd_prev;       /* --preview-taesd: the previews' decoder (else they use taesd_dec) */
    LdmNets control;          /* --control-net: the ControlNet of every size (size k at k) */
    float *hint;              /* --control-image: (3, H, W) RGB in [0, 1] */
    char model_sha256[65];    /* the checkpoint file's SHA-256 (--listen's sd-models, and the metadata's) */
    char model_hash[11];      /* its first 10 digits: the infotext's "Model hash" ("" with --no-metadata) */
    char *model_name;         /* ... and "Model": the checkpoint's file stem */
    struct Serve *serve;      /* --listen: the request being made (server glue), else NULL */
    int sgm;                  /* an sgm config (SDXL): two text encoders, the UNet's vector input y */
    LdmNets clip2;            /* sgm: the second text encoder (OpenCLIP, with `pooled`) of every size (size k at k) */
} App;

/* --listen (the server glue section below) */
static int serve_step(void *ctx, const LdmStepInfo *info);
static int serve_interrupted(App *a, float *x);
static int serve_encode(App *a, const float *img, const char *info, const char *prompt, uint64_t seed);

/* Was ControlNet compiled in (make txt2img ... CONTROLNET=1)? */
static int has_control(void) {
    const LdmPipelineSize *z = &ldm_pipeline_sizes[0];
    return z->n_models >= 2 && !strcmp(z->models[z->n_models - 1]->name, "controlnet");
}
/* Networks per size in a->nets: the four, and the controlled UNet. */
static int n_main_nets(void) { return N_NETS + has_control(); }
/* Size k's controlled UNet and ControlNet in the size table. */
static const LdmModel *control_unet_model(int k) {
    return ldm_pipeline_sizes[k].models[ldm_pipeline_sizes[k].n_models - 2];
}
static const LdmModel *controlnet_model(int k) {
    return ldm_pipeline_sizes[k].models[ldm_pipeline_sizes[k].n_models - 1];
}

/* Network `net` (< N_NETS_TAESD) of the size in use, and its index in a->nets (net < N_NETS, or NET_UNET_CONTROL). */
static const LdmModel *net_model(const App *a, int net) { return ldm_pipeline_sizes[a->size].models[net]; }
static int net_index(const App *a, int net) { return a->size * n_main_nets() + net; }

/* Make size k the one in use (CFG, latent shape, networks). */
static void use_size(App *a, int k) {
    a->size = k;
    g_cfg = ldm_pipeline_sizes[k].config;
    a->h = CFG.latent_h;
    a->w = CFG.latent_w;
    a->n_lat = (int64_t)a->C * a->h * a->w;
}

/* Was TAESD compiled in (make txt2img ... TAESD=1)? */
/* An sgm config (SDXL): a second text encoder, clip_text2, after TAESD's
 * networks and before the ControlNet's. */
static int has_clip2(void) { return CFG.format && !strcmp(CFG.format, "sgm"); }
static int has_taesd(void) {
    return ldm_pipeline_sizes[0].n_models - 2 * has_control() - has_clip2() == N_NETS_TAESD;
}
/* Size k's second text encoder (sgm). */
static const LdmModel *clip2_model(int k) {
    return ldm_pipeline_sizes[k].models[ldm_pipeline_sizes[k].n_models - 2 * has_control() - 1];
}

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
                        "(latent %d channels of %dx%d): build it with TAESD=0", CFG.config_path, CFG.W, CFG.H, a->C, a->w,
                        a->h);
    return 0;
}

/* Check that the generated networks of the size in use fit together and
 * fit the constants. */
static int check_size_models(const App *a) {
    int n_nets = ldm_pipeline_sizes[a->size].n_models - 2 * has_control() - has_clip2();
    if (n_nets != N_NETS && n_nets != N_NETS_TAESD)
        return ldm_fail("internal: the size table lists %d networks for %dx%d, expected %d (or %d with TAESD, 2 more with "
                        "ControlNet)", n_nets, CFG.W, CFG.H, N_NETS, N_NETS_TAESD);
    if (ldm_pipeline_sizes[a->size].n_models != ldm_pipeline_sizes[0].n_models)
        return ldm_fail("internal: the sizes of the table list different networks");
    if (n_nets == N_NETS_TAESD && check_taesd_models(a) != 0) return -1;
    if (has_control() && (ldm_model_input(control_unet_model(a->size), "control_scales") < 0 ||
                          ldm_model_input(controlnet_model(a->size), "hint") < 0))
        return ldm_fail("internal: the linked ControlNet networks do not have the expected inputs");
    const LdmModel *clip = net_model(a, NET_CLIP), *unet = net_model(a, NET_UNET), *dec = net_model(a, NET_DEC),
                   *enc = net_model(a, NET_ENC);
    int it = ldm_model_input(clip, "tokens"), oh = ldm_model_output(clip, "hidden");
    int iz = ldm_model_input(dec, "z"), oi = ldm_model_output(dec, "image"), ii = ldm_model_input(enc, "image");
    int om = ldm_model_output(enc, "moments") >= 0 ? ldm_model_output(enc, "moments") : ldm_model_output(enc, "h");
    if (it < 0 || oh < 0 || iz < 0 || oi < 0 || ii < 0 || om < 0)
        return ldm_fail("internal: the linked networks do not have the expected inputs and outputs");
    const LdmTensorInfo *tok = &clip->inputs[it], *hid = &clip->outputs[oh];
    int64_t width = hid->ndim == 3 ? hid->shape[2] : -1;
    if (a->sgm) {
        /* the second text encoder's channels follow the first's */
        const LdmModel *c2 = clip2_model(a->size);
        int oh2 = ldm_model_output(c2, "hidden"), op2 = ldm_model_output(c2, "pooled");
        if (oh2 < 0 || op2 < 0 || c2->outputs[oh2].ndim != 3 || ldm_model_input(unet, "y") < 0)
            return ldm_fail("internal: the linked sgm networks lack the second text encoder's hidden/pooled or the UNet's y");
        width += c2->outputs[oh2].shape[2];
    }
    if (tok->ndim != 2 || tok->shape[0] < 1 || tok->shape[1] != a->ctx_len || hid->ndim != 3 ||
        width != a->ctx_dim || ldm_numel(&dec->inputs[iz]) != a->n_lat ||
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
        .style = ldm_pipeline_tok_style(&CFG),
        .syntax = a->o.syntax,
        .clip_skip = a->o.clip_skip,
        .emb = a->o.embeddings ? &a->emb : NULL,
        .max_chunks = (int)(tmax / a->ctx_len),
        .chunks_hint = hint,
    };
    return te;
}

/* Does text (lines ending in '\n') hold the line line[0..len)? */
static int has_line(const char *text, const char *line, size_t len) {
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == len && !memcmp(p, line, len)) return 1;
        p = e ? e + 1 : p + n;
    }
    return 0;
}

/* sgm (SDXL) --embeddings: each file's clip_l for the first text encoder
 * (a->emb, width0) and clip_g for the second (a->emb2, the rest of the
 * context's width), as the webui's textual_inversion_key picks them; an
 * SD v1/2 embedding (one tensor) is another model's and skipped. Both sets
 * keep only the names both have, so that an index means the same file in
 * each (a file one encoder refuses has its note there). */
static int load_embeddings_sgm(App *a, int width0) {
    if (ldm_embeddings_load_dir_key(a->o.embeddings, "clip_l", width0, &a->emb) != 0) return -1;
    if (ldm_embeddings_load_dir_key(a->o.embeddings, "clip_g", a->ctx_dim - width0, &a->emb2) != 0) return -1;
    LdmEmbeddings *set[2] = {&a->emb, &a->emb2};
    for (int k = 0; k < 2; k++) {
        const LdmEmbeddings *other = set[1 - k];
        int n = 0;
        for (int i = 0; i < set[k]->n; i++) {
            int in_other = 0;
            for (int j = 0; j < other->n && !in_other; j++) in_other = !strcmp(other->e[j].name, set[k]->e[i].name);
            if (in_other) set[k]->e[n++] = set[k]->e[i];
            else ldm_embedding_free(&set[k]->e[i]);
        }
        set[k]->n = n;
    }
    return 0;
}

/* sgm (SDXL): the GeneralConditioner's text embedders, each on every chunk
 * of the prompt (the webui's syntax and chunks apply to both): embedder 0
 * (SD v1's tokenizer), embedder 1 (open_clip's: padded with 0; its pooled
 * output of the first chunk), concatenated on channels, embedder 0 first. */
static int encode_text_sgm(App *a, const char *prompt, LdmCond *c) {
    memset(c, 0, sizeof *c);
    LdmTextEncoder te0 = text_encoder(a), te1 = te0;
    te1.emb = te0.emb ? &a->emb2 : NULL; /* clip_l to the first encoder, clip_g to the second */
    te1.nets = &a->clip2;
    te1.model = a->size;
    te1.style = &clip_style_openclip;
    LdmCond c0 = {0}, c1 = {0};
    if (ldm_text_encode(&te0, prompt, &c0) != 0 || ldm_text_encode(&te1, prompt, &c1) != 0) {
        ldm_cond_free(&c0);
        return -1;
    }
    int rc = 0;
    if (c0.n_chunks != c1.n_chunks || !c1.pooled || c0.width + c1.width != a->ctx_dim) {
        rc = ldm_fail("internal: the two text encoders gave %d and %d chunks of widths %d + %d (context %d)%s",
                      c0.n_chunks, c1.n_chunks, c0.width, c1.width, a->ctx_dim, c1.pooled ? "" : ", no pooled output");
    } else {
        const int ctx = PROMPT_CHUNK_LENGTH + 2;
        int64_t rows = (int64_t)c0.n_chunks * ctx;
        c->n_chunks = c0.n_chunks;
        c->width = c0.width + c1.width;
        c->token_count = c0.token_count;
        c->z = ldm_aligned_alloc((size_t)(rows * c->width) * sizeof(float) + 4);
        for (int64_t r = 0; r < rows; r++) {
            memcpy(c->z + r * c->width, c0.z + r * c0.width, (size_t)c0.width * sizeof(float));
            memcpy(c->z + r * c->width + c0.width, c1.z + r * c1.width, (size_t)c1.width * sizeof(float));
        }
        /* the embeddings called: indices into a->emb (a->emb2's are the same) */
        c->used = ldm_xcalloc((size_t)c0.n_used + 1, sizeof *c->used);
        if (c0.n_used) memcpy(c->used, c0.used, (size_t)c0.n_used * sizeof *c->used);
        c->n_used = c0.n_used;
        c->pooled = c1.pooled;
        c->pooled_width = c1.pooled_width;
        c1.pooled = NULL;
    }
    ldm_cond_free(&c0);
    ldm_cond_free(&c1);
    return rc;
}

/* prompt text (tags removed) -> conditioning */
static int encode_text(App *a, const char *prompt, LdmCond *c) {
    if (a->sgm) return encode_text_sgm(a, prompt, c);
    LdmTextEncoder te = text_encoder(a);
    return ldm_text_encode(&te, prompt, c);
}

/* sgm's unconditional branch for an empty negative prompt
 * (force_uc_zero_embeddings=['txt'], as its sampling scripts and the
 * webui): every text output zero, one chunk; the size embeddings stay. */
static void zero_text_cond(const App *a, LdmCond *c) {
    memset(c, 0, sizeof *c);
    c->n_chunks = 1;
    c->width = a->ctx_dim;
    c->z = ldm_xcalloc((size_t)(PROMPT_CHUNK_LENGTH + 2) * (size_t)a->ctx_dim + 1, sizeof(float));
    c->used = ldm_xcalloc(1, sizeof *c->used);
    const LdmModel *m = a->clip2.models[a->size];
    int op = ldm_model_output(m, "pooled");
    c->pooled_width = op >= 0 ? (int)m->outputs[op].shape[1] : 0;
    c->pooled = ldm_xcalloc((size_t)c->pooled_width + 1, sizeof(float));
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
    if (o->n_loras + tags.n_tags > LDM_MAX_LORAS) {
        ldm_fail("%d LoRAs (%d --lora, %d <...> tags in the prompt); the limit is %d per image", o->n_loras + tags.n_tags,
                 o->n_loras, tags.n_tags, LDM_MAX_LORAS);
        prompt_tags_free(&tags);
        goto fail;
    }
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
        act[k] = (ActiveLora){ldm_xstrdup(want[k].path), ldm_xstrdup(want[k].name), want[k].te, want[k].unet, NULL,
                              ""};
        rc = ldm_lora_open(&act[k].l, want[k].path, a->weight_names, a->n_weight_names, (float)want[k].te,
                           (float)want[k].unet);
        char hex[65];
        if (rc == 0 && !a->o.no_metadata && ldm_file_sha256(want[k].path, 1, hex) == 0) {
            memcpy(act[k].hash, hex, 12);
            act[k].hash[12] = 0;
        }
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
    /* SDXL's second text encoder too (kohya's lora_te2_*): it is set first, and
     * back to the set in use if the other networks refuse the new one */
    if (rc == 0 && a->sgm) rc = ldm_nets_set_loras(&a->clip2, ls, n);
    if (rc == 0) {
        rc = ldm_nets_set_loras(&a->nets, ls, n);
        if (rc != 0 && a->sgm) {
            LdmLora **old = ldm_xcalloc((size_t)a->n_act + 1, sizeof *old);
            for (int i = 0; i < a->n_act; i++) old[i] = a->act[i].l;
            ldm_nets_set_loras(&a->clip2, old, a->n_act); /* cannot fail: it was in use */
            free(old);
        }
    }
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
    if (a->sgm && !*negative) zero_text_cond(a, &a->uc);
    else if (encode_text(a, negative, &a->uc) != 0) return ldm_fail("negative prompt: %s", ldm_last_error());
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
            /* lcm, tcd, uni_pc: StableDiffusionInpaintPipeline's mask, binarised at 0.5 and
             * interpolate(mask, latent size) (nearest: pixel (f*y, f*x)) */
            if (ldm_sampler_family(a->o.sampler) == 2)
                for (int y = 0; y < a->h; y++)
                    for (int x = 0; x < a->w; x++)
                        a->known[(int64_t)y * a->w + x] =
                            a->mask_px[(int64_t)y * CFG.f * CFG.W + (int64_t)x * CFG.f] < 0.5f ? 1.0f : 0.0f;
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
    p->v_pred = ldm_pipeline_v_pred(&CFG);
    /* hybrid models at strength 1 start from pure noise (for lcm, tcd and
     * uni_pc an init_latent at strength 1 would mean diffusers' img2img) */
    p->init_latent = a->hybrid && a->strength >= 1.0 ? NULL : a->init_latent;
    p->strength = p->init_latent ? a->strength : 0.0;
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

/* The webui infotext of an image made from `prompt` with `seed` and the
 * run's settings (the PNG's `parameters` chunk). --lora files are recorded
 * as <lora:NAME:MULT> tags appended to the prompt, so that the webui, given
 * the text, merges them as we did. */
static char *image_infotext(const App *a, const char *prompt, uint64_t seed) {
    const Options *o = &a->o;
    char *p = ldm_xstrdup(prompt);
    for (int i = 0; i < o->n_loras; i++) {
        LoraWant w;
        if (parse_lora_spec(o->loras[i], &w) != 0) continue;
        char mult[32];
        char *t = ldm_xasprintf("%s <lora:%s:%s>", p, w.name, ldm_py_float(w.te, mult, sizeof mult));
        free(p);
        p = t;
        free(w.path);
        free(w.name);
    }
    char *hashes = ldm_xstrdup("");
    for (int i = 0; i < a->n_act; i++) {
        if (!a->act[i].hash[0]) continue;
        char *t = ldm_xasprintf("%s%s%s: %s", hashes, *hashes ? ", " : "", a->act[i].name, a->act[i].hash);
        free(hashes);
        hashes = t;
    }
    char gamma[32], rho[32];
    const char *extra[16];
    int ne = 0;
    int kdiff = ldm_sampler_family(o->sampler) == 1;
    if (o->sampler == LDM_SAMPLER_DDIM && o->eta != 0) extra[ne++] = "Eta DDIM", extra[ne++] = ldm_py_float(o->eta, gamma, sizeof gamma);
    if (o->sampler == LDM_SAMPLER_TCD) extra[ne++] = "Gamma", extra[ne++] = ldm_py_float(o->gamma, gamma, sizeof gamma);
    if (kdiff && o->has_rho) extra[ne++] = "Rho", extra[ne++] = ldm_py_float(o->rho, rho, sizeof rho);
    if ((o->sampler == LDM_SAMPLER_DPMPP_SDE || o->sampler == LDM_SAMPLER_DPMPP_2M_SDE) &&
        o->noise_sampler != LDM_NOISE_BROWNIAN)
        extra[ne++] = "Noise sampler", extra[ne++] = ldm_noise_sampler_name(o->noise_sampler);
    if (o->pad_cond_uncond) extra[ne++] = "Pad conds", extra[ne++] = "True";
    if (o->syntax == LDM_SYNTAX_PLAIN) extra[ne++] = "Prompt syntax", extra[ne++] = "plain";
    if (o->taesd) extra[ne++] = "VAE Decoder", extra[ne++] = "TAESD";
    /* the webui ControlNet extension's entry (its "ControlNet is more
     * important" mode is guess mode: the 0.825^(12-i) scales, no control on
     * the uncond half) */
    char cn[600], cs[32];
    if (o->control_net) {
        char *stem = ldm_path_stem(o->control_net);
        snprintf(cn, sizeof cn, "Module: none, Model: %s, Weight: %s, Control Mode: %s", stem,
                 ldm_py_float(o->control_strength, cs, sizeof cs), o->guess_mode ? "ControlNet is more important" : "Balanced");
        free(stem);
        extra[ne++] = "ControlNet 0", extra[ne++] = cn;
    }
    extra[ne] = NULL;
    LdmInfotext t = {
        .prompt = p,
        .negative = o->negative,
        .steps = o->steps,
        .sampler = o->sampler,
        .has_schedule = kdiff,
        .schedule = o->schedule,
        .cfg_scale = o->cfg_scale,
        .seed = seed,
        .width = CFG.W,
        .height = CFG.H,
        .model_hash = a->model_hash[0] ? a->model_hash : NULL,
        .model = a->model_name,
        .denoising_strength = a->init_latent ? a->strength : -1.0,
        .clip_skip = o->clip_skip,
        .rng = o->rng == LDM_RNG_CPU ? "CPU" : NULL,
        .lora_hashes = hashes,
        .extra = extra,
    };
    char *r = ldm_infotext_format(&t);
    free(p);
    free(hashes);
    return r;
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
    LdmControl ctl = {0};
    LdmCond c = {0}, cp = {0}, up = {0};
    float *yvec = NULL;
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
    if (a->sgm) {
        /* the UNet's y: [pooled | original size | crop | target size] embeddings,
         * uncond row first (its pooled zeros for an empty negative prompt) */
        LdmSizeCond sc = {a->o.has_orig ? a->o.orig_h : CFG.H, a->o.has_orig ? a->o.orig_w : CFG.W, a->o.crop_top,
                          a->o.crop_left, a->o.has_target ? a->o.target_h : CFG.H, a->o.has_target ? a->o.target_w : CFG.W};
        if (ldm_size_cond_check(&sc) != 0) {
            ldm_fail("size conditioning: %s", ldm_last_error());
            goto done;
        }
        int E = c.pooled_width, adm = CFG.adm_in_channels;
        if (!c.pooled || adm <= E || (adm - E) % 6) {
            ldm_fail("internal: a pooled text embedding of %d and a UNet vector of %d do not make 3 size pairs", E, adm);
            goto done;
        }
        yvec = ldm_xmalloc((size_t)(2 * adm) * sizeof(float));
        ldm_sdxl_vector(unguided ? c.pooled : ucond->pooled, E, &sc, (adm - E) / 6, yvec);
        ldm_sdxl_vector(c.pooled, E, &sc, (adm - E) / 6, yvec + adm);
        g.y = yvec;
        g.y_width = adm;
    }
    if (a->o.control_net) {
        /* the ControlNet steers the controlled UNet (the plain one: uncond
         * half in guess mode) */
        ctl.nets = &a->control;
        ctl.net = a->size;
        ctl.unet = net_index(a, NET_UNET_CONTROL);
        ctl.hint = a->hint;
        ctl.strength = a->o.control_strength;
        ctl.guess = a->o.guess_mode;
        g.control = &ctl;
    }
    if (ldm_guide_init(&g) != 0) goto done;
    if (g.control && ldm_control_init(&ctl, &g) != 0) goto done;

    LdmSampler p;
    sampler_setup(a, &p);
    if (a->o.preview) {
        p.step_fn = preview_step;
        p.step_ctx = a;
    }
    if (a->serve) {
        p.step_fn = serve_step;
        p.step_ctx = a;
    }
    p.seed = seed; /* the Brownian tree's entropy */
    if (ldm_sample_guided(&a->sched, &p, &g, &gen, a->pmode, label, &a->times, x) != 0 && !serve_interrupted(a, x))
        goto done;

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
    char *info = a->o.no_metadata ? NULL : image_infotext(a, prompt, seed);
    const char *kv[] = {"parameters", info, NULL};
    int src = a->serve ? serve_encode(a, img, info, prompt, seed)
                       : ldm_image_save_text(png_path, img, CFG.W, CFG.H, info ? kv : NULL);
    free(info);
    if (src != 0) {
        if (latent_path) remove(latent_path);
        goto done;
    }
    ldm_times_add(&a->times, "save", ldm_now() - t0);
    a->times.images++;
    rc = 0;
done:
    if (rc != 0 && cond_written) remove(cond_path); /* a failed image leaves no files */
    ldm_guide_free(&g);
    ldm_control_free(&ctl);
    ldm_cond_free(&c);
    ldm_cond_free(&cp);
    ldm_cond_free(&up);
    free(yvec);
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

/* --control-net FILE: the ControlNet of every size, checked tensor by tensor
 * against the UNet's config (a ControlNet of another UNet, e.g. SD 2's,
 * fails naming the first tensor that does not fit), its weights at the
 * file's precision; keys with or without `control_model.`. */
static int load_control(App *a, const char *sizes) {
    const Options *o = &a->o;
    double t0 = ldm_now();
    StFile f;
    if (st_open(&f, o->control_net) != 0) return ldm_fail("--control-net: %s", ldm_last_error());
    LdmKeyMapFn map = ldm_control_key_map(&f);
    st_close(&f);
    int n = ldm_pipeline_n_sizes;
    const LdmModel **models = ldm_xcalloc((size_t)n, sizeof *models);
    LdmKeyMapFn *maps = ldm_xcalloc((size_t)n, sizeof *maps);
    for (int k = 0; k < n; k++) models[k] = controlnet_model(k), maps[k] = map;
    char what[1200];
    snprintf(what, sizeof what, "a ControlNet of the UNet of %s at %s", CFG.config_path, sizes);
    int rc = ldm_nets_load_mapped(&a->control, o->control_net, models, maps, n, what);
    free(models);
    free(maps);
    if (rc != 0) return ldm_fail("--control-net: %s", ldm_last_error());
    ldm_times_add(&a->times, "load controlnet", ldm_now() - t0);
    return 0;
}

/* --control-image PNG: the hint, RGB u8 / 255 (gradio scripts: HWC3, no
 * resizing inside the model), of the image's size. */
static int load_hint(App *a, const char *path) {
    uint8_t *rgb;
    int w, h;
    if (ldm_png_read_rgb8(path, &rgb, &w, &h) != 0) return ldm_fail("--control-image: %s", ldm_last_error());
    if (w != CFG.W || h != CFG.H) {
        free(rgb);
        return ldm_fail("--control-image %s: the hint is %dx%d, this run generates %dx%d (width x height): the hint "
                        "must be the image's size", path, w, h, CFG.W, CFG.H);
    }
    free(a->hint);
    a->hint = ldm_aligned_alloc((size_t)3 * w * h * sizeof(float));
    for (int c = 0; c < 3; c++)
        for (int64_t i = 0; i < (int64_t)w * h; i++) a->hint[c * (int64_t)w * h + i] = (float)rgb[i * 3 + c] / 255.0f;
    free(rgb);
    return 0;
}

/* Read the inputs named on the command line and check them against this
 * executable, before the (slow) weights are loaded. */
static int load_inputs(App *a) {
    const Options *o = &a->o;
    if (!o->prompts && !o->listen && (ldm_check_output_path("-o", o->out) != 0 ||
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
    if (o->control_net && !has_control())
        return ldm_fail("--control-net: this executable was built without ControlNet; build one with make txt2img "
                        "CONFIG=%s ... CONTROLNET=1", CFG.config_path);
    if (o->control_image && load_hint(a, o->control_image) != 0) return -1;
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
        if (a->sgm ? load_embeddings_sgm(a, width) != 0 : ldm_embeddings_load_dir(o->embeddings, width, &a->emb) != 0)
            return -1;
        if (a->emb.n > 0 && (ldm_model_input(clip, "emb_keep") < 0 ||
                             (a->sgm && ldm_model_input(clip2_model(a->size), "emb_keep") < 0)))
            return ldm_fail("--embeddings: this executable's text encoder was compiled without EMBEDS=1");
        for (int k = 0; k < 2; k++)
            for (const char *p = k ? a->emb2.notes : a->emb.notes; p && *p;) {
                const char *e = strchr(p, '\n');
                int len = (int)(e ? e - p : (long)strlen(p));
                /* (sgm: a file neither encoder takes is said once) */
                int said = k && a->emb.notes && has_line(a->emb.notes, p, (size_t)len);
                if (!said) fprintf(stderr, "%s: warning: --embeddings: skipped %.*s\n", a->argv0, len, p);
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

/* The run's options with a --prompts line's own over them (runtime/promptline.h),
 * checked as the command line's are, and the size the line picks. 0, or -1
 * (ldm_fail). */
static int line_options(const App *a, const LdmLineArgs *la, Options *o, int *size) {
    *o = a->o;
    *size = a->run_size;
    if (la->has_H || la->has_W) {
        int H = la->has_H ? la->H : ldm_pipeline_sizes[a->run_size].config->H;
        int W = la->has_W ? la->W : ldm_pipeline_sizes[a->run_size].config->W;
        int k = ldm_pipeline_find_size(ldm_pipeline_sizes, ldm_pipeline_n_sizes, H, W, "txt2img", "TXT2IMG_DEFS");
        if (k < 0) return -1;
        if (k != a->run_size && (o->init_image || o->mask || o->init_noise || o->control_image))
            return ldm_fail("%dx%d: --init-image, --mask, --init-noise and --control-image are of the run's size, %dx%d: "
                            "a line cannot choose another size with them", W, H, CFG.W, CFG.H);
        *size = k;
    }
    if (la->negative) o->negative = la->negative;
    if (la->has_steps) o->steps = la->steps;
    if (la->has_cfg) {
        o->cfg_scale = la->cfg_scale;
        o->has_cfg = 1;
    }
    if (la->has_sampler) {
        o->sampler = la->sampler;
        /* the schedule a webui name of the run's sampler implied goes with it */
        if (o->has_implied_schedule) {
            o->has_schedule = o->has_implied_schedule = 0;
            o->schedule = LDM_SIGMAS_DISCRETE;
        }
        if (la->has_schedule) {
            if (o->has_schedule && o->schedule != la->schedule)
                return ldm_fail("sampler %s implies the %s schedule, but --schedule is %s", ldm_sampler_name(la->sampler),
                                ldm_sigma_kind_name(la->schedule), ldm_sigma_kind_name(o->schedule));
            o->schedule = la->schedule;
            o->has_schedule = 1;
        }
        if (!o->has_cfg) o->cfg_scale = o->sampler == LDM_SAMPLER_LCM || o->sampler == LDM_SAMPLER_TCD ? 1.0 : 7.5;
        if (check_options(o) != 0) return -1;
    }
    return 0;
}

/* A JSON string of s (which should be UTF-8). */
static json_t *jstr(const char *s) {
    json_t *j = json_string(s);
    return j ? j : json_string("(not UTF-8)");
}

/* One line of OUT/manifest.jsonl for the image of --prompts line `line`
 * (seconds < 0: it existed already and was skipped), with the settings in
 * use (a->o, CFG). */
static int manifest_line(const App *a, int line, const char *prompt, const char *png, uint64_t seed, double seconds) {
    const Options *o = &a->o;
    json_t *p = json_object();
    json_object_set_new(p, "prompt", jstr(prompt));
    json_object_set_new(p, "negative_prompt", jstr(o->negative));
    json_object_set_new(p, "steps", json_integer(o->steps));
    json_object_set_new(p, "cfg_scale", json_real(o->cfg_scale));
    json_object_set_new(p, "sampler", json_string(ldm_sampler_name(o->sampler)));
    json_object_set_new(p, "schedule", ldm_sampler_family(o->sampler) == 1 ? json_string(ldm_sigma_kind_name(o->schedule))
                                                                             : json_null());
    if (o->sampler == LDM_SAMPLER_DDIM) json_object_set_new(p, "eta", json_real(o->eta));
    char size[32];
    snprintf(size, sizeof size, "%dx%d", CFG.W, CFG.H);
    json_object_set_new(p, "size", json_string(size));
    json_object_set_new(p, "clip_skip", json_integer(o->clip_skip));
    json_object_set_new(p, "rng", json_string(ldm_rng_name(o->rng)));
    char *model = ldm_path_stem(o->weights);
    json_object_set_new(p, "model", jstr(model));
    free(model);
    json_t *m = json_object();
    json_object_set_new(m, "line", json_integer(line));
    const char *slash = strrchr(png, '/');
    json_object_set_new(m, "file", jstr(slash ? slash + 1 : png));
    json_object_set_new(m, "seed", seed <= INT64_MAX ? json_integer((json_int_t)seed) : json_real((double)seed));
    json_object_set_new(m, "parameters", p);
    if (seconds >= 0) json_object_set_new(m, "seconds", json_real(round(seconds * 1000) / 1000));
    else json_object_set_new(m, "skipped", json_true());
    char *text = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(m);
    char *path = ldm_xasprintf("%s/manifest.jsonl", o->out);
    int rc = text ? ldm_manifest_append(path, text) : ldm_fail("internal: cannot write the manifest line as JSON");
    free(path);
    free(text);
    return rc;
}

/* One --prompts line: its own settings (if any) over the run's. *skipped:
 * --skip-existing found its PNG. */
static int make_line_image(App *a, const LdmPromptLine *l, int i, int n, char **png_out, int *skipped) {
    const Options *o = &a->o;
    LdmLineArgs la;
    Options lo;
    int k = a->run_size;
    int rc = ldm_line_args_parse(l->text, CFG.timesteps, &la);
    if (rc == 0) rc = line_options(a, &la, &lo, &k);
    uint64_t seed = la.has_seed ? la.seed : ldm_line_seed(o->seed, l->line);
    *png_out = ldm_output_name(o->out, l->line, seed, ".png");
    *skipped = 0;
    if (rc != 0) {
        ldm_line_args_free(&la);
        return -1;
    }
    const char *png = *png_out;
    Options saved = a->o;
    a->o = lo;
    use_size(a, k);
    if (saved.skip_existing && access(png, F_OK) == 0) {
        /* PNGs are renamed into place complete (ldm_image_save): one that exists is done */
        *skipped = 1;
        rc = manifest_line(a, l->line, la.prompt, png, seed, -1);
    } else {
        char *lat = o->save_latent ? ldm_output_name(o->save_latent, l->line, seed, ".safetensors") : NULL;
        char *cnd = o->save_cond ? ldm_output_name(o->save_cond, l->line, seed, ".safetensors") : NULL;
        char label[96];
        if (ldm_pipeline_n_sizes > 1) snprintf(label, sizeof label, "[%d/%d] line %d, %dx%d", i + 1, n, l->line, CFG.W, CFG.H);
        else snprintf(label, sizeof label, "[%d/%d] line %d", i + 1, n, l->line);
        double t0 = ldm_now();
        rc = make_image(a, la.prompt, seed, png, lat, cnd, label);
        if (rc == 0) rc = manifest_line(a, l->line, la.prompt, png, seed, ldm_now() - t0);
        free(lat);
        free(cnd);
    }
    a->o = saved;
    use_size(a, a->run_size);
    ldm_line_args_free(&la);
    return rc;
}

/* --skip-existing: do all the lines' PNGs exist already? (Then the weights
 * need not be loaded.) A line that does not parse counts as missing. */
static int all_exist(const App *a, const LdmPromptList *list) {
    for (int i = 0; i < list->n; i++) {
        LdmLineArgs la;
        int ok = ldm_line_args_parse(list->items[i].text, CFG.timesteps, &la) == 0;
        uint64_t seed = la.has_seed ? la.seed : ldm_line_seed(a->o.seed, list->items[i].line);
        ldm_line_args_free(&la);
        char *png = ldm_output_name(a->o.out, list->items[i].line, seed, ".png");
        ok = ok && access(png, F_OK) == 0;
        free(png);
        if (!ok) return 0;
    }
    return 1;
}

/* Every line of the --prompts file (this shard's). */
static int run_lines(App *a, const LdmPromptList *list) {
    const Options *o = &a->o;
    if (list->n == 0 && a->pmode != LDM_PROGRESS_QUIET)
        fprintf(stderr, "%s: no prompts in %s for shard %d/%d: nothing to do\n", a->argv0, o->prompts, o->shard_k,
                o->shard_n);
    if (list->n > 0 && (ldm_mkdirs(o->out) != 0 || (o->save_latent && ldm_mkdirs(o->save_latent) != 0) ||
                        (o->save_cond && ldm_mkdirs(o->save_cond) != 0)))
        return -1;
    int n_skipped = 0;
    for (int i = 0; i < list->n; i++) {
        const LdmPromptLine *l = &list->items[i];
        char *png = NULL;
        int skipped = 0;
        if (make_line_image(a, l, i, list->n, &png, &skipped) != 0) {
            fprintf(stderr, "%s: error: %s:%d: %s\n", a->argv0, o->prompts, l->line, ldm_last_error());
            a->n_failed++;
        } else if (skipped) {
            n_skipped++;
            if (a->pmode != LDM_PROGRESS_QUIET)
                fprintf(stderr, "%s: line %d: %s exists: skipped (--skip-existing)\n", a->argv0, l->line, png);
        } else if (a->pmode == LDM_PROGRESS_LINES) {
            fprintf(stderr, "%s: line %d -> %s\n", a->argv0, l->line, png);
        }
        free(png);
    }
    if (n_skipped && a->pmode != LDM_PROGRESS_QUIET)
        fprintf(stderr, "%s: %d of %d images existed already: skipped\n", a->argv0, n_skipped, list->n);
    if (a->n_failed) return ldm_fail("%d of %d prompts failed", a->n_failed, list->n);
    return 0;
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

/* ----------------------------------------------------------------------------
 * Server glue (--listen): runtime/apps/server.c takes the HTTP requests and
 * calls serve_generate for each, one at a time, in this (the main) thread;
 * the request's settings replace the run's Options while its images are
 * made by make_image, which then encodes each PNG into memory
 * (serve_encode) and reports every step to the server (serve_step:
 * progress, /sdapi/v1/interrupt, SIGTERM).
 * ------------------------------------------------------------------------- */

typedef struct Serve {
    const LdmGenRequest *rq;
    LdmGenResult *out;
    int image;                /* index of the image being made */
    float *x0;                /* (n_lat) the last step's x0 prediction */
    int have_x0;
    int verdict;              /* the server's answer to the last step */
} Serve;

static int serve_step(void *ctx, const LdmStepInfo *info) {
    App *a = ctx;
    Serve *v = a->serve;
    if (info->denoised) {
        memcpy(v->x0, info->denoised, (size_t)a->n_lat * sizeof(float));
        v->have_x0 = 1;
    }
    /* /sdapi/v1/progress's current_image: a TAESD decode of this step's x0
     * prediction, while a client asks for it (--taesd or --preview-taesd) */
    LdmNets *tn = a->o.preview_taesd ? &a->taesd_prev : a->o.taesd ? &a->taesd_dec : NULL;
    if (tn && info->denoised && v->rq->wants_preview(v->rq->hctx)) {
        float *img = ldm_aligned_alloc((size_t)3 * CFG.H * CFG.W * sizeof(float));
        uint8_t *png;
        size_t n;
        if (decode_latent_taesd(a, tn, info->denoised, img) == 0 && ldm_image_encode_text(img, CFG.W, CFG.H, NULL, &png, &n) == 0)
            v->rq->preview(v->rq->hctx, png, n);
        free(img);
    }
    v->verdict = v->rq->step(v->rq->hctx, v->image, v->rq->n_images, info->step + 1, info->n_steps);
    /* an interrupt after the last step changes nothing */
    if (v->verdict == LDM_GEN_INTERRUPT && info->step + 1 >= info->n_steps) v->verdict = LDM_GEN_GO_ON;
    if (v->verdict == LDM_GEN_ABORT) return ldm_fail("the server is shutting down");
    if (v->verdict == LDM_GEN_INTERRUPT) return ldm_fail("interrupted");
    return 0;
}

/* After a failed sampling run: was it /sdapi/v1/interrupt? Then, as the
 * webui, the image is the decode of the last x0 prediction (x as it is if
 * no step ran): x = that, 1. Otherwise 0. */
static int serve_interrupted(App *a, float *x) {
    Serve *v = a->serve;
    if (!v || v->verdict != LDM_GEN_INTERRUPT) return 0;
    if (v->have_x0) memcpy(x, v->x0, (size_t)a->n_lat * sizeof(float));
    v->out->interrupted = 1;
    return 1;
}

/* The image as a PNG in memory (with the infotext chunk unless
 * --no-metadata), and its infotext, into the result. */
static int serve_encode(App *a, const float *img, const char *info, const char *prompt, uint64_t seed) {
    const char *kv[] = {"parameters", info, NULL};
    uint8_t *png;
    size_t n;
    if (ldm_image_encode_text(img, CFG.W, CFG.H, info ? kv : NULL, &png, &n) != 0) return -1;
    ldm_gen_result_add(a->serve->out, png, n, info ? ldm_xstrdup(info) : image_infotext(a, prompt, seed), seed);
    return 0;
}

/* LdmServerBackend.generate: the request's images. */
static int serve_generate(void *ctx, const LdmGenRequest *rq, LdmGenResult *out) {
    App *a = ctx;
    memset(out, 0, sizeof *out);
    if (rq->img2img && ldm_sampler_family(rq->sampler) == 2)
        return ldm_fail("sampler_name: %s: img2img is not defined for it; use a CompVis or k-diffusion sampler",
                        ldm_sampler_webui_name(rq->sampler)), LDM_GEN_EBAD;
    Options saved = a->o;
    Options *o = &a->o;
    o->negative = rq->negative;
    o->steps = rq->steps;
    o->cfg_scale = rq->cfg_scale;
    o->sampler = rq->sampler;
    o->has_schedule = rq->has_schedule;
    o->schedule = rq->has_schedule ? rq->schedule : LDM_SIGMAS_DISCRETE;
    o->clip_skip = rq->clip_skip;
    if (o->has_eta && o->sampler != LDM_SAMPLER_DDIM) o->has_eta = 0, o->eta = 0;
    if (o->has_rho && o->schedule != LDM_SIGMAS_KARRAS && o->schedule != LDM_SIGMAS_POLYEXPONENTIAL) o->has_rho = 0;
    if (o->sampler != LDM_SAMPLER_TCD) o->has_gamma = 0;
    use_size(a, rq->size);
    a->image = (float *)rq->init_image;
    a->mask_px = (float *)rq->mask;
    a->strength = rq->img2img ? rq->strength : a->hybrid ? 1.0 : 0.75;
    Serve v = {.rq = rq, .out = out, .x0 = ldm_aligned_alloc((size_t)a->n_lat * sizeof(float))};
    a->serve = &v;
    double t0 = ldm_now();
    free(a->init_latent); /* (the run's, from before the first request) */
    free(a->known);
    free(a->concat);
    a->init_latent = a->known = a->concat = NULL;
    int rc = prepare_images(a) == 0 ? LDM_GEN_OK : LDM_GEN_EBAD;
    for (int i = 0; i < rq->n_images && rc == LDM_GEN_OK && !out->interrupted; i++) {
        v.image = i;
        v.have_x0 = 0;
        v.verdict = rq->step(rq->hctx, i, rq->n_images, 0, rq->steps);
        if (v.verdict == LDM_GEN_ABORT) {
            rc = LDM_GEN_ESHUTDOWN;
            ldm_fail("the server is shutting down");
        } else if (v.verdict == LDM_GEN_INTERRUPT && i > 0) {
            out->interrupted = 1; /* the webui makes no more */
        } else {
            char label[64];
            snprintf(label, sizeof label, "request image %d/%d", i + 1, rq->n_images);
            v.verdict = LDM_GEN_GO_ON;
            if (make_image(a, rq->prompt, rq->seed + (uint64_t)i, NULL, NULL, NULL, label) != 0)
                rc = v.verdict == LDM_GEN_ABORT ? LDM_GEN_ESHUTDOWN : LDM_GEN_EBAD;
        }
    }
    if (rc == LDM_GEN_OK && a->pmode != LDM_PROGRESS_QUIET)
        fprintf(stderr, "%s: server: %d image%s %dx%d in %.2f s%s\n", a->argv0, out->n, out->n == 1 ? "" : "s",
                CFG.W, CFG.H, ldm_now() - t0, out->interrupted ? " (interrupted)" : "");
    if (rc != LDM_GEN_OK) ldm_gen_result_free(out);
    a->serve = NULL;
    free(v.x0);
    free(a->init_latent);
    free(a->known);
    free(a->concat);
    a->init_latent = a->known = a->concat = NULL;
    a->image = a->mask_px = NULL;
    a->o = saved;
    use_size(a, a->run_size);
    /* per-request timings are not kept (a server runs for long) */
    ldm_times_free(&a->times);
    memset(&a->times, 0, sizeof a->times);
    return rc;
}

/* --listen: serve until SIGINT/SIGTERM (the weights are loaded). */
static int serve(App *a) {
    const Options *o = &a->o;
    int *ws = ldm_xcalloc((size_t)ldm_pipeline_n_sizes, sizeof *ws), *hs = ldm_xcalloc((size_t)ldm_pipeline_n_sizes, sizeof *hs);
    for (int k = 0; k < ldm_pipeline_n_sizes; k++) {
        ws[k] = ldm_pipeline_sizes[k].config->W;
        hs[k] = ldm_pipeline_sizes[k].config->H;
    }
    const LdmModel *clip = net_model(a, NET_CLIP);
    int os = ldm_model_output(clip, "hidden_skip");
    char hash10[11];
    snprintf(hash10, sizeof hash10, "%.10s", a->model_sha256); /* hashed once, by run() */
    LdmServerBackend b = {
        .ctx = a,
        .generate = serve_generate,
        .n_sizes = ldm_pipeline_n_sizes,
        .widths = ws,
        .heights = hs,
        .max_steps = CFG.timesteps,
        .clip_skips = os >= 0 ? (int)clip->outputs[os].shape[0] : 1,
        .hybrid = a->hybrid,
        .model_name = a->model_name,
        .model_file = o->weights,
        .model_hash = hash10,
        .model_sha256 = a->model_sha256,
        .banner = CFG.banner,
    };
    const char *key = o->api_key ? o->api_key : getenv("LDM_API_KEY");
    LdmServerOptions so = {
        .listen = o->listen,
        .queue = o->queue,
        .max_body = (size_t)o->max_body,
        .api_key = key && *key ? key : NULL,
        .cors_origin = o->cors_origin,
        .quiet = o->quiet,
    };
    LdmServer *s = ldm_server_new(&b, &so);
    ldm_server_set_clip_skip(s, o->clip_skip);
    int rc = ldm_server_run(s);
    ldm_server_free(s);
    free(ws);
    free(hs);
    return rc;
}

static int run(App *a) {
    const Options *o = &a->o;
    LdmPromptList list = {0};
    if (o->prompts && ldm_prompts_read(o->prompts, o->shard_k, o->shard_n, &list) != 0) return -1;
    if (load_inputs(a) != 0) {
        ldm_prompts_free(&list);
        return -1;
    }
    if (o->prompts && o->skip_existing && list.n > 0 && all_exist(a, &list)) {
        /* a re-run of a finished shard: nothing to load */
        int rc = run_lines(a, &list);
        ldm_prompts_free(&list);
        return rc;
    }

    /* every size's networks, size k's at k * N_NETS: those of one network
     * share one weight set (ldm_nets_load_mapped), bound when it first runs */
    double t0 = ldm_now();
    const int per = n_main_nets();
    int n_models = ldm_pipeline_n_sizes * per;
    const LdmModel **models = ldm_xcalloc((size_t)n_models, sizeof *models);
    for (int k = 0; k < ldm_pipeline_n_sizes; k++) {
        for (int j = 0; j < N_NETS; j++) models[k * per + j] = ldm_pipeline_sizes[k].models[j];
        /* the controlled UNet: the plain one's weights (one weight set for both) */
        if (has_control()) models[k * per + NET_UNET_CONTROL] = control_unet_model(k);
    }
    char what[1024], sizes[900];
    snprintf(what, sizeof what, "%s at %s", CFG.config_path,
             ldm_pipeline_size_list(ldm_pipeline_sizes, ldm_pipeline_n_sizes, sizes, sizeof sizes));
    int rc = ldm_nets_load_vae(&a->nets, o->weights, o->vae, models, n_models, what);
    free(models);
    if (rc == 0 && a->sgm) {
        /* sgm: the second text encoder of every size */
        const LdmModel **m2 = ldm_xcalloc((size_t)ldm_pipeline_n_sizes, sizeof *m2);
        for (int k = 0; k < ldm_pipeline_n_sizes; k++) m2[k] = clip2_model(k);
        rc = ldm_nets_load(&a->clip2, o->weights, m2, ldm_pipeline_n_sizes, what);
        free(m2);
        if (rc == 0) ldm_nets_share_arena(&a->clip2, &a->nets);
    }
    if (rc == 0) rc = ldm_pipeline_scale_factor(&CFG, &a->nets.ckpt, &a->scale);
    if (rc == 0 && o->control_net) rc = load_control(a, sizes);
    if (rc == 0) {
        /* what LoRA keys are matched against: every network's weights */
        a->weight_names = ldm_nets_weight_names(&a->nets, &a->n_weight_names);
        if (a->sgm) {
            /* and the second text encoder's (kohya's lora_te2_*) */
            int n2;
            const char *const *w2 = ldm_nets_weight_names(&a->clip2, &n2);
            a->weight_names_own = ldm_xcalloc((size_t)(a->n_weight_names + n2) + 1, sizeof *a->weight_names_own);
            memcpy(a->weight_names_own, a->weight_names, (size_t)a->n_weight_names * sizeof *a->weight_names_own);
            memcpy(a->weight_names_own + a->n_weight_names, w2, (size_t)n2 * sizeof *a->weight_names_own);
            a->weight_names = a->weight_names_own;
            a->n_weight_names += n2;
        }
        rc = check_loras(a);
    }
    if (rc != 0) {
        ldm_prompts_free(&list);
        return -1;
    }
    ldm_times_add(&a->times, "load weights", ldm_now() - t0);
    if (!o->no_metadata || o->listen) {
        /* the webui's "Model hash" and "Model", and the server's sd-models
         * entry: the file hashed once (and cached across runs) */
        t0 = ldm_now();
        if (ldm_model_sha256(o->weights, a->model_sha256) != 0) {
            ldm_prompts_free(&list);
            return -1;
        }
        if (!o->no_metadata) snprintf(a->model_hash, sizeof a->model_hash, "%.10s", a->model_sha256);
        a->model_name = ldm_path_stem(o->weights);
        ldm_times_add(&a->times, "hash weights", ldm_now() - t0);
    }
    /* TAESD runs between UNet calls or instead of the VAE: one arena for all */
    LdmNets *tn[4] = {&a->taesd_dec, &a->taesd_enc, &a->taesd_prev, &a->control};
    for (int k = 0; k < 4; k++)
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

    if (o->listen) {
        rc = serve(a);
    } else if (!o->prompts && o->batch_count == 1) {
        rc = make_image(a, o->prompt, o->seed, o->out, o->save_latent, o->save_cond, "sampling");
    } else if (!o->prompts) {
        /* -b N: seeds seed, seed + 1, ...; files OUT, OUT_2, ... (sd.cpp) */
        rc = 0;
        for (int i = 0; i < o->batch_count && rc == 0; i++) {
            uint64_t seed = o->seed + (uint64_t)i;
            char *png = ldm_batch_name(o->out, i), *lat = o->save_latent ? ldm_batch_name(o->save_latent, i) : NULL;
            char *cnd = o->save_cond ? ldm_batch_name(o->save_cond, i) : NULL;
            char label[96];
            snprintf(label, sizeof label, "[%d/%d] seed %llu", i + 1, o->batch_count, (unsigned long long)seed);
            rc = make_image(a, o->prompt, seed, png, lat, cnd, label);
            if (rc != 0) ldm_fail("image %d of %d (seed %llu): %s", i + 1, o->batch_count, (unsigned long long)seed,
                                  ldm_last_error());
            else if (a->pmode == LDM_PROGRESS_LINES) fprintf(stderr, "%s: image %d -> %s\n", a->argv0, i + 1, png);
            free(png);
            free(lat);
            free(cnd);
        }
    } else {
        rc = run_lines(a, &list);
    }
    ldm_prompts_free(&list);
    return rc;
}

/* --version: the build's version, what it was compiled for, its sizes. */
static void print_version(FILE *fp, const char *argv0) {
    char sizes[1024];
    ldm_pipeline_size_list(ldm_pipeline_sizes, ldm_pipeline_n_sizes, sizes, sizeof sizes);
    fprintf(fp, "%s (ldmc, git %s)\nbuilt for: %s\nsizes (width x height): %s\nTAESD: %s\nControlNet: %s\n", argv0,
            ldm_version(), CFG.banner, sizes, has_taesd() ? "yes" : "no (TAESD=0)",
            has_control() ? "yes (--control-net)" : "no (CONTROLNET=0)");
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
    if (prc == 0) {
        /* -H/-W: a compiled size (one alone keeps the default's other side) */
        int H = a.o.has_H ? a.o.H : CFG.H, W = a.o.has_W ? a.o.W : CFG.W;
        a.run_size = ldm_pipeline_find_size(ldm_pipeline_sizes, ldm_pipeline_n_sizes, H, W, "txt2img", "TXT2IMG_DEFS");
        if (a.run_size < 0) {
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
    a.hybrid = !strcmp(CFG.conditioning_key, "hybrid");
    a.sgm = CFG.format && !strcmp(CFG.format, "sgm");
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
    if (a.pmode != LDM_PROGRESS_QUIET && a.times.images > 0) {
        ldm_times_print(&a.times, stderr);
        fprintf(stderr, "threads: %d (%s)\n", threads, ldm_threads_from_name(threads_from));
    }
    if (ldm_profiling) ldm_profile_report();
    ldm_nets_free(&a.nets);
    ldm_nets_free(&a.clip2);
    free(a.weight_names_own);
    ldm_nets_free(&a.taesd_dec);
    ldm_nets_free(&a.taesd_enc);
    ldm_nets_free(&a.taesd_prev);
    ldm_nets_free(&a.control);
    free(a.hint);
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
    free(a.model_name);
    ldm_cond_free(&a.uc);
    ldm_cond_free(&a.empty);
    ldm_embeddings_free(&a.emb);
    ldm_embeddings_free(&a.emb2);
    active_free(a.act, a.n_act);
    free((void *)a.o.loras);
    return rc;
}
