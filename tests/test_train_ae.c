/* test_train_ae.c - the KL autoencoder written as tape operations (lib/train/net_ae.c, nets.h):
 *  - forward: the tape's encode (moments) and decode equal lib/models/autoencoder.c's on the same
 *    weights (the tape's parameters copied into an in-memory store under the same names), to
 *    float rounding; two configurations (level attention and mid attention; attn_type none with
 *    three levels, two blocks per level and a non-square input);
 *  - gradients: d L / d (a few parameters, the input) for L = sum(wm * moments) + sum(wo *
 *    decode(sample(moments))) against central finite differences of the tape's own forward
 *    (float32: this checks the composition; each kernel is checked in double by test_grad.c);
 *  - thread count: serial, 2 and 3 threads give bit-identical outputs and gradients;
 *  - training: 60 AdamW steps of the KL objective (L1 nll + kl_weight * KL through the sampled
 *    latent) on a fixed batch of four 8x8 images cut the reconstruction loss by at least 5x
 *    (0.41 -> 0.03 when written; ~2 s of CPU);
 *  - refusals: VQ is LDM_ERR_UNSUPPORTED, a parameter of the wrong shape is rejected. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/ctx.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/autoencoder.h"
#include "support/ck_pools.h"
#define CK_RAND_SEED 0x243F6A8885A308D3ull
#include "support/ck_rand.h"
#include "support/ck_run.h"
#include "train/loss.h"
#include "train/nets.h"
#include "train/optim.h"

/* ---- helpers */


static float *rbuf(size_t n, float scale)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}

static void expect_ok(ldm_status st, const char *what)
{
    ck_assert_msg(st == LDM_OK, "%s: status %d (%s)", what, (int)st, ldm_last_error());
}

/* ch 32, ch_mult (1, 2), one ResnetBlock per level, attention at resolution 8 (the second level)
 * and in the mid block, z_channels = embed_dim = 3: 16x16 images -> 8x8 latents. */
static ld_autoencoder desc_small(void)
{
    ld_autoencoder d;
    ld_autoencoder_defaults(&d);
    d.present = 1;
    d.ch = 32;
    d.n_levels = 2;
    d.ch_mult[0] = 1, d.ch_mult[1] = 2;
    d.num_res_blocks = 1;
    d.resolution = 16;
    d.attn_resolutions[0] = 8, d.n_attn_resolutions = 1;
    d.z_channels = 3;
    d.embed_dim = 3;
    return d;
}

/* attn_type none (no attention anywhere), three levels (1, 2, 2), two ResnetBlocks per level,
 * z_channels 4 and embed_dim 2 (quant_conv and post_quant_conv change the channel count). */
static ld_autoencoder desc_no_attn(void)
{
    ld_autoencoder d;
    ld_autoencoder_defaults(&d);
    d.present = 1;
    d.ch = 32;
    d.n_levels = 3;
    d.ch_mult[0] = 1, d.ch_mult[1] = 2, d.ch_mult[2] = 2;
    d.num_res_blocks = 2;
    d.resolution = 32;
    d.attn_resolutions[0] = 8, d.n_attn_resolutions = 1; /* ignored: attn_type none */
    d.attn_none = 1;
    d.z_channels = 4;
    d.embed_dim = 2;
    return d;
}

/* GroupNorm affine parameters away from their 1 / 0 initialisation, so that a swapped or unused
 * gamma/beta shows in the outputs. */
static void perturb_norms(ltp_params *ps)
{
    for (size_t i = 0; i < ltp_params_count(ps); i++) {
        ltp_param *p = ltp_params_at(ps, i);
        if (p->ndim != 1 || !strstr(p->name, "norm")) continue;
        int is_gamma = strstr(p->name, ".weight") != NULL;
        for (size_t k = 0; k < p->n; k++) p->data[k] = (is_gamma ? 1.0f : 0.0f) + 0.3f * frand();
    }
}

