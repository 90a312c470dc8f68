/* sampler_api.c - the public host-driven sampler state machine (ldm_sampler_*, include/ldm.h).
 *
 * A run is a sequence of steps; a step needs one model evaluation (two for the PLMS warm-up step
 * and for Heun steps that do not end at sigma 0). `phase` says which evaluation of the current
 * step is pending. ldm_sampler_next() publishes the request (x_in, timestep), ldm_sampler_give()
 * consumes the answer and, when the step is complete, updates x / pred_x0 and moves on. The update
 * rules themselves live in ddim.c, ddpm.c and kdiff.c. */
#include "sampling.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

/* Work slots of numel floats each, allocated at begin. */
enum { W_E0, W_XTMP, W_H0, W_H1, W_H2, W_DEN, W_NOISE, W_OLD, W_EPS, W_COUNT };

struct ldm_sampler {
    ldm_sampler_params p;
    ldm_parameterization param;
    ls_schedule *sched;
    ls_ddim ddim;      /* DDIM, PLMS */
    ls_ksched ks;      /* k-samplers */
    double *sigmas;    /* k-samplers: n_steps + 1 values, last 0 */
    double *step_t;    /* model timestep of each step's first evaluation */
    int64_t *lcm_t;    /* LCM: the timestep of each step */
    int n_steps, n_evals;
    int ddpm_start;    /* DDPM: first timestep + 1 */

    /* the current run */
    int begun, step, phase, pending, pred_valid;
    size_t numel;
    ldm_tensor *x, *x_in, *pred_x0, *noise;
    float *work;       /* W_COUNT * numel */
    float *hist[3];    /* PLMS: raw e_t of earlier steps, hist[0] most recent */
    int n_hist, have_old;
    double pending_t;
};

static int is_k_kind(ldm_sampler_kind k)
{
    return k == LDM_SAMPLER_EULER || k == LDM_SAMPLER_EULER_ANCESTRAL || k == LDM_SAMPLER_HEUN ||
           k == LDM_SAMPLER_DPMPP_2M || k == LDM_SAMPLER_DPMPP_2M_KARRAS;
}

static int uses_noise(ldm_sampler_kind k)
{
    return k == LDM_SAMPLER_DDIM || k == LDM_SAMPLER_DDPM || k == LDM_SAMPLER_EULER_ANCESTRAL || k == LDM_SAMPLER_LCM;
}

static float *slot(const ldm_sampler *s, int w) { return s->work + (size_t)w * s->numel; }

static void sampler_params_defaults(ldm_sampler_params *p)
{
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->kind = LDM_SAMPLER_DDIM;
    p->steps = 50;
    p->eta = 0.0f;
    p->ddim_quad = 0;
    p->seed = 0;
    p->spacing = LDM_SPACING_DEFAULT;
    p->lcm_original_steps = 50;
}

void ldm_sampler_params_init_size(ldm_sampler_params *params, size_t struct_size)
{
    ldm_sampler_params defaults;
    sampler_params_defaults(&defaults);
    ldm_params_fill(params, struct_size, &defaults, sizeof defaults);
}

void(ldm_sampler_params_init)(ldm_sampler_params *params) { ldm_sampler_params_init_size(params, sizeof *params); }

/* Copies the caller's struct honouring struct_size (older callers have a prefix of the fields). */
static ldm_status params_copy(const ldm_sampler_params *p, ldm_sampler_params *dst)
{
    ldm_sampler_params_init(dst);
    return ldm_params_read(p, dst, sizeof *dst, offsetof(ldm_sampler_params, steps) + sizeof p->steps,
                           "ldm_sampler_params");
}

