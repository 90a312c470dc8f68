/* pickle.c - the restricted pickle VM (see pickle.h). Every value lives in the VM's arena and is
 * freed with it, so shared references (memo gets, DUP) and even cycles need no ownership rules. */
#include "pickle.h"

#include <string.h>

/* Bounds. A Stable Diffusion checkpoint with EMA and optimizer state needs ~1e5 objects, a
 * handful of marks and a memo of ~1e4 entries; these leave ample room. */
#define PK_MAX_OBJECTS ((size_t)1 << 21)
#define PK_MAX_ITEMS ((size_t)1 << 24) /* container slots summed over all containers */
#define PK_MAX_STACK ((size_t)1 << 20)
#define PK_MAX_MARKS ((size_t)4096)
#define PK_MAX_MEMO ((size_t)1 << 22)
#define PK_MAX_GLOBAL_NAME 256

enum { GK_ORDERED_DICT = 1, GK_REBUILD_TENSOR_V2, GK_REBUILD_PARAMETER, GK_STORAGE, GK_INERT };

/* The allow-list. GK_INERT entries are classes that PyTorch Lightning checkpoints carry beside
 * the state dict (callbacks, numpy scalars for best_model_score); they are never called, the
 * VM merely stands an opaque placeholder in for their instances. */
static const struct {
    const char *module, *name;
    int kind;
    lw_dtype dtype;
} allowed_globals[] = {
    {"collections", "OrderedDict", GK_ORDERED_DICT, LW_F32},
    {"typing", "OrderedDict", GK_ORDERED_DICT, LW_F32},
    {"torch._utils", "_rebuild_tensor_v2", GK_REBUILD_TENSOR_V2, LW_F32},
    {"torch._utils", "_rebuild_parameter", GK_REBUILD_PARAMETER, LW_F32},
    {"torch._utils", "_rebuild_parameter_with_state", GK_REBUILD_PARAMETER, LW_F32},
    {"torch", "FloatStorage", GK_STORAGE, LW_F32},
    {"torch", "HalfStorage", GK_STORAGE, LW_F16},
    {"torch", "BFloat16Storage", GK_STORAGE, LW_BF16},
    {"torch", "DoubleStorage", GK_STORAGE, LW_F64},
    {"torch", "LongStorage", GK_STORAGE, LW_I64},
    {"torch", "IntStorage", GK_STORAGE, LW_I32},
    {"torch", "ShortStorage", GK_STORAGE, LW_I16},
    {"torch", "CharStorage", GK_STORAGE, LW_I8},
    {"torch", "ByteStorage", GK_STORAGE, LW_U8},
    {"torch", "BoolStorage", GK_STORAGE, LW_BOOL},
    {"torch", "UntypedStorage", GK_STORAGE, LW_U8},
    {"pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", GK_INERT, LW_F32},
    {"lightning.pytorch.callbacks.model_checkpoint", "ModelCheckpoint", GK_INERT, LW_F32},
    {"numpy.core.multiarray", "scalar", GK_INERT, LW_F32},
    {"numpy._core.multiarray", "scalar", GK_INERT, LW_F32},
    {"numpy.core.multiarray", "_reconstruct", GK_INERT, LW_F32},
    {"numpy", "ndarray", GK_INERT, LW_F32},
    {"numpy", "dtype", GK_INERT, LW_F32},
    {"_codecs", "encode", GK_INERT, LW_F32},
    {"builtins", "set", GK_INERT, LW_F32},
    {"__builtin__", "set", GK_INERT, LW_F32},
    {"torch", "Size", GK_INERT, LW_F32},
};

struct lw_pickle {
    const char *what;
    const unsigned char *start, *p, *end;
    lw_py **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t n_marks, marks_cap;
    lw_py **memo;
    size_t memo_cap, memo_len; /* memo_len = number of filled slots (MEMOIZE's next index) */
    lw_py **objs;
    size_t n_objs, objs_cap;
    size_t total_items;
    ldm_status alloc_status; /* why the last new_obj failed */
};

