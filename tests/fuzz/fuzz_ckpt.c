/*
 * fuzz_ckpt.c - the PyTorch .ckpt reader (runtime/ckpt.c) as the programs
 * read a checkpoint:
 *   - an input starting with "PK" is the whole archive: st_open (zip, zip64,
 *     local headers, deflate, the pickle, the tensor rebuild), then every
 *     tensor looked up (st_find), all of its bytes read, the small ones
 *     converted (st_to_f32 / st_to_i32), and bound as a checkpoint to a
 *     small model table (ldm_weights_open, ldm_weights_bind);
 *   - any other input is the pickle alone: it becomes `archive/data.pkl` of
 *     an archive written around it (tests/ckptwrite.h, storages "0".."5" of
 *     64 bytes each), so that the fuzzer reaches the pickle machine without
 *     having to keep a zip consistent;
 *   - either way the file is also used as `--vae` (st_replace_vae) on a
 *     small checkpoint with an autoencoder, made in memory.
 * In the libFuzzer build (FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION) CRC
 * mismatches are not errors, as libpng's are not in fuzz_png.
 */
#include "fuzz.h"
#include "model.h"
#include "safetensors.h"
#include "util.h"

#include "../ckptwrite.h"

static const LdmTensorInfo weights[] = {
    {"model.diffusion_model.input_blocks.1.1.proj_in.weight", LDM_F32, LDM_TF_F32, 4, {4, 4, 1, 1}, {0}},
    {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", LDM_F32, LDM_TF_BPANELS, 2,
     {4, 4}, {0}},
    {"cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", LDM_F32, LDM_TF_BPANELS, 2,
     {4, 4}, {0}},
    {"a", LDM_F32, 0, 0, {0}, {0}},
};
#define N_WEIGHTS ((int)(sizeof weights / sizeof weights[0]))
static const LdmModel model = {.name = "fuzz", .n_weights = N_WEIGHTS, .weights = weights};

static void read_tensors(const StFile *f) {
    unsigned sum = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const StTensor *t = &f->tensors[i];
        if (st_find(f, t->name) == NULL) abort(); /* every tensor is found by its name */
        if (t->nbytes != (size_t)t->numel * st_dtype_size(t->dtype)) abort();
        for (size_t k = 0; k < t->nbytes; k++) sum += t->data[k]; /* every byte readable */
        if (t->numel > 4096) continue;
        float *x = malloc(((size_t)t->numel + 1) * sizeof *x);
        int32_t *y = malloc(((size_t)t->numel + 1) * sizeof *y);
        st_to_f32(t, x);
        st_to_i32(t, y);
        free(x);
        free(y);
    }
    if (sum == 0x5eed) fputc('\0', stderr); /* keep the loop */
}

static void as_checkpoint(const StFile *f) {
    LdmWeights w;
    memset(&w, 0, sizeof w);
    if (ldm_weights_open(&model, f, &w) != 0) return;
    ldm_weights_bind(&w);
    ldm_weights_free(&w);
}

/* The pickle wrapped in an archive (tests/ckptwrite.h's layout). */
static const char *wrap_pickle(const uint8_t *data, size_t size) {
    static uint8_t bytes[6][64];
    CkTensor t[6];
    memset(t, 0, sizeof t);
    for (int i = 0; i < 6; i++) {
        memset(bytes[i], 0x11 * (i + 1), sizeof bytes[i]);
        t[i] = (CkTensor){"x", ST_U8, 1, {64}, bytes[i]};
    }
    CkOpts o = {.raw_pickle = data, .raw_len = size, .zip64 = size & 1};
    CkBuf z;
    ck_build(&z, t, 6, &o);
    const char *path = fuzz_file("fuzz.ckpt", z.p, z.n);
    free(z.p);
    return path;
}

/* A checkpoint with an autoencoder for the --vae use (made once, in
 * memory: the names of vae_stripped.ckpt with the prefix, and one UNet
 * tensor). */
static const char *vae_base(void) {
    static const char *path;
    if (!path) {
        static float v[72];
        for (int i = 0; i < 72; i++) v[i] = 0.5f;
        const CkTensor t[] = {
            {"first_stage_model.decoder.conv_in.weight", ST_F32, 4, {4, 2, 3, 3}, v},
            {"first_stage_model.decoder.conv_in.bias", ST_F32, 1, {4}, v},
            {"first_stage_model.post_quant_conv.weight", ST_F32, 4, {2, 2, 1, 1}, v},
            {"first_stage_model.encoder.conv_out.bias", ST_F32, 1, {4}, v},
            {"first_stage_model.quant_conv.bias", ST_F32, 1, {4}, v},
            {"model.diffusion_model.out.2.bias", ST_F32, 1, {4}, v},
        };
        CkBuf z;
        ck_build(&z, t, 6, &(CkOpts){0});
        static char keep[64];
        snprintf(keep, sizeof keep, "%s", fuzz_file("base.ckpt", z.p, z.n));
        free(z.p);
        path = keep;
    }
    return path;
}

LDM_FUZZ_TARGET(ckpt) {
    const char *path = size >= 2 && data[0] == 'P' && data[1] == 'K' ? fuzz_file("fuzz.ckpt", data, size)
                                                                      : wrap_pickle(data, size);
    StFile f;
    memset(&f, 0, sizeof f);
    if (st_open(&f, path) == 0) {
        read_tensors(&f);
        as_checkpoint(&f);
        st_close(&f);
    }
    StFile base;
    if (st_open(&base, vae_base()) != 0) {
        fprintf(stderr, "fuzz_ckpt: the --vae base: %s\n", ldm_last_error());
        abort();
    }
    if (st_replace_vae(&base, path) == 0) read_tensors(&base);
    st_close(&base);
    return 0;
}
