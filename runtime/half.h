/*
 * half.h - IEEE half and bfloat16 <-> float32, bit-exact, round to nearest
 * even: the one copy of these conversions. safetensors.c's st_* functions
 * wrap them; the kernels (kernels_gemm.c, the widening in microkernel.h)
 * call them directly, so no kernel object needs safetensors.o for them.
 *
 * Plain C, static inline, no other project header: the compiler and the
 * runtime may both include it.
 */
#ifndef LDM_HALF_H
#define LDM_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t ldm_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float ldm_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Shift right by s (1..31) rounding to nearest, ties to even. */
static inline uint32_t ldm_shift_rne(uint32_t x, int s) {
    uint32_t q = x >> s, rem = x & ((1u << s) - 1), half = 1u << (s - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return q;
}

/* IEEE half -> float32 (exact; NaN keeps its payload). */
static inline float ldm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24, exact in float32 */
        float v = (float)mant * 0x1p-24f;
        return ldm_bits_f32(ldm_f32_bits(v) | sign);
    }
    if (exp == 31) /* inf, or NaN keeping its payload */
        return ldm_bits_f32(sign | 0x7f800000u | (mant << 13));
    return ldm_bits_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

/* float32 -> IEEE half, round to nearest even; overflow to inf, NaN quiet. */
static inline uint16_t ldm_f32_to_f16(float f) {
    uint32_t x = ldm_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN: keep the top payload bits, force quiet */
        return (uint16_t)(sign | 0x7e00 | ((a >> 13) & 0x3ff));
    if (a >= 0x477ff000u) /* >= 65520 (halfway past 65504) rounds to inf */
        return (uint16_t)(sign | 0x7c00);
    if (a >= 0x38800000u) /* normal half: rebias exponent 127 -> 15 */
        return (uint16_t)(sign | ldm_shift_rne(a - (112u << 23), 13));
    if (a <= 0x33000000u) /* <= 2^-25 (half the smallest subnormal) -> 0 */
        return sign;
    /* subnormal half: value / 2^-24 = mant * 2^(e - 126), 14 <= shift <= 24 */
    uint32_t e = a >> 23, mant = (a & 0x7fffffu) | 0x800000u;
    return (uint16_t)(sign | ldm_shift_rne(mant, (int)(126 - e)));
}

/* bfloat16 -> float32: the top half of a float32. */
static inline float ldm_bf16_to_f32(uint16_t b) { return ldm_bits_f32((uint32_t)b << 16); }

/* float32 -> bfloat16, round to nearest even; NaN truncated and kept quiet. */
static inline uint16_t ldm_f32_to_bf16(float f) {
    uint32_t x = ldm_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: truncate, force quiet */
        return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

#endif
