/* pipeline.c - ldm_generate: inputs checked and broadcast to the batch -> conditioning -> seeded
 * noise -> sampler loop with guidance -> first-stage decode (-> inpainting composite), for every
 * task of the latent-diffusion family. Conditioning is built in pipeline_cond.c.
 *
 * The loop calls the model through the internal lm_apply, not the public ldm_model_apply*: every
 * public call starts by clearing the interrupt flag (LM_BEGIN), so an ldm_model_interrupt()
 * landing between two steps would otherwise be forgotten. The conditioning still goes through the
 * public conditioner calls, so the flag is checked after each of them (lp_check_cancel). */
#include "model_internal.h"

#include "../models/autoencoder.h"
#include "../models/unet.h"
#include "pipeline_internal.h"

#include <math.h>
#include <string.h>

static void generate_params_defaults(ldm_generate_params *p)
{
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->class_label = -1;
    p->batch = 1;
    p->sampler = LDM_SAMPLER_DDIM;
    p->steps = 50;
    p->guidance_scale = 0.0f; /* the model's default (lp_resolve_cond) */
    p->strength = 0.75f;
    p->uncond_class = LDM_UNCOND_CLASS_AUTO;
    p->aesthetic_score = 6.0f;          /* sgm scripts/demo: init_embedder_options */
    p->negative_aesthetic_score = 2.5f;
    p->refiner_start = 0.8;
}

void ldm_generate_params_init_size(ldm_generate_params *params, size_t struct_size)
{
    ldm_generate_params defaults;
    generate_params_defaults(&defaults);
    ldm_params_fill(params, struct_size, &defaults, sizeof defaults);
}

void(ldm_generate_params_init)(ldm_generate_params *params) { ldm_generate_params_init_size(params, sizeof *params); }

static ldm_status read_params(const ldm_generate_params *in, ldm_generate_params *out)
{
    ldm_generate_params_init(out);
    LDM_TRY(ldm_params_read(in, out, sizeof *out, offsetof(ldm_generate_params, width), "ldm_generate_params"));
    if (out->batch < 1 || out->batch > 64)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "batch %d outside 1..64", out->batch);
    if (out->steps < 0 || out->steps > 10000)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "steps %d outside 1..10000 (0: the sampler's default)", out->steps);
    if (out->lcm_original_steps < 0 || out->lcm_original_steps > 10000)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lcm_original_steps %d outside 1..10000 (0: 50)",
                        out->lcm_original_steps);
    if (!(out->strength > 0.0f && out->strength <= 1.0f))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "strength %g outside (0,1]", out->strength);
    if (out->guidance_scale != out->guidance_scale || out->eta != out->eta)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "guidance_scale and eta must be numbers");
    if (out->width < 0 || out->height < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "width %d, height %d: a size cannot be negative (0: the model's default size)", out->width,
                        out->height);
    return LDM_OK;
}

/* ---------------------------------------------------------------- inputs */

/* The caller's tensors with a batch of 1 repeated to the requested batch (owned copies). */
typedef struct lp_inputs {
    ldm_tensor *owned[4];
} lp_inputs;

static ldm_status broadcast(const ldm_tensor **t, int batch, const char *what, ldm_tensor **owned)
{
    const ldm_tensor *in = *t;
    if (!in) return LDM_OK;
    if (in->ndim < 2) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s must have a batch dimension", what);
    if (in->shape[0] == batch) return LDM_OK;
    if (in->shape[0] != 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s has a batch of %lld, the generation a batch of %d (give 1 or %d)",
                        what, (long long)in->shape[0], batch, batch);
    int64_t shape[LDM_MAX_DIMS];
    memcpy(shape, in->shape, sizeof shape);
    shape[0] = batch;
    LDM_TRY(ldm_tensor_create(in->dtype, in->ndim, shape, owned));
    size_t bytes = (size_t)lt_numel(in) * (in->dtype == LDM_I64 ? 8 : 4);
    for (int b = 0; b < batch; b++) memcpy((char *)(*owned)->data + (size_t)b * bytes, in->data, bytes);
    *t = *owned;
    return LDM_OK;
}

