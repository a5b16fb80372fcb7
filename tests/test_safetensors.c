/*
 * test_safetensors.c - Check tests of runtime/safetensors.c: dtype helpers,
 * f16/bf16 scalar conversions (exhaustive and against independent
 * references), writer round trip and determinism, reading the shared goldens,
 * the checkpoint converter on sd1-tiny/model.safetensors, and the error
 * messages for malformed files.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "testutil.h"
#include "util.h"

/* ------------------------------------------------------------------------
 * helpers
 * ------------------------------------------------------------------------ */

/* Scratch directory shared by the tests of one tcase (unchecked fixture:
 * created before the forked tests run, removed after all of them). */
static char g_tmp[64];

static void tmp_setup(void) {
    strcpy(g_tmp, "/tmp/ldm_st_test_XXXXXX");
    if (!mkdtemp(g_tmp)) g_tmp[0] = 0;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void tmp_teardown(void) {
    if (g_tmp[0]) nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* "<scratch>/<name>" into buf. */
static const char *tmp_file(char *buf, size_t n, const char *name) {
    ck_assert_msg(g_tmp[0], "no scratch directory");
    snprintf(buf, n, "%s/%s", g_tmp, name);
    return buf;
}

/* "<shared>/goldens/<rel>" into buf. */
static const char *golden(char *buf, size_t n, const char *rel) {
    snprintf(buf, n, "%s/goldens/%s", test_shared_dir(), rel);
    return buf;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(p, 1, n, fp), n);
    ck_assert_int_eq(fclose(fp), 0);
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    char *p = ldm_read_file(path, n);
    ck_assert_msg(p, "%s", ldm_last_error());
    return (uint8_t *)p;
}

/* Write a safetensors file from a header string and `data_size` data bytes
 * (value i & 0xff at data byte i). */
static void make_st(const char *path, const char *header, size_t data_size) {
    size_t hl = strlen(header);
    uint8_t *buf = ldm_xmalloc(8 + hl + data_size);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_size; i++) buf[8 + hl + i] = (uint8_t)i;
    write_bytes(path, buf, 8 + hl + data_size);
    free(buf);
}

/* st_open must fail, leave f cleared and record a message naming the file
 * and containing each of the given fragments (NULL-terminated list). */
static void expect_open_error(const char *path, ...) {
    StFile f;
    ck_assert_int_eq(st_open(&f, path), -1);
    ck_assert_ptr_null(f.map);
    ck_assert_ptr_null(f.tensors);
    ck_assert_int_eq(f.n_tensors, 0);
    st_close(&f); /* must be harmless after a failed open */
    const char *msg = ldm_last_error();
    ck_assert_msg(strncmp(msg, path, strlen(path)) == 0 && msg[strlen(path)] == ':',
                  "message does not start with '%s:': %s", path, msg);
    va_list ap;
    va_start(ap, path);
    for (const char *want; (want = va_arg(ap, const char *));)
        ck_assert_msg(strstr(msg, want), "message lacks '%s': %s", want, msg);
    va_end(ap);
}

/* Open a hand-written header and expect an error containing the fragments. */
#define EXPECT_HEADER_ERROR(hdr, data_size, ...)                        \
    do {                                                                \
        char p_[512];                                                   \
        tmp_file(p_, sizeof p_, "bad.safetensors");                     \
        make_st(p_, hdr, data_size);                                    \
        expect_open_error(p_, __VA_ARGS__, (const char *)NULL);         \
    } while (0)

/* splitmix64: deterministic test randomness. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bitsf(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t load16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* Assertion for hot loops: Check's ck_assert* does a pipe write per call
 * (to record the last passed location), far too slow for 10^5 iterations. */
#define FAST_ASSERT(cond, ...)                          \
    do {                                                \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);         \
    } while (0)

static int f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }

/* ------------------------------------------------------------------------
 * dtypes
 * ------------------------------------------------------------------------ */

START_TEST(test_dtype_names) {
    static const struct {
        const char *name;
        StDtype dt;
        size_t size;
    } want[] = {{"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2}, {"F64", ST_F64, 8},
                {"I64", ST_I64, 8}, {"I32", ST_I32, 4}, {"I16", ST_I16, 2},   {"I8", ST_I8, 1},
                {"U8", ST_U8, 1},   {"BOOL", ST_BOOL, 1}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        StDtype dt = ST_BOOL;
        ck_assert_int_eq(st_dtype_parse(want[i].name, &dt), 0);
        ck_assert_int_eq(dt, want[i].dt);
        ck_assert_str_eq(st_dtype_name(want[i].dt), want[i].name);
        ck_assert_uint_eq(st_dtype_size(want[i].dt), want[i].size);
    }
    StDtype dt;
    ck_assert_int_eq(st_dtype_parse("F8", &dt), -1);
    ck_assert_int_eq(st_dtype_parse("f32", &dt), -1);
    ck_assert_int_eq(st_dtype_parse("", &dt), -1);
}
END_TEST

/* ------------------------------------------------------------------------
 * scalar conversions
 * ------------------------------------------------------------------------ */

/* Every half value survives f16 -> f32 -> f16; NaNs stay NaNs of the same sign. */
START_TEST(test_f16_roundtrip_all) {
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        uint16_t back = st_f32_to_f16(f);
        if (f16_is_nan((uint16_t)h)) {
            FAST_ASSERT(isnan(f), "0x%04x -> %g", h, (double)f);
            FAST_ASSERT(f16_is_nan(back) && (back & 0x8000) == (h & 0x8000),
                        "NaN 0x%04x -> 0x%04x", h, back);
        } else {
            FAST_ASSERT(back == h, "0x%04x -> %a -> 0x%04x", h, (double)f, back);
        }
    }
}
END_TEST

