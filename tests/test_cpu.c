/* test_cpu.c - the kernels' run-time dispatch (lib/kernels/cpu.c): the kernel family it reports
 * agrees with the CPU features it reads, LDM_CPU forces a family (or, for one this CPU or build
 * lacks and for unknown names, the generic kernels, and says so), and every family this CPU runs
 * matches the naive references on the hot kernels (attention, Winograd, GroupNorm, LayerNorm,
 * activations, softmax, float16 widening), bit for bit across thread counts. A family the CPU
 * lacks prints "SKIPPED: family NAME ...". Prints the default family, so a test log says which
 * kernels the other suites ran.
 *
 * The avx512 family's 16-lane kernels (simd16.h) are checked twice: their AVX2-compiled test
 * instances against the references with awkward shapes on any CPU with AVX2, FMA and F16C, and,
 * on a CPU with AVX-512 F/BW/VL/DQ, the AVX-512 instances against the references and bit for bit
 * against the test instances (else "SKIPPED: avx512 ... (this CPU has no AVX-512)").
 *
 * Also the model parameters of issue #15: ldm_model_params.cpu_kernels (a family by name, held
 * process-wide while the model lives; requests the CPU or build cannot honour, or that conflict
 * with live models, are errors) and ldm_model_params.compute = LDM_COMPUTE_BF16 (refused with
 * LDM_ERR_UNSUPPORTED naming avx512_bf16, or saying its kernels are not written). */
#include <check.h>

#include "kernels/kernels.h"
#include "kernels/simd.h"
#include "kernels/simd16.h"
#include "support/ck_pools.h"
#include "support/ck_run.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every family name any build knows; extend with new families. */
static const char *const all_families[] = {"generic", "avx2", "avx2+fma", "neon", "avx512"};
#define N_FAMILIES (sizeof all_families / sizeof all_families[0])

static void force(const char *v)
{
    if (v)
        setenv("LDM_CPU", v, 1);
    else
        unsetenv("LDM_CPU");
    lk_cpu_reselect();
}

START_TEST(reported_family_matches_features)
{
    force(NULL);
    const char *k = lk_cpu_kernels();
    printf("cpu: kernels %s\n%s\n", k, ldm_cpu_info());
    ck_assert_ptr_nonnull(k);
    ck_assert_str_eq(k, lk_cpu_kernels()); /* cached answers stay the same */
#ifdef LK_DISPATCH
    if (lk_cpu_family_supported("avx512"))
        ck_assert_str_eq(k, "avx512");
    else if (lk_cpu_family_supported("avx2+fma"))
        ck_assert_str_eq(k, "avx2+fma");
    else if (lk_cpu_family_supported("avx2"))
        ck_assert_str_eq(k, "avx2");
    else
        ck_assert_str_eq(k, "generic");
    ck_assert_int_eq(lk_cpu_has_avx2_fma(), !strcmp(k, "avx2+fma") || !strcmp(k, "avx512"));
#elif defined(LK_NEON)
    ck_assert_str_eq(k, "neon"); /* AdvSIMD is part of every aarch64 CPU */
    ck_assert(lk_cpu_has_neon());
#else
    ck_assert_str_eq(k, "generic");
#endif
    ck_assert(lk_cpu_family_supported("generic"));
    ck_assert_ptr_nonnull(strstr(ldm_cpu_info(), "(auto)"));
    force("auto");
    ck_assert_str_eq(lk_cpu_kernels(), k);
}
END_TEST

