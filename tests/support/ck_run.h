/* ck_run.h - the end of every Check test program's main(): run the suite, report, and turn the
 * outcome into an exit status. Header-only like ck_fixture.h. */
#ifndef LDM_TESTS_CK_RUN_H
#define LDM_TESTS_CK_RUN_H

#include <check.h>
#include <stdlib.h>

/* Runs every test of suite (CK_NORMAL output): EXIT_SUCCESS when all passed. */
static inline int ck_run_suite(Suite *suite)
{
    SRunner *sr = srunner_create(suite);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
