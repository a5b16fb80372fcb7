/*
 * schedule.c - noise schedules (see schedule.h).
 *
 * The reference mixes float64 (numpy, make_beta_schedule) and float32
 * (the registered buffers and everything derived from them); each function
 * below says which precision every step runs in, because the goldens are
 * compared at a few float32 ulps.
 */
#include "schedule.h"

/* The reference rounds every product and sum separately; keep GCC from
 * fusing a * b + c into one FMA (its default in gnu11 mode once
 * -march=native enables FMA), which moves results by an ulp. */
#pragma GCC optimize("fp-contract=off")

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "torchmath.h"
#include "util.h"

/* ----------------------------------------------------------------------------
 * torch.linspace
 * ------------------------------------------------------------------------- */

/* torch 1.13 aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp linspace_kernel:
 * step = (end - start) / (steps - 1) in the tensor's dtype, point i =
 * start + step * i. cpu_serial_kernel_vec computes whole blocks of two
 * 32-byte vectors (16 floats / 8 doubles) with Vectorized::arange(start +
 * step * idx, step), i.e. each 8-float (4-double) vector as base + j * step,
 * and the tail one point at a time. Reproduced exactly: the Karras ramp of
 * the goldens (linspace(0, 1, 10), point 6 = 6 * step, not 1 - 3 * step)
 * depends on it. */
#define LINSPACE_BODY(T, LANES)                                                  \
    if (n <= 0) return;                                                          \
    if (n == 1) {                                                                \
        out[0] = start;                                                          \
        return;                                                                  \
    }                                                                            \
    T step = (end - start) / (T)(n - 1);                                         \
    int i = 0;                                                                   \
    for (; i <= n - 2 * (LANES); i += 2 * (LANES))                               \
        for (int v = 0; v < 2; v++) {                                            \
            int idx = i + v * (LANES);                                           \
            T base = start + step * (T)idx;                                      \
            for (int j = 0; j < (LANES); j++) out[idx + j] = base + (T)j * step; \
        }                                                                        \
    for (; i < n; i++) out[i] = start + step * (T)i;

void ldm_linspace_f32(float start, float end, int n, float *out) { LINSPACE_BODY(float, 8) }

void ldm_linspace_f64(double start, double end, int n, double *out) { LINSPACE_BODY(double, 4) }

#undef LINSPACE_BODY

/* ----------------------------------------------------------------------------
 * DDPM schedule
 * ------------------------------------------------------------------------- */

static void schedule_alloc(LdmSchedule *s, int T) {
    memset(s, 0, sizeof *s);
    s->T = T;
    s->alphas_cumprod64 = ldm_xmalloc((size_t)T * sizeof(double));
    s->betas = ldm_xmalloc((size_t)T * sizeof(float));
    s->alphas_cumprod = ldm_xmalloc((size_t)T * sizeof(float));
    s->alphas_cumprod_prev = ldm_xmalloc((size_t)T * sizeof(float));
    s->sqrt_alphas_cumprod = ldm_xmalloc((size_t)T * sizeof(float));
    s->sqrt_one_minus_alphas_cumprod = ldm_xmalloc((size_t)T * sizeof(float));
    s->sigmas = ldm_xmalloc((size_t)T * sizeof(float));
    s->log_sigmas = ldm_xmalloc((size_t)T * sizeof(float));
}

/* Everything derived from alphas_cumprod64 (and the float32 buffer). */
static int schedule_derive(LdmSchedule *s) {
    int T = s->T;
    for (int j = 0; j < T; j++) {
        double ac = s->alphas_cumprod64[j];
        /* register_schedule: to_torch(np.append(1., alphas_cumprod[:-1])),
         * to_torch(np.sqrt(alphas_cumprod)), to_torch(np.sqrt(1. - alphas_cumprod)):
         * float64 math, one rounding to float32. */
        s->alphas_cumprod_prev[j] = (float)(j == 0 ? 1.0 : s->alphas_cumprod64[j - 1]);
        s->sqrt_alphas_cumprod[j] = (float)sqrt(ac);
        s->sqrt_one_minus_alphas_cumprod[j] = (float)sqrt(1.0 - ac);
        /* DiscreteEpsDDPMDenoiser.__init__: ((1 - ac) / ac) ** 0.5 on the
         * float32 buffer, in float32; DiscreteSchedule: log_sigmas = sigmas.log(). */
        float acf = s->alphas_cumprod[j];
        s->sigmas[j] = sqrtf((1.0f - acf) / acf);
        s->log_sigmas[j] = logf(s->sigmas[j]);
        if (!(acf > 0.0f && acf < 1.0f))
            return ldm_fail("noise schedule: alphas_cumprod[%d] = %g, expected a value in (0, 1)", j,
                            (double)acf);
        if (j > 0 && !(s->sigmas[j] >= s->sigmas[j - 1]))
            return ldm_fail("noise schedule: sigmas must not decrease with t, but sigma[%d] = %g < sigma[%d] = %g",
                            j, (double)s->sigmas[j], j - 1, (double)s->sigmas[j - 1]);
    }
    return 0;
}

