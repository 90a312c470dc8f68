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
 * lanes (see simd.h), because plain C loops with the clamps are not auto-vectorised under the default
 * -ftrapping-math. Tails are padded into a full vector, so every element goes through the same
 * arithmetic wherever it sits; sums keep 8 lane-wise partial results combined in a fixed order.
 * erf uses Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7), the formula of PyTorch's
 * vectorised CPU erf, except that 1 + erf(z) for z < 0 is formed directly from the exp term
 * instead of by cancellation, so GELU keeps its relative accuracy for negative inputs.
 *
 * The vector types, helpers and the AVX2 dispatch are those of simd.h. The avx512 family runs the
 * same functions on 16 lanes (simd16.h), with multiply-adds contracted into FMA: the sums of
 * softmax then keep 16 lane-wise partial sums. */
#include "kernels.h"
#include "simd.h"
#include "simd16.h"

#include <math.h>

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

LK_BODY void vexp_impl(float *x, size_t n)
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

LK_BODY float vmax_impl(const float *x, size_t n)
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

LK_BODY float vexp_shift_sum_impl(float *x, size_t n, float shift)
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

LK_BODY void vsilu_impl(float *x, size_t n, float k)
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

LK_BODY void vgelu_impl(float *x, size_t n)
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

/* ---- NEON (aarch64): the same arithmetic with <arm_neon.h>, FMA and FRINTN. GCC compiles the
 * vector-extension clamps above (SELECT on < and > under -ftrapping-math) to one scalar compare
 * and select per lane on aarch64; FMINNM/FMAXNM do them in one instruction per vector, with the
 * same result for NaN (the bound). Two 4-lane vectors stand for the 8 lanes, so sums combine
 * the same partial sums in the same order. */
#ifdef LK_NEON
#include <arm_neon.h>

static inline __attribute__((always_inline)) float32x4_t nexp4(float32x4_t x)
{
    x = vmaxnmq_f32(vminnmq_f32(x, vdupq_n_f32(88.3f)), vdupq_n_f32(-87.3f));
    float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

static inline __attribute__((always_inline)) float32x4_t nsilu4(float32x4_t x, float k)
{
    return vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0f), nexp4(vmulq_n_f32(x, -k))));
}

static inline __attribute__((always_inline)) float32x4_t ngelu4(float32x4_t x)
{
    float32x4_t z = vmulq_n_f32(x, 0.70710678118654752f), a = vabsq_f32(z);
    float32x4_t t = vdivq_f32(vdupq_n_f32(1.0f), vfmaq_f32(vdupq_n_f32(1.0f), vdupq_n_f32(0.3275911f), a));
    float32x4_t poly = vdupq_n_f32(1.061405429f);
    poly = vfmaq_f32(vdupq_n_f32(-1.453152027f), poly, t);
    poly = vfmaq_f32(vdupq_n_f32(1.421413741f), poly, t);
    poly = vfmaq_f32(vdupq_n_f32(-0.284496736f), poly, t);
    poly = vfmaq_f32(vdupq_n_f32(0.254829592f), poly, t);
    float32x4_t tail = vmulq_f32(vmulq_f32(poly, t), nexp4(vnegq_f32(vmulq_f32(a, a)))); /* erfc(|z|) */
    float32x4_t one_plus_erf = vbslq_f32(vcltzq_f32(z), tail, vsubq_f32(vdupq_n_f32(2.0f), tail));
    return vmulq_f32(vmulq_n_f32(x, 0.5f), one_plus_erf);
}

