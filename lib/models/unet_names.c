/* unet_names.c - CompVis <-> diffusers UNet parameter names (unet_names.h). */
#include "unet_names.h"

#include <stdio.h>
#include <string.h>

void ld_unet_layout_from_desc(const ld_unet *u, ld_unet_layout *out)
{
    memset(out, 0, sizeof *out);
    out->n_levels = u->n_levels;
    out->num_res_blocks = u->num_res_blocks;
    out->resblock_updown = u->resblock_updown;
    for (int level = 0, ds = 1; level < u->n_levels && level < LD_MAX_LEVELS; level++, ds *= 2)
        for (int i = 0; i < u->n_attention_resolutions; i++)
            if (u->attention_resolutions[i] == ds) out->level_has_attn[level] = 1;
}

/* A pair of spellings of the same layer; `tail` of the name follows either of them. */
typedef struct name_pair {
    const char *ldm, *diffusers;
} name_pair;

static const name_pair fixed_layers[] = {
    {"time_embed.0", "time_embedding.linear_1"},
    {"time_embed.2", "time_embedding.linear_2"},
    /* LCM-distilled UNets' guidance embedding (diffusers only; this is the CompVis-side name the
     * library gives it). */
    {"time_embed.cond_proj", "time_embedding.cond_proj"},
    {"label_emb.0.0", "add_embedding.linear_1"},
    {"label_emb.0.2", "add_embedding.linear_2"},
    {"label_emb", "class_embedding"}, /* num_classes: nn.Embedding */
    {"input_blocks.0.0", "conv_in"},
    {"out.0", "conv_norm_out"},
    {"out.2", "conv_out"},
    {"middle_block.0", "mid_block.resnets.0"},
    {"middle_block.1", "mid_block.attentions.0"},
    {"middle_block.2", "mid_block.resnets.1"},
};

/* Layers inside a ResBlock (diffusers ResnetBlock2D). */
static const name_pair resblock_layers[] = {
    {"in_layers.0", "norm1"},       {"in_layers.2", "conv1"},          {"emb_layers.1", "time_emb_proj"},
    {"out_layers.0", "norm2"},      {"out_layers.3", "conv2"},         {"skip_connection", "conv_shortcut"},
};

/* If `name` is `prefix` followed by the end or a '.', returns what follows (possibly ""). */
static const char *after_component(const char *name, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0) return NULL;
    if (name[n] != '\0' && name[n] != '.') return NULL;
    return name + n;
}

static int emit(char *out, size_t cap, const char *a, const char *b)
{
    int n = snprintf(out, cap, "%s%s", a, b);
    return n >= 0 && (size_t)n < cap;
}

/* Replaces a leading layer of `tail` (".in_layers.0.weight") by its other spelling. */
static int emit_resblock(char *out, size_t cap, const char *block, const char *tail, int to_diffusers)
{
    if (*tail == '\0') return emit(out, cap, block, "");
    for (size_t i = 0; i < sizeof resblock_layers / sizeof *resblock_layers; i++) {
        const char *from = to_diffusers ? resblock_layers[i].ldm : resblock_layers[i].diffusers;
        const char *to = to_diffusers ? resblock_layers[i].diffusers : resblock_layers[i].ldm;
        const char *rest = after_component(tail + 1, from);
        if (rest) {
            int n = snprintf(out, cap, "%s.%s%s", block, to, rest);
            return n >= 0 && (size_t)n < cap;
        }
    }
    return 0;
}

/* Reads "<int>" followed by '.' or the end; advances *p past the digits. */
static int read_index(const char **p, int *value)
{
    const char *s = *p;
    int v = 0, digits = 0;
    while (*s >= '0' && *s <= '9' && digits < 6) v = v * 10 + (*s++ - '0'), digits++;
    if (digits == 0 || (*s != '\0' && *s != '.')) return 0;
    *value = v;
    *p = s;
    return 1;
}

