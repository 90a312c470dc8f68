/* diffusers_config.c - a diffusers folder's config.json files into the model description
 * (diffusers_internal.h). The class defaults are those of diffusers 0.30 (UNet2DConditionModel,
 * AutoencoderKL, the schedulers) and transformers' CLIPTextConfig. */
#include "diffusers_internal.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define NO_DEFAULT INT_MIN
#define MAX_WIDTH  (1 << 20)

static int absent(const lj_value *v)
{
    return !v || v->type == LJ_NULL;
}

static ldm_status bad_type(const char *file, const char *key, const char *want)
{
    return ldm_fail(LDM_ERR_FORMAT, "%s: \"%s\" must be %s", file, key, want);
}

static ldm_status int_value(const char *file, const char *key, const lj_value *v, int lo, int hi, int *out)
{
    int64_t x = 0;
    *out = lo;
    if (!v || lj_int64(v, &x) || x < lo || x > hi) {
        char want[64];
        snprintf(want, sizeof want, "an integer in [%d, %d]", lo, hi);
        return bad_type(file, key, want);
    }
    *out = (int)x;
    return LDM_OK;
}

static ldm_status get_int(const char *file, const lj_value *c, const char *key, int fallback, int lo, int hi, int *out)
{
    const lj_value *v = lj_get(c, key);
    *out = fallback == NO_DEFAULT ? lo : fallback;
    if (absent(v)) {
        if (fallback == NO_DEFAULT) return ldm_fail(LDM_ERR_FORMAT, "%s: key \"%s\" is missing", file, key);
        *out = fallback;
        return LDM_OK;
    }
    return int_value(file, key, v, lo, hi, out);
}

/* An integer, or a list of n integers (per level); a single one applies to every level. */
static ldm_status get_per_level(const char *file, const lj_value *c, const char *key, int fallback, int n, int lo,
                                int hi, int *out)
{
    const lj_value *v = lj_get(c, key);
    if (v && v->type == LJ_ARRAY) {
        if ((int)v->count != n)
            return ldm_fail(LDM_ERR_FORMAT, "%s: \"%s\" has %zu entries for %d levels", file, key, v->count, n);
        for (int i = 0; i < n; i++) LDM_TRY(int_value(file, key, v->items[i], lo, hi, &out[i]));
        return LDM_OK;
    }
    int x;
    LDM_TRY(get_int(file, c, key, fallback, lo, hi, &x));
    for (int i = 0; i < n; i++) out[i] = x;
    return LDM_OK;
}

static ldm_status get_int_list(const char *file, const lj_value *c, const char *key, int lo, int hi, int *out, int *n)
{
    const lj_value *v = lj_get(c, key);
    if (!v || v->type != LJ_ARRAY || v->count < 1 || v->count > LD_MAX_LEVELS) {
        char want[64];
        snprintf(want, sizeof want, "a list of 1 to %d integers", LD_MAX_LEVELS);
        return absent(v) ? ldm_fail(LDM_ERR_FORMAT, "%s: key \"%s\" is missing", file, key) : bad_type(file, key, want);
    }
    *n = (int)v->count;
    for (int i = 0; i < *n; i++) LDM_TRY(int_value(file, key, v->items[i], lo, hi, &out[i]));
    return LDM_OK;
}

static ldm_status get_str(const char *file, const lj_value *c, const char *key, const char *fallback, const char **out)
{
    const lj_value *v = lj_get(c, key);
    *out = fallback;
    if (absent(v)) {
        *out = fallback;
        return LDM_OK;
    }
    if (v->type != LJ_STRING) return bad_type(file, key, "a string");
    *out = v->string;
    return LDM_OK;
}

/* The string list `key` of exactly n entries; out[i] borrowed from c. */
static ldm_status get_str_list(const char *file, const lj_value *c, const char *key, int n, const char **out)
{
    const lj_value *v = lj_get(c, key);
    if (absent(v)) return ldm_fail(LDM_ERR_FORMAT, "%s: key \"%s\" is missing", file, key);
    if (v->type != LJ_ARRAY || (int)v->count != n)
        return ldm_fail(LDM_ERR_FORMAT, "%s: \"%s\" must be a list of %d block types (one per block_out_channels)",
                        file, key, n);
    for (int i = 0; i < n; i++) {
        if (v->items[i]->type != LJ_STRING) return bad_type(file, key, "a list of strings");
        out[i] = v->items[i]->string;
    }
    return LDM_OK;
}

