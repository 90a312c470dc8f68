/* test_unet.c - openaimodel.UNetModel against the fixtures: AttentionBlock (unet_attnblock, also
 * from model.ckpt), SpatialTransformer with conv projections (unet_crossattn), concat input with
 * resblock_updown (unet_concat_resupdown, both calls), SD2 linear projections (unet_sd2_linear),
 * the F16 concat UNet of cond_spatial_rescaler, and the EMA weights of ldm_uncond_plms (checked
 * through the reference's p_sample formula). Plus context length changes, thread independence,
 * bad inputs, missing / mis-shaped weights, class labels, cancellation and allocation failures. */
#include <check.h>

#include "core/ctx.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/config.h"
#include "models/desc.h"
#include "models/unet.h"
#include "support/ck_fixture.h"
#include "support/ck_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PREFIX "model.diffusion_model."

/* ---------------------------------------------------------------- descriptions */

typedef struct unet_spec {
    int in, out, mc, nrb;
    int mult[4], n_mult;
    int attn[4], n_attn;
    int num_heads, nhc;
    int spatial, linear, context_dim, updown, legacy;
} unet_spec;

static ld_unet desc_of(const unet_spec *p)
{
    ld_unet d;
    ld_unet_defaults(&d);
    d.present = 1;
    d.in_channels = p->in, d.out_channels = p->out, d.model_channels = p->mc, d.num_res_blocks = p->nrb;
    d.n_levels = p->n_mult;
    for (int i = 0; i < p->n_mult; i++) d.channel_mult[i] = p->mult[i];
    d.n_attention_resolutions = p->n_attn;
    for (int i = 0; i < p->n_attn; i++) d.attention_resolutions[i] = p->attn[i];
    d.num_heads = p->num_heads, d.num_head_channels = p->nhc;
    d.use_spatial_transformer = p->spatial, d.use_linear_in_transformer = p->linear;
    d.context_dim = p->context_dim, d.transformer_depth = 1;
    d.resblock_updown = p->updown, d.legacy = p->legacy;
    return d;
}

/* The fixtures' UNet params, written out from their config.yaml. */
static const unet_spec SPEC_ATTNBLOCK = {3, 3, 32, 1, {1, 1}, 2, {2, 1}, 2, -1, 16, 0, 0, 0, 0, 1};
static const unet_spec SPEC_CROSSATTN = {3, 3, 32, 1, {1, 2}, 2, {1}, 1, 4, -1, 1, 0, 48, 0, 1};
static const unet_spec SPEC_CONCAT = {7, 3, 32, 1, {1, 1}, 2, {2}, 1, 2, -1, 0, 0, 0, 1, 1};
static const unet_spec SPEC_SD2 = {4, 4, 32, 1, {1, 1}, 2, {2, 1}, 2, -1, 16, 1, 1, 16, 0, 0};
static const unet_spec SPEC_RESCALER = {6, 3, 32, 0, {1}, 1, {0}, 0, 8, -1, 0, 0, 0, 0, 1};
static const unet_spec SPEC_UNCOND = {3, 3, 32, 1, {1}, 1, {0}, 0, -1, 32, 0, 0, 0, 0, 1};

/* The UNet description of a fixture from its config.yaml through ld_config_load, checked against
 * the written-out params (so a config-reader regression shows up here too). */
static ld_unet fixture_desc(const char *dir, const unet_spec *p)
{
    ld_unet want = desc_of(p);
    char path[4096];
    ld_model m;
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    ck_assert_msg(ld_config_load(path, &m) == LDM_OK, "ld_config_load %s: %s", path, ldm_last_error());
    const ld_unet *u = &m.unet;
    ck_assert_int_eq(u->in_channels, want.in_channels);
    ck_assert_int_eq(u->out_channels, want.out_channels);
    ck_assert_int_eq(u->model_channels, want.model_channels);
    ck_assert_int_eq(u->num_res_blocks, want.num_res_blocks);
    ck_assert_int_eq(u->n_levels, want.n_levels);
    for (int i = 0; i < want.n_levels; i++) ck_assert_int_eq(u->channel_mult[i], want.channel_mult[i]);
    ck_assert_int_eq(u->n_attention_resolutions, want.n_attention_resolutions);
    for (int i = 0; i < want.n_attention_resolutions; i++)
        ck_assert_int_eq(u->attention_resolutions[i], want.attention_resolutions[i]);
    ck_assert_int_eq(u->num_heads, want.num_heads);
    ck_assert_int_eq(u->num_head_channels, want.num_head_channels);
    ck_assert_int_eq(u->use_spatial_transformer, want.use_spatial_transformer);
    ck_assert_int_eq(u->use_linear_in_transformer, want.use_linear_in_transformer);
    ck_assert_int_eq(u->transformer_depth, want.transformer_depth);
    if (want.use_spatial_transformer) ck_assert_int_eq(u->context_dim, want.context_dim);
    ck_assert_int_eq(u->resblock_updown, want.resblock_updown);
    ck_assert_int_eq(u->legacy, want.legacy);
    ck_assert_int_eq(u->num_classes, 0);
    ck_assert_int_eq(u->use_scale_shift_norm, 0);
    return *u;
}

