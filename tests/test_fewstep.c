/* test_fewstep.c - few-step sampling (issue #14, docs/few-step.md): the LCM scheduler's timesteps,
 * boundary conditions and step against their formulas; diffusers' trailing spacing against numpy's
 * arange; the LCM guidance embedding of the UNet against the golden of diffusers'
 * TimestepEmbedding + get_guidance_scale_embedding (tests/fixtures/fewstep_sd1, made by
 * tests/reference/make_fewstep_goldens.py); ldm_generate with an LCM-distilled UNet (no CFG branch,
 * the scale fed to the network) against the same loop driven through the public API; the errors.
 * The trajectories themselves are checked by the conformance runner on the same fixture. */
#include <check.h>

#include "api/pipeline_internal.h"
#include "core/tensor.h"
#include "models/unet.h"
#include "sampling/sampling.h"
#include "support/ck_fixture.h"
#include "support/ck_tmpdir.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* tests/fixtures/fewstep_sd1 beside this file. */
static const char *fixture(void)
{
    static char dir[1024];
    const char *slash = strrchr(__FILE__, '/');
    int len = slash ? (int)(slash - __FILE__) : 0;
    snprintf(dir, sizeof dir, "%.*s%sfixtures/fewstep_sd1", len, __FILE__, slash ? "/" : "");
    return dir;
}

static ldm_model *load_fixture_model(void)
{
    char path[1200], config[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", fixture());
    snprintf(config, sizeof config, "%s/config.yaml", fixture());
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.config_path = config;
    mp.n_threads = 2;
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load(path, &mp, &m) == LDM_OK, "%s", ldm_last_error());
    return m;
}

/* ---------------------------------------------------------------- LCM scheduler */

static void expect_ts(const int64_t *got, const int64_t *want, int n)
{
    for (int i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "t[%d] = %lld, want %lld", i, (long long)got[i], (long long)want[i]);
}

