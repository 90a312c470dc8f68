/* weights.c - the format-independent tensor store: construction by the loaders, lookup by
 * name (sorted table + binary search), float32 conversion with shape checks, format detection. */
#include "weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct lw_store {
    char *path;
    lw_tensor *tensors;
    size_t count, cap;
    void *mapping;
    size_t mapping_size;
    void **owned;
    size_t n_owned, cap_owned;
    int sorted;
    int synthetic;          /* absent tensors of known shape are generated (synthetic.c) */
    uint64_t synth_seed;
    lw_tensor *stored;      /* per tensor: what the file holds while an override is in force
                               (data NULL: none), allocated on the first override */
    lw_store **children;    /* stores whose bytes this one's tensors point into (a diffusers
                               folder's component files), closed with it */
    size_t n_children;
};

void lw_store_set_synthetic(lw_store *s, uint64_t seed)
{
    s->synthetic = 1;
    s->synth_seed = seed;
}

/* A synthetic store's answer for an absent tensor of fully known shape. */
static ldm_status synthesize(const lw_store *s, const char *name, int ndim, const int64_t *shape, float **out)
{
    size_t numel = 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || ldm_mul_size(numel, (size_t)shape[i], &numel))
            return ldm_fail(LDM_ERR_LIMIT, "%s: tensor %s: bad synthetic shape", s->path, name);
    size_t bytes;
    if (ldm_mul_size(numel, sizeof(float), &bytes)) return ldm_fail(LDM_ERR_LIMIT, "%s: tensor %s is too large", s->path, name);
    float *buf = ldm_malloc_aligned(bytes);
    if (!buf) return ldm_fail_context(lw_alloc_status(bytes), "%s: tensor %s: ", s->path, name);
    lw_synth_fill(name, s->synth_seed, ndim, shape, buf);
    *out = buf;
    return LDM_OK;
}

/* ---------------------------------------------------------------- construction */

ldm_status lw_store_create(const char *path, lw_store **out)
{
    *out = NULL;
    if (!path) path = "(memory)";
    lw_store *s = ldm_calloc(1, sizeof *s);
    if (!s) return lw_alloc_status(sizeof *s);
    s->path = ldm_strdup(path);
    if (!s->path) {
        ldm_free(s);
        return lw_alloc_status(strlen(path) + 1);
    }
    *out = s;
    return LDM_OK;
}

lw_store *lw_store_new(const char *path)
{
    lw_store *s = NULL;
    lw_store_create(path, &s);
    return s;
}

void lw_store_set_mapping(lw_store *s, void *mapping, size_t size)
{
    s->mapping = mapping;
    s->mapping_size = size;
}

int lw_store_in_mapping(const lw_store *s, const void *p, size_t n)
{
    if (!s || !p) return 0;
    for (size_t i = 0; i < s->n_children; i++)
        if (lw_store_in_mapping(s->children[i], p, n)) return 1;
    if (!s->mapping) return 0;
    uintptr_t base = (uintptr_t)s->mapping, at = (uintptr_t)p;
    return at >= base && at - base <= s->mapping_size && n <= s->mapping_size - (at - base);
}

void lw_store_release_pages(const lw_store *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n_children; i++) lw_store_release_pages(s->children[i]);
    if (s->mapping) ldm_pages_drop(s->mapping, s->mapping_size);
}

ldm_status lw_store_adopt(lw_store *s, lw_store *child)
{
    lw_store **grown = ldm_realloc(s->children, (s->n_children + 1) * sizeof *grown);
    if (!grown) {
        lw_close(child); /* ownership was handed over */
        return ldm_fail_context(lw_alloc_status((s->n_children + 1) * sizeof *grown), "%s: ", s->path);
    }
    s->children = grown;
    s->children[s->n_children++] = child;
    return LDM_OK;
}

ldm_status lw_store_keep(lw_store *s, void *owned_block)
{
    if (s->n_owned == s->cap_owned) {
        size_t cap = s->cap_owned ? s->cap_owned * 2 : 16;
        void **grown = ldm_realloc(s->owned, cap * sizeof *grown);
        if (!grown) {
            ldm_free(owned_block); /* the caller handed over ownership: don't leak it */
            return ldm_fail_context(lw_alloc_status(cap * sizeof *grown), "%s: ", s->path);
        }
        s->owned = grown;
        s->cap_owned = cap;
    }
    s->owned[s->n_owned++] = owned_block;
    return LDM_OK;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(((const lw_tensor *)a)->name, ((const lw_tensor *)b)->name);
}

