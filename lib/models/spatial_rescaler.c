/* spatial_rescaler.c - SpatialRescaler (see spatial_rescaler.h). */
#include "spatial_rescaler.h"

#include "../kernels/kernels.h"

#include <limits.h>
#include <math.h>
#include <string.h>

struct lrescaler {
    int n_stages;
    double multiplier;
    int bilinear;
    int in, out; /* out 0: no channel_mapper */
    float *w, *bias;
};

static ldm_status validate_desc(const ld_cond *d)
{
    if (d->n_stages < 0 || d->n_stages > 64)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "SpatialRescaler config: n_stages = %d outside 0..64", d->n_stages);
    if (!(d->multiplier > 0) || !isfinite(d->multiplier))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "SpatialRescaler config: multiplier = %g must be positive",
                        d->multiplier);
    if (d->out_channels > 0 && d->in_channels < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "SpatialRescaler config: in_channels = %d must be positive",
                        d->in_channels);
    return LDM_OK;
}

ldm_status lrescaler_create(const ld_cond *d, const lw_store *s, const char *prefix, lrescaler **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lrescaler_create: NULL output");
    *out = NULL;
    if (!d || !s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lrescaler_create: NULL description or store");
    if (!prefix) prefix = "";
    LDM_TRY(validate_desc(d));
    lrescaler *n = ldm_calloc(1, sizeof *n);
    if (!n) return ldm_alloc_failure_status();
    n->n_stages = d->n_stages;
    n->multiplier = d->multiplier;
    n->bilinear = d->method_bilinear;
    n->in = d->in_channels;
    n->out = d->out_channels > 0 ? d->out_channels : 0;
    ldm_status st = LDM_OK;
    if (n->out) {
        st = lw_get_f32f(s, 4, (int64_t[]){n->out, n->in, 1, 1}, &n->w, "%schannel_mapper.weight", prefix);
        if (st == LDM_OK && d->bias)
            st = lw_get_f32f(s, 1, (int64_t[]){n->out}, &n->bias, "%schannel_mapper.bias", prefix);
    }
    if (st != LDM_OK) {
        lrescaler_free(n);
        return ldm_fail_context(st, "loading the spatial rescaler: ");
    }
    *out = n;
    return LDM_OK;
}

void lrescaler_free(lrescaler *n)
{
    if (!n) return;
    ldm_free(n->w);
    ldm_free(n->bias);
    ldm_free(n);
}

int lrescaler_out_channels(const lrescaler *n) { return n->out; }

/* F.interpolate(mode='nearest', scale_factor=s): src = min(floor(dst * (float)(1/s)), in-1), with
 * PyTorch's shortcuts for equal and doubled sizes. */
static int nearest_src(int dst, int in, int out, float inv_scale)
{
    if (out == in) return dst;
    if (out == 2 * in) return dst >> 1;
    int64_t src = (int64_t)floorf((float)dst * inv_scale);
    return src < in - 1 ? (int)src : in - 1;
}

static void resize_nearest_scaled(const float *x, int BC, int H, int W, int OH, int OW, double scale, float *y)
{
    float inv = (float)(1.0 / scale);
    for (int p = 0; p < BC; p++) {
        const float *xp = x + (size_t)p * (size_t)H * (size_t)W;
        float *yp = y + (size_t)p * (size_t)OH * (size_t)OW;
        for (int oy = 0; oy < OH; oy++) {
            const float *row = xp + (size_t)nearest_src(oy, H, OH, inv) * (size_t)W;
            for (int ox = 0; ox < OW; ox++) yp[(size_t)oy * (size_t)OW + (size_t)ox] = row[nearest_src(ox, W, OW, inv)];
        }
    }
}

/* Output size of one stage: floor(in * multiplier) computed in double, as torch does. */
static ldm_status stage_size(const lrescaler *n, int in, int *out)
{
    double v = floor((double)in * n->multiplier);
    if (v < 1 || v > INT_MAX)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "spatial rescaler: a size of %d scaled by %g gives %.0f (input too small or too large)", in,
                        n->multiplier, v);
    *out = (int)v;
    return LDM_OK;
}

/* One interpolation stage: *buf ([BC,*h,*w]) is replaced by the resized map. `owned` says whether
 * the current buffer belongs to us (the first stage reads the caller's tensor). */
static ldm_status run_stage(const lrescaler *n, int BC, int *h, int *w, float **buf, int owned)
{
    int oh = 0, ow = 0;
    size_t bytes;
    LDM_TRY(stage_size(n, *h, &oh));
    LDM_TRY(stage_size(n, *w, &ow));
    if (ldm_mul_size((size_t)BC, (size_t)oh, &bytes) || ldm_mul_size(bytes, (size_t)ow, &bytes) ||
        ldm_mul_size(bytes, sizeof(float), &bytes))
        return ldm_fail(LDM_ERR_LIMIT, "spatial rescaler: output too large");
    float *y = ldm_malloc_aligned(bytes);
    if (!y) return ldm_alloc_failure_status();
    if (n->bilinear)
        lk_resize_bilinear(*buf, BC, *h, *w, oh, ow, n->multiplier, n->multiplier, y);
    else
        resize_nearest_scaled(*buf, BC, *h, *w, oh, ow, n->multiplier, y);
    if (owned) ldm_free(*buf);
    *buf = y;
    *h = oh;
    *w = ow;
    return LDM_OK;
}

