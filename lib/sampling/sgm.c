/* sgm.c - the noise levels of Stability-AI generative-models' samplers over
 * LegacyDDPMDiscretization and DiscreteDenoiser (sgm/modules/diffusionmodules/discretizer.py,
 * denoiser.py, denoiser_scaling.py), which SDXL base and refiner sample with. The update rules
 * (EulerEDM without churn, Euler ancestral, Heun, DPM++ 2M) equal k-diffusion's (kdiff.c); what
 * differs is which sigmas are visited, the integer model timestep and the initial scaling. */
#include "sampling.h"

#include <math.h>

void ls_sgm_sigmas(const float *table, int T, int n, double *out)
{
    /* generate_roughly_equally_spaced_steps: numpy linspace (i * step + start in double),
     * truncated to int, reversed to ascending; the sigmas are then flipped to descending. */
    double step = -(double)(T - 1) / n;
    for (int i = 0; i < n; i++) {
        int t = n == T ? T - 1 - i : (int)((double)i * step + (double)(T - 1));
        out[i] = (double)table[t];
    }
    out[n] = 0.0;
}

int ls_sgm_sigma_index(const float *table, int T, double sigma)
{
    /* dists = sigma - sigmas[:, None] in float32, abs, argmin */
    float s = (float)sigma, best = INFINITY;
    int idx = 0;
    for (int i = 0; i < T; i++) {
        float d = fabsf(s - table[i]);
        if (d < best) best = d, idx = i;
    }
    return idx;
}

float ls_sgm_c_in(float sigma)
{
    float a = sigma * sigma + 1.0f;
    return 1.0f / sqrtf(a);
}
