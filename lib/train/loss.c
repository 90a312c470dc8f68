/* loss.c - the training objectives' numerics: ldm/models/diffusion/ddpm.py (q_sample, get_v,
 * get_loss, register_schedule's lvlb_weights, LatentDiffusion.p_losses) and the KL autoencoder's
 * LPIPSWithDiscriminator (contperceptual.py) with the perceptual and adversarial terms off.
 * Sums run in double, sample by sample and element by element in memory order. */
#include "loss.h"

#include <math.h>

void ltr_q_sample(const ltr_qtables *q, const float *x0, const float *noise, const int *t, int B, size_t per,
                  float *xt)
{
    for (int b = 0; b < B; b++) {
        float a = q->sqrt_alphas_cumprod[t[b]], s = q->sqrt_one_minus_alphas_cumprod[t[b]];
        size_t o = (size_t)b * per;
        for (size_t i = 0; i < per; i++) xt[o + i] = a * x0[o + i] + s * noise[o + i];
    }
}

void ltr_target(ltr_prediction pred, const ltr_qtables *q, const float *x0, const float *noise, const int *t,
                int B, size_t per, float *target)
{
    size_t n = (size_t)B * per;
    if (pred == LTR_PRED_EPS || pred == LTR_PRED_X0) {
        const float *src = pred == LTR_PRED_EPS ? noise : x0;
        for (size_t i = 0; i < n; i++) target[i] = src[i];
        return;
    }
    for (int b = 0; b < B; b++) { /* get_v */
        float a = q->sqrt_alphas_cumprod[t[b]], s = q->sqrt_one_minus_alphas_cumprod[t[b]];
        size_t o = (size_t)b * per;
        for (size_t i = 0; i < per; i++) target[o + i] = a * noise[o + i] - s * x0[o + i];
    }
}

void ltr_lvlb_weights(ltr_prediction pred, const float *betas, const float *alphas_cumprod,
                      const float *posterior_variance, int T, float *w)
{
    for (int i = 0; i < T; i++) {
        float acp = alphas_cumprod[i];
        if (pred == LTR_PRED_EPS) {
            float alpha = (float)(1.0 - (double)betas[i]); /* to_torch(alphas), alphas = 1 - betas */
            w[i] = betas[i] * betas[i] / (2.0f * posterior_variance[i] * alpha * (1.0f - acp));
        } else if (pred == LTR_PRED_X0) {
            w[i] = 0.5f * sqrtf(acp) / (2.0f * 1.0f - acp);
        } else {
            w[i] = 1.0f; /* v: torch.ones_like(...) */
        }
    }
    w[0] = w[1]; /* "TODO how to choose this term" */
}

void ltr_diffusion_loss_defaults(ltr_diffusion_loss *p)
{
    p->type = LTR_LOSS_L2;
    p->l_simple_weight = 1.0;
    p->original_elbo_weight = 0.0;
    p->logvar = NULL;
    p->lvlb_weights = NULL;
}

/* get_loss(mean=False).mean([1,2,3]) of one sample. */
static double sample_loss(ltr_loss_type type, const float *out, const float *target, size_t per)
{
    double s = 0.0;
    for (size_t i = 0; i < per; i++) {
        double d = (double)target[i] - out[i];
        s += type == LTR_LOSS_L2 ? d * d : fabs(d);
    }
    return s / (double)per;
}

/* d/d out of one element's loss: (t - o)^2 -> 2 (o - t); |t - o| -> sign(o - t), 0 at 0. */
static double elem_grad(ltr_loss_type type, float out, float target)
{
    double d = (double)out - target;
    if (type == LTR_LOSS_L2) return 2.0 * d;
    return d > 0.0 ? 1.0 : (d < 0.0 ? -1.0 : 0.0);
}

