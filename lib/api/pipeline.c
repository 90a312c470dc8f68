/* pipeline.c - ldm_generate: conditioning -> seeded noise -> sampler loop with guidance ->
 * first-stage decode, for every task of the latent-diffusion family. Built only from the
 * component calls a host could make itself. */
#include "model_internal.h"

#include "../kernels/kernels.h"
#include "../models/spatial_rescaler.h"
#include "pipeline_internal.h"

#include <math.h>
#include <string.h>

void ldm_generate_params_init(ldm_generate_params *p)
{
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->class_label = -1;
    p->batch = 1;
    p->sampler = LDM_SAMPLER_DDIM;
    p->steps = 50;
    p->guidance_scale = 7.5f;
    p->strength = 0.75f;
}

static ldm_status read_params(const ldm_generate_params *in, ldm_generate_params *out)
{
    ldm_generate_params_init(out);
    if (!in) return LDM_OK;
    if (in->struct_size < offsetof(ldm_generate_params, width) || in->struct_size > 4096)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "ldm_generate_params.struct_size is %zu: fill the struct with ldm_generate_params_init()",
                        in->struct_size);
    memcpy(out, in, LDM_MIN(in->struct_size, sizeof *out));
    out->struct_size = sizeof *out;
    if (out->batch < 1 || out->batch > 64) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "batch %d outside 1..64", out->batch);
    if (out->steps < 1 || out->steps > 10000) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "steps %d outside 1..10000", out->steps);
    if (!(out->strength > 0.0f && out->strength <= 1.0f))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "strength %g outside (0,1]", out->strength);
    return LDM_OK;
}

/* ---------------------------------------------------------------- geometry */

/* Latent [B,C,h,w] for the requested pixel size; the UNet needs h,w divisible by 2^(levels-1). */
static ldm_status latent_shape(ldm_model *m, const ldm_generate_params *p, int64_t shape[4])
{
    struct ldm_autoencoder *ae;
    LDM_TRY(lm_autoencoder(m, &ae));
    int f = ldm_autoencoder_factor(ae);
    int unet_mult = 1 << (m->desc.unet.n_levels > 0 ? m->desc.unet.n_levels - 1 : 0);
    int size = m->desc.image_size > 0 ? m->desc.image_size : 64;
    int w = p->width > 0 ? p->width : size * f, h = p->height > 0 ? p->height : size * f;
    if (p->cond_image && m->desc.conditioning_key == LD_CONDKEY_CONCAT && m->desc.cond.kind == LD_COND_IDENTITY) {
        /* super-resolution: the latent has the LR image's size */
        h = (int)p->cond_image->shape[2] * f;
        w = (int)p->cond_image->shape[3] * f;
    }
    if (p->init_image) {
        h = (int)p->init_image->shape[2];
        w = (int)p->init_image->shape[3];
    }
    if (w % (f * unet_mult) || h % (f * unet_mult) || w <= 0 || h <= 0 || w > 16384 || h > 16384)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "image size %dx%d: width and height must be positive multiples of %d",
                        w, h, f * unet_mult);
    shape[0] = p->batch;
    shape[1] = m->desc.unet.out_channels > 0 ? m->desc.unet.out_channels : ldm_autoencoder_latent_channels(ae);
    shape[2] = h / f;
    shape[3] = w / f;
    return LDM_OK;
}

/* ---------------------------------------------------------------- conditioning */

static ldm_status repeat_text(ldm_conditioner *cond, const char *text, int batch, ldm_tensor **out)
{
    const char *prompts[64];
    for (int i = 0; i < batch; i++) prompts[i] = text ? text : "";
    return ldm_conditioner_encode_text(cond, prompts, batch, out);
}

static ldm_status class_labels(int label, int batch, ldm_tensor **out)
{
    int64_t n = batch;
    LDM_TRY(ldm_tensor_create(LDM_I64, 1, &n, out));
    for (int i = 0; i < batch; i++) lt_i64(*out)[i] = label;
    return LDM_OK;
}

