/* diffusers_load.c - ldm_model_load of a diffusers folder (lib/models/diffusers.h): the store and
 * description, the folder's model_index.json as the model's config path, and its own CLIP
 * tokenizer (tokenizer/merges.txt: the merges of bpe_simple_vocab_16e6.txt under the same
 * "#version" header line, which the BPE loader reads as they are) unless a vocabulary was given. */
#include "model_internal.h"

#include "../models/config.h"
#include "../models/diffusers.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* folder/`rel` (folder = path, or the folder of a model_index.json path), heap-allocated. */
static char *in_folder(const char *path, const char *rel)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t n = strcmp(base, "model_index.json") ? strlen(path) : (size_t)(base - path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t cap = n + strlen(rel) + 3;
    char *out = ldm_malloc(cap);
    if (out) snprintf(out, cap, "%.*s%s%s", (int)n, n ? path : ".", n && path[n - 1] == '/' ? "" : "/", rel);
    return out;
}

ldm_status lm_open_diffusers(ldm_model *m, const char *path, const char *config_path)
{
    LDM_TRY(ld_diffusers_open(path, ldm_alloc_get_cap(), &m->store, &m->desc));
    if (config_path) return LDM_OK; /* the caller's YAML describes the model instead */
    LDM_TRY(ld_config_complete(&m->desc, m->store));
    if (!(m->config_path = in_folder(path, "model_index.json"))) return ldm_alloc_failure_status();
    if (m->vocab_path || (m->desc.cond.kind != LD_COND_CLIP && m->desc.cond.kind != LD_COND_OPENCLIP)) return LDM_OK;
    char *merges = in_folder(path, "tokenizer/merges.txt");
    struct stat st;
    if (!merges) return ldm_alloc_failure_status();
    if (stat(merges, &st) == 0 && S_ISREG(st.st_mode)) {
        m->vocab_path = merges;
        lm_log(m, LDM_LOG_INFO, "using the folder's tokenizer %s", merges);
    } else {
        ldm_free(merges);
    }
    return LDM_OK;
}
