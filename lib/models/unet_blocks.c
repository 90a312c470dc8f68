/* unet_blocks.c - loading and running the UNet's convolutions, ResBlock and AttentionBlock.
 * The math follows ldm/modules/diffusionmodules/openaimodel.py; see unet_blocks.h. */
#include "unet_blocks.h"

#include "../kernels/kernels.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define LUB_GROUPS 32 /* normalization() = GroupNorm32(32, channels) */

/* ---------------------------------------------------------------- weights */

ldm_status lub_name(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) return ldm_fail(LDM_ERR_INTERNAL, "unet: module name too long (%s)", fmt);
    return LDM_OK;
}

/* The checkpoint name of parameter <fmt...>: prefix + name, or its EMA copy (ema_scope() copies
 * model_ema.<name without dots> over each parameter). */
static ldm_status param_name(const lub_loader *L, char *out, size_t cap, char full[384], const char *fmt, va_list ap)
{
    char rel[256];
    int n = vsnprintf(rel, sizeof rel, fmt, ap);
    if (n < 0 || (size_t)n >= sizeof rel) return ldm_fail(LDM_ERR_INTERNAL, "unet: parameter name too long");
    n = snprintf(full, 384, "%s%s", L->prefix ? L->prefix : "", rel);
    if (n < 0 || n >= 384) return ldm_fail(LDM_ERR_INTERNAL, "unet: parameter name too long");
    if (!L->use_ema) {
        if (strlen(full) >= cap) return ldm_fail(LDM_ERR_INTERNAL, "unet: parameter name too long");
        strcpy(out, full);
    } else {
        lw_ema_name(full, out, cap);
    }
    return LDM_OK;
}

ldm_status lub_get(const lub_loader *L, int ndim, const int64_t *shape, float **out, const char *fmt, ...)
{
    char name[384], full[384];
    va_list ap;
    va_start(ap, fmt);
    ldm_status st = param_name(L, name, sizeof name, full, fmt, ap);
    va_end(ap);
    LDM_TRY(st);
    st = lw_get_f32(L->s, name, ndim, shape, out);
    if (st != LDM_OK && L->use_ema) return ldm_fail_context(st, "EMA copy %s of %s: ", name, full);
    return st;
}

ldm_status lub_get_wt(const lub_loader *L, int ndim, const int64_t *shape, lnw *out, const char *fmt, ...)
{
    char name[384], full[384];
    va_list ap;
    va_start(ap, fmt);
    ldm_status st = param_name(L, name, sizeof name, full, fmt, ap);
    va_end(ap);
    if (st != LDM_OK) {
        memset(out, 0, sizeof *out);
        return st;
    }
    st = lnw_get(L->s, name, ndim, shape, out);
    if (st != LDM_OK && L->use_ema) return ldm_fail_context(st, "EMA copy %s of %s: ", name, full);
    return st;
}

/* ---------------------------------------------------------------- workspace and activations */

float *lub_ws_get(lub_ws *w, int slot, size_t count)
{
    if (count == 0) count = 1;
    if (w->cap[slot] >= count) return w->buf[slot];
    ldm_free(w->buf[slot]);
    w->buf[slot] = NULL;
    w->cap[slot] = 0;
    size_t bytes;
    if (ldm_mul_size(count, sizeof(float), &bytes)) {
        ldm_fail(LDM_ERR_LIMIT, "unet: workspace of %zu floats overflows", count);
        return NULL;
    }
    w->buf[slot] = ldm_malloc_aligned(bytes);
    if (w->buf[slot]) w->cap[slot] = count;
    return w->buf[slot];
}

void lub_ws_free(lub_ws *w)
{
    for (int i = 0; i < LUB_WS_SLOTS; i++) {
        ldm_free(w->buf[i]);
        w->buf[i] = NULL;
        w->cap[i] = 0;
    }
}

size_t lub_act_numel(const lub_act *a) { return (size_t)a->B * a->C * a->H * a->W; }

