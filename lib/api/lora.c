/* lora.c - LoRA files merged into a model's weights and taken out again (docs/lora.md).
 *
 * A file becomes a list of low-rank deltas (up [rows, r], down [r, cols], scale alpha / r, the
 * weight and rows they reach: lora_names.c). The merged weights are float32 copies of the
 * affected matrices, recomputed from the file's values and every LoRA in force whenever the set
 * changes, and handed to the networks through store overrides (lw_store_override): the
 * checkpoint's bytes are never written, so a weight no LoRA touches reads the file again and is
 * exactly what it was. The arithmetic is kohya-ss sd-scripts' networks/lora.py LoRAModule.merge_to
 * (W + multiplier * (up @ down) * scale; a 3x3 LoCon down with a 1x1 up is the same product on the
 * flattened kernel). Networks already created are rebuilt from the new weights: their cached
 * transforms of the old ones leave with them. */
#include "lora_internal.h"
#include "model_internal.h"

#include "../kernels/kernels.h"
#include "../models/clip_text.h"
#include "../models/sdxl_cond.h"
#include "../models/unet.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Past this many names a message says "and N more". */
#define LORA_LIST_MAX 8

typedef struct lora_delta {
    int weight;
    int64_t row0, rows, cols;
    int rank;
    float scale;
    float *up, *down;
} lora_delta;

typedef struct lm_lora {
    int id;
    char *path;
    double multiplier;
    lora_delta *d;
    int n;
    int n_unet, n_text, n_skipped;
} lm_lora;

typedef struct lm_loras {
    lora_names names;
    int names_built;
    lm_lora **items;
    int n, cap;
    int next_id;
    float **merged; /* per weight of `names`: the float32 copy in force, or NULL */
} lm_loras;

/* ---------------------------------------------------------------- reading a file */

typedef enum { ROLE_DOWN, ROLE_UP, ROLE_ALPHA, ROLE_UNSUPPORTED } key_role;

/* Key suffixes after the module name. Order matters: longer forms first. */
static const struct {
    const char *suffix;
    key_role role;
} suffixes[] = {
    {".lora_down.weight", ROLE_DOWN}, /* kohya / webui */
    {".lora_up.weight", ROLE_UP},
    {".lora_A.weight", ROLE_DOWN}, /* PEFT */
    {".lora_B.weight", ROLE_UP},
    {".lora_linear_layer.down.weight", ROLE_DOWN}, /* older diffusers text encoders */
    {".lora_linear_layer.up.weight", ROLE_UP},
    {".lora.down.weight", ROLE_DOWN}, /* older diffusers */
    {".lora.up.weight", ROLE_UP},
    {"_lora.down.weight", ROLE_DOWN}, /* diffusers attention processors */
    {"_lora.up.weight", ROLE_UP},
    {".alpha", ROLE_ALPHA},
    {".lora_mid.weight", ROLE_UNSUPPORTED}, /* LyCORIS LoCon (Tucker) */
    {".dora_scale", ROLE_UNSUPPORTED},      /* DoRA */
    {".diff", ROLE_UNSUPPORTED},            /* LyCORIS full weights */
    {".hada_w1_a", ROLE_UNSUPPORTED},       /* LoHa */
    {".lokr_w1", ROLE_UNSUPPORTED},         /* LoKr */
};

typedef struct module_keys {
    char *module;
    const lw_tensor *down, *up, *alpha;
} module_keys;

/* A diffusers attention-processor module ("<attn>.processor.to_q") names the projection
 * "<attn>.to_q" (to_out: "<attn>.to_out.0"). Rewrites in place. */
static void processor_module(char *m)
{
    char *p = strstr(m, ".processor.");
    if (!p) return;
    const char *proj = p + strlen(".processor.");
    char tail[64];
    if (strlen(proj) >= sizeof tail - 3) return;
    snprintf(tail, sizeof tail, "%s%s", proj, strcmp(proj, "to_out") == 0 ? ".0" : "");
    memmove(p + 1, tail, strlen(tail) + 1);
}

