/*
 * test_cpu.c - the CPUs of a run (runtime/cpu.c, runtime/cpu_check.c) and
 * make ... ARCH=:
 *   - the cgroup CPU quota read from fixture trees (v2 cpu.max, v1
 *     cpu.cfs_quota_us / cpu.cfs_period_us), the default thread count the
 *     minimum of it and the affinity mask, -t parsing;
 *   - the executable's thread count: -t wins over OMP_NUM_THREADS, which
 *     wins over the default; under `taskset -c 0` it is 1;
 *   - the CPU check before main: LDM_CPU_MASK (the test hook) pretending a
 *     feature is missing makes the native executable refuse with the
 *     feature and the ARCH to rebuild with, status 3, no output file;
 *   - an ARCH=x86-64-v3 build of the same executable runs (also with
 *     AVX-512 "missing"), makes the native build's image within float
 *     tolerance, and refuses a CPU without AVX2; ARCH=bogus stops make.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpu.h"
#include "image.h"
#include "pipeline.h"
#include "safetensors.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define CPU_SAN 1
#else
#define CPU_SAN 0
#endif

/* ---- fixtures ---------------------------------------------------------------- */

static void put(const char *root, const char *rel, const char *text) {
    char path[600];
    snprintf(path, sizeof path, "%s%s%s", root, *rel ? "/" : "", rel);
    char *slash = strrchr(path, '/');
    *slash = 0;
    ck_assert(ldm_mkdirs(path) == 0);
    *slash = '/';
    FILE *fp = fopen(path, "w");
    ck_assert(fp);
    fputs(text, fp);
    fclose(fp);
}

static void scratch(void) { test_dir_init("ldm_cpu_"); }
static void nothing(void) {}

START_TEST(test_cgroup_v2) {
    struct {
        const char *text;
        int want;
    } cases[] = {
        {"max 100000\n", 0}, {"150000 100000\n", 2}, {"50000 100000\n", 1}, {"200000 100000\n", 2},
        {"100001 100000\n", 2}, {"400000 50000", 8}, {"garbage\n", 0}, {"-5 100000\n", 0}, {"", 0},
        {"300000\n", 3}, /* one number: the kernel's default period */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *root = test_tmp("v2-%zu", i);
        put(root, "cpu.max", cases[i].text);
        int q = ldm_cpu_cgroup_quota(root);
        ck_assert_msg(q == cases[i].want, "cpu.max '%s': %d CPUs, expected %d", cases[i].text, q, cases[i].want);
    }
    ck_assert_int_eq(ldm_cpu_cgroup_quota(test_tmp("no-such-root")), 0);
}
END_TEST

