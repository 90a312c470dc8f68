/* clip_text.c - CLIP text tower (SD1 HF CLIPTextModel keys / SD2 open_clip keys), see clip_text.h:
 * the two key layouts and their validation; the tower itself is text_transformer.c. */
#include "clip_text.h"

#include "text_transformer.h"

#include <stdio.h>
#include <string.h>

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
    int fused_qkv;      /* open_clip in_proj_weight [3W,W] vs HF q_proj/k_proj/v_proj */
    ltt_activation act; /* openai/HF CLIP: QuickGELU x*sigmoid(1.702x); open_clip ViT-H: exact GELU */
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
    .act = LTT_QUICK_GELU,
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
    .act = LTT_GELU,
};

struct lclip {
    ltt t;
};

/* ---- loading; `root` below is prefix + keys->root */

void lclip_free(lclip *n)
{
    if (!n) return;
    ltt_release(&n->t);
    ldm_free(n);
}

static ldm_status load_block(const lw_store *s, const char *root, const clip_keys *k, int idx, const ltt *t,
                             ltt_block *b)
{
    static const char *const split_qkv[3] = {"q_proj", "k_proj", "v_proj"};
    char bp[384], attn[416]; /* room for bp and the longest suffix */
    int len = snprintf(bp, sizeof bp, "%s%s%d.", root, k->block, idx);
    if (len < 0 || (size_t)len >= sizeof bp) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "key prefix too long");
    const int W = t->dim, M = t->ff;
    LDM_TRY(ltt_get_norm(s, W, &b->ln1_w, &b->ln1_b, "%s%s", bp, k->ln1));
    if (k->fused_qkv) {
        snprintf(attn, sizeof attn, "%sattn.in_proj_weight", bp);
        LDM_TRY(ltt_get_fused_qkv(s, W, W, b, attn));
        LDM_TRY(lw_get_f32f(s, 1, (int64_t[]){3 * (int64_t)W}, &b->qkv_b, "%sattn.in_proj_bias", bp));
    } else {
        /* HF keeps q/k/v as three Linear layers: computed into the open_clip [q;k;v] layout. */
        snprintf(attn, sizeof attn, "%sself_attn.", bp);
        LDM_TRY(ltt_get_qkv(s, W, W, b, 1, attn, split_qkv));
    }
    LDM_TRY(ltt_get_linear(s, W, W, &b->out, &b->out_b, "%s%s", bp, k->out_proj));
    LDM_TRY(ltt_get_norm(s, W, &b->ln2_w, &b->ln2_b, "%s%s", bp, k->ln2));
    LDM_TRY(ltt_get_linear(s, M, W, &b->fc1, &b->fc1_b, "%s%s", bp, k->fc1));
    LDM_TRY(ltt_get_linear(s, W, M, &b->fc2, &b->fc2_b, "%s%s", bp, k->fc2));
    return LDM_OK;
}

/* ---- dimensions: from the desc, checked against (or, when 0, taken from) the weights */

static int has_block(const lw_store *s, const char *root, const clip_keys *k, int idx)
{
    char p[384];
    int len = snprintf(p, sizeof p, "%s%s%d.", root, k->block, idx);
    return len > 0 && (size_t)len < sizeof p && lw_has_prefix(s, p);
}

static ldm_status count_layers(const ltt *t, const lw_store *s, const char *root, const clip_keys *k, int *layers)
{
    int n = 0;
    while (n < CLIP_MAX_LAYERS && has_block(s, root, k, n)) n++;
    if (n == 0)
        return ldm_fail(LDM_ERR_NOT_FOUND, "%s: %s: no transformer blocks (%s%s0.*) found", k->model, lw_path(s), root,
                        k->block);
    char where[384];
    snprintf(where, sizeof where, "%s%s<N>.*", root, k->block);
    return ltt_agree(t, layers, n, "layers", where);
}