/* Values of special halves, computed by hand from the IEEE definition. */
START_TEST(test_f16_special_values) {
    ck_assert(st_f16_to_f32(0x3c00) == 1.0f);
    ck_assert(st_f16_to_f32(0xc000) == -2.0f);
    ck_assert(st_f16_to_f32(0x7bff) == 65504.0f);
    ck_assert(st_f16_to_f32(0x0400) == 0x1p-14f);   /* smallest normal */
    ck_assert(st_f16_to_f32(0x0001) == 0x1p-24f);   /* smallest subnormal */
    ck_assert(st_f16_to_f32(0x03ff) == 0x3ffp-24f); /* largest subnormal */
    ck_assert(st_f16_to_f32(0x8001) == -0x1p-24f);
    ck_assert_uint_eq(fbits(st_f16_to_f32(0x8000)), 0x80000000u); /* -0 */
    ck_assert(isinf(st_f16_to_f32(0x7c00)) && st_f16_to_f32(0x7c00) > 0);
    ck_assert(isinf(st_f16_to_f32(0xfc00)) && st_f16_to_f32(0xfc00) < 0);
    ck_assert(isnan(st_f16_to_f32(0x7e00)));
    ck_assert(isnan(st_f16_to_f32(0x7c01))); /* signalling NaN stays NaN */

    ck_assert_uint_eq(st_f32_to_f16(0.0f), 0x0000);
    ck_assert_uint_eq(st_f32_to_f16(-0.0f), 0x8000);
    ck_assert_uint_eq(st_f32_to_f16(INFINITY), 0x7c00);
    ck_assert_uint_eq(st_f32_to_f16(-INFINITY), 0xfc00);
    ck_assert(f16_is_nan(st_f32_to_f16(NAN)));
    ck_assert(f16_is_nan(st_f32_to_f16(bitsf(0x7f800001u)))); /* payload only in low bits */
    ck_assert(f16_is_nan(st_f32_to_f16(bitsf(0xffc00000u))));
    ck_assert_uint_eq(st_f32_to_f16(bitsf(0xffc00000u)) & 0x8000, 0x8000);
    ck_assert_uint_eq(st_f32_to_f16(1e10f), 0x7c00);
    ck_assert_uint_eq(st_f32_to_f16(-1e10f), 0xfc00);
    ck_assert_uint_eq(st_f32_to_f16(1e-10f), 0x0000);
    ck_assert_uint_eq(st_f32_to_f16(-1e-10f), 0x8000);
    ck_assert_uint_eq(st_f32_to_f16(bitsf(1)), 0x0000); /* float subnormal */
}
END_TEST

/* Halfway cases must round to the even neighbour. */
START_TEST(test_f32_to_f16_halfway) {
    static const struct {
        float f;
        uint16_t h;
    } cases[] = {
        {1.0f + 0x1p-11f, 0x3c00},          /* 1 + ulp/2 -> 1 (even) */
        {1.0f + 3 * 0x1p-11f, 0x3c02},      /* 1 + 3ulp/2 -> 1 + 2ulp (even) */
        {1.0f + 0x1p-11f + 0x1p-20f, 0x3c01}, /* just above halfway -> up */
        {1.0f + 0x1p-11f - 0x1p-20f, 0x3c00}, /* just below halfway -> down */
        {2048.0f + 1.0f, 0x6800},           /* 2049 between 2048 and 2050 -> 2048 */
        {2048.0f + 3.0f, 0x6802},           /* 2051 -> 2052 */
        {65504.0f, 0x7bff},                 /* largest finite */
        {65519.0f, 0x7bff},                 /* below the halfway point to 65536 */
        {65520.0f, 0x7c00},                 /* halfway: 65504 is odd, so -> inf */
        {-65520.0f, 0xfc00},
        {0x1p-25f, 0x0000},                 /* half the smallest subnormal -> 0 */
        {0x1p-25f * 1.0000001f, 0x0001},    /* a bit more -> smallest subnormal */
        {3 * 0x1p-25f, 0x0002},             /* 1.5 subnormal ulps -> 2 */
        {5 * 0x1p-25f, 0x0002},             /* 2.5 -> 2 */
        {7 * 0x1p-25f, 0x0004},             /* 3.5 -> 4 */
        {-3 * 0x1p-25f, 0x8002},
        {0x1p-14f - 0x1p-25f, 0x0400},      /* between 0x3ff subnormal and min normal -> even */
        {0x3fep-24f + 0x1p-25f, 0x03fe},    /* 0x3fe.8 -> 0x3fe */
        {0x1p-14f + 0x1p-25f, 0x0400},      /* min normal + half ulp -> min normal */
        {0x1p-14f + 3 * 0x1p-25f, 0x0402},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = st_f32_to_f16(cases[i].f);
        ck_assert_msg(h == cases[i].h, "case %zu: %a -> 0x%04x, want 0x%04x", i,
                      (double)cases[i].f, h, cases[i].h);
    }
}
END_TEST

/* Random floats: the result is the nearest half (ties to even), checked
 * against the neighbours in double arithmetic and, where the compiler has
 * it, against the hardware/libgcc _Float16 conversion. */
START_TEST(test_f32_to_f16_random) {
    uint64_t s = 12345;
    for (int i = 0; i < 400000; i++) {
        uint32_t u = (uint32_t)rng_next(&s);
        /* half the draws in the interesting exponent range 2^-26 .. 2^17 */
        if (i & 1) u = (u & 0x807fffffu) | ((uint32_t)(101 + (u >> 23) % 44) << 23);
        float f = bitsf(u);
        if (isnan(f)) continue;
        uint16_t h = st_f32_to_f16(f);
#ifdef __FLT16_MANT_DIG__
        _Float16 r = (_Float16)f;
        uint16_t hr;
        memcpy(&hr, &r, 2);
        FAST_ASSERT(h == hr, "%a -> 0x%04x, _Float16 gives 0x%04x", (double)f, h, hr);
#endif
        FAST_ASSERT((h & 0x8000) == ((u >> 16) & 0x8000), "%a -> 0x%04x: sign", (double)f, h);
        double x = fabs((double)f);
        uint16_t m = h & 0x7fff;
        if (m == 0x7c00) { /* inf: only from |f| >= 65520 */
            FAST_ASSERT(x >= 65520.0, "%a -> inf", x);
            continue;
        }
        double err = fabs((double)st_f16_to_f32(m) - x);
        if (m > 0) {
            double e2 = fabs((double)st_f16_to_f32((uint16_t)(m - 1)) - x);
            FAST_ASSERT(err < e2 || (err == e2 && !(m & 1)), "%a -> 0x%04x not nearest", x, m);
        }
        FAST_ASSERT(m != 0x7bff || x < 65520.0, "%a -> 65504, want inf", x);
        if (m < 0x7bff) {
            double e2 = fabs((double)st_f16_to_f32((uint16_t)(m + 1)) - x);
            FAST_ASSERT(err < e2 || (err == e2 && !(m & 1)), "%a -> 0x%04x not nearest", x, m);
        }
    }
}
END_TEST

