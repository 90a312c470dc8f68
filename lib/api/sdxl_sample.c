/* sdxl_sample.c - the SDXL UNet call with its two conditionings (crossattn context, vector y)
 * under classifier-free guidance, and the base -> refiner step split of sgm's demo. */
#include "model_internal.h"

#include "../models/unet.h"

#include <math.h>
#include <string.h>

int ldm_sdxl_base_steps(int steps, double refiner_start)
{
    if (steps < 1) return 0;
    if (!(refiner_start >= 0.0 && refiner_start <= 1.0)) return steps;
    /* Txt2NoisyDiscretizationWrapper: prune_index = max(min(int(strength * (steps + 1)) - 1, steps), 0) */
    double strength = 1.0 - refiner_start;
    int prune = (int)(strength * (double)(steps + 1)) - 1;
    prune = prune > steps ? steps : prune;
    prune = prune < 0 ? 0 : prune;
    return steps - prune;
}

int ldm_sdxl_img2img_first_step(int steps, float strength)
{
    if (steps < 1 || !(strength >= 0.0f && strength <= 1.0f)) return steps < 1 ? 0 : steps;
    /* Img2ImgDiscretizationWrapper: sigmas[-max(int(strength * len(sigmas)), 1):]; the epsilon keeps
     * decimal strengths whole where the float product falls just short (0.7f * 10 -> 7) */
    int keep = (int)floor((double)strength * (double)(steps + 1) + 1e-4);
    keep = keep < 1 ? 1 : keep > steps + 1 ? steps + 1 : keep;
    return steps + 1 - keep;
}

/* [a; b] along dim 0 (same trailing shape). */
static ldm_status stack2(const ldm_tensor *a, const ldm_tensor *b, const char *what, ldm_tensor **out)
{
    int ok = a->ndim == b->ndim;
    for (int i = 1; ok && i < a->ndim; i++) ok = a->shape[i] == b->shape[i];
    if (!ok || a->dtype != LDM_F32 || b->dtype != LDM_F32)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: the conditional and unconditional tensors differ in shape",
                        what);
    int64_t shape[8];
    memcpy(shape, a->shape, sizeof(int64_t) * (size_t)a->ndim);
    shape[0] = a->shape[0] + b->shape[0];
    ldm_tensor *t = lt_new_f32(a->ndim, shape);
    if (!t) return ldm_alloc_failure_status();
    size_t na = (size_t)lt_numel(a), nb = (size_t)lt_numel(b);
    memcpy(lt_f32(t), lt_f32(a), na * sizeof(float));
    memcpy(lt_f32(t) + na, lt_f32(b), nb * sizeof(float));
    *out = t;
    return LDM_OK;
}

/* timesteps [B] or [1] as F32 [copies * B]. */
static ldm_status timesteps_f32(const ldm_tensor *t, int64_t B, int copies, ldm_tensor **out)
{
    if (!t || t->ndim != 1 || (t->shape[0] != B && t->shape[0] != 1) || (t->dtype != LDM_F32 && t->dtype != LDM_I64))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sdxl apply: timesteps must be I64 or F32 [B] or [1]");
    int64_t n = copies * B;
    LDM_TRY(ldm_tensor_create(LDM_F32, 1, &n, out));
    for (int64_t i = 0; i < n; i++) {
        int64_t j = t->shape[0] == 1 ? 0 : i % B;
        lt_f32(*out)[i] = t->dtype == LDM_I64 ? (float)lt_i64(t)[j] : lt_f32(t)[j];
    }
    return LDM_OK;
}

/* An LCM-distilled UNet (guidance embedding): the scale is the network's input, one branch (the
 * diffusers SDXL pipeline with time_cond_proj_dim runs no classifier-free guidance). */
