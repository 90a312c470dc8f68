/* st_write.c - writing a safetensors file (the format safetensors.c reads): u64 little-endian
 * header length N, N bytes of JSON, the data region. The header is padded with spaces to a
 * multiple of 8 (the format allows trailing whitespace) so the data region starts 8-aligned, and
 * tensors are laid out by element size, largest first, so every tensor's offset is a multiple of
 * its element size; the region has no holes, as the format requires.
 *
 * A checkpoint written during training must never be lost to a crash or a full disk halfway
 * through the next save: the file replaces its target atomically (atomic_file.c: a temporary file
 * in the target's folder, flushed to disk, renamed over the target; a failure removes that
 * temporary file and nothing else). */
#include "weights.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* safetensors.c refuses larger headers as hostile; never write one it would refuse. */
#define STW_MAX_HEADER ((size_t)100 * 1024 * 1024)
/* Elements converted from float32 per write call. */
#define STW_CONVERT_CHUNK 16384

/* ---------------------------------------------------------------- validation */

/* Well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF): the header is JSON,
 * which must be UTF-8, and readers (serde_json, our lj_parse) reject anything else. */
static int valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p++;
        if (c < 0x80) continue;
        int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC2 ? 1 : -1;
        if (extra < 0 || c > 0xF4) return 0;
        unsigned cp = c & (0x3Fu >> extra);
        for (int i = 0; i < extra; i++, p++) {
            if ((*p & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (*p & 0x3F);
        }
        if ((extra == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
    }
    return 1;
}

static int known_dtype(lw_dtype d) { return d >= LW_F32 && d <= LW_BOOL; }

/* Bytes tensor t occupies in the file. */
static ldm_status tensor_bytes(const char *path, const lw_out_tensor *t, size_t *out)
{
    size_t n = 1;
    if (t->ndim < 0 || t->ndim > LDM_MAX_DIMS)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: tensor %s: rank %d", path, t->name, t->ndim);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0 || (uint64_t)t->shape[d] > SIZE_MAX || ldm_mul_size(n, (size_t)t->shape[d], &n))
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: tensor %s: invalid shape", path, t->name);
    if (ldm_mul_size(n, lw_dtype_size(t->dtype), out))
        return ldm_fail(LDM_ERR_LIMIT, "%s: tensor %s: too large", path, t->name);
    return LDM_OK;
}

static ldm_status check_tensor(const char *path, const lw_out_tensor *t, size_t *nbytes)
{
    if (!t->name) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: a tensor without a name", path);
    if (!valid_utf8(t->name))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: a tensor name is not valid UTF-8", path);
    if (strcmp(t->name, "__metadata__") == 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: \"__metadata__\" is reserved, not a tensor name", path);
    if (!known_dtype(t->dtype))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: tensor %s: unknown dtype %d", path, t->name, (int)t->dtype);
    if (t->from_f32 && t->dtype != LW_F16)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: tensor %s: float32 input converts only to F16", path, t->name);
    LDM_TRY(tensor_bytes(path, t, nbytes));
    if (*nbytes && !t->data) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: tensor %s: no data", path, t->name);
    return LDM_OK;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Two entries with one name would be one JSON key twice: refused (the reader would too). */
static ldm_status check_unique(const char *path, const char **names, size_t n, const char *what)
{
    qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: %s \"%s\" given twice", path, what, names[i]);
    return LDM_OK;
}

static ldm_status check_metadata(const char *path, const char *const *keys, const char *const *values, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!keys[i] || !values[i])
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: metadata entry %zu has no key or value", path, i);
        if (!valid_utf8(keys[i]) || !valid_utf8(values[i]))
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: metadata entry %zu is not valid UTF-8", path, i);
    }
    return LDM_OK;
}

/* ---------------------------------------------------------------- the header */

