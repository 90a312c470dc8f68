/* builtin_trained.c - the trained built-in models: files shipped with the library (the glyph
 * model of issue #13, examples/glyphs/README.md), found at run time rather than compiled in, so
 * the library stays small. Search order for <name>.safetensors and <name>.yaml:
 *   1. $LDM_DATA_DIR;
 *   2. the installed data folder (LDM_DATADIR, set by the Makefile: $(PREFIX)/share/libldm);
 *   3. beside the binary that holds this code (the shared library, or a program linked with the
 *      static one): ../share/libldm, then ../examples/<name> (an uninstalled build in build/). */
#include "model_internal.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef LDM_DATADIR
#define LDM_DATADIR "/usr/local/share/libldm"
#endif

/* Sets weights/config to the pair in `dir` when both exist. */
static int try_dir(const char *dir, const char *name, char *weights, char *config, size_t cap)
{
    if (!dir || !*dir) return 0;
    int a = snprintf(weights, cap, "%s/%s.safetensors", dir, name);
    int b = snprintf(config, cap, "%s/%s.yaml", dir, name);
    return a > 0 && (size_t)a < cap && b > 0 && (size_t)b < cap && lw_is_file(weights) && lw_is_file(config);
}

static int try_beside_binary(const char *name, char *weights, char *config, size_t cap)
{
    Dl_info info;
    if (!dladdr((void *)&try_beside_binary, &info) || !info.dli_fname) return 0;
    char self[PATH_MAX], dir[PATH_MAX + 64];
    if (!realpath(info.dli_fname, self)) return 0;
    char *slash = strrchr(self, '/');
    if (!slash) return 0;
    *slash = 0;
    snprintf(dir, sizeof dir, "%s/../share/libldm", self);
    if (try_dir(dir, name, weights, config, cap)) return 1;
    snprintf(dir, sizeof dir, "%s/../examples/%s", self, name);
    return try_dir(dir, name, weights, config, cap);
}

int lm_is_trained_builtin(const char *name) { return name && !strcmp(name, "glyphs"); }

ldm_status lm_load_trained_builtin(const char *name, const ldm_model_params *params, ldm_model **out)
{
    char weights[PATH_MAX + 128], config[PATH_MAX + 128];
    const char *env = getenv("LDM_DATA_DIR");
    if (!try_dir(env, name, weights, config, sizeof weights) &&
        !try_dir(LDM_DATADIR, name, weights, config, sizeof weights) &&
        !try_beside_binary(name, weights, config, sizeof weights))
        return ldm_fail(LDM_ERR_NOT_FOUND, "built-in model '%s': %s.safetensors and %s.yaml not found in $LDM_DATA_DIR "
                        "(%s), %s or beside the library (make install puts them in $(PREFIX)/share/libldm)",
                        name, name, name, env ? env : "unset", LDM_DATADIR);
    ldm_model_params p;
    ldm_model_params_init(&p);
    if (params) memcpy(&p, params, params->struct_size < sizeof p ? params->struct_size : sizeof p);
    p.struct_size = sizeof p;
    p.config_path = config;
    return ldm_model_load(weights, &p, out);
}
