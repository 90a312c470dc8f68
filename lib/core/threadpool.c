/* threadpool.c - the compute thread pool behind lctx (see ctx.h).
 *
 * A fixed set of n_threads-1 pthread workers plus the calling thread. lpool_run publishes one job
 * (function, argument, task count) and opens it by storing its generation number in `open`; the
 * caller and every worker that notices in time grab task indices from a shared atomic counter
 * until they run out. So lpool_run never waits for a worker that is asleep or descheduled (the
 * machine is often shared): once its own share is done it closes the job (open = 0) and waits
 * only for the workers that joined it to leave.
 *
 * The hot path takes no lock and makes no system call. A worker joins job g by incrementing
 * `joined` and then re-reading `open`: both are sequentially consistent, and the caller closes
 * the job before it reads `joined`, so either the caller sees the worker (and waits for it) or
 * the worker sees the job closed (and never touches its fields, which the next lpool_run may be
 * rewriting). Generations only grow, so a late worker cannot mistake a later job for its own.
 *
 * Idle threads spin for a short, bounded time with a pause instruction (the next job of a network
 * usually follows within microseconds) and then block on a condition variable: an idle pool costs
 * no CPU, and nobody ever sched_yield()s. Sleepers announce themselves in a counter before their
 * last check (the same store-then-load pairing as above), and the thread that wakes them reads
 * that counter after its own store and broadcasts under the mutex, so a wake-up cannot be lost;
 * when nobody sleeps, no lock is taken at all.
 *
 * Concurrent lpool_run calls on one pool are serialised by a mutex; a task that calls lpool_run
 * on its own pool runs that inner job serially instead of deadlocking. */
#include "ctx.h"

#include "common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

/* How long a waiting thread spins before it blocks. Long enough to bridge the gap between two
 * kernels of a network (a few microseconds of glue), short enough that a pool left idle sleeps
 * almost at once and does not steal a shared core from other work. */
#define LPOOL_SPIN_NS 200000L
#define LPOOL_SPIN_CHECK 64 /* pause iterations between two clock reads */

struct lpool {
    int n_threads; /* including the caller */
    int n_workers; /* threads actually started */
    pthread_t *workers;

    pthread_mutex_t run_lock; /* one lpool_run at a time */
    pthread_mutex_t lock;     /* only for sleeping and waking */
    pthread_cond_t work_cv;   /* idle workers sleep here */
    pthread_cond_t done_cv;   /* the caller sleeps here until joined workers have left */

    atomic_ulong generation; /* of the last job published (or of the shutdown) */
    atomic_ulong open;       /* the generation of the job workers may join; 0: none */
    atomic_int shutdown;
    atomic_int sleepers;       /* workers blocked (or about to block) on work_cv */
    atomic_int caller_waiting; /* the caller blocked (or about to block) on done_cv */
    atomic_ulong dispatched;   /* jobs handed to the workers, for tests and benchmarks */

    /* The current job: written by lpool_run while it is closed and no worker is inside. */
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
#elif defined(__aarch64__)
    __asm__ __volatile__("yield"); /* a hint to the core, not the sched_yield system call */
#endif
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Spins with a pause until done(pool) holds or the spin budget is used; returns done(pool). */
static int spin_until(lpool *pool, int (*done)(lpool *pool))
{
    long long deadline = 0;
    for (int i = 1;; i++) {
        if (done(pool)) return 1;
        cpu_relax();
        if (i % LPOOL_SPIN_CHECK) continue;
        long long t = now_ns();
        if (!deadline) deadline = t + LPOOL_SPIN_NS;
        else if (t >= deadline) return done(pool);
    }
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

/* ---------------------------------------------------------------- workers */

static _Thread_local unsigned long worker_seen; /* the last generation this worker looked at */

static int new_generation(lpool *pool) { return atomic_load(&pool->generation) != worker_seen; }

/* Waits until a job newer than worker_seen is published (or the pool shuts down). */
static void wait_for_job(lpool *pool)
{
    if (spin_until(pool, new_generation)) return;
    pthread_mutex_lock(&pool->lock);
    atomic_fetch_add(&pool->sleepers, 1);
    while (!new_generation(pool)) pthread_cond_wait(&pool->work_cv, &pool->lock);
    atomic_fetch_sub(&pool->sleepers, 1);
    pthread_mutex_unlock(&pool->lock);
}

/* Leaves a job; the last worker out wakes the caller if it went to sleep. */
static void leave_job(lpool *pool)
{
    if (atomic_fetch_sub(&pool->joined, 1) == 1 && atomic_load(&pool->caller_waiting)) {
        pthread_mutex_lock(&pool->lock);
        pthread_cond_signal(&pool->done_cv);
        pthread_mutex_unlock(&pool->lock);
    }
}

/* Joins job g if it is still open, runs tasks of it, leaves. */
static void work_on(lpool *pool, unsigned long g)
{
    atomic_fetch_add(&pool->joined, 1);
    if (atomic_load(&pool->open) == g) drain_tasks(pool, pool->fn, pool->arg, pool->n_tasks);
    leave_job(pool);
}

static void *worker_main(void *p)
{
    lpool *pool = p;
    worker_seen = 0;
    for (;;) {
        wait_for_job(pool);
        worker_seen = atomic_load(&pool->generation);
        if (atomic_load(&pool->shutdown)) break;
        work_on(pool, worker_seen);
    }
    return NULL;
}

/* Makes a new generation visible to idle workers, waking the ones that sleep. */
static void publish(lpool *pool, unsigned long g)
{
    atomic_store(&pool->generation, g);
    if (atomic_load(&pool->sleepers) == 0) return;
    pthread_mutex_lock(&pool->lock);
    pthread_cond_broadcast(&pool->work_cv);
    pthread_mutex_unlock(&pool->lock);
}

static void stop_workers(lpool *pool)
{
    atomic_store(&pool->shutdown, 1);
    publish(pool, atomic_load(&pool->generation) + 1);
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
    atomic_init(&pool->open, 0);
    atomic_init(&pool->shutdown, 0);
    atomic_init(&pool->sleepers, 0);
    atomic_init(&pool->caller_waiting, 0);
    atomic_init(&pool->dispatched, 0);
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

unsigned long lpool_dispatched(const lpool *pool) { return pool ? atomic_load(&pool->dispatched) : 0; }

/* ---------------------------------------------------------------- the caller */

static int workers_left(lpool *pool) { return atomic_load(&pool->joined) == 0; }

/* Waits until every worker that joined the closed job has left it. */
static void wait_workers_done(lpool *pool)
{
    if (spin_until(pool, workers_left)) return;
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->caller_waiting, 1);
    while (!workers_left(pool)) pthread_cond_wait(&pool->done_cv, &pool->lock);
    atomic_store(&pool->caller_waiting, 0);
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
    /* The previous job is closed and empty: no worker reads these fields now. */
    pool->fn = fn;
    pool->arg = arg;
    pool->n_tasks = n_tasks;
    atomic_store(&pool->next_task, 0);
    unsigned long g = atomic_load(&pool->generation) + 1;
    atomic_store(&pool->open, g);
    atomic_fetch_add_explicit(&pool->dispatched, 1, memory_order_relaxed);
    publish(pool, g);

    drain_tasks(pool, fn, arg, n_tasks);
    atomic_store(&pool->open, 0); /* late workers back off from here on */
    wait_workers_done(pool);
    pthread_mutex_unlock(&pool->run_lock);
}
