/* grad_norm.c - backward of GroupNorm and LayerNorm (torch semantics: biased variance).
 *
 * With xhat = (x - mean) * rstd over a set of n values (a group of channels of one image, or a
 * row) and y = xhat * gamma + beta:
 *     dbeta  = sum dy,   dgamma = sum dy * xhat   (over the batch and space, per channel)
 *     dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma.
 * The statistics are recomputed from x in double with two passes (mean, then the squared
 * deviations), a little more accurate than the forward's sum of squares and as cheap here.
 * GroupNorm: one task per (image, group) computes dx and the per-(image, channel) sums of dy and
 * dy*xhat; dgamma/dbeta then add those over the images in order. LayerNorm: statistics by blocks
 * of rows, dgamma/dbeta by blocks of columns over the rows in order, dx by blocks of rows. Every
 * sum has one owner and one order, so the thread count cannot change a result. dx may equal dy. */
#include "grad.h"
#include "grad_sum.h"

#include <math.h>

#define LN_ROWS_PER_TASK 16
#define LN_COLS_PER_TASK 64

/* mean and 1/sqrt(biased variance + eps) of n values, in double. */
static void stats(const float *x, size_t n, float eps, double *mean, double *rstd)
{
    double m = 0.0, v = 0.0;
    for (size_t i = 0; i < n; i++) m += x[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++) v += ((double)x[i] - m) * ((double)x[i] - m);
    *mean = m;
    *rstd = 1.0 / sqrt(v / (double)n + (double)eps);
}

/* ---- GroupNorm */

typedef struct gn_job {
    const float *x, *gamma, *dy;
    float *dx;
    int C, HW, groups;
    float eps;
    double *sums; /* [B, C, 2]: sum dy, sum dy * xhat; NULL when dgamma/dbeta are not wanted */
} gn_job;

static void gn_unit(void *arg, int unit)
{
    const gn_job *j = arg;
    int cpg = j->C / j->groups, b = unit / j->groups, ch0 = (unit % j->groups) * cpg;
    size_t off = ((size_t)b * j->C + ch0) * j->HW, n = (size_t)cpg * j->HW;
    const float *x = j->x + off, *dy = j->dy + off;
    double mean, rstd, s1 = 0.0, s2 = 0.0; /* sum g, sum g * xhat over the group */
    stats(x, n, j->eps, &mean, &rstd);
    for (int cc = 0; cc < cpg; cc++) {
        double sdy = 0.0, sdyx = 0.0, ga = j->gamma ? j->gamma[ch0 + cc] : 1.0;
        for (size_t i = (size_t)cc * j->HW; i < (size_t)(cc + 1) * j->HW; i++) {
            sdy += dy[i];
            sdyx += dy[i] * ((x[i] - mean) * rstd);
        }
        s1 += ga * sdy, s2 += ga * sdyx;
        if (j->sums) {
            j->sums[2 * ((size_t)b * j->C + ch0 + cc)] = sdy;
            j->sums[2 * ((size_t)b * j->C + ch0 + cc) + 1] = sdyx;
        }
    }
    if (!j->dx) return;
    double m1 = s1 / (double)n, m2 = s2 / (double)n;
    float *dx = j->dx + off;
    for (int cc = 0; cc < cpg; cc++) {
        double ga = j->gamma ? j->gamma[ch0 + cc] : 1.0;
        for (size_t i = (size_t)cc * j->HW; i < (size_t)(cc + 1) * j->HW; i++)
            dx[i] = (float)(rstd * (dy[i] * ga - m1 - (x[i] - mean) * rstd * m2));
    }
}

typedef struct gn_param_job {
    const double *sums;
    int B, C;
    float *dgamma, *dbeta;
} gn_param_job;

static void gn_param_task(void *arg, int ch)
{
    const gn_param_job *j = arg;
    double sdy = 0.0, sdyx = 0.0;
    for (int b = 0; b < j->B; b++) {
        sdy += j->sums[2 * ((size_t)b * j->C + ch)];
        sdyx += j->sums[2 * ((size_t)b * j->C + ch) + 1];
    }
    if (j->dbeta) j->dbeta[ch] = (float)sdy;
    if (j->dgamma) j->dgamma[ch] = (float)sdyx;
}

