/* wino_small.c - Winograd F(2x2,3x3) for small images at small batches, with cached weights.
 *
 * At batch 1 the 3x3 convolutions of a small model (64 channels on 8x8 and 4x4 latents) are too
 * small for winograd.c: it transforms the weights on every call, which costs as much as it
 * saves when there are only 16 or 4 tiles (docs/performance.md, "Small-model latency"). So they
 * ran as direct sums (gemm_small.c), 36 multiply-adds per output and channel, while a batch of 62
 * images runs Winograd with 2.25-4x fewer. Here the weights are transformed once per network and
 * kept in its cache (wcache.c) in the layout the products read, U[xi] (16 positions xi of the 4x4
 * transformed tile) as IC x OC matrices in panels of 16 output channels (padded with zeros), each
 * IC x 16 contiguous, so the products stream them in order; a call stages the input
 * channels-last with its zero padding ([b][row][column][ic]), transforms the tiles' 4x4 patches
 * 8 channels at a time into V[xi][tile][ic], multiplies M[xi] = V[xi] U[xi] (16 small products
 * in one pool job, lk_gemm_small_batched) and transforms M back, adding the bias.
 *
 * F(2x2): points 0, +-1, inf. U = G g G^T with G rows (1,0,0), (1,1,1)/2, (1,-1,1)/2, (0,0,1),
 * computed in double from the float kernel and rounded once; V = B^T d B with B^T rows
 * (1,0,-1,0), (0,1,1,0), (0,-1,1,0), (0,1,0,-1); Y = A^T M A with A^T rows (1,1,1,0), (0,1,-1,-1).
 * Transformed values mix at most 4 (V) or 9 (Y) values with coefficients of magnitude 1, so the
 * rounding stays close to a direct sum's. Every transform is elementwise over channels and every
 * product element one FMA chain in channel order, whatever the split: results are bitwise the same
 * for any thread count, and the same whether the weights came from the cache or were just
 * transformed. */
#include "kernels.h"
#include "simd.h"

#include <string.h>

#define WS_XI 16
#define WS_TILES_PER_TASK 16
#define WS_SKEW 16 /* floats: see wino_run */

static int round8(int v) { return (v + 7) & ~7; }
static int round16(int v) { return (v + 15) & ~15; }

static size_t u_floats(const lk_conv2d_shape *s) { return (size_t)WS_XI * s->in_ch * round16(s->out_ch); }

int lk_conv_wino_small_applies(const lk_conv2d_shape *s)
{
    if (!lk_winograd_applies(s) || s->in_ch < 16 || s->out_ch < 16) return 0;
    if (!lk_conv_small_applies(s)) return 0;
    return sizeof(float) * u_floats(s) <= LK_WCACHE_MAX_ENTRY;
}

/* U[xi] = (G g G^T)[xi] of kernel (oc, ic) at row ic, column oc of its panels; zero for the padding channels. Allocates
 * nothing (the cache entry must not be left half filled). */
static void transform_weights(const lk_conv2d_shape *s, lk_wt w, float *U)
{
    int IC = s->in_ch, OC = s->out_ch, OCp = round16(OC);
    float g[9 * 64];
    memset(U, 0, sizeof(float) * u_floats(s));
    for (int oc = 0; oc < OC; oc++)
        for (int ic0 = 0; ic0 < IC; ic0 += 64) {
            int n = LDM_MIN(64, IC - ic0);
            lk_wt_read(w, ((size_t)oc * IC + ic0) * 9, (size_t)n * 9, g); /* widens float16 kernels */
            for (int l = 0; l < n; l++) {
                const float *k = g + l * 9;
                double t[4][3], u[4][4];
                for (int c = 0; c < 3; c++) { /* t = G g */
                    double a = k[c], b = k[3 + c], d = k[6 + c];
                    t[0][c] = a, t[1][c] = 0.5 * (a + b + d), t[2][c] = 0.5 * (a - b + d), t[3][c] = d;
                }
                for (int r = 0; r < 4; r++) { /* u = t G^T */
                    double a = t[r][0], b = t[r][1], d = t[r][2];
                    u[r][0] = a, u[r][1] = 0.5 * (a + b + d), u[r][2] = 0.5 * (a - b + d), u[r][3] = d;
                }
                for (int xi = 0; xi < WS_XI; xi++) /* panel oc / 16 of U[xi], row ic, column oc % 16 */
                    U[(size_t)xi * IC * OCp + ((size_t)(oc / 16) * IC + ic0 + l) * 16 + oc % 16] =
                        (float)u[xi / 4][xi % 4];
            }
        }
}

