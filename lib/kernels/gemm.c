/* gemm.c - matrix products on top of BLAS sgemm, parallelised over our own thread pool.
 *
 * OpenBLAS would happily start its own threads; we pin it to one thread (once, process-wide) and
 * stop the idle threads it started at load, so that the only threads are the model's pool and the
 * machine is never oversubscribed. A large
 * product is cut into a grid of C tiles (row blocks x column blocks) and each tile is one
 * single-threaded sgemm call run as a pool task. The grid depends only on the matrix shape, never
 * on the number of threads, and each tile sums over the whole K in one call, so every element of
 * C is computed by exactly the same instruction sequence whatever the thread count: results are
 * bitwise independent of it. Small products go to BLAS in one call (a pool round trip costs more
 * than they do). Thin products go to gemm_small.c, tall thin ones with a long K (the convolutions
 * of a UNet's 8x8 and 4x4 levels) to gemm_skinny.c, both by rules on the shape (gemm_run). */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#ifdef LDM_BLAS_BLIS
void bli_thread_set_num_threads(int64_t n_threads); /* blis.h: dim_t is a 64-bit integer */
#else
void openblas_set_num_threads(int num_threads);
/* OpenBLAS (pthreads build) starts its worker threads when it is loaded; once told to use one
 * thread it never hands them work, but each one first spins on sched_yield() for its idle timeout
 * (about 0.1 s), then sleeps for good. This internal but exported entry point (the one its fork
 * handler uses) stops them at once; OpenBLAS starts them again if a caller ever raises its thread
 * count. Weak: absent from other builds, where there is nothing to stop. */
int blas_thread_shutdown_(void) __attribute__((weak));
#endif

/* Products with fewer multiply-adds than this run as one call on the calling thread. */
#define GEMM_SPLIT_WORK (1 << 20)
/* Each tile should carry at least this much work, and there are at most GEMM_MAX_TILES tiles:
 * enough to balance a few threads, few enough that re-packing A or B per tile stays cheap. */
#define GEMM_TILE_WORK (1 << 19)
#define GEMM_MAX_TILES 32
#define GEMM_MIN_EDGE 64 /* never cut a tile edge shorter than this */

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void blas_single_thread(void)
{
#ifdef LDM_BLAS_BLIS
    bli_thread_set_num_threads(1); /* a threaded BLIS would otherwise follow OMP/BLIS_NUM_THREADS */
#else
    openblas_set_num_threads(1);
    if (blas_thread_shutdown_) blas_thread_shutdown_();
#endif
}

void lk_blas_init(void) { pthread_once(&blas_once, blas_single_thread); }

static void sgemm_call(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K, alpha,
                A, lda, B, ldb, beta, C, ldc);
}

/* C = beta * C for an empty inner dimension (BLAS would reject lda = 0 and print). */
static void scale_c(int M, int N, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
}

typedef struct gemm_job {
    int transA, transB, M, N, K;
    float alpha, beta;
    const float *A, *B;
    float *C;
    int lda, ldb, ldc;
    int mb, nb;     /* tile edge */
    int tiles_n;    /* column blocks */
} gemm_job;

static void gemm_tile(void *arg, int task)
{
    const gemm_job *j = arg;
    int i0 = (task / j->tiles_n) * j->mb, j0 = (task % j->tiles_n) * j->nb;
    int m = LDM_MIN(j->mb, j->M - i0), n = LDM_MIN(j->nb, j->N - j0);
    const float *a = j->transA ? j->A + i0 : j->A + (size_t)i0 * j->lda;
    const float *b = j->transB ? j->B + (size_t)j0 * j->ldb : j->B + j0;
    sgemm_call(j->transA, j->transB, m, n, j->K, j->alpha, a, j->lda, b, j->ldb, j->beta,
               j->C + (size_t)i0 * j->ldc + j0, j->ldc);
}

static int ceil_div(long a, long b) { return (int)((a + b - 1) / b); }
static int round_up16(int v) { return (v + 15) & ~15; }

/* Chooses the tile grid from the shape alone (see the file comment). A tile of mb x nb re-packs
 * its K x mb panel of A and K x nb panel of B for mb * nb * K multiply-adds, so packing costs
 * 1/mb + 1/nb per multiply-add: tiles are cut as square as the tile count allows. */
static void plan_tiles(gemm_job *j)
{
    double work = (double)j->M * j->N * j->K;
    int want = (int)LDM_MIN((double)GEMM_MAX_TILES, work / GEMM_TILE_WORK);
    if (want < 1) want = 1;
    double edge = sqrt((double)j->M * j->N / want);
    int tm = (int)LDM_MIN((double)ceil_div(j->M, GEMM_MIN_EDGE), LDM_MAX(1.0, floor(j->M / edge + 0.5)));
    int tn = LDM_MAX(1, LDM_MIN(want / tm, ceil_div(j->N, GEMM_MIN_EDGE)));
    j->nb = round_up16(ceil_div(j->N, tn));
    j->mb = round_up16(ceil_div(j->M, tm));
    j->tiles_n = ceil_div(j->N, j->nb);
}

