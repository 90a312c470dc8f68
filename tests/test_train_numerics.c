/* test_train_numerics.c - the optimiser and training-loop numerics of lib/train (optim.h, loss.h)
 * and the safetensors writer (lib/io/st_write.c):
 *  - AdamW: a first step worked out by hand, then several steps with weight decay against a
 *    double-precision implementation of the textbook formula written here; threads change nothing;
 *  - clip_grad_norm, LitEma warm-up, every LR schedule at steps computed by hand from the
 *    reference formulas (stated beside each value);
 *  - the diffusion and autoencoder losses: values by hand and gradients against central finite
 *    differences;
 *  - safetensors: round trip through lw_open (names, shapes, dtypes, values, metadata), hostile
 *    names, refusals, and the atomic replace (a failed write leaves the old file as it was). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/ctx.h"
#include "core/json.h"
#include "io/weights.h"
#include "support/ck_child.h"
#include "support/ck_rand.h"
#include "support/ck_tmpdir.h"
#include "train/loss.h"
#include "train/optim.h"

/* ---- helpers */


static float *frand_buf(size_t n, double scale)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = (float)(urand() * scale);
    return p;
}

#define ASSERT_NEAR(got, want, tol)                                                                                  \
    ck_assert_msg(fabs((double)(got) - (double)(want)) <= (tol), "%s = %.12g, want %.12g (tol %g)", #got,           \
                  (double)(got), (double)(want), (double)(tol))

/* ---------------------------------------------------------------- AdamW */

/* One parameter 1.0 with gradient 0.5, lr 0.1, weight decay 0.01, betas (0.9, 0.999), eps 1e-8:
 *   p = 1 * (1 - 0.1*0.01) = 0.999;  m = 0.1 * 0.5 = 0.05;  v = 0.001 * 0.25 = 0.00025
 *   m_hat = 0.05 / 0.1 = 0.5;  v_hat = 0.00025 / 0.001 = 0.25;  sqrt(v_hat) = 0.5
 *   p = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.999 - 0.09999999800 = 0.89900000200
 * (the first Adam step moves by lr * sign(g), less the decay). */
START_TEST(adamw_first_step_by_hand)
{
    float p[2] = {1.0f, -2.0f}, g[2] = {0.5f, -3.0f};
    ltr_param prm = {p, g, 2};
    ltr_adamw_config cfg;
    ltr_adamw_defaults(&cfg);
    ck_assert(cfg.lr == 1e-3 && cfg.beta1 == 0.9 && cfg.beta2 == 0.999 && cfg.eps == 1e-8 && cfg.weight_decay == 1e-2);
    ltr_adamw *opt = NULL;
    ck_assert_int_eq(ltr_adamw_create(&prm, 1, &cfg, &opt), LDM_OK);
    ck_assert_int_eq(ltr_adamw_step(opt, NULL, 0.1), LDM_OK);
    ASSERT_NEAR(p[0], 0.899000002, 1e-7);
    /* -2 * 0.999 = -1.998; g < 0 so the step is +0.1 (to within 1e-8 relative): -1.898 */
    ASSERT_NEAR(p[1], -1.89799999, 1e-6);
    float *m, *v;
    int64_t step;
    ltr_adamw_state(opt, 0, &m, &v, &step);
    ck_assert_int_eq(step, 1);
    ASSERT_NEAR(m[0], 0.05, 1e-9);
    ASSERT_NEAR(v[0], 0.00025, 1e-10);
    ltr_adamw_free(opt);
}
END_TEST

/* Textbook AdamW (Loshchilov & Hutter as torch implements it) in double. */
typedef struct {
    double *p, *m, *v;
    int64_t step;
} ref_adamw;

static void ref_adamw_step(ref_adamw *r, const float *g, size_t n, const ltr_adamw_config *c, double lr)
{
    r->step++;
    double bc1 = 1.0 - pow(c->beta1, (double)r->step), bc2 = 1.0 - pow(c->beta2, (double)r->step);
    for (size_t i = 0; i < n; i++) {
        r->p[i] *= 1.0 - lr * c->weight_decay;
        r->m[i] = c->beta1 * r->m[i] + (1.0 - c->beta1) * g[i];
        r->v[i] = c->beta2 * r->v[i] + (1.0 - c->beta2) * (double)g[i] * g[i];
        double mh = r->m[i] / bc1, vh = r->v[i] / bc2;
        r->p[i] -= lr * mh / (sqrt(vh) + c->eps);
    }
}

/* Two tensors and one without a gradient, 12 steps with a changing lr and fresh gradients. */
START_TEST(adamw_matches_double_reference)
{
    enum { NA = 37, NB = 5, STEPS = 12 };
    float *a = frand_buf(NA, 1.0), *b = frand_buf(NB, 2.0), *ga = frand_buf(NA, 1.0), *gb = frand_buf(NB, 1.0);
    float frozen[3] = {1, 2, 3};
    ltr_param prm[3] = {{a, ga, NA}, {frozen, NULL, 3}, {b, gb, NB}};
    ltr_adamw_config cfg = {1e-2, 0.8, 0.95, 1e-6, 0.05};
    ltr_adamw *opt = NULL;
    ck_assert_int_eq(ltr_adamw_create(prm, 3, &cfg, &opt), LDM_OK);
    ref_adamw ra = {calloc(NA, 8), calloc(NA, 8), calloc(NA, 8), 0}, rb = {calloc(NB, 8), calloc(NB, 8), calloc(NB, 8), 0};
    for (int i = 0; i < NA; i++) ra.p[i] = a[i];
    for (int i = 0; i < NB; i++) rb.p[i] = b[i];
    for (int s = 0; s < STEPS; s++) {
        double lr = 1e-2 * (1.0 + 0.25 * s);
        for (int i = 0; i < NA; i++) ga[i] = (float)urand();
        for (int i = 0; i < NB; i++) gb[i] = (float)(urand() * 1e-3); /* small gradients: eps matters */
        ck_assert_int_eq(ltr_adamw_step(opt, NULL, lr), LDM_OK);
        ref_adamw_step(&ra, ga, NA, &cfg, lr);
        ref_adamw_step(&rb, gb, NB, &cfg, lr);
    }
    for (int i = 0; i < NA; i++) ASSERT_NEAR(a[i], ra.p[i], 2e-6 * fmax(1.0, fabs(ra.p[i])));
    for (int i = 0; i < NB; i++) ASSERT_NEAR(b[i], rb.p[i], 2e-6 * fmax(1.0, fabs(rb.p[i])));
    ck_assert(frozen[0] == 1 && frozen[1] == 2 && frozen[2] == 3);
    int64_t step;
    ltr_adamw_state(opt, 1, NULL, NULL, &step);
    ck_assert_int_eq(step, 0);
    ltr_adamw_state(opt, 2, NULL, NULL, &step);
    ck_assert_int_eq(step, STEPS);
    ltr_adamw_free(opt);
    free(a), free(b), free(ga), free(gb);
    free(ra.p), free(ra.m), free(ra.v), free(rb.p), free(rb.m), free(rb.v);
}
END_TEST

