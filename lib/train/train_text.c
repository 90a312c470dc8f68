/* train_text.c - the frozen text conditioner of caption-conditioned training (train_text.h):
 * weights found among the run's checkpoints, the tokenizer's vocabulary found as the inference
 * API finds it, the encoders of lib/models run without a tape. */
#include "train_text.h"

#include "../models/bert.h"
#include "../models/clip_text.h"
#include "ldm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COND_PREFIX "cond_stage_model."

struct ltr_text {
    lw_store *store;
    lclip *clip;
    lbert *bert;
    ldm_tokenizer *tok;
    int tokens, width;
};

int ltr_text_kind(ld_cond_kind k)
{
    return k == LD_COND_CLIP || k == LD_COND_OPENCLIP || k == LD_COND_BERT;
}

static int has_cond_weights(const lw_store *s)
{
    for (size_t i = 0; i < lw_count(s); i++)
        if (!strncmp(lw_at(s, i)->name, COND_PREFIX, strlen(COND_PREFIX))) return 1;
    return 0;
}

/* `base` itself when a file, else base/<name> for the first name that exists. */
static int try_location(const char *base, const char *const *names, char *out, size_t cap)
{
    if (!base || !*base) return 0;
    if (lw_is_file(base)) return snprintf(out, cap, "%s", base) > 0;
    for (int i = 0; names[i]; i++) {
        snprintf(out, cap, "%s/%s", base, names[i]);
        if (lw_is_file(out)) return 1;
    }
    return 0;
}

static ldm_status open_tokenizer(ltr_text *tx, ld_cond_kind kind, const char *vocab_path, const char *ckpt)
{
    static const char *const clip_names[] = {"bpe_simple_vocab_16e6.txt.gz", NULL};
    static const char *const bert_names[] = {"vocab.txt", "bert-base-uncased-vocab.txt", NULL};
    int bert = kind == LD_COND_BERT;
    const char *const *names = bert ? bert_names : clip_names;
    char dir[4096], path[4096];
    snprintf(dir, sizeof dir, "%s", ckpt);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(dir, sizeof dir, ".");
    if (!try_location(vocab_path, names, path, sizeof path) &&
        !try_location(getenv("LDM_VOCAB"), names, path, sizeof path) && !try_location(dir, names, path, sizeof path))
        return ldm_fail(LDM_ERR_NOT_FOUND,
                        "captions: the %s vocabulary %s was not found: give "
                        "ldm_train_params.vocab_path (ldm train --vocab) or $LDM_VOCAB, or put it in %s",
                        bert ? "BERT WordPiece" : "CLIP BPE", names[0], dir);
    ldm_tokenizer_kind k = bert                       ? LDM_TOKENIZER_BERT
                           : kind == LD_COND_OPENCLIP ? LDM_TOKENIZER_OPENCLIP
                                                      : LDM_TOKENIZER_CLIP;
    return ldm_tokenizer_load(k, path, &tx->tok);
}

static ldm_status create_encoder(ltr_text *tx, const ld_cond *d, const char *path)
{
    if (d->kind == LD_COND_BERT) {
        if (!d->use_tokenizer)
            return ldm_fail(LDM_ERR_UNSUPPORTED, "captions: this BERTEmbedder has use_tokenizer: false (it takes "
                                                 "token ids, not captions)");
        ldm_status st = lbert_create(d, tx->store, COND_PREFIX, &tx->bert);
        if (st != LDM_OK) return ldm_fail_context(st, "text encoder %s", path), st;
        tx->tokens = lbert_max_seq_len(tx->bert), tx->width = lbert_dim(tx->bert);
        return LDM_OK;
    }
    ldm_status st = lclip_create(d, tx->store, COND_PREFIX, &tx->clip);
    if (st != LDM_OK) return ldm_fail_context(st, "text encoder %s", path), st;
    tx->tokens = lclip_ctx(tx->clip), tx->width = lclip_width(tx->clip);
    return LDM_OK;
}

ldm_status ltr_text_open(const ld_model *m, const char *const *paths, int n, const char *vocab_path, ltr_text **out)
{
    *out = NULL;
    if (!ltr_text_kind(m->cond.kind)) return ldm_fail(LDM_ERR_INTERNAL, "captions: not a text conditioner");
    ltr_text *tx = ldm_calloc(1, sizeof *tx);
    if (!tx) return ldm_alloc_failure_status();
    const char *found = NULL;
    ldm_status st = LDM_OK;
    for (int i = 0; i < n && !found && st == LDM_OK; i++) {
        if (!paths[i]) continue;
        st = lw_open(paths[i], 0, &tx->store);
        if (st == LDM_OK && has_cond_weights(tx->store))
            found = paths[i];
        else if (st == LDM_OK)
            lw_close(tx->store), tx->store = NULL;
    }
    if (st == LDM_OK && !found)
        st = ldm_fail(LDM_ERR_NOT_FOUND,
                      "captions: the frozen text encoder's weights (cond_stage_model.*) are in "
                      "none of the checkpoints given (fine-tune from one that has them: ldm_train_params.init_from, "
                      "ldm train --init)");
    if (st == LDM_OK) st = create_encoder(tx, &m->cond, found);
    if (st == LDM_OK) st = open_tokenizer(tx, m->cond.kind, vocab_path, found);
    if (st == LDM_OK && m->unet.context_dim != tx->width)
        st = ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                      "captions: the text encoder's width %d differs from the UNet's "
                      "context_dim %d",
                      tx->width, m->unet.context_dim);
    if (st != LDM_OK) {
        ltr_text_free(tx);
        return st;
    }
    *out = tx;
    return LDM_OK;
}

void ltr_text_free(ltr_text *tx)
{
    if (!tx) return;
    lclip_free(tx->clip);
    lbert_free(tx->bert);
    ldm_tokenizer_free(tx->tok);
    lw_close(tx->store);
    ldm_free(tx);
}

int ltr_text_tokens(const ltr_text *tx)
{
    return tx->tokens;
}
int ltr_text_width(const ltr_text *tx)
{
    return tx->width;
}
const lw_store *ltr_text_store(const ltr_text *tx)
{
    return tx->store;
}

ldm_status ltr_text_encode(ltr_text *tx, const lctx *c, const char *const *captions, int n, float *out)
{
    const char **texts = ldm_malloc(sizeof *texts * (size_t)(n > 0 ? n : 1));
    if (!texts) return ldm_alloc_failure_status();
    for (int i = 0; i < n; i++) texts[i] = captions[i] ? captions[i] : "";
    ldm_tensor *ids = NULL, *emb = NULL;
    ldm_status st = ldm_tokenizer_encode(tx->tok, texts, n, tx->tokens, &ids);
    ldm_free(texts);
    if (st == LDM_OK) st = tx->clip ? lclip_encode(tx->clip, c, ids, &emb) : lbert_encode(tx->bert, c, ids, &emb);
    ldm_tensor_free(ids);
    if (st != LDM_OK) return st;
    memcpy(out, emb->data, sizeof(float) * (size_t)n * tx->tokens * tx->width);
    ldm_tensor_free(emb);
    return LDM_OK;
}
