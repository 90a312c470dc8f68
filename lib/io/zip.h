/* zip.h - a read-only view of a zip archive held in memory (the PyTorch checkpoint container).
 *
 * Only what torch.save writes is needed, but everything read from the file is validated: the
 * central directory (with ZIP64 records and extra fields), local header offsets and sizes, the
 * compression method (0 stored, 8 deflated), CRC-32, and inflated sizes (a member that inflates
 * to more or less than it declares is rejected, so a zip bomb cannot expand past its claim). */
#ifndef LDM_IO_ZIP_H
#define LDM_IO_ZIP_H

#include "../core/common.h"

typedef struct lw_zip_entry {
    char *name;            /* NUL-terminated (names with embedded NULs are rejected) */
    uint16_t method;       /* 0 stored, 8 deflated */
    uint32_t crc32;
    uint64_t comp_size;
    uint64_t size;         /* uncompressed size */
    uint64_t data_offset;  /* of the member's bytes, past its local header (validated) */
} lw_zip_entry;

typedef struct lw_zip lw_zip;

/* Parses the archive's directory. `bytes` (usually a read-only mapping) must outlive the lw_zip;
 * `path` is used in messages. */
ldm_status lw_zip_open(const char *path, const void *bytes, size_t size, lw_zip **out);
void lw_zip_close(lw_zip *z);

size_t lw_zip_count(const lw_zip *z);
const lw_zip_entry *lw_zip_at(const lw_zip *z, size_t i); /* sorted by name */
const lw_zip_entry *lw_zip_find(const lw_zip *z, const char *name); /* NULL when absent */

/* The member's uncompressed bytes, CRC-checked. Stored members point into the archive bytes
 * (*owned = NULL); deflated members are inflated into a new block (*owned, the same pointer as
 * *data, released with ldm_free). Allocations go through ldm_malloc, so the allocation cap applies. */
ldm_status lw_zip_read(const lw_zip *z, const lw_zip_entry *e, const void **data, void **owned);

#endif
