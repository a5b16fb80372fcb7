/*
 * test_ckpt.c - PyTorch .ckpt checkpoints (runtime/ckpt.c through st_open),
 * `ldmc convert` of them, and txt2img --vae.
 *
 * No torch here: the .ckpt files are written by tests/ckptwrite.h, a zip
 * laid out as torch.save writes it (stored members 64-byte aligned, zip64
 * records) with the protocol-2 pickle Python's pickler emits for a
 * Lightning checkpoint dict (state_dict OrderedDict with its _metadata
 * BUILD, epoch, global_step, a ModelCheckpoint callback state holding a
 * numpy scalar). Cases:
 *
 *   - the sd1-tiny golden checkpoint as .ckpt, F32 (sd-v1-4.ckpt's layout:
 *     a Lightning dict holding a plain dict as state_dict, zip64) and F16
 *     (a bare OrderedDict, plain zip, another top directory), and
 *     with deflated members: st_open gives the same tensors (names, order,
 *     dtypes, shapes, bytes) as the safetensors file;
 *   - files pickled by Python's own pickler (the fuzz seeds, written by
 *     tests/fuzz/make_seeds.py with stand-in torch modules) read right;
 *     st_replace_vae with and without the first_stage_model. prefix;
 *   - `ldmc convert IN.ckpt -o OUT.safetensors` gives every tensor bit for
 *     bit, and --dtype f16 the same as converting the safetensors file;
 *   - refused, with the file, the byte offset and the opcode or global
 *     named, by st_open and by `ldmc convert` (exit 1, no output file):
 *     GLOBAL os.system + REDUCE, STACK_GLOBAL builtins.eval, a call of an
 *     allowed name that is not a callable, unknown opcodes, a pickle
 *     without STOP, a missing memo entry, a tensor without a storage, a
 *     truncated archive, a bad CRC, a bad local header offset, a storage
 *     shorter than its tensor, non-contiguous strides, the legacy format;
 *   - the txt2img executable (sd1-tiny, 128x128) on the .ckpt files makes
 *     the same PNG and latent as on the safetensors files (F32 and F16);
 *   - --vae with the goldens' autoencoder tensors without the
 *     first_stage_model. prefix (safetensors and .ckpt) or with it gives
 *     the same output; a changed VAE tensor changes it; a VAE with a
 *     mis-shaped or missing tensor is an error naming the file and the
 *     tensor, with no output; the same with the graph runner's --vae (the
 *     sd1-tiny VAE decoder).
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"
#include "safetensors.h"
#include "textcond.h"
#include "testproc.h"
#include "testio.h"
#include "testutil.h"
#include "util.h"

#include "ckptwrite.h"

#if defined(__SANITIZE_ADDRESS__)
#define CK_SAN 1
#else
#define CK_SAN 0
#endif

static const char *model_path(void) { return test_shared("goldens/sd1-tiny/model.safetensors"); }

/* ------------------------------------------------------------------------
 * fixtures: the .ckpt files, made once per run
 * ------------------------------------------------------------------------ */

static char g_f32_ckpt[512], g_f16_st[512], g_f16_ckpt[512];

/* Write the tensors of the safetensors file src as a .ckpt. */
static void to_ckpt(const char *src, const char *dst, const CkOpts *o) {
    StFile f;
    ck_assert_msg(st_open(&f, src) == 0, "%s", ldm_last_error());
    CkTensor *t = ck_from_file(&f);
    ck_assert_msg(ck_write(dst, t, f.n_tensors, o) == 0, "%s: cannot write", dst);
    free(t);
    st_close(&f);
}

static void setup_files(void) {
    test_dir_init("ldm_ckpt_");
    if (!test_dir[0] || g_f32_ckpt[0]) return;
    snprintf(g_f32_ckpt, sizeof g_f32_ckpt, "%s/model.ckpt", test_dir);
    CkOpts o32 = {.zip64 = 1, .nested = 1, .plain_dict = 1}; /* sd-v1-4.ckpt's layout */
    to_ckpt(model_path(), g_f32_ckpt, &o32);
    snprintf(g_f16_st, sizeof g_f16_st, "%s/model-fp16.safetensors", test_dir);
    if (st_convert(model_path(), g_f16_st, ST_F16) != 0) {
        g_f32_ckpt[0] = 0;
        return;
    }
    snprintf(g_f16_ckpt, sizeof g_f16_ckpt, "%s/model-fp16.ckpt", test_dir);
    CkOpts o16 = {.dir = "v1-5-pruned-emaonly"};
    to_ckpt(g_f16_st, g_f16_ckpt, &o16);
}

static void teardown_nothing(void) {}

