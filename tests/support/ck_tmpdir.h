/* ck_tmpdir.h - one scratch directory per Check test program: ck_run_in_tmpdir() creates it
 * ($TMPDIR or /tmp), runs the suite, then empties and removes it; ck_tmp_path() / ck_tmp_write()
 * name and write files in it. Header-only like ck_fixture.h (each program includes it once). */
#ifndef LDM_TESTS_CK_TMPDIR_H
#define LDM_TESTS_CK_TMPDIR_H

#include "ck_run.h"
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char ck_tmpdir[256];

/* <tmpdir>/<name> (a static buffer: valid until the next call). */
static inline const char *ck_tmp_path(const char *name)
{
    static char path[512];
    int n = snprintf(path, sizeof path, "%s/%s", ck_tmpdir, name);
    ck_assert_msg(n > 0 && (size_t)n < sizeof path, "path too long: %s/%s", ck_tmpdir, name);
    return path;
}

/* Writes len bytes to <tmpdir>/<name>; returns the path (as ck_tmp_path). */
static inline const char *ck_tmp_write(const char *name, const void *data, size_t len)
{
    const char *path = ck_tmp_path(name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    if (len) ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

static inline void ck_tmpdir_remove(void)
{
    DIR *d = opendir(ck_tmpdir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        char path[768];
        snprintf(path, sizeof path, "%s/%s", ck_tmpdir, de->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(ck_tmpdir);
}

/* main() of a suite that writes files: EXIT_SUCCESS when every test passed. */
static inline int ck_run_in_tmpdir(Suite *suite, const char *tag)
{
    const char *base = getenv("TMPDIR");
    snprintf(ck_tmpdir, sizeof ck_tmpdir, "%s/ldm-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    if (!mkdtemp(ck_tmpdir)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    int status = ck_run_suite(suite);
    ck_tmpdir_remove();
    return status;
}

#endif
