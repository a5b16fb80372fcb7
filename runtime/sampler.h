/*
 * sampler.h - the diffusion samplers: CompVis DDIM and PLMS; k-diffusion
 * Euler, Euler ancestral, Heun, DPM2, DPM++ 2S ancestral, DPM++ 2M, DPM++
 * SDE and DPM++ 2M SDE; diffusers LCM, TCD and UniPC. txt2img, img2img
 * and inpainting by latent blending (CompVis / k-diffusion conventions for
 * theirs, diffusers' img2img and inpainting pipelines for LCM, TCD, UniPC).
 *
 * The network is not linked in: a sampler calls the model through LdmEpsFn
 * (the generated UNet plus classifier-free guidance, written by the caller)
 * and asks for Gaussian noise through LdmNoiseFn (the torch-compatible RNG).
 * Noise is requested in the same order and sizes as the reference code draws
 * it, one latent-shaped draw at a time, so a seed reproduces the reference
 * run even when a draw is multiplied by zero:
 *
 *   sampler   draws per step (reference)
 *   ddim      1, after the model call (p_sample_ddim noise_like, also at eta 0)
 *   plms      1 after the model call; 2 in the first step (around its second call)
 *   euler     1, before the model call (sample_euler draws eps for s_churn even at 0)
 *   euler_a   1, after the model call, except on the last step (sigma_next = 0)
 *   dpmpp_2m  0
 *   heun, dpm2    1, before the first model call (drawn for s_churn even at 0)
 *   dpmpp_2s_a    1, after both model calls, except on the last step
 *   dpmpp_sde     noise_sampler randn: 2 per step except the last, one after
 *                 each model call; brownian: none (the tree has its own seeds)
 *   dpmpp_2m_sde  randn: 1 after the model call except on the last step;
 *                 brownian: none
 *   lcm           1 after the model call, except on the last step
 *   tcd           as lcm when gamma > 0; none at gamma 0
 *   uni_pc        0
 *   + inpainting: 1 more at the very start of every step (q_sample's randn_like),
 *     except lcm, tcd, uni_pc (diffusers re-uses the initial draw)
 *
 * All arithmetic is float32, in the reference's order of operations.
 */
#ifndef LDM_SAMPLER_H
#define LDM_SAMPLER_H

#include <stdint.h>

#include "schedule.h"

/* The model: eps = (guided) noise prediction for the latent x_in (n floats,
 * batch included) at UNet timestep t (integer-valued for DDIM/PLMS,
 * fractional for the k-samplers). For the k-samplers x_in is already scaled
 * by c_in = 1/sqrt(sigma^2 + 1). Classifier-free guidance is the callback's
 * business (one UNet call on [uncond, cond], e = e_u + scale * (e_c - e_u)).
 * Returns 0, or -1 after ldm_fail(). */
typedef int (*LdmEpsFn)(void *ctx, const float *x_in, float t, float *eps_out);

/* Standard normal noise: fill out[0..n-1] (one torch.randn of the latent's shape). */
typedef void (*LdmNoiseFn)(void *ctx, float *out, int64_t n);

typedef enum LdmSamplerKind {
    LDM_SAMPLER_DDIM,     /* CompVis DDIMSampler (eta >= 0) */
    LDM_SAMPLER_PLMS,     /* CompVis PLMSSampler (eta must be 0) */
    LDM_SAMPLER_EULER,    /* k_diffusion.sampling.sample_euler (s_churn = 0) */
    LDM_SAMPLER_EULER_A,  /* sample_euler_ancestral (eta = 1, s_noise = 1) */
    LDM_SAMPLER_DPMPP_2M, /* sample_dpmpp_2m */
    LDM_SAMPLER_HEUN,     /* sample_heun (s_churn = 0) */
    LDM_SAMPLER_DPM2,     /* sample_dpm_2 (s_churn = 0) */
    LDM_SAMPLER_DPMPP_2S_A,   /* sample_dpmpp_2s_ancestral (eta = 1, s_noise = 1) */
    LDM_SAMPLER_DPMPP_SDE,    /* sample_dpmpp_sde (eta = 1, s_noise = 1, r = 1/2) */
    LDM_SAMPLER_DPMPP_2M_SDE, /* sample_dpmpp_2m_sde (eta = 1, s_noise = 1, solver 'midpoint') */
    LDM_SAMPLER_LCM,      /* diffusers LCMScheduler (original_inference_steps 50, timestep_scaling 10) */
    LDM_SAMPLER_TCD,      /* diffusers TCDScheduler (original_inference_steps 50, eta = gamma) */
    LDM_SAMPLER_UNI_PC,   /* diffusers UniPCMultistepScheduler (bh2, order 2, predict_x0, lower_order_final) */
} LdmSamplerKind;

/* "ddim", "plms", "euler", "euler_a", "dpmpp_2m", "heun", "dpm2",
 * "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m_sde", "lcm", "tcd", "uni_pc". */