static ldm_status class_cond(ldm_model *m, ldm_conditioner *cond, const ldm_generate_params *p, lp_cond *out)
{
    ldm_tensor *labels = NULL;
    int n = m->desc.cond.n_classes;
    if (p->class_label < 0 || p->class_label >= n)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "this class-conditional model needs a class label in [0,%d)", n);
    LDM_TRY(class_labels(p->class_label, p->batch, &labels));
    ldm_status st = ldm_conditioner_encode_labels(cond, labels, &out->cond);
    ldm_tensor_free(labels);
    LDM_TRY(st);
    /* cin256-v2 was trained with label dropout to an extra class n-1 = 1000: the unconditional one. */
    if (n == 1001 && p->guidance_scale != 1.0f) {
        LDM_TRY(class_labels(n - 1, p->batch, &labels));
        st = ldm_conditioner_encode_labels(cond, labels, &out->uncond);
        ldm_tensor_free(labels);
    }
    return st;
}

/* Label map [B,1,H,W] (class ids as floats) or one-hot [B,C,H,W] -> the rescaler's input. */
static ldm_status semantic_cond(ldm_model *m, ldm_conditioner *cond, const ldm_tensor *map, lp_cond *out)
{
    LDM_TRY(lt_check(map, "semantic map", LDM_F32, 4));
    if (map->shape[1] != 1) return ldm_conditioner_encode_image(cond, map, &out->cond);
    int n = m->desc.cond.in_channels;
    int64_t shape[3] = {map->shape[0], map->shape[2], map->shape[3]};
    ldm_tensor *labels = NULL, *onehot = NULL;
    LDM_TRY(ldm_tensor_create(LDM_I64, 3, shape, &labels));
    for (int64_t i = 0, k = lt_numel(labels); i < k; i++) lt_i64(labels)[i] = (int64_t)lrintf(lt_f32(map)[i]);
    ldm_status st = lrescaler_one_hot(labels, n, &onehot);
    if (st == LDM_OK) st = ldm_conditioner_encode_image(cond, onehot, &out->cond);
    ldm_tensor_free(labels);
    ldm_tensor_free(onehot);
    return st;
}

static ldm_status concat_cond(ldm_model *m, ldm_conditioner *cond, const ldm_generate_params *p, lp_cond *out)
{
    switch (m->desc.cond.kind) {
    case LD_COND_FIRST_STAGE:
        if (!p->init_image || !p->mask)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "the inpainting model needs init_image and mask");
        return lp_ldm_inpaint_cond(m, p->init_image, p->mask, &out->cond);
    case LD_COND_SPATIAL_RESCALER:
        if (!p->cond_image) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "semantic synthesis needs a label map (cond_image)");
        return semantic_cond(m, cond, p->cond_image, out);
    default:
        if (!p->cond_image) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "this model is conditioned on an image (cond_image)");
        return ldm_conditioner_encode_image(cond, p->cond_image, &out->cond);
    }
}

ldm_status lp_build_cond(ldm_model *m, const ldm_generate_params *p, lp_cond *out)
{
    ldm_conditioner *cond;
    memset(out, 0, sizeof *out);
    if (m->desc.conditioning_key == LD_CONDKEY_NONE) return LDM_OK;
    LDM_TRY(lm_conditioner(m, &cond));
    if (m->desc.conditioning_key == LD_CONDKEY_CONCAT) return concat_cond(m, cond, p, out);
    switch (m->desc.cond.kind) {
    case LD_COND_CLIP:
    case LD_COND_OPENCLIP:
    case LD_COND_BERT:
        if (m->desc.layout_no_tokens > 0) {
            if (!p->layout_tokens) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "the layout-to-image model needs layout tokens");
            return ldm_conditioner_encode_tokens(cond, p->layout_tokens, &out->cond);
        }
        LDM_TRY(repeat_text(cond, p->prompt, p->batch, &out->cond));
        if (p->guidance_scale != 1.0f) LDM_TRY(repeat_text(cond, p->negative_prompt, p->batch, &out->uncond));
        return LDM_OK;
    case LD_COND_CLASS: return class_cond(m, cond, p, out);
    default: break;
    }
    return ldm_fail(LDM_ERR_UNSUPPORTED, "cross-attention conditioning of kind %d", (int)m->desc.cond.kind);
}

void lp_cond_release(lp_cond *c)
{
    ldm_tensor_free(c->cond);
    ldm_tensor_free(c->uncond);
    memset(c, 0, sizeof *c);
}

/* ---------------------------------------------------------------- the loop */

/* Evaluates the model for one sampler request with guidance; timestep as F32 [1] so fractional
 * k-sampler timesteps pass through. */