static ldm_status get_num(const char *file, const lj_value *c, const char *key, double fallback, double *out)
{
    const lj_value *v = lj_get(c, key);
    *out = fallback;
    if (absent(v)) {
        *out = fallback;
        return LDM_OK;
    }
    if (v->type != LJ_NUMBER || !isfinite(v->number)) return bad_type(file, key, "a number");
    *out = v->number;
    return LDM_OK;
}

static ldm_status get_bool(const char *file, const lj_value *c, const char *key, int fallback, int *out)
{
    const lj_value *v = lj_get(c, key);
    *out = fallback;
    if (absent(v)) {
        *out = fallback;
        return LDM_OK;
    }
    if (v->type != LJ_BOOL) return bad_type(file, key, "true or false");
    *out = v->boolean;
    return LDM_OK;
}

/* ---- options libldm implements with one value only */

static ldm_status unsupported(const char *file, const char *key, const char *value, const char *what)
{
    return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: \"%s\": %s is not supported%s%s", file, key, value, what ? ": " : "",
                    what ? what : "");
}

static ldm_status want_str(const char *file, const lj_value *c, const char *key, const char *fallback, const char *only)
{
    const char *s;
    LDM_TRY(get_str(file, c, key, fallback, &s));
    if (!s || strcmp(s, only)) return unsupported(file, key, s ? s : "null", NULL);
    return LDM_OK;
}

static ldm_status want_null(const char *file, const lj_value *c, const char *key, const char *what)
{
    const lj_value *v = lj_get(c, key);
    if (absent(v)) return LDM_OK;
    char value[64];
    if (v->type == LJ_STRING)
        snprintf(value, sizeof value, "\"%.50s\"", v->string);
    else if (v->type == LJ_NUMBER)
        snprintf(value, sizeof value, "%g", v->number);
    else
        snprintf(value, sizeof value, "a value");
    return unsupported(file, key, value, what);
}

/* A boolean (or, for only_cross_attention, a list of booleans) that must be false. */
static ldm_status want_false(const char *file, const lj_value *c, const char *key)
{
    const lj_value *v = lj_get(c, key);
    if (v && v->type == LJ_ARRAY) {
        for (size_t i = 0; i < v->count; i++)
            if (v->items[i]->type != LJ_BOOL || v->items[i]->boolean) return unsupported(file, key, "true", NULL);
        return LDM_OK;
    }
    int b;
    LDM_TRY(get_bool(file, c, key, 0, &b));
    return b ? unsupported(file, key, "true", NULL) : LDM_OK;
}

static ldm_status want_num(const char *file, const lj_value *c, const char *key, double fallback, double only)
{
    double x;
    LDM_TRY(get_num(file, c, key, fallback, &x));
    if (fabs(x - only) > 1e-12 * fabs(only)) {
        char value[40];
        snprintf(value, sizeof value, "%g", x);
        return unsupported(file, key, value, NULL);
    }
    return LDM_OK;
}

static ldm_status want_class(const char *file, const lj_value *c, const char *only)
{
    const char *s;
    LDM_TRY(get_str(file, c, "_class_name", only, &s));
    if (strcmp(s, only))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: \"_class_name\": %s is not supported (libldm reads %s here)", file, s,
                        only);
    return LDM_OK;
}

/* ---------------------------------------------------------------- UNet2DConditionModel */