/* Pixel inputs must be a whole number of latent pixels that the UNet can halve. */
static ldm_status check_image(ldm_model *m, const ldm_tensor *img, const char *what, int channels)
{
    struct ldm_autoencoder *ae;
    LDM_TRY(lt_check(img, what, LDM_F32, 4));
    LDM_TRY(lm_autoencoder(m, &ae));
    int mult = ldm_autoencoder_factor(ae) << (m->desc.unet.n_levels > 0 ? m->desc.unet.n_levels - 1 : 0);
    if (channels > 0 && img->shape[1] != channels)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s has %lld channels, expected %d", what, (long long)img->shape[1],
                        channels);
    if (img->shape[2] % mult || img->shape[3] % mult || img->shape[2] <= 0 || img->shape[3] <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s is %lldx%lld: width and height must be positive multiples of %d",
                        what, (long long)img->shape[3], (long long)img->shape[2], mult);
    return LDM_OK;
}

static ldm_status prepare_inputs(ldm_model *m, ldm_generate_params *p, lp_inputs *in)
{
    memset(in, 0, sizeof *in);
    LDM_TRY(broadcast(&p->init_image, p->batch, "init_image", &in->owned[0]));
    LDM_TRY(broadcast(&p->mask, p->batch, "mask", &in->owned[1]));
    LDM_TRY(broadcast(&p->cond_image, p->batch, "cond_image", &in->owned[2]));
    LDM_TRY(broadcast(&p->layout_tokens, p->batch, "layout_tokens", &in->owned[3]));
    if (p->init_image) LDM_TRY(check_image(m, p->init_image, "init_image", 3));
    if (p->mask) {
        if (!p->init_image) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "a mask needs an init_image");
        LDM_TRY(lt_check(p->mask, "mask", LDM_F32, 4));
        if (p->mask->shape[1] != 1 || p->mask->shape[2] != p->init_image->shape[2] ||
            p->mask->shape[3] != p->init_image->shape[3])
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "mask must be [B,1,H,W] with the init_image's height and width");
    }
    return LDM_OK;
}

static void release_inputs(lp_inputs *in)
{
    for (int i = 0; i < 4; i++) ldm_tensor_free(in->owned[i]);
}

/* ---------------------------------------------------------------- geometry */

/* The first stage's factor and the UNet's size multiple in latent pixels, from the description
 * (resolution must not create networks; latent_shape checks that they agree). */
static void factors(const ldm_model *m, int *f, int *mult)
{
    const ld_model *d = &m->desc;
    *f = d->first_stage.n_levels > 0 ? 1 << (d->first_stage.n_levels - 1) : 1;
    *mult = 1 << (d->unet.n_levels > 0 ? d->unet.n_levels - 1 : 0);
}

static ldm_status need(const ldm_tensor *t, const char *msg)
{
    return t ? LDM_OK : ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s", msg);
}

/* A conditioning image's latent size: the rescaler's stages shrink a semantic map by
 * floor(size * multiplier) each (as the network does), a super-resolution LR image is used as is. */
static ldm_status concat_latent_size(const ldm_model *m, const ldm_tensor *img, int64_t *h, int64_t *w)
{
    LDM_TRY(lt_check(img, "cond_image", LDM_F32, 4));
    *h = img->shape[2];
    *w = img->shape[3];
    if (m->desc.cond.kind != LD_COND_SPATIAL_RESCALER) return LDM_OK;
    for (int i = 0; i < m->desc.cond.n_stages; i++) {
        *h = (int64_t)floor((double)*h * m->desc.cond.multiplier);
        *w = (int64_t)floor((double)*w * m->desc.cond.multiplier);
    }
    return LDM_OK;
}

/* width/height of the image ldm_generate will return (the order of latent_shape below): the
 * conditioning image's for concat models, init_image's, the caller's x_T's when no size is given,
 * else width/height with 0 meaning the training size. Refuses a missing required input and a
 * size the UNet cannot take with the messages the later steps would give. */
