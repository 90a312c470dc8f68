/* grad_sum.h - the one reduction every backward needs: column sums of a row-major matrix
 * (db of a linear layer, dbeta of LayerNorm), split by blocks of columns so that each sum is taken
 * by one task, over the rows in order: the result does not depend on the thread count. */
#ifndef LDM_TRAIN_GRAD_SUM_H
#define LDM_TRAIN_GRAD_SUM_H

#include "../core/ctx.h"

/* out[j] = sum over i < rows of a[i*lda + j] (in double, rows in order), for j < cols. */
void lg_col_sums(const lctx *c, const float *a, int rows, int cols, int lda, float *out);

#endif
