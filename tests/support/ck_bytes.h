/* ck_bytes.h - writers of hostile files for Check suites: a growable byte buffer with
 * little-endian puts, raw deflate, a small zip writer (stored / deflated members, lying sizes,
 * bad CRCs, ZIP64 fields, other methods) and a small pickle writer (torch's tensor rebuild calls),
 * laid out as torch.save writes a checkpoint. Shared by test_badinput.c and test_hostile.c.
 * Header-only like ck_fixture.h; failures stop the running test (ck_assert). */
#ifndef LDM_TESTS_CK_BYTES_H
#define LDM_TESTS_CK_BYTES_H

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ---- byte buffers */

typedef struct {
    unsigned char *b;
    size_t n, cap;
} buf;

static inline void put(buf *o, const void *p, size_t n)
{
    if (o->n + n > o->cap) {
        o->cap = (o->n + n) * 2 + 64;
        o->b = realloc(o->b, o->cap);
        ck_assert_ptr_nonnull(o->b);
    }
    if (n) memcpy(o->b + o->n, p, n);
    o->n += n;
}
static inline void put8(buf *o, unsigned v)
{
    unsigned char c = (unsigned char)v;
    put(o, &c, 1);
}
static inline void put16(buf *o, unsigned v)
{
    put8(o, v & 0xFF);
    put8(o, (v >> 8) & 0xFF);
}
static inline void put32(buf *o, uint32_t v)
{
    put16(o, v & 0xFFFF);
    put16(o, v >> 16);
}
static inline void put64(buf *o, uint64_t v)
{
    put32(o, (uint32_t)v);
    put32(o, (uint32_t)(v >> 32));
}
static inline void puts_(buf *o, const char *s)
{
    put(o, s, strlen(s));
}

/* A whole file in memory (NULL when it cannot be opened); *len receives its size. */
static inline unsigned char *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* ---- zip */

