/* fuzz_config.c - YAML config -> model description (ld_config_parse: libyaml, the YAML tree,
 * every typed key), then the description printer. */
#include "fuzz_common.h"
#include "models/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ldm_alloc_set_cap(FUZZ_ALLOC_CAP);
    ld_model m;
    if (ld_config_parse((const char *)data, size, "fuzz.yaml", &m) == LDM_OK) {
        char buf[4096];
        ld_describe(&m, NULL, buf, sizeof buf);
    }
    ldm_alloc_set_cap(0);
    return 0;
}
