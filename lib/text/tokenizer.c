/* tokenizer.c - the tokenizer handle: one of the two vocabularies plus the family's framing
 * (start/end tokens, truncation, padding); public ldm_tokenizer_* API. */
#include "text.h"

#include "../core/tensor.h"
#include "bpe.h"
#include "wordpiece.h"

#include <stdio.h>
#include <string.h>

#define MAX_CONTEXT_LENGTH (1 << 20)

struct ldm_tokenizer {
    ldm_tokenizer_kind kind;
    ltx_bpe *bpe;      /* CLIP, OPENCLIP */
    ltx_wordpiece *wp; /* BERT */
};

ldm_status ltx_tokenizer_load(ldm_tokenizer_kind kind, const char *vocab_path, ldm_tokenizer **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tokenizer load: out is NULL");
    *out = NULL;
    if (!vocab_path) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tokenizer load: vocab_path is NULL");
    if (kind != LDM_TOKENIZER_CLIP && kind != LDM_TOKENIZER_OPENCLIP && kind != LDM_TOKENIZER_BERT)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tokenizer load: unknown tokenizer kind %d", (int)kind);
    ldm_tokenizer *tok = ldm_calloc(1, sizeof *tok);
    if (!tok) return LDM_ERR_OUT_OF_MEMORY;
    tok->kind = kind;
    ldm_status st = kind == LDM_TOKENIZER_BERT ? ltx_wordpiece_load(vocab_path, &tok->wp)
                                               : ltx_bpe_load(vocab_path, &tok->bpe);
    if (st != LDM_OK) {
        ltx_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return LDM_OK;
}

void ltx_tokenizer_free(ldm_tokenizer *tok)
{
    if (!tok) return;
    ltx_bpe_free(tok->bpe);
    ltx_wordpiece_free(tok->wp);
    ldm_free(tok);
}

/* One row: start + body[:ctx-2] + end + padding. The body is written in place at row + 1. */
static ldm_status encode_row(const ldm_tokenizer *tok, const char *prompt, int index, int ctx, int64_t *row)
{
    char what[48];
    snprintf(what, sizeof what, "prompt %d", index);
    size_t max_body = (size_t)ctx - 2, n = 0;
    int64_t start, end, pad;
    if (tok->kind == LDM_TOKENIZER_BERT) {
        LDM_TRY(ltx_wordpiece_encode(tok->wp, prompt, what, row + 1, max_body, &n));
        start = ltx_wordpiece_cls_id(tok->wp);
        end = ltx_wordpiece_sep_id(tok->wp);
        pad = ltx_wordpiece_pad_id(tok->wp);
    } else {
        LDM_TRY(ltx_bpe_encode(tok->bpe, prompt, what, row + 1, max_body, &n));
        start = ltx_bpe_start_id(tok->bpe);
        end = ltx_bpe_end_id(tok->bpe);
        pad = tok->kind == LDM_TOKENIZER_CLIP ? end : 0;
    }
    row[0] = start;
    row[n + 1] = end;
    for (size_t i = n + 2; i < (size_t)ctx; i++) row[i] = pad;
    return LDM_OK;
}

ldm_status ltx_tokenizer_encode(const ldm_tokenizer *tok, const char *const *prompts, int n_prompts,
                                int context_length, int64_t *ids)
{
    if (!tok || !prompts || !ids) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tokenizer encode: NULL argument");
    if (n_prompts < 1) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tokenizer encode: n_prompts %d < 1", n_prompts);
    if (context_length < 2 || context_length > MAX_CONTEXT_LENGTH)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tokenizer encode: context_length %d outside 2..%d", context_length,
                        MAX_CONTEXT_LENGTH);
    for (int i = 0; i < n_prompts; i++) {
        if (!prompts[i]) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "tokenizer encode: prompt %d is NULL", i);
        LDM_TRY(encode_row(tok, prompts[i], i, context_length, ids + (size_t)i * (size_t)context_length));
    }
    return LDM_OK;
}

/* The encoders stop at max_ids; a result that fills the buffer may have been cut, so the buffer
 * grows until it does not. */
ldm_status ltx_tokenizer_ids(const ldm_tokenizer *tok, const char *text, const char *what, int64_t **ids,
                             size_t *n_ids)
{
    *ids = NULL;
    *n_ids = 0;
    size_t cap = strlen(text) + 16;
    for (;;) {
        size_t bytes;
        if (ldm_mul_size(cap, sizeof **ids, &bytes)) return ldm_fail(LDM_ERR_LIMIT, "%s: too many tokens", what);
        int64_t *buf = ldm_malloc(bytes);
        if (!buf) return ldm_alloc_failure_status();
        size_t n = 0;
        ldm_status st = tok->kind == LDM_TOKENIZER_BERT ? ltx_wordpiece_encode(tok->wp, text, what, buf, cap, &n)
                                                        : ltx_bpe_encode(tok->bpe, text, what, buf, cap, &n);
        if (st != LDM_OK || n < cap) {
            if (st != LDM_OK) ldm_free(buf);
            else *ids = buf, *n_ids = n;
            return st;
        }
        ldm_free(buf);
        if (ldm_mul_size(cap, 2, &cap)) return ldm_fail(LDM_ERR_LIMIT, "%s: too many tokens", what);
    }
}

void ltx_tokenizer_framing(const ldm_tokenizer *tok, int64_t *start, int64_t *end, int64_t *pad)
{
    if (tok->kind == LDM_TOKENIZER_BERT) {
        *start = ltx_wordpiece_cls_id(tok->wp);
        *end = ltx_wordpiece_sep_id(tok->wp);
        *pad = ltx_wordpiece_pad_id(tok->wp);
        return;
    }
    *start = ltx_bpe_start_id(tok->bpe);
    *end = ltx_bpe_end_id(tok->bpe);
    *pad = tok->kind == LDM_TOKENIZER_CLIP ? *end : 0;
}

int64_t ltx_tokenizer_unknown_id(const ldm_tokenizer *tok)
{
    return tok->kind == LDM_TOKENIZER_BERT ? ltx_wordpiece_unk_id(tok->wp) : -1;
}

/* ---------------------------------------------------------------- public API */

LDM_API ldm_status ldm_tokenizer_load(ldm_tokenizer_kind kind, const char *vocab_path, ldm_tokenizer **out)
{
    return ltx_tokenizer_load(kind, vocab_path, out);
}

LDM_API void ldm_tokenizer_free(ldm_tokenizer *tok) { ltx_tokenizer_free(tok); }

LDM_API ldm_status ldm_tokenizer_encode(ldm_tokenizer *tok, const char *const *prompts, int n_prompts,
                                        int context_length, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_tokenizer_encode: out is NULL");
    *out = NULL;
    if (!tok) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_tokenizer_encode: tokenizer is NULL");
    if (n_prompts < 1) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_tokenizer_encode: n_prompts %d < 1", n_prompts);
    if (context_length < 2 || context_length > MAX_CONTEXT_LENGTH)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_tokenizer_encode: context_length %d outside 2..%d",
                        context_length, MAX_CONTEXT_LENGTH);
    int64_t shape[2] = {n_prompts, context_length};
    ldm_tensor *t = lt_new_i64(2, shape);
    if (!t) return LDM_ERR_OUT_OF_MEMORY;
    ldm_status st = ltx_tokenizer_encode(tok, prompts, n_prompts, context_length, lt_i64(t));
    if (st != LDM_OK) {
        ldm_tensor_free(t);
        return st;
    }
    *out = t;
    return LDM_OK;
}
