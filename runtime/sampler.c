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

#include "util.h"

const char *ldm_sampler_name(LdmSamplerKind k) {
    switch (k) {
    case LDM_SAMPLER_DDIM: return "ddim";
    case LDM_SAMPLER_PLMS: return "plms";
    case LDM_SAMPLER_EULER: return "euler";
    case LDM_SAMPLER_EULER_A: return "euler_a";
    case LDM_SAMPLER_DPMPP_2M: return "dpmpp_2m";
    }
    return "?";
}

int ldm_sampler_parse(const char *name, LdmSamplerKind *out) {
    static const LdmSamplerKind all[] = {LDM_SAMPLER_DDIM, LDM_SAMPLER_PLMS, LDM_SAMPLER_EULER,
                                         LDM_SAMPLER_EULER_A, LDM_SAMPLER_DPMPP_2M};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(name, ldm_sampler_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    return ldm_fail("unknown sampler '%s', expected one of ddim, plms, euler, euler_a, dpmpp_2m", name);
}

static int is_kdiff(LdmSamplerKind k) {
    return k == LDM_SAMPLER_EULER || k == LDM_SAMPLER_EULER_A || k == LDM_SAMPLER_DPMPP_2M;
}

/* ----------------------------------------------------------------------------
 * Parameter checks and the shape of a run
 * ------------------------------------------------------------------------- */

typedef struct Plan {
    int img2img; /* start from init_latent */
    int t_enc;   /* img2img: int(strength * steps) steps run */
    int n_steps; /* steps this run takes */
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
    if (!p->noise_fn) {
        if (p->mask) return ldm_fail("%s: inpainting needs a noise source (noise_fn)", name);
        if (p->kind == LDM_SAMPLER_EULER_A) return ldm_fail("euler_a: needs a noise source (noise_fn)");
        if (p->kind == LDM_SAMPLER_DDIM && p->eta != 0.0)
            return ldm_fail("ddim: eta = %g needs a noise source (noise_fn)", p->eta);
    }
    pl->img2img = p->init_latent && p->strength > 0.0 && p->strength < 1.0;
    if (pl->img2img) {
        /* scripts/img2img.py: t_enc = int(opt.strength * opt.ddim_steps) */
        pl->t_enc = (int)(p->strength * (double)p->steps);
        if (pl->t_enc < 1)
            return ldm_fail("%s: strength %g with %d steps gives int(strength * steps) = 0 denoising steps",
                            name, p->strength, p->steps);
    }
    if (is_kdiff(p->kind)) {
        pl->n_steps = pl->img2img ? pl->t_enc : p->steps;
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
    int n_old;     /* valid entries in old */
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
static void ddim_update(const LdmDdim *d, int index, const float *x, const float *e, const float *noise,
                        float *pred_x0, float *x_prev, int64_t n) {
    float a_t = d->alphas[index], a_prev = d->alphas_prev[index], sigma_t = d->sigmas[index];
    float sqrt_one_minus_at = d->sqrt_one_minus_alphas[index];
    float sqrt_at = sqrtf(a_t), sqrt_a_prev = sqrtf(a_prev);
    float dir_coef = sqrtf(1.0f - a_prev - sigma_t * sigma_t);
    for (int64_t j = 0; j < n; j++) {
        float p0 = (x[j] - sqrt_one_minus_at * e[j]) / sqrt_at;
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

        if (call_model(r, r->x, (float)ts) != 0) return -1;

        if (p->kind == LDM_SAMPLER_DDIM) {
            draw(r, r->noise);
            ddim_update(d, index, r->x, r->eps, r->noise, r->den, r->xn, n);
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
                ddim_update(d, index, r->x, e_t, r->noise, r->den, r->tmp, n);
                /* keep e_t: the model writes into r->eps, so save it in the ring first */
                float *slot = r->old + (int64_t)((r->old_pos + 1) % 3) * n;
                memcpy(slot, e_t, (size_t)n * sizeof(float));
                if (call_model(r, r->tmp, (float)ts_next) != 0) return -1;
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
            ddim_update(d, index, r->x, e_prime, r->noise, r->den, r->xn, n);
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
 * Leaves the denoised latent in r->den. */
static int denoise(Run *r, float sigma, float *t_out) {
    float c_in = 1.0f / sqrtf(sigma * sigma + 1.0f);
    float t = ldm_sigma_to_t(r->s, sigma);
    for (int64_t j = 0; j < r->n; j++) r->tmp[j] = r->x[j] * c_in;
    if (call_model(r, r->tmp, t) != 0) return -1;
    for (int64_t j = 0; j < r->n; j++) r->den[j] = r->x[j] + r->eps[j] * -sigma;
    *t_out = t;
    return 0;
}

static int run_kdiff(Run *r, const Plan *pl) {
    const LdmSampler *p = r->p;
    int64_t n = r->n;
    int S = p->steps;
    float *sig = ldm_xmalloc((size_t)(S + 1) * sizeof(float));
    if (ldm_kdiff_sigmas(r->s, p->sigmas, S, sig) != 0) {
        free(sig);
        return -1;
    }
    int start = pl->img2img ? S - pl->t_enc : 0;
    if (pl->img2img) {
        /* x = x0 + noise * sigmas[start] */
        for (int64_t j = 0; j < n; j++) r->x[j] = p->init_latent[j] + r->x[j] * sig[start];
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
    free(sig);
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

    int ret = is_kdiff(p->kind) ? run_kdiff(&r, &pl) : run_ddim_plms(&r, &d, &pl);
    if (ret == 0) {
        if (p->mask) paste_known(&r);
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
    ldm_ddim_free(&d);
    return ret;
}