typedef struct ws_job {
    const lk_conv2d_shape *s;
    int OH, OW, tx_n, tiles, Tn; /* tiles per row, per image; of the batch */
    int Rq, Cq, ic8, OCp;        /* staged rows and columns per image; channel strides */
    size_t vs, ms;               /* floats from one position xi to the next in V and in M */
    const float *xs;             /* staged input [B][Rq][Cq][ic8] */
    float *V;                    /* [16][Tn][ic8] */
    const float *M;              /* [16][Tn][OCp] */
    const float *bias;
    float *y;
} ws_job;

/* V[xi][t] = (B^T d B)[xi] for the tiles of one task, 8 channels at a time. */
LK_BODY void in_body(const ws_job *j, int task)
{
    int t1 = LDM_MIN(j->Tn, (task + 1) * WS_TILES_PER_TASK);
    size_t xs = j->vs, col = (size_t)j->ic8, row = (size_t)j->Cq * j->ic8;
    for (int t = task * WS_TILES_PER_TASK; t < t1; t++) {
        int b = t / j->tiles, tt = t % j->tiles, ty = tt / j->tx_n, tx = tt % j->tx_n;
        const float *base = j->xs + ((size_t)(b * j->Rq + 2 * ty) * j->Cq + 2 * tx) * j->ic8;
        float *v = j->V + (size_t)t * j->ic8;
        for (int ic0 = 0; ic0 < j->ic8; ic0 += LANES) {
            v8f d[4][4], h[4][4];
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++) LOAD(d[r][c], base + r * row + c * col + ic0);
            for (int r = 0; r < 4; r++) { /* rows: d B */
                h[r][0] = d[r][0] - d[r][2];
                h[r][1] = d[r][1] + d[r][2];
                h[r][2] = d[r][2] - d[r][1];
                h[r][3] = d[r][1] - d[r][3];
            }
            for (int c = 0; c < 4; c++) { /* columns: B^T (d B) */
                STORE(v + (size_t)(0 + c) * xs + ic0, h[0][c] - h[2][c]);
                STORE(v + (size_t)(4 + c) * xs + ic0, h[1][c] + h[2][c]);
                STORE(v + (size_t)(8 + c) * xs + ic0, h[2][c] - h[1][c]);
                STORE(v + (size_t)(12 + c) * xs + ic0, h[1][c] - h[3][c]);
            }
        }
    }
}

/* Lane l of q[0..4) as four consecutive floats at rows[l] (a 4x8 transpose). */
LK_BODY void store_quads(const v8f *q, float *const rows[LANES])
{
    v8f t0 = SHUFFLE(q[0], q[1], 0, 8, 1, 9, 4, 12, 5, 13), t1 = SHUFFLE(q[0], q[1], 2, 10, 3, 11, 6, 14, 7, 15);
    v8f t2 = SHUFFLE(q[2], q[3], 0, 8, 1, 9, 4, 12, 5, 13), t3 = SHUFFLE(q[2], q[3], 2, 10, 3, 11, 6, 14, 7, 15);
    v8f u[4] = {SHUFFLE(t0, t2, 0, 1, 8, 9, 4, 5, 12, 13), SHUFFLE(t0, t2, 2, 3, 10, 11, 6, 7, 14, 15),
                SHUFFLE(t1, t3, 0, 1, 8, 9, 4, 5, 12, 13), SHUFFLE(t1, t3, 2, 3, 10, 11, 6, 7, 14, 15)};
    for (int k = 0; k < 4; k++) { /* u[k] holds lanes k and k + 4 */
        memcpy(rows[k], &u[k], 4 * sizeof(float));
        memcpy(rows[k + 4], (const float *)&u[k] + 4, 4 * sizeof(float));
    }
}

/* The 2x2 outputs (A^T M A)[a][c] of one tile for 8 output channels from m (stride ms per xi),
 * plus the bias *bp (by address: a vector argument passed by value changes the ABI in the
 * baseline build, which clang refuses). */
LK_BODY void tile_out(const float *m, size_t ms, const v8f *bp, v8f o[2][2])
{
    v8f bv = *bp;
    v8f z[WS_XI], q[2][4];
    for (int xi = 0; xi < WS_XI; xi++) LOAD(z[xi], m + xi * ms);
    for (int c = 0; c < 4; c++) { /* A^T M: columns */
        q[0][c] = z[c] + z[4 + c] + z[8 + c];
        q[1][c] = z[4 + c] - z[8 + c] - z[12 + c];
    }
    for (int a = 0; a < 2; a++) { /* (A^T M) A: rows */
        o[a][0] = q[a][0] + q[a][1] + q[a][2] + bv;
        o[a][1] = q[a][1] - q[a][2] - q[a][3] + bv;
    }
}