START_TEST(lcm_timesteps_as_lcmscheduler)
{
    int64_t t[64];
    static const int64_t four[] = {999, 759, 499, 259}, eight[] = {999, 879, 759, 639, 499, 379, 259, 139};
    ck_assert_int_eq(ls_lcm_timesteps(1000, 50, 4, t), LDM_OK);
    expect_ts(t, four, 4);
    ck_assert_int_eq(ls_lcm_timesteps(1000, 50, 8, t), LDM_OK);
    expect_ts(t, eight, 8);
    ck_assert_int_eq(ls_lcm_timesteps(1000, 50, 1, t), LDM_OK);
    ck_assert_int_eq(t[0], 999);
    ck_assert_int_eq(ls_lcm_timesteps(1000, 50, 2, t), LDM_OK);
    ck_assert_int_eq(t[1], 499);
    /* k = 1000 // 30 = 33: origin (j+1)*33 - 1, the first (largest) is 989 */
    ck_assert_int_eq(ls_lcm_timesteps(1000, 30, 3, t), LDM_OK);
    ck_assert_int_eq(t[0], 989);
    ck_assert_int_eq(t[1], 659);
    ck_assert_int_eq(t[2], 329);
    ck_assert_int_eq(ls_lcm_timesteps(1000, 50, 51, t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ls_lcm_timesteps(1000, 1001, 4, t), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(ls_lcm_timesteps(1000, 0, 4, t), LDM_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(lcm_boundary_conditions)
{
    float cs, co;
    ls_lcm_scalings(0, 10.0, &cs, &co);
    ck_assert(cs == 1.0f && co == 0.0f); /* t = 0: the consistency function is the identity */
    ls_lcm_scalings(999, 10.0, &cs, &co);
    ck_assert(fabs(cs - 0.25 / (9990.0 * 9990.0 + 0.25)) < 1e-15);
    ck_assert(fabs(co - 9990.0 / sqrt(9990.0 * 9990.0 + 0.25)) < 1e-7);
    ls_lcm_scalings(19, 10.0, &cs, &co);
    ck_assert(fabs(cs - 0.25 / 36100.25) < 1e-10);
}
END_TEST

START_TEST(lcm_step_parameterizations)
{
    enum { N = 5 };
    const float x[N] = {0.3f, -1.2f, 2.5f, 0.0f, -0.7f}, o[N] = {0.9f, 0.1f, -1.5f, 0.4f, 2.0f};
    const float nz[N] = {-0.5f, 1.1f, 0.2f, -2.0f, 0.6f};
    float a = 0.3f, ap = 0.7f, cs = 0.01f, co = 0.99f, xn[N], den[N];
    for (int param = LDM_PARAM_EPS; param <= LDM_PARAM_X0; param++) {
        for (int last = 0; last < 2; last++) {
            ls_lcm_step(x, o, param, a, cs, co, last ? NULL : nz, ap, N, xn, den);
            for (int i = 0; i < N; i++) {
                double x0 = param == LDM_PARAM_EPS ? (x[i] - sqrt(1 - a) * o[i]) / sqrt(a)
                            : param == LDM_PARAM_V ? sqrt(a) * x[i] - sqrt(1 - a) * o[i]
                                                   : o[i];
                double d = co * x0 + cs * x[i];
                double want = last ? d : sqrt(ap) * d + sqrt(1 - ap) * nz[i];
                ck_assert_msg(fabs(den[i] - d) < 1e-5 && fabs(xn[i] - want) < 1e-5, "param %d last %d i %d", param,
                              last, i);
            }
        }
    }
}
END_TEST

/* The public state machine: 4 LCM steps with given model outputs and noise reproduce the formula
 * chain; the last step returns the denoised sample and ignores its noise row. */
START_TEST(lcm_sampler_state_machine)
{
    enum { T = 1000, N = 3 };
    static float ac[T];
    double prod = 1.0;
    for (int t = 0; t < T; t++) {
        double b = pow(sqrt(0.00085) + (sqrt(0.012) - sqrt(0.00085)) * t / (T - 1), 2);
        ac[t] = (float)(prod *= 1.0 - b);
    }
    ldm_sampler_params p;
    ldm_sampler_params_init(&p);
    p.kind = LDM_SAMPLER_LCM;
    p.steps = 4;
    ldm_sampler *s = NULL;
    ck_assert_msg(ldm_sampler_create(ac, T, LDM_PARAM_EPS, &p, &s) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_sampler_total_steps(s), 4);
    ck_assert_int_eq(ldm_sampler_total_evaluations(s), 4);
    int64_t shx[1] = {N}, shn[2] = {4, N};
    ldm_tensor *xT = NULL, *noise = NULL, *out = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 1, shx, &xT), LDM_OK);
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 1, shx, &out), LDM_OK);
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 2, shn, &noise), LDM_OK);
    for (int i = 0; i < N; i++) lt_f32(xT)[i] = (float)(i - 1);
    for (int i = 0; i < 4 * N; i++) lt_f32(noise)[i] = (float)sin(i + 1.0);
    ck_assert_int_eq(ldm_sampler_set_noise(s, noise), LDM_OK);
    ck_assert_int_eq(ldm_sampler_begin(s, xT), LDM_OK);
    static const int64_t ts[4] = {999, 759, 499, 259};
    float x[N], xn[N], den[N];
    memcpy(x, lt_f32(xT), sizeof x);
    const ldm_tensor *xin;
    double t;
    for (int k = 0; k < 4; k++) {
        ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), 1);
        ck_assert(t == (double)ts[k]);
        for (int i = 0; i < N; i++) lt_f32(out)[i] = 0.5f * lt_f32(xin)[i] + 0.1f * (float)k;
        float cs, co;
        ls_lcm_scalings(ts[k], 10.0, &cs, &co);
        ls_lcm_step(x, lt_f32(out), LDM_PARAM_EPS, ac[ts[k]], cs, co, k < 3 ? lt_f32(noise) + k * N : NULL,
                    k < 3 ? ac[ts[k + 1]] : ac[ts[k]], N, xn, den);
        memcpy(x, xn, sizeof x);
        ck_assert_int_eq(ldm_sampler_give(s, out), LDM_OK);
        for (int i = 0; i < N; i++) {
            ck_assert(lt_f32(ldm_sampler_current(s))[i] == x[i]);
            ck_assert(lt_f32(ldm_sampler_pred_x0(s))[i] == den[i]);
        }
    }
    ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), 0);
    for (int i = 0; i < N; i++) ck_assert(x[i] == den[i]); /* the final sample is the denoised one */
    ldm_tensor_free(xT);
    ldm_tensor_free(out);
    ldm_tensor_free(noise);
    ldm_sampler_free(s);
}
END_TEST

/* ---------------------------------------------------------------- trailing spacing */

