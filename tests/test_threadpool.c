/* test_threadpool.c - the pool's behaviour when it has nothing or little to do: idle workers
 * sleep instead of spinning, tiny kernel calls never reach the pool (they run on the calling
 * thread), big ones do, and jobs published while workers sleep are never lost. The pool's and
 * kernels' results themselves are tested in test_kernels.c. */
#include <check.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "core/ctx.h"
#include "kernels/kernels.h"
#include "support/ck_run.h"

/* CPU seconds (user + system) of every thread of this process so far. */
static double process_cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

typedef struct count_job {
    atomic_int *hits;
    int spin; /* busy work per task */
} count_job;

static void count_task(void *arg, int task)
{
    const count_job *j = arg;
    volatile double x = 0;
    for (int i = 0; i < j->spin; i++) x += i * 0.5;
    atomic_fetch_add(&j->hits[task], 1);
}

START_TEST(idle_pool_sleeps)
{
    lk_blas_init(); /* BLAS's own idle threads (if any) are stopped: only the pool is measured */
    lpool *pool = lpool_create(3);
    ck_assert_ptr_nonnull(pool);
    atomic_int hits[64] = {0};
    count_job j = {hits, 20000};
    for (int r = 0; r < 10; r++) lpool_run(pool, 64, count_task, &j);
    for (int i = 0; i < 64; i++) ck_assert_int_eq(atomic_load(&hits[i]), 10);
    /* Two idle workers that spun (or sched_yield()ed) would burn about 400 ms of CPU here. */
    double c0 = process_cpu_seconds();
    sleep_us(200000);
    double used = process_cpu_seconds() - c0;
    ck_assert_msg(used < 0.03, "an idle pool used %.1f ms of CPU in 200 ms", used * 1e3);
    lpool_free(pool);
}
END_TEST

START_TEST(jobs_published_to_sleeping_workers_all_run)
{
    /* Gaps around the workers' spin time, so that jobs arrive while they spin, while they are
     * going to sleep and while they sleep: every task must run exactly once, none may hang. */
    lpool *pool = lpool_create(3);
    ck_assert_ptr_nonnull(pool);
    enum { ROUNDS = 300, TASKS = 7 };
    atomic_int hits[TASKS] = {0};
    count_job j = {hits, 200};
    for (int r = 0; r < ROUNDS; r++) {
        lpool_run(pool, TASKS, count_task, &j);
        sleep_us(r % 4 == 0 ? 0 : 10 + (r * 37) % 120);
    }
    for (int i = 0; i < TASKS; i++) ck_assert_int_eq(atomic_load(&hits[i]), ROUNDS);
    ck_assert_uint_eq(lpool_dispatched(pool), ROUNDS);
    lpool_free(pool);
}
END_TEST

static float *filled(size_t n, float v)
{
    float *p = malloc(sizeof(float) * n);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = v + (float)(i % 13) * 0.01f;
    return p;
}

/* A handful of kernels on the shapes a batch-1 evaluation of a tiny model uses. */
static void tiny_ops(const lctx *c)
{
    float *a = filled(4096, 0.1f), *b = filled(4096, 0.2f), *y = filled(4096, 0.0f);
    lk_gemm(c, 0, 0, 16, 16, 16, 1.0f, a, 16, b, 16, 0.0f, y, 16);
    lk_silu_ctx(c, a, 4096);
    lk_group_norm(c, b, 1, 32, 64, 8, 1e-5f, NULL, NULL, y);
    lk_conv2d_shape s = {1, 4, 8, 8, 4, 3, 3, 1, 1, 1, 1, 1};
    ck_assert_int_eq(lk_conv2d(c, &s, a, b, NULL, y), LDM_OK);
    lk_view q = {a, 0, 128, 16, 1}, k = {b, 0, 128, 16, 1}, out = {y, 0, 128, 16, 1};
    ck_assert_int_eq(lk_attention(c, 1, 2, 8, 8, 16, q, k, k, out, 0.25f, 0), LDM_OK);
    free(a);
    free(b);
    free(y);
}

START_TEST(tiny_ops_stay_on_the_calling_thread)
{
    lctx c = {lpool_create(2), NULL, NULL, NULL};
    ck_assert_ptr_nonnull(c.pool);
    tiny_ops(&c);
    ck_assert_uint_eq(lpool_dispatched(c.pool), 0);

    /* A 256^3 product (33 MFLOP) and an activation over 4 MiB are worth splitting. */
    size_t n = 256 * 256;
    float *a = filled(n, 0.1f), *b = filled(n, 0.2f), *y = filled(n, 0.0f), *big = filled(1 << 20, 0.3f);
    lk_gemm(&c, 0, 0, 256, 256, 256, 1.0f, a, 256, b, 256, 0.0f, y, 256);
    unsigned long after_gemm = lpool_dispatched(c.pool);
    ck_assert_uint_gt(after_gemm, 0);
    lk_silu_ctx(&c, big, (size_t)1 << 20);
    ck_assert_uint_gt(lpool_dispatched(c.pool), after_gemm);
    free(a);
    free(b);
    free(y);
    free(big);
    lpool_free(c.pool);
}
END_TEST

START_TEST(threshold_does_not_depend_on_thread_count)
{
    /* The same shapes with 2 and 3 threads dispatch the same number of jobs: the decision is
     * taken from the shape alone. */
    unsigned long d[2];
    for (int t = 0; t < 2; t++) {
        lctx c = {lpool_create(2 + t), NULL, NULL, NULL};
        ck_assert_ptr_nonnull(c.pool);
        tiny_ops(&c);
        float *x = filled(1 << 16, 0.5f);
        lk_silu_ctx(&c, x, 1 << 16); /* 512 KiB moved: above the threshold */
        free(x);
        d[t] = lpool_dispatched(c.pool);
        lpool_free(c.pool);
    }
    ck_assert_uint_eq(d[0], d[1]);
    ck_assert_uint_eq(d[0], 1);
}
END_TEST

static Suite *threadpool_suite(void)
{
    Suite *s = suite_create("threadpool");
    TCase *tc = tcase_create("idle");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, idle_pool_sleeps);
    tcase_add_test(tc, jobs_published_to_sleeping_workers_all_run);
    tcase_add_test(tc, tiny_ops_stay_on_the_calling_thread);
    tcase_add_test(tc, threshold_does_not_depend_on_thread_count);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return ck_run_suite(threadpool_suite()); }
