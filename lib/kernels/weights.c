/* weights.c - weights kept in the checkpoint's float16, widened as the kernels use them.
 *
 * Widening a float16 checkpoint to float32 at load time doubles the weights' memory (3.4 GB
 * instead of 1.7 GB for the SD1 UNet). Networks can instead hand the kernels an lk_wt that
 * points at the stored half values, and the products below widen the block of weight rows they
 * are about to use into a bounded scratch buffer. Widening a half is exact, so the products see
 * exactly the float32 values a load-time copy would hold; only the split of the product into
 * row blocks differs, which is float rounding, fixed by the shape (never by the thread count).
 * The cost is one conversion pass over each weight per use: next to the multiply-adds of a
 * network evaluation, a few percent (docs/performance.md).
 *
 * Float32 weights go straight to lk_gemm: for them these functions are exactly the plain calls. */
#include "kernels.h"

#include "simd.h"
#include "simd16.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#ifdef LK_NEON
#include <arm_neon.h>
#endif

/* Floats of widened weights per block: large enough that a block is an efficient product (a few
 * hundred rows), small enough to stay a modest scratch buffer. */
#define WT_BLOCK ((size_t)4 << 20)
#define WT_ROWS_PER_TASK 64

/* ---------------------------------------------------------------- half to float */

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf, nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign; /* zero */
    } else { /* subnormal: normalise */
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void half_to_float_base(const void *src, size_t n, float *dst)
{
    const unsigned char *p = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = half_to_float(h);
    }
}

#ifdef LK_DISPATCH
/* The F16C instruction converts 8 halves exactly as half_to_float does. */
__attribute__((target("avx,f16c"))) static void half_to_float_f16c(const void *src, size_t n, float *dst)
{
    const unsigned char *p = src;
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p + 2 * i))));
    half_to_float_base(p + 2 * i, n - i, dst + i);
}

#endif

#ifdef LK_NEON
/* FCVTL widens 4 halves exactly as half_to_float does (subnormals included; Linux runs user code
 * with FPCR.FZ16 clear), 16 per iteration. */
static void half_to_float_neon(const void *src, size_t n, float *dst)
{
    const unsigned char *p = src;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        uint16x8_t a = vreinterpretq_u16_u8(vld1q_u8(p + 2 * i)); /* byte loads: any alignment */
        uint16x8_t b = vreinterpretq_u16_u8(vld1q_u8(p + 2 * i + 16));
        vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(a))));
        vst1q_f32(dst + i + 4, vcvt_high_f32_f16(vreinterpretq_f16_u16(a)));
        vst1q_f32(dst + i + 8, vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(b))));
        vst1q_f32(dst + i + 12, vcvt_high_f32_f16(vreinterpretq_f16_u16(b)));
    }
    for (; i + 4 <= n; i += 4)
        vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p + 2 * i))));
    half_to_float_base(p + 2 * i, n - i, dst + i);
}
#endif

#ifdef LK_AVX512_KERNELS
typedef uint16_t v16h __attribute__((vector_size(32)));

/* half_to_float on 16 halves at a time, in integer and exact float operations (the avx512
 * family; VCVTPH2PS would need an intrinsic): a normal half's exponent is rebased by 127 - 15 in
 * place, a subnormal's mantissa m becomes m * 2^-24 (an exact int-to-float conversion and a
 * power-of-two scale; no float subnormal is involved, so FTZ/DAZ modes cannot change it), inf
 * and NaN keep their payload under the float's all-ones exponent; the sign is put back last.
 * The tail goes through half_to_float. */
