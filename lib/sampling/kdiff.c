/* kdiff.c - the k-diffusion view of a DDPM model (crowsonkb/k-diffusion external.py
 * DiscreteSchedule / CompVisDenoiser / CompVisVDenoiser) and the update rules of its samplers
 * (sampling.py: to_d, get_ancestral_step, sample_euler / _ancestral / _heun / _dpmpp_2m,
 * get_sigmas_karras). Noise levels live in double here; k-diffusion keeps them as float32 torch
 * scalars, which only matters in the last bits (no fixture pins these samplers down bitwise). */
#include "sampling.h"

#include <math.h>
#include <string.h>

ldm_status ls_ksched_make(const float *alphas_cumprod, int n, ls_ksched *out)
{
    if (!alphas_cumprod || !out || n < 2)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "k-diffusion schedule: need >= 2 timesteps, got %d", n);
    memset(out, 0, sizeof *out);
    out->sigmas = ldm_malloc((size_t)n * sizeof *out->sigmas);
    out->log_sigmas = ldm_malloc((size_t)n * sizeof *out->log_sigmas);
    if (!out->sigmas || !out->log_sigmas) {
        ls_ksched_release(out);
        return ldm_alloc_failure_status();
    }
    out->n = n;
    for (int t = 0; t < n; t++) {
        double ac = alphas_cumprod[t];
        out->sigmas[t] = (float)sqrt((1.0 - ac) / ac);
        out->log_sigmas[t] = log((double)out->sigmas[t]);
    }
    return LDM_OK;
}

void ls_ksched_release(ls_ksched *k)
{
    if (!k) return;
    ldm_free(k->sigmas);
    ldm_free(k->log_sigmas);
    memset(k, 0, sizeof *k);
}

double ls_ksched_sigma_to_t(const ls_ksched *k, double sigma)
{
    double ls = log(sigma);
    /* low_idx = last index with log_sigmas[i] <= ls (0 if none), at most n-2 */
    int lo = 0, hi = k->n - 1;
    if (ls < k->log_sigmas[0]) {
        lo = 0;
    } else {
        while (lo < hi) { /* largest i with log_sigmas[i] <= ls */
            int mid = lo + (hi - lo + 1) / 2;
            if (k->log_sigmas[mid] <= ls) lo = mid;
            else hi = mid - 1;
        }
    }
    if (lo > k->n - 2) lo = k->n - 2;
    double low = k->log_sigmas[lo], high = k->log_sigmas[lo + 1];
    double w = low == high ? 0.0 : (low - ls) / (low - high);
    if (w < 0.0) w = 0.0;
    if (w > 1.0) w = 1.0;
    return (1.0 - w) * lo + w * (lo + 1);
}

double ls_ksched_t_to_sigma(const ls_ksched *k, double t)
{
    if (t <= 0.0) return k->sigmas[0];
    if (t >= k->n - 1) return k->sigmas[k->n - 1];
    double fl = floor(t);
    int lo = (int)fl, hi = (int)ceil(t);
    double w = t - fl;
    return exp((1.0 - w) * k->log_sigmas[lo] + w * k->log_sigmas[hi]);
}

/* torch.linspace(start, end, n) (see schedule.c), in double. */
static double linspace_at(double start, double end, int n, int i)
{
    if (n == 1) return start;
    double step = (end - start) / (double)(n - 1);
    return i < n / 2 ? start + step * i : end - step * (double)(n - 1 - i);
}

ldm_status ls_ksched_sigmas(const ls_ksched *k, int steps, int karras, double *out)
{
    if (!k || !out || steps < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "k-diffusion sigmas: %d steps", steps);
    if (!karras) {
        for (int i = 0; i < steps; i++) out[i] = ls_ksched_t_to_sigma(k, linspace_at(k->n - 1, 0.0, steps, i));
    } else {
        const double rho = 7.0;
        double min_inv = pow((double)k->sigmas[0], 1.0 / rho);
        double max_inv = pow((double)k->sigmas[k->n - 1], 1.0 / rho);
        for (int i = 0; i < steps; i++) {
            double ramp = linspace_at(0.0, 1.0, steps, i);
            out[i] = pow(max_inv + ramp * (min_inv - max_inv), rho);
        }
    }
    out[steps] = 0.0; /* append_zero */
    return LDM_OK;
}