static ldm_status apply_embedded(ldm_model *m, struct ldm_unet *unet, const ldm_tensor *x, const ldm_tensor *timesteps,
                                 const ldm_tensor *ca, const ldm_tensor *vec, float scale, ldm_tensor **out)
{
    int64_t B = x->shape[0];
    ldm_tensor *tt = NULL;
    float *gs = ldm_malloc(sizeof *gs * (size_t)B);
    if (!gs) return ldm_alloc_failure_status();
    for (int64_t i = 0; i < B; i++) gs[i] = scale;
    ldm_status st = timesteps_f32(timesteps, B, 1, &tt);
    if (st == LDM_OK) st = lunet_forward_guided(unet->net, &m->ctx, x, tt, ca, vec, gs, out);
    ldm_tensor_free(tt);
    ldm_free(gs);
    return st;
}

ldm_status lm_sdxl_apply(ldm_model *m, const ldm_tensor *x, const ldm_tensor *timesteps, const ldm_tensor *ca,
                         const ldm_tensor *vec, const ldm_tensor *uca, const ldm_tensor *uvec, float scale,
                         ldm_tensor **out)
{
    struct ldm_unet *unet;
    if (!m->desc.sgm.present) return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: not an SDXL (sgm) model", m->path);
    LDM_TRY(lt_check(x, "sdxl apply: x", LDM_F32, 4));
    LDM_TRY(lm_unet(m, &unet));
    if (m->desc.unet.time_cond_proj_dim > 0) return apply_embedded(m, unet, x, timesteps, ca, vec, scale, out);
    int guided = uca && uvec && scale != 1.0f;
    int64_t B = x->shape[0];
    ldm_tensor *xx = NULL, *tt = NULL, *cc = NULL, *vv = NULL, *both = NULL;
    ldm_status st = timesteps_f32(timesteps, B, guided ? 2 : 1, &tt);
    if (st == LDM_OK && guided) st = stack2(x, x, "sdxl apply: x", &xx);
    if (st == LDM_OK && guided) st = stack2(uca, ca, "sdxl apply: crossattn", &cc);
    if (st == LDM_OK && guided) st = stack2(uvec, vec, "sdxl apply: vector", &vv);
    if (st == LDM_OK)
        st = lunet_forward(unet->net, &m->ctx, guided ? xx : x, tt, guided ? cc : ca, guided ? vv : vec, &both);
    if (st == LDM_OK && guided) {
        /* the output's channels, not x's: an inpainting UNet takes mask and masked latent too */
        int64_t shape[4] = {B, both->shape[1], both->shape[2], both->shape[3]};
        st = (*out = lt_new_f32(4, shape)) ? LDM_OK : ldm_alloc_failure_status();
        int64_t n = lt_numel(both) / 2;
        const float *eu = lt_f32(both), *ec = eu + n;
        for (int64_t i = 0; st == LDM_OK && i < n; i++) lt_f32(*out)[i] = eu[i] + scale * (ec[i] - eu[i]);
    } else if (st == LDM_OK) {
        *out = both;
        both = NULL;
    }
    ldm_tensor_free(xx);
    ldm_tensor_free(tt);
    ldm_tensor_free(cc);
    ldm_tensor_free(vv);
    ldm_tensor_free(both);
    return st;
}

ldm_status ldm_model_apply_sdxl(ldm_model *model, const ldm_tensor *x, const ldm_tensor *timesteps,
                                const ldm_tensor *crossattn, const ldm_tensor *vector,
                                const ldm_tensor *uncond_crossattn, const ldm_tensor *uncond_vector, float scale,
                                ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_apply_sdxl: out is NULL");
    *out = NULL;
    LM_BEGIN(model, "ldm_model_apply_sdxl");
    if (!isfinite(scale)) return ldm_fail(LDM_ERR_NUMERIC, "ldm_model_apply_sdxl: scale is %g", (double)scale);
    const ldm_tensor *in[] = {x, crossattn, vector, uncond_crossattn, uncond_vector};
    for (size_t i = 0; i < LDM_ARRAY_LEN(in); i++) LDM_TRY(lt_check_finite(in[i], "ldm_model_apply_sdxl: input"));
    ldm_status st = lm_sdxl_apply(model, x, timesteps, crossattn, vector, uncond_crossattn, uncond_vector, scale, out);
    if (st == LDM_OK) st = lt_check_finite(*out, "ldm_model_apply_sdxl: the UNet output");
    if (st != LDM_OK) {
        ldm_tensor_free(*out);
        *out = NULL;
    }
    return st;
}
