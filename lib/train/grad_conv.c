/* grad_conv.c - backward of lk_conv2d: dx, dw and db.
 *
 * With col the im2col matrix [K = IC*KH*KW, P = OH*OW] of one image and dy_b its output gradient
 * [OC, P], the forward is y_b = w[OC,K] col + bias, so
 *     dw += dy_b col^T          (one lk_gemm per image and block, accumulated in a fixed order)
 *     dcol = w^T dy_b           (lk_gemm), then dx_b += col2im(dcol)
 *     db[oc] = sum of dy[:, oc, :, :].
 * As in the forward, the output pixels of an image are taken in blocks of output rows whose
 * im2col slice fits a fixed budget, so a large image never needs its whole im2col matrix. The
 * budget and so the blocks depend on the shape alone; dw is accumulated image by image, block by
 * block, and every dx element receives its contributions block by block in (kh, kw) order: all of
 * it independent of the thread count. im2col is split over the pool by im2col rows, col2im by
 * input channels (each writes only its own plane of dx). A 1x1 convolution without stride or
 * padding needs neither: the image is its own im2col matrix. The dx of a stride-1 "same"
 * convolution is a forward convolution (dx_by_forward_conv). */
#include "grad.h"

#include <string.h>

#define GCONV_COL_BUDGET ((size_t)1 << 20) /* floats per im2col block (4 MiB) */
#define GCONV_ROWS_PER_TASK 32             /* im2col rows per build task */

typedef struct gcol_job {
    const lk_conv2d_shape *s;
    const float *x; /* one image [IC,H,W] (im2col) */
    float *dx;      /* its gradient (col2im) */
    float *col;     /* [K, rows*OW] */
    int row0, rows, out_w, K;
} gcol_job;

/* The input column of output column ow for kernel column kw, or -1 in the padding. */
static int in_col(const lk_conv2d_shape *s, int ow, int kw)
{
    int iw = ow * s->stride + kw - s->pad_left;
    return iw >= 0 && iw < s->in_w ? iw : -1;
}

static int in_row(const lk_conv2d_shape *s, int oh, int kh)
{
    int ih = oh * s->stride + kh - s->pad_top;
    return ih >= 0 && ih < s->in_h ? ih : -1;
}

static void im2col_task(void *arg, int task)
{
    const gcol_job *j = arg;
    const lk_conv2d_shape *s = j->s;
    int kr1 = LDM_MIN(j->K, (task + 1) * GCONV_ROWS_PER_TASK);
    for (int kr = task * GCONV_ROWS_PER_TASK; kr < kr1; kr++) {
        int kw = kr % s->k_w, kh = (kr / s->k_w) % s->k_h, ic = kr / (s->k_w * s->k_h);
        const float *plane = j->x + (size_t)ic * s->in_h * s->in_w;
        float *dst = j->col + (size_t)kr * j->rows * j->out_w;
        for (int r = 0; r < j->rows; r++) {
            int ih = in_row(s, j->row0 + r, kh);
            for (int ow = 0; ow < j->out_w; ow++, dst++) {
                int iw = ih < 0 ? -1 : in_col(s, ow, kw);
                *dst = iw < 0 ? 0.0f : plane[(size_t)ih * s->in_w + iw];
            }
        }
    }
}

/* dx plane ic += the im2col rows of channel ic, kernel taps in (kh, kw) order. */
static void col2im_task(void *arg, int ic)
{
    const gcol_job *j = arg;
    const lk_conv2d_shape *s = j->s;
    float *plane = j->dx + (size_t)ic * s->in_h * s->in_w;
    for (int kh = 0; kh < s->k_h; kh++)
        for (int kw = 0; kw < s->k_w; kw++) {
            const float *src = j->col + ((size_t)(ic * s->k_h + kh) * s->k_w + kw) * j->rows * j->out_w;
            for (int r = 0; r < j->rows; r++) {
                int ih = in_row(s, j->row0 + r, kh);
                for (int ow = 0; ow < j->out_w; ow++, src++) {
                    int iw = ih < 0 ? -1 : in_col(s, ow, kw);
                    if (iw >= 0) plane[(size_t)ih * s->in_w + iw] += *src;
                }
            }
        }
}

