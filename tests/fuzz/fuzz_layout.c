/* fuzz_layout.c - layout JSON -> layout-to-image token ids (ldm_layout_tokens_from_json). The
 * first byte picks no_object_classes (the rest is the JSON text). */
#include "fuzz_common.h"
#include "ldm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static const int classes[] = {1, 2, 20, 601, 8191, 100000};
    int no_object_classes = classes[data[0] % (sizeof classes / sizeof classes[0])];
    uint8_t *copy = malloc(size); /* exact size: over-reads are caught */
    memcpy(copy, data + 1, size - 1);
    ldm_tensor *t = NULL;
    if (ldm_layout_tokens_from_json((const char *)copy, size - 1, no_object_classes, &t) == LDM_OK) {
        const int64_t *ids = ldm_tensor_data(t);
        for (int64_t i = 0; i < ldm_tensor_numel(t); i++)
            if (ids[i] < 0 || ids[i] >= 8192) abort(); /* the reference asserts this range */
        ldm_tensor_free(t);
    }
    free(copy);
    return 0;
}
