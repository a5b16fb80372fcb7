/*
 * model.h - the interface between ldmc-generated code and the runtime.
 *
 * Every generated C file defines one `const LdmModel <graph>_model`: the
 * tables of the weights, inputs and outputs it was compiled for (names,
 * dtypes and shapes), its run-time extents, its arena size and its forward
 * function. Shapes are fixed at compile time except the dims of a run-time
 * extent (`param T <= 154 step 77;` in the graph): those are given per
 * call, between 1 and the maximum the arena was planned for. The runtime loads a checkpoint against the weight table
 * (checking every tensor), and the graph runner feeds inputs by name.
 */
#ifndef LDM_MODEL_H
#define LDM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "lora.h"
#include "safetensors.h"

#define LDM_MAX_DIMS 6

typedef enum LdmDType {
    LDM_F32 = 0,   /* float32 */
    LDM_I32 = 1,   /* int32 */
} LdmDType;

/* A tensor the model was compiled for. */
/* LdmTensorInfo.flags */
enum {
    LDM_TF_F32 = 1,                  /* weight: some kernel reads it as float32 (convert half) */
    LDM_TF_BPANELS = 2,              /* weight: bind in LDM_WL_BPANELS (every use is a linear layer's) */
    LDM_TF_APANELS = 4,              /* weight: bind in LDM_WL_APANELS (every use is an im2col or pointwise conv's) */
};

typedef struct LdmTensorInfo {
    const char *name;                /* checkpoint key / input or output name */
    int dtype;                       /* LdmDType */
    int flags;                       /* LDM_TF_* */
    int ndim;                        /* rank */
    int64_t shape[LDM_MAX_DIMS];     /* dimensions (of a run-time dim: its maximum) */
    int8_t dyn[LDM_MAX_DIMS];        /* 0: static; k + 1: dim d is shape[d] / extents[k].max * ext[k] */
} LdmTensorInfo;

/* A run-time extent of a model: its value ext[k] is given to every call,
 * 1 <= ext[k] <= max and a multiple of step. */
typedef struct LdmExtent {
    const char *name;                /* the graph's param ("B", "T") */
    int64_t max;                     /* largest value (the arena is planned for it) */
    int64_t step;                    /* the value is a multiple of this */
} LdmExtent;

/* forward(weights, inputs, outputs, arena, ext): 0 or -1 with ldm_fail().
 * ext[k] is the value of extent k (unchecked: call it through ldm_forward);
 * a model without extents ignores it. Inputs and outputs are compact at
 * their run-time shapes. */
typedef int (*LdmForwardFn)(const LdmW *w, const void *const *in, void *const *out, unsigned char *arena,
                            const int64_t *ext);

typedef struct LdmModel {
    const char *name;                /* graph name ("unet") */
    const char *banner;              /* compiler version, graph, config, resolution */
    int n_weights;                   /* weight table */
    const LdmTensorInfo *weights;
    int n_inputs;                    /* input table, in forward()'s order */
    const LdmTensorInfo *inputs;
    int n_outputs;                   /* output table, in forward()'s order */
    const LdmTensorInfo *outputs;
    size_t arena_bytes;              /* activation + scratch arena */
    double flops;                    /* floating-point operations per call */
    int64_t n_params;                /* parameter count */
    LdmForwardFn forward;            /* the generated entry point */
    int n_extents;                   /* run-time extents (ext[] of forward) */
    const LdmExtent *extents;
    double (*flops_at)(const int64_t *ext); /* flops at run-time extents (NULL: no extents; ext NULL: maxima) */
} LdmModel;

/* Weights of one model, in the model's table order. The checkpoint stays
 * mapped; binding copies every weight into one anonymous region in huge
 * pages (a weight streamed through 4 KB pages of a file mapping costs a TLB
 * miss per row piece), half-precision ones still half unless a kernel needs
 * float32 (LDM_TF_F32), and the weights a GEMM streams re-laid out in the
 * order its packers read them (LDM_TF_BPANELS, LDM_TF_APANELS). The mapped
 * pages are given back as they are copied, so the resident set holds each
 * weight once.
 *
 * LoRAs (loras, set with ldm_weights_set_loras) are merged while binding:
 * each piece of a weight a LoRA touches is converted to float32, gets the
 * rows of every LoRA's delta in list order (ldm_lora_apply_rows), and is
 * rounded back once to the checkpoint's half type when the checkpoint
 * stores it in half (what `ldmc merge --dtype` of that type writes, so the
 * two bind to the same bits), before it is laid out. A step then costs
 * what it costs without LoRA, and no second copy of the model is held. */
typedef struct LdmWeights {
    LdmW *ptr;                       /* ptr[i] = data, storage type and layout of weights[i] (p NULL until bound) */
    StTensor *src;                   /* src[i] = the checkpoint tensor weights[i] is made from */
    size_t *off;                     /* offset of weights[i] in the region */
    int n;                           /* number of weights */
    size_t bytes;                    /* size of the bound region */
    unsigned char *region;           /* the bound weights, NULL when not bound */
    void *map;                       /* the region's mapping (aligned to 2 MB inside it) */
    size_t map_bytes;
    LdmLora *const *loras;           /* merged at bind time, in order (not owned: the caller's list, which,
                                      * like the LoRAs, must outlive the weights or the next set_loras) */
    int n_loras;
} LdmWeights;

int64_t ldm_numel(const LdmTensorInfo *t);

