/* complete.c - ld_config_complete: a config-derived ld_model checked against the checkpoint's
 * tensor names and shapes, with the parts only the weights know filled in (0 fields: text tower
 * width/layers/vocab/ctx, vocab sizes, layer counts; a stored `scale_factor` buffer).
 *
 * Only architecture-level facts are checked here (channel counts per level, block counts, which
 * levels have attention, conditioning widths); the network builders check every tensor they load. */
#include "config.h"

#include "probe.h"

#include <stdio.h>
#include <string.h>

#define MAX_COUNT 1024

typedef struct chk {
    const lw_store *s;
    const char *file;
} chk;

/* *t = tensor `name`; NOT_FOUND saying `why` (what needs it) when it is absent. */
static ldm_status need(const chk *k, const char *name, const char *why, const lw_tensor **t)
{
    *t = lw_find(k->s, name);
    if (!*t) return ldm_fail(LDM_ERR_NOT_FOUND, "%s: tensor %s is missing (%s)", k->file, name, why);
    return LDM_OK;
}

static ldm_status mismatch(const chk *k, const lw_tensor *t, int dim, const char *what, long long want)
{
    char shape[96];
    ld_probe_shape(t, shape, sizeof shape);
    return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s has shape %s: dimension %d should be %s = %lld", k->file, t->name,
                    shape, dim, what, want);
}

/* Dimension `dim` of t must equal `want`. */
static ldm_status expect_dim(const chk *k, const lw_tensor *t, int dim, long long want, const char *what)
{
    if (t->ndim <= dim || t->shape[dim] != want) return mismatch(k, t, dim, what, want);
    return LDM_OK;
}

/* The config value *field (0 = unknown: adopt the checkpoint's) against dimension `dim` of t. */
static ldm_status agree(const chk *k, int *field, const lw_tensor *t, int dim, const char *what)
{
    int found = ld_probe_dim(t, dim);
    if (found < 0) {
        char shape[96];
        ld_probe_shape(t, shape, sizeof shape);
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s has shape %s: no valid dimension %d for %s", k->file, t->name,
                        shape, dim, what);
    }
    if (*field == 0) {
        *field = found;
        return LDM_OK;
    }
    if (*field != found) {
        char shape[96];
        ld_probe_shape(t, shape, sizeof shape);
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s has shape %s: the config says %s = %d, the checkpoint has %d",
                        k->file, t->name, shape, what, *field, found);
    }
    return LDM_OK;
}

/* Tensor `name` must exist (see need); the config values *d0 and *d1 agree with its dimensions 0
 * and 1 (a NULL field is not checked). */
static ldm_status agree_dims(const chk *k, const char *name, const char *why, int *d0, const char *what0, int *d1,
                             const char *what1)
{
    const lw_tensor *t = NULL;
    LDM_TRY(need(k, name, why, &t));
    if (d0) LDM_TRY(agree(k, d0, t, 0, what0));
    return d1 ? agree(k, d1, t, 1, what1) : LDM_OK;
}

static ldm_status agree_count(const chk *k, int *field, int found, const char *what, const char *where)
{
    if (*field == 0) {
        *field = found;
        return LDM_OK;
    }
    if (*field != found)
        return ldm_fail(LDM_ERR_FORMAT, "%s: the config says %s = %d but the checkpoint has %d (%s)", k->file, what,
                        *field, found, where);
    return LDM_OK;
}

static ldm_status presence(const chk *k, int expected, int found, const char *what)
{
    if (expected == found) return LDM_OK;
    return ldm_fail(LDM_ERR_FORMAT, "%s: %s: the config says %s, the checkpoint %s", k->file, what,
                    expected ? "present" : "absent", found ? "has it" : "does not");
}

/* ---------------------------------------------------------------- first stage */

static int ae_level_has_attn(const ld_autoencoder *a, int level)
{
    int res = a->resolution >> level;
    for (int i = 0; i < a->n_attn_resolutions; i++)
        if (a->attn_resolutions[i] == res) return 1;
    return 0;
}

