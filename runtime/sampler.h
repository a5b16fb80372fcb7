/*
 * sampler.h - the diffusion samplers: CompVis DDIM and PLMS, k-diffusion
 * Euler, Euler ancestral and DPM++ 2M; txt2img, img2img and inpainting by
 * latent blending.
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
 *   + inpainting: 1 more at the very start of every step (q_sample's randn_like)
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
} LdmSamplerKind;

/* "ddim", "plms", "euler", "euler_a", "dpmpp_2m". */
const char *ldm_sampler_name(LdmSamplerKind k);
/* Parse one of those names; -1 with an error listing them if unknown. */
int ldm_sampler_parse(const char *name, LdmSamplerKind *out);

/* What the optional per-step callback sees, after step `step` has run. */
typedef struct LdmStepInfo {
    int step;              /* 0-based index of this step in the run */
    int n_steps;           /* steps in the run (img2img: only the ones that run) */
    float t;               /* UNet timestep of the step's (first) model call */
    float sigma;           /* noise level: k-diffusion sigma_i; DDIM/PLMS sqrt((1-a)/a) */
    const float *x;        /* (n) latent the step started from (after inpaint blending) */
    const float *denoised; /* (n) x0 prediction: DDIM/PLMS pred_x0, k-diffusion denoised */
    const float *x_next;   /* (n) latent after the step (before the final inpaint paste) */
} LdmStepInfo;
/* Return 0 to go on; anything else stops sampling and ldm_sample returns -1
 * (record the reason with ldm_fail first). */
typedef int (*LdmStepFn)(void *ctx, const LdmStepInfo *info);

typedef struct LdmSampler {
    LdmSamplerKind kind;
    int steps;              /* S: DDIM/PLMS ddim_steps (may run a few more, see LdmDdim), k-samplers n */
    double eta;             /* DDIM eta (0 = deterministic); PLMS requires 0; unused otherwise */
    LdmSigmaKind sigmas;    /* k-samplers: discrete (model_wrap.get_sigmas) or karras */
    int64_t n;              /* latent floats, batch included: B * C * H * W */
    int64_t plane;          /* H * W of the latent (size of `mask`); 0 if no mask */

    /* img2img: start from init_latent (n floats, 0.18215 * the VAE posterior
     * mean) noised to the level of step int(strength * steps) counted from
     * the end. 0 < strength < 1; strength 0 or 1 means start from pure
     * noise (txt2img), with init_latent then only used by the mask. */
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
 */
int ldm_sample(const LdmSchedule *s, const LdmSampler *p, float *x);

/* Number of steps ldm_sample will run for these parameters (for progress
 * output), or -1 with an error for invalid parameters. */
int ldm_sample_count_steps(const LdmSchedule *s, const LdmSampler *p);

#endif
