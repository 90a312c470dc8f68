/* test_kernels.c - the thread pool and every lk_* kernel against its naive reference (lk_ref_*)
 * or hand-checked values. Fast paths are run with no pool, a 2-thread and a 3-thread pool; the
 * results must match the reference to float rounding and each other bit for bit. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ctx.h"
#include "io/weights.h"
#include "kernels/kernels.h"
#include "support/ck_pools.h"
#include "support/ck_rand.h"
#include "support/ck_run.h"

/* ---- helpers */


static float *rand_buf(size_t n, float scale)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}

static float *copy_buf(const float *x, size_t n)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    ck_assert_ptr_nonnull(p);
    memcpy(p, x, sizeof(float) * n);
    return p;
}

/* max |got - ref| <= tol * max(1, max |ref|) */
static void expect_close(const float *got, const float *ref, size_t n, double tol, const char *what)
{
    size_t worst;
    double mx, err = ck_max_error(got, ref, n, &worst, &mx);
    mx = fmax(mx, 1.0);
    ck_assert_msg(err <= tol * mx, "%s: max error %.3g at %zu (got %.9g, ref %.9g), allowed %.3g", what, err, worst,
                  n ? got[worst] : 0.0, n ? ref[worst] : 0.0, tol * mx);
}

static void expect_same(const float *a, const float *b, size_t n, const char *what)
{
    ck_assert_msg(memcmp(a, b, sizeof(float) * n) == 0, "%s: results differ between thread counts", what);
}


/* ---- thread pool */

typedef struct count_job {
    atomic_int *hits;
    lpool *pool;
    atomic_int nested;
} count_job;

static void count_task(void *arg, int i)
{
    count_job *j = arg;
    atomic_fetch_add(&j->hits[i], 1);
}

START_TEST(pool_runs_every_task_once)
{
    static const int sizes[] = {0, 1, 2, 3, 7, 64, 1000};
    atomic_int hits[1000];
    for (int c = 0; c < N_CTX; c++)
        for (size_t s = 0; s < LDM_ARRAY_LEN(sizes); s++)
            for (int rep = 0; rep < 50; rep++) {
                for (int i = 0; i < 1000; i++) atomic_init(&hits[i], 0);
                count_job j = {.hits = hits};
                lpool_run(ctxs[c].pool, sizes[s], count_task, &j);
                for (int i = 0; i < 1000; i++) ck_assert_int_eq(atomic_load(&hits[i]), i < sizes[s] ? 1 : 0);
            }
    ck_assert_int_eq(lpool_threads(NULL), 1);
    ck_assert_int_eq(lpool_threads(ctxs[1].pool), 2);
    ck_assert_int_eq(lctx_threads(&ctxs[2]), 3);
}
END_TEST

static void nested_task(void *arg, int i)
{
    count_job *j = arg;
    atomic_int inner[4];
    for (int k = 0; k < 4; k++) atomic_init(&inner[k], 0);
    count_job ij = {.hits = inner};
    lpool_run(j->pool, 4, count_task, &ij); /* must run serially, not deadlock */
    int ok = 1;
    for (int k = 0; k < 4; k++) ok &= atomic_load(&inner[k]) == 1;
    if (ok) atomic_fetch_add(&j->nested, 1);
    atomic_fetch_add(&j->hits[i], 1);
}

START_TEST(pool_nested_run_is_serial)
{
    atomic_int hits[16];
    for (int i = 0; i < 16; i++) atomic_init(&hits[i], 0);
    count_job j = {.hits = hits, .pool = ctxs[1].pool};
    atomic_init(&j.nested, 0);
    lpool_run(ctxs[1].pool, 16, nested_task, &j);
    ck_assert_int_eq(atomic_load(&j.nested), 16);
}
END_TEST

typedef struct caller_arg {
    lpool *pool;
    int ok;
} caller_arg;

static void *concurrent_caller(void *p)
{
    caller_arg *c = p;
    atomic_int hits[37];
    c->ok = 1;
    for (int rep = 0; rep < 300; rep++) {
        for (int i = 0; i < 37; i++) atomic_init(&hits[i], 0);
        count_job j = {.hits = hits};
        lpool_run(c->pool, 37, count_task, &j);
        for (int i = 0; i < 37; i++) c->ok &= atomic_load(&hits[i]) == 1;
    }
    return NULL;
}

