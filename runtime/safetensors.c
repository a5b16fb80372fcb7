/*
 * safetensors.c - safetensors reader (mmap + full validation), writer
 * (deterministic, atomic) and checkpoint dtype converter. See safetensors.h.
 *
 * File layout: u64 little-endian header length N | N bytes of JSON | data.
 * Everything in the header is checked before any tensor is handed out, so
 * the rest of the runtime can trust shape, dtype and byte ranges. Tensor data
 * in the mapping may be misaligned (an F16 tensor with an odd number of
 * elements shifts every tensor after it), so all reads go through memcpy or
 * byte arithmetic, never through a cast pointer.
 */
#define _GNU_SOURCE
#include "safetensors.h"

#include "ckpt.h"
#include "half.h"
#include "ldm_limits.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Refuse headers above this size: real checkpoints have a few MB at most. */
#define ST_MAX_HEADER (100u * 1024u * 1024u)

/* ------------------------------------------------------------------------
 * dtypes
 * ------------------------------------------------------------------------ */

/* Header names and element sizes, indexed by StDtype. */
static const struct {
    const char *name; /* as written in the header */
    size_t size;      /* bytes per element */
} dtype_info[] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2},
    [ST_F64] = {"F64", 8}, [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4},
    [ST_I16] = {"I16", 2}, [ST_I8] = {"I8", 1},   [ST_U8] = {"U8", 1},
    [ST_BOOL] = {"BOOL", 1},
};
#define ST_N_DTYPES ((int)(sizeof dtype_info / sizeof dtype_info[0]))

static int dtype_valid(StDtype dt) { return (int)dt >= 0 && (int)dt < ST_N_DTYPES; }

size_t st_dtype_size(StDtype dt) { return dtype_valid(dt) ? dtype_info[dt].size : 0; }

const char *st_dtype_name(StDtype dt) { return dtype_valid(dt) ? dtype_info[dt].name : "?"; }

int st_dtype_parse(const char *s, StDtype *out) {
    for (int i = 0; i < ST_N_DTYPES; i++) {
        if (strcmp(s, dtype_info[i].name) == 0) {
            *out = (StDtype)i;
            return 0;
        }
    }
    return -1;
}

static int dtype_is_float(StDtype dt) {
    return dt == ST_F32 || dt == ST_F16 || dt == ST_BF16 || dt == ST_F64;
}

/* ------------------------------------------------------------------------
 * scalar conversions (bit-exact, round-to-nearest-even: half.h)
 * ------------------------------------------------------------------------ */

float st_f16_to_f32(uint16_t h) { return ldm_f16_to_f32(h); }
uint16_t st_f32_to_f16(float f) { return ldm_f32_to_f16(f); }
float st_bf16_to_f32(uint16_t b) { return ldm_bf16_to_f32(b); }
uint16_t st_f32_to_bf16(float f) { return ldm_f32_to_bf16(f); }

/* Little-endian loads from possibly misaligned bytes. */
static uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint64_t load_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* ------------------------------------------------------------------------
 * tensor conversions
 * ------------------------------------------------------------------------ */

int st_to_f32(const StTensor *t, float *dst) {
    const uint8_t *p = t->data;
    int64_t n = t->numel;
    switch (t->dtype) {
    case ST_F32:
        if (n) memcpy(dst, p, (size_t)n * 4);
        return 0;
    case ST_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = st_f16_to_f32(load_u16(p + 2 * i));
        return 0;
    case ST_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = st_bf16_to_f32(load_u16(p + 2 * i));
        return 0;
    case ST_F64:
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return 0;
    default:
        return ldm_fail("tensor '%s': expected a float dtype (F32, F16, BF16, F64) for "
                        "conversion to float32, got %s",
                        t->name, st_dtype_name(t->dtype));
    }
}

