/* test_train_nets.c - the UNet and class embedder on the training tape (lib/train/nets.h):
 *  1. forward equality with the inference UNet (lib/models/unet.c) on the same random weights,
 *     for a SpatialTransformer model with class labels and for variants (linear proj, FiLM,
 *     three levels);
 *  2. gradients of a scalar L = sum(r * out) against central finite differences of the tape's
 *     own forward, for parameters of every kind of layer and for the input;
 *  3. bitwise equal gradients with 1, 2 and 3 threads;
 *  4. a short training run of the diffusion objective (loss.h, optim.h) on a fixed batch: the
 *     loss falls, so forward, backward and optimiser fit together. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/ctx.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/unet.h"
#include "support/ck_pools.h"
#include "support/ck_rand.h"
#include "support/ck_run.h"
#include "train/loss.h"
#include "train/nets.h"
#include "train/optim.h"


/* The glyph-like model shrunk: 2 levels, SpatialTransformer at both, class labels via y. */
static ld_unet small_unet(void)
{
    ld_unet d;
    memset(&d, 0, sizeof d);
    d.present = 1;
    d.in_channels = 3, d.out_channels = 3, d.model_channels = 32, d.num_res_blocks = 1;
    d.n_levels = 2, d.channel_mult[0] = 1, d.channel_mult[1] = 2;
    d.n_attention_resolutions = 2, d.attention_resolutions[0] = 1, d.attention_resolutions[1] = 2;
    d.num_heads = -1, d.num_head_channels = 16;
    d.use_spatial_transformer = 1, d.transformer_depth = 1, d.context_dim = 12;
    d.num_classes = 5;
    return d;
}

typedef struct net_case {
    ld_unet d;
    int B, H, W, T; /* batch, latent size, context length */
    float *x, *ctx, *t;
    int64_t *y;
} net_case;

static void case_init(net_case *c, ld_unet d, int B, int H, int W, int T)
{
    c->d = d, c->B = B, c->H = H, c->W = W, c->T = T;
    size_t nx = (size_t)B * d.in_channels * H * W, nc = (size_t)B * T * d.context_dim;
    c->x = malloc(nx * sizeof(float));
    c->ctx = malloc((nc ? nc : 1) * sizeof(float));
    c->t = malloc((size_t)B * sizeof(float));
    c->y = malloc((size_t)B * sizeof(int64_t));
    for (size_t i = 0; i < nx; i++) c->x[i] = frand();
    for (size_t i = 0; i < nc; i++) c->ctx[i] = frand();
    for (int b = 0; b < B; b++) c->t[b] = (float)(37 * b + 11), c->y[b] = b % (d.num_classes ? d.num_classes : 1);
}

static void case_free(net_case *c)
{
    free(c->x);
    free(c->ctx);
    free(c->t);
    free(c->y);
}

/* Records the UNet on `t` with inputs from the case; x requires a gradient when asked. */
static ltp_id run_unet(ltp_tape *t, ltp_params *ps, const net_case *c, int x_grad, ltp_id *x_out)
{
    int64_t xs[4] = {c->B, c->d.in_channels, c->H, c->W}, cs[3] = {c->B, c->T, c->d.context_dim};
    ltp_id x = ltp_input(t, 4, xs, c->x, x_grad);
    ltp_id ctx = c->d.context_dim ? ltp_input(t, 3, cs, c->ctx, 0) : LTP_NONE;
    int labels = c->d.num_classes ? ltp_labels(t, c->y, c->B) : -1;
    if (x_out) *x_out = x;
    return ltn_unet_forward(t, ps, "model.diffusion_model.", &c->d, x, c->t, ctx, labels);
}

/* Declares the model's parameters (one forward), then gives every one random values of a size
 * that keeps activations O(1), so that no zero-initialised layer hides a path. */
