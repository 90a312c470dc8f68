/* ae_coder.h - the autoencoder's Encoder and Decoder networks (CompVis latent-diffusion
 * ldm/modules/diffusionmodules/model.py), built from the blocks of ae_blocks.h.
 *
 * Layout reminders (they decide the checkpoint key names):
 * - Encoder: conv_in; per level i: num_res_blocks ResnetBlocks (down.i.block.j), an AttnBlock after
 *   each one (down.i.attn.j) when the level's resolution is in attn_resolutions, Downsample
 *   (down.i.downsample.conv) except on the last level; mid.block_1, mid.attn_1, mid.block_2;
 *   norm_out, conv_out (2*z_channels when double_z).
 * - Decoder: conv_in (z_channels -> ch*ch_mult[last]); mid; levels from the last to the first, each
 *   with num_res_blocks+1 ResnetBlocks (up.i.block.j), optional attention (up.i.attn.j) and an
 *   Upsample (up.i.upsample.conv) except on level 0; norm_out, conv_out.
 * - Level resolutions come from the CONFIG `resolution` (encoder: resolution >> i; decoder:
 *   (resolution >> (levels-1)) << (levels-1-i)), never from the actual input size. The mid block
 *   always has attention unless attn_type is "none", which also removes the level attention. */
#ifndef LDM_MODELS_AE_CODER_H
#define LDM_MODELS_AE_CODER_H

#include "ae_blocks.h"
#include "desc.h"

typedef struct laec_level {
    laeb_resblock *blocks;
    laeb_attn *attn;      /* NULL, or one per block */
    int n_blocks;
    int has_resample;     /* encoder: downsample; decoder: upsample */
    laeb_conv resample;
} laec_level;

typedef struct laec {
    int is_decoder;
    int n_levels;
    laeb_conv conv_in;
    laec_level level[LD_MAX_LEVELS];
    laeb_resblock mid_block_1, mid_block_2;
    int has_mid_attn;
    laeb_attn mid_attn;
    laeb_norm norm_out;
    laeb_conv conv_out;
} laec;

/* `name` is the module path, e.g. "first_stage_model.encoder". */
ldm_status laec_encoder_load(laec *e, const ld_autoencoder *d, const lw_store *s, const char *name);
ldm_status laec_decoder_load(laec *e, const ld_autoencoder *d, const lw_store *s, const char *name);
void laec_free(laec *e);

/* Runs the network on x; y is allocated. Polls lctx_cancelled between blocks. */
ldm_status laec_run(const lctx *c, const laec *e, const laeb_map *x, laeb_map *y);

#endif
