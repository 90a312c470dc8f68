/* text_transformer.h - the pre-LN transformer text tower shared by the CLIP/OpenCLIP text encoders
 * (clip_text.c) and the BERTEmbedder (bert.c):
 *   x = tok_emb[ids] + pos_emb[0..T)
 *   per block: x += out(attention(ln1 x))      (fused [q;k;v] projection, bias optional, heads of
 *                                                dim_head split head-major, scale dim_head^-0.5,
 *                                                causal or not)
 *              x += fc2(act(fc1(ln2 x)))       (exact GELU or QuickGELU)
 *   out = lnf(x)                               (LayerNorm eps 1e-5 everywhere)
 * The model files own key names, shape validation and how their checkpoint lays out the blocks;
 * they fill an ltt with the helpers below and call ltt_encode.
 *
 * The weight matrices (projections and the token embedding) are lnw (netweights.h): a float16
 * checkpoint's halves are borrowed from the store, which must outlive the ltt, and widened as
 * the products use them (the SD1 CLIP tower: ~245 MB instead of ~490 MB). Biases, LayerNorm gains
 * and the positional embedding are small float32 copies. */
#ifndef LDM_MODELS_TEXT_TRANSFORMER_H
#define LDM_MODELS_TEXT_TRANSFORMER_H

#include "../core/ctx.h"
#include "../core/tensor.h"
#include "../io/weights.h"
#include "netweights.h"

typedef enum ltt_activation { LTT_GELU, LTT_QUICK_GELU } ltt_activation;

typedef struct ltt_block {
    float *ln1_w, *ln1_b;
    /* n_qkv 1: qkv[0] is the fused [3*inner, dim] projection (rows q, k, v: open_clip's
     * in_proj_weight, or separate float32 copies stacked). n_qkv 3: qkv[i] are the separate q, k,
     * v [inner, dim] matrices, kept apart because borrowed halves cannot be stacked without a
     * copy. */
    lnw qkv[3];
    int n_qkv;
    float *qkv_b; /* [3*inner] (q, k, v) or NULL (no bias) */
    lnw out;      /* [dim, inner] */
    float *out_b; /* [dim] */
    float *ln2_w, *ln2_b;
    lnw fc1;      /* [ff, dim] */
    float *fc1_b; /* [ff] */
    lnw fc2;      /* [dim, ff] */
    float *fc2_b; /* [dim] */
} ltt_block;

typedef struct ltt {
    const char *model; /* what to call the tower in messages */
    int dim, vocab, max_seq;
    int heads, dim_head, inner, ff; /* inner = heads * dim_head */
    int causal;
    ltt_activation act;
    lnw tok_emb;    /* [vocab, dim] */
    float *pos_emb; /* [max_seq, dim] */
    float *lnf_w, *lnf_b;
    int n_blocks;
    ltt_block *blocks;
} ltt;

/* ---- loading (key names are the caller's) */

/* Loads a LayerNorm: float32 copies of "<stem>.weight" and "<stem>.bias" ([dim] each). The stem
 * is built printf-style. */
ldm_status ltt_get_norm(const lw_store *s, int64_t dim, float **w, float **b, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Loads a Linear: "<stem>.weight" [rows,cols] as an lnw and "<stem>.bias" [rows] as a float32
 * copy. The stem is built printf-style. */
ldm_status ltt_get_linear(const lw_store *s, int64_t rows, int64_t cols, lnw *w, float **b, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* The fused projection "<name>" [3*inner,cols] (open_clip's in_proj_weight) into blk->qkv[0]
 * (n_qkv 1); the bias is the caller's. */
ldm_status ltt_get_fused_qkv(const lw_store *s, int64_t inner, int64_t cols, ltt_block *blk, const char *name);

/* The three projections "<stem><part[i]>.weight" [rows,cols] into blk->qkv[i] (n_qkv 3; stacked
 * into one fused float32 copy, n_qkv 1, when none is borrowed) and, when with_bias,
 * "<stem><part[i]>.bias" [rows] stacked into blk->qkv_b [3*rows]: the forward pass then writes
 * q|k|v per token as open_clip's fused in_proj does. */
ldm_status ltt_get_qkv(const lw_store *s, int64_t rows, int64_t cols, ltt_block *blk, int with_bias, const char *stem,
                       const char *const part[3]);

/* Tensor `name` must be a non-empty 2-D tensor (errors name t->model); *out receives it. */
ldm_status ltt_find_2d(const ltt *t, const lw_store *s, const char *name, const lw_tensor **out);

/* `*dim` holds the model description's value: 0 adopts `found`, anything else must equal it
 * (else an error naming `what`, both values and `tensor`). */
ldm_status ltt_agree(const ltt *t, int *dim, int64_t found, const char *what, const char *tensor);

/* ltt_find_2d, then ltt_agree of its rows with *rows and (when cols is not NULL) of its columns
 * with *cols. */
ldm_status ltt_dims_2d(const ltt *t, const lw_store *s, const char *name, int *rows, const char *rows_what, int *cols,
                       const char *cols_what);

/* Loads tok_emb / pos_emb / the final LayerNorm "<final_ln>.weight/.bias" for the dimensions
 * already in t, and allocates n_blocks zeroed blocks for the caller to fill. */
ldm_status ltt_load_outer(ltt *t, const lw_store *s, const char *tok_emb, const char *pos_emb, const char *final_ln,
                          int n_blocks);

/* Frees every weight held by t (not t itself); a partly loaded t is fine. */
void ltt_release(ltt *t);

/* ---- forward */

/* tokens: I64 [B,T] with 1 <= T <= max_seq and every id in [0, vocab). out: new F32 [B,T,dim]
 * owned by the caller. */
ldm_status ltt_encode(const ltt *t, const lctx *c, const ldm_tensor *tokens, ldm_tensor **out);
/* The same with the hidden states SDXL's embedders read: *out is the stream after every block,
 * with the final LayerNorm only when final_ln; when `captured` is not NULL it receives a new
 * copy of the stream after `capture_after` blocks (0..n_blocks; no LayerNorm). */
ldm_status ltt_encode_ex(const ltt *t, const lctx *c, const ldm_tensor *tokens, int capture_after,
                         ldm_tensor **captured, int final_ln, ldm_tensor **out);

#endif
