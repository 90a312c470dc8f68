/* clip_text.c - CLIP text tower (SD1 HF CLIPTextModel keys / SD2 open_clip keys), see clip_text.h. */
#include "clip_text.h"

#include "../kernels/kernels.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define CLIP_LN_EPS 1e-5f
/* Upper bound when counting blocks by name: far above any real tower (ViT-bigG has 32). */
#define CLIP_MAX_LAYERS 256
#define CLIP_MAX_PREFIX 200

/* Where each parameter lives in the two checkpoint layouts (names relative to prefix + root). */
typedef struct clip_keys {
    const char *model; /* what to call the tower in messages */
    const char *root;
    const char *tok_emb, *pos_emb, *final_ln;
    const char *block; /* block N is "<block>N." */
    const char *ln1, *ln2, *out_proj, *fc1, *fc2;
    int fused_qkv;  /* open_clip in_proj_weight [3W,W] vs HF q_proj/k_proj/v_proj */
    int quick_gelu; /* openai/HF CLIP: x*sigmoid(1.702x); open_clip ViT-H: exact GELU */
} clip_keys;

static const clip_keys hf_keys = {
    .model = "CLIP text encoder (FrozenCLIPEmbedder)",
    .root = "transformer.text_model.",
    .tok_emb = "embeddings.token_embedding.weight",
    .pos_emb = "embeddings.position_embedding.weight",
    .final_ln = "final_layer_norm",
    .block = "encoder.layers.",
    .ln1 = "layer_norm1",
    .ln2 = "layer_norm2",
    .out_proj = "self_attn.out_proj",
    .fc1 = "mlp.fc1",
    .fc2 = "mlp.fc2",
    .fused_qkv = 0,
    .quick_gelu = 1,
};

static const clip_keys openclip_keys = {
    .model = "OpenCLIP text encoder (FrozenOpenCLIPEmbedder)",
    .root = "model.",
    .tok_emb = "token_embedding.weight",
    .pos_emb = "positional_embedding",
    .final_ln = "ln_final",
    .block = "transformer.resblocks.",
    .ln1 = "ln_1",
    .ln2 = "ln_2",
    .out_proj = "attn.out_proj",
    .fc1 = "mlp.c_fc",
    .fc2 = "mlp.c_proj",
    .fused_qkv = 1,
    .quick_gelu = 0,
};

typedef struct clip_block {
    float *ln1_w, *ln1_b;
    float *qkv_w, *qkv_b; /* [3W,W], [3W]: rows q, k, v */
    float *out_w, *out_b;
    float *ln2_w, *ln2_b;
    float *fc1_w, *fc1_b; /* [M,W], [M] */
    float *fc2_w, *fc2_b; /* [W,M], [W] */
} clip_block;

struct lclip {
    const clip_keys *keys;
    int width, heads, vocab, ctx, mlp;
    int n_blocks;   /* blocks that run: layers - layer_skip */
    float *tok_emb; /* [vocab, W] */
    float *pos_emb; /* [ctx, W] */
    float *lnf_w, *lnf_b;
    clip_block *blocks;
};

/* ---- loading */

/* A float32 copy of the tensor named printf-style, shape [d0] (ndim 1) or [d0,d1] (ndim 2). */
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

static void free_block(clip_block *b)
{
    float **all[] = {&b->ln1_w, &b->ln1_b, &b->qkv_w, &b->qkv_b, &b->out_w, &b->out_b,
                     &b->ln2_w, &b->ln2_b, &b->fc1_w, &b->fc1_b, &b->fc2_w, &b->fc2_b};
    for (size_t i = 0; i < LDM_ARRAY_LEN(all); i++) {
        ldm_free(*all[i]);
        *all[i] = NULL;
    }
}

void lclip_free(lclip *n)
{
    if (!n) return;
    if (n->blocks)
        for (int i = 0; i < n->n_blocks; i++) free_block(&n->blocks[i]);
    ldm_free(n->blocks);
    ldm_free(n->tok_emb);
    ldm_free(n->pos_emb);
    ldm_free(n->lnf_w);
    ldm_free(n->lnf_b);
    ldm_free(n);
}

/* HF keeps q/k/v as three Linear layers; stack them into the open_clip [q;k;v] layout so one
 * GEMM produces all three and the attention views are the same for both layouts. */
