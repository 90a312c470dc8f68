/* prompt_emphasis.c - the weights of a prompt's tokens applied to the text tower's output, as
 * webui's "Original" emphasis does (AUTOMATIC1111/stable-diffusion-webui modules/sd_emphasis.py,
 * EmphasisOriginal, commit f8391b8a): multiply each token's vector by its weight, then rescale the
 * chunk so that its mean is the unweighted one. Kept apart from any encoder so that every text
 * tower (and SDXL's two) applies it alike. */
#include "prompt.h"

static float mean_of(const float *z, size_t n)
{
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += z[i];
    return (float)(sum / (double)n);
}

void lpr_emphasis(float *z, const float *weights, int row, int dim, int normalize)
{
    size_t n = (size_t)row * (size_t)dim;
    int all_one = 1;
    for (int t = 0; t < row; t++) all_one &= weights[t] == 1.0f;
    if (all_one || n == 0) return;
    float original_mean = mean_of(z, n);
    for (int t = 0; t < row; t++)
        for (int d = 0; d < dim; d++) z[(size_t)t * (size_t)dim + (size_t)d] *= weights[t];
    if (!normalize) return;
    float ratio = original_mean / mean_of(z, n);
    for (size_t i = 0; i < n; i++) z[i] *= ratio;
}
