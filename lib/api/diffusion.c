/* diffusion.c - LatentDiffusion-level calls: apply_model with the conditioning routed as the
 * config says, classifier-free guidance, the first stage with scale_factor, inpainting
 * conditioning and the DDPM ancestral step. */
#include "model_internal.h"

#include "../kernels/kernels.h"
#include "../models/autoencoder.h"
#include "../models/unet.h"
#include "pipeline_internal.h"

#include <math.h>

#include "../sampling/sampling.h"
#include <string.h>

/* ---------------------------------------------------------------- tensor helpers */

/* cat along dim 0 (batch) or 1 (channels) of two tensors that agree elsewhere. */
static ldm_status cat2(const ldm_tensor *a, const ldm_tensor *b, int dim, ldm_tensor **out)
{
    char sa[96], sb[96];
    int ok = a->dtype == b->dtype && a->ndim == b->ndim && dim < a->ndim;
    for (int i = 0; ok && i < a->ndim; i++) ok = (i == dim) || a->shape[i] == b->shape[i];
    if (!ok)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "cannot concatenate %s and %s along dimension %d",
                        lt_shape_str(a, sa, sizeof sa), lt_shape_str(b, sb, sizeof sb), dim);
    int64_t shape[LDM_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[dim] = a->shape[dim] + b->shape[dim];
    LDM_TRY(ldm_tensor_create(a->dtype, a->ndim, shape, out));
    size_t esz = a->dtype == LDM_I64 ? 8 : 4;
    int64_t outer = 1, inner_a = esz, inner_b = esz;
    for (int i = 0; i < dim; i++) outer *= a->shape[i];
    for (int i = dim; i < a->ndim; i++) {
        inner_a *= a->shape[i];
        inner_b *= b->shape[i];
    }
    char *dst = (*out)->data;
    for (int64_t o = 0; o < outer; o++) {
        memcpy(dst, (const char *)a->data + o * inner_a, (size_t)inner_a);
        dst += inner_a;
        memcpy(dst, (const char *)b->data + o * inner_b, (size_t)inner_b);
        dst += inner_b;
    }
    return LDM_OK;
}

/* Timesteps as a [B] tensor for the UNet: I64 values, or F32 ones (fractional for the k-diffusion
 * samplers); [1] is broadcast to the batch. */
static ldm_status timesteps_for(const ldm_tensor *t, int64_t B, ldm_tensor **out)
{
    if (!t || t->ndim > 1 || (t->dtype != LDM_I64 && t->dtype != LDM_F32) || (lt_numel(t) != B && lt_numel(t) != 1))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "timesteps: expected [%lld] or [1] I64 or F32 values", (long long)B);
    LDM_TRY(ldm_tensor_create(t->dtype, 1, &B, out));
    for (int64_t i = 0; i < B; i++) {
        int64_t k = lt_numel(t) == 1 ? 0 : i;
        if (t->dtype == LDM_I64) lt_i64(*out)[i] = lt_i64(t)[k];
        else lt_f32(*out)[i] = lt_f32(t)[k];
    }
    return LDM_OK;
}

/* ---------------------------------------------------------------- apply_model */

int lm_label_emb_classes(const ldm_model *m)
{
    const ld_model *d = &m->desc;
    int key_ok = d->conditioning_key == LD_CONDKEY_NONE || d->conditioning_key == LD_CONDKEY_ADM;
    if (!d->is_diffusion || d->unet.num_classes <= 0 || !key_ok || d->cond.kind != LD_COND_NONE) return 0;
    return d->unet.num_classes;
}

/* UNetModel.forward(x, t, y=labels) of a label_emb model: y must be I64 [B]. */
static ldm_status apply_labels(ldm_model *m, struct ldm_unet *unet, const ldm_tensor *x, const ldm_tensor *ts,
                               const ldm_tensor *y, const float *gs, ldm_tensor **out)
{
    if (!y || y->dtype != LDM_I64 || y->ndim != 1 || y->shape[0] != x->shape[0])
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "apply_model: this model's UNet is class-conditional (num_classes %d, "
                        "label_emb): cond must be the class labels y, I64 [%lld]",
                        lm_label_emb_classes(m), (long long)x->shape[0]);
    return lunet_forward_guided(unet->net, &m->ctx, x, ts, NULL, y, gs, out);
}

ldm_status lm_apply(ldm_model *m, const ldm_tensor *x, const ldm_tensor *t, const ldm_tensor *cond, ldm_tensor **out)
{
    return lm_apply_w(m, x, t, cond, NULL, out);
}

