/* params.c - the named parameter set of a training run (tape.h): created on first request with
 * torch's initialisation rule for the owning layer, found by name afterwards (open-addressing
 * hash on the name), kept in creation order for the optimiser and the checkpoint writer. */
#include "tape.h"

#include "../sampling/sampling.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

struct ltp_params {
    uint64_t seed;
    ltp_param **items; /* creation order */
    size_t n, cap;
    int *slots; /* hash table of indices into items, -1 = empty; n_slots a power of two */
    size_t n_slots;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

ldm_status ltp_params_create(uint64_t init_seed, ltp_params **out)
{
    *out = NULL;
    ltp_params *ps = ldm_calloc(1, sizeof *ps);
    if (!ps) return ldm_alloc_failure_status();
    ps->seed = init_seed;
    *out = ps;
    return LDM_OK;
}

void ltp_params_free(ltp_params *ps)
{
    if (!ps) return;
    for (size_t i = 0; i < ps->n; i++) {
        ldm_free(ps->items[i]->data);
        ldm_free(ps->items[i]->grad);
        ldm_free(ps->items[i]);
    }
    ldm_free(ps->items);
    ldm_free(ps->slots);
    ldm_free(ps);
}

static size_t slot_of(const ltp_params *ps, const char *name)
{
    size_t mask = ps->n_slots - 1, i = (size_t)hash_str(name) & mask;
    while (ps->slots[i] >= 0 && strcmp(ps->items[ps->slots[i]]->name, name) != 0) i = (i + 1) & mask;
    return i;
}

ltp_param *ltp_params_find(const ltp_params *ps, const char *name)
{
    if (!ps || !name || !ps->n_slots) return NULL;
    int k = ps->slots[slot_of(ps, name)];
    return k >= 0 ? ps->items[k] : NULL;
}

/* Keeps the table at most half full. */
static ldm_status grow_slots(ltp_params *ps)
{
    if (ps->n_slots && 2 * (ps->n + 1) <= ps->n_slots) return LDM_OK;
    size_t ns = ps->n_slots ? 2 * ps->n_slots : 64;
    int *slots = ldm_malloc(ns * sizeof *slots);
    if (!slots) return ldm_alloc_failure_status();
    ldm_free(ps->slots);
    ps->slots = slots;
    ps->n_slots = ns;
    for (size_t i = 0; i < ns; i++) slots[i] = -1;
    for (size_t k = 0; k < ps->n; k++) slots[slot_of(ps, ps->items[k]->name)] = (int)k;
    return LDM_OK;
}

/* Uniform in [-1, 1) from a Philox block keyed by the seed and the parameter's name. */
static float uniform_pm1(uint64_t seed, uint64_t name_key, uint64_t i)
{
    uint32_t ctr[4] = {(uint32_t)i, (uint32_t)(i >> 32), (uint32_t)name_key, (uint32_t)(name_key >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)}, o[4];
    ls_philox4x32_10(ctr, key, o);
    return (float)((double)(o[0] >> 8) * (1.0 / 8388608.0) - 1.0);
}

static void init_values(const ltp_params *ps, ltp_param *p, ltp_init init, int64_t fan_in)
{
    uint64_t key = hash_str(p->name);
    double bound = 1.0 / sqrt((double)(fan_in > 0 ? fan_in : 1));
    for (size_t i = 0; i < p->n; i++) {
        switch (init) {
        case LTP_INIT_ZERO: p->data[i] = 0.0f; break;
        case LTP_INIT_ONE: p->data[i] = 1.0f; break;
        case LTP_INIT_UNIFORM: p->data[i] = (float)(bound * uniform_pm1(ps->seed, key, i)); break;
        case LTP_INIT_NORMAL: p->data[i] = (float)ls_randn_at(ps->seed, key, i); break;
        }
    }
}

static ldm_status shape_check(const char *name, int ndim, const int64_t *shape, size_t *n)
{
    if (!name || !*name || strlen(name) >= LTP_NAME_MAX)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "parameter name missing or longer than %d bytes", LTP_NAME_MAX - 1);
    if (ndim < 0 || ndim > LTP_MAX_DIMS)
        return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "parameter %s: %d dimensions (at most %d)", name, ndim,
                        LTP_MAX_DIMS);
    size_t total = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0 || shape[i] > (int64_t)1 << 31 || total > ((size_t)1 << 40) / (size_t)shape[i])
            return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "parameter %s: bad dimension %d = %lld", name, i,
                            (long long)shape[i]);
        total *= (size_t)shape[i];
    }
    *n = total;
    return LDM_OK;
}

