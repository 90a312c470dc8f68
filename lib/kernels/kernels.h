/* kernels.h - the numerical kernels the networks are built from.
 *
 * All data is dense float32, row-major, NCHW for images. Every kernel has a naive reference
 * implementation (lk_ref_*) kept for tests; the lk_* entry points may use faster paths (BLAS,
 * blocking, threads) and must agree with the reference to float rounding. Results must not depend
 * on the number of threads in ctx beyond float rounding (each output element is reduced in a
 * fixed order whatever the split). Kernels never allocate unless stated; the ones that need
 * scratch memory return an ldm_status. */
#ifndef LDM_KERNELS_H
#define LDM_KERNELS_H

#include "../core/common.h"
#include "../core/ctx.h"

/* ---- when to use the pool
 * A kernel hands a job to the pool only when the job's work, counted from its shape alone, reaches
 * one of these thresholds; smaller jobs run on the calling thread. A round trip through the pool
 * (publishing the job, a worker picking it up, the data moving to that worker's cache, waiting for
 * it to leave) costs a few microseconds, about what 1 MFLOP of arithmetic or a pass over 256 KiB
 * of memory costs on one core, and a batch-1 evaluation of a small model is mostly such jobs.
 * The decision never depends on the thread count, and the tasks are the same either way (kernels
 * split by output element), so results stay identical for every thread count. */
#define LK_POOL_MIN_FLOPS 1.0e6          /* compute-bound jobs: counted FLOPs */
#define LK_POOL_MIN_BYTES (256.0 * 1024) /* memory-bound jobs: bytes read plus written */
static inline lpool *lk_pool_for_flops(const lctx *c, double flops)
{
    return c && flops >= LK_POOL_MIN_FLOPS ? c->pool : NULL;
}
static inline lpool *lk_pool_for_bytes(const lctx *c, double bytes)
{
    return c && bytes >= LK_POOL_MIN_BYTES ? c->pool : NULL;
}

/* ---- matrix products (row-major) */
/* C[M,N] = alpha * op(A) op(B) + beta * C;  op(A) is [M,K] (A^T when transA), op(B) is [K,N]. */
void lk_gemm(const lctx *c, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);
/* The two paths behind lk_gemm (M, N, K > 0): BLAS sgemm, tiled over the pool (gemm.c), and the
 * unpacked register-blocked kernel for thin products (gemm_small.c), which lk_gemm takes when
 * lk_gemm_small_applies(M, N, K) (a rule on the shape alone). lk_gemm_small_impl runs the small
 * path with the portable kernel (impl 0) or the AVX2+FMA one (impl 1), for tests: returns 0 and
 * does nothing when that kernel cannot run here. */
void lk_gemm_blas(const lctx *c, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc);
int lk_gemm_small_applies(int M, int N, int K);
/* Tall, thin products with a long K, the weights (A) read in place (gemm_skinny.c): lk_gemm takes
 * it when lk_gemm_skinny_applies (AVX2+FMA; A and B not transposed, beta 0, N a multiple of 16 up
 * to 128, K >= 1024: a rule on the shape and arguments, never the thread count). */
int lk_gemm_skinny_applies(int transA, int transB, int M, int N, int K, float beta);
void lk_gemm_skinny(const lctx *c, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                    int ldb, float *C, int ldc);
/* The same for x W^T with few rows: C[M,N] = alpha A B^T + beta C, B [N,K] the weights (read in
 * place), M a multiple of 16 up to 128 (tokens of a transformer at 8x8 and 4x4), K >= 1024. */
int lk_gemm_skinny_bt_applies(int transA, int transB, int M, int N, int K);
void lk_gemm_skinny_bt(const lctx *c, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, float *C, int ldc);
void lk_gemm_small(const lctx *c, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc);
int lk_gemm_small_impl(const lctx *c, int impl, int transA, int transB, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* count products C_i[M,N] = A_i[M,K] B_i[K,N] (A_i = A + i*sa row-major, and so on) in one pool job,
 * with lk_gemm_small's kernel (every element one FMA chain in k order, bitwise the same for any
 * thread count). B_i is stored in panels of 16 columns, each K x 16 contiguous (element (k, n) at
 * (n / 16) * 16 K + 16 k + n % 16), as lk_gemm_small copies op(B) for itself: for the small
 * Winograd path, whose cached weights are kept so. N must be a multiple of 16 and count at most
 * LK_GEMM_BATCH_MAX (else nothing is done). */
