/* test_sampling.c - noise schedules, DDIM/PLMS/DDPM update rules, k-diffusion samplers and the
 * Philox noise generator.
 *
 * The fixture tests need no network: the reference trajectories store pred_x0 of every step, from
 * which the model output the reference used can be recovered exactly enough
 * (eps = (x - sqrt(a)*pred_x0)/sqrt(1-a), v = (sqrt(ac)*x - pred_x0)/sqrt(1-ac)); feeding it back
 * through the public state machine must reproduce the reference's step_x. That checks timesteps,
 * alphas, sigmas, noise handling and the update rules independently of the UNet. */
#include <check.h>

#include "core/tensor.h"
#include "io/weights.h"
#include "sampling/sampling.h"
#include "support/ck_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- fixture helpers */

static const char *shared_dir(void)
{
    const char *d = getenv("LDM_SHARED");
    return (d && *d) ? d : "../shared";
}

/* Opens <shared>/fixtures/<name>/<file>; NULL (and a SKIPPED line) when the fixture is absent. */
static lw_store *open_fixture(const char *name, const char *file)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/fixtures/%s/%s", shared_dir(), name, file);
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("SKIPPED: fixture file %s not found (set LDM_SHARED)\n", path);
        return NULL;
    }
    fclose(f);
    lw_store *s = NULL;
    ldm_status st = lw_open(path, 0, &s);
    ck_assert_msg(st == LDM_OK, "lw_open %s: %s", path, ldm_last_error());
    return s;
}

static float *get_f32(const lw_store *s, const char *name, int64_t *numel)
{
    const lw_tensor *t = lw_find(s, name);
    ck_assert_msg(t != NULL, "tensor %s missing in %s", name, lw_path(s));
    float *v = NULL;
    ck_assert_msg(lw_get_f32(s, name, -1, NULL, &v) == LDM_OK, "%s", ldm_last_error());
    if (numel) {
        *numel = 1;
        for (int d = 0; d < t->ndim; d++) *numel *= t->shape[d];
    }
    return v;
}

static int64_t *get_i64(const lw_store *s, const char *name, int64_t *numel)
{
    const lw_tensor *t = lw_find(s, name);
    ck_assert_msg(t != NULL && t->dtype == LW_I64, "I64 tensor %s missing in %s", name, lw_path(s));
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    int64_t *v = malloc((size_t)n * 8 + 8);
    memcpy(v, t->data, (size_t)n * 8);
    if (numel) *numel = n;
    return v;
}

/* The config's `key: value` number (first occurrence), e.g. linear_start. */
static double config_number(const char *fixture, const char *key, double fallback)
{
    char path[1024], line[512];
    snprintf(path, sizeof path, "%s/fixtures/%s/config.yaml", shared_dir(), fixture);
    FILE *f = fopen(path, "r");
    if (!f) return fallback;
    double v = fallback;
    size_t klen = strlen(key);
    while (fgets(line, sizeof line, f)) {
        char *p = line;
        while (*p == ' ') p++;
        if (strncmp(p, key, klen) == 0 && p[klen] == ':') {
            v = strtod(p + klen + 1, NULL);
            break;
        }
    }
    fclose(f);
    return v;
}

/* ULPs between two floats of the same sign. */
static int64_t ulp_diff(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if ((ia < 0) != (ib < 0)) return (a == b) ? 0 : INT32_MAX;
    int64_t d = (int64_t)ia - (int64_t)ib;
    return d < 0 ? -d : d;
}

static ldm_tensor *tensor_from(const float *v, int ndim, const int64_t *shape)
{
    ldm_tensor *t = lt_new_f32(ndim, shape);
    ck_assert(t != NULL);
    memcpy(t->data, v, (size_t)lt_numel(t) * sizeof(float));
    return t;
}

static const char *const ldm_fixtures[] = {"ldm_cin_ddim", "ldm_uncond_plms", "ldm_sr_concat",
                                           "ldm_sd2v_ddim", "ldm_inpaint", "ldm_sd1_txt2img"};

/* ---------------------------------------------------------------- RNG */

START_TEST(test_philox_known_answers)
{
    /* Random123 kat_vectors, philox4x32 10 rounds */
    static const uint32_t cases[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6,
         0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420,
         0x24126ea1},
    };
    for (int c = 0; c < 3; c++) {
        uint32_t out[4];
        ls_philox4x32_10(cases[c], cases[c] + 4, out);
        for (int i = 0; i < 4; i++)
            ck_assert_msg(out[i] == cases[c][6 + i], "case %d word %d: %08x != %08x", c, i, out[i], cases[c][6 + i]);
    }
}
END_TEST

START_TEST(test_randn_deterministic)
{
    enum { N = 4097 };
    int64_t shape[1] = {N};
    ldm_tensor *a = lt_new_f32(1, shape), *b = lt_new_f32(1, shape), *c = lt_new_f32(1, shape);
    ck_assert_int_eq(ldm_randn(1234, 7, a), LDM_OK);
    ck_assert_int_eq(ldm_randn(1234, 7, b), LDM_OK);
    ck_assert(memcmp(a->data, b->data, N * sizeof(float)) == 0);
    /* any element on its own, and fills starting at odd offsets, give the same values */
    for (int i = 0; i < N; i += 97) ck_assert(lt_f32(a)[i] == (float)ls_randn_at(1234, 7, (uint64_t)i));
    float part[10];
    ls_randn_fill(1234, 7, 33, 10, part);
    ck_assert(memcmp(part, lt_f32(a) + 33, sizeof part) == 0);
    /* another stream or seed differs */
    ck_assert_int_eq(ldm_randn(1234, 8, c), LDM_OK);
    ck_assert(memcmp(a->data, c->data, N * sizeof(float)) != 0);
    ck_assert_int_eq(ldm_randn(1235, 7, c), LDM_OK);
    ck_assert(memcmp(a->data, c->data, N * sizeof(float)) != 0);
    /* the value for (seed 0, stream 0, index 0) is pinned so a change of recipe is noticed:
     * Philox(0,0) = 6627e8d5 e169c58d bc57ac4c 9b00dbd8 */
    double u1 = (double)(((((uint64_t)0xe169c58d << 32) | 0x6627e8d5) >> 11) + 1) / 9007199254740992.0;
    double u2 = (double)((((uint64_t)0x9b00dbd8 << 32) | 0xbc57ac4c) >> 11) / 9007199254740992.0;
    double z0 = sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
    ck_assert(ls_randn_at(0, 0, 0) == z0);
    ck_assert_int_ne(ldm_randn(0, 0, NULL), LDM_OK);
    ldm_tensor_free(a);
    ldm_tensor_free(b);
    ldm_tensor_free(c);
}
END_TEST

START_TEST(test_randn_moments)
{
    enum { N = 1 << 20 };
    int64_t shape[2] = {N / 1024, 1024};
    ldm_tensor *a = lt_new_f32(2, shape);
    ck_assert_int_eq(ldm_randn(42, 1, a), LDM_OK);
    double s1 = 0, s2 = 0, s3 = 0, s4 = 0;
    int64_t tail = 0;
    for (int i = 0; i < N; i++) {
        double z = lt_f32(a)[i];
        s1 += z;
        s2 += z * z;
        s3 += z * z * z;
        s4 += z * z * z * z;
        tail += fabs(z) > 3.0;
    }
    double mean = s1 / N, var = s2 / N - mean * mean;
    ck_assert_msg(fabs(mean) < 5e-3, "mean %g", mean);
    ck_assert_msg(fabs(var - 1.0) < 1e-2, "var %g", var);
    ck_assert_msg(fabs(s3 / N) < 2e-2, "skew %g", s3 / N);
    ck_assert_msg(fabs(s4 / N - 3.0) < 5e-2, "kurtosis %g", s4 / N);
    double p3 = (double)tail / N; /* P(|z|>3) = 0.0027 */
    ck_assert_msg(fabs(p3 - 0.0027) < 4e-4, "tail %g", p3);
    /* neighbours uncorrelated (the pair from one block in particular) */
    double c01 = 0;
    for (int i = 0; i + 1 < N; i += 2) c01 += (double)lt_f32(a)[i] * lt_f32(a)[i + 1];
    ck_assert_msg(fabs(c01 / (N / 2)) < 1e-2, "pair correlation %g", c01 / (N / 2));
    ldm_tensor_free(a);
}
END_TEST

/* ---------------------------------------------------------------- schedules */

