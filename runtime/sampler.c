/*
 * sampler.c - diffusion samplers (see sampler.h).
 *
 * Reference code, in the order the functions appear:
 *   CompVis ldm/models/diffusion/ddim.py  DDIMSampler.ddim_sampling, p_sample_ddim,
 *                                         stochastic_encode, decode
 *   CompVis ldm/models/diffusion/plms.py  PLMSSampler.plms_sampling, p_sample_plms
 *   CompVis ldm/models/diffusion/ddpm.py  LatentDiffusion.q_sample (inpainting)
 *   k-diffusion k_diffusion/external.py   DiscreteEpsDDPMDenoiser.forward
 *   k-diffusion k_diffusion/sampling.py   sample_euler, sample_euler_ancestral,
 *                                         get_ancestral_step, sample_dpmpp_2m
 *   diffusers schedulers/scheduling_{lcm,tcd,unipc_multistep}.py  step, add_noise
 *   diffusers pipelines/stable_diffusion/pipeline_stable_diffusion_img2img.py
 *     and pipeline_stable_diffusion_inpaint.py  get_timesteps, prepare_latents,
 *     the 4-channel latent blending (lcm, tcd, uni_pc img2img / inpainting)
 * Every elementwise expression keeps the reference's float32 order of
 * operations ("in PyTorch this is ..." comments give the original line).
 */
#include "sampler.h"

/* Round every float32 product and sum separately, as PyTorch does: no FMA
 * contraction (GCC's default in gnu11 mode once -march=native enables FMA). */
#pragma GCC optimize("fp-contract=off")

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "brownian.h"
#include "torchmath.h"
#include "util.h"

const char *ldm_sampler_name(LdmSamplerKind k) {
    switch (k) {
    case LDM_SAMPLER_DDIM: return "ddim";
    case LDM_SAMPLER_PLMS: return "plms";
    case LDM_SAMPLER_EULER: return "euler";
    case LDM_SAMPLER_EULER_A: return "euler_a";
    case LDM_SAMPLER_DPMPP_2M: return "dpmpp_2m";
    case LDM_SAMPLER_HEUN: return "heun";
    case LDM_SAMPLER_DPM2: return "dpm2";
    case LDM_SAMPLER_DPMPP_2S_A: return "dpmpp_2s_a";
    case LDM_SAMPLER_DPMPP_SDE: return "dpmpp_sde";
    case LDM_SAMPLER_DPMPP_2M_SDE: return "dpmpp_2m_sde";
    case LDM_SAMPLER_LCM: return "lcm";
    case LDM_SAMPLER_TCD: return "tcd";
    case LDM_SAMPLER_UNI_PC: return "uni_pc";
    }
    return "?";
}

/* The AUTOMATIC1111 webui's display names (modules/sd_samplers_kdiffusion.py,
 * sd_samplers_timesteps.py, sd_samplers_lcm.py): what its infotext's
 * "Sampler:" and /sdapi/v1/samplers say. TCD has no webui sampler; ComfyUI's
 * name is used. */
const char *ldm_sampler_webui_name(LdmSamplerKind k) {
    switch (k) {
    case LDM_SAMPLER_DDIM: return "DDIM";
    case LDM_SAMPLER_PLMS: return "PLMS";
    case LDM_SAMPLER_EULER: return "Euler";
    case LDM_SAMPLER_EULER_A: return "Euler a";
    case LDM_SAMPLER_DPMPP_2M: return "DPM++ 2M";
    case LDM_SAMPLER_HEUN: return "Heun";
    case LDM_SAMPLER_DPM2: return "DPM2";
    case LDM_SAMPLER_DPMPP_2S_A: return "DPM++ 2S a";
    case LDM_SAMPLER_DPMPP_SDE: return "DPM++ SDE";
    case LDM_SAMPLER_DPMPP_2M_SDE: return "DPM++ 2M SDE";
    case LDM_SAMPLER_LCM: return "LCM";
    case LDM_SAMPLER_TCD: return "TCD";
    case LDM_SAMPLER_UNI_PC: return "UniPC";
    }
    return "?";
}

static const LdmSamplerKind all_samplers[] = {
    LDM_SAMPLER_DDIM,      LDM_SAMPLER_PLMS,       LDM_SAMPLER_EULER,     LDM_SAMPLER_EULER_A,
    LDM_SAMPLER_DPMPP_2M,  LDM_SAMPLER_HEUN,       LDM_SAMPLER_DPM2,      LDM_SAMPLER_DPMPP_2S_A,
    LDM_SAMPLER_DPMPP_SDE, LDM_SAMPLER_DPMPP_2M_SDE, LDM_SAMPLER_LCM,    LDM_SAMPLER_TCD,
    LDM_SAMPLER_UNI_PC,
};
#define N_SAMPLERS ((int)(sizeof all_samplers / sizeof all_samplers[0]))

int ldm_sampler_all(const LdmSamplerKind **out) {
    *out = all_samplers;
    return N_SAMPLERS;
}

const char *ldm_sampler_list(void) {
    return "ddim, plms, euler, euler_a, dpmpp_2m, heun, dpm2, dpmpp_2s_a, dpmpp_sde, dpmpp_2m_sde, lcm, tcd, uni_pc";
}

/* lower case, "++" -> "pp", without ' ', '-', '_' */
static void norm_name(const char *in, char *out, size_t size) {
    size_t k = 0;
    for (const char *c = in; *c && k + 3 < size; c++) {
        if (*c == ' ' || *c == '-' || *c == '_') continue;
        if (c[0] == '+' && c[1] == '+') {
            out[k++] = 'p';
            out[k++] = 'p';
            c++;
            continue;
        }
        out[k++] = (char)((*c >= 'A' && *c <= 'Z') ? *c - 'A' + 'a' : *c);
    }
    out[k] = 0;
}

int ldm_sampler_parse_ex(const char *name, LdmSamplerKind *out, int *has_schedule, LdmSigmaKind *schedule) {
    char nn[128], cand[64];
    norm_name(name, nn, sizeof nn);
    /* the webui's schedule suffixes: "DPM++ 2M Karras", "DPM++ 2M SDE Exponential" */
    static const struct {
        const char *suffix;
        LdmSigmaKind kind;
    } sfx[] = {{"karras", LDM_SIGMAS_KARRAS}, {"exponential", LDM_SIGMAS_EXPONENTIAL}};
    int with = -1;
    size_t len = strlen(nn);
    for (int i = 0; i < 2 && with < 0; i++) {
        size_t l = strlen(sfx[i].suffix);
        if (len > l && !strcmp(nn + len - l, sfx[i].suffix)) {
            nn[len - l] = 0;
            with = i;
        }
    }
    /* the webui's own spellings that the normalisation does not cover */
    if (!strcmp(nn, "eulerancestral")) strcpy(nn, "eulera");
    if (!strcmp(nn, "dpmpp2sancestral")) strcpy(nn, "dpmpp2sa");
    for (int i = 0; i < N_SAMPLERS; i++) {
        norm_name(ldm_sampler_name(all_samplers[i]), cand, sizeof cand);
        if (strcmp(nn, cand) != 0) continue;
        if (with >= 0) {
            if (ldm_sampler_family(all_samplers[i]) != 1)
                break; /* "DDIM Karras": no such thing */
            if (!schedule)
                return ldm_fail("sampler '%s' names a schedule too; give the sampler %s and the schedule %s", name,
                                ldm_sampler_name(all_samplers[i]), ldm_sigma_kind_name(sfx[with].kind));
            if (has_schedule && *has_schedule && *schedule != sfx[with].kind)
                return ldm_fail("sampler '%s' implies the %s schedule, but the schedule is %s", name,
                                ldm_sigma_kind_name(sfx[with].kind), ldm_sigma_kind_name(*schedule));
            *schedule = sfx[with].kind;
            if (has_schedule) *has_schedule = 1;
        }
        *out = all_samplers[i];
        return 0;
    }
    return ldm_fail("unknown sampler '%s', expected one of %s (or a webui name such as \"Euler a\", \"DPM++ 2M SDE\", "
                    "\"DPM++ 2M Karras\", \"LCM\", \"UniPC\")",
                    name, ldm_sampler_list());
}

int ldm_sampler_parse(const char *name, LdmSamplerKind *out) { return ldm_sampler_parse_ex(name, out, NULL, NULL); }

