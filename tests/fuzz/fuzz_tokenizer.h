/* fuzz_tokenizer.h - shared by the tokenizer harnesses: encoding prompts with a loaded
 * tokenizer and checking the framing every family promises. */
#ifndef LDM_FUZZ_TOKENIZER_H
#define LDM_FUZZ_TOKENIZER_H

#include "fuzz_common.h"
#include "text/text.h"

/* Encodes `prompt` (NUL-terminated) at a context length picked by `sel`; ids must stay inside
 * the vocabulary (max_id exclusive). */
static inline void fuzz_encode(const ldm_tokenizer *tok, const char *prompt, unsigned sel, int64_t max_id)
{
    static const int ctx_lengths[] = {2, 3, 8, 77, 300};
    int ctx = ctx_lengths[sel % 5];
    int64_t ids[2 * 300];
    const char *prompts[2] = {prompt, "a photograph of an astronaut"};
    if (ltx_tokenizer_encode(tok, prompts, 2, ctx, ids) != LDM_OK) return;
    for (int i = 0; i < 2 * ctx; i++)
        if (ids[i] < 0 || ids[i] >= max_id) abort();
}

#endif