static ldm_status resolve_size(const ldm_model *m, ldm_generate_params *p)
{
    int f, mult;
    factors(m, &f, &mult);
    int64_t h = 0, w = 0;
    if (m->desc.conditioning_key == LD_CONDKEY_CONCAT) {
        if (m->desc.cond.kind == LD_COND_FIRST_STAGE) {
            LDM_TRY(need(p->mask ? p->init_image : NULL, "the inpainting model needs init_image and mask"));
            LDM_TRY(lt_check(p->init_image, "init_image", LDM_F32, 4));
            h = p->init_image->shape[2] / f;
            w = p->init_image->shape[3] / f;
        } else {
            LDM_TRY(need(p->cond_image, m->desc.cond.kind == LD_COND_SPATIAL_RESCALER
                                            ? "semantic synthesis needs a label map (cond_image)"
                                            : "this model is conditioned on an image (cond_image: the low-resolution input)"));
            LDM_TRY(concat_latent_size(m, p->cond_image, &h, &w));
        }
    } else if (m->desc.variant == LD_VARIANT_INPAINT_HYBRID && !(p->init_image && p->mask)) {
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "the inpainting model needs init_image and mask");
    } else if (p->init_image) {
        LDM_TRY(lt_check(p->init_image, "init_image", LDM_F32, 4));
        h = p->init_image->shape[2] / f;
        w = p->init_image->shape[3] / f;
    } else if (p->x_T && p->x_T->ndim == 4 && p->width == 0 && p->height == 0) {
        h = p->x_T->shape[2];
        w = p->x_T->shape[3];
    } else {
        int size = m->desc.image_size > 0 ? m->desc.image_size : 64;
        int W = p->width > 0 ? p->width : size * f, H = p->height > 0 ? p->height : size * f;
        if (W % (f * mult) || H % (f * mult) || W > 16384 || H > 16384)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                            "image size %dx%d: width and height must be positive multiples of %d up to 16384", W, H,
                            f * mult);
        h = H / f;
        w = W / f;
    }
    if (h <= 0 || w <= 0 || h % mult || w % mult || h * f > 16384 || w * f > 16384)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "latent size %lldx%lld: must be a positive multiple of %d for this UNet (images up to 16384)",
                        (long long)w, (long long)h, mult);
    p->width = (int)(w * f);
    p->height = (int)(h * f);
    return LDM_OK;
}

/* Every model-dependent default of a params struct already read (read_params), made explicit; the
 * one path for ldm_generate and ldm_generate_params_resolve, so that they cannot disagree. */
static ldm_status resolve(ldm_model *m, ldm_generate_params *p)
{
    ldm_generate_params in = *p;
    if (!m->desc.is_diffusion)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: a standalone autoencoder cannot generate", m->path);
    LDM_TRY(m->desc.sgm.present ? lp_sdxl_resolve(m, &in, p) : lp_resolve_cond(m, &in, p));
    LDM_TRY(lp_resolve_tiny(m, p));
    return resolve_size(m, p);
}

/* Latent [B,C,h,w] of a resolved p: its width/height over the first stage's factor. For concat
 * models the conditioning that was built must have exactly that size (resolve_size computed it
 * without running the conditioner: a mismatch is a bug, not the caller's error). */
static ldm_status latent_shape(ldm_model *m, const ldm_generate_params *p, const lp_cond *c, int64_t shape[4])
{
    struct ldm_autoencoder *ae;
    LDM_TRY(lm_autoencoder(m, &ae));
    int f = ldm_autoencoder_factor(ae);
    int64_t h = p->height / f, w = p->width / f;
    const ldm_tensor *spatial = c->concat ? c->concat : m->desc.conditioning_key == LD_CONDKEY_CONCAT ? c->cond : NULL;
    if ((spatial && (spatial->shape[2] != h || spatial->shape[3] != w)) || h * f != p->height || w * f != p->width)
        return ldm_fail(LDM_ERR_INTERNAL, "ldm_generate: resolved size %dx%d disagrees with the conditioning (%lldx%lld latent)",
                        p->width, p->height, spatial ? (long long)spatial->shape[3] : -1LL,
                        spatial ? (long long)spatial->shape[2] : -1LL);
    shape[0] = p->batch;
    shape[1] = m->desc.unet.out_channels > 0 ? m->desc.unet.out_channels : ldm_autoencoder_latent_channels(ae);
    shape[2] = h;
    shape[3] = w;
    return LDM_OK;
}

