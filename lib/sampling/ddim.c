/* ddim.c - DDIM timesteps and sampling parameters (ldm/modules/diffusionmodules/util.py) and the
 * DDIM / PLMS update rules (ldm/models/diffusion/ddim.py, plms.py; Stability-AI ddim.py for v).
 * The per-element arithmetic is float32 in the reference's operation order: the reference runs
 * these updates as float32 torch ops, so matching the order keeps us within an ulp per step. */
#include "sampling.h"

#include <math.h>
#include <string.h>

ldm_status ls_ddim_timesteps(int S, int T, int quad, int64_t **out, int *n_out)
{
    if (!out || !n_out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ddim timesteps: NULL argument");
    if (T < 1 || S < 1 || S > T)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ddim timesteps: %d steps for %d training timesteps (need 1..%d)",
                        S, T, T);
    int n;
    if (!quad) {
        int c = T / S;        /* range(0, T, T // S) */
        n = (T + c - 1) / c;  /* len(range(0, T, c)) */
    } else {
        n = S;
    }
    int64_t *ts = ldm_malloc((size_t)n * sizeof *ts);
    if (!ts) return ldm_alloc_failure_status();
    if (!quad) {
        int c = T / S;
        for (int i = 0; i < n; i++) ts[i] = (int64_t)i * c + 1;
    } else {
        /* np.linspace(0, sqrt(0.8 T), S): i*step with the last value set to stop exactly; then
         * squared and truncated by astype(int) */
        double stop = sqrt((double)T * 0.8);
        double step = S > 1 ? stop / (double)(S - 1) : 0.0;
        for (int i = 0; i < n; i++) {
            double y = (S > 1 && i == S - 1) ? stop : (double)i * step;
            ts[i] = (int64_t)(y * y) + 1;
        }
    }
    *out = ts;
    *n_out = n;
    return LDM_OK;
}

void ls_ddim_release(ls_ddim *d)
{
    if (!d) return;
    ldm_free(d->timesteps);
    ldm_free(d->alphas);
    memset(d, 0, sizeof *d);
}

/* The step count nearest to S (below first) whose 'uniform' timesteps stay inside [0, T). */
static int nearby_valid_steps(int T, int S, int quad)
{
    for (int d = 1; d < T; d++)
        for (int sign = -1; sign <= 1; sign += 2) {
            int s = S + sign * d;
            if (s < 1 || s > T) continue;
            int64_t *ts = NULL;
            int n = 0;
            if (ls_ddim_timesteps(s, T, quad, &ts, &n) != LDM_OK) continue;
            int ok = ts[n - 1] < T;
            ldm_free(ts);
            if (ok) return s;
        }
    return 1;
}

ldm_status ls_ddim_make(const float *alphas_cumprod, int T, int S, int quad, double eta, ls_ddim *out)
{
    if (!alphas_cumprod || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ddim parameters: NULL argument");
    if (!(eta >= 0.0) || !isfinite(eta))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ddim parameters: eta %g must be >= 0", eta);
    memset(out, 0, sizeof *out);
    int n;
    int64_t *ts;
    LDM_TRY(ls_ddim_timesteps(S, T, quad, &ts, &n));
    if (ts[n - 1] >= T) {
        /* 'uniform' spaces the steps c = T // S apart and adds 1: when c divides T - 1 the last
         * one is T, and the reference indexes alphas_cumprod[T] and fails (e.g. 9 steps of 1000). */
        ldm_free(ts);
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "ddim with %d steps over %d timesteps: the spacing %d divides %d, so the last timestep would "
                        "be %d, outside the schedule (the reference fails the same way); %d steps would work",
                        S, T, T / S, T - 1, T, nearby_valid_steps(T, S, quad));
    }
    float *arrays = ldm_malloc((size_t)n * 4 * sizeof *arrays);
    if (!arrays) {
        ldm_free(ts);
        return ldm_alloc_failure_status();
    }
    out->n = n;
    out->timesteps = ts;
    out->alphas = arrays;
    out->alphas_prev = arrays + n;
    out->sigmas = arrays + 2 * n;
    out->sqrt_one_minus_alphas = arrays + 3 * n;
    for (int i = 0; i < n; i++) {
        float a = alphas_cumprod[ts[i]];
        float ap = i == 0 ? alphas_cumprod[0] : alphas_cumprod[ts[i - 1]];
        /* (1 - alphas) is a float32 torch op in the reference, the rest float64 */
        double one_minus_a = (double)(1.0f - a);
        double var = (1.0 - (double)ap) / one_minus_a * (1.0 - (double)a / (double)ap);
        out->alphas[i] = a;
        out->alphas_prev[i] = ap;
        out->sigmas[i] = (float)(eta * sqrt(var));
        out->sqrt_one_minus_alphas[i] = sqrtf(1.0f - a);
    }
    return LDM_OK;
}

void ls_ddim_finish(const float *pred_x0, const float *e, const float *noise, float a_prev,
                    float sigma, size_t n, float *x_prev)
{
    float dir_coef = sqrtf((1.0f - a_prev) - sigma * sigma);
    float sqrt_a_prev = sqrtf(a_prev);
    for (size_t i = 0; i < n; i++) {
        float dir = dir_coef * e[i];
        float nz = noise ? sigma * noise[i] : 0.0f;
        x_prev[i] = (sqrt_a_prev * pred_x0[i] + dir) + nz;
    }
}

void ls_ddim_step_eps(const float *x, const float *e, const float *noise, float a_t,
                      float sqrt_one_minus_at, float a_prev, float sigma, size_t n, float *x_prev,
                      float *pred_x0)
{
    float sqrt_at = sqrtf(a_t);
    float dir_coef = sqrtf((1.0f - a_prev) - sigma * sigma);
    float sqrt_a_prev = sqrtf(a_prev);
    for (size_t i = 0; i < n; i++) {
        float p = (x[i] - sqrt_one_minus_at * e[i]) / sqrt_at;
        float dir = dir_coef * e[i];
        float nz = noise ? sigma * noise[i] : 0.0f;
        if (pred_x0) pred_x0[i] = p;
        x_prev[i] = (sqrt_a_prev * p + dir) + nz;
    }
}

void ls_v_to_eps_x0(const float *x, const float *v, float sa, float so, size_t n, float *eps, float *x0)
{
    for (size_t i = 0; i < n; i++) {
        if (eps) eps[i] = sa * v[i] + so * x[i];
        if (x0) x0[i] = sa * x[i] - so * v[i];
    }
}

void ls_eps_x0_to_v(const float *eps, const float *x0, float sa, float so, size_t n, float *v)
{
    for (size_t i = 0; i < n; i++) v[i] = sa * eps[i] - so * x0[i];
}

void ls_plms_combine(const float *e, const float *const *hist, int n_hist, size_t n, float *out)
{
    if (n_hist <= 0) {
        if (out != e) memcpy(out, e, n * sizeof *out);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float v;
        if (n_hist == 1)
            v = (3.0f * e[i] - hist[0][i]) / 2.0f;
        else if (n_hist == 2)
            v = ((23.0f * e[i] - 16.0f * hist[0][i]) + 5.0f * hist[1][i]) / 12.0f;
        else
            v = (((55.0f * e[i] - 59.0f * hist[0][i]) + 37.0f * hist[1][i]) - 9.0f * hist[2][i]) / 24.0f;
        out[i] = v;
    }
}

void ls_plms_warmup(const float *e, const float *e_next, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) out[i] = (e[i] + e_next[i]) / 2.0f;
}
