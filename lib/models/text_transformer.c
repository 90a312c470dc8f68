/* text_transformer.c - pre-LN transformer text tower shared by CLIP and BERT, see text_transformer.h. */
#include "text_transformer.h"

#include "../kernels/kernels.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define LTT_LN_EPS 1e-5f

/* ---- loading */

/* "<stem><suffix>" into buf (errors say the name is too long). */
static ldm_status join(char *buf, size_t cap, const char *stem, const char *suffix)
{
    int len = snprintf(buf, cap, "%s%s", stem, suffix);
    if (len < 0 || (size_t)len >= cap)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tensor name too long (%.64s...)", stem);
    return LDM_OK;
}

/* A float32 copy of "<stem><suffix>", shape [d0] (d1 == 0) or [d0,d1]. */
static ldm_status get(const lw_store *s, const char *stem, const char *suffix, int64_t d0, int64_t d1, float **out)
{
    int64_t shape[2] = {d0, d1};
    return lw_get_f32f(s, d1 ? 2 : 1, shape, out, "%s%s", stem, suffix);
}

/* The matrix "<stem><suffix>" [d0,d1] as an lnw (borrowed halves or a float32 copy). */
static ldm_status get_wt(const lw_store *s, const char *stem, const char *suffix, int64_t d0, int64_t d1, lnw *out)
{
    char name[512];
    memset(out, 0, sizeof *out);
    LDM_TRY(join(name, sizeof name, stem, suffix));
    return lnw_get(s, name, 2, (int64_t[]){d0, d1}, out);
}

/* vsnprintf of a stem into buf. */
static ldm_status format_stem(char *buf, size_t cap, const char *fmt, va_list ap)
{
    int len = vsnprintf(buf, cap, fmt, ap);
    if (len < 0 || (size_t)len >= cap)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tensor name too long (%.64s...)", buf);
    return LDM_OK;
}

ldm_status ltt_get_norm(const lw_store *s, int64_t dim, float **w, float **b, const char *fmt, ...)
{
    char stem[512];
    va_list ap;
    va_start(ap, fmt);
    ldm_status st = format_stem(stem, sizeof stem, fmt, ap);
    va_end(ap);
    LDM_TRY(st);
    LDM_TRY(get(s, stem, ".weight", dim, 0, w));
    return get(s, stem, ".bias", dim, 0, b);
}

ldm_status ltt_get_linear(const lw_store *s, int64_t rows, int64_t cols, lnw *w, float **b, const char *fmt, ...)
{
    char stem[512];
    va_list ap;
    va_start(ap, fmt);
    ldm_status st = format_stem(stem, sizeof stem, fmt, ap);
    va_end(ap);
    LDM_TRY(st);
    LDM_TRY(get_wt(s, stem, ".weight", rows, cols, w));
    return get(s, stem, ".bias", rows, 0, b);
}

ldm_status ltt_get_fused_qkv(const lw_store *s, int64_t inner, int64_t cols, ltt_block *blk, const char *name)
{
    blk->n_qkv = 1;
    return get_wt(s, name, "", 3 * inner, cols, &blk->qkv[0]);
}

/* When q, k and v are all float32 (float32 checkpoints, LDM_WIDEN_F16=1), they are stacked into
 * one fused copy: the forward pass then makes the single product it always made, so float32
 * results stay bitwise what they were (three narrower products round differently). The copy is
 * small (3 x 768 x 768 floats per layer for SD1's CLIP). Borrowed halves stay three parts. */
static ldm_status fuse_copies(int64_t rows, int64_t cols, ltt_block *blk)
{
    for (int i = 0; i < 3; i++)
        if (!blk->qkv[i].w.f32) return LDM_OK;
    size_t part = (size_t)rows * (size_t)cols;
    float *all = ldm_malloc_aligned(3 * part * sizeof(float));
    if (!all) return ldm_alloc_failure_status();
    for (int i = 0; i < 3; i++) {
        memcpy(all + i * part, blk->qkv[i].w.f32, part * sizeof(float));
        lnw_free(&blk->qkv[i]);
    }
    blk->qkv[0].own = all;
    blk->qkv[0].w = lk_wt_f32(all);
    blk->n_qkv = 1;
    return LDM_OK;
}