/* Options of UNet2DConditionModel that change the network, at the only values libldm runs. */
static ldm_status unet_fixed_options(const char *file, const lj_value *c)
{
    int b;
    LDM_TRY(want_str(file, c, "act_fn", "silu", "silu"));
    LDM_TRY(want_str(file, c, "time_embedding_type", "positional", "positional"));
    LDM_TRY(want_str(file, c, "mid_block_type", "UNetMidBlock2DCrossAttn", "UNetMidBlock2DCrossAttn"));
    LDM_TRY(want_str(file, c, "attention_type", "default", "default"));
    LDM_TRY(want_num(file, c, "norm_eps", 1e-5, 1e-5));
    LDM_TRY(want_num(file, c, "freq_shift", 0, 0));
    LDM_TRY(want_num(file, c, "resnet_out_scale_factor", 1.0, 1.0));
    LDM_TRY(want_num(file, c, "mid_block_scale_factor", 1.0, 1.0));
    LDM_TRY(want_num(file, c, "downsample_padding", 1.0, 1.0));
    LDM_TRY(get_bool(file, c, "flip_sin_to_cos", 1, &b));
    if (!b) return unsupported(file, "flip_sin_to_cos", "false", "the CompVis timestep embedding is cos-first");
    static const char *const falses[] = {"dual_cross_attention", "only_cross_attention", "center_input_sample",
                                         "class_embeddings_concat", "resnet_skip_time_act"};
    for (size_t i = 0; i < LDM_ARRAY_LEN(falses); i++) LDM_TRY(want_false(file, c, falses[i]));
    LDM_TRY(want_null(file, c, "addition_embed_type", "SDXL-style added embeddings (a diffusers SDXL folder)"));
    LDM_TRY(want_null(file, c, "class_embed_type", NULL));
    LDM_TRY(want_null(file, c, "num_class_embeds", "class-conditional diffusers UNets"));
    LDM_TRY(want_null(file, c, "encoder_hid_dim", NULL));
    LDM_TRY(want_null(file, c, "encoder_hid_dim_type", NULL));
    LDM_TRY(want_null(file, c, "time_embedding_dim", NULL));
    LDM_TRY(want_null(file, c, "timestep_post_act", NULL));
    LDM_TRY(want_null(file, c, "time_embedding_act_fn", NULL));
    LDM_TRY(want_null(file, c, "cross_attention_norm", NULL));
    LDM_TRY(want_null(file, c, "reverse_transformer_layers_per_block", NULL));
    int k;
    LDM_TRY(get_int(file, c, "conv_in_kernel", 3, 1, 15, &k));
    if (k != 3) return unsupported(file, "conv_in_kernel", "a kernel other than 3", NULL);
    LDM_TRY(get_int(file, c, "conv_out_kernel", 3, 1, 15, &k));
    if (k != 3) return unsupported(file, "conv_out_kernel", "a kernel other than 3", NULL);
    LDM_TRY(get_int(file, c, "norm_num_groups", 32, 1, MAX_WIDTH, &k));
    if (k != 32) return unsupported(file, "norm_num_groups", "a group count other than 32", NULL);
    return LDM_OK;
}

/* Which levels have cross-attention: CrossAttnDownBlock2D / DownBlock2D, mirrored by the up blocks. */
static ldm_status unet_block_types(const char *file, const lj_value *c, int n, ld_unet_layout *l)
{
    const char *down[LD_MAX_LEVELS], *up[LD_MAX_LEVELS];
    LDM_TRY(get_str_list(file, c, "down_block_types", n, down));
    LDM_TRY(get_str_list(file, c, "up_block_types", n, up));
    for (int i = 0; i < n; i++) {
        if (!strcmp(down[i], "CrossAttnDownBlock2D"))
            l->level_has_attn[i] = 1;
        else if (strcmp(down[i], "DownBlock2D"))
            return unsupported(file, "down_block_types", down[i], NULL);
        const char *mirror = l->level_has_attn[i] ? "CrossAttnUpBlock2D" : "UpBlock2D";
        if (strcmp(up[n - 1 - i], mirror))
            return ldm_fail(LDM_ERR_UNSUPPORTED,
                            "%s: up_block_types[%d] is %s where down_block_types[%d] %s asks for "
                            "%s (CompVis UNets mirror their levels)",
                            file, n - 1 - i, up[n - 1 - i], i, down[i], mirror);
    }
    return LDM_OK;
}

/* diffusers' per-level head counts (num_attention_heads, else the historically misnamed
 * attention_head_dim) as CompVis's single num_heads or num_head_channels. */