static ldm_status check_params(const ldm_sampler_params *p, int T)
{
    if ((int)p->kind < LDM_SAMPLER_DDIM || (int)p->kind > LDM_SAMPLER_LCM)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler: unknown kind %d", (int)p->kind);
    if (p->kind != LDM_SAMPLER_DDPM && (p->steps < 1 || p->steps > T))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler: %d steps, need 1..%d (training timesteps)", p->steps, T);
    if (!(p->eta >= 0.0f) || !isfinite(p->eta))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler: eta %g must be >= 0", (double)p->eta);
    if (p->kind == LDM_SAMPLER_PLMS && p->eta != 0.0f)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler: PLMS needs eta 0 (got %g), as the reference", (double)p->eta);
    if (p->ddim_quad != 0 && p->ddim_quad != 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler: ddim_quad %d must be 0 (uniform) or 1 (quad)", p->ddim_quad);
    if (p->spacing != LDM_SPACING_DEFAULT && p->spacing != LDM_SPACING_TRAILING)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler: unknown timestep spacing %d", (int)p->spacing);
    if (p->spacing == LDM_SPACING_TRAILING && (!is_k_kind(p->kind) || p->kind == LDM_SAMPLER_DPMPP_2M_KARRAS))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "sampler: trailing timestep spacing applies to euler, euler_a, heun and dpmpp_2m only");
    if (p->discretization != LDM_DISCRETIZATION_KDIFFUSION && p->discretization != LDM_DISCRETIZATION_SGM)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler: unknown discretization %d", p->discretization);
    if (p->discretization == LDM_DISCRETIZATION_SGM && p->spacing == LDM_SPACING_TRAILING)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "sampler: trailing timestep spacing is diffusers' schedule: it "
                        "goes with LDM_DISCRETIZATION_KDIFFUSION (sgm has no trailing spacing)");
    if (p->discretization == LDM_DISCRETIZATION_SGM &&
        !(p->kind == LDM_SAMPLER_EULER || p->kind == LDM_SAMPLER_EULER_ANCESTRAL || p->kind == LDM_SAMPLER_HEUN ||
          p->kind == LDM_SAMPLER_DPMPP_2M))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler: the sgm discretization is for the Euler, Euler "
                        "ancestral, Heun and DPM++ 2M samplers (kind %d)", (int)p->kind);
    return LDM_OK;
}

/* The model timestep for noise level sigma: k-diffusion's interpolated t, or sgm's
 * DiscreteDenoiser index of the nearest table sigma (c_noise). */
static double model_t(const ldm_sampler *s, double sigma)
{
    if (s->p.discretization == LDM_DISCRETIZATION_SGM)
        return (double)ls_sgm_sigma_index(s->sched->sgm_denoiser_sigmas, s->sched->n, sigma);
    return ls_ksched_sigma_to_t(&s->ks, sigma);
}

/* The noise level the network input and output are scaled with: sgm's DiscreteDenoiser
 * quantises sigma to its table (possibly_quantize_sigma); k-diffusion uses sigma itself. */
static double scale_sigma(const ldm_sampler *s, double sigma)
{
    if (s->p.discretization != LDM_DISCRETIZATION_SGM) return sigma;
    return (double)s->sched->sgm_denoiser_sigmas[ls_sgm_sigma_index(s->sched->sgm_denoiser_sigmas, s->sched->n,
                                                                     sigma)];
}

/* Schedule-dependent arrays: DDIM parameters, k sigmas, per-step timesteps, evaluation count. */
static ldm_status plan(ldm_sampler *s)
{
    const ldm_sampler_params *p = &s->p;
    int T = s->sched->n;
    const float *ac = s->sched->buf[LS_ALPHAS_CUMPROD];
    if (p->kind == LDM_SAMPLER_DDIM || p->kind == LDM_SAMPLER_PLMS) {
        LDM_TRY(ls_ddim_make(ac, T, p->steps, p->ddim_quad, p->kind == LDM_SAMPLER_DDIM ? (double)p->eta : 0.0, &s->ddim));
        s->n_steps = s->ddim.n;
        s->n_evals = s->n_steps + (p->kind == LDM_SAMPLER_PLMS);
    } else if (p->kind == LDM_SAMPLER_DDPM) {
        s->ddpm_start = (p->steps <= 0 || p->steps > T) ? T : p->steps;
        s->n_steps = s->n_evals = s->ddpm_start;
    } else if (p->kind == LDM_SAMPLER_LCM) {
        s->lcm_t = ldm_malloc((size_t)p->steps * sizeof *s->lcm_t);
        if (!s->lcm_t) return ldm_alloc_failure_status();
        LDM_TRY(ls_lcm_timesteps(T, p->lcm_original_steps, p->steps, s->lcm_t));
        s->n_steps = s->n_evals = p->steps;
    } else if (p->spacing == LDM_SPACING_TRAILING) {
        LDM_TRY(ls_ksched_make(ac, T, &s->ks));
        s->lcm_t = ldm_malloc(((size_t)p->steps + 1) * sizeof *s->lcm_t);
        s->sigmas = ldm_malloc(((size_t)p->steps + 2) * sizeof *s->sigmas);
        if (!s->lcm_t || !s->sigmas) return ldm_alloc_failure_status();
        LDM_TRY(ls_trailing_timesteps(T, p->steps, s->lcm_t, &s->n_steps));
        ls_ksched_sigmas_at(&s->ks, s->lcm_t, s->n_steps, s->sigmas);
        s->n_evals = s->n_steps;
        if (p->kind == LDM_SAMPLER_HEUN)
            for (int i = 0; i < s->n_steps; i++) s->n_evals += s->sigmas[i + 1] > 0.0;
    } else {
        LDM_TRY(ls_ksched_make(ac, T, &s->ks));
        s->n_steps = p->steps;
        s->sigmas = ldm_malloc(((size_t)s->n_steps + 1) * sizeof *s->sigmas);
        if (!s->sigmas) return ldm_alloc_failure_status();
        if (p->discretization == LDM_DISCRETIZATION_SGM)
            ls_sgm_sigmas(s->sched->sgm_sigmas, T, s->n_steps, s->sigmas);
        else
            LDM_TRY(ls_ksched_sigmas(&s->ks, s->n_steps, p->kind == LDM_SAMPLER_DPMPP_2M_KARRAS, s->sigmas));
        s->n_evals = s->n_steps;
        if (p->kind == LDM_SAMPLER_HEUN)
            for (int i = 0; i < s->n_steps; i++) s->n_evals += s->sigmas[i + 1] > 0.0;
    }
    s->step_t = ldm_malloc((size_t)s->n_steps * sizeof *s->step_t);
    if (!s->step_t) return ldm_alloc_failure_status();
    for (int k = 0; k < s->n_steps; k++) {
        if (p->kind == LDM_SAMPLER_DDIM || p->kind == LDM_SAMPLER_PLMS)
            s->step_t[k] = (double)s->ddim.timesteps[s->ddim.n - 1 - k];
        else if (p->kind == LDM_SAMPLER_DDPM)
            s->step_t[k] = (double)(s->ddpm_start - 1 - k);
        else if (s->lcm_t) /* LCM, trailing k-samplers: the integer timesteps themselves */
            s->step_t[k] = (double)s->lcm_t[k];
        else
            s->step_t[k] = model_t(s, s->sigmas[k]);
    }
    return LDM_OK;
}

