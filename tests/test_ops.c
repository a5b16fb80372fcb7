/*
 * test_ops.c - every op of the IR, through the real compiler path, against
 * a naive reference written here (plain loops, double accumulation).
 *
 * Each op family is one small DSL program, tests/ops/<family>.graph, with
 * many inputs and outputs. Per family, once per test run (an unchecked
 * fixture): build/ldmc compiles the graph to a runner, random inputs and
 * weights (fixed seeds) are written with the safetensors writer, the runner
 * runs once per checkpoint dtype of the family (F32, and for the families
 * whose kernels read half-precision weights also F16 and BF16), and its
 * outputs are loaded. Each test then recomputes one output with its
 * reference and compares, once per run (a loop test; the reference of an
 * F16/BF16 run uses the weights rounded to that type). Shapes are odd and
 * non-square (C=6, H=7, W=5, batch 2) so that a swapped index shows. The
 * `fused` family holds the patterns the compiler fuses into one kernel
 * (group_norm+silu, linear+geglu, conv/linear + row add + residual, conv +
 * residual + ReLU).
 *
 * Tolerance (float32 against a double reference):
 *   |got - ref| <= TOL * (|ref| + mag),  TOL = 1e-5,
 * where mag is the magnitude of the terms that make the element (sum of
 * |products| for a contraction, |x| for an activation of x, ...); it is
 * stated next to each reference. Copies (reshape, permute, slice, concat,
 * upsample, embedding, vq_lookup) and indices (vq_index) must be exact.
 */
#define _GNU_SOURCE
#include <check.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "safetensors.h"
#include "testutil.h"
#include "util.h"

#define TOL 1e-5
#define MAXD 6      /* ranks used here */
#define MAXT 64     /* tensors per family and kind */
#define MAXV 3      /* runs per family (checkpoint dtypes) */

/* ------------------------------------------------------------------------
 * tensors and families
 * ------------------------------------------------------------------------ */

/* A named tensor: float32 or int32 data and its shape. */
typedef struct Tens {
    char name[48];           /* input name / checkpoint key / output name */
    int i32;                 /* 1: data in i, else in f */
    int ndim;                /* rank */
    int64_t shape[MAXD];     /* dimensions */
    int64_t n;               /* element count */
    float *f;                /* (n) float data */
    int32_t *i;              /* (n) int data */
} Tens;

typedef struct Family Family;
struct Family {
    const char *name;        /* tests/ops/<name>.graph */
    void (*make)(Family *);  /* creates the inputs and the weights (w[0]) */
    int n_var;               /* runs: one per checkpoint dtype */
    StDtype wdtype[MAXV];    /* checkpoint dtype of run v (ST_F32 first) */
    Tens in[MAXT];           /* graph inputs */
    int n_in;
    Tens w[MAXV][MAXT];      /* checkpoint tensors as run v stores them (rounded to its dtype) */
    int n_w;
    Tens out[MAXV][MAXT];    /* the runner's outputs, per run */
    int n_out[MAXV];
    int ok;                  /* compiled, ran and outputs loaded */
    char msg[4096];          /* otherwise: why not */
    char dir[96];            /* scratch directory */
    char runner[160];        /* the compiled graph runner */
};

/* One run of a family: what a test compares. */
typedef struct Run {
    const Family *F;
    int v;                   /* index of the run (checkpoint dtype) */
} Run;

enum { T_INPUT, T_WEIGHT };

#define SHAPE(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

/* Deterministic random numbers: splitmix64 seeded from the tensor's name. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) / 9007199254740992.0; }

static uint64_t seed_of(const Family *F, const char *name) {
    uint64_t h = 1469598103934665603ull;
    for (const char *p = F->name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = (h ^ '/') * 1099511628211ull;
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h;
}

static void tens_init(Tens *t, const char *name, int i32, int ndim, const int64_t *shape) {
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->i32 = i32;
    t->ndim = ndim;
    t->n = 1;
    for (int d = 0; d < ndim; d++) {
        t->shape[d] = shape[d];
        t->n *= shape[d];
    }
    if (i32) t->i = ldm_xcalloc((size_t)t->n + 1, sizeof *t->i);
    else t->f = ldm_xcalloc((size_t)t->n + 1, sizeof *t->f);
}

static void tens_free(Tens *t) {
    free(t->f);
    free(t->i);
    t->f = NULL;
    t->i = NULL;
}

static Tens *new_tens(Family *F, int kind, const char *name, int i32, int ndim, const int64_t *shape) {
    ck_assert_msg(F->n_in < MAXT && F->n_w < MAXT, "test bug: more than %d tensors", MAXT);
    Tens *t = kind == T_INPUT ? &F->in[F->n_in++] : &F->w[0][F->n_w++];
    tens_init(t, name, i32, ndim, shape);
    return t;
}

/* f32 tensor, uniform in [lo, hi). */
static Tens *add_f32(Family *F, int kind, const char *name, double lo, double hi, int ndim, const int64_t *shape) {
    Tens *t = new_tens(F, kind, name, 0, ndim, shape);
    uint64_t s = seed_of(F, name);
    for (int64_t i = 0; i < t->n; i++) t->f[i] = (float)(lo + (hi - lo) * rng_unit(&s));
    return t;
}

/* f32 tensor of small integers, uniform in [lo, hi): sums of their
 * products are exact in float and double alike. */
static Tens *add_int_valued(Family *F, int kind, const char *name, int lo, int hi, int ndim, const int64_t *shape) {
    Tens *t = new_tens(F, kind, name, 0, ndim, shape);
    uint64_t s = seed_of(F, name);
    for (int64_t i = 0; i < t->n; i++) t->f[i] = (float)(lo + (int)(rng_next(&s) % (uint64_t)(hi - lo)));
    return t;
}

/* i32 tensor, uniform in [lo, hi). */
static Tens *add_i32(Family *F, int kind, const char *name, int lo, int hi, int ndim, const int64_t *shape) {
    Tens *t = new_tens(F, kind, name, 1, ndim, shape);
    uint64_t s = seed_of(F, name);
    for (int64_t i = 0; i < t->n; i++) t->i[i] = lo + (int32_t)(rng_next(&s) % (uint64_t)(hi - lo));
    return t;
}

static const Tens *find_in(const Tens *v, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0) return &v[i];
    return NULL;
}

/* An input, or a weight as run R's checkpoint holds it, by name. */
static const Tens *tens(const Run *R, const char *name) {
    const Tens *t = find_in(R->F->in, R->F->n_in, name);
    if (!t) t = find_in(R->F->w[R->v], R->F->n_w, name);
    ck_assert_msg(t, "test bug: no tensor '%s' in family %s", name, R->F->name);
    return t;
}

/* "conv" or "conv (F16 weights)", for messages. */
static const char *run_name(const Run *R, char *buf, size_t size) {
    if (R->F->wdtype[R->v] == ST_F32) snprintf(buf, size, "%s", R->F->name);
    else snprintf(buf, size, "%s (%s weights)", R->F->name, st_dtype_name(R->F->wdtype[R->v]));
    return buf;
}

/* ---- half-precision weights ------------------------------------------------
 * A run with F16 (BF16) weights stores every checkpoint tensor in that type;
 * its reference uses exactly the stored values, decoded here independently
 * of the runtime. */

static double f16_value(uint16_t h) {
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
    return h & 0x8000 ? -v : v;
}

