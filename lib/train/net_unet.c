/* net_unet.c - openaimodel.UNetModel on the training tape: the structure of lib/models/unet.c
 * (which block goes where, the skip bookkeeping, the head arithmetic of __init__), each block
 * written with tape operations, parameters named as the reference's state dict. */
#include "nets.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define GN_GROUPS 32
#define GN_EPS_RES 1e-5f /* GroupNorm32 (normalization()) */
#define GN_EPS_XF 1e-6f  /* attention.Normalize */
#define LN_EPS 1e-5f

typedef struct unet_ctx {
    ltp_tape *t;
    ltp_params *ps;
    const char *prefix;
    const ld_unet *d;
    ltp_id emb;     /* SiLU(emb) [B, 4*model_channels] (every ResBlock's emb_layers start with SiLU) */
    ltp_id context; /* [B, T, context_dim] */
    int num_heads;  /* mutated by the head arithmetic as in __init__ */
} unet_ctx;

/* The tape error for a failed ltp_params_get (its message is in ldm_last_error). */
static ltp_id param(unet_ctx *u, int ndim, const int64_t *shape, ltp_init init, int64_t fan_in, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static ltp_id param(unet_ctx *u, int ndim, const int64_t *shape, ltp_init init, int64_t fan_in, const char *fmt, ...)
{
    if (ltp_status(u->t) != LDM_OK) return LTP_NONE;
    char name[LTP_NAME_MAX], full[LTP_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int m = snprintf(full, sizeof full, "%s%s", u->prefix, name);
    if (n < 0 || m < 0 || (size_t)m >= sizeof full) return ltp_fail(u->t, LDM_ERR_INVALID_ARGUMENT, "unet: name too long");
    return ltp_param_ref(u->t, ltp_params_get(u->ps, full, ndim, shape, init, fan_in));
}

/* buf = a + b, cut at LTP_NAME_MAX - 1 bytes (ltp_params_get then refuses the name as too long
 * only if it hits the limit, which no UNet name does). */
static void join(char buf[LTP_NAME_MAX], const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > LTP_NAME_MAX - 1) la = LTP_NAME_MAX - 1;
    if (lb > LTP_NAME_MAX - 1 - la) lb = LTP_NAME_MAX - 1 - la;
    memcpy(buf, a, la);
    memcpy(buf + la, b, lb);
    buf[la + lb] = 0;
}

/* nn.Conv2d(in, out, k, stride, padding k/2): weight and bias, torch's default init, or zeros
 * for a zero_module layer. */
static ltp_id conv(unet_ctx *u, const char *name, ltp_id x, int in, int out, int k, int stride, int zero)
{
    int64_t ws[4] = {out, in, k, k}, bs[1] = {out};
    ltp_init init = zero ? LTP_INIT_ZERO : LTP_INIT_UNIFORM;
    int64_t fan_in = (int64_t)in * k * k;
    ltp_id w = param(u, 4, ws, init, fan_in, "%s.weight", name);
    ltp_id b = param(u, 1, bs, init, fan_in, "%s.bias", name);
    return ltp_conv2d(u->t, x, w, b, stride, k / 2);
}

static ltp_id linear(unet_ctx *u, const char *name, ltp_id x, int in, int out, int bias, int zero)
{
    int64_t ws[2] = {out, in}, bs[1] = {out};
    ltp_init init = zero ? LTP_INIT_ZERO : LTP_INIT_UNIFORM;
    ltp_id w = param(u, 2, ws, init, in, "%s.weight", name);
    ltp_id b = bias ? param(u, 1, bs, init, in, "%s.bias", name) : LTP_NONE;
    return ltp_linear(u->t, x, w, b);
}

static ltp_id norm_params(unet_ctx *u, const char *name, int ch, ltp_id *beta)
{
    int64_t s[1] = {ch};
    ltp_id g = param(u, 1, s, LTP_INIT_ONE, 0, "%s.weight", name);
    *beta = param(u, 1, s, LTP_INIT_ZERO, 0, "%s.bias", name);
    return g;
}

static ltp_id group_norm(unet_ctx *u, const char *name, ltp_id x, int ch, float eps)
{
    ltp_id beta, gamma = norm_params(u, name, ch, &beta);
    return ltp_group_norm(u->t, x, GN_GROUPS, eps, gamma, beta);
}

static ltp_id layer_norm(unet_ctx *u, const char *name, ltp_id x, int dim)
{
    ltp_id beta, gamma = norm_params(u, name, dim, &beta);
    return ltp_layer_norm(u->t, x, LN_EPS, gamma, beta);
}

enum { UPDOWN_NONE, UPDOWN_UP, UPDOWN_DOWN };

/* Upsample / Downsample without convolution (ResBlock's h_upd and x_upd). */
static ltp_id resample(ltp_tape *t, ltp_id x, int updown)
{
    if (updown == UPDOWN_UP) return ltp_upsample_nearest2(t, x);
    return updown == UPDOWN_DOWN ? ltp_avg_pool2(t, x) : x;
}

/* ResBlock(in -> out) with emb: in_layers (GN, SiLU, [h_upd], conv), emb_layers, out_layers (GN
 * [FiLM], SiLU, Dropout, zero conv), skip_connection on x (x_upd first when up or down). */
static ltp_id resblock(unet_ctx *u, const char *name, ltp_id x, int in, int out, int updown)
{
    char sub[LTP_NAME_MAX];
    int E = 4 * u->d->model_channels, ss = u->d->use_scale_shift_norm;
    join(sub, name, ".in_layers.0");
    ltp_id h = resample(u->t, ltp_silu(u->t, group_norm(u, sub, x, in, GN_EPS_RES)), updown);
    x = resample(u->t, x, updown);
    join(sub, name, ".in_layers.2");
    h = conv(u, sub, h, in, out, 3, 1, 0);
    join(sub, name, ".emb_layers.1");
    ltp_id e = linear(u, sub, u->emb, E, ss ? 2 * out : out, 1, 0);
    join(sub, name, ".out_layers.0");
    if (ss) {
        h = ltp_film(u->t, group_norm(u, sub, h, out, GN_EPS_RES), e);
    } else {
        h = group_norm(u, sub, ltp_add_channel_bias(u->t, h, e), out, GN_EPS_RES);
    }
    h = ltp_silu(u->t, h);
    join(sub, name, ".out_layers.2");
    h = ltp_dropout(u->t, h, (float)u->d->dropout, ltp_site_hash(sub));
    join(sub, name, ".out_layers.3");
    h = conv(u, sub, h, out, out, 3, 1, 1); /* zero_module */
    ltp_id skip = x;
    if (in != out) {
        join(sub, name, ".skip_connection");
        skip = conv(u, sub, x, in, out, 1, 1, 0);
    }
    return ltp_add(u->t, skip, h);
}

/* CrossAttention: x [B,T,dim], ctx [B,Tk,cdim] (x itself for self-attention). */
static ltp_id cross_attention(unet_ctx *u, const char *name, ltp_id x, ltp_id ctx, int dim, int cdim, int heads,
                              int dim_head)
{
    char sub[LTP_NAME_MAX];
    int inner = heads * dim_head;
    join(sub, name, ".to_q");
    ltp_id q = linear(u, sub, x, dim, inner, 0, 0);
    join(sub, name, ".to_k");
    ltp_id k = linear(u, sub, ctx, cdim, inner, 0, 0);
    join(sub, name, ".to_v");
    ltp_id v = linear(u, sub, ctx, cdim, inner, 0, 0);
    ltp_id a = ltp_attention(u->t, q, k, v, heads);
    join(sub, name, ".to_out.0");
    return linear(u, sub, a, inner, dim, 1, 0);
}

/* BasicTransformerBlock: x + attn1(LN1 x), + attn2(LN2 x, context), + ff(LN3 x). */
static ltp_id transformer_block(unet_ctx *u, const char *name, ltp_id x, int dim, int heads, int dim_head)
{
    char sub[LTP_NAME_MAX], nn[LTP_NAME_MAX];
    join(nn, name, ".norm1");
    join(sub, name, ".attn1");
    ltp_id n1 = layer_norm(u, nn, x, dim);
    x = ltp_add(u->t, x, cross_attention(u, sub, n1, n1, dim, dim, heads, dim_head));
    join(nn, name, ".norm2");
    join(sub, name, ".attn2");
    ltp_id n2 = layer_norm(u, nn, x, dim);
    x = ltp_add(u->t, x, cross_attention(u, sub, n2, u->context, dim, u->d->context_dim, heads, dim_head));
    join(nn, name, ".norm3");
    ltp_id n3 = layer_norm(u, nn, x, dim);
    join(sub, name, ".ff.net.0.proj");
    ltp_id f = ltp_geglu(u->t, linear(u, sub, n3, dim, 8 * dim, 1, 0));
    join(sub, name, ".ff.net.2");
    return ltp_add(u->t, x, linear(u, sub, f, 4 * dim, dim, 1, 0));
}

/* SpatialTransformer on x [B,ch,H,W]: GN, proj_in (1x1 conv, or Linear after the rearrange),
 * blocks, proj_out (zero_module), + x. */
static ltp_id spatial_transformer(unet_ctx *u, const char *name, ltp_id x, int ch, int heads, int dim_head)
{
    char sub[LTP_NAME_MAX];
    ltp_tape *t = u->t;
    int inner = heads * dim_head, lin = u->d->use_linear_in_transformer;
    int H = (int)ltp_dim(t, x, 2), W = (int)ltp_dim(t, x, 3);
    if (lin && inner != ch)
        return ltp_fail(t, LDM_ERR_UNSUPPORTED, "unet: %s: use_linear_in_transformer needs heads*dim_head == channels",
                        name);
    join(sub, name, ".norm");
    ltp_id h = group_norm(u, sub, x, ch, GN_EPS_XF);
    join(sub, name, ".proj_in");
    if (lin) {
        h = linear(u, sub, ltp_nchw_to_nlc(t, h), ch, inner, 1, 0);
    } else {
        h = ltp_nchw_to_nlc(t, conv(u, sub, h, ch, inner, 1, 1, 0));
    }
    for (int i = 0; i < u->d->transformer_depth; i++) {
        snprintf(sub, sizeof sub, "%s.transformer_blocks.%d", name, i);
        h = transformer_block(u, sub, h, inner, heads, dim_head);
    }
    join(sub, name, ".proj_out");
    if (lin) {
        /* Stability's zero_module(Linear(in_channels, inner_dim)) on rows: weight [inner, ch] */
        h = ltp_nlc_to_nchw(t, linear(u, sub, h, inner, ch, 1, 1), H, W);
    } else {
        h = conv(u, sub, ltp_nlc_to_nchw(t, h, H, W), inner, ch, 1, 1, 1);
    }
    return ltp_add(t, h, x);
}

/* The (heads, dim_head) of an attention layer on ch channels, as UNetModel.__init__ computes them. */
static int attention_dims(unet_ctx *u, const char *name, int ch, int *heads, int *dim_head)
{
    const ld_unet *d = u->d;
    if (d->num_head_channels <= 0) {
        if (u->num_heads <= 0) {
            ltp_fail(u->t, LDM_ERR_UNSUPPORTED, "unet: %s: num_heads or num_head_channels must be set", name);
            return 0;
        }
        *dim_head = ch / u->num_heads;
    } else {
        u->num_heads = ch / d->num_head_channels;
        *dim_head = d->num_head_channels;
    }
    if (d->legacy) *dim_head = u->num_heads > 0 ? ch / u->num_heads : 0;
    *heads = u->num_heads;
    if (*heads <= 0 || *dim_head <= 0) {
        ltp_fail(u->t, LDM_ERR_UNSUPPORTED, "unet: %s: bad attention heads for %d channels", name, ch);
        return 0;
    }
    return 1;
}

/* A Conv1d(in, out, 1) of the reference (weight [out, in, 1]) on x [B,in,H,W] as a 1x1 conv. */
static ltp_id conv1d_1x1(unet_ctx *u, const char *name, ltp_id x, int in, int out, int zero)
{
    int64_t ws[3] = {out, in, 1}, w4[4] = {out, in, 1, 1}, bs[1] = {out};
    ltp_init init = zero ? LTP_INIT_ZERO : LTP_INIT_UNIFORM;
    ltp_id w = ltp_reshape(u->t, param(u, 3, ws, init, in, "%s.weight", name), 4, w4);
    ltp_id b = param(u, 1, bs, init, in, "%s.bias", name);
    return ltp_conv2d(u->t, x, w, b, 1, 0);
}

/* The q, k or v (part 0, 1, 2) channels of the fused qkv [B, 3*heads*D, ...]: QKVAttentionLegacy
 * reshapes to [B*heads, 3*D, T] first (each head owns a q, k, v run of D channels),
 * QKVAttention (new order) chunks into q, k, v first; either way output channel h*D + d. */
static ltp_id qkv_part(ltp_tape *t, ltp_id qkv, int heads, int D, int new_order, int part)
{
    int C = heads * D;
    int *idx = ldm_malloc(sizeof(int) * (size_t)C);
    if (!idx) return ltp_fail(t, LDM_ERR_OUT_OF_MEMORY, "unet: %s", ldm_last_error());
    for (int h = 0; h < heads; h++)
        for (int d = 0; d < D; d++) idx[h * D + d] = new_order ? part * C + h * D + d : h * 3 * D + part * D + d;
    ltp_id y = ltp_gather_channels(t, qkv, idx, C);
    ldm_free(idx);
    return y;
}

/* openaimodel.AttentionBlock: x + proj_out(attention(qkv(GN x))), self-attention over H*W
 * positions with `heads` heads of D channels. The reference scales q and k by D^-1/4 each, this
 * the product by D^-1/2 (float rounding apart, the same). */
static ltp_id attention_block(unet_ctx *u, const char *name, ltp_id x, int ch, int heads)
{
    char sub[LTP_NAME_MAX];
    ltp_tape *t = u->t;
    int H = (int)ltp_dim(t, x, 2), W = (int)ltp_dim(t, x, 3), D = ch / heads, no = u->d->use_new_attention_order;
    join(sub, name, ".norm");
    ltp_id h = group_norm(u, sub, x, ch, GN_EPS_RES);
    join(sub, name, ".qkv");
    ltp_id qkv = conv1d_1x1(u, sub, h, ch, 3 * ch, 0);
    ltp_id q = ltp_nchw_to_nlc(t, qkv_part(t, qkv, heads, D, no, 0));
    ltp_id k = ltp_nchw_to_nlc(t, qkv_part(t, qkv, heads, D, no, 1));
    ltp_id v = ltp_nchw_to_nlc(t, qkv_part(t, qkv, heads, D, no, 2));
    ltp_id a = ltp_nlc_to_nchw(t, ltp_attention(t, q, k, v, heads), H, W);
    join(sub, name, ".proj_out");
    return ltp_add(t, x, conv1d_1x1(u, sub, a, ch, ch, 1)); /* zero_module */
}

/* ---- blocks, run directly or as checkpointed segments (tape.h: ltp_segment) */

enum { BLOCK_RES, BLOCK_XF, BLOCK_ATTN };

typedef struct block_args {
    ltp_params *ps;
    const char *prefix;
    const ld_unet *d;
    int kind;
    char name[64]; /* UNet block names are short ("output_blocks.11.1") */
    int in, out, updown, heads, dim_head;
} block_args;

static ltp_id block_body(unet_ctx *u, const block_args *a, ltp_id x)
{
    switch (a->kind) {
    case BLOCK_RES: return resblock(u, a->name, x, a->in, a->out, a->updown);
    case BLOCK_XF: return spatial_transformer(u, a->name, x, a->in, a->heads, a->dim_head);
    default: return attention_block(u, a->name, x, a->in, a->heads);
    }
}

/* The segment function: the block on the sub-tape, inputs (x, emb or context). */
static ltp_id block_segment(ltp_tape *sub, const void *ctx, const ltp_id *in, int n_in)
{
    const block_args *a = ctx;
    unet_ctx u = {sub, a->ps, a->prefix, a->d, LTP_NONE, LTP_NONE, a->heads};
    if (a->kind == BLOCK_RES) u.emb = n_in > 1 ? in[1] : LTP_NONE;
    if (a->kind == BLOCK_XF) u.context = n_in > 1 ? in[1] : LTP_NONE;
    return block_body(&u, a, in[0]);
}

/* Runs a block; through a segment when the model uses checkpointing (use_checkpoint: always
 * recomputed) or the tape has an activation budget (recomputed when over it). */
static ltp_id block(unet_ctx *u, block_args *a, ltp_id x)
{
    if (ltp_status(u->t) != LDM_OK) return LTP_NONE;
    if (!u->d->use_checkpoint && ltp_activation_budget(u->t) == 0) return block_body(u, a, x);
    a->ps = u->ps, a->prefix = u->prefix, a->d = u->d;
    ltp_id in[2] = {x, a->kind == BLOCK_RES ? u->emb : u->context};
    int n_in = a->kind == BLOCK_ATTN || in[1] == LTP_NONE ? 1 : 2;
    return ltp_segment(u->t, block_segment, a, sizeof *a, in, n_in, u->d->use_checkpoint);
}

static ltp_id res_block(unet_ctx *u, const char *name, ltp_id x, int in, int out, int updown)
{
    block_args a = {.kind = BLOCK_RES, .in = in, .out = out, .updown = updown};
    snprintf(a.name, sizeof a.name, "%.63s", name);
    return block(u, &a, x);
}

static ltp_id attention_layer(unet_ctx *u, const char *name, ltp_id h, int ch)
{
    block_args a = {.kind = u->d->use_spatial_transformer ? BLOCK_XF : BLOCK_ATTN, .in = ch};
    snprintf(a.name, sizeof a.name, "%.63s", name);
    if (!attention_dims(u, name, ch, &a.heads, &a.dim_head)) return LTP_NONE;
    return block(u, &a, h);
}

static int has_attention(const ld_unet *d, int ds)
{
    for (int i = 0; i < d->n_attention_resolutions; i++)
        if (d->attention_resolutions[i] == ds) return 1;
    return 0;
}

/* emb = SiLU(time_embed(timestep_embedding(t)) [+ label_emb(y)]). */
static ltp_id embedding(unet_ctx *u, const float *timesteps, int B, int labels)
{
    ltp_tape *t = u->t;
    int mc = u->d->model_channels, E = 4 * mc;
    float *temb = ldm_malloc(sizeof(float) * (size_t)B * mc);
    if (!temb) return ltp_fail(t, LDM_ERR_OUT_OF_MEMORY, "unet: %s", ldm_last_error());
    ltn_timestep_embedding(timesteps, B, mc, temb);
    int64_t s[2] = {B, mc};
    ltp_id te = ltp_input(t, 2, s, temb, 0);
    ldm_free(temb);
    ltp_id h = ltp_silu(t, linear(u, "time_embed.0", te, mc, E, 1, 0));
    h = linear(u, "time_embed.2", h, E, E, 1, 0);
    if (u->d->num_classes > 0) {
        if (labels < 0) return ltp_fail(t, LDM_ERR_INVALID_ARGUMENT, "unet: class-conditional model without labels");
        int64_t ls[2] = {u->d->num_classes, E};
        h = ltp_add(t, h, ltp_embedding(t, param(u, 2, ls, LTP_INIT_NORMAL, 0, "label_emb.weight"), labels));
    }
    return ltp_silu(t, h);
}

void ltn_timestep_embedding(const float *t, int B, int dim, float *out)
{
    int half = dim / 2;
    float neg_log = (float)(-log(10000.0));
    for (int b = 0; b < B; b++) {
        float *row = out + (size_t)b * dim;
        for (int i = 0; i < half; i++) {
            float arg = t[b] * expf((neg_log * (float)i) / (float)half);
            row[i] = (float)cos((double)arg);
            row[half + i] = (float)sin((double)arg);
        }
        if (dim % 2) row[dim - 1] = 0.0f;
    }
}

#define MAX_SKIPS 256

ltp_id ltn_unet_forward(ltp_tape *t, ltp_params *ps, const char *prefix, const ld_unet *d, ltp_id x,
                        const float *timesteps, ltp_id context, int labels)
{
    if (!t || ltp_status(t) != LDM_OK) return LTP_NONE;
    if (!ps || !d || !timesteps) return ltp_fail(t, LDM_ERR_INVALID_ARGUMENT, "unet: NULL argument");
    if (d->use_spatial_transformer && context == LTP_NONE)
        return ltp_fail(t, LDM_ERR_INVALID_ARGUMENT, "unet: SpatialTransformer model without context");
    unet_ctx u = {t, ps, prefix ? prefix : "", d, LTP_NONE, context, d->num_heads};
    int B = (int)ltp_dim(t, x, 0);
    u.emb = embedding(&u, timesteps, B, labels);

    ltp_id skips[MAX_SKIPS];
    int skip_ch[MAX_SKIPS], n_skips = 0;
    char name[LTP_NAME_MAX];
    int ch = d->model_channels, ds = 1, k = 0;
    ltp_id h = conv(&u, "input_blocks.0.0", x, d->in_channels, ch, 3, 1, 0);
    skips[n_skips] = h, skip_ch[n_skips++] = ch, k++;
    for (int level = 0; level < d->n_levels; level++) {
        int mult_ch = d->channel_mult[level] * d->model_channels;
        for (int r = 0; r < d->num_res_blocks; r++, k++) {
            snprintf(name, sizeof name, "input_blocks.%d.0", k);
            h = res_block(&u, name, h, ch, mult_ch, UPDOWN_NONE);
            ch = mult_ch;
            if (has_attention(d, ds)) {
                snprintf(name, sizeof name, "input_blocks.%d.1", k);
                h = attention_layer(&u, name, h, ch);
            }
            if (n_skips == MAX_SKIPS) return ltp_fail(t, LDM_ERR_LIMIT, "unet: too many blocks");
            skips[n_skips] = h, skip_ch[n_skips++] = ch;
        }
        if (level != d->n_levels - 1) {
            if (d->resblock_updown) {
                snprintf(name, sizeof name, "input_blocks.%d.0", k++);
                h = res_block(&u, name, h, ch, ch, UPDOWN_DOWN);
            } else if (d->no_conv_resample) { /* Downsample(use_conv=False): AvgPool2d(2, 2) */
                k++;
                h = ltp_avg_pool2(t, h);
            } else {
                snprintf(name, sizeof name, "input_blocks.%d.0.op", k++);
                h = conv(&u, name, h, ch, ch, 3, 2, 0);
            }
            if (n_skips == MAX_SKIPS) return ltp_fail(t, LDM_ERR_LIMIT, "unet: too many blocks");
            skips[n_skips] = h, skip_ch[n_skips++] = ch;
            ds *= 2;
        }
    }
    h = res_block(&u, "middle_block.0", h, ch, ch, UPDOWN_NONE);
    h = attention_layer(&u, "middle_block.1", h, ch);
    h = res_block(&u, "middle_block.2", h, ch, ch, UPDOWN_NONE);
    k = 0;
    for (int level = d->n_levels - 1; level >= 0; level--) {
        for (int i = 0; i <= d->num_res_blocks; i++, k++) {
            int mult_ch = d->model_channels * d->channel_mult[level];
            n_skips--;
            snprintf(name, sizeof name, "output_blocks.%d.0", k);
            h = res_block(&u, name, ltp_concat_channels(t, h, skips[n_skips]), ch + skip_ch[n_skips], mult_ch,
                          UPDOWN_NONE);
            ch = mult_ch;
            int sub = 1;
            if (has_attention(d, ds)) {
                snprintf(name, sizeof name, "output_blocks.%d.1", k);
                h = attention_layer(&u, name, h, ch);
                sub = 2;
            }
            if (level && i == d->num_res_blocks) {
                if (d->resblock_updown) {
                    snprintf(name, sizeof name, "output_blocks.%d.%d", k, sub);
                    h = res_block(&u, name, h, ch, ch, UPDOWN_UP);
                } else if (d->no_conv_resample) { /* Upsample(use_conv=False): nearest x2 only */
                    h = ltp_upsample_nearest2(t, h);
                } else {
                    snprintf(name, sizeof name, "output_blocks.%d.%d.conv", k, sub);
                    h = conv(&u, name, ltp_upsample_nearest2(t, h), ch, ch, 3, 1, 0);
                }
                ds /= 2;
            }
        }
    }
    h = ltp_silu(t, group_norm(&u, "out.0", h, ch, GN_EPS_RES));
    return conv(&u, "out.2", h, ch, d->out_channels, 3, 1, 1); /* zero_module */
}

ltp_id ltn_class_embed(ltp_tape *t, ltp_params *ps, const char *prefix, int n_classes, int embed_dim, int labels)
{
    if (!t || ltp_status(t) != LDM_OK) return LTP_NONE;
    unet_ctx u = {t, ps, prefix ? prefix : "", NULL, LTP_NONE, LTP_NONE, 0};
    int64_t s[2] = {n_classes, embed_dim};
    ltp_id e = ltp_embedding(t, param(&u, 2, s, LTP_INIT_NORMAL, 0, "embedding.weight"), labels);
    int64_t shape[3] = {ltp_dim(t, e, 0), 1, embed_dim};
    return ltp_reshape(t, e, 3, shape);
}