LK_BODY void half16_body(const void *src, size_t n, float *dst)
{
    const unsigned char *p = src;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        v16h h;
        memcpy(&h, p + 2 * i, sizeof h);
        v16i w = __builtin_convertvector(h, v16i); /* zero-extended */
        v16i u = w & 0x7fff, sign = (w & 0x8000) << 16;
        v16i normal = (u << 13) + (112 << 23), infnan = (u << 13) | 0x7f800000;
        v16f sub = __builtin_convertvector(u, v16f) * SPLAT16(0x1p-24f); /* exact for u < 0x400 */
        v16i is_sub = u < 0x400, is_special = u >= 0x7c00;
        v16i bits = (is_sub & (v16i)sub) | (is_special & infnan) | (~(is_sub | is_special) & normal);
        bits |= sign;
        memcpy(dst + i, &bits, sizeof bits);
    }
    half_to_float_base(p + 2 * i, n - i, dst + i);
}

LK_INSTANCES16_VOID(half16, (const void *src, size_t n, float *dst), half16_body(src, n, dst))
#endif

static void half_to_float_simd(const void *src, size_t n, float *dst);

void lk_half_to_float(const void *src, size_t n, float *dst)
{
    LK_PICK16(half16_avx512(src, n, dst), half16_avx512_test(src, n, dst), half_to_float_simd(src, n, dst));
}

/* The 8-lane F16C, NEON or baseline conversion. */
static void half_to_float_simd(const void *src, size_t n, float *dst)
{
#ifdef LK_DISPATCH
    if (lk_cpu_has_f16c()) {
        half_to_float_f16c(src, n, dst);
        return;
    }
#endif
#ifdef LK_NEON
    if (lk_cpu_has_neon()) {
        half_to_float_neon(src, n, dst);
        return;
    }
#endif
    half_to_float_base(src, n, dst);
}

void lk_wt_done(lk_wt w, size_t n)
{
    if (!w.paged || !lk_low_memory()) return;
    if (w.f16)
        ldm_pages_drop(w.f16, 2 * n);
    else if (w.f32)
        ldm_pages_drop(w.f32, sizeof(float) * n);
}

void lk_wt_read(lk_wt w, size_t off, size_t n, float *dst)
{
    if (w.f32)
        memcpy(dst, w.f32 + off, sizeof(float) * n);
    else
        lk_half_to_float((const unsigned char *)w.f16 + 2 * off, n, dst);
}

/* ---------------------------------------------------------------- widened row blocks */

typedef struct widen_job {
    lk_wt w;
    size_t row0, rows, cols; /* rows [row0, row0 + rows) of a [*, cols] matrix */
    float *dst;
} widen_job;

static void widen_task(void *arg, int task)
{
    const widen_job *j = arg;
    size_t r0 = (size_t)task * WT_ROWS_PER_TASK, n = LDM_MIN((size_t)WT_ROWS_PER_TASK, j->rows - r0);
    lk_wt_read(j->w, (j->row0 + r0) * j->cols, n * j->cols, j->dst + r0 * j->cols);
}

static void widen_rows(const lctx *c, lk_wt w, size_t row0, size_t rows, size_t cols, float *dst)
{
    widen_job j = {w, row0, rows, cols, dst};
    lpool *pool = lk_pool_for_bytes(c, 6.0 * rows * cols); /* halves read, floats written */
    lpool_run(pool, (int)((rows + WT_ROWS_PER_TASK - 1) / WT_ROWS_PER_TASK), widen_task, &j);
}

/* Rows of a [*, K] weight matrix per widened block. */
static int block_rows(int K) { return (int)LDM_MAX((size_t)1, WT_BLOCK / (size_t)LDM_MAX(K, 1)); }

