/* fuzz_json.c - the strict JSON reader (lj_parse) and its accessors. */
#include "fuzz_common.h"
#include "core/json.h"

static void walk(const lj_value *v, int depth)
{
    if (!v || depth > 1000) return;
    lj_number(v, 0);
    lj_string(v, NULL);
    int64_t i;
    lj_int64(v, &i);
    if (v->type == LJ_STRING && strlen(v->string) > v->string_len) abort();
    for (size_t k = 0; k < v->count; k++) {
        if (v->type == LJ_OBJECT && lj_get(v, v->keys[k]) == NULL) abort();
        walk(v->items[k], depth + 1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ldm_alloc_set_cap(FUZZ_ALLOC_CAP);
    uint8_t *copy = malloc(size ? size : 1); /* exact size: over-reads are caught */
    if (size) memcpy(copy, data, size);
    lj_value *v = lj_parse((const char *)copy, size);
    if (v) {
        walk(v, 0);
        lj_free(v);
    }
    free(copy);
    ldm_alloc_set_cap(0);
    return 0;
}