/* An in-memory store holding every parameter under its own name (data shared with ps). */
static lw_store *store_of(const ltp_params *ps)
{
    lw_store *s = NULL;
    expect_ok(lw_store_create("tape parameters", &s), "lw_store_create");
    for (size_t i = 0; i < ltp_params_count(ps); i++) {
        const ltp_param *p = ltp_params_at(ps, i);
        expect_ok(lw_store_add(s, p->name, LW_F32, p->ndim, p->shape, p->data, p->n * sizeof(float)), p->name);
    }
    expect_ok(lw_store_seal(s), "lw_store_seal");
    return s;
}

static ldm_tensor *tensor_of(const ltp_tape *t, ltp_id v)
{
    int64_t shape[4];
    ck_assert_int_eq(ltp_ndim(t, v), 4);
    for (int i = 0; i < 4; i++) shape[i] = ltp_dim(t, v, i);
    ldm_tensor *x = lt_new_f32(4, shape);
    ck_assert_ptr_nonnull(x);
    memcpy(lt_f32(x), ltp_data(t, v), ltp_numel(t, v) * sizeof(float));
    return x;
}

/* max |got - ref| <= tol * max |ref|. */
static void expect_close(const float *got, const float *ref, size_t n, double tol, const char *what)
{
    size_t worst;
    double mx, err = ck_max_error(got, ref, n, &worst, &mx);
    ck_assert_msg(err <= tol * fmax(mx, 1e-20), "%s: max error %.3g at %zu (got %.9g, ref %.9g), max |ref| %.3g", what,
                  err, worst, got[worst], ref[worst], mx);
}

/* ---------------------------------------------------------------- forward vs lib/models */

static void forward_matches(const ld_autoencoder *d, const char *prefix, int B, int H, int W)
{
    int f = 1 << (d->n_levels - 1);
    ltp_params *ps = NULL;
    ltp_tape *t = NULL;
    expect_ok(ltp_params_create(11, &ps), "params");
    expect_ok(ltp_tape_create(NULL, &t), "tape");
    size_t nx = (size_t)B * d->in_channels * H * W, nz = (size_t)B * d->embed_dim * (H / f) * (W / f);
    float *x = rbuf(nx, 1.0f), *z = rbuf(nz, 1.0f);
    int64_t xs[4] = {B, d->in_channels, H, W}, zs[4] = {B, d->embed_dim, H / f, W / f};
    /* first pass: creates the parameters */
    ltn_ae_encode(t, ps, prefix, d, ltp_input(t, 4, xs, x, 0));
    ltn_ae_decode(t, ps, prefix, d, ltp_input(t, 4, zs, z, 0));
    expect_ok(ltp_status(t), ltp_error(t));
    perturb_norms(ps);
    ltp_reset(t);
    ltp_id xin = ltp_input(t, 4, xs, x, 0);
    ltp_id mom = ltn_ae_encode(t, ps, prefix, d, xin);
    ltp_id img = ltn_ae_decode(t, ps, prefix, d, ltp_input(t, 4, zs, z, 0));
    expect_ok(ltp_status(t), ltp_error(t));
    ck_assert_int_eq(ltp_dim(t, mom, 1), 2 * d->embed_dim);
    ck_assert_int_eq(ltp_dim(t, mom, 2), H / f);
    ck_assert_int_eq(ltp_dim(t, img, 1), d->out_ch);
    ck_assert_int_eq(ltp_dim(t, img, 3), W);
    for (size_t i = 0; i < ltp_params_count(ps); i++) /* every name under the prefix */
        ck_assert_msg(strncmp(ltp_params_at(ps, i)->name, prefix, strlen(prefix)) == 0, "%s",
                      ltp_params_at(ps, i)->name);

    lw_store *s = store_of(ps);
    lae *ae = NULL;
    expect_ok(lae_create(d, s, prefix, &ae), "lae_create on the tape's parameters");
    ldm_tensor *xt = tensor_of(t, xin), *zt = NULL, *mref = NULL, *iref = NULL;
    expect_ok(lae_encode(ae, NULL, xt, &mref), "lae_encode");
    zt = lt_new_f32(4, zs);
    ck_assert_ptr_nonnull(zt);
    memcpy(lt_f32(zt), z, nz * sizeof(float));
    expect_ok(lae_decode(ae, NULL, zt, &iref), "lae_decode");
    ck_assert_int_eq((int64_t)lt_numel(mref), (int64_t)ltp_numel(t, mom));
    ck_assert_int_eq((int64_t)lt_numel(iref), (int64_t)ltp_numel(t, img));
    expect_close(ltp_data(t, mom), lt_f32(mref), ltp_numel(t, mom), 1e-4, "moments");
    expect_close(ltp_data(t, img), lt_f32(iref), ltp_numel(t, img), 1e-4, "decoded image");

    ldm_tensor_free(xt), ldm_tensor_free(zt), ldm_tensor_free(mref), ldm_tensor_free(iref);
    lae_free(ae);
    lw_close(s);
    ltp_tape_free(t);
    ltp_params_free(ps);
    free(x), free(z);
}

