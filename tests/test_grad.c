/* test_grad.c - the backward kernels of lib/train (grad.h), three ways:
 *  1. each naive reference (lg_ref_*) against central finite differences of a forward written
 *     here in double, on small shapes: L = sum(r * y) for a random r, every input and parameter
 *     element perturbed by +-h; the analytic gradient of L is the backward with dy = r. The
 *     double forwards are first checked against the library's own forward kernels, so the
 *     gradients are those of what the networks compute (e.g. which half of GEGLU is the gate);
 *  2. each fast path against its reference on random shapes (odd sizes, batch > 1);
 *  3. the fast paths with no pool, 2 and 3 threads: bit-identical. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/ctx.h"
#include "kernels/kernels.h"
#include "support/ck_pools.h"
#define CK_RAND_SEED 0x2545F4914F6CDD1Dull
#include "support/ck_rand.h"
#include "support/ck_run.h"
#include "train/grad.h"

/* ---- helpers */

static int irand(int lo, int hi) /* uniform in [lo, hi] */
{
    return lo + (int)(next_u64() % (uint64_t)(hi - lo + 1));
}

static float *fbuf(size_t n, float scale, float offset)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = offset + frand() * scale;
    return p;
}

static float *rbuf(size_t n) { return fbuf(n, 1.0f, 0.0f); }

/* Outputs start as NaN so that an element a kernel forgets to write fails the comparison. */
static float *nanbuf(size_t n)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

/* max |got - ref| <= tol * max |ref| (NaN fails). */
static void expect_close(const float *got, const float *ref, size_t n, double tol, const char *what, const char *name)
{
    size_t worst;
    double mx, err = ck_max_error(got, ref, n, &worst, &mx);
    ck_assert_msg(err <= tol * fmax(mx, 1e-20), "%s %s: max error %.3g at %zu (got %.9g, ref %.9g), allowed %.3g", what,
                  name, err, worst, n ? got[worst] : 0.0, n ? ref[worst] : 0.0, tol * mx);
}


/* The gradients of one call: the reference's and each context's fast path's. */
#define MAX_OUT 3
typedef struct outs {
    int k;
    size_t n[MAX_OUT];
    const char *name[MAX_OUT];
    float *ref[MAX_OUT];
    float *got[N_CTX][MAX_OUT];
} outs;

static void outs_init(outs *o, int k, const size_t *n, const char *const *names)
{
    o->k = k;
    for (int i = 0; i < k; i++) {
        o->n[i] = n[i], o->name[i] = names[i], o->ref[i] = nanbuf(n[i]);
        for (int c = 0; c < N_CTX; c++) o->got[c][i] = nanbuf(n[i]);
    }
}

/* Fast path (serial) close to the reference; every thread count bit-identical to serial. */
static void outs_check(outs *o, double tol, const char *what)
{
    for (int i = 0; i < o->k; i++) {
        expect_close(o->got[0][i], o->ref[i], o->n[i], tol, what, o->name[i]);
        for (int c = 1; c < N_CTX; c++)
            ck_assert_msg(memcmp(o->got[c][i], o->got[0][i], sizeof(float) * o->n[i]) == 0,
                          "%s %s: %d threads differ from 1", what, o->name[i], lctx_threads(&ctxs[c]));
        free(o->ref[i]);
        for (int c = 0; c < N_CTX; c++) free(o->got[c][i]);
    }
}

/* ---- finite differences: L(inputs) = sum r * forward(inputs), all in double */

typedef struct problem problem;
typedef void (*fwd_fn)(const problem *pb, double *y);
struct problem {
    fwd_fn fwd;
    int d[4];
    lk_conv2d_shape s;
    float eps, scale;
    int causal;
    const int64_t *labels;
    double *in[3];
    size_t n_in[3];
    double *r, *y;
    size_t n_out;
};

static double *to_double(const float *x, size_t n)
{
    double *p = malloc(sizeof(double) * (n ? n : 1));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = x[i];
    return p;
}

static void pb_input(problem *pb, int i, const float *x, size_t n)
{
    pb->in[i] = to_double(x, n);
    pb->n_in[i] = n;
}

static void pb_output(problem *pb, const float *r, size_t n)
{
    pb->r = to_double(r, n);
    pb->y = malloc(sizeof(double) * (n ? n : 1));
    ck_assert_ptr_nonnull(pb->y);
    pb->n_out = n;
}

static void pb_free(problem *pb)
{
    for (int i = 0; i < 3; i++) free(pb->in[i]);
    free(pb->r), free(pb->y);
}

static double loss(const problem *pb)
{
    pb->fwd(pb, pb->y);
    double L = 0.0;
    for (size_t i = 0; i < pb->n_out; i++) L += pb->r[i] * pb->y[i];
    return L;
}

/* The analytic gradient grad of L with respect to input `which` against central differences:
 * max error <= tol * max |numeric gradient|. */
static void fd_check(problem *pb, int which, const float *grad, double tol, const char *what)
{
    const double h = 1e-4;
    double *p = pb->in[which], mx = 0.0, err = 0.0, num_at = 0.0;
    size_t worst = 0;
    double *num = malloc(sizeof(double) * (pb->n_in[which] ? pb->n_in[which] : 1));
    ck_assert_ptr_nonnull(num);
    for (size_t i = 0; i < pb->n_in[which]; i++) {
        double keep = p[i];
        p[i] = keep + h;
        double lp = loss(pb);
        p[i] = keep - h;
        double lm = loss(pb);
        p[i] = keep;
        num[i] = (lp - lm) / (2 * h);
        mx = fmax(mx, fabs(num[i]));
    }
    for (size_t i = 0; i < pb->n_in[which]; i++) {
        double e = fabs(grad[i] - num[i]);
        if (!(e <= err)) err = isnan(e) ? INFINITY : e, worst = i, num_at = num[i];
    }
    ck_assert_msg(mx > 0.0, "%s input %d: the loss does not depend on it", what, which);
    ck_assert_msg(err <= tol * mx, "%s input %d: analytic %.9g vs numeric %.9g at %zu (error %.3g, allowed %.3g)",
                  what, which, grad[worst], num_at, worst, err, tol * mx);
    free(num);
}

