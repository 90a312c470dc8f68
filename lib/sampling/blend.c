/* blend.c - the mask blending of inpainting with an ordinary (4-channel) UNet inside a sampler
 * run, as diffusers' StableDiffusionXLInpaintPipeline does after each scheduler step: the region
 * to keep (mask 0) becomes the clean latent z0 noised with the run's own initial noise to the
 * level the run has reached (z0 itself after the last step); the region to repaint (mask 1) keeps
 * the sampler's sample. */
#include "sampling.h"

#include <string.h>

static ldm_status check_mask(const ldm_tensor *mask, const ldm_tensor *x)
{
    char a[96], b[96];
    LDM_TRY(lt_check(mask, "ldm_sampler_blend_known: mask", LDM_F32, 4));
    if (x->ndim != 4 || mask->shape[0] != x->shape[0] || mask->shape[1] != 1 || mask->shape[2] != x->shape[2] ||
        mask->shape[3] != x->shape[3])
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_blend_known: mask %s must be [B,1,H,W] of the sample %s",
                        lt_shape_str(mask, a, sizeof a), lt_shape_str(x, b, sizeof b));
    return LDM_OK;
}

ldm_status ldm_sampler_blend_known(ldm_sampler *s, const ldm_tensor *z0, const ldm_tensor *noise,
                                   const ldm_tensor *mask)
{
    if (!s || !z0 || !noise || !mask)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_blend_known: NULL argument");
    /* the sampler's own sample, updated in place (the run's state, as a step updates it) */
    ldm_tensor *x = (ldm_tensor *)ldm_sampler_current(s);
    if (!x) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_blend_known: the run has not begun");
    LDM_TRY(check_mask(mask, x));
    if (lt_numel(z0) != lt_numel(x) || z0->ndim != x->ndim || memcmp(z0->shape, x->shape, sizeof(int64_t) * 4)) {
        char a[96], b[96];
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_blend_known: z0 %s differs from the sample %s",
                        lt_shape_str(z0, a, sizeof a), lt_shape_str(x, b, sizeof b));
    }
    ldm_tensor *known = NULL;
    LDM_TRY(ls_sampler_noised(s, ldm_sampler_steps_done(s), z0, noise, &known));
    int64_t B = x->shape[0], C = x->shape[1], HW = x->shape[2] * x->shape[3];
    const float *m = lt_f32(mask), *k = lt_f32(known);
    float *xv = lt_f32(x);
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < HW; i++) {
                int64_t j = (b * C + c) * HW + i;
                float mv = m[b * HW + i];
                xv[j] = (1.0f - mv) * k[j] + mv * xv[j];
            }
    ldm_tensor_free(known);
    return LDM_OK;
}
