/* pages.c - giving memory back to the system between the phases of a generation.
 *
 * Weights borrowed from a checkpoint are pages of a read-only file mapping. Once a network has
 * used them they can be dropped from the process (its resident set) and the kernel brings them
 * back from the page cache, or from the file, when they are read again. This is what keeps a
 * float16 SD 1.5 run inside a small budget (docs/performance.md): the UNet's 1.7 GB need not stay
 * resident while the autoencoder decodes, and in the low-memory mode each layer's weights leave
 * as soon as the layer is done. */
#include "common.h"

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>
#ifdef __GLIBC__ /* malloc_trim; <malloc.h> is not on macOS (<malloc/malloc.h> there) */
#include <malloc.h>
#endif

void ldm_pages_drop(const void *p, size_t bytes)
{
    if (!p || bytes == 0) return;
    static size_t page;
    if (!page) {
        long ps = sysconf(_SC_PAGESIZE);
        page = ps > 0 ? (size_t)ps : 4096;
    }
    /* Only pages entirely inside the range: a partly covered page may hold a neighbour that is
     * in use (dropping it would be harmless for a file mapping, but pointless). */
    uintptr_t begin = ((uintptr_t)p + page - 1) / page * page, end = ((uintptr_t)p + bytes) / page * page;
    if (end <= begin) return;
    /* Failure only costs memory, never correctness: the pages simply stay. */
    (void)madvise((void *)begin, end - begin, MADV_DONTNEED);
}

void ldm_pages_prefer_huge(void *p, size_t bytes)
{
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t begin = ((uintptr_t)p + huge - 1) / huge * huge, end = ((uintptr_t)p + bytes) / huge * huge;
    if (!p || end <= begin) return;
    /* Failure (no transparent huge pages in this kernel) only costs the page faults. */
    (void)madvise((void *)begin, end - begin, MADV_HUGEPAGE);
#else
    (void)p, (void)bytes;
#endif
}

void ldm_heap_trim(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}