/* ---- run-time extents ---------------------------------------------------- */

/* Check ext (m->n_extents values; NULL = every extent at its maximum):
 * 0, or -1 with a message naming the extent, its value and the bound. */
int ldm_check_extents(const LdmModel *m, const int64_t *ext);
/* Shape of t (a table entry of m) at ext (NULL: the maxima) into shape. */
void ldm_tensor_shape(const LdmModel *m, const LdmTensorInfo *t, const int64_t *ext, int64_t *shape);
/* Elements of t at ext (NULL: the maxima). */
int64_t ldm_numel_at(const LdmModel *m, const LdmTensorInfo *t, const int64_t *ext);
/* "[B<=2, T<=154, 768]": t's shape with its run-time dims named. */
const char *ldm_tensor_shape_str(const LdmModel *m, const LdmTensorInfo *t, char *buf, size_t size);
/* Check ext, then run m's forward on it (ext NULL: every extent at its
 * maximum). 0, or -1 with ldm_fail(). */
int ldm_forward(const LdmModel *m, const LdmW *w, const void *const *in, void *const *out, unsigned char *arena,
                const int64_t *ext);
/* "[320, 320, 3, 3]" into buf. */
const char *ldm_shape_str(int ndim, const int64_t *shape, char *buf, size_t size);

/* Check every weight of m in the checkpoint f: present, F32, F16, BF16 or
 * F64, exactly the expected shape; errors name the tensor and what was
 * expected. Plans the region; binds nothing (f must stay open while w is
 * in use). */
int ldm_weights_open(const LdmModel *m, const StFile *f, LdmWeights *w);
/* Make the region (once; again after ldm_weights_release). */
void ldm_weights_bind(LdmWeights *w);
/* ldm_weights_open, then ldm_weights_bind. */
int ldm_weights_load(const LdmModel *m, const StFile *f, LdmWeights *w);
void ldm_weights_free(LdmWeights *w);
/* Give the region back to the system and the weights' pages of the file
 * mapping back to the kernel (madvise MADV_DONTNEED): they leave the
 * resident set; the next ldm_weights_bind reads them again from the page
 * cache or the file. */
void ldm_weights_release(LdmWeights *w);

/* Merge loras[0..n) (n = 0: none) into the weights from the next bind on.
 * Every LoRA must have been checked against every weight it touches
 * (ldm_lora_check): binding cannot report an error and aborts on a factor
 * that does not fit. If the region is bound and the old list or the new
 * one touches any weight, the region is released (ldm_weights_release):
 * the next bind rebuilds every weight from the checkpoint, never
 * subtracting a delta, so removing a LoRA gives back the exact original
 * bytes. The list is kept by pointer, not copied. */
void ldm_weights_set_loras(LdmWeights *w, LdmLora *const *loras, int n);

/* Arena for m (64-byte aligned); free with free(). */
unsigned char *ldm_arena_new(const LdmModel *m);

/* main() of a graph runner:
 *   RUNNER --weights CKPT --inputs IN --outputs OUT [--prefix P] [--repeat N] [--extent NAME=VALUE]...
 *          [--lora FILE[:MULT]]...
 * reads the inputs by name (P + name) from IN, runs the model, writes the
 * outputs by name to OUT, at the run-time extents given (default: their
 * maxima); a bad --extent exits with status 2. --lora merges a kohya LoRA
 * at MULT (default 1; UNet and text encoder alike) into the weights at
 * bind time; a LoRA that cannot be read or does not fit a weight is a load
 * error (status 1, no output). */
int ldm_runner_main(const LdmModel *m, int argc, char **argv);



/* ---- weights stored under other names ------------------------------------ */

/* Where weight `name` of a model is stored in a checkpoint: the key, written
 * to buf (size bytes) or `name` itself. */
typedef const char *(*LdmKeyMapFn)(const char *name, char *buf, size_t size);

/* ldm_weights_open and ldm_weights_load, reading every weight from the
 * checkpoint key map(name) instead of name (map NULL: the names
 * themselves). Errors name the key that was looked up. */
int ldm_weights_open_mapped(const LdmModel *m, const StFile *f, LdmKeyMapFn map, LdmWeights *w);
int ldm_weights_load_mapped(const LdmModel *m, const StFile *f, LdmKeyMapFn map, LdmWeights *w);

/* LdmKeyMapFn for the EMA copies of the diffusion model: LatentDiffusion
 * with use_ema keeps `model_ema = LitEma(self.model)` (ldm/modules/ema.py),
 * which stores every parameter of the DiffusionWrapper as a buffer whose
 * name is the parameter name with all '.' removed. So
 *   model.diffusion_model.input_blocks.0.0.weight
 *     -> model_ema.diffusion_modelinput_blocks00weight
 * Names outside "model." (first stage, cond stage: no EMA) are unchanged. */
const char *ldm_ema_key(const char *name, char *buf, size_t size);

/* ---- profiling (LDM_PROFILE=1 in the environment) ---------------------- */

/* Set from the environment by ldm_profile_init(); generated code checks it. */
extern int ldm_profiling;
void ldm_profile_init(void);
/* Record that node `id` (op `op`, `flops` operations) took `seconds`. */
void ldm_profile_record(const char *model, int id, const char *op, double flops, double seconds);
/* Print time per op kind and the slowest nodes to stderr, then reset. */
void ldm_profile_report(void);
#endif