START_TEST(test_schedule_linear_vs_fixtures)
{
    for (size_t f = 0; f < LDM_ARRAY_LEN(ldm_fixtures); f++) {
        lw_store *m = open_fixture(ldm_fixtures[f], "model.safetensors");
        if (!m) return;
        double ls = config_number(ldm_fixtures[f], "linear_start", 1e-4);
        double le = config_number(ldm_fixtures[f], "linear_end", 2e-2);
        ls_schedule *s = NULL;
        ck_assert_int_eq(ls_schedule_make(LS_BETA_LINEAR, 1000, ls, le, 8e-3, &s), LDM_OK);
        int64_t worst_all = 0;
        for (int b = 0; b < LS_N_BUFFERS; b++) {
            int64_t n;
            float *ref = get_f32(m, ls_buffer_name((ls_buffer)b), &n);
            ck_assert_int_eq(n, 1000);
            int64_t worst = 0;
            for (int t = 0; t < 1000; t++) {
                int64_t u = ulp_diff(s->buf[b][t], ref[t]);
                if (u > worst) worst = u;
            }
            /* float64 numpy vs double C: the same value up to libm's last bit, then one float32 rounding */
            ck_assert_msg(worst <= 1, "%s %s: %lld ulp off", ldm_fixtures[f], ls_buffer_name((ls_buffer)b),
                          (long long)worst);
            if (worst > worst_all) worst_all = worst;
            ldm_free(ref);
        }
        printf("schedule %s (linear %g..%g): 12 buffers within %lld ulp of the stored float32\n", ldm_fixtures[f], ls,
               le, (long long)worst_all);
        /* the stored buffers win: after apply_store they are bit-identical */
        int replaced = 0;
        ck_assert_int_eq(ls_schedule_apply_store(s, m, "", &replaced), LDM_OK);
        ck_assert_int_eq(replaced, LS_N_BUFFERS);
        float *ac = get_f32(m, "alphas_cumprod", NULL);
        ck_assert(memcmp(ac, s->buf[LS_ALPHAS_CUMPROD], 1000 * sizeof(float)) == 0);
        /* rebuilt from the float32 alphas_cumprod alone: alphas_cumprod exact, the rest close */
        ls_schedule *r = NULL;
        ck_assert_int_eq(ls_schedule_from_alphas_cumprod(ac, 1000, &r), LDM_OK);
        for (int b = 0; b < LS_N_BUFFERS; b++) {
            for (int t = 1; t < 1000; t++) {
                double got = r->buf[b][t], ref = s->buf[b][t];
                /* betas recovered from float32 ratios carry ~1e-4 relative error into what uses them */
                double tol = b == LS_ALPHAS_CUMPROD || b == LS_ALPHAS_CUMPROD_PREV ? 0.0
                             : b == LS_POSTERIOR_LOG_VARIANCE_CLIPPED ? 2e-3
                             : b == LS_SQRT_ALPHAS_CUMPROD || b == LS_SQRT_RECIP_ALPHAS_CUMPROD ? 2e-7 * fabs(ref)
                             /* 1 - ac from a float32 ac near 1: ~2e-5 relative */
                             : b == LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD || b == LS_LOG_ONE_MINUS_ALPHAS_CUMPROD ||
                                       b == LS_SQRT_RECIPM1_ALPHAS_CUMPROD
                                 ? 1e-4 * fabs(ref)
                                 : 2e-3 * fabs(ref);
                ck_assert_msg(fabs(got - ref) <= tol, "%s from alphas_cumprod: %s[%d] %.9g vs %.9g",
                              ldm_fixtures[f], ls_buffer_name((ls_buffer)b), t, got, ref);
            }
        }
        ls_schedule_free(r);
        ldm_free(ac);
        ls_schedule_free(s);
        lw_close(m);
    }
}
END_TEST

START_TEST(test_schedule_kinds)
{
    double b[1000];
    /* torch.linspace endpoints are exact */
    ck_assert_int_eq(ls_make_betas(LS_BETA_SQRT_LINEAR, 1000, 0.0015, 0.0195, 0, b), LDM_OK);
    ck_assert(b[0] == 0.0015 && b[999] == 0.0195);
    ck_assert_int_eq(ls_make_betas(LS_BETA_SQRT, 1000, 0.0015, 0.0195, 0, b), LDM_OK);
    ck_assert(b[0] == sqrt(0.0015) && b[999] == sqrt(0.0195));
    ck_assert_int_eq(ls_make_betas(LS_BETA_LINEAR, 1000, 0.00085, 0.012, 0, b), LDM_OK);
    ck_assert(fabs(b[0] - 0.00085) < 1e-18 && fabs(b[999] - 0.012) < 1e-17);
    /* cosine: alphas_bar(t) = f(t)/f(0), f(t) = cos(((t/T + s)/(1+s)) pi/2)^2, betas clipped at 0.999 */
    ck_assert_int_eq(ls_make_betas(LS_BETA_COSINE, 1000, 0, 0, 8e-3, b), LDM_OK);
    double f0 = pow(cos(8e-3 / 1.008 * M_PI / 2), 2), prod = 1.0;
    for (int t = 0; t < 1000; t++) {
        prod *= 1.0 - b[t];
        double want = pow(cos(((t + 1) / 1000.0 + 8e-3) / 1.008 * M_PI / 2), 2) / f0;
        if (t < 998) ck_assert_msg(fabs(prod - want) < 1e-12, "cosine t=%d %g vs %g", t, prod, want);
        ck_assert(b[t] >= 0.0 && b[t] <= 0.999);
    }
    ck_assert(b[999] == 0.999); /* the last cosine beta is 1 before clipping */
    ls_beta_kind k;
    ck_assert_int_eq(ls_beta_kind_parse("sqrt_linear", &k), LDM_OK);
    ck_assert_int_eq(k, LS_BETA_SQRT_LINEAR);
    ck_assert_int_eq(ls_beta_kind_parse("quadratic", &k), LDM_ERR_UNSUPPORTED);
    /* derived buffers of a cosine schedule are finite, posterior variance clipped at t=0 */
    ls_schedule *s = NULL;
    ck_assert_int_eq(ls_schedule_make(LS_BETA_COSINE, 1000, 0, 0, 8e-3, &s), LDM_OK);
    ck_assert(s->buf[LS_POSTERIOR_VARIANCE][0] == 0.0f);
    ck_assert(fabsf(s->buf[LS_POSTERIOR_LOG_VARIANCE_CLIPPED][0] - (float)log(1e-20)) < 1e-5f);
    for (int bb = 0; bb < LS_N_BUFFERS; bb++)
        for (int t = 0; t < 1000; t++) ck_assert(isfinite(s->buf[bb][t]));
    ls_schedule_free(s);
    ck_assert_int_ne(ls_schedule_make(LS_BETA_LINEAR, 0, 1e-4, 2e-2, 0, &s), LDM_OK);
}
END_TEST

/* ---------------------------------------------------------------- DDIM parameters */

static void check_ddim_params(const char *fixture, const char *prefix, int S, double eta, int expect_n)
{
    lw_store *m = open_fixture(fixture, "model.safetensors");
    if (!m) return;
    lw_store *io = open_fixture(fixture, "io.safetensors");
    float *ac = get_f32(m, "alphas_cumprod", NULL);
    ls_ddim d;
    ck_assert_int_eq(ls_ddim_make(ac, 1000, S, 0, eta, &d), LDM_OK);
    ck_assert_int_eq(d.n, expect_n);
    char name[128];
    int64_t n;
    snprintf(name, sizeof name, "%sddim_timesteps", prefix);
    int64_t *ts = get_i64(io, name, &n);
    ck_assert_int_eq(n, d.n);
    for (int i = 0; i < d.n; i++) ck_assert_int_eq(d.timesteps[i], ts[i]);
    const char *arrays[3] = {"ddim_alphas", "ddim_alphas_prev", "ddim_sigmas"};
    const float *mine[3] = {d.alphas, d.alphas_prev, d.sigmas};
    for (int a = 0; a < 3; a++) {
        snprintf(name, sizeof name, "%s%s", prefix, arrays[a]);
        float *ref = get_f32(io, name, &n);
        ck_assert_int_eq(n, d.n);
        for (int i = 0; i < d.n; i++)
            ck_assert_msg(mine[a][i] == ref[i], "%s %s[%d]: %.9g vs %.9g", fixture, name, i, (double)mine[a][i],
                          (double)ref[i]);
        ldm_free(ref);
    }
    free(ts);
    ls_ddim_release(&d);
    ldm_free(ac);
    lw_close(io);
    lw_close(m);
}

START_TEST(test_ddim_params_vs_fixtures)
{
    check_ddim_params("ldm_cin_ddim", "eta0_", 8, 0.0, 8);
    check_ddim_params("ldm_cin_ddim", "eta1_", 8, 1.0, 8);
    check_ddim_params("ldm_uncond_plms", "plms_", 8, 0.0, 8);
    check_ddim_params("ldm_sr_concat", "", 6, 0.0, 7);
    check_ddim_params("ldm_sd2v_ddim", "", 6, 0.0, 7);
    check_ddim_params("ldm_inpaint", "", 6, 0.0, 7);
    check_ddim_params("ldm_sd1_txt2img", "", 6, 0.0, 7);
}
END_TEST

