/* pipeline_sdxl.c - ldm_generate for SDXL (sgm DiffusionEngine) models: the reference demo's
 * txt2img (Stability-AI generative-models scripts/demo/sampling.py + sgm/inference/helpers.py):
 *
 *   conditioning  GeneralConditioner on the prompt with original = target size = the output size
 *                 and crop (0, 0) unless the caller overrides them; the unconditional branch of a
 *                 base model (no aesthetic-score embedder) zeroes the text embeddings
 *                 (force_uc_zero_embeddings ["txt"]) when the negative prompt is empty, a
 *                 refiner-style model encodes the negative prompt ("" by default) with the
 *                 negative aesthetic score (the demo's legacy branch);
 *   sampling      sgm's samplers over LegacyDDPMDiscretization (LDM_DISCRETIZATION_SGM), VanillaCFG;
 *                 with trailing spacing (SDXL-Turbo) diffusers' EulerAncestral/Euler "trailing"
 *                 schedule instead (docs/few-step.md), which the model card runs;
 *   refiner       the demo's finish-denoising hand-off: the base runs ldm_sdxl_base_steps of the
 *                 schedule, the refiner the rest from the base's latent (ldm_sampler_begin_at),
 *                 conditioned on the output size, crop (0, 0) and the aesthetic scores, and decodes;
 *   decode        decode_first_stage(z / scale_factor);
 *   img2img       the demo's do_img2img: z0 = the encoded init_image (a posterior sample, seeded), the
 *                 run starts where Img2ImgDiscretizationWrapper(strength) prunes the schedule, from
 *                 z0 + sigma * noise (x_T as the noise); a refiner is run this way as the model
 *                 itself (the refiner demo's img2img on a base picture);
 *   LCM           diffusers' LCMScheduler as StableDiffusionXLPipeline runs it (LCM-LoRA SDXL):
 *                 guidance 1 by default (no unconditional branch), classifier-free guidance above
 *                 1, or the scale fed to a UNet with the LCM guidance embedding (docs/few-step.md);
 *   inpainting    (mask) diffusers' StableDiffusionXLInpaintPipeline with a 4-channel UNet: the
 *                 last int(strength * steps) steps run (get_timesteps), from pure noise at strength
 *                 1 else from the encoded init_image noised with x_T to the first step's level;
 *                 after every step the region to keep is the encoded image noised with x_T to the
 *                 level reached (ldm_sampler_blend_known); no pixel composite (diffusers has none
 *                 without padding_mask_crop). The 9-channel SDXL inpainting UNet instead sees
 *                 [x, mask, encoded masked image] at every step (the same start, no blending).
 * A non-empty negative prompt on a base model is encoded rather than zeroed (the demo has no
 * negative prompt for SDXL base; encoding it is what a negative prompt means everywhere else). */
#include "model_internal.h"

#include "pipeline_internal.h"

#include <math.h>
#include <string.h>

static int has_aesthetic(const ldm_model *m)
{
    for (int i = 0; i < m->desc.sgm.n_embedders; i++)
        if (m->desc.sgm.emb[i].input == LD_EMB_IN_AESTHETIC) return 1;
    return 0;
}