static ldm_status unet_heads(const char *file, const lj_value *c, const int *boc, int n, const ld_unet_layout *l,
                             ld_unet *u)
{
    int heads[LD_MAX_LEVELS];
    const char *key = absent(lj_get(c, "num_attention_heads")) ? "attention_head_dim" : "num_attention_heads";
    LDM_TRY(get_per_level(file, c, key, 8, n, 1, MAX_WIDTH, heads));
    int same_heads = 1, same_dim = 1, h0 = -1, d0 = -1;
    for (int i = 0; i < n; i++) {
        if (!l->level_has_attn[i] && i != n - 1) continue; /* the middle block uses the last level's */
        if (boc[i] % heads[i])
            return ldm_fail(LDM_ERR_FORMAT, "%s: \"%s\"[%d] = %d heads do not divide %d channels", file, key, i,
                            heads[i], boc[i]);
        if (h0 < 0) h0 = heads[i], d0 = boc[i] / heads[i];
        same_heads &= heads[i] == h0;
        same_dim &= boc[i] / heads[i] == d0;
    }
    if (same_heads)
        u->num_heads = h0, u->num_head_channels = -1;
    else if (same_dim)
        u->num_heads = -1, u->num_head_channels = d0;
    else
        return unsupported(file, key, "per-level heads with neither a common count nor a common width",
                           "CompVis UNets have one of the two");
    return LDM_OK;
}

ldm_status ldd_unet_config(const char *file, const lj_value *c, ld_unet *u, ld_unet_layout *l, int *sample_size)
{
    int boc[LD_MAX_LEVELS], n, depth[LD_MAX_LEVELS], per[LD_MAX_LEVELS];
    ld_unet_defaults(u);
    memset(l, 0, sizeof *l);
    LDM_TRY(want_class(file, c, "UNet2DConditionModel"));
    LDM_TRY(unet_fixed_options(file, c));
    LDM_TRY(get_int_list(file, c, "block_out_channels", 1, MAX_WIDTH, boc, &n));
    for (int i = 0; i < n; i++) {
        if (boc[i] % boc[0] || boc[i] % 32)
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: block_out_channels[%d] = %d is not a multiple of %d and of 32",
                            file, i, boc[i], boc[0]);
        u->channel_mult[i] = boc[i] / boc[0];
    }
    u->n_levels = l->n_levels = n;
    u->model_channels = boc[0];
    LDM_TRY(get_per_level(file, c, "layers_per_block", 2, n, 0, 64, per));
    for (int i = 1; i < n; i++)
        if (per[i] != per[0]) return unsupported(file, "layers_per_block", "a per-level list", NULL);
    u->num_res_blocks = l->num_res_blocks = per[0];
    LDM_TRY(unet_block_types(file, c, n, l));
    for (int i = 0, ds = 1; i < n; i++, ds *= 2)
        if (l->level_has_attn[i]) u->attention_resolutions[u->n_attention_resolutions++] = ds;
    LDM_TRY(get_int(file, c, "in_channels", 4, 1, 4096, &u->in_channels));
    LDM_TRY(get_int(file, c, "out_channels", 4, 1, 4096, &u->out_channels));
    LDM_TRY(get_int(file, c, "sample_size", 64, 1, 65536, sample_size));
    const lj_value *ctx = lj_get(c, "cross_attention_dim");
    if (ctx && ctx->type == LJ_ARRAY) return unsupported(file, "cross_attention_dim", "a per-level list", NULL);
    LDM_TRY(get_int(file, c, "cross_attention_dim", 1280, 1, MAX_WIDTH, &u->context_dim));
    LDM_TRY(get_per_level(file, c, "transformer_layers_per_block", 1, n, 1, 64, depth));
    for (int i = 1; i < n; i++)
        if (depth[i] != depth[0]) return unsupported(file, "transformer_layers_per_block", "a per-level list", NULL);
    u->transformer_depth = depth[0];
    LDM_TRY(unet_heads(file, c, boc, n, l, u));
    LDM_TRY(get_bool(file, c, "use_linear_projection", 0, &u->use_linear_in_transformer));
    const char *shift;
    LDM_TRY(get_str(file, c, "resnet_time_scale_shift", "default", &shift));
    if (!strcmp(shift, "scale_shift"))
        u->use_scale_shift_norm = 1;
    else if (strcmp(shift, "default"))
        return unsupported(file, "resnet_time_scale_shift", shift, NULL);
    LDM_TRY(get_int(file, c, "time_cond_proj_dim", 0, 0, 65536, &u->time_cond_proj_dim));
    u->use_spatial_transformer = 1;
    u->legacy = 0;
    u->present = 1;
    return LDM_OK;
}

/* ---------------------------------------------------------------- AutoencoderKL */

