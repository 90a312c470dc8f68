/* unet.c - UNetModel structure (which block goes where, channel bookkeeping of the skip
 * connections, attention head arithmetic) and the forward pass. Block math: unet_blocks.c and
 * spatial_transformer.c. Mirrors UNetModel.__init__ / forward of openaimodel.py. */
#include "unet.h"

#include "../kernels/kernels.h"
#include "spatial_transformer.h"
#include "unet_blocks.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* One layer of a TimestepEmbedSequential. */
typedef enum {
    LU_CONV,  /* conv_in or Downsample (conv stride 2) */
    LU_RES,   /* ResBlock, possibly with down/up */
    LU_ATTN,  /* AttentionBlock (in place) */
    LU_XF,    /* SpatialTransformer (in place) */
    LU_UP,    /* Upsample: nearest x2 + conv */
    LU_POOL,  /* Downsample without conv (conv_resample false): avg-pool 2x2 */
    LU_UPNN   /* Upsample without conv (conv_resample false): nearest x2 */
} lu_kind;

typedef struct lu_layer {
    lu_kind kind;
    lub_conv conv;
    lub_resblock res;
    lub_attn attn;
    lst xf;
} lu_layer;

#define LU_MAX_LAYERS 3
typedef struct lu_seq {
    int n;
    lu_layer layer[LU_MAX_LAYERS];
} lu_seq;

struct lunet {
    ld_unet d;
    lunet_opts opts;
    int emb_ch;
    int max_ch; /* widest activation (channels of a skip concatenation at most) */
    float *te_w0, *te_b0, *te_w2, *te_b2; /* time_embed.0 / time_embed.2 */
    float *label_emb;                     /* [num_classes, emb_ch] or NULL */
    /* sgm num_classes "sequential" (SDXL): label_emb.0.0 / label_emb.0.2, or NULL */
    float *adm_w0, *adm_b0, *adm_w2, *adm_b2;
    float *cond_proj;                     /* [model_channels, time_cond_proj_dim] or NULL (LCM) */
    lu_seq *inputs, *outputs, middle;
    int n_inputs, n_outputs;
    int *skip_ch; /* channels of each input block's output (for checks) */
    lub_norm out_norm;
    lub_conv out_conv;
    lub_ws ws;
    lk_wcache *wc; /* transformed weights of small layers (lib/kernels/wcache.c); NULL: none */
};

void lunet_opts_init(lunet_opts *o)
{
    o->use_new_attention_order = 0;
    o->num_heads_upsample = -1;
}

/* ---------------------------------------------------------------- construction */

/* State of UNetModel.__init__ that the head arithmetic reads and mutates (num_heads is
 * overwritten whenever num_head_channels is set, exactly as in the Python). */
typedef struct lu_build {
    lunet *n;
    lub_loader L;
    int num_heads, num_heads_upsample;
} lu_build;

static lu_layer *seq_add(lu_seq *s, lu_kind kind)
{
    lu_layer *l = &s->layer[s->n++];
    l->kind = kind;
    return l;
}

/* The (num_heads, dim_head) that __init__ computes for an attention layer on `ch` channels. */
static ldm_status attention_dims(lu_build *b, const char *name, int ch, int *dim_head)
{
    const ld_unet *d = &b->n->d;
    int nhc = d->num_head_channels;
    if (nhc <= 0) {
        if (b->num_heads <= 0)
            return ldm_fail(LDM_ERR_UNSUPPORTED, "unet: %s: either num_heads or num_head_channels has to be set", name);
        *dim_head = ch / b->num_heads;
    } else {
        b->num_heads = ch / nhc;
        *dim_head = nhc;
    }
    if (d->legacy) {
        if (d->use_spatial_transformer) {
            if (b->num_heads <= 0)
                return ldm_fail(LDM_ERR_UNSUPPORTED, "unet: %s: num_head_channels %d exceeds %d channels", name, nhc,
                                ch);
            *dim_head = ch / b->num_heads;
        } else {
            *dim_head = nhc <= 0 ? -1 : nhc;
        }
    }
    return LDM_OK;
}

/* Appends the attention layer at a level listed in attention_resolutions (depth: that level's
 * transformer depth, or the middle block's). */
