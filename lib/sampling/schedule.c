/* schedule.c - DDPM noise schedules: the beta schedules of make_beta_schedule and the buffers
 * DDPM.register_schedule derives from them (ldm/models/diffusion/ddpm.py). The reference computes
 * everything in float64 numpy and stores float32 tensors; we do the same. When a checkpoint
 * carries the buffers they win (ls_schedule_apply_store): they are what the reference samples
 * with, whatever the config says. */
#include "sampling.h"

#include "../io/weights.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

static const char *const buffer_names[LS_N_BUFFERS] = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
};

const char *ls_buffer_name(ls_buffer b)
{
    return (b >= 0 && b < LS_N_BUFFERS) ? buffer_names[b] : "?";
}

ldm_status ls_beta_kind_parse(const char *name, ls_beta_kind *out)
{
    static const struct { const char *name; ls_beta_kind kind; } kinds[] = {
        {"linear", LS_BETA_LINEAR},
        {"cosine", LS_BETA_COSINE},
        {"sqrt_linear", LS_BETA_SQRT_LINEAR},
        {"sqrt", LS_BETA_SQRT},
    };
    if (!name || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "beta schedule: NULL argument");
    for (size_t i = 0; i < LDM_ARRAY_LEN(kinds); i++) {
        if (strcmp(name, kinds[i].name) == 0) {
            *out = kinds[i].kind;
            return LDM_OK;
        }
    }
    return ldm_fail(LDM_ERR_UNSUPPORTED,
                    "beta schedule '%s' unknown (expected linear, cosine, sqrt_linear or sqrt)", name);
}

/* torch.linspace(start, end, n, dtype=float64): the CPU kernel fills the first half forwards
 * from start and the second half backwards from end, so both ends are exact. */
static void torch_linspace(double start, double end, int n, double *out)
{
    if (n == 1) {
        out[0] = start;
        return;
    }
    double step = (end - start) / (double)(n - 1);
    int halfway = n / 2;
    for (int i = 0; i < n; i++)
        out[i] = i < halfway ? start + step * (double)i : end - step * (double)(n - i - 1);
}

static void cosine_betas(int n, double s, double *betas)
{
    /* alphas_bar(i) = cos(((i/n + s)/(1+s)) * pi / 2)^2, normalised by its value at 0 */
    double prev = 0.0, first = 0.0;
    for (int i = 0; i <= n; i++) {
        double ts = (double)i / (double)n + s;
        double c = cos(ts / (1.0 + s) * M_PI / 2.0);
        double a = c * c;
        if (i == 0) {
            first = a;
            prev = 1.0;
            continue;
        }
        double cur = a / first;
        double beta = 1.0 - cur / prev;
        betas[i - 1] = beta < 0.0 ? 0.0 : (beta > 0.999 ? 0.999 : beta);
        prev = cur;
    }
}

ldm_status ls_make_betas(ls_beta_kind kind, int n, double linear_start, double linear_end,
                         double cosine_s, double *betas)
{
    if (n < 1 || !betas) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "beta schedule: %d timesteps", n);
    switch (kind) {
    case LS_BETA_LINEAR:
        if (linear_start < 0 || linear_end < 0)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "linear beta schedule: negative linear_start/end");
        torch_linspace(sqrt(linear_start), sqrt(linear_end), n, betas);
        for (int i = 0; i < n; i++) betas[i] *= betas[i];
        return LDM_OK;
    case LS_BETA_COSINE:
        cosine_betas(n, cosine_s, betas);
        return LDM_OK;
    case LS_BETA_SQRT_LINEAR:
        torch_linspace(linear_start, linear_end, n, betas);
        return LDM_OK;
    case LS_BETA_SQRT:
        torch_linspace(linear_start, linear_end, n, betas);
        for (int i = 0; i < n; i++) betas[i] = sqrt(betas[i]);
        return LDM_OK;
    }
    return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "beta schedule kind %d unknown", (int)kind);
}

