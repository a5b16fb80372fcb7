/*
 * rng.h - PyTorch's normal noise, reproduced bit-exactly on the CPU.
 *
 *   TorchGen  torch.manual_seed(s); torch.randn(shape)                (CPU)
 *             torch 1.13 default CPU generator: mt19937, Box-Muller as in
 *             aten/src/ATen/native/cpu/DistributionKernels.cpp.
 *   CudaGen   torch.manual_seed(s); torch.randn(shape, device='cuda')
 *             torch 2.11 CUDA generator: Philox4x32-10 + curand_normal4 as in
 *             aten/src/ATen/native/cuda/DistributionTemplates.h, with the
 *             GPU's logf and __sincosf emulated so results match bit for bit.
 *
 * Both generators are streams: successive calls on the same generator
 * continue exactly as successive torch.randn calls after one manual_seed
 * (initial latents, then per-step noise of ancestral samplers).
 * Shapes do not matter, only the element count n (row-major order).
 */
#ifndef LDM_RNG_H
#define LDM_RNG_H

#include <stdint.h>

/* ---- CPU: at::CPUGeneratorImpl (aten/src/ATen/CPUGeneratorImpl.cpp) ---- */

typedef struct TorchGen {
    uint32_t mt[624];        /* mt19937 state words (at::mt19937 data_.state_) */
    int mt_next;             /* index of the next word to temper; 624 = twist first */
    int has_next_normal;     /* next_double_normal_sample_ is set */
    double next_normal;      /* the cached sin() half of the last scalar Box-Muller */
} TorchGen;

/* torch.manual_seed(seed): mt19937 seeded with the low 32 bits, cache cleared. */
void torch_gen_seed(TorchGen *g, uint64_t seed);
/* One raw 32-bit draw (CPUGeneratorImpl::random()). */
uint32_t torch_gen_random(TorchGen *g);
/* torch.randn of n float32 elements into out[0..n). Returns 0, or -1 if n < 0. */
int torch_randn(TorchGen *g, float *out, int64_t n);

/* ---- CUDA: at::CUDAGeneratorImpl (aten/src/ATen/cuda/CUDAGeneratorImpl.cpp) ---- */

typedef struct CudaGen {
    uint64_t seed;        /* Philox key: the torch.manual_seed value */
    uint64_t offset;      /* philox_offset_per_thread_, in 32-bit draws (multiple of 4) */
    uint32_t max_blocks;  /* grid cap of the emulated GPU, 0 = none (see below) */
} CudaGen;

/*
 * torch.manual_seed(seed) for the CUDA generator: offset 0, max_blocks 0.
 *
 * max_blocks: torch launches min(ceil(n / 256), max_blocks) blocks of 256
 * threads with max_blocks = multiProcessorCount * (maxThreadsPerMultiProcessor
 * / 256) of the device. While ceil(n / 256) <= max_blocks the numbers do not
 * depend on the GPU (every thread fills one element); beyond that they do.
 * 0 means "no cap", i.e. any GPU big enough for n. Examples of the product:
 * RTX 3060 168, RTX 3090 492, RTX 4090 768, A100 864, H100 SXM 1056.
 * A 1x4x64x64 latent needs 64 blocks, so it is the same on every such GPU.
 */
void cuda_gen_seed(CudaGen *g, uint64_t seed);
/* torch.randn(n, device='cuda') into out[0..n). Returns 0, or -1 if n < 0 or
   n > INT32_MAX (torch would split the launch; not reproduced). */
int cuda_randn(CudaGen *g, float *out, int64_t n);

#endif
