/*
 * brownian.c - torchsde's BrownianTree (halfway tree) as k-diffusion uses
 * it; see brownian.h and shared/goldens/sd1-fast/README.md section 3.3.
 */
#include "brownian.h"

/* float32 products and sums rounded one by one, as torch does */
#pragma GCC optimize("fp-contract=off")

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "util.h"

/* ---- numpy SeedSequence (numpy/random/bit_generator.pyx) ---------------- */

#define SS_POOL 24
#define SS_INIT_A 0x43b0d7e5u
#define SS_MULT_A 0x931e8875u
#define SS_INIT_B 0x8b51f9ddu
#define SS_MULT_B 0x58f38dedu
#define SS_MIX_L 0xca01f9ddu
#define SS_MIX_R 0x4973f715u

static uint32_t ss_hashmix(uint32_t v, uint32_t *hc) {
    v ^= *hc;
    *hc *= SS_MULT_A;
    v *= *hc;
    v ^= v >> 16;
    return v;
}

static uint32_t ss_mix(uint32_t x, uint32_t y) {
    uint32_t r = SS_MIX_L * x - SS_MIX_R * y;
    r ^= r >> 16;
    return r;
}

/* _coerce_to_uint32_array of a non-negative int: little-endian 32-bit words, 0 -> [0] */
static int ss_words(uint64_t v, uint32_t *w) {
    int k = 0;
    do {
        w[k++] = (uint32_t)v;
        v >>= 32;
    } while (v);
    return k;
}

void ldm_seedseq_state(uint64_t seed, const uint64_t *key, int n_key, uint32_t *out, int n_out) {
    uint32_t ent[SS_POOL + 64];
    int ne = ss_words(seed, ent);
    if (n_key > 0) {
        /* get_assembled_entropy: run_entropy padded to pool_size when a spawn key follows */
        while (ne < SS_POOL) ent[ne++] = 0;
        for (int k = 0; k < n_key && k < 16; k++) ne += ss_words(key[k], ent + ne);
    }
    uint32_t pool[SS_POOL], hc = SS_INIT_A;
    for (int i = 0; i < SS_POOL; i++) pool[i] = ss_hashmix(i < ne ? ent[i] : 0u, &hc);
    for (int s = 0; s < SS_POOL; s++)
        for (int d = 0; d < SS_POOL; d++)
            if (s != d) pool[d] = ss_mix(pool[d], ss_hashmix(pool[s], &hc));
    for (int s = SS_POOL; s < ne; s++)
        for (int d = 0; d < SS_POOL; d++) pool[d] = ss_mix(pool[d], ss_hashmix(ent[s], &hc));
    uint32_t h = SS_INIT_B;
    for (int i = 0; i < n_out; i++) {
        uint32_t v = pool[i % SS_POOL] ^ h;
        h *= SS_MULT_B;
        v *= h;
        v ^= v >> 16;
        out[i] = v;
    }
}

/* Python round(x, 6): glibc's printf rounds the exact binary value
 * correctly (as CPython's dtoa does), strtod reads the decimal back. */
double ldm_round6(double x) {
    if (!isfinite(x)) return x;
    char buf[512];
    snprintf(buf, sizeof buf, "%.6f", x);
    return strtod(buf, NULL);
}

/* ---- the tree ------------------------------------------------------------ */

/* A node keeps its increment only while a query needs it: every query
 * recomputes the increments along its paths from the root's (which is kept)
 * and drops them at its end, so memory stays a few dozen latents however
 * many nodes the tree has (torchsde keeps an LRU cache of 45 and recomputes
 * the same way; the values depend only on the seed and the path). */
struct LdmBrownianNode {
    double start, end, mid;  /* rounded; mid valid once split */
    uint64_t key;            /* spawn key */
    uint64_t depth;
    uint32_t w_seed;         /* once split: the W_seed of its SeedSequence */
    float *W;                /* (n) increment over [start, end], or NULL when not resident */
    LdmBrownianNode *parent, *left, *right;
};