/* "K.M<tail>" after "input_blocks." / "output_blocks.". */
static int read_block_indices(const char *s, int *k, int *m, const char **tail)
{
    if (!read_index(&s, k) || *s != '.') return 0;
    s++;
    if (!read_index(&s, m)) return 0;
    *tail = s;
    return 1;
}

static int fixed_name(const char *name, char *out, size_t cap, int to_diffusers)
{
    for (size_t i = 0; i < sizeof fixed_layers / sizeof *fixed_layers; i++) {
        const char *from = to_diffusers ? fixed_layers[i].ldm : fixed_layers[i].diffusers;
        const char *to = to_diffusers ? fixed_layers[i].diffusers : fixed_layers[i].ldm;
        const char *tail = after_component(name, from);
        if (!tail) continue;
        int resnet = strstr(to, "resnets") != NULL || strstr(from, "resnets") != NULL;
        if (resnet) return emit_resblock(out, cap, to, tail, to_diffusers);
        return emit(out, cap, to, tail);
    }
    return -1; /* not a fixed layer */
}

static int input_block_to_diffusers(const ld_unet_layout *l, int k, int m, const char *tail, char *out, size_t cap)
{
    int stride = l->num_res_blocks + 1;
    if (k < 1) return 0;
    int level = (k - 1) / stride, j = (k - 1) % stride;
    if (level >= l->n_levels || level >= LD_MAX_LEVELS) return 0;
    char block[96];
    if (j < l->num_res_blocks) {
        if (m == 0) {
            snprintf(block, sizeof block, "down_blocks.%d.resnets.%d", level, j);
            return emit_resblock(out, cap, block, tail, 1);
        }
        if (m == 1 && l->level_has_attn[level]) {
            snprintf(block, sizeof block, "down_blocks.%d.attentions.%d", level, j);
            return emit(out, cap, block, tail);
        }
        return 0;
    }
    /* the downsampler: Downsample(op) at input_blocks.K.0 */
    const char *rest = after_component(tail + (*tail == '.'), "op");
    if (m != 0 || level == l->n_levels - 1 || l->resblock_updown || *tail != '.' || !rest) return 0;
    snprintf(block, sizeof block, "down_blocks.%d.downsamplers.0.conv", level);
    return emit(out, cap, block, rest);
}

static int output_block_to_diffusers(const ld_unet_layout *l, int k, int m, const char *tail, char *out, size_t cap)
{
    int stride = l->num_res_blocks + 1;
    int up = k / stride, j = k % stride;
    if (up >= l->n_levels) return 0;
    int level = l->n_levels - 1 - up;
    int attn = level < LD_MAX_LEVELS && l->level_has_attn[level];
    char block[96];
    if (m == 0) {
        snprintf(block, sizeof block, "up_blocks.%d.resnets.%d", up, j);
        return emit_resblock(out, cap, block, tail, 1);
    }
    if (m == 1 && attn) {
        snprintf(block, sizeof block, "up_blocks.%d.attentions.%d", up, j);
        return emit(out, cap, block, tail);
    }
    /* the upsampler: Upsample(conv) after the level's last ResBlock (and attention) */
    const char *rest = after_component(tail + (*tail == '.'), "conv");
    if (m != 1 + attn || j != l->num_res_blocks || up == l->n_levels - 1 || l->resblock_updown || *tail != '.' ||
        !rest)
        return 0;
    snprintf(block, sizeof block, "up_blocks.%d.upsamplers.0.conv", up);
    return emit(out, cap, block, rest);
}

int ld_unet_name_to_diffusers(const ld_unet_layout *l, const char *name, char *out, size_t cap)
{
    int fixed = fixed_name(name, out, cap, 1);
    if (fixed >= 0) return fixed;
    int k, m;
    const char *tail;
    if (!strncmp(name, "input_blocks.", 13) && read_block_indices(name + 13, &k, &m, &tail))
        return input_block_to_diffusers(l, k, m, tail, out, cap);
    if (!strncmp(name, "output_blocks.", 14) && read_block_indices(name + 14, &k, &m, &tail))
        return output_block_to_diffusers(l, k, m, tail, out, cap);
    return 0;
}