/* Splits `name` into module and role; 0 for a key of no known form. */
static int classify(const char *name, char *module, size_t cap, key_role *role)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < LDM_ARRAY_LEN(suffixes); i++) {
        size_t ls = strlen(suffixes[i].suffix);
        if (len <= ls || strcmp(name + len - ls, suffixes[i].suffix) != 0 || len - ls >= cap) continue;
        memcpy(module, name, len - ls);
        module[len - ls] = 0;
        *role = suffixes[i].role;
        if (suffixes[i].suffix[0] == '_') processor_module(module);
        return 1;
    }
    return 0;
}

typedef struct problems {
    int n;
    char text[1024];
    size_t len;
} problems;

static void problem(problems *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(problems *p, const char *fmt, ...)
{
    if (p->n++ >= LORA_LIST_MAX || p->len >= sizeof p->text - 1) return;
    va_list ap;
    va_start(ap, fmt);
    if (p->len) p->len += (size_t)snprintf(p->text + p->len, sizeof p->text - p->len, "; ");
    if (p->len < sizeof p->text - 1) {
        int w = vsnprintf(p->text + p->len, sizeof p->text - p->len, fmt, ap);
        if (w > 0) p->len += (size_t)w;
    }
    if (p->len > sizeof p->text - 1) p->len = sizeof p->text - 1;
    va_end(ap);
}

static int module_cmp(const void *a, const void *b)
{
    return strcmp(((const module_keys *)a)->module, ((const module_keys *)b)->module);
}

static void free_modules(module_keys *m, size_t n)
{
    for (size_t i = 0; i < n; i++) ldm_free(m[i].module);
    ldm_free(m);
}

/* Groups the file's keys by module (sorted); keys of no known form go to `bad`. */
static ldm_status group_keys(const lw_store *f, module_keys **out, size_t *n_out, problems *bad)
{
    size_t n = 0, count = lw_count(f);
    module_keys *m = ldm_calloc(count ? count : 1, sizeof *m);
    if (!m) return ldm_fail_context(ldm_alloc_failure_status(), "%s: ", lw_path(f));
    for (size_t i = 0; i < count; i++) {
        const lw_tensor *t = lw_at(f, i);
        char module[512];
        key_role role;
        if (!classify(t->name, module, sizeof module, &role)) {
            problem(bad, "%s: not a LoRA key", t->name);
            continue;
        }
        if (role == ROLE_UNSUPPORTED) {
            problem(bad, "%s: unsupported (LyCORIS/DoRA variant)", t->name);
            continue;
        }
        /* Keys of one module are usually adjacent in the store's sorted order (searched from the
         * last module back); processor-style names rewritten to another spelling may not be. */
        module_keys *k = NULL;
        for (size_t j = n; j-- > 0 && !k;)
            if (strcmp(m[j].module, module) == 0) k = &m[j];
        if (!k) {
            k = &m[n];
            if (!(k->module = ldm_strdup(module))) {
                free_modules(m, n);
                return ldm_alloc_failure_status();
            }
            n++;
        }
        const lw_tensor **slot = role == ROLE_DOWN ? &k->down : role == ROLE_UP ? &k->up : &k->alpha;
        if (*slot)
            problem(bad, "%s: a second %s key for module %s", t->name, role == ROLE_ALPHA ? "alpha" : "weight", module);
        else
            *slot = t;
    }
    qsort(m, n, sizeof *m, module_cmp);
    *out = m;
    *n_out = n;
    return LDM_OK;
}

static void shape_text(const lw_tensor *t, char *buf, size_t cap)
{
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->ndim && len < cap; d++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
}

/* The numbers of module `k` as a delta on the weight its name reaches; a problem of the file
 * (shapes, ranks) goes to `bad` and leaves *ok 0; hostile values are errors. */
static ldm_status read_module(const lw_store *f, const lora_names *names, const module_keys *k, lora_delta *d, int *ok,
                              problems *bad)
{
    char ds[96], us[96];
    *ok = 0;
    if (!k->down || !k->up) {
        problem(bad, "%s: %s without its %s", k->module,
                k->down ? "down"
                : k->up ? "up"
                        : "alpha",
                k->down ? "up weight" : "down weight");
        return LDM_OK;
    }
    const lora_key *key = lora_names_find(names, k->module);
    if (!key) {
        problem(bad, "%s: no such layer in this model", k->module);
        return LDM_OK;
    }
    const lora_weight *w = &names->w[key->weight];
    shape_text(k->down, ds, sizeof ds);
    shape_text(k->up, us, sizeof us);
    int64_t rank = k->down->ndim >= 2 ? k->down->shape[0] : 0, down_cols = 1;
    for (int i = 1; i < k->down->ndim; i++) down_cols *= k->down->shape[i];
    int up_ok = (k->up->ndim == 2 || (k->up->ndim == 4 && k->up->shape[2] == 1 && k->up->shape[3] == 1));
    if (!up_ok || (k->down->ndim != 2 && k->down->ndim != 4) || rank < 1 || k->up->shape[1] != rank) {
        problem(bad, "%s: down %s and up %s are not a rank-r pair", k->module, ds, us);
        return LDM_OK;
    }
    if (k->up->shape[0] != key->rows || down_cols != w->cols) {
        problem(bad, "%s: down %s, up %s do not fit %s (%lld x %lld%s)", k->module, ds, us, w->name,
                (long long)key->rows, (long long)w->cols, key->rows != w->rows ? ", a q/k/v third" : "");
        return LDM_OK;
    }
    if (rank > key->rows || rank > w->cols)
        return ldm_fail(LDM_ERR_FORMAT, "%s: %s: rank %lld exceeds the %lld x %lld weight it changes", lw_path(f),
                        k->module, (long long)rank, (long long)key->rows, (long long)w->cols);
    double alpha = (double)rank;
    if (k->alpha) {
        float *a = NULL;
        if (k->alpha->nbytes != lw_dtype_size(k->alpha->dtype))
            return ldm_fail(LDM_ERR_FORMAT, "%s: %s: alpha is not a scalar", lw_path(f), k->alpha->name);
        LDM_TRY(lw_get_f32(f, k->alpha->name, -1, NULL, &a));
        double v = a[0];
        ldm_free(a);
        if (v != 0) alpha = v; /* 0: the rank, as networks/lora.py LoRAModule.__init__ */
    }
    d->weight = key->weight;
    d->row0 = key->row0;
    d->rows = key->rows;
    d->cols = w->cols;
    d->rank = (int)rank;
    d->scale = (float)(alpha / (double)rank);
    LDM_TRY(lw_get_f32(f, k->down->name, -1, NULL, &d->down));
    ldm_status st = lw_get_f32(f, k->up->name, -1, NULL, &d->up);
    if (st != LDM_OK) {
        ldm_free(d->down);
        d->down = NULL;
        return st;
    }
    *ok = 1;
    return LDM_OK;
}

static void free_lora(lm_lora *l)
{
    if (!l) return;
    for (int i = 0; i < l->n; i++) {
        ldm_free(l->d[i].up);
        ldm_free(l->d[i].down);
    }
    ldm_free(l->d);
    ldm_free(l->path);
    ldm_free(l);
}

static ldm_status read_lora(ldm_model *m, const lw_store *f, const lora_names *names, unsigned flags, lm_lora *l)
{
    module_keys *mods = NULL;
    size_t n_mods = 0;
    problems bad = {0};
    LDM_TRY(group_keys(f, &mods, &n_mods, &bad));
    l->d = ldm_calloc(n_mods ? n_mods : 1, sizeof *l->d);
    ldm_status st = l->d ? LDM_OK : ldm_alloc_failure_status();
    for (size_t i = 0; st == LDM_OK && i < n_mods; i++) {
        int ok;
        st = read_module(f, names, &mods[i], &l->d[l->n], &ok, &bad);
        if (st == LDM_OK && ok) {
            if (names->w[l->d[l->n].weight].component == LORA_UNET)
                l->n_unet++;
            else
                l->n_text++;
            l->n++;
        }
    }
    free_modules(mods, n_mods);
    if (st != LDM_OK) return ldm_fail_context(st, "LoRA %s: ", lw_path(f));
    const char *more_fmt = bad.n > LORA_LIST_MAX ? " (and %d more)" : "%.0d";
    char more[48];
    snprintf(more, sizeof more, more_fmt, bad.n - LORA_LIST_MAX);
    if (bad.n && !(flags & LDM_LORA_ALLOW_UNMATCHED))
        return ldm_fail(LDM_ERR_FORMAT, "LoRA %s: %d key(s) cannot be used: %s%s", lw_path(f), bad.n, bad.text, more);
    if (bad.n) lm_log(m, LDM_LOG_WARN, "LoRA %s: %d key(s) skipped: %s%s", lw_path(f), bad.n, bad.text, more);
    l->n_skipped = bad.n;
    if (l->n == 0) return ldm_fail(LDM_ERR_FORMAT, "LoRA %s: no LoRA layer for this model in the file", lw_path(f));
    return LDM_OK;
}

/* ---------------------------------------------------------------- merging */

/* weight += multiplier * (up @ down) * scale on the delta's rows, in that order of operations. */
static ldm_status add_delta(ldm_model *m, const lora_delta *d, double multiplier, float *weight, float *product)
{
    lk_gemm(&m->ctx, 0, 0, (int)d->rows, (int)d->cols, d->rank, 1.0f, d->up, d->rank, d->down, (int)d->cols, 0.0f,
            product, (int)d->cols);
    const float mul = (float)multiplier, scale = d->scale;
    float *w = weight + d->row0 * d->cols;
    const size_t n = (size_t)(d->rows * d->cols);
    for (size_t i = 0; i < n; i++) w[i] = w[i] + mul * product[i] * scale;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(w[i]))
            return ldm_fail(LDM_ERR_NUMERIC, "LoRA merge: %s becomes non-finite (element %zu)",
                            m->loras->names.w[d->weight].name, (size_t)d->row0 * (size_t)d->cols + i);
    return LDM_OK;
}