static ltp_params *random_params(const net_case *c, uint64_t seed)
{
    ltp_params *ps;
    ck_assert_int_eq(ltp_params_create(seed, &ps), LDM_OK);
    ltp_tape *t;
    ck_assert_int_eq(ltp_tape_create(NULL, &t), LDM_OK);
    ck_assert_int_ge(run_unet(t, ps, c, 0, NULL), 0);
    ck_assert_int_eq(ltp_status(t), LDM_OK);
    ltp_tape_free(t);
    for (size_t i = 0; i < ltp_params_count(ps); i++) {
        ltp_param *p = ltp_params_at(ps, i);
        int is_norm_weight = p->ndim == 1 && strstr(p->name, "norm") && strstr(p->name, ".weight");
        float scale = p->ndim >= 2 ? 1.0f / sqrtf((float)(p->n / (size_t)p->shape[0])) : 0.1f;
        for (size_t j = 0; j < p->n; j++) p->data[j] = (is_norm_weight ? 1.0f : 0.0f) + scale * frand();
    }
    return ps;
}

static lw_store *store_of(const ltp_params *ps)
{
    lw_store *s;
    ck_assert_int_eq(lw_store_create("tape params", &s), LDM_OK);
    for (size_t i = 0; i < ltp_params_count(ps); i++) {
        const ltp_param *p = ltp_params_at(ps, i);
        ck_assert_int_eq(lw_store_add(s, p->name, LW_F32, p->ndim, p->shape, p->data, p->n * sizeof(float)), LDM_OK);
    }
    ck_assert_int_eq(lw_store_seal(s), LDM_OK);
    return s;
}

/* The inference UNet's output for the case, on the parameters' values. */
static ldm_tensor *reference_out(const net_case *c, const ltp_params *ps, const lctx *ctx)
{
    lw_store *s = store_of(ps);
    lunet *n;
    ck_assert_msg(lunet_create(&c->d, s, "model.diffusion_model.", 0, &n) == LDM_OK, "%s", ldm_last_error());
    ldm_tensor *x = lt_new_f32_4d(c->B, c->d.in_channels, c->H, c->W);
    int64_t ts[1] = {c->B}, cs[3] = {c->B, c->T, c->d.context_dim};
    ldm_tensor *tt = lt_new_i64(1, ts), *yt = lt_new_i64(1, ts), *ct = lt_new_f32(3, cs), *out = NULL;
    memcpy(x->data, c->x, (size_t)lt_numel(x) * sizeof(float));
    memcpy(ct->data, c->ctx, (size_t)lt_numel(ct) * sizeof(float));
    for (int b = 0; b < c->B; b++) lt_i64(tt)[b] = (int64_t)c->t[b], lt_i64(yt)[b] = c->y[b];
    ck_assert_msg(lunet_forward(n, ctx, x, tt, ct, c->d.num_classes ? yt : NULL, &out) == LDM_OK, "%s",
                  ldm_last_error());
    ldm_tensor_free(x), ldm_tensor_free(tt), ldm_tensor_free(yt), ldm_tensor_free(ct);
    lunet_free(n);
    lw_close(s);
    return out;
}

static void check_forward_equal(ld_unet d, int B, int H, int W, int T)
{
    net_case c;
    case_init(&c, d, B, H, W, T);
    ltp_params *ps = random_params(&c, 7);
    ltp_tape *t;
    ck_assert_int_eq(ltp_tape_create(&ctxs[1], &t), LDM_OK);
    ltp_id y = run_unet(t, ps, &c, 0, NULL);
    ck_assert_msg(y >= 0, "%s", ltp_error(t));
    ldm_tensor *ref = reference_out(&c, ps, &ctxs[1]);
    ck_assert_uint_eq((size_t)lt_numel(ref), ltp_numel(t, y));
    size_t worst;
    double mx, err = ck_max_error(ltp_data(t, y), lt_f32(ref), ltp_numel(t, y), &worst, &mx);
    ck_assert_msg(mx > 0.1, "output too small to compare (%g)", mx);
    ck_assert_msg(err <= 2e-5 * mx, "tape UNet vs inference UNet: max error %g at %zu (max |ref| %g)", err, worst, mx);
    ldm_tensor_free(ref);
    ltp_tape_free(t);
    ltp_params_free(ps);
    case_free(&c);
}

START_TEST(forward_matches_inference)
{
    check_forward_equal(small_unet(), 2, 8, 8, 1);
}
END_TEST

