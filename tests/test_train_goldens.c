/* test_train_goldens.c - the training code (lib/train: tape, nets, losses, AdamW) against the
 * OFFICIAL PyTorch code: tests/golden/train_* were made by tests/reference/make_train_goldens.py
 * from CompVis/latent-diffusion's modules (commit in each case.json) with random weights; this
 * test never needs PyTorch. Per golden: the weights of model.safetensors are loaded into an
 * ltp_params, the tape runs forward and backward on the golden batch, and the loss, the network
 * output and every parameter's gradient must equal the reference's within case.json's
 * tolerances; then 3 optimiser steps (each recomputing the loss on the same batch) must give the
 * reference's parameters. LDM_GOLDEN_VERBOSE=1 prints how close every tensor came to its
 * tolerance.
 *  - train_unet: UNetModel (SpatialTransformer, context = ClassEmbedder(labels)),
 *    eps-prediction mse, AdamW(lr 1e-3, torch defaults);
 *  - train_unet_attn, train_unet_attn_neworder: UNetModel with legacy AttentionBlocks
 *    (QKVAttentionLegacy with num_heads and resblock_updown; QKVAttention with num_head_channels
 *    and use_scale_shift_norm) and label_emb (y = labels), LatentDiffusion.p_losses from x0 and
 *    noise with l_simple_weight, logvar (learned or not) and the vlb term (original_elbo_weight,
 *    eps and x0 lvlb_weights); the same gradients bit for bit with activation checkpointing off,
 *    forced, or under a memory budget;
 *  - train_ldm_vq: LatentDiffusion on a VQModelInterface first stage: encode_first_stage's
 *    pre-quantisation h, scale_factor, p_losses and the gradients of UNet and ClassEmbedder;
 *  - train_unet_noconv: UNetModel with conv_resample false (AvgPool2d Downsample, nearest Upsample
 *    without convolution): output, input and parameter gradients; the inference UNet's output;
 *  - train_ae: AutoencoderKL, sum|x - xrec| / B + kl_weight * KL / B through the sampled latent
 *    (noise given), Adam(lr 1e-3, betas (0.5, 0.9)). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ctx.h"
#include "core/json.h"
#include "io/weights.h"
#include "models/config.h"
#include "support/ck_pools.h"
#include "support/ck_run.h"
#include "support/fixture.h"
#include "models/autoencoder.h"
#include "models/unet.h"
#include "train/first_stage.h"
#include "train/loss.h"
#include "train/nets.h"
#include "train/optim.h"
#include "train/train_config.h"
#include "sampling/sampling.h"

static const char *golden_path(const char *golden, const char *file)
{
    static char path[1024];
    const char *slash = strrchr(__FILE__, '/');
    int dirlen = slash ? (int)(slash - __FILE__) : 0;
    snprintf(path, sizeof path, "%.*s%sgolden/%s/%s", dirlen, __FILE__, slash ? "/" : "", golden, file);
    return path;
}

typedef struct golden {
    lj_value *cas;
    lw_store *io;
    ld_model m;
    ltp_params *ps;
    size_t n_weights;
} golden;

static void expect_ok(ldm_status st, const char *what)
{
    ck_assert_msg(st == LDM_OK, "%s: %s (%s)", what, ldm_status_string(st), ldm_last_error());
}

static void golden_open(golden *g, const char *name)
{
    memset(g, 0, sizeof *g);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", golden_path(name, ""));
    expect_ok(fx_load_case(dir, &g->cas), "case.json");
    expect_ok(lw_open(golden_path(name, "io.safetensors"), 0, &g->io), "io.safetensors");
    expect_ok(ld_config_load(golden_path(name, "config.yaml"), &g->m), "config.yaml");
    lw_store *w;
    expect_ok(lw_open(golden_path(name, "model.safetensors"), 0, &w), "model.safetensors");
    expect_ok(ltp_params_create(1, &g->ps), "ltp_params_create");
    g->n_weights = lw_count(w);
    for (size_t i = 0; i < lw_count(w); i++) {
        const lw_tensor *t = lw_at(w, i);
        float *data;
        expect_ok(lw_get_f32(w, t->name, t->ndim, t->shape, &data), t->name);
        expect_ok(ltp_params_set(g->ps, t->name, t->ndim, t->shape, data), t->name);
        ldm_free(data);
    }
    lw_close(w);
    expect_ok(ltp_params_set_trainable(g->ps, "", 1), "set_trainable");
}

static void golden_close(golden *g)
{
    ltp_params_free(g->ps);
    lw_close(g->io);
    lj_free(g->cas);
}

/* An io tensor as float32 (caller frees with ldm_free); its element count in *n. */
static float *io_f32(const golden *g, const char *name, size_t *n)
{
    const lw_tensor *t = lw_find(g->io, name);
    ck_assert_msg(t != NULL, "io.safetensors has no '%s'", name);
    float *data;
    expect_ok(lw_get_f32(g->io, name, -1, NULL, &data), name);
    if (n) *n = t->nbytes / lw_dtype_size(t->dtype);
    return data;
}