static ldm_status add_attention(lu_build *b, lu_seq *s, const char *name, int ch, int upsample_side, int depth)
{
    const ld_unet *d = &b->n->d;
    int dim_head = -1;
    LDM_TRY(attention_dims(b, name, ch, &dim_head));
    if (d->use_spatial_transformer) {
        if (depth <= 0) /* sgm would build a SpatialTransformer without blocks: no released model has one */
            return ldm_fail(LDM_ERR_UNSUPPORTED, "unet: %s: transformer depth %d at an attention level is not "
                            "supported", name, depth);
        lu_layer *l = seq_add(s, LU_XF);
        return lst_load(&l->xf, &b->L, name, ch, b->num_heads, dim_head, depth, d->context_dim,
                        d->use_linear_in_transformer);
    }
    /* AttentionBlock(num_heads=..., num_head_channels=dim_head): heads = ch / dim_head unless -1 */
    int heads = upsample_side ? b->num_heads_upsample : b->num_heads;
    if (dim_head != -1) {
        if (dim_head <= 0 || ch % dim_head != 0)
            return ldm_fail(LDM_ERR_UNSUPPORTED, "unet: %s: %d channels not divisible by head width %d", name, ch,
                            dim_head);
        heads = ch / dim_head;
    }
    lu_layer *l = seq_add(s, LU_ATTN);
    return lub_attn_load(&l->attn, &b->L, name, ch, heads, b->n->opts.use_new_attention_order || d->use_new_attention_order);
}

static ldm_status add_res(lu_build *b, lu_seq *s, const char *name, int in_ch, int out_ch, int updown)
{
    lu_layer *l = seq_add(s, LU_RES);
    return lub_resblock_load(&l->res, &b->L, name, in_ch, out_ch, b->n->emb_ch, updown,
                             b->n->d.use_scale_shift_norm);
}

static int has_attention(const ld_unet *d, int ds)
{
    for (int i = 0; i < d->n_attention_resolutions; i++)
        if (d->attention_resolutions[i] == ds) return 1;
    return 0;
}

static ldm_status build_inputs(lu_build *b, int *ch_io, int *ds_io)
{
    lunet *n = b->n;
    const ld_unet *d = &n->d;
    char name[64];
    int ch = d->model_channels, ds = 1, k = 0;
    lu_layer *l = seq_add(&n->inputs[k], LU_CONV);
    LDM_TRY(lub_conv_load(&l->conv, &b->L, "input_blocks.0.0", d->in_channels, ch, 3, 1));
    n->skip_ch[k++] = ch;
    for (int level = 0; level < d->n_levels; level++) {
        int mult_ch = d->channel_mult[level] * d->model_channels;
        for (int r = 0; r < d->num_res_blocks; r++, k++) {
            LDM_TRY(lub_name(name, sizeof name, "input_blocks.%d.0", k));
            LDM_TRY(add_res(b, &n->inputs[k], name, ch, mult_ch, 0));
            ch = mult_ch;
            if (has_attention(d, ds)) {
                LDM_TRY(lub_name(name, sizeof name, "input_blocks.%d.1", k));
                LDM_TRY(add_attention(b, &n->inputs[k], name, ch, 0, ld_unet_level_depth(d, level)));
            }
            n->skip_ch[k] = ch;
        }
        if (level != d->n_levels - 1) {
            LDM_TRY(lub_name(name, sizeof name, "input_blocks.%d.0", k));
            if (d->resblock_updown) {
                LDM_TRY(add_res(b, &n->inputs[k], name, ch, ch, LUB_DOWN));
            } else if (d->no_conv_resample) {
                seq_add(&n->inputs[k], LU_POOL);
            } else {
                LDM_TRY(lub_name(name, sizeof name, "input_blocks.%d.0.op", k));
                l = seq_add(&n->inputs[k], LU_CONV);
                LDM_TRY(lub_conv_load(&l->conv, &b->L, name, ch, ch, 3, 2));
            }
            n->skip_ch[k++] = ch;
            ds *= 2;
        }
    }
    *ch_io = ch, *ds_io = ds;
    return LDM_OK;
}

static ldm_status build_middle(lu_build *b, int ch)
{
    LDM_TRY(add_res(b, &b->n->middle, "middle_block.0", ch, ch, 0));
    LDM_TRY(add_attention(b, &b->n->middle, "middle_block.1", ch, 0, ld_unet_middle_depth(&b->n->d)));
    return add_res(b, &b->n->middle, "middle_block.2", ch, ch, 0);
}

static ldm_status build_outputs(lu_build *b, int *ch_io, int ds)
{
    lunet *n = b->n;
    const ld_unet *d = &n->d;
    char name[64];
    int ch = *ch_io, k = 0, pending = n->n_inputs;
    for (int level = d->n_levels - 1; level >= 0; level--) {
        for (int i = 0; i <= d->num_res_blocks; i++, k++) {
            int ich = n->skip_ch[--pending], mult_ch = d->model_channels * d->channel_mult[level];
            lu_seq *s = &n->outputs[k];
            LDM_TRY(lub_name(name, sizeof name, "output_blocks.%d.0", k));
            LDM_TRY(add_res(b, s, name, ch + ich, mult_ch, 0));
            ch = mult_ch;
            if (has_attention(d, ds)) {
                LDM_TRY(lub_name(name, sizeof name, "output_blocks.%d.1", k));
                LDM_TRY(add_attention(b, s, name, ch, 1, ld_unet_level_depth(d, level)));
            }
            if (level && i == d->num_res_blocks) {
                if (d->resblock_updown) {
                    LDM_TRY(lub_name(name, sizeof name, "output_blocks.%d.%d", k, s->n));
                    LDM_TRY(add_res(b, s, name, ch, ch, LUB_UP));
                } else if (d->no_conv_resample) {
                    seq_add(s, LU_UPNN);
                } else {
                    LDM_TRY(lub_name(name, sizeof name, "output_blocks.%d.%d.conv", k, s->n));
                    lu_layer *l = seq_add(s, LU_UP);
                    LDM_TRY(lub_conv_load(&l->conv, &b->L, name, ch, ch, 3, 1));
                }
                ds /= 2;
            }
        }
    }
    *ch_io = ch;
    return LDM_OK;
}