int ldm_sampler_family(LdmSamplerKind k) {
    switch (k) {
    case LDM_SAMPLER_DDIM:
    case LDM_SAMPLER_PLMS: return 0;
    case LDM_SAMPLER_LCM:
    case LDM_SAMPLER_TCD:
    case LDM_SAMPLER_UNI_PC: return 2;
    default: return 1;
    }
}

const char *ldm_noise_sampler_name(LdmNoiseSamplerKind k) {
    switch (k) {
    case LDM_NOISE_BROWNIAN: return "brownian";
    case LDM_NOISE_RANDN: return "randn";
    }
    return "?";
}

int ldm_noise_sampler_parse(const char *name, LdmNoiseSamplerKind *out) {
    if (!strcmp(name, "brownian")) *out = LDM_NOISE_BROWNIAN;
    else if (!strcmp(name, "randn")) *out = LDM_NOISE_RANDN;
    else return ldm_fail("unknown noise sampler '%s', expected one of brownian, randn", name);
    return 0;
}

static int is_kdiff(LdmSamplerKind k) { return ldm_sampler_family(k) == 1; }

static int is_sde(LdmSamplerKind k) { return k == LDM_SAMPLER_DPMPP_SDE || k == LDM_SAMPLER_DPMPP_2M_SDE; }

/* ----------------------------------------------------------------------------
 * Parameter checks and the shape of a run
 * ------------------------------------------------------------------------- */

typedef struct Plan {
    int img2img; /* start from init_latent */
    int t_enc;   /* img2img: int(strength * steps) steps run */
    int n_steps; /* steps this run takes */
    int start;   /* diffusers: index of the first timestep that runs (get_timesteps' t_start) */
} Plan;

/* Validate p; for DDIM/PLMS also build the DDIM constants into *d. */
static int plan_make(const LdmSchedule *s, const LdmSampler *p, LdmDdim *d, Plan *pl) {
    const char *name = ldm_sampler_name(p->kind);
    memset(pl, 0, sizeof *pl);
    memset(d, 0, sizeof *d);
    if (strcmp(name, "?") == 0) return ldm_fail("sampler: unknown sampler kind %d", (int)p->kind);
    if (!p->eps_fn) return ldm_fail("%s: no model callback (eps_fn)", name);
    if (p->n <= 0) return ldm_fail("%s: latent size n = %lld, expected > 0", name, (long long)p->n);
    if (p->steps < 1) return ldm_fail("%s: %d steps, expected at least 1", name, p->steps);
    if (!(p->strength >= 0.0 && p->strength <= 1.0))
        return ldm_fail("%s: strength = %g, expected a value in [0, 1]", name, p->strength);
    if (p->kind == LDM_SAMPLER_PLMS && p->eta != 0.0)
        return ldm_fail("plms: eta = %g, but PLMS is deterministic (PLMSSampler.make_schedule: ddim_eta must be 0)",
                        p->eta);
    if (p->mask) {
        if (!p->init_latent)
            return ldm_fail("%s: inpainting mask given without the original latent (init_latent)", name);
        if (p->plane <= 0 || p->n % p->plane != 0)
            return ldm_fail("%s: mask of %lld values does not tile a latent of %lld values (expected H*W of the latent)",
                            name, (long long)p->plane, (long long)p->n);
    }
    if (p->kind == LDM_SAMPLER_TCD && !(p->gamma >= 0.0 && p->gamma <= 1.0))
        return ldm_fail("tcd: gamma = %g, expected a value in [0, 1]", p->gamma);
    if (is_kdiff(p->kind) && !(p->rho >= 0.0 && isfinite(p->rho)))
        return ldm_fail("%s: rho = %g, expected a finite value > 0", name, p->rho);
    if (is_sde(p->kind) && p->noise_sampler != LDM_NOISE_BROWNIAN && p->noise_sampler != LDM_NOISE_RANDN)
        return ldm_fail("%s: unknown noise sampler %d", name, (int)p->noise_sampler);
    if (!p->noise_fn) {
        if (p->mask) return ldm_fail("%s: inpainting needs a noise source (noise_fn)", name);
        if (p->kind == LDM_SAMPLER_EULER_A || p->kind == LDM_SAMPLER_DPMPP_2S_A || p->kind == LDM_SAMPLER_LCM ||
            (p->kind == LDM_SAMPLER_TCD && p->gamma > 0.0) || (is_sde(p->kind) && p->noise_sampler == LDM_NOISE_RANDN))
            return ldm_fail("%s: needs a noise source (noise_fn)", name);
        if (p->kind == LDM_SAMPLER_DDIM && p->eta != 0.0)
            return ldm_fail("ddim: eta = %g needs a noise source (noise_fn)", p->eta);
    }
    pl->img2img = p->init_latent && p->strength > 0.0 && p->strength < 1.0;
    if (ldm_sampler_family(p->kind) == 2 && p->init_latent && p->strength == 1.0 && !p->mask)
        pl->img2img = 1; /* StableDiffusionImg2ImgPipeline at strength 1: add_noise at timesteps[0] */
    if (pl->img2img) {
        /* scripts/img2img.py: t_enc = int(opt.strength * opt.ddim_steps);
         * diffusers get_timesteps: init_timestep = min(int(num_inference_steps * strength), num_inference_steps) */
        pl->t_enc = (int)(p->strength * (double)p->steps);
        if (pl->t_enc > p->steps) pl->t_enc = p->steps;
        if (pl->t_enc < 1)
            return ldm_fail("%s: strength %g with %d steps gives int(strength * steps) = 0 denoising steps",
                            name, p->strength, p->steps);
    }
    if (is_kdiff(p->kind)) {
        pl->n_steps = pl->img2img ? pl->t_enc : p->steps;
    } else if (ldm_sampler_family(p->kind) == 2) {
        if (!(s->linear_start > 0.0 && s->linear_end > 0.0))
            return ldm_fail("%s: the schedule's linear_start/linear_end are unknown (built from an alphas_cumprod "
                            "buffer); the diffusers schedulers need them", name);
        int *ts = ldm_xmalloc((size_t)p->steps * sizeof(int));
        int rc = p->kind == LDM_SAMPLER_UNI_PC ? ldm_unipc_timesteps(s->T, p->steps, ts)
                                               : ldm_lcm_timesteps(s->T, 50, p->steps, ts);
        free(ts);
        if (rc != 0) return -1;
        /* get_timesteps: t_start = max(num_inference_steps - init_timestep, 0); scheduler.order = 1 */
        pl->start = pl->img2img ? p->steps - pl->t_enc : 0;
        pl->n_steps = p->steps - pl->start;
    } else {
        if (ldm_ddim_make(s, p->steps, p->kind == LDM_SAMPLER_DDIM ? p->eta : 0.0, d) != 0) return -1;
        pl->n_steps = pl->img2img ? pl->t_enc : d->n;
    }
    return 0;
}

int ldm_sample_count_steps(const LdmSchedule *s, const LdmSampler *p) {
    LdmDdim d;
    Plan pl;
    int r = plan_make(s, p, &d, &pl);
    ldm_ddim_free(&d);
    return r != 0 ? -1 : pl.n_steps;
}

int ldm_sample_timesteps(const LdmSchedule *s, const LdmSampler *p, int *out) {
    LdmDdim d;
    Plan pl;
    int r = plan_make(s, p, &d, &pl);
    ldm_ddim_free(&d);
    if (r != 0) return -1;
    if (ldm_sampler_family(p->kind) != 2)
        return ldm_fail("%s: not a diffusers scheduler (no integer timestep list)", ldm_sampler_name(p->kind));
    int *ts = ldm_xmalloc((size_t)p->steps * sizeof(int));
    r = p->kind == LDM_SAMPLER_UNI_PC ? ldm_unipc_timesteps(s->T, p->steps, ts) : ldm_lcm_timesteps(s->T, 50, p->steps, ts);
    if (r == 0) memcpy(out, ts + pl.start, (size_t)pl.n_steps * sizeof(int));
    free(ts);
    return r != 0 ? -1 : pl.n_steps;
}

/* ----------------------------------------------------------------------------
 * Shared pieces
 * ------------------------------------------------------------------------- */

