/*
 * cpu_features.c - what this build assumed of the CPU: the ARCH it was
 * compiled for (make ... ARCH=native|x86-64-v3|x86-64-v4) and the
 * instruction-set extensions the compiler was allowed to use, from its
 * predefined macros. Data only, no code: compiled with the build's -march
 * like every other object, and read by the CPU check (cpu_check.c, compiled
 * for the x86-64 baseline) before main.
 */
#include "cpu.h"

#ifndef LDM_ARCH
#define LDM_ARCH "native"
#endif

const char ldm_build_arch[] = LDM_ARCH;

/* names as cpu_check.c's table (and mostly /proc/cpuinfo, GCC's
 * __builtin_cpu_supports) */
const char ldm_build_features[] = ""
#ifdef __POPCNT__
    " popcnt"
#endif
#ifdef __SSE4_2__
    " sse4.2"
#endif
#ifdef __AVX__
    " avx"
#endif
#ifdef __AVX2__
    " avx2"
#endif
#ifdef __FMA__
    " fma"
#endif
#ifdef __F16C__
    " f16c"
#endif
#ifdef __BMI__
    " bmi"
#endif
#ifdef __BMI2__
    " bmi2"
#endif
#ifdef __LZCNT__
    " lzcnt"
#endif
#ifdef __MOVBE__
    " movbe"
#endif
#ifdef __AVXVNNI__
    " avxvnni"
#endif
#ifdef __AVX512F__
    " avx512f"
#endif
#ifdef __AVX512CD__
    " avx512cd"
#endif
#ifdef __AVX512BW__
    " avx512bw"
#endif
#ifdef __AVX512DQ__
    " avx512dq"
#endif
#ifdef __AVX512VL__
    " avx512vl"
#endif
#ifdef __AVX512IFMA__
    " avx512ifma"
#endif
#ifdef __AVX512VBMI__
    " avx512vbmi"
#endif
#ifdef __AVX512VBMI2__
    " avx512vbmi2"
#endif
#ifdef __AVX512VNNI__
    " avx512vnni"
#endif
#ifdef __AVX512BITALG__
    " avx512bitalg"
#endif
#ifdef __AVX512VPOPCNTDQ__
    " avx512vpopcntdq"
#endif
#ifdef __AVX512BF16__
    " avx512bf16"
#endif
#ifdef __AVX512FP16__
    " avx512fp16"
#endif
#ifdef __GFNI__
    " gfni"
#endif
#ifdef __VAES__
    " vaes"
#endif
#ifdef __VPCLMULQDQ__
    " vpclmulqdq"
#endif
    ;
