/*
 * test_deploy.c - scale-out: the --prompts line parser (runtime/promptline.c:
 * plain, webui option and JSON lines), the manifest's appends, and the
 * txt2img executable running prompt files as docs/deploy.md's Slurm array
 * and Kubernetes Indexed Job do:
 *   - a JSON line makes the image the same settings on the command line
 *     make; bad JSON lines fail alone, naming file:line and the field;
 *   - docs/deploy/slurm-array.sh run for shards 0/2 and 1/2 covers every
 *     line exactly once, OUT/manifest.jsonl has one line per image naming
 *     it; after one image is deleted a re-run of both shards with
 *     --skip-existing makes that one only (the others "skipped": true in
 *     the manifest, untouched on disk), and a re-run with nothing missing
 *     loads no weights;
 *   - docs/deploy/indexed-job.yaml is an Indexed Job whose container
 *     command, run with JOB_COMPLETION_INDEX 0 and 1, covers the file too.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "image.h"
#include "pipeline.h"
#include "promptline.h"
#include "safetensors.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define DEP_SAN 1
#else
#define DEP_SAN 0
#endif

static void nothing(void) {}

/* ---- the line parser ----------------------------------------------------------- */

START_TEST(test_line_plain_and_options) {
    LdmLineArgs l;
    ck_assert(ldm_line_args_parse("  a cat, (fluffy:1.2) <lora:x:0.5>", 1000, &l) == 0);
    ck_assert_int_eq(l.kind, LDM_LINE_PLAIN);
    ck_assert_str_eq(l.prompt, "  a cat, (fluffy:1.2) <lora:x:0.5>");
    ck_assert(!l.negative && !l.has_seed && !l.has_steps && !l.has_H && !l.has_sampler);
    ldm_line_args_free(&l);

    ck_assert(ldm_line_args_parse("--prompt a  red 'fox' --negative_prompt blurry, dark --seed 5 --steps 4 "
                                  "--cfg_scale 5 --width 192 --sampler_name 'DPM++ 2M Karras'",
                                  1000, &l) == 0);
    ck_assert_int_eq(l.kind, LDM_LINE_OPTIONS);
    ck_assert_str_eq(l.prompt, "a red fox");
    ck_assert_str_eq(l.negative, "blurry, dark");
    ck_assert(l.has_seed && l.seed == 5 && l.has_steps && l.steps == 4 && l.has_cfg && l.cfg_scale == 5);
    ck_assert(l.has_W && l.W == 192 && !l.has_H);
    ck_assert(l.has_sampler && l.sampler == LDM_SAMPLER_DPMPP_2M && l.has_schedule && l.schedule == LDM_SIGMAS_KARRAS);
    ldm_line_args_free(&l);

    ck_assert(ldm_line_args_parse("--prompt x --steps 1001", 1000, &l) != 0);
    ck_assert_msg(strstr(ldm_last_error(), "--steps"), "%s", ldm_last_error());
    ck_assert(!l.prompt);
    ck_assert(ldm_line_args_parse("--prompt x --colour red", 1000, &l) != 0);
    ck_assert_msg(strstr(ldm_last_error(), "unknown option '--colour'"), "%s", ldm_last_error());
    ck_assert(ldm_line_args_parse("--seed 3", 1000, &l) != 0);
    ck_assert_msg(strstr(ldm_last_error(), "no --prompt"), "%s", ldm_last_error());
    ck_assert(ldm_line_args_parse("--prompt x --sampler_name k_lms", 1000, &l) != 0);
    ck_assert_msg(strstr(ldm_last_error(), "--sampler_name: unknown sampler 'k_lms'"), "%s", ldm_last_error());
}
END_TEST