ldm_status lub_act_alloc(lub_act *a, int B, int C, int H, int W)
{
    size_t n, bytes;
    a->p = NULL;
    if (B <= 0 || C <= 0 || H <= 0 || W <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: empty activation [%d,%d,%d,%d]", B, C, H, W);
    if (ldm_mul_size((size_t)B, (size_t)C, &n) || ldm_mul_size(n, (size_t)H, &n) || ldm_mul_size(n, (size_t)W, &n) ||
        ldm_mul_size(n, sizeof(float), &bytes))
        return ldm_fail(LDM_ERR_LIMIT, "unet: activation [%d,%d,%d,%d] too large", B, C, H, W);
    a->p = ldm_malloc_aligned(bytes);
    if (!a->p) return ldm_alloc_failure_status();
    a->B = B, a->C = C, a->H = H, a->W = W;
    return LDM_OK;
}

void lub_act_free(lub_act *a)
{
    ldm_free(a->p);
    a->p = NULL;
}

/* ---------------------------------------------------------------- GroupNorm, convolutions */

ldm_status lub_norm_load(lub_norm *n, const lub_loader *L, const char *name, int ch, float eps)
{
    if (ch % LUB_GROUPS != 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "unet: %s: %d channels not divisible by %d groups", name, ch, LUB_GROUPS);
    n->ch = ch;
    n->eps = eps;
    int64_t shape[1] = {ch};
    LDM_TRY(lub_get(L, 1, shape, &n->w, "%s.weight", name));
    return lub_get(L, 1, shape, &n->b, "%s.bias", name);
}

void lub_norm_free(lub_norm *n)
{
    ldm_free(n->w);
    ldm_free(n->b);
    n->w = n->b = NULL;
}

ldm_status lub_conv_load(lub_conv *cv, const lub_loader *L, const char *name, int in_ch, int out_ch, int k, int stride)
{
    cv->in_ch = in_ch, cv->out_ch = out_ch, cv->k = k, cv->stride = stride, cv->wc = L->wc;
    int64_t wshape[4] = {out_ch, in_ch, k, k}, bshape[1] = {out_ch};
    LDM_TRY(lub_get_wt(L, 4, wshape, &cv->w, "%s.weight", name));
    return lub_get(L, 1, bshape, &cv->b, "%s.bias", name);
}

void lub_conv_free(lub_conv *cv)
{
    lnw_free(&cv->w);
    ldm_free(cv->b);
    cv->b = NULL;
}

static lk_conv2d_shape conv_shape(const lub_conv *cv, int B, int H, int W)
{
    int pad = cv->k / 2;
    lk_conv2d_shape s = {B, cv->in_ch, H, W, cv->out_ch, cv->k, cv->k, cv->stride, pad, pad, pad, pad};
    return s;
}

ldm_status lub_conv_run(const lub_conv *cv, const lctx *c, const float *x, int B, int H, int W, float *y)
{
    lk_conv2d_shape s = conv_shape(cv, B, H, W);
    return lk_conv2d_cached(c, &s, x, cv->w.w, cv->b, y, cv->wc);
}

ldm_status lub_conv_forward(const lub_conv *cv, const lctx *c, const lub_act *x, lub_act *out)
{
    if (x->C != cv->in_ch)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet conv: expected %d input channels, found %d", cv->in_ch, x->C);
    lk_conv2d_shape s = conv_shape(cv, x->B, x->H, x->W);
    LDM_TRY(lub_act_alloc(out, x->B, cv->out_ch, lk_conv2d_out_h(&s), lk_conv2d_out_w(&s)));
    ldm_status st = lk_conv2d_cached(c, &s, x->p, cv->w.w, cv->b, out->p, cv->wc);
    if (st != LDM_OK) lub_act_free(out);
    return st;
}

ldm_status lub_upsample_forward(const lub_conv *cv, const lctx *c, lub_ws *ws, const lub_act *x, lub_act *out)
{
    if (x->C != cv->in_ch)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet conv: expected %d input channels, found %d", cv->in_ch, x->C);
    /* nearest 2x folded into the convolution (lk_conv2d_up2) */
    lk_conv2d_shape s = conv_shape(cv, x->B, 2 * x->H, 2 * x->W);
    LDM_TRY(lub_act_alloc(out, x->B, cv->out_ch, lk_conv2d_out_h(&s), lk_conv2d_out_w(&s)));
    ldm_status st = lk_conv2d_up2_cached(c, &s, x->p, cv->w.w, cv->b, out->p, cv->wc);
    if (st != LDM_OK) lub_act_free(out);
    return st;
}

ldm_status lub_pointwise(const lctx *c, lk_wt W, const float *bias, const float *x, int B, int M, int K, int N,
                         float *y, int accumulate)
{
    for (int b = 0; b < B; b++) {
        float *yb = y + (size_t)b * M * N;
        LDM_TRY(lk_gemm_wa(c, W, M, K, 0, x + (size_t)b * K * N, N, N, accumulate ? 1.0f : 0.0f, yb, N));
        if (bias) lk_add_bias_channels(yb, 1, M, N, bias);
    }
    lk_wt_done(W, (size_t)M * (size_t)K);
    return LDM_OK;
}

/* ---------------------------------------------------------------- ResBlock */

ldm_status lub_resblock_load(lub_resblock *r, const lub_loader *L, const char *name, int in_ch, int out_ch,
                             int emb_ch, int updown, int scale_shift)
{
    char sub[200];
    r->in_ch = in_ch, r->out_ch = out_ch, r->emb_ch = emb_ch, r->updown = updown, r->scale_shift = scale_shift;
    LDM_TRY(lub_name(sub, sizeof sub, "%s.in_layers.0", name));
    LDM_TRY(lub_norm_load(&r->in_norm, L, sub, in_ch, 1e-5f));
    LDM_TRY(lub_name(sub, sizeof sub, "%s.in_layers.2", name));
    LDM_TRY(lub_conv_load(&r->in_conv, L, sub, in_ch, out_ch, 3, 1));
    int emb_out = scale_shift ? 2 * out_ch : out_ch;
    int64_t ew[2] = {emb_out, emb_ch}, eb[1] = {emb_out};
    LDM_TRY(lub_get_wt(L, 2, ew, &r->emb_w, "%s.emb_layers.1.weight", name));
    LDM_TRY(lub_get(L, 1, eb, &r->emb_b, "%s.emb_layers.1.bias", name));
    LDM_TRY(lub_name(sub, sizeof sub, "%s.out_layers.0", name));
    LDM_TRY(lub_norm_load(&r->out_norm, L, sub, out_ch, 1e-5f));
    LDM_TRY(lub_name(sub, sizeof sub, "%s.out_layers.3", name));
    LDM_TRY(lub_conv_load(&r->out_conv, L, sub, out_ch, out_ch, 3, 1));
    r->has_skip_conv = out_ch != in_ch;
    if (r->has_skip_conv) {
        LDM_TRY(lub_name(sub, sizeof sub, "%s.skip_connection", name));
        LDM_TRY(lub_conv_load(&r->skip, L, sub, in_ch, out_ch, 1, 1));
    }
    return LDM_OK;
}

void lub_resblock_free(lub_resblock *r)
{
    lub_norm_free(&r->in_norm);
    lub_conv_free(&r->in_conv);
    lnw_free(&r->emb_w);
    ldm_free(r->emb_b);
    r->emb_b = NULL;
    lub_norm_free(&r->out_norm);
    lub_conv_free(&r->out_conv);
    lub_conv_free(&r->skip);
}

/* h_upd / x_upd of a resampling ResBlock: avg-pool 2x2 (down) or nearest x2 (up). */
static void resample(int updown, const float *x, int BC, int H, int W, float *y)
{
    if (updown == LUB_DOWN)
        lk_avg_pool2(x, BC, H, W, y);
    else
        lk_resize_nearest(x, BC, H, W, 2 * H, 2 * W, y);
}

ldm_status lub_resample_forward(int updown, const lub_act *x, lub_act *out)
{
    int H = updown == LUB_DOWN ? x->H / 2 : 2 * x->H, W = updown == LUB_DOWN ? x->W / 2 : 2 * x->W;
    if (H < 1 || W < 1) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: Downsample of a %dx%d activation", x->H, x->W);
    LDM_TRY(lub_act_alloc(out, x->B, x->C, H, W));
    resample(updown, x->p, x->B * x->C, x->H, x->W, out->p);
    return LDM_OK;
}

/* h = GN(h) * (1 + scale) + shift, then SiLU (use_scale_shift_norm). */
static void scale_shift_norm(const lub_resblock *r, const lctx *c, float *h, int B, int HW, const float *e)
{
    int C = r->out_ch;
    lk_group_norm(c, h, B, C, HW, LUB_GROUPS, r->out_norm.eps, r->out_norm.w, r->out_norm.b, h);
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < C; ch++) {
            float scale = 1.0f + e[(size_t)b * 2 * C + ch], shift = e[(size_t)b * 2 * C + C + ch];
            float *p = h + ((size_t)b * C + ch) * HW;
            for (int i = 0; i < HW; i++) p[i] = p[i] * scale + shift;
        }
    lk_silu(h, (size_t)B * C * HW);
}

