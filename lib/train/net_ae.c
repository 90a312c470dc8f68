/* net_ae.c - the KL autoencoder (ldm.models.autoencoder.AutoencoderKL with the Encoder and Decoder
 * of ldm/modules/diffusionmodules/model.py) as tape operations, for training (nets.h). The layout,
 * the parameter names and the channel bookkeeping are those of lib/models/ae_coder.c, which reads
 * the same state dict for inference:
 *  - Normalize = GroupNorm(32, eps 1e-6, affine); ResnetBlock without temb: x' + conv2(silu(norm2(
 *    conv1(silu(norm1(x)))))) with x' = nin_shortcut(x) (1x1) when the channel count changes;
 *  - AttnBlock: x + proj_out(attention(q, k, v)) with q, k, v 1x1 convs of norm(x), one head of
 *    C channels over the h*w positions (softmax(q k^T / sqrt(C)) v);
 *  - Downsample: F.pad(x, (0,1,0,1)), then a stride-2 3x3 conv; Upsample: nearest x2, 3x3 conv;
 *  - attention levels from the CONFIG resolution, never from the input size; the mid block has
 *    attention unless attn_type is "none" (which also drops the level attention).
 * Initialisation: torch's defaults (Conv2d weight and bias U(+-1/sqrt(in*k*k)), GroupNorm 1 / 0);
 * the reference autoencoder has no zero_module layer. */
#include "nets.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define AE_GROUPS 32
#define AE_EPS 1e-6f

typedef struct net {
    ltp_tape *t;
    ltp_params *ps;
    const char *prefix;
    const ld_autoencoder *d;
} net;

/* "<prefix><module>" into buf; latches an error when it does not fit. */
static int modname(const net *n, char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int modname(const net *n, char *buf, size_t cap, const char *fmt, ...)
{
    int k = snprintf(buf, cap, "%s", n->prefix);
    if (k < 0 || (size_t)k >= cap) goto too_long;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + k, cap - (size_t)k, fmt, ap);
    va_end(ap);
    if (m < 0 || (size_t)(k + m) >= cap) goto too_long;
    return 1;
too_long:
    ltp_fail(n->t, LDM_ERR_INVALID_ARGUMENT, "autoencoder: parameter name too long (prefix \"%s\")", n->prefix);
    return 0;
}

/* The parameter "<module>.<leaf>" on the tape (created with `init` on first use). */
static ltp_id param(const net *n, const char *module, const char *leaf, int ndim, const int64_t *shape,
                    ltp_init init, int64_t fan_in)
{
    if (ltp_status(n->t) != LDM_OK) return LTP_NONE;
    char name[LTP_NAME_MAX];
    int k = snprintf(name, sizeof name, "%s.%s", module, leaf);
    if (k < 0 || (size_t)k >= sizeof name)
        return ltp_fail(n->t, LDM_ERR_INVALID_ARGUMENT, "autoencoder: parameter name %s.%s too long", module, leaf);
    ltp_param *p = ltp_params_get(n->ps, name, ndim, shape, init, fan_in);
    if (!p) {
        /* an existing parameter of another shape, else the allocation failed */
        ldm_status st = ltp_params_find(n->ps, name) ? LDM_ERR_INVALID_ARGUMENT : ldm_alloc_failure_status();
        return ltp_fail(n->t, st, "autoencoder: %s", ldm_last_error());
    }
    return ltp_param_ref(n->t, p);
}

/* torch.nn.Conv2d(in, out, k) named `module`, applied with the given stride and padding. */
static ltp_id conv(const net *n, const char *module, ltp_id x, int in, int out, int k, int stride, int pt, int pl,
                   int pb, int pr)
{
    int64_t fan_in = (int64_t)in * k * k;
    ltp_id w = param(n, module, "weight", 4, (int64_t[]){out, in, k, k}, LTP_INIT_UNIFORM, fan_in);
    ltp_id b = param(n, module, "bias", 1, (int64_t[]){out}, LTP_INIT_UNIFORM, fan_in);
    return ltp_conv2d_pad(n->t, x, w, b, stride, pt, pl, pb, pr);
}

/* The "same" convolutions: stride 1, padding k/2 on every side. */
static ltp_id conv_same(const net *n, const char *module, ltp_id x, int in, int out, int k)
{
    return conv(n, module, x, in, out, k, 1, k / 2, k / 2, k / 2, k / 2);
}

/* Normalize(C), optionally followed by swish (nonlinearity). */
static ltp_id norm(const net *n, const char *module, ltp_id x, int c, int silu)
{
    ltp_id g = param(n, module, "weight", 1, (int64_t[]){c}, LTP_INIT_ONE, 0);
    ltp_id b = param(n, module, "bias", 1, (int64_t[]){c}, LTP_INIT_ZERO, 0);
    ltp_id y = ltp_group_norm(n->t, x, AE_GROUPS, AE_EPS, g, b);
    return silu ? ltp_silu(n->t, y) : y;
}

