/* diffusers_names.c - diffusers VAE / text encoder names in the CompVis layout (diffusers_names.h). */
#include "diffusers_names.h"

#include <stdio.h>
#include <string.h>

typedef struct name_pair {
    const char *from, *to;
} name_pair;

/* If `s` starts with `prefix` followed by the end or a '.', the rest (possibly ""), else NULL. */
static const char *after(const char *s, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(s, prefix, n) != 0 || (s[n] != '\0' && s[n] != '.')) return NULL;
    return s + n;
}

/* "<int>." at *p (at most 4 digits): the value, *p past the dot; -1 when absent. */
static int read_index(const char **p)
{
    const char *s = *p;
    int v = 0, digits = 0;
    while (*s >= '0' && *s <= '9' && digits < 4) v = v * 10 + (*s++ - '0'), digits++;
    if (!digits || *s != '.') return -1;
    *p = s + 1;
    return v;
}

/* ResnetBlock2D layers; only the shortcut is spelt differently. `tail` is ".conv1.weight". */
static int resnet_tail(const char *tail, const char **rest, const char **layer)
{
    static const name_pair layers[] = {{"norm1", "norm1"},
                                       {"conv1", "conv1"},
                                       {"norm2", "norm2"},
                                       {"conv2", "conv2"},
                                       {"conv_shortcut", "nin_shortcut"}};
    if (*tail != '.') return 0;
    for (size_t i = 0; i < sizeof layers / sizeof *layers; i++)
        if ((*rest = after(tail + 1, layers[i].from)) && (**rest == '.')) {
            *layer = layers[i].to;
            return 1;
        }
    return 0;
}

/* The single-head attention block: group_norm and q/k/v/out as Linear layers, spelt two ways. */
static int attention_tail(const char *tail, const char **rest, const char **layer, ld_dn_kind *kind)
{
    static const name_pair layers[] = {{"group_norm", "norm"},   {"to_q", "q"},  {"to_k", "k"}, {"to_v", "v"},
                                       {"to_out.0", "proj_out"}, {"query", "q"}, {"key", "k"},  {"value", "v"},
                                       {"proj_attn", "proj_out"}};
    if (*tail != '.') return 0;
    for (size_t i = 0; i < sizeof layers / sizeof *layers; i++)
        if ((*rest = after(tail + 1, layers[i].from)) && (**rest == '.')) {
            *layer = layers[i].to;
            *kind = (i > 0 && !strcmp(*rest, ".weight")) ? LD_DN_CONV1X1 : LD_DN_SAME;
            return 1;
        }
    return 0;
}

/* "<coder>.mid_block.{resnets.K|attentions.0}<tail>" */
static int vae_mid(const char *coder, const char *s, char *out, size_t cap, ld_dn_kind *kind)
{
    const char *rest, *layer;
    int n = -1;
    if (!strncmp(s, "resnets.", 8)) {
        s += 8;
        int k = read_index(&s);
        if (k >= 0 && k <= 1 && resnet_tail(s - 1, &rest, &layer))
            n = snprintf(out, cap, "%s.mid.block_%d.%s%s", coder, k + 1, layer, rest);
    } else if (!strncmp(s, "attentions.0", 12) && attention_tail(s + 12, &rest, &layer, kind)) {
        n = snprintf(out, cap, "%s.mid.attn_1.%s%s", coder, layer, rest);
    }
    return n >= 0 && (size_t)n < cap;
}

/* "<coder>.{down,up}_blocks.I.{resnets.J|attentions.J|downsamplers.0|upsamplers.0}<tail>" */
static int vae_level(int n_levels, int nrb, const char *coder, int up, const char *s, char *out, size_t cap,
                     ld_dn_kind *kind)
{
    int i = read_index(&s);
    if (i < 0 || i >= n_levels) return 0;
    const int level = up ? n_levels - 1 - i : i, blocks = up ? nrb + 1 : nrb;
    const char *rest, *layer;
    int n = -1;
    if (!strncmp(s, "resnets.", 8)) {
        s += 8;
        int j = read_index(&s);
        if (j >= 0 && j < blocks && resnet_tail(s - 1, &rest, &layer))
            n = snprintf(out, cap, "%s.%s.%d.block.%d.%s%s", coder, up ? "up" : "down", level, j, layer, rest);
    } else if (!strncmp(s, "attentions.", 11)) {
        s += 11;
        int j = read_index(&s);
        if (j >= 0 && j < blocks && attention_tail(s - 1, &rest, &layer, kind))
            n = snprintf(out, cap, "%s.%s.%d.attn.%d.%s%s", coder, up ? "up" : "down", level, j, layer, rest);
    } else if ((rest = after(s, up ? "upsamplers.0.conv" : "downsamplers.0.conv")) && *rest == '.' &&
               i < n_levels - 1) {
        n = snprintf(out, cap, "%s.%s.%d.%s.conv%s", coder, up ? "up" : "down", level, up ? "upsample" : "downsample",
                     rest);
    }
    return n >= 0 && (size_t)n < cap;
}

