/* spatial_rescaler.h - SpatialRescaler (CompVis latent-diffusion ldm/modules/encoders/modules.py),
 * the conditioning stage of the semantic-synthesis models: n_stages times
 * F.interpolate(x, scale_factor=multiplier, mode=bilinear|nearest, align_corners=False), then,
 * when out_channels is set (remap_output), a 1x1 Conv2d channel_mapper (bias only if `bias`).
 *
 * With multiplier 0.5 and bilinear each stage is exactly a 2x2 average pool with floor (the scale
 * factor, not the size ratio, maps output to input coordinates), so odd sizes lose their last
 * row/column (fixtures README fact 25). */
#ifndef LDM_MODELS_SPATIAL_RESCALER_H
#define LDM_MODELS_SPATIAL_RESCALER_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/weights.h"
#include "desc.h"

typedef struct lrescaler lrescaler;

/* Uses d->n_stages, multiplier, method_bilinear, in_channels, out_channels (<= 0: no
 * channel_mapper) and bias. Loads "<prefix>channel_mapper.weight" [out,in,1,1] (+ ".bias" [out]). */
ldm_status lrescaler_create(const ld_cond *d, const lw_store *s, const char *prefix, lrescaler **out);
void lrescaler_free(lrescaler *n);

/* Channels of the result (out_channels when remapping, else the input's). 0 if not remapping. */
int lrescaler_out_channels(const lrescaler *n);

/* x F32 [B,C,H,W] (C = in_channels when remapping) -> F32 [B,C',h,w]. */
ldm_status lrescaler_encode(lrescaler *n, const lctx *c, const ldm_tensor *x, ldm_tensor **out);

/* labels I64 [B,H,W] -> one-hot F32 [B,n_classes,H,W] (seg[b,k,y,x] = labels[b,y,x] == k), the
 * np.eye(n)[seg] + "b h w c -> b c h w" of the data pipeline. Labels outside [0,n_classes) are an
 * error naming the position and value. */
ldm_status lrescaler_one_hot(const ldm_tensor *labels, int n_classes, ldm_tensor **out);

#endif