static float bf16_value(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* dst = src stored as dtype (bits, for the checkpoint) and as read back. */
static void round_weights(const Tens *src, StDtype dtype, Tens *dst, uint16_t *bits) {
    tens_init(dst, src->name, 0, src->ndim, src->shape);
    for (int64_t i = 0; i < src->n; i++) {
        bits[i] = dtype == ST_F16 ? st_f32_to_f16(src->f[i]) : st_f32_to_bf16(src->f[i]);
        dst->f[i] = dtype == ST_F16 ? (float)f16_value(bits[i]) : bf16_value(bits[i]);
    }
}

/* ------------------------------------------------------------------------
 * running the compiler and the runner
 * ------------------------------------------------------------------------ */

/* Run a shell command with stdout and stderr into `log`; its exit status,
 * or 128 + signal. */
static int run_logged(const char *log, const char *fmt, ...) LDM_PRINTF(2, 3);
static int run_logged(const char *log, const char *fmt, ...) {
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= sizeof cmd - 300) return -1;
    snprintf(cmd + k, sizeof cmd - (size_t)k, " >'%.250s' 2>&1", log);
    int st = system(cmd);
    if (st == -1) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* The start of a log file ("" if unreadable), at most `size - 1` bytes,
 * cut at a line end when long. */
static void read_log(const char *path, char *buf, size_t size) {
    size_t n = 0;
    char *s = ldm_read_file(path, &n);
    snprintf(buf, size, "%s", s ? s : "");
    free(s);
    char *cut = strlen(buf) + 1 >= size ? strrchr(buf, '\n') : NULL;
    if (cut) snprintf(cut, size - (size_t)(cut - buf), "\n[...]");
}

/* Write tensors; float ones as `fdtype` (ST_F32, ST_F16, ST_BF16), with
 * `bits` holding their 16-bit encodings (one array per tensor). */
static int write_st(const Tens *v, int n, const char *path, StDtype fdtype, uint16_t *const *bits) {
    StWriter *w = st_writer_new();
    for (int i = 0; i < n; i++) {
        if (v[i].i32) st_writer_add(w, v[i].name, ST_I32, v[i].ndim, v[i].shape, v[i].i);
        else if (fdtype == ST_F32) st_writer_add(w, v[i].name, ST_F32, v[i].ndim, v[i].shape, v[i].f);
        else st_writer_add(w, v[i].name, fdtype, v[i].ndim, v[i].shape, bits[i]);
    }
    int rc = st_writer_save(w, path);
    st_writer_free(w);
    return rc;
}

static int load_outputs(Tens *out, int *n_out, const char *path) {
    StFile f = {0};
    if (st_open(&f, path) != 0) return -1;
    int rc = 0;
    for (int k = 0; k < f.n_tensors && rc == 0; k++) {
        const StTensor *s = &f.tensors[k];
        if (*n_out == MAXT || s->ndim > MAXD) {
            rc = ldm_fail("%s: too many outputs or dimensions", path);
            break;
        }
        Tens *t = &out[(*n_out)++];
        tens_init(t, s->name, s->dtype == ST_I32, s->ndim, s->shape);
        rc = t->i32 ? st_to_i32(s, t->i) : st_to_f32(s, t->f);
    }
    st_close(&f);
    return rc;
}

/* The weights of run v: rounded copies in F->w[v], the checkpoint at path. */
static int write_weights(Family *F, int v, const char *path) {
    StDtype dt = F->wdtype[v];
    uint16_t *bits[MAXT] = {0};
    for (int i = 0; i < F->n_w; i++) {
        if (dt == ST_F32) continue;
        bits[i] = ldm_xcalloc((size_t)F->w[0][i].n + 1, sizeof **bits);
        round_weights(&F->w[0][i], dt, &F->w[v][i], bits[i]);
    }
    int rc = write_st(F->w[dt == ST_F32 ? 0 : v], F->n_w, path, dt, bits);
    for (int i = 0; i < F->n_w; i++) free(bits[i]);
    return rc;
}

/* Fixture: compile tests/ops/<name>.graph, write the data, run once per
 * checkpoint dtype, load the outputs. On failure F->ok stays 0 and F->msg
 * says why (every test of the family reports it). */
static void family_setup(Family *F) {
    char log[256], path_w[256], path_in[256], path_out[256], text[900];
    F->ok = 0;
    F->n_in = F->n_w = 0;
    memset(F->n_out, 0, sizeof F->n_out);
    F->make(F);
    snprintf(F->dir, sizeof F->dir, "/tmp/ldm_ops_%s_XXXXXX", F->name);
    if (!mkdtemp(F->dir)) {
        F->dir[0] = 0;
        snprintf(F->msg, sizeof F->msg, "cannot create a scratch directory");
        return;
    }
    const char *build = test_build_dir();
    char ldmc[256];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", build);
    if (access(ldmc, X_OK) != 0) {
        snprintf(F->msg, sizeof F->msg, "%s not found: build it first (make BUILD=%s %s)", ldmc, build, ldmc);
        return;
    }
    snprintf(F->runner, sizeof F->runner, "%s/%s", F->dir, F->name);
    snprintf(log, sizeof log, "%s/ldmc.log", F->dir);
    int rc = run_logged(log, "'%s' tests/ops/%s.graph -o '%s'", ldmc, F->name, F->runner);
    if (rc != 0) {
        read_log(log, text, sizeof text);
        snprintf(F->msg, sizeof F->msg, "ldmc tests/ops/%s.graph -o RUNNER failed (status %d):\n%s", F->name, rc, text);
        return;
    }
    snprintf(path_in, sizeof path_in, "%s/inputs.safetensors", F->dir);
    if (write_st(F->in, F->n_in, path_in, ST_F32, NULL) != 0) {
        snprintf(F->msg, sizeof F->msg, "writing the test inputs: %s", ldm_last_error());
        return;
    }
    for (int v = 0; v < F->n_var; v++) {
        const char *dt = st_dtype_name(F->wdtype[v]);
        snprintf(path_w, sizeof path_w, "%s/weights_%s.safetensors", F->dir, dt);
        snprintf(path_out, sizeof path_out, "%s/outputs_%s.safetensors", F->dir, dt);
        snprintf(log, sizeof log, "%s/run_%s.log", F->dir, dt);
        if (write_weights(F, v, path_w) != 0) {
            snprintf(F->msg, sizeof F->msg, "writing the test weights: %s", ldm_last_error());
            return;
        }
        rc = run_logged(log, "'%s' --weights '%s' --inputs '%s' --outputs '%s'", F->runner, path_w, path_in, path_out);
        if (rc != 0) {
            read_log(log, text, sizeof text);
            snprintf(F->msg, sizeof F->msg, "the runner of tests/ops/%s.graph failed with %s weights (status %d):\n%s",
                     F->name, dt, rc, text);
            return;
        }
        if (load_outputs(F->out[v], &F->n_out[v], path_out) != 0) {
            snprintf(F->msg, sizeof F->msg, "reading the outputs of tests/ops/%s.graph: %s", F->name, ldm_last_error());
            return;
        }
    }
    F->ok = 1;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void family_teardown(Family *F) {
    for (int i = 0; i < F->n_in; i++) tens_free(&F->in[i]);
    for (int v = 0; v < MAXV; v++) {
        for (int i = 0; i < F->n_w; i++) tens_free(&F->w[v][i]);
        for (int i = 0; i < F->n_out[v]; i++) tens_free(&F->out[v][i]);
        F->n_out[v] = 0;
    }
    F->n_in = F->n_w = 0;
    if (F->dir[0]) nftw(F->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    F->dir[0] = 0;
}

/* Run v of F, once its fixture succeeded. */
static Run ready(const Family *F, int v) {
    ck_assert_msg(F->ok, "%s", F->msg);
    ck_assert_msg(v >= 0 && v < F->n_var, "test bug: run %d of %s", v, F->name);
    return (Run){F, v};
}

/* ------------------------------------------------------------------------
 * references and comparison
 * ------------------------------------------------------------------------ */

/* Expected values of one output: ref[i] and the magnitude mag[i] its
 * tolerance is relative to (see the file comment). */
typedef struct Ref {
    int ndim;
    int64_t shape[MAXD];
    int64_t n;
    double *v;               /* (n) expected value */
    double *mag;             /* (n) magnitude of the terms */
} Ref;

static void ref_init(Ref *r, int ndim, const int64_t *shape) {
    r->ndim = ndim;
    r->n = 1;
    for (int d = 0; d < ndim; d++) {
        r->shape[d] = shape[d];
        r->n *= shape[d];
    }
    r->v = ldm_xcalloc((size_t)r->n, sizeof *r->v);
    r->mag = ldm_xcalloc((size_t)r->n, sizeof *r->mag);
}

static void ref_free(Ref *r) {
    free(r->v);
    free(r->mag);
    r->v = r->mag = NULL;
}

/* A float32 tensor holding the reference values (an intermediate result
 * fed to the next reference step, rounded like the graph's value). */
static void tens_of_ref(const Ref *r, Tens *t) {
    tens_init(t, "ref", 0, r->ndim, r->shape);
    for (int64_t i = 0; i < r->n; i++) t->f[i] = (float)r->v[i];
}

static void unravel(int64_t i, int ndim, const int64_t *shape, int64_t *idx) {
    for (int d = ndim - 1; d >= 0; d--) {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
}

static int64_t ravel(int ndim, const int64_t *shape, const int64_t *idx) {
    int64_t i = 0;
    for (int d = 0; d < ndim; d++) i = i * shape[d] + idx[d];
    return i;
}

static const char *shape_txt(int ndim, const int64_t *shape, char *buf, size_t size) {
    size_t k = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < ndim && k < size; d++) k += (size_t)snprintf(buf + k, size - k, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (k < size) snprintf(buf + k, size - k, "]");
    return buf;
}

/* The runner's output `name` in run R, checked to have the reference's
 * dtype and shape. */
static const Tens *output(const Run *R, const char *name, const Ref *r, int i32) {
    const Tens *t = find_in(R->F->out[R->v], R->F->n_out[R->v], name);
    char b0[96], b1[96], b2[96];
    run_name(R, b0, sizeof b0);
    ck_assert_msg(t, "%s: the runner wrote no output '%s'", b0, name);
    ck_assert_msg(t->i32 == i32, "%s: output %s is %s, expected %s", b0, name, t->i32 ? "I32" : "F32", i32 ? "I32" : "F32");
    int same = t->ndim == r->ndim;
    for (int d = 0; same && d < r->ndim; d++) same = t->shape[d] == r->shape[d];
    ck_assert_msg(same, "%s: output %s has shape %s, expected %s", b0, name, shape_txt(t->ndim, t->shape, b1, sizeof b1),
                  shape_txt(r->ndim, r->shape, b2, sizeof b2));
    return t;
}

/* Output `name` within TOL * (|ref| + mag) of the reference, elementwise. */
static void expect_close(const Run *R, const char *name, const Ref *r) {
    const Tens *t = output(R, name, r, 0);
    int64_t bad = 0, first = -1, worst = 0;
    double worst_ratio = 0;
    for (int64_t i = 0; i < r->n; i++) {
        double got = t->f[i], want = r->v[i], lim = TOL * (fabs(want) + r->mag[i]);
        double err = fabs(got - want);
        if (!(err <= lim)) {
            if (first < 0) first = i;
            bad++;
            double ratio = lim > 0 ? err / lim : INFINITY;
            if (!(ratio <= worst_ratio)) {
                worst_ratio = ratio;
                worst = i;
            }
        }
    }
    if (bad) {
        int64_t idx[MAXD];
        char b0[96], b1[96], b2[96];
        unravel(worst, r->ndim, r->shape, idx);
        ck_abort_msg("%s: output %s %s: %lld of %lld elements off; worst at %s: got %.9g, expected %.9g "
                     "(allowed %.3g, error %.3g); first bad flat index %lld",
                     run_name(R, b0, sizeof b0), name, shape_txt(r->ndim, r->shape, b1, sizeof b1), (long long)bad,
                     (long long)r->n, shape_txt(r->ndim, idx, b2, sizeof b2), (double)t->f[worst], r->v[worst],
                     TOL * (fabs(r->v[worst]) + r->mag[worst]), fabs(t->f[worst] - r->v[worst]), (long long)first);
    }
}

/* Output `name` equal to the reference exactly (copies, indices). */
static void expect_exact(const Run *R, const char *name, const Ref *r, int i32) {
    const Tens *t = output(R, name, r, i32);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < r->n; i++) {
        int eq = i32 ? t->i[i] == (int32_t)r->v[i] : t->f[i] == (float)r->v[i];
        if (!eq) {
            if (first < 0) first = i;
            bad++;
        }
    }
    if (bad) {
        int64_t idx[MAXD];
        char b0[96], b1[96], b2[96];
        unravel(first, r->ndim, r->shape, idx);
        ck_abort_msg("%s: output %s %s: %lld of %lld elements differ; first at %s: got %.9g, expected %.9g",
                     run_name(R, b0, sizeof b0), name, shape_txt(r->ndim, r->shape, b1, sizeof b1), (long long)bad,
                     (long long)r->n, shape_txt(r->ndim, idx, b2, sizeof b2),
                     i32 ? (double)t->i[first] : (double)t->f[first], r->v[first]);
    }
}

/* ---- naive references ---------------------------------------------------- */

/* conv2d (cross-correlation, zero padding), PyTorch's output size:
 * y[n,o,i,j] = b[o] + sum_{c,ky,kx} x[n,c,i*s-pt+ky,j*s-pl+kx] w[o,c,ky,kx].
 * mag = |b| + sum |x w|. */
static void ref_conv2d(const Tens *x, const Tens *w, const Tens *b, int stride, int pt, int pb, int pl, int pr, Ref *r) {
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t O = w->shape[0], KH = w->shape[2], KW = w->shape[3];
    int64_t HO = (H + pt + pb - KH) / stride + 1, WO = (W + pl + pr - KW) / stride + 1;
    ref_init(r, 4, (int64_t[]){N, O, HO, WO});
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < HO; i++)
                for (int64_t j = 0; j < WO; j++) {
                    double s = b ? b->f[o] : 0.0, m = b ? fabs(b->f[o]) : 0.0;
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t ky = 0; ky < KH; ky++)
                            for (int64_t kx = 0; kx < KW; kx++) {
                                int64_t iy = i * stride - pt + ky, ix = j * stride - pl + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                double p = (double)x->f[((n * C + c) * H + iy) * W + ix] * w->f[((o * C + c) * KH + ky) * KW + kx];
                                s += p;
                                m += fabs(p);
                            }
                    int64_t k = ((n * O + o) * HO + i) * WO + j;
                    r->v[k] = s;
                    r->mag[k] = m;
                }
}

/* linear: y[..., o] = b[o] + sum_i x[..., i] w[o, i]; mag = |b| + sum |x w|. */
static void ref_linear(const Tens *x, const Tens *w, const Tens *b, Ref *r) {
    int64_t I = w->shape[1], O = w->shape[0], M = x->n / I;
    int64_t shape[MAXD];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = O;
    ref_init(r, x->ndim, shape);
    for (int64_t m = 0; m < M; m++)
        for (int64_t o = 0; o < O; o++) {
            double s = b ? b->f[o] : 0.0, g = b ? fabs(b->f[o]) : 0.0;
            for (int64_t i = 0; i < I; i++) {
                double p = (double)x->f[m * I + i] * w->f[o * I + i];
                s += p;
                g += fabs(p);
            }
            r->v[m * O + o] = s;
            r->mag[m * O + o] = g;
        }
}

/* matmul over the last two dims, batch dims equal:
 * y[.., m, n] = sum_k a[.., m, k] * (trans_b ? b[.., n, k] : b[.., k, n]). */
static void ref_matmul(const Tens *a, const Tens *b, int trans_b, Ref *r) {
    int d = a->ndim;
    int64_t M = a->shape[d - 2], K = a->shape[d - 1], N = trans_b ? b->shape[d - 2] : b->shape[d - 1];
    int64_t shape[MAXD];
    memcpy(shape, a->shape, sizeof shape);
    shape[d - 1] = N;
    ref_init(r, d, shape);
    int64_t batches = a->n / (M * K);
    for (int64_t t = 0; t < batches; t++)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double s = 0, g = 0;
                for (int64_t k = 0; k < K; k++) {
                    double bv = trans_b ? b->f[(t * N + n) * K + k] : b->f[(t * K + k) * N + n];
                    double p = a->f[(t * M + m) * K + k] * bv;
                    s += p;
                    g += fabs(p);
                }
                r->v[(t * M + m) * N + n] = s;
                r->mag[(t * M + m) * N + n] = g;
            }
}

/* (x - mean) / sqrt(var + eps) * w + b over `count` contiguous values of x
 * (biased variance); value k has channel ch_base + (k / ch_div) % ch_mod. */
static void norm_block(const float *x, int64_t count, double eps, const float *w, const float *b, int64_t ch_div,
                       int64_t ch_base, int64_t ch_mod, double *v, double *mag) {
    double mean = 0, var = 0;
    for (int64_t k = 0; k < count; k++) mean += x[k];
    mean /= (double)count;
    for (int64_t k = 0; k < count; k++) var += (x[k] - mean) * (x[k] - mean);
    var /= (double)count;
    double rstd = 1.0 / sqrt(var + eps);
    for (int64_t k = 0; k < count; k++) {
        int64_t c = ch_base + (k / ch_div) % ch_mod;
        v[k] = (x[k] - mean) * rstd * w[c] + b[c];
        /* the terms: |x| and |mean| scaled by rstd |w|, and |b| */
        mag[k] = (fabs(x[k]) + fabs(mean)) * rstd * fabs(w[c]) + fabs(b[c]);
    }
}

/* GroupNorm over [C/groups, spatial...] per sample. */
static void ref_group_norm(const Tens *x, const Tens *w, const Tens *b, int groups, double eps, Ref *r) {
    int64_t N = x->shape[0], C = x->shape[1], S = x->n / (N * C), CG = C / groups;
    ref_init(r, x->ndim, x->shape);
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < groups; g++) {
            int64_t base = (n * C + g * CG) * S;
            norm_block(x->f + base, CG * S, eps, w->f, b->f, S, g * CG, CG, r->v + base, r->mag + base);
        }
}

/* LayerNorm over the last dim. */
static void ref_layer_norm(const Tens *x, const Tens *w, const Tens *b, double eps, Ref *r) {
    int64_t D = x->shape[x->ndim - 1], M = x->n / D;
    ref_init(r, x->ndim, x->shape);
    for (int64_t m = 0; m < M; m++) norm_block(x->f + m * D, D, eps, w->f, b->f, 1, 0, D, r->v + m * D, r->mag + m * D);
}

static double gelu_d(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }
static double sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }

enum { U_SILU, U_GELU, U_QUICK_GELU, U_SIGMOID, U_RELU, U_TANH };

static double unary_d(int op, double x) {
    switch (op) {
    case U_SILU: return x * sigmoid_d(x);
    case U_GELU: return gelu_d(x);
    case U_QUICK_GELU: return x * sigmoid_d(1.702 * x);
    case U_RELU: return x > 0 ? x : 0;
    case U_TANH: return tanh(x);
    default: return sigmoid_d(x);
    }
}

/* y = f(x) elementwise; mag = |x| (float32 evaluation of f at x). */
static void ref_unary(const Tens *x, int op, Ref *r) {
    ref_init(r, x->ndim, x->shape);
    for (int64_t i = 0; i < x->n; i++) {
        r->v[i] = unary_d(op, x->f[i]);
        r->mag[i] = fabs(x->f[i]);
    }
}

/* geglu: [..., 2D] -> a * gelu(g), a the first D, g the last D; mag = |a| |g|. */
static void ref_geglu(const Tens *x, Ref *r) {
    int64_t D2 = x->shape[x->ndim - 1], D = D2 / 2, M = x->n / D2;
    int64_t shape[MAXD];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = D;
    ref_init(r, x->ndim, shape);
    for (int64_t m = 0; m < M; m++)
        for (int64_t d = 0; d < D; d++) {
            double a = x->f[m * D2 + d], g = x->f[m * D2 + D + d];
            r->v[m * D + d] = a * gelu_d(g);
            r->mag[m * D + d] = fabs(a) * fabs(g);
        }
}

/* softmax over the last dim (relative tolerance: mag = 0). */
static void ref_softmax(const Tens *x, Ref *r) {
    int64_t D = x->shape[x->ndim - 1], M = x->n / D;
    ref_init(r, x->ndim, x->shape);
    for (int64_t m = 0; m < M; m++) {
        double mx = -INFINITY, sum = 0;
        for (int64_t d = 0; d < D; d++) mx = fmax(mx, x->f[m * D + d]);
        for (int64_t d = 0; d < D; d++) sum += exp(x->f[m * D + d] - mx);
        for (int64_t d = 0; d < D; d++) r->v[m * D + d] = exp(x->f[m * D + d] - mx) / sum;
    }
}

/* attention, heads = contiguous channel chunks of q/k (width d) and v (dv):
 * y[b,i,h*dv+e] = sum_j p_j v[b,j,h*dv+e], p = softmax_j(scale q_i.k_j),
 * keys j > i dropped when causal. mag = sum_j p_j |v_j|. */
