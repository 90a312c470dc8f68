/* fuzz_zip.c - the zip reader alone: directory (ZIP64, extra fields, local headers), then every
 * member read (stored or inflated, CRC and declared sizes checked). */
#include "fuzz_common.h"
#include "io/zip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ldm_alloc_set_cap(FUZZ_ALLOC_CAP);
    lw_zip *z = NULL;
    if (lw_zip_open("fuzz.zip", data, size, &z) == LDM_OK) {
        for (size_t i = 0; i < lw_zip_count(z); i++) {
            const lw_zip_entry *e = lw_zip_at(z, i);
            if (lw_zip_find(z, e->name) != e) abort(); /* names are unique once opened */
            const void *bytes = NULL;
            void *owned = NULL;
            if (lw_zip_read(z, e, &bytes, &owned) == LDM_OK) {
                /* touch every byte so ASan sees reads outside the input */
                        for (uint64_t k = 0; k < e->size; k++) fuzz_sink ^= ((const unsigned char *)bytes)[k];
                ldm_free(owned);
            }
        }
        lw_zip_close(z);
    }
    ldm_alloc_set_cap(0);
    return 0;
}