/* One integer element widened to int64. */
static int64_t int_elem(const uint8_t *p, StDtype dt, int64_t i) {
    switch (dt) {
    case ST_I64: {
        int64_t v;
        memcpy(&v, p + 8 * i, 8);
        return v;
    }
    case ST_I32: {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case ST_I16: {
        int16_t v;
        memcpy(&v, p + 2 * i, 2);
        return v;
    }
    case ST_I8: return (int8_t)p[i];
    default: return p[i]; /* ST_U8 */
    }
}

int st_to_i32(const StTensor *t, int32_t *dst) {
    StDtype dt = t->dtype;
    if (dt != ST_I64 && dt != ST_I32 && dt != ST_I16 && dt != ST_I8 && dt != ST_U8)
        return ldm_fail("tensor '%s': expected an integer dtype (I64, I32, I16, I8, U8) for "
                        "conversion to int32, got %s",
                        t->name, st_dtype_name(dt));
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v = int_elem(t->data, dt, i);
        if (v < INT32_MIN || v > INT32_MAX)
            return ldm_fail("tensor '%s': expected values in the int32 range, got %lld at "
                            "element %lld",
                            t->name, (long long)v, (long long)i);
        dst[i] = (int32_t)v;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * reader: header validation
 * ------------------------------------------------------------------------ */

/* What a JSON value is, for "got ..." in messages. */
static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* Fill t->shape/ndim/numel from the "shape" array. */
static int parse_shape(const char *path, const char *name, const json_t *js, StTensor *t) {
    if (!js)
        return ldm_fail("%s: tensor '%s': expected a \"shape\" entry, got none", path, name);
    if (!json_is_array(js))
        return ldm_fail("%s: tensor '%s': expected \"shape\" to be an array, got %s", path,
                        name, json_kind(js));
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return ldm_fail("%s: tensor '%s': expected at most %d dimensions, got %zu", path, name,
                        ST_MAX_DIMS, nd);
    t->ndim = (int)nd;
    t->numel = 1;
    for (size_t i = 0; i < nd; i++) {
        const json_t *d = json_array_get(js, i);
        if (!json_is_integer(d))
            return ldm_fail("%s: tensor '%s': expected shape[%zu] to be an integer, got %s",
                            path, name, i, json_kind(d));
        long long v = json_integer_value(d);
        if (v < 0)
            return ldm_fail("%s: tensor '%s': expected shape[%zu] >= 0, got %lld", path, name,
                            i, v);
        t->shape[i] = v;
        if (__builtin_mul_overflow(t->numel, (int64_t)v, &t->numel))
            return ldm_fail("%s: tensor '%s': expected a shape whose element count fits in "
                            "64 bits, got overflow at shape[%zu]",
                            path, name, i);
    }
    return 0;
}

/* Read "data_offsets": [begin, end] and check them against the data section. */
static int parse_offsets(const char *path, const char *name, const json_t *jo, size_t data_size,
                         uint64_t *begin, uint64_t *end) {
    if (!jo)
        return ldm_fail("%s: tensor '%s': expected a \"data_offsets\" entry, got none", path,
                        name);
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return ldm_fail("%s: tensor '%s': expected \"data_offsets\" to be [begin, end], got %s%s",
                        path, name, json_kind(jo),
                        json_is_array(jo) ? " of the wrong length" : "");
    long long v[2];
    for (int i = 0; i < 2; i++) {
        const json_t *e = json_array_get(jo, (size_t)i);
        if (!json_is_integer(e))
            return ldm_fail("%s: tensor '%s': expected data_offsets[%d] to be an integer, got %s",
                            path, name, i, json_kind(e));
        v[i] = json_integer_value(e);
        if (v[i] < 0)
            return ldm_fail("%s: tensor '%s': expected data_offsets[%d] >= 0, got %lld", path,
                            name, i, v[i]);
    }
    if (v[0] > v[1])
        return ldm_fail("%s: tensor '%s': expected data_offsets begin <= end, got [%lld, %lld]",
                        path, name, v[0], v[1]);
    if ((uint64_t)v[1] > data_size)
        return ldm_fail("%s: tensor '%s': expected data_offsets end <= %zu (the size of the data "
                        "section; file truncated?), got [%lld, %lld]",
                        path, name, data_size, v[0], v[1]);
    *begin = (uint64_t)v[0];
    *end = (uint64_t)v[1];
    return 0;
}

/* Validate one header entry and fill t (t->name is set by the caller). */
static int parse_tensor(const StFile *f, const json_t *entry, const uint8_t *data, size_t data_size,
                        StTensor *t) {
    const char *path = f->path, *name = t->name;
    if (!json_is_object(entry))
        return ldm_fail("%s: tensor '%s': expected an object {dtype, shape, data_offsets}, got %s",
                        path, name, json_kind(entry));
    const json_t *jd = json_object_get(entry, "dtype");
    if (!json_is_string(jd))
        return ldm_fail("%s: tensor '%s': expected \"dtype\" to be a string, got %s", path, name,
                        jd ? json_kind(jd) : "none");
    if (st_dtype_parse(json_string_value(jd), &t->dtype) != 0)
        return ldm_fail("%s: tensor '%s': expected dtype one of F32, F16, BF16, F64, I64, I32, "
                        "I16, I8, U8, BOOL, got \"%s\"",
                        path, name, json_string_value(jd));
    if (parse_shape(path, name, json_object_get(entry, "shape"), t) != 0) return -1;
    uint64_t begin = 0, end = 0;
    if (parse_offsets(path, name, json_object_get(entry, "data_offsets"), data_size, &begin,
                      &end) != 0)
        return -1;
    size_t es = st_dtype_size(t->dtype);
    uint64_t want;
    if (__builtin_mul_overflow((uint64_t)t->numel, (uint64_t)es, &want))
        return ldm_fail("%s: tensor '%s': expected a shape of fewer than 2^64 bytes, got %lld "
                        "elements x %zu bytes (%s)",
                        path, name, (long long)t->numel, es, st_dtype_name(t->dtype));
    if (want != end - begin)
        return ldm_fail("%s: tensor '%s': expected %lld elements x %zu bytes (%s) = %llu bytes "
                        "from shape, got data_offsets [%llu, %llu] = %llu bytes",
                        path, name, (long long)t->numel, es, st_dtype_name(t->dtype),
                        (unsigned long long)want, (unsigned long long)begin,
                        (unsigned long long)end, (unsigned long long)(end - begin));
    t->data = data + begin;
    t->nbytes = (size_t)want;
    return 0;
}

/* Copy "__metadata__" (an object of strings) into f->meta_*. */
static int parse_metadata(StFile *f, const json_t *meta) {
    if (!json_is_object(meta))
        return ldm_fail("%s: header: expected __metadata__ to be an object of strings, got %s",
                        f->path, json_kind(meta));
    size_t n = json_object_size(meta);
    f->meta_keys = ldm_xcalloc(n, sizeof(char *));
    f->meta_values = ldm_xcalloc(n, sizeof(char *));
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)meta, key, val) {
        if (!json_is_string(val))
            return ldm_fail("%s: header: __metadata__ '%s': expected a string, got %s", f->path,
                            key, json_kind(val));
        f->meta_keys[f->n_meta] = ldm_xstrdup(key);
        f->meta_values[f->n_meta] = ldm_xstrdup(json_string_value(val));
        f->n_meta++;
    }
    return 0;
}