START_TEST(forward_matches_inference)
{
    ld_autoencoder d = desc_small();
    forward_matches(&d, "first_stage_model.", 2, 16, 16);
}
END_TEST

START_TEST(forward_matches_inference_no_attn)
{
    ld_autoencoder d = desc_no_attn();
    forward_matches(&d, "", 1, 16, 8);
}
END_TEST

/* ---------------------------------------------------------------- gradients */

typedef struct gsetup {
    ld_autoencoder d;
    int B, H, W;
    float *x, *noise, *wm, *wo; /* input, sampling noise, loss weights of moments and output */
    size_t nx, nm, nz, no;
} gsetup;

static void gsetup_init(gsetup *g, int B)
{
    g->d = desc_small();
    g->B = B, g->H = 16, g->W = 16;
    g->nx = (size_t)B * 3 * 16 * 16;
    g->nm = (size_t)B * 2 * g->d.embed_dim * 8 * 8;
    g->nz = g->nm / 2;
    g->no = (size_t)B * g->d.out_ch * 16 * 16;
    g->x = rbuf(g->nx, 1.0f);
    g->noise = rbuf(g->nz, 1.0f);
    g->wm = rbuf(g->nm, 1.0f);
    g->wo = rbuf(g->no, 1.0f);
}

static void gsetup_free(gsetup *g) { free(g->x), free(g->noise), free(g->wm), free(g->wo); }

/* Records encode -> sample -> decode; returns the loss sum(wm*moments) + sum(wo*out) in double. */
static double g_forward(const gsetup *g, ltp_tape *t, ltp_params *ps, int input_grad, ltp_id *xin, ltp_id *mom,
                        ltp_id *out)
{
    ltp_reset(t);
    int64_t xs[4] = {g->B, 3, g->H, g->W};
    *xin = ltp_input(t, 4, xs, g->x, input_grad);
    *mom = ltn_ae_encode(t, ps, "", &g->d, *xin);
    ltp_id z = ltp_gaussian_sample(t, *mom, g->noise);
    *out = ltn_ae_decode(t, ps, "", &g->d, z);
    expect_ok(ltp_status(t), ltp_error(t));
    double L = 0.0;
    const float *m = ltp_data(t, *mom), *o = ltp_data(t, *out);
    for (size_t i = 0; i < g->nm; i++) L += (double)g->wm[i] * m[i];
    for (size_t i = 0; i < g->no; i++) L += (double)g->wo[i] * o[i];
    return L;
}

static void g_backward(const gsetup *g, ltp_tape *t, ltp_params *ps, ltp_id mom, ltp_id out)
{
    ltp_params_zero_grad(ps);
    expect_ok(ltp_seed_grad(t, mom, g->wm), "seed moments");
    expect_ok(ltp_seed_grad(t, out, g->wo), "seed output");
    expect_ok(ltp_backward(t), "backward");
}

