/* prompt_cond.c - prompts with webui's syntax and length rules through a text conditioner
 * (docs/prompts.md): each prompt becomes chunks of token ids and weights (lib/text/prompt.h),
 * chunk i of every prompt is encoded in one batch by the text tower, the weights are applied to
 * each prompt's chunk of the output (lpr_emphasis) and the chunks are concatenated along the
 * sequence axis. Prompts without syntax within one chunk give exactly
 * ldm_conditioner_encode_text's result. */
#include "model_internal.h"

#include "../text/prompt.h"

#include <math.h>
#include <string.h>

typedef struct prompt_set {
    lpr_chunk_cfg cfg;
    lpr_chunks *chunks; /* one per prompt */
    int n, k;           /* prompts, chunks of the output */
} prompt_set;

static void set_free(prompt_set *s)
{
    for (int i = 0; s->chunks && i < s->n; i++) lpr_chunks_free(&s->chunks[i]);
    ldm_free(s->chunks);
}

static ldm_status set_build(struct ldm_conditioner *cond, const char *const *prompts, int n, unsigned flags,
                            int min_chunks, prompt_set *s)
{
    memset(s, 0, sizeof *s);
    LDM_TRY(lm_cond_tokenizer(cond));
    LDM_TRY(lpr_tokenizer_cfg(cond->tokenizer, lm_cond_context_length(cond), flags, &s->cfg));
    s->chunks = ldm_calloc((size_t)n, sizeof *s->chunks);
    if (!s->chunks) return ldm_alloc_failure_status();
    s->n = n;
    s->k = min_chunks > 1 ? min_chunks : 1;
    for (int i = 0; i < n; i++) {
        if (!prompts[i]) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "prompt %d is NULL", i);
        ldm_status st = lpr_tokenizer_chunks(cond->tokenizer, &s->cfg, prompts[i], flags, &s->chunks[i]);
        if (st != LDM_OK) return ldm_fail_context(st, "prompt %d: ", i);
        s->k = LDM_MAX(s->k, s->chunks[i].n_chunks);
    }
    return LDM_OK;
}

/* Chunk c of every prompt (an empty chunk past a prompt's end): ids [n, row] and weights. */
static ldm_status chunk_batch(const prompt_set *s, int c, ldm_tensor **ids, float *weights)
{
    int row = s->cfg.chunk_length + 2;
    int64_t shape[2] = {s->n, row};
    *ids = lt_new_i64(2, shape);
    if (!*ids) return ldm_alloc_failure_status();
    for (int i = 0; i < s->n; i++) {
        int64_t *dst = lt_i64(*ids) + (size_t)i * (size_t)row;
        float *w = weights + (size_t)i * (size_t)row;
        const lpr_chunks *ch = &s->chunks[i];
        if (c >= ch->n_chunks) {
            lpr_empty_chunk(&s->cfg, dst, w);
            continue;
        }
        memcpy(dst, ch->ids + (size_t)c * (size_t)row, (size_t)row * sizeof *dst);
        memcpy(w, ch->weights + (size_t)c * (size_t)row, (size_t)row * sizeof *w);
    }
    return LDM_OK;
}

static ldm_status check_finite(const float *z, size_t n, int prompt, int chunk)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(z[i]))
            return ldm_fail(LDM_ERR_NUMERIC,
                            "prompt %d, chunk %d: the weighted embedding is not finite (weights too large, or a "
                            "weighted mean of 0)",
                            prompt, chunk);
    return LDM_OK;
}

/* Encodes chunk c of every prompt, weights it and copies it into out [n, row*k, dim] (allocated
 * at the first chunk, when dim is known). */
static ldm_status encode_chunk(struct ldm_conditioner *cond, const prompt_set *s, int c, unsigned flags, float *w,
                               ldm_tensor **out)
{
    ldm_tensor *ids = NULL, *z = NULL;
    LDM_TRY(chunk_batch(s, c, &ids, w));
    ldm_status st = lm_cond_encode_tokens(cond, ids, &z);
    ldm_tensor_free(ids);
    LDM_TRY(st);
    int row = s->cfg.chunk_length + 2, dim = (int)z->shape[2];
    if (!*out) {
        int64_t shape[3] = {s->n, (int64_t)row * s->k, dim};
        *out = lt_new_f32(3, shape);
        if (!*out) st = ldm_alloc_failure_status();
    }
    size_t block = (size_t)row * (size_t)dim;
    for (int i = 0; i < s->n && st == LDM_OK; i++) {
        float *zi = lt_f32(z) + (size_t)i * block;
        lpr_emphasis(zi, w + (size_t)i * (size_t)row, row, dim, !(flags & LDM_PROMPT_NO_NORMALIZE));
        st = check_finite(zi, block, i, c);
        if (st == LDM_OK) memcpy(lt_f32(*out) + ((size_t)i * (size_t)s->k + (size_t)c) * block, zi, block * sizeof *zi);
    }
    ldm_tensor_free(z);
    return st;
}

ldm_status lm_cond_encode_prompts(struct ldm_conditioner *cond, const char *const *prompts, int n_prompts,
                                  unsigned flags, int min_chunks, ldm_tensor **out)
{
    prompt_set s;
    *out = NULL;
    ldm_status st = set_build(cond, prompts, n_prompts, flags, min_chunks, &s);
    float *w = NULL;
    if (st == LDM_OK) {
        w = ldm_malloc((size_t)n_prompts * (size_t)(s.cfg.chunk_length + 2) * sizeof *w);
        if (!w) st = ldm_alloc_failure_status();
    }
    for (int c = 0; c < s.k && st == LDM_OK; c++) st = encode_chunk(cond, &s, c, flags, w, out);
    ldm_free(w);
    set_free(&s);
    if (st != LDM_OK) {
        ldm_tensor_free(*out);
        *out = NULL;
    }
    return st;
}

ldm_status lm_cond_prompt_chunk_count(struct ldm_conditioner *cond, const char *prompt, unsigned flags, int *n_chunks)
{
    prompt_set s;
    ldm_status st = set_build(cond, &prompt, 1, flags, 1, &s);
    *n_chunks = s.k;
    set_free(&s);
    return st;
}

LDM_API ldm_status ldm_conditioner_encode_prompt(ldm_conditioner *cond, const char *const *prompts, int n_prompts,
                                                 unsigned flags, ldm_tensor **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_conditioner_encode_prompt: out is NULL");
    *out = NULL;
    if (!cond || !prompts || n_prompts <= 0)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_conditioner_encode_prompt: NULL argument or no prompts");
    LM_BEGIN(cond->model, "ldm_conditioner_encode_prompt");
    return lm_cond_encode_prompts(cond, prompts, n_prompts, flags, 1, out);
}