START_TEST(test_ddim_timesteps)
{
    int64_t *ts;
    int n;
    ck_assert_int_eq(ls_ddim_timesteps(8, 1000, 0, &ts, &n), LDM_OK);
    ck_assert_int_eq(n, 8);
    ck_assert_int_eq(ts[0], 1);
    ck_assert_int_eq(ts[7], 876);
    ldm_free(ts);
    ck_assert_int_eq(ls_ddim_timesteps(7, 1000, 0, &ts, &n), LDM_OK);
    ck_assert_int_eq(n, 8); /* 1000 // 7 = 142 -> 0..994: 8 values */
    ck_assert_int_eq(ts[7], 995);
    ldm_free(ts);
    /* quad, values of ((np.linspace(0, sqrt(800), 10))**2).astype(int) + 1 */
    static const int64_t quad10[10] = {1, 10, 40, 89, 159, 247, 356, 484, 633, 801};
    ck_assert_int_eq(ls_ddim_timesteps(10, 1000, 1, &ts, &n), LDM_OK);
    ck_assert_int_eq(n, 10);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(ts[i], quad10[i]);
    ldm_free(ts);
    static const int64_t quad25[25] = {1,   2,   6,   13,  23,  35,  51,  69,  89,  113, 139, 169, 201,
                                       235, 273, 313, 356, 402, 451, 502, 556, 613, 673, 735, 801};
    ck_assert_int_eq(ls_ddim_timesteps(25, 1000, 1, &ts, &n), LDM_OK);
    for (int i = 0; i < 25; i++) ck_assert_int_eq(ts[i], quad25[i]);
    ldm_free(ts);
    ck_assert_int_ne(ls_ddim_timesteps(0, 1000, 0, &ts, &n), LDM_OK);
    ck_assert_int_ne(ls_ddim_timesteps(1001, 1000, 0, &ts, &n), LDM_OK);
    /* uniform with T // S == 1 would index alphas_cumprod[T] */
    float ac[1000];
    for (int t = 0; t < 1000; t++) ac[t] = (float)exp(-0.005 * (t + 1));
    ls_ddim d;
    ck_assert_int_ne(ls_ddim_make(ac, 1000, 600, 0, 0.0, &d), LDM_OK);
    ck_assert_int_eq(ls_ddim_make(ac, 1000, 500, 0, 0.0, &d), LDM_OK);
    ck_assert_int_eq(d.timesteps[d.n - 1], 999);
    ls_ddim_release(&d);
    /* also with few steps: 9 steps are 111 apart and 111 divides 999; the message offers 8 */
    ck_assert_int_eq(ls_ddim_make(ac, 1000, 9, 0, 0.0, &d), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "last timestep would be 1000"));
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "8 steps would work"));
    ck_assert_int_eq(ls_ddim_make(ac, 1000, 8, 0, 0.0, &d), LDM_OK);
    ls_ddim_release(&d);
}
END_TEST

/* ---------------------------------------------------------------- trajectories without a network */

typedef struct traj {
    lw_store *m, *io;
    float *ac, *x_T, *step_x, *step_px0, *noise;
    int64_t *step_t;
    int64_t x_shape[LDM_MAX_DIMS];
    int x_ndim;
    size_t numel;
    int n_steps;
} traj;

static int traj_open(traj *tr, const char *fixture, const char *prefix, int with_noise)
{
    memset(tr, 0, sizeof *tr);
    tr->m = open_fixture(fixture, "model.safetensors");
    if (!tr->m) return 0;
    tr->io = open_fixture(fixture, "io.safetensors");
    char name[128];
    int64_t n;
    tr->ac = get_f32(tr->m, "alphas_cumprod", NULL);
    tr->x_T = get_f32(tr->io, "x_T", &n);
    tr->numel = (size_t)n;
    const lw_tensor *xt = lw_find(tr->io, "x_T");
    tr->x_ndim = xt->ndim;
    memcpy(tr->x_shape, xt->shape, sizeof tr->x_shape);
    snprintf(name, sizeof name, "%sstep_x", prefix);
    tr->step_x = get_f32(tr->io, name, &n);
    tr->n_steps = (int)((size_t)n / tr->numel);
    snprintf(name, sizeof name, "%sstep_pred_x0", prefix);
    tr->step_px0 = get_f32(tr->io, name, NULL);
    snprintf(name, sizeof name, "%sstep_timesteps", prefix);
    tr->step_t = get_i64(tr->io, name, NULL);
    if (with_noise) tr->noise = get_f32(tr->io, "noise", NULL);
    return 1;
}

static void traj_close(traj *tr)
{
    ldm_free(tr->ac);
    ldm_free(tr->x_T);
    ldm_free(tr->step_x);
    ldm_free(tr->step_px0);
    ldm_free(tr->noise);
    free(tr->step_t);
    lw_close(tr->io);
    lw_close(tr->m);
}

/* max |got - ref| / max(1, max|ref|) over one step */
static double rel_err(const float *got, const float *ref, size_t n)
{
    double worst = 0, scale = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (d > worst) worst = d;
        if (fabs(ref[i]) > scale) scale = fabs(ref[i]);
    }
    return worst / scale;
}

/* Runs DDIM/PLMS over a fixture trajectory, feeding the model outputs recovered from pred_x0.
 * sched_store: use the checkpoint's buffers (needed for v). v_step0_guided: the first v output
 * (CFG-combined from model_output_step0) instead of the recovered one. */
