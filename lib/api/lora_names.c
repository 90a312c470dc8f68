/* lora_names.c - the names LoRA files give a model's weights.
 *
 * kohya-ss (networks/lora.py) names a module by its path below the network with every '.' turned
 * into '_', behind lora_unet_ / lora_te_ (SDXL: lora_te1_, lora_te2_): SD 1.x/2.x UNet paths are
 * diffusers' (its training UNet has diffusers' layout), SDXL ones CompVis/sgm paths; text encoders
 * are HF CLIPTextModel paths, also for SD2's OpenCLIP tower (kohya converts it to HF layout).
 * diffusers / PEFT files use the dotted diffusers paths behind unet. / text_encoder. /
 * text_encoder_2. A flattened name cannot be split back into a path unambiguously, so the table
 * goes the other way: from each weight the model has, to every spelling that may reach it.
 * Both UNet spellings are accepted whatever the model, since they cannot collide. */
#include "lora_internal.h"

#include "../models/unet_names.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UNET_PREFIX "model.diffusion_model."

/* A text tower as a LoRA file may name it. `openclip`: the checkpoint stores open_clip names
 * (fused in_proj_weight, c_fc, c_proj), which LoRA files spell in HF layout. The SDXL rows reach
 * the SDXL conditioner's embedders when a checkpoint has them. */
typedef struct te_tower {
    const char *kohya;     /* kohya prefix, with its '_' */
    const char *diffusers; /* diffusers prefix, with its '.' */
    const char *root;      /* checkpoint prefix of the tower's HF path / open_clip root */
    int openclip;
} te_tower;

static const te_tower towers[] = {
    {"lora_te_", "text_encoder.", "cond_stage_model.transformer.", 0},         /* SD1: HF CLIP ViT-L */
    {"lora_te_", "text_encoder.", "cond_stage_model.model.", 1},               /* SD2: OpenCLIP ViT-H */
    {"lora_te1_", "text_encoder.", "conditioner.embedders.0.transformer.", 0}, /* SDXL: CLIP ViT-L */
    {"lora_te2_", "text_encoder_2.", "conditioner.embedders.1.model.", 1},     /* SDXL: OpenCLIP bigG */
};

/* open_clip block parameters and the HF module each one is, with the row third of a fused q/k/v
 * (-1: the whole weight). Block N is "transformer.resblocks.N." below the root. */
static const struct {
    const char *openclip, *hf;
    int third;
} openclip_layers[] = {
    {"attn.in_proj_weight", "self_attn.q_proj", 0},
    {"attn.in_proj_weight", "self_attn.k_proj", 1},
    {"attn.in_proj_weight", "self_attn.v_proj", 2},
    {"attn.out_proj.weight", "self_attn.out_proj", -1},
    {"mlp.c_fc.weight", "mlp.fc1", -1},
    {"mlp.c_proj.weight", "mlp.fc2", -1},
};

void lora_names_free(lora_names *n)
{
    if (!n) return;
    for (size_t i = 0; i < n->n_w; i++) ldm_free(n->w[i].name);
    for (size_t i = 0; i < n->n_k; i++) ldm_free(n->k[i].key);
    ldm_free(n->w);
    ldm_free(n->k);
    memset(n, 0, sizeof *n);
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static ldm_status grow(void **p, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap) return LDM_OK;
    size_t c = *cap ? 2 * *cap : 256;
    void *q = ldm_realloc(*p, c * elem);
    if (!q) return ldm_fail_context(ldm_alloc_failure_status(), "LoRA name table: ");
    *p = q;
    *cap = c;
    return LDM_OK;
}

static ldm_status add_weight(lora_names *n, const char *name, const lw_tensor *t, lora_component c, int *index)
{
    LDM_TRY(grow((void **)&n->w, &n->cap_w, n->n_w, sizeof *n->w));
    char *copy = ldm_strdup(name);
    if (!copy) return ldm_alloc_failure_status();
    int64_t cols = 1;
    for (int d = 1; d < t->ndim; d++) cols *= t->shape[d];
    n->w[n->n_w] = (lora_weight){copy, t->shape[0], cols, c};
    *index = (int)n->n_w++;
    return LDM_OK;
}

/* Adds `head` + `path` as a key; with flatten, every '.' of path becomes '_' (kohya). */
static ldm_status add_key(lora_names *n, const char *head, const char *path, int flatten, int weight, int64_t row0,
                          int64_t rows)
{
    LDM_TRY(grow((void **)&n->k, &n->cap_k, n->n_k, sizeof *n->k));
    size_t len = strlen(head) + strlen(path) + 1;
    char *key = ldm_malloc(len);
    if (!key) return ldm_alloc_failure_status();
    snprintf(key, len, "%s%s", head, path);
    if (flatten)
        for (char *c = key + strlen(head); *c; c++)
            if (*c == '.') *c = '_';
    n->k[n->n_k++] = (lora_key){key, weight, row0, rows};
    return LDM_OK;
}

