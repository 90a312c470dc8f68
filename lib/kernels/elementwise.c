/* elementwise.c - residual additions and per-channel bias. Simple loops the compiler vectorises;
 * they are memory-bound, so threads would buy little and they stay on the calling thread. */
#include "kernels.h"

static void add_run(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

static void add_bias_channels_run(float *y, int B, int C, int HW, const float *bias)
{
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            float *row = y + ((size_t)b * C + c) * HW;
            float v = bias[c];
            for (int i = 0; i < HW; i++) row[i] += v;
        }
}

void lk_add(float *y, const float *x, size_t n)
{
    lk_stat_mark m = lk_stat_begin();
    add_run(y, x, n);
    lk_stat_end(m, LK_OP_ELEMENTWISE, 0);
}

void lk_add_bias_channels(float *y, int B, int C, int HW, const float *bias)
{
    lk_stat_mark m = lk_stat_begin();
    add_bias_channels_run(y, B, C, HW, bias);
    lk_stat_end(m, LK_OP_ELEMENTWISE, 0);
}
