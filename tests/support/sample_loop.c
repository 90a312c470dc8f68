/* sample_loop.c - a whole sampling run driven from outside the library, the way a host would:
 * the sampler says where to evaluate, the model applies (with classifier-free guidance), the
 * result goes back. Every completed step is recorded as the reference's samplers record it. */
#include "fixture.h"

#include "core/tensor.h"
#include "sampling/sampling.h"

#include <string.h>

/* [n, <shape of like>] F32 */
static ldm_tensor *stacked(int n, const ldm_tensor *like, ldm_dtype dtype, int ndim_like)
{
    int64_t shape[LDM_MAX_DIMS];
    ldm_tensor *t = NULL;
    shape[0] = n;
    for (int i = 0; i < ndim_like; i++) shape[i + 1] = like->shape[i];
    ldm_tensor_create(dtype, ndim_like + 1, shape, &t);
    return t;
}

/* Batch concatenation of two tensors of equal trailing shape. */
static ldm_tensor *cat_batch(const ldm_tensor *a, const ldm_tensor *b)
{
    int64_t shape[LDM_MAX_DIMS];
    ldm_tensor *t = NULL;
    memcpy(shape, a->shape, sizeof shape);
    shape[0] = a->shape[0] + b->shape[0];
    if (ldm_tensor_create(a->dtype, a->ndim, shape, &t) != LDM_OK) return NULL;
    size_t esz = a->dtype == LDM_I64 ? 8 : 4, na = (size_t)lt_numel(a) * esz;
    memcpy(t->data, a->data, na);
    memcpy((char *)t->data + na, b->data, (size_t)lt_numel(b) * esz);
    return t;
}

/* The raw (unguided) network output of the first evaluation, on the batched CFG inputs. */
static ldm_status raw_first_output(ldm_model *m, const fx_sample_spec *spec, const ldm_tensor *x, const ldm_tensor *t,
                                   ldm_tensor **out)
{
    if (!spec->uncond || spec->guidance_scale == 1.0f) return ldm_model_apply(m, x, t, spec->cond, out);
    ldm_tensor *xx = cat_batch(x, x), *tt = cat_batch(t, t), *cc = cat_batch(spec->uncond, spec->cond);
    ldm_status st = (xx && tt && cc) ? ldm_model_apply(m, xx, tt, cc, out) : LDM_ERR_OUT_OF_MEMORY;
    ldm_tensor_free(xx);
    ldm_tensor_free(tt);
    ldm_tensor_free(cc);
    return st;
}

static ldm_tensor *from_i64(const int64_t *v, int n)
{
    int64_t shape[1] = {n};
    ldm_tensor *t = NULL;
    if (ldm_tensor_create(LDM_I64, 1, shape, &t) == LDM_OK) memcpy(t->data, v, (size_t)n * 8);
    return t;
}

static ldm_tensor *from_f32(const float *v, int n)
{
    int64_t shape[1] = {n};
    ldm_tensor *t = NULL;
    if (ldm_tensor_create(LDM_F32, 1, shape, &t) == LDM_OK) memcpy(t->data, v, (size_t)n * 4);
    return t;
}

static void record_schedule(const ldm_sampler *s, fx_sample_result *res)
{
    const ls_ddim *d = ls_sampler_ddim(s);
    if (!d) return;
    res->ddim_timesteps = from_i64(d->timesteps, d->n);
    res->ddim_alphas = from_f32(d->alphas, d->n);
    res->ddim_alphas_prev = from_f32(d->alphas_prev, d->n);
    res->ddim_sigmas = from_f32(d->sigmas, d->n);
}

/* Copies the sampler's state after step k into row k of the step tensors. */
static void record_step(const ldm_sampler *s, int k, int64_t B, fx_sample_result *res)
{
    const ldm_tensor *x = ldm_sampler_current(s), *x0 = ldm_sampler_pred_x0(s);
    size_t n = (size_t)lt_numel(x);
    memcpy(lt_f32(res->step_x) + (size_t)k * n, x->data, n * 4);
    if (x0) memcpy(lt_f32(res->step_pred_x0) + (size_t)k * n, x0->data, n * 4);
    for (int64_t b = 0; b < B; b++) lt_i64(res->step_timesteps)[k * B + b] = (int64_t)ls_sampler_step_timestep(s, k);
}