/* ---------------------------------------------------------------- arena and stacks */

static ldm_status fail_at(lw_pickle *vm, ldm_status st, const char *what)
{
    return ldm_fail(st, "%s: pickle: %s at byte %zu", vm->what, what, (size_t)(vm->p - vm->start));
}

/* Grows *arr (of element size `elem`) to hold at least `need` elements, doubling. */
static ldm_status grow(lw_pickle *vm, void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return LDM_OK;
    size_t n = *cap ? *cap : 16;
    while (n < need) n *= 2;
    size_t bytes;
    if (ldm_mul_size(n, elem, &bytes)) return fail_at(vm, LDM_ERR_LIMIT, "size overflow");
    void *p = ldm_realloc(*arr, bytes);
    if (!p) return ldm_fail_context(lw_alloc_status(bytes), "%s: pickle: ", vm->what);
    *arr = p;
    *cap = n;
    return LDM_OK;
}

static lw_py *new_obj(lw_pickle *vm, lw_py_type type)
{
    if (vm->n_objs >= PK_MAX_OBJECTS) {
        vm->alloc_status = fail_at(vm, LDM_ERR_LIMIT, "too many objects");
        return NULL;
    }
    vm->alloc_status = grow(vm, (void **)&vm->objs, &vm->objs_cap, vm->n_objs + 1, sizeof *vm->objs);
    if (vm->alloc_status != LDM_OK) return NULL;
    lw_py *o = ldm_calloc(1, sizeof *o);
    if (!o) {
        vm->alloc_status = ldm_fail_context(lw_alloc_status(sizeof *o), "%s: pickle: ", vm->what);
        return NULL;
    }
    o->type = type;
    vm->objs[vm->n_objs++] = o;
    return o;
}

static ldm_status add_item(lw_pickle *vm, lw_py *c, lw_py *item)
{
    if (vm->total_items >= PK_MAX_ITEMS) return fail_at(vm, LDM_ERR_LIMIT, "too many container items");
    LDM_TRY(grow(vm, (void **)&c->items, &c->cap, c->count + 1, sizeof *c->items));
    c->items[c->count++] = item;
    vm->total_items++;
    return LDM_OK;
}

static ldm_status push(lw_pickle *vm, lw_py *o)
{
    if (!o) return vm->alloc_status; /* new_obj has set the message */
    if (vm->sp >= PK_MAX_STACK) return fail_at(vm, LDM_ERR_LIMIT, "stack too deep");
    LDM_TRY(grow(vm, (void **)&vm->stack, &vm->stack_cap, vm->sp + 1, sizeof *vm->stack));
    vm->stack[vm->sp++] = o;
    return LDM_OK;
}

static size_t mark_base(const lw_pickle *vm) { return vm->n_marks ? vm->marks[vm->n_marks - 1] : 0; }

/* Pops one value; values below the innermost mark belong to an unfinished container. */
static ldm_status pop(lw_pickle *vm, lw_py **out)
{
    if (vm->sp <= mark_base(vm)) return fail_at(vm, LDM_ERR_FORMAT, "stack underflow");
    *out = vm->stack[--vm->sp];
    return LDM_OK;
}

static ldm_status top(lw_pickle *vm, lw_py **out)
{
    if (vm->sp <= mark_base(vm)) return fail_at(vm, LDM_ERR_FORMAT, "stack underflow");
    *out = vm->stack[vm->sp - 1];
    return LDM_OK;
}

static ldm_status push_mark(lw_pickle *vm)
{
    if (vm->n_marks >= PK_MAX_MARKS) return fail_at(vm, LDM_ERR_LIMIT, "marks nested too deeply");
    LDM_TRY(grow(vm, (void **)&vm->marks, &vm->marks_cap, vm->n_marks + 1, sizeof *vm->marks));
    vm->marks[vm->n_marks++] = vm->sp;
    return LDM_OK;
}

/* Pops the innermost mark: the values above it are stack[*base .. sp). The caller consumes
 * them and then sets sp = *base. */