static void ref_attention(const Tens *q, const Tens *k, const Tens *v, int heads, double scale, int causal, Ref *r) {
    int64_t B = q->shape[0], Tq = q->shape[1], Tk = k->shape[1], C = q->shape[2], Cv = v->shape[2];
    int64_t d = C / heads, dv = Cv / heads;
    ref_init(r, 3, (int64_t[]){B, Tq, Cv});
    double *p = ldm_xcalloc((size_t)Tk, sizeof *p);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t i = 0; i < Tq; i++) {
                int64_t nk = causal ? i + 1 : Tk;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < nk; j++) {
                    double s = 0;
                    for (int64_t c = 0; c < d; c++)
                        s += (double)q->f[(b * Tq + i) * C + h * d + c] * k->f[(b * Tk + j) * C + h * d + c];
                    p[j] = s * scale;
                    mx = fmax(mx, p[j]);
                }
                for (int64_t j = 0; j < nk; j++) sum += (p[j] = exp(p[j] - mx));
                for (int64_t e = 0; e < dv; e++) {
                    double y = 0, m = 0;
                    for (int64_t j = 0; j < nk; j++) {
                        double vv = v->f[(b * Tk + j) * Cv + h * dv + e];
                        y += p[j] / sum * vv;
                        m += p[j] / sum * fabs(vv);
                    }
                    r->v[(b * Tq + i) * Cv + h * dv + e] = y;
                    r->mag[(b * Tq + i) * Cv + h * dv + e] = m;
                }
            }
    free(p);
}

/* numpy broadcasting of a op b (op '+', '-', '*'); mag = |a| + |b| for +/-
 * (0 for *: the product is correctly rounded). */
static void ref_binary(const Tens *a, const Tens *b, int op, Ref *r) {
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t shape[MAXD], idx[MAXD];
    for (int d = 0; d < nd; d++) {
        int ia = d - (nd - a->ndim), ib = d - (nd - b->ndim);
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        shape[d] = da > db ? da : db;
    }
    ref_init(r, nd, shape);
    for (int64_t i = 0; i < r->n; i++) {
        unravel(i, nd, shape, idx);
        int64_t ka = 0, kb = 0;
        for (int d = 0; d < a->ndim; d++) ka = ka * a->shape[d] + (a->shape[d] == 1 ? 0 : idx[d + nd - a->ndim]);
        for (int d = 0; d < b->ndim; d++) kb = kb * b->shape[d] + (b->shape[d] == 1 ? 0 : idx[d + nd - b->ndim]);
        double x = a->f[ka], y = b->f[kb];
        r->v[i] = op == '+' ? x + y : op == '-' ? x - y : x * y;
        r->mag[i] = op == '*' ? 0.0 : fabs(x) + fabs(y);
    }
}

/* copies of (possibly i32) values of x into r->v */
static double val(const Tens *x, int64_t i) { return x->i32 ? (double)x->i[i] : (double)x->f[i]; }

/* nearest-neighbour upsampling: y[n,c,i,j] = x[n,c,i/f,j/f]. */
static void ref_upsample(const Tens *x, int f, Ref *r) {
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    ref_init(r, 4, (int64_t[]){N, C, H * f, W * f});
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < H * f; i++)
                for (int64_t j = 0; j < W * f; j++)
                    r->v[((n * C + c) * H * f + i) * W * f + j] = x->f[((n * C + c) * H + i / f) * W + j / f];
}

/* average pooling over k x k windows with stride k (floor): y = mean of the window. */
static void ref_avgpool(const Tens *x, int k, Ref *r) {
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3], HO = H / k, WO = W / k;
    ref_init(r, 4, (int64_t[]){N, C, HO, WO});
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < HO; i++)
                for (int64_t j = 0; j < WO; j++) {
                    double sum = 0, mag = 0;
                    for (int dy = 0; dy < k; dy++)
                        for (int dx = 0; dx < k; dx++) {
                            double v = x->f[((n * C + c) * H + i * k + dy) * W + j * k + dx];
                            sum += v;
                            mag += fabs(v);
                        }
                    int64_t o = ((n * C + c) * HO + i) * WO + j;
                    r->v[o] = sum / (k * k);
                    r->mag[o] = mag / (k * k);
                }
}

/* concatenation of xs[0..n) along axis. */
static void ref_concat(const Tens *const *xs, int n, int axis, Ref *r) {
    int64_t shape[MAXD], idx[MAXD];
    memcpy(shape, xs[0]->shape, sizeof shape);
    shape[axis] = 0;
    for (int s = 0; s < n; s++) shape[axis] += xs[s]->shape[axis];
    ref_init(r, xs[0]->ndim, shape);
    for (int64_t i = 0; i < r->n; i++) {
        unravel(i, r->ndim, shape, idx);
        int s = 0;
        while (idx[axis] >= xs[s]->shape[axis]) idx[axis] -= xs[s++]->shape[axis];
        r->v[i] = val(xs[s], ravel(r->ndim, xs[s]->shape, idx));
    }
}

/* y[i_0, .., i_r] = x[j] with j[perm[d]] = i_d. */
static void ref_permute(const Tens *x, const int *perm, Ref *r) {
    int64_t shape[MAXD], idx[MAXD], src[MAXD];
    for (int d = 0; d < x->ndim; d++) shape[d] = x->shape[perm[d]];
    ref_init(r, x->ndim, shape);
    for (int64_t i = 0; i < r->n; i++) {
        unravel(i, x->ndim, shape, idx);
        for (int d = 0; d < x->ndim; d++) src[perm[d]] = idx[d];
        r->v[i] = val(x, ravel(x->ndim, x->shape, src));
    }
}

/* [start, end) along axis. */
static void ref_slice(const Tens *x, int axis, int64_t start, int64_t end, Ref *r) {
    int64_t shape[MAXD], idx[MAXD];
    memcpy(shape, x->shape, sizeof shape);
    shape[axis] = end - start;
    ref_init(r, x->ndim, shape);
    for (int64_t i = 0; i < r->n; i++) {
        unravel(i, x->ndim, shape, idx);
        idx[axis] += start;
        r->v[i] = val(x, ravel(x->ndim, x->shape, idx));
    }
}

/* the same data under a new shape */
static void ref_reshape(const Tens *x, int ndim, const int64_t *shape, Ref *r) {
    ref_init(r, ndim, shape);
    ck_assert_int_eq(r->n, x->n);
    for (int64_t i = 0; i < r->n; i++) r->v[i] = val(x, i);
}

/* openaimodel.timestep_embedding, float32 as in PyTorch: half = dim // 2,
 * f_i = exp(-ln(max_period) * i / half), args = t * f in float32,
 * [cos(args), sin(args)], a zero column last when dim is odd. The float32
 * steps are mirrored (rounding after each); what is left is libm's expf/cosf
 * error, which moves the argument by an ulp or two: mag allows 2 ulp of the
 * argument (as an absolute error) besides TOL. */
static void ref_timestep(const Tens *t, int dim, double max_period, Ref *r) {
    int64_t B = t->n, half = dim / 2;
    ref_init(r, 2, (int64_t[]){B, dim});
    float c = (float)-log(max_period);
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < half; i++) {
            float e = (float)((double)c * (double)i);
            e = (float)((double)e / (double)half);
            float freq = (float)exp((double)e);
            float arg = (float)((double)t->f[b] * (double)freq);
            double ulp = (double)nextafterf(fabsf(arg), INFINITY) - (double)fabsf(arg);
            double slack = 1.0 + 2.0 * ulp / TOL;
            r->v[b * dim + i] = cos((double)arg);
            r->v[b * dim + half + i] = sin((double)arg);
            r->mag[b * dim + i] = r->mag[b * dim + half + i] = slack;
        }
        if (dim % 2) r->v[b * dim + dim - 1] = 0.0;
    }
}

/* index of the nearest codebook row (squared L2, exact in double for the
 * test data), the first one on ties. */
static int nearest_code(const Tens *z, const Tens *cb, int64_t b, int64_t p, double *dmin) {
    int64_t C = z->shape[1], S = z->shape[2] * z->shape[3], K = cb->shape[0];
    int arg = -1;
    double best = INFINITY;
    for (int64_t j = 0; j < K; j++) {
        double dd = 0;
        for (int64_t c = 0; c < C; c++) {
            double diff = (double)z->f[(b * C + c) * S + p] - cb->f[j * C + c];
            dd += diff * diff;
        }
        if (dd < best) {
            best = dd;
            arg = (int)j;
        }
    }
    if (dmin) *dmin = best;
    return arg;
}

static void ref_vq_index(const Tens *z, const Tens *cb, Ref *r) {
    int64_t B = z->shape[0], S = z->shape[2] * z->shape[3];
    ref_init(r, 3, (int64_t[]){B, z->shape[2], z->shape[3]});
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < S; p++) r->v[b * S + p] = nearest_code(z, cb, b, p, NULL);
}

/* y[b, c, p] = cb[idx[b, p], c] */
static void ref_vq_lookup(const Tens *cb, const int32_t *idx, int64_t B, int64_t H, int64_t W, Ref *r) {
    int64_t C = cb->shape[1], S = H * W;
    ref_init(r, 4, (int64_t[]){B, C, H, W});
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < S; p++)
            for (int64_t c = 0; c < C; c++) r->v[(b * C + c) * S + p] = cb->f[(int64_t)idx[b * S + p] * C + c];
}

/* ------------------------------------------------------------------------
 * conv2d
 * ------------------------------------------------------------------------ */

static void make_conv(Family *F) {
    add_f32(F, T_INPUT, "x", -1, 1, SHAPE(2, 6, 7, 5));
    add_f32(F, T_INPUT, "xl", -1, 1, SHAPE(2, 32, 97, 83));
    add_f32(F, T_INPUT, "xw", -1, 1, SHAPE(2, 16, 15, 13));
    add_f32(F, T_WEIGHT, "c3.weight", -0.5, 0.5, SHAPE(4, 6, 3, 3));
    add_f32(F, T_WEIGHT, "c3.bias", -0.5, 0.5, SHAPE(4));
    add_f32(F, T_WEIGHT, "c3nb.weight", -0.5, 0.5, SHAPE(4, 6, 3, 3));
    add_f32(F, T_WEIGHT, "c3s2.weight", -0.5, 0.5, SHAPE(3, 6, 3, 3));
    add_f32(F, T_WEIGHT, "c3s2.bias", -0.5, 0.5, SHAPE(3));
    add_f32(F, T_WEIGHT, "c3s2p1.weight", -0.5, 0.5, SHAPE(3, 6, 3, 3));
    add_f32(F, T_WEIGHT, "c3s2p1.bias", -0.5, 0.5, SHAPE(3));
    add_f32(F, T_WEIGHT, "casym.weight", -0.5, 0.5, SHAPE(3, 6, 3, 2));
    add_f32(F, T_WEIGHT, "casym.bias", -0.5, 0.5, SHAPE(3));
    add_f32(F, T_WEIGHT, "c1.weight", -0.5, 0.5, SHAPE(5, 6, 1, 1));
    add_f32(F, T_WEIGHT, "c1.bias", -0.5, 0.5, SHAPE(5));
    add_f32(F, T_WEIGHT, "c1nb.weight", -0.5, 0.5, SHAPE(5, 6, 1, 1));
    add_f32(F, T_WEIGHT, "c1s2.weight", -0.5, 0.5, SHAPE(5, 6, 1, 1));
    add_f32(F, T_WEIGHT, "c1s2.bias", -0.5, 0.5, SHAPE(5));
    add_f32(F, T_WEIGHT, "cl.weight", -0.2, 0.2, SHAPE(5, 32, 3, 3));
    add_f32(F, T_WEIGHT, "cl.bias", -0.5, 0.5, SHAPE(5));
    add_f32(F, T_WEIGHT, "cw.weight", -0.3, 0.3, SHAPE(17, 16, 3, 3));
    add_f32(F, T_WEIGHT, "cw.bias", -0.5, 0.5, SHAPE(17));
}

static Family conv = {.name = "conv", .make = make_conv, .n_var = 3, .wdtype = {ST_F32, ST_F16, ST_BF16}};
static void conv_setup(void) { family_setup(&conv); }
static void conv_teardown(void) { family_teardown(&conv); }

/* conv `name` of x with weights "<name>.weight" / "<name>.bias" */
static void check_conv(int v, const char *name, const char *xname, int has_bias, int stride, int pt, int pb, int pl, int pr) {
    Run R = ready(&conv, v);
    char wn[64], bn[64];
    snprintf(wn, sizeof wn, "%s.weight", name);
    snprintf(bn, sizeof bn, "%s.bias", name);
    Ref r;
    ref_conv2d(tens(&R, xname), tens(&R, wn), has_bias ? tens(&R, bn) : NULL, stride, pt, pb, pl, pr, &r);
    expect_close(&R, name, &r);
    ref_free(&r);
}

START_TEST(test_conv_3x3_pad1) { check_conv(_i, "c3", "x", 1, 1, 1, 1, 1, 1); }
END_TEST

START_TEST(test_conv_3x3_nopad_nobias) { check_conv(_i, "c3nb", "x", 0, 1, 0, 0, 0, 0); }
END_TEST

START_TEST(test_conv_stride2_asymmetric_pad) { check_conv(_i, "c3s2", "x", 1, 2, 0, 1, 0, 1); }
END_TEST

START_TEST(test_conv_stride2_pad1) { check_conv(_i, "c3s2p1", "x", 1, 2, 1, 1, 1, 1); }
END_TEST

START_TEST(test_conv_3x2_kernel_pad_tblr) { check_conv(_i, "casym", "x", 1, 1, 1, 2, 0, 3); }
END_TEST

START_TEST(test_conv_1x1) { check_conv(_i, "c1", "x", 1, 1, 0, 0, 0, 0); }
END_TEST

START_TEST(test_conv_1x1_nobias) { check_conv(_i, "c1nb", "x", 0, 1, 0, 0, 0, 0); }
END_TEST

START_TEST(test_conv_1x1_stride2) { check_conv(_i, "c1s2", "x", 1, 2, 0, 0, 0, 0); }
END_TEST

START_TEST(test_conv_large_tiled) { check_conv(_i, "cl", "xl", 1, 1, 1, 1, 1, 1); }
END_TEST