static ldm_status apply_by_key(ldm_model *m, struct ldm_unet *unet, const ldm_tensor *x, const ldm_tensor *ts,
                               const ldm_tensor *cond, const float *gs, ldm_tensor **out)
{
    ldm_tensor *xin = NULL;
    ldm_status st;
    if (lm_label_emb_classes(m)) return apply_labels(m, unet, x, ts, cond, gs, out);
    switch (m->desc.conditioning_key) {
    case LD_CONDKEY_NONE: st = lunet_forward_guided(unet->net, &m->ctx, x, ts, NULL, NULL, gs, out); break;
    case LD_CONDKEY_CROSSATTN:
        if (!cond) st = ldm_fail(LDM_ERR_INVALID_ARGUMENT, "apply_model: this model needs a conditioning tensor (cross-attention context)");
        else st = lunet_forward_guided(unet->net, &m->ctx, x, ts, cond, NULL, gs, out);
        break;
    case LD_CONDKEY_CONCAT:
        if (!cond) st = ldm_fail(LDM_ERR_INVALID_ARGUMENT, "apply_model: this model needs a conditioning tensor (concatenated channels)");
        else if ((st = cat2(x, cond, 1, &xin)) == LDM_OK) st = lunet_forward_guided(unet->net, &m->ctx, xin, ts, NULL, NULL, gs, out);
        break;
    default: st = ldm_fail(LDM_ERR_UNSUPPORTED, "apply_model: conditioning key %d is not supported", (int)m->desc.conditioning_key);
    }
    ldm_tensor_free(xin);
    return st;
}

ldm_status lm_apply_w(ldm_model *m, const ldm_tensor *x, const ldm_tensor *t, const ldm_tensor *cond,
                      const float *guidance_scale, ldm_tensor **out)
{
    struct ldm_unet *unet;
    ldm_tensor *ts = NULL;
    float *gs = NULL;
    LDM_TRY(lt_check(x, "apply_model: x", LDM_F32, 4));
    LDM_TRY(lm_unet(m, &unet));
    if (guidance_scale) { /* one scale for the whole batch */
        if (!(gs = ldm_malloc(sizeof *gs * (size_t)x->shape[0]))) return ldm_alloc_failure_status();
        for (int64_t i = 0; i < x->shape[0]; i++) gs[i] = *guidance_scale;
    }
    ldm_status st = timesteps_for(t, x->shape[0], &ts);
    if (st == LDM_OK) st = apply_by_key(m, unet, x, ts, cond, gs, out);
    ldm_free(gs);
    ldm_tensor_free(ts);
    return st;
}

int ldm_model_guidance_embedding_dim(const ldm_model *model)
{
    return model && model->desc.is_diffusion ? model->desc.unet.time_cond_proj_dim : 0;
}

ldm_status ldm_model_apply_embedded_guidance(ldm_model *model, const ldm_tensor *x, const ldm_tensor *timesteps,
                                             const ldm_tensor *cond, float guidance_scale, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_apply_embedded_guidance: out is NULL");
    *out = NULL;
    LM_BEGIN(model, "ldm_model_apply_embedded_guidance");
    if (ldm_model_guidance_embedding_dim(model) <= 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "%s: the UNet has no guidance embedding (model.diffusion_model.time_embed.cond_proj.weight)",
                        model->path);
    if (!isfinite(guidance_scale))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_apply_embedded_guidance: guidance_scale is not finite");
    LDM_TRY(lt_check_finite(x, "ldm_model_apply_embedded_guidance: x"));
    LDM_TRY(lt_check_finite(cond, "ldm_model_apply_embedded_guidance: cond"));
    LDM_TRY(lt_check_finite(timesteps, "ldm_model_apply_embedded_guidance: timesteps"));
    ldm_status st = lm_apply_w(model, x, timesteps, cond, &guidance_scale, out);
    if (st == LDM_OK) st = lt_check_finite(*out, "ldm_model_apply_embedded_guidance: the UNet output");
    if (st != LDM_OK) {
        ldm_tensor_free(*out);
        *out = NULL;
    }
    return st;
}

ldm_status ldm_model_apply(ldm_model *model, const ldm_tensor *x, const ldm_tensor *timesteps, const ldm_tensor *cond,
                           ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_apply: out is NULL");
    *out = NULL;
    LM_BEGIN(model, "ldm_model_apply");
    LDM_TRY(lt_check_finite(x, "ldm_model_apply: x"));
    LDM_TRY(lt_check_finite(cond, "ldm_model_apply: cond"));
    LDM_TRY(lt_check_finite(timesteps, "ldm_model_apply: timesteps"));
    ldm_status st = lm_apply(model, x, timesteps, cond, out);
    if (st == LDM_OK) st = lt_check_finite(*out, "ldm_model_apply: the UNet output");
    if (st != LDM_OK) {
        ldm_tensor_free(*out);
        *out = NULL;
    }
    return st;
}