static const int64_t *io_i64(const golden *g, const char *name, size_t *n)
{
    const lw_tensor *t = lw_find(g->io, name);
    ck_assert_msg(t != NULL && t->dtype == LW_I64, "io.safetensors has no I64 '%s'", name);
    *n = t->nbytes / sizeof(int64_t);
    return t->data;
}

/* got vs io tensor `name` with case.json's tolerance: |got - ref| <= atol + rtol |ref|. Returns
 * 1 when it passes; prints the worst element either way when verbose or failing. */
static int compare(const golden *g, const char *name, const float *got, size_t n)
{
    size_t rn;
    float *ref = io_f32(g, name, &rn);
    ck_assert_msg(rn == n, "%s: %zu elements, reference %zu", name, n, rn);
    fx_tolerance tol = fx_tolerance_for(g->cas, name);
    size_t bad = 0, worst = 0;
    double worst_ratio = -1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]), lim = tol.atol + tol.rtol * fabs(ref[i]);
        if (!(d <= lim)) bad++;
        double r = d / lim;
        if (r > worst_ratio || isnan(r)) worst_ratio = isnan(r) ? INFINITY : r, worst = i;
    }
    if (bad) {
        size_t at;
        double mx, err = ck_max_error(got, ref, n, &at, &mx);
        fprintf(
            stderr,
            "  %s: %zu of %zu outside tolerance; worst [%zu] got %.9g ref %.9g (atol %.3g rtol %.3g); max error %.3g, "
            "max |ref| %.3g\n",
            name, bad, n, worst, got[worst], ref[worst], tol.atol, tol.rtol, err, mx);
    }
    if (getenv("LDM_GOLDEN_VERBOSE"))
        printf("  %-90s worst |got-ref| / (atol + rtol |ref|) = %.3g\n", name, worst_ratio);
    ldm_free(ref);
    return bad == 0;
}

/* Every parameter's gradient (prefix "grad.") or value (prefix "after3.") against the golden. */
static void compare_params(const golden *g, const char *prefix)
{
    size_t failed = 0, n = ltp_params_count(g->ps);
    ck_assert_uint_eq(n, g->n_weights); /* the nets declared no parameter the golden lacks */
    for (size_t i = 0; i < n; i++) {
        const ltp_param *p = ltp_params_at(g->ps, i);
        char name[LTP_NAME_MAX + 16];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        const float *got = strcmp(prefix, "grad.") == 0 ? p->grad : p->data;
        ck_assert_ptr_nonnull(got);
        failed += !compare(g, name, got, p->n);
    }
    ck_assert_msg(failed == 0, "%zu of %zu parameters' %s disagree with PyTorch (see stderr)", failed, n, prefix);
}

static double call_param(const golden *g, const char *key, double def)
{
    const lj_value *calls = lj_get(g->cas, "calls");
    ck_assert(calls && calls->count >= 1);
    return lj_number(lj_get(lj_get(calls->items[0], "params"), key), def);
}

/* The optimiser of the golden: torch.optim.AdamW / Adam (Adam's weight decay is 0 here, where
 * the two are the same) with case.json's hyper-parameters, over every parameter. */
