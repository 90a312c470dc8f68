/* components.c - the networks of a model, created on first use from its weight store, and the
 * public calls that run them. */
#include "model_internal.h"

#include "../models/autoencoder.h"
#include "../models/bert.h"
#include "../models/class_embed.h"
#include "../models/clip_text.h"
#include "../models/spatial_rescaler.h"
#include "../models/unet.h"

#include <string.h>

/* ---------------------------------------------------------------- creation */

ldm_status lm_autoencoder(ldm_model *m, struct ldm_autoencoder **out)
{
    if (!m->ae) {
        if (!m->desc.first_stage.present)
            return ldm_fail(LDM_ERR_NOT_FOUND, "%s: the model has no first stage (autoencoder)", m->path);
        struct ldm_autoencoder *h = ldm_calloc(1, sizeof *h);
        if (!h) return ldm_alloc_failure_status();
        ldm_status st = lae_create(&m->desc.first_stage, m->store, m->first_stage_prefix, &h->net);
        if (st != LDM_OK) {
            ldm_free(h);
            return ldm_fail_context(st, "%s: first stage: ", m->path);
        }
        h->model = m;
        m->ae = h;
    }
    *out = m->ae;
    return LDM_OK;
}

ldm_status lm_unet(ldm_model *m, struct ldm_unet **out)
{
    if (!m->unet) {
        if (!m->desc.unet.present) return ldm_fail(LDM_ERR_NOT_FOUND, "%s: the model has no UNet", m->path);
        struct ldm_unet *h = ldm_calloc(1, sizeof *h);
        if (!h) return ldm_alloc_failure_status();
        ldm_status st = lunet_create(&m->desc.unet, m->store, "model.diffusion_model.", m->use_ema, &h->net);
        if (st != LDM_OK) {
            ldm_free(h);
            return ldm_fail_context(st, "%s: UNet: ", m->path);
        }
        h->model = m;
        m->unet = h;
    }
    *out = m->unet;
    return LDM_OK;
}

static ldm_status create_cond_net(ldm_model *m, struct ldm_conditioner *h)
{
    const ld_cond *d = &m->desc.cond;
    const char *prefix = "cond_stage_model.";
    if (m->desc.sgm.present) return lm_sdxl_cond_create(m, h);
    switch (d->kind) {
    case LD_COND_CLASS: return lclass_create(d, m->store, prefix, &h->cls);
    case LD_COND_CLIP:
    case LD_COND_OPENCLIP: return lclip_create(d, m->store, prefix, &h->clip);
    case LD_COND_BERT: return lbert_create(d, m->store, prefix, &h->bert);
    case LD_COND_SPATIAL_RESCALER: return lrescaler_create(d, m->store, prefix, &h->rescaler);
    case LD_COND_FIRST_STAGE:
    case LD_COND_IDENTITY:
    case LD_COND_NONE: return LDM_OK;
    }
    return ldm_fail(LDM_ERR_INTERNAL, "unknown conditioner kind %d", (int)d->kind);
}

ldm_status lm_conditioner(ldm_model *m, struct ldm_conditioner **out)
{
    if (!m->cond) {
        if (!m->desc.is_diffusion) return ldm_fail(LDM_ERR_NOT_FOUND, "%s: a standalone autoencoder has no conditioner", m->path);
        struct ldm_conditioner *h = ldm_calloc(1, sizeof *h);
        if (!h) return ldm_alloc_failure_status();
        h->model = m;
        h->kind = m->desc.cond.kind;
        ldm_status st = create_cond_net(m, h);
        if (st != LDM_OK) {
            ldm_free(h);
            return ldm_fail_context(st, "%s: conditioner: ", m->path);
        }
        m->cond = h;
    }
    *out = m->cond;
    return LDM_OK;
}

void lm_free_components(ldm_model *m)
{
    if (m->ae) lae_free(m->ae->net);
    if (m->unet) lunet_free(m->unet->net);
    if (m->cond) {
        lclass_free(m->cond->cls);
        lclip_free(m->cond->clip);
        lbert_free(m->cond->bert);
        lrescaler_free(m->cond->rescaler);
        ldm_tokenizer_free(m->cond->tokenizer);
        lm_sdxl_cond_free(m->cond);
    }
    ldm_free(m->ae);
    ldm_free(m->unet);
    ldm_free(m->cond);
    m->ae = NULL;
    m->unet = NULL;
    m->cond = NULL;
}

ldm_status ldm_model_autoencoder(ldm_model *model, ldm_autoencoder **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_autoencoder: out is NULL");
    LM_BEGIN(model, "ldm_model_autoencoder");
    return lm_autoencoder(model, out);
}

