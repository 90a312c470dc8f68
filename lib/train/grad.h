/* grad.h - backward kernels for training (issue #13): the gradients of every layer the LDM
 * networks are built from, given the forward inputs and dL/d(output).
 *
 * Conventions are those of kernels/kernels.h: dense float32, row-major, NCHW for images, an lctx
 * for the thread pool. Every gradient output is OVERWRITTEN (not accumulated into); any gradient
 * pointer may be NULL when that gradient is not wanted. Inputs that were outputs of the forward
 * pass (softmax probabilities, normalised values) are not saved: each backward recomputes what
 * it needs from the forward inputs, so callers keep only what the forward consumed.
 *
 * Thread-count independence: sums over the batch or over space (dw, db, dgamma, dbeta, the table
 * rows of an embedding) are split by output element, each element reduced by one task in one fixed
 * order, and the matrix products go through lk_gemm (tiled by shape only), so results are bitwise
 * the same with any number of threads.
 *
 * Each fast path has a naive reference (lg_ref_*) beside it: plain loops over the textbook
 * formula, accumulated in double, no threads, no BLAS. tests/test_grad.c checks the references
 * against central finite differences and the fast paths against the references. */
#ifndef LDM_TRAIN_GRAD_H
#define LDM_TRAIN_GRAD_H

#include "../kernels/kernels.h"

#include <stdint.h>

/* ---- linear: y[rows,out] = x[rows,in] W[out,in]^T + b[out] (grad_linear.c) */
void lg_linear_backward(const lctx *c, const float *x, const float *W, const float *dy, int rows, int in, int out,
                        float *dx, float *dW, float *db);
void lg_ref_linear_backward(const float *x, const float *W, const float *dy, int rows, int in, int out, float *dx,
                            float *dW, float *db);

/* ---- conv2d as lk_conv2d (any kernel, stride, asymmetric zero padding; grad_conv.c):
 * x [B,IC,H,W], w [OC,IC,KH,KW], dy [B,OC,OH,OW] -> dx like x, dw like w, db [OC].
 * im2col / col2im in blocks of output rows and lk_gemm products; scratch memory, so a status. */
ldm_status lg_conv2d_backward(const lctx *c, const lk_conv2d_shape *s, const float *x, const float *w,
                              const float *dy, float *dx, float *dw, float *db);
void lg_ref_conv2d_backward(const lk_conv2d_shape *s, const float *x, const float *w, const float *dy, float *dx,
                            float *dw, float *db);

/* ---- normalisation (grad_norm.c), torch semantics as lk_group_norm / lk_layer_norm: biased
 * variance, eps inside the square root, gamma NULL means 1 (beta does not enter a gradient).
 * GroupNorm over x [B,C,HW] -> dx, dgamma [C], dbeta [C]. LayerNorm over rows of [rows,dim] ->
 * dx, dgamma [dim], dbeta [dim]. The statistics are recomputed in double; dx may equal dy. */
ldm_status lg_group_norm_backward(const lctx *c, const float *x, int B, int C, int HW, int groups, float eps,
                                  const float *gamma, const float *dy, float *dx, float *dgamma, float *dbeta);
void lg_ref_group_norm_backward(const float *x, int B, int C, int HW, int groups, float eps, const float *gamma,
                                const float *dy, float *dx, float *dgamma, float *dbeta);
ldm_status lg_layer_norm_backward(const lctx *c, const float *x, int rows, int dim, float eps, const float *gamma,
                                  const float *dy, float *dx, float *dgamma, float *dbeta);
void lg_ref_layer_norm_backward(const float *x, int rows, int dim, float eps, const float *gamma, const float *dy,
                                float *dx, float *dgamma, float *dbeta);

/* ---- activations (grad_act.c); dx may equal dy.
 * SiLU x*sigmoid(x); GELU exact x*Phi(x) (erf form, torch's default); GEGLU as ldm's
 * `x, gate = proj(x).chunk(2, dim=-1); x * gelu(gate)`: x [rows, 2*dim] holds the value in the
 * first half and the gate in the second, dy [rows,dim], dx [rows, 2*dim] (dx must not alias). */
void lg_silu_backward(const lctx *c, const float *x, const float *dy, size_t n, float *dx);
void lg_gelu_backward(const lctx *c, const float *x, const float *dy, size_t n, float *dx);
void lg_geglu_backward(const lctx *c, const float *x, int rows, int dim, const float *dy, float *dx);
void lg_ref_silu_backward(const float *x, const float *dy, size_t n, float *dx);
void lg_ref_gelu_backward(const float *x, const float *dy, size_t n, float *dx);
void lg_ref_geglu_backward(const float *x, int rows, int dim, const float *dy, float *dx);

/* ---- attention (grad_attn.c): out = softmax(scale * q k^T) v per slice, q [BH,Tq,D],
 * k and v [BH,Tk,D] contiguous (self attention: Tk = Tq; cross: Tk = context length); causal as
 * lk_attention (query t sees keys s <= t). dout [BH,Tq,D] -> dq, dk, dv (all three required).
 * The softmax is recomputed from q and k, a block of query rows at a time, not saved. */
ldm_status lg_attention_backward(const lctx *c, int BH, int Tq, int Tk, int D, const float *q, const float *k,
                                 const float *v, const float *dout, float scale, int causal, float *dq, float *dk,
                                 float *dv);
ldm_status lg_ref_attention_backward(int BH, int Tq, int Tk, int D, const float *q, const float *k, const float *v,
                                     const float *dout, float scale, int causal, float *dq, float *dk, float *dv);

/* ---- resampling (grad_resample.c), planes of [BC, H, W] where H, W are the INPUT size.
 * Nearest 2x upsampling (dy [BC,2H,2W]): each input pixel receives its 2x2 block. 2x2 average
 * pool with stride 2 and floor (dy [BC,H/2,W/2]): a quarter to each pixel of the window; an odd
 * last row or column, which the forward ignores, gets zero. */
void lg_upsample_nearest2_backward(const lctx *c, const float *dy, int BC, int H, int W, float *dx);
void lg_avg_pool2_backward(const lctx *c, const float *dy, int BC, int H, int W, float *dx);
void lg_ref_upsample_nearest2_backward(const float *dy, int BC, int H, int W, float *dx);
void lg_ref_avg_pool2_backward(const float *dy, int BC, int H, int W, float *dx);

/* ---- embedding lookup and channel concatenation (grad_embed.c)
 * y[i,:] = table[labels[i],:] for i < n: dtable [n_classes,dim] = sum over the i with that label
 * of dy[i,:] (rows no label picked are zero). LDM_ERR_INVALID_ARGUMENT for a label outside
 * [0, n_classes). (The sinusoidal timestep embedding is a fixed function: no gradient.) */
ldm_status lg_embedding_backward(const lctx *c, const int64_t *labels, int n, const float *dy, int n_classes, int dim,
                                 float *dtable);
void lg_ref_embedding_backward(const int64_t *labels, int n, const float *dy, int n_classes, int dim, float *dtable);
/* z = cat([a, b], dim=1) with a [B,C1,HW], b [B,C2,HW]: splits dz [B,C1+C2,HW] into da and db
 * (either may be NULL). A residual add y = a + b needs no kernel: dy flows to both unchanged. */
void lg_split_channels(const float *dz, int B, int C1, int C2, int HW, float *da, float *db);

#endif
