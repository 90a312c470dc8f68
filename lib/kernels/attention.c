/* attention.c - scaled dot-product attention over strided views, tiled with an online softmax.
 *
 * For each (batch, head) the queries are processed in tiles of ATT_TQ rows; for each tile the
 * keys are visited in tiles of ATT_TK columns: S = scale * Q K^T is one small sgemm, the running
 * row maximum and denominator are updated (the "online softmax": when the maximum grows, what was
 * accumulated so far is rescaled by exp(old max - new max)), and the un-normalised output is
 * accumulated with a second sgemm O += P V. The full Tq x Tk score matrix never exists, so a
 * 4096-token self-attention needs a few hundred KiB of scratch per thread instead of 64 MiB per
 * head. Views whose rows or columns are contiguous are handed to BLAS in place (row-major [T,D]
 * for the [B,T,H*D] layouts, transposed for the channels-first legacy layout); any other view is
 * packed into a tile buffer first. A query tile is one unit of work; the pool's threads pull
 * units from a shared counter (causal tiles differ in cost) and each thread owns its scratch.
 * Every unit is computed the same way whichever thread takes it, so results do not depend on the
 * thread count. Causal masking skips key tiles entirely beyond the diagonal. The exponentials
 * use the vector exp of vexp.c: with libm's scalar expf they cost as much as both products. */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#define ATT_TQ 128 /* query rows per unit */
#define ATT_TK 512 /* keys per score tile */

/* How one (b,h) slice of a view is handed to BLAS as the logical [T, D] matrix. */
typedef enum { MAT_ROWS, MAT_COLS, MAT_PACK } mat_mode;

typedef struct mat_layout {
    mat_mode mode;
    int ld; /* leading dimension for MAT_ROWS / MAT_COLS */
} mat_layout;

static mat_layout layout_of(lk_view v, int T, int D)
{
    mat_layout l = {MAT_PACK, 0};
    if (v.sd == 1 && (T == 1 || (v.st >= D && v.st <= 0x7fffffff))) {
        l.mode = MAT_ROWS; /* element (t,d) at t*st + d */
        l.ld = T == 1 ? LDM_MAX(D, 1) : (int)v.st;
    } else if (v.st == 1 && (D == 1 || (v.sd >= T && v.sd <= 0x7fffffff))) {
        l.mode = MAT_COLS; /* element (t,d) at d*sd + t: a [D,T] row-major matrix */
        l.ld = D == 1 ? LDM_MAX(T, 1) : (int)v.sd;
    }
    return l;
}

/* A tile [t0, t0+n) x D of one slice ready for BLAS: pointer, leading dimension and whether it
 * is stored transposed ([D, n]). */
typedef struct mat_tile {
    const float *p;
    int ld, trans;
} mat_tile;

static mat_tile tile_of(lk_view v, mat_layout l, const float *base, int t0, int n, int D, float *pack)
{
    mat_tile m;
    if (l.mode == MAT_ROWS) {
        m.p = base + (long)t0 * v.st, m.ld = l.ld, m.trans = 0;
    } else if (l.mode == MAT_COLS) {
        m.p = base + t0, m.ld = l.ld, m.trans = 1;
    } else {
        for (int t = 0; t < n; t++)
            for (int d = 0; d < D; d++) pack[(size_t)t * D + d] = base[(long)(t0 + t) * v.st + (long)d * v.sd];
        m.p = pack, m.ld = LDM_MAX(D, 1), m.trans = 0;
    }
    return m;
}

typedef struct att_job {
    int H, Tq, Tk, D, causal;
    float scale;
    lk_view q, k, v, out;
    mat_layout lq, lk, lv;
    int q_tiles;
    long units;
    atomic_long next_unit;
    float *scratch;
    size_t scratch_per_task;
} att_job;

/* Per-thread scratch: scores S [TQ,TK], accumulator O [TQ,D], row max and sum, pack buffers. */
typedef struct att_scratch {
    float *s, *o, *mx, *sum, *qp, *kp, *vp;
} att_scratch;

static size_t scratch_floats(int D) { return (size_t)ATT_TQ * ATT_TK + (size_t)ATT_TQ * D * 2 + 2 * ATT_TQ + (size_t)ATT_TK * D * 2; }

