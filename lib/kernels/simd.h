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

/* The kernel family (cpu.c) decides every lk_cpu_has_*() answer below: LDM_CPU=generic makes
 * them all 0, so the baseline code runs whatever the CPU. */
#if defined(__x86_64__) && defined(__GNUC__)
#define LK_DISPATCH 1
#define LK_AVX2 __attribute__((target("avx2")))
/* Non-zero when the chosen family runs AVX2 / AVX2 and FMA / F16C kernels (cached after the first
 * call). */
int lk_cpu_has_avx2(void);
int lk_cpu_has_avx2_fma(void);
int lk_cpu_has_f16c(void);
#define LK_PICK(avx2_call, base_call) (lk_cpu_has_avx2() ? (avx2_call) : (base_call))
#else
#define LK_PICK(avx2_call, base_call) (base_call)
#endif

/* aarch64: AdvSIMD (NEON) is always there; hand-written <arm_neon.h> kernels (with fused
 * multiply-add) run when the family is "neon", the default, and the baseline vector-extension
 * code (which GCC also compiles to NEON instructions, without FMA) when LDM_CPU=generic. */
#if defined(__aarch64__) && defined(__GNUC__)
#define LK_NEON 1
int lk_cpu_has_neon(void);
#define LK_PICK_NEON(neon_call, base_call) (lk_cpu_has_neon() ? (neon_call) : (base_call))
/* The NEON twin of a vector-extension body: the same source with multiply-adds contracted into
 * FMA (GCC; -std=c11 otherwise keeps them apart). Clang has no such attribute: its twin is the
 * baseline code again. */
#if defined(__clang__)
#define LK_NEON_FN
#else
#define LK_NEON_FN __attribute__((optimize("fp-contract=fast")))
#endif
#else
#define LK_PICK_NEON(neon_call, base_call) (base_call)
#endif

/* A vector-extension kernel's SIMD twin, where one exists: LK_TWIN marks its entry point (the
 * AVX2 one on x86-64, the NEON one on aarch64), LK_PICK_TWIN(twin_call, base_call) picks it when
 * the kernel family runs it, LK_USE_TWIN() says whether it does. */
#if defined(LK_DISPATCH)
#define LK_TWIN LK_AVX2
#define LK_PICK_TWIN(twin_call, base_call) LK_PICK(twin_call, base_call)
#define LK_USE_TWIN() lk_cpu_has_avx2()
#elif defined(LK_NEON)
#define LK_TWIN LK_NEON_FN
#define LK_PICK_TWIN(twin_call, base_call) LK_PICK_NEON(twin_call, base_call)
#define LK_USE_TWIN() lk_cpu_has_neon()
#else
#define LK_PICK_TWIN(twin_call, base_call) (base_call)
#define LK_USE_TWIN() 0
#endif

/* The kernel family the dispatch runs: "avx2+fma" (AVX2 twins and the AVX2+FMA kernels), "avx2"
 * (AVX2 twins only), "neon" (aarch64) or "generic" (the baseline code), chosen once from the CPU
 * and LDM_CPU (cpu.c). */
const char *lk_cpu_kernels(void);
/* Non-zero when the family `name` is built for this architecture and this CPU can run it. */
int lk_cpu_family_supported(const char *name);
/* Reads LDM_CPU again and re-chooses the family (tests; not while kernels run on other threads). */
void lk_cpu_reselect(void);

#endif