/* "[320, 4, 3, 3]" */
static const char *ldm_shape_str_core(int nd, const int64_t *s, char *buf, size_t size) {
    size_t k = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < nd && k < size; i++) k += (size_t)snprintf(buf + k, size - k, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (k < size) snprintf(buf + k, size - k, "]");
    return buf;
}

/* Sort helper for the overlap check: tensor indices by data begin. */
static int cmp_by_begin(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    if (x->data != y->data) return x->data < y->data ? -1 : 1;
    return (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

/* No two non-empty tensors may share bytes. */
static int check_overlaps(const StFile *f, const uint8_t *data) {
    const StTensor **v = ldm_xmalloc((size_t)f->n_tensors * sizeof *v + 1);
    int n = 0;
    for (int i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].nbytes) v[n++] = &f->tensors[i];
    qsort(v, (size_t)n, sizeof *v, cmp_by_begin);
    int rc = 0;
    for (int i = 1; i < n && rc == 0; i++) {
        const StTensor *a = v[i - 1], *b = v[i];
        if (b->data < a->data + a->nbytes)
            rc = ldm_fail("%s: tensor '%s': expected data not to overlap tensor '%s' [%zu, %zu], "
                          "got [%zu, %zu]",
                          f->path, b->name, a->name, (size_t)(a->data - data),
                          (size_t)(a->data - data) + a->nbytes, (size_t)(b->data - data),
                          (size_t)(b->data - data) + b->nbytes);
    }
    free(v);
    return rc;
}

/* Parse and validate the header of an already mapped file. */
static int parse_header(StFile *f) {
    if (f->size < 8)
        return ldm_fail("%s: truncated: expected at least 8 bytes (the header length), got %zu",
                        f->path, f->size);
    uint64_t n = load_u64(f->map);
    if (n > ST_MAX_HEADER)
        return ldm_fail("%s: header: expected a header length <= %u bytes, got %llu (corrupt "
                        "file?)",
                        f->path, ST_MAX_HEADER, (unsigned long long)n);
    if (n > f->size - 8)
        return ldm_fail("%s: truncated: header says %llu bytes but file has %zu after the 8-byte "
                        "length",
                        f->path, (unsigned long long)n, f->size - 8);
    const uint8_t *data = f->map + 8 + n;
    size_t data_size = f->size - 8 - (size_t)n;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->map + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    /* jansson fails without a message only when it cannot allocate (lex_init) */
    if (!root && (json_error_code(&jerr) == json_error_out_of_memory || !jerr.text[0]))
        ldm_fatal("out of memory: could not parse the %.1f MiB JSON header of %s", (double)n / 1048576.0, f->path);
    if (!root)
        return ldm_fail("%s: header: invalid JSON at byte %d (line %d, column %d): %s", f->path,
                        jerr.position + 8, jerr.line, jerr.column, jerr.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = ldm_fail("%s: header: expected a JSON object, got %s", f->path, json_kind(root));
        goto out;
    }
    if (json_object_size(root) - (json_object_get(root, "__metadata__") ? 1 : 0) > ST_MAX_TENSORS) {
        size_t k = json_object_size(root) - (json_object_get(root, "__metadata__") ? 1 : 0);
        json_decref(root);
        return ldm_fail("%s: header lists %zu tensors; the limit is %d tensors", f->path, k, ST_MAX_TENSORS);
    }
    f->tensors = ldm_xcalloc(json_object_size(root), sizeof(StTensor));
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if ((rc = parse_metadata(f, val)) != 0) goto out;
            continue;
        }
        StTensor *t = &f->tensors[f->n_tensors++];
        t->name = ldm_xstrdup(key);
        if ((rc = parse_tensor(f, val, data, data_size, t)) != 0) goto out;
    }
    rc = check_overlaps(f, data);
