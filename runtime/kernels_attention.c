/*
 * kernels_attention.c - fused multi-head attention (see kernels.h):
 *
 *   y[b, i, h*dv + j] = sum_k softmax_k(scale * q[b,i,h*d:] . k[b,k,h*d:]) v[b,k,h*dv + j]
 *
 * in the flash-attention scheme: a tile of MQ queries walks the keys in
 * tiles of up to LDM_ATTN_NK, computes that block of scores, folds it into an online
 * softmax (running max m and running sum l per query; when the max grows,
 * the accumulated output and sum are rescaled by exp(m_old - m_new)) and
 * accumulates p v. The full [Tq, Tk] score matrix is never stored: each
 * thread owns a few small tiles in the scratch.
 *
 * Everything is computed "transposed", with queries along the SIMD lanes:
 *
 *   QT[c][i]  = q[i][c] * scale * log2(e)    (d x MQ, packed once per tile)
 *   ST[j][i]  = sum_c k[j][c] QT[c][i]       (LDM_ATTN_NK x MQ, scores in base 2)
 *   PT[j][i]  = exp2(ST[j][i] - m[i])        (in place of ST)
 *   OT[v][i]  = OT[v][i] * alpha[i] + sum_j v[j][v] PT[j][i]   (dv x MQ)
 *
 * so the softmax statistics of 8 queries sit in one vector (no horizontal
 * reductions), keys and values are only ever broadcast (read in place
 * through their row strides, or from a packed copy), and the rescaling of OT
 * is folded into the load of the accumulators. Both products run on a
 * 4 x MQ register block (12 accumulators): MQ = 24 queries with AVX2 +
 * FMA, 48 with AVX-512 (where the softmax also runs on 16 lanes). Tails:
 * keys and value channels are padded to multiples of 4 (repeated or zero
 * rows, results discarded), queries by zero columns of QT.
 *
 * Work items, spread over the cores, are (batch, head, group of query
 * tiles): a group shares each key tile, packed once into a dense
 * [keys/4][d][4] / [dv/4][keys][4] copy, so that K and V stream from memory
 * once per group rather than once per query tile; the group's state stays
 * in L2 (LDM_ATTN_GROUP_BYTES). A large head dim (the VAE's 512) gets groups of one
 * query tile, reads K and V in place, and blocks the score product over
 * channels (KC at a time) so its slice of QT stays in L1.
 *
 * Results do not depend on the thread count or the grouping: every query
 * tile sees the same key tiles with the same arithmetic.
 *
 * Scratch: per thread (up to LDM_ATTN_MAX_THREADS threads) the tiles above;
 * ldm_attention_scratch_bytes() returns the total. The slot count is a
 * constant, not the current thread count, because the compiler plans the
 * scratch ahead of time, maybe on another machine; with more cores the
 * kernel uses LDM_ATTN_MAX_THREADS of them. For the same reason the size is
 * stated for 24-query tiles whatever this build's MQ: an AVX-512 build
 * fits its 48-query tiles into the same bytes with fewer slots (8 or more).
 *
 * Causal masking hides keys j > i (query i, both counted from 0); key tiles
 * entirely above the diagonal are skipped.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "microkernel.h"

#define MQ (8 * LDM_PANEL_UNITS) /* queries per tile = width of the register block: 24, 48 with AVX-512 */
#define KC 64                   /* channels per block of the score product */

#define LOG2E 1.44269504088896340736

/* ---- scratch layout ----------------------------------------------------------- */

/* The state of one query tile (floats, each array 64-byte aligned). */
typedef struct QTile {
    float *qt;      /* [d][MQ]          scaled queries, transposed */
    float *ot;      /* [round4(dv)][MQ]  output accumulator, transposed */
    float *m;       /* [MQ]             running max (base-2 logits) */
    float *l;       /* [MQ]             running sum */
    float *alpha;   /* [MQ]             rescale factor of the current key tile */
} QTile;

/* One thread's scratch: the scores of one key tile and a group of query tiles. */
typedef struct Tiles {
    float *st;           /* [nkt][MQ] scores, then probabilities */
    float *kp;           /* [nkt/4][d][4] packed key tile (groups only) */
    float *vp;           /* [round4(dv)/4][nkt][4] packed value tile (groups only) */
    QTile g[LDM_ATTN_MAX_GROUP];  /* query tiles processed together */
} Tiles;

/* The sizes of these (ldm_attn_*_bytes) and the key tile and group sizes
 * are in kernel_sizes.h, where the compiler sizes the scratch from them. */

