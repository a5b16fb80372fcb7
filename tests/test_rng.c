/*
 * test_rng.c - torch.randn reproduction (runtime/rng.c) against the goldens
 * in ../shared/goldens/torch_randn: randn.io.safetensors (CPU, torch 1.13)
 * and randn_cuda.io.safetensors (CUDA, torch 2.11). Each caseK.noise is
 * torch.manual_seed(seed); torch.randn(shape), with seed and shape listed in
 * the JSON string __metadata__.cases.
 */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "testutil.h"
#include "util.h"

/* ---- a minimal safetensors reader (runtime/safetensors.c is not used here) */

typedef struct Golden {
    char *buf;        /* whole file */
    size_t len;       /* its size */
    json_t *header;   /* parsed JSON header */
    size_t data;      /* offset of the data section: 8 + header length */
} Golden;

static void golden_open(Golden *g, const char *file) {
    char *path = ldm_xasprintf("%s/goldens/torch_randn/%s", test_shared_dir(), file);
    g->buf = ldm_read_file(path, &g->len);
    ck_assert_msg(g->buf != NULL, "%s", ldm_last_error());
    ck_assert_msg(g->len >= 8, "%s: too short", path);
    uint64_t hlen = 0;   /* 8-byte little-endian header length */
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)(unsigned char)g->buf[i] << (8 * i);
    ck_assert_msg(hlen <= g->len - 8, "%s: bad header length", path);
    json_error_t err;
    g->header = json_loadb(g->buf + 8, hlen, 0, &err);
    ck_assert_msg(g->header != NULL, "%s: %s", path, err.text);
    g->data = 8 + hlen;
    free(path);
}

static void golden_close(Golden *g) {
    json_decref(g->header);
    free(g->buf);
}

/* The F32 tensor `name` as a fresh array; *n receives its element count. */
static float *golden_f32(const Golden *g, const char *name, int64_t *n) {
    json_t *t = json_object_get(g->header, name);
    ck_assert_msg(t != NULL, "no tensor %s", name);
    ck_assert_str_eq(json_string_value(json_object_get(t, "dtype")), "F32");
    json_t *off = json_object_get(t, "data_offsets");
    size_t a = (size_t)json_integer_value(json_array_get(off, 0));
    size_t b = (size_t)json_integer_value(json_array_get(off, 1));
    ck_assert_msg(a <= b && b <= g->len - g->data && (b - a) % 4 == 0, "%s: bad offsets", name);
    *n = (int64_t)((b - a) / 4);
    float *v = ldm_xmalloc(b - a);
    memcpy(v, g->buf + g->data + a, b - a);
    return v;
}

/* The parsed __metadata__.cases array: [{"case", "seed", "shape"}, ...]. */
static json_t *golden_cases(const Golden *g) {
    json_t *meta = json_object_get(g->header, "__metadata__");
    const char *s = json_string_value(json_object_get(meta, "cases"));
    ck_assert_msg(s != NULL, "no __metadata__.cases");
    json_error_t err;
    json_t *cases = json_loads(s, 0, &err);
    ck_assert_msg(json_is_array(cases) && json_array_size(cases) > 0, "bad cases: %s", err.text);
    return cases;
}

static int64_t shape_numel(json_t *shape) {
    int64_t n = 1;
    size_t i;
    json_t *d;
    json_array_foreach(shape, i, d) n *= json_integer_value(d);
    return n;
}

/* Max abs difference and count of elements that differ in any bit. */
static double compare(const float *got, const float *want, int64_t n, int64_t *ndiff) {
    double max = 0;
    *ndiff = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (d > max || isnan(d)) max = isnan(d) ? INFINITY : d;
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) ++*ndiff;
    }
    return max;
}

/* Every case of a golden file, each from a freshly seeded generator. */
static void check_golden_file(const char *file, int cuda) {
    Golden g;
    golden_open(&g, file);
    json_t *cases = golden_cases(&g);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "case"));
        uint64_t seed = (uint64_t)json_integer_value(json_object_get(c, "seed"));
        char *tname = ldm_xasprintf("%s.noise", name);
        int64_t n;
        float *want = golden_f32(&g, tname, &n);
        ck_assert_int_eq(n, shape_numel(json_object_get(c, "shape")));
        float *got = ldm_xmalloc((size_t)n * sizeof(float));
        if (cuda) {
            CudaGen gen;
            cuda_gen_seed(&gen, seed);
            ck_assert_int_eq(cuda_randn(&gen, got, n), 0);
        } else {
            TorchGen gen;
            torch_gen_seed(&gen, seed);
            ck_assert_int_eq(torch_randn(&gen, got, n), 0);
        }
        int64_t ndiff;
        double err = compare(got, want, n, &ndiff);
        ck_assert_msg(err <= 1e-6, "%s %s (seed %llu, n %lld): max abs err %g",
                      file, name, (unsigned long long)seed, (long long)n, err);
        ck_assert_msg(ndiff == 0, "%s %s: %lld of %lld elements not bit-exact (max abs err %g)",
                      file, name, (long long)ndiff, (long long)n, err);
        free(got);
        free(want);
        free(tname);
    }
    json_decref(cases);
    golden_close(&g);
}

