/* bert.c - BERTEmbedder (x_transformer TransformerWrapper + Encoder), see bert.h. */
#include "bert.h"

#include "../kernels/kernels.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define BERT_MODEL  "BERT text encoder (BERTEmbedder)"
#define BERT_LN_EPS 1e-5f
/* x_transformer Attention defaults; BERTEmbedder never overrides them. */
#define BERT_DEFAULT_HEADS    8
#define BERT_DEFAULT_DIM_HEAD 64
/* Upper bound when counting layers by name. */
#define BERT_MAX_LAYERS 256
#define BERT_MAX_PREFIX 200

/* One Encoder depth step = an ('a', 'f') pair of pre-norm residual layers. */
typedef struct bert_layer {
    float *ln_a_w, *ln_a_b;
    float *qkv_w;         /* [3*inner, dim]: to_q, to_k, to_v stacked (no bias) */
    float *out_w, *out_b; /* [dim, inner], [dim] */
    float *ln_f_w, *ln_f_b;
    float *fc1_w, *fc1_b; /* [ff, dim], [ff] */
    float *fc2_w, *fc2_b; /* [dim, ff], [dim] */
} bert_layer;

struct lbert {
    int dim, depth, heads, dim_head, inner, ff, vocab, max_seq;
    float *tok_emb; /* [vocab, dim] */
    float *pos_emb; /* [max_seq, dim] */
    float *norm_w, *norm_b;
    bert_layer *layers;
};

/* ---- loading */

static ldm_status load(const lw_store *s, int ndim, int64_t d0, int64_t d1, float **out, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static ldm_status load(const lw_store *s, int ndim, int64_t d0, int64_t d1, float **out, const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof name)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tensor name too long (%.64s...)", name);
    int64_t shape[2] = {d0, d1};
    return lw_get_f32(s, name, ndim, shape, out);
}

static void free_layer(bert_layer *l)
{
    float **all[] = {&l->ln_a_w, &l->ln_a_b, &l->qkv_w, &l->out_w, &l->out_b, &l->ln_f_w,
                     &l->ln_f_b, &l->fc1_w,  &l->fc1_b, &l->fc2_w, &l->fc2_b};
    for (size_t i = 0; i < LDM_ARRAY_LEN(all); i++) {
        ldm_free(*all[i]);
        *all[i] = NULL;
    }
}

void lbert_free(lbert *n)
{
    if (!n) return;
    if (n->layers)
        for (int i = 0; i < n->depth; i++) free_layer(&n->layers[i]);
    ldm_free(n->layers);
    ldm_free(n->tok_emb);
    ldm_free(n->pos_emb);
    ldm_free(n->norm_w);
    ldm_free(n->norm_b);
    ldm_free(n);
}

/* Stacks to_q/to_k/to_v into one [3*inner, dim] matrix so a single GEMM yields q|k|v per row. */
static ldm_status load_qkv(const lw_store *s, const char *ap, const lbert *n, bert_layer *l)
{
    static const char *const part[3] = {"to_q", "to_k", "to_v"};
    size_t block = (size_t)n->inner * (size_t)n->dim;
    l->qkv_w = ldm_malloc_aligned(3 * block * sizeof(float));
    if (!l->qkv_w) return LDM_ERR_OUT_OF_MEMORY;
    for (int i = 0; i < 3; i++) {
        float *w = NULL;
        LDM_TRY(load(s, 2, n->inner, n->dim, &w, "%s%s.weight", ap, part[i]));
        memcpy(l->qkv_w + (size_t)i * block, w, block * sizeof(float));
        ldm_free(w);
    }
    return LDM_OK;
}

