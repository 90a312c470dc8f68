/* detect.c - ld_detect: the model description from tensor names and shapes alone.
 *
 * Shapes give almost the whole architecture: channel counts, level multipliers, block counts,
 * which levels have attention, transformer depth / linear projections, context and text widths,
 * codebook sizes. They do not give:
 *   - the attention head split (to_q is [C, C] whatever the heads),
 *   - KL latents' scale_factor (not stored unless the config used scale_by_std),
 *   - the prediction target (eps vs v: SD 2.x 512-base and 768-v have identical tensors),
 *   - which OpenCLIP layer feeds the UNet, SpatialRescaler's stage count.
 * Those come from knowing the released model families (the table below, matched on the cond
 * stage kind and the UNet width, which tell every released LDM / SD model apart). A model outside
 * the table makes ld_detect fail with LDM_ERR_UNSUPPORTED naming exactly what is missing; `out`
 * then still holds everything that was decided. Assumptions are recorded in out->notes. */
#include "config.h"

#include "probe.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COUNT 1024

typedef struct det {
    const lw_store *s;
    const char *file;
    char undecided[384]; /* "; "-separated list of what could not be told */
} det;

static void undecided(det *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void undecided(det *d, const char *fmt, ...)
{
    size_t used = strlen(d->undecided);
    if (used + 3 >= sizeof d->undecided) return;
    if (used) {
        memcpy(d->undecided + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->undecided + used, sizeof d->undecided - used, fmt, ap);
    va_end(ap);
}

/* Dimension i of a tensor that must exist with rank `ndim`. */
static ldm_status dim_of(const det *d, const lw_tensor *t, int ndim, int i, const char *why, int *out)
{
    if (!t) return ldm_fail(LDM_ERR_INTERNAL, "%s: dim_of on a missing tensor", d->file);
    int v = ld_probe_dim(t, i);
    if (t->ndim != ndim || v < 0) {
        char shape[96];
        ld_probe_shape(t, shape, sizeof shape);
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s (%s) has shape %s, expected %d dimensions", d->file, t->name,
                        why, shape, ndim);
    }
    *out = v;
    return LDM_OK;
}

static const lw_tensor *required(const det *d, const char *what, const char *fmt, const char *p)
{
    const lw_tensor *t = ld_probe(d->s, fmt, p);
    if (!t) {
        char name[384];
        snprintf(name, sizeof name, fmt, p);
        ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s: tensor %s not found: not a layout libldm knows; pass a config",
                 d->file, what, name);
    }
    return t;
}

/* ---------------------------------------------------------------- families */

typedef struct family {
    const char *name;
    ld_cond_kind cond;
    int model_channels;
    int num_heads, num_head_channels;
    double scale_factor;     /* for KL latents; 0: only a stored scale_factor buffer (scale_by_std) */
    double linear_start, linear_end;
    int use_ema;             /* config value; -1: the class default (EMA used when stored) */
    const char *cond_stage_key;
} family;

/* From the released configs: CompVis/latent-diffusion models/ldm/<name>/config.yaml and configs/latent-diffusion/,
 * CompVis/stable-diffusion v1-inference.yaml, Stability-AI/stablediffusion v2-inference*.yaml. */
static const family families[] = {
    {"Stable Diffusion 1.x", LD_COND_CLIP, 320, 8, -1, 0.18215, 0.00085, 0.012, 0, "txt"},
    {"Stable Diffusion 2.x", LD_COND_OPENCLIP, 320, -1, 64, 0.18215, 0.00085, 0.012, 0, "txt"},
    {"LDM txt2img-1p4B", LD_COND_BERT, 320, 8, -1, 0.18215, 0.00085, 0.012, 0, "caption"},
    {"LDM text2img256", LD_COND_BERT, 192, -1, 32, 1.0, 0.0015, 0.0195, -1, "caption"},
    {"LDM layout2img-openimages256", LD_COND_BERT, 128, -1, 32, 1.0, 0.0015, 0.0205, -1, "coordinates_bbox"},
    {"LDM cin256", LD_COND_CLASS, 256, -1, 32, 1.0, 0.0015, 0.0195, -1, "class_label"},
    {"LDM cin256-v2", LD_COND_CLASS, 192, 1, -1, 1.0, 0.0015, 0.0195, 0, "class_label"},
    {"LDM celebahq/ffhq/lsun_bedrooms", LD_COND_NONE, 224, -1, 32, 1.0, 0.0015, 0.0195, -1, "image"},
    {"LDM lsun_churches", LD_COND_NONE, 192, 8, -1, 0.0, 0.0015, 0.0155, -1, "image"},
    {"LDM bsr_sr (super-resolution)", LD_COND_IDENTITY, 160, -1, 32, 1.0, 0.0015, 0.0155, -1, "LR_image"},
    {"LDM inpainting_big", LD_COND_FIRST_STAGE, 256, 8, -1, 1.0, 0.0015, 0.0205, -1, "masked_image"},
    {"LDM semantic_synthesis", LD_COND_SPATIAL_RESCALER, 128, 8, -1, 1.0, 0.0015, 0.0205, -1, "segmentation"},
};