ldm_status lp_initial_noise(const ldm_generate_params *p, const int64_t shape[4], ldm_tensor **out)
{
    if (p->x_T) {
        LDM_TRY(lt_check(p->x_T, "x_T", LDM_F32, 4));
        for (int i = 0; i < 4; i++)
            if (p->x_T->shape[i] != shape[i])
                return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "x_T must be [%lld,%lld,%lld,%lld] for these settings",
                                (long long)shape[0], (long long)shape[1], (long long)shape[2], (long long)shape[3]);
        *out = lt_clone(p->x_T);
        return *out ? LDM_OK : ldm_alloc_failure_status();
    }
    LDM_TRY(ldm_tensor_create(LDM_F32, 4, shape, out));
    return ldm_randn(p->seed, 0, *out);
}

/* ---------------------------------------------------------------- the loop */

/* Concatenation along `dim` of two F32 (or I64: class labels) tensors that agree in every other
 * dimension. */
static ldm_status cat_dim(const ldm_tensor *a, const ldm_tensor *b, int dim, const char *what, ldm_tensor **out)
{
    int ok = a->ndim == b->ndim && dim < a->ndim && a->dtype == b->dtype;
    for (int i = 0; ok && i < a->ndim; i++) ok = i == dim || a->shape[i] == b->shape[i];
    if (!ok) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: the tensors to concatenate differ in shape", what);
    int64_t shape[LDM_MAX_DIMS], outer = 1;
    memcpy(shape, a->shape, sizeof shape);
    shape[dim] += b->shape[dim];
    for (int i = 0; i < dim; i++) outer *= a->shape[i];
    LDM_TRY(ldm_tensor_create(a->dtype, a->ndim, shape, out));
    size_t esz = a->dtype == LDM_I64 ? 8 : 4;
    size_t na = (size_t)(lt_numel(a) / outer) * esz, nb = (size_t)(lt_numel(b) / outer) * esz;
    char *dst = (*out)->data;
    for (int64_t o = 0; o < outer; o++, dst += na + nb) {
        memcpy(dst, (const char *)a->data + (size_t)o * na, na);
        memcpy(dst + na, (const char *)b->data + (size_t)o * nb, nb);
    }
    return LDM_OK;
}

/* The network on a batch: lm_apply, or for hybrid models UNet(cat[x, concat], t, context); with
 * the LCM guidance embedding of *gscale when gscale is not NULL. */
static ldm_status apply(ldm_model *m, const ldm_tensor *x, const ldm_tensor *t, const ldm_tensor *ctx,
                        const ldm_tensor *concat, const float *gscale, ldm_tensor **out)
{
    if (!concat) return lm_apply_w(m, x, t, ctx, gscale, out);
    struct ldm_unet *unet;
    ldm_tensor *xin = NULL;
    float *gs = NULL;
    LDM_TRY(lm_unet(m, &unet));
    if (gscale) {
        if (!(gs = ldm_malloc(sizeof *gs * (size_t)x->shape[0]))) return ldm_alloc_failure_status();
        for (int64_t i = 0; i < x->shape[0]; i++) gs[i] = *gscale;
    }
    ldm_status st = cat_dim(x, concat, 1, "hybrid c_concat", &xin);
    if (st == LDM_OK) st = lunet_forward_guided(unet->net, &m->ctx, xin, t, ctx, NULL, gs, out);
    ldm_free(gs);
    ldm_tensor_free(xin);
    return st;
}

/* out = u + scale (c - u) from one batched call on cat[x,x], cat[uncond,cond] (uncond first, as
 * the reference samplers and ldm_model_apply_guided do). */
