/* winograd.c - 3x3 stride-1 convolutions by Winograd's minimal filtering F(m x m, 3x3), m = 4 or 2.
 *
 * An m x m block of outputs is computed from the (m+2) x (m+2) input patch around it as
 *     Y = A^T [ (G g G^T) (.) (B^T d B) ] A
 * (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"; points 0, +-1, +-2, inf for
 * F(4x4), 0, +-1, inf for F(2x2)): 36 (or 16) elementwise products per channel pair instead of
 * the 144 (36) multiply-adds of the direct form, a 4x (2.25x) saving. Summed over the input
 * channels, the elementwise products become one matrix product per transformed position xi,
 *     M[xi] (tiles x OC) = V[xi] (tiles x IC) . U[xi]^T (IC x OC),
 * which go to BLAS; the transforms are O(channels x tiles) and cheap next to them once
 * vectorised. F(2x2) is for small images: its transformed weights U are 1.8x the kernel instead
 * of 4x, and U streams through memory once per call (see conv2d.c for when each is used). The
 * price is rounding: a transformed value of F(4x4) mixes up to 36 inputs with coefficients up to
 * 25, so the error is a few times that of a direct sum (about 3e-7 * sqrt(9 IC) relative to the
 * largest output, measured in tests/test_kernels.c against the double-precision reference; every
 * conformance fixture passes with the same margins); F(2x2) is close to a direct sum.
 *
 * Vectorisation runs over 8 channels (simd.h): the input rows a tile block needs are first staged
 * channels-last with the zero padding materialised ([row][column][channel]), so each of the 36
 * patch values of 8 channels is one contiguous load, and V, U and M keep the channel index
 * innermost (padded to a multiple of 8). Output values go back to NCHW four at a time (an 8x4
 * transpose per tile row), then through the caller's epilogue (residual add, ReLU: lk_conv_ep)
 * while the tile is still in L1. The _up2 variant stages the nearest 2x upsample of its input on the
 * fly, so an Upsample block never stores the upsampled image.
 *
 * Memory stays bounded: U ((m+2)^2 x OC x IC) is made per call and, for many channels, in groups of
 * output channels; the staged input, V and M exist for one block of tiles at a time (budgets
 * below).
 *
 * Determinism: the tile blocks, the channel groups, the task split of every phase and every
 * BLAS call depend on the shape alone, so results are bitwise independent of the thread count. */
#include "kernels.h"
#include "simd.h"

#include <cblas.h>
#include <stdatomic.h>

#define WG_TMAX 6             /* largest input tile edge (F(4x4,3x3)) */
#define WG_XIMAX (WG_TMAX * WG_TMAX)
/* Budgets in floats. The products want many tiles (rows) and output channels (columns) per call:
 * each call streams its slice of U once, so U is re-read once per tile block, and the input is
 * re-transformed once per group of output channels. */
#define WG_V_BUDGET       (1 << 22)  /* V and M of one tile block, each (16 MiB) */
#define WG_U_BUDGET       (12 << 20) /* transformed weights held at once (48 MiB) */
#define WG_MIN_GROUP      256        /* output channels per group, whatever the budget says */
#define WG_TILES_PER_TASK 16  /* tiles per transform task */

int lk_winograd_applies(const lk_conv2d_shape *s) { return s->k_h == 3 && s->k_w == 3 && s->stride == 1; }

static int round8(int v) { return (v + 7) & ~7; }

typedef struct wg_plan {
    const lk_conv2d_shape *s;
    int OH, OW, tiles_x, tiles, tb; /* tiles per image; tiles per block (of the whole batch) */
    int ic8;                        /* channel stride of the staged input, V and U */
    int og, og8;                    /* output channels per group; stride of M */
    int stage_w, stage_rows;        /* staged input: columns, rows (for the largest block) */
    int col0;                       /* padded input column of staged column 0 (a fused block's window) */
    int up2;                        /* x is at half resolution: convolve its nearest 2x upsample */
    int T, Mo, XI;                  /* input tile edge, output tile edge, T*T: 6, 4, 36 or 4, 2, 16 */
    const float *res;               /* the epilogue (lk_conv_ep): residual [B,OC,OH,OW] or NULL */
    int relu;
    int panels;                     /* products by lk_gemm_small_batched, U[xi] in its 16-column panels */
    float *U, *V, *M, *S;
    size_t bytes[4]; /* of U, V, M, S */
} wg_plan;

/* ---------------------------------------------------------------- weight transform */

/* z -> G z for 3-point columns, F(4,3): rows 1/4, -(1,1,1)/6, -(1,-1,1)/6, (1/4,1/2,1)/6,
 * (1/4,-1/2,1)/6, (0,0,1). */
LK_BODY void g6(const v8f *z, v8f *o)
{
    v8f a = z[0], b = z[1], c = z[2];
    v8f ac = a + c, q = SPLAT(0.25f) * a + c, sixth = SPLAT(1.0f / 6.0f);
    o[0] = SPLAT(0.25f) * a;
    o[1] = -(ac + b) * sixth;
    o[2] = -(ac - b) * sixth;
    o[3] = (q + SPLAT(0.5f) * b) * sixth;
    o[4] = (q - SPLAT(0.5f) * b) * sixth;
    o[5] = c;
}

/* F(2,3): rows (1,0,0), (1,1,1)/2, (1,-1,1)/2, (0,0,1). */
LK_BODY void g4(const v8f *z, v8f *o)
{
    v8f a = z[0], b = z[1], c = z[2], ac = a + c;
    o[0] = a;
    o[1] = SPLAT(0.5f) * (ac + b);
    o[2] = SPLAT(0.5f) * (ac - b);
    o[3] = c;
}