/* A slice [from, from + n) of one golden tensor. */
static float *golden_slice(const char *file, const char *tensor, int64_t from, int64_t n) {
    Golden g;
    golden_open(&g, file);
    int64_t total;
    float *all = golden_f32(&g, tensor, &total);
    ck_assert(from + n <= total);
    float *v = ldm_xmalloc((size_t)n * sizeof(float));
    memcpy(v, all + from, (size_t)n * sizeof(float));
    free(all);
    golden_close(&g);
    return v;
}

static void assert_same(const float *got, const float *want, int64_t n, const char *what) {
    int64_t ndiff;
    double err = compare(got, want, n, &ndiff);
    ck_assert_msg(ndiff == 0, "%s: %lld of %lld differ (max abs err %g)",
                  what, (long long)ndiff, (long long)n, err);
}

/* ---- CPU generator ------------------------------------------------------- */

/* The C++ standard's check of mt19937 ([rand.predef]): with the default seed
   5489 the 10000th output is 4123659995. Independent of the goldens. */
START_TEST(test_mt19937_reference) {
    TorchGen g;
    torch_gen_seed(&g, 5489);
    uint32_t v = 0;
    for (int i = 0; i < 10000; i++) v = torch_gen_random(&g);
    ck_assert_uint_eq(v, 4123659995u);
}
END_TEST

START_TEST(test_cpu_goldens) {
    check_golden_file("randn.io.safetensors", 0);
}
END_TEST

/* Successive draws continue the stream. normal_fill treats each 16-element
   block on its own uniforms, so randn(1024) then randn(1024) after seed 0 is
   the golden randn(16384) of seed 0, elements [0, 1024) then [1024, 2048).
   The scalar path (n < 16) keeps its cached Box-Muller half across calls, so
   randn(3) then randn(12) after seed 7 is the golden randn(15) of seed 7. */
START_TEST(test_cpu_stream_continues) {
    const char *file = "randn.io.safetensors";
    TorchGen g;
    float got[1024];

    float *want = golden_slice(file, "case1.noise", 0, 2048);   /* seed 0, [1,4,64,64] */
    torch_gen_seed(&g, 0);
    ck_assert_int_eq(torch_randn(&g, got, 1024), 0);
    assert_same(got, want, 1024, "seed 0: first randn(1024)");
    ck_assert_int_eq(torch_randn(&g, got, 1024), 0);
    assert_same(got, want + 1024, 1024, "seed 0: second randn(1024)");
    free(want);

    want = golden_slice(file, "case4.noise", 0, 15);   /* seed 7, [15] */
    torch_gen_seed(&g, 7);
    ck_assert_int_eq(torch_randn(&g, got, 3), 0);
    assert_same(got, want, 3, "seed 7: randn(3)");
    ck_assert_int_eq(torch_randn(&g, got, 12), 0);   /* starts with the cached value */
    assert_same(got, want + 3, 12, "seed 7: randn(12) after randn(3)");
    free(want);
}
END_TEST

/* Draw accounting of the tail path: randn(17) takes 17 uniforms, then 16
   more to redo the last block, so a following randn(16) starts at draw 33. */
START_TEST(test_cpu_tail_draw_count) {
    float a[17], b[16], c[16];
    TorchGen g;
    torch_gen_seed(&g, 7);
    ck_assert_int_eq(torch_randn(&g, a, 17), 0);
    ck_assert_int_eq(torch_randn(&g, b, 16), 0);
    torch_gen_seed(&g, 7);
    for (int i = 0; i < 33; i++) torch_gen_random(&g);
    ck_assert_int_eq(torch_randn(&g, c, 16), 0);
    assert_same(b, c, 16, "randn(16) after randn(17)");
}
END_TEST

