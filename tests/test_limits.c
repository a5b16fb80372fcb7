/*
 * test_limits.c - the resource limits of runtime/ldm_limits.h, each just
 * past its bound: a clear error naming the input, what was found and the
 * limit. (Steps, image sizes and the safetensors header size have their
 * own tests in test_txt2img.c, test_image.c and test_safetensors.c.)
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ldm_limits.h"
#include "pipeline.h"
#include "safetensors.h"
#include "textcond.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define LIM_SAN 1
#else
#define LIM_SAN 0
#endif

static void write_lines(const char *path, long n, const char *line) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    for (long i = 0; i < n; i++) fprintf(f, "%s\n", line);
    fclose(f);
}

START_TEST(test_prompt_file_lines) {
    test_dir_init("ldm_limits_");
    LdmPromptList l;
    const char *ok = test_tmp("million.txt");
    write_lines(ok, LDM_MAX_PROMPT_LINES, "a");
    ck_assert_msg(ldm_prompts_read(ok, 0, 1000, &l) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(l.n, LDM_MAX_PROMPT_LINES / 1000);
    ldm_prompts_free(&l);
    const char *over = test_tmp("million1.txt");
    write_lines(over, LDM_MAX_PROMPT_LINES + 1, "a");
    ck_assert_int_ne(ldm_prompts_read(over, 0, 1, &l), 0);
    ck_assert_msg(strstr(ldm_last_error(), over) && strstr(ldm_last_error(), "1000000 lines"), "%s", ldm_last_error());
    ck_assert_int_eq(l.n, 0);
}
END_TEST

START_TEST(test_prompt_file_line_bytes) {
    test_dir_init("ldm_limits_");
    char *big = ldm_xmalloc(LDM_LINE_MAX_BYTES + 2);
    memset(big, 'a', LDM_LINE_MAX_BYTES + 1);
    big[LDM_LINE_MAX_BYTES + 1] = 0;
    const char *p = test_tmp("longline.txt");
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "a fox\n%s\n", big);
    fclose(f);
    LdmPromptList l;
    ck_assert_int_ne(ldm_prompts_read(p, 0, 1, &l), 0);
    char want[64];
    snprintf(want, sizeof want, ":2: the line is %d bytes; the limit is %d", LDM_LINE_MAX_BYTES + 1, LDM_LINE_MAX_BYTES);
    ck_assert_msg(strstr(ldm_last_error(), want), "%s", ldm_last_error());
    /* exactly at the limit: read */
    big[LDM_LINE_MAX_BYTES] = 0;
    f = fopen(p, "wb");
    fprintf(f, "%s\n", big);
    fclose(f);
    ck_assert_msg(ldm_prompts_read(p, 0, 1, &l) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(l.n, 1);
    ldm_prompts_free(&l);
    free(big);
}
END_TEST

START_TEST(test_prompt_file_bytes) {
    test_dir_init("ldm_limits_");
    /* a sparse file past the limit: refused from its size, not read */
    const char *p = test_tmp("huge.txt");
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    ck_assert_int_eq(truncate(p, (off_t)LDM_MAX_PROMPT_FILE_BYTES + 1), 0);
    LdmPromptList l;
    ck_assert_int_ne(ldm_prompts_read(p, 0, 1, &l), 0);
    ck_assert_msg(strstr(ldm_last_error(), p) && strstr(ldm_last_error(), "256 MiB"), "%s", ldm_last_error());
}
END_TEST

START_TEST(test_prompt_bytes) {
    /* the check comes before the tokenizer is used */
    LdmTextEncoder te;
    memset(&te, 0, sizeof te);
    char *p = ldm_xmalloc(LDM_MAX_PROMPT_BYTES + 2);
    memset(p, 'a', LDM_MAX_PROMPT_BYTES + 1);
    p[LDM_MAX_PROMPT_BYTES + 1] = 0;
    PromptChunks ch;
    ck_assert_int_ne(ldm_text_chunks(&te, p, &ch), 0);
    char want[64];
    snprintf(want, sizeof want, "%d bytes; the limit is %d", LDM_MAX_PROMPT_BYTES + 1, LDM_MAX_PROMPT_BYTES);
    ck_assert_msg(strstr(ldm_last_error(), want), "%s", ldm_last_error());
    free(p);
}
END_TEST

