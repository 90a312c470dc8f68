/* spatial_transformer.c - SpatialTransformer / BasicTransformerBlock / CrossAttention
 * (ldm/modules/attention.py). Activations inside are [B*T, inner] rows (T = H*W), the
 * rearrange 'b c h w -> b (h w) c' being folded into the proj_in / proj_out products. */
#include "spatial_transformer.h"

#include "../kernels/kernels.h"

#include <math.h>
#include <stdio.h>

#define LST_LN_EPS 1e-5f /* nn.LayerNorm default */
#define LST_GN_EPS 1e-6f /* attention.Normalize */

/* ---------------------------------------------------------------- loading */

static ldm_status attn_load(lst_attn *a, const lub_loader *L, const char *name, int query_dim, int context_dim,
                            int heads, int dim_head)
{
    int inner = heads * dim_head;
    a->query_dim = query_dim, a->context_dim = context_dim, a->heads = heads, a->dim_head = dim_head, a->wc = L->wc;
    int64_t q[2] = {inner, query_dim}, kv[2] = {inner, context_dim}, o[2] = {query_dim, inner}, ob[1] = {query_dim};
    LDM_TRY(lub_get_wt(L, 2, q, &a->wq, "%s.to_q.weight", name));
    LDM_TRY(lub_get_wt(L, 2, kv, &a->wk, "%s.to_k.weight", name));
    LDM_TRY(lub_get_wt(L, 2, kv, &a->wv, "%s.to_v.weight", name));
    LDM_TRY(lub_get_wt(L, 2, o, &a->wo, "%s.to_out.0.weight", name));
    return lub_get(L, 1, ob, &a->bo, "%s.to_out.0.bias", name);
}

static void attn_free(lst_attn *a)
{
    lnw_free(&a->wq);
    lnw_free(&a->wk);
    lnw_free(&a->wv);
    lnw_free(&a->wo);
    ldm_free(a->bo);
}

static ldm_status block_load(lst_block *b, const lub_loader *L, const char *name, int dim, int heads, int dim_head,
                             int context_dim)
{
    char sub[240];
    int64_t d[1] = {dim};
    b->wc = L->wc;
    for (int i = 0; i < 3; i++) {
        LDM_TRY(lub_get(L, 1, d, &b->norm_w[i], "%s.norm%d.weight", name, i + 1));
        LDM_TRY(lub_get(L, 1, d, &b->norm_b[i], "%s.norm%d.bias", name, i + 1));
    }
    LDM_TRY(lub_name(sub, sizeof sub, "%s.attn1", name));
    LDM_TRY(attn_load(&b->attn1, L, sub, dim, dim, heads, dim_head));
    LDM_TRY(lub_name(sub, sizeof sub, "%s.attn2", name));
    LDM_TRY(attn_load(&b->attn2, L, sub, dim, context_dim, heads, dim_head));
    /* FeedForward(dim, mult=4, glu=True): GEGLU proj dim -> 2*4*dim, then Linear 4*dim -> dim */
    int64_t inw[2] = {8 * (int64_t)dim, dim}, inb[1] = {8 * (int64_t)dim}, outw[2] = {dim, 4 * (int64_t)dim};
    LDM_TRY(lub_get_wt(L, 2, inw, &b->ff_in_w, "%s.ff.net.0.proj.weight", name));
    LDM_TRY(lub_get(L, 1, inb, &b->ff_in_b, "%s.ff.net.0.proj.bias", name));
    LDM_TRY(lub_get_wt(L, 2, outw, &b->ff_out_w, "%s.ff.net.2.weight", name));
    return lub_get(L, 1, d, &b->ff_out_b, "%s.ff.net.2.bias", name);
}

static void block_free(lst_block *b)
{
    for (int i = 0; i < 3; i++) {
        ldm_free(b->norm_w[i]);
        ldm_free(b->norm_b[i]);
    }
    attn_free(&b->attn1);
    attn_free(&b->attn2);
    lnw_free(&b->ff_in_w);
    ldm_free(b->ff_in_b);
    lnw_free(&b->ff_out_w);
    ldm_free(b->ff_out_b);
}

