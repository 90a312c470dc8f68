/* grad_resample.c - backward of nearest 2x upsampling and of the 2x2 average pool (stride 2).
 *
 * Both forwards are linear maps that touch each input pixel through a fixed 2x2 window, so the
 * gradients are gathers: an upsampled image sends each input pixel the sum of its 2x2 block of
 * dy (added in row order), the pool sends each pixel of a window a quarter of the window's dy
 * (the forward divides the sum by 4, exactly). Split over the pool by planes, each output
 * element written by one task. */
#include "grad.h"

#include <string.h>

typedef struct rs_job {
    const float *dy;
    float *dx;
    int H, W; /* input size */
} rs_job;

static void up2_plane(void *arg, int p)
{
    const rs_job *j = arg;
    size_t W2 = 2 * (size_t)j->W;
    const float *g = j->dy + (size_t)p * 4 * j->H * j->W;
    float *dx = j->dx + (size_t)p * j->H * j->W;
    for (int h = 0; h < j->H; h++) {
        const float *r0 = g + 2 * (size_t)h * W2, *r1 = r0 + W2;
        for (int w = 0; w < j->W; w++) dx[(size_t)h * j->W + w] = r0[2 * w] + r0[2 * w + 1] + r1[2 * w] + r1[2 * w + 1];
    }
}

static void pool2_plane(void *arg, int p)
{
    const rs_job *j = arg;
    int OH = j->H / 2, OW = j->W / 2;
    const float *g = j->dy + (size_t)p * OH * OW;
    float *dx = j->dx + (size_t)p * j->H * j->W;
    memset(dx, 0, sizeof(float) * (size_t)j->H * j->W); /* an odd last row / column stays 0 */
    for (int oh = 0; oh < OH; oh++)
        for (int ow = 0; ow < OW; ow++) {
            float q = g[(size_t)oh * OW + ow] * 0.25f;
            float *r0 = dx + (size_t)2 * oh * j->W + 2 * ow, *r1 = r0 + j->W;
            r0[0] = r0[1] = r1[0] = r1[1] = q;
        }
}

void lg_upsample_nearest2_backward(const lctx *c, const float *dy, int BC, int H, int W, float *dx)
{
    if (BC <= 0 || H <= 0 || W <= 0) return;
    rs_job j = {dy, dx, H, W};
    lpool_run(c ? c->pool : NULL, BC, up2_plane, &j);
}

void lg_avg_pool2_backward(const lctx *c, const float *dy, int BC, int H, int W, float *dx)
{
    if (BC <= 0 || H <= 0 || W <= 0) return;
    rs_job j = {dy, dx, H, W};
    lpool_run(c ? c->pool : NULL, BC, pool2_plane, &j);
}

/* ---- references: scatter each dy element back along the forward's index map, in double */

void lg_ref_upsample_nearest2_backward(const float *dy, int BC, int H, int W, float *dx)
{
    size_t n = (size_t)BC * H * W;
    double *acc = ldm_calloc(n ? n : 1, sizeof(double));
    if (!acc) return; /* test-only code */
    for (int p = 0; p < BC; p++)
        for (int oh = 0; oh < 2 * H; oh++)
            for (int ow = 0; ow < 2 * W; ow++) /* y[oh, ow] = x[oh / 2, ow / 2] */
                acc[((size_t)p * H + oh / 2) * W + ow / 2] += dy[((size_t)p * 2 * H + oh) * 2 * W + ow];
    for (size_t i = 0; i < n; i++) dx[i] = (float)acc[i];
    ldm_free(acc);
}

void lg_ref_avg_pool2_backward(const float *dy, int BC, int H, int W, float *dx)
{
    int OH = H / 2, OW = W / 2;
    memset(dx, 0, sizeof(float) * (size_t)BC * H * W);
    for (int p = 0; p < BC; p++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++)
                for (int a = 0; a < 2; a++)
                    for (int b = 0; b < 2; b++) /* y[oh, ow] = sum of the window / 4 */
                        dx[((size_t)p * H + 2 * oh + a) * W + 2 * ow + b] +=
                            (float)(dy[((size_t)p * OH + oh) * OW + ow] / 4.0);
}