ldm_status ldd_vae_config(const char *file, const lj_value *c, ld_autoencoder *a, double *scaling_factor)
{
    int boc[LD_MAX_LEVELS], n, k, mid_attn;
    const char *down[LD_MAX_LEVELS], *up[LD_MAX_LEVELS];
    ld_autoencoder_defaults(a);
    LDM_TRY(want_class(file, c, "AutoencoderKL"));
    LDM_TRY(want_str(file, c, "act_fn", "silu", "silu"));
    LDM_TRY(want_null(file, c, "shift_factor", NULL));
    static const char *const trues[] = {"use_quant_conv", "use_post_quant_conv"};
    for (size_t i = 0; i < LDM_ARRAY_LEN(trues); i++) {
        LDM_TRY(get_bool(file, c, trues[i], 1, &k));
        if (!k) return unsupported(file, trues[i], "false", NULL);
    }
    LDM_TRY(get_int(file, c, "norm_num_groups", 32, 1, MAX_WIDTH, &k));
    if (k != 32) return unsupported(file, "norm_num_groups", "a group count other than 32", NULL);
    LDM_TRY(get_int_list(file, c, "block_out_channels", 1, MAX_WIDTH, boc, &n));
    a->n_levels = n;
    a->ch = boc[0];
    for (int i = 0; i < n; i++) {
        if (boc[i] % boc[0] || boc[i] % 32)
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: block_out_channels[%d] = %d is not a multiple of %d and of 32",
                            file, i, boc[i], boc[0]);
        a->ch_mult[i] = boc[i] / boc[0];
    }
    LDM_TRY(get_int(file, c, "layers_per_block", 1, 0, 64, &a->num_res_blocks));
    LDM_TRY(get_int(file, c, "in_channels", 3, 1, 4096, &a->in_channels));
    LDM_TRY(get_int(file, c, "out_channels", 3, 1, 4096, &a->out_ch));
    LDM_TRY(get_int(file, c, "latent_channels", 4, 1, 4096, &a->z_channels));
    LDM_TRY(get_int(file, c, "sample_size", 32, 1, 65536, &a->resolution));
    a->embed_dim = a->z_channels;
    a->double_z = 1;
    LDM_TRY(get_str_list(file, c, "down_block_types", n, down));
    LDM_TRY(get_str_list(file, c, "up_block_types", n, up));
    a->n_attn_resolutions = 0;
    for (int i = 0; i < n; i++) {
        int attn = !strcmp(down[i], "AttnDownEncoderBlock2D");
        if (!attn && strcmp(down[i], "DownEncoderBlock2D")) return unsupported(file, "down_block_types", down[i], NULL);
        if (strcmp(up[n - 1 - i], attn ? "AttnUpDecoderBlock2D" : "UpDecoderBlock2D"))
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: up_block_types[%d] %s does not mirror down_block_types[%d] %s",
                            file, n - 1 - i, up[n - 1 - i], i, down[i]);
        if (attn) a->attn_resolutions[a->n_attn_resolutions++] = a->resolution >> i;
    }
    LDM_TRY(get_bool(file, c, "mid_block_add_attention", 1, &mid_attn));
    a->attn_none = !mid_attn;
    LDM_TRY(get_num(file, c, "scaling_factor", 0.18215, scaling_factor));
    if (!(*scaling_factor > 0)) return bad_type(file, "scaling_factor", "a positive number");
    a->present = 1;
    return LDM_OK;
}

/* ---------------------------------------------------------------- CLIPTextModel */

