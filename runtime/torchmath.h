/*
 * torchmath.h - float32 exp and log as PyTorch computes them on the CPU.
 *
 * torch's CPU exp/log kernels (aten/src/ATen/cpu/vml.h) run every element,
 * also a 0-dim tensor's, through the vectorised SLEEF functions
 * (Sleef_expf8_u10, Sleef_logf8_u10 on AVX2; the AVX-512 versions give the
 * same values), which differ from glibc's expf/logf by an ulp now and then.
 * Where such an ulp matters - the sigma values k-diffusion's DPM++ SDE hands
 * to the Brownian tree, which rounds them to 6 decimals and takes another
 * path through the tree when one moves - these scalar versions of SLEEF's
 * algorithms (sleefsimdsp.c xexpf, xlogf_u1, with its FMA double-float
 * helpers) give the reference's bits.
 */
#ifndef LDM_TORCHMATH_H
#define LDM_TORCHMATH_H

/* torch.exp of a float32 (SLEEF xexpf) */
float ldm_torch_expf(float d);
/* torch.log of a float32 (SLEEF xlogf_u1) */
float ldm_torch_logf(float d);

#endif