/* Split over a pool (more than one 64K chunk) or not: the same bits. */
START_TEST(adamw_threads_bit_identical)
{
    enum { N = 150001 };
    float *p1 = frand_buf(N, 1.0), *g = frand_buf(N, 1.0), *p2 = malloc(sizeof(float) * N);
    memcpy(p2, p1, sizeof(float) * N);
    ltr_param a = {p1, g, N}, b = {p2, g, N};
    ltr_adamw_config cfg;
    ltr_adamw_defaults(&cfg);
    ltr_adamw *o1 = NULL, *o2 = NULL;
    ck_assert_int_eq(ltr_adamw_create(&a, 1, &cfg, &o1), LDM_OK);
    ck_assert_int_eq(ltr_adamw_create(&b, 1, &cfg, &o2), LDM_OK);
    lctx c = {0};
    c.pool = lpool_create(3);
    ck_assert_ptr_nonnull(c.pool);
    for (int s = 0; s < 3; s++) {
        ck_assert_int_eq(ltr_adamw_step(o1, NULL, 1e-3), LDM_OK);
        ck_assert_int_eq(ltr_adamw_step(o2, &c, 1e-3), LDM_OK);
    }
    ck_assert(memcmp(p1, p2, sizeof(float) * N) == 0);
    lpool_free(c.pool);
    ltr_adamw_free(o1);
    ltr_adamw_free(o2);
    free(p1), free(p2), free(g);
}
END_TEST