/* bf16: the usual bit formula for finite values, nearest-even property,
 * inf and NaN. */
START_TEST(test_f32_to_bf16) {
    uint64_t s = 777;
    for (int i = 0; i < 400000; i++) {
        uint32_t u = (uint32_t)rng_next(&s);
        if (i % 3 == 0) u = (u & 0xffff0000u) | 0x8000u; /* exact halfway cases */
        float f = bitsf(u);
        uint16_t b = st_f32_to_bf16(f);
        if (isnan(f)) {
            FAST_ASSERT(isnan(st_bf16_to_f32(b)) && (b & 0x8000) == ((u >> 16) & 0x8000),
                        "NaN 0x%08x -> 0x%04x", u, b);
            continue;
        }
        uint16_t want = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        FAST_ASSERT(b == want, "0x%08x -> 0x%04x, want 0x%04x", u, b, want);
        /* bf16 -> f32 is exact: the bits are the top 16 */
        FAST_ASSERT(fbits(st_bf16_to_f32(b)) == (uint32_t)b << 16, "bf16 0x%04x -> f32", b);
        if (isinf(st_bf16_to_f32(b))) continue;
        double x = (double)f, err = fabs((double)st_bf16_to_f32(b) - x);
        double lo = fabs((double)st_bf16_to_f32((uint16_t)(b - 1)) - x);
        double hi = fabs((double)st_bf16_to_f32((uint16_t)(b + 1)) - x);
        if ((b & 0x7fff) != 0 && !isnan(st_bf16_to_f32((uint16_t)(b - 1))))
            FAST_ASSERT(err < lo || (err == lo && !(b & 1)), "%a -> 0x%04x not nearest", x, b);
        if ((b & 0x7fff) != 0x7f7f && !isnan(st_bf16_to_f32((uint16_t)(b + 1))) &&
            !isinf(st_bf16_to_f32((uint16_t)(b + 1))))
            FAST_ASSERT(err < hi || (err == hi && !(b & 1)), "%a -> 0x%04x not nearest", x, b);
    }
    ck_assert_uint_eq(st_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(st_f32_to_bf16(bitsf(0x3f808000u)), 0x3f80); /* tie -> even */
    ck_assert_uint_eq(st_f32_to_bf16(bitsf(0x3f818000u)), 0x3f82); /* tie -> even */
    ck_assert_uint_eq(st_f32_to_bf16(INFINITY), 0x7f80);
    ck_assert_uint_eq(st_f32_to_bf16(-INFINITY), 0xff80);
    ck_assert_uint_eq(st_f32_to_bf16(bitsf(0x7f7fffffu)), 0x7f80); /* FLT_MAX rounds to inf */
    ck_assert(isnan(st_bf16_to_f32(st_f32_to_bf16(bitsf(0x7f800001u))))); /* NaN not -> inf */
    ck_assert(st_bf16_to_f32(0xc040) == -3.0f);
}
END_TEST

/* ------------------------------------------------------------------------
 * writer round trip
 * ------------------------------------------------------------------------ */

/* Tensor set used by the writer tests: mixed dtypes, a scalar, an empty
 * tensor and an odd-sized F16 that leaves the following F32 misaligned. */
static uint16_t w_f16[3] = {0x3c00, 0xc000, 0x7bff};
static float w_f32[6] = {1.5f, -2.25f, 3e-8f, 1e30f, -0.0f, 7.0f};
static double w_f64 = -1234.5;
static uint16_t w_bf16[2] = {0x3f80, 0xc040};
static int64_t w_i64[4] = {0, -5, INT32_MAX, INT32_MIN};
static int8_t w_i8[3] = {-128, 0, 127};
static uint8_t w_u8[2] = {0, 255};
static int16_t w_i16[2] = {-32768, 32767};
static uint8_t w_bool[3] = {1, 0, 1};
static const char *w_meta_val =
    "quote \" backslash \\ newline \n tab \t utf8 \xc3\xa9 {\"json\": 1}";

static StWriter *make_writer(void) {
    StWriter *w = st_writer_new();
    int64_t s3[] = {3}, s23[] = {2, 3}, s2[] = {2}, s4[] = {4}, s04[] = {0, 4};
    st_writer_meta(w, "format", "pt");
    st_writer_meta(w, "note", "will be replaced");
    st_writer_add(w, "a.odd_f16", ST_F16, 1, s3, w_f16);
    st_writer_add(w, "b.misaligned_f32", ST_F32, 2, s23, w_f32);
    st_writer_add(w, "scalar", ST_F64, 0, NULL, &w_f64);
    st_writer_add(w, "empty", ST_I32, 2, s04, NULL);
    st_writer_add(w, "bf", ST_BF16, 1, s2, w_bf16);
    st_writer_add(w, "i64", ST_I64, 1, s4, w_i64);
    st_writer_add(w, "i8", ST_I8, 1, s3, w_i8);
    st_writer_add(w, "u8", ST_U8, 1, s2, w_u8);
    st_writer_add(w, "i16", ST_I16, 1, s2, w_i16);
    st_writer_add(w, "mask", ST_BOOL, 1, s3, w_bool);
    st_writer_meta(w, "note", w_meta_val);
    return w;
}

START_TEST(test_writer_roundtrip) {
    char path[512];
    tmp_file(path, sizeof path, "rt.safetensors");
    StWriter *w = make_writer();
    ck_assert_msg(st_writer_save(w, path) == 0, "%s", ldm_last_error());
    st_writer_free(w);

    /* raw layout: header length multiple of 8, padded with spaces, data packed */
    size_t n;
    uint8_t *raw = read_bytes(path, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | raw[i];
    ck_assert_uint_eq(hl % 8, 0);
    size_t data_bytes = 6 + 24 + 8 + 0 + 4 + 32 + 3 + 2 + 4 + 3;
    ck_assert_uint_eq(n, 8 + hl + data_bytes);
    ck_assert_int_eq(raw[8], '{');
    size_t end = 8 + hl;
    while (raw[end - 1] == ' ') end--;
    ck_assert_int_eq(raw[end - 1], '}');
    ck_assert_uint_lt(8 + hl - end, 8);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)raw + 8, hl, 0, &jerr);
    ck_assert_msg(root, "%s", jerr.text);
    /* deterministic order: __metadata__ first, then insertion order */
    const char *order[] = {"__metadata__", "a.odd_f16", "b.misaligned_f32", "scalar", "empty",
                           "bf", "i64", "i8", "u8", "i16", "mask"};
    int k = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        ck_assert_int_lt(k, 11);
        ck_assert_str_eq(key, order[k++]);
    }
    ck_assert_int_eq(k, 11);
    json_decref(root);

    StFile f;
    ck_assert_msg(st_open(&f, path) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, 10);
    for (int i = 0; i < 10; i++) ck_assert_str_eq(f.tensors[i].name, order[i + 1]);
    ck_assert_str_eq(st_metadata(&f, "format"), "pt");
    ck_assert_str_eq(st_metadata(&f, "note"), w_meta_val);
    ck_assert_int_eq(f.n_meta, 2);
    ck_assert_ptr_null(st_metadata(&f, "missing"));
    ck_assert_ptr_null(st_find(&f, "missing"));

    const StTensor *t = st_find(&f, "a.odd_f16");
    ck_assert_int_eq(t->dtype, ST_F16);
    ck_assert_int_eq(t->ndim, 1);
    ck_assert_int_eq(t->shape[0], 3);
    ck_assert_mem_eq(t->data, w_f16, 6);
    float out[6];
    ck_assert_int_eq(st_to_f32(t, out), 0);
    ck_assert(out[0] == 1.0f && out[1] == -2.0f && out[2] == 65504.0f);

    t = st_find(&f, "b.misaligned_f32");
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->shape[0], 2);
    ck_assert_int_eq(t->shape[1], 3);
    ck_assert_int_eq(t->numel, 6);
    ck_assert_uint_eq(t->nbytes, 24);
    ck_assert_uint_eq((uintptr_t)t->data % 4, 2); /* the point of this tensor */
    ck_assert_int_eq(st_to_f32(t, out), 0);
    ck_assert_mem_eq(out, w_f32, sizeof w_f32);

    t = st_find(&f, "scalar");
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_int_eq(t->numel, 1);
    ck_assert_int_eq(st_to_f32(t, out), 0);
    ck_assert(out[0] == -1234.5f);

    t = st_find(&f, "empty");
    ck_assert_int_eq(t->numel, 0);
    ck_assert_uint_eq(t->nbytes, 0);
    ck_assert_int_eq(t->shape[0], 0);
    ck_assert_int_eq(t->shape[1], 4);

    t = st_find(&f, "bf");
    ck_assert_int_eq(st_to_f32(t, out), 0);
    ck_assert(out[0] == 1.0f && out[1] == -3.0f);

    int32_t iv[4];
    ck_assert_int_eq(st_to_i32(st_find(&f, "i64"), iv), 0);
    ck_assert(iv[0] == 0 && iv[1] == -5 && iv[2] == INT32_MAX && iv[3] == INT32_MIN);
    ck_assert_int_eq(st_to_i32(st_find(&f, "i8"), iv), 0);
    ck_assert(iv[0] == -128 && iv[1] == 0 && iv[2] == 127);
    ck_assert_int_eq(st_to_i32(st_find(&f, "u8"), iv), 0);
    ck_assert(iv[0] == 0 && iv[1] == 255);
    ck_assert_int_eq(st_to_i32(st_find(&f, "i16"), iv), 0);
    ck_assert(iv[0] == -32768 && iv[1] == 32767);
    t = st_find(&f, "mask");
    ck_assert_int_eq(t->dtype, ST_BOOL);
    ck_assert_mem_eq(t->data, w_bool, 3);

    /* wrong-kind conversions name the tensor */
    ck_assert_int_eq(st_to_i32(st_find(&f, "b.misaligned_f32"), iv), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "'b.misaligned_f32'"));
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "F32"));
    ck_assert_int_eq(st_to_f32(st_find(&f, "i64"), out), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "'i64'"));
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "I64"));
    st_close(&f);
    st_close(&f); /* double close is harmless */
    free(raw);
}
END_TEST

