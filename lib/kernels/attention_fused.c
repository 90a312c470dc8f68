/* attention_fused.c - scaled dot-product attention with AVX2+FMA (x86-64) or NEON (aarch64)
 * micro-kernels, one pass over the keys (online softmax), used by lk_attention when the kernel
 * family (cpu.c) is avx2+fma or neon. The NEON kernels are the AVX2 ones on 4-lane vectors (four
 * vectors per 16 keys); everything but the micro-kernels and the softmax row is shared.
 *
 * The tiled BLAS version (attention.c) spends as much time in sgemm's packing and in zeroing and
 * re-reading score tiles as in arithmetic when the head dimension is small (SD's 40 or 80): a
 * 128 x 512 x 40 product is too thin for BLAS. Here a unit of work is one block of FA_TQ queries
 * of one (batch, head); it walks the keys in blocks of FA_KB:
 *   - the block's keys are packed transposed (Kt [D][keys]) and its values row-major, padded;
 *   - scores S = Q K^T come from a 6 x 16 register-blocked micro-kernel (12 accumulators, the
 *     classic GEMM shape: one broadcast of q and two loads of Kt per 12 FMAs); the queries are
 *     packed pre-multiplied by scale * log2(e), so scores come out in base-2 exponent units,
 *     and for full blocks the kernel also keeps each row's maximum in its registers;
 *   - each row's running maximum, rescale factor and exp-sum are updated (online softmax) with
 *     a vector 2^x (the Cephes polynomial of vexp.c on the reduced argument, with FMA): one
 *     pass over the scores, no separate scaling or max pass;
 *   - O += P V from a 6-row micro-kernel over 16 output columns at a time.
 * The full Tq x Tk score matrix never exists; per-thread scratch is a few hundred KiB.
 *
 * Results differ from the BLAS version by float rounding only (FMA, summation order). Every unit
 * is computed the same way whichever thread takes it, so they do not depend on the thread count.
 * Causal masking limits each row to keys s <= t and skips key blocks past the tile's last query.
 *
 * The avx512 family (simd16.h) runs 16-lane versions of the three micro-kernels, written with
 * vector extensions: one vector is one 16-key panel (scores) or 16 output columns (O += P V);
 * the score kernel takes two panels at once (6 x 32, 12 accumulators of AVX-512's 32 registers),
 * O += P V 32 columns at once, and the softmax row 16 scores at a time. Packing, the unit loop and
 * the layout of the scratch are shared. Their AVX2-compiled twins are what the tests run on CPUs
 * without AVX-512. */
#include "kernels.h"

#include "simd.h"
#include "simd16.h"

#if defined(LK_DISPATCH) || defined(LK_NEON)
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#ifdef LK_DISPATCH
#include <immintrin.h>
#define FA_TARGET __attribute__((target("avx2,fma")))
#define FA_AVAILABLE() lk_cpu_has_avx2_fma()
#define FA_NAME "AVX2/FMA"
#else
#include <arm_neon.h>
#define FA_TARGET
#define FA_AVAILABLE() lk_cpu_has_neon()
#define FA_NAME "NEON"
#endif
#define FA_INLINE static inline __attribute__((always_inline))
/* Loops over accumulator arrays must be unrolled for the arrays to live in registers. */
#define UNROLL _Pragma("GCC unroll 8")

#define FA_R 6    /* query rows per score micro-kernel */
#define FA_KC 16  /* keys per score micro-kernel (two vectors) */
#define FA_TQ 96  /* query rows per unit: a multiple of FA_R and of 2 */
#define FA_KB 256 /* keys per block: a multiple of FA_KC */

static int round_up(int v, int m) { return (v + m - 1) / m * m; }

/* The micro-kernels a unit runs: the 8-lane (AVX2+FMA) or 4-lane (NEON) ones, or on x86-64 the
 * 16-lane ones of the avx512 family (or their AVX2-compiled test instances). */
typedef struct fa_ops {
    void (*score)(const float *q, int D, const float *kt, int rows, int nk16, float *s, float *bm, int track);
    void (*softmax)(float *s, int nv, int nk16, const float *bm, float *mx, float *sum, float *o, int D8);
    void (*pv)(const float *s, int nk, const float *v, int D8, float *o, int rows);
} fa_ops;

typedef struct fa_job {
    int H, Tq, Tk, D, D8, Tk16, causal;
    float scale;
    lk_view q, k, v, out;
    int q_tiles;
    long units;
    atomic_long next_unit;
    float *kp, *vp; /* packed keys and values of every (batch, head), see pack_head */
    size_t head_k, head_v; /* floats of kp / vp per (batch, head) */
    float *scratch;
    size_t per_task;
    const fa_ops *ops;
} fa_job;

typedef struct fa_scratch {
    float *q;   /* [FA_TQ][D] queries of the unit, times scale * log2(e) (rows past Tq zero) */
    float *s;   /* [FA_TQ][FA_KB] scores, then probabilities */
    float *o;   /* [FA_TQ][D8] un-normalised output */
    float *mx, *sum; /* [FA_TQ] running row maximum and exp-sum (base-2 units) */
    float *bm;       /* [FA_TQ][8] lane-wise maxima of the current block's scores */
} fa_scratch;