/* Both files hold the same tensors, in the same order, bit for bit. */
static void assert_same_tensors(const char *a_path, const char *b_path) {
    StFile a, b;
    ck_assert_msg(st_open(&a, a_path) == 0, "%s", ldm_last_error());
    ck_assert_msg(st_open(&b, b_path) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(a.n_tensors, b.n_tensors);
    for (int i = 0; i < a.n_tensors; i++) {
        const StTensor *x = &a.tensors[i], *y = &b.tensors[i];
        ck_assert_str_eq(x->name, y->name);
        ck_assert_msg(x->dtype == y->dtype, "%s: dtype %s against %s", x->name, st_dtype_name(x->dtype),
                      st_dtype_name(y->dtype));
        ck_assert_int_eq(x->ndim, y->ndim);
        for (int d = 0; d < x->ndim; d++) ck_assert_int_eq(x->shape[d], y->shape[d]);
        ck_assert_int_eq(x->numel, y->numel);
        ck_assert_uint_eq(x->nbytes, y->nbytes);
        ck_assert_msg(x->nbytes == 0 || memcmp(x->data, y->data, x->nbytes) == 0, "%s: data differs", x->name);
    }
    st_close(&a);
    st_close(&b);
}

/* ------------------------------------------------------------------------
 * reading
 * ------------------------------------------------------------------------ */

START_TEST(test_open_same_tensors) {
    ck_assert_msg(g_f32_ckpt[0], "could not make the .ckpt fixtures");
    if (_i == 0) assert_same_tensors(model_path(), g_f32_ckpt);
    else assert_same_tensors(g_f16_st, g_f16_ckpt);
    /* the loader's own view: 983 tensors, position_ids an I64 */
    StFile f;
    ck_assert_msg(st_open(&f, _i ? g_f16_ckpt : g_f32_ckpt) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, 983);
    const StTensor *p = st_find(&f, "cond_stage_model.transformer.text_model.embeddings.position_ids");
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(p->dtype, ST_I64);
    ck_assert_int_eq(st_find(&f, "model.diffusion_model.out.2.weight")->dtype, _i ? ST_F16 : ST_F32);
    st_close(&f);
}
END_TEST

START_TEST(test_open_deflated) {
    ck_assert_msg(g_f32_ckpt[0], "could not make the .ckpt fixtures");
    const char *p = test_tmp("deflated.ckpt");
    CkOpts o = {.deflate = 1, .nested = 1, .zip64 = _i};
    to_ckpt(g_f16_st, p, &o);
    assert_same_tensors(g_f16_st, p);
    remove(p);
}
END_TEST

/* Small hand-made files: scalars, empty tensors, every dtype, a key set
 * twice (the last value wins, as in Python), a state dict of only non-tensors. */
START_TEST(test_open_small) {
    static const float a[6] = {1, 2, 3, 4, 5, 6};
    static const int64_t ids[3] = {-1, 0, 1 << 30};
    static const uint8_t u8[2] = {7, 255};
    static const uint16_t h[2] = {0x3c00, 0xc000};
    CkTensor t[] = {
        {"a.weight", ST_F32, 2, {2, 3}, a},
        {"ids", ST_I64, 1, {3}, ids},
        {"scalar", ST_F32, 0, {0}, a + 5},
        {"empty", ST_F32, 2, {0, 4}, a},
        {"u8", ST_U8, 1, {2}, u8},
        {"half", ST_F16, 1, {2}, h},
        {"a.weight", ST_F32, 1, {2}, a + 4},
    };
    const char *p = test_tmp("small.ckpt");
    CkOpts o = {.nested = 1};
    ck_assert(ck_write(p, t, 7, &o) == 0);
    StFile f;
    ck_assert_msg(st_open(&f, p) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, 6);
    ck_assert_str_eq(f.tensors[0].name, "a.weight"); /* first place, last value */
    ck_assert_int_eq(f.tensors[0].ndim, 1);
    float v[6];
    ck_assert_int_eq(st_to_f32(&f.tensors[0], v), 0);
    ck_assert(v[0] == 5 && v[1] == 6);
    int32_t iv[3];
    ck_assert_int_eq(st_to_i32(st_find(&f, "ids"), iv), 0);
    ck_assert(iv[0] == -1 && iv[2] == 1 << 30);
    ck_assert_int_eq(st_find(&f, "scalar")->ndim, 0);
    ck_assert_int_eq(st_find(&f, "scalar")->numel, 1);
    ck_assert_int_eq(st_to_f32(st_find(&f, "scalar"), v), 0);
    ck_assert(v[0] == 6);
    ck_assert_int_eq(st_find(&f, "empty")->numel, 0);
    ck_assert_int_eq(st_find(&f, "u8")->data[1], 255);
    ck_assert_int_eq(st_to_f32(st_find(&f, "half"), v), 0);
    ck_assert(v[0] == 1 && v[1] == -2);
    st_close(&f);
    /* the same in a bare state dict, with no tensor at all */
    ck_assert(ck_write(p, t, 0, &(CkOpts){.nested = 1}) == 0);
    ck_assert_msg(st_open(&f, p) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, 0);
    st_close(&f);
}
END_TEST

/* Textual-inversion embeddings saved by torch.save (.pt): the webui's
 * {'string_to_param': {'*': tensor}, 'string_to_token': ..., 'name': ...,
 * 'step': ...} names its tensor "string_to_param.*" (one level of nested
 * dicts, "outer.inner"), which the embedding loader takes: pickled by
 * Python (make_seeds.py: 2 vectors, 0.125 * i) and by ckptwrite.h; loaded
 * from a directory (--embeddings) by the file's stem. */
START_TEST(test_embedding_pt) {
    const char *py = "tests/fuzz/corpus/ckpt/embedding_tinyemb.pt";
    StFile f;
    ck_assert_msg(st_open(&f, py) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, 1);
    ck_assert_str_eq(f.tensors[0].name, "string_to_param.*");
    st_close(&f);
    LdmEmbedding e;
    char why[512];
    ck_assert_msg(ldm_embedding_load(py, 4, &e, why, sizeof why) == 0, "%s %s", why, ldm_last_error());
    ck_assert_int_eq(e.n_vectors, 2);
    for (int i = 0; i < 8; i++) ck_assert_msg(e.vec[i] == 0.125f * (float)i, "vec[%d] = %g", i, (double)e.vec[i]);
    ck_assert_str_eq(e.name, "embedding_tinyemb");
    ldm_embedding_free(&e);
    /* another width: another model's, skipped (1) */
    ck_assert_int_eq(ldm_embedding_load(py, 768, &e, why, sizeof why), 1);
    ck_assert_msg(strstr(why, "width 4"), "%s", why);
    /* ckptwrite.h's, in a directory with a safetensors one */
    static const float v[3 * 4] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    CkTensor t = {"easyneg", ST_F32, 2, {3, 4}, v};
    mkdir(test_tmp("emb"), 0755);
    ck_assert(ck_write(test_tmp("emb/easyneg.pt"), &t, 1, &(CkOpts){.embedding_pt = 1, .zip64 = 1}) == 0);
    StWriter *w = st_writer_new();
    int64_t sh[1] = {4};
    st_writer_add(w, "emb_params", ST_F32, 1, sh, v);
    ck_assert(st_writer_save(w, test_tmp("emb/other.safetensors")) == 0);
    st_writer_free(w);
    LdmEmbeddings all;
    ck_assert_msg(ldm_embeddings_load_dir(test_tmp("emb"), 4, &all) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(all.n, 2);
    ck_assert_str_eq(all.e[0].name, "easyneg");
    ck_assert_int_eq(all.e[0].n_vectors, 3);
    ck_assert(all.e[0].vec[11] == 12.0f);
    ck_assert_str_eq(all.e[1].name, "other");
    ck_assert_int_eq(all.e[1].n_vectors, 1);
    ldm_embeddings_free(&all);
}
END_TEST

/* Files pickled by Python's own pickler (tests/fuzz/make_seeds.py: stand-in
 * torch modules, zipfile): a check of the layout independent of
 * ckptwrite.h. Weights 0.01 * i, position_ids 0..3, scalar a = 1.5. */
START_TEST(test_python_pickled) {
    static const char *const files[] = {"ckpt_f32.ckpt", "ckpt_f16.ckpt", "ckpt_bf16.ckpt"};
    static const StDtype dts[] = {ST_F32, ST_F16, ST_BF16};
    char path[600];
    snprintf(path, sizeof path, "tests/fuzz/corpus/ckpt/%s", files[_i]);
    StFile f;
    ck_assert_msg(st_open(&f, path) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, 5);
    const StTensor *t = st_find(&f, "model.diffusion_model.input_blocks.1.1.proj_in.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->dtype, dts[_i]);
    ck_assert_int_eq(t->ndim, 4);
    ck_assert(t->shape[0] == 4 && t->shape[1] == 4 && t->shape[2] == 1 && t->shape[3] == 1);
    float v[16];
    ck_assert_int_eq(st_to_f32(t, v), 0);
    for (int i = 0; i < 16; i++) /* bf16: truncated by the script, within 2^-7 */
        ck_assert_msg(fabs(v[i] - 0.01 * i) <= 0.01 * i / 128 + 1e-7, "%s: element %d is %g", files[_i], i, v[i]);
    int32_t ids[4];
    ck_assert_int_eq(st_to_i32(st_find(&f, "cond_stage_model.transformer.text_model.embeddings.position_ids"), ids), 0);
    ck_assert(ids[0] == 0 && ids[3] == 3);
    const StTensor *a = st_find(&f, "a");
    ck_assert_int_eq(a->ndim, 0);
    ck_assert_int_eq(st_to_f32(a, v), 0);
    ck_assert(v[0] == 1.5f);
    st_close(&f);
}
END_TEST

/* st_replace_vae in process: a VAE file without the prefix over a
 * checkpoint (the F16 tensors replace the F32 ones; the rest unchanged). */
START_TEST(test_replace_vae) {
    StFile f;
    ck_assert_msg(st_open(&f, "tests/fuzz/corpus/ckpt/ckpt_vae_base.ckpt") == 0, "%s", ldm_last_error());
    ck_assert_msg(st_replace_vae(&f, "tests/fuzz/corpus/ckpt/vae_stripped.ckpt") == 0, "%s", ldm_last_error());
    float v[72];
    const StTensor *t = st_find(&f, "first_stage_model.decoder.conv_in.weight");
    ck_assert_int_eq(t->dtype, ST_F16);
    ck_assert_int_eq(st_to_f32(t, v), 0);
    ck_assert(v[0] == 0.25f && v[71] == 0.25f);
    t = st_find(&f, "model.diffusion_model.out.2.bias");
    ck_assert_int_eq(t->dtype, ST_F32);
    /* the base itself as the VAE: prefixed names */
    ck_assert_msg(st_replace_vae(&f, "tests/fuzz/corpus/ckpt/ckpt_vae_base.ckpt") == 0, "%s", ldm_last_error());
    ck_assert_int_eq(st_find(&f, "first_stage_model.decoder.conv_in.weight")->dtype, ST_F32);
    /* a file without any of them: the first missing one is named, f unchanged */
    ck_assert_int_eq(st_replace_vae(&f, "tests/fuzz/corpus/ckpt/ckpt_f32.ckpt"), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "ckpt_f32.ckpt: --vae: tensor 'decoder.conv_in.weight' is missing"));
    ck_assert_int_eq(st_find(&f, "first_stage_model.decoder.conv_in.weight")->dtype, ST_F32);
    st_close(&f);
}
END_TEST

/* Two tensors viewing one storage at different offsets (tied or sliced
 * weights), the storage named twice through the memo, as torch writes it. */
START_TEST(test_shared_storage) {
    static const float st[6] = {1, 2, 3, 4, 5, 6};
    static const char pk[] =
        "\x80\x02}q\x00(X\x01\x00\x00\x00" "aq\x01" "ctorch._utils\n_rebuild_tensor_v2\nq\x02"
        "((X\x07\x00\x00\x00storageq\x03" "ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x00" "0q\x05X\x03\x00\x00\x00"
        "cpuq\x06K\x06tq\x07QK\x02K\x02K\x02\x86q\x08K\x02K\x01\x86q\x09\x89" "ccollections\nOrderedDict\nq\x0a)"
        "Rq\x0btq\x0cRq\x0dX\x01\x00\x00\x00" "bq\x0eh\x02((h\x03h\x04h\x05h\x06K\x06tq\x0fQK\x00K\x02\x85q\x10"
        "K\x01\x85q\x11\x89h\x0a)Rq\x12tq\x13Rq\x14u.";
    CkTensor t = {"x", ST_F32, 1, {6}, st};
    const char *p = test_tmp("shared.ckpt");
    ck_assert(ck_write(p, &t, 1, &(CkOpts){.raw_pickle = (const uint8_t *)pk, .raw_len = sizeof pk - 1}) == 0);
    StFile f;
    ck_assert_msg(st_open(&f, p) == 0, "%s", ldm_last_error());
    ck_assert_int_eq(f.n_tensors, 2);
    float v[4];
    ck_assert_int_eq(st_to_f32(st_find(&f, "a"), v), 0);
    ck_assert(v[0] == 3 && v[3] == 6);
    ck_assert_int_eq(st_to_f32(st_find(&f, "b"), v), 0);
    ck_assert(v[0] == 1 && v[1] == 2);
    st_close(&f);
    /* the offset past the storage's end: refused */
    char bad[sizeof pk];
    memcpy(bad, pk, sizeof pk);
    char *off = memmem(bad, sizeof pk - 1, "QK\x02K\x02K\x02", 7);
    ck_assert_ptr_nonnull(off);
    off[2] = 3; /* 3 + 4 elements > 6 */
    ck_assert(ck_write(p, &t, 1, &(CkOpts){.raw_pickle = (const uint8_t *)bad, .raw_len = sizeof pk - 1}) == 0);
    ck_assert_int_eq(st_open(&f, p), -1);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "too short"));
    st_close(&f);
    remove(p);
}
END_TEST