/* W [N,K] (torch.nn.Linear's weight) as those panels of W^T (16 K floats each, zero past column N),
 * and C = A W^T + beta C from them (A [M,K], row stride lda). */
void lk_gemm_small_pack_bt(const float *W, int N, int K, float *dst);
void lk_gemm_small_packed(const lctx *c, int M, int N, int K, const float *A, int lda, const float *Bp, float beta,
                          float *C, int ldc);
#define LK_GEMM_BATCH_MAX 36
void lk_gemm_small_batched(const lctx *c, int count, int M, int N, int K, const float *A, size_t sa, int lda,
                           const float *B, size_t sb, float *C, size_t sc, int ldc);
/* Makes BLAS single-threaded (we split work over our own pool); called by lk_gemm itself, idempotent. */
void lk_blas_init(void);

/* ---- the kernel family held by live models and trainers (cpu.c) */
/* Called when a model or trainer is created: holds the process-wide kernel family for its
 * lifetime. `request` NULL, "" or "auto": whatever runs now (LDM_CPU / the best for the CPU); a
 * family name: that family, switched to when nothing else is held, else an error naming the
 * family in use (LDM_ERR_UNSUPPORTED; also for a family this build or CPU lacks, and
 * LDM_ERR_INVALID_ARGUMENT for an unknown name). Each successful call needs one lk_cpu_release. */
ldm_status lk_cpu_hold(const char *request);
void lk_cpu_release(void);
/* The bf16 compute mode (ldm_model_params.compute): LDM_ERR_UNSUPPORTED naming why it cannot run
 * (no avx512_bf16 on this CPU, else: its kernels are not written yet). */
ldm_status lk_cpu_check_bf16(void);
/* Tests: pretend the CPU has (1) or report what it has (0) for avx512f + avx512_bf16. */
void lk_cpu_pretend_bf16(int on);
/* y[rows,out] = x[rows,in] W^T + b;  W is [out,in] as in torch.nn.Linear; b may be NULL. */
void lk_linear(const lctx *c, const float *x, int rows, int in, const float *W, const float *b, int out, float *y);

/* ---- weights in their checkpoint's precision (weights.c) */
/* A weight matrix or kernel, row-major: float32, or the IEEE half values a checkpoint stores
 * (any alignment; widened exactly, block by block, as products use them). One pointer is set. */
typedef struct lk_wt {
    const float *f32;
    const void *f16;
    /* Non-zero when the values are in a read-only file mapping: in the low-memory mode the
     * kernels drop those pages once a call is done with them (lk_wt_done); the next use reads
     * them back from the file. Set by whoever borrows the weights from a store (lnw_get). */
    int paged;
} lk_wt;
static inline lk_wt lk_wt_f32(const float *p)
{
    lk_wt w = {p, NULL, 0};
    return w;
}
static inline lk_wt lk_wt_f16(const void *p)
{
    lk_wt w = {NULL, p, 0};
    return w;
}
/* A kernel is done with the first n elements of w: in the low-memory mode (lk_low_memory) paged
 * weights leave the resident set; otherwise nothing happens. */
void lk_wt_done(lk_wt w, size_t n);
/* dst[i] = float(src[i]) for n IEEE halves (exact). */
void lk_half_to_float(const void *src, size_t n, float *dst);
/* dst[0..n) = elements [off, off + n) of w as float. */
void lk_wt_read(lk_wt w, size_t off, size_t n, float *dst);
/* Products with an lk_wt. They do not call lk_wt_done: callers often apply the same weights to
 * each image of a batch in turn, and drop them (lk_wt_done) after the last use, not after each.
 * C[M,N] = W[M,K] op(B) + beta C  (op(B) = B [K,N], or B^T when transB with B [N,K]). */
ldm_status lk_gemm_wa(const lctx *c, lk_wt W, int M, int K, int transB, const float *B, int ldb, int N, float beta,
                      float *C, int ldc);
