/* norm.c - GroupNorm (optionally fused with SiLU) and LayerNorm.
 *
 * PyTorch semantics: biased variance, eps added to the variance, then a per-channel affine. The
 * statistics of each group / row are accumulated in double (four interleaved partial sums, so the
 * loop is not bound by add latency, combined in a fixed order) and the normalisation itself is
 * float: y = (x - mean) * (gamma * rstd) + beta. PyTorch's CPU kernel folds the mean into the
 * shift (x * scale + (beta - mean * scale)), which loses digits when |mean| >> std; subtracting
 * first is as cheap and closer to the exact result, and both agree to rounding. Work is split over the
 * pool by whole groups (GroupNorm) or blocks of rows (LayerNorm): each statistic is computed by
 * one task in one order, so results do not depend on the thread count. Small inputs stay on the
 * calling thread. */
#include "kernels.h"

#include <math.h>

/* Below this many elements a pool round trip costs more than the work. */
#define NORM_PARALLEL_MIN 32768
#define LN_ROWS_PER_TASK 16

/* Sum and sum of squares of n floats in double. */
static void moments(const float *x, size_t n, double *sum_out, double *sq_out)
{
    double s[4] = {0, 0, 0, 0}, q[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) {
            double v = x[i + k];
            s[k] += v;
            q[k] += v * v;
        }
    for (; i < n; i++) {
        double v = x[i];
        s[0] += v;
        q[0] += v * v;
    }
    *sum_out = (s[0] + s[1]) + (s[2] + s[3]);
    *sq_out = (q[0] + q[1]) + (q[2] + q[3]);
}

/* mean and 1/sqrt(biased var + eps) of n values. */
static void mean_rstd(const float *x, size_t n, float eps, double *mean, double *rstd)
{
    double sum, sq;
    moments(x, n, &sum, &sq);
    double m = sum / (double)n;
    double var = sq / (double)n - m * m;
    if (var < 0) var = 0; /* rounding when the values are (nearly) constant */
    *mean = m;
    *rstd = 1.0 / sqrt(var + (double)eps);
}

typedef struct gn_job {
    const float *x;
    float *y;
    int C, HW, groups;
    float eps;
    const float *gamma, *beta;
    int silu;
} gn_job;

static void gn_unit(void *arg, int unit)
{
    const gn_job *j = arg;
    int cpg = j->C / j->groups, b = unit / j->groups, g = unit % j->groups;
    size_t off = ((size_t)b * j->C + (size_t)g * cpg) * j->HW;
    const float *x = j->x + off;
    float *y = j->y + off;
    double mean, rstd;
    mean_rstd(x, (size_t)cpg * j->HW, j->eps, &mean, &rstd);
    for (int cc = 0; cc < cpg; cc++) {
        int ch = g * cpg + cc;
        float m = (float)mean, scale = (float)(rstd * (j->gamma ? j->gamma[ch] : 1.0f));
        float shift = j->beta ? j->beta[ch] : 0.0f;
        const float *xc = x + (size_t)cc * j->HW;
        float *yc = y + (size_t)cc * j->HW;
        for (int i = 0; i < j->HW; i++) yc[i] = (xc[i] - m) * scale + shift;
        if (j->silu) lk_silu(yc, (size_t)j->HW);
    }
}

static void group_norm(const lctx *c, const float *x, int B, int C, int HW, int groups, float eps, const float *gamma,
                       const float *beta, float *y, int silu)
{
    if (B <= 0 || C <= 0 || HW <= 0 || groups <= 0) return;
    gn_job j = {x, y, C, HW, groups, eps, gamma, beta, silu};
    size_t total = (size_t)B * C * HW;
    lpool_run(total >= NORM_PARALLEL_MIN && c ? c->pool : NULL, B * groups, gn_unit, &j);
}

void lk_group_norm(const lctx *c, const float *x, int B, int C, int HW, int groups, float eps, const float *gamma,
                   const float *beta, float *y)
{
    lk_stat_mark m = lk_stat_begin();
    group_norm(c, x, B, C, HW, groups, eps, gamma, beta, y, 0);
    lk_stat_end(m, LK_OP_GROUPNORM, 0);
}

void lk_group_norm_silu(const lctx *c, const float *x, int B, int C, int HW, int groups, float eps,
                        const float *gamma, const float *beta, float *y)
{
    lk_stat_mark m = lk_stat_begin();
    group_norm(c, x, B, C, HW, groups, eps, gamma, beta, y, 1);
    lk_stat_end(m, LK_OP_GROUPNORM, 0);
}

typedef struct ln_job {
    const float *x;
    float *y;
    int rows, dim;
    float eps;
    const float *gamma, *beta;
} ln_job;

static void ln_task(void *arg, int task)
{
    const ln_job *j = arg;
    int r1 = LDM_MIN(j->rows, (task + 1) * LN_ROWS_PER_TASK);
    for (int r = task * LN_ROWS_PER_TASK; r < r1; r++) {
        const float *x = j->x + (size_t)r * j->dim;
        float *y = j->y + (size_t)r * j->dim;
        double mean, rstd;
        mean_rstd(x, (size_t)j->dim, j->eps, &mean, &rstd);
        float m = (float)mean, rs = (float)rstd;
        for (int i = 0; i < j->dim; i++) {
            float v = (x[i] - m) * rs;
            if (j->gamma) v *= j->gamma[i];
            if (j->beta) v += j->beta[i];
            y[i] = v;
        }
    }
}

void lk_layer_norm(const lctx *c, const float *x, int rows, int dim, float eps, const float *gamma, const float *beta,
                   float *y)
{
    if (rows <= 0 || dim <= 0) return;
    lk_stat_mark m = lk_stat_begin();
    ln_job j = {x, y, rows, dim, eps, gamma, beta};
    int tasks = (rows + LN_ROWS_PER_TASK - 1) / LN_ROWS_PER_TASK;
    size_t total = (size_t)rows * dim;
    lpool_run(total >= NORM_PARALLEL_MIN && c ? c->pool : NULL, tasks, ln_task, &j);
    lk_stat_end(m, LK_OP_LAYERNORM, 0);
}