/* The loss with v <- v + eps * u (u NULL: only element `at` moves), v restored afterwards. */
static double loss_moved(const gsetup *g, ltp_tape *t, ltp_params *ps, float *v, size_t n, const float *u, size_t at,
                         float eps, double *moved)
{
    float *keep = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(keep);
    memcpy(keep, v, n * sizeof(float));
    if (u)
        for (size_t i = 0; i < n; i++) v[i] = keep[i] + eps * u[i];
    else
        v[at] = keep[at] + eps;
    if (moved) *moved = u ? eps : (double)v[at] - keep[at]; /* the step actually taken */
    ltp_id xin, mom, out;
    double L = g_forward(g, t, ps, 0, &xin, &mom, &out);
    memcpy(v, keep, n * sizeof(float));
    free(keep);
    return L;
}

/* Central differences of the loss against the tape's gradient `grad` of `v` (n elements):
 *  - along a random direction u in [-1, 1]^n with a step of 1e-2 * max |v|: the directional
 *    derivative against <grad, u>, within 2e-2 * sqrt(sum (grad_i u_i)^2) (the typical size of
 *    <grad, u>); this involves every element;
 *  - at the TOP elements of largest |grad|, with a step of 3e-2 * max |v|: within 3e-2 * the
 *    largest of them. The float32 forward's rounding moves the loss by ~2e-5 from one evaluation
 *    to the next (seen as an error falling like 1/step), which at a step of 1e-2 is already 1-7 %
 *    of the small gradients of the attention's q and k weights; at 3e-2 the curvature error of
 *    the other parameters stays below 0.5 %. */
static void fd_check(const gsetup *g, ltp_tape *t, ltp_params *ps, float *v, const float *grad, size_t n,
                     const char *what)
{
    enum { TOP = 4 };
    size_t pick[TOP];
    double vmax = 0.0, gmax = 0.0;
    for (size_t i = 0; i < n; i++) vmax = fmax(vmax, fabs(v[i]));
    for (int k = 0; k < TOP; k++) { /* largest |grad| not yet picked */
        size_t best = 0;
        double bv = -1.0;
        for (size_t i = 0; i < n; i++) {
            int seen = 0;
            for (int j = 0; j < k; j++) seen |= pick[j] == i;
            if (!seen && fabs(grad[i]) > bv) bv = fabs(grad[i]), best = i;
        }
        pick[k] = best;
        gmax = fmax(gmax, bv);
    }
    ck_assert_msg(gmax > 0.0, "%s: zero gradient", what);
    float h = (float)(3e-2 * vmax);
    for (int k = 0; k < TOP; k++) {
        double hp, hm;
        double lp = loss_moved(g, t, ps, v, n, NULL, pick[k], h, &hp);
        double lm = loss_moved(g, t, ps, v, n, NULL, pick[k], -h, &hm);
        double fd = (lp - lm) / (hp - hm);
        ck_assert_msg(fabs(fd - grad[pick[k]]) <= 3e-2 * gmax,
                      "%s[%zu]: tape %.6g, finite differences %.6g (largest |g| %.3g)", what, pick[k],
                      (double)grad[pick[k]], fd, gmax);
    }
    h = (float)(1e-2 * vmax);
    float *u = rbuf(n, 1.0f);
    double dot = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) dot += (double)grad[i] * u[i], scale += ((double)grad[i] * u[i]) * grad[i] * u[i];
    scale = sqrt(scale);
    double lp = loss_moved(g, t, ps, v, n, u, 0, h, NULL), lm = loss_moved(g, t, ps, v, n, u, 0, -h, NULL);
    double fd = (lp - lm) / (2.0 * h);
    ck_assert_msg(fabs(fd - dot) <= 2e-2 * scale,
                  "%s along a random direction: tape %.6g, finite differences %.6g (scale %.3g)", what, dot, fd, scale);
    free(u);
}

