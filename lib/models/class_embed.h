/* class_embed.h - ClassEmbedder (CompVis latent-diffusion ldm/modules/encoders/modules.py):
 * nn.Embedding(n_classes, embed_dim); class labels [B] -> conditioning [B,1,embed_dim]. */
#ifndef LDM_MODELS_CLASS_EMBED_H
#define LDM_MODELS_CLASS_EMBED_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/weights.h"
#include "desc.h"

typedef struct lclass lclass;

/* Loads "<prefix>embedding.weight" [n_classes, embed_dim] (prefix normally "cond_stage_model."). */
ldm_status lclass_create(const ld_cond *d, const lw_store *s, const char *prefix, lclass **out);
void lclass_free(lclass *n);

int lclass_n_classes(const lclass *n);
int lclass_embed_dim(const lclass *n);

/* labels I64 [B], each in [0, n_classes) -> F32 [B,1,embed_dim]. Labels out of range are an
 * error naming the offending position and value. */
ldm_status lclass_encode(lclass *n, const ldm_tensor *labels, ldm_tensor **out);

#endif