START_TEST(forced_family)
{
    force("generic");
    ck_assert_str_eq(lk_cpu_kernels(), "generic");
    ck_assert_ptr_nonnull(strstr(ldm_cpu_info(), "kernels: generic (LDM_CPU=generic)"));
#ifdef LK_DISPATCH
    ck_assert(!lk_cpu_has_avx2() && !lk_cpu_has_avx2_fma() && !lk_cpu_has_f16c());
#endif
#ifdef LK_NEON
    ck_assert(!lk_cpu_has_neon());
#endif
    ck_assert(!lk_attention_fused_available());
    /* unknown names run the generic kernels, and ldm_cpu_info says why; nothing is printed */
    force("sse9");
    ck_assert_str_eq(lk_cpu_kernels(), "generic");
    ck_assert_ptr_nonnull(strstr(ldm_cpu_info(), "LDM_CPU=sse9: unknown family, generic runs"));
    force("avx512_bf16"); /* planned, not written */
    ck_assert_str_eq(lk_cpu_kernels(), "generic");
    ck_assert_ptr_nonnull(strstr(ldm_cpu_info(), "LDM_CPU=avx512_bf16: no avx512_bf16 kernels are written yet"));
    /* a family of another architecture, or one this CPU lacks: generic too */
    for (size_t i = 0; i < N_FAMILIES; i++) {
        force(all_families[i]);
        if (lk_cpu_family_supported(all_families[i])) {
            ck_assert_str_eq(lk_cpu_kernels(), all_families[i]);
        } else {
            ck_assert_str_eq(lk_cpu_kernels(), "generic");
            ck_assert_ptr_nonnull(strstr(ldm_cpu_info(), "generic runs"));
        }
    }
    force(NULL);
}
END_TEST

/* ---- every family against the references */

static float *rnd(size_t n, uint32_t seed, float scale)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = scale * ((float)(seed >> 8) / 16777216.0f * 2.0f - 1.0f);
    }
    return p;
}

/* max |got - ref| <= tol * max(1, max |ref|) */
static void close_to(const float *got, const float *ref, size_t n, double tol, const char *fam, const char *what)
{
    size_t worst;
    double mx, err = ck_max_error(got, ref, n, &worst, &mx);
    mx = fmax(mx, 1.0);
    ck_assert_msg(err <= tol * mx, "%s (%s): max error %.3g at %zu (got %.9g, ref %.9g), allowed %.3g", what, fam, err,
                  worst, n ? got[worst] : 0.0, n ? ref[worst] : 0.0, tol * mx);
}

/* Runs the statements (writing y, with ctx) under each thread context: close to ref, and identical across contexts. */
#define ACROSS_CTX(n, ref, tol, fam, what, ...)                                                    \
    do {                                                                                           \
        float *first_ = NULL;                                                                      \
        for (int c = 0; c < N_CTX; c++) {                                                          \
            const lctx *ctx = &ctxs[c];                                                            \
            float *y = malloc(sizeof(float) * (n));                                                \
            for (size_t i_ = 0; i_ < (n); i_++) y[i_] = NAN;                                       \
            __VA_ARGS__;                                                                           \
            close_to(y, ref, n, tol, fam, what);                                                   \
            if (first_) {                                                                          \
                ck_assert_msg(!memcmp(y, first_, sizeof(float) * (n)), "%s (%s): differs by threads", what, fam); \
                free(y);                                                                           \
            } else                                                                                 \
                first_ = y;                                                                        \
        }                                                                                          \
        free(first_);                                                                              \
    } while (0)

static void check_attention(const char *fam, int B, int H, int T, int S, int D, int causal)
{
    size_t nq = (size_t)B * H * T * D, nk = (size_t)B * H * S * D;
    float *q = rnd(nq, 1, 1), *k = rnd(nk, 2, 1), *v = rnd(nk, 3, 1), *ref = malloc(sizeof(float) * nq);
    lk_view vq = {q, (long)H * T * D, (long)T * D, D, 1}, vk = {k, (long)H * S * D, (long)S * D, D, 1};
    lk_view vv = {v, (long)H * S * D, (long)S * D, D, 1}, vr = {ref, (long)H * T * D, (long)T * D, D, 1};
    float scale = 1.0f / sqrtf((float)D);
    lk_ref_attention(B, H, T, S, D, vq, vk, vv, vr, scale, causal);
    ACROSS_CTX(nq, ref, 3e-6 * sqrt(D + 1.0), fam, causal ? "attention (causal)" : "attention", {
        lk_view vo = {y, (long)H * T * D, (long)T * D, D, 1};
        ck_assert_int_eq(lk_attention(ctx, B, H, T, S, D, vq, vk, vv, vo, scale, causal), LDM_OK);
    });
    free(q), free(k), free(v), free(ref);
}

