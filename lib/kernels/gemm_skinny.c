/* gemm_skinny.c - tall, thin products with a long inner dimension, the weights read in place:
 * C[M,N] = alpha A B, A [M,K] and B [K,N] row-major, N a multiple of 16 up to 128, K >= 1024.
 *
 * These are the 3x3 convolutions of a UNet's 8x8 and 4x4 levels (im2col, the batch's columns side
 * by side: an SD 1.5 1280-channel convolution at batch 2 is 1280 x 128 x 11520 at 8x8 and
 * 1280 x 32 x 11520 at 4x4). BLAS copies both operands into its panel layout on every call, and
 * A, the weights, is the large one (59 MB for that kernel); gemm.c's tile grid copies B again for
 * every row tile. Here neither is copied: a task takes 48 rows of C and walks K in blocks of 256;
 * within a block it runs every 16-column panel of B (256 x 16 floats, level-1 resident) against
 * the task's rows in 6 x 16 register blocks, the 48 x 256 block of A staying in level 2 across
 * the panels. A is read from memory once per call, B once per task.
 *
 * Every element of C is one accumulator adding a(i,k) b(k,j) for k = 0, 1, ..., K-1 in that order
 * (between K blocks it waits in C as a float, which is exact), then times alpha: results are
 * bitwise independent of the thread count and of the blocking. Only where the AVX2+FMA kernels
 * run (lk_gemm_skinny_applies); elsewhere BLAS keeps these products.
 *
 * x W^T with at most 128 rows (a transformer's projections at the 8x8 and 4x4 levels: 128 or 32
 * tokens at batch 2) is the same product transposed, C^T = W x^T (lk_gemm_skinny_bt): W in place,
 * x copied into panels, the result transposed into C with alpha and beta. 1 thread, GFLOP per
 * CPU-second, two rounds against lk_linear before: 128 x 1280 x 1280 83-84 / 71-73, 128 x 1280 x
 * 5120 83-85 / 60-67, 32 x 1280 x 1280 88-92 / 57-59, 32 x 1280 x 5120 78-83 / 56-59, 128 x 10240
 * x 1280 77-78 / 76-79 (equal).
 *
 * Measured on the machine of docs/performance.md (one thread, GFLOP per CPU-second, best of 4 on a
 * loaded host), against lk_gemm's tiled OpenBLAS: 1280 x 128 x 11520 76-80 / 67-68, x 23040 73-76
 * / 64-69, 1280 x 32 x 11520 80 / 54-58, 1280 x 64 x 11520 83 / 56-62, 640 x 128 x 5760 88-91 /
 * 69-70. B is copied into panels first (K x N floats, once per call, a pool job): read in place
 * with its row stride, the 1280 x 128 shapes ran at 55-60. */
#include "kernels.h"

#include "simd.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#define SK_MR 6     /* rows of a register block */
#define SK_NR 16    /* columns of a register block (one panel of B) */
#define SK_KB 256   /* inner-dimension block */
#define SK_ROWS 48  /* rows of C per pool task (a multiple of SK_MR) */
#define SK_MAX_N 128
#define SK_MIN_K 1024

int lk_gemm_skinny_bt_applies(int transA, int transB, int M, int N, int K)
{
#ifdef LK_DISPATCH
    if (!lk_cpu_has_avx2_fma()) return 0;
    return !transA && transB && M >= SK_NR && M <= SK_MAX_N && M % SK_NR == 0 && N >= SK_MR && K >= SK_MIN_K;
#else
    (void)transA, (void)transB, (void)M, (void)N, (void)K;
    return 0;
#endif
}

int lk_gemm_skinny_applies(int transA, int transB, int M, int N, int K, float beta)
{
#ifdef LK_DISPATCH
    if (!lk_cpu_has_avx2_fma()) return 0;
    return !transA && !transB && beta == 0.0f && M >= SK_MR && N >= SK_NR && N <= SK_MAX_N && N % SK_NR == 0 &&
           K >= SK_MIN_K;
#else
    (void)transA, (void)transB, (void)M, (void)N, (void)K, (void)beta;
    return 0;
#endif
}

#ifdef LK_DISPATCH
typedef struct skinny_job {
    int M, N, K;
    float alpha;
    const float *A;
    long lda;
    const float *B;  /* as given, row stride ldb */
    long ldb;
    float *Bp;       /* B in panels: element (k, 16p + q) at Bp[(p K + k) 16 + q] */
    float *C;
    long ldc;
} skinny_job;

