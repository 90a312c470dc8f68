/* fuzz_clip_vocab.c - the CLIP BPE vocabulary reader. The reader needs all 48894 merge lines, so
 * an input either stands for the whole file (first byte odd: gzip streams, short or broken
 * files) or replaces the first lines of the real (uncompressed) vocabulary (first byte even: the
 * fuzzer edits the header and the first merges, the rest stays valid and the file loads far
 * enough to build the merge table). A loaded vocabulary then encodes a few prompts. */
#include "fuzz_tokenizer.h"

#include <zlib.h>

static char *real;      /* the uncompressed real vocabulary */
static size_t real_len;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    gzFile f = gzopen(fuzz_shared_path("vocab/bpe_simple_vocab_16e6.txt.gz"), "rb");
    if (!f) {
        fprintf(stderr, "fuzz_clip_vocab: cannot open the CLIP vocabulary (set LDM_SHARED)\n");
        abort();
    }
    size_t cap = 4u << 20;
    real = malloc(cap);
    int n;
    while ((n = gzread(f, real + real_len, (unsigned)(cap - real_len))) > 0) real_len += (size_t)n;
    gzclose(f);
    return 0;
}

/* Input lines, then the real file from the line after as many lines as the input holds. */
static uint8_t *splice(const uint8_t *data, size_t size, size_t *out_len)
{
    size_t lines = 0;
    for (size_t i = 0; i < size; i++) lines += data[i] == '\n';
    const char *p = real, *end = real + real_len;
    for (size_t k = 0; k < lines && p < end; k++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        p = nl ? nl + 1 : end;
    }
    size_t rest = (size_t)(end - p);
    uint8_t *buf = malloc(size + rest + 1);
    memcpy(buf, data, size);
    memcpy(buf + size, p, rest);
    *out_len = size + rest;
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    ldm_alloc_set_cap(FUZZ_ALLOC_CAP);
    const char *path;
    if (data[0] & 1) {
        path = fuzz_file(data + 1, size - 1);
    } else {
        size_t len;
        uint8_t *file = splice(data + 1, size - 1, &len);
        path = fuzz_file(file, len);
        free(file);
    }
    ldm_tokenizer *tok = NULL;
    if (ltx_tokenizer_load(data[0] & 2 ? LDM_TOKENIZER_OPENCLIP : LDM_TOKENIZER_CLIP, path, &tok) == LDM_OK) {
        fuzz_encode(tok, "a photograph of an astronaut riding a horse, 4k &amp; hdr", 3, 49408);
        char *prompt = fuzz_cstr(data + 1, size - 1 < 200 ? size - 1 : 200);
        fuzz_encode(tok, prompt, 3, 49408);
        free(prompt);
        ltx_tokenizer_free(tok);
    }
    ldm_alloc_set_cap(0);
    return 0;
}