static size_t scratch_floats(int D, int D8)
{
    return (size_t)FA_TQ * D + (size_t)FA_TQ * FA_KB + (size_t)FA_TQ * D8 + 2 * FA_TQ + 8 * FA_TQ + 64;
}

static fa_scratch scratch_at(float *base, int D, int D8)
{
    fa_scratch w;
    w.q = base;
    w.s = w.q + (size_t)FA_TQ * D;
    w.o = w.s + (size_t)FA_TQ * FA_KB;
    w.mx = w.o + (size_t)FA_TQ * D8;
    w.sum = w.mx + FA_TQ;
    w.bm = w.sum + FA_TQ;
    return w;
}

/* ---------------------------------------------------------------- packing */

static float view_at(const lk_view *v, const float *base, long t, long d) { return base[t * v->st + d * v->sd]; }

/* Queries times scale * log2(e): e^(scale q.k) = 2^(q'.k), and the scaling costs D multiplies
 * per query instead of one per score. */
static void pack_queries(const fa_job *j, const float *qb, int t0, int nq, float *dst)
{
    int D = j->D;
    float f = j->scale * 1.44269504088896341f;
    for (int i = 0; i < FA_TQ; i++)
        for (int d = 0; d < D; d++) dst[(size_t)i * D + d] = i < nq ? f * view_at(&j->q, qb, t0 + i, d) : 0.0f;
}

/* Keys and values of one (batch, head), packed once for all its query blocks (packing per query
 * block re-read them from the strided tensors ~Tq/FA_TQ times and cost a third of the time).
 * Keys go in panels of FA_KC keys, each [D][FA_KC] contiguous: packing writes and the score
 * kernel reads one stream. Values are rows [Tk16][D8]. Zeros past Tk and D. */
static void pack_head(void *arg, int bh)
{
    const fa_job *j = arg;
    int D = j->D, D8 = j->D8, b = bh / j->H, h = bh % j->H;
    const float *kb = j->k.p + (long)b * j->k.sb + (long)h * j->k.sh;
    const float *vb = j->v.p + (long)b * j->v.sb + (long)h * j->v.sh;
    float *kp = j->kp + (size_t)bh * j->head_k, *vp = j->vp + (size_t)bh * j->head_v;
    for (int c = 0; c < j->Tk16; c++) {
        float *dst = kp + (size_t)(c / FA_KC) * D * FA_KC + c % FA_KC;
        for (int d = 0; d < D; d++) dst[(size_t)d * FA_KC] = c < j->Tk ? view_at(&j->k, kb, c, d) : 0.0f;
        float *row = vp + (size_t)c * D8;
        for (int d = 0; d < D; d++) row[d] = c < j->Tk ? view_at(&j->v, vb, c, d) : 0.0f;
        for (int d = D; d < D8; d++) row[d] = 0.0f;
    }
}

#ifdef LK_DISPATCH
/* ---------------------------------------------------------------- micro-kernels */

/* s[0..6)[0..16) = q[0..6)[0..D) . kt[0..D)[0..16), kt one packed panel; with `track`, also
 * bm[r][0..8) = max(bm[r], the row's new scores) lane-wise. */
FA_INLINE FA_TARGET void score_6x16(const float *q, int D, const float *kt, float *s, float *bm, const int track)
{
    __m256 c[FA_R][2];
    UNROLL for (int r = 0; r < FA_R; r++) c[r][0] = c[r][1] = _mm256_setzero_ps();
    for (int d = 0; d < D; d++) {
        __m256 k0 = _mm256_loadu_ps(kt + (size_t)d * FA_KC), k1 = _mm256_loadu_ps(kt + (size_t)d * FA_KC + 8);
        UNROLL for (int r = 0; r < FA_R; r++) {
            __m256 a = _mm256_broadcast_ss(q + (size_t)r * D + d);
            c[r][0] = _mm256_fmadd_ps(a, k0, c[r][0]);
            c[r][1] = _mm256_fmadd_ps(a, k1, c[r][1]);
        }
    }
    UNROLL for (int r = 0; r < FA_R; r++) {
        _mm256_storeu_ps(s + (size_t)r * FA_KB, c[r][0]);
        _mm256_storeu_ps(s + (size_t)r * FA_KB + 8, c[r][1]);
        if (track) {
            __m256 m = _mm256_max_ps(c[r][0], c[r][1]);
            _mm256_storeu_ps(bm + 8 * r, _mm256_max_ps(m, _mm256_loadu_ps(bm + 8 * r)));
        }
    }
}

/* The scores of rows [0, rows) against keys [0, nk16) of a block; bm: see score_6x16. */
FA_TARGET static void score_block(const float *q, int D, const float *kt, int rows, int nk16, float *s, float *bm,
                                  int track)
{
    for (int r = 0; r < rows; r += FA_R)
        for (int c = 0; c < nk16; c += FA_KC) {
            const float *qr = q + (size_t)r * D, *kc = kt + (size_t)c * D;
            float *sr = s + (size_t)r * FA_KB + c, *br = bm + 8 * r;
            if (track)
                score_6x16(qr, D, kc, sr, br, 1);
            else
                score_6x16(qr, D, kc, sr, br, 0);
        }
}