typedef struct db_job {
    const lk_conv2d_shape *s;
    const float *dy;
    size_t plane;
    float *db;
} db_job;

static void db_task(void *arg, int oc)
{
    const db_job *j = arg;
    double acc = 0.0;
    for (int b = 0; b < j->s->batch; b++) {
        const float *p = j->dy + ((size_t)b * j->s->out_ch + oc) * j->plane;
        for (size_t i = 0; i < j->plane; i++) acc += p[i];
    }
    j->db[oc] = (float)acc;
}

static int is_pointwise(const lk_conv2d_shape *s)
{
    return s->k_h == 1 && s->k_w == 1 && s->stride == 1 && !s->pad_top && !s->pad_left && !s->pad_bottom &&
           !s->pad_right;
}

/* 1x1: dw += dy_b x_b^T, dx_b = w^T dy_b, straight on the images. */
static void pointwise_backward(const lctx *c, const lk_conv2d_shape *s, const float *x, const float *w,
                               const float *dy, float *dx, float *dw)
{
    int P = s->in_h * s->in_w, IC = s->in_ch, OC = s->out_ch;
    for (int b = 0; b < s->batch; b++) {
        const float *dyb = dy + (size_t)b * OC * P;
        if (dw) lk_gemm(c, 0, 1, OC, IC, P, 1.0f, dyb, P, x + (size_t)b * IC * P, P, b ? 1.0f : 0.0f, dw, IC);
        if (dx) lk_gemm(c, 1, 0, IC, P, OC, 1.0f, w, IC, dyb, P, 0.0f, dx + (size_t)b * IC * P, P);
    }
}

/* The block of output rows j->row0 .. j->row0 + j->rows - 1 of one image (dyb its output
 * gradient): its share of dw (the first block of the first image overwrites) and of dx. */
static void block_backward(const lctx *c, const lk_conv2d_shape *s, gcol_job *j, const float *w,
                           const float *dyb, float *dw, int first)
{
    int P = lk_conv2d_out_h(s) * j->out_w, Pb = j->rows * j->out_w, K = j->K;
    const float *dy_blk = dyb + (size_t)j->row0 * j->out_w;
    lpool *pool = c ? c->pool : NULL;
    if (dw) {
        lpool_run(pool, (K + GCONV_ROWS_PER_TASK - 1) / GCONV_ROWS_PER_TASK, im2col_task, j);
        lk_gemm(c, 0, 1, s->out_ch, K, Pb, 1.0f, dy_blk, P, j->col, Pb, first ? 0.0f : 1.0f, dw, K);
    }
    if (j->dx) {
        lk_gemm(c, 1, 0, K, Pb, s->out_ch, 1.0f, w, K, dy_blk, P, 0.0f, j->col, Pb);
        lpool_run(pool, s->in_ch, col2im_task, j);
    }
}

static ldm_status im2col_backward(const lctx *c, const lk_conv2d_shape *s, const float *x, const float *w,
                                  const float *dy, float *dx, float *dw)
{
    int oh_n = lk_conv2d_out_h(s), ow_n = lk_conv2d_out_w(s);
    int K = s->in_ch * s->k_h * s->k_w;
    size_t row_cost = (size_t)K * ow_n;
    int rows = (int)LDM_MAX((size_t)1, GCONV_COL_BUDGET / row_cost);
    if (rows > oh_n) rows = oh_n;
    float *col = ldm_malloc(sizeof(float) * row_cost * rows);
    if (!col) return ldm_fail_context(ldm_alloc_failure_status(), "conv2d backward im2col buffer: ");
    size_t in_img = (size_t)s->in_ch * s->in_h * s->in_w, out_img = (size_t)s->out_ch * oh_n * ow_n;
    if (dx) memset(dx, 0, sizeof(float) * in_img * s->batch);
    for (int b = 0; b < s->batch; b++)
        for (int r0 = 0; r0 < oh_n; r0 += rows) {
            gcol_job j = {s, x + b * in_img, dx ? dx + b * in_img : NULL, col, r0, LDM_MIN(rows, oh_n - r0), ow_n, K};
            block_backward(c, s, &j, w, dy + b * out_img, dw, b == 0 && r0 == 0);
        }
    ldm_free(col);
    return LDM_OK;
}

