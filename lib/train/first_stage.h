/* first_stage.h - the latents a LatentDiffusion trains on, from its frozen first stage (the
 * inference autoencoder of lib/models, no tape): LatentDiffusion.get_input's
 * encode_first_stage + get_first_stage_encoding without the scale_factor. */
#ifndef LDM_TRAIN_FIRST_STAGE_H
#define LDM_TRAIN_FIRST_STAGE_H

#include "../models/autoencoder.h"

/* images [B,3,S,S] in [-1,1] -> z [B,E,S/f,S/f] (unscaled): an AutoencoderKL gives the
 * posterior's sample mean + exp(0.5 clamp(logvar, -30, 20)) * noise (noise [B,E,h,w], drawn by
 * the caller); a VQModelInterface gives the pre-quantisation h = quant_conv(encoder(x)) as its
 * encode() does (get_first_stage_encoding passes a tensor through; the quantiser only runs when
 * decoding), and ignores noise. */
ldm_status ltr_first_stage_latents(lae *fs, const lctx *c, const float *images, int B, int S, const float *noise,
                                   float *z);

#endif