static void run_fixture_trajectory(const char *fixture, const char *prefix, ldm_sampler_kind kind, int steps,
                                   float eta, ldm_parameterization param, double tol)
{
    traj tr;
    if (!traj_open(&tr, fixture, prefix, eta > 0)) return;
    ldm_sampler_params p;
    ldm_sampler_params_init(&p);
    p.kind = kind;
    p.steps = steps;
    p.eta = eta;
    ldm_sampler *s = NULL;
    ls_schedule *sched = NULL;
    ck_assert_int_eq(ls_schedule_make(LS_BETA_LINEAR, 1000, 0.0015, 0.0195, 8e-3, &sched), LDM_OK);
    ck_assert_int_eq(ls_schedule_apply_store(sched, tr.m, "", NULL), LDM_OK);
    ck_assert_msg(ls_sampler_create(sched, param, &p, &s) == LDM_OK, "%s", ldm_last_error());
    ck_assert_int_eq(ldm_sampler_total_steps(s), tr.n_steps);
    ck_assert_int_eq(ldm_sampler_total_evaluations(s), tr.n_steps + (kind == LDM_SAMPLER_PLMS));
    if (tr.noise) {
        int64_t nshape[LDM_MAX_DIMS];
        nshape[0] = tr.n_steps;
        memcpy(nshape + 1, tr.x_shape, (size_t)tr.x_ndim * sizeof(int64_t));
        ldm_tensor *nz = tensor_from(tr.noise, tr.x_ndim + 1, nshape);
        ck_assert_int_eq(ldm_sampler_set_noise(s, nz), LDM_OK);
        ldm_tensor_free(nz);
    }
    ldm_tensor *xT = tensor_from(tr.x_T, tr.x_ndim, tr.x_shape);
    ck_assert_int_eq(ldm_sampler_begin(s, xT), LDM_OK);
    ldm_tensor *out = lt_new_f32(tr.x_ndim, tr.x_shape);
    const ls_ddim *d = ls_sampler_ddim(s);
    const ls_schedule *sc = ls_sampler_schedule(s);
    size_t n = tr.numel;
    float *hist[3] = {malloc(n * 4), malloc(n * 4), malloc(n * 4)};
    int n_hist = 0, evals = 0;
    const ldm_tensor *xin;
    double t;
    double worst_x = 0, worst_p = 0;
    int last_k = -1;
    while (ldm_sampler_next(s, &xin, &t) == 1) {
        int k = ldm_sampler_steps_done(s), idx = d->n - 1 - k;
        evals++;
        /* the step's own x (the PLMS warm-up's second request is elsewhere; it gets the same eps') */
        const float *x = lt_f32(ldm_sampler_current(s)), *px0 = tr.step_px0 + (size_t)k * n;
        float *o = lt_f32(out);
        if (k != last_k) { /* first evaluation of step k: the reference's step_timesteps */
            ck_assert_msg(t == (double)tr.step_t[k * tr.x_shape[0]], "step %d: t %g vs %lld", k, t,
                          (long long)tr.step_t[k * tr.x_shape[0]]);
            ck_assert(t == ls_sampler_step_timestep(s, k));
            last_k = k;
        } else { /* PLMS warm-up: t_next */
            ck_assert(kind == LDM_SAMPLER_PLMS && k == 0 && t == (double)tr.step_t[1 * tr.x_shape[0]]);
        }
        if (param == LDM_PARAM_V) {
            /* v = (sa*x - pred_x0)/so with the full-schedule buffers at t */
            float sa = sc->buf[LS_SQRT_ALPHAS_CUMPROD][(int)t], so = sc->buf[LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD][(int)t];
            for (size_t i = 0; i < n; i++) o[i] = (float)(((double)sa * x[i] - px0[i]) / so);
        } else {
            /* eps' the reference used: (x - sqrt(a)*pred_x0)/sqrt(1-a), in double */
            double a = d->alphas[idx];
            float *ep = malloc(n * 4);
            for (size_t i = 0; i < n; i++) ep[i] = (float)((x[i] - sqrt(a) * px0[i]) / sqrt(1.0 - a));
            if (kind == LDM_SAMPLER_PLMS) {
                /* give the raw e whose Adams-Bashforth combination is eps' (the warm-up gets eps' twice) */
                for (size_t i = 0; i < n; i++) {
                    double e = ep[i];
                    if (n_hist == 1) e = (2.0 * ep[i] + hist[0][i]) / 3.0;
                    else if (n_hist == 2) e = (12.0 * ep[i] + 16.0 * hist[0][i] - 5.0 * hist[1][i]) / 23.0;
                    else if (n_hist >= 3)
                        e = (24.0 * ep[i] + 59.0 * hist[0][i] - 37.0 * hist[1][i] + 9.0 * hist[2][i]) / 55.0;
                    o[i] = (float)e;
                }
            } else {
                memcpy(o, ep, n * 4);
            }
            free(ep);
        }
        ck_assert_msg(ldm_sampler_give(s, out) == LDM_OK, "%s", ldm_last_error());
        if (ldm_sampler_steps_done(s) > k) {
            if (kind == LDM_SAMPLER_PLMS) { /* history of raw outputs, most recent first */
                float *old = hist[2];
                hist[2] = hist[1];
                hist[1] = hist[0];
                hist[0] = old;
                memcpy(old, o, n * 4);
                if (n_hist < 3) n_hist++;
            }
            double ex = rel_err(lt_f32(ldm_sampler_current(s)), tr.step_x + (size_t)k * n, n);
            double ep = rel_err(lt_f32(ldm_sampler_pred_x0(s)), px0, n);
            if (ex > worst_x) worst_x = ex;
            if (ep > worst_p) worst_p = ep;
            ck_assert_msg(ex <= tol, "%s%s step %d: step_x off by %g (relative to max|x|)", fixture, prefix, k, ex);
            ck_assert_msg(ep <= tol, "%s%s step %d: pred_x0 off by %g", fixture, prefix, k, ep);
        }
    }
    ck_assert_int_eq(evals, ldm_sampler_total_evaluations(s));
    ck_assert_int_eq(ldm_sampler_steps_done(s), tr.n_steps);
    ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), 0);
    printf("trajectory %s%s: max step_x error %.3g, pred_x0 %.3g (relative to max(1,|ref|))\n", fixture, prefix,
           worst_x, worst_p);
    for (int i = 0; i < 3; i++) free(hist[i]);
    ldm_tensor_free(out);
    ldm_tensor_free(xT);
    ldm_sampler_free(s);
    ls_schedule_free(sched);
    traj_close(&tr);
}

START_TEST(test_ddim_trajectories)
{
    run_fixture_trajectory("ldm_cin_ddim", "eta0_", LDM_SAMPLER_DDIM, 8, 0.0f, LDM_PARAM_EPS, 2e-6);
    run_fixture_trajectory("ldm_cin_ddim", "eta1_", LDM_SAMPLER_DDIM, 8, 1.0f, LDM_PARAM_EPS, 2e-6);
    run_fixture_trajectory("ldm_sr_concat", "", LDM_SAMPLER_DDIM, 6, 0.0f, LDM_PARAM_EPS, 2e-6);
    run_fixture_trajectory("ldm_inpaint", "", LDM_SAMPLER_DDIM, 6, 0.0f, LDM_PARAM_EPS, 2e-6);
    run_fixture_trajectory("ldm_sd1_txt2img", "", LDM_SAMPLER_DDIM, 6, 0.0f, LDM_PARAM_EPS, 2e-6);
}
END_TEST

START_TEST(test_plms_trajectory)
{
    run_fixture_trajectory("ldm_uncond_plms", "plms_", LDM_SAMPLER_PLMS, 8, 0.0f, LDM_PARAM_EPS, 2e-6);
}
END_TEST

START_TEST(test_ddim_v_trajectory)
{
    run_fixture_trajectory("ldm_sd2v_ddim", "", LDM_SAMPLER_DDIM, 6, 0.0f, LDM_PARAM_V, 2e-6);
}
END_TEST

/* Step 0 of the v fixture from the stored raw UNet output: CFG on v, then Stability's conversion. */
START_TEST(test_ddim_v_step0_from_model_output)
{
    traj tr;
    if (!traj_open(&tr, "ldm_sd2v_ddim", "", 0)) return;
    int64_t nmo;
    float *mo = get_f32(tr.io, "model_output_step0", &nmo);
    size_t n = tr.numel;
    ck_assert_int_eq((size_t)nmo, 2 * n);
    ldm_tensor *v = lt_new_f32(tr.x_ndim, tr.x_shape);
    for (size_t i = 0; i < n; i++) lt_f32(v)[i] = mo[i] + 7.5f * (mo[n + i] - mo[i]); /* uncond rows first */
    ls_schedule *sched = NULL;
    ck_assert_int_eq(ls_schedule_make(LS_BETA_LINEAR, 1000, 0.00085, 0.012, 0, &sched), LDM_OK);
    ck_assert_int_eq(ls_schedule_apply_store(sched, tr.m, NULL, NULL), LDM_OK);
    ldm_sampler_params p;
    ldm_sampler_params_init(&p);
    p.steps = 6;
    ldm_sampler *s = NULL;
    ck_assert_int_eq(ls_sampler_create(sched, LDM_PARAM_V, &p, &s), LDM_OK);
    ldm_tensor *xT = tensor_from(tr.x_T, tr.x_ndim, tr.x_shape);
    ck_assert_int_eq(ldm_sampler_begin(s, xT), LDM_OK);
    const ldm_tensor *xin;
    double t;
    ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), 1);
    ck_assert(t == 997.0);
    ck_assert_int_eq(ldm_sampler_give(s, v), LDM_OK);
    double ex = rel_err(lt_f32(ldm_sampler_current(s)), tr.step_x, n);
    double ep = rel_err(lt_f32(ldm_sampler_pred_x0(s)), tr.step_px0, n);
    printf("sd2v step 0 from model_output_step0: step_x error %.3g, pred_x0 %.3g\n", ex, ep);
    ck_assert_msg(ex < 1e-5 && ep < 1e-5, "v step 0: %g %g", ex, ep);
    /* using the v output as if it were eps is far off (fact 26) */
    ldm_sampler *se = NULL;
    ck_assert_int_eq(ls_sampler_create(sched, LDM_PARAM_EPS, &p, &se), LDM_OK);
    ck_assert_int_eq(ldm_sampler_begin(se, xT), LDM_OK);
    ck_assert_int_eq(ldm_sampler_next(se, &xin, &t), 1);
    ck_assert_int_eq(ldm_sampler_give(se, v), LDM_OK);
    ck_assert(rel_err(lt_f32(ldm_sampler_pred_x0(se)), tr.step_px0, n) > 1e-2);
    ldm_sampler_free(se);
    ldm_sampler_free(s);
    ldm_tensor_free(xT);
    ldm_tensor_free(v);
    ls_schedule_free(sched);
    ldm_free(mo);
    traj_close(&tr);
}
END_TEST

/* ---------------------------------------------------------------- DDPM p_sample */