/* Pickles a checkpoint may hold that carry no tensor: accepted. */
START_TEST(test_pickle_accepted) {
    static const struct {
        const char *label;
        const char *p;
        size_t n;
    } ok[] = {
#define OK(label, s) {label, s, sizeof(s) - 1}
        /* a callback object: NEWOBJ of the class, its state by BUILD, as a dict value */
        OK("newobj", "\x80\x02}q\x00X\x01\x00\x00\x00" "cq\x01" "cpytorch_lightning.callbacks.model_checkpoint\n"
                     "ModelCheckpoint\nq\x02)\x81q\x03}q\x04X\x01\x00\x00\x00" "kNsbs."),
        /* protocol 4: FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL */
        OK("protocol 4", "\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x0b" "collections\x94\x8c\x0b"
                         "OrderedDict\x94\x93\x94)R\x94."),
        /* sets, big ints, floats, bytes, DUP, POP, POP_MARK, APPENDS, LONG_BINPUT/GET */
        OK("values", "\x80\x02}r\x00\x01\x00\x00(X\x01\x00\x00\x00s\x8f(K\x01K\x02\x90X\x01\x00\x00\x00"
                     "l\x8a\x0a\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0aX\x01\x00\x00\x00" "fG?\xf0\x00\x00\x00\x00"
                     "\x00\x00X\x01\x00\x00\x00" "bC\x02hiX\x01\x00\x00\x00" "a](K\x01K\x02" "e2" "0(N1X\x01\x00\x00\x00"
                     "gj\x00\x01\x00\x00u."),
        /* a set rebuilt the protocol-2 way, a frozenset, an int key, a bool key */
        OK("set reduce", "\x80\x02}(K\x01" "c__builtin__\nset\n]\x85R\x88(\x91u."),
#undef OK
    };
    for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) {
        const char *p = test_tmp("ok-%zu.ckpt", k);
        ck_assert(ck_write(p, NULL, 0, &(CkOpts){.raw_pickle = (const uint8_t *)ok[k].p, .raw_len = ok[k].n}) == 0);
        StFile f;
        ck_assert_msg(st_open(&f, p) == 0, "%s: %s", ok[k].label, ldm_last_error());
        ck_assert_int_eq(f.n_tensors, 0);
        st_close(&f);
        remove(p);
    }
}
END_TEST