static lunet *make_unet(const ld_unet *d, const lw_store *s, int use_ema)
{
    lunet *n = NULL;
    ldm_status st = lunet_create(d, s, PREFIX, use_ema, &n);
    ck_assert_msg(st == LDM_OK, "lunet_create from %s: %s", lw_path(s), ldm_last_error());
    return n;
}

/* ---------------------------------------------------------------- helpers */

typedef struct runner {
    lpool *pool;
    lctx ctx;
} runner;

static void runner_init(runner *r, int threads)
{
    r->pool = lpool_create(threads);
    ck_assert_msg(r->pool != NULL, "lpool_create: %s", ldm_last_error());
    r->ctx = (lctx){.pool = r->pool};
}

static void runner_done(runner *r) { lpool_free(r->pool); }

static ldm_tensor *forward_ok(lunet *n, const lctx *c, const ldm_tensor *x, const ldm_tensor *t,
                              const ldm_tensor *context, const ldm_tensor *y)
{
    ldm_tensor *out = NULL;
    ldm_status st = lunet_forward(n, c, x, t, context, y, &out);
    ck_assert_msg(st == LDM_OK, "lunet_forward: %s", ldm_last_error());
    return out;
}

static void expect_match(const char *fixture, const lj_value *cas, const char *name, const ldm_tensor *got,
                         const ldm_tensor *ref)
{
    fx_tolerance tol = fx_tolerance_for(cas, name);
    fx_compare_result r;
    int ok = fx_compare(got, ref, tol, &r);
    printf("%s %s: max abs err %.3g (atol %.3g, rtol %.3g)\n", fixture, name, r.max_abs, tol.atol, tol.rtol);
    ck_assert_msg(ok, "%s %s: %s (max abs err %g)", fixture, name, r.note, r.max_abs);
}

static double max_abs_diff(const ldm_tensor *a, const ldm_tensor *b)
{
    ck_assert_int_eq(lt_numel(a), lt_numel(b));
    double m = 0;
    for (int64_t i = 0; i < lt_numel(a); i++) {
        double d = fabs((double)lt_f32(a)[i] - lt_f32(b)[i]);
        if (!(d <= m)) m = isnan(d) ? INFINITY : d;
    }
    return m;
}

/* th.cat([a, b], dim=1) of two NCHW tensors. */
static ldm_tensor *concat_channels(const ldm_tensor *a, const ldm_tensor *b)
{
    int64_t B = a->shape[0], H = a->shape[2], W = a->shape[3], ca = a->shape[1], cb = b->shape[1];
    ck_assert(b->shape[0] == B && b->shape[2] == H && b->shape[3] == W);
    ldm_tensor *t = lt_new_f32_4d(B, ca + cb, H, W);
    ck_assert(t != NULL);
    size_t na = (size_t)(ca * H * W), nb = (size_t)(cb * H * W);
    for (int64_t i = 0; i < B; i++) {
        memcpy(lt_f32(t) + i * (na + nb), lt_f32(a) + i * na, na * sizeof(float));
        memcpy(lt_f32(t) + i * (na + nb) + na, lt_f32(b) + i * nb, nb * sizeof(float));
    }
    return t;
}

/* A store viewing `src`'s tensors except those named by `drop_prefix` (NULL: keep all), plus
 * one extra tensor (name NULL: none). The extra data must outlive the store. */