static ldm_status pop_mark(lw_pickle *vm, size_t *base)
{
    if (!vm->n_marks) return fail_at(vm, LDM_ERR_FORMAT, "no MARK on the stack");
    *base = vm->marks[--vm->n_marks];
    return LDM_OK;
}

/* ---------------------------------------------------------------- reading the stream */

static ldm_status need(lw_pickle *vm, size_t n)
{
    if ((size_t)(vm->end - vm->p) < n) return fail_at(vm, LDM_ERR_FORMAT, "truncated data");
    return LDM_OK;
}

static uint64_t read_le(lw_pickle *vm, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;) v = (v << 8) | vm->p[i];
    vm->p += n;
    return v;
}

static ldm_status read_len(lw_pickle *vm, size_t width, size_t *len)
{
    LDM_TRY(need(vm, width));
    uint64_t n = read_le(vm, width);
    if (n > (uint64_t)(vm->end - vm->p)) return fail_at(vm, LDM_ERR_FORMAT, "string runs past the end");
    *len = (size_t)n;
    return LDM_OK;
}

static ldm_status op_string(lw_pickle *vm, lw_py_type type, size_t width)
{
    size_t len = 0;
    LDM_TRY(read_len(vm, width, &len));
    lw_py *o = new_obj(vm, type);
    if (o) {
        o->s = (const char *)vm->p;
        o->len = len;
    }
    vm->p += len;
    return push(vm, o);
}

static ldm_status push_int(lw_pickle *vm, int64_t v)
{
    lw_py *o = new_obj(vm, LW_PY_INT);
    if (o) o->i = v;
    return push(vm, o);
}

static ldm_status op_binint(lw_pickle *vm, size_t width)
{
    LDM_TRY(need(vm, width));
    uint64_t v = read_le(vm, width);
    /* BININT is signed 32-bit; BININT1/2 are unsigned. */
    return push_int(vm, width == 4 ? (int64_t)(int32_t)(uint32_t)v : (int64_t)v);
}

/* LONG1 / LONG4: little-endian two's complement of any length. */
static ldm_status op_long(lw_pickle *vm, size_t width)
{
    size_t len = 0;
    LDM_TRY(read_len(vm, width, &len));
    lw_py *o = new_obj(vm, LW_PY_INT);
    if (!o) return vm->alloc_status;
    if (len > 8) {
        o->big = 1;
    } else if (len > 0) {
        uint64_t v = 0;
        for (size_t i = len; i-- > 0;) v = (v << 8) | vm->p[i];
        if (len < 8 && (vm->p[len - 1] & 0x80)) v |= ~(uint64_t)0 << (8 * len); /* sign-extend */
        o->i = (int64_t)v;
    }
    vm->p += len;
    return push(vm, o);
}

static ldm_status op_binfloat(lw_pickle *vm)
{
    LDM_TRY(need(vm, 8));
    uint64_t bits = 0;
    for (int i = 0; i < 8; i++) bits = (bits << 8) | *vm->p++; /* big-endian */
    lw_py *o = new_obj(vm, LW_PY_FLOAT);
    if (o) memcpy(&o->f, &bits, sizeof o->f);
    return push(vm, o);
}

static ldm_status push_simple(lw_pickle *vm, lw_py_type type, int64_t v)
{
    lw_py *o = new_obj(vm, type);
    if (o) o->i = v;
    return push(vm, o);
}

/* ---------------------------------------------------------------- memo */

static ldm_status memo_put(lw_pickle *vm, uint64_t idx)
{
    lw_py *o = NULL;
    LDM_TRY(top(vm, &o));
    if (idx >= PK_MAX_MEMO) return fail_at(vm, LDM_ERR_LIMIT, "memo index too large");
    size_t old_cap = vm->memo_cap;
    LDM_TRY(grow(vm, (void **)&vm->memo, &vm->memo_cap, (size_t)idx + 1, sizeof *vm->memo));
    for (size_t i = old_cap; i < vm->memo_cap; i++) vm->memo[i] = NULL;
    if (!vm->memo[idx]) vm->memo_len++;
    vm->memo[idx] = o;
    return LDM_OK;
}

