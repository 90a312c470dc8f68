/* tape.c - the recording and the reverse walk of tape.h. Forward: each operation checks shapes,
 * allocates its output, runs the forward kernel of kernels.h and appends a record. Backward:
 * records in reverse; an operation whose output received a gradient asks each input that needs
 * one for a place to put it (the input's own buffer when this is its first gradient, else a
 * temporary that is added in afterwards, so the grad.h kernels can overwrite as they do). */
#include "tape.h"

#include "../kernels/kernels.h"
#include "../sampling/sampling.h"
#include "grad.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef enum {
    OP_LEAF,
    OP_CONV,
    OP_LINEAR,
    OP_GROUP_NORM,
    OP_LAYER_NORM,
    OP_SILU,
    OP_GELU,
    OP_GEGLU,
    OP_ADD,
    OP_SCALE,
    OP_CHANNEL_BIAS,
    OP_FILM,
    OP_CONCAT,
    OP_CHUNK2,
    OP_UPSAMPLE2,
    OP_AVGPOOL2,
    OP_NCHW_TO_NLC,
    OP_NLC_TO_NCHW,
    OP_RESHAPE,
    OP_ATTENTION,
    OP_EMBEDDING,
    OP_GAUSSIAN,
    OP_GATHER,
    OP_DROPOUT,
    OP_SEGMENT
} op_kind;

struct segment;

typedef struct value {
    int ndim;
    int64_t shape[LTP_MAX_DIMS];
    size_t n;
    float *v;
    float *g;
    int needs_grad; /* some trainable parameter or grad-requiring input is upstream */
    int g_fresh;    /* g holds a gradient already (else it is unset memory or NULL) */
    ltp_param *param;
    int owns_v;
} value;

typedef struct op {
    op_kind kind;
    int in[3];
    int out;
    int i[4];             /* integer attributes (groups, heads, which, labels index, ...) */
    float f;              /* float attribute (eps, scale) */
    lk_conv2d_shape conv; /* OP_CONV */
    float *aux;           /* extra saved data (gaussian noise) */
    int *idx;             /* OP_GATHER: the channel of x behind each output channel */
    uint64_t key[3];      /* OP_DROPOUT: seed, draw, site */
    struct segment *seg;  /* OP_SEGMENT */
} op;

typedef struct labels {
    int64_t *v;
    int n;
} labels;

struct ltp_tape {
    lctx c;
    value *vals;
    size_t n_vals, cap_vals;
    op *ops;
    size_t n_ops, cap_ops;
    labels *labs;
    int n_labs, cap_labs;
    ldm_status status;
    char error[512];
    size_t bytes, peak;
    ltp_tape *parent;            /* a segment's sub-tape: its memory counts in every ancestor */
    uint64_t rng_seed, rng_draw; /* dropout key */
    size_t budget;               /* activation budget (0: none) */
    int n_segments, n_dropped;
};

/* A checkpointed block (ltp_segment): how to run it again, and its sub-tape while kept. */
typedef struct segment {
    ltp_segment_fn fn;
    void *ctx;
    int n_in;
    ltp_tape *sub; /* NULL once dropped (recomputed in backward) */
    ltp_id sub_in[3], sub_out;
} segment;

static void segment_free(segment *sg);

/* ---------------------------------------------------------------- bookkeeping */

static ltp_id fail(ltp_tape *t, ldm_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static ltp_id fail(ltp_tape *t, ldm_status st, const char *fmt, ...)
{
    if (t->status == LDM_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->error, sizeof t->error, fmt, ap);
        va_end(ap);
        t->status = st;
        ldm_fail(st, "%s", t->error);
    }
    return LTP_NONE;
}

ltp_id ltp_fail(ltp_tape *t, ldm_status status, const char *fmt, ...)
{
    if (!t) return LTP_NONE;
    char msg[sizeof t->error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fail(t, status, "%s", msg);
}

static ltp_id fail_alloc(ltp_tape *t)
{
    ldm_status st = ldm_alloc_failure_status();
    return fail(t, st, "training tape: %s", ldm_last_error());
}

static int valid(const ltp_tape *t, ltp_id v) { return v >= 0 && (size_t)v < t->n_vals; }

static float *alloc_floats(ltp_tape *t, size_t n)
{
    float *p = ldm_malloc_aligned((n ? n : 1) * sizeof(float));
    if (p)
        for (ltp_tape *a = t; a; a = a->parent) {
            a->bytes += n * sizeof(float);
            if (a->bytes > a->peak) a->peak = a->bytes;
        }
    return p;
}

static void free_floats(ltp_tape *t, float *p, size_t n)
{
    if (!p) return;
    ldm_free(p);
    for (ltp_tape *a = t; a; a = a->parent) a->bytes -= n * sizeof(float);
}

ldm_status ltp_tape_create(const lctx *c, ltp_tape **out)
{
    *out = NULL;
    ltp_tape *t = ldm_calloc(1, sizeof *t);
    if (!t) return ldm_alloc_failure_status();
    if (c) t->c = *c;
    *out = t;
    return LDM_OK;
}

void ltp_reset(ltp_tape *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->n_vals; i++) {
        value *v = &t->vals[i];
        if (v->owns_v) free_floats(t, v->v, v->n);
        if (!v->param) free_floats(t, v->g, v->n);
    }
    for (size_t i = 0; i < t->n_ops; i++) {
        ldm_free(t->ops[i].aux);
        ldm_free(t->ops[i].idx);
        segment_free(t->ops[i].seg);
    }
    t->n_segments = t->n_dropped = 0;
    for (int i = 0; i < t->n_labs; i++) ldm_free(t->labs[i].v);
    t->n_vals = t->n_ops = 0;
    t->n_labs = 0;
    t->status = LDM_OK;
    t->error[0] = 0;
}

void ltp_tape_free(ltp_tape *t)
{
    if (!t) return;
    ltp_reset(t);
    ldm_free(t->vals);
    ldm_free(t->ops);
    ldm_free(t->labs);
    ldm_free(t);
}

ldm_status ltp_status(const ltp_tape *t) { return t ? t->status : LDM_ERR_INVALID_ARGUMENT; }
const char *ltp_error(const ltp_tape *t) { return t ? t->error : "no tape"; }
size_t ltp_bytes(const ltp_tape *t) { return t ? t->bytes : 0; }
size_t ltp_peak_bytes(const ltp_tape *t) { return t ? t->peak : 0; }

int ltp_ndim(const ltp_tape *t, ltp_id v) { return valid(t, v) ? t->vals[v].ndim : 0; }
int64_t ltp_dim(const ltp_tape *t, ltp_id v, int i)
{
    if (!valid(t, v)) return 0;
    const value *x = &t->vals[v];
    if (i < 0) i += x->ndim;
    return i >= 0 && i < x->ndim ? x->shape[i] : 0;
}
size_t ltp_numel(const ltp_tape *t, ltp_id v) { return valid(t, v) ? t->vals[v].n : 0; }
float *ltp_data(const ltp_tape *t, ltp_id v) { return valid(t, v) ? t->vals[v].v : NULL; }
const float *ltp_grad(const ltp_tape *t, ltp_id v)
{
    return valid(t, v) && t->vals[v].g_fresh ? t->vals[v].g : NULL;
}