static ldm_status gemm_wa(const lctx *c, lk_wt W, int M, int K, int transB, const float *B, int ldb, int N, float beta,
                          float *C, int ldc)
{
    if (W.f32) {
        lk_gemm(c, 0, transB, M, N, K, 1.0f, W.f32, K, B, ldb, beta, C, ldc);
        return LDM_OK;
    }
    if (M <= 0 || N <= 0) return LDM_OK;
    int rows = LDM_MIN(M, block_rows(K));
    size_t bytes = sizeof(float) * (size_t)rows * (size_t)LDM_MAX(K, 1);
    float *buf = lk_scratch_get(bytes);
    if (!buf) return ldm_fail_context(ldm_alloc_failure_status(), "widening float16 weights: ");
    for (int m0 = 0; m0 < M; m0 += rows) {
        int m = LDM_MIN(rows, M - m0);
        widen_rows(c, W, (size_t)m0, (size_t)m, (size_t)K, buf);
        lk_gemm(c, 0, transB, m, N, K, 1.0f, buf, K, B, ldb, beta, C + (size_t)m0 * ldc, ldc);
    }
    lk_scratch_put(buf, bytes);
    return LDM_OK;
}

static ldm_status gemm_wb(const lctx *c, int transA, const float *A, int lda, int M, int K, lk_wt W, int N,
                          float beta, float *C, int ldc)
{
    if (W.f32) {
        lk_gemm(c, transA, 1, M, N, K, 1.0f, A, lda, W.f32, K, beta, C, ldc);
        return LDM_OK;
    }
    if (M <= 0 || N <= 0) return LDM_OK;
    int rows = LDM_MIN(N, block_rows(K));
    size_t bytes = sizeof(float) * (size_t)rows * (size_t)LDM_MAX(K, 1);
    float *buf = lk_scratch_get(bytes);
    if (!buf) return ldm_fail_context(ldm_alloc_failure_status(), "widening float16 weights: ");
    for (int n0 = 0; n0 < N; n0 += rows) {
        int n = LDM_MIN(rows, N - n0);
        widen_rows(c, W, (size_t)n0, (size_t)n, (size_t)K, buf);
        lk_gemm(c, transA, 1, M, n, K, 1.0f, A, lda, buf, K, beta, C + n0, ldc);
    }
    lk_scratch_put(buf, bytes);
    return LDM_OK;
}

ldm_status lk_gemm_wa(const lctx *c, lk_wt W, int M, int K, int transB, const float *B, int ldb, int N, float beta,
                      float *C, int ldc)
{
    lk_stat_mark m = lk_stat_begin();
    ldm_status st = gemm_wa(c, W, M, K, transB, B, ldb, N, beta, C, ldc);
    lk_stat_end(m, LK_OP_GEMM, 2.0 * LDM_MAX(M, 0) * LDM_MAX(N, 0) * LDM_MAX(K, 0));
    return st;
}

ldm_status lk_gemm_wb(const lctx *c, int transA, const float *A, int lda, int M, int K, lk_wt W, int N, float beta,
                      float *C, int ldc)
{
    lk_stat_mark m = lk_stat_begin();
    ldm_status st = gemm_wb(c, transA, A, lda, M, K, W, N, beta, C, ldc);
    lk_stat_end(m, LK_OP_GEMM, 2.0 * LDM_MAX(M, 0) * LDM_MAX(N, 0) * LDM_MAX(K, 0));
    return st;
}

ldm_status lk_linear_wt(const lctx *c, const float *x, int rows, int in, lk_wt W, const float *b, int out, float *y)
{
    if (W.f32) {
        lk_linear(c, x, rows, in, W.f32, b, out, y);
        if (in > 0 && out > 0) lk_wt_done(W, (size_t)out * (size_t)in);
        return LDM_OK;
    }
    if (rows <= 0 || out <= 0) return LDM_OK;
    lk_stat_mark m = lk_stat_begin();
    float beta = 0.0f;
    if (b) {
        for (int r = 0; r < rows; r++) memcpy(y + (size_t)r * out, b, sizeof(float) * (size_t)out);
        beta = 1.0f;
    }
    ldm_status st = gemm_wb(c, 0, x, in, rows, in, W, out, beta, y, out);
    lk_stat_end(m, LK_OP_GEMM, 2.0 * rows * out * in);
    if (in > 0) lk_wt_done(W, (size_t)out * (size_t)in);
    return st;
}