START_TEST(test_conv_3x3_16_channels) { check_conv(_i, "cw", "xw", 1, 1, 1, 1, 1, 1); }
END_TEST

/* ------------------------------------------------------------------------
 * linear, matmul
 * ------------------------------------------------------------------------ */

static void make_matmul(Family *F) {
    add_f32(F, T_INPUT, "x3", -1, 1, SHAPE(2, 7, 6));
    add_f32(F, T_INPUT, "x2", -1, 1, SHAPE(3, 6));
    add_f32(F, T_INPUT, "x4", -1, 1, SHAPE(2, 3, 7, 6));
    add_f32(F, T_INPUT, "a", -1, 1, SHAPE(2, 7, 4));
    add_f32(F, T_INPUT, "b", -1, 1, SHAPE(2, 4, 5));
    add_f32(F, T_INPUT, "bt", -1, 1, SHAPE(2, 5, 4));
    add_f32(F, T_INPUT, "a4", -1, 1, SHAPE(2, 3, 7, 4));
    add_f32(F, T_INPUT, "b4", -1, 1, SHAPE(2, 3, 4, 5));
    add_f32(F, T_INPUT, "a2", -1, 1, SHAPE(7, 4));
    add_f32(F, T_INPUT, "b2t", -1, 1, SHAPE(5, 4));
    add_f32(F, T_INPUT, "xb", -1, 1, SHAPE(2, 301, 40));
    add_f32(F, T_INPUT, "xt", -3e4, 3e4, SHAPE(2, 7, 20));
    add_f32(F, T_WEIGHT, "lin.weight", -0.5, 0.5, SHAPE(5, 6));
    add_f32(F, T_WEIGHT, "lin.bias", -0.5, 0.5, SHAPE(5));
    add_f32(F, T_WEIGHT, "lin_nb.weight", -0.5, 0.5, SHAPE(5, 6));
    add_f32(F, T_WEIGHT, "lin2.weight", -0.5, 0.5, SHAPE(9, 6));
    add_f32(F, T_WEIGHT, "lin2.bias", -0.5, 0.5, SHAPE(9));
    add_f32(F, T_WEIGHT, "lin4.weight", -0.5, 0.5, SHAPE(5, 6));
    add_f32(F, T_WEIGHT, "lin_big.weight", -0.3, 0.3, SHAPE(67, 40));
    add_f32(F, T_WEIGHT, "lin_big.bias", -0.5, 0.5, SHAPE(67));
    /* below 2^-14: subnormal as F16 */
    add_f32(F, T_WEIGHT, "lin_tiny.weight", -6e-5, 6e-5, SHAPE(3, 20));
}

static Family mm = {.name = "matmul", .make = make_matmul, .n_var = 3, .wdtype = {ST_F32, ST_F16, ST_BF16}};
static void mm_setup(void) { family_setup(&mm); }
static void mm_teardown(void) { family_teardown(&mm); }

static void check_linear(int v, const char *name, const char *xname, int has_bias) {
    Run R = ready(&mm, v);
    char wn[64], bn[64];
    snprintf(wn, sizeof wn, "%s.weight", name);
    snprintf(bn, sizeof bn, "%s.bias", name);
    Ref r;
    ref_linear(tens(&R, xname), tens(&R, wn), has_bias ? tens(&R, bn) : NULL, &r);
    expect_close(&R, name, &r);
    ref_free(&r);
}

static void check_matmul(int v, const char *name, const char *a, const char *b, int trans_b) {
    Run R = ready(&mm, v);
    Ref r;
    ref_matmul(tens(&R, a), tens(&R, b), trans_b, &r);
    expect_close(&R, name, &r);
    ref_free(&r);
}

START_TEST(test_linear_bias) { check_linear(_i, "lin", "x3", 1); }
END_TEST

START_TEST(test_linear_nobias) { check_linear(_i, "lin_nb", "x3", 0); }
END_TEST

START_TEST(test_linear_rank2) { check_linear(_i, "lin2", "x2", 1); }
END_TEST

START_TEST(test_linear_rank4_nobias) { check_linear(_i, "lin4", "x4", 0); }
END_TEST

START_TEST(test_linear_large) { check_linear(_i, "lin_big", "xb", 1); }
END_TEST

START_TEST(test_linear_tiny_weights) {
    if (mm.wdtype[_i] == ST_F16) {
        /* the data must hold weights that are subnormal halfs */
        const Tens *w = find_in(mm.w[_i], mm.n_w, "lin_tiny.weight");
        int sub = 0;
        for (int64_t k = 0; w && k < w->n; k++) sub += w->f[k] != 0 && fabsf(w->f[k]) < 6.103515625e-05f;
        ck_assert_msg(sub >= 40, "test data: %d subnormal weights", sub);
    }
    check_linear(_i, "lin_tiny", "xt", 0);
}
END_TEST

START_TEST(test_matmul) { check_matmul(_i, "mm", "a", "b", 0); }
END_TEST

START_TEST(test_matmul_trans_b) { check_matmul(_i, "mm_tb", "a", "bt", 1); }
END_TEST

START_TEST(test_matmul_two_batch_dims) { check_matmul(_i, "mm4", "a4", "b4", 0); }
END_TEST

START_TEST(test_matmul_rank2_trans_b) { check_matmul(_i, "mm2_tb", "a2", "b2t", 1); }
END_TEST

/* ------------------------------------------------------------------------
 * group_norm, layer_norm
 * ------------------------------------------------------------------------ */

static void make_norm(Family *F) {
    /* inputs off zero mean so that a missing mean subtraction shows */
    add_f32(F, T_INPUT, "x", -1, 3, SHAPE(2, 6, 7, 5));
    add_f32(F, T_INPUT, "xs", -2, 1, SHAPE(2, 6, 35));
    add_f32(F, T_INPUT, "t", 0, 2, SHAPE(2, 7, 6));
    add_f32(F, T_INPUT, "t2", -3, 1, SHAPE(3, 10));
    add_f32(F, T_INPUT, "xb", 2, 5, SHAPE(2, 8, 33, 31));
    add_f32(F, T_WEIGHT, "gn_big.weight", 0.5, 1.5, SHAPE(8));
    add_f32(F, T_WEIGHT, "gn_big.bias", -0.5, 0.5, SHAPE(8));
    const char *names[] = {"gn3", "gn1", "gn6", "gn_seq", "ln"};
    char b[64];
    for (int i = 0; i < 5; i++) {
        snprintf(b, sizeof b, "%s.weight", names[i]);
        add_f32(F, T_WEIGHT, b, 0.5, 1.5, SHAPE(6));
        snprintf(b, sizeof b, "%s.bias", names[i]);
        add_f32(F, T_WEIGHT, b, -0.5, 0.5, SHAPE(6));
    }
    add_f32(F, T_WEIGHT, "ln2.weight", -1.5, 1.5, SHAPE(10));
    add_f32(F, T_WEIGHT, "ln2.bias", -0.5, 0.5, SHAPE(10));
}

static Family norm = {.name = "norm", .make = make_norm, .n_var = 1, .wdtype = {ST_F32}};
static void norm_setup(void) { family_setup(&norm); }
static void norm_teardown(void) { family_teardown(&norm); }

static void check_norm(int v, const char *name, const char *xname, int groups, double eps) {
    Run R = ready(&norm, v);
    char wn[64], bn[64];
    snprintf(wn, sizeof wn, "%s.weight", name);
    snprintf(bn, sizeof bn, "%s.bias", name);
    Ref r;
    if (groups) ref_group_norm(tens(&R, xname), tens(&R, wn), tens(&R, bn), groups, eps, &r);
    else ref_layer_norm(tens(&R, xname), tens(&R, wn), tens(&R, bn), eps, &r);
    expect_close(&R, name, &r);
    ref_free(&r);
}

START_TEST(test_group_norm_3_groups) { check_norm(_i, "gn3", "x", 3, 1e-5); }
END_TEST

START_TEST(test_group_norm_1_group_big_eps) { check_norm(_i, "gn1", "x", 1, 0.5); }
END_TEST

START_TEST(test_group_norm_group_per_channel) { check_norm(_i, "gn6", "x", 6, 1e-6); }
END_TEST

START_TEST(test_group_norm_sequence) { check_norm(_i, "gn_seq", "xs", 2, 1e-5); }
END_TEST

START_TEST(test_group_norm_big) { check_norm(_i, "gn_big", "xb", 4, 1e-5); }
END_TEST

START_TEST(test_layer_norm) { check_norm(_i, "ln", "t", 0, 1e-5); }
END_TEST

START_TEST(test_layer_norm_rank2_eps) { check_norm(_i, "ln2", "t2", 0, 0.25); }
END_TEST

/* ------------------------------------------------------------------------
 * activations, geglu, softmax
 * ------------------------------------------------------------------------ */

static void make_act(Family *F) {
    Tens *x = add_f32(F, T_INPUT, "x", -10, 10, SHAPE(2, 7, 6));
    const float special[] = {0.0f, -0.0f, 1e-3f, -1e-3f, 30.0f, -30.0f, 80.0f, -80.0f, 0.5f, -0.5f};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++) x->f[i * 7] = special[i];
    add_f32(F, T_INPUT, "g", -5, 5, SHAPE(2, 7, 12));
    Tens *s = add_f32(F, T_INPUT, "s", -6, 6, SHAPE(2, 7, 6));
    /* rows far from 0, where exp without the max subtracted overflows */
    for (int64_t m = 0; m < 14; m++)
        for (int d = 0; d < 6; d++) s->f[m * 6 + d] += (float)((m % 3) * 150 - 150);
    add_f32(F, T_INPUT, "s1", -5, 5, SHAPE(3, 1));
}

static Family act = {.name = "act", .make = make_act, .n_var = 1, .wdtype = {ST_F32}};
static void act_setup(void) { family_setup(&act); }
static void act_teardown(void) { family_teardown(&act); }

static void check_unary(int v, const char *name, int op) {
    Run R = ready(&act, v);
    Ref r;
    ref_unary(tens(&R, "x"), op, &r);
    expect_close(&R, name, &r);
    ref_free(&r);
}

START_TEST(test_silu) { check_unary(_i, "silu", U_SILU); }
END_TEST

START_TEST(test_gelu_erf) { check_unary(_i, "gelu", U_GELU); }
END_TEST

START_TEST(test_quick_gelu) { check_unary(_i, "quick_gelu", U_QUICK_GELU); }
END_TEST

START_TEST(test_sigmoid) { check_unary(_i, "sigmoid", U_SIGMOID); }
END_TEST

START_TEST(test_relu) { check_unary(_i, "relu", U_RELU); }
END_TEST

START_TEST(test_tanh) { check_unary(_i, "tanh", U_TANH); }
END_TEST

START_TEST(test_gelu_of_silu) {
    Run R = ready(&act, _i);
    const Tens *x = tens(&R, "x");
    Ref r;
    ref_init(&r, x->ndim, x->shape);
    for (int64_t i = 0; i < x->n; i++) {
        double s = unary_d(U_SILU, x->f[i]);
        r.v[i] = gelu_d(s);
        r.mag[i] = fabs(s) + fabs(x->f[i]);
    }
    expect_close(&R, "silu_gelu", &r);
    ref_free(&r);
}
END_TEST

START_TEST(test_geglu) {
    Run R = ready(&act, _i);
    Ref r;
    ref_geglu(tens(&R, "g"), &r);
    expect_close(&R, "geglu", &r);
    ref_free(&r);
}
END_TEST

START_TEST(test_softmax) {
    Run R = ready(&act, _i);
    Ref r;
    ref_softmax(tens(&R, "s"), &r);
    expect_close(&R, "softmax", &r);
    ref_free(&r);
}
END_TEST

START_TEST(test_softmax_length1) {
    Run R = ready(&act, _i);
    Ref r;
    ref_softmax(tens(&R, "s1"), &r);
    for (int64_t i = 0; i < r.n; i++) ck_assert(r.v[i] == 1.0);
    expect_close(&R, "softmax1", &r);
    ref_free(&r);
}
END_TEST

/* ------------------------------------------------------------------------
 * attention
 * ------------------------------------------------------------------------ */

static void make_attention(Family *F) {
    add_f32(F, T_INPUT, "q", -2, 2, SHAPE(2, 7, 6));
    add_f32(F, T_INPUT, "k", -2, 2, SHAPE(2, 7, 6));
    add_f32(F, T_INPUT, "v", -1, 1, SHAPE(2, 7, 6));
    add_f32(F, T_INPUT, "kc", -2, 2, SHAPE(2, 5, 6));
    add_f32(F, T_INPUT, "vc", -1, 1, SHAPE(2, 5, 9));
    add_f32(F, T_INPUT, "ql", -2, 2, SHAPE(1, 1100, 4));
    add_f32(F, T_INPUT, "kl", -2, 2, SHAPE(1, 1100, 4));
    add_f32(F, T_INPUT, "vl", -1, 1, SHAPE(1, 1100, 4));
    add_f32(F, T_INPUT, "qkv", -2, 2, SHAPE(2, 7, 18));
    add_f32(F, T_INPUT, "qx", -2, 2, SHAPE(1, 130, 8));
    add_f32(F, T_INPUT, "kx", -2, 2, SHAPE(1, 777, 8));
    add_f32(F, T_INPUT, "vx", -1, 1, SHAPE(1, 777, 12));
}

static Family attn = {.name = "attention", .make = make_attention, .n_var = 1, .wdtype = {ST_F32}};
static void attn_setup(void) { family_setup(&attn); }
static void attn_teardown(void) { family_teardown(&attn); }

static void check_attention(int v, const char *name, const char *q, const char *k, const char *vv, int heads,
                            double scale, int causal) {
    Run R = ready(&attn, v);
    Ref r;
    ref_attention(tens(&R, q), tens(&R, k), tens(&R, vv), heads, scale, causal, &r);
    expect_close(&R, name, &r);
    ref_free(&r);
}

START_TEST(test_attention_self_2_heads) { check_attention(_i, "self2", "q", "k", "v", 2, 0.41, 0); }
END_TEST

START_TEST(test_attention_cross_tq_ne_tk) { check_attention(_i, "cross3", "q", "kc", "vc", 3, 0.3, 0); }
END_TEST

