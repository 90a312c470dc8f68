/* config.c - a CompVis / Stability-AI YAML config (`model: target: ... params: ...`) -> ld_model.
 *
 * The YAML becomes a generic tree (ytree.c); this file maps the keys the reference constructors
 * read onto ld_model, starting from the constructors' own defaults (desc.c). Keys the reference
 * ignores at inference (learning rates, loss configs, monitors, data) are ignored here too. Options
 * that would change the computation in a way libldm does not implement are refused by name rather
 * than silently dropped. */
#include "config.h"

#include "ytree.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_CHANNELS 65536
#define MAX_RES_BLOCKS 64
#define MAX_DEPTH_LAYERS 256
#define MAX_SPATIAL (1 << 20)

static const char LDM_DDPM[] = "ldm.models.diffusion.ddpm.";
static const char LDM_AE[] = "ldm.models.autoencoder.";
static const char LDM_ENC[] = "ldm.modules.encoders.modules.";
static const char UNET_TARGET[] = "ldm.modules.diffusionmodules.openaimodel.UNetModel";
/* Stability-AI generative-models (SDXL) */
static const char SGM_ENGINE[] = "sgm.models.diffusion.DiffusionEngine";
static const char SGM_UNET_TARGET[] = "sgm.modules.diffusionmodules.openaimodel.UNetModel";
static const char SGM_AE[] = "sgm.models.autoencoder.";
static const char SGM_ENC[] = "sgm.modules.encoders.modules.";
static const char SGM_DIFF[] = "sgm.modules.diffusionmodules.";

typedef struct cfg {
    const char *name; /* file name for messages */
} cfg;

/* ---------------------------------------------------------------- typed key readers */

static ldm_status type_error(const cfg *c, const char *path, const char *key, const char *want, const ld_ynode *n)
{
    char shown[160];
    ld_yaml_show(n, shown, sizeof shown);
    return ldm_fail(LDM_ERR_FORMAT, "%s: %s.%s: expected %s, found %s", c->name, path, key, want, shown);
}

static ldm_status missing(const cfg *c, const char *path, const char *key)
{
    return ldm_fail(LDM_ERR_FORMAT, "%s: %s.%s is required (the reference class has no default for it)", c->name,
                    path, key);
}

/* The value of `key`, NULL when absent or null (None: the reference default applies). */
static const ld_ynode *value_of(const ld_ynode *map, const char *key)
{
    const ld_ynode *n = ld_yaml_get(map, key);
    return (n && !ld_yaml_is_null(n)) ? n : NULL;
}

static ldm_status read_int(const cfg *c, const ld_ynode *map, const char *path, const char *key, int required,
                           long long lo, long long hi, int *out)
{
    const ld_ynode *n = value_of(map, key);
    if (!n) return required ? missing(c, path, key) : LDM_OK;
    long long v;
    if (ld_yaml_int(n, &v)) return type_error(c, path, key, "an integer", n);
    if (v < lo || v > hi)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s.%s: %lld is out of the range [%lld, %lld] (line %d)", c->name, path,
                        key, v, lo, hi, n->line);
    *out = (int)v;
    return LDM_OK;
}

/* Python truthiness of YAML booleans and integers (`concat_mode: 1` works in the reference). */
static ldm_status read_bool(const cfg *c, const ld_ynode *map, const char *path, const char *key, int *out)
{
    const ld_ynode *n = value_of(map, key);
    if (!n) return LDM_OK;
    int b;
    long long v;
    if (ld_yaml_bool(n, &b) == 0) *out = b;
    else if (ld_yaml_int(n, &v) == 0) *out = v != 0;
    else return type_error(c, path, key, "a boolean", n);
    return LDM_OK;
}

static ldm_status read_double(const cfg *c, const ld_ynode *map, const char *path, const char *key, double lo,
                              double hi, double *out)
{
    const ld_ynode *n = value_of(map, key);
    if (!n) return LDM_OK;
    double v;
    if (ld_yaml_float(n, &v)) return type_error(c, path, key, "a number", n);
    if (!isfinite(v) || v < lo || v > hi)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s.%s: %g is out of the range [%g, %g] (line %d)", c->name, path, key, v,
                        lo, hi, n->line);
    *out = v;
    return LDM_OK;
}

/* Any scalar as text (a plain `v` or a quoted "v"). */
static ldm_status read_str(const cfg *c, const ld_ynode *map, const char *path, const char *key, int required,
                           const char **out)
{
    const ld_ynode *n = value_of(map, key);
    if (!n) return required ? missing(c, path, key) : LDM_OK;
    if (n->kind != LD_Y_SCALAR) return type_error(c, path, key, "a string", n);
    *out = n->text;
    return LDM_OK;
}

static ldm_status read_map(const cfg *c, const ld_ynode *map, const char *path, const char *key, int required,
                           const ld_ynode **out)
{
    const ld_ynode *n = value_of(map, key);
    *out = NULL;
    if (!n) return required ? missing(c, path, key) : LDM_OK;
    if (n->kind != LD_Y_MAP) return type_error(c, path, key, "a map", n);
    *out = n;
    return LDM_OK;
}

/* A sequence of integers, e.g. channel_mult: [1, 2, 4, 4]. */
static ldm_status read_int_list(const cfg *c, const ld_ynode *map, const char *path, const char *key, int required,
                                int min_items, long long lo, long long hi, int *vals, int *count)
{
    const ld_ynode *n = value_of(map, key);
    if (!n) return required ? missing(c, path, key) : LDM_OK;
    if (n->kind != LD_Y_SEQ) return type_error(c, path, key, "a sequence of integers", n);
    if (n->n < (size_t)min_items || n->n > LD_MAX_LEVELS)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s.%s: %zu items, expected %d to %d (line %d)", c->name, path, key, n->n,
                        min_items, LD_MAX_LEVELS, n->line);
    for (size_t i = 0; i < n->n; i++) {
        long long v;
        if (ld_yaml_int(n->items[i], &v)) return type_error(c, path, key, "a sequence of integers", n->items[i]);
        if (v < lo || v > hi)
            return ldm_fail(LDM_ERR_FORMAT, "%s: %s.%s[%zu]: %lld is out of the range [%lld, %lld] (line %d)", c->name,
                            path, key, i, v, lo, hi, n->items[i]->line);
        vals[i] = (int)v;
    }
    *count = (int)n->n;
    return LDM_OK;
}

/* Options whose non-default values change the computation in ways libldm does not implement. */
static ldm_status require_bool(const cfg *c, const ld_ynode *map, const char *path, const char *key, int want)
{
    int v = want;
    LDM_TRY(read_bool(c, map, path, key, &v));
    if (v != want)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.%s: %s is not supported (only %s)", c->name, path, key,
                        v ? "true" : "false", want ? "true" : "false");
    return LDM_OK;
}

static ldm_status require_unset(const cfg *c, const ld_ynode *map, const char *path, const char *key)
{
    const ld_ynode *n = value_of(map, key);
    if (!n) return LDM_OK;
    char shown[160];
    ld_yaml_show(n, shown, sizeof shown);
    return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.%s is not supported (found %s; only unset/null)", c->name, path, key,
                    shown);
}

/* "path.key" for messages; a (never expected) overlong path is cut with "...". */
static void join_path(char *buf, size_t cap, const char *path, const char *key)
{
    int len = snprintf(buf, cap, "%s.%s", path, key);
    if (len < 0 || (size_t)len >= cap) snprintf(buf + cap - 4, 4, "...");
}

/* `target` equals prefix + cls. */
static int target_is(const char *target, const char *prefix, const char *cls)
{
    size_t n = strlen(prefix);
    return strncmp(target, prefix, n) == 0 && strcmp(target + n, cls) == 0;
}

/* ---------------------------------------------------------------- first stage */