/* Stride 1, a square odd kernel and "same" padding k/2 on every side: the input gradient is
 * itself such a convolution, of dy with the kernel flipped in space and transposed in channels
 * (wt[ic,oc,kh,kw] = w[oc,ic,K-1-kh,K-1-kw]), so it runs through the forward lk_conv2d and its
 * fast paths (Winograd for 3x3) instead of a product and col2im. */
static int dx_is_same_conv(const lk_conv2d_shape *s)
{
    int p = s->k_h / 2;
    return s->stride == 1 && s->k_h == s->k_w && (s->k_h & 1) && s->k_h > 1 && s->pad_top == p && s->pad_left == p &&
           s->pad_bottom == p && s->pad_right == p;
}

static ldm_status dx_by_forward_conv(const lctx *c, const lk_conv2d_shape *s, const float *w, const float *dy,
                                     float *dx)
{
    int k = s->k_h, kk = k * k;
    size_t n = (size_t)s->out_ch * s->in_ch * kk;
    float *wt = ldm_malloc(n * sizeof(float));
    if (!wt) return ldm_fail_context(ldm_alloc_failure_status(), "conv2d backward flipped kernel: ");
    for (int oc = 0; oc < s->out_ch; oc++)
        for (int ic = 0; ic < s->in_ch; ic++)
            for (int t = 0; t < kk; t++)
                wt[((size_t)ic * s->out_ch + oc) * kk + (kk - 1 - t)] = w[((size_t)oc * s->in_ch + ic) * kk + t];
    lk_conv2d_shape ts = *s;
    ts.in_ch = s->out_ch, ts.out_ch = s->in_ch; /* same size, "same" padding */
    ldm_status st = lk_conv2d(c, &ts, dy, wt, NULL, dx);
    ldm_free(wt);
    return st;
}

static void zero_outputs(const lk_conv2d_shape *s, float *dx, float *dw, float *db)
{
    if (dx) memset(dx, 0, sizeof(float) * (size_t)s->batch * s->in_ch * s->in_h * s->in_w);
    if (dw) memset(dw, 0, sizeof(float) * (size_t)s->out_ch * s->in_ch * s->k_h * s->k_w);
    if (db) memset(db, 0, sizeof(float) * (size_t)s->out_ch);
}

ldm_status lg_conv2d_backward(const lctx *c, const lk_conv2d_shape *s, const float *x, const float *w,
                              const float *dy, float *dx, float *dw, float *db)
{
    int oh_n = lk_conv2d_out_h(s), ow_n = lk_conv2d_out_w(s);
    if (s->batch <= 0 || s->in_ch <= 0 || s->in_h <= 0 || s->in_w <= 0 || s->out_ch <= 0 || s->k_h <= 0 ||
        s->k_w <= 0 || s->stride <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "conv2d backward: empty shape");
    if (oh_n <= 0 || ow_n <= 0) { /* no output pixel: nothing reaches x, w or the bias */
        zero_outputs(s, dx, dw, db);
        return LDM_OK;
    }
    if ((long)s->in_ch * s->k_h * s->k_w * ow_n > (1L << 30) || (long)oh_n * ow_n > (1L << 30))
        return ldm_fail(LDM_ERR_LIMIT, "conv2d backward: shape too large");
    if (db) {
        db_job j = {s, dy, (size_t)oh_n * ow_n, db};
        lpool_run(c ? c->pool : NULL, s->out_ch, db_task, &j);
    }
    if (!dx && !dw) return LDM_OK;
    if (is_pointwise(s)) {
        pointwise_backward(c, s, x, w, dy, dx, dw);
        return LDM_OK;
    }
    if (dx && dx_is_same_conv(s)) {
        LDM_TRY(dx_by_forward_conv(c, s, w, dy, dx));
        return dw ? im2col_backward(c, s, x, w, dy, NULL, dw) : LDM_OK;
    }
    return im2col_backward(c, s, x, w, dy, dx, dw);
}