/* The double forward against the library's float one. */
static void expect_forward(const problem *pb, const float *lib_y, double tol, const char *what)
{
    pb->fwd(pb, pb->y);
    float *y = malloc(sizeof(float) * (pb->n_out ? pb->n_out : 1));
    ck_assert_ptr_nonnull(y);
    for (size_t i = 0; i < pb->n_out; i++) y[i] = (float)pb->y[i];
    expect_close(lib_y, y, pb->n_out, tol, what, "forward");
    free(y);
}

#define FD_TOL 1e-5 /* float analytic gradient vs double central difference with h = 1e-4 */

/* ---- linear */

static void fw_linear(const problem *pb, double *y)
{
    int rows = pb->d[0], in = pb->d[1], out = pb->d[2];
    for (int r = 0; r < rows; r++)
        for (int o = 0; o < out; o++) {
            double acc = pb->in[2][o];
            for (int i = 0; i < in; i++) acc += pb->in[0][(size_t)r * in + i] * pb->in[1][(size_t)o * in + i];
            y[(size_t)r * out + o] = acc;
        }
}

START_TEST(linear_fd)
{
    int rows = 3, in = 4, out = 5;
    float *x = rbuf(rows * in), *W = rbuf(out * in), *b = rbuf(out), *r = rbuf(rows * out);
    float *y = nanbuf(rows * out), *dx = nanbuf(rows * in), *dW = nanbuf(out * in), *db = nanbuf(out);
    problem pb = {.fwd = fw_linear, .d = {rows, in, out}};
    pb_input(&pb, 0, x, rows * in), pb_input(&pb, 1, W, out * in), pb_input(&pb, 2, b, out);
    pb_output(&pb, r, rows * out);
    lk_linear(NULL, x, rows, in, W, b, out, y);
    expect_forward(&pb, y, 1e-6, "linear");
    lg_ref_linear_backward(x, W, r, rows, in, out, dx, dW, db);
    fd_check(&pb, 0, dx, FD_TOL, "linear dx");
    fd_check(&pb, 1, dW, FD_TOL, "linear dW");
    fd_check(&pb, 2, db, FD_TOL, "linear db");
    pb_free(&pb);
    free(x), free(W), free(b), free(r), free(y), free(dx), free(dW), free(db);
}
END_TEST

static void linear_case(int rows, int in, int out)
{
    float *x = rbuf((size_t)rows * in), *W = rbuf((size_t)out * in), *dy = rbuf((size_t)rows * out);
    outs o;
    outs_init(&o, 3, (size_t[]){(size_t)rows * in, (size_t)out * in, (size_t)out}, (const char *[]){"dx", "dW", "db"});
    lg_ref_linear_backward(x, W, dy, rows, in, out, o.ref[0], o.ref[1], o.ref[2]);
    for (int c = 0; c < N_CTX; c++)
        lg_linear_backward(&ctxs[c], x, W, dy, rows, in, out, o.got[c][0], o.got[c][1], o.got[c][2]);
    outs_check(&o, 1e-5, "linear");
    free(x), free(W), free(dy);
}

START_TEST(linear_fast_matches_reference)
{
    for (int t = 0; t < 6; t++) linear_case(irand(1, 40), irand(1, 37), irand(1, 70));
    linear_case(150, 97, 130); /* large enough for lk_gemm to tile over the pool */
}
END_TEST

/* ---- conv2d */

static void fw_conv(const problem *pb, double *y)
{
    const lk_conv2d_shape *s = &pb->s;
    int oh_n = lk_conv2d_out_h(s), ow_n = lk_conv2d_out_w(s);
    for (int b = 0; b < s->batch; b++)
        for (int oc = 0; oc < s->out_ch; oc++)
            for (int oh = 0; oh < oh_n; oh++)
                for (int ow = 0; ow < ow_n; ow++) {
                    double acc = pb->in[2][oc];
                    for (int ic = 0; ic < s->in_ch; ic++)
                        for (int kh = 0; kh < s->k_h; kh++)
                            for (int kw = 0; kw < s->k_w; kw++) {
                                int ih = oh * s->stride + kh - s->pad_top, iw = ow * s->stride + kw - s->pad_left;
                                if (ih < 0 || ih >= s->in_h || iw < 0 || iw >= s->in_w) continue;
                                acc += pb->in[0][(((size_t)b * s->in_ch + ic) * s->in_h + ih) * s->in_w + iw] *
                                       pb->in[1][(((size_t)oc * s->in_ch + ic) * s->k_h + kh) * s->k_w + kw];
                            }
                    y[(((size_t)b * s->out_ch + oc) * oh_n + oh) * ow_n + ow] = acc;
                }
}

static size_t conv_nx(const lk_conv2d_shape *s) { return (size_t)s->batch * s->in_ch * s->in_h * s->in_w; }
static size_t conv_nw(const lk_conv2d_shape *s) { return (size_t)s->out_ch * s->in_ch * s->k_h * s->k_w; }
static size_t conv_ny(const lk_conv2d_shape *s)
{
    return (size_t)s->batch * s->out_ch * lk_conv2d_out_h(s) * lk_conv2d_out_w(s);
}

static void conv_fd_case(lk_conv2d_shape s)
{
    size_t nx = conv_nx(&s), nw = conv_nw(&s), ny = conv_ny(&s);
    float *x = rbuf(nx), *w = rbuf(nw), *b = rbuf(s.out_ch), *r = rbuf(ny), *y = nanbuf(ny);
    float *dx = nanbuf(nx), *dw = nanbuf(nw), *db = nanbuf(s.out_ch);
    problem pb = {.fwd = fw_conv, .s = s};
    pb_input(&pb, 0, x, nx), pb_input(&pb, 1, w, nw), pb_input(&pb, 2, b, s.out_ch);
    pb_output(&pb, r, ny);
    lk_ref_conv2d(&s, x, w, b, y);
    expect_forward(&pb, y, 1e-6, "conv2d");
    lg_ref_conv2d_backward(&s, x, w, r, dx, dw, db);
    fd_check(&pb, 0, dx, FD_TOL, "conv2d dx");
    fd_check(&pb, 1, dw, FD_TOL, "conv2d dw");
    fd_check(&pb, 2, db, FD_TOL, "conv2d db");
    pb_free(&pb);
    free(x), free(w), free(b), free(r), free(y), free(dx), free(dw), free(db);
}