static ltr_adamw *make_optimizer(const golden *g, ltr_param **plist)
{
    size_t n = ltp_params_count(g->ps);
    *plist = calloc(n, sizeof **plist);
    for (size_t i = 0; i < n; i++) {
        ltp_param *p = ltp_params_at(g->ps, i);
        (*plist)[i] = (ltr_param){p->data, p->grad, p->n};
    }
    const lj_value *betas = lj_get(lj_get(lj_get(g->cas, "calls")->items[0], "params"), "betas");
    ck_assert(betas && betas->count == 2);
    ltr_adamw_config oc;
    ltr_adamw_defaults(&oc);
    oc.lr = call_param(g, "lr", -1);
    oc.beta1 = lj_number(betas->items[0], -1), oc.beta2 = lj_number(betas->items[1], -1);
    oc.eps = call_param(g, "eps", -1);
    oc.weight_decay = call_param(g, "weight_decay", -1);
    ltr_adamw *opt;
    expect_ok(ltr_adamw_create(*plist, n, &oc, &opt), "ltr_adamw_create");
    return opt;
}

/* ---------------------------------------------------------------- train_unet */

typedef struct unet_batch {
    float *xt, *noise, tf[16];
    int t[16];
    const int64_t *labels;
    int B;
    size_t per;
} unet_batch;

/* Forward + backward on the tape; returns the loss, the output in *out (tape-owned). */
static double unet_step(golden *g, ltp_tape *t, const unet_batch *b, const float **out)
{
    const ld_unet *d = &g->m.unet;
    ltp_reset(t);
    ltp_params_zero_grad(g->ps);
    int64_t xs[4] = {b->B, d->in_channels, 0, 0};
    xs[2] = xs[3] = (int64_t)sqrt((double)(b->per / (size_t)d->in_channels));
    ltp_id x = ltp_input(t, 4, xs, b->xt, 0);
    int lab = ltp_labels(t, b->labels, b->B);
    ltp_id ctx = ltn_class_embed(t, g->ps, "cond_stage_model.", g->m.cond.n_classes, g->m.cond.embed_dim, lab);
    ltp_id y = ltn_unet_forward(t, g->ps, "model.diffusion_model.", d, x, b->tf, ctx, -1);
    ck_assert_msg(y >= 0, "%s", ltp_error(t));
    ltr_diffusion_loss lp;
    ltr_diffusion_loss_defaults(&lp);
    ltr_loss_terms terms;
    size_t n = ltp_numel(t, y);
    float *dout = malloc(n * sizeof(float));
    expect_ok(
        ltr_diffusion_loss_eval(&lp, ltp_data(t, y), b->noise, b->t, b->B, b->per, g->m.timesteps, &terms, dout, NULL),
        "diffusion loss");
    expect_ok(ltp_seed_grad(t, y, dout), "seed");
    expect_ok(ltp_backward(t), "backward");
    free(dout);
    if (out) *out = ltp_data(t, y);
    return terms.loss;
}

START_TEST(unet_matches_pytorch)
{
    golden g;
    golden_open(&g, "train_unet");
    ck_assert(g.m.is_diffusion && g.m.cond.kind == LD_COND_CLASS && g.m.unet.use_spatial_transformer);
    unet_batch b;
    size_t nx, nt, nl, nn;
    b.xt = io_f32(&g, "x_t", &nx);
    b.noise = io_f32(&g, "noise", &nn);
    const int64_t *ts = io_i64(&g, "timesteps", &nt);
    b.labels = io_i64(&g, "labels", &nl);
    b.B = (int)nt;
    ck_assert(b.B >= 1 && b.B <= 16 && nl == nt && nn == nx);
    b.per = nx / (size_t)b.B;
    for (int i = 0; i < b.B; i++) b.t[i] = (int)ts[i], b.tf[i] = (float)ts[i];

    ltp_tape *t;
    expect_ok(ltp_tape_create(&ctxs[1], &t), "tape");
    const float *eps;
    float loss = (float)unet_step(&g, t, &b, &eps);
    ck_assert(compare(&g, "loss", &loss, 1));
    ck_assert(compare(&g, "eps", eps, nx));
    compare_params(&g, "grad.");

    ltr_param *plist;
    ltr_adamw *opt = make_optimizer(&g, &plist);
    int steps = (int)call_param(&g, "steps", 3);
    for (int s = 0; s < steps; s++) {
        if (s) unet_step(&g, t, &b, NULL);
        expect_ok(ltr_adamw_step(opt, &ctxs[1], ltr_adamw_lr(opt)), "adamw step");
    }
    compare_params(&g, "after3.");

    ltr_adamw_free(opt);
    free(plist);
    ltp_tape_free(t);
    ldm_free(b.xt), ldm_free(b.noise);
    golden_close(&g);
}
END_TEST