void lk_gemm_blas(const lctx *c, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc)
{
    lk_blas_init();
    if ((double)M * N * K < GEMM_SPLIT_WORK) {
        sgemm_call(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    gemm_job j = {transA, transB, M, N, K, alpha, beta, A, B, C, lda, ldb, ldc, 0, 0, 0};
    plan_tiles(&j);
    int tiles = j.tiles_n * ceil_div(M, j.mb);
    lpool_run(lk_pool_for_flops(c, 2.0 * M * N * K), tiles, gemm_tile, &j);
}

static void gemm_run(const lctx *c, int transA, int transB, int M, int N, int K, float alpha, const float *A,
                     int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    if (lk_gemm_small_applies(M, N, K))
        lk_gemm_small(c, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else if (lk_gemm_skinny_applies(transA, transB, M, N, K, beta))
        lk_gemm_skinny(c, M, N, K, alpha, A, lda, B, ldb, C, ldc);
    else if (lk_gemm_skinny_bt_applies(transA, transB, M, N, K))
        lk_gemm_skinny_bt(c, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
        lk_gemm_blas(c, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void lk_gemm(const lctx *c, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc)
{
    lk_stat_mark m = lk_stat_begin();
    gemm_run(c, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    lk_stat_end(m, LK_OP_GEMM, 2.0 * M * N * (K > 0 ? K : 0));
}

void lk_linear(const lctx *c, const float *x, int rows, int in, const float *W, const float *b, int out, float *y)
{
    if (rows <= 0 || out <= 0) return;
    lk_stat_mark m = lk_stat_begin();
    float beta = 0.0f;
    if (b) {
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < out; o++) y[(size_t)r * out + o] = b[o];
        beta = 1.0f;
    }
    lk_gemm(c, 0, 1, rows, out, in, 1.0f, x, in, W, in, beta, y, out);
    lk_stat_end(m, LK_OP_GEMM, 2.0 * rows * out * in);
}

/* The panels of W^T in wc, made when missing (NULL: not cacheable, nothing made). Filled before
 * the entry exists, so an entry is never left half made. */
static ldm_status cached_panels(lk_wcache *wc, lk_wt W, int in, int out, const float **P)
{
    const void *key = W.f32 ? (const void *)W.f32 : W.f16;
    *P = lk_wcache_find(wc, key, LK_WC_PANELS_T, in, out);
    if (*P) return LDM_OK;
    size_t bytes = sizeof(float) * (size_t)((out + 15) & ~15) * in, wbytes = sizeof(float) * (size_t)out * in;
    if (bytes > LK_WCACHE_MAX_ENTRY || lk_wcache_bytes(wc) + bytes > LK_WCACHE_BUDGET) return LDM_OK;
    float *wide = NULL;
    if (!W.f32) { /* float16 weights widened once */
        wide = lk_scratch_get(wbytes);
        if (!wide) return ldm_fail_context(ldm_alloc_failure_status(), "linear weight panels: ");
        lk_wt_read(W, 0, (size_t)out * in, wide);
    }
    float *fresh;
    ldm_status st = lk_wcache_add(wc, key, LK_WC_PANELS_T, in, out, bytes, &fresh);
    if (st == LDM_OK && fresh) lk_gemm_small_pack_bt(wide ? wide : W.f32, out, in, fresh);
    if (wide) lk_scratch_put(wide, wbytes);
    *P = fresh;
    return st;
}

ldm_status lk_linear_wt_cached(const lctx *c, const float *x, int rows, int in, lk_wt W, const float *b, int out,
                               float *y, lk_wcache *wc)
{
    if (!wc || rows < 2 || in <= 0 || out <= 0 || !lk_gemm_small_applies(rows, out, in))
        return lk_linear_wt(c, x, rows, in, W, b, out, y);
    const float *P;
    LDM_TRY(cached_panels(wc, W, in, out, &P));
    if (!P) return lk_linear_wt(c, x, rows, in, W, b, out, y);
    lk_stat_mark m = lk_stat_begin();
    float beta = 0.0f;
    if (b) {
        for (int r = 0; r < rows; r++) memcpy(y + (size_t)r * out, b, sizeof(float) * (size_t)out);
        beta = 1.0f;
    }
    lk_gemm_small_packed(c, rows, out, in, x, in, P, beta, y, out);
    lk_stat_end(m, LK_OP_GEMM, 2.0 * rows * out * in);
    lk_wt_done(W, (size_t)out * (size_t)in);
    return LDM_OK;
}