const char *ldm_sampler_name(LdmSamplerKind k);
/* The webui's display name ("DPM++ 2M", "Euler a", "DDIM", ...). */
const char *ldm_sampler_webui_name(LdmSamplerKind k);
/* Every sampler, in the order of ldm_sampler_list; returns the count. */
int ldm_sampler_all(const LdmSamplerKind **out);
/* Those names, comma-separated (for messages). */
const char *ldm_sampler_list(void);
/* Parse one of those names, or a display name of the AUTOMATIC1111 webui
 * ("Euler a", "DPM++ 2M SDE", "LCM", "UniPC", ...; case and the characters
 * ' ', '-', '_', '+' are not significant beyond those). A webui name that
 * also names a schedule ("DPM++ 2M Karras", "DPM++ SDE Karras",
 * "DPM++ 2M SDE Exponential") sets *schedule when schedule is not NULL
 * (else it is refused); *schedule is left alone otherwise. -1 with an error
 * listing the accepted names if unknown. */
int ldm_sampler_parse_ex(const char *name, LdmSamplerKind *out, int *has_schedule, LdmSigmaKind *schedule);
int ldm_sampler_parse(const char *name, LdmSamplerKind *out);

/* Family of a sampler: 0 CompVis (ddim, plms), 1 k-diffusion (sigmas),
 * 2 diffusers (lcm, tcd, uni_pc: their own integer timesteps). */
int ldm_sampler_family(LdmSamplerKind k);

/* Noise of the SDE samplers (dpmpp_sde, dpmpp_2m_sde). */
typedef enum LdmNoiseSamplerKind {
    LDM_NOISE_BROWNIAN, /* k-diffusion BrownianTreeNoiseSampler: torchsde BrownianTree from `seed` (brownian.h) */
    LDM_NOISE_RANDN,    /* default_noise_sampler: plain draws from noise_fn (stable-diffusion.cpp) */
} LdmNoiseSamplerKind;
const char *ldm_noise_sampler_name(LdmNoiseSamplerKind k);
int ldm_noise_sampler_parse(const char *name, LdmNoiseSamplerKind *out);

/* What the optional per-step callback sees, after step `step` has run. */
typedef struct LdmStepInfo {
    int step;              /* 0-based index of this step in the run */
    int n_steps;           /* steps in the run (img2img: only the ones that run) */
    float t;               /* UNet timestep of the step's (first) model call */
    float sigma;           /* noise level: k-diffusion sigma_i; DDIM/PLMS sqrt((1-a)/a) */
    const float *x;        /* (n) latent the step started from (after inpaint blending) */
    const float *denoised; /* (n) x0 prediction: DDIM/PLMS pred_x0, k-diffusion denoised (of the step's first
                            * model call), LCM denoised, UniPC x0_pred; TCD: pred_noised_sample (its
                            * x0 re-noised to timestep s, as the reference reports it) */
    const float *x_next;   /* (n) latent after the step (before the final inpaint paste) */
} LdmStepInfo;
/* Return 0 to go on; anything else stops sampling and ldm_sample returns -1
 * (record the reason with ldm_fail first). */
typedef int (*LdmStepFn)(void *ctx, const LdmStepInfo *info);

typedef struct LdmSampler {
    LdmSamplerKind kind;
    int steps;              /* S: DDIM/PLMS ddim_steps (may run a few more, see LdmDdim), k-samplers n */
    double eta;             /* DDIM eta (0 = deterministic); PLMS requires 0; unused otherwise */
    LdmSigmaKind sigmas;    /* k-samplers: discrete (model_wrap.get_sigmas), karras, exponential, ... */
    double rho;             /* karras / polyexponential rho; 0 = their default (7 / 1) */
    double gamma;           /* tcd: gamma (TCDScheduler.step's eta), in [0, 1] */
    LdmNoiseSamplerKind noise_sampler; /* dpmpp_sde, dpmpp_2m_sde: brownian (default) or randn */
    uint64_t seed;          /* brownian: the tree's entropy (the run's seed) */
    int64_t n;              /* latent floats, batch included: B * C * H * W */
    int64_t plane;          /* H * W of the latent (size of `mask`); 0 if no mask */

    /* img2img: start from init_latent (n floats, 0.18215 * the VAE posterior
     * mean) noised to the level of step int(strength * steps) counted from
     * the end. 0 < strength < 1; strength 0 or 1 means start from pure
     * noise (txt2img), with init_latent then only used by the mask
     * (lcm, tcd, uni_pc: strength 1 without a mask is img2img, see below). */
    const float *init_latent;
    double strength;

    /* inpainting: mask (plane floats, broadcast over batch and channels),
     * 1 on KNOWN latent pixels, 0 where the model paints, fractions blend.
     * Needs init_latent. At the start of every step the known region is
     * replaced by init_latent noised to the current level (CompVis
     * ddim_sampling `mask`/`x0`), and at the end it is pasted back exactly. */
    const float *mask;

    LdmEpsFn eps_fn;        /* required */
    void *eps_ctx;
    LdmNoiseFn noise_fn;    /* may be NULL when no draw matters (ddim eta 0, plms, euler, dpmpp_2m, no mask) */
    void *noise_ctx;
    LdmStepFn step_fn;      /* optional */
    void *step_ctx;

    /* 1: eps_fn returns the (guided) v-prediction of a `parameterization:
     * "v"` model (SD 2.x 768-v), v = sqrt(a) eps - sqrt(1-a) x0, and every
     * sampler converts it as its reference does for such models:
     *   ddim: e_t = sqrt_alphas_cumprod[t] v + sqrt_one_minus_alphas_cumprod[t] x,
     *         pred_x0 = sqrt_alphas_cumprod[t] x - sqrt_one_minus_alphas_cumprod[t] v
     *         (the stablediffusion DDIMSampler's v branch, the checkpoint buffers of s)
     *   plms: e_t as ddim, then its usual eps update
     *   k-samplers: k-diffusion's CompVisVDenoiser, D = x c_skip + v c_out with
     *         c_skip = 1/(sigma^2 + 1), c_out = -sigma/sqrt(sigma^2 + 1), the UNet on c_in x
     *   lcm, tcd, uni_pc: diffusers' prediction_type "v_prediction" through
     *         eps = sqrt(a) v + sqrt(1-a) x with the scheduler's own alphas_cumprod
     *         (its x0 = sqrt(a) x - sqrt(1-a) v, the same model)
     * 0: eps_fn returns eps (every SD v1 / LDM model). */
    int v_pred;
} LdmSampler;