static ldm_status ae_levels(const chk *k, const char *p, ld_autoencoder *a)
{
    char name[512], what[96];
    int levels = ld_probe_count(k->s, MAX_COUNT, "%sdecoder.up.", p);
    snprintf(name, sizeof name, "%sdecoder.up.<N>", p);
    LDM_TRY(agree_count(k, &a->n_levels, levels, "len(ddconfig.ch_mult)", name));
    int blocks = ld_probe_count(k->s, MAX_COUNT, "%sdecoder.up.0.block.", p);
    int want = a->num_res_blocks + 1;
    snprintf(name, sizeof name, "%sdecoder.up.0.block.<N>", p);
    LDM_TRY(agree_count(k, &want, blocks, "ddconfig.num_res_blocks + 1", name));
    for (int i = 0; i < a->n_levels; i++) {
        snprintf(name, sizeof name, "%sdecoder.up.%d.block.0.conv1.weight", p, i);
        const lw_tensor *t = NULL;
        LDM_TRY(need(k, name, "decoder level", &t));
        snprintf(what, sizeof what, "ch * ch_mult[%d]", i);
        LDM_TRY(expect_dim(k, t, 0, (long long)a->ch * a->ch_mult[i], what));
        snprintf(name, sizeof name, "decoder level %d attention (%sdecoder.up.%d.attn.*)", i, p, i);
        LDM_TRY(presence(k, ae_level_has_attn(a, i), ld_probe_prefix(k->s, "%sdecoder.up.%d.attn.", p, i), name));
    }
    snprintf(name, sizeof name, "mid-block attention (%sdecoder.mid.attn_1.*)", p);
    return presence(k, !a->attn_none, ld_probe_prefix(k->s, "%sdecoder.mid.attn_1.", p), name);
}

static ldm_status ae_quant(const chk *k, const char *p, ld_autoencoder *a)
{
    char name[512];
    const lw_tensor *t = NULL;
    snprintf(name, sizeof name, "%spost_quant_conv.weight", p);
    LDM_TRY(need(k, name, "first stage", &t));
    LDM_TRY(agree(k, &a->embed_dim, t, 1, "embed_dim"));
    LDM_TRY(expect_dim(k, t, 0, a->z_channels, "z_channels"));
    snprintf(name, sizeof name, "%squant_conv.weight", p);
    LDM_TRY(need(k, name, "first stage", &t));
    LDM_TRY(expect_dim(k, t, 0, (a->is_vq ? 1LL : 2LL) * a->embed_dim, a->is_vq ? "embed_dim" : "2 * embed_dim"));
    snprintf(name, sizeof name, "%squantize.embedding.weight", p);
    t = lw_find(k->s, name);
    if (!a->is_vq && t)
        return ldm_fail(LDM_ERR_FORMAT, "%s: the config names an AutoencoderKL but the checkpoint has %s (a VQ "
                        "model)", k->file, name);
    if (!a->is_vq) return LDM_OK;
    LDM_TRY(need(k, name, "VQ codebook", &t));
    LDM_TRY(agree(k, &a->n_embed, t, 0, "n_embed"));
    return expect_dim(k, t, 1, a->embed_dim, "embed_dim");
}

static ldm_status complete_first_stage(const chk *k, const char *p, ld_autoencoder *a)
{
    char name[512];
    snprintf(name, sizeof name, "%sencoder.conv_in.weight", p);
    LDM_TRY(agree_dims(k, name, "first stage encoder", &a->ch, "ddconfig.ch", &a->in_channels, "ddconfig.in_channels"));
    snprintf(name, sizeof name, "%sdecoder.conv_in.weight", p);
    LDM_TRY(agree_dims(k, name, "first stage decoder", NULL, NULL, &a->z_channels, "ddconfig.z_channels"));
    snprintf(name, sizeof name, "%sencoder.conv_out.weight", p);
    const lw_tensor *t = NULL;
    LDM_TRY(need(k, name, "first stage encoder", &t));
    LDM_TRY(expect_dim(k, t, 0, (a->double_z ? 2LL : 1LL) * a->z_channels,
                       a->double_z ? "2 * z_channels (double_z)" : "z_channels"));
    snprintf(name, sizeof name, "%sdecoder.conv_out.weight", p);
    LDM_TRY(agree_dims(k, name, "first stage decoder", &a->out_ch, "ddconfig.out_ch", NULL, NULL));
    LDM_TRY(ae_quant(k, p, a));
    return ae_levels(k, p, a);
}

/* ---------------------------------------------------------------- UNet */

#define UNET "model.diffusion_model."

static int unet_level_has_attn(const ld_unet *u, int level)
{
    for (int i = 0; i < u->n_attention_resolutions; i++)
        if (u->attention_resolutions[i] == 1 << level) return 1;
    return 0;
}

/* Element 1 of output block idx is an AttentionBlock or a SpatialTransformer. */
static int unet_has_attention_at(const chk *k, int idx)
{
    return ld_probe(k->s, UNET "output_blocks.%d.1.qkv.weight", idx) ||
           ld_probe(k->s, UNET "output_blocks.%d.1.proj_in.weight", idx);
}

