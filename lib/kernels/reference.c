/* reference.c - the naive kernels that every fast path is tested against.
 *
 * Plain loops that follow the documented formula literally, with no blocking, no threads and no
 * BLAS, so that they are obviously right by reading. Every reduction (dot products, sums, norm
 * statistics, the softmax denominator) is accumulated in double: that costs nothing here and makes
 * them a better oracle than a float32 implementation, so a test comparing a fast float kernel to
 * them measures the fast kernel's error alone. They are far too slow for real models. */
#include "kernels.h"

#include <math.h>

void lk_ref_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                double a = transA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = transB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += a * b;
            }
            float *cij = &C[(size_t)i * ldc + j];
            /* beta == 0 must ignore C entirely (it may hold NaN), as BLAS does. */
            *cij = (float)(alpha * acc + (beta == 0.0f ? 0.0 : (double)beta * *cij));
        }
    }
}

void lk_ref_conv2d(const lk_conv2d_shape *s, const float *x, const float *w, const float *bias, float *y)
{
    int oh_n = lk_conv2d_out_h(s), ow_n = lk_conv2d_out_w(s);
    for (int b = 0; b < s->batch; b++)
        for (int oc = 0; oc < s->out_ch; oc++)
            for (int oh = 0; oh < oh_n; oh++)
                for (int ow = 0; ow < ow_n; ow++) {
                    double acc = bias ? bias[oc] : 0.0;
                    for (int ic = 0; ic < s->in_ch; ic++)
                        for (int kh = 0; kh < s->k_h; kh++) {
                            int ih = oh * s->stride + kh - s->pad_top;
                            if (ih < 0 || ih >= s->in_h) continue;
                            for (int kw = 0; kw < s->k_w; kw++) {
                                int iw = ow * s->stride + kw - s->pad_left;
                                if (iw < 0 || iw >= s->in_w) continue;
                                double xv = x[(((size_t)b * s->in_ch + ic) * s->in_h + ih) * s->in_w + iw];
                                double wv = w[(((size_t)oc * s->in_ch + ic) * s->k_h + kh) * s->k_w + kw];
                                acc += xv * wv;
                            }
                        }
                    y[(((size_t)b * s->out_ch + oc) * oh_n + oh) * ow_n + ow] = (float)acc;
                }
}

void lk_ref_group_norm(const float *x, int B, int C, int HW, int groups, float eps, const float *gamma,
                       const float *beta, float *y)
{
    int cpg = C / groups;
    size_t n = (size_t)cpg * HW;
    for (int b = 0; b < B; b++)
        for (int g = 0; g < groups; g++) {
            const float *xg = x + ((size_t)b * C + (size_t)g * cpg) * HW;
            float *yg = y + ((size_t)b * C + (size_t)g * cpg) * HW;
            double mean = 0.0, var = 0.0;
            for (size_t i = 0; i < n; i++) mean += xg[i];
            mean /= (double)n;
            for (size_t i = 0; i < n; i++) var += ((double)xg[i] - mean) * ((double)xg[i] - mean);
            var /= (double)n; /* biased, as torch.nn.GroupNorm */
            double rstd = 1.0 / sqrt(var + (double)eps);
            for (int cc = 0; cc < cpg; cc++) {
                int ch = g * cpg + cc;
                double ga = gamma ? gamma[ch] : 1.0, be = beta ? beta[ch] : 0.0;
                for (int i = 0; i < HW; i++) {
                    size_t at = (size_t)cc * HW + i;
                    yg[at] = (float)(((double)xg[at] - mean) * rstd * ga + be);
                }
            }
        }
}

void lk_ref_layer_norm(const float *x, int rows, int dim, float eps, const float *gamma, const float *beta, float *y)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        float *yr = y + (size_t)r * dim;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < dim; i++) mean += xr[i];
        mean /= dim;
        for (int i = 0; i < dim; i++) var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
        var /= dim;
        double rstd = 1.0 / sqrt(var + (double)eps);
        for (int i = 0; i < dim; i++)
            yr[i] = (float)(((double)xr[i] - mean) * rstd * (gamma ? gamma[i] : 1.0) + (beta ? beta[i] : 0.0));
    }
}

static inline float *view_at(lk_view v, int b, int h, int t, int d)
{
    return v.p + (long)b * v.sb + (long)h * v.sh + (long)t * v.st + (long)d * v.sd;
}

void lk_ref_attention(int B, int H, int Tq, int Tk, int D, lk_view q, lk_view k, lk_view v, lk_view out, float scale,
                      int causal)
{
    double *w = ldm_malloc(sizeof(double) * (size_t)(Tk > 0 ? Tk : 1));
    if (!w) return; /* test-only code: the tests notice the untouched output */
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < Tq; t++) {
                int n_keys = causal ? LDM_MIN(t + 1, Tk) : Tk;
                double mx = -INFINITY;
                for (int s = 0; s < n_keys; s++) {
                    double dot = 0.0;
                    for (int d = 0; d < D; d++) dot += (double)*view_at(q, b, h, t, d) * *view_at(k, b, h, s, d);
                    w[s] = dot * scale;
                    if (w[s] > mx) mx = w[s];
                }
                double sum = 0.0;
                for (int s = 0; s < n_keys; s++) {
                    w[s] = exp(w[s] - mx);
                    sum += w[s];
                }
                for (int d = 0; d < D; d++) {
                    double acc = 0.0;
                    for (int s = 0; s < n_keys; s++) acc += w[s] * *view_at(v, b, h, s, d);
                    *view_at(out, b, h, t, d) = (float)(acc / sum);
                }
            }
    ldm_free(w);
}