/* Duplicates are not searched for here (that would be quadratic); lw_store_seal finds them as
 * equal neighbours after sorting. */
ldm_status lw_store_add(lw_store *s, const char *name, lw_dtype dtype, int ndim, const int64_t *shape,
                        const void *data, size_t nbytes)
{
    if (ndim < 0 || ndim > LDM_MAX_DIMS)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: tensor %s: rank %d exceeds the maximum of %d", s->path,
                        name, ndim, LDM_MAX_DIMS);
    if (s->count == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        size_t bytes;
        if (ldm_mul_size(cap, sizeof(lw_tensor), &bytes))
            return ldm_fail(LDM_ERR_LIMIT, "%s: too many tensors", s->path);
        lw_tensor *grown = ldm_realloc(s->tensors, bytes);
        if (!grown) return ldm_fail_context(lw_alloc_status(bytes), "%s: ", s->path);
        s->tensors = grown;
        s->cap = cap;
    }
    lw_tensor *t = &s->tensors[s->count];
    memset(t, 0, sizeof *t);
    t->name = ldm_strdup(name);
    if (!t->name) return ldm_fail_context(lw_alloc_status(strlen(name) + 1), "%s: ", s->path);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = nbytes;
    s->count++;
    s->sorted = 0;
    return LDM_OK;
}

void lw_store_finish(lw_store *s)
{
    if (s->count > 1) qsort(s->tensors, s->count, sizeof *s->tensors, name_cmp);
    s->sorted = 1;
}

/* Duplicate names would make lookups ambiguous. */
ldm_status lw_store_seal(lw_store *s)
{
    lw_store_finish(s);
    for (size_t i = 1; i < s->count; i++)
        if (strcmp(s->tensors[i - 1].name, s->tensors[i].name) == 0)
            return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s appears twice", s->path, s->tensors[i].name);
    return LDM_OK;
}

void lw_close(lw_store *s)
{
    if (s) ldm_free(s->stored);
    if (!s) return;
    for (size_t i = 0; i < s->count; i++) ldm_free(s->tensors[i].name);
    ldm_free(s->tensors);
    for (size_t i = 0; i < s->n_owned; i++) ldm_free(s->owned[i]);
    ldm_free(s->owned);
    if (s->mapping && s->mapping_size) munmap(s->mapping, s->mapping_size);
    for (size_t i = 0; i < s->n_children; i++) lw_close(s->children[i]);
    ldm_free(s->children);
    ldm_free(s->path);
    ldm_free(s);
}

/* ---------------------------------------------------------------- lookup */

size_t lw_count(const lw_store *s) { return s ? s->count : 0; }

const lw_tensor *lw_at(const lw_store *s, size_t i) { return (s && i < s->count) ? &s->tensors[i] : NULL; }

const char *lw_path(const lw_store *s) { return s ? s->path : ""; }

const lw_tensor *lw_find(const lw_store *s, const char *name)
{
    if (!s || !name) return NULL;
    if (!s->sorted) {
        for (size_t i = 0; i < s->count; i++)
            if (strcmp(s->tensors[i].name, name) == 0) return &s->tensors[i];
        return NULL;
    }
    size_t lo = 0, hi = s->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->tensors[mid].name, name);
        if (c == 0) return &s->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

int lw_has_prefix(const lw_store *s, const char *prefix)
{
    if (!s || !prefix) return 0;
    size_t n = strlen(prefix);
    if (!s->sorted) {
        for (size_t i = 0; i < s->count; i++)
            if (strncmp(s->tensors[i].name, prefix, n) == 0) return 1;
        return 0;
    }
    /* Names starting with prefix sort right at or after the first name >= prefix. */
    size_t lo = 0, hi = s->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(s->tensors[mid].name, prefix) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo < s->count && strncmp(s->tensors[lo].name, prefix, n) == 0;
}

/* ---------------------------------------------------------------- dtypes */

size_t lw_dtype_size(lw_dtype d)
{
    switch (d) {
    case LW_F64: case LW_I64: return 8;
    case LW_F32: case LW_I32: return 4;
    case LW_F16: case LW_BF16: case LW_I16: return 2;
    case LW_I8: case LW_U8: case LW_BOOL: return 1;
    }
    return 0;
}