int ldm_schedule_init(LdmSchedule *s, double linear_start, double linear_end, int T) {
    memset(s, 0, sizeof *s);
    if (T < 2)
        return ldm_fail("noise schedule: timesteps = %d, expected at least 2", T);
    if (!(linear_start > 0.0 && linear_start < 1.0) || !(linear_end > 0.0 && linear_end < 1.0))
        return ldm_fail("noise schedule: linear_start = %g and linear_end = %g, expected values in (0, 1)",
                        linear_start, linear_end);
    schedule_alloc(s, T);
    /* make_beta_schedule('linear'):
     *   betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, T, dtype=torch.float64) ** 2
     * then register_schedule: alphas = 1. - betas; alphas_cumprod = np.cumprod(alphas, axis=0). */
    double *lin = ldm_xmalloc((size_t)T * sizeof(double));
    ldm_linspace_f64(pow(linear_start, 0.5), pow(linear_end, 0.5), T, lin);
    double prod = 1.0;
    for (int j = 0; j < T; j++) {
        double beta = lin[j] * lin[j];
        prod *= 1.0 - beta;
        s->betas[j] = (float)beta;
        s->alphas_cumprod64[j] = prod;
        s->alphas_cumprod[j] = (float)prod;
    }
    free(lin);
    s->linear_start = linear_start;
    s->linear_end = linear_end;
    if (schedule_derive(s) != 0) {
        ldm_schedule_free(s);
        return -1;
    }
    return 0;
}

int ldm_schedule_init_from_alphas(LdmSchedule *s, const float *alphas_cumprod, int T) {
    memset(s, 0, sizeof *s);
    if (T < 2)
        return ldm_fail("noise schedule: alphas_cumprod has %d entries, expected at least 2", T);
    schedule_alloc(s, T);
    for (int j = 0; j < T; j++) {
        s->alphas_cumprod[j] = alphas_cumprod[j];
        s->alphas_cumprod64[j] = alphas_cumprod[j];
        /* betas = 1 - ac[j] / ac[j-1] (the inverse of the cumprod) */
        double prev = j == 0 ? 1.0 : (double)alphas_cumprod[j - 1];
        s->betas[j] = (float)(1.0 - (double)alphas_cumprod[j] / prev);
    }
    if (schedule_derive(s) != 0) {
        ldm_schedule_free(s);
        return -1;
    }
    return 0;
}

void ldm_schedule_free(LdmSchedule *s) {
    free(s->alphas_cumprod64);
    free(s->betas);
    free(s->alphas_cumprod);
    free(s->alphas_cumprod_prev);
    free(s->sqrt_alphas_cumprod);
    free(s->sqrt_one_minus_alphas_cumprod);
    free(s->sigmas);
    free(s->log_sigmas);
    memset(s, 0, sizeof *s);
}

/* ----------------------------------------------------------------------------
 * DDIM
 * ------------------------------------------------------------------------- */

