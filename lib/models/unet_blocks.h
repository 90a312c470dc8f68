/* unet_blocks.h - the building blocks of openaimodel.UNetModel (CompVis latent-diffusion /
 * Stability-AI stablediffusion): weight loading (optionally from the EMA copies), a reusable
 * scratch workspace, activations, convolutions, ResBlock and the legacy AttentionBlock.
 * The SpatialTransformer lives in spatial_transformer.h. Internal to the UNet. */
#ifndef LDM_MODELS_UNET_BLOCKS_H
#define LDM_MODELS_UNET_BLOCKS_H

#include "../core/ctx.h"
#include "../io/weights.h"
#include "netweights.h"

/* Where parameters come from: `prefix` + name, or with use_ema the EMA buffer of that parameter
 * (lw_ema_name: "model_ema.diffusion_model<name without dots>"), as ema_scope() would swap in. */
typedef struct lub_loader {
    const lw_store *s;
    const char *prefix;
    int use_ema;
    lk_wcache *wc; /* the network's weight cache, handed to the convolutions it loads (may be NULL) */
} lub_loader;

/* printf into a module-path buffer; an error (not a silent cut) when it does not fit. */
ldm_status lub_name(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Loads the float32 copy of parameter prefix+<fmt...> with the expected shape. */
ldm_status lub_get(const lub_loader *L, int ndim, const int64_t *shape, float **out, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The same for a weight matrix or kernel, kept float16 when stored so (netweights.h). */
ldm_status lub_get_wt(const lub_loader *L, int ndim, const int64_t *shape, lnw *out, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Scratch buffers reused across blocks and calls (grown on demand, never shrunk) so a forward
 * pass does not allocate per operation. Slot usage: blocks use slots 0..4 for their temporaries
 * (nothing survives a block call); the UNet keeps its skip-concatenation buffer in LUB_WS_CAT. */
#define LUB_WS_SLOTS 6
#define LUB_WS_CAT 5
typedef struct lub_ws {
    float *buf[LUB_WS_SLOTS];
    size_t cap[LUB_WS_SLOTS];
} lub_ws;
/* A buffer of at least `count` floats in `slot` (contents undefined); NULL with the error set. */
float *lub_ws_get(lub_ws *w, int slot, size_t count);
void lub_ws_free(lub_ws *w);

/* A dense NCHW activation. `p` is owned (ldm_malloc_aligned) unless it views a tensor or a
 * workspace slot; the owner decides when to lub_act_free it. */
typedef struct lub_act {
    float *p;
    int B, C, H, W;
} lub_act;
/* Allocates p for [B,C,H,W] (overflow-checked). */
ldm_status lub_act_alloc(lub_act *a, int B, int C, int H, int W);
void lub_act_free(lub_act *a);
size_t lub_act_numel(const lub_act *a);

/* GroupNorm(32) parameters. eps: 1e-5 for normalization(), 1e-6 for the transformer's Normalize. */
typedef struct lub_norm {
    int ch;
    float eps;
    float *w, *b;
} lub_norm;
ldm_status lub_norm_load(lub_norm *n, const lub_loader *L, const char *name, int ch, float eps);
void lub_norm_free(lub_norm *n);

/* Conv2d k x k (padding k/2) with bias, stride 1 or 2. */
typedef struct lub_conv {
    int in_ch, out_ch, k, stride;
    lnw w;
    float *b;
    lk_wcache *wc; /* borrowed from the loader: the network's weight cache (may be NULL) */
} lub_conv;
ldm_status lub_conv_load(lub_conv *cv, const lub_loader *L, const char *name, int in_ch, int out_ch, int k, int stride);
void lub_conv_free(lub_conv *cv);
/* out = conv(x) written to `y` (caller provides [B,out_ch,OH,OW]). */
ldm_status lub_conv_run(const lub_conv *cv, const lctx *c, const float *x, int B, int H, int W, float *y);
/* Allocates `out` and convolves x into it. */
ldm_status lub_conv_forward(const lub_conv *cv, const lctx *c, const lub_act *x, lub_act *out);
/* Upsample(use_conv): nearest x2 then the conv. */
ldm_status lub_upsample_forward(const lub_conv *cv, const lctx *c, lub_ws *ws, const lub_act *x, lub_act *out);
/* Downsample / Upsample with conv_resample false: avg-pool 2x2 stride 2 (LUB_DOWN, floor) or
 * nearest x2 (LUB_UP), no parameters. `out` is a new activation. */
ldm_status lub_resample_forward(int updown, const lub_act *x, lub_act *out);

/* ResBlock: in_layers (GN+SiLU+conv3x3), emb_layers (SiLU+Linear; done by the caller's shared
 * SiLU(emb) + our Linear), out_layers (GN+SiLU+dropout+conv3x3), skip (identity or 1x1 conv).
 * updown: 0, LUB_DOWN (avg-pool 2x2 of h after GN+SiLU and of the skip input) or LUB_UP
 * (nearest x2 of both). scale_shift: use_scale_shift_norm (emb gives 2*out_ch: scale, shift). */
enum { LUB_DOWN = -1, LUB_UP = 1 };
typedef struct lub_resblock {
    int in_ch, out_ch, emb_ch, updown, scale_shift;
    lub_norm in_norm, out_norm;
    lub_conv in_conv, out_conv;
    lnw emb_w;
    float *emb_b;
    int has_skip_conv;
    lub_conv skip;
} lub_resblock;
ldm_status lub_resblock_load(lub_resblock *r, const lub_loader *L, const char *name, int in_ch, int out_ch,
                             int emb_ch, int updown, int scale_shift);
void lub_resblock_free(lub_resblock *r);
/* emb_silu = SiLU(emb) [B, emb_ch]. Allocates `out`. */
ldm_status lub_resblock_forward(const lub_resblock *r, const lctx *c, lub_ws *ws, const lub_act *x,
                                const float *emb_silu, lub_act *out);

/* AttentionBlock: GN -> qkv Conv1d -> QKVAttentionLegacy (per-head (q,k,v) channel groups) or
 * QKVAttention (new_order: all q, all k, all v) -> proj_out Conv1d -> + x. */
typedef struct lub_attn {
    int ch, heads, new_order;
    lub_norm norm;
    lnw qkv_w, proj_w;
    float *qkv_b, *proj_b;
} lub_attn;
ldm_status lub_attn_load(lub_attn *a, const lub_loader *L, const char *name, int ch, int heads, int new_order);
void lub_attn_free(lub_attn *a);
/* In place: x += attention(x). */
ldm_status lub_attn_forward(const lub_attn *a, const lctx *c, lub_ws *ws, lub_act *x);

/* y[b] (M x N, row-major) += / = W (M x K) @ x[b] (K x N) + bias[m] for each batch: a 1x1 conv /
 * Conv1d on channels-first data. accumulate: add into y instead of overwriting. */
ldm_status lub_pointwise(const lctx *c, lk_wt W, const float *bias, const float *x, int B, int M, int K, int N,
                         float *y, int accumulate);

#endif
