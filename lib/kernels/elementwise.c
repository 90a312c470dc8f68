/* elementwise.c - residual additions and per-channel bias. Simple loops the compiler vectorises;
 * they are memory-bound, so threads would buy little and they stay on the calling thread. */
#include "kernels.h"

void lk_add(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void lk_add_bias_channels(float *y, int B, int C, int HW, const float *bias)
{
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            float *row = y + ((size_t)b * C + c) * HW;
            float v = bias[c];
            for (int i = 0; i < HW; i++) row[i] += v;
        }
}