#define SK_LOAD(r)                                                                                 \
    if (R > r) {                                                                                   \
        c##r##0 = _mm256_loadu_ps(c + (size_t)r * ldc);                                            \
        c##r##1 = _mm256_loadu_ps(c + (size_t)r * ldc + 8);                                        \
    }
#define SK_FMA(r)                                                                                  \
    if (R > r) {                                                                                   \
        __m256 av = _mm256_broadcast_ss(ak + (size_t)r * lda);                                     \
        c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);                                                \
        c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);                                                \
    }
#define SK_STORE(r)                                                                                \
    if (R > r) {                                                                                   \
        _mm256_storeu_ps(c + (size_t)r * ldc, _mm256_mul_ps(va, c##r##0));                         \
        _mm256_storeu_ps(c + (size_t)r * ldc + 8, _mm256_mul_ps(va, c##r##1));                     \
    }

/* Rows 0..R-1 x one panel over kb values of k: the accumulators start at zero (first block) or
 * from C, and are stored times va (alpha after the last block, else 1, which is exact). R is a
 * constant after inlining, so the accumulators stay in registers. */
static inline __attribute__((always_inline, target("avx2,fma"))) void sk_block(const int R, int kb, const float *a,
                                                                              long lda, const float *b, long ldb,
                                                                              float *c, long ldc, int from_c,
                                                                              __m256 va)
{
    __m256 z = _mm256_setzero_ps();
    __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z, c40 = z, c41 = z, c50 = z,
           c51 = z;
    if (from_c) {
        SK_LOAD(0) SK_LOAD(1) SK_LOAD(2) SK_LOAD(3) SK_LOAD(4) SK_LOAD(5)
    }
    const float *ak = a;
    for (int k = 0; k < kb; k++, ak++, b += ldb) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        SK_FMA(0) SK_FMA(1) SK_FMA(2) SK_FMA(3) SK_FMA(4) SK_FMA(5)
    }
    SK_STORE(0) SK_STORE(1) SK_STORE(2) SK_STORE(3) SK_STORE(4) SK_STORE(5)
}

/* Rows [i0, i1) of panel p over k in [k0, k0 + kb). */
__attribute__((target("avx2,fma"))) static void sk_rows(const skinny_job *j, int i0, int i1, int p, int k0, int kb,
                                                        int from_c, __m256 va)
{
    long lda = j->lda, ldc = j->ldc;
    const float *b = j->Bp + ((size_t)p * j->K + k0) * SK_NR;
    int j0 = p * SK_NR, i = i0;
    for (; i + SK_MR <= i1; i += SK_MR)
        sk_block(SK_MR, kb, j->A + (size_t)i * lda + k0, lda, b, SK_NR, j->C + (size_t)i * ldc + j0, ldc, from_c, va);
    const float *a = j->A + (size_t)i * lda + k0;
    float *c = j->C + (size_t)i * ldc + j0;
    switch (i1 - i) {
    case 5: sk_block(5, kb, a, lda, b, SK_NR, c, ldc, from_c, va); break;
    case 4: sk_block(4, kb, a, lda, b, SK_NR, c, ldc, from_c, va); break;
    case 3: sk_block(3, kb, a, lda, b, SK_NR, c, ldc, from_c, va); break;
    case 2: sk_block(2, kb, a, lda, b, SK_NR, c, ldc, from_c, va); break;
    case 1: sk_block(1, kb, a, lda, b, SK_NR, c, ldc, from_c, va); break;
    default: break;
    }
}

__attribute__((target("avx2,fma"))) static void sk_task(void *arg, int task)
{
    const skinny_job *j = arg;
    int i0 = task * SK_ROWS, i1 = LDM_MIN(j->M, i0 + SK_ROWS);
    __m256 one = _mm256_set1_ps(1.0f), alpha = _mm256_set1_ps(j->alpha);
    for (int k0 = 0; k0 < j->K; k0 += SK_KB) {
        int kb = LDM_MIN(SK_KB, j->K - k0);
        __m256 va = k0 + kb >= j->K ? alpha : one;
        for (int p = 0; p < j->N / SK_NR; p++) sk_rows(j, i0, i1, p, k0, kb, k0 > 0, va);
    }
}

/* Panel p of B, rows [k0, k0 + SK_KB), into Bp (one task per panel and K block). With bt, B is
 * given transposed (row q of the panel is row 16p + q of the source, K contiguous floats). */
typedef struct sk_pack_job {
    const skinny_job *j;
    int bt;
} sk_pack_job;

static void sk_pack(void *arg, int task)
{
    const sk_pack_job *pj = arg;
    const skinny_job *j = pj->j;
    int blocks = (j->K + SK_KB - 1) / SK_KB, p = task / blocks, k0 = (task % blocks) * SK_KB;
    int k1 = LDM_MIN(j->K, k0 + SK_KB);
    float *dst = j->Bp + (size_t)p * j->K * SK_NR;
    if (pj->bt) {
        for (int q = 0; q < SK_NR; q++) {
            const float *src = j->B + (size_t)(p * SK_NR + q) * j->ldb;
            for (int k = k0; k < k1; k++) dst[(size_t)k * SK_NR + q] = src[k];
        }
        return;
    }
    for (int k = k0; k < k1; k++)
        memcpy(dst + (size_t)k * SK_NR, j->B + (size_t)k * j->ldb + (size_t)p * SK_NR, sizeof(float) * SK_NR);
}

/* C = alpha T^T + beta C for rows [16 task, 16 task + 16) of C (T is N x M, row-major). */
typedef struct sk_out_job {
    const float *T;
    int M, N;
    float alpha, beta;
    float *C;
    long ldc;
} sk_out_job;

static void sk_out(void *arg, int task)
{
    const sk_out_job *o = arg;
    int m0 = task * SK_NR;
    for (int n = 0; n < o->N; n++) {
        const float *t = o->T + (size_t)n * o->M + m0;
        float *c = o->C + (size_t)m0 * o->ldc + n;
        for (int q = 0; q < SK_NR; q++, c += o->ldc)
            *c = o->beta == 0.0f ? o->alpha * t[q] : o->alpha * t[q] + o->beta * *c;
    }
}
#endif

void lk_gemm_skinny(const lctx *c, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                    int ldb, float *C, int ldc)
{
#ifdef LK_DISPATCH
    size_t bytes = sizeof(float) * (size_t)K * N;
    float *Bp = lk_cpu_has_avx2_fma() && N % SK_NR == 0 ? lk_scratch_get(bytes) : NULL;
    if (Bp) {
        skinny_job j = {M, N, K, alpha, A, lda, B, ldb, Bp, C, ldc};
        sk_pack_job pj = {&j, 0};
        lpool_run(lk_pool_for_bytes(c, 2.0 * bytes), N / SK_NR * ((K + SK_KB - 1) / SK_KB), sk_pack, &pj);
        lpool_run(lk_pool_for_flops(c, 2.0 * M * N * K), (M + SK_ROWS - 1) / SK_ROWS, sk_task, &j);
        lk_scratch_put(Bp, bytes);
        return;
    }
#endif
    /* another kernel family, N not a multiple of 16, or no memory for the panels: BLAS */
    lk_gemm_blas(c, 0, 0, M, N, K, alpha, A, lda, B, ldb, 0.0f, C, ldc);
}

void lk_gemm_skinny_bt(const lctx *c, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, float *C, int ldc)
{
#ifdef LK_DISPATCH
    /* C^T = B A^T: the skinny product with B [N,K] (the weights) in place as its left operand and
     * A^T, copied into panels, as its right one; T = C^T, then C = alpha T^T + beta C. */
    size_t pbytes = sizeof(float) * (size_t)K * M, tbytes = sizeof(float) * (size_t)N * M;
    float *Bp = lk_cpu_has_avx2_fma() && M % SK_NR == 0 ? lk_scratch_get(pbytes) : NULL;
    float *T = Bp ? lk_scratch_get(tbytes) : NULL;
    if (T) {
        skinny_job j = {N, M, K, 1.0f, B, ldb, A, lda, Bp, T, M};
        sk_pack_job pj = {&j, 1};
        lpool_run(lk_pool_for_bytes(c, 2.0 * pbytes), M / SK_NR * ((K + SK_KB - 1) / SK_KB), sk_pack, &pj);
        lpool_run(lk_pool_for_flops(c, 2.0 * M * N * K), (N + SK_ROWS - 1) / SK_ROWS, sk_task, &j);
        sk_out_job o = {T, M, N, alpha, beta, C, ldc};
        lpool_run(lk_pool_for_bytes(c, 3.0 * tbytes), M / SK_NR, sk_out, &o);
        lk_scratch_put(T, tbytes);
        lk_scratch_put(Bp, pbytes);
        return;
    }
    if (Bp) lk_scratch_put(Bp, pbytes);
#endif
    lk_gemm_blas(c, 0, 1, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
