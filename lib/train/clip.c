/* clip.c - gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_ (the
 * reference trainer's gradient_clip_val goes through it). torch takes the norm of each tensor,
 * then the norm of those norms; the squares are summed here in double, tensor by tensor in list
 * order and element by element, so the result does not depend on threads. */
#include "optim.h"

#include <math.h>

static double sum_squares(const float *g, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return s;
}

ldm_status ltr_clip_grad_norm(const ltr_param *params, size_t n_params, double max_norm, double *total_norm)
{
    double total = 0.0;
    for (size_t i = 0; i < n_params; i++)
        if (params[i].grad) {
            /* norm of the per-tensor norms: sqrt(sum_i (sqrt(s_i))^2) = sqrt(sum_i s_i) */
            total += sum_squares(params[i].grad, params[i].n);
        }
    total = sqrt(total);
    *total_norm = total;
    if (!isfinite(total))
        return ldm_fail(LDM_ERR_NUMERIC, "clip_grad_norm: the total gradient norm is %g; gradients left as they are",
                        total);
    double clip_coef = max_norm / (total + 1e-6);
    if (!(clip_coef < 1.0)) return LDM_OK; /* torch clamps the coefficient to 1: nothing changes */
    float coef = (float)clip_coef;
    for (size_t i = 0; i < n_params; i++)
        if (params[i].grad)
            for (size_t j = 0; j < params[i].n; j++) params[i].grad[j] *= coef;
    return LDM_OK;
}
