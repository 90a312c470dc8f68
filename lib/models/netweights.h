/* netweights.h - a network's weight matrices and kernels as the checkpoint stores them: float16
 * weights stay float16 (borrowed from the store; the kernels widen them as they use them,
 * lib/kernels/weights.c) and float32 weights are used in place; anything else (bf16, f64, a
 * float32 tensor at an odd address) becomes a float32 copy.
 *
 * Borrowed weights live in the checkpoint's read-only mapping, so they cost file pages that can
 * be given back between uses (docs/performance.md): the SD1 UNet from a float16 file is 1.7 GB
 * of such pages instead of 3.4 GB of float32 copies. LDM_WIDEN_F16=1 in the environment makes
 * float32 copies of everything at load instead (for comparisons). Only matrices and kernels go
 * through here; biases and norm gains stay float32 copies (they are small and used elementwise). */
#ifndef LDM_MODELS_NETWEIGHTS_H
#define LDM_MODELS_NETWEIGHTS_H

#include "../io/weights.h"
#include "../kernels/kernels.h"

typedef struct lnw {
    lk_wt w;
    float *own; /* the float32 copy to free, or NULL when w borrows the store's values */
} lnw;

/* Tensor `name` with exactly the expected shape; the store must outlive *out. On failure the
 * error names the tensor (as lw_get_f32 does) and *out is empty. */
ldm_status lnw_get(const lw_store *s, const char *name, int ndim, const int64_t *shape, lnw *out);
void lnw_free(lnw *w);

#endif
