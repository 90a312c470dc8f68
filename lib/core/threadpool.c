/* threadpool.c - the compute thread pool behind lctx (see ctx.h).
 *
 * A fixed set of n_threads-1 pthread workers plus the calling thread. lpool_run publishes one job
 * (function, argument, task count) under a mutex and bumps a generation counter; the caller and
 * every worker that wakes up in time grab task indices from a shared atomic counter until they run
 * out. A worker joins a job (under the mutex, so it can only ever see the current job) only while
 * unclaimed tasks remain, and the caller returns once its own share is done and every joined
 * worker has left. So lpool_run never waits for a worker that is asleep or descheduled (the
 * machine is often shared), and a late worker can never run a task of a finished job. Idle
 * workers spin very briefly (the next job of a network usually follows within microseconds) and
 * then sleep on a condition variable, so an idle pool costs no CPU. Concurrent lpool_run calls on
 * one pool are serialised by a second mutex; a task that calls lpool_run on its own pool runs that
 * inner job serially instead of deadlocking. */
#include "ctx.h"

#include "common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

/* Spin iterations before a waiting thread blocks; short enough that an idle pool sleeps almost
 * at once (the machine is often shared), long enough to catch back-to-back kernel calls. */
#define LPOOL_SPIN 4000

struct lpool {
    int n_threads; /* including the caller */
    int n_workers; /* threads actually started */
    pthread_t *workers;

    pthread_mutex_t run_lock; /* one lpool_run at a time */
    pthread_mutex_t lock;     /* protects everything below except the atomics */
    pthread_cond_t work_cv;   /* workers wait here for a new generation */
    pthread_cond_t done_cv;   /* the caller waits here for joined workers to leave */
    atomic_ulong generation;
    int shutdown;

    void (*fn)(void *arg, int task);
    void *arg;
    int n_tasks;
    atomic_int next_task;
    atomic_int joined; /* workers inside the current job */
};

/* The pool whose task this thread is running, to run nested lpool_run calls serially. */
static _Thread_local const lpool *current_pool;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void run_serial(int n_tasks, void (*fn)(void *arg, int task), void *arg)
{
    for (int i = 0; i < n_tasks; i++) fn(arg, i);
}

/* Grabs and runs tasks of the current job until none is left. */
static void drain_tasks(lpool *pool, void (*fn)(void *, int), void *arg, int n_tasks)
{
    const lpool *outer = current_pool;
    current_pool = pool;
    for (;;) {
        int i = atomic_fetch_add(&pool->next_task, 1);
        if (i >= n_tasks) break;
        fn(arg, i);
    }
    current_pool = outer;
}

/* Leaves the current job; the last worker out wakes the caller. */
static void leave_job(lpool *pool)
{
    if (atomic_fetch_sub(&pool->joined, 1) == 1) {
        pthread_mutex_lock(&pool->lock);
        pthread_cond_signal(&pool->done_cv);
        pthread_mutex_unlock(&pool->lock);
    }
}