/* ---------------------------------------------------------------- train_unet_attn* */

typedef struct attn_run {
    golden *g;
    ltr_config cfg;
    ls_schedule *sched;
    float *lvlb, *logvar, *dlogvar, *x0, *noise, *xt, *target, tf[16];
    int t[16], B;
    const int64_t *labels;
    size_t per;
    ltp_param *logvar_p; /* learn_logvar: the parameter "logvar" */
} attn_run;

static void attn_open(attn_run *r, golden *g, const char *name)
{
    memset(r, 0, sizeof *r);
    r->g = g;
    golden_open(g, name);
    expect_ok(ltr_config_load(golden_path(name, "config.yaml"), &r->cfg), "ltr_config_load");
    const ld_model *m = &r->cfg.model;
    ck_assert(m->is_diffusion && !m->unet.use_spatial_transformer && m->unet.num_classes > 0);
    ck_assert(m->cond.kind == LD_COND_NONE);
    int T = m->timesteps;
    expect_ok(ls_schedule_make(LS_BETA_LINEAR, T, m->linear_start, m->linear_end, m->cosine_s, &r->sched), "sched");
    r->lvlb = malloc(sizeof(float) * (size_t)T);
    r->logvar = malloc(sizeof(float) * (size_t)T);
    r->dlogvar = malloc(sizeof(float) * (size_t)T);
    ltr_prediction pred = m->parameterization == LD_PARAM_X0 ? LTR_PRED_X0 : LTR_PRED_EPS;
    ltr_lvlb_weights(pred, r->sched->buf[LS_BETAS], r->sched->buf[LS_ALPHAS_CUMPROD],
                     r->sched->buf[LS_POSTERIOR_VARIANCE], T, r->lvlb);
    for (int i = 0; i < T; i++) r->logvar[i] = (float)r->cfg.logvar_init;
    r->logvar_p = ltp_params_find(g->ps, "logvar");
    ck_assert_int_eq(r->logvar_p != NULL, r->cfg.learn_logvar);
    size_t nx, nt, nl, nn;
    r->x0 = io_f32(g, "x0", &nx);
    r->noise = io_f32(g, "noise", &nn);
    const int64_t *ts = io_i64(g, "timesteps", &nt);
    r->labels = io_i64(g, "labels", &nl);
    r->B = (int)nt;
    ck_assert(r->B >= 1 && r->B <= 16 && nl == nt && nn == nx);
    r->per = nx / (size_t)r->B;
    for (int i = 0; i < r->B; i++) r->t[i] = (int)ts[i], r->tf[i] = (float)ts[i];
    r->xt = malloc(nx * sizeof(float));
    r->target = malloc(nx * sizeof(float));
    ltr_qtables q = {r->sched->buf[LS_SQRT_ALPHAS_CUMPROD], r->sched->buf[LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD]};
    ltr_q_sample(&q, r->x0, r->noise, r->t, r->B, r->per, r->xt);
    ltr_target(pred, &q, r->x0, r->noise, r->t, r->B, r->per, r->target);
}

static void attn_close(attn_run *r)
{
    free(r->lvlb), free(r->logvar), free(r->dlogvar), free(r->xt), free(r->target);
    ldm_free(r->x0), ldm_free(r->noise);
    ls_schedule_free(r->sched);
    golden_close(r->g);
}

/* p_losses forward and backward; the network as configured (d may differ from the golden's in
 * use_checkpoint). */
