/* train_step.c - one optimiser step of each objective, as the reference's training_step computes
 * it: the KL autoencoder (AutoencoderKL.training_step with optimizer_idx 0, before disc_start)
 * and the latent diffusion model (LatentDiffusion.shared_step -> p_losses). Every random draw
 * (latent sample, label dropout, timesteps, noise) comes from Philox keyed by the seed, a stream
 * per kind of draw and the step, so a resumed run continues exactly as an uninterrupted one. */
#include "trainer_internal.h"

#include "first_stage.h"
#include "nets.h"

#include <math.h>
#include <string.h>

enum { STREAM_LATENT = 1, STREAM_DROP = 2, STREAM_T = 3, STREAM_NOISE = 4, STREAM_AE_SAMPLE = 5 };

static const char *const UNET_PREFIX = "model.diffusion_model.";
static const char *const COND_PREFIX = "cond_stage_model.";

/* Uniform in [0, 1) from Philox: draw i of `stream` at the seed. */
static double uniform01(uint64_t seed, uint64_t stream, uint64_t i)
{
    uint32_t ctr[4] = {(uint32_t)i, (uint32_t)(i >> 32), (uint32_t)stream, 0x7472u};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)}, o[4];
    ls_philox4x32_10(ctr, key, o);
    return (double)(((uint64_t)o[0] << 21) ^ (o[1] >> 11)) * (1.0 / 9007199254740992.0);
}

static int has_class_context(const ldm_trainer *t)
{
    return t->cfg.model.cond.kind == LD_COND_CLASS;
}

/* Records the diffusion network on the tape for latents x [B,E,h,w]. */
static ltp_id record_ldm(ldm_trainer *t, ltp_id x, int B)
{
    const ld_model *m = &t->cfg.model;
    ltp_id context = LTP_NONE;
    if (has_class_context(t)) {
        int lab = ltp_labels(t->tape, t->labels, B);
        context = ltn_class_embed(t->tape, t->ps, COND_PREFIX, m->cond.n_classes, m->cond.embed_dim, lab);
    }
    int y = m->unet.num_classes > 0 ? ltp_labels(t->tape, t->labels, B) : -1; /* label_emb */
    return ltn_unet_forward(t->tape, t->ps, UNET_PREFIX, &m->unet, x, t->tsteps_f, context, y);
}

static ltp_id record_ae(ldm_trainer *t, ltp_id x, ltp_id *moments)
{
    const ld_autoencoder *d = &t->cfg.model.first_stage;
    *moments = ltn_ae_encode(t->tape, t->ps, "", d, x);
    ltp_id z = ltp_gaussian_sample(t->tape, *moments, t->aux);
    return ltn_ae_decode(t->tape, t->ps, "", d, z);
}

ldm_status ltr_declare_params(ldm_trainer *t)
{
    ltp_reset(t->tape);
    int S = t->is_diffusion ? t->latent_size : t->image_size;
    int C = t->is_diffusion ? t->latent_channels : t->cfg.model.first_stage.in_channels;
    int64_t shape[4] = {1, C, S, S};
    memset(t->xt, 0, sizeof(float) * (size_t)C * S * S);
    ltp_id x = ltp_input(t->tape, 4, shape, t->xt, 0);
    if (t->is_diffusion) {
        t->labels[0] = 0;
        t->tsteps_f[0] = 0.0f;
        record_ldm(t, x, 1);
        if (t->cfg.learn_logvar && !ltp_params_find(t->ps, "logvar")) { /* nn.Parameter(full(logvar_init)) */
            int64_t T = t->sched->n;
            ldm_status st = ltp_params_set(t->ps, "logvar", 1, &T, t->logvar_fixed);
            if (st != LDM_OK) return st;
        }
    } else {
        memset(t->aux, 0, sizeof(float) * (size_t)t->cfg.model.first_stage.embed_dim * S * S);
        ltp_id moments;
        record_ae(t, x, &moments);
    }
    ldm_status st = ltp_status(t->tape);
    ltp_reset(t->tape);
    if (st != LDM_OK) return ldm_fail(st, "training network: %s", ltp_error(t->tape));
    return LDM_OK;
}