START_TEST(conv2d_fd)
{
    /* batch, in_ch, H, W, out_ch, KH, KW, stride, pad top/left/bottom/right */
    conv_fd_case((lk_conv2d_shape){2, 3, 5, 6, 4, 3, 3, 1, 1, 1, 1, 1}); /* ResBlock 3x3 */
    conv_fd_case((lk_conv2d_shape){2, 2, 6, 7, 3, 3, 3, 2, 0, 0, 1, 1}); /* Downsample: pad (0,1,0,1), stride 2 */
    conv_fd_case((lk_conv2d_shape){2, 3, 4, 5, 2, 1, 1, 1, 0, 0, 0, 0}); /* 1x1 */
    conv_fd_case((lk_conv2d_shape){1, 2, 7, 5, 2, 2, 4, 2, 1, 0, 2, 1}); /* odd kernel, asymmetric pads */
}
END_TEST

static void conv_case(lk_conv2d_shape s, double tol)
{
    size_t nx = conv_nx(&s), nw = conv_nw(&s), ny = conv_ny(&s);
    float *x = rbuf(nx), *w = rbuf(nw), *dy = rbuf(ny);
    outs o;
    outs_init(&o, 3, (size_t[]){nx, nw, (size_t)s.out_ch}, (const char *[]){"dx", "dw", "db"});
    lg_ref_conv2d_backward(&s, x, w, dy, o.ref[0], o.ref[1], o.ref[2]);
    for (int c = 0; c < N_CTX; c++)
        ck_assert_int_eq(lg_conv2d_backward(&ctxs[c], &s, x, w, dy, o.got[c][0], o.got[c][1], o.got[c][2]), LDM_OK);
    outs_check(&o, tol, "conv2d");
    free(x), free(w), free(dy);
}

static lk_conv2d_shape random_conv_shape(void)
{
    for (;;) {
        lk_conv2d_shape s = {irand(2, 3), irand(1, 5), irand(1, 9), irand(1, 9), irand(1, 6), irand(1, 4), irand(1, 4),
                             irand(1, 2), irand(0, 2), irand(0, 2), irand(0, 2), irand(0, 2)};
        if (lk_conv2d_out_h(&s) > 0 && lk_conv2d_out_w(&s) > 0) return s;
    }
}

START_TEST(conv2d_fast_matches_reference)
{
    for (int t = 0; t < 12; t++) conv_case(random_conv_shape(), 1e-5);
    conv_case((lk_conv2d_shape){3, 5, 7, 9, 4, 3, 3, 1, 1, 1, 1, 1}, 1e-5);
    conv_case((lk_conv2d_shape){2, 4, 9, 7, 3, 3, 3, 2, 0, 0, 1, 1}, 1e-5);
    conv_case((lk_conv2d_shape){3, 6, 5, 7, 5, 1, 1, 1, 0, 0, 0, 0}, 1e-5); /* the pointwise path */
    conv_case((lk_conv2d_shape){2, 6, 5, 7, 5, 1, 1, 2, 0, 0, 0, 0}, 1e-5); /* 1x1 with stride: im2col */
    /* K * OW * OH over the im2col budget (several row blocks) and products big enough for lk_gemm
     * to tile over the pool */
    conv_case((lk_conv2d_shape){2, 64, 40, 50, 8, 3, 3, 1, 1, 1, 1, 1}, 1e-4);
    /* dx of a stride-1 "same" convolution runs as a forward convolution: Winograd F(4x4) above
     * 2048 output pixels, and a 5x5 kernel */
    conv_case((lk_conv2d_shape){1, 16, 48, 48, 12, 3, 3, 1, 1, 1, 1, 1}, 1e-4);
    conv_case((lk_conv2d_shape){2, 5, 9, 8, 6, 5, 5, 1, 2, 2, 2, 2}, 1e-5);
}
END_TEST

START_TEST(conv2d_partial_outputs)
{
    /* Asking for one gradient gives the same values as asking for all three. */
    lk_conv2d_shape s = {2, 3, 6, 5, 4, 3, 3, 1, 1, 1, 1, 1};
    size_t nx = conv_nx(&s), nw = conv_nw(&s), ny = conv_ny(&s);
    float *x = rbuf(nx), *w = rbuf(nw), *dy = rbuf(ny);
    float *dx = nanbuf(nx), *dw = nanbuf(nw), *db = nanbuf(s.out_ch), *one = nanbuf(nx);
    ck_assert_int_eq(lg_conv2d_backward(NULL, &s, x, w, dy, dx, dw, db), LDM_OK);
    ck_assert_int_eq(lg_conv2d_backward(NULL, &s, x, w, dy, one, NULL, NULL), LDM_OK);
    ck_assert(memcmp(one, dx, sizeof(float) * nx) == 0);
    ck_assert_int_eq(lg_conv2d_backward(NULL, &s, x, w, dy, NULL, one, NULL), LDM_OK);
    ck_assert(memcmp(one, dw, sizeof(float) * nw) == 0);
    ck_assert_int_eq(lg_conv2d_backward(NULL, &s, x, w, dy, NULL, NULL, one), LDM_OK);
    ck_assert(memcmp(one, db, sizeof(float) * s.out_ch) == 0);
    lk_conv2d_shape bad = s;
    bad.stride = 0;
    ck_assert_int_eq(lg_conv2d_backward(NULL, &bad, x, w, dy, dx, dw, db), LDM_ERR_INVALID_ARGUMENT);
    free(x), free(w), free(dy), free(dx), free(dw), free(db), free(one);
}
END_TEST