static ldm_status op_put(lw_pickle *vm, size_t width)
{
    LDM_TRY(need(vm, width));
    return memo_put(vm, read_le(vm, width));
}

static ldm_status op_get(lw_pickle *vm, size_t width)
{
    LDM_TRY(need(vm, width));
    uint64_t idx = read_le(vm, width);
    if (idx >= vm->memo_cap || !vm->memo[idx]) return fail_at(vm, LDM_ERR_FORMAT, "memo entry not defined");
    return push(vm, vm->memo[idx]);
}

/* ---------------------------------------------------------------- containers */

static ldm_status op_tuple_n(lw_pickle *vm, size_t n)
{
    if (vm->sp - mark_base(vm) < n) return fail_at(vm, LDM_ERR_FORMAT, "stack underflow");
    lw_py *t = new_obj(vm, LW_PY_TUPLE);
    if (!t) return vm->alloc_status;
    for (size_t i = vm->sp - n; i < vm->sp; i++) LDM_TRY(add_item(vm, t, vm->stack[i]));
    vm->sp -= n;
    return push(vm, t);
}

/* TUPLE / LIST / DICT / FROZENSET: a new container from the values above the mark. */
static ldm_status op_collect(lw_pickle *vm, lw_py_type type)
{
    size_t base = 0;
    LDM_TRY(pop_mark(vm, &base));
    if (type == LW_PY_DICT && (vm->sp - base) % 2)
        return fail_at(vm, LDM_ERR_FORMAT, "odd number of items for a dict");
    lw_py *c = new_obj(vm, type);
    if (!c) return vm->alloc_status;
    for (size_t i = base; i < vm->sp; i++) LDM_TRY(add_item(vm, c, vm->stack[i]));
    vm->sp = base;
    return push(vm, c);
}

/* SETITEM(S) / APPEND(S) / ADDITEMS: add the values above `base` to the container below it.
 * Placeholders (LW_PY_OPAQUE) swallow items; anything else is malformed. */
static ldm_status extend(lw_pickle *vm, size_t base, lw_py_type want)
{
    if (base <= mark_base(vm)) return fail_at(vm, LDM_ERR_FORMAT, "stack underflow");
    lw_py *c = vm->stack[base - 1];
    if (want == LW_PY_DICT && (vm->sp - base) % 2)
        return fail_at(vm, LDM_ERR_FORMAT, "odd number of items for a dict");
    if (c->type == want) {
        for (size_t i = base; i < vm->sp; i++) LDM_TRY(add_item(vm, c, vm->stack[i]));
    } else if (c->type != LW_PY_OPAQUE) {
        return fail_at(vm, LDM_ERR_FORMAT, "items added to a value that is not a container");
    }
    vm->sp = base;
    return LDM_OK;
}

static ldm_status op_extend_marked(lw_pickle *vm, lw_py_type want)
{
    size_t base = 0;
    LDM_TRY(pop_mark(vm, &base));
    return extend(vm, base, want);
}

static ldm_status op_extend_n(lw_pickle *vm, size_t n, lw_py_type want)
{
    if (vm->sp < n || vm->sp - n <= mark_base(vm)) return fail_at(vm, LDM_ERR_FORMAT, "stack underflow");
    return extend(vm, vm->sp - n, want);
}

static ldm_status op_pop(lw_pickle *vm)
{
    if (vm->sp > mark_base(vm)) {
        vm->sp--;
        return LDM_OK;
    }
    size_t base = 0;
    return pop_mark(vm, &base); /* Python's POP discards a bare mark */
}

static ldm_status op_pop_mark(lw_pickle *vm)
{
    size_t base = 0;
    LDM_TRY(pop_mark(vm, &base));
    vm->sp = base;
    return LDM_OK;
}

static ldm_status op_dup(lw_pickle *vm)
{
    lw_py *o = NULL;
    LDM_TRY(top(vm, &o));
    return push(vm, o);
}

/* ---------------------------------------------------------------- globals */