int ldm_ddim_make(const LdmSchedule *s, int steps, double eta, LdmDdim *d) {
    memset(d, 0, sizeof *d);
    int T = s->T;
    if (steps < 1 || steps > T)
        return ldm_fail("DDIM: %d steps requested, expected 1..%d (the model's timesteps)", steps, T);
    if (!(eta >= 0.0) || !isfinite(eta))
        return ldm_fail("DDIM: eta = %g, expected a finite value >= 0", eta);
    /* make_ddim_timesteps('uniform'): c = T // S;
     * ddim_timesteps = np.asarray(list(range(0, T, c))) + 1
     * (ceil(T / c) entries, which is more than S when c does not divide T
     * evenly, e.g. S = 7 gives 8 steps; the reference runs them all). */
    int c = T / steps;
    int n = (T + c - 1) / c;
    if ((n - 1) * c + 1 >= T)
        return ldm_fail("DDIM: %d steps give the timestep %d, outside the %d-step schedule "
                        "(CompVis make_ddim_timesteps would index alphas_cumprod[%d]); choose another step count",
                        steps, (n - 1) * c + 1, T, (n - 1) * c + 1);
    d->n = n;
    d->timesteps = ldm_xmalloc((size_t)n * sizeof(int));
    d->alphas = ldm_xmalloc((size_t)n * sizeof(float));
    d->alphas_prev = ldm_xmalloc((size_t)n * sizeof(float));
    d->sqrt_one_minus_alphas = ldm_xmalloc((size_t)n * sizeof(float));
    d->sigmas = ldm_xmalloc((size_t)n * sizeof(float));
    const float *ac = s->alphas_cumprod; /* make_schedule reads the float32 buffer */
    for (int i = 0; i < n; i++) {
        d->timesteps[i] = i * c + 1;
        /* make_ddim_sampling_parameters:
         *   alphas = alphacums[ddim_timesteps]
         *   alphas_prev = np.asarray([alphacums[0]] + alphacums[ddim_timesteps[:-1]].tolist())
         * (the last DDIM step goes to alphas_cumprod[0], not to 1). */
        float a = ac[d->timesteps[i]];
        float ap = i == 0 ? ac[0] : ac[d->timesteps[i - 1]];
        d->alphas[i] = a;
        d->alphas_prev[i] = ap;
        /* self.ddim_sqrt_one_minus_alphas = np.sqrt(1. - ddim_alphas): float32 */
        d->sqrt_one_minus_alphas[i] = sqrtf(1.0f - a);
        /* sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev)):
         * alphas_prev is a float64 numpy array, alphas a float32 tensor, so
         * (1 - alphas) is rounded to float32 and the rest runs in float64;
         * p_sample_ddim then reads the value into a float32 tensor. */
        double one_minus_a = (double)(1.0f - a);
        double sig = eta * sqrt((1.0 - (double)ap) / one_minus_a * (1.0 - (double)a / (double)ap));
        d->sigmas[i] = (float)sig;
    }
    return 0;
}

void ldm_ddim_free(LdmDdim *d) {
    free(d->timesteps);
    free(d->alphas);
    free(d->alphas_prev);
    free(d->sqrt_one_minus_alphas);
    free(d->sigmas);
    memset(d, 0, sizeof *d);
}

/* ----------------------------------------------------------------------------
 * k-diffusion
 * ------------------------------------------------------------------------- */

const char *ldm_sigma_kind_name(LdmSigmaKind k) {
    switch (k) {
    case LDM_SIGMAS_DISCRETE: return "discrete";
    case LDM_SIGMAS_KARRAS: return "karras";
    case LDM_SIGMAS_EXPONENTIAL: return "exponential";
    case LDM_SIGMAS_POLYEXPONENTIAL: return "polyexponential";
    case LDM_SIGMAS_AYS: return "ays";
    case LDM_SIGMAS_SGM: return "sgm";
    }
    return "?";
}

const char *ldm_sigma_kind_list(void) { return "discrete, karras, exponential, polyexponential, ays, sgm"; }

/* The webui's "Schedule type" labels (modules/sd_schedulers.py). Its
 * "Uniform" is the model's own discrete sigmas (inner_model.get_sigmas(n)),
 * ours. */
const char *ldm_sigma_kind_webui_name(LdmSigmaKind k) {
    switch (k) {
    case LDM_SIGMAS_DISCRETE: return "Uniform";
    case LDM_SIGMAS_KARRAS: return "Karras";
    case LDM_SIGMAS_EXPONENTIAL: return "Exponential";
    case LDM_SIGMAS_POLYEXPONENTIAL: return "Polyexponential";
    case LDM_SIGMAS_AYS: return "Align Your Steps";
    case LDM_SIGMAS_SGM: return "SGM Legacy DDPM"; /* not the webui's "SGM Uniform" (fractional timesteps) */
    }
    return "?";
}

