/* tensor.h - the one tensor type, shared by the public API and the internals.
 * Dense row-major; F32 or I64; `owned` says whether ldm_tensor_free releases `data`. */
#ifndef LDM_CORE_TENSOR_H
#define LDM_CORE_TENSOR_H

#include "common.h"

struct ldm_tensor {
    ldm_dtype dtype;
    int ndim;
    int64_t shape[LDM_MAX_DIMS];
    void *data;
    int owned;
};

/* Internal constructors: a new zeroed (calloc) F32 tensor of the given shape, or NULL with the
 * error set. */
ldm_tensor *lt_new_f32(int ndim, const int64_t *shape);
ldm_tensor *lt_new_f32_4d(int64_t n, int64_t c, int64_t h, int64_t w);
ldm_tensor *lt_new_i64(int ndim, const int64_t *shape);
/* A deep copy. */
ldm_tensor *lt_clone(const ldm_tensor *t);

static inline float *lt_f32(const ldm_tensor *t) { return (float *)t->data; }
static inline int64_t *lt_i64(const ldm_tensor *t) { return (int64_t *)t->data; }
int64_t lt_numel(const ldm_tensor *t);

/* Checks that `t` is non-NULL, has dtype and ndim as given; sets an error naming `what`. */
ldm_status lt_check(const ldm_tensor *t, const char *what, ldm_dtype dtype, int ndim);
/* LDM_ERR_NUMERIC naming `what` and the first offending element when an F32 tensor holds NaN or
 * Inf (NULL and I64 tensors pass). One pass over the data: cheap next to the network call whose
 * inputs or outputs it guards, so faults are reported where they appear instead of spreading. */
ldm_status lt_check_finite(const ldm_tensor *t, const char *what);
/* "[2,3,16,16]" into buf. */
const char *lt_shape_str(const ldm_tensor *t, char *buf, size_t cap);

#endif