static ldm_status load_embeddings(lu_build *b)
{
    lunet *n = b->n;
    int mc = n->d.model_channels, E = n->emb_ch;
    int64_t w0[2] = {E, mc}, w2[2] = {E, E}, bias[1] = {E};
    LDM_TRY(lub_get(&b->L, 2, w0, &n->te_w0, "time_embed.0.weight"));
    LDM_TRY(lub_get(&b->L, 1, bias, &n->te_b0, "time_embed.0.bias"));
    LDM_TRY(lub_get(&b->L, 2, w2, &n->te_w2, "time_embed.2.weight"));
    LDM_TRY(lub_get(&b->L, 1, bias, &n->te_b2, "time_embed.2.bias"));
    if (n->d.num_classes > 0) {
        int64_t le[2] = {n->d.num_classes, E};
        LDM_TRY(lub_get(&b->L, 2, le, &n->label_emb, "label_emb.weight"));
    }
    if (n->d.adm_in_channels > 0) {
        int64_t a0[2] = {E, n->d.adm_in_channels};
        LDM_TRY(lub_get(&b->L, 2, a0, &n->adm_w0, "label_emb.0.0.weight"));
        LDM_TRY(lub_get(&b->L, 1, bias, &n->adm_b0, "label_emb.0.0.bias"));
        LDM_TRY(lub_get(&b->L, 2, w2, &n->adm_w2, "label_emb.0.2.weight"));
        LDM_TRY(lub_get(&b->L, 1, bias, &n->adm_b2, "label_emb.0.2.bias"));
    }
    if (n->d.time_cond_proj_dim > 0) {
        int64_t cp[2] = {mc, n->d.time_cond_proj_dim};
        LDM_TRY(lub_get(&b->L, 2, cp, &n->cond_proj, "time_embed.cond_proj.weight"));
    }
    return LDM_OK;
}

static ldm_status check_desc(const ld_unet *d)
{
    if (d->in_channels <= 0 || d->out_channels <= 0 || d->model_channels <= 0 || d->num_res_blocks < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: bad description (in %d, out %d, model_channels %d, "
                        "num_res_blocks %d)", d->in_channels, d->out_channels, d->model_channels, d->num_res_blocks);
    if (d->n_levels <= 0 || d->n_levels > LD_MAX_LEVELS || d->n_attention_resolutions < 0 ||
        d->n_attention_resolutions > LD_MAX_LEVELS)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: bad description (%d levels, %d attention resolutions)",
                        d->n_levels, d->n_attention_resolutions);
    if (d->num_res_blocks > 64 || d->model_channels > 65536 || d->in_channels > 65536 || d->out_channels > 65536 ||
        d->context_dim > 65536 || d->num_classes > (1 << 24))
        return ldm_fail(LDM_ERR_LIMIT, "unet: description too large (num_res_blocks %d, model_channels %d, in %d, "
                        "out %d, context_dim %d, num_classes %d)", d->num_res_blocks, d->model_channels,
                        d->in_channels, d->out_channels, d->context_dim, d->num_classes);
    for (int i = 0; i < d->n_levels; i++)
        if (d->channel_mult[i] <= 0 || d->channel_mult[i] > 64)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: bad channel_mult[%d] = %d", i, d->channel_mult[i]);
    if (d->use_spatial_transformer && d->context_dim <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: use_spatial_transformer needs context_dim");
    if (d->time_cond_proj_dim != 0 && (d->time_cond_proj_dim < 4 || d->time_cond_proj_dim > 65536))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: guidance embedding width %d outside 4..65536",
                        d->time_cond_proj_dim);
    if (d->use_spatial_transformer && (d->transformer_depth <= 0 || d->transformer_depth > 64))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: bad transformer_depth %d", d->transformer_depth);
    if (d->n_transformer_depths < 0 || d->n_transformer_depths > LD_MAX_LEVELS ||
        (d->n_transformer_depths && d->n_transformer_depths != d->n_levels))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: %d per-level transformer depths for %d levels",
                        d->n_transformer_depths, d->n_levels);
    for (int i = 0; i < d->n_transformer_depths; i++)
        if (d->transformer_depths[i] < 0 || d->transformer_depths[i] > 64)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: bad transformer_depth[%d] = %d", i,
                            d->transformer_depths[i]);
    if (d->transformer_depth_middle > 64)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: bad transformer_depth_middle %d", d->transformer_depth_middle);
    if (d->adm_in_channels < 0 || d->adm_in_channels > (1 << 20) || (d->adm_in_channels && d->num_classes))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: bad adm_in_channels %d (num_classes %d)", d->adm_in_channels,
                        d->num_classes);
    return LDM_OK;
}