static ldm_status push_global(lw_pickle *vm, const char *mod, size_t mod_len, const char *name, size_t name_len)
{
    for (size_t i = 0; i < LDM_ARRAY_LEN(allowed_globals); i++) {
        if (strlen(allowed_globals[i].module) == mod_len && memcmp(allowed_globals[i].module, mod, mod_len) == 0 &&
            strlen(allowed_globals[i].name) == name_len && memcmp(allowed_globals[i].name, name, name_len) == 0) {
            lw_py *g = new_obj(vm, LW_PY_GLOBAL);
            if (g) {
                g->global = allowed_globals[i].kind;
                g->dtype = allowed_globals[i].dtype;
                g->s = name;
                g->len = name_len;
            }
            return push(vm, g);
        }
    }
    return ldm_fail(LDM_ERR_SECURITY, "%s: pickle global %.*s.%.*s is not allowed", vm->what, (int)LDM_MIN(mod_len, 200),
                    mod, (int)LDM_MIN(name_len, 200), name);
}

static ldm_status read_line(lw_pickle *vm, const char **s, size_t *len)
{
    size_t avail = (size_t)(vm->end - vm->p);
    const unsigned char *nl = memchr(vm->p, '\n', LDM_MIN(avail, (size_t)PK_MAX_GLOBAL_NAME + 1));
    if (!nl) return fail_at(vm, LDM_ERR_FORMAT, "unterminated or overlong GLOBAL name");
    *s = (const char *)vm->p;
    *len = (size_t)(nl - vm->p);
    vm->p = nl + 1;
    return LDM_OK;
}

static ldm_status op_global(lw_pickle *vm)
{
    const char *mod = NULL, *name = NULL;
    size_t mod_len = 0, name_len = 0;
    LDM_TRY(read_line(vm, &mod, &mod_len));
    LDM_TRY(read_line(vm, &name, &name_len));
    return push_global(vm, mod, mod_len, name, name_len);
}

static ldm_status op_stack_global(lw_pickle *vm)
{
    lw_py *name = NULL, *mod = NULL;
    LDM_TRY(pop(vm, &name));
    LDM_TRY(pop(vm, &mod));
    if (name->type != LW_PY_STR || mod->type != LW_PY_STR)
        return fail_at(vm, LDM_ERR_FORMAT, "STACK_GLOBAL needs two strings");
    return push_global(vm, mod->s, mod->len, name->s, name->len);
}

/* ---------------------------------------------------------------- applying allowed callables */

static int is_int(const lw_py *v) { return v->type == LW_PY_INT && !v->big; }

/* A tuple of non-negative ints, at most LDM_MAX_DIMS long. */
static int read_dims(const lw_py *t, int64_t *dims, int *n)
{
    if (t->type != LW_PY_TUPLE || t->count > LDM_MAX_DIMS) return 0;
    for (size_t i = 0; i < t->count; i++) {
        if (!is_int(t->items[i]) || t->items[i]->i < 0) return 0;
        dims[i] = t->items[i]->i;
    }
    *n = (int)t->count;
    return 1;
}

/* torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata]) */
static ldm_status rebuild_tensor(lw_pickle *vm, const lw_py *args)
{
    if (args->count != 6 && args->count != 7)
        return fail_at(vm, LDM_ERR_FORMAT, "_rebuild_tensor_v2 expects 6 or 7 arguments");
    lw_py *const *a = args->items;
    lw_py_tensor t = {0};
    int nstride = -1;
    if (a[0]->type != LW_PY_STORAGE || !is_int(a[1]) || a[1]->i < 0 || !read_dims(a[2], t.size, &t.ndim) ||
        !read_dims(a[3], t.stride, &nstride) || nstride != t.ndim)
        return fail_at(vm, LDM_ERR_FORMAT, "malformed _rebuild_tensor_v2 arguments (or rank above the maximum)");
    t.storage = a[0];
    t.offset = a[1]->i;
    lw_py *o = new_obj(vm, LW_PY_TENSOR);
    if (!o) return vm->alloc_status;
    o->tensor = ldm_malloc(sizeof *o->tensor);
    if (!o->tensor) return ldm_fail_context(lw_alloc_status(sizeof *o->tensor), "%s: pickle: ", vm->what);
    *o->tensor = t;
    o->dtype = a[0]->dtype;
    return push(vm, o);
}