START_TEST(gradients_match_finite_differences)
{
    gsetup g;
    gsetup_init(&g, 2);
    ltp_params *ps = NULL;
    ltp_tape *t = NULL;
    expect_ok(ltp_params_create(5, &ps), "params");
    expect_ok(ltp_tape_create(NULL, &t), "tape");
    ltp_id xin, mom, out;
    g_forward(&g, t, ps, 1, &xin, &mom, &out);
    perturb_norms(ps);
    g_forward(&g, t, ps, 1, &xin, &mom, &out);
    g_backward(&g, t, ps, mom, out);
    const float *gx = ltp_grad(t, xin);
    ck_assert_ptr_nonnull(gx);
    float *gx_copy = malloc(g.nx * sizeof(float));
    ck_assert_ptr_nonnull(gx_copy);
    memcpy(gx_copy, gx, g.nx * sizeof(float));

    static const char *const names[] = {
        "encoder.conv_in.weight",          "encoder.down.0.block.0.norm1.weight", "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.1.attn.0.q.weight",  "encoder.mid.attn_1.k.weight",          "quant_conv.weight",
        "decoder.mid.attn_1.v.weight",     "decoder.up.1.upsample.conv.weight",   "decoder.up.0.block.1.conv2.weight",
        "decoder.norm_out.bias",           "decoder.conv_out.bias"};
    /* the gradients are overwritten by the forwards below only through zero_grad: copy them */
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        ltp_param *p = ltp_params_find(ps, names[k]);
        ck_assert_msg(p != NULL, "no parameter %s", names[k]);
        float *gp = malloc(p->n * sizeof(float));
        ck_assert_ptr_nonnull(gp);
        memcpy(gp, p->grad, p->n * sizeof(float));
        fd_check(&g, t, ps, p->data, gp, p->n, names[k]);
        free(gp);
    }
    fd_check(&g, t, ps, g.x, gx_copy, g.nx, "input");
    free(gx_copy);
    ltp_tape_free(t);
    ltp_params_free(ps);
    gsetup_free(&g);
}
END_TEST

/* ---------------------------------------------------------------- thread count */

START_TEST(threads_bit_identical)
{
    gsetup g;
    gsetup_init(&g, 2);
    ltp_params *ps = NULL;
    expect_ok(ltp_params_create(9, &ps), "params");
    float *ref_out = malloc(g.no * sizeof(float)), *ref_gx = malloc(g.nx * sizeof(float));
    float **ref_g = NULL;
    size_t np = 0;
    ck_assert_ptr_nonnull(ref_out);
    ck_assert_ptr_nonnull(ref_gx);
    for (int c = 0; c < N_CTX; c++) {
        ltp_tape *t = NULL;
        expect_ok(ltp_tape_create(&ctxs[c], &t), "tape");
        ltp_id xin, mom, out;
        g_forward(&g, t, ps, 1, &xin, &mom, &out);
        if (c == 0) perturb_norms(ps), g_forward(&g, t, ps, 1, &xin, &mom, &out);
        g_backward(&g, t, ps, mom, out);
        const float *gx = ltp_grad(t, xin);
        ck_assert_ptr_nonnull(gx);
        if (c == 0) {
            np = ltp_params_count(ps);
            ref_g = calloc(np, sizeof *ref_g);
            ck_assert_ptr_nonnull(ref_g);
            for (size_t i = 0; i < np; i++) {
                const ltp_param *p = ltp_params_at(ps, i);
                ref_g[i] = malloc(p->n * sizeof(float));
                ck_assert_ptr_nonnull(ref_g[i]);
                memcpy(ref_g[i], p->grad, p->n * sizeof(float));
            }
            memcpy(ref_out, ltp_data(t, out), g.no * sizeof(float));
            memcpy(ref_gx, gx, g.nx * sizeof(float));
        } else {
            ck_assert_msg(memcmp(ref_out, ltp_data(t, out), g.no * sizeof(float)) == 0, "output, %d threads",
                          lctx_threads(&ctxs[c]));
            ck_assert_msg(memcmp(ref_gx, gx, g.nx * sizeof(float)) == 0, "input gradient, %d threads",
                          lctx_threads(&ctxs[c]));
            for (size_t i = 0; i < np; i++) {
                const ltp_param *p = ltp_params_at(ps, i);
                ck_assert_msg(memcmp(ref_g[i], p->grad, p->n * sizeof(float)) == 0, "gradient of %s, %d threads",
                              p->name, lctx_threads(&ctxs[c]));
            }
        }
        ltp_tape_free(t);
    }
    for (size_t i = 0; i < np; i++) free(ref_g[i]);
    free(ref_g), free(ref_out), free(ref_gx);
    ltp_params_free(ps);
    gsetup_free(&g);
}
END_TEST