/* The float32 copy of weight `wi` with every delta of `items` on it (NULL in *out when none). */
static ldm_status merge_weight(ldm_model *m, lm_lora *const *items, int n_items, int wi, float **out)
{
    const lora_weight *w = &m->loras->names.w[wi];
    *out = NULL;
    int touched = 0;
    for (int i = 0; i < n_items && !touched; i++)
        for (int j = 0; j < items[i]->n && !touched; j++) touched = items[i]->d[j].weight == wi;
    if (!touched) return LDM_OK;
    size_t numel = (size_t)(w->rows * w->cols), bytes;
    if (ldm_mul_size(numel, sizeof(float), &bytes)) return ldm_fail(LDM_ERR_LIMIT, "LoRA merge: %s too large", w->name);
    float *buf = ldm_malloc_aligned(bytes), *product = ldm_malloc_aligned(bytes);
    ldm_status st = buf && product ? LDM_OK : ldm_fail_context(ldm_alloc_failure_status(), "LoRA merge: %s: ", w->name);
    if (st == LDM_OK) st = lw_tensor_to_f32(m->store, lw_find_stored(m->store, w->name), buf);
    for (int i = 0; st == LDM_OK && i < n_items; i++)
        for (int j = 0; st == LDM_OK && j < items[i]->n; j++)
            if (items[i]->d[j].weight == wi) st = add_delta(m, &items[i]->d[j], items[i]->multiplier, buf, product);
    ldm_free(product);
    if (st != LDM_OK) {
        ldm_free(buf);
        return st;
    }
    *out = buf;
    return LDM_OK;
}