START_TEST(test_attention_causal) { check_attention(_i, "causal2", "q", "k", "v", 2, 0.55, 1); }
END_TEST

START_TEST(test_attention_single_head) { check_attention(_i, "single", "q", "k", "v", 1, 1.0 / sqrt(6.0), 0); }
END_TEST

START_TEST(test_attention_causal_long) { check_attention(_i, "causal_long", "ql", "kl", "vl", 2, 0.7, 1); }
END_TEST

START_TEST(test_attention_cross_long) { check_attention(_i, "cross_long", "qx", "kx", "vx", 4, 0.35, 0); }
END_TEST

/* q, k, v read from one [2, 7, 18] tensor: as channel slices [q|k|v]
 * (legacy = 0) or in the QKVAttentionLegacy layout [head][q|k|v][d]. */
static void check_qkv(int v, const char *name, int heads, double scale, int legacy) {
    Run R = ready(&attn, v);
    const Tens *qkv = tens(&R, "qkv");
    Tens part[3];
    int64_t d = 6 / heads;
    for (int p = 0; p < 3; p++) {
        tens_init(&part[p], "part", 0, SHAPE(2, 7, 6));
        for (int64_t bt = 0; bt < 14; bt++)
            for (int64_t c = 0; c < 6; c++) {
                int64_t src = legacy ? (c / d) * 3 * d + p * d + c % d : p * 6 + c;
                part[p].f[bt * 6 + c] = qkv->f[bt * 18 + src];
            }
    }
    Ref r;
    ref_attention(&part[0], &part[1], &part[2], heads, scale, 0, &r);
    expect_close(&R, name, &r);
    ref_free(&r);
    for (int p = 0; p < 3; p++) tens_free(&part[p]);
}

START_TEST(test_attention_qkv_slices) { check_qkv(_i, "slices", 3, 0.5, 0); }
END_TEST

START_TEST(test_attention_qkv_legacy_layout) { check_qkv(_i, "legacy", 2, 1.0 / sqrt(3.0), 1); }
END_TEST

/* ------------------------------------------------------------------------
 * add, sub, mul (broadcasting)
 * ------------------------------------------------------------------------ */

static void make_binary(Family *F) {
    add_f32(F, T_INPUT, "a", -2, 2, SHAPE(2, 6, 7, 5));
    add_f32(F, T_INPUT, "b", -2, 2, SHAPE(2, 6, 7, 5));
    add_f32(F, T_INPUT, "c", -2, 2, SHAPE(6, 1, 1));
    add_f32(F, T_INPUT, "d", -2, 2, SHAPE(2, 6, 1, 1));
    add_f32(F, T_INPUT, "e", -2, 2, SHAPE(1, 6, 1, 5));
    add_f32(F, T_INPUT, "f", -2, 2, SHAPE(2, 1, 7, 1));
    add_f32(F, T_INPUT, "g", -2, 2, SHAPE(5));
    add_f32(F, T_INPUT, "h", -2, 2, SHAPE(1));
    add_f32(F, T_INPUT, "p", -2, 2, SHAPE(7, 5));
    add_f32(F, T_INPUT, "big", -2, 2, SHAPE(2, 8, 64, 64));
    add_f32(F, T_INPUT, "bc", -2, 2, SHAPE(8, 1, 1));
}

static Family bin = {.name = "binary", .make = make_binary, .n_var = 1, .wdtype = {ST_F32}};
static void bin_setup(void) { family_setup(&bin); }
static void bin_teardown(void) { family_teardown(&bin); }

static void check_binary(int v, const char *name, const char *a, const char *b, int op) {
    Run R = ready(&bin, v);
    Ref r;
    ref_binary(tens(&R, a), tens(&R, b), op, &r);
    expect_close(&R, name, &r);
    ref_free(&r);
}

START_TEST(test_add_same_shape) { check_binary(_i, "add_same", "a", "b", '+'); }
END_TEST

START_TEST(test_sub_same_shape) { check_binary(_i, "sub_same", "a", "b", '-'); }
END_TEST

START_TEST(test_mul_same_shape) { check_binary(_i, "mul_same", "a", "b", '*'); }
END_TEST

START_TEST(test_add_broadcast_channel) { check_binary(_i, "add_chan", "a", "c", '+'); }
END_TEST

START_TEST(test_mul_broadcast_batch_channel) { check_binary(_i, "mul_chan", "a", "d", '*'); }
END_TEST

START_TEST(test_sub_broadcast_both_sides) { check_binary(_i, "sub_both", "e", "f", '-'); }
END_TEST

START_TEST(test_sub_lower_rank_left) { check_binary(_i, "sub_low", "g", "a", '-'); }
END_TEST

START_TEST(test_mul_size1) { check_binary(_i, "mul_one", "h", "a", '*'); }
END_TEST

START_TEST(test_add_broadcast_leading) { check_binary(_i, "add_pos", "a", "p", '+'); }
END_TEST

START_TEST(test_mul_broadcast_large) { check_binary(_i, "mul_big", "big", "bc", '*'); }
END_TEST

START_TEST(test_binary_chain) {
    Run R = ready(&bin, _i);
    Ref s, m, r;
    Tens ts, tm;
    /* (a + b) * c - d, each step rounded to float32 like the graph's */
    ref_binary(tens(&R, "a"), tens(&R, "b"), '+', &s);
    tens_of_ref(&s, &ts);
    ref_binary(&ts, tens(&R, "c"), '*', &m);
    tens_of_ref(&m, &tm);
    ref_binary(&tm, tens(&R, "d"), '-', &r);
    expect_close(&R, "add_chain", &r);
    tens_free(&ts);
    tens_free(&tm);
    ref_free(&s);
    ref_free(&m);
    ref_free(&r);
}
END_TEST

/* ------------------------------------------------------------------------
 * upsample, concat, reshape, permute, slice
 * ------------------------------------------------------------------------ */

static void make_shape(Family *F) {
    add_f32(F, T_INPUT, "x", -2, 2, SHAPE(2, 6, 7, 5));
    add_f32(F, T_INPUT, "y", -2, 2, SHAPE(2, 3, 7, 5));
    add_f32(F, T_INPUT, "z", -2, 2, SHAPE(2, 1, 7, 5));
    add_f32(F, T_INPUT, "s", -2, 2, SHAPE(2, 7, 3));
    add_f32(F, T_INPUT, "t", -2, 2, SHAPE(2, 7, 4));
    add_f32(F, T_INPUT, "u", -2, 2, SHAPE(2, 3, 1, 4, 5));
    add_i32(F, T_INPUT, "ids", -1000, 1000, SHAPE(2, 7, 5));
    add_f32(F, T_INPUT, "m", -2, 2, SHAPE(2, 20, 37)); /* 8 x 8 blocks and both edges */
}

static Family shp = {.name = "shape", .make = make_shape, .n_var = 1, .wdtype = {ST_F32}};
static void shp_setup(void) { family_setup(&shp); }
static void shp_teardown(void) { family_teardown(&shp); }

START_TEST(test_upsample_nearest_2) {
    Run R = ready(&shp, _i);
    Ref r;
    ref_upsample(tens(&R, "x"), 2, &r);
    expect_exact(&R, "up2", &r, 0);
    ref_free(&r);
}
END_TEST

START_TEST(test_upsample_nearest_3) {
    Run R = ready(&shp, _i);
    Ref r;
    ref_upsample(tens(&R, "y"), 3, &r);
    expect_exact(&R, "up3", &r, 0);
    ref_free(&r);
}
END_TEST

START_TEST(test_avg_pool2d_2) {
    Run R = ready(&shp, _i);
    Ref r;
    ref_avgpool(tens(&R, "x"), 2, &r);
    expect_close(&R, "pool2", &r);
    ref_free(&r);
}
END_TEST

START_TEST(test_avg_pool2d_3) {
    Run R = ready(&shp, _i);
    Ref r;
    ref_avgpool(tens(&R, "y"), 3, &r);
    expect_close(&R, "pool3", &r);
    ref_free(&r);
}
END_TEST

static void check_concat(int v, const char *name, const char *const *names, int n, int axis) {
    Run R = ready(&shp, v);
    const Tens *xs[4];
    for (int i = 0; i < n; i++) xs[i] = tens(&R, names[i]);
    Ref r;
    ref_concat(xs, n, axis, &r);
    expect_exact(&R, name, &r, 0);
    ref_free(&r);
}

START_TEST(test_concat_axis1) { check_concat(_i, "cat1", (const char *[]){"x", "y", "z"}, 3, 1); }
END_TEST

START_TEST(test_concat_last_axis) { check_concat(_i, "cat_last", (const char *[]){"s", "t"}, 2, 2); }
END_TEST

START_TEST(test_concat_four) { check_concat(_i, "cat4", (const char *[]){"s", "t", "s", "t"}, 4, 2); }
END_TEST

START_TEST(test_concat_axis0) { check_concat(_i, "cat0", (const char *[]){"x", "x"}, 2, 0); }
END_TEST

START_TEST(test_reshape) {
    Run R = ready(&shp, _i);
    Ref r;
    ref_reshape(tens(&R, "x"), SHAPE(2, 6, 35), &r);
    expect_exact(&R, "reshape", &r, 0);
    ref_free(&r);
    ref_reshape(tens(&R, "x"), SHAPE(84, 5), &r);
    expect_exact(&R, "reshape_infer", &r, 0);
    ref_free(&r);
}
END_TEST

START_TEST(test_permute_to_tokens) {
    Run R = ready(&shp, _i);
    Tens flat = *tens(&R, "x"); /* [2, 6, 35] view of x's data */
    flat.ndim = 3;
    flat.shape[2] = 35;
    Ref r;
    ref_permute(&flat, (int[]){0, 2, 1}, &r);
    expect_exact(&R, "tokens", &r, 0);
    ref_free(&r);
}
END_TEST

static void check_permute(int v, const char *name, const char *x, const int *perm, int i32) {
    Run R = ready(&shp, v);
    Ref r;
    ref_permute(tens(&R, x), perm, &r);
    expect_exact(&R, name, &r, i32);
    ref_free(&r);
}

START_TEST(test_permute_blocks) { check_permute(_i, "tokens_big", "m", (int[]){0, 2, 1}, 0); }
END_TEST

START_TEST(test_permute_rank4) { check_permute(_i, "perm4", "x", (int[]){0, 2, 3, 1}, 0); }
END_TEST

START_TEST(test_permute_rank5) { check_permute(_i, "perm5", "u", (int[]){4, 2, 0, 3, 1}, 0); }
END_TEST

START_TEST(test_permute_i32) { check_permute(_i, "perm_i32", "ids", (int[]){2, 0, 1}, 1); }
END_TEST

static void check_slice(int v, const char *name, const char *x, int axis, int start, int end, int i32) {
    Run R = ready(&shp, v);
    Ref r;
    ref_slice(tens(&R, x), axis, start, end, &r);
    expect_exact(&R, name, &r, i32);
    ref_free(&r);
}

START_TEST(test_slice_axis1) { check_slice(_i, "slice1", "x", 1, 2, 5, 0); }
END_TEST

START_TEST(test_slice_last_axis) { check_slice(_i, "slice_last", "x", 3, 1, 4, 0); }
END_TEST

START_TEST(test_slice_axis0) { check_slice(_i, "slice0", "x", 0, 1, 2, 0); }
END_TEST

START_TEST(test_slice_i32) { check_slice(_i, "slice_i32", "ids", 1, 3, 7, 1); }
END_TEST

START_TEST(test_permute_slice_reshape) {
    Run R = ready(&shp, _i);
    Ref p, s;
    Tens tp;
    ref_permute(tens(&R, "x"), (int[]){0, 2, 3, 1}, &p); /* [2, 7, 5, 6] */
    tens_of_ref(&p, &tp);
    ref_slice(&tp, 3, 4, 6, &s); /* [2, 7, 5, 2] */
    s.ndim = 2;
    s.shape[0] = 2;
    s.shape[1] = 70;
    expect_exact(&R, "reshape_slice", &s, 0);
    tens_free(&tp);
    ref_free(&p);
    ref_free(&s);
}
END_TEST

/* ------------------------------------------------------------------------
 * timestep_embedding, embedding, vq_index, vq_lookup
 * ------------------------------------------------------------------------ */

static void make_misc(Family *F) {
    Tens *t = add_f32(F, T_INPUT, "t", 0, 1, SHAPE(5));
    const float ts[] = {0.0f, 1.0f, 17.5f, 500.0f, 999.0f};
    memcpy(t->f, ts, sizeof ts);
    Tens *ids = add_i32(F, T_INPUT, "ids", 0, 11, SHAPE(2, 7));
    ids->i[0] = 0;
    ids->i[13] = 10;
    add_f32(F, T_INPUT, "z", -1, 1, SHAPE(2, 6, 7, 5));
    /* small integers: every distance exact, many exact ties */
    add_int_valued(F, T_INPUT, "zi", -1, 2, SHAPE(2, 3, 7, 5));
    add_i32(F, T_INPUT, "idx", 0, 9, SHAPE(2, 7, 5));
    add_f32(F, T_WEIGHT, "emb.weight", -1, 1, SHAPE(11, 6));
    add_f32(F, T_WEIGHT, "cb.weight", -1, 1, SHAPE(9, 6));
    Tens *cbi = add_int_valued(F, T_WEIGHT, "cbi.weight", -1, 2, SHAPE(10, 3));
    /* repeated rows: 7 = 2, 9 = 4 */
    for (int c = 0; c < 3; c++) {
        cbi->f[7 * 3 + c] = cbi->f[2 * 3 + c];
        cbi->f[9 * 3 + c] = cbi->f[4 * 3 + c];
    }
}

static Family misc = {.name = "misc", .make = make_misc, .n_var = 2, .wdtype = {ST_F32, ST_F16}};
static void misc_setup(void) { family_setup(&misc); }
static void misc_teardown(void) { family_teardown(&misc); }

static void check_timestep(int v, const char *name, int dim, double max_period) {
    Run R = ready(&misc, v);
    Ref r;
    ref_timestep(tens(&R, "t"), dim, max_period, &r);
    expect_close(&R, name, &r);
    ref_free(&r);
}

START_TEST(test_timestep_embedding_even) { check_timestep(_i, "ts8", 8, 10000); }
END_TEST