ldm_status ldd_text_config(const char *file, const lj_value *c, ld_cond *cond)
{
    const lj_value *arch = lj_get(c, "architectures");
    const char *model_type, *act;
    ld_cond_defaults(cond);
    LDM_TRY(get_str(file, c, "model_type", "clip_text_model", &model_type));
    if (strcmp(model_type, "clip_text_model"))
        return ldm_fail(LDM_ERR_UNSUPPORTED,
                        "%s: \"model_type\": %s: only CLIP text encoders (clip_text_model) are "
                        "supported",
                        file, model_type);
    if (arch && arch->type == LJ_ARRAY)
        for (size_t i = 0; i < arch->count; i++)
            if (arch->items[i]->type != LJ_STRING || strcmp(arch->items[i]->string, "CLIPTextModel"))
                return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: \"architectures\": %s is not supported (CLIPTextModel is)",
                                file, arch->items[i]->type == LJ_STRING ? arch->items[i]->string : "?");
    LDM_TRY(want_num(file, c, "layer_norm_eps", 1e-5, 1e-5));
    LDM_TRY(get_str(file, c, "hidden_act", "quick_gelu", &act));
    if (!strcmp(act, "quick_gelu"))
        cond->kind = LD_COND_CLIP;
    else if (!strcmp(act, "gelu"))
        cond->kind = LD_COND_OPENCLIP; /* SD 2.x: open_clip ViT-H in HF layout */
    else
        return unsupported(file, "hidden_act", act, NULL);
    LDM_TRY(get_int(file, c, "hidden_size", 512, 1, MAX_WIDTH, &cond->width));
    LDM_TRY(get_int(file, c, "num_hidden_layers", 12, 1, 256, &cond->layers));
    LDM_TRY(get_int(file, c, "num_attention_heads", 8, 1, MAX_WIDTH, &cond->heads));
    LDM_TRY(get_int(file, c, "vocab_size", 49408, 1, 1 << 24, &cond->vocab));
    LDM_TRY(get_int(file, c, "max_position_embeddings", 77, 1, 1 << 16, &cond->ctx));
    if (cond->width % cond->heads)
        return ldm_fail(LDM_ERR_FORMAT, "%s: num_attention_heads %d does not divide hidden_size %d", file, cond->heads,
                        cond->width);
    /* The pipelines use the last hidden state after final_layer_norm; SD 2.x folders already
     * dropped open_clip's last block (its "penultimate" layer is their last). */
    cond->layer_skip = 0;
    return LDM_OK;
}

/* ---------------------------------------------------------------- schedulers */

ldm_status ldd_scheduler_config(const char *file, const lj_value *c, ld_model *m)
{
    const char *cls, *sched, *pred, *spacing;
    int zero_snr;
    LDM_TRY(get_str(file, c, "_class_name", "?", &cls));
    LDM_TRY(get_int(file, c, "num_train_timesteps", 1000, 1, 100000, &m->timesteps));
    LDM_TRY(get_num(file, c, "beta_start", 0.0001, &m->linear_start));
    LDM_TRY(get_num(file, c, "beta_end", 0.02, &m->linear_end));
    LDM_TRY(want_null(file, c, "trained_betas", "give the schedule by beta_start/beta_end/beta_schedule"));
    LDM_TRY(get_bool(file, c, "rescale_betas_zero_snr", 0, &zero_snr));
    if (zero_snr) return unsupported(file, "rescale_betas_zero_snr", "true", NULL);
    LDM_TRY(get_str(file, c, "beta_schedule", "linear", &sched));
    /* diffusers "scaled_linear" is CompVis "linear" (linspace of square roots, squared), diffusers
     * "linear" CompVis "sqrt_linear" (plain linspace). */
    if (!strcmp(sched, "scaled_linear"))
        m->beta_schedule = LD_SCHED_LINEAR;
    else if (!strcmp(sched, "linear"))
        m->beta_schedule = LD_SCHED_SQRT_LINEAR;
    else if (!strcmp(sched, "squaredcos_cap_v2"))
        m->beta_schedule = LD_SCHED_COSINE, m->cosine_s = 0.008;
    else
        return unsupported(file, "beta_schedule", sched, NULL);
    LDM_TRY(get_str(file, c, "prediction_type", "epsilon", &pred));
    if (!strcmp(pred, "epsilon"))
        m->parameterization = LD_PARAM_EPS;
    else if (!strcmp(pred, "v_prediction"))
        m->parameterization = LD_PARAM_V;
    else if (!strcmp(pred, "sample"))
        m->parameterization = LD_PARAM_X0;
    else
        return unsupported(file, "prediction_type", pred, NULL);
    LDM_TRY(get_str(file, c, "timestep_spacing", "leading", &spacing));
    ld_model_note(m, "scheduler %.40s (%.16s, timestep_spacing %.16s)", cls, pred, spacing);
    if (!strcmp(cls, "LCMScheduler")) ld_model_note(m, "LCM scheduler: sample with --sampler lcm");
    if (!strcmp(spacing, "trailing")) ld_model_note(m, "trailing spacing: pass --spacing trailing");
    return LDM_OK;
}