START_TEST(adamw_rejects_bad_config)
{
    float p = 0, g = 0;
    ltr_param prm = {&p, &g, 1};
    ltr_adamw_config cfg;
    ltr_adamw *opt = (ltr_adamw *)&p;
    ltr_adamw_defaults(&cfg);
    cfg.beta2 = 1.0;
    ck_assert_int_eq(ltr_adamw_create(&prm, 1, &cfg, &opt), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(opt);
    ltr_adamw_defaults(&cfg);
    cfg.eps = -1;
    ck_assert_int_eq(ltr_adamw_create(&prm, 1, &cfg, &opt), LDM_ERR_INVALID_ARGUMENT);
    ltr_adamw_defaults(&cfg);
    ck_assert_int_eq(ltr_adamw_create(&prm, 1, &cfg, &opt), LDM_OK);
    ck_assert_int_eq(ltr_adamw_step(opt, NULL, NAN), LDM_ERR_INVALID_ARGUMENT);
    ltr_adamw_free(opt);
}
END_TEST

/* ---------------------------------------------------------------- clip_grad_norm */

/* Gradients (3, 4) and (12): per-tensor norms 5 and 12, total sqrt(25 + 144) = 13. */
START_TEST(clip_grad_norm_values)
{
    float g1[2] = {3, 4}, g2[1] = {12}, p[3] = {0}, frozen_g = 1000;
    ltr_param prm[3] = {{p, g1, 2}, {p + 2, g2, 1}, {&frozen_g, NULL, 1}};
    double total = 0;
    /* max_norm 26 > 13: clip_coef = 26 / (13 + 1e-6) > 1, gradients untouched */
    ck_assert_int_eq(ltr_clip_grad_norm(prm, 3, 26.0, &total), LDM_OK);
    ck_assert(total == 13.0);
    ck_assert(g1[0] == 3 && g1[1] == 4 && g2[0] == 12);
    /* max_norm 6.5: every gradient times 6.5 / (13 + 1e-6), i.e. halved (to 1e-7) */
    ck_assert_int_eq(ltr_clip_grad_norm(prm, 3, 6.5, &total), LDM_OK);
    ck_assert(total == 13.0);
    float coef = (float)(6.5 / (13.0 + 1e-6));
    ck_assert(g1[0] == 3 * coef && g1[1] == 4 * coef && g2[0] == 12 * coef);
    ASSERT_NEAR(g1[0], 1.5, 1e-6);
    ck_assert_int_eq(ltr_clip_grad_norm(prm, 3, 1e9, &total), LDM_OK);
    ASSERT_NEAR(total, 6.5, 1e-5);
    /* a NaN gradient: LDM_ERR_NUMERIC, nothing scaled */
    g2[0] = NAN;
    float before = g1[0];
    ck_assert_int_eq(ltr_clip_grad_norm(prm, 3, 1.0, &total), LDM_ERR_NUMERIC);
    ck_assert(g1[0] == before);
}
END_TEST

/* ---------------------------------------------------------------- LitEma */

/* decay = min(0.9999, (1 + n) / (10 + n)) with n the count AFTER LitEma.forward's increment:
 * the formula at n = 0 is 1/10, but the first update (stored 0 -> 1) uses 2/11, then 3/12; a
 * stored count of 10 becomes 11 and uses 12/21. */
START_TEST(ema_warm_up)
{
    ck_assert(ltr_ema_decay_at(0.9999f, 0) == 1.0f / 10.0f);
    ck_assert(ltr_ema_decay_at(0.9999f, 1) == 2.0f / 11.0f);
    ck_assert(ltr_ema_decay_at(0.9999f, 10) == 11.0f / 20.0f);
    ck_assert(ltr_ema_decay_at(0.9999f, 100000) == 0.9999f); /* 100001/100010 = 0.99991 > 0.9999 */

    ltr_ema e;
    ck_assert_int_eq(ltr_ema_init(&e, 0.9999, 1), LDM_OK);
    ck_assert_int_eq(e.num_updates, 0);
    float shadow[2] = {1.0f, 4.0f}, param[2] = {0.0f, 2.0f};
    ltr_ema_pair pair = {shadow, param, 2};
    /* update 1: decay 2/11, shadow = s - (1 - 2/11)(s - p): 1 -> 2/11, 4 -> 4 - (9/11)*2 = 26/11 */
    ck_assert(ltr_ema_update(&e, &pair, 1) == 2.0f / 11.0f);
    ck_assert_int_eq(e.num_updates, 1);
    ASSERT_NEAR(shadow[0], 2.0 / 11.0, 1e-7);
    ASSERT_NEAR(shadow[1], 26.0 / 11.0, 1e-6);
    /* update 2: decay 3/12 = 1/4: 2/11 -> 2/11 * 1/4 = 1/22 */
    ck_assert(ltr_ema_update(&e, &pair, 1) == 3.0f / 12.0f);
    ASSERT_NEAR(shadow[0], 1.0 / 22.0, 1e-7);
    /* stored count 10: the update uses 12/21 */
    e.num_updates = 10;
    ck_assert(ltr_ema_update(&e, &pair, 1) == 12.0f / 21.0f);
    ck_assert_int_eq(e.num_updates, 11);

    /* use_num_upates off: num_updates stays -1, the decay is 0.9999 (float32) from the start */
    ck_assert_int_eq(ltr_ema_init(&e, 0.9999, 0), LDM_OK);
    shadow[0] = 1.0f, param[0] = 0.0f;
    ck_assert(ltr_ema_update(&e, &pair, 1) == 0.9999f);
    ck_assert_int_eq(e.num_updates, -1);
    ck_assert(shadow[0] == 1.0f - (1.0f - 0.9999f) * 1.0f);

    float out[2];
    float *outs[1] = {out};
    ltr_ema_copy_to(&pair, 1, outs);
    ck_assert(out[0] == shadow[0] && out[1] == shadow[1]);
    ck_assert_int_eq(ltr_ema_init(&e, 1.5, 1), LDM_ERR_INVALID_ARGUMENT);
}
END_TEST

/* ---------------------------------------------------------------- learning-rate schedules */

START_TEST(lr_warmup_cosine)
{
    /* LambdaWarmUpCosineScheduler(warm_up_steps=10, lr_min=0.1, lr_max=1, lr_start=0,
     * max_decay_steps=110):
     *   n < 10: (1 - 0) / 10 * n + 0           -> n=0: 0, n=5: 0.5
     *   else t = min((n - 10) / 100, 1), 0.1 + 0.5 * 0.9 * (1 + cos(t pi))
     *                                          -> n=10: 1.0, n=60: 0.55, n=110: 0.1, n=1000: 0.1 */
    ltr_warmup_cosine s = {10, 0.1, 1.0, 0.0, 110};
    const int64_t n[] = {0, 5, 10, 60, 110, 1000};
    const double want[] = {0.0, 0.5, 1.0, 0.55, 0.1, 0.1};
    for (size_t i = 0; i < 6; i++) {
        double f = -1;
        ck_assert_int_eq(ltr_lr_warmup_cosine(&s, n[i], &f), LDM_OK);
        ASSERT_NEAR(f, want[i], 1e-12);
    }
}
END_TEST

START_TEST(lr_warmup_cosine2)
{
    /* LambdaWarmUpCosineScheduler2(warm_up_steps=[5, 0], f_min=[0.1, 0.2], f_max=[1, 0.6],
     * f_start=[0, 0], cycle_lengths=[20, 10]); cum_cycles = [0, 20, 30]:
     *   n=0: 0;  n=4: 1/5 * 4 = 0.8;  n=5: t=0 -> 1.0
     *   n=20: still cycle 0 (n <= 20), t = 15/15 = 1 -> 0.1
     *   n=21: cycle 1, local 1, t = 1/10: 0.2 + 0.5 * 0.4 * (1 + cos(0.1 pi)) = 0.590211303259031
     *   n=25: t = 0.5 -> 0.4;  n=30: t = 1 -> 0.2;  n=31: past the last cycle (error) */
    const double warm[] = {5, 0}, fmin[] = {0.1, 0.2}, fmax[] = {1, 0.6}, fstart[] = {0, 0}, len[] = {20, 10};
    ltr_cycles s = {2, warm, fmin, fmax, fstart, len};
    const int64_t n[] = {0, 4, 5, 20, 21, 25, 30};
    const double want[] = {0.0, 0.8, 1.0, 0.1, 0.590211303259031, 0.4, 0.2};
    for (size_t i = 0; i < 7; i++) {
        double f = -1;
        ck_assert_int_eq(ltr_lr_warmup_cosine2(&s, n[i], &f), LDM_OK);
        ASSERT_NEAR(f, want[i], 1e-12);
    }
    double f;
    ck_assert_int_eq(ltr_lr_warmup_cosine2(&s, 31, &f), LDM_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(lr_linear)
{
    /* Stable Diffusion v1's LambdaLinearScheduler: warm_up_steps [10000], f_start [1e-6],
     * f_max [1], f_min [1], cycle_lengths [1e13]:
     *   n=0: 1e-6;  n=5000: (1 - 1e-6) / 10000 * 5000 + 1e-6 = 0.5000005;  n>=10000: 1 */
    const double warm[] = {10000}, fmin[] = {1}, fmax[] = {1}, fstart[] = {1e-6}, len[] = {1e13};
    ltr_cycles sd = {1, warm, fmin, fmax, fstart, len};
    double f;
    ck_assert_int_eq(ltr_lr_linear(&sd, 0, &f), LDM_OK);
    ASSERT_NEAR(f, 1e-6, 1e-18);
    ck_assert_int_eq(ltr_lr_linear(&sd, 5000, &f), LDM_OK);
    ASSERT_NEAR(f, 0.5000005, 1e-15);
    ck_assert_int_eq(ltr_lr_linear(&sd, 10000, &f), LDM_OK);
    ck_assert(f == 1.0);
    /* A decaying cycle: warm_up_steps [2], f_start [0.5], f_max [1], f_min [0], cycle [10]:
     *   n=1: 0.5 / 2 * 1 + 0.5 = 0.75
     *   n=2: 0 + 1 * (10 - 2) / 10 = 0.8 (the line starts from f_max at the cycle start, so it
     *        is already below f_max when the warm-up ends: the reference's formula)
     *   n=10: 0;  n=11: past the last cycle (error) */
    const double w2[] = {2}, mn2[] = {0}, mx2[] = {1}, st2[] = {0.5}, len2[] = {10};
    ltr_cycles s = {1, w2, mn2, mx2, st2, len2};
    ck_assert_int_eq(ltr_lr_linear(&s, 1, &f), LDM_OK);
    ASSERT_NEAR(f, 0.75, 1e-15);
    ck_assert_int_eq(ltr_lr_linear(&s, 2, &f), LDM_OK);
    ASSERT_NEAR(f, 0.8, 1e-15);
    ck_assert_int_eq(ltr_lr_linear(&s, 10, &f), LDM_OK);
    ck_assert(f == 0.0);
    ck_assert_int_eq(ltr_lr_linear(&s, 11, &f), LDM_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(lr_constant_and_scale)
{
    /* constant with 4 warm-up steps: n / 4 below 4, then 1; no warm-up: 1 from the start */
    ck_assert(ltr_lr_constant_warmup(4, 0) == 0.0);
    ck_assert(ltr_lr_constant_warmup(4, 2) == 0.5);
    ck_assert(ltr_lr_constant_warmup(4, 4) == 1.0);
    ck_assert(ltr_lr_constant_warmup(4, 100) == 1.0);
    ck_assert(ltr_lr_constant_warmup(0, 0) == 1.0);
    /* configs/autoencoder/autoencoder_kl_32x32x4.yaml: base_learning_rate 4.5e-6, batch_size 12,
     * accumulate_grad_batches 2, one GPU: 2 * 1 * 12 * 4.5e-6 = 1.08e-4 */
    ASSERT_NEAR(ltr_scale_lr(2, 1, 12, 4.5e-6), 1.08e-4, 1e-18);
    ck_assert(ltr_scale_lr(1, 8, 4, 1e-4) == 32 * 1e-4);
}
END_TEST

/* ---------------------------------------------------------------- losses */

/* sqrt_acp 0.6, sqrt_1m_acp 0.8 at t = 1: x_t = 0.6 x0 + 0.8 n; v = 0.6 n - 0.8 x0. */
START_TEST(q_sample_and_targets)
{
    const float sa[2] = {1.0f, 0.6f}, so[2] = {0.0f, 0.8f};
    ltr_qtables q = {sa, so};
    const float x0[4] = {1, 2, 3, 4}, noise[4] = {0.5f, -1, 2, 0};
    const int t[2] = {0, 1};
    float xt[4], tg[4];
    ltr_q_sample(&q, x0, noise, t, 2, 2, xt);
    ck_assert(xt[0] == 1 && xt[1] == 2);
    ASSERT_NEAR(xt[2], 0.6 * 3 + 0.8 * 2, 1e-6);
    ASSERT_NEAR(xt[3], 0.6 * 4, 1e-6);
    ltr_target(LTR_PRED_V, &q, x0, noise, t, 2, 2, tg);
    ck_assert(tg[0] == 0.5f && tg[1] == -1.0f); /* t = 0 here: v = noise */
    ASSERT_NEAR(tg[2], 0.6 * 2 - 0.8 * 3, 1e-6);
    ASSERT_NEAR(tg[3], -0.8 * 4, 1e-6);
    ltr_target(LTR_PRED_EPS, &q, x0, noise, t, 2, 2, tg);
    ck_assert(memcmp(tg, noise, sizeof tg) == 0);
    ltr_target(LTR_PRED_X0, &q, x0, noise, t, 2, 2, tg);
    ck_assert(memcmp(tg, x0, sizeof tg) == 0);
}
END_TEST

/* lvlb_weights for eps from a 3-step schedule, by hand: betas (0.1, 0.2, 0.3), alphas (0.9, 0.8,
 * 0.7), acp (0.9, 0.72, 0.504); posterior_variance[t] = beta_t (1 - acp[t-1]) / (1 - acp[t]):
 * t=1: 0.2 * 0.1 / 0.28; w1 = 0.04 / (2 * pv1 * 0.8 * 0.28) = 0.04 / 0.032 = 1.25
 * t=2: 0.3 * 0.28 / 0.496; w2 = 0.09 / (2 * pv2 * 0.7 * 0.496) = 0.09 / 0.1176 = 0.7653061...
 * and w0 = w1. */
START_TEST(lvlb_weights_by_hand)
{
    const float betas[3] = {0.1f, 0.2f, 0.3f}, acp[3] = {0.9f, 0.72f, 0.504f};
    const float pv[3] = {0.0f, (float)(0.2 * 0.1 / 0.28), (float)(0.3 * 0.28 / 0.496)};
    float w[3];
    ltr_lvlb_weights(LTR_PRED_EPS, betas, acp, pv, 3, w);
    ASSERT_NEAR(w[1], 1.25, 1e-5);
    ASSERT_NEAR(w[2], 0.09 / 0.1176, 1e-5);
    ck_assert(w[0] == w[1]);
    ltr_lvlb_weights(LTR_PRED_V, betas, acp, pv, 3, w);
    ck_assert(w[0] == 1 && w[1] == 1 && w[2] == 1);
    ltr_lvlb_weights(LTR_PRED_X0, betas, acp, pv, 3, w);
    ASSERT_NEAR(w[2], 0.5 * sqrt(0.504) / (2 - 0.504), 1e-6);
}
END_TEST

/* loss(out) with `out` perturbed at element i by +-h, as a float input. */
static double diff_loss(const ltr_diffusion_loss *p, float *out, const float *tg, const int *t, int B, size_t per,
                        int T, size_t i, double h, double *step)
{
    float keep = out[i];
    ltr_loss_terms lp, lm;
    out[i] = (float)(keep + h);
    float up = out[i];
    ck_assert_int_eq(ltr_diffusion_loss_eval(p, out, tg, t, B, per, T, &lp, NULL, NULL), LDM_OK);
    out[i] = (float)(keep - h);
    float dn = out[i];
    ck_assert_int_eq(ltr_diffusion_loss_eval(p, out, tg, t, B, per, T, &lm, NULL, NULL), LDM_OK);
    out[i] = keep;
    *step = (double)up - dn;
    return lp.loss - lm.loss;
}

/* With the defaults the loss is mse_loss over everything: sum (o - t)^2 / (B * per). */
START_TEST(diffusion_loss_defaults_is_mse)
{
    ltr_diffusion_loss p;
    ltr_diffusion_loss_defaults(&p);
    const float out[6] = {1, 2, 3, 4, 5, 6}, tg[6] = {1, 0, 3, 1, 5, 5};
    const int t[2] = {7, 999};
    ltr_loss_terms r;
    ck_assert_int_eq(ltr_diffusion_loss_eval(&p, out, tg, t, 2, 3, 1000, &r, NULL, NULL), LDM_OK);
    /* squared errors 0, 4, 0 | 9, 0, 1: sum 14 over 6 elements */
    ASSERT_NEAR(r.loss, 14.0 / 6.0, 1e-15);
    ASSERT_NEAR(r.loss_simple, 14.0 / 6.0, 1e-15);
    ck_assert(r.loss_vlb == 0.0);
    p.type = LTR_LOSS_L1; /* |errors| 0, 2, 0 | 3, 0, 1: sum 6 over 6 */
    ck_assert_int_eq(ltr_diffusion_loss_eval(&p, out, tg, t, 2, 3, 1000, &r, NULL, NULL), LDM_OK);
    ASSERT_NEAR(r.loss, 1.0, 1e-15);
    const int bad[2] = {0, 1000};
    ck_assert_int_eq(ltr_diffusion_loss_eval(&p, out, tg, bad, 2, 3, 1000, &r, NULL, NULL), LDM_ERR_INVALID_ARGUMENT);
    p.original_elbo_weight = 1.0;
    ck_assert_int_eq(ltr_diffusion_loss_eval(&p, out, tg, t, 2, 3, 1000, &r, NULL, NULL), LDM_ERR_INVALID_ARGUMENT);
}
END_TEST

/* Every weight in play (l_simple_weight, a logvar table, original_elbo_weight with lvlb
 * weights), both loss types: d loss / d out and d loss / d logvar against central differences. */
START_TEST(diffusion_loss_gradients)
{
    enum { B = 3, PER = 5, T = 4 };
    const float logvar[T] = {0.3f, -0.2f, 0.0f, 0.7f}, lvlb[T] = {2.0f, 0.5f, 1.5f, 0.25f};
    const int t[B] = {1, 3, 1};
    for (int type = 0; type < 2; type++) {
        ltr_diffusion_loss p = {type ? LTR_LOSS_L1 : LTR_LOSS_L2, 0.7, 0.4, logvar, lvlb};
        float *out = frand_buf(B * PER, 1.0), *tg = frand_buf(B * PER, 1.0), dout[B * PER], dlv[T];
        ltr_loss_terms r;
        ck_assert_int_eq(ltr_diffusion_loss_eval(&p, out, tg, t, B, PER, T, &r, dout, dlv), LDM_OK);
        for (size_t i = 0; i < B * PER; i++) {
            double step, d = diff_loss(&p, out, tg, t, B, PER, T, i, 1e-3, &step);
            ASSERT_NEAR(dout[i], d / step, 1e-6 + 1e-5 * fabs(d / step));
        }
        float lvp[T];
        for (int k = 0; k < T; k++) {
            memcpy(lvp, logvar, sizeof lvp);
            ltr_diffusion_loss q = p;
            q.logvar = lvp;
            ltr_loss_terms a, b;
            lvp[k] = logvar[k] + 1e-3f;
            double up = lvp[k];
            ck_assert_int_eq(ltr_diffusion_loss_eval(&q, out, tg, t, B, PER, T, &a, NULL, NULL), LDM_OK);
            lvp[k] = logvar[k] - 1e-3f;
            ck_assert_int_eq(ltr_diffusion_loss_eval(&q, out, tg, t, B, PER, T, &b, NULL, NULL), LDM_OK);
            ASSERT_NEAR(dlv[k], (a.loss - b.loss) / (up - lvp[k]), 1e-6);
        }
        ck_assert(dlv[0] == 0.0f && dlv[2] == 0.0f); /* no sample drew t = 0 or 2 */
        free(out), free(tg);
    }
}
END_TEST

/* nll = sum(|x - xr| / exp(lv) + lv) / B. x - xr = (1, -2, 0.5, 0), B = 2, lv = 0: 3.5 / 2;
 * lv = ln 2: (3.5 / 2 + 4 ln 2) / 2. */
START_TEST(ae_nll_values_and_gradients)
{
    const float x[4] = {1, 0, 3, 2}, xr[4] = {0, 2, 2.5f, 2};
    float dxr[4];
    double dlv;
    ASSERT_NEAR(ltr_ae_nll_l1(x, xr, 2, 2, 0.0f, dxr, &dlv), 1.75, 1e-15);
    ck_assert(dxr[0] == -0.5f && dxr[1] == 0.5f && dxr[2] == -0.5f && dxr[3] == 0.0f);
    ASSERT_NEAR(dlv, (-3.5 + 4) / 2, 1e-15);
    float lv = (float)log(2.0);
    ASSERT_NEAR(ltr_ae_nll_l1(x, xr, 2, 2, lv, NULL, NULL), (3.5 / exp((double)lv) + 4.0 * lv) / 2, 1e-12);
    /* gradients against central differences on random data, lv = 0.3 */
    enum { B = 2, PER = 7 };
    float *a = frand_buf(B * PER, 1.0), *b = frand_buf(B * PER, 1.0), g[B * PER];
    ltr_ae_nll_l1(a, b, B, PER, 0.3f, g, &dlv);
    for (int i = 0; i < B * PER; i++) {
        float keep = b[i];
        b[i] = keep + 1e-3f;
        double up = b[i], lp = ltr_ae_nll_l1(a, b, B, PER, 0.3f, NULL, NULL);
        b[i] = keep - 1e-3f;
        double lm = ltr_ae_nll_l1(a, b, B, PER, 0.3f, NULL, NULL);
        ASSERT_NEAR(g[i], (lp - lm) / (up - b[i]), 1e-6);
        b[i] = keep;
    }
    float lp = 0.3f + 1e-3f, lm = 0.3f - 1e-3f;
    double fd = (ltr_ae_nll_l1(a, b, B, PER, lp, NULL, NULL) - ltr_ae_nll_l1(a, b, B, PER, lm, NULL, NULL)) /
                ((double)lp - lm);
    ASSERT_NEAR(dlv, fd, 1e-6);
    free(a), free(b);
}
END_TEST

/* KL of N(mean, exp(lv)) from N(0, 1) per element: 0.5 (mean^2 + exp(lv) - 1 - lv).
 * Sample 0 (C = 1, HW = 2): mean (1, 0), lv (0, ln 2): 0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 2 - 1
 * - ln 2) = 0.5 + 0.5 (1 - ln 2). Sample 1: mean (0, 2), lv (25 -> clamped 20, -40 -> clamped
 * -30): 0.5 (exp(20) - 1 - 20) + 0.5 (4 + exp(-30) - 1 + 30). kl = (sum) / B. */
START_TEST(kl_values_and_gradients)
{
    const float ln2 = (float)log(2.0);
    const float mom[8] = {1, 0, 0, ln2, 0, 2, 25, -40};
    float d[8];
    double kl = ltr_kl_diag_gaussian(mom, 2, 1, 2, 1.0, d);
    double s0 = 0.5 + 0.5 * (exp((double)ln2) - 1 - (double)ln2);
    double s1 = 0.5 * (exp(20.0) - 1 - 20) + 0.5 * (4 + exp(-30.0) - 1 + 30);
    ASSERT_NEAR(kl, (s0 + s1) / 2, 1e-9 * s1);
    ck_assert(d[0] == 0.5f && d[1] == 0.0f && d[5] == 1.0f); /* d/dmean = mean / B */
    ASSERT_NEAR(d[3], 0.5 * (exp((double)ln2) - 1) / 2, 1e-7);
    ck_assert(d[6] == 0.0f && d[7] == 0.0f); /* clamped: no gradient */
    /* random moments, logvar within the clamp: scale * gradient against scale * differences */
    enum { B = 2, C = 3, HW = 4, N = B * 2 * C * HW };
    float *m = frand_buf(N, 1.5), g[N];
    ltr_kl_diag_gaussian(m, B, C, HW, 0.5, g);
    for (int i = 0; i < N; i++) {
        float keep = m[i], up = keep + 1e-3f, dn = keep - 1e-3f;
        m[i] = up;
        double lp = ltr_kl_diag_gaussian(m, B, C, HW, 1.0, NULL);
        m[i] = dn;
        double lm = ltr_kl_diag_gaussian(m, B, C, HW, 1.0, NULL);
        m[i] = keep;
        ASSERT_NEAR(g[i], 0.5 * (lp - lm) / ((double)up - dn), 1e-5);
    }
    free(m);
}
END_TEST

/* ---------------------------------------------------------------- safetensors writer */

static const char *const hostile_name = "we\"ird\\name/\x01tab\there \xc3\xa9\xe2\x82\xac";

typedef struct {
    float f32[6];
    float f16_src[5];
    uint16_t f16_raw[3];
    int64_t i64[3];
    int32_t i32[4];
    float scalar;
    lw_out_tensor t[7];
} st_fixture;

static void st_fixture_init(st_fixture *f)
{
    for (int i = 0; i < 6; i++) f->f32[i] = (float)i * 0.25f - 1.0f;
    for (int i = 0; i < 5; i++) f->f16_src[i] = (float)i * 1.5f - 3.0f; /* exact in half */
    for (int i = 0; i < 3; i++) f->f16_raw[i] = lw_f32_to_f16((float)(i + 1) * 0.5f);
    for (int i = 0; i < 3; i++) f->i64[i] = (int64_t)1 << (40 + i);
    for (int i = 0; i < 4; i++) f->i32[i] = -7 * i;
    f->scalar = 0.9999f;
    lw_out_tensor t[7] = {
        {"model.diffusion_model.w", LW_F32, 2, {2, 3}, f->f32, 0},
        {"half_from_f32", LW_F16, 1, {5}, f->f16_src, 1},
        {"half_raw", LW_F16, 2, {3, 1}, f->f16_raw, 0},
        {hostile_name, LW_I64, 1, {3}, f->i64, 0},
        {"ints", LW_I32, 2, {2, 2}, f->i32, 0},
        {"model_ema.decay", LW_F32, 0, {0}, &f->scalar, 0},
        {"empty", LW_F32, 2, {0, 4}, NULL, 0},
    };
    memcpy(f->t, t, sizeof t);
}

static const char *const meta_keys[] = {"format", "q\"uo\\te", "step"};
static const char *const meta_values[] = {"pt", "line1\nline2 \"x\"", "12345"};

static const lw_tensor *find_checked(const lw_store *s, const char *name, lw_dtype dt, int ndim, const int64_t *shape)
{
    const lw_tensor *t = lw_find(s, name);
    ck_assert_msg(t != NULL, "tensor %s missing", name);
    ck_assert_int_eq(t->dtype, dt);
    ck_assert_int_eq(t->ndim, ndim);
    for (int d = 0; d < ndim; d++) ck_assert_int_eq(t->shape[d], shape[d]);
    return t;
}

/* The header as JSON: length a multiple of 8, padded with spaces, every offset aligned to its
 * element size; the metadata map as written. */
static void check_header(const char *path)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    unsigned char len8[8];
    ck_assert_uint_eq(fread(len8, 1, 8, fp), 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | len8[i];
    ck_assert_uint_eq(n % 8, 0);
    char *h = malloc(n);
    ck_assert_uint_eq(fread(h, 1, n, fp), n);
    fclose(fp);
    size_t end = n;
    while (end && h[end - 1] == ' ') end--;
    ck_assert(end > 0 && h[end - 1] == '}' && n - end < 8);
    lj_value *root = lj_parse(h, n);
    ck_assert_msg(root != NULL, "%s", ldm_last_error());
    const lj_value *meta = lj_get(root, "__metadata__");
    ck_assert_ptr_nonnull(meta);
    ck_assert_uint_eq(meta->count, 3);
    for (int i = 0; i < 3; i++) ck_assert_str_eq(lj_string(lj_get(meta, meta_keys[i]), ""), meta_values[i]);
    for (size_t i = 0; i < root->count; i++) {
        if (strcmp(root->keys[i], "__metadata__") == 0) continue;
        const lj_value *off = lj_get(root->items[i], "data_offsets");
        const char *dt = lj_string(lj_get(root->items[i], "dtype"), "");
        int64_t b;
        ck_assert_int_eq(lj_int64(off->items[0], &b), 0);
        int64_t size = strcmp(dt, "I64") == 0 ? 8 : (dt[1] == '1' ? 2 : 4);
        ck_assert_msg(b % size == 0, "%s at %lld", root->keys[i], (long long)b);
    }
    lj_free(root);
    free(h);
}

START_TEST(st_write_round_trip)
{
    st_fixture f;
    st_fixture_init(&f);
    const char *path = ck_tmp_path("round.safetensors");
    ck_assert_msg(lw_write_safetensors(path, f.t, 7, meta_keys, meta_values, 3) == LDM_OK, "%s", ldm_last_error());
    lw_store *s = NULL;
    ck_assert_msg(lw_open(path, 0, &s) == LDM_OK, "%s", ldm_last_error());
    ck_assert_uint_eq(lw_count(s), 7);
    const lw_tensor *t = find_checked(s, "model.diffusion_model.w", LW_F32, 2, (int64_t[]){2, 3});
    ck_assert(memcmp(t->data, f.f32, sizeof f.f32) == 0);
    t = find_checked(s, "half_from_f32", LW_F16, 1, (int64_t[]){5});
    for (int i = 0; i < 5; i++) {
        uint16_t h;
        memcpy(&h, (const char *)t->data + 2 * i, 2);
        ck_assert(lw_f16_to_f32(h) == f.f16_src[i]);
    }
    t = find_checked(s, "half_raw", LW_F16, 2, (int64_t[]){3, 1});
    ck_assert(memcmp(t->data, f.f16_raw, sizeof f.f16_raw) == 0);
    t = find_checked(s, hostile_name, LW_I64, 1, (int64_t[]){3});
    ck_assert(memcmp(t->data, f.i64, sizeof f.i64) == 0);
    t = find_checked(s, "ints", LW_I32, 2, (int64_t[]){2, 2});
    ck_assert(memcmp(t->data, f.i32, sizeof f.i32) == 0);
    t = find_checked(s, "model_ema.decay", LW_F32, 0, NULL);
    ck_assert(memcmp(t->data, &f.scalar, 4) == 0);
    t = find_checked(s, "empty", LW_F32, 2, (int64_t[]){0, 4});
    ck_assert_uint_eq(t->nbytes, 0);
    float *w = NULL;
    ck_assert_int_eq(lw_get_f32(s, "half_from_f32", 1, (int64_t[]){5}, &w), LDM_OK);
    ck_assert(w[4] == 3.0f);
    ldm_free(w);
    lw_close(s);
    check_header(path);
    /* no tensors, no metadata: "{}" and padding, still a valid file */
    ck_assert_int_eq(lw_write_safetensors(path, NULL, 0, NULL, NULL, 0), LDM_OK);
    ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
    ck_assert_uint_eq(lw_count(s), 0);
    lw_close(s);
}
END_TEST

START_TEST(st_write_refusals)
{
    st_fixture f;
    st_fixture_init(&f);
    const char *path = ck_tmp_path("refused.safetensors");
    lw_out_tensor t[2] = {f.t[0], f.t[4]};
    t[1].name = t[0].name; /* a duplicate */
    ck_assert_int_eq(lw_write_safetensors(path, t, 2, NULL, NULL, 0), LDM_ERR_INVALID_ARGUMENT);
    t[1].name = "__metadata__";
    ck_assert_int_eq(lw_write_safetensors(path, t, 2, NULL, NULL, 0), LDM_ERR_INVALID_ARGUMENT);
    t[1].name = "bad\xc3(utf8";
    ck_assert_int_eq(lw_write_safetensors(path, t, 2, NULL, NULL, 0), LDM_ERR_INVALID_ARGUMENT);
    t[1].name = "ok";
    t[1].shape[0] = -1;
    ck_assert_int_eq(lw_write_safetensors(path, t, 2, NULL, NULL, 0), LDM_ERR_INVALID_ARGUMENT);
    t[1].shape[0] = 2;
    const char *dup_keys[2] = {"a", "a"}, *vals[2] = {"1", "2"};
    ck_assert_int_eq(lw_write_safetensors(path, t, 2, dup_keys, vals, 2), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(access(path, F_OK), -1); /* nothing was created */
    /* a directory is not replaced */
    ck_assert_int_eq(lw_write_safetensors(ck_tmpdir, t, 2, NULL, NULL, 0), LDM_ERR_INVALID_ARGUMENT);
    struct stat st;
    ck_assert_int_eq(stat(ck_tmpdir, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
}
END_TEST

/* A large tensor, for writes that must fail part-way. */
static float big[64 * 1024];

/* In a child: files may not grow past 16 KB (SIGXFSZ ignored, so writes fail with EFBIG). */
static int write_with_small_fsize(void *arg)
{
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {16384, 16384};
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0) return 90;
    lw_out_tensor t = {"big", LW_F32, 1, {64 * 1024}, big, 0};
    ldm_status st = lw_write_safetensors(arg, &t, 1, NULL, NULL, 0);
    if (st != LDM_ERR_IO) {
        fprintf(stderr, "expected LDM_ERR_IO, got %d: %s\n", (int)st, ldm_last_error());
        return 1;
    }
    return 0;
}

/* In a child: write over `arg` in a read-only folder. Root ignores permission bits, so a root
 * child first becomes nobody (65534), for whom the root-owned folder is read-only as well. */
static int write_into_readonly(void *arg)
{
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) return 91;
    float one = 1.0f;
    lw_out_tensor t = {"x", LW_F32, 1, {1}, &one, 0};
    ldm_status st = lw_write_safetensors(arg, &t, 1, NULL, NULL, 0);
    if (st != LDM_ERR_IO || !strstr(ldm_last_error(), arg)) {
        fprintf(stderr, "expected LDM_ERR_IO naming the path, got %d: %s\n", (int)st, ldm_last_error());
        return 1;
    }
    return 0;
}

static int count_tmp_files(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) n += strstr(de->d_name, ".tmp") != NULL;
    closedir(d);
    return n;
}

static void expect_original(const char *path, const st_fixture *f)
{
    lw_store *s = NULL;
    ck_assert_msg(lw_open(path, 0, &s) == LDM_OK, "%s", ldm_last_error());
    ck_assert_uint_eq(lw_count(s), 7);
    const lw_tensor *t = lw_find(s, "model.diffusion_model.w");
    ck_assert(t && memcmp(t->data, f->f32, sizeof f->f32) == 0);
    lw_close(s);
}

START_TEST(st_write_atomic_replace)
{
    st_fixture f;
    st_fixture_init(&f);
    const char *p = ck_tmp_path("keep.safetensors");
    char path[512];
    snprintf(path, sizeof path, "%s", p);
    ck_assert_int_eq(lw_write_safetensors(path, f.t, 7, meta_keys, meta_values, 3), LDM_OK);
    ck_assert_int_eq(chmod(path, 0640), 0);
    /* the disk "fills up" half-way through the replacement: the old file is intact */
    ck_assert_int_eq(ck_child_run(write_with_small_fsize, path, 30), 0);
    expect_original(path, &f);
    ck_assert_int_eq(count_tmp_files(ck_tmpdir), 0);
    /* a successful replacement keeps the permissions */
    lw_out_tensor one = {"x", LW_F32, 1, {1}, &f.scalar, 0};
    ck_assert_int_eq(lw_write_safetensors(path, &one, 1, NULL, NULL, 0), LDM_OK);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq((st.st_mode & 0777), 0640);
    /* through a symbolic link: the file it names is replaced, the link stays; a dangling link
     * is refused */
    char link[512];
    snprintf(link, sizeof link, "%s", ck_tmp_path("link.safetensors"));
    ck_assert_int_eq(symlink("keep.safetensors", link), 0);
    ck_assert_int_eq(lw_write_safetensors(link, f.t, 7, NULL, NULL, 0), LDM_OK);
    ck_assert_int_eq(lstat(link, &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    expect_original(path, &f);
    ck_assert_int_eq(unlink(link), 0);
    ck_assert_int_eq(symlink("nowhere.safetensors", link), 0);
    ck_assert_int_eq(lw_write_safetensors(link, f.t, 7, NULL, NULL, 0), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(access(ck_tmp_path("nowhere.safetensors"), F_OK), -1);
    ck_assert_int_eq(unlink(link), 0);
    /* a folder we may not write to: the temporary file cannot be created, the file stays */
    char dir[512], in[600];
    snprintf(dir, sizeof dir, "%s/ro", ck_tmpdir);
    snprintf(in, sizeof in, "%s/keep.safetensors", dir);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    ck_assert_int_eq(lw_write_safetensors(in, f.t, 7, NULL, NULL, 0), LDM_OK);
    ck_assert_int_eq(chmod(dir, 0555), 0);
    ck_assert_int_eq(chmod(ck_tmpdir, 0711), 0); /* an unprivileged child must reach `ro` */
    ck_assert_int_eq(ck_child_run(write_into_readonly, in, 30), 0);
    ck_assert_int_eq(chmod(ck_tmpdir, 0700), 0);
    expect_original(in, &f);
    ck_assert_int_eq(count_tmp_files(dir), 0);
    ck_assert_int_eq(chmod(dir, 0755), 0);
    ck_assert_int_eq(unlink(in), 0);
    ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

static Suite *train_numerics_suite(void)
{
    Suite *s = suite_create("train_numerics");
    TCase *opt = tcase_create("optimiser");
    tcase_add_test(opt, adamw_first_step_by_hand);
    tcase_add_test(opt, adamw_matches_double_reference);
    tcase_add_test(opt, adamw_threads_bit_identical);
    tcase_add_test(opt, adamw_rejects_bad_config);
    tcase_add_test(opt, clip_grad_norm_values);
    tcase_add_test(opt, ema_warm_up);
    tcase_add_test(opt, lr_warmup_cosine);
    tcase_add_test(opt, lr_warmup_cosine2);
    tcase_add_test(opt, lr_linear);
    tcase_add_test(opt, lr_constant_and_scale);
    suite_add_tcase(s, opt);
    TCase *loss = tcase_create("losses");
    tcase_add_test(loss, q_sample_and_targets);
    tcase_add_test(loss, lvlb_weights_by_hand);
    tcase_add_test(loss, diffusion_loss_defaults_is_mse);
    tcase_add_test(loss, diffusion_loss_gradients);
    tcase_add_test(loss, ae_nll_values_and_gradients);
    tcase_add_test(loss, kl_values_and_gradients);
    suite_add_tcase(s, loss);
    TCase *st = tcase_create("safetensors writer");
    tcase_add_test(st, st_write_round_trip);
    tcase_add_test(st, st_write_refusals);
    tcase_add_test(st, st_write_atomic_replace);
    suite_add_tcase(s, st);
    return s;
}

int main(void)
{
    return ck_run_in_tmpdir(train_numerics_suite(), "train-numerics");
}