static ltr_loss_terms attn_step(attn_run *r, ltp_tape *t, const ld_unet *d, const float **out)
{
    ltp_reset(t);
    ltp_params_zero_grad(r->g->ps);
    int S = (int)sqrt((double)(r->per / (size_t)d->in_channels));
    int64_t xs[4] = {r->B, d->in_channels, S, S};
    ltp_id x = ltp_input(t, 4, xs, r->xt, 0);
    int lab = ltp_labels(t, r->labels, r->B);
    ltp_id y = ltn_unet_forward(t, r->g->ps, "model.diffusion_model.", d, x, r->tf, LTP_NONE, lab);
    ck_assert_msg(y >= 0, "%s", ltp_error(t));
    ltr_diffusion_loss lp;
    ltr_diffusion_loss_defaults(&lp);
    lp.l_simple_weight = r->cfg.l_simple_weight;
    lp.original_elbo_weight = r->cfg.original_elbo_weight;
    lp.lvlb_weights = r->lvlb;
    lp.logvar = r->logvar_p ? r->logvar_p->data : r->logvar;
    ltr_loss_terms terms;
    size_t n = ltp_numel(t, y);
    float *dout = malloc(n * sizeof(float));
    expect_ok(ltr_diffusion_loss_eval(&lp, ltp_data(t, y), r->target, r->t, r->B, r->per, r->cfg.model.timesteps,
                                      &terms, dout, r->dlogvar),
              "diffusion loss");
    if (r->logvar_p)
        for (int i = 0; i < r->cfg.model.timesteps; i++) r->logvar_p->grad[i] += r->dlogvar[i];
    expect_ok(ltp_seed_grad(t, y, dout), "seed");
    expect_ok(ltp_backward(t), "backward");
    free(dout);
    if (out) *out = ltp_data(t, y);
    return terms;
}

/* Every parameter's gradient, copied. */
static float **grads_copy(const golden *g)
{
    size_t n = ltp_params_count(g->ps);
    float **c = calloc(n, sizeof *c);
    for (size_t i = 0; i < n; i++) {
        const ltp_param *p = ltp_params_at(g->ps, i);
        c[i] = malloc(p->n * sizeof(float));
        memcpy(c[i], p->grad, p->n * sizeof(float));
    }
    return c;
}

static void grads_same(const golden *g, float **c, const char *what)
{
    size_t n = ltp_params_count(g->ps);
    for (size_t i = 0; i < n; i++) {
        const ltp_param *p = ltp_params_at(g->ps, i);
        ck_assert_msg(memcmp(c[i], p->grad, p->n * sizeof(float)) == 0, "%s: gradient of %s differs", what, p->name);
    }
}

static void grads_free(const golden *g, float **c)
{
    for (size_t i = 0; i < ltp_params_count(g->ps); i++) free(c[i]);
    free(c);
}

static void attn_golden(const char *name)
{
    golden g;
    attn_run r;
    attn_open(&r, &g, name);
    ck_assert(compare(&g, "lvlb_weights", r.lvlb, (size_t)r.cfg.model.timesteps));
    ltp_tape *t;
    expect_ok(ltp_tape_create(&ctxs[1], &t), "tape");
    const float *out;
    ld_unet d = r.cfg.model.unet;
    ltr_loss_terms terms = attn_step(&r, t, &d, &out);
    float loss = (float)terms.loss, vlb = (float)terms.loss_vlb;
    ck_assert(compare(&g, "loss", &loss, 1));
    ck_assert(compare(&g, "loss_vlb", &vlb, 1));
    ck_assert(compare(&g, "out", out, (size_t)r.B * r.per));
    compare_params(&g, "grad.");

    /* activation checkpointing: off, forced, and by a budget: the same gradients bit for bit,
     * less memory held at the peak */
    float **ref = grads_copy(&g);
    int dropped;
    size_t peak[3];
    for (int mode = 0; mode < 3; mode++) {
        ltp_tape *tm;
        expect_ok(ltp_tape_create(&ctxs[mode == 2 ? 2 : 1], &tm), "tape");
        d.use_checkpoint = mode == 1;
        if (mode == 2) ltp_set_activation_budget(tm, peak[0] / 3);
        attn_step(&r, tm, &d, NULL);
        int segs = ltp_segments(tm, &dropped);
        peak[mode] = ltp_peak_bytes(tm);
        grads_same(&g, ref, mode == 0 ? "no checkpointing" : mode == 1 ? "use_checkpoint" : "memory budget");
        if (mode == 0) ck_assert_int_eq(segs, 0);
        if (mode == 1) ck_assert(segs > 0 && dropped == segs);
        if (mode == 2) ck_assert(segs > 0 && dropped > 0 && dropped < segs);
        if (getenv("LDM_GOLDEN_VERBOSE"))
            printf("  %s: checkpointing mode %d: %d segments, %d recomputed, peak %zu bytes\n", name, mode, segs,
                   dropped, peak[mode]);
        ltp_tape_free(tm);
    }
    ck_assert(peak[1] < peak[0] && peak[2] < peak[0]);
    grads_free(&g, ref);
    d.use_checkpoint = r.cfg.model.unet.use_checkpoint;

    if (lw_find(g.io, "after3.model.diffusion_model.out.2.weight")) {
        ltr_param *plist;
        ltr_adamw *opt = make_optimizer(&g, &plist);
        int steps = (int)call_param(&g, "steps", 3);
        for (int s = 0; s < steps; s++) {
            if (s) attn_step(&r, t, &d, NULL);
            expect_ok(ltr_adamw_step(opt, &ctxs[1], ltr_adamw_lr(opt)), "adamw step");
        }
        compare_params(&g, "after3.");
        ltr_adamw_free(opt);
        free(plist);
    }
    ltp_tape_free(t);
    attn_close(&r);
}