START_TEST(forward_matches_inference_variants)
{
    ld_unet d = small_unet();
    d.use_linear_in_transformer = 1, d.num_head_channels = -1, d.num_heads = 2, d.num_classes = 0;
    check_forward_equal(d, 1, 8, 8, 3);
    d = small_unet();
    d.use_scale_shift_norm = 1, d.n_levels = 3, d.channel_mult[2] = 2, d.num_res_blocks = 2;
    d.n_attention_resolutions = 1, d.attention_resolutions[0] = 4, d.transformer_depth = 2;
    check_forward_equal(d, 2, 8, 8, 2);
}
END_TEST

/* Legacy AttentionBlocks (use_spatial_transformer false), label_emb, resblock_updown. */
static ld_unet attn_unet(int new_order)
{
    ld_unet d = small_unet();
    d.use_spatial_transformer = 0, d.context_dim = 0, d.transformer_depth = 0;
    if (new_order) {
        d.use_new_attention_order = 1, d.use_scale_shift_norm = 1;
    } else {
        d.num_head_channels = -1, d.num_heads = 2, d.legacy = 1, d.resblock_updown = 1;
    }
    return d;
}

START_TEST(forward_matches_inference_attention_block)
{
    check_forward_equal(attn_unet(0), 2, 8, 8, 1);
    check_forward_equal(attn_unet(1), 2, 8, 8, 1);
}
END_TEST

/* L = sum(r * out) and its gradients, with the given context. */
static double loss_and_grads(const lctx *ctx, const net_case *c, ltp_params *ps, const float *r, float *dx)
{
    ltp_tape *t;
    ck_assert_int_eq(ltp_tape_create(ctx, &t), LDM_OK);
    ltp_id x, y = run_unet(t, ps, c, dx != NULL, &x);
    ck_assert_msg(y >= 0, "%s", ltp_error(t));
    double L = 0.0;
    const float *o = ltp_data(t, y);
    for (size_t i = 0; i < ltp_numel(t, y); i++) L += (double)r[i] * o[i];
    if (dx) {
        ltp_params_zero_grad(ps);
        ck_assert_int_eq(ltp_seed_grad(t, y, r), LDM_OK);
        ck_assert_msg(ltp_backward(t) == LDM_OK, "%s", ltp_error(t));
        memcpy(dx, ltp_grad(t, x), ltp_numel(t, x) * sizeof(float));
    }
    ltp_tape_free(t);
    return L;
}

/* Central difference of L in p[j] against the analytic gradient g. */
static void fd_check(const net_case *c, ltp_params *ps, const float *r, float *p, size_t j, double g,
                     const char *what)
{
    float keep = p[j], h = fmaxf(1e-2f, 1e-2f * fabsf(keep));
    p[j] = keep + h;
    double lp = loss_and_grads(NULL, c, ps, r, NULL);
    p[j] = keep - h;
    double lm = loss_and_grads(NULL, c, ps, r, NULL);
    p[j] = keep;
    double fd = (lp - lm) / (2.0 * (double)h);
    double tol = 2e-2 * fmax(fabs(fd), fabs(g)) + 2e-3;
    ck_assert_msg(fabs(fd - g) <= tol, "%s[%zu]: finite difference %g, tape %g", what, j, fd, g);
}

static void fd_unet(ld_unet d, const char *const *names, size_t n_names);

START_TEST(gradients_match_finite_differences)
{
    static const char *const names[] = {
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.label_emb.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.1.1.norm.bias",
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.norm3.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_out.bias",
        "model.diffusion_model.output_blocks.0.0.skip_connection.weight",
        "model.diffusion_model.output_blocks.1.2.conv.weight",
        "model.diffusion_model.out.2.weight",
    };
    fd_unet(small_unet(), names, sizeof names / sizeof *names);
}
END_TEST

/* AttentionBlock (legacy order, resblock_updown), ResBlock dropout (a fixed mask: the tape's
 * key does not change between evaluations) and checkpointed blocks (ltp_segment). */