/* Same input, same bytes; nothing but the outputs is left in the folder. */
START_TEST(test_writer_deterministic) {
    char p1[512], p2[512];
    tmp_file(p1, sizeof p1, "det1.safetensors");
    tmp_file(p2, sizeof p2, "det2.safetensors");
    StWriter *w = make_writer();
    ck_assert_int_eq(st_writer_save(w, p1), 0);
    st_writer_free(w);
    w = make_writer();
    ck_assert_int_eq(st_writer_save(w, p2), 0);
    ck_assert_int_eq(st_writer_save(w, p2), 0); /* overwrite in place */
    st_writer_free(w);
    size_t n1, n2;
    uint8_t *a = read_bytes(p1, &n1), *b = read_bytes(p2, &n2);
    ck_assert_uint_eq(n1, n2);
    ck_assert_mem_eq(a, b, n1);
    free(a);
    free(b);
    DIR *d = opendir(g_tmp);
    ck_assert_ptr_nonnull(d);
    for (struct dirent *e; (e = readdir(d));)
        ck_assert_msg(!strstr(e->d_name, ".tmp."), "leftover temp file %s", e->d_name);
    closedir(d);
}
END_TEST

/* Bad adds are reported by save, which then writes nothing. */
START_TEST(test_writer_errors) {
    char path[512];
    int64_t s1[] = {1}, neg[] = {-2};
    float v = 1;
    tmp_file(path, sizeof path, "werr.safetensors");

    StWriter *w = st_writer_new();
    st_writer_add(w, "dup", ST_F32, 1, s1, &v);
    st_writer_add(w, "dup", ST_F32, 1, s1, &v);
    ck_assert_int_eq(st_writer_save(w, path), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), path));
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "'dup'"));
    st_writer_free(w);
    ck_assert_int_ne(access(path, F_OK), 0);

    w = st_writer_new();
    int64_t s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    st_writer_add(w, "nine", ST_F32, 9, s9, &v);
    ck_assert_int_eq(st_writer_save(w, path), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "'nine'"));
    st_writer_free(w);

    w = st_writer_new();
    st_writer_add(w, "neg", ST_F32, 1, neg, &v);
    ck_assert_int_eq(st_writer_save(w, path), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "'neg'"));
    st_writer_free(w);

    w = st_writer_new();
    st_writer_meta(w, "bad", "\xff\xfe not utf-8");
    ck_assert_int_eq(st_writer_save(w, path), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "'bad'"));
    st_writer_free(w);
    ck_assert_int_ne(access(path, F_OK), 0);

    w = st_writer_new();
    st_writer_add(w, "x", ST_F32, 1, s1, &v);
    ck_assert_int_eq(st_writer_save(w, "/nonexistent-dir/x.safetensors"), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "/nonexistent-dir/x.safetensors"));
    st_writer_free(w);

    /* an empty writer makes a valid empty file */
    w = st_writer_new();
    ck_assert_int_eq(st_writer_save(w, path), 0);
    st_writer_free(w);
    StFile f;
    ck_assert_msg(st_open(&f, path) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, 0);
    ck_assert_int_eq(f.n_meta, 0);
    st_close(&f);
}
END_TEST

