/* ck_fixture.h - fixture access for Check suites: the fixture.h helpers, failing the running
 * test (ck_assert) instead of returning errors. Header-only because the conformance runner links
 * tests/support without Check. */
#ifndef LDM_TESTS_CK_FIXTURE_H
#define LDM_TESTS_CK_FIXTURE_H

#include <check.h>
#include <stdio.h>
#include <sys/stat.h>

#include "fixture.h"

/* dir = $LDM_SHARED/fixtures/<name>; 0 (after a loud SKIPPED line) when it is absent. */
static inline int fixture_dir(const char *name, char *dir, size_t cap)
{
    struct stat st;
    int n = snprintf(dir, cap, "%s/fixtures/%s", fx_shared_dir(), name);
    ck_assert_msg(n > 0 && (size_t)n < cap, "path too long: %s/fixtures/%s", fx_shared_dir(), name);
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return 1;
    printf("SKIPPED: fixture %s not found at %s (set LDM_SHARED)\n", name, dir);
    return 0;
}

static inline lw_store *open_file(const char *dir, const char *file)
{
    char path[4096];
    lw_store *s = NULL;
    int n = snprintf(path, sizeof path, "%s/%s", dir, file);
    ck_assert_msg(n > 0 && (size_t)n < sizeof path, "path too long: %s/%s", dir, file);
    ldm_status st = lw_open(path, 0, &s);
    ck_assert_msg(st == LDM_OK, "lw_open %s: %s", path, ldm_last_error());
    return s;
}

static inline ldm_tensor *io_tensor(const lw_store *io, const char *name)
{
    ldm_tensor *t = fx_io_tensor(io, name);
    ck_assert_msg(t != NULL, "io tensor %s missing in %s", name, lw_path(io));
    return t;
}

static inline lj_value *load_case(const char *dir)
{
    lj_value *cas = NULL;
    ck_assert_msg(fx_load_case(dir, &cas) == LDM_OK, "case.json of %s: %s", dir, ldm_last_error());
    return cas;
}

#endif