static void check_winograd(const char *fam, int m, int IC, int H, int W, int OC)
{
    lk_conv2d_shape s = {2, IC, H, W, OC, 3, 3, 1, 1, 1, 1, 1};
    size_t nx = (size_t)2 * IC * H * W, nw = (size_t)OC * IC * 9, ny = (size_t)2 * OC * H * W;
    float *x = rnd(nx, 4, 1), *w = rnd(nw, 5, 1), *b = rnd((size_t)OC, 6, 1), *ref = malloc(sizeof(float) * ny);
    lk_ref_conv2d(&s, x, w, b, ref);
    ACROSS_CTX(ny, ref, 2e-6 * sqrt(9.0 * IC + 1), fam, m == 4 ? "winograd F(4,3)" : "winograd F(2,3)",
               ck_assert_int_eq(lk_conv3x3_winograd(ctx, &s, x, lk_wt_f32(w), b, y, m), LDM_OK));
    free(x), free(w), free(b), free(ref);
}

/* GroupNorm (B, C, HW, G) and LayerNorm (rows x dim) with and without their affine parameters
 * (affine 0: neither, else both). */
static void check_norms_shape(const char *fam, int B, int C, int HW, int G, int rows, int dim, int affine)
{
    size_t n = LDM_MAX((size_t)B * C * HW, (size_t)rows * dim);
    float *x = rnd(n, 7, 2), *g = affine ? rnd((size_t)C, 8, 1) : NULL, *be = affine ? rnd((size_t)C, 9, 1) : NULL;
    float *ref = malloc(sizeof(float) * n), *ref_silu = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] += 0.5f;
    size_t ng = (size_t)B * C * HW;
    lk_ref_group_norm(x, B, C, HW, G, 1e-5f, g, be, ref);
    for (size_t i = 0; i < ng; i++) ref_silu[i] = (float)(ref[i] / (1.0 + exp(-(double)ref[i])));
    ACROSS_CTX(ng, ref, 4e-6, fam, "group_norm", lk_group_norm(ctx, x, B, C, HW, G, 1e-5f, g, be, y));
    ACROSS_CTX(ng, ref_silu, 4e-6, fam, "group_norm_silu", lk_group_norm_silu(ctx, x, B, C, HW, G, 1e-5f, g, be, y));
    float *lg = affine ? rnd((size_t)dim, 11, 1) : NULL, *lb = affine ? rnd((size_t)dim, 12, 1) : NULL;
    lk_ref_layer_norm(x, rows, dim, 1e-5f, lg, lb, ref);
    ACROSS_CTX((size_t)rows * dim, ref, 4e-6, fam, "layer_norm", lk_layer_norm(ctx, x, rows, dim, 1e-5f, lg, lb, y));
    free(x), free(g), free(be), free(lg), free(lb), free(ref), free(ref_silu);
}

static void check_norms(const char *fam) { check_norms_shape(fam, 2, 64, 300, 32, 37, 77, 1); }