/* "<name>.<part>" (name already carries the prefix). */
static int sub(const net *n, char *buf, size_t cap, const char *name, const char *part)
{
    int k = snprintf(buf, cap, "%s.%s", name, part);
    if (k >= 0 && (size_t)k < cap) return 1;
    ltp_fail(n->t, LDM_ERR_INVALID_ARGUMENT, "autoencoder: module name %s.%s too long", name, part);
    return 0;
}

static ltp_id resblock(const net *n, const char *name, ltp_id x, int in, int out)
{
    char m[LTP_NAME_MAX];
    if (!sub(n, m, sizeof m, name, "norm1")) return LTP_NONE;
    ltp_id h = norm(n, m, x, in, 1);
    if (!sub(n, m, sizeof m, name, "conv1")) return LTP_NONE;
    h = conv_same(n, m, h, in, out, 3);
    if (!sub(n, m, sizeof m, name, "norm2")) return LTP_NONE;
    h = norm(n, m, h, out, 1);
    /* dropout: identity (the reference's dropout is 0.0) */
    if (!sub(n, m, sizeof m, name, "conv2")) return LTP_NONE;
    h = conv_same(n, m, h, out, out, 3);
    if (in != out) {
        if (!sub(n, m, sizeof m, name, "nin_shortcut")) return LTP_NONE;
        x = conv_same(n, m, x, in, out, 1);
    }
    return ltp_add(n->t, x, h);
}

static ltp_id attnblock(const net *n, const char *name, ltp_id x, int c)
{
    char m[LTP_NAME_MAX];
    int H = (int)ltp_dim(n->t, x, 2), W = (int)ltp_dim(n->t, x, 3);
    if (!sub(n, m, sizeof m, name, "norm")) return LTP_NONE;
    ltp_id h = norm(n, m, x, c, 0);
    static const char *const parts[3] = {"q", "k", "v"};
    ltp_id qkv[3];
    for (int i = 0; i < 3; i++) {
        if (!sub(n, m, sizeof m, name, parts[i])) return LTP_NONE;
        qkv[i] = ltp_nchw_to_nlc(n->t, conv_same(n, m, h, c, c, 1)); /* [B, h*w, C] */
    }
    ltp_id a = ltp_attention(n->t, qkv[0], qkv[1], qkv[2], 1);
    a = ltp_nlc_to_nchw(n->t, a, H, W);
    if (!sub(n, m, sizeof m, name, "proj_out")) return LTP_NONE;
    return ltp_add(n->t, x, conv_same(n, m, a, c, c, 1));
}

static int attn_at(const ld_autoencoder *d, int res)
{
    if (d->attn_none) return 0;
    for (int i = 0; i < d->n_attn_resolutions; i++)
        if (d->attn_resolutions[i] == res) return 1;
    return 0;
}

/* One level: `nb` ResnetBlocks "<coder>.<kind>.<level>.block.<j>" (the first in -> out), each
 * followed by "<coder>.<kind>.<level>.attn.<j>" when `attn`. */
static ltp_id level(const net *n, const char *coder, const char *kind, int lv, int nb, ltp_id h, int in, int out,
                    int attn)
{
    char m[LTP_NAME_MAX];
    for (int j = 0; j < nb; j++) {
        if (!modname(n, m, sizeof m, "%s.%s.%d.block.%d", coder, kind, lv, j)) return LTP_NONE;
        h = resblock(n, m, h, j == 0 ? in : out, out);
        if (attn) {
            if (!modname(n, m, sizeof m, "%s.%s.%d.attn.%d", coder, kind, lv, j)) return LTP_NONE;
            h = attnblock(n, m, h, out);
        }
    }
    return h;
}

static ltp_id mid(const net *n, const char *coder, ltp_id h, int c)
{
    char m[LTP_NAME_MAX];
    if (!modname(n, m, sizeof m, "%s.mid.block_1", coder)) return LTP_NONE;
    h = resblock(n, m, h, c, c);
    if (!n->d->attn_none) {
        if (!modname(n, m, sizeof m, "%s.mid.attn_1", coder)) return LTP_NONE;
        h = attnblock(n, m, h, c);
    }
    if (!modname(n, m, sizeof m, "%s.mid.block_2", coder)) return LTP_NONE;
    return resblock(n, m, h, c, c);
}

/* norm_out, swish, conv_out. */
static ltp_id tail(const net *n, const char *coder, ltp_id h, int c, int out)
{
    char m[LTP_NAME_MAX];
    if (!modname(n, m, sizeof m, "%s.norm_out", coder)) return LTP_NONE;
    h = norm(n, m, h, c, 1);
    if (!modname(n, m, sizeof m, "%s.conv_out", coder)) return LTP_NONE;
    return conv_same(n, m, h, c, out, 3);
}