static ldm_status check_input(const lrescaler *n, const ldm_tensor *x)
{
    char buf[96];
    LDM_TRY(lt_check(x, "spatial rescaler: x", LDM_F32, 4));
    for (int i = 0; i < 4; i++)
        if (x->shape[i] < 1 || x->shape[i] > INT_MAX)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "spatial rescaler: x: bad shape %s", lt_shape_str(x, buf, sizeof buf));
    if (x->shape[0] * x->shape[1] > INT_MAX || x->shape[2] * x->shape[3] > INT_MAX)
        return ldm_fail(LDM_ERR_LIMIT, "spatial rescaler: x %s too large", lt_shape_str(x, buf, sizeof buf));
    if (n->out && x->shape[1] != n->in)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "spatial rescaler: x: expected [B,%d,H,W], found %s", n->in,
                        lt_shape_str(x, buf, sizeof buf));
    return LDM_OK;
}

/* channel_mapper: 1x1 convolution of [B,in,h,w] into the new tensor t [B,out,h,w]. */
static ldm_status map_channels(const lrescaler *n, const lctx *c, const float *x, int B, int h, int w, ldm_tensor *t)
{
    lk_conv2d_shape sh = {.batch = B, .in_ch = n->in, .in_h = h, .in_w = w, .out_ch = n->out, .k_h = 1, .k_w = 1,
                          .stride = 1};
    return lk_conv2d(c, &sh, x, n->w, n->bias, lt_f32(t));
}

static ldm_status encode_stages(lrescaler *n, const lctx *c, const ldm_tensor *x, ldm_tensor **out)
{
    int B = (int)x->shape[0], C = (int)x->shape[1], h = (int)x->shape[2], w = (int)x->shape[3];
    float *buf = lt_f32(x);
    ldm_status st = LDM_OK;
    for (int i = 0; i < n->n_stages && st == LDM_OK; i++) {
        if (lctx_cancelled(c)) st = ldm_fail(LDM_CANCELLED, "cancelled");
        if (st == LDM_OK) st = run_stage(n, B * C, &h, &w, &buf, i > 0);
    }
    ldm_tensor *t = NULL;
    if (st == LDM_OK) {
        t = lt_new_f32_4d(B, n->out ? n->out : C, h, w);
        if (!t) st = ldm_alloc_failure_status();
    }
    if (st == LDM_OK && n->out) st = map_channels(n, c, buf, B, h, w, t);
    else if (st == LDM_OK) memcpy(lt_f32(t), buf, (size_t)lt_numel(t) * sizeof(float));
    if (buf != lt_f32(x)) ldm_free(buf);
    if (st != LDM_OK) {
        ldm_tensor_free(t);
        return st;
    }
    *out = t;
    return LDM_OK;
}

ldm_status lrescaler_encode(lrescaler *n, const lctx *c, const ldm_tensor *x, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "spatial rescaler: NULL output");
    *out = NULL;
    if (!n) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "spatial rescaler: NULL rescaler");
    LDM_TRY(check_input(n, x));
    return encode_stages(n, c, x, out);
}

ldm_status lrescaler_one_hot(const ldm_tensor *labels, int n_classes, ldm_tensor **out)
{
    char buf[96];
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "one-hot: NULL output");
    *out = NULL;
    LDM_TRY(lt_check(labels, "one-hot: labels", LDM_I64, 3));
    if (n_classes < 1) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "one-hot: n_classes = %d must be positive", n_classes);
    if (labels->shape[0] < 1 || labels->shape[1] < 1 || labels->shape[2] < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "one-hot: labels: expected [B,H,W], found %s",
                        lt_shape_str(labels, buf, sizeof buf));
    size_t hw = (size_t)labels->shape[1] * (size_t)labels->shape[2];
    size_t total = (size_t)lt_numel(labels);
    for (size_t i = 0; i < total; i++) {
        int64_t v = lt_i64(labels)[i];
        if (v < 0 || v >= n_classes)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "one-hot: label %lld at [%zu,%zu,%zu] outside [0,%d)",
                            (long long)v, i / hw, (i % hw) / (size_t)labels->shape[2], i % (size_t)labels->shape[2],
                            n_classes);
    }
    ldm_tensor *t = lt_new_f32_4d(labels->shape[0], n_classes, labels->shape[1], labels->shape[2]);
    if (!t) return ldm_alloc_failure_status(); /* zero-filled */
    for (size_t i = 0; i < total; i++) {
        size_t b = i / hw, p = i % hw;
        lt_f32(t)[(b * (size_t)n_classes + (size_t)lt_i64(labels)[i]) * hw + p] = 1.0f;
    }
    *out = t;
    return LDM_OK;
}
