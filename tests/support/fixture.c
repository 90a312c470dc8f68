/* fixture.c - reading fixture directories: case.json, io tensors, tolerances, comparison. */
#include "fixture.h"

#include "core/tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void fx_env_put(fx_env *e, const char *name, ldm_tensor *t)
{
    if (!t) return;
    for (size_t i = 0; i < e->count; i++) {
        if (strcmp(e->names[i], name) == 0) {
            if (e->tensors[i] != t) ldm_tensor_free(e->tensors[i]);
            e->tensors[i] = t;
            return;
        }
    }
    if (e->count == e->cap) {
        e->cap = e->cap ? 2 * e->cap : 16;
        e->names = realloc(e->names, e->cap * sizeof *e->names);
        e->tensors = realloc(e->tensors, e->cap * sizeof *e->tensors);
        if (!e->names || !e->tensors) abort(); /* test code: out of memory is fatal */
    }
    e->names[e->count] = strdup(name);
    e->tensors[e->count++] = t;
}

const ldm_tensor *fx_env_get(const fx_env *e, const char *name)
{
    for (size_t i = 0; i < e->count; i++)
        if (strcmp(e->names[i], name) == 0) return e->tensors[i];
    return NULL;
}

void fx_env_clear(fx_env *e)
{
    for (size_t i = 0; i < e->count; i++) {
        free(e->names[i]);
        ldm_tensor_free(e->tensors[i]);
    }
    free(e->names);
    free(e->tensors);
    memset(e, 0, sizeof *e);
}

const char *fx_shared_dir(void)
{
    const char *s = getenv("LDM_SHARED");
    return (s && *s) ? s : "../shared";
}

int fx_threads(void)
{
    const char *s = getenv("LDM_THREADS");
    int n = s ? atoi(s) : 2;
    return n > 0 ? n : 2;
}

int fx_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

void fx_strip_slash(char *dir)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') dir[--n] = '\0';
}

ldm_status fx_load_case(const char *dir, lj_value **out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/case.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return ldm_fail(LDM_ERR_IO, "%s: cannot open", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    if (!buf || got != (size_t)n) {
        free(buf);
        return ldm_fail(LDM_ERR_IO, "%s: read failed", path);
    }
    *out = lj_parse(buf, (size_t)n);
    free(buf);
    if (!*out) return ldm_fail_context(LDM_ERR_FORMAT, "%s: ", path);
    return LDM_OK;
}

int fx_pick_weights(const char *dir, const lj_value *cas, char *path, size_t cap)
{
    const lj_value *w = lj_get(cas, "weights");
    if (!w || w->type != LJ_ARRAY || w->count == 0) return 0;
    snprintf(path, cap, "%s/model.safetensors", dir);
    if (fx_file_exists(path)) return 1;
    for (size_t i = 0; i < w->count; i++) {
        snprintf(path, cap, "%s/%s", dir, lj_string(w->items[i], ""));
        if (fx_file_exists(path)) return 1;
        /* a diffusers folder (tests/fixtures/diffusers_*): loaded through the folder's path */
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 1;
    }
    return 0;
}

ldm_tensor *fx_io_tensor(const lw_store *io, const char *name)
{
    const lw_tensor *w = lw_find(io, name);
    if (!w) return NULL;
    ldm_tensor *t = NULL;
    if (w->dtype == LW_I64) {
        if (ldm_tensor_create(LDM_I64, w->ndim, w->shape, &t) != LDM_OK) return NULL;
        memcpy(t->data, w->data, w->nbytes);
        return t;
    }
    float *data = NULL;
    if (lw_get_f32(io, name, -1, NULL, &data) != LDM_OK) return NULL;
    if (ldm_tensor_create(LDM_F32, w->ndim, w->shape, &t) == LDM_OK)
        memcpy(t->data, data, (size_t)lt_numel(t) * sizeof(float));
    ldm_free(data);
    return t;
}

fx_tolerance fx_tolerance_for(const lj_value *cas, const char *name)
{
    fx_tolerance tol = {lj_number(lj_get(cas, "atol"), 1e-4), lj_number(lj_get(cas, "rtol"), 1e-4), 0};
    const lj_value *t = lj_get(lj_get(cas, "tolerances"), name);
    if (t) {
        tol.atol = lj_number(lj_get(t, "atol"), tol.atol);
        tol.rtol = lj_number(lj_get(t, "rtol"), tol.rtol);
        const lj_value *ex = lj_get(t, "exact");
        if (ex && ex->type == LJ_BOOL) tol.exact = ex->boolean;
    }
    return tol;
}

static double element(const ldm_tensor *t, int64_t i)
{
    return t->dtype == LDM_I64 ? (double)lt_i64(t)[i] : (double)lt_f32(t)[i];
}

int fx_compare(const ldm_tensor *got, const ldm_tensor *ref, fx_tolerance tol, fx_compare_result *res)
{
    char a[96], b[96];
    memset(res, 0, sizeof *res);
    if (!got) {
        snprintf(res->note, sizeof res->note, "no result");
        return 0;
    }
    int same_shape = got->ndim == ref->ndim;
    for (int i = 0; same_shape && i < ref->ndim; i++) same_shape = got->shape[i] == ref->shape[i];
    if (!same_shape) {
        snprintf(res->note, sizeof res->note, "shape %s, expected %s", lt_shape_str(got, a, sizeof a),
                 lt_shape_str(ref, b, sizeof b));
        return 0;
    }
    int exact = tol.exact || ref->dtype == LDM_I64;
    int64_t n = lt_numel(ref), first_bad = -1;
    for (int64_t i = 0; i < n; i++) {
        double g = element(got, i), r = element(ref, i), d = fabs(g - r);
        if (!(d <= res->max_abs)) res->max_abs = isnan(d) ? INFINITY : d;
        if (fabs(r) > 0 && d / fabs(r) > res->max_rel) res->max_rel = d / fabs(r);
        int ok = exact ? g == r : d <= tol.atol + tol.rtol * fabs(r);
        if (!ok && first_bad < 0) first_bad = i;
    }
    if (first_bad >= 0)
        snprintf(res->note, sizeof res->note, "first mismatch at flat index %lld: got %.9g, expected %.9g",
                 (long long)first_bad, element(got, first_bad), element(ref, first_bad));
    return first_bad < 0;
}

const char *fx_prompt(const lj_value *v)
{
    if (!v || v->type != LJ_STRING) return "";
    lj_value *w = (lj_value *)v; /* our own parse tree */
    size_t k = 0;
    for (size_t i = 0; i < w->string_len; i++)
        if (w->string[i] != '\0') w->string[k++] = w->string[i];
    w->string[k] = '\0';
    w->string_len = k;
    return w->string;
}