/* ------------------------------------------------------------------------
 * ldmc convert
 * ------------------------------------------------------------------------ */

static int run_ldmc(char **out, ...) {
    char ldmc[400];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    char *argv[16];
    int k = 0;
    argv[k++] = ldmc;
    va_list ap;
    va_start(ap, out);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && k < 15) argv[k++] = (char *)a;
    va_end(ap);
    argv[k] = NULL;
    return test_run(argv, out);
}

START_TEST(test_convert_back) {
    ck_assert_msg(g_f32_ckpt[0], "could not make the .ckpt fixtures");
    char *out;
    const char *back = test_tmp("back.safetensors");
    int rc = run_ldmc(&out, "convert", g_f32_ckpt, "-o", back, NULL);
    ck_assert_msg(rc == 0, "ldmc convert: status %d:\n%s", rc, out);
    free(out);
    assert_same_tensors(model_path(), back);
    /* F16, the other argument order */
    const char *back16 = test_tmp("back16.safetensors");
    rc = run_ldmc(&out, "convert", g_f16_ckpt, back16, NULL);
    ck_assert_msg(rc == 0, "ldmc convert: status %d:\n%s", rc, out);
    free(out);
    assert_same_tensors(g_f16_st, back16);
    /* --dtype f16 from the F32 .ckpt: what converting the safetensors gives */
    const char *conv16 = test_tmp("conv16.safetensors");
    rc = run_ldmc(&out, "convert", "--dtype", "f16", g_f32_ckpt, "-o", conv16, NULL);
    ck_assert_msg(rc == 0, "ldmc convert: status %d:\n%s", rc, out);
    free(out);
    assert_same_tensors(g_f16_st, conv16);
    /* usage errors */
    rc = run_ldmc(&out, "convert", g_f32_ckpt, NULL);
    ck_assert_int_eq(rc, 2);
    ck_assert_ptr_nonnull(strstr(out, "usage"));
    free(out);
    rc = run_ldmc(&out, "convert", "--dtype", "f8", g_f32_ckpt, "-o", test_tmp("x.safetensors"), NULL);
    ck_assert_int_eq(rc, 2);
    free(out);
    remove(back);
    remove(back16);
    remove(conv16);
}
END_TEST