ldm_status ls_sampler_create(const ls_schedule *sched, ldm_parameterization param,
                             const ldm_sampler_params *p, ldm_sampler **out)
{
    if (!sched || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_create: NULL argument");
    *out = NULL;
    if (param != LDM_PARAM_EPS && param != LDM_PARAM_V && param != LDM_PARAM_X0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_create: unknown parameterization %d", (int)param);
    ldm_sampler *s = ldm_calloc(1, sizeof *s);
    if (!s) return ldm_alloc_failure_status();
    s->param = param;
    ldm_status st = params_copy(p, &s->p);
    if (st == LDM_OK) st = check_params(&s->p, sched->n);
    if (st == LDM_OK && param == LDM_PARAM_X0 && s->p.kind != LDM_SAMPLER_LCM)
        st = ldm_fail(LDM_ERR_UNSUPPORTED, "ldm_sampler_create: x0-parameterised models are sampled by the LCM sampler only");
    if (st == LDM_OK) st = ls_schedule_clone(sched, &s->sched);
    if (st == LDM_OK) st = plan(s);
    if (st != LDM_OK) {
        ldm_sampler_free(s);
        return st;
    }
    *out = s;
    return LDM_OK;
}

ldm_status ldm_sampler_create(const float *alphas_cumprod, int n_train_steps, ldm_parameterization param,
                              const ldm_sampler_params *p, ldm_sampler **out)
{
    if (!alphas_cumprod || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_create: NULL argument");
    *out = NULL;
    if (n_train_steps < 2)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_create: %d training timesteps (need >= 2)", n_train_steps);
    ls_schedule *sched;
    LDM_TRY(ls_schedule_from_alphas_cumprod(alphas_cumprod, n_train_steps, &sched));
    ldm_status st = ls_sampler_create(sched, param, p, out);
    ls_schedule_free(sched);
    return st;
}

static void run_release(ldm_sampler *s)
{
    ldm_tensor_free(s->x);
    ldm_tensor_free(s->x_in);
    ldm_tensor_free(s->pred_x0);
    ldm_free(s->work);
    s->x = s->x_in = s->pred_x0 = NULL;
    s->work = NULL;
    s->begun = 0;
}

void ldm_sampler_free(ldm_sampler *s)
{
    if (!s) return;
    run_release(s);
    ldm_tensor_free(s->noise);
    ls_schedule_free(s->sched);
    ls_ddim_release(&s->ddim);
    ls_ksched_release(&s->ks);
    ldm_free(s->sigmas);
    ldm_free(s->step_t);
    ldm_free(s->lcm_t);
    ldm_free(s);
}

/* The user noise must be [rows >= n_steps, <shape of x>] for kinds that use noise. */
static ldm_status check_noise(const ldm_sampler *s, const ldm_tensor *noise, const ldm_tensor *x)
{
    char a[96], b[96];
    if (!noise || !x || !uses_noise(s->p.kind)) return LDM_OK;
    int ok = noise->ndim == x->ndim + 1;
    for (int d = 0; ok && d < x->ndim; d++) ok = noise->shape[d + 1] == x->shape[d];
    if (!ok)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler noise: shape %s does not match [steps]+%s",
                        lt_shape_str(noise, a, sizeof a), lt_shape_str(x, b, sizeof b));
    if (noise->shape[0] < s->n_steps)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler noise: %lld rows for %d steps",
                        (long long)noise->shape[0], s->n_steps);
    return LDM_OK;
}

ldm_status ldm_sampler_set_noise(ldm_sampler *s, const ldm_tensor *noise)
{
    if (!s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_set_noise: NULL sampler");
    if (noise) {
        LDM_TRY(lt_check(noise, "sampler noise", LDM_F32, -1));
        if (noise->ndim < 1) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler noise: needs a leading step dimension");
        if (s->begun) LDM_TRY(check_noise(s, noise, s->x));
    }
    ldm_tensor *copy = NULL;
    if (noise && !(copy = lt_clone(noise))) return ldm_alloc_failure_status();
    ldm_tensor_free(s->noise);
    s->noise = copy;
    return LDM_OK;
}

static int all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

ldm_status ldm_sampler_begin(ldm_sampler *s, const ldm_tensor *x_T)
{
    if (!s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_begin: NULL sampler");
    LDM_TRY(lt_check(x_T, "ldm_sampler_begin: x_T", LDM_F32, -1));
    if (x_T->ndim < 1 || lt_numel(x_T) < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_begin: x_T is empty");
    LDM_TRY(check_noise(s, s->noise, x_T));
    if (!all_finite(lt_f32(x_T), (size_t)lt_numel(x_T)))
        return ldm_fail(LDM_ERR_NUMERIC, "ldm_sampler_begin: x_T holds NaN or Inf");
    run_release(s);
    size_t numel = (size_t)lt_numel(x_T), bytes;
    if (ldm_mul_size(numel, (size_t)W_COUNT * sizeof(float), &bytes))
        return ldm_fail(LDM_ERR_LIMIT, "ldm_sampler_begin: x_T too large");
    s->x = lt_clone(x_T);
    s->x_in = lt_new_f32(x_T->ndim, x_T->shape);
    s->pred_x0 = lt_new_f32(x_T->ndim, x_T->shape);
    s->work = ldm_malloc_aligned(bytes);
    if (!s->x || !s->x_in || !s->pred_x0 || !s->work) {
        run_release(s);
        return ldm_alloc_failure_status();
    }
    s->numel = numel;
    s->step = s->phase = s->pending = s->pred_valid = 0;
    s->n_hist = s->have_old = 0;
    for (int i = 0; i < 3; i++) s->hist[i] = slot(s, W_H0 + i);
    if (is_k_kind(s->p.kind)) { /* k-diffusion starts from noise * sigma_max, sgm from noise * sqrt(1 + sigma_max^2) */
        float smax = (float)s->sigmas[0];
        if (s->p.discretization == LDM_DISCRETIZATION_SGM) smax = sqrtf(1.0f + smax * smax);
        float *x = lt_f32(s->x);
        for (size_t i = 0; i < numel; i++) x[i] = x[i] * smax;
    }
    s->begun = 1;
    return LDM_OK;
}

int ldm_sampler_total_evaluations(const ldm_sampler *s) { return s ? s->n_evals : -1; }
int ldm_sampler_total_steps(const ldm_sampler *s) { return s ? s->n_steps : -1; }
int ldm_sampler_steps_done(const ldm_sampler *s) { return s ? s->step : -1; }

const ldm_tensor *ldm_sampler_current(const ldm_sampler *s) { return (s && s->begun) ? s->x : NULL; }

const ldm_tensor *ldm_sampler_pred_x0(const ldm_sampler *s)
{
    return (s && s->begun && s->pred_valid) ? s->pred_x0 : NULL;
}

/* DDIM index of step k (the DDIM arrays are in ascending timestep order). */
static int ddim_index(const ldm_sampler *s, int k) { return s->ddim.n - 1 - k; }

/* Fills x_in / pending_t for the pending evaluation of the current step. */
static void make_request(ldm_sampler *s)
{
    float *xin = lt_f32(s->x_in);
    const float *x = lt_f32(s->x);
    int k = s->step;
    switch (s->p.kind) {
    case LDM_SAMPLER_DDIM:
    case LDM_SAMPLER_DDPM:
    case LDM_SAMPLER_LCM:
        memcpy(xin, x, s->numel * sizeof *xin);
        s->pending_t = s->step_t[k];
        return;
    case LDM_SAMPLER_PLMS:
        if (s->phase == 0) {
            memcpy(xin, x, s->numel * sizeof *xin);
            s->pending_t = s->step_t[k];
        } else { /* warm-up second evaluation at t_next (= t on the last step) */
            int idx = ddim_index(s, k);
            memcpy(xin, slot(s, W_XTMP), s->numel * sizeof *xin);
            s->pending_t = (double)s->ddim.timesteps[idx > 0 ? idx - 1 : idx];
        }
        return;
    default: { /* k-samplers: the model sees x * c_in(sigma) at t(sigma) */
        double sigma = s->phase == 0 ? s->sigmas[k] : s->sigmas[k + 1];
        const float *src = s->phase == 0 ? x : slot(s, W_XTMP);
        float c_in = s->p.discretization == LDM_DISCRETIZATION_SGM ? ls_sgm_c_in((float)scale_sigma(s, sigma))
                                                                   : (float)ls_k_c_in(sigma);
        for (size_t i = 0; i < s->numel; i++) xin[i] = src[i] * c_in;
        s->pending_t = s->phase == 0 ? s->step_t[k] : model_t(s, sigma);
        return;
    }
    }
}

int ldm_sampler_next(ldm_sampler *s, const ldm_tensor **x_in, double *timestep)
{
    if (!s || !x_in || !timestep) {
        ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_next: NULL argument");
        return -1;
    }
    if (!s->begun) {
        ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_next: call ldm_sampler_begin first");
        return -1;
    }
    if (s->step >= s->n_steps) return 0;
    if (!s->pending) {
        make_request(s);
        s->pending = 1;
    }
    *x_in = s->x_in;
    *timestep = s->pending_t;
    return 1;
}

/* Noise row of step k: the user's tensor or the seeded generator (stream 1 + k). */
static const float *step_noise(ldm_sampler *s, int k)
{
    if (s->noise) return lt_f32(s->noise) + (size_t)k * s->numel;
    float *buf = slot(s, W_NOISE);
    ls_randn_fill(s->p.seed, 1 + (uint64_t)k, 0, s->numel, buf);
    return buf;
}

/* Model output -> eps at DDPM timestep t for the sample `x` it was evaluated on (v: Stability's
 * predict_eps_from_z_and_v / predict_start_from_z_and_v with the full-schedule buffers). Returns
 * the eps array (out itself for eps models); x0 (may be NULL) receives the v-model's x0. */
static const float *to_eps(ldm_sampler *s, const float *out, const float *x, int64_t t, float *eps, float *x0)
{
    if (s->param == LDM_PARAM_EPS) return out;
    float sa = s->sched->buf[LS_SQRT_ALPHAS_CUMPROD][t];
    float so = s->sched->buf[LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD][t];
    ls_v_to_eps_x0(x, out, sa, so, s->numel, eps, x0);
    return eps;
}

/* One DDIM update of x at DDIM index idx with eps e (pred_x0 into s->pred_x0). For v models the
 * reference takes pred_x0 from v directly (given in v_x0) rather than from e. */
static void ddim_update(ldm_sampler *s, int idx, const float *e, const float *v_x0, const float *noise)
{
    float *x = lt_f32(s->x), *px0 = lt_f32(s->pred_x0);
    const ls_ddim *d = &s->ddim;
    if (v_x0) {
        memcpy(px0, v_x0, s->numel * sizeof *px0);
        ls_ddim_finish(px0, e, noise, d->alphas_prev[idx], d->sigmas[idx], s->numel, x);
    } else {
        ls_ddim_step_eps(x, e, noise, d->alphas[idx], d->sqrt_one_minus_alphas[idx], d->alphas_prev[idx],
                         d->sigmas[idx], s->numel, x, px0);
    }
}

static void give_ddim(ldm_sampler *s, const float *out)
{
    int k = s->step, idx = ddim_index(s, k);
    int64_t t = s->ddim.timesteps[idx];
    int v = s->param == LDM_PARAM_V;
    float *x0v = v ? slot(s, W_DEN) : NULL;
    const float *e = to_eps(s, out, lt_f32(s->x), t, slot(s, W_EPS), x0v);
    const float *noise = s->ddim.sigmas[idx] != 0.0f ? step_noise(s, k) : NULL;
    ddim_update(s, idx, e, x0v, noise);
    s->step++;
}

static void plms_push(ldm_sampler *s, const float *e)
{
    float *oldest = s->hist[2];
    s->hist[2] = s->hist[1];
    s->hist[1] = s->hist[0];
    s->hist[0] = oldest;
    memcpy(oldest, e, s->numel * sizeof *oldest);
    if (s->n_hist < 3) s->n_hist++;
}

static void give_plms(ldm_sampler *s, const float *out)
{
    int k = s->step, idx = ddim_index(s, k);
    float *eps = slot(s, W_EPS), *e0 = slot(s, W_E0), *xtmp = slot(s, W_XTMP);
    const ls_ddim *d = &s->ddim;
    if (s->phase == 0) {
        const float *e = to_eps(s, out, lt_f32(s->x), d->timesteps[idx], eps, NULL);
        if (s->n_hist == 0) { /* warm-up: DDIM step with e, then evaluate again there */
            memcpy(e0, e, s->numel * sizeof *e0);
            ls_ddim_step_eps(lt_f32(s->x), e0, NULL, d->alphas[idx], d->sqrt_one_minus_alphas[idx],
                             d->alphas_prev[idx], d->sigmas[idx], s->numel, xtmp, NULL);
            s->phase = 1;
            return;
        }
        float *prime = slot(s, W_DEN);
        ls_plms_combine(e, (const float *const *)s->hist, s->n_hist, s->numel, prime);
        ddim_update(s, idx, prime, NULL, NULL);
        plms_push(s, e);
    } else {
        int64_t t_next = d->timesteps[idx > 0 ? idx - 1 : idx];
        const float *e_next = to_eps(s, out, xtmp, t_next, eps, NULL);
        float *prime = slot(s, W_DEN);
        ls_plms_warmup(e0, e_next, s->numel, prime);
        ddim_update(s, idx, prime, NULL, NULL);
        plms_push(s, e0); /* the history holds the RAW e_t, not e' */
        s->phase = 0;
    }
    s->step++;
}

static void give_ddpm(ldm_sampler *s, const float *out)
{
    int k = s->step;
    int64_t t = s->ddpm_start - 1 - k;
    const float *noise = t != 0 ? step_noise(s, k) : NULL;
    float *x = lt_f32(s->x);
    /* B = 1 with per = numel: one timestep for the whole batch */
    ls_ddpm_p_sample(s->sched, 1, s->numel, &t, x, out, s->param == LDM_PARAM_V, noise, x, lt_f32(s->pred_x0));
    s->step++;
}

static void give_lcm(ldm_sampler *s, const float *out)
{
    int k = s->step, last = k == s->n_steps - 1;
    int64_t t = s->lcm_t[k];
    const float *ac = s->sched->buf[LS_ALPHAS_CUMPROD];
    float c_skip, c_out;
    ls_lcm_scalings(t, 10.0, &c_skip, &c_out);
    float a_next = last ? ac[t] : ac[s->lcm_t[k + 1]];
    float *x = lt_f32(s->x);
    ls_lcm_step(x, out, (int)s->param, ac[t], c_skip, c_out, last ? NULL : step_noise(s, k), a_next, s->numel, x,
                lt_f32(s->pred_x0));
    s->step++;
}

static void give_k(ldm_sampler *s, const float *out)
{
    int k = s->step, v = s->param == LDM_PARAM_V;
    double sigma = s->sigmas[k], sigma_next = s->sigmas[k + 1];
    float *x = lt_f32(s->x), *den = slot(s, W_DEN), *px0 = lt_f32(s->pred_x0);
    size_t n = s->numel;
    if (s->phase == 1) { /* Heun: correct with the derivative at (x_2, sigma_next) */
        float *x2 = slot(s, W_XTMP), *d = slot(s, W_E0);
        ls_k_denoised(x2, out, scale_sigma(s, sigma_next), v, n, den);
        float fsn = (float)sigma_next, dt = (float)(sigma_next - sigma);
        for (size_t i = 0; i < n; i++) {
            float d2 = (x2[i] - den[i]) / fsn;
            x[i] = x[i] + ((d[i] + d2) / 2.0f) * dt;
        }
        s->phase = 0;
        s->step++;
        return;
    }
    ls_k_denoised(x, out, scale_sigma(s, sigma), v, n, den);
    memcpy(px0, den, n * sizeof *px0);
    switch (s->p.kind) {
    case LDM_SAMPLER_EULER:
        ls_k_euler(x, den, sigma, sigma_next - sigma, n);
        break;
    case LDM_SAMPLER_EULER_ANCESTRAL: {
        double down, up;
        ls_k_ancestral_step(sigma, sigma_next, 1.0, &down, &up);
        ls_k_euler(x, den, sigma, down - sigma, n);
        if (sigma_next > 0.0) {
            const float *noise = step_noise(s, k);
            float fup = (float)up;
            for (size_t i = 0; i < n; i++) x[i] = x[i] + noise[i] * fup;
        }
        break;
    }
    case LDM_SAMPLER_HEUN: {
        if (sigma_next == 0.0) {
            ls_k_euler(x, den, sigma, sigma_next - sigma, n);
            break;
        }
        float *d = slot(s, W_E0), *x2 = slot(s, W_XTMP);
        float fs = (float)sigma, dt = (float)(sigma_next - sigma);
        for (size_t i = 0; i < n; i++) {
            d[i] = (x[i] - den[i]) / fs;
            x2[i] = x[i] + d[i] * dt;
        }
        s->phase = 1;
        s->pred_valid = 1;
        return; /* the step completes with the second evaluation */
    }
    default: { /* DPM++ 2M (Karras or not: only the sigmas differ) */
        float *old = slot(s, W_OLD);
        ls_k_dpmpp_2m(x, den, s->have_old ? old : NULL, k > 0 ? s->sigmas[k - 1] : sigma, sigma, sigma_next, n);
        memcpy(old, den, n * sizeof *old);
        s->have_old = 1;
        break;
    }
    }
    s->step++;
}

ldm_status ldm_sampler_give(ldm_sampler *s, const ldm_tensor *model_output)
{
    char a[96], b[96];
    if (!s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_give: NULL sampler");
    if (!s->begun || !s->pending)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_give: no evaluation was requested (call ldm_sampler_next)");
    LDM_TRY(lt_check(model_output, "ldm_sampler_give: model output", LDM_F32, s->x->ndim));
    for (int d = 0; d < s->x->ndim; d++) {
        if (model_output->shape[d] != s->x->shape[d])
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_give: model output %s, expected %s",
                            lt_shape_str(model_output, a, sizeof a), lt_shape_str(s->x, b, sizeof b));
    }
    const float *out = lt_f32(model_output);
    if (!all_finite(out, s->numel))
        return ldm_fail(LDM_ERR_NUMERIC, "ldm_sampler_give: model output at step %d (t=%g) holds NaN or Inf",
                        s->step, s->pending_t);
    s->pending = 0;
    int step_before = s->step;
    switch (s->p.kind) {
    case LDM_SAMPLER_DDIM: give_ddim(s, out); break;
    case LDM_SAMPLER_PLMS: give_plms(s, out); break;
    case LDM_SAMPLER_DDPM: give_ddpm(s, out); break;
    case LDM_SAMPLER_LCM: give_lcm(s, out); break;
    default: give_k(s, out); break;
    }
    if (s->step != step_before) s->pred_valid = 1;
    return LDM_OK;
}

const ls_ddim *ls_sampler_ddim(const ldm_sampler *s)
{
    return (s && (s->p.kind == LDM_SAMPLER_DDIM || s->p.kind == LDM_SAMPLER_PLMS)) ? &s->ddim : NULL;
}

const double *ls_sampler_sigmas(const ldm_sampler *s, int *n_sigmas)
{
    if (!s || !s->sigmas) {
        if (n_sigmas) *n_sigmas = 0;
        return NULL;
    }
    if (n_sigmas) *n_sigmas = s->n_steps + 1;
    return s->sigmas;
}

const ls_ksched *ls_sampler_ksched(const ldm_sampler *s) { return (s && s->sigmas) ? &s->ks : NULL; }

const ls_schedule *ls_sampler_schedule(const ldm_sampler *s) { return s ? s->sched : NULL; }

double ls_sampler_step_timestep(const ldm_sampler *s, int k)
{
    return (s && k >= 0 && k < s->n_steps) ? s->step_t[k] : -1.0;
}

/* ---------------------------------------------------------------- image-to-image support */

/* x = sa*z0 + so*noise is the sample at the level reached after `done` steps (see sampling.h). */
static void level_after(const ldm_sampler *s, int done, float *sa, float *so)
{
    int n = s->n_steps;
    switch (s->p.kind) {
    case LDM_SAMPLER_DDIM:
    case LDM_SAMPLER_PLMS: {
        if (done < n) {
            int idx = ddim_index(s, done);
            *sa = sqrtf(s->ddim.alphas[idx]);
            *so = s->ddim.sqrt_one_minus_alphas[idx];
        } else {
            float a = s->ddim.alphas_prev[0];
            *sa = sqrtf(a);
            *so = sqrtf(1.0f - a);
        }
        return;
    }
    case LDM_SAMPLER_DDPM:
    case LDM_SAMPLER_LCM:
        if (done < n) {
            int t = s->p.kind == LDM_SAMPLER_LCM ? (int)s->lcm_t[done] : s->ddpm_start - 1 - done;
            *sa = s->sched->buf[LS_SQRT_ALPHAS_CUMPROD][t];
            *so = s->sched->buf[LS_SQRT_ONE_MINUS_ALPHAS_CUMPROD][t];
        } else {
            *sa = 1.0f;
            *so = 0.0f;
        }
        return;
    default:
        *sa = 1.0f;
        *so = (float)s->sigmas[done];
        return;
    }
}

static ldm_status same_shape(const ldm_tensor *a, const ldm_tensor *b, const char *what)
{
    char x[96], y[96];
    int ok = a->ndim == b->ndim;
    for (int d = 0; ok && d < a->ndim; d++) ok = a->shape[d] == b->shape[d];
    if (!ok)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: shape %s, expected %s", what, lt_shape_str(a, x, sizeof x),
                        lt_shape_str(b, y, sizeof y));
    return LDM_OK;
}

ldm_status ls_sampler_noised(const ldm_sampler *s, int done, const ldm_tensor *z0, const ldm_tensor *noise,
                             ldm_tensor **out)
{
    if (!s || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler noised: NULL argument");
    LDM_TRY(lt_check(z0, "sampler noised: z0", LDM_F32, -1));
    LDM_TRY(lt_check(noise, "sampler noised: noise", LDM_F32, -1));
    LDM_TRY(same_shape(noise, z0, "sampler noised: noise"));
    if (done < 0 || done > s->n_steps)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler noised: %d steps done, the run has %d", done, s->n_steps);
    float sa, so;
    level_after(s, done, &sa, &so);
    ldm_tensor *r = lt_new_f32(z0->ndim, z0->shape);
    if (!r) return ldm_alloc_failure_status();
    const float *z = lt_f32(z0), *e = lt_f32(noise);
    float *o = lt_f32(r);
    for (int64_t i = 0, n = lt_numel(z0); i < n; i++) o[i] = sa * z[i] + so * e[i];
    *out = r;
    return LDM_OK;
}

ldm_status ls_sampler_begin_from(ldm_sampler *s, const ldm_tensor *z0, const ldm_tensor *x_T, int first)
{
    if (!s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler begin_from: NULL sampler");
    if (first < 0 || first >= s->n_steps)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "sampler begin_from: first step %d outside 0..%d", first,
                        s->n_steps - 1);
    LDM_TRY(lt_check(z0, "sampler begin_from: z0", LDM_F32, -1));
    LDM_TRY(lt_check(x_T, "sampler begin_from: x_T", LDM_F32, -1));
    LDM_TRY(same_shape(z0, x_T, "sampler begin_from: z0"));
    if (!all_finite(lt_f32(z0), (size_t)lt_numel(z0)))
        return ldm_fail(LDM_ERR_NUMERIC, "sampler begin_from: z0 holds NaN or Inf");
    ldm_tensor *x0 = NULL;
    LDM_TRY(ls_sampler_noised(s, first, z0, x_T, &x0));
    ldm_status st = ldm_sampler_begin_at(s, x0, first);
    ldm_tensor_free(x0);
    return st;
}

ldm_status ldm_sampler_begin_noised(ldm_sampler *s, const ldm_tensor *z0, const ldm_tensor *noise, int first_step)
{
    if (!s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_begin_noised: NULL sampler");
    return ls_sampler_begin_from(s, z0, noise, first_step);
}

ldm_status ldm_sampler_begin_at(ldm_sampler *s, const ldm_tensor *x, int first_step)
{
    if (!s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_begin_at: NULL sampler");
    if (first_step < 0 || first_step >= s->n_steps)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_sampler_begin_at: first step %d outside 0..%d", first_step,
                        s->n_steps - 1);
    LDM_TRY(ldm_sampler_begin(s, x));
    float *dst = lt_f32(s->x);
    const float *src = lt_f32(x);
    if (s->p.discretization == LDM_DISCRETIZATION_SGM) {
        float sig = (float)s->sigmas[first_step], a = sqrtf(1.0f + sig * sig);
        for (size_t i = 0; i < s->numel; i++) dst[i] = (src[i] / a) * a;
    } else {
        memcpy(dst, src, s->numel * sizeof *dst);
    }
    s->step = first_step;
    return LDM_OK;
}