/* e = e_u + scale (e_c - e_u) with one batched UNet call on cat[x,x], cat[t,t], cat[uc,c]
 * (uncond first, as the reference samplers do). */
ldm_status ldm_model_apply_guided(ldm_model *model, const ldm_tensor *x, const ldm_tensor *timesteps,
                                  const ldm_tensor *cond, const ldm_tensor *uncond, float scale, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_apply_guided: out is NULL");
    *out = NULL;
    LM_BEGIN(model, "ldm_model_apply_guided");
    LDM_TRY(lt_check_finite(x, "ldm_model_apply_guided: x"));
    LDM_TRY(lt_check_finite(cond, "ldm_model_apply_guided: cond"));
    LDM_TRY(lt_check_finite(uncond, "ldm_model_apply_guided: uncond"));
    LDM_TRY(lt_check_finite(timesteps, "ldm_model_apply_guided: timesteps"));
    if (!isfinite(scale)) return ldm_fail(LDM_ERR_NUMERIC, "ldm_model_apply_guided: scale is %g", (double)scale);
    ldm_status st = LDM_OK;
    if (!uncond || scale == 1.0f) {
        st = lm_apply(model, x, timesteps, cond, out);
        if (st == LDM_OK) st = lt_check_finite(*out, "ldm_model_apply_guided: the UNet output");
        if (st != LDM_OK) {
            ldm_tensor_free(*out);
            *out = NULL;
        }
        return st;
    }
    LDM_TRY(lt_check(x, "apply_guided: x", LDM_F32, 4));
    ldm_tensor *xx = NULL, *tt = NULL, *ts = NULL, *cc = NULL, *both = NULL;
    st = timesteps_for(timesteps, x->shape[0], &ts);
    if (st == LDM_OK) st = cat2(x, x, 0, &xx);
    if (st == LDM_OK) st = cat2(ts, ts, 0, &tt);
    if (st == LDM_OK) st = cat2(uncond, cond, 0, &cc);
    if (st == LDM_OK) st = lm_apply(model, xx, tt, cc, &both);
    if (st == LDM_OK) st = (*out = lt_new_f32(x->ndim, x->shape)) ? LDM_OK : ldm_alloc_failure_status();
    if (st == LDM_OK) {
        int64_t n = lt_numel(x);
        const float *eu = lt_f32(both), *ec = eu + n;
        float *e = lt_f32(*out);
        for (int64_t i = 0; i < n; i++) e[i] = eu[i] + scale * (ec[i] - eu[i]);
        st = lt_check_finite(*out, "ldm_model_apply_guided: the guided UNet output");
        if (st != LDM_OK) {
            ldm_tensor_free(*out);
            *out = NULL;
        }
    }
    ldm_tensor_free(xx);
    ldm_tensor_free(tt);
    ldm_tensor_free(ts);
    ldm_tensor_free(cc);
    ldm_tensor_free(both);
    return st;
}

/* ---------------------------------------------------------------- first stage with scale_factor */

ldm_status ldm_model_decode_latent(ldm_model *model, const ldm_tensor *z, ldm_tensor **image)
{
    if (!image) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_decode_latent: image is NULL");
    *image = NULL;
    LM_BEGIN(model, "ldm_model_decode_latent");
    LDM_TRY(lt_check_finite(z, "ldm_model_decode_latent: z"));
    ldm_status st = lp_decode(model, z, -1, image); /* tile < 0: always whole, as the reference decodes */
    if (st == LDM_OK) st = lt_check_finite(*image, "ldm_model_decode_latent: the decoded image");
    if (st != LDM_OK) {
        ldm_tensor_free(*image);
        *image = NULL;
    }
    return st;
}

/* ---------------------------------------------------------------- inpainting conditioning */