/* GELU, SiLU, QuickGELU over n values and softmax over rows x cols (n >= rows * cols). */
static void check_activations_shape(const char *fam, size_t n, int rows, int cols)
{
    float *x = rnd(n, 10, 6), *ref = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) ref[i] = (float)(x[i] * 0.5 * (1.0 + erf(x[i] / sqrt(2.0))));
    ACROSS_CTX(n, ref, 2e-6, fam, "gelu", memcpy(y, x, sizeof(float) * n); lk_gelu_ctx(ctx, y, n));
    for (size_t i = 0; i < n; i++) ref[i] = (float)(x[i] / (1.0 + exp(-(double)x[i])));
    ACROSS_CTX(n, ref, 2e-6, fam, "silu", memcpy(y, x, sizeof(float) * n); lk_silu_ctx(ctx, y, n));
    for (size_t i = 0; i < n; i++) ref[i] = (float)(x[i] / (1.0 + exp(-1.702 * x[i])));
    ACROSS_CTX(n, ref, 2e-6, fam, "quick_gelu", memcpy(y, x, sizeof(float) * n); lk_quick_gelu_ctx(ctx, y, n));
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        double mx = -INFINITY, sum = 0;
        for (int c = 0; c < cols; c++) mx = fmax(mx, xr[c]);
        for (int c = 0; c < cols; c++) sum += exp(xr[c] - mx);
        for (int c = 0; c < cols; c++) ref[(size_t)r * cols + c] = (float)(exp(xr[c] - mx) / sum);
    }
    ACROSS_CTX((size_t)rows * cols, ref, 1e-6, fam, "softmax",
               memcpy(y, x, sizeof(float) * rows * cols); lk_softmax_rows_ctx(ctx, y, rows, cols));
    free(x), free(ref);
}

static void check_activations(const char *fam) { check_activations_shape(fam, 16411, 41, 397); /* tails */ }

/* Every half value, widened at every offset of a block: exact (NaNs stay NaN). */
static void check_half(const char *fam)
{
    size_t n = 65536 + 3;
    unsigned char *raw = malloc(2 * n + 1);
    float *got = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        uint16_t h = (uint16_t)i;
        memcpy(raw + 1 + 2 * i, &h, 2); /* odd address: any alignment */
    }
    lk_half_to_float(raw + 1, n, got);
    for (size_t i = 0; i < n; i++) {
        uint16_t h = (uint16_t)i;
        int e = (h >> 10) & 0x1f, man = h & 0x3ff;
        double want = e == 0 ? ldexp(man, -24) : e == 31 ? (man ? NAN : INFINITY) : ldexp(1024 + man, e - 25);
        if (h & 0x8000) want = -want;
        if (isnan(want))
            ck_assert_msg(isnan(got[i]), "half %04x (%s): got %g", h, fam, got[i]);
        else
            ck_assert_msg(got[i] == (float)want && !signbit(got[i]) == !signbit(want), "half %04x (%s): got %.9g, want %.9g",
                          h, fam, got[i], want);
    }
    free(raw), free(got);
}

START_TEST(each_family_matches_references)
{
    for (size_t f = 0; f < N_FAMILIES; f++) {
        const char *fam = all_families[f];
        if (!lk_cpu_family_supported(fam)) {
            printf("SKIPPED: family %s (not on this CPU or not built for this architecture)\n", fam);
            continue;
        }
        force(fam);
        ck_assert_str_eq(lk_cpu_kernels(), fam);
        check_attention(fam, 2, 3, 37, 37, 16, 0);
        check_attention(fam, 1, 2, 60, 77, 40, 0); /* SD head size, Tk not a multiple of 16 */
        check_attention(fam, 1, 2, 50, 50, 80, 1);
        check_attention(fam, 1, 1, 300, 300, 8, 0); /* more than one block of keys and queries */
        check_winograd(fam, 4, 19, 14, 13, 21);
        check_winograd(fam, 2, 19, 14, 13, 21);
        check_winograd(fam, 4, 32, 16, 16, 16);
        check_norms(fam);
        check_activations(fam);
        check_half(fam);
        printf("cpu: family %s matches the references\n", fam);
    }
    force(NULL);
}
END_TEST

/* ---- the avx512 family's 16-lane kernels (simd16.h) */

#ifdef LK_AVX512_KERNELS
/* stmt ran at least one 16-lane test instance (when they are asked for) */
#define RAN16(what, stmt)                                                                          \
    do {                                                                                           \
        long before_ = lk_cpu_avx512_test_calls();                                                 \
        stmt;                                                                                      \
        if (lk_cpu_avx512_mode() == 2)                                                             \
            ck_assert_msg(lk_cpu_avx512_test_calls() > before_, "%s: no 16-lane test instance ran", what); \
    } while (0)