static inline buf deflate_raw(const void *data, size_t len)
{
    z_stream s;
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(deflateInit2(&s, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    buf o = {0};
    o.cap = deflateBound(&s, (uLong)len) + 16;
    o.b = malloc(o.cap);
    s.next_in = (Bytef *)data;
    s.avail_in = (uInt)len;
    s.next_out = o.b;
    s.avail_out = (uInt)o.cap;
    ck_assert_int_eq(deflate(&s, Z_FINISH), Z_STREAM_END);
    o.n = s.total_out;
    deflateEnd(&s);
    return o;
}

typedef struct {
    const char *name;
    const void *data;
    size_t len;
    int deflate;
    int64_t declared; /* uncompressed size written in the directory; -1: the real one */
    int bad_crc;
    int zip64_extra; /* sizes/offset as 0xFFFFFFFF + a ZIP64 extra field */
    int method;      /* override (e.g. 12 = bzip2); 0: from `deflate` */
} zent;

/* An archive of the members; zip64_eocd adds the ZIP64 end records (and saturates the classic ones). */
static inline buf make_zip(const zent *e, int n, int zip64_eocd)
{
    buf o = {0};
    uint64_t *offsets = calloc((size_t)n, sizeof *offsets);
    buf *payload = calloc((size_t)n, sizeof *payload);
    uint32_t *crcs = calloc((size_t)n, sizeof *crcs);
    for (int i = 0; i < n; i++) {
        if (e[i].deflate)
            payload[i] = deflate_raw(e[i].data, e[i].len);
        else
            put(&payload[i], e[i].data, e[i].len);
        crcs[i] = (uint32_t)crc32(0, e[i].data, (uInt)e[i].len) ^ (e[i].bad_crc ? 0x5A5A5A5Au : 0);
        offsets[i] = o.n;
        uint64_t size = e[i].declared >= 0 ? (uint64_t)e[i].declared : e[i].len;
        put32(&o, 0x04034b50);
        put16(&o, 20);
        put16(&o, 0);
        put16(&o, e[i].method ? (unsigned)e[i].method : e[i].deflate ? 8 : 0);
        put32(&o, 0);
        put32(&o, crcs[i]);
        put32(&o, (uint32_t)payload[i].n);
        put32(&o, (uint32_t)size);
        put16(&o, (unsigned)strlen(e[i].name));
        put16(&o, 0);
        puts_(&o, e[i].name);
        put(&o, payload[i].b, payload[i].n);
    }
    uint64_t cd_offset = o.n;
    for (int i = 0; i < n; i++) {
        uint64_t size = e[i].declared >= 0 ? (uint64_t)e[i].declared : e[i].len;
        int z64 = e[i].zip64_extra;
        put32(&o, 0x02014b50);
        put16(&o, 45);
        put16(&o, 45);
        put16(&o, 0);
        put16(&o, e[i].method ? (unsigned)e[i].method : e[i].deflate ? 8 : 0);
        put32(&o, 0);
        put32(&o, crcs[i]);
        put32(&o, z64 ? 0xFFFFFFFFu : (uint32_t)payload[i].n);
        put32(&o, z64 ? 0xFFFFFFFFu : (uint32_t)size);
        put16(&o, (unsigned)strlen(e[i].name));
        put16(&o, z64 == 1 ? 28 : 0); /* zip64_extra == 2: saturated fields without the extra */
        put16(&o, 0);
        put16(&o, 0);
        put16(&o, 0);
        put32(&o, 0);
        put32(&o, z64 ? 0xFFFFFFFFu : (uint32_t)offsets[i]);
        puts_(&o, e[i].name);
        if (z64 == 1) {
            put16(&o, 1);
            put16(&o, 24);
            put64(&o, size);
            put64(&o, payload[i].n);
            put64(&o, offsets[i]);
        }
    }
    uint64_t cd_size = o.n - cd_offset;
    if (zip64_eocd) {
        uint64_t rec = o.n;
        put32(&o, 0x06064b50);
        put64(&o, 44);
        put16(&o, 45);
        put16(&o, 45);
        put32(&o, 0);
        put32(&o, 0);
        put64(&o, (uint64_t)n);
        put64(&o, (uint64_t)n);
        put64(&o, cd_size);
        put64(&o, cd_offset);
        put32(&o, 0x07064b50);
        put32(&o, 0);
        put64(&o, rec);
        put32(&o, 1);
    }
    put32(&o, 0x06054b50);
    put16(&o, 0);
    put16(&o, 0);
    put16(&o, zip64_eocd ? 0xFFFF : (unsigned)n);
    put16(&o, zip64_eocd ? 0xFFFF : (unsigned)n);
    put32(&o, zip64_eocd ? 0xFFFFFFFFu : (uint32_t)cd_size);
    put32(&o, zip64_eocd ? 0xFFFFFFFFu : (uint32_t)cd_offset);
    put16(&o, 0);
    for (int i = 0; i < n; i++) free(payload[i].b);
    free(payload);
    free(offsets);
    free(crcs);
    return o;
}

/* ---- pickle (protocol 2 opcodes) */

static inline void pk_str(buf *o, const char *s)
{
    put8(o, 'X');
    put32(o, (uint32_t)strlen(s));
    puts_(o, s);
}

static inline void pk_int(buf *o, int64_t v)
{
    if (v >= 0 && v < 256) {
        put8(o, 'K');
        put8(o, (unsigned)v);
    } else if (v >= 0 && v < 65536) {
        put8(o, 'M');
        put16(o, (unsigned)v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        put8(o, 'J');
        put32(o, (uint32_t)(int32_t)v);
    } else {
        put8(o, 0x8a);
        put8(o, 8);
        put64(o, (uint64_t)v);
    }
}

static inline void pk_global(buf *o, const char *mod, const char *name)
{
    put8(o, 'c');
    puts_(o, mod);
    put8(o, '\n');
    puts_(o, name);
    put8(o, '\n');
}

static inline void pk_int_tuple(buf *o, int n, const int64_t *v)
{
    put8(o, '(');
    for (int i = 0; i < n; i++) pk_int(o, v[i]);
    put8(o, 't');
}

typedef struct {
    const char *name;
    const char *storage_class; /* "FloatStorage" ... */
    const char *key;
    int64_t numel, offset;
    int ndim;
    int64_t size[4], stride[4];
    int as_parameter;
} pk_tensor;

/* torch._utils._rebuild_tensor_v2(('storage', <class>, key, 'cpu', numel), offset, size, stride,
 * False, OrderedDict()), wrapped in _rebuild_parameter when as_parameter. */
static inline void pk_tensor_value(buf *o, const pk_tensor *t)
{
    if (t->as_parameter) pk_global(o, "torch._utils", "_rebuild_parameter");
    if (t->as_parameter) put8(o, '(');
    pk_global(o, "torch._utils", "_rebuild_tensor_v2");
    put8(o, '(');
    put8(o, '(');
    pk_str(o, "storage");
    pk_global(o, "torch", t->storage_class);
    pk_str(o, t->key);
    pk_str(o, "cpu");
    pk_int(o, t->numel);
    put8(o, 't');
    put8(o, 'Q');
    pk_int(o, t->offset);
    pk_int_tuple(o, t->ndim, t->size);
    pk_int_tuple(o, t->ndim, t->stride);
    put8(o, 0x89);
    pk_global(o, "collections", "OrderedDict");
    put8(o, ')');
    put8(o, 'R');
    put8(o, 't');
    put8(o, 'R');
    if (t->as_parameter) {
        put8(o, 0x88);
        pk_global(o, "collections", "OrderedDict");
        put8(o, ')');
        put8(o, 'R');
        put8(o, 't');
        put8(o, 'R');
    }
}

#endif