static ldm_status gn_check(int B, int C, int HW, int groups)
{
    if (B <= 0 || C <= 0 || HW <= 0 || groups <= 0 || C % groups)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "group norm backward: bad shape B=%d C=%d HW=%d groups=%d", B, C,
                        HW, groups);
    return LDM_OK;
}

ldm_status lg_group_norm_backward(const lctx *c, const float *x, int B, int C, int HW, int groups, float eps,
                                  const float *gamma, const float *dy, float *dx, float *dgamma, float *dbeta)
{
    LDM_TRY(gn_check(B, C, HW, groups));
    double *sums = NULL;
    if (dgamma || dbeta) {
        sums = ldm_malloc(sizeof(double) * 2 * (size_t)B * C);
        if (!sums) return ldm_fail_context(ldm_alloc_failure_status(), "group norm backward: ");
    }
    lpool *pool = c ? c->pool : NULL;
    gn_job j = {x, gamma, dy, dx, C, HW, groups, eps, sums};
    lpool_run(pool, B * groups, gn_unit, &j);
    if (sums) {
        gn_param_job pj = {sums, B, C, dgamma, dbeta};
        lpool_run(pool, C, gn_param_task, &pj);
        ldm_free(sums);
    }
    return LDM_OK;
}

/* ---- LayerNorm */

typedef struct ln_job {
    const float *x, *gamma, *dy;
    float *dx, *dgamma;
    int rows, dim;
    float eps;
    double *st; /* [rows, 2]: mean, rstd */
} ln_job;

static void ln_stats_task(void *arg, int task)
{
    const ln_job *j = arg;
    int r1 = LDM_MIN(j->rows, (task + 1) * LN_ROWS_PER_TASK);
    for (int r = task * LN_ROWS_PER_TASK; r < r1; r++)
        stats(j->x + (size_t)r * j->dim, (size_t)j->dim, j->eps, &j->st[2 * r], &j->st[2 * r + 1]);
}

static void ln_dgamma_task(void *arg, int task)
{
    const ln_job *j = arg;
    int i0 = task * LN_COLS_PER_TASK, n = LDM_MIN(LN_COLS_PER_TASK, j->dim - i0);
    double acc[LN_COLS_PER_TASK] = {0};
    for (int r = 0; r < j->rows; r++) {
        const float *x = j->x + (size_t)r * j->dim + i0, *dy = j->dy + (size_t)r * j->dim + i0;
        double mean = j->st[2 * r], rstd = j->st[2 * r + 1];
        for (int i = 0; i < n; i++) acc[i] += dy[i] * ((x[i] - mean) * rstd);
    }
    for (int i = 0; i < n; i++) j->dgamma[i0 + i] = (float)acc[i];
}

static void ln_dx_task(void *arg, int task)
{
    const ln_job *j = arg;
    int r1 = LDM_MIN(j->rows, (task + 1) * LN_ROWS_PER_TASK);
    for (int r = task * LN_ROWS_PER_TASK; r < r1; r++) {
        const float *x = j->x + (size_t)r * j->dim, *dy = j->dy + (size_t)r * j->dim;
        float *dx = j->dx + (size_t)r * j->dim;
        double mean = j->st[2 * r], rstd = j->st[2 * r + 1], s1 = 0.0, s2 = 0.0;
        for (int i = 0; i < j->dim; i++) {
            double g = dy[i] * (j->gamma ? (double)j->gamma[i] : 1.0);
            s1 += g;
            s2 += g * ((x[i] - mean) * rstd);
        }
        double m1 = s1 / j->dim, m2 = s2 / j->dim;
        for (int i = 0; i < j->dim; i++) {
            double g = dy[i] * (j->gamma ? (double)j->gamma[i] : 1.0);
            dx[i] = (float)(rstd * (g - m1 - (x[i] - mean) * rstd * m2));
        }
    }
}

