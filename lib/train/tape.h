/* tape.h - reverse-mode differentiation over the forward kernels (issue #13): a network written
 * as a sequence of tape operations records each one (its inputs, its output, what backward
 * needs), and ltp_backward walks the record in reverse calling the backward kernels of grad.h.
 *
 * Why a tape and not hand-written backward passes per block: the training networks (UNet, KL
 * autoencoder) are compositions of a dozen kinds of operation; with a tape each kind is
 * differentiated once, and a network definition is only its forward pass. Everything is kept for
 * backward by default; a block run through ltp_segment keeps only its inputs and output and is
 * recomputed during backward (activation checkpointing, the reference's use_checkpoint).
 *
 * Values live in an arena owned by the tape and freed by ltp_reset, so one tape serves every
 * training step. Tensors are dense float32, row-major, up to 4 dimensions; images are NCHW,
 * sequences [B, T, C]. Operations never fail in the middle of a network: the first error
 * (allocation, a shape mismatch) is latched in the tape, later operations return LTP_NONE
 * without doing anything, and ltp_status() reports the error at the end, so network code reads
 * like its Python.
 *
 * Parameters are ltp_param: float32 data and a gradient buffer of the same size that backward
 * ACCUMULATES into (the optimiser's caller zeroes it between steps: ltp_params_zero_grad). New
 * parameters are trainable; ltp_params_set_trainable freezes a prefix (and frees its gradient).
 *
 * Thread-count independence: every operation runs forward and backward kernels that are bitwise
 * independent of the thread count, and gradient sums happen in the tape's fixed order. */
#ifndef LDM_TRAIN_TAPE_H
#define LDM_TRAIN_TAPE_H

#include "../core/common.h"
#include "../core/ctx.h"

#include <stddef.h>
#include <stdint.h>

#define LTP_MAX_DIMS 4
#define LTP_NONE (-1)
#define LTP_NAME_MAX 160

/* A trainable (or frozen) named tensor: the state-dict entry `name`. */
typedef struct ltp_param {
    char name[LTP_NAME_MAX];
    int ndim;
    int64_t shape[LTP_MAX_DIMS];
    size_t n;
    float *data;
    float *grad;   /* n floats, accumulated by backward; NULL while frozen */
    int trainable; /* 0: no gradient is computed for it */
} ltp_param;

/* How a new parameter is initialised, as torch does for the layer that owns it. */
typedef enum {
    LTP_INIT_ZERO,    /* zeros (biases of zero_module layers, GroupNorm/LayerNorm beta) */
    LTP_INIT_ONE,     /* ones (norm gamma) */
    LTP_INIT_UNIFORM, /* U(-bound, bound) with bound = 1/sqrt(fan_in): torch's default for the
                         weight (kaiming_uniform_ with a = sqrt 5) and bias of Linear / Conv2d */
    LTP_INIT_NORMAL   /* N(0, 1): nn.Embedding */
} ltp_init;

/* An ordered, named set of parameters (a state dict). Parameters are created on first request
 * and found by name afterwards, so running a network definition once declares its parameters. */
typedef struct ltp_params ltp_params;

ldm_status ltp_params_create(uint64_t init_seed, ltp_params **out);
void ltp_params_free(ltp_params *ps);
/* The parameter `name` of the given shape: the existing one (its shape must match, else
 * LDM_ERR_INVALID_ARGUMENT naming both shapes), or a new one initialised with `init` (fan_in for UNIFORM; the
 * values come from a counter-based generator keyed by the seed and the name, so they do not
 * depend on creation order). NULL with the error set on failure. */
ltp_param *ltp_params_get(ltp_params *ps, const char *name, int ndim, const int64_t *shape, ltp_init init,
                          int64_t fan_in);
ltp_param *ltp_params_find(const ltp_params *ps, const char *name);
size_t ltp_params_count(const ltp_params *ps);
ltp_param *ltp_params_at(const ltp_params *ps, size_t i); /* creation order */
/* Adds an existing tensor (copied), e.g. read from a checkpoint; replaces the values of an
 * existing parameter of the same name and shape. */
ldm_status ltp_params_set(ltp_params *ps, const char *name, int ndim, const int64_t *shape, const float *data);
/* Marks every parameter whose name starts with `prefix` trainable or frozen ("" = all). A
 * trainable parameter gets its zeroed gradient buffer here. */
ldm_status ltp_params_set_trainable(ltp_params *ps, const char *prefix, int trainable);
void ltp_params_zero_grad(ltp_params *ps);
size_t ltp_params_numel(const ltp_params *ps, int trainable_only);

/* ---------------------------------------------------------------- the tape */
typedef struct ltp_tape ltp_tape;
typedef int ltp_id; /* a value recorded on the tape; LTP_NONE after an error */