/* C[M,N] = op(A) W^T + beta C  (W [N,K]; op(A) = A [M,K], or A^T when transA with A [K,M]). */
ldm_status lk_gemm_wb(const lctx *c, int transA, const float *A, int lda, int M, int K, lk_wt W, int N, float beta,
                      float *C, int ldc);
/* lk_linear with an lk_wt (a whole layer: calls lk_wt_done). */
ldm_status lk_linear_wt(const lctx *c, const float *x, int rows, int in, lk_wt W, const float *b, int out, float *y);

/* ---- convolution */
typedef struct lk_conv2d_shape {
    int batch, in_ch, in_h, in_w;
    int out_ch, k_h, k_w;
    int stride;
    int pad_top, pad_left, pad_bottom, pad_right; /* zero padding */
} lk_conv2d_shape;
int lk_conv2d_out_h(const lk_conv2d_shape *s);
int lk_conv2d_out_w(const lk_conv2d_shape *s);
/* y[B,OC,OH,OW] = conv(x[B,IC,H,W], w[OC,IC,KH,KW]) + bias[OC] (bias may be NULL). */
ldm_status lk_conv2d(const lctx *c, const lk_conv2d_shape *s, const float *x, const float *w, const float *bias,
                     float *y);
/* The same with the kernel as an lk_wt (float16 checkpoints). */
ldm_status lk_conv2d_wt(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                        float *y);
/* lk_conv2d_wt of the nearest 2x upsample of x (x [B,IC,H/2,W/2]; s describes the upsampled
 * input, H and W even): what an Upsample block computes, without storing the upsampled image
 * when the Winograd path takes it (else it is built in scratch memory). */
ldm_status lk_conv2d_up2(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                         float *y);
/* The Winograd paths lk_conv2d takes for 3x3 stride-1 convolutions with enough channels
 * (winograd.c), exposed for tests: F(m x m, 3x3) with m = 4 (fewer multiplications) or m = 2
 * (smaller transformed weights, for small images). lk_winograd_applies: a 3x3 stride-1 shape.
 * The _up2 variant convolves the nearest 2x upsample of x without storing it (x at half
 * resolution; s describes the upsampled input, of even size). */
int lk_winograd_applies(const lk_conv2d_shape *s);
ldm_status lk_conv3x3_winograd(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                               const float *bias, float *y, int m);
ldm_status lk_conv3x3_winograd_up2(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                   const float *bias, float *y, int m);
/* What a convolution does to its output before storing it: y = relu?(conv(x) + bias + res), in
 * that order of float operations, res [B,OC,OH,OW] (may be NULL, must not alias y) and relu 0/1.
 * The Winograd path applies it in its output transform, while the tile is in registers (no pass
 * over the map, e.g. TAESD's Block: relu(conv(...) + x)); other paths in one pass afterwards.
 * Bit for bit what the separate conv, add and ReLU give. ep may be NULL: nothing. */
typedef struct lk_conv_ep {
    const float *res;
    int relu;
} lk_conv_ep;
ldm_status lk_conv2d_ep(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                        float *y, const lk_conv_ep *ep);
ldm_status lk_conv3x3_winograd_ep(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                  const float *bias, float *y, int m, const lk_conv_ep *ep);
/* How lk_conv3x3_winograd cuts shape s (for tests): tiles per product (a block of the batch's
 * tiles) and output channels per group of transformed weights. */
void lk_winograd_blocking(const lk_conv2d_shape *s, int m, int *tiles_per_block, int *channels_per_group);
/* 1 when lk_conv3x3_winograd's products for shape s run unpacked (lk_gemm_small's kernel on the
 * transformed weights' own panels) rather than through BLAS (for tests). */
int lk_winograd_unpacked(const lk_conv2d_shape *s, int m);
/* Unpacked products with one group of output channels run in small fused blocks, on by default;
 * off (0) makes them take the large-block path, the reference those blocks are tested against. */
void lk_winograd_fused_enable(int on);
/* Stride-1 convolutions with at most 8 output channels (the last layer of a decoder or UNet),
 * computed directly (conv_direct.c); lk_conv_direct_applies says which shapes it takes. */