START_TEST(test_timestep_embedding_odd) {
    check_timestep(_i, "ts7", 7, 10000);
    /* the padding column is exactly zero */
    const Tens *t = find_in(misc.out[_i], misc.n_out[_i], "ts7");
    for (int b = 0; b < 5; b++) ck_assert_msg(t->f[b * 7 + 6] == 0.0f, "ts7[%d, 6] = %g", b, (double)t->f[b * 7 + 6]);
}
END_TEST

START_TEST(test_timestep_embedding_max_period) { check_timestep(_i, "ts_mp", 6, 100); }
END_TEST

START_TEST(test_embedding) {
    Run R = ready(&misc, _i);
    const Tens *table = tens(&R, "emb.weight"), *ids = tens(&R, "ids");
    Ref r;
    ref_init(&r, 3, (int64_t[]){2, 7, 6});
    for (int64_t i = 0; i < ids->n; i++)
        for (int d = 0; d < 6; d++) r.v[i * 6 + d] = table->f[ids->i[i] * 6 + d];
    expect_exact(&R, "emb", &r, 0);
    ref_free(&r);
}
END_TEST

/* take_argmax: row t* = the first position of the largest id, per batch */
START_TEST(test_take_argmax) {
    Run R = ready(&misc, _i);
    const Tens *table = tens(&R, "emb.weight"), *ids = tens(&R, "ids");
    Ref r;
    ref_init(&r, 2, (int64_t[]){2, 6});
    for (int b = 0; b < 2; b++) {
        int at = 0;
        for (int t = 1; t < 7; t++)
            if (ids->i[b * 7 + t] > ids->i[b * 7 + at]) at = t;
        for (int d = 0; d < 6; d++) r.v[b * 6 + d] = 2.0f * table->f[ids->i[b * 7 + at] * 6 + d];
    }
    expect_exact(&R, "take", &r, 0);
    ref_free(&r);
}
END_TEST

START_TEST(test_vq_index) {
    Run R = ready(&misc, _i);
    Ref r;
    ref_vq_index(tens(&R, "z"), tens(&R, "cb.weight"), &r);
    expect_exact(&R, "vq", &r, 1);
    ref_free(&r);
}
END_TEST

START_TEST(test_vq_index_first_on_ties) {
    Run R = ready(&misc, _i);
    const Tens *z = tens(&R, "zi"), *cb = tens(&R, "cbi.weight");
    Ref r;
    ref_vq_index(z, cb, &r);
    /* the data must hold ties where the first minimum is not the last one */
    int ties = 0;
    for (int64_t b = 0; b < 2; b++)
        for (int64_t p = 0; p < 35; p++) {
            double dmin;
            nearest_code(z, cb, b, p, &dmin);
            int n_min = 0;
            for (int64_t j = 0; j < 10; j++) {
                double dd = 0;
                for (int c = 0; c < 3; c++) {
                    double e = z->f[(b * 3 + c) * 35 + p] - cb->f[j * 3 + c];
                    dd += e * e;
                }
                n_min += dd == dmin;
            }
            ties += n_min > 1;
        }
    ck_assert_msg(ties >= 10, "test data: only %d positions with tied codes", ties);
    expect_exact(&R, "vq_ties", &r, 1);
    ref_free(&r);
}
END_TEST

START_TEST(test_vq_lookup) {
    Run R = ready(&misc, _i);
    Ref r;
    ref_vq_lookup(tens(&R, "cb.weight"), tens(&R, "idx")->i, 2, 7, 5, &r);
    expect_exact(&R, "lookup", &r, 0);
    ref_free(&r);
}
END_TEST

START_TEST(test_vq_quantize) {
    Run R = ready(&misc, _i);
    const Tens *z = tens(&R, "z"), *cb = tens(&R, "cb.weight");
    int32_t idx[70];
    for (int64_t b = 0; b < 2; b++)
        for (int64_t p = 0; p < 35; p++) idx[b * 35 + p] = nearest_code(z, cb, b, p, NULL);
    Ref r;
    ref_vq_lookup(cb, idx, 2, 7, 5, &r);
    expect_exact(&R, "quant", &r, 0);
    ref_free(&r);
}
END_TEST

/* Run the misc runner (F32 weights) on its inputs with tensor `name`[pos]
 * set to value: it must fail cleanly (status 1, a message containing every
 * string of `want`, no sanitizer report, no output file). */
static void expect_runner_error(const char *name, int64_t pos, int32_t value, const char *const *want) {
    Run R = ready(&misc, 0);
    char path_in[256], path_w[256], path_out[256], log[256], text[3000];
    snprintf(path_in, sizeof path_in, "%.96s/bad_%.16s_%d.safetensors", R.F->dir, name, (int)value);
    snprintf(path_w, sizeof path_w, "%.96s/weights_F32.safetensors", R.F->dir);
    snprintf(path_out, sizeof path_out, "%.96s/bad_%.16s_%d.out.safetensors", R.F->dir, name, (int)value);
    snprintf(log, sizeof log, "%.96s/bad_%.16s_%d.log", R.F->dir, name, (int)value);
    Tens *t = (Tens *)find_in(misc.in, misc.n_in, name);
    ck_assert(t && t->i32 && pos < t->n);
    int32_t saved = t->i[pos];
    t->i[pos] = value;
    int wrc = write_st(misc.in, misc.n_in, path_in, ST_F32, NULL);
    t->i[pos] = saved;
    ck_assert_msg(wrc == 0, "%s", ldm_last_error());
    int rc = run_logged(log, "'%s' --weights '%s' --inputs '%s' --outputs '%s'", R.F->runner, path_w, path_in, path_out);
    read_log(log, text, sizeof text);
    ck_assert_msg(rc == 1, "runner with %s[%lld] = %d: status %d (expected 1):\n%s", name, (long long)pos, (int)value, rc, text);
    for (int i = 0; want[i]; i++)
        ck_assert_msg(strstr(text, want[i]), "runner with %s[%lld] = %d: message lacks '%s':\n%s", name, (long long)pos,
                      (int)value, want[i], text);
    ck_assert_msg(!strstr(text, "Sanitizer") && !strstr(text, "runtime error"), "sanitizer report:\n%s", text);
    ck_assert_msg(access(path_out, F_OK) != 0, "an output file was written despite the error");
}

START_TEST(test_embedding_id_too_large) {
    expect_runner_error("ids", 9, 11, (const char *[]){"embedding", "id 11", "[0, 11)", NULL});
}
END_TEST

START_TEST(test_embedding_id_negative) {
    expect_runner_error("ids", 3, -1, (const char *[]){"embedding", "id -1", "[0, 11)", NULL});
}
END_TEST

START_TEST(test_vq_lookup_index_out_of_range) {
    expect_runner_error("idx", 40, 9, (const char *[]){"vq_lookup", "index 9", "[0, 9)", NULL});
}
END_TEST

/* ------------------------------------------------------------------------
 * fused kernels: group_norm+silu, linear+geglu, conv/linear epilogues
 * ------------------------------------------------------------------------ */

/* A weight with the data of src under another name. */
static void add_copy(Family *F, const char *name, const Tens *src) {
    Tens *t = new_tens(F, T_WEIGHT, name, 0, src->ndim, src->shape);
    memcpy(t->f, src->f, (size_t)src->n * sizeof *src->f);
}

static void make_fused(Family *F) {
    add_f32(F, T_INPUT, "x", -1, 2, SHAPE(2, 6, 7, 5));
    add_f32(F, T_INPUT, "e", -2, 2, SHAPE(2, 4));
    add_f32(F, T_INPUT, "r", -2, 2, SHAPE(2, 4, 7, 5));
    add_f32(F, T_INPUT, "t", -1, 1, SHAPE(2, 7, 6));
    add_f32(F, T_INPUT, "tr", -2, 2, SHAPE(2, 7, 5));
    add_f32(F, T_INPUT, "xw", -1, 1, SHAPE(2, 16, 15, 13));
    add_f32(F, T_INPUT, "ew", -2, 2, SHAPE(2, 17));
    add_f32(F, T_INPUT, "rw", -2, 2, SHAPE(2, 17, 15, 13));
    add_f32(F, T_WEIGHT, "gn.weight", 0.5, 1.5, SHAPE(6));
    add_f32(F, T_WEIGHT, "gn.bias", -0.5, 0.5, SHAPE(6));
    add_f32(F, T_WEIGHT, "gn2.weight", 0.5, 1.5, SHAPE(6));
    add_f32(F, T_WEIGHT, "gn2.bias", -0.5, 0.5, SHAPE(6));
    add_f32(F, T_WEIGHT, "ff.weight", -0.5, 0.5, SHAPE(10, 6));
    add_f32(F, T_WEIGHT, "ff.bias", -0.5, 0.5, SHAPE(10));
    const char *convs[] = {"cr", "cres", "crr", "cs2", "co"};
    char b[64];
    for (int i = 0; i < 5; i++) {
        snprintf(b, sizeof b, "%s.weight", convs[i]);
        add_f32(F, T_WEIGHT, b, -0.5, 0.5, SHAPE(4, 6, 3, 3));
        snprintf(b, sizeof b, "%s.bias", convs[i]);
        add_f32(F, T_WEIGHT, b, -0.5, 0.5, SHAPE(4));
    }
    add_f32(F, T_WEIGHT, "c1.weight", -0.5, 0.5, SHAPE(4, 6, 1, 1));
    add_f32(F, T_WEIGHT, "cw.weight", -0.3, 0.3, SHAPE(17, 16, 3, 3));
    add_f32(F, T_WEIGHT, "cw.bias", -0.5, 0.5, SHAPE(17));
    add_f32(F, T_WEIGHT, "ci.weight", -0.5, 0.5, SHAPE(6, 6, 3, 3));
    add_f32(F, T_WEIGHT, "ci.bias", -0.5, 0.5, SHAPE(6));
    add_f32(F, T_WEIGHT, "cs.weight", -0.5, 0.5, SHAPE(6, 6, 3, 3));
    add_f32(F, T_WEIGHT, "cs.bias", -0.5, 0.5, SHAPE(6));
    add_f32(F, T_WEIGHT, "cri.weight", -0.5, 0.5, SHAPE(4, 6, 1, 1));
    add_f32(F, T_WEIGHT, "cri.bias", -0.5, 0.5, SHAPE(4));
    add_f32(F, T_WEIGHT, "ls.weight", -0.5, 0.5, SHAPE(6, 6));
    add_f32(F, T_WEIGHT, "ls.bias", -0.5, 0.5, SHAPE(6));
    add_f32(F, T_WEIGHT, "lr.weight", -0.5, 0.5, SHAPE(5, 6));
    add_f32(F, T_WEIGHT, "lrb.weight", -0.5, 0.5, SHAPE(5, 6));
    add_f32(F, T_WEIGHT, "lrb.bias", -0.5, 0.5, SHAPE(5));
    add_f32(F, T_INPUT, "tb", -1, 1, SHAPE(1, 300, 6));
    add_f32(F, T_INPUT, "xv", -1, 1, SHAPE(2, 16, 6, 30));
    /* ReLU epilogues; cwr2 and cv2 are copies of cwr and cv */
    const char *rconvs[] = {"crl", "crrl"};
    for (int i = 0; i < 2; i++) {
        snprintf(b, sizeof b, "%s.weight", rconvs[i]);
        add_f32(F, T_WEIGHT, b, -0.5, 0.5, SHAPE(4, 6, 3, 3));
        snprintf(b, sizeof b, "%s.bias", rconvs[i]);
        add_f32(F, T_WEIGHT, b, -0.5, 0.5, SHAPE(4));
    }
    add_f32(F, T_WEIGHT, "cnr.weight", -0.5, 0.5, SHAPE(4, 6, 3, 3));
    add_f32(F, T_WEIGHT, "cil.weight", -0.5, 0.5, SHAPE(12, 6, 3, 3));
    add_f32(F, T_WEIGHT, "cil.bias", -0.5, 0.5, SHAPE(12));
    add_f32(F, T_WEIGHT, "cwl.weight", -0.3, 0.3, SHAPE(17, 16, 3, 3));
    add_f32(F, T_WEIGHT, "cwl.bias", -0.5, 0.5, SHAPE(17));
    add_copy(F, "cwr2.weight", add_f32(F, T_WEIGHT, "cwr.weight", -0.3, 0.3, SHAPE(17, 16, 3, 3)));
    add_copy(F, "cwr2.bias", add_f32(F, T_WEIGHT, "cwr.bias", -0.5, 0.5, SHAPE(17)));
    add_copy(F, "cv2.weight", add_f32(F, T_WEIGHT, "cv.weight", -0.3, 0.3, SHAPE(16, 16, 3, 3)));
    add_copy(F, "cv2.bias", add_f32(F, T_WEIGHT, "cv.bias", -0.5, 0.5, SHAPE(16)));
    add_f32(F, T_WEIGHT, "ffb.weight", -0.5, 0.5, SHAPE(8200, 6));
    add_f32(F, T_WEIGHT, "ffb.bias", -0.5, 0.5, SHAPE(8200));
    const char *lns[] = {"ln", "ln2", "ln3"};
    for (int i = 0; i < 3; i++) {
        snprintf(b, sizeof b, "%s.weight", lns[i]);
        add_f32(F, T_WEIGHT, b, 0.5, 1.5, SHAPE(6));
        snprintf(b, sizeof b, "%s.bias", lns[i]);
        add_f32(F, T_WEIGHT, b, -0.5, 0.5, SHAPE(6));
    }
    add_f32(F, T_WEIGHT, "lq.weight", -0.5, 0.5, SHAPE(5, 6));
    add_f32(F, T_WEIGHT, "lk.weight", -0.5, 0.5, SHAPE(5, 6));
    add_f32(F, T_WEIGHT, "lk.bias", -0.5, 0.5, SHAPE(5));
    add_f32(F, T_WEIGHT, "lr2.weight", -0.5, 0.5, SHAPE(5, 6));
    const Tens *xu = add_f32(F, T_INPUT, "xu", -1, 1, SHAPE(2, 16, 5, 36));
    add_f32(F, T_INPUT, "xu2", -1, 1, SHAPE(1, 16, 9, 7));
    Tens *xu3 = new_tens(F, T_INPUT, "xu3", 0, SHAPE(2, 16, 5, 36)); /* xu's values */
    memcpy(xu3->f, xu->f, (size_t)xu->n * sizeof *xu->f);
    add_f32(F, T_INPUT, "ru", -1, 1, SHAPE(1, 17, 18, 14));
    add_f32(F, T_WEIGHT, "cu.weight", -0.3, 0.3, SHAPE(17, 16, 3, 3));
    add_f32(F, T_WEIGHT, "cu.bias", -0.5, 0.5, SHAPE(17));
    add_f32(F, T_WEIGHT, "cur.weight", -0.3, 0.3, SHAPE(17, 16, 3, 3));
}

