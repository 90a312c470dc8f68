/* grad_linear.c - backward of y[rows,out] = x[rows,in] W[out,in]^T + b.
 *
 * dx = dy W and dW = dy^T x are lk_gemm products (tiled by shape, so bitwise independent of the
 * thread count); db sums dy over the rows, column block by column block (grad_sum.c). */
#include "grad.h"
#include "grad_sum.h"

void lg_linear_backward(const lctx *c, const float *x, const float *W, const float *dy, int rows, int in, int out,
                        float *dx, float *dW, float *db)
{
    if (rows < 0 || in < 0 || out < 0) return;
    if (dx) lk_gemm(c, 0, 0, rows, in, out, 1.0f, dy, out, W, in, 0.0f, dx, in);
    if (dW) lk_gemm(c, 1, 0, out, in, rows, 1.0f, dy, out, x, in, 0.0f, dW, in);
    if (db) lg_col_sums(c, dy, rows, out, out, db);
}

void lg_ref_linear_backward(const float *x, const float *W, const float *dy, int rows, int in, int out, float *dx,
                            float *dW, float *db)
{
    for (int r = 0; dx && r < rows; r++)
        for (int i = 0; i < in; i++) {
            double acc = 0.0;
            for (int o = 0; o < out; o++) acc += (double)dy[(size_t)r * out + o] * W[(size_t)o * in + i];
            dx[(size_t)r * in + i] = (float)acc;
        }
    for (int o = 0; dW && o < out; o++)
        for (int i = 0; i < in; i++) {
            double acc = 0.0;
            for (int r = 0; r < rows; r++) acc += (double)dy[(size_t)r * out + o] * x[(size_t)r * in + i];
            dW[(size_t)o * in + i] = (float)acc;
        }
    for (int o = 0; db && o < out; o++) {
        double acc = 0.0;
        for (int r = 0; r < rows; r++) acc += dy[(size_t)r * out + o];
        db[o] = (float)acc;
    }
}
