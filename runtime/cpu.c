/*
 * cpu.c - the CPUs this process may use and the executables' thread count
 * (cpu.h).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "cpu.h"

#include <errno.h>
#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline.h"
#include "util.h"

int ldm_cpu_affinity_count(void) {
    /* large masks (> 1024 CPUs) need a bigger set than cpu_set_t */
    for (int ncpu = 1024; ncpu <= 1 << 18; ncpu *= 4) {
        cpu_set_t *set = CPU_ALLOC(ncpu);
        if (!set) return 1;
        size_t sz = CPU_ALLOC_SIZE(ncpu);
        CPU_ZERO_S(sz, set);
        if (sched_getaffinity(0, sz, set) == 0) {
            int n = CPU_COUNT_S(sz, set);
            CPU_FREE(set);
            return n > 0 ? n : 1;
        }
        int e = errno;
        CPU_FREE(set);
        if (e != EINVAL) return 1;
    }
    return 1;
}

/* The first line of ROOT/rel (at most n - 1 bytes), or NULL. */
static char *read_line(const char *root, const char *rel, char *buf, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    FILE *fp = fopen(path, "r");
    if (!fp) return NULL;
    char *r = fgets(buf, (int)n, fp);
    fclose(fp);
    return r;
}

/* ceil(quota / period), 0 if no quota or unparsable */
static int quota_cpus(long long quota, long long period) {
    if (quota <= 0 || period <= 0) return 0;
    long long n = (quota + period - 1) / period;
    return n > 1 << 20 ? 1 << 20 : (int)n;
}

int ldm_cpu_cgroup_quota(const char *root) {
    char buf[256];
    /* v2: "max 100000" or "150000 100000" */
    if (read_line(root, "cpu.max", buf, sizeof buf)) {
        char q[64];
        long long period = 0;
        if (sscanf(buf, "%63s %lld", q, &period) < 1) return 0;
        if (!strcmp(q, "max")) return 0;
        char *end;
        errno = 0;
        long long quota = strtoll(q, &end, 10);
        if (*end || errno) return 0;
        if (period == 0) period = 100000; /* the kernel's default when the file gives one number */
        return quota_cpus(quota, period);
    }
    /* v1: cpu.cfs_quota_us (-1 = none) and cpu.cfs_period_us */
    static const char *const dirs[] = {"cpu", "cpu,cpuacct", "cpuacct,cpu"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        char rq[64], rp[64], bq[64], bp[64];
        snprintf(rq, sizeof rq, "%s/cpu.cfs_quota_us", dirs[i]);
        snprintf(rp, sizeof rp, "%s/cpu.cfs_period_us", dirs[i]);
        if (!read_line(root, rq, bq, sizeof bq) || !read_line(root, rp, bp, sizeof bp)) continue;
        long long quota = 0, period = 0;
        if (sscanf(bq, "%lld", &quota) != 1 || sscanf(bp, "%lld", &period) != 1) return 0;
        return quota_cpus(quota, period);
    }
    return 0;
}

/* The quota of one cgroup directory: v2 DIR/cpu.max when v2, else v1's
 * DIR/cpu.cfs_quota_us and DIR/cpu.cfs_period_us; 0 when none. */
static int dir_quota(const char *dir, int v2) {
    char buf[256];
    if (v2) {
        if (!read_line(dir, "cpu.max", buf, sizeof buf)) return 0;
        char q[64];
        long long period = 0;
        if (sscanf(buf, "%63s %lld", q, &period) < 1 || !strcmp(q, "max")) return 0;
        char *end;
        errno = 0;
        long long quota = strtoll(q, &end, 10);
        if (*end || errno) return 0;
        return quota_cpus(quota, period ? period : 100000);
    }
    char bq[64], bp[64];
    long long quota = 0, period = 0;
    if (!read_line(dir, "cpu.cfs_quota_us", bq, sizeof bq) || !read_line(dir, "cpu.cfs_period_us", bp, sizeof bp))
        return 0;
    if (sscanf(bq, "%lld", &quota) != 1 || sscanf(bp, "%lld", &period) != 1) return 0;
    return quota_cpus(quota, period);
}

/* the smaller of two quotas, 0 meaning none */
static int min_quota(int a, int b) { return a <= 0 ? b : b <= 0 ? a : a < b ? a : b; }