/* z = scale_factor * (KL: mean + std * noise, VQ: the pre-quantisation h) (get_first_stage_encoding);
 * with scale_by_std the first batch sets scale_factor = 1 / std(z). */
static ldm_status encode_latents(ldm_trainer *t, int64_t step, int B)
{
    int S = t->image_size, E = t->latent_channels, h = t->latent_size;
    size_t n = (size_t)B * E * h * h;
    ls_randn_fill(t->p.seed, STREAM_LATENT, (uint64_t)step * n, n, t->noise);
    LDM_TRY(ltr_first_stage_latents(t->fs, &t->c, t->images, B, S, t->noise, t->x0));
    if (!t->scale_factor_known) { /* torch's std(): unbiased, over every element of the batch */
        double s = 0.0, ss = 0.0;
        for (size_t i = 0; i < n; i++) s += t->x0[i];
        double mean = s / (double)n;
        for (size_t i = 0; i < n; i++) ss += (t->x0[i] - mean) * (t->x0[i] - mean);
        double sd = sqrt(ss / (double)(n > 1 ? n - 1 : 1));
        if (!(sd > 0)) return ldm_fail(LDM_ERR_NUMERIC, "scale_by_std: the first batch's latents have no spread");
        t->scale_factor = (float)(1.0 / sd);
        t->scale_factor_known = 1;
    }
    for (size_t i = 0; i < n; i++) t->x0[i] *= t->scale_factor;
    return LDM_OK;
}

static void drop_labels(ldm_trainer *t, int64_t step, int B)
{
    if (t->cond_drop <= 0 || t->uncond_class < 0) return;
    for (int b = 0; b < B; b++)
        if (uniform01(t->p.seed, STREAM_DROP, (uint64_t)step * B + b) < t->cond_drop) t->labels[b] = t->uncond_class;
}

static ldm_status ldm_micro_step(ldm_trainer *t, int64_t draw, int B, double weight, double *loss)
{
    const ld_model *m = &t->cfg.model;
    int E = t->latent_channels, h = t->latent_size, T = t->sched->n;
    size_t per = (size_t)E * h * h, n = (size_t)B * per;
    LDM_TRY(ltr_dataset_batch(t->data, t->p.seed, draw, B, t->images, t->labels, NULL));
    LDM_TRY(encode_latents(t, draw, B));
    drop_labels(t, draw, B);
    for (int b = 0; b < B; b++) {
        int ts = (int)(uniform01(t->p.seed, STREAM_T, (uint64_t)draw * B + b) * T);
        t->timesteps[b] = ts < T ? ts : T - 1;
        t->tsteps_f[b] = (float)t->timesteps[b];
    }
    ls_randn_fill(t->p.seed, STREAM_NOISE, (uint64_t)draw * n, n, t->noise);
    ltr_qtables q = {t->sched->buf[LS_SQRT_ALPHAS_CUMPROD], t->sched->buf[LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD]};
    ltr_prediction pred = m->parameterization == LD_PARAM_V ? LTR_PRED_V : m->parameterization == LD_PARAM_X0
                                                                               ? LTR_PRED_X0
                                                                               : LTR_PRED_EPS;
    ltr_q_sample(&q, t->x0, t->noise, t->timesteps, B, per, t->xt);
    ltr_target(pred, &q, t->x0, t->noise, t->timesteps, B, per, t->target);

    ltp_reset(t->tape);
    ltp_set_rng(t->tape, t->p.seed, (uint64_t)draw); /* dropout masks */
    int64_t shape[4] = {B, E, h, h};
    ltp_id x = ltp_input(t->tape, 4, shape, t->xt, 0);
    ltp_id out = record_ldm(t, x, B);
    if (out < 0) return ldm_fail(ltp_status(t->tape), "%s", ltp_error(t->tape));
    ltr_diffusion_loss lp;
    ltr_diffusion_loss_defaults(&lp);
    lp.type = t->cfg.loss_type;
    lp.l_simple_weight = t->cfg.l_simple_weight;
    lp.original_elbo_weight = t->cfg.original_elbo_weight;
    lp.lvlb_weights = t->lvlb;
    ltp_param *lv = t->cfg.learn_logvar ? ltp_params_find(t->ps, "logvar") : NULL;
    lp.logvar = lv ? lv->data : t->logvar_fixed;
    ltr_loss_terms terms;
    LDM_TRY(ltr_diffusion_loss_eval(&lp, ltp_data(t->tape, out), t->target, t->timesteps, B, per, T, &terms,
                                    t->dout, lv ? t->dlogvar : NULL));
    if (lv && lv->grad)
        for (int i = 0; i < T; i++) lv->grad[i] += (float)weight * t->dlogvar[i];
    for (size_t i = 0; i < n; i++) t->dout[i] *= (float)weight;
    LDM_TRY(ltp_seed_grad(t->tape, out, t->dout));
    LDM_TRY(ltp_backward(t->tape));
    *loss += terms.loss * weight;
    return LDM_OK;
}