static ldm_status build(lunet *n, const lw_store *s, const char *prefix, int use_ema)
{
    const ld_unet *d = &n->d;
    lu_build b = {n, {s, prefix, use_ema, n->wc}, d->num_heads, n->opts.num_heads_upsample};
    if (b.num_heads_upsample == -1) b.num_heads_upsample = d->num_heads;
    n->emb_ch = 4 * d->model_channels;
    int max_mult = 1;
    for (int i = 0; i < d->n_levels; i++) max_mult = LDM_MAX(max_mult, d->channel_mult[i]);
    n->max_ch = LDM_MAX(d->in_channels, 2 * d->model_channels * max_mult);
    n->n_inputs = 1 + d->n_levels * d->num_res_blocks + (d->n_levels - 1);
    n->n_outputs = d->n_levels * (d->num_res_blocks + 1);
    n->inputs = ldm_calloc((size_t)n->n_inputs, sizeof *n->inputs);
    n->outputs = ldm_calloc((size_t)n->n_outputs, sizeof *n->outputs);
    n->skip_ch = ldm_calloc((size_t)n->n_inputs, sizeof *n->skip_ch);
    if (!n->inputs || !n->outputs || !n->skip_ch) return ldm_alloc_failure_status();
    LDM_TRY(load_embeddings(&b));
    int ch, ds;
    LDM_TRY(build_inputs(&b, &ch, &ds));
    LDM_TRY(build_middle(&b, ch));
    LDM_TRY(build_outputs(&b, &ch, ds));
    LDM_TRY(lub_norm_load(&n->out_norm, &b.L, "out.0", ch, 1e-5f));
    return lub_conv_load(&n->out_conv, &b.L, "out.2", ch, d->out_channels, 3, 1);
}