ldm_status ltp_tape_create(const lctx *c, ltp_tape **out);
void ltp_tape_free(ltp_tape *t);
/* Forgets every recorded operation and value (the arena is kept for the next step). */
void ltp_reset(ltp_tape *t);
/* The first error latched since the last reset (LDM_OK if none); its message is in ldm_last_error
 * of the thread that hit it, and repeated here. */
ldm_status ltp_status(const ltp_tape *t);
const char *ltp_error(const ltp_tape *t);
/* Bytes of values and gradients held now, and the most held since creation. */
/* Latches an error from network code (the first one wins); returns LTP_NONE. */
ltp_id ltp_fail(ltp_tape *t, ldm_status status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
size_t ltp_bytes(const ltp_tape *t);
size_t ltp_peak_bytes(const ltp_tape *t);

/* Values: shape, element count, data (valid until ltp_reset), gradient (NULL until backward
 * reaches the value, or when nothing it depends on needs a gradient). */
int ltp_ndim(const ltp_tape *t, ltp_id v);
int64_t ltp_dim(const ltp_tape *t, ltp_id v, int i); /* negative i counts from the end */
size_t ltp_numel(const ltp_tape *t, ltp_id v);
float *ltp_data(const ltp_tape *t, ltp_id v);
const float *ltp_grad(const ltp_tape *t, ltp_id v);

/* Leaves. An input is copied onto the tape and needs no gradient unless `requires_grad`. A
 * parameter is referenced (not copied): its gradient goes to p->grad when p is trainable. */
ltp_id ltp_input(ltp_tape *t, int ndim, const int64_t *shape, const float *data, int requires_grad);
ltp_id ltp_param_ref(ltp_tape *t, ltp_param *p);
/* Integer labels (class indices) for ltp_embedding; copied. Not a value: returns an index. */
int ltp_labels(ltp_tape *t, const int64_t *labels, int n);

/* ---- operations. Each returns the new value or LTP_NONE (error latched). */
/* x [B,IC,H,W] * w [OC,IC,KH,KW] (+ b [OC], may be LTP_NONE), symmetric zero padding. */
ltp_id ltp_conv2d(ltp_tape *t, ltp_id x, ltp_id w, ltp_id b, int stride, int pad);
/* torch.nn.functional.pad(x, (0,1,0,1)) then a stride-2 3x3 convolution without padding: the
 * autoencoder's Downsample (asymmetric padding). */
ltp_id ltp_conv2d_pad(ltp_tape *t, ltp_id x, ltp_id w, ltp_id b, int stride, int pad_top, int pad_left,
                      int pad_bottom, int pad_right);
/* x [..., in] W [out, in]^T (+ b [out]) over the last dimension. */
ltp_id ltp_linear(ltp_tape *t, ltp_id x, ltp_id W, ltp_id b);
/* GroupNorm over x [B,C,...] (gamma, beta [C]; may be LTP_NONE). */
ltp_id ltp_group_norm(ltp_tape *t, ltp_id x, int groups, float eps, ltp_id gamma, ltp_id beta);
/* LayerNorm over the last dimension. */
ltp_id ltp_layer_norm(ltp_tape *t, ltp_id x, float eps, ltp_id gamma, ltp_id beta);
ltp_id ltp_silu(ltp_tape *t, ltp_id x);
ltp_id ltp_gelu(ltp_tape *t, ltp_id x);
/* x [..., 2d] -> value half * gelu(gate half) [..., d] (ldm's GEGLU after its projection). */
ltp_id ltp_geglu(ltp_tape *t, ltp_id x);
ltp_id ltp_add(ltp_tape *t, ltp_id a, ltp_id b); /* same shapes */
ltp_id ltp_scale(ltp_tape *t, ltp_id x, float s);
/* x [B,C,...] + e [B,C] broadcast over the trailing dimensions (ResBlock's emb_out add). */
ltp_id ltp_add_channel_bias(ltp_tape *t, ltp_id x, ltp_id e);
/* x [B,C,...] * (1 + scale[B,C]) + shift[B,C] with ss [B,2C] = cat(scale, shift): ResBlock's
 * use_scale_shift_norm FiLM. */
ltp_id ltp_film(ltp_tape *t, ltp_id x, ltp_id ss);
/* cat([a, b], dim=1) of [B,C1,...] and [B,C2,...] with equal trailing dimensions. */
ltp_id ltp_concat_channels(ltp_tape *t, ltp_id a, ltp_id b);
/* The first or second half of x along dim 1 (torch.chunk(x, 2, dim=1)[which]). */
ltp_id ltp_chunk2(ltp_tape *t, ltp_id x, int which);
ltp_id ltp_upsample_nearest2(ltp_tape *t, ltp_id x); /* [B,C,H,W] -> [B,C,2H,2W] */
ltp_id ltp_avg_pool2(ltp_tape *t, ltp_id x);         /* [B,C,H,W] -> [B,C,H/2,W/2] */
/* [B,C,H,W] <-> [B,H*W,C] (rearrange 'b c h w -> b (h w) c' and back). */
ltp_id ltp_nchw_to_nlc(ltp_tape *t, ltp_id x);
ltp_id ltp_nlc_to_nchw(ltp_tape *t, ltp_id x, int H, int W);
/* Same data, another shape with the same element count. */
ltp_id ltp_reshape(ltp_tape *t, ltp_id x, int ndim, const int64_t *shape);
/* Multi-head softmax attention: q [B,Tq,heads*D], k and v [B,Tk,heads*D] -> [B,Tq,heads*D],
 * scale D^-0.5 (CrossAttention's split into heads and merge back included). */
ltp_id ltp_attention(ltp_tape *t, ltp_id q, ltp_id k, ltp_id v, int heads);
/* table [N, dim] rows picked by labels (from ltp_labels) -> [n, dim]. */
ltp_id ltp_embedding(ltp_tape *t, ltp_id table, int labels);
/* DiagonalGaussianDistribution(moments).sample() given the noise: moments [B,2C,...] (mean, then
 * logvar clamped to [-30, 20]) -> mean + exp(0.5 logvar) * noise [B,C,...] (noise copied). */
ltp_id ltp_gaussian_sample(ltp_tape *t, ltp_id moments, const float *noise);

/* x [B,C,...] -> [B,n,...] with channel j = channel idx[j] of x (idx copied; indices may repeat):
 * QKVAttentionLegacy's per-head q/k/v split of a fused qkv projection. */
ltp_id ltp_gather_channels(ltp_tape *t, ltp_id x, const int *idx, int n);

/* Dropout (torch.nn.Dropout in training mode): y = x * keep / (1 - p), keep = (u >= p) with u
 * uniform in [0, 1) from Philox keyed by the tape's (seed, draw) (ltp_set_rng), the `site` (a
 * number naming the layer, e.g. ltp_site_hash of its name) and the element's index, so the mask
 * depends on nothing else: not the thread count, not the order of operations, and a recomputed
 * segment (ltp_segment) draws the same mask. Backward regenerates the mask. p = 0 returns x. */
ltp_id ltp_dropout(ltp_tape *t, ltp_id x, float p, uint64_t site);
/* The key of every dropout mask until the next call (inherited by segments). */
void ltp_set_rng(ltp_tape *t, uint64_t seed, uint64_t draw);
/* FNV-1a of a name: a dropout site. */
uint64_t ltp_site_hash(const char *name);
/* The keep decision ltp_dropout uses for element i of `site` (for tests). */
int ltp_dropout_keep(uint64_t seed, uint64_t draw, uint64_t site, uint64_t i, float p);

/* ---- activation checkpointing. fn records a block on `sub` (a tape of its own) from the
 * inputs given there as sub-tape values and returns its output. ltp_segment runs it and puts the
 * output on t as one operation. The sub-tape, i.e. the block's activations, is dropped right away
 * when `checkpoint` is set, or when the memory held by t (ltp_bytes, the sub-tape included) then
 * exceeds the activation budget (ltp_set_activation_budget; 0 = none); a dropped block is run
 * again from its saved inputs when backward reaches it. Gradients are bit-identical either way
 * (the recomputation repeats the same kernels, and the gradients of the inputs accumulate in the
 * same order as without a segment). `ctx` (ctx_size bytes) is copied and handed to fn each time;
 * pointers in it must stay valid until ltp_reset. Up to 3 inputs. */
typedef ltp_id (*ltp_segment_fn)(ltp_tape *sub, const void *ctx, const ltp_id *inputs, int n_inputs);
ltp_id ltp_segment(ltp_tape *t, ltp_segment_fn fn, const void *ctx, size_t ctx_size, const ltp_id *inputs,
                   int n_inputs, int checkpoint);
void ltp_set_activation_budget(ltp_tape *t, size_t bytes);
size_t ltp_activation_budget(const ltp_tape *t);
/* Segments recorded since the last reset, and how many of them dropped their activations. */
int ltp_segments(const ltp_tape *t, int *dropped);

/* ---- backward. ltp_seed_grad adds g (the value's element count) to the gradient of v, e.g.
 * d loss / d output from loss.h; several values may be seeded. ltp_backward then runs every
 * recorded operation in reverse, accumulating parameter gradients into ltp_param.grad. */
ldm_status ltp_seed_grad(ltp_tape *t, ltp_id v, const float *g);
ldm_status ltp_backward(ltp_tape *t);

#endif