/* ---- GroupNorm and LayerNorm: d = {B, C, HW, groups} or {rows, dim} */

static void fw_norm_set(const double *x, size_t n, const double *gamma, const double *beta, size_t per, double eps,
                        double *y)
{
    double mean = 0.0, var = 0.0;
    for (size_t i = 0; i < n; i++) mean += x[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    double rstd = 1.0 / sqrt(var / (double)n + eps);
    for (size_t i = 0; i < n; i++) {
        size_t ch = per ? i / per : i;
        y[i] = (x[i] - mean) * rstd * gamma[ch] + beta[ch];
    }
}

static void fw_group_norm(const problem *pb, double *y)
{
    int B = pb->d[0], C = pb->d[1], HW = pb->d[2], G = pb->d[3], cpg = C / G;
    for (int b = 0; b < B; b++)
        for (int g = 0; g < G; g++) {
            size_t off = ((size_t)b * C + (size_t)g * cpg) * HW;
            fw_norm_set(pb->in[0] + off, (size_t)cpg * HW, pb->in[1] + g * cpg, pb->in[2] + g * cpg, (size_t)HW,
                        pb->eps, y + off);
        }
}

static void fw_layer_norm(const problem *pb, double *y)
{
    int rows = pb->d[0], dim = pb->d[1];
    for (int r = 0; r < rows; r++)
        fw_norm_set(pb->in[0] + (size_t)r * dim, (size_t)dim, pb->in[1], pb->in[2], 0, pb->eps, y + (size_t)r * dim);
}

START_TEST(group_norm_fd)
{
    int B = 2, C = 6, HW = 5, G = 3;
    size_t n = (size_t)B * C * HW;
    float eps = 1e-5f, *x = fbuf(n, 2.0f, 0.5f), *ga = fbuf(C, 0.5f, 1.0f), *be = rbuf(C), *r = rbuf(n);
    float *y = nanbuf(n), *dx = nanbuf(n), *dga = nanbuf(C), *dbe = nanbuf(C);
    problem pb = {.fwd = fw_group_norm, .d = {B, C, HW, G}, .eps = eps};
    pb_input(&pb, 0, x, n), pb_input(&pb, 1, ga, C), pb_input(&pb, 2, be, C);
    pb_output(&pb, r, n);
    lk_ref_group_norm(x, B, C, HW, G, eps, ga, be, y);
    expect_forward(&pb, y, 1e-6, "group norm");
    lg_ref_group_norm_backward(x, B, C, HW, G, eps, ga, r, dx, dga, dbe);
    fd_check(&pb, 0, dx, FD_TOL, "group norm dx");
    fd_check(&pb, 1, dga, FD_TOL, "group norm dgamma");
    fd_check(&pb, 2, dbe, FD_TOL, "group norm dbeta");
    pb_free(&pb);
    free(x), free(ga), free(be), free(r), free(y), free(dx), free(dga), free(dbe);
}
END_TEST

START_TEST(layer_norm_fd)
{
    int rows = 3, dim = 7;
    size_t n = (size_t)rows * dim;
    float eps = 1e-5f, *x = fbuf(n, 2.0f, -0.3f), *ga = fbuf(dim, 0.5f, 1.0f), *be = rbuf(dim), *r = rbuf(n);
    float *y = nanbuf(n), *dx = nanbuf(n), *dga = nanbuf(dim), *dbe = nanbuf(dim);
    problem pb = {.fwd = fw_layer_norm, .d = {rows, dim}, .eps = eps};
    pb_input(&pb, 0, x, n), pb_input(&pb, 1, ga, dim), pb_input(&pb, 2, be, dim);
    pb_output(&pb, r, n);
    lk_ref_layer_norm(x, rows, dim, eps, ga, be, y);
    expect_forward(&pb, y, 1e-6, "layer norm");
    lg_ref_layer_norm_backward(x, rows, dim, eps, ga, r, dx, dga, dbe);
    fd_check(&pb, 0, dx, FD_TOL, "layer norm dx");
    fd_check(&pb, 1, dga, FD_TOL, "layer norm dgamma");
    fd_check(&pb, 2, dbe, FD_TOL, "layer norm dbeta");
    pb_free(&pb);
    free(x), free(ga), free(be), free(r), free(y), free(dx), free(dga), free(dbe);
}
END_TEST

static void group_norm_case(int B, int C, int HW, int G, int with_gamma)
{
    size_t n = (size_t)B * C * HW;
    float *x = fbuf(n, 3.0f, 1.0f), *dy = rbuf(n), *ga = fbuf(C, 0.5f, 1.0f);
    const float *gamma = with_gamma ? ga : NULL;
    outs o;
    outs_init(&o, 3, (size_t[]){n, (size_t)C, (size_t)C}, (const char *[]){"dx", "dgamma", "dbeta"});
    lg_ref_group_norm_backward(x, B, C, HW, G, 1e-5f, gamma, dy, o.ref[0], o.ref[1], o.ref[2]);
    for (int c = 0; c < N_CTX; c++)
        ck_assert_int_eq(lg_group_norm_backward(&ctxs[c], x, B, C, HW, G, 1e-5f, gamma, dy, o.got[c][0], o.got[c][1],
                                                o.got[c][2]),
                         LDM_OK);
    outs_check(&o, 1e-5, "group norm");
    free(x), free(dy), free(ga);
}

static void layer_norm_case(int rows, int dim, int with_gamma)
{
    size_t n = (size_t)rows * dim;
    float *x = fbuf(n, 3.0f, -1.0f), *dy = rbuf(n), *ga = fbuf(dim, 0.5f, 1.0f);
    const float *gamma = with_gamma ? ga : NULL;
    outs o;
    outs_init(&o, 3, (size_t[]){n, (size_t)dim, (size_t)dim}, (const char *[]){"dx", "dgamma", "dbeta"});
    lg_ref_layer_norm_backward(x, rows, dim, 1e-5f, gamma, dy, o.ref[0], o.ref[1], o.ref[2]);
    for (int c = 0; c < N_CTX; c++)
        ck_assert_int_eq(
            lg_layer_norm_backward(&ctxs[c], x, rows, dim, 1e-5f, gamma, dy, o.got[c][0], o.got[c][1], o.got[c][2]),
            LDM_OK);
    outs_check(&o, 1e-5, "layer norm");
    free(x), free(dy), free(ga);
}

START_TEST(norm_fast_matches_reference)
{
    for (int t = 0; t < 6; t++) {
        int G = irand(1, 4);
        group_norm_case(irand(2, 3), G * irand(1, 4), irand(1, 40), G, t % 3);
        layer_norm_case(irand(2, 50), irand(1, 150), t % 3);
    }
    group_norm_case(2, 32, 9 * 11, 8, 1);
}
END_TEST

START_TEST(norm_dx_may_equal_dy)
{
    int B = 2, C = 4, HW = 7;
    size_t n = (size_t)B * C * HW;
    float *x = rbuf(n), *dy = rbuf(n), *ga = fbuf(C, 0.5f, 1.0f), *dx = nanbuf(n), *dga = nanbuf(C),
          *dga2 = nanbuf(C);
    ck_assert_int_eq(lg_group_norm_backward(NULL, x, B, C, HW, 2, 1e-5f, ga, dy, dx, dga, NULL), LDM_OK);
    ck_assert_int_eq(lg_group_norm_backward(NULL, x, B, C, HW, 2, 1e-5f, ga, dy, dy, dga2, NULL), LDM_OK);
    ck_assert(memcmp(dx, dy, sizeof(float) * n) == 0);
    ck_assert(memcmp(dga, dga2, sizeof(float) * C) == 0);
    float *dy2 = rbuf(n);
    memcpy(dy, dy2, sizeof(float) * n);
    ck_assert_int_eq(lg_layer_norm_backward(NULL, x, B * C, HW, 1e-5f, NULL, dy, dx, NULL, NULL), LDM_OK);
    ck_assert_int_eq(lg_layer_norm_backward(NULL, x, B * C, HW, 1e-5f, NULL, dy, dy, NULL, NULL), LDM_OK);
    ck_assert(memcmp(dx, dy, sizeof(float) * n) == 0);
    ck_assert_int_eq(lg_group_norm_backward(NULL, x, B, C, HW, 3, 1e-5f, ga, dy, dx, NULL, NULL),
                     LDM_ERR_INVALID_ARGUMENT);
    free(x), free(dy), free(ga), free(dx), free(dga), free(dga2), free(dy2);
}
END_TEST

/* ---- activations: d = {n} or {rows, dim} */

static double gelu_d(double x) { return x * 0.5 * (1.0 + erf(x * M_SQRT1_2)); }
static void fw_silu(const problem *pb, double *y)
{
    for (size_t i = 0; i < pb->n_out; i++) y[i] = pb->in[0][i] / (1.0 + exp(-pb->in[0][i]));
}
static void fw_gelu(const problem *pb, double *y)
{
    for (size_t i = 0; i < pb->n_out; i++) y[i] = gelu_d(pb->in[0][i]);
}
static void fw_geglu(const problem *pb, double *y)
{
    int rows = pb->d[0], dim = pb->d[1];
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < dim; i++)
            y[(size_t)r * dim + i] = pb->in[0][(size_t)r * 2 * dim + i] * gelu_d(pb->in[0][(size_t)r * 2 * dim + dim + i]);
}

