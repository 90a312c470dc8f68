/* fuzz_bert_vocab.c - the WordPiece vocab.txt reader on arbitrary files (plain or gzip), then
 * tokenization with whatever vocabulary loaded: the input itself (as a prompt) and a fixed one. */
#include "fuzz_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ldm_alloc_set_cap(FUZZ_ALLOC_CAP);
    ldm_tokenizer *tok = NULL;
    if (ltx_tokenizer_load(LDM_TOKENIZER_BERT, fuzz_file(data, size), &tok) == LDM_OK) {
        size_t lines = 1;
        for (size_t i = 0; i < size; i++) lines += data[i] == '\n';
        char *prompt = fuzz_cstr(data, size < 256 ? size : 256);
        /* ids are line numbers; a gzip input can have more lines than bytes: no bound then */
        int64_t max_id = (size >= 2 && data[0] == 0x1f && data[1] == 0x8b) ? INT64_MAX : (int64_t)lines;
        fuzz_encode(tok, prompt, (unsigned)size, max_id);
        fuzz_encode(tok, "[CLS] unaffable runners, [MASK] héllo 你好!", (unsigned)size + 3, max_id);
        free(prompt);
        ltx_tokenizer_free(tok);
    }
    ldm_alloc_set_cap(0);
    return 0;
}