START_TEST(test_p_sample_formula)
{
    lw_store *m = open_fixture("ldm_uncond_plms", "model.safetensors");
    ls_schedule *s = NULL;
    ck_assert_int_eq(ls_schedule_make(LS_BETA_LINEAR, 1000, 0.0015, 0.0195, 0, &s), LDM_OK);
    if (m) ck_assert_int_eq(ls_schedule_apply_store(s, m, "", NULL), LDM_OK);
    enum { B = 3, PER = 48 };
    float x[B * PER], e[B * PER], nz[B * PER], xp[B * PER], x0[B * PER];
    ls_randn_fill(1, 1, 0, B * PER, x);
    ls_randn_fill(1, 2, 0, B * PER, e);
    ls_randn_fill(1, 3, 0, B * PER, nz);
    int64_t t[B] = {999, 250, 0};
    for (int v = 0; v < 2; v++) {
        ck_assert_int_eq(ls_ddpm_p_sample(s, B, PER, t, x, e, v, nz, xp, x0), LDM_OK);
        for (int b = 0; b < B; b++) {
            int64_t tb = t[b];
            for (int i = 0; i < PER; i++) {
                int k = b * PER + i;
                double want_x0 = v ? (double)s->buf[LS_SQRT_ALPHAS_CUMPROD][tb] * x[k] -
                                         (double)s->buf[LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD][tb] * e[k]
                                   : (double)s->buf[LS_SQRT_RECIP_ALPHAS_CUMPROD][tb] * x[k] -
                                         (double)s->buf[LS_SQRT_RECIPM1_ALPHAS_CUMPROD][tb] * e[k];
                double mean = s->buf[LS_POSTERIOR_MEAN_COEF1][tb] * want_x0 + s->buf[LS_POSTERIOR_MEAN_COEF2][tb] * x[k];
                double want = mean + (tb != 0) * exp(0.5 * s->buf[LS_POSTERIOR_LOG_VARIANCE_CLIPPED][tb]) * nz[k];
                ck_assert_msg(fabs(x0[k] - want_x0) <= 1e-5 * (1 + fabs(want_x0)), "x0 t=%lld", (long long)tb);
                ck_assert_msg(fabs(xp[k] - want) <= 1e-5 * (1 + fabs(want)), "x_prev t=%lld: %g vs %g",
                              (long long)tb, xp[k], want);
            }
        }
    }
    /* t = 0 adds no noise; a bad timestep is refused */
    ck_assert_int_eq(ls_ddpm_p_sample(s, 1, PER, t + 2, x, e, 0, NULL, xp, NULL), LDM_OK);
    float xp2[PER];
    ck_assert_int_eq(ls_ddpm_p_sample(s, 1, PER, t + 2, x, e, 0, nz, xp2, NULL), LDM_OK);
    ck_assert(memcmp(xp, xp2, sizeof xp2) == 0);
    int64_t bad = 1000;
    ck_assert_int_eq(ls_ddpm_p_sample(s, 1, PER, &bad, x, e, 0, nz, xp, NULL), LDM_ERR_INVALID_ARGUMENT);
    ls_schedule_free(s);
    if (m) lw_close(m);
}
END_TEST

/* The DDPM kind walks t = steps-1 .. 0 with one evaluation each and uses noise row k at step k. */
START_TEST(test_ddpm_sampler_sequence)
{
    ls_schedule *sched = NULL;
    ck_assert_int_eq(ls_schedule_make(LS_BETA_LINEAR, 1000, 0.0015, 0.0195, 0, &sched), LDM_OK);
    ldm_sampler_params p;
    ldm_sampler_params_init(&p);
    p.kind = LDM_SAMPLER_DDPM;
    p.steps = 4;
    ldm_sampler *s = NULL;
    ck_assert_int_eq(ls_sampler_create(sched, LDM_PARAM_EPS, &p, &s), LDM_OK);
    ck_assert_int_eq(ldm_sampler_total_steps(s), 4);
    int64_t shape[2] = {1, 16}, nshape[3] = {4, 1, 16};
    ldm_tensor *x = lt_new_f32(2, shape), *e = lt_new_f32(2, shape), *nz = lt_new_f32(3, nshape);
    ldm_randn(5, 0, x);
    ldm_randn(5, 1, e);
    ldm_randn(5, 2, nz);
    ck_assert_int_eq(ldm_sampler_set_noise(s, nz), LDM_OK);
    ck_assert_int_eq(ldm_sampler_begin(s, x), LDM_OK);
    float ref[16];
    memcpy(ref, lt_f32(x), sizeof ref);
    const ldm_tensor *xin;
    double t;
    for (int k = 0; k < 4; k++) {
        ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), 1);
        ck_assert(t == 3 - k);
        int64_t tt = 3 - k;
        ls_ddpm_p_sample(sched, 1, 16, &tt, ref, lt_f32(e), 0, lt_f32(nz) + 16 * k, ref, NULL);
        ck_assert_int_eq(ldm_sampler_give(s, e), LDM_OK);
        ck_assert(memcmp(ref, lt_f32(ldm_sampler_current(s)), sizeof ref) == 0);
    }
    ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), 0);
    ldm_sampler_free(s);
    /* steps 0 means every training timestep */
    p.steps = 0;
    ck_assert_int_eq(ls_sampler_create(sched, LDM_PARAM_EPS, &p, &s), LDM_OK);
    ck_assert_int_eq(ldm_sampler_total_steps(s), 1000);
    ldm_sampler_free(s);
    ldm_tensor_free(x);
    ldm_tensor_free(e);
    ldm_tensor_free(nz);
    ls_schedule_free(sched);
}
END_TEST

/* ---------------------------------------------------------------- v parameterization */

START_TEST(test_v_roundtrip)
{
    ls_schedule *s = NULL;
    ck_assert_int_eq(ls_schedule_make(LS_BETA_LINEAR, 1000, 0.00085, 0.012, 0, &s), LDM_OK);
    enum { N = 256 };
    float eps[N], x0[N], x[N], v[N], eps2[N], x02[N];
    ls_randn_fill(3, 1, 0, N, eps);
    ls_randn_fill(3, 2, 0, N, x0);
    const int ts[] = {0, 1, 500, 999};
    for (size_t k = 0; k < LDM_ARRAY_LEN(ts); k++) {
        float sa = s->buf[LS_SQRT_ALPHAS_CUMPROD][ts[k]], so = s->buf[LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD][ts[k]];
        for (int i = 0; i < N; i++) x[i] = sa * x0[i] + so * eps[i]; /* q_sample */
        ls_eps_x0_to_v(eps, x0, sa, so, N, v);                       /* get_v */
        ls_v_to_eps_x0(x, v, sa, so, N, eps2, x02);
        for (int i = 0; i < N; i++) {
            ck_assert_msg(fabsf(eps2[i] - eps[i]) < 1e-5f * (1 + fabsf(eps[i])), "eps t=%d", ts[k]);
            ck_assert_msg(fabsf(x02[i] - x0[i]) < 1e-5f * (1 + fabsf(x0[i])), "x0 t=%d", ts[k]);
        }
        /* k-diffusion's v denoiser gives the same x0 for the same v */
        double sigma = so / (double)sa;
        float den[N], xk[N];
        for (int i = 0; i < N; i++) xk[i] = x[i] / sa; /* VE sample x0 + sigma*eps */
        ls_k_denoised(xk, v, sigma, 1, N, den);
        for (int i = 0; i < N; i++) ck_assert_msg(fabsf(den[i] - x0[i]) < 1e-4f * (1 + fabsf(x0[i])), "k v t=%d", ts[k]);
        ls_k_denoised(xk, eps, sigma, 0, N, den);
        for (int i = 0; i < N; i++) ck_assert_msg(fabsf(den[i] - x0[i]) < 1e-4f * (1 + fabsf(x0[i])), "k eps t=%d", ts[k]);
    }
    ls_schedule_free(s);
}
END_TEST

/* ---------------------------------------------------------------- k-diffusion */

static ls_schedule *sd_schedule(void)
{
    ls_schedule *s = NULL;
    ck_assert_int_eq(ls_schedule_make(LS_BETA_LINEAR, 1000, 0.00085, 0.012, 0, &s), LDM_OK);
    return s;
}