ldm_status lst_load(lst *t, const lub_loader *L, const char *name, int ch, int heads, int dim_head, int depth,
                    int context_dim, int use_linear)
{
    char sub[240];
    if (heads <= 0 || dim_head <= 0 || depth <= 0 || context_dim <= 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "unet: %s: bad SpatialTransformer (heads %d, dim_head %d, depth %d, "
                        "context_dim %d)", name, heads, dim_head, depth, context_dim);
    int inner = heads * dim_head;
    /* Stability's Linear proj_out is declared Linear(in_channels, inner_dim): it only works
     * when the two are equal, as in every released config. */
    if (use_linear && inner != ch)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "unet: %s: use_linear_in_transformer needs heads*dim_head (%d) == "
                        "channels (%d)", name, inner, ch);
    t->ch = ch, t->inner = inner, t->heads = heads, t->dim_head = dim_head, t->depth = depth;
    t->context_dim = context_dim, t->use_linear = use_linear;
    LDM_TRY(lub_name(sub, sizeof sub, "%s.norm", name));
    LDM_TRY(lub_norm_load(&t->norm, L, sub, ch, LST_GN_EPS));
    int64_t pin_conv[4] = {inner, ch, 1, 1}, pout_conv[4] = {ch, inner, 1, 1};
    int64_t pin_lin[2] = {inner, ch}, pout_lin[2] = {ch, inner}, pin_b[1] = {inner}, pout_b[1] = {ch};
    int nd = use_linear ? 2 : 4;
    LDM_TRY(lub_get_wt(L, nd, use_linear ? pin_lin : pin_conv, &t->proj_in_w, "%s.proj_in.weight", name));
    LDM_TRY(lub_get(L, 1, pin_b, &t->proj_in_b, "%s.proj_in.bias", name));
    LDM_TRY(lub_get_wt(L, nd, use_linear ? pout_lin : pout_conv, &t->proj_out_w, "%s.proj_out.weight", name));
    LDM_TRY(lub_get(L, 1, pout_b, &t->proj_out_b, "%s.proj_out.bias", name));
    t->blocks = ldm_calloc((size_t)depth, sizeof *t->blocks);
    if (!t->blocks) return ldm_alloc_failure_status();
    for (int i = 0; i < depth; i++) {
        LDM_TRY(lub_name(sub, sizeof sub, "%s.transformer_blocks.%d", name, i));
        LDM_TRY(block_load(&t->blocks[i], L, sub, inner, heads, dim_head, context_dim));
    }
    return LDM_OK;
}

void lst_free(lst *t)
{
    lub_norm_free(&t->norm);
    lnw_free(&t->proj_in_w);
    ldm_free(t->proj_in_b);
    lnw_free(&t->proj_out_w);
    ldm_free(t->proj_out_b);
    t->proj_in_b = t->proj_out_b = NULL;
    if (t->blocks)
        for (int i = 0; i < t->depth; i++) block_free(&t->blocks[i]);
    ldm_free(t->blocks);
    t->blocks = NULL;
}

/* ---------------------------------------------------------------- forward */

/* Scratch of one transformer call (see lst_forward for who uses what when). */
typedef struct lst_scratch {
    float *X;   /* residual stream [B*T, inner] */
    float *n;   /* normed rows / attention output / FF output */
    float *big; /* q, to_out result, GEGLU input [B*T, 8*inner] */
    float *k;   /* keys, GEGLU output [B*T, 4*inner] */
    float *v;   /* values */
} lst_scratch;

/* X += to_out(attention(q = xn Wq, k/v = ctx Wk/Wv)). ctx may be xn itself (self-attention).
 * xn lives in s->n and is dead once k and v exist, so the attention output reuses it. */
static ldm_status cross_attention(const lst_attn *a, const lctx *c, lst_scratch *s, int B, int T, const float *ctx,
                                  int Tk)
{
    int inner = a->heads * a->dim_head, dh = a->dim_head;
    size_t rows = (size_t)B * T;
    LDM_TRY(lk_linear_wt_cached(c, s->n, (int)rows, a->query_dim, a->wq.w, NULL, inner, s->big, a->wc));
    LDM_TRY(lk_linear_wt_cached(c, ctx, B * Tk, a->context_dim, a->wk.w, NULL, inner, s->k, a->wc));
    LDM_TRY(lk_linear_wt_cached(c, ctx, B * Tk, a->context_dim, a->wv.w, NULL, inner, s->v, a->wc));
    /* 'b n (h d)': head h owns channels [h*dh, (h+1)*dh) of each row */
    lk_view q = {s->big, (long)T * inner, dh, inner, 1};
    lk_view k = {s->k, (long)Tk * inner, dh, inner, 1};
    lk_view v = {s->v, (long)Tk * inner, dh, inner, 1};
    lk_view o = {s->n, (long)T * inner, dh, inner, 1};
    float scale = (float)pow((double)dh, -0.5);
    LDM_TRY(lk_attention(c, B, a->heads, T, Tk, dh, q, k, v, o, scale, 0));
    LDM_TRY(lk_linear_wt_cached(c, s->n, (int)rows, inner, a->wo.w, a->bo, a->query_dim, s->big, a->wc));
    lk_add(s->X, s->big, rows * a->query_dim);
    return LDM_OK;
}

