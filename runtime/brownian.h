/*
 * brownian.h - torchsde's BrownianTree as k-diffusion's
 * BrownianTreeNoiseSampler uses it (DPM++ SDE, DPM++ 2M SDE), reproduced
 * exactly: the noise of a seed is the reference's, bit for bit.
 *
 * Reference: google-research/torchsde brownian_interval.py (BrownianInterval
 * with halfway_tree=True, tol=1e-6, pool_size=24, levy_area_approximation
 * 'none', w0 = 0), numpy SeedSequence (bit_generator.pyx), k-diffusion
 * sampling.py BatchedBrownianTree / BrownianTreeNoiseSampler. The exact
 * recipe is in shared/goldens/sd1-fast/README.md section 3.3:
 *
 *   - every time (interval ends, midpoints, queries) is Python round(x, 6);
 *     the root is [round(t0), round(t1)], queries outside it are clamped;
 *   - the root increment is randn(root W_seed) * sqrt(t1 - t0) (unrounded
 *     ends), seeds from SeedSequence(seed, pool_size=24).generate_state(3);
 *   - a node split at its rounded halfway point draws its children by the
 *     Brownian bridge with randn(W_seed), W_seed from
 *     SeedSequence(seed, spawn_key=(key, depth)).generate_state(4)[0];
 *   - randn(s) = torch.randn(shape, generator=torch.Generator().manual_seed(s))
 *     (the CPU generator, float32);
 *   - noise(s, s_next) = sign * W(lo, hi) / sqrt(|s_next - s|) (float32).
 *
 * The tree's nodes (interval, seed) are kept; their increments only while
 * a query runs (recomputed from the root's as needed, as torchsde does
 * past its LRU cache: the values depend only on the seed and the path), so
 * memory is a few dozen latents for any number of steps.
 */
#ifndef LDM_BROWNIAN_H
#define LDM_BROWNIAN_H

#include <stdint.h>

/* numpy.random.SeedSequence(entropy=seed, spawn_key=key[0..n_key),
 * pool_size=24).generate_state(n_out) as uint32 words. */
void ldm_seedseq_state(uint64_t seed, const uint64_t *key, int n_key, uint32_t *out, int n_out);

/* Python round(x, 6) (correctly rounded to 6 decimals). */
double ldm_round6(double x);

typedef struct LdmBrownianNode LdmBrownianNode;

typedef struct LdmBrownian {
    int64_t n;               /* floats of one increment (the latent's size) */
    uint64_t seed;           /* entropy */
    double t0, t1;           /* the unrounded ends */
    LdmBrownianNode *root;
    int64_t n_nodes;         /* nodes made so far (root included) */
} LdmBrownian;

/* BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed): t0 = sigma_min,
 * t1 = sigma_max (float32 values, widened), 0 < t0 < t1. Returns 0, or -1
 * with a message. */
int ldm_brownian_init(LdmBrownian *b, int64_t n, float sigma_min, float sigma_max, uint64_t seed);
void ldm_brownian_free(LdmBrownian *b);
/* The increment W(ta, tb), ta <= tb (rounded, clamped to the root), into out. */
void ldm_brownian_increment(LdmBrownian *b, double ta, double tb, float *out);
/* The noise sampler call noise(sigma, sigma_next) into out (n floats). */
void ldm_brownian_noise(LdmBrownian *b, float sigma, float sigma_next, float *out);

#endif
