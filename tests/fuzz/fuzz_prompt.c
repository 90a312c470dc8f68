/* fuzz_prompt.c - prompts as users write them (docs/prompts.md) on arbitrary input: webui's
 * emphasis parser, then the chunks of the CLIP, OpenCLIP or BERT tokenizer (real vocabularies
 * from $LDM_SHARED/vocab). The first byte picks the tokenizer, the LDM_PROMPT_* flags and the
 * context length; the rest is the prompt. Checks the framing every chunk promises: start id first,
 * ids inside the vocabulary, weight 1 on the start id and the last id, finite weights. */
#include "fuzz_common.h"
#include "text/prompt.h"
#include "text/text.h"

#include <math.h>

static ldm_tokenizer *tok[3];
static const int64_t vocab_size[3] = {49408, 49408, 30522};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *bpe = "vocab/bpe_simple_vocab_16e6.txt.gz";
    if (ltx_tokenizer_load(LDM_TOKENIZER_CLIP, fuzz_shared_path(bpe), &tok[0]) != LDM_OK ||
        ltx_tokenizer_load(LDM_TOKENIZER_OPENCLIP, fuzz_shared_path(bpe), &tok[1]) != LDM_OK ||
        ltx_tokenizer_load(LDM_TOKENIZER_BERT, fuzz_shared_path("vocab/bert-base-uncased-vocab.txt"), &tok[2]) !=
            LDM_OK) {
        fprintf(stderr, "fuzz_prompt: %s (set LDM_SHARED)\n", ldm_last_error());
        abort();
    }
    ldm_alloc_set_cap(FUZZ_ALLOC_CAP);
    return 0;
}

static void check_chunks(const lpr_chunks *ch, const lpr_chunk_cfg *cfg, int64_t max_id)
{
    if (ch->n_chunks < 1 || ch->row != cfg->chunk_length + 2) abort();
    for (int c = 0; c < ch->n_chunks; c++) {
        const int64_t *ids = ch->ids + (size_t)c * (size_t)ch->row;
        const float *w = ch->weights + (size_t)c * (size_t)ch->row;
        if (ids[0] != cfg->id_start || w[0] != 1.0f || w[ch->row - 1] != 1.0f) abort();
        for (int i = 0; i < ch->row; i++) {
            if (ids[i] < 0 || ids[i] >= max_id) abort();
            fuzz_sink ^= (unsigned char)isfinite(w[i]);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int ctx_lengths[] = {3, 8, 77, 92};
    if (size < 1) return 0;
    int which = data[0] % 3;
    unsigned flags = (data[0] >> 2) & 7u;
    int ctx = ctx_lengths[(data[0] >> 5) & 3];
    char *prompt = fuzz_cstr(data + 1, size - 1);
    ldm_prompt_runs *runs = NULL;
    if (ldm_prompt_parse(prompt, flags, &runs) == LDM_OK) {
        for (int i = 0; i < ldm_prompt_runs_count(runs); i++)
            fuzz_sink ^= (unsigned char)ldm_prompt_runs_text(runs, i)[0];
        ldm_prompt_runs_free(runs);
    }
    lpr_chunk_cfg cfg;
    lpr_chunks ch = {0};
    if (lpr_tokenizer_cfg(tok[which], ctx, flags, &cfg) == LDM_OK &&
        lpr_tokenizer_chunks(tok[which], &cfg, prompt, flags, &ch) == LDM_OK)
        check_chunks(&ch, &cfg, vocab_size[which]);
    lpr_chunks_free(&ch);
    free(prompt);
    return 0;
}