static lw_store *store_view(const lw_store *src, const char *drop_prefix, const char *extra_name, int extra_ndim,
                            const int64_t *extra_shape, const float *extra_data)
{
    lw_store *s = lw_store_new("(test view)");
    ck_assert(s != NULL);
    for (size_t i = 0; i < lw_count(src); i++) {
        const lw_tensor *t = lw_at(src, i);
        if (drop_prefix && strncmp(t->name, drop_prefix, strlen(drop_prefix)) == 0) continue;
        ck_assert(lw_store_add(s, t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes) == LDM_OK);
    }
    if (extra_name) {
        size_t n = 1;
        for (int i = 0; i < extra_ndim; i++) n *= (size_t)extra_shape[i];
        ck_assert(lw_store_add(s, extra_name, LW_F32, extra_ndim, extra_shape, extra_data, n * sizeof(float)) ==
                  LDM_OK);
    }
    lw_store_finish(s);
    return s;
}

/* ---------------------------------------------------------------- fixture access */

/* A fixture opened for a test: its case, weights, io, checked UNet description, the network on
 * the non-EMA weights, a pool of fx_threads() threads and, when asked for, the forward inputs x /
 * timesteps (and context for a SpatialTransformer UNet) from its io. */
typedef struct ufx {
    char dir[4096];
    lj_value *cas;
    lw_store *s, *io;
    ld_unet d;
    lunet *n;
    runner r;
    ldm_tensor *x, *t, *ctx;
} ufx;

/* 0 (after a SKIPPED line) when the fixture is absent. */
static int ufx_open(ufx *f, const char *name, const unet_spec *spec, const char *weights_file, int inputs)
{
    memset(f, 0, sizeof *f);
    if (!fixture_dir(name, f->dir, sizeof f->dir)) return 0;
    f->cas = load_case(f->dir);
    f->s = open_file(f->dir, weights_file);
    f->io = open_file(f->dir, "io.safetensors");
    f->d = fixture_desc(f->dir, spec);
    f->n = make_unet(&f->d, f->s, 0);
    runner_init(&f->r, fx_threads());
    if (!inputs) return 1;
    f->x = io_tensor(f->io, "x");
    f->t = io_tensor(f->io, "timesteps");
    if (f->d.use_spatial_transformer) f->ctx = io_tensor(f->io, "context");
    return 1;
}

static void ufx_close(ufx *f)
{
    ldm_tensor_free(f->x);
    ldm_tensor_free(f->t);
    ldm_tensor_free(f->ctx);
    runner_done(&f->r);
    lunet_free(f->n);
    lw_close(f->s);
    lw_close(f->io);
    lj_free(f->cas);
}

/* ---------------------------------------------------------------- fixtures */

/* One unet.forward call of a fixture: inputs x / timesteps / context? -> out. */
static void run_forward_fixture(const char *name, const unet_spec *spec, const char *weights_file)
{
    ufx f;
    if (!ufx_open(&f, name, spec, weights_file, 1)) return;
    ldm_tensor *ref = io_tensor(f.io, "out");
    ldm_tensor *out = forward_ok(f.n, &f.r.ctx, f.x, f.t, f.ctx, NULL);
    char what[256];
    snprintf(what, sizeof what, "%s[%s]", name, weights_file);
    expect_match(what, f.cas, "out", out, ref);
    ldm_tensor_free(out);
    ldm_tensor_free(ref);
    ufx_close(&f);
}

START_TEST(test_attnblock)
{
    run_forward_fixture("unet_attnblock", &SPEC_ATTNBLOCK, "model.safetensors");
    run_forward_fixture("unet_attnblock", &SPEC_ATTNBLOCK, "model.ckpt");
}
END_TEST

START_TEST(test_crossattn) { run_forward_fixture("unet_crossattn", &SPEC_CROSSATTN, "model.safetensors"); }
END_TEST

START_TEST(test_sd2_linear) { run_forward_fixture("unet_sd2_linear", &SPEC_SD2, "model.safetensors"); }
END_TEST

