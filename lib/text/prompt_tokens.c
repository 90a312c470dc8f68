/* prompt_tokens.c - the prompt syntax over the library's tokenizers, and the public calls that
 * need no model: ldm_prompt_parse (webui's runs, for hosts that show them) and
 * ldm_tokenizer_encode_prompt (the chunks' ids and weights). */
#include "prompt.h"

#include "../core/tensor.h"
#include "text.h"

#include <string.h>

#define WEBUI_COMMA_BACKTRACK 20 /* webui's comma_padding_backtrack default */

struct ldm_prompt_runs {
    lpr_runs runs;
};

static ldm_status tokenize(void *user, const char *text, int64_t **ids, size_t *n_ids)
{
    return ltx_tokenizer_ids(user, text, "prompt", ids, n_ids);
}

ldm_status lpr_tokenizer_cfg(const ldm_tokenizer *tok, int context_length, unsigned flags, lpr_chunk_cfg *cfg)
{
    if (context_length < 3 || context_length > (1 << 20))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "prompt: context_length %d outside 3..%d", context_length, 1 << 20);
    memset(cfg, 0, sizeof *cfg);
    cfg->chunk_length = context_length - 2;
    ltx_tokenizer_framing(tok, &cfg->id_start, &cfg->id_end, &cfg->id_pad);
    cfg->comma_backtrack = (flags & LDM_PROMPT_NO_COMMA_BACKTRACK) ? 0 : WEBUI_COMMA_BACKTRACK;
    int64_t *ids = NULL;
    size_t n = 0;
    LDM_TRY(ltx_tokenizer_ids(tok, ",", "\",\"", &ids, &n));
    /* a vocabulary without "," (a test vocabulary) gives [UNK]: then there is no comma */
    cfg->id_comma = n == 1 && ids[0] != ltx_tokenizer_unknown_id(tok) ? ids[0] : -1;
    ldm_free(ids);
    return LDM_OK;
}

ldm_status lpr_tokenizer_chunks(const ldm_tokenizer *tok, const lpr_chunk_cfg *cfg, const char *prompt, unsigned flags,
                                lpr_chunks *out)
{
    lpr_runs runs = {0};
    ldm_status st = (flags & LDM_PROMPT_NO_EMPHASIS) ? lpr_parse_plain(prompt, &runs) : lpr_parse(prompt, &runs);
    if (st == LDM_OK) st = lpr_chunk(&runs, cfg, tokenize, (void *)tok, out);
    lpr_runs_free(&runs);
    if (st != LDM_OK) lpr_chunks_free(out);
    return st;
}

/* ---------------------------------------------------------------- public API */

LDM_API ldm_status ldm_prompt_parse(const char *prompt, unsigned flags, ldm_prompt_runs **out)
{
    if (!out) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_prompt_parse: out is NULL");
    *out = NULL;
    if (!prompt) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_prompt_parse: prompt is NULL");
    ldm_prompt_runs *r = ldm_calloc(1, sizeof *r);
    if (!r) return ldm_alloc_failure_status();
    ldm_status st = (flags & LDM_PROMPT_NO_EMPHASIS) ? lpr_parse_plain(prompt, &r->runs) : lpr_parse(prompt, &r->runs);
    if (st != LDM_OK) {
        ldm_prompt_runs_free(r);
        return st;
    }
    *out = r;
    return LDM_OK;
}

LDM_API int ldm_prompt_runs_count(const ldm_prompt_runs *runs)
{
    return runs ? runs->runs.count : 0;
}

LDM_API const char *ldm_prompt_runs_text(const ldm_prompt_runs *runs, int i)
{
    return runs && i >= 0 && i < runs->runs.count ? runs->runs.items[i].text : NULL;
}

LDM_API double ldm_prompt_runs_weight(const ldm_prompt_runs *runs, int i)
{
    return runs && i >= 0 && i < runs->runs.count ? runs->runs.items[i].weight : 0.0;
}

LDM_API int ldm_prompt_runs_is_break(const ldm_prompt_runs *runs, int i)
{
    return runs && i >= 0 && i < runs->runs.count && lpr_is_break(&runs->runs.items[i]);
}

LDM_API void ldm_prompt_runs_free(ldm_prompt_runs *runs)
{
    if (!runs) return;
    lpr_runs_free(&runs->runs);
    ldm_free(runs);
}

static ldm_status chunk_tensors(const lpr_chunks *c, ldm_tensor **ids, ldm_tensor **weights)
{
    int64_t shape[2] = {c->n_chunks, c->row};
    *ids = lt_new_i64(2, shape);
    *weights = lt_new_f32(2, shape);
    if (!*ids || !*weights) {
        ldm_tensor_free(*ids);
        ldm_tensor_free(*weights);
        *ids = *weights = NULL;
        return ldm_alloc_failure_status();
    }
    size_t n = (size_t)c->n_chunks * (size_t)c->row;
    memcpy(lt_i64(*ids), c->ids, n * sizeof *c->ids);
    memcpy(lt_f32(*weights), c->weights, n * sizeof *c->weights);
    return LDM_OK;
}

LDM_API ldm_status ldm_tokenizer_encode_prompt(ldm_tokenizer *tok, const char *prompt, int context_length,
                                               unsigned flags, ldm_tensor **ids, ldm_tensor **weights)
{
    if (!ids || !weights) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_tokenizer_encode_prompt: NULL output");
    *ids = *weights = NULL;
    if (!tok || !prompt) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_tokenizer_encode_prompt: NULL argument");
    lpr_chunk_cfg cfg;
    lpr_chunks chunks = {0};
    LDM_TRY(lpr_tokenizer_cfg(tok, context_length, flags, &cfg));
    LDM_TRY(lpr_tokenizer_chunks(tok, &cfg, prompt, flags, &chunks));
    ldm_status st = chunk_tensors(&chunks, ids, weights);
    lpr_chunks_free(&chunks);
    return st;
}