ldm_status ltr_diffusion_loss_eval(const ltr_diffusion_loss *p, const float *out, const float *target,
                                   const int *t, int B, size_t per, int T, ltr_loss_terms *terms, float *dout,
                                   float *dlogvar)
{
    if (B < 1 || per < 1) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "p_losses: empty batch");
    if (p->original_elbo_weight != 0.0 && !p->lvlb_weights)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "p_losses: original_elbo_weight without lvlb_weights");
    for (int b = 0; b < B; b++)
        if (t[b] < 0 || t[b] >= T)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "p_losses: timestep %d outside [0, %d)", t[b], T);
    if (dlogvar)
        for (int i = 0; i < T; i++) dlogvar[i] = 0.0f;
    double simple = 0.0, gamma = 0.0, vlb = 0.0;
    for (int b = 0; b < B; b++) {
        size_t o = (size_t)b * per;
        double ls = sample_loss(p->type, out + o, target + o, per);
        double lv = p->logvar ? p->logvar[t[b]] : 0.0;
        double lw = p->lvlb_weights ? p->lvlb_weights[t[b]] : 0.0;
        simple += ls;
        gamma += ls / exp(lv) + lv; /* loss_simple / torch.exp(logvar_t) + logvar_t */
        vlb += lw * ls;
        if (dlogvar) dlogvar[t[b]] += (float)(p->l_simple_weight * (1.0 - ls / exp(lv)) / B);
        if (dout) {
            /* d loss / d ls_b, then through the mean over the sample's `per` elements */
            double w = (p->l_simple_weight / exp(lv) + p->original_elbo_weight * lw) / B / (double)per;
            for (size_t i = 0; i < per; i++) dout[o + i] = (float)(w * elem_grad(p->type, out[o + i], target[o + i]));
        }
    }
    terms->loss_simple = simple / B;
    terms->loss_vlb = vlb / B;
    terms->loss = p->l_simple_weight * (gamma / B) + p->original_elbo_weight * terms->loss_vlb;
    return LDM_OK;
}

double ltr_ae_nll_l1(const float *x, const float *xrec, int B, size_t per, float logvar, float *dxrec,
                     double *dlogvar)
{
    size_t n = (size_t)B * per;
    double inv_var = exp(-(double)logvar), rec = 0.0;
    for (size_t i = 0; i < n; i++) rec += fabs((double)x[i] - xrec[i]);
    if (dxrec) {
        double w = inv_var / B;
        for (size_t i = 0; i < n; i++) {
            double d = (double)xrec[i] - x[i];
            dxrec[i] = (float)(d > 0.0 ? w : (d < 0.0 ? -w : 0.0));
        }
    }
    /* sum(rec / exp(lv) + lv) / B = (rec_sum / exp(lv) + n lv) / B */
    if (dlogvar) *dlogvar = (-rec * inv_var + (double)n) / B;
    return (rec * inv_var + (double)n * logvar) / B;
}

/* torch.clamp(logvar, -30, 20); *pass says whether the gradient goes through (bounds included). */
static double clamp_logvar(float lv, int *pass)
{
    *pass = lv >= -30.0f && lv <= 20.0f;
    return lv < -30.0f ? -30.0 : (lv > 20.0f ? 20.0 : (double)lv);
}

double ltr_kl_diag_gaussian(const float *moments, int B, int C, size_t HW, double scale, float *dmoments)
{
    size_t half = (size_t)C * HW;
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        const float *mean = moments + (size_t)b * 2 * half, *logvar = mean + half;
        float *dmean = dmoments ? dmoments + (size_t)b * 2 * half : NULL, *dlv = dmean ? dmean + half : NULL;
        double kl = 0.0;
        for (size_t i = 0; i < half; i++) {
            int pass;
            double lv = clamp_logvar(logvar[i], &pass), var = exp(lv), m = mean[i];
            kl += m * m + var - 1.0 - lv;
            if (dmean) {
                dmean[i] = (float)(scale * m / B);
                dlv[i] = pass ? (float)(scale * 0.5 * (var - 1.0) / B) : 0.0f;
            }
        }
        total += 0.5 * kl;
    }
    return total / B;
}