static ldm_status run_loop(ldm_model *m, const fx_sample_spec *spec, ldm_sampler *s, fx_sample_result *res)
{
    const ldm_tensor *xin;
    double t;
    int r;
    int64_t B = spec->x_T->shape[0];
    while ((r = ldm_sampler_next(s, &xin, &t)) == 1) {
        float tv = (float)t;
        int64_t one = 1;
        ldm_tensor *tt = NULL, *out = NULL;
        LDM_TRY(ldm_tensor_create(LDM_F32, 1, &one, &tt));
        lt_f32(tt)[0] = tv;
        ldm_status st = LDM_OK;
        if (!res->model_output_step0) {
            ldm_tensor *tb = NULL;
            int64_t bb = B;
            st = ldm_tensor_create(LDM_F32, 1, &bb, &tb);
            for (int64_t b = 0; st == LDM_OK && b < B; b++) lt_f32(tb)[b] = tv;
            if (st == LDM_OK) st = raw_first_output(m, spec, xin, tb, &res->model_output_step0);
            ldm_tensor_free(tb);
        }
        if (st == LDM_OK && spec->guidance_embedding)
            st = ldm_model_apply_embedded_guidance(m, xin, tt, spec->cond, spec->guidance_scale, &out);
        else if (st == LDM_OK)
            st = ldm_model_apply_guided(m, xin, tt, spec->cond, spec->uncond, spec->guidance_scale, &out);
        int before = ldm_sampler_steps_done(s);
        if (st == LDM_OK) st = ldm_sampler_give(s, out);
        if (st == LDM_OK && ldm_sampler_steps_done(s) > before) record_step(s, before, B, res);
        ldm_tensor_free(tt);
        ldm_tensor_free(out);
        LDM_TRY(st);
    }
    return r == 0 ? LDM_OK : LDM_ERR_INVALID_ARGUMENT;
}

ldm_status fx_sample(ldm_model *m, const fx_sample_spec *spec, fx_sample_result *res)
{
    ldm_sampler_params p;
    ldm_sampler *s = NULL;
    if (!spec->x_T) return ldm_fail(LDM_ERR_NOT_FOUND, "sampler call without x_T");
    ldm_sampler_params_init(&p);
    p.kind = spec->kind;
    p.steps = spec->steps;
    p.eta = spec->eta;
    p.spacing = spec->spacing;
    LDM_TRY(ldm_model_sampler(m, &p, &s));
    ldm_status st = spec->noise ? ldm_sampler_set_noise(s, spec->noise) : LDM_OK;
    if (st == LDM_OK) st = ldm_sampler_begin(s, spec->x_T);
    if (st == LDM_OK) {
        int n = ldm_sampler_total_steps(s);
        res->step_x = stacked(n, spec->x_T, LDM_F32, spec->x_T->ndim);
        res->step_pred_x0 = stacked(n, spec->x_T, LDM_F32, spec->x_T->ndim);
        int64_t shape[2] = {n, spec->x_T->shape[0]};
        ldm_tensor_create(LDM_I64, 2, shape, &res->step_timesteps);
        if (!res->step_x || !res->step_pred_x0 || !res->step_timesteps) st = LDM_ERR_OUT_OF_MEMORY;
    }
    if (st == LDM_OK) st = run_loop(m, spec, s, res);
    if (st == LDM_OK) {
        record_schedule(s, res);
        int n_sig = 0;
        const double *sig = ls_sampler_sigmas(s, &n_sig);
        if (sig && (res->sigmas = stacked(n_sig, NULL, LDM_F32, 0)))
            for (int i = 0; i < n_sig; i++) lt_f32(res->sigmas)[i] = (float)sig[i];
        res->samples = lt_clone(ldm_sampler_current(s));
        st = res->samples ? ldm_model_decode_latent(m, res->samples, &res->image) : LDM_ERR_OUT_OF_MEMORY;
    }
    ldm_sampler_free(s);
    return st;
}

void fx_sample_result_free(fx_sample_result *res)
{
    ldm_tensor *all[] = {res->ddim_timesteps, res->ddim_alphas, res->ddim_alphas_prev, res->ddim_sigmas,
                         res->step_timesteps, res->step_x, res->step_pred_x0, res->samples, res->image,
                         res->model_output_step0, res->sigmas};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ldm_tensor_free(all[i]);
    memset(res, 0, sizeof *res);
}