START_TEST(test_line_json) {
    LdmLineArgs l;
    ck_assert_msg(ldm_line_args_parse("{\"prompt\": \"a red fox <lora:tiny:0.8>\", \"negative_prompt\": \"blurry\", "
                                      "\"seed\": 42, \"steps\": 30, \"cfg_scale\": 6.5, \"sampler\": \"Euler a\", "
                                      "\"size\": \"512x768\"}",
                                      1000, &l) == 0,
                  "%s", ldm_last_error());
    ck_assert_int_eq(l.kind, LDM_LINE_JSON);
    ck_assert_str_eq(l.prompt, "a red fox <lora:tiny:0.8>");
    ck_assert_str_eq(l.negative, "blurry");
    ck_assert(l.has_seed && l.seed == 42 && l.has_steps && l.steps == 30 && l.has_cfg && l.cfg_scale == 6.5);
    ck_assert(l.has_sampler && l.sampler == LDM_SAMPLER_EULER_A && !l.has_schedule);
    ck_assert_msg(l.has_W && l.W == 512 && l.has_H && l.H == 768, "size WxH: W %d H %d", l.W, l.H);
    ldm_line_args_free(&l);

    ck_assert(ldm_line_args_parse(" {\"width\": 64, \"prompt\": \"x\", \"sampler_name\": \"DPM++ 2M Karras\", "
                                  "\"cfg_scale\": 7}",
                                  1000, &l) == 0);
    ck_assert(l.has_W && l.W == 64 && !l.has_H && l.has_cfg && l.cfg_scale == 7);
    ck_assert(l.sampler == LDM_SAMPLER_DPMPP_2M && l.has_schedule && l.schedule == LDM_SIGMAS_KARRAS);
    ldm_line_args_free(&l);
    ck_assert(ldm_line_args_parse("{\"prompt\": \"\\u00e9t\\u00e9\", \"size\": \"64X128\"}", 1000, &l) == 0);
    ck_assert_str_eq(l.prompt, "\xc3\xa9t\xc3\xa9");
    ck_assert(l.W == 64 && l.H == 128);
    ldm_line_args_free(&l);
}
END_TEST

static const char *const k_bad_json[][2] = {
    {"{\"prompt\": \"x\", \"stepz\": 3}", "unknown field \"stepz\""},
    {"{\"prompt\": \"x\", \"steps\": \"3\"}", "\"steps\": expected an integer from 1 to 1000, got a string"},
    {"{\"prompt\": \"x\", \"steps\": 2.5}", "\"steps\": expected an integer"},
    {"{\"prompt\": \"x\", \"steps\": 0}", "\"steps\": expected an integer from 1 to 1000, got 0"},
    {"{\"prompt\": \"x\", \"steps\": 1001}", "got 1001"},
    {"{\"prompt\": \"x\", \"seed\": -1}", "\"seed\": expected an integer from 0"},
    {"{\"prompt\": \"x\", \"seed\": \"5\"}", "\"seed\": expected an integer"},
    {"{\"prompt\": \"x\", \"cfg_scale\": \"7\"}", "\"cfg_scale\": expected a number, got a string"},
    {"{\"prompt\": \"x\", \"cfg_scale\": 1e9}", "\"cfg_scale\": expected a number from"},
    {"{\"prompt\": \"x\", \"sampler\": \"k_lms\"}", "\"sampler\": unknown sampler 'k_lms'"},
    {"{\"prompt\": \"x\", \"sampler\": 3}", "\"sampler\": expected a string, got an integer"},
    {"{\"prompt\": \"x\", \"sampler\": \"DDIM Karras\"}", "\"sampler\": unknown sampler"},
    {"{\"prompt\": \"x\", \"sampler\": \"ddim\", \"sampler_name\": \"euler\"}", "both sampler and sampler_name"},
    {"{\"prompt\": \"x\", \"size\": \"12x\"}", "\"size\": expected \"WxH\""},
    {"{\"prompt\": \"x\", \"size\": \"x512\"}", "\"size\": expected \"WxH\""},
    {"{\"prompt\": \"x\", \"size\": \"0x512\"}", "\"size\": expected \"WxH\""},
    {"{\"prompt\": \"x\", \"size\": \"512x512x2\"}", "\"size\": expected \"WxH\""},
    {"{\"prompt\": \"x\", \"size\": \" 512x512\"}", "\"size\": expected \"WxH\""},
    {"{\"prompt\": \"x\", \"size\": [512, 512]}", "\"size\": expected a string, got an array"},
    {"{\"prompt\": \"x\", \"size\": \"512x512\", \"width\": 512}", "\"size\" and \"width\" exclude each other"},
    {"{\"prompt\": \"x\", \"width\": 0}", "\"width\": expected an integer from 1 to 65536, got 0"},
    {"{\"prompt\": \"x\", \"height\": true}", "\"height\": expected an integer from 1 to 65536, got true"},
    {"{\"prompt\": \"x\", \"prompt\": \"y\"}", "invalid JSON"},
    {"{\"prompt\": null}", "\"prompt\": expected a string, got null"},
    {"{\"prompt\": \"a\\u0000b\"}", "NUL"},
    {"{\"negative_prompt\": \"x\"}", "\"prompt\": missing"},
    {"{\"prompt\": \"x\",", "invalid JSON at column"},
    {"{\"prompt\": \"x\"} {}", "invalid JSON"},
    {"{}", "\"prompt\": missing"},
};
#define N_BAD_JSON ((int)(sizeof k_bad_json / sizeof k_bad_json[0]))