static att_scratch scratch_at(float *base, int D)
{
    att_scratch s;
    s.s = base;
    s.o = s.s + (size_t)ATT_TQ * ATT_TK;
    s.mx = s.o + (size_t)ATT_TQ * D;
    s.sum = s.mx + ATT_TQ;
    s.qp = s.sum + ATT_TQ;
    s.kp = s.qp + (size_t)ATT_TQ * D;
    s.vp = s.kp + (size_t)ATT_TK * D;
    return s;
}

/* Folds one score tile S[nq, nk] into the running max/sum; leaves P = exp(S - max) in S and
 * returns the per-row rescale factors of the previous accumulator in `corr`. Row i sees only its
 * first visible[i] keys of the tile (causal mask); the rest of its P row is set to zero. */
static void online_softmax_step(att_scratch *w, int nq, int nk, const int *visible, int first, float *corr)
{
    for (int i = 0; i < nq; i++) {
        float *srow = w->s + (size_t)i * ATT_TK;
        int nv = visible ? visible[i] : nk;
        float m = lk_vmax(srow, (size_t)nv);
        if (!first && w->mx[i] > m) m = w->mx[i];
        float add = lk_vexp_shift_sum(srow, (size_t)nv, m);
        for (int j = nv; j < nk; j++) srow[j] = 0.0f;
        corr[i] = 0.0f;
        if (!first) {
            float c = w->mx[i] - m;
            lk_vexp(&c, 1);
            corr[i] = c;
        }
        w->sum[i] = (first ? 0.0f : w->sum[i] * corr[i]) + add;
        w->mx[i] = m;
    }
}

static void attention_unit(att_job *j, long unit, att_scratch *w)
{
    int D = j->D;
    int qt = (int)(unit % j->q_tiles);
    long bh = unit / j->q_tiles;
    int b = (int)(bh / j->H), h = (int)(bh % j->H);
    int t0 = qt * ATT_TQ, nq = LDM_MIN(ATT_TQ, j->Tq - t0);
    const float *qb = j->q.p + (long)b * j->q.sb + (long)h * j->q.sh;
    const float *kb = j->k.p + (long)b * j->k.sb + (long)h * j->k.sh;
    const float *vb = j->v.p + (long)b * j->v.sb + (long)h * j->v.sh;
    mat_tile Q = tile_of(j->q, j->lq, qb, t0, nq, D, w->qp);
    /* Keys beyond the last query of the tile are invisible under the causal mask. */
    int n_keys = j->causal ? LDM_MIN(j->Tk, t0 + nq) : j->Tk;
    float corr[ATT_TQ];
    for (int s0 = 0; s0 < n_keys; s0 += ATT_TK) {
        int nk = LDM_MIN(ATT_TK, n_keys - s0);
        mat_tile K = tile_of(j->k, j->lk, kb, s0, nk, D, w->kp);
        /* S = scale * Q K^T; K stored [nk,D] needs a transpose, stored [D,nk] does not. */
        cblas_sgemm(CblasRowMajor, Q.trans ? CblasTrans : CblasNoTrans, K.trans ? CblasNoTrans : CblasTrans, nq, nk,
                    D, j->scale, Q.p, Q.ld, K.p, K.ld, 0.0f, w->s, ATT_TK);
        int visible[ATT_TQ], masked = j->causal && s0 + nk > t0 + 1;
        if (masked) /* query t sees keys s <= t: the first t + 1 - s0 of this tile */
            for (int i = 0; i < nq; i++) visible[i] = LDM_MAX(0, LDM_MIN(nk, t0 + i + 1 - s0));
        int first = s0 == 0;
        online_softmax_step(w, nq, nk, masked ? visible : NULL, first, corr);
        if (!first)
            for (int i = 0; i < nq; i++)
                for (int d = 0; d < D; d++) w->o[(size_t)i * D + d] *= corr[i];
        mat_tile V = tile_of(j->v, j->lv, vb, s0, nk, D, w->vp);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, V.trans ? CblasTrans : CblasNoTrans, nq, D, nk, 1.0f, w->s, ATT_TK,
                    V.p, V.ld, first ? 0.0f : 1.0f, w->o, LDM_MAX(D, 1));
    }
    float *ob = j->out.p + (long)b * j->out.sb + (long)h * j->out.sh;
    for (int i = 0; i < nq; i++) {
        float inv = 1.0f / w->sum[i];
        float *orow = ob + (long)(t0 + i) * j->out.st;
        for (int d = 0; d < D; d++) orow[(long)d * j->out.sd] = w->o[(size_t)i * D + d] * inv;
    }
}

