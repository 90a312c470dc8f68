/* test_cpu.c - the kernels' run-time dispatch (lib/kernels/cpu.c): the kernel family it reports
 * agrees with the CPU features it reads, and every architecture but x86 runs the generic kernels
 * (docs/arm64.md). Prints the family, so a test log says which kernels the other suites ran. */
#include <check.h>

#include "kernels/simd.h"
#include "support/ck_run.h"

#include <stdio.h>
#include <string.h>

START_TEST(reported_family_matches_features)
{
    const char *k = lk_cpu_kernels();
    printf("cpu: kernels %s\n", k);
    ck_assert_ptr_nonnull(k);
    ck_assert_str_eq(k, lk_cpu_kernels()); /* cached answers stay the same */
#ifdef LK_DISPATCH
    if (lk_cpu_has_avx2_fma())
        ck_assert_str_eq(k, "avx2+fma");
    else if (lk_cpu_has_avx2())
        ck_assert_str_eq(k, "avx2");
    else
        ck_assert_str_eq(k, "generic");
#else
    ck_assert_str_eq(k, "generic");
#endif
#if !defined(__x86_64__) && !defined(__i386__)
    ck_assert_str_eq(k, "generic"); /* no SIMD dispatch off x86 (NEON kernels are a later step) */
#endif
}
END_TEST

static Suite *cpu_suite(void)
{
    Suite *s = suite_create("cpu");
    TCase *tc = tcase_create("dispatch");
    tcase_add_test(tc, reported_family_matches_features);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return ck_run_suite(cpu_suite()); }