ldm_status lp_sdxl_resolve(const ldm_model *m, const ldm_generate_params *in, ldm_generate_params *p)
{
    (void)in;
    if (p->cond_image || p->layout_tokens)
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "%s: SDXL: image conditioning (cond_image, layout) is not implemented (text-to-image, "
                        "image-to-image and inpainting only)",
                        m->path);
    int n_in = m->desc.unet.in_channels, n_out = m->desc.unet.out_channels;
    if (n_in != n_out && n_in != 2 * n_out + 1)
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "%s: SDXL: a UNet of %d input and %d output channels is neither an "
                        "ordinary nor an inpainting (%d: latent, mask, masked-image latent) one",
                        m->path, n_in, n_out, 2 * n_out + 1);
    if (n_in != n_out && !p->mask)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: the SDXL inpainting UNet needs init_image and mask", m->path);
    if (p->init_image && p->refiner)
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "%s: SDXL: image-to-image or inpainting with a refiner hand-off is not implemented (run "
                        "the refiner as the model, with init_image)",
                        m->path);
    if (p->class_label >= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: SDXL models take a prompt, not a class label", m->path);
    /* sgm has no DDIM/PLMS/DDPM: the library's default (DDIM) becomes the demo's EulerEDMSampler */
    if (p->sampler == LDM_SAMPLER_DDIM) p->sampler = LDM_SAMPLER_EULER;
    int lcm = p->sampler == LDM_SAMPLER_LCM;
    if (p->sampler != LDM_SAMPLER_EULER && p->sampler != LDM_SAMPLER_EULER_ANCESTRAL &&
        p->sampler != LDM_SAMPLER_HEUN && p->sampler != LDM_SAMPLER_DPMPP_2M && !lcm)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "%s: SDXL samples with euler, euler_a, heun or dpmpp_2m (sgm's "
                        "samplers) or lcm (diffusers' LCMScheduler); sampler %d is not one of them",
                        m->path, (int)p->sampler);
    if (p->steps == 0) p->steps = lcm ? 4 : 50; /* steps 0: the sampler's default */
    if (lcm && p->lcm_original_steps == 0) p->lcm_original_steps = 50;
    if (p->timestep_spacing != LDM_SPACING_DEFAULT && p->timestep_spacing != LDM_SPACING_TRAILING)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "timestep_spacing %d is not DEFAULT or TRAILING",
                        (int)p->timestep_spacing);
    if (lcm && p->timestep_spacing == LDM_SPACING_TRAILING)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "SDXL: the LCM sampler has its own timesteps: trailing spacing "
                        "applies to euler, euler_a, heun and dpmpp_2m");
    /* the demo's cfg-scale 5; an LCM-distilled UNet takes 8.5 as the LCM pipelines; LCM otherwise
     * (LCM-LoRA) runs without guidance as its model card */
    if (p->guidance_scale == 0.0f)
        p->guidance_scale = m->desc.unet.time_cond_proj_dim > 0 ? 8.5f : lcm ? 1.0f : 5.0f;
    if (!isfinite(p->guidance_scale) || !isfinite(p->aesthetic_score) || !isfinite(p->negative_aesthetic_score))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "SDXL: guidance and aesthetic scores must be numbers");
    if (p->original_width < 0 || p->original_height < 0 || p->target_width < 0 || p->target_height < 0 ||
        p->crop_left < 0 || p->crop_top < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "SDXL: size and crop conditioning cannot be negative");
    if (p->refiner) {
        if (!p->refiner->desc.sgm.present)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "refiner %s is not an SDXL (sgm) model", p->refiner->path);
        if (!(p->refiner_start >= 0.0 && p->refiner_start <= 1.0))
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "refiner_start %g outside [0,1]", p->refiner_start);
        if (p->refiner->desc.unet.in_channels != m->desc.unet.out_channels)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "refiner %s takes %d latent channels, the base makes %d",
                            p->refiner->path, p->refiner->desc.unet.in_channels, m->desc.unet.out_channels);
    }
    return LDM_OK;
}

/* ---------------------------------------------------------------- conditioning */

typedef struct sdxl_cond {
    ldm_tensor *ca, *vec, *uca, *uvec;
} sdxl_cond;

static void cond_release(sdxl_cond *c)
{
    ldm_tensor_free(c->ca);
    ldm_tensor_free(c->vec);
    ldm_tensor_free(c->uca);
    ldm_tensor_free(c->uvec);
    memset(c, 0, sizeof *c);
}

/* One text for the whole batch; chunks > 0: webui's prompt rules with at least that many chunks
 * (0: plain text). */
static ldm_status encode(ldm_model *m, const char *text, int batch, const ldm_sdxl_cond_params *base, int zero,
                         double aesthetic, int chunks, ldm_tensor **ca, ldm_tensor **vec)
{
    struct ldm_conditioner *cond;
    LDM_TRY(lm_conditioner(m, &cond));
    const char *prompts[64];
    for (int b = 0; b < batch; b++) prompts[b] = text;
    ldm_sdxl_cond_params p = *base;
    p.prompts = prompts;
    p.n_prompts = batch;
    p.zero_text = zero;
    p.aesthetic_score = aesthetic;
    if (chunks > 0) return lm_cond_encode_sdxl_prompts(cond, &p, chunks, ca, vec);
    return lm_cond_encode_sdxl(cond, &p, ca, vec);
}

/* The chunk count both branches get (the shorter text is padded with empty chunks, webui's
 * pad_cond_uncond, as for SD 1.x/2.x), 0 for plain prompts. */
static ldm_status chunk_count(ldm_model *m, const ldm_generate_params *p, const char *neg, int *chunks)
{
    *chunks = 0;
    if (p->plain_prompts) return LDM_OK;
    struct ldm_conditioner *cond;
    int a = 1, b = 1;
    LDM_TRY(lm_conditioner(m, &cond));
    LDM_TRY(lm_sdxl_prompt_chunk_count(cond, p->prompt ? p->prompt : "", 0, &a));
    if (lp_cfg_branch(m, p)) {
        ldm_status st = lm_sdxl_prompt_chunk_count(cond, neg, 0, &b);
        if (st != LDM_OK) return ldm_fail_context(st, "negative ");
    }
    *chunks = LDM_MAX(a, b);
    return LDM_OK;
}