int ld_vae_name_from_diffusers(int n_levels, int num_res_blocks, const char *name, char *out, size_t cap,
                               ld_dn_kind *kind)
{
    static const name_pair fixed[] = {{"quant_conv", "quant_conv"},
                                      {"post_quant_conv", "post_quant_conv"},
                                      {"encoder.conv_in", "encoder.conv_in"},
                                      {"encoder.conv_out", "encoder.conv_out"},
                                      {"encoder.conv_norm_out", "encoder.norm_out"},
                                      {"decoder.conv_in", "decoder.conv_in"},
                                      {"decoder.conv_out", "decoder.conv_out"},
                                      {"decoder.conv_norm_out", "decoder.norm_out"}};
    *kind = LD_DN_SAME;
    const char *rest;
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        if ((rest = after(name, fixed[i].from)) && *rest == '.') {
            int n = snprintf(out, cap, "%s%s", fixed[i].to, rest);
            return n >= 0 && (size_t)n < cap;
        }
    for (int up = 0; up <= 1; up++) {
        const char *coder = up ? "decoder" : "encoder";
        size_t len = strlen(coder);
        if (strncmp(name, coder, len) || name[len] != '.') continue;
        const char *s = name + len + 1;
        if (!strncmp(s, "mid_block.", 10)) return vae_mid(coder, s + 10, out, cap, kind);
        const char *blocks = up ? "up_blocks." : "down_blocks.";
        if (!strncmp(s, blocks, strlen(blocks)))
            return vae_level(n_levels, num_res_blocks, coder, up, s + strlen(blocks), out, cap, kind);
    }
    return 0;
}

int ld_openclip_name_from_hf(const char *name, char *out, size_t cap, ld_dn_kind *kind, int *part)
{
    static const name_pair fixed[] = {{"text_model.embeddings.token_embedding.weight", "model.token_embedding.weight"},
                                      {"text_model.embeddings.position_embedding.weight", "model.positional_embedding"},
                                      {"text_model.final_layer_norm.weight", "model.ln_final.weight"},
                                      {"text_model.final_layer_norm.bias", "model.ln_final.bias"}};
    static const name_pair layer[] = {{"layer_norm1", "ln_1"},
                                      {"layer_norm2", "ln_2"},
                                      {"self_attn.out_proj", "attn.out_proj"},
                                      {"mlp.fc1", "mlp.c_fc"},
                                      {"mlp.fc2", "mlp.c_proj"}};
    static const char *const qkv[3] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
    *kind = LD_DN_SAME;
    *part = 0;
    if (!strcmp(name, "text_model.embeddings.position_ids")) return -1;
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        if (!strcmp(name, fixed[i].from)) {
            int n = snprintf(out, cap, "%s", fixed[i].to);
            return n >= 0 && (size_t)n < cap;
        }
    const char *s = name, *rest;
    if (strncmp(s, "text_model.encoder.layers.", 26)) return 0;
    s += 26;
    int k = read_index(&s);
    if (k < 0) return 0;
    int n = -1;
    for (size_t i = 0; i < sizeof layer / sizeof *layer && n < 0; i++)
        if ((rest = after(s, layer[i].from)) && (!strcmp(rest, ".weight") || !strcmp(rest, ".bias")))
            n = snprintf(out, cap, "model.transformer.resblocks.%d.%s%s", k, layer[i].to, rest);
    for (int i = 0; i < 3 && n < 0; i++)
        if ((rest = after(s, qkv[i])) && (!strcmp(rest, ".weight") || !strcmp(rest, ".bias"))) {
            n = snprintf(out, cap, "model.transformer.resblocks.%d.attn.in_proj_%s", k, rest + 1);
            *kind = LD_DN_QKV_PART;
            *part = i;
        }
    return n >= 0 && (size_t)n < cap;
}