static const family *find_family(const ld_model *m)
{
    for (size_t i = 0; i < LDM_ARRAY_LEN(families); i++)
        if (families[i].cond == m->cond.kind && families[i].model_channels == m->unet.model_channels)
            return &families[i];
    return NULL;
}

/* ---------------------------------------------------------------- first stage */

static ldm_status ae_levels(const det *d, const char *p, ld_autoencoder *a)
{
    int levels = ld_probe_count(d->s, MAX_COUNT, "%sdecoder.up.", p);
    int blocks = ld_probe_count(d->s, MAX_COUNT, "%sdecoder.up.0.block.", p);
    if (levels < 1 || levels > LD_MAX_LEVELS || blocks < 1)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: first stage: %d decoder levels with %d blocks (%sdecoder.up.N."
                        "block.M): expected 1 to %d levels", d->file, levels, blocks, p, LD_MAX_LEVELS);
    a->n_levels = levels;
    a->num_res_blocks = blocks - 1; /* the decoder has num_res_blocks + 1 blocks per level */
    a->n_attn_resolutions = 0;
    /* Attention placement is stored as pixel resolutions relative to ddconfig.resolution, which is
     * not in the checkpoint; every released first stage uses 256. */
    a->resolution = 256;
    for (int i = 0; i < levels; i++) {
        char why[64];
        int out;
        snprintf(why, sizeof why, "decoder level %d", i);
        const lw_tensor *t = ld_probe(d->s, "%sdecoder.up.%d.block.0.conv1.weight", p, i);
        if (!t) return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %sdecoder.up.%d.block.0.conv1.weight not found", d->file, p, i);
        LDM_TRY(dim_of(d, t, 4, 0, why, &out));
        if (out % a->ch)
            return ldm_fail(LDM_ERR_FORMAT, "%s: %s has %d channels, not a multiple of ch %d", d->file, t->name, out,
                            a->ch);
        a->ch_mult[i] = out / a->ch;
        if (ld_probe_prefix(d->s, "%sdecoder.up.%d.attn.", p, i))
            a->attn_resolutions[a->n_attn_resolutions++] = a->resolution >> i;
    }
    if (ld_probe_prefix(d->s, "%sdecoder.mid.attn_1.to_qkv.", p))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: first stage uses linear attention (LinAttnBlock): not supported",
                        d->file);
    a->attn_none = !ld_probe_prefix(d->s, "%sdecoder.mid.attn_1.", p);
    return LDM_OK;
}

static ldm_status detect_first_stage(const det *d, const char *p, ld_autoencoder *a)
{
    static const char *const fmts[] = {"%sencoder.conv_in.weight", "%sdecoder.conv_in.weight",
                                       "%sencoder.conv_out.weight", "%sdecoder.conv_out.weight",
                                       "%spost_quant_conv.weight", "%squant_conv.weight"};
    const lw_tensor *t[6];
    for (int i = 0; i < 6; i++)
        if (!(t[i] = required(d, "first stage", fmts[i], p))) return LDM_ERR_UNSUPPORTED;
    int ez, q;
    ld_autoencoder_defaults(a);
    LDM_TRY(dim_of(d, t[0], 4, 0, "encoder input conv", &a->ch));
    LDM_TRY(dim_of(d, t[0], 4, 1, "encoder input conv", &a->in_channels));
    LDM_TRY(dim_of(d, t[1], 4, 1, "decoder input conv", &a->z_channels));
    LDM_TRY(dim_of(d, t[2], 4, 0, "encoder output conv", &ez));
    LDM_TRY(dim_of(d, t[3], 4, 0, "decoder output conv", &a->out_ch));
    LDM_TRY(dim_of(d, t[4], 4, 1, "post_quant_conv", &a->embed_dim));
    LDM_TRY(dim_of(d, t[5], 4, 0, "quant_conv", &q));
    if (ez != a->z_channels && ez != 2 * a->z_channels)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %sencoder.conv_out.weight has %d outputs for z_channels %d", d->file, p,
                        ez, a->z_channels);
    a->double_z = ez == 2 * a->z_channels;
    const lw_tensor *cb = ld_probe(d->s, "%squantize.embedding.weight", p);
    a->is_vq = cb != NULL;
    if (cb) LDM_TRY(dim_of(d, cb, 2, 0, "VQ codebook", &a->n_embed));
    if (q != (a->is_vq ? 1 : 2) * a->embed_dim)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %squant_conv.weight has %d outputs for embed_dim %d (%s)", d->file, p, q,
                        a->embed_dim, a->is_vq ? "VQ" : "KL");
    LDM_TRY(ae_levels(d, p, a));
    a->present = 1;
    return LDM_OK;
}

/* ---------------------------------------------------------------- UNet */

static const char UNET[] = "model.diffusion_model.";

typedef enum { EL_NONE, EL_RES, EL_ATTN, EL_XF, EL_UP } element;