LK_BODY void gtf(int T, const v8f *z, v8f *o)
{
    if (T == 6)
        g6(z, o);
    else
        g4(z, o);
}

typedef struct wt_job {
    const wg_plan *p;
    lk_wt w;
    int og0, ogn;
} wt_job;

/* U[xi][o][ic] = (G g G^T)[xi] for output channel og0 + o, 8 input channels at a time. The
 * kernels of WT_CHUNK channels are first transposed to [tap][channel] so that each tap of 8
 * channels is one vector load. */
#define WT_CHUNK 64
LK_BODY void weight_transform_body(const wt_job *j, int o, const int T)
{
    int IC = j->p->s->in_ch;
    size_t plane = (size_t)j->ogn * j->p->ic8;
    float *dst = j->p->U + (size_t)o * j->p->ic8;
    size_t w0 = (size_t)(j->og0 + o) * IC * 9;
    float gt[9][WT_CHUNK], raw[9 * WT_CHUNK];
    for (int c0 = 0; c0 < IC; c0 += WT_CHUNK) {
        int n = LDM_MIN(WT_CHUNK, IC - c0);
        lk_wt_read(j->w, w0 + (size_t)c0 * 9, (size_t)n * 9, raw); /* widens float16 kernels */
        for (int l = 0; l < n; l++)
            for (int k = 0; k < 9; k++) gt[k][l] = raw[l * 9 + k];
        for (int l = n; l < round8(n); l++)
            for (int k = 0; k < 9; k++) gt[k][l] = 0.0f;
        for (int l0 = 0; l0 < n; l0 += LANES) {
            v8f t[3][WG_TMAX], col[3], u[WG_TMAX][WG_TMAX]; /* t[c] = G (column c of g) */
            for (int c = 0; c < 3; c++) {
                for (int r = 0; r < 3; r++) LOAD(col[r], &gt[r * 3 + c][l0]);
                gtf(T, col, t[c]);
            }
            for (int i = 0; i < T; i++) { /* u[i] = G (row i of G g) */
                v8f row[3] = {t[0][i], t[1][i], t[2][i]};
                gtf(T, row, u[i]);
            }
            if (j->p->panels) { /* U[xi] as IC x ogn panels: ic at row c0 + l0 + l, o at column o */
                int nl = LDM_MIN(LANES, n - l0);
                size_t at = (size_t)(o / 16) * 16 * IC + (size_t)(c0 + l0) * 16 + o % 16;
                for (int i = 0; i < T; i++)
                    for (int k = 0; k < T; k++) {
                        float lanes[LANES];
                        STORE(lanes, u[i][k]);
                        float *d = j->p->U + (size_t)(i * T + k) * j->ogn * IC + at;
                        for (int l = 0; l < nl; l++) d[(size_t)l * 16] = lanes[l];
                    }
                continue;
            }
            for (int i = 0; i < T; i++)
                for (int k = 0; k < T; k++) STORE(dst + (size_t)(i * T + k) * plane + c0 + l0, u[i][k]);
        }
    }
}

/* ---------------------------------------------------------------- input staging and transform */

typedef struct in_job {
    const wg_plan *p;
    const float *x; /* this image [IC,H,W] */
    int t0, nt;     /* tiles of this image in this block */
    int ty0;        /* first tile row of t0 */
    int r0;         /* row of tile t0 in the block's V */
} in_job;