/* fn over n floats in place, 8 at a time; the tail padded with `fill` into a full 8. */
#define NEON_MAP(x, n, fill, expr)                                                                 \
    do {                                                                                           \
        size_t i_ = 0;                                                                             \
        for (; i_ + 8 <= (n); i_ += 8) {                                                           \
            float32x4_t v = vld1q_f32((x) + i_);                                                   \
            vst1q_f32((x) + i_, expr);                                                             \
            v = vld1q_f32((x) + i_ + 4);                                                           \
            vst1q_f32((x) + i_ + 4, expr);                                                         \
        }                                                                                          \
        if (i_ < (n)) {                                                                            \
            float tmp_[8];                                                                         \
            for (size_t k_ = 0; k_ < 8; k_++) tmp_[k_] = i_ + k_ < (n) ? (x)[i_ + k_] : (fill);    \
            float32x4_t v = vld1q_f32(tmp_);                                                       \
            vst1q_f32(tmp_, expr);                                                                 \
            v = vld1q_f32(tmp_ + 4);                                                               \
            vst1q_f32(tmp_ + 4, expr);                                                             \
            memcpy((x) + i_, tmp_, sizeof(float) * ((n) - i_));                                    \
        }                                                                                          \
    } while (0)

static void vexp_neon(float *x, size_t n) { NEON_MAP(x, n, 0.0f, nexp4(v)); }
static void vsilu_neon(float *x, size_t n, float k) { NEON_MAP(x, n, 0.0f, nsilu4(v, k)); }
static void vgelu_neon(float *x, size_t n) { NEON_MAP(x, n, 0.0f, ngelu4(v)); }

static float vmax_neon(const float *x, size_t n)
{
    float32x4_t m0 = vdupq_n_f32(-INFINITY), m1 = m0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
        m0 = vbslq_f32(vcgtq_f32(a, m0), a, m0); /* vmax_impl's select: NaN never wins */
        m1 = vbslq_f32(vcgtq_f32(b, m1), b, m1);
    }
    float r = vmaxvq_f32(vbslq_f32(vcgtq_f32(m1, m0), m1, m0));
    for (; i < n; i++) r = x[i] > r ? x[i] : r;
    return r;
}

static float vexp_shift_sum_neon(float *x, size_t n, float shift)
{
    float32x4_t s = vdupq_n_f32(shift), acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float32x4_t a = nexp4(vsubq_f32(vld1q_f32(x + i), s)), b = nexp4(vsubq_f32(vld1q_f32(x + i + 4), s));
        vst1q_f32(x + i, a);
        vst1q_f32(x + i + 4, b);
        acc0 = vaddq_f32(acc0, a);
        acc1 = vaddq_f32(acc1, b);
    }
    if (i < n) {
        float tmp[8] = {0};
        memcpy(tmp, x + i, sizeof(float) * (n - i));
        float32x4_t a = nexp4(vsubq_f32(vld1q_f32(tmp), s)), b = nexp4(vsubq_f32(vld1q_f32(tmp + 4), s));
        vst1q_f32(tmp, a);
        vst1q_f32(tmp + 4, b);
        memcpy(x + i, tmp, sizeof(float) * (n - i));
        for (size_t k = n - i; k < 8; k++) tmp[k] = 0.0f; /* padded lanes must not count */
        acc0 = vaddq_f32(acc0, vld1q_f32(tmp));
        acc1 = vaddq_f32(acc1, vld1q_f32(tmp + 4));
    }
    /* hsum8's order: ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)) */
    float32x4_t p = vaddq_f32(acc0, acc1);
    return (vgetq_lane_f32(p, 0) + vgetq_lane_f32(p, 1)) + (vgetq_lane_f32(p, 2) + vgetq_lane_f32(p, 3));
}
#endif

/* ---- the 16-lane versions (avx512 family): the arithmetic above on v16f */
#ifdef LK_AVX512_KERNELS
LK_BODY void load_tail16(v16f *v, const float *p, size_t n, float fill)
{
    float tmp[LANES16];
    for (size_t k = 0; k < LANES16; k++) tmp[k] = k < n ? p[k] : fill;
    memcpy(v, tmp, sizeof *v);
}

