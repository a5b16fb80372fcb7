/*
 * cpu_check.c - before main, refuse to run on a CPU that lacks an
 * instruction-set extension this build assumed (cpu.h), with a message
 * naming it and the ARCH to rebuild with, instead of dying on an illegal
 * instruction somewhere in the kernels.
 *
 * This file alone is compiled for the x86-64 baseline (the Makefile adds
 * -march=x86-64 -mtune=generic to it, whatever ARCH is), so its code runs on
 * any x86-64 CPU; the check is a constructor of high priority, which runs
 * before main (whose own prologue may already use AVX) and before the
 * constructors of ordinary priority. It reads the build's assumptions from
 * cpu_features.c (data compiled with the build's -march) and the CPU's from
 * cpuid and xgetbv (the OS must also save the AVX / AVX-512 registers).
 *
 * Test hook: LDM_CPU_MASK=avx512f,avx2 (comma- or space-separated feature
 * names) pretends this CPU lacks those features, so the refusal can be
 * tested on a machine that has them. It can only make the check stricter.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <cpuid.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu.h"

enum { R_EAX, R_EBX, R_ECX, R_EDX };
enum { X_NONE = 0, X_AVX = 1, X_AVX512 = 2 };

typedef struct Feature {
    const char *name;
    unsigned leaf, sub;
    int reg, bit;
    int xsave; /* register state the OS must save (XCR0) */
} Feature;

static const Feature k_features[] = {
    {"popcnt", 1, 0, R_ECX, 23, X_NONE},
    {"sse4.2", 1, 0, R_ECX, 20, X_NONE},
    {"avx", 1, 0, R_ECX, 28, X_AVX},
    {"fma", 1, 0, R_ECX, 12, X_AVX},
    {"f16c", 1, 0, R_ECX, 29, X_AVX},
    {"movbe", 1, 0, R_ECX, 22, X_NONE},
    {"avx2", 7, 0, R_EBX, 5, X_AVX},
    {"bmi", 7, 0, R_EBX, 3, X_NONE},
    {"bmi2", 7, 0, R_EBX, 8, X_NONE},
    {"lzcnt", 0x80000001u, 0, R_ECX, 5, X_NONE},
    {"avxvnni", 7, 1, R_EAX, 4, X_AVX},
    {"avx512f", 7, 0, R_EBX, 16, X_AVX512},
    {"avx512dq", 7, 0, R_EBX, 17, X_AVX512},
    {"avx512ifma", 7, 0, R_EBX, 21, X_AVX512},
    {"avx512cd", 7, 0, R_EBX, 28, X_AVX512},
    {"avx512bw", 7, 0, R_EBX, 30, X_AVX512},
    {"avx512vl", 7, 0, R_EBX, 31, X_AVX512},
    {"avx512vbmi", 7, 0, R_ECX, 1, X_AVX512},
    {"avx512vbmi2", 7, 0, R_ECX, 6, X_AVX512},
    {"gfni", 7, 0, R_ECX, 8, X_NONE},
    {"vaes", 7, 0, R_ECX, 9, X_AVX},
    {"vpclmulqdq", 7, 0, R_ECX, 10, X_AVX},
    {"avx512vnni", 7, 0, R_ECX, 11, X_AVX512},
    {"avx512bitalg", 7, 0, R_ECX, 12, X_AVX512},
    {"avx512vpopcntdq", 7, 0, R_ECX, 14, X_AVX512},
    {"avx512fp16", 7, 0, R_EDX, 23, X_AVX512},
    {"avx512bf16", 7, 1, R_EAX, 5, X_AVX512},
};

/* Is `name` in the comma/space-separated list `list`? */
static int in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        p += strspn(p, ", \t");
        size_t k = strcspn(p, ", \t");
        if (k == n && strncmp(p, name, n) == 0) return 1;
        p += k;
    }
    return 0;
}

static uint64_t xcr0(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; /* no OSXSAVE */
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* Does this CPU (and OS) have feature f? */
static int has(const Feature *f, uint64_t x) {
    unsigned r[4] = {0, 0, 0, 0};
    unsigned max = __get_cpuid_max(f->leaf & 0x80000000u, NULL);
    if (max < f->leaf) return 0;
    __cpuid_count(f->leaf, f->sub, r[0], r[1], r[2], r[3]);
    if (!(r[f->reg] & (1u << f->bit))) return 0;
    if (f->xsave == X_AVX && (x & 0x6) != 0x6) return 0;          /* XMM, YMM */
    if (f->xsave == X_AVX512 && (x & 0xe6) != 0xe6) return 0;     /* + opmask, ZMM */
    const char *mask = getenv("LDM_CPU_MASK");
    return !in_list(mask, f->name);
}

static int has_name(const char *name, uint64_t x) {
    for (size_t i = 0; i < sizeof k_features / sizeof *k_features; i++)
        if (!strcmp(k_features[i].name, name)) return has(&k_features[i], x);
    return 0; /* a feature the build assumed that this table does not know: say it is missing */
}

const char *ldm_cpu_missing(char *buf, int n) {
    uint64_t x = xcr0();
    int len = 0;
    buf[0] = 0;
    for (const char *p = ldm_build_features; *p;) {
        p += strspn(p, " ");
        size_t k = strcspn(p, " ");
        if (!k) break;
        char name[32];
        if (k >= sizeof name) k = sizeof name - 1;
        memcpy(name, p, k);
        name[k] = 0;
        p += k;
        if (!has_name(name, x) && len + (int)k + 2 < n) len += snprintf(buf + len, (size_t)(n - len), "%s%s", len ? " " : "", name);
    }
    return buf;
}

const char *ldm_cpu_best_arch(void) {
    static const char *const v3[] = {"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", NULL};
    static const char *const v4[] = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", NULL};
    uint64_t x = xcr0();
    for (int i = 0; v3[i]; i++)
        if (!has_name(v3[i], x)) return NULL;
    for (int i = 0; v4[i]; i++)
        if (!has_name(v4[i], x)) return "x86-64-v3";
    return "x86-64-v4";
}

/* Linked into every program that sets its threads (cpu.c refers to it),
 * so the check comes with the runtime. */
const int ldm_cpu_check_linked = 1;

__attribute__((constructor(101))) static void ldm_cpu_check(void) {
    char missing[512];
    if (!*ldm_cpu_missing(missing, sizeof missing)) return;
    const char *prog = program_invocation_short_name;
    const char *best = ldm_cpu_best_arch();
    const char *target = !strncmp(prog, "sample", 6) ? "sample" : "txt2img";
    const char *feat = ldm_build_features + strspn(ldm_build_features, " ");
    char msg[2048];
    int k = snprintf(msg, sizeof msg, "%s: error: this executable was built for ARCH=%s (%s); this CPU lacks %s: ",
                     prog, ldm_build_arch, feat, missing);
    if (k < 0 || k >= (int)sizeof msg) k = 0;
    if (best)
        snprintf(msg + k, sizeof msg - (size_t)k, "rebuild it with make %s ... ARCH=%s\n", target, best);
    else
        snprintf(msg + k, sizeof msg - (size_t)k,
                 "ldmc's kernels need at least x86-64-v3 (AVX2, FMA, F16C), which this CPU does not have\n");
    ssize_t w = write(2, msg, strlen(msg));
    (void)w;
    _exit(3);
}
