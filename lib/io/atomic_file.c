/* atomic_file.c - replacing a file atomically, for every file the library writes (PNG images,
 * safetensors checkpoints).
 *
 * A failed write must leave whatever the path held untouched (`-o keep.png` on a full disk used to
 * lose keep.png; a checkpoint must survive a crash halfway through the next save). So the new
 * contents go to a temporary file that we create in the target's folder, reach the disk (fsync),
 * and only then are renamed over the target; rename() within one folder (one file system) swaps
 * the name in a single step, so a reader, or the disk after a crash, sees the whole old file or
 * the whole new one, never a mix and never no file at all.
 *
 * Only a regular file, or nothing, is ever replaced: a directory, FIFO, device or socket at the
 * path is refused before anything is opened or created (opening a FIFO blocks, and as root `-o
 * /dev/full` used to delete the device node). A symbolic link is followed to the regular file it
 * names, which is replaced while the link itself stays; a link that leads nowhere (or to anything
 * but a regular file) is refused rather than followed into a new file.
 *
 * The target is never unlinked or truncated, whatever fails: it may be someone's only copy, and the
 * rename is the one step that touches it. A failure removes our temporary file and nothing else. */
#include "weights.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct lw_atomic_file {
    const char *path;      /* as the caller gave it, for messages */
    const char *what;      /* "a PNG", ... for messages; NULL: nothing said */
    char target[PATH_MAX]; /* the file to replace: `path`, or the regular file a link at `path` leads to */
    char tmp[PATH_MAX];    /* our temporary file, next to target */
    struct stat old;       /* the replaced file (has_old), whose permissions (and owner) the new one keeps */
    int has_old;
    int fd;   /* the temporary file, open for writing; -1 once closed */
    FILE *fp; /* the stream over fd (lw_atomic_stream), or NULL; owns fd when set */
};

/* " a PNG" / "" for "cannot write%s over ...". */
static const char *what_text(const lw_atomic_file *f, char *buf, size_t cap)
{
    if (!f->what || !*f->what) return "";
    snprintf(buf, cap, " %s", f->what);
    return buf;
}

static ldm_status copy_target(lw_atomic_file *f, const char *p)
{
    size_t n = strlen(p);
    if (n >= sizeof f->target) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: path too long", f->path);
    memcpy(f->target, p, n + 1);
    return LDM_OK;
}

/* Fills f->target and f->old; refuses anything but a regular file or a missing path. */
static ldm_status resolve_target(lw_atomic_file *f)
{
    char w[64];
    if (lstat(f->path, &f->old) != 0) {
        if (errno != ENOENT) return ldm_fail(LDM_ERR_IO, "%s: cannot write: %s", f->path, strerror(errno));
        return copy_target(f, f->path); /* a new file (a missing folder fails when creating the temporary) */
    }
    int via_link = S_ISLNK(f->old.st_mode);
    if (via_link) {
        /* realpath fails when the link, or a link after it, leads nowhere: refused, since writing
         * "through" it would create a file somewhere the caller did not name */
        if (!realpath(f->path, f->target))
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: symbolic link that does not lead to a file (%s); not "
                            "writing through it", f->path, strerror(errno));
        if (stat(f->target, &f->old) != 0)
            return ldm_fail(LDM_ERR_IO, "%s: cannot write %s: %s", f->path, f->target, strerror(errno));
    } else {
        LDM_TRY(copy_target(f, f->path));
    }
    if (!S_ISREG(f->old.st_mode))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: cannot write%s over %s%s, only over a regular file or a new path",
                        f->path, what_text(f, w, sizeof w), lw_file_kind(f->old.st_mode),
                        via_link ? " (where the symbolic link leads)" : "");
    f->has_old = 1;
    return LDM_OK;
}

/* A name no one else uses right now; O_EXCL makes sure of it. */
static unsigned long temp_suffix(void)
{
    static _Atomic unsigned long counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long x = (unsigned long)ts.tv_nsec ^ ((unsigned long)getpid() << 20) ^ (counter++ * 0x9E3779B9ul);
    return x & 0xFFFFFFul;
}

/* Creates "<folder of target>/.<name>.<6 hex digits>.tmp" with mode 0666 less the umask (as fopen
 * would). The folder is the target's own so that the final rename stays on one file system (a
 * rename across file systems fails instead of being atomic).
 *
 * O_EXCL (with O_NOFOLLOW) is what makes the temporary file ours: the name is guessable, and in a
 * folder others may write to (/tmp, a shared output folder) someone could have put a file or a
 * symbolic link to a victim file there first; without O_EXCL we would truncate and write through
 * it, and later unlink it on failure. With it, open() creates a new file or fails (EEXIST: try
 * another name), so two writers of the same target never share a temporary either. */
static ldm_status create_temp(lw_atomic_file *f)
{
    const char *slash = strrchr(f->target, '/');
    int dir_len = slash ? (int)(slash - f->target) + 1 : 0;
    const char *name = f->target + dir_len;
    for (int attempt = 0; attempt < 64; attempt++) {
        int n = snprintf(f->tmp, sizeof f->tmp, "%.*s.%.200s.%06lx.tmp", dir_len, f->target, name, temp_suffix());
        if (n < 0 || (size_t)n >= sizeof f->tmp) break;
        f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (f->fd >= 0) return LDM_OK;
        if (errno != EEXIST)
            return ldm_fail(LDM_ERR_IO, "%s: cannot create a temporary file in its folder: %s", f->path,
                            strerror(errno));
    }
    return ldm_fail(LDM_ERR_IO, "%s: cannot find a free temporary file name in its folder", f->path);
}

