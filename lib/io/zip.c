/* zip.c - zip central directory reader and member extraction (stored / raw deflate).
 *
 * The central directory is the authority: torch.save streams members with data descriptors,
 * so local headers carry zero sizes and CRCs. Local headers are still checked (signature, name)
 * because their variable-length extra field decides where a member's bytes start. */
#include "zip.h"

#include "weights.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_EOCD64_LOCATOR 0x07064b50u

#define EOCD_SIZE 22
#define EOCD64_SIZE 56
#define LOCATOR_SIZE 20
#define CENTRAL_SIZE 46
#define LOCAL_SIZE 30
#define MAX_COMMENT 65535

/* Deflate cannot compress better than about 1032:1, so a member that claims more is lying. */
#define DEFLATE_MAX_RATIO 1032u

struct lw_zip {
    const char *path;
    const unsigned char *bytes;
    size_t size;
    lw_zip_entry *entries;
    size_t count;
};

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

/* [off, off+len) lies inside [0, limit). */
static int in_range(uint64_t off, uint64_t len, uint64_t limit) { return off <= limit && len <= limit - off; }

typedef struct {
    uint64_t count;
    uint64_t cd_offset;
    uint64_t cd_size;
    uint64_t cd_limit; /* the directory must end before this offset (start of the EOCD records) */
} zip_directory;

static ldm_status find_eocd(const lw_zip *z, size_t *eocd_pos)
{
    if (z->size < EOCD_SIZE) return ldm_fail(LDM_ERR_FORMAT, "%s: too short for a zip archive", z->path);
    size_t last = z->size - EOCD_SIZE;
    size_t first = last > MAX_COMMENT ? last - MAX_COMMENT : 0;
    for (size_t pos = last + 1; pos-- > first;) {
        const unsigned char *p = z->bytes + pos;
        if (rd32(p) == SIG_EOCD && (uint64_t)pos + EOCD_SIZE + rd16(p + 20) <= z->size) {
            *eocd_pos = pos;
            return LDM_OK;
        }
    }
    return ldm_fail(LDM_ERR_FORMAT, "%s: zip end-of-central-directory record not found (truncated file?)", z->path);
}

/* ZIP64: a locator just before the EOCD points at a 64-bit EOCD record whose values replace the
 * saturated 16/32-bit ones. torch.save always writes these. */
static ldm_status read_zip64(const lw_zip *z, size_t eocd_pos, zip_directory *d)
{
    if (eocd_pos < LOCATOR_SIZE) return LDM_OK;
    const unsigned char *loc = z->bytes + eocd_pos - LOCATOR_SIZE;
    if (rd32(loc) != SIG_EOCD64_LOCATOR) return LDM_OK;
    uint64_t rec = rd64(loc + 8);
    if (rd32(loc + 4) != 0 || rd32(loc + 16) > 1)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: multi-disk zip archives are not supported", z->path);
    if (!in_range(rec, EOCD64_SIZE, eocd_pos - LOCATOR_SIZE))
        return ldm_fail(LDM_ERR_FORMAT, "%s: ZIP64 end record offset %llu is out of range", z->path,
                        (unsigned long long)rec);
    const unsigned char *p = z->bytes + rec;
    if (rd32(p) != SIG_EOCD64) return ldm_fail(LDM_ERR_FORMAT, "%s: bad ZIP64 end record signature", z->path);
    if (rd32(p + 16) != 0 || rd32(p + 20) != 0 || rd64(p + 24) != rd64(p + 32))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: multi-disk zip archives are not supported", z->path);
    d->count = rd64(p + 32);
    d->cd_size = rd64(p + 40);
    d->cd_offset = rd64(p + 48);
    d->cd_limit = rec;
    return LDM_OK;
}