static ls_schedule *schedule_alloc(int n)
{
    size_t bytes;
    if (n < 1 || ldm_mul_size((size_t)n, sizeof(float) * (LS_N_BUFFERS + 2), &bytes)) {
        ldm_fail(LDM_ERR_INVALID_ARGUMENT, "schedule: %d timesteps", n);
        return NULL;
    }
    ls_schedule *s = ldm_calloc(1, sizeof *s);
    if (!s) return NULL;
    float *block = ldm_malloc_aligned(bytes);
    if (!block) {
        ldm_free(s);
        return NULL;
    }
    s->n = n;
    for (int b = 0; b < LS_N_BUFFERS; b++) s->buf[b] = block + (size_t)b * (size_t)n;
    s->sgm_sigmas = block + (size_t)LS_N_BUFFERS * (size_t)n;
    s->sgm_denoiser_sigmas = s->sgm_sigmas + n;
    return s;
}

void ls_schedule_free(ls_schedule *s)
{
    if (!s) return;
    ldm_free(s->buf[0]);
    ldm_free(s);
}

/* register_schedule from betas and alphas_cumprod (both float64), numpy expression by expression. */
static void derive_buffers(ls_schedule *s, const double *betas, const double *ac, double v_posterior)
{
    for (int t = 0; t < s->n; t++) {
        double beta = betas[t], a = 1.0 - beta, c = ac[t];
        double cp = t == 0 ? 1.0 : ac[t - 1];
        double pv = (1.0 - v_posterior) * beta * (1.0 - cp) / (1.0 - c) + v_posterior * beta;
        s->buf[LS_BETAS][t] = (float)beta;
        s->buf[LS_ALPHAS_CUMPROD][t] = (float)c;
        s->buf[LS_ALPHAS_CUMPROD_PREV][t] = (float)cp;
        s->buf[LS_SQRT_ALPHAS_CUMPROD][t] = (float)sqrt(c);
        s->buf[LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD][t] = (float)sqrt(1.0 - c);
        s->buf[LS_LOG_ONE_MINUS_ALPHAS_CUMPROD][t] = (float)log(1.0 - c);
        s->buf[LS_SQRT_RECIP_ALPHAS_CUMPROD][t] = (float)sqrt(1.0 / c);
        s->buf[LS_SQRT_RECIPM1_ALPHAS_CUMPROD][t] = (float)sqrt(1.0 / c - 1.0);
        s->buf[LS_POSTERIOR_VARIANCE][t] = (float)pv;
        s->buf[LS_POSTERIOR_LOG_VARIANCE_CLIPPED][t] = (float)log(pv > 1e-20 ? pv : 1e-20);
        s->buf[LS_POSTERIOR_MEAN_COEF1][t] = (float)(beta * sqrt(cp) / (1.0 - c));
        s->buf[LS_POSTERIOR_MEAN_COEF2][t] = (float)((1.0 - cp) * sqrt(a) / (1.0 - c));
        /* sgm LegacyDDPMDiscretization: torch.tensor((1 - ac) / ac, float32) ** 0.5 */
        s->sgm_sigmas[t] = sqrtf((float)((1.0 - c) / c));
        s->sgm_denoiser_sigmas[t] = s->sgm_sigmas[t];
    }
}

ldm_status ls_schedule_from_betas(const double *betas, int n, double v_posterior, ls_schedule **out)
{
    if (!betas || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "schedule: NULL argument");
    for (int t = 0; t < n; t++) {
        if (!(betas[t] > 0.0 && betas[t] < 1.0))
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "schedule: beta[%d] = %g outside (0,1)", t, betas[t]);
    }
    ls_schedule *s = schedule_alloc(n);
    if (!s) return ldm_alloc_failure_status();
    double *ac = ldm_malloc((size_t)n * sizeof *ac);
    if (!ac) {
        ls_schedule_free(s);
        return ldm_alloc_failure_status();
    }
    double prod = 1.0;
    for (int t = 0; t < n; t++) ac[t] = prod *= 1.0 - betas[t]; /* np.cumprod: sequential */
    derive_buffers(s, betas, ac, v_posterior);
    ldm_free(ac);
    *out = s;
    return LDM_OK;
}