START_TEST(test_line_json_bad) {
    LdmLineArgs l;
    int rc = ldm_line_args_parse(k_bad_json[_i][0], 1000, &l);
    ck_assert_msg(rc != 0, "accepted: %s", k_bad_json[_i][0]);
    ck_assert_msg(strstr(ldm_last_error(), k_bad_json[_i][1]), "%s: the message does not say '%s':\n%s",
                  k_bad_json[_i][0], k_bad_json[_i][1], ldm_last_error());
    ck_assert(l.kind == LDM_LINE_JSON && !l.prompt && !l.negative);
    ldm_line_args_free(&l);
}
END_TEST

/* ---- the manifest: concurrent appends -------------------------------------------- */

START_TEST(test_manifest_appends) {
    test_dir_init("ldm_deploy_");
    const char *path = test_tmp("appends.jsonl");
    enum { WORKERS = 4, LINES = 100 };
    pid_t pids[WORKERS];
    for (int w = 0; w < WORKERS; w++) {
        pids[w] = fork();
        ck_assert(pids[w] >= 0);
        if (pids[w] == 0) {
            for (int i = 0; i < LINES; i++) {
                /* some lines longer than PIPE_BUF */
                size_t pad = (size_t)((i * 37 + w * 11) % 7 == 0 ? 3 * PIPE_BUF : (i * 13) % 300);
                char *fill = malloc(pad + 1);
                memset(fill, 'a' + w, pad);
                fill[pad] = 0;
                char *line = ldm_xasprintf("{\"w\":%d,\"i\":%d,\"fill\":\"%s\"}", w, i, fill);
                if (ldm_manifest_append(path, line) != 0) _exit(1);
                free(line);
                free(fill);
            }
            _exit(0);
        }
    }
    for (int w = 0; w < WORKERS; w++) ck_assert_int_eq(test_wait_status(pids[w]), 0);
    size_t n;
    char *text = ldm_read_file(path, &n);
    ck_assert(text);
    int seen[WORKERS][LINES] = {{0}}, lines = 0;
    for (char *p = text, *e; *p; p = e + 1) {
        e = strchr(p, '\n');
        ck_assert_msg(e, "the file does not end with a newline");
        *e = 0;
        json_error_t err;
        json_t *j = json_loads(p, 0, &err);
        ck_assert_msg(j, "line %d is not JSON (interleaved?): %.80s...", lines + 1, p);
        int w = (int)json_integer_value(json_object_get(j, "w")), i = (int)json_integer_value(json_object_get(j, "i"));
        const char *fill = json_string_value(json_object_get(j, "fill"));
        ck_assert(w >= 0 && w < WORKERS && i >= 0 && i < LINES && fill);
        for (const char *f = fill; *f; f++) ck_assert_msg(*f == 'a' + w, "worker %d's line holds another's bytes", w);
        seen[w][i]++;
        json_decref(j);
        lines++;
    }
    ck_assert_int_eq(lines, WORKERS * LINES);
    for (int w = 0; w < WORKERS; w++)
        for (int i = 0; i < LINES; i++) ck_assert_int_eq(seen[w][i], 1);
    free(text);
    ck_assert(ldm_manifest_append(test_tmp("no/such/dir/m.jsonl"), "{}") != 0);
    ck_assert_msg(strstr(ldm_last_error(), "m.jsonl: cannot open"), "%s", ldm_last_error());
}
END_TEST

/* ---- the executable ------------------------------------------------------------- */

static char g_exe[700];
static char *g_log;