/* A concat model's apply_model: unet(cat[<x_name>, <c_name>], timesteps) -> out_apply_model. */
static void check_concat_apply(ufx *f, const char *name, const char *x_name, const char *c_name)
{
    ldm_tensor *x = io_tensor(f->io, x_name), *c = io_tensor(f->io, c_name);
    ldm_tensor *ref = io_tensor(f->io, "out_apply_model"), *cat = concat_channels(x, c);
    ldm_tensor *out = forward_ok(f->n, &f->r.ctx, cat, f->t, NULL, NULL);
    expect_match(name, f->cas, "out_apply_model", out, ref);
    ldm_tensor_free(out);
    ldm_tensor_free(cat);
    ldm_tensor_free(x);
    ldm_tensor_free(c);
    ldm_tensor_free(ref);
}

/* Both calls: unet.forward on the given 7-channel x, and apply_model = unet(cat[x_noisy, c]). */
START_TEST(test_concat_resupdown)
{
    run_forward_fixture("unet_concat_resupdown", &SPEC_CONCAT, "model.safetensors");
    ufx f;
    if (!ufx_open(&f, "unet_concat_resupdown", &SPEC_CONCAT, "model.safetensors", 1)) return;
    check_concat_apply(&f, "unet_concat_resupdown", "x_noisy", "c_concat");
    ufx_close(&f);
}
END_TEST

/* cond_spatial_rescaler's apply_model: UNet(cat[x, c]) with in_channels 6, F16 weights, 5x9
 * latents (a one-level UNet, so any size goes); c is the fixture's expected rescaler output. */
START_TEST(test_spatial_rescaler_apply)
{
    ufx f;
    if (!ufx_open(&f, "cond_spatial_rescaler", &SPEC_RESCALER, "model.safetensors", 1)) return;
    ck_assert(lw_find(f.s, PREFIX "input_blocks.0.0.weight")->dtype == LW_F16);
    check_concat_apply(&f, "cond_spatial_rescaler", "x", "c");
    ufx_close(&f);
}
END_TEST

/* ---------------------------------------------------------------- EMA */

static float buffer_at(const lw_store *s, const char *name, int64_t t)
{
    float *v = NULL;
    int64_t shape[1] = {1000};
    ck_assert_msg(lw_get_f32(s, name, 1, shape, &v) == LDM_OK, "%s: %s", name, ldm_last_error());
    float r = v[t];
    ldm_free(v);
    return r;
}

/* LatentDiffusion.p_sample (clip_denoised False) around eps = unet(x, t), in float32 as torch:
 * x0 = sra[t] x - srm1[t] eps; mean = c1[t] x0 + c2[t] x; x_prev = mean + (t != 0) exp(0.5 lv[t]) noise. */
static ldm_tensor *p_sample(const lw_store *s, const ldm_tensor *x, int64_t t, const ldm_tensor *eps,
                            const ldm_tensor *noise)
{
    float sra = buffer_at(s, "sqrt_recip_alphas_cumprod", t), srm1 = buffer_at(s, "sqrt_recipm1_alphas_cumprod", t);
    float c1 = buffer_at(s, "posterior_mean_coef1", t), c2 = buffer_at(s, "posterior_mean_coef2", t);
    float sd = expf(0.5f * buffer_at(s, "posterior_log_variance_clipped", t));
    ldm_tensor *o = lt_clone(x);
    ck_assert(o != NULL);
    for (int64_t i = 0; i < lt_numel(x); i++) {
        float xv = lt_f32(x)[i], x0 = sra * xv - srm1 * lt_f32(eps)[i];
        float mean = c1 * x0 + c2 * xv;
        lt_f32(o)[i] = mean + (t != 0 ? 1.0f : 0.0f) * sd * lt_f32(noise)[i];
    }
    return o;
}

/* ldm_uncond_plms was sampled inside ema_scope(): its p_sample outputs need the model_ema.*
 * weights (randomised independently of model.diffusion_model.*). */