typedef struct Run {
    const LdmSchedule *s;
    const LdmSampler *p;
    int64_t n;
    float *x;      /* (n) current latent */
    float *xn;     /* (n) next latent */
    float *eps;    /* (n) model output */
    float *den;    /* (n) pred_x0 / denoised */
    float *noise;  /* (n) one noise draw */
    float *tmp;    /* (n) k: model input x * c_in; plms: first-step x_prev */
    float *aux;    /* (n) plms: e_t_next then e_t_prime; dpmpp_2m: denoised_d */
    float *old;    /* plms: (3, n) previous raw eps, newest at old_pos; dpmpp_2m: (n) old_denoised */
    float *x2;     /* (n) k: second-order intermediate latent; uni_pc: last_sample */
    float *den2;   /* (n) k: denoised of the second model call; uni_pc: model_outputs[-2] */
    float *vout;   /* (n) v_pred with ddim/plms/lcm/tcd/uni_pc: the raw model output (v), eps holds e_t */
    LdmBrownian *bt; /* dpmpp_sde / dpmpp_2m_sde with the Brownian tree, else NULL */
    float *sgm_table; /* schedule sgm: the DiscreteDenoiser's sigma table (T), else NULL */
    int n_old;     /* valid entries in old */
    float h_last;  /* dpmpp_2m_sde: h of the previous step */
    int old_pos;   /* plms ring position of the newest entry */
} Run;

/* One latent-shaped noise draw. Without a noise source the draw is zero:
 * plan_make already refused the cases where its value would matter. */
static void draw(Run *r, float *buf) {
    if (r->p->noise_fn) r->p->noise_fn(r->p->noise_ctx, buf, r->n);
    else memset(buf, 0, (size_t)r->n * sizeof(float));
}

static int call_model(Run *r, const float *x_in, float t) {
    if (r->p->eps_fn(r->p->eps_ctx, x_in, t, r->eps) != 0) return -1;
    return 0;
}

/* The model at integer timestep t of a VP-space latent x_in (ddim, plms,
 * lcm, tcd, uni_pc): r->eps = eps; for a v model (p->v_pred) r->vout = the
 * v it returned and r->eps = sa v + sb x_in (predict_eps_from_z_and_v with
 * sa = sqrt(a_t), sb = sqrt(1 - a_t)). */
static int call_model_vp(Run *r, const float *x_in, float t, float sa, float sb) {
    if (!r->p->v_pred) return call_model(r, x_in, t);
    if (r->p->eps_fn(r->p->eps_ctx, x_in, t, r->vout) != 0) return -1;
    for (int64_t j = 0; j < r->n; j++) r->eps[j] = sa * r->vout[j] + sb * x_in[j];
    return 0;
}

/* Inpainting blend at the start of a step:
 *   img_orig = self.model.q_sample(x0, ts)   # a * x0 + b * randn_like(x0)
 *   img = img_orig * mask + (1. - mask) * img
 * (CompVis ddim_sampling / plms_sampling). For the k-samplers a = 1 and
 * b = sigma (x0 + sigma * noise, the same noising in k-diffusion form). */
static void blend_known(Run *r, float a, float b) {
    const float *x0 = r->p->init_latent, *m = r->p->mask;
    int64_t plane = r->p->plane;
    draw(r, r->noise);
    for (int64_t j = 0; j < r->n; j++) {
        float mk = m[j % plane];
        float orig = a * x0[j] + b * r->noise[j];
        r->x[j] = orig * mk + (1.0f - mk) * r->x[j];
    }
}

/* Final paste of the known region: x = x0 * mask + (1 - mask) * x (exactly
 * x0 where mask = 1). */
static void paste_known(Run *r) {
    const float *x0 = r->p->init_latent, *m = r->p->mask;
    int64_t plane = r->p->plane;
    for (int64_t j = 0; j < r->n; j++) {
        float mk = m[j % plane];
        r->x[j] = x0[j] * mk + (1.0f - mk) * r->x[j];
    }
}

