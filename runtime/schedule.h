/*
 * schedule.h - the noise schedules of Latent Diffusion / Stable Diffusion v1.
 *
 * Everything a sampler needs to know about the noise levels, computed exactly
 * as the reference does (same float64/float32 steps, same rounding points):
 *
 *   - the DDPM schedule of LatentDiffusion.register_schedule
 *     (ldm/models/diffusion/ddpm.py, make_beta_schedule 'linear'):
 *     betas = linspace(sqrt(linear_start), sqrt(linear_end), T)^2 and
 *     alphas_cumprod = cumprod(1 - betas), both in float64, kept as float32
 *     buffers;
 *   - the DDIM sub-schedule of DDIMSampler.make_schedule
 *     (ldm/modules/diffusionmodules/util.py make_ddim_timesteps and
 *     make_ddim_sampling_parameters), also used by PLMSSampler;
 *   - the k-diffusion view of the same model (k_diffusion/external.py
 *     DiscreteSchedule / CompVisDenoiser, k_diffusion/sampling.py
 *     get_sigmas_karras): sigma = sqrt((1 - ac) / ac), the discrete and Karras
 *     step schedules and the sigma -> fractional timestep map.
 */
#ifndef LDM_SCHEDULE_H
#define LDM_SCHEDULE_H

#include <stdint.h>

/* ---- DDPM schedule (LatentDiffusion.register_schedule) ------------------ */

typedef struct LdmSchedule {
    int T;                    /* number of training timesteps (1000) */
    double *alphas_cumprod64; /* (T) cumprod(1 - betas) in float64 */
    float *betas;             /* (T) float32 copy of the float64 betas */
    float *alphas_cumprod;    /* (T) float32 copy: the model buffer every sampler uses */
    float *alphas_cumprod_prev; /* (T) [1, ac[0], ..., ac[T-2]] (float64 -> float32) */
    float *sqrt_alphas_cumprod; /* (T) sqrt in float64 -> float32 (q_sample) */
    float *sqrt_one_minus_alphas_cumprod; /* (T) sqrt(1 - ac) in float64 -> float32 (q_sample) */
    float *sigmas;            /* (T) k-diffusion sqrt((1 - ac) / ac) in float32, increasing */
    float *log_sigmas;        /* (T) log(sigmas) in float32 */
    double linear_start;      /* the 'linear' schedule's ends (ldm_schedule_init), 0 when built */
    double linear_end;        /* from an alphas_cumprod buffer: the diffusers samplers need them */
} LdmSchedule;

/* The 'linear' schedule of make_beta_schedule. linear_start/linear_end are
 * the config values (0.00085/0.012 for SD v1, 0.0015/0.0195 for the LDM
 * CelebA-HQ models), T the config's `timesteps`. */
int ldm_schedule_init(LdmSchedule *s, double linear_start, double linear_end, int T);
/* The same from an alphas_cumprod buffer read from a checkpoint (float32).
 * The float64 arrays are then the float32 values widened. */
int ldm_schedule_init_from_alphas(LdmSchedule *s, const float *alphas_cumprod, int T);
void ldm_schedule_free(LdmSchedule *s);

/* ---- DDIM sub-schedule (DDIMSampler.make_schedule, 'uniform') ----------- */

typedef struct LdmDdim {
    int n;                   /* number of DDIM steps; ceil(T / (T / S)), can exceed the requested S */
    int *timesteps;          /* (n) range(0, T, T // S) + 1, increasing: 1, 101, ..., 901 */
    float *alphas;           /* (n) alphas_cumprod[timesteps[i]] */
    float *alphas_prev;      /* (n) alphas_cumprod[timesteps[i-1]], and alphas_cumprod[0] for i = 0 */
    float *sqrt_one_minus_alphas; /* (n) sqrt(1 - alphas) in float32 */
    float *sigmas;           /* (n) eta * sqrt((1-a_prev)/(1-a) * (1 - a/a_prev)), float64 -> float32 */
} LdmDdim;

/* DDIM constants for `steps` (the S of DDIMSampler.sample) and `eta`.
 * Fails (with the reason) where the reference fails: steps < 1 or > T, or a
 * step count whose last timestep would be T (e.g. S = 3 for T = 1000: the
 * reference indexes alphas_cumprod[1000]). */
int ldm_ddim_make(const LdmSchedule *s, int steps, double eta, LdmDdim *d);
void ldm_ddim_free(LdmDdim *d);

/* ---- k-diffusion sigmas (CompVisDenoiser) ------------------------------- */

typedef enum LdmSigmaKind {
    LDM_SIGMAS_DISCRETE, /* model_wrap.get_sigmas(n): t = linspace(T-1, 0, n), log-linear interpolation */
    LDM_SIGMAS_KARRAS,   /* get_sigmas_karras(n, sigmas[0], sigmas[T-1], rho = 7) */
    LDM_SIGMAS_EXPONENTIAL,     /* get_sigmas_exponential(n, sigmas[0], sigmas[T-1]) */
    LDM_SIGMAS_POLYEXPONENTIAL, /* get_sigmas_polyexponential(n, sigmas[0], sigmas[T-1], rho = 1) */
    LDM_SIGMAS_AYS,      /* Align Your Steps, SD v1 table (ComfyUI AlignYourStepsScheduler 'SD1') */
    LDM_SIGMAS_SGM,      /* Stability-AI sgm (SDXL): LegacyDDPMDiscretization's integer timesteps
                          * int(linspace(T-1, 0, n, endpoint=False)) and DiscreteDenoiser: the
                          * sampler starts at noise * sqrt(1 + sigma_0^2) and the UNet gets the
                          * index of the nearest table sigma (ldm_sgm_sigma_index) */
} LdmSigmaKind;

