/* stats.c - optional per-kernel counters (calls, counted FLOPs, wall time) for the benchmark.
 *
 * Off by default: a kernel entry point then pays one thread-local load. lk_stats_reset() turns
 * counting on for the calling thread only, the one that drives the network (pool workers run
 * inside the kernels it calls, so their work is already inside its wall time). Only the
 * outermost instrumented call on that thread records (a conv that calls lk_gemm counts once, as a
 * conv), so the per-kernel times add up to at most the caller's wall time and the rest is model
 * glue. Each call also adds the process CPU time it took (all threads, CLOCK_PROCESS_CPUTIME_ID:
 * a system call per call, nothing next to a kernel), which unlike wall time does not grow when
 * other processes compete for the cores. Counters are relaxed atomics: cheap, and lk_stats_read from another thread sees sane
 * (if slightly stale) totals. "Counted FLOPs" are the textbook multiply-add count of the
 * operation (2 per MAC for a direct convolution even when a faster algorithm does fewer), so
 * FLOPs / time is comparable across algorithms. */
#include "kernels.h"

#include <stdatomic.h>
#include <time.h>

static _Thread_local int stats_on;    /* this thread records */
static _Thread_local int stats_depth; /* instrumented calls currently open on this thread */

static _Atomic unsigned long long st_calls[LK_OP_COUNT];
static _Atomic unsigned long long st_flops[LK_OP_COUNT];
static _Atomic unsigned long long st_ns[LK_OP_COUNT];
static _Atomic unsigned long long st_cpu_ns[LK_OP_COUNT];

static const char *const op_names[LK_OP_COUNT] = {
    [LK_OP_CONV3X3] = "conv 3x3 s1", [LK_OP_CONV1X1] = "conv 1x1",     [LK_OP_CONV_OTHER] = "conv other",
    [LK_OP_GEMM] = "gemm/linear",    [LK_OP_ATTENTION] = "attention",  [LK_OP_GROUPNORM] = "group norm",
    [LK_OP_LAYERNORM] = "layer norm", [LK_OP_ACTIVATION] = "activation", [LK_OP_ELEMENTWISE] = "elementwise",
    [LK_OP_RESAMPLE] = "resample",
};

const char *lk_op_name(lk_op op) { return (op >= 0 && op < LK_OP_COUNT) ? op_names[op] : "?"; }

static unsigned long long clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

void lk_stats_reset(void)
{
    for (int i = 0; i < LK_OP_COUNT; i++) {
        atomic_store_explicit(&st_calls[i], 0, memory_order_relaxed);
        atomic_store_explicit(&st_flops[i], 0, memory_order_relaxed);
        atomic_store_explicit(&st_ns[i], 0, memory_order_relaxed);
        atomic_store_explicit(&st_cpu_ns[i], 0, memory_order_relaxed);
    }
    stats_on = 1;
    stats_depth = 0;
}

void lk_stats_stop(void) { stats_on = 0; }

void lk_stats_read(lk_op_stats out[LK_OP_COUNT])
{
    for (int i = 0; i < LK_OP_COUNT; i++) {
        out[i].calls = atomic_load_explicit(&st_calls[i], memory_order_relaxed);
        out[i].flops = (double)atomic_load_explicit(&st_flops[i], memory_order_relaxed);
        out[i].seconds = (double)atomic_load_explicit(&st_ns[i], memory_order_relaxed) * 1e-9;
        out[i].cpu_seconds = (double)atomic_load_explicit(&st_cpu_ns[i], memory_order_relaxed) * 1e-9;
    }
}

lk_stat_mark lk_stat_begin(void)
{
    lk_stat_mark m = {0, 0, 0, 0};
    if (!stats_on) return m;
    m.entered = 1;
    if (stats_depth++ == 0) {
        m.active = 1;
        m.t0 = clock_ns(CLOCK_MONOTONIC);
        m.cpu0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    }
    return m;
}

void lk_stat_end(lk_stat_mark m, lk_op op, double flops)
{
    if (!m.entered) return;
    stats_depth--;
    if (!m.active || !stats_on) return;
    unsigned long long dt = clock_ns(CLOCK_MONOTONIC) - m.t0, dcpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - m.cpu0;
    atomic_fetch_add_explicit(&st_calls[op], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&st_flops[op], (unsigned long long)flops, memory_order_relaxed);
    atomic_fetch_add_explicit(&st_ns[op], dt, memory_order_relaxed);
    atomic_fetch_add_explicit(&st_cpu_ns[op], dcpu, memory_order_relaxed);
}