ldm_status lp_inpaint_cond(ldm_model *model, const ldm_tensor *masked_image, const ldm_tensor *mask, ldm_tensor **out)
{
    ldm_conditioner *cond;
    ldm_tensor *c = NULL, *m_small = NULL;
    LDM_TRY(lt_check(mask, "inpainting mask", LDM_F32, 4));
    if (mask->shape[1] != 1) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "inpainting mask must have 1 channel");
    LDM_TRY(lm_conditioner(model, &cond));
    LDM_TRY(lm_cond_encode_image(cond, masked_image, &c));
    if (c->shape[0] != mask->shape[0]) {
        ldm_tensor_free(c);
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "inpainting mask batch differs from the image batch");
    }
    /* F.interpolate(mask, size=c.shape[-2:]) (nearest) */
    m_small = lt_new_f32_4d(mask->shape[0], 1, c->shape[2], c->shape[3]);
    ldm_status st = m_small ? LDM_OK : ldm_alloc_failure_status();
    if (st == LDM_OK) {
        lk_resize_nearest(lt_f32(mask), (int)mask->shape[0], (int)mask->shape[2], (int)mask->shape[3], (int)c->shape[2],
                          (int)c->shape[3], lt_f32(m_small));
        st = cat2(c, m_small, 1, out);
    }
    ldm_tensor_free(c);
    ldm_tensor_free(m_small);
    return st;
}

ldm_status ldm_model_inpaint_cond(ldm_model *model, const ldm_tensor *masked_image, const ldm_tensor *mask,
                                  ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_inpaint_cond: out is NULL");
    *out = NULL;
    LM_BEGIN(model, "ldm_model_inpaint_cond");
    return lp_inpaint_cond(model, masked_image, mask, out);
}

/* ---------------------------------------------------------------- DDPM ancestral step */

static ldm_status check_timesteps(const ldm_model *m, const ldm_tensor *ts)
{
    if (ts->dtype != LDM_I64) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_p_sample: timesteps must be I64");
    for (int64_t b = 0; b < ts->shape[0]; b++)
        if (lt_i64(ts)[b] < 0 || lt_i64(ts)[b] >= m->desc.timesteps)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "timestep %lld outside [0,%d)", (long long)lt_i64(ts)[b],
                            m->desc.timesteps);
    return LDM_OK;
}

ldm_status ldm_model_p_sample(ldm_model *model, const ldm_tensor *x, const ldm_tensor *timesteps,
                              const ldm_tensor *cond, const ldm_tensor *noise, ldm_tensor **x_prev)
{
    ldm_tensor *out = NULL, *ts = NULL;
    if (!x_prev) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_p_sample: x_prev is NULL");
    *x_prev = NULL;
    LM_BEGIN(model, "ldm_model_p_sample");
    if (!model->schedule) return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: not a diffusion model", model->path);
    if (model->desc.parameterization == LD_PARAM_X0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_model_p_sample: x0-parameterised models are not supported");
    LDM_TRY(lt_check(x, "ldm_model_p_sample: x", LDM_F32, 4));
    if (noise && (noise->dtype != LDM_F32 || lt_numel(noise) != lt_numel(x)))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_p_sample: noise must be F32 with the shape of x");
    LDM_TRY(timesteps_for(timesteps, x->shape[0], &ts));
    ldm_status st = check_timesteps(model, ts);
    if (st == LDM_OK) st = lm_apply(model, x, ts, cond, &out);
    if (st == LDM_OK && !(*x_prev = lt_new_f32(x->ndim, x->shape))) st = LDM_ERR_OUT_OF_MEMORY;
    if (st == LDM_OK)
        st = ls_ddpm_p_sample(model->schedule, (int)x->shape[0], (size_t)(lt_numel(x) / x->shape[0]), lt_i64(ts),
                              lt_f32(x), lt_f32(out), model->desc.parameterization == LD_PARAM_V,
                              noise ? lt_f32(noise) : NULL, lt_f32(*x_prev), NULL);
    if (st != LDM_OK) {
        ldm_tensor_free(*x_prev);
        *x_prev = NULL;
    }
    ldm_tensor_free(out);
    ldm_tensor_free(ts);
    return st;
}

/* ---------------------------------------------------------------- samplers */

ldm_status ldm_model_sampler(ldm_model *model, const ldm_sampler_params *params, ldm_sampler **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_sampler: out is NULL");
    *out = NULL;
    LM_BEGIN(model, "ldm_model_sampler");
    if (!model->schedule)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: not a diffusion model (no noise schedule)", model->path);
    ldm_parameterization param;
    switch (model->desc.parameterization) {
    case LD_PARAM_EPS: param = LDM_PARAM_EPS; break;
    case LD_PARAM_V: param = LDM_PARAM_V; break;
    default: param = LDM_PARAM_X0; break; /* ls_sampler_create: the LCM sampler only */
    }
    return ls_sampler_create(model->schedule, param, params, out);
}