START_TEST(trailing_as_numpy)
{
    int64_t t[1001];
    int n;
    ck_assert_int_eq(ls_trailing_timesteps(1000, 1, t, &n), LDM_OK);
    ck_assert(n == 1 && t[0] == 999);
    ck_assert_int_eq(ls_trailing_timesteps(1000, 4, t, &n), LDM_OK);
    static const int64_t four[] = {999, 749, 499, 249};
    ck_assert_int_eq(n, 4);
    expect_ts(t, four, 4);
    ck_assert_int_eq(ls_trailing_timesteps(1000, 3, t, &n), LDM_OK); /* round(666.67), round(333.33) */
    static const int64_t three[] = {999, 666, 332};
    ck_assert_int_eq(n, 3);
    expect_ts(t, three, 3);
    /* numpy's arange makes 62 values for 1000/61 (its length is ceil(1000/(1000/61)) = 62) */
    ck_assert_int_eq(ls_trailing_timesteps(1000, 61, t, &n), LDM_OK);
    ck_assert_int_eq(n, 62);
    ck_assert_int_eq(t[0], 999);
    ck_assert_int_eq(ls_trailing_timesteps(1000, 1000, t, &n), LDM_OK);
    ck_assert(n == 1000 && t[999] == 0);
    ck_assert_int_eq(ls_trailing_timesteps(1000, 0, t, &n), LDM_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(spacing_and_param_errors)
{
    static float ac[1000];
    for (int t = 0; t < 1000; t++) ac[t] = 0.999f - 0.998f * (float)t / 999.0f;
    ldm_sampler_params p;
    ldm_sampler_params_init(&p);
    ldm_sampler *s = NULL;
    p.kind = LDM_SAMPLER_DDIM;
    p.steps = 4;
    p.spacing = LDM_SPACING_TRAILING;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "trailing"));
    p.spacing = (ldm_timestep_spacing)7;
    p.kind = LDM_SAMPLER_EULER;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_ERR_INVALID_ARGUMENT);
    p.spacing = LDM_SPACING_DEFAULT;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_X0, &p, &s), LDM_ERR_UNSUPPORTED);
    p.kind = LDM_SAMPLER_LCM;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_X0, &p, &s), LDM_OK);
    ldm_sampler_free(s);
    s = NULL;
    p.steps = 60; /* more than the 50 distillation timesteps */
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "original_inference_steps"));
    /* a trailing Euler run starts at the model's own sigma(999) and evaluates at integer t */
    p.kind = LDM_SAMPLER_EULER;
    p.steps = 4;
    p.spacing = LDM_SPACING_TRAILING;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_OK);
    int n_sig;
    const double *sig = ls_sampler_sigmas(s, &n_sig);
    ck_assert_int_eq(n_sig, 5);
    ck_assert(sig[0] == (double)ls_sampler_ksched(s)->sigmas[999] &&
              sig[3] == (double)ls_sampler_ksched(s)->sigmas[249]);
    ck_assert(sig[4] == 0.0 && ls_sampler_step_timestep(s, 1) == 749.0);
    ldm_sampler_free(s);
}
END_TEST

/* ---------------------------------------------------------------- guidance embedding */

/* time_embed with the guidance embedding against diffusers (fixture time_emb, before the SiLU). */
START_TEST(guidance_embedding_golden)
{
    ldm_model *m = load_fixture_model();
    ck_assert_int_eq(ldm_model_guidance_embedding_dim(m), 32);
    char io_path[1200];
    snprintf(io_path, sizeof io_path, "%s", fixture());
    lw_store *io = open_file(io_path, "io.safetensors");
    lj_value *cas = load_case(io_path);
    ldm_tensor *t = io_tensor(io, "emb_t"), *g = io_tensor(io, "emb_guidance"), *ref = io_tensor(io, "time_emb");
    struct ldm_unet *u;
    ck_assert_int_eq(lm_unet(m, &u), LDM_OK);
    int B = (int)t->shape[0], E = (int)ref->shape[1];
    float *emb = calloc((size_t)B * E, sizeof *emb), *plain = calloc((size_t)B * E, sizeof *plain);
    ck_assert_msg(lunet_time_embedding(u->net, &m->ctx, lt_f32(t), lt_f32(g), B, emb) == LDM_OK, "%s",
                  ldm_last_error());
    ck_assert_int_eq(lunet_time_embedding(u->net, &m->ctx, lt_f32(t), NULL, B, plain), LDM_OK);
    fx_tolerance tol = fx_tolerance_for(cas, "time_emb");
    double max_err = 0.0, max_effect = 0.0;
    for (int i = 0; i < B * E; i++) {
        double r = lt_f32(ref)[i];
        max_err = fmax(max_err, fabs(emb[i] - r));
        max_effect = fmax(max_effect, fabs(plain[i] - r));
        ck_assert_msg(fabs(emb[i] - r) <= tol.atol + tol.rtol * fabs(r), "time_emb[%d] = %g, diffusers %g", i, emb[i],
                      r);
    }
    /* the embedding must matter far beyond the tolerance, or this test could not fail */
    ck_assert_msg(max_effect > 100 * tol.atol, "guidance effect %g vs atol %g", max_effect, tol.atol);
    printf("guidance embedding: max |err| %.3g (atol %.3g), effect of the embedding %.3g\n", max_err, tol.atol,
           max_effect);
    free(emb);
    free(plain);
    ldm_tensor_free(t);
    ldm_tensor_free(g);
    ldm_tensor_free(ref);
    lj_free(cas);
    lw_close(io);
    ldm_model_free(m);
}
END_TEST