typedef void (*act_lib)(float *, size_t);
typedef void (*act_ref)(const float *, const float *, size_t, float *);

static void elementwise_fd(fwd_fn fwd, act_lib lib, act_ref ref, const char *what)
{
    size_t n = 41;
    float *x = fbuf(n, 4.0f, 0.0f), *r = rbuf(n), *y = malloc(sizeof(float) * n), *dx = nanbuf(n);
    x[0] = 0.0f, x[1] = -12.0f, x[2] = 9.0f; /* the middle and both tails */
    memcpy(y, x, sizeof(float) * n);
    problem pb = {.fwd = fwd};
    pb_input(&pb, 0, x, n);
    pb_output(&pb, r, n);
    lib(y, n);
    expect_forward(&pb, y, 1e-6, what);
    ref(x, r, n, dx);
    fd_check(&pb, 0, dx, FD_TOL, what);
    pb_free(&pb);
    free(x), free(r), free(y), free(dx);
}

START_TEST(activation_fd)
{
    elementwise_fd(fw_silu, lk_silu, lg_ref_silu_backward, "silu");
    elementwise_fd(fw_gelu, lk_gelu, lg_ref_gelu_backward, "gelu");
    int rows = 3, dim = 5;
    size_t nx = (size_t)rows * 2 * dim, ny = (size_t)rows * dim;
    float *x = fbuf(nx, 3.0f, 0.0f), *r = rbuf(ny), *y = nanbuf(ny), *dx = nanbuf(nx);
    problem pb = {.fwd = fw_geglu, .d = {rows, dim}};
    pb_input(&pb, 0, x, nx);
    pb_output(&pb, r, ny);
    lk_geglu(x, rows, dim, y); /* which half is the gate: the library's forward decides */
    expect_forward(&pb, y, 1e-6, "geglu");
    lg_ref_geglu_backward(x, rows, dim, r, dx);
    fd_check(&pb, 0, dx, FD_TOL, "geglu");
    pb_free(&pb);
    free(x), free(r), free(y), free(dx);
}
END_TEST

typedef void (*act_fast)(const lctx *, const float *, const float *, size_t, float *);

