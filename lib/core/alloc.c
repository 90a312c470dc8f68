/* alloc.c - the library's only door to the heap: per-allocation cap (hostile files must not
 * make us allocate without bound) and failure injection for tests. */
#include "common.h"

#include <stdlib.h>
#include <string.h>

static _Thread_local size_t alloc_cap;
static _Thread_local long alloc_fail_countdown;
static _Thread_local ldm_status last_alloc_failure = LDM_ERR_OUT_OF_MEMORY;

void ldm_alloc_set_cap(size_t max_bytes) { alloc_cap = max_bytes; }
size_t ldm_alloc_get_cap(void) { return alloc_cap; }

/* Outside a model call the effective cap IS the thread's base cap: model calls save it on entry
 * and put it back on every return (LM_BEGIN in lib/api/model_internal.h), so one variable does. */
size_t ldm_set_thread_max_alloc(size_t max_bytes)
{
    size_t previous = alloc_cap;
    alloc_cap = max_bytes;
    return previous;
}

size_t ldm_alloc_cap_within(size_t outer, size_t inner)
{
    if (!outer) return inner;
    if (!inner) return outer;
    return inner < outer ? inner : outer;
}
void ldm_alloc_fail_after(long n) { alloc_fail_countdown = n; }

/* Returns non-zero (and sets the error) when an allocation of `size` must be refused. */
static int refuse(size_t size)
{
    if (alloc_fail_countdown > 0 && --alloc_fail_countdown == 0) {
        last_alloc_failure = ldm_fail(LDM_ERR_OUT_OF_MEMORY, "out of memory allocating %zu bytes (injected failure)", size);
        return 1;
    }
    if (alloc_cap && size > alloc_cap) {
        last_alloc_failure = ldm_fail(LDM_ERR_LIMIT, "allocation of %zu bytes exceeds the limit of %zu bytes", size, alloc_cap);
        return 1;
    }
    last_alloc_failure = LDM_ERR_OUT_OF_MEMORY;
    return 0;
}

ldm_status ldm_alloc_failure_status(void) { return last_alloc_failure; }

void *ldm_malloc(size_t size)
{
    if (refuse(size)) return NULL;
    void *p = malloc(size ? size : 1);
    if (!p) ldm_fail(LDM_ERR_OUT_OF_MEMORY, "out of memory allocating %zu bytes", size);
    return p;
}

void *ldm_calloc(size_t count, size_t size)
{
    size_t total;
    if (ldm_mul_size(count, size, &total)) {
        last_alloc_failure = ldm_fail(LDM_ERR_LIMIT, "allocation size overflow (%zu x %zu)", count, size);
        return NULL;
    }
    if (refuse(total)) return NULL;
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) ldm_fail(LDM_ERR_OUT_OF_MEMORY, "out of memory allocating %zu bytes", total);
    return p;
}

void *ldm_realloc(void *ptr, size_t size)
{
    if (refuse(size)) return NULL;
    void *p = realloc(ptr, size ? size : 1);
    if (!p) ldm_fail(LDM_ERR_OUT_OF_MEMORY, "out of memory allocating %zu bytes", size);
    return p;
}

void *ldm_malloc_aligned(size_t size)
{
    if (refuse(size)) return NULL;
    size_t rounded = (size + 63) & ~(size_t)63;
    if (rounded < size) {
        last_alloc_failure = ldm_fail(LDM_ERR_LIMIT, "allocation size overflow (%zu bytes)", size);
        return NULL;
    }
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) ldm_fail(LDM_ERR_OUT_OF_MEMORY, "out of memory allocating %zu bytes", size);
    return p;
}

void ldm_free(void *ptr) { free(ptr); }

char *ldm_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = ldm_malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

void ldm_params_fill(void *dst, size_t dst_size, const void *defaults, size_t def_size)
{
    if (!dst || dst_size < sizeof(size_t)) return;
    size_t n = dst_size < def_size ? dst_size : def_size;
    memcpy(dst, defaults, n);
    if (dst_size > n) memset((char *)dst + n, 0, dst_size - n);
    memcpy(dst, &dst_size, sizeof dst_size);
}

ldm_status ldm_params_read(const void *in, void *out, size_t out_size, size_t min_size, const char *type)
{
    size_t in_size;
    if (!in) return LDM_OK;
    memcpy(&in_size, in, sizeof in_size);
    if (in_size < min_size || in_size > 4096)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s.struct_size is %zu: fill the struct with %s_init()", type,
                        in_size, type);
    memcpy(out, in, in_size < out_size ? in_size : out_size);
    memcpy(out, &out_size, sizeof out_size);
    return LDM_OK;
}
