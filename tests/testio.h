/*
 * testio.h - reading the files the executables write, shared by the suites
 * that run them (test_txt2img.c, test_sample.c): tensors of safetensors
 * files, PNG and byte comparisons, golden metadata, and the check that a
 * failed run left no output behind.
 */
#ifndef LDM_TESTIO_H
#define LDM_TESTIO_H

#include <check.h>
#include <dirent.h>
#include <jansson.h>

#include "image.h"
#include "safetensors.h"
#include "testproc.h"
#include "util.h"

/* Tensor `name` of file `path` as float32, or as int32 when as_i32
 * (malloc'd), numel in *n. */
static inline void *read_tensor(const char *path, const char *name, int64_t *n, int as_i32) {
    StFile f;
    ck_assert_msg(st_open(&f, path) == 0, "%s", ldm_last_error());
    const StTensor *t = st_find(&f, name);
    ck_assert_msg(t, "%s: no tensor '%s'", path, name);
    void *v = ldm_xmalloc((size_t)t->numel * 4 + 4);
    ck_assert_msg((as_i32 ? st_to_i32(t, v) : st_to_f32(t, v)) == 0, "%s", ldm_last_error());
    if (n) *n = t->numel;
    st_close(&f);
    return v;
}

static inline float *read_f32(const char *path, const char *name, int64_t *n) { return read_tensor(path, name, n, 0); }
static inline int32_t *read_i32(const char *path, const char *name, int64_t *n) { return read_tensor(path, name, n, 1); }

static inline double max_abs_diff(const float *a, const float *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!isfinite(d)) return INFINITY;
        if (d > m) m = d;
    }
    return m;
}

/* The largest per-byte difference of two PNGs (which must have one size). */
static inline int png_max_diff(const char *a, const char *b) {
    uint8_t *pa, *pb;
    int wa, ha, wb, hb;
    ck_assert_msg(ldm_png_read_rgb8(a, &pa, &wa, &ha) == 0, "%s", ldm_last_error());
    ck_assert_msg(ldm_png_read_rgb8(b, &pb, &wb, &hb) == 0, "%s", ldm_last_error());
    ck_assert_msg(wa == wb && ha == hb, "%s is %dx%d, %s is %dx%d", a, wa, ha, b, wb, hb);
    int m = 0;
    for (int64_t i = 0; i < (int64_t)wa * ha * 3; i++) {
        int d = abs((int)pa[i] - (int)pb[i]);
        if (d > m) m = d;
    }
    free(pa);
    free(pb);
    return m;
}

/* Are the two files byte for byte the same? */
static inline int same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = ldm_read_file(a, &na), *y = ldm_read_file(b, &nb);
    ck_assert_msg(x && y, "%s", ldm_last_error());
    int same = na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* Tensor `name` of two files bit-identical? */
static inline int same_tensor(const char *a, const char *b, const char *name) {
    int64_t na, nb;
    float *x = read_f32(a, name, &na), *y = read_f32(b, name, &nb);
    int same = na == nb && memcmp(x, y, (size_t)na * sizeof *x) == 0;
    free(x);
    free(y);
    return same;
}

static inline int same_latent(const char *a, const char *b) { return same_tensor(a, b, "latent"); }

/* A string from the metadata of an io file (malloc'd), NULL if absent. */
static inline char *meta_opt(const char *io, const char *key) {
    StFile f;
    ck_assert_msg(st_open(&f, io) == 0, "%s", ldm_last_error());
    const char *v = st_metadata(&f, key);
    char *s = v ? ldm_xstrdup(v) : NULL;
    st_close(&f);
    return s;
}

/* The same, required. */
static inline char *meta(const char *io, const char *key) {
    char *s = meta_opt(io, key);
    ck_assert_msg(s, "%s: no metadata '%s'", io, key);
    return s;
}

/* tolerance[name].max_abs of an io file. */
static inline double tolerance(const char *io, const char *name) {
    char *tj = meta(io, "tolerance");
    json_error_t err;
    json_t *j = json_loads(tj, 0, &err);
    ck_assert_msg(json_is_object(j), "%s: tolerance: %s", io, err.text);
    json_t *m = json_object_get(json_object_get(j, name), "max_abs");
    ck_assert_msg(json_is_number(m), "%s: no tolerance[%s].max_abs", io, name);
    double v = json_number_value(m);
    json_decref(j);
    free(tj);
    return v;
}

/* No file of the scratch directory starts with `prefix` (no output, no
 * temporary left behind). */
static inline void assert_no_output(const char *prefix) {
    DIR *d = opendir(test_dir);
    ck_assert(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        ck_assert_msg(strncmp(e->d_name, prefix, strlen(prefix)) != 0, "'%s' was left in %s", e->d_name, test_dir);
    closedir(d);
}

/* The sd1-tiny txt2img executable at 128x128, built as a user builds it
 * (`make txt2img CONFIG=.../sd1-tiny/config.yaml H=128 W=128`, defaults
 * CHUNKS=3 CLIP_SKIPS=2 TAESD=1) into the build directory under test as
 * txt2img-test-sd1-tiny: one executable for every suite that runs it (make
 * does nothing when it is up to date). san: the sanitized build (SAN=1).
 * Sets path (size n) to it, or leaves it "" and *log to make's output. */
static inline void test_build_sd1_tiny_txt2img(int san, char *path, size_t n, char **log) {
    char build[300], config[512], exe[600], logf[600];
    snprintf(build, sizeof build, "BUILD=%s", test_build_dir());
    snprintf(config, sizeof config, "CONFIG=%s", test_shared("goldens/sd1-tiny/config.yaml"));
    snprintf(exe, sizeof exe, "%s/txt2img-test-sd1-tiny", test_build_dir());
    char *argv[] = {"make", "-s", "-j2", build, san ? "SAN=1" : "SAN=0", "txt2img", config, "H=128", "W=128",
                    "TXT2IMG_NAME=txt2img-test-sd1-tiny", NULL};
    snprintf(logf, sizeof logf, "%s/make-txt2img.log", test_dir);
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

#endif