/* refiner: apply_refiner's values (output size, crop 0) instead of the caller's size overrides */
static ldm_status build_cond(ldm_model *m, const ldm_generate_params *p, int refiner, sdxl_cond *c)
{
    ldm_sdxl_cond_params cp;
    ldm_sdxl_cond_params_init(&cp);
    cp.original_height = !refiner && p->original_height ? p->original_height : p->height;
    cp.original_width = !refiner && p->original_width ? p->original_width : p->width;
    cp.crop_top = refiner ? 0 : p->crop_top;
    cp.crop_left = refiner ? 0 : p->crop_left;
    cp.target_height = !refiner && p->target_height ? p->target_height : p->height;
    cp.target_width = !refiner && p->target_width ? p->target_width : p->width;
    const char *neg = p->negative_prompt ? p->negative_prompt : "";
    int zero_uc = !has_aesthetic(m) && neg[0] == '\0', chunks = 0;
    ldm_status st = chunk_count(m, p, neg, &chunks);
    if (st == LDM_OK)
        st = encode(m, p->prompt ? p->prompt : "", p->batch, &cp, 0, p->aesthetic_score, chunks, &c->ca, &c->vec);
    if (st == LDM_OK && lp_cfg_branch(m, p))
        st = encode(m, neg, p->batch, &cp, zero_uc, p->negative_aesthetic_score, chunks, &c->uca, &c->uvec);
    if (st == LDM_OK) st = lp_check_cancel(m, "after text encoding");
    if (st != LDM_OK) cond_release(c);
    return st;
}

/* ---------------------------------------------------------------- sampling */

static ldm_status make_sampler(ldm_model *m, const ldm_generate_params *p, ldm_sampler **out)
{
    ldm_sampler_params sp;
    lp_sampler_params(p, &sp);
    /* trailing spacing: diffusers' scheduler as SDXL-Turbo runs it (EulerAncestralDiscreteScheduler,
     * timestep_spacing "trailing"): k-diffusion's noise levels at the trailing integer timesteps and
     * x_T * sigma_max; sgm has no trailing spacing */
    sp.discretization = p->timestep_spacing == LDM_SPACING_TRAILING || p->sampler == LDM_SAMPLER_LCM
                            ? LDM_DISCRETIZATION_KDIFFUSION
                            : LDM_DISCRETIZATION_SGM;
    if (p->lcm_original_steps > 0) sp.lcm_original_steps = p->lcm_original_steps;
    return ls_sampler_create(m->schedule, m->desc.parameterization == LD_PARAM_V ? LDM_PARAM_V : LDM_PARAM_EPS, &sp,
                             out);
}

/* Inpainting's state: the encoded init image, its noise (x_T) and the latent mask for the
 * blending of an ordinary UNet; [mask, encoded masked image] (concat) for an inpainting UNet. */
typedef struct sdxl_blend {
    ldm_tensor *z0, *mask, *concat;
    const ldm_tensor *noise;
} sdxl_blend;

/* [x, concat] along the channels (the inpainting UNet's input). */
static ldm_status with_concat(const ldm_tensor *x, const ldm_tensor *concat, ldm_tensor **out)
{
    int64_t B = x->shape[0], cx = x->shape[1], cc = concat->shape[1], hw = x->shape[2] * x->shape[3];
    if (concat->shape[0] != B || concat->shape[2] != x->shape[2] || concat->shape[3] != x->shape[3])
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "SDXL inpainting: the mask and masked-image latent do not fit x");
    if (!(*out = lt_new_f32_4d(B, cx + cc, x->shape[2], x->shape[3]))) return ldm_alloc_failure_status();
    for (int64_t b = 0; b < B; b++) {
        memcpy(lt_f32(*out) + b * (cx + cc) * hw, lt_f32(x) + b * cx * hw, (size_t)(cx * hw) * sizeof(float));
        memcpy(lt_f32(*out) + (b * (cx + cc) + cx) * hw, lt_f32(concat) + b * cc * hw,
               (size_t)(cc * hw) * sizeof(float));
    }
    return LDM_OK;
}

/* Runs s until `last` steps are done with model m and conditioning c, blending the known region
 * back after each step when b holds a mask. Previews are drawn with `viewer`, the model p's
 * preview settings were resolved for (the base: base and refiner share one latent space). */