START_TEST(attention_unet_matches_pytorch)
{
    attn_golden("train_unet_attn");
}
END_TEST

START_TEST(attention_unet_new_order_matches_pytorch)
{
    attn_golden("train_unet_attn_neworder");
}
END_TEST

/* ---------------------------------------------------------------- train_ae */

typedef struct ae_batch {
    float *x, *noise;
    int B, H, W;
} ae_batch;

static double ae_step(golden *g, ltp_tape *t, const ae_batch *b, double kl_weight, const float **moments_out,
                      const float **xrec_out)
{
    const ld_autoencoder *d = &g->m.first_stage;
    ltp_reset(t);
    ltp_params_zero_grad(g->ps);
    int64_t xs[4] = {b->B, d->in_channels, b->H, b->W};
    ltp_id x = ltp_input(t, 4, xs, b->x, 0);
    ltp_id moments = ltn_ae_encode(t, g->ps, "", d, x);
    ltp_id z = ltp_gaussian_sample(t, moments, b->noise);
    ltp_id xrec = ltn_ae_decode(t, g->ps, "", d, z);
    ck_assert_msg(xrec >= 0, "%s", ltp_error(t));
    size_t per = (size_t)d->in_channels * b->H * b->W, mn = ltp_numel(t, moments);
    ck_assert_uint_eq(ltp_numel(t, xrec), (size_t)b->B * per);
    float *dxrec = malloc((size_t)b->B * per * sizeof(float)), *dmom = malloc(mn * sizeof(float));
    double nll = ltr_ae_nll_l1(b->x, ltp_data(t, xrec), b->B, per, 0.0f, dxrec, NULL);
    int E = (int)ltp_dim(t, moments, 1) / 2;
    size_t hw = (size_t)ltp_dim(t, moments, 2) * (size_t)ltp_dim(t, moments, 3);
    double kl = ltr_kl_diag_gaussian(ltp_data(t, moments), b->B, E, hw, kl_weight, dmom);
    expect_ok(ltp_seed_grad(t, xrec, dxrec), "seed xrec");
    expect_ok(ltp_seed_grad(t, moments, dmom), "seed moments");
    expect_ok(ltp_backward(t), "backward");
    free(dxrec), free(dmom);
    if (moments_out) *moments_out = ltp_data(t, moments);
    if (xrec_out) *xrec_out = ltp_data(t, xrec);
    return nll + kl_weight * kl;
}

START_TEST(autoencoder_matches_pytorch)
{
    golden g;
    golden_open(&g, "train_ae");
    ck_assert(!g.m.is_diffusion && g.m.first_stage.present && !g.m.first_stage.is_vq);
    const lw_tensor *xt = lw_find(g.io, "x");
    ck_assert(xt && xt->ndim == 4);
    ae_batch b = {io_f32(&g, "x", NULL), io_f32(&g, "noise", NULL), (int)xt->shape[0], (int)xt->shape[2],
                  (int)xt->shape[3]};
    double kl_weight = call_param(&g, "kl_weight", -1);
    ck_assert(kl_weight >= 0);

    ltp_tape *t;
    expect_ok(ltp_tape_create(&ctxs[1], &t), "tape");
    const float *moments, *xrec;
    float loss = (float)ae_step(&g, t, &b, kl_weight, &moments, &xrec);
    ck_assert(compare(&g, "loss", &loss, 1));
    size_t nm, nr;
    ldm_free(io_f32(&g, "moments", &nm)), ldm_free(io_f32(&g, "xrec", &nr));
    ck_assert(compare(&g, "moments", moments, nm));
    ck_assert(compare(&g, "xrec", xrec, nr));
    compare_params(&g, "grad.");

    ltr_param *plist;
    ltr_adamw *opt = make_optimizer(&g, &plist);
    int steps = (int)call_param(&g, "steps", 3);
    for (int s = 0; s < steps; s++) {
        if (s) ae_step(&g, t, &b, kl_weight, NULL, NULL);
        expect_ok(ltr_adamw_step(opt, &ctxs[1], ltr_adamw_lr(opt)), "adam step");
    }
    compare_params(&g, "after3.");

    ltr_adamw_free(opt);
    free(plist);
    ltp_tape_free(t);
    ldm_free(b.x), ldm_free(b.noise);
    golden_close(&g);
}
END_TEST

