/* grad_attn.c - backward of softmax attention, out = softmax(scale * q k^T) v per slice.
 *
 * With P the softmax probabilities [Tq,Tk] and dO = dL/d(out):
 *     dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(P * dP)),
 *     dQ = scale * dS K,   dK = scale * dS^T Q.
 * P is not saved by the forward (lk_attention never forms it): it is recomputed here from q and
 * k, a tile of TQ query rows at a time, so scratch is two TQ x Tk tiles per thread rather than
 * Tq x Tk. Tiles of one slice are processed in order and dK, dV accumulate over them in that
 * order; a slice is one unit of work taken by whichever thread is free (an atomic counter, each
 * thread owning its scratch) and computed identically by any of them, so results do not depend
 * on the thread count. The products are lk_gemm calls on the calling thread (no context: the
 * units are the parallelism). Causal masking as lk_attention: query t sees keys s <= t. */
#include "grad.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#define TQ 64 /* query rows per tile */

typedef struct att_job {
    int Tq, Tk, D, causal;
    float scale;
    const float *q, *k, *v, *dout;
    float *dq, *dk, *dv;
    float *scratch; /* per task: P and dP tiles, 2 * TQ * Tk floats */
    atomic_int next;
    int units;
} att_job;

/* Rows of S [n, nk] become softmax probabilities over each row's visible keys (0 beyond). */
static void softmax_tile(const att_job *j, float *S, int t0, int n, int nk)
{
    for (int i = 0; i < n; i++) {
        float *row = S + (size_t)i * nk;
        int vis = j->causal ? LDM_MIN(t0 + i + 1, nk) : nk;
        float mx = -INFINITY;
        for (int s = 0; s < vis; s++) mx = row[s] > mx ? row[s] : mx;
        double sum = 0.0;
        for (int s = 0; s < vis; s++) sum += row[s] = expf(row[s] - mx);
        float inv = (float)(1.0 / sum);
        for (int s = 0; s < vis; s++) row[s] *= inv;
        for (int s = vis; s < nk; s++) row[s] = 0.0f;
    }
}

/* dP [n, nk] becomes dS = P * (dP - rowsum(P * dP)). */
static void softmax_grad_tile(const float *P, float *dP, int n, int nk)
{
    for (int i = 0; i < n; i++) {
        const float *p = P + (size_t)i * nk;
        float *g = dP + (size_t)i * nk;
        double delta = 0.0;
        for (int s = 0; s < nk; s++) delta += (double)p[s] * g[s];
        for (int s = 0; s < nk; s++) g[s] = p[s] * (g[s] - (float)delta);
    }
}

/* Query rows [t0, t0+n) of slice bh: their dq, and their share of the slice's dk and dv. */
static void tile_backward(const att_job *j, int bh, int t0, int n, float *P, float *dP)
{
    int D = j->D, nk = j->causal ? LDM_MIN(j->Tk, t0 + n) : j->Tk; /* keys any row of the tile sees */
    size_t qo = ((size_t)bh * j->Tq + t0) * D, ko = (size_t)bh * j->Tk * D;
    const float *q = j->q + qo, *dout = j->dout + qo, *k = j->k + ko, *v = j->v + ko;
    lk_gemm(NULL, 0, 1, n, nk, D, j->scale, q, D, k, D, 0.0f, P, nk);
    softmax_tile(j, P, t0, n, nk);
    lk_gemm(NULL, 1, 0, nk, D, n, 1.0f, P, nk, dout, D, 1.0f, j->dv + ko, D);
    lk_gemm(NULL, 0, 1, n, nk, D, 1.0f, dout, D, v, D, 0.0f, dP, nk);
    softmax_grad_tile(P, dP, n, nk);
    lk_gemm(NULL, 0, 0, n, D, nk, j->scale, dP, nk, k, D, 0.0f, j->dq + qo, D);
    lk_gemm(NULL, 1, 0, nk, D, n, j->scale, dP, nk, q, D, 1.0f, j->dk + ko, D);
}

static void att_task(void *arg, int task)
{
    att_job *j = arg;
    float *P = j->scratch + (size_t)task * 2 * TQ * j->Tk, *dP = P + (size_t)TQ * j->Tk;
    for (int bh; (bh = atomic_fetch_add(&j->next, 1)) < j->units;) {
        size_t ko = (size_t)bh * j->Tk * j->D;
        memset(j->dk + ko, 0, sizeof(float) * (size_t)j->Tk * j->D);
        memset(j->dv + ko, 0, sizeof(float) * (size_t)j->Tk * j->D);
        for (int t0 = 0; t0 < j->Tq; t0 += TQ) tile_backward(j, bh, t0, LDM_MIN(TQ, j->Tq - t0), P, dP);
    }
}