static void shape_str(int ndim, const int64_t *shape, char *buf, size_t cap)
{
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

static ldm_status same_shape(const ltp_param *p, int ndim, const int64_t *shape)
{
    int same = p->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = p->shape[i] == shape[i];
    if (same) return LDM_OK;
    char want[96], have[96];
    shape_str(ndim, shape, want, sizeof want);
    shape_str(p->ndim, p->shape, have, sizeof have);
    return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "parameter %s: expected %s, found %s", p->name, want, have);
}

static ldm_status add_new(ltp_params *ps, const char *name, int ndim, const int64_t *shape, size_t n,
                          ltp_param **out)
{
    LDM_TRY(grow_slots(ps));
    if (ps->n == ps->cap) {
        size_t nc = ps->cap ? 2 * ps->cap : 64;
        ltp_param **items = ldm_realloc(ps->items, nc * sizeof *items);
        if (!items) return ldm_alloc_failure_status();
        ps->items = items;
        ps->cap = nc;
    }
    ltp_param *p = ldm_calloc(1, sizeof *p);
    if (!p) return ldm_alloc_failure_status();
    p->data = ldm_malloc_aligned(n * sizeof(float));
    p->grad = ldm_calloc(n, sizeof(float));
    if (!p->data || !p->grad) {
        ldm_free(p->data);
        ldm_free(p);
        return ldm_alloc_failure_status();
    }
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    for (int i = 0; i < ndim; i++) p->shape[i] = shape[i];
    p->n = n;
    p->trainable = 1;
    ps->slots[slot_of(ps, name)] = (int)ps->n;
    ps->items[ps->n++] = p;
    *out = p;
    return LDM_OK;
}

ltp_param *ltp_params_get(ltp_params *ps, const char *name, int ndim, const int64_t *shape, ltp_init init,
                          int64_t fan_in)
{
    size_t n;
    if (!ps || shape_check(name, ndim, shape, &n) != LDM_OK) return NULL;
    ltp_param *p = ltp_params_find(ps, name);
    if (p) return same_shape(p, ndim, shape) == LDM_OK ? p : NULL;
    if (add_new(ps, name, ndim, shape, n, &p) != LDM_OK) return NULL;
    init_values(ps, p, init, fan_in);
    return p;
}

ldm_status ltp_params_set(ltp_params *ps, const char *name, int ndim, const int64_t *shape, const float *data)
{
    size_t n;
    if (!ps || !data) return ldm_fail(LDM_ERR_INVALID_ARGUMENT, "ltp_params_set: NULL argument");
    LDM_TRY(shape_check(name, ndim, shape, &n));
    ltp_param *p = ltp_params_find(ps, name);
    if (p)
        LDM_TRY(same_shape(p, ndim, shape));
    else
        LDM_TRY(add_new(ps, name, ndim, shape, n, &p));
    memcpy(p->data, data, n * sizeof(float));
    return LDM_OK;
}

size_t ltp_params_count(const ltp_params *ps) { return ps ? ps->n : 0; }
ltp_param *ltp_params_at(const ltp_params *ps, size_t i) { return ps && i < ps->n ? ps->items[i] : NULL; }

ldm_status ltp_params_set_trainable(ltp_params *ps, const char *prefix, int trainable)
{
    size_t plen = prefix ? strlen(prefix) : 0;
    for (size_t i = 0; ps && i < ps->n; i++) {
        ltp_param *p = ps->items[i];
        if (plen && strncmp(p->name, prefix, plen) != 0) continue;
        p->trainable = trainable != 0;
        if (trainable && !p->grad) {
            p->grad = ldm_calloc(p->n, sizeof(float));
            if (!p->grad) return ldm_alloc_failure_status();
        } else if (!trainable) {
            ldm_free(p->grad);
            p->grad = NULL;
        }
    }
    return LDM_OK;
}

void ltp_params_zero_grad(ltp_params *ps)
{
    for (size_t i = 0; ps && i < ps->n; i++)
        if (ps->items[i]->grad) memset(ps->items[i]->grad, 0, ps->items[i]->n * sizeof(float));
}

size_t ltp_params_numel(const ltp_params *ps, int trainable_only)
{
    size_t total = 0;
    for (size_t i = 0; ps && i < ps->n; i++)
        if (!trainable_only || ps->items[i]->trainable) total += ps->items[i]->n;
    return total;
}