ldm_status lunet_create_opts(const ld_unet *d, const lw_store *s, const char *prefix, int use_ema,
                             const lunet_opts *opts, lunet **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lunet_create: NULL output");
    *out = NULL;
    if (!d || !s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lunet_create: NULL description or store");
    LDM_TRY(check_desc(d));
    lunet *n = ldm_calloc(1, sizeof *n);
    if (!n) return ldm_alloc_failure_status();
    n->d = *d;
    if (opts)
        n->opts = *opts;
    else
        lunet_opts_init(&n->opts);
    n->wc = lk_wcache_create(); /* NULL (nothing cached) in the low-memory mode or out of memory */
    ldm_status st = build(n, s, prefix ? prefix : "", use_ema);
    if (st != LDM_OK) {
        lunet_free(n);
        return st;
    }
    *out = n;
    return LDM_OK;
}

ldm_status lunet_create(const ld_unet *d, const lw_store *s, const char *prefix, int use_ema, lunet **out)
{
    return lunet_create_opts(d, s, prefix, use_ema, NULL, out);
}

static void seq_free(lu_seq *s)
{
    for (int i = 0; i < s->n; i++) {
        lu_layer *l = &s->layer[i];
        switch (l->kind) {
        case LU_CONV:
        case LU_UP: lub_conv_free(&l->conv); break;
        case LU_RES: lub_resblock_free(&l->res); break;
        case LU_ATTN: lub_attn_free(&l->attn); break;
        case LU_XF: lst_free(&l->xf); break;
        case LU_POOL:
        case LU_UPNN:
            break; /* no parameters */
        }
    }
}

void lunet_free(lunet *n)
{
    if (!n) return;
    ldm_free(n->te_w0);
    ldm_free(n->te_b0);
    ldm_free(n->te_w2);
    ldm_free(n->te_b2);
    ldm_free(n->label_emb);
    ldm_free(n->adm_w0);
    ldm_free(n->adm_b0);
    ldm_free(n->adm_w2);
    ldm_free(n->adm_b2);
    ldm_free(n->cond_proj);
    if (n->inputs)
        for (int i = 0; i < n->n_inputs; i++) seq_free(&n->inputs[i]);
    if (n->outputs)
        for (int i = 0; i < n->n_outputs; i++) seq_free(&n->outputs[i]);
    seq_free(&n->middle);
    ldm_free(n->inputs);
    ldm_free(n->outputs);
    ldm_free(n->skip_ch);
    lub_norm_free(&n->out_norm);
    lub_conv_free(&n->out_conv);
    lk_wcache_free(n->wc);
    lub_ws_free(&n->ws);
    ldm_free(n);
}

int lunet_num_classes(const lunet *n) { return n->d.num_classes > 0 ? n->d.num_classes : 0; }
int lunet_size_multiple(const lunet *n) { return 1 << (n->d.n_levels - 1); }

/* ---------------------------------------------------------------- forward */

/* timestep_embedding(t, dim): [cos(t f), sin(t f)] (cos first), f_i = exp(-ln(10000) * i / half),
 * every step in float32 as torch does it (the Python double -ln(10000) is used as a float). */
void lunet_timestep_embedding(const float *t, int B, int dim, float *out)
{
    int half = dim / 2;
    float neg_log = (float)(-log(10000.0));
    for (int b = 0; b < B; b++) {
        float tf = t[b];
        float *row = out + (size_t)b * dim;
        for (int i = 0; i < half; i++) {
            float f = expf((neg_log * (float)i) / (float)half);
            float arg = tf * f;
            row[i] = (float)cos((double)arg);
            row[half + i] = (float)sin((double)arg);
        }
        if (dim % 2) row[dim - 1] = 0.0f;
    }
}

/* emb += label_emb(y) of the sgm "sequential" kind: Linear -> SiLU -> Linear on the vector y. */
static ldm_status add_adm(lunet *n, const lctx *c, const float *y, int B, float *emb)
{
    int E = n->emb_ch;
    float *hid = ldm_malloc(sizeof(float) * (size_t)B * E), *out = ldm_malloc(sizeof(float) * (size_t)B * E);
    if (!hid || !out) {
        ldm_free(hid);
        ldm_free(out);
        return ldm_alloc_failure_status();
    }
    lk_linear(c, y, B, n->d.adm_in_channels, n->adm_w0, n->adm_b0, E, hid);
    lk_silu(hid, (size_t)B * E);
    lk_linear(c, hid, B, E, n->adm_w2, n->adm_b2, E, out);
    lk_add(emb, out, (size_t)B * E);
    ldm_free(hid);
    ldm_free(out);
    return LDM_OK;
}

/* get_guidance_scale_embedding of the LCM pipeline, float32 as torch: v = (s - 1) * 1000,
 * e = ln(10000)/(half - 1), row = [sin(v exp(-j e)), cos(v exp(-j e))] (sin first), odd dim
 * zero-padded. */
static void guidance_embedding(const float *scale, int B, int dim, float *out)
{
    int half = dim / 2;
    float e = logf(10000.0f) / (float)(half - 1);
    for (int b = 0; b < B; b++) {
        float w = (float)((double)scale[b] - 1.0); /* torch.tensor(guidance_scale - 1) */
        float v = w * 1000.0f;
        float *row = out + (size_t)b * dim;
        for (int j = 0; j < half; j++) {
            float arg = v * expf((float)j * -e);
            row[j] = (float)sin((double)arg);
            row[half + j] = (float)cos((double)arg);
        }
        if (dim % 2) row[dim - 1] = 0.0f;
    }
}

/* temb += cond_proj(guidance_embedding(scale)) (TimestepEmbedding.forward with a condition). */
static ldm_status add_guidance(lunet *n, const lctx *c, const float *scale, int B, float *temb)
{
    int mc = n->d.model_channels, D = n->d.time_cond_proj_dim;
    float *g = ldm_malloc(sizeof(float) * (size_t)B * D);
    float *proj = ldm_malloc(sizeof(float) * (size_t)B * mc);
    if (!g || !proj) {
        ldm_free(g);
        ldm_free(proj);
        return ldm_alloc_failure_status();
    }
    guidance_embedding(scale, B, D, g);
    lk_linear(c, g, B, D, n->cond_proj, NULL, mc, proj);
    lk_add(temb, proj, (size_t)B * mc);
    ldm_free(g);
    ldm_free(proj);
    return LDM_OK;
}

/* emb = time_embed(t_emb [+ cond_proj(g)]) [+ label_emb(y)], before the final SiLU. */
static ldm_status embed_raw(lunet *n, const lctx *c, const float *t, const float *gscale, const ldm_tensor *yt,
                            int B, float *emb)
{
    int mc = n->d.model_channels, E = n->emb_ch;
    float *temb = ldm_malloc(sizeof(float) * (size_t)B * mc);
    float *hid = ldm_malloc(sizeof(float) * (size_t)B * E);
    ldm_status st = (temb && hid) ? LDM_OK : ldm_alloc_failure_status();
    if (st == LDM_OK) {
        lunet_timestep_embedding(t, B, mc, temb);
        if (gscale) st = add_guidance(n, c, gscale, B, temb);
    }
    if (st == LDM_OK) {
        lk_linear(c, temb, B, mc, n->te_w0, n->te_b0, E, hid);
        lk_silu(hid, (size_t)B * E);
        lk_linear(c, hid, B, E, n->te_w2, n->te_b2, E, emb);
        if (yt && n->d.adm_in_channels > 0) {
            st = add_adm(n, c, lt_f32(yt), B, emb);
        } else if (yt) {
            const int64_t *y = lt_i64(yt);
            for (int b = 0; b < B; b++) lk_add(emb + (size_t)b * E, n->label_emb + (size_t)y[b] * E, (size_t)E);
        }
    }
    ldm_free(temb);
    ldm_free(hid);
    return st;
}

ldm_status lunet_time_embedding(lunet *n, const lctx *c, const float *t, const float *guidance_scale, int B,
                                float *emb)
{
    if (!n || !t || !emb || B <= 0) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lunet_time_embedding: bad argument");
    if (guidance_scale && !n->cond_proj)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "unet: no guidance embedding (time_embed.cond_proj.weight)");
    return embed_raw(n, c, t, guidance_scale, NULL, B, emb);
}