/* A new value of the given shape; data allocated unless `data` is given (then referenced). */
static ltp_id new_value(ltp_tape *t, int ndim, const int64_t *shape, float *data)
{
    if (t->status != LDM_OK) return LTP_NONE;
    if (ndim < 1 || ndim > LTP_MAX_DIMS) return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: %d dimensions", ndim);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0 || shape[i] > ((int64_t)1 << 31))
            return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: bad dimension %d = %lld", i, (long long)shape[i]);
        n *= (size_t)shape[i];
        if (n > ((size_t)1 << 36)) return fail(t, LDM_ERR_LIMIT, "tape: a value of over 2^36 elements");
    }
    /* `shape` often points into t->vals (an operand's shape), which the growth below may move */
    int64_t dims[LTP_MAX_DIMS];
    memcpy(dims, shape, (size_t)ndim * sizeof *dims);
    shape = dims;
    if (t->n_vals == t->cap_vals) {
        size_t nc = t->cap_vals ? 2 * t->cap_vals : 256;
        value *nv = ldm_realloc(t->vals, nc * sizeof *nv);
        if (!nv) return fail_alloc(t);
        t->vals = nv;
        t->cap_vals = nc;
    }
    value *v = &t->vals[t->n_vals];
    memset(v, 0, sizeof *v);
    v->ndim = ndim;
    for (int i = 0; i < ndim; i++) v->shape[i] = shape[i];
    v->n = n;
    if (data) {
        v->v = data;
    } else {
        v->v = alloc_floats(t, n);
        if (!v->v) return fail_alloc(t);
        v->owns_v = 1;
    }
    return (ltp_id)t->n_vals++;
}

static op *new_op(ltp_tape *t, op_kind kind, ltp_id out, ltp_id a, ltp_id b, ltp_id c)
{
    if (t->n_ops == t->cap_ops) {
        size_t nc = t->cap_ops ? 2 * t->cap_ops : 256;
        op *no = ldm_realloc(t->ops, nc * sizeof *no);
        if (!no) {
            fail_alloc(t);
            return NULL;
        }
        t->ops = no;
        t->cap_ops = nc;
    }
    op *o = &t->ops[t->n_ops++];
    memset(o, 0, sizeof *o);
    o->kind = kind;
    o->out = out;
    o->in[0] = a, o->in[1] = b, o->in[2] = c;
    int ng = 0;
    for (int k = 0; k < 3; k++)
        if (o->in[k] >= 0) ng |= t->vals[o->in[k]].needs_grad;
    t->vals[out].needs_grad = ng;
    return o;
}

/* Records op `kind` producing a new value of `shape` from up to three inputs. */
static ltp_id record(ltp_tape *t, op_kind kind, int ndim, const int64_t *shape, ltp_id a, ltp_id b, ltp_id c,
                     op **o_out)
{
    ltp_id y = new_value(t, ndim, shape, NULL);
    if (y < 0) return LTP_NONE;
    op *o = new_op(t, kind, y, a, b, c);
    if (!o) return LTP_NONE;
    *o_out = o;
    return y;
}

/* Checks the operands of an operation: every id valid (optional ones may be LTP_NONE). */
static int operands_ok(ltp_tape *t, const char *what, ltp_id a, ltp_id b, ltp_id c, int n_required)
{
    if (t->status != LDM_OK) return 0;
    ltp_id ids[3] = {a, b, c};
    for (int k = 0; k < 3; k++) {
        if (ids[k] == LTP_NONE && k >= n_required) continue;
        if (!valid(t, ids[k])) {
            fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: %s: operand %d is not a value", what, k);
            return 0;
        }
    }
    return 1;
}

