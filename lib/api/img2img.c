/* img2img.c - image-to-image (strength) and mask-blended inpainting for any model, and the
 * input mappings of the LDM inpainting model and of SD's inpainting (hybrid) models.
 *
 * Image-to-image follows SD's img2img.py: the init image is encoded (KL: a posterior sample,
 * seeded), scaled by scale_factor, noised to the level of the first step that remains when
 * `strength` of the schedule is re-run, and sampled from there. Unlike the reference, the noise
 * level is that of the first executed step (the reference noises one DDIM step further and fails
 * at strength 1). Mask blending (RePaint-style, as SD's "inpaint with a normal model"): after every
 * step the known region (mask 0) is replaced by the init latent noised to the sampler's current
 * level, and the final image is composited in pixel space. */
#include "pipeline_internal.h"

#include "../kernels/kernels.h"
#include "../models/autoencoder.h"
#include "../sampling/sampling.h"

#include <math.h>
#include <string.h>

ldm_status lp_encode_latent(ldm_model *m, const ldm_tensor *x, uint64_t seed, ldm_tensor **out)
{
    struct ldm_autoencoder *ae;
    ldm_tensor *moments = NULL, *mean = NULL, *std = NULL, *eps = NULL;
    if (m->vae_in_use == LDM_VAE_TINY) return lm_tiny_encode(m, x, out); /* already latent-scaled */
    LDM_TRY(lm_autoencoder(m, &ae));
    if (lae_is_vq(ae->net)) {
        LDM_TRY(lae_encode(ae->net, &m->ctx, x, out));
    } else {
        LDM_TRY(lae_encode(ae->net, &m->ctx, x, &moments));
        ldm_status st = lae_posterior_split(moments, &mean, NULL, &std);
        if (st == LDM_OK) st = (eps = lt_new_f32(mean->ndim, mean->shape)) ? LDM_OK : ldm_alloc_failure_status();
        if (st == LDM_OK) st = ldm_randn(seed, LP_STREAM_POSTERIOR, eps);
        if (st == LDM_OK)
            for (int64_t i = 0, n = lt_numel(mean); i < n; i++) lt_f32(mean)[i] += lt_f32(std)[i] * lt_f32(eps)[i];
        ldm_tensor_free(moments);
        ldm_tensor_free(std);
        ldm_tensor_free(eps);
        if (st != LDM_OK) {
            ldm_tensor_free(mean);
            return st;
        }
        *out = mean;
    }
    float k = (float)m->desc.scale_factor;
    for (int64_t i = 0, n = lt_numel(*out); i < n; i++) lt_f32(*out)[i] *= k;
    return LDM_OK;
}

ldm_status lp_latent_mask(const ldm_tensor *mask, const ldm_tensor *z0, ldm_tensor **out)
{
    LDM_TRY(lt_check(mask, "mask", LDM_F32, 4));
    if (mask->shape[1] != 1 || mask->shape[0] != z0->shape[0])
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "mask must be [B,1,H,W] with the image's batch");
    *out = lt_new_f32_4d(z0->shape[0], 1, z0->shape[2], z0->shape[3]);
    if (!*out) return ldm_alloc_failure_status();
    lk_resize_nearest(lt_f32(mask), (int)mask->shape[0], (int)mask->shape[2], (int)mask->shape[3], (int)z0->shape[2],
                      (int)z0->shape[3], lt_f32(*out));
    for (int64_t i = 0, n = lt_numel(*out); i < n; i++) lt_f32(*out)[i] = lt_f32(*out)[i] >= 0.5f ? 1.0f : 0.0f;
    return LDM_OK;
}

/* img2img.py: t_enc = int(strength * ddim_steps) steps are re-run (here of the steps the sampler
 * really runs, which for DDIM 'uniform' can be one more than requested); at least one. The small
 * epsilon keeps decimal strengths whole where Python's double product is (0.7f * 50 -> 35). */
int lp_img2img_first_step(float strength, int total_steps)
{
    int run = (int)(strength * (float)total_steps + 1e-4f);
    return total_steps - LDM_MAX(run, 1);
}

ldm_status lp_img2img_begin(ldm_model *m, ldm_sampler *s, const ldm_generate_params *p, const ldm_tensor *x_T,
                            lp_blend *blend)
{
    ldm_tensor *z0 = NULL;
    LDM_TRY(lt_check(p->init_image, "init_image", LDM_F32, 4));
    if (p->init_image->shape[0] != x_T->shape[0])
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "init_image batch %lld differs from batch %lld",
                        (long long)p->init_image->shape[0], (long long)x_T->shape[0]);
    LDM_TRY(lp_encode_latent(m, p->init_image, p->seed, &z0));
    int first = lp_img2img_first_step(p->strength, ldm_sampler_total_steps(s));
    ldm_status st = ls_sampler_begin_from(s, z0, x_T, first);
    if (st == LDM_OK && p->mask) {
        blend->active = 1;
        blend->first_step = first;
        blend->z0 = z0;
        z0 = NULL;
        st = lp_latent_mask(p->mask, blend->z0, &blend->mask);
        if (st == LDM_OK) st = (blend->noise = lt_new_f32(x_T->ndim, x_T->shape)) ? LDM_OK : ldm_alloc_failure_status();
        if (st == LDM_OK) st = ldm_randn(p->seed, LP_STREAM_RENOISE, blend->noise);
    }
    ldm_tensor_free(z0);
    return st;
}