ldm_status ltt_get_qkv(const lw_store *s, int64_t rows, int64_t cols, ltt_block *blk, int with_bias, const char *stem,
                       const char *const part[3])
{
    char name[512];
    blk->n_qkv = 3;
    for (int i = 0; i < 3; i++) {
        LDM_TRY(join(name, sizeof name, stem, part[i]));
        LDM_TRY(get_wt(s, name, ".weight", rows, cols, &blk->qkv[i]));
    }
    LDM_TRY(fuse_copies(rows, cols, blk));
    if (!with_bias) return LDM_OK;
    blk->qkv_b = ldm_malloc_aligned(3 * (size_t)rows * sizeof(float));
    if (!blk->qkv_b) return ldm_alloc_failure_status();
    for (int i = 0; i < 3; i++) {
        float *src = NULL;
        LDM_TRY(join(name, sizeof name, stem, part[i]));
        LDM_TRY(get(s, name, ".bias", rows, 0, &src));
        memcpy(blk->qkv_b + i * (size_t)rows, src, (size_t)rows * sizeof(float));
        ldm_free(src);
    }
    return LDM_OK;
}

ldm_status ltt_find_2d(const ltt *t, const lw_store *s, const char *name, const lw_tensor **out)
{
    const lw_tensor *w = lw_find(s, name);
    if (!w) return ldm_fail(LDM_ERR_NOT_FOUND, "%s: %s: tensor %s not found", t->model, lw_path(s), name);
    if (w->ndim != 2 || w->shape[0] < 1 || w->shape[1] < 1 || w->shape[0] > INT_MAX || w->shape[1] > INT_MAX)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s: tensor %s: expected a non-empty 2-D tensor, found rank %d", t->model,
                        lw_path(s), name, w->ndim);
    *out = w;
    return LDM_OK;
}

ldm_status ltt_agree(const ltt *t, int *dim, int64_t found, const char *what, const char *tensor)
{
    if (*dim == 0) {
        *dim = (int)found;
        return LDM_OK;
    }
    if (*dim != found)
        return ldm_fail(LDM_ERR_FORMAT, "%s: the model description says %s %d but the checkpoint has %lld (tensor %s)",
                        t->model, what, *dim, (long long)found, tensor);
    return LDM_OK;
}

ldm_status ltt_dims_2d(const ltt *t, const lw_store *s, const char *name, int *rows, const char *rows_what, int *cols,
                       const char *cols_what)
{
    const lw_tensor *w = NULL;
    LDM_TRY(ltt_find_2d(t, s, name, &w));
    LDM_TRY(ltt_agree(t, rows, w->shape[0], rows_what, name));
    return cols ? ltt_agree(t, cols, w->shape[1], cols_what, name) : LDM_OK;
}

ldm_status ltt_load_outer(ltt *t, const lw_store *s, const char *tok_emb, const char *pos_emb, const char *final_ln,
                          int n_blocks)
{
    LDM_TRY(lnw_get(s, tok_emb, 2, (int64_t[]){t->vocab, t->dim}, &t->tok_emb));
    LDM_TRY(lw_get_f32(s, pos_emb, 2, (int64_t[]){t->max_seq, t->dim}, &t->pos_emb));
    LDM_TRY(ltt_get_norm(s, t->dim, &t->lnf_w, &t->lnf_b, "%s", final_ln));
    /* Zeroed, so ltt_release can free a partly loaded set. */
    t->blocks = ldm_calloc((size_t)n_blocks, sizeof *t->blocks);
    if (!t->blocks) return ldm_alloc_failure_status();
    t->n_blocks = n_blocks;
    return LDM_OK;
}

static void free_block(ltt_block *b)
{
    float *all[] = {b->ln1_w, b->ln1_b, b->qkv_b, b->out_b, b->ln2_w, b->ln2_b, b->fc1_b, b->fc2_b};
    for (size_t i = 0; i < LDM_ARRAY_LEN(all); i++) ldm_free(all[i]);
    lnw *mats[] = {&b->qkv[0], &b->qkv[1], &b->qkv[2], &b->out, &b->fc1, &b->fc2};
    for (size_t i = 0; i < LDM_ARRAY_LEN(mats); i++) lnw_free(mats[i]);
}

void ltt_release(ltt *t)
{
    if (t->blocks)
        for (int i = 0; i < t->n_blocks; i++) free_block(&t->blocks[i]);
    ldm_free(t->blocks);
    lnw_free(&t->tok_emb);
    ldm_free(t->pos_emb);
    ldm_free(t->lnf_w);
    ldm_free(t->lnf_b);
    memset(t, 0, sizeof *t);
}

/* ---- forward */

/* Scratch for one encode call over N = B*T rows. `big` holds q|k|v [N,3*inner] during attention
 * and the MLP hidden [N,ff] afterwards (never live together). */
typedef struct ltt_scratch {
    float *h;   /* [N,dim] normalised input / sub-layer output */
    float *att; /* [N,inner] attention output before the out projection */
    float *big;
} ltt_scratch;

