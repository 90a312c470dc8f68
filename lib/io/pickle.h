/* pickle.h - a restricted pickle reader for torch.save state dicts.
 *
 * This is NOT a Python unpickler: it never calls anything. It interprets the opcodes that
 * torch.save emits (protocols 2-5) and builds plain values. The few callables a checkpoint may
 * name (GLOBAL / STACK_GLOBAL) are looked up in a fixed allow-list and "applied" by this code's
 * own rules (e.g. torch._utils._rebuild_tensor_v2 becomes an lw_py tensor record); any other
 * global is refused with LDM_ERR_SECURITY naming it. Stack, memo, marks and object counts are
 * bounded, so a hostile pickle can neither run code nor exhaust memory. */
#ifndef LDM_IO_PICKLE_H
#define LDM_IO_PICKLE_H

#include "weights.h"

typedef enum {
    LW_PY_NONE,
    LW_PY_BOOL,
    LW_PY_INT,
    LW_PY_FLOAT,
    LW_PY_STR,     /* text (UTF-8) */
    LW_PY_BYTES,
    LW_PY_TUPLE,
    LW_PY_LIST,
    LW_PY_DICT,    /* items = key0, value0, key1, value1, ... in insertion order */
    LW_PY_SET,
    LW_PY_GLOBAL,  /* an allowed callable / class, see lw_py.global */
    LW_PY_STORAGE, /* a persistent-id storage reference ('storage', Type, key, location, numel) */
    LW_PY_TENSOR,  /* the result of torch._utils._rebuild_tensor_v2 */
    LW_PY_OPAQUE   /* an instance of an allowed but uninteresting class (never constructed) */
} lw_py_type;

typedef struct lw_py lw_py;

typedef struct lw_py_tensor {
    const lw_py *storage; /* LW_PY_STORAGE */
    int64_t offset;       /* in elements */
    int ndim;
    int64_t size[LDM_MAX_DIMS];
    int64_t stride[LDM_MAX_DIMS];
} lw_py_tensor;

struct lw_py {
    lw_py_type type;
    int big;              /* LW_PY_INT: value did not fit int64 (i is meaningless) */
    int64_t i;            /* LW_PY_BOOL / LW_PY_INT; LW_PY_STORAGE: numel */
    double f;             /* LW_PY_FLOAT */
    const char *s;        /* LW_PY_STR / LW_PY_BYTES; LW_PY_STORAGE: key. NOT NUL-terminated */
    size_t len;
    lw_py **items;        /* tuple / list / set items; dict key/value pairs */
    size_t count;         /* number of items (a dict of n pairs has count 2n) */
    size_t cap;
    int global;           /* LW_PY_GLOBAL: internal kind */
    lw_dtype dtype;       /* LW_PY_GLOBAL storage class, LW_PY_STORAGE */
    lw_py_tensor *tensor; /* LW_PY_TENSOR */
};

typedef struct lw_pickle lw_pickle;

/* Runs the restricted VM over `size` bytes. `what` names the source in messages. On success
 * *result is the unpickled value, owned by *vm (free with lw_pickle_free); string values point
 * into `data`, which must outlive *vm. */
ldm_status lw_pickle_run(const char *what, const void *data, size_t size, lw_pickle **vm, const lw_py **result);
void lw_pickle_free(lw_pickle *vm);

/* True if v is a string equal to the NUL-terminated `s`. */
int lw_py_str_eq(const lw_py *v, const char *s);
/* The value of string key `key` in dict `d` (the last one if repeated), NULL when absent or d is
 * not a dict. */
const lw_py *lw_py_dict_get(const lw_py *d, const char *key);

#endif