static LdmBrownianNode *node_new(LdmBrownian *b, LdmBrownianNode *parent, double start, double end, uint64_t key,
                                 uint64_t depth) {
    LdmBrownianNode *nd = ldm_xmalloc(sizeof *nd);
    memset(nd, 0, sizeof *nd);
    nd->start = ldm_round6(start);
    nd->end = ldm_round6(end);
    nd->key = key;
    nd->depth = depth;
    nd->parent = parent;
    b->n_nodes++;
    return nd;
}

/* randn(seed) = torch.randn(size, generator=torch.Generator().manual_seed(seed)) */
static void randn_seeded(uint32_t seed, float *out, int64_t n) {
    TorchGen g;
    torch_gen_seed(&g, seed);
    torch_randn(&g, out, n);
}

/* _split_exact(0.5 * (end + start)): the midpoint, the seeds, the children */
static void node_split(LdmBrownian *b, LdmBrownianNode *nd) {
    double midway = 0.5 * (nd->end + nd->start);
    nd->mid = ldm_round6(midway);
    uint64_t key[2] = {nd->key, nd->depth};
    uint32_t st[4];
    ldm_seedseq_state(b->seed, key, 2, st, 4);
    nd->w_seed = st[0];
    nd->left = node_new(b, nd, nd->start, midway, 2 * nd->key + 0, nd->depth + 1);
    nd->right = node_new(b, nd, midway, nd->end, 2 * nd->key + 1, nd->depth + 1);
}

static const float *node_w(LdmBrownian *b, LdmBrownianNode *nd);

/* The children's increments from the parent's
 * (_increment_and_space_time_levy_area without H):
 *   h_reciprocal = 1 / (end - start); left_diff = midway - start; right_diff = end - midway
 *   mean = left_diff * W * h_reciprocal
 *   var = left_diff * right_diff * h_reciprocal
 *   left_W = mean + math.sqrt(var) * randn(W_seed); right_W = W - left_W */
static void children_w(LdmBrownian *b, LdmBrownianNode *nd) {
    const float *W = node_w(b, nd);
    double h_rec = 1.0 / (nd->end - nd->start);
    double left_diff = nd->mid - nd->start, right_diff = nd->end - nd->mid;
    float a = (float)left_diff, c = (float)h_rec;
    float sd = (float)sqrt(left_diff * right_diff * h_rec);
    float *L = ldm_xmalloc((size_t)b->n * sizeof(float)), *R = ldm_xmalloc((size_t)b->n * sizeof(float));
    randn_seeded(nd->w_seed, L, b->n); /* noise */
    for (int64_t j = 0; j < b->n; j++) {
        float mean = a * W[j] * c;
        float lw = mean + sd * L[j];
        L[j] = lw;
        R[j] = W[j] - lw;
    }
    free(nd->left->W);
    free(nd->right->W);
    nd->left->W = L;
    nd->right->W = R;
}

static const float *node_w(LdmBrownian *b, LdmBrownianNode *nd) {
    if (!nd->W) children_w(b, nd->parent); /* the root's is always resident */
    return nd->W;
}

/* drop every increment but the root's */
static void evict(LdmBrownianNode *nd, int is_root) {
    for (; nd; nd = nd->right) {
        if (!is_root) {
            free(nd->W);
            nd->W = NULL;
        }
        is_root = 0;
        evict(nd->left, 0);
    }
}

static void node_free(LdmBrownianNode *nd) {
    while (nd) {
        LdmBrownianNode *r = nd->right;
        node_free(nd->left);
        free(nd->W);
        free(nd);
        nd = r;
    }
}