/* The new file keeps the replaced one's permissions and, when we may (root), its owner, as an
 * overwrite in place would. Done before any byte is written, so the contents are never readable
 * under looser permissions than the file they replace. Only the 0777 bits are kept: new contents
 * do not inherit set-user-ID / set-group-ID (writing in place clears them too). */
static ldm_status keep_attributes(const lw_atomic_file *f)
{
    if (!f->has_old) return LDM_OK;
    if ((f->old.st_uid != geteuid() || f->old.st_gid != getegid()) &&
        fchown(f->fd, f->old.st_uid, f->old.st_gid) != 0) {
        /* only root may give a file away: the file is still written, owned by us */
    }
    /* after fchown, which may clear mode bits */
    if (fchmod(f->fd, f->old.st_mode & 0777) != 0)
        return ldm_fail(LDM_ERR_IO, "%s: cannot set the permissions of the new file: %s", f->path, strerror(errno));
    return LDM_OK;
}

/* Closes the temporary file (its stream, if any) and frees `f`; `unlink_tmp` removes it too. */
static void release(lw_atomic_file *f, int unlink_tmp)
{
    if (f->fp) fclose(f->fp);
    else if (f->fd >= 0) close(f->fd);
    if (unlink_tmp) unlink(f->tmp); /* ours: created above with O_EXCL; never the target */
    ldm_free(f);
}

ldm_status lw_atomic_begin(const char *path, const char *what, lw_atomic_file **out)
{
    *out = NULL;
    if (!path || !*path || path[strlen(path) - 1] == '/') {
        char w[64] = "";
        if (what && *what) snprintf(w, sizeof w, " %s", what);
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "\"%s\" does not name a file to write%s into", path ? path : "(null)",
                        w);
    }
    lw_atomic_file *f = ldm_calloc(1, sizeof *f); /* two PATH_MAX buffers: too large for some threads' stacks */
    if (!f) return ldm_fail_context(lw_alloc_status(sizeof *f), "%s: ", path);
    f->path = path;
    f->what = what;
    f->fd = -1;
    ldm_status st = resolve_target(f);
    if (st == LDM_OK) st = create_temp(f);
    if (st != LDM_OK) {
        release(f, 0); /* no temporary file exists */
        return st;
    }
    st = keep_attributes(f);
    if (st != LDM_OK) {
        release(f, 1);
        return st;
    }
    *out = f;
    return LDM_OK;
}

int lw_atomic_fd(const lw_atomic_file *f)
{
    return f->fd;
}

ldm_status lw_atomic_stream(lw_atomic_file *f, FILE **fp)
{
    if (!f->fp) {
        f->fp = fdopen(f->fd, "wb");
        if (!f->fp) return ldm_fail(LDM_ERR_OUT_OF_MEMORY, "%s: cannot start writing: %s", f->path, strerror(errno));
    }
    *fp = f->fp;
    return LDM_OK;
}

/* After the rename, the folder's entry reaches the disk too: fsync of the file saves its
 * contents, not the name, so without this a crash soon after a "successful" save could bring back
 * the old file (or, for a new path, no file). Best effort: some file systems refuse fsync on a
 * directory, and either outcome of a crash is still a whole, consistent file. */
static void sync_folder(const lw_atomic_file *f)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(f->target, '/');
    if (!slash) strcpy(dir, ".");
    else snprintf(dir, sizeof dir, "%.*s", slash == f->target ? 1 : (int)(slash - f->target), f->target);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

ldm_status lw_atomic_commit(lw_atomic_file *f)
{
    ldm_status st = LDM_OK;
    /* everything written reaches the disk before the rename makes it visible: renaming first
     * could, after a crash, leave the name pointing at an empty or partial file */
    if (f->fp && fflush(f->fp) != 0)
        st = ldm_fail(LDM_ERR_IO, "%s: write failed: %s", f->path, strerror(errno));
    if (st == LDM_OK && fsync(f->fd) != 0)
        st = ldm_fail(LDM_ERR_IO, "%s: write failed (fsync): %s", f->path, strerror(errno));
    /* close reports the last deferred write errors (NFS, quota) */
    int closed = f->fp ? fclose(f->fp) : close(f->fd);
    int close_err = errno;
    f->fp = NULL;
    f->fd = -1;
    if (closed != 0 && st == LDM_OK) st = ldm_fail(LDM_ERR_IO, "%s: write failed: %s", f->path, strerror(close_err));
    if (st == LDM_OK && rename(f->tmp, f->target) != 0)
        st = ldm_fail(LDM_ERR_IO, "%s: cannot replace it with the new file: %s", f->path, strerror(errno));
    if (st != LDM_OK) {
        release(f, 1);
        return st;
    }
    sync_folder(f);
    release(f, 0);
    return LDM_OK;
}

void lw_atomic_abort(lw_atomic_file *f)
{
    if (f) release(f, 1);
}