/* ---------------------------------------------------------------- train_ldm_vq */

/* LatentDiffusion on a VQModelInterface first stage: the latents of the images through the
 * trainer's own ltr_first_stage_latents (the inference VQ encoder, frozen, no quantisation) equal
 * encode_first_stage's h, times scale_factor get_first_stage_encoding's z; then p_losses and the
 * gradients of the UNet and the ClassEmbedder (the first stage's own weights get none). */
START_TEST(vq_first_stage_ldm_matches_pytorch)
{
    golden g;
    golden_open(&g, "train_ldm_vq");
    const ld_model *m = &g.m;
    ck_assert(m->is_diffusion && m->first_stage.is_vq && m->cond.kind == LD_COND_CLASS);
    lw_store *w;
    expect_ok(lw_open(golden_path("train_ldm_vq", "model.safetensors"), 0, &w), "model.safetensors");
    lae *fs;
    expect_ok(lae_create(&m->first_stage, w, "first_stage_model.", &fs), "VQ first stage");
    const lw_tensor *xt = lw_find(g.io, "x");
    ck_assert(xt && xt->ndim == 4 && xt->shape[1] == 3 && xt->shape[2] == xt->shape[3]);
    int B = (int)xt->shape[0], S = (int)xt->shape[2];
    float *x = io_f32(&g, "x", NULL);
    size_t nz, nt, nl;
    float *noise = io_f32(&g, "noise", &nz), *z = malloc(nz * sizeof(float));
    expect_ok(ltr_first_stage_latents(fs, &ctxs[1], x, B, S, NULL, z), "first stage latents");
    ck_assert(compare(&g, "h", z, nz));
    for (size_t i = 0; i < nz; i++) z[i] *= (float)m->scale_factor;
    ck_assert(compare(&g, "z", z, nz));

    const int64_t *ts = io_i64(&g, "timesteps", &nt);
    const int64_t *labels = io_i64(&g, "labels", &nl);
    ck_assert(nt == (size_t)B && nl == (size_t)B && B <= 16);
    ls_schedule *sched;
    expect_ok(ls_schedule_make(LS_BETA_LINEAR, m->timesteps, m->linear_start, m->linear_end, m->cosine_s, &sched),
              "schedule");
    ltr_qtables q = {sched->buf[LS_SQRT_ALPHAS_CUMPROD], sched->buf[LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD]};
    unet_batch b = {.xt = malloc(nz * sizeof(float)), .noise = noise, .labels = labels, .B = B, .per = nz / B};
    for (int i = 0; i < B; i++) b.t[i] = (int)ts[i], b.tf[i] = (float)ts[i];
    ltr_q_sample(&q, z, noise, b.t, B, b.per, b.xt);

    ltp_tape *t;
    expect_ok(ltp_tape_create(&ctxs[1], &t), "tape");
    const float *eps;
    float loss = (float)unet_step(&g, t, &b, &eps);
    ck_assert(compare(&g, "loss", &loss, 1));
    ck_assert(compare(&g, "eps", eps, nz));
    size_t failed = 0, checked = 0;
    for (size_t i = 0; i < ltp_params_count(g.ps); i++) {
        const ltp_param *p = ltp_params_at(g.ps, i);
        char name[LTP_NAME_MAX + 16];
        snprintf(name, sizeof name, "grad.%s", p->name);
        int trained = strncmp(p->name, "first_stage_model.", 18) != 0;
        ck_assert_msg(trained == (lw_find(g.io, name) != NULL), "%s: gradient expected iff trained", p->name);
        if (!trained) continue;
        failed += !compare(&g, name, p->grad, p->n);
        checked++;
    }
    ck_assert_msg(failed == 0, "%zu of %zu gradients disagree with PyTorch (see stderr)", failed, checked);
    ck_assert_uint_gt(checked, 40);

    ltp_tape_free(t);
    ls_schedule_free(sched);
    free(b.xt), free(z);
    ldm_free(x), ldm_free(noise);
    lae_free(fs);
    lw_close(w);
    golden_close(&g);
}
END_TEST

