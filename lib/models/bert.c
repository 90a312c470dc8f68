/* bert.c - BERTEmbedder (x_transformer TransformerWrapper + Encoder), see bert.h: the key names
 * and their validation; the tower itself is text_transformer.c. */
#include "bert.h"

#include "text_transformer.h"

#include <stdio.h>
#include <string.h>

#define BERT_MODEL "BERT text encoder (BERTEmbedder)"
/* x_transformer Attention defaults; BERTEmbedder never overrides them. */
#define BERT_DEFAULT_HEADS    8
#define BERT_DEFAULT_DIM_HEAD 64
/* Upper bound when counting layers by name. */
#define BERT_MAX_LAYERS 256
#define BERT_MAX_PREFIX 200

struct lbert {
    ltt t;
};

/* ---- loading */

void lbert_free(lbert *n)
{
    if (!n) return;
    ltt_release(&n->t);
    ldm_free(n);
}

/* Encoder depth step i is the pair of pre-norm residual layers 2i ('a': attention) and 2i+1
 * ('f': feed-forward); inside each, 0 is the LayerNorm and 1 the wrapped module. */
static ldm_status load_layer(const lw_store *s, const char *root, int i, ltt *t, ltt_block *l)
{
    static const char *const qkv[3] = {"to_q", "to_k", "to_v"};
    char a[384], f[384], ap[400];
    int la = snprintf(a, sizeof a, "%sattn_layers.layers.%d.", root, 2 * i);
    int lf = snprintf(f, sizeof f, "%sattn_layers.layers.%d.", root, 2 * i + 1);
    if (la < 0 || lf < 0 || (size_t)la >= sizeof a || (size_t)lf >= sizeof f)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "key prefix too long");
    snprintf(ap, sizeof ap, "%s1.", a);
    const int D = t->dim;
    LDM_TRY(ltt_get_norm(s, D, &l->ln1_w, &l->ln1_b, "%s0", a));
    LDM_TRY(ltt_get_qkv(s, t->inner, D, l, 0, ap, qkv)); /* to_q/to_k/to_v have no bias */
    LDM_TRY(ltt_get_linear(s, D, t->inner, &l->out, &l->out_b, "%s1.to_out", a));
    LDM_TRY(ltt_get_norm(s, D, &l->ln2_w, &l->ln2_b, "%s0", f));
    LDM_TRY(ltt_get_linear(s, t->ff, D, &l->fc1, &l->fc1_b, "%s1.net.0.0", f));
    LDM_TRY(ltt_get_linear(s, D, t->ff, &l->fc2, &l->fc2_b, "%s1.net.2", f));
    return LDM_OK;
}

/* ---- dimensions: from the desc, checked against (or, when 0, taken from) the weights */

/* Encoder layers come in ('a','f') pairs: layers.0 .. layers.(2*depth-1). */
static ldm_status count_depth(const ltt *t, const lw_store *s, const char *root, int *depth)
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
    return ltt_agree(t, depth, n / 2, "n_layer", p);
}

static ldm_status resolve_dims(const ld_cond *d, const lw_store *s, const char *root, ltt *t, int *depth)
{
    char name[512];
    t->dim = d->n_embed;
    t->vocab = d->vocab_size;
    t->max_seq = d->max_seq_len;
    *depth = d->n_layer;
    t->heads = d->bert_heads ? d->bert_heads : BERT_DEFAULT_HEADS;
    t->dim_head = d->bert_dim_head ? d->bert_dim_head : BERT_DEFAULT_DIM_HEAD;
    if (t->dim < 0 || *depth < 0 || t->vocab < 0 || t->max_seq < 0 || t->heads < 1 || t->dim_head < 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, BERT_MODEL ": invalid dimension in the model description");

    snprintf(name, sizeof name, "%stoken_emb.weight", root);
    LDM_TRY(ltt_dims_2d(t, s, name, &t->vocab, "vocab_size", &t->dim, "n_embed"));
    snprintf(name, sizeof name, "%spos_emb.emb.weight", root);
    LDM_TRY(ltt_dims_2d(t, s, name, &t->max_seq, "max_seq_len", &t->dim, "n_embed"));
    LDM_TRY(count_depth(t, s, root, depth));

    snprintf(name, sizeof name, "%sattn_layers.layers.0.1.to_q.weight", root);
    const lw_tensor *q = NULL;
    LDM_TRY(ltt_find_2d(t, s, name, &q));
    if ((int64_t)t->heads * t->dim_head != q->shape[0])
        return ldm_fail(LDM_ERR_FORMAT,
                        BERT_MODEL ": heads %d x dim_head %d = %lld does not match the attention "
                                   "inner dimension %lld of %s",
                        t->heads, t->dim_head, (long long)t->heads * t->dim_head, (long long)q->shape[0], name);
    t->inner = (int)q->shape[0];

    snprintf(name, sizeof name, "%sattn_layers.layers.1.1.net.0.0.weight", root);
    return ltt_dims_2d(t, s, name, &t->ff, "feed-forward width", NULL, NULL);
}

static ldm_status load_weights(const lw_store *s, const char *root, ltt *t, int depth)
{
    char tok[512], pos[512], norm[512];
    snprintf(tok, sizeof tok, "%stoken_emb.weight", root);
    snprintf(pos, sizeof pos, "%spos_emb.emb.weight", root);
    snprintf(norm, sizeof norm, "%snorm", root);
    LDM_TRY(ltt_load_outer(t, s, tok, pos, norm, depth));
    for (int i = 0; i < depth; i++) LDM_TRY(load_layer(s, root, i, t, &t->blocks[i]));
    return LDM_OK;
}

static ldm_status create_checked(const ld_cond *d, const lw_store *s, const char *prefix, ltt *t)
{
    char root[256];
    int len = snprintf(root, sizeof root, "%stransformer.", prefix);
    if (len < 0 || (size_t)len >= sizeof root) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "key prefix too long");
    int depth = 0;
    LDM_TRY(resolve_dims(d, s, root, t, &depth));
    ldm_status st = load_weights(s, root, t, depth);
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
    if (!n) return ldm_alloc_failure_status();
    /* x_transformer: full (unmasked) self-attention, FeedForward with exact GELU. */
    n->t.model = BERT_MODEL;
    n->t.causal = 0;
    n->t.act = LTT_GELU;
    ldm_status st = create_checked(d, s, prefix, &n->t);
    if (st != LDM_OK) {
        lbert_free(n);
        return st;
    }
    *out = n;
    return LDM_OK;
}

int lbert_dim(const lbert *n)
{
    return n->t.dim;
}
int lbert_max_seq_len(const lbert *n)
{
    return n->t.max_seq;
}
int lbert_vocab(const lbert *n)
{
    return n->t.vocab;
}

/* ---- forward */

ldm_status lbert_encode(lbert *n, const lctx *c, const ldm_tensor *tokens, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lbert_encode: NULL output pointer");
    *out = NULL;
    if (!n) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "lbert_encode: NULL encoder");
    return ltt_encode(&n->t, c, tokens, out);
}
