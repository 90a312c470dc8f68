/* resample.c - nearest and bilinear resizing and the 2x2 average pool (NCHW planes).
 *
 * These reproduce PyTorch's CPU index arithmetic exactly, because a different rounding of a
 * source coordinate picks a different pixel (not a float-rounding difference). Nearest:
 * src = min(floor(dst * (float)(in/out)), in-1), with the exact shortcuts PyTorch takes for equal
 * sizes and exact 2x upscaling. Bilinear (align_corners=False, scale factor given): the source
 * coordinate is computed in float from 1/scale as PyTorch does, negative values clamp to 0, the
 * second tap is clamped to the last pixel, and the value is interpolated along the width first.
 * With scale 0.5 this is exactly a 2x2 average with floor, which is what LDM's SpatialRescaler
 * relies on. Nothing is allocated: the taps are recomputed per pixel, which is cheap next to the
 * memory traffic. */
#include "kernels.h"

#include <math.h>
#include <string.h>

static int nearest_src(int dst, int in, int out)
{
    if (in == out) return dst;
    if (out == 2 * in) return dst >> 1;
    float scale = (float)in / (float)out;
    int src = (int)floorf((float)dst * scale);
    return src < in - 1 ? src : in - 1;
}

/* Exact 2x (every UNet and decoder Upsample): each input row becomes two output rows of doubled
 * pixels; the same values as the general loop (src = dst >> 1) without an index per pixel. */
static void upsample2(const float *x, int BC, int H, int W, float *y)
{
    for (size_t r = 0; r < (size_t)BC * H; r++) {
        const float *src = x + r * W;
        float *d0 = y + r * 4 * W, *d1 = d0 + 2 * (size_t)W;
        for (int i = 0; i < W; i++) d0[2 * i] = d0[2 * i + 1] = src[i];
        memcpy(d1, d0, sizeof(float) * 2 * (size_t)W);
    }
}

static void resize_nearest_run(const float *x, int BC, int H, int W, int OH, int OW, float *y)
{
    if (BC <= 0 || OH <= 0 || OW <= 0 || H <= 0 || W <= 0) return;
    if (OH == 2 * H && OW == 2 * W) {
        upsample2(x, BC, H, W, y);
        return;
    }
    for (int p = 0; p < BC; p++) {
        const float *xp = x + (size_t)p * H * W;
        float *yp = y + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            const float *row = xp + (size_t)nearest_src(oh, H, OH) * W;
            float *dst = yp + (size_t)oh * OW;
            for (int ow = 0; ow < OW; ow++) dst[ow] = row[nearest_src(ow, W, OW)];
        }
    }
}

/* One axis of bilinear sampling: taps i0, i1 and weights w0, w1 for output index dst. */
typedef struct lin_tap {
    int i0, i1;
    float w0, w1;
} lin_tap;

static lin_tap linear_tap(int dst, int in, double scale)
{
    float rscale = (float)(1.0 / scale);
    float src = rscale * ((float)dst + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    int i0 = (int)floorf(src);
    if (i0 > in - 1) i0 = in - 1;
    float l1 = src - (float)i0;
    if (l1 < 0.0f) l1 = 0.0f;
    if (l1 > 1.0f) l1 = 1.0f;
    lin_tap t = {i0, i0 < in - 1 ? i0 + 1 : i0, 1.0f - l1, l1};
    return t;
}

static void resize_bilinear_run(const float *x, int BC, int H, int W, int OH, int OW, double scale_h, double scale_w, float *y)
{
    if (BC <= 0 || OH <= 0 || OW <= 0 || H <= 0 || W <= 0) return;
    for (int p = 0; p < BC; p++) {
        const float *xp = x + (size_t)p * H * W;
        float *yp = y + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            lin_tap th = linear_tap(oh, H, scale_h);
            const float *r0 = xp + (size_t)th.i0 * W, *r1 = xp + (size_t)th.i1 * W;
            for (int ow = 0; ow < OW; ow++) {
                lin_tap t = linear_tap(ow, W, scale_w);
                float top = r0[t.i0] * t.w0 + r0[t.i1] * t.w1;
                float bot = r1[t.i0] * t.w0 + r1[t.i1] * t.w1;
                yp[(size_t)oh * OW + ow] = top * th.w0 + bot * th.w1;
            }
        }
    }
}

static void avg_pool2_run(const float *x, int BC, int H, int W, float *y)
{
    int OH = H / 2, OW = W / 2;
    for (int p = 0; p < BC; p++) {
        const float *xp = x + (size_t)p * H * W;
        float *yp = y + (size_t)p * OH * OW;
        for (int oh = 0; oh < OH; oh++) {
            const float *r0 = xp + (size_t)(2 * oh) * W, *r1 = r0 + W;
            for (int ow = 0; ow < OW; ow++)
                yp[(size_t)oh * OW + ow] = (r0[2 * ow] + r0[2 * ow + 1] + r1[2 * ow] + r1[2 * ow + 1]) / 4.0f;
        }
    }
}

void lk_resize_nearest(const float *x, int BC, int H, int W, int OH, int OW, float *y)
{
    lk_stat_mark m = lk_stat_begin();
    resize_nearest_run(x, BC, H, W, OH, OW, y);
    lk_stat_end(m, LK_OP_RESAMPLE, 0);
}

void lk_resize_bilinear(const float *x, int BC, int H, int W, int OH, int OW, double scale_h, double scale_w, float *y)
{
    lk_stat_mark m = lk_stat_begin();
    resize_bilinear_run(x, BC, H, W, OH, OW, scale_h, scale_w, y);
    lk_stat_end(m, LK_OP_RESAMPLE, 0);
}

void lk_avg_pool2(const float *x, int BC, int H, int W, float *y)
{
    lk_stat_mark m = lk_stat_begin();
    avg_pool2_run(x, BC, H, W, y);
    lk_stat_end(m, LK_OP_RESAMPLE, 0);
}