ldm_status ls_schedule_make(ls_beta_kind kind, int n, double linear_start, double linear_end,
                            double cosine_s, ls_schedule **out)
{
    if (n < 1) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "schedule: %d timesteps", n);
    double *betas = ldm_malloc((size_t)n * sizeof *betas);
    if (!betas) return ldm_alloc_failure_status();
    ldm_status st = ls_make_betas(kind, n, linear_start, linear_end, cosine_s, betas);
    if (st == LDM_OK) st = ls_schedule_from_betas(betas, n, 0.0, out);
    ldm_free(betas);
    return st;
}

ldm_status ls_schedule_from_alphas_cumprod(const float *alphas_cumprod, int n, ls_schedule **out)
{
    if (!alphas_cumprod || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "schedule: NULL alphas_cumprod");
    if (n < 1) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "schedule: %d timesteps", n);
    for (int t = 0; t < n; t++) {
        float c = alphas_cumprod[t];
        if (!(c > 0.0f && c < 1.0f))
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "alphas_cumprod[%d] = %g outside (0,1)", t, (double)c);
        if (t > 0 && c > alphas_cumprod[t - 1])
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                            "alphas_cumprod increases at t=%d (%g > %g): not a diffusion schedule", t,
                            (double)c, (double)alphas_cumprod[t - 1]);
    }
    ls_schedule *s = schedule_alloc(n);
    if (!s) return ldm_alloc_failure_status();
    double *work = ldm_malloc((size_t)n * 2 * sizeof *work);
    if (!work) {
        ls_schedule_free(s);
        return ldm_alloc_failure_status();
    }
    double *betas = work, *ac = work + n;
    for (int t = 0; t < n; t++) {
        ac[t] = alphas_cumprod[t];
        betas[t] = 1.0 - (t == 0 ? ac[0] : ac[t] / ac[t - 1]);
    }
    derive_buffers(s, betas, ac, 0.0);
    ldm_free(work);
    *out = s;
    return LDM_OK;
}

ldm_status ls_schedule_apply_store(ls_schedule *s, const lw_store *store, const char *prefix,
                                   int *n_replaced)
{
    if (!s || !store) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "schedule: NULL argument");
    if (!prefix) prefix = "";
    int found = 0;
    for (int b = 0; b < LS_N_BUFFERS; b++) {
        char key[256];
        int len = snprintf(key, sizeof key, "%s%s", prefix, buffer_names[b]);
        if (len < 0 || (size_t)len >= sizeof key)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "schedule: key prefix too long");
        const lw_tensor *t = lw_find(store, key);
        if (!t) continue;
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        if (numel != s->n)
            return ldm_fail(LDM_ERR_FORMAT, "%s: schedule buffer '%s' has %lld elements, expected %d (timesteps)",
                            lw_path(store), key, (long long)numel, s->n);
        float *vals = NULL;
        LDM_TRY(lw_get_f32(store, key, -1, NULL, &vals));
        memcpy(s->buf[b], vals, (size_t)s->n * sizeof(float));
        ldm_free(vals);
        found++;
    }
    if (n_replaced) *n_replaced = found;
    return LDM_OK;
}

ldm_status ls_schedule_clone(const ls_schedule *s, ls_schedule **out)
{
    if (!s || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "schedule clone: NULL argument");
    ls_schedule *c = schedule_alloc(s->n);
    if (!c) return ldm_alloc_failure_status();
    for (int b = 0; b < LS_N_BUFFERS; b++) memcpy(c->buf[b], s->buf[b], (size_t)s->n * sizeof(float));
    memcpy(c->sgm_sigmas, s->sgm_sigmas, (size_t)s->n * sizeof(float));
    memcpy(c->sgm_denoiser_sigmas, s->sgm_denoiser_sigmas, (size_t)s->n * sizeof(float));
    *out = c;
    return LDM_OK;
}