static ldm_status read_directory_location(const lw_zip *z, zip_directory *d)
{
    size_t pos = 0;
    LDM_TRY(find_eocd(z, &pos));
    const unsigned char *p = z->bytes + pos;
    if (rd16(p + 4) != 0 || rd16(p + 6) != 0 || rd16(p + 8) != rd16(p + 10))
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: multi-disk zip archives are not supported", z->path);
    d->count = rd16(p + 10);
    d->cd_size = rd32(p + 12);
    d->cd_offset = rd32(p + 16);
    d->cd_limit = pos;
    LDM_TRY(read_zip64(z, pos, d));
    if (!in_range(d->cd_offset, d->cd_size, d->cd_limit))
        return ldm_fail(LDM_ERR_FORMAT, "%s: central directory [%llu, +%llu) lies outside the archive", z->path,
                        (unsigned long long)d->cd_offset, (unsigned long long)d->cd_size);
    if (d->count > d->cd_size / CENTRAL_SIZE)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %llu entries cannot fit a central directory of %llu bytes", z->path,
                        (unsigned long long)d->count, (unsigned long long)d->cd_size);
    return LDM_OK;
}

/* Replaces saturated 32-bit fields with the values of the ZIP64 extra field (tag 1), which
 * lists only the saturated ones, in this order. */
static ldm_status apply_zip64_extra(const lw_zip *z, const char *name, const unsigned char *extra, size_t len,
                                    uint64_t *size, uint64_t *comp, uint64_t *offset)
{
    int need_size = *size == 0xFFFFFFFFu, need_comp = *comp == 0xFFFFFFFFu, need_off = *offset == 0xFFFFFFFFu;
    if (!need_size && !need_comp && !need_off) return LDM_OK;
    size_t pos = 0;
    while (len - pos >= 4) {
        uint16_t tag = rd16(extra + pos), flen = rd16(extra + pos + 2);
        if (flen > len - pos - 4) break;
        if (tag == 1) {
            const unsigned char *f = extra + pos + 4;
            size_t need = 8u * (size_t)(need_size + need_comp + need_off);
            if (flen < need) break;
            if (need_size) { *size = rd64(f); f += 8; }
            if (need_comp) { *comp = rd64(f); f += 8; }
            if (need_off) *offset = rd64(f);
            return LDM_OK;
        }
        pos += 4u + flen;
    }
    return ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s: missing or short ZIP64 extra field", z->path, name);
}

/* Checks the member's local header and computes where its bytes start. */
static ldm_status locate_data(const lw_zip *z, const zip_directory *d, lw_zip_entry *e, uint64_t local)
{
    if (!in_range(local, LOCAL_SIZE, d->cd_offset))
        return ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s: local header offset %llu is out of range", z->path, e->name,
                        (unsigned long long)local);
    const unsigned char *p = z->bytes + local;
    if (rd32(p) != SIG_LOCAL)
        return ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s: bad local header signature", z->path, e->name);
    uint64_t name_len = rd16(p + 26), extra_len = rd16(p + 28);
    uint64_t start = local + LOCAL_SIZE + name_len + extra_len;
    if (!in_range(local + LOCAL_SIZE, name_len, d->cd_offset) ||
        name_len != strlen(e->name) || memcmp(p + LOCAL_SIZE, e->name, name_len) != 0)
        return ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s: local header name does not match", z->path, e->name);
    if (!in_range(start, e->comp_size, d->cd_offset))
        return ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s: %llu bytes at offset %llu run past the archive data",
                        z->path, e->name, (unsigned long long)e->comp_size, (unsigned long long)start);
    e->data_offset = start;
    return LDM_OK;
}

static ldm_status check_method(const lw_zip *z, const lw_zip_entry *e, uint16_t flags)
{
    if (flags & 1u) return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: zip entry %s is encrypted", z->path, e->name);
    if (e->method == 0 && e->comp_size != e->size)
        return ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s: stored with %llu bytes but declares %llu", z->path,
                        e->name, (unsigned long long)e->comp_size, (unsigned long long)e->size);
    /* (An absurd comp_size is left to locate_data, which bounds it by the file.) */
    if (e->method == 8 && e->comp_size <= UINT64_MAX / DEFLATE_MAX_RATIO / 2) {
        uint64_t max = e->comp_size * DEFLATE_MAX_RATIO + 64;
        if (e->size > max)
            return ldm_fail(LDM_ERR_FORMAT,
                            "%s: zip entry %s: declares %llu bytes from %llu compressed, beyond what deflate can do",
                            z->path, e->name, (unsigned long long)e->size, (unsigned long long)e->comp_size);
    }
    if (e->method != 0 && e->method != 8)
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: zip entry %s: compression method %u is not supported", z->path,
                        e->name, e->method);
    return LDM_OK;
}

