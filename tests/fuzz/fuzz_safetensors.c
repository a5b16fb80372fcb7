/*
 * fuzz_safetensors.c - the safetensors reader (runtime/safetensors.c) as the
 * programs read a file:
 *   - st_open, then every tensor looked up (st_find), the metadata, and each
 *     small tensor converted (st_to_f32 / st_to_i32);
 *   - as a checkpoint the executables bind: ldm_weights_open against a small
 *     model table (names, shapes and layout flags of real SD v1 weights, at
 *     toy sizes), then ldm_weights_bind;
 *   - as a LoRA file (ldm_lora_open bound to the table's keys; each module
 *     checked against its weight, then merged at bind into the seed
 *     checkpoint corpus/safetensors/ckpt_f16.safetensors as txt2img --lora
 *     does);
 *   - as a textual-inversion embedding (ldm_embedding_load, width 4 and 768;
 *     ldm_embedding_load_key as SDXL's clip_l and clip_g, width 4).
 * The input is the file's bytes.
 */
#include "fuzz.h"
#include "lora.h"
#include "model.h"
#include "safetensors.h"
#include "textcond.h"
#include "util.h"

static const LdmTensorInfo weights[] = {
    {"model.diffusion_model.input_blocks.1.1.proj_in.weight", LDM_F32, LDM_TF_F32, 4, {4, 4, 1, 1}, {0}},
    {"model.diffusion_model.input_blocks.1.1.proj_in.bias", LDM_F32, LDM_TF_F32, 1, {4}, {0}},
    {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", LDM_F32, LDM_TF_BPANELS, 2,
     {4, 4}, {0}},
    {"model.diffusion_model.input_blocks.1.0.in_layers.2.weight", LDM_F32, 0, 4, {4, 4, 3, 3}, {0}},
    {"cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", LDM_F32, LDM_TF_BPANELS, 2,
     {4, 4}, {0}},
    {"cond_stage_model.transformer.text_model.embeddings.position_ids", LDM_I32, 0, 2, {1, 4}, {0}},
    {"a", LDM_F32, 0, 0, {0}, {0}},
};
#define N_WEIGHTS ((int)(sizeof weights / sizeof weights[0]))
static const LdmModel model = {.name = "fuzz", .n_weights = N_WEIGHTS, .weights = weights};

/* Keys a LoRA is also opened against (not in the checkpoint the merge at
 * bind uses): the OpenCLIP towers of SD 2.x and SDXL (packed q/k/v
 * thirds) and SDXL's first text encoder, at toy sizes. */
#define OC2 "cond_stage_model.model.transformer.resblocks.0."
#define OCXL "conditioner.embedders.1.model.transformer.resblocks.0."
static const LdmTensorInfo lora_only[] = {
    {OC2 "attn.in_proj_weight", LDM_F32, 0, 2, {12, 4}, {0}},
    {OC2 "attn.out_proj.weight", LDM_F32, 0, 2, {4, 4}, {0}},
    {OCXL "attn.in_proj_weight", LDM_F32, 0, 2, {12, 4}, {0}},
    {OCXL "mlp.c_fc.weight", LDM_F32, 0, 2, {16, 4}, {0}},
    {"conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", LDM_F32, 0, 2, {4, 4},
     {0}},
};
#define N_LORA_ONLY ((int)(sizeof lora_only / sizeof lora_only[0]))

static void read_tensors(const StFile *f) {
    (void)st_metadata(f, "format");
    for (int i = 0; i < f->n_tensors; i++) {
        const StTensor *t = &f->tensors[i];
        if (st_find(f, t->name) == NULL) abort(); /* every tensor is found by its name */
        if (t->numel > 4096) continue;
        float *x = malloc(((size_t)t->numel + 1) * sizeof *x);
        int32_t *y = malloc(((size_t)t->numel + 1) * sizeof *y);
        st_to_f32(t, x);
        st_to_i32(t, y);
        free(x);
        free(y);
    }
}