int ldm_brownian_init(LdmBrownian *b, int64_t n, float sigma_min, float sigma_max, uint64_t seed) {
    memset(b, 0, sizeof *b);
    if (n <= 0) return ldm_fail("brownian tree: size %lld, expected > 0", (long long)n);
    if (!(sigma_min > 0.0f && sigma_min < sigma_max && isfinite(sigma_max)))
        return ldm_fail("brownian tree: interval [%g, %g], expected 0 < sigma_min < sigma_max", (double)sigma_min,
                        (double)sigma_max);
    b->n = n;
    b->seed = seed;
    b->t0 = (double)sigma_min;
    b->t1 = (double)sigma_max;
    b->root = node_new(b, NULL, b->t0, b->t1, 0, 0);
    b->root->W = ldm_xmalloc((size_t)n * sizeof(float));
    /* generate_state(3) -> initial_W_seed, initial_H_seed, top_a_seed;
     * W = randn(initial_W_seed) * math.sqrt(t1 - t0) */
    uint32_t st[3];
    ldm_seedseq_state(seed, NULL, 0, st, 3);
    randn_seeded(st[0], b->root->W, n);
    float s = (float)sqrt(b->t1 - b->t0);
    for (int64_t j = 0; j < n; j++) b->root->W[j] = b->root->W[j] * s;
    return 0;
}

void ldm_brownian_free(LdmBrownian *b) {
    node_free(b->root);
    memset(b, 0, sizeof *b);
}

/* _loc_inner: the covering nodes of [ta, tb] left to right, summed into acc
 * (the first one copied). */
static void add_node(LdmBrownian *b, LdmBrownianNode *nd, float *acc, int *first) {
    const float *W = node_w(b, nd);
    if (*first) memcpy(acc, W, (size_t)b->n * sizeof(float));
    else
        for (int64_t j = 0; j < b->n; j++) acc[j] = acc[j] + W[j];
    *first = 0;
}

/* _loc_inner: the covering nodes of [ta, tb] left to right, summed into acc
 * (the first one copied). */
static void cover(LdmBrownian *b, LdmBrownianNode *nd, double ta, double tb, float *acc, int *first) {
    for (;;) {
        if (ta == nd->start && tb == nd->end) {
            add_node(b, nd, acc, first);
            return;
        }
        if (!nd->left) {
            double m = ldm_round6(0.5 * (nd->end + nd->start));
            if (!(m > nd->start && m < nd->end)) {
                /* below the 1e-6 resolution: cannot happen for rounded query points */
                add_node(b, nd, acc, first);
                return;
            }
            node_split(b, nd);
        }
        if (tb <= nd->mid) {
            nd = nd->left;
        } else if (ta >= nd->mid) {
            nd = nd->right;
        } else {
            cover(b, nd->left, ta, nd->mid, acc, first);
            ta = nd->mid;
            nd = nd->right;
        }
    }
}

void ldm_brownian_increment(LdmBrownian *b, double ta, double tb, float *out) {
    /* BrownianInterval.__call__: clamp to [start, end], ta == tb -> zeros; _loc rounds */
    double lo = b->root->start, hi = b->root->end;
    if (ta < lo) ta = lo;
    if (tb < lo) tb = lo;
    if (ta > hi) ta = hi;
    if (tb > hi) tb = hi;
    ta = ldm_round6(ta);
    tb = ldm_round6(tb);
    if (!(ta < tb)) {
        memset(out, 0, (size_t)b->n * sizeof(float));
        return;
    }
    int first = 1;
    cover(b, b->root, ta, tb, out, &first);
    evict(b->root, 1);
}

/* BrownianTreeNoiseSampler.__call__(sigma, sigma_next):
 *   t0, t1 = sigma, sigma_next (float32 tensors)
 *   BatchedBrownianTree: t0, t1, sign = sort(t0, t1); w = tree(t0, t1) * (self.sign * sign)
 *   return w / (t1 - t0).abs().sqrt() */
void ldm_brownian_noise(LdmBrownian *b, float sigma, float sigma_next, float *out) {
    float a = sigma, c = sigma_next;
    int sign = 1;
    if (!(a < c)) {
        float t = a;
        a = c;
        c = t;
        sign = -1;
    }
    ldm_brownian_increment(b, (double)a, (double)c, out);
    float d = sqrtf(fabsf(sigma_next - sigma));
    for (int64_t j = 0; j < b->n; j++) {
        float w = sign < 0 ? -out[j] : out[j];
        out[j] = w / d;
    }
}
