/* tensor.c - ldm_tensor creation, views and accessors. */
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static ldm_status numel_of(int ndim, const int64_t *shape, size_t elem, size_t *bytes)
{
    if (ndim < 0 || ndim > LDM_MAX_DIMS)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tensor rank %d outside 0..%d", ndim, LDM_MAX_DIMS);
    size_t n = elem;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "negative tensor dimension %lld", (long long)shape[i]);
        if (ldm_mul_size(n, (size_t)shape[i], &n)) return ldm_fail(LDM_ERR_LIMIT, "tensor size overflows");
    }
    *bytes = n;
    return LDM_OK;
}

static size_t dtype_size(ldm_dtype d) { return d == LDM_I64 ? 8 : 4; }

static ldm_status new_tensor(ldm_dtype dtype, int ndim, const int64_t *shape, ldm_tensor **out)
{
    size_t bytes = 0;
    *out = NULL;
    LDM_TRY(numel_of(ndim, shape, dtype_size(dtype), &bytes));
    ldm_tensor *t = ldm_calloc(1, sizeof *t);
    if (!t) return ldm_alloc_failure_status();
    t->data = ldm_malloc_aligned(bytes);
    if (!t->data) {
        ldm_free(t);
        return ldm_alloc_failure_status();
    }
    memset(t->data, 0, bytes);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->owned = 1;
    *out = t;
    return LDM_OK;
}

static ldm_tensor *new_or_null(ldm_dtype dtype, int ndim, const int64_t *shape)
{
    ldm_tensor *t = NULL;
    new_tensor(dtype, ndim, shape, &t);
    return t;
}

ldm_tensor *lt_new_f32(int ndim, const int64_t *shape) { return new_or_null(LDM_F32, ndim, shape); }
ldm_tensor *lt_new_i64(int ndim, const int64_t *shape) { return new_or_null(LDM_I64, ndim, shape); }

ldm_tensor *lt_new_f32_4d(int64_t n, int64_t c, int64_t h, int64_t w)
{
    int64_t s[4] = {n, c, h, w};
    return lt_new_f32(4, s);
}

ldm_tensor *lt_clone(const ldm_tensor *t)
{
    ldm_tensor *c = new_or_null(t->dtype, t->ndim, t->shape);
    if (c) memcpy(c->data, t->data, (size_t)lt_numel(t) * dtype_size(t->dtype));
    return c;
}

int64_t lt_numel(const ldm_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

const char *lt_shape_str(const ldm_tensor *t, char *buf, size_t cap)
{
    size_t len = 0;
    len += (size_t)snprintf(buf + len, cap - len, "[");
    for (int i = 0; i < t->ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? "," : "", (long long)t->shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

ldm_status lt_check(const ldm_tensor *t, const char *what, ldm_dtype dtype, int ndim)
{
    char buf[96];
    if (!t) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: tensor is NULL", what);
    if (t->dtype != dtype)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: expected dtype %s, found %s", what,
                        dtype == LDM_F32 ? "F32" : "I64", t->dtype == LDM_F32 ? "F32" : "I64");
    if (ndim >= 0 && t->ndim != ndim)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: expected %d dimensions, found shape %s", what, ndim,
                        lt_shape_str(t, buf, sizeof buf));
    return LDM_OK;
}

ldm_status lt_check_finite(const ldm_tensor *t, const char *what)
{
    if (!t || t->dtype != LDM_F32) return LDM_OK;
    const float *v = lt_f32(t);
    int64_t n = lt_numel(t);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return ldm_fail(LDM_ERR_NUMERIC, "%s holds %s (element %lld of %lld)", what, isnan(v[i]) ? "NaN" : "Inf",
                            (long long)i, (long long)n);
    return LDM_OK;
}

/* ---------------------------------------------------------------- public API */

ldm_status ldm_tensor_create(ldm_dtype dtype, int ndim, const int64_t *shape, ldm_tensor **out)
{
    if (!out || (ndim > 0 && !shape)) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_tensor_create: NULL argument");
    if (dtype != LDM_F32 && dtype != LDM_I64) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_tensor_create: bad dtype %d", (int)dtype);
    return new_tensor(dtype, ndim, shape, out);
}

ldm_status ldm_tensor_wrap(ldm_dtype dtype, int ndim, const int64_t *shape, void *data, ldm_tensor **out)
{
    size_t bytes = 0;
    if (!out || !data || (ndim > 0 && !shape)) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_tensor_wrap: NULL argument");
    if (dtype != LDM_F32 && dtype != LDM_I64) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_tensor_wrap: bad dtype %d", (int)dtype);
    LDM_TRY(numel_of(ndim, shape, dtype_size(dtype), &bytes));
    ldm_tensor *t = ldm_calloc(1, sizeof *t);
    if (!t) return LDM_ERR_OUT_OF_MEMORY;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = data;
    t->owned = 0;
    *out = t;
    return LDM_OK;
}

void ldm_tensor_free(ldm_tensor *t)
{
    if (!t) return;
    if (t->owned) ldm_free(t->data);
    ldm_free(t);
}

ldm_dtype ldm_tensor_dtype(const ldm_tensor *t) { return t ? t->dtype : LDM_F32; }
int ldm_tensor_ndim(const ldm_tensor *t) { return t ? t->ndim : 0; }
int64_t ldm_tensor_dim(const ldm_tensor *t, int i) { return (t && i >= 0 && i < t->ndim) ? t->shape[i] : 0; }
int64_t ldm_tensor_numel(const ldm_tensor *t) { return t ? lt_numel(t) : 0; }
void *ldm_tensor_data(ldm_tensor *t) { return t ? t->data : NULL; }