START_TEST(test_cgroup_v1) {
    const char *root = test_tmp("v1-a");
    put(root, "cpu/cpu.cfs_quota_us", "-1\n");
    put(root, "cpu/cpu.cfs_period_us", "100000\n");
    ck_assert_int_eq(ldm_cpu_cgroup_quota(root), 0);
    root = test_tmp("v1-b");
    put(root, "cpu/cpu.cfs_quota_us", "250000\n");
    put(root, "cpu/cpu.cfs_period_us", "100000\n");
    ck_assert_int_eq(ldm_cpu_cgroup_quota(root), 3);
    root = test_tmp("v1-c"); /* the combined hierarchy's name */
    put(root, "cpu,cpuacct/cpu.cfs_quota_us", "100000\n");
    put(root, "cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    ck_assert_int_eq(ldm_cpu_cgroup_quota(root), 1);
    root = test_tmp("v1-d"); /* the quota without its period: none */
    put(root, "cpu/cpu.cfs_quota_us", "100000\n");
    ck_assert_int_eq(ldm_cpu_cgroup_quota(root), 0);
    root = test_tmp("v1-e"); /* v2 wins when both are there */
    put(root, "cpu.max", "max 100000\n");
    put(root, "cpu/cpu.cfs_quota_us", "100000\n");
    put(root, "cpu/cpu.cfs_period_us", "100000\n");
    ck_assert_int_eq(ldm_cpu_cgroup_quota(root), 0);
}
END_TEST

/* the process's own cgroup and its parents, as /proc/self/cgroup names
 * them (no cgroup namespace): the smallest quota on the way to the root */
START_TEST(test_cgroup_own) {
    const char *root = test_tmp("own-v2"), *proc = test_tmp("own-v2.cgroup");
    put(root, "cpu.max", "max 100000\n");
    put(root, "kubepods/cpu.max", "400000 100000\n");
    put(root, "kubepods/pod1/cpu.max", "max 100000\n");
    put(root, "kubepods/pod1/ctr/cpu.max", "max 100000\n");
    put(proc, "", "0::/kubepods/pod1/ctr\n");
    ck_assert_int_eq(ldm_cpu_cgroup_quota_of(root, proc), 4);
    put(root, "kubepods/pod1/ctr/cpu.max", "150000 100000\n");
    ck_assert_int_eq(ldm_cpu_cgroup_quota_of(root, proc), 2);
    put(proc, "", "0::/\n");
    ck_assert_int_eq(ldm_cpu_cgroup_quota_of(root, proc), 0);
    ck_assert_int_eq(ldm_cpu_cgroup_quota_of(root, test_tmp("no-such-file")), 0);
    /* v1: the cpu controller's line only */
    root = test_tmp("own-v1");
    proc = test_tmp("own-v1.cgroup");
    put(root, "cpu,cpuacct/slurm/job_7/cpu.cfs_quota_us", "300000\n");
    put(root, "cpu,cpuacct/slurm/job_7/cpu.cfs_period_us", "100000\n");
    put(root, "cpu,cpuacct/slurm/job_7/step_0/cpu.cfs_quota_us", "-1\n");
    put(root, "cpu,cpuacct/slurm/job_7/step_0/cpu.cfs_period_us", "100000\n");
    put(root, "memory/slurm/job_7/step_0/cpu.cfs_quota_us", "100000\n");
    put(root, "memory/slurm/job_7/step_0/cpu.cfs_period_us", "100000\n");
    put(proc, "", "4:memory:/slurm/job_7/step_0\n2:cpu,cpuacct:/slurm/job_7/step_0\n1:name=systemd:/x\n");
    ck_assert_int_eq(ldm_cpu_cgroup_quota_of(root, proc), 3);
    put(proc, "", "garbage\n::\n3::relative\n");
    ck_assert_int_eq(ldm_cpu_cgroup_quota_of(root, proc), 0);
}
END_TEST

/* min(affinity, quota) and where it came from */
START_TEST(test_default_threads) {
    int aff = ldm_cpu_affinity_count();
    cpu_set_t set;
    CPU_ZERO(&set);
    ck_assert(sched_getaffinity(0, sizeof set, &set) == 0);
    ck_assert_int_eq(aff, CPU_COUNT(&set));
    LdmThreadsFrom from;
    const char *none = test_tmp("quota-none");
    put(none, "cpu.max", "max 100000\n");
    ck_assert_int_eq(ldm_cpu_default_threads(none, &from), aff);
    ck_assert_int_eq(from, LDM_THREADS_AFFINITY);
    const char *one = test_tmp("quota-one");
    put(one, "cpu.max", "50000 100000\n");
    ck_assert_int_eq(ldm_cpu_default_threads(one, &from), 1);
    ck_assert_int_eq(from, aff > 1 ? LDM_THREADS_CGROUP : LDM_THREADS_AFFINITY);
    const char *big = test_tmp("quota-big");
    put(big, "cpu.max", "100000000 100000\n");
    ck_assert_int_eq(ldm_cpu_default_threads(big, &from), aff);
    ck_assert_int_eq(from, LDM_THREADS_AFFINITY);
    /* one CPU: affinity of 1 */
    CPU_ZERO(&set);
    CPU_SET(sched_getcpu() >= 0 ? sched_getcpu() : 0, &set);
    ck_assert(sched_setaffinity(0, sizeof set, &set) == 0); /* this forked test's process only */
    ck_assert_int_eq(ldm_cpu_affinity_count(), 1);
    ck_assert_int_eq(ldm_cpu_default_threads(big, &from), 1);
}
END_TEST

START_TEST(test_threads_parse) {
    int n = 0;
    ck_assert(ldm_threads_parse("-t", "4", &n) == 0 && n == 4);
    const char *bad[] = {"0", "abc", "-1", "4097", "", "2x", "1.5"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_msg(ldm_threads_parse("-t", bad[i], &n) != 0, "'%s' accepted", bad[i]);
        ck_assert_msg(strstr(ldm_last_error(), "-t") && strstr(ldm_last_error(), "thread count"), "'%s': %s", bad[i],
                      ldm_last_error());
    }
    /* -t wins; then OMP_NUM_THREADS; then the default */
    LdmThreadsFrom from;
    setenv("OMP_NUM_THREADS", "3", 1);
    ck_assert_int_eq(ldm_threads_setup(2, &from), 2);
    ck_assert_int_eq(from, LDM_THREADS_FLAG);
    ldm_threads_setup(0, &from);
    ck_assert_int_eq(from, LDM_THREADS_ENV);
    setenv("OMP_NUM_THREADS", "abc", 1); /* not a count: the default */
    ldm_threads_setup(0, &from);
    ck_assert(from == LDM_THREADS_AFFINITY || from == LDM_THREADS_CGROUP);
    unsetenv("OMP_NUM_THREADS");
}
END_TEST

/* ---- the CPU check ----------------------------------------------------------- */

START_TEST(test_cpu_missing) {
    char buf[512];
    unsetenv("LDM_CPU_MASK");
    ck_assert_msg(!strcmp(ldm_cpu_missing(buf, sizeof buf), ""), "this CPU lacks '%s' of its own native build", buf);
    ck_assert_msg(strstr(ldm_build_features, "avx2") && strstr(ldm_build_features, "fma"),
                  "the native build assumed '%s'", ldm_build_features);
    ck_assert_str_eq(ldm_build_arch, "native");
    setenv("LDM_CPU_MASK", "avx2,fma", 1);
    ck_assert_str_eq(ldm_cpu_missing(buf, sizeof buf), "avx2 fma");
    ck_assert_ptr_null(ldm_cpu_best_arch());
    if (strstr(ldm_build_features, "avx512f")) {
        setenv("LDM_CPU_MASK", "avx512f", 1);
        ck_assert_str_eq(ldm_cpu_missing(buf, sizeof buf), "avx512f");
        ck_assert_str_eq(ldm_cpu_best_arch(), "x86-64-v3");
        unsetenv("LDM_CPU_MASK");
        ck_assert_str_eq(ldm_cpu_best_arch(), "x86-64-v4");
    }
    unsetenv("LDM_CPU_MASK");
}
END_TEST

/* ---- the executables --------------------------------------------------------- */

static char g_exe[700], g_exe_v3[700];
static char *g_log, *g_log_v3;

static void build_arch(const char *arch, char *path, size_t n, char **log) {
    char build[300], config[512], exe[600], logf[600], archv[64];
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(config, sizeof config, "CONFIG=%s", test_shared("goldens/sd1-tiny/config.yaml"));
    snprintf(archv, sizeof archv, "ARCH=%s", arch);
    snprintf(exe, sizeof exe, "%s/txt2img-test-sd1-tiny%s%s", test_build_dir(), strcmp(arch, "native") ? "-" : "",
             strcmp(arch, "native") ? arch : "");
    char *argv[] = {"make", "-s", "-j2", build, CPU_SAN ? "SAN=1" : "SAN=0", archv, "txt2img", config, "H=128", "W=128",
                    "TXT2IMG_NAME=txt2img-test-sd1-tiny", NULL};
    snprintf(logf, sizeof logf, "%s/make-%s.log", test_dir, arch);
    int rc = test_wait_status(test_spawn(argv, logf));
    if (rc == 0 && access(exe, X_OK) == 0) {
        snprintf(path, n, "%s", exe);
    } else {
        size_t len;
        path[0] = 0;
        *log = ldm_read_file(logf, &len);
        if (!*log) *log = ldm_xasprintf("make exited with status %d", rc);
    }
}

static void setup_exe(void) {
    scratch();
    if (!test_dir[0] || g_exe[0] || g_log) return;
    test_build_sd1_tiny_txt2img(CPU_SAN, g_exe, sizeof g_exe, &g_log);
}

static void setup_v3(void) {
    setup_exe();
    if (!test_dir[0] || g_exe_v3[0] || g_log_v3) return;
    build_arch("x86-64-v3", g_exe_v3, sizeof g_exe_v3, &g_log_v3);
}

static const char *exe(void) {
    ck_assert_msg(g_exe[0], "make txt2img failed:\n%s", g_log ? g_log : "(not run)");
    return g_exe;
}

static const char *exe_v3(void) {
    ck_assert_msg(g_exe_v3[0], "make txt2img ARCH=x86-64-v3 failed:\n%s", g_log_v3 ? g_log_v3 : "(not run)");
    return g_exe_v3;
}

/* Run [prefix...] exe --weights --vocab args... -o png; status, output in *out. */
static int run_t2i(const char *const *prefix, const char *prog, const char *png, char **out, const char *const *args) {
    char *argv[48];
    int k = 0;
    for (; prefix && *prefix; prefix++) argv[k++] = (char *)*prefix;
    argv[k++] = (char *)prog;
    argv[k++] = "--weights";
    argv[k++] = (char *)test_shared("goldens/sd1-tiny/model.safetensors");
    argv[k++] = "--vocab";
    argv[k++] = (char *)test_shared("clip/bpe_simple_vocab_16e6.txt.gz");
    argv[k++] = "--prompt";
    argv[k++] = "a red fox";
    argv[k++] = "--steps";
    argv[k++] = "2";
    argv[k++] = "-o";
    argv[k++] = (char *)png;
    for (; args && *args; args++) argv[k++] = (char *)*args;
    argv[k] = NULL;
    return test_run(argv, out);
}

/* taskset -c 0: one thread; -t 2 wins over the affinity mask and over
 * OMP_NUM_THREADS, which wins over the default */
START_TEST(test_exe_threads) {
    const char *png = test_tmp("threads.png");
    char *out;
    const char *taskset[] = {"taskset", "-c", "0", NULL};
    unsetenv("OMP_NUM_THREADS");
    int rc = run_t2i(taskset, exe(), png, &out, NULL);
    ck_assert_msg(rc == 0 && strstr(out, "threads: 1 (the CPUs of this process's affinity mask)"), "status %d:\n%s", rc,
                  out);
    free(out);
    const char *t2[] = {"-t", "2", NULL};
    setenv("OMP_NUM_THREADS", "1", 1);
    rc = run_t2i(taskset, exe(), png, &out, t2);
    ck_assert_msg(rc == 0 && strstr(out, "threads: 2 (-t)"), "status %d:\n%s", rc, out);
    free(out);
    const char *t2b[] = {"--threads=2", NULL};
    rc = run_t2i(NULL, exe(), png, &out, t2b);
    ck_assert_msg(rc == 0 && strstr(out, "threads: 2 (-t)"), "status %d:\n%s", rc, out);
    free(out);
    rc = run_t2i(NULL, exe(), png, &out, NULL);
    ck_assert_msg(rc == 0 && strstr(out, "threads: 1 (OMP_NUM_THREADS)"), "status %d:\n%s", rc, out);
    free(out);
    unsetenv("OMP_NUM_THREADS");
}
END_TEST

START_TEST(test_exe_bad_threads) {
    const char *bad[][2] = {{"-t", "0"}, {"-t", "abc"}, {"--threads", "-2"}, {"-t", "100000"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *out;
        const char *args[] = {bad[i][0], bad[i][1], NULL};
        int rc = run_t2i(NULL, exe(), test_tmp("bad-threads.png"), &out, args);
        ck_assert_msg(rc == 2 && strstr(out, "error") && strstr(out, bad[i][0]) && strstr(out, "thread count"),
                      "%s %s: status %d:\n%s", bad[i][0], bad[i][1], rc, out);
        free(out);
    }
    char *out;
    const char *args[] = {"-t", NULL};
    int rc = run_t2i(NULL, exe(), test_tmp("bad-threads.png"), &out, args);
    ck_assert_msg(rc == 2 && strstr(out, "-t: expected a value"), "status %d:\n%s", rc, out);
    free(out);
    assert_no_output("bad-");
}
END_TEST

/* The native build on a CPU that lacks avx512f (the hook): refused before
 * main with the feature and the ARCH to rebuild with */
START_TEST(test_exe_refuses_cpu) {
    if (!strstr(ldm_build_features, "avx512f")) return; /* the native build assumed no AVX-512 */
    char *out;
    setenv("LDM_CPU_MASK", "avx512f", 1);
    int rc = run_t2i(NULL, exe(), test_tmp("bad-cpu.png"), &out, NULL);
    unsetenv("LDM_CPU_MASK");
    ck_assert_msg(rc == 3, "status %d:\n%s", rc, out);
    ck_assert_msg(strstr(out, "this executable was built for ARCH=native") && strstr(out, "this CPU lacks avx512f") &&
                      strstr(out, "make txt2img ... ARCH=x86-64-v3"),
                  "message:\n%s", out);
    ck_assert_msg(!strstr(out, "sampling") && !strstr(out, "load"), "ran before the check:\n%s", out);
    free(out);
    assert_no_output("bad-");
}
END_TEST

/* ARCH=x86-64-v3: runs without AVX-512, the native image within float
 * tolerance, refuses a CPU without AVX2 */
START_TEST(test_exe_arch_v3) {
    const char *v3 = exe_v3();
    char *out;
    const char *nl[] = {"--save-latent", test_tmp("native.safetensors"), NULL};
    int rc = run_t2i(NULL, exe(), test_tmp("native.png"), &out, nl);
    ck_assert_msg(rc == 0, "native: status %d:\n%s", rc, out);
    free(out);
    setenv("LDM_CPU_MASK", "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16", 1);
    const char *vl[] = {"--save-latent", test_tmp("v3.safetensors"), NULL};
    rc = run_t2i(NULL, v3, test_tmp("v3.png"), &out, vl);
    ck_assert_msg(rc == 0, "x86-64-v3 on a CPU without AVX-512: status %d:\n%s", rc, out);
    free(out);
    int64_t n1, n2;
    float *a = read_f32(test_tmp("native.safetensors"), "latent", &n1);
    float *b = read_f32(test_tmp("v3.safetensors"), "latent", &n2);
    ck_assert_int_eq(n1, n2);
    double m = 0;
    for (int64_t i = 0; i < n1; i++) m = fmax(m, fabs(a[i]));
    double d = max_abs_diff(a, b, n1);
    ck_assert_msg(d <= 1e-4 * (1 + m), "latents differ by %g (max |x| %g)", d, m);
    free(a);
    free(b);
    int pd = png_max_diff(test_tmp("native.png"), test_tmp("v3.png"));
    ck_assert_msg(pd <= 1, "PNGs differ by %d", pd);
    /* no AVX2: nothing to rebuild with */
    setenv("LDM_CPU_MASK", "avx2", 1);
    rc = run_t2i(NULL, v3, test_tmp("bad-v3.png"), &out, NULL);
    unsetenv("LDM_CPU_MASK");
    ck_assert_msg(rc == 3 && strstr(out, "built for ARCH=x86-64-v3") && strstr(out, "lacks avx2") &&
                      strstr(out, "at least x86-64-v3"),
                  "status %d:\n%s", rc, out);
    ck_assert_msg(!strstr(out, "avx512"), "x86-64-v3 assumed AVX-512:\n%s", out);
    free(out);
    assert_no_output("bad-");
}
END_TEST

START_TEST(test_make_bad_arch) {
    char build[300], logf[600];
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(logf, sizeof logf, "%s/make-bogus.log", test_dir);
    char *argv[] = {"make", "-s", build, "ARCH=bogus", "txt2img", NULL};
    int rc = test_wait_status(test_spawn(argv, logf));
    size_t n;
    char *log = ldm_read_file(logf, &n);
    ck_assert_msg(rc != 0 && log && strstr(log, "ARCH=bogus: expected one of native x86-64-v3 x86-64-v4"),
                  "status %d:\n%s", rc, log ? log : "");
    free(log);
}
END_TEST

Suite *suite_cpu(void) {
    Suite *s = suite_create("cpu");
    TCase *tc = tcase_create("threads");
    tcase_add_unchecked_fixture(tc, scratch, nothing);
    tcase_add_test(tc, test_cgroup_v2);
    tcase_add_test(tc, test_cgroup_v1);
    tcase_add_test(tc, test_cgroup_own);
    tcase_add_test(tc, test_default_threads);
    tcase_add_test(tc, test_threads_parse);
    tcase_add_test(tc, test_cpu_missing);
    tcase_add_test(tc, test_make_bad_arch);
    suite_add_tcase(s, tc);

    int t = CPU_SAN ? 1500 : 600;
    tc = tcase_create("executables");
    tcase_add_unchecked_fixture(tc, setup_v3, nothing);
    tcase_set_timeout(tc, t);
    tcase_add_test(tc, test_exe_threads);
    tcase_add_test(tc, test_exe_bad_threads);
    tcase_add_test(tc, test_exe_refuses_cpu);
    tcase_add_test(tc, test_exe_arch_v3);
    suite_add_tcase(s, tc);
    return s;
}
