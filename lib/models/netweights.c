/* netweights.c - weights kept as the checkpoint stores them (see netweights.h). */
#include "netweights.h"

#include <stdlib.h>
#include <string.h>

/* Borrowing is the default; LDM_WIDEN_F16=1 widens at load (for speed comparisons). */
static int keep_f16(void)
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

ldm_status lnw_get(const lw_store *s, const char *name, int ndim, const int64_t *shape, lnw *out)
{
    memset(out, 0, sizeof *out);
    const lw_tensor *t = s && name ? lw_find(s, name) : NULL;
    if (t && t->dtype == LW_F16 && ndim >= 2 && same_shape(t, ndim, shape) && keep_f16()) {
        LDM_TRY(lw_check_finite(s, t)); /* what lw_get_f32 checks when it widens */
        out->w = lk_wt_f16(t->data);
        out->w.paged = lw_store_in_mapping(s, t->data, t->nbytes);
        /* The check read every page: they leave again until the first use, so creating a
         * network costs no memory (e.g. the autoencoder's encoder, which txt2img never runs, or
         * the decoder during sampling). They come back from the page cache. */
        if (out->w.paged) ldm_pages_drop(t->data, t->nbytes);
        return LDM_OK;
    }
    /* float32 (or bf16/f64) storage, synthetic weights, and every error message */
    LDM_TRY(lw_get_f32(s, name, ndim, shape, &out->own));
    out->w = lk_wt_f32(out->own);
    return LDM_OK;
}

void lnw_free(lnw *w)
{
    ldm_free(w->own);
    memset(w, 0, sizeof *w);
}