/* What module `output_blocks.<block>.<j>` is, from its parameter names. */
static element out_element(const det *d, int block, int j)
{
    if (ld_probe(d->s, "%soutput_blocks.%d.%d.in_layers.0.weight", UNET, block, j)) return EL_RES;
    if (ld_probe(d->s, "%soutput_blocks.%d.%d.qkv.weight", UNET, block, j)) return EL_ATTN;
    if (ld_probe(d->s, "%soutput_blocks.%d.%d.proj_in.weight", UNET, block, j)) return EL_XF;
    if (ld_probe(d->s, "%soutput_blocks.%d.%d.conv.weight", UNET, block, j)) return EL_UP;
    return EL_NONE;
}

/* The decoder half has num_res_blocks + 1 blocks per level and the last block of every level but
 * the top one ends with an upsampler (Upsample conv, or a ResBlock with resblock_updown), so the
 * first block holding an upsampler is block num_res_blocks. */
static ldm_status unet_levels(const det *d, ld_unet *u)
{
    int blocks = ld_probe_count(d->s, MAX_COUNT, "%soutput_blocks.", UNET), first_up = -1;
    for (int b = 0; b < blocks && first_up < 0; b++)
        for (int j = 1; j <= 2; j++) {
            element e = out_element(d, b, j);
            if (e == EL_UP || e == EL_RES) {
                first_up = b;
                u->resblock_updown = e == EL_RES;
                break;
            }
        }
    int per = first_up >= 0 ? first_up + 1 : blocks;
    if (blocks < 1 || blocks % per || blocks / per > LD_MAX_LEVELS)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: UNet: %d output blocks do not form levels of %d blocks", d->file,
                        blocks, per);
    u->num_res_blocks = per - 1;
    u->n_levels = blocks / per;
    u->n_attention_resolutions = 0;
    for (int l = 0; l < u->n_levels; l++) {
        int idx = (u->n_levels - 1 - l) * per, ch;
        const lw_tensor *t = ld_probe(d->s, "%soutput_blocks.%d.0.out_layers.3.weight", UNET, idx);
        if (!t) return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: UNet output block %d has no ResBlock", d->file, idx);
        LDM_TRY(dim_of(d, t, 4, 0, "UNet ResBlock", &ch));
        if (ch % u->model_channels)
            return ldm_fail(LDM_ERR_FORMAT, "%s: %s has %d channels, not a multiple of model_channels %d", d->file,
                            t->name, ch, u->model_channels);
        u->channel_mult[l] = ch / u->model_channels;
        element e = out_element(d, idx, 1);
        if (e == EL_ATTN || e == EL_XF) u->attention_resolutions[u->n_attention_resolutions++] = 1 << l;
        /* per-level depth (sgm lists it; 0 where a level has no transformer) */
        u->transformer_depths[l] =
            e == EL_XF ? ld_probe_count(d->s, MAX_COUNT, "%soutput_blocks.%d.1.transformer_blocks.", UNET, idx) : 0;
    }
    return LDM_OK;
}

static ldm_status unet_middle(const det *d, ld_unet *u)
{
    const int ch = u->model_channels * u->channel_mult[u->n_levels - 1];
    int emb;
    const lw_tensor *t = required(d, "UNet middle block", "%smiddle_block.0.emb_layers.1.weight", UNET);
    if (!t) return LDM_ERR_UNSUPPORTED;
    LDM_TRY(dim_of(d, t, 2, 0, "UNet middle ResBlock", &emb));
    u->use_scale_shift_norm = emb == 2 * ch; /* FiLM: scale and shift per channel */
    const lw_tensor *proj_in = ld_probe(d->s, "%smiddle_block.1.proj_in.weight", UNET);
    if (!proj_in) {
        if (!required(d, "UNet middle attention", "%smiddle_block.1.qkv.weight", UNET)) return LDM_ERR_UNSUPPORTED;
        return LDM_OK;
    }
    u->use_spatial_transformer = 1;
    u->use_linear_in_transformer = proj_in->ndim == 2;
    u->transformer_depth = ld_probe_count(d->s, MAX_COUNT, "%smiddle_block.1.transformer_blocks.", UNET);
    /* a per-level list only when some attention level differs from the middle block (SDXL) */
    for (int l = 0; l < u->n_levels; l++)
        if (u->transformer_depths[l] && u->transformer_depths[l] != u->transformer_depth) {
            u->n_transformer_depths = u->n_levels;
            u->transformer_depth_middle = u->transformer_depth;
        }
    if (!(t = required(d, "cross-attention", "%smiddle_block.1.transformer_blocks.0.attn2.to_k.weight", UNET)))
        return LDM_ERR_UNSUPPORTED;
    return dim_of(d, t, 2, 1, "cross-attention keys", &u->context_dim);
}