static Tiles tiles_at(const LdmAttnShape *s, char *p) {
    size_t f = sizeof(float);
    Tiles t;
    memset(&t, 0, sizeof t);
    const size_t nkt = (size_t)ldm_attn_key_tile(s->Tk);
    t.st = (float *)p, p += ldm_attn_round64(nkt * MQ * f);
    if (ldm_attn_kv_bytes(s, MQ)) {
        t.kp = (float *)p, p += ldm_attn_round64(nkt * s->d * f);
        t.vp = (float *)p, p += ldm_attn_round64(nkt * ldm_attn_round4(s->dv) * f);
    }
    for (int g = 0; g < ldm_attn_max_group(s, MQ); g++) {
        QTile *u = &t.g[g];
        u->qt = (float *)p, p += ldm_attn_round64((size_t)s->d * MQ * f);
        u->ot = (float *)p, p += ldm_attn_round64((size_t)ldm_attn_round4(s->dv) * MQ * f);
        u->m = (float *)p, p += ldm_attn_round64(MQ * f);
        u->l = (float *)p, p += ldm_attn_round64(MQ * f);
        u->alpha = (float *)p, p += ldm_attn_round64(MQ * f);
    }
    return t;
}

/* Threads the scratch has slots for with this build's query tile: all
 * LDM_ATTN_MAX_THREADS with tiles of LDM_ATTN_MQ_PLAN queries; with the
 * wider tiles of AVX-512, as many as fit in the same bytes (8 or more). */
static int scratch_slots(const LdmAttnShape *s) {
    size_t n = LDM_ATTN_MAX_THREADS * ldm_attn_thread_bytes(s, LDM_ATTN_MQ_PLAN) / ldm_attn_thread_bytes(s, MQ);
    return n > LDM_ATTN_MAX_THREADS ? LDM_ATTN_MAX_THREADS : (int)n;
}

/* ---- exp2 ------------------------------------------------------------------
 * 2^t for t <= 0: t = n + f with n = round(t), |f| <= 1/2; 2^f by a degree-6
 * minimax polynomial (relative error 1.9e-9, below float rounding), 2^n by
 * building the exponent bits. t < -127 (also -inf and NaN) gives 0. */
