/* fuzz_clip_tokenizer.c - CLIP BPE tokenization of arbitrary prompts with the real vocabulary
 * ($LDM_SHARED/vocab/bpe_simple_vocab_16e6.txt.gz): HTML unescaping, clean-up, the split
 * pattern, Unicode tables, the merge loop. The first byte picks CLIP/OpenCLIP and the context
 * length; the rest is the prompt. */
#include "fuzz_tokenizer.h"

static ldm_tokenizer *tok[2];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *path = fuzz_shared_path("vocab/bpe_simple_vocab_16e6.txt.gz");
    if (ltx_tokenizer_load(LDM_TOKENIZER_CLIP, path, &tok[0]) != LDM_OK ||
        ltx_tokenizer_load(LDM_TOKENIZER_OPENCLIP, path, &tok[1]) != LDM_OK) {
        fprintf(stderr, "fuzz_clip_tokenizer: %s (set LDM_SHARED)\n", ldm_last_error());
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    char *prompt = fuzz_cstr(data + 1, size - 1);
    fuzz_encode(tok[data[0] & 1], prompt, data[0] >> 1, 49408);
    free(prompt);
    return 0;
}