static ldm_status load_layer(const lw_store *s, const char *root, int i, const lbert *n, bert_layer *l)
{
    char a[384], f[384];
    int la = snprintf(a, sizeof a, "%sattn_layers.layers.%d.", root, 2 * i);
    int lf = snprintf(f, sizeof f, "%sattn_layers.layers.%d.", root, 2 * i + 1);
    if (la < 0 || lf < 0 || (size_t)la >= sizeof a || (size_t)lf >= sizeof f)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "key prefix too long");
    const int D = n->dim;
    LDM_TRY(load(s, 1, D, 0, &l->ln_a_w, "%s0.weight", a));
    LDM_TRY(load(s, 1, D, 0, &l->ln_a_b, "%s0.bias", a));
    char ap[400];
    snprintf(ap, sizeof ap, "%s1.", a);
    LDM_TRY(load_qkv(s, ap, n, l));
    LDM_TRY(load(s, 2, D, n->inner, &l->out_w, "%s1.to_out.weight", a));
    LDM_TRY(load(s, 1, D, 0, &l->out_b, "%s1.to_out.bias", a));
    LDM_TRY(load(s, 1, D, 0, &l->ln_f_w, "%s0.weight", f));
    LDM_TRY(load(s, 1, D, 0, &l->ln_f_b, "%s0.bias", f));
    LDM_TRY(load(s, 2, n->ff, D, &l->fc1_w, "%s1.net.0.0.weight", f));
    LDM_TRY(load(s, 1, n->ff, 0, &l->fc1_b, "%s1.net.0.0.bias", f));
    LDM_TRY(load(s, 2, D, n->ff, &l->fc2_w, "%s1.net.2.weight", f));
    LDM_TRY(load(s, 1, D, 0, &l->fc2_b, "%s1.net.2.bias", f));
    return LDM_OK;
}

/* ---- dimensions: from the desc, checked against (or, when 0, taken from) the weights */

static ldm_status find_2d(const lw_store *s, const char *name, const lw_tensor **out)
{
    const lw_tensor *t = lw_find(s, name);
    if (!t) return ldm_fail(LDM_ERR_NOT_FOUND, BERT_MODEL ": %s: tensor %s not found", lw_path(s), name);
    if (t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > INT_MAX || t->shape[1] > INT_MAX)
        return ldm_fail(LDM_ERR_FORMAT, BERT_MODEL ": %s: tensor %s: expected a non-empty 2-D tensor, found rank %d",
                        lw_path(s), name, t->ndim);
    *out = t;
    return LDM_OK;
}

static ldm_status agree(int *dim, int64_t found, const char *what, const char *tensor)
{
    if (*dim == 0) {
        *dim = (int)found;
        return LDM_OK;
    }
    if (*dim != found)
        return ldm_fail(LDM_ERR_FORMAT,
                        BERT_MODEL ": the model description says %s %d but the checkpoint has %lld "
                                   "(tensor %s)",
                        what, *dim, (long long)found, tensor);
    return LDM_OK;
}

/* Encoder layers come in ('a','f') pairs: layers.0 .. layers.(2*depth-1). */
static ldm_status count_depth(const lw_store *s, const char *root, int *depth)
{
    char p[512];
    int n = 0;
    for (; n < 2 * BERT_MAX_LAYERS; n++) {
        snprintf(p, sizeof p, "%sattn_layers.layers.%d.", root, n);
        if (!lw_has_prefix(s, p)) break;
    }
    if (n == 0 || n % 2)
        return ldm_fail(LDM_ERR_FORMAT,
                        BERT_MODEL ": %s: expected an even, non-zero number of %sattn_layers.layers.N "
                                   "(attention, feed-forward pairs), found %d",
                        lw_path(s), root, n);
    snprintf(p, sizeof p, "%sattn_layers.layers.<N>.*", root);
    return agree(depth, n / 2, "n_layer", p);
}