/* ------------------------------------------------------------------------
 * refusals
 * ------------------------------------------------------------------------ */

/* A pickle given as bytes (C string literal with its length). */
#define PK(s) (const uint8_t *)(s), sizeof(s) - 1

typedef struct Bad {
    const char *label;
    const uint8_t *pickle;       /* raw data.pkl, or NULL: the good one with a zip-level break */
    size_t pickle_len;
    int breakage;                /* see make_bad */
    const char *expect[3];       /* substrings of the message */
} Bad;

enum { BRK_NONE, BRK_TRUNCATE, BRK_CRC, BRK_OFFSET, BRK_SHORT, BRK_STRIDE, BRK_LEGACY, BRK_NOPKL, BRK_DUP };

static const Bad k_bad[] = {
    {"os.system", PK("\x80\x02" "cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03."), BRK_NONE,
     {"global 'os.system'", "byte 2", "GLOBAL"}},
    {"builtins.eval", PK("\x80\x04\x95\x20\x00\x00\x00\x00\x00\x00\x00\x8c\x08" "builtins\x94\x8c\x04" "eval\x94\x93\x94"
                         "\x8c\x05" "1+1\x94\x85\x94R\x94."), BRK_NONE,
     {"global 'builtins.eval'", "STACK_GLOBAL", "byte 29"}},
    {"reduce of a name", PK("\x80\x02}q\x00(X\x01\x00\x00\x00" "aq\x01" "ctorch\nFloatStorage\nq\x02)Rq\x03u."), BRK_NONE,
     {"refused call of 'torch.FloatStorage'", "REDUCE", "byte 37"}},
    {"INST", PK("\x80\x02}q\x00(X\x01\x00\x00\x00" "aq\x01(iposix\nsystem\nX\x02\x00\x00\x00lsu."), BRK_NONE,
     {"0x69 INST", "byte 15", "unsupported opcode"}},
    {"bad opcode", PK("\x80\x02}q\x00\xff."), BRK_NONE, {"0xff", "byte 5", "not a pickle opcode"}},
    {"no STOP", PK("\x80\x02}q\x00(X\x01\x00\x00\x00" "aK\x01u"), BRK_NONE, {"end of the data", "data.pkl", "byte 15"}},
    {"memo", PK("\x80\x02}q\x00(X\x01\x00\x00\x00" "ah\x07u."), BRK_NONE, {"memo entry 7", "BINGET", "byte 12"}},
    {"no storage", PK("\x80\x02}q\x00(X\x01\x00\x00\x00" "actorch._utils\n_rebuild_tensor_v2\n(K\x01K\x00)))\x89}tRu."),
     BRK_NONE, {"expected a storage", "REDUCE", "_rebuild_tensor_v2"}},
    {"not a dict", PK("\x80\x02]."), BRK_NONE, {"expected a dict", "a list", "data.pkl"}},
    {"truncated", NULL, 0, BRK_TRUNCATE, {"end-of-central-directory", "truncated", NULL}},
    {"crc", NULL, 0, BRK_CRC, {"CRC-32", "archive/data/1", "corrupt"}},
    {"offset", NULL, 0, BRK_OFFSET, {"local file header", "archive/data/0", NULL}},
    {"short storage", NULL, 0, BRK_SHORT, {"too short", "archive/data/0", "byte"}},
    {"strides", NULL, 0, BRK_STRIDE, {"not contiguous", "stride [1, 3]", "byte"}},
    {"legacy", NULL, 0, BRK_LEGACY, {"legacy format", NULL, NULL}},
    {"no data.pkl", NULL, 0, BRK_NOPKL, {"data.pkl", "not a PyTorch checkpoint", NULL}},
    {"duplicate member", NULL, 0, BRK_DUP, {"unique member names", "archive/data/0", NULL}},
};
#define N_BAD ((int)(sizeof k_bad / sizeof k_bad[0]))

/* Find the n-th occurrence of needle in the buffer. */
static uint8_t *find_bytes(uint8_t *p, size_t n, const void *needle, size_t nl, int nth) {
    for (size_t i = 0; i + nl <= n; i++)
        if (!memcmp(p + i, needle, nl) && nth-- == 0) return p + i;
    return NULL;
}

