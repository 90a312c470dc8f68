/* fuzz_png.c - the PNG reader (libpng behind our error/alloc hooks, transforms, size limits)
 * in its three modes: RGB, luminance and raw palette indices. */
#include "fuzz_common.h"
#include "core/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int mode = data[0] % 3;
    const char *path = fuzz_file(data + 1, size - 1);
    ldm_alloc_set_cap(FUZZ_ALLOC_CAP);
    ldm_tensor *t = NULL;
    ldm_status st = mode == 0 ? ldm_image_read_png(path, &t) : ldm_image_read_png_gray(path, mode == 1, &t);
    if (st == LDM_OK) {
        /* every value must be in range: [-1,1] for RGB, [0,1] normalized, [0,255] raw */
        const float *v = ldm_tensor_data(t);
        float lo = mode == 0 ? -1.f : 0.f, hi = mode == 0 ? 1.f : mode == 1 ? 1.f : 255.f;
        for (int64_t i = 0; i < ldm_tensor_numel(t); i++)
            if (!(v[i] >= lo && v[i] <= hi)) abort();
        ldm_tensor_free(t);
    }
    ldm_alloc_set_cap(0);
    return 0;
}