START_TEST(test_ema_weights)
{
    ufx f;
    if (!ufx_open(&f, "ldm_uncond_plms", &SPEC_UNCOND, "model.safetensors", 0)) return;
    lunet *ema = make_unet(&f.d, f.s, 1), *raw = f.n;
    for (int k = 0; k < 3; k++) {
        char nx[32], nt[32], nn[32], no[32];
        snprintf(nx, sizeof nx, "ps%d_x", k);
        snprintf(nt, sizeof nt, "ps%d_t", k);
        snprintf(nn, sizeof nn, "ps%d_noise", k);
        snprintf(no, sizeof no, "ps%d_x_prev", k);
        ldm_tensor *x = io_tensor(f.io, nx), *t = io_tensor(f.io, nt), *noise = io_tensor(f.io, nn);
        ldm_tensor *ref = io_tensor(f.io, no);
        ldm_tensor *e_ema = forward_ok(ema, &f.r.ctx, x, t, NULL, NULL);
        ldm_tensor *e_raw = forward_ok(raw, &f.r.ctx, x, t, NULL, NULL);
        double diff = max_abs_diff(e_ema, e_raw);
        printf("ldm_uncond_plms t=%lld: EMA vs raw eps differ by %.3g\n", (long long)lt_i64(t)[0], diff);
        ck_assert_msg(diff > 1e-2, "EMA and raw weights give the same eps");
        ldm_tensor *xp = p_sample(f.s, x, lt_i64(t)[0], e_ema, noise);
        ldm_tensor *xp_raw = p_sample(f.s, x, lt_i64(t)[0], e_raw, noise);
        expect_match("ldm_uncond_plms p_sample(EMA)", f.cas, no, xp, ref);
        fx_compare_result cr;
        ck_assert_msg(!fx_compare(xp_raw, ref, fx_tolerance_for(f.cas, no), &cr),
                      "the raw weights should NOT reproduce %s", no);
        ldm_tensor_free(xp);
        ldm_tensor_free(xp_raw);
        ldm_tensor_free(e_ema);
        ldm_tensor_free(e_raw);
        ldm_tensor_free(x);
        ldm_tensor_free(t);
        ldm_tensor_free(noise);
        ldm_tensor_free(ref);
    }
    lunet_free(ema);

    /* The EMA path reads model_ema.* only: without them it fails naming the missing key, and it
     * does not need model.diffusion_model.* at all. */
    lw_store *no_ema = store_view(f.s, "model_ema.", NULL, 0, NULL, NULL);
    lunet *n = NULL;
    ck_assert_int_ne(lunet_create(&f.d, no_ema, PREFIX, 1, &n), LDM_OK);
    ck_assert_ptr_null(n);
    printf("no EMA buffers: %s\n", ldm_last_error());
    ck_assert_msg(strstr(ldm_last_error(), "model_ema.diffusion_model") != NULL, "%s", ldm_last_error());
    lw_close(no_ema);
    lw_store *only_ema = store_view(f.s, PREFIX, NULL, 0, NULL, NULL);
    n = make_unet(&f.d, only_ema, 1);
    lunet_free(n);
    ck_assert_int_ne(lunet_create(&f.d, only_ema, PREFIX, 0, &n), LDM_OK);
    lw_close(only_ema);
    ufx_close(&f);
}
END_TEST

/* ---------------------------------------------------------------- context, threads */

/* Cross-attention is a softmax-weighted mean over context tokens: duplicating every token or
 * reversing their order leaves the output unchanged, so a 14- or 7-token context reproduces the
 * fixture (the context length may change between calls). */
START_TEST(test_context_length)
{
    ufx f;
    if (!ufx_open(&f, "unet_crossattn", &SPEC_CROSSATTN, "model.safetensors", 1)) return;
    const ldm_tensor *ctx = f.ctx;
    ldm_tensor *ref = io_tensor(f.io, "out");
    int64_t B = ctx->shape[0], T = ctx->shape[1], D = ctx->shape[2];
    int64_t dshape[3] = {B, 2 * T, D};
    ldm_tensor *dup = lt_new_f32(3, dshape), *rev = lt_clone(ctx);
    ck_assert(dup && rev);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < T; i++) {
            const float *src = lt_f32(ctx) + (b * T + i) * D;
            memcpy(lt_f32(dup) + (b * 2 * T + 2 * i) * D, src, D * sizeof(float));
            memcpy(lt_f32(dup) + (b * 2 * T + 2 * i + 1) * D, src, D * sizeof(float));
            memcpy(lt_f32(rev) + (b * T + (T - 1 - i)) * D, src, D * sizeof(float));
        }
    ldm_tensor *o1 = forward_ok(f.n, &f.r.ctx, f.x, f.t, dup, NULL);
    expect_match("unet_crossattn (duplicated context tokens)", f.cas, "out", o1, ref);
    ldm_tensor *o2 = forward_ok(f.n, &f.r.ctx, f.x, f.t, rev, NULL);
    expect_match("unet_crossattn (reversed context)", f.cas, "out", o2, ref);
    ldm_tensor_free(o1);
    ldm_tensor_free(o2);
    ldm_tensor_free(dup);
    ldm_tensor_free(rev);
    ldm_tensor_free(ref);
    ufx_close(&f);
}
END_TEST