static ldm_status detect_unet(const det *d, ld_unet *u)
{
    const lw_tensor *in = required(d, "UNet", "%sinput_blocks.0.0.weight", UNET);
    const lw_tensor *out = in ? required(d, "UNet", "%sout.2.weight", UNET) : NULL;
    if (!in || !out) return LDM_ERR_UNSUPPORTED;
    ld_unet_defaults(u);
    LDM_TRY(dim_of(d, in, 4, 0, "UNet input conv", &u->model_channels));
    LDM_TRY(dim_of(d, in, 4, 1, "UNet input conv", &u->in_channels));
    LDM_TRY(dim_of(d, out, 4, 0, "UNet output conv", &u->out_channels));
    const lw_tensor *label = ld_probe(d->s, "%slabel_emb.weight", UNET);
    const lw_tensor *adm = ld_probe(d->s, "%slabel_emb.0.0.weight", UNET);
    if (label) LDM_TRY(dim_of(d, label, 2, 0, "UNet class embedding", &u->num_classes));
    else if (adm && ld_probe(d->s, "%slabel_emb.0.2.weight", UNET))
        LDM_TRY(dim_of(d, adm, 2, 1, "UNet vector embedding (num_classes: sequential)", &u->adm_in_channels));
    else if (ld_probe_prefix(d->s, "%slabel_emb.", UNET))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: UNet label_emb is not a plain class embedding (adm/continuous "
                        "labels are not supported)", d->file);
    LDM_TRY(unet_levels(d, u));
    LDM_TRY(unet_middle(d, u));
    u->present = 1;
    return LDM_OK;
}

/* ---------------------------------------------------------------- cond stage */

static const char COND[] = "cond_stage_model.";

static ldm_status text_tower(const det *d, ld_cond *c, int hf)
{
    const char *root = hf ? "transformer.text_model." : "model.";
    const lw_tensor *tok = hf ? ld_probe(d->s, "%s%sembeddings.token_embedding.weight", COND, root)
                              : ld_probe(d->s, "%s%stoken_embedding.weight", COND, root);
    const lw_tensor *pos = hf ? ld_probe(d->s, "%s%sembeddings.position_embedding.weight", COND, root)
                              : ld_probe(d->s, "%s%spositional_embedding", COND, root);
    if (!tok || !pos)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: text encoder without token/position embeddings", d->file);
    LDM_TRY(dim_of(d, tok, 2, 0, "token embedding", &c->vocab));
    LDM_TRY(dim_of(d, tok, 2, 1, "token embedding", &c->width));
    LDM_TRY(dim_of(d, pos, 2, 0, "position embedding", &c->ctx));
    c->layers = ld_probe_count(d->s, MAX_COUNT, "%s%s%s", COND, root, hf ? "encoder.layers." : "transformer.resblocks.");
    return LDM_OK;
}

static ldm_status bert(const det *d, ld_cond *c)
{
    const lw_tensor *tok = ld_probe(d->s, "%stransformer.token_emb.weight", COND);
    const lw_tensor *pos = ld_probe(d->s, "%stransformer.pos_emb.emb.weight", COND);
    if (!tok || !pos) return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: BERT encoder without token/position embeddings", d->file);
    LDM_TRY(dim_of(d, tok, 2, 0, "BERT token embedding", &c->vocab_size));
    LDM_TRY(dim_of(d, tok, 2, 1, "BERT token embedding", &c->n_embed));
    LDM_TRY(dim_of(d, pos, 2, 0, "BERT positions", &c->max_seq_len));
    /* x_transformer Encoder: layers alternate (attention, feed-forward). */
    c->n_layer = ld_probe_count(d->s, MAX_COUNT, "%stransformer.attn_layers.layers.", COND) / 2;
    /* The HF bert-base-uncased tokenizer only fits its own 30522-entry vocabulary. */
    c->use_tokenizer = c->vocab_size == 30522;
    return LDM_OK;
}

static ldm_status rescaler(const det *d, ld_cond *c, const lw_tensor *mapper)
{
    LDM_TRY(dim_of(d, mapper, 4, 0, "SpatialRescaler channel_mapper", &c->out_channels));
    LDM_TRY(dim_of(d, mapper, 4, 1, "SpatialRescaler channel_mapper", &c->in_channels));
    c->bias = ld_probe(d->s, "%schannel_mapper.bias", COND) != NULL;
    return LDM_OK;
}

/* The cond stage kind from its parameter names; no cond_stage_model.* at all stays NONE (an
 * unconditional model, or an Identity/concat one: decided later from the UNet input width). */
