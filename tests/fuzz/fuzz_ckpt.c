/* fuzz_ckpt.c - PyTorch zip checkpoints end to end (lw_open: zip directory, data.pkl in the
 * restricted pickle VM, tensor records against their storages), then widening and detection. */
#include "fuzz_store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4 || memcmp(data, "PK\x03\x04", 4) != 0) return 0;
    return fuzz_checkpoint(data, size);
}
