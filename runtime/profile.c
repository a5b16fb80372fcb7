/*
 * profile.c - per-node timing of generated code (LDM_PROFILE=1, or
 * LDM_PROFILE=N to list the N slowest nodes instead of 12).
 *
 * Generated forward functions time every kernel call when ldm_profiling is
 * set; the report sums time and FLOPs per op kind and lists the slowest
 * nodes, which is how the kernels worth specialising are found.
 */
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "util.h"

int ldm_profiling;
static int ldm_profile_top = 12; /* slowest nodes listed (LDM_PROFILE=N > 1: N of them) */

#define MAX_RECORDS 65536
#define MAX_KINDS 64

typedef struct ProfRecord {
    const char *model;   /* graph name */
    int id;              /* node id */
    const char *op;      /* kernel name (op chain) */
    double flops;        /* operations of the node */
    double seconds;      /* accumulated time */
    int calls;           /* how many times it ran */
} ProfRecord;

static ProfRecord records[MAX_RECORDS];
static int n_records;

void ldm_profile_init(void) {
    const char *e = getenv("LDM_PROFILE");
    ldm_profiling = e && *e && strcmp(e, "0") != 0;
    if (ldm_profiling && atoi(e) > 1) ldm_profile_top = atoi(e);
}

void ldm_profile_record(const char *model, int id, const char *op, double flops, double seconds) {
    for (int i = n_records - 1; i >= 0 && i >= n_records - 4096; i--)
        if (records[i].id == id && records[i].model == model) {
            records[i].seconds += seconds;
            records[i].calls++;
            return;
        }
    if (n_records == MAX_RECORDS) return;
    records[n_records++] = (ProfRecord){model, id, op, flops, seconds, 1};
}

static int by_time(const void *a, const void *b) {
    double x = ((const ProfRecord *)a)->seconds, y = ((const ProfRecord *)b)->seconds;
    return x < y ? 1 : x > y ? -1 : 0;
}

void ldm_profile_report(void) {
    if (!n_records) return;
    ProfRecord kinds[MAX_KINDS];
    int nk = 0;
    double total = 0;
    for (int i = 0; i < n_records; i++) {
        total += records[i].seconds;
        int k;
        for (k = 0; k < nk && strcmp(kinds[k].op, records[i].op); k++) {}
        if (k == nk) {
            if (nk == MAX_KINDS) continue;
            kinds[nk++] = (ProfRecord){records[i].model, 0, records[i].op, 0, 0, 0};
        }
        kinds[k].seconds += records[i].seconds;
        kinds[k].flops += records[i].flops * records[i].calls;
        kinds[k].calls += records[i].calls;
    }
    qsort(kinds, (size_t)nk, sizeof *kinds, by_time);
    fprintf(stderr, "profile: %.3f s in kernels\n  %-28s %9s %6s %7s %9s\n", total, "op", "seconds", "share", "calls", "GFLOP/s");
    for (int k = 0; k < nk; k++)
        fprintf(stderr, "  %-28s %9.3f %5.1f%% %7d %9.1f\n", kinds[k].op, kinds[k].seconds, 100 * kinds[k].seconds / total,
                kinds[k].calls, kinds[k].seconds > 0 ? kinds[k].flops / kinds[k].seconds / 1e9 : 0.0);
    qsort(records, (size_t)n_records, sizeof *records, by_time);
    fprintf(stderr, "  slowest nodes:\n");
    for (int i = 0; i < n_records && i < ldm_profile_top; i++)
        fprintf(stderr, "  %s %%%-5d %-24s %8.4f s/call %9.1f GFLOP/s\n", records[i].model, records[i].id, records[i].op,
                records[i].seconds / records[i].calls,
                records[i].seconds > 0 ? records[i].flops * records[i].calls / records[i].seconds / 1e9 : 0.0);
    n_records = 0;
}