/* The SpatialTransformer of output block idx (level l) has the level's depth; with a per-level
 * list (sgm) every level is checked, so a checkpoint with more blocks than the config cannot have
 * some of them silently unused. */
static ldm_status unet_level_depth(const chk *k, ld_unet *u, int l, int idx)
{
    char what[96], where[160];
    int found = ld_probe_count(k->s, MAX_COUNT, UNET "output_blocks.%d.1.transformer_blocks.", idx);
    int want = ld_unet_level_depth(u, l);
    snprintf(what, sizeof what, "the transformer depth of level %d", l);
    snprintf(where, sizeof where, UNET "output_blocks.%d.1.transformer_blocks.<N>", idx);
    if (u->n_transformer_depths) return agree_count(k, &want, found, what, where);
    return LDM_OK; /* one depth for all: unet_middle reads it */
}

static ldm_status unet_levels(const chk *k, ld_unet *u)
{
    char what[96], name[256];
    const int per = u->num_res_blocks + 1, L = u->n_levels;
    int blocks = ld_probe_count(k->s, MAX_COUNT, UNET "output_blocks.");
    int want = L * per;
    LDM_TRY(agree_count(k, &want, blocks, "len(channel_mult) * (num_res_blocks + 1) output blocks",
                        UNET "output_blocks.<N>"));
    for (int l = 0; l < L; l++) {
        int idx = (L - 1 - l) * per;
        const lw_tensor *t = NULL;
        snprintf(name, sizeof name, UNET "output_blocks.%d.0.out_layers.3.weight", idx);
        LDM_TRY(need(k, name, "UNet decoder level", &t));
        snprintf(what, sizeof what, "model_channels * channel_mult[%d]", l);
        LDM_TRY(expect_dim(k, t, 0, (long long)u->model_channels * u->channel_mult[l], what));
        snprintf(name, sizeof name, "attention at downsample factor %d (" UNET "output_blocks.%d.1)", 1 << l, idx);
        LDM_TRY(presence(k, unet_level_has_attn(u, l), unet_has_attention_at(k, idx), name));
        if (u->use_spatial_transformer && unet_level_has_attn(u, l)) LDM_TRY(unet_level_depth(k, u, l, idx));
    }
    if (L < 2) return LDM_OK;
    /* The first level boundary of the decoder half: block num_res_blocks ends with the upsampler. */
    int j = unet_level_has_attn(u, L - 1) ? 2 : 1;
    int res = ld_probe(k->s, UNET "output_blocks.%d.%d.in_layers.0.weight", u->num_res_blocks, j) != NULL;
    snprintf(name, sizeof name, "resblock_updown (ResBlock upsampler " UNET "output_blocks.%d.%d)", u->num_res_blocks,
             j);
    return presence(k, u->resblock_updown, res, name);
}

static ldm_status unet_middle(const chk *k, ld_unet *u)
{
    char name[256];
    const int ch = u->model_channels * u->channel_mult[u->n_levels - 1];
    const lw_tensor *t = NULL;
    LDM_TRY(need(k, UNET "middle_block.0.emb_layers.1.weight", "UNet middle block", &t));
    LDM_TRY(expect_dim(k, t, 0, (u->use_scale_shift_norm ? 2LL : 1LL) * ch,
                       u->use_scale_shift_norm ? "2 * channels (use_scale_shift_norm)" : "channels"));
    snprintf(name, sizeof name, UNET "middle_block.1.%s", u->use_spatial_transformer ? "proj_in.weight" : "qkv.weight");
    LDM_TRY(need(k, name, u->use_spatial_transformer ? "use_spatial_transformer" : "AttentionBlock", &t));
    if (!u->use_spatial_transformer) return LDM_OK;
    if ((t->ndim == 2) != (u->use_linear_in_transformer != 0))
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s is %d-D: the config says use_linear_in_transformer %s", k->file,
                        name, t->ndim, u->use_linear_in_transformer ? "true (2-D Linear)" : "false (1x1 conv)");
    int depth = ld_probe_count(k->s, MAX_COUNT, UNET "middle_block.1.transformer_blocks.");
    int mid = ld_unet_middle_depth(u);
    LDM_TRY(agree_count(k, u->n_transformer_depths ? &mid : &u->transformer_depth, depth,
                        u->n_transformer_depths ? "the middle block's transformer depth (transformer_depth[-1])"
                                                : "transformer_depth",
                        UNET "middle_block.1.transformer_blocks.<N>"));
    return agree_dims(k, UNET "middle_block.1.transformer_blocks.0.attn2.to_k.weight", "cross-attention", NULL, NULL,
                      &u->context_dim, "context_dim");
}