static void setup_exe(void) {
    test_dir_init("ldm_deploy_");
    if (!test_dir[0] || g_exe[0] || g_log) return;
    test_build_sd1_tiny_txt2img(DEP_SAN, g_exe, sizeof g_exe, &g_log);
}

static const char *exe(void) {
    ck_assert_msg(g_exe[0], "make txt2img failed:\n%s", g_log ? g_log : "(not run)");
    return g_exe;
}

static const char *model(void) { return test_shared("goldens/sd1-tiny/model.safetensors"); }

/* Run exe --weights MODEL args... (NULL-terminated); status, output in *out. */
static int run(char **out, ...) {
    char *argv[48];
    int k = 0;
    argv[k++] = (char *)exe();
    argv[k++] = "--weights";
    argv[k++] = (char *)model();
    va_list ap;
    va_start(ap, out);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) argv[k++] = (char *)a;
    va_end(ap);
    argv[k] = NULL;
    return test_run(argv, out);
}

static void write_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "wb");
    ck_assert(fp);
    fputs(text, fp);
    fclose(fp);
}

/* The lines of OUT/manifest.jsonl as JSON objects (an array, owned). */
static json_t *read_manifest(const char *dir) {
    char path[600];
    snprintf(path, sizeof path, "%s/manifest.jsonl", dir);
    size_t n;
    char *text = ldm_read_file(path, &n);
    json_t *arr = json_array();
    if (!text) return arr;
    for (char *p = text, *e; *p; p = e + 1) {
        e = strchr(p, '\n');
        ck_assert_msg(e, "%s does not end with a newline", path);
        *e = 0;
        json_error_t err;
        json_t *j = json_loads(p, 0, &err);
        ck_assert_msg(json_is_object(j), "%s: not a JSON object: %s (%s)", path, p, err.text);
        json_array_append_new(arr, j);
    }
    free(text);
    return arr;
}

/* The PNGs of dir, in a NULL-terminated sorted array (malloc'd). */
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static char **list_pngs(const char *dir, int *n) {
    DIR *d = opendir(dir);
    char **v = ldm_xcalloc(256, sizeof *v);
    *n = 0;
    if (!d) return v;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > 4 && !strcmp(e->d_name + l - 4, ".png")) v[(*n)++] = ldm_xstrdup(e->d_name);
        ck_assert_msg(!strstr(e->d_name, ".tmp."), "a temporary file was left: %s", e->d_name);
    }
    closedir(d);
    qsort(v, (size_t)*n, sizeof *v, cmp_str);
    return v;
}

