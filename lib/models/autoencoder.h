/* autoencoder.h - the first stage of a latent diffusion model: CompVis latent-diffusion
 * ldm/models/autoencoder.py AutoencoderKL and VQModel / VQModelInterface (Encoder, Decoder,
 * quant_conv, post_quant_conv and, for VQ, taming's VectorQuantizer2).
 *
 * All tensors are F32 NCHW except the VQ indices (I64 [B,h,w]). Outputs are new tensors owned by
 * the caller. No scale_factor is applied anywhere here (that belongs to the diffusion model). */
#ifndef LDM_MODELS_AUTOENCODER_H
#define LDM_MODELS_AUTOENCODER_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/weights.h"
#include "desc.h"

typedef struct lae lae;

/* Loads every weight under `prefix` ("first_stage_model.", "cond_stage_model." or "" for a
 * standalone first-stage checkpoint), shape-checked against `d`. */
ldm_status lae_create(const ld_autoencoder *d, const lw_store *s, const char *prefix, lae **out);
void lae_free(lae *ae);

int lae_is_vq(const lae *ae);
/* Spatial downsampling factor 2^(levels-1) (8 for kl-f8). */
int lae_factor(const lae *ae);
/* Channels of the latent the diffusion model sees (embed_dim). */
int lae_latent_channels(const lae *ae);

/* x [B,in,H,W] -> KL: moments [B,2E,h,w] (mean then logvar, unclamped);
 * VQ: the pre-quantisation latent h [B,E,h,w] (VQModelInterface.encode). */
ldm_status lae_encode(lae *ae, const lctx *c, const ldm_tensor *x, ldm_tensor **out);
/* VQ only: nearest codebook entry per position (NHWC flattening; ties go to the lowest index),
 * quant = h + (e[idx] - h) (straight-through, as the reference computes it). Either output may
 * be NULL. */
ldm_status lae_quantize(lae *ae, const lctx *c, const ldm_tensor *h, ldm_tensor **quant, ldm_tensor **indices);
/* z [B,E,h,w] -> image [B,out,H,W]. VQ quantises z first (VQModelInterface.decode). */
ldm_status lae_decode(lae *ae, const lctx *c, const ldm_tensor *z, ldm_tensor **image);
/* VQ only: decode without quantising (force_not_quantize=True). */
ldm_status lae_decode_unquantized(lae *ae, const lctx *c, const ldm_tensor *z, ldm_tensor **image);

/* DiagonalGaussianDistribution of KL moments [B,2E,h,w]: mean, logvar clamped to [-30,20],
 * std = exp(0.5*logvar). Any output may be NULL. */
ldm_status lae_posterior_split(const ldm_tensor *moments, ldm_tensor **mean, ldm_tensor **logvar, ldm_tensor **std);

#endif