static ldm_status resolve_dims(const ld_cond *d, const lw_store *s, const char *root, lbert *n)
{
    char name[512];
    n->dim = d->n_embed;
    n->depth = d->n_layer;
    n->vocab = d->vocab_size;
    n->max_seq = d->max_seq_len;
    n->heads = d->bert_heads ? d->bert_heads : BERT_DEFAULT_HEADS;
    n->dim_head = d->bert_dim_head ? d->bert_dim_head : BERT_DEFAULT_DIM_HEAD;
    if (n->dim < 0 || n->depth < 0 || n->vocab < 0 || n->max_seq < 0 || n->heads < 1 || n->dim_head < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, BERT_MODEL ": invalid dimension in the model description");

    snprintf(name, sizeof name, "%stoken_emb.weight", root);
    const lw_tensor *t = NULL;
    LDM_TRY(find_2d(s, name, &t));
    LDM_TRY(agree(&n->vocab, t->shape[0], "vocab_size", name));
    LDM_TRY(agree(&n->dim, t->shape[1], "n_embed", name));

    snprintf(name, sizeof name, "%spos_emb.emb.weight", root);
    LDM_TRY(find_2d(s, name, &t));
    LDM_TRY(agree(&n->max_seq, t->shape[0], "max_seq_len", name));
    LDM_TRY(agree(&n->dim, t->shape[1], "n_embed", name));

    LDM_TRY(count_depth(s, root, &n->depth));

    snprintf(name, sizeof name, "%sattn_layers.layers.0.1.to_q.weight", root);
    LDM_TRY(find_2d(s, name, &t));
    if ((int64_t)n->heads * n->dim_head != t->shape[0])
        return ldm_fail(LDM_ERR_FORMAT,
                        BERT_MODEL ": heads %d x dim_head %d = %lld does not match the attention "
                                   "inner dimension %lld of %s",
                        n->heads, n->dim_head, (long long)n->heads * n->dim_head, (long long)t->shape[0], name);
    n->inner = (int)t->shape[0];

    snprintf(name, sizeof name, "%sattn_layers.layers.1.1.net.0.0.weight", root);
    LDM_TRY(find_2d(s, name, &t));
    n->ff = (int)t->shape[0];
    return LDM_OK;
}

static ldm_status load_weights(const lw_store *s, const char *root, lbert *n)
{
    LDM_TRY(load(s, 2, n->vocab, n->dim, &n->tok_emb, "%stoken_emb.weight", root));
    LDM_TRY(load(s, 2, n->max_seq, n->dim, &n->pos_emb, "%spos_emb.emb.weight", root));
    LDM_TRY(load(s, 1, n->dim, 0, &n->norm_w, "%snorm.weight", root));
    LDM_TRY(load(s, 1, n->dim, 0, &n->norm_b, "%snorm.bias", root));
    /* Zeroed, so lbert_free can release a partly loaded set. */
    n->layers = ldm_calloc((size_t)n->depth, sizeof *n->layers);
    if (!n->layers) return LDM_ERR_OUT_OF_MEMORY;
    for (int i = 0; i < n->depth; i++) LDM_TRY(load_layer(s, root, i, n, &n->layers[i]));
    return LDM_OK;
}

static ldm_status create_checked(const ld_cond *d, const lw_store *s, const char *prefix, lbert *n)
{
    char root[256];
    int len = snprintf(root, sizeof root, "%stransformer.", prefix);
    if (len < 0 || (size_t)len >= sizeof root) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "key prefix too long");
    LDM_TRY(resolve_dims(d, s, root, n));
    ldm_status st = load_weights(s, root, n);
    return st == LDM_OK ? st : ldm_fail_context(st, BERT_MODEL ": ");
}

ldm_status lbert_create(const ld_cond *d, const lw_store *s, const char *prefix, lbert **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lbert_create: NULL output pointer");
    *out = NULL;
    if (!d || !s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lbert_create: NULL description or weights");
    if (d->kind != LD_COND_BERT)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lbert_create: cond kind %d is not BERTEmbedder", (int)d->kind);
    if (!prefix) prefix = "";
    /* Every key name is built in a fixed-size buffer: bound the prefix once here. */
    if (strlen(prefix) > BERT_MAX_PREFIX)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lbert_create: key prefix longer than %d characters",
                        BERT_MAX_PREFIX);
    lbert *n = ldm_calloc(1, sizeof *n);
    if (!n) return LDM_ERR_OUT_OF_MEMORY;
    ldm_status st = create_checked(d, s, prefix, n);
    if (st != LDM_OK) {
        lbert_free(n);
        return st;
    }
    *out = n;
    return LDM_OK;
}