ldm_status lunet_probe_guidance_embedding(const lw_store *s, const char *prefix, int model_channels, int *dim)
{
    char key[512];
    *dim = 0;
    int len = snprintf(key, sizeof key, "%stime_embed.cond_proj.weight", prefix ? prefix : "");
    if (len < 0 || (size_t)len >= sizeof key) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: key prefix too long");
    const lw_tensor *t = lw_find(s, key);
    if (!t) return LDM_OK;
    if (t->ndim != 2 || t->shape[0] != model_channels || t->shape[1] < 4 || t->shape[1] > 65536)
        return ldm_fail(LDM_ERR_FORMAT,
                        "%s: tensor %s must be [model_channels = %d, dim] with 4 <= dim <= 65536 (LCM guidance "
                        "embedding), found %d dimensions [%lld, %lld]",
                        lw_path(s), key, model_channels, t->ndim, (long long)t->shape[0],
                        (long long)(t->ndim > 1 ? t->shape[1] : 0));
    *dim = (int)t->shape[1];
    return LDM_OK;
}

/* emb_silu = SiLU(time_embed(t_emb) [+ label_emb(y)]): only the ResBlocks read emb, and each
 * starts with SiLU, so it is applied once here. y: class labels (I64) or the sgm vector (F32). */
static ldm_status embed(lunet *n, const lctx *c, const float *t, const float *gscale, const ldm_tensor *yt, int B,
                        float **emb_silu)
{
    float *emb = ldm_malloc(sizeof(float) * (size_t)B * n->emb_ch);
    if (!emb) return ldm_alloc_failure_status();
    ldm_status st = embed_raw(n, c, t, gscale, yt, B, emb);
    if (st != LDM_OK) {
        ldm_free(emb);
        return st;
    }
    lk_silu(emb, (size_t)B * n->emb_ch);
    *emb_silu = emb;
    return LDM_OK;
}

typedef struct lu_run {
    lunet *n;
    const lctx *c;
    const float *emb_silu;
    const float *context;
    int ctx_len;
} lu_run;

/* TimestepEmbedSequential: `in` is read, never modified or freed; `out` is a new activation. */
static ldm_status seq_forward(const lu_run *r, const lu_seq *s, const lub_act *in, lub_act *out)
{
    lub_act cur = {0};
    const lub_act *src = in;
    ldm_status st = LDM_OK;
    for (int i = 0; i < s->n && st == LDM_OK; i++) {
        const lu_layer *l = &s->layer[i];
        if (l->kind == LU_ATTN || l->kind == LU_XF) {
            if (src != &cur) /* attention always follows a ResBlock in UNetModel */
                return ldm_fail(LDM_ERR_INTERNAL, "unet: attention layer without a preceding block");
            st = l->kind == LU_ATTN ? lub_attn_forward(&l->attn, r->c, &r->n->ws, &cur)
                                    : lst_forward(&l->xf, r->c, &r->n->ws, &cur, r->context, r->ctx_len);
            continue;
        }
        lub_act next = {0};
        if (l->kind == LU_CONV)
            st = lub_conv_forward(&l->conv, r->c, src, &next);
        else if (l->kind == LU_UP)
            st = lub_upsample_forward(&l->conv, r->c, &r->n->ws, src, &next);
        else if (l->kind == LU_POOL || l->kind == LU_UPNN)
            st = lub_resample_forward(l->kind == LU_POOL ? LUB_DOWN : LUB_UP, src, &next);
        else
            st = lub_resblock_forward(&l->res, r->c, &r->n->ws, src, r->emb_silu, &next);
        if (src == &cur) lub_act_free(&cur);
        cur = next;
        src = &cur;
    }
    if (st != LDM_OK) {
        lub_act_free(&cur);
        return st;
    }
    *out = cur;
    return LDM_OK;
}

