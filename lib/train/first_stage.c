/* first_stage.c - the training latents of a frozen KL or VQ first stage (first_stage.h). */
#include "first_stage.h"

#include <math.h>
#include <string.h>

ldm_status ltr_first_stage_latents(lae *fs, const lctx *c, const float *images, int B, int S, const float *noise,
                                   float *z)
{
    ldm_tensor *x = lt_new_f32_4d(B, 3, S, S), *enc = NULL;
    if (!x) return ldm_alloc_failure_status();
    memcpy(x->data, images, sizeof(float) * (size_t)B * 3 * S * S);
    ldm_status st = lae_encode(fs, c, x, &enc);
    ldm_tensor_free(x);
    if (st != LDM_OK) return st;
    int E = lae_latent_channels(fs), h = S / lae_factor(fs);
    size_t per = (size_t)E * h * h;
    if (lt_numel(enc) != (int64_t)((size_t)B * per * (lae_is_vq(fs) ? 1 : 2))) {
        ldm_tensor_free(enc);
        return ldm_fail(LDM_ERR_INTERNAL, "first stage: encoding of %d images of %dx%d has %lld values", B, S, S,
                        (long long)lt_numel(enc));
    }
    const float *M = lt_f32(enc);
    if (lae_is_vq(fs)) {
        memcpy(z, M, sizeof(float) * (size_t)B * per);
    } else {
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < per; i++) {
                float mean = M[(size_t)b * 2 * per + i], lv = M[(size_t)b * 2 * per + per + i];
                lv = lv < -30.0f ? -30.0f : lv > 20.0f ? 20.0f : lv;
                z[(size_t)b * per + i] = mean + expf(0.5f * lv) * noise[(size_t)b * per + i];
            }
    }
    ldm_tensor_free(enc);
    return LDM_OK;
}
