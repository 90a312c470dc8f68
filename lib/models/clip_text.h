/* clip_text.h - the CLIP text tower used as the cond stage of Stable Diffusion 1.x and 2.x.
 *
 * One implementation serves both checkpoint layouts:
 *   LD_COND_CLIP      SD1 FrozenCLIPEmbedder: HF transformers CLIPTextModel key names under
 *                     "<prefix>transformer.text_model.", QuickGELU.
 *   LD_COND_OPENCLIP  SD2 FrozenOpenCLIPEmbedder: open_clip key names under "<prefix>model.",
 *                     exact GELU, fused in_proj rows [q;k;v].
 * The math is the same: x = tok_emb[ids] + pos_emb; (layers - layer_skip) pre-LN blocks
 * x += attn(ln_1 x) (causal, head-major heads, scale head_dim^-0.5), x += fc2(act(fc1(ln_2 x)));
 * then the final LayerNorm (eps 1e-5 everywhere). No pooling, no projection. The tower runs in
 * text_transformer.c; this file knows the two key layouts. */
#ifndef LDM_MODELS_CLIP_TEXT_H
#define LDM_MODELS_CLIP_TEXT_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/weights.h"
#include "desc.h"

typedef struct lclip lclip;

/* Loads the text tower from `s` (keys under `prefix`, e.g. "cond_stage_model."). The desc gives
 * kind, heads and layer_skip; width/layers/vocab/ctx are checked against the tensor shapes and
 * names (a value of 0 in the desc means "take it from the weights"). Errors name the tensor and
 * the expected vs found shape. */
ldm_status lclip_create(const ld_cond *d, const lw_store *s, const char *prefix, lclip **out);
void lclip_free(lclip *n);

/* tokens: I64 [B,T] with 1 <= T <= ctx and every id in [0, vocab). out: new F32 [B,T,width]
 * owned by the caller. */
ldm_status lclip_encode(lclip *n, const lctx *c, const ldm_tensor *tokens, ldm_tensor **out);
/* ltt_encode_ex on the tower (SDXL: CLIP hidden states without the final LayerNorm, open_clip's
 * penultimate state beside the normalised last one). */
ldm_status lclip_encode_ex(lclip *n, const lctx *c, const ldm_tensor *tokens, int capture_after,
                           ldm_tensor **captured, int final_ln, ldm_tensor **out);
/* Blocks loaded (layers - layer_skip). */
int lclip_blocks(const lclip *n);

/* Dimensions actually loaded (after completing zeros in the desc from the weights). */
int lclip_width(const lclip *n);
int lclip_ctx(const lclip *n);
int lclip_vocab(const lclip *n);

#endif
