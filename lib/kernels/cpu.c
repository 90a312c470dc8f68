/* cpu.c - which vector instructions the running CPU has, for the kernels' run-time dispatch
 * (see simd.h). Asked once; racing first calls compute the same answer. Only x86-64 has a
 * dispatch (LK_DISPATCH): everywhere else (aarch64, docs/arm64.md) the kernels are the generic
 * C / vector-extension ones and lk_cpu_kernels() says "generic". */
#include "simd.h"

#ifdef LK_DISPATCH
#include <cpuid.h>
#include <stdatomic.h>

/* Feature bits: 1 avx2, 2 fma; -1 until asked. Racing first calls compute the same answer. */
static int features(void)
{
    static atomic_int known = -1;
    int v = atomic_load_explicit(&known, memory_order_relaxed);
    if (v < 0) {
        __builtin_cpu_init();
        v = (__builtin_cpu_supports("avx2") ? 1 : 0) | (__builtin_cpu_supports("fma") ? 2 : 0);
        atomic_store_explicit(&known, v, memory_order_relaxed);
    }
    return v;
}

int lk_cpu_has_avx2(void) { return features() & 1; }

/* F16C (half <-> float conversion) with AVX, read from cpuid leaf 1 directly: clang 14's
 * __builtin_cpu_supports does not know "f16c". OSXSAVE says the OS saves the AVX registers. */
int lk_cpu_has_f16c(void)
{
    static atomic_int known = -1;
    int v = atomic_load_explicit(&known, memory_order_relaxed);
    if (v < 0) {
        unsigned a, b, c, d;
        v = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) && (c & bit_AVX) && (c & bit_OSXSAVE);
        atomic_store_explicit(&known, v, memory_order_relaxed);
    }
    return v;
}
int lk_cpu_has_avx2_fma(void) { return (features() & 3) == 3; }
#endif

/* The kernel family the dispatch picks on this CPU: "avx2+fma" (AVX2 twins and the fused AVX2+FMA
 * attention), "avx2" (AVX2 twins only), or "generic" (the baseline code: x86-64 without AVX2, and
 * every other architecture). */
const char *lk_cpu_kernels(void)
{
#ifdef LK_DISPATCH
    if (lk_cpu_has_avx2_fma()) return "avx2+fma";
    if (lk_cpu_has_avx2()) return "avx2";
#endif
    return "generic";
}