ldm_status ldm_model_unet(ldm_model *model, ldm_unet **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_unet: out is NULL");
    LM_BEGIN(model, "ldm_model_unet");
    return lm_unet(model, out);
}

ldm_status ldm_model_conditioner(ldm_model *model, ldm_conditioner **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_conditioner: out is NULL");
    LM_BEGIN(model, "ldm_model_conditioner");
    return lm_conditioner(model, out);
}

/* ---------------------------------------------------------------- numeric faults */

/* A network call's result, refused (and released) when it holds NaN or Inf: faults are reported
 * by the call that produced them, not by whatever later consumes the values. */
static ldm_status finite_result(ldm_status st, ldm_tensor **out, const char *what)
{
    if (st == LDM_OK) st = lt_check_finite(*out, what);
    if (st != LDM_OK) {
        ldm_tensor_free(*out);
        *out = NULL;
    }
    return st;
}

/* ---------------------------------------------------------------- autoencoder */

/* Not wrapped in do/while: LM_BEGIN's cap scope must live until the calling function returns. */
#define AE_BEGIN(ae, fn, out)                                                                      \
    if (!(ae) || !(out)) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, fn ": NULL argument");          \
    *(out) = NULL;                                                                                 \
    LM_BEGIN((ae)->model, fn)

ldm_autoencoder_kind ldm_autoencoder_get_kind(const ldm_autoencoder *ae)
{
    return (ae && lae_is_vq(ae->net)) ? LDM_AUTOENCODER_VQ : LDM_AUTOENCODER_KL;
}

int ldm_autoencoder_factor(const ldm_autoencoder *ae) { return ae ? lae_factor(ae->net) : 0; }

int ldm_autoencoder_latent_channels(const ldm_autoencoder *ae) { return ae ? lae_latent_channels(ae->net) : 0; }

ldm_status ldm_autoencoder_encode(ldm_autoencoder *ae, const ldm_tensor *x, ldm_tensor **out)
{
    AE_BEGIN(ae, "ldm_autoencoder_encode", out);
    LDM_TRY(lt_check_finite(x, "ldm_autoencoder_encode: x"));
    return finite_result(lae_encode(ae->net, &ae->model->ctx, x, out), out, "ldm_autoencoder_encode: the moments");
}

ldm_status ldm_autoencoder_quantize(ldm_autoencoder *ae, const ldm_tensor *h, ldm_tensor **quant, ldm_tensor **indices)
{
    if (!ae || (!quant && !indices)) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_autoencoder_quantize: NULL argument");
    LM_BEGIN(ae->model, "ldm_autoencoder_quantize");
    if (!lae_is_vq(ae->net)) return ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_autoencoder_quantize: not a VQ autoencoder");
    return lae_quantize(ae->net, &ae->model->ctx, h, quant, indices);
}

ldm_status ldm_autoencoder_decode(ldm_autoencoder *ae, const ldm_tensor *z, ldm_tensor **image)
{
    AE_BEGIN(ae, "ldm_autoencoder_decode", image);
    LDM_TRY(lt_check_finite(z, "ldm_autoencoder_decode: z"));
    return finite_result(lae_decode(ae->net, &ae->model->ctx, z, image), image, "ldm_autoencoder_decode: the image");
}

ldm_status ldm_autoencoder_decode_unquantized(ldm_autoencoder *ae, const ldm_tensor *z, ldm_tensor **image)
{
    AE_BEGIN(ae, "ldm_autoencoder_decode_unquantized", image);
    if (!lae_is_vq(ae->net))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_autoencoder_decode_unquantized: not a VQ autoencoder");
    LDM_TRY(lt_check_finite(z, "ldm_autoencoder_decode_unquantized: z"));
    return finite_result(lae_decode_unquantized(ae->net, &ae->model->ctx, z, image), image,
                         "ldm_autoencoder_decode_unquantized: the image");
}

ldm_status ldm_posterior_split(const ldm_tensor *moments, ldm_tensor **mean, ldm_tensor **logvar, ldm_tensor **std)
{
    return lae_posterior_split(moments, mean, logvar, std);
}

/* ---------------------------------------------------------------- UNet */

