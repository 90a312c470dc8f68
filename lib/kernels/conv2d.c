/* conv2d.c - 2-D convolution: the dispatch between its algorithms, and the im2col one.
 *
 * lk_conv2d picks, by shape: a direct loop for stride-1 convolutions with at most 8 output
 * channels (conv_direct.c), a plain product for 1x1 ones, Winograd F(4x4,3x3) or F(2x2,3x3) for
 * 3x3 stride-1 ones with enough channels and pixels (winograd.c), and im2col below for the rest.
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
#define WINOGRAD_F4_MIN_PIXELS 2048 /* e.g. 2 x 32 x 32 */
#define WINOGRAD_F2_MIN_PIXELS 256  /* e.g. 1 x 16 x 16 */
/* Convolutions with at most this many output pixels per image multiply the whole batch at once. */
#define CONV_BATCH_MAX_PIXELS 256

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
    const float *x; /* the first image [IC,H,W] of the block */
    float *col;     /* [K, ld]: image i's columns start at i * rows*OW */
    int row0, rows; /* output rows of this block (of each image) */
    int out_w, K;
    int images;     /* images side by side (batched small convolutions), else 1 */
    size_t ld;      /* row stride of col: images * rows * OW */
} col_job;

static void col_row_image(const col_job *j, int kr, int ic, int kh, int kw, int lo, int hi, const float *x,
                          float *dst);

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
    for (int i = 0; i < j->images; i++)
        col_row_image(j, kr, ic, kh, kw, lo, hi, j->x + (size_t)i * s->in_ch * s->in_h * s->in_w,
                      j->col + (size_t)kr * j->ld + (size_t)i * j->rows * ow_n);
}