/* "down_blocks.L.<kind>.J<tail>" / "up_blocks.U.<kind>.J<tail>" */
typedef struct diffusers_block {
    int up;            /* up_blocks (else down_blocks) */
    int index;         /* L or U */
    char kind[16];     /* resnets, attentions, downsamplers, upsamplers */
    int j;
    const char *tail;
} diffusers_block;

static int parse_diffusers_block(const char *name, diffusers_block *b)
{
    const char *s;
    if (!strncmp(name, "down_blocks.", 12)) b->up = 0, s = name + 12;
    else if (!strncmp(name, "up_blocks.", 10)) b->up = 1, s = name + 10;
    else return 0;
    if (!read_index(&s, &b->index) || *s != '.') return 0;
    s++;
    size_t n = strcspn(s, ".");
    if (n == 0 || n >= sizeof b->kind || s[n] != '.') return 0;
    memcpy(b->kind, s, n);
    b->kind[n] = '\0';
    s += n + 1;
    if (!read_index(&s, &b->j)) return 0;
    b->tail = s;
    return 1;
}

static int down_block_from_diffusers(const ld_unet_layout *l, const diffusers_block *b, char *out, size_t cap)
{
    int level = b->index, stride = l->num_res_blocks + 1;
    if (level >= l->n_levels || level >= LD_MAX_LEVELS) return 0;
    char block[96];
    int resnets = !strcmp(b->kind, "resnets"), attentions = !strcmp(b->kind, "attentions");
    if ((resnets || attentions) && b->j < l->num_res_blocks) {
        if (attentions && !l->level_has_attn[level]) return 0;
        snprintf(block, sizeof block, "input_blocks.%d.%d", 1 + level * stride + b->j, attentions);
        return resnets ? emit_resblock(out, cap, block, b->tail, 0) : emit(out, cap, block, b->tail);
    }
    const char *rest = after_component(b->tail + (*b->tail == '.'), "conv");
    if (strcmp(b->kind, "downsamplers") || b->j != 0 || level == l->n_levels - 1 || l->resblock_updown ||
        *b->tail != '.' || !rest)
        return 0;
    snprintf(block, sizeof block, "input_blocks.%d.0.op", (level + 1) * stride);
    return emit(out, cap, block, rest);
}

static int up_block_from_diffusers(const ld_unet_layout *l, const diffusers_block *b, char *out, size_t cap)
{
    int up = b->index, stride = l->num_res_blocks + 1;
    if (up >= l->n_levels) return 0;
    int level = l->n_levels - 1 - up;
    int attn = level < LD_MAX_LEVELS && l->level_has_attn[level];
    char block[96];
    int resnets = !strcmp(b->kind, "resnets"), attentions = !strcmp(b->kind, "attentions");
    if ((resnets || attentions) && b->j < stride) {
        if (attentions && !attn) return 0;
        snprintf(block, sizeof block, "output_blocks.%d.%d", up * stride + b->j, attentions);
        return resnets ? emit_resblock(out, cap, block, b->tail, 0) : emit(out, cap, block, b->tail);
    }
    const char *rest = after_component(b->tail + (*b->tail == '.'), "conv");
    if (strcmp(b->kind, "upsamplers") || b->j != 0 || up == l->n_levels - 1 || l->resblock_updown ||
        *b->tail != '.' || !rest)
        return 0;
    snprintf(block, sizeof block, "output_blocks.%d.%d.conv", up * stride + l->num_res_blocks, 1 + attn);
    return emit(out, cap, block, rest);
}

int ld_unet_name_from_diffusers(const ld_unet_layout *l, const char *name, char *out, size_t cap)
{
    int fixed = fixed_name(name, out, cap, 0);
    if (fixed >= 0) return fixed;
    diffusers_block b;
    if (!parse_diffusers_block(name, &b)) return 0;
    return b.up ? up_block_from_diffusers(l, &b, out, cap) : down_block_from_diffusers(l, &b, out, cap);
}
