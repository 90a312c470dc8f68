/* simd.h - the 8-lane float vectors the hand-vectorised kernels are written with, and their
 * AVX2 dispatch.
 *
 * GCC/Clang vector extensions: one source, two SSE registers per vector in the baseline x86-64
 * build, one AVX register in an AVX2 twin, NEON elsewhere. A kernel writes its loop once as an
 * LK_BODY function (always inlined), wraps it in a baseline entry point and, on x86-64, an
 * LK_AVX2 twin, and picks the twin at run time when lk_cpu_has_avx2(). The twin enables AVX2 but
 * not FMA, so both perform the same IEEE operations lane for lane and results do not depend on
 * the CPU. Dispatch is by hand rather than with target_clones, whose ifunc resolvers GCC exports
 * from the shared library whatever the visibility.
 *
 * Vector helpers are macros or take pointers: GCC and Clang warn about (and note the ABI of)
 * 32-byte vectors passed or returned by value without AVX, even by functions that are inlined. */
#ifndef LDM_KERNELS_SIMD_H
#define LDM_KERNELS_SIMD_H

#include <stdint.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define LANES 8

#define SPLAT(v) ((v8f){(v), (v), (v), (v), (v), (v), (v), (v)})
/* a where mask is set, else b */
#define SELECT(mask, a, b) ((v8f)(((mask) & (v8i)(a)) | (~(mask) & (v8i)(b))))
#define LOAD(v, p) memcpy(&(v), (p), sizeof(v8f))
#define STORE(p, v)                                                                                \
    do {                                                                                           \
        v8f store_tmp_ = (v);                                                                      \
        memcpy((p), &store_tmp_, sizeof store_tmp_);                                               \
    } while (0)

/* Lane shuffle of two vectors (indices 0-7: a, 8-15: b); __builtin_shufflevector is Clang's and
 * GCC's (from 12), __builtin_shuffle the older GCC spelling. */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define SHUFFLE(a, b, ...) __builtin_shufflevector((a), (b), __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle((a), (b), (v8i){__VA_ARGS__})
#endif

/* Bodies are always inlined into both the baseline entry point and its AVX2 twin. */
#define LK_BODY static inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__)
#define LK_DISPATCH 1
#define LK_AVX2 __attribute__((target("avx2")))
/* Non-zero when the CPU runs AVX2 / AVX2 and FMA (cpu.c; cached after the first call). */
int lk_cpu_has_avx2(void);
int lk_cpu_has_avx2_fma(void);
int lk_cpu_has_f16c(void);
#define LK_PICK(avx2_call, base_call) (lk_cpu_has_avx2() ? (avx2_call) : (base_call))
#else
#define LK_PICK(avx2_call, base_call) (base_call)
#endif
/* "avx2+fma", "avx2" or "generic": what the dispatch runs on this CPU (cpu.c). */
const char *lk_cpu_kernels(void);

#endif