static ldm_status apply_guided(ldm_model *m, const lp_cond *c, float scale, const ldm_tensor *x, const ldm_tensor *t1,
                               ldm_tensor **out)
{
    if (m->desc.unet.time_cond_proj_dim > 0) /* LCM-distilled: the scale is an input, one branch */
        return apply(m, x, t1, c->cond, c->concat, &scale, out);
    if (!c->uncond || scale == 1.0f) return apply(m, x, t1, c->cond, c->concat, NULL, out);
    ldm_tensor *xx = NULL, *cc = NULL, *kk = NULL, *both = NULL, *tt = NULL;
    int64_t B2 = 2 * x->shape[0];
    ldm_status st = ldm_tensor_create(LDM_F32, 1, &B2, &tt);
    for (int64_t i = 0; st == LDM_OK && i < B2; i++) lt_f32(tt)[i] = lt_f32(t1)[0];
    if (st == LDM_OK) st = cat_dim(x, x, 0, "guidance", &xx);
    if (st == LDM_OK) st = cat_dim(c->uncond, c->cond, 0, "guidance (uncond, cond)", &cc);
    if (st == LDM_OK && c->concat) st = cat_dim(c->concat, c->concat, 0, "guidance", &kk);
    if (st == LDM_OK) st = apply(m, xx, tt, cc, kk, NULL, &both);
    if (st == LDM_OK) st = (*out = lt_new_f32(x->ndim, x->shape)) ? LDM_OK : ldm_alloc_failure_status();
    if (st == LDM_OK) {
        int64_t n = lt_numel(x);
        const float *eu = lt_f32(both), *ec = eu + n;
        for (int64_t i = 0; i < n; i++) lt_f32(*out)[i] = eu[i] + scale * (ec[i] - eu[i]);
    }
    ldm_tensor_free(xx);
    ldm_tensor_free(cc);
    ldm_tensor_free(kk);
    ldm_tensor_free(both);
    ldm_tensor_free(tt);
    return st;
}

/* One sampler request; the timestep goes as F32 so fractional k-sampler timesteps pass through. */
static ldm_status evaluate(ldm_model *m, const lp_cond *c, float scale, const ldm_tensor *x, double t, ldm_tensor **out)
{
    int64_t B = x->shape[0];
    ldm_tensor *tt = NULL;
    LDM_TRY(ldm_tensor_create(LDM_F32, 1, &B, &tt));
    for (int64_t i = 0; i < B; i++) lt_f32(tt)[i] = (float)t;
    ldm_status st = apply_guided(m, c, scale, x, tt, out);
    ldm_tensor_free(tt);
    return st;
}

static ldm_status cancelled(int done, int total)
{
    return ldm_fail(LDM_CANCELLED, "cancelled by ldm_model_interrupt at step %d of %d", done, total);
}

ldm_status lp_check_cancel(ldm_model *m, const char *where)
{
    return atomic_load(&m->cancel) ? ldm_fail(LDM_CANCELLED, "cancelled by ldm_model_interrupt %s", where) : LDM_OK;
}

ldm_status lp_run_sampler(ldm_model *m, ldm_sampler *s, const lp_cond *c, const ldm_generate_params *p,
                          const lp_blend *blend)
{
    const ldm_tensor *xin;
    double t;
    int r, first = ldm_sampler_steps_done(s), total = ldm_sampler_total_steps(s) - first;
    while ((r = ldm_sampler_next(s, &xin, &t)) == 1) {
        ldm_tensor *out = NULL;
        int before = ldm_sampler_steps_done(s);
        if (atomic_load(&m->cancel)) return cancelled(before - first, total);
        LDM_TRY(evaluate(m, c, p->guidance_scale, xin, t, &out));
        ldm_status st = ldm_sampler_give(s, out);
        ldm_tensor_free(out);
        LDM_TRY(st);
        /* Free heap memory goes back after every evaluation: without this the allocator keeps
         * what one step freed and the next step's peak sits on top of it (docs/performance.md). */
        ldm_heap_trim();
        int done = ldm_sampler_steps_done(s);
        if (done > before) {
            if (blend) LDM_TRY(lp_blend_apply(m, s, blend, done));
            if (p->progress && p->progress(done - first, total, p->progress_user_data))
                return ldm_fail(LDM_CANCELLED, "cancelled by the progress callback at step %d of %d", done - first,
                                total);
            LDM_TRY(lp_preview(m, s, p, done - first, total));
        }
    }
    if (atomic_load(&m->cancel)) return cancelled(total, total);
    return r == 0 ? LDM_OK : LDM_ERR_INVALID_ARGUMENT;
}

