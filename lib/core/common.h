/* common.h - internal helpers shared by every part of libldm: error reporting, checked
 * allocation, overflow-safe size arithmetic. Never exported. */
#ifndef LDM_CORE_COMMON_H
#define LDM_CORE_COMMON_H

#include "ldm.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define LDM_INTERNAL __attribute__((visibility("hidden")))

/* Records `status` and a printf-style message as this thread's last error; returns `status` so
 * callers can write `return ldm_fail(LDM_ERR_FORMAT, "...")`. */
ldm_status ldm_fail(ldm_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends context ("loading model.ckpt: ") to the current error message; returns `status`. */
ldm_status ldm_fail_context(ldm_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Allocation with a process-wide per-allocation cap and failure injection for tests. Every
 * allocation in the library goes through these. They set the error message on failure. */
void *ldm_malloc(size_t size);
void *ldm_calloc(size_t count, size_t size);
void *ldm_realloc(void *ptr, size_t size);
/* Aligned to 64 bytes; release with ldm_free as well. */
void *ldm_malloc_aligned(size_t size);
void ldm_free(void *ptr);
char *ldm_strdup(const char *s);

/* The largest single allocation allowed (0 = unlimited): the effective cap of this thread.
 * Thread-local so that two models with different caps can load in parallel. Outside model calls
 * it is the thread's own cap (ldm_set_thread_max_alloc); a model call narrows it to its model's
 * max_alloc_bytes for the call's duration and restores it on return (LM_BEGIN). */
void ldm_alloc_set_cap(size_t max_bytes);
size_t ldm_alloc_get_cap(void);
/* The smaller nonzero of two caps (0 = no cap): the cap in force when `inner` applies inside a
 * scope already capped at `outer`. */
size_t ldm_alloc_cap_within(size_t outer, size_t inner);
/* Test hook: make the n-th allocation from now on fail (n >= 1), 0 disables. */
void ldm_alloc_fail_after(long n);

/* The status of the allocation that just failed: LDM_ERR_LIMIT when the cap refused it, else
 * LDM_ERR_OUT_OF_MEMORY (the message was already set by the allocator). */
ldm_status ldm_alloc_failure_status(void);

/* Memory pressure (pages.c). ldm_pages_drop gives the whole pages inside [p, p + bytes) back to
 * the kernel (madvise MADV_DONTNEED). ONLY for read-only file mappings, whose pages come back
 * unchanged from the file (or the page cache) on the next access; on any other memory it would
 * lose data. ldm_heap_trim returns the allocator's free heap memory to the system. */
void ldm_pages_drop(const void *p, size_t bytes);
/* Asks for transparent huge pages on the whole 2 MiB pages inside [p, p + bytes) of fresh heap
 * memory (madvise MADV_HUGEPAGE; where the system's setting is "madvise"): one page fault per
 * 2 MiB on first touch instead of 512. For large buffers written soon after (feature maps). */
void ldm_pages_prefer_huge(void *p, size_t bytes);
void ldm_heap_trim(void);

/* The *_params_init_size pattern: copies min(dst_size, def_size) bytes of a defaults struct to the
 * caller's struct, zeroes the rest and stores dst_size in its leading size_t struct_size. */
void ldm_params_fill(void *dst, size_t dst_size, const void *defaults, size_t def_size);
/* Reads a caller's params struct `in` (NULL: keep the defaults already in `out`) over `out`: its
 * struct_size must cover at least `min_size` bytes (the fields every header version has) and at
 * most 4096; the fields both sides know are copied and out's struct_size is set to out_size.
 * `type` names the struct in the error message. */
ldm_status ldm_params_read(const void *in, void *out, size_t out_size, size_t min_size, const char *type);

/* Overflow-checked arithmetic: return 0 on success, non-zero on overflow. */
static inline int ldm_mul_size(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }
static inline int ldm_add_size(size_t a, size_t b, size_t *out) { return __builtin_add_overflow(a, b, out); }

#define LDM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define LDM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LDM_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Propagate a failing status. */
#define LDM_TRY(expr)                                                                              \
    do {                                                                                           \
        ldm_status ldm_try_status_ = (expr);                                                       \
        if (ldm_try_status_ != LDM_OK) return ldm_try_status_;                                     \
    } while (0)

#endif
