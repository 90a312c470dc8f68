/* loss.h - the numerics of the training objectives (issue #13), given the network's output:
 * the diffusion loss of ldm/models/diffusion/ddpm.py (q_sample, the eps / x0 / v targets,
 * get_loss, LatentDiffusion.p_losses with l_simple_weight, logvar and original_elbo_weight) and
 * the KL autoencoder's objective without perceptual and adversarial terms
 * (ldm/modules/losses/contperceptual.py LPIPSWithDiscriminator with perceptual_weight 0 before
 * disc_start, and ldm/modules/distributions DiagonalGaussianDistribution.kl).
 *
 * Tensors are [B, ...] float32 with `per` elements per sample. Losses are returned in double
 * (accumulated in double, in a fixed order); gradients d loss / d input are float32 and
 * OVERWRITE their buffers (NULL when not wanted). B >= 1. */
#ifndef LDM_TRAIN_LOSS_H
#define LDM_TRAIN_LOSS_H

#include "../core/common.h"

#include <stddef.h>

/* get_loss's loss_type: "l2" (the default; torch.nn.functional.mse_loss) or "l1". */
typedef enum { LTR_LOSS_L2, LTR_LOSS_L1 } ltr_loss_type;
/* DDPM.parameterization: what the network predicts, hence the target. */
typedef enum { LTR_PRED_EPS, LTR_PRED_X0, LTR_PRED_V } ltr_prediction;

/* The schedule tables p_losses reads, float32 [T] as register_schedule registers them (and as
 * lib/sampling's ls_schedule holds them: LS_SQRT_ALPHAS_CUMPROD, LS_SQRT_ONE_MINUS_...). */
typedef struct {
    const float *sqrt_alphas_cumprod;
    const float *sqrt_one_minus_alphas_cumprod;
} ltr_qtables;

/* DDPM.q_sample: x_t = sqrt_acp[t_b] * x0 + sqrt_1m_acp[t_b] * noise, in float32, per sample b. */
void ltr_q_sample(const ltr_qtables *q, const float *x0, const float *noise, const int *t, int B, size_t per,
                  float *xt);

/* The regression target of p_losses: noise (eps), x0 (x0), or get_v (v, Stability-AI's
 * ldm/models/diffusion/ddpm.py): sqrt_acp[t] * noise - sqrt_1m_acp[t] * x0. */
void ltr_target(ltr_prediction pred, const ltr_qtables *q, const float *x0, const float *noise, const int *t,
                int B, size_t per, float *target);

/* register_schedule's lvlb_weights [T] from the float32 buffers betas, alphas_cumprod and
 * posterior_variance, in float32 as the reference's torch expressions: eps: betas^2 / (2 *
 * posterior_variance * alphas * (1 - acp)) with alphas = float32(1 - betas); x0: 0.5 * sqrt(acp)
 * / (2 - acp) (the reference writes "2. * 1 - acp"); v: 1. Then w[0] = w[1] (w[0] is inf for eps:
 * posterior_variance[0] is 0). T >= 2. */
void ltr_lvlb_weights(ltr_prediction pred, const float *betas, const float *alphas_cumprod,
                      const float *posterior_variance, int T, float *w);

/* LatentDiffusion.p_losses given model_output and target:
 *   loss_simple_b = mean over the sample of get_loss(out, target) elementwise ((t-o)^2 or |t-o|)
 *   loss = l_simple_weight * mean_b(loss_simple_b / exp(logvar[t_b]) + logvar[t_b])
 *        + original_elbo_weight * mean_b(lvlb_weights[t_b] * loss_simple_b)
 * With the defaults (l_simple_weight 1, original_elbo_weight 0, learn_logvar False so logvar is
 * logvar_init = 0) this is mse_loss(target, out) over everything. logvar [T] may be NULL (all
 * 0); lvlb_weights [T] may be NULL only when original_elbo_weight is 0. */
typedef struct {
    ltr_loss_type type;
    double l_simple_weight;
    double original_elbo_weight;
    const float *logvar;
    const float *lvlb_weights;
} ltr_diffusion_loss;

/* The reference's defaults: l2, l_simple_weight 1, original_elbo_weight 0, no tables. */
void ltr_diffusion_loss_defaults(ltr_diffusion_loss *p);

/* The pieces p_losses logs, and the total. */
typedef struct {
    double loss;        /* what is minimised */
    double loss_simple; /* mean_b loss_simple_b ("loss_simple" in the log) */
    double loss_vlb;    /* mean_b lvlb_weights[t_b] * loss_simple_b (0 without the table) */
} ltr_loss_terms;

/* The loss and d loss / d out (dout may be NULL; it may equal `out`). L1's derivative at
 * out == target is 0, as torch's abs backward. dlogvar [T] (may be NULL) receives
 * d loss / d logvar[t] summed over the samples drawn at t (learn_logvar True), zero elsewhere.
 * LDM_ERR_INVALID_ARGUMENT for a missing lvlb_weights table or B < 1. */
ldm_status ltr_diffusion_loss_eval(const ltr_diffusion_loss *p, const float *out, const float *target,
                                   const int *t, int B, size_t per, int T, ltr_loss_terms *terms, float *dout,
                                   float *dlogvar);

/* LPIPSWithDiscriminator's nll with perceptual_weight 0 (and weights None): rec = |x - xrec|,
 * nll = sum(rec / exp(logvar) + logvar) / B, with the learned scalar logvar (logvar_init 0).
 * dxrec = d nll / d xrec (sign(xrec - x) / exp(logvar) / B, 0 where equal), *dlogvar =
 * d nll / d logvar; either may be NULL. Returns nll. */
double ltr_ae_nll_l1(const float *x, const float *xrec, int B, size_t per, float logvar, float *dxrec,
                     double *dlogvar);

/* DiagonalGaussianDistribution(moments).kl() summed over the batch and divided by B, as
 * LPIPSWithDiscriminator's kl_loss: moments [B, 2C, HW] hold the mean in the first C channels
 * and logvar in the last C (torch.chunk(parameters, 2, dim=1)); logvar is clamped to [-30, 20],
 *   kl = sum_b 0.5 * sum_{c,hw} (mean^2 + exp(lv) - 1 - lv) / B.
 * dmoments [B, 2C, HW] (may be NULL) receives `scale` * d kl / d moments (scale = kl_weight to
 * get the weighted term's gradient): mean / B and 0.5 (exp(lv) - 1) / B, the latter zero where
 * the clamp cut (torch's clamp passes the gradient on the bounds themselves). Returns kl. */
double ltr_kl_diag_gaussian(const float *moments, int B, int C, size_t HW, double scale, float *dmoments);

#endif
