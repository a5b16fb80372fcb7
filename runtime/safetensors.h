/*
 * safetensors.h - reading and writing safetensors files.
 *
 * Format: 8-byte little-endian header length N, N bytes of UTF-8 JSON
 * ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {str: str}}), then the data section. Offsets are relative
 * to the data section. The reader mmaps the file and validates everything
 * (header length, JSON, dtypes, shapes vs byte sizes, offsets inside the file,
 * no overlaps) before handing out tensors, and every error names the file and
 * the tensor.
 */
#ifndef LDM_SAFETENSORS_H
#define LDM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef enum StDtype {
    ST_F32,   /* float32 */
    ST_F16,   /* IEEE half */
    ST_BF16,  /* bfloat16 */
    ST_F64,   /* float64 */
    ST_I64,   /* int64 */
    ST_I32,   /* int32 */
    ST_I16,   /* int16 */
    ST_I8,    /* int8 */
    ST_U8,    /* uint8 */
    ST_BOOL,  /* bool, one byte */
} StDtype;

typedef struct StTensor {
    char *name;                  /* tensor name (key in the header) */
    StDtype dtype;               /* element type */
    int ndim;                    /* number of dimensions, 0..ST_MAX_DIMS */
    int64_t shape[ST_MAX_DIMS];  /* dimensions */
    int64_t numel;               /* product of shape (1 for a scalar) */
    const uint8_t *data;         /* points into the mapping */
    size_t nbytes;               /* numel * element size */
} StTensor;

typedef struct StFile {
    char *path;          /* as opened, for messages */
    uint8_t *map;        /* the whole file, mmapped read-only */
    size_t size;         /* file size */
    StTensor *tensors;   /* in header order */
    int n_tensors;
    char **meta_keys;    /* __metadata__ entries */
    char **meta_values;
    int n_meta;
    uint8_t *aux;        /* .ckpt: the inflated storages of deflated members (read-only), or NULL */
    size_t aux_size;
    struct StFile *vae;  /* st_replace_vae: the file the autoencoder tensors now point into, or NULL */
} StFile;

/* Size in bytes of one element. */
size_t st_dtype_size(StDtype dt);
/* "F32", "F16", ... as in the header. */
const char *st_dtype_name(StDtype dt);
/* Parse a header dtype name; -1 (no error recorded) if unknown. */
int st_dtype_parse(const char *s, StDtype *out);

/* Open, map and validate. On error records "<path>: ..." and returns -1.
 * A PyTorch zip checkpoint (.ckpt; recognised by its zip signature "PK",
 * not by its name) is read by ckpt.c's restricted loader into the same
 * view: its state dict's tensors, data pointing into the mapped archive. */
int st_open(StFile *f, const char *path);
void st_close(StFile *f);
/* --vae: the autoencoder of checkpoint f (every tensor
 * first_stage_model.{encoder,decoder,quant_conv,post_quant_conv}.*) read from
 * the file vae_path instead (safetensors or .ckpt, kept open with f): its
 * tensors named without the prefix (encoder.conv_in.weight, as the
 * separately published SD VAEs have them) or with it. Each one the
 * checkpoint has must be in the file with the same shape (the dtype may
 * differ); other tensors of the file are ignored. Errors name the file and
 * the tensor; f is unchanged then. */
int st_replace_vae(StFile *f, const char *vae_path);
/* Tensor by name, or NULL. */
const StTensor *st_find(const StFile *f, const char *name);
/* Metadata value by key, or NULL. */
const char *st_metadata(const StFile *f, const char *key);

/* Convert a float tensor (F32, F16, BF16, F64) to float32 into dst (numel
 * floats). Integer dtypes are an error naming the tensor. */
int st_to_f32(const StTensor *t, float *dst);
/* Convert an integer tensor (I32, I64, I16, I8, U8) to int32 into dst;
 * values outside int32 are an error. */
int st_to_i32(const StTensor *t, int32_t *dst);

/* Scalar conversions, round-to-nearest-even, with correct subnormal, inf and
 * NaN handling (half.h's, as functions). */
float st_f16_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t b);
uint16_t st_f32_to_f16(float f);
uint16_t st_f32_to_bf16(float f);

/* Writer: collects tensors (data is copied) and metadata, then writes the
 * file atomically (temporary name + rename). Output is deterministic:
 * `__metadata__` first, tensors in insertion order with contiguous data,
 * header padded with spaces to a multiple of 8 bytes. A bad st_writer_add
 * (duplicate name, ndim outside 0..ST_MAX_DIMS, negative dimension) is
 * remembered and reported by st_writer_save, which then writes nothing;
 * st_writer_meta with an existing key replaces its value. */
typedef struct StWriter StWriter;
StWriter *st_writer_new(void);
void st_writer_free(StWriter *w);
void st_writer_add(StWriter *w, const char *name, StDtype dtype, int ndim,
                   const int64_t *shape, const void *data);
/* st_writer_add without the copy: data must stay valid until st_writer_save
 * (take_ownership: the writer frees it, also on error). */
void st_writer_add_ref(StWriter *w, const char *name, StDtype dtype, int ndim,
                       const int64_t *shape, const void *data, int take_ownership);
void st_writer_meta(StWriter *w, const char *key, const char *value);
int st_writer_save(StWriter *w, const char *path);

/* st_convert's `to` that converts nothing: every tensor keeps its dtype. */
#define ST_KEEP ((StDtype)-1)

/* Checkpoint converter (`ldmc convert`): copy every tensor of in_path (a
 * safetensors file or a .ckpt: st_open) to out_path, converting
 * floating-point network weights to `to` (ST_F32, ST_F16, ST_BF16, or
 * ST_KEEP: none). Tensors whose name has no '.' (the LatentDiffusion
 * noise-schedule buffers such as `betas`, `alphas_cumprod`) keep their dtype,
 * and so do integer tensors (e.g. `position_ids`). Metadata is copied. */
int st_convert(const char *in_path, const char *out_path, StDtype to);

#endif