static void elementwise_case(act_fast fast, act_ref ref, size_t n, const char *what)
{
    float *x = fbuf(n, 6.0f, 0.0f), *dy = rbuf(n);
    outs o;
    outs_init(&o, 1, (size_t[]){n}, (const char *[]){"dx"});
    ref(x, dy, n, o.ref[0]);
    for (int c = 0; c < N_CTX; c++) fast(&ctxs[c], x, dy, n, o.got[c][0]);
    outs_check(&o, 2e-6, what);
    free(x), free(dy);
}

static void geglu_case(int rows, int dim)
{
    size_t nx = (size_t)rows * 2 * dim;
    float *x = fbuf(nx, 4.0f, 0.0f), *dy = rbuf((size_t)rows * dim);
    outs o;
    outs_init(&o, 1, (size_t[]){nx}, (const char *[]){"dx"});
    lg_ref_geglu_backward(x, rows, dim, dy, o.ref[0]);
    for (int c = 0; c < N_CTX; c++) lg_geglu_backward(&ctxs[c], x, rows, dim, dy, o.got[c][0]);
    outs_check(&o, 2e-6, "geglu");
    free(x), free(dy);
}

START_TEST(activation_fast_matches_reference)
{
    for (int t = 0; t < 3; t++) {
        size_t n = t == 2 ? 40001 : (size_t)irand(1, 300); /* the last one spans several pool tasks */
        elementwise_case(lg_silu_backward, lg_ref_silu_backward, n, "silu");
        elementwise_case(lg_gelu_backward, lg_ref_gelu_backward, n, "gelu");
    }
    geglu_case(irand(1, 9), irand(1, 33));
    geglu_case(77, 320);
    /* dx may equal dy */
    float *x = rbuf(50), *dy = rbuf(50), *dx = nanbuf(50);
    lg_gelu_backward(NULL, x, dy, 50, dx);
    lg_gelu_backward(NULL, x, dy, 50, dy);
    ck_assert(memcmp(dx, dy, sizeof(float) * 50) == 0);
    free(x), free(dy), free(dx);
}
END_TEST

/* ---- attention: d = {BH, Tq, Tk, D} */

static void fw_attention(const problem *pb, double *y)
{
    int BH = pb->d[0], Tq = pb->d[1], Tk = pb->d[2], D = pb->d[3];
    double w[64];
    ck_assert_int_le(Tk, 64);
    for (int bh = 0; bh < BH; bh++)
        for (int t = 0; t < Tq; t++) {
            const double *q = pb->in[0] + ((size_t)bh * Tq + t) * D, *k = pb->in[1] + (size_t)bh * Tk * D,
                         *v = pb->in[2] + (size_t)bh * Tk * D;
            int vis = pb->causal ? LDM_MIN(t + 1, Tk) : Tk;
            double mx = -INFINITY, sum = 0.0;
            for (int s = 0; s < vis; s++) {
                double dot = 0.0;
                for (int d = 0; d < D; d++) dot += q[d] * k[(size_t)s * D + d];
                w[s] = dot * pb->scale;
                mx = fmax(mx, w[s]);
            }
            for (int s = 0; s < vis; s++) sum += w[s] = exp(w[s] - mx);
            for (int d = 0; d < D; d++) {
                double acc = 0.0;
                for (int s = 0; s < vis; s++) acc += w[s] * v[(size_t)s * D + d];
                y[((size_t)bh * Tq + t) * D + d] = acc / sum;
            }
        }
}

static lk_view slices(float *p, int T, int D)
{
    lk_view v = {p, (long)T * D, 0, D, 1}; /* [BH, T, D] as B = BH, one head */
    return v;
}

static void attention_fd_case(int BH, int Tq, int Tk, int D, int causal)
{
    size_t nq = (size_t)BH * Tq * D, nk = (size_t)BH * Tk * D;
    float scale = 1.0f / sqrtf((float)D);
    float *q = fbuf(nq, 1.5f, 0.0f), *k = fbuf(nk, 1.5f, 0.0f), *v = rbuf(nk), *r = rbuf(nq), *y = nanbuf(nq);
    float *dq = nanbuf(nq), *dk = nanbuf(nk), *dv = nanbuf(nk);
    problem pb = {.fwd = fw_attention, .d = {BH, Tq, Tk, D}, .scale = scale, .causal = causal};
    pb_input(&pb, 0, q, nq), pb_input(&pb, 1, k, nk), pb_input(&pb, 2, v, nk);
    pb_output(&pb, r, nq);
    lk_ref_attention(BH, 1, Tq, Tk, D, slices(q, Tq, D), slices(k, Tk, D), slices(v, Tk, D), slices(y, Tq, D), scale,
                     causal);
    expect_forward(&pb, y, 1e-6, "attention");
    ck_assert_int_eq(lg_ref_attention_backward(BH, Tq, Tk, D, q, k, v, r, scale, causal, dq, dk, dv), LDM_OK);
    fd_check(&pb, 0, dq, FD_TOL, "attention dq");
    fd_check(&pb, 1, dk, FD_TOL, "attention dk");
    fd_check(&pb, 2, dv, FD_TOL, "attention dv");
    pb_free(&pb);
    free(q), free(k), free(v), free(r), free(y), free(dq), free(dk), free(dv);
}

START_TEST(attention_fd)
{
    attention_fd_case(2, 5, 5, 3, 0); /* self */
    attention_fd_case(2, 5, 4, 3, 0); /* cross: Tk = context length */
    attention_fd_case(2, 5, 5, 2, 1); /* causal (text towers) */
    attention_fd_case(1, 4, 6, 3, 1); /* causal with more keys than queries */
}
END_TEST