const char *lw_dtype_name(lw_dtype d)
{
    switch (d) {
    case LW_F32: return "F32";
    case LW_F16: return "F16";
    case LW_BF16: return "BF16";
    case LW_F64: return "F64";
    case LW_I64: return "I64";
    case LW_I32: return "I32";
    case LW_I16: return "I16";
    case LW_I8: return "I8";
    case LW_U8: return "U8";
    case LW_BOOL: return "BOOL";
    }
    return "?";
}

float lw_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13); /* inf, or NaN keeping its payload */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* Subnormal half: value = man * 2^-24, exactly representable as a normal float. */
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        man &= 0x3FFu;
        bits = sign | ((uint32_t)(112 - e) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float lw_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t lw_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t exp = (x >> 23) & 0xFFu;
    uint32_t man = x & 0x7FFFFFu;
    if (exp == 0xFF) { /* inf / NaN (NaN stays NaN: force a mantissa bit) */
        if (man == 0) return sign | 0x7C00u;
        return (uint16_t)(sign | 0x7C00u | 0x200u | (man >> 13));
    }
    int e = (int)exp - 127 + 15; /* biased half exponent */
    if (e >= 0x1F) return sign | 0x7C00u; /* overflow -> inf */
    if (e <= 0) {
        /* Subnormal (or zero) half: shift the full significand right, round to nearest even. */
        if (e < -10) return sign; /* below half the smallest subnormal: rounds to zero */
        uint32_t m = man | 0x800000u;
        int shift = 14 - e; /* 13 for the mantissa width difference + (1 - e) */
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half); /* a carry into bit 10 gives the smallest normal: correct */
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) half++; /* carry may round up to inf: correct */
    return (uint16_t)(sign | half);
}

/* ---------------------------------------------------------------- float32 copies */

static void shape_str(int ndim, const int64_t *shape, char *buf, size_t cap)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, i ? ",%lld" : "%lld", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