START_TEST(pool_concurrent_callers)
{
    /* Two application threads sharing one pool: their jobs are serialised, none is lost. */
    pthread_t th[2];
    caller_arg args[2] = {{ctxs[2].pool, 0}, {ctxs[2].pool, 0}};
    for (int i = 0; i < 2; i++) ck_assert_int_eq(pthread_create(&th[i], NULL, concurrent_caller, &args[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    ck_assert(args[0].ok && args[1].ok);
}
END_TEST

START_TEST(pool_single_thread_and_free)
{
    lpool *p = lpool_create(1);
    ck_assert_ptr_nonnull(p);
    atomic_int hits[5];
    for (int i = 0; i < 5; i++) atomic_init(&hits[i], 0);
    count_job j = {.hits = hits};
    lpool_run(p, 5, count_task, &j);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(atomic_load(&hits[i]), 1);
    lpool_free(p);
    lpool_free(NULL);
    p = lpool_create(0); /* treated as 1 */
    ck_assert_int_eq(lpool_threads(p), 1);
    lpool_free(p);
}
END_TEST

/* ---- gemm / linear */

static void check_gemm(int tA, int tB, int M, int N, int K, int pad, float alpha, float beta)
{
    int lda = (tA ? M : K) + pad, ldb = (tB ? K : N) + pad, ldc = N + pad;
    size_t na = (size_t)(tA ? K : M) * lda, nb = (size_t)(tB ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = rand_buf(na, 1), *B = rand_buf(nb, 1), *C0 = rand_buf(nc, 1);
    float *ref = copy_buf(C0, nc), *first = NULL;
    lk_ref_gemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, ref, ldc);
    char what[128];
    snprintf(what, sizeof what, "gemm tA=%d tB=%d %dx%dx%d pad %d", tA, tB, M, N, K, pad);
    for (int c = 0; c < N_CTX; c++) {
        float *C = copy_buf(C0, nc);
        lk_gemm(&ctxs[c], tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        expect_close(C, ref, nc, 2e-6 * sqrt(K + 1.0), what);
        if (first) {
            expect_same(C, first, nc, what);
            free(C);
        } else
            first = C;
    }
    free(first);
    free(A), free(B), free(C0), free(ref);
}

START_TEST(gemm_matches_reference)
{
    static const int shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {65, 130, 33}, {200, 300, 70}, {37, 1000, 64}, {513, 17, 300}};
    for (size_t s = 0; s < LDM_ARRAY_LEN(shapes); s++)
        for (int t = 0; t < 4; t++) {
            check_gemm(t & 1, t >> 1, shapes[s][0], shapes[s][1], shapes[s][2], 0, 1.0f, 0.0f);
            check_gemm(t & 1, t >> 1, shapes[s][0], shapes[s][1], shapes[s][2], 3, 0.5f, 1.0f);
        }
    check_gemm(0, 0, 5, 6, 0, 0, 1.0f, 0.5f); /* empty inner dimension: C = beta*C */
}
END_TEST

/* The small-product path (gemm_small.c) on its own, both kernels (impl 0 portable, impl 1
 * AVX2+FMA when the CPU has it): thin and odd shapes around its 6x16 register blocks, its 3x4 dot
 * blocks (x W^T) and 24x32 tiles, every transpose, alpha/beta, strided operands; against the
 * double reference and bit for bit across thread counts. */
static void check_gemm_small(int impl, int tA, int tB, int M, int N, int K, int pad, float alpha, float beta)
{
    int lda = (tA ? M : K) + pad, ldb = (tB ? K : N) + pad, ldc = N + pad;
    size_t na = (size_t)(tA ? K : M) * lda, nb = (size_t)(tB ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = rand_buf(na, 1), *B = rand_buf(nb, 1), *C0 = rand_buf(nc, 1);
    if (beta == 0.0f)
        for (size_t i = 0; i < nc; i++) C0[i] = NAN; /* beta = 0 ignores C */
    float *ref = copy_buf(C0, nc), *first = NULL;
    lk_ref_gemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, ref, ldc);
    char what[128];
    snprintf(what, sizeof what, "gemm_small impl %d tA=%d tB=%d %dx%dx%d pad %d a %g b %g", impl, tA, tB, M, N, K,
             pad, alpha, beta);
    for (int c = 0; c < N_CTX; c++) {
        float *C = copy_buf(C0, nc);
        if (!lk_gemm_small_impl(&ctxs[c], impl, tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)) {
            free(C);
            break; /* this CPU lacks the kernel */
        }
        /* the padding between rows must be left alone */
        for (int i = 0; i < M; i++)
            for (int j = N; j < ldc; j++) {
                size_t at = (size_t)i * ldc + j;
                ck_assert_msg(memcmp(&C[at], &C0[at], sizeof(float)) == 0, "%s: wrote outside C", what);
            }
        for (int i = 0; i < M; i++)
            expect_close(C + (size_t)i * ldc, ref + (size_t)i * ldc, (size_t)N, 2e-6 * sqrt(K + 1.0), what);
        if (first) {
            expect_same(C, first, nc, what);
            free(C);
        } else
            first = C;
    }
    free(first);
    free(A), free(B), free(C0), free(ref);
}

START_TEST(gemm_small_matches_reference)
{
    static const int ms[] = {1, 2, 5, 6, 7, 13, 16, 25, 64}, ns[] = {1, 3, 8, 15, 16, 17, 33, 64, 100},
                     ks[] = {1, 7, 8, 9, 64, 67, 300};
    static const float ab[][2] = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-2.0f, 0.25f}};
    int n = 0;
    for (size_t mi = 0; mi < LDM_ARRAY_LEN(ms); mi++)
        for (size_t ni = 0; ni < LDM_ARRAY_LEN(ns); ni++)
            for (size_t ki = 0; ki < LDM_ARRAY_LEN(ks); ki++, n++) {
                int t = n % 4, p = n % 3, pad = n % 2 ? 3 : 0;
                for (int impl = 0; impl < 2; impl++)
                    check_gemm_small(impl, t & 1, t >> 1, ms[mi], ns[ni], ks[ki], pad, ab[p][0], ab[p][1]);
            }
    /* every transpose on the shapes of a small UNet at batch 1, tiled over the pool */
    static const int big[][3] = {{64, 64, 576}, {64, 16, 576}, {64, 512, 64}, {16, 64, 256}, {1, 256, 256},
                                 {70, 90, 1152}};
    for (size_t b = 0; b < LDM_ARRAY_LEN(big); b++)
        for (int t = 0; t < 4; t++)
            for (int impl = 0; impl < 2; impl++) {
                check_gemm_small(impl, t & 1, t >> 1, big[b][0], big[b][1], big[b][2], 0, 1.0f, 0.0f);
                check_gemm_small(impl, t & 1, t >> 1, big[b][0], big[b][1], big[b][2], 2, 0.5f, 1.0f);
            }
    /* x W^T with at most 16 rows (a transposed B): dot products along K, B read in place, A
     * copied into rows when transposed; 17 rows go back to the copied panels. Every row count
     * around its 3-row blocks, columns around its 4-column blocks, K around its 8-value steps,
     * alpha/beta (beta = 0 with NaN in C), strides; tiled over the pool from 1 MFLOP. */
    static const int dm[] = {1, 2, 3, 4, 5, 8, 16, 17}, dn[] = {1, 2, 3, 4, 5, 7, 13, 64},
                     dk[] = {1, 3, 7, 8, 9, 15, 16, 17, 63, 64, 100, 257};
    n = 0;
    for (size_t mi = 0; mi < LDM_ARRAY_LEN(dm); mi++)
        for (size_t ni = 0; ni < LDM_ARRAY_LEN(dn); ni++)
            for (size_t ki = 0; ki < LDM_ARRAY_LEN(dk); ki++, n++)
                for (int tA = 0; tA < 2; tA++)
                    for (int impl = 0; impl < 2; impl++) {
                        int p = (n + tA) % 3, pad = (n + tA) % 2 ? 5 : 0;
                        check_gemm_small(impl, tA, 1, dm[mi], dn[ni], dk[ki], pad, ab[p][0], ab[p][1]);
                    }
    static const int dot_big[][3] = {{16, 64, 64}, {16, 512, 64}, {16, 64, 256}, {1, 64, 256}, {13, 700, 100},
                                     {16, 1024, 64}, {7, 333, 517}};
    for (size_t b = 0; b < LDM_ARRAY_LEN(dot_big); b++)
        for (int tA = 0; tA < 2; tA++)
            for (int impl = 0; impl < 2; impl++) {
                check_gemm_small(impl, tA, 1, dot_big[b][0], dot_big[b][1], dot_big[b][2], 0, 1.0f, 0.0f);
                check_gemm_small(impl, tA, 1, dot_big[b][0], dot_big[b][1], dot_big[b][2], 3, -2.0f, 0.25f);
            }
    /* lk_gemm's choice is a rule on the shape alone */
    ck_assert(!lk_gemm_small_applies(0, 5, 5));
    ck_assert(!lk_gemm_small_applies(512, 512, 512)); /* BLAS territory */
    ck_assert(!lk_gemm_small_applies(4, 4, 4096));
}
END_TEST

/* The skinny path (gemm_skinny.c: weights in place, B in 16-column panels, K in blocks of 256):
 * through lk_gemm (which takes it by its rule) and called directly, against the double reference,
 * bit for bit across thread counts; beta = 0 with NaN in C (C is never read), alpha applied once. */
static void check_gemm_skinny(int M, int N, int K, int pad, float alpha)
{
    int lda = K + pad, ldb = N + pad, ldc = N + pad;
    size_t nc = (size_t)M * ldc;
    float *A = rand_buf((size_t)M * lda, 1), *B = rand_buf((size_t)K * ldb, 1), *C0 = rand_buf(nc, 1);
    for (size_t i = 0; i < nc; i++) C0[i] = NAN;
    float *ref = copy_buf(C0, nc);
    lk_ref_gemm(0, 0, M, N, K, alpha, A, lda, B, ldb, 0.0f, ref, ldc);
    char what[128];
    snprintf(what, sizeof what, "gemm_skinny %dx%dx%d pad %d alpha %g", M, N, K, pad, alpha);
    for (int direct = 0; direct < 2; direct++) {
        float *first = NULL;
        for (int c = 0; c < N_CTX; c++) {
            float *C = copy_buf(C0, nc);
            if (direct)
                lk_gemm_skinny(&ctxs[c], M, N, K, alpha, A, lda, B, ldb, C, ldc);
            else
                lk_gemm(&ctxs[c], 0, 0, M, N, K, alpha, A, lda, B, ldb, 0.0f, C, ldc);
            for (int i = 0; i < M; i++) {
                expect_close(C + (size_t)i * ldc, ref + (size_t)i * ldc, (size_t)N, 2e-6 * sqrt(K + 1.0), what);
                for (int j = N; j < ldc; j++) ck_assert_msg(isnan(C[(size_t)i * ldc + j]), "%s: wrote outside C", what);
            }
            if (first) {
                expect_same(C, first, nc, what);
                free(C);
            } else
                first = C;
        }
        free(first);
    }
    free(A), free(B), free(C0), free(ref);
}

/* x W^T with few rows (lk_gemm_skinny_bt: C^T = W x^T by the skinny kernel, then transposed with
 * alpha and beta): the same checks, with beta = 0 (NaN in C) and beta != 0. */
static void check_gemm_skinny_bt(int M, int N, int K, int pad, float alpha, float beta)
{
    int lda = K + pad, ldb = K + 2 * pad, ldc = N + pad;
    size_t nc = (size_t)M * ldc;
    float *A = rand_buf((size_t)M * lda, 1), *B = rand_buf((size_t)N * ldb, 1), *C0 = rand_buf(nc, 1);
    if (beta == 0.0f)
        for (size_t i = 0; i < nc; i++) C0[i] = NAN;
    float *ref = copy_buf(C0, nc);
    lk_ref_gemm(0, 1, M, N, K, alpha, A, lda, B, ldb, beta, ref, ldc);
    char what[128];
    snprintf(what, sizeof what, "gemm_skinny_bt %dx%dx%d pad %d alpha %g beta %g", M, N, K, pad, alpha, beta);
    for (int direct = 0; direct < 2; direct++) {
        float *first = NULL;
        for (int c = 0; c < N_CTX; c++) {
            float *C = copy_buf(C0, nc);
            if (direct)
                lk_gemm_skinny_bt(&ctxs[c], M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
            else
                lk_gemm(&ctxs[c], 0, 1, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
            for (int i = 0; i < M; i++) {
                expect_close(C + (size_t)i * ldc, ref + (size_t)i * ldc, (size_t)N, 2e-6 * sqrt(K + 1.0), what);
                for (int j = N; j < ldc; j++)
                    ck_assert_msg(!memcmp(&C[(size_t)i * ldc + j], &C0[(size_t)i * ldc + j], sizeof(float)),
                                  "%s: wrote outside C", what);
            }
            if (first) {
                expect_same(C, first, nc, what);
                free(C);
            } else
                first = C;
        }
        free(first);
    }
    free(A), free(B), free(C0), free(ref);
}

START_TEST(gemm_skinny_matches_reference)
{
    if (!lk_gemm_skinny_applies(0, 0, 64, 32, 2048, 0.0f)) {
        printf("SKIPPED: gemm_skinny (no AVX2+FMA kernels here: lk_gemm_skinny is BLAS)\n");
    }
    /* rows around the 6-row blocks and 48-row tasks, K around its 256-value blocks */
    static const int shapes[][3] = {{6, 16, 1024}, {7, 32, 1025}, {53, 48, 1100}, {48, 128, 1280}, {100, 64, 2049},
                                    {1, 16, 1024}, {97, 128, 1536}};
    for (size_t s = 0; s < LDM_ARRAY_LEN(shapes); s++) {
        check_gemm_skinny(shapes[s][0], shapes[s][1], shapes[s][2], 0, 1.0f);
        check_gemm_skinny(shapes[s][0], shapes[s][1], shapes[s][2], 3, -0.5f);
    }
    static const int bt[][3] = {{16, 6, 1024}, {32, 50, 1100}, {128, 97, 1300}, {48, 200, 2049}, {16, 1, 1024}};
    for (size_t s = 0; s < LDM_ARRAY_LEN(bt); s++) {
        check_gemm_skinny_bt(bt[s][0], bt[s][1], bt[s][2], 0, 1.0f, 0.0f);
        check_gemm_skinny_bt(bt[s][0], bt[s][1], bt[s][2], 3, -0.5f, 0.75f);
    }
    /* the rules: plain operands, beta 0, N a multiple of 16 up to 128, K >= 1024; for x W^T the
     * rows are what N is to the plain product */
    if (lk_gemm_skinny_applies(0, 0, 64, 32, 2048, 0.0f)) {
        ck_assert(!lk_gemm_skinny_applies(1, 0, 64, 32, 2048, 0.0f));
        ck_assert(!lk_gemm_skinny_applies(0, 1, 64, 32, 2048, 0.0f));
        ck_assert(!lk_gemm_skinny_applies(0, 0, 64, 32, 2048, 1.0f));
        ck_assert(!lk_gemm_skinny_applies(0, 0, 64, 40, 2048, 0.0f));
        ck_assert(!lk_gemm_skinny_applies(0, 0, 64, 144, 2048, 0.0f));
        ck_assert(!lk_gemm_skinny_applies(0, 0, 64, 32, 1023, 0.0f));
        ck_assert(lk_gemm_skinny_bt_applies(0, 1, 32, 1280, 1280));
        ck_assert(!lk_gemm_skinny_bt_applies(1, 1, 32, 1280, 1280));
        ck_assert(!lk_gemm_skinny_bt_applies(0, 1, 154, 1280, 1280));
        ck_assert(!lk_gemm_skinny_bt_applies(0, 1, 144, 1280, 1280));
        ck_assert(!lk_gemm_skinny_bt_applies(0, 1, 32, 1280, 768));
    }
}
END_TEST

START_TEST(linear_matches_reference)
{
    static const int shapes[][3] = {{3, 5, 7}, {77, 48, 96}, {300, 320, 640}};
    for (size_t s = 0; s < LDM_ARRAY_LEN(shapes); s++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            int rows = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
            float *x = rand_buf((size_t)rows * in, 1), *W = rand_buf((size_t)out * in, 1);
            float *b = with_bias ? rand_buf((size_t)out, 1) : NULL;
            float *ref = malloc(sizeof(float) * rows * out);
            lk_ref_gemm(0, 1, rows, out, in, 1.0f, x, in, W, in, 0.0f, ref, out);
            if (b)
                for (int r = 0; r < rows; r++)
                    for (int o = 0; o < out; o++) ref[(size_t)r * out + o] += b[o];
            float *first = NULL;
            for (int c = 0; c < N_CTX; c++) {
                float *y = malloc(sizeof(float) * rows * out);
                lk_linear(&ctxs[c], x, rows, in, W, b, out, y);
                expect_close(y, ref, (size_t)rows * out, 2e-6 * sqrt(in + 1.0), "linear");
                if (first) {
                    expect_same(y, first, (size_t)rows * out, "linear");
                    free(y);
                } else
                    first = y;
            }
            free(first), free(x), free(W), free(b), free(ref);
        }
}
END_TEST

/* ---- conv2d */

typedef ldm_status (*conv_fn)(const lctx *, const lk_conv2d_shape *, const float *, lk_wt, const float *, float *);

static ldm_status conv_dispatch(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                                float *y)
{
    return lk_conv2d(c, s, x, w.f32, bias, y);
}

/* fn against the double reference (with a bias when with_bias), bit for bit across thread counts;
 * `label` names the path in failure messages. */
static void check_conv_with(lk_conv2d_shape s, int with_bias, conv_fn fn, const char *label)
{
    int oh = lk_conv2d_out_h(&s), ow = lk_conv2d_out_w(&s);
    size_t nx = (size_t)s.batch * s.in_ch * s.in_h * s.in_w, nw = (size_t)s.out_ch * s.in_ch * s.k_h * s.k_w;
    size_t ny = (size_t)s.batch * s.out_ch * oh * ow;
    float *x = rand_buf(nx, 1), *w = rand_buf(nw, 1), *bias = with_bias ? rand_buf((size_t)s.out_ch, 1) : NULL;
    float *ref = malloc(sizeof(float) * ny), *first = NULL;
    lk_ref_conv2d(&s, x, w, bias, ref);
    char what[160];
    snprintf(what, sizeof what, "%s B%d IC%d %dx%d OC%d k%dx%d s%d pad(%d,%d,%d,%d)", label, s.batch, s.in_ch, s.in_h,
             s.in_w, s.out_ch, s.k_h, s.k_w, s.stride, s.pad_top, s.pad_left, s.pad_bottom, s.pad_right);
    for (int c = 0; c < N_CTX; c++) {
        float *y = malloc(sizeof(float) * ny);
        for (size_t i = 0; i < ny; i++) y[i] = NAN; /* every output must be written */
        ck_assert_int_eq(fn(&ctxs[c], &s, x, lk_wt_f32(w), bias, y), LDM_OK);
        expect_close(y, ref, ny, 2e-6 * sqrt((double)s.in_ch * s.k_h * s.k_w + 1), what);
        if (first) {
            expect_same(y, first, ny, what);
            free(y);
        } else
            first = y;
    }
    free(first), free(x), free(w), free(bias), free(ref);
}

static void check_conv(lk_conv2d_shape s, int with_bias)
{
    check_conv_with(s, with_bias, conv_dispatch, "conv2d");
}

START_TEST(conv2d_matches_reference)
{
    /* batch, in_ch, in_h, in_w, out_ch, k_h, k_w, stride, pad top/left/bottom/right */
    static const lk_conv2d_shape shapes[] = {
        {2, 5, 7, 9, 3, 1, 1, 1, 0, 0, 0, 0},     /* 1x1: direct gemm */
        {1, 64, 32, 32, 48, 1, 1, 1, 0, 0, 0, 0}, /* 1x1 large enough to split */
        {2, 4, 9, 11, 6, 3, 3, 1, 1, 1, 1, 1},    /* 3x3 same, odd sizes, batch 2 */
        {1, 3, 8, 8, 4, 3, 3, 2, 0, 0, 1, 1},     /* autoencoder downsample pad (0,1,0,1) */
        {2, 3, 9, 7, 5, 3, 3, 2, 0, 0, 1, 1},     /* ... on odd sizes */
        {1, 6, 10, 13, 4, 3, 3, 2, 1, 1, 1, 1},   /* UNet downsample */
        {1, 5, 6, 7, 3, 1, 1, 2, 0, 0, 0, 0},     /* 1x1 stride 2 */
        {1, 3, 5, 6, 2, 1, 1, 1, 1, 0, 0, 2},     /* 1x1 with padding */
        {1, 2, 3, 3, 3, 3, 3, 1, 0, 0, 0, 0},     /* single output pixel */
        {1, 2, 4, 5, 3, 5, 3, 1, 2, 1, 2, 1},     /* non-square kernel */
        {2, 32, 24, 20, 64, 3, 3, 1, 1, 1, 1, 1}, /* gemm big enough to tile */
    };
    for (size_t i = 0; i < LDM_ARRAY_LEN(shapes); i++) {
        check_conv(shapes[i], 1);
        check_conv(shapes[i], 0);
    }
}
END_TEST

START_TEST(conv2d_row_blocks)
{
    /* im2col of 64ch 3x3 over 128 columns is 73728 floats per output row: the 8 MiB budget makes
     * this run in several row blocks, the last one partial. */
    lk_conv2d_shape s = {1, 64, 100, 128, 4, 3, 3, 1, 1, 1, 1, 1};
    check_conv_with(s, 1, lk_conv2d_im2col, "im2col"); /* lk_conv2d computes 4 output channels directly */
    check_conv(s, 1);
}
END_TEST

/* Convolutions without im2col (gemm_small.c): output widths that are a multiple of 8 and the
 * panel mode for the others, 3x3 and other kernels, batches, against the reference and bit
 * for bit across thread counts; and through lk_conv2d, which takes this path for them. */
static ldm_status conv_small_fn(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                                float *y)
{
    return lk_conv2d_small(c, s, x, w, bias, y);
}

START_TEST(conv2d_small_matches_reference)
{
    static const lk_conv2d_shape shapes[] = {
        {1, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1, 1},   /* a small UNet's 8x8 level */
        {1, 64, 4, 4, 64, 3, 3, 1, 1, 1, 1, 1},   /* its 4x4 level: panel mode */
        {2, 128, 4, 4, 64, 3, 3, 1, 1, 1, 1, 1},  /* batch 2, K = 1152, panel mode */
        {1, 9, 5, 5, 7, 3, 3, 1, 1, 1, 1, 1},     /* 25 pixels: a partial second panel */
        {1, 128, 8, 8, 64, 3, 3, 1, 1, 1, 1, 1},  /* skip concatenation, K = 1152 */
        {2, 16, 8, 16, 24, 3, 3, 1, 1, 1, 1, 1},  /* batch 2, two panels per row */
        {3, 5, 6, 6, 13, 3, 3, 1, 1, 1, 1, 1},    /* odd channels, width 6 */
        {1, 7, 5, 10, 9, 3, 3, 1, 0, 1, 0, 1},    /* no vertical padding, width 8 */
        {1, 3, 9, 12, 11, 5, 3, 1, 2, 1, 2, 1},   /* 5x3 kernel */
        {1, 6, 7, 8, 10, 1, 1, 1, 0, 0, 0, 0},    /* 1x1 */
        {2, 4, 2, 2, 17, 3, 3, 1, 1, 1, 1, 1},    /* 2x2 image */
    };
    for (size_t i = 0; i < LDM_ARRAY_LEN(shapes); i++) {
        if (!lk_conv_small_applies(&shapes[i])) continue; /* a CPU without AVX2+FMA */
        check_conv_with(shapes[i], 1, conv_small_fn, "conv small");
        check_conv_with(shapes[i], 0, conv_small_fn, "conv small");
        check_conv(shapes[i], 1);
    }
    lk_conv2d_shape wide = {1, 4, 4, 4, 9, 3, 5, 1, 1, 1, 1, 1}; /* output width 2: panel mode */
    if (lk_conv_small_applies(&wide)) {
        check_conv_with(wide, 1, conv_small_fn, "conv small");
        check_conv_with(wide, 0, conv_small_fn, "conv small");
    }
    check_conv(wide, 1);
    lk_conv2d_shape strided = {1, 64, 8, 8, 64, 3, 3, 2, 1, 1, 1, 1};
    ck_assert(!lk_conv_small_applies(&strided));
}
END_TEST

/* The small Winograd path (wino_small.c): against the reference, bit for bit across thread counts,
 * with the weights transformed for the call and from the cache (also bit for bit the same), and
 * through lk_conv2d_cached, which takes it for these shapes when given a cache. */
static lk_wcache *test_wc;
static ldm_status wino_small_fn(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                                float *y)
{
    return lk_conv2d_wino_small(c, s, x, w, bias, y, test_wc);
}
static ldm_status conv_cached_fn(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                                 float *y)
{
    return lk_conv2d_cached(c, s, x, w, bias, y, test_wc);
}

START_TEST(conv2d_wino_small_matches_reference)
{
    static const lk_conv2d_shape shapes[] = {
        {1, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1, 1},   /* a small UNet's 8x8 level: tiles stored in pairs */
        {1, 64, 4, 4, 64, 3, 3, 1, 1, 1, 1, 1},   /* its 4x4 level */
        {2, 128, 4, 4, 64, 3, 3, 1, 1, 1, 1, 1},  /* batch 2, skip concatenation */
        {1, 16, 6, 10, 24, 3, 3, 1, 1, 1, 1, 1},  /* width 10: tile by tile */
        {1, 24, 5, 7, 40, 3, 3, 1, 1, 1, 1, 1},   /* odd sizes: partial tiles */
        {1, 20, 8, 8, 20, 3, 3, 1, 1, 1, 1, 1},   /* channels not a multiple of 8 */
        {2, 16, 8, 8, 16, 3, 3, 1, 0, 0, 0, 0},   /* no padding: 6x6 outputs */
        {1, 17, 9, 9, 33, 3, 3, 1, 2, 1, 0, 1},   /* uneven padding */
    };
    for (size_t i = 0; i < LDM_ARRAY_LEN(shapes); i++) {
        if (!lk_conv_wino_small_applies(&shapes[i])) continue; /* a CPU without AVX2+FMA */
        test_wc = NULL; /* weights transformed for each call */
        check_conv_with(shapes[i], 1, wino_small_fn, "wino small");
        /* each check makes new weights, perhaps at the address of the last ones: a new cache each
         * time (a network's weights live as long as its cache) */
        test_wc = lk_wcache_create();
        check_conv_with(shapes[i], 1, wino_small_fn, "wino small, cached");
        lk_wcache_free(test_wc);
        test_wc = lk_wcache_create();
        check_conv_with(shapes[i], 0, conv_cached_fn, "conv2d cached");
        lk_wcache_free(test_wc);
        test_wc = NULL;
    }
    /* cached and uncached weights give the same bits; the cache holds one entry, then none */
    lk_conv2d_shape s = shapes[0];
    if (!lk_conv_wino_small_applies(&s)) return;
    size_t nx = 64 * 64, nw = 64 * 64 * 9;
    float *x = rand_buf(nx, 1), *w = rand_buf(nw, 1), *bias = rand_buf(64, 1);
    float *y0 = malloc(sizeof(float) * nx), *y1 = malloc(sizeof(float) * nx), *y2 = malloc(sizeof(float) * nx);
    lk_wcache *wc = lk_wcache_create();
    ck_assert(wc || lk_low_memory());
    ck_assert_int_eq(lk_conv2d_wino_small(&ctxs[0], &s, x, lk_wt_f32(w), bias, y0, NULL), LDM_OK);
    ck_assert_int_eq(lk_conv2d_wino_small(&ctxs[0], &s, x, lk_wt_f32(w), bias, y1, wc), LDM_OK);
    ck_assert_int_eq(lk_conv2d_wino_small(&ctxs[1], &s, x, lk_wt_f32(w), bias, y2, wc), LDM_OK);
    expect_same(y0, y1, nx, "wino small cached / uncached");
    expect_same(y0, y2, nx, "wino small from the cache");
    if (wc) {
        ck_assert_uint_eq(lk_wcache_bytes(wc), sizeof(float) * 16 * 64 * 64);
        ck_assert_ptr_nonnull(lk_wcache_find(wc, w, LK_WC_WINO2, 64, 64));
        ck_assert_ptr_null(lk_wcache_find(wc, w, LK_WC_WINO2, 64, 32));
        /* weights changed in place: after lk_wcache_clear the new values are used */
        for (size_t i = 0; i < nw; i++) w[i] *= 0.5f;
        lk_wcache_clear(wc);
        ck_assert_uint_eq(lk_wcache_bytes(wc), 0);
        ck_assert_int_eq(lk_conv2d_wino_small(&ctxs[0], &s, x, lk_wt_f32(w), bias, y1, wc), LDM_OK);
        ck_assert_int_eq(lk_conv2d_wino_small(&ctxs[0], &s, x, lk_wt_f32(w), bias, y0, NULL), LDM_OK);
        expect_same(y0, y1, nx, "wino small after lk_wcache_clear");
        /* bounded: entries past LK_WCACHE_BUDGET are not made */
        lk_wcache_clear(wc);
        size_t each = LK_WCACHE_MAX_ENTRY, made = 0;
        for (int k = 0; k < 64; k++) {
            float *slot;
            ck_assert_int_eq(lk_wcache_add(wc, (const char *)w + k, LK_WC_WINO2, 1, 1, each, &slot), LDM_OK);
            made += slot != NULL;
        }
        ck_assert_uint_eq(made, LK_WCACHE_BUDGET / each);
        float *none;
        ck_assert_int_eq(lk_wcache_add(wc, y0, LK_WC_WINO2, 1, 1, LK_WCACHE_MAX_ENTRY + 1, &none), LDM_OK);
        ck_assert_ptr_null(none);
    }
    lk_wcache_free(wc);
    lk_conv2d_shape wide = {1, 512, 4, 4, 512, 3, 3, 1, 1, 1, 1, 1}; /* transformed weights over the entry cap */
    ck_assert(!lk_conv_wino_small_applies(&wide));
    free(x), free(w), free(bias), free(y0), free(y1), free(y2);
}
END_TEST

/* lk_linear_wt_cached: x W^T + b from cached panels of W^T, against the reference, bit for bit
 * across thread counts and between the call that fills the cache and the ones that read it. */
START_TEST(linear_cached_matches_reference)
{
    static const int shapes[][3] = {{64, 64, 64}, {16, 512, 64}, {16, 64, 256}, {5, 40, 33}, {2, 17, 9}};
    for (size_t i = 0; i < LDM_ARRAY_LEN(shapes); i++) {
        int rows = shapes[i][0], out = shapes[i][1], in = shapes[i][2];
        size_t ny = (size_t)rows * out;
        float *x = rand_buf((size_t)rows * in, 1), *w = rand_buf((size_t)out * in, 1), *b = rand_buf((size_t)out, 1);
        float *ref = malloc(sizeof(float) * ny), *y = malloc(sizeof(float) * ny), *first = malloc(sizeof(float) * ny);
        for (int r = 0; r < rows; r++) memcpy(ref + (size_t)r * out, b, sizeof(float) * (size_t)out);
        lk_ref_gemm(0, 1, rows, out, in, 1.0f, x, in, w, in, 1.0f, ref, out);
        lk_wcache *wc = lk_wcache_create();
        char what[64];
        snprintf(what, sizeof what, "linear cached %d x %d x %d", rows, out, in);
        for (int c = 0; c < N_CTX; c++)
            for (int rep = 0; rep < 2; rep++) {
                for (size_t k = 0; k < ny; k++) y[k] = NAN;
                ck_assert_int_eq(lk_linear_wt_cached(&ctxs[c], x, rows, in, lk_wt_f32(w), b, out, y, wc), LDM_OK);
                expect_close(y, ref, ny, 2e-6 * sqrt((double)in + 1), what);
                if (c || rep)
                    expect_same(y, first, ny, what);
                else
                    memcpy(first, y, sizeof(float) * ny);
            }
        if (wc && lk_gemm_small_applies(rows, out, in)) ck_assert_uint_gt(lk_wcache_bytes(wc), 0);
        lk_wcache_free(wc);
        free(x), free(w), free(b), free(ref), free(y), free(first);
    }
}
END_TEST

/* The Winograd path on its own (lk_conv2d only takes it for large shapes): against the double
 * reference and bit for bit across thread counts. F(4x4,3x3) rounds more than a direct sum (its
 * transforms mix 36 inputs with coefficients up to 25): measured about 3e-7 * sqrt(K) relative to
 * the largest output, within check_conv_with's bound of 2e-6 * sqrt(K). */
static ldm_status winograd4(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                            float *y)
{
    return lk_conv3x3_winograd(c, s, x, w, bias, y, 4);
}

static ldm_status winograd2(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                            float *y)
{
    return lk_conv3x3_winograd(c, s, x, w, bias, y, 2);
}

static void check_winograd(lk_conv2d_shape s, int m)
{
    ck_assert(lk_winograd_applies(&s));
    check_conv_with(s, 1, m == 4 ? winograd4 : winograd2, m == 4 ? "winograd F(4,3)" : "winograd F(2,3)");
}

/* Tiles of the batch that one product covers, and output channels per group of transformed
 * weights, for shape s under F(m x m, 3x3). */
static int winograd_blocks(lk_conv2d_shape s, int m)
{
    int tb, og, tiles_1d_h = (lk_conv2d_out_h(&s) + m - 1) / m, tiles_1d_w = (lk_conv2d_out_w(&s) + m - 1) / m;
    lk_winograd_blocking(&s, m, &tb, &og);
    return (s.batch * tiles_1d_h * tiles_1d_w + tb - 1) / tb;
}

static int winograd_groups(lk_conv2d_shape s, int m)
{
    int tb, og;
    lk_winograd_blocking(&s, m, &tb, &og);
    return (s.out_ch + og - 1) / og;
}

START_TEST(conv2d_winograd_matches_reference)
{
    static const lk_conv2d_shape shapes[] = {
        {1, 1, 1, 1, 1, 3, 3, 1, 1, 1, 1, 1},     /* one pixel: one partial tile */
        {2, 3, 5, 7, 2, 3, 3, 1, 1, 1, 1, 1},     /* partial tiles right and bottom, batch 2 */
        {1, 4, 10, 9, 5, 3, 3, 1, 0, 0, 0, 0},    /* no padding */
        {1, 6, 9, 12, 3, 3, 3, 1, 0, 1, 2, 0},    /* asymmetric padding */
        {2, 40, 16, 16, 70, 3, 3, 1, 1, 1, 1, 1}, /* one block over both images */
    };
    for (size_t i = 0; i < LDM_ARRAY_LEN(shapes); i++) {
        check_winograd(shapes[i], 4);
        check_winograd(shapes[i], 2);
    }
    /* Tile blocks that span two images and start in the middle of a tile row: 2 x 625 tiles
     * under F(4x4) (2 x 2500 under F(2x2)) in blocks the budget cuts to a few hundred. */
    lk_conv2d_shape blocks = {2, 256, 100, 100, 8, 3, 3, 1, 1, 1, 1, 1};
    ck_assert_int_ge(winograd_blocks(blocks, 4), 2);
    ck_assert_int_ge(winograd_blocks(blocks, 2), 2);
    check_winograd(blocks, 4);
    check_winograd(blocks, 2);
    /* Transformed weights in several groups of output channels, the last one partial. */
    lk_conv2d_shape groups4 = {1, 2048, 5, 6, 300, 3, 3, 1, 1, 1, 1, 1};
    lk_conv2d_shape groups2 = {1, 4096, 3, 3, 600, 3, 3, 1, 1, 1, 1, 1};
    ck_assert_int_ge(winograd_groups(groups4, 4), 2);
    ck_assert_int_ge(winograd_groups(groups2, 2), 3);
    check_winograd(groups4, 4);
    check_winograd(groups2, 2);
    lk_conv2d_shape strided = {1, 4, 8, 8, 4, 3, 3, 2, 1, 1, 1, 1}, k5 = {1, 4, 8, 8, 4, 5, 5, 1, 2, 2, 2, 2};
    ck_assert(!lk_winograd_applies(&strided));
    ck_assert(!lk_winograd_applies(&k5));
}
END_TEST

/* Few input channels: the products run unpacked (lk_gemm_small's kernel on U's own panels, no
 * BLAS) where the CPU has AVX2+FMA; against the double reference and bit for bit across thread
 * counts, with partial tiles, input channels that are no multiple of 8, several panels of output
 * channels, several tile blocks across two images; and the shapes that keep BLAS. */
START_TEST(conv2d_winograd_unpacked_products)
{
    static const lk_conv2d_shape shapes[] = {
        {1, 64, 21, 23, 64, 3, 3, 1, 1, 1, 1, 1}, /* TAESD's width, partial tiles */
        {2, 20, 9, 13, 32, 3, 3, 1, 1, 1, 1, 1},  /* K = 20 (padded to 24 in V), two panels */
        {1, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1},   /* one panel */
        {1, 128, 6, 7, 16, 3, 3, 1, 1, 1, 1, 1},  /* the largest K taken */
    };
    int fma = lk_winograd_unpacked(&shapes[0], 4);
    for (size_t i = 0; i < LDM_ARRAY_LEN(shapes); i++)
        for (int m = 2; m <= 4; m += 2) {
            ck_assert_int_eq(lk_winograd_unpacked(&shapes[i], m), fma);
            check_winograd(shapes[i], m);
        }
    /* 2 x 44 x 44 tiles in blocks of at most 1820: three blocks, one spanning the two images */
    lk_conv2d_shape blocks = {2, 64, 176, 176, 16, 3, 3, 1, 1, 1, 1, 1};
    ck_assert_int_ge(winograd_blocks(blocks, 4), 3);
    ck_assert_int_eq(lk_winograd_unpacked(&blocks, 4), fma);
    check_winograd(blocks, 4);
    /* BLAS keeps more input channels and output channels that are no multiple of 16 */
    lk_conv2d_shape wide = {1, 136, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1}, odd = {1, 32, 8, 8, 24, 3, 3, 1, 1, 1, 1, 1};
    ck_assert(!lk_winograd_unpacked(&wide, 4) && !lk_winograd_unpacked(&odd, 4));
    check_winograd(odd, 4);
}
END_TEST

/* The fused blocks (one thread takes a window of tiles through every phase) against the
 * large-block path they replace: bit for bit, for every thread count, with the epilogue, on
 * upsampled inputs, over several blocks per tile row (the last one partial) and two images. */
static void check_fused(lk_conv2d_shape s, int m, int up2, int with_res)
{
    int oh = lk_conv2d_out_h(&s), ow = lk_conv2d_out_w(&s);
    size_t nx = (size_t)s.batch * s.in_ch * s.in_h * s.in_w / (up2 ? 4 : 1), nw = (size_t)s.out_ch * s.in_ch * 9;
    size_t ny = (size_t)s.batch * s.out_ch * oh * ow;
    float *x = rand_buf(nx, 1), *w = rand_buf(nw, 1), *bias = rand_buf((size_t)s.out_ch, 1);
    float *res = with_res ? rand_buf(ny, 2) : NULL, *ref = malloc(sizeof(float) * ny), *y = malloc(sizeof(float) * ny);
    lk_conv_ep ep = {.res = res, .relu = with_res};
    char what[128];
    snprintf(what, sizeof what, "fused blocks (m %d, up2 %d, res %d) B%d IC%d %dx%d OC%d", m, up2, with_res, s.batch,
             s.in_ch, s.in_h, s.in_w, s.out_ch);
    ck_assert(lk_winograd_unpacked(&s, m));
    lk_winograd_fused_enable(0);
    ldm_status st = up2 ? lk_conv3x3_winograd_up2(&ctxs[0], &s, x, lk_wt_f32(w), bias, ref, m)
                        : lk_conv3x3_winograd_ep(&ctxs[0], &s, x, lk_wt_f32(w), bias, ref, m, &ep);
    lk_winograd_fused_enable(1);
    ck_assert_int_eq(st, LDM_OK);
    for (int c = 0; c < N_CTX; c++) {
        for (size_t i = 0; i < ny; i++) y[i] = NAN;
        st = up2 ? lk_conv3x3_winograd_up2(&ctxs[c], &s, x, lk_wt_f32(w), bias, y, m)
                 : lk_conv3x3_winograd_ep(&ctxs[c], &s, x, lk_wt_f32(w), bias, y, m, &ep);
        ck_assert_int_eq(st, LDM_OK);
        expect_same(y, ref, ny, what);
    }
    free(x), free(w), free(bias), free(res), free(ref), free(y);
}

START_TEST(conv2d_winograd_fused_blocks)
{
    lk_conv2d_shape one = {1, 64, 21, 150, 64, 3, 3, 1, 1, 1, 1, 1}; /* 38 (F4) or 75 (F2) tiles a row */
    if (!lk_winograd_unpacked(&one, 4)) return; /* no AVX2+FMA: BLAS keeps the products, no fused blocks */
    lk_conv2d_shape two = {2, 16, 9, 150, 32, 3, 3, 1, 1, 0, 1, 2};  /* two images, asymmetric padding */
    lk_conv2d_shape up = {1, 32, 10, 164, 16, 3, 3, 1, 1, 1, 1, 1};  /* x at 5 x 82 */
    for (int m = 2; m <= 4; m += 2) {
        check_fused(one, m, 0, 0);
        check_fused(one, m, 0, 1);
        check_fused(two, m, 0, 1);
        check_fused(up, m, 1, 0);
        check_winograd(two, m);
    }
}
END_TEST

/* ---- float16 weights */

START_TEST(half_to_float_is_exact)
{
    /* every half: the kernels' converter (F16C where the CPU has it) against the I/O layer's */
    static float got[65536];
    static uint16_t all[65536];
    for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    lk_half_to_float(all, 65536, got);
    for (int i = 0; i < 65536; i++) {
        float ref = lw_f16_to_f32((uint16_t)i);
        if (isnan(ref))
            ck_assert_msg(isnan(got[i]), "half 0x%04x: expected NaN", i);
        else
            ck_assert_msg(memcmp(&got[i], &ref, sizeof ref) == 0, "half 0x%04x: got %a, expected %a", i, got[i], ref);
    }
    ck_assert(got[0x3c00] == 1.0f && got[0xc000] == -2.0f && got[0x7bff] == 65504.0f);
    ck_assert(got[0x0001] == ldexpf(1.0f, -24) && isinf(got[0x7c00]));
    /* unaligned source */
    unsigned char raw[2 * 9 + 1];
    for (int i = 0; i < 9; i++) memcpy(raw + 1 + 2 * i, &all[0x3c00 + i], 2);
    float nine[9];
    lk_half_to_float(raw + 1, 9, nine);
    for (int i = 0; i < 9; i++) ck_assert(nine[i] == got[0x3c00 + i]);
}
END_TEST

/* Random values rounded to half: the half copy and the float copy hold the same numbers. */
static uint16_t *half_buf(float *x, size_t n)
{
    uint16_t *h = malloc(sizeof(uint16_t) * (n ? n : 1));
    ck_assert_ptr_nonnull(h);
    for (size_t i = 0; i < n; i++) {
        h[i] = lw_f32_to_f16(x[i]);
        x[i] = lw_f16_to_f32(h[i]);
    }
    return h;
}

/* A product with float16 weights against the same product with the widened float32 weights:
 * equal to float rounding (they may split the product differently) and bit for bit across
 * thread counts. */
static void check_half_product(int kind, int M, int N, int K)
{
    size_t nw = (size_t)(kind == 0 ? M : N) * K, na = (size_t)(kind == 0 ? N : M) * K;
    float *w = rand_buf(nw, 1), *a = rand_buf(na, 1), *bias = rand_buf((size_t)N, 1);
    uint16_t *wh = half_buf(w, nw);
    size_t nc = (size_t)M * N;
    float *ref = malloc(sizeof(float) * nc), *got = malloc(sizeof(float) * nc), *first = NULL;
    char what[96];
    snprintf(what, sizeof what, "float16 weights kind %d M%d N%d K%d", kind, M, N, K);
    for (int c = 0; c < N_CTX + 1; c++) {
        lk_wt wt = c == 0 ? lk_wt_f32(w) : lk_wt_f16(wh); /* c == 0: the float32 reference */
        const lctx *ctx = &ctxs[c == 0 ? 0 : c - 1];
        float *out = c == 0 ? ref : got;
        if (kind == 0) /* C[M,N] = W[M,K] B[K,N], B = a as [K,N] */
            ck_assert_int_eq(lk_gemm_wa(ctx, wt, M, K, 0, a, N, N, 0.0f, out, N), LDM_OK);
        else if (kind == 1) /* C[M,N] = A[M,K] W^T, W [N,K] */
            ck_assert_int_eq(lk_gemm_wb(ctx, 0, a, K, M, K, wt, N, 0.0f, out, N), LDM_OK);
        else
            ck_assert_int_eq(lk_linear_wt(ctx, a, M, K, wt, bias, N, out), LDM_OK);
        if (c == 0) continue;
        expect_close(got, ref, nc, 2e-6 * sqrt(K + 1.0), what);
        if (first)
            expect_same(got, first, nc, what);
        else
            first = copy_buf(got, nc);
    }
    free(first), free(w), free(wh), free(a), free(bias), free(ref), free(got);
}

START_TEST(half_weights_in_products)
{
    for (int kind = 0; kind < 3; kind++) {
        check_half_product(kind, 7, 5, 3);
        /* 4M-float widening blocks of weight rows: three of them */
        check_half_product(kind, kind == 0 ? 100 : 6, kind == 0 ? 6 : 100, 100000);
        /* the same blocks through the skinny products (gemm_skinny.c: 16-column multiples) */
        check_half_product(kind, kind == 0 ? 100 : 16, kind == 0 ? 32 : 100, 100000);
    }
}
END_TEST

START_TEST(half_weights_in_convolutions)
{
    static const lk_conv2d_shape shapes[] = {
        {2, 32, 24, 20, 40, 3, 3, 1, 1, 1, 1, 1}, /* Winograd */
        {2, 24, 6, 5, 20, 3, 3, 1, 1, 1, 1, 1},   /* batched im2col */
        {1, 6, 10, 13, 4, 3, 3, 2, 1, 1, 1, 1},   /* im2col, stride 2 */
        {2, 16, 20, 20, 24, 1, 1, 1, 0, 0, 0, 0}, /* pointwise */
    };
    for (size_t i = 0; i < LDM_ARRAY_LEN(shapes); i++) {
        lk_conv2d_shape s = shapes[i];
        size_t nx = (size_t)s.batch * s.in_ch * s.in_h * s.in_w, nw = (size_t)s.out_ch * s.in_ch * s.k_h * s.k_w;
        size_t ny = (size_t)s.batch * s.out_ch * lk_conv2d_out_h(&s) * lk_conv2d_out_w(&s);
        float *x = rand_buf(nx, 1), *w = rand_buf(nw, 1), *bias = rand_buf((size_t)s.out_ch, 1);
        uint16_t *wh = half_buf(w, nw);
        float *ref = malloc(sizeof(float) * ny), *got = malloc(sizeof(float) * ny), *first = NULL;
        ck_assert_int_eq(lk_conv2d(&ctxs[0], &s, x, w, bias, ref), LDM_OK);
        for (int c = 0; c < N_CTX; c++) {
            ck_assert_int_eq(lk_conv2d_wt(&ctxs[c], &s, x, lk_wt_f16(wh), bias, got), LDM_OK);
            expect_close(got, ref, ny, 2e-6 * sqrt((double)s.in_ch * s.k_h * s.k_w + 1), "conv2d float16 weights");
            if (first)
                expect_same(got, first, ny, "conv2d float16 weights");
            else
                first = copy_buf(got, ny);
        }
        free(first), free(x), free(w), free(wh), free(bias), free(ref), free(got);
    }
}
END_TEST

START_TEST(scratch_reuses_and_trims)
{
    lk_scratch_trim();
    char *a = lk_scratch_get(1000);
    ck_assert_ptr_nonnull(a);
    memset(a, 1, 1000); /* usable */
    lk_scratch_put(a, 1000);
    ck_assert_ptr_eq(lk_scratch_get(800), a); /* fits: the cached buffer comes back */
    char *b = lk_scratch_get(800);             /* the cache is empty now: a new one */
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_ne(a, b);
    lk_scratch_put(a, 1000);
    lk_scratch_put(b, 800);
    ck_assert_ptr_eq(lk_scratch_get(900), a); /* the smallest that fits */
    lk_scratch_put(a, 1000);
    void *huge = lk_scratch_get((size_t)300 << 20);
    ck_assert_ptr_nonnull(huge);
    lk_scratch_put(huge, (size_t)300 << 20); /* over the cache budget: freed, not kept */
    lk_scratch_trim();
    ldm_alloc_fail_after(1); /* after a trim every request allocates */
    ck_assert_ptr_null(lk_scratch_get(16));
    ldm_alloc_fail_after(0);
    /* low-memory mode: a buffer given back is freed, so the next request allocates again */
    ck_assert_int_eq(setenv("LDM_LOW_MEMORY", "1", 1), 0);
    ck_assert(lk_low_memory());
    void *p = lk_scratch_get(64);
    ck_assert_ptr_nonnull(p);
    lk_scratch_put(p, 64);
    ldm_alloc_fail_after(1);
    ck_assert_ptr_null(lk_scratch_get(64));
    ldm_alloc_fail_after(0);
    ck_assert_int_eq(setenv("LDM_LOW_MEMORY", "0", 1), 0);
    ck_assert(!lk_low_memory());
    ck_assert_int_eq(unsetenv("LDM_LOW_MEMORY"), 0);
}
END_TEST

START_TEST(conv2d_winograd_reports_oom)
{
    lk_conv2d_shape s = {1, 2, 5, 5, 2, 3, 3, 1, 1, 1, 1, 1};
    float x[50] = {0}, w[36] = {0}, y[50];
    for (int n = 1; n <= 3; n++) { /* each of its three scratch buffers */
        lk_scratch_trim(); /* a cached buffer would not allocate */
        ldm_alloc_fail_after(n);
        ck_assert_int_eq(lk_conv3x3_winograd(&ctxs[1], &s, x, lk_wt_f32(w), NULL, y, 4), LDM_ERR_OUT_OF_MEMORY);
        ldm_alloc_fail_after(0);
        ck_assert_ptr_nonnull(strstr(ldm_last_error(), "winograd"));
    }
    lk_conv2d_shape fused = {1, 16, 5, 5, 16, 3, 3, 1, 1, 1, 1, 1};
    float fx[400] = {0}, fw[2304] = {0}, fy[400];
    for (int n = 1; lk_winograd_unpacked(&fused, 4) && n <= 2; n++) { /* U, then the blocks' scratch */
        lk_scratch_trim();
        ldm_alloc_fail_after(n);
        ck_assert_int_eq(lk_conv3x3_winograd(&ctxs[1], &fused, fx, lk_wt_f32(fw), NULL, fy, 4), LDM_ERR_OUT_OF_MEMORY);
        ldm_alloc_fail_after(0);
        ck_assert_ptr_nonnull(strstr(ldm_last_error(), "winograd"));
    }
}
END_TEST

START_TEST(conv2d_direct_matches_reference)
{
    static const lk_conv2d_shape shapes[] = {
        {2, 5, 7, 9, 3, 1, 1, 1, 0, 0, 0, 0},     /* 1x1 */
        {1, 7, 9, 600, 3, 3, 3, 1, 1, 1, 1, 1},   /* output rows longer than a chunk */
        {2, 4, 6, 11, 8, 3, 3, 1, 0, 2, 1, 0},    /* asymmetric padding, 8 output channels */
        {1, 3, 5, 6, 1, 5, 3, 1, 2, 1, 2, 1},     /* non-square kernel, one output channel */
        {1, 2, 3, 3, 2, 3, 3, 1, 0, 0, 0, 0},     /* single output pixel */
        {1, 2, 4, 4, 2, 3, 3, 1, 5, 5, 5, 5},     /* padding wider than the image */
    };
    for (size_t i = 0; i < LDM_ARRAY_LEN(shapes); i++) {
        ck_assert(lk_conv_direct_applies(&shapes[i]));
        check_conv_with(shapes[i], 1, lk_conv2d_direct, "direct");
        check_conv_with(shapes[i], 0, lk_conv2d_direct, "direct");
    }
    lk_conv2d_shape strided = {1, 4, 8, 8, 4, 3, 3, 2, 1, 1, 1, 1}, wide = {1, 4, 8, 8, 9, 3, 3, 1, 1, 1, 1, 1};
    ck_assert(!lk_conv_direct_applies(&strided));
    ck_assert(!lk_conv_direct_applies(&wide));
}
END_TEST

/* lk_conv2d_up2 (and its Winograd path) = lk_ref_conv2d of the nearest 2x upsample. */
static void check_conv_up2(lk_conv2d_shape s, int winograd_m)
{
    int h = s.in_h / 2, w2 = s.in_w / 2;
    size_t nx = (size_t)s.batch * s.in_ch * h * w2, nup = nx * 4, nw = (size_t)s.out_ch * s.in_ch * 9;
    size_t ny = (size_t)s.batch * s.out_ch * lk_conv2d_out_h(&s) * lk_conv2d_out_w(&s);
    float *x = rand_buf(nx, 1), *w = rand_buf(nw, 1), *bias = rand_buf((size_t)s.out_ch, 1);
    float *up = malloc(sizeof(float) * nup), *ref = malloc(sizeof(float) * ny), *first = NULL;
    lk_resize_nearest(x, s.batch * s.in_ch, h, w2, s.in_h, s.in_w, up);
    lk_ref_conv2d(&s, up, w, bias, ref);
    char what[96];
    snprintf(what, sizeof what, "conv2d of a 2x upsample IC%d %dx%d OC%d", s.in_ch, s.in_h, s.in_w, s.out_ch);
    for (int c = 0; c < N_CTX; c++) {
        float *y = malloc(sizeof(float) * ny);
        for (size_t i = 0; i < ny; i++) y[i] = NAN;
        if (winograd_m < 0) { /* the small Winograd path with a weight cache */
            lk_wcache *wc = lk_wcache_create();
            ck_assert(wc || lk_low_memory());
            ck_assert_int_eq(lk_conv2d_up2_cached(&ctxs[c], &s, x, lk_wt_f32(w), bias, y, wc), LDM_OK);
            ck_assert(!wc || lk_wcache_bytes(wc) > 0);
            lk_wcache_free(wc);
        } else if (winograd_m)
            ck_assert_int_eq(lk_conv3x3_winograd_up2(&ctxs[c], &s, x, lk_wt_f32(w), bias, y, winograd_m), LDM_OK);
        else
            ck_assert_int_eq(lk_conv2d_up2(&ctxs[c], &s, x, lk_wt_f32(w), bias, y), LDM_OK);
        expect_close(y, ref, ny, 2e-6 * sqrt(9.0 * s.in_ch + 1), what);
        if (first) {
            expect_same(y, first, ny, what);
            free(y);
        } else
            first = y;
    }
    free(first), free(x), free(w), free(bias), free(up), free(ref);
}

/* The epilogue (lk_conv_ep: + res, then ReLU) of path m (4 or 2: that Winograd path, 0: lk_conv2d_ep's
 * own choice): bit for bit the plain convolution followed by the separate add and ReLU, close to
 * the double reference, the same for every thread count. */
static void check_conv_ep(lk_conv2d_shape s, int m, int with_res, int relu)
{
    int oh = lk_conv2d_out_h(&s), ow = lk_conv2d_out_w(&s);
    size_t nx = (size_t)s.batch * s.in_ch * s.in_h * s.in_w, nw = (size_t)s.out_ch * s.in_ch * 9;
    size_t ny = (size_t)s.batch * s.out_ch * oh * ow;
    float *x = rand_buf(nx, 1), *w = rand_buf(nw, 1), *bias = rand_buf((size_t)s.out_ch, 1);
    float *res = with_res ? rand_buf(ny, 4) : NULL, *ref = malloc(sizeof(float) * ny);
    float *plain = malloc(sizeof(float) * ny), *first = NULL;
    lk_ref_conv2d(&s, x, w, bias, ref);
    if (m)
        ck_assert_int_eq(lk_conv3x3_winograd(&ctxs[0], &s, x, lk_wt_f32(w), bias, plain, m), LDM_OK);
    else
        ck_assert_int_eq(lk_conv2d(&ctxs[0], &s, x, w, bias, plain), LDM_OK);
    for (size_t i = 0; i < ny; i++) { /* the separate passes, as taesd.c ran them */
        float v = res ? plain[i] + res[i] : plain[i];
        plain[i] = relu ? (v > 0.0f ? v : 0.0f) : v;
        double r = res ? ref[i] + (double)res[i] : ref[i];
        ref[i] = (float)(relu && r < 0 ? 0 : r);
    }
    char what[128];
    snprintf(what, sizeof what, "conv epilogue (m %d, res %d, relu %d) B%d IC%d %dx%d OC%d", m, with_res, relu,
             s.batch, s.in_ch, s.in_h, s.in_w, s.out_ch);
    lk_conv_ep ep = {.res = res, .relu = relu};
    for (int c = 0; c < N_CTX; c++) {
        float *y = malloc(sizeof(float) * ny);
        for (size_t i = 0; i < ny; i++) y[i] = NAN;
        if (m)
            ck_assert_int_eq(lk_conv3x3_winograd_ep(&ctxs[c], &s, x, lk_wt_f32(w), bias, y, m, &ep), LDM_OK);
        else
            ck_assert_int_eq(lk_conv2d_ep(&ctxs[c], &s, x, lk_wt_f32(w), bias, y, &ep), LDM_OK);
        expect_same(y, plain, ny, what);
        expect_close(y, ref, ny, 2e-6 * sqrt(9.0 * s.in_ch + 1) * 4, what);
        if (first) {
            expect_same(y, first, ny, what);
            free(y);
        } else
            first = y;
    }
    free(first), free(x), free(w), free(bias), free(res), free(ref), free(plain);
}

START_TEST(conv2d_epilogue)
{
    lk_conv2d_shape f4 = {2, 24, 30, 46, 20, 3, 3, 1, 1, 1, 1, 1};  /* Winograd F(4x4): partial tiles, OC % 8 */
    lk_conv2d_shape f2 = {1, 16, 18, 22, 16, 3, 3, 1, 1, 1, 1, 1};  /* Winograd F(2x2) */
    lk_conv2d_shape thin = {1, 4, 12, 10, 24, 3, 3, 1, 1, 1, 1, 1}; /* few channels: not Winograd */
    lk_conv2d_shape few = {1, 16, 9, 7, 5, 3, 3, 1, 1, 1, 1, 1};    /* <= 8 outputs: the direct path */
    lk_conv2d_shape unpacked = {1, 32, 14, 19, 32, 3, 3, 1, 1, 1, 1, 1}; /* products without BLAS */
    for (int k = 0; k < 3; k++) {
        check_conv_ep(unpacked, 4, k != 1, k != 0);
        check_conv_ep(unpacked, 2, k != 1, k != 0);
        int with_res = k != 1, relu = k != 0;
        check_conv_ep(f4, 4, with_res, relu);
        check_conv_ep(f2, 2, with_res, relu);
        check_conv_ep(f4, 0, with_res, relu);
        check_conv_ep(thin, 0, with_res, relu);
        check_conv_ep(few, 0, with_res, relu);
    }
}
END_TEST

START_TEST(conv2d_of_upsample)
{
    lk_conv2d_shape big = {2, 24, 20, 36, 16, 3, 3, 1, 1, 1, 1, 1};  /* Winograd through lk_conv2d_up2 */
    lk_conv2d_shape small = {1, 5, 6, 8, 12, 3, 3, 1, 1, 1, 1, 1};   /* im2col after an explicit upsample */
    lk_conv2d_shape odd = {1, 9, 10, 14, 11, 3, 3, 1, 1, 1, 1, 1};   /* channels not a multiple of 8 */
    check_conv_up2(big, 0);
    check_conv_up2(small, 0);
    for (int m = 2; m <= 4; m += 2) {
        check_conv_up2(big, m);
        check_conv_up2(small, m);
        check_conv_up2(odd, m);
    }
    /* unpacked products: several fused blocks a tile row, windows starting at odd upsampled columns */
    lk_conv2d_shape wide = {1, 32, 12, 164, 32, 3, 3, 1, 1, 1, 1, 1};
    check_conv_up2(wide, 4);
    check_conv_up2(wide, 2);
    lk_conv2d_shape level8 = {1, 64, 8, 8, 64, 3, 3, 1, 1, 1, 1, 1}; /* a small UNet's Upsample */
    if (lk_conv_wino_small_applies(&level8)) check_conv_up2(level8, -1);
    lk_conv2d_shape bad = {1, 4, 7, 8, 4, 3, 3, 1, 1, 1, 1, 1};
    float z[64] = {0};
    ck_assert_int_eq(lk_conv2d_up2(&ctxs[0], &bad, z, lk_wt_f32(z), NULL, z), LDM_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(conv2d_reports_oom)
{
    /* 12 output channels, stride 2: neither the direct nor the Winograd path, so im2col */
    lk_conv2d_shape s = {1, 2, 5, 5, 12, 3, 3, 2, 1, 1, 1, 1};
    float x[50] = {0}, w[216] = {0}, y[108];
    lk_scratch_trim(); /* a cached buffer would not allocate */
    ldm_alloc_fail_after(1);
    ck_assert_int_eq(lk_conv2d(&ctxs[1], &s, x, w, NULL, y), LDM_ERR_OUT_OF_MEMORY);
    ldm_alloc_fail_after(0);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "conv2d"));
}
END_TEST

/* ---- normalisation */

static void check_group_norm(int B, int C, int HW, int groups, float offset, int affine, float eps)
{
    size_t n = (size_t)B * C * HW;
    float *x = rand_buf(n, 2), *g = affine ? rand_buf((size_t)C, 1) : NULL, *be = affine ? rand_buf((size_t)C, 1) : NULL;
    for (size_t i = 0; i < n; i++) x[i] += offset;
    float *ref = malloc(sizeof(float) * n), *ref_silu = malloc(sizeof(float) * n);
    lk_ref_group_norm(x, B, C, HW, groups, eps, g, be, ref);
    for (size_t i = 0; i < n; i++) ref_silu[i] = (float)(ref[i] / (1.0 + exp(-(double)ref[i])));
    char what[128];
    snprintf(what, sizeof what, "group_norm B%d C%d HW%d G%d offset %g", B, C, HW, groups, offset);
    float *first = NULL, *first_silu = NULL;
    for (int c = 0; c < N_CTX; c++) {
        float *y = malloc(sizeof(float) * n), *ys = copy_buf(x, n);
        lk_group_norm(&ctxs[c], x, B, C, HW, groups, eps, g, be, y);
        lk_group_norm_silu(&ctxs[c], ys, B, C, HW, groups, eps, g, be, ys); /* in place */
        expect_close(y, ref, n, 4e-6, what);
        expect_close(ys, ref_silu, n, 4e-6, what);
        if (first) {
            expect_same(y, first, n, what);
            expect_same(ys, first_silu, n, what);
            free(y), free(ys);
        } else
            first = y, first_silu = ys;
    }
    free(first), free(first_silu), free(x), free(g), free(be), free(ref), free(ref_silu);
}

START_TEST(group_norm_matches_reference)
{
    check_group_norm(2, 64, 37, 32, 0.0f, 1, 1e-5f);
    check_group_norm(1, 96, 64, 32, 0.5f, 1, 1e-6f);  /* 3 channels per group */
    check_group_norm(2, 64, 1024, 32, 0.0f, 1, 1e-6f); /* big enough to go parallel */
    check_group_norm(1, 32, 300, 32, 100.0f, 1, 1e-5f); /* large mean: variance precision */
    check_group_norm(3, 6, 5, 3, 0.0f, 0, 1e-5f);       /* no affine */
    check_group_norm(1, 32, 1, 32, 0.0f, 1, 1e-5f);     /* one value per group: var 0 */
}
END_TEST

START_TEST(group_norm_known_values)
{
    /* One group of 4 values 1,2,3,4: mean 2.5, biased var 1.25. */
    float x[4] = {1, 2, 3, 4}, y[4];
    lk_group_norm(NULL, x, 1, 1, 4, 1, 0.0f, NULL, NULL, y);
    for (int i = 0; i < 4; i++) ck_assert_float_eq_tol(y[i], (float)((x[i] - 2.5) / sqrt(1.25)), 1e-6);
    float gamma = 2.0f, beta = -1.0f;
    lk_group_norm(NULL, x, 1, 1, 4, 1, 0.75f, &gamma, &beta, y); /* eps added to the variance */
    for (int i = 0; i < 4; i++) ck_assert_float_eq_tol(y[i], (float)((x[i] - 2.5) / sqrt(2.0) * 2 - 1), 1e-6);
}
END_TEST

static void check_layer_norm(int rows, int dim, int affine)
{
    size_t n = (size_t)rows * dim;
    float *x = rand_buf(n, 3), *g = affine ? rand_buf((size_t)dim, 1) : NULL, *b = affine ? rand_buf((size_t)dim, 1) : NULL;
    float *ref = malloc(sizeof(float) * n), *first = NULL;
    lk_ref_layer_norm(x, rows, dim, 1e-5f, g, b, ref);
    for (int c = 0; c < N_CTX; c++) {
        float *y = copy_buf(x, n);
        lk_layer_norm(&ctxs[c], y, rows, dim, 1e-5f, g, b, y); /* in place */
        expect_close(y, ref, n, 4e-6, "layer_norm");
        if (first) {
            expect_same(y, first, n, "layer_norm");
            free(y);
        } else
            first = y;
    }
    free(first), free(x), free(g), free(b), free(ref);
}

START_TEST(layer_norm_matches_reference)
{
    check_layer_norm(1, 1, 1);
    check_layer_norm(33, 77, 1);
    check_layer_norm(300, 128, 1);
    check_layer_norm(5, 16, 0);
    float x[3] = {1, 2, 6}, y[3]; /* mean 3, var 14/3 */
    lk_layer_norm(NULL, x, 1, 3, 0.0f, NULL, NULL, y);
    for (int i = 0; i < 3; i++) ck_assert_float_eq_tol(y[i], (float)((x[i] - 3) / sqrt(14.0 / 3)), 1e-6);
}
END_TEST

/* ---- activations */

START_TEST(activation_known_values)
{
    float g[3] = {1, -1, 0};
    lk_gelu(g, 3);
    ck_assert_float_eq_tol(g[0], 0.8413447460685429f, 1e-6);
    ck_assert_float_eq_tol(g[1], -0.15865525393145707f, 1e-6);
    ck_assert_float_eq(g[2], 0.0f);
    float q[2] = {1, -1};
    lk_quick_gelu(q, 2);
    ck_assert_float_eq_tol(q[0], 0.8457957659328212f, 1e-6);
    ck_assert_float_eq_tol(q[1], -0.1542042340671787f, 1e-6);
    float s[3] = {1, -2, 0};
    lk_silu(s, 3);
    ck_assert_float_eq_tol(s[0], 0.7310585786300049f, 1e-6);
    ck_assert_float_eq_tol(s[1], -0.2384058440442351f, 1e-6);
    ck_assert_float_eq(s[2], 0.0f);
    float big[2] = {-200, 200}; /* no overflow to NaN at the extremes */
    lk_silu(big, 2);
    ck_assert_float_eq_tol(big[0], 0.0f, 1e-30);
    ck_assert_float_eq(big[1], 200.0f);

    float sm[6] = {1, 2, 3, 1000, 1001, 1000};
    lk_softmax_rows(sm, 2, 3);
    ck_assert_float_eq_tol(sm[0], 0.09003057317038046f, 1e-7);
    ck_assert_float_eq_tol(sm[1], 0.24472847105479767f, 1e-7);
    ck_assert_float_eq_tol(sm[2], 0.6652409557748219f, 1e-7);
    ck_assert_float_eq_tol(sm[3], 0.2119415576170854f, 1e-7); /* e/(2+e)... shifted by the max */
    ck_assert_float_eq_tol(sm[4], 0.5761168847658291f, 1e-7);

    /* GEGLU: first half is the value, second half the gate. */
    float gx[4] = {2, 3, 1, -1}, go[2];
    lk_geglu(gx, 1, 2, go);
    ck_assert_float_eq_tol(go[0], 2 * 0.8413447460685429f, 2e-6);
    ck_assert_float_eq_tol(go[1], 3 * -0.15865525393145707f, 2e-6);
}
END_TEST

START_TEST(vexp_accuracy)
{
    /* relative error against double exp over the useful range, every length 0..40 for tails */
    float x[41], y[41];
    double worst = 0;
    for (int i = -8700; i <= 8830; i += 7) {
        float v = i / 100.0f;
        double want = exp((double)v);
        lk_vexp(&v, 1);
        double rel = fabs(v - want) / want;
        worst = fmax(worst, rel);
    }
    ck_assert_msg(worst < 3e-7, "vexp max relative error %.3g", worst);
    for (int n = 0; n <= 40; n++) {
        for (int i = 0; i < n; i++) x[i] = y[i] = frand() * 10;
        lk_vexp(x, (size_t)n);
        for (int i = 0; i < n; i++) { /* the same value gives the same result at any position */
            float one = y[i];
            lk_vexp(&one, 1);
            ck_assert_float_eq(one, x[i]);
        }
        for (int i = 0; i < n; i++) x[i] = y[i];
        float mx = lk_vmax(x, (size_t)n), want_mx = -INFINITY;
        for (int i = 0; i < n; i++) want_mx = fmaxf(want_mx, y[i]);
        ck_assert_float_eq(mx, want_mx);
        double want_sum = 0;
        for (int i = 0; i < n; i++) want_sum += exp((double)y[i] - 1.5);
        float sum = lk_vexp_shift_sum(x, (size_t)n, 1.5f);
        ck_assert_double_eq_tol(sum, want_sum, 1e-6 * fmax(1.0, want_sum));
        for (int i = 0; i < n; i++) ck_assert_double_eq_tol(x[i], exp((double)y[i] - 1.5), 1e-6 * exp((double)y[i] - 1.5));
    }
    float v[3] = {-INFINITY, -1000, 1000};
    lk_vexp(v, 3);
    ck_assert(v[0] >= 0 && v[0] < 1e-37f && v[1] >= 0 && v[1] < 1e-37f && isfinite(v[2]) && v[2] > 1e38f);
}
END_TEST

START_TEST(activation_ctx_variants_match_serial)
{
    size_t n = 100003;
    float *x = rand_buf(n, 6);
    void (*serial[3])(float *, size_t) = {lk_silu, lk_gelu, lk_quick_gelu};
    void (*par[3])(const lctx *, float *, size_t) = {lk_silu_ctx, lk_gelu_ctx, lk_quick_gelu_ctx};
    for (int f = 0; f < 3; f++) {
        float *a = copy_buf(x, n);
        serial[f](a, n);
        for (int c = 0; c < N_CTX; c++) {
            float *b = copy_buf(x, n);
            par[f](&ctxs[c], b, n);
            expect_same(a, b, n, "activation _ctx");
            free(b);
        }
        free(a);
    }
    int rows = 333, dim = 160;
    float *in = rand_buf((size_t)rows * 2 * dim, 4), *ga = malloc(sizeof(float) * rows * dim);
    lk_geglu(in, rows, dim, ga);
    float *sa = copy_buf(in, (size_t)rows * 2 * dim);
    lk_softmax_rows(sa, rows, 2 * dim);
    for (int c = 0; c < N_CTX; c++) {
        float *gb = malloc(sizeof(float) * rows * dim), *sb = copy_buf(in, (size_t)rows * 2 * dim);
        lk_geglu_ctx(&ctxs[c], in, rows, dim, gb);
        lk_softmax_rows_ctx(&ctxs[c], sb, rows, 2 * dim);
        expect_same(ga, gb, (size_t)rows * dim, "geglu_ctx");
        expect_same(sa, sb, (size_t)rows * 2 * dim, "softmax_rows_ctx");
        free(gb), free(sb);
    }
    /* softmax rows sum to one and agree with a double computation */
    for (int r = 0; r < rows; r++) {
        double sum = 0, mx = -INFINITY, z = 0;
        const float *row = in + (size_t)r * 2 * dim;
        for (int i = 0; i < 2 * dim; i++) mx = fmax(mx, row[i]);
        for (int i = 0; i < 2 * dim; i++) z += exp(row[i] - mx);
        for (int i = 0; i < 2 * dim; i++) {
            sum += sa[(size_t)r * 2 * dim + i];
            ck_assert_double_eq_tol(sa[(size_t)r * 2 * dim + i], exp(row[i] - mx) / z, 1e-6);
        }
        ck_assert_double_eq_tol(sum, 1.0, 1e-5);
    }
    free(in), free(ga), free(sa), free(x);
}
END_TEST

/* ---- attention */

/* Storage layouts of q, k, v, out for a (B, H, T, D) problem. */
enum { LAY_BTHD, LAY_LEGACY, LAY_FUSED, LAY_STRIDED };

typedef struct att_bufs {
    float *qkv, *kv, *out;
    size_t n_qkv, n_kv, n_out;
    lk_view q, k, v, o;
} att_bufs;

/* Builds views. LAY_BTHD: q [B,Tq,H*D], k/v [B,Tk,H*D] (CrossAttention). LAY_LEGACY: one qkv
 * buffer [B*H, 3*D, T] channels-first (QKVAttentionLegacy), out [B, H*D, T]. LAY_FUSED: CLIP's
 * in_proj output [B, T, 3*H*D]. LAY_STRIDED: every element two floats apart and rows padded, so
 * BLAS cannot take it directly. */
static att_bufs make_attention(int layout, int B, int H, int Tq, int Tk, int D, float scale_in)
{
    att_bufs a = {0};
    long HD = (long)H * D;
    switch (layout) {
    case LAY_BTHD:
        a.n_qkv = (size_t)B * Tq * HD, a.n_kv = (size_t)2 * B * Tk * HD, a.n_out = (size_t)B * Tq * HD;
        a.qkv = rand_buf(a.n_qkv, scale_in), a.kv = rand_buf(a.n_kv, 1), a.out = calloc(a.n_out, sizeof(float));
        a.q = (lk_view){a.qkv, Tq * HD, D, HD, 1};
        a.k = (lk_view){a.kv, Tk * HD, D, HD, 1};
        a.v = (lk_view){a.kv + (size_t)B * Tk * HD, Tk * HD, D, HD, 1};
        a.o = (lk_view){a.out, Tq * HD, D, HD, 1};
        break;
    case LAY_LEGACY: /* Tq == Tk */
        a.n_qkv = (size_t)B * H * 3 * D * Tq, a.n_out = (size_t)B * HD * Tq;
        a.qkv = rand_buf(a.n_qkv, scale_in), a.out = calloc(a.n_out, sizeof(float));
        a.q = (lk_view){a.qkv, H * 3L * D * Tq, 3L * D * Tq, 1, Tq};
        a.k = a.q, a.k.p += (size_t)D * Tq;
        a.v = a.q, a.v.p += (size_t)2 * D * Tq;
        a.o = (lk_view){a.out, HD * Tq, (long)D * Tq, 1, Tq};
        break;
    case LAY_FUSED: /* Tq == Tk */
        a.n_qkv = (size_t)B * Tq * 3 * HD, a.n_out = (size_t)B * Tq * HD;
        a.qkv = rand_buf(a.n_qkv, scale_in), a.out = calloc(a.n_out, sizeof(float));
        a.q = (lk_view){a.qkv, 3 * HD * Tq, D, 3 * HD, 1};
        a.k = a.q, a.k.p += HD;
        a.v = a.q, a.v.p += 2 * HD;
        a.o = (lk_view){a.out, Tq * HD, D, HD, 1};
        break;
    default: { /* LAY_STRIDED */
        long st_q = 2L * D + 3, st_k = 2L * D + 5;
        a.n_qkv = (size_t)B * H * Tq * st_q, a.n_kv = (size_t)2 * B * H * Tk * st_k;
        a.n_out = (size_t)B * H * Tq * st_q;
        a.qkv = rand_buf(a.n_qkv, scale_in), a.kv = rand_buf(a.n_kv, 1), a.out = calloc(a.n_out, sizeof(float));
        a.q = (lk_view){a.qkv, H * Tq * st_q, Tq * st_q, st_q, 2};
        a.k = (lk_view){a.kv, H * Tk * st_k, Tk * st_k, st_k, 2};
        a.v = a.k, a.v.p += (size_t)B * H * Tk * st_k;
        a.o = (lk_view){a.out, H * Tq * st_q, Tq * st_q, st_q, 2};
    }
    }
    return a;
}

static void gather_out(lk_view o, int B, int H, int T, int D, float *dst)
{
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++)
                for (int d = 0; d < D; d++)
                    *dst++ = o.p[(long)b * o.sb + (long)h * o.sh + (long)t * o.st + (long)d * o.sd];
}

typedef ldm_status (*attention_fn)(const lctx *, int, int, int, int, int, lk_view, lk_view, lk_view, lk_view, float,
                                   int);

/* lk_attention and both implementations behind it (the fused one where the CPU has it) against
 * the reference, each bit for bit across thread counts. */
static void check_attention(int layout, int B, int H, int Tq, int Tk, int D, int causal, float scale_in)
{
    att_bufs a = make_attention(layout, B, H, Tq, Tk, D, scale_in);
    size_t n = (size_t)B * H * Tq * D;
    float scale = 1.0f / sqrtf((float)D);
    float *ref = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
    lk_ref_attention(B, H, Tq, Tk, D, a.q, a.k, a.v, a.o, scale, causal);
    gather_out(a.o, B, H, Tq, D, ref);
    static const attention_fn fns[] = {lk_attention, lk_attention_blas, lk_attention_fused};
    static const char *const names[] = {"lk_attention", "blas", "fused"};
    for (int f = 0; f < 3; f++) {
        if (fns[f] == lk_attention_fused && !lk_attention_fused_available()) continue;
        char what[160];
        snprintf(what, sizeof what, "attention (%s) layout %d B%d H%d Tq%d Tk%d D%d causal %d", names[f], layout, B, H,
                 Tq, Tk, D, causal);
        float *first = NULL;
        for (int c = 0; c < N_CTX; c++) {
            for (size_t i = 0; i < a.n_out; i++) a.out[i] = NAN; /* out must be fully written */
            ck_assert_int_eq(fns[f](&ctxs[c], B, H, Tq, Tk, D, a.q, a.k, a.v, a.o, scale, causal), LDM_OK);
            gather_out(a.o, B, H, Tq, D, got);
            expect_close(got, ref, n, 3e-6 * sqrt(D + 1.0), what);
            if (first)
                expect_same(got, first, n, what);
            else
                first = copy_buf(got, n);
        }
        free(first);
    }
    free(ref), free(got), free(a.qkv), free(a.kv), free(a.out);
}

START_TEST(attention_layouts)
{
    for (int causal = 0; causal < 2; causal++) {
        check_attention(LAY_BTHD, 2, 3, 37, 37, 16, causal, 1);
        check_attention(LAY_BTHD, 2, 4, 50, 7, 12, causal, 1); /* cross-attention, Tq > Tk */
        check_attention(LAY_BTHD, 1, 2, 5, 90, 8, causal, 1);  /* Tq < Tk */
        check_attention(LAY_LEGACY, 2, 2, 64, 64, 16, causal, 1);
        check_attention(LAY_LEGACY, 1, 1, 65, 65, 32, causal, 1); /* AE AttnBlock: one head, odd T */
        check_attention(LAY_FUSED, 2, 2, 77, 77, 16, causal, 1);  /* CLIP */
        check_attention(LAY_STRIDED, 2, 2, 33, 20, 6, causal, 1); /* packed path */
        check_attention(LAY_BTHD, 1, 1, 1, 1, 1, causal, 1);
        check_attention(LAY_BTHD, 2, 2, 60, 77, 40, causal, 1);  /* SD head sizes: 40, 80, 160 */
        check_attention(LAY_BTHD, 1, 2, 50, 50, 80, causal, 1);
        check_attention(LAY_BTHD, 1, 1, 20, 30, 160, causal, 1);
    }
}
END_TEST

START_TEST(attention_long_sequence_tiles)
{
    /* Several query and key tiles; scaled-up queries make the row maximum move between key
     * tiles, exercising the online-softmax rescaling. */
    for (int causal = 0; causal < 2; causal++) {
        check_attention(LAY_BTHD, 1, 2, 700, 1100, 8, causal, 4);
        check_attention(LAY_LEGACY, 1, 2, 1030, 1030, 8, causal, 4);
        check_attention(LAY_STRIDED, 1, 1, 600, 520, 4, causal, 3);
    }
}
END_TEST

START_TEST(attention_reports_oom)
{
    att_bufs a = make_attention(LAY_BTHD, 1, 1, 4, 4, 4, 1);
    lk_scratch_trim();
    ldm_alloc_fail_after(1);
    ck_assert_int_eq(lk_attention(&ctxs[1], 1, 1, 4, 4, 4, a.q, a.k, a.v, a.o, 0.5f, 0), LDM_ERR_OUT_OF_MEMORY);
    ldm_alloc_fail_after(0);
    free(a.qkv), free(a.kv), free(a.out);
}
END_TEST

/* ---- resampling */

START_TEST(resize_nearest_values)
{
    float x[5] = {10, 11, 12, 13, 14}, y[8];
    lk_resize_nearest(x, 1, 1, 2, 1, 4, y); /* exact 2x: src = dst >> 1 */
    ck_assert(y[0] == 10 && y[1] == 10 && y[2] == 11 && y[3] == 11);
    lk_resize_nearest(x, 1, 1, 3, 1, 2, y); /* scale 1.5: 0, 1 */
    ck_assert(y[0] == 10 && y[1] == 11);
    lk_resize_nearest(x, 1, 1, 4, 1, 3, y); /* scale 1.333: 0, 1, 2 */
    ck_assert(y[0] == 10 && y[1] == 11 && y[2] == 12);
    lk_resize_nearest(x, 1, 1, 5, 1, 3, y); /* scale 1.667: 0, 1, 3 */
    ck_assert(y[0] == 10 && y[1] == 11 && y[2] == 13);
    lk_resize_nearest(x, 1, 1, 3, 1, 7, y); /* scale 0.4286: 0,0,0,1,1,2,2 */
    static const float want7[7] = {10, 10, 10, 11, 11, 12, 12};
    for (int i = 0; i < 7; i++) ck_assert_float_eq(y[i], want7[i]);
    /* 2-D, 2 planes, 4x4 -> 2x2 picks the even rows/columns */
    float img[32], out[8];
    for (int i = 0; i < 32; i++) img[i] = (float)i;
    lk_resize_nearest(img, 2, 4, 4, 2, 2, out);
    static const float want[8] = {0, 2, 8, 10, 16, 18, 24, 26};
    for (int i = 0; i < 8; i++) ck_assert_float_eq(out[i], want[i]);
    /* exact 2x in both directions (its own fast path): 2 planes 3x5 -> 6x10 */
    float up[2 * 6 * 10];
    lk_resize_nearest(img, 2, 3, 5, 6, 10, up);
    for (int p = 0; p < 2; p++)
        for (int oh = 0; oh < 6; oh++)
            for (int ow = 0; ow < 10; ow++)
                ck_assert_float_eq(up[(p * 6 + oh) * 10 + ow], img[(p * 3 + oh / 2) * 5 + ow / 2]);
}
END_TEST

START_TEST(resize_bilinear_values)
{
    /* Upscale x2 of [0, 1]: src = (dst+0.5)/2 - 0.5 = -0.25 (clamped), 0.25, 0.75, 1.25 (tap clamped). */
    float x[2] = {0, 1}, y[4];
    lk_resize_bilinear(x, 1, 1, 2, 1, 4, 2.0, 2.0, y);
    ck_assert_float_eq_tol(y[0], 0.0f, 1e-7);
    ck_assert_float_eq_tol(y[1], 0.25f, 1e-7);
    ck_assert_float_eq_tol(y[2], 0.75f, 1e-7);
    ck_assert_float_eq_tol(y[3], 1.0f, 1e-7);
    /* Scale 0.5 equals a 2x2 average pool with floor, also on odd sizes (the SpatialRescaler). */
    static const int sizes[][2] = {{4, 6}, {5, 7}, {11, 19}, {22, 38}};
    for (size_t s = 0; s < LDM_ARRAY_LEN(sizes); s++) {
        int H = sizes[s][0], W = sizes[s][1], OH = H / 2, OW = W / 2;
        float *in = rand_buf((size_t)3 * H * W, 1), *a = malloc(sizeof(float) * 3 * OH * OW),
              *b = malloc(sizeof(float) * 3 * OH * OW);
        lk_resize_bilinear(in, 3, H, W, OH, OW, 0.5, 0.5, a);
        lk_avg_pool2(in, 3, H, W, b);
        expect_close(a, b, (size_t)3 * OH * OW, 2e-7, "bilinear 0.5 vs avg_pool2");
        free(in), free(a), free(b);
    }
    /* A 2-D value by hand: 2x2 -> 3x3 with scale 1.5: src = (dst+0.5)/1.5 - 0.5 = 0 (clamped), 0.5, 1.1667 */
    float sq[4] = {0, 1, 2, 3}, o[9];
    lk_resize_bilinear(sq, 1, 2, 2, 3, 3, 1.5, 1.5, o);
    ck_assert_float_eq_tol(o[0], 0.0f, 1e-6);
    ck_assert_float_eq_tol(o[1], 0.5f, 1e-6);
    ck_assert_float_eq_tol(o[2], 1.0f, 1e-6);
    ck_assert_float_eq_tol(o[4], 1.5f, 1e-6); /* 0.5 row, 0.5 column */
    ck_assert_float_eq_tol(o[8], 3.0f, 1e-6);
}
END_TEST

START_TEST(avg_pool2_values)
{
    float x[15], y[2];
    for (int i = 0; i < 15; i++) x[i] = (float)i; /* 3x5 -> 1x2 */
    lk_avg_pool2(x, 1, 3, 5, y);
    ck_assert_float_eq(y[0], (0 + 1 + 5 + 6) / 4.0f);
    ck_assert_float_eq(y[1], (2 + 3 + 7 + 8) / 4.0f);
}
END_TEST

START_TEST(elementwise_values)
{
    float y[6] = {1, 2, 3, 4, 5, 6}, x[6] = {1, 1, 1, 1, 1, 1}, bias[3] = {10, 20, 30};
    lk_add(y, x, 6);
    ck_assert_float_eq(y[5], 7.0f);
    lk_add_bias_channels(y, 2, 3, 1, bias); /* [2,3,1] */
    static const float want[6] = {12, 23, 34, 15, 26, 37};
    for (int i = 0; i < 6; i++) ck_assert_float_eq(y[i], want[i]);
}
END_TEST

static Suite *kernels_suite(void)
{
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup_pools, teardown_pools);
    tcase_add_test(tc, pool_runs_every_task_once);
    tcase_add_test(tc, pool_nested_run_is_serial);
    tcase_add_test(tc, pool_concurrent_callers);
    tcase_add_test(tc, pool_single_thread_and_free);
    tcase_add_test(tc, gemm_matches_reference);
    tcase_add_test(tc, gemm_small_matches_reference);
    tcase_add_test(tc, gemm_skinny_matches_reference);
    tcase_add_test(tc, conv2d_small_matches_reference);
    tcase_add_test(tc, conv2d_wino_small_matches_reference);
    tcase_add_test(tc, linear_cached_matches_reference);
    tcase_add_test(tc, linear_matches_reference);
    tcase_add_test(tc, conv2d_matches_reference);
    tcase_add_test(tc, conv2d_row_blocks);
    tcase_add_test(tc, conv2d_winograd_matches_reference);
    tcase_add_test(tc, conv2d_winograd_unpacked_products);
    tcase_add_test(tc, conv2d_winograd_fused_blocks);
    tcase_add_test(tc, conv2d_direct_matches_reference);
    tcase_add_test(tc, conv2d_of_upsample);
    tcase_add_test(tc, conv2d_epilogue);
    tcase_add_test(tc, conv2d_winograd_reports_oom);
    tcase_add_test(tc, scratch_reuses_and_trims);
    tcase_add_test(tc, half_to_float_is_exact);
    tcase_add_test(tc, half_weights_in_products);
    tcase_add_test(tc, half_weights_in_convolutions);
    tcase_add_test(tc, conv2d_reports_oom);
    tcase_add_test(tc, group_norm_matches_reference);
    tcase_add_test(tc, group_norm_known_values);
    tcase_add_test(tc, layer_norm_matches_reference);
    tcase_add_test(tc, activation_known_values);
    tcase_add_test(tc, vexp_accuracy);
    tcase_add_test(tc, activation_ctx_variants_match_serial);
    tcase_add_test(tc, attention_layouts);
    tcase_add_test(tc, attention_long_sequence_tiles);
    tcase_add_test(tc, attention_reports_oom);
    tcase_add_test(tc, resize_nearest_values);
    tcase_add_test(tc, resize_bilinear_values);
    tcase_add_test(tc, avg_pool2_values);
    tcase_add_test(tc, elementwise_values);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ck_run_suite(kernels_suite());
}