/* ---------------------------------------------------------------- train_unet_noconv */

/* UNetModel(conv_resample=False): Downsample is AvgPool2d(2, 2) and Upsample nearest x2, neither
 * with weights. The tape UNet's output, d sum(r * out) / dx and every parameter's gradient equal
 * the reference's; the inference UNet (lib/models) gives the same output. */
START_TEST(unet_without_conv_resample_matches_pytorch)
{
    golden g;
    golden_open(&g, "train_unet_noconv");
    const ld_unet *d = &g.m.unet;
    ck_assert(d->no_conv_resample && !d->resblock_updown && d->n_levels == 3);
    const lw_tensor *xt = lw_find(g.io, "x");
    ck_assert(xt && xt->ndim == 4);
    int B = (int)xt->shape[0];
    size_t nx, nt, nr;
    float *x = io_f32(&g, "x", &nx), *r = io_f32(&g, "r", &nr), tf[16];
    const int64_t *ts = io_i64(&g, "timesteps", &nt);
    ck_assert(nt == (size_t)B && B <= 16 && nr == nx);
    for (int i = 0; i < B; i++) tf[i] = (float)ts[i];

    ltp_tape *t;
    expect_ok(ltp_tape_create(&ctxs[1], &t), "tape");
    ltp_id xi = ltp_input(t, 4, xt->shape, x, 1);
    ltp_id y = ltn_unet_forward(t, g.ps, "model.diffusion_model.", d, xi, tf, LTP_NONE, -1);
    ck_assert_msg(y >= 0, "%s", ltp_error(t));
    ck_assert(compare(&g, "out", ltp_data(t, y), nx));
    expect_ok(ltp_seed_grad(t, y, r), "seed");
    expect_ok(ltp_backward(t), "backward");
    ck_assert(compare(&g, "grad.x", ltp_grad(t, xi), nx));
    compare_params(&g, "grad.");

    lw_store *w;
    expect_ok(lw_open(golden_path("train_unet_noconv", "model.safetensors"), 0, &w), "model.safetensors");
    lunet *n;
    expect_ok(lunet_create(d, w, "model.diffusion_model.", 0, &n), "inference UNet");
    ldm_tensor *xin = lt_new_f32(4, xt->shape), *tin = lt_new_i64(1, (int64_t[]){B}), *out = NULL;
    memcpy(xin->data, x, nx * sizeof(float));
    memcpy(tin->data, ts, (size_t)B * sizeof(int64_t));
    expect_ok(lunet_forward(n, &ctxs[1], xin, tin, NULL, NULL, &out), "inference forward");
    ck_assert(compare(&g, "out", lt_f32(out), nx));

    ldm_tensor_free(out), ldm_tensor_free(xin), ldm_tensor_free(tin);
    lunet_free(n);
    lw_close(w);
    ltp_tape_free(t);
    ldm_free(x), ldm_free(r);
    golden_close(&g);
}
END_TEST

static Suite *goldens_suite(void)
{
    Suite *s = suite_create("train_goldens");
    TCase *tc = tcase_create("pytorch");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup_pools, teardown_pools);
    tcase_add_test(tc, unet_matches_pytorch);
    tcase_add_test(tc, autoencoder_matches_pytorch);
    tcase_add_test(tc, attention_unet_matches_pytorch);
    tcase_add_test(tc, attention_unet_new_order_matches_pytorch);
    tcase_add_test(tc, vq_first_stage_ldm_matches_pytorch);
    tcase_add_test(tc, unet_without_conv_resample_matches_pytorch);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(goldens_suite());
}