/* ---------------------------------------------------------------- a short training run */

/* Four smooth 8x8 RGB images in [-1, 1]: oriented sinusoids of different frequencies. */
static void toy_images(float *x, int S)
{
    for (int b = 0; b < 4; b++)
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < S; i++)
                for (int j = 0; j < S; j++) {
                    double u = (b + 1) * 0.5 * i + (c + 1) * 0.4 * j + b;
                    x[((b * 3 + c) * S + i) * S + j] = (float)(0.8 * sin(u) * cos(0.3 * (b + c) * j - 0.2 * i));
                }
}

START_TEST(training_reduces_reconstruction_loss)
{
    ld_autoencoder d = desc_small();
    enum { B = 4, STEPS = 60 };
    const int H = 8, W = 8, C = 3, E = d.embed_dim, h = 4, w = 4;
    const size_t per = (size_t)C * H * W, nz = (size_t)B * E * h * w;
    float *x = malloc(B * per * sizeof(float)), *noise = malloc(nz * sizeof(float));
    float *dout = malloc(B * per * sizeof(float)), *dmom = malloc(2 * nz * sizeof(float));
    ck_assert(x && noise && dout && dmom);
    toy_images(x, H);
    ltp_params *ps = NULL;
    ltp_tape *t = NULL;
    expect_ok(ltp_params_create(2024, &ps), "params");
    expect_ok(ltp_tape_create(NULL, &t), "tape"); /* serial: the fastest on a shared machine */
    const double kl_weight = 1e-6;
    ltr_adamw *opt = NULL;
    ltr_param *list = NULL;
    double first = 0.0, last = 0.0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int step = 0; step < STEPS; step++) {
        ltp_reset(t);
        for (size_t i = 0; i < nz; i++) noise[i] = frand(); /* uniform noise: only its spread matters here */
        int64_t xs[4] = {B, C, H, W};
        ltp_id mom = ltn_ae_encode(t, ps, "", &d, ltp_input(t, 4, xs, x, 0));
        ltp_id z = ltp_gaussian_sample(t, mom, noise);
        ltp_id rec = ltn_ae_decode(t, ps, "", &d, z);
        expect_ok(ltp_status(t), ltp_error(t));
        if (!opt) { /* the parameters exist after the first forward */
            size_t np = ltp_params_count(ps);
            list = calloc(np, sizeof *list);
            ck_assert_ptr_nonnull(list);
            for (size_t i = 0; i < np; i++) {
                ltp_param *p = ltp_params_at(ps, i);
                list[i] = (ltr_param){p->data, p->grad, p->n};
            }
            ltr_adamw_config cfg;
            ltr_adamw_defaults(&cfg);
            cfg.lr = 2e-3;
            expect_ok(ltr_adamw_create(list, np, &cfg, &opt), "adamw");
        }
        double nll = ltr_ae_nll_l1(x, ltp_data(t, rec), B, per, 0.0f, dout, NULL);
        double kl = ltr_kl_diag_gaussian(ltp_data(t, mom), B, E, (size_t)h * w, kl_weight, dmom);
        ck_assert(isfinite(nll) && isfinite(kl));
        double rec_loss = nll / per; /* mean |x - xrec| */
        if (step == 0) first = rec_loss;
        last = rec_loss;
        ltp_params_zero_grad(ps);
        expect_ok(ltp_seed_grad(t, rec, dout), "seed reconstruction");
        expect_ok(ltp_seed_grad(t, mom, dmom), "seed kl");
        expect_ok(ltp_backward(t), "backward");
        expect_ok(ltr_adamw_step(opt, NULL, 2e-3), "adamw step");
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    ck_assert_msg(last * 5.0 <= first, "reconstruction loss %.4f -> %.4f after %d steps (%.2f s): not 5x lower", first,
                  last, STEPS, secs);
    ltr_adamw_free(opt);
    free(list);
    ltp_tape_free(t);
    ltp_params_free(ps);
    free(x), free(noise), free(dout), free(dmom);
}
END_TEST