static ldm_status complete_unet(const chk *k, ld_unet *u)
{
    LDM_TRY(agree_dims(k, UNET "input_blocks.0.0.weight", "UNet input conv", &u->model_channels, "model_channels",
                       &u->in_channels, "in_channels"));
    LDM_TRY(agree_dims(k, UNET "out.2.weight", "UNet output conv", &u->out_channels, "out_channels", NULL, NULL));
    const lw_tensor *t = lw_find(k->s, UNET "label_emb.weight");
    LDM_TRY(presence(k, u->num_classes != 0, t != NULL, "UNet class embedding (label_emb.weight, num_classes)"));
    if (t) LDM_TRY(agree(k, &u->num_classes, t, 0, "num_classes"));
    t = lw_find(k->s, UNET "label_emb.0.0.weight");
    LDM_TRY(presence(k, u->adm_in_channels != 0, t != NULL,
                     "UNet vector embedding (label_emb.0.0.weight, num_classes: sequential)"));
    if (t) LDM_TRY(agree(k, &u->adm_in_channels, t, 1, "adm_in_channels"));
    LDM_TRY(unet_levels(k, u));
    return unet_middle(k, u);
}

/* ---------------------------------------------------------------- cond stage */

#define COND "cond_stage_model."

/* Every released CLIP / OpenCLIP text tower uses 64-channel heads; the count is not stored. */
static ldm_status text_heads(const chk *k, ld_model *m)
{
    ld_cond *d = &m->cond;
    if (d->heads == 0) {
        if (d->width % 64)
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: the text encoder's head count cannot be read from the weights "
                            "(width %d is not a multiple of the usual 64-channel heads); give a known version/arch",
                            k->file, d->width);
        d->heads = d->width / 64;
        ld_model_note(m, "text encoder heads %d assumed (width / 64)", d->heads);
    }
    if (d->width % d->heads)
        return ldm_fail(LDM_ERR_FORMAT, "%s: text encoder width %d is not divisible by heads %d", k->file, d->width,
                        d->heads);
    return LDM_OK;
}

static ldm_status complete_text(const chk *k, ld_model *m, int hf)
{
    ld_cond *d = &m->cond;
    char name[256], where[256];
    const char *root = hf ? "transformer.text_model." : "model.";
    snprintf(name, sizeof name, COND "%s%s", root, hf ? "embeddings.token_embedding.weight" : "token_embedding.weight");
    LDM_TRY(agree_dims(k, name, hf ? "FrozenCLIPEmbedder" : "FrozenOpenCLIPEmbedder", &d->vocab, "text encoder vocab",
                       &d->width, "text encoder width"));
    snprintf(name, sizeof name, COND "%s%s", root, hf ? "embeddings.position_embedding.weight" : "positional_embedding");
    LDM_TRY(agree_dims(k, name, "text encoder positions", &d->ctx, "text encoder ctx (max_length)", NULL, NULL));
    const char *blocks = hf ? "encoder.layers." : "transformer.resblocks.";
    int layers = ld_probe_count(k->s, MAX_COUNT, COND "%s%s", root, blocks);
    snprintf(where, sizeof where, COND "%s%s<N>", root, blocks);
    LDM_TRY(agree_count(k, &d->layers, layers, "text encoder layers", where));
    /* The reference breaks out of its block loop at index layers - layer_skip, so skipping every
     * block (a 1-layer tower with "penultimate") is legal: ln_final(token + position embeddings). */
    if (d->layer_skip > d->layers)
        return ldm_fail(LDM_ERR_FORMAT, "%s: text encoder layer_skip %d exceeds its %d layers", k->file,
                        d->layer_skip, d->layers);
    return text_heads(k, m);
}

static ldm_status complete_bert(const chk *k, ld_cond *d)
{
    LDM_TRY(agree_dims(k, COND "transformer.token_emb.weight", "BERTEmbedder", &d->vocab_size, "vocab_size",
                       &d->n_embed, "n_embed"));
    LDM_TRY(agree_dims(k, COND "transformer.pos_emb.emb.weight", "BERTEmbedder positions", &d->max_seq_len,
                       "max_seq_len", NULL, NULL));
    /* x_transformer Encoder: layers alternate (attention, feed-forward). */
    int n = ld_probe_count(k->s, MAX_COUNT, COND "transformer.attn_layers.layers.");
    int layers = d->n_layer * 2;
    LDM_TRY(agree_count(k, &layers, n, "2 * n_layer (attention + feed-forward)",
                        COND "transformer.attn_layers.layers.<N>"));
    const lw_tensor *t = NULL;
    LDM_TRY(need(k, COND "transformer.attn_layers.layers.0.1.to_q.weight", "BERTEmbedder attention", &t));
    return expect_dim(k, t, 0, (long long)d->bert_heads * d->bert_dim_head, "heads * dim_head (x_transformer 8 x 64)");
}