int ldm_sigma_kind_parse(const char *name, LdmSigmaKind *out) {
    /* our names, k-diffusion / ComfyUI's ("normal", "align_your_steps") and
     * the webui's labels ("Karras", "Align Your Steps", "Uniform", and
     * "Automatic": the sampler's default, discrete for every sampler here);
     * case, ' ', '_' and '-' not significant */
    static const struct {
        const char *name;
        LdmSigmaKind kind;
    } names[] = {
        {"discrete", LDM_SIGMAS_DISCRETE},   {"normal", LDM_SIGMAS_DISCRETE},
        {"uniform", LDM_SIGMAS_DISCRETE},    {"automatic", LDM_SIGMAS_DISCRETE},
        {"karras", LDM_SIGMAS_KARRAS},       {"exponential", LDM_SIGMAS_EXPONENTIAL},
        {"polyexponential", LDM_SIGMAS_POLYEXPONENTIAL}, {"ays", LDM_SIGMAS_AYS},
        {"alignyoursteps", LDM_SIGMAS_AYS},  {"sgm", LDM_SIGMAS_SGM},
    };
    char nn[64];
    size_t k = 0;
    for (const char *c = name; *c && k + 1 < sizeof nn; c++) {
        if (*c == ' ' || *c == '_' || *c == '-') continue;
        nn[k++] = (char)((*c >= 'A' && *c <= 'Z') ? *c - 'A' + 'a' : *c);
    }
    nn[k] = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(nn, names[i].name)) {
            *out = names[i].kind;
            return 0;
        }
    return ldm_fail("unknown schedule '%s', expected one of %s (or a webui label: \"Karras\", \"Align Your Steps\", "
                    "...)", name, ldm_sigma_kind_list());
}

double ldm_sigma_default_rho(LdmSigmaKind k) {
    return k == LDM_SIGMAS_KARRAS ? 7.0 : k == LDM_SIGMAS_POLYEXPONENTIAL ? 1.0 : 0.0;
}

/* DiscreteSchedule.t_to_sigma, in float32:
 *   low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
 *   log_sigma = (1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]
 *   return log_sigma.exp() */
float ldm_t_to_sigma(const LdmSchedule *s, float t) {
    if (!(t >= 0.0f)) t = 0.0f;
    if (t > (float)(s->T - 1)) t = (float)(s->T - 1);
    int lo = (int)floorf(t), hi = (int)ceilf(t);
    float w = t - truncf(t);
    float log_sigma = (1.0f - w) * s->log_sigmas[lo] + w * s->log_sigmas[hi];
    return expf(log_sigma);
}

/* DiscreteSchedule.sigma_to_t (quantize=False), in float32:
 *   log_sigma = sigma.log()
 *   dists = log_sigma - log_sigmas[:, None]
 *   low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=T - 2)
 *   high_idx = low_idx + 1
 *   w = ((low - log_sigma) / (low - high)).clamp(0, 1)
 *   t = (1 - w) * low_idx + w * high_idx
 * argmax of the cumulative count is its first maximum, i.e. the LAST j with
 * log_sigmas[j] <= log_sigma (0 when there is none). */
float ldm_sigma_to_t(const LdmSchedule *s, float sigma) {
    float log_sigma = logf(sigma);
    int lo = 0;
    for (int j = 0; j < s->T; j++)
        if (log_sigma - s->log_sigmas[j] >= 0.0f) lo = j;
    if (lo > s->T - 2) lo = s->T - 2;
    int hi = lo + 1;
    float low = s->log_sigmas[lo], high = s->log_sigmas[hi];
    float w = (low - log_sigma) / (low - high);
    if (w < 0.0f) w = 0.0f;
    if (w > 1.0f) w = 1.0f;
    return (1.0f - w) * (float)lo + w * (float)hi;
}

/* ComfyUI comfy_extras/nodes_align_your_steps.py NOISE_LEVELS["SD1"] */
static const double ays_sd1[11] = {14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520,
                                   1.8841921177,  1.3943805092, 0.9642583904, 0.6523686016,
                                   0.3977456272,  0.1515232662, 0.0291671582};