static inline __m256 exp2_ps(__m256 t) {
    const __m256 magic = _mm256_set1_ps(12583039.0f); /* 1.5 * 2^23 + 127 */
    t = _mm256_max_ps(t, _mm256_set1_ps(-127.0f));    /* NaN -> -127 */
    __m256 z = _mm256_add_ps(t, magic);               /* low bits: round(t) + 127 */
    __m256 f = _mm256_sub_ps(t, _mm256_sub_ps(z, magic));
    __m256 p = _mm256_set1_ps(1.5345812000853494e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3399931219081813e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.61848895711658e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550328776965722e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022646890634244e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472057372674e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23); /* (n + 127) << 23: 2^n, or 0 for n = -127 */
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* ---- micro-kernels (IN_REG: microkernel.h) ------------------------------------ */

#if LDM_PANEL_UNITS == 3
/* st[r][0..23] (+)= sum_{c < nc} k[c*ks + o_r] qt[c][0..23] for 4 keys r whose
 * channel c sits at k + c*ks + o_r (qt and st rows MQ apart). */
static __attribute__((noinline)) void qk_4x24(int nc, const float *k, long ks, long o0, long o1, long o2, long o3,
                                              const float *qt, float *st, int accumulate) {
    __m256 a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32;
    if (accumulate) {
        a00 = _mm256_load_ps(st), a01 = _mm256_load_ps(st + 8), a02 = _mm256_load_ps(st + 16);
        a10 = _mm256_load_ps(st + MQ), a11 = _mm256_load_ps(st + MQ + 8), a12 = _mm256_load_ps(st + MQ + 16);
        a20 = _mm256_load_ps(st + 2 * MQ), a21 = _mm256_load_ps(st + 2 * MQ + 8), a22 = _mm256_load_ps(st + 2 * MQ + 16);
        a30 = _mm256_load_ps(st + 3 * MQ), a31 = _mm256_load_ps(st + 3 * MQ + 8), a32 = _mm256_load_ps(st + 3 * MQ + 16);
    } else {
        a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = a30 = a31 = a32 = _mm256_setzero_ps();
    }
    for (int c = 0; c < nc; c++, k += ks) {
        const float *qc = qt + (size_t)c * MQ;
        __m256 q0 = _mm256_load_ps(qc), q1 = _mm256_load_ps(qc + 8), q2 = _mm256_load_ps(qc + 16), b;
        IN_REG(q0);
        IN_REG(q1);
        IN_REG(q2);
        b = _mm256_broadcast_ss(k + o0);
        a00 = _mm256_fmadd_ps(b, q0, a00), a01 = _mm256_fmadd_ps(b, q1, a01), a02 = _mm256_fmadd_ps(b, q2, a02);
        b = _mm256_broadcast_ss(k + o1);
        a10 = _mm256_fmadd_ps(b, q0, a10), a11 = _mm256_fmadd_ps(b, q1, a11), a12 = _mm256_fmadd_ps(b, q2, a12);
        b = _mm256_broadcast_ss(k + o2);
        a20 = _mm256_fmadd_ps(b, q0, a20), a21 = _mm256_fmadd_ps(b, q1, a21), a22 = _mm256_fmadd_ps(b, q2, a22);
        b = _mm256_broadcast_ss(k + o3);
        a30 = _mm256_fmadd_ps(b, q0, a30), a31 = _mm256_fmadd_ps(b, q1, a31), a32 = _mm256_fmadd_ps(b, q2, a32);
    }
    _mm256_store_ps(st + 0 * MQ, a00), _mm256_store_ps(st + 0 * MQ + 8, a01), _mm256_store_ps(st + 0 * MQ + 16, a02);
    _mm256_store_ps(st + 1 * MQ, a10), _mm256_store_ps(st + 1 * MQ + 8, a11), _mm256_store_ps(st + 1 * MQ + 16, a12);
    _mm256_store_ps(st + 2 * MQ, a20), _mm256_store_ps(st + 2 * MQ + 8, a21), _mm256_store_ps(st + 2 * MQ + 16, a22);
    _mm256_store_ps(st + 3 * MQ, a30), _mm256_store_ps(st + 3 * MQ + 8, a31), _mm256_store_ps(st + 3 * MQ + 16, a32);
}

/* ot[r][0..23] = ot[r][..] * alpha[..] + sum_{j < nk} v[j*ldv + o_r] pt[j][0..23]
 * for 4 value channels r whose value for key j sits at v + j*ldv + o_r (ot
 * and pt rows MQ apart). */
static __attribute__((noinline)) void pv_4x24(int nk, const float *v, long ldv, long o0, long o1, long o2, long o3,
                                              const float *pt, const float *alpha, float *ot) {
    const __m256 s0 = _mm256_load_ps(alpha), s1 = _mm256_load_ps(alpha + 8), s2 = _mm256_load_ps(alpha + 16);
#define SCALED(r, w, s) _mm256_mul_ps(_mm256_load_ps(ot + (r) * MQ + 8 * (w)), s)
    __m256 a00 = SCALED(0, 0, s0), a01 = SCALED(0, 1, s1), a02 = SCALED(0, 2, s2);
    __m256 a10 = SCALED(1, 0, s0), a11 = SCALED(1, 1, s1), a12 = SCALED(1, 2, s2);
    __m256 a20 = SCALED(2, 0, s0), a21 = SCALED(2, 1, s1), a22 = SCALED(2, 2, s2);
    __m256 a30 = SCALED(3, 0, s0), a31 = SCALED(3, 1, s1), a32 = SCALED(3, 2, s2);
#undef SCALED
    for (int j = 0; j < nk; j++) {
        const float *pj = pt + (size_t)j * MQ, *vj = v + j * ldv;
        __m256 p0 = _mm256_load_ps(pj), p1 = _mm256_load_ps(pj + 8), p2 = _mm256_load_ps(pj + 16), b;
        IN_REG(p0);
        IN_REG(p1);
        IN_REG(p2);
        b = _mm256_broadcast_ss(vj + o0);
        a00 = _mm256_fmadd_ps(b, p0, a00), a01 = _mm256_fmadd_ps(b, p1, a01), a02 = _mm256_fmadd_ps(b, p2, a02);
        b = _mm256_broadcast_ss(vj + o1);
        a10 = _mm256_fmadd_ps(b, p0, a10), a11 = _mm256_fmadd_ps(b, p1, a11), a12 = _mm256_fmadd_ps(b, p2, a12);
        b = _mm256_broadcast_ss(vj + o2);
        a20 = _mm256_fmadd_ps(b, p0, a20), a21 = _mm256_fmadd_ps(b, p1, a21), a22 = _mm256_fmadd_ps(b, p2, a22);
        b = _mm256_broadcast_ss(vj + o3);
        a30 = _mm256_fmadd_ps(b, p0, a30), a31 = _mm256_fmadd_ps(b, p1, a31), a32 = _mm256_fmadd_ps(b, p2, a32);
    }
    _mm256_store_ps(ot + 0 * MQ, a00), _mm256_store_ps(ot + 0 * MQ + 8, a01), _mm256_store_ps(ot + 0 * MQ + 16, a02);
    _mm256_store_ps(ot + 1 * MQ, a10), _mm256_store_ps(ot + 1 * MQ + 8, a11), _mm256_store_ps(ot + 1 * MQ + 16, a12);
    _mm256_store_ps(ot + 2 * MQ, a20), _mm256_store_ps(ot + 2 * MQ + 8, a21), _mm256_store_ps(ot + 2 * MQ + 16, a22);
    _mm256_store_ps(ot + 3 * MQ, a30), _mm256_store_ps(ot + 3 * MQ + 8, a31), _mm256_store_ps(ot + 3 * MQ + 16, a32);
}
#endif

#if LDM_PANEL_UNITS == 6
/* The same two products over 48 queries, in 16-float vectors (AVX-512;
 * see microkernel.h for how they are tested without it). */
/* One step of both: the 4 x 48 accumulators a00..a32 += x[o_r] * y[0..47]
 * (x: 4 values at offsets o0..o3, broadcast; y: a row of 48 queries). */
#define STEP_4X48(x, y)                                                                                 \
    do {                                                                                                \
        const float *x_ = (x), *y_ = (y);                                                               \
        ldm_v16 y0 = V16(y_), y1 = V16(y_ + 16), y2 = V16(y_ + 32), b;                                  \
        b = V16_SPLAT(x_[o0]), a00 = v16_fma(b, y0, a00);                                               \
        a01 = v16_fma(b, y1, a01), a02 = v16_fma(b, y2, a02);                                           \
        b = V16_SPLAT(x_[o1]), a10 = v16_fma(b, y0, a10);                                               \
        a11 = v16_fma(b, y1, a11), a12 = v16_fma(b, y2, a12);                                           \
        b = V16_SPLAT(x_[o2]), a20 = v16_fma(b, y0, a20);                                               \
        a21 = v16_fma(b, y1, a21), a22 = v16_fma(b, y2, a22);                                           \
        b = V16_SPLAT(x_[o3]), a30 = v16_fma(b, y0, a30);                                               \
        a31 = v16_fma(b, y1, a31), a32 = v16_fma(b, y2, a32);                                           \
    } while (0)
#define STORE_4X48(p)                                                                                   \
    do {                                                                                                \
        V16_STORE(p, a00), V16_STORE(p + 16, a01), V16_STORE(p + 32, a02);                              \
        V16_STORE(p + MQ, a10), V16_STORE(p + MQ + 16, a11), V16_STORE(p + MQ + 32, a12);               \
        V16_STORE(p + 2 * MQ, a20), V16_STORE(p + 2 * MQ + 16, a21), V16_STORE(p + 2 * MQ + 32, a22);   \
        V16_STORE(p + 3 * MQ, a30), V16_STORE(p + 3 * MQ + 16, a31), V16_STORE(p + 3 * MQ + 32, a32);   \
    } while (0)

static __attribute__((noinline)) void qk_4x48(int nc, const float *k, long ks, long o0, long o1, long o2, long o3,
                                              const float *qt, float *st, int accumulate) {
    ldm_v16 z = V16_SPLAT(0.0f);
    ldm_v16 a00 = z, a01 = z, a02 = z, a10 = z, a11 = z, a12 = z, a20 = z, a21 = z, a22 = z, a30 = z, a31 = z,
            a32 = z;
    if (accumulate) {
        a00 = V16(st), a01 = V16(st + 16), a02 = V16(st + 32);
        a10 = V16(st + MQ), a11 = V16(st + MQ + 16), a12 = V16(st + MQ + 32);
        a20 = V16(st + 2 * MQ), a21 = V16(st + 2 * MQ + 16), a22 = V16(st + 2 * MQ + 32);
        a30 = V16(st + 3 * MQ), a31 = V16(st + 3 * MQ + 16), a32 = V16(st + 3 * MQ + 32);
    }
    for (int c = 0; c < nc; c++, k += ks) STEP_4X48(k, qt + (size_t)c * MQ);
    STORE_4X48(st);
}

static __attribute__((noinline)) void pv_4x48(int nk, const float *v, long ldv, long o0, long o1, long o2, long o3,
                                              const float *pt, const float *alpha, float *ot) {
    const ldm_v16 s0 = V16(alpha), s1 = V16(alpha + 16), s2 = V16(alpha + 32);
    ldm_v16 a00 = V16(ot) * s0, a01 = V16(ot + 16) * s1, a02 = V16(ot + 32) * s2;
    ldm_v16 a10 = V16(ot + MQ) * s0, a11 = V16(ot + MQ + 16) * s1, a12 = V16(ot + MQ + 32) * s2;
    ldm_v16 a20 = V16(ot + 2 * MQ) * s0, a21 = V16(ot + 2 * MQ + 16) * s1, a22 = V16(ot + 2 * MQ + 32) * s2;
    ldm_v16 a30 = V16(ot + 3 * MQ) * s0, a31 = V16(ot + 3 * MQ + 16) * s1, a32 = V16(ot + 3 * MQ + 32) * s2;
    for (int j = 0; j < nk; j++) STEP_4X48(v + j * ldv, pt + (size_t)j * MQ);
    STORE_4X48(ot);
}
/* exp2_ps and the online softmax step of tile_keys over 16 queries, the
 * same arithmetic. Where the vectors are emulated (make WIDE=1 without
 * AVX-512), -Wpsabi warns that vector arguments and results would be
 * passed differently with AVX-512: irrelevant for these static functions,
 * and GCC reports it at the end of the file, so it is off for the file. */
#if !defined(__AVX512F__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef int ldm_v16i __attribute__((vector_size(64), aligned(4)));

/* a > b ? a : b per lane, b where either is NaN (as _mm256_max_ps(a, b)) */
static inline ldm_v16 max16(ldm_v16 a, ldm_v16 b) {
    ldm_v16i gt = a > b;
    return (ldm_v16)((gt & (ldm_v16i)a) | (~gt & (ldm_v16i)b));
}

static inline ldm_v16 exp2_16(ldm_v16 t) {
    const ldm_v16 magic = V16_SPLAT(12583039.0f);
    t = max16(t, V16_SPLAT(-127.0f));
    ldm_v16 z = t + magic;
    ldm_v16 f = t - (z - magic);
    ldm_v16 p = V16_SPLAT(1.5345812000853494e-4f);
    p = p * f + V16_SPLAT(1.3399931219081813e-3f);
    p = p * f + V16_SPLAT(9.61848895711658e-3f);
    p = p * f + V16_SPLAT(5.550328776965722e-2f);
    p = p * f + V16_SPLAT(2.4022646890634244e-1f);
    p = p * f + V16_SPLAT(6.931472057372674e-1f);
    p = p * f + V16_SPLAT(1.0f);
    return p * (ldm_v16)((ldm_v16i)z << 23);
}

/* New max m, rescale factor alpha, probabilities in place of the scores
 * sw[j * MQ] (j < nk), and sum l of 16 queries. */
static void softmax_16(float *sw, int nk, float *m, float *l, float *alpha) {
    const ldm_v16 mold = V16(m);
    ldm_v16 mx0 = mold, mx1 = mold;
    int j = 0;
    for (; j + 2 <= nk; j += 2) mx0 = max16(mx0, V16(sw + (size_t)j * MQ)), mx1 = max16(mx1, V16(sw + (size_t)(j + 1) * MQ));
    if (j < nk) mx0 = max16(mx0, V16(sw + (size_t)j * MQ));
    const ldm_v16 mx = max16(mx0, mx1), al = exp2_16(mold - mx);
    ldm_v16 sum0 = V16_SPLAT(0.0f), sum1 = sum0;
    for (j = 0; j + 2 <= nk; j += 2) {
        ldm_v16 p0 = exp2_16(V16(sw + (size_t)j * MQ) - mx), p1 = exp2_16(V16(sw + (size_t)(j + 1) * MQ) - mx);
        V16_STORE(sw + (size_t)j * MQ, p0), V16_STORE(sw + (size_t)(j + 1) * MQ, p1);
        sum0 += p0, sum1 += p1;
    }
    if (j < nk) {
        ldm_v16 p0 = exp2_16(V16(sw + (size_t)j * MQ) - mx);
        V16_STORE(sw + (size_t)j * MQ, p0);
        sum0 += p0;
    }
    V16_STORE(l, V16(l) * al + (sum0 + sum1)), V16_STORE(m, mx), V16_STORE(alpha, al);
}
#define QK qk_4x48
#define PV pv_4x48
#else
#define QK qk_4x24
#define PV pv_4x24
#endif

/* ---- one query tile ------------------------------------------------------------ */

/* Pack queries i0 .. i0+mq-1 (mq <= MQ; q points at the head's first
 * channel of row 0) and reset the softmax state. */
static void tile_start(const LdmAttnShape *s, const float *q, int i0, int mq, const QTile *t) {
    const int d = s->d;
    const float qs = (float)((double)s->scale * LOG2E);
    /* QT = q^T * scale * log2(e), zero columns past the last query */
    const __m256 vqs = _mm256_set1_ps(qs);
    for (int ib = 0; ib < MQ; ib += 8) {
        int c = 0;
        if (ib + 8 <= mq)
            for (; c + 8 <= d; c += 8) {
                __m256 r[8];
                for (int u = 0; u < 8; u++)
                    r[u] = _mm256_mul_ps(_mm256_loadu_ps(q + (size_t)(i0 + ib + u) * s->ldq + c), vqs);
                transpose8(r);
                for (int u = 0; u < 8; u++) _mm256_store_ps(t->qt + (size_t)(c + u) * MQ + ib, r[u]);
            }
        for (int i = ib; i < ib + 8; i++)
            for (int cc = c; cc < d; cc++)
                t->qt[(size_t)cc * MQ + i] = i < mq ? q[(size_t)(i0 + i) * s->ldq + cc] * qs : 0.0f;
    }
    for (int i = 0; i < MQ; i++) t->m[i] = -INFINITY, t->l[i] = 0.0f;
    memset(t->ot, 0, (size_t)ldm_attn_round4(s->dv) * MQ * sizeof(float));
}

/* Where a key tile is read from: in place (the rows of k and v) or packed
 * (pack_keys) when a group of query tiles shares it. */
typedef struct KVTile {
    const float *k, *v;   /* tile row 0, head channel 0: in place, or kp/vp packed */
    int packed;           /* 1: kp/vp layout */
} KVTile;

/* Pack keys j0 .. j0+nk-1 into t->kp as [nk/4][d][4] (4 keys' channel c
 * side by side, zero rows past nk) and t->vp as [dv/4][nkt][4] (4
 * channels of key j side by side, zero channels past dv). */
static KVTile pack_keys(const LdmAttnShape *s, const float *k, const float *v, int j0, int nk, const Tiles *t) {
    const int d = s->d, dv = s->dv, nkt = ldm_attn_key_tile(s->Tk);
    for (int j = 0; j < nk; j += 4) {
        const float *kr[4];
        for (int r = 0; r < 4; r++) kr[r] = j + r < nk ? k + (size_t)(j0 + j + r) * s->ldk : NULL;
        float *dst = t->kp + (size_t)j * d;
        int c = 0;
        for (; c + 8 <= d; c += 8) {
            __m256 r0 = kr[0] ? _mm256_loadu_ps(kr[0] + c) : _mm256_setzero_ps();
            __m256 r1 = kr[1] ? _mm256_loadu_ps(kr[1] + c) : _mm256_setzero_ps();
            __m256 r2 = kr[2] ? _mm256_loadu_ps(kr[2] + c) : _mm256_setzero_ps();
            __m256 r3 = kr[3] ? _mm256_loadu_ps(kr[3] + c) : _mm256_setzero_ps();
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
            __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
            _mm256_storeu_ps(dst + c * 4, _mm256_permute2f128_ps(u0, u1, 0x20));
            _mm256_storeu_ps(dst + c * 4 + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
            _mm256_storeu_ps(dst + c * 4 + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
            _mm256_storeu_ps(dst + c * 4 + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
        }
        for (; c < d; c++)
            for (int r = 0; r < 4; r++) dst[c * 4 + r] = kr[r] ? kr[r][c] : 0.0f;
    }
    for (int j = 0; j < nk; j++) {
        const float *vr = v + (size_t)(j0 + j) * s->ldv;
        int c = 0;
        for (; c + 4 <= dv; c += 4) _mm_storeu_ps(t->vp + (size_t)c * nkt + j * 4, _mm_loadu_ps(vr + c));
        if (c < dv)
            for (int r = 0; r < 4; r++) t->vp[(size_t)c * nkt + j * 4 + r] = c + r < dv ? vr[c + r] : 0.0f;
    }
    return (KVTile){t->kp, t->vp, 1};
}

/* Keys j0 .. j0+nk-1 read in place. */
static KVTile keys_in_place(const LdmAttnShape *s, const float *k, const float *v, int j0) {
    return (KVTile){k + (size_t)j0 * s->ldk, v + (size_t)j0 * s->ldv, 0};
}

/* Fold nk keys from j0 (the start of the tile kv, maybe not all of it) into
 * the tile of queries starting at i0; st is the score scratch. */
static void tile_keys(const LdmAttnShape *s, const KVTile *kv, int i0, int j0, int nk, float *st, const QTile *t) {
    const int d = s->d, dv = s->dv, nkt = ldm_attn_key_tile(s->Tk);

    /* ST = K QT over blocks of KC channels and 4 keys (in place: the last
     * key repeated to fill a block) */
    if (d == 0) memset(st, 0, (size_t)ldm_attn_round4(nk) * MQ * sizeof(float));
    for (int c0 = 0; c0 < d; c0 += KC) {
        const int nc = d - c0 < KC ? d - c0 : KC;
        for (int j = 0; j < nk; j += 4) {
            const float *qt = t->qt + (size_t)c0 * MQ;
            float *sj = st + (size_t)j * MQ;
            if (kv->packed) {
                QK(nc, kv->k + (size_t)j * d + c0 * 4, 4, 0, 1, 2, 3, qt, sj, c0 > 0);
            } else {
                long o[4];
                for (int r = 0; r < 4; r++) o[r] = (long)(j + r < nk ? j + r : nk - 1) * s->ldk;
                QK(nc, kv->k + c0, 1, o[0], o[1], o[2], o[3], qt, sj, c0 > 0);
            }
        }
    }

    /* causal: hide keys after the query in a tile crossing the diagonal */
    if (s->causal && j0 + nk - 1 > i0)
        for (int j = 0; j < nk; j++)
            for (int i = 0; i < MQ; i++)
                if (j0 + j > i0 + i) st[(size_t)j * MQ + i] = -INFINITY;

    /* online softmax: new max, rescale factor, probabilities, sums */
#if LDM_PANEL_UNITS == 6
    for (int w = 0; w < MQ; w += 16) softmax_16(st + w, nk, t->m + w, t->l + w, t->alpha + w);
#else
    for (int w = 0; w < MQ; w += 8) {
        float *sw = st + w;
        const __m256 mold = _mm256_load_ps(t->m + w);
        __m256 mx0 = mold, mx1 = mold;
        int j = 0;
        for (; j + 2 <= nk; j += 2)
            mx0 = _mm256_max_ps(mx0, _mm256_load_ps(sw + (size_t)j * MQ)),
            mx1 = _mm256_max_ps(mx1, _mm256_load_ps(sw + (size_t)(j + 1) * MQ));
        if (j < nk) mx0 = _mm256_max_ps(mx0, _mm256_load_ps(sw + (size_t)j * MQ));
        const __m256 mx = _mm256_max_ps(mx0, mx1);
        const __m256 al = exp2_ps(_mm256_sub_ps(mold, mx));
        __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
        for (j = 0; j + 2 <= nk; j += 2) {
            __m256 p0 = exp2_ps(_mm256_sub_ps(_mm256_load_ps(sw + (size_t)j * MQ), mx));
            __m256 p1 = exp2_ps(_mm256_sub_ps(_mm256_load_ps(sw + (size_t)(j + 1) * MQ), mx));
            _mm256_store_ps(sw + (size_t)j * MQ, p0), _mm256_store_ps(sw + (size_t)(j + 1) * MQ, p1);
            sum0 = _mm256_add_ps(sum0, p0), sum1 = _mm256_add_ps(sum1, p1);
        }
        if (j < nk) {
            __m256 p0 = exp2_ps(_mm256_sub_ps(_mm256_load_ps(sw + (size_t)j * MQ), mx));
            _mm256_store_ps(sw + (size_t)j * MQ, p0);
            sum0 = _mm256_add_ps(sum0, p0);
        }
        const __m256 l = _mm256_fmadd_ps(_mm256_load_ps(t->l + w), al, _mm256_add_ps(sum0, sum1));
        _mm256_store_ps(t->l + w, l), _mm256_store_ps(t->m + w, mx), _mm256_store_ps(t->alpha + w, al);
    }
#endif

    /* OT = OT * alpha + V^T PT over blocks of 4 channels (in place: the
     * last channel repeated to fill a block) */
    for (int c = 0; c < dv; c += 4) {
        if (kv->packed) {
            PV(nk, kv->v + (size_t)c * nkt, 4, 0, 1, 2, 3, st, t->alpha, t->ot + (size_t)c * MQ);
        } else {
            const long o1 = c + 1 < dv ? c + 1 : dv - 1, o2 = c + 2 < dv ? c + 2 : dv - 1;
            const long o3 = c + 3 < dv ? c + 3 : dv - 1;
            PV(nk, kv->v, s->ldv, c, o1, o2, o3, st, t->alpha, t->ot + (size_t)c * MQ);
        }
    }
}

/* y = OT^T / l for the mq queries from i0 (y points at the head's first
 * channel of row 0). */
static void tile_finish(const LdmAttnShape *s, float *y, int i0, int mq, const QTile *t) {
    const int dv = s->dv;
    for (int ib = 0; ib < mq; ib += 8) {
        int c = 0;
        if (ib + 8 <= mq)
            for (; c + 8 <= dv; c += 8) {
                __m256 r[8];
                for (int u = 0; u < 8; u++) r[u] = _mm256_load_ps(t->ot + (size_t)(c + u) * MQ + ib);
                transpose8(r);
                for (int u = 0; u < 8; u++)
                    _mm256_storeu_ps(y + (size_t)(i0 + ib + u) * s->ldy + c,
                                     _mm256_div_ps(r[u], _mm256_set1_ps(t->l[ib + u])));
            }
        for (int i = ib; i < ib + 8 && i < mq; i++)
            for (int cc = c; cc < dv; cc++) y[(size_t)(i0 + i) * s->ldy + cc] = t->ot[(size_t)cc * MQ + i] / t->l[i];
    }
}

/* ---- one work item -------------------------------------------------------------- */

/* Query tiles qt0 .. qt0+ng-1 of one batch and head, walking the keys once
 * for all of them. A query tile gets exactly the same key tiles, in the
 * same order, whatever its group: results do not depend on the grouping. */
static void attend_group(const LdmAttnShape *s, const float *q, const float *k, const float *v, float *y, int qt0,
                         int ng, const Tiles *t) {
    const int Tq = s->Tq, Tk = s->Tk, nkt = ldm_attn_key_tile(Tk);
    int i0[LDM_ATTN_MAX_GROUP], mq[LDM_ATTN_MAX_GROUP], kend[LDM_ATTN_MAX_GROUP], kmax = 0;
    for (int g = 0; g < ng; g++) {
        i0[g] = (qt0 + g) * MQ;
        mq[g] = Tq - i0[g] < MQ ? Tq - i0[g] : MQ;
        /* keys 0 .. kend-1 can be visible to these queries */
        kend[g] = s->causal && i0[g] + mq[g] < Tk ? i0[g] + mq[g] : Tk;
        if (kend[g] > kmax) kmax = kend[g];
        tile_start(s, q, i0[g], mq[g], &t->g[g]);
    }
    for (int j0 = 0; j0 < kmax; j0 += nkt) {
        const int nk = kmax - j0 < nkt ? kmax - j0 : nkt;
        const KVTile kv = ng > 1 ? pack_keys(s, k, v, j0, nk, t) : keys_in_place(s, k, v, j0);
        /* the rows of the next key tile, a share before each query tile:
         * packing them waited on L3 for a tenth of the head-dim-40 time */
        const int j1 = j0 + nkt, nk1 = kmax - j1 < nkt ? kmax - j1 : nkt;
        for (int g = 0; g < ng; g++) {
            if (ng > 1 && nk1 > 0)
                for (int j = j1 + nk1 * g / ng; j < j1 + nk1 * (g + 1) / ng; j++) {
                    const char *kr = (const char *)(k + (size_t)j * s->ldk), *vr = (const char *)(v + (size_t)j * s->ldv);
                    for (int b = 0; b < s->d * 4 + 63; b += 64) _mm_prefetch(kr + b, _MM_HINT_T0);
                    for (int b = 0; b < s->dv * 4 + 63; b += 64) _mm_prefetch(vr + b, _MM_HINT_T0);
                }
            if (j0 < kend[g])
                tile_keys(s, &kv, i0[g], j0, kend[g] - j0 < nk ? kend[g] - j0 : nk, t->st, &t->g[g]);
        }
    }
    for (int g = 0; g < ng; g++) tile_finish(s, y, i0[g], mq[g], &t->g[g]);
}

/* ---- entry -------------------------------------------------------------------------- */

void ldm_attention(const LdmAttnShape *s, const float *q, const float *k, const float *v, float *y, float *scratch) {
    if (s->B <= 0 || s->Tq <= 0 || s->H <= 0 || s->d < 0 || s->dv <= 0) return;
    if (s->Tk <= 0) {
        /* no keys: an empty softmax; write zeros rather than NaN */
        for (int b = 0; b < s->B; b++)
            for (int i = 0; i < s->Tq; i++)
                memset(y + b * s->bsy + (size_t)i * s->ldy, 0, (size_t)s->H * s->dv * sizeof(float));
        return;
    }
    char *base = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    const size_t per_thread = ldm_attn_thread_bytes(s, MQ);
    const int nqt = (s->Tq + MQ - 1) / MQ;
    int nt = omp_get_max_threads();
    if (nt > scratch_slots(s)) nt = scratch_slots(s);
    /* group query tiles, but keep at least 4 work items per thread */
    const long heads = (long)s->B * s->H;
    int ng = ldm_attn_max_group(s, MQ);
    while (ng > 1 && heads * ((nqt + ng - 1) / ng) < 4L * nt) ng--;
    const int ngroups = (nqt + ng - 1) / ng;
    const long items = heads * ngroups;
    if (nt > items) nt = (int)items;

#pragma omp parallel num_threads(nt)
    {
        const Tiles t = tiles_at(s, base + (size_t)omp_get_thread_num() * per_thread);
#pragma omp for schedule(dynamic, 1)
        for (long it = 0; it < items; it++) {
            /* causal items get heavier with the query index: start with those */
            const int gi = s->causal ? ngroups - 1 - (int)(it % ngroups) : (int)(it % ngroups);
            const int h = (int)(it / ngroups % s->H), b = (int)(it / ngroups / s->H);
            const int qt0 = gi * ng, n = nqt - qt0 < ng ? nqt - qt0 : ng;
            attend_group(s, q + b * s->bsq + (size_t)h * s->d, k + b * s->bsk + (size_t)h * s->d,
                         v + b * s->bsv + (size_t)h * s->dv, y + b * s->bsy + (size_t)h * s->dv, qt0, n, &t);
        }
    }
}