/* ldm_generate on an LCM-distilled UNet: resolved defaults (4 steps, guidance 8.5), no CFG branch,
 * and the latent equals the loop a host runs with ldm_model_apply_embedded_guidance. */
START_TEST(generate_lcm_with_embedding)
{
    ldm_model *m = load_fixture_model();
    ldm_generate_params p, r;
    ldm_generate_params_init(&p);
    p.sampler = LDM_SAMPLER_LCM;
    p.steps = 0;
    p.class_label = 1;
    p.seed = 11;
    ck_assert_msg(ldm_generate_params_resolve(m, &p, &r) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(r.steps, 4);
    ck_assert(r.guidance_scale == 8.5f);
    ck_assert_int_eq(r.lcm_original_steps, 50);
    ldm_tensor *z = NULL;
    ck_assert_msg(lp_generate_latent(m, &p, &z) == LDM_OK, "%s", ldm_last_error());

    /* the same by hand through the public API */
    ldm_conditioner *cond;
    ldm_tensor *c = NULL, *labels = NULL, *x_T = NULL;
    int64_t one = 1, shape[4] = {1, 4, 8, 8};
    ck_assert_int_eq(ldm_model_conditioner(m, &cond), LDM_OK);
    ck_assert_int_eq(ldm_tensor_create(LDM_I64, 1, &one, &labels), LDM_OK);
    lt_i64(labels)[0] = 1;
    ck_assert_int_eq(ldm_conditioner_encode_labels(cond, labels, &c), LDM_OK);
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, shape, &x_T), LDM_OK);
    ck_assert_int_eq(ldm_randn(11, 0, x_T), LDM_OK);
    ldm_sampler_params sp;
    ldm_sampler_params_init(&sp);
    sp.kind = LDM_SAMPLER_LCM;
    sp.steps = 4;
    sp.seed = 11;
    ldm_sampler *s = NULL;
    ck_assert_int_eq(ldm_model_sampler(m, &sp, &s), LDM_OK);
    ck_assert_int_eq(ldm_sampler_begin(s, x_T), LDM_OK);
    const ldm_tensor *xin;
    double t;
    while (ldm_sampler_next(s, &xin, &t) == 1) {
        ldm_tensor *tt = NULL, *out = NULL;
        ck_assert_int_eq(ldm_tensor_create(LDM_F32, 1, &one, &tt), LDM_OK);
        lt_f32(tt)[0] = (float)t;
        ck_assert_msg(ldm_model_apply_embedded_guidance(m, xin, tt, c, 8.5f, &out) == LDM_OK, "%s", ldm_last_error());
        ck_assert_int_eq(ldm_sampler_give(s, out), LDM_OK);
        ldm_tensor_free(tt);
        ldm_tensor_free(out);
    }
    const ldm_tensor *x = ldm_sampler_current(s);
    for (int64_t i = 0; i < lt_numel(x); i++)
        ck_assert_msg(fabsf(lt_f32(x)[i] - lt_f32(z)[i]) <= 1e-5f * fmaxf(1.0f, fabsf(lt_f32(x)[i])),
                      "latent[%lld] %g vs the host loop's %g", (long long)i, lt_f32(z)[i], lt_f32(x)[i]);
    /* a different guidance scale changes the result (the scale does reach the network) */
    ldm_tensor *z2 = NULL;
    p.guidance_scale = 2.0f;
    ck_assert_int_eq(lp_generate_latent(m, &p, &z2), LDM_OK);
    double diff = 0.0;
    for (int64_t i = 0; i < lt_numel(z); i++) diff = fmax(diff, fabs(lt_f32(z)[i] - lt_f32(z2)[i]));
    ck_assert_msg(diff > 1e-3, "guidance 2 vs 8.5 differ by only %g", diff);
    ldm_tensor_free(z2);
    ldm_sampler_free(s);
    ldm_tensor_free(c);
    ldm_tensor_free(labels);
    ldm_tensor_free(x_T);
    ldm_tensor_free(z);
    ldm_model_free(m);
}
END_TEST