/* OrderedDict() or OrderedDict([(k, v), ...]). */
static ldm_status make_dict(lw_pickle *vm, const lw_py *args)
{
    lw_py *d = new_obj(vm, LW_PY_DICT);
    if (!d) return vm->alloc_status;
    if (args && args->count > 1) return fail_at(vm, LDM_ERR_FORMAT, "OrderedDict with more than one argument");
    if (args && args->count == 1) {
        const lw_py *pairs = args->items[0];
        if (pairs->type != LW_PY_LIST && pairs->type != LW_PY_TUPLE)
            return fail_at(vm, LDM_ERR_FORMAT, "OrderedDict argument is not a list of pairs");
        for (size_t i = 0; i < pairs->count; i++) {
            const lw_py *kv = pairs->items[i];
            if ((kv->type != LW_PY_TUPLE && kv->type != LW_PY_LIST) || kv->count != 2)
                return fail_at(vm, LDM_ERR_FORMAT, "OrderedDict item is not a pair");
            LDM_TRY(add_item(vm, d, kv->items[0]));
            LDM_TRY(add_item(vm, d, kv->items[1]));
        }
    }
    return push(vm, d);
}

static ldm_status apply(lw_pickle *vm, const lw_py *callable, const lw_py *args)
{
    if (callable->type != LW_PY_GLOBAL) return fail_at(vm, LDM_ERR_FORMAT, "REDUCE on a value that is not a global");
    if (args->type != LW_PY_TUPLE) return fail_at(vm, LDM_ERR_FORMAT, "REDUCE arguments are not a tuple");
    switch (callable->global) {
    case GK_ORDERED_DICT: return make_dict(vm, args);
    case GK_REBUILD_TENSOR_V2: return rebuild_tensor(vm, args);
    case GK_REBUILD_PARAMETER:
        /* _rebuild_parameter(data, requires_grad, backward_hooks[, state]): the data is the value */
        if (args->count < 3 || args->count > 4 || args->items[0]->type != LW_PY_TENSOR)
            return fail_at(vm, LDM_ERR_FORMAT, "malformed _rebuild_parameter arguments");
        return push(vm, args->items[0]);
    case GK_INERT: return push(vm, new_obj(vm, LW_PY_OPAQUE));
    default: return fail_at(vm, LDM_ERR_FORMAT, "a storage class cannot be called");
    }
}

static ldm_status op_reduce(lw_pickle *vm)
{
    lw_py *args = NULL, *callable = NULL;
    LDM_TRY(pop(vm, &args));
    LDM_TRY(pop(vm, &callable));
    return apply(vm, callable, args);
}

/* NEWOBJ (cls, args) / NEWOBJ_EX (cls, args, kwargs): cls.__new__(cls, *args). */
static ldm_status op_newobj(lw_pickle *vm, int with_kwargs)
{
    lw_py *kwargs = NULL, *args = NULL, *cls = NULL;
    if (with_kwargs) LDM_TRY(pop(vm, &kwargs));
    LDM_TRY(pop(vm, &args));
    LDM_TRY(pop(vm, &cls));
    if (cls->type == LW_PY_GLOBAL && cls->global == GK_ORDERED_DICT) return make_dict(vm, NULL);
    if (cls->type == LW_PY_GLOBAL && cls->global == GK_INERT) return push(vm, new_obj(vm, LW_PY_OPAQUE));
    return fail_at(vm, LDM_ERR_FORMAT, "NEWOBJ on a class that cannot be instantiated");
}

/* BUILD sets an object's __dict__/__setstate__: nothing a state dict needs (OrderedDict._metadata,
 * placeholder state), so the state is dropped. */