/* Integer conversion range check names tensor, value and element. */
START_TEST(test_to_i32_range) {
    char path[512];
    tmp_file(path, sizeof path, "range.safetensors");
    int64_t v[3] = {1, (int64_t)INT32_MAX + 1, 2}, s3[] = {3};
    StWriter *w = st_writer_new();
    st_writer_add(w, "ids", ST_I64, 1, s3, v);
    ck_assert_int_eq(st_writer_save(w, path), 0);
    st_writer_free(w);
    StFile f;
    ck_assert_int_eq(st_open(&f, path), 0);
    int32_t out[3];
    ck_assert_int_eq(st_to_i32(st_find(&f, "ids"), out), -1);
    const char *msg = ldm_last_error();
    ck_assert_msg(strstr(msg, "'ids'") && strstr(msg, "2147483648") && strstr(msg, "int32"),
                  "%s", msg);
    st_close(&f);
}
END_TEST

/* ------------------------------------------------------------------------
 * shared goldens
 * ------------------------------------------------------------------------ */

static void check_shape(const StFile *f, const char *name, StDtype dt, int ndim,
                        const int64_t *shape) {
    const StTensor *t = st_find(f, name);
    ck_assert_msg(t, "tensor %s missing", name);
    ck_assert_int_eq(t->dtype, dt);
    ck_assert_int_eq(t->ndim, ndim);
    for (int i = 0; i < ndim; i++) ck_assert_int_eq(t->shape[i], shape[i]);
}

/* README: sd1-tiny/unet.io.safetensors tensors and metadata. */
START_TEST(test_golden_unet_io) {
    char path[512];
    golden(path, sizeof path, "sd1-tiny/unet.io.safetensors");
    StFile f;
    ck_assert_msg(st_open(&f, path) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, 16);
    const int64_t x[] = {2, 4, 16, 16}, ts[] = {2}, ctx[] = {2, 77, 64};
    const char *cases[] = {"case0", "case1", "case2", "case3"};
    for (int c = 0; c < 4; c++) {
        char name[64];
        snprintf(name, sizeof name, "%s.x", cases[c]);
        check_shape(&f, name, ST_F32, 4, x);
        snprintf(name, sizeof name, "%s.timesteps", cases[c]);
        check_shape(&f, name, ST_F32, 1, ts);
        snprintf(name, sizeof name, "%s.context", cases[c]);
        check_shape(&f, name, ST_F32, 3, ctx);
        snprintf(name, sizeof name, "%s.eps", cases[c]);
        check_shape(&f, name, ST_F32, 4, x);
    }
    ck_assert_ptr_null(st_find(&f, "case4.x"));
    ck_assert_ptr_null(st_find(&f, ""));

    /* tolerance: a JSON document in a string (values from the README table) */
    const char *tol = st_metadata(&f, "tolerance");
    ck_assert_ptr_nonnull(tol);
    json_error_t jerr;
    json_t *jt = json_loads(tol, 0, &jerr);
    ck_assert_msg(jt, "tolerance is not JSON: %s", jerr.text);
    static const double want_tol[] = {0.0005, 0.0002, 0.0002, 0.0005};
    for (int c = 0; c < 4; c++) {
        char name[64];
        snprintf(name, sizeof name, "%s.eps", cases[c]);
        json_t *e = json_object_get(json_object_get(jt, name), "max_abs");
        ck_assert_msg(json_is_number(e), "tolerance[%s].max_abs missing", name);
        ck_assert_double_eq_tol(json_number_value(e), want_tol[c], 1e-12);
    }
    json_decref(jt);
    ck_assert_ptr_null(st_metadata(&f, "no-such-key"));

    /* data: min/max/mean of case0.eps match the metadata stats */
    const char *stats = st_metadata(&f, "stats");
    ck_assert_ptr_nonnull(stats);
    json_t *js = json_loads(stats, 0, &jerr);
    ck_assert_ptr_nonnull(js);
    json_t *s0 = json_object_get(js, "case0.eps");
    const StTensor *t = st_find(&f, "case0.eps");
    float *v = ldm_xmalloc((size_t)t->numel * sizeof(float));
    ck_assert_int_eq(st_to_f32(t, v), 0);
    double mn = v[0], mx = v[0], sum = 0;
    for (int64_t i = 0; i < t->numel; i++) {
        mn = fmin(mn, v[i]);
        mx = fmax(mx, v[i]);
        sum += v[i];
    }
    ck_assert(mn == json_number_value(json_object_get(s0, "min")));
    ck_assert(mx == json_number_value(json_object_get(s0, "max")));
    ck_assert_double_eq_tol(sum / (double)t->numel, json_number_value(json_object_get(s0, "mean")),
                            1e-6);
    free(v);
    json_decref(js);
    st_close(&f);
}
END_TEST

