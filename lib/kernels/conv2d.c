/* conv2d.c - 2-D convolution as matrix products.
 *
 * A convolution is W[OC, IC*KH*KW] times the im2col matrix [IC*KH*KW, OH*OW] of each image, so
 * the heavy lifting is one sgemm (lk_gemm: tiled over the thread pool, bitwise independent of the
 * thread count). A 1x1 convolution without stride or padding needs no im2col at all: the image
 * itself is the right-hand matrix. Otherwise the full im2col matrix would be KH*KW times the input
 * (over a gigabyte for a 512x512 decoder layer), so output rows are processed in blocks whose
 * im2col slice fits a fixed budget: each block is built in parallel (tasks over im2col rows) and
 * then multiplied in parallel. Every output element is still one dot product over the full
 * IC*KH*KW, whatever the block or thread count, because blocks only split the output pixels. */
#include "kernels.h"

#include <limits.h>
#include <string.h>

/* im2col block budget in floats (8 MiB): big enough for efficient sgemm column counts, small
 * enough to stay out of the way of the activations. */
#define CONV_COL_BUDGET ((size_t)2 << 20)
/* im2col rows per build task. */
#define CONV_COL_ROWS_PER_TASK 32

int lk_conv2d_out_h(const lk_conv2d_shape *s)
{
    int span = s->in_h + s->pad_top + s->pad_bottom - s->k_h;
    return (span < 0 || s->stride <= 0) ? 0 : span / s->stride + 1;
}

int lk_conv2d_out_w(const lk_conv2d_shape *s)
{
    int span = s->in_w + s->pad_left + s->pad_right - s->k_w;
    return (span < 0 || s->stride <= 0) ? 0 : span / s->stride + 1;
}

/* y[b, oc, :] = bias[oc] (or 0), so that the product can accumulate with beta = 1. */
static void fill_bias(float *y, int oc_n, size_t plane, size_t ld, const float *bias)
{
    for (int oc = 0; oc < oc_n; oc++) {
        float *row = y + (size_t)oc * ld;
        float v = bias ? bias[oc] : 0.0f;
        for (size_t i = 0; i < plane; i++) row[i] = v;
    }
}

typedef struct col_job {
    const lk_conv2d_shape *s;
    const float *x; /* this image [IC,H,W] */
    float *col;     /* [K, rows*OW] */
    int row0, rows; /* output rows of this block */
    int out_w, K;
} col_job;

/* Fills one im2col row (ic, kh, kw) for the block's output rows. */
static void col_row(const col_job *j, int kr)
{
    const lk_conv2d_shape *s = j->s;
    int kw = kr % s->k_w, kh = (kr / s->k_w) % s->k_h, ic = kr / (s->k_w * s->k_h);
    int st = s->stride, ow_n = j->out_w;
    /* Output columns whose input column lies inside the image: [lo, hi). */
    int first = s->pad_left - kw; /* ow*st >= first */
    int lo = first <= 0 ? 0 : (first + st - 1) / st;
    int last = s->in_w + s->pad_left - kw; /* ow*st < last */
    int hi = last <= 0 ? 0 : (last + st - 1) / st;
    if (hi > ow_n) hi = ow_n;
    if (lo > hi) lo = hi;
    const float *plane = j->x + (size_t)ic * s->in_h * s->in_w;
    float *dst = j->col + (size_t)kr * j->rows * ow_n;
    for (int r = 0; r < j->rows; r++, dst += ow_n) {
        int ih = (j->row0 + r) * st + kh - s->pad_top;
        if (ih < 0 || ih >= s->in_h) {
            memset(dst, 0, sizeof(float) * (size_t)ow_n);
            continue;
        }
        /* input column of output column ow: ow*st + shift, inside the image for ow in [lo, hi) */
        const float *src = plane + (size_t)ih * s->in_w;
        long shift = (long)kw - s->pad_left;
        for (int ow = 0; ow < lo; ow++) dst[ow] = 0.0f;
        if (st == 1 && hi > lo)
            memcpy(dst + lo, src + (lo + shift), sizeof(float) * (size_t)(hi - lo));
        else
            for (int ow = lo; ow < hi; ow++) dst[ow] = src[(long)ow * st + shift];
        for (int ow = hi; ow < ow_n; ow++) dst[ow] = 0.0f;
    }
}

