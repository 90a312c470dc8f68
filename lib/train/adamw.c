/* adamw.c - torch.optim.AdamW (amsgrad=False), the optimiser ldm/models/diffusion/ddpm.py
 * configure_optimizers builds. The element update follows torch's _single_tensor_adam(w) line by
 * line so float32 results match torch's scalar path: the step-dependent factors are Python floats
 * (double here), rounded to float32 where torch hands them to a float tensor op. */
#include "optim.h"

#include <math.h>
#include <string.h>

/* Elements per pool task: large enough that scheduling costs nothing next to the arithmetic. */
#define ADAMW_CHUNK ((size_t)1 << 16)

typedef struct {
    ltr_param p;
    float *exp_avg, *exp_avg_sq;
    int64_t step; /* torch keeps a float32 tensor; exact either way below 2^24 steps */
} adamw_slot;

struct ltr_adamw {
    ltr_adamw_config cfg;
    size_t n;
    adamw_slot *slots;
};

void ltr_adamw_defaults(ltr_adamw_config *cfg)
{
    cfg->lr = 1e-3;
    cfg->beta1 = 0.9;
    cfg->beta2 = 0.999;
    cfg->eps = 1e-8;
    cfg->weight_decay = 1e-2;
}

/* torch.optim.AdamW.__init__ raises ValueError for these; NaN fails every test as well. */
static ldm_status check_config(const ltr_adamw_config *c)
{
    if (!(c->lr >= 0.0)) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "AdamW: invalid learning rate %g", c->lr);
    if (!(c->eps >= 0.0)) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "AdamW: invalid epsilon %g", c->eps);
    if (!(c->beta1 >= 0.0 && c->beta1 < 1.0))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "AdamW: invalid beta1 %g", c->beta1);
    if (!(c->beta2 >= 0.0 && c->beta2 < 1.0))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "AdamW: invalid beta2 %g", c->beta2);
    if (!(c->weight_decay >= 0.0))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "AdamW: invalid weight_decay %g", c->weight_decay);
    return LDM_OK;
}

void ltr_adamw_free(ltr_adamw *opt)
{
    if (!opt) return;
    for (size_t i = 0; i < opt->n; i++) {
        ldm_free(opt->slots[i].exp_avg);
        ldm_free(opt->slots[i].exp_avg_sq);
    }
    ldm_free(opt->slots);
    ldm_free(opt);
}

static ldm_status alloc_slot(adamw_slot *s, const ltr_param *p)
{
    s->p = *p;
    size_t n = p->n ? p->n : 1;
    s->exp_avg = ldm_calloc(n, sizeof(float));
    s->exp_avg_sq = ldm_calloc(n, sizeof(float));
    if (!s->exp_avg || !s->exp_avg_sq) return ldm_fail_context(ldm_alloc_failure_status(), "AdamW state: ");
    return LDM_OK;
}

ldm_status ltr_adamw_create(const ltr_param *params, size_t n_params, const ltr_adamw_config *cfg,
                            ltr_adamw **out)
{
    *out = NULL;
    LDM_TRY(check_config(cfg));
    for (size_t i = 0; i < n_params; i++)
        if (params[i].n && !params[i].data)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "AdamW: parameter %zu has no data", i);
    ltr_adamw *opt = ldm_calloc(1, sizeof *opt);
    if (!opt) return ldm_fail_context(ldm_alloc_failure_status(), "AdamW: ");
    opt->cfg = *cfg;
    opt->slots = ldm_calloc(n_params ? n_params : 1, sizeof *opt->slots);
    if (!opt->slots) {
        ldm_free(opt);
        return ldm_fail_context(ldm_alloc_failure_status(), "AdamW: ");
    }
    ldm_status st = LDM_OK;
    for (size_t i = 0; i < n_params && st == LDM_OK; i++) {
        opt->n = i + 1; /* so that free releases a half-built slot too */
        st = alloc_slot(&opt->slots[i], &params[i]);
    }
    if (st != LDM_OK) {
        ltr_adamw_free(opt);
        return st;
    }
    *out = opt;
    return LDM_OK;
}

/* The float32 scalars of one tensor's update at its current step. */
typedef struct {
    float decay;       /* 1 - lr*wd, applied only when wd != 0 (torch skips the mul_ then) */
    int has_decay;
    float w1;          /* lerp weight 1 - beta1 */
    float beta2, omb2; /* beta2, 1 - beta2 */
    float bc2_sqrt;    /* sqrt(1 - beta2^step) */
    float eps;
    float neg_step_size; /* -lr / (1 - beta1^step) */
} adamw_coef;