int lbert_dim(const lbert *n)
{
    return n->dim;
}
int lbert_max_seq_len(const lbert *n)
{
    return n->max_seq;
}
int lbert_vocab(const lbert *n)
{
    return n->vocab;
}

/* ---- forward */

/* Scratch for N = B*T rows; `big` holds q|k|v [N,3*inner] during attention and the
 * feed-forward hidden [N,ff] afterwards. */
typedef struct bert_scratch {
    float *h;   /* [N,dim] */
    float *att; /* [N,inner] */
    float *big;
} bert_scratch;

static ldm_status check_tokens(const lbert *n, const ldm_tensor *tokens, int *B, int *T)
{
    char buf[96];
    LDM_TRY(lt_check(tokens, BERT_MODEL ": tokens", LDM_I64, 2));
    if (tokens->shape[0] < 1 || tokens->shape[1] < 1 || tokens->shape[1] > n->max_seq)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        BERT_MODEL ": tokens: expected [B,T] with B >= 1 and "
                                   "1 <= T <= max_seq_len %d, found %s",
                        n->max_seq, lt_shape_str(tokens, buf, sizeof buf));
    if (tokens->shape[0] > INT_MAX / tokens->shape[1])
        return ldm_fail(LDM_ERR_LIMIT, BERT_MODEL ": tokens: batch %lld too large", (long long)tokens->shape[0]);
    *B = (int)tokens->shape[0];
    *T = (int)tokens->shape[1];
    const int64_t *ids = lt_i64(tokens);
    for (int64_t i = 0; i < (int64_t)*B * *T; i++)
        if (ids[i] < 0 || ids[i] >= n->vocab)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, BERT_MODEL ": token id %lld at [%lld,%lld] is outside [0,%d)",
                            (long long)ids[i], (long long)(i / *T), (long long)(i % *T), n->vocab);
    return LDM_OK;
}

static ldm_status alloc_scratch(const lbert *n, int rows, bert_scratch *sc)
{
    size_t nh, na, nbig;
    size_t big_cols = (size_t)LDM_MAX(3 * (size_t)n->inner, (size_t)n->ff);
    if (ldm_mul_size((size_t)rows, (size_t)n->dim * sizeof(float), &nh) ||
        ldm_mul_size((size_t)rows, (size_t)n->inner * sizeof(float), &na) ||
        ldm_mul_size((size_t)rows, big_cols * sizeof(float), &nbig))
        return ldm_fail(LDM_ERR_LIMIT, BERT_MODEL ": scratch size overflows");
    sc->h = ldm_malloc_aligned(nh);
    sc->att = ldm_malloc_aligned(na);
    sc->big = ldm_malloc_aligned(nbig);
    return sc->h && sc->att && sc->big ? LDM_OK : LDM_ERR_OUT_OF_MEMORY;
}

static void free_scratch(bert_scratch *sc)
{
    ldm_free(sc->h);
    ldm_free(sc->att);
    ldm_free(sc->big);
}

/* x[b,t,:] = token_emb[id] + pos_emb[t] (emb_dropout is 0, project_emb is Identity). */
static void embed(const lbert *n, const int64_t *ids, int B, int T, float *x)
{
    const size_t D = (size_t)n->dim;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *te = n->tok_emb + (size_t)ids[(size_t)b * T + t] * D;
            const float *pe = n->pos_emb + (size_t)t * D;
            float *row = x + ((size_t)b * T + t) * D;
            for (size_t i = 0; i < D; i++) row[i] = te[i] + pe[i];
        }
}