out:
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------------------
 * reader: public API
 * ------------------------------------------------------------------------ */

int st_open(StFile *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->path = ldm_xstrdup(path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = ldm_fail("%s: cannot open: %s", path, strerror(errno));
        st_close(f);
        return rc;
    }
    struct stat sb;
    int rc = 0;
    if (fstat(fd, &sb) != 0)
        rc = ldm_fail("%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        rc = ldm_fail("%s: expected a regular safetensors file, got %s", path,
                      S_ISDIR(sb.st_mode) ? "a directory" : "a special file");
    if (rc != 0) {
        close(fd);
        st_close(f);
        return rc;
    }
    f->size = (size_t)sb.st_size;
    if (f->size > 0) { /* mmap of length 0 fails; parse_header reports the size */
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED && errno == ENOMEM) /* address space exhausted (ulimit -v): not the file's fault */
            ldm_fatal("out of memory: could not map %.1f MiB (%zu bytes) of %s", (double)f->size / 1048576.0, f->size,
                      path);
        if (m == MAP_FAILED) {
            rc = ldm_fail("%s: cannot mmap %zu bytes: %s", path, f->size, strerror(errno));
            close(fd);
            f->size = 0;
            st_close(f);
            return rc;
        }
        f->map = m;
        ldm_map_register(m, f->size, path); /* a SIGBUS here names the file */
    }
    close(fd);
    int bad;
    if (ckpt_is_zip(f->map, f->size))
        bad = ckpt_parse(f);
    else if (ckpt_is_legacy(f->map, f->size))
        bad = ldm_fail("%s: a PyTorch checkpoint in the legacy format (torch.save before PyTorch 1.6, not a zip "
                       "archive): not read; save it again with a newer torch.save, or convert it to safetensors",
                       path);
    else
        bad = parse_header(f);
    if (bad != 0) {
        st_close(f);
        return -1;
    }
    return 0;
}

void st_close(StFile *f) {
    if (f->map) {
        ldm_map_unregister(f->map);
        munmap(f->map, f->size);
    }
    if (f->aux) munmap(f->aux, f->aux_size);
    if (f->vae) {
        st_close(f->vae);
        free(f->vae);
    }
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->path);
    memset(f, 0, sizeof *f);
}

/* Is name (without the prefix) one of the autoencoder's own weights? */
static int vae_weight_name(const char *name) {
    static const char *const parts[] = {"encoder.", "decoder.", "quant_conv.", "post_quant_conv."};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (!strncmp(name, parts[i], strlen(parts[i]))) return 1;
    return 0;
}