/* o[0..6)[0..8*nv) += p[0..6)[0..nk) . v[0..nk)[0..8*nv), nv = 1 or 2 (a constant after inlining):
 * the score kernel's shape again, 12 FMAs per two loads of a value row and six broadcasts of p
 * (the value block lives in L2; p's six rows in L1). */
FA_INLINE FA_TARGET void pv_6rows(const float *p, int nk, const float *v, int D8, float *o, const int nv)
{
    __m256 c[FA_R][2];
    UNROLL for (int r = 0; r < FA_R; r++)
    {
        c[r][0] = _mm256_loadu_ps(o + (size_t)r * D8);
        c[r][1] = nv > 1 ? _mm256_loadu_ps(o + (size_t)r * D8 + 8) : _mm256_setzero_ps();
    }
    for (int k = 0; k < nk; k++) {
        const float *vr = v + (size_t)k * D8;
        __m256 v0 = _mm256_loadu_ps(vr), v1 = nv > 1 ? _mm256_loadu_ps(vr + 8) : v0;
        UNROLL for (int r = 0; r < FA_R; r++)
        {
            __m256 a = _mm256_broadcast_ss(p + (size_t)r * FA_KB + k);
            c[r][0] = _mm256_fmadd_ps(a, v0, c[r][0]);
            if (nv > 1) c[r][1] = _mm256_fmadd_ps(a, v1, c[r][1]);
        }
    }
    UNROLL for (int r = 0; r < FA_R; r++)
    {
        _mm256_storeu_ps(o + (size_t)r * D8, c[r][0]);
        if (nv > 1) _mm256_storeu_ps(o + (size_t)r * D8 + 8, c[r][1]);
    }
}

/* O[0..rows) += P V over the block's nk keys, 16 output columns at a time (8 for the last). */
FA_TARGET static void pv_block(const float *s, int nk, const float *v, int D8, float *o, int rows)
{
    for (int r = 0; r < rows; r += FA_R)
        for (int x0 = 0; x0 < D8; x0 += 16) {
            const float *p = s + (size_t)r * FA_KB;
            float *orow = o + (size_t)r * D8 + x0;
            if (D8 - x0 >= 16)
                pv_6rows(p, nk, v + x0, D8, orow, 2);
            else
                pv_6rows(p, nk, v + x0, D8, orow, 1);
        }
}

/* 2^x lane-wise for x <= 0 (softmax arguments): 2^n e^r with n = round(x), r = (x - n) ln 2 in
 * [-0.35, 0.35] and Cephes expf's polynomial for e^r (see vexp.c); about 2 ulp. Arguments below
 * -126 give 2^-126 times e^r, not 0: at most 1e-38 next to the row's maximum term of 1. */
FA_INLINE FA_TARGET __m256 exp2_8(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-126.0f));
    __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_mul_ps(_mm256_sub_ps(x, n), _mm256_set1_ps(0.693147180559945309f));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

FA_INLINE FA_TARGET float hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

FA_INLINE FA_TARGET float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Row i of a score block (scores in base-2 units): fold into the running max / sum (first
 * visible block: start them), leave P = 2^(s - max) in s (zero past the nv visible keys, up to
 * nk16) and rescale the output row when the maximum grew. bm: the row's lane-wise maxima when
 * score_block tracked them (all nk16 keys visible), else NULL and the row is scanned. */
FA_TARGET static void softmax_row(float *s, int nv, int nk16, const float *bm, float *mx, float *sum, float *o, int D8)
{
    if (nv <= 0) { /* nothing visible in this block (causal) */
        memset(s, 0, sizeof(float) * (size_t)nk16);
        return;
    }
    float m;
    int c = 0;
    if (bm) {
        m = hmax8(_mm256_loadu_ps(bm));
    } else {
        __m256 vm = _mm256_set1_ps(-INFINITY);
        for (; c + 8 <= nv; c += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + c));
        m = hmax8(vm);
        for (; c < nv; c++) m = s[c] > m ? s[c] : m;
    }
    int first = *mx == -INFINITY;
    if (!first && *mx > m) m = *mx;
    __m256 shift = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
    for (c = 0; c + 8 <= nv; c += 8) {
        __m256 e = exp2_8(_mm256_sub_ps(_mm256_loadu_ps(s + c), shift));
        _mm256_storeu_ps(s + c, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (c < nv) { /* the tail through the same vector arithmetic, padded lanes dropped */
        float tmp[8] = {0};
        memcpy(tmp, s + c, sizeof(float) * (size_t)(nv - c));
        __m256 e = exp2_8(_mm256_sub_ps(_mm256_loadu_ps(tmp), shift));
        __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nv - c),
                                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
        e = _mm256_and_ps(e, keep);
        _mm256_storeu_ps(tmp, e);
        memcpy(s + c, tmp, sizeof(float) * (size_t)(nv - c));
        acc = _mm256_add_ps(acc, e);
    }
    for (c = nv; c < nk16; c++) s[c] = 0.0f;
    float add = hsum8(acc);
    if (first) {
        *sum = add;
    } else {
        float corr = _mm_cvtss_f32(_mm256_castps256_ps128(exp2_8(_mm256_set1_ps(*mx - m))));
        *sum = *sum * corr + add;
        __m256 vc = _mm256_set1_ps(corr);
        for (int d = 0; d < D8; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), vc));
    }
    *mx = m;
}