/* Staged row i ([column][channel], padding included) of the block: input row 4*ty0 - pad + i. */
/* rows[l][0..8) for 8 channels l -> d + k * ld: the 8 channels of column k (an 8x8 transpose). */
LK_BODY void transpose8(const float *const rows[LANES], float *d, size_t ld)
{
    v8f r[LANES], t[LANES], u[LANES];
    for (int l = 0; l < LANES; l++) LOAD(r[l], rows[l]);
    for (int l = 0; l < LANES; l += 2) {
        t[l] = SHUFFLE(r[l], r[l + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[l + 1] = SHUFFLE(r[l], r[l + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int l = 0; l < LANES; l += 4) { /* u[l + k]: columns k and k + 4 of rows l..l+3 */
        u[l] = SHUFFLE(t[l], t[l + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[l + 1] = SHUFFLE(t[l], t[l + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        u[l + 2] = SHUFFLE(t[l + 1], t[l + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        u[l + 3] = SHUFFLE(t[l + 1], t[l + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int k = 0; k < 4; k++) {
        STORE(d + (size_t)k * ld, SHUFFLE(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11));
        STORE(d + (size_t)(k + 4) * ld, SHUFFLE(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15));
    }
}

/* stage_row_body for a half-resolution input: upsampled row ih is input row ih / 2, upsampled
 * column iw input column iw / 2 (nearest 2x, exactly lk_resize_nearest's), so the upsampled
 * image is never stored. */
LK_BODY void stage_row_up2(const in_job *j, float *dst, int ih, int lo, int hi)
{
    const wg_plan *p = j->p;
    const lk_conv2d_shape *s = p->s;
    int hw = s->in_w / 2, c0 = p->col0 - s->pad_left; /* upsampled column of staged column 0 */
    size_t plane = (size_t)(s->in_h / 2) * hw;
    const float *src = j->x + (size_t)(ih / 2) * hw;
    for (int ic0 = 0; ic0 < p->ic8; ic0 += LANES) {
        const float *rows[LANES];
        int n = LDM_MIN(LANES, s->in_ch - ic0), col = lo;
        for (int l = 0; l < n; l++) rows[l] = src + (size_t)(ic0 + l) * plane;
        if (n == LANES)
            for (; col + LANES <= hi; col += LANES) {
                float dup[LANES][LANES];
                const float *at[LANES];
                int iw = c0 + col; /* >= 0 from col = lo on */
                for (int l = 0; l < LANES; l++) {
                    for (int k = 0; k < LANES; k++) dup[l][k] = rows[l][(iw + k) / 2];
                    at[l] = dup[l];
                }
                transpose8(at, dst + (size_t)col * p->ic8 + ic0, (size_t)p->ic8);
            }
        for (; col < hi; col++) {
            float *d = dst + (size_t)col * p->ic8 + ic0;
            int sc = (c0 + col) / 2;
            for (int l = 0; l < n; l++) d[l] = rows[l][sc];
            for (int l = n; l < LANES; l++) d[l] = 0.0f;
        }
    }
}

LK_BODY void stage_row_body(const in_job *j, int i)
{
    const wg_plan *p = j->p;
    const lk_conv2d_shape *s = p->s;
    float *dst = p->S + (size_t)i * p->stage_w * p->ic8;
    int ih = j->ty0 * p->Mo - s->pad_top + i;
    if (ih < 0 || ih >= s->in_h) {
        memset(dst, 0, sizeof(float) * (size_t)p->stage_w * p->ic8);
        return;
    }
    /* columns outside the image, then the image columns 8 channels at a time: 8 sequential
     * reads, transposed 8 columns at a time into contiguous writes */
    int lo = LDM_MAX(0, LDM_MIN(s->pad_left - p->col0, p->stage_w));
    int hi = LDM_MAX(lo, LDM_MIN(p->stage_w, s->pad_left + s->in_w - p->col0));
    memset(dst, 0, sizeof(float) * (size_t)lo * p->ic8);
    if (hi < p->stage_w) memset(dst + (size_t)hi * p->ic8, 0, sizeof(float) * (size_t)(p->stage_w - hi) * p->ic8);
    if (p->up2) {
        stage_row_up2(j, dst, ih, lo, hi);
        return;
    }
    size_t plane = (size_t)s->in_h * s->in_w;
    const float *src = j->x + (size_t)ih * s->in_w - s->pad_left + p->col0;
    for (int ic0 = 0; ic0 < p->ic8; ic0 += LANES) {
        const float *rows[LANES];
        int n = LDM_MIN(LANES, s->in_ch - ic0), col = lo;
        for (int l = 0; l < n; l++) rows[l] = src + (size_t)(ic0 + l) * plane;
        if (n == LANES)
            for (; col + LANES <= hi; col += LANES) {
                const float *at[LANES];
                for (int l = 0; l < LANES; l++) at[l] = rows[l] + col;
                transpose8(at, dst + (size_t)col * p->ic8 + ic0, (size_t)p->ic8);
            }
        for (; col < hi; col++) {
            float *d = dst + (size_t)col * p->ic8 + ic0;
            for (int l = 0; l < n; l++) d[l] = rows[l][col];
            for (int l = n; l < LANES; l++) d[l] = 0.0f;
        }
    }
}

/* z -> B^T z for the 6-point input transform. */
LK_BODY void bt6(const v8f *z, int sz, v8f *o, int so)
{
    v8f z0 = z[0], z1 = z[sz], z2 = z[2 * sz], z3 = z[3 * sz], z4 = z[4 * sz], z5 = z[5 * sz];
    o[0] = SPLAT(4.0f) * z0 - SPLAT(5.0f) * z2 + z4;
    o[so] = SPLAT(-4.0f) * (z1 + z2) + (z3 + z4);
    o[2 * so] = SPLAT(4.0f) * (z1 - z2) + (z4 - z3);
    o[3 * so] = SPLAT(2.0f) * (z3 - z1) + (z4 - z2);
    o[4 * so] = SPLAT(2.0f) * (z1 - z3) + (z4 - z2);
    o[5 * so] = SPLAT(4.0f) * z1 - SPLAT(5.0f) * z3 + z5;
}

/* F(2,3): rows (1,0,-1,0), (0,1,1,0), (0,-1,1,0), (0,1,0,-1). */
LK_BODY void bt4(const v8f *z, int sz, v8f *o, int so)
{
    v8f z0 = z[0], z1 = z[sz], z2 = z[2 * sz], z3 = z[3 * sz];
    o[0] = z0 - z2;
    o[so] = z1 + z2;
    o[2 * so] = z2 - z1;
    o[3 * so] = z1 - z3;
}

LK_BODY void btf(int T, const v8f *z, int sz, v8f *o, int so)
{
    if (T == 6)
        bt6(z, sz, o, so);
    else
        bt4(z, sz, o, so);
}

/* V[xi][t][ic] = (B^T d B)[xi] for the tiles of one task, 8 channels at a time. */
LK_BODY void input_transform_body(const in_job *j, int task, const int T)
{
    const int Mo = T - 2, XI = T * T;
    const wg_plan *p = j->p;
    int t1 = LDM_MIN(j->nt, (task + 1) * WG_TILES_PER_TASK);
    size_t xi_stride = (size_t)p->tb * p->ic8, row = (size_t)p->stage_w * p->ic8;
    for (int t = task * WG_TILES_PER_TASK; t < t1; t++) {
        int tile = j->t0 + t, ty = tile / p->tiles_x - j->ty0, tx = tile % p->tiles_x;
        const float *patch = p->S + (size_t)(ty * Mo) * row + (size_t)(tx * Mo - p->col0) * p->ic8;
        float *v = p->V + (size_t)(j->r0 + t) * p->ic8;
        for (int ic0 = 0; ic0 < p->ic8; ic0 += LANES) {
            v8f d[WG_XIMAX], h[WG_XIMAX], o[WG_XIMAX];
            for (int r = 0; r < T; r++)
                for (int c = 0; c < T; c++) LOAD(d[r * T + c], patch + r * row + (size_t)c * p->ic8 + ic0);
            for (int r = 0; r < T; r++) btf(T, d + r * T, 1, h + r * T, 1); /* rows: d B */
            for (int k = 0; k < T; k++) btf(T, h + k, T, o + k, T);         /* columns: B^T (d B) */
            for (int xi = 0; xi < XI; xi++) STORE(v + xi * xi_stride + ic0, o[xi]);
        }
    }
}

/* ---------------------------------------------------------------- products and output transform */

typedef struct prod_job {
    const wg_plan *p;
    const float *bias;
    float *y; /* this image [OC,OH,OW] (output transform) */
    int og0, ogn;
    int t0, nt; /* tiles of this image (output transform), or rows of the block (products) */
    int r0;     /* row of tile t0 in the block's M */
    const float *res; /* this image's residual (output transform), or NULL */
} prod_job;

/* One of the 36 products M[xi] = V[xi] U[xi]^T over the whole channel group and tile block:
 * large enough that packing the operands is cheap next to the multiply-adds. */
static void product_task(void *arg, int xi)
{
    const prod_job *j = arg;
    const wg_plan *p = j->p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->nt, j->ogn, p->s->in_ch, 1.0f,
                p->V + (size_t)xi * p->tb * p->ic8, p->ic8, p->U + (size_t)xi * j->ogn * p->ic8, p->ic8, 0.0f,
                p->M + (size_t)xi * p->tb * p->og8, p->og8);
}

/* z -> A^T z for the 4-point output transform. */
LK_BODY void at4(const v8f *z, int sz, v8f *o, int so)
{
    v8f z0 = z[0], z1 = z[sz], z2 = z[2 * sz], z3 = z[3 * sz], z4 = z[4 * sz], z5 = z[5 * sz];
    v8f p12 = z1 + z2, m12 = z1 - z2, p34 = z3 + z4, m34 = z3 - z4;
    o[0] = z0 + p12 + p34;
    o[so] = m12 + SPLAT(2.0f) * m34;
    o[2 * so] = p12 + SPLAT(4.0f) * p34;
    o[3 * so] = m12 + SPLAT(8.0f) * m34 + z5;
}

/* F(2,3): rows (1,1,1,0), (0,1,-1,-1). */
LK_BODY void at2(const v8f *z, int sz, v8f *o, int so)
{
    v8f z0 = z[0], z1 = z[sz], z2 = z[2 * sz], z3 = z[3 * sz];
    o[0] = z0 + z1 + z2;
    o[so] = z1 - z2 - z3;
}

LK_BODY void atf(int T, const v8f *z, int sz, v8f *o, int so)
{
    if (T == 6)
        at4(z, sz, o, so);
    else
        at2(z, sz, o, so);
}

/* A 4x4 transpose in each half: u[k][4h + c] = q[c][4h + k]. Its own inverse. */
LK_BODY void transpose4_halves(const v8f *q, v8f *u)
{
    v8f t0 = SHUFFLE(q[0], q[1], 0, 8, 1, 9, 4, 12, 5, 13), t1 = SHUFFLE(q[0], q[1], 2, 10, 3, 11, 6, 14, 7, 15);
    v8f t2 = SHUFFLE(q[2], q[3], 0, 8, 1, 9, 4, 12, 5, 13), t3 = SHUFFLE(q[2], q[3], 2, 10, 3, 11, 6, 14, 7, 15);
    u[0] = SHUFFLE(t0, t2, 0, 1, 8, 9, 4, 5, 12, 13);
    u[1] = SHUFFLE(t0, t2, 2, 3, 10, 11, 6, 7, 14, 15);
    u[2] = SHUFFLE(t1, t3, 0, 1, 8, 9, 4, 5, 12, 13);
    u[3] = SHUFFLE(t1, t3, 2, 3, 10, 11, 6, 7, 14, 15);
}

/* Lane l of q[0..4) as four consecutive floats at rows[l] (a 4x8 transpose). */
LK_BODY void store_quads(const v8f *q, float *const rows[LANES])
{
    v8f u[4];
    transpose4_halves(q, u);
    for (int k = 0; k < 4; k++) { /* u[k] holds lanes k and k + 4 */
        memcpy(rows[k], &u[k], 4 * sizeof(float));
        memcpy(rows[k + 4], (const float *)&u[k] + 4, 4 * sizeof(float));
    }
}

/* The inverse: q[c] lane l = rows[l][c]. */
LK_BODY void load_quads(const float *const rows[LANES], v8f *q)
{
    v8f u[4];
    for (int k = 0; k < 4; k++) {
        memcpy(&u[k], rows[k], 4 * sizeof(float));
        memcpy((float *)&u[k] + 4, rows[k + 4], 4 * sizeof(float));
    }
    transpose4_halves(u, q);
}

/* The epilogue on n outputs just stored at d (still in L1): + res, then ReLU, exactly as the
 * separate passes would do it. */
LK_BODY void epilogue(float *d, const float *res, int n, int relu)
{
    for (int i = 0; i < n; i++) {
        float v = res ? d[i] + res[i] : d[i];
        d[i] = relu && !(v > 0.0f) ? 0.0f : v;
    }
}

/* Rows of nh x nw outputs of n channels at dst (res at the same offsets) through the epilogue. */
LK_BODY void epilogue_tile(const prod_job *j, float *dst, size_t off, int n, int nh, int nw)
{
    const wg_plan *p = j->p;
    size_t plane = (size_t)p->OH * p->OW;
    for (int l = 0; l < n; l++)
        for (int r = 0; r < nh; r++) {
            size_t at = (size_t)l * plane + (size_t)r * p->OW;
            epilogue(dst + at, j->res ? j->res + off + at : NULL, nw, p->relu);
        }
}

/* y = A^T M A + bias (then the epilogue) for the tiles of one task, 8 output channels at a time. */
LK_BODY void output_transform_body(const prod_job *j, int task, const int T)
{
    const int Mo = T - 2, XI = T * T;
    const wg_plan *p = j->p;
    int t1 = LDM_MIN(j->nt, (task + 1) * WG_TILES_PER_TASK);
    size_t xi_stride = (size_t)p->tb * p->og8, plane = (size_t)p->OH * p->OW;
    for (int t = task * WG_TILES_PER_TASK; t < t1; t++) {
        int tile = j->t0 + t, oh0 = (tile / p->tiles_x) * Mo, ow0 = (tile % p->tiles_x) * Mo;
        int nh = LDM_MIN(Mo, p->OH - oh0), nw = LDM_MIN(Mo, p->OW - ow0);
        const float *m = p->M + (size_t)(j->r0 + t) * p->og8;
        for (int o0 = 0; o0 < j->ogn; o0 += LANES) {
            int n = LDM_MIN(LANES, j->ogn - o0);
            v8f z[WG_XIMAX], q[WG_XIMAX], out[WG_XIMAX], b = SPLAT(0.0f);
            for (int xi = 0; xi < XI; xi++) LOAD(z[xi], m + xi * xi_stride + o0);
            for (int k = 0; k < T; k++) atf(T, z + k, T, q + k, T);          /* A^T M: columns */
            for (int a = 0; a < Mo; a++) atf(T, q + a * T, 1, out + a * Mo, 1); /* (A^T M) A: rows */
            if (j->bias) {
                float bl[LANES] = {0};
                memcpy(bl, j->bias + j->og0 + o0, sizeof(float) * n);
                LOAD(b, bl);
            }
            for (int e = 0; e < Mo * Mo; e++) out[e] += b;
            size_t off = (size_t)(j->og0 + o0) * plane + (size_t)oh0 * p->OW + ow0;
            float *dst = j->y + off;
            if (Mo == 4 && n == LANES && nh == 4 && nw == 4) { /* a whole tile: rows of 4 per channel */
                for (int r = 0; r < 4; r++) {
                    float *rows[LANES];
                    for (int l = 0; l < LANES; l++) rows[l] = dst + (size_t)l * plane + (size_t)r * p->OW;
                    if (j->res) { /* the epilogue in registers: the same operations as epilogue() */
                        const float *rrows[LANES];
                        v8f rq[4];
                        for (int l = 0; l < LANES; l++)
                            rrows[l] = j->res + off + (size_t)l * plane + (size_t)r * p->OW;
                        load_quads(rrows, rq);
                        for (int c = 0; c < 4; c++) out[r * 4 + c] += rq[c];
                    }
                    if (p->relu)
                        for (int c = 0; c < 4; c++) {
                            v8f v = out[r * 4 + c];
                            out[r * 4 + c] = SELECT(v > SPLAT(0.0f), v, SPLAT(0.0f));
                        }
                    store_quads(out + r * 4, rows);
                }
                continue;
            }
            for (int l = 0; l < n; l++) /* a partial tile or channel group */
                for (int r = 0; r < nh; r++) {
                    float *row = dst + (size_t)l * plane + (size_t)r * p->OW;
                    for (int c = 0; c < nw; c++) row[c] = out[r * Mo + c][l];
                }
            if (j->res || p->relu) epilogue_tile(j, dst, off, n, nh, nw);
        }
    }
}

/* ---------------------------------------------------------------- baseline and AVX2 entry points */

/* Each body is instantiated for both tile sizes: its loops then have constant bounds. */
#define WG_ENTRY(name, body, job_t, attr)                                                          \
    static attr void name(void *arg, int i)                                                       \
    {                                                                                              \
        const job_t *j = arg;                                                                      \
        if (j->p->T == 6)                                                                          \
            body(j, i, 6);                                                                         \
        else                                                                                       \
            body(j, i, 4);                                                                         \
    }
#define WG_NOATTR
WG_ENTRY(weight_transform_task, weight_transform_body, wt_job, WG_NOATTR)
WG_ENTRY(input_transform_task, input_transform_body, in_job, WG_NOATTR)
WG_ENTRY(output_transform_task, output_transform_body, prod_job, WG_NOATTR)
static void stage_row_task(void *arg, int i) { stage_row_body(arg, i); }
#ifdef LK_TWIN /* AVX2 on x86-64, NEON with FMA on aarch64 (the *_avx2 names stand for both) */
WG_ENTRY(weight_transform_avx2, weight_transform_body, wt_job, LK_TWIN)
WG_ENTRY(input_transform_avx2, input_transform_body, in_job, LK_TWIN)
WG_ENTRY(output_transform_avx2, output_transform_body, prod_job, LK_TWIN)
static LK_TWIN void stage_row_avx2(void *arg, int i) { stage_row_body(arg, i); }
#endif

typedef void (*task_fn)(void *arg, int task);
typedef struct wg_fns {
    task_fn weights, stage, input, output;
} wg_fns;

static wg_fns pick_fns(void)
{
    wg_fns f = {weight_transform_task, stage_row_task, input_transform_task, output_transform_task};
#ifdef LK_TWIN
    if (LK_USE_TWIN())
        f = (wg_fns){weight_transform_avx2, stage_row_avx2, input_transform_avx2, output_transform_avx2};
#endif
    return f;
}

/* ---------------------------------------------------------------- driver */

/* Parts of at most `most` (at least 1) that cut n into as few, equal pieces as possible, rounded
 * up to a multiple of `align` (but not past n): e.g. 130 tiles at most 128 -> 2 x 72, not 128 + 2. */
static int balanced(long n, size_t most, int align)
{
    long parts = (long)((n + (long)LDM_MAX(most, (size_t)1) - 1) / (long)LDM_MAX(most, (size_t)1));
    long each = (n + parts - 1) / parts;
    each = (each + align - 1) / align * align;
    return (int)LDM_MIN(each, n);
}

static void plan_free(wg_plan *p)
{
    lk_scratch_put(p->U, p->bytes[0]);
    lk_scratch_put(p->V, p->bytes[1]);
    lk_scratch_put(p->M, p->bytes[2]);
    lk_scratch_put(p->S, p->bytes[3]);
}

/* Scratch to ask for: a buffer of more than a quarter of its budget is asked for at the whole
 * budget, so that the layers of a network, whose needs differ a little, all reuse one cached
 * buffer instead of allocating (and page-faulting) a larger one every few calls. Pages past the
 * need are never touched, so they cost address space, not memory. */
static size_t request_bytes(size_t need, size_t budget_floats)
{
    size_t budget = budget_floats * sizeof(float);
    return need > budget / 4 && need < budget ? budget : need;
}

/* Products with few input channels (K) go to lk_gemm_small's register-blocked kernel instead of
 * BLAS: at K = 64 OpenBLAS's packing of both operands and its zeroing of M for beta = 0 take a
 * third of the product time (docs/performance.md, TAESD), while the unpacked kernel reads V in
 * place and U[xi] from the panels the weight transform writes (no copy). It needs whole panels
 * of 16 output channels in every group and the AVX2+FMA kernel (elsewhere BLAS keeps the
 * products, as lk_gemm does). A rule on the shape and the CPU alone, never the thread count.
 * Measured (whole convolution, 1 thread, CPU time, Zen 3): K = 64 10-17 % faster at 64^2-512^2,
 * K = 96 and 128 6-12 %, K = 256 even, K = 320 and 512 5-10 % slower: BLAS keeps those. */
#define WG_UNPACKED_MAX_K 128
static int products_unpacked(const lk_conv2d_shape *s, int og, int XI)
{
#ifdef LK_DISPATCH
    return lk_cpu_has_avx2_fma() && s->in_ch <= WG_UNPACKED_MAX_K && og % 16 == 0 && s->out_ch % 16 == 0 &&
           XI <= LK_GEMM_BATCH_MAX;
#else
    (void)s, (void)og, (void)XI;
    return 0;
#endif
}

/* Tiling and blocking of the plan, from the shape alone. */
static void plan_shape(wg_plan *p)
{
    const lk_conv2d_shape *s = p->s;
    int OC = s->out_ch;
    p->ic8 = round8(s->in_ch);
    p->tiles_x = (p->OW + p->Mo - 1) / p->Mo;
    p->tiles = p->tiles_x * ((p->OH + p->Mo - 1) / p->Mo);
    p->og = balanced(OC, LDM_MAX((size_t)WG_MIN_GROUP, WG_U_BUDGET / ((size_t)p->XI * p->ic8)), 8);
    p->og8 = round8(p->og);
    p->panels = products_unpacked(s, p->og, p->XI);
    size_t per_tile = (size_t)p->XI * (size_t)LDM_MAX(p->ic8, p->og8);
    p->tb = balanced((long)p->tiles * s->batch, LDM_MAX((size_t)16, WG_V_BUDGET / per_tile), 8);
    p->stage_w = p->tiles_x * p->Mo + 2;
    /* the tiles of one image in a block of tb, starting anywhere in a tile row, span at most
     * this many tile rows */
    int block_rows = LDM_MIN((p->tb + p->tiles_x - 1) / p->tiles_x + 1, p->tiles / p->tiles_x);
    p->stage_rows = block_rows * p->Mo + 2;
    p->bytes[0] = request_bytes(sizeof(float) * p->XI * (size_t)p->og * p->ic8, WG_U_BUDGET);
    p->bytes[1] = request_bytes(sizeof(float) * p->XI * (size_t)p->tb * p->ic8, WG_V_BUDGET);
    p->bytes[2] = request_bytes(sizeof(float) * p->XI * (size_t)p->tb * p->og8, WG_V_BUDGET);
    p->bytes[3] = sizeof(float) * (size_t)p->stage_rows * p->stage_w * p->ic8;
}

static wg_plan plan_make(const lk_conv2d_shape *s, int m, int up2)
{
    wg_plan p = {.s = s,
                 .OH = lk_conv2d_out_h(s),
                 .OW = lk_conv2d_out_w(s),
                 .up2 = up2,
                 .T = m + 2,
                 .Mo = m,
                 .XI = (m + 2) * (m + 2)};
    plan_shape(&p);
    return p;
}

void lk_winograd_blocking(const lk_conv2d_shape *s, int m, int *tiles_per_block, int *channels_per_group)
{
    wg_plan p = plan_make(s, m, 0);
    *tiles_per_block = p.tb;
    *channels_per_group = p.og;
}

int lk_winograd_unpacked(const lk_conv2d_shape *s, int m) { return plan_make(s, m, 0).panels; }

static ldm_status plan_alloc(wg_plan *p)
{
    float **bufs[4] = {&p->U, &p->V, &p->M, &p->S};
    for (int i = 0; i < 4; i++) {
        *bufs[i] = lk_scratch_get(p->bytes[i]);
        if (!*bufs[i]) {
            plan_free(p);
            return ldm_fail_context(ldm_alloc_failure_status(), "conv2d (winograd) scratch: ");
        }
    }
    return LDM_OK;
}

/* Stage and transform the tiles [t0, t0 + n) of image b into rows [r0, r0 + n) of V. */
static void transform_input(const wg_plan *p, const wg_fns *f, const lctx *c, const float *x, int b, int t0, int n,
                            int r0)
{
    const lk_conv2d_shape *s = p->s;
    const float *xb = x + (size_t)b * s->in_ch * s->in_h * s->in_w / (p->up2 ? 4 : 1);
    int ty0 = t0 / p->tiles_x;
    int rows = ((t0 + n - 1) / p->tiles_x - ty0 + 1) * p->Mo + 2;
    in_job ij = {p, xb, t0, n, ty0, r0};
    /* staging copies rows of the input; the transform reads n staged tiles and writes them */
    lpool_run(lk_pool_for_bytes(c, 8.0 * rows * p->stage_w * s->in_ch), rows, f->stage, &ij);
    lpool_run(lk_pool_for_bytes(c, 8.0 * n * p->XI * p->ic8), (n + WG_TILES_PER_TASK - 1) / WG_TILES_PER_TASK,
              f->input, &ij);
}

/* All tiles of all images for output channels [og0, og0 + ogn), whose U is ready. A block of tb
 * tiles may span images (the batch is one long run of tiles), so that small images still give
 * the products many rows; staging and the transforms go image by image. */
static void run_group(const wg_plan *p, const wg_fns *f, const lctx *c, const float *x, const float *bias, float *y,
                      int og0, int ogn)
{
    const lk_conv2d_shape *s = p->s;
    long total = (long)p->tiles * s->batch;
    for (long g0 = 0; g0 < total; g0 += p->tb) {
        int nt = (int)LDM_MIN((long)p->tb, total - g0);
        for (long g = g0; g < g0 + nt;) { /* the block's part of each image */
            int b = (int)(g / p->tiles), t0 = (int)(g % p->tiles);
            int n = (int)LDM_MIN((long)(p->tiles - t0), g0 + nt - g);
            transform_input(p, f, c, x, b, t0, n, (int)(g - g0));
            g += n;
        }
        if (p->panels) {
            lk_gemm_small_batched(c, p->XI, nt, ogn, s->in_ch, p->V, (size_t)p->tb * p->ic8, p->ic8, p->U,
                                  (size_t)ogn * s->in_ch, p->M, (size_t)p->tb * p->og8, p->og8);
        } else {
            prod_job pj = {p, bias, NULL, og0, ogn, 0, nt, 0, NULL};
            lpool_run(lk_pool_for_flops(c, 2.0 * p->XI * ogn * s->in_ch * nt), p->XI, product_task, &pj);
        }
        for (long g = g0; g < g0 + nt;) {
            int b = (int)(g / p->tiles), t0 = (int)(g % p->tiles);
            int n = (int)LDM_MIN((long)(p->tiles - t0), g0 + nt - g);
            size_t image = (size_t)b * s->out_ch * p->OH * p->OW;
            prod_job oj = {p, bias, y + image, og0, ogn, t0, n, (int)(g - g0), p->res ? p->res + image : NULL};
            lpool *pool = lk_pool_for_bytes(c, 8.0 * n * p->XI * ogn); /* M read, y written */
            lpool_run(pool, (n + WG_TILES_PER_TASK - 1) / WG_TILES_PER_TASK, f->output, &oj);
            g += n;
        }
    }
}

/* ---------------------------------------------------------------- fused blocks */

/* With unpacked products and one group of output channels, a block of WG_FUSED_TILES tiles of one
 * tile row goes through all four phases on one thread (stage its window of the input, transform,
 * the XI products, the output transform), its staged input, V and M in that thread's own small
 * scratch, which stays in the core's caches: the large-block path streams V and M (16 MiB each)
 * through memory, and its output transform, reading the 36 values of a tile from 36 places
 * 466 KB apart, waited on cache and TLB misses for a third of its time (perf, TAESD at 512^2);
 * the workers also meet only once per call instead of four times per block.
 * Every output element sees the same operations in the same order as in the large-block path
 * (the transforms are elementwise over channels, each product element one FMA chain in channel
 * order), so results are bitwise the same as that path's and any thread count's. */
/* Tiles per fused block: a multiple of lk_gemm_small's 6-row register block. Measured on a TAESD
 * decode at 512^2 (1 thread, best CPU time): 16 tiles 1.09-1.15 s, 18-30 0.95-1.03 s, 36
 * 0.95-0.98 s. At 64 channels a worker's scratch is then 0.9 MB (staged window 224 KB, V and M
 * 332 KB each). */
#define WG_FUSED_TILES 36

static int fused_on = 1;
void lk_winograd_fused_enable(int on) { fused_on = on; }

static int fused_applies(const wg_plan *p) { return fused_on && p->panels && p->og == p->s->out_ch; }

typedef struct fused_job {
    const wg_plan *p;
    const wg_fns *f;
    const float *x, *bias;
    float *y;
    float *scratch;     /* per worker: staged window, V, M */
    size_t slot;        /* floats per worker */
    int blocks_x;       /* blocks per tile row */
    long blocks;        /* of the whole batch */
    atomic_long next;   /* the next block to take */
} fused_job;

static size_t fused_s_floats(const wg_plan *p) { return (size_t)p->T * (WG_FUSED_TILES * p->Mo + 2) * p->ic8; }
static size_t fused_v_floats(const wg_plan *p) { return (size_t)p->XI * WG_FUSED_TILES * p->ic8; }
static size_t fused_m_floats(const wg_plan *p) { return (size_t)p->XI * WG_FUSED_TILES * p->og8; }

static void fused_block(const fused_job *fj, float *slot, long bi)
{
    const wg_plan *p = fj->p;
    const lk_conv2d_shape *s = p->s;
    int rows = p->tiles / p->tiles_x, b = (int)(bi / ((long)rows * fj->blocks_x));
    int in_img = (int)(bi % ((long)rows * fj->blocks_x)), ty = in_img / fj->blocks_x;
    int tx0 = (in_img % fj->blocks_x) * WG_FUSED_TILES, n = LDM_MIN(WG_FUSED_TILES, p->tiles_x - tx0);
    wg_plan q = *p; /* the block's window: its own scratch, V and M strides of WG_FUSED_TILES rows */
    q.S = slot;
    q.V = q.S + fused_s_floats(p);
    q.M = q.V + fused_v_floats(p);
    q.tb = WG_FUSED_TILES;
    q.stage_w = n * p->Mo + 2;
    q.col0 = tx0 * p->Mo;
    int t0 = ty * p->tiles_x + tx0;
    const float *xb = fj->x + (size_t)b * s->in_ch * s->in_h * s->in_w / (p->up2 ? 4 : 1);
    in_job ij = {&q, xb, t0, n, ty, 0};
    for (int i = 0; i < p->T; i++) fj->f->stage(&ij, i);
    for (int k = 0; k * WG_TILES_PER_TASK < n; k++) fj->f->input(&ij, k);
    lctx serial = {0};
    lk_gemm_small_batched(&serial, p->XI, n, s->out_ch, s->in_ch, q.V, (size_t)q.tb * p->ic8, p->ic8, p->U,
                          (size_t)s->out_ch * s->in_ch, q.M, (size_t)q.tb * p->og8, p->og8);
    size_t image = (size_t)b * s->out_ch * p->OH * p->OW;
    prod_job oj = {&q, fj->bias, fj->y + image, 0, s->out_ch, t0, n, 0, p->res ? p->res + image : NULL};
    for (int k = 0; k * WG_TILES_PER_TASK < n; k++) fj->f->output(&oj, k);
}

static void fused_task(void *arg, int worker)
{
    fused_job *fj = arg;
    float *slot = fj->scratch + (size_t)worker * fj->slot;
    for (long bi; (bi = atomic_fetch_add(&fj->next, 1)) < fj->blocks;) fused_block(fj, slot, bi);
}

static ldm_status run_fused(const wg_plan *p, const wg_fns *f, const lctx *c, const float *x, const float *bias,
                            float *y)
{
    const lk_conv2d_shape *s = p->s;
    fused_job fj = {.p = p, .f = f, .x = x, .bias = bias, .y = y};
    fj.blocks_x = (p->tiles_x + WG_FUSED_TILES - 1) / WG_FUSED_TILES;
    fj.blocks = (long)s->batch * (p->tiles / p->tiles_x) * fj.blocks_x;
    fj.slot = (fused_s_floats(p) + fused_v_floats(p) + fused_m_floats(p) + 15) & ~(size_t)15;
    lpool *pool = lk_pool_for_flops(c, 2.0 * p->XI * s->out_ch * s->in_ch * p->tiles * s->batch);
    int workers = (int)LDM_MIN((long)lctx_threads(c), fj.blocks);
    if (!pool) workers = 1;
    size_t bytes = sizeof(float) * fj.slot * workers;
    fj.scratch = lk_scratch_get(bytes);
    if (!fj.scratch) return ldm_fail_context(ldm_alloc_failure_status(), "conv2d (winograd) scratch: ");
    atomic_init(&fj.next, 0);
    lpool_run(pool, workers, fused_task, &fj);
    lk_scratch_put(fj.scratch, bytes);
    return LDM_OK;
}

static ldm_status winograd(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w, const float *bias,
                           float *y, int m, int up2, const lk_conv_ep *ep)
{
    if (m != 2 && m != 4) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "conv2d: no Winograd F(%dx%d,3x3)", m, m);
    if (s->batch <= 0 || s->out_ch <= 0 || lk_conv2d_out_h(s) <= 0 || lk_conv2d_out_w(s) <= 0) return LDM_OK;
    wg_plan p = plan_make(s, m, up2);
    p.res = ep ? ep->res : NULL;
    p.relu = ep ? ep->relu : 0;
    wg_fns f = pick_fns();
    if (fused_applies(&p)) {
        p.U = lk_scratch_get(p.bytes[0]);
        if (!p.U) return ldm_fail_context(ldm_alloc_failure_status(), "conv2d (winograd) scratch: ");
        wt_job wj = {&p, w, 0, s->out_ch};
        lpool_run(lk_pool_for_bytes(c, 4.0 * s->out_ch * s->in_ch * (9 + p.XI)), s->out_ch, f.weights, &wj);
        ldm_status st = run_fused(&p, &f, c, x, bias, y);
        lk_scratch_put(p.U, p.bytes[0]);
        return st;
    }
    LDM_TRY(plan_alloc(&p));
    lk_blas_init();
    for (int og0 = 0; og0 < s->out_ch; og0 += p.og) {
        int ogn = LDM_MIN(p.og, s->out_ch - og0);
        wt_job wj = {&p, w, og0, ogn};
        double bytes = 4.0 * ogn * s->in_ch * (9 + p.XI); /* kernels read, transforms written */
        lpool_run(lk_pool_for_bytes(c, bytes), ogn, f.weights, &wj);
        run_group(&p, &f, c, x, bias, y, og0, ogn);
    }
    plan_free(&p);
    return LDM_OK;
}

ldm_status lk_conv3x3_winograd(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                               const float *bias, float *y, int m)
{
    return winograd(c, s, x, w, bias, y, m, 0, NULL);
}

ldm_status lk_conv3x3_winograd_ep(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                  const float *bias, float *y, int m, const lk_conv_ep *ep)
{
    return winograd(c, s, x, w, bias, y, m, 0, ep);
}

ldm_status lk_conv3x3_winograd_up2(const lctx *c, const lk_conv2d_shape *s, const float *x, lk_wt w,
                                   const float *bias, float *y, int m)
{
    if (s->in_h % 2 || s->in_w % 2)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "conv2d: upsampled input %dx%d is not even", s->in_h, s->in_w);
    return winograd(c, s, x, w, bias, y, m, 1, NULL);
}
