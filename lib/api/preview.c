/* preview.c - step previews of ldm_generate (ldm_generate_params.preview) and the checks of the
 * tiny-autoencoder fields of its params.
 *
 * A preview shows the sampler's x0 prediction of the step just completed: what the final image
 * would be if sampling stopped here. It is made by the tiny decoder, the full first stage, or a
 * linear map of the latent channels to RGB, which costs nothing but only suits the SD latent
 * space. */
#include "pipeline_internal.h"

#include "../models/taesd.h"

#include <string.h>

/* Latent (model space, i.e. scaled by scale_factor) -> RGB in about [-1,1]: rows are the 4 SD
 * latent channels, columns R, G, B. The least-squares fit ComfyUI ships for SD 1.5
 * (comfy/latent_formats.py, class SD15, latent_rgb_factors; applied there to the sampler's x0 in
 * model space and mapped with (v + 1) / 2 to [0,1], as our [-1,1] images are). */
static const float sd_latent_rgb[4][3] = {
    {0.3512f, 0.2297f, 0.3227f},
    {0.3250f, 0.4974f, 0.2350f},
    {-0.2829f, 0.1762f, 0.2721f},
    {-0.2120f, -0.2616f, -0.7177f},
};

/* The same fit for the SDXL latent space (comfy/latent_formats.py, class SDXL, without the later
 * bias term). */
static const float sdxl_latent_rgb[4][3] = {
    {0.3920f, 0.4054f, 0.4549f},
    {-0.2634f, -0.0196f, 0.0653f},
    {0.0568f, 0.1687f, -0.0755f},
    {-0.3112f, -0.2359f, -0.2076f},
};

static int first_stage_factor(const ldm_model *m)
{
    const ld_autoencoder *fs = &m->desc.first_stage;
    return fs->n_levels > 0 ? 1 << (fs->n_levels - 1) : 1;
}

static int latent_channels(const ldm_model *m)
{
    return m->desc.unet.out_channels > 0 ? m->desc.unet.out_channels : m->desc.first_stage.embed_dim;
}

ldm_status lp_resolve_tiny(const ldm_model *m, ldm_generate_params *p)
{
    if (p->vae != LDM_VAE_FULL && p->vae != LDM_VAE_TINY)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_generate_params.vae %d is neither LDM_VAE_FULL nor LDM_VAE_TINY",
                        p->vae);
    if (p->vae == LDM_VAE_TINY && !m->tiny_dec)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "vae LDM_VAE_TINY: the model has no tiny decoder (ldm_model_set_tiny_autoencoder)");
    if (p->vae == LDM_VAE_TINY && p->init_image && m->desc.cond.kind != LD_COND_FIRST_STAGE && !m->tiny_enc)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "vae LDM_VAE_TINY with an init_image: the model has no tiny encoder (set an encoder file "
                        "with ldm_model_set_tiny_autoencoder)");
    if (p->preview_every < 0 || p->preview_every > 100000)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "preview_every %d outside 0..100000", p->preview_every);
    if (p->preview_every == 0) p->preview_every = 1;
    int sd_like = latent_channels(m) == 4 && first_stage_factor(m) == 8;
    switch (p->preview_kind) {
    case LDM_PREVIEW_AUTO:
        p->preview_kind = m->tiny_dec ? LDM_PREVIEW_TINY : sd_like ? LDM_PREVIEW_LINEAR : LDM_PREVIEW_FULL;
        return LDM_OK;
    case LDM_PREVIEW_TINY:
        if (!m->tiny_dec)
            return ldm_fail(
                LDM_ERR_INVALID_ARGUMENT,
                "preview_kind LDM_PREVIEW_TINY: the model has no tiny decoder (ldm_model_set_tiny_autoencoder)");
        return LDM_OK;
    case LDM_PREVIEW_LINEAR:
        if (latent_channels(m) != 4)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                            "preview_kind LDM_PREVIEW_LINEAR maps 4 SD latent channels to RGB; this model's latents "
                            "have %d",
                            latent_channels(m));
        return LDM_OK;
    case LDM_PREVIEW_FULL:
        return LDM_OK;
    default:
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "preview_kind %d is not an ldm_preview_kind", p->preview_kind);
    }
}

static ldm_status linear_rgb(const ldm_model *m, const ldm_tensor *z, ldm_tensor **out)
{
    const float(*rgb)[3] = m->desc.sgm.present ? sdxl_latent_rgb : sd_latent_rgb;
    int64_t B = z->shape[0], HW = z->shape[2] * z->shape[3];
    if (z->shape[1] != 4) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "linear preview: the latent must have 4 channels");
    if (!(*out = lt_new_f32_4d(B, 3, z->shape[2], z->shape[3]))) return ldm_alloc_failure_status();
    for (int64_t b = 0; b < B; b++)
        for (int c = 0; c < 3; c++) {
            float *o = lt_f32(*out) + (b * 3 + c) * HW;
            const float *zb = lt_f32(z) + b * 4 * HW;
            for (int64_t i = 0; i < HW; i++)
                o[i] = rgb[0][c] * zb[i] + rgb[1][c] * zb[HW + i] + rgb[2][c] * zb[2 * HW + i] + rgb[3][c] * zb[3 * HW + i];
        }
    return LDM_OK;
}

static ldm_status make_preview(ldm_model *m, const ldm_generate_params *p, const ldm_tensor *z, ldm_tensor **image)
{
    switch (p->preview_kind) {
    case LDM_PREVIEW_TINY:
        return lm_tiny_decode(m, z, p->vae_tile, image);
    case LDM_PREVIEW_LINEAR:
        return linear_rgb(m, z, image);
    default: {
        int saved = m->vae_in_use;
        m->vae_in_use = LDM_VAE_FULL;
        ldm_status st = lp_decode(m, z, p->vae_tile, image);
        m->vae_in_use = saved;
        return st;
    }
    }
}

ldm_status lp_preview(ldm_model *m, const ldm_sampler *s, const ldm_generate_params *p, int step, int total)
{
    if (!p->preview || step % (p->preview_every > 0 ? p->preview_every : 1) != 0) return LDM_OK;
    const ldm_tensor *z = ldm_sampler_pred_x0(s);
    if (!z) z = ldm_sampler_current(s);
    ldm_tensor *image = NULL;
    LDM_TRY(make_preview(m, p, z, &image));
    int stop = p->preview(step, total, image, p->preview_user_data);
    ldm_tensor_free(image);
    if (stop) return ldm_fail(LDM_CANCELLED, "cancelled by the preview callback at step %d of %d", step, total);
    return LDM_OK;
}