START_TEST(test_tensor_count) {
    test_dir_init("ldm_limits_");
    /* a header of ST_MAX_TENSORS + 1 empty tensors */
    size_t cap = (size_t)(ST_MAX_TENSORS + 1) * 64 + 64, n = 0;
    char *h = ldm_xmalloc(cap);
    n += (size_t)sprintf(h + n, "{");
    for (int i = 0; i <= ST_MAX_TENSORS; i++)
        n += (size_t)sprintf(h + n, "%s\"t%d\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}", i ? "," : "", i);
    n += (size_t)sprintf(h + n, "}");
    const char *p = test_tmp("many.safetensors");
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    uint64_t len = n;
    fwrite(&len, 8, 1, f);
    fwrite(h, 1, n, f);
    fclose(f);
    free(h);
    StFile sf;
    ck_assert_int_ne(st_open(&sf, p), 0);
    char want[64];
    snprintf(want, sizeof want, "the limit is %d tensors", ST_MAX_TENSORS);
    ck_assert_msg(strstr(ldm_last_error(), p) && strstr(ldm_last_error(), want), "%s", ldm_last_error());
}
END_TEST

/* ------------------------------------------------------------------------ */

static char g_exe[700];
static char *g_build_log;

static void setup_exe(void) {
    test_dir_init("ldm_limits_");
    if (!test_dir[0] || g_exe[0] || g_build_log) return;
    test_build_sd1_tiny_txt2img(LIM_SAN, g_exe, sizeof g_exe, &g_build_log);
}

static void teardown_nothing(void) {}

START_TEST(test_exe_limits) {
    ck_assert_msg(g_exe[0], "make txt2img (sd1-tiny) failed:\n%s", g_build_log ? g_build_log : "(not run)");
    const char *w = test_shared("goldens/sd1-tiny/model.safetensors");
    const char *out = test_tmp("lim.png");
    /* a 70 000-byte prompt */
    char *prompt = ldm_xmalloc(70001);
    for (int i = 0; i < 70000; i++) prompt[i] = i % 2 ? ' ' : 'a';
    prompt[70000] = 0;
    char *a1[] = {g_exe, "--weights", (char *)w, "--prompt", prompt, "-o", (char *)out, NULL};
    char *text;
    int rc = test_run(a1, &text);
    ck_assert_msg(rc != 0 && rc < 128 && strstr(text, "70000 bytes; the limit is 65536"), "status %d:\n%s", rc, text);
    free(text);
    free(prompt);
    /* 65 --lora flags (the count is checked before any file is opened) */
    char *a2[200];
    int k = 0;
    a2[k++] = g_exe, a2[k++] = "--weights", a2[k++] = (char *)w, a2[k++] = "--prompt", a2[k++] = "a fox";
    for (int i = 0; i <= LDM_MAX_LORAS; i++) a2[k++] = "--lora", a2[k++] = "no-such-lora.safetensors";
    a2[k++] = "-o", a2[k++] = (char *)out, a2[k] = NULL;
    rc = test_run(a2, &text);
    ck_assert_msg(rc != 0 && rc < 128 && strstr(text, "65 --lora files; the limit is 64"), "status %d:\n%s", rc, text);
    free(text);
    /* 65 <lora:> tags */
    char *tags = ldm_xstrdup("a fox");
    for (int i = 0; i <= LDM_MAX_LORAS; i++) {
        char *t = ldm_xasprintf("%s <lora:l%d:1>", tags, i);
        free(tags);
        tags = t;
    }
    char *a3[] = {g_exe, "--weights", (char *)w, "--prompt", tags, "--lora-dir", (char *)test_dir, "-o", (char *)out,
                  NULL};
    rc = test_run(a3, &text);
    ck_assert_msg(rc != 0 && rc < 128 && strstr(text, "65 LoRAs") && strstr(text, "the limit is 64"), "status %d:\n%s",
                  rc, text);
    free(text);
    free(tags);
    ck_assert(!test_exists(out));
}
END_TEST

Suite *suite_limits(void) {
    Suite *s = suite_create("limits");
    TCase *tc = tcase_create("readers");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_prompt_file_lines);
    tcase_add_test(tc, test_prompt_file_line_bytes);
    tcase_add_test(tc, test_prompt_file_bytes);
    tcase_add_test(tc, test_prompt_bytes);
    tcase_add_test(tc, test_tensor_count);
    suite_add_tcase(s, tc);
    tc = tcase_create("txt2img");
    tcase_set_timeout(tc, 900);
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_add_test(tc, test_exe_limits);
    suite_add_tcase(s, tc);
    return s;
}