static void point_store(ldm_model *m, float **bufs)
{
    const lora_names *nm = &m->loras->names;
    for (size_t i = 0; i < nm->n_w; i++) {
        if (bufs[i])
            lw_store_override(m->store, nm->w[i].name, bufs[i]); /* cannot fail: known name */
        else
            lw_store_restore(m->store, nm->w[i].name);
    }
}

/* New networks for the components that exist and read a changed weight; swapped in only when all
 * were built. */
static ldm_status rebuild(ldm_model *m, int unet, int text)
{
    struct lunet *un = NULL;
    struct lclip *cl = NULL;
    struct lsdxl_cond *xl = NULL;
    int has_clip = m->cond && m->cond->clip, has_sdxl = m->cond && m->cond->sdxl;
    if (unet && m->unet)
        LDM_TRY(ldm_fail_context(lunet_create(&m->desc.unet, m->store, "model.diffusion_model.", m->use_ema, &un),
                                 "%s: UNet with LoRA: ", m->path));
    ldm_status st = LDM_OK;
    if (text && has_clip) st = lclip_create(&m->desc.cond, m->store, "cond_stage_model.", &cl);
    if (text && has_sdxl && st == LDM_OK) st = lsdxl_cond_create(&m->desc.sgm, m->store, &xl); /* SDXL's towers */
    if (st != LDM_OK) {
        lunet_free(un);
        lclip_free(cl);
        return ldm_fail_context(st, "%s: text encoder with LoRA: ", m->path);
    }
    if (un) {
        lunet_free(m->unet->net);
        m->unet->net = un;
    }
    if (cl) {
        lclip_free(m->cond->clip);
        m->cond->clip = cl;
    }
    if (xl) {
        lsdxl_cond_free(m->cond->sdxl);
        m->cond->sdxl = xl;
    }
    return LDM_OK;
}