START_TEST(test_cpu_determinism) {
    enum { N = 4096 };
    float *a = ldm_xmalloc(N * sizeof(float)), *b = ldm_xmalloc(N * sizeof(float));
    TorchGen g;
    torch_gen_seed(&g, 1);
    torch_randn(&g, a, N);
    torch_gen_seed(&g, 1);
    torch_randn(&g, b, N);
    ck_assert(memcmp(a, b, N * sizeof(float)) == 0);
    torch_gen_seed(&g, 2);
    torch_randn(&g, b, N);
    int same = 0;
    for (int i = 0; i < N; i++) same += a[i] == b[i];
    ck_assert_int_lt(same, 4);
    /* roughly standard normal */
    double m = 0, v = 0;
    for (int i = 0; i < N; i++) m += a[i];
    m /= N;
    for (int i = 0; i < N; i++) v += (a[i] - m) * (a[i] - m);
    v /= N;
    ck_assert(fabs(m) < 0.1 && fabs(v - 1) < 0.1);
    free(a);
    free(b);
}
END_TEST

/* ---- CUDA generator ------------------------------------------------------ */

START_TEST(test_cuda_goldens) {
    check_golden_file("randn_cuda.io.safetensors", 1);
}
END_TEST

/* The Philox offset advances by 4 per call while the grid covers n (every
   thread makes one curand_normal4 call); calls continue, reseeding restarts;
   an empty tensor launches nothing. */
START_TEST(test_cuda_offset) {
    enum { N = 16384 };
    float *a = ldm_xmalloc(N * sizeof(float)), *b = ldm_xmalloc(N * sizeof(float));
    CudaGen g;
    cuda_gen_seed(&g, 0);
    ck_assert_int_eq(cuda_randn(&g, a, N), 0);
    ck_assert_uint_eq(g.offset, 4);
    ck_assert_int_eq(cuda_randn(&g, b, 0), 0);
    ck_assert_uint_eq(g.offset, 4);
    ck_assert_int_eq(cuda_randn(&g, b, N), 0);
    ck_assert_uint_eq(g.offset, 8);
    int same = 0;
    for (int i = 0; i < N; i++) same += a[i] == b[i];
    ck_assert_int_lt(same, 4);
    cuda_gen_seed(&g, 0);
    ck_assert_int_eq(cuda_randn(&g, b, N), 0);
    ck_assert(memcmp(a, b, N * sizeof(float)) == 0);
    free(a);
    free(b);
}
END_TEST

/* A capped grid (small GPU): 64 blocks still cover 16384 elements, so the
   golden holds; with 1 block each thread makes 16 calls (offset += 64), its
   first 256 elements are still the .x of thread idx's first call, i.e. the
   golden, the next 256 the .y of the same call (a different number). */
START_TEST(test_cuda_grid_cap) {
    enum { N = 16384 };
    float *want = golden_slice("randn_cuda.io.safetensors", "case1.noise", 0, N);   /* seed 0 */
    float *got = ldm_xmalloc(N * sizeof(float));
    CudaGen g;
    cuda_gen_seed(&g, 0);
    g.max_blocks = 64;
    ck_assert_int_eq(cuda_randn(&g, got, N), 0);
    ck_assert_uint_eq(g.offset, 4);
    assert_same(got, want, N, "seed 0, max_blocks 64");
    cuda_gen_seed(&g, 0);
    g.max_blocks = 1;
    ck_assert_int_eq(cuda_randn(&g, got, N), 0);
    ck_assert_uint_eq(g.offset, 64);
    assert_same(got, want, 256, "seed 0, max_blocks 1, first 256");
    int same = 0;
    for (int i = 256; i < 512; i++) same += got[i] == want[i];
    ck_assert_int_lt(same, 4);
    free(got);
    free(want);
}
END_TEST

START_TEST(test_bad_counts) {
    float x;
    TorchGen tg;
    torch_gen_seed(&tg, 0);
    ck_assert_int_eq(torch_randn(&tg, &x, -1), -1);
    ck_assert(strstr(ldm_last_error(), "torch_randn") != NULL);
    CudaGen cg;
    cuda_gen_seed(&cg, 0);
    ck_assert_int_eq(cuda_randn(&cg, &x, -1), -1);
    ck_assert_int_eq(cuda_randn(&cg, &x, (int64_t)1 << 40), -1);
    ck_assert_uint_eq(cg.offset, 0);
}
END_TEST

Suite *suite_rng(void) {
    Suite *s = suite_create("rng");
    TCase *tc = tcase_create("rng");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_mt19937_reference);
    tcase_add_test(tc, test_cpu_goldens);
    tcase_add_test(tc, test_cpu_stream_continues);
    tcase_add_test(tc, test_cpu_tail_draw_count);
    tcase_add_test(tc, test_cpu_determinism);
    tcase_add_test(tc, test_cuda_goldens);
    tcase_add_test(tc, test_cuda_offset);
    tcase_add_test(tc, test_cuda_grid_cap);
    tcase_add_test(tc, test_bad_counts);
    suite_add_tcase(s, tc);
    return s;
}