static ldm_status detect_cond(const det *d, ld_cond *c)
{
    const lw_tensor *t;
    ld_cond_defaults(c);
    if (ld_probe(d->s, "%stransformer.text_model.embeddings.token_embedding.weight", COND)) {
        c->kind = LD_COND_CLIP;
        return text_tower(d, c, 1);
    }
    if (ld_probe(d->s, "%smodel.token_embedding.weight", COND)) {
        c->kind = LD_COND_OPENCLIP;
        return text_tower(d, c, 0);
    }
    if (ld_probe(d->s, "%stransformer.token_emb.weight", COND)) {
        c->kind = LD_COND_BERT;
        return bert(d, c);
    }
    if ((t = ld_probe(d->s, "%sembedding.weight", COND))) {
        c->kind = LD_COND_CLASS;
        LDM_TRY(dim_of(d, t, 2, 0, "class embedding", &c->n_classes));
        return dim_of(d, t, 2, 1, "class embedding", &c->embed_dim);
    }
    if ((t = ld_probe(d->s, "%schannel_mapper.weight", COND))) {
        c->kind = LD_COND_SPATIAL_RESCALER;
        return rescaler(d, c, t);
    }
    if (ld_probe(d->s, "%sencoder.conv_in.weight", COND) || ld_probe(d->s, "%squant_conv.weight", COND)) {
        c->kind = LD_COND_FIRST_STAGE;
        return LDM_OK;
    }
    if (lw_has_prefix(d->s, COND))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: unrecognised cond_stage_model.* tensors (not CLIP, OpenCLIP, BERT, "
                        "class embedder, spatial rescaler or first stage); pass a config", d->file);
    c->kind = LD_COND_NONE;
    return LDM_OK;
}

/* ---------------------------------------------------------------- how they connect */

static const char *default_cond_stage_key(const ld_model *m)
{
    switch (m->cond.kind) {
    case LD_COND_CLIP:
    case LD_COND_OPENCLIP: return "txt";
    case LD_COND_BERT: return m->variant == LD_VARIANT_LAYOUT2IMG ? "coordinates_bbox" : "caption";
    case LD_COND_CLASS: return "class_label";
    case LD_COND_SPATIAL_RESCALER: return "segmentation";
    case LD_COND_FIRST_STAGE: return "masked_image";
    case LD_COND_IDENTITY: return "LR_image";
    default: return "image";
    }
}

static int cond_width(const ld_cond *c)
{
    switch (c->kind) {
    case LD_COND_CLASS: return c->embed_dim;
    case LD_COND_CLIP:
    case LD_COND_OPENCLIP: return c->width;
    case LD_COND_BERT: return c->n_embed;
    default: return 0;
    }
}

/* Cross-attention cond stages, with extra UNet input channels meaning SD-style inpainting. */
static ldm_status connect_crossattn(const det *d, ld_model *m, int extra)
{
    const int latent = m->first_stage.embed_dim;
    if (!m->unet.use_spatial_transformer)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: the cond stage produces a sequence but the UNet has no "
                        "cross-attention", d->file);
    if (m->unet.context_dim != cond_width(&m->cond))
        return ldm_fail(LDM_ERR_FORMAT, "%s: the cond stage produces width %d but the UNet's cross-attention expects "
                        "%d", d->file, cond_width(&m->cond), m->unet.context_dim);
    if (extra == 0) {
        m->conditioning_key = LD_CONDKEY_CROSSATTN;
        return LDM_OK;
    }
    if (extra == latent + 1) {
        m->conditioning_key = LD_CONDKEY_HYBRID;
        m->variant = LD_VARIANT_INPAINT_HYBRID;
        ld_model_note(m, "inpainting (mask + masked-image latent concatenated) assumed from %d extra UNet input "
                      "channels", extra);
        return LDM_OK;
    }
    return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: UNet takes %d input channels beyond the %d latent ones next to "
                    "cross-attention (depth / upscaling models are not supported)", d->file, extra, latent);
}

static ldm_status connect(const det *d, ld_model *m)
{
    const int latent = m->first_stage.embed_dim, extra = m->unet.in_channels - latent;
    if (extra < 0)
        return ldm_fail(LDM_ERR_FORMAT, "%s: UNet in_channels %d is smaller than the first stage's %d latent channels",
                        d->file, m->unet.in_channels, latent);
    switch (m->cond.kind) {
    case LD_COND_CLIP:
    case LD_COND_OPENCLIP:
    case LD_COND_BERT:
    case LD_COND_CLASS: return connect_crossattn(d, m, extra);
    case LD_COND_SPATIAL_RESCALER:
        if (extra != m->cond.out_channels)
            return ldm_fail(LDM_ERR_FORMAT, "%s: SpatialRescaler maps to %d channels but the UNet takes %d extra",
                            d->file, m->cond.out_channels, extra);
        m->conditioning_key = LD_CONDKEY_CONCAT;
        return LDM_OK;
    case LD_COND_FIRST_STAGE: m->conditioning_key = LD_CONDKEY_CONCAT; return LDM_OK;
    default:
        if (extra == 0) {
            m->conditioning_key = LD_CONDKEY_NONE;
            return LDM_OK;
        }
        /* No cond weights but a wider UNet input: the raw conditioning image is concatenated
         * (torch.nn.Identity cond stage, the super-resolution models). */
        m->cond.kind = LD_COND_IDENTITY;
        m->conditioning_key = LD_CONDKEY_CONCAT;
        ld_model_note(m, "concat conditioning with a %d-channel raw image (Identity cond stage) assumed", extra);
        return LDM_OK;
    }
}

/* ---------------------------------------------------------------- family knowledge */

static void decide_heads(det *d, ld_model *m, const family *f)
{
    if (f) {
        m->unet.num_heads = f->num_heads;
        m->unet.num_head_channels = f->num_head_channels;
        return;
    }
    undecided(d, "UNet attention heads (num_heads or num_head_channels)");
}