static ldm_status check_tokens(const ltt *t, const ldm_tensor *tokens, int *B, int *T)
{
    char buf[96], what[128];
    snprintf(what, sizeof what, "%s: tokens", t->model);
    LDM_TRY(lt_check(tokens, what, LDM_I64, 2));
    if (tokens->shape[0] < 1 || tokens->shape[1] < 1 || tokens->shape[1] > t->max_seq)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: tokens: expected [B,T] with B >= 1 and 1 <= T <= %d, found %s",
                        t->model, t->max_seq, lt_shape_str(tokens, buf, sizeof buf));
    if (tokens->shape[0] > INT_MAX / tokens->shape[1])
        return ldm_fail(LDM_ERR_LIMIT, "%s: tokens: batch %lld too large", t->model, (long long)tokens->shape[0]);
    *B = (int)tokens->shape[0];
    *T = (int)tokens->shape[1];
    const int64_t *ids = lt_i64(tokens);
    for (int64_t i = 0; i < (int64_t)*B * *T; i++)
        if (ids[i] < 0 || ids[i] >= t->vocab)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: token id %lld at [%lld,%lld] is outside [0,%d)", t->model,
                            (long long)ids[i], (long long)(i / *T), (long long)(i % *T), t->vocab);
    return LDM_OK;
}

static ldm_status alloc_scratch(const ltt *t, int rows, ltt_scratch *sc)
{
    size_t nh, na, nbig;
    size_t big_cols = LDM_MAX(3 * (size_t)t->inner, (size_t)t->ff);
    if (ldm_mul_size((size_t)rows, (size_t)t->dim * sizeof(float), &nh) ||
        ldm_mul_size((size_t)rows, (size_t)t->inner * sizeof(float), &na) ||
        ldm_mul_size((size_t)rows, big_cols * sizeof(float), &nbig))
        return ldm_fail(LDM_ERR_LIMIT, "%s: scratch size overflows", t->model);
    sc->h = ldm_malloc_aligned(nh);
    sc->att = ldm_malloc_aligned(na);
    sc->big = ldm_malloc_aligned(nbig);
    return sc->h && sc->att && sc->big ? LDM_OK : ldm_alloc_failure_status();
}

static void free_scratch(ltt_scratch *sc)
{
    ldm_free(sc->h);
    ldm_free(sc->att);
    ldm_free(sc->big);
}

/* x[b,t,:] = tok_emb[id] + pos_emb[t] (no dropout at inference, no embedding projection). The
 * token row is read (widened when borrowed) straight into x, then the position added. */
static void embed(const ltt *t, const int64_t *ids, int B, int T, float *x)
{
    const size_t D = (size_t)t->dim;
    for (int b = 0; b < B; b++)
        for (int p = 0; p < T; p++) {
            const float *pe = t->pos_emb + (size_t)p * D;
            float *row = x + ((size_t)b * T + p) * D;
            lk_wt_read(t->tok_emb.w, (size_t)ids[(size_t)b * T + p] * D, D, row);
            for (size_t i = 0; i < D; i++) row[i] += pe[i];
        }
}

/* big[N, 3*inner] = h qkv^T + qkv_b: one product for a fused matrix, else one per part, each
 * writing its `inner` columns of every row of big (the layout a fused matrix gives). */
static ldm_status project_qkv(const ltt *t, const ltt_block *blk, const lctx *c, int N, const float *h, float *big)
{
    const int D = t->dim, I = t->inner;
    if (blk->n_qkv == 1) return lk_linear_wt(c, h, N, D, blk->qkv[0].w, blk->qkv_b, 3 * I, big);
    float beta = 0.0f;
    if (blk->qkv_b) { /* prefilled and accumulated onto, as lk_linear does with a bias */
        for (int r = 0; r < N; r++) memcpy(big + (size_t)r * 3 * I, blk->qkv_b, 3 * (size_t)I * sizeof(float));
        beta = 1.0f;
    }
    for (int i = 0; i < 3; i++) {
        LDM_TRY(lk_gemm_wb(c, 0, h, D, N, D, blk->qkv[i].w, I, beta, big + (size_t)i * I, 3 * I));
        lk_wt_done(blk->qkv[i].w, (size_t)I * D);
    }
    return LDM_OK;
}