START_TEST(gradients_match_finite_differences_attention_block)
{
    static const char *const names[] = {
        "model.diffusion_model.input_blocks.1.1.norm.weight",
        "model.diffusion_model.input_blocks.1.1.qkv.weight",
        "model.diffusion_model.input_blocks.1.1.qkv.bias",
        "model.diffusion_model.input_blocks.1.1.proj_out.weight",
        "model.diffusion_model.input_blocks.2.0.in_layers.2.weight",
        "model.diffusion_model.input_blocks.2.0.out_layers.3.weight",
        "model.diffusion_model.middle_block.1.qkv.weight",
        "model.diffusion_model.output_blocks.1.2.in_layers.2.weight",
        "model.diffusion_model.output_blocks.1.2.emb_layers.1.weight",
        "model.diffusion_model.label_emb.weight",
    };
    ld_unet d = attn_unet(0);
    d.dropout = 0.2, d.use_checkpoint = 1;
    fd_unet(d, names, sizeof names / sizeof *names);
    static const char *const names_new[] = {
        "model.diffusion_model.input_blocks.1.1.qkv.weight",
        "model.diffusion_model.middle_block.1.qkv.bias",
        "model.diffusion_model.output_blocks.2.1.proj_out.weight",
    };
    fd_unet(attn_unet(1), names_new, sizeof names_new / sizeof *names_new);
}
END_TEST

static void fd_unet(ld_unet d, const char *const *names, size_t n_names)
{
    net_case c;
    case_init(&c, d, 2, 8, 8, 1);
    ltp_params *ps = random_params(&c, 11);
    size_t nout = (size_t)c.B * c.d.out_channels * c.H * c.W, nx = nout;
    float *r = malloc(nout * sizeof(float)), *dx = malloc(nx * sizeof(float));
    for (size_t i = 0; i < nout; i++) r[i] = frand();
    loss_and_grads(NULL, &c, ps, r, dx);
    /* copy the gradients: every FD evaluation below runs its own forward only */
    for (size_t k = 0; k < n_names; k++) {
        ltp_param *p = ltp_params_find(ps, names[k]);
        ck_assert_msg(p != NULL, "no parameter %s", names[k]);
        float *g = malloc(p->n * sizeof(float));
        memcpy(g, p->grad, p->n * sizeof(float));
        for (int s = 0; s < 3; s++) {
            size_t j = (size_t)(s * 7919 + 13) % p->n;
            fd_check(&c, ps, r, p->data, j, g[j], names[k]);
        }
        free(g);
    }
    for (int s = 0; s < 4; s++) {
        size_t j = (size_t)(s * 131 + 5) % nx;
        fd_check(&c, ps, r, c.x, j, dx[j], "input");
    }
    free(r);
    free(dx);
    ltp_params_free(ps);
    case_free(&c);
}

/* conv_resample false: parameter-free Downsample (avg-pool) and Upsample (nearest); the
 * resamplers' weights do not exist, the forward equals the inference UNet's and the gradients
 * (of the input too, which crosses both resamplers) their finite differences. */
START_TEST(conv_resample_false)
{
    ld_unet d = small_unet();
    d.no_conv_resample = 1;
    check_forward_equal(d, 2, 8, 8, 1);
    static const char *const names[] = {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.input_blocks.3.0.in_layers.2.weight",
        "model.diffusion_model.output_blocks.1.1.proj_out.weight",
        "model.diffusion_model.output_blocks.2.0.in_layers.2.weight",
    };
    fd_unet(d, names, sizeof names / sizeof *names);
    net_case c;
    case_init(&c, d, 1, 8, 8, 1);
    ltp_params *ps = random_params(&c, 3);
    ck_assert_ptr_null(ltp_params_find(ps, "model.diffusion_model.input_blocks.2.0.op.weight"));
    ck_assert_ptr_null(ltp_params_find(ps, "model.diffusion_model.output_blocks.1.2.conv.weight"));
    ck_assert_ptr_nonnull(ltp_params_find(ps, "model.diffusion_model.input_blocks.3.0.in_layers.2.weight"));
    ltp_params_free(ps);
    case_free(&c);
}
END_TEST