static void decide_text(det *d, ld_model *m, const family *f)
{
    ld_cond *c = &m->cond;
    if (c->kind != LD_COND_CLIP && c->kind != LD_COND_OPENCLIP) return;
    /* Every released CLIP / OpenCLIP text tower has 64-channel heads (ViT-L/14 768 -> 12,
     * ViT-H-14 1024 -> 16); the count itself is not stored. */
    if (c->width % 64 == 0) {
        c->heads = c->width / 64;
        if (!f) ld_model_note(m, "text encoder heads %d assumed (width / 64)", c->heads);
    } else {
        undecided(d, "text encoder heads (width %d is not a multiple of 64)", c->width);
    }
    if (c->kind == LD_COND_OPENCLIP) {
        c->layer_skip = 1; /* every SD 2.x config uses layer: penultimate */
        if (!f) ld_model_note(m, "OpenCLIP layer 'penultimate' assumed");
        ld_model_note(m, "parameterization eps assumed: SD 2.x 768-v models are v-prediction and need a config "
                      "with parameterization: v");
    }
}

static void decide_layout(det *d, ld_model *m, const family *f)
{
    ld_cond *c = &m->cond;
    if (c->kind != LD_COND_BERT || c->use_tokenizer) return;
    int shaped = c->max_seq_len > 5 && c->max_seq_len != 77 && (c->max_seq_len - 2) % 3 == 0;
    if (!(f && !strcmp(f->cond_stage_key, "coordinates_bbox")) && !shaped) return;
    m->variant = LD_VARIANT_LAYOUT2IMG;
    m->layout_no_tokens = c->vocab_size;
    m->layout_no_max_objects = (c->max_seq_len - 2) / 3;
    m->layout_no_object_classes = 300;
    ld_model_note(m, "layout-to-image model assumed (BERT over %d = 3 x %d + 2 bounding-box tokens); "
                  "no_object_classes 300 assumed", c->max_seq_len, m->layout_no_max_objects);
}

static void decide_rescaler(det *d, ld_model *m, const family *f)
{
    if (m->cond.kind != LD_COND_SPATIAL_RESCALER) return;
    /* Not stored: the semantic-synthesis configs use two 0.5x bilinear stages (the defaults
     * except n_stages). */
    if (f) m->cond.n_stages = 2;
    else undecided(d, "SpatialRescaler n_stages / multiplier / method");
}

static void decide_scale_factor(det *d, ld_model *m, const family *f)
{
    const lw_tensor *t = lw_find(d->s, "scale_factor");
    if (t) return; /* a scale_by_std buffer: ld_config_complete reads it */
    if (m->first_stage.is_vq) {
        m->scale_factor = 1.0; /* the class default; no released VQ-latent config sets it */
        if (!f) ld_model_note(m, "scale_factor 1.0 assumed (VQ latents)");
        return;
    }
    if (f && f->scale_factor > 0) m->scale_factor = f->scale_factor;
    else undecided(d, "scale_factor of the KL latents (not stored unless scale_by_std)");
}

/* Shortest decimal that rounds to the same float: the buffers hold float32(linear_start). */
static double shortest_decimal(float f)
{
    char buf[40];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if ((float)strtod(buf, NULL) == f) return strtod(buf, NULL);
    }
    return f;
}

/* betas = linspace(sqrt(start), sqrt(end), T) ** 2 in float64, stored float32. */
static int betas_are_linear(const float *b, int T, double start, double end)
{
    double a = sqrt(start), z = sqrt(end), step = T > 1 ? (z - a) / (T - 1) : 0;
    for (int i = 0; i < T; i++) {
        double r = i == T - 1 ? z : a + i * step;
        if (fabs((double)b[i] - r * r) > 1e-6 * r * r + 1e-12) return 0;
    }
    return 1;
}

static ldm_status decide_schedule(det *d, ld_model *m, const family *f)
{
    const lw_tensor *t = lw_find(d->s, "betas");
    const lw_tensor *ac = lw_find(d->s, "alphas_cumprod");
    int T;
    if (t) {
        LDM_TRY(dim_of(d, t, 1, 0, "betas", &T));
        if (T > 100000) return ldm_fail(LDM_ERR_FORMAT, "%s: betas has %d steps", d->file, T);
        float *b = NULL;
        LDM_TRY(lw_get_f32(d->s, "betas", 1, (int64_t[]){T}, &b));
        m->timesteps = T;
        m->linear_start = shortest_decimal(b[0]);
        m->linear_end = shortest_decimal(b[T - 1]);
        if (!betas_are_linear(b, T, m->linear_start, m->linear_end))
            ld_model_note(m, "stored betas are not a linear schedule; the stored buffers are used");
        ldm_free(b);
        return LDM_OK;
    }
    if (ac) LDM_TRY(dim_of(d, ac, 1, 0, "alphas_cumprod", &m->timesteps));
    if (f) {
        m->linear_start = f->linear_start;
        m->linear_end = f->linear_end;
    } else if (ac) {
        ld_model_note(m, "no betas buffer: the stored alphas_cumprod is used");
    } else {
        undecided(d, "beta schedule (no betas / alphas_cumprod buffers)");
    }
    return LDM_OK;
}