static void free_list(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

static const char *mstr(const json_t *o, const char *k) {
    const char *s = json_string_value(json_object_get(o, k));
    ck_assert_msg(s, "manifest line without string '%s'", k);
    return s;
}

/* A JSON line makes the image its settings make on the command line. */
START_TEST(test_json_lines_match_flags) {
    const char *file = test_tmp("json.txt");
    write_text(file, "{\"prompt\": \"a red fox\", \"negative_prompt\": \"blurry\", \"seed\": 5, \"steps\": 4, "
                     "\"cfg_scale\": 5, \"sampler\": \"DPM++ 2M Karras\", \"size\": \"128x128\"}\n"
                     "\n"
                     "{\"prompt\": \"an owl\", \"sampler_name\": \"Euler a\", \"width\": 128, \"height\": 128}\n"
                     "--prompt a cat --sampler_name euler --seed 9\n"
                     "a plain dog\n");
    const char *dir = test_tmp("json-out");
    char *out;
    int rc = run(&out, "--prompts", file, "--steps", "2", "--seed", "100", "-o", dir, NULL);
    ck_assert_msg(rc == 0, "status %d:\n%s", rc, out);
    free(out);
    struct {
        const char *png;
        const char *args[14];
    } want[] = {
        {"00001-5.png", {"--prompt", "a red fox", "--negative-prompt", "blurry", "--seed", "5", "--steps", "4",
                         "--cfg-scale", "5", "--sampler", "dpmpp_2m", "--schedule", "karras"}},
        {"00003-102.png", {"--prompt", "an owl", "--sampler", "euler_a", "--seed", "102", "--steps", "2"}},
        {"00004-9.png", {"--prompt", "a cat", "--sampler", "euler", "--seed", "9", "--steps", "2"}},
        {"00005-104.png", {"--prompt", "a plain dog", "--seed", "104", "--steps", "2"}},
    };
    int n;
    char **pngs = list_pngs(dir, &n);
    ck_assert_int_eq(n, 4);
    for (int i = 0; i < 4; i++) {
        ck_assert_str_eq(pngs[i], want[i].png);
        char *argv[40];
        int k = 0;
        argv[k++] = (char *)exe();
        argv[k++] = "--weights";
        argv[k++] = (char *)model();
        for (int j = 0; j < 14 && want[i].args[j]; j++) argv[k++] = (char *)want[i].args[j];
        argv[k++] = "-o";
        argv[k++] = (char *)test_tmp("json-ref-%d.png", i);
        argv[k++] = "--quiet";
        argv[k] = NULL;
        rc = test_run(argv, &out);
        ck_assert_msg(rc == 0, "reference %s: status %d:\n%s", want[i].png, rc, out);
        free(out);
        char got[600];
        snprintf(got, sizeof got, "%s/%s", dir, want[i].png);
        ck_assert_msg(same_file(got, test_tmp("json-ref-%d.png", i)), "%s differs from its command line's image",
                      want[i].png);
    }
    free_list(pngs, n);
    /* the manifest: one line per image, in line order, with the settings */
    json_t *m = read_manifest(dir);
    ck_assert_int_eq((int)json_array_size(m), 4);
    json_t *l0 = json_array_get(m, 0), *p0 = json_object_get(l0, "parameters");
    ck_assert_int_eq(json_integer_value(json_object_get(l0, "line")), 1);
    ck_assert_str_eq(mstr(l0, "file"), "00001-5.png");
    ck_assert_int_eq(json_integer_value(json_object_get(l0, "seed")), 5);
    ck_assert(json_is_number(json_object_get(l0, "seconds")) && json_number_value(json_object_get(l0, "seconds")) > 0);
    ck_assert(!json_object_get(l0, "skipped"));
    ck_assert_str_eq(mstr(p0, "prompt"), "a red fox");
    ck_assert_str_eq(mstr(p0, "negative_prompt"), "blurry");
    ck_assert_str_eq(mstr(p0, "sampler"), "dpmpp_2m");
    ck_assert_str_eq(mstr(p0, "schedule"), "karras");
    ck_assert_str_eq(mstr(p0, "size"), "128x128");
    ck_assert_int_eq(json_integer_value(json_object_get(p0, "steps")), 4);
    ck_assert(json_number_value(json_object_get(p0, "cfg_scale")) == 5.0);
    json_t *l3 = json_array_get(m, 3), *p3 = json_object_get(l3, "parameters");
    ck_assert_str_eq(mstr(p3, "sampler"), "ddim");
    ck_assert(json_is_null(json_object_get(p3, "schedule")));
    ck_assert(json_number_value(json_object_get(p3, "cfg_scale")) == 7.5);
    ck_assert_str_eq(mstr(p3, "model"), "model");
    json_decref(m);
}
END_TEST

/* Bad JSON lines fail alone, naming the file, the line and the field. */
START_TEST(test_json_lines_bad) {
    const char *file = test_tmp("bad.txt");
    write_text(file, "a good line\n"
                     "{\"prompt\": \"x\", \"stepz\": 3}\n"
                     "{\"prompt\": \"x\", \"sampler\": \"k_lms\"}\n"
                     "{\"prompt\": \"x\", \"size\": \"128\"}\n"
                     "{\"prompt\": \"x\", \"size\": \"256x128\"}\n"
                     "{\"prompt\": \"x\", \"steps\": \"2\"}\n"
                     "{\"prompt\": \"x\"\n"
                     "{\"prompt\": \"x\", \"sampler\": \"lcm\", \"steps\": 3}\n");
    const char *dir = test_tmp("bad-json-out");
    char *out;
    int rc = run(&out, "--prompts", file, "--steps", "2", "-o", dir, NULL);
    ck_assert_msg(rc == 1, "status %d:\n%s", rc, out);
    const char *want[] = {
        "bad.txt:2: unknown field \"stepz\"",
        "bad.txt:3: \"sampler\": unknown sampler 'k_lms'",
        "bad.txt:4: \"size\": expected \"WxH\"",
        "bad.txt:5: 256x128 (width x height) was not compiled",
        "bad.txt:6: \"steps\": expected an integer from 1 to 1000, got a string",
        "bad.txt:7: invalid JSON",
        "6 of 8 prompts failed",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        ck_assert_msg(strstr(out, want[i]), "no '%s' in:\n%s", want[i], out);
    free(out);
    int n;
    char **pngs = list_pngs(dir, &n);
    ck_assert_msg(n == 2 && !strcmp(pngs[0], "00001-0.png") && !strcmp(pngs[1], "00008-7.png"), "%d images", n);
    free_list(pngs, n);
    json_t *m = read_manifest(dir);
    ck_assert_int_eq((int)json_array_size(m), 2);
    json_t *p = json_object_get(json_array_get(m, 1), "parameters");
    /* lcm's own default guidance scale, 1 */
    ck_assert_str_eq(mstr(p, "sampler"), "lcm");
    ck_assert(json_number_value(json_object_get(p, "cfg_scale")) == 1.0);
    json_decref(m);
    /* --skip-existing needs --prompts */
    rc = run(&out, "--prompt", "x", "--skip-existing", "-o", test_tmp("bad-skip.png"), NULL);
    ck_assert_msg(rc == 2 && strstr(out, "--skip-existing needs --prompts"), "status %d:\n%s", rc, out);
    free(out);
    assert_no_output("bad-skip");
}
END_TEST

/* ---- the deployment scripts ------------------------------------------------------ */

#define N_LINES 5
static const char *k_prompts = "a cat\n"
                               "{\"prompt\": \"a red fox\", \"seed\": 7}\n"
                               "\n"
                               "--prompt an owl --steps 4\n"
                               "{\"prompt\": \"a dog\", \"sampler\": \"Euler\", \"size\": \"128x128\"}\n"
                               "a boat\n";
/* the images of k_prompts with --seed 0 */
static const char *const k_files[N_LINES] = {"00001-0.png", "00002-7.png", "00004-3.png", "00005-4.png",
                                             "00006-5.png"};

/* Run `sh script args` in the repository with extra environment (pairs,
 * NULL-terminated); status, output in *out. */
static int run_script(char **out, const char *const *env, const char *shell, const char *script, ...) {
    for (const char *const *e = env; *e; e += 2) setenv(e[0], e[1], 1);
    char *argv[24];
    int k = 0;
    argv[k++] = (char *)shell;
    argv[k++] = (char *)script;
    va_list ap;
    va_start(ap, script);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) argv[k++] = (char *)a;
    va_end(ap);
    argv[k] = NULL;
    int rc = test_run(argv, out);
    for (const char *const *e = env; *e; e += 2) unsetenv(e[0]);
    return rc;
}

static const char *repo_file(const char *rel) {
    static char b[4][700];
    static int k;
    char *p = b[k++ % 4];
    snprintf(p, 700, "%s/%s", LDM_DEPLOY_ROOT, rel);
    return p;
}

/* Every line's image exactly once among dir's PNGs, and once among the
 * manifest's non-skipped lines (twice for k_files[twice], made again);
 * returns the manifest. */
static json_t *check_union(const char *dir, int twice) {
    int n;
    char **pngs = list_pngs(dir, &n);
    ck_assert_msg(n == N_LINES, "%s: %d images, expected %d", dir, n, N_LINES);
    for (int i = 0; i < N_LINES; i++) ck_assert_str_eq(pngs[i], k_files[i]);
    free_list(pngs, n);
    json_t *m = read_manifest(dir);
    int seen[N_LINES] = {0};
    for (size_t i = 0; i < json_array_size(m); i++) {
        json_t *l = json_array_get(m, i);
        if (json_is_true(json_object_get(l, "skipped"))) continue;
        const char *f = mstr(l, "file");
        int k = -1;
        for (int j = 0; j < N_LINES; j++)
            if (!strcmp(f, k_files[j])) k = j;
        ck_assert_msg(k >= 0, "the manifest names %s, which is not a line's image", f);
        char line[8];
        snprintf(line, sizeof line, "%05d", (int)json_integer_value(json_object_get(l, "line")));
        ck_assert_msg(!strncmp(f, line, 5), "manifest line %s names %s", line, f);
        seen[k]++;
    }
    for (int j = 0; j < N_LINES; j++)
        ck_assert_msg(seen[j] == 1 + (j == twice), "%s: %d manifest lines", k_files[j], seen[j]);
    return m;
}

START_TEST(test_slurm_array) {
    const char *prompts = test_tmp("prompts.txt"), *dir = test_tmp("slurm-out");
    write_text(prompts, k_prompts);
    const char *script = repo_file("docs/deploy/slurm-array.sh");
    char *out;
    for (int k = 0; k < 2; k++) {
        char id[16];
        snprintf(id, sizeof id, "%d", k);
        const char *env[] = {"TXT2IMG", exe(), "WEIGHTS", model(), "PROMPTS", prompts, "OUT", dir,
                             "SLURM_ARRAY_TASK_ID", id, "SLURM_ARRAY_TASK_COUNT", "2", NULL};
        int rc = run_script(&out, env, "bash", script, "--steps", "2", NULL);
        ck_assert_msg(rc == 0, "shard %d/2: status %d:\n%s", k, rc, out);
        ck_assert_msg(strstr(out, k ? "line 2 -> " : "line 1 -> ") && !strstr(out, k ? "line 1 -> " : "line 2 -> "),
                      "shard %d/2 drew another shard's lines:\n%s", k, out);
        free(out);
    }
    json_t *m = check_union(dir, -1);
    ck_assert_int_eq((int)json_array_size(m), N_LINES);
    json_decref(m);

    /* pre-empted: one image lost; a re-run of both shards makes it alone */
    char victim[600], keep[600];
    snprintf(victim, sizeof victim, "%s/%s", dir, k_files[2]);
    snprintf(keep, sizeof keep, "%s/%s", dir, k_files[0]);
    struct stat st0;
    ck_assert(stat(keep, &st0) == 0);
    ck_assert(remove(victim) == 0);
    int made = 0, skipped = 0;
    for (int k = 0; k < 2; k++) {
        char id[16];
        snprintf(id, sizeof id, "%d", k);
        const char *env[] = {"TXT2IMG", exe(), "WEIGHTS", model(), "PROMPTS", prompts, "OUT", dir,
                             "SLURM_ARRAY_TASK_ID", id, "SLURM_ARRAY_TASK_COUNT", "2", NULL};
        int rc = run_script(&out, env, "bash", script, "--steps", "2", NULL);
        ck_assert_msg(rc == 0, "re-run of shard %d/2: status %d:\n%s", k, rc, out);
        for (const char *p = out; (p = strstr(p, " -> ")) != NULL; p++) made++;
        for (const char *p = out; (p = strstr(p, "skipped (--skip-existing)")) != NULL; p++) skipped++;
        free(out);
    }
    ck_assert_msg(made == 1 && skipped == N_LINES - 1, "re-run: %d made, %d skipped", made, skipped);
    struct stat st1;
    ck_assert(stat(keep, &st1) == 0);
    ck_assert_msg(st1.st_ino == st0.st_ino && st1.st_mtime == st0.st_mtime, "an existing image was written again");
    m = check_union(dir, 2);
    ck_assert_int_eq((int)json_array_size(m), 2 * N_LINES);
    for (size_t i = N_LINES; i < json_array_size(m); i++) {
        json_t *l = json_array_get(m, i);
        int sk = json_is_true(json_object_get(l, "skipped"));
        ck_assert_msg(sk == !!strcmp(mstr(l, "file"), k_files[2]), "re-run line %zu: %s skipped=%d", i,
                      mstr(l, "file"), sk);
        ck_assert(json_is_object(json_object_get(l, "parameters")));
        ck_assert(sk ? !json_object_get(l, "seconds") : json_is_number(json_object_get(l, "seconds")));
    }
    json_decref(m);

    /* nothing missing: nothing loaded */
    const char *env[] = {"TXT2IMG", exe(), "WEIGHTS", model(), "PROMPTS", prompts, "OUT", dir,
                         "SLURM_ARRAY_TASK_ID", "1", "SLURM_ARRAY_TASK_COUNT", "2", NULL};
    int rc = run_script(&out, env, "bash", script, NULL);
    ck_assert_msg(rc == 0 && strstr(out, "3 of 3 images existed already") && !strstr(out, "load weights"),
                  "status %d:\n%s", rc, out);
    free(out);
    /* outside an array job: a clear refusal */
    const char *env1[] = {"TXT2IMG", exe(), NULL};
    rc = run_script(&out, env1, "bash", script, NULL);
    ck_assert_msg(rc != 0 && strstr(out, "not a Slurm array task"), "status %d:\n%s", rc, out);
    free(out);
}
END_TEST

/* The Indexed Job: its shape, and its container's command for indexes 0, 1 */
START_TEST(test_indexed_job) {
    CfgNode *y = cfg_load(repo_file("docs/deploy/indexed-job.yaml"));
    ck_assert_msg(y, "%s", ldm_last_error());
    const CfgNode *mode = cfg_path(y, "spec.completionMode"), *comp = cfg_path(y, "spec.completions"),
                  *par = cfg_path(y, "spec.parallelism"), *ctrs = cfg_path(y, "spec.template.spec.containers");
    ck_assert(mode && mode->kind == CFG_STRING && !strcmp(mode->s, "Indexed"));
    ck_assert(comp && comp->kind == CFG_INT && par && par->kind == CFG_INT && par->i <= comp->i);
    ck_assert_str_eq(cfg_path(y, "kind")->s, "Job");
    ck_assert(ctrs && ctrs->kind == CFG_LIST && ctrs->n == 1);
    const CfgNode *c = ctrs->items[0], *args = cfg_get(c, "args"), *env = cfg_get(c, "env");
    ck_assert(args && args->kind == CFG_LIST && args->n == 1 && args->items[0]->kind == CFG_STRING);
    const char *cmd = args->items[0]->s;
    ck_assert_msg(strstr(cmd, "$JOB_COMPLETION_INDEX/$SHARDS") && strstr(cmd, "--skip-existing"), "%s", cmd);
    int shards = -1;
    for (int i = 0; env && i < env->n; i++)
        if (!strcmp(cfg_get(env->items[i], "name")->s, "SHARDS")) shards = atoi(cfg_get(env->items[i], "value")->s);
    ck_assert_msg(shards == comp->i, "SHARDS %d, completions %lld", shards, (long long)comp->i);
    /* the volumes it mounts exist */
    const CfgNode *vols = cfg_path(y, "spec.template.spec.volumes"), *mounts = cfg_get(c, "volumeMounts");
    ck_assert(vols && mounts && vols->n == mounts->n);

    /* the command, locally: two shards */
    const char *prompts = test_tmp("k8s-prompts.txt"), *dir = test_tmp("k8s-out");
    write_text(prompts, k_prompts);
    const char *script = test_tmp("k8s-cmd.sh");
    write_text(script, cmd);
    for (int k = 0; k < 2; k++) {
        char id[16];
        snprintf(id, sizeof id, "%d", k);
        const char *envv[] = {"TXT2IMG", exe(), "WEIGHTS", model(), "PROMPTS", prompts, "OUT", dir,
                              "JOB_COMPLETION_INDEX", id, "SHARDS", "2", NULL};
        char *out;
        int rc = run_script(&out, envv, "/bin/sh", script, NULL);
        ck_assert_msg(rc == 0, "index %d: status %d:\n%s", k, rc, out);
        free(out);
    }
    json_decref(check_union(dir, -1));
    cfg_free(y);
}
END_TEST

Suite *suite_deploy(void) {
    Suite *s = suite_create("deploy");
    TCase *tc = tcase_create("lines");
    tcase_set_timeout(tc, 120); /* the appends fork four writers (slow under ASan) */
    tcase_add_test(tc, test_line_plain_and_options);
    tcase_add_test(tc, test_line_json);
    tcase_add_loop_test(tc, test_line_json_bad, 0, N_BAD_JSON);
    tcase_add_test(tc, test_manifest_appends);
    suite_add_tcase(s, tc);

    tc = tcase_create("executable");
    tcase_add_unchecked_fixture(tc, setup_exe, nothing);
    tcase_set_timeout(tc, DEP_SAN ? 1500 : 600);
    tcase_add_test(tc, test_json_lines_match_flags);
    tcase_add_test(tc, test_json_lines_bad);
    tcase_add_test(tc, test_slurm_array);
    tcase_add_test(tc, test_indexed_job);
    suite_add_tcase(s, tc);
    return s;
}