/* y = A^T M A + bias for the tiles of one task, 8 output channels at a time. */
LK_BODY void out_body(const ws_job *j, int task)
{
    const lk_conv2d_shape *s = j->s;
    int OC = s->out_ch, t1 = LDM_MIN(j->Tn, (task + 1) * WS_TILES_PER_TASK);
    size_t ms = j->ms, plane = (size_t)j->OH * j->OW;
    if (j->OW % 4 == 0 && j->OH % 2 == 0 && OC % LANES == 0) {
        /* two tiles side by side give 4 consecutive outputs per row and channel (tiles per row
         * is even and so is the tile count of a task: pairs never straddle a row or a task) */
        for (int t = task * WS_TILES_PER_TASK; t < t1; t += 2) {
            int b = t / j->tiles, tt = t % j->tiles, oh0 = 2 * (tt / j->tx_n), ow0 = 2 * (tt % j->tx_n);
            const float *m = j->M + (size_t)t * j->OCp;
            for (int oc0 = 0; oc0 < OC; oc0 += LANES) {
                v8f bv = SPLAT(0.0f), o0[2][2], o1[2][2];
                if (j->bias) LOAD(bv, j->bias + oc0);
                tile_out(m + oc0, ms, &bv, o0);
                tile_out(m + j->OCp + oc0, ms, &bv, o1);
                float *dst = j->y + ((size_t)b * OC + oc0) * plane + (size_t)oh0 * j->OW + ow0;
                for (int a = 0; a < 2; a++) {
                    v8f q[4] = {o0[a][0], o0[a][1], o1[a][0], o1[a][1]};
                    float *rows[LANES];
                    for (int l = 0; l < LANES; l++) rows[l] = dst + (size_t)l * plane + (size_t)a * j->OW;
                    store_quads(q, rows);
                }
            }
        }
        return;
    }
    for (int t = task * WS_TILES_PER_TASK; t < t1; t++) {
        int b = t / j->tiles, tt = t % j->tiles, oh0 = 2 * (tt / j->tx_n), ow0 = 2 * (tt % j->tx_n);
        int nh = LDM_MIN(2, j->OH - oh0), nw = LDM_MIN(2, j->OW - ow0);
        const float *m = j->M + (size_t)t * j->OCp;
        for (int oc0 = 0; oc0 < OC; oc0 += LANES) {
            int n = LDM_MIN(LANES, OC - oc0);
            v8f o[2][2], bv = SPLAT(0.0f);
            if (j->bias) {
                float bl[LANES] = {0};
                memcpy(bl, j->bias + oc0, sizeof(float) * (size_t)n);
                LOAD(bv, bl);
            }
            tile_out(m + oc0, ms, &bv, o);
            float out[2][2][LANES];
            for (int a = 0; a < 2; a++)
                for (int c = 0; c < 2; c++) STORE(out[a][c], o[a][c]);
            float *dst = j->y + ((size_t)b * OC + oc0) * plane + (size_t)oh0 * j->OW + ow0;
            for (int l = 0; l < n; l++, dst += plane)
                for (int a = 0; a < nh; a++)
                    for (int c = 0; c < nw; c++) dst[(size_t)a * j->OW + c] = out[a][c][l];
        }
    }
}

static void in_task(void *arg, int task) { in_body(arg, task); }
static void out_task(void *arg, int task) { out_body(arg, task); }
#ifdef LK_DISPATCH
static LK_AVX2 void in_task_avx2(void *arg, int task) { in_body(arg, task); }
static LK_AVX2 void out_task_avx2(void *arg, int task) { out_body(arg, task); }
#endif

/* The input (up2: the nearest 2x upsample of x, which is at half resolution) channels-last into
 * xs, zero-padded: image pixel (ih, iw) at staged row ih + pad_top, column iw + pad_left. */
static void stage(const ws_job *j, const float *x, int up2, float *xs)
{
    const lk_conv2d_shape *s = j->s;
    int H = s->in_h, W = s->in_w, sh = up2 ? 1 : 0;
    size_t img = (size_t)j->Rq * j->Cq * j->ic8, plane = (size_t)(H >> sh) * (W >> sh);
    memset(xs, 0, sizeof(float) * img * s->batch);
    for (int b = 0; b < s->batch; b++)
        for (int ic = 0; ic < s->in_ch; ic++) {
            const float *src = x + ((size_t)b * s->in_ch + ic) * plane;
            float *dst = xs + b * img + ((size_t)s->pad_top * j->Cq + s->pad_left) * j->ic8 + ic;
            for (int ih = 0; ih < H; ih++) {
                const float *srow = src + (size_t)(ih >> sh) * (W >> sh);
                float *drow = dst + (size_t)ih * j->Cq * j->ic8;
                for (int iw = 0; iw < W; iw++) drow[(size_t)iw * j->ic8] = srow[iw >> sh];
            }
        }
}