START_TEST(test_k_sigma_schedule)
{
    ls_schedule *s = sd_schedule();
    ls_ksched k;
    ck_assert_int_eq(ls_ksched_make(s->buf[LS_ALPHAS_CUMPROD], 1000, &k), LDM_OK);
    /* SD 1.x: sigma_min 0.0292, sigma_max 14.6146 */
    ck_assert(fabs(k.sigmas[0] - 0.0292) < 1e-4 && fabs(k.sigmas[999] - 14.6146) < 1e-3);
    for (int t = 0; t < 1000; t += 37) {
        ck_assert_msg(fabs(ls_ksched_sigma_to_t(&k, k.sigmas[t]) - t) < 1e-9, "t=%d", t);
        ck_assert(fabs(ls_ksched_t_to_sigma(&k, t) - k.sigmas[t]) < 1e-6 * k.sigmas[t]);
        double tf = t + 0.37;
        if (tf < 999) ck_assert(fabs(ls_ksched_sigma_to_t(&k, ls_ksched_t_to_sigma(&k, tf)) - tf) < 1e-9);
    }
    ck_assert(ls_ksched_sigma_to_t(&k, 1e-4) == 0.0);   /* below sigma_min: clamped */
    ck_assert(ls_ksched_sigma_to_t(&k, 100.0) == 999.0); /* above sigma_max */
    double sig[11];
    ck_assert_int_eq(ls_ksched_sigmas(&k, 10, 0, sig), LDM_OK);
    ck_assert(sig[0] == k.sigmas[999] && sig[9] == k.sigmas[0] && sig[10] == 0.0);
    ck_assert(fabs(sig[1] - ls_ksched_t_to_sigma(&k, 999.0 - 111.0)) < 1e-12);
    for (int i = 0; i < 10; i++) ck_assert(sig[i] > sig[i + 1]);
    ck_assert_int_eq(ls_ksched_sigmas(&k, 10, 1, sig), LDM_OK);
    ck_assert(fabs(sig[0] - k.sigmas[999]) < 1e-5 && fabs(sig[9] - k.sigmas[0]) < 1e-7 && sig[10] == 0.0);
    /* Karras: sigma_i^(1/7) linear in i */
    double a = pow(sig[0], 1 / 7.0), b = pow(sig[9], 1 / 7.0);
    for (int i = 0; i < 10; i++) ck_assert(fabs(pow(sig[i], 1 / 7.0) - (a + i / 9.0 * (b - a))) < 1e-12);
    double down, up;
    ls_k_ancestral_step(2.0, 1.0, 1.0, &down, &up);
    ck_assert(fabs(up - sqrt(0.75)) < 1e-15 && fabs(down - 0.5) < 1e-15);
    ls_k_ancestral_step(2.0, 0.0, 1.0, &down, &up);
    ck_assert(up == 0.0 && down == 0.0);
    ls_ksched_release(&k);
    ls_schedule_free(s);
}
END_TEST

/* A toy "network" whose data distribution is N(mu, s^2) per element: the exact denoiser is
 * D(x, sigma) = mu + s^2/(s^2+sigma^2) (x - mu) (x in k-diffusion's variance-exploding space). It
 * answers the sampler's requests in the model's own terms: input x*c_in at timestep t(sigma),
 * output eps or v. */
typedef struct toy { double mu, s; const ls_ksched *k; const ls_schedule *sched; int v; int k_space; } toy;

static void toy_eval(const toy *m, const ldm_tensor *xin, double t, ldm_tensor *out)
{
    double sigma;
    if (m->k_space) {
        sigma = ls_ksched_t_to_sigma(m->k, t);
    } else { /* integer DDPM timestep: sigma from the schedule */
        double ac = m->sched->buf[LS_ALPHAS_CUMPROD][(int)t];
        sigma = sqrt((1 - ac) / ac);
    }
    double c_in = 1.0 / sqrt(sigma * sigma + 1.0);
    for (int64_t i = 0, n = lt_numel(xin); i < n; i++) {
        double x = lt_f32(xin)[i] / c_in;
        double den = m->mu + m->s * m->s / (m->s * m->s + sigma * sigma) * (x - m->mu);
        double eps = (x - den) / sigma;
        /* v = sqrt(ac)*eps - sqrt(1-ac)*x0, sqrt(ac) = c_in, sqrt(1-ac) = sigma*c_in */
        lt_f32(out)[i] = (float)(m->v ? c_in * eps - sigma * c_in * den : eps);
    }
}

/* Runs kind with the toy model from unit noise z; returns the final x. The k-samplers' sigma
 * sequence is copied to sigmas_out (may be NULL; room for steps + 1). */
static ldm_tensor *toy_run(ldm_sampler_kind kind, int steps, const toy *m, const ldm_tensor *z, int *evals,
                           double *sigmas_out)
{
    ldm_sampler_params p;
    ldm_sampler_params_init(&p);
    p.kind = kind;
    p.steps = steps;
    p.seed = 99;
    ldm_sampler *s = NULL;
    ck_assert_msg(ls_sampler_create(m->sched, m->v ? LDM_PARAM_V : LDM_PARAM_EPS, &p, &s) == LDM_OK, "%s",
                  ldm_last_error());
    ck_assert_int_eq(ldm_sampler_begin(s, z), LDM_OK);
    ldm_tensor *out = lt_new_f32(z->ndim, z->shape);
    const ldm_tensor *xin;
    double t;
    int n = 0;
    toy mm = *m;
    mm.k = ls_sampler_ksched(s);
    mm.k_space = mm.k != NULL;
    if (sigmas_out && mm.k) memcpy(sigmas_out, ls_sampler_sigmas(s, NULL), ((size_t)steps + 1) * sizeof(double));
    while (ldm_sampler_next(s, &xin, &t) == 1) {
        toy_eval(&mm, xin, t, out);
        ck_assert_int_eq(ldm_sampler_give(s, out), LDM_OK);
        n++;
    }
    ck_assert_int_eq(n, ldm_sampler_total_evaluations(s));
    if (evals) *evals = n;
    ldm_tensor *r = lt_clone(ldm_sampler_current(s));
    ldm_tensor_free(out);
    ldm_sampler_free(s);
    return r;
}

/* For Gaussian data every deterministic k-sampler is linear in y = x - mu: the exact denoiser is
 * D = mu + c(sigma) y with c = s^2/(s^2+sigma^2). This is the gain y_final / y_start of each
 * sampler's recursion, written from k-diffusion's sampling.py independently of kdiff.c. */
static double toy_gain(ldm_sampler_kind kind, const double *S, int steps, double s2)
{
    double y = 1.0, old = 0.0;
    for (int i = 0; i < steps; i++) {
        double sf = S[i], st = S[i + 1], c = s2 / (s2 + sf * sf);
        double den = c * y, d = (y - den) / sf, dt = st - sf;
        if (kind == LDM_SAMPLER_EULER) {
            y += d * dt;
        } else if (kind == LDM_SAMPLER_HEUN) {
            if (st == 0.0) {
                y += d * dt;
            } else {
                double y2 = y + d * dt, d2 = (y2 - s2 / (s2 + st * st) * y2) / st;
                y += (d + d2) / 2 * dt;
            }
        } else { /* DPM++ 2M */
            if (st == 0.0) {
                y = den;
            } else {
                double h = log(sf) - log(st), dd = den;
                if (i > 0) {
                    double r = (log(S[i - 1]) - log(sf)) / h;
                    dd = (1 + 1 / (2 * r)) * den - 1 / (2 * r) * old;
                }
                y = st / sf * y - expm1(-h) * dd;
            }
            old = den;
        }
    }
    return y;
}

START_TEST(test_k_samplers_toy_ode)
{
    ls_schedule *sched = sd_schedule();
    int64_t shape[2] = {2, 512};
    ldm_tensor *z = lt_new_f32(2, shape);
    ldm_randn(11, 0, z);
    const ldm_sampler_kind kinds[] = {LDM_SAMPLER_EULER, LDM_SAMPLER_HEUN, LDM_SAMPLER_DPMPP_2M,
                                      LDM_SAMPLER_DPMPP_2M_KARRAS};
    const int want_evals[] = {25, 49, 25, 25};
    double sig[26];
    for (int v = 0; v < 2; v++) {
        toy m = {0.3, 0.5, NULL, sched, v, 0};
        double ode_err[4];
        for (int i = 0; i < 4; i++) {
            int evals;
            ldm_tensor *x = toy_run(kinds[i], 25, &m, z, &evals, sig);
            ck_assert_int_eq(evals, want_evals[i]);
            double g = toy_gain(kinds[i], sig, 25, 0.25);
            /* probability-flow ODE: x(sigma) = mu + sqrt(s^2+sigma^2) z, so exactly g = s/sqrt(s^2+sigma_max^2) */
            double exact = 0.5 / sqrt(0.25 + sig[0] * sig[0]);
            ode_err[i] = fabs(g - exact) * sig[0];
            double worst = 0;
            for (int64_t j = 0; j < lt_numel(x); j++) {
                double want = 0.3 + g * (sig[0] * lt_f32(z)[j] - 0.3); /* the run starts at x_T * sigma_max */
                worst = fmax(worst, fabs(lt_f32(x)[j] - want));
            }
            printf("toy ODE (%s) kind %d, 25 steps: gain %.6f (ODE %.6f), max deviation from the recursion %.3g\n",
                   v ? "v" : "eps", (int)kinds[i], g, exact, worst);
            ck_assert_msg(worst < 2e-5, "kind %d (%s): %g off the analytic recursion", (int)kinds[i], v ? "v" : "eps",
                          worst);
            ldm_tensor_free(x);
        }
        /* the second-order samplers are far closer to the exact ODE solution than Euler */
        ck_assert(ode_err[1] < ode_err[0] / 10 && ode_err[3] < ode_err[0] / 10);
    }
    /* a point mass (s -> 0): every sampler lands on it */
    toy pm = {-0.7, 1e-6, NULL, sched, 0, 0};
    const ldm_sampler_kind all[] = {LDM_SAMPLER_EULER, LDM_SAMPLER_EULER_ANCESTRAL, LDM_SAMPLER_HEUN,
                                    LDM_SAMPLER_DPMPP_2M, LDM_SAMPLER_DPMPP_2M_KARRAS};
    for (size_t i = 0; i < LDM_ARRAY_LEN(all); i++) {
        ldm_tensor *x = toy_run(all[i], 10, &pm, z, NULL, NULL);
        for (int64_t j = 0; j < lt_numel(x); j++)
            ck_assert_msg(fabsf(lt_f32(x)[j] + 0.7f) < 1e-4f, "kind %d: %g", (int)all[i], lt_f32(x)[j]);
        ldm_tensor_free(x);
    }
    ldm_tensor_free(z);
    ls_schedule_free(sched);
}
END_TEST