int st_replace_vae(StFile *f, const char *vae_path) {
    static const char prefix[] = "first_stage_model.";
    const size_t pl = sizeof prefix - 1;
    StFile *v = ldm_xcalloc(1, sizeof *v);
    if (st_open(v, vae_path) != 0) {
        free(v);
        return -1;
    }
    /* the file's naming: with the prefix if any tensor has it */
    int prefixed = 0;
    for (int i = 0; i < v->n_tensors && !prefixed; i++) prefixed = !strncmp(v->tensors[i].name, prefix, pl);
    const StTensor **src = ldm_xcalloc((size_t)f->n_tensors + 1, sizeof *src);
    int n = 0, rc = 0;
    for (int i = 0; i < f->n_tensors && rc == 0; i++) {
        const StTensor *t = &f->tensors[i];
        if (strncmp(t->name, prefix, pl) || !vae_weight_name(t->name + pl)) continue;
        const char *key = prefixed ? t->name : t->name + pl;
        const StTensor *s = st_find(v, key);
        int same = s && s->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = s->shape[d] == t->shape[d];
        char bw[160], bg[160];
        ldm_shape_str_core(t->ndim, t->shape, bw, sizeof bw);
        if (!s)
            rc = ldm_fail("%s: --vae: tensor '%s' is missing (the checkpoint's %s is %s %s)", vae_path, key, t->name,
                          st_dtype_name(t->dtype), bw);
        else if (!dtype_is_float(s->dtype))
            rc = ldm_fail("%s: --vae: tensor '%s' has dtype %s, expected F32, F16, BF16 or F64", vae_path, key,
                          st_dtype_name(s->dtype));
        else if (!same)
            rc = ldm_fail("%s: --vae: tensor '%s' has shape %s, expected %s (the checkpoint's %s; a VAE for another "
                          "model?)", vae_path, key, ldm_shape_str_core(s->ndim, s->shape, bg, sizeof bg), bw, t->name);
        src[i] = s;
        n += s != NULL;
    }
    if (rc == 0 && n == 0)
        rc = ldm_fail("%s: --vae: the checkpoint has no autoencoder tensors (first_stage_model.encoder.* ...) to "
                      "replace", vae_path);
    if (rc != 0) {
        free(src);
        st_close(v);
        free(v);
        return -1;
    }
    for (int i = 0; i < f->n_tensors; i++) {
        if (!src[i]) continue;
        StTensor *t = &f->tensors[i];
        t->dtype = src[i]->dtype;
        t->numel = src[i]->numel;
        t->data = src[i]->data;
        t->nbytes = src[i]->nbytes;
    }
    free(src);
    if (f->vae) { /* a second --vae replaces the first */
        st_close(f->vae);
        free(f->vae);
    }
    f->vae = v;
    return 0;
}

const StTensor *st_find(const StFile *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *st_metadata(const StFile *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

/* ------------------------------------------------------------------------
 * writer
 * ------------------------------------------------------------------------ */

typedef struct StWEntry {
    char *name;                  /* tensor name */
    StDtype dtype;               /* element type */
    int ndim;                    /* number of dimensions */
    int64_t shape[ST_MAX_DIMS];  /* dimensions */
    size_t nbytes;               /* data size in bytes */
    const void *data;            /* bytes to write (owned or borrowed) */
    void *owned;                 /* == data when the writer must free it, else NULL */
} StWEntry;

struct StWriter {
    StWEntry *t;          /* tensors in insertion order */
    int n, cap;           /* count and capacity of t */
    char **meta_keys;     /* metadata keys in insertion order */
    char **meta_values;   /* metadata values, parallel to meta_keys */
    int n_meta, cap_meta; /* count and capacity of the metadata arrays */
    char *error;          /* first bad add (reported by st_writer_save), or NULL */
};

StWriter *st_writer_new(void) { return ldm_xcalloc(1, sizeof(StWriter)); }

void st_writer_free(StWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].owned);
    }
    free(w->t);
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->meta_keys);
    free(w->meta_values);
    free(w->error);
    free(w);
}

/* Remember the first invalid add; st_writer_save reports it. */
static void writer_error(StWriter *w, char *msg) {
    if (w->error) free(msg);
    else w->error = msg;
}

