/* conv_direct.c - stride-1 convolutions with few output channels, computed directly.
 *
 * The last convolution of a decoder (128 -> 3 channels at 512x512) or of a UNet (320 -> 4) is a
 * matrix product with 3 or 4 rows: BLAS runs such a product at a few GFLOP/s, and Winograd has
 * nothing to batch. Here each task computes whole output rows: for every input channel and tap
 * it adds weight * shifted input row to up to DC_MAX_OC accumulator rows, 8 lanes at a time
 * (simd.h), so the input row is read once per tap for all output channels and the accumulators
 * stay in the L1 cache (rows are done in chunks of DC_CHUNK columns). Each output is summed over
 * (input channel, kernel row, kernel column) in that order whatever the split, so results do not
 * depend on the thread count. */
#include "kernels.h"
#include "simd.h"

#define DC_MAX_OC 8   /* output channels this path takes */
#define DC_CHUNK 512  /* output columns accumulated at once */

int lk_conv_direct_applies(const lk_conv2d_shape *s) { return s->stride == 1 && s->out_ch <= DC_MAX_OC; }

typedef struct dc_job {
    const lk_conv2d_shape *s;
    const float *x, *bias;
    lk_wt w;
    float *y;
    int OH, OW;
    const float *wf; /* float32 weights (widened once for float16) */
} dc_job;

/* acc[0..n) += wv * src[0..n) */
LK_BODY void axpy(float *acc, const float *src, int n, float wv)
{
    int i = 0;
    for (; i + LANES <= n; i += LANES) {
        v8f a, b;
        LOAD(a, acc + i);
        LOAD(b, src + i);
        STORE(acc + i, a + SPLAT(wv) * b);
    }
    for (; i < n; i++) acc[i] += wv * src[i];
}

/* Output row `task` (image task / OH, row task % OH), every output channel. */
LK_BODY void direct_row_body(const dc_job *j, int task)
{
    const lk_conv2d_shape *s = j->s;
    int b = task / j->OH, oh = task % j->OH, OC = s->out_ch;
    const float *xb = j->x + (size_t)b * s->in_ch * s->in_h * s->in_w;
    float acc[DC_MAX_OC][DC_CHUNK];
    for (int c0 = 0; c0 < j->OW; c0 += DC_CHUNK) {
        int n = LDM_MIN(DC_CHUNK, j->OW - c0);
        for (int oc = 0; oc < OC; oc++)
            for (int i = 0; i < n; i++) acc[oc][i] = j->bias ? j->bias[oc] : 0.0f;
        for (int ic = 0; ic < s->in_ch; ic++)
            for (int kh = 0; kh < s->k_h; kh++) {
                int ih = oh + kh - s->pad_top;
                if (ih < 0 || ih >= s->in_h) continue;
                const float *row = xb + ((size_t)ic * s->in_h + ih) * s->in_w;
                for (int kw = 0; kw < s->k_w; kw++) {
                    /* output column ow reads input column ow + kw - pad_left: the valid ow of
                     * this chunk are [lo, hi) */
                    int shift = kw - s->pad_left;
                    int lo = LDM_MAX(c0, -shift), hi = LDM_MIN(c0 + n, s->in_w - shift);
                    if (lo >= hi) continue;
                    for (int oc = 0; oc < OC; oc++) {
                        float wv = j->wf[(((size_t)oc * s->in_ch + ic) * s->k_h + kh) * s->k_w + kw];
                        axpy(acc[oc] + (lo - c0), row + lo + shift, hi - lo, wv);
                    }
                }
            }
        for (int oc = 0; oc < OC; oc++)
            memcpy(j->y + (((size_t)b * OC + oc) * j->OH + oh) * j->OW + c0, acc[oc], sizeof(float) * (size_t)n);
    }
}

static void direct_row_base(void *arg, int task) { direct_row_body(arg, task); }
#ifdef LK_DISPATCH
static LK_AVX2 void direct_row_avx2(void *arg, int task) { direct_row_body(arg, task); }
#endif

ldm_status lk_conv2d_direct(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                            float *y)
{
    dc_job j = {s, x, bias, w, y, lk_conv2d_out_h(s), lk_conv2d_out_w(s), w.f32};
    if (s->batch <= 0 || s->out_ch <= 0 || j.OH <= 0 || j.OW <= 0) return LDM_OK;
    if (!lk_conv_direct_applies(s))
        return ldm_fail(LDM_ERR_INTERNAL, "conv2d: direct path for %d output channels, stride %d", s->out_ch, s->stride);
    size_t nw = (size_t)s->out_ch * s->in_ch * s->k_h * s->k_w;
    float *widened = NULL;
    if (!w.f32) { /* float16 kernels: a few thousand values, widened once */
        widened = lk_scratch_get(sizeof(float) * nw);
        if (!widened) return ldm_fail_context(ldm_alloc_failure_status(), "conv2d weights: ");
        lk_wt_read(w, 0, nw, widened);
        j.wf = widened;
    }
    void (*fn)(void *, int) = direct_row_base;
#ifdef LK_DISPATCH
    if (lk_cpu_has_avx2()) fn = direct_row_avx2;
#endif
    double flops = 2.0 * nw * s->batch * j.OH * j.OW;
    lpool_run(lk_pool_for_flops(c, flops), s->batch * j.OH, fn, &j);
    if (widened) lk_scratch_put(widened, sizeof(float) * nw);
    return LDM_OK;
}