/* The 16-lane kernels against the references, with the shapes that exercise their edges. */
static void check_16lane(const char *fam)
{
    /* attention: keys past a multiple of 32 (one 16-key panel left) and of 16 (padding), several
     * key blocks, output widths 8 to 160 (32-, 16- and 8-column micro-kernels), row blocks cut
     * short, causal masks */
    RAN16("attention", check_attention(fam, 2, 3, 37, 37, 16, 0));
    RAN16("attention", check_attention(fam, 1, 2, 60, 77, 40, 0));
    RAN16("attention", check_attention(fam, 1, 2, 50, 50, 80, 1));
    RAN16("attention", check_attention(fam, 1, 1, 300, 300, 8, 0));
    RAN16("attention", check_attention(fam, 1, 2, 97, 290, 24, 0));
    RAN16("attention", check_attention(fam, 1, 1, 200, 530, 160, 1));
    RAN16("attention", check_attention(fam, 1, 1, 5, 3, 3, 1));
    RAN16("attention", check_attention(fam, 1, 2, 100, 48, 64, 0));
    /* norms: groups and rows shorter than a vector, of a vector plus a tail, and longer */
    RAN16("norms", check_norms(fam));
    RAN16("norms", check_norms_shape(fam, 1, 6, 7, 3, 5, 13, 0));
    RAN16("norms", check_norms_shape(fam, 3, 8, 17, 2, 9, 16, 1));
    RAN16("norms", check_norms_shape(fam, 1, 32, 4100, 8, 3, 768, 0));
    /* activations and softmax: tails, a pool split, rows shorter than a vector */
    RAN16("activations", check_activations(fam));
    RAN16("activations", check_activations_shape(fam, 40000, 33, 16));
    RAN16("activations", check_activations_shape(fam, 21, 7, 3));
    /* float16 widening: every half value at an odd address, a tail of 3 */
    RAN16("half", check_half(fam));
}

/* Outputs of the 16-lane kernels on fixed inputs, serial (ctx 0), as one malloc'ed buffer; the
 * last N_HALVES16 are widened halves (NaN among them), the others finite. */
#define N_HALVES16 (65536 + 5)
static float *outputs16(size_t *n_out)
{
    int B = 1, H = 2, T = 97, S = 290, D = 40, C = 32, HW = 333, G = 8, dim = 77, rows = 13;
    size_t nq = (size_t)B * H * T * D, nk = (size_t)B * H * S * D, ng = (size_t)C * HW, nl = (size_t)rows * dim;
    size_t nh = N_HALVES16, n = 2 * nq + 2 * ng + nl + 3 * ng + nh;
    float *q = rnd(nq, 21, 1), *k = rnd(nk, 22, 1), *v = rnd(nk, 23, 1), *x = rnd(ng, 24, 5);
    float *gamma = rnd((size_t)C, 25, 1), *beta = rnd((size_t)C, 26, 1), *out = malloc(sizeof(float) * n), *o = out;
    lk_view vq = {q, (long)H * T * D, (long)T * D, D, 1}, vk = {k, (long)H * S * D, (long)S * D, D, 1};
    lk_view vv = {v, (long)H * S * D, (long)S * D, D, 1};
    for (int causal = 0; causal < 2; causal++, o += nq) {
        lk_view vo = {o, (long)H * T * D, (long)T * D, D, 1};
        ck_assert_int_eq(lk_attention(&ctxs[0], B, H, T, S, D, vq, vk, vv, vo, 0.3f, causal), LDM_OK);
    }
    lk_group_norm(&ctxs[0], x, 1, C, HW, G, 1e-5f, gamma, beta, o), o += ng;
    lk_group_norm_silu(&ctxs[0], x, 1, C, HW, G, 1e-5f, gamma, beta, o), o += ng;
    lk_layer_norm(&ctxs[0], x, rows, dim, 1e-5f, NULL, NULL, o), o += nl;
    memcpy(o, x, sizeof(float) * ng), lk_gelu(o, ng), o += ng;
    memcpy(o, x, sizeof(float) * ng), lk_quick_gelu(o, ng), o += ng;
    memcpy(o, x, sizeof(float) * ng), lk_softmax_rows(o, C, HW), o += ng;
    uint16_t *halves = malloc(2 * nh);
    for (size_t i = 0; i < nh; i++) halves[i] = (uint16_t)(i * 40503u);
    lk_half_to_float(halves, nh, o), o += nh;
    free(halves);
    ck_assert_uint_eq((size_t)(o - out), n);
    free(q), free(k), free(v), free(x), free(gamma), free(beta);
    *n_out = n;
    return out;
}
#endif

