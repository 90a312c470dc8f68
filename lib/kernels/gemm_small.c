/* gemm_small.c - matrix products too small for BLAS's packing to pay off.
 *
 * A batch-1 evaluation of a small model is hundreds of thin products (a 3x3 convolution of 64
 * channels on an 8x8 image is 64 x 64 x 576; an attention projection of 64 tokens 64 x 64 x 64).
 * OpenBLAS copies both operands into its panel layout before every call, and for such shapes
 * that copying, not the multiply-adds, is most of the time. Here C is computed in register blocks
 * of 6 rows x 16 columns straight from A and B as they lie in memory, whatever their transposes
 * and strides; only op(B) is copied into 16-column panels when it is transposed or when its last
 * block is narrower than 16 columns (K x N floats, small next to the M x N x K multiply-adds).
 * A transposed B with at most 16 rows of C (x W^T at batch 1: 16 or 1 tokens) is not copied:
 * those products are dot products along K, both operands read in place (dot_job).
 *
 * Every element of C is one accumulator that adds a(i,k) b(k,j) for k = 0, 1, ..., K-1 in that
 * order, then becomes alpha * acc + beta * C: the blocking, the tiles handed to the pool and the
 * thread count never change an element's operations, so results are bitwise independent of the
 * thread count. The AVX2+FMA kernel (fused multiply-adds) is picked at run time (cpu.c); a
 * portable kernel with the same structure (separate multiplies and adds, simd.h vectors) backs
 * lk_gemm_small on other CPUs, but lk_gemm only takes the small path where the AVX2+FMA kernel
 * runs: elsewhere BLAS keeps every product, as before, since the portable kernel has not been
 * measured against a tuned BLAS on those CPUs.
 *
 * lk_gemm takes this path for shapes that lk_gemm_small_applies accepts: a rule on the shape
 * alone (and the CPU, never the thread count), measured against OpenBLAS on the 2-core Zen 3
 * machine of docs/performance.md: up to 6M multiply-adds and K <= 2048 the unpacked kernel wins
 * (64 x 16 x 576: 1.7x, 64 x 64 x 64 with B transposed: 1.5x, 64 x 64 x 576: 1.1x, hot caches;
 * more in a network, where BLAS's copies also take the cache misses of weights read once). */
#include "kernels.h"

#include "simd.h"

#include <math.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#define MR 6  /* rows of a register block */
#define NR 16 /* columns of a register block (one panel) */
/* Tiles handed to the pool: a multiple of MR rows by a multiple of NR columns. */
#define TILE_M (4 * MR)
#define TILE_N (2 * NR)
/* Shapes taken (multiply-adds, inner dimension, floats of packed panels): beyond these BLAS's
 * packed kernel is as fast or faster (measured: see the file comment). */
#define SMALL_MAX_WORK (6.0 * 1024 * 1024)
#define SMALL_MAX_K 2048
#define SMALL_MAX_PACK ((size_t)1 << 20)

static int have_fma(void);

int lk_gemm_small_applies(int M, int N, int K)
{
    if (!have_fma() || M <= 0 || N <= 0 || K <= 0 || K > SMALL_MAX_K) return 0;
    return (double)M * N * K <= SMALL_MAX_WORK;
}

/* The operands of one call. a(i,k) = A[i*ars + k*aks]; panel p of op(B) is either B itself at
 * column 16p (row stride ldb) or a packed K x 16 block (row stride 16). */
typedef struct small_job {
    int M, N, K;
    float alpha, beta;
    const float *A;
    long ars, aks;
    const float *B;
    long ldb;
    const float *packed; /* the packed panels, K x 16 each, or NULL */
    int pack_from;       /* first panel that is packed (0 when op(B) is transposed) */
    float *C;
    long ldc;
    int tiles_n;
    int fma; /* the AVX2+FMA kernel */
} small_job;

/* ---------------------------------------------------------------- portable kernel */

/* One register block: rows [0, mr) x columns [0, n) of C from panel b (row stride ldb). The full
 * 16 columns of the panel are always computed (packed panels are zero-padded); only n are stored. */
LK_BODY void block_generic(int mr, int n, int K, const float *a, long ars, long aks, const float *b, long ldb,
                           float alpha, float beta, float *c, long ldc)
{
    v8f acc[MR][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = SPLAT(0.0f);
    for (int k = 0; k < K; k++) {
        v8f b0, b1;
        LOAD(b0, b + (size_t)k * ldb);
        LOAD(b1, b + (size_t)k * ldb + 8);
        const float *ak = a + (size_t)k * aks;
        for (int i = 0; i < mr; i++) {
            v8f av = SPLAT(ak[i * ars]);
            acc[i][0] += av * b0;
            acc[i][1] += av * b1;
        }
    }
    for (int i = 0; i < mr; i++) {
        float out[NR];
        STORE(out, acc[i][0]);
        STORE(out + 8, acc[i][1]);
        float *ci = c + (size_t)i * ldc;
        for (int j = 0; j < n; j++) ci[j] = beta == 0.0f ? alpha * out[j] : alpha * out[j] + beta * ci[j];
    }
}

static void blocks_generic(const small_job *j, int i0, int i1, const float *b, long ldb, int j0, int n)
{
    for (int i = i0; i < i1; i += MR) {
        int mr = LDM_MIN(MR, i1 - i);
        block_generic(mr, n, j->K, j->A + (size_t)i * j->ars, j->ars, j->aks, b, ldb, j->alpha, j->beta,
                      j->C + (size_t)i * j->ldc + j0, j->ldc);
    }
}

/* ---------------------------------------------------------------- AVX2 + FMA kernel */

#ifdef LK_DISPATCH
#define LK_FMA __attribute__((target("avx2,fma")))

/* Rows 0..R-1 of a block (R a constant after inlining, so the accumulators stay in registers). */
#define FMA_ROW(r)                                                                                 \
    if (R > r) {                                                                                   \
        __m256 av = _mm256_broadcast_ss(ak + r * ars);                                             \
        c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);                                                \
        c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);                                                \
    }