static void make_bad(const Bad *b, const char *path) {
    static const float a[6] = {1, 2, 3, 4, 5, 6};
    CkTensor t[2] = {{"w", ST_F32, 2, {2, 3}, a}, {"b", ST_F32, 1, {3}, a}};
    CkOpts o = {.raw_pickle = b->pickle, .raw_len = b->pickle_len, .bad_stride = b->breakage == BRK_STRIDE,
                .short_storage = b->breakage == BRK_SHORT, .nested = 1};
    if (b->breakage == BRK_NOPKL) o.dir = "a/b";
    CkBuf z;
    ck_build(&z, t, 2, &o);
    uint8_t *m;
    switch (b->breakage) {
    case BRK_TRUNCATE: z.n /= 2; break;
    case BRK_CRC: /* one byte of storage 1's data (the first float of "b": 1.0f = 00 00 80 3f) */
        m = find_bytes(z.p, z.n, "\x00\x00\x80\x3f\x00\x00\x00\x40", 8, 1);
        ck_assert_ptr_nonnull(m);
        m[0] ^= 1;
        break;
    case BRK_OFFSET: /* the central header of archive/data/0: its local offset -> 4 */
        m = find_bytes(z.p, z.n, "archive/data/0", 14, 1);
        ck_assert_ptr_nonnull(m);
        ck_assert_int_eq(m[-46 + 0], 'P');
        m[-4] = 4, m[-3] = 0, m[-2] = 0, m[-1] = 0;
        break;
    case BRK_LEGACY: {
        static const uint8_t legacy[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20,
                                         0x6a, 0xa8, 0x50, 0x19, 0x2e};
        z.n = 0;
        ckb_put(&z, legacy, sizeof legacy);
        break;
    }
    case BRK_NOPKL: break; /* "a/b/data.pkl": two levels, not torch's layout */
    case BRK_DUP: /* the central name archive/data/1 -> archive/data/0 */
        m = find_bytes(z.p, z.n, "archive/data/1", 14, 1);
        ck_assert_ptr_nonnull(m);
        m[13] = '0';
        break;
    default: break;
    }
    FILE *fp = fopen(path, "wb");
    ck_assert(fp && fwrite(z.p, 1, z.n, fp) == z.n && fclose(fp) == 0);
    free(z.p);
}

START_TEST(test_refused) {
    const Bad *b = &k_bad[_i];
    const char *p = test_tmp("bad-%d.ckpt", _i);
    make_bad(b, p);
    StFile f;
    ck_assert_msg(st_open(&f, p) == -1, "%s: opened", b->label);
    const char *msg = ldm_last_error();
    ck_assert_msg(strstr(msg, p), "%s: the message does not name the file: %s", b->label, msg);
    for (int k = 0; k < 3; k++)
        if (b->expect[k])
            ck_assert_msg(strstr(msg, b->expect[k]), "%s: the message does not say '%s': %s", b->label, b->expect[k],
                          msg);
    ck_assert_ptr_null(f.tensors);
    st_close(&f);
    /* ldmc convert: exit 1, the same message, no output */
    char *out;
    int rc = run_ldmc(&out, "convert", p, "-o", test_tmp("bad-out.safetensors"), NULL);
    ck_assert_msg(rc == 1, "%s: ldmc convert exited with %d:\n%s", b->label, rc, out);
    ck_assert_msg(strstr(out, "error") && strstr(out, b->expect[0]), "%s: %s", b->label, out);
    free(out);
    assert_no_output("bad-out");
    remove(p);
}
END_TEST

/* ------------------------------------------------------------------------
 * the executable
 * ------------------------------------------------------------------------ */

static char g_exe[700];
static char *g_build_log;
static char g_vae[4][512]; /* renamed (safetensors), renamed (.ckpt), bad shape, missing tensor */

/* The autoencoder tensors of the golden checkpoint without their prefix
 * (as the published SD VAE files name them) into path; `how`: 0 as they
 * are, 1 one tensor with a wrong shape, 2 one tensor left out, 3 one
 * value changed. */
static void write_vae(const char *path, int how, int as_ckpt) {
    StFile f;
    ck_assert_msg(st_open(&f, model_path()) == 0, "%s", ldm_last_error());
    CkTensor *t = calloc((size_t)f.n_tensors, sizeof *t);
    float *changed = NULL;
    int n = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *s = &f.tensors[i];
        if (strncmp(s->name, "first_stage_model.", 18)) continue;
        const char *name = s->name + 18;
        int is_target = !strcmp(name, "decoder.conv_in.bias");
        if (how == 2 && is_target) continue;
        CkTensor *c = &t[n++];
        c->name = name;
        c->dtype = s->dtype;
        c->ndim = s->ndim;
        memcpy(c->shape, s->shape, sizeof c->shape);
        c->data = s->data;
        if (how == 1 && is_target) c->shape[0] -= 1;
        if (how == 3 && !strcmp(name, "post_quant_conv.bias")) {
            changed = malloc(s->nbytes);
            memcpy(changed, s->data, s->nbytes);
            changed[0] += 0.5f;
            c->data = changed;
        }
    }
    if (as_ckpt) {
        ck_assert(ck_write(path, t, n, &(CkOpts){.zip64 = 1}) == 0);
    } else {
        StWriter *w = st_writer_new();
        for (int i = 0; i < n; i++) st_writer_add(w, t[i].name, t[i].dtype, t[i].ndim, t[i].shape, t[i].data);
        ck_assert_msg(st_writer_save(w, path) == 0, "%s", ldm_last_error());
        st_writer_free(w);
    }
    free(changed);
    free(t);
    st_close(&f);
}