static ldm_status parse_attn_type(const cfg *c, const ld_ynode *dd, const char *path, ld_autoencoder *a)
{
    const char *attn_type = "vanilla";
    LDM_TRY(read_str(c, dd, path, "attn_type", 0, &attn_type));
    /* vanilla-xformers (Stability) computes the same single-head attention. */
    if (!strcmp(attn_type, "vanilla") || !strcmp(attn_type, "vanilla-xformers")) a->attn_none = 0;
    else if (!strcmp(attn_type, "none")) a->attn_none = 1;
    else if (!strcmp(attn_type, "linear"))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.attn_type: linear attention (LinAttnBlock) is not supported",
                        c->name, path);
    else
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s.attn_type: unknown value '%s' (vanilla, vanilla-xformers, none, "
                        "linear)", c->name, path, attn_type);
    LDM_TRY(require_bool(c, dd, path, "use_linear_attn", 0));
    return LDM_OK;
}

/* ldm.modules.diffusionmodules.model.Encoder / Decoder keyword arguments. */
static ldm_status parse_ddconfig(const cfg *c, const ld_ynode *dd, const char *path, ld_autoencoder *a)
{
    LDM_TRY(read_int(c, dd, path, "ch", 1, 1, MAX_CHANNELS, &a->ch));
    LDM_TRY(read_int(c, dd, path, "out_ch", 1, 1, MAX_CHANNELS, &a->out_ch));
    LDM_TRY(read_int(c, dd, path, "in_channels", 1, 1, MAX_CHANNELS, &a->in_channels));
    LDM_TRY(read_int(c, dd, path, "z_channels", 1, 1, MAX_CHANNELS, &a->z_channels));
    LDM_TRY(read_int(c, dd, path, "resolution", 1, 1, MAX_SPATIAL, &a->resolution));
    LDM_TRY(read_int(c, dd, path, "num_res_blocks", 1, 0, MAX_RES_BLOCKS, &a->num_res_blocks));
    LDM_TRY(read_int_list(c, dd, path, "ch_mult", 0, 1, 1, 1024, a->ch_mult, &a->n_levels));
    LDM_TRY(read_int_list(c, dd, path, "attn_resolutions", 1, 0, 1, MAX_SPATIAL, a->attn_resolutions,
                          &a->n_attn_resolutions));
    LDM_TRY(read_bool(c, dd, path, "double_z", &a->double_z));
    LDM_TRY(parse_attn_type(c, dd, path, a));
    LDM_TRY(require_bool(c, dd, path, "resamp_with_conv", 1));
    LDM_TRY(require_bool(c, dd, path, "give_pre_end", 0));
    LDM_TRY(require_bool(c, dd, path, "tanh_out", 0));
    return LDM_OK;
}

/* AutoencoderKL / VQModel(Interface) params: embed_dim, n_embed, ddconfig. */
static ldm_status parse_first_stage_params(const cfg *c, const ld_ynode *params, const char *path, int is_vq,
                                           ld_autoencoder *a)
{
    char sub[256];
    const ld_ynode *dd;
    LDM_TRY(read_int(c, params, path, "embed_dim", 1, 1, MAX_CHANNELS, &a->embed_dim));
    if (is_vq) {
        LDM_TRY(read_int(c, params, path, "n_embed", 1, 1, 1 << 24, &a->n_embed));
        /* remap changes the returned codebook indices (not the decoded image); not implemented. */
        LDM_TRY(require_unset(c, params, path, "remap"));
    }
    LDM_TRY(read_map(c, params, path, "ddconfig", 1, &dd));
    join_path(sub, sizeof sub, path, "ddconfig");
    LDM_TRY(parse_ddconfig(c, dd, sub, a));
    if (!is_vq && !a->double_z)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s.double_z: AutoencoderKL requires true (it asserts it)", c->name, sub);
    a->is_vq = is_vq;
    a->present = 1;
    return LDM_OK;
}

/* 1 = KL, 2 = VQ, 0 = not a supported first stage (error set). */
static int first_stage_kind(const cfg *c, const char *target, const char *where)
{
    if (target_is(target, LDM_AE, "AutoencoderKL")) return 1;
    if (target_is(target, LDM_AE, "VQModel") || target_is(target, LDM_AE, "VQModelInterface")) return 2;
    if (target_is(target, LDM_AE, "IdentityFirstStage"))
        ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s: IdentityFirstStage (pixel-space diffusion) is not supported", c->name,
                 where);
    else
        ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s: unknown first stage '%s' (supported: %sAutoencoderKL, VQModel, "
                 "VQModelInterface)", c->name, where, target, LDM_AE);
    return 0;
}

static ldm_status parse_first_stage(const cfg *c, const ld_ynode *parent, const char *path, ld_autoencoder *a)
{
    char here[256], sub[256];
    const ld_ynode *node, *params;
    const char *target = NULL;
    LDM_TRY(read_map(c, parent, path, "first_stage_config", 1, &node));
    join_path(here, sizeof here, path, "first_stage_config");
    LDM_TRY(read_str(c, node, here, "target", 1, &target));
    char where[300];
    snprintf(where, sizeof where, "%s.target", here);
    int kind = first_stage_kind(c, target, where);
    if (!kind) return LDM_ERR_UNSUPPORTED;
    LDM_TRY(read_map(c, node, here, "params", 1, &params));
    join_path(sub, sizeof sub, here, "params");
    return parse_first_stage_params(c, params, sub, kind == 2, a);
}

/* ---------------------------------------------------------------- UNet */

static ldm_status parse_unet_heads(const cfg *c, const ld_ynode *p, const char *path, ld_unet *u)
{
    LDM_TRY(read_int(c, p, path, "num_heads", 0, -1, MAX_CHANNELS, &u->num_heads));
    LDM_TRY(read_int(c, p, path, "num_head_channels", 0, -1, MAX_CHANNELS, &u->num_head_channels));
    if (u->num_heads == 0 || u->num_head_channels == 0)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s: num_heads / num_head_channels must be -1 or positive", c->name, path);
    if (u->num_heads == -1 && u->num_head_channels == -1)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s: either num_heads or num_head_channels has to be set (UNetModel "
                        "asserts it)", c->name, path);
    int up = -1;
    LDM_TRY(read_int(c, p, path, "num_heads_upsample", 0, -1, MAX_CHANNELS, &up));
    if (up != -1 && up != u->num_heads)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.num_heads_upsample %d differs from num_heads (deprecated, not "
                        "supported)", c->name, path, up);
    return LDM_OK;
}

/* context_dim (an int; a per-level list is an SDXL-era feature) and num_classes (an int). */
static ldm_status parse_unet_conditioning(const cfg *c, const ld_ynode *p, const char *path, ld_unet *u)
{
    const ld_ynode *n = value_of(p, "context_dim");
    if (n && n->kind == LD_Y_SEQ)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.context_dim: a per-level list is not supported", c->name, path);
    LDM_TRY(read_int(c, p, path, "context_dim", 0, 1, MAX_CHANNELS, &u->context_dim));
    n = value_of(p, "num_classes");
    long long v;
    if (n && n->kind == LD_Y_SCALAR && ld_yaml_int(n, &v) != 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.num_classes: '%s' label embedding is not supported", c->name,
                        path, n->text);
    LDM_TRY(read_int(c, p, path, "num_classes", 0, 1, 1 << 24, &u->num_classes));
    if (u->use_spatial_transformer && !u->context_dim)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s: use_spatial_transformer needs context_dim (UNetModel asserts it)",
                        c->name, path);
    if (u->context_dim && !u->use_spatial_transformer)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s: context_dim is set but use_spatial_transformer is false (UNetModel "
                        "asserts it)", c->name, path);
    return LDM_OK;
}