/* Makes `items` the LoRAs in force: all merged copies are made first, then the store and the
 * networks switch; on any failure the model stays as it was. Takes ownership of nothing. */
static ldm_status apply_set(ldm_model *m, lm_lora *const *items, int n_items)
{
    lm_loras *L = m->loras;
    size_t nw = L->names.n_w;
    float **bufs = ldm_calloc(nw ? nw : 1, sizeof *bufs);
    if (!bufs) return ldm_alloc_failure_status();
    ldm_status st = LDM_OK;
    int changed[2] = {0, 0};
    for (size_t i = 0; st == LDM_OK && i < nw; i++) {
        st = merge_weight(m, items, n_items, (int)i, &bufs[i]);
        if (bufs[i] || (L->merged && L->merged[i])) changed[L->names.w[i].component] = 1;
    }
    if (st == LDM_OK) {
        point_store(m, bufs);
        st = rebuild(m, changed[LORA_UNET], changed[LORA_TEXT]);
        if (st != LDM_OK) {
            float **old = L->merged;
            if (old)
                point_store(m, old);
            else
                for (size_t i = 0; i < nw; i++) lw_store_restore(m->store, L->names.w[i].name);
        }
    }
    float **drop = st == LDM_OK ? L->merged : bufs;
    if (st == LDM_OK) L->merged = bufs;
    for (size_t i = 0; drop && i < nw; i++) ldm_free(drop[i]);
    ldm_free(drop);
    return st;
}

/* ---------------------------------------------------------------- public API */

void lm_loras_free(ldm_model *m)
{
    lm_loras *L = m ? m->loras : NULL;
    if (!L) return;
    for (int i = 0; i < L->n; i++) free_lora(L->items[i]);
    ldm_free(L->items);
    for (size_t i = 0; L->merged && i < L->names.n_w; i++) {
        if (L->merged[i]) lw_store_restore(m->store, L->names.w[i].name);
        ldm_free(L->merged[i]);
    }
    ldm_free(L->merged);
    lora_names_free(&L->names);
    ldm_free(L);
    m->loras = NULL;
}

static ldm_status loras_of(ldm_model *m, lm_loras **out)
{
    if (!m->loras) {
        if (!(m->loras = ldm_calloc(1, sizeof *m->loras))) return ldm_alloc_failure_status();
        m->loras->next_id = 1;
    }
    lm_loras *L = m->loras;
    if (!L->names_built) {
        LDM_TRY(
            ldm_fail_context(lora_names_build(m->store, &m->desc, m->use_ema, &L->names), "%s: LoRA names: ", m->path));
        L->names_built = 1;
    }
    *out = L;
    return LDM_OK;
}

static int index_of(const lm_loras *L, int id)
{
    for (int i = 0; L && i < L->n; i++)
        if (L->items[i]->id == id) return i;
    return -1;
}