#define STORE_ROW(r)                                                                               \
    if (R > r) block_store(c + (size_t)r * ldc, n, c##r##0, c##r##1, va, vb, beta0, mask0, mask1);

static inline __attribute__((always_inline, target("avx2,fma"))) void block_store(float *ci, int n, __m256 x0,
                                                                                 __m256 x1, __m256 va, __m256 vb,
                                                                                 int beta0, __m256i mask0,
                                                                                 __m256i mask1)
{
    x0 = _mm256_mul_ps(va, x0);
    x1 = _mm256_mul_ps(va, x1);
    if (n == NR) {
        if (!beta0) {
            x0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci), x0);
            x1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci + 8), x1);
        }
        _mm256_storeu_ps(ci, x0);
        _mm256_storeu_ps(ci + 8, x1);
    } else {
        if (!beta0) {
            x0 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(ci, mask0), x0);
            x1 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(ci + 8, mask1), x1);
        }
        _mm256_maskstore_ps(ci, mask0, x0);
        _mm256_maskstore_ps(ci + 8, mask1, x1);
    }
}

static inline __attribute__((always_inline, target("avx2,fma"))) void block_fma(const int R, int n, int K,
                                                                               const float *a, long ars, long aks,
                                                                               const float *b, long ldb, __m256 va,
                                                                               __m256 vb, float *c, long ldc)
{
    __m256 z = _mm256_setzero_ps();
    __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z, c40 = z, c41 = z, c50 = z,
           c51 = z;
    const float *ak = a;
    for (int k = 0; k < K; k++, ak += aks, b += ldb) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        FMA_ROW(0) FMA_ROW(1) FMA_ROW(2) FMA_ROW(3) FMA_ROW(4) FMA_ROW(5)
    }
    int beta0 = _mm256_movemask_ps(_mm256_cmp_ps(vb, _mm256_setzero_ps(), _CMP_EQ_OQ)) == 0xff;
    __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i mask0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
    __m256i mask1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8), lane);
    STORE_ROW(0) STORE_ROW(1) STORE_ROW(2) STORE_ROW(3) STORE_ROW(4) STORE_ROW(5)
}

LK_FMA static void blocks_fma(const small_job *j, int i0, int i1, const float *b, long ldb, int j0, int n)
{
    __m256 va = _mm256_set1_ps(j->alpha), vb = _mm256_set1_ps(j->beta);
    long ars = j->ars, aks = j->aks, ldc = j->ldc;
    int K = j->K;
    int i = i0;
    for (; i + MR <= i1; i += MR)
        block_fma(MR, n, K, j->A + (size_t)i * ars, ars, aks, b, ldb, va, vb, j->C + (size_t)i * ldc + j0, ldc);
    const float *a = j->A + (size_t)i * ars;
    float *c = j->C + (size_t)i * ldc + j0;
    switch (i1 - i) {
    case 5: block_fma(5, n, K, a, ars, aks, b, ldb, va, vb, c, ldc); break;
    case 4: block_fma(4, n, K, a, ars, aks, b, ldb, va, vb, c, ldc); break;
    case 3: block_fma(3, n, K, a, ars, aks, b, ldb, va, vb, c, ldc); break;
    case 2: block_fma(2, n, K, a, ars, aks, b, ldb, va, vb, c, ldc); break;
    case 1: block_fma(1, n, K, a, ars, aks, b, ldb, va, vb, c, ldc); break;
    default: break;
    }
}

