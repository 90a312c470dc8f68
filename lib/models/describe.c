/* describe.c - ld_describe: a multi-line human summary of a model description and its checkpoint
 * (what kind of model, each component's main hyper-parameters, parameter counts, dtypes). */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct writer {
    char *buf;
    size_t cap, len;
    int truncated;
} writer;

static void put(writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(writer *w, const char *fmt, ...)
{
    if (w->truncated) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->buf + w->len, w->cap - w->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= w->cap - w->len) {
        w->truncated = 1;
        w->len = w->cap - 1;
        return;
    }
    w->len += (size_t)n;
}

static void put_list(writer *w, const int *v, int n)
{
    put(w, "[");
    for (int i = 0; i < n; i++) put(w, "%s%d", i ? "," : "", v[i]);
    put(w, "]");
}

static void put_count(writer *w, unsigned long long n)
{
    if (n >= 1000000000ULL) put(w, "%.2fB", n / 1e9);
    else if (n >= 1000000ULL) put(w, "%.2fM", n / 1e6);
    else if (n >= 1000ULL) put(w, "%.1fK", n / 1e3);
    else put(w, "%llu", n);
}

/* ---------------------------------------------------------------- checkpoint statistics */

enum { PART_FIRST, PART_UNET, PART_COND, PART_EMA, PART_OTHER, PART_COUNT };

typedef struct stats {
    unsigned long long params[PART_COUNT];
    size_t tensors[LW_BOOL + 1];
    unsigned long long bytes[LW_BOOL + 1];
    size_t total;
} stats;

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

static int part_of(const char *name)
{
    static const char *const standalone[] = {"encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize."};
    if (starts(name, "first_stage_model.")) return PART_FIRST;
    if (starts(name, "model.diffusion_model.")) return PART_UNET;
    if (starts(name, "cond_stage_model.") || starts(name, "conditioner.")) return PART_COND;
    if (starts(name, "model_ema.")) return PART_EMA;
    for (size_t i = 0; i < LDM_ARRAY_LEN(standalone); i++)
        if (starts(name, standalone[i])) return PART_FIRST;
    return PART_OTHER;
}

static void gather(const lw_store *s, stats *st)
{
    memset(st, 0, sizeof *st);
    st->total = lw_count(s);
    for (size_t i = 0; i < st->total; i++) {
        const lw_tensor *t = lw_at(s, i);
        unsigned long long numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (unsigned long long)t->shape[d];
        /* Parameters are the floating tensors; integer buffers (position_ids, num_updates) are not. */
        int floating = t->dtype == LW_F32 || t->dtype == LW_F16 || t->dtype == LW_BF16 || t->dtype == LW_F64;
        if (floating) st->params[part_of(t->name)] += numel;
        if ((unsigned)t->dtype <= LW_BOOL) {
            st->tensors[t->dtype]++;
            st->bytes[t->dtype] += t->nbytes;
        }
    }
}

static void put_params(writer *w, const stats *st, int part)
{
    if (!st) return;
    put(w, "; ");
    put_count(w, st->params[part]);
    put(w, " parameters");
}

/* ---------------------------------------------------------------- components */

static const char *kind_name(const ld_model *m)
{
    if (m->sgm.present) return "text-to-image diffusion, SDXL style (sgm DiffusionEngine, GeneralConditioner)";
    switch (m->cond.kind) {
    case LD_COND_CLIP: return "text-to-image LDM, Stable Diffusion 1.x style (CLIP text encoder)";
    case LD_COND_OPENCLIP: return "text-to-image LDM, Stable Diffusion 2.x style (OpenCLIP text encoder)";
    case LD_COND_BERT:
        return m->variant == LD_VARIANT_LAYOUT2IMG ? "layout-to-image LDM (bounding-box tokens, BERT encoder)"
                                                   : "text-to-image LDM (BERT encoder)";
    case LD_COND_CLASS: return "class-conditional LDM";
    case LD_COND_SPATIAL_RESCALER: return "semantic-synthesis LDM (segmentation map, spatial rescaler)";
    case LD_COND_FIRST_STAGE: return "inpainting LDM (masked image through the first stage)";
    case LD_COND_IDENTITY: return "image-conditioned LDM (raw image concatenated, e.g. super-resolution)";
    default: return "unconditional LDM";
    }
}

static const char *condkey_name(ld_condkey k)
{
    static const char *const names[] = {"none", "crossattn", "concat", "hybrid", "adm"};
    return (unsigned)k < LDM_ARRAY_LEN(names) ? names[k] : "?";
}

