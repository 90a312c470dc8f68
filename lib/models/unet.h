/* unet.h - ldm.modules.diffusionmodules.openaimodel.UNetModel (CompVis latent-diffusion and
 * Stability-AI stablediffusion, incl. use_linear_in_transformer) on float32 weights.
 *
 * forward(x [B,C,H,W], timesteps I64 [B], context [B,T,D] or NULL, y I64 [B] (class labels) or
 *   F32 [B, adm_in_channels] (the sgm "sequential" vector of SDXL) or NULL)
 *   emb = time_embed(timestep_embedding(t)) (+ label_emb(y)); h runs through input_blocks
 *   (every output kept as a skip), middle_block, output_blocks (each concatenating the latest
 *   skip), then out = conv(SiLU(GN(h))). H and W must be divisible by 2^(levels-1). */
#ifndef LDM_MODELS_UNET_H
#define LDM_MODELS_UNET_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/weights.h"
#include "desc.h"

typedef struct lunet lunet;

/* UNetModel switches that ld_unet does not carry (all default off / -1 in the reference and in
 * every released LDM / SD config). */
typedef struct lunet_opts {
    int use_new_attention_order; /* AttentionBlock uses QKVAttention instead of QKVAttentionLegacy */
    int num_heads_upsample;      /* -1: num_heads (output blocks' AttentionBlocks, num_heads mode) */
} lunet_opts;

void lunet_opts_init(lunet_opts *o);

/* Loads every parameter prefix+<name> ("model.diffusion_model." in an LDM checkpoint) as float32,
 * shape-checked. use_ema: read the EMA copies instead (lw_ema_name of each full name, i.e.
 * "model_ema.diffusion_model<name without dots>"), which is what the reference samples with
 * (ema_scope); a missing EMA buffer is an error naming it. */
ldm_status lunet_create(const ld_unet *d, const lw_store *s, const char *prefix, int use_ema, lunet **out);
/* Same with the extra switches (opts may be NULL). */
ldm_status lunet_create_opts(const ld_unet *d, const lw_store *s, const char *prefix, int use_ema,
                             const lunet_opts *opts, lunet **out);
void lunet_free(lunet *n);
/* Frees the activation workspace kept between evaluations (it is rebuilt by the next one). */
void lunet_release_workspace(lunet *n);
/* Forgets the transformed weights the UNet keeps for its small layers (lib/kernels/wcache.c): to be
 * called by anything that changes its weights in place. */
void lunet_drop_weight_caches(lunet *n);

/* out: new [B, out_channels, H, W] owned by the caller. context is required by SpatialTransformer
 * models (its batch must equal B, its width context_dim; its length may change between calls)
 * and ignored by the others, as the reference does. y is required iff num_classes > 0. Checks
 * cancellation between blocks (LDM_CANCELLED). Not reentrant: one call at a time per lunet. */
ldm_status lunet_forward(lunet *n, const lctx *c, const ldm_tensor *x, const ldm_tensor *timesteps,
                         const ldm_tensor *context, const ldm_tensor *y, ldm_tensor **out);

/* lunet_forward with the LCM guidance embedding (ld_unet.time_cond_proj_dim > 0): guidance_scale
 * [B] (NULL: none, as diffusers with timestep_cond None) adds cond_proj(g((s - 1) * 1000)) to the
 * timestep embedding before time_embed.0 (diffusers TimestepEmbedding(cond_proj_dim) with the LCM
 * pipeline's get_guidance_scale_embedding g: sin first, frequencies exp(-j ln(1e4)/(half - 1))).
 * LDM_ERR_UNSUPPORTED for a scale given to a UNet without the embedding. */
ldm_status lunet_forward_guided(lunet *n, const lctx *c, const ldm_tensor *x, const ldm_tensor *timesteps,
                                const ldm_tensor *context, const ldm_tensor *y, const float *guidance_scale,
                                ldm_tensor **out);
/* The embedding time_embed(...) before its final SiLU, [B, 4*model_channels], for tests. */
ldm_status lunet_time_embedding(lunet *n, const lctx *c, const float *t, const float *guidance_scale, int B,
                                float *emb);
/* The checkpoint's guidance embedding width: the second dimension of prefix +
 * "time_embed.cond_proj.weight" (the CompVis-layout name of diffusers'
 * time_embedding.cond_proj.weight), 0 when absent. An error when it is not a 2-D
 * [model_channels, dim] matrix with dim >= 4 (the embedding divides by dim/2 - 1). */
ldm_status lunet_probe_guidance_embedding(const lw_store *s, const char *prefix, int model_channels, int *dim);

/* timestep_embedding(t, dim) of openaimodel / sgm util: out [B, dim] = [cos(t f), sin(t f)] with
 * f_i = exp(-ln(10000) i / (dim/2)), in float32 as torch computes it (also sgm's
 * ConcatTimestepEmbedderND). */
void lunet_timestep_embedding(const float *t, int B, int dim, float *out);

int lunet_num_classes(const lunet *n);  /* 0 when not class-conditional */
int lunet_size_multiple(const lunet *n); /* H and W must be multiples of this: 2^(levels-1) */

#endif
