/* desc.c - constructor defaults of the reference classes, so that a YAML config (which only lists
 * what differs) and weight detection both start from what the Python code would use. */
#include "desc.h"

#include <stdio.h>
#include <string.h>

/* ldm.modules.diffusionmodules.model.Encoder/Decoder keyword defaults; ch, num_res_blocks,
 * z_channels, resolution and attn_resolutions have none (they are required). */
void ld_autoencoder_defaults(ld_autoencoder *a)
{
    memset(a, 0, sizeof *a);
    a->in_channels = 3;
    a->out_ch = 3;
    static const int mult[] = {1, 2, 4, 8};
    for (size_t i = 0; i < LDM_ARRAY_LEN(mult); i++) a->ch_mult[i] = mult[i];
    a->n_levels = (int)LDM_ARRAY_LEN(mult);
    a->double_z = 1;
}

/* openaimodel.UNetModel keyword defaults. num_heads and num_head_channels are both -1 there and
 * the constructor asserts that one of them is set. */
void ld_unet_defaults(ld_unet *u)
{
    memset(u, 0, sizeof *u);
    static const int mult[] = {1, 2, 4, 8};
    for (size_t i = 0; i < LDM_ARRAY_LEN(mult); i++) u->channel_mult[i] = mult[i];
    u->n_levels = (int)LDM_ARRAY_LEN(mult);
    u->num_heads = -1;
    u->num_head_channels = -1;
    u->transformer_depth = 1;
    u->legacy = 1;
}

int ld_unet_level_depth(const ld_unet *u, int level)
{
    if (u->n_transformer_depths > 0 && level >= 0 && level < u->n_transformer_depths)
        return u->transformer_depths[level];
    return u->transformer_depth;
}

/* sgm: transformer_depth_middle = transformer_depth[-1] (an int depth is first made a list). */
int ld_unet_middle_depth(const ld_unet *u)
{
    if (u->transformer_depth_middle > 0) return u->transformer_depth_middle;
    if (u->n_transformer_depths > 0) return u->transformer_depths[u->n_transformer_depths - 1];
    return u->transformer_depth;
}

/* Defaults of every cond-stage class in ldm.modules.encoders.modules. Text tower dims stay 0
 * ("take from the weights") except where a class fixes them. */
void ld_cond_defaults(ld_cond *c)
{
    memset(c, 0, sizeof *c);
    c->kind = LD_COND_NONE;
    c->n_classes = 1000;     /* ClassEmbedder */
    c->ucg_rate = -1.0;      /* not given: the extra class n_classes - 1 is the unconditional one */
    c->ctx = 77;             /* FrozenCLIPEmbedder / FrozenOpenCLIPEmbedder max_length */
    c->vocab_size = 30522;   /* BERTEmbedder: bert-base-uncased */
    c->max_seq_len = 77;
    c->bert_heads = 8;       /* x_transformer Encoder defaults, not configurable via BERTEmbedder */
    c->bert_dim_head = 64;
    c->use_tokenizer = 1;
    c->n_stages = 1;         /* SpatialRescaler */
    c->in_channels = 3;
    c->multiplier = 0.5;
    c->method_bilinear = 1;
}

void ld_model_defaults(ld_model *m)
{
    memset(m, 0, sizeof *m);
    m->variant = LD_VARIANT_LDM;
    snprintf(m->cond_stage_key, sizeof m->cond_stage_key, "image");
    m->parameterization = LD_PARAM_EPS;
    m->conditioning_key = LD_CONDKEY_NONE;
    m->scale_factor = 1.0;
    m->timesteps = 1000;
    m->beta_schedule = LD_SCHED_LINEAR;
    m->linear_start = 1e-4;
    m->linear_end = 2e-2;
    m->cosine_s = 8e-3;
    m->use_ema = 1;
    m->channels = 3;
    m->image_size = 256;
    ld_autoencoder_defaults(&m->first_stage);
    ld_unet_defaults(&m->unet);
    ld_cond_defaults(&m->cond);
}

void ld_model_note(ld_model *m, const char *fmt, ...)
{
    size_t used = strnlen(m->notes, sizeof m->notes);
    if (used + 3 >= sizeof m->notes) return;
    if (used) {
        memcpy(m->notes + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->notes + used, sizeof m->notes - used, fmt, ap);
    va_end(ap);
}

int ld_class_uncond(const ld_cond *c)
{
    if (c->kind != LD_COND_CLASS || c->n_classes < 2 || c->ucg_rate == 0.0) return -1;
    return c->n_classes - 1;
}