static Family fused = {.name = "fused", .make = make_fused, .n_var = 2, .wdtype = {ST_F32, ST_F16}};
static void fused_setup(void) { family_setup(&fused); }
static void fused_teardown(void) { family_teardown(&fused); }

/* r[n, o, ...] += rowadd[n, o] (may be NULL) + res[n, o, ...] (same shape
 * as r, may be NULL). */
static void add_epilogue(Ref *r, const Tens *rowadd, const Tens *res) {
    int64_t idx[MAXD];
    for (int64_t i = 0; i < r->n; i++) {
        unravel(i, r->ndim, r->shape, idx);
        if (rowadd) {
            double e = rowadd->f[idx[0] * rowadd->shape[1] + idx[1]];
            r->v[i] += e;
            r->mag[i] += fabs(e);
        }
        if (res) {
            r->v[i] += res->f[i];
            r->mag[i] += fabs(res->f[i]);
        }
    }
}

START_TEST(test_fused_group_norm_silu) {
    Run R = ready(&fused, _i);
    Ref r;
    ref_group_norm(tens(&R, "x"), tens(&R, "gn.weight"), tens(&R, "gn.bias"), 3, 1e-5, &r);
    /* silu' <= 1.1: the norm's error budget (mag) carries over */
    for (int64_t i = 0; i < r.n; i++) r.v[i] = unary_d(U_SILU, r.v[i]);
    expect_close(&R, "gn_silu", &r);
    ref_free(&r);
}
END_TEST

START_TEST(test_unfused_group_norm_two_readers) {
    Run R = ready(&fused, _i);
    Ref g;
    ref_group_norm(tens(&R, "x"), tens(&R, "gn2.weight"), tens(&R, "gn2.bias"), 2, 1e-5, &g);
    for (int64_t i = 0; i < g.n; i++) {
        double y = g.v[i];
        g.v[i] = unary_d(U_SILU, y) * y;
        g.mag[i] *= 1.0 + 2.0 * fabs(y); /* d(silu(y) y)/dy <= 1 + 2|y| */
    }
    expect_close(&R, "gn_twice", &g);
    ref_free(&g);
}
END_TEST

/* geglu of h[M, 2D] into r[M, D] with the errors of a and g (gelu' <= 1.13) carried through. */
static void geglu_of(const Ref *h, int64_t M, int64_t D, Ref *r) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t d = 0; d < D; d++) {
            double a = h->v[m * 2 * D + d], g = h->v[m * 2 * D + D + d];
            r->v[m * D + d] = a * gelu_d(g);
            r->mag[m * D + d] = h->mag[m * 2 * D + d] * fabs(gelu_d(g)) + fabs(a) * 1.13 * h->mag[m * 2 * D + D + d] + fabs(a * g);
        }
}

START_TEST(test_fused_linear_geglu) {
    Run R = ready(&fused, _i);
    Ref h, r;
    ref_linear(tens(&R, "t"), tens(&R, "ff.weight"), tens(&R, "ff.bias"), &h); /* [2, 7, 10] */
    ref_init(&r, SHAPE(2, 7, 5));
    geglu_of(&h, 14, 5, &r);
    expect_close(&R, "lin_geglu", &r);
    ref_free(&h);
    ref_free(&r);
    /* 300 rows x 8200 features: the pre-gate product is made in blocks of rows */
    ref_linear(tens(&R, "tb"), tens(&R, "ffb.weight"), tens(&R, "ffb.bias"), &h);
    ref_init(&r, SHAPE(1, 300, 4100));
    geglu_of(&h, 300, 4100, &r);
    expect_close(&R, "lin_geglu_blocks", &r);
    ref_free(&h);
    ref_free(&r);
}
END_TEST

/* linear(layer_norm(x)) with x[M, I]: the norm's own error bound (mag)
 * carried through the weights. */
static void ref_ln_linear(const Tens *x, const Tens *lw, const Tens *lb, const Tens *w, const Tens *b, Ref *r) {
    Ref ln;
    ref_layer_norm(x, lw, lb, 1e-5, &ln);
    int64_t I = w->shape[1], O = w->shape[0], M = x->n / I;
    int64_t shape[MAXD];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = O;
    ref_init(r, x->ndim, shape);
    for (int64_t m = 0; m < M; m++)
        for (int64_t o = 0; o < O; o++) {
            double s = b ? b->f[o] : 0.0, g = b ? fabs(b->f[o]) : 0.0;
            for (int64_t i = 0; i < I; i++) {
                s += ln.v[m * I + i] * w->f[o * I + i];
                g += (fabs(ln.v[m * I + i]) + ln.mag[m * I + i]) * fabs(w->f[o * I + i]);
            }
            r->v[m * O + o] = s;
            r->mag[m * O + o] = g;
        }
    ref_free(&ln);
}

START_TEST(test_fused_layer_norm_linear) {
    Run R = ready(&fused, _i);
    Ref r, h;
    ref_ln_linear(tens(&R, "t"), tens(&R, "ln.weight"), tens(&R, "ln.bias"), tens(&R, "lq.weight"), NULL, &r);
    expect_close(&R, "ln_q", &r);
    ref_free(&r);
    ref_ln_linear(tens(&R, "t"), tens(&R, "ln.weight"), tens(&R, "ln.bias"), tens(&R, "lk.weight"), tens(&R, "lk.bias"), &r);
    expect_close(&R, "ln_k", &r);
    ref_free(&r);
    ref_ln_linear(tens(&R, "t"), tens(&R, "ln2.weight"), tens(&R, "ln2.bias"), tens(&R, "lr2.weight"), NULL, &r);
    add_epilogue(&r, NULL, tens(&R, "tr"));
    expect_close(&R, "ln_res", &r);
    ref_free(&r);
    ref_ln_linear(tens(&R, "tb"), tens(&R, "ln3.weight"), tens(&R, "ln3.bias"), tens(&R, "ffb.weight"), NULL, &h);
    ref_init(&r, SHAPE(1, 300, 4100));
    geglu_of(&h, 300, 4100, &r);
    expect_close(&R, "ln_geglu", &r);
    ref_free(&h);
    ref_free(&r);
}
END_TEST

/* conv of x (+ the row add e[n, o]) (+ residual) */
static void check_conv_epilogue(int v, const char *out, const char *x, const char *w, int has_bias, int stride,
                                const int pad[4], const char *rowadd, const char *res) {
    Run R = ready(&fused, v);
    char wn[64], bn[64];
    snprintf(wn, sizeof wn, "%s.weight", w);
    snprintf(bn, sizeof bn, "%s.bias", w);
    Ref r;
    ref_conv2d(tens(&R, x), tens(&R, wn), has_bias ? tens(&R, bn) : NULL, stride, pad[0], pad[1], pad[2], pad[3], &r);
    Tens sub = {0};
    const Tens *rt = res ? tens(&R, res) : NULL;
    if (rt && rt->shape[2] != r.shape[2]) {
        /* slice(slice(r, 2, 0, HO), 3, 0, WO) */
        Ref s;
        int64_t idx[MAXD];
        ref_init(&s, 4, r.shape);
        for (int64_t i = 0; i < s.n; i++) {
            unravel(i, 4, s.shape, idx);
            s.v[i] = rt->f[ravel(4, rt->shape, idx)];
        }
        tens_of_ref(&s, &sub);
        ref_free(&s);
        rt = &sub;
    }
    add_epilogue(&r, rowadd ? tens(&R, rowadd) : NULL, rt);
    expect_close(&R, out, &r);
    tens_free(&sub);
    ref_free(&r);
}

static const int PAD1[4] = {1, 1, 1, 1}, PAD0[4] = {0, 0, 0, 0}, PAD_DOWN[4] = {0, 1, 0, 1};

START_TEST(test_fused_conv_rowadd) { check_conv_epilogue(_i, "conv_rowadd", "x", "cr", 1, 1, PAD1, "e", NULL); }
END_TEST

START_TEST(test_fused_conv_residual) { check_conv_epilogue(_i, "conv_res", "x", "cres", 1, 1, PAD1, NULL, "r"); }
END_TEST

START_TEST(test_fused_conv_rowadd_residual) { check_conv_epilogue(_i, "conv_rowadd_res", "x", "crr", 1, 1, PAD1, "e", "r"); }
END_TEST

START_TEST(test_fused_conv1x1_residual) { check_conv_epilogue(_i, "conv1_res", "x", "c1", 0, 1, PAD0, NULL, "r"); }
END_TEST

START_TEST(test_fused_conv_stride2_residual) { check_conv_epilogue(_i, "conv_s2_res", "x", "cs2", 1, 2, PAD_DOWN, NULL, "r"); }
END_TEST

START_TEST(test_fused_conv16_rowadd_residual) {
    check_conv_epilogue(_i, "convw_rowadd_res", "xw", "cw", 1, 1, PAD1, "ew", "rw");
}
END_TEST

START_TEST(test_unfused_conv_also_output) {
    check_conv_epilogue(_i, "conv_out", "x", "co", 1, 1, PAD1, NULL, NULL);
    check_conv_epilogue(_i, "conv_out_res", "x", "co", 1, 1, PAD1, NULL, "r");
}
END_TEST

/* r = max(r, 0) (mag unchanged: the ReLU adds no rounding) */
static void relu_ref(Ref *r) {
    for (int64_t i = 0; i < r->n; i++) r->v[i] = r->v[i] > 0 ? r->v[i] : 0;
}

/* relu(conv(x) (+ residual)): conv2d+relu, conv2d+residual+relu, each
 * convolution algorithm */
static void check_conv_relu(int v, const char *out, const char *x, const char *w, int has_bias, int stride,
                            const char *res) {
    Run R = ready(&fused, v);
    char wn[64], bn[64];
    snprintf(wn, sizeof wn, "%s.weight", w);
    snprintf(bn, sizeof bn, "%s.bias", w);
    Ref r;
    ref_conv2d(tens(&R, x), tens(&R, wn), has_bias ? tens(&R, bn) : NULL, stride, 1, 1, 1, 1, &r);
    add_epilogue(&r, NULL, res ? tens(&R, res) : NULL);
    relu_ref(&r);
    expect_close(&R, out, &r);
    ref_free(&r);
}

START_TEST(test_fused_conv_relu) {
    check_conv_relu(_i, "conv_relu", "x", "crl", 1, 1, NULL);          /* direct */
    check_conv_relu(_i, "conv_res_relu", "x", "crrl", 1, 1, "r");
    check_conv_relu(_i, "convi_relu", "x", "cil", 1, 1, NULL);         /* im2col */
    check_conv_relu(_i, "convi_s2_relu", "x", "cil", 0, 2, NULL);
    check_conv_relu(_i, "convw_relu", "xw", "cwl", 1, 1, NULL);        /* Winograd */
    check_conv_relu(_i, "convw_res_relu", "xw", "cwr", 1, 1, "rw");
    check_conv_relu(_i, "convv_res_relu", "xv", "cv", 1, 1, "xv");
}
END_TEST

/* The fused ReLU gives the bits of the unfused kernel's sums through relu. */
START_TEST(test_fused_conv_relu_exact) {
    Run R = ready(&fused, _i);
    const char *pairs[][3] = {{"convw_res_relu", "convw_res_sum", "rw"}, {"convv_res_relu", "convv_res_sum", "xv"}};
    for (int k = 0; k < 2; k++) {
        Ref dummy; /* the shape, for output() */
        const Tens *like = tens(&R, pairs[k][2]);
        ref_init(&dummy, like->ndim, like->shape);
        const Tens *got = output(&R, pairs[k][0], &dummy, 0), *s = output(&R, pairs[k][1], &dummy, 0);
        int64_t bad = 0;
        for (int64_t i = 0; i < s->n; i++) {
            float want = s->f[i] > 0.0f ? s->f[i] : 0.0f;
            bad += memcmp(&want, &got->f[i], sizeof want) != 0;
        }
        ck_assert_msg(bad == 0, "%s: %lld of %lld elements differ from relu(%s)", pairs[k][0], (long long)bad,
                      (long long)s->n, pairs[k][1]);
        ref_free(&dummy);
    }
}
END_TEST

/* relu(conv(x)) + r: the add stays a separate op */
START_TEST(test_fused_conv_relu_then_add) {
    Run R = ready(&fused, _i);
    Ref r;
    ref_conv2d(tens(&R, "x"), tens(&R, "cnr.weight"), NULL, 1, 1, 1, 1, 1, &r);
    relu_ref(&r);
    add_epilogue(&r, NULL, tens(&R, "r"));
    expect_close(&R, "conv_relu_res", &r);
    ref_free(&r);
}
END_TEST

/* conv(upsample_nearest(x, 2)) (+ residual, relu): the fused kernel (the
 * Winograd sub-pixel phases on x), and the unfused upsample + conv of the
 * same values, both against the reference convolution of the upsampled x
 * (its values are x's, exactly) */
static void check_up_conv(int v, const char *out, const char *x, const char *w, int has_bias, const char *res, int relu) {
    Run R = ready(&fused, v);
    char wn[64], bn[64];
    snprintf(wn, sizeof wn, "%s.weight", w);
    snprintf(bn, sizeof bn, "%s.bias", w);
    Ref u, r;
    Tens ut = {0};
    ref_upsample(tens(&R, x), 2, &u);
    tens_of_ref(&u, &ut);
    ref_conv2d(&ut, tens(&R, wn), has_bias ? tens(&R, bn) : NULL, 1, 1, 1, 1, 1, &r);
    add_epilogue(&r, NULL, res ? tens(&R, res) : NULL);
    if (relu) relu_ref(&r);
    expect_close(&R, out, &r);
    tens_free(&ut);
    ref_free(&u);
    ref_free(&r);
}