int lk_conv_direct_applies(const lk_conv2d_shape *s);
ldm_status lk_conv2d_direct(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                            float *y);
/* Stride-1 convolutions whose product is small enough for lk_gemm_small (an 8x8, 4x4 or 16x16
 * image of a small model), on AVX2+FMA CPUs: the small product's register blocks read a
 * zero-padded copy of the input directly when the output width is a multiple of 8, with no
 * im2col; other widths gather the im2col columns into 16-pixel panels first (gemm_small.c). */
int lk_conv_small_applies(const lk_conv2d_shape *s);
ldm_status lk_conv2d_small(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                           float *y);
/* The general path: im2col in row blocks and one matrix product per block (any shape). */
ldm_status lk_conv2d_im2col(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                            const float *bias, float *y);

/* ---- a network's cache of transformed weights (wcache.c: lifetime, keys, bounds, threads) */
typedef struct lk_wcache lk_wcache;
#define LK_WCACHE_MAX_ENTRY ((size_t)2 << 20) /* bytes of one cached form, at most */
#define LK_WCACHE_BUDGET ((size_t)32 << 20)   /* bytes of one cache, at most */
/* An empty cache; NULL in the low-memory mode (nothing cached) or when out of memory. */
lk_wcache *lk_wcache_create(void);
void lk_wcache_free(lk_wcache *wc);
/* Forgets every entry: call after changing weights in place. wc may be NULL. */
void lk_wcache_clear(lk_wcache *wc);
size_t lk_wcache_bytes(const lk_wcache *wc);
/* The cached form `kind` (LK_WC_*) of the weights at key with dimensions d0, d1, or NULL. */
enum { LK_WC_WINO2 = 1, LK_WC_PANELS_T = 2 };
const float *lk_wcache_find(const lk_wcache *wc, const void *key, int kind, int d0, int d1);
/* A new entry of `bytes` for the caller to fill at once (*out), or *out = NULL when wc is NULL or
 * the entry would break a bound (then nothing is cached; not an error). */
ldm_status lk_wcache_add(lk_wcache *wc, const void *key, int kind, int d0, int d1, size_t bytes, float **out);

/* Convolutions with a cache (wc may be NULL: exactly lk_conv2d_wt / lk_conv2d_up2): a 3x3 stride-1
 * shape that would take the small path (lk_conv_small_applies: an 8x8 or 4x4 image of a small
 * model at batch 1 or 2) with at least 16 channels each way runs Winograd F(2x2,3x3) with its
 * transformed weights kept in wc (wino_small.c): 2.25x fewer multiply-adds than the direct sum,
 * without transforming the weights on every call. lk_conv_wino_small_applies says which shapes
 * (a rule on the shape and the CPU, never the thread count or the cache's state). */
ldm_status lk_conv2d_cached(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                            float *y, lk_wcache *wc);
ldm_status lk_conv2d_up2_cached(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                const float *bias, float *y, lk_wcache *wc);
int lk_conv_wino_small_applies(const lk_conv2d_shape *s);
/* lk_linear_wt with a cache (wc may be NULL: exactly lk_linear_wt): when the product is one for
 * lk_gemm_small with at least 2 rows, W^T is kept in wc in lk_gemm_small's 16-column panels, so
 * the small product neither copies it on every call nor falls back to dot products (gemm.c). */
ldm_status lk_linear_wt_cached(const lctx *c, const float *x, int rows, int in, lk_wt W, const float *b, int out,
                               float *y, lk_wcache *wc);
/* The path itself (for tests): uses and fills wc, or when the entry cannot be cached (wc NULL or
 * over a bound) transforms the weights into scratch memory for this call only. */
ldm_status lk_conv2d_wino_small(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                const float *bias, float *y, lk_wcache *wc);
/* For conv2d.c: runs the path when wc can hold the shape's transformed weights (*done = 1), else
 * does nothing (*done = 0). up2: x is at half resolution, convolve its nearest 2x upsample. */
ldm_status lk_conv2d_wino_small_try(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                    const float *bias, float *y, lk_wcache *wc, int up2, int *done);