/* Stochastic samplers on the Gaussian toy: Euler ancestral's variance follows
 * V' = V k^2 + sigma_up^2 with k = 1 + sigma (sigma_down - sigma)/(s^2 + sigma^2); DDPM ancestral
 * over all 1000 steps reproduces the data distribution. */
START_TEST(test_stochastic_samplers_toy_distribution)
{
    ls_schedule *sched = sd_schedule();
    int64_t shape[2] = {4, 4096};
    ldm_tensor *z = lt_new_f32(2, shape);
    ldm_randn(12, 0, z);
    toy m = {0.3, 0.5, NULL, sched, 0, 0};
    const ldm_sampler_kind kinds[] = {LDM_SAMPLER_EULER_ANCESTRAL, LDM_SAMPLER_DDPM};
    const int steps[] = {50, 1000};
    double sig[51];
    for (int i = 0; i < 2; i++) {
        ldm_tensor *x = toy_run(kinds[i], steps[i], &m, z, NULL, sig);
        double want_sd = 0.5;
        if (kinds[i] == LDM_SAMPLER_EULER_ANCESTRAL) {
            double V = 0.25 + sig[0] * sig[0];
            for (int k = 0; k < 50; k++) {
                double down, up, sf = sig[k];
                ls_k_ancestral_step(sf, sig[k + 1], 1.0, &down, &up);
                double g = 1 + sf * (down - sf) / (0.25 + sf * sf);
                V = V * g * g + up * up;
            }
            want_sd = sqrt(V);
        }
        double s1 = 0, s2 = 0;
        int64_t n = lt_numel(x);
        for (int64_t j = 0; j < n; j++) {
            s1 += lt_f32(x)[j];
            s2 += (double)lt_f32(x)[j] * lt_f32(x)[j];
        }
        double mean = s1 / n, sd = sqrt(s2 / n - mean * mean);
        printf("toy distribution kind %d: mean %.4f (0.3) std %.4f (%.4f)\n", (int)kinds[i], mean, sd, want_sd);
        ck_assert_msg(fabs(mean - 0.3) < 0.015 && fabs(sd - want_sd) < 0.01, "kind %d: mean %g std %g (want %g)",
                      (int)kinds[i], mean, sd, want_sd);
        ldm_tensor_free(x);
    }
    ldm_tensor_free(z);
    ls_schedule_free(sched);
}
END_TEST

/* ---------------------------------------------------------------- state machine contract */

START_TEST(test_sampler_api_contract)
{
    ls_schedule *sched = sd_schedule();
    const float *ac = sched->buf[LS_ALPHAS_CUMPROD];
    ldm_sampler_params p;
    ldm_sampler_params_init(&p);
    ck_assert_int_eq(p.struct_size, sizeof p);
    ck_assert_int_eq(p.kind, LDM_SAMPLER_DDIM);
    ldm_sampler *s = NULL;
    /* parameter validation */
    p.kind = LDM_SAMPLER_PLMS;
    p.eta = 0.5f;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_ERR_INVALID_ARGUMENT);
    p.kind = LDM_SAMPLER_DDIM;
    p.eta = -1.0f;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_ERR_INVALID_ARGUMENT);
    p.eta = 0.0f;
    p.steps = 1001;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_ERR_INVALID_ARGUMENT);
    p.steps = 10;
    p.kind = (ldm_sampler_kind)42;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_ERR_INVALID_ARGUMENT);
    p.kind = LDM_SAMPLER_DDIM;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, (ldm_parameterization)7, &p, &s), LDM_ERR_INVALID_ARGUMENT);
    float bad[1000];
    memcpy(bad, ac, sizeof bad);
    bad[500] = 1.5f;
    ck_assert_int_eq(ldm_sampler_create(bad, 1000, LDM_PARAM_EPS, &p, &s), LDM_ERR_INVALID_ARGUMENT);
    bad[500] = NAN;
    ck_assert_int_eq(ldm_sampler_create(bad, 1000, LDM_PARAM_EPS, &p, &s), LDM_ERR_INVALID_ARGUMENT);
    ldm_sampler_params old = p;
    old.struct_size = 3;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &old, &s), LDM_ERR_INVALID_ARGUMENT);
    ck_assert(s == NULL);

    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_OK);
    ck_assert_int_eq(ldm_sampler_total_steps(s), 10);
    const ldm_tensor *xin;
    double t;
    ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), -1); /* not begun */
    ck_assert(ldm_sampler_current(s) == NULL);
    int64_t shape[4] = {1, 2, 3, 3}, wrong[4] = {1, 2, 3, 4};
    ldm_tensor *x = lt_new_f32(4, shape), *o = lt_new_f32(4, shape), *w = lt_new_f32(4, wrong);
    ldm_randn(1, 0, x);
    ck_assert_int_eq(ldm_sampler_begin(s, x), LDM_OK);
    ck_assert(ldm_sampler_pred_x0(s) == NULL);
    ck_assert_int_eq(ldm_sampler_give(s, o), LDM_ERR_INVALID_ARGUMENT); /* nothing requested */
    ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), 1);
    ck_assert(t == 901.0);
    const ldm_tensor *xin2;
    double t2;
    ck_assert_int_eq(ldm_sampler_next(s, &xin2, &t2), 1); /* same request again */
    ck_assert(xin2 == xin && t2 == t);
    ck_assert_int_eq(ldm_sampler_give(s, w), LDM_ERR_INVALID_ARGUMENT);
    lt_f32(o)[3] = NAN;
    ck_assert_int_eq(ldm_sampler_give(s, o), LDM_ERR_NUMERIC);
    ck_assert_int_eq(ldm_sampler_steps_done(s), 0);
    lt_f32(o)[3] = 0.0f;
    ck_assert_int_eq(ldm_sampler_give(s, o), LDM_OK);
    ck_assert_int_eq(ldm_sampler_steps_done(s), 1);
    ck_assert(ldm_sampler_pred_x0(s) != NULL);
    /* noise with too few rows or the wrong shape is refused once the run's shape is known */
    int64_t ns[5] = {3, 1, 2, 3, 3};
    ldm_tensor *nz = lt_new_f32(5, ns);
    ck_assert_int_eq(ldm_sampler_set_noise(s, nz), LDM_ERR_INVALID_ARGUMENT);
    ldm_tensor_free(nz);
    ns[0] = 10;
    ns[4] = 4;
    nz = lt_new_f32(5, ns);
    ck_assert_int_eq(ldm_sampler_set_noise(s, nz), LDM_ERR_INVALID_ARGUMENT);
    ldm_tensor_free(nz);
    ck_assert_int_eq(ldm_sampler_set_noise(s, NULL), LDM_OK);
    /* restart: same result as a fresh run */
    ck_assert_int_eq(ldm_sampler_begin(s, x), LDM_OK);
    ck_assert_int_eq(ldm_sampler_steps_done(s), 0);
    ldm_sampler_free(s);
    ldm_sampler_free(NULL);

    /* evaluation counts */
    const struct { ldm_sampler_kind kind; int steps, evals, total; } counts[] = {
        {LDM_SAMPLER_DDIM, 6, 7, 7},    {LDM_SAMPLER_PLMS, 8, 9, 8},   {LDM_SAMPLER_PLMS, 1, 2, 1},
        {LDM_SAMPLER_EULER, 20, 20, 20}, {LDM_SAMPLER_HEUN, 20, 39, 20}, {LDM_SAMPLER_DPMPP_2M_KARRAS, 20, 20, 20},
    };
    for (size_t i = 0; i < LDM_ARRAY_LEN(counts); i++) {
        p.kind = counts[i].kind;
        p.steps = counts[i].steps;
        ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_OK);
        ck_assert_int_eq(ldm_sampler_total_evaluations(s), counts[i].evals);
        ck_assert_int_eq(ldm_sampler_total_steps(s), counts[i].total);
        /* run it with zero output and count */
        ck_assert_int_eq(ldm_sampler_begin(s, x), LDM_OK);
        int n = 0;
        memset(o->data, 0, 18 * sizeof(float));
        while (ldm_sampler_next(s, &xin, &t) == 1) {
            ck_assert(t >= 0.0 && t <= 999.0);
            ck_assert_int_eq(ldm_sampler_give(s, o), LDM_OK);
            n++;
        }
        ck_assert_int_eq(n, counts[i].evals);
        ldm_sampler_free(s);
    }
    /* PLMS with a single step: the warm-up's second evaluation is at t itself */
    p.kind = LDM_SAMPLER_PLMS;
    p.steps = 1;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_OK);
    ck_assert_int_eq(ldm_sampler_begin(s, x), LDM_OK);
    ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), 1);
    ck_assert(t == 1.0);
    ck_assert_int_eq(ldm_sampler_give(s, o), LDM_OK);
    ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), 1);
    ck_assert(t == 1.0);
    ldm_sampler_free(s);
    /* k-samplers start from x_T * sigma_max and evaluate at x * c_in */
    p.kind = LDM_SAMPLER_EULER;
    p.steps = 5;
    ck_assert_int_eq(ldm_sampler_create(ac, 1000, LDM_PARAM_EPS, &p, &s), LDM_OK);
    ck_assert_int_eq(ldm_sampler_begin(s, x), LDM_OK);
    int ns_;
    const double *sig = ls_sampler_sigmas(s, &ns_);
    ck_assert_int_eq(ns_, 6);
    ck_assert(fabsf(lt_f32(ldm_sampler_current(s))[0] - lt_f32(x)[0] * (float)sig[0]) == 0.0f);
    ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), 1);
    ck_assert(fabs(t - 999.0) < 1e-9);
    ck_assert(fabs(lt_f32(xin)[0] - lt_f32(x)[0] * sig[0] / sqrt(sig[0] * sig[0] + 1)) < 1e-5);
    ldm_sampler_free(s);
    ldm_tensor_free(x);
    ldm_tensor_free(o);
    ldm_tensor_free(w);
    ls_schedule_free(sched);
}
END_TEST

