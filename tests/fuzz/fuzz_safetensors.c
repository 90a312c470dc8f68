/* fuzz_safetensors.c - safetensors header JSON + tensor table (lw_open), then dtype widening and
 * architecture detection over whatever tensors the file declares. Seeds: shrunk fixture files. */
#include "fuzz_store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* lw_open picks safetensors for "8-byte length + '{'": keep the fuzzer on that path. */
    if (size < 9 || data[8] != '{') return 0;
    return fuzz_checkpoint(data, size);
}