/* X += ff(LN3 X) with ff = Linear(4*dim -> dim)(GEGLU(Linear(dim -> 8*dim))). */
static ldm_status feed_forward(const lst_block *b, const lctx *c, lst_scratch *s, int rows, int dim)
{
    lk_layer_norm(c, s->X, rows, dim, LST_LN_EPS, b->norm_w[2], b->norm_b[2], s->n);
    LDM_TRY(lk_linear_wt_cached(c, s->n, rows, dim, b->ff_in_w.w, b->ff_in_b, 8 * dim, s->big, b->wc));
    lk_geglu_ctx(c, s->big, rows, 4 * dim, s->k);
    LDM_TRY(lk_linear_wt_cached(c, s->k, rows, 4 * dim, b->ff_out_w.w, b->ff_out_b, dim, s->n, b->wc));
    lk_add(s->X, s->n, (size_t)rows * dim);
    return LDM_OK;
}

static ldm_status block_forward(const lst_block *b, const lctx *c, lst_scratch *s, int B, int T, const float *context,
                                int ctx_len)
{
    int dim = b->attn1.query_dim, rows = B * T;
    lk_layer_norm(c, s->X, rows, dim, LST_LN_EPS, b->norm_w[0], b->norm_b[0], s->n);
    LDM_TRY(cross_attention(&b->attn1, c, s, B, T, s->n, T));
    lk_layer_norm(c, s->X, rows, dim, LST_LN_EPS, b->norm_w[1], b->norm_b[1], s->n);
    if (context)
        LDM_TRY(cross_attention(&b->attn2, c, s, B, T, context, ctx_len));
    else
        LDM_TRY(cross_attention(&b->attn2, c, s, B, T, s->n, T));
    return feed_forward(b, c, s, rows, dim);
}

static void add_row_bias(float *y, size_t rows, int cols, const float *bias)
{
    for (size_t r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) y[r * cols + j] += bias[j];
}

ldm_status lst_forward(const lst *t, const lctx *c, lub_ws *ws, lub_act *x, const float *context, int ctx_len)
{
    int B = x->B, C = x->C, T = x->H * x->W, inner = t->inner;
    if (C != t->ch)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet SpatialTransformer: expected %d channels, found %d", t->ch, C);
    if (!context && t->context_dim != inner)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet SpatialTransformer: a context [B,T,%d] is required",
                        t->context_dim);
    int Tk = context ? LDM_MAX(T, ctx_len) : T;
    size_t rows = (size_t)B * T, bt_inner = rows * inner, kv = (size_t)B * Tk * inner;
    lst_scratch s;
    s.X = lub_ws_get(ws, 0, bt_inner);
    s.n = lub_ws_get(ws, 1, LDM_MAX(bt_inner, lub_act_numel(x)));
    s.big = lub_ws_get(ws, 2, 8 * bt_inner);
    s.k = lub_ws_get(ws, 3, LDM_MAX(kv, 4 * bt_inner));
    s.v = lub_ws_get(ws, 4, kv);
    if (!s.X || !s.n || !s.big || !s.k || !s.v) return ldm_alloc_failure_status();

    /* norm, then proj_in fused with 'b c h w -> b (h w) c': X[b] = GN(x)[b]^T W_in^T + b_in. A 1x1
     * conv and a Linear on the flattened rows compute the same sums. */
    lk_group_norm(c, x->p, B, C, T, 32, t->norm.eps, t->norm.w, t->norm.b, s.n);
    for (int b = 0; b < B; b++)
        LDM_TRY(lk_gemm_wb(c, 1, s.n + (size_t)b * C * T, T, T, C, t->proj_in_w.w, inner, 0.0f,
                           s.X + (size_t)b * T * inner, inner));
    lk_wt_done(t->proj_in_w.w, (size_t)inner * C);
    add_row_bias(s.X, rows, inner, t->proj_in_b);

    for (int i = 0; i < t->depth; i++) LDM_TRY(block_forward(&t->blocks[i], c, &s, B, T, context, ctx_len));

    /* proj_out fused with 'b (h w) c -> b c h w', accumulated onto the input (the residual) */
    for (int b = 0; b < B; b++) {
        float *xb = x->p + (size_t)b * C * T;
        LDM_TRY(lk_gemm_wa(c, t->proj_out_w.w, C, inner, 1, s.X + (size_t)b * T * inner, inner, T, 1.0f, xb, T));
        lk_add_bias_channels(xb, 1, C, T, t->proj_out_b);
    }
    lk_wt_done(t->proj_out_w.w, (size_t)C * inner);
    return LDM_OK;
}