/* Seeded default noise: same seed same run, and eta 1 DDIM uses ldm_randn(seed, 1 + k). */
START_TEST(test_sampler_default_noise)
{
    ls_schedule *sched = sd_schedule();
    ldm_sampler_params p;
    ldm_sampler_params_init(&p);
    p.steps = 4;
    p.eta = 1.0f;
    p.seed = 77;
    int64_t shape[2] = {2, 8}, nshape[3] = {4, 2, 8};
    ldm_tensor *x = lt_new_f32(2, shape), *o = lt_new_f32(2, shape), *nz = lt_new_f32(3, nshape);
    ldm_randn(77, 0, x);
    ldm_randn(3, 3, o);
    for (int k = 0; k < 4; k++) ls_randn_fill(77, 1 + (uint64_t)k, 0, 16, lt_f32(nz) + 16 * k);
    float res[2][16];
    for (int run = 0; run < 2; run++) {
        ldm_sampler *s = NULL;
        ck_assert_int_eq(ls_sampler_create(sched, LDM_PARAM_EPS, &p, &s), LDM_OK);
        if (run == 1) ck_assert_int_eq(ldm_sampler_set_noise(s, nz), LDM_OK);
        ck_assert_int_eq(ldm_sampler_begin(s, x), LDM_OK);
        const ldm_tensor *xin;
        double t;
        while (ldm_sampler_next(s, &xin, &t) == 1) ck_assert_int_eq(ldm_sampler_give(s, o), LDM_OK);
        memcpy(res[run], lt_f32(ldm_sampler_current(s)), sizeof res[run]);
        ldm_sampler_free(s);
    }
    ck_assert(memcmp(res[0], res[1], sizeof res[0]) == 0);
    ldm_tensor_free(x);
    ldm_tensor_free(o);
    ldm_tensor_free(nz);
    ls_schedule_free(sched);
}
END_TEST

/* Image-to-image entry: begin_from noises z0 to the first executed step's level. */
START_TEST(test_sampler_begin_from)
{
    ls_schedule *sched = sd_schedule();
    ldm_sampler_params p;
    ldm_sampler_params_init(&p);
    p.steps = 10;
    int64_t shape[2] = {1, 8};
    ldm_tensor *z0 = lt_new_f32(2, shape), *e = lt_new_f32(2, shape), *r = NULL;
    ldm_randn(1, 1, z0);
    ldm_randn(1, 2, e);
    const ldm_sampler_kind kinds[] = {LDM_SAMPLER_DDIM, LDM_SAMPLER_PLMS, LDM_SAMPLER_DDPM, LDM_SAMPLER_EULER};
    for (size_t i = 0; i < LDM_ARRAY_LEN(kinds); i++) {
        p.kind = kinds[i];
        ldm_sampler *s = NULL;
        ck_assert_int_eq(ls_sampler_create(sched, LDM_PARAM_EPS, &p, &s), LDM_OK);
        ck_assert_int_eq(ls_sampler_begin_from(s, z0, e, 4), LDM_OK);
        ck_assert_int_eq(ldm_sampler_steps_done(s), 4);
        const ldm_tensor *xin;
        double t;
        ck_assert_int_eq(ldm_sampler_next(s, &xin, &t), 1);
        ck_assert(t == ls_sampler_step_timestep(s, 4));
        /* the start sample is sqrt(ac_t) z0 + sqrt(1-ac_t) e (VP) or z0 + sigma e (k) */
        double ac = kinds[i] == LDM_SAMPLER_EULER ? 0 : sched->buf[LS_ALPHAS_CUMPROD][(int)t];
        const double *sig = ls_sampler_sigmas(s, NULL);
        for (int j = 0; j < 8; j++) {
            double want = kinds[i] == LDM_SAMPLER_EULER ? lt_f32(z0)[j] + sig[4] * lt_f32(e)[j]
                                                        : sqrt(ac) * lt_f32(z0)[j] + sqrt(1 - ac) * lt_f32(e)[j];
            ck_assert_msg(fabs(lt_f32(ldm_sampler_current(s))[j] - want) < 1e-5, "kind %d", (int)kinds[i]);
        }
        /* after the last step the known region is clean (DDIM: at alphas_cumprod[0]) */
        ck_assert_int_eq(ls_sampler_noised(s, ldm_sampler_total_steps(s), z0, e, &r), LDM_OK);
        double a_end = kinds[i] == LDM_SAMPLER_DDIM || kinds[i] == LDM_SAMPLER_PLMS ? sched->buf[LS_ALPHAS_CUMPROD][0] : 1.0;
        for (int j = 0; j < 8; j++)
            ck_assert(fabs(lt_f32(r)[j] - (sqrt(a_end) * lt_f32(z0)[j] + sqrt(1 - a_end) * lt_f32(e)[j])) < 1e-5);
        ldm_tensor_free(r);
        ck_assert_int_ne(ls_sampler_begin_from(s, z0, e, ldm_sampler_total_steps(s)), LDM_OK);
        ldm_sampler_free(s);
    }
    ldm_tensor_free(z0);
    ldm_tensor_free(e);
    ls_schedule_free(sched);
}
END_TEST

static Suite *sampling_suite(void)
{
    Suite *s = suite_create("sampling");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_philox_known_answers);
    tcase_add_test(tc, test_randn_deterministic);
    tcase_add_test(tc, test_randn_moments);
    tcase_add_test(tc, test_schedule_linear_vs_fixtures);
    tcase_add_test(tc, test_schedule_kinds);
    tcase_add_test(tc, test_ddim_params_vs_fixtures);
    tcase_add_test(tc, test_ddim_timesteps);
    tcase_add_test(tc, test_ddim_trajectories);
    tcase_add_test(tc, test_plms_trajectory);
    tcase_add_test(tc, test_ddim_v_trajectory);
    tcase_add_test(tc, test_ddim_v_step0_from_model_output);
    tcase_add_test(tc, test_p_sample_formula);
    tcase_add_test(tc, test_ddpm_sampler_sequence);
    tcase_add_test(tc, test_v_roundtrip);
    tcase_add_test(tc, test_k_sigma_schedule);
    tcase_add_test(tc, test_k_samplers_toy_ode);
    tcase_add_test(tc, test_stochastic_samplers_toy_distribution);
    tcase_add_test(tc, test_sampler_api_contract);
    tcase_add_test(tc, test_sampler_default_noise);
    tcase_add_test(tc, test_sampler_begin_from);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(sampling_suite());
}