START_TEST(avx512_test_instances_match_references)
{
#ifdef LK_AVX512_KERNELS
    force("avx2+fma");
    if (!lk_cpu_family_supported("avx2+fma") || !lk_cpu_has_f16c()) {
        printf("SKIPPED: avx512 test instances (this CPU lacks AVX2, FMA or F16C)\n");
        force(NULL);
        return;
    }
    ck_assert_int_eq(lk_cpu_avx512_mode(), 0);
    lk_cpu_avx512_test_instances(1);
    ck_assert_int_eq(lk_cpu_avx512_mode(), 2);
    check_16lane("avx512 test instances");
    size_t n; /* the helper the AVX-512 test compares with runs here too */
    float *y = outputs16(&n);
    for (size_t i = 0; i + N_HALVES16 < n; i++) ck_assert_msg(isfinite(y[i]), "outputs16: %zu is %g", i, y[i]);
    free(y);
    force("generic"); /* only under avx2+fma */
    ck_assert_int_eq(lk_cpu_avx512_mode(), 0);
    lk_cpu_avx512_test_instances(0);
    force(NULL);
    printf("cpu: the avx512 kernels' AVX2-compiled test instances match the references\n");
#else
    printf("SKIPPED: avx512 test instances (not built for this architecture or compiler)\n");
#endif
}
END_TEST

START_TEST(avx512_family_matches_references)
{
#ifdef LK_AVX512_KERNELS
    if (!lk_cpu_family_supported("avx512")) {
        printf("SKIPPED: avx512 family kernels, their AVX-512 instances against the references and against their "
               "AVX2-compiled test instances (this CPU has no AVX-512 F/BW/VL/DQ: %s)\n", ldm_cpu_info());
        return;
    }
    force("avx512");
    ck_assert_int_eq(lk_cpu_avx512_mode(), 1);
    check_16lane("avx512");
    size_t n512, ntest;
    float *y512 = outputs16(&n512);
    force("avx2+fma");
    lk_cpu_avx512_test_instances(1);
    float *ytest = outputs16(&ntest);
    lk_cpu_avx512_test_instances(0);
    ck_assert_uint_eq(n512, ntest);
    for (size_t i = 0; i < n512; i++)
        ck_assert_msg(!memcmp(&y512[i], &ytest[i], sizeof(float)),
                      "avx512 instance and its AVX2-compiled test instance differ at %zu: %.9g vs %.9g", i, y512[i],
                      ytest[i]);
    free(y512), free(ytest);
    force(NULL);
    printf("cpu: family avx512 matches the references and its test instances bit for bit\n");
#else
    printf("SKIPPED: avx512 family (not built for this architecture or compiler)\n");
#endif
}
END_TEST

/* ---- ldm_model_params.cpu_kernels and .compute (issue #15) */

static ldm_status load_with(const char *family, int compute, ldm_model **m)
{
    ldm_model_params p;
    ldm_model_params_init(&p);
    p.n_threads = 2;
    p.cpu_kernels = family;
    p.compute = compute;
    return ldm_model_load_builtin("demo", 7, &p, m);
}

/* The best family of this CPU other than generic, NULL when there is none. */
static const char *best_simd_family(void)
{
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (strcmp(all_families[i], "generic") && lk_cpu_family_supported(all_families[i])) return all_families[i];
    return NULL;
}