/* ---------------------------------------------------------------- refusals */

START_TEST(refusals)
{
    ltp_params *ps = NULL;
    ltp_tape *t = NULL;
    expect_ok(ltp_params_create(1, &ps), "params");
    expect_ok(ltp_tape_create(NULL, &t), "tape");
    float x[3 * 16 * 16] = {0};
    int64_t xs[4] = {1, 3, 16, 16};
    ld_autoencoder d = desc_small();
    d.is_vq = 1;
    d.double_z = 0;
    d.n_embed = 16;
    ck_assert_int_eq(ltn_ae_encode(t, ps, "", &d, ltp_input(t, 4, xs, x, 0)), LTP_NONE);
    ck_assert_int_eq(ltp_status(t), LDM_ERR_UNSUPPORTED);
    ck_assert_int_eq(ltp_params_count(ps), 0);
    ltp_reset(t);
    /* an existing parameter of another shape (a checkpoint of another configuration) */
    ltp_params_get(ps, "encoder.conv_in.weight", 4, (int64_t[]){16, 3, 3, 3}, LTP_INIT_UNIFORM, 27);
    d = desc_small();
    ck_assert_int_eq(ltn_ae_encode(t, ps, "", &d, ltp_input(t, 4, xs, x, 0)), LTP_NONE);
    ck_assert_int_eq(ltp_status(t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(ltp_error(t), "encoder.conv_in.weight") != NULL, "%s", ltp_error(t));
    ltp_reset(t);
    /* wrong input channels */
    ltp_params_free(ps);
    expect_ok(ltp_params_create(1, &ps), "params");
    int64_t x4[4] = {1, 4, 8, 8};
    ck_assert_int_eq(ltn_ae_encode(t, ps, "", &d, ltp_input(t, 4, x4, x, 0)), LTP_NONE);
    ck_assert_int_eq(ltp_status(t), LDM_ERR_INVALID_ARGUMENT);
    ltp_tape_free(t);
    ltp_params_free(ps);
}
END_TEST

static Suite *train_ae_suite(void)
{
    Suite *s = suite_create("train_ae");
    TCase *fw = tcase_create("forward");
    tcase_set_timeout(fw, 60);
    tcase_add_test(fw, forward_matches_inference);
    tcase_add_test(fw, forward_matches_inference_no_attn);
    tcase_add_test(fw, refusals);
    suite_add_tcase(s, fw);
    TCase *gr = tcase_create("gradients");
    tcase_set_timeout(gr, 60);
    tcase_add_checked_fixture(gr, setup_pools, teardown_pools);
    tcase_add_test(gr, gradients_match_finite_differences);
    tcase_add_test(gr, threads_bit_identical);
    tcase_add_test(gr, training_reduces_reconstruction_loss);
    suite_add_tcase(s, gr);
    return s;
}

int main(void)
{
    return ck_run_suite(train_ae_suite());
}