LK_BODY void vexp16(v16f *xp)
{
    v16f x = *xp;
    x = SELECT16(x < SPLAT16(88.3f), x, SPLAT16(88.3f));
    x = SELECT16(x > SPLAT16(-87.3f), x, SPLAT16(-87.3f));
    const v16f magic = SPLAT16(12582912.0f);
    v16f n = (x * SPLAT16(1.44269504088896341f) + magic) - magic;
    v16f r = x - n * SPLAT16(0.693359375f);
    r = r - n * SPLAT16(-2.12194440e-4f);
    v16f p = SPLAT16(1.9875691500e-4f);
    p = p * r + SPLAT16(1.3981999507e-3f);
    p = p * r + SPLAT16(8.3334519073e-3f);
    p = p * r + SPLAT16(4.1665795894e-2f);
    p = p * r + SPLAT16(1.6666665459e-1f);
    p = p * r + SPLAT16(5.0000001201e-1f);
    p = p * (r * r) + r + SPLAT16(1.0f);
    v16i e = (__builtin_convertvector(n, v16i) + 127) << 23;
    *xp = p * (v16f)e;
}

LK_BODY void vsilu16(v16f *x, float k)
{
    v16f e = *x * SPLAT16(-k);
    vexp16(&e);
    *x = *x / (SPLAT16(1.0f) + e);
}

LK_BODY void vgelu16(v16f *xp)
{
    v16f x = *xp;
    v16f z = x * SPLAT16(0.70710678118654752f);
    v16i neg = z < SPLAT16(0.0f);
    v16f a = SELECT16(neg, -z, z);
    v16f t = SPLAT16(1.0f) / (SPLAT16(1.0f) + SPLAT16(0.3275911f) * a);
    v16f poly = SPLAT16(1.061405429f);
    poly = poly * t + SPLAT16(-1.453152027f);
    poly = poly * t + SPLAT16(1.421413741f);
    poly = poly * t + SPLAT16(-0.284496736f);
    poly = poly * t + SPLAT16(0.254829592f);
    v16f g = -(a * a);
    vexp16(&g);
    v16f tail = poly * t * g; /* erfc(|z|) */
    v16f one_plus_erf = SELECT16(neg, tail, SPLAT16(2.0f) - tail);
    *xp = SPLAT16(0.5f) * x * one_plus_erf;
}

/* fn(&v, args) over n floats in place, 16 at a time; the tail padded with zeros. */
#define MAP16(x, n, call)                                                                          \
    do {                                                                                           \
        size_t i_ = 0;                                                                             \
        for (; i_ + LANES16 <= (n); i_ += LANES16) {                                               \
            v16f v;                                                                                \
            LOAD16(v, (x) + i_);                                                                   \
            call;                                                                                  \
            STORE16((x) + i_, v);                                                                  \
        }                                                                                          \
        if (i_ < (n)) {                                                                            \
            v16f v;                                                                                \
            load_tail16(&v, (x) + i_, (n) - i_, 0.0f);                                             \
            call;                                                                                  \
            memcpy((x) + i_, &v, sizeof(float) * ((n) - i_));                                      \
        }                                                                                          \
    } while (0)

LK_BODY void vexp16_impl(float *x, size_t n) { MAP16(x, n, vexp16(&v)); }
LK_BODY void vsilu16_impl(float *x, size_t n, float k) { MAP16(x, n, vsilu16(&v, k)); }
LK_BODY void vgelu16_impl(float *x, size_t n) { MAP16(x, n, vgelu16(&v)); }

LK_BODY float vmax16_impl(const float *x, size_t n)
{
    v16f m = SPLAT16(-INFINITY);
    size_t i = 0;
    for (; i + LANES16 <= n; i += LANES16) {
        v16f v;
        LOAD16(v, x + i);
        m = SELECT16(v > m, v, m);
    }
    if (i < n) {
        v16f v;
        load_tail16(&v, x + i, n - i, -INFINITY);
        m = SELECT16(v > m, v, m);
    }
    float l[LANES16];
    memcpy(l, &m, sizeof l);
    float r = l[0];
    for (int k = 1; k < LANES16; k++) r = l[k] > r ? l[k] : r;
    return r;
}

