/* unet_names.h - the two spellings of a UNet parameter: CompVis (openaimodel.UNetModel:
 * `input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight`) and diffusers
 * (UNet2DConditionModel: `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight`).
 *
 * LoRA files name UNet layers in either one (kohya for SD 1.x/2.x and PEFT files: diffusers
 * module paths; kohya for SDXL: CompVis paths), so the LoRA loader and writer translate between
 * them. The block arithmetic is the one diffusers' conversion scripts use: a down level holds
 * num_res_blocks ResBlocks (+ a downsampler but on the last level), an up level num_res_blocks + 1
 * (+ an upsampler but on the last up level), the middle block ResBlock, attention, ResBlock.
 * Inside a block the names agree except for ResBlock layers (norm1 <-> in_layers.0, ...).
 * Names work with or without a trailing parameter name (`.weight`), i.e. for module paths too. */
#ifndef LDM_MODELS_UNET_NAMES_H
#define LDM_MODELS_UNET_NAMES_H

#include "desc.h"

#include <stddef.h>

/* What the mapping needs to know of the architecture. */
typedef struct ld_unet_layout {
    int n_levels;                        /* len(channel_mult) */
    int num_res_blocks;                  /* ResBlocks per down level */
    int level_has_attn[LD_MAX_LEVELS];   /* level l (ds = 2^l) carries attention layers */
    int resblock_updown;                 /* down/upsamplers are ResBlocks: no diffusers spelling */
} ld_unet_layout;

void ld_unet_layout_from_desc(const ld_unet *u, ld_unet_layout *out);

/* CompVis -> diffusers. `name` has no "model.diffusion_model." prefix. Returns 1 and writes the
 * NUL-terminated result to out, or 0 when the name has no diffusers spelling (unknown block,
 * index outside the layout, resblock_updown samplers, result longer than cap). */
int ld_unet_name_to_diffusers(const ld_unet_layout *l, const char *name, char *out, size_t cap);

/* diffusers -> CompVis, the inverse (no "unet." prefix). Same return convention. */
int ld_unet_name_from_diffusers(const ld_unet_layout *l, const char *name, char *out, size_t cap);

#endif