ldm_status lp_blend_apply(ldm_model *m, ldm_sampler *s, const lp_blend *b, int done)
{
    ldm_tensor *known = NULL;
    (void)m;
    LDM_TRY(ls_sampler_noised(s, done, b->z0, b->noise, &known));
    ldm_tensor *x = (ldm_tensor *)ldm_sampler_current(s);
    int64_t B = x->shape[0], C = x->shape[1], HW = x->shape[2] * x->shape[3];
    for (int64_t bi = 0; bi < B; bi++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < HW; i++) {
                float keep = 1.0f - lt_f32(b->mask)[bi * HW + i];
                float *xv = lt_f32(x) + (bi * C + c) * HW + i;
                *xv = keep * lt_f32(known)[(bi * C + c) * HW + i] + (1.0f - keep) * *xv;
            }
    ldm_tensor_free(known);
    return LDM_OK;
}

ldm_status lp_composite(const ldm_generate_params *p, ldm_tensor *image)
{
    const ldm_tensor *init = p->init_image, *mask = p->mask;
    for (int i = 0; i < 4; i++)
        if (init->shape[i] != image->shape[i] || (i != 1 && mask->shape[i] != image->shape[i]))
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                            "mask and init_image must have the output's size for the composite");
    int64_t B = image->shape[0], C = image->shape[1], HW = image->shape[2] * image->shape[3];
    for (int64_t bi = 0; bi < B; bi++)
        for (int64_t i = 0; i < HW; i++) {
            int generate = lt_f32(mask)[bi * HW + i] >= 0.5f;
            for (int64_t c = 0; c < C; c++) {
                int64_t k = (bi * C + c) * HW + i;
                float gen = LDM_MAX(-1.0f, LDM_MIN(1.0f, lt_f32(image)[k]));
                lt_f32(image)[k] = generate ? gen : lt_f32(init)[k];
            }
        }
    return LDM_OK;
}

void lp_blend_release(lp_blend *b)
{
    ldm_tensor_free(b->z0);
    ldm_tensor_free(b->noise);
    ldm_tensor_free(b->mask);
    memset(b, 0, sizeof *b);
}

/* scripts/inpaint.py of latent-diffusion (fact 16): with img and mask in [0,1], mask binarised at
 * 0.5, masked = (1 - mask) * img, then image, mask and masked image all mapped to [-1,1] (the
 * mask becomes -1/+1). Our init_image is already in [-1,1]. */
ldm_status lp_ldm_inpaint_cond(ldm_model *m, const ldm_tensor *image, const ldm_tensor *mask, ldm_tensor **out)
{
    LDM_TRY(lt_check(image, "init_image", LDM_F32, 4));
    LDM_TRY(lt_check(mask, "mask", LDM_F32, 4));
    if (mask->shape[1] != 1 || mask->shape[0] != image->shape[0] || mask->shape[2] != image->shape[2] ||
        mask->shape[3] != image->shape[3])
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "mask must be [B,1,H,W] matching init_image");
    ldm_tensor *masked = lt_clone(image), *mm = lt_clone(mask);
    ldm_status st = (masked && mm) ? LDM_OK : ldm_alloc_failure_status();
    int64_t B = image->shape[0], C = image->shape[1], HW = image->shape[2] * image->shape[3];
    for (int64_t b = 0; st == LDM_OK && b < B; b++)
        for (int64_t i = 0; i < HW; i++) {
            float mv = lt_f32(mask)[b * HW + i] >= 0.5f ? 1.0f : 0.0f;
            lt_f32(mm)[b * HW + i] = mv * 2.0f - 1.0f;
            for (int64_t c = 0; c < C; c++) {
                float *v = lt_f32(masked) + (b * C + c) * HW + i;
                *v = (1.0f - mv) * ((*v + 1.0f) * 0.5f) * 2.0f - 1.0f;
            }
        }
    if (st == LDM_OK) st = lp_inpaint_cond(m, masked, mm, out);
    ldm_tensor_free(masked);
    ldm_tensor_free(mm);
    return st;
}

/* make_batch_sd (SD inpainting scripts): image in [-1,1], mask binarised at 0.5 in {0,1},
 * masked_image = image * (mask < 0.5); c_concat = cat(interpolate(mask, latent size) (nearest),
 * get_first_stage_encoding(encode(masked_image))). */
ldm_status lp_hybrid_inpaint_concat(ldm_model *m, const ldm_tensor *image, const ldm_tensor *mask, uint64_t seed,
                                    ldm_tensor **out)
{
    ldm_tensor *masked = lt_clone(image), *z = NULL, *m_small = NULL;
    if (!masked) return ldm_alloc_failure_status();
    int64_t B = image->shape[0], C = image->shape[1], HW = image->shape[2] * image->shape[3];
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < HW; i++)
            if (lt_f32(mask)[b * HW + i] >= 0.5f)
                for (int64_t c = 0; c < C; c++) lt_f32(masked)[(b * C + c) * HW + i] = 0.0f;
    ldm_status st = lp_encode_latent(m, masked, seed, &z);
    if (st == LDM_OK) st = lp_latent_mask(mask, z, &m_small);
    if (st == LDM_OK)
        st = (*out = lt_new_f32_4d(B, 1 + z->shape[1], z->shape[2], z->shape[3])) ? LDM_OK : ldm_alloc_failure_status();
    if (st == LDM_OK) {
        int64_t hw = z->shape[2] * z->shape[3], zc = z->shape[1] * hw;
        for (int64_t b = 0; b < B; b++) {
            memcpy(lt_f32(*out) + b * (hw + zc), lt_f32(m_small) + b * hw, (size_t)hw * sizeof(float));
            memcpy(lt_f32(*out) + b * (hw + zc) + hw, lt_f32(z) + b * zc, (size_t)zc * sizeof(float));
        }
    }
    ldm_tensor_free(masked);
    ldm_tensor_free(z);
    ldm_tensor_free(m_small);
    return st;
}
