/* mapfile.c - read-only memory mapping of checkpoint files: the loaders hand out pointers into
 * the mapping instead of copying gigabytes of weights. */
#include "weights.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

ldm_status lw_map_file(const char *path, size_t min_size, const char *what_format, void **map, size_t *size)
{
    *map = NULL;
    *size = 0;
    int fd;
    LDM_TRY(lw_open_regular(path, NULL, LDM_ERR_IO, &fd));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return ldm_fail(LDM_ERR_IO, "%s: cannot read its size: %s", path, strerror(err));
    }
    if ((uint64_t)sb.st_size < min_size || sb.st_size == 0) {
        close(fd);
        return ldm_fail(LDM_ERR_FORMAT, "%s: file of %lld bytes is too short for %s", path, (long long)sb.st_size,
                        what_format);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return ldm_fail(LDM_ERR_LIMIT, "%s: file too large to map", path);
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); /* the mapping keeps the file alive */
    if (m == MAP_FAILED) return ldm_fail(LDM_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
    *map = m;
    *size = (size_t)sb.st_size;
    return LDM_OK;
}