/* Stability-era options that change the network; only their defaults are implemented. */
static ldm_status reject_unet_extras(const cfg *c, const ld_ynode *p, const char *path)
{
    int dims = 2;
    LDM_TRY(read_int(c, p, path, "dims", 0, 1, 3, &dims));
    if (dims != 2)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.dims: %d-D UNets are not supported", c->name, path, dims);
    LDM_TRY(require_bool(c, p, path, "disable_middle_self_attn", 0));
    LDM_TRY(require_unset(c, p, path, "n_embed"));
    LDM_TRY(require_unset(c, p, path, "disable_self_attentions"));
    LDM_TRY(require_unset(c, p, path, "num_attention_blocks"));
    return LDM_OK;
}

/* Every attention layer must split its channels evenly into heads (the reference floors the
 * division and then runs with an inner width != channels; no released model does that). */
static ldm_status check_unet_heads(const cfg *c, const char *path, const ld_unet *u)
{
    for (int l = 0; l <= u->n_levels; l++) {
        int mid = l == u->n_levels;
        int ds = 1 << (mid ? u->n_levels - 1 : l);
        int attn = mid;
        for (int i = 0; !mid && i < u->n_attention_resolutions; i++) attn |= u->attention_resolutions[i] == ds;
        if (!attn) continue;
        long long ch = (long long)u->model_channels * u->channel_mult[mid ? u->n_levels - 1 : l];
        int div = u->num_head_channels > 0 ? u->num_head_channels : u->num_heads;
        if (ch % div)
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s: %lld channels at downsample factor %d do not split into "
                            "%s %d (not supported)", c->name, path, ch, ds,
                            u->num_head_channels > 0 ? "heads of" : "heads:", div);
    }
    return LDM_OK;
}

static ldm_status parse_unet_params(const cfg *c, const ld_ynode *p, const char *path, ld_unet *u)
{
    LDM_TRY(read_int(c, p, path, "in_channels", 1, 1, MAX_CHANNELS, &u->in_channels));
    LDM_TRY(read_int(c, p, path, "out_channels", 1, 1, MAX_CHANNELS, &u->out_channels));
    LDM_TRY(read_int(c, p, path, "model_channels", 1, 1, MAX_CHANNELS, &u->model_channels));
    LDM_TRY(read_int(c, p, path, "num_res_blocks", 1, 0, MAX_RES_BLOCKS, &u->num_res_blocks));
    LDM_TRY(read_int_list(c, p, path, "attention_resolutions", 1, 0, 1, MAX_SPATIAL, u->attention_resolutions,
                          &u->n_attention_resolutions));
    LDM_TRY(read_int_list(c, p, path, "channel_mult", 0, 1, 1, 1024, u->channel_mult, &u->n_levels));
    LDM_TRY(read_bool(c, p, path, "use_scale_shift_norm", &u->use_scale_shift_norm));
    LDM_TRY(read_bool(c, p, path, "resblock_updown", &u->resblock_updown));
    LDM_TRY(read_bool(c, p, path, "use_spatial_transformer", &u->use_spatial_transformer));
    LDM_TRY(read_bool(c, p, path, "use_linear_in_transformer", &u->use_linear_in_transformer));
    LDM_TRY(read_int(c, p, path, "transformer_depth", 0, 1, MAX_DEPTH_LAYERS, &u->transformer_depth));
    LDM_TRY(read_bool(c, p, path, "legacy", &u->legacy));
    LDM_TRY(read_bool(c, p, path, "use_new_attention_order", &u->use_new_attention_order));
    int conv_resample = 1;
    LDM_TRY(read_bool(c, p, path, "conv_resample", &conv_resample));
    u->no_conv_resample = !conv_resample;
    LDM_TRY(read_bool(c, p, path, "use_checkpoint", &u->use_checkpoint));
    LDM_TRY(read_double(c, p, path, "dropout", 0.0, 0.999, &u->dropout));
    LDM_TRY(parse_unet_heads(c, p, path, u));
    LDM_TRY(parse_unet_conditioning(c, p, path, u));
    LDM_TRY(reject_unet_extras(c, p, path));
    LDM_TRY(require_unset(c, p, path, "adm_in_channels"));
    LDM_TRY(check_unet_heads(c, path, u));
    u->present = 1;
    return LDM_OK;
}

static ldm_status parse_unet(const cfg *c, const ld_ynode *parent, const char *path, ld_unet *u)
{
    char here[256], sub[256];
    const ld_ynode *node, *params;
    const char *target = NULL;
    LDM_TRY(read_map(c, parent, path, "unet_config", 1, &node));
    join_path(here, sizeof here, path, "unet_config");
    LDM_TRY(read_str(c, node, here, "target", 1, &target));
    if (strcmp(target, UNET_TARGET) != 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.target: '%s' is not supported (only %s)", c->name, here, target,
                        UNET_TARGET);
    LDM_TRY(read_map(c, node, here, "params", 1, &params));
    join_path(sub, sizeof sub, here, "params");
    return parse_unet_params(c, params, sub, u);
}

/* ---------------------------------------------------------------- cond stage */

typedef struct text_arch {
    const char *name;
    int width, layers, heads;
} text_arch;

/* Text towers fixed by the encoder's pretrained checkpoint name (HF config.json / open_clip
 * model configs): every released one uses 64-channel heads, vocab 49408, context 77. */
static const text_arch hf_clip_versions[] = {
    {"openai/clip-vit-large-patch14", 768, 12, 12},
    {"openai/clip-vit-large-patch14-336", 768, 12, 12},
    {"openai/clip-vit-base-patch32", 512, 12, 8},
    {"openai/clip-vit-base-patch16", 512, 12, 8},
};
static const text_arch open_clip_archs[] = {
    {"ViT-H-14", 1024, 24, 16}, {"ViT-L-14", 768, 12, 12}, {"ViT-bigG-14", 1280, 32, 20},
    {"ViT-g-14", 1024, 24, 16}, {"ViT-B-32", 512, 12, 8},  {"ViT-B-16", 512, 12, 8},
};

static void set_text_arch(ld_cond *d, const text_arch *table, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(table[i].name, name)) {
            d->width = table[i].width;
            d->layers = table[i].layers;
            d->heads = table[i].heads;
            d->vocab = 49408;
            return;
        }
    /* An unknown (e.g. local) checkpoint: dims come from the weights (ld_config_complete). */
}

static ldm_status parse_clip(const cfg *c, const ld_ynode *p, const char *path, ld_cond *d)
{
    const char *version = "openai/clip-vit-large-patch14", *layer = "last";
    d->kind = LD_COND_CLIP;
    LDM_TRY(read_str(c, p, path, "version", 0, &version));
    LDM_TRY(read_int(c, p, path, "max_length", 0, 1, 4096, &d->ctx));
    LDM_TRY(read_str(c, p, path, "layer", 0, &layer));
    if (strcmp(layer, "last") != 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.layer: '%s' is not supported for FrozenCLIPEmbedder (only last)",
                        c->name, path, layer);
    set_text_arch(d, hf_clip_versions, LDM_ARRAY_LEN(hf_clip_versions), version);
    return LDM_OK;
}

static ldm_status parse_openclip(const cfg *c, const ld_ynode *p, const char *path, ld_cond *d)
{
    const char *arch = "ViT-H-14", *layer = "last";
    d->kind = LD_COND_OPENCLIP;
    LDM_TRY(read_str(c, p, path, "arch", 0, &arch));
    LDM_TRY(read_int(c, p, path, "max_length", 0, 1, 4096, &d->ctx));
    LDM_TRY(read_str(c, p, path, "layer", 0, &layer));
    if (!strcmp(layer, "last")) d->layer_skip = 0;
    else if (!strcmp(layer, "penultimate")) d->layer_skip = 1;
    else
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.layer: '%s' is not supported (last or penultimate)", c->name,
                        path, layer);
    set_text_arch(d, open_clip_archs, LDM_ARRAY_LEN(open_clip_archs), arch);
    return LDM_OK;
}