static ldm_status apply_family(det *d, ld_model *m)
{
    const family *f = find_family(m);
    if (f) ld_model_note(m, "recognised as %s", f->name);
    decide_heads(d, m, f);
    decide_text(d, m, f);
    decide_layout(d, m, f);
    decide_rescaler(d, m, f);
    decide_scale_factor(d, m, f);
    LDM_TRY(decide_schedule(d, m, f));
    /* use_ema: the SD / cin256-v2 / 1.4B configs say False; elsewhere the class default True, which
     * only matters when model_ema.* is stored (otherwise the EMA equals the weights). */
    m->use_ema = (f && f->use_ema >= 0) ? f->use_ema : lw_has_prefix(d->s, "model_ema.");
    snprintf(m->cond_stage_key, sizeof m->cond_stage_key, "%s", f ? f->cond_stage_key : default_cond_stage_key(m));
    m->channels = m->first_stage.embed_dim;
    /* Latent size at the first stage's training resolution (256 px for every released one). */
    m->image_size = (f && f->scale_factor == 0.18215) ? 64 : 256 >> (m->first_stage.n_levels - 1);
    return LDM_OK;
}

/* ---------------------------------------------------------------- sgm (SDXL) */

static const char EMB[] = "conditioner.embedders.";

/* The text embedders under conditioner.embedders.<i> (HF CLIP or open_clip key names). */
static ldm_status sgm_text_embedder(det *d, ld_model *m, int i, ld_embedder *e)
{
    char root[64];
    ld_cond_defaults(&e->text);
    if (ld_probe(d->s, "%s%d.transformer.text_model.embeddings.token_embedding.weight", EMB, i)) {
        e->kind = LD_EMB_CLIP;
        e->text.kind = LD_COND_CLIP;
        snprintf(root, sizeof root, "%s%d.transformer.text_model.", EMB, i);
    } else {
        e->kind = LD_EMB_OPENCLIP2;
        e->text.kind = LD_COND_OPENCLIP;
        snprintf(root, sizeof root, "%s%d.model.", EMB, i);
    }
    int hf = e->kind == LD_EMB_CLIP;
    const lw_tensor *tok = hf ? ld_probe(d->s, "%sembeddings.token_embedding.weight", root)
                              : ld_probe(d->s, "%stoken_embedding.weight", root);
    if (!tok) return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s%d.*: not a text encoder libldm knows", d->file, EMB, i);
    LDM_TRY(dim_of(d, tok, 2, 1, "token embedding", &e->text.width));
    e->text.layers = ld_probe_count(d->s, MAX_COUNT, "%s%s", root, hf ? "encoder.layers." : "transformer.resblocks.");
    if (e->text.width % 64) undecided(d, "text encoder %d heads (width %d is not a multiple of 64)", i, e->text.width);
    else e->text.heads = e->text.width / 64;
    e->input = LD_EMB_IN_TXT;
    if (hf) { /* SDXL base: FrozenCLIPEmbedder(layer: hidden, layer_idx: 11) = the penultimate of 12 */
        e->layer = LD_EMB_LAYER_HIDDEN;
        e->layer_idx = e->text.layers - 1;
        ld_model_note(m, "CLIP embedder %d: layer hidden, layer_idx %d assumed", i, e->layer_idx);
    } else { /* FrozenOpenCLIPEmbedder2(layer: penultimate, always_return_pooled, legacy: false) */
        e->layer = LD_EMB_LAYER_PENULTIMATE;
        e->legacy = 0;
        e->pooled = ld_probe(d->s, "%stext_projection", root) != NULL;
        ld_model_note(m, "OpenCLIP embedder %d: layer penultimate, legacy false%s assumed", i,
                      e->pooled ? ", pooled output" : "");
    }
    return LDM_OK;
}

/* ConcatTimestepEmbedderND has no weights: the embedders after the text towers are told from what
 * is left of adm_in_channels, in the layouts of the two released configs (base: original size,
 * crop, target size; refiner: original size, crop, aesthetic score). */
static ldm_status sgm_size_embedders(det *d, ld_model *m, int n_text, int pooled_width)
{
    ld_sgm *g = &m->sgm;
    int rest = m->unet.adm_in_channels - pooled_width;
    static const ld_emb_input base[] = {LD_EMB_IN_ORIGINAL_SIZE, LD_EMB_IN_CROP, LD_EMB_IN_TARGET_SIZE};
    static const ld_emb_input refiner[] = {LD_EMB_IN_ORIGINAL_SIZE, LD_EMB_IN_CROP, LD_EMB_IN_AESTHETIC};
    const ld_emb_input *layout = n_text == 2 ? base : refiner;
    int numbers = n_text == 2 ? 6 : 5; /* two per size tuple, one aesthetic score */
    if (rest <= 0 || rest % numbers || (rest / numbers) % 2 || g->n_embedders + 3 > LD_MAX_EMBEDDERS) {
        undecided(d, "the size/crop embedders (adm_in_channels %d with %d pooled)", m->unet.adm_in_channels,
                  pooled_width);
        return LDM_OK;
    }
    for (int k = 0; k < 3; k++) {
        ld_embedder *e = &g->emb[g->n_embedders++];
        e->kind = LD_EMB_SIZE;
        e->input = layout[k];
        e->outdim = rest / numbers;
    }
    ld_model_note(m, "%s size conditioning (outdim %d) assumed from adm_in_channels %d",
                  n_text == 2 ? "SDXL base" : "SDXL refiner", rest / numbers, m->unet.adm_in_channels);
    return LDM_OK;
}

