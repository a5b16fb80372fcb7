/*
 * cpu.h - the CPUs this process may use, and the thread count of the
 * executables (txt2img, sample).
 *
 * The default thread count is the smallest of
 *   - the CPUs of the process's affinity mask (sched_getaffinity: taskset,
 *     Slurm's and Kubernetes' cpusets),
 *   - the cgroup v2 CPU quota of /sys/fs/cgroup/cpu.max ("QUOTA PERIOD",
 *     "max" = none): ceil(QUOTA / PERIOD),
 *   - the cgroup v1 quota (cpu/cpu.cfs_quota_us / cpu/cpu.cfs_period_us,
 *     -1 = none), ceil as well,
 *   - the same files of the process's own cgroup and its parents, as
 *     /proc/self/cgroup names them, when there is no cgroup namespace,
 * and never the host's CPU count when one of those is smaller. -t N wins
 * over OMP_NUM_THREADS, which wins over that default.
 *
 * The check of the CPU's instruction set against what the build assumed
 * (ARCH=native|x86-64-v3|x86-64-v4) runs before main: runtime/cpu_check.c.
 */
#ifndef LDM_CPU_H
#define LDM_CPU_H

/* CPUs of the affinity mask (>= 1; 1 if it cannot be read). */
int ldm_cpu_affinity_count(void);

/* The cgroup CPU quota under `root` (normally "/sys/fs/cgroup": v2's
 * ROOT/cpu.max, else v1's ROOT/cpu/cpu.cfs_quota_us and
 * ROOT/cpu/cpu.cfs_period_us, else ROOT/cpu,cpuacct/...) as a CPU count
 * ceil(quota / period), or 0 when there is no quota or no such file. */
int ldm_cpu_cgroup_quota(const char *root);

/* The same, also for the cgroup this process is in when the file system
 * shows the host's tree (no cgroup namespace): each line of proc_cgroup
 * (normally "/proc/self/cgroup", "ID:CONTROLLERS:PATH") of cgroup v2 (no
 * controllers) or of v1's "cpu" controller names a directory ROOT[/CONTROLLERS]PATH;
 * its quota and those of its parents up to ROOT count. The smallest, or
 * 0 when none. */
int ldm_cpu_cgroup_quota_of(const char *root, const char *proc_cgroup);

/* Where a thread count came from. */
typedef enum LdmThreadsFrom {
    LDM_THREADS_FLAG = 0,   /* -t N */
    LDM_THREADS_ENV,        /* OMP_NUM_THREADS */
    LDM_THREADS_AFFINITY,   /* the affinity mask */
    LDM_THREADS_CGROUP,     /* the cgroup quota (smaller than the affinity mask) */
} LdmThreadsFrom;

/* The default: min(affinity, cgroup quota under cgroup_root for
 * /proc/self/cgroup (ldm_cpu_cgroup_quota_of), when one).
 * *from (may be NULL) says which of the two it was. */
int ldm_cpu_default_threads(const char *cgroup_root, LdmThreadsFrom *from);

/* Parse -t/--threads: an integer 1..4096; -1 (ldm_fail naming `flag`). */
int ldm_threads_parse(const char *flag, const char *v, int *n);

/* Set OpenMP's thread count: `flag` (> 0: -t N) wins, then a valid
 * OMP_NUM_THREADS (left to the OpenMP runtime), then
 * ldm_cpu_default_threads("/sys/fs/cgroup"). Returns the count in use;
 * *from (may be NULL) says why. */
int ldm_threads_setup(int flag, LdmThreadsFrom *from);

/* "-t", "OMP_NUM_THREADS", "affinity", "cgroup quota" */
const char *ldm_threads_from_name(LdmThreadsFrom f);

/* ---- the CPU check (runtime/cpu_check.c, runtime/cpu_features.c) ------------------ */

/* The ARCH the code was compiled for ("native", "x86-64-v3", ...) and the
 * instruction-set features it assumed (space-separated, as
 * __builtin_cpu_supports names them: "avx2 fma f16c ..."). */
extern const char ldm_build_arch[];
extern const char ldm_build_features[];

/* The features of ldm_build_features this CPU lacks, space-separated, ""
 * when none (written to buf of size n). LDM_CPU_MASK=f1,f2 (a test hook)
 * pretends the CPU lacks those. Safe to call on any x86-64 CPU. */
const char *ldm_cpu_missing(char *buf, int n);

/* The highest ARCH this CPU runs ("x86-64-v4", "x86-64-v3"), or NULL
 * when it has not even AVX2 + FMA (x86-64-v3), which the kernels need. */
const char *ldm_cpu_best_arch(void);

#endif
