/* fuzz_pickle.c - the restricted pickle VM on arbitrary opcodes, then a walk over the result
 * (the value tree a checkpoint loader would inspect). */
#include "fuzz_common.h"
#include "io/pickle.h"

static size_t walk(const lw_py *v, int depth)
{
    if (!v || depth > 200) return 0;
    size_t n = 1;
    if (v->type == LW_PY_STR || v->type == LW_PY_BYTES || v->type == LW_PY_STORAGE) {
        for (size_t i = 0; i < v->len; i++) fuzz_sink ^= (unsigned char)v->s[i];
    }
    if (v->type == LW_PY_TENSOR && v->tensor) n += walk(v->tensor->storage, depth + 1);
    for (size_t i = 0; i < v->count; i++) n += walk(v->items[i], depth + 1);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ldm_alloc_set_cap(FUZZ_ALLOC_CAP);
    /* A copy of exactly `size` bytes, so reads past the end are caught by ASan. */
    uint8_t *copy = malloc(size ? size : 1);
    if (size) memcpy(copy, data, size);
    lw_pickle *vm = NULL;
    const lw_py *root = NULL;
    if (lw_pickle_run("fuzz.pkl", copy, size, &vm, &root) == LDM_OK) {
        walk(root, 0);
        lw_py_dict_get(root, "state_dict");
        lw_pickle_free(vm);
    }
    free(copy);
    ldm_alloc_set_cap(0);
    return 0;
}