static void attention_case(int BH, int Tq, int Tk, int D, int causal)
{
    size_t nq = (size_t)BH * Tq * D, nk = (size_t)BH * Tk * D;
    float scale = 1.0f / sqrtf((float)D);
    float *q = fbuf(nq, 2.0f, 0.0f), *k = fbuf(nk, 2.0f, 0.0f), *v = rbuf(nk), *dout = rbuf(nq);
    outs o;
    outs_init(&o, 3, (size_t[]){nq, nk, nk}, (const char *[]){"dq", "dk", "dv"});
    ck_assert_int_eq(lg_ref_attention_backward(BH, Tq, Tk, D, q, k, v, dout, scale, causal, o.ref[0], o.ref[1], o.ref[2]),
                     LDM_OK);
    for (int c = 0; c < N_CTX; c++)
        ck_assert_int_eq(lg_attention_backward(&ctxs[c], BH, Tq, Tk, D, q, k, v, dout, scale, causal, o.got[c][0],
                                               o.got[c][1], o.got[c][2]),
                         LDM_OK);
    outs_check(&o, 2e-5, causal ? "causal attention" : "attention");
    free(q), free(k), free(v), free(dout);
}

START_TEST(attention_fast_matches_reference)
{
    for (int t = 0; t < 5; t++) {
        int Tq = irand(1, 20);
        attention_case(irand(1, 5), Tq, t % 2 ? irand(1, 20) : Tq, irand(1, 9), t % 3 == 1);
    }
    attention_case(3, 150, 150, 8, 0); /* several query tiles per slice */
    attention_case(3, 130, 77, 8, 0);  /* cross attention over a text context */
    attention_case(2, 140, 140, 5, 1);
}
END_TEST

/* ---- resampling: d = {BC, H, W} (input size) */

static void fw_up2(const problem *pb, double *y)
{
    int BC = pb->d[0], H = pb->d[1], W = pb->d[2];
    for (int p = 0; p < BC; p++)
        for (int oh = 0; oh < 2 * H; oh++)
            for (int ow = 0; ow < 2 * W; ow++)
                y[((size_t)p * 2 * H + oh) * 2 * W + ow] = pb->in[0][((size_t)p * H + oh / 2) * W + ow / 2];
}

static void fw_pool2(const problem *pb, double *y)
{
    int BC = pb->d[0], H = pb->d[1], W = pb->d[2], OH = H / 2, OW = W / 2;
    for (int p = 0; p < BC; p++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                const double *x = pb->in[0] + ((size_t)p * H + 2 * oh) * W + 2 * ow;
                y[((size_t)p * OH + oh) * OW + ow] = (x[0] + x[1] + x[W] + x[W + 1]) / 4.0;
            }
}

START_TEST(resample_fd)
{
    int BC = 2, H = 3, W = 2;
    size_t nx = (size_t)BC * H * W, ny = 4 * nx;
    float *x = rbuf(nx), *r = rbuf(ny), *y = nanbuf(ny), *dx = nanbuf(nx);
    problem pb = {.fwd = fw_up2, .d = {BC, H, W}};
    pb_input(&pb, 0, x, nx), pb_output(&pb, r, ny);
    lk_resize_nearest(x, BC, H, W, 2 * H, 2 * W, y);
    expect_forward(&pb, y, 0.0, "upsample");
    lg_ref_upsample_nearest2_backward(r, BC, H, W, dx);
    fd_check(&pb, 0, dx, FD_TOL, "upsample");
    pb_free(&pb);
    free(x), free(r), free(y), free(dx);

    H = 5, W = 4; /* odd height: the last row is ignored by the pool */
    nx = (size_t)BC * H * W, ny = (size_t)BC * (H / 2) * (W / 2);
    x = rbuf(nx), r = rbuf(ny), y = nanbuf(ny), dx = nanbuf(nx);
    problem pp = {.fwd = fw_pool2, .d = {BC, H, W}};
    pb_input(&pp, 0, x, nx), pb_output(&pp, r, ny);
    lk_avg_pool2(x, BC, H, W, y);
    expect_forward(&pp, y, 1e-7, "avg pool");
    lg_ref_avg_pool2_backward(r, BC, H, W, dx);
    fd_check(&pp, 0, dx, FD_TOL, "avg pool");
    for (int p = 0; p < BC; p++)
        for (int w = 0; w < W; w++) ck_assert(dx[((size_t)p * H + H - 1) * W + w] == 0.0f);
    pb_free(&pp);
    free(x), free(r), free(y), free(dx);
}
END_TEST

START_TEST(resample_fast_matches_reference)
{
    for (int t = 0; t < 6; t++) {
        int BC = irand(2, 7), H = irand(1, 13), W = irand(1, 13);
        size_t nx = (size_t)BC * H * W;
        float *dy = rbuf(4 * nx);
        outs o;
        outs_init(&o, 1, (size_t[]){nx}, (const char *[]){"dx"});
        lg_ref_upsample_nearest2_backward(dy, BC, H, W, o.ref[0]);
        for (int c = 0; c < N_CTX; c++) lg_upsample_nearest2_backward(&ctxs[c], dy, BC, H, W, o.got[c][0]);
        outs_check(&o, 1e-6, "upsample");
        outs_init(&o, 1, (size_t[]){nx}, (const char *[]){"dx"});
        lg_ref_avg_pool2_backward(dy, BC, H, W, o.ref[0]);
        for (int c = 0; c < N_CTX; c++) lg_avg_pool2_backward(&ctxs[c], dy, BC, H, W, o.got[c][0]);
        outs_check(&o, 0.0, "avg pool"); /* a quarter is exact */
        free(dy);
    }
}
END_TEST

START_TEST(backward_reports_oom)
{
    lk_conv2d_shape s = {2, 3, 6, 5, 4, 3, 3, 2, 1, 1, 1, 1};
    float *x = rbuf(conv_nx(&s)), *w = rbuf(conv_nw(&s)), *dy = rbuf(conv_ny(&s)), *dx = nanbuf(conv_nx(&s));
    float *dw = nanbuf(conv_nw(&s)), *g = rbuf(s.in_ch);
    ldm_alloc_fail_after(1);
    ck_assert_int_eq(lg_conv2d_backward(NULL, &s, x, w, dy, dx, dw, NULL), LDM_ERR_OUT_OF_MEMORY);
    ldm_alloc_fail_after(1);
    ck_assert_int_eq(lg_group_norm_backward(NULL, x, 2, 3, 30, 3, 1e-5f, g, x, dx, dw, NULL), LDM_ERR_OUT_OF_MEMORY);
    ldm_alloc_fail_after(1);
    ck_assert_int_eq(lg_layer_norm_backward(NULL, x, 6, 30, 1e-5f, NULL, x, dx, NULL, NULL), LDM_ERR_OUT_OF_MEMORY);
    ldm_alloc_fail_after(1);
    ck_assert_int_eq(lg_attention_backward(NULL, 2, 5, 6, 3, x, x, x, x, 0.5f, 0, dx, dw, dw + 36),
                     LDM_ERR_OUT_OF_MEMORY);
    ldm_alloc_fail_after(0);
    ck_assert_int_eq(lg_conv2d_backward(NULL, &s, x, w, dy, dx, dw, NULL), LDM_OK);
    free(x), free(w), free(dy), free(dx), free(dw), free(g);
}
END_TEST