static void threads_check(const char *name, const unet_spec *spec)
{
    ufx f;
    if (!ufx_open(&f, name, spec, "model.safetensors", 1)) return;
    runner r1, r2;
    runner_init(&r1, 1);
    runner_init(&r2, 2);
    ldm_tensor *a = forward_ok(f.n, &r1.ctx, f.x, f.t, f.ctx, NULL);
    ldm_tensor *b = forward_ok(f.n, &r2.ctx, f.x, f.t, f.ctx, NULL);
    double diff = max_abs_diff(a, b);
    printf("%s: 1 vs 2 threads max abs diff %.3g\n", name, diff);
    ck_assert_msg(diff <= 1e-5, "%s: results depend on the thread count (%g)", name, diff);
    ldm_tensor_free(a);
    ldm_tensor_free(b);
    runner_done(&r1);
    runner_done(&r2);
    ufx_close(&f);
}

START_TEST(test_threads)
{
    threads_check("unet_crossattn", &SPEC_CROSSATTN);
    threads_check("unet_attnblock", &SPEC_ATTNBLOCK);
}
END_TEST

/* ---------------------------------------------------------------- errors */

static void expect_error(ldm_status st, ldm_status want, const char *needle)
{
    ck_assert_msg(st == want, "expected status %d, got %d (%s)", want, st, ldm_last_error());
    ck_assert_msg(strstr(ldm_last_error(), needle) != NULL, "message '%s' lacks '%s'", ldm_last_error(), needle);
    printf("  expected error: %s\n", ldm_last_error());
}

START_TEST(test_bad_inputs)
{
    ufx f;
    if (!ufx_open(&f, "unet_crossattn", &SPEC_CROSSATTN, "model.safetensors", 1)) return;
    lunet *n = f.n;
    ldm_tensor *x = f.x, *t = f.t, *ctx = f.ctx;
    ldm_tensor *out = NULL;
    lctx c = {.pool = NULL, .cancel = NULL};

    ldm_tensor *x4 = lt_new_f32_4d(2, 4, 16, 16), *x_odd = lt_new_f32_4d(2, 3, 15, 16);
    expect_error(lunet_forward(n, &c, x4, t, ctx, NULL, &out), LDM_ERR_INVALID_ARGUMENT, "[B,3,H,W]");
    expect_error(lunet_forward(n, &c, x_odd, t, ctx, NULL, &out), LDM_ERR_INVALID_ARGUMENT, "multiples of 2");
    expect_error(lunet_forward(n, &c, x, t, NULL, NULL, &out), LDM_ERR_INVALID_ARGUMENT, "context");
    int64_t bad_ctx_shape[3] = {2, 7, 32}, t3_shape[1] = {3}, c1_shape[3] = {1, 7, 48};
    ldm_tensor *bad_ctx = lt_new_f32(3, bad_ctx_shape), *t3 = lt_new_i64(1, t3_shape), *ctx1 = lt_new_f32(3, c1_shape);
    expect_error(lunet_forward(n, &c, x, t, bad_ctx, NULL, &out), LDM_ERR_INVALID_ARGUMENT, "[2,T,48]");
    expect_error(lunet_forward(n, &c, x, t, ctx1, NULL, &out), LDM_ERR_INVALID_ARGUMENT, "[2,T,48]");
    expect_error(lunet_forward(n, &c, x, t3, ctx, NULL, &out), LDM_ERR_INVALID_ARGUMENT, "timesteps");
    expect_error(lunet_forward(n, &c, x, ctx, ctx, NULL, &out), LDM_ERR_INVALID_ARGUMENT, "timesteps");
    expect_error(lunet_forward(n, &c, x, t, ctx, t, &out), LDM_ERR_INVALID_ARGUMENT, "class");
    expect_error(lunet_forward(n, &c, NULL, t, ctx, NULL, &out), LDM_ERR_INVALID_ARGUMENT, "x");
    ck_assert_ptr_null(out);

    /* cancellation between blocks */
    atomic_int flag = 1;
    lctx cc = {.pool = NULL, .cancel = &flag};
    expect_error(lunet_forward(n, &cc, x, t, ctx, NULL, &out), LDM_CANCELLED, "cancelled");
    ck_assert_ptr_null(out);

    ldm_tensor_free(x4);
    ldm_tensor_free(x_odd);
    ldm_tensor_free(bad_ctx);
    ldm_tensor_free(t3);
    ldm_tensor_free(ctx1);
    ufx_close(&f);
}
END_TEST

