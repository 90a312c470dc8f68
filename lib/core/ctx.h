/* ctx.h - the compute context every kernel and model function receives: the thread pool to run
 * on and the cancellation flag to poll. One per model; never global. */
#ifndef LDM_CORE_CTX_H
#define LDM_CORE_CTX_H

#include <stdatomic.h>

typedef struct lpool lpool;

/* A pool of n_threads workers in total (the calling thread counts as one; n_threads <= 1 means
 * run everything on the caller). NULL with the error set on failure. */
lpool *lpool_create(int n_threads);
void lpool_free(lpool *pool);
int lpool_threads(const lpool *pool);
/* Runs fn(arg, i) for every i in [0, n_tasks) across the pool (the caller works too) and returns
 * when all are done. Tasks must not call lpool_run on the same pool. pool may be NULL (serial). */
void lpool_run(lpool *pool, int n_tasks, void (*fn)(void *arg, int task), void *arg);
/* How many jobs this pool has handed to its workers so far (lpool_run calls that did not simply
 * run on the caller): lets tests check that tiny operations stay on the calling thread. */
unsigned long lpool_dispatched(const lpool *pool);

typedef struct lctx {
    lpool *pool;          /* may be NULL: single-threaded */
    atomic_int *cancel;   /* may be NULL; non-zero asks the running call to stop */
    int (*abort_callback)(void *user_data); /* may be NULL; polled like `cancel` */
    void *abort_user_data;
} lctx;

/* Polled between network blocks and sampler steps: the interrupt flag, then the host's abort
 * callback (which latches the flag so the rest of the call stops without asking again). */
static inline int lctx_cancelled(const lctx *c)
{
    if (!c) return 0;
    if (c->cancel && atomic_load_explicit(c->cancel, memory_order_relaxed)) return 1;
    if (c->abort_callback && c->abort_callback(c->abort_user_data)) {
        if (c->cancel) atomic_store_explicit(c->cancel, 1, memory_order_relaxed);
        return 1;
    }
    return 0;
}

static inline int lctx_threads(const lctx *c) { return (c && c->pool) ? lpool_threads(c->pool) : 1; }

#endif