/* BERTEmbedder(n_embed, n_layer, vocab_size=30522, max_seq_len=77, use_tokenizer=True);
 * TransformerEmbedder is the same network fed with ids (no tokenizer, vocab_size required). */
static ldm_status parse_bert(const cfg *c, const ld_ynode *p, const char *path, int tokenizer_class, ld_cond *d)
{
    d->kind = LD_COND_BERT;
    LDM_TRY(read_int(c, p, path, "n_embed", 1, 1, MAX_CHANNELS, &d->n_embed));
    LDM_TRY(read_int(c, p, path, "n_layer", 1, 1, MAX_DEPTH_LAYERS, &d->n_layer));
    LDM_TRY(read_int(c, p, path, "vocab_size", !tokenizer_class, 1, 1 << 24, &d->vocab_size));
    LDM_TRY(read_int(c, p, path, "max_seq_len", 0, 1, 1 << 16, &d->max_seq_len));
    d->use_tokenizer = tokenizer_class;
    if (tokenizer_class) LDM_TRY(read_bool(c, p, path, "use_tokenizer", &d->use_tokenizer));
    return LDM_OK;
}

static ldm_status parse_rescaler(const cfg *c, const ld_ynode *p, const char *path, ld_cond *d)
{
    const char *method = "bilinear";
    d->kind = LD_COND_SPATIAL_RESCALER;
    LDM_TRY(read_int(c, p, path, "n_stages", 0, 0, 16, &d->n_stages));
    LDM_TRY(read_str(c, p, path, "method", 0, &method));
    if (!strcmp(method, "bilinear")) d->method_bilinear = 1;
    else if (!strcmp(method, "nearest")) d->method_bilinear = 0;
    else
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.method: '%s' is not supported (bilinear or nearest)", c->name,
                        path, method);
    LDM_TRY(read_double(c, p, path, "multiplier", 1e-6, 1e6, &d->multiplier));
    LDM_TRY(read_int(c, p, path, "in_channels", 0, 1, MAX_CHANNELS, &d->in_channels));
    LDM_TRY(read_int(c, p, path, "out_channels", 0, 1, MAX_CHANNELS, &d->out_channels)); /* null: no mapper */
    LDM_TRY(read_bool(c, p, path, "bias", &d->bias));
    return LDM_OK;
}

static const char *const unsupported_encoders[] = {
    "FrozenCLIPTextEmbedder", "FrozenClipImageEmbedder", "ClipImageEmbedder", "FrozenOpenCLIPImageEmbedder",
    "FrozenT5Embedder", "FrozenCLIPT5Encoder", "BERTTokenizer", "IdentityEncoder",
};

static ldm_status parse_cond_target(const cfg *c, const char *target, const ld_ynode *p, const char *path,
                                    const char *where, ld_cond *d)
{
    if (target_is(target, LDM_ENC, "ClassEmbedder")) {
        d->kind = LD_COND_CLASS;
        LDM_TRY(read_int(c, p, path, "embed_dim", 1, 1, MAX_CHANNELS, &d->embed_dim));
        /* ucg_rate: 0 says the model never saw its "no class" label, so it has none for guidance */
        LDM_TRY(read_double(c, p, path, "ucg_rate", 0.0, 1.0, &d->ucg_rate));
        return read_int(c, p, path, "n_classes", 0, 1, 1 << 24, &d->n_classes);
    }
    if (target_is(target, LDM_ENC, "FrozenCLIPEmbedder")) return parse_clip(c, p, path, d);
    if (target_is(target, LDM_ENC, "FrozenOpenCLIPEmbedder")) return parse_openclip(c, p, path, d);
    if (target_is(target, LDM_ENC, "BERTEmbedder")) return parse_bert(c, p, path, 1, d);
    if (target_is(target, LDM_ENC, "TransformerEmbedder")) return parse_bert(c, p, path, 0, d);
    if (target_is(target, LDM_ENC, "SpatialRescaler")) return parse_rescaler(c, p, path, d);
    if (!strcmp(target, "torch.nn.Identity")) {
        d->kind = LD_COND_IDENTITY;
        return LDM_OK;
    }
    for (size_t i = 0; i < LDM_ARRAY_LEN(unsupported_encoders); i++)
        if (target_is(target, LDM_ENC, unsupported_encoders[i]))
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s: %s is not supported", c->name, where, target);
    return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s: unknown cond stage '%s'", c->name, where, target);
}

/* cond_stage_config: '__is_first_stage__', '__is_unconditional__' or {target, params}. */
static ldm_status parse_cond(const cfg *c, const ld_ynode *parent, const char *path, ld_cond *d)
{
    char here[256], sub[256], where[300];
    const ld_ynode *node = value_of(parent, "cond_stage_config");
    if (!node) return missing(c, path, "cond_stage_config");
    if (node->kind == LD_Y_SCALAR) {
        if (!strcmp(node->text, "__is_first_stage__")) d->kind = LD_COND_FIRST_STAGE;
        else if (!strcmp(node->text, "__is_unconditional__")) d->kind = LD_COND_NONE;
        else
            return type_error(c, path, "cond_stage_config", "a map with target, or __is_first_stage__ or "
                              "__is_unconditional__", node);
        return LDM_OK;
    }
    if (node->kind != LD_Y_MAP)
        return type_error(c, path, "cond_stage_config", "a map with target, or __is_first_stage__ or "
                          "__is_unconditional__", node);
    join_path(here, sizeof here, path, "cond_stage_config");
    const char *target = NULL;
    const ld_ynode *params;
    LDM_TRY(read_str(c, node, here, "target", 1, &target));
    LDM_TRY(read_map(c, node, here, "params", 0, &params));
    join_path(sub, sizeof sub, here, "params");
    snprintf(where, sizeof where, "%s.target", here);
    return parse_cond_target(c, target, params, sub, where, d);
}

/* Fixtures shrink the text towers and record the dims under libldm_test.text_encoder. */
static ldm_status parse_test_text_encoder(const cfg *c, const ld_ynode *root, ld_cond *d)
{
    const ld_ynode *t = value_of(value_of(root, "libldm_test"), "text_encoder");
    if (!t || (d->kind != LD_COND_CLIP && d->kind != LD_COND_OPENCLIP)) return LDM_OK;
    static const char path[] = "libldm_test.text_encoder";
    if (t->kind != LD_Y_MAP) return type_error(c, "libldm_test", "text_encoder", "a map", t);
    LDM_TRY(read_int(c, t, path, "width", 0, 1, MAX_CHANNELS, &d->width));
    LDM_TRY(read_int(c, t, path, "layers", 0, 1, MAX_DEPTH_LAYERS, &d->layers));
    LDM_TRY(read_int(c, t, path, "heads", 0, 1, MAX_CHANNELS, &d->heads));
    LDM_TRY(read_int(c, t, path, "vocab", 0, 1, 1 << 24, &d->vocab));
    LDM_TRY(read_int(c, t, path, "ctx", 0, 1, 4096, &d->ctx));
    return LDM_OK;
}

/* ---------------------------------------------------------------- LatentDiffusion */

