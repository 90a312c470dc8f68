/* pipeline_internal.h - pieces of ldm_generate shared by the lib/api/ files. */
#ifndef LDM_API_PIPELINE_INTERNAL_H
#define LDM_API_PIPELINE_INTERNAL_H

#include "model_internal.h"

/* Learned conditioning for the guided loop (uncond NULL: no guidance). */
typedef struct lp_cond {
    ldm_tensor *cond, *uncond;
} lp_cond;

ldm_status lp_build_cond(ldm_model *m, const ldm_generate_params *p, lp_cond *out);
void lp_cond_release(lp_cond *c);

/* Image-to-image and mask-blended inpainting state: the clean init latent, the noise used to
 * re-noise it, and the latent-resolution mask (1 = generate). */
typedef struct lp_blend {
    int active;            /* mask blending on */
    ldm_tensor *z0;        /* scale_factor * encode(init_image) */
    ldm_tensor *noise;     /* fixed noise for re-noising z0 */
    ldm_tensor *mask;      /* [B,1,h,w] */
    int first_step;        /* first executed step */
} lp_blend;

/* Encodes init_image, noises it to the level where `strength` of the schedule remains and starts
 * the sampler there; with a mask, fills `blend` for lp_blend_apply. */
ldm_status lp_img2img_begin(ldm_model *m, ldm_sampler *s, const ldm_generate_params *p, const ldm_tensor *x_T,
                            lp_blend *blend);
/* After step `done`: known region <- z0 noised to the sampler's current level. */
ldm_status lp_blend_apply(ldm_model *m, ldm_sampler *s, const lp_blend *b, int done);
/* Pixel-space composite (1-m)*init + m*clamp(generated) with the binarised mask. */
ldm_status lp_composite(const ldm_generate_params *p, ldm_tensor *image);
/* The LDM inpainting model's conditioning from init_image [-1,1] and mask [0,1] (fact 16). */
ldm_status lp_ldm_inpaint_cond(ldm_model *m, const ldm_tensor *image, const ldm_tensor *mask, ldm_tensor **out);
void lp_blend_release(lp_blend *b);

ldm_status lp_run_sampler(ldm_model *m, ldm_sampler *s, const lp_cond *c, const ldm_generate_params *p,
                          const lp_blend *blend);

/* decode_first_stage, in overlapping tiles of `tile` latent pixels when tile > 0 or when the latent
 * is large (tile 0 = automatic). */
ldm_status lp_decode(ldm_model *m, const ldm_tensor *z, int tile, ldm_tensor **image);

ldm_status lp_inpaint_cond(ldm_model *m, const ldm_tensor *image, const ldm_tensor *mask, ldm_tensor **out);

#endif
