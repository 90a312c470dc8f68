/* diffusers_names.h - the CompVis name of a parameter of a diffusers folder's VAE and text encoder
 * (the UNet's are in unet_names.h).
 *
 * diffusers AutoencoderKL (`decoder.up_blocks.0.resnets.1.conv_shortcut.weight`) vs the CompVis
 * first stage (`decoder.up.3.block.1.nin_shortcut.weight`): the decoder's levels are numbered from
 * the other end, the middle attention's Linear layers are 1x1 convolutions there. transformers'
 * CLIPTextModel (`text_model.encoder.layers.0.self_attn.q_proj.weight`) is what the SD 1.x
 * checkpoints hold under `cond_stage_model.transformer.`; the SD 2.x text encoder in that layout
 * becomes open_clip's (`cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight`, q, k
 * and v stacked). Names are without the "first_stage_model." / "cond_stage_model." prefixes. */
#ifndef LDM_MODELS_DIFFUSERS_NAMES_H
#define LDM_MODELS_DIFFUSERS_NAMES_H

#include <stddef.h>

/* How a translated tensor relates to the stored one. */
typedef enum {
    LD_DN_SAME = 0, /* same values and shape */
    LD_DN_CONV1X1,  /* a Linear [O,I] that CompVis stores as a 1x1 convolution [O,I,1,1] */
    LD_DN_QKV_PART  /* one third of a stacked [q;k;v] tensor; the part index is given */
} ld_dn_kind;

/* AutoencoderKL -> first stage. `n_levels` is len(block_out_channels), `num_res_blocks`
 * layers_per_block (the decoder has one more per level). Returns 1 and the name in out, or 0 when
 * the name is not an AutoencoderKL parameter of that layout (or does not fit in cap). */
int ld_vae_name_from_diffusers(int n_levels, int num_res_blocks, const char *name, char *out, size_t cap,
                               ld_dn_kind *kind);

/* CLIPTextModel -> open_clip text tower (SD 2.x). For q/k/v projections *kind is LD_DN_QKV_PART
 * and *part 0, 1 or 2. Returns 1, 0 (not a CLIPTextModel parameter) or -1 for
 * `text_model.embeddings.position_ids`, a buffer open_clip does not have: known, not carried over. */
int ld_openclip_name_from_hf(const char *name, char *out, size_t cap, ld_dn_kind *kind, int *part);

#endif