/* The part of im2col row (ic, kh, kw) of one image, lo/hi from col_row. */
static void col_row_image(const col_job *j, int kr, int ic, int kh, int kw, int lo, int hi, const float *x,
                          float *dst)
{
    const lk_conv2d_shape *s = j->s;
    int st = s->stride, ow_n = j->out_w;
    const float *plane = x + (size_t)ic * s->in_h * s->in_w;
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

static ldm_status conv_pointwise(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                 const float *bias, float *y)
{
    int hw = s->in_h * s->in_w;
    if (s->batch > 1 && hw <= CONV_BATCH_MAX_PIXELS) /* the images' pixels side by side, as above */
        return lk_conv2d_im2col(c, s, x, w, bias, y);
    for (int b = 0; b < s->batch; b++) {
        float *yb = y + (size_t)b * s->out_ch * hw;
        fill_bias(yb, s->out_ch, (size_t)hw, (size_t)hw, bias);
        LDM_TRY(lk_gemm_wa(c, w, s->out_ch, s->in_ch, 0, x + (size_t)b * s->in_ch * hw, hw, hw, 1.0f, yb, hw));
    }
    return LDM_OK;
}

/* Output pixels of the whole batch. */
static long out_pixels(const lk_conv2d_shape *s) { return (long)s->batch * lk_conv2d_out_h(s) * lk_conv2d_out_w(s); }

/* Winograd needs enough channels for its products to be matrix products rather than transforms,
 * and enough output tiles to amortise transforming the weights: its transformed weights are
 * (m+2)^2/9 times the kernel (4x for F(4x4), 1.8x for F(2x2)) and stream through memory once
 * per call, so with few tiles the products wait on memory. Measured on SD shapes (batch 2, one
 * thread, GFLOP per CPU second counted as direct convolution): F(4x4) wins from 64x64 down to
 * 32x32 (145-170 against 60 for im2col), F(2x2) at 16x16 (70-100 against F(4x4)'s 60-75 and
 * im2col's 55), im2col at 8x8 and below (50-57 against 35). Returns m, or 0. */
static int winograd_tile(const lk_conv2d_shape *s)
{
    if (!lk_winograd_applies(s) || s->in_ch < 16 || s->out_ch < 16) return 0;
    long px = out_pixels(s);
    if (px >= WINOGRAD_F4_MIN_PIXELS) return 4;
    return px >= WINOGRAD_F2_MIN_PIXELS ? 2 : 0;
}

#define EP_CHUNK (1 << 16)

typedef struct ep_job {
    float *y;
    const lk_conv_ep *ep;
    size_t n;
} ep_job;

static void ep_task(void *arg, int task)
{
    const ep_job *j = arg;
    size_t i1 = LDM_MIN(j->n, (size_t)(task + 1) * EP_CHUNK);
    const float *res = j->ep->res;
    for (size_t i = (size_t)task * EP_CHUNK; i < i1; i++) {
        float v = res ? j->y[i] + res[i] : j->y[i];
        j->y[i] = j->ep->relu && !(v > 0.0f) ? 0.0f : v;
    }
}

/* The epilogue as a pass over y, for the paths that do not fuse it (the same operations as the
 * Winograd output transform's). */
static void apply_ep(const lctx *c, const lk_conv2d_shape *s, float *y, const lk_conv_ep *ep)
{
    if (!ep || (!ep->res && !ep->relu)) return;
    ep_job j = {y, ep, (size_t)s->batch * s->out_ch * lk_conv2d_out_h(s) * lk_conv2d_out_w(s)};
    lpool_run(lk_pool_for_bytes(c, 12.0 * (double)j.n), (int)((j.n + EP_CHUNK - 1) / EP_CHUNK), ep_task, &j);
}

static ldm_status conv2d_unfused(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                 const float *bias, float *y, lk_wcache *wc);

/* wc: the network's weight cache, or NULL (wino_small.c takes small 3x3 shapes with it); ep: the
 * epilogue, or NULL. */
static ldm_status conv2d_run(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                             const float *bias, float *y, lk_wcache *wc, const lk_conv_ep *ep)
{
    int oh_n = lk_conv2d_out_h(s), ow_n = lk_conv2d_out_w(s);
    if (s->batch <= 0 || s->out_ch <= 0 || oh_n <= 0 || ow_n <= 0) return LDM_OK;
    int m = winograd_tile(s); /* never a direct (<= 8 output channels) or 1x1 shape */
    if (m) return lk_conv3x3_winograd_ep(c, s, x, w, bias, y, m, ep);
    LDM_TRY(conv2d_unfused(c, s, x, w, bias, y, wc));
    apply_ep(c, s, y, ep);
    return LDM_OK;
}

/* Every path but the large Winograd one. */
static ldm_status conv2d_unfused(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                 const float *bias, float *y, lk_wcache *wc)
{
    if (lk_conv_direct_applies(s)) return lk_conv2d_direct(c, s, x, w, bias, y);
    if (s->k_h == 1 && s->k_w == 1 && s->stride == 1 && !s->pad_top && !s->pad_left && !s->pad_bottom &&
        !s->pad_right)
        return conv_pointwise(c, s, x, w, bias, y);
    if (wc) {
        int done;
        ldm_status st = lk_conv2d_wino_small_try(c, s, x, w, bias, y, wc, 0, &done);
        if (done || st != LDM_OK) return st;
    }
    if (lk_conv_small_applies(s)) return lk_conv2d_small(c, s, x, w, bias, y);
    return lk_conv2d_im2col(c, s, x, w, bias, y);
}

/* y[b][oc][p] = t[oc][b * P + p] + bias[oc]: one product's result back to NCHW. */
static void scatter_batched(const float *t, int B, int OC, size_t P, const float *bias, float *y)
{
    for (int b = 0; b < B; b++)
        for (int oc = 0; oc < OC; oc++) {
            const float *src = t + (size_t)oc * B * P + (size_t)b * P;
            float *dst = y + ((size_t)b * OC + oc) * P, v = bias ? bias[oc] : 0.0f;
            for (size_t i = 0; i < P; i++) dst[i] = src[i] + v;
        }
}

/* Small images (the 8x8 and 4x4 levels of a UNet): one product over the whole batch, the images'
 * im2col columns side by side, instead of one thin product per image that re-packs the weights
 * for a few dozen columns. The result goes through a small [OC, B*P] buffer. */
static ldm_status im2col_batched(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                 const float *bias, float *y, int K)
{
    int oh_n = lk_conv2d_out_h(s), ow_n = lk_conv2d_out_w(s);
    size_t P = (size_t)oh_n * ow_n, n = (size_t)s->batch * P;
    size_t col_bytes = sizeof(float) * (size_t)K * n, out_bytes = sizeof(float) * (size_t)s->out_ch * n;
    float *col = lk_scratch_get(col_bytes), *t = col ? lk_scratch_get(out_bytes) : NULL;
    if (!t) {
        lk_scratch_put(col, col_bytes);
        return ldm_fail_context(ldm_alloc_failure_status(), "conv2d im2col buffer: ");
    }
    col_job j = {s, x, col, 0, oh_n, ow_n, K, s->batch, n};
    lpool_run(lk_pool_for_bytes(c, 8.0 * K * n), (K + CONV_COL_ROWS_PER_TASK - 1) / CONV_COL_ROWS_PER_TASK, col_task,
              &j);
    ldm_status st = lk_gemm_wa(c, w, s->out_ch, K, 0, col, (int)n, (int)n, 0.0f, t, (int)n);
    if (st == LDM_OK) scatter_batched(t, s->batch, s->out_ch, P, bias, y);
    lk_scratch_put(col, col_bytes);
    lk_scratch_put(t, out_bytes);
    return st;
}

ldm_status lk_conv2d_im2col(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                            const float *bias, float *y)
{
    int oh_n = lk_conv2d_out_h(s), ow_n = lk_conv2d_out_w(s);
    if (s->batch <= 0 || s->out_ch <= 0 || oh_n <= 0 || ow_n <= 0) return LDM_OK;
    long K = (long)s->in_ch * s->k_h * s->k_w;
    if (K > INT_MAX / 2 || (long)oh_n * ow_n > INT_MAX)
        return ldm_fail(LDM_ERR_LIMIT, "conv2d: shape too large (%ld x %d x %d)", K, oh_n, ow_n);
    if (s->batch > 1 && (long)oh_n * ow_n <= CONV_BATCH_MAX_PIXELS &&
        (double)K * s->batch * oh_n * ow_n <= 2.0 * CONV_COL_BUDGET)
        return im2col_batched(c, s, x, w, bias, y, (int)K);
    size_t row_cost = (size_t)K * ow_n;
    int rows = (int)LDM_MAX((size_t)1, CONV_COL_BUDGET / (row_cost ? row_cost : 1));
    if (rows > oh_n) rows = oh_n;
    size_t col_bytes = sizeof(float) * row_cost * rows;
    float *col = lk_scratch_get(col_bytes);
    if (!col) return ldm_fail_context(ldm_alloc_failure_status(), "conv2d im2col buffer: ");

    size_t plane = (size_t)oh_n * ow_n;
    int col_tasks = (int)((K + CONV_COL_ROWS_PER_TASK - 1) / CONV_COL_ROWS_PER_TASK);
    for (int b = 0; b < s->batch; b++) {
        const float *xb = x + (size_t)b * s->in_ch * s->in_h * s->in_w;
        float *yb = y + (size_t)b * s->out_ch * plane;
        for (int r0 = 0; r0 < oh_n; r0 += rows) {
            int nr = LDM_MIN(rows, oh_n - r0);
            col_job j = {s, xb, col, r0, nr, ow_n, (int)K, 1, (size_t)nr * ow_n};
            lpool_run(lk_pool_for_bytes(c, 8.0 * K * j.ld), col_tasks, col_task, &j);
            float *yblk = yb + (size_t)r0 * ow_n;
            int P = nr * ow_n;
            fill_bias(yblk, s->out_ch, (size_t)P, plane, bias);
            ldm_status st = lk_gemm_wa(c, w, s->out_ch, (int)K, 0, col, P, P, 1.0f, yblk, (int)plane);
            if (st != LDM_OK) {
                lk_scratch_put(col, col_bytes);
                return st;
            }
        }
    }
    lk_scratch_put(col, col_bytes);
    return LDM_OK;
}

/* Elements of the kernel [OC, IC, KH, KW] (0 for shapes the checks reject). */
static size_t kernel_numel(const lk_conv2d_shape *s)
{
    if (s->out_ch <= 0 || s->in_ch <= 0 || s->k_h <= 0 || s->k_w <= 0) return 0;
    return (size_t)s->out_ch * (size_t)s->in_ch * (size_t)s->k_h * (size_t)s->k_w;
}

static lk_op conv_kind(const lk_conv2d_shape *s)
{
    if (s->k_h == 1 && s->k_w == 1) return LK_OP_CONV1X1;
    return (s->k_h == 3 && s->k_w == 3 && s->stride == 1) ? LK_OP_CONV3X3 : LK_OP_CONV_OTHER;
}

static ldm_status conv2d_counted(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                 const float *bias, float *y, lk_wcache *wc, const lk_conv_ep *ep)
{
    lk_stat_mark m = lk_stat_begin();
    ldm_status st = conv2d_run(c, s, x, w, bias, y, wc, ep);
    double macs = (double)s->batch * s->out_ch * lk_conv2d_out_h(s) * lk_conv2d_out_w(s) * s->in_ch * s->k_h * s->k_w;
    lk_stat_end(m, conv_kind(s), 2.0 * macs);
    lk_wt_done(w, kernel_numel(s));
    return st;
}

ldm_status lk_conv2d_cached(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                            float *y, lk_wcache *wc)
{
    return conv2d_counted(c, s, x, w, bias, y, wc, NULL);
}

ldm_status lk_conv2d_ep(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                        float *y, const lk_conv_ep *ep)
{
    return conv2d_counted(c, s, x, w, bias, y, NULL, ep);
}

ldm_status lk_conv2d_wt(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                        float *y)
{
    return lk_conv2d_cached(c, s, x, w, bias, y, NULL);
}

ldm_status lk_conv2d(const lctx *c, const lk_conv2d_shape *s, const float *x, const float *w, const float *bias,
                     float *y)
{
    return lk_conv2d_wt(c, s, x, lk_wt_f32(w), bias, y);
}

ldm_status lk_conv2d_up2(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                         float *y)
{
    return lk_conv2d_up2_cached(c, s, x, w, bias, y, NULL);
}

ldm_status lk_conv2d_up2_cached(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                const float *bias, float *y, lk_wcache *wc)
{
    if (s->in_h % 2 || s->in_w % 2 || s->in_h <= 0 || s->in_w <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "conv2d: upsampled input %dx%d is not even", s->in_h, s->in_w);
    lk_stat_mark m = lk_stat_begin();
    ldm_status st = LDM_OK;
    int tile = lk_conv_direct_applies(s) ? 0 : winograd_tile(s), done = 0;
    if (!tile && wc && lk_conv2d_out_h(s) > 0 && lk_conv2d_out_w(s) > 0 && s->batch > 0)
        st = lk_conv2d_wino_small_try(c, s, x, w, bias, y, wc, 1, &done);
    if (done || st != LDM_OK) {
    } else if (tile) {
        st = lk_conv3x3_winograd_up2(c, s, x, w, bias, y, tile);
    } else {
        size_t bytes = sizeof(float) * (size_t)s->batch * s->in_ch * s->in_h * s->in_w;
        float *up = lk_scratch_get(bytes);
        if (!up) {
            st = ldm_fail_context(ldm_alloc_failure_status(), "conv2d upsampled input: ");
        } else {
            lk_resize_nearest(x, s->batch * s->in_ch, s->in_h / 2, s->in_w / 2, s->in_h, s->in_w, up);
            st = conv2d_run(c, s, up, w, bias, y, wc, NULL);
            lk_scratch_put(up, bytes);
        }
    }
    double macs = (double)s->batch * s->out_ch * lk_conv2d_out_h(s) * lk_conv2d_out_w(s) * s->in_ch * s->k_h * s->k_w;
    lk_stat_end(m, conv_kind(s), 2.0 * macs);
    lk_wt_done(w, kernel_numel(s));
    return st;
}