static ldm_status op_build(lw_pickle *vm)
{
    lw_py *state = NULL, *obj = NULL;
    LDM_TRY(pop(vm, &state));
    LDM_TRY(top(vm, &obj));
    if (obj->type != LW_PY_DICT && obj->type != LW_PY_OPAQUE && obj->type != LW_PY_TENSOR)
        return fail_at(vm, LDM_ERR_FORMAT, "BUILD on a value that has no state");
    return LDM_OK;
}

/* BINPERSID with torch's ('storage', StorageType, key, location, numel). */
static ldm_status op_persid(lw_pickle *vm)
{
    lw_py *pid = NULL;
    LDM_TRY(pop(vm, &pid));
    if (pid->type != LW_PY_TUPLE || pid->count != 5 || !lw_py_str_eq(pid->items[0], "storage"))
        return fail_at(vm, LDM_ERR_FORMAT, "persistent id is not a ('storage', ...) tuple");
    lw_py *const *a = pid->items;
    if (a[1]->type != LW_PY_GLOBAL || a[1]->global != GK_STORAGE || a[2]->type != LW_PY_STR ||
        a[3]->type != LW_PY_STR || !is_int(a[4]) || a[4]->i < 0)
        return fail_at(vm, LDM_ERR_FORMAT, "malformed storage persistent id");
    lw_py *s = new_obj(vm, LW_PY_STORAGE);
    if (s) {
        s->dtype = a[1]->dtype;
        s->s = a[2]->s;
        s->len = a[2]->len;
        s->i = a[4]->i;
    }
    return push(vm, s);
}

/* ---------------------------------------------------------------- dispatch */

static ldm_status op_proto(lw_pickle *vm)
{
    LDM_TRY(need(vm, 1));
    unsigned v = *vm->p++;
    if (v < 2 || v > 5) return fail_at(vm, LDM_ERR_UNSUPPORTED, "pickle protocol not supported (need 2..5)");
    return LDM_OK;
}

static ldm_status op_frame(lw_pickle *vm)
{
    LDM_TRY(need(vm, 8));
    vm->p += 8; /* frames only group opcodes for buffering */
    return LDM_OK;
}

static ldm_status op_memoize(lw_pickle *vm) { return memo_put(vm, vm->memo_len); }