/* Validate and append an entry; returns it, or NULL after writer_error. */
static StWEntry *writer_append(StWriter *w, const char *name, StDtype dtype, int ndim,
                               const int64_t *shape) {
    if (!dtype_valid(dtype)) {
        writer_error(w, ldm_xasprintf("tensor '%s': expected a valid dtype, got %d", name,
                                      (int)dtype));
        return NULL;
    }
    if (ndim < 0 || ndim > ST_MAX_DIMS) {
        writer_error(w, ldm_xasprintf("tensor '%s': expected 0..%d dimensions, got %d", name,
                                      ST_MAX_DIMS, ndim));
        return NULL;
    }
    if (strcmp(name, "__metadata__") == 0) {
        writer_error(w, ldm_xstrdup("tensor '__metadata__': expected a tensor name, got the "
                                    "reserved metadata key"));
        return NULL;
    }
    for (int i = 0; i < w->n; i++) {
        if (strcmp(w->t[i].name, name) == 0) {
            writer_error(w, ldm_xasprintf("tensor '%s': expected a unique name, got it twice",
                                          name));
            return NULL;
        }
    }
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(numel, shape[i], &numel) ||
            (uint64_t)numel > SIZE_MAX / 8) {
            writer_error(w, ldm_xasprintf("tensor '%s': expected shape[%d] >= 0 with a "
                                          "representable element count, got %lld",
                                          name, i, (long long)shape[i]));
            return NULL;
        }
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 16;
        w->t = ldm_xrealloc(w->t, (size_t)w->cap * sizeof *w->t);
    }
    StWEntry *e = &w->t[w->n++];
    memset(e, 0, sizeof *e);
    e->name = ldm_xstrdup(name);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->nbytes = (size_t)numel * st_dtype_size(dtype);
    return e;
}

void st_writer_add(StWriter *w, const char *name, StDtype dtype, int ndim, const int64_t *shape,
                   const void *data) {
    StWEntry *e = writer_append(w, name, dtype, ndim, shape);
    if (!e) return;
    e->owned = ldm_xmalloc(e->nbytes);
    if (e->nbytes) memcpy(e->owned, data, e->nbytes);
    e->data = e->owned;
}

/* Like st_writer_add, but the data is taken over (owned) or only referenced
 * (borrowed: must stay valid until st_writer_save); used by st_convert. */
static void writer_add_nocopy(StWriter *w, const char *name, StDtype dtype, int ndim,
                              const int64_t *shape, const void *data, int take_ownership) {
    StWEntry *e = writer_append(w, name, dtype, ndim, shape);
    if (!e) {
        if (take_ownership) free((void *)data);
        return;
    }
    e->data = data;
    e->owned = take_ownership ? (void *)data : NULL;
}

void st_writer_add_ref(StWriter *w, const char *name, StDtype dtype, int ndim,
                       const int64_t *shape, const void *data, int take_ownership) {
    writer_add_nocopy(w, name, dtype, ndim, shape, data, take_ownership);
}

void st_writer_meta(StWriter *w, const char *key, const char *value) {
    for (int i = 0; i < w->n_meta; i++) {
        if (strcmp(w->meta_keys[i], key) == 0) { /* later value wins */
            free(w->meta_values[i]);
            w->meta_values[i] = ldm_xstrdup(value);
            return;
        }
    }
    if (w->n_meta == w->cap_meta) {
        w->cap_meta = w->cap_meta ? 2 * w->cap_meta : 8;
        w->meta_keys = ldm_xrealloc(w->meta_keys, (size_t)w->cap_meta * sizeof(char *));
        w->meta_values = ldm_xrealloc(w->meta_values, (size_t)w->cap_meta * sizeof(char *));
    }
    w->meta_keys[w->n_meta] = ldm_xstrdup(key);
    w->meta_values[w->n_meta] = ldm_xstrdup(value);
    w->n_meta++;
}

/* json_object_set_new that reports invalid UTF-8 keys/values (NULL json). */
static int set_checked(json_t *obj, const char *key, json_t *val, const char *path,
                       const char *what) {
    if (!val || json_object_set_new(obj, key, val) != 0)
        return ldm_fail("%s: %s '%s': expected valid UTF-8, got an invalid string", path, what,
                        key);
    return 0;
}