ldm_status lub_resblock_forward(const lub_resblock *r, const lctx *c, lub_ws *ws, const lub_act *x,
                                const float *emb_silu, lub_act *out)
{
    if (x->C != r->in_ch)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet ResBlock: expected %d input channels, found %d", r->in_ch,
                        x->C);
    int B = x->B, H = x->H, W = x->W;
    int OH = H, OW = W;
    if (r->updown == LUB_DOWN) OH = H / 2, OW = W / 2;
    if (r->updown == LUB_UP) OH = 2 * H, OW = 2 * W;
    size_t n_in = lub_act_numel(x), n_rs = (size_t)B * r->in_ch * OH * OW, n_mid = (size_t)B * r->out_ch * OH * OW;
    int emb_out = r->scale_shift ? 2 * r->out_ch : r->out_ch;

    float *t = lub_ws_get(ws, 0, n_in);
    float *t_rs = r->updown ? lub_ws_get(ws, 1, n_rs) : t;
    float *x_rs = r->updown ? lub_ws_get(ws, 2, n_rs) : x->p;
    float *h = lub_ws_get(ws, 3, n_mid);
    float *e = lub_ws_get(ws, 4, (size_t)B * emb_out);
    if (!t || !t_rs || !x_rs || !h || !e) return ldm_alloc_failure_status();

    /* in_layers: GN + SiLU, [resample h and x], conv */
    lk_group_norm_silu(c, x->p, B, r->in_ch, H * W, LUB_GROUPS, r->in_norm.eps, r->in_norm.w, r->in_norm.b, t);
    if (r->updown) {
        resample(r->updown, t, B * r->in_ch, H, W, t_rs);
        resample(r->updown, x->p, B * r->in_ch, H, W, x_rs);
    }
    LDM_TRY(lub_conv_run(&r->in_conv, c, t_rs, B, OH, OW, h));

    /* emb_layers: Linear(SiLU(emb)), broadcast over H, W */
    LDM_TRY(lk_linear_wt(c, emb_silu, B, r->emb_ch, r->emb_w.w, r->emb_b, emb_out, e));
    if (r->scale_shift) {
        scale_shift_norm(r, c, h, B, OH * OW, e);
    } else {
        for (int b = 0; b < B; b++) lk_add_bias_channels(h + (size_t)b * r->out_ch * OH * OW, 1, r->out_ch, OH * OW,
                                                         e + (size_t)b * emb_out);
        lk_group_norm_silu(c, h, B, r->out_ch, OH * OW, LUB_GROUPS, r->out_norm.eps, r->out_norm.w, r->out_norm.b,
                           h);
    }

    /* out_layers conv (dropout is the identity at inference), then + skip_connection(x) */
    LDM_TRY(lub_act_alloc(out, B, r->out_ch, OH, OW));
    ldm_status st = lub_conv_run(&r->out_conv, c, h, B, OH, OW, out->p);
    if (st != LDM_OK) {
        lub_act_free(out);
        return st;
    }
    if (r->has_skip_conv)
        st = lub_pointwise(c, r->skip.w.w, r->skip.b, x_rs, B, r->out_ch, r->in_ch, OH * OW, out->p, 1);
    else
        lk_add(out->p, x_rs, n_mid);
    if (st != LDM_OK) lub_act_free(out);
    return st;
}

