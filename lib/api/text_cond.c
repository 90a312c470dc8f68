/* text_cond.c - prompts to conditioning: find the vocabulary, tokenize, run the text encoder.
 * The vocabulary files are not ours to ship, so they are found at run time. */
#include "model_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tries `base` as a file, or as a directory holding one of `names`. */
static int try_location(const char *base, const char *const *names, char *out, size_t cap)
{
    if (!base || !*base) return 0;
    if (!lw_is_dir(base)) {
        if (!lw_is_file(base)) return 0;
        snprintf(out, cap, "%s", base);
        return 1;
    }
    for (int i = 0; names[i]; i++) {
        snprintf(out, cap, "%s/%s", base, names[i]);
        if (lw_is_file(out)) return 1;
    }
    return 0;
}

/* Vocabulary search order: ldm_model_params.vocab_path, $LDM_VOCAB, the checkpoint's folder. */
ldm_status lm_find_vocab(const ldm_model *m, int bert, char *out, size_t cap)
{
    static const char *const clip_names[] = {"bpe_simple_vocab_16e6.txt.gz", NULL};
    static const char *const bert_names[] = {"vocab.txt", "bert-base-uncased-vocab.txt", NULL};
    const char *const *names = bert ? bert_names : clip_names;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", m->path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else snprintf(dir, sizeof dir, ".");
    if (try_location(m->vocab_path, names, out, cap) || try_location(getenv("LDM_VOCAB"), names, out, cap) ||
        try_location(dir, names, out, cap))
        return LDM_OK;
    return ldm_fail(LDM_ERR_NOT_FOUND,
                    "the %s vocabulary %s was not found: pass its path in ldm_model_params.vocab_path or "
                    "$LDM_VOCAB, or put it next to the checkpoint in %s",
                    bert ? "BERT WordPiece" : "CLIP BPE", names[0], dir);
}

ldm_status lm_cond_tokenizer(struct ldm_conditioner *cond)
{
    if (cond->tokenizer) return LDM_OK;
    ldm_tokenizer_kind kind;
    switch (cond->kind) {
    case LD_COND_CLIP: kind = LDM_TOKENIZER_CLIP; break;
    case LD_COND_OPENCLIP: kind = LDM_TOKENIZER_OPENCLIP; break;
    case LD_COND_BERT: kind = LDM_TOKENIZER_BERT; break;
    default: return ldm_fail(LDM_ERR_UNSUPPORTED, "this model's conditioner does not take text");
    }
    char path[4096];
    LDM_TRY(lm_find_vocab(cond->model, kind == LDM_TOKENIZER_BERT, path, sizeof path));
    return ldm_tokenizer_load(kind, path, &cond->tokenizer);
}

int lm_cond_context_length(const struct ldm_conditioner *cond)
{
    const ld_cond *d = &cond->model->desc.cond;
    if (cond->kind == LD_COND_BERT) return d->max_seq_len > 0 ? d->max_seq_len : 77;
    return d->ctx > 0 ? d->ctx : 77;
}

ldm_status lm_cond_encode_text(struct ldm_conditioner *cond, const char *const *prompts, int n_prompts,
                               ldm_tensor **out)
{
    LDM_TRY(lm_cond_tokenizer(cond));
    ldm_tensor *tokens = NULL;
    LDM_TRY(ldm_tokenizer_encode(cond->tokenizer, prompts, n_prompts, lm_cond_context_length(cond), &tokens));
    ldm_status st = lm_cond_encode_tokens(cond, tokens, out);
    ldm_tensor_free(tokens);
    return st;
}

ldm_status ldm_conditioner_encode_text(ldm_conditioner *cond, const char *const *prompts, int n_prompts,
                                       ldm_tensor **out)
{
    if (!cond || !out || !prompts || n_prompts <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_conditioner_encode_text: NULL argument or no prompts");
    *out = NULL;
    LM_BEGIN(cond->model, "ldm_conditioner_encode_text");
    return lm_cond_encode_text(cond, prompts, n_prompts, out);
}
