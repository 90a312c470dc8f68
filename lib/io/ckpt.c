/* ckpt.c - PyTorch checkpoints written by torch.save (>= 1.6 zip format):
 *   <archive>/data.pkl      the pickled object (a dict holding the state dict)
 *   <archive>/data/<key>    the raw bytes of each storage, named by its persistent-id key
 * The pickle runs in the restricted VM (pickle.c); every tensor it describes is checked against
 * its storage (contiguous row-major, in bounds) and added to the store pointing at the storage
 * bytes (in the mapping for stored members, in an inflated block for deflated ones). */
#include "weights.h"

#include "pickle.h"
#include "zip.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

typedef struct {
    const char *path;
    lw_store *store;
    lw_zip *zip;
    char archive[256];           /* "<archive>" prefix of every member */
    const void **storage_data;   /* per zip entry: its bytes once read, else NULL */
} ckpt_ctx;

/* The pickle is the only member named "<archive>/data.pkl" with a one-level prefix. */
static ldm_status find_pickle(ckpt_ctx *c, const lw_zip_entry **out)
{
    *out = NULL;
    for (size_t i = 0; i < lw_zip_count(c->zip); i++) {
        const char *name = lw_zip_at(c->zip, i)->name;
        const char *slash = strchr(name, '/');
        if (!slash || strcmp(slash, "/data.pkl") != 0) continue;
        if (*out) return ldm_fail(LDM_ERR_FORMAT, "%s: more than one data.pkl in the archive", c->path);
        size_t n = (size_t)(slash - name);
        if (n >= sizeof c->archive) return ldm_fail(LDM_ERR_FORMAT, "%s: archive name too long", c->path);
        memcpy(c->archive, name, n);
        c->archive[n] = '\0';
        *out = lw_zip_at(c->zip, i);
    }
    if (!*out) return ldm_fail(LDM_ERR_FORMAT, "%s: zip archive has no data.pkl (not a PyTorch checkpoint)", c->path);
    return LDM_OK;
}

static ldm_status check_byteorder(ckpt_ctx *c)
{
    char name[300];
    snprintf(name, sizeof name, "%s/byteorder", c->archive);
    const lw_zip_entry *e = lw_zip_find(c->zip, name);
    if (!e) return LDM_OK; /* older torch versions: always little-endian */
    const void *data = NULL;
    void *owned = NULL;
    LDM_TRY(lw_zip_read(c->zip, e, &data, &owned));
    int little = e->size == 6 && memcmp(data, "little", 6) == 0;
    ldm_free(owned);
    if (!little) return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: checkpoint was saved big-endian", c->path);
    return LDM_OK;
}

/* The bytes of storage `key`, read (and inflated, CRC-checked) once per member. */
static ldm_status storage_bytes(ckpt_ctx *c, const char *tensor, const lw_py *storage, const lw_zip_entry **entry,
                                const void **data)
{
    char name[600];
    int n = snprintf(name, sizeof name, "%s/data/%.*s", c->archive, (int)LDM_MIN(storage->len, 300), storage->s);
    const lw_zip_entry *e = (n > 0 && (size_t)n < sizeof name && storage->len <= 300) ? lw_zip_find(c->zip, name) : NULL;
    if (!e) return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: storage member %s is missing", c->path, tensor, name);
    size_t idx = (size_t)(e - lw_zip_at(c->zip, 0));
    if (!c->storage_data[idx]) {
        void *owned;
        LDM_TRY(lw_zip_read(c->zip, e, &c->storage_data[idx], &owned));
        if (owned) LDM_TRY(lw_store_keep(c->store, owned)); /* the store frees it, even on failure */
    }
    *entry = e;
    *data = c->storage_data[idx];
    return LDM_OK;
}

/* Element count of a contiguous row-major tensor, or an error naming what is wrong. */
static ldm_status contiguous_numel(const ckpt_ctx *c, const char *tensor, const lw_py_tensor *t, size_t *numel)
{
    size_t n = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        /* A dimension of size 1 may carry any stride; torch does not normalise them. */
        if (t->size[i] != 1 && (uint64_t)t->stride[i] != n)
            return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: tensor %s is not contiguous (stride %lld in dimension %d)",
                            c->path, tensor, (long long)t->stride[i], i);
        if ((uint64_t)t->size[i] > SIZE_MAX || ldm_mul_size(n, (size_t)t->size[i], &n))
            return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: element count overflows", c->path, tensor);
    }
    *numel = n;
    return LDM_OK;
}