/* ---------------------------------------------------------------- AttentionBlock */

ldm_status lub_attn_load(lub_attn *a, const lub_loader *L, const char *name, int ch, int heads, int new_order)
{
    char sub[200];
    if (heads <= 0 || ch % heads != 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "unet: %s: %d channels cannot be split into %d heads", name, ch, heads);
    a->ch = ch, a->heads = heads, a->new_order = new_order;
    LDM_TRY(lub_name(sub, sizeof sub, "%s.norm", name));
    LDM_TRY(lub_norm_load(&a->norm, L, sub, ch, 1e-5f));
    int64_t qw[3] = {3 * ch, ch, 1}, qb[1] = {3 * ch}, pw[3] = {ch, ch, 1}, pb[1] = {ch};
    LDM_TRY(lub_get_wt(L, 3, qw, &a->qkv_w, "%s.qkv.weight", name));
    LDM_TRY(lub_get(L, 1, qb, &a->qkv_b, "%s.qkv.bias", name));
    LDM_TRY(lub_get_wt(L, 3, pw, &a->proj_w, "%s.proj_out.weight", name));
    return lub_get(L, 1, pb, &a->proj_b, "%s.proj_out.bias", name);
}

void lub_attn_free(lub_attn *a)
{
    lub_norm_free(&a->norm);
    lnw_free(&a->qkv_w);
    ldm_free(a->qkv_b);
    lnw_free(&a->proj_w);
    ldm_free(a->proj_b);
    a->qkv_b = a->proj_b = NULL;
}