/* th.cat([h, skip], dim=1) into the workspace's concatenation slot. */
static ldm_status concat_skip(lunet *n, const lub_act *h, const lub_act *skip, lub_act *cat)
{
    if (h->H != skip->H || h->W != skip->W)
        return ldm_fail(LDM_ERR_INTERNAL, "unet: skip %dx%d does not match %dx%d", skip->H, skip->W, h->H, h->W);
    int B = h->B, C = h->C + skip->C;
    size_t hw = (size_t)h->H * h->W, nh = (size_t)h->C * hw, ns = (size_t)skip->C * hw;
    float *p = lub_ws_get(&n->ws, LUB_WS_CAT, (size_t)B * C * hw);
    if (!p) return ldm_alloc_failure_status();
    for (int b = 0; b < B; b++) {
        memcpy(p + (size_t)b * (nh + ns), h->p + (size_t)b * nh, nh * sizeof(float));
        memcpy(p + (size_t)b * (nh + ns) + nh, skip->p + (size_t)b * ns, ns * sizeof(float));
    }
    *cat = (lub_act){p, B, C, h->H, h->W};
    return LDM_OK;
}

static ldm_status cancelled(const lctx *c)
{
    return lctx_cancelled(c) ? ldm_fail(LDM_CANCELLED, "cancelled") : LDM_OK;
}

/* input_blocks -> middle_block -> output_blocks; returns the last h (owned). Skips are freed as
 * soon as their output block has consumed them. */
static ldm_status run_body(const lu_run *r, const lub_act *x, lub_act *result)
{
    lunet *n = r->n;
    lub_act *hs = ldm_calloc((size_t)n->n_inputs, sizeof *hs);
    if (!hs) return ldm_alloc_failure_status();
    lub_act h = {0}, cat;
    int top = 0;
    ldm_status st = LDM_OK;
    for (int i = 0; i < n->n_inputs && st == LDM_OK; i++) {
        st = cancelled(r->c);
        if (st == LDM_OK) st = seq_forward(r, &n->inputs[i], i ? &hs[i - 1] : x, &hs[i]);
        if (st == LDM_OK) top = i + 1;
    }
    if (st == LDM_OK) st = cancelled(r->c);
    if (st == LDM_OK) st = seq_forward(r, &n->middle, &hs[top - 1], &h);
    for (int i = 0; i < n->n_outputs && st == LDM_OK; i++) {
        st = cancelled(r->c);
        if (st == LDM_OK) st = concat_skip(n, &h, &hs[top - 1], &cat);
        if (st != LDM_OK) break;
        lub_act_free(&h);
        lub_act_free(&hs[--top]);
        st = seq_forward(r, &n->outputs[i], &cat, &h);
    }
    for (int i = 0; i < top; i++) lub_act_free(&hs[i]);
    ldm_free(hs);
    if (st != LDM_OK) {
        lub_act_free(&h);
        return st;
    }
    *result = h;
    return LDM_OK;
}

/* out = conv(SiLU(GN(h))) into a new tensor. */
static ldm_status run_out(lunet *n, const lctx *c, const lub_act *h, ldm_tensor **out)
{
    float *t = lub_ws_get(&n->ws, 0, lub_act_numel(h));
    if (!t) return ldm_alloc_failure_status();
    lk_group_norm_silu(c, h->p, h->B, h->C, h->H * h->W, 32, n->out_norm.eps, n->out_norm.w, n->out_norm.b, t);
    ldm_tensor *o = lt_new_f32_4d(h->B, n->d.out_channels, h->H, h->W);
    if (!o) return ldm_alloc_failure_status();
    ldm_status st = lub_conv_run(&n->out_conv, c, t, h->B, h->H, h->W, lt_f32(o));
    if (st != LDM_OK) {
        ldm_tensor_free(o);
        return st;
    }
    *out = o;
    return LDM_OK;
}