int ldm_cpu_cgroup_quota_of(const char *root, const char *proc_cgroup) {
    int best = ldm_cpu_cgroup_quota(root);
    FILE *fp = proc_cgroup ? fopen(proc_cgroup, "r") : NULL;
    if (!fp) return best;
    char line[4096];
    while (fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\n")] = 0;
        /* "ID:CONTROLLERS:PATH" */
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2 || c2[1] != '/') continue;
        *c2 = 0;
        const char *ctl = c1 + 1, *path = c2 + 1;
        int v2 = !*ctl, has_cpu = 0;
        for (const char *p = ctl; *p;) {
            size_t k = strcspn(p, ",");
            if (k == 3 && !strncmp(p, "cpu", 3)) has_cpu = 1;
            p += k + (p[k] == ',');
        }
        if (!v2 && !has_cpu) continue;
        /* the cgroup's directory, then its parents (their limits apply too) */
        char dir[4096 + 512];
        int base = snprintf(dir, sizeof dir, "%s%s%s", root, v2 ? "" : "/", ctl);
        if (base < 0 || (size_t)base >= sizeof dir) continue;
        snprintf(dir + base, sizeof dir - (size_t)base, "%s", path);
        for (;;) {
            size_t len = strlen(dir);
            while (len > (size_t)base && dir[len - 1] == '/') dir[--len] = 0;
            if (len <= (size_t)base) break;
            best = min_quota(best, dir_quota(dir, v2));
            char *slash = strrchr(dir + base, '/');
            if (!slash) break;
            *slash = 0;
        }
    }
    fclose(fp);
    return best;
}

int ldm_cpu_default_threads(const char *cgroup_root, LdmThreadsFrom *from) {
    int n = ldm_cpu_affinity_count();
    int q = cgroup_root ? ldm_cpu_cgroup_quota_of(cgroup_root, "/proc/self/cgroup") : 0;
    LdmThreadsFrom f = LDM_THREADS_AFFINITY;
    if (q > 0 && q < n) {
        n = q;
        f = LDM_THREADS_CGROUP;
    }
    if (from) *from = f;
    return n;
}

int ldm_threads_parse(const char *flag, const char *v, int *n) {
    if (ldm_parse_int(flag, v, 1, 4096, n) != 0)
        return ldm_fail("%s: expected a thread count from 1 to 4096, got '%s'", flag, v);
    return 0;
}

/* OMP_NUM_THREADS as the OpenMP runtime takes it: a positive integer (or
 * a list "N,M,...", whose first element counts here). */
static int env_threads(void) {
    const char *e = getenv("OMP_NUM_THREADS");
    if (!e) return 0;
    while (*e == ' ' || *e == '\t') e++;
    char *end;
    errno = 0;
    long v = strtol(e, &end, 10);
    if (end == e || errno || v < 1) return 0;
    while (*end == ' ' || *end == '\t') end++;
    if (*end && *end != ',') return 0;
    return (int)v;
}

/* cpu_check.c's: referring to it links the CPU check (a constructor) into
 * every program that sets its threads */
extern const int ldm_cpu_check_linked;

int ldm_threads_setup(int flag, LdmThreadsFrom *from) {
    LdmThreadsFrom f;
    int n;
    (void)*(const volatile int *)&ldm_cpu_check_linked;
    if (flag > 0) {
        n = flag;
        f = LDM_THREADS_FLAG;
    } else if ((n = env_threads()) > 0) {
        f = LDM_THREADS_ENV;
    } else {
        n = ldm_cpu_default_threads("/sys/fs/cgroup", &f);
    }
    if (f != LDM_THREADS_ENV) omp_set_num_threads(n);
    if (from) *from = f;
    return omp_get_max_threads();
}

const char *ldm_threads_from_name(LdmThreadsFrom f) {
    switch (f) {
    case LDM_THREADS_FLAG: return "-t";
    case LDM_THREADS_ENV: return "OMP_NUM_THREADS";
    case LDM_THREADS_AFFINITY: return "the CPUs of this process's affinity mask";
    case LDM_THREADS_CGROUP: return "the cgroup CPU quota";
    }
    return "?";
}