static ldm_status load_split_qkv(const lw_store *s, const char *bp, int W, clip_block *b)
{
    static const char *const part[3] = {"q_proj", "k_proj", "v_proj"};
    size_t ww = (size_t)W * (size_t)W;
    b->qkv_w = ldm_malloc_aligned(3 * ww * sizeof(float));
    b->qkv_b = ldm_malloc_aligned(3 * (size_t)W * sizeof(float));
    if (!b->qkv_w || !b->qkv_b) return LDM_ERR_OUT_OF_MEMORY;
    for (int i = 0; i < 3; i++) {
        float *w = NULL, *bias = NULL;
        ldm_status st = load(s, 2, W, W, &w, "%sself_attn.%s.weight", bp, part[i]);
        if (st == LDM_OK) st = load(s, 1, W, 0, &bias, "%sself_attn.%s.bias", bp, part[i]);
        if (st == LDM_OK) {
            memcpy(b->qkv_w + (size_t)i * ww, w, ww * sizeof(float));
            memcpy(b->qkv_b + (size_t)i * W, bias, (size_t)W * sizeof(float));
        }
        ldm_free(w);
        ldm_free(bias);
        if (st != LDM_OK) return st;
    }
    return LDM_OK;
}

static ldm_status load_block(const lw_store *s, const char *prefix, const clip_keys *k, int idx, int W, int M,
                             clip_block *b)
{
    char bp[384];
    int len = snprintf(bp, sizeof bp, "%s%s%s%d.", prefix, k->root, k->block, idx);
    if (len < 0 || (size_t)len >= sizeof bp) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "key prefix too long");
    LDM_TRY(load(s, 1, W, 0, &b->ln1_w, "%s%s.weight", bp, k->ln1));
    LDM_TRY(load(s, 1, W, 0, &b->ln1_b, "%s%s.bias", bp, k->ln1));
    if (k->fused_qkv) {
        LDM_TRY(load(s, 2, 3 * (int64_t)W, W, &b->qkv_w, "%sattn.in_proj_weight", bp));
        LDM_TRY(load(s, 1, 3 * (int64_t)W, 0, &b->qkv_b, "%sattn.in_proj_bias", bp));
    } else {
        LDM_TRY(load_split_qkv(s, bp, W, b));
    }
    LDM_TRY(load(s, 2, W, W, &b->out_w, "%s%s.weight", bp, k->out_proj));
    LDM_TRY(load(s, 1, W, 0, &b->out_b, "%s%s.bias", bp, k->out_proj));
    LDM_TRY(load(s, 1, W, 0, &b->ln2_w, "%s%s.weight", bp, k->ln2));
    LDM_TRY(load(s, 1, W, 0, &b->ln2_b, "%s%s.bias", bp, k->ln2));
    LDM_TRY(load(s, 2, M, W, &b->fc1_w, "%s%s.weight", bp, k->fc1));
    LDM_TRY(load(s, 1, M, 0, &b->fc1_b, "%s%s.bias", bp, k->fc1));
    LDM_TRY(load(s, 2, W, M, &b->fc2_w, "%s%s.weight", bp, k->fc2));
    LDM_TRY(load(s, 1, W, 0, &b->fc2_b, "%s%s.bias", bp, k->fc2));
    return LDM_OK;
}

/* ---- dimensions: from the desc, checked against (or, when 0, taken from) the weights */

static ldm_status find_2d(const lw_store *s, const char *name, const char *model, const lw_tensor **out)
{
    const lw_tensor *t = lw_find(s, name);
    if (!t) return ldm_fail(LDM_ERR_NOT_FOUND, "%s: %s: tensor %s not found", model, lw_path(s), name);
    if (t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > INT_MAX || t->shape[1] > INT_MAX)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s: tensor %s: expected a non-empty 2-D tensor, found rank %d", model,
                        lw_path(s), name, t->ndim);
    *out = t;
    return LDM_OK;
}

/* `*dim` = the desc value; 0 adopts `found`, anything else must equal it. */
static ldm_status agree(int *dim, int64_t found, const char *what, const char *model, const char *tensor)
{
    if (*dim == 0) {
        *dim = (int)found;
        return LDM_OK;
    }
    if (*dim != found)
        return ldm_fail(LDM_ERR_FORMAT, "%s: the model description says %s %d but the checkpoint has %lld (tensor %s)",
                        model, what, *dim, (long long)found, tensor);
    return LDM_OK;
}