static void as_checkpoint(const StFile *f, LdmLora *lora) {
    LdmWeights w;
    memset(&w, 0, sizeof w);
    if (ldm_weights_open(&model, f, &w) != 0) return;
    if (lora) ldm_weights_set_loras(&w, &lora, 1);
    ldm_weights_bind(&w);
    ldm_weights_free(&w);
}

static LdmLora *as_lora(const char *path) {
    const char *keys[N_WEIGHTS + N_LORA_ONLY];
    for (int i = 0; i < N_WEIGHTS; i++) keys[i] = weights[i].name;
    for (int i = 0; i < N_LORA_ONLY; i++) keys[N_WEIGHTS + i] = lora_only[i].name;
    LdmLora *l = NULL;
    if (ldm_lora_open(&l, path, keys, N_WEIGHTS + N_LORA_ONLY, 0.5f, 1.0f) != 0) return NULL;
    for (int i = 0; i < ldm_lora_n_modules(l); i++) {
        (void)ldm_lora_module_key(l, i);
        (void)ldm_lora_module_prefix(l, i);
    }
    for (int i = 0; i < ldm_lora_n_unmatched(l) && i < 4; i++) (void)ldm_lora_unmatched(l, i);
    int fits = 1;
    for (int i = 0; i < N_WEIGHTS; i++)
        if (ldm_lora_check(l, weights[i].name, weights[i].ndim, weights[i].shape) != 0) fits = 0;
    if (!fits) {
        ldm_lora_free(l);
        return NULL;
    }
    float buf[4 * 4 * 3 * 3] = {0};
    for (int i = 0; i < N_WEIGHTS; i++)
        if (weights[i].dtype == LDM_F32) ldm_lora_apply(l, weights[i].name, weights[i].ndim, weights[i].shape, buf);
    /* the LoRA-only weights: checked, their delta, and rows 2..9 of a packed
     * projection (across its thirds) as bind pieces split it */
    for (int i = 0; i < N_LORA_ONLY; i++) {
        const LdmTensorInfo *t = &lora_only[i];
        if (ldm_lora_check(l, t->name, t->ndim, t->shape) != 0) continue;
        ldm_lora_delta(l, t->name, t->ndim, t->shape, buf);
        if (t->shape[0] == 12) ldm_lora_apply_rows(l, t->name, t->ndim, t->shape, 2, 10, buf);
    }
    return l;
}

/* The checkpoint a fuzzed LoRA is merged into (opened once). */
static const StFile *base_checkpoint(void) {
    static StFile base;
    static int opened;
    if (!opened) {
        if (st_open(&base, LDM_FUZZ_ROOT "/tests/fuzz/corpus/safetensors/ckpt_f16.safetensors") != 0) {
            fprintf(stderr, "fuzz_safetensors: %s\n", ldm_last_error());
            abort();
        }
        opened = 1;
    }
    return &base;
}

LDM_FUZZ_TARGET(safetensors) {
    const char *path = fuzz_file("fuzz.safetensors", data, size);
    StFile f;
    memset(&f, 0, sizeof f);
    if (st_open(&f, path) == 0) {
        read_tensors(&f);
        as_checkpoint(&f, NULL);
        st_close(&f);
    }
    LdmLora *lora = as_lora(path);
    if (lora) {
        as_checkpoint(base_checkpoint(), lora);
        ldm_lora_free(lora);
    }
    int widths[] = {4, 768};
    for (int k = 0; k < 2; k++) {
        LdmEmbedding e;
        memset(&e, 0, sizeof e);
        char why[256];
        if (ldm_embedding_load(path, widths[k], &e, why, sizeof why) == 0) ldm_embedding_free(&e);
        /* as an SDXL embedding: clip_l and clip_g */
        if (ldm_embedding_load_key(path, k ? "clip_g" : "clip_l", 4, &e, why, sizeof why) == 0) ldm_embedding_free(&e);
    }
    return 0;
}
