/* read_file.c - bounded whole-file reading for vocabularies. zlib's gz* functions inflate
 * gzip files and read anything else transparently, so one path serves bpe_simple_vocab_16e6.txt.gz
 * and a plain vocab.txt. */
#include "strmap.h"
#include "../io/weights.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define READ_CHUNK (1u << 16)

/* A readable description of the state of a gz stream after a failed or short read. */
static const char *gz_message(gzFile f, int *is_error, ldm_status *status)
{
    int err = Z_OK;
    const char *msg = gzerror(f, &err);
    *is_error = err != Z_OK && err != Z_STREAM_END;
    *status = err == Z_ERRNO ? LDM_ERR_IO : LDM_ERR_FORMAT;
    if (err == Z_ERRNO) return strerror(errno);
    return msg && *msg ? msg : "unknown zlib error";
}

static ldm_status read_all(gzFile f, const char *path, const char *what, size_t max_bytes, char **data, size_t *len)
{
    size_t cap = READ_CHUNK, n = 0;
    char *buf = ldm_malloc(cap + 1);
    if (!buf) return LDM_ERR_OUT_OF_MEMORY;
    for (;;) {
        if (cap - n < READ_CHUNK) {
            size_t bigger;
            if (ldm_mul_size(cap, 2, &bigger)) {
                ldm_free(buf);
                return ldm_fail(LDM_ERR_LIMIT, "%s %s: too large", what, path);
            }
            char *b = ldm_realloc(buf, bigger + 1);
            if (!b) {
                ldm_free(buf);
                return LDM_ERR_OUT_OF_MEMORY;
            }
            buf = b;
            cap = bigger;
        }
        int got = gzread(f, buf + n, READ_CHUNK);
        if (got < 0) {
            int is_error;
            ldm_status st = LDM_ERR_FORMAT;
            const char *msg = gz_message(f, &is_error, &st);
            st = ldm_fail(st, "%s %s: cannot read: %s", what, path, msg);
            ldm_free(buf);
            return st;
        }
        if (got == 0) break;
        n += (size_t)got;
        if (n > max_bytes) {
            ldm_free(buf);
            return ldm_fail(LDM_ERR_LIMIT, "%s %s: more than %zu bytes (uncompressed)", what, path, max_bytes);
        }
    }
    int is_error;
    ldm_status st = LDM_ERR_FORMAT;
    const char *msg = gz_message(f, &is_error, &st);
    if (is_error) {
        /* e.g. a truncated gzip stream: gzread returns what it had, then 0. */
        st = ldm_fail(st, "%s %s: corrupt or truncated gzip data: %s", what, path, msg);
        ldm_free(buf);
        return st;
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return LDM_OK;
}

ldm_status ltx_read_file(const char *path, const char *what, size_t max_bytes, char **data, size_t *len)
{
    if (!path) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: no path given", what);
    int fd;
    LDM_TRY(lw_open_regular(path, what, LDM_ERR_NOT_FOUND, &fd));
    gzFile f = gzdopen(fd, "rb"); /* gzclose closes fd; a failed gzdopen does not */
    if (!f) {
        close(fd);
        return ldm_fail(LDM_ERR_OUT_OF_MEMORY, "%s %s: cannot start reading: out of memory", what, path);
    }
    ldm_status st = read_all(f, path, what, max_bytes, data, len);
    gzclose(f);
    return st;
}
