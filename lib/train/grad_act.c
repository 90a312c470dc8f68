/* grad_act.c - backward of SiLU, exact GELU and GEGLU.
 *
 *     silu(x) = x s(x), s = sigmoid:      silu'(x) = s(x) (1 + x (1 - s(x)))
 *     gelu(x) = x Phi(x), Phi = normal CDF = (1 + erf(x / sqrt 2)) / 2:
 *                                         gelu'(x) = Phi(x) + x phi(x), phi = exp(-x^2/2) / sqrt(2 pi)
 *     geglu([a, g]) = a gelu(g):          da = dy gelu(g), dg = dy a gelu'(g)
 * The fast paths are float (libm's expf/erff) split over the pool in fixed chunks; each output
 * element depends only on its own inputs, so the split cannot change a result. The references
 * are the same formulas in double. */
#include "grad.h"

#include <math.h>

#define ACT_CHUNK 16384 /* elements per pool task */
#define INV_SQRT_2PI 0.3989422804014327

static float silu_grad(float x)
{
    float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
}

static inline float gelu_fwd(float x) { return x * 0.5f * (1.0f + erff(x * (float)M_SQRT1_2)); }

static float gelu_grad(float x)
{
    float cdf = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
    return cdf + x * (float)INV_SQRT_2PI * expf(-0.5f * x * x);
}

typedef struct act_job {
    const float *x, *dy;
    float *dx;
    size_t n;
    int rows, dim, rows_per_task;
    float (*grad)(float);
} act_job;

static void elementwise_task(void *arg, int task)
{
    const act_job *j = arg;
    size_t i1 = LDM_MIN(j->n, (size_t)(task + 1) * ACT_CHUNK);
    for (size_t i = (size_t)task * ACT_CHUNK; i < i1; i++) j->dx[i] = j->dy[i] * j->grad(j->x[i]);
}

static void run_elementwise(const lctx *c, const float *x, const float *dy, size_t n, float *dx, float (*grad)(float))
{
    if (!n) return;
    act_job j = {.x = x, .dy = dy, .dx = dx, .n = n, .grad = grad};
    lpool_run(c ? c->pool : NULL, (int)((n + ACT_CHUNK - 1) / ACT_CHUNK), elementwise_task, &j);
}

void lg_silu_backward(const lctx *c, const float *x, const float *dy, size_t n, float *dx)
{
    run_elementwise(c, x, dy, n, dx, silu_grad);
}

void lg_gelu_backward(const lctx *c, const float *x, const float *dy, size_t n, float *dx)
{
    run_elementwise(c, x, dy, n, dx, gelu_grad);
}

static void geglu_task(void *arg, int task)
{
    const act_job *j = arg;
    int r1 = LDM_MIN(j->rows, (task + 1) * j->rows_per_task);
    for (int r = task * j->rows_per_task; r < r1; r++) {
        const float *a = j->x + (size_t)r * 2 * j->dim, *g = a + j->dim, *dy = j->dy + (size_t)r * j->dim;
        float *da = j->dx + (size_t)r * 2 * j->dim, *dg = da + j->dim;
        for (int i = 0; i < j->dim; i++) {
            da[i] = dy[i] * gelu_fwd(g[i]);
            dg[i] = dy[i] * a[i] * gelu_grad(g[i]);
        }
    }
}

void lg_geglu_backward(const lctx *c, const float *x, int rows, int dim, const float *dy, float *dx)
{
    if (rows <= 0 || dim <= 0) return;
    int per = LDM_MAX(1, ACT_CHUNK / dim);
    act_job j = {.x = x, .dy = dy, .dx = dx, .rows = rows, .dim = dim, .rows_per_task = per};
    lpool_run(c ? c->pool : NULL, (rows + per - 1) / per, geglu_task, &j);
}

/* ---- references, in double */

static double ref_silu_grad(double x)
{
    double s = 1.0 / (1.0 + exp(-x));
    return s * (1.0 + x * (1.0 - s));
}

static double ref_gelu(double x) { return x * 0.5 * (1.0 + erf(x * M_SQRT1_2)); }
static double ref_gelu_grad(double x) { return 0.5 * (1.0 + erf(x * M_SQRT1_2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x); }

void lg_ref_silu_backward(const float *x, const float *dy, size_t n, float *dx)
{
    for (size_t i = 0; i < n; i++) dx[i] = (float)(dy[i] * ref_silu_grad(x[i]));
}

void lg_ref_gelu_backward(const float *x, const float *dy, size_t n, float *dx)
{
    for (size_t i = 0; i < n; i++) dx[i] = (float)(dy[i] * ref_gelu_grad(x[i]));
}

void lg_ref_geglu_backward(const float *x, int rows, int dim, const float *dy, float *dx)
{
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < dim; i++) {
            double a = x[(size_t)r * 2 * dim + i], g = x[(size_t)r * 2 * dim + dim + i], d = dy[(size_t)r * dim + i];
            dx[(size_t)r * 2 * dim + i] = (float)(d * ref_gelu(g));
            dx[(size_t)r * 2 * dim + dim + i] = (float)(d * a * ref_gelu_grad(g));
        }
}