/* Parses one central directory header at *pos, advancing it. */
static ldm_status read_entry(const lw_zip *z, const zip_directory *d, uint64_t *pos, lw_zip_entry *e)
{
    uint64_t end = d->cd_offset + d->cd_size;
    if (!in_range(*pos, CENTRAL_SIZE, end) || rd32(z->bytes + *pos) != SIG_CENTRAL)
        return ldm_fail(LDM_ERR_FORMAT, "%s: corrupt zip central directory at offset %llu", z->path,
                        (unsigned long long)*pos);
    const unsigned char *p = z->bytes + *pos;
    uint16_t flags = rd16(p + 8), name_len = rd16(p + 28), extra_len = rd16(p + 30), comment_len = rd16(p + 32);
    uint64_t total = (uint64_t)CENTRAL_SIZE + name_len + extra_len + comment_len;
    if (!in_range(*pos, total, end))
        return ldm_fail(LDM_ERR_FORMAT, "%s: zip central directory entry at offset %llu is truncated", z->path,
                        (unsigned long long)*pos);
    const unsigned char *name = p + CENTRAL_SIZE;
    if (memchr(name, 0, name_len))
        return ldm_fail(LDM_ERR_FORMAT, "%s: zip entry name with a NUL byte", z->path);
    e->name = ldm_malloc((size_t)name_len + 1);
    if (!e->name) return ldm_fail_context(lw_alloc_status((size_t)name_len + 1), "%s: ", z->path);
    memcpy(e->name, name, name_len);
    e->name[name_len] = '\0';
    e->method = rd16(p + 10);
    e->crc32 = rd32(p + 16);
    e->comp_size = rd32(p + 20);
    e->size = rd32(p + 24);
    uint64_t local = rd32(p + 42);
    LDM_TRY(apply_zip64_extra(z, e->name, name + name_len, extra_len, &e->size, &e->comp_size, &local));
    LDM_TRY(check_method(z, e, flags));
    LDM_TRY(locate_data(z, d, e, local));
    *pos += total;
    return LDM_OK;
}

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const lw_zip_entry *)a)->name, ((const lw_zip_entry *)b)->name);
}

ldm_status lw_zip_open(const char *path, const void *bytes, size_t size, lw_zip **out)
{
    *out = NULL;
    lw_zip *z = ldm_calloc(1, sizeof *z);
    if (!z) return ldm_fail_context(lw_alloc_status(sizeof *z), "%s: ", path);
    z->path = path;
    z->bytes = bytes;
    z->size = size;
    zip_directory d = {0, 0, 0, 0};
    ldm_status st = read_directory_location(z, &d);
    if (st == LDM_OK) {
        z->entries = ldm_calloc(d.count ? (size_t)d.count : 1, sizeof *z->entries);
        if (!z->entries) st = ldm_fail_context(lw_alloc_status((size_t)d.count * sizeof *z->entries), "%s: ", path);
    }
    uint64_t pos = d.cd_offset;
    for (uint64_t i = 0; st == LDM_OK && i < d.count; i++) {
        st = read_entry(z, &d, &pos, &z->entries[i]);
        z->count = (size_t)i + 1; /* so that a partly filled entry is freed too */
    }
    if (st == LDM_OK && z->count > 1) {
        qsort(z->entries, z->count, sizeof *z->entries, entry_cmp);
        for (size_t i = 1; i < z->count && st == LDM_OK; i++)
            if (strcmp(z->entries[i - 1].name, z->entries[i].name) == 0)
                st = ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s appears twice", path, z->entries[i].name);
    }
    if (st != LDM_OK) {
        lw_zip_close(z);
        return st;
    }
    *out = z;
    return LDM_OK;
}

void lw_zip_close(lw_zip *z)
{
    if (!z) return;
    for (size_t i = 0; i < z->count; i++) ldm_free(z->entries[i].name);
    ldm_free(z->entries);
    ldm_free(z);
}

size_t lw_zip_count(const lw_zip *z) { return z ? z->count : 0; }

const lw_zip_entry *lw_zip_at(const lw_zip *z, size_t i) { return (z && i < z->count) ? &z->entries[i] : NULL; }

