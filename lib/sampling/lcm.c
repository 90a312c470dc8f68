/* lcm.c - the Latent Consistency Model scheduler as diffusers ships it (LCMScheduler,
 * src/diffusers/schedulers/scheduling_lcm.py; the scheduler of the LCM pipelines and of LCM-LoRA):
 * the timestep selection from the distillation schedule and the consistency-function step.
 * LCM's own repository (luosiallen/latent-consistency-model) no longer carries a scheduler; its
 * first one (diffusers' examples/community/latent_consistency_txt2img.py) picked the timesteps as
 * origin[::-skipping_step][:steps] instead, which differs from 4 steps on (999, 759, 519, 279
 * against 999, 759, 499, 259). We follow LCMScheduler. */
#include "sampling.h"

#include <math.h>

ldm_status ls_lcm_timesteps(int T, int original_steps, int steps, int64_t *out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "LCM timesteps: NULL output");
    if (original_steps < 1 || original_steps > T)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "LCM: original_inference_steps %d outside 1..%d (training timesteps)",
                        original_steps, T);
    if (steps < 1 || steps > original_steps)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "LCM: %d steps, need 1..%d (a subset of the original_inference_steps schedule)", steps,
                        original_steps);
    /* origin[j] = (j+1)*k - 1, j < original_steps (the distillation's DDIM timesteps); reversed, then
     * the entries at floor(linspace(0, original_steps, steps, endpoint=False)) */
    int k = T / original_steps;
    double stride = (double)original_steps / (double)steps;
    for (int i = 0; i < steps; i++) {
        int idx = (int)floor((double)i * stride);
        out[i] = (int64_t)(original_steps - idx) * k - 1;
    }
    return LDM_OK;
}

void ls_lcm_scalings(int64_t t, double timestep_scaling, float *c_skip, float *c_out)
{
    const double sigma_data = 0.5;
    double s = (double)t * timestep_scaling;
    double d = s * s + sigma_data * sigma_data;
    *c_skip = (float)(sigma_data * sigma_data / d);
    *c_out = (float)(s / sqrt(d));
}

void ls_lcm_step(const float *x, const float *model_out, int param, float a_t, float c_skip, float c_out,
                 const float *noise, float a_prev, size_t n, float *x_next, float *denoised)
{
    float sa = sqrtf(a_t), sb = sqrtf(1.0f - a_t);
    float sa_prev = sqrtf(a_prev), sb_prev = sqrtf(1.0f - a_prev);
    for (size_t i = 0; i < n; i++) {
        float x0;
        if (param == LDM_PARAM_EPS)
            x0 = (x[i] - sb * model_out[i]) / sa;
        else if (param == LDM_PARAM_V)
            x0 = sa * x[i] - sb * model_out[i];
        else
            x0 = model_out[i];
        float d = c_out * x0 + c_skip * x[i];
        denoised[i] = d;
        x_next[i] = noise ? sa_prev * d + sb_prev * noise[i] : d;
    }
}