static int shape_matches(const lw_tensor *t, int ndim, const int64_t *shape)
{
    if (ndim < 0) return 1;
    /* A scalar is 0-dim in a .ckpt (model_ema.decay) but often [1] once converted to
     * safetensors; treat the two as the same shape. */
    int t_scalar = t->ndim == 0 || (t->ndim == 1 && t->shape[0] == 1);
    int want_scalar = ndim == 0 || (ndim == 1 && shape[0] == 1);
    if (t_scalar && want_scalar) return 1;
    if (t->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

/* Tensor bytes may sit at any alignment in a mapping, so every element is read with memcpy. */
static void convert_to_f32(const lw_tensor *t, size_t numel, float *out)
{
    const unsigned char *src = t->data;
    switch (t->dtype) {
    case LW_F32:
        if (numel) memcpy(out, src, numel * sizeof(float));
        break;
    case LW_F16:
        for (size_t i = 0; i < numel; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = lw_f16_to_f32(h);
        }
        break;
    case LW_BF16:
        for (size_t i = 0; i < numel; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = lw_bf16_to_f32(h);
        }
        break;
    case LW_F64:
        for (size_t i = 0; i < numel; i++) {
            double d;
            memcpy(&d, src + 8 * i, 8);
            out[i] = (float)d;
        }
        break;
    default:
        break;
    }
}

ldm_status lw_get_f32(const lw_store *s, const char *name, int ndim, const int64_t *shape, float **out)
{
    *out = NULL;
    if (!s || !name) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lw_get_f32: NULL store or name");
    const lw_tensor *t = lw_find(s, name);
    if (!t && s->synthetic && ndim >= 0 && (ndim == 0 || shape)) return synthesize(s, name, ndim, shape, out);
    if (!t) return ldm_fail(LDM_ERR_NOT_FOUND, "%s: tensor %s not found", s->path, name);
    if (!shape_matches(t, ndim, shape)) {
        char want[256], got[256];
        shape_str(ndim, shape, want, sizeof want);
        shape_str(t->ndim, t->shape, got, sizeof got);
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: expected shape %s, found %s", s->path, name, want, got);
    }
    if (t->dtype != LW_F32 && t->dtype != LW_F16 && t->dtype != LW_BF16 && t->dtype != LW_F64)
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: expected a floating-point dtype, found %s", s->path, name,
                        lw_dtype_name(t->dtype));
    size_t numel = t->nbytes / lw_dtype_size(t->dtype);
    size_t bytes;
    if (ldm_mul_size(numel, sizeof(float), &bytes))
        return ldm_fail(LDM_ERR_LIMIT, "%s: tensor %s is too large", s->path, name);
    float *buf = ldm_malloc_aligned(bytes);
    if (!buf) return ldm_fail_context(lw_alloc_status(bytes), "%s: tensor %s: ", s->path, name);
    convert_to_f32(t, numel, buf);
    /* A NaN or Inf weight would silently poison every output: refuse it when the weight is
     * widened (once per component creation), naming the tensor. */
    for (size_t i = 0; i < numel; i++)
        if (!isfinite(buf[i])) {
            int nan = isnan(buf[i]);
            ldm_free(buf);
            return ldm_fail(LDM_ERR_NUMERIC, "%s: tensor %s holds %s (element %zu of %zu)", s->path, name,
                            nan ? "NaN" : "Inf", i, numel);
        }
    *out = buf;
    return LDM_OK;
}

/* Exponent field all ones means Inf or NaN in every IEEE format; tested on the raw bits so that
 * F16 weights kept as stored need no conversion to be checked. */
/* Index of the first of n elements (`width` bytes each, exponent bits e) that is Inf or NaN, else
 * n. Checking every weight at load must cost far less than a sampler step (element by element it
 * took seconds for an SD 2.x file), so 8 bytes are tested at once: a lane is non-finite when
 * (lane & e) ^ e is zero, and ((v - ones) & ~v & tops) is non-zero exactly when some lane of v is
 * zero (the classic zero-byte test, per lane); the word with a hit is then searched lane by lane. */
static size_t first_nonfinite(const unsigned char *p, size_t n, size_t width, uint64_t e)
{
    size_t per = 8 / width, bits = 8 * width, i = 0;
    uint64_t lanes_e = 0, ones = 0, tops = 0;
    for (size_t k = 0; k < per; k++) {
        lanes_e |= e << (k * bits);
        ones |= 1ull << (k * bits);
        tops |= 1ull << (k * bits + bits - 1);
    }
    for (; i + per <= n; i += per) {
        uint64_t w, v;
        memcpy(&w, p + i * width, 8); /* little-endian host and file; the data may be unaligned */
        v = (w & lanes_e) ^ lanes_e;
        if ((v - ones) & ~v & tops) break;
    }
    for (; i < n; i++) {
        uint64_t lane = 0;
        memcpy(&lane, p + i * width, width);
        if ((lane & e) == e) return i;
    }
    return n;
}

ldm_status lw_check_finite(const lw_store *s, const lw_tensor *t)
{
    uint64_t exp_mask, man_mask;
    switch (t->dtype) {
    case LW_F16: exp_mask = 0x7C00u, man_mask = 0x03FFu; break;
    case LW_BF16: exp_mask = 0x7F80u, man_mask = 0x007Fu; break;
    case LW_F32: exp_mask = 0x7F800000u, man_mask = 0x007FFFFFu; break;
    case LW_F64: exp_mask = 0x7FF0000000000000ull, man_mask = 0x000FFFFFFFFFFFFFull; break;
    default: return LDM_OK;
    }
    size_t width = lw_dtype_size(t->dtype), numel = t->nbytes / width;
    const unsigned char *p = t->data;
    size_t i = first_nonfinite(p, numel, width, exp_mask);
    if (i == numel) return LDM_OK;
    uint64_t bits = 0;
    memcpy(&bits, p + i * width, width); /* little-endian host and file */
    return ldm_fail(LDM_ERR_NUMERIC, "%s: tensor %s holds %s (element %zu of %zu)", lw_path(s), t->name,
                    (bits & man_mask) ? "NaN" : "Inf", i, numel);
}

ldm_status lw_get_f32f(const lw_store *s, int ndim, const int64_t *shape, float **out, const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof name) {
        *out = NULL;
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tensor name too long (%s...)", name);
    }
    return lw_get_f32(s, name, ndim, shape, out);
}

