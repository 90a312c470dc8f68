/* ddpm.c - one ancestral DDPM step, LatentDiffusion.p_sample with clip_denoised False (the LDM
 * default): predict x0, take the posterior mean q(x_{t-1} | x_t, x0) and add the posterior noise,
 * all with the schedule's float32 buffers gathered at t, float32 arithmetic in the reference order. */
#include "sampling.h"

#include <math.h>

ldm_status ls_ddpm_p_sample(const ls_schedule *s, int B, size_t per, const int64_t *t,
                            const float *x, const float *model_out, int v_param, const float *noise,
                            float *x_prev, float *pred_x0)
{
    if (!s || !t || !x || !model_out || !x_prev || B < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "p_sample: NULL argument");
    for (int b = 0; b < B; b++) {
        if (t[b] < 0 || t[b] >= s->n)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "p_sample: timestep %lld of sample %d outside [0,%d)",
                            (long long)t[b], b, s->n);
    }
    for (int b = 0; b < B; b++) {
        int64_t tb = t[b];
        /* x0 coefficients: eps -> predict_start_from_noise, v -> predict_start_from_z_and_v */
        float cx = v_param ? s->buf[LS_SQRT_ALPHAS_CUMPROD][tb] : s->buf[LS_SQRT_RECIP_ALPHAS_CUMPROD][tb];
        float cm = v_param ? s->buf[LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD][tb] : s->buf[LS_SQRT_RECIPM1_ALPHAS_CUMPROD][tb];
        float c1 = s->buf[LS_POSTERIOR_MEAN_COEF1][tb];
        float c2 = s->buf[LS_POSTERIOR_MEAN_COEF2][tb];
        /* nonzero_mask * exp(0.5 * log_variance): no noise on the last step */
        float std = tb == 0 ? 0.0f : expf(0.5f * s->buf[LS_POSTERIOR_LOG_VARIANCE_CLIPPED][tb]);
        size_t off = (size_t)b * per;
        for (size_t i = 0; i < per; i++) {
            float xi = x[off + i];
            float x0 = cx * xi - cm * model_out[off + i];
            float mean = c1 * x0 + c2 * xi;
            if (pred_x0) pred_x0[off + i] = x0;
            x_prev[off + i] = noise ? mean + std * noise[off + i] : mean;
        }
    }
    return LDM_OK;
}
