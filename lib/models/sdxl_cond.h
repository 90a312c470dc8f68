/* sdxl_cond.h - sgm's GeneralConditioner as SDXL base and refiner use it (Stability-AI
 * generative-models, sgm/modules/encoders/modules.py), on the embedders of ld_sgm:
 *
 *   FrozenCLIPEmbedder       HF CLIP text tower (conditioner.embedders.N.transformer.text_model.*);
 *                            layer "hidden": hidden_states[layer_idx] (no final LayerNorm),
 *                            "last": the final LayerNorm of the last block -> crossattn
 *   FrozenOpenCLIPEmbedder2  open_clip text tower (conditioner.embedders.N.model.*); layer
 *                            "penultimate" (non-legacy: the last block's input, no LayerNorm)
 *                            -> crossattn; always_return_pooled: ln_final(last block output) at
 *                            the token with the largest id (the end-of-text token) @ text_projection
 *                            -> vector
 *   ConcatTimestepEmbedderND each number of the input (a (h, w) tuple or one score) through the
 *                            sinusoidal timestep embedding of outdim, concatenated -> vector
 *
 * Outputs are concatenated in embedder order: crossattn on the feature axis, vector likewise
 * (GeneralConditioner.forward). force_zero_embeddings ["txt"] (the unconditional branch of the
 * SDXL base demo) makes every text embedder's outputs zeros. */
#ifndef LDM_MODELS_SDXL_COND_H
#define LDM_MODELS_SDXL_COND_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/weights.h"
#include "desc.h"

typedef struct lsdxl_cond lsdxl_cond;

/* The numbers of the non-text embedders, per sample. */
typedef struct lsdxl_values {
    double original_h, original_w; /* original_size_as_tuple */
    double crop_top, crop_left;    /* crop_coords_top_left */
    double target_h, target_w;     /* target_size_as_tuple */
    double aesthetic;              /* aesthetic_score */
} lsdxl_values;

/* Loads every text embedder's weights (keys conditioner.embedders.<i>.*). The store must
 * outlive the conditioner (float16 matrices stay in its mapping). */
ldm_status lsdxl_cond_create(const ld_sgm *g, const lw_store *s, lsdxl_cond **out);
void lsdxl_cond_free(lsdxl_cond *c);

/* The text embedders in order (each needs its own token ids). */
int lsdxl_cond_n_text(const lsdxl_cond *c);
/* LD_COND_CLIP (HF tokenizer, padded with the end token) or LD_COND_OPENCLIP (padded with 0). */
ld_cond_kind lsdxl_cond_text_kind(const lsdxl_cond *c, int text_index);
/* The crossattn features of text embedder k (its slice of the context, after those of the text
 * embedders before it). */
int lsdxl_cond_text_width(const lsdxl_cond *c, int text_index);
/* Widths of the outputs: crossattn features and vector length. */
int lsdxl_cond_context_dim(const lsdxl_cond *c);
int lsdxl_cond_vector_dim(const lsdxl_cond *c);

/* tokens[k]: I64 [B,T] of the k-th text embedder (the same T for all: the contexts are
 * concatenated per token); values[B]. zero_text: the text embedders' outputs are zeros (their
 * towers are not run). Outputs: new crossattn [B,T,context_dim] and vector [B,vector_dim]. */
ldm_status lsdxl_cond_encode(lsdxl_cond *c, const lctx *ctx, const ldm_tensor *const *tokens,
                             const lsdxl_values *values, int B, int zero_text, ldm_tensor **crossattn,
                             ldm_tensor **vector);

#endif