/* Executes one opcode; sets *done at STOP. */
static ldm_status step(lw_pickle *vm, int *done)
{
    LDM_TRY(need(vm, 1));
    unsigned char op = *vm->p++;
    switch (op) {
    case 0x80: return op_proto(vm);
    case 0x95: return op_frame(vm);
    case '.': *done = 1; return LDM_OK;
    case '}': return push(vm, new_obj(vm, LW_PY_DICT));
    case ']': return push(vm, new_obj(vm, LW_PY_LIST));
    case ')': return push(vm, new_obj(vm, LW_PY_TUPLE));
    case 0x8f: return push(vm, new_obj(vm, LW_PY_SET));
    case '(': return push_mark(vm);
    case 't': return op_collect(vm, LW_PY_TUPLE);
    case 'l': return op_collect(vm, LW_PY_LIST);
    case 'd': return op_collect(vm, LW_PY_DICT);
    case 0x91: return op_collect(vm, LW_PY_SET);
    case 0x85: return op_tuple_n(vm, 1);
    case 0x86: return op_tuple_n(vm, 2);
    case 0x87: return op_tuple_n(vm, 3);
    case 'X': return op_string(vm, LW_PY_STR, 4);
    case 0x8c: return op_string(vm, LW_PY_STR, 1);
    case 0x8d: return op_string(vm, LW_PY_STR, 8);
    case 'U': return op_string(vm, LW_PY_STR, 1); /* SHORT_BINSTRING (Python 2 str) */
    case 'T': return op_string(vm, LW_PY_STR, 4); /* BINSTRING */
    case 'C': return op_string(vm, LW_PY_BYTES, 1);
    case 'B': return op_string(vm, LW_PY_BYTES, 4);
    case 0x8e: return op_string(vm, LW_PY_BYTES, 8);
    case 0x96: return op_string(vm, LW_PY_BYTES, 8); /* BYTEARRAY8 */
    case 'q': return op_put(vm, 1);
    case 'r': return op_put(vm, 4);
    case 0x94: return op_memoize(vm);
    case 'h': return op_get(vm, 1);
    case 'j': return op_get(vm, 4);
    case 'J': return op_binint(vm, 4);
    case 'K': return op_binint(vm, 1);
    case 'M': return op_binint(vm, 2);
    case 0x8a: return op_long(vm, 1);
    case 0x8b: return op_long(vm, 4);
    case 'G': return op_binfloat(vm);
    case 0x88: return push_simple(vm, LW_PY_BOOL, 1);
    case 0x89: return push_simple(vm, LW_PY_BOOL, 0);
    case 'N': return push_simple(vm, LW_PY_NONE, 0);
    case 's': return op_extend_n(vm, 2, LW_PY_DICT);
    case 'u': return op_extend_marked(vm, LW_PY_DICT);
    case 'a': return op_extend_n(vm, 1, LW_PY_LIST);
    case 'e': return op_extend_marked(vm, LW_PY_LIST);
    case 0x90: return op_extend_marked(vm, LW_PY_SET);
    case '0': return op_pop(vm);
    case '1': return op_pop_mark(vm);
    case '2': return op_dup(vm);
    case 'c': return op_global(vm);
    case 0x93: return op_stack_global(vm);
    case 'R': return op_reduce(vm);
    case 0x81: return op_newobj(vm, 0);
    case 0x92: return op_newobj(vm, 1);
    case 'b': return op_build(vm);
    case 'Q': return op_persid(vm);
    default:
        vm->p--;
        return ldm_fail(LDM_ERR_UNSUPPORTED, "%s: pickle: opcode 0x%02x at byte %zu is not supported", vm->what, op,
                        (size_t)(vm->p - vm->start));
    }
}

ldm_status lw_pickle_run(const char *what, const void *data, size_t size, lw_pickle **vm_out, const lw_py **result)
{
    *vm_out = NULL;
    *result = NULL;
    lw_pickle *vm = ldm_calloc(1, sizeof *vm);
    if (!vm) return ldm_fail_context(lw_alloc_status(sizeof *vm), "%s: ", what);
    vm->what = what;
    vm->start = vm->p = data;
    vm->end = vm->start + size;
    int done = 0;
    ldm_status st = LDM_OK;
    while (st == LDM_OK && !done) st = step(vm, &done);
    lw_py *root = NULL;
    if (st == LDM_OK) {
        /* STOP takes the top value regardless of pending marks, as Python does. */
        if (vm->sp == 0) st = fail_at(vm, LDM_ERR_FORMAT, "STOP with an empty stack");
        else root = vm->stack[vm->sp - 1];
    }
    if (st != LDM_OK) {
        lw_pickle_free(vm);
        return st;
    }
    *vm_out = vm;
    *result = root;
    return LDM_OK;
}

void lw_pickle_free(lw_pickle *vm)
{
    if (!vm) return;
    for (size_t i = 0; i < vm->n_objs; i++) {
        ldm_free(vm->objs[i]->items);
        ldm_free(vm->objs[i]->tensor);
        ldm_free(vm->objs[i]);
    }
    ldm_free(vm->objs);
    ldm_free(vm->stack);
    ldm_free(vm->marks);
    ldm_free(vm->memo);
    ldm_free(vm);
}

/* ---------------------------------------------------------------- accessors */

int lw_py_str_eq(const lw_py *v, const char *s)
{
    size_t n = strlen(s);
    return v && v->type == LW_PY_STR && v->len == n && memcmp(v->s, s, n) == 0;
}

const lw_py *lw_py_dict_get(const lw_py *d, const char *key)
{
    if (!d || d->type != LW_PY_DICT) return NULL;
    for (size_t i = d->count; i >= 2; i -= 2)
        if (lw_py_str_eq(d->items[i - 2], key)) return d->items[i - 1];
    return NULL;
}