const lw_zip_entry *lw_zip_find(const lw_zip *z, const char *name)
{
    size_t lo = 0, hi = z ? z->count : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(z->entries[mid].name, name);
        if (c == 0) return &z->entries[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* zlib counts in uInt; feed it at most this much at a time. */
#define ZCHUNK ((size_t)1 << 30)

/* Raw-inflates exactly e->size bytes into dst. One byte of spare output space detects a stream
 * that would produce more than declared. */
static ldm_status inflate_member(const lw_zip *z, const lw_zip_entry *e, unsigned char *dst)
{
    const unsigned char *src = z->bytes + e->data_offset;
    size_t in_left = (size_t)e->comp_size, out_left = (size_t)e->size;
    unsigned char probe;
    int probing = 0;
    z_stream s;
    memset(&s, 0, sizeof s);
    if (inflateInit2(&s, -MAX_WBITS) != Z_OK)
        return ldm_fail(LDM_ERR_OUT_OF_MEMORY, "%s: zip entry %s: cannot start inflate", z->path, e->name);
    ldm_status st = LDM_OK;
    for (;;) {
        if (s.avail_in == 0 && in_left) {
            size_t n = LDM_MIN(in_left, ZCHUNK);
            s.next_in = (unsigned char *)src;
            s.avail_in = (uInt)n;
            src += n;
            in_left -= n;
        }
        if (s.avail_out == 0) {
            if (out_left) {
                size_t n = LDM_MIN(out_left, ZCHUNK);
                s.next_out = dst;
                s.avail_out = (uInt)n;
                dst += n;
                out_left -= n;
            } else if (!probing) {
                s.next_out = &probe;
                s.avail_out = 1;
                probing = 1;
            } else {
                st = ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s inflates to more than its declared %llu bytes",
                              z->path, e->name, (unsigned long long)e->size);
                break;
            }
        }
        int ret = inflate(&s, Z_NO_FLUSH);
        if (ret == Z_STREAM_END) break;
        if (ret == Z_BUF_ERROR && s.avail_in == 0 && in_left == 0) {
            st = ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s: deflate stream is truncated", z->path, e->name);
            break;
        }
        if (ret != Z_OK && ret != Z_BUF_ERROR) {
            st = ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s: corrupt deflate data (%s)", z->path, e->name,
                          s.msg ? s.msg : "zlib error");
            break;
        }
    }
    if (st == LDM_OK && (probing && s.avail_out == 0))
        st = ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s inflates to more than its declared %llu bytes", z->path,
                      e->name, (unsigned long long)e->size);
    if (st == LDM_OK && (uint64_t)s.total_out != e->size)
        st = ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s inflates to %llu bytes, declared %llu", z->path, e->name,
                      (unsigned long long)s.total_out, (unsigned long long)e->size);
    inflateEnd(&s);
    return st;
}

static ldm_status check_crc(const lw_zip *z, const lw_zip_entry *e, const void *data)
{
    uLong crc = crc32_z(0L, Z_NULL, 0);
    crc = crc32_z(crc, data, (z_size_t)e->size);
    if ((uint32_t)crc != e->crc32)
        return ldm_fail(LDM_ERR_FORMAT, "%s: zip entry %s: CRC mismatch (corrupt file)", z->path, e->name);
    return LDM_OK;
}

ldm_status lw_zip_read(const lw_zip *z, const lw_zip_entry *e, const void **data, void **owned)
{
    *data = NULL;
    *owned = NULL;
    if (e->size > SIZE_MAX) return ldm_fail(LDM_ERR_LIMIT, "%s: zip entry %s is too large", z->path, e->name);
    if (e->method == 0) {
        LDM_TRY(check_crc(z, e, z->bytes + e->data_offset));
        *data = z->bytes + e->data_offset;
        return LDM_OK;
    }
    unsigned char *buf = ldm_malloc((size_t)e->size);
    if (!buf) return ldm_fail_context(lw_alloc_status((size_t)e->size), "%s: zip entry %s: ", z->path, e->name);
    ldm_status st = inflate_member(z, e, buf);
    if (st == LDM_OK) st = check_crc(z, e, buf);
    if (st != LDM_OK) {
        ldm_free(buf);
        return st;
    }
    *data = buf;
    *owned = buf;
    return LDM_OK;
}
