/* norm.c - GroupNorm (optionally fused with SiLU) and LayerNorm.
 *
 * PyTorch semantics: biased variance, eps added to the variance, then a per-channel affine. The
 * statistics of each group / row are accumulated in double (eight lanes of partial sums in double
 * vectors, so the loop is neither scalar nor bound by add latency, combined in a fixed order) and the normalisation itself is
 * float: y = (x - mean) * (gamma * rstd) + beta. PyTorch's CPU kernel folds the mean into the
 * shift (x * scale + (beta - mean * scale)), which loses digits when |mean| >> std; subtracting
 * first is as cheap and closer to the exact result, and both agree to rounding. Work is split over the
 * pool by whole groups (GroupNorm) or blocks of rows (LayerNorm): each statistic is computed by
 * one task in one order, so results do not depend on the thread count. Small inputs stay on the
 * calling thread.
 *
 * The avx512 family (simd16.h) runs 16-lane versions of the statistics (16 lanes of double
 * partial sums), of the GroupNorm affine pass and of the LayerNorm row, with the multiply-adds
 * contracted into FMA. */
#include "kernels.h"
#include "simd.h"
#include "simd16.h"

#include <math.h>

/* Bytes a normalisation moves per element: read for the statistics, read again, written. */
#define NORM_BYTES_PER_ELEMENT 12.0
#define LN_ROWS_PER_TASK 16
#define NORM_CHUNK 4096 /* floats normalised (and SiLU'd) at a time */

/* Sum and sum of squares of n floats in double: 8 lanes of double partial sums (two 4-lane
 * double vectors each), combined in a fixed order, then the tail. */
typedef double v4d __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

LK_BODY void moments_body(const float *x, size_t n, double *sum_out, double *sq_out)
{
    v4d s0 = {0, 0, 0, 0}, s1 = s0, q0 = s0, q1 = s0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v4f a, b;
        memcpy(&a, x + i, sizeof a);
        memcpy(&b, x + i + 4, sizeof b);
        v4d da = __builtin_convertvector(a, v4d), db = __builtin_convertvector(b, v4d);
        s0 += da, s1 += db, q0 += da * da, q1 += db * db;
    }
    v4d s = s0 + s1, q = q0 + q1;
    double sum = (s[0] + s[1]) + (s[2] + s[3]), sq = (q[0] + q[1]) + (q[2] + q[3]);
    for (; i < n; i++) {
        double v = x[i];
        sum += v;
        sq += v * v;
    }
    *sum_out = sum;
    *sq_out = sq;
}

/* y = (x - m) * scale + shift, 8 lanes at a time (y may equal x). */
LK_BODY void affine_body(const float *x, size_t n, float m, float scale, float shift, float *y)
{
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        v8f v;
        LOAD(v, x + i);
        STORE(y + i, (v - SPLAT(m)) * SPLAT(scale) + SPLAT(shift));
    }
    for (; i < n; i++) y[i] = (x[i] - m) * scale + shift;
}

static void moments_base(const float *x, size_t n, double *s, double *q) { moments_body(x, n, s, q); }
static void affine_base(const float *x, size_t n, float m, float sc, float sh, float *y) { affine_body(x, n, m, sc, sh, y); }
#ifdef LK_TWIN /* AVX2 (x86-64) or NEON (aarch64) */
static LK_TWIN void moments_avx2(const float *x, size_t n, double *s, double *q) { moments_body(x, n, s, q); }
static LK_TWIN void affine_avx2(const float *x, size_t n, float m, float sc, float sh, float *y)
{
    affine_body(x, n, m, sc, sh, y);
}
#endif

#ifdef LK_AVX512_KERNELS
/* moments_body on 16 lanes: 16 double partial sums (two 8-lane double vectors each), combined
 * in a fixed order, then the tail. */
LK_BODY void moments16_body(const float *x, size_t n, double *sum_out, double *sq_out)
{
    v8d s0 = {0, 0, 0, 0, 0, 0, 0, 0}, s1 = s0, q0 = s0, q1 = s0;
    size_t i = 0;
    for (; i + LANES16 <= n; i += LANES16) {
        v16f v;
        LOAD16(v, x + i);
        v8d da = __builtin_convertvector(LOW8(v), v8d), db = __builtin_convertvector(HIGH8(v), v8d);
        s0 += da, s1 += db, q0 += da * da, q1 += db * db;
    }
    v8d s = s0 + s1, q = q0 + q1;
    double sum = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    double sq = ((q[0] + q[4]) + (q[1] + q[5])) + ((q[2] + q[6]) + (q[3] + q[7]));
    for (; i < n; i++) {
        double v = x[i];
        sum += v;
        sq += v * v;
    }
    *sum_out = sum;
    *sq_out = sq;
}