/* ------------------------------------------------------------------------
 * converter
 * ------------------------------------------------------------------------ */

static const char *schedule_names[] = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2"};
#define POSITION_IDS "cond_stage_model.transformer.text_model.embeddings.position_ids"

/* Expected converted 16-bit value of one original float. */
typedef uint16_t (*Round16)(float);

/* out must be `in` with every float network weight turned into `to` whose
 * values equal conv(orig) (16-bit targets) or back(orig16) (F32 target
 * from a 16-bit `in`); everything else byte-identical. */
static void check_converted(const StFile *in, const StFile *out, StDtype to, Round16 conv) {
    ck_assert_int_eq(out->n_tensors, in->n_tensors);
    ck_assert_int_eq(out->n_meta, in->n_meta);
    for (int i = 0; i < in->n_meta; i++)
        ck_assert_str_eq(st_metadata(out, in->meta_keys[i]), in->meta_values[i]);
    int n_conv = 0;
    float *buf = NULL;
    size_t cap = 0;
    for (int i = 0; i < in->n_tensors; i++) {
        const StTensor *a = &in->tensors[i], *b = &out->tensors[i];
        FAST_ASSERT(strcmp(a->name, b->name) == 0, "tensor %d: %s != %s", i, a->name, b->name);
        FAST_ASSERT(a->ndim == b->ndim, "%s: ndim %d != %d", a->name, a->ndim, b->ndim);
        for (int d = 0; d < a->ndim; d++)
            FAST_ASSERT(a->shape[d] == b->shape[d], "%s: shape[%d] differs", a->name, d);
        int is_float = a->dtype == ST_F32 || a->dtype == ST_F16 || a->dtype == ST_BF16;
        if (!is_float || !strchr(a->name, '.') || a->dtype == to) {
            FAST_ASSERT(b->dtype == a->dtype, "%s changed dtype", a->name);
            FAST_ASSERT(a->nbytes == b->nbytes && memcmp(a->data, b->data, a->nbytes) == 0,
                        "%s changed", a->name);
            continue;
        }
        n_conv++;
        FAST_ASSERT(b->dtype == to, "%s is %s", a->name, st_dtype_name(b->dtype));
        if ((size_t)a->numel > cap) {
            cap = (size_t)a->numel;
            buf = ldm_xrealloc(buf, cap * sizeof(float));
        }
        FAST_ASSERT(st_to_f32(a, buf) == 0, "%s", ldm_last_error());
        for (int64_t j = 0; j < a->numel; j++) {
            if (to == ST_F32) {
                float g;
                memcpy(&g, b->data + 4 * j, 4);
                if (g != buf[j]) ck_abort_msg("%s[%lld]: %a != %a", a->name, (long long)j,
                                              (double)g, (double)buf[j]);
            } else {
                uint16_t g = load16(b->data + 2 * j), w = conv(buf[j]);
                if (g != w) ck_abort_msg("%s[%lld]: 0x%04x != 0x%04x", a->name, (long long)j, g,
                                         w);
            }
        }
    }
    free(buf);
    ck_assert_int_eq(n_conv, in->n_tensors - 13); /* all but 12 buffers + position_ids */
}

/* The checkpoint-specific facts from the README, on a converted file. */
static void check_checkpoint_buffers(const StFile *f) {
    for (size_t i = 0; i < sizeof schedule_names / sizeof schedule_names[0]; i++) {
        const StTensor *t = st_find(f, schedule_names[i]);
        ck_assert_msg(t, "%s missing", schedule_names[i]);
        ck_assert_int_eq(t->dtype, ST_F32);
        ck_assert_int_eq(t->ndim, 1);
        ck_assert_int_eq(t->shape[0], 1000);
    }
    const StTensor *p = st_find(f, POSITION_IDS);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(p->dtype, ST_I64);
    ck_assert_int_eq(p->numel, 77);
    int32_t ids[77];
    ck_assert_int_eq(st_to_i32(p, ids), 0);
    for (int i = 0; i < 77; i++) ck_assert_int_eq(ids[i], i);
}

static void model_path(char *buf, size_t n) { golden(buf, n, "sd1-tiny/model.safetensors"); }

START_TEST(test_convert_f16) {
    char src[512], dst[512];
    model_path(src, sizeof src);
    tmp_file(dst, sizeof dst, "model-fp16.safetensors");
    ck_assert_msg(st_convert(src, dst, ST_F16) == 0, "%s", ldm_last_error());
    StFile a, b;
    ck_assert_msg(st_open(&a, src) == 0, "%s", ldm_last_error());
    ck_assert_msg(st_open(&b, dst) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(a.n_tensors, 983); /* model.keys.txt */
    check_converted(&a, &b, ST_F16, st_f32_to_f16);
    check_checkpoint_buffers(&b);
    ck_assert_int_eq(st_find(&b, "model.diffusion_model.out.2.weight")->dtype, ST_F16);
    st_close(&a);
    st_close(&b);
}
END_TEST

START_TEST(test_convert_f16_back_to_f32) {
    char src[512], mid[512], dst[512];
    model_path(src, sizeof src);
    tmp_file(mid, sizeof mid, "m16.safetensors");
    tmp_file(dst, sizeof dst, "m32.safetensors");
    ck_assert_msg(st_convert(src, mid, ST_F16) == 0, "%s", ldm_last_error());
    ck_assert_msg(st_convert(mid, dst, ST_F32) == 0, "%s", ldm_last_error());
    StFile a, b;
    ck_assert_int_eq(st_open(&a, mid), 0);
    ck_assert_int_eq(st_open(&b, dst), 0);
    check_converted(&a, &b, ST_F32, NULL); /* F32 values == f16 values exactly */
    check_checkpoint_buffers(&b);
    st_close(&a);
    st_close(&b);
}
END_TEST

START_TEST(test_convert_bf16) {
    char src[512], dst[512];
    model_path(src, sizeof src);
    tmp_file(dst, sizeof dst, "mbf16.safetensors");
    ck_assert_msg(st_convert(src, dst, ST_BF16) == 0, "%s", ldm_last_error());
    StFile a, b;
    ck_assert_int_eq(st_open(&a, src), 0);
    ck_assert_int_eq(st_open(&b, dst), 0);
    check_converted(&a, &b, ST_BF16, st_f32_to_bf16);
    check_checkpoint_buffers(&b);
    st_close(&a);
    st_close(&b);
}
END_TEST

START_TEST(test_convert_errors) {
    char dst[512];
    tmp_file(dst, sizeof dst, "never.safetensors");
    ck_assert_int_eq(st_convert("/nonexistent/in.safetensors", dst, ST_F16), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "/nonexistent/in.safetensors"));
    ck_assert_int_ne(access(dst, F_OK), 0);

    char src[512];
    golden(src, sizeof src, "sd1-tiny/unet.io.safetensors");
    ck_assert_int_eq(st_convert(src, dst, ST_I32), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "I32"));
    ck_assert_int_ne(access(dst, F_OK), 0);

    /* an io file has no '.'-free names: every F32 becomes F16 */
    ck_assert_msg(st_convert(src, dst, ST_F16) == 0, "%s", ldm_last_error());
    StFile f;
    ck_assert_int_eq(st_open(&f, dst), 0);
    for (int i = 0; i < f.n_tensors; i++) ck_assert_int_eq(f.tensors[i].dtype, ST_F16);
    ck_assert_ptr_nonnull(st_metadata(&f, "tolerance"));
    st_close(&f);
}
END_TEST

