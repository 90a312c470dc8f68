/* vexp.c - vectorised float exp and what is built on it: row max and exp-sum for softmax,
 * SiLU-style sigmoids and the erf GELU.
 *
 * libm's expf is a scalar call per element, and the attention softmax needs one per score (134M
 * for one 4096-token self-attention layer of SD1), which made exp, not the matrix products, the
 * cost of attention. This is the classic Cephes single-precision scheme: n = round(x log2 e) by
 * the 1.5*2^23 magic-number trick, r = x - n ln 2 in two parts (Cody-Waite), a degree-6 polynomial
 * for e^r on [-ln2/2, ln2/2], and 2^n assembled in the exponent bits. Max error about 2 ulp over
 * the clamped range [-87.3, 88.3] (below it returns ~1e-38 instead of 0, above it ~2e38 instead
 * of inf; harmless for sigmoid and softmax). It is written with GCC/Clang vector extensions on 8
 * lanes (two SSE registers in the baseline x86-64 build, one AVX register in the AVX2 twin, NEON
 * elsewhere), because plain C loops with the clamps are not auto-vectorised under the default
 * -ftrapping-math. Tails are padded into a full vector, so every element goes through the same
 * arithmetic wherever it sits; sums keep 8 lane-wise partial results combined in a fixed order.
 * erf uses Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7), the formula of PyTorch's
 * vectorised CPU erf, except that 1 + erf(z) for z < 0 is formed directly from the exp term
 * instead of by cancellation, so GELU keeps its relative accuracy for negative inputs.
 *
 * The vector helpers are macros or take pointers: GCC and Clang warn about (and note the ABI of)
 * 32-byte vectors passed or returned by value without AVX, even by functions that are inlined. */
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define LANES 8

/* On x86-64 every public loop is compiled twice, for baseline SSE2 and for AVX2, and the AVX2
 * copy is used when the CPU has it. Both perform the same IEEE operations lane for lane (the twin
 * enables AVX2 but not FMA, so nothing can be contracted), so results do not depend on the CPU. The dispatch is by
 * hand rather than with target_clones, whose ifunc resolvers GCC exports from the shared library
 * whatever the visibility. */
#if defined(__x86_64__) && defined(__GNUC__)
#define VEXP_DISPATCH 1
#include <stdatomic.h>

static int cpu_has_avx2(void)
{
    static atomic_int known = -1; /* -1 unknown, else 0/1; racing first calls agree */
    int v = atomic_load_explicit(&known, memory_order_relaxed);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") ? 1 : 0;
        atomic_store_explicit(&known, v, memory_order_relaxed);
    }
    return v;
}
#endif

/* Bodies are always inlined into both the baseline entry point and its AVX2 twin. */
#define VEXP_BODY static inline __attribute__((always_inline))

#define SPLAT(v) ((v8f){(v), (v), (v), (v), (v), (v), (v), (v)})
/* a where mask is set, else b */
#define SELECT(mask, a, b) ((v8f)(((mask) & (v8i)(a)) | (~(mask) & (v8i)(b))))
#define LOAD(v, p) memcpy(&(v), (p), sizeof(v8f))
#define STORE(p, v)                                                                                \
    do {                                                                                           \
        v8f store_tmp_ = (v);                                                                      \
        memcpy((p), &store_tmp_, sizeof store_tmp_);                                               \
    } while (0)

/* Loads n < LANES values into *v, padding with `fill`. */
static inline void load_tail(v8f *v, const float *p, size_t n, float fill)
{
    float tmp[LANES];
    for (size_t k = 0; k < LANES; k++) tmp[k] = k < n ? p[k] : fill;
    memcpy(v, tmp, sizeof *v);
}

/* Stores the first n lanes of *v. */
static inline void store_tail(float *p, size_t n, const v8f *v) { memcpy(p, v, sizeof(float) * n); }

/* e^x lane-wise, in place */
static inline __attribute__((always_inline)) void vexp8(v8f *xp)
{
    v8f x = *xp;
    x = SELECT(x < SPLAT(88.3f), x, SPLAT(88.3f));
    x = SELECT(x > SPLAT(-87.3f), x, SPLAT(-87.3f));
    const v8f magic = SPLAT(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    v8f n = (x * SPLAT(1.44269504088896341f) + magic) - magic;
    v8f r = x - n * SPLAT(0.693359375f);
    r = r - n * SPLAT(-2.12194440e-4f);
    v8f p = SPLAT(1.9875691500e-4f);
    p = p * r + SPLAT(1.3981999507e-3f);
    p = p * r + SPLAT(8.3334519073e-3f);
    p = p * r + SPLAT(4.1665795894e-2f);
    p = p * r + SPLAT(1.6666665459e-1f);
    p = p * r + SPLAT(5.0000001201e-1f);
    p = p * (r * r) + r + SPLAT(1.0f);
    v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
    *xp = p * (v8f)e;
}

static inline float hsum8(const v8f *v)
{
    const float *l = (const float *)v;
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

VEXP_BODY void vexp_impl(float *x, size_t n)
{
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        v8f v;
        LOAD(v, x + i);
        vexp8(&v);
        STORE(x + i, v);
    }
    if (i < n) {
        v8f v;
        load_tail(&v, x + i, n - i, 0.0f);
        vexp8(&v);
        store_tail(x + i, n - i, &v);
    }
}

VEXP_BODY float vmax_impl(const float *x, size_t n)
{
    v8f m = SPLAT(-INFINITY);
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        v8f v;
        LOAD(v, x + i);
        m = SELECT(v > m, v, m);
    }
    if (i < n) {
        v8f v;
        load_tail(&v, x + i, n - i, -INFINITY);
        m = SELECT(v > m, v, m);
    }
    const float *l = (const float *)&m;
    float r = l[0];
    for (int k = 1; k < LANES; k++) r = l[k] > r ? l[k] : r;
    return r;
}