ldm_status ldm_unet_forward(ldm_unet *unet, const ldm_tensor *x, const ldm_tensor *timesteps,
                            const ldm_tensor *context, const ldm_tensor *y, ldm_tensor **out)
{
    if (!unet || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_unet_forward: NULL argument");
    *out = NULL;
    LM_BEGIN(unet->model, "ldm_unet_forward");
    LDM_TRY(lt_check_finite(x, "ldm_unet_forward: x"));
    LDM_TRY(lt_check_finite(timesteps, "ldm_unet_forward: timesteps"));
    LDM_TRY(lt_check_finite(context, "ldm_unet_forward: context"));
    if (y && y->dtype == LDM_F32) LDM_TRY(lt_check_finite(y, "ldm_unet_forward: y"));
    return finite_result(lunet_forward(unet->net, &unet->model->ctx, x, timesteps, context, y, out), out,
                         "ldm_unet_forward: the output");
}

/* ---------------------------------------------------------------- conditioner */

ldm_conditioner_kind ldm_conditioner_get_kind(const ldm_conditioner *cond)
{
    if (!cond) return LDM_COND_NONE;
    if (cond->sdxl) return LDM_COND_SDXL;
    switch (cond->kind) {
    case LD_COND_CLASS: return LDM_COND_CLASS;
    case LD_COND_CLIP: return LDM_COND_CLIP_TEXT;
    case LD_COND_OPENCLIP: return LDM_COND_OPENCLIP_TEXT;
    case LD_COND_BERT: return LDM_COND_BERT;
    case LD_COND_SPATIAL_RESCALER: return LDM_COND_SPATIAL_RESCALER;
    case LD_COND_FIRST_STAGE: return LDM_COND_FIRST_STAGE;
    case LD_COND_IDENTITY: return LDM_COND_IDENTITY;
    case LD_COND_NONE: break;
    }
    return LDM_COND_NONE;
}

/* Not wrapped in do/while, as AE_BEGIN. */
#define COND_BEGIN(cond, fn, out)                                                                  \
    if (!(cond) || !(out)) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, fn ": NULL argument");        \
    *(out) = NULL;                                                                                 \
    LM_BEGIN((cond)->model, fn)

/* The internal lm_cond_* run inside a call that already began (LM_BEGIN clears a pending
 * interrupt, so calls made from inside the library must not go through the public entry points);
 * the public ldm_conditioner_* wrappers begin a call and delegate. */
ldm_status lm_cond_encode_tokens(struct ldm_conditioner *cond, const ldm_tensor *tokens, ldm_tensor **out)
{
    const lctx *c = &cond->model->ctx;
    if (cond->clip) return lclip_encode(cond->clip, c, tokens, out);
    if (cond->bert) return lbert_encode(cond->bert, c, tokens, out);
    return ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_conditioner_encode_tokens: this model's conditioner does not take tokens");
}

ldm_status lm_cond_encode_labels(struct ldm_conditioner *cond, const ldm_tensor *labels, ldm_tensor **out)
{
    if (!cond->cls)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_conditioner_encode_labels: the model is not class-conditional");
    return lclass_encode(cond->cls, labels, out);
}

ldm_status lm_cond_encode_image(struct ldm_conditioner *cond, const ldm_tensor *x, ldm_tensor **out)
{
    ldm_model *m = cond->model;
    switch (cond->kind) {
    case LD_COND_SPATIAL_RESCALER: return lrescaler_encode(cond->rescaler, &m->ctx, x, out);
    case LD_COND_IDENTITY:
        LDM_TRY(lt_check(x, "ldm_conditioner_encode_image: x", LDM_F32, 4));
        *out = lt_clone(x);
        return *out ? LDM_OK : ldm_alloc_failure_status();
    case LD_COND_FIRST_STAGE: {
        /* LatentDiffusion.get_learned_conditioning: first_stage.encode(c), and the mode (mean) of a
         * KL posterior; VQ gives the pre-quantisation latent. */
        struct ldm_autoencoder *ae;
        ldm_tensor *moments = NULL;
        LDM_TRY(lm_autoencoder(m, &ae));
        if (lae_is_vq(ae->net)) return lae_encode(ae->net, &m->ctx, x, out);
        LDM_TRY(lae_encode(ae->net, &m->ctx, x, &moments));
        ldm_status st = lae_posterior_split(moments, out, NULL, NULL);
        ldm_tensor_free(moments);
        return st;
    }
    default: break;
    }
    return ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_conditioner_encode_image: this model's conditioner does not take images");
}

ldm_status ldm_conditioner_encode_tokens(ldm_conditioner *cond, const ldm_tensor *tokens, ldm_tensor **out)
{
    COND_BEGIN(cond, "ldm_conditioner_encode_tokens", out);
    return lm_cond_encode_tokens(cond, tokens, out);
}

ldm_status ldm_conditioner_encode_labels(ldm_conditioner *cond, const ldm_tensor *labels, ldm_tensor **out)
{
    COND_BEGIN(cond, "ldm_conditioner_encode_labels", out);
    return lm_cond_encode_labels(cond, labels, out);
}

ldm_status ldm_conditioner_encode_image(ldm_conditioner *cond, const ldm_tensor *x, ldm_tensor **out)
{
    COND_BEGIN(cond, "ldm_conditioner_encode_image", out);
    return lm_cond_encode_image(cond, x, out);
}