ldm_status ldm_model_lora_add(ldm_model *model, const char *path, double multiplier, unsigned flags, int *id)
{
    if (id) *id = 0;
    if (!path) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_lora_add: path is NULL");
    if (!isfinite(multiplier))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_lora_add: multiplier is not finite");
    if (flags & ~LDM_LORA_ALLOW_UNMATCHED)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_lora_add: unknown flags 0x%x", flags);
    LM_BEGIN(model, "ldm_model_lora_add");
    lm_loras *L = NULL;
    LDM_TRY(loras_of(model, &L));
    if (L->n == L->cap) {
        int cap = L->cap ? 2 * L->cap : 4;
        lm_lora **items = ldm_realloc(L->items, sizeof *items * (size_t)cap);
        if (!items) return ldm_alloc_failure_status();
        L->items = items;
        L->cap = cap;
    }
    lw_store *f = NULL;
    LDM_TRY(lw_open(path, ldm_alloc_get_cap(), &f));
    lm_lora *l = ldm_calloc(1, sizeof *l);
    ldm_status st = l && (l->path = ldm_strdup(path)) ? LDM_OK : ldm_alloc_failure_status();
    if (st == LDM_OK) {
        l->multiplier = multiplier;
        st = read_lora(model, f, &L->names, flags, l);
    }
    lw_close(f);
    if (st == LDM_OK) {
        L->items[L->n] = l;
        st = apply_set(model, L->items, L->n + 1);
    }
    if (st != LDM_OK) {
        free_lora(l);
        return st;
    }
    l->id = L->next_id++;
    L->n++;
    if (id) *id = l->id;
    lm_log(model, LDM_LOG_INFO, "LoRA %s (x%g): %d UNet and %d text-encoder weights", path, multiplier, l->n_unet,
           l->n_text);
    return LDM_OK;
}

ldm_status ldm_model_lora_remove(ldm_model *model, int id)
{
    LM_BEGIN(model, "ldm_model_lora_remove");
    lm_loras *L = model->loras;
    int at = index_of(L, id);
    if (at < 0) return ldm_fail(LDM_ERR_NOT_FOUND, "ldm_model_lora_remove: no LoRA with id %d", id);
    lm_lora *l = L->items[at];
    memmove(&L->items[at], &L->items[at + 1], sizeof *L->items * (size_t)(L->n - at - 1));
    ldm_status st = apply_set(model, L->items, L->n - 1);
    if (st != LDM_OK) {
        memmove(&L->items[at + 1], &L->items[at], sizeof *L->items * (size_t)(L->n - at - 1));
        L->items[at] = l;
        return st;
    }
    L->n--;
    free_lora(l);
    return LDM_OK;
}

ldm_status ldm_model_lora_set_multiplier(ldm_model *model, int id, double multiplier)
{
    if (!isfinite(multiplier))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_lora_set_multiplier: multiplier is not finite");
    LM_BEGIN(model, "ldm_model_lora_set_multiplier");
    lm_loras *L = model->loras;
    int at = index_of(L, id);
    if (at < 0) return ldm_fail(LDM_ERR_NOT_FOUND, "ldm_model_lora_set_multiplier: no LoRA with id %d", id);
    double old = L->items[at]->multiplier;
    L->items[at]->multiplier = multiplier;
    ldm_status st = apply_set(model, L->items, L->n);
    if (st != LDM_OK) L->items[at]->multiplier = old;
    return st;
}

ldm_status ldm_model_lora_clear(ldm_model *model)
{
    LM_BEGIN(model, "ldm_model_lora_clear");
    lm_loras *L = model->loras;
    if (!L || L->n == 0) return LDM_OK;
    LDM_TRY(apply_set(model, L->items, 0));
    for (int i = 0; i < L->n; i++) free_lora(L->items[i]);
    L->n = 0;
    return LDM_OK;
}

int ldm_model_lora_count(const ldm_model *model)
{
    return model && model->loras ? model->loras->n : 0;
}

ldm_status ldm_model_lora_get(const ldm_model *model, int index, ldm_lora_info *info)
{
    if (!model || !info) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_lora_get: NULL argument");
    if (info->struct_size < offsetof(ldm_lora_info, n_skipped_keys) + sizeof(int))
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ldm_model_lora_get: info->struct_size %zu is too small",
                        info->struct_size);
    if (index < 0 || index >= ldm_model_lora_count(model))
        return ldm_fail(LDM_ERR_NOT_FOUND, "ldm_model_lora_get: index %d of %d", index, ldm_model_lora_count(model));
    const lm_lora *l = model->loras->items[index];
    info->id = l->id;
    info->path = l->path;
    info->multiplier = l->multiplier;
    info->n_unet_layers = l->n_unet;
    info->n_text_layers = l->n_text;
    info->n_skipped_keys = l->n_skipped;
    return LDM_OK;
}