ldm_status lg_layer_norm_backward(const lctx *c, const float *x, int rows, int dim, float eps, const float *gamma,
                                  const float *dy, float *dx, float *dgamma, float *dbeta)
{
    if (rows <= 0 || dim <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "layer norm backward: bad shape %dx%d", rows, dim);
    double *st = ldm_malloc(sizeof(double) * 2 * (size_t)rows);
    if (!st) return ldm_fail_context(ldm_alloc_failure_status(), "layer norm backward: ");
    lpool *pool = c ? c->pool : NULL;
    int row_tasks = (rows + LN_ROWS_PER_TASK - 1) / LN_ROWS_PER_TASK;
    ln_job j = {x, gamma, dy, dx, dgamma, rows, dim, eps, st};
    lpool_run(pool, row_tasks, ln_stats_task, &j);
    /* the parameter sums read dy, so they come before dx (which may overwrite it) */
    if (dgamma) lpool_run(pool, (dim + LN_COLS_PER_TASK - 1) / LN_COLS_PER_TASK, ln_dgamma_task, &j);
    if (dbeta) lg_col_sums(c, dy, rows, dim, dim, dbeta);
    if (dx) lpool_run(pool, row_tasks, ln_dx_task, &j);
    ldm_free(st);
    return LDM_OK;
}

/* ---- naive references: one set of n values at a time (stride 1), straight from the formula */

/* dx, and per-value dy*xhat into dyx (for the parameter sums), of one normalised set. Value i
 * is scaled by gamma[i / per]: per = HW for a group of channels, 0 for a row (gamma[i]). */
static void ref_set(const float *x, const float *dy, size_t n, float eps, const float *gamma, size_t per,
                    float *dx, double *dyx)
{
    double mean = 0.0, var = 0.0;
    for (size_t i = 0; i < n; i++) mean += x[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++) var += ((double)x[i] - mean) * ((double)x[i] - mean);
    var /= (double)n;
    double rstd = 1.0 / sqrt(var + (double)eps), sg = 0.0, sgx = 0.0;
    for (size_t i = 0; i < n; i++) {
        double xh = ((double)x[i] - mean) * rstd, g = (double)dy[i] * (gamma ? gamma[per ? i / per : i] : 1.0);
        sg += g;
        sgx += g * xh;
        dyx[i] = (double)dy[i] * xh;
    }
    for (size_t i = 0; dx && i < n; i++) {
        double xh = ((double)x[i] - mean) * rstd, g = (double)dy[i] * (gamma ? gamma[per ? i / per : i] : 1.0);
        dx[i] = (float)(rstd * (g - sg / (double)n - xh * sgx / (double)n));
    }
}

void lg_ref_group_norm_backward(const float *x, int B, int C, int HW, int groups, float eps, const float *gamma,
                                const float *dy, float *dx, float *dgamma, float *dbeta)
{
    int cpg = C / groups;
    size_t n = (size_t)cpg * HW;
    double *dyx = ldm_malloc(sizeof(double) * (size_t)B * C * HW);
    if (!dyx) return; /* test-only code: the tests notice the untouched output */
    for (int b = 0; b < B; b++)
        for (int g = 0; g < groups; g++) {
            size_t off = ((size_t)b * C + (size_t)g * cpg) * HW;
            ref_set(x + off, dy + off, n, eps, gamma ? gamma + g * cpg : NULL, (size_t)HW, dx ? dx + off : NULL,
                    dyx + off);
        }
    for (int ch = 0; ch < C; ch++) {
        double sb = 0.0, sg = 0.0;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < HW; i++) {
                size_t at = ((size_t)b * C + ch) * HW + i;
                sb += dy[at];
                sg += dyx[at];
            }
        if (dbeta) dbeta[ch] = (float)sb;
        if (dgamma) dgamma[ch] = (float)sg;
    }
    ldm_free(dyx);
}

void lg_ref_layer_norm_backward(const float *x, int rows, int dim, float eps, const float *gamma, const float *dy,
                                float *dx, float *dgamma, float *dbeta)
{
    double *dyx = ldm_malloc(sizeof(double) * (size_t)rows * dim);
    if (!dyx) return; /* test-only code */
    for (int r = 0; r < rows; r++)
        ref_set(x + (size_t)r * dim, dy + (size_t)r * dim, (size_t)dim, eps, gamma, 0, dx ? dx + (size_t)r * dim : NULL,
                dyx + (size_t)r * dim);
    for (int i = 0; i < dim; i++) {
        double sb = 0.0, sg = 0.0;
        for (int r = 0; r < rows; r++) {
            sb += dy[(size_t)r * dim + i];
            sg += dyx[(size_t)r * dim + i];
        }
        if (dbeta) dbeta[i] = (float)sb;
        if (dgamma) dgamma[i] = (float)sg;
    }
    ldm_free(dyx);
}