static ldm_status add_tensor(ckpt_ctx *c, const char *name, const lw_py_tensor *t)
{
    const lw_py *storage = t->storage;
    size_t el = lw_dtype_size(storage->dtype), numel = 0, nbytes = 0, end = 0;
    LDM_TRY(contiguous_numel(c, name, t, &numel));
    const lw_zip_entry *e = NULL;
    const void *data = NULL;
    LDM_TRY(storage_bytes(c, name, storage, &e, &data));
    size_t capacity = (size_t)e->size / el; /* elements actually present in the member */
    if ((uint64_t)storage->i > capacity)
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: storage declares %lld elements, member %s holds %zu",
                        c->path, name, (long long)storage->i, e->name, capacity);
    if (ldm_mul_size(numel, el, &nbytes) || ldm_add_size((size_t)t->offset, numel, &end) ||
        (numel && end > (size_t)storage->i))
        return ldm_fail(LDM_ERR_FORMAT, "%s: tensor %s: elements [%lld, +%zu) exceed its storage of %lld", c->path,
                        name, (long long)t->offset, numel, (long long)storage->i);
    const unsigned char *base = data;
    return lw_store_add(c->store, name, storage->dtype, t->ndim, t->size, numel ? base + (size_t)t->offset * el : base,
                        nbytes);
}

/* Adds every string-keyed tensor of the state dict; other entries (ints, nested dicts) are
 * skipped. */
static ldm_status add_state_dict(ckpt_ctx *c, const lw_py *sd)
{
    for (size_t i = 0; i + 1 < sd->count; i += 2) {
        const lw_py *key = sd->items[i], *value = sd->items[i + 1];
        if (key->type != LW_PY_STR || value->type != LW_PY_TENSOR) continue;
        if (memchr(key->s, 0, key->len) || key->len > 4096)
            return ldm_fail(LDM_ERR_FORMAT, "%s: invalid tensor name in the state dict", c->path);
        char *name = ldm_malloc(key->len + 1);
        if (!name) return ldm_fail_context(lw_alloc_status(key->len + 1), "%s: ", c->path);
        memcpy(name, key->s, key->len);
        name[key->len] = '\0';
        ldm_status st = add_tensor(c, name, value->tensor);
        ldm_free(name);
        LDM_TRY(st);
    }
    return LDM_OK;
}

/* Lightning and LDM checkpoints nest the weights under "state_dict"; a bare torch.save of
 * model.state_dict() is the dict itself. */
static ldm_status load_pickle(ckpt_ctx *c)
{
    const lw_zip_entry *pkl = NULL;
    LDM_TRY(find_pickle(c, &pkl));
    LDM_TRY(check_byteorder(c));
    const void *bytes = NULL;
    void *owned = NULL;
    LDM_TRY(lw_zip_read(c->zip, pkl, &bytes, &owned));
    lw_pickle *vm = NULL;
    const lw_py *root = NULL;
    ldm_status st = lw_pickle_run(c->path, bytes, (size_t)pkl->size, &vm, &root);
    if (st == LDM_OK) {
        const lw_py *sd = lw_py_dict_get(root, "state_dict");
        if (!sd || sd->type != LW_PY_DICT) sd = root;
        if (sd->type != LW_PY_DICT) st = ldm_fail(LDM_ERR_FORMAT, "%s: checkpoint does not hold a dict", c->path);
        else st = add_state_dict(c, sd);
        lw_pickle_free(vm);
    }
    ldm_free(owned);
    if (st == LDM_OK && lw_count(c->store) == 0)
        st = ldm_fail(LDM_ERR_NOT_FOUND, "%s: checkpoint holds no tensors", c->path);
    return st;
}

ldm_status lw_open_ckpt(const char *path, lw_store **out)
{
    *out = NULL;
    void *map = NULL;
    size_t size = 0;
    LDM_TRY(lw_map_file(path, 22, "a zip archive", &map, &size));
    ckpt_ctx c;
    memset(&c, 0, sizeof c);
    c.path = path;
    ldm_status st = lw_store_create(path, &c.store);
    if (st != LDM_OK) {
        munmap(map, size);
        return ldm_fail_context(st, "%s: ", path);
    }
    lw_store_set_mapping(c.store, map, size);
    st = lw_zip_open(path, map, size, &c.zip);
    if (st == LDM_OK) {
        c.storage_data = ldm_calloc(lw_zip_count(c.zip) ? lw_zip_count(c.zip) : 1, sizeof *c.storage_data);
        if (!c.storage_data) st = ldm_fail_context(lw_alloc_status(lw_zip_count(c.zip) * sizeof *c.storage_data), "%s: ", path);
    }
    if (st == LDM_OK) st = load_pickle(&c);
    if (st == LDM_OK) st = lw_store_seal(c.store);
    ldm_free(c.storage_data);
    lw_zip_close(c.zip);
    if (st != LDM_OK) {
        lw_close(c.store);
        return st;
    }
    *out = c.store;
    return LDM_OK;
}
