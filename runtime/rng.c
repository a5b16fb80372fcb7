/*
 * rng.c - torch.randn reproduced bit-exactly: the CPU generator of torch 1.13
 * (mt19937) and the CUDA generator of torch 2.11 (Philox4x32-10 + curand),
 * both computed on the CPU. See rng.h for the API.
 *
 * Sections:
 *   1. mt19937 and the uniform draws       ATen/core/MT19937RNGEngine.h,
 *                                          ATen/core/TransformationHelper.h
 *   2. float log / sincos of avx_mathfun   ATen/native/cpu/avx_mathfun.h
 *   3. torch_randn                         ATen/native/cpu/DistributionKernels.cpp,
 *                                          ATen/core/DistributionsHelper.h
 *   4. Philox4x32-10                       curand_philox4x32_x.h
 *   5. the GPU's logf and __sincosf        libdevice __nv_logf, MUFU.SIN/COS
 *   6. cuda_randn                          ATen/native/cuda/DistributionTemplates.h,
 *                                          curand_normal.h
 *
 * Bit-exactness rests on doing every rounding the reference does, in the same
 * order. Every fused multiply-add of the reference is an explicit fmaf() here,
 * and no other product feeds a sum, so the result is the same whether or not
 * the C compiler contracts a*b+c (gcc does by default with -march=native).
 */
#include "rng.h"

#include <math.h>
#include <string.h>

#include "util.h"

static float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t float_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ------------------------------------------------------------------------
 * 1. mt19937 (at::mt19937) and the uniform draws
 * ------------------------------------------------------------------------ */

#define MT_N 624
#define MT_M 397

void torch_gen_seed(TorchGen *g, uint64_t seed) {
    /* CPUGeneratorImpl::set_current_seed: resets the normal caches and builds
       at::mt19937(seed), whose init_with_uint32 keeps only the low 32 bits */
    g->mt[0] = (uint32_t)seed;
    for (int j = 1; j < MT_N; j++)
        g->mt[j] = 1812433253u * (g->mt[j - 1] ^ (g->mt[j - 1] >> 30)) + (uint32_t)j;
    g->mt_next = MT_N;
    g->has_next_normal = 0;
    g->next_normal = 0.0;
}

/* mt19937::twist(): regenerate all 624 words */
static void mt_twist(uint32_t *s) {
    for (int i = 0; i < MT_N; i++) {
        uint32_t y = (s[i] & 0x80000000u) | (s[(i + 1) % MT_N] & 0x7fffffffu);
        s[i] = s[(i + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1) ? 0x9908b0dfu : 0);
    }
}