static ldm_status evaluate(ldm_model *m, const lp_cond *c, float scale, const ldm_tensor *x, double t, ldm_tensor **out)
{
    int64_t one = 1;
    ldm_tensor *tt = NULL;
    LDM_TRY(ldm_tensor_create(LDM_F32, 1, &one, &tt));
    lt_f32(tt)[0] = (float)t;
    ldm_status st = ldm_model_apply_guided(m, x, tt, c->cond, c->uncond, scale, out);
    ldm_tensor_free(tt);
    return st;
}

ldm_status lp_run_sampler(ldm_model *m, ldm_sampler *s, const lp_cond *c, const ldm_generate_params *p,
                          const lp_blend *blend)
{
    const ldm_tensor *xin;
    double t;
    int r, total = ldm_sampler_total_steps(s);
    while ((r = ldm_sampler_next(s, &xin, &t)) == 1) {
        ldm_tensor *out = NULL;
        int before = ldm_sampler_steps_done(s);
        LDM_TRY(evaluate(m, c, p->guidance_scale, xin, t, &out));
        ldm_status st = ldm_sampler_give(s, out);
        ldm_tensor_free(out);
        LDM_TRY(st);
        int done = ldm_sampler_steps_done(s);
        if (done > before) {
            if (blend) LDM_TRY(lp_blend_apply(m, s, blend, done));
            if (p->progress && p->progress(done, total, p->progress_user_data))
                return ldm_fail(LDM_CANCELLED, "cancelled by the progress callback at step %d of %d", done, total);
        }
        if (atomic_load(&m->cancel)) return ldm_fail(LDM_CANCELLED, "cancelled at step %d of %d", done, total);
    }
    return r == 0 ? LDM_OK : LDM_ERR_INVALID_ARGUMENT;
}

static ldm_status sampler_for(ldm_model *m, const ldm_generate_params *p, ldm_sampler **out)
{
    ldm_sampler_params sp;
    ldm_sampler_params_init(&sp);
    sp.kind = p->sampler;
    sp.steps = p->steps;
    sp.eta = p->eta;
    sp.seed = p->seed;
    return ldm_model_sampler(m, &sp, out);
}

static ldm_status generate(ldm_model *m, const ldm_generate_params *p, ldm_tensor **image)
{
    int64_t shape[4];
    lp_cond c;
    ldm_tensor *x_T = NULL, *z = NULL;
    ldm_sampler *s = NULL;
    lp_blend blend = {0};
    LDM_TRY(latent_shape(m, p, shape));
    LDM_TRY(lp_build_cond(m, p, &c));
    ldm_status st = ldm_tensor_create(LDM_F32, 4, shape, &x_T);
    if (st == LDM_OK) st = ldm_randn(p->seed, 0, x_T);
    if (st == LDM_OK) st = sampler_for(m, p, &s);
    int img2img = p->init_image && m->desc.cond.kind != LD_COND_FIRST_STAGE;
    if (st == LDM_OK && img2img) st = lp_img2img_begin(m, s, p, x_T, &blend);
    else if (st == LDM_OK) st = ldm_sampler_begin(s, x_T);
    if (st == LDM_OK) st = lp_run_sampler(m, s, &c, p, blend.active ? &blend : NULL);
    if (st == LDM_OK) st = (z = lt_clone(ldm_sampler_current(s))) ? LDM_OK : LDM_ERR_OUT_OF_MEMORY;
    if (st == LDM_OK) st = lp_decode(m, z, p->vae_tile, image);
    if (st == LDM_OK && p->init_image && p->mask) st = lp_composite(p, *image);
    lp_blend_release(&blend);
    ldm_tensor_free(z);
    ldm_tensor_free(x_T);
    ldm_sampler_free(s);
    lp_cond_release(&c);
    return st;
}

ldm_status ldm_generate(ldm_model *model, const ldm_generate_params *params, ldm_tensor **image)
{
    ldm_generate_params p;
    if (!image) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_generate: image is NULL");
    *image = NULL;
    LDM_TRY(lm_begin(model, "ldm_generate"));
    LDM_TRY(read_params(params, &p));
    if (!model->desc.is_diffusion)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: a standalone autoencoder cannot generate", model->path);
    ldm_status st = generate(model, &p, image);
    if (st != LDM_OK) lm_log(model, LDM_LOG_ERROR, "%s", ldm_last_error());
    return st;
}