static int has_block(const lw_store *s, const char *prefix, const clip_keys *k, int idx)
{
    char p[384];
    int len = snprintf(p, sizeof p, "%s%s%s%d.", prefix, k->root, k->block, idx);
    return len > 0 && (size_t)len < sizeof p && lw_has_prefix(s, p);
}

static ldm_status count_layers(const lw_store *s, const char *prefix, const clip_keys *k, int *layers)
{
    int n = 0;
    while (n < CLIP_MAX_LAYERS && has_block(s, prefix, k, n)) n++;
    if (n == 0)
        return ldm_fail(LDM_ERR_NOT_FOUND, "%s: %s: no transformer blocks (%s%s%s0.*) found", k->model, lw_path(s),
                        prefix, k->root, k->block);
    char where[384];
    snprintf(where, sizeof where, "%s%s%s<N>.*", prefix, k->root, k->block);
    return agree(layers, n, "layers", k->model, where);
}

/* Fills width/vocab/ctx/layers/mlp, checking the desc against the tensor shapes and names. */
static ldm_status resolve_dims(const ld_cond *d, const lw_store *s, const char *prefix, const clip_keys *k, lclip *n,
                               int *layers)
{
    char name[512];
    n->width = d->width;
    n->vocab = d->vocab;
    n->ctx = d->ctx;
    *layers = d->layers;
    if (n->width < 0 || n->vocab < 0 || n->ctx < 0 || *layers < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: negative dimension in the model description", k->model);

    snprintf(name, sizeof name, "%s%s%s", prefix, k->root, k->tok_emb);
    const lw_tensor *t = NULL;
    LDM_TRY(find_2d(s, name, k->model, &t));
    LDM_TRY(agree(&n->vocab, t->shape[0], "vocab", k->model, name));
    LDM_TRY(agree(&n->width, t->shape[1], "width", k->model, name));

    snprintf(name, sizeof name, "%s%s%s", prefix, k->root, k->pos_emb);
    LDM_TRY(find_2d(s, name, k->model, &t));
    LDM_TRY(agree(&n->ctx, t->shape[0], "ctx", k->model, name));
    LDM_TRY(agree(&n->width, t->shape[1], "width", k->model, name));

    LDM_TRY(count_layers(s, prefix, k, layers));

    snprintf(name, sizeof name, "%s%s%s0.%s.weight", prefix, k->root, k->block, k->fc1);
    LDM_TRY(find_2d(s, name, k->model, &t));
    n->mlp = (int)t->shape[0];
    return LDM_OK;
}

static ldm_status check_desc(const ld_cond *d, const clip_keys *k)
{
    if (d->heads < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                        "%s: heads must be set in the model description (found %d): it "
                        "cannot be read from the weights",
                        k->model, d->heads);
    if (d->layer_skip < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: layer_skip %d is negative", k->model, d->layer_skip);
    return LDM_OK;
}

static ldm_status load_weights(const lw_store *s, const char *prefix, lclip *n, int run)
{
    const clip_keys *k = n->keys;
    const int W = n->width;
    LDM_TRY(load(s, 2, n->vocab, W, &n->tok_emb, "%s%s%s", prefix, k->root, k->tok_emb));
    LDM_TRY(load(s, 2, n->ctx, W, &n->pos_emb, "%s%s%s", prefix, k->root, k->pos_emb));
    LDM_TRY(load(s, 1, W, 0, &n->lnf_w, "%s%s%s.weight", prefix, k->root, k->final_ln));
    LDM_TRY(load(s, 1, W, 0, &n->lnf_b, "%s%s%s.bias", prefix, k->root, k->final_ln));

    /* Skipped final blocks (SD2 "penultimate") are never run, so they are not loaded. */
    n->blocks = ldm_calloc((size_t)run, sizeof *n->blocks);
    if (!n->blocks) return LDM_ERR_OUT_OF_MEMORY;
    n->n_blocks = run;
    for (int i = 0; i < run; i++) LDM_TRY(load_block(s, prefix, k, i, W, n->mlp, &n->blocks[i]));
    return LDM_OK;
}

static ldm_status create_checked(const ld_cond *d, const lw_store *s, const char *prefix, lclip *n)
{
    const clip_keys *k = n->keys;
    int layers = 0;
    LDM_TRY(check_desc(d, k));
    LDM_TRY(resolve_dims(d, s, prefix, k, n, &layers));
    n->heads = d->heads;
    if (n->width % n->heads)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: width %d is not divisible by heads %d", k->model, n->width,
                        n->heads);
    /* layer_skip == layers is legal: open_clip's "penultimate" on a 1-layer tower runs no block and
     * only ln_final (the reference does the same). */
    if (d->layer_skip > layers)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: layer_skip %d exceeds the %d layers", k->model,
                        d->layer_skip, layers);

    ldm_status st = load_weights(s, prefix, n, layers - d->layer_skip);
    return st == LDM_OK ? st : ldm_fail_context(st, "%s: ", k->model);
}