void lw_ema_name(const char *param_name, char *out, size_t cap)
{
    if (!cap) return;
    static const char prefix[] = "model_ema.";
    const char *rest = param_name;
    if (strncmp(rest, "model.", 6) == 0) rest += 6;
    size_t n = 0;
    for (size_t i = 0; prefix[i] && n + 1 < cap; i++) out[n++] = prefix[i];
    for (; *rest && n + 1 < cap; rest++)
        if (*rest != '.') out[n++] = *rest;
    out[n] = '\0';
}

/* ---------------------------------------------------------------- format detection */

ldm_status lw_open(const char *path, size_t max_alloc, lw_store **out)
{
    *out = NULL;
    if (!path) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lw_open: NULL path");
    FILE *f;
    LDM_TRY(lw_fopen_regular(path, NULL, LDM_ERR_IO, &f));
    unsigned char head[9];
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);

    size_t saved_cap = ldm_alloc_get_cap();
    ldm_alloc_set_cap(max_alloc);
    ldm_status st;
    if (got >= 4 && memcmp(head, "PK\x03\x04", 4) == 0) {
        st = lw_open_ckpt(path, out);
    } else if (got == 9 && head[8] == '{') {
        st = lw_open_safetensors(path, out);
    } else if (got >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5) {
        st = ldm_fail(LDM_ERR_UNSUPPORTED,
                      "%s: legacy (pre-1.6, non-zip) PyTorch checkpoint; re-save it with torch.save or convert to "
                      "safetensors",
                      path);
    } else {
        st = ldm_fail(LDM_ERR_FORMAT, "%s: not a safetensors file or a PyTorch zip checkpoint", path);
    }
    ldm_alloc_set_cap(saved_cap);
    return st;
}

/* ---- overriding values (LoRA merges): the table entry points at the caller's float32 array, the
 * file's entry is kept aside so restoring is exact (the stored bytes were never written). */

static ptrdiff_t tensor_index(const lw_store *s, const char *name)
{
    const lw_tensor *t = lw_find(s, name);
    return t ? t - s->tensors : -1;
}

ldm_status lw_store_override(lw_store *s, const char *name, const float *f32)
{
    ptrdiff_t i = s && name && f32 ? tensor_index(s, name) : -1;
    if (i < 0) return ldm_fail(LDM_ERR_NOT_FOUND, "%s: override of an unknown tensor %s", lw_path(s), name ? name : "?");
    if (!s->stored) {
        s->stored = ldm_calloc(s->count, sizeof *s->stored);
        if (!s->stored) return ldm_fail_context(ldm_alloc_failure_status(), "%s: override of %s: ", s->path, name);
    }
    lw_tensor *t = &s->tensors[i];
    if (!s->stored[i].data) s->stored[i] = *t;
    size_t numel = s->stored[i].nbytes / lw_dtype_size(s->stored[i].dtype);
    t->dtype = LW_F32;
    t->data = f32;
    t->nbytes = numel * sizeof(float);
    return LDM_OK;
}

void lw_store_restore(lw_store *s, const char *name)
{
    ptrdiff_t i = s && name && s->stored ? tensor_index(s, name) : -1;
    if (i < 0 || !s->stored[i].data) return;
    s->tensors[i] = s->stored[i];
    memset(&s->stored[i], 0, sizeof s->stored[i]);
}

const lw_tensor *lw_find_stored(const lw_store *s, const char *name)
{
    ptrdiff_t i = s && name ? tensor_index(s, name) : -1;
    if (i < 0) return NULL;
    return s->stored && s->stored[i].data ? &s->stored[i] : &s->tensors[i];
}

ldm_status lw_tensor_to_f32(const lw_store *s, const lw_tensor *t, float *out)
{
    if (t->dtype != LW_F32 && t->dtype != LW_F16 && t->dtype != LW_BF16 && t->dtype != LW_F64)
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: expected a floating-point dtype, found %s", lw_path(s), t->name,
                        lw_dtype_name(t->dtype));
    size_t numel = t->nbytes / lw_dtype_size(t->dtype);
    convert_to_f32(t, numel, out);
    for (size_t i = 0; i < numel; i++)
        if (!isfinite(out[i]))
            return ldm_fail(LDM_ERR_NUMERIC, "%s: tensor %s holds %s (element %zu of %zu)", lw_path(s), t->name,
                            isnan(out[i]) ? "NaN" : "Inf", i, numel);
    return LDM_OK;
}
