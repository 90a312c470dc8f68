/* sdxl_api.c - the public SDXL conditioner call (ldm_conditioner_encode_sdxl): prompts tokenised
 * for each text encoder by its own rules (HF CLIP: padded with the end token; open_clip: padded
 * with 0), then sgm's GeneralConditioner (lib/models/sdxl_cond.c). */
#include "model_internal.h"

#include "../models/sdxl_cond.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

static void sdxl_cond_params_defaults(ldm_sdxl_cond_params *p)
{
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->aesthetic_score = 6.0; /* scripts/demo: value_dict["aesthetic_score"] */
}

void ldm_sdxl_cond_params_init_size(ldm_sdxl_cond_params *params, size_t struct_size)
{
    ldm_sdxl_cond_params defaults;
    sdxl_cond_params_defaults(&defaults);
    ldm_params_fill(params, struct_size, &defaults, sizeof defaults);
}

ldm_status lm_sdxl_cond_create(ldm_model *m, struct ldm_conditioner *h)
{
    return lsdxl_cond_create(&m->desc.sgm, m->store, &h->sdxl);
}

void lm_sdxl_cond_free(struct ldm_conditioner *h)
{
    lsdxl_cond_free(h->sdxl);
    h->sdxl = NULL;
    for (int i = 0; i < LD_MAX_EMBEDDERS; i++) {
        ldm_tokenizer_free(h->sdxl_tok[i]);
        h->sdxl_tok[i] = NULL;
    }
}

ldm_status lm_sdxl_tokenizer(struct ldm_conditioner *cond, int k, ldm_tokenizer **tok)
{
    if (!cond->sdxl_tok[k]) {
        char path[4096];
        LDM_TRY(lm_find_vocab(cond->model, 0, path, sizeof path));
        ldm_tokenizer_kind kind =
            lsdxl_cond_text_kind(cond->sdxl, k) == LD_COND_CLIP ? LDM_TOKENIZER_CLIP : LDM_TOKENIZER_OPENCLIP;
        LDM_TRY(ldm_tokenizer_load(kind, path, &cond->sdxl_tok[k]));
    }
    *tok = cond->sdxl_tok[k];
    return LDM_OK;
}

/* Token ids of the prompts for text encoder k. */
static ldm_status tokenize(struct ldm_conditioner *cond, int k, const ldm_sdxl_cond_params *p, ldm_tensor **out)
{
    ldm_tokenizer *tok;
    LDM_TRY(lm_sdxl_tokenizer(cond, k, &tok));
    return ldm_tokenizer_encode(tok, p->prompts, p->n_prompts, 77, out);
}

static ldm_status check_params(const struct ldm_conditioner *cond, const ldm_sdxl_cond_params *p, int *B)
{
    const double v[] = {p->original_height, p->original_width, p->crop_top,       p->crop_left,
                        p->target_height,   p->target_width,   p->aesthetic_score};
    for (size_t i = 0; i < LDM_ARRAY_LEN(v); i++)
        if (!isfinite(v[i]) || fabs(v[i]) > 1e9)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_conditioner_encode_sdxl: size/crop/score value %g", v[i]);
    int n_text = lsdxl_cond_n_text(cond->sdxl);
    if (p->tokens) {
        if (p->n_tokens != n_text)
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT,
                            "ldm_conditioner_encode_sdxl: %d token tensors for %d text "
                            "encoders",
                            p->n_tokens, n_text);
        for (int k = 0; k < n_text; k++)
            LDM_TRY(lt_check(p->tokens[k], "ldm_conditioner_encode_sdxl: tokens", LDM_I64, 2));
        *B = n_text ? (int)p->tokens[0]->shape[0] : 1;
        return LDM_OK;
    }
    if (!p->prompts || p->n_prompts <= 0 || p->n_prompts > 65536)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_conditioner_encode_sdxl: no prompts and no tokens");
    if (p->prompt_syntax != 0 && p->prompt_syntax != 1)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_conditioner_encode_sdxl: prompt_syntax %d is not 0 or 1",
                        p->prompt_syntax);
    *B = p->n_prompts;
    return LDM_OK;
}

ldm_status lm_cond_encode_sdxl(struct ldm_conditioner *cond, const ldm_sdxl_cond_params *params, ldm_tensor **crossattn,
                               ldm_tensor **vector)
{
    if (!cond->sdxl) return ldm_fail(LDM_ERR_UNSUPPORTED, "this model has no SDXL conditioner");
    ldm_sdxl_cond_params p;
    ldm_sdxl_cond_params_init(&p);
    LDM_TRY(ldm_params_read(params, &p, sizeof p,
                            offsetof(ldm_sdxl_cond_params, aesthetic_score) + sizeof p.aesthetic_score,
                            "ldm_sdxl_cond_params"));
    int B = 0, n_text = lsdxl_cond_n_text(cond->sdxl);
    LDM_TRY(check_params(cond, &p, &B));
    if (p.prompt_syntax && !p.tokens) return lm_cond_encode_sdxl_prompts(cond, &p, 1, crossattn, vector);
    ldm_tensor *owned[LD_MAX_EMBEDDERS] = {0};
    const ldm_tensor *tokens[LD_MAX_EMBEDDERS] = {0};
    ldm_status st = LDM_OK;
    for (int k = 0; k < n_text && st == LDM_OK; k++) {
        if (p.tokens)
            tokens[k] = p.tokens[k];
        else if (!p.zero_text && (st = tokenize(cond, k, &p, &owned[k])) == LDM_OK)
            tokens[k] = owned[k];
    }
    lsdxl_values *values = st == LDM_OK ? ldm_calloc((size_t)B, sizeof *values) : NULL;
    if (st == LDM_OK && !values) st = ldm_alloc_failure_status();
    for (int b = 0; st == LDM_OK && b < B; b++)
        values[b] = (lsdxl_values){p.original_height, p.original_width, p.crop_top,       p.crop_left,
                                   p.target_height,   p.target_width,   p.aesthetic_score};
    if (st == LDM_OK)
        st = lsdxl_cond_encode(cond->sdxl, &cond->model->ctx, tokens, values, B, p.zero_text, crossattn, vector);
    ldm_free(values);
    for (int k = 0; k < n_text; k++) ldm_tensor_free(owned[k]);
    return st;
}

ldm_status ldm_conditioner_encode_sdxl(ldm_conditioner *cond, const ldm_sdxl_cond_params *params,
                                       ldm_tensor **crossattn, ldm_tensor **vector)
{
    if (!cond || !params || !crossattn || !vector)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_conditioner_encode_sdxl: NULL argument");
    *crossattn = *vector = NULL;
    LM_BEGIN(cond->model, "ldm_conditioner_encode_sdxl");
    return lm_cond_encode_sdxl(cond, params, crossattn, vector);
}
