/* fuzz_bert_tokenizer.c - BERT WordPiece tokenization of arbitrary prompts with the real
 * bert-base-uncased vocabulary: special tokens, normalizer (NFD, accents, CJK, controls),
 * pre-tokenizer, WordPiece. The first byte picks the context length; the rest is the prompt. */
#include "fuzz_tokenizer.h"

static ldm_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    if (ltx_tokenizer_load(LDM_TOKENIZER_BERT, fuzz_shared_path("vocab/bert-base-uncased-vocab.txt"), &tok) !=
        LDM_OK) {
        fprintf(stderr, "fuzz_bert_tokenizer: %s (set LDM_SHARED)\n", ldm_last_error());
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    char *prompt = fuzz_cstr(data + 1, size - 1);
    fuzz_encode(tok, prompt, data[0], 30522);
    free(prompt);
    return 0;
}
