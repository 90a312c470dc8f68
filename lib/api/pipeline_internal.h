/* pipeline_internal.h - pieces of ldm_generate shared by the lib/api/ files (and reachable from
 * the tests, which link the static library). */
#ifndef LDM_API_PIPELINE_INTERNAL_H
#define LDM_API_PIPELINE_INTERNAL_H

#include "model_internal.h"

/* Noise streams of ldm_randn under the generation seed: 0 is x_T, 1+k the sampler's step k; the
 * pipeline's own draws live far above any step count. */
#define LP_STREAM_POSTERIOR 0x100000000ull /* KL posterior sample of an encoded image */
#define LP_STREAM_RENOISE   0x100000001ull /* noise that re-noises the known region (mask blend) */

/* Learned conditioning for the guided loop: cross-attention context or concatenated channels in
 * `cond` (routed by the model's conditioning_key), the unconditional one in `uncond` (NULL: no
 * guidance), and for hybrid models (SD inpainting) the channels `concat` appended to x for both. */
typedef struct lp_cond {
    ldm_tensor *cond, *uncond, *concat;
} lp_cond;

/* Makes the guidance and class defaults of `p` explicit (guidance_scale 0 -> the model's default,
 * uncond_class AUTO -> the model's class or NONE, class_label -1 on a class model -> the
 * unconditional class) and refuses what the model cannot do: a guidance_scale != 1 it cannot
 * apply, a class out of range, a class model without a class label and without an unconditional
 * class. `in` is the caller's struct as read (for messages), `p` the copy being resolved. */
ldm_status lp_resolve_cond(const ldm_model *m, const ldm_generate_params *in, ldm_generate_params *p);
/* Whether a resolved p runs classifier-free guidance's unconditional branch: guidance_scale != 1
 * on a model without the LCM guidance embedding (with it, the scale is a network input). */
int lp_cfg_branch(const ldm_model *m, const ldm_generate_params *p);
/* The conditioning for a RESOLVED p (lp_resolve_cond). */
ldm_status lp_build_cond(ldm_model *m, const ldm_generate_params *p, lp_cond *out);
void lp_cond_release(lp_cond *c);

/* Image-to-image and mask-blended inpainting state: the clean init latent, the noise used to
 * re-noise it, and the latent-resolution mask (1 = generate). */
typedef struct lp_blend {
    int active;        /* mask blending on */
    ldm_tensor *z0;    /* scale_factor * encode(init_image) */
    ldm_tensor *noise; /* fixed noise for re-noising z0 */
    ldm_tensor *mask;  /* [B,1,h,w] */
    int first_step;    /* first executed step */
} lp_blend;

/* The first executed step of an image-to-image run of `total_steps` steps: the last
 * run = max(1, int(strength * total_steps)) steps are run, so the first is total_steps - run. */
int lp_img2img_first_step(float strength, int total_steps);
/* Encodes init_image, noises it with x_T to the level of the first step that remains when
 * `strength` of the schedule is re-run and starts the sampler there; with a mask, fills `blend`
 * for lp_blend_apply. */
ldm_status lp_img2img_begin(ldm_model *m, ldm_sampler *s, const ldm_generate_params *p, const ldm_tensor *x_T,
                            lp_blend *blend);
/* Mask [B,1,H,W] -> z0's latent resolution by nearest resize (torch's rule), binarised at 0.5. */
ldm_status lp_latent_mask(const ldm_tensor *mask, const ldm_tensor *z0, ldm_tensor **out);
/* After step `done`: known region <- z0 noised to the sampler's current level. */
ldm_status lp_blend_apply(ldm_model *m, ldm_sampler *s, const lp_blend *b, int done);
/* Pixel-space composite (1-m)*init + m*clamp(generated) with the mask binarised at 0.5: the known
 * region is the init image bit for bit. */
ldm_status lp_composite(const ldm_generate_params *p, ldm_tensor *image);
/* The LDM inpainting model's conditioning from init_image [-1,1] and mask [0,1] (fact 16). */
ldm_status lp_ldm_inpaint_cond(ldm_model *m, const ldm_tensor *image, const ldm_tensor *mask, ldm_tensor **out);
/* SD inpainting (hybrid) c_concat: cat(nearest-resize(mask), scale_factor * encode(image * (mask < 0.5)))
 * with the mask binarised at 0.5 and the KL posterior sampled from the seed (make_batch_sd). */