/* Fills width/vocab/ctx/layers/mlp, checking the desc against the tensor shapes and names. */
static ldm_status resolve_dims(const ld_cond *d, const lw_store *s, const char *root, const clip_keys *k, ltt *t,
                               int *layers)
{
    char name[512];
    t->dim = d->width;
    t->vocab = d->vocab;
    t->max_seq = d->ctx;
    *layers = d->layers;
    if (t->dim < 0 || t->vocab < 0 || t->max_seq < 0 || *layers < 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: negative dimension in the model description", k->model);

    snprintf(name, sizeof name, "%s%s", root, k->tok_emb);
    LDM_TRY(ltt_dims_2d(t, s, name, &t->vocab, "vocab", &t->dim, "width"));
    snprintf(name, sizeof name, "%s%s", root, k->pos_emb);
    LDM_TRY(ltt_dims_2d(t, s, name, &t->max_seq, "ctx", &t->dim, "width"));
    LDM_TRY(count_layers(t, s, root, k, layers));
    snprintf(name, sizeof name, "%s%s0.%s.weight", root, k->block, k->fc1);
    return ltt_dims_2d(t, s, name, &t->ff, "mlp width", NULL, NULL);
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

static ldm_status load_weights(const lw_store *s, const char *root, const clip_keys *k, ltt *t, int run)
{
    char tok[512], pos[512], lnf[512];
    snprintf(tok, sizeof tok, "%s%s", root, k->tok_emb);
    snprintf(pos, sizeof pos, "%s%s", root, k->pos_emb);
    snprintf(lnf, sizeof lnf, "%s%s", root, k->final_ln);
    /* Skipped final blocks (SD2 "penultimate") are never run, so they are not loaded. */
    LDM_TRY(ltt_load_outer(t, s, tok, pos, lnf, run));
    for (int i = 0; i < run; i++) LDM_TRY(load_block(s, root, k, i, t, &t->blocks[i]));
    return LDM_OK;
}

static ldm_status create_checked(const ld_cond *d, const lw_store *s, const char *prefix, const clip_keys *k, ltt *t)
{
    char root[256];
    snprintf(root, sizeof root, "%s%s", prefix, k->root); /* fits: the prefix is bounded */
    int layers = 0;
    LDM_TRY(check_desc(d, k));
    LDM_TRY(resolve_dims(d, s, root, k, t, &layers));
    t->heads = d->heads;
    if (t->dim % t->heads)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: width %d is not divisible by heads %d", k->model, t->dim,
                        t->heads);
    t->dim_head = t->dim / t->heads;
    t->inner = t->dim;
    /* layer_skip == layers is legal: open_clip's "penultimate" on a 1-layer tower runs no block and
     * only ln_final (the reference does the same). */
    if (d->layer_skip > layers)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "%s: layer_skip %d exceeds the %d layers", k->model, d->layer_skip,
                        layers);

    ldm_status st = load_weights(s, root, k, t, layers - d->layer_skip);
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
    if (!n) return ldm_alloc_failure_status();
    const clip_keys *k = d->kind == LD_COND_CLIP ? &hf_keys : &openclip_keys;
    /* Both CLIP text towers use a causal mask. */
    n->t.model = k->model;
    n->t.causal = 1;
    n->t.act = k->act;
    ldm_status st = create_checked(d, s, prefix, k, &n->t);
    if (st != LDM_OK) {
        lclip_free(n);
        return st;
    }
    *out = n;
    return LDM_OK;
}

int lclip_width(const lclip *n)
{
    return n->t.dim;
}
int lclip_ctx(const lclip *n)
{
    return n->t.max_seq;
}
int lclip_vocab(const lclip *n)
{
    return n->t.vocab;
}

/* ---- forward */

ldm_status lclip_encode(lclip *n, const lctx *c, const ldm_tensor *tokens, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclip_encode: NULL output pointer");
    *out = NULL;
    if (!n) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclip_encode: NULL encoder");
    return ltt_encode(&n->t, c, tokens, out);
}

ldm_status lclip_encode_ex(lclip *n, const lctx *c, const ldm_tensor *tokens, int capture_after,
                           ldm_tensor **captured, int final_ln, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclip_encode_ex: NULL output pointer");
    *out = NULL;
    if (!n) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lclip_encode_ex: NULL encoder");
    return ltt_encode_ex(&n->t, c, tokens, capture_after, captured, final_ln, out);
}

int lclip_blocks(const lclip *n)
{
    return n->t.n_blocks;
}