void lp_sampler_params(const ldm_generate_params *p, ldm_sampler_params *sp)
{
    ldm_sampler_params_init(sp);
    sp->kind = p->sampler;
    sp->steps = p->steps;
    sp->seed = p->seed;
    sp->spacing = p->timestep_spacing;
}

/* The model's sampler (as ldm_model_sampler, without the public call's interrupt reset). */
static ldm_status sampler_for(ldm_model *m, const ldm_generate_params *p, ldm_sampler **out)
{
    if (m->desc.parameterization == LD_PARAM_X0 && p->sampler != LDM_SAMPLER_LCM)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: x0-parameterised models are sampled by the LCM sampler only", m->path);
    ldm_sampler_params sp;
    lp_sampler_params(p, &sp);
    sp.eta = p->eta;
    if (p->lcm_original_steps > 0) sp.lcm_original_steps = p->lcm_original_steps;
    ldm_parameterization param = m->desc.parameterization == LD_PARAM_V    ? LDM_PARAM_V
                                 : m->desc.parameterization == LD_PARAM_X0 ? LDM_PARAM_X0
                                                                           : LDM_PARAM_EPS;
    return ls_sampler_create(m->schedule, param, &sp, out);
}

/* Image-to-image applies to models whose init_image is not their conditioning (the LDM and SD
 * inpainting models start from pure noise, as their reference scripts do). */
static int is_img2img(const ldm_model *m, const ldm_generate_params *p)
{
    return p->init_image && m->desc.cond.kind != LD_COND_FIRST_STAGE && m->desc.variant != LD_VARIANT_INPAINT_HYBRID;
}

static ldm_status sample(ldm_model *m, const ldm_generate_params *p, const lp_cond *c, ldm_tensor **z)
{
    int64_t shape[4];
    ldm_tensor *x_T = NULL;
    ldm_sampler *s = NULL;
    lp_blend blend = {0};
    LDM_TRY(latent_shape(m, p, c, shape));
    ldm_status st = lp_initial_noise(p, shape, &x_T);
    if (st == LDM_OK) st = sampler_for(m, p, &s);
    if (st == LDM_OK) st = lp_check_cancel(m, "before sampling");
    if (st == LDM_OK) st = is_img2img(m, p) ? lp_img2img_begin(m, s, p, x_T, &blend) : ldm_sampler_begin(s, x_T);
    if (st == LDM_OK) st = lp_run_sampler(m, s, c, p, blend.active ? &blend : NULL);
    if (st == LDM_OK) st = (*z = lt_clone(ldm_sampler_current(s))) ? LDM_OK : ldm_alloc_failure_status();
    lp_blend_release(&blend);
    ldm_tensor_free(x_T);
    ldm_sampler_free(s);
    return st;
}

/* p: already read; its tensors are broadcast here. */
static ldm_status latent_for(ldm_model *m, ldm_generate_params *p, lp_inputs *in, ldm_tensor **z)
{
    lp_cond c;
    LDM_TRY(prepare_inputs(m, p, in));
    LDM_TRY(lp_build_cond(m, p, &c));
    lm_release_memory(m); /* the text encoder's weights */
    ldm_status st = sample(m, p, &c, z);
    lp_cond_release(&c);
    return st;
}

/* After LM_BEGIN (which the public entry points hold themselves: its cap scope ends with them):
 * the caller's params read and resolved. */