START_TEST(test_fused_upsample_conv) {
    check_up_conv(_i, "up_conv", "xu", "cu", 1, NULL, 0);
    check_up_conv(_i, "up_conv_res_relu", "xu2", "cur", 0, "ru", 1);
    check_up_conv(_i, "up_conv_unfused", "xu3", "cu", 1, NULL, 0);
}
END_TEST

/* silu(x) rounded to float32, as the graph holds it */
static void silu_of(const Tens *x, Tens *out) {
    Ref r;
    ref_unary(x, U_SILU, &r);
    tens_of_ref(&r, out);
    ref_free(&r);
}

/* conv(x, "ci") + silu(x): the residual is an arena value */
START_TEST(test_fused_conv_residual_intermediate) {
    Run R = ready(&fused, _i);
    Tens a;
    silu_of(tens(&R, "x"), &a);
    Ref r;
    ref_conv2d(tens(&R, "x"), tens(&R, "ci.weight"), tens(&R, "ci.bias"), 1, 1, 1, 1, 1, &r);
    add_epilogue(&r, NULL, &a);
    expect_close(&R, "conv_res_inter", &r);
    ref_free(&r);
    tens_free(&a);
}
END_TEST

/* a + conv(a, "cs"), a = silu(x): the kernel's input is its residual */
START_TEST(test_fused_conv_self_residual) {
    Run R = ready(&fused, _i);
    Tens a;
    silu_of(tens(&R, "x"), &a);
    Ref r;
    ref_conv2d(&a, tens(&R, "cs.weight"), tens(&R, "cs.bias"), 1, 1, 1, 1, 1, &r);
    add_epilogue(&r, NULL, &a);
    expect_close(&R, "conv_self_res", &r);
    ref_free(&r);
    tens_free(&a);
}
END_TEST

/* conv1x1(x, "cri") + silu(e)[n, o] */
START_TEST(test_fused_conv_rowadd_intermediate) {
    Run R = ready(&fused, _i);
    Tens e2;
    silu_of(tens(&R, "e"), &e2);
    Ref r;
    ref_conv2d(tens(&R, "x"), tens(&R, "cri.weight"), tens(&R, "cri.bias"), 1, 0, 0, 0, 0, &r);
    add_epilogue(&r, &e2, NULL);
    expect_close(&R, "conv_rowadd_inter", &r);
    ref_free(&r);
    tens_free(&e2);
}
END_TEST

/* linear(u, "ls") + u, u = silu(t) */
START_TEST(test_fused_linear_self_residual) {
    Run R = ready(&fused, _i);
    Tens u;
    silu_of(tens(&R, "t"), &u);
    Ref r;
    ref_linear(&u, tens(&R, "ls.weight"), tens(&R, "ls.bias"), &r);
    add_epilogue(&r, NULL, &u);
    expect_close(&R, "lin_self_res", &r);
    ref_free(&r);
    tens_free(&u);
}
END_TEST

static void check_linear_residual(int v, const char *out, const char *w, int has_bias) {
    Run R = ready(&fused, v);
    char wn[64], bn[64];
    snprintf(wn, sizeof wn, "%s.weight", w);
    snprintf(bn, sizeof bn, "%s.bias", w);
    Ref r;
    ref_linear(tens(&R, "t"), tens(&R, wn), has_bias ? tens(&R, bn) : NULL, &r);
    add_epilogue(&r, NULL, tens(&R, "tr"));
    expect_close(&R, out, &r);
    ref_free(&r);
}

START_TEST(test_fused_linear_residual) { check_linear_residual(_i, "lin_res", "lr", 0); }
END_TEST

START_TEST(test_fused_linear_bias_residual) { check_linear_residual(_i, "lin_res_b", "lrb", 1); }
END_TEST

/* ------------------------------------------------------------------------
 * scale (tensor-number arithmetic)
 * ------------------------------------------------------------------------ */

static void make_scale(Family *F) { add_f32(F, T_INPUT, "x", -3, 3, SHAPE(2, 7, 6)); }

static Family scl = {.name = "scale", .make = make_scale, .n_var = 1, .wdtype = {ST_F32}};
static void scl_setup(void) { family_setup(&scl); }
static void scl_teardown(void) { family_teardown(&scl); }

/* y = x * alpha + beta, applied `steps` times in float32 (x*a+b in the DSL
 * is two scale ops); mag = |x alpha| + |beta|. */
static void check_scale(int v, const char *name, int steps, const double *alpha, const double *beta) {
    Run R = ready(&scl, v);
    const Tens *x = tens(&R, "x");
    Ref r;
    ref_init(&r, x->ndim, x->shape);
    for (int64_t i = 0; i < x->n; i++) {
        double y = x->f[i], m = 0;
        for (int s = 0; s < steps; s++) {
            m = fabs(y * alpha[s]) + fabs(beta[s]);
            y = y * alpha[s] + beta[s];
            if (s + 1 < steps) y = (float)y;
        }
        r.v[i] = y;
        r.mag[i] = m;
    }
    expect_close(&R, name, &r);
    ref_free(&r);
}

START_TEST(test_scale_mul) { check_scale(_i, "mul", 1, (double[]){0.37}, (double[]){0}); }
END_TEST

START_TEST(test_scale_mul_add) { check_scale(_i, "mul_add", 2, (double[]){0.37, 1}, (double[]){0, 0.25}); }
END_TEST

START_TEST(test_scale_number_minus_tensor) { check_scale(_i, "rsub", 1, (double[]){-1}, (double[]){1.5}); }
END_TEST

START_TEST(test_scale_div) { check_scale(_i, "div", 1, (double[]){0.25}, (double[]){0}); }
END_TEST

START_TEST(test_scale_neg) { check_scale(_i, "neg", 1, (double[]){-1}, (double[]){0}); }
END_TEST

START_TEST(test_scale_integral) { check_scale(_i, "int_affine", 2, (double[]){2, 1}, (double[]){0, 1}); }
END_TEST

START_TEST(test_attention_scale_one) {
    Run R = ready(&scl, _i);
    const Tens *x = tens(&R, "x");
    Ref r;
    ref_attention(x, x, x, 1, 1.0, 0, &r);
    expect_close(&R, "attn_scale1", &r);
    ref_free(&r);
}
END_TEST

/* ------------------------------------------------------------------------ */

/* A tcase per family: its fixture compiles and runs the graph once; each
 * test runs once per checkpoint dtype of the family (_i). */
static TCase *family_tcase(const char *name, void (*setup)(void), void (*teardown)(void)) {
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, 120);
    tcase_add_unchecked_fixture(tc, setup, teardown);
    return tc;
}

#define ADD(tc, fam, test) tcase_add_loop_test(tc, test, 0, (fam).n_var)

Suite *suite_ops(void) {
    Suite *s = suite_create("ops");
    TCase *tc = family_tcase("conv2d", conv_setup, conv_teardown);
    ADD(tc, conv, test_conv_3x3_pad1);
    ADD(tc, conv, test_conv_3x3_nopad_nobias);
    ADD(tc, conv, test_conv_stride2_asymmetric_pad);
    ADD(tc, conv, test_conv_stride2_pad1);
    ADD(tc, conv, test_conv_3x2_kernel_pad_tblr);
    ADD(tc, conv, test_conv_1x1);
    ADD(tc, conv, test_conv_1x1_nobias);
    ADD(tc, conv, test_conv_1x1_stride2);
    ADD(tc, conv, test_conv_large_tiled);
    ADD(tc, conv, test_conv_3x3_16_channels);
    suite_add_tcase(s, tc);

    tc = family_tcase("linear_matmul", mm_setup, mm_teardown);
    ADD(tc, mm, test_linear_bias);
    ADD(tc, mm, test_linear_nobias);
    ADD(tc, mm, test_linear_rank2);
    ADD(tc, mm, test_linear_rank4_nobias);
    ADD(tc, mm, test_linear_large);
    ADD(tc, mm, test_linear_tiny_weights);
    ADD(tc, mm, test_matmul);
    ADD(tc, mm, test_matmul_trans_b);
    ADD(tc, mm, test_matmul_two_batch_dims);
    ADD(tc, mm, test_matmul_rank2_trans_b);
    suite_add_tcase(s, tc);

    tc = family_tcase("norm", norm_setup, norm_teardown);
    ADD(tc, norm, test_group_norm_3_groups);
    ADD(tc, norm, test_group_norm_1_group_big_eps);
    ADD(tc, norm, test_group_norm_group_per_channel);
    ADD(tc, norm, test_group_norm_sequence);
    ADD(tc, norm, test_group_norm_big);
    ADD(tc, norm, test_layer_norm);
    ADD(tc, norm, test_layer_norm_rank2_eps);
    suite_add_tcase(s, tc);

    tc = family_tcase("activations", act_setup, act_teardown);
    ADD(tc, act, test_silu);
    ADD(tc, act, test_gelu_erf);
    ADD(tc, act, test_quick_gelu);
    ADD(tc, act, test_sigmoid);
    ADD(tc, act, test_relu);
    ADD(tc, act, test_tanh);
    ADD(tc, act, test_gelu_of_silu);
    ADD(tc, act, test_geglu);
    ADD(tc, act, test_softmax);
    ADD(tc, act, test_softmax_length1);
    suite_add_tcase(s, tc);

    tc = family_tcase("attention", attn_setup, attn_teardown);
    ADD(tc, attn, test_attention_self_2_heads);
    ADD(tc, attn, test_attention_cross_tq_ne_tk);
    ADD(tc, attn, test_attention_causal);
    ADD(tc, attn, test_attention_single_head);
    ADD(tc, attn, test_attention_causal_long);
    ADD(tc, attn, test_attention_cross_long);
    ADD(tc, attn, test_attention_qkv_slices);
    ADD(tc, attn, test_attention_qkv_legacy_layout);
    suite_add_tcase(s, tc);

    tc = family_tcase("binary", bin_setup, bin_teardown);
    ADD(tc, bin, test_add_same_shape);
    ADD(tc, bin, test_sub_same_shape);
    ADD(tc, bin, test_mul_same_shape);
    ADD(tc, bin, test_add_broadcast_channel);
    ADD(tc, bin, test_mul_broadcast_batch_channel);
    ADD(tc, bin, test_sub_broadcast_both_sides);
    ADD(tc, bin, test_sub_lower_rank_left);
    ADD(tc, bin, test_mul_size1);
    ADD(tc, bin, test_add_broadcast_leading);
    ADD(tc, bin, test_mul_broadcast_large);
    ADD(tc, bin, test_binary_chain);
    suite_add_tcase(s, tc);

    tc = family_tcase("shape", shp_setup, shp_teardown);
    ADD(tc, shp, test_upsample_nearest_2);
    ADD(tc, shp, test_upsample_nearest_3);
    ADD(tc, shp, test_avg_pool2d_2);
    ADD(tc, shp, test_avg_pool2d_3);
    ADD(tc, shp, test_concat_axis1);
    ADD(tc, shp, test_concat_last_axis);
    ADD(tc, shp, test_concat_four);
    ADD(tc, shp, test_concat_axis0);
    ADD(tc, shp, test_reshape);
    ADD(tc, shp, test_permute_to_tokens);
    ADD(tc, shp, test_permute_blocks);
    ADD(tc, shp, test_permute_rank4);
    ADD(tc, shp, test_permute_rank5);
    ADD(tc, shp, test_permute_i32);
    ADD(tc, shp, test_slice_axis1);
    ADD(tc, shp, test_slice_last_axis);
    ADD(tc, shp, test_slice_axis0);
    ADD(tc, shp, test_slice_i32);
    ADD(tc, shp, test_permute_slice_reshape);
    suite_add_tcase(s, tc);

    tc = family_tcase("misc", misc_setup, misc_teardown);
    ADD(tc, misc, test_timestep_embedding_even);
    ADD(tc, misc, test_timestep_embedding_odd);
    ADD(tc, misc, test_timestep_embedding_max_period);
    ADD(tc, misc, test_embedding);
    ADD(tc, misc, test_take_argmax);
    ADD(tc, misc, test_vq_index);
    ADD(tc, misc, test_vq_index_first_on_ties);
    ADD(tc, misc, test_vq_lookup);
    ADD(tc, misc, test_vq_quantize);
    tcase_add_test(tc, test_embedding_id_too_large);
    tcase_add_test(tc, test_embedding_id_negative);
    tcase_add_test(tc, test_vq_lookup_index_out_of_range);
    suite_add_tcase(s, tc);

    tc = family_tcase("fused", fused_setup, fused_teardown);
    ADD(tc, fused, test_fused_group_norm_silu);
    ADD(tc, fused, test_unfused_group_norm_two_readers);
    ADD(tc, fused, test_fused_linear_geglu);
    ADD(tc, fused, test_fused_conv_rowadd);
    ADD(tc, fused, test_fused_conv_residual);
    ADD(tc, fused, test_fused_conv_rowadd_residual);
    ADD(tc, fused, test_fused_conv1x1_residual);
    ADD(tc, fused, test_fused_conv_stride2_residual);
    ADD(tc, fused, test_fused_conv16_rowadd_residual);
    ADD(tc, fused, test_fused_conv_residual_intermediate);
    ADD(tc, fused, test_fused_conv_self_residual);
    ADD(tc, fused, test_fused_conv_rowadd_intermediate);
    ADD(tc, fused, test_fused_linear_self_residual);
    ADD(tc, fused, test_unfused_conv_also_output);
    ADD(tc, fused, test_fused_conv_relu);
    ADD(tc, fused, test_fused_conv_relu_exact);
    ADD(tc, fused, test_fused_conv_relu_then_add);
    ADD(tc, fused, test_fused_upsample_conv);
    ADD(tc, fused, test_fused_linear_residual);
    ADD(tc, fused, test_fused_linear_bias_residual);
    ADD(tc, fused, test_fused_layer_norm_linear);
    suite_add_tcase(s, tc);

    tc = family_tcase("scale", scl_setup, scl_teardown);
    ADD(tc, scl, test_scale_mul);
    ADD(tc, scl, test_scale_mul_add);
    ADD(tc, scl, test_scale_number_minus_tensor);
    ADD(tc, scl, test_scale_div);
    ADD(tc, scl, test_scale_neg);
    ADD(tc, scl, test_scale_integral);
    ADD(tc, scl, test_attention_scale_one);
    suite_add_tcase(s, tc);
    return s;
}
