/* simd16.h - the 16-lane float vectors of the avx512 kernel family, and the two instances every
 * 16-lane kernel is compiled to.
 *
 * The 16-lane kernels are written once, with GCC/Clang vector extensions only (64-byte vectors,
 * memcpy loads and stores, __builtin_shufflevector; no _mm512 intrinsics), as LK_BODY functions.
 * Each body is compiled twice:
 *   - LK_AVX512: AVX-512 F/BW/VL/DQ (+ FMA, AVX2, F16C), one zmm register per vector: the instance
 *     the dispatch runs when the kernel family is avx512;
 *   - LK_AVX512_TEST: the identical body for AVX2 + FMA + F16C, where GCC and Clang lower each
 *     64-byte vector operation to a pair of ymm operations: the instance the tests run on CPUs
 *     without AVX-512 (lk_cpu_avx512_test_instances), so that the avx512 kernels' arithmetic is
 *     checked against the references on every x86-64 machine with AVX2 and FMA.
 * Both instances perform the same IEEE operations lane for lane: the same source, the same
 * multiply-add contraction (GCC: fp-contract=fast on both; Clang: its default, which contracts
 * within an expression, the same in both) and only exactly-rounded operations (no reciprocal
 * estimates), so they give the same bits; the tests check that wherever the CPU has AVX-512.
 * Read with objdump -d (GCC 12, Clang 14): the AVX-512 instances work in zmm registers and have
 * the same FMAs as their test instances (e.g. attention's score kernel: 36 on zmm, 72 on ymm);
 * the test instances lower some compares and selects (vmax16) to scalar code. The AVX-512
 * instances have never run on the machine they were written on (no AVX-512).
 *
 * Vector helpers are macros or take pointers: 64-byte vectors passed by value change the ABI
 * without AVX-512 (and GCC warns about it). x86-64 only (LK_DISPATCH), and only with compilers
 * whose __builtin_shufflevector may change the vector length (Clang, GCC 12 and later); without
 * LK_AVX512_KERNELS the family does not exist in the build. */
#ifndef LDM_KERNELS_SIMD16_H
#define LDM_KERNELS_SIMD16_H

#include "simd.h"

#if defined(LK_DISPATCH) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
#define LK_AVX512_KERNELS 1

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef double v8d __attribute__((vector_size(64)));

#define LANES16 16

#define SPLAT16(v) ((v16f){(v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v)})
#define SPLAT16I(v) ((v16i){(v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v), (v)})
/* a where mask is set, else b */
#define SELECT16(mask, a, b) ((v16f)(((mask) & (v16i)(a)) | (~(mask) & (v16i)(b))))
#define LOAD16(v, p) memcpy(&(v), (p), sizeof(v16f))
#define STORE16(p, v)                                                                              \
    do {                                                                                           \
        v16f store16_tmp_ = (v);                                                                   \
        memcpy((p), &store16_tmp_, sizeof store16_tmp_);                                           \
    } while (0)
/* The low and high 8 lanes of a 16-lane vector, as v8f. */
#define LOW8(v) __builtin_shufflevector((v), (v), 0, 1, 2, 3, 4, 5, 6, 7)
#define HIGH8(v) __builtin_shufflevector((v), (v), 8, 9, 10, 11, 12, 13, 14, 15)

#define LK_AVX512_TARGET "avx512f,avx512bw,avx512vl,avx512dq,fma,avx2,f16c"
#if defined(__clang__)
#define LK_FP_CONTRACT /* Clang has no optimize attribute; its default contraction is the same in both */
#else
#define LK_FP_CONTRACT __attribute__((optimize("fp-contract=fast")))
#endif
#define LK_AVX512 __attribute__((target(LK_AVX512_TARGET))) LK_FP_CONTRACT
#define LK_AVX512_TEST __attribute__((target("avx2,fma,f16c"))) LK_FP_CONTRACT

/* Which 16-lane instances the dispatch runs: 0 none (another family), 1 the AVX-512 ones (the
 * avx512 family), 2 the AVX2-compiled test instances (tests, under the avx2+fma family, after
 * lk_cpu_avx512_test_instances(1)). Cached like lk_cpu_has_*(). */
int lk_cpu_avx512_mode(void);
/* Counts a call of a test instance (so tests can tell the 16-lane code ran). */
void lk_cpu_avx512_test_ran(void);

/* avx512_call under the avx512 family, test_call when tests asked for the test instances,
 * else other_call. The three calls have the same type. */
#define LK_PICK16(avx512_call, test_call, other_call)                                              \
    (lk_cpu_avx512_mode() == 1   ? (avx512_call)                                                   \
     : lk_cpu_avx512_mode() == 2 ? (lk_cpu_avx512_test_ran(), (test_call))                         \
                                 : (other_call))
/* Defines name_avx512 and name_avx512_test, both running body(args): returning a value (ret)
 * or not (VOID). */
#define LK_INSTANCES16(ret, name, params, body_call)                                               \
    static LK_AVX512 ret name##_avx512 params { return body_call; }                                \
    static LK_AVX512_TEST ret name##_avx512_test params { return body_call; }
#define LK_INSTANCES16_VOID(name, params, body_call)                                               \
    static LK_AVX512 void name##_avx512 params { body_call; }                                      \
    static LK_AVX512_TEST void name##_avx512_test params { body_call; }
#else
#define LK_PICK16(avx512_call, test_call, other_call) (other_call)
#endif

/* Tests: run the AVX2-compiled test instances of the 16-lane kernels (1) while the kernel family
 * is avx2+fma, or not (0); the number of test-instance calls so far. Defined on every build (a
 * no-op and 0 without the avx512 family). */
void lk_cpu_avx512_test_instances(int on);
long lk_cpu_avx512_test_calls(void);

#endif