static int report(Run *r, int step, int n_steps, float t, float sigma) {
    if (!r->p->step_fn) return 0;
    LdmStepInfo info = {step, n_steps, t, sigma, r->x, r->den, r->xn};
    if (r->p->step_fn(r->p->step_ctx, &info) != 0) {
        if (!ldm_last_error()[0])
            ldm_fail("%s: stopped by the step callback at step %d", ldm_sampler_name(r->p->kind), step);
        return -1;
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * DDIM and PLMS (CompVis)
 * ------------------------------------------------------------------------- */

/* p_sample_ddim (and PLMS get_x_prev_and_pred_x0) for DDIM index `index`,
 * given the eps to use and the noise draw:
 *   pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
 *   dir_xt = (1. - a_prev - sigma_t**2).sqrt() * e_t
 *   noise = sigma_t * noise_like(x.shape, device, repeat_noise) * temperature
 *   x_prev = a_prev.sqrt() * pred_x0 + dir_xt + noise */
/* v (a v model's output, NULL for eps models and PLMS): the v branch,
 *   pred_x0 = predict_start_from_z_and_v(x, t, v) = sa * x - sb * v
 * with the checkpoint's sqrt_alphas_cumprod[t], sqrt_one_minus_alphas_cumprod[t]. */
static void ddim_update(const LdmDdim *d, int index, const float *x, const float *e, const float *noise,
                        float *pred_x0, float *x_prev, int64_t n, const float *v, float sa, float sb) {
    float a_t = d->alphas[index], a_prev = d->alphas_prev[index], sigma_t = d->sigmas[index];
    float sqrt_one_minus_at = d->sqrt_one_minus_alphas[index];
    float sqrt_at = sqrtf(a_t), sqrt_a_prev = sqrtf(a_prev);
    float dir_coef = sqrtf(1.0f - a_prev - sigma_t * sigma_t);
    for (int64_t j = 0; j < n; j++) {
        float p0 = v ? sa * x[j] - sb * v[j] : (x[j] - sqrt_one_minus_at * e[j]) / sqrt_at;
        float dir_xt = dir_coef * e[j];
        float nz = sigma_t * noise[j] * 1.0f; /* temperature = 1 */
        pred_x0[j] = p0;
        x_prev[j] = sqrt_a_prev * p0 + dir_xt + nz;
    }
}

static float *plms_old(Run *r, int back) { /* back = 1: E[-1] (newest), 2: E[-2], 3: E[-3] */
    int pos = ((r->old_pos - (back - 1)) % 3 + 3) % 3;
    return r->old + (int64_t)pos * r->n;
}

static int run_ddim_plms(Run *r, const LdmDdim *d, const Plan *pl) {
    const LdmSampler *p = r->p;
    const LdmSchedule *s = r->s;
    int64_t n = r->n;
    int m = pl->n_steps; /* txt2img: all d->n steps; img2img: t_enc (DDIMSampler.decode) */

    if (pl->img2img) {
        /* stochastic_encode(x0, t=[t_enc], noise):
         *   sqrt_alphas_cumprod = torch.sqrt(self.ddim_alphas)
         *   return extract(sqrt_alphas_cumprod, t) * x0 + extract(self.ddim_sqrt_one_minus_alphas, t) * noise */
        float sa = sqrtf(d->alphas[pl->t_enc]), sb = d->sqrt_one_minus_alphas[pl->t_enc];
        for (int64_t j = 0; j < n; j++) r->x[j] = sa * p->init_latent[j] + sb * r->x[j];
    }

    for (int i = 0; i < m; i++) {
        /* time_range = np.flip(timesteps); index = total_steps - i - 1 */
        int index = m - 1 - i;
        int ts = d->timesteps[index];
        float a = d->alphas[index];
        float sigma_info = sqrtf((1.0f - a) / a);
        if (p->mask) blend_known(r, s->sqrt_alphas_cumprod[ts], s->sqrt_one_minus_alphas_cumprod[ts]);

        float vsa = s->sqrt_alphas_cumprod[ts], vsb = s->sqrt_one_minus_alphas_cumprod[ts];
        if (call_model_vp(r, r->x, (float)ts, vsa, vsb) != 0) return -1;

        if (p->kind == LDM_SAMPLER_DDIM) {
            draw(r, r->noise);
            ddim_update(d, index, r->x, r->eps, r->noise, r->den, r->xn, n, p->v_pred ? r->vout : NULL, vsa, vsb);
        } else {
            /* p_sample_plms */
            const float *e_t = r->eps;
            float *e_prime = r->aux;
            if (r->n_old == 0) {
                /* Pseudo Improved Euler (2nd order):
                 *   x_prev, pred_x0 = get_x_prev_and_pred_x0(e_t, index)
                 *   e_t_next = get_model_output(x_prev, t_next)
                 *   e_t_prime = (e_t + e_t_next) / 2
                 * t_next = time_range[min(i + 1, len(time_range) - 1)] */
                int ts_next = d->timesteps[index > 0 ? index - 1 : 0];
                draw(r, r->noise);
                ddim_update(d, index, r->x, e_t, r->noise, r->den, r->tmp, n, NULL, 0, 0);
                /* keep e_t: the model writes into r->eps, so save it in the ring first */
                float *slot = r->old + (int64_t)((r->old_pos + 1) % 3) * n;
                memcpy(slot, e_t, (size_t)n * sizeof(float));
                if (call_model_vp(r, r->tmp, (float)ts_next, s->sqrt_alphas_cumprod[ts_next],
                                  s->sqrt_one_minus_alphas_cumprod[ts_next]) != 0)
                    return -1;
                for (int64_t j = 0; j < n; j++) e_prime[j] = (slot[j] + r->eps[j]) / 2.0f;
                memcpy(r->eps, slot, (size_t)n * sizeof(float)); /* e_t again */
            } else if (r->n_old == 1) {
                /* e_t_prime = (3 * e_t - old_eps[-1]) / 2 */
                const float *o1 = plms_old(r, 1);
                for (int64_t j = 0; j < n; j++) e_prime[j] = (3.0f * e_t[j] - o1[j]) / 2.0f;
            } else if (r->n_old == 2) {
                /* e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12 */
                const float *o1 = plms_old(r, 1), *o2 = plms_old(r, 2);
                for (int64_t j = 0; j < n; j++)
                    e_prime[j] = (23.0f * e_t[j] - 16.0f * o1[j] + 5.0f * o2[j]) / 12.0f;
            } else {
                /* e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24 */
                const float *o1 = plms_old(r, 1), *o2 = plms_old(r, 2), *o3 = plms_old(r, 3);
                for (int64_t j = 0; j < n; j++)
                    e_prime[j] = (55.0f * e_t[j] - 59.0f * o1[j] + 37.0f * o2[j] - 9.0f * o3[j]) / 24.0f;
            }
            draw(r, r->noise);
            ddim_update(d, index, r->x, e_prime, r->noise, r->den, r->xn, n, NULL, 0, 0);
            /* old_eps.append(e_t); if len(old_eps) >= 4: old_eps.pop(0) */
            r->old_pos = (r->old_pos + 1) % 3;
            memcpy(r->old + (int64_t)r->old_pos * n, e_t, (size_t)n * sizeof(float));
            if (r->n_old < 3) r->n_old++;
        }

        if (report(r, i, m, (float)ts, sigma_info) != 0) return -1;
        memcpy(r->x, r->xn, (size_t)n * sizeof(float));
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * k-diffusion samplers
 * ------------------------------------------------------------------------- */

/* DiscreteEpsDDPMDenoiser.forward(input, sigma) with the CFG model:
 *   c_out, c_in = -sigma, 1 / (sigma ** 2 + self.sigma_data ** 2) ** 0.5
 *   eps = self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs)
 *   return input + eps * c_out
 * or for a v model (p->v_pred) DiscreteVDDPMDenoiser (CompVisVDenoiser):
 *   c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
 *   c_out = -sigma * sigma_data / (sigma ** 2 + sigma_data ** 2) ** 0.5
 *   c_in = 1 / (sigma ** 2 + sigma_data ** 2) ** 0.5          (sigma_data = 1)
 *   return self.get_v(input * c_in, self.sigma_to_t(sigma), **kwargs) * c_out + input * c_skip
 * Leaves the denoised latent in r->den. */
static int denoise_at(Run *r, const float *x, float sigma, float *den, float *t_out) {
    float t;
    if (r->sgm_table) {
        /* sgm DiscreteDenoiser: sigma -> the nearest table entry; its index
         * is the (integer) UNet timestep, c_in/c_out use the table's sigma
         * (EpsScaling: c_skip 1, c_out -sigma, c_in 1/sqrt(sigma^2 + 1)) */
        int idx = ldm_sgm_sigma_index(r->sgm_table, r->s->T, sigma);
        sigma = r->sgm_table[idx];
        t = (float)idx;
    } else {
        t = ldm_sigma_to_t(r->s, sigma);
    }
    float q = sigma * sigma + 1.0f;
    float c_in = 1.0f / sqrtf(q);
    for (int64_t j = 0; j < r->n; j++) r->tmp[j] = x[j] * c_in;
    if (call_model(r, r->tmp, t) != 0) return -1;
    if (r->p->v_pred) {
        float c_skip = 1.0f / q, c_out = -sigma * 1.0f / sqrtf(q);
        for (int64_t j = 0; j < r->n; j++) den[j] = r->eps[j] * c_out + x[j] * c_skip;
    } else {
        for (int64_t j = 0; j < r->n; j++) den[j] = x[j] + r->eps[j] * -sigma;
    }
    if (t_out) *t_out = t;
    return 0;
}

static int denoise(Run *r, float sigma, float *t_out) { return denoise_at(r, r->x, sigma, r->den, t_out); }

/* get_ancestral_step(sigma_from, sigma_to, eta = 1):
 *   sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
 *   sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5 */
static void ancestral_step(float from, float to, float *down, float *up) {
    float u = 1.0f * sqrtf(to * to * (from * from - to * to) / (from * from));
    float su = u < to ? u : to;
    *up = su;
    *down = sqrtf(to * to - su * su);
}

/* noise_sampler(sigma, sigma_next) of the SDE samplers */
static void sde_noise(Run *r, float sigma, float sigma_next, float *out) {
    if (r->bt) ldm_brownian_noise(r->bt, sigma, sigma_next, out);
    else draw(r, out);
}

static int run_kdiff(Run *r, const Plan *pl) {
    const LdmSampler *p = r->p;
    int64_t n = r->n;
    int S = p->steps;
    float *sig = ldm_xmalloc((size_t)(S + 1) * sizeof(float));
    if (ldm_kdiff_sigmas_rho(r->s, p->sigmas, S, p->rho, sig) != 0) {
        free(sig);
        return -1;
    }
    int start = pl->img2img ? S - pl->t_enc : 0;
    LdmBrownian bt;
    memset(&bt, 0, sizeof bt);
    if (is_sde(p->kind) && p->noise_sampler == LDM_NOISE_BROWNIAN) {
        /* BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed):
         *   sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max() */
        float lo = INFINITY, hi = 0.0f;
        for (int i = start; i <= S; i++) {
            if (sig[i] > 0.0f && sig[i] < lo) lo = sig[i];
            if (sig[i] > hi) hi = sig[i];
        }
        if (lo < hi) {
            if (ldm_brownian_init(&bt, n, lo, hi, p->seed) != 0) {
                free(sig);
                return -1;
            }
            r->bt = &bt;
        }
    }
    if (pl->img2img) {
        /* x = x0 + noise * sigmas[start] */
        for (int64_t j = 0; j < n; j++) r->x[j] = p->init_latent[j] + r->x[j] * sig[start];
    } else if (p->sigmas == LDM_SIGMAS_SGM) {
        /* sgm prepare_sampling_loop: x *= torch.sqrt(1.0 + sigmas[0] ** 2.0) */
        float scale = sqrtf(1.0f + sig[0] * sig[0]);
        for (int64_t j = 0; j < n; j++) r->x[j] = r->x[j] * scale;
    } else {
        /* x = torch.randn(shape) * sigmas[0] */
        for (int64_t j = 0; j < n; j++) r->x[j] = r->x[j] * sig[0];
    }

    int ret = 0;
    for (int i = start; i < S; i++) {
        float sigma = sig[i], sigma_next = sig[i + 1];
        float t;
        if (p->mask) blend_known(r, 1.0f, sigma);

        switch (p->kind) {
        case LDM_SAMPLER_EULER: {
            /* sample_euler with s_churn = 0:
             *   gamma = 0; eps = torch.randn_like(x) * s_noise    (drawn, unused)
             *   sigma_hat = sigmas[i] * (gamma + 1)
             *   denoised = model(x, sigma_hat * s_in)
             *   d = to_d(x, sigma_hat, denoised)                  # (x - denoised) / sigma_hat
             *   dt = sigmas[i + 1] - sigma_hat
             *   x = x + d * dt */
            draw(r, r->noise);
            if (denoise(r, sigma, &t) != 0) goto fail;
            float dt = sigma_next - sigma;
            for (int64_t j = 0; j < n; j++) {
                float d = (r->x[j] - r->den[j]) / sigma;
                r->xn[j] = r->x[j] + d * dt;
            }
            break;
        }
        case LDM_SAMPLER_EULER_A: {
            /* sample_euler_ancestral (eta = 1, s_noise = 1):
             *   denoised = model(x, sigmas[i] * s_in)
             *   sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
             *   d = to_d(x, sigmas[i], denoised)
             *   dt = sigma_down - sigmas[i]
             *   x = x + d * dt
             *   if sigmas[i + 1] > 0:
             *       x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
             * get_ancestral_step:
             *   sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
             *   sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5 */
            if (denoise(r, sigma, &t) != 0) goto fail;
            float up = 1.0f * sqrtf(sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) /
                                    (sigma * sigma));
            float sigma_up = up < sigma_next ? up : sigma_next;
            float sigma_down = sqrtf(sigma_next * sigma_next - sigma_up * sigma_up);
            float dt = sigma_down - sigma;
            for (int64_t j = 0; j < n; j++) {
                float d = (r->x[j] - r->den[j]) / sigma;
                r->xn[j] = r->x[j] + d * dt;
            }
            if (sigma_next > 0.0f) {
                draw(r, r->noise);
                for (int64_t j = 0; j < n; j++) r->xn[j] = r->xn[j] + r->noise[j] * 1.0f * sigma_up;
            }
            break;
        }
        case LDM_SAMPLER_DPMPP_2M: {
            /* sample_dpmpp_2m:
             *   sigma_fn = lambda t: t.neg().exp(); t_fn = lambda sigma: sigma.log().neg()
             *   denoised = model(x, sigmas[i] * s_in)
             *   t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1]); h = t_next - t
             *   if old_denoised is None or sigmas[i + 1] == 0:
             *       x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
             *   else:
             *       h_last = t - t_fn(sigmas[i - 1]); r = h_last / h
             *       denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
             *       x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
             *   old_denoised = denoised
             * With sigma_next = 0, t_next = inf and the update is exactly
             * x = denoised: done explicitly, without log(0). */
            if (denoise(r, sigma, &t) != 0) goto fail;
            if (sigma_next == 0.0f) {
                memcpy(r->xn, r->den, (size_t)n * sizeof(float));
            } else {
                float tc = -logf(sigma), tn = -logf(sigma_next);
                float h = tn - tc;
                float ratio = expf(-tn) / expf(-tc);
                float em = expm1f(-h);
                if (r->n_old == 0) {
                    for (int64_t j = 0; j < n; j++) r->xn[j] = ratio * r->x[j] - em * r->den[j];
                } else {
                    float h_last = tc - -logf(sig[i - 1]);
                    float rr = h_last / h;
                    float c_new = 1.0f + 1.0f / (2.0f * rr), c_old = 1.0f / (2.0f * rr);
                    for (int64_t j = 0; j < n; j++) {
                        float dd = c_new * r->den[j] - c_old * r->old[j];
                        r->xn[j] = ratio * r->x[j] - em * dd;
                    }
                }
            }
            memcpy(r->old, r->den, (size_t)n * sizeof(float));
            r->n_old = 1;
            break;
        }
        case LDM_SAMPLER_HEUN:
        case LDM_SAMPLER_DPM2: {
            /* sample_heun / sample_dpm_2 with s_churn = 0 (sigma_hat = sigmas[i]):
             *   eps = torch.randn_like(x) * s_noise               (drawn, unused)
             *   denoised = model(x, sigma_hat * s_in); d = to_d(x, sigma_hat, denoised)
             *   if sigmas[i + 1] == 0: x = x + d * (sigmas[i + 1] - sigma_hat)      (Euler)
             * heun:
             *   x_2 = x + d * dt; denoised_2 = model(x_2, sigmas[i + 1] * s_in)
             *   d_2 = to_d(x_2, sigmas[i + 1], denoised_2); d_prime = (d + d_2) / 2; x = x + d_prime * dt
             * dpm2:
             *   sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
             *   dt_1 = sigma_mid - sigma_hat; dt_2 = sigmas[i + 1] - sigma_hat
             *   x_2 = x + d * dt_1; denoised_2 = model(x_2, sigma_mid * s_in)
             *   d_2 = to_d(x_2, sigma_mid, denoised_2); x = x + d_2 * dt_2 */
            draw(r, r->noise);
            if (denoise(r, sigma, &t) != 0) goto fail;
            float dt = sigma_next - sigma;
            if (sigma_next == 0.0f) {
                for (int64_t j = 0; j < n; j++) {
                    float d = (r->x[j] - r->den[j]) / sigma;
                    r->xn[j] = r->x[j] + d * dt;
                }
                break;
            }
            float s2 = sigma_next, dt1 = dt;
            if (p->kind == LDM_SAMPLER_DPM2) {
                /* torch.lerp: weight >= 0.5 -> end - (end - start) * (1 - weight) */
                float ls = ldm_torch_logf(sigma), le = ldm_torch_logf(sigma_next);
                s2 = ldm_torch_expf(le - (le - ls) * (1.0f - 0.5f));
                dt1 = s2 - sigma;
            }
            for (int64_t j = 0; j < n; j++) {
                float d = (r->x[j] - r->den[j]) / sigma;
                r->x2[j] = r->x[j] + d * dt1;
            }
            if (denoise_at(r, r->x2, s2, r->den2, NULL) != 0) goto fail;
            for (int64_t j = 0; j < n; j++) {
                float d = (r->x[j] - r->den[j]) / sigma;
                float d2 = (r->x2[j] - r->den2[j]) / s2;
                if (p->kind == LDM_SAMPLER_HEUN) {
                    float dp = (d + d2) / 2.0f;
                    r->xn[j] = r->x[j] + dp * dt;
                } else {
                    r->xn[j] = r->x[j] + d2 * dt;
                }
            }
            break;
        }
        case LDM_SAMPLER_DPMPP_2S_A: {
            /* sample_dpmpp_2s_ancestral (eta = 1, s_noise = 1):
             *   denoised = model(x, sigmas[i] * s_in)
             *   sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
             *   if sigma_down == 0: d = to_d(x, sigmas[i], denoised); x = x + d * (sigma_down - sigmas[i])
             *   else:
             *       t, t_next = t_fn(sigmas[i]), t_fn(sigma_down); r = 1 / 2
             *       h = t_next - t; s = t + r * h
             *       x_2 = (sigma_fn(s) / sigma_fn(t)) * x - (-h * r).expm1() * denoised
             *       denoised_2 = model(x_2, sigma_fn(s) * s_in)
             *       x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_2
             *   if sigmas[i + 1] > 0: x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up */
            if (denoise(r, sigma, &t) != 0) goto fail;
            float sd, su;
            ancestral_step(sigma, sigma_next, &sd, &su);
            if (sd == 0.0f) {
                float dt = sd - sigma;
                for (int64_t j = 0; j < n; j++) {
                    float d = (r->x[j] - r->den[j]) / sigma;
                    r->xn[j] = r->x[j] + d * dt;
                }
            } else {
                float tc = -ldm_torch_logf(sigma), tn = -ldm_torch_logf(sd);
                float h = tn - tc, sm = tc + 0.5f * h;
                float sig_s = ldm_torch_expf(-sm), sig_t = ldm_torch_expf(-tc);
                float ratio1 = sig_s / sig_t, em1 = expm1f(-h * 0.5f);
                for (int64_t j = 0; j < n; j++) r->x2[j] = ratio1 * r->x[j] - em1 * r->den[j];
                if (denoise_at(r, r->x2, sig_s, r->den2, NULL) != 0) goto fail;
                float ratio2 = ldm_torch_expf(-tn) / sig_t, em2 = expm1f(-h);
                for (int64_t j = 0; j < n; j++) r->xn[j] = ratio2 * r->x[j] - em2 * r->den2[j];
            }
            if (sigma_next > 0.0f) {
                draw(r, r->noise);
                for (int64_t j = 0; j < n; j++) r->xn[j] = r->xn[j] + r->noise[j] * 1.0f * su;
            }
            break;
        }
        case LDM_SAMPLER_DPMPP_SDE: {
            /* sample_dpmpp_sde (eta = 1, s_noise = 1, r = 1/2):
             *   denoised = model(x, sigmas[i] * s_in)
             *   if sigmas[i + 1] == 0: Euler
             *   else:
             *       t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1]); h = t_next - t; s = t + h * r
             *       fac = 1 / (2 * r)
             *       sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(s), eta); s_ = t_fn(sd)
             *       x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - (t - s_).expm1() * denoised
             *       x_2 = x_2 + noise_sampler(sigma_fn(t), sigma_fn(s)) * s_noise * su
             *       denoised_2 = model(x_2, sigma_fn(s) * s_in)
             *       sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta); t_next_ = t_fn(sd)
             *       denoised_d = (1 - fac) * denoised + fac * denoised_2
             *       x = (sigma_fn(t_next_) / sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
             *       x = x + noise_sampler(sigma_fn(t), sigma_fn(t_next)) * s_noise * su */
            if (denoise(r, sigma, &t) != 0) goto fail;
            if (sigma_next == 0.0f) {
                float dt = sigma_next - sigma;
                for (int64_t j = 0; j < n; j++) {
                    float d = (r->x[j] - r->den[j]) / sigma;
                    r->xn[j] = r->x[j] + d * dt;
                }
                break;
            }
            float tc = -ldm_torch_logf(sigma), tn = -ldm_torch_logf(sigma_next);
            float h = tn - tc, sm = tc + h * 0.5f;
            const float fac = 1.0f; /* 1 / (2 * r) */
            float sig_t = ldm_torch_expf(-tc), sig_s = ldm_torch_expf(-sm), sig_tn = ldm_torch_expf(-tn);
            float sd, su;
            ancestral_step(sig_t, sig_s, &sd, &su);
            float s_ = -ldm_torch_logf(sd);
            float ratio1 = ldm_torch_expf(-s_) / sig_t, em1 = expm1f(tc - s_);
            for (int64_t j = 0; j < n; j++) r->x2[j] = ratio1 * r->x[j] - em1 * r->den[j];
            sde_noise(r, sig_t, sig_s, r->noise);
            for (int64_t j = 0; j < n; j++) r->x2[j] = r->x2[j] + r->noise[j] * 1.0f * su;
            if (denoise_at(r, r->x2, sig_s, r->den2, NULL) != 0) goto fail;
            ancestral_step(sig_t, sig_tn, &sd, &su);
            float tn_ = -ldm_torch_logf(sd);
            float ratio2 = ldm_torch_expf(-tn_) / sig_t, em2 = expm1f(tc - tn_);
            for (int64_t j = 0; j < n; j++) {
                float dd = (1.0f - fac) * r->den[j] + fac * r->den2[j];
                r->xn[j] = ratio2 * r->x[j] - em2 * dd;
            }
            sde_noise(r, sig_t, sig_tn, r->noise);
            for (int64_t j = 0; j < n; j++) r->xn[j] = r->xn[j] + r->noise[j] * 1.0f * su;
            break;
        }
        case LDM_SAMPLER_DPMPP_2M_SDE: {
            /* sample_dpmpp_2m_sde (eta = 1, s_noise = 1, solver_type 'midpoint'):
             *   denoised = model(x, sigmas[i] * s_in)
             *   if sigmas[i + 1] == 0: x = denoised
             *   else:
             *       t, s = -sigmas[i].log(), -sigmas[i + 1].log(); h = s - t; eta_h = eta * h
             *       x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
             *       if old_denoised is not None:
             *           r = h_last / h
             *           x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
             *       x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
             *   old_denoised = denoised; h_last = h */
            if (denoise(r, sigma, &t) != 0) goto fail;
            if (sigma_next == 0.0f) {
                memcpy(r->xn, r->den, (size_t)n * sizeof(float));
            } else {
                float tc = -ldm_torch_logf(sigma), ts = -ldm_torch_logf(sigma_next);
                float h = ts - tc, eta_h = 1.0f * h;
                float c1 = sigma_next / sigma * ldm_torch_expf(-eta_h);
                float c2 = -expm1f(-h - eta_h);
                for (int64_t j = 0; j < n; j++) r->xn[j] = c1 * r->x[j] + c2 * r->den[j];
                if (r->n_old) {
                    float rr = r->h_last / h;
                    float c3 = 0.5f * c2 * (1.0f / rr);
                    for (int64_t j = 0; j < n; j++) r->xn[j] = r->xn[j] + c3 * (r->den[j] - r->old[j]);
                }
                float c4 = sqrtf(-expm1f(-2.0f * eta_h));
                sde_noise(r, sigma, sigma_next, r->noise);
                for (int64_t j = 0; j < n; j++) r->xn[j] = r->xn[j] + r->noise[j] * sigma_next * c4 * 1.0f;
                r->h_last = h;
            }
            memcpy(r->old, r->den, (size_t)n * sizeof(float));
            r->n_old = 1;
            break;
        }
        default:
            ldm_fail("k-diffusion: sampler %s is not a k-diffusion sampler", ldm_sampler_name(p->kind));
            goto fail;
        }

        if (report(r, i - start, S - start, t, sigma) != 0) goto fail;
        memcpy(r->x, r->xn, (size_t)n * sizeof(float));
    }
    goto done;
fail:
    ret = -1;
done:
    if (r->bt) ldm_brownian_free(r->bt);
    r->bt = NULL;
    free(sig);
    return ret;
}

/* ----------------------------------------------------------------------------
 * diffusers schedulers (LCM, TCD, UniPC) in the StableDiffusionPipeline loop:
 * the latent is VP-space (init_noise_sigma = 1, scale_model_input the
 * identity), the UNet gets the integer timestep.
 * ------------------------------------------------------------------------- */

/* UniPCMultistepScheduler._sigma_to_alpha_sigma_t and lambda:
 *   alpha_t = 1 / ((sigma ** 2 + 1) ** 0.5); sigma_t = sigma * alpha_t
 *   lambda_t = torch.log(alpha_t) - torch.log(sigma_t) */
static void unipc_ast(float sigma, float *alpha_t, float *sigma_t, float *lambda_t) {
    float a = 1.0f / sqrtf(sigma * sigma + 1.0f);
    float st = sigma * a;
    *alpha_t = a;
    *sigma_t = st;
    *lambda_t = ldm_torch_logf(a) - ldm_torch_logf(st);
}

/* torch.linalg.solve([[1, 1], [rk, 1]], [b0, b1]) in float32, as LAPACK
 * sgesv does it: LU with partial pivoting (multiplier = entry * (1 / pivot)),
 * then the two triangular solves. */
static void solve2(float rk, float b0, float b1, float *x0, float *x1) {
    if (fabsf(rk) > 1.0f) {
        /* rows swapped: [[rk, 1], [1, 1]], rhs [b1, b0] */
        float l = 1.0f * (1.0f / rk);
        float u11 = 1.0f - l * 1.0f;
        float y1 = b0 - l * b1;
        *x1 = y1 / u11;
        *x0 = (b1 - *x1 * 1.0f) / rk;
    } else {
        float l = rk * (1.0f / 1.0f);
        float u11 = 1.0f - l * 1.0f;
        float y1 = b1 - l * b0;
        *x1 = y1 / u11;
        *x0 = (b0 - *x1 * 1.0f) / 1.0f;
    }
}

/* add_noise(original_samples, noise, [timesteps[k]]) of the scheduler:
 *   LCMScheduler, TCDScheduler (DDPMScheduler.add_noise):
 *     sqrt_alpha_prod = alphas_cumprod[timesteps] ** 0.5
 *     sqrt_one_minus_alpha_prod = (1 - alphas_cumprod[timesteps]) ** 0.5
 *     noisy_samples = sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise
 *   UniPCMultistepScheduler (after set_begin_index the index is begin_index
 *   before the first step and step_index after it, i.e. k either way):
 *     sigma = sigmas[step_indices]; alpha_t, sigma_t = _sigma_to_alpha_sigma_t(sigma)
 *     noisy_samples = alpha_t * original_samples + sigma_t * noise */
static void diffusers_add_noise(const LdmSampler *p, const float *ac, const int *ts, const float *usig, int k,
                                const float *x0, const float *noise, float *out, int64_t n) {
    float a, b;
    if (p->kind == LDM_SAMPLER_UNI_PC) {
        float lam;
        unipc_ast(usig[k], &a, &b, &lam);
    } else {
        a = sqrtf(ac[ts[k]]);
        b = sqrtf(1.0f - ac[ts[k]]);
    }
    for (int64_t j = 0; j < n; j++) out[j] = a * x0[j] + b * noise[j];
}

/* StableDiffusionInpaintPipeline, 4-channel UNet, after step i (index into
 * the full timesteps) with mask = 1 - known (diffusers: 1 = repaint):
 *   init_latents_proper = image_latents
 *   if i < len(timesteps) - 1:
 *       noise_timestep = timesteps[i + 1]
 *       init_latents_proper = self.scheduler.add_noise(init_latents_proper, noise, torch.tensor([noise_timestep]))
 *   latents = (1 - init_mask) * init_latents_proper + init_mask * latents
 * `noise` is the one draw the latents started from (no per-step draws). */
static void diffusers_blend(Run *r, const float *ac, const int *ts, const float *usig, int i, int S,
                            const float *noise0) {
    const LdmSampler *p = r->p;
    const float *x0 = p->init_latent, *m = p->mask;
    int64_t plane = p->plane, n = r->n;
    const float *proper = x0;
    if (i < S - 1) {
        diffusers_add_noise(p, ac, ts, usig, i + 1, x0, noise0, r->tmp, n);
        proper = r->tmp;
    }
    for (int64_t j = 0; j < n; j++) {
        float dm = 1.0f - m[j % plane];
        r->xn[j] = (1.0f - dm) * proper[j] + dm * r->xn[j];
    }
}

static int run_diffusers(Run *r, const Plan *pl) {
    const LdmSampler *p = r->p;
    const LdmSchedule *s = r->s;
    int64_t n = r->n;
    int S = p->steps, T = s->T, start = pl->start;
    float *ac = ldm_xmalloc((size_t)T * sizeof(float));
    int *ts = ldm_xmalloc((size_t)S * sizeof(int));
    float *usig = ldm_xmalloc((size_t)(S + 1) * sizeof(float));
    int ret = 0;
    ldm_diffusers_alphas_cumprod(s->linear_start, s->linear_end, T, ac);
    if ((p->kind == LDM_SAMPLER_UNI_PC ? ldm_unipc_timesteps(T, S, ts) : ldm_lcm_timesteps(T, 50, S, ts)) != 0) {
        ret = -1;
        goto done;
    }
    /* UniPC: sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5 at the timesteps, then 0 */
    ldm_unipc_sigmas(ac, ts, S, usig);

    /* The pipelines: StableDiffusionPipeline (txt2img: x = x_T);
     * StableDiffusionImg2ImgPipeline: timesteps, num_inference_steps =
     * get_timesteps(steps, strength) (timesteps[t_start:], and
     * scheduler.set_begin_index(t_start)), latents = scheduler.add_noise(
     * init_latents, noise, timesteps[:1]) - also at strength 1;
     * StableDiffusionInpaintPipeline (4-channel UNet): the same timesteps,
     * latents = noise at strength 1 (is_strength_max) else add_noise as
     * img2img, and the known region blended in after every step with the
     * same noise. The scheduler's state starts fresh at the first timestep
     * that runs (step_index = begin_index = t_start; UniPC: no corrector on
     * it, model_outputs empty, lower_order_nums 0). */
    float *noise0 = r->aux;
    memcpy(noise0, r->x, (size_t)n * sizeof(float));
    if (pl->img2img) diffusers_add_noise(p, ac, ts, usig, start, p->init_latent, noise0, r->x, n);

    int this_order = 0, lower_order_nums = 0;
    float *m_prev = r->old, *m_prev2 = r->den2, *last = r->x2;
    for (int i = start; i < S; i++) {
        int t = ts[i];
        if (call_model_vp(r, r->x, (float)t, sqrtf(ac[t]), sqrtf(1.0f - ac[t])) != 0) goto fail;
        const float *eps = r->eps;
        switch (p->kind) {
        case LDM_SAMPLER_LCM: {
            /* LCMScheduler.step:
             *   prev_timestep = timesteps[step_index + 1] (the timestep itself on the last step)
             *   alpha_prod_t = alphas_cumprod[timestep]; alpha_prod_t_prev = alphas_cumprod[prev_timestep]
             *   beta_prod_t = 1 - alpha_prod_t; beta_prod_t_prev = 1 - alpha_prod_t_prev
             *   c_skip, c_out = get_scalings_for_boundary_condition_discrete(timestep):
             *       scaled_timestep = timestep * timestep_scaling (10)
             *       c_skip = sigma_data**2 / (scaled_timestep**2 + sigma_data**2)   (sigma_data = 0.5)
             *       c_out = scaled_timestep / (scaled_timestep**2 + sigma_data**2) ** 0.5
             *   predicted_original_sample = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
             *   denoised = c_out * predicted_original_sample + c_skip * sample
             *   if step_index != num_inference_steps - 1:
             *       noise = randn_tensor(model_output.shape, generator=generator)
             *       prev_sample = alpha_prod_t_prev.sqrt() * denoised + beta_prod_t_prev.sqrt() * noise
             *   else: prev_sample = denoised
             * (Python float / tensor is tensor.reciprocal() * float.) */
            int prev = i + 1 < S ? ts[i + 1] : t;
            float a_t = ac[t], a_prev = ac[prev];
            float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
            float st = (float)t * 10.0f;
            float q = st * st + 0.25f;
            float c_skip = (1.0f / q) * 0.25f;
            float c_out = st / sqrtf(q);
            float sb = sqrtf(b_t), sa = sqrtf(a_t);
            for (int64_t j = 0; j < n; j++) {
                float x0 = (r->x[j] - sb * eps[j]) / sa;
                r->den[j] = c_out * x0 + c_skip * r->x[j];
            }
            if (i != S - 1) {
                draw(r, r->noise);
                float ca = sqrtf(a_prev), cb = sqrtf(b_prev);
                for (int64_t j = 0; j < n; j++) r->xn[j] = ca * r->den[j] + cb * r->noise[j];
            } else {
                memcpy(r->xn, r->den, (size_t)n * sizeof(float));
            }
            break;
        }
        case LDM_SAMPLER_TCD: {
            /* TCDScheduler.step(model_output, timestep, sample, eta=gamma):
             *   prev_timestep = timesteps[step_index + 1], or 0 on the last step
             *   timestep_s = torch.floor((1 - eta) * prev_timestep).to(dtype=torch.long)
             *   alpha_prod_t = alphas_cumprod[timestep]; beta_prod_t = 1 - alpha_prod_t
             *   alpha_prod_t_prev = alphas_cumprod[prev_timestep]
             *   alpha_prod_s = alphas_cumprod[timestep_s]; beta_prod_s = 1 - alpha_prod_s
             *   pred_original_sample = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
             *   pred_noised_sample = alpha_prod_s.sqrt() * pred_original_sample + beta_prod_s.sqrt() * model_output
             *   if eta > 0 and step_index != num_inference_steps - 1:
             *       noise = randn_tensor(...)
             *       prev_sample = (alpha_prod_t_prev / alpha_prod_s).sqrt() * pred_noised_sample
             *                     + (1 - alpha_prod_t_prev / alpha_prod_s).sqrt() * noise
             *   else: prev_sample = pred_noised_sample */
            int prev = i + 1 < S ? ts[i + 1] : 0;
            int t_s = (int)floorf((float)(1.0 - p->gamma) * (float)prev);
            float a_t = ac[t], a_prev = ac[prev], a_s = ac[t_s];
            float b_t = 1.0f - a_t, b_s = 1.0f - a_s;
            float sb = sqrtf(b_t), sa = sqrtf(a_t), ssa = sqrtf(a_s), ssb = sqrtf(b_s);
            for (int64_t j = 0; j < n; j++) {
                float x0 = (r->x[j] - sb * eps[j]) / sa;
                r->den[j] = ssa * x0 + ssb * eps[j];
            }
            if (p->gamma > 0.0 && i != S - 1) {
                draw(r, r->noise);
                float q = a_prev / a_s;
                float ca = sqrtf(q), cb = sqrtf(1.0f - q);
                for (int64_t j = 0; j < n; j++) r->xn[j] = ca * r->den[j] + cb * r->noise[j];
            } else {
                memcpy(r->xn, r->den, (size_t)n * sizeof(float));
            }
            break;
        }
        case LDM_SAMPLER_UNI_PC: {
            /* UniPCMultistepScheduler.step (bh2, solver_order 2, predict_x0, lower_order_final):
             *   model_output_convert = convert_model_output(model_output, sample)
             *       x0_pred = (sample - sigma_t * model_output) / alpha_t
             *   if step_index > 0: sample = multistep_uni_c_bh_update(model_output_convert,
             *                               last_sample, sample, order=this_order)
             *   model_outputs = [model_outputs[-1], model_output_convert]
             *   this_order = min(min(solver_order, len(timesteps) - step_index), lower_order_nums + 1)
             *   last_sample = sample
             *   prev_sample = multistep_uni_p_bh_update(model_output, sample, order=this_order)
             *   lower_order_nums = min(lower_order_nums + 1, solver_order) */
            float al, sg, lam;
            unipc_ast(usig[i], &al, &sg, &lam);
            for (int64_t j = 0; j < n; j++) r->den[j] = (r->x[j] - sg * eps[j]) / al;
            if (i > start) { /* use_corrector: step_index > 0 and last_sample is not None */
                /* multistep_uni_c_bh_update: from last_sample at sigmas[i-1] to sigmas[i]
                 *   h = lambda_t - lambda_s0; hh = -h; h_phi_1 = expm1(hh); B_h = expm1(hh)
                 *   order 2: rk = (lambda_{i-2} - lambda_s0) / h; D1 = (m_{i-2} - m0) / rk
                 *            rhos_c = solve([[1, 1], [rk, 1]], [h_phi_k / B_h, h_phi_k' * 2 / B_h])
                 *   order 1: rhos_c = [0.5]
                 *   x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
                 *   x_t = x_t_ - alpha_t * B_h * (rhos_c[0] * D1 + rhos_c[-1] * (model_t - m0)) */
                float al0, sg0, lam0;
                unipc_ast(usig[i - 1], &al0, &sg0, &lam0);
                float h = lam - lam0, hh = -h;
                float h_phi_1 = expm1f(hh), B_h = expm1f(hh);
                float rho0 = 0.0f, rho1 = 0.5f, rk = 1.0f;
                if (this_order == 2) {
                    float al1, sg1, lam1;
                    unipc_ast(usig[i - 2], &al1, &sg1, &lam1);
                    rk = (lam1 - lam0) / h;
                    float h_phi_k = h_phi_1 / hh - 1.0f;
                    float b0 = h_phi_k * 1.0f / B_h;
                    h_phi_k = h_phi_k / hh - 0.5f;
                    float b1 = h_phi_k * 2.0f / B_h;
                    solve2(rk, b0, b1, &rho0, &rho1);
                }
                float c0 = sg / sg0, c1 = al * h_phi_1, c2 = al * B_h;
                for (int64_t j = 0; j < n; j++) {
                    float xt_ = c0 * last[j] - c1 * m_prev[j];
                    float d1t = r->den[j] - m_prev[j];
                    float corr = rho1 * d1t;
                    if (this_order == 2) corr = rho0 * ((m_prev2[j] - m_prev[j]) / rk) + corr;
                    r->x[j] = xt_ - c2 * corr;
                }
            }
            memcpy(m_prev2, m_prev, (size_t)n * sizeof(float));
            memcpy(m_prev, r->den, (size_t)n * sizeof(float));
            this_order = S - i < 2 ? S - i : 2;
            if (this_order > lower_order_nums + 1) this_order = lower_order_nums + 1;
            memcpy(last, r->x, (size_t)n * sizeof(float));
            /* multistep_uni_p_bh_update: from sigmas[i] to sigmas[i+1]
             *   x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
             *   order 2: rk = (lambda_{i-1} - lambda_s0) / h; D1 = (m_{i-1} - m0) / rk; rhos_p = [0.5]
             *   x_t = x_t_ - alpha_t * B_h * (0.5 * D1)     (order 1: x_t = x_t_ - alpha_t * B_h * 0)
             * The step to sigma = 0 has lambda_t = +inf, h_phi_1 = B_h = -1: x_t = m0. */
            {
                float al_t, sg_t, lam_t;
                unipc_ast(usig[i + 1], &al_t, &sg_t, &lam_t);
                float h = lam_t - lam, hh = -h;
                float h_phi_1 = expm1f(hh), B_h = expm1f(hh);
                float c0 = sg_t / sg, c1 = al_t * h_phi_1, c2 = al_t * B_h;
                float rk = 1.0f;
                if (this_order == 2) {
                    float al1, sg1, lam1;
                    unipc_ast(usig[i - 1], &al1, &sg1, &lam1);
                    rk = (lam1 - lam) / h;
                }
                for (int64_t j = 0; j < n; j++) {
                    float xt_ = c0 * r->x[j] - c1 * m_prev[j];
                    if (this_order == 2) {
                        float d1 = (m_prev2[j] - m_prev[j]) / rk;
                        r->xn[j] = xt_ - c2 * (0.5f * d1);
                    } else {
                        r->xn[j] = xt_ - c2 * 0.0f;
                    }
                }
            }
            if (lower_order_nums < 2) lower_order_nums++;
            break;
        }
        default:
            ldm_fail("diffusers: sampler %s is not a diffusers scheduler", ldm_sampler_name(p->kind));
            goto fail;
        }
        if (report(r, i - start, S - start, (float)t, sqrtf((1.0f - ac[t]) / ac[t])) != 0) goto fail;
        if (p->mask) diffusers_blend(r, ac, ts, usig, i, S, noise0);
        memcpy(r->x, r->xn, (size_t)n * sizeof(float));
    }
    goto done;
fail:
    ret = -1;
done:
    free(ac);
    free(ts);
    free(usig);
    return ret;
}

/* ----------------------------------------------------------------------------
 * Entry point
 * ------------------------------------------------------------------------- */

int ldm_sample(const LdmSchedule *s, const LdmSampler *p, float *x) {
    LdmDdim d;
    Plan pl;
    if (plan_make(s, p, &d, &pl) != 0) {
        ldm_ddim_free(&d);
        return -1;
    }
    ldm_fail("%s", ""); /* so report() can tell whether a callback recorded a reason */
    int64_t n = p->n;
    size_t bytes = (size_t)n * sizeof(float);
    Run r = {0};
    r.s = s;
    r.p = p;
    r.n = n;
    r.x = ldm_xmalloc(bytes);
    r.xn = ldm_xmalloc(bytes);
    r.eps = ldm_xmalloc(bytes);
    r.den = ldm_xmalloc(bytes);
    r.noise = ldm_xmalloc(bytes);
    r.tmp = ldm_xmalloc(bytes);
    r.aux = ldm_xmalloc(bytes);
    r.old = ldm_xmalloc(3 * bytes);
    memcpy(r.x, x, bytes);

    r.x2 = ldm_xmalloc(bytes);
    r.den2 = ldm_xmalloc(bytes);
    r.vout = p->v_pred ? ldm_xmalloc(bytes) : NULL;
    int fam = ldm_sampler_family(p->kind);
    if (fam == 1 && p->sigmas == LDM_SIGMAS_SGM) {
        r.sgm_table = ldm_xmalloc((size_t)s->T * sizeof(float));
        ldm_sgm_sigma_table(s, r.sgm_table);
    }
    int ret = fam == 1 ? run_kdiff(&r, &pl) : fam == 2 ? run_diffusers(&r, &pl) : run_ddim_plms(&r, &d, &pl);
    if (ret == 0) {
        if (p->mask && fam != 2) paste_known(&r); /* diffusers: the last step's blend is the paste */
        memcpy(x, r.x, bytes);
    }

    free(r.x);
    free(r.xn);
    free(r.eps);
    free(r.den);
    free(r.noise);
    free(r.tmp);
    free(r.aux);
    free(r.old);
    free(r.x2);
    free(r.den2);
    free(r.sgm_table);
    free(r.vout);
    ldm_ddim_free(&d);
    return ret;
}