/* ---- normalisation (in place allowed: y may equal x) */
/* GroupNorm over [B,C,HW] with `groups` groups, eps, per-channel affine gamma/beta (may be NULL);
 * statistics accumulated in double then used in float (matches float32 PyTorch to rounding). */
void lk_group_norm(const lctx *c, const float *x, int B, int C, int HW, int groups, float eps, const float *gamma,
                   const float *beta, float *y);
/* Same followed by SiLU (fused). */
void lk_group_norm_silu(const lctx *c, const float *x, int B, int C, int HW, int groups, float eps,
                        const float *gamma, const float *beta, float *y);
/* LayerNorm over the last dimension of [rows,dim]. */
void lk_layer_norm(const lctx *c, const float *x, int rows, int dim, float eps, const float *gamma, const float *beta,
                   float *y);

/* ---- activations (in place) */
void lk_silu(float *x, size_t n);
void lk_gelu(float *x, size_t n);       /* exact: x * 0.5 * (1 + erf(x / sqrt 2)); erf to 1.5e-7 like PyTorch CPU */
void lk_quick_gelu(float *x, size_t n); /* x * sigmoid(1.702 x) */
/* GEGLU on rows of [rows, 2*dim]: out[r,i] = a[r,i] * gelu(a[r,dim+i]) -> out [rows,dim]. */
void lk_geglu(const float *x, int rows, int dim, float *out);
/* Softmax over each row of [rows, cols] in place. */
void lk_softmax_rows(float *x, int rows, int cols);
/* The same, split over the pool of c (c may be NULL). Results are identical to the serial ones. */
void lk_silu_ctx(const lctx *c, float *x, size_t n);
void lk_gelu_ctx(const lctx *c, float *x, size_t n);
void lk_quick_gelu_ctx(const lctx *c, float *x, size_t n);
void lk_geglu_ctx(const lctx *c, const float *x, int rows, int dim, float *out);
void lk_softmax_rows_ctx(const lctx *c, float *x, int rows, int cols);

/* ---- attention
 * A strided view of a 4-D tensor indexed (batch b, head h, position t, channel d):
 * element = p[b*sb + h*sh + t*st + d*sd]. Lets one kernel serve the UNet's channels-first legacy
 * layout, the transformers' [B,T,heads*dim] layout and CLIP's fused in_proj layout. */
typedef struct lk_view {
    float *p;
    long sb, sh, st, sd;
} lk_view;
/* out(b,h,t,:) = softmax(scale * q(b,h,t,:) . k(b,h,s,:) over s) @ v(b,h,s,:);
 * causal: position t only sees s <= t. q,k,v,out views may use any strides; out must not alias
 * q/k/v. Needs scratch: returns LDM_ERR_OUT_OF_MEMORY on allocation failure. */
ldm_status lk_attention(const lctx *c, int B, int H, int Tq, int Tk, int D, lk_view q, lk_view k, lk_view v,
                        lk_view out, float scale, int causal);
/* The two implementations behind lk_attention, exposed for tests: tiles of BLAS products
 * (attention.c, any CPU) and the fused kernel (attention_fused.c: AVX2+FMA on x86-64, NEON on
 * aarch64) that lk_attention takes when lk_attention_fused_available(), i.e. when the kernel
 * family (simd.h, LDM_CPU) is avx2+fma or neon; lk_attention_fused fails with
 * LDM_ERR_UNSUPPORTED otherwise. */
ldm_status lk_attention_blas(const lctx *c, int B, int H, int Tq, int Tk, int D, lk_view q, lk_view k, lk_view v,
                             lk_view out, float scale, int causal);
int lk_attention_fused_available(void);
ldm_status lk_attention_fused(const lctx *c, int B, int H, int Tq, int Tk, int D, lk_view q, lk_view k, lk_view v,
                              lk_view out, float scale, int causal);

/* ---- resampling (NCHW, y must not alias x) */
/* PyTorch F.interpolate(mode='nearest'): src = min(floor(dst * (float)in / out), in - 1), as PyTorch
 * computes it in float (dst >> 1 for exact 2x, identity for equal sizes). */