static void setup_exe(void) {
    setup_files();
    if (!test_dir[0] || g_exe[0] || g_build_log) return;
    test_build_sd1_tiny_txt2img(CK_SAN, g_exe, sizeof g_exe, &g_build_log);
    snprintf(g_vae[0], sizeof g_vae[0], "%s/vae.safetensors", test_dir);
    write_vae(g_vae[0], 0, 0);
    snprintf(g_vae[1], sizeof g_vae[1], "%s/vae.ckpt", test_dir);
    write_vae(g_vae[1], 0, 1);
    snprintf(g_vae[2], sizeof g_vae[2], "%s/vae-badshape.safetensors", test_dir);
    write_vae(g_vae[2], 1, 0);
    snprintf(g_vae[3], sizeof g_vae[3], "%s/vae-missing.ckpt", test_dir);
    write_vae(g_vae[3], 2, 1);
}

static const char *exe(void) {
    ck_assert_msg(g_exe[0], "make txt2img (sd1-tiny, 128x128) failed:\n%s", g_build_log ? g_build_log : "(not run)");
    return g_exe;
}

/* Run txt2img on weights (and --vae vae if not NULL) writing <tag>.png and
 * <tag>.safetensors (the latent); returns the status, output in *out. */
static int t2i(const char *weights, const char *vae, const char *tag, char **out) {
    char png[600], lat[600];
    snprintf(png, sizeof png, "%s/%s.png", test_dir, tag);
    snprintf(lat, sizeof lat, "%s/%s.safetensors", test_dir, tag);
    char *argv[32];
    int k = 0;
    argv[k++] = (char *)exe();
    argv[k++] = "--weights";
    argv[k++] = (char *)weights;
    if (vae) {
        argv[k++] = "--vae";
        argv[k++] = (char *)vae;
    }
    argv[k++] = "--vocab";
    argv[k++] = (char *)test_shared("clip/bpe_simple_vocab_16e6.txt.gz");
    argv[k++] = "--prompt";
    argv[k++] = "a photograph of an astronaut riding a horse";
    argv[k++] = "--steps";
    argv[k++] = "4";
    argv[k++] = "--seed";
    argv[k++] = "42";
    argv[k++] = "-o";
    argv[k++] = png;
    argv[k++] = "--save-latent";
    argv[k++] = lat;
    argv[k] = NULL;
    return test_run(argv, out);
}

static void t2i_ok(const char *weights, const char *vae, const char *tag) {
    char *out;
    int rc = t2i(weights, vae, tag, &out);
    ck_assert_msg(rc == 0, "txt2img --weights %s%s%s: status %d:\n%s", weights, vae ? " --vae " : "", vae ? vae : "",
                  rc, out);
    free(out);
}

START_TEST(test_txt2img_ckpt) {
    ck_assert_msg(g_f32_ckpt[0], "could not make the .ckpt fixtures");
    const char *st = _i ? g_f16_st : model_path(), *ck = _i ? g_f16_ckpt : g_f32_ckpt;
    t2i_ok(st, NULL, "st");
    t2i_ok(ck, NULL, "ck");
    ck_assert_msg(png_max_diff(test_tmp("st.png"), test_tmp("ck.png")) == 0, "the .ckpt's image differs");
    ck_assert_msg(same_latent(test_tmp("st.safetensors"), test_tmp("ck.safetensors")), "the .ckpt's latent differs");
}
END_TEST

START_TEST(test_vae_same) {
    ck_assert_msg(g_f32_ckpt[0], "could not make the .ckpt fixtures");
    t2i_ok(model_path(), NULL, "plain");
    /* renamed safetensors, renamed .ckpt, the full checkpoint itself (prefixed names) */
    const char *vaes[3] = {g_vae[0], g_vae[1], model_path()};
    for (int k = 0; k < 3; k++) {
        char tag[16];
        snprintf(tag, sizeof tag, "vae%d", k);
        t2i_ok(k == 1 ? g_f32_ckpt : model_path(), vaes[k], tag);
        char a[600], b[600];
        snprintf(a, sizeof a, "%s/%s.png", test_dir, tag);
        snprintf(b, sizeof b, "%s/%s.safetensors", test_dir, tag);
        ck_assert_msg(png_max_diff(test_tmp("plain.png"), a) == 0, "--vae %s: the image differs", vaes[k]);
        ck_assert_msg(same_latent(test_tmp("plain.safetensors"), b), "--vae %s: the latent differs", vaes[k]);
    }
    /* an F16 checkpoint with the F32 VAE: the VAE's tensors keep their dtype */
    t2i_ok(g_f16_st, NULL, "f16");
    t2i_ok(g_f16_st, g_vae[0], "f16vae");
    ck_assert_msg(same_latent(test_tmp("f16.safetensors"), test_tmp("f16vae.safetensors")),
                  "the latent does not depend on the VAE");
}
END_TEST

START_TEST(test_vae_used) {
    const char *p = test_tmp("vae-changed.safetensors");
    write_vae(p, 3, 0);
    t2i_ok(model_path(), NULL, "u-plain");
    t2i_ok(model_path(), p, "u-changed");
    ck_assert_msg(png_max_diff(test_tmp("u-plain.png"), test_tmp("u-changed.png")) > 0,
                  "a changed --vae tensor did not change the image");
}
END_TEST

