/* strmap.h - string -> int32 hash map (open addressing) for vocabularies, and the bounded
 * whole-file reader the vocabulary loaders share. */
#ifndef LDM_TEXT_STRMAP_H
#define LDM_TEXT_STRMAP_H

#include "../core/common.h"

typedef struct ltx_strmap ltx_strmap;

ldm_status ltx_strmap_new(size_t expected_count, ltx_strmap **out);
void ltx_strmap_free(ltx_strmap *m);
/* Inserts or overwrites (a later value wins, like Python's dict(zip(keys, values))). The key
 * bytes are copied. */
ldm_status ltx_strmap_put(ltx_strmap *m, const char *key, size_t len, int32_t value);
/* The value, or -1 when absent. */
int32_t ltx_strmap_get(const ltx_strmap *m, const char *key, size_t len);

/* Reads a whole file, inflating it when it is gzip-compressed (plain files are read as is).
 * Refuses more than max_bytes of (uncompressed) content. `what` names the file's role in
 * messages ("CLIP BPE vocabulary"). The result is NUL-terminated; free with ldm_free. */
ldm_status ltx_read_file(const char *path, const char *what, size_t max_bytes, char **data, size_t *len);

#endif