uint32_t torch_gen_random(TorchGen *g) {
    if (g->mt_next >= MT_N) {
        mt_twist(g->mt);
        g->mt_next = 0;
    }
    uint32_t y = g->mt[g->mt_next++];
    /* tempering */
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* uniform_real_distribution<float>(0, 1): the low 24 bits of one draw times
   2^-24 (transformation::uniform_real), in [0, 1) */
static float uniform_float(TorchGen *g) {
    return (float)(torch_gen_random(g) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* uniform_real_distribution<double>(0, 1): random64() = first draw << 32 |
   second draw, low 53 bits times 2^-53 */
static double uniform_double(TorchGen *g) {
    uint64_t hi = torch_gen_random(g);
    uint64_t lo = torch_gen_random(g);
    uint64_t v = (hi << 32 | lo) & ((UINT64_C(1) << 53) - 1);
    return (double)v * (1.0 / 9007199254740992.0);
}

/* ------------------------------------------------------------------------
 * 2. log256_ps and sincos256_ps of avx_mathfun.h, one lane at a time
 *
 * torch 1.13 on an AVX2 CPU fills float tensors through normal_fill_16_AVX2,
 * which uses these Cephes polynomials, not libm. PyTorch is built by gcc with
 * FMA enabled and contraction on, so mul+add pairs of the intrinsics code
 * became vfmadd: the fmaf() calls below are exactly those (checked against
 * the gcc-compiled vector code for all 2^24 possible inputs of each).
 * ------------------------------------------------------------------------ */

/* log256_ps for x in [2^-24, 1] (u1 = 1 - uniform) */
static float cephes_logf(float x) {
    uint32_t b = float_to_bits(x);
    /* split x = m * 2^e with m in [0.5, 1) */
    float e = (float)((int)(b >> 23) - 0x7f) + 1.0f;
    float m = bits_to_float((b & ~0x7f800000u) | 0x3f000000u);
    /* if (m < SQRTHF) { e -= 1; m = m + m - 1; } else m = m - 1; */
    if (m < 0.707106781186547524f) {
        e = e - 1.0f;
        m = (m - 1.0f) + m;
    } else {
        m = m - 1.0f;
    }
    float z = m * m;
    float y = 7.0376836292E-2f;
    y = fmaf(y, m, -1.1514610310E-1f);
    y = fmaf(y, m, 1.1676998740E-1f);
    y = fmaf(y, m, -1.2420140846E-1f);
    y = fmaf(y, m, 1.4249322787E-1f);
    y = fmaf(y, m, -1.6668057665E-1f);
    y = fmaf(y, m, 2.0000714765E-1f);
    y = fmaf(y, m, -2.4999993993E-1f);
    y = fmaf(y, m, 3.3333331174E-1f);
    y = y * m;
    y = fmaf(y, z, e * -2.12194440e-4f);   /* y*z + e*q1: gcc fused the y*z */
    y = fmaf(-z, 0.5f, y);                 /* y - z*0.5 */
    float r = m + y;
    return fmaf(e, 0.693359375f, r);       /* + e*q2 */
}

/* sincos256_ps for x >= 0 */
static void cephes_sincosf(float x, float *s, float *c) {
    /* j = (int)(x * 4/pi), rounded up to even: the octant */
    float y = x * 1.27323954473516f;
    int j = ((int)y + 1) & ~1;
    y = (float)j;
    uint32_t sign_sin = (uint32_t)(j & 4) << 29;
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    int poly_sin = (j & 2) == 0;   /* sin uses the sine polynomial */
    /* extended precision modular arithmetic: x - j*pi/4 in three parts */
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    /* cosine polynomial on [-pi/4, pi/4] */
    float yc = 2.443315711809948E-005f;
    yc = fmaf(yc, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));         /* y*z - z*0.5: gcc fused the y*z */
    yc = yc + 1.0f;
    /* sine polynomial */
    float ys = -1.9515295891E-4f;
    ys = fmaf(ys, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);
    float vs = poly_sin ? ys : yc, vc = poly_sin ? yc : ys;
    *s = bits_to_float(float_to_bits(vs) ^ sign_sin);
    *c = bits_to_float(float_to_bits(vc) ^ sign_cos);
}

/* ------------------------------------------------------------------------
 * 3. torch_randn (CPU)
 * ------------------------------------------------------------------------ */

/* normal_fill_16_AVX2: Box-Muller on the 8 uniform pairs (j, j + 8) of a
   16-element block, in place; mean 0, std 1 */
static void normal_fill_16(float *data) {
    const float two_pi = (float)(2.0 * 3.14159265358979323846);   /* _mm256_set1_ps(2.0f * c10::pi<double>) */
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - data[j];   /* [0, 1) -> (0, 1] for log */
        float u2 = data[j + 8];
        float radius = sqrtf(-2.0f * cephes_logf(u1));
        float theta = two_pi * u2;
        float sint, cost;
        cephes_sincosf(theta, &sint, &cost);
        /* _mm256_fmadd_ps(n, std = 1, mean = 0): "+ 0.0f" turns -0 into +0 as it does */
        data[j] = radius * cost + 0.0f;
        data[j + 8] = radius * sint + 0.0f;
    }
}

/* normal_fill_AVX2 (n >= 16): all n uniforms first, then the 16-blocks; a
   partial last block is redone on the last 16 elements with 16 fresh draws */
static void normal_fill(TorchGen *g, float *data, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        data[i] = uniform_float(g);
    for (int64_t i = 0; i + 16 <= n; i += 16)
        normal_fill_16(data + i);
    if (n % 16 != 0) {
        float *tail = data + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_float(g);
        normal_fill_16(tail);
    }
}

/* at::normal_distribution<double>(0, 1) (n < 16): Box-Muller in double, the
   sin() half cached in the generator for the next call */
static double normal_double(TorchGen *g) {
    if (g->has_next_normal) {
        g->has_next_normal = 0;
        return g->next_normal + 0.0;   /* transformation::normal: x * 1 + 0 */
    }
    double u1 = uniform_double(g);
    double u2 = uniform_double(g);
    double r = sqrt(-2.0 * log(1.0 - u2));   /* torch 1.13: log(1 - u2), later log1p(-u2) */
    double theta = 2.0 * 3.14159265358979323846 * u1;
    g->next_normal = r * sin(theta);
    g->has_next_normal = 1;
    return r * cos(theta) + 0.0;
}

int torch_randn(TorchGen *g, float *out, int64_t n) {
    if (n < 0) return ldm_fail("torch_randn: negative element count %lld", (long long)n);
    /* normal_kernel: contiguous float tensors of 16 or more elements take the
       vectorised fill, smaller ones the serial double-precision kernel */
    if (n >= 16) {
        normal_fill(g, out, n);
    } else {
        for (int64_t i = 0; i < n; i++)
            out[i] = (float)normal_double(g);
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * 4. Philox4x32-10 (curand_Philox4x32_10)
 * ------------------------------------------------------------------------ */

static void philox4x32_10(const uint32_t ctr[4], uint64_t seed, uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u;   /* key schedule (the bump after round 10 is unused) */
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* ------------------------------------------------------------------------
 * 5. The GPU's logf and __sincosf
 * ------------------------------------------------------------------------ */

/* logf as nvcc compiles it (libdevice __nv_logf, the PTX of CUDA 11-13), for
   normal positive x: x = m * 2^e with m in [2/3, 4/3), log1p(m - 1) by a
   polynomial, + e * ln 2 */
static float gpu_logf(float x) {
    uint32_t ix = float_to_bits(x);
    int32_t eb = (int32_t)((ix - 0x3f2aaaabu) & 0xff800000u);
    float m = bits_to_float(ix - (uint32_t)eb);
    float e = (float)eb * 1.1920928955078125e-7f;   /* fma(e, 2^-23, 0): exact */
    float f = m - 1.0f;
    float p = fmaf(bits_to_float(0xBE055027u), f, bits_to_float(0x3E1039F6u));
    p = fmaf(p, f, bits_to_float(0xBDF8CDCCu));
    p = fmaf(p, f, bits_to_float(0x3E0F2955u));
    p = fmaf(p, f, bits_to_float(0xBE2AD8B9u));
    p = fmaf(p, f, bits_to_float(0x3E4CED0Bu));
    p = fmaf(p, f, bits_to_float(0xBE7FFF22u));
    p = fmaf(p, f, bits_to_float(0x3EAAAA78u));
    p = fmaf(p, f, -0.5f);
    float q = f * p;
    float r = fmaf(q, f, f);
    return fmaf(e, bits_to_float(0x3F317218u), r);   /* + e * ln 2 */
}

/*
 * __sincosf(v) compiles to FMUL.RZ t = v * (1/2pi) (revolutions, rounded
 * toward zero) followed by MUFU.SIN t and MUFU.COS t. The special function
 * unit truncates t to 2.23 fixed point (quadrant, 23-bit position in it),
 * folds everything onto the first quadrant, and evaluates a quadratic from a
 * 64-entry table indexed by the top 6 position bits:
 *   A + B*r + C*r^2   (A 26 bits, B 15 bits, C 11 bits, r the low 17 bits)
 * with r^2 from a truncating multiplier, the sum truncated to float.
 * Table contents: the bit-exact SFU LUT reverse-engineered by envytools
 * (nvhw/sfu_tab.c, MIT licence); columns sin, its slope, and the magnitude of
 * the (negative) curvature term. That model reproduces every golden element.
 */
static const int32_t mufu_sin_lut[64][3] = {
    {0x0000000, 0x6489,   14}, {0x019214e, 0x6482,   48},
    {0x0323ec8, 0x646a,   76}, {0x04b547c, 0x6444,  110},
    {0x0645e94, 0x640d,  137}, {0x07d5934, 0x63c8,  171},
    {0x096407a, 0x6373,  201}, {0x0af109c, 0x630e,  229},
    {0x0c7c5ba, 0x629b,  262}, {0x0e05c10, 0x6218,  292},
    {0x0f8cfc8, 0x6186,  322}, {0x1111d24, 0x60e5,  352},
    {0x129405e, 0x6035,  381}, {0x14135ca, 0x5f76,  410},
    {0x158f9a2, 0x5ea9,  441}, {0x170884c, 0x5dcd,  470},
    {0x187de2a, 0x5ce2,  497}, {0x19ef796, 0x5be9,  525},
    {0x1b5d0fe, 0x5ae2,  553}, {0x1cc66e8, 0x59cd,  581},
    {0x1e2b5d4, 0x58aa,  608}, {0x1f8ba48, 0x577a,  637},
    {0x20e70ec, 0x563c,  664}, {0x223d66c, 0x54f0,  688},
    {0x238e760, 0x5398,  715}, {0x24da0a8, 0x5232,  738},
    {0x261fefc, 0x50c0,  763}, {0x275ff44, 0x4f42,  790},
    {0x2899e5e, 0x4db7,  812}, {0x29cd952, 0x4c21,  839},
    {0x2afad20, 0x4a7e,  859}, {0x2c216e4, 0x48d0,  881},
    {0x2d413ca, 0x4717,  904}, {0x2e5a104, 0x4553,  926},
    {0x2f6bbe4, 0x4384,  946}, {0x30761be, 0x41ab,  967},
    {0x3179008, 0x3fc8,  988}, {0x327444c, 0x3dda, 1004},
    {0x3367c04, 0x3be4, 1025}, {0x34534f2, 0x39e4, 1043},
    {0x3536cc0, 0x37db, 1059}, {0x361214e, 0x35c9, 1074},
    {0x36e5064, 0x33b0, 1093}, {0x37af812, 0x318e, 1107},
    {0x3871658, 0x2f65, 1123}, {0x392a960, 0x2d34, 1136},
    {0x39daf5c, 0x2afc, 1148}, {0x3a82698, 0x28be, 1162},
    {0x3b20d7a, 0x2679, 1172}, {0x3bb6274, 0x242f, 1185},
    {0x3c4241c, 0x21df, 1196}, {0x3cc511e, 0x1f89, 1203},
    {0x3d3e82c, 0x1d2f, 1213}, {0x3dae822, 0x1ad0, 1220},
    {0x3e14fda, 0x186e, 1230}, {0x3e71e78, 0x1607, 1236},
    {0x3ec52fc, 0x139d, 1242}, {0x3f0eca0, 0x1130, 1247},
    {0x3f4eab2, 0x0ec0, 1250}, {0x3f84c8e, 0x0c4f, 1258},
    {0x3fb11b2, 0x09db, 1260}, {0x3fd39ba, 0x0765, 1260},
    {0x3fec43c, 0x04ef, 1263}, {0x3ffb10c, 0x0278, 1265},
};

/* r*r / 2^19 as the SFU's squarer computes it: partial products r * 2^i
   truncated to 2^-18 before they are summed */
static uint32_t mufu_square(uint32_t r) {
    uint32_t sum = 0;
    for (int i = 0; i < 17; i++)
        if (r >> i & 1) sum += r >> (18 - i);
    return sum >> 1;
}

/* MUFU.SIN (want_cos 0) or MUFU.COS (1) of t revolutions, t in [0, 1) */
static float mufu_sincos(float t, int want_cos) {
    uint32_t fx = (uint32_t)((double)t * 33554432.0) & 0x1ffffffu;   /* t * 2^25, truncated */
    uint32_t quadrant = (fx >> 23) + (uint32_t)want_cos;   /* cos(x) = sin(x + 1/4) */
    uint32_t pos = fx & 0x7fffffu;
    if (quadrant & 1) pos ^= 0x7fffffu;   /* quadrants 1, 3: mirrored */
    uint32_t sign = (quadrant >> 1 & 1) << 31;   /* quadrants 2, 3: negative */
    const int32_t *c = mufu_sin_lut[pos >> 17];
    uint32_t r = pos & 0x1ffffu;
    int64_t acc = ((int64_t)c[0] << 11) + (int64_t)c[1] * r - (int64_t)c[2] * mufu_square(r);
    if (acc <= 0) return bits_to_float(sign);   /* +-0 */
    /* acc * 2^-37, truncated to 24 significant bits */
    int shift = 0;
    while (!(acc >> 37 & 1)) {
        acc <<= 1;
        shift++;
    }
    uint32_t mant = (uint32_t)(acc >> 14);   /* 1.23 */
    return bits_to_float(sign | (uint32_t)(0x7f - shift) << 23 | (mant & 0x7fffffu));
}

/* FMUL.RZ v * 0.15915494f (1/2pi): the product is exact in double, then
   truncated to float */
static float revolutions_rz(float v) {
    double p = (double)v * (double)0.15915494f;
    float t = (float)p;
    if ((double)t > p) t = bits_to_float(float_to_bits(t) - 1);   /* v >= 0 here */
    return t;
}

/* ------------------------------------------------------------------------
 * 6. cuda_randn
 * ------------------------------------------------------------------------ */

/* _curand_box_muller(x, y) of curand_normal.h, device side: half 0 is
   sin * s (.x), half 1 cos * s (.y) */
static float curand_box_muller(uint32_t x, uint32_t y, int half) {
    const float inv32 = 2.3283064e-10f;                  /* CURAND_2POW32_INV = 2^-32 */
    const float inv32_2pi = 2.3283064e-10f * 6.2831855f; /* CURAND_2POW32_INV_2PI */
    float u = fmaf((float)x, inv32, inv32 / 2.0f);       /* (0, 1]; nvcc contracts to fma */
    float v = fmaf((float)y, inv32_2pi, inv32_2pi / 2.0f);
    float s = sqrtf(-2.0f * gpu_logf(u));
    float t = revolutions_rz(v);
    return mufu_sincos(t, half) * s;
}

void cuda_gen_seed(CudaGen *g, uint64_t seed) {
    /* CUDAGeneratorImpl::set_current_seed: seed_ = seed, philox offset 0 */
    g->seed = seed;
    g->offset = 0;
    g->max_blocks = 0;
}

int cuda_randn(CudaGen *g, float *out, int64_t n) {
    if (n < 0 || n > INT32_MAX)
        return ldm_fail("cuda_randn: element count %lld out of range", (long long)n);
    if (n == 0) return 0;   /* numel == 0: no launch, the offset stays */
    /* calc_execution_policy: 256 threads a block, grid capped by the device;
       every thread makes calls_per_thread curand_normal4 calls */
    const uint64_t block = 256, unroll = 4;
    uint64_t grid = ((uint64_t)n + block - 1) / block;
    if (g->max_blocks && grid > g->max_blocks) grid = g->max_blocks;
    uint64_t stride = block * grid;   /* blockDim.x * gridDim.x */
    uint64_t calls_per_thread = ((uint64_t)n - 1) / (stride * unroll) + 1;
    /* philox_cuda_state(counter_offset): use the current offset, then advance
       it by counter_offset rounded up to a multiple of 4 */
    uint64_t offset = g->offset;
    uint64_t counter_offset = calls_per_thread * 4;   /* max_generator_offsets_per_curand_call */
    g->offset += (counter_offset + 3) / 4 * 4;

    /* distribution_elementwise_grid_stride_kernel: thread idx runs
       curand_init(seed, idx, offset) (counter = (offset/4, idx) as two 64-bit
       halves), then its k-th curand_normal4 call feeds elements
       idx + stride * (4k + ii), ii = 0..3 (.x .y .z .w) */
    for (int64_t e = 0; e < n; e++) {
        uint64_t slot = (uint64_t)e / stride;   /* 4k + ii */
        uint64_t idx = (uint64_t)e % stride;
        uint64_t k = slot / unroll, ii = slot % unroll;
        uint64_t lo = offset / 4 + k;
        uint64_t hi = idx + (lo < k ? 1 : 0);   /* carry of the 128-bit counter */
        uint32_t ctr[4] = {(uint32_t)lo, (uint32_t)(lo >> 32), (uint32_t)hi, (uint32_t)(hi >> 32)};
        uint32_t r[4];
        philox4x32_10(ctr, g->seed, r);
        /* curand_normal4: Box-Muller on (r0, r1) -> .x .y, on (r2, r3) -> .z .w;
           then transformation::normal(rand, mean 0, std 1) */
        float z = ii < 2 ? curand_box_muller(r[0], r[1], (int)(ii & 1))
                         : curand_box_muller(r[2], r[3], (int)(ii & 1));
        out[e] = z + 0.0f;
    }
    return 0;
}