/* x += to_out(attention(LN x)), full (unmasked) self-attention. */
static ldm_status attention_layer(const lbert *n, const bert_layer *l, const lctx *c, int B, int T, float *x,
                                  bert_scratch *sc)
{
    const int D = n->dim, I = n->inner, N = B * T, dh = n->dim_head;
    lk_layer_norm(c, x, N, D, BERT_LN_EPS, l->ln_a_w, l->ln_a_b, sc->h);
    lk_linear(c, sc->h, N, D, l->qkv_w, NULL, 3 * I, sc->big);
    /* Row (b,t) of big = [q | k | v], each `inner` wide, split '(h d)' head-major. */
    long sb = (long)T * 3 * I, st = 3L * I;
    lk_view q = {sc->big, sb, dh, st, 1};
    lk_view k = {sc->big + I, sb, dh, st, 1};
    lk_view v = {sc->big + 2 * I, sb, dh, st, 1};
    lk_view o = {sc->att, (long)T * I, dh, I, 1};
    LDM_TRY(lk_attention(c, B, n->heads, T, T, dh, q, k, v, o, 1.0f / sqrtf((float)dh), 0));
    lk_linear(c, sc->att, N, I, l->out_w, l->out_b, D, sc->h);
    lk_add(x, sc->h, (size_t)N * D);
    return LDM_OK;
}

/* x += net.2(GELU(net.0.0(LN x))) */
static void feed_forward_layer(const lbert *n, const bert_layer *l, const lctx *c, int N, float *x, bert_scratch *sc)
{
    const int D = n->dim, F = n->ff;
    lk_layer_norm(c, x, N, D, BERT_LN_EPS, l->ln_f_w, l->ln_f_b, sc->h);
    lk_linear(c, sc->h, N, D, l->fc1_w, l->fc1_b, F, sc->big);
    lk_gelu(sc->big, (size_t)N * F);
    lk_linear(c, sc->big, N, F, l->fc2_w, l->fc2_b, D, sc->h);
    lk_add(x, sc->h, (size_t)N * D);
}

static ldm_status run_layers(const lbert *n, const lctx *c, int B, int T, float *x, bert_scratch *sc)
{
    for (int i = 0; i < n->depth; i++) {
        if (lctx_cancelled(c)) return ldm_fail(LDM_CANCELLED, "cancelled");
        LDM_TRY(attention_layer(n, &n->layers[i], c, B, T, x, sc));
        feed_forward_layer(n, &n->layers[i], c, B * T, x, sc);
    }
    if (lctx_cancelled(c)) return ldm_fail(LDM_CANCELLED, "cancelled");
    lk_layer_norm(c, x, B * T, n->dim, BERT_LN_EPS, n->norm_w, n->norm_b, x);
    return LDM_OK;
}

ldm_status lbert_encode(lbert *n, const lctx *c, const ldm_tensor *tokens, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lbert_encode: NULL output pointer");
    *out = NULL;
    if (!n) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lbert_encode: NULL encoder");
    int B = 0, T = 0;
    LDM_TRY(check_tokens(n, tokens, &B, &T));
    int64_t shape[3] = {B, T, n->dim};
    ldm_tensor *y = lt_new_f32(3, shape);
    if (!y) return ldm_fail_context(LDM_ERR_OUT_OF_MEMORY, BERT_MODEL ": output: ");
    bert_scratch sc = {0};
    ldm_status st = alloc_scratch(n, B * T, &sc);
    if (st == LDM_OK) {
        /* The residual stream lives in the output tensor; the final LayerNorm runs in place. */
        embed(n, lt_i64(tokens), B, T, lt_f32(y));
        st = run_layers(n, c, B, T, lt_f32(y), &sc);
    }
    free_scratch(&sc);
    if (st != LDM_OK) {
        ldm_tensor_free(y);
        return st;
    }
    *out = y;
    return LDM_OK;
}
