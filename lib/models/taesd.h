/* taesd.h - the tiny autoencoders TAESD / TAESDXL (madebyollin/taesd taesd.py Encoder and
 * Decoder; the same networks as diffusers' AutoencoderTiny): a few 3x3 convolutions with ReLU
 * residual blocks, no normalisation or attention, 8x down/upsampling, distilled from the SD (or
 * SDXL) VAE. Each works on the DIFFUSION model's latents (the VAE latent times scale_factor:
 * TAESD's own scale factor is 1), so nothing is rescaled here.
 *
 * Weight layouts read (float32 or float16, safetensors or PyTorch .pth; the part(s) present are
 * found from the names):
 *   taesd.py part files (taesd_encoder.pth, taesd_decoder.pth, taesdxl_*, their .safetensors
 *     conversions): the Sequential's own indices, "0.weight", "1.conv.0.weight", ... (encoder),
 *     "1.weight", "3.conv.0.weight", ... (decoder: module 0 is the Clamp);
 *   a whole TAESD module's state dict: the same under "encoder." / "decoder.";
 *   diffusers' AutoencoderTiny (diffusion_pytorch_model.safetensors): "encoder.layers.N.*" with
 *     taesd's indices, "decoder.layers.N.*" with taesd's index minus one (diffusers applies the
 *     clamp in forward()).
 * The channel width (64 in every released model) and the latent channels are read from the
 * first convolution; every other tensor must have the matching shape, and a tensor the network
 * does not use is an error naming it. */
#ifndef LDM_MODELS_TAESD_H
#define LDM_MODELS_TAESD_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/weights.h"

typedef struct ltae ltae;

/* Builds the encoder and/or decoder found in `s`, which must outlive *out (float16 weights are
 * used in place). LDM_ERR_FORMAT when neither part is there or a tensor is extra, LDM_ERR_NOT_FOUND
 * / LDM_ERR_FORMAT naming a missing or mis-shaped tensor. */
ldm_status ltae_create(const lw_store *s, ltae **out);
/* Opens `path` (lw_open with the cap) and builds it; the store is owned by the result. */
ldm_status ltae_open(const char *path, size_t max_alloc, ltae **out);
void ltae_free(ltae *t);

int ltae_has_encoder(const ltae *t);
int ltae_has_decoder(const ltae *t);
int ltae_latent_channels(const ltae *t);
/* "taesd.py files", "TAESD module", "diffusers AutoencoderTiny": for messages and describe. */
const char *ltae_layout(const ltae *t);
const char *ltae_path(const ltae *t);

/* z [B,C,h,w] -> image [B,3,8h,8w] = 2 * Decoder(z) - 1 (the [-1,1] convention of the other
 * decoders; unclamped). */
ldm_status ltae_decode(const ltae *t, const lctx *c, const ldm_tensor *z, ldm_tensor **image);
/* x [B,3,H,W] in [-1,1] -> z [B,C,ceil(H/8),ceil(W/8)] = Encoder((x + 1) / 2). */
ldm_status ltae_encode(const ltae *t, const lctx *c, const ldm_tensor *x, ldm_tensor **z);

#endif