ldm_status lp_hybrid_inpaint_concat(ldm_model *m, const ldm_tensor *image, const ldm_tensor *mask, uint64_t seed,
                                    ldm_tensor **out);
/* scale_factor * first_stage(x): KL -> posterior sample mean + std * ldm_randn(seed,
 * LP_STREAM_POSTERIOR), VQ -> the pre-quantisation h (get_first_stage_encoding). */
ldm_status lp_encode_latent(ldm_model *m, const ldm_tensor *x, uint64_t seed, ldm_tensor **out);
void lp_blend_release(lp_blend *b);

/* The sampling loop: evaluates the model with guidance where the sampler asks, blends after each
 * step when `blend` is given, reports progress relative to the first executed step and stops
 * with LDM_CANCELLED on request. */
/* LDM_CANCELLED (message naming `where`) when ldm_model_interrupt() was called. */
ldm_status lp_check_cancel(ldm_model *m, const char *where);

ldm_status lp_run_sampler(ldm_model *m, ldm_sampler *s, const lp_cond *c, const ldm_generate_params *p,
                          const lp_blend *blend);

/* ldm_generate up to the final latent (before decoding), for hosts of the internals and tests:
 * *z receives the sampler's final x [B,C,h,w] (x_T, noise and conditioning as ldm_generate). */
ldm_status lp_generate_latent(ldm_model *m, const ldm_generate_params *p, ldm_tensor **z);

/* x_T of a generation (pipeline.c): the caller's p->x_T (which must be exactly `shape`) or
 * ldm_randn(p->seed, 0) of that shape. */
ldm_status lp_initial_noise(const ldm_generate_params *p, const int64_t shape[4], ldm_tensor **out);

/* A sampler's params from a generation's: kind, steps, seed and timestep spacing (pipeline.c);
 * the callers add what their model family takes beyond that. */
void lp_sampler_params(const ldm_generate_params *p, ldm_sampler_params *sp);

/* SDXL (pipeline_sdxl.c): the defaults and checks of an sgm model's params (guidance 5.0, the
 * Euler sampler for the DDIM default, the refiner), and the whole generation of a resolved p. */
ldm_status lp_sdxl_resolve(const ldm_model *m, const ldm_generate_params *in, ldm_generate_params *p);
ldm_status lp_sdxl_generate(ldm_model *m, ldm_generate_params *p, ldm_tensor **image);

/* decode_first_stage: decoder(z / scale_factor), in overlapping tiles of `tile` latent pixels
 * when tile > 0 and the latent is larger, or when the latent is large and tile == 0 (automatic);
 * tile < 0 always decodes whole. */
ldm_status lp_decode(ldm_model *m, const ldm_tensor *z, int tile, ldm_tensor **image);

/* The tiling of lp_decode on any tile decoder (latent tile [B,C,th,tw] -> pixels
 * [B,C',th*factor,tw*factor]): tiles of `tile` latent pixels overlapping by tile/4, the last one
 * along each axis ending at the border, blended with linear ramps over the overlap. */
typedef ldm_status (*lp_tile_decoder)(void *user, const ldm_tensor *z_tile, ldm_tensor **pixels);
ldm_status lp_decode_tiles(const lctx *c, const ldm_tensor *z, int tile, int factor, lp_tile_decoder decode, void *user,
                           ldm_tensor **image);

ldm_status lp_inpaint_cond(ldm_model *m, const ldm_tensor *image, const ldm_tensor *mask, ldm_tensor **out);

/* preview.c: checks the tiny-autoencoder fields of a params struct being resolved (vae,
 * preview_every 0 -> 1, preview_kind AUTO -> what it stands for on this model), and runs the
 * preview callback after step `step` of `total` when one is due. */
ldm_status lp_resolve_tiny(const ldm_model *m, ldm_generate_params *p);
ldm_status lp_preview(ldm_model *m, const ldm_sampler *s, const ldm_generate_params *p, int step, int total);

#endif