static void attention_task(void *arg, int task)
{
    att_job *j = arg;
    att_scratch w = scratch_at(j->scratch + (size_t)task * j->scratch_per_task, j->D);
    for (;;) {
        long unit = atomic_fetch_add_explicit(&j->next_unit, 1, memory_order_relaxed);
        if (unit >= j->units) break;
        attention_unit(j, unit, &w);
    }
}

/* Empty key set: softmax over nothing; define the output as zeros rather than NaN. */
static void zero_output(int B, int H, int Tq, int D, lk_view out)
{
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < Tq; t++)
                for (int d = 0; d < D; d++) out.p[(long)b * out.sb + (long)h * out.sh + (long)t * out.st + (long)d * out.sd] = 0.0f;
}

ldm_status lk_attention_blas(const lctx *c, int B, int H, int Tq, int Tk, int D, lk_view q, lk_view k, lk_view v,
                             lk_view out, float scale, int causal)
{
    if (B <= 0 || H <= 0 || Tq <= 0 || D <= 0) return LDM_OK;
    if (Tk <= 0) {
        zero_output(B, H, Tq, D, out);
        return LDM_OK;
    }
    lk_blas_init();
    att_job j = {.H = H, .Tq = Tq, .Tk = Tk, .D = D, .causal = causal, .scale = scale, .q = q, .k = k, .v = v,
                 .out = out};
    j.lq = layout_of(q, Tq, D);
    j.lk = layout_of(k, Tk, D);
    j.lv = layout_of(v, Tk, D);
    j.q_tiles = (Tq + ATT_TQ - 1) / ATT_TQ;
    j.units = (long)B * H * j.q_tiles;
    atomic_init(&j.next_unit, 0);
    lpool *pool = lk_pool_for_flops(c, 4.0 * B * H * Tq * Tk * D); /* the two products */
    int tasks = pool ? (int)LDM_MIN((long)lpool_threads(pool), j.units) : 1;
    j.scratch_per_task = (scratch_floats(D) + 15) & ~(size_t)15;
    size_t bytes;
    if (ldm_mul_size(j.scratch_per_task, (size_t)tasks * sizeof(float), &bytes))
        return ldm_fail(LDM_ERR_LIMIT, "attention: scratch size overflow (head dim %d)", D);
    j.scratch = lk_scratch_get(bytes);
    if (!j.scratch) return ldm_fail_context(ldm_alloc_failure_status(), "attention scratch: ");
    lpool_run(pool, tasks, attention_task, &j);
    lk_scratch_put(j.scratch, bytes);
    return LDM_OK;
}

ldm_status lk_attention(const lctx *c, int B, int H, int Tq, int Tk, int D, lk_view q, lk_view k, lk_view v,
                        lk_view out, float scale, int causal)
{
    lk_stat_mark m = lk_stat_begin();
    ldm_status st;
    if (B > 0 && H > 0 && Tq > 0 && D > 0 && Tk > 0 && lk_attention_fused_available())
        st = lk_attention_fused(c, B, H, Tq, Tk, D, q, k, v, out, scale, causal);
    else
        st = lk_attention_blas(c, B, H, Tq, Tk, D, q, k, v, out, scale, causal);
    /* two products of Tq x Tk x D per (batch, head); causal counts the visible pairs only */
    double pairs = (double)Tq * (Tk > 0 ? Tk : 0);
    if (causal && Tk > 0) {
        double n = LDM_MIN(Tq, Tk);
        pairs = (double)(Tq - n) * Tk + n * (n + 1) / 2;
    }
    lk_stat_end(m, LK_OP_ATTENTION, 4.0 * B * H * pairs * D);
    return st;
}