void lk_resize_nearest(const float *x, int BC, int H, int W, int OH, int OW, float *y);
/* PyTorch F.interpolate(mode='bilinear', align_corners=False, scale_factor=s) with the scale
 * factor used for the source coordinate: src = (dst + 0.5) / s - 0.5, clamped at 0. */
void lk_resize_bilinear(const float *x, int BC, int H, int W, int OH, int OW, double scale_h, double scale_w, float *y);
/* 2x2 average pool, stride 2, floor (odd last row/column ignored). */
void lk_avg_pool2(const float *x, int BC, int H, int W, float *y);

/* ---- elementwise */
void lk_add(float *y, const float *x, size_t n);              /* y += x */
void lk_add_bias_channels(float *y, int B, int C, int HW, const float *bias); /* y[b,c,:] += bias[c] */

/* ---- vector helpers (vexp.c): exp with about 2 ulp error, arguments clamped to [-87.3, 88.3] */
void lk_vexp(float *x, size_t n);                           /* x = exp(x) */
float lk_vmax(const float *x, size_t n);                    /* max of x (-inf when n == 0) */
float lk_vexp_shift_sum(float *x, size_t n, float shift);   /* x = exp(x - shift); returns the sum */
void lk_vsilu(float *x, size_t n, float k);                 /* x = x * sigmoid(k x) */
void lk_vgelu(float *x, size_t n);                          /* erf GELU, erf to 1.5e-7 absolute */

/* ---- scratch buffers (scratch.c): a bounded cache of large buffers reused across calls */
/* A buffer of at least `bytes` (64-byte aligned), cached or new; NULL with the error set. */
void *lk_scratch_get(size_t bytes);
/* Gives a buffer from lk_scratch_get back (bytes = the size asked for); may free it. */
void lk_scratch_put(void *p, size_t bytes);
/* Frees every cached buffer. */
void lk_scratch_trim(void);
/* Non-zero when LDM_LOW_MEMORY is set (and not "0") in the environment: scratch is not cached
 * and networks free their workspaces after each call (docs/performance.md). */
int lk_low_memory(void);

/* ---- instrumentation for the benchmark (stats.c); off unless lk_stats_reset was called */
typedef enum lk_op {
    LK_OP_CONV3X3, /* 3x3 stride-1 convolutions */
    LK_OP_CONV1X1,
    LK_OP_CONV_OTHER,
    LK_OP_GEMM, /* lk_gemm / lk_linear called by a network directly */
    LK_OP_ATTENTION,
    LK_OP_GROUPNORM,
    LK_OP_LAYERNORM,
    LK_OP_ACTIVATION,
    LK_OP_ELEMENTWISE,
    LK_OP_RESAMPLE,
    LK_OP_COUNT
} lk_op;
typedef struct lk_op_stats {
    unsigned long long calls;
    double flops;   /* counted (textbook) FLOPs, see stats.c */
    double seconds;     /* wall time inside the outermost calls */
    double cpu_seconds; /* process CPU time (every thread) during them */
} lk_op_stats;
/* Zeroes the counters and starts counting the kernels called from this thread. */
void lk_stats_reset(void);
/* Stops counting on this thread (the counters keep their values). */
void lk_stats_stop(void);
void lk_stats_read(lk_op_stats out[LK_OP_COUNT]);
const char *lk_op_name(lk_op op);
/* Brackets one kernel call: end() records it if it was the outermost counted call. */
typedef struct lk_stat_mark {
    unsigned long long t0, cpu0;
    int entered, active;
} lk_stat_mark;
lk_stat_mark lk_stat_begin(void);
void lk_stat_end(lk_stat_mark m, lk_op op, double flops);

/* ---- naive references (tests compare the fast paths to these) */
void lk_ref_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc);
void lk_ref_conv2d(const lk_conv2d_shape *s, const float *x, const float *w, const float *bias, float *y);
void lk_ref_group_norm(const float *x, int B, int C, int HW, int groups, float eps, const float *gamma,
                       const float *beta, float *y);
void lk_ref_layer_norm(const float *x, int rows, int dim, float eps, const float *gamma, const float *beta, float *y);
void lk_ref_attention(int B, int H, int Tq, int Tk, int D, lk_view q, lk_view k, lk_view v, lk_view out, float scale,
                      int causal);

#endif