static void describe_schedule(writer *w, const ld_model *m)
{
    static const char *const params[] = {"eps", "v", "x0"};
    static const char *const scheds[] = {"linear", "cosine", "sqrt_linear", "sqrt"};
    put(w, "diffusion: %s-prediction, %s betas", (unsigned)m->parameterization < 3 ? params[m->parameterization] : "?",
        (unsigned)m->beta_schedule < 4 ? scheds[m->beta_schedule] : "?");
    if (m->beta_schedule == LD_SCHED_COSINE) put(w, " (s %g)", m->cosine_s);
    else put(w, " %g..%g", m->linear_start, m->linear_end);
    put(w, ", %d steps, conditioning %s (cond_stage_key %s), scale_factor %g, use_ema %s\n", m->timesteps,
        condkey_name(m->conditioning_key), m->cond_stage_key, m->scale_factor, m->use_ema ? "true" : "false");
}

static void describe_first_stage(writer *w, const ld_autoencoder *a, const stats *st)
{
    put(w, "first stage: %s, f%d, ch %d, ch_mult ", a->is_vq ? "VQModel" : "AutoencoderKL",
        a->n_levels > 0 ? 1 << (a->n_levels - 1) : 0, a->ch);
    put_list(w, a->ch_mult, a->n_levels);
    put(w, ", num_res_blocks %d, z_channels %d, embed_dim %d", a->num_res_blocks, a->z_channels, a->embed_dim);
    if (a->is_vq) put(w, ", n_embed %d", a->n_embed);
    put(w, ", attn_resolutions ");
    put_list(w, a->attn_resolutions, a->n_attn_resolutions);
    put(w, " at resolution %d, mid attention %s", a->resolution, a->attn_none ? "none" : "yes");
    put_params(w, st, PART_FIRST);
    put(w, "\n");
}

static void describe_unet(writer *w, const ld_unet *u, const stats *st)
{
    put(w, "unet: in %d, out %d, model_channels %d, channel_mult ", u->in_channels, u->out_channels,
        u->model_channels);
    put_list(w, u->channel_mult, u->n_levels);
    put(w, ", num_res_blocks %d, attention at ds ", u->num_res_blocks);
    put_list(w, u->attention_resolutions, u->n_attention_resolutions);
    if (u->use_spatial_transformer && u->n_transformer_depths) {
        int depths[LD_MAX_LEVELS];
        for (int l = 0; l < u->n_levels; l++) depths[l] = ld_unet_level_depth(u, l);
        put(w, " (SpatialTransformer depths ");
        put_list(w, depths, u->n_levels);
        put(w, " middle %d, context_dim %d, %s proj)", ld_unet_middle_depth(u), u->context_dim,
            u->use_linear_in_transformer ? "linear" : "conv");
    } else if (u->use_spatial_transformer)
        put(w, " (SpatialTransformer depth %d, context_dim %d, %s proj)", u->transformer_depth, u->context_dim,
            u->use_linear_in_transformer ? "linear" : "conv");
    else
        put(w, " (AttentionBlock)");
    if (u->num_head_channels > 0) put(w, ", num_head_channels %d", u->num_head_channels);
    else if (u->num_heads > 0) put(w, ", num_heads %d", u->num_heads);
    else put(w, ", heads unknown");
    if (u->use_scale_shift_norm) put(w, ", scale-shift norm");
    if (u->resblock_updown) put(w, ", resblock up/down");
    if (u->no_conv_resample) put(w, ", conv_resample false");
    if (u->num_classes) put(w, ", num_classes %d", u->num_classes);
    if (u->time_cond_proj_dim > 0) put(w, ", LCM guidance embedding %d", u->time_cond_proj_dim);
    if (u->adm_in_channels) put(w, ", vector conditioning y of %d (num_classes: sequential)", u->adm_in_channels);
    put_params(w, st, PART_UNET);
    put(w, "\n");
}

static const char *const emb_inputs[] = {"txt", "original_size_as_tuple", "crop_coords_top_left",
                                         "target_size_as_tuple", "aesthetic_score"};

/* sgm GeneralConditioner: one line per embedder. */
static void describe_sgm_cond(writer *w, const ld_model *m, const stats *st)
{
    const ld_sgm *g = &m->sgm;
    put(w, "cond: GeneralConditioner, %d embedders", g->n_embedders);
    put_params(w, st, PART_COND);
    put(w, "\n");
    for (int i = 0; i < g->n_embedders; i++) {
        const ld_embedder *e = &g->emb[i];
        put(w, "  embedder %d (%s): ", i, emb_inputs[e->input]);
        if (e->kind == LD_EMB_SIZE) put(w, "ConcatTimestepEmbedderND, outdim %d", e->outdim);
        else
            put(w, "%s, width %d, %d layers, %d heads, layer %s", e->kind == LD_EMB_CLIP ? "FrozenCLIPEmbedder"
                                                                                          : "FrozenOpenCLIPEmbedder2",
                e->text.width, e->text.layers, e->text.heads,
                e->layer == LD_EMB_LAYER_LAST ? "last" : e->layer == LD_EMB_LAYER_HIDDEN ? "hidden" : "penultimate");
        if (e->layer == LD_EMB_LAYER_HIDDEN) put(w, " %d", e->layer_idx);
        if (e->pooled) put(w, ", pooled");
        put(w, "\n");
    }
}