/* ---- naive reference: every gradient element gathered directly from the forward formula
 * y[b,oc,oh,ow] = sum x[b,ic,oh*st+kh-pt, ow*st+kw-pl] w[oc,ic,kh,kw] + bias[oc]. */

/* dx[b,ic,ih,iw]: the (oc, kh, kw) whose output pixel reads (ih, iw). */
static double ref_dx_at(const lk_conv2d_shape *s, const float *w, const float *dy, int b, int ic, int ih, int iw)
{
    int oh_n = lk_conv2d_out_h(s), ow_n = lk_conv2d_out_w(s);
    double acc = 0.0;
    for (int oc = 0; oc < s->out_ch; oc++)
        for (int kh = 0; kh < s->k_h; kh++) {
            int th = ih + s->pad_top - kh;
            if (th < 0 || th % s->stride || th / s->stride >= oh_n) continue;
            for (int kw = 0; kw < s->k_w; kw++) {
                int tw = iw + s->pad_left - kw;
                if (tw < 0 || tw % s->stride || tw / s->stride >= ow_n) continue;
                double g = dy[(((size_t)b * s->out_ch + oc) * oh_n + th / s->stride) * ow_n + tw / s->stride];
                acc += g * w[(((size_t)oc * s->in_ch + ic) * s->k_h + kh) * s->k_w + kw];
            }
        }
    return acc;
}

static double ref_dw_at(const lk_conv2d_shape *s, const float *x, const float *dy, int oc, int ic, int kh, int kw)
{
    int oh_n = lk_conv2d_out_h(s), ow_n = lk_conv2d_out_w(s);
    double acc = 0.0;
    for (int b = 0; b < s->batch; b++)
        for (int oh = 0; oh < oh_n; oh++) {
            int ih = oh * s->stride + kh - s->pad_top;
            if (ih < 0 || ih >= s->in_h) continue;
            for (int ow = 0; ow < ow_n; ow++) {
                int iw = ow * s->stride + kw - s->pad_left;
                if (iw < 0 || iw >= s->in_w) continue;
                acc += (double)dy[(((size_t)b * s->out_ch + oc) * oh_n + oh) * ow_n + ow] *
                       x[(((size_t)b * s->in_ch + ic) * s->in_h + ih) * s->in_w + iw];
            }
        }
    return acc;
}

void lg_ref_conv2d_backward(const lk_conv2d_shape *s, const float *x, const float *w, const float *dy, float *dx,
                            float *dw, float *db)
{
    size_t plane = (size_t)lk_conv2d_out_h(s) * lk_conv2d_out_w(s);
    for (int b = 0; dx && b < s->batch; b++)
        for (int ic = 0; ic < s->in_ch; ic++)
            for (int ih = 0; ih < s->in_h; ih++)
                for (int iw = 0; iw < s->in_w; iw++)
                    dx[(((size_t)b * s->in_ch + ic) * s->in_h + ih) * s->in_w + iw] =
                        (float)ref_dx_at(s, w, dy, b, ic, ih, iw);
    for (int oc = 0; dw && oc < s->out_ch; oc++)
        for (int ic = 0; ic < s->in_ch; ic++)
            for (int kh = 0; kh < s->k_h; kh++)
                for (int kw = 0; kw < s->k_w; kw++)
                    dw[(((size_t)oc * s->in_ch + ic) * s->k_h + kh) * s->k_w + kw] =
                        (float)ref_dw_at(s, x, dy, oc, ic, kh, kw);
    for (int oc = 0; db && oc < s->out_ch; oc++) {
        double acc = 0.0;
        for (int b = 0; b < s->batch; b++)
            for (size_t i = 0; i < plane; i++) acc += dy[((size_t)b * s->out_ch + oc) * plane + i];
        db[oc] = (float)acc;
    }
}