static ldm_status complete_rescaler(const chk *k, ld_cond *d)
{
    const lw_tensor *t = lw_find(k->s, COND "channel_mapper.weight");
    LDM_TRY(presence(k, d->out_channels != 0, t != NULL, "SpatialRescaler channel_mapper (out_channels)"));
    if (!t) return LDM_OK;
    LDM_TRY(agree(k, &d->out_channels, t, 0, "out_channels"));
    LDM_TRY(agree(k, &d->in_channels, t, 1, "in_channels"));
    return presence(k, d->bias, ld_probe(k->s, COND "channel_mapper.bias") != NULL, "SpatialRescaler bias");
}

/* The width the cond stage hands to cross-attention, 0 when it does not. */
static int cond_width(const ld_cond *d)
{
    switch (d->kind) {
    case LD_COND_CLASS: return d->embed_dim;
    case LD_COND_CLIP:
    case LD_COND_OPENCLIP: return d->width;
    case LD_COND_BERT: return d->n_embed;
    default: return 0;
    }
}

static ldm_status complete_cond(const chk *k, ld_model *m)
{
    ld_cond *d = &m->cond;
    switch (d->kind) {
    case LD_COND_CLASS:
        LDM_TRY(agree_dims(k, COND "embedding.weight", "ClassEmbedder", &d->n_classes, "n_classes", &d->embed_dim,
                           "embed_dim"));
        break;
    case LD_COND_CLIP: LDM_TRY(complete_text(k, m, 1)); break;
    case LD_COND_OPENCLIP: LDM_TRY(complete_text(k, m, 0)); break;
    case LD_COND_BERT: LDM_TRY(complete_bert(k, d)); break;
    case LD_COND_SPATIAL_RESCALER: LDM_TRY(complete_rescaler(k, d)); break;
    default: break;
    }
    int w = cond_width(d);
    int cross = m->conditioning_key == LD_CONDKEY_CROSSATTN || m->conditioning_key == LD_CONDKEY_HYBRID;
    if (cross && w && m->unet.context_dim && w != m->unet.context_dim)
        return ldm_fail(LDM_ERR_FORMAT, "%s: the cond stage produces width %d but the UNet's context_dim is %d",
                        k->file, w, m->unet.context_dim);
    return LDM_OK;
}

/* ---------------------------------------------------------------- schedule */

static ldm_status complete_schedule(const chk *k, ld_model *m)
{
    const lw_tensor *t = lw_find(k->s, "betas");
    if (t) LDM_TRY(expect_dim(k, t, 0, m->timesteps, "timesteps"));
    /* scale_by_std configs register scale_factor as a buffer: the stored value is the one used. */
    t = lw_find(k->s, "scale_factor");
    if (!t) return LDM_OK;
    int64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) numel *= t->shape[i];
    if (numel != 1)
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor scale_factor: expected a scalar, found %d-D", k->file, t->ndim);
    float *v = NULL;
    LDM_TRY(lw_get_f32(k->s, "scale_factor", -1, NULL, &v));
    double f = v[0];
    ldm_free(v);
    if (!(f > 0) || f > 1e12)
        return ldm_fail(LDM_ERR_NUMERIC, "%s: tensor scale_factor holds %g", k->file, f);
    m->scale_factor = f;
    return LDM_OK;
}

ldm_status ld_config_complete(ld_model *m, const lw_store *s)
{
    if (!m || !s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ld_config_complete: NULL model or store");
    chk k = {s, lw_path(s) ? lw_path(s) : "checkpoint"};
    if (!m->is_diffusion) {
        /* A standalone first stage, or the first stage of a full LDM checkpoint. */
        const char *p = lw_find(s, "encoder.conv_in.weight") ? "" : "first_stage_model.";
        return complete_first_stage(&k, p, &m->first_stage);
    }
    LDM_TRY(complete_first_stage(&k, "first_stage_model.", &m->first_stage));
    LDM_TRY(complete_unet(&k, &m->unet));
    LDM_TRY(complete_cond(&k, m));
    return complete_schedule(&k, m);
}