static ldm_status parse_schedule(const cfg *c, const ld_ynode *p, const char *path, ld_model *m)
{
    const char *sched = "linear", *param = "eps";
    LDM_TRY(read_int(c, p, path, "timesteps", 0, 1, 100000, &m->timesteps));
    LDM_TRY(read_str(c, p, path, "beta_schedule", 0, &sched));
    if (!strcmp(sched, "linear")) m->beta_schedule = LD_SCHED_LINEAR;
    else if (!strcmp(sched, "cosine")) m->beta_schedule = LD_SCHED_COSINE;
    else if (!strcmp(sched, "sqrt_linear")) m->beta_schedule = LD_SCHED_SQRT_LINEAR;
    else if (!strcmp(sched, "sqrt")) m->beta_schedule = LD_SCHED_SQRT;
    else
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s.beta_schedule: unknown schedule '%s' (linear, cosine, sqrt_linear, "
                        "sqrt)", c->name, path, sched);
    LDM_TRY(read_double(c, p, path, "linear_start", 0, 1, &m->linear_start));
    LDM_TRY(read_double(c, p, path, "linear_end", 0, 1, &m->linear_end));
    LDM_TRY(read_double(c, p, path, "cosine_s", 0, 1, &m->cosine_s));
    LDM_TRY(require_unset(c, p, path, "given_betas"));
    LDM_TRY(read_str(c, p, path, "parameterization", 0, &param));
    if (!strcmp(param, "eps")) m->parameterization = LD_PARAM_EPS;
    else if (!strcmp(param, "v")) m->parameterization = LD_PARAM_V;
    else if (!strcmp(param, "x0")) m->parameterization = LD_PARAM_X0;
    else
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s.parameterization: unknown value '%s' (eps, v, x0)", c->name, path,
                        param);
    LDM_TRY(read_bool(c, p, path, "use_ema", &m->use_ema));
    LDM_TRY(read_double(c, p, path, "scale_factor", 1e-12, 1e12, &m->scale_factor));
    return LDM_OK;
}

/* LatentDiffusion.__init__: conditioning_key None -> 'concat' if concat_mode (default True) else
 * 'crossattn'; then an '__is_unconditional__' cond stage forces None. */
static ldm_status parse_conditioning_key(const cfg *c, const ld_ynode *p, const char *path, ld_model *m)
{
    int concat_mode = 1;
    const char *key = NULL;
    LDM_TRY(read_bool(c, p, path, "concat_mode", &concat_mode));
    LDM_TRY(read_str(c, p, path, "conditioning_key", 0, &key));
    if (!key) m->conditioning_key = concat_mode ? LD_CONDKEY_CONCAT : LD_CONDKEY_CROSSATTN;
    else if (!strcmp(key, "concat")) m->conditioning_key = LD_CONDKEY_CONCAT;
    else if (!strcmp(key, "crossattn")) m->conditioning_key = LD_CONDKEY_CROSSATTN;
    else if (!strcmp(key, "hybrid")) m->conditioning_key = LD_CONDKEY_HYBRID;
    else if (!strcmp(key, "adm")) m->conditioning_key = LD_CONDKEY_ADM;
    else if (!strcmp(key, "hybrid-adm") || !strcmp(key, "crossattn-adm"))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.conditioning_key: '%s' is not supported", c->name, path, key);
    else
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s.conditioning_key: unknown value '%s' (concat, crossattn, hybrid, adm)",
                        c->name, path, key);
    if (m->cond.kind == LD_COND_NONE) m->conditioning_key = LD_CONDKEY_NONE;
    return LDM_OK;
}

static ldm_status parse_cond_stage_key(const cfg *c, const ld_ynode *p, const char *path, ld_model *m)
{
    const char *key = "image";
    LDM_TRY(read_str(c, p, path, "cond_stage_key", 0, &key));
    if (strlen(key) >= sizeof m->cond_stage_key)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s.cond_stage_key: '%.40s...' is too long", c->name, path, key);
    snprintf(m->cond_stage_key, sizeof m->cond_stage_key, "%s", key);
    /* A custom cond_stage_forward calls another method of the cond stage; not implemented. */
    return require_unset(c, p, path, "cond_stage_forward");
}

/* layout2img: taming's ObjectsBoundingBoxConditionalBuilder tokens feed the BERTEmbedder; its
 * vocabulary is the builder's no_tokens and max_seq_len = 3 * no_max_objects + 2 crop tokens.
 * no_object_classes is a data-set property (not stored anywhere): 300 by default, caller may
 * override (see fixtures README fact 24). */
static ldm_status setup_layout(const cfg *c, ld_model *m)
{
    if (m->cond.kind != LD_COND_BERT)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: cond_stage_key coordinates_bbox needs a BERTEmbedder cond stage",
                        c->name);
    if (m->cond.max_seq_len < 5 || (m->cond.max_seq_len - 2) % 3)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: layout model: max_seq_len %d is not 3 * objects + 2", c->name,
                        m->cond.max_seq_len);
    m->variant = LD_VARIANT_LAYOUT2IMG;
    m->layout_no_tokens = m->cond.vocab_size;
    m->layout_no_max_objects = (m->cond.max_seq_len - 2) / 3;
    m->layout_no_object_classes = 300;
    return LDM_OK;
}

/* LatentInpaintDiffusion: only its default concat layout (mask, then the encoded masked image). */
static ldm_status setup_inpaint(const cfg *c, const ld_ynode *p, const char *path, ld_model *m)
{
    const char *masked = "masked_image";
    LDM_TRY(read_str(c, p, path, "masked_image_key", 0, &masked));
    const ld_ynode *keys = value_of(p, "concat_keys");
    int default_keys = !keys || (keys->kind == LD_Y_SEQ && keys->n == 2 && keys->items[0]->kind == LD_Y_SCALAR &&
                                 keys->items[1]->kind == LD_Y_SCALAR && !strcmp(keys->items[0]->text, "mask") &&
                                 !strcmp(keys->items[1]->text, "masked_image"));
    if (!default_keys || strcmp(masked, "masked_image") != 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s: only concat_keys [mask, masked_image] are supported", c->name,
                        path);
    if (m->conditioning_key != LD_CONDKEY_HYBRID)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s: LatentInpaintDiffusion is only supported with conditioning_key "
                        "hybrid", c->name, path);
    m->variant = LD_VARIANT_INPAINT_HYBRID;
    return LDM_OK;
}

static ldm_status parse_ldm(const cfg *c, const ld_ynode *p, const char *path, ld_variant variant, ld_model *m)
{
    m->is_diffusion = 1;
    LDM_TRY(parse_schedule(c, p, path, m));
    LDM_TRY(read_int(c, p, path, "image_size", 0, 1, MAX_SPATIAL, &m->image_size));
    LDM_TRY(read_int(c, p, path, "channels", 0, 1, MAX_CHANNELS, &m->channels));
    LDM_TRY(parse_unet(c, p, path, &m->unet));
    LDM_TRY(parse_first_stage(c, p, path, &m->first_stage));
    LDM_TRY(parse_cond(c, p, path, &m->cond));
    LDM_TRY(parse_conditioning_key(c, p, path, m));
    LDM_TRY(parse_cond_stage_key(c, p, path, m));
    if (variant == LD_VARIANT_LAYOUT2IMG && strcmp(m->cond_stage_key, "coordinates_bbox") != 0)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s: Layout2ImgDiffusion requires cond_stage_key coordinates_bbox",
                        c->name, path);
    if (!strcmp(m->cond_stage_key, "coordinates_bbox")) LDM_TRY(setup_layout(c, m));
    if (variant == LD_VARIANT_INPAINT_HYBRID) LDM_TRY(setup_inpaint(c, p, path, m));
    return LDM_OK;
}

/* ---------------------------------------------------------------- sgm DiffusionEngine (SDXL) */

/* transformer_depth: an int (every level, and the middle) or a per-level list whose last item is
 * the middle block's depth (sgm UNetModel.__init__). */
static ldm_status parse_sgm_depth(const cfg *c, const ld_ynode *p, const char *path, ld_unet *u)
{
    const ld_ynode *n = value_of(p, "transformer_depth");
    if (!n || n->kind != LD_Y_SEQ)
        return read_int(c, p, path, "transformer_depth", 0, 1, MAX_DEPTH_LAYERS, &u->transformer_depth);
    LDM_TRY(read_int_list(c, p, path, "transformer_depth", 1, 1, 0, MAX_DEPTH_LAYERS, u->transformer_depths,
                          &u->n_transformer_depths));
    if (u->n_transformer_depths != u->n_levels)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s.transformer_depth: %d items for %d levels of channel_mult", c->name,
                        path, u->n_transformer_depths, u->n_levels);
    u->transformer_depth = u->transformer_depths[u->n_levels - 1];
    return LDM_OK;
}