START_TEST(test_vae_bad) {
    static const struct {
        int vae;
        const char *expect;
    } cases[] = {
        {2, "'decoder.conv_in.bias' has shape"},
        {3, "'decoder.conv_in.bias' is missing"},
        {-1, "cannot open"},
        {-2, "expected a JSON object"},
    };
    const char *vae = cases[_i].vae >= 0 ? g_vae[cases[_i].vae] : cases[_i].vae == -1 ? test_tmp("no-such-vae.ckpt") : NULL;
    if (cases[_i].vae == -2) { /* a file that is neither */
        vae = test_tmp("notvae.safetensors");
        FILE *fp = fopen(vae, "wb");
        ck_assert(fp);
        ck_assert(fwrite("\x02\x00\x00\x00\x00\x00\x00\x00[]", 1, 10, fp) == 10);
        fclose(fp);
    }
    char *out;
    int rc = t2i(model_path(), vae, "bad-vae", &out);
    ck_assert_msg(rc != 0 && rc < 128, "expected a clean failure, got %d:\n%s", rc, out);
    ck_assert_msg(strstr(out, vae) && strstr(out, cases[_i].expect), "the message does not say '%s' of %s:\n%s",
                  cases[_i].expect, vae, out);
    ck_assert_msg(!strstr(out, "AddressSanitizer") && !strstr(out, "runtime error"), "sanitizer report:\n%s", out);
    free(out);
    assert_no_output("bad-vae");
}
END_TEST

/* The graph runner: the sd1-tiny VAE decoder on the .ckpt with --vae (a
 * renamed .ckpt VAE) decodes as on the safetensors checkpoint. */
START_TEST(test_runner_vae) {
    ck_assert_msg(g_f32_ckpt[0], "could not make the .ckpt fixtures");
    char ldmc[400], run[600], cfg[600];
    snprintf(ldmc, sizeof ldmc, "%s/ldmc", test_build_dir());
    snprintf(run, sizeof run, "%s/vae_decoder_runner", test_dir);
    snprintf(cfg, sizeof cfg, "%s", test_shared("goldens/sd1-tiny/config.yaml"));
    char *out;
    char *argv[] = {ldmc, "models/sd1/vae_decoder.graph", "--config", cfg, "-D", "B=1", "-D", "H=128", "-D", "W=128",
                    "-o", run, NULL};
    int rc = test_run(argv, &out);
    ck_assert_msg(rc == 0, "ldmc: status %d:\n%s", rc, out);
    free(out);
    const char *io = test_shared("goldens/sd1-tiny/vae_decode.io.safetensors");
    const char *o1 = test_tmp("dec-st.safetensors"), *o2 = test_tmp("dec-ck.safetensors");
    char *a1[] = {run, "--weights", (char *)model_path(), "--inputs", (char *)io, "--prefix", "case0.", "--outputs",
                  (char *)o1, NULL};
    rc = test_run(a1, &out);
    ck_assert_msg(rc == 0, "runner: status %d:\n%s", rc, out);
    free(out);
    char *a2[] = {run, "--weights", g_f32_ckpt, "--vae", g_vae[1], "--inputs", (char *)io, "--prefix", "case0.",
                  "--outputs", (char *)o2, NULL};
    rc = test_run(a2, &out);
    ck_assert_msg(rc == 0, "runner --vae: status %d:\n%s", rc, out);
    free(out);
    ck_assert_msg(same_tensor(o1, o2, "image"), "the runner's image differs with the .ckpt and --vae");
    char *a3[] = {run, "--weights", g_f32_ckpt, "--vae", g_vae[2], "--inputs", (char *)io, "--prefix", "case0.",
                  "--outputs", (char *)test_tmp("bad-dec.safetensors"), NULL};
    rc = test_run(a3, &out);
    ck_assert_msg(rc == 1 && strstr(out, g_vae[2]) && strstr(out, "'decoder.conv_in.bias' has shape"), "status %d:\n%s",
                  rc, out);
    free(out);
    assert_no_output("bad-dec");
}
END_TEST

Suite *suite_ckpt(void) {
    Suite *s = suite_create("ckpt");
    TCase *tc = tcase_create("read");
    tcase_add_unchecked_fixture(tc, setup_files, teardown_nothing);
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_open_same_tensors, 0, 2);
    tcase_add_loop_test(tc, test_open_deflated, 0, 2);
    tcase_add_test(tc, test_open_small);
    tcase_add_test(tc, test_embedding_pt);
    tcase_add_loop_test(tc, test_python_pickled, 0, 3);
    tcase_add_test(tc, test_replace_vae);
    tcase_add_test(tc, test_pickle_accepted);
    tcase_add_test(tc, test_shared_storage);
    tcase_add_test(tc, test_convert_back);
    tcase_add_loop_test(tc, test_refused, 0, N_BAD);
    suite_add_tcase(s, tc);

    tc = tcase_create("txt2img");
    tcase_add_unchecked_fixture(tc, setup_exe, teardown_nothing);
    tcase_set_timeout(tc, 1200);
    tcase_add_loop_test(tc, test_txt2img_ckpt, 0, 2);
    tcase_add_test(tc, test_vae_same);
    tcase_add_test(tc, test_vae_used);
    tcase_add_loop_test(tc, test_vae_bad, 0, 4);
    tcase_add_test(tc, test_runner_vae);
    suite_add_tcase(s, tc);
    return s;
}