static void describe_cond(writer *w, const ld_model *m, const stats *st)
{
    const ld_cond *c = &m->cond;
    if (m->sgm.present) {
        describe_sgm_cond(w, m, st);
        return;
    }
    switch (c->kind) {
    case LD_COND_CLASS:
        put(w, "cond: ClassEmbedder, %d classes -> %d", c->n_classes, c->embed_dim);
        if (ld_class_uncond(c) >= 0) put(w, ", unconditional class %d", ld_class_uncond(c));
        else put(w, ", no unconditional class");
        break;
    case LD_COND_CLIP:
    case LD_COND_OPENCLIP:
        put(w, "cond: %s, width %d, %d layers, %d heads, vocab %d, ctx %d, %s layer",
            c->kind == LD_COND_CLIP ? "FrozenCLIPEmbedder" : "FrozenOpenCLIPEmbedder", c->width, c->layers, c->heads,
            c->vocab, c->ctx, c->layer_skip ? "penultimate" : "last");
        break;
    case LD_COND_BERT:
        put(w, "cond: BERTEmbedder, n_embed %d, n_layer %d, vocab %d, max_seq_len %d, %s", c->n_embed, c->n_layer,
            c->vocab_size, c->max_seq_len, c->use_tokenizer ? "bert-base-uncased tokenizer" : "token ids");
        if (m->variant == LD_VARIANT_LAYOUT2IMG)
            put(w, "; layout tokens %d, %d objects, %d classes", m->layout_no_tokens, m->layout_no_max_objects,
                m->layout_no_object_classes);
        break;
    case LD_COND_SPATIAL_RESCALER:
        put(w, "cond: SpatialRescaler, %d x %s %g, %d -> %d channels%s", c->n_stages,
            c->method_bilinear ? "bilinear" : "nearest", c->multiplier, c->in_channels, c->out_channels,
            c->bias ? " (bias)" : "");
        break;
    case LD_COND_FIRST_STAGE: put(w, "cond: the first stage (__is_first_stage__)"); break;
    case LD_COND_IDENTITY: put(w, "cond: identity (the conditioning image itself)"); break;
    default: put(w, "cond: none (unconditional)"); break;
    }
    put_params(w, st, PART_COND);
    put(w, "\n");
}

static void describe_tensors(writer *w, const stats *st)
{
    put(w, "tensors: %zu", st->total);
    if (st->params[PART_EMA]) {
        put(w, ", EMA copies ");
        put_count(w, st->params[PART_EMA]);
    }
    if (st->params[PART_OTHER]) {
        put(w, ", other (buffers, loss) ");
        put_count(w, st->params[PART_OTHER]);
    }
    put(w, "; dtypes:");
    const char *sep = " ";
    for (int d = 0; d <= LW_BOOL; d++)
        if (st->tensors[d]) {
            put(w, "%s%s %zu tensors %.1f MB", sep, lw_dtype_name((lw_dtype)d), st->tensors[d], st->bytes[d] / 1e6);
            sep = ", ";
        }
    put(w, "\n");
}

ldm_status ld_describe(const ld_model *m, const lw_store *s, char *buf, size_t cap)
{
    if (!m || !buf || cap == 0) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ld_describe: NULL model or empty buffer");
    writer w = {buf, cap, 0, 0};
    buf[0] = '\0';
    stats st;
    if (s) gather(s, &st);
    const stats *sp = s ? &st : NULL;
    if (m->is_diffusion) {
        put(&w, "%s%s\n", kind_name(m), m->variant == LD_VARIANT_INPAINT_HYBRID ? ", inpainting (hybrid)" : "");
        describe_schedule(&w, m);
        describe_first_stage(&w, &m->first_stage, sp);
        describe_unet(&w, &m->unet, sp);
        describe_cond(&w, m, sp);
    } else {
        put(&w, "autoencoder (standalone first stage)\n");
        describe_first_stage(&w, &m->first_stage, sp);
    }
    if (sp) describe_tensors(&w, sp);
    if (m->notes[0]) put(&w, "notes: %s\n", m->notes);
    if (w.truncated)
        return ldm_fail(LDM_ERR_LIMIT, "ld_describe: the description does not fit in %zu bytes (truncated)", cap);
    return LDM_OK;
}