static void col_task(void *arg, int task)
{
    const col_job *j = arg;
    int r1 = LDM_MIN(j->K, (task + 1) * CONV_COL_ROWS_PER_TASK);
    for (int kr = task * CONV_COL_ROWS_PER_TASK; kr < r1; kr++) col_row(j, kr);
}

static ldm_status conv_pointwise(const lctx *c, const lk_conv2d_shape *s, const float *x, const float *w,
                                 const float *bias, float *y)
{
    int hw = s->in_h * s->in_w;
    for (int b = 0; b < s->batch; b++) {
        float *yb = y + (size_t)b * s->out_ch * hw;
        fill_bias(yb, s->out_ch, (size_t)hw, (size_t)hw, bias);
        lk_gemm(c, 0, 0, s->out_ch, hw, s->in_ch, 1.0f, w, s->in_ch, x + (size_t)b * s->in_ch * hw, hw, 1.0f, yb, hw);
    }
    return LDM_OK;
}

ldm_status lk_conv2d(const lctx *c, const lk_conv2d_shape *s, const float *x, const float *w, const float *bias,
                     float *y)
{
    int oh_n = lk_conv2d_out_h(s), ow_n = lk_conv2d_out_w(s);
    if (s->batch <= 0 || s->out_ch <= 0 || oh_n <= 0 || ow_n <= 0) return LDM_OK;
    if (s->k_h == 1 && s->k_w == 1 && s->stride == 1 && !s->pad_top && !s->pad_left && !s->pad_bottom &&
        !s->pad_right)
        return conv_pointwise(c, s, x, w, bias, y);

    long K = (long)s->in_ch * s->k_h * s->k_w;
    if (K > INT_MAX / 2 || (long)oh_n * ow_n > INT_MAX)
        return ldm_fail(LDM_ERR_LIMIT, "conv2d: shape too large (%ld x %d x %d)", K, oh_n, ow_n);
    size_t row_cost = (size_t)K * ow_n;
    int rows = (int)LDM_MAX((size_t)1, CONV_COL_BUDGET / (row_cost ? row_cost : 1));
    if (rows > oh_n) rows = oh_n;
    float *col = ldm_malloc_aligned(sizeof(float) * row_cost * rows);
    if (!col) return ldm_fail_context(LDM_ERR_OUT_OF_MEMORY, "conv2d im2col buffer: ");

    size_t plane = (size_t)oh_n * ow_n;
    int col_tasks = (int)((K + CONV_COL_ROWS_PER_TASK - 1) / CONV_COL_ROWS_PER_TASK);
    for (int b = 0; b < s->batch; b++) {
        const float *xb = x + (size_t)b * s->in_ch * s->in_h * s->in_w;
        float *yb = y + (size_t)b * s->out_ch * plane;
        for (int r0 = 0; r0 < oh_n; r0 += rows) {
            int nr = LDM_MIN(rows, oh_n - r0);
            col_job j = {s, xb, col, r0, nr, ow_n, (int)K};
            lpool_run(c ? c->pool : NULL, col_tasks, col_task, &j);
            float *yblk = yb + (size_t)r0 * ow_n;
            int P = nr * ow_n;
            fill_bias(yblk, s->out_ch, (size_t)P, plane, bias);
            lk_gemm(c, 0, 0, s->out_ch, P, (int)K, 1.0f, w, (int)K, col, P, 1.0f, yblk, (int)plane);
        }
    }
    ldm_free(col);
    return LDM_OK;
}