/* ------------------------------------------------------------------------
 * malformed files
 * ------------------------------------------------------------------------ */

/* The whole sd1-tiny/unet.io golden in memory, to cut or patch. */
static uint8_t *golden_unet_bytes(size_t *n) {
    char path[512];
    return read_bytes(golden(path, sizeof path, "sd1-tiny/unet.io.safetensors"), n);
}

START_TEST(test_err_truncated_data) {
    size_t n;
    uint8_t *g = golden_unet_bytes(&n);
    char path[512];
    tmp_file(path, sizeof path, "cut_data.safetensors");
    /* header 5296 bytes; case2.x occupies data [95248, 103440] */
    write_bytes(path, g, 8 + 5296 + 100000);
    expect_open_error(path, "truncated", "'case2.x'", "103440", (const char *)NULL);
    /* cut one byte short of the end: the last tensor is the one named */
    write_bytes(path, g, n - 1);
    expect_open_error(path, "truncated", "'case3.eps'", (const char *)NULL);
    free(g);
}
END_TEST

START_TEST(test_err_truncated_header) {
    size_t n;
    uint8_t *g = golden_unet_bytes(&n);
    char path[512];
    tmp_file(path, sizeof path, "cut_header.safetensors");
    write_bytes(path, g, 8 + 2000);
    expect_open_error(path, "truncated: header says 5296 bytes but file has 2000",
                      (const char *)NULL);
    write_bytes(path, g, 5);
    expect_open_error(path, "truncated", "8 bytes", "got 5", (const char *)NULL);
    write_bytes(path, g, 0);
    expect_open_error(path, "truncated", "got 0", (const char *)NULL);
    free(g);
}
END_TEST

START_TEST(test_err_header_length) {
    size_t n;
    uint8_t *g = golden_unet_bytes(&n);
    char path[512];
    tmp_file(path, sizeof path, "len.safetensors");
    /* length = whole file size: larger than what follows the length field */
    for (int i = 0; i < 8; i++) g[i] = (uint8_t)((uint64_t)n >> (8 * i));
    write_bytes(path, g, n);
    char want[128];
    snprintf(want, sizeof want, "truncated: header says %zu bytes but file has %zu", n, n - 8);
    expect_open_error(path, want, (const char *)NULL);
    /* absurd length: no overflow, the limit is named */
    for (int i = 0; i < 8; i++) g[i] = 0xff;
    write_bytes(path, g, n);
    expect_open_error(path, "header", "18446744073709551615", (const char *)NULL);
    free(g);
}
END_TEST

START_TEST(test_err_corrupt_json) {
    size_t n;
    uint8_t *g = golden_unet_bytes(&n);
    char path[512];
    tmp_file(path, sizeof path, "json.safetensors");
    uint8_t *q = memchr(g + 8, ':', 5296); /* first key/value separator */
    ck_assert_ptr_nonnull(q);
    *q = ';';
    write_bytes(path, g, n);
    expect_open_error(path, "header: invalid JSON", (const char *)NULL);
    free(g);
    EXPECT_HEADER_ERROR("{\"a\": {\"dtype\": \"F32\", ", 0, "header: invalid JSON");
    EXPECT_HEADER_ERROR("{} garbage", 0, "header: invalid JSON");
    EXPECT_HEADER_ERROR("", 0, "header: invalid JSON");
    EXPECT_HEADER_ERROR("[1, 2]", 0, "header: expected a JSON object, got an array");
    EXPECT_HEADER_ERROR("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                        "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                        2, "header: invalid JSON", "duplicate");
}
END_TEST

START_TEST(test_err_dtype) {
    EXPECT_HEADER_ERROR("{\"w.x\": {\"dtype\": \"F8\", \"shape\": [2], \"data_offsets\": [0, 2]}}",
                        2, "tensor 'w.x'", "dtype", "got \"F8\"");
    EXPECT_HEADER_ERROR("{\"w.x\": {\"dtype\": 32, \"shape\": [2], \"data_offsets\": [0, 8]}}", 8,
                        "tensor 'w.x'", "dtype", "got an integer");
    EXPECT_HEADER_ERROR("{\"w.x\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", 8,
                        "tensor 'w.x'", "dtype", "none");
    EXPECT_HEADER_ERROR("{\"w.x\": [1, 2]}", 0, "tensor 'w.x'", "got an array");
}
END_TEST