static ldm_status run(ldm_model *m, ldm_model *viewer, ldm_sampler *s, const sdxl_cond *c, const ldm_generate_params *p,
                      int last, const sdxl_blend *b)
{
    const ldm_tensor *xin;
    double t;
    while (ldm_sampler_steps_done(s) < last && ldm_sampler_next(s, &xin, &t) == 1) {
        int64_t B = xin->shape[0];
        ldm_tensor *tt = NULL, *out = NULL, *x9 = NULL;
        if (atomic_load(&m->cancel))
            return ldm_fail(LDM_CANCELLED, "cancelled by ldm_model_interrupt at step %d of %d",
                            ldm_sampler_steps_done(s), p->steps);
        LDM_TRY(ldm_tensor_create(LDM_F32, 1, &B, &tt));
        for (int64_t i = 0; i < B; i++) lt_f32(tt)[i] = (float)t;
        int before = ldm_sampler_steps_done(s);
        ldm_status st = b && b->concat ? with_concat(xin, b->concat, &x9) : LDM_OK;
        if (st == LDM_OK)
            st = lm_sdxl_apply(m, x9 ? x9 : xin, tt, c->ca, c->vec, c->uca, c->uvec, p->guidance_scale, &out);
        ldm_tensor_free(tt);
        ldm_tensor_free(x9);
        if (st == LDM_OK) st = ldm_sampler_give(s, out);
        ldm_tensor_free(out);
        LDM_TRY(st);
        ldm_heap_trim();
        int done = ldm_sampler_steps_done(s);
        if (done > before && b && b->mask) LDM_TRY(ldm_sampler_blend_known(s, b->z0, b->noise, b->mask));
        if (done > before && p->progress && p->progress(done, p->steps, p->progress_user_data))
            return ldm_fail(LDM_CANCELLED, "cancelled by the progress callback at step %d of %d", done, p->steps);
        if (done > before) LDM_TRY(lp_preview(viewer, s, p, done, p->steps));
    }
    return LDM_OK;
}

static ldm_status initial_noise(ldm_model *m, const ldm_generate_params *p, ldm_tensor **out)
{
    struct ldm_autoencoder *ae;
    LDM_TRY(lm_autoencoder(m, &ae));
    int f = ldm_autoencoder_factor(ae);
    int64_t shape[4] = {p->batch, m->desc.unet.out_channels, p->height / f, p->width / f};
    return lp_initial_noise(p, shape, out);
}

/* The refiner's share: its own conditioning and sampler, started where the base stopped. */
static ldm_status refine(ldm_model *r, ldm_model *base, const ldm_generate_params *p, const ldm_tensor *x, int first,
                         ldm_tensor **z)
{
    sdxl_cond c = {0};
    ldm_sampler *s = NULL;
    ldm_status st = build_cond(r, p, 1, &c);
    lm_release_memory(r); /* the refiner's text encoder */
    if (st == LDM_OK) st = make_sampler(r, p, &s);
    if (st == LDM_OK) st = ldm_sampler_begin_at(s, x, first);
    if (st == LDM_OK) st = run(r, base, s, &c, p, p->steps, NULL);
    if (st == LDM_OK) st = (*z = lt_clone(ldm_sampler_current(s))) ? LDM_OK : ldm_alloc_failure_status();
    ldm_sampler_free(s);
    cond_release(&c);
    return st;
}

/* Image-to-image: the run starts at the step strength gives (sgm's rule with sgm's noise levels,
 * the library's img2img rule with diffusers' LCM or trailing schedules) from the encoded
 * init_image noised with x_T. *unchanged: z0 itself when strength keeps no step (sgm's sampler then
 * runs no step and returns its input), else NULL. */
static ldm_status img2img_begin(ldm_model *m, const ldm_generate_params *p, ldm_sampler *s, const ldm_tensor *x_T,
                                ldm_tensor **unchanged)
{
    ldm_tensor *z0 = NULL;
    int total = ldm_sampler_total_steps(s);
    int sgm = p->sampler != LDM_SAMPLER_LCM && p->timestep_spacing != LDM_SPACING_TRAILING;
    int first = sgm ? ldm_sdxl_img2img_first_step(total, p->strength) : lp_img2img_first_step(p->strength, total);
    LDM_TRY(lt_check(p->init_image, "init_image", LDM_F32, 4));
    if (p->init_image->shape[0] != x_T->shape[0])
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "init_image batch %lld differs from batch %lld",
                        (long long)p->init_image->shape[0], (long long)x_T->shape[0]);
    LDM_TRY(lp_encode_latent(m, p->init_image, p->seed, &z0));
    if (first >= total) {
        *unchanged = z0;
        return LDM_OK;
    }
    ldm_status st = ldm_sampler_begin_noised(s, z0, x_T, first);
    ldm_tensor_free(z0);
    return st;
}