/* np.linspace(start, stop, num) (endpoint): i * step + start, the last = stop */
static void np_linspace(double start, double stop, int num, double *out) {
    double step = num > 1 ? (stop - start) / (double)(num - 1) : 0.0;
    for (int i = 0; i < num; i++) out[i] = (double)i * step + start;
    if (num > 1) out[num - 1] = stop;
}

/* np.interp(x, xp, fp) for increasing xp (numpy arr_interp) */
static double np_interp(double x, const double *xp, const double *fp, int n) {
    if (x <= xp[0]) return fp[0];
    if (x >= xp[n - 1]) return fp[n - 1];
    int j = 0;
    while (j + 1 < n && xp[j + 1] <= x) j++;
    if (xp[j] == x) return fp[j];
    double slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    return slope * (x - xp[j]) + fp[j];
}

int ldm_sigmas_from_range(LdmSigmaKind kind, int steps, double sigma_min, double sigma_max, double rho, float *out) {
    if (steps < 1) return ldm_fail("k-diffusion: %d steps requested, expected at least 1", steps);
    if (rho == 0.0) rho = ldm_sigma_default_rho(kind);
    if ((kind == LDM_SIGMAS_KARRAS || kind == LDM_SIGMAS_POLYEXPONENTIAL) && !(rho > 0.0 && isfinite(rho)))
        return ldm_fail("%s schedule: rho = %g, expected a finite value > 0", ldm_sigma_kind_name(kind), rho);
    float *ramp = ldm_xmalloc((size_t)steps * sizeof(float));
    switch (kind) {
    case LDM_SIGMAS_KARRAS: {
        /* get_sigmas_karras(n, sigma_min, sigma_max, rho):
         *   ramp = torch.linspace(0, 1, n)                   (float32)
         *   min_inv_rho = sigma_min ** (1 / rho)             (Python float64)
         *   max_inv_rho = sigma_max ** (1 / rho)
         *   sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
         * The tensor expression runs in float32 with the Python scalars
         * rounded to float32. */
        double min_inv_rho = pow(sigma_min, 1.0 / rho);
        double max_inv_rho = pow(sigma_max, 1.0 / rho);
        ldm_linspace_f32(0.0f, 1.0f, steps, ramp);
        float span = (float)(min_inv_rho - max_inv_rho);
        for (int i = 0; i < steps; i++) {
            float base = (float)max_inv_rho + ramp[i] * span;
            out[i] = powf(base, (float)rho);
        }
        break;
    }
    case LDM_SIGMAS_EXPONENTIAL: {
        /* get_sigmas_exponential:
         *   sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp() */
        ldm_linspace_f32((float)log(sigma_max), (float)log(sigma_min), steps, ramp);
        for (int i = 0; i < steps; i++) out[i] = ldm_torch_expf(ramp[i]);
        break;
    }
    case LDM_SIGMAS_POLYEXPONENTIAL: {
        /* get_sigmas_polyexponential:
         *   ramp = torch.linspace(1, 0, n) ** rho
         *   sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)) */
        ldm_linspace_f32(1.0f, 0.0f, steps, ramp);
        float span = (float)(log(sigma_max) - log(sigma_min)), lmin = (float)log(sigma_min);
        for (int i = 0; i < steps; i++) {
            /* torch's pow(x, 2) is x * x, pow(x, 1) x itself */
            float r = rho == 1.0 ? ramp[i] : rho == 2.0 ? ramp[i] * ramp[i] : powf(ramp[i], (float)rho);
            out[i] = ldm_torch_expf(r * span + lmin);
        }
        break;
    }
    case LDM_SIGMAS_AYS: {
        /* AlignYourStepsScheduler.get_sigmas("SD1", steps, denoise=1):
         *   sigmas = NOISE_LEVELS["SD1"][:]
         *   if (steps + 1) != len(sigmas): sigmas = loglinear_interp(sigmas, steps + 1)
         *   sigmas[-1] = 0
         * loglinear_interp (float64 numpy):
         *   xs = np.linspace(0, 1, len(t)); ys = np.log(t[::-1])
         *   new_ys = np.interp(np.linspace(0, 1, num), xs, ys); return np.exp(new_ys)[::-1] */
        int m = steps + 1;
        double *v = ldm_xmalloc((size_t)m * sizeof(double));
        if (m == 11) {
            for (int i = 0; i < 11; i++) v[i] = ays_sd1[i];
        } else {
            double xs[11], ys[11];
            np_linspace(0.0, 1.0, 11, xs);
            for (int i = 0; i < 11; i++) ys[i] = log(ays_sd1[10 - i]);
            double *nx = ldm_xmalloc((size_t)m * sizeof(double));
            np_linspace(0.0, 1.0, m, nx);
            for (int i = 0; i < m; i++) v[m - 1 - i] = exp(np_interp(nx[i], xs, ys, 11));
            free(nx);
        }
        for (int i = 0; i < steps; i++) out[i] = (float)v[i];
        free(v);
        break;
    }
    default:
        free(ramp);
        return ldm_fail("k-diffusion: schedule %s needs the model's sigma table", ldm_sigma_kind_name(kind));
    }
    free(ramp);
    out[steps] = 0.0f; /* append_zero (ays: the last entry replaced by 0) */
    return 0;
}