/* "discrete", "karras", "exponential", "polyexponential", "ays" (for
 * messages and command lines). */
const char *ldm_sigma_kind_name(LdmSigmaKind k);
/* The webui's "Schedule type" label ("Karras", "Uniform", ...). */
const char *ldm_sigma_kind_webui_name(LdmSigmaKind k);
/* Parse one of those names ("normal" is accepted for discrete, as
 * k-diffusion and ComfyUI call it); -1 with a message listing them. */
int ldm_sigma_kind_parse(const char *name, LdmSigmaKind *out);
/* "discrete, karras, exponential, polyexponential, ays" */
const char *ldm_sigma_kind_list(void);
/* The rho a schedule uses when none is given: 7 (karras), 1
 * (polyexponential), 0 for the others (no rho). */
double ldm_sigma_default_rho(LdmSigmaKind k);

/* The steps + 1 noise levels of a k-diffusion run (decreasing, last = 0),
 * rho the default of the kind. */
int ldm_kdiff_sigmas(const LdmSchedule *s, LdmSigmaKind kind, int steps, float *out);
/* The same with rho given (karras, polyexponential; rho > 0; ignored by the
 * other kinds; 0 = the default). */
int ldm_kdiff_sigmas_rho(const LdmSchedule *s, LdmSigmaKind kind, int steps, double rho, float *out);
/* The schedules that only need the end points (karras, exponential,
 * polyexponential, ays: the last ignores them), sigma_min/sigma_max as the
 * Python floats the reference passes (sigmas[0].item(), sigmas[-1].item()). */
int ldm_sigmas_from_range(LdmSigmaKind kind, int steps, double sigma_min, double sigma_max, double rho, float *out);

/* ---- the diffusers schedulers' own schedule ------------------------------- */

/* diffusers 'scaled_linear' betas in float32 (LCMScheduler, TCDScheduler,
 * UniPCMultistepScheduler): betas = torch.linspace(beta_start ** 0.5,
 * beta_end ** 0.5, T, dtype=torch.float32) ** 2; alphas_cumprod =
 * torch.cumprod(1 - betas, dim=0). out: T floats. Not the checkpoint's
 * buffer (float64 computation): they differ by ~1e-7 relative. */
void ldm_diffusers_alphas_cumprod(double beta_start, double beta_end, int T, float *out);
/* LCMScheduler / TCDScheduler.set_timesteps(steps) with
 * original_inference_steps = orig (50): the LCM grid
 * [1..orig] * (T // orig) - 1 reversed, indexed at
 * floor(linspace(0, orig, steps, endpoint=False)). -1 with a message when
 * steps > orig or T // orig = 0. */
int ldm_lcm_timesteps(int T, int orig, int steps, int *out);
/* The same with set_timesteps' `strength` (LatentConsistencyModelImg2ImgPipeline
 * only): the grid shortened to [1..int(orig * strength)] * (T // orig) - 1,
 * the steps spread over it (4 steps at 0.5: 499, 379, 259, 139); -1 when
 * fewer grid points than steps remain. ldm_sample does not use it: the
 * executables' img2img is StableDiffusionImg2ImgPipeline's (sampler.h). */
int ldm_lcm_timesteps_strength(int T, int orig, int steps, double strength, int *out);
/* UniPCMultistepScheduler.set_timesteps(steps) ('linspace' spacing):
 * round(linspace(0, T - 1, steps + 1))[::-1][:-1] (numpy round half to even). */
int ldm_unipc_timesteps(int T, int steps, int *out);
/* UniPC's sigmas: ((1 - ac) / ac) ** 0.5 in float32 at the `steps`
 * timesteps ts (np.interp at integers = the table's entries), then 0
 * (final_sigmas_type "zero"): steps + 1 values. ac: the diffusers table. */
void ldm_unipc_sigmas(const float *ac, const int *ts, int steps, float *out);
/* DiscreteSchedule.t_to_sigma: sigma at a fractional timestep t in [0, T-1]. */
float ldm_t_to_sigma(const LdmSchedule *s, float t);
/* DiscreteSchedule.sigma_to_t (quantize=False): the fractional UNet timestep
 * of noise level sigma > 0, by linear interpolation in log sigma. */
float ldm_sigma_to_t(const LdmSchedule *s, float sigma);

/* ---- sgm (Stability-AI generative-models) DiscreteDenoiser ---------------- */

/* The denoiser's sigma table (T values, ascending): sqrt((1 - ac_i) / ac_i)
 * with the ratio computed in float64 from the float64 alphas_cumprod, rounded
 * to float32, the square root in float32 (LegacyDDPMDiscretization.get_sigmas). */
void ldm_sgm_sigma_table(const LdmSchedule *s, float *out);
/* DiscreteDenoiser.sigma_to_idx: argmin_i |sigma - table[i]| (first on ties). */
int ldm_sgm_sigma_index(const float *table, int T, float sigma);
/* The sampler's n timestep indices, descending: int(linspace(T-1, 0, n,
 * endpoint=False)) (999, 899, ..., 99 for n = 10); their sigmas are
 * table[idx[k]]. n must be 1..T. */
int ldm_sgm_timesteps(int T, int n, int *idx);

/* torch.linspace(start, end, n) in float32 / float64, computed the way
 * torch 1.13's CPU kernel does (start + i * step, in vector blocks), so the
 * points are bit-identical to the reference's. */
void ldm_linspace_f32(float start, float end, int n, float *out);
void ldm_linspace_f64(double start, double end, int n, double *out);

#endif