/* context_dim: an int or a list that SpatialTransformer requires to be homogeneous. */
static ldm_status parse_sgm_context_dim(const cfg *c, const ld_ynode *p, const char *path, ld_unet *u)
{
    const ld_ynode *n = value_of(p, "context_dim");
    if (!n || n->kind != LD_Y_SEQ) return read_int(c, p, path, "context_dim", 0, 1, MAX_CHANNELS, &u->context_dim);
    int dims[LD_MAX_LEVELS], count = 0;
    LDM_TRY(read_int_list(c, p, path, "context_dim", 1, 1, 1, MAX_CHANNELS, dims, &count));
    for (int i = 1; i < count; i++)
        if (dims[i] != dims[0])
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.context_dim: different widths per block are not supported",
                            c->name, path);
    u->context_dim = dims[0];
    return LDM_OK;
}

/* num_classes: an int (nn.Embedding) or "sequential" (adm_in_channels -> Linear, SiLU, Linear). */
static ldm_status parse_sgm_classes(const cfg *c, const ld_ynode *p, const char *path, ld_unet *u)
{
    const ld_ynode *n = value_of(p, "num_classes");
    long long v;
    if (n && n->kind == LD_Y_SCALAR && ld_yaml_int(n, &v) != 0) {
        if (strcmp(n->text, "sequential") != 0)
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.num_classes: '%s' label embedding is not supported (an "
                            "integer or sequential)", c->name, path, n->text);
        return read_int(c, p, path, "adm_in_channels", 1, 1, 1 << 20, &u->adm_in_channels);
    }
    return read_int(c, p, path, "num_classes", 0, 1, 1 << 24, &u->num_classes);
}

static ldm_status parse_sgm_unet_params(const cfg *c, const ld_ynode *p, const char *path, ld_unet *u)
{
    const char *attn = "softmax";
    LDM_TRY(read_int(c, p, path, "in_channels", 1, 1, MAX_CHANNELS, &u->in_channels));
    LDM_TRY(read_int(c, p, path, "out_channels", 1, 1, MAX_CHANNELS, &u->out_channels));
    LDM_TRY(read_int(c, p, path, "model_channels", 1, 1, MAX_CHANNELS, &u->model_channels));
    const ld_ynode *nrb = value_of(p, "num_res_blocks");
    if (nrb && nrb->kind == LD_Y_SEQ)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.num_res_blocks: a per-level list is not supported", c->name,
                        path);
    LDM_TRY(read_int(c, p, path, "num_res_blocks", 1, 0, MAX_RES_BLOCKS, &u->num_res_blocks));
    LDM_TRY(read_int_list(c, p, path, "attention_resolutions", 1, 0, 1, MAX_SPATIAL, u->attention_resolutions,
                          &u->n_attention_resolutions));
    LDM_TRY(read_int_list(c, p, path, "channel_mult", 0, 1, 1, 1024, u->channel_mult, &u->n_levels));
    LDM_TRY(read_bool(c, p, path, "use_scale_shift_norm", &u->use_scale_shift_norm));
    LDM_TRY(read_bool(c, p, path, "resblock_updown", &u->resblock_updown));
    LDM_TRY(read_bool(c, p, path, "use_linear_in_transformer", &u->use_linear_in_transformer));
    LDM_TRY(parse_sgm_depth(c, p, path, u));
    LDM_TRY(parse_unet_heads(c, p, path, u));
    LDM_TRY(parse_sgm_context_dim(c, p, path, u));
    LDM_TRY(parse_sgm_classes(c, p, path, u));
    /* softmax-xformers is the same attention computed by another kernel */
    LDM_TRY(read_str(c, p, path, "spatial_transformer_attn_type", 0, &attn));
    if (strcmp(attn, "softmax") != 0 && strcmp(attn, "softmax-xformers") != 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.spatial_transformer_attn_type: '%s' is not supported", c->name,
                        path, attn);
    LDM_TRY(require_bool(c, p, path, "disable_middle_transformer", 0));
    LDM_TRY(reject_unet_extras(c, p, path));
    /* sgm has no use_spatial_transformer switch: attention levels always get a SpatialTransformer
     * (a self-attending one without context_dim: not supported here), and no `legacy` head rule. */
    if (!u->context_dim)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s: an sgm UNetModel without context_dim is not supported", c->name,
                        path);
    u->use_spatial_transformer = 1;
    u->legacy = 0;
    LDM_TRY(check_unet_heads(c, path, u));
    u->present = 1;
    return LDM_OK;
}

/* `node` (a {target, params} map at `here`): its target and params (params may be absent). */
static ldm_status read_target(const cfg *c, const ld_ynode *parent, const char *path, const char *key, int required,
                              const char **target, const ld_ynode **params, char *here, size_t here_cap)
{
    const ld_ynode *node;
    *target = NULL;
    *params = NULL;
    LDM_TRY(read_map(c, parent, path, key, required, &node));
    if (!node) return LDM_OK;
    join_path(here, here_cap, path, key);
    LDM_TRY(read_str(c, node, here, "target", 1, target));
    return read_map(c, node, here, "params", 0, params);
}

/* DiscreteDenoiser(num_idx, scaling_config, discretization_config): the only denoiser of the
 * released image models; its sigma table is that of LegacyDDPMDiscretization. */
static ldm_status parse_sgm_denoiser(const cfg *c, const ld_ynode *p, const char *path, ld_model *m)
{
    char here[256], sub[256], sub2[300];
    const char *target, *scal, *disc;
    const ld_ynode *params, *sp, *dp;
    LDM_TRY(read_target(c, p, path, "denoiser_config", 1, &target, &params, here, sizeof here));
    if (!target_is(target, SGM_DIFF, "denoiser.DiscreteDenoiser"))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.target: '%s' is not supported (only %sdenoiser.DiscreteDenoiser)",
                        c->name, here, target, SGM_DIFF);
    if (!params) return missing(c, here, "params");
    join_path(sub, sizeof sub, here, "params");
    int num_idx = 0;
    LDM_TRY(read_int(c, params, sub, "num_idx", 1, 2, 100000, &num_idx));
    LDM_TRY(require_bool(c, params, sub, "do_append_zero", 0));
    LDM_TRY(require_bool(c, params, sub, "quantize_c_noise", 1));
    LDM_TRY(require_bool(c, params, sub, "flip", 1));
    LDM_TRY(read_target(c, params, sub, "scaling_config", 1, &scal, &sp, sub2, sizeof sub2));
    if (target_is(scal, SGM_DIFF, "denoiser_scaling.EpsScaling")) m->parameterization = LD_PARAM_EPS;
    else if (target_is(scal, SGM_DIFF, "denoiser_scaling.VScaling")) m->parameterization = LD_PARAM_V;
    else
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.target: '%s' is not supported (EpsScaling, VScaling)", c->name,
                        sub2, scal);
    LDM_TRY(read_target(c, params, sub, "discretization_config", 1, &disc, &dp, sub2, sizeof sub2));
    if (!target_is(disc, SGM_DIFF, "discretizer.LegacyDDPMDiscretization"))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.target: '%s' is not supported (only LegacyDDPMDiscretization)",
                        c->name, sub2, disc);
    m->beta_schedule = LD_SCHED_LINEAR;
    m->linear_start = 0.00085, m->linear_end = 0.012, m->timesteps = 1000; /* its defaults */
    if (dp) {
        char dpath[320];
        join_path(dpath, sizeof dpath, sub2, "params");
        LDM_TRY(read_double(c, dp, dpath, "linear_start", 0, 1, &m->linear_start));
        LDM_TRY(read_double(c, dp, dpath, "linear_end", 0, 1, &m->linear_end));
        LDM_TRY(read_int(c, dp, dpath, "num_timesteps", 0, 2, 100000, &m->timesteps));
    }
    /* a table of num_idx < num_timesteps sigmas picks a spaced subset: not implemented */
    if (num_idx != m->timesteps)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.num_idx %d differs from the discretization's %d timesteps (not "
                        "supported)", c->name, sub, num_idx, m->timesteps);
    return LDM_OK;
}