START_TEST(gradients_independent_of_threads)
{
    net_case c;
    case_init(&c, small_unet(), 3, 8, 8, 1);
    ltp_params *ps = random_params(&c, 13);
    size_t nout = (size_t)c.B * c.d.out_channels * c.H * c.W, total = ltp_params_numel(ps, 1);
    float *r = malloc(nout * sizeof(float)), *dx = malloc(nout * sizeof(float));
    float *g0 = malloc(total * sizeof(float));
    for (size_t i = 0; i < nout; i++) r[i] = frand();
    for (int k = 0; k < N_CTX; k++) {
        loss_and_grads(&ctxs[k], &c, ps, r, dx);
        size_t off = 0;
        for (size_t i = 0; i < ltp_params_count(ps); i++) {
            const ltp_param *p = ltp_params_at(ps, i);
            if (k == 0)
                memcpy(g0 + off, p->grad, p->n * sizeof(float));
            else
                ck_assert_msg(memcmp(g0 + off, p->grad, p->n * sizeof(float)) == 0,
                              "%s: gradient differs with pool %d", p->name, k);
            off += p->n;
        }
    }
    free(r), free(dx), free(g0);
    ltp_params_free(ps);
    case_free(&c);
}
END_TEST

/* Diffusion objective on one fixed batch of "images": eps prediction, L2, 300 AdamW steps. */
START_TEST(diffusion_loss_falls)
{
    ld_unet d = small_unet();
    d.model_channels = 32, d.num_head_channels = 32;
    net_case c;
    case_init(&c, d, 4, 8, 8, 1);
    for (int b = 0; b < c.B; b++) /* four smooth, distinct images */
        for (int k = 0; k < 3 * 64; k++) c.x[b * 192 + k] = 0.8f * sinf(0.3f * (float)(k % 64) * (float)(b + 1) + k / 64);
    ltp_params *ps;
    ck_assert_int_eq(ltp_params_create(3, &ps), LDM_OK);
    ltp_tape *t;
    ck_assert_int_eq(ltp_tape_create(&ctxs[1], &t), LDM_OK);
    /* a linear beta schedule of 100 steps, as register_schedule makes it */
    enum { T = 100 };
    float sa[T], s1m[T];
    double acp = 1.0;
    for (int i = 0; i < T; i++) {
        double beta = 1e-4 + (2e-2 - 1e-4) * i / (T - 1);
        acp *= 1.0 - beta;
        sa[i] = (float)sqrt(acp), s1m[i] = (float)sqrt(1.0 - acp);
    }
    ltr_qtables q = {sa, s1m};
    ltr_diffusion_loss lp;
    ltr_diffusion_loss_defaults(&lp);
    size_t per = 3 * 64, n = (size_t)c.B * per;
    float *x0 = malloc(n * sizeof(float)), *noise = malloc(n * sizeof(float)), *xt = malloc(n * sizeof(float));
    float *target = malloc(n * sizeof(float)), *dout = malloc(n * sizeof(float));
    memcpy(x0, c.x, n * sizeof(float));
    ltr_adamw *opt = NULL;
    double first = 0.0, last = 0.0;
    uint64_t s = 1;
    for (int step = 0; step < 300; step++) {
        int ts[4];
        for (int b = 0; b < c.B; b++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            ts[b] = (int)((s >> 33) % T);
            c.t[b] = (float)ts[b];
        }
        for (size_t i = 0; i < n; i++) noise[i] = frand() * 1.7f;
        ltr_q_sample(&q, x0, noise, ts, c.B, per, xt);
        ltr_target(LTR_PRED_EPS, &q, x0, noise, ts, c.B, per, target);
        memcpy(c.x, xt, n * sizeof(float));
        ltp_reset(t);
        ltp_id y = run_unet(t, ps, &c, 0, NULL);
        ck_assert_msg(y >= 0, "%s", ltp_error(t));
        if (!opt) { /* parameters exist after the first forward */
            size_t np = ltp_params_count(ps);
            ltr_param *list = malloc(np * sizeof *list);
            for (size_t i = 0; i < np; i++) {
                ltp_param *p = ltp_params_at(ps, i);
                list[i] = (ltr_param){p->data, p->grad, p->n};
            }
            ltr_adamw_config cfg;
            ltr_adamw_defaults(&cfg);
            cfg.lr = 2e-3;
            ck_assert_int_eq(ltr_adamw_create(list, np, &cfg, &opt), LDM_OK);
            free(list);
        }
        ltr_loss_terms terms;
        ck_assert_int_eq(ltr_diffusion_loss_eval(&lp, ltp_data(t, y), target, ts, c.B, per, T, &terms, dout, NULL),
                         LDM_OK);
        ltp_params_zero_grad(ps);
        ck_assert_int_eq(ltp_seed_grad(t, y, dout), LDM_OK);
        ck_assert_msg(ltp_backward(t) == LDM_OK, "%s", ltp_error(t));
        ck_assert_int_eq(ltr_adamw_step(opt, &ctxs[1], 2e-3), LDM_OK);
        if (step < 20) first += terms.loss / 20;
        if (step >= 280) last += terms.loss / 20;
    }
    ck_assert_msg(last < 0.5 * first, "loss did not fall: first 20 steps %g, last 20 %g", first, last);
    ltr_adamw_free(opt);
    free(x0), free(noise), free(xt), free(target), free(dout);
    ltp_tape_free(t);
    ltp_params_free(ps);
    case_free(&c);
}
END_TEST

