/* wcache.c - a network's cache of transformed weights (issue 12, section 4).
 *
 * A batch-1 evaluation of a small model spends much of its time redoing, on every call, work that
 * depends on the weights alone: transforming a 3x3 kernel into the Winograd domain, for one. For
 * small layers the transformed form is kept here between calls. One cache belongs to one network
 * (the UNet creates its own, lib/models/unet.c, and frees it with itself), which is what makes it
 * safe without a lock and without stale entries:
 *   - a network is used by one thread at a time (docs/architecture.md, "Thread safety"), and the
 *     kernels look up and fill the cache on the calling thread, before handing work to the pool;
 *   - entries are keyed on the weight pointer plus what was computed from it (kind and shape);
 *     the weights a network reads (its own float32 copies or the checkpoint mapping it borrows
 *     from) live at least as long as the network, so a key cannot be reused for other weights
 *     while the cache lives;
 *   - whoever changes weights in place (a LoRA merge, say) must call lk_wcache_clear afterwards.
 * Bounded: an entry of more than LK_WCACHE_MAX_ENTRY bytes is never made (the kernels check it
 * from the shape) and a cache never holds more than LK_WCACHE_BUDGET bytes; past that, layers run
 * uncached (the order of a network's layers is fixed, so which ones are cached is too). There is
 * deliberately no process-wide budget: two models running in two threads would then race for it,
 * and a model's results would depend on the other one's progress. In the low-memory mode
 * (LDM_LOW_MEMORY) lk_wcache_create returns NULL: nothing is cached. */
#include "kernels.h"

#include <string.h>

typedef struct wc_entry {
    const void *key;
    int kind, d0, d1;
    size_t bytes;
    float *data;
} wc_entry;

struct lk_wcache {
    wc_entry *e;
    int n, cap;
    size_t bytes;
};

lk_wcache *lk_wcache_create(void)
{
    if (lk_low_memory()) return NULL;
    return ldm_calloc(1, sizeof(lk_wcache));
}

void lk_wcache_clear(lk_wcache *wc)
{
    if (!wc) return;
    for (int i = 0; i < wc->n; i++) ldm_free(wc->e[i].data);
    wc->n = 0;
    wc->bytes = 0;
}

void lk_wcache_free(lk_wcache *wc)
{
    if (!wc) return;
    lk_wcache_clear(wc);
    ldm_free(wc->e);
    ldm_free(wc);
}

size_t lk_wcache_bytes(const lk_wcache *wc) { return wc ? wc->bytes : 0; }

const float *lk_wcache_find(const lk_wcache *wc, const void *key, int kind, int d0, int d1)
{
    if (!wc) return NULL;
    for (int i = 0; i < wc->n; i++) {
        const wc_entry *e = &wc->e[i];
        if (e->key == key && e->kind == kind && e->d0 == d0 && e->d1 == d1) return e->data;
    }
    return NULL;
}

ldm_status lk_wcache_add(lk_wcache *wc, const void *key, int kind, int d0, int d1, size_t bytes, float **out)
{
    *out = NULL;
    if (!wc || bytes > LK_WCACHE_MAX_ENTRY || wc->bytes + bytes > LK_WCACHE_BUDGET) return LDM_OK;
    if (wc->n == wc->cap) {
        int cap = wc->cap ? 2 * wc->cap : 32;
        wc_entry *e = ldm_realloc(wc->e, sizeof(wc_entry) * (size_t)cap);
        if (!e) return ldm_fail_context(ldm_alloc_failure_status(), "weight cache: ");
        wc->e = e;
        wc->cap = cap;
    }
    float *data = ldm_malloc_aligned(bytes);
    if (!data) return ldm_fail_context(ldm_alloc_failure_status(), "weight cache: ");
    wc->e[wc->n++] = (wc_entry){key, kind, d0, d1, bytes, data};
    wc->bytes += bytes;
    *out = data;
    return LDM_OK;
}
