/* grad_sum.c - column sums split by column blocks (see grad_sum.h). */
#include "grad_sum.h"

#include "../core/common.h"

#define SUM_COLS 64 /* columns per task: each row visit reads 256 contiguous bytes */

typedef struct sum_job {
    const float *a;
    int rows, cols, lda;
    float *out;
} sum_job;

static void sum_task(void *arg, int task)
{
    const sum_job *j = arg;
    int j0 = task * SUM_COLS, n = LDM_MIN(SUM_COLS, j->cols - j0);
    double acc[SUM_COLS] = {0};
    for (int i = 0; i < j->rows; i++) {
        const float *row = j->a + (size_t)i * j->lda + j0;
        for (int k = 0; k < n; k++) acc[k] += row[k];
    }
    for (int k = 0; k < n; k++) j->out[j0 + k] = (float)acc[k];
}

void lg_col_sums(const lctx *c, const float *a, int rows, int cols, int lda, float *out)
{
    if (cols <= 0) return;
    sum_job j = {a, rows, cols, lda, out};
    lpool_run(c ? c->pool : NULL, (cols + SUM_COLS - 1) / SUM_COLS, sum_task, &j);
}