/* y = (x - m) * scale + shift, 16 lanes at a time, the tail padded (y may equal x). */
LK_BODY void affine16_body(const float *x, size_t n, float m, float scale, float shift, float *y)
{
    size_t i = 0;
    for (; i + LANES16 <= n; i += LANES16) {
        v16f v;
        LOAD16(v, x + i);
        STORE16(y + i, (v - SPLAT16(m)) * SPLAT16(scale) + SPLAT16(shift));
    }
    if (i < n) {
        float tmp[LANES16] = {0};
        memcpy(tmp, x + i, sizeof(float) * (n - i));
        v16f v;
        LOAD16(v, tmp);
        v = (v - SPLAT16(m)) * SPLAT16(scale) + SPLAT16(shift);
        memcpy(y + i, &v, sizeof(float) * (n - i));
    }
}

/* One LayerNorm row: y = (x - m) * rs * gamma + beta (gamma 1 and beta 0 when NULL), the tail
 * padded. */
LK_BODY void ln_row16_body(const float *x, int dim, float m, float rs, const float *gamma, const float *beta, float *y)
{
    int i = 0;
    for (; i + LANES16 <= dim; i += LANES16) {
        v16f v, g = SPLAT16(1.0f), b = SPLAT16(0.0f);
        LOAD16(v, x + i);
        if (gamma) LOAD16(g, gamma + i);
        if (beta) LOAD16(b, beta + i);
        STORE16(y + i, (v - SPLAT16(m)) * SPLAT16(rs) * g + b);
    }
    if (i < dim) {
        size_t n = (size_t)(dim - i);
        float tx[LANES16] = {0}, tg[LANES16], tb[LANES16] = {0};
        for (int k = 0; k < LANES16; k++) tg[k] = 1.0f;
        memcpy(tx, x + i, sizeof(float) * n);
        if (gamma) memcpy(tg, gamma + i, sizeof(float) * n);
        if (beta) memcpy(tb, beta + i, sizeof(float) * n);
        v16f v, g, b;
        LOAD16(v, tx);
        LOAD16(g, tg);
        LOAD16(b, tb);
        v = (v - SPLAT16(m)) * SPLAT16(rs) * g + b;
        memcpy(y + i, &v, sizeof(float) * n);
    }
}

LK_INSTANCES16_VOID(moments16, (const float *x, size_t n, double *s, double *q), moments16_body(x, n, s, q))
LK_INSTANCES16_VOID(affine16, (const float *x, size_t n, float m, float sc, float sh, float *y),
                    affine16_body(x, n, m, sc, sh, y))
LK_INSTANCES16_VOID(ln_row16, (const float *x, int dim, float m, float rs, const float *g, const float *b, float *y),
                    ln_row16_body(x, dim, m, rs, g, b, y))
#endif

static void moments(const float *x, size_t n, double *sum_out, double *sq_out)
{
    LK_PICK16(moments16_avx512(x, n, sum_out, sq_out), moments16_avx512_test(x, n, sum_out, sq_out),
              LK_PICK_TWIN(moments_avx2(x, n, sum_out, sq_out), moments_base(x, n, sum_out, sq_out)));
}

static void affine(const float *x, size_t n, float m, float scale, float shift, float *y)
{
    LK_PICK16(affine16_avx512(x, n, m, scale, shift, y), affine16_avx512_test(x, n, m, scale, shift, y),
              LK_PICK_TWIN(affine_avx2(x, n, m, scale, shift, y), affine_base(x, n, m, scale, shift, y)));
}

static void ln_row(const float *x, int dim, float m, float rs, const float *gamma, const float *beta, float *y)
{
    for (int i = 0; i < dim; i++) {
        float v = (x[i] - m) * rs;
        if (gamma) v *= gamma[i];
        if (beta) v += beta[i];
        y[i] = v;
    }
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
        /* in cache-sized chunks so that the SiLU pass reads what the affine pass just wrote */
        for (size_t i0 = 0; i0 < (size_t)j->HW; i0 += NORM_CHUNK) {
            size_t n = LDM_MIN((size_t)NORM_CHUNK, (size_t)j->HW - i0);
            affine(xc + i0, n, m, scale, shift, yc + i0);
            if (j->silu) lk_vsilu(yc + i0, n, 1.0f);
        }
    }
}

static void group_norm(const lctx *c, const float *x, int B, int C, int HW, int groups, float eps, const float *gamma,
                       const float *beta, float *y, int silu)
{
    if (B <= 0 || C <= 0 || HW <= 0 || groups <= 0) return;
    gn_job j = {x, y, C, HW, groups, eps, gamma, beta, silu};
    size_t total = (size_t)B * C * HW;
    lpool_run(lk_pool_for_bytes(c, NORM_BYTES_PER_ELEMENT * total), B * groups, gn_unit, &j);
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
        LK_PICK16(ln_row16_avx512(x, j->dim, m, rs, j->gamma, j->beta, y),
                  ln_row16_avx512_test(x, j->dim, m, rs, j->gamma, j->beta, y),
                  ln_row(x, j->dim, m, rs, j->gamma, j->beta, y));
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
    lpool_run(lk_pool_for_bytes(c, NORM_BYTES_PER_ELEMENT * total), tasks, ln_task, &j);
    lk_stat_end(m, LK_OP_LAYERNORM, 0);
}