/* The demo model's decoder on a fixed latent, as a malloc'ed copy. */
static float *decode(ldm_model *m, size_t *n)
{
    int64_t shape[4] = {1, 3, 16, 16};
    ldm_tensor *z = NULL, *img = NULL;
    ck_assert_int_eq(ldm_tensor_create(LDM_F32, 4, shape, &z), LDM_OK);
    ck_assert_int_eq(ldm_randn(5, 0, z), LDM_OK);
    ck_assert_int_eq(ldm_model_decode_latent(m, z, &img), LDM_OK);
    *n = (size_t)ldm_tensor_numel(img);
    float *out = malloc(sizeof(float) * *n);
    memcpy(out, ldm_tensor_data(img), sizeof(float) * *n);
    ldm_tensor_free(z), ldm_tensor_free(img);
    return out;
}

START_TEST(model_requests_family)
{
    force(NULL);
    const char *best = best_simd_family(), *auto_family = lk_cpu_kernels();
    ldm_model *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    ck_assert_int_eq(load_with("generic", 0, &a), LDM_OK);
    ck_assert_str_eq(lk_cpu_kernels(), "generic");
    ck_assert_ptr_nonnull(strstr(ldm_cpu_info(), "kernels: generic (ldm_model_params.cpu_kernels=generic"));
    size_t n_generic, n_auto;
    float *img_generic = decode(a, &n_generic);
    /* another model without a request runs (and holds) the same family */
    ck_assert_int_eq(load_with("auto", 0, &b), LDM_OK);
    ck_assert_str_eq(lk_cpu_kernels(), "generic");
    ck_assert_int_eq(load_with("generic", 0, &d), LDM_OK);
    if (best) {
        /* the family is process-wide: a different request while models live is refused, naming it */
        ck_assert_int_eq(load_with(best, 0, &c), LDM_ERR_UNSUPPORTED);
        ck_assert_ptr_null(c);
        ck_assert_ptr_nonnull(strstr(ldm_last_error(), "process-wide"));
        ck_assert_ptr_nonnull(strstr(ldm_last_error(), "use \"generic\""));
        ck_assert_str_eq(lk_cpu_kernels(), "generic");
    } else {
        printf("SKIPPED: conflicting request (this CPU runs only the generic family)\n");
    }
    ldm_model_free(a), ldm_model_free(d);
    ck_assert_str_eq(lk_cpu_kernels(), "generic"); /* b still holds it */
    ldm_model_free(b);
    /* nothing holds it: the next use chooses from LDM_CPU (unset: the CPU's best) again */
    ck_assert_str_eq(lk_cpu_kernels(), auto_family);
    ck_assert_ptr_nonnull(strstr(ldm_cpu_info(), "(auto)"));
    if (best) {
        /* a model's request wins over LDM_CPU while it lives */
        setenv("LDM_CPU", "generic", 1);
        lk_cpu_reselect();
        ck_assert_int_eq(load_with(best, 0, &c), LDM_OK);
        ck_assert_str_eq(lk_cpu_kernels(), best);
        float *img_simd = decode(c, &n_auto);
        ck_assert_uint_eq(n_auto, n_generic);
        close_to(img_simd, img_generic, n_generic, 1e-4, best, "demo decoder, requested family vs generic");
        free(img_simd);
        ldm_model_free(c);
        ck_assert_str_eq(lk_cpu_kernels(), "generic"); /* LDM_CPU again */
    }
    free(img_generic);
    force(NULL);
}
END_TEST

START_TEST(model_request_errors)
{
    force(NULL);
    ldm_model *m = NULL;
    ck_assert_int_eq(load_with("sse9", 0, &m), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "unknown kernel family"));
    ck_assert_int_eq(load_with("avx512_bf16", 0, &m), LDM_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "no avx512_bf16 kernels are written yet"));