/* x += out(attention(qkv(ln1 x))) */
static ldm_status attention_sublayer(const ltt *t, const ltt_block *blk, const lctx *c, int B, int T, float *x,
                                     ltt_scratch *sc)
{
    const int D = t->dim, I = t->inner, N = B * T, dh = t->dim_head;
    lk_layer_norm(c, x, N, D, LTT_LN_EPS, blk->ln1_w, blk->ln1_b, sc->h);
    LDM_TRY(project_qkv(t, blk, c, N, sc->h, sc->big));
    /* Row (b,t) of big = [q | k | v], each `inner` wide and split head-major into heads of dh. */
    long sb = (long)T * 3 * I, st = 3L * I;
    lk_view q = {sc->big, sb, dh, st, 1};
    lk_view k = {sc->big + I, sb, dh, st, 1};
    lk_view v = {sc->big + 2 * I, sb, dh, st, 1};
    lk_view o = {sc->att, (long)T * I, dh, I, 1};
    LDM_TRY(lk_attention(c, B, t->heads, T, T, dh, q, k, v, o, 1.0f / sqrtf((float)dh), t->causal));
    LDM_TRY(lk_linear_wt(c, sc->att, N, I, blk->out.w, blk->out_b, D, sc->h));
    lk_add(x, sc->h, (size_t)N * D);
    return LDM_OK;
}

/* x += fc2(act(fc1(ln2 x))) */
static ldm_status mlp_sublayer(const ltt *t, const ltt_block *blk, const lctx *c, int N, float *x, ltt_scratch *sc)
{
    const int D = t->dim, F = t->ff;
    lk_layer_norm(c, x, N, D, LTT_LN_EPS, blk->ln2_w, blk->ln2_b, sc->h);
    LDM_TRY(lk_linear_wt(c, sc->h, N, D, blk->fc1.w, blk->fc1_b, F, sc->big));
    if (t->act == LTT_QUICK_GELU)
        lk_quick_gelu(sc->big, (size_t)N * F);
    else
        lk_gelu(sc->big, (size_t)N * F);
    LDM_TRY(lk_linear_wt(c, sc->big, N, F, blk->fc2.w, blk->fc2_b, D, sc->h));
    lk_add(x, sc->h, (size_t)N * D);
    return LDM_OK;
}

/* The blocks over the residual stream x; `captured` (may be NULL) receives a copy of x after
 * `capture_after` blocks; the final LayerNorm runs in place when final_ln. */
static ldm_status run_blocks(const ltt *t, const lctx *c, int B, int T, float *x, ltt_scratch *sc, int capture_after,
                             float *captured, int final_ln)
{
    size_t n = (size_t)B * T * t->dim;
    for (int i = 0; i < t->n_blocks; i++) {
        if (captured && i == capture_after) memcpy(captured, x, n * sizeof *x);
        if (lctx_cancelled(c)) return ldm_fail(LDM_CANCELLED, "cancelled");
        LDM_TRY(attention_sublayer(t, &t->blocks[i], c, B, T, x, sc));
        LDM_TRY(mlp_sublayer(t, &t->blocks[i], c, B * T, x, sc));
    }
    if (captured && capture_after == t->n_blocks) memcpy(captured, x, n * sizeof *x);
    if (lctx_cancelled(c)) return ldm_fail(LDM_CANCELLED, "cancelled");
    if (final_ln) lk_layer_norm(c, x, B * T, t->dim, LTT_LN_EPS, t->lnf_w, t->lnf_b, x);
    return LDM_OK;
}

ldm_status ltt_encode_ex(const ltt *t, const lctx *c, const ldm_tensor *tokens, int capture_after,
                         ldm_tensor **captured, int final_ln, ldm_tensor **out)
{
    *out = NULL;
    if (captured) *captured = NULL;
    int B = 0, T = 0;
    LDM_TRY(check_tokens(t, tokens, &B, &T));
    if (captured && (capture_after < 0 || capture_after > t->n_blocks))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: no hidden state after %d of %d blocks", t->model, capture_after,
                        t->n_blocks);
    int64_t shape[3] = {B, T, t->dim};
    ldm_tensor *y = lt_new_f32(3, shape), *h = captured ? lt_new_f32(3, shape) : NULL;
    if (!y || (captured && !h)) {
        ldm_tensor_free(y);
        ldm_tensor_free(h);
        return ldm_fail_context(ldm_alloc_failure_status(), "%s: output: ", t->model);
    }
    ltt_scratch sc = {0};
    ldm_status st = alloc_scratch(t, B * T, &sc);
    if (st == LDM_OK) {
        /* The residual stream lives in the output tensor; the final LayerNorm runs in place. */
        embed(t, lt_i64(tokens), B, T, lt_f32(y));
        st = run_blocks(t, c, B, T, lt_f32(y), &sc, capture_after, h ? lt_f32(h) : NULL, final_ln);
    }
    free_scratch(&sc);
    if (st != LDM_OK) {
        ldm_tensor_free(y);
        ldm_tensor_free(h);
        return st;
    }
    *out = y;
    if (captured) *captured = h;
    return LDM_OK;
}

ldm_status ltt_encode(const ltt *t, const lctx *c, const ldm_tensor *tokens, ldm_tensor **out)
{
    return ltt_encode_ex(t, c, tokens, 0, NULL, 1, out);
}
