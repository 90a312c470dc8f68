/* fuzz_store.h - what the checkpoint harnesses do with a store that opened: widen every small
 * floating tensor (dtype conversion, shape checks) and run architecture detection and config
 * completion over the (hostile) names and shapes, as ldm_model_load would. */
#ifndef LDM_FUZZ_STORE_H
#define LDM_FUZZ_STORE_H

#include "fuzz_common.h"
#include "io/weights.h"
#include "models/config.h"

static inline void fuzz_exercise_store(lw_store *s)
{
    for (size_t i = 0; i < lw_count(s); i++) {
        const lw_tensor *t = lw_at(s, i);
        if (t->nbytes > ((size_t)1 << 20)) continue;
        float *f = NULL;
        if (lw_get_f32(s, t->name, -1, NULL, &f) == LDM_OK) ldm_free(f);
        lw_find(s, t->name);
    }
    ld_model m;
    if (ld_detect(s, &m) != LDM_OK) return;
    char buf[4096];
    ld_describe(&m, s, buf, sizeof buf);
    ld_config_complete(&m, s);
}

/* Opens the input as a checkpoint file (format sniffed like ldm_model_load does). */
static inline int fuzz_checkpoint(const uint8_t *data, size_t size)
{
    lw_store *s = NULL;
    if (lw_open(fuzz_file(data, size), FUZZ_ALLOC_CAP, &s) == LDM_OK) {
        ldm_alloc_set_cap(FUZZ_ALLOC_CAP);
        fuzz_exercise_store(s);
        ldm_alloc_set_cap(0);
        lw_close(s);
    }
    return 0;
}

#endif