static ldm_status parse_sgm_input_key(const cfg *c, const ld_ynode *e, const char *path, ld_embedder *d)
{
    static const struct {
        const char *key;
        ld_emb_input input;
    } keys[] = {{"txt", LD_EMB_IN_TXT},
                {"original_size_as_tuple", LD_EMB_IN_ORIGINAL_SIZE},
                {"crop_coords_top_left", LD_EMB_IN_CROP},
                {"target_size_as_tuple", LD_EMB_IN_TARGET_SIZE},
                {"aesthetic_score", LD_EMB_IN_AESTHETIC}};
    const char *key = NULL;
    LDM_TRY(read_str(c, e, path, "input_key", 1, &key));
    for (size_t i = 0; i < LDM_ARRAY_LEN(keys); i++)
        if (!strcmp(keys[i].key, key)) {
            d->input = keys[i].input;
            int text = d->kind == LD_EMB_CLIP || d->kind == LD_EMB_OPENCLIP2;
            if (text != (d->input == LD_EMB_IN_TXT))
                return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.input_key: '%s' does not fit this embedder", c->name,
                                path, key);
            return LDM_OK;
        }
    return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.input_key: '%s' is not supported (txt, original_size_as_tuple, "
                    "crop_coords_top_left, target_size_as_tuple, aesthetic_score)", c->name, path, key);
}

/* FrozenCLIPEmbedder(version, max_length, layer last|hidden (layer_idx), always_return_pooled). */
static ldm_status parse_sgm_clip(const cfg *c, const ld_ynode *p, const char *path, ld_embedder *d)
{
    const char *version = "openai/clip-vit-large-patch14", *layer = "last";
    ld_cond_defaults(&d->text);
    d->text.kind = LD_COND_CLIP;
    LDM_TRY(read_str(c, p, path, "version", 0, &version));
    LDM_TRY(read_int(c, p, path, "max_length", 0, 1, 4096, &d->text.ctx));
    LDM_TRY(read_str(c, p, path, "layer", 0, &layer));
    LDM_TRY(require_bool(c, p, path, "always_return_pooled", 0));
    set_text_arch(&d->text, hf_clip_versions, LDM_ARRAY_LEN(hf_clip_versions), version);
    if (!strcmp(layer, "last")) d->layer = LD_EMB_LAYER_LAST;
    else if (!strcmp(layer, "hidden")) {
        d->layer = LD_EMB_LAYER_HIDDEN;
        LDM_TRY(read_int(c, p, path, "layer_idx", 1, -MAX_DEPTH_LAYERS, MAX_DEPTH_LAYERS, &d->layer_idx));
    } else
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.layer: '%s' is not supported (last, hidden)", c->name, path,
                        layer);
    return LDM_OK;
}

/* FrozenOpenCLIPEmbedder2(arch, layer last|penultimate, always_return_pooled, legacy). */
static ldm_status parse_sgm_openclip(const cfg *c, const ld_ynode *p, const char *path, ld_embedder *d)
{
    const char *arch = "ViT-H-14", *layer = "last";
    ld_cond_defaults(&d->text);
    d->text.kind = LD_COND_OPENCLIP;
    d->legacy = 1;
    LDM_TRY(read_str(c, p, path, "arch", 0, &arch));
    LDM_TRY(read_int(c, p, path, "max_length", 0, 1, 4096, &d->text.ctx));
    LDM_TRY(read_str(c, p, path, "layer", 0, &layer));
    LDM_TRY(read_bool(c, p, path, "always_return_pooled", &d->pooled));
    LDM_TRY(read_bool(c, p, path, "legacy", &d->legacy));
    set_text_arch(&d->text, open_clip_archs, LDM_ARRAY_LEN(open_clip_archs), arch);
    if (!strcmp(layer, "last")) d->layer = LD_EMB_LAYER_LAST;
    else if (!strcmp(layer, "penultimate")) d->layer = LD_EMB_LAYER_PENULTIMATE;
    else
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.layer: '%s' is not supported (last, penultimate)", c->name, path,
                        layer);
    if (d->pooled && d->legacy)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s: always_return_pooled needs legacy: false (the reference asserts it)",
                        c->name, path);
    return LDM_OK;
}

static ldm_status parse_sgm_embedder(const cfg *c, const ld_ynode *e, const char *path, ld_embedder *d)
{
    const char *target = NULL;
    const ld_ynode *p;
    char sub[300];
    if (e->kind != LD_Y_MAP) return type_error(c, path, "item", "a map", e);
    LDM_TRY(read_str(c, e, path, "target", 1, &target));
    LDM_TRY(read_map(c, e, path, "params", 0, &p));
    join_path(sub, sizeof sub, path, "params");
    int trainable = 0;
    double ucg = 0;
    LDM_TRY(read_bool(c, e, path, "is_trainable", &trainable));
    LDM_TRY(read_double(c, e, path, "ucg_rate", 0, 1, &ucg)); /* training-time dropout only */
    LDM_TRY(require_unset(c, e, path, "legacy_ucg_value"));
    LDM_TRY(require_unset(c, e, path, "input_keys"));
    if (target_is(target, SGM_ENC, "FrozenCLIPEmbedder")) {
        d->kind = LD_EMB_CLIP;
        LDM_TRY(parse_sgm_clip(c, p, sub, d));
    } else if (target_is(target, SGM_ENC, "FrozenOpenCLIPEmbedder2")) {
        d->kind = LD_EMB_OPENCLIP2;
        LDM_TRY(parse_sgm_openclip(c, p, sub, d));
    } else if (target_is(target, SGM_ENC, "ConcatTimestepEmbedderND")) {
        d->kind = LD_EMB_SIZE;
        if (!p) return missing(c, path, "params");
        LDM_TRY(read_int(c, p, sub, "outdim", 1, 1, MAX_CHANNELS, &d->outdim));
    } else
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.target: embedder '%s' is not supported (%sFrozenCLIPEmbedder, "
                        "FrozenOpenCLIPEmbedder2, ConcatTimestepEmbedderND)", c->name, path, target, SGM_ENC);
    return parse_sgm_input_key(c, e, path, d);
}

static ldm_status parse_sgm_conditioner(const cfg *c, const ld_ynode *p, const char *path, ld_sgm *g)
{
    char here[256], sub[256], item[300];
    const char *target;
    const ld_ynode *params;
    LDM_TRY(read_target(c, p, path, "conditioner_config", 1, &target, &params, here, sizeof here));
    if (strcmp(target, "sgm.modules.GeneralConditioner") != 0 &&
        !target_is(target, SGM_ENC, "GeneralConditioner"))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.target: '%s' is not supported (sgm.modules.GeneralConditioner)",
                        c->name, here, target);
    if (!params) return missing(c, here, "params");
    join_path(sub, sizeof sub, here, "params");
    const ld_ynode *list = value_of(params, "emb_models");
    if (!list) return missing(c, sub, "emb_models");
    if (list->kind != LD_Y_SEQ) return type_error(c, sub, "emb_models", "a sequence", list);
    if (list->n > LD_MAX_EMBEDDERS)
        return ldm_fail(LDM_ERR_LIMIT, "%s: %s.emb_models: %zu embedders (at most %d)", c->name, sub, list->n,
                        LD_MAX_EMBEDDERS);
    for (size_t i = 0; i < list->n; i++) {
        snprintf(item, sizeof item, "%s.emb_models[%zu]", sub, i);
        LDM_TRY(parse_sgm_embedder(c, list->items[i], item, &g->emb[i]));
    }
    g->n_embedders = (int)list->n;
    return LDM_OK;
}