/* A model without the embedding: LCM defaults to guidance 1; the embedded call is refused. */
START_TEST(no_embedding)
{
    ldm_model_params mp;
    ldm_model_params_init(&mp);
    mp.n_threads = 1;
    ldm_model *m = NULL;
    ck_assert_msg(ldm_model_load_builtin("demo", 0, &mp, &m) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_model_guidance_embedding_dim(m), 0);
    ldm_generate_params p, r;
    ldm_generate_params_init(&p);
    p.sampler = LDM_SAMPLER_LCM;
    p.steps = 0;
    ck_assert_msg(ldm_generate_params_resolve(m, &p, &r) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(r.steps, 4);
    ck_assert(r.guidance_scale == 1.0f);
    p.sampler = LDM_SAMPLER_DDIM;
    ck_assert_int_eq(ldm_generate_params_resolve(m, &p, &r), LDM_OK);
    ck_assert_int_eq(r.steps, 50);
    int64_t sh[4] = {1, 4, 8, 8}, one = 1;
    ldm_tensor *x = NULL, *t = NULL, *out = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, sh, &x), LDM_OK);
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 1, &one, &t), LDM_OK);
    ck_assert_int_eq(ldm_model_apply_embedded_guidance(m, x, t, NULL, 8.5f, &out), LDM_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "time_embed.cond_proj.weight"));
    ck_assert_ptr_null(out);
    ldm_tensor_free(x);
    ldm_tensor_free(t);
    ldm_model_free(m);
}
END_TEST

/* A safetensors file holding one F32 tensor `name` of shape [d0, d1] (zeros). */
static const char *one_tensor_file(const char *file, const char *name, int d0, int d1)
{
    char header[512];
    size_t bytes = (size_t)d0 * d1 * 4;
    int n = snprintf(header, sizeof header, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[0,%zu]}}",
                     name, d0, d1, bytes);
    while (n % 8) header[n++] = ' ';
    size_t total = 8 + (size_t)n + bytes;
    unsigned char *buf = calloc(1, total);
    uint64_t hl = (uint64_t)n;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hl >> (8 * i));
    memcpy(buf + 8, header, (size_t)n);
    const char *path = ck_tmp_write(file, buf, total);
    free(buf);
    return path;
}

START_TEST(guidance_embedding_shape_checked)
{
    static const struct {
        int d0, d1;
        ldm_status want;
        int dim;
    } cases[] = {{32, 256, LDM_OK, 256}, {16, 256, LDM_ERR_FORMAT, 0}, {32, 2, LDM_ERR_FORMAT, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = one_tensor_file("cp.safetensors", "model.diffusion_model.time_embed.cond_proj.weight",
                                           cases[i].d0, cases[i].d1);
        lw_store *s = NULL;
        ck_assert_int_eq(lw_open(path, 0, &s), LDM_OK);
        int dim = -1;
        ck_assert_int_eq(lunet_probe_guidance_embedding(s, "model.diffusion_model.", 32, &dim), cases[i].want);
        if (cases[i].want == LDM_OK)
            ck_assert_int_eq(dim, cases[i].dim);
        else
            ck_assert_ptr_nonnull(strstr(ldm_last_error(), "time_embed.cond_proj.weight"));
        ck_assert_int_eq(lunet_probe_guidance_embedding(s, "other.", 32, &dim), LDM_OK);
        ck_assert_int_eq(dim, 0);
        lw_close(s);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("fewstep");
    TCase *tc = tcase_create("fewstep");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, lcm_timesteps_as_lcmscheduler);
    tcase_add_test(tc, lcm_boundary_conditions);
    tcase_add_test(tc, lcm_step_parameterizations);
    tcase_add_test(tc, lcm_sampler_state_machine);
    tcase_add_test(tc, trailing_as_numpy);
    tcase_add_test(tc, spacing_and_param_errors);
    tcase_add_test(tc, guidance_embedding_golden);
    tcase_add_test(tc, generate_lcm_with_embedding);
    tcase_add_test(tc, no_embedding);
    tcase_add_test(tc, guidance_embedding_shape_checked);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_in_tmpdir(suite(), "fewstep");
}
