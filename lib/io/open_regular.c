/* open_regular.c - the one way the library opens a file it reads (checkpoint, YAML config,
 * vocabulary, PNG). Only regular files are accepted: open() of a FIFO with no writer blocks
 * forever (`--model fifo` hung the tool), a terminal or a device can block or never end, and a
 * directory only fails later with a confusing message. stat() refuses them before any open; the
 * open itself is non-blocking and fstat() checks the opened descriptor, so a path swapped for a
 * FIFO between the two cannot block us either. */
#include "weights.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int lw_is_file(const char *path)
{
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int lw_is_dir(const char *path)
{
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *lw_file_kind(unsigned mode)
{
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISLNK(mode)) return "a symbolic link";
    return S_ISREG(mode) ? "a regular file" : "not a regular file";
}

/* "<what> <path>" or "<path>" in messages. */
static const char *sep(const char *what)
{
    return what && *what ? " " : "";
}

static ldm_status open_failure(const char *path, const char *what, ldm_status if_missing, int err)
{
    return ldm_fail(err == ENOENT ? if_missing : LDM_ERR_IO, "%s%s%s: cannot open: %s", what ? what : "", sep(what),
                    path, strerror(err));
}

static ldm_status not_regular(const char *path, const char *what, unsigned mode)
{
    return ldm_fail(LDM_ERR_IO, "%s%s%s: cannot read %s, only a regular file", what ? what : "", sep(what), path,
                    lw_file_kind(mode));
}

ldm_status lw_open_regular(const char *path, const char *what, ldm_status if_missing, int *fd_out)
{
    *fd_out = -1;
    if (!path) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: no path given", what && *what ? what : "file");
    struct stat sb;
    if (stat(path, &sb) != 0) return open_failure(path, what, if_missing, errno);
    if (!S_ISREG(sb.st_mode)) return not_regular(path, what, sb.st_mode);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return open_failure(path, what, if_missing, errno);
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        int err = errno;
        close(fd);
        return S_ISREG(sb.st_mode) ? open_failure(path, what, if_missing, err) : not_regular(path, what, sb.st_mode);
    }
    /* O_NONBLOCK means nothing for a regular file's reads, but clear it so nothing that
     * inherits the descriptor (zlib, stdio) sees an unusual flag. */
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        int err = errno;
        close(fd);
        return open_failure(path, what, if_missing, err);
    }
    *fd_out = fd;
    return LDM_OK;
}

ldm_status lw_fopen_regular(const char *path, const char *what, ldm_status if_missing, FILE **out)
{
    *out = NULL;
    int fd;
    LDM_TRY(lw_open_regular(path, what, if_missing, &fd));
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        int err = errno;
        close(fd);
        return open_failure(path, what, if_missing, err);
    }
    *out = f;
    return LDM_OK;
}
