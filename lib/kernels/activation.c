/* activation.c - SiLU, exact GELU, QuickGELU, GEGLU and row softmax.
 *
 * Elementwise functions written as PyTorch defines them in float32: SiLU x*sigmoid(x), GELU with
 * erf (not the tanh approximation), QuickGELU x*sigmoid(1.702x) as CLIP uses it. The math is the
 * vectorised exp/erf of vexp.c (libm's expf/erff per element were the bottleneck; the erf there
 * is the same 1.5e-7 approximation PyTorch's vectorised CPU kernel uses).
 * The softmax subtracts the row maximum first (as PyTorch does, so large logits cannot overflow).
 * The plain entry points run on the calling thread (declared before contexts existed); the *_ctx
 * variants split the same loops over the pool in fixed chunks. Every output element depends only
 * on its own inputs, so the split cannot change a result. */
#include "kernels.h"

#include <string.h>

#define ACT_CHUNK 16384 /* elements per pool task */

#define GEGLU_BLOCK 256 /* gate values per vector-GELU batch */

/* Wall time of an activation on the thread that drives the network (see stats.c). */
#define ACT_TIMED(stmt)                                                                            \
    do {                                                                                           \
        lk_stat_mark m_ = lk_stat_begin();                                                         \
        stmt;                                                                                      \
        lk_stat_end(m_, LK_OP_ACTIVATION, 0);                                                      \
    } while (0)

void lk_silu(float *x, size_t n) { ACT_TIMED(lk_vsilu(x, n, 1.0f)); }
void lk_gelu(float *x, size_t n) { ACT_TIMED(lk_vgelu(x, n)); }
void lk_quick_gelu(float *x, size_t n) { ACT_TIMED(lk_vsilu(x, n, 1.702f)); }

static void geglu_run(const float *x, int rows, int dim, float *out)
{
    float g[GEGLU_BLOCK];
    for (int r = 0; r < rows; r++) {
        const float *a = x + (size_t)r * 2 * dim, *gate = a + dim;
        float *o = out + (size_t)r * dim;
        for (int i0 = 0; i0 < dim; i0 += GEGLU_BLOCK) {
            int m = LDM_MIN(GEGLU_BLOCK, dim - i0);
            memcpy(g, gate + i0, sizeof(float) * (size_t)m);
            lk_vgelu(g, (size_t)m);
            for (int i = 0; i < m; i++) o[i0 + i] = a[i0 + i] * g[i];
        }
    }
}

static void softmax_row(float *x, int cols)
{
    float mx = lk_vmax(x, (size_t)cols);
    float inv = 1.0f / lk_vexp_shift_sum(x, (size_t)cols, mx);
    for (int i = 0; i < cols; i++) x[i] *= inv;
}

static void softmax_rows_run(float *x, int rows, int cols)
{
    for (int r = 0; r < rows; r++) softmax_row(x + (size_t)r * cols, cols);
}

/* ---- pool-parallel variants */

typedef struct act_job {
    float *x;
    const float *in;
    size_t n;
    int rows, dim, rows_per_task;
    void (*fn)(float *, size_t);
} act_job;

static void elementwise_task(void *arg, int task)
{
    const act_job *j = arg;
    size_t i0 = (size_t)task * ACT_CHUNK;
    j->fn(j->x + i0, LDM_MIN((size_t)ACT_CHUNK, j->n - i0));
}

static void run_elementwise(const lctx *c, float *x, size_t n, void (*fn)(float *, size_t))
{
    lpool *pool = lk_pool_for_bytes(c, 8.0 * n); /* read and written once */
    if (n <= ACT_CHUNK || !pool) {
        fn(x, n);
        return;
    }
    act_job j = {.x = x, .n = n, .fn = fn};
    lpool_run(pool, (int)((n + ACT_CHUNK - 1) / ACT_CHUNK), elementwise_task, &j);
}

void lk_silu_ctx(const lctx *c, float *x, size_t n) { ACT_TIMED(run_elementwise(c, x, n, lk_silu)); }
void lk_gelu_ctx(const lctx *c, float *x, size_t n) { ACT_TIMED(run_elementwise(c, x, n, lk_gelu)); }
void lk_quick_gelu_ctx(const lctx *c, float *x, size_t n) { ACT_TIMED(run_elementwise(c, x, n, lk_quick_gelu)); }

static int rows_per_task(int cols)
{
    int r = ACT_CHUNK / (cols > 0 ? cols : 1);
    return r < 1 ? 1 : r;
}

static void geglu_task(void *arg, int task)
{
    const act_job *j = arg;
    int r0 = task * j->rows_per_task, nr = LDM_MIN(j->rows_per_task, j->rows - r0);
    lk_geglu(j->in + (size_t)r0 * 2 * j->dim, nr, j->dim, j->x + (size_t)r0 * j->dim);
}

static void geglu_ctx_run(const lctx *c, const float *x, int rows, int dim, float *out)
{
    if (rows <= 0 || dim <= 0) return;
    act_job j = {.x = out, .in = x, .rows = rows, .dim = dim, .rows_per_task = rows_per_task(dim)};
    lpool *pool = lk_pool_for_bytes(c, 12.0 * rows * dim); /* 2 floats read, 1 written per output */
    lpool_run(pool, (rows + j.rows_per_task - 1) / j.rows_per_task, geglu_task, &j);
}

static void softmax_task(void *arg, int task)
{
    const act_job *j = arg;
    int r0 = task * j->rows_per_task, nr = LDM_MIN(j->rows_per_task, j->rows - r0);
    lk_softmax_rows(j->x + (size_t)r0 * j->dim, nr, j->dim);
}

static void softmax_rows_ctx_run(const lctx *c, float *x, int rows, int cols)
{
    if (rows <= 0 || cols <= 0) return;
    act_job j = {.x = x, .rows = rows, .dim = cols, .rows_per_task = rows_per_task(cols)};
    lpool *pool = lk_pool_for_bytes(c, 8.0 * rows * cols);
    lpool_run(pool, (rows + j.rows_per_task - 1) / j.rows_per_task, softmax_task, &j);
}

void lk_geglu(const float *x, int rows, int dim, float *out)
{
    lk_stat_mark m = lk_stat_begin();
    geglu_run(x, rows, dim, out);
    lk_stat_end(m, LK_OP_ACTIVATION, 0);
}

void lk_softmax_rows(float *x, int rows, int cols)
{
    lk_stat_mark m = lk_stat_begin();
    softmax_rows_run(x, rows, cols);
    lk_stat_end(m, LK_OP_ACTIVATION, 0);
}

void lk_geglu_ctx(const lctx *c, const float *x, int rows, int dim, float *out)
{
    lk_stat_mark m = lk_stat_begin();
    geglu_ctx_run(c, x, rows, dim, out);
    lk_stat_end(m, LK_OP_ACTIVATION, 0);
}

void lk_softmax_rows_ctx(const lctx *c, float *x, int rows, int cols)
{
    lk_stat_mark m = lk_stat_begin();
    softmax_rows_ctx_run(c, x, rows, cols);
    lk_stat_end(m, LK_OP_ACTIVATION, 0);
}
