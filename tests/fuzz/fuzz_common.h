/* fuzz_common.h - helpers shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.c).
 *
 * Several parsers take a path, not bytes (lw_open maps the file, libpng and zlib read a FILE),
 * so the input is written to an anonymous in-memory file (memfd) and handed over as
 * /proc/self/fd/N: no disk traffic, nothing left behind, one file per process. */
#ifndef LDM_FUZZ_COMMON_H
#define LDM_FUZZ_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Allocation cap for everything a harness calls: hostile sizes must be refused by the library
 * (LDM_ERR_LIMIT), not reach libFuzzer's malloc limit. */
#define FUZZ_ALLOC_CAP ((size_t)256 << 20)

/* Bytes are XORed into this so reads of parser output cannot be optimised away (ASan checks them). */
static volatile unsigned char fuzz_sink;

/* Writes data to the process's memfd and returns its path (valid until the next call). */
static inline const char *fuzz_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("ldm-fuzz", MFD_CLOEXEC);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0) abort();
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);
        if (n <= 0) abort();
        done += (size_t)n;
    }
    return path;
}

/* $LDM_SHARED (default ../shared) + "/" + rel, in a static buffer. */
static inline const char *fuzz_shared_path(const char *rel)
{
    static char path[1024];
    const char *s = getenv("LDM_SHARED");
    snprintf(path, sizeof path, "%s/%s", (s && *s) ? s : "../shared", rel);
    return path;
}

/* A NUL-terminated copy of the input (parsers that take C strings). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) abort();
    if (size) memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

#endif