#else /* LK_NEON: the same kernels on 4-lane AdvSIMD vectors, four per 16 keys or columns */

/* s[0..6)[0..16) = q[0..6)[0..D) . kt[0..D)[0..16), kt one packed panel; with `track`, also
 * bm[r][0..4) = max(bm[r], the row's new scores) lane-wise. 24 accumulators, four loads of kt
 * and six broadcasts of q per 24 FMAs (of AArch64's 32 vector registers). */
FA_INLINE void score_6x16(const float *q, int D, const float *kt, float *s, float *bm, const int track)
{
    float32x4_t c[FA_R][4];
    UNROLL for (int r = 0; r < FA_R; r++) c[r][0] = c[r][1] = c[r][2] = c[r][3] = vdupq_n_f32(0.0f);
    for (int d = 0; d < D; d++) {
        const float *kd = kt + (size_t)d * FA_KC;
        float32x4_t k0 = vld1q_f32(kd), k1 = vld1q_f32(kd + 4), k2 = vld1q_f32(kd + 8), k3 = vld1q_f32(kd + 12);
        UNROLL for (int r = 0; r < FA_R; r++) {
            float32x4_t a = vld1q_dup_f32(q + (size_t)r * D + d);
            c[r][0] = vfmaq_f32(c[r][0], a, k0);
            c[r][1] = vfmaq_f32(c[r][1], a, k1);
            c[r][2] = vfmaq_f32(c[r][2], a, k2);
            c[r][3] = vfmaq_f32(c[r][3], a, k3);
        }
    }
    UNROLL for (int r = 0; r < FA_R; r++) {
        float *sr = s + (size_t)r * FA_KB;
        vst1q_f32(sr, c[r][0]);
        vst1q_f32(sr + 4, c[r][1]);
        vst1q_f32(sr + 8, c[r][2]);
        vst1q_f32(sr + 12, c[r][3]);
        if (track) {
            float32x4_t m = vmaxq_f32(vmaxq_f32(c[r][0], c[r][1]), vmaxq_f32(c[r][2], c[r][3]));
            vst1q_f32(bm + 8 * r, vmaxq_f32(m, vld1q_f32(bm + 8 * r)));
        }
    }
}

static void score_block(const float *q, int D, const float *kt, int rows, int nk16, float *s, float *bm, int track)
{
    for (int r = 0; r < rows; r += FA_R)
        for (int c = 0; c < nk16; c += FA_KC) {
            const float *qr = q + (size_t)r * D, *kc = kt + (size_t)c * D;
            float *sr = s + (size_t)r * FA_KB + c, *br = bm + 8 * r;
            if (track)
                score_6x16(qr, D, kc, sr, br, 1);
            else
                score_6x16(qr, D, kc, sr, br, 0);
        }
}

/* o[0..6)[0..4*nv) += p[0..6)[0..nk) . v[0..nk)[0..4*nv), nv = 2 or 4 (a constant after inlining). */
FA_INLINE void pv_6rows(const float *p, int nk, const float *v, int D8, float *o, const int nv)
{
    float32x4_t c[FA_R][4];
    UNROLL for (int r = 0; r < FA_R; r++) {
        UNROLL for (int x = 0; x < 4; x++) c[r][x] = x < nv ? vld1q_f32(o + (size_t)r * D8 + 4 * x) : vdupq_n_f32(0.0f);
    }
    for (int k = 0; k < nk; k++) {
        const float *vr = v + (size_t)k * D8;
        float32x4_t vv[4];
        UNROLL for (int x = 0; x < 4; x++) vv[x] = x < nv ? vld1q_f32(vr + 4 * x) : vdupq_n_f32(0.0f);
        UNROLL for (int r = 0; r < FA_R; r++) {
            float32x4_t a = vld1q_dup_f32(p + (size_t)r * FA_KB + k);
            UNROLL for (int x = 0; x < 4; x++) {
                if (x < nv) c[r][x] = vfmaq_f32(c[r][x], a, vv[x]);
            }
        }
    }
    UNROLL for (int r = 0; r < FA_R; r++) {
        UNROLL for (int x = 0; x < 4; x++) {
            if (x < nv) vst1q_f32(o + (size_t)r * D8 + 4 * x, c[r][x]);
        }
    }
}