static void shape_str(const value *v, char *buf, size_t cap)
{
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < v->ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? "," : "", (long long)v->shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

static ltp_id shape_fail(ltp_tape *t, const char *what, ltp_id a, ltp_id b)
{
    char sa[96] = "-", sb[96] = "-";
    if (valid(t, a)) shape_str(&t->vals[a], sa, sizeof sa);
    if (valid(t, b)) shape_str(&t->vals[b], sb, sizeof sb);
    return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: %s: shapes %s and %s do not fit", what, sa, sb);
}

/* ---------------------------------------------------------------- leaves */

ltp_id ltp_input(ltp_tape *t, int ndim, const int64_t *shape, const float *data, int requires_grad)
{
    if (!t || t->status != LDM_OK) return LTP_NONE;
    if (!data) return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: input without data");
    ltp_id y = new_value(t, ndim, shape, NULL);
    if (y < 0) return LTP_NONE;
    memcpy(t->vals[y].v, data, t->vals[y].n * sizeof(float));
    t->vals[y].needs_grad = requires_grad != 0;
    return y;
}

ltp_id ltp_param_ref(ltp_tape *t, ltp_param *p)
{
    if (!t || t->status != LDM_OK) return LTP_NONE;
    if (!p) return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: missing parameter (%s)", ldm_last_error());
    ltp_id y = new_value(t, p->ndim ? p->ndim : 1, p->ndim ? p->shape : (const int64_t[]){1}, p->data);
    if (y < 0) return LTP_NONE;
    value *v = &t->vals[y];
    v->param = p;
    v->needs_grad = p->trainable && p->grad;
    v->g = p->grad;
    return y;
}

int ltp_labels(ltp_tape *t, const int64_t *lab, int n)
{
    if (!t || t->status != LDM_OK) return -1;
    if (!lab || n <= 0) return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: no labels");
    if (t->n_labs == t->cap_labs) {
        int nc = t->cap_labs ? 2 * t->cap_labs : 8;
        labels *nl = ldm_realloc(t->labs, (size_t)nc * sizeof *nl);
        if (!nl) return fail_alloc(t);
        t->labs = nl;
        t->cap_labs = nc;
    }
    int64_t *copy = ldm_malloc((size_t)n * sizeof *copy);
    if (!copy) return fail_alloc(t);
    memcpy(copy, lab, (size_t)n * sizeof *copy);
    t->labs[t->n_labs] = (labels){copy, n};
    return t->n_labs++;
}

/* ---------------------------------------------------------------- forward operations */

static ltp_id conv_common(ltp_tape *t, ltp_id x, ltp_id w, ltp_id b, int stride, int pt, int pl, int pb, int pr)
{
    if (!operands_ok(t, "conv2d", x, w, b, 2)) return LTP_NONE;
    const value *X = &t->vals[x], *Wv = &t->vals[w];
    if (X->ndim != 4 || Wv->ndim != 4 || X->shape[1] != Wv->shape[1] || stride < 1 || pt < 0 || pl < 0 || pb < 0 ||
        pr < 0)
        return shape_fail(t, "conv2d (input, weight)", x, w);
    if (b >= 0 && (t->vals[b].n != (size_t)Wv->shape[0])) return shape_fail(t, "conv2d (weight, bias)", w, b);
    lk_conv2d_shape s = {(int)X->shape[0], (int)X->shape[1], (int)X->shape[2], (int)X->shape[3], (int)Wv->shape[0],
                         (int)Wv->shape[2], (int)Wv->shape[3], stride, pt, pl, pb, pr};
    int OH = lk_conv2d_out_h(&s), OW = lk_conv2d_out_w(&s);
    if (OH <= 0 || OW <= 0) return shape_fail(t, "conv2d (input too small)", x, w);
    int64_t shape[4] = {s.batch, s.out_ch, OH, OW};
    op *o;
    ltp_id y = record(t, OP_CONV, 4, shape, x, w, b, &o);
    if (y < 0) return LTP_NONE;
    o->conv = s;
    ldm_status st = lk_conv2d(&t->c, &s, t->vals[x].v, t->vals[w].v, b >= 0 ? t->vals[b].v : NULL, t->vals[y].v);
    if (st != LDM_OK) return fail(t, st, "tape: conv2d: %s", ldm_last_error());
    return y;
}

ltp_id ltp_conv2d(ltp_tape *t, ltp_id x, ltp_id w, ltp_id b, int stride, int pad)
{
    return conv_common(t, x, w, b, stride, pad, pad, pad, pad);
}

ltp_id ltp_conv2d_pad(ltp_tape *t, ltp_id x, ltp_id w, ltp_id b, int stride, int pad_top, int pad_left,
                      int pad_bottom, int pad_right)
{
    return conv_common(t, x, w, b, stride, pad_top, pad_left, pad_bottom, pad_right);
}

ltp_id ltp_linear(ltp_tape *t, ltp_id x, ltp_id W, ltp_id b)
{
    if (!operands_ok(t, "linear", x, W, b, 2)) return LTP_NONE;
    const value *X = &t->vals[x], *Wv = &t->vals[W];
    int64_t in = X->shape[X->ndim - 1];
    if (Wv->ndim != 2 || Wv->shape[1] != in) return shape_fail(t, "linear (input, weight)", x, W);
    if (b >= 0 && t->vals[b].n != (size_t)Wv->shape[0]) return shape_fail(t, "linear (weight, bias)", W, b);
    int64_t shape[LTP_MAX_DIMS];
    memcpy(shape, X->shape, sizeof shape);
    shape[X->ndim - 1] = Wv->shape[0];
    op *o;
    ltp_id y = record(t, OP_LINEAR, X->ndim, shape, x, W, b, &o);
    if (y < 0) return LTP_NONE;
    int rows = (int)(t->vals[x].n / (size_t)in);
    lk_linear(&t->c, t->vals[x].v, rows, (int)in, t->vals[W].v, b >= 0 ? t->vals[b].v : NULL,
              (int)t->vals[W].shape[0], t->vals[y].v);
    return y;
}

ltp_id ltp_group_norm(ltp_tape *t, ltp_id x, int groups, float eps, ltp_id gamma, ltp_id beta)
{
    if (!operands_ok(t, "group_norm", x, gamma, beta, 1)) return LTP_NONE;
    const value *X = &t->vals[x];
    if (X->ndim < 2 || groups <= 0 || X->shape[1] % groups != 0) return shape_fail(t, "group_norm", x, gamma);
    if ((gamma >= 0 && t->vals[gamma].n != (size_t)X->shape[1]) ||
        (beta >= 0 && t->vals[beta].n != (size_t)X->shape[1]))
        return shape_fail(t, "group_norm (input, affine)", x, gamma >= 0 ? gamma : beta);
    op *o;
    ltp_id y = record(t, OP_GROUP_NORM, X->ndim, X->shape, x, gamma, beta, &o);
    if (y < 0) return LTP_NONE;
    o->i[0] = groups;
    o->f = eps;
    X = &t->vals[x];
    int B = (int)X->shape[0], C = (int)X->shape[1], HW = (int)(X->n / (size_t)(B * C));
    lk_group_norm(&t->c, X->v, B, C, HW, groups, eps, gamma >= 0 ? t->vals[gamma].v : NULL,
                  beta >= 0 ? t->vals[beta].v : NULL, t->vals[y].v);
    return y;
}

ltp_id ltp_layer_norm(ltp_tape *t, ltp_id x, float eps, ltp_id gamma, ltp_id beta)
{
    if (!operands_ok(t, "layer_norm", x, gamma, beta, 1)) return LTP_NONE;
    const value *X = &t->vals[x];
    int64_t dim = X->shape[X->ndim - 1];
    if ((gamma >= 0 && t->vals[gamma].n != (size_t)dim) || (beta >= 0 && t->vals[beta].n != (size_t)dim))
        return shape_fail(t, "layer_norm (input, affine)", x, gamma >= 0 ? gamma : beta);
    op *o;
    ltp_id y = record(t, OP_LAYER_NORM, X->ndim, X->shape, x, gamma, beta, &o);
    if (y < 0) return LTP_NONE;
    o->f = eps;
    lk_layer_norm(&t->c, t->vals[x].v, (int)(t->vals[x].n / (size_t)dim), (int)dim, eps,
                  gamma >= 0 ? t->vals[gamma].v : NULL, beta >= 0 ? t->vals[beta].v : NULL, t->vals[y].v);
    return y;
}

static ltp_id unary(ltp_tape *t, op_kind kind, ltp_id x, const char *what)
{
    if (!operands_ok(t, what, x, LTP_NONE, LTP_NONE, 1)) return LTP_NONE;
    op *o;
    ltp_id y = record(t, kind, t->vals[x].ndim, t->vals[x].shape, x, LTP_NONE, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    memcpy(t->vals[y].v, t->vals[x].v, t->vals[x].n * sizeof(float));
    return y;
}

ltp_id ltp_silu(ltp_tape *t, ltp_id x)
{
    ltp_id y = unary(t, OP_SILU, x, "silu");
    if (y >= 0) lk_silu_ctx(&t->c, t->vals[y].v, t->vals[y].n);
    return y;
}

ltp_id ltp_gelu(ltp_tape *t, ltp_id x)
{
    ltp_id y = unary(t, OP_GELU, x, "gelu");
    if (y >= 0) lk_gelu_ctx(&t->c, t->vals[y].v, t->vals[y].n);
    return y;
}

ltp_id ltp_geglu(ltp_tape *t, ltp_id x)
{
    if (!operands_ok(t, "geglu", x, LTP_NONE, LTP_NONE, 1)) return LTP_NONE;
    const value *X = &t->vals[x];
    int64_t two_d = X->shape[X->ndim - 1];
    if (two_d % 2) return shape_fail(t, "geglu (odd last dimension)", x, LTP_NONE);
    int64_t shape[LTP_MAX_DIMS];
    memcpy(shape, X->shape, sizeof shape);
    shape[X->ndim - 1] = two_d / 2;
    op *o;
    ltp_id y = record(t, OP_GEGLU, X->ndim, shape, x, LTP_NONE, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    lk_geglu_ctx(&t->c, t->vals[x].v, (int)(t->vals[x].n / (size_t)two_d), (int)(two_d / 2), t->vals[y].v);
    return y;
}

ltp_id ltp_add(ltp_tape *t, ltp_id a, ltp_id b)
{
    if (!operands_ok(t, "add", a, b, LTP_NONE, 2)) return LTP_NONE;
    const value *A = &t->vals[a], *Bv = &t->vals[b];
    int same = A->ndim == Bv->ndim;
    for (int i = 0; same && i < A->ndim; i++) same = A->shape[i] == Bv->shape[i];
    if (!same) return shape_fail(t, "add", a, b);
    op *o;
    ltp_id y = record(t, OP_ADD, A->ndim, A->shape, a, b, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    float *Y = t->vals[y].v;
    const float *pa = t->vals[a].v, *pb = t->vals[b].v;
    for (size_t i = 0; i < t->vals[y].n; i++) Y[i] = pa[i] + pb[i];
    return y;
}

ltp_id ltp_scale(ltp_tape *t, ltp_id x, float s)
{
    ltp_id y = unary(t, OP_SCALE, x, "scale");
    if (y < 0) return LTP_NONE;
    t->ops[t->n_ops - 1].f = s;
    float *Y = t->vals[y].v;
    for (size_t i = 0; i < t->vals[y].n; i++) Y[i] *= s;
    return y;
}

/* x [B,C,...] and a per-(b,c) tensor of `mult` * C columns: B and C, and the trailing size. */
static int bc_dims(ltp_tape *t, ltp_id x, ltp_id e, int mult, const char *what, int *B, int *C, size_t *inner)
{
    const value *X = &t->vals[x], *E = &t->vals[e];
    if (X->ndim < 2 || E->ndim != 2 || E->shape[0] != X->shape[0] || E->shape[1] != mult * X->shape[1]) {
        shape_fail(t, what, x, e);
        return 0;
    }
    *B = (int)X->shape[0], *C = (int)X->shape[1];
    *inner = X->n / ((size_t)*B * (size_t)*C);
    return 1;
}

ltp_id ltp_add_channel_bias(ltp_tape *t, ltp_id x, ltp_id e)
{
    int B, C;
    size_t inner;
    if (!operands_ok(t, "add_channel_bias", x, e, LTP_NONE, 2)) return LTP_NONE;
    if (!bc_dims(t, x, e, 1, "add_channel_bias", &B, &C, &inner)) return LTP_NONE;
    op *o;
    ltp_id y = record(t, OP_CHANNEL_BIAS, t->vals[x].ndim, t->vals[x].shape, x, e, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    const float *X = t->vals[x].v, *E = t->vals[e].v;
    float *Y = t->vals[y].v;
    for (size_t bc = 0; bc < (size_t)B * C; bc++)
        for (size_t i = 0; i < inner; i++) Y[bc * inner + i] = X[bc * inner + i] + E[bc];
    return y;
}

ltp_id ltp_film(ltp_tape *t, ltp_id x, ltp_id ss)
{
    int B, C;
    size_t inner;
    if (!operands_ok(t, "film", x, ss, LTP_NONE, 2)) return LTP_NONE;
    if (!bc_dims(t, x, ss, 2, "film (scale/shift)", &B, &C, &inner)) return LTP_NONE;
    op *o;
    ltp_id y = record(t, OP_FILM, t->vals[x].ndim, t->vals[x].shape, x, ss, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    const float *X = t->vals[x].v, *S = t->vals[ss].v;
    float *Y = t->vals[y].v;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            float scale = 1.0f + S[(size_t)b * 2 * C + c], shift = S[(size_t)b * 2 * C + C + c];
            size_t base = ((size_t)b * C + c) * inner;
            for (size_t i = 0; i < inner; i++) Y[base + i] = X[base + i] * scale + shift;
        }
    return y;
}

ltp_id ltp_concat_channels(ltp_tape *t, ltp_id a, ltp_id b)
{
    if (!operands_ok(t, "concat", a, b, LTP_NONE, 2)) return LTP_NONE;
    const value *A = &t->vals[a], *Bv = &t->vals[b];
    int fits = A->ndim == Bv->ndim && A->ndim >= 2 && A->shape[0] == Bv->shape[0];
    for (int i = 2; fits && i < A->ndim; i++) fits = A->shape[i] == Bv->shape[i];
    if (!fits) return shape_fail(t, "concat (dim 1)", a, b);
    int64_t shape[LTP_MAX_DIMS];
    memcpy(shape, A->shape, sizeof shape);
    shape[1] = A->shape[1] + Bv->shape[1];
    op *o;
    ltp_id y = record(t, OP_CONCAT, A->ndim, shape, a, b, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    A = &t->vals[a], Bv = &t->vals[b];
    size_t B = (size_t)A->shape[0], na = A->n / B, nb = Bv->n / B;
    for (size_t k = 0; k < B; k++) {
        memcpy(t->vals[y].v + k * (na + nb), A->v + k * na, na * sizeof(float));
        memcpy(t->vals[y].v + k * (na + nb) + na, Bv->v + k * nb, nb * sizeof(float));
    }
    return y;
}

ltp_id ltp_chunk2(ltp_tape *t, ltp_id x, int which)
{
    if (!operands_ok(t, "chunk2", x, LTP_NONE, LTP_NONE, 1)) return LTP_NONE;
    const value *X = &t->vals[x];
    if (X->ndim < 2 || X->shape[1] % 2 || which < 0 || which > 1) return shape_fail(t, "chunk2 (dim 1)", x, LTP_NONE);
    int64_t shape[LTP_MAX_DIMS];
    memcpy(shape, X->shape, sizeof shape);
    shape[1] /= 2;
    op *o;
    ltp_id y = record(t, OP_CHUNK2, X->ndim, shape, x, LTP_NONE, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    o->i[0] = which;
    X = &t->vals[x];
    size_t B = (size_t)X->shape[0], half = X->n / B / 2;
    for (size_t k = 0; k < B; k++)
        memcpy(t->vals[y].v + k * half, X->v + k * 2 * half + (size_t)which * half, half * sizeof(float));
    return y;
}

static ltp_id resample(ltp_tape *t, op_kind kind, ltp_id x, int up)
{
    const char *what = up ? "upsample_nearest2" : "avg_pool2";
    if (!operands_ok(t, what, x, LTP_NONE, LTP_NONE, 1)) return LTP_NONE;
    const value *X = &t->vals[x];
    if (X->ndim != 4 || (!up && (X->shape[2] < 2 || X->shape[3] < 2))) return shape_fail(t, what, x, LTP_NONE);
    int64_t shape[4] = {X->shape[0], X->shape[1], up ? 2 * X->shape[2] : X->shape[2] / 2,
                        up ? 2 * X->shape[3] : X->shape[3] / 2};
    op *o;
    ltp_id y = record(t, kind, 4, shape, x, LTP_NONE, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    X = &t->vals[x];
    int BC = (int)(X->shape[0] * X->shape[1]), H = (int)X->shape[2], W = (int)X->shape[3];
    if (up)
        lk_resize_nearest(X->v, BC, H, W, 2 * H, 2 * W, t->vals[y].v);
    else
        lk_avg_pool2(X->v, BC, H, W, t->vals[y].v);
    return y;
}

ltp_id ltp_upsample_nearest2(ltp_tape *t, ltp_id x) { return resample(t, OP_UPSAMPLE2, x, 1); }
ltp_id ltp_avg_pool2(ltp_tape *t, ltp_id x) { return resample(t, OP_AVGPOOL2, x, 0); }

/* dst[b, j, i] = src[b, i, j] for src [B, R, C]. */
static void transpose_batched(const float *src, int B, int R, int C, float *dst, int accumulate)
{
    for (int b = 0; b < B; b++) {
        const float *s = src + (size_t)b * R * C;
        float *d = dst + (size_t)b * R * C;
        for (int i = 0; i < R; i++)
            for (int j = 0; j < C; j++) {
                if (accumulate)
                    d[(size_t)j * R + i] += s[(size_t)i * C + j];
                else
                    d[(size_t)j * R + i] = s[(size_t)i * C + j];
            }
    }
}

ltp_id ltp_nchw_to_nlc(ltp_tape *t, ltp_id x)
{
    if (!operands_ok(t, "nchw_to_nlc", x, LTP_NONE, LTP_NONE, 1)) return LTP_NONE;
    const value *X = &t->vals[x];
    if (X->ndim != 4) return shape_fail(t, "nchw_to_nlc", x, LTP_NONE);
    int64_t shape[3] = {X->shape[0], X->shape[2] * X->shape[3], X->shape[1]};
    op *o;
    ltp_id y = record(t, OP_NCHW_TO_NLC, 3, shape, x, LTP_NONE, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    transpose_batched(t->vals[x].v, (int)shape[0], (int)shape[2], (int)shape[1], t->vals[y].v, 0);
    return y;
}

ltp_id ltp_nlc_to_nchw(ltp_tape *t, ltp_id x, int H, int W)
{
    if (!operands_ok(t, "nlc_to_nchw", x, LTP_NONE, LTP_NONE, 1)) return LTP_NONE;
    const value *X = &t->vals[x];
    if (X->ndim != 3 || H <= 0 || W <= 0 || X->shape[1] != (int64_t)H * W) return shape_fail(t, "nlc_to_nchw", x, x);
    int64_t shape[4] = {X->shape[0], X->shape[2], H, W};
    op *o;
    ltp_id y = record(t, OP_NLC_TO_NCHW, 4, shape, x, LTP_NONE, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    transpose_batched(t->vals[x].v, (int)shape[0], H * W, (int)shape[1], t->vals[y].v, 0);
    return y;
}

ltp_id ltp_reshape(ltp_tape *t, ltp_id x, int ndim, const int64_t *shape)
{
    if (!operands_ok(t, "reshape", x, LTP_NONE, LTP_NONE, 1)) return LTP_NONE;
    size_t n = 1;
    for (int i = 0; i < ndim && i < LTP_MAX_DIMS; i++) n *= (size_t)(shape[i] > 0 ? shape[i] : 0);
    if (ndim < 1 || ndim > LTP_MAX_DIMS || n != t->vals[x].n) return shape_fail(t, "reshape", x, LTP_NONE);
    op *o;
    ltp_id y = record(t, OP_RESHAPE, ndim, shape, x, LTP_NONE, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    memcpy(t->vals[y].v, t->vals[x].v, n * sizeof(float));
    return y;
}

/* The [B, T, heads*D] layout seen as (batch, head, position, channel). */
static lk_view heads_view(float *p, int T, int heads, int D)
{
    lk_view v = {p, (long)T * heads * D, D, (long)heads * D, 1};
    return v;
}

ltp_id ltp_attention(ltp_tape *t, ltp_id q, ltp_id k, ltp_id v, int heads)
{
    if (!operands_ok(t, "attention", q, k, v, 3)) return LTP_NONE;
    const value *Q = &t->vals[q], *K = &t->vals[k], *V = &t->vals[v];
    if (Q->ndim != 3 || K->ndim != 3 || V->ndim != 3 || K->shape[0] != Q->shape[0] || V->shape[0] != Q->shape[0] ||
        K->shape[2] != Q->shape[2] || V->shape[2] != Q->shape[2] || K->shape[1] != V->shape[1] || heads <= 0 ||
        Q->shape[2] % heads)
        return shape_fail(t, "attention (q, k)", q, k);
    op *o;
    ltp_id y = record(t, OP_ATTENTION, 3, Q->shape, q, k, v, &o);
    if (y < 0) return LTP_NONE;
    o->i[0] = heads;
    Q = &t->vals[q], K = &t->vals[k], V = &t->vals[v];
    int B = (int)Q->shape[0], Tq = (int)Q->shape[1], Tk = (int)K->shape[1], D = (int)Q->shape[2] / heads;
    ldm_status st = lk_attention(&t->c, B, heads, Tq, Tk, D, heads_view(Q->v, Tq, heads, D),
                                 heads_view(K->v, Tk, heads, D), heads_view(V->v, Tk, heads, D),
                                 heads_view(t->vals[y].v, Tq, heads, D), 1.0f / sqrtf((float)D), 0);
    if (st != LDM_OK) return fail(t, st, "tape: attention: %s", ldm_last_error());
    return y;
}

ltp_id ltp_embedding(ltp_tape *t, ltp_id table, int lab)
{
    if (!operands_ok(t, "embedding", table, LTP_NONE, LTP_NONE, 1)) return LTP_NONE;
    if (lab < 0 || lab >= t->n_labs) return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: embedding: bad labels");
    const value *T = &t->vals[table];
    if (T->ndim != 2) return shape_fail(t, "embedding (table)", table, LTP_NONE);
    const labels *L = &t->labs[lab];
    for (int i = 0; i < L->n; i++)
        if (L->v[i] < 0 || L->v[i] >= T->shape[0])
            return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: embedding: label %lld outside [0, %lld)",
                        (long long)L->v[i], (long long)T->shape[0]);
    int64_t shape[2] = {L->n, T->shape[1]};
    op *o;
    ltp_id y = record(t, OP_EMBEDDING, 2, shape, table, LTP_NONE, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    o->i[0] = lab;
    T = &t->vals[table];
    size_t dim = (size_t)T->shape[1];
    for (int i = 0; i < L->n; i++) memcpy(t->vals[y].v + i * dim, T->v + (size_t)L->v[i] * dim, dim * sizeof(float));
    return y;
}

static float clamp_logvar(float lv) { return lv < -30.0f ? -30.0f : lv > 20.0f ? 20.0f : lv; }

ltp_id ltp_gaussian_sample(ltp_tape *t, ltp_id moments, const float *noise)
{
    if (!operands_ok(t, "gaussian_sample", moments, LTP_NONE, LTP_NONE, 1)) return LTP_NONE;
    const value *M = &t->vals[moments];
    if (M->ndim < 2 || M->shape[1] % 2 || !noise) return shape_fail(t, "gaussian_sample (moments)", moments, LTP_NONE);
    int64_t shape[LTP_MAX_DIMS];
    memcpy(shape, M->shape, sizeof shape);
    shape[1] /= 2;
    op *o;
    ltp_id y = record(t, OP_GAUSSIAN, M->ndim, shape, moments, LTP_NONE, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    size_t n = t->vals[y].n;
    o->aux = ldm_malloc(n * sizeof(float));
    if (!o->aux) return fail_alloc(t);
    memcpy(o->aux, noise, n * sizeof(float));
    M = &t->vals[moments];
    size_t B = (size_t)M->shape[0], half = n / B;
    for (size_t b = 0; b < B; b++)
        for (size_t i = 0; i < half; i++) {
            float mean = M->v[b * 2 * half + i], lv = clamp_logvar(M->v[b * 2 * half + half + i]);
            t->vals[y].v[b * half + i] = mean + expf(0.5f * lv) * noise[b * half + i];
        }
    return y;
}

/* ---------------------------------------------------------------- channel gather, dropout */

ltp_id ltp_gather_channels(ltp_tape *t, ltp_id x, const int *idx, int n)
{
    if (!operands_ok(t, "gather_channels", x, LTP_NONE, LTP_NONE, 1)) return LTP_NONE;
    const value *X = &t->vals[x];
    if (X->ndim < 2 || !idx || n <= 0) return shape_fail(t, "gather_channels", x, LTP_NONE);
    for (int j = 0; j < n; j++)
        if (idx[j] < 0 || idx[j] >= X->shape[1])
            return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: gather_channels: channel %d outside [0, %lld)", idx[j],
                        (long long)X->shape[1]);
    int64_t shape[LTP_MAX_DIMS];
    memcpy(shape, X->shape, sizeof shape);
    shape[1] = n;
    op *o;
    ltp_id y = record(t, OP_GATHER, X->ndim, shape, x, LTP_NONE, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    o->idx = ldm_malloc((size_t)n * sizeof(int));
    if (!o->idx) return fail_alloc(t);
    memcpy(o->idx, idx, (size_t)n * sizeof(int));
    X = &t->vals[x];
    size_t B = (size_t)X->shape[0], C = (size_t)X->shape[1], inner = X->n / (B * C);
    for (size_t b = 0; b < B; b++)
        for (int j = 0; j < n; j++)
            memcpy(t->vals[y].v + (b * (size_t)n + (size_t)j) * inner, X->v + (b * C + (size_t)idx[j]) * inner,
                   inner * sizeof(float));
    return y;
}

void ltp_set_rng(ltp_tape *t, uint64_t seed, uint64_t draw)
{
    if (!t) return;
    t->rng_seed = seed;
    t->rng_draw = draw;
}

uint64_t ltp_site_hash(const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; p && *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    return h;
}

/* Four uniform 32-bit words for elements 4k .. 4k+3 of a site. */
static void dropout_block(uint64_t seed, uint64_t draw, uint64_t site, uint64_t k, uint32_t out[4])
{
    uint32_t ctr[4] = {(uint32_t)k, (uint32_t)draw, (uint32_t)site, (uint32_t)(site >> 32)};
    uint32_t key[2] = {(uint32_t)seed ^ (uint32_t)(k >> 32), (uint32_t)(seed >> 32) ^ (uint32_t)(draw >> 32)};
    ls_philox4x32_10(ctr, key, out);
}

static int keep_word(uint32_t w, float p) { return (double)w * (1.0 / 4294967296.0) >= (double)p; }

int ltp_dropout_keep(uint64_t seed, uint64_t draw, uint64_t site, uint64_t i, float p)
{
    uint32_t o[4];
    dropout_block(seed, draw, site, i / 4, o);
    return keep_word(o[i % 4], p);
}

/* y = x * keep * s over n elements (s = 1 / (1 - p)); used forward and backward. */
static void dropout_apply(const uint64_t key[3], float p, const float *x, size_t n, float *y)
{
    float s = 1.0f / (1.0f - p);
    for (size_t k = 0; 4 * k < n; k++) {
        uint32_t o[4];
        dropout_block(key[0], key[1], key[2], k, o);
        for (size_t j = 0; j < 4 && 4 * k + j < n; j++) y[4 * k + j] = keep_word(o[j], p) ? x[4 * k + j] * s : 0.0f;
    }
}

ltp_id ltp_dropout(ltp_tape *t, ltp_id x, float p, uint64_t site)
{
    if (!operands_ok(t, "dropout", x, LTP_NONE, LTP_NONE, 1)) return LTP_NONE;
    if (!(p >= 0.0f && p < 1.0f)) return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: dropout probability %g", p);
    if (p == 0.0f) return x;
    op *o;
    ltp_id y = record(t, OP_DROPOUT, t->vals[x].ndim, t->vals[x].shape, x, LTP_NONE, LTP_NONE, &o);
    if (y < 0) return LTP_NONE;
    o->f = p;
    o->key[0] = t->rng_seed, o->key[1] = t->rng_draw, o->key[2] = site;
    dropout_apply(o->key, p, t->vals[x].v, t->vals[x].n, t->vals[y].v);
    return y;
}

/* ---------------------------------------------------------------- segments (checkpointing) */

static void segment_free(segment *sg)
{
    if (!sg) return;
    ltp_tape_free(sg->sub);
    ldm_free(sg->ctx);
    ldm_free(sg);
}

static ltp_tape *root_of(ltp_tape *t)
{
    while (t->parent) t = t->parent;
    return t;
}

/* Runs the block on a new sub-tape from t's values `inputs`. */
static ldm_status segment_run(ltp_tape *t, segment *sg, const ltp_id *inputs)
{
    ltp_tape *sub;
    if (ltp_tape_create(&t->c, &sub) != LDM_OK) return fail_alloc(t), t->status;
    sub->parent = t;
    sub->rng_seed = t->rng_seed, sub->rng_draw = t->rng_draw, sub->budget = t->budget;
    sg->sub = sub;
    for (int i = 0; i < sg->n_in; i++) {
        const value *v = &t->vals[inputs[i]];
        sg->sub_in[i] = ltp_input(sub, v->ndim, v->shape, v->v, v->needs_grad);
    }
    sg->sub_out = sub->status == LDM_OK ? sg->fn(sub, sg->ctx, sg->sub_in, sg->n_in) : LTP_NONE;
    if (sub->status == LDM_OK && !valid(sub, sg->sub_out))
        fail(sub, LDM_ERR_INTERNAL, "tape: a segment returned no value");
    if (sub->status != LDM_OK) return fail(t, sub->status, "%s", sub->error), t->status;
    return LDM_OK;
}

ltp_id ltp_segment(ltp_tape *t, ltp_segment_fn fn, const void *ctx, size_t ctx_size, const ltp_id *inputs,
                   int n_inputs, int checkpoint)
{
    if (!t || t->status != LDM_OK) return LTP_NONE;
    if (!fn || !inputs || n_inputs < 1 || n_inputs > 3 || (ctx_size && !ctx))
        return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: segment: bad arguments");
    ltp_id in[3] = {LTP_NONE, LTP_NONE, LTP_NONE};
    for (int i = 0; i < n_inputs; i++) {
        if (!valid(t, inputs[i])) return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: segment: input %d is not a value", i);
        if (t->vals[inputs[i]].param) return fail(t, LDM_ERR_INVALID_ARGUMENT, "tape: segment: input %d is a parameter", i);
        in[i] = inputs[i];
    }
    segment *sg = ldm_calloc(1, sizeof *sg);
    if (!sg) return fail_alloc(t);
    sg->fn = fn, sg->n_in = n_inputs;
    sg->ctx = ldm_malloc(ctx_size ? ctx_size : 1);
    if (!sg->ctx) return ldm_free(sg), fail_alloc(t);
    if (ctx_size) memcpy(sg->ctx, ctx, ctx_size);
    if (segment_run(t, sg, in) != LDM_OK) return segment_free(sg), LTP_NONE;
    const value *so = &sg->sub->vals[sg->sub_out];
    op *o;
    ltp_id y = record(t, OP_SEGMENT, so->ndim, so->shape, in[0], in[1], in[2], &o);
    if (y < 0) return segment_free(sg), LTP_NONE;
    o->seg = sg;
    memcpy(t->vals[y].v, so->v, so->n * sizeof(float));
    t->vals[y].needs_grad = so->needs_grad;
    t->n_segments++;
    ltp_tape *r = root_of(t);
    if (checkpoint || (r->budget && r->bytes > r->budget)) {
        ltp_tape_free(sg->sub);
        sg->sub = NULL;
        t->n_dropped++;
    }
    return y;
}

void ltp_set_activation_budget(ltp_tape *t, size_t bytes)
{
    if (t) t->budget = bytes;
}
size_t ltp_activation_budget(const ltp_tape *t) { return t ? t->budget : 0; }
int ltp_segments(const ltp_tape *t, int *dropped)
{
    if (dropped) *dropped = t ? t->n_dropped : 0;
    return t ? t->n_segments : 0;
}

/* ---------------------------------------------------------------- backward */

/* Where a gradient for value `id` is to be written: its own buffer when it has none yet (the
 * kernel overwrites it), else a temporary that grad_done adds in. NULL: no gradient wanted. */
static float *grad_begin(ltp_tape *t, ltp_id id)
{
    if (id < 0 || t->status != LDM_OK) return NULL;
    value *v = &t->vals[id];
    if (!v->needs_grad) return NULL;
    if (!v->param && !v->g_fresh) {
        if (!v->g) v->g = alloc_floats(t, v->n);
        if (!v->g) {
            fail_alloc(t);
            return NULL;
        }
        return v->g;
    }
    float *tmp = alloc_floats(t, v->n);
    if (!tmp) fail_alloc(t);
    return tmp;
}

static void grad_done(ltp_tape *t, ltp_id id, float *p)
{
    if (!p) return;
    value *v = &t->vals[id];
    if (p != v->g) {
        for (size_t i = 0; i < v->n; i++) v->g[i] += p[i];
        free_floats(t, p, v->n);
    }
    v->g_fresh = 1;
}

ldm_status ltp_seed_grad(ltp_tape *t, ltp_id id, const float *g)
{
    if (!t || !valid(t, id) || !g) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ltp_seed_grad: bad arguments");
    if (t->status != LDM_OK) return t->status;
    value *v = &t->vals[id];
    if (!v->needs_grad) return LDM_OK;
    float *d = grad_begin(t, id);
    if (!d) return t->status;
    memcpy(d, g, v->n * sizeof(float));
    grad_done(t, id, d);
    return LDM_OK;
}

static void back_conv(ltp_tape *t, const op *o, const float *dy)
{
    float *dx = grad_begin(t, o->in[0]), *dw = grad_begin(t, o->in[1]), *db = grad_begin(t, o->in[2]);
    if (t->status != LDM_OK) return;
    ldm_status st = lg_conv2d_backward(&t->c, &o->conv, t->vals[o->in[0]].v, t->vals[o->in[1]].v, dy, dx, dw, db);
    if (st != LDM_OK) fail(t, st, "tape: conv2d backward: %s", ldm_last_error());
    grad_done(t, o->in[0], dx), grad_done(t, o->in[1], dw), grad_done(t, o->in[2], db);
}

static void back_linear(ltp_tape *t, const op *o, const float *dy)
{
    const value *X = &t->vals[o->in[0]], *W = &t->vals[o->in[1]];
    int in = (int)W->shape[1], out = (int)W->shape[0], rows = (int)(X->n / (size_t)in);
    float *dx = grad_begin(t, o->in[0]), *dW = grad_begin(t, o->in[1]), *db = grad_begin(t, o->in[2]);
    if (t->status != LDM_OK) return;
    lg_linear_backward(&t->c, X->v, W->v, dy, rows, in, out, dx, dW, db);
    grad_done(t, o->in[0], dx), grad_done(t, o->in[1], dW), grad_done(t, o->in[2], db);
}

static void back_norm(ltp_tape *t, const op *o, const float *dy)
{
    const value *X = &t->vals[o->in[0]];
    const float *gamma = o->in[1] >= 0 ? t->vals[o->in[1]].v : NULL;
    float *dx = grad_begin(t, o->in[0]), *dg = grad_begin(t, o->in[1]), *dbeta = grad_begin(t, o->in[2]);
    if (t->status != LDM_OK) return;
    ldm_status st;
    if (o->kind == OP_GROUP_NORM) {
        int B = (int)X->shape[0], C = (int)X->shape[1], HW = (int)(X->n / (size_t)(B * C));
        st = lg_group_norm_backward(&t->c, X->v, B, C, HW, o->i[0], o->f, gamma, dy, dx, dg, dbeta);
    } else {
        int dim = (int)X->shape[X->ndim - 1];
        st = lg_layer_norm_backward(&t->c, X->v, (int)(X->n / (size_t)dim), dim, o->f, gamma, dy, dx, dg, dbeta);
    }
    if (st != LDM_OK) fail(t, st, "tape: norm backward: %s", ldm_last_error());
    grad_done(t, o->in[0], dx), grad_done(t, o->in[1], dg), grad_done(t, o->in[2], dbeta);
}

static void back_act(ltp_tape *t, const op *o, const float *dy)
{
    const value *X = &t->vals[o->in[0]];
    float *dx = grad_begin(t, o->in[0]);
    if (!dx) return;
    if (o->kind == OP_SILU)
        lg_silu_backward(&t->c, X->v, dy, X->n, dx);
    else if (o->kind == OP_GELU)
        lg_gelu_backward(&t->c, X->v, dy, X->n, dx);
    else {
        int two_d = (int)X->shape[X->ndim - 1];
        lg_geglu_backward(&t->c, X->v, (int)(X->n / (size_t)two_d), two_d / 2, dy, dx);
    }
    grad_done(t, o->in[0], dx);
}

/* dx = s * dy for the inputs of add (s = 1) and scale; reshape is a copy. */
static void back_copy(ltp_tape *t, ltp_id in, const float *dy, float s)
{
    float *dx = grad_begin(t, in);
    if (!dx) return;
    size_t n = t->vals[in].n;
    for (size_t i = 0; i < n; i++) dx[i] = s * dy[i];
    grad_done(t, in, dx);
}

static void back_channel_bias(ltp_tape *t, const op *o, const float *dy)
{
    const value *X = &t->vals[o->in[0]];
    size_t BC = (size_t)X->shape[0] * X->shape[1], inner = X->n / BC;
    back_copy(t, o->in[0], dy, 1.0f);
    float *de = grad_begin(t, o->in[1]);
    if (!de) return;
    for (size_t bc = 0; bc < BC; bc++) {
        double acc = 0.0;
        for (size_t i = 0; i < inner; i++) acc += dy[bc * inner + i];
        de[bc] = (float)acc;
    }
    grad_done(t, o->in[1], de);
}

static void back_film(ltp_tape *t, const op *o, const float *dy)
{
    const value *X = &t->vals[o->in[0]], *S = &t->vals[o->in[1]];
    int B = (int)X->shape[0], C = (int)X->shape[1];
    size_t inner = X->n / ((size_t)B * C);
    float *dx = grad_begin(t, o->in[0]), *ds = grad_begin(t, o->in[1]);
    if (t->status != LDM_OK) return;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            size_t base = ((size_t)b * C + c) * inner;
            float scale = 1.0f + S->v[(size_t)b * 2 * C + c];
            double dscale = 0.0, dshift = 0.0;
            for (size_t i = 0; i < inner; i++) {
                if (dx) dx[base + i] = dy[base + i] * scale;
                dscale += (double)dy[base + i] * X->v[base + i];
                dshift += dy[base + i];
            }
            if (ds) ds[(size_t)b * 2 * C + c] = (float)dscale, ds[(size_t)b * 2 * C + C + c] = (float)dshift;
        }
    grad_done(t, o->in[0], dx), grad_done(t, o->in[1], ds);
}

static void back_concat(ltp_tape *t, const op *o, const float *dy)
{
    const value *A = &t->vals[o->in[0]], *Bv = &t->vals[o->in[1]];
    int B = (int)A->shape[0], C1 = (int)A->shape[1], C2 = (int)Bv->shape[1];
    int HW = (int)(A->n / (size_t)(B * C1));
    float *da = grad_begin(t, o->in[0]), *db = grad_begin(t, o->in[1]);
    if (t->status != LDM_OK) return;
    lg_split_channels(dy, B, C1, C2, HW, da, db);
    grad_done(t, o->in[0], da), grad_done(t, o->in[1], db);
}

static void back_chunk2(ltp_tape *t, const op *o, const float *dy)
{
    const value *X = &t->vals[o->in[0]];
    float *dx = grad_begin(t, o->in[0]);
    if (!dx) return;
    size_t B = (size_t)X->shape[0], half = X->n / B / 2;
    memset(dx, 0, X->n * sizeof(float));
    for (size_t k = 0; k < B; k++)
        memcpy(dx + k * 2 * half + (size_t)o->i[0] * half, dy + k * half, half * sizeof(float));
    grad_done(t, o->in[0], dx);
}

static void back_resample(ltp_tape *t, const op *o, const float *dy)
{
    const value *X = &t->vals[o->in[0]];
    float *dx = grad_begin(t, o->in[0]);
    if (!dx) return;
    int BC = (int)(X->shape[0] * X->shape[1]), H = (int)X->shape[2], W = (int)X->shape[3];
    if (o->kind == OP_UPSAMPLE2)
        lg_upsample_nearest2_backward(&t->c, dy, BC, H, W, dx);
    else
        lg_avg_pool2_backward(&t->c, dy, BC, H, W, dx);
    grad_done(t, o->in[0], dx);
}

static void back_layout(ltp_tape *t, const op *o, const float *dy)
{
    const value *X = &t->vals[o->in[0]];
    float *dx = grad_begin(t, o->in[0]);
    if (!dx) return;
    if (o->kind == OP_NCHW_TO_NLC) /* y [B,HW,C] from x [B,C,HW]: dx[b,c,p] = dy[b,p,c] */
        transpose_batched(dy, (int)X->shape[0], (int)(X->shape[2] * X->shape[3]), (int)X->shape[1], dx, 0);
    else /* y [B,C,H,W] from x [B,HW,C] */
        transpose_batched(dy, (int)X->shape[0], (int)X->shape[2], (int)X->shape[1], dx, 0);
    grad_done(t, o->in[0], dx);
}

/* [B,T,heads*D] <-> [B*heads,T,D] copies for the backward kernel's contiguous layout. */
static void split_heads(const float *src, int B, int T, int H, int D, float *dst)
{
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int s = 0; s < T; s++)
                memcpy(dst + (((size_t)b * H + h) * T + s) * D, src + ((size_t)b * T + s) * H * D + (size_t)h * D,
                       (size_t)D * sizeof(float));
}

static void merge_heads(const float *src, int B, int T, int H, int D, float *dst)
{
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int s = 0; s < T; s++)
                memcpy(dst + ((size_t)b * T + s) * H * D + (size_t)h * D, src + (((size_t)b * H + h) * T + s) * D,
                       (size_t)D * sizeof(float));
}

static void back_attention(ltp_tape *t, const op *o, const float *dy)
{
    const value *Q = &t->vals[o->in[0]], *K = &t->vals[o->in[1]], *V = &t->vals[o->in[2]];
    int H = o->i[0], B = (int)Q->shape[0], Tq = (int)Q->shape[1], Tk = (int)K->shape[1];
    int D = (int)Q->shape[2] / H;
    size_t nq = Q->n, nk = K->n;
    float *buf = alloc_floats(t, 4 * nq + 4 * nk);
    if (!buf) {
        fail_alloc(t);
        return;
    }
    float *q = buf, *dout = q + nq, *dq = dout + nq, *tq = dq + nq;
    float *k = tq + nq, *v = k + nk, *dk = v + nk, *dv = dk + nk;
    split_heads(Q->v, B, Tq, H, D, q);
    split_heads(K->v, B, Tk, H, D, k);
    split_heads(V->v, B, Tk, H, D, v);
    split_heads(dy, B, Tq, H, D, dout);
    ldm_status st =
        lg_attention_backward(&t->c, B * H, Tq, Tk, D, q, k, v, dout, 1.0f / sqrtf((float)D), 0, dq, dk, dv);
    if (st != LDM_OK) {
        fail(t, st, "tape: attention backward: %s", ldm_last_error());
    } else {
        const float *parts[3] = {dq, dk, dv};
        int lens[3] = {Tq, Tk, Tk};
        for (int j = 0; j < 3; j++) {
            float *d = grad_begin(t, o->in[j]);
            if (!d) continue;
            merge_heads(parts[j], B, lens[j], H, D, d);
            grad_done(t, o->in[j], d);
        }
    }
    (void)tq;
    free_floats(t, buf, 4 * nq + 4 * nk);
}

static void back_embedding(ltp_tape *t, const op *o, const float *dy)
{
    const value *T = &t->vals[o->in[0]];
    float *dt = grad_begin(t, o->in[0]);
    if (!dt) return;
    const labels *L = &t->labs[o->i[0]];
    ldm_status st = lg_embedding_backward(&t->c, L->v, L->n, dy, (int)T->shape[0], (int)T->shape[1], dt);
    if (st != LDM_OK) fail(t, st, "tape: embedding backward: %s", ldm_last_error());
    grad_done(t, o->in[0], dt);
}

static void back_gaussian(ltp_tape *t, const op *o, const float *dy)
{
    const value *M = &t->vals[o->in[0]];
    float *dm = grad_begin(t, o->in[0]);
    if (!dm) return;
    size_t B = (size_t)M->shape[0], half = M->n / B / 2;
    for (size_t b = 0; b < B; b++)
        for (size_t i = 0; i < half; i++) {
            float raw = M->v[b * 2 * half + half + i], lv = clamp_logvar(raw), g = dy[b * half + i];
            dm[b * 2 * half + i] = g;
            /* torch's clamp passes the gradient where min <= x <= max */
            int inside = raw >= -30.0f && raw <= 20.0f;
            dm[b * 2 * half + half + i] = inside ? g * 0.5f * expf(0.5f * lv) * o->aux[b * half + i] : 0.0f;
        }
    grad_done(t, o->in[0], dm);
}

static void back_gather(ltp_tape *t, const op *o, const float *dy)
{
    const value *X = &t->vals[o->in[0]];
    float *dx = grad_begin(t, o->in[0]);
    if (!dx) return;
    size_t B = (size_t)X->shape[0], C = (size_t)X->shape[1], inner = X->n / (B * C);
    size_t n = t->vals[o->out].n / (B * inner);
    memset(dx, 0, X->n * sizeof(float));
    for (size_t b = 0; b < B; b++)
        for (size_t j = 0; j < n; j++) {
            float *d = dx + (b * C + (size_t)o->idx[j]) * inner;
            const float *g = dy + (b * n + j) * inner;
            for (size_t i = 0; i < inner; i++) d[i] += g[i];
        }
    grad_done(t, o->in[0], dx);
}

static void back_dropout(ltp_tape *t, const op *o, const float *dy)
{
    float *dx = grad_begin(t, o->in[0]);
    if (!dx) return;
    dropout_apply(o->key, o->f, dy, t->vals[o->in[0]].n, dx);
    grad_done(t, o->in[0], dx);
}

/* The block's backward on its sub-tape (run again first when it was dropped). The inputs'
 * gradients so far are seeded into the sub-tape, so they accumulate in the order of an
 * unsegmented tape, and the sums come back in place of them. */
static void back_segment(ltp_tape *t, const op *o, const float *dy)
{
    segment *sg = o->seg;
    if (!sg->sub && segment_run(t, sg, o->in) != LDM_OK) return;
    ltp_tape *sub = sg->sub;
    for (int i = 0; i < sg->n_in; i++) {
        const value *v = &t->vals[o->in[i]];
        if (v->needs_grad && v->g_fresh && ltp_seed_grad(sub, sg->sub_in[i], v->g) != LDM_OK) break;
    }
    if (sub->status == LDM_OK) ltp_seed_grad(sub, sg->sub_out, dy);
    if (sub->status == LDM_OK) ltp_backward(sub);
    if (sub->status != LDM_OK) {
        fail(t, sub->status, "%s", sub->error);
        return;
    }
    for (int i = 0; i < sg->n_in; i++) {
        value *v = &t->vals[o->in[i]];
        const float *g = ltp_grad(sub, sg->sub_in[i]);
        if (!g || !v->needs_grad) continue;
        if (!v->g) v->g = alloc_floats(t, v->n);
        if (!v->g) {
            fail_alloc(t);
            return;
        }
        memcpy(v->g, g, v->n * sizeof(float));
        v->g_fresh = 1;
    }
    ltp_tape_free(sub);
    sg->sub = NULL;
}

static void back_op(ltp_tape *t, const op *o, const float *dy)
{
    switch (o->kind) {
    case OP_LEAF: break;
    case OP_CONV: back_conv(t, o, dy); break;
    case OP_LINEAR: back_linear(t, o, dy); break;
    case OP_GROUP_NORM:
    case OP_LAYER_NORM: back_norm(t, o, dy); break;
    case OP_SILU:
    case OP_GELU:
    case OP_GEGLU: back_act(t, o, dy); break;
    case OP_ADD:
        back_copy(t, o->in[0], dy, 1.0f);
        back_copy(t, o->in[1], dy, 1.0f);
        break;
    case OP_SCALE: back_copy(t, o->in[0], dy, o->f); break;
    case OP_RESHAPE: back_copy(t, o->in[0], dy, 1.0f); break;
    case OP_CHANNEL_BIAS: back_channel_bias(t, o, dy); break;
    case OP_FILM: back_film(t, o, dy); break;
    case OP_CONCAT: back_concat(t, o, dy); break;
    case OP_CHUNK2: back_chunk2(t, o, dy); break;
    case OP_UPSAMPLE2:
    case OP_AVGPOOL2: back_resample(t, o, dy); break;
    case OP_NCHW_TO_NLC:
    case OP_NLC_TO_NCHW: back_layout(t, o, dy); break;
    case OP_ATTENTION: back_attention(t, o, dy); break;
    case OP_EMBEDDING: back_embedding(t, o, dy); break;
    case OP_GAUSSIAN: back_gaussian(t, o, dy); break;
    case OP_GATHER: back_gather(t, o, dy); break;
    case OP_DROPOUT: back_dropout(t, o, dy); break;
    case OP_SEGMENT: back_segment(t, o, dy); break;
    }
}

ldm_status ltp_backward(ltp_tape *t)
{
    if (!t) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ltp_backward: NULL tape");
    for (size_t i = t->n_ops; i-- > 0 && t->status == LDM_OK;) {
        const op *o = &t->ops[i];
        value *y = &t->vals[o->out];
        if (!y->g_fresh || !y->needs_grad) continue;
        if (lctx_cancelled(&t->c)) return fail(t, LDM_CANCELLED, "training step cancelled"), t->status;
        back_op(t, o, y->g);
        /* the output's gradient is no longer needed: give the memory back early */
        if (!y->param) {
            free_floats(t, y->g, y->n);
            y->g = NULL;
            y->g_fresh = 0;
        }
    }
    return t->status;
}
