/*
 * model.h - the interface between ldmc-generated code and the runtime.
 *
 * Every generated C file defines one `const LdmModel <graph>_model`: the
 * tables of the weights, inputs and outputs it was compiled for (names,
 * dtypes and shapes, all fixed at compile time), its arena size and its
 * forward function. The runtime loads a checkpoint against the weight table
 * (checking every tensor), and the graph runner feeds inputs by name.
 */
#ifndef LDM_MODEL_H
#define LDM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
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
};

typedef struct LdmTensorInfo {
    const char *name;                /* checkpoint key / input or output name */
    int dtype;                       /* LdmDType */
    int flags;                       /* LDM_TF_* */
    int ndim;                        /* rank */
    int64_t shape[LDM_MAX_DIMS];     /* dimensions */
} LdmTensorInfo;

/* forward(weights, inputs, outputs, arena): 0 or -1 with ldm_fail(). */
typedef int (*LdmForwardFn)(const LdmW *w, const void *const *in, void *const *out, unsigned char *arena);

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
} LdmModel;

/* Weights of one model, in the model's table order. Half-precision
 * weights stay half (used in place from the mapping) unless a kernel needs
 * them as float32 (LDM_TF_F32). */
typedef struct LdmWeights {
    LdmW *ptr;                       /* ptr[i] = data and storage type of weights[i] */
    void **owned;                    /* converted copies to free (NULL where ptr points into the mapping) */
    int n;                           /* number of weights */
    size_t bytes;                    /* bytes held in converted copies */
    size_t *mapped_bytes;            /* size of ptr[i] where it points into the file mapping, else 0 */
} LdmWeights;

int64_t ldm_numel(const LdmTensorInfo *t);
/* "[320, 320, 3, 3]" into buf. */
const char *ldm_shape_str(int ndim, const int64_t *shape, char *buf, size_t size);

/* Bind every weight of m from the checkpoint f, checking presence, dtype
 * (F32, F16 or BF16) and shape; errors name the tensor and what was
 * expected. Aligned F32/F16/BF16 data is used in place (mmap); F64, or
 * half-precision data of a weight flagged LDM_TF_F32, is converted. */
int ldm_weights_load(const LdmModel *m, const StFile *f, LdmWeights *w);
void ldm_weights_free(LdmWeights *w);
/* Hand the pages of the weights used in place from the file mapping back to
 * the kernel (madvise MADV_DONTNEED): they leave the resident set and are
 * read again from the page cache or the file on the next use. */
void ldm_weights_release(const LdmWeights *w);

/* Arena for m (64-byte aligned); free with free(). */
unsigned char *ldm_arena_new(const LdmModel *m);

/* main() of a graph runner:
 *   RUNNER --weights CKPT --inputs IN --outputs OUT [--prefix P] [--repeat N]
 * reads the inputs by name (P + name) from IN, runs the model, writes the
 * outputs by name to OUT. */
int ldm_runner_main(const LdmModel *m, int argc, char **argv);



/* ---- weights stored under other names ------------------------------------ */

/* Where weight `name` of a model is stored in a checkpoint: the key, written
 * to buf (size bytes) or `name` itself. */
typedef const char *(*LdmKeyMapFn)(const char *name, char *buf, size_t size);

/* ldm_weights_load, reading every weight from the checkpoint key map(name)
 * instead of name (map NULL: the names themselves). Errors name the key
 * that was looked up. */
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