/*
 * Run the sampler. x (n floats): on entry one standard normal draw of the
 * latent's shape (x_T for txt2img: torch.randn(shape) after the seed; the
 * stochastic_encode noise for img2img); on return the final latent (what
 * decode_first_stage takes). Returns 0, or -1 with ldm_last_error() set.
 *
 * img2img conventions:
 *   ddim/plms: t_enc = int(strength * steps); z_enc = sqrt(A[t_enc]) x0 +
 *     sqrt(1 - A[t_enc]) noise (DDIMSampler.stochastic_encode), then the steps
 *     at DDIM indices t_enc-1 .. 0 (DDIMSampler.decode: the CompVis
 *     off-by-one, the noise is added one level above the first step, kept).
 *   k-samplers: the full `steps` sigma schedule is built, t_enc =
 *     int(strength * steps) and the run starts at index steps - t_enc:
 *     x = x0 + sigmas[steps - t_enc] * noise, then the last t_enc steps (the
 *     k-diffusion form of the same noising; the first step sees exactly the
 *     noise level it was noised to, as in the common k-diffusion UIs).
 *     The SDE samplers' Brownian tree spans the sigmas that run.
 *   lcm, tcd, uni_pc: diffusers' StableDiffusionImg2ImgPipeline /
 *     StableDiffusionInpaintPipeline (the pipelines LCM-LoRA and TCD-LoRA
 *     run in on an SD checkpoint): the full `steps` timesteps, init_timestep
 *     = min(int(strength * steps), steps), t_start = steps - init_timestep,
 *     the timesteps[t_start:] run (get_timesteps, set_begin_index(t_start);
 *     0 of them is an error) with the scheduler's state fresh at the first
 *     (UniPC: first order, no corrector); x = add_noise(init_latent, noise,
 *     timesteps[t_start]) with the scheduler's own add_noise (LCM/TCD:
 *     sqrt(a) x0 + sqrt(1 - a) noise; UniPC: alpha(sigma) x0 + sigma_vp
 *     noise). Strength 1 WITHOUT a mask is still img2img (the img2img
 *     pipeline noises the init latent to timesteps[0]); with a mask it
 *     starts from the noise itself (the inpainting pipeline's
 *     is_strength_max). Inpainting (4-channel UNet): after every step
 *     x = mask' * add_noise(init_latent, noise, timesteps[i + 1]) +
 *     (1 - mask') * x with the SAME noise x started from (no draws; mask' =
 *     1 - (1 - mask) as diffusers computes it), init_latent itself after the
 *     last step; no separate final paste.
 *
 * The diffusers schedulers work on the VP-space latent (x = x_T, the UNet
 * gets x and the integer timestep) with their own float32 alphas_cumprod
 * (ldm_diffusers_alphas_cumprod from s->linear_start / linear_end).
 * lcm/tcd: 1..50 steps (the LCM grid of original_inference_steps 50).
 */
int ldm_sample(const LdmSchedule *s, const LdmSampler *p, float *x);

/* Number of steps ldm_sample will run for these parameters (for progress
 * output), or -1 with an error for invalid parameters. */
int ldm_sample_count_steps(const LdmSchedule *s, const LdmSampler *p);

/* lcm, tcd, uni_pc: the UNet timesteps of the steps ldm_sample will run
 * (img2img: the last ones), into out (room for p->steps ints); returns
 * their number, or -1 with an error (also for the other samplers). */
int ldm_sample_timesteps(const LdmSchedule *s, const LdmSampler *p, int *out);

#endif
