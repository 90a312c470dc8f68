/* ae_blocks.h - the building blocks of the first-stage autoencoder, as in CompVis latent-diffusion
 * ldm/modules/diffusionmodules/model.py: a batch of feature maps, convolutions, Normalize
 * (GroupNorm(32, eps 1e-6)), ResnetBlock (temb unused), AttnBlock (single head), Downsample
 * (asymmetric pad (0,1,0,1) + 3x3 stride-2 conv) and Upsample (nearest x2 + 3x3 conv).
 *
 * Every block is loaded from a checkpoint under a dotted module name ("encoder.down.0.block.1")
 * and runs on laeb_map values. The *_run functions allocate their output; on failure the output
 * is left empty (d == NULL) and nothing leaks. */
#ifndef LDM_MODELS_AE_BLOCKS_H
#define LDM_MODELS_AE_BLOCKS_H

#include "../core/ctx.h"
#include "../io/weights.h"
#include "netweights.h"

/* A dense float32 NCHW batch [b,c,h,w]; d from ldm_malloc_aligned (NULL when empty). */
typedef struct laeb_map {
    float *d;
    int b, c, h, w;
    size_t cap; /* bytes of the buffer behind d when laeb_map_alloc made it (may exceed the map) */
} laeb_map;

/* Allocates an uninitialised map; sizes are checked so that b*c*h*w fits size_t and h*w fits int
 * (the kernels index planes with int). */
ldm_status laeb_map_alloc(laeb_map *m, int b, int c, int h, int w);
void laeb_map_free(laeb_map *m);
/* Between begin and end, on this thread, freed maps are kept and handed out again by
 * laeb_map_alloc instead of going back to the system: a 512x512 decode allocates gigabytes of
 * maps, and fresh memory costs the kernel's page zeroing every time. Smaller kept buffers are
 * dropped as soon as a larger map is asked for (a decoder's maps only grow), so this does not
 * raise the peak. end frees what is kept. Not in the low-memory mode. */
void laeb_pool_begin(void);
void laeb_pool_end(void);
size_t laeb_map_numel(const laeb_map *m);

/* torch.nn.Conv2d(in, out, k) with square kernel; bias may be absent (NULL). */
typedef struct laeb_conv {
    lnw w; /* kept float16 when the checkpoint stores it so (netweights.h) */
    float *bias;
    int in, out, k;
} laeb_conv;

/* Loads "<name>.weight" [out,in,k,k] and, when has_bias, "<name>.bias" [out]. */
ldm_status laeb_conv_load(laeb_conv *cv, const lw_store *s, const char *name, int in, int out, int k, int has_bias);
void laeb_conv_free(laeb_conv *cv);
/* Stride 1, padding k/2 on every side (the "same" convolutions of the autoencoder). */
ldm_status laeb_conv_run(const lctx *c, const laeb_conv *cv, const laeb_map *x, laeb_map *y);

/* Normalize(C) = GroupNorm(32 groups, eps 1e-6, affine). */
typedef struct laeb_norm {
    float *gamma, *beta;
    int c;
} laeb_norm;

ldm_status laeb_norm_load(laeb_norm *n, const lw_store *s, const char *name, int c);
void laeb_norm_free(laeb_norm *n);
/* y = GN(x), followed by swish when `silu`; y may equal x->d. */
void laeb_norm_run(const lctx *c, const laeb_norm *n, const laeb_map *x, int silu, float *y);

/* ResnetBlock(in, out) with temb_channels 0: x' + conv2(swish(GN2(conv1(swish(GN1(x)))))),
 * x' = nin_shortcut(x) (1x1 conv) when in != out, else x. Dropout is inference-time identity. */
typedef struct laeb_resblock {
    laeb_norm norm1, norm2;
    laeb_conv conv1, conv2, nin_shortcut;
    int in, out;
} laeb_resblock;

ldm_status laeb_resblock_load(laeb_resblock *r, const lw_store *s, const char *name, int in, int out);
void laeb_resblock_free(laeb_resblock *r);
/* Consumes x: it is freed on return, success or not (its memory may hold intermediate values). */
ldm_status laeb_resblock_run(const lctx *c, const laeb_resblock *r, laeb_map *x, laeb_map *y);

/* AttnBlock(C): single-head self-attention over the h*w positions, 1x1 convs q, k, v, proj_out,
 * scale C^-0.5, residual. q/k/v weights are stacked into one [3C,C] 1x1 conv at load time. */
typedef struct laeb_attn {
    laeb_norm norm;
    laeb_conv qkv, proj_out;
    int c;
} laeb_attn;

ldm_status laeb_attn_load(laeb_attn *a, const lw_store *s, const char *name, int c);
void laeb_attn_free(laeb_attn *a);
/* x += proj_out(attention(GN(x))), in place. */
ldm_status laeb_attn_run(const lctx *c, const laeb_attn *a, laeb_map *x);

/* Downsample(with_conv): zero-pad right/bottom by one, 3x3 conv stride 2, no other padding:
 * out = floor((n - 2) / 2) + 1 per spatial dimension, so n must be >= 2. */
ldm_status laeb_downsample_run(const lctx *c, const laeb_conv *cv, const laeb_map *x, laeb_map *y);
/* Upsample(with_conv): nearest-neighbour x2, then the 3x3 conv. */
ldm_status laeb_upsample_run(const lctx *c, const laeb_conv *cv, const laeb_map *x, laeb_map *y);

#endif