/* The module path of a weight name: `name` without `prefix` and its ".weight". */
static int module_path(const char *name, const char *prefix, char *out, size_t cap)
{
    size_t lp = strlen(prefix), ln = strlen(name);
    if (ln < lp + 7 || !has_prefix(name, prefix) || !has_suffix(name, ".weight")) return 0;
    size_t len = ln - lp - 7;
    if (len + 1 > cap) return 0;
    memcpy(out, name + lp, len);
    out[len] = 0;
    return 1;
}

static ldm_status add_unet(lora_names *n, const lw_store *s, const ld_unet *u, int use_ema)
{
    ld_unet_layout layout;
    ld_unet_layout_from_desc(u, &layout);
    for (size_t i = 0; i < lw_count(s); i++) {
        const lw_tensor *t = lw_at(s, i);
        char path[512], diff[512], read[600];
        if ((t->ndim != 2 && t->ndim != 4) || !module_path(t->name, UNET_PREFIX, path, sizeof path)) continue;
        if (use_ema)
            lw_ema_name(t->name, read, sizeof read);
        else
            snprintf(read, sizeof read, "%s", t->name);
        const lw_tensor *rt = lw_find(s, read);
        if (!rt || rt->ndim != t->ndim) continue; /* the UNet will say what is missing */
        int w;
        LDM_TRY(add_weight(n, read, rt, LORA_UNET, &w));
        LDM_TRY(add_key(n, "lora_unet_", path, 1, w, 0, rt->shape[0]));
        if (ld_unet_name_to_diffusers(&layout, path, diff, sizeof diff)) {
            LDM_TRY(add_key(n, "lora_unet_", diff, 1, w, 0, rt->shape[0]));
            LDM_TRY(add_key(n, "unet.", diff, 0, w, 0, rt->shape[0]));
        }
    }
    return LDM_OK;
}

static ldm_status add_hf_tower(lora_names *n, const lw_store *s, const te_tower *tw)
{
    for (size_t i = 0; i < lw_count(s); i++) {
        const lw_tensor *t = lw_at(s, i);
        char path[512];
        if (t->ndim != 2 || !module_path(t->name, tw->root, path, sizeof path) || strstr(path, "embedding")) continue;
        int w;
        LDM_TRY(add_weight(n, t->name, t, LORA_TEXT, &w));
        LDM_TRY(add_key(n, tw->kohya, path, 1, w, 0, t->shape[0]));
        LDM_TRY(add_key(n, tw->diffusers, path, 0, w, 0, t->shape[0]));
    }
    return LDM_OK;
}

static ldm_status add_openclip_tower(lora_names *n, const lw_store *s, const te_tower *tw)
{
    for (int block = 0;; block++) {
        char name[512], hf[512];
        int any = 0, fused = -1;
        for (size_t j = 0; j < LDM_ARRAY_LEN(openclip_layers); j++) {
            snprintf(name, sizeof name, "%stransformer.resblocks.%d.%s", tw->root, block, openclip_layers[j].openclip);
            const lw_tensor *t = lw_find(s, name);
            if (!t || t->ndim != 2) continue;
            any = 1;
            int third = openclip_layers[j].third, w;
            if (third < 0 || fused < 0)
                LDM_TRY(add_weight(n, name, t, LORA_TEXT, &w));
            else
                w = fused;
            if (third >= 0) fused = w;
            int64_t rows = third < 0 ? t->shape[0] : t->shape[0] / 3, row0 = third < 0 ? 0 : third * rows;
            snprintf(hf, sizeof hf, "text_model.encoder.layers.%d.%s", block, openclip_layers[j].hf);
            LDM_TRY(add_key(n, tw->kohya, hf, 1, w, row0, rows));
            LDM_TRY(add_key(n, tw->diffusers, hf, 0, w, row0, rows));
        }
        if (!any) return LDM_OK;
    }
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(((const lora_key *)a)->key, ((const lora_key *)b)->key);
}

ldm_status lora_names_build(const lw_store *s, const ld_model *desc, int use_ema, lora_names *out)
{
    memset(out, 0, sizeof *out);
    ldm_status st = LDM_OK;
    if (desc->unet.present) st = add_unet(out, s, &desc->unet, use_ema);
    for (size_t i = 0; st == LDM_OK && i < LDM_ARRAY_LEN(towers); i++) {
        char probe[256];
        snprintf(probe, sizeof probe, "%s%s", towers[i].root,
                 towers[i].openclip ? "transformer.resblocks." : "text_model.");
        if (!lw_has_prefix(s, probe)) continue;
        st = towers[i].openclip ? add_openclip_tower(out, s, &towers[i]) : add_hf_tower(out, s, &towers[i]);
    }
    if (st != LDM_OK) {
        lora_names_free(out);
        return st;
    }
    if (out->n_k) qsort(out->k, out->n_k, sizeof *out->k, key_cmp);
    return LDM_OK;
}

const lora_key *lora_names_find(const lora_names *n, const char *key)
{
    lora_key probe = {(char *)key, 0, 0, 0};
    return n->n_k ? bsearch(&probe, n->k, n->n_k, sizeof *n->k, key_cmp) : NULL;
}