ldm_status lclip_create(const ld_cond *d, const lw_store *s, const char *prefix, lclip **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclip_create: NULL output pointer");
    *out = NULL;
    if (!d || !s) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclip_create: NULL description or weights");
    if (d->kind != LD_COND_CLIP && d->kind != LD_COND_OPENCLIP)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclip_create: cond kind %d is not a CLIP text encoder",
                        (int)d->kind);
    if (!prefix) prefix = "";
    /* Every key name is built in a fixed-size buffer: bound the prefix once here. */
    if (strlen(prefix) > CLIP_MAX_PREFIX)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclip_create: key prefix longer than %d characters",
                        CLIP_MAX_PREFIX);
    lclip *n = ldm_calloc(1, sizeof *n);
    if (!n) return LDM_ERR_OUT_OF_MEMORY;
    n->keys = d->kind == LD_COND_CLIP ? &hf_keys : &openclip_keys;
    ldm_status st = create_checked(d, s, prefix, n);
    if (st != LDM_OK) {
        lclip_free(n);
        return st;
    }
    *out = n;
    return LDM_OK;
}

int lclip_width(const lclip *n)
{
    return n->width;
}
int lclip_ctx(const lclip *n)
{
    return n->ctx;
}
int lclip_vocab(const lclip *n)
{
    return n->vocab;
}

/* ---- forward */

/* Scratch for one encode call over N = B*T rows. `big` holds qkv [N,3W] during attention and the
 * MLP hidden [N,M] afterwards (never live together). */
typedef struct clip_scratch {
    float *h;   /* [N,W] normalised input / branch output */
    float *att; /* [N,W] attention output before out_proj */
    float *big;
} clip_scratch;

static ldm_status check_tokens(const lclip *n, const ldm_tensor *tokens, int *B, int *T)
{
    char buf[96], what[128];
    snprintf(what, sizeof what, "%s: tokens", n->keys->model);
    LDM_TRY(lt_check(tokens, what, LDM_I64, 2));
    if (tokens->shape[0] < 1 || tokens->shape[1] < 1 || tokens->shape[1] > n->ctx)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: tokens: expected [B,T] with B >= 1 and 1 <= T <= %d, found %s",
                        n->keys->model, n->ctx, lt_shape_str(tokens, buf, sizeof buf));
    if (tokens->shape[0] > INT_MAX / tokens->shape[1])
        return ldm_fail(LDM_ERR_LIMIT, "%s: tokens: batch %lld too large", n->keys->model, (long long)tokens->shape[0]);
    *B = (int)tokens->shape[0];
    *T = (int)tokens->shape[1];
    const int64_t *ids = lt_i64(tokens);
    for (int64_t i = 0; i < (int64_t)*B * *T; i++)
        if (ids[i] < 0 || ids[i] >= n->vocab)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: token id %lld at [%lld,%lld] is outside [0,%d)",
                            n->keys->model, (long long)ids[i], (long long)(i / *T), (long long)(i % *T), n->vocab);
    return LDM_OK;
}

static ldm_status alloc_scratch(const lclip *n, int rows, clip_scratch *sc)
{
    size_t nw, nbig;
    size_t big_cols = (size_t)LDM_MAX(3 * n->width, n->mlp);
    if (ldm_mul_size((size_t)rows, (size_t)n->width * sizeof(float), &nw) ||
        ldm_mul_size((size_t)rows, big_cols * sizeof(float), &nbig))
        return ldm_fail(LDM_ERR_LIMIT, "%s: scratch size overflows", n->keys->model);
    sc->h = ldm_malloc_aligned(nw);
    sc->att = ldm_malloc_aligned(nw);
    sc->big = ldm_malloc_aligned(nbig);
    return sc->h && sc->att && sc->big ? LDM_OK : LDM_ERR_OUT_OF_MEMORY;
}

static void free_scratch(clip_scratch *sc)
{
    ldm_free(sc->h);
    ldm_free(sc->att);
    ldm_free(sc->big);
}