/* 8 rows of 8 floats (src, row stride ld) transposed into dst (row stride dld). */
static inline __attribute__((always_inline, target("avx2,fma"))) void transpose8(const float *src, long ld,
                                                                                float *dst, long dld)
{
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ld), r2 = _mm256_loadu_ps(src + 2 * ld),
           r3 = _mm256_loadu_ps(src + 3 * ld), r4 = _mm256_loadu_ps(src + 4 * ld),
           r5 = _mm256_loadu_ps(src + 5 * ld), r6 = _mm256_loadu_ps(src + 6 * ld),
           r7 = _mm256_loadu_ps(src + 7 * ld);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
           t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee),
           u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee),
           u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee),
           u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
    _mm256_storeu_ps(dst + 0 * dld, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + 1 * dld, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * dld, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * dld, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * dld, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * dld, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * dld, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * dld, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* The first k8 (a multiple of 8) rows of a full 16-column panel of B^T (B [N,K], rows j0..j0+15)
 * in 8x8 transposes; the caller copies the rest. Values are moved, not computed: the packed panel
 * is the one the scalar copy makes. */
LK_FMA static void pack_t_fma(const float *B, long ldb, int j0, int k8, float *dst)
{
    for (int k = 0; k < k8; k += 8) {
        transpose8(B + (size_t)j0 * ldb + k, ldb, dst + (size_t)k * NR, NR);
        transpose8(B + (size_t)(j0 + 8) * ldb + k, ldb, dst + (size_t)k * NR + 8, NR);
    }
}

/* Rows [0, m8) x columns [0, k8) (multiples of 8) of copy_rows_t, in 8x8 transposes. */
LK_FMA static void copy_rows_t_fma(const float *A, long lda, int m8, int k8, int K, float *rows)
{
    for (int i = 0; i < m8; i += 8)
        for (int k = 0; k < k8; k += 8) transpose8(A + (size_t)k * lda + i, lda, rows + (size_t)i * K + k, K);
}

/* x W^T without copying W (see dot_job): R (1-3, a constant after inlining) rows of A against the
 * four rows b0..b3 of B, twelve 8-lane accumulators, 8 values of k per step. */
#define DOT_ROW(r)                                                                                 \
    if (R > r) {                                                                                   \
        __m256 x = tail_ ? _mm256_maskload_ps(a + (size_t)r * lda + k, tmask)                      \
                         : _mm256_loadu_ps(a + (size_t)r * lda + k);                               \
        s##r##0 = _mm256_fmadd_ps(x, w0, s##r##0);                                                 \
        s##r##1 = _mm256_fmadd_ps(x, w1, s##r##1);                                                 \
        s##r##2 = _mm256_fmadd_ps(x, w2, s##r##2);                                                 \
        s##r##3 = _mm256_fmadd_ps(x, w3, s##r##3);                                                 \
    }
#define DOT_STEP(tail)                                                                             \
    do {                                                                                           \
        const int tail_ = (tail);                                                                  \
        __m256 w0, w1, w2, w3;                                                                     \
        if (tail_) {                                                                               \
            w0 = _mm256_maskload_ps(b0 + k, tmask), w1 = _mm256_maskload_ps(b1 + k, tmask);       \
            w2 = _mm256_maskload_ps(b2 + k, tmask), w3 = _mm256_maskload_ps(b3 + k, tmask);       \
        } else {                                                                                   \
            w0 = _mm256_loadu_ps(b0 + k), w1 = _mm256_loadu_ps(b1 + k);                           \
            w2 = _mm256_loadu_ps(b2 + k), w3 = _mm256_loadu_ps(b3 + k);                           \
        }                                                                                          \
        DOT_ROW(0) DOT_ROW(1) DOT_ROW(2)                                                           \
    } while (0)
#define DOT_STORE_ROW(r)                                                                           \
    if (R > r) dot_store(c + (size_t)r * ldc, n, s##r##0, s##r##1, s##r##2, s##r##3, va, vb, beta0);

/* The four sums of x0..x3, each ((l0 + l2) + (l1 + l3)) + ((l4 + l6) + (l5 + l7)) over its lanes;
 * then alpha * sum (+ beta * c) into c[0..n-1], n <= 4 (a constant 4 after inlining, or not). */
static inline __attribute__((always_inline, target("avx2,fma"))) void dot_store(float *c, int n, __m256 x0,
                                                                               __m256 x1, __m256 x2, __m256 x3,
                                                                               __m128 va, __m128 vb, int beta0)
{
    /* u = [x0: l0+l2, x1: l0+l2, x0: l1+l3, x1: l1+l3 | the same for l4..l7], w for x2, x3 */
    __m256 u = _mm256_add_ps(_mm256_unpacklo_ps(x0, x1), _mm256_unpackhi_ps(x0, x1));
    __m256 w = _mm256_add_ps(_mm256_unpacklo_ps(x2, x3), _mm256_unpackhi_ps(x2, x3));
    __m256 h = _mm256_add_ps(_mm256_shuffle_ps(u, w, 0x44), _mm256_shuffle_ps(u, w, 0xee));
    __m128 v = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    v = _mm_mul_ps(va, v);
    if (n == 4) {
        if (!beta0) v = _mm_fmadd_ps(vb, _mm_loadu_ps(c), v);
        _mm_storeu_ps(c, v);
    } else {
        __m128i m = _mm_cmpgt_epi32(_mm_set1_epi32(n), _mm_setr_epi32(0, 1, 2, 3));
        if (!beta0) v = _mm_fmadd_ps(vb, _mm_maskload_ps(c, m), v);
        _mm_maskstore_ps(c, m, v);
    }
}

static inline __attribute__((always_inline, target("avx2,fma"))) void dot_block_fma(
    const int R, int n, int K, const float *a, long lda, const float *b0, const float *b1, const float *b2,
    const float *b3, __m128 va, __m128 vb, int beta0, float *c, long ldc)
{
    __m256 z = _mm256_setzero_ps();
    __m256 s00 = z, s01 = z, s02 = z, s03 = z, s10 = z, s11 = z, s12 = z, s13 = z, s20 = z, s21 = z, s22 = z,
           s23 = z;
    int k = 0;
    __m256i tmask = _mm256_cmpgt_epi32(_mm256_set1_epi32(K & 7), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (; k + 8 <= K; k += 8) DOT_STEP(0);
    if (k < K) DOT_STEP(1); /* the last K % 8 values, zeros in the other lanes */
    DOT_STORE_ROW(0) DOT_STORE_ROW(1) DOT_STORE_ROW(2)
}

/* Rows [i0, i1) of C, columns [0, n) of C, from rows b0..b3 of B (n a constant 4 after inlining,
 * or not). */
static inline __attribute__((always_inline, target("avx2,fma"))) void dot_rows_fma(
    int i0, int i1, int n, int K, const float *A, long lda, const float *b0, const float *b1, const float *b2,
    const float *b3, __m128 va, __m128 vb, int beta0, float *C, long ldc)
{
    int i = i0;
    for (; i + 3 <= i1; i += 3)
        dot_block_fma(3, n, K, A + (size_t)i * lda, lda, b0, b1, b2, b3, va, vb, beta0, C + (size_t)i * ldc, ldc);
    const float *a = A + (size_t)i * lda;
    float *c = C + (size_t)i * ldc;
    if (i1 - i == 2) dot_block_fma(2, n, K, a, lda, b0, b1, b2, b3, va, vb, beta0, c, ldc);
    else if (i1 - i == 1) dot_block_fma(1, n, K, a, lda, b0, b1, b2, b3, va, vb, beta0, c, ldc);
}
#endif

/* ---------------------------------------------------------------- x W^T without copying W */

/* op(B) transposed: C = alpha A B^T + beta C with B [N,K] (torch.nn.Linear's weight x W^T,
 * attention's Q K^T) and A [M,K] rows contiguous in K (a transposed A is copied into rows first).
 * Both operands are read in place, 8 values of k at a time: each element of C is eight FMA chains
 * (lane l adds a(i,k) b(j,k) for k = l, l + 8, ... in that order, the last K % 8 values zero-padded
 * to a full step), summed as ((l0 + l2) + (l1 + l3)) + ((l4 + l6) + (l5 + l7)), then alpha * sum
 * (+ beta * C). Blocks of 3 rows x 4 columns keep twelve accumulators; an element's operations do
 * not depend on its block or tile, so results are bitwise the same for any thread count. For
 * these products it replaces the copy of B^T into 16-column panels on every call (K x N floats:
 * the whole weight matrix of a projection), which for so few rows costs as much as the
 * multiply-adds when the weights come from the last-level cache or memory; with more rows the
 * copy is shared by more of them and the horizontal sums cost more than it (DOT_MAX_M). */
typedef struct dot_job {
    int M, N, K;
    float alpha, beta;
    const float *A; /* [M,K], row stride lda */
    long lda;
    const float *B; /* [N,K], row stride ldb */
    long ldb;
    float *C;
    long ldc;
    int tiles_n;
    int fma;
} dot_job;

#define DOT_NR 4 /* columns of a dot block (rows: 3) */
/* Products taken: at most this many rows of C, a rule on the shape. Measured on the machine of
 * docs/performance.md, weights cycled through 2 MB (from the last-level cache) and through 64 MB
 * (from memory), against the copied panels: 16 x 64 x 64 1.0-1.15x / 1.6x faster, 16 x 64 x 256
 * 1.1-1.25x / 1.3x, 16 x 512 x 64 1.0x / 1.4x; but 64 x 64 x 64 1.1-1.2x slower (equal from
 * memory), 64 x 512 x 64 1.1-1.2x slower: the eight-lane sums per element cost more than a copy
 * that 64 rows share. */
#define DOT_MAX_M 16

/* Portable twin: one row against four rows of B (fewer at the right edge), 8-lane vectors with
 * separate multiplies and adds, the same lanes and the same order of the final sum. */
static void dot_row_generic(int n, int K, const float *a, const float *const *b, float alpha, float beta, float *c)
{
    v8f s[DOT_NR];
    for (int t = 0; t < DOT_NR; t++) s[t] = SPLAT(0.0f);
    int k = 0;
    for (; k + LANES <= K; k += LANES) {
        v8f x;
        LOAD(x, a + k);
        for (int t = 0; t < n; t++) {
            v8f w;
            LOAD(w, b[t] + k);
            s[t] += x * w;
        }
    }
    if (k < K) { /* the last K % 8 values, zeros in the other lanes */
        float xa[LANES] = {0}, wb[LANES] = {0};
        memcpy(xa, a + k, sizeof(float) * (size_t)(K - k));
        v8f x;
        LOAD(x, xa);
        for (int t = 0; t < n; t++) {
            memcpy(wb, b[t] + k, sizeof(float) * (size_t)(K - k));
            v8f w;
            LOAD(w, wb);
            s[t] += x * w;
        }
    }
    for (int t = 0; t < n; t++) {
        float l[LANES];
        STORE(l, s[t]);
        float sum = ((l[0] + l[2]) + (l[1] + l[3])) + ((l[4] + l[6]) + (l[5] + l[7]));
        c[t] = beta == 0.0f ? alpha * sum : alpha * sum + beta * c[t];
    }
}

static void dot_blocks_generic(const dot_job *j, int i0, int i1, int j0, int j1)
{
    for (int jj = j0; jj < j1; jj += DOT_NR) {
        int n = LDM_MIN(DOT_NR, j1 - jj);
        const float *b[DOT_NR];
        for (int t = 0; t < n; t++) b[t] = j->B + (size_t)(jj + t) * j->ldb;
        for (int i = i0; i < i1; i++)
            dot_row_generic(n, j->K, j->A + (size_t)i * j->lda, b, j->alpha, j->beta, j->C + (size_t)i * j->ldc + jj);
    }
}

#ifdef LK_DISPATCH
LK_FMA static void dot_blocks_fma(const dot_job *j, int i0, int i1, int j0, int j1)
{
    int K = j->K, beta0 = j->beta == 0.0f;
    long lda = j->lda, ldb = j->ldb, ldc = j->ldc;
    __m128 va = _mm_set1_ps(j->alpha), vb = _mm_set1_ps(j->beta);
    for (int jj = j0; jj < j1; jj += DOT_NR) {
        int n = LDM_MIN(DOT_NR, j1 - jj);
        /* columns past the right edge re-read the first one; they are not stored */
        const float *b0 = j->B + (size_t)jj * ldb;
        const float *b1 = n > 1 ? b0 + ldb : b0, *b2 = n > 2 ? b0 + 2 * ldb : b0, *b3 = n > 3 ? b0 + 3 * ldb : b0;
        if (n == DOT_NR)
            dot_rows_fma(i0, i1, DOT_NR, K, j->A, lda, b0, b1, b2, b3, va, vb, beta0, j->C + jj, ldc);
        else
            dot_rows_fma(i0, i1, n, K, j->A, lda, b0, b1, b2, b3, va, vb, beta0, j->C + jj, ldc);
    }
}
#endif

static void dot_tile(void *arg, int task)
{
    const dot_job *j = arg;
    int i0 = (task / j->tiles_n) * TILE_M, j0 = (task % j->tiles_n) * TILE_N;
    int i1 = LDM_MIN(j->M, i0 + TILE_M), j1 = LDM_MIN(j->N, j0 + TILE_N);
#ifdef LK_DISPATCH
    if (j->fma) {
        dot_blocks_fma(j, i0, i1, j0, j1);
        return;
    }
#endif
    dot_blocks_generic(j, i0, i1, j0, j1);
}

/* ---------------------------------------------------------------- tiles */

static void small_tile(void *arg, int task)
{
    const small_job *j = arg;
    int i0 = (task / j->tiles_n) * TILE_M, jt = (task % j->tiles_n) * TILE_N;
    int i1 = LDM_MIN(j->M, i0 + TILE_M), jt1 = LDM_MIN(j->N, jt + TILE_N);
    for (int j0 = jt; j0 < jt1; j0 += NR) {
        int p = j0 / NR, n = LDM_MIN(NR, jt1 - j0);
        const float *b;
        long ldb;
        if (j->packed && p >= j->pack_from) {
            b = j->packed + (size_t)(p - j->pack_from) * NR * j->K;
            ldb = NR;
        } else {
            b = j->B + j0;
            ldb = j->ldb;
        }
#ifdef LK_DISPATCH
        if (j->fma) {
            blocks_fma(j, i0, i1, b, ldb, j0, n);
            continue;
        }
#endif
        blocks_generic(j, i0, i1, b, ldb, j0, n);
    }
}

/* Copies panels [p0, panels) of op(B) into K x 16 blocks, zero-padded past column N. */
static void pack_panels(int use_fma, int transB, const float *B, long ldb, int N, int K, int p0, int panels,
                        float *dst)
{
    for (int p = p0; p < panels; p++, dst += (size_t)NR * K) {
        int j0 = p * NR, n = LDM_MIN(NR, N - j0);
        if (transB) {
            int k = 0;
#ifdef LK_DISPATCH
            if (use_fma && n == NR) {
                k = K & ~7;
                pack_t_fma(B, ldb, j0, k, dst);
            }
#endif
            for (; k < K; k++) {
                float *d = dst + (size_t)k * NR;
                for (int jj = 0; jj < n; jj++) d[jj] = B[(size_t)(j0 + jj) * ldb + k];
                for (int jj = n; jj < NR; jj++) d[jj] = 0.0f;
            }
        } else {
            for (int k = 0; k < K; k++) {
                float *d = dst + (size_t)k * NR;
                memcpy(d, B + (size_t)k * ldb + j0, sizeof(float) * (size_t)n);
                for (int jj = n; jj < NR; jj++) d[jj] = 0.0f;
            }
        }
    }
}

/* A transposed (stored K x M, row stride lda) copied into M rows of K floats. */
static void copy_rows_t(int use_fma, const float *A, long lda, int M, int K, float *rows)
{
    int m8 = 0, k8 = 0;
#ifdef LK_DISPATCH
    if (use_fma) {
        m8 = M & ~7, k8 = K & ~7;
        copy_rows_t_fma(A, lda, m8, k8, K, rows);
    }
#endif
    for (int i = 0; i < M; i++)
        for (int k = i < m8 ? k8 : 0; k < K; k++) rows[(size_t)i * K + k] = A[(size_t)k * lda + i];
}

static void gemm_small_run(const lctx *c, int use_fma, int transA, int transB, int M, int N, int K, float alpha,
                           const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (transB && M <= DOT_MAX_M) {
        /* x W^T with few rows: dot products along K (dot_job), nothing of B copied; a transposed A
         * (at most 16 x K floats) is copied into rows first */
        float stack_rows[2048];
        float *rows = NULL;
        if (transA) {
            size_t bytes = sizeof(float) * (size_t)M * K;
            rows = bytes <= sizeof stack_rows ? stack_rows : malloc(bytes);
            if (!rows) {
                lk_gemm_blas(c, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                return;
            }
            copy_rows_t(use_fma, A, lda, M, K, rows);
        }
        dot_job j = {M, N, K, alpha, beta, rows ? rows : A, rows ? K : lda, B, ldb, C, ldc,
                     (N + TILE_N - 1) / TILE_N, use_fma};
        int tiles = j.tiles_n * ((M + TILE_M - 1) / TILE_M);
        lpool_run(lk_pool_for_flops(c, 2.0 * M * N * K), tiles, dot_tile, &j);
        if (rows != stack_rows) free(rows);
        return;
    }
    int panels = (N + NR - 1) / NR;
    int pack_from = transB ? 0 : N / NR; /* plain B: only a partial last panel is copied */
    size_t pack_bytes = sizeof(float) * (size_t)(panels - pack_from) * NR * K;
    float stack_buf[4096];
    float *packed = NULL;
    if (pack_bytes) {
        packed = pack_bytes <= sizeof stack_buf ? stack_buf : malloc(pack_bytes);
        if (!packed) { /* no memory for the copy: BLAS needs none of ours */
            lk_gemm_blas(c, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
            return;
        }
        pack_panels(use_fma, transB, B, ldb, N, K, pack_from, panels, packed);
    }
    small_job j = {M, N, K, alpha, beta, A, transA ? 1 : lda, transA ? lda : 1, B, ldb, packed, pack_from, C, ldc,
                   (N + TILE_N - 1) / TILE_N, use_fma};
    int tiles = j.tiles_n * ((M + TILE_M - 1) / TILE_M);
    lpool_run(lk_pool_for_flops(c, 2.0 * M * N * K), tiles, small_tile, &j);
    if (packed != stack_buf) free(packed);
}

static int have_fma(void)
{
#ifdef LK_DISPATCH
    return lk_cpu_has_avx2_fma();
#else
    return 0;
#endif
}

void lk_gemm_small(const lctx *c, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc)
{
    gemm_small_run(c, have_fma(), transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int lk_gemm_small_impl(const lctx *c, int impl, int transA, int transB, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (impl && !have_fma()) return 0;
    if (M <= 0 || N <= 0 || K <= 0) return 0;
    gemm_small_run(c, impl, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return 1;
}

/* ---------------------------------------------------------------- a batch of plain products */

typedef struct batch_job {
    small_job j[LK_GEMM_BATCH_MAX];
    int per; /* tiles of each product */
} batch_job;

static void batch_tile(void *arg, int task)
{
    const batch_job *b = arg;
    small_tile((void *)&b->j[task / b->per], task % b->per);
}

void lk_gemm_small_batched(const lctx *c, int count, int M, int N, int K, const float *A, size_t sa, int lda,
                           const float *B, size_t sb, float *C, size_t sc, int ldc)
{
    if (count <= 0 || M <= 0 || N <= 0 || K <= 0 || N % NR || count > LK_GEMM_BATCH_MAX) return;
    batch_job bj;
    bj.per = ((N + TILE_N - 1) / TILE_N) * ((M + TILE_M - 1) / TILE_M);
    for (int i = 0; i < count; i++) /* B_i as the panels lk_gemm_small copies op(B) into */
        bj.j[i] = (small_job){M, N, K, 1.0f, 0.0f, A + i * sa, lda, 1, B + i * sb, NR, B + i * sb, 0, C + i * sc, ldc,
                              (N + TILE_N - 1) / TILE_N, have_fma()};
    lpool_run(lk_pool_for_flops(c, 2.0 * count * M * N * K), count * bj.per, batch_tile, &bj);
}

/* ---------------------------------------------------------------- x W^T from cached panels */

void lk_gemm_small_pack_bt(const float *W, int N, int K, float *dst)
{
    pack_panels(have_fma(), 1, W, K, N, K, 0, (N + NR - 1) / NR, dst);
}

void lk_gemm_small_packed(const lctx *c, int M, int N, int K, const float *A, int lda, const float *Bp, float beta,
                          float *C, int ldc)
{
    if (M <= 0 || N <= 0 || K <= 0) return;
    small_job j = {M, N, K, 1.0f, beta, A, lda, 1, Bp, NR, Bp, 0, C, ldc, (N + TILE_N - 1) / TILE_N, have_fma()};
    int tiles = j.tiles_n * ((M + TILE_M - 1) / TILE_M);
    lpool_run(lk_pool_for_flops(c, 2.0 * M * N * K), tiles, small_tile, &j);
}

/* ---------------------------------------------------------------- convolution without im2col */

/* A stride-1 convolution is the product W[OC, IC*KH*KW] x col[IC*KH*KW, OH*OW], and when the
 * output width is a multiple of 8, each 8 consecutive output pixels of one output row read, for
 * tap (ic, kh, kw), 8 consecutive floats of the zero-padded input plane ic, row oh + kh, from
 * column ow + kw. So the register blocks above can read the im2col matrix straight from a padded
 * copy of the input (koff[k] = the offset of tap k) instead of a built one: for a 64-channel 8x8
 * image the im2col matrix is 9 times the input and building it cost half as much as the product.
 * Other output widths (the 4x4 level of a small UNet) cannot be read 8 pixels at a time: their
 * im2col columns are gathered into K x 16 panels first (panel mode; 16 output pixels per panel,
 * zero past the last), which the same blocks read with tap k at offset 16 k. That copy is K x P
 * floats, next to OC x P x K multiply-adds; computing the padded width and dropping the extra
 * columns instead (the earlier mode) wasted half the work at 4x4.
 * Each output is bias + the taps summed in (ic, kh, kw) order, whatever the split or mode. */

typedef struct conv_job {
    const float *w;    /* [OC, K] */
    const float *bias; /* [OC] or NULL */
    const float *xp;   /* padded input [B, IC, Hp, Wp], or in panel mode the panels [B, np, K, 16] */
    const int *koff;   /* [K] */
    float *y;          /* [B, OC, P] */
    int panels;        /* panel mode */
    int OC, K, OW, P, Wp;
    size_t img_in; /* floats of one padded image (of one image's panels) */
    int tiles_m, tiles_p;
} conv_job;

#ifdef LK_DISPATCH
static inline __attribute__((always_inline, target("avx2,fma"))) void conv_store(float *yi, int n, __m256 x0,
                                                                                __m256 x1, float bias,
                                                                                __m256i mask0, __m256i mask1)
{
    __m256 vb = _mm256_set1_ps(bias);
    x0 = _mm256_add_ps(x0, vb);
    x1 = _mm256_add_ps(x1, vb);
    if (n == NR) {
        _mm256_storeu_ps(yi, x0);
        _mm256_storeu_ps(yi + 8, x1);
    } else {
        _mm256_maskstore_ps(yi, mask0, x0);
        _mm256_maskstore_ps(yi + 8, mask1, x1);
    }
}

#define CONV_STORE_ROW(r)                                                                          \
    if (R > r) conv_store(y + (size_t)r * ldy, n, c##r##0, c##r##1, bias ? bias[r] : 0.0f, mask0, mask1);

static inline __attribute__((always_inline, target("avx2,fma"))) void conv_block_fma(
    const int R, int n, int K, const float *w, long ars, const int *koff, const float *p0, const float *p1,
    const float *bias, float *y, long ldy)
{
    __m256 z = _mm256_setzero_ps();
    __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z, c40 = z, c41 = z, c50 = z,
           c51 = z;
    const float *ak = w;
    for (int k = 0; k < K; k++, ak++) {
        __m256 b0 = _mm256_loadu_ps(p0 + koff[k]), b1 = _mm256_loadu_ps(p1 + koff[k]);
        FMA_ROW(0) FMA_ROW(1) FMA_ROW(2) FMA_ROW(3) FMA_ROW(4) FMA_ROW(5)
    }
    __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i mask0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
    __m256i mask1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8), lane);
    CONV_STORE_ROW(0) CONV_STORE_ROW(1) CONV_STORE_ROW(2) CONV_STORE_ROW(3) CONV_STORE_ROW(4) CONV_STORE_ROW(5)
}

LK_FMA static void conv_tile(void *arg, int task)
{
    const conv_job *j = arg;
    int per_img = j->tiles_m * j->tiles_p, b = task / per_img, t = task % per_img;
    int i0 = (t / j->tiles_p) * TILE_M, q0 = (t % j->tiles_p) * TILE_N;
    int i1 = LDM_MIN(j->OC, i0 + TILE_M), q1 = LDM_MIN(j->P, q0 + TILE_N);
    const float *xp = j->xp + (size_t)b * j->img_in;
    float *y = j->y + (size_t)b * j->OC * j->P;
    long ars = j->K;
    for (int q = q0; q < q1; q += NR) {
        int n = LDM_MIN(NR, q1 - q);
        const float *p0, *p1;
        if (j->panels) { /* tap k of pixel q + l at 16 k + l of the panel */
            p0 = xp + (size_t)(q / NR) * NR * j->K;
            p1 = p0 + 8;
        } else { /* each half of the panel is 8 pixels of one output row (OW is a multiple of 8) */
            p0 = xp + (size_t)(q / j->OW) * j->Wp + q % j->OW;
            int qh = n > 8 ? q + 8 : q;
            p1 = xp + (size_t)(qh / j->OW) * j->Wp + qh % j->OW;
        }
        int i = i0;
        for (; i + MR <= i1; i += MR)
            conv_block_fma(MR, n, j->K, j->w + (size_t)i * ars, ars, j->koff, p0, p1, j->bias ? j->bias + i : NULL,
                           y + (size_t)i * j->P + q, j->P);
        const float *w = j->w + (size_t)i * ars, *bias = j->bias ? j->bias + i : NULL;
        float *yi = y + (size_t)i * j->P + q;
        switch (i1 - i) {
        case 5: conv_block_fma(5, n, j->K, w, ars, j->koff, p0, p1, bias, yi, j->P); break;
        case 4: conv_block_fma(4, n, j->K, w, ars, j->koff, p0, p1, bias, yi, j->P); break;
        case 3: conv_block_fma(3, n, j->K, w, ars, j->koff, p0, p1, bias, yi, j->P); break;
        case 2: conv_block_fma(2, n, j->K, w, ars, j->koff, p0, p1, bias, yi, j->P); break;
        case 1: conv_block_fma(1, n, j->K, w, ars, j->koff, p0, p1, bias, yi, j->P); break;
        default: break;
        }
    }
}
#endif

int lk_conv_small_applies(const lk_conv2d_shape *s)
{
    int OH = lk_conv2d_out_h(s), OW = lk_conv2d_out_w(s);
    if (!have_fma() || s->stride != 1 || s->batch <= 0 || OH <= 0 || OW <= 0) return 0;
    if (s->pad_top < 0 || s->pad_left < 0 || s->pad_bottom < 0 || s->pad_right < 0) return 0;
    long K = (long)s->in_ch * s->k_h * s->k_w;
    if (K <= 0 || K > SMALL_MAX_K || s->out_ch <= 0) return 0;
    return (double)s->out_ch * s->batch * OH * OW * K <= SMALL_MAX_WORK;
}

/* Panel mode: the im2col columns of one padded image (xp), pixels in panels of 16, tap k of pixel
 * 16 p + l at dst[(p K + k) 16 + l]; lanes past the last pixel are zero. Only the dispatched
 * (x86-64) small convolution uses it. */
#ifdef LK_DISPATCH
static void gather_panels(const float *xp, const int *koff, int K, int OH, int OW, int Wp, float *dst)
{
    int P = OH * OW, np = (P + NR - 1) / NR;
    if (P % NR)
        for (int k = 0; k < K; k++) memset(dst + ((size_t)(np - 1) * K + k) * NR, 0, sizeof(float) * NR);
    for (int k = 0; k < K; k++) {
        const float *src = xp + koff[k];
        for (int oh = 0, q = 0; oh < OH; oh++) {
            const float *row = src + (size_t)oh * Wp;
            if (OW == 4 && q % 4 == 0) { /* the 4x4 level: one 16-byte copy per row */
                memcpy(dst + ((size_t)(q / NR) * K + k) * NR + q % NR, row, 4 * sizeof(float));
                q += 4;
                continue;
            }
            for (int ow = 0; ow < OW; ow++, q++) dst[((size_t)(q / NR) * K + k) * NR + q % NR] = row[ow];
        }
    }
}
#endif

ldm_status lk_conv2d_small(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                           float *y)
{
    if (!lk_conv_small_applies(s))
        return ldm_fail(LDM_ERR_INTERNAL, "conv2d: small path for a shape it does not take");
#ifdef LK_DISPATCH
    int OH = lk_conv2d_out_h(s), OW = lk_conv2d_out_w(s), K = s->in_ch * s->k_h * s->k_w;
    int Hp = s->in_h + s->pad_top + s->pad_bottom, Wp = s->in_w + s->pad_left + s->pad_right;
    /* the last load of a tap (kh, kw) ends at column OW - 1 + kw <= Wp - 1 of padded row
     * OH - 1 + kh <= Hp - 1: every read stays inside the image's padded planes */
    int panel_mode = OW % 8 != 0, P = OH * OW, np = (P + NR - 1) / NR;
    size_t img_in = (size_t)s->in_ch * Hp * Wp, in_floats = (size_t)s->batch * img_in;
    size_t img_pan = panel_mode ? (size_t)np * NR * K : 0, pan_floats = (size_t)s->batch * img_pan;
    size_t nw = w.f32 ? 0 : (size_t)s->out_ch * K;
    size_t bytes = sizeof(float) * (in_floats + pan_floats + nw) + sizeof(int) * (size_t)K * (panel_mode ? 2 : 1);
    float *buf = lk_scratch_get(bytes);
    if (!buf) return ldm_fail_context(ldm_alloc_failure_status(), "conv2d padded input: ");
    float *xp = buf, *pan = buf + in_floats, *wf = nw ? buf + in_floats + pan_floats : NULL;
    int *koff = (int *)(void *)(buf + in_floats + pan_floats + nw);
    memset(xp, 0, sizeof(float) * in_floats);
    for (int b = 0; b < s->batch; b++)
        for (int ic = 0; ic < s->in_ch; ic++) {
            const float *src = x + ((size_t)b * s->in_ch + ic) * s->in_h * s->in_w;
            float *dst = xp + (size_t)b * img_in + (size_t)ic * Hp * Wp + (size_t)s->pad_top * Wp + s->pad_left;
            for (int h = 0; h < s->in_h; h++)
                memcpy(dst + (size_t)h * Wp, src + (size_t)h * s->in_w, sizeof(float) * (size_t)s->in_w);
        }
    for (int ic = 0, k = 0; ic < s->in_ch; ic++)
        for (int kh = 0; kh < s->k_h; kh++)
            for (int kw = 0; kw < s->k_w; kw++) koff[k++] = ic * Hp * Wp + kh * Wp + kw;
    const int *taps = koff;
    if (panel_mode) {
        for (int b = 0; b < s->batch; b++)
            gather_panels(xp + (size_t)b * img_in, koff, K, OH, OW, Wp, pan + (size_t)b * img_pan);
        int *kpan = koff + K;
        for (int k = 0; k < K; k++) kpan[k] = k * NR;
        taps = kpan;
    }
    if (wf) lk_wt_read(w, 0, nw, wf);
    conv_job j = {wf ? wf : w.f32, bias, panel_mode ? pan : xp, taps, y, panel_mode, s->out_ch, K, OW, P, Wp,
                  panel_mode ? img_pan : img_in, (s->out_ch + TILE_M - 1) / TILE_M, (P + TILE_N - 1) / TILE_N};
    double flops = 2.0 * s->batch * s->out_ch * P * K;
    lpool_run(lk_pool_for_flops(c, flops), s->batch * j.tiles_m * j.tiles_p, conv_tile, &j);
    lk_scratch_put(buf, bytes);
    return LDM_OK;
#else
    return ldm_fail(LDM_ERR_INTERNAL, "conv2d: small path unavailable");
#endif
}
