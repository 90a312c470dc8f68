/* netweights.c - weights kept as the checkpoint stores them (see netweights.h). */
#include "netweights.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Borrowing is the default; LDM_WIDEN_F16=1 makes float32 copies of everything at load (for
 * speed and memory comparisons). */
static int keep_stored(void)
{
    const char *e = getenv("LDM_WIDEN_F16");
    return !(e && e[0] && strcmp(e, "0") != 0);
}

static int same_shape(const lw_tensor *t, int ndim, const int64_t *shape)
{
    if (t->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

/* Stored values a product can use as they are: halves (widened block by block), or float32 at
 * a float's alignment (a file may place a tensor anywhere). */
static int usable_as_stored(const lw_tensor *t)
{
    if (t->dtype == LW_F16) return 1;
    return t->dtype == LW_F32 && (uintptr_t)t->data % _Alignof(float) == 0;
}

ldm_status lnw_get(const lw_store *s, const char *name, int ndim, const int64_t *shape, lnw *out)
{
    memset(out, 0, sizeof *out);
    const lw_tensor *t = s && name ? lw_find(s, name) : NULL;
    if (t && ndim >= 2 && same_shape(t, ndim, shape) && usable_as_stored(t) && keep_stored()) {
        LDM_TRY(lw_check_finite(s, t)); /* what lw_get_f32 checks when it copies */
        out->w = t->dtype == LW_F16 ? lk_wt_f16(t->data) : lk_wt_f32(t->data);
        out->w.paged = lw_store_in_mapping(s, t->data, t->nbytes);
        /* The check read every page: they leave again until the first use, so creating a
         * network costs no memory (e.g. the autoencoder's encoder, which txt2img never runs, or
         * the decoder during sampling). They come back from the page cache. */
        if (out->w.paged) ldm_pages_drop(t->data, t->nbytes);
        return LDM_OK;
    }
    /* bf16/f64 or unaligned storage, synthetic weights, and every error message */
    LDM_TRY(lw_get_f32(s, name, ndim, shape, &out->own));
    out->w = lk_wt_f32(out->own);
    return LDM_OK;
}

void lnw_free(lnw *w)
{
    ldm_free(w->own);
    memset(w, 0, sizeof *w);
}