/* Inpainting's start (diffusers' get_timesteps and prepare_latents): the last
 * int(strength * steps) steps run; strength 1 starts from pure noise, a lower one from the encoded
 * init_image noised with x_T to the first remaining step's level. Fills b for the blending. */
static ldm_status inpaint_begin(ldm_model *m, const ldm_generate_params *p, ldm_sampler *s, const ldm_tensor *x_T,
                                sdxl_blend *b)
{
    int first = lp_img2img_first_step(p->strength, ldm_sampler_total_steps(s));
    LDM_TRY(lt_check(p->init_image, "init_image", LDM_F32, 4));
    if (p->init_image->shape[0] != x_T->shape[0])
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "init_image batch %lld differs from batch %lld",
                        (long long)p->init_image->shape[0], (long long)x_T->shape[0]);
    LDM_TRY(lp_encode_latent(m, p->init_image, p->seed, &b->z0));
    if (m->desc.unet.in_channels != m->desc.unet.out_channels)
        LDM_TRY(lp_hybrid_inpaint_concat(m, p->init_image, p->mask, p->seed, &b->concat));
    else
        LDM_TRY(lp_latent_mask(p->mask, b->z0, &b->mask));
    b->noise = x_T;
    return first == 0 ? ldm_sampler_begin(s, x_T) : ldm_sampler_begin_noised(s, b->z0, x_T, first);
}

static ldm_status sample(ldm_model *m, const ldm_generate_params *p, ldm_tensor **z, ldm_model **decoder)
{
    sdxl_cond c = {0};
    sdxl_blend blend = {0};
    ldm_sampler *s = NULL;
    ldm_tensor *x_T = NULL, *unchanged = NULL;
    int base_steps = p->refiner ? ldm_sdxl_base_steps(p->steps, p->refiner_start) : p->steps;
    ldm_status st = build_cond(m, p, 0, &c);
    lm_release_memory(m); /* the text encoders' weights */
    if (st == LDM_OK) st = initial_noise(m, p, &x_T);
    if (st == LDM_OK) st = make_sampler(m, p, &s);
    if (st == LDM_OK)
        st = p->mask         ? inpaint_begin(m, p, s, x_T, &blend)
             : p->init_image ? img2img_begin(m, p, s, x_T, &unchanged)
                             : ldm_sampler_begin(s, x_T);
    if (st == LDM_OK && !unchanged) st = run(m, m, s, &c, p, base_steps, &blend);
    cond_release(&c);
    lm_release_memory(m); /* the base UNet */
    *decoder = m;
    if (st == LDM_OK && p->refiner && base_steps < p->steps) {
        st = refine(p->refiner, m, p, ldm_sampler_current(s), base_steps, z);
        /* the demo decodes the refined latent with the refiner's first stage; a tiny decoder is the
         * base model's (ldm_model_set_tiny_autoencoder on the model generating) */
        if (p->vae != LDM_VAE_TINY) *decoder = p->refiner;
    } else if (st == LDM_OK && unchanged) {
        *z = unchanged;
        unchanged = NULL;
    } else if (st == LDM_OK) {
        st = (*z = lt_clone(ldm_sampler_current(s))) ? LDM_OK : ldm_alloc_failure_status();
    }
    ldm_tensor_free(unchanged);
    ldm_tensor_free(blend.z0);
    ldm_tensor_free(blend.mask);
    ldm_tensor_free(blend.concat);
    ldm_sampler_free(s);
    ldm_tensor_free(x_T);
    return st;
}

ldm_status lp_sdxl_generate(ldm_model *m, ldm_generate_params *p, ldm_tensor **image)
{
    ldm_tensor *z = NULL;
    ldm_model *decoder = m;
    if (p->batch > 64) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "batch %d", p->batch);
    ldm_status st = sample(m, p, &z, &decoder);
    if (st == LDM_OK) st = lp_check_cancel(m, "before decoding");
    if (p->refiner) lm_release_memory(p->refiner);
    if (st == LDM_OK) st = lp_decode(decoder, z, p->vae_tile, image);
    lm_release_memory(decoder);
    if (st == LDM_OK) st = lt_check_finite(*image, "ldm_generate: the decoded image");
    if (st != LDM_OK) {
        ldm_tensor_free(*image);
        *image = NULL;
    }
    ldm_tensor_free(z);
    return st;
}