static ldm_status ae_micro_step(ldm_trainer *t, int64_t draw, int B, double weight, double *loss)
{
    const ld_autoencoder *d = &t->cfg.model.first_stage;
    int S = t->image_size, f = 1 << (d->n_levels - 1), h = S / f, E = d->embed_dim;
    size_t per = (size_t)d->in_channels * S * S, zn = (size_t)B * E * h * h;
    LDM_TRY(ltr_dataset_batch(t->data, t->p.seed, draw, B, t->images, t->labels, NULL));
    ls_randn_fill(t->p.seed, STREAM_AE_SAMPLE, (uint64_t)draw * zn, zn, t->aux);
    ltp_reset(t->tape);
    int64_t shape[4] = {B, d->in_channels, S, S};
    ltp_id x = ltp_input(t->tape, 4, shape, t->images, 0), moments;
    ltp_id xrec = record_ae(t, x, &moments);
    if (xrec < 0) return ldm_fail(ltp_status(t->tape), "%s", ltp_error(t->tape));
    if (ltp_numel(t->tape, xrec) != (size_t)B * per)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "autoencoder: out_ch must equal in_channels to train reconstruction");
    double nll = ltr_ae_nll_l1(t->images, ltp_data(t->tape, xrec), B, per, (float)t->cfg.logvar_init, t->dout, NULL);
    size_t mn = ltp_numel(t->tape, moments);
    double kl = ltr_kl_diag_gaussian(ltp_data(t->tape, moments), B, E, (size_t)h * h, t->cfg.kl_weight, t->target);
    for (size_t i = 0; i < (size_t)B * per; i++) t->dout[i] *= (float)weight;
    for (size_t i = 0; i < mn; i++) t->target[i] *= (float)weight;
    LDM_TRY(ltp_seed_grad(t->tape, xrec, t->dout));
    LDM_TRY(ltp_seed_grad(t->tape, moments, t->target));
    LDM_TRY(ltp_backward(t->tape));
    *loss += (nll + t->cfg.kl_weight * kl) * weight;
    return LDM_OK;
}

ldm_status ltr_train_step(ldm_trainer *t, double *loss)
{
    int accum = t->cfg.accumulate_grad_batches;
    double lambda = 1.0, total = 0.0;
    LDM_TRY(ltr_config_lr_lambda(&t->cfg, t->prog.step, &lambda));
    ltp_params_zero_grad(t->ps);
    for (int k = 0; k < accum; k++) {
        int64_t draw = t->prog.step * accum + k;
        if (t->is_diffusion)
            LDM_TRY(ldm_micro_step(t, draw, t->batch, 1.0 / accum, &total));
        else
            LDM_TRY(ae_micro_step(t, draw, t->batch, 1.0 / accum, &total));
    }
    if (!isfinite(total)) return ldm_fail(LDM_ERR_NUMERIC, "training step %lld: the loss is %g", (long long)t->prog.step, total);
    LDM_TRY(ltr_adamw_step(t->opt, &t->c, t->lr * lambda));
    if (t->use_ema) ltr_ema_update(&t->ema, t->pairs, t->n_pairs);
    *loss = total;
    return LDM_OK;
}