static ldm_status wino_run(const lctx *c, const lk_conv2d_shape *s, const float *x, const float *U, const float *bias,
                           float *y, int up2)
{
    ws_job j = {.s = s, .OH = lk_conv2d_out_h(s), .OW = lk_conv2d_out_w(s), .bias = bias, .y = y};
    int ty_n = (j.OH + 1) / 2;
    j.tx_n = (j.OW + 1) / 2;
    j.tiles = j.tx_n * ty_n;
    j.Tn = j.tiles * s->batch;
    j.Rq = 2 * ty_n + 2, j.Cq = 2 * j.tx_n + 2;
    j.ic8 = round8(s->in_ch), j.OCp = round16(s->out_ch);
    /* the 16 planes of V and of M are WS_SKEW floats more than a multiple of their size apart: at
     * batch 1 a plane is often exactly 4 KiB, and 16 streams 4 KiB apart share one set of the
     * level-1 cache */
    j.vs = (size_t)j.Tn * j.ic8 + WS_SKEW, j.ms = (size_t)j.Tn * j.OCp + WS_SKEW;
    size_t nxs = (size_t)s->batch * j.Rq * j.Cq * j.ic8, nv = WS_XI * j.vs, nm = WS_XI * j.ms;
    size_t bytes = sizeof(float) * (nxs + nv + nm);
    float *buf = lk_scratch_get(bytes);
    if (!buf) return ldm_fail_context(ldm_alloc_failure_status(), "conv2d (small winograd) scratch: ");
    float *xs = buf, *M = buf + nxs + nv;
    j.xs = xs, j.V = buf + nxs, j.M = M;
    stage(&j, x, up2, xs);
    int tasks = (j.Tn + WS_TILES_PER_TASK - 1) / WS_TILES_PER_TASK;
    lpool_run(lk_pool_for_bytes(c, 8.0 * nv), tasks, LK_PICK(in_task_avx2, in_task), &j);
    lk_gemm_small_batched(c, WS_XI, j.Tn, j.OCp, s->in_ch, j.V, j.vs, j.ic8, U, (size_t)s->in_ch * j.OCp, M, j.ms,
                          j.OCp);
    lpool_run(lk_pool_for_bytes(c, 8.0 * nm), tasks, LK_PICK(out_task_avx2, out_task), &j);
    lk_scratch_put(buf, bytes);
    return LDM_OK;
}

/* The cached U of w, made and added when missing; NULL (not an error) when it cannot be cached. */
static ldm_status cached_u(const lk_conv2d_shape *s, lk_wt w, lk_wcache *wc, const float **U)
{
    const void *key = w.f32 ? (const void *)w.f32 : w.f16;
    *U = lk_wcache_find(wc, key, LK_WC_WINO2, s->in_ch, s->out_ch);
    if (*U) return LDM_OK;
    float *fresh;
    LDM_TRY(lk_wcache_add(wc, key, LK_WC_WINO2, s->in_ch, s->out_ch, sizeof(float) * u_floats(s), &fresh));
    if (fresh) transform_weights(s, w, fresh);
    *U = fresh;
    return LDM_OK;
}

ldm_status lk_conv2d_wino_small_try(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                    const float *bias, float *y, lk_wcache *wc, int up2, int *done)
{
    *done = 0;
    if (!wc || !lk_conv_wino_small_applies(s)) return LDM_OK;
    const float *U;
    LDM_TRY(cached_u(s, w, wc, &U));
    if (!U) return LDM_OK;
    *done = 1;
    return wino_run(c, s, x, U, bias, y, up2);
}

ldm_status lk_conv2d_wino_small(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                const float *bias, float *y, lk_wcache *wc)
{
    if (!lk_conv_wino_small_applies(s))
        return ldm_fail(LDM_ERR_INTERNAL, "conv2d: small Winograd path for a shape it does not take");
    const float *U = NULL;
    if (wc) LDM_TRY(cached_u(s, w, wc, &U));
    if (U) return wino_run(c, s, x, U, bias, y, 0);
    size_t bytes = sizeof(float) * u_floats(s);
    float *tmp = lk_scratch_get(bytes);
    if (!tmp) return ldm_fail_context(ldm_alloc_failure_status(), "conv2d (small winograd) weights: ");
    transform_weights(s, w, tmp);
    ldm_status st = wino_run(c, s, x, tmp, bias, y, 0);
    lk_scratch_put(tmp, bytes);
    return st;
}