START_TEST(errors_are_reported)
{
    net_case c;
    ld_unet d = small_unet();
    case_init(&c, d, 1, 8, 8, 1);
    ltp_params *ps;
    ck_assert_int_eq(ltp_params_create(1, &ps), LDM_OK);
    ltp_tape *t;
    ck_assert_int_eq(ltp_tape_create(NULL, &t), LDM_OK);
    /* a class model without labels */
    int64_t xs[4] = {1, 3, 8, 8}, cs[3] = {1, 1, 12};
    ltp_id x = ltp_input(t, 4, xs, c.x, 0), ctx = ltp_input(t, 3, cs, c.ctx, 0);
    ck_assert_int_eq(ltn_unet_forward(t, ps, "", &d, x, c.t, ctx, -1), LTP_NONE);
    ck_assert_int_eq(ltp_status(t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ltp_error(t), "labels"));
    /* a parameter of the wrong shape in the set */
    ltp_reset(t);
    int64_t bad[4] = {32, 4, 3, 3};
    float *zeros = calloc(32 * 4 * 9, sizeof(float));
    ck_assert_int_eq(ltp_params_set(ps, "input_blocks.0.0.weight", 4, bad, zeros), LDM_OK);
    x = ltp_input(t, 4, xs, c.x, 0), ctx = ltp_input(t, 3, cs, c.ctx, 0);
    int lab = ltp_labels(t, c.y, 1);
    ck_assert_int_eq(ltn_unet_forward(t, ps, "", &d, x, c.t, ctx, lab), LTP_NONE);
    ck_assert_ptr_nonnull(strstr(ltp_error(t), "input_blocks.0.0.weight"));
    ck_assert_ptr_nonnull(strstr(ltp_error(t), "[32,4,3,3]"));
    /* a label outside the table */
    ltp_reset(t);
    ltp_params_free(ps);
    ck_assert_int_eq(ltp_params_create(1, &ps), LDM_OK);
    int64_t big = 9;
    x = ltp_input(t, 4, xs, c.x, 0), ctx = ltp_input(t, 3, cs, c.ctx, 0);
    lab = ltp_labels(t, &big, 1);
    ck_assert_int_eq(ltn_unet_forward(t, ps, "", &d, x, c.t, ctx, lab), LTP_NONE);
    ck_assert_ptr_nonnull(strstr(ltp_error(t), "label 9"));
    free(zeros);
    ltp_tape_free(t);
    ltp_params_free(ps);
    case_free(&c);
}
END_TEST

static Suite *nets_suite(void)
{
    Suite *s = suite_create("train_nets");
    TCase *tc = tcase_create("unet");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup_pools, teardown_pools);
    tcase_add_test(tc, forward_matches_inference);
    tcase_add_test(tc, forward_matches_inference_variants);
    tcase_add_test(tc, gradients_match_finite_differences);
    tcase_add_test(tc, gradients_match_finite_differences_attention_block);
    tcase_add_test(tc, forward_matches_inference_attention_block);
    tcase_add_test(tc, gradients_independent_of_threads);
    tcase_add_test(tc, diffusion_loss_falls);
    tcase_add_test(tc, errors_are_reported);
    tcase_add_test(tc, conv_resample_false);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(nets_suite());
}