static void pv_block(const float *s, int nk, const float *v, int D8, float *o, int rows)
{
    for (int r = 0; r < rows; r += FA_R)
        for (int x0 = 0; x0 < D8; x0 += 16) {
            const float *p = s + (size_t)r * FA_KB;
            float *orow = o + (size_t)r * D8 + x0;
            if (D8 - x0 >= 16)
                pv_6rows(p, nk, v + x0, D8, orow, 4);
            else
                pv_6rows(p, nk, v + x0, D8, orow, 2);
        }
}

/* 2^x lane-wise for x <= 0: exp2_8's arithmetic (FRINTN rounds to nearest even like
 * _MM_FROUND_TO_NEAREST_INT). */
FA_INLINE float32x4_t exp2_4(float32x4_t x)
{
    x = vmaxq_f32(x, vdupq_n_f32(-126.0f));
    float32x4_t n = vrndnq_f32(x);
    float32x4_t r = vmulq_f32(vsubq_f32(x, n), vdupq_n_f32(0.693147180559945309f));
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

/* softmax_row of the AVX2 version on 4 lanes; bm holds 4 lane-wise maxima. */
static void softmax_row(float *s, int nv, int nk16, const float *bm, float *mx, float *sum, float *o, int D8)
{
    if (nv <= 0) {
        memset(s, 0, sizeof(float) * (size_t)nk16);
        return;
    }
    float m;
    int c = 0;
    if (bm) {
        m = vmaxvq_f32(vld1q_f32(bm));
    } else {
        float32x4_t vm = vdupq_n_f32(-INFINITY);
        for (; c + 4 <= nv; c += 4) vm = vmaxq_f32(vm, vld1q_f32(s + c));
        m = vmaxvq_f32(vm);
        for (; c < nv; c++) m = s[c] > m ? s[c] : m;
    }
    int first = *mx == -INFINITY;
    if (!first && *mx > m) m = *mx;
    float32x4_t shift = vdupq_n_f32(m), acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    for (c = 0; c + 8 <= nv; c += 8) {
        float32x4_t e0 = exp2_4(vsubq_f32(vld1q_f32(s + c), shift));
        float32x4_t e1 = exp2_4(vsubq_f32(vld1q_f32(s + c + 4), shift));
        vst1q_f32(s + c, e0);
        vst1q_f32(s + c + 4, e1);
        acc0 = vaddq_f32(acc0, e0);
        acc1 = vaddq_f32(acc1, e1);
    }
    for (; c < nv; c += 4) { /* the tail through the same arithmetic, padded lanes dropped */
        float tmp[4] = {0};
        int n = LDM_MIN(4, nv - c);
        memcpy(tmp, s + c, sizeof(float) * (size_t)n);
        float32x4_t e = exp2_4(vsubq_f32(vld1q_f32(tmp), shift));
        static const int32_t lane[4] = {0, 1, 2, 3};
        uint32x4_t keep = vcltq_s32(vld1q_s32(lane), vdupq_n_s32(n));
        e = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(e), keep));
        vst1q_f32(tmp, e);
        memcpy(s + c, tmp, sizeof(float) * (size_t)n);
        acc0 = vaddq_f32(acc0, e);
    }
    for (c = nv; c < nk16; c++) s[c] = 0.0f;
    float add = vaddvq_f32(vaddq_f32(acc0, acc1));
    if (first) {
        *sum = add;
    } else {
        float corr = vgetq_lane_f32(exp2_4(vdupq_n_f32(*mx - m)), 0);
        *sum = *sum * corr + add;
        float32x4_t vc = vdupq_n_f32(corr);
        for (int d = 0; d < D8; d += 4) vst1q_f32(o + d, vmulq_f32(vld1q_f32(o + d), vc));
    }
    *mx = m;
}

#endif /* LK_DISPATCH / LK_NEON */

static const fa_ops ops_simd = {score_block, softmax_row, pv_block};

#ifdef LK_AVX512_KERNELS
/* ---------------------------------------------------------------- 16-lane micro-kernels (avx512) */

/* The maximum of 8 lanes, and of 16; the sum of 16: fixed orders. */
LK_BODY float hmax8_16(const v8f *v)
{
    float l[8];
    memcpy(l, v, sizeof l);
    float r = l[0];
    for (int k = 1; k < 8; k++) r = l[k] > r ? l[k] : r;
    return r;
}

LK_BODY float hmax16(const v16f *v)
{
    v8f lo = LOW8(*v), hi = HIGH8(*v);
    v8f m = SELECT(hi > lo, hi, lo);
    return hmax8_16(&m);
}

LK_BODY float hsum16(const v16f *v)
{
    v8f s8 = LOW8(*v) + HIGH8(*v);
    float l[8];
    memcpy(l, &s8, sizeof l);
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}

/* exp2_8's arithmetic on 16 lanes, in place; n = round(x) to nearest even by the 1.5 * 2^23
 * trick (exact for the clamped x in [-126, 0]), like _MM_FROUND_TO_NEAREST_INT. */