/* ---- embedding and channel split */

static void fw_embedding(const problem *pb, double *y)
{
    int n = pb->d[0], dim = pb->d[2];
    for (int i = 0; i < n; i++)
        for (int d = 0; d < dim; d++) y[(size_t)i * dim + d] = pb->in[0][(size_t)pb->labels[i] * dim + d];
}

START_TEST(embedding_fd)
{
    int n = 5, classes = 4, dim = 3;
    const int64_t labels[5] = {2, 0, 2, 3, 2}; /* class 1 unused: its row stays zero */
    float *table = rbuf((size_t)classes * dim), *r = rbuf((size_t)n * dim), *dt = nanbuf((size_t)classes * dim);
    problem pb = {.fwd = fw_embedding, .d = {n, classes, dim}, .labels = labels};
    pb_input(&pb, 0, table, (size_t)classes * dim), pb_output(&pb, r, (size_t)n * dim);
    lg_ref_embedding_backward(labels, n, r, classes, dim, dt);
    fd_check(&pb, 0, dt, FD_TOL, "embedding");
    for (int d = 0; d < dim; d++) ck_assert(dt[dim + d] == 0.0f);
    pb_free(&pb);
    free(table), free(r), free(dt);
}
END_TEST

START_TEST(embedding_fast_matches_reference)
{
    for (int t = 0; t < 4; t++) {
        int n = irand(1, 60), classes = irand(1, 40), dim = irand(1, 20);
        if (t == 3) classes = 1000, n = 64; /* ImageNet class embedder: many table-row tasks */
        int64_t *labels = malloc(sizeof(int64_t) * (size_t)n);
        ck_assert_ptr_nonnull(labels);
        for (int i = 0; i < n; i++) labels[i] = irand(0, classes - 1);
        float *dy = rbuf((size_t)n * dim);
        outs o;
        outs_init(&o, 1, (size_t[]){(size_t)classes * dim}, (const char *[]){"dtable"});
        lg_ref_embedding_backward(labels, n, dy, classes, dim, o.ref[0]);
        for (int c = 0; c < N_CTX; c++)
            ck_assert_int_eq(lg_embedding_backward(&ctxs[c], labels, n, dy, classes, dim, o.got[c][0]), LDM_OK);
        outs_check(&o, 1e-6, "embedding");
        labels[n - 1] = classes; /* out of range */
        float *dt = nanbuf((size_t)classes * dim);
        ck_assert_int_eq(lg_embedding_backward(NULL, labels, n, dy, classes, dim, dt), LDM_ERR_INVALID_ARGUMENT);
        free(labels), free(dy), free(dt);
    }
}
END_TEST

START_TEST(split_channels_values)
{
    /* dz [2, 2+1, 2] = 0..11: image b, channel c, pixel i at (b*3 + c)*2 + i */
    float dz[12], da[8], db[4];
    for (int i = 0; i < 12; i++) dz[i] = (float)i;
    lg_split_channels(dz, 2, 2, 1, 2, da, db);
    static const float want_a[8] = {0, 1, 2, 3, 6, 7, 8, 9}, want_b[4] = {4, 5, 10, 11};
    for (int i = 0; i < 8; i++) ck_assert_float_eq(da[i], want_a[i]);
    for (int i = 0; i < 4; i++) ck_assert_float_eq(db[i], want_b[i]);
    lg_split_channels(dz, 2, 2, 1, 2, NULL, db); /* either half may be skipped */
    for (int i = 0; i < 4; i++) ck_assert_float_eq(db[i], want_b[i]);
}
END_TEST

static Suite *grad_suite(void)
{
    Suite *s = suite_create("grad");
    TCase *fd = tcase_create("finite differences");
    tcase_set_timeout(fd, 60);
    tcase_add_test(fd, linear_fd);
    tcase_add_test(fd, conv2d_fd);
    tcase_add_test(fd, group_norm_fd);
    tcase_add_test(fd, layer_norm_fd);
    tcase_add_test(fd, activation_fd);
    tcase_add_test(fd, attention_fd);
    tcase_add_test(fd, resample_fd);
    tcase_add_test(fd, embedding_fd);
    suite_add_tcase(s, fd);
    TCase *fast = tcase_create("fast paths");
    tcase_set_timeout(fast, 60);
    tcase_add_checked_fixture(fast, setup_pools, teardown_pools);
    tcase_add_test(fast, linear_fast_matches_reference);
    tcase_add_test(fast, conv2d_fast_matches_reference);
    tcase_add_test(fast, conv2d_partial_outputs);
    tcase_add_test(fast, norm_fast_matches_reference);
    tcase_add_test(fast, norm_dx_may_equal_dy);
    tcase_add_test(fast, activation_fast_matches_reference);
    tcase_add_test(fast, attention_fast_matches_reference);
    tcase_add_test(fast, resample_fast_matches_reference);
    tcase_add_test(fast, embedding_fast_matches_reference);
    tcase_add_test(fast, split_channels_values);
    tcase_add_test(fast, backward_reports_oom);
    suite_add_tcase(s, fast);
    return s;
}

int main(void)
{
    return ck_run_suite(grad_suite());
}