static ldm_status begin(ldm_model *m, const ldm_generate_params *params, ldm_generate_params *p)
{
    LDM_TRY(read_params(params, p));
    return resolve(m, p);
}

ldm_status lp_generate_latent(ldm_model *m, const ldm_generate_params *params, ldm_tensor **z)
{
    ldm_generate_params p;
    lp_inputs in = {0};
    if (!z) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lp_generate_latent: z is NULL");
    *z = NULL;
    LM_BEGIN(m, "lp_generate_latent");
    LDM_TRY(begin(m, params, &p));
    m->vae_in_use = p.vae;
    ldm_status st = latent_for(m, &p, &in, z);
    m->vae_in_use = LDM_VAE_FULL;
    release_inputs(&in);
    return st;
}

/* The reference composites the LDM inpainting model's output with the known pixels (fact 16);
 * mask-blended inpainting with an ordinary model does the same. SD's inpainting script does not. */
static int composites(const ldm_model *m, const ldm_generate_params *p)
{
    return p->init_image && p->mask && m->desc.variant != LD_VARIANT_INPAINT_HYBRID;
}

static ldm_status generate(ldm_model *m, ldm_generate_params *p, ldm_tensor **image)
{
    lp_inputs in = {0};
    ldm_tensor *z = NULL;
    /* NaN/Inf in an input image would spread through every step: refuse it up front. The
     * sampler refuses a non-finite model output at the step that produced it (naming the step),
     * and the decoded image is checked last. */
    ldm_status st = lt_check_finite(p->init_image, "ldm_generate: init_image");
    if (st == LDM_OK) st = lt_check_finite(p->mask, "ldm_generate: mask");
    if (st == LDM_OK) st = lt_check_finite(p->cond_image, "ldm_generate: cond_image");
    if (st == LDM_OK) st = latent_for(m, p, &in, &z);
    if (st == LDM_OK) st = lp_check_cancel(m, "before decoding");
    lm_release_memory(m); /* the UNet's weights and scratch */
    if (st == LDM_OK) st = lp_decode(m, z, p->vae_tile, image);
    lm_release_memory(m); /* the decoder's: an idle model keeps little resident */
    if (st == LDM_OK) st = lt_check_finite(*image, "ldm_generate: the decoded image");
    if (st == LDM_OK && composites(m, p)) st = lp_composite(p, *image);
    if (st != LDM_OK) {
        ldm_tensor_free(*image);
        *image = NULL;
    }
    ldm_tensor_free(z);
    release_inputs(&in);
    return st;
}

ldm_status ldm_generate(ldm_model *model, const ldm_generate_params *params, ldm_tensor **image)
{
    ldm_generate_params p;
    if (!image) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_generate: image is NULL");
    *image = NULL;
    LM_BEGIN(model, "ldm_generate");
    ldm_status st = begin(model, params, &p);
    model->vae_in_use = st == LDM_OK ? p.vae : LDM_VAE_FULL; /* lp_encode_latent, lp_decode (tiny.c) */
    if (st == LDM_OK) st = model->desc.sgm.present ? lp_sdxl_generate(model, &p, image) : generate(model, &p, image);
    model->vae_in_use = LDM_VAE_FULL;
    if (st != LDM_OK && st != LDM_CANCELLED) lm_log(model, LDM_LOG_ERROR, "%s", ldm_last_error());
    return st;
}

ldm_status ldm_generate_params_resolve(ldm_model *model, const ldm_generate_params *params,
                                       ldm_generate_params *resolved)
{
    ldm_generate_params p;
    if (!resolved) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_generate_params_resolve: resolved is NULL");
    LM_BEGIN(model, "ldm_generate_params_resolve");
    LDM_TRY(begin(model, params, &p));
    /* *resolved is the caller's struct type, whose size *params carries (a NULL params: this
     * header's); from another header version only the fields both know are copied. */
    size_t size = params ? params->struct_size : sizeof p;
    ldm_generate_params_init_size(resolved, size);
    memcpy(resolved, &p, LDM_MIN(size, sizeof p));
    memcpy(resolved, &size, sizeof size);
    return LDM_OK;
}