LK_BODY void exp2_16(v16f *xp)
{
    v16f x = *xp;
    x = SELECT16(x > SPLAT16(-126.0f), x, SPLAT16(-126.0f));
    v16f n = (x + SPLAT16(12582912.0f)) - SPLAT16(12582912.0f);
    v16f r = (x - n) * SPLAT16(0.693147180559945309f);
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

/* s[0..6)[0..16 np) = q[0..6)[0..D) . kt, np = 1 or 2 consecutive packed panels (a constant after
 * inlining); with `track`, bm[r][0..8) = max(bm[r], the row's new scores) folded to 8 lanes. */
LK_BODY void score16_body(const float *q, int D, const float *kt, float *s, float *bm, const int np, const int track)
{
    v16f c[FA_R][2];
    UNROLL for (int r = 0; r < FA_R; r++) c[r][0] = c[r][1] = SPLAT16(0.0f);
    const float *kt1 = kt + (size_t)D * FA_KC; /* the next panel */
    for (int d = 0; d < D; d++) {
        v16f k0, k1 = SPLAT16(0.0f);
        LOAD16(k0, kt + (size_t)d * FA_KC);
        if (np > 1) LOAD16(k1, kt1 + (size_t)d * FA_KC);
        UNROLL for (int r = 0; r < FA_R; r++) {
            v16f a = SPLAT16(q[(size_t)r * D + d]);
            c[r][0] = a * k0 + c[r][0];
            if (np > 1) c[r][1] = a * k1 + c[r][1];
        }
    }
    UNROLL for (int r = 0; r < FA_R; r++) {
        STORE16(s + (size_t)r * FA_KB, c[r][0]);
        if (np > 1) STORE16(s + (size_t)r * FA_KB + FA_KC, c[r][1]);
        if (track) {
            v16f m = np > 1 ? SELECT16(c[r][1] > c[r][0], c[r][1], c[r][0]) : c[r][0];
            v8f lo = LOW8(m), hi = HIGH8(m), b;
            LOAD(b, bm + 8 * r);
            v8f m8 = SELECT(hi > lo, hi, lo);
            STORE(bm + 8 * r, SELECT(b > m8, b, m8));
        }
    }
}

LK_BODY void score_block16_body(const float *q, int D, const float *kt, int rows, int nk16, float *s, float *bm,
                                int track)
{
    for (int r = 0; r < rows; r += FA_R)
        for (int c = 0; c < nk16; c += 2 * FA_KC) {
            const float *qr = q + (size_t)r * D, *kc = kt + (size_t)c * D;
            float *sr = s + (size_t)r * FA_KB + c, *br = bm + 8 * r;
            int two = nk16 - c >= 2 * FA_KC;
            if (two && track)
                score16_body(qr, D, kc, sr, br, 2, 1);
            else if (two)
                score16_body(qr, D, kc, sr, br, 2, 0);
            else if (track)
                score16_body(qr, D, kc, sr, br, 1, 1);
            else
                score16_body(qr, D, kc, sr, br, 1, 0);
        }
}

/* o[0..6)[0..w) += p[0..6)[0..nk) . v[0..nk)[0..w), w = 32, 16 or 8 (a constant after inlining). */
LK_BODY void pv16_body(const float *p, int nk, const float *v, int D8, float *o, const int w)
{
    v16f c[FA_R][2];
    v8f h[FA_R];
    UNROLL for (int r = 0; r < FA_R; r++) {
        const float *orow = o + (size_t)r * D8;
        c[r][0] = c[r][1] = SPLAT16(0.0f);
        h[r] = SPLAT(0.0f);
        if (w >= 16) LOAD16(c[r][0], orow);
        if (w == 32) LOAD16(c[r][1], orow + 16);
        if (w == 8) LOAD(h[r], orow);
    }
    for (int k = 0; k < nk; k++) {
        const float *vr = v + (size_t)k * D8;
        v16f v0 = SPLAT16(0.0f), v1 = SPLAT16(0.0f);
        v8f v8 = SPLAT(0.0f);
        if (w >= 16) LOAD16(v0, vr);
        if (w == 32) LOAD16(v1, vr + 16);
        if (w == 8) LOAD(v8, vr);
        UNROLL for (int r = 0; r < FA_R; r++) {
            float a = p[(size_t)r * FA_KB + k];
            if (w >= 16) c[r][0] = SPLAT16(a) * v0 + c[r][0];
            if (w == 32) c[r][1] = SPLAT16(a) * v1 + c[r][1];
            if (w == 8) h[r] = SPLAT(a) * v8 + h[r];
        }
    }
    UNROLL for (int r = 0; r < FA_R; r++) {
        float *orow = o + (size_t)r * D8;
        if (w >= 16) STORE16(orow, c[r][0]);
        if (w == 32) STORE16(orow + 16, c[r][1]);
        if (w == 8) STORE(orow, h[r]);
    }
}

/* O[0..rows) += P V over the block's nk keys, 32 output columns at a time, then 16, then 8. */
LK_BODY void pv_block16_body(const float *s, int nk, const float *v, int D8, float *o, int rows)
{
    for (int r = 0; r < rows; r += FA_R) {
        const float *p = s + (size_t)r * FA_KB;
        float *orow = o + (size_t)r * D8;
        int x0 = 0;
        for (; D8 - x0 >= 32; x0 += 32) pv16_body(p, nk, v + x0, D8, orow + x0, 32);
        if (D8 - x0 >= 16) pv16_body(p, nk, v + x0, D8, orow + x0, 16), x0 += 16;
        if (D8 - x0 >= 8) pv16_body(p, nk, v + x0, D8, orow + x0, 8);
    }
}

/* softmax_row on 16 lanes (bm: the row's 8 lane-wise maxima, as score16_body folds them). */
LK_BODY void softmax_row16_body(float *s, int nv, int nk16, const float *bm, float *mx, float *sum, float *o, int D8)
{
    if (nv <= 0) {
        memset(s, 0, sizeof(float) * (size_t)nk16);
        return;
    }
    float m;
    int c = 0;
    if (bm) {
        v8f b;
        LOAD(b, bm);
        m = hmax8_16(&b);
    } else {
        v16f vm = SPLAT16(-INFINITY);
        for (; c + 16 <= nv; c += 16) {
            v16f x;
            LOAD16(x, s + c);
            vm = SELECT16(x > vm, x, vm);
        }
        m = hmax16(&vm);
        for (; c < nv; c++) m = s[c] > m ? s[c] : m;
    }
    int first = *mx == -INFINITY;
    if (!first && *mx > m) m = *mx;
    v16f shift = SPLAT16(m), acc = SPLAT16(0.0f);
    for (c = 0; c + 16 <= nv; c += 16) {
        v16f e;
        LOAD16(e, s + c);
        e -= shift;
        exp2_16(&e);
        STORE16(s + c, e);
        acc += e;
    }
    if (c < nv) { /* the tail through the same vector arithmetic, padded lanes dropped */
        float tmp[16] = {0};
        memcpy(tmp, s + c, sizeof(float) * (size_t)(nv - c));
        v16f e;
        LOAD16(e, tmp);
        e -= shift;
        exp2_16(&e);
        const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
        e = SELECT16(lane < SPLAT16I(nv - c), e, SPLAT16(0.0f));
        STORE16(tmp, e);
        memcpy(s + c, tmp, sizeof(float) * (size_t)(nv - c));
        acc += e;
    }
    for (c = nv; c < nk16; c++) s[c] = 0.0f;
    float add = hsum16(&acc);
    if (first) {
        *sum = add;
    } else {
        v16f t = SPLAT16(*mx - m);
        exp2_16(&t);
        float corr = t[0];
        *sum = *sum * corr + add;
        int d = 0;
        for (; d + 16 <= D8; d += 16) {
            v16f x;
            LOAD16(x, o + d);
            STORE16(o + d, x * SPLAT16(corr));
        }
        if (d < D8) { /* D8 is a multiple of 8 */
            v8f x;
            LOAD(x, o + d);
            STORE(o + d, x * SPLAT(corr));
        }
    }
    *mx = m;
}

LK_INSTANCES16_VOID(score_block16,
                    (const float *q, int D, const float *kt, int rows, int nk16, float *s, float *bm, int track),
                    score_block16_body(q, D, kt, rows, nk16, s, bm, track))
LK_INSTANCES16_VOID(softmax_row16,
                    (float *s, int nv, int nk16, const float *bm, float *mx, float *sum, float *o, int D8),
                    softmax_row16_body(s, nv, nk16, bm, mx, sum, o, D8))
LK_INSTANCES16_VOID(pv_block16, (const float *s, int nk, const float *v, int D8, float *o, int rows),
                    pv_block16_body(s, nk, v, D8, o, rows))

static const fa_ops ops_avx512 = {score_block16_avx512, softmax_row16_avx512, pv_block16_avx512};
static const fa_ops ops_avx512_test = {score_block16_avx512_test, softmax_row16_avx512_test, pv_block16_avx512_test};
#define FA_OPS() LK_PICK16(&ops_avx512, &ops_avx512_test, &ops_simd)
#else
#define FA_OPS() (&ops_simd)
#endif

/* ---------------------------------------------------------------- one unit */

FA_TARGET static void fused_unit(const fa_job *j, long unit, fa_scratch *w)
{
    int D = j->D, D8 = j->D8;
    int qt = (int)(unit % j->q_tiles);
    long bh = unit / j->q_tiles;
    int b = (int)(bh / j->H), h = (int)(bh % j->H);
    int t0 = qt * FA_TQ, nq = LDM_MIN(FA_TQ, j->Tq - t0);
    int rows = round_up(nq, FA_R);
    const float *qb = j->q.p + (long)b * j->q.sb + (long)h * j->q.sh;
    const float *kp = j->kp + (size_t)bh * j->head_k, *vp = j->vp + (size_t)bh * j->head_v;
    pack_queries(j, qb, t0, nq, w->q);
    memset(w->o, 0, sizeof(float) * (size_t)rows * D8);
    for (int i = 0; i < rows; i++) w->mx[i] = -INFINITY, w->sum[i] = 0.0f;
    int n_keys = j->causal ? LDM_MIN(j->Tk, t0 + nq) : j->Tk;
    for (int s0 = 0; s0 < n_keys; s0 += FA_KB) {
        int nk = LDM_MIN(FA_KB, n_keys - s0), nk16 = round_up(nk, FA_KC);
        const float *kt = kp + (size_t)s0 * D, *v = vp + (size_t)s0 * D8; /* s0 is a multiple of FA_KC */
        /* the kernel's maxima are those of the row only when every computed score is visible */
        int track = !j->causal && nk == nk16;
        if (track)
            for (int i = 0; i < rows * 8; i++) w->bm[i] = -INFINITY;
        j->ops->score(w->q, D, kt, rows, nk16, w->s, w->bm, track);
        for (int i = 0; i < rows; i++) {
            /* causal: query t0 + i sees keys s <= t0 + i, i.e. the first t0 + i + 1 - s0 here */
            int nv = i >= nq ? 0 : j->causal ? LDM_MAX(0, LDM_MIN(nk, t0 + i + 1 - s0)) : nk;
            j->ops->softmax(w->s + (size_t)i * FA_KB, nv, nk16, track ? w->bm + 8 * i : NULL, &w->mx[i], &w->sum[i],
                            w->o + (size_t)i * D8, D8);
        }
        j->ops->pv(w->s, nk16, v, D8, w->o, rows);
    }
    float *ob = j->out.p + (long)b * j->out.sb + (long)h * j->out.sh;
    for (int i = 0; i < nq; i++) {
        float inv = 1.0f / w->sum[i];
        float *orow = ob + (long)(t0 + i) * j->out.st;
        for (int d = 0; d < D; d++) orow[(long)d * j->out.sd] = w->o[(size_t)i * D8 + d] * inv;
    }
}

static void fused_task(void *arg, int task)
{
    fa_job *j = arg;
    fa_scratch w = scratch_at(j->scratch + (size_t)task * j->per_task, j->D, j->D8);
    for (;;) {
        long unit = atomic_fetch_add_explicit(&j->next_unit, 1, memory_order_relaxed);
        if (unit >= j->units) break;
        fused_unit(j, unit, &w);
    }
}

int lk_attention_fused_available(void) { return FA_AVAILABLE(); }

ldm_status lk_attention_fused(const lctx *c, int B, int H, int Tq, int Tk, int D, lk_view q, lk_view k, lk_view v,
                              lk_view out, float scale, int causal)
{
    if (!FA_AVAILABLE()) return ldm_fail(LDM_ERR_UNSUPPORTED, "attention: the " FA_NAME " kernels do not run here (%s)", lk_cpu_kernels());
    if (B <= 0 || H <= 0 || Tq <= 0 || D <= 0 || Tk <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "attention: empty problem (B %d, H %d, Tq %d, Tk %d, D %d)", B, H, Tq,
                        Tk, D);
    fa_job j = {.H = H, .Tq = Tq, .Tk = Tk, .D = D, .D8 = round_up(D, 8), .Tk16 = round_up(Tk, FA_KC),
                .causal = causal, .scale = scale, .q = q, .k = k, .v = v, .out = out, .ops = FA_OPS()};
    j.q_tiles = (Tq + FA_TQ - 1) / FA_TQ;
    j.units = (long)B * H * j.q_tiles;
    atomic_init(&j.next_unit, 0);
    lpool *pool = lk_pool_for_flops(c, 4.0 * B * H * Tq * Tk * D); /* the two products */
    int tasks = pool ? (int)LDM_MIN((long)lpool_threads(pool), j.units) : 1;
    j.head_k = ((size_t)j.Tk16 * D + 15) & ~(size_t)15;
    j.head_v = (size_t)j.Tk16 * j.D8;
    j.per_task = (scratch_floats(D, j.D8) + 15) & ~(size_t)15;
    size_t packed = ((size_t)B * H) * (j.head_k + j.head_v), total, bytes;
    if (ldm_add_size(packed, j.per_task * (size_t)tasks, &total) || ldm_mul_size(total, sizeof(float), &bytes))
        return ldm_fail(LDM_ERR_LIMIT, "attention: scratch size overflow (%d x %d x %d)", B * H, Tk, D);
    float *buf = lk_scratch_get(bytes);
    if (!buf) return ldm_fail_context(ldm_alloc_failure_status(), "attention scratch: ");
    j.kp = buf;
    j.vp = j.kp + (size_t)B * H * j.head_k;
    j.scratch = j.vp + (size_t)B * H * j.head_v;
    lpool_run(pool, B * H, pack_head, &j);
    lpool_run(pool, tasks, fused_task, &j);
    lk_scratch_put(buf, bytes);
    return LDM_OK;
}

#else /* no vector path: lk_attention always takes the BLAS version */

int lk_attention_fused_available(void) { return 0; }

ldm_status lk_attention_fused(const lctx *c, int B, int H, int Tq, int Tk, int D, lk_view q, lk_view k, lk_view v,
                              lk_view out, float scale, int causal)
{
    return ldm_fail(LDM_ERR_UNSUPPORTED, "attention: no fused kernel for this CPU");
}

#endif