START_TEST(test_err_shape) {
    /* shape says 24 bytes, offsets span 20 */
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"F32\", "
                        "\"shape\": [2, 3], \"data_offsets\": [0, 20]}}",
                        24, "tensor 'w'", "24 bytes", "20 bytes");
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"F32\", "
                        "\"shape\": [2, -3], \"data_offsets\": [0, 8]}}",
                        24, "tensor 'w'", "shape[1] >= 0", "-3");
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"F32\", "
                        "\"shape\": [2, 1.5], \"data_offsets\": [0, 8]}}",
                        24, "tensor 'w'", "shape[1]", "real");
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], "
                        "\"data_offsets\": [0, 1]}}",
                        1, "tensor 'w'", "at most 8", "9");
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"U8\", \"shape\": 4, \"data_offsets\": [0, 4]}}", 4,
                        "tensor 'w'", "shape", "an integer");
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"F64\", \"shape\": [4294967296, 4294967296, 8], "
                        "\"data_offsets\": [0, 8]}}",
                        8, "tensor 'w'", "overflow");
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"F64\", \"shape\": [1099511627776, 4194304], "
                        "\"data_offsets\": [0, 8]}}",
                        8, "tensor 'w'", "fewer than 2^64 bytes", "4611686018427387904 elements");
}
END_TEST

START_TEST(test_err_offsets) {
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"F32\", "
                        "\"shape\": [4], \"data_offsets\": [0, 16]}}",
                        8, "tensor 'w'", "data_offsets end <= 8", "[0, 16]");
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"F32\", "
                        "\"shape\": [1], \"data_offsets\": [8, 4]}}",
                        8, "tensor 'w'", "begin <= end", "[8, 4]");
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"F32\", "
                        "\"shape\": [1], \"data_offsets\": [-4, 0]}}",
                        8, "tensor 'w'", "data_offsets[0] >= 0");
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"F32\", "
                        "\"shape\": [1], \"data_offsets\": [0, 4, 8]}}",
                        8, "tensor 'w'", "[begin, end]");
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"F32\", "
                        "\"shape\": [1], \"data_offsets\": [0, \"4\"]}}",
                        8, "tensor 'w'", "data_offsets[1]", "a string");
    EXPECT_HEADER_ERROR("{\"w\": {\"dtype\": \"F32\", "
                        "\"shape\": [1]}}", 8, "tensor 'w'",
                        "data_offsets", "none");
    EXPECT_HEADER_ERROR("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                        " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
                        12, "tensor 'b'", "overlap", "'a'");
}
END_TEST

START_TEST(test_err_metadata) {
    EXPECT_HEADER_ERROR("{\"__metadata__\": [\"x\"]}", 0, "header", "__metadata__",
                        "got an array");
    EXPECT_HEADER_ERROR("{\"__metadata__\": {\"ok\": \"s\", \"n\": 3}}", 0, "header",
                        "__metadata__ 'n'", "a string", "an integer");
}
END_TEST

START_TEST(test_err_paths) {
    expect_open_error("/nonexistent/x.safetensors", "cannot open", (const char *)NULL);
    expect_open_error(g_tmp, "directory", (const char *)NULL);
}
END_TEST

/* Valid corner cases the reader must accept. */
START_TEST(test_valid_corner_cases) {
    char path[512];
    tmp_file(path, sizeof path, "ok.safetensors");
    StFile f;
    make_st(path, "{}", 0);
    ck_assert_msg(st_open(&f, path) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, 0);
    st_close(&f);
    /* trailing padding, gaps, out-of-order offsets, empty tensors sharing an offset,
     * a scalar, metadata without entries */
    make_st(path,
            "{\"b\": {\"dtype\": \"I32\", \"shape\": [], \"data_offsets\": [8, 12]},"
            " \"a\": {\"dtype\": \"U8\", \"shape\": [3], \"data_offsets\": [0, 3]},"
            " \"e1\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [1, 1]},"
            " \"e2\": {\"dtype\": \"F32\", \"shape\": [5, 0], \"data_offsets\": [1, 1]},"
            " \"__metadata__\": {}}      ",
            16);
    ck_assert_msg(st_open(&f, path) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, 4);
    ck_assert_str_eq(f.tensors[0].name, "b");
    ck_assert_str_eq(f.tensors[1].name, "a");
    int32_t v;
    ck_assert_int_eq(st_to_i32(st_find(&f, "b"), &v), 0);
    ck_assert_int_eq(v, 8 | 9 << 8 | 10 << 16 | 11 << 24);
    ck_assert_int_eq(st_find(&f, "a")->data[2], 2);
    ck_assert_int_eq(st_find(&f, "e2")->numel, 0);
    st_close(&f);
}
END_TEST

/* ------------------------------------------------------------------------
 * suite
 * ------------------------------------------------------------------------ */

Suite *suite_safetensors(void) {
    Suite *s = suite_create("safetensors");

    TCase *tc = tcase_create("scalar");
    tcase_add_test(tc, test_dtype_names);
    tcase_add_test(tc, test_f16_roundtrip_all);
    tcase_add_test(tc, test_f16_special_values);
    tcase_add_test(tc, test_f32_to_f16_halfway);
    tcase_add_test(tc, test_f32_to_f16_random);
    tcase_add_test(tc, test_f32_to_bf16);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);

    tc = tcase_create("file");
    tcase_add_unchecked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_writer_roundtrip);
    tcase_add_test(tc, test_writer_deterministic);
    tcase_add_test(tc, test_writer_errors);
    tcase_add_test(tc, test_to_i32_range);
    tcase_add_test(tc, test_golden_unet_io);
    tcase_add_test(tc, test_valid_corner_cases);
    tcase_add_test(tc, test_err_truncated_data);
    tcase_add_test(tc, test_err_truncated_header);
    tcase_add_test(tc, test_err_header_length);
    tcase_add_test(tc, test_err_corrupt_json);
    tcase_add_test(tc, test_err_dtype);
    tcase_add_test(tc, test_err_shape);
    tcase_add_test(tc, test_err_offsets);
    tcase_add_test(tc, test_err_metadata);
    tcase_add_test(tc, test_err_paths);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);

    tc = tcase_create("convert");
    tcase_add_unchecked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_convert_f16);
    tcase_add_test(tc, test_convert_f16_back_to_f32);
    tcase_add_test(tc, test_convert_bf16);
    tcase_add_test(tc, test_convert_errors);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return s;
}
