/* ck_pools.h - what the kernel suites share: the thread contexts every fast path is run under
 * (serial, 2 and 3 threads, so results can be compared bit for bit across thread counts) and the
 * largest elementwise error of a result against its reference. Include once per test program. */
#ifndef CK_POOLS_H
#define CK_POOLS_H

#include <check.h>
#include <math.h>
#include <stddef.h>

#include "core/ctx.h"

/* Contexts under test: serial, 2 threads, 3 threads. */
#define N_CTX 3
static lctx ctxs[N_CTX];

static void setup_pools(void)
{
    ctxs[0].pool = NULL;
    ctxs[1].pool = lpool_create(2);
    ctxs[2].pool = lpool_create(3);
    ck_assert_ptr_nonnull(ctxs[1].pool);
    ck_assert_ptr_nonnull(ctxs[2].pool);
}

static void teardown_pools(void)
{
    lpool_free(ctxs[1].pool);
    lpool_free(ctxs[2].pool);
}

/* max |got - ref| (infinite when any difference is NaN), its index in *worst and max |ref| in
 * *max_ref. */
static double ck_max_error(const float *got, const float *ref, size_t n, size_t *worst, double *max_ref)
{
    double mx = 0.0, err = 0.0;
    *worst = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= err)) { /* also catches NaN */
            err = isnan(e) ? INFINITY : e;
            *worst = i;
        }
    }
    *max_ref = mx;
    return err;
}

#endif