START_TEST(test_bad_weights)
{
    char dir[4096];
    if (!fixture_dir("unet_attnblock", dir, sizeof dir)) return;
    lw_store *s = open_file(dir, "model.safetensors");
    ld_unet d = fixture_desc(dir, &SPEC_ATTNBLOCK);
    lunet *n = NULL;

    /* a missing tensor is named */
    lw_store *holed = store_view(s, PREFIX "middle_block.1.qkv.weight", NULL, 0, NULL, NULL);
    expect_error(lunet_create(&d, holed, PREFIX, 0, &n), LDM_ERR_NOT_FOUND, "middle_block.1.qkv.weight");
    ck_assert_ptr_null(n);
    lw_close(holed);

    /* a description that does not match the checkpoint: expected vs found shapes */
    ld_unet wide = d;
    wide.model_channels = 64;
    ck_assert_int_ne(lunet_create(&wide, s, PREFIX, 0, &n), LDM_OK);
    printf("  expected error: %s\n", ldm_last_error());
    ck_assert_msg(strstr(ldm_last_error(), "time_embed.0.weight") != NULL, "%s", ldm_last_error());
    ld_unet four_in = d;
    four_in.in_channels = 4;
    expect_error(lunet_create(&four_in, s, PREFIX, 0, &n), LDM_ERR_FORMAT, "input_blocks.0.0.weight");
    ld_unet no_attn = d; /* attention nowhere: the Upsample moves to output_blocks.1.1 */
    no_attn.n_attention_resolutions = 0;
    expect_error(lunet_create(&no_attn, s, PREFIX, 0, &n), LDM_ERR_NOT_FOUND, "output_blocks.1.1.conv.weight");
    ld_unet no_heads = d;
    no_heads.num_head_channels = -1;
    expect_error(lunet_create(&no_heads, s, PREFIX, 0, &n), LDM_ERR_UNSUPPORTED, "num_heads");
    ld_unet odd_heads = d;
    odd_heads.num_head_channels = 12;
    expect_error(lunet_create(&odd_heads, s, PREFIX, 0, &n), LDM_ERR_UNSUPPORTED, "not divisible");
    ld_unet no_ctx = d;
    no_ctx.use_spatial_transformer = 1;
    expect_error(lunet_create(&no_ctx, s, PREFIX, 0, &n), LDM_ERR_INVALID_ARGUMENT, "context_dim");
    ck_assert_ptr_null(n);
    lw_close(s);
}
END_TEST

/* num_classes: emb += label_emb(y). A zero embedding row must leave the output as without labels,
 * another row must change it; labels outside [0, num_classes) are rejected. unet_crossattn, as
 * its 64-channel level has 2 channels per GroupNorm group: with 1 channel per group (32 channels,
 * as in unet_attnblock) the out_layers GroupNorm removes the per-channel emb shift entirely. */