double ls_k_c_in(double sigma) { return 1.0 / sqrt(sigma * sigma + 1.0); }

void ls_k_denoised(const float *x, const float *model_out, double sigma, int v_param, size_t n,
                   float *denoised)
{
    if (!v_param) {
        float c_out = (float)-sigma;
        for (size_t i = 0; i < n; i++) denoised[i] = x[i] + model_out[i] * c_out;
        return;
    }
    double s2 = sigma * sigma + 1.0;
    float c_skip = (float)(1.0 / s2);
    float c_out = (float)(-sigma / sqrt(s2));
    for (size_t i = 0; i < n; i++) denoised[i] = model_out[i] * c_out + x[i] * c_skip;
}

void ls_k_ancestral_step(double sigma_from, double sigma_to, double eta, double *sigma_down,
                         double *sigma_up)
{
    if (eta == 0.0 || sigma_from <= 0.0) {
        *sigma_down = sigma_to;
        *sigma_up = 0.0;
        return;
    }
    double up = eta * sqrt(sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) /
                           (sigma_from * sigma_from));
    if (up > sigma_to) up = sigma_to;
    *sigma_up = up;
    *sigma_down = sqrt(sigma_to * sigma_to - up * up);
}

void ls_k_euler(float *x, const float *denoised, double sigma, double dt, size_t n)
{
    float fsigma = (float)sigma; /* to_d divides by sigma */
    float fdt = (float)dt;
    for (size_t i = 0; i < n; i++) {
        float d = (x[i] - denoised[i]) / fsigma;
        x[i] = x[i] + d * fdt;
    }
}

void ls_k_dpmpp_2m(float *x, const float *denoised, const float *old_denoised, double sigma_prev,
                   double sigma, double sigma_next, size_t n)
{
    if (sigma_next <= 0.0) {
        /* t_next = +inf: sigma ratio 0, -expm1(-h) = 1 -> x = denoised */
        memcpy(x, denoised, n * sizeof *x);
        return;
    }
    double t = -log(sigma), t_next = -log(sigma_next);
    double h = t_next - t;
    float ratio = (float)(sigma_next / sigma);     /* sigma_fn(t_next) / sigma_fn(t) */
    float coef = (float)(-expm1(-h));              /* 1 - ratio, computed without cancellation */
    if (!old_denoised) {
        for (size_t i = 0; i < n; i++) x[i] = ratio * x[i] + coef * denoised[i];
        return;
    }
    double h_last = t - (-log(sigma_prev));
    double r = h_last / h;
    float a = (float)(1.0 + 1.0 / (2.0 * r)), b = (float)(1.0 / (2.0 * r));
    for (size_t i = 0; i < n; i++) {
        float dd = a * denoised[i] - b * old_denoised[i];
        x[i] = ratio * x[i] + coef * dd;
    }
}

void ls_ksched_sigmas_at(const ls_ksched *k, const int64_t *ts, int n, double *out)
{
    for (int i = 0; i < n; i++) out[i] = (double)k->sigmas[ts[i]];
    out[n] = 0.0;
}

ldm_status ls_trailing_timesteps(int T, int steps, int64_t *out, int *n_out)
{
    if (!out || !n_out || steps < 1 || steps > T)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "trailing spacing: %d steps, need 1..%d", steps, T);
    double ratio = (double)T / (double)steps;
    /* numpy arange: length ceil((stop - start)/step), values start + i*delta with delta the
     * difference of the first two values (not the step itself) */
    int len = (int)ceil((0.0 - (double)T) / -ratio);
    double delta = ((double)T - ratio) - (double)T;
    if (len > steps + 1) len = steps + 1; /* cannot happen for T, steps >= 1; keeps `out` in bounds */
    for (int i = 0; i < len; i++) out[i] = (int64_t)nearbyint((double)T + (double)i * delta) - 1;
    *n_out = len;
    return LDM_OK;
}