int ldm_kdiff_sigmas(const LdmSchedule *s, LdmSigmaKind kind, int steps, float *out) {
    return ldm_kdiff_sigmas_rho(s, kind, steps, 0.0, out);
}

int ldm_kdiff_sigmas_rho(const LdmSchedule *s, LdmSigmaKind kind, int steps, double rho, float *out) {
    if (steps < 1)
        return ldm_fail("k-diffusion: %d steps requested, expected at least 1", steps);
    switch (kind) {
    case LDM_SIGMAS_DISCRETE: {
        /* DiscreteSchedule.get_sigmas(n):
         *   t = torch.linspace(T - 1, 0, n)   (float32)
         *   return append_zero(self.t_to_sigma(t)) */
        float *t = ldm_xmalloc((size_t)steps * sizeof(float));
        ldm_linspace_f32((float)(s->T - 1), 0.0f, steps, t);
        for (int i = 0; i < steps; i++) out[i] = ldm_t_to_sigma(s, t[i]);
        free(t);
        break;
    }
    case LDM_SIGMAS_SGM: {
        /* LegacyDDPMDiscretization(n): table[t_k] for t_k = 999, 899, ... */
        if (steps > s->T) return ldm_fail("sgm schedule: %d steps requested, at most %d", steps, s->T);
        float *table = ldm_xmalloc((size_t)s->T * sizeof(float));
        int *idx = ldm_xmalloc((size_t)steps * sizeof(int));
        ldm_sgm_sigma_table(s, table);
        ldm_sgm_timesteps(s->T, steps, idx);
        for (int i = 0; i < steps; i++) out[i] = table[idx[i]];
        free(idx);
        free(table);
        break;
    }
    case LDM_SIGMAS_KARRAS:
    case LDM_SIGMAS_EXPONENTIAL:
    case LDM_SIGMAS_POLYEXPONENTIAL:
    case LDM_SIGMAS_AYS:
        /* sigma_min=sigmas[0].item(), sigma_max=sigmas[-1].item() (Python floats) */
        return ldm_sigmas_from_range(kind, steps, (double)s->sigmas[0], (double)s->sigmas[s->T - 1], rho, out);
    default:
        return ldm_fail("k-diffusion: unknown sigma schedule %d", (int)kind);
    }
    out[steps] = 0.0f; /* sampling.append_zero */
    return 0;
}

/* ----------------------------------------------------------------------------
 * diffusers schedulers
 * ------------------------------------------------------------------------- */

void ldm_diffusers_alphas_cumprod(double beta_start, double beta_end, int T, float *out) {
    /* betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
     * alphas = 1.0 - betas
     * alphas_cumprod = torch.cumprod(alphas, dim=0)
     * The ends are rounded to float32, the points start + i * (end - start)
     * / (T - 1) computed in double and rounded (this matches the reference
     * table best: within 7.5e-9, against 9e-8 for an all-float32 linspace);
     * the CPU cumprod accumulates a float32 input in double
     * (at::acc_type<float, false>), rounding every output. */
    double s = (double)(float)pow(beta_start, 0.5), e = (double)(float)pow(beta_end, 0.5);
    double acc = 1.0;
    for (int i = 0; i < T; i++) {
        float b = (float)(s + (double)i * (e - s) / (double)(T - 1));
        float beta = b * b;
        float alpha = 1.0f - beta;
        acc *= (double)alpha;
        out[i] = (float)acc;
    }
}