#ifdef LK_AVX512_KERNELS
    if (!lk_cpu_family_supported("avx512")) { /* named by what the CPU lacks */
        ck_assert_int_eq(load_with("avx512", 0, &m), LDM_ERR_UNSUPPORTED);
        ck_assert_ptr_nonnull(strstr(ldm_last_error(), "this CPU lacks avx512"));
    }
#endif
    for (size_t i = 0; i < N_FAMILIES; i++) {
        if (lk_cpu_family_supported(all_families[i])) continue;
        ck_assert_int_eq(load_with(all_families[i], 0, &m), LDM_ERR_UNSUPPORTED);
        ck_assert_ptr_null(m);
        ck_assert_msg(strstr(ldm_last_error(), "not built for this architecture") || strstr(ldm_last_error(), "this CPU lacks"),
                      "%s: %s", all_families[i], ldm_last_error());
    }
    /* failed requests hold nothing: any family can still be asked for */
    ck_assert_int_eq(load_with("generic", 0, &m), LDM_OK);
    ck_assert_str_eq(lk_cpu_kernels(), "generic");
    ldm_model_free(m);
    ck_assert_int_eq(load_with(NULL, 0, &m), LDM_OK); /* NULL and "" are "auto" */
    ldm_model_free(m);
    ck_assert_int_eq(load_with("", 0, &m), LDM_OK);
    ldm_model_free(m);
    /* a struct from a header before these fields: whatever lies past its size is not read */
    ldm_model_params p;
    memset(&p, 0, sizeof p);
    ldm_model_params_init_size(&p, offsetof(ldm_model_params, cpu_kernels));
    p.cpu_kernels = "sse9";
    p.compute = 99;
    ck_assert_int_eq(ldm_model_load_builtin("demo", 7, &p, &m), LDM_OK);
    ldm_model_free(m);
    force(NULL);
}
END_TEST

START_TEST(bf16_compute_is_refused)
{
    ldm_model *m = NULL;
    int has_bf16 = strstr(ldm_cpu_info(), "avx512_bf16") != NULL;
    ck_assert_int_eq(load_with(NULL, LDM_COMPUTE_BF16, &m), LDM_ERR_UNSUPPORTED);
    ck_assert_ptr_null(m);
    if (!has_bf16) {
        ck_assert_ptr_nonnull(strstr(ldm_last_error(), "needs a CPU with avx512_bf16"));
        ck_assert_ptr_nonnull(strstr(ldm_last_error(), "this CPU has:"));
    }
    /* on a CPU with avx512_bf16 it is still refused: the kernels are not written */
    lk_cpu_pretend_bf16(1);
    ck_assert_ptr_nonnull(strstr(ldm_cpu_info(), "avx512f avx512_bf16"));
    ck_assert_int_eq(load_with(NULL, LDM_COMPUTE_BF16, &m), LDM_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "bf16 kernels are not written yet"));
    lk_cpu_pretend_bf16(0);
    ck_assert_int_eq(load_with(NULL, 7, &m), LDM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(ldm_last_error(), "ldm_model_params.compute: unknown value 7"));
    ck_assert_int_eq(load_with(NULL, LDM_COMPUTE_F32, &m), LDM_OK);
    ldm_model_free(m);
}
END_TEST

static Suite *cpu_suite(void)
{
    Suite *s = suite_create("cpu");
    TCase *tc = tcase_create("dispatch");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup_pools, teardown_pools);
    tcase_add_test(tc, reported_family_matches_features);
    tcase_add_test(tc, forced_family);
    tcase_add_test(tc, each_family_matches_references);
    tcase_add_test(tc, avx512_test_instances_match_references);
    tcase_add_test(tc, avx512_family_matches_references);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("model parameters");
    tcase_set_timeout(tm, 120);
    tcase_add_test(tm, model_requests_family);
    tcase_add_test(tm, model_request_errors);
    tcase_add_test(tm, bf16_compute_is_refused);
    suite_add_tcase(s, tm);
    return s;
}

int main(void) { return ck_run_suite(cpu_suite()); }