static ldm_status parse_sgm_network(const cfg *c, const ld_ynode *p, const char *path, ld_unet *u)
{
    char here[256], sub[256];
    const char *target;
    const ld_ynode *params;
    const char *wrapper = NULL;
    LDM_TRY(read_str(c, p, path, "network_wrapper", 0, &wrapper));
    if (wrapper && strcmp(wrapper, "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper") != 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.network_wrapper: '%s' is not supported", c->name, path, wrapper);
    LDM_TRY(read_target(c, p, path, "network_config", 1, &target, &params, here, sizeof here));
    if (strcmp(target, SGM_UNET_TARGET) != 0)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.target: '%s' is not supported (only %s)", c->name, here, target,
                        SGM_UNET_TARGET);
    if (!params) return missing(c, here, "params");
    join_path(sub, sizeof sub, here, "params");
    return parse_sgm_unet_params(c, params, sub, u);
}

static ldm_status parse_sgm_first_stage(const cfg *c, const ld_ynode *p, const char *path, ld_autoencoder *a)
{
    char here[256], sub[256];
    const char *target;
    const ld_ynode *params;
    LDM_TRY(read_target(c, p, path, "first_stage_config", 1, &target, &params, here, sizeof here));
    if (!target_is(target, SGM_AE, "AutoencoderKL") && !target_is(target, SGM_AE, "AutoencoderKLInferenceWrapper") &&
        !target_is(target, SGM_AE, "AutoencoderKLModeOnly"))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: %s.target: '%s' is not supported (%sAutoencoderKL, "
                        "AutoencoderKLInferenceWrapper)", c->name, here, target, SGM_AE);
    if (!params) return missing(c, here, "params");
    join_path(sub, sizeof sub, here, "params");
    return parse_first_stage_params(c, params, sub, 0, a);
}

/* DiffusionEngine(network_config, denoiser_config, first_stage_config, conditioner_config,
 * scale_factor, use_ema (default False), ...): sampler/loss configs are training or demo
 * settings and are ignored like the LatentDiffusion ones. */
static ldm_status parse_sgm(const cfg *c, const ld_ynode *p, const char *path, ld_model *m)
{
    if (!p) return missing(c, "model", "params");
    m->is_diffusion = 1;
    m->sgm.present = 1;
    m->use_ema = 0;
    m->channels = 4;
    m->image_size = 128; /* SDXL's 1024 px at f8; the pipeline uses the caller's size */
    LDM_TRY(read_bool(c, p, path, "use_ema", &m->use_ema));
    LDM_TRY(read_double(c, p, path, "scale_factor", 1e-12, 1e12, &m->scale_factor));
    LDM_TRY(parse_sgm_network(c, p, path, &m->unet));
    LDM_TRY(parse_sgm_denoiser(c, p, path, m));
    LDM_TRY(parse_sgm_first_stage(c, p, path, &m->first_stage));
    LDM_TRY(parse_sgm_conditioner(c, p, path, &m->sgm));
    m->channels = m->unet.in_channels;
    m->conditioning_key = LD_CONDKEY_CROSSATTN;
    snprintf(m->cond_stage_key, sizeof m->cond_stage_key, "txt");
    return LDM_OK;
}

/* ---------------------------------------------------------------- root */

static const char *const unsupported_models[] = {
    "DDPM", "LatentUpscaleDiffusion", "LatentUpscaleFinetuneDiffusion", "LatentFinetuneDiffusion",
    "LatentDepth2ImageDiffusion", "ImageEmbeddingConditionedLatentDiffusion",
};

static ldm_status parse_model(const cfg *c, const ld_ynode *model, ld_model *m)
{
    const char *target = NULL;
    const ld_ynode *params;
    LDM_TRY(read_str(c, model, "model", "target", 1, &target));
    LDM_TRY(read_map(c, model, "model", "params", 0, &params));
    if (target_is(target, LDM_DDPM, "LatentDiffusion")) return parse_ldm(c, params, "model.params", LD_VARIANT_LDM, m);
    if (!strcmp(target, SGM_ENGINE)) return parse_sgm(c, params, "model.params", m);
    if (target_is(target, LDM_DDPM, "Layout2ImgDiffusion"))
        return parse_ldm(c, params, "model.params", LD_VARIANT_LAYOUT2IMG, m);
    if (target_is(target, LDM_DDPM, "LatentInpaintDiffusion"))
        return parse_ldm(c, params, "model.params", LD_VARIANT_INPAINT_HYBRID, m);
    for (size_t i = 0; i < LDM_ARRAY_LEN(unsupported_models); i++)
        if (target_is(target, LDM_DDPM, unsupported_models[i]))
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: model.target: %s is not supported", c->name, target);
    if (!strncmp(target, LDM_AE, strlen(LDM_AE))) {
        int kind = first_stage_kind(c, target, "model.target");
        if (!kind) return LDM_ERR_UNSUPPORTED;
        if (!params) return missing(c, "model", "params");
        m->is_diffusion = 0;
        return parse_first_stage_params(c, params, "model.params", kind == 2, &m->first_stage);
    }
    return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: model.target: unknown model class '%s' (supported: %sLatentDiffusion, "
                    "Layout2ImgDiffusion, LatentInpaintDiffusion; %sAutoencoderKL, VQModel, VQModelInterface)",
                    c->name, target, LDM_DDPM, LDM_AE);
}

ldm_status ld_config_parse(const char *yaml_text, size_t len, const char *name, ld_model *out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ld_config_parse: NULL output");
    ld_model_defaults(out);
    cfg c = {name ? name : "config"};
    ld_ynode *root = NULL;
    LDM_TRY(ld_yaml_parse(yaml_text, len, c.name, &root));
    ldm_status st;
    const ld_ynode *model = NULL;
    if (root->kind != LD_Y_MAP) {
        char shown[160];
        ld_yaml_show(root, shown, sizeof shown);
        st = ldm_fail(LDM_ERR_FORMAT, "%s: expected a map with a 'model' key at the top level, found %s", c.name,
                      shown);
    } else if ((st = read_map(&c, root, "(top level)", "model", 1, &model)) == LDM_OK) {
        st = parse_model(&c, model, out);
        if (st == LDM_OK) st = parse_test_text_encoder(&c, root, &out->cond);
    }
    ld_yaml_free(root);
    return st;
}

/* ---------------------------------------------------------------- file */

static ldm_status read_file(const char *path, char **text, size_t *len)
{
    FILE *f;
    LDM_TRY(lw_fopen_regular(path, "config", LDM_ERR_IO, &f)); /* a FIFO would block fopen forever */
    size_t cap = 1 << 14, n = 0;
    char *buf = ldm_malloc(cap);
    ldm_status st = buf ? LDM_OK : ldm_alloc_failure_status();
    while (st == LDM_OK) {
        if (n == cap) {
            if (cap > LD_Y_MAX_INPUT) {
                st = ldm_fail(LDM_ERR_LIMIT, "config %s is larger than %zu bytes", path, LD_Y_MAX_INPUT);
                break;
            }
            char *bigger = ldm_realloc(buf, cap * 2);
            if (!bigger) {
                st = ldm_alloc_failure_status();
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) st = ldm_fail(LDM_ERR_IO, "cannot read config %s: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (st != LDM_OK) {
        ldm_free(buf);
        return st;
    }
    *text = buf;
    *len = n;
    return LDM_OK;
}

ldm_status ld_config_load(const char *yaml_path, ld_model *out)
{
    if (!yaml_path || !out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ld_config_load: NULL path or output");
    char *text = NULL;
    size_t len = 0;
    LDM_TRY(read_file(yaml_path, &text, &len));
    ldm_status st = ld_config_parse(text, len, yaml_path, out);
    ldm_free(text);
    return st;
}