static ldm_status detect_sgm(det *d, ld_model *m)
{
    ld_sgm *g = &m->sgm;
    m->is_diffusion = 1;
    g->present = 1;
    LDM_TRY(detect_first_stage(d, "first_stage_model.", &m->first_stage));
    LDM_TRY(detect_unet(d, &m->unet));
    m->unet.legacy = 0;
    if (!m->unet.use_spatial_transformer || !m->unet.adm_in_channels)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: an sgm checkpoint whose UNet is not SDXL-shaped (cross-attention "
                        "and label_emb.0 vector embedding)", d->file);
    int n = ld_probe_count(d->s, LD_MAX_EMBEDDERS, "%s", EMB), width = 0, pooled = 0;
    for (int i = 0; i < n; i++) {
        if (!ld_probe_prefix(d->s, "%s%d.", EMB, i)) continue;
        ld_embedder *e = &g->emb[g->n_embedders++];
        LDM_TRY(sgm_text_embedder(d, m, i, e));
        width += e->text.width;
        if (e->pooled) {
            const lw_tensor *proj = ld_probe(d->s, "%s%d.model.text_projection", EMB, i);
            int cols = 0;
            LDM_TRY(dim_of(d, proj, 2, 1, "text_projection", &cols));
            pooled += cols;
        }
    }
    if (g->n_embedders < 1 || g->n_embedders > 2 || width != m->unet.context_dim)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %d text embedders of total width %d do not feed a UNet with "
                        "context_dim %d", d->file, g->n_embedders, width, m->unet.context_dim);
    LDM_TRY(sgm_size_embedders(d, m, g->n_embedders, pooled));
    m->unet.num_head_channels = 64, m->unet.num_heads = -1;
    ld_model_note(m, "recognised as SDXL (sgm DiffusionEngine); num_head_channels 64, scale_factor 0.13025, "
                  "DiscreteDenoiser eps over LegacyDDPMDiscretization 0.00085..0.012 assumed");
    m->scale_factor = 0.13025;
    m->parameterization = LD_PARAM_EPS;
    m->linear_start = 0.00085, m->linear_end = 0.012, m->timesteps = 1000;
    m->use_ema = 0;
    m->conditioning_key = LD_CONDKEY_CROSSATTN;
    snprintf(m->cond_stage_key, sizeof m->cond_stage_key, "txt");
    m->channels = m->first_stage.embed_dim;
    m->image_size = 128;
    return LDM_OK;
}

/* ---------------------------------------------------------------- entry */

static ldm_status detect_ldm(det *d, ld_model *m)
{
    m->is_diffusion = 1;
    LDM_TRY(detect_first_stage(d, "first_stage_model.", &m->first_stage));
    LDM_TRY(detect_unet(d, &m->unet));
    LDM_TRY(detect_cond(d, &m->cond));
    LDM_TRY(connect(d, m));
    return apply_family(d, m);
}

ldm_status ld_detect(const lw_store *s, ld_model *out)
{
    if (!s || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ld_detect: NULL store or output");
    ld_model_defaults(out);
    det d = {s, lw_path(s) ? lw_path(s) : "checkpoint", ""};
    if (lw_find(s, "model.diffusion_model.input_blocks.0.0.weight") && lw_has_prefix(s, EMB)) {
        LDM_TRY(detect_sgm(&d, out));
    } else if (lw_find(s, "model.diffusion_model.input_blocks.0.0.weight")) {
        LDM_TRY(detect_ldm(&d, out));
    } else if (lw_find(s, "encoder.conv_in.weight") && lw_find(s, "decoder.conv_in.weight")) {
        out->is_diffusion = 0;
        LDM_TRY(detect_first_stage(&d, "", &out->first_stage));
    } else {
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: neither a latent diffusion model (model.diffusion_model.*) nor an "
                        "autoencoder (encoder.*, decoder.*): not a checkpoint libldm can detect", d.file);
    }
    if (out->first_stage.n_attn_resolutions)
        ld_model_note(out, "first stage resolution 256 assumed (attn_resolutions %d...)",
                      out->first_stage.attn_resolutions[0]);
    if (d.undecided[0])
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: cannot tell from the weights alone: %s. Pass the model's YAML "
                        "config (--config / ldm_model_params.config_path)", d.file, d.undecided);
    return LDM_OK;
}