LK_BODY float vexp_shift_sum16_impl(float *x, size_t n, float shift)
{
    v16f acc = SPLAT16(0.0f), s = SPLAT16(shift);
    size_t i = 0;
    for (; i + LANES16 <= n; i += LANES16) {
        v16f e;
        LOAD16(e, x + i);
        e -= s;
        vexp16(&e);
        STORE16(x + i, e);
        acc += e;
    }
    if (i < n) {
        v16f e;
        load_tail16(&e, x + i, n - i, 0.0f);
        e -= s;
        vexp16(&e);
        memcpy(x + i, &e, sizeof(float) * (n - i));
        float tmp[LANES16] = {0}; /* padded lanes must not count */
        memcpy(tmp, &e, sizeof(float) * (n - i));
        v16f last;
        LOAD16(last, tmp);
        acc += last;
    }
    v8f h = LOW8(acc) + HIGH8(acc);
    return hsum8(&h);
}

LK_INSTANCES16_VOID(vexp16, (float *x, size_t n), vexp16_impl(x, n))
LK_INSTANCES16_VOID(vsilu16, (float *x, size_t n, float k), vsilu16_impl(x, n, k))
LK_INSTANCES16_VOID(vgelu16, (float *x, size_t n), vgelu16_impl(x, n))
LK_INSTANCES16(float, vmax16, (const float *x, size_t n), vmax16_impl(x, n))
LK_INSTANCES16(float, vexp_shift_sum16, (float *x, size_t n, float shift), vexp_shift_sum16_impl(x, n, shift))
#endif

/* ---- entry points: the 16-lane kernels (avx512 family), the baseline build plus the AVX2 twin
 * (x86-64) or the NEON kernels (aarch64) */

#ifdef LK_DISPATCH
static LK_AVX2 void vexp_avx2(float *x, size_t n) { vexp_impl(x, n); }
static LK_AVX2 float vmax_avx2(const float *x, size_t n) { return vmax_impl(x, n); }
static LK_AVX2 float vexp_shift_sum_avx2(float *x, size_t n, float shift) { return vexp_shift_sum_impl(x, n, shift); }
static LK_AVX2 void vsilu_avx2(float *x, size_t n, float k) { vsilu_impl(x, n, k); }
static LK_AVX2 void vgelu_avx2(float *x, size_t n) { vgelu_impl(x, n); }
#define PICK LK_PICK
#elif defined(LK_NEON)
#define vexp_avx2 vexp_neon
#define vmax_avx2 vmax_neon
#define vexp_shift_sum_avx2 vexp_shift_sum_neon
#define vsilu_avx2 vsilu_neon
#define vgelu_avx2 vgelu_neon
#define PICK LK_PICK_NEON
#else
#define PICK LK_PICK
#endif

void lk_vexp(float *x, size_t n)
{
    LK_PICK16(vexp16_avx512(x, n), vexp16_avx512_test(x, n), PICK(vexp_avx2(x, n), vexp_impl(x, n)));
}
float lk_vmax(const float *x, size_t n)
{
    return LK_PICK16(vmax16_avx512(x, n), vmax16_avx512_test(x, n), PICK(vmax_avx2(x, n), vmax_impl(x, n)));
}
float lk_vexp_shift_sum(float *x, size_t n, float shift)
{
    return LK_PICK16(vexp_shift_sum16_avx512(x, n, shift), vexp_shift_sum16_avx512_test(x, n, shift),
                     PICK(vexp_shift_sum_avx2(x, n, shift), vexp_shift_sum_impl(x, n, shift)));
}
void lk_vsilu(float *x, size_t n, float k)
{
    LK_PICK16(vsilu16_avx512(x, n, k), vsilu16_avx512_test(x, n, k), PICK(vsilu_avx2(x, n, k), vsilu_impl(x, n, k)));
}
void lk_vgelu(float *x, size_t n)
{
    LK_PICK16(vgelu16_avx512(x, n), vgelu16_avx512_test(x, n), PICK(vgelu_avx2(x, n), vgelu_impl(x, n)));
}
