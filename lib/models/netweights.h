/* netweights.h - a network's weight matrices and kernels in the precision the checkpoint stores
 * them: float16 weights stay float16 (borrowed from the store) and the kernels widen them as they
 * use them (lib/kernels/weights.c); anything else becomes a float32 copy as before.
 *
 * This halves the memory of float16 checkpoints (the SD1 UNet: 1.7 GB instead of 3.4 GB) for a
 * few percent of speed (docs/performance.md). LDM_WIDEN_F16=1 in the environment restores
 * widening at load. Only matrices and kernels go through here; biases and norm gains stay float32
 * copies (they are small and used elementwise). */
#ifndef LDM_MODELS_NETWEIGHTS_H
#define LDM_MODELS_NETWEIGHTS_H

#include "../io/weights.h"
#include "../kernels/kernels.h"

typedef struct lnw {
    lk_wt w;
    float *own; /* the float32 copy to free, or NULL when w borrows the store's half values */
} lnw;

/* Tensor `name` with exactly the expected shape; the store must outlive *out. On failure the
 * error names the tensor (as lw_get_f32 does) and *out is empty. */
ldm_status lnw_get(const lw_store *s, const char *name, int ndim, const int64_t *shape, lnw *out);
void lnw_free(lnw *w);

#endif
