/* safetensors.c - the safetensors format: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
 * then the data region that the offsets index. The file is memory-mapped read-only and every
 * field is validated before a pointer into the mapping is handed out. */
#include "weights.h"

#include "../core/json.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Real headers are a few hundred KB even for SDXL; anything near this is hostile. */
#define ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024)

typedef struct {
    const char *path;
    const unsigned char *data; /* start of the data region */
    size_t data_size;
} st_ctx;

typedef struct {
    size_t begin, end;
    const char *name;
} st_span;

/* lj_parse reports only NULL: syntax errors read "JSON: ...", anything else is an allocation
 * failure (the allocator's message says whether the cap refused it). */
static ldm_status json_failure_status(void)
{
    const char *m = ldm_last_error();
    if (strncmp(m, "JSON:", 5) == 0) return LDM_ERR_FORMAT;
    return strstr(m, "exceeds the limit") ? LDM_ERR_LIMIT : LDM_ERR_OUT_OF_MEMORY;
}

static int parse_dtype(const char *s, lw_dtype *out)
{
    static const struct {
        const char *name;
        lw_dtype dtype;
    } table[] = {{"F32", LW_F32}, {"F16", LW_F16}, {"BF16", LW_BF16}, {"F64", LW_F64}, {"I64", LW_I64},
                 {"I32", LW_I32}, {"I16", LW_I16}, {"I8", LW_I8},     {"U8", LW_U8},   {"BOOL", LW_BOOL}};
    for (size_t i = 0; i < LDM_ARRAY_LEN(table); i++)
        if (strcmp(s, table[i].name) == 0) {
            *out = table[i].dtype;
            return 1;
        }
    return 0;
}

/* Reads a non-negative JSON integer that fits size_t. */
static int json_size(const lj_value *v, size_t *out)
{
    int64_t x;
    if (lj_int64(v, &x) != 0 || x < 0 || (uint64_t)x > SIZE_MAX) return 0;
    *out = (size_t)x;
    return 1;
}

static ldm_status parse_shape(const st_ctx *c, const char *name, const lj_value *shape, int *ndim, int64_t *dims,
                              size_t *numel)
{
    if (!shape || shape->type != LJ_ARRAY)
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: missing or invalid \"shape\"", c->path, name);
    if (shape->count > LDM_MAX_DIMS)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: tensor %s: rank %zu exceeds the maximum of %d", c->path, name,
                        shape->count, LDM_MAX_DIMS);
    size_t n = 1;
    for (size_t i = 0; i < shape->count; i++) {
        int64_t d;
        if (lj_int64(shape->items[i], &d) != 0 || d < 0)
            return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: shape entry %zu is not a non-negative integer", c->path,
                            name, i);
        if ((uint64_t)d > SIZE_MAX || ldm_mul_size(n, (size_t)d, &n))
            return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: element count overflows", c->path, name);
        dims[i] = d;
    }
    *ndim = (int)shape->count;
    *numel = n;
    return LDM_OK;
}

static ldm_status parse_entry(const st_ctx *c, lw_store *s, const char *name, const lj_value *e, st_span *span)
{
    if (!e || e->type != LJ_OBJECT)
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: header entry is not an object", c->path, name);
    const char *dt = lj_string(lj_get(e, "dtype"), NULL);
    if (!dt) return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: missing \"dtype\"", c->path, name);
    lw_dtype dtype;
    if (!parse_dtype(dt, &dtype))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: tensor %s: unsupported dtype \"%s\"", c->path, name, dt);

    int ndim = 0;
    int64_t dims[LDM_MAX_DIMS] = {0};
    size_t numel = 0;
    LDM_TRY(parse_shape(c, name, lj_get(e, "shape"), &ndim, dims, &numel));

    const lj_value *off = lj_get(e, "data_offsets");
    size_t begin, end, nbytes;
    if (!off || off->type != LJ_ARRAY || off->count != 2 || !json_size(off->items[0], &begin) ||
        !json_size(off->items[1], &end))
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: missing or invalid \"data_offsets\"", c->path, name);
    if (begin > end || end > c->data_size)
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: data_offsets [%zu,%zu] outside the data region of %zu bytes",
                        c->path, name, begin, end, c->data_size);
    if (ldm_mul_size(numel, lw_dtype_size(dtype), &nbytes))
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: byte size overflows", c->path, name);
    if (nbytes != end - begin)
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: %zu bytes stored, shape and dtype %s need %zu", c->path, name,
                        end - begin, dt, nbytes);

    span->begin = begin;
    span->end = end;
    span->name = name;
    return lw_store_add(s, name, dtype, ndim, dims, c->data + begin, nbytes);
}

