/* nets.h - the networks of a latent diffusion model written as tape operations (tape.h), for
 * training: the same architectures as lib/models (openaimodel.UNetModel with ResBlocks and
 * SpatialTransformers, the KL autoencoder's Encoder/Decoder, the ClassEmbedder), with the same
 * parameter names as the reference's state dict under the given prefix, and torch's
 * initialisation for new parameters (zero_module where the reference zeroes a layer).
 *
 * Each forward declares its parameters in `ps` on first use (see ltp_params_get), so running it
 * once on a tiny batch creates a freshly initialised model; parameters already in `ps` (from a
 * checkpoint) are used as they are, shape-checked. The forward passes equal lib/models' to float
 * rounding (tests/test_train_nets.c runs both on the same weights). Errors latch in the tape. */
#ifndef LDM_TRAIN_NETS_H
#define LDM_TRAIN_NETS_H

#include "../models/desc.h"
#include "tape.h"

/* UNetModel.forward(x [B,C,H,W], timesteps [B] (float values of the integer steps), context
 * [B,T,context_dim] or LTP_NONE, y = labels (an ltp_labels index, or -1; required when
 * num_classes is set: label_emb)) -> [B,out,H,W], in training mode. Supported: ResBlocks (with or
 * without use_scale_shift_norm, resblock_updown, ResBlock dropout with the tape's key, see
 * ltp_dropout), SpatialTransformer (conv or linear proj), the legacy AttentionBlock
 * (QKVAttentionLegacy or use_new_attention_order), Downsample (strided conv, or avg-pool 2x2 with
 * conv_resample false), Upsample (nearest x2 + conv, or without the conv).
 * With d->use_checkpoint or a tape activation budget, every ResBlock and attention layer runs as
 * an ltp_segment; `prefix`, `ps` and `d` must then stay valid until ltp_reset. */
ltp_id ltn_unet_forward(ltp_tape *t, ltp_params *ps, const char *prefix, const ld_unet *d, ltp_id x,
                        const float *timesteps, ltp_id context, int labels);

/* ClassEmbedder.forward: embedding(labels)[:, None, :] -> [B, 1, embed_dim]; parameter
 * prefix + "embedding.weight" [n_classes, embed_dim] (nn.Embedding: N(0,1) initialisation). */
ltp_id ltn_class_embed(ltp_tape *t, ltp_params *ps, const char *prefix, int n_classes, int embed_dim, int labels);

/* AutoencoderKL: encode(x [B,in,H,W]) -> the posterior's moments [B, 2*embed_dim, h, w]
 * (encoder, then quant_conv), decode(z [B,embed_dim,h,w]) -> [B,out_ch,H,W] (post_quant_conv,
 * then decoder). Parameter names as the reference: prefix + "encoder.*", "quant_conv.*", ... KL
 * only (a VQ model is LDM_ERR_UNSUPPORTED). */
ltp_id ltn_ae_encode(ltp_tape *t, ltp_params *ps, const char *prefix, const ld_autoencoder *d, ltp_id x);
ltp_id ltn_ae_decode(ltp_tape *t, ltp_params *ps, const char *prefix, const ld_autoencoder *d, ltp_id z);

/* The sinusoidal timestep_embedding of openaimodel.py, float32 as torch computes it: out [B,dim]. */
void ltn_timestep_embedding(const float *t, int B, int dim, float *out);

#endif
