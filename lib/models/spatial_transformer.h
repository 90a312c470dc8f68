/* spatial_transformer.h - ldm.modules.attention.SpatialTransformer as used inside the UNet:
 * GroupNorm(32, eps 1e-6) -> proj_in (1x1 conv, or Linear after flattening when use_linear,
 * SD2) -> depth x BasicTransformerBlock (x += attn1(LN1 x); x += attn2(LN2 x, context);
 * x += FF(LN3 x), FF = GEGLU) -> proj_out -> + input. CrossAttention: to_q/k/v without bias,
 * to_out.0 with bias, scale dim_head^-0.5, heads split head-major ((h d) channel order). */
#ifndef LDM_MODELS_SPATIAL_TRANSFORMER_H
#define LDM_MODELS_SPATIAL_TRANSFORMER_H

#include "unet_blocks.h"

typedef struct lst_attn {
    int query_dim, context_dim, heads, dim_head;
    lnw wq, wk, wv, wo;
    float *bo;
    lk_wcache *wc; /* the network's weight cache (lub_loader.wc), may be NULL */
} lst_attn;

typedef struct lst_block {
    float *norm_w[3], *norm_b[3];
    lst_attn attn1, attn2;
    lnw ff_in_w, ff_out_w;
    float *ff_in_b, *ff_out_b;
    lk_wcache *wc;
} lst_block;

typedef struct lst {
    int ch, inner, heads, dim_head, depth, context_dim, use_linear;
    lub_norm norm;
    lnw proj_in_w, proj_out_w;
    float *proj_in_b, *proj_out_b;
    lst_block *blocks;
} lst;

/* `name` is the module path relative to the loader prefix ("input_blocks.1.1"). context_dim is
 * the cross-attention key/value width (attn2.to_k/to_v are [heads*dim_head, context_dim]). */
ldm_status lst_load(lst *t, const lub_loader *L, const char *name, int ch, int heads, int dim_head, int depth,
                    int context_dim, int use_linear);
void lst_free(lst *t);
/* In place: x += transformer(x). context [B, ctx_len, context_dim] or NULL (cross-attention then
 * attends to x itself, which needs context_dim == heads*dim_head). */
ldm_status lst_forward(const lst *t, const lctx *c, lub_ws *ws, lub_act *x, const float *context, int ctx_len);

#endif
