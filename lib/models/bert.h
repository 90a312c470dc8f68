/* bert.h - BERTEmbedder of CompVis latent-diffusion (text2img256, layout2img): not a pretrained
 * BERT but an x_transformer TransformerWrapper(return_embeddings=True) over an Encoder:
 *   x = token_emb[ids] + pos_emb[0..T)            (learned absolute positions; dropout 0)
 *   per layer i: x += to_out(attn(LN x))           (layers.2i: heads x dim_head, default 8 x 64 =
 *                                                   inner 512 whatever n_embed; q/k/v without bias,
 *                                                   scale dim_head^-0.5, no mask, not causal)
 *               x += net.2(GELU(net.0.0(LN x)))    (layers.2i+1: FeedForward mult 4, exact GELU)
 *   out = norm(x)                                  (LayerNorm eps 1e-5 everywhere)
 * Keys under "<prefix>transformer."; to_logits is unused. The tower runs in text_transformer.c. */
#ifndef LDM_MODELS_BERT_H
#define LDM_MODELS_BERT_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/weights.h"
#include "desc.h"

typedef struct lbert lbert;

/* Loads the encoder (keys under `prefix`, e.g. "cond_stage_model."). n_embed, n_layer,
 * vocab_size and max_seq_len of the desc are checked against the weights (0 = take from the
 * weights); bert_heads / bert_dim_head (0 = x_transformer defaults 8 / 64) must multiply to the
 * attention inner dimension found in to_q. */
ldm_status lbert_create(const ld_cond *d, const lw_store *s, const char *prefix, lbert **out);
void lbert_free(lbert *n);

/* tokens: I64 [B,T] with 1 <= T <= max_seq_len and every id in [0, vocab_size).
 * out: new F32 [B,T,n_embed] owned by the caller. */
ldm_status lbert_encode(lbert *n, const lctx *c, const ldm_tensor *tokens, ldm_tensor **out);

int lbert_dim(const lbert *n);
int lbert_max_seq_len(const lbert *n);
int lbert_vocab(const lbert *n);

#endif