static ldm_status check_inputs(const lunet *n, const ldm_tensor *x, const ldm_tensor *timesteps,
                               const ldm_tensor *context, const ldm_tensor *y)
{
    char a[64], b[64];
    LDM_TRY(lt_check(x, "unet input x", LDM_F32, 4));
    int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3], m = lunet_size_multiple(n);
    if (x->shape[1] != n->d.in_channels || B <= 0 || H <= 0 || W <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet input x: expected [B,%d,H,W], found %s", n->d.in_channels,
                        lt_shape_str(x, a, sizeof a));
    if (H % m || W % m)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet input x %s: H and W must be multiples of %d (%d levels)",
                        lt_shape_str(x, a, sizeof a), (int)m, n->d.n_levels);
    /* keep every size handed to the kernels (rows, batch x channels) within int */
    if (B > 65536 || H > 65536 || W > 65536 || B * H * W > ((int64_t)1 << 28) || B * n->max_ch > INT32_MAX / 4)
        return ldm_fail(LDM_ERR_LIMIT, "unet input x %s is too large", lt_shape_str(x, a, sizeof a));
    /* I64 as the reference; F32 for the fractional timesteps of the k-diffusion samplers (the
     * sinusoidal embedding is continuous in t). */
    if (!timesteps || timesteps->ndim != 1 || (timesteps->dtype != LDM_I64 && timesteps->dtype != LDM_F32))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet timesteps: expected a 1-D I64 or F32 tensor");
    if (timesteps->shape[0] != B)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet timesteps: expected [%lld], found %s", (long long)B,
                        lt_shape_str(timesteps, a, sizeof a));
    if (context && n->d.use_spatial_transformer) {
        LDM_TRY(lt_check(context, "unet context", LDM_F32, 3));
        if (context->shape[0] != B || context->shape[1] <= 0 || B * context->shape[1] > ((int64_t)1 << 28) ||
            context->shape[2] != n->d.context_dim)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet context: expected [%lld,T,%d], found %s (x %s)",
                            (long long)B, n->d.context_dim, lt_shape_str(context, a, sizeof a),
                            lt_shape_str(x, b, sizeof b));
    }
    if (n->d.adm_in_channels > 0) {
        if (!y)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: the vector conditioning y [B,%d] (adm_in_channels) is "
                            "required", n->d.adm_in_channels);
        LDM_TRY(lt_check(y, "unet vector conditioning y", LDM_F32, 2));
        if (y->shape[0] != B || y->shape[1] != n->d.adm_in_channels)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet vector conditioning y: expected [%lld,%d], found %s",
                            (long long)B, n->d.adm_in_channels, lt_shape_str(y, a, sizeof a));
        return LDM_OK;
    }
    if ((y != NULL) != (n->d.num_classes > 0))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet: class labels y must be given iff the model is "
                        "class-conditional (num_classes %d)", n->d.num_classes);
    if (y) {
        LDM_TRY(lt_check(y, "unet class labels y", LDM_I64, 1));
        if (y->shape[0] != B)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet class labels y: expected [%lld], found %s",
                            (long long)B, lt_shape_str(y, a, sizeof a));
        for (int64_t i = 0; i < B; i++)
            if (lt_i64(y)[i] < 0 || lt_i64(y)[i] >= n->d.num_classes)
                return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "unet class label y[%lld] = %lld outside [0,%d)",
                                (long long)i, (long long)lt_i64(y)[i], n->d.num_classes);
    }
    return LDM_OK;
}

void lunet_drop_weight_caches(lunet *n)
{
    if (n) lk_wcache_clear(n->wc);
}

void lunet_release_workspace(lunet *n)
{
    if (n) lub_ws_free(&n->ws);
}

ldm_status lunet_forward(lunet *n, const lctx *c, const ldm_tensor *x, const ldm_tensor *timesteps,
                         const ldm_tensor *context, const ldm_tensor *y, ldm_tensor **out)
{
    return lunet_forward_guided(n, c, x, timesteps, context, y, NULL, out);
}

ldm_status lunet_forward_guided(lunet *n, const lctx *c, const ldm_tensor *x, const ldm_tensor *timesteps,
                                const ldm_tensor *context, const ldm_tensor *y, const float *guidance_scale,
                                ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lunet_forward: NULL output");
    *out = NULL;
    if (!n) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lunet_forward: NULL unet");
    LDM_TRY(check_inputs(n, x, timesteps, context, y));
    if (guidance_scale && !n->cond_proj)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "unet: a guidance scale was given but the UNet has no guidance embedding "
                                             "(time_embed.cond_proj.weight)");
    if (!n->d.use_spatial_transformer) context = NULL; /* only SpatialTransformers read it */
    int B = (int)x->shape[0];
    float *emb_silu = NULL, *t = ldm_malloc(sizeof(float) * (size_t)B);
    if (!t) return ldm_alloc_failure_status();
    for (int b = 0; b < B; b++)
        t[b] = timesteps->dtype == LDM_I64 ? (float)lt_i64(timesteps)[b] : lt_f32(timesteps)[b];
    ldm_status est = embed(n, c, t, guidance_scale, y, B, &emb_silu);
    ldm_free(t);
    LDM_TRY(est);
    lu_run r = {n, c, emb_silu, context ? lt_f32(context) : NULL, context ? (int)context->shape[1] : 0};
    lub_act xin = {lt_f32(x), B, (int)x->shape[1], (int)x->shape[2], (int)x->shape[3]};
    lub_act h = {0};
    ldm_status st = run_body(&r, &xin, &h);
    ldm_free(emb_silu);
    if (st == LDM_OK) st = cancelled(c);
    if (st == LDM_OK) st = run_out(n, c, &h, out);
    lub_act_free(&h);
    if (lk_low_memory()) { /* give the scratch back between evaluations (docs/performance.md) */
        lub_ws_free(&n->ws);
        lk_scratch_trim();
    }
    return st;
}