/* Build the header JSON: __metadata__ first, then tensors in insertion order
 * with contiguous data offsets. Returns a malloc'd compact string or NULL. */
static char *writer_header(const StWriter *w, const char *path) {
    json_t *root = json_object();
    if (w->n_meta) {
        json_t *meta = json_object();
        json_object_set_new(root, "__metadata__", meta);
        for (int i = 0; i < w->n_meta; i++)
            if (set_checked(meta, w->meta_keys[i], json_string(w->meta_values[i]), path,
                            "metadata") != 0)
                goto fail;
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const StWEntry *e = &w->t[i];
        json_t *shape = json_array();
        for (int d = 0; d < e->ndim; d++) json_array_append_new(shape, json_integer(e->shape[d]));
        json_t *ent = json_object();
        json_object_set_new(ent, "dtype", json_string(st_dtype_name(e->dtype)));
        json_object_set_new(ent, "shape", shape);
        json_object_set_new(ent, "data_offsets",
                            json_pack("[II]", (json_int_t)off, (json_int_t)(off + e->nbytes)));
        off += e->nbytes;
        if (set_checked(root, e->name, ent, path, "tensor") != 0) goto fail;
    }
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!s) ldm_fail("%s: header: cannot serialise the JSON header", path);
    return s;
fail:
    json_decref(root);
    return NULL;
}

int st_writer_save(StWriter *w, const char *path) {
    if (w->error) return ldm_fail("%s: %s", path, w->error);
    char *hdr = writer_header(w, path);
    if (!hdr) return -1;
    size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));

    LdmOutFile o;
    if (ldm_out_open(&o, path) != 0) {
        free(hdr);
        return -1;
    }
    int ok = fwrite(len8, 1, 8, o.fp) == 8 && fwrite(hdr, 1, hlen, o.fp) == hlen;
    for (size_t i = hlen; ok && i < padded; i++) ok = fputc(' ', o.fp) != EOF;
    for (int i = 0; ok && i < w->n; i++)
        ok = w->t[i].nbytes == 0 || fwrite(w->t[i].data, 1, w->t[i].nbytes, o.fp) == w->t[i].nbytes;
    free(hdr);
    if (!ok) {
        int rc = ldm_fail("%s: write error: %s", path, strerror(errno));
        ldm_out_abort(&o);
        return rc;
    }
    return ldm_out_commit(&o);
}

/* ------------------------------------------------------------------------
 * converter
 * ------------------------------------------------------------------------ */

/* Convert float tensor t to dtype `to`; returns a malloc'd buffer. */
static void *convert_tensor(const StTensor *t, StDtype to) {
    size_t n = (size_t)t->numel;
    float *f = ldm_xmalloc(n * sizeof(float));
    st_to_f32(t, f); /* cannot fail: t is a float dtype */
    if (to == ST_F32) return f;
    uint8_t *out = ldm_xmalloc(n * 2);
    for (size_t i = 0; i < n; i++) {
        uint16_t h = to == ST_F16 ? st_f32_to_f16(f[i]) : st_f32_to_bf16(f[i]);
        out[2 * i] = (uint8_t)h;
        out[2 * i + 1] = (uint8_t)(h >> 8);
    }
    free(f);
    return out;
}

int st_convert(const char *in_path, const char *out_path, StDtype to) {
    if (to != ST_F32 && to != ST_F16 && to != ST_BF16 && to != ST_KEEP)
        return ldm_fail("%s: expected a target dtype F32, F16 or BF16, got %s", out_path,
                        st_dtype_name(to));
    StFile in;
    if (st_open(&in, in_path) != 0) return -1;
    StWriter *w = st_writer_new();
    for (int i = 0; i < in.n_meta; i++) st_writer_meta(w, in.meta_keys[i], in.meta_values[i]);
    for (int i = 0; i < in.n_tensors; i++) {
        const StTensor *t = &in.tensors[i];
        int keep = to == ST_KEEP || !dtype_is_float(t->dtype) || t->dtype == to || !strchr(t->name, '.');
        if (keep) /* borrow from the mapping, which outlives the save */
            writer_add_nocopy(w, t->name, t->dtype, t->ndim, t->shape, t->data, 0);
        else
            writer_add_nocopy(w, t->name, to, t->ndim, t->shape, convert_tensor(t, to), 1);
    }
    int rc = st_writer_save(w, out_path);
    st_writer_free(w);
    st_close(&in);
    return rc;
}
