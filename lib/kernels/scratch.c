/* scratch.c - a small process-wide cache of the kernels' large scratch buffers.
 *
 * A convolution or an attention call needs tens of megabytes of scratch for a few milliseconds,
 * and a UNet evaluation makes hundreds of such calls. Buffers that large are mmap'ed and
 * unmapped by malloc on every call, so each call paid page faults and the kernel's page zeroing
 * on all of its scratch (about a tenth of the convolution time). Returned buffers are kept here
 * instead and handed out again to the next request they fit. The cache is bounded (at most
 * SCRATCH_SLOTS buffers, SCRATCH_KEEP bytes in total; anything else is freed at once) and
 * lk_scratch_trim() empties it. In the low-memory mode (LDM_LOW_MEMORY=1 in the environment,
 * docs/performance.md) nothing is kept: every buffer is freed when it is given back.
 * Buffers are only ever reused whole and never shared, so what a kernel computes cannot depend on
 * which buffer it got. */
#include "kernels.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SCRATCH_SLOTS 8
#define SCRATCH_KEEP ((size_t)256 << 20)

typedef struct scratch_slot {
    void *p;
    size_t bytes;
} scratch_slot;

static pthread_mutex_t scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static scratch_slot cache[SCRATCH_SLOTS];
static size_t cached_bytes;

/* Requests are rounded up to a size class (quarter steps between powers of two: at most a quarter
 * more than asked) so that the varying sizes of successive layers reuse the same buffers. */
static size_t size_class(size_t bytes)
{
    size_t pow = 1;
    while (pow < bytes / 4) pow <<= 1;
    return (bytes + pow - 1) / pow * pow;
}

void *lk_scratch_get(size_t bytes)
{
    if (bytes == 0) bytes = 1;
    bytes = size_class(bytes);
    pthread_mutex_lock(&scratch_lock);
    int best = -1;
    for (int i = 0; i < SCRATCH_SLOTS; i++) /* smallest cached buffer that fits */
        if (cache[i].p && cache[i].bytes >= bytes && (best < 0 || cache[i].bytes < cache[best].bytes)) best = i;
    void *p = NULL;
    if (best >= 0) {
        p = cache[best].p;
        cached_bytes -= cache[best].bytes;
        cache[best].p = NULL;
    }
    pthread_mutex_unlock(&scratch_lock);
    return p ? p : ldm_malloc_aligned(bytes);
}

/* Index of the smallest cached buffer, -1 when the cache is empty. */
static int smallest_cached(void)
{
    int small = -1;
    for (int i = 0; i < SCRATCH_SLOTS; i++)
        if (cache[i].p && (small < 0 || cache[i].bytes < cache[small].bytes)) small = i;
    return small;
}

int lk_low_memory(void)
{
    const char *e = getenv("LDM_LOW_MEMORY");
    return e && e[0] && strcmp(e, "0") != 0;
}

void lk_scratch_put(void *p, size_t bytes)
{
    if (!p) return;
    bytes = size_class(bytes); /* what lk_scratch_get allocated (or less, for a reused buffer) */
    if (lk_low_memory()) { /* nothing is kept between calls */
        lk_scratch_trim();
        ldm_free(p);
        return;
    }
    void *drop[SCRATCH_SLOTS + 1]; /* freed after unlocking */
    int n_drop = 0;
    pthread_mutex_lock(&scratch_lock);
    /* Make room by dropping smaller buffers first; keep p only if it then fits. */
    for (;;) {
        int free_slot = -1;
        for (int i = 0; i < SCRATCH_SLOTS && free_slot < 0; i++)
            if (!cache[i].p) free_slot = i;
        if (free_slot >= 0 && cached_bytes + bytes <= SCRATCH_KEEP) {
            cache[free_slot].p = p;
            cache[free_slot].bytes = bytes;
            cached_bytes += bytes;
            p = NULL;
            break;
        }
        int small = smallest_cached();
        if (small < 0 || cache[small].bytes >= bytes) break;
        drop[n_drop++] = cache[small].p;
        cached_bytes -= cache[small].bytes;
        cache[small].p = NULL;
    }
    pthread_mutex_unlock(&scratch_lock);
    if (p) drop[n_drop++] = p;
    for (int i = 0; i < n_drop; i++) ldm_free(drop[i]);
}

void lk_scratch_trim(void)
{
    pthread_mutex_lock(&scratch_lock);
    for (int i = 0; i < SCRATCH_SLOTS; i++) {
        ldm_free(cache[i].p);
        cache[i].p = NULL;
    }
    cached_bytes = 0;
    pthread_mutex_unlock(&scratch_lock);
}