static ltp_id encoder(const net *n, ltp_id x)
{
    const ld_autoencoder *d = n->d;
    char m[LTP_NAME_MAX];
    int L = d->n_levels, ch = d->ch;
    if (!modname(n, m, sizeof m, "encoder.conv_in")) return LTP_NONE;
    ltp_id h = conv_same(n, m, x, d->in_channels, ch, 3);
    int curr_res = d->resolution, block_in = ch;
    for (int i = 0; i < L; i++) {
        block_in = ch * (i == 0 ? 1 : d->ch_mult[i - 1]);
        int block_out = ch * d->ch_mult[i];
        h = level(n, "encoder", "down", i, d->num_res_blocks, h, block_in, block_out, attn_at(d, curr_res));
        if (d->num_res_blocks > 0) block_in = block_out;
        if (i != L - 1) {
            if (!modname(n, m, sizeof m, "encoder.down.%d.downsample.conv", i)) return LTP_NONE;
            h = conv(n, m, h, block_in, block_in, 3, 2, 0, 0, 1, 1); /* F.pad (0,1,0,1), stride 2 */
            curr_res /= 2;
        }
    }
    h = mid(n, "encoder", h, block_in);
    return tail(n, "encoder", h, block_in, d->double_z ? 2 * d->z_channels : d->z_channels);
}

static ltp_id decoder(const net *n, ltp_id z)
{
    const ld_autoencoder *d = n->d;
    char m[LTP_NAME_MAX];
    int L = d->n_levels, ch = d->ch;
    int block_in = ch * d->ch_mult[L - 1];
    int curr_res = d->resolution >> (L - 1);
    if (!modname(n, m, sizeof m, "decoder.conv_in")) return LTP_NONE;
    ltp_id h = conv_same(n, m, z, d->z_channels, block_in, 3);
    h = mid(n, "decoder", h, block_in);
    for (int i = L - 1; i >= 0; i--) {
        int block_out = ch * d->ch_mult[i];
        h = level(n, "decoder", "up", i, d->num_res_blocks + 1, h, block_in, block_out, attn_at(d, curr_res));
        block_in = block_out;
        if (i != 0) {
            if (!modname(n, m, sizeof m, "decoder.up.%d.upsample.conv", i)) return LTP_NONE;
            h = conv_same(n, m, ltp_upsample_nearest2(n->t, h), block_in, block_in, 3);
            curr_res *= 2;
        }
    }
    return tail(n, "decoder", h, block_in, d->out_ch);
}

/* What the tape supports: AutoencoderKL with a sane description. */
static int check_desc(ltp_tape *t, const ltp_params *ps, const ld_autoencoder *d)
{
    if (!d || !ps) return ltp_fail(t, LDM_ERR_INVALID_ARGUMENT, "autoencoder: no description or parameter set"), 0;
    if (d->is_vq)
        return ltp_fail(t, LDM_ERR_UNSUPPORTED, "autoencoder: training a VQ first stage is not supported (KL only)"), 0;
    if (!d->double_z)
        return ltp_fail(t, LDM_ERR_UNSUPPORTED, "autoencoder: AutoencoderKL needs double_z true"), 0;
    if (d->n_levels < 1 || d->n_levels > LD_MAX_LEVELS || d->ch < 1 || d->in_channels < 1 || d->out_ch < 1 ||
        d->z_channels < 1 || d->embed_dim < 1 || d->num_res_blocks < 0 || d->resolution < 0)
        return ltp_fail(t, LDM_ERR_INVALID_ARGUMENT, "autoencoder: invalid description"), 0;
    for (int i = 0; i < d->n_levels; i++)
        if (d->ch_mult[i] < 1) return ltp_fail(t, LDM_ERR_INVALID_ARGUMENT, "autoencoder: ch_mult[%d] < 1", i), 0;
    return 1;
}

ltp_id ltn_ae_encode(ltp_tape *t, ltp_params *ps, const char *prefix, const ld_autoencoder *d, ltp_id x)
{
    if (!t || ltp_status(t) != LDM_OK) return LTP_NONE;
    if (!check_desc(t, ps, d)) return LTP_NONE;
    net n = {t, ps, prefix ? prefix : "", d};
    ltp_id h = encoder(&n, x);
    char m[LTP_NAME_MAX];
    if (!modname(&n, m, sizeof m, "quant_conv")) return LTP_NONE;
    return conv_same(&n, m, h, 2 * d->z_channels, 2 * d->embed_dim, 1);
}

ltp_id ltn_ae_decode(ltp_tape *t, ltp_params *ps, const char *prefix, const ld_autoencoder *d, ltp_id z)
{
    if (!t || ltp_status(t) != LDM_OK) return LTP_NONE;
    if (!check_desc(t, ps, d)) return LTP_NONE;
    net n = {t, ps, prefix ? prefix : "", d};
    char m[LTP_NAME_MAX];
    if (!modname(&n, m, sizeof m, "post_quant_conv")) return LTP_NONE;
    ltp_id h = conv_same(&n, m, z, d->embed_dim, d->z_channels, 1);
    return decoder(&n, h);
}