static adamw_coef make_coef(const ltr_adamw_config *cfg, double lr, int64_t step)
{
    adamw_coef k;
    k.has_decay = cfg->weight_decay != 0.0;
    k.decay = (float)(1.0 - lr * cfg->weight_decay);
    k.w1 = (float)(1.0 - cfg->beta1);
    k.beta2 = (float)cfg->beta2;
    k.omb2 = (float)(1.0 - cfg->beta2);
    double bc1 = 1.0 - pow(cfg->beta1, (double)step);
    double bc2 = 1.0 - pow(cfg->beta2, (double)step);
    k.bc2_sqrt = (float)sqrt(bc2);
    k.eps = (float)cfg->eps;
    k.neg_step_size = (float)(-(lr / bc1));
    return k;
}

/* torch's lerp (ATen Lerp.h): the form depends on whether the weight is below one half. */
static inline float torch_lerp(float self, float end, float w)
{
    return fabsf(w) < 0.5f ? self + w * (end - self) : end - (end - self) * (1.0f - w);
}

/* Elements [lo, hi) of one tensor. Each line is one torch call of _single_tensor_adam. */
static void update_range(const adamw_coef *k, adamw_slot *s, size_t lo, size_t hi)
{
    float *p = s->p.data, *m = s->exp_avg, *v = s->exp_avg_sq;
    const float *g = s->p.grad;
    for (size_t i = lo; i < hi; i++) {
        float pi = p[i];
        if (k->has_decay) pi = pi * k->decay;            /* param.mul_(1 - lr * weight_decay) */
        m[i] = torch_lerp(m[i], g[i], k->w1);            /* exp_avg.lerp_(grad, 1 - beta1) */
        v[i] = v[i] * k->beta2 + k->omb2 * g[i] * g[i];  /* exp_avg_sq.mul_(b2).addcmul_(g, g, 1-b2) */
        float denom = sqrtf(v[i]) / k->bc2_sqrt + k->eps; /* (sqrt() / bc2_sqrt).add_(eps) */
        p[i] = pi + k->neg_step_size * m[i] / denom;     /* param.addcdiv_(exp_avg, denom, -step_size) */
    }
}

typedef struct {
    const adamw_coef *k;
    adamw_slot *s;
} adamw_job;

static void adamw_task(void *arg, int task)
{
    const adamw_job *j = arg;
    size_t lo = (size_t)task * ADAMW_CHUNK;
    size_t hi = lo + ADAMW_CHUNK < j->s->p.n ? lo + ADAMW_CHUNK : j->s->p.n;
    update_range(j->k, j->s, lo, hi);
}

ldm_status ltr_adamw_step(ltr_adamw *opt, const lctx *c, double lr)
{
    if (!(lr >= 0.0)) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "AdamW: invalid learning rate %g", lr);
    for (size_t i = 0; i < opt->n; i++) {
        adamw_slot *s = &opt->slots[i];
        if (!s->p.grad) continue; /* torch: `if p.grad is not None` */
        s->step++;
        adamw_coef k = make_coef(&opt->cfg, lr, s->step);
        size_t chunks = (s->p.n + ADAMW_CHUNK - 1) / ADAMW_CHUNK;
        if (chunks <= 1 || !c || !c->pool || chunks > (size_t)INT32_MAX) {
            update_range(&k, s, 0, s->p.n);
            continue;
        }
        adamw_job job = {&k, s};
        lpool_run(c->pool, (int)chunks, adamw_task, &job);
    }
    return LDM_OK;
}

double ltr_adamw_lr(const ltr_adamw *opt) { return opt->cfg.lr; }

void ltr_adamw_state(const ltr_adamw *opt, size_t i, float **exp_avg, float **exp_avg_sq, int64_t *step)
{
    const adamw_slot *s = &opt->slots[i];
    if (exp_avg) *exp_avg = s->exp_avg;
    if (exp_avg_sq) *exp_avg_sq = s->exp_avg_sq;
    if (step) *step = s->step;
}

ldm_status ltr_adamw_set_step(ltr_adamw *opt, size_t i, int64_t step)
{
    if (!opt || i >= opt->n || step < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "AdamW state: bad tensor %zu or step %lld", i, (long long)step);
    opt->slots[i].step = step;
    return LDM_OK;
}