typedef struct {
    char *buf;
    size_t len, cap;
    int failed; /* 1: an allocation failed, 2: the header outgrew STW_MAX_HEADER */
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->failed) return;
    if (n > STW_MAX_HEADER - b->len) {
        b->failed = 2;
        return;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        char *nb = ldm_realloc(b->buf, cap);
        if (!nb) {
            b->failed = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_fmt_u64(sbuf *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    sb_put(b, tmp, (size_t)n);
}

/* A JSON string (RFC 8259): quote, backslash and control characters escaped, UTF-8 as is. */
static void sb_json_string(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            sb_put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            sb_put(b, esc, 6);
        } else {
            sb_put(b, (const char *)p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static void sb_tensor(sbuf *b, const lw_out_tensor *t, uint64_t begin, uint64_t end)
{
    sb_json_string(b, t->name);
    sb_str(b, ":{\"dtype\":\"");
    sb_str(b, lw_dtype_name(t->dtype));
    sb_str(b, "\",\"shape\":[");
    for (int d = 0; d < t->ndim; d++) {
        if (d) sb_put(b, ",", 1);
        sb_fmt_u64(b, (uint64_t)t->shape[d]);
    }
    sb_str(b, "],\"data_offsets\":[");
    sb_fmt_u64(b, begin);
    sb_put(b, ",", 1);
    sb_fmt_u64(b, end);
    sb_str(b, "]}");
}

static void sb_metadata(sbuf *b, const char *const *keys, const char *const *values, size_t n)
{
    sb_str(b, "\"__metadata__\":{");
    for (size_t i = 0; i < n; i++) {
        if (i) sb_put(b, ",", 1);
        sb_json_string(b, keys[i]);
        sb_put(b, ":", 1);
        sb_json_string(b, values[i]);
    }
    sb_put(b, "}", 1);
}

/* The tensors in file order: 8-byte elements first, then 4, 2, 1; the caller's order within a
 * size. Every offset is then a multiple of its tensor's element size. */
static void file_order(const lw_out_tensor *t, size_t n, size_t *order)
{
    size_t k = 0;
    for (size_t size = 8; size >= 1; size /= 2)
        for (size_t i = 0; i < n; i++)
            if (lw_dtype_size(t[i].dtype) == size) order[k++] = i;
}

typedef struct {
    const char *path;
    const lw_out_tensor *t;
    size_t n;
    const size_t *nbytes; /* per tensor */
    size_t *order;        /* file order */
    const char *const *meta_keys, *const *meta_values;
    size_t n_meta;
} stw_job;

/* The JSON header, padded with spaces to a multiple of 8 bytes. */
static ldm_status build_header(const stw_job *j, sbuf *b)
{
    sb_put(b, "{", 1);
    if (j->n_meta) sb_metadata(b, j->meta_keys, j->meta_values, j->n_meta);
    uint64_t off = 0;
    for (size_t k = 0; k < j->n; k++) {
        size_t i = j->order[k];
        if (k || j->n_meta) sb_put(b, ",", 1);
        sb_tensor(b, &j->t[i], off, off + j->nbytes[i]);
        off += j->nbytes[i];
    }
    sb_put(b, "}", 1);
    while (!b->failed && b->len % 8) sb_put(b, " ", 1);
    if (!b->failed) return LDM_OK;
    if (b->failed == 2)
        return ldm_fail(LDM_ERR_LIMIT, "%s: the header would exceed %zu bytes", j->path, STW_MAX_HEADER);
    return ldm_fail_context(ldm_alloc_failure_status(), "%s: header: ", j->path);
}

/* ---------------------------------------------------------------- writing */

static ldm_status write_all(const char *path, int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return ldm_fail(LDM_ERR_IO, "%s: write failed: %s", path, w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return LDM_OK;
}

static ldm_status write_f16_from_f32(const char *path, int fd, const float *src, size_t numel)
{
    uint16_t buf[STW_CONVERT_CHUNK];
    for (size_t i = 0; i < numel; i += STW_CONVERT_CHUNK) {
        size_t k = numel - i < STW_CONVERT_CHUNK ? numel - i : STW_CONVERT_CHUNK;
        for (size_t j = 0; j < k; j++) buf[j] = lw_f32_to_f16(src[i + j]);
        LDM_TRY(write_all(path, fd, buf, k * sizeof *buf));
    }
    return LDM_OK;
}

static ldm_status write_contents(const stw_job *j, const sbuf *header, int fd)
{
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)header->len >> (8 * i));
    LDM_TRY(write_all(j->path, fd, len, 8));
    LDM_TRY(write_all(j->path, fd, header->buf, header->len));
    for (size_t k = 0; k < j->n; k++) {
        const lw_out_tensor *t = &j->t[j->order[k]];
        size_t nb = j->nbytes[j->order[k]];
        if (t->from_f32)
            LDM_TRY(write_f16_from_f32(j->path, fd, t->data, nb / 2));
        else
            LDM_TRY(write_all(j->path, fd, t->data, nb));
    }
    return LDM_OK;
}

/* ---------------------------------------------------------------- replacing the target */

/* Through lw_atomic_begin/commit (atomic_file.c): the old checkpoint stays whole until the new one
 * is entirely on disk. */
static ldm_status write_file(const stw_job *j, const sbuf *header)
{
    lw_atomic_file *f = NULL;
    LDM_TRY(lw_atomic_begin(j->path, "a safetensors file", &f));
    ldm_status st = write_contents(j, header, lw_atomic_fd(f));
    if (st == LDM_OK) return lw_atomic_commit(f);
    lw_atomic_abort(f);
    return st;
}

/* ---------------------------------------------------------------- entry point */

static ldm_status check_all(stw_job *j, size_t *nbytes, const char **names)
{
    for (size_t i = 0; i < j->n; i++) {
        LDM_TRY(check_tensor(j->path, &j->t[i], &nbytes[i]));
        names[i] = j->t[i].name;
    }
    LDM_TRY(check_unique(j->path, names, j->n, "tensor"));
    LDM_TRY(check_metadata(j->path, j->meta_keys, j->meta_values, j->n_meta));
    for (size_t i = 0; i < j->n_meta; i++) names[i] = j->meta_keys[i];
    return check_unique(j->path, names, j->n_meta, "metadata key");
}

static ldm_status write_job(stw_job *j, size_t *nbytes, const char **names)
{
    LDM_TRY(check_all(j, nbytes, names));
    file_order(j->t, j->n, j->order);
    sbuf header = {0};
    ldm_status st = build_header(j, &header);
    if (st == LDM_OK) st = write_file(j, &header);
    ldm_free(header.buf);
    return st;
}

ldm_status lw_write_safetensors(const char *path, const lw_out_tensor *tensors, size_t n_tensors,
                                const char *const *meta_keys, const char *const *meta_values, size_t n_meta)
{
    if (!path) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lw_write_safetensors: NULL path");
    if ((n_tensors && !tensors) || (n_meta && (!meta_keys || !meta_values)))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: NULL tensor or metadata list", path);
    size_t cnt = n_tensors > n_meta ? n_tensors : n_meta;
    size_t *nbytes = ldm_calloc(n_tensors ? n_tensors : 1, sizeof *nbytes);
    size_t *order = ldm_calloc(n_tensors ? n_tensors : 1, sizeof *order);
    const char **names = ldm_calloc(cnt ? cnt : 1, sizeof *names);
    ldm_status st = (nbytes && order && names) ? LDM_OK : ldm_fail_context(ldm_alloc_failure_status(), "%s: ", path);
    if (st == LDM_OK) {
        stw_job j = {path, tensors, n_tensors, nbytes, order, meta_keys, meta_values, n_meta};
        st = write_job(&j, nbytes, names);
    }
    ldm_free(nbytes);
    ldm_free(order);
    ldm_free(names);
    return st;
}