static int span_cmp(const void *a, const void *b)
{
    const st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : (x->end > y->end);
}

/* Two tensors sharing bytes would alias each other's weights: reject. Empty tensors occupy no
 * bytes and cannot overlap anything. */
static ldm_status check_overlaps(const st_ctx *c, st_span *spans, size_t n)
{
    qsort(spans, n, sizeof *spans, span_cmp);
    const st_span *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        if (spans[i].begin == spans[i].end) continue;
        if (prev && spans[i].begin < prev->end)
            return ldm_fail(LDM_ERR_FORMAT, "%s: tensors %s and %s overlap in the data region", c->path, prev->name,
                            spans[i].name);
        prev = &spans[i];
    }
    return LDM_OK;
}

static ldm_status parse_header(const st_ctx *c, lw_store *s, const lj_value *root)
{
    if (root->type != LJ_OBJECT) return ldm_fail(LDM_ERR_FORMAT, "%s: header is not a JSON object", c->path);
    st_span *spans = ldm_calloc(root->count ? root->count : 1, sizeof *spans);
    if (!spans) return ldm_fail_context(lw_alloc_status(root->count * sizeof *spans), "%s: ", c->path);
    size_t n = 0;
    ldm_status st = LDM_OK;
    for (size_t i = 0; i < root->count && st == LDM_OK; i++) {
        if (strcmp(root->keys[i], "__metadata__") == 0) continue;
        st = parse_entry(c, s, root->keys[i], root->items[i], &spans[n]);
        if (st == LDM_OK) n++;
    }
    if (st == LDM_OK) st = check_overlaps(c, spans, n);
    ldm_free(spans);
    return st;
}

ldm_status lw_open_safetensors(const char *path, lw_store **out)
{
    *out = NULL;
    void *map = NULL;
    size_t size = 0;
    LDM_TRY(lw_map_file(path, 8, "a safetensors header", &map, &size));
    lw_store *s = NULL;
    ldm_status st = lw_store_create(path, &s);
    if (st != LDM_OK) {
        munmap(map, size);
        return ldm_fail_context(st, "%s: ", path);
    }
    lw_store_set_mapping(s, map, size);

    const unsigned char *bytes = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | bytes[i];
    if (hlen > size - 8)
        st = ldm_fail(LDM_ERR_FORMAT, "%s: header length %llu exceeds the file size %zu", path,
                      (unsigned long long)hlen, size);
    else if (hlen > ST_MAX_HEADER)
        st = ldm_fail(LDM_ERR_LIMIT, "%s: header length %llu exceeds the limit of %llu bytes", path,
                      (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
    if (st == LDM_OK) {
        ldm_clear_error();
        lj_value *root = lj_parse((const char *)bytes + 8, (size_t)hlen);
        if (!root) {
            st = ldm_fail_context(json_failure_status(), "%s: header: ", path);
        } else {
            st_ctx c = {path, bytes + 8 + hlen, size - 8 - (size_t)hlen};
            st = parse_header(&c, s, root);
            lj_free(root);
        }
    }
    if (st == LDM_OK) st = lw_store_seal(s);
    if (st != LDM_OK) {
        lw_close(s);
        return st;
    }
    *out = s;
    return LDM_OK;
}