VEXP_BODY float vexp_shift_sum_impl(float *x, size_t n, float shift)
{
    v8f acc = SPLAT(0.0f), s = SPLAT(shift);
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        v8f e;
        LOAD(e, x + i);
        e -= s;
        vexp8(&e);
        STORE(x + i, e);
        acc += e;
    }
    if (i < n) {
        v8f e;
        load_tail(&e, x + i, n - i, 0.0f);
        e -= s;
        vexp8(&e);
        store_tail(x + i, n - i, &e);
        float tmp[LANES] = {0}; /* padded lanes must not count */
        memcpy(tmp, &e, sizeof(float) * (n - i));
        v8f last;
        LOAD(last, tmp);
        acc += last;
    }
    return hsum8(&acc);
}

/* x / (1 + exp(-k x)) lane-wise, in place */
static inline __attribute__((always_inline)) void vsilu8(v8f *x, float k)
{
    v8f e = *x * SPLAT(-k);
    vexp8(&e);
    *x = *x / (SPLAT(1.0f) + e);
}

VEXP_BODY void vsilu_impl(float *x, size_t n, float k)
{
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        v8f v;
        LOAD(v, x + i);
        vsilu8(&v, k);
        STORE(x + i, v);
    }
    if (i < n) {
        v8f v;
        load_tail(&v, x + i, n - i, 0.0f);
        vsilu8(&v, k);
        store_tail(x + i, n - i, &v);
    }
}

/* 0.5 * x * (1 + erf(x / sqrt 2)) lane-wise, in place */
static inline __attribute__((always_inline)) void vgelu8(v8f *xp)
{
    v8f x = *xp;
    v8f z = x * SPLAT(0.70710678118654752f);
    v8i neg = z < SPLAT(0.0f);
    v8f a = SELECT(neg, -z, z);
    v8f t = SPLAT(1.0f) / (SPLAT(1.0f) + SPLAT(0.3275911f) * a);
    v8f poly = SPLAT(1.061405429f);
    poly = poly * t + SPLAT(-1.453152027f);
    poly = poly * t + SPLAT(1.421413741f);
    poly = poly * t + SPLAT(-0.284496736f);
    poly = poly * t + SPLAT(0.254829592f);
    v8f g = -(a * a);
    vexp8(&g);
    v8f tail = poly * t * g; /* erfc(|z|) */
    v8f one_plus_erf = SELECT(neg, tail, SPLAT(2.0f) - tail);
    *xp = SPLAT(0.5f) * x * one_plus_erf;
}

VEXP_BODY void vgelu_impl(float *x, size_t n)
{
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        v8f v;
        LOAD(v, x + i);
        vgelu8(&v);
        STORE(x + i, v);
    }
    if (i < n) {
        v8f v;
        load_tail(&v, x + i, n - i, 0.0f);
        vgelu8(&v);
        store_tail(x + i, n - i, &v);
    }
}

/* ---- entry points: baseline build plus AVX2 twin */

#ifdef VEXP_DISPATCH
#define AVX2 __attribute__((target("avx2")))
static AVX2 void vexp_avx2(float *x, size_t n) { vexp_impl(x, n); }
static AVX2 float vmax_avx2(const float *x, size_t n) { return vmax_impl(x, n); }
static AVX2 float vexp_shift_sum_avx2(float *x, size_t n, float shift) { return vexp_shift_sum_impl(x, n, shift); }
static AVX2 void vsilu_avx2(float *x, size_t n, float k) { vsilu_impl(x, n, k); }
static AVX2 void vgelu_avx2(float *x, size_t n) { vgelu_impl(x, n); }
#define PICK(avx2_call, base_call) (cpu_has_avx2() ? (avx2_call) : (base_call))
#else
#define PICK(avx2_call, base_call) (base_call)
#endif

void lk_vexp(float *x, size_t n) { PICK(vexp_avx2(x, n), vexp_impl(x, n)); }
float lk_vmax(const float *x, size_t n) { return PICK(vmax_avx2(x, n), vmax_impl(x, n)); }
float lk_vexp_shift_sum(float *x, size_t n, float shift)
{
    return PICK(vexp_shift_sum_avx2(x, n, shift), vexp_shift_sum_impl(x, n, shift));
}
void lk_vsilu(float *x, size_t n, float k) { PICK(vsilu_avx2(x, n, k), vsilu_impl(x, n, k)); }
void lk_vgelu(float *x, size_t n) { PICK(vgelu_avx2(x, n), vgelu_impl(x, n)); }