ldm_status lg_attention_backward(const lctx *c, int BH, int Tq, int Tk, int D, const float *q, const float *k,
                                 const float *v, const float *dout, float scale, int causal, float *dq, float *dk,
                                 float *dv)
{
    if (BH <= 0 || Tq <= 0 || Tk <= 0 || D <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "attention backward: bad shape %dx%dx%dx%d", BH, Tq, Tk, D);
    int tasks = LDM_MIN(lctx_threads(c), BH);
    float *scratch = ldm_malloc(sizeof(float) * 2 * TQ * (size_t)Tk * tasks);
    if (!scratch) return ldm_fail_context(ldm_alloc_failure_status(), "attention backward: ");
    att_job j = {Tq, Tk, D, causal, scale, q, k, v, dout, dq, dk, dv, scratch, 0, BH};
    atomic_init(&j.next, 0);
    lpool_run(c ? c->pool : NULL, tasks, att_task, &j);
    ldm_free(scratch);
    return LDM_OK;
}

/* ---- naive reference, in double, the whole [Tq, Tk] matrix of one slice at a time */

/* P [Tq,Tk] of one slice (0 for masked keys). */
static void ref_probs(int Tq, int Tk, int D, const float *q, const float *k, float scale, int causal, double *P)
{
    for (int t = 0; t < Tq; t++) {
        double *row = P + (size_t)t * Tk, mx = -INFINITY, sum = 0.0;
        int vis = causal ? LDM_MIN(t + 1, Tk) : Tk;
        for (int s = 0; s < Tk; s++) {
            double dot = 0.0;
            for (int d = 0; d < D; d++) dot += (double)q[(size_t)t * D + d] * k[(size_t)s * D + d];
            row[s] = dot * scale;
            if (s < vis && row[s] > mx) mx = row[s];
        }
        for (int s = 0; s < Tk; s++) sum += row[s] = s < vis ? exp(row[s] - mx) : 0.0;
        for (int s = 0; s < Tk; s++) row[s] /= sum;
    }
}

/* dS [Tq,Tk] of one slice from P: dP = dO V^T, dS = P (dP - rowsum(P dP)). */
static void ref_dscores(int Tq, int Tk, int D, const float *v, const float *dout, const double *P, double *dS)
{
    for (int t = 0; t < Tq; t++) {
        double delta = 0.0;
        for (int s = 0; s < Tk; s++) {
            double dp = 0.0;
            for (int d = 0; d < D; d++) dp += (double)dout[(size_t)t * D + d] * v[(size_t)s * D + d];
            dS[(size_t)t * Tk + s] = dp;
            delta += P[(size_t)t * Tk + s] * dp;
        }
        for (int s = 0; s < Tk; s++) dS[(size_t)t * Tk + s] = P[(size_t)t * Tk + s] * (dS[(size_t)t * Tk + s] - delta);
    }
}

static void ref_slice(int Tq, int Tk, int D, const float *q, const float *k, const float *v, const float *dout,
                      float scale, int causal, float *dq, float *dk, float *dv, double *P, double *dS)
{
    ref_probs(Tq, Tk, D, q, k, scale, causal, P);
    ref_dscores(Tq, Tk, D, v, dout, P, dS);
    for (int s = 0; s < Tk; s++)
        for (int d = 0; d < D; d++) {
            double gv = 0.0, gk = 0.0;
            for (int t = 0; t < Tq; t++) {
                gv += P[(size_t)t * Tk + s] * dout[(size_t)t * D + d];
                gk += dS[(size_t)t * Tk + s] * q[(size_t)t * D + d];
            }
            dv[(size_t)s * D + d] = (float)gv;
            dk[(size_t)s * D + d] = (float)(scale * gk);
        }
    for (int t = 0; t < Tq; t++)
        for (int d = 0; d < D; d++) {
            double g = 0.0;
            for (int s = 0; s < Tk; s++) g += dS[(size_t)t * Tk + s] * k[(size_t)s * D + d];
            dq[(size_t)t * D + d] = (float)(scale * g);
        }
}

ldm_status lg_ref_attention_backward(int BH, int Tq, int Tk, int D, const float *q, const float *k, const float *v,
                                     const float *dout, float scale, int causal, float *dq, float *dk, float *dv)
{
    double *P = ldm_malloc(sizeof(double) * 2 * (size_t)Tq * Tk);
    if (!P) return ldm_alloc_failure_status();
    for (int bh = 0; bh < BH; bh++) {
        size_t qo = (size_t)bh * Tq * D, ko = (size_t)bh * Tk * D;
        ref_slice(Tq, Tk, D, q + qo, k + ko, v + ko, dout + qo, scale, causal, dq + qo, dk + ko, dv + ko, P,
                  P + (size_t)Tq * Tk);
    }
    ldm_free(P);
    return LDM_OK;
}