static void scale_floats(float *p, size_t n, float s)
{
    for (size_t i = 0; i < n; i++) p[i] *= s;
}

ldm_status lub_attn_forward(const lub_attn *a, const lctx *c, lub_ws *ws, lub_act *x)
{
    int B = x->B, C = x->C, T = x->H * x->W, heads = a->heads, ch = C / heads;
    if (C != a->ch)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet AttentionBlock: expected %d channels, found %d", a->ch, C);
    size_t n = lub_act_numel(x);
    float *t = lub_ws_get(ws, 0, n), *qkv = lub_ws_get(ws, 1, 3 * n);
    if (!t || !qkv) return ldm_alloc_failure_status();

    lk_group_norm(c, x->p, B, C, T, LUB_GROUPS, a->norm.eps, a->norm.w, a->norm.b, t);
    LDM_TRY(lub_pointwise(c, a->qkv_w.w, a->qkv_b, t, B, 3 * C, C, T, qkv, 0));

    /* q * scale and k * scale with scale = 1/sqrt(sqrt(ch)) (a Python double used as float32),
     * exactly as the reference scales before the product. */
    float s = (float)(1.0 / sqrt(sqrt((double)ch)));
    long sb = 3L * C * T;
    lk_view q, k, v;
    if (a->new_order) {
        /* QKVAttention: chunk(3) first (all q, all k, all v), then heads */
        for (int b = 0; b < B; b++) scale_floats(qkv + (size_t)b * sb, 2 * (size_t)C * T, s);
        q = (lk_view){qkv, sb, (long)ch * T, 1, T};
        k = (lk_view){qkv + (size_t)C * T, sb, (long)ch * T, 1, T};
        v = (lk_view){qkv + 2 * (size_t)C * T, sb, (long)ch * T, 1, T};
    } else {
        /* QKVAttentionLegacy: reshape to [B*heads, 3*ch, T] first, so each head owns (q,k,v) */
        for (int b = 0; b < B; b++)
            for (int h = 0; h < heads; h++) scale_floats(qkv + (size_t)b * sb + (size_t)h * 3 * ch * T, 2 * (size_t)ch * T, s);
        q = (lk_view){qkv, sb, 3L * ch * T, 1, T};
        k = (lk_view){qkv + (size_t)ch * T, sb, 3L * ch * T, 1, T};
        v = (lk_view){qkv + 2 * (size_t)ch * T, sb, 3L * ch * T, 1, T};
    }
    /* a [B*heads, ch, T] reshaped to [B, C, T]: channel = head*ch + d */
    lk_view o = {t, (long)C * T, (long)ch * T, 1, T};
    LDM_TRY(lk_attention(c, B, heads, T, T, ch, q, k, v, o, 1.0f, 0));
    return lub_pointwise(c, a->proj_w.w, a->proj_b, t, B, C, C, T, x->p, 1);
}