int ldm_lcm_timesteps_strength(int T, int orig, int steps, double strength, int *out) {
    if (orig < 1 || orig > T)
        return ldm_fail("LCM: original_inference_steps %d, expected 1..%d", orig, T);
    if (steps < 1 || steps > orig)
        return ldm_fail("LCM/TCD: %d steps, expected 1..%d (original_inference_steps: the LCM grid has %d "
                        "timesteps)", steps, orig, orig);
    if (!(strength >= 0.0 && strength <= 1.0))
        return ldm_fail("LCM/TCD: strength %g, expected a value in [0, 1]", strength);
    /* k = T // original_steps
     * lcm_origin_timesteps = np.asarray(list(range(1, int(original_steps * strength) + 1))) * k - 1, reversed
     * skipping_step = len(lcm_origin_timesteps) // num_inference_steps; < 1 is a ValueError
     * inference_indices = np.floor(np.linspace(0, len, num=steps, endpoint=False)).astype(np.int64)
     * timesteps = lcm_origin_timesteps[inference_indices] */
    int k = T / orig;
    int len = (int)((double)orig * strength);
    if (len / steps < 1)
        return ldm_fail("LCM/TCD: original_inference_steps x strength = %d x %g leaves %d grid timesteps, fewer than "
                        "the %d steps", orig, strength, len, steps);
    double step = (double)len / (double)steps;
    for (int i = 0; i < steps; i++) {
        int idx = (int)floor((double)i * step + 0.0);
        out[i] = (len - idx) * k - 1;
    }
    return 0;
}

int ldm_lcm_timesteps(int T, int orig, int steps, int *out) {
    return ldm_lcm_timesteps_strength(T, orig, steps, 1.0, out);
}

int ldm_unipc_timesteps(int T, int steps, int *out) {
    if (steps < 1 || steps > T) return ldm_fail("UniPC: %d steps, expected 1..%d", steps, T);
    double *v = ldm_xmalloc((size_t)(steps + 1) * sizeof(double));
    np_linspace(0.0, (double)(T - 1), steps + 1, v);
    for (int i = 0; i < steps; i++) out[i] = (int)nearbyint(v[steps - i]);
    free(v);
    return 0;
}

void ldm_unipc_sigmas(const float *ac, const int *ts, int steps, float *out) {
    for (int i = 0; i < steps; i++) out[i] = sqrtf((1.0f - ac[ts[i]]) / ac[ts[i]]);
    out[steps] = 0.0f;
}

/* ----------------------------------------------------------------------------
 * sgm DiscreteDenoiser (sgm/modules/diffusionmodules/denoiser.py, discretizer.py)
 * ------------------------------------------------------------------------- */

void ldm_sgm_sigma_table(const LdmSchedule *s, float *out) {
    /* to_torch((1 - alphas_cumprod) / alphas_cumprod) ** 0.5: numpy float64
     * ratio -> float32 tensor -> float32 sqrt */
    for (int i = 0; i < s->T; i++) {
        double ac = s->alphas_cumprod64[i];
        out[i] = sqrtf((float)((1.0 - ac) / ac));
    }
}

int ldm_sgm_sigma_index(const float *table, int T, float sigma) {
    /* dists = sigma - self.sigmas[:, None]; dists.abs().argmin(dim=0) (float32) */
    int best = 0;
    float bd = fabsf(sigma - table[0]);
    for (int i = 1; i < T; i++) {
        float d = fabsf(sigma - table[i]);
        if (d < bd) {
            bd = d;
            best = i;
        }
    }
    return best;
}

int ldm_sgm_timesteps(int T, int n, int *idx) {
    /* generate_roughly_equally_spaced_steps: np.linspace(T - 1, 0, n,
     * endpoint=False).astype(int)[::-1]; the sigmas are then flipped, so
     * the sampler's order is this linspace's own: start + k * step */
    if (n < 1 || n > T) return ldm_fail("sgm schedule: %d steps requested, expected 1..%d", n, T);
    double step = (0.0 - (double)(T - 1)) / (double)n;
    for (int k = 0; k < n; k++) idx[k] = (int)((double)k * step + (double)(T - 1));
    return 0;
}