/* Waits until the generation differs from `seen` (a new job, or shutdown). */
static void wait_for_job(lpool *pool, unsigned long seen)
{
    for (int spin = 0; spin < LPOOL_SPIN; spin++) {
        if (atomic_load_explicit(&pool->generation, memory_order_acquire) != seen) return;
        cpu_relax();
    }
    pthread_mutex_lock(&pool->lock);
    while (!pool->shutdown && atomic_load_explicit(&pool->generation, memory_order_relaxed) == seen)
        pthread_cond_wait(&pool->work_cv, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}

/* Under the lock: joins the current job if it still has unclaimed tasks. The increment comes
 * before the check (both sequentially consistent) so that a caller that has claimed the last
 * task either sees this worker in `joined` or this worker sees no task left. */
static int try_join(lpool *pool)
{
    atomic_fetch_add(&pool->joined, 1);
    if (atomic_load(&pool->next_task) < pool->n_tasks) return 1;
    if (atomic_fetch_sub(&pool->joined, 1) == 1) pthread_cond_signal(&pool->done_cv); /* lock held */
    return 0;
}

static void *worker_main(void *p)
{
    lpool *pool = p;
    unsigned long seen = 0;
    for (;;) {
        wait_for_job(pool, seen);
        pthread_mutex_lock(&pool->lock);
        seen = atomic_load_explicit(&pool->generation, memory_order_relaxed);
        if (pool->shutdown) {
            pthread_mutex_unlock(&pool->lock);
            break;
        }
        int joined = pool->n_tasks > 0 && try_join(pool);
        void (*fn)(void *, int) = pool->fn;
        void *arg = pool->arg;
        int n_tasks = pool->n_tasks;
        pthread_mutex_unlock(&pool->lock);
        if (!joined) continue;
        drain_tasks(pool, fn, arg, n_tasks);
        leave_job(pool);
    }
    return NULL;
}

static void stop_workers(lpool *pool)
{
    pthread_mutex_lock(&pool->lock);
    pool->shutdown = 1;
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->work_cv);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->n_workers; i++) pthread_join(pool->workers[i], NULL);
    pool->n_workers = 0;
}

lpool *lpool_create(int n_threads)
{
    if (n_threads < 1) n_threads = 1;
    lpool *pool = ldm_calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->run_lock, NULL);
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->work_cv, NULL);
    pthread_cond_init(&pool->done_cv, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->next_task, 0);
    atomic_init(&pool->joined, 0);
    if (n_threads > 1) {
        pool->workers = ldm_calloc((size_t)n_threads - 1, sizeof *pool->workers);
        if (!pool->workers) {
            lpool_free(pool);
            return NULL;
        }
        for (int i = 0; i < n_threads - 1; i++) {
            int rc = pthread_create(&pool->workers[i], NULL, worker_main, pool);
            if (rc != 0) {
                lpool_free(pool);
                ldm_fail(LDM_ERR_OUT_OF_MEMORY, "thread pool: cannot start worker thread %d of %d (%s)", i + 1,
                         n_threads - 1, strerror(rc));
                return NULL;
            }
            pool->n_workers++;
        }
    }
    return pool;
}

void lpool_free(lpool *pool)
{
    if (!pool) return;
    stop_workers(pool);
    pthread_cond_destroy(&pool->done_cv);
    pthread_cond_destroy(&pool->work_cv);
    pthread_mutex_destroy(&pool->lock);
    pthread_mutex_destroy(&pool->run_lock);
    ldm_free(pool->workers);
    ldm_free(pool);
}

int lpool_threads(const lpool *pool) { return pool ? pool->n_threads : 1; }

/* Waits until every worker that joined the current job has left it. */
static void wait_workers_done(lpool *pool)
{
    for (int spin = 0; spin < LPOOL_SPIN; spin++) {
        if (atomic_load(&pool->joined) == 0) return;
        cpu_relax();
    }
    pthread_mutex_lock(&pool->lock);
    while (atomic_load(&pool->joined) != 0) pthread_cond_wait(&pool->done_cv, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}

void lpool_run(lpool *pool, int n_tasks, void (*fn)(void *arg, int task), void *arg)
{
    if (n_tasks <= 0) return;
    if (!pool || pool->n_workers == 0 || n_tasks == 1 || current_pool == pool) {
        run_serial(n_tasks, fn, arg);
        return;
    }
    pthread_mutex_lock(&pool->run_lock);
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->arg = arg;
    pool->n_tasks = n_tasks;
    atomic_store(&pool->next_task, 0);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->work_cv);
    pthread_mutex_unlock(&pool->lock);

    drain_tasks(pool, fn, arg, n_tasks);
    wait_workers_done(pool);
    /* No task is left and no worker is inside: mark the job empty so that a worker waking up
     * late does not join it. */
    pthread_mutex_lock(&pool->lock);
    pool->n_tasks = 0;
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_unlock(&pool->run_lock);
}