/* x[b,t,:] = tok_emb[id] + pos_emb[t] */
static void embed(const lclip *n, const int64_t *ids, int B, int T, float *x)
{
    const size_t W = (size_t)n->width;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *te = n->tok_emb + (size_t)ids[(size_t)b * T + t] * W;
            const float *pe = n->pos_emb + (size_t)t * W;
            float *row = x + ((size_t)b * T + t) * W;
            for (size_t i = 0; i < W; i++) row[i] = te[i] + pe[i];
        }
}

/* x += out_proj(causal_attention(qkv(ln_1 x))) */
static ldm_status attention_branch(const lclip *n, const clip_block *blk, const lctx *c, int B, int T, float *x,
                                   clip_scratch *sc)
{
    const int W = n->width, N = B * T, H = n->heads, D = W / H;
    lk_layer_norm(c, x, N, W, CLIP_LN_EPS, blk->ln1_w, blk->ln1_b, sc->h);
    lk_linear(c, sc->h, N, W, blk->qkv_w, blk->qkv_b, 3 * W, sc->big);
    /* qkv row (b,t) = [q | k | v], each W wide and split head-major into H heads of D. */
    long sb = (long)T * 3 * W, st = 3L * W;
    lk_view q = {sc->big, sb, D, st, 1};
    lk_view k = {sc->big + W, sb, D, st, 1};
    lk_view v = {sc->big + 2 * W, sb, D, st, 1};
    lk_view o = {sc->att, (long)T * W, D, W, 1};
    LDM_TRY(lk_attention(c, B, H, T, T, D, q, k, v, o, 1.0f / sqrtf((float)D), 1));
    lk_linear(c, sc->att, N, W, blk->out_w, blk->out_b, W, sc->h);
    lk_add(x, sc->h, (size_t)N * W);
    return LDM_OK;
}

/* x += fc2(act(fc1(ln_2 x))) */
static void mlp_branch(const lclip *n, const clip_block *blk, const lctx *c, int N, float *x, clip_scratch *sc)
{
    const int W = n->width, M = n->mlp;
    lk_layer_norm(c, x, N, W, CLIP_LN_EPS, blk->ln2_w, blk->ln2_b, sc->h);
    lk_linear(c, sc->h, N, W, blk->fc1_w, blk->fc1_b, M, sc->big);
    if (n->keys->quick_gelu)
        lk_quick_gelu(sc->big, (size_t)N * M);
    else
        lk_gelu(sc->big, (size_t)N * M);
    lk_linear(c, sc->big, N, M, blk->fc2_w, blk->fc2_b, W, sc->h);
    lk_add(x, sc->h, (size_t)N * W);
}

static ldm_status run_blocks(const lclip *n, const lctx *c, int B, int T, float *x, clip_scratch *sc)
{
    for (int i = 0; i < n->n_blocks; i++) {
        if (lctx_cancelled(c)) return ldm_fail(LDM_CANCELLED, "cancelled");
        LDM_TRY(attention_branch(n, &n->blocks[i], c, B, T, x, sc));
        mlp_branch(n, &n->blocks[i], c, B * T, x, sc);
    }
    if (lctx_cancelled(c)) return ldm_fail(LDM_CANCELLED, "cancelled");
    lk_layer_norm(c, x, B * T, n->width, CLIP_LN_EPS, n->lnf_w, n->lnf_b, x);
    return LDM_OK;
}

ldm_status lclip_encode(lclip *n, const lctx *c, const ldm_tensor *tokens, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclip_encode: NULL output pointer");
    *out = NULL;
    if (!n) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclip_encode: NULL encoder");
    int B = 0, T = 0;
    LDM_TRY(check_tokens(n, tokens, &B, &T));
    int64_t shape[3] = {B, T, n->width};
    ldm_tensor *y = lt_new_f32(3, shape);
    if (!y) return ldm_fail_context(LDM_ERR_OUT_OF_MEMORY, "%s: output: ", n->keys->model);
    clip_scratch sc = {0};
    ldm_status st = alloc_scratch(n, B * T, &sc);
    if (st == LDM_OK) {
        /* The residual stream lives in the output tensor; the final LayerNorm runs in place. */
        embed(n, lt_i64(tokens), B, T, lt_f32(y));
        st = run_blocks(n, c, B, T, lt_f32(y), &sc);
    }
    free_scratch(&sc);
    if (st != LDM_OK) {
        ldm_tensor_free(y);
        return st;
    }
    *out = y;
    return LDM_OK;
}