START_TEST(test_class_labels)
{
    ufx f;
    if (!ufx_open(&f, "unet_crossattn", &SPEC_CROSSATTN, "model.safetensors", 1)) return;
    enum { CLASSES = 3, E = 128 };
    static float table[CLASSES * E];
    for (int i = 0; i < E; i++) table[E + i] = 0.5f * (float)((i % 7) - 3); /* row 1; rows 0, 2 zero */
    int64_t shape[2] = {CLASSES, E};
    lw_store *sv = store_view(f.s, NULL, PREFIX "label_emb.weight", 2, shape, table);
    ld_unet dc = f.d;
    dc.num_classes = CLASSES;
    lunet *plain = f.n, *cond = make_unet(&dc, sv, 0);
    lctx c = {.pool = NULL, .cancel = NULL};
    ldm_tensor *x = f.x, *t = f.t, *ctx = f.ctx;
    int64_t yshape[1] = {2};
    ldm_tensor *y = lt_new_i64(1, yshape);
    lt_i64(y)[0] = 0, lt_i64(y)[1] = 2;
    ldm_tensor *a = forward_ok(plain, &c, x, t, ctx, NULL), *b = forward_ok(cond, &c, x, t, ctx, y);
    ck_assert_msg(max_abs_diff(a, b) == 0.0, "a zero label embedding changed the output");
    lt_i64(y)[1] = 1;
    ldm_tensor *b2 = forward_ok(cond, &c, x, t, ctx, y);
    double d1 = max_abs_diff(a, b2);
    printf("class label 1 changes the output by %.3g\n", d1);
    ck_assert_msg(d1 > 1e-3, "label 1 did not change the output (%g)", d1);
    /* row 0 unchanged: batch element 0 of both outputs agrees */
    for (int64_t i = 0; i < lt_numel(a) / 2; i++) ck_assert(lt_f32(a)[i] == lt_f32(b2)[i]);
    ldm_tensor *out = NULL;
    lt_i64(y)[1] = CLASSES;
    expect_error(lunet_forward(cond, &c, x, t, ctx, y, &out), LDM_ERR_INVALID_ARGUMENT, "outside [0,3)");
    expect_error(lunet_forward(cond, &c, x, t, ctx, NULL, &out), LDM_ERR_INVALID_ARGUMENT, "class");
    ck_assert_int_eq(lunet_num_classes(cond), CLASSES);
    ldm_tensor_free(a);
    ldm_tensor_free(b);
    ldm_tensor_free(b2);
    ldm_tensor_free(y);
    lunet_free(cond);
    lw_close(sv);
    ufx_close(&f);
}
END_TEST

/* Every allocation of create and forward failing in turn: an error, never a crash or a leak. */
START_TEST(test_alloc_failures)
{
    ufx f;
    if (!ufx_open(&f, "unet_crossattn", &SPEC_CROSSATTN, "model.safetensors", 1)) return;
    lctx c = {.pool = NULL, .cancel = NULL};
    int create_ok = 0, forward_ok_at = 0;
    for (long k = 1; k < 5000 && !create_ok; k++) {
        lunet *n = NULL;
        ldm_alloc_fail_after(k);
        ldm_status st = lunet_create(&f.d, f.s, PREFIX, 0, &n);
        ldm_alloc_fail_after(0);
        if (st == LDM_OK) {
            create_ok = (int)k;
            lunet_free(n);
        } else {
            ck_assert_ptr_null(n);
        }
    }
    ck_assert_msg(create_ok, "lunet_create never succeeded");
    for (long k = 1; k < 5000 && !forward_ok_at; k++) {
        ldm_tensor *out = NULL;
        lunet *fresh = make_unet(&f.d, f.s, 0); /* fresh workspace: its buffers are allocated in forward */
        ldm_alloc_fail_after(k);
        ldm_status st = lunet_forward(fresh, &c, f.x, f.t, f.ctx, NULL, &out);
        ldm_alloc_fail_after(0);
        if (st == LDM_OK) forward_ok_at = (int)k;
        else ck_assert_ptr_null(out);
        ldm_tensor_free(out);
        lunet_free(fresh);
    }
    printf("allocation failures: create succeeds from the %d-th, forward from the %d-th\n", create_ok, forward_ok_at);
    ck_assert(forward_ok_at);
    ufx_close(&f);
}
END_TEST

static Suite *unet_suite(void)
{
    Suite *su = suite_create("unet");
    TCase *tc = tcase_create("unet");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_attnblock);
    tcase_add_test(tc, test_crossattn);
    tcase_add_test(tc, test_concat_resupdown);
    tcase_add_test(tc, test_sd2_linear);
    tcase_add_test(tc, test_spatial_rescaler_apply);
    tcase_add_test(tc, test_ema_weights);
    tcase_add_test(tc, test_context_length);
    tcase_add_test(tc, test_threads);
    tcase_add_test(tc, test_bad_inputs);
    tcase_add_test(tc, test_bad_weights);
    tcase_add_test(tc, test_class_labels);
    tcase_add_test(tc, test_alloc_failures);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    return ck_run_suite(unet_suite());
}
